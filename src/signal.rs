//! The shutdown signal.
//!
//! Owns turning SIGTERM (what Kubernetes sends) and SIGINT (Ctrl-C, for developers) into
//! one future that `main` hands to [`crate::app::Started::run`].

/// Completes when the process receives SIGTERM or SIGINT.
pub async fn shutdown() {
    use tokio::signal::unix::{SignalKind, signal};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    match (term, int) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => tracing::warn!("received SIGTERM"),
                _ = int.recv() => tracing::warn!("received SIGINT"),
            }
        }
        // Without signal handlers, never shut down on our own: the orchestrator's SIGKILL
        // still works, and serving is better than exiting at once.
        (term, int) => {
            tracing::error!(sigterm = ?term.err(), sigint = ?int.err(), "cannot install signal handlers");
            std::future::pending::<()>().await;
        }
    }
}
