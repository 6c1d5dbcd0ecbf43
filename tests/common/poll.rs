//! Waiting for something to happen: poll a condition until it holds or a deadline
//! passes, instead of sleeping a guessed time and asserting after it. A poll returns as
//! soon as the condition holds, so it is quick on an idle machine and still passes on a
//! loaded one.

use std::time::{Duration, Instant};

/// How long [`eventually`] waits: far more than anything takes on an idle machine.
pub const PATIENCE: Duration = Duration::from_secs(10);

/// How often a poll checks again.
const EVERY: Duration = Duration::from_millis(20);

/// Polls `check` until it holds; panics naming `what` if it does not within `within`.
/// Returns how long that took.
pub async fn poll_until(what: &str, within: Duration, mut check: impl AsyncFnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !check().await {
        assert!(start.elapsed() < within, "{what}: not within {within:?}");
        tokio::time::sleep(EVERY).await;
    }
    start.elapsed()
}

/// Polls `check` until it holds, for up to [`PATIENCE`].
pub async fn eventually(what: &str, check: impl AsyncFnMut() -> bool) {
    poll_until(what, PATIENCE, check).await;
}

/// [`poll_until`] for tests without a runtime: blocks the thread between checks.
pub fn poll_until_blocking(what: &str, within: Duration, mut check: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !check() {
        assert!(start.elapsed() < within, "{what}: not within {within:?}");
        std::thread::sleep(EVERY);
    }
    start.elapsed()
}
