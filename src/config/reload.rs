//! Loading rule snapshots, and reloading them when the files change.
//!
//! Owns the life of the live rule set after start-up. A [`Reloader`] loads every file
//! afresh off the request path and swaps the result in whole ([`SharedConfig`] is an
//! `ArcSwap`), so a request sees the old rules or the new ones, never a mix. A load with
//! any error keeps the previous rules, logs every error with its position, and is
//! remembered for `/debug/config`. So does a load that finds no domain when
//! [`EmptyConfig::Refuse`] (`CONFIG_REFUSE_EMPTY`) says so; otherwise such a load is
//! good but logged as a warning.
//!
//! [`watch`] follows the files with `notify` (inotify): every `--config` path (a file's
//! directory, so an editor's or Kubernetes' atomic rename is seen), or the reference
//! layout's config directory and the parent of `RUNTIME_ROOT` (its symlink swap).
//! Events are debounced (a burst of changes is one reload, within about a second) and
//! the watches are re-armed after every reload, because a ConfigMap's `..data` swap or a
//! new `RUNTIME_ROOT` target replaces the directories being watched.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwapOption;
use notify::{EventKind, RecursiveMode, Watcher};
use tokio::sync::{mpsc, watch as signal};

use super::diag::Diagnostics;
use super::{ConfigSnapshot, ConfigSource, EmptyConfig};
use crate::health::Health;
use crate::rules::{BuildOptions, LimitRegistry};

/// The rule snapshot requests read: swapped whole on reload, read without locks.
pub type SharedConfig = Arc<ArcSwapOption<ConfigSnapshot>>;

/// How long the files must be quiet before a reload, and the longest a burst of changes
/// can put one off.
const QUIET: Duration = Duration::from_millis(200);
const MAX_DELAY: Duration = Duration::from_secs(1);

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
        let snapshot = super::load_with(&self.source, &self.options, &self.registry, next, self.empty)?;
        self.versions.store(next, Ordering::Release);
        Ok(snapshot)
    }
}

/// The last failed load, for `/debug/config`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoadFailure {
    pub at: SystemTime,
    pub errors: Vec<String>,
}

/// What happened to loads so far.
#[derive(Debug, Default)]
pub struct ReloadStatus {
    pub succeeded: AtomicU64,
    pub failed: AtomicU64,
    /// The most recent failure, cleared by the next success.
    last_failure: Mutex<Option<LoadFailure>>,
}

impl ReloadStatus {
    pub fn last_failure(&self) -> Option<LoadFailure> {
        self.last_failure.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// Hooks a load's outcome into the rest of the service (metrics, mostly).
pub trait LoadObserver: Send + Sync + std::fmt::Debug {
    fn loaded(&self, snapshot: &ConfigSnapshot);
    fn failed(&self, errors: &Diagnostics);
}

/// Loads the rules into the shared snapshot, at start-up and on every change.
#[derive(Debug)]
pub struct Reloader {
    pub loader: ConfigLoader,
    pub config: SharedConfig,
    pub health: Arc<Health>,
    pub status: ReloadStatus,
    pub observer: Option<Arc<dyn LoadObserver>>,
}

impl Reloader {
    /// Loads the files and, if every one is fine, swaps the new rules in. Returns the
    /// errors of a failed load (the previous rules stay).
    pub fn reload(&self) -> Result<(), Diagnostics> {
        match self.loader.load() {
            Ok(snapshot) => {
                for w in snapshot.warnings.warnings() {
                    tracing::warn!("{w}");
                }
                tracing::info!(
                    version = snapshot.version,
                    files = snapshot.files.len(),
                    domains = snapshot.rules.domains().len(),
                    rules = snapshot.rules.rule_count(),
                    "loaded the rate limit configuration"
                );
                if let Some(o) = &self.observer {
                    o.loaded(&snapshot);
                }
                self.health.set_config_loaded(snapshot.rules.domains().len());
                self.config.store(Some(Arc::new(snapshot)));
                self.status.succeeded.fetch_add(1, Ordering::Relaxed);
                *self.status.last_failure.lock().unwrap_or_else(|p| p.into_inner()) = None;
                Ok(())
            }
            Err(diags) => {
                for d in diags.errors() {
                    tracing::error!("Error loading new configuration: {d}");
                }
                for d in diags.warnings() {
                    tracing::warn!("{d}");
                }
                let kept = self.config.load().as_ref().map(|s| s.version);
                tracing::error!(
                    errors = diags.error_count(),
                    kept_version = kept,
                    "the configuration did not load; the previous rules stay in force"
                );
                if let Some(o) = &self.observer {
                    o.failed(&diags);
                }
                self.status.failed.fetch_add(1, Ordering::Relaxed);
                *self.status.last_failure.lock().unwrap_or_else(|p| p.into_inner()) =
                    Some(LoadFailure { at: wall_clock_now(), errors: diags.errors().map(|d| d.to_string()).collect() });
                Err(diags)
            }
        }
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

/// Whether an event could change what a load reads (not our own reads of the files).
fn changes_files(kind: &EventKind) -> bool {
    use notify::event::{AccessKind, AccessMode};
    match kind {
        EventKind::Create(_) | EventKind::Remove(_) | EventKind::Modify(_) | EventKind::Any => true,
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) | EventKind::Other => false,
    }
}

/// What to watch, worked out afresh at every re-arm.
pub type Targets = Box<dyn Fn() -> Vec<(PathBuf, RecursiveMode)> + Send>;

/// Watches on files (the rules, the TLS certificates), armed before they are first read
/// so no change is missed.
pub struct Watching {
    targets: Targets,
    watcher: Option<notify::RecommendedWatcher>,
    sender: mpsc::UnboundedSender<()>,
    events: mpsc::UnboundedReceiver<()>,
}

impl std::fmt::Debug for Watching {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watching").field("armed", &self.watcher.is_some()).finish()
    }
}

impl Watching {
    /// Starts watching what `source` reads. Without a working watcher (an exotic file
    /// system), logs why: the rules then load only at start-up.
    pub fn arm(source: &ConfigSource) -> Watching {
        let source = source.clone();
        Self::arm_targets(Box::new(move || watch_targets(&source)))
    }

    /// Starts watching whatever `targets` names.
    pub fn arm_targets(targets: Targets) -> Watching {
        let (sender, events) = mpsc::unbounded_channel();
        let mut watching = Watching { targets, watcher: None, sender, events };
        watching.rearm();
        watching
    }

    /// Waits for the next burst of changes to end (debounced), or returns false when
    /// `stop` turns true.
    pub async fn changed(&mut self, stop: &mut signal::Receiver<bool>) -> bool {
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return false,
            got = self.events.recv() => if got.is_none() { return false },
        }
        // Debounce: wait for a quiet moment, but not forever.
        let deadline = tokio::time::Instant::now() + MAX_DELAY;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(QUIET) => return true,
                _ = tokio::time::sleep_until(deadline) => return true,
                got = self.events.recv() => if got.is_none() { return false },
            }
        }
    }

    /// Replaces the watches with ones on what is there now (a ConfigMap's `..data` swap
    /// or a new `RUNTIME_ROOT` target replaces watched directories); the old ones go only
    /// after the new are in place, so no change falls between the two.
    pub fn rearm(&mut self) {
        let tx = self.sender.clone();
        let made = notify::recommended_watcher(move |event: notify::Result<notify::Event>| match event {
            Ok(e) if changes_files(&e.kind) => {
                let _ = tx.send(());
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "file watch error"),
        });
        match made {
            Ok(mut watcher) => {
                for (path, mode) in (self.targets)() {
                    match watcher.watch(&path, mode) {
                        Ok(()) => tracing::debug!(path = %path.display(), ?mode, "watching for changes"),
                        Err(e) => tracing::warn!(path = %path.display(), error = %e, "cannot watch for changes"),
                    }
                }
                drop(self.watcher.replace(watcher));
            }
            Err(e) => tracing::error!(error = %e, "cannot watch the rule files; changes will not be reloaded"),
        }
    }
}

