//! Rule files: where they come from and how they are read.
//!
//! Owns finding the files (`--config` paths or the reference's `RUNTIME_*` layout) and
//! reading them with their limits (size, UTF-8, nesting) into checked domain documents
//! ([`schema::DomainDoc`]), every problem a [`diag::Diagnostic`] with its position.
//! Finding and opening the files (regular files only, never blocking on a FIFO) is
//! `files.rs`; YAML parsing stays inside `yaml.rs` and `schema.rs`. Compiling the
//! documents is `rules`'; a whole load is `snapshot`'s.

pub mod diag;
mod files;
pub mod limit_string;
pub mod schema;
pub mod yaml;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use diag::{Diagnostic, Diagnostics};
pub use files::discover;
use files::{open_regular, path_name};
use yaml::Pos;

/// The largest rule file accepted. Real rule files are kilobytes; this bounds the memory
/// and time a mistaken or hostile file can cost.
pub const MAX_FILE_BYTES: u64 = 4 * 1024 * 1024;

/// Where rule files come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConfigSource {
    /// `--config PATH...`: regular files, or directories searched recursively for
    /// `*.yaml` and `*.yml`, skipping dot-files and dot-directories.
    Paths(Vec<PathBuf>),
    /// The reference's layout: every file under `root/subdirectory/appdirectory`.
    Runtime(RuntimeLayout),
}

impl ConfigSource {
    /// How diagnostics about the whole source name it.
    pub fn name(&self) -> Arc<str> {
        match self {
            ConfigSource::Paths(paths) => {
                Arc::from(paths.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(","))
            }
            ConfigSource::Runtime(layout) => path_name(&layout.config_dir()),
        }
    }
}

/// What a load that finds no domain at all is (`CONFIG_REFUSE_EMPTY`). Such a load lets
/// every request through unlimited, and it is what an emptied directory gives between a
/// non-atomic `rm` and `cp`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum EmptyConfig {
    /// A good load with a warning, as the reference takes it (without the warning).
    #[default]
    Warn,
    /// A failed load: the previous rules, if any, stay; at start-up, the start fails.
    Refuse,
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

/// Reads one rule file into its domain documents; `None` if it was skipped.
pub fn read_file(path: &Path, diags: &mut Diagnostics) -> Option<(Arc<str>, Vec<schema::DomainDoc>)> {
    use std::io::Read;
    let name = path_name(path);
    let mut bytes = Vec::new();
    let result = open_regular(path, diags).and_then(|file| match file {
        Some(f) => f.take(MAX_FILE_BYTES + 1).read_to_end(&mut bytes).map(Some),
        None => Ok(None),
    });
    match result {
        Ok(Some(_)) => {}
        Ok(None) => return None,
        Err(e) => {
            diags.push(Diagnostic::error(&name, Pos::START, format!("cannot read file: {e}")));
            return Some((name, Vec::new()));
        }
    }
    if bytes.len() as u64 > MAX_FILE_BYTES {
        diags.push(Diagnostic::error(
            &name,
            Pos::START,
            format!("the file is larger than {MAX_FILE_BYTES} bytes, the most a rule file may hold"),
        ));
        return Some((name, Vec::new()));
    }
    let docs = read_text(&name, &bytes, diags);
    Some((name, docs))
}
