//! Finding rule files and opening them safely.
//!
//! Owns walking `--config` paths and the reference layout's directory for rule files, and
//! opening each one. Only regular files (and symlinks to them) are rule files: a FIFO,
//! socket or device in a rules directory is skipped with a warning, and a file is opened
//! so that nothing swapped in after that check can block a load (a FIFO's `open` waits
//! for a writer, for ever, which would hang start-up, `validate` and every later reload).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::ConfigSource;
use super::diag::{Diagnostic, Diagnostics};
use super::yaml::Pos;

/// Deepest directory nesting followed when looking for files (guards symlink loops).
const MAX_DIR_DEPTH: usize = 32;

/// Every rule file of a source, in sorted order, without duplicates, with the warnings
/// of the search (entries skipped because they are not regular files).
pub fn discover(source: &ConfigSource) -> Result<(Vec<PathBuf>, Diagnostics), Diagnostics> {
    let mut files = Vec::new();
    let mut diags = Diagnostics::default();
    match source {
        ConfigSource::Paths(paths) => {
            for path in paths {
                match std::fs::metadata(path) {
                    Ok(meta) if meta.is_dir() => {
                        walk(path, 0, true, true, &mut Visited::default(), &mut files, &mut diags)
                    }
                    Ok(meta) if meta.is_file() => files.push(path.clone()),
                    // Named on purpose, so not skipped quietly: the operator meant it.
                    Ok(meta) => diags.push(Diagnostic::error(
                        &path_name(path),
                        Pos::START,
                        format!("is not a regular file ({}), so it cannot be a rule file", file_kind(&meta)),
                    )),
                    Err(e) => diags.push(io_error(path, "cannot read config path", &e)),
                }
            }
        }
        ConfigSource::Runtime(layout) => {
            let dir = layout.config_dir();
            match std::fs::metadata(&dir) {
                Ok(meta) if meta.is_dir() => {
                    walk(&dir, 0, false, layout.ignore_dotfiles, &mut Visited::default(), &mut files, &mut diags)
                }
                Ok(_) => diags.push(Diagnostic::error(&path_name(&dir), Pos::START, "is not a directory")),
                // The reference starts with no rules when the directory does not exist yet;
                // so do we (hot reload picks the files up when they appear).
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => diags.push(io_error(&dir, "cannot read config directory", &e)),
            }
        }
    }
    if diags.has_errors() {
        return Err(diags);
    }
    files.sort();
    files.dedup();
    Ok((files, diags))
}

/// Directories already walked, by device and inode, so symlink loops end at once.
type Visited = std::collections::HashSet<(u64, u64)>;

fn walk(
    dir: &Path,
    depth: usize,
    yaml_only: bool,
    skip_dotfiles: bool,
    visited: &mut Visited,
    out: &mut Vec<PathBuf>,
    diags: &mut Diagnostics,
) {
    use std::os::unix::fs::MetadataExt;
    if let Ok(meta) = std::fs::metadata(dir)
        && !visited.insert((meta.dev(), meta.ino()))
    {
        return; // reached again through a symlink
    }
    if depth > MAX_DIR_DEPTH {
        diags.push(Diagnostic::error(
            &path_name(dir),
            Pos::START,
            format!("directories nest deeper than {MAX_DIR_DEPTH} levels (a symlink loop?)"),
        ));
        return;
    }
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) => return diags.push(io_error(dir, "cannot read config directory", &e)),
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        // A ConfigMap mount keeps its real files under `..data` and `..<timestamp>`;
        // loading them would duplicate every domain (reference issue #367).
        if name.starts_with("..") || (skip_dotfiles && name.starts_with('.')) {
            continue;
        }
        let path = entry.path();
        let wanted = !yaml_only || name.ends_with(".yaml") || name.ends_with(".yml");
        match std::fs::metadata(&path) {
            Ok(meta) if meta.is_dir() => walk(&path, depth + 1, yaml_only, skip_dotfiles, visited, out, diags),
            Ok(_) if !wanted => {}
            Ok(meta) if meta.is_file() => out.push(path),
            // Opening a FIFO waits for a writer, for ever; a socket or device is no rule
            // file either. Skipping one keeps the other files loading.
            Ok(meta) => diags.push(skipped(&path, &meta)),
            // A dangling symlink mid-swap: the next reload sees the finished state.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => diags.push(io_error(&path, "cannot read", &e)),
        }
    }
}

pub(super) fn path_name(path: &Path) -> Arc<str> {
    Arc::from(path.display().to_string())
}

fn io_error(path: &Path, what: &str, e: &std::io::Error) -> Diagnostic {
    Diagnostic::error(&path_name(path), Pos::START, format!("{what}: {e}"))
}

fn skipped(path: &Path, meta: &std::fs::Metadata) -> Diagnostic {
    Diagnostic::warning(&path_name(path), Pos::START, format!("is not a regular file ({}); skipped", file_kind(meta)))
}

fn file_kind(meta: &std::fs::Metadata) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    let kind = meta.file_type();
    if kind.is_fifo() {
        "a FIFO"
    } else if kind.is_socket() {
        "a socket"
    } else if kind.is_block_device() || kind.is_char_device() {
        "a device"
    } else if kind.is_dir() {
        "a directory"
    } else {
        "not a file"
    }
}

