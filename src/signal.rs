//! The shutdown signal.
//!
//! Owns turning SIGTERM (what Kubernetes sends) and SIGINT (Ctrl-C, for developers) into
//! one future that `main` hands to [`crate::app::Started::run`]. The handlers are
//! installed when [`shutdown`] is called, not when the future is first polled, so a
//! SIGTERM that arrives while the service is still starting is not fatal.

use std::future::Future;

/// Installs the handlers now; the future completes at SIGTERM or SIGINT.
pub fn shutdown() -> impl Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    async move {
        match (term, int) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => tracing::warn!("received SIGTERM"),
                    _ = int.recv() => tracing::warn!("received SIGINT"),
                }
            }
            // Without signal handlers, never shut down on our own: the orchestrator's
            // SIGKILL still works, and serving is better than exiting at once.
            (term, int) => {
                tracing::error!(sigterm = ?term.err(), sigint = ?int.err(), "cannot install signal handlers");
                std::future::pending::<()>().await;
            }
        }
    }
}