/// Reloads on every change `watching` sees, until `stop` turns true.
pub async fn watch(reloader: Arc<Reloader>, mut watching: Watching, mut stop: signal::Receiver<bool>) {
    while watching.changed(&mut stop).await {
        let r = reloader.clone();
        let _ = tokio::task::spawn_blocking(move || r.reload()).await;
        watching.rearm();
    }
}

/// When something happened, for operators to read (`/debug/config`): the wall clock,
/// not the decision clock, which tests may hold still.
#[allow(clippy::disallowed_methods)]
pub(crate) fn wall_clock_now() -> SystemTime {
    SystemTime::now()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("sluicegate-reload-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn reloader(dir: &Path, empty: EmptyConfig) -> Reloader {
        let source = ConfigSource::Paths(vec![dir.to_path_buf()]);
        Reloader {
            loader: ConfigLoader::new(source, BuildOptions::default(), Arc::default()).on_empty(empty),
            config: SharedConfig::default(),
            health: Arc::new(Health::new(false)),
            status: ReloadStatus::default(),
            observer: None,
        }
    }

    #[test]
    fn an_emptied_directory_is_a_good_load_with_a_warning_by_default() {
        let dir = temp_dir("empty-warn");
        std::fs::write(dir.join("a.yaml"), "domain: a\n").unwrap();
        let reloader = reloader(&dir, EmptyConfig::Warn);
        reloader.reload().unwrap();
        std::fs::remove_file(dir.join("a.yaml")).unwrap();
        reloader.reload().unwrap();
        let snapshot = reloader.config.load_full().unwrap();
        assert_eq!((snapshot.version, snapshot.rules.domains().len()), (2, 0));
        let warning = snapshot.warnings.to_string();
        assert!(warning.contains(":1:1: warning: no rule file defines a domain"), "{warning}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn refusing_empty_loads_keeps_the_previous_rules_and_says_why() {
        let dir = temp_dir("empty-refuse");
        let reloader = reloader(&dir, EmptyConfig::Refuse);
        let errors = reloader.reload().unwrap_err().to_string();
        assert!(errors.contains("CONFIG_REFUSE_EMPTY=true refuses a load"), "{errors}");
        assert!(reloader.config.load().is_none(), "an empty first load is a failed start");

        std::fs::write(dir.join("a.yaml"), "domain: a\n").unwrap();
        reloader.reload().unwrap();
        std::fs::remove_file(dir.join("a.yaml")).unwrap();
        assert!(reloader.reload().is_err());
        let snapshot = reloader.config.load_full().unwrap();
        assert_eq!((snapshot.version, snapshot.rules.domains().len()), (1, 1), "the previous rules stay");
        assert_eq!(reloader.status.failed.load(Ordering::Relaxed), 2);
        let failure = reloader.status.last_failure().unwrap();
        assert!(failure.errors[0].ends_with("refuses a load that would leave every request unlimited"), "{failure:?}");

        std::fs::write(dir.join("b.yaml"), "domain: b\n").unwrap();
        reloader.reload().unwrap();
        let snapshot = reloader.config.load_full().unwrap();
        assert_eq!((snapshot.version, &*snapshot.rules.domains()[0].name), (2, "b"));
        assert!(reloader.status.last_failure().is_none());
        std::fs::remove_dir_all(dir).unwrap();
    }
}
