//! Rule files: where they come from, how they are read, and what a load produces.
//!
//! Owns finding the files (`--config` paths or the reference's `RUNTIME_*` layout),
//! reading them with their limits (size, UTF-8, nesting), and turning them into one
//! [`ConfigSnapshot`]: an immutable rule set plus what operators need to see about it.
//! A load either succeeds as a whole or fails with every error of every file; it never
//! half-applies. YAML parsing stays inside `yaml.rs` and `schema.rs`.

pub mod diag;
pub mod limit_string;
pub mod reload;
pub mod schema;
pub mod yaml;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use diag::{Diagnostic, Diagnostics};
use yaml::Pos;

use crate::rules::{self, BuildOptions, LimitRegistry, RuleSet};

/// The largest rule file accepted. Real rule files are kilobytes; this bounds the memory
/// and time a mistaken or hostile file can cost.
pub const MAX_FILE_BYTES: u64 = 4 * 1024 * 1024;

/// Deepest directory nesting followed when looking for files (guards symlink loops).
const MAX_DIR_DEPTH: usize = 32;

/// Where rule files come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConfigSource {
    /// `--config PATH...`: files, or directories searched recursively for `*.yaml` and
    /// `*.yml`, skipping dot-files and dot-directories.
    Paths(Vec<PathBuf>),
    /// The reference's layout: every file under `root/subdirectory/appdirectory`.
    Runtime(RuntimeLayout),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuntimeLayout {
    pub root: PathBuf,
    pub subdirectory: String,
    pub appdirectory: String,
    /// `RUNTIME_WATCH_ROOT`: reload when `root` itself is swapped (a symlink flip), rather
    /// than when files in the config directory change.
    pub watch_root: bool,
    pub ignore_dotfiles: bool,
}

impl RuntimeLayout {
    /// The directory whose files are rule files.
    pub fn config_dir(&self) -> PathBuf {
        self.root.join(&self.subdirectory).join(&self.appdirectory)
    }
}

