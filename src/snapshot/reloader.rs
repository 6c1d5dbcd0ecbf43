//! Putting loads in force: the [`Reloader`] and what it reports.
//!
//! Owns one load's outcome: a good snapshot goes to the [`Install`] the app gives (which
//! swaps it in whole, with what depends on it); a failed one keeps the rules in force, is
//! logged with every error and its position, and is remembered for `/debug/config`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use super::{ConfigLoader, ConfigSnapshot};
use crate::clock::wall_clock_now;
use crate::config::diag::Diagnostics;

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

/// Puts good loads in force, and hears of failed ones. The app implements it: a snapshot
/// goes in force together with what is built from it (the rules' stats series), and the
/// health and metrics follow.
pub trait Install: Send + Sync + std::fmt::Debug {
    fn install(&self, snapshot: ConfigSnapshot);
    /// A load failed; the rules in force stay.
    fn failed(&self, errors: &Diagnostics);
    /// The version of the rules in force, if any.
    fn version_in_force(&self) -> Option<u64>;
}

/// Loads the rules, at start-up and on every change, and hands good loads to `install`.
#[derive(Debug)]
pub struct Reloader {
    pub loader: ConfigLoader,
    pub status: ReloadStatus,
    install: Arc<dyn Install>,
}

impl Reloader {
    pub fn new(loader: ConfigLoader, install: Arc<dyn Install>) -> Self {
        Reloader { loader, status: ReloadStatus::default(), install }
    }

    /// Loads the files and, if every one is fine, swaps the new rules in. Returns the
    /// errors of a failed load (the previous rules stay).
    pub fn reload(&self) -> Result<(), Diagnostics> {
        self.apply(self.loader.load())
    }

    /// The version of the rules in force, if any.
    pub fn version_in_force(&self) -> Option<u64> {
        self.install.version_in_force()
    }

    /// Puts a snapshot loaded elsewhere (the xDS provider) in force, or records its
    /// failure and keeps the rules in force: the one install path of every rule source.
    pub fn apply(&self, loaded: Result<ConfigSnapshot, Diagnostics>) -> Result<(), Diagnostics> {
        match loaded {
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
                self.install.install(snapshot);
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
                let kept = self.install.version_in_force();
                tracing::error!(
                    errors = diags.error_count(),
                    kept_version = kept,
                    "the configuration did not load; the previous rules stay in force"
                );
                self.install.failed(&diags);
                self.status.failed.fetch_add(1, Ordering::Relaxed);
                *self.status.last_failure.lock().unwrap_or_else(|p| p.into_inner()) =
                    Some(LoadFailure { at: wall_clock_now(), errors: diags.errors().map(|d| d.to_string()).collect() });
                Err(diags)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use arc_swap::ArcSwapOption;

    use super::*;
    use crate::config::{ConfigSource, EmptyConfig};
    use crate::rules::BuildOptions;

    /// Puts snapshots in force and nothing else.
    #[derive(Debug, Default)]
    struct Slot(ArcSwapOption<ConfigSnapshot>);

    impl Install for Slot {
        fn install(&self, snapshot: ConfigSnapshot) {
            self.0.store(Some(Arc::new(snapshot)));
        }
        fn failed(&self, _errors: &Diagnostics) {}
        fn version_in_force(&self) -> Option<u64> {
            self.0.load().as_ref().map(|s| s.version)
        }
    }

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("sluicegate-reload-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn reloader(dir: &Path, empty: EmptyConfig) -> (Reloader, Arc<Slot>) {
        let source = ConfigSource::Paths(vec![dir.to_path_buf()]);
        let slot = Arc::new(Slot::default());
        let loader = ConfigLoader::new(source, BuildOptions::default(), Arc::default()).on_empty(empty);
        (Reloader::new(loader, slot.clone()), slot)
    }

    #[test]
    fn an_emptied_directory_is_a_good_load_with_a_warning_by_default() {
        let dir = temp_dir("empty-warn");
        std::fs::write(dir.join("a.yaml"), "domain: a\n").unwrap();
        let (reloader, slot) = reloader(&dir, EmptyConfig::Warn);
        reloader.reload().unwrap();
        std::fs::remove_file(dir.join("a.yaml")).unwrap();
        reloader.reload().unwrap();
        let snapshot = slot.0.load_full().unwrap();
        assert_eq!((snapshot.version, snapshot.rules.domains().len()), (2, 0));
        let warning = snapshot.warnings.to_string();
        assert!(warning.contains(":1:1: warning: no rule file defines a domain"), "{warning}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn refusing_empty_loads_keeps_the_previous_rules_and_says_why() {
        let dir = temp_dir("empty-refuse");
        let (reloader, slot) = reloader(&dir, EmptyConfig::Refuse);
        let errors = reloader.reload().unwrap_err().to_string();
        assert!(errors.contains("CONFIG_REFUSE_EMPTY=true refuses a load"), "{errors}");
        assert!(slot.0.load().is_none(), "an empty first load is a failed start");

        std::fs::write(dir.join("a.yaml"), "domain: a\n").unwrap();
        reloader.reload().unwrap();
        std::fs::remove_file(dir.join("a.yaml")).unwrap();
        assert!(reloader.reload().is_err());
        let snapshot = slot.0.load_full().unwrap();
        assert_eq!((snapshot.version, snapshot.rules.domains().len()), (1, 1), "the previous rules stay");
        assert_eq!(reloader.status.failed.load(Ordering::Relaxed), 2);
        let failure = reloader.status.last_failure().unwrap();
        assert!(failure.errors[0].ends_with("refuses a load that would leave every request unlimited"), "{failure:?}");

        std::fs::write(dir.join("b.yaml"), "domain: b\n").unwrap();
        reloader.reload().unwrap();
        let snapshot = slot.0.load_full().unwrap();
        assert_eq!((snapshot.version, &*snapshot.rules.domains()[0].name), (2, "b"));
        assert!(reloader.status.last_failure().is_none());
        std::fs::remove_dir_all(dir).unwrap();
    }
}
