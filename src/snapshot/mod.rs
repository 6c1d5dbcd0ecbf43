//! The live rule set: loading a snapshot of the rule files, and reloading it on change.
//!
//! Owns [`ConfigSnapshot`] (an immutable rule set plus what operators need to see about
//! it), loading one from a [`ConfigSource`] or from texts, and the [`Reloader`] that loads
//! afresh off the request path and hands each good snapshot to whoever puts it in force
//! ([`Install`], the app). A load either succeeds as a whole or fails with every error of
//! every file; it never half-applies, and a failed load keeps the rules in force.
//!
//! Reading files into documents is `config`'s; compiling documents into rules is
//! `rules`'. This module joins the two and owns when they run.

mod reloader;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use notify::RecursiveMode;

use crate::clock::wall_clock_now;
use crate::config::diag::{Diagnostic, Diagnostics};
use crate::config::yaml::Pos;
use crate::config::{ConfigSource, EmptyConfig, discover, read_file, read_text, schema};
use crate::rules::{self, BuildOptions, LimitRegistry, RuleSet};
use crate::watch::Watching;
pub use reloader::{Install, LoadFailure, ReloadStatus, Reloader};

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
    let snapshot = read_source(source, options, registry, version)?;
    check_empty(snapshot, &source.name(), "no rule file defines a domain", empty)
}

/// A load that found no domain, taken as `empty` (`CONFIG_REFUSE_EMPTY`) says: a good load
/// with a warning, or a failure that keeps the rules in force. Rule files and xDS pushes
/// share it, so both refuse alike; `source` names where the rules came from (the rule
/// files, `xds`) and `finding` says what was found, as the diagnostic's first words.
pub fn check_empty(
    mut snapshot: ConfigSnapshot,
    source: &Arc<str>,
    finding: &str,
    empty: EmptyConfig,
) -> Result<ConfigSnapshot, Diagnostics> {
    if !snapshot.rules.domains().is_empty() {
        return Ok(snapshot);
    }
    match empty {
        EmptyConfig::Warn => {
            let message = format!(
                "{finding}: every request is answered OK, with no limit (CONFIG_REFUSE_EMPTY=true refuses such a load)"
            );
            snapshot.warnings.push(Diagnostic::warning(source, Pos::START, message));
            Ok(snapshot)
        }
        EmptyConfig::Refuse => {
            let mut diags = snapshot.warnings;
            let message = format!(
                "{finding}, and CONFIG_REFUSE_EMPTY=true refuses a load that would leave every request unlimited"
            );
            diags.push(Diagnostic::error(source, Pos::START, message));
            Err(diags)
        }
    }
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
    Ok(ConfigSnapshot { rules, files, warnings: diags, loaded_at: wall_clock_now(), version })
}

/// Loads rule snapshots for one source, numbering the successful ones.
#[derive(Debug)]
pub struct ConfigLoader {
    pub source: ConfigSource,
    pub options: BuildOptions,
    pub registry: Arc<LimitRegistry>,
    /// Whether a load that finds no domain is good (with a warning) or failed.
    pub empty: EmptyConfig,
    versions: AtomicU64,
}

impl ConfigLoader {
    pub fn new(source: ConfigSource, options: BuildOptions, registry: Arc<LimitRegistry>) -> Self {
        ConfigLoader { source, options, registry, empty: EmptyConfig::Warn, versions: AtomicU64::new(0) }
    }

    /// The same loader, with loads that find no domain taken as `empty` says.
    pub fn on_empty(self, empty: EmptyConfig) -> Self {
        ConfigLoader { empty, ..self }
    }

    /// Loads every file afresh; the version counts successful loads.
    pub fn load(&self) -> Result<ConfigSnapshot, Diagnostics> {
        let next = self.versions.load(Ordering::Acquire) + 1;
        let snapshot = load_with(&self.source, &self.options, &self.registry, next, self.empty)?;
        self.versions.store(next, Ordering::Release);
        Ok(snapshot)
    }
}

/// What to watch for a source: directories, and whether to watch inside them.
pub fn watch_targets(source: &ConfigSource) -> Vec<(PathBuf, RecursiveMode)> {
    let mut targets = Vec::new();
    let mut add = |path: &Path, recursive: bool| {
        // A path that does not exist (yet) is watched through its nearest existing
        // ancestor, so its creation triggers a reload.
        let mut at = path.to_path_buf();
        let mut mode = if recursive { RecursiveMode::Recursive } else { RecursiveMode::NonRecursive };
        while !at.exists() {
            match at.parent() {
                Some(parent) if !parent.as_os_str().is_empty() => at = parent.to_path_buf(),
                _ => {
                    at = PathBuf::from(".");
                    break;
                }
            }
            mode = RecursiveMode::NonRecursive;
        }
        targets.push((at, mode));
    };
    match source {
        ConfigSource::Paths(paths) => {
            for p in paths {
                if p.is_dir() {
                    add(p, true);
                } else {
                    // A file's directory: renames over the file replace its inode.
                    let parent = p.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
                    add(parent, false);
                }
            }
        }
        ConfigSource::Runtime(layout) => {
            add(&layout.config_dir(), true);
            // RUNTIME_ROOT is often a symlink swapped to a new directory: watch where it
            // lives. (The reference reloads on nothing else in this mode; we reload on
            // in-place edits too.)
            if let Some(parent) = layout.root.parent().filter(|d| !d.as_os_str().is_empty()) {
                add(parent, false);
            }
        }
    }
    targets.sort();
    targets.dedup();
    targets
}

/// Starts watching what `source` reads. Without a working watcher (an exotic file
/// system), logs why: the rules then load only at start-up.
pub fn arm(source: &ConfigSource) -> Watching {
    let source = source.clone();
    Watching::arm_targets(Box::new(move || watch_targets(&source)))
}