/// `open(2)` flags that make opening return at once whatever the entry has become since
/// it was checked: without `O_NONBLOCK` a FIFO with no writer blocks `open` for ever,
/// and without `O_NOCTTY` a terminal device could become the process's controlling
/// terminal. Values from each platform's `<fcntl.h>` (libc is not a dependency).
#[cfg(all(any(target_os = "linux", target_os = "android"), any(target_arch = "mips", target_arch = "mips64")))]
const OPEN_WITHOUT_WAITING: i32 = 0o200 | 0o4000;
#[cfg(all(any(target_os = "linux", target_os = "android"), any(target_arch = "sparc", target_arch = "sparc64")))]
const OPEN_WITHOUT_WAITING: i32 = 0x4000 | 0x8000;
#[cfg(all(
    any(target_os = "linux", target_os = "android"),
    not(any(target_arch = "mips", target_arch = "mips64", target_arch = "sparc", target_arch = "sparc64"))
))]
const OPEN_WITHOUT_WAITING: i32 = 0o4000 | 0o400;
// BSD kernels never give a process a controlling terminal on open, so O_NONBLOCK alone.
#[cfg(any(
    target_vendor = "apple",
    target_os = "freebsd",
    target_os = "netbsd",
    target_os = "openbsd",
    target_os = "dragonfly"
))]
const OPEN_WITHOUT_WAITING: i32 = 0x0004;
#[cfg(not(any(
    target_os = "linux",
    target_os = "android",
    target_vendor = "apple",
    target_os = "freebsd",
    target_os = "netbsd",
    target_os = "openbsd",
    target_os = "dragonfly"
)))]
compile_error!("set OPEN_WITHOUT_WAITING to this platform's O_NONBLOCK | O_NOCTTY");

/// Opens a rule file without ever waiting, and confirms on the open descriptor that it is
/// a regular file: the entry may have been swapped since [`discover`] looked at it.
/// `Ok(None)`: it is something else now (a warning in `diags`).
pub(super) fn open_regular(path: &Path, diags: &mut Diagnostics) -> std::io::Result<Option<std::fs::File>> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new().read(true).custom_flags(OPEN_WITHOUT_WAITING).open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        diags.push(skipped(path, &meta));
        return Ok(None);
    }
    Ok(Some(file))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::{BuildOptions, LimitRegistry};
    use crate::snapshot::load;
    use std::time::Duration;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("sluicegate-config-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn mkfifo(path: &Path) {
        let status = std::process::Command::new("mkfifo").arg(path).status().unwrap();
        assert!(status.success(), "mkfifo {}", path.display());
    }

    /// Runs `f` on a thread and fails the test if it has not returned within 10 seconds:
    /// a blocked `open` would otherwise hang the test run.
    fn promptly<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(f());
        });
        rx.recv_timeout(Duration::from_secs(10)).expect("blocked on a FIFO")
    }

    #[test]
    fn a_fifo_among_the_rule_files_is_skipped_with_a_warning() {
        let dir = temp_dir("fifo-dir");
        std::fs::write(dir.join("a.yaml"), "domain: a\n").unwrap();
        mkfifo(&dir.join("zz.yaml"));
        let source = ConfigSource::Paths(vec![dir.clone()]);
        let snapshot = promptly(move || load(&source, &BuildOptions::default(), &LimitRegistry::new(), 1)).unwrap();
        assert_eq!(snapshot.rules.domains().len(), 1);
        assert_eq!(snapshot.files.len(), 1);
        let warnings = snapshot.warnings.to_string();
        let want = format!("{}:1:1: warning: is not a regular file (a FIFO); skipped", dir.join("zz.yaml").display());
        assert_eq!(warnings, want);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn an_entry_swapped_for_a_fifo_after_discovery_is_skipped_without_blocking() {
        let dir = temp_dir("fifo-swap");
        let path = dir.join("rules.yaml");
        mkfifo(&path);
        let (opened, diags) = promptly(move || {
            let mut diags = Diagnostics::default();
            (open_regular(&path, &mut diags).unwrap().is_some(), diags)
        });
        assert!(!opened);
        assert!(diags.to_string().ends_with("rules.yaml:1:1: warning: is not a regular file (a FIFO); skipped"));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn the_reference_layout_skips_fifos_and_sockets_whatever_their_names() {
        let root = temp_dir("fifo-runtime");
        let dir = root.join("ratelimit/config");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("a"), "domain: a\n").unwrap();
        mkfifo(&dir.join("pipe"));
        let _socket = std::os::unix::net::UnixListener::bind(dir.join("sock")).unwrap();
        let source = ConfigSource::Runtime(crate::config::RuntimeLayout {
            root: root.clone(),
            subdirectory: "ratelimit".into(),
            appdirectory: "config".into(),
            watch_root: false,
            ignore_dotfiles: false,
        });
        let (files, warnings) = promptly(move || discover(&source)).unwrap();
        assert_eq!(files, vec![dir.join("a")]);
        let mut skipped: Vec<&str> = warnings.0.iter().map(|w| w.message.as_str()).collect();
        skipped.sort();
        assert_eq!(skipped, ["is not a regular file (a FIFO); skipped", "is not a regular file (a socket); skipped"]);
        std::fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn a_fifo_named_as_a_config_path_is_an_error() {
        let dir = temp_dir("fifo-named");
        let path = dir.join("rules.yaml");
        mkfifo(&path);
        let source = ConfigSource::Paths(vec![path.clone()]);
        let err = promptly(move || discover(&source)).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("{}:1:1: is not a regular file (a FIFO), so it cannot be a rule file", path.display())
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn symlinks_to_regular_files_still_load() {
        let dir = temp_dir("symlink");
        std::fs::create_dir_all(dir.join("real")).unwrap();
        std::fs::write(dir.join("real/a.yml"), "domain: a\n").unwrap();
        std::os::unix::fs::symlink("real/a.yml", dir.join("a.yaml")).unwrap();
        let source = ConfigSource::Paths(vec![dir.join("a.yaml")]);
        let (files, warnings) = discover(&source).unwrap();
        assert_eq!((files, warnings.0.len()), (vec![dir.join("a.yaml")], 0));
        std::fs::remove_dir_all(dir).unwrap();
    }
}
