//! Watching files for changes: the rule files and the TLS certificates.
//!
//! Owns one loop's worth of file watching: `notify` (inotify) watches on what a
//! [`Targets`] function names, re-armed after every change (a ConfigMap's `..data` swap or
//! a new `RUNTIME_ROOT` target replaces the very directories being watched), and bursts
//! of events folded into one change (debounced: quiet for 200 ms, or at most a second).
//! What a change means is the caller's: `snapshot::watch` reloads the rules, `tls`
//! re-reads its certificates.

use std::path::PathBuf;
use std::time::Duration;

use notify::{EventKind, RecursiveMode, Watcher};
use tokio::sync::mpsc;

use crate::signal::Shutdown;

/// How long the files must be quiet before a change is reported, and the longest a burst
/// of changes can put one off.
const QUIET: Duration = Duration::from_millis(200);
const MAX_DELAY: Duration = Duration::from_secs(1);

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
    /// Starts watching whatever `targets` names.
    pub fn arm_targets(targets: Targets) -> Watching {
        let (sender, events) = mpsc::unbounded_channel();
        let mut watching = Watching { targets, watcher: None, sender, events };
        watching.rearm();
        watching
    }

    /// Waits for the next burst of changes to end (debounced), or returns false when
    /// `stop` turns true.
    pub async fn changed(&mut self, stop: &mut Shutdown) -> bool {
        tokio::select! {
            _ = stop.requested() => return false,
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

impl Watching {
    /// Calls `on_change` off the runtime (it reads files) after every burst of changes,
    /// re-arming the watches after each, until shutdown. The one loop behind rule reloads
    /// and certificate reloads.
    pub async fn follow<F>(mut self, mut stop: Shutdown, on_change: F)
    where
        F: Fn() + Clone + Send + 'static,
    {
        while self.changed(&mut stop).await {
            let _ = tokio::task::spawn_blocking(on_change.clone()).await;
            self.rearm();
        }
    }
}
