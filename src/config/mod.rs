//! Rule files: where they come from, how they are read, and what a load produces.
//!
//! Owns finding the files (`--config` paths or the reference's `RUNTIME_*` layout),
//! reading them with their limits (size, UTF-8, nesting), and turning them into one
//! [`ConfigSnapshot`]: an immutable rule set plus what operators need to see about it.
//! A load either succeeds as a whole or fails with every error of every file; it never
//! half-applies. Finding and opening the files (regular files only, never blocking on
//! a FIFO) is `files.rs`; YAML parsing stays inside `yaml.rs` and `schema.rs`.

pub mod diag;
mod files;
pub mod limit_string;
pub mod reload;
pub mod schema;
pub mod yaml;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use diag::{Diagnostic, Diagnostics};
pub use files::discover;
use files::{open_regular, path_name};
use yaml::Pos;

use crate::rules::{self, BuildOptions, LimitRegistry, RuleSet};

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
    fn name(&self) -> Arc<str> {
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
fn read_file(path: &Path, diags: &mut Diagnostics) -> Option<(Arc<str>, Vec<schema::DomainDoc>)> {
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

/// Loads every file of `source` into a snapshot, or fails with every error found.
/// Warnings of a successful load are in the snapshot; a load with no domain warns.
pub fn load(
    source: &ConfigSource,
    options: &BuildOptions,
    registry: &LimitRegistry,
    version: u64,
) -> Result<ConfigSnapshot, Diagnostics> {
    load_with(source, options, registry, version, EmptyConfig::Warn)
}

/// As [`load`], with a load that finds no domain warned about or refused.
pub fn load_with(
    source: &ConfigSource,
    options: &BuildOptions,
    registry: &LimitRegistry,
    version: u64,
    empty: EmptyConfig,
) -> Result<ConfigSnapshot, Diagnostics> {
    let mut snapshot = read_source(source, options, registry, version)?;
    if snapshot.rules.domains().is_empty() {
        let name = source.name();
        match empty {
            EmptyConfig::Warn => snapshot.warnings.push(Diagnostic::warning(
                &name,
                Pos::START,
                "no rule file defines a domain: every request is answered OK, with no limit \
                 (CONFIG_REFUSE_EMPTY=true refuses such a load)",
            )),
            EmptyConfig::Refuse => {
                let mut diags = snapshot.warnings;
                diags.push(Diagnostic::error(
                    &name,
                    Pos::START,
                    "no rule file defines a domain, and CONFIG_REFUSE_EMPTY=true refuses a load \
                     that would leave every request unlimited",
                ));
                return Err(diags);
            }
        }
    }
    Ok(snapshot)
}

fn read_source(
    source: &ConfigSource,
    options: &BuildOptions,
    registry: &LimitRegistry,
    version: u64,
) -> Result<ConfigSnapshot, Diagnostics> {
    let (paths, mut diags) = discover(source)?;
    let mut docs = Vec::new();
    let mut files = Vec::new();
    for path in &paths {
        let Some((name, file_docs)) = read_file(path, &mut diags) else { continue };
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