/// A successfully loaded rule set and what operators need to know about it.
#[derive(Debug)]
pub struct ConfigSnapshot {
    pub rules: RuleSet,
    pub files: Vec<LoadedFile>,
    /// Warnings of the load (known keys in the wrong place, duplicate mapping keys).
    pub warnings: Diagnostics,
    pub loaded_at: SystemTime,
    /// Counts successful loads in this process, starting at 1.
    pub version: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoadedFile {
    pub path: Arc<str>,
    pub domains: Vec<String>,
}

/// Every rule file of a source, in sorted order, without duplicates.
pub fn discover(source: &ConfigSource) -> Result<Vec<PathBuf>, Diagnostics> {
    let mut files = Vec::new();
    let mut diags = Diagnostics::default();
    match source {
        ConfigSource::Paths(paths) => {
            for path in paths {
                match std::fs::metadata(path) {
                    Ok(meta) if meta.is_dir() => {
                        walk(path, 0, true, true, &mut Visited::default(), &mut files, &mut diags)
                    }
                    Ok(_) => files.push(path.clone()),
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
    Ok(files)
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
        match std::fs::metadata(&path) {
            Ok(meta) if meta.is_dir() => walk(&path, depth + 1, yaml_only, skip_dotfiles, visited, out, diags),
            Ok(_) if !yaml_only || name.ends_with(".yaml") || name.ends_with(".yml") => out.push(path),
            Ok(_) => {}
            // A dangling symlink mid-swap: the next reload sees the finished state.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => diags.push(io_error(&path, "cannot read", &e)),
        }
    }
}

fn path_name(path: &Path) -> Arc<str> {
    Arc::from(path.display().to_string())
}

fn io_error(path: &Path, what: &str, e: &std::io::Error) -> Diagnostic {
    Diagnostic::error(&path_name(path), Pos::START, format!("{what}: {e}"))
}

/// Reads and checks one file's text into its domain documents.
pub fn read_text(file: &Arc<str>, bytes: &[u8], diags: &mut Diagnostics) -> Vec<schema::DomainDoc> {
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    let text = match std::str::from_utf8(bytes) {
        Ok(text) => text,
        Err(e) => {
            let valid = &bytes[..e.valid_up_to()];
            let line = valid.iter().filter(|&&b| b == b'\n').count() + 1;
            let line_start = valid.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
            let col = String::from_utf8_lossy(&valid[line_start..]).chars().count() + 1;
            diags.push(Diagnostic::error(
                file,
                Pos { line: line as u32, col: col as u32 },
                format!("error loading config file: invalid UTF-8 at byte {}", e.valid_up_to()),
            ));
            return Vec::new();
        }
    };
    match yaml::parse_documents(text) {
        Ok(documents) => schema::read_file(file, &documents, diags),
        Err(e) => {
            diags.push(Diagnostic::error(file, e.pos, format!("error loading config file: yaml: {}", e.message)));
            Vec::new()
        }
    }
}

fn read_file(path: &Path, diags: &mut Diagnostics) -> (Arc<str>, Vec<schema::DomainDoc>) {
    use std::io::Read;
    let name = path_name(path);
    let mut bytes = Vec::new();
    let result = std::fs::File::open(path).and_then(|f| f.take(MAX_FILE_BYTES + 1).read_to_end(&mut bytes));
    if let Err(e) = result {
        diags.push(Diagnostic::error(&name, Pos::START, format!("cannot read file: {e}")));
        return (name, Vec::new());
    }
    if bytes.len() as u64 > MAX_FILE_BYTES {
        diags.push(Diagnostic::error(
            &name,
            Pos::START,
            format!("the file is larger than {MAX_FILE_BYTES} bytes, the most a rule file may hold"),
        ));
        return (name, Vec::new());
    }
    let docs = read_text(&name, &bytes, diags);
    (name, docs)
}

/// Loads every file of `source` into a snapshot, or fails with every error found.
/// Warnings of a successful load are in the snapshot.
pub fn load(
    source: &ConfigSource,
    options: &BuildOptions,
    registry: &LimitRegistry,
    version: u64,
) -> Result<ConfigSnapshot, Diagnostics> {
    let paths = discover(source)?;
    let mut diags = Diagnostics::default();
    let mut docs = Vec::new();
    let mut files = Vec::new();
    for path in &paths {
        let (name, file_docs) = read_file(path, &mut diags);
        files.push(LoadedFile { path: name, domains: file_docs.iter().map(|d| d.domain.clone()).collect() });
        docs.extend(file_docs);
    }
    finish(docs, files, options, registry, version, diags)
}

/// Loads rule files given as (name, text) pairs, with default options but for merging:
/// for tests and tools.
pub fn load_texts(
    texts: &[(&str, &str)],
    merge_domains: bool,
    registry: &LimitRegistry,
) -> Result<ConfigSnapshot, Diagnostics> {
    load_texts_with(texts, &BuildOptions { merge_domains, ..BuildOptions::default() }, registry)
}

/// Loads rule files given as (name, text) pairs.
pub fn load_texts_with(
    texts: &[(&str, &str)],
    options: &BuildOptions,
    registry: &LimitRegistry,
) -> Result<ConfigSnapshot, Diagnostics> {
    let mut diags = Diagnostics::default();
    let mut docs = Vec::new();
    let mut files = Vec::new();
    for (name, text) in texts {
        let name: Arc<str> = Arc::from(*name);
        let file_docs = read_text(&name, text.as_bytes(), &mut diags);
        files.push(LoadedFile { path: name, domains: file_docs.iter().map(|d| d.domain.clone()).collect() });
        docs.extend(file_docs);
    }
    finish(docs, files, options, registry, 1, diags)
}

fn finish(
    docs: Vec<schema::DomainDoc>,
    files: Vec<LoadedFile>,
    options: &BuildOptions,
    registry: &LimitRegistry,
    version: u64,
    mut diags: Diagnostics,
) -> Result<ConfigSnapshot, Diagnostics> {
    let rules = rules::build(&docs, options, registry, &mut diags);
    // Within a file, report in position order; files stay in load order.
    diags.0.sort_by(|a, b| {
        let file_order = |d: &Diagnostic| files.iter().position(|f| f.path == d.file).unwrap_or(usize::MAX);
        file_order(a).cmp(&file_order(b)).then(a.pos.cmp(&b.pos))
    });
    if diags.has_errors() {
        return Err(diags);
    }
    Ok(ConfigSnapshot { rules, files, warnings: diags, loaded_at: reload::wall_clock_now(), version })
}
