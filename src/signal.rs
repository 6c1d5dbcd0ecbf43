//! The shutdown signal.
//!
//! Owns turning SIGTERM (what Kubernetes sends) and SIGINT (Ctrl-C, for developers) into
//! one future that `main` hands to the app to run until. The handlers are
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

/// The shutdown signal as the service's tasks hold it: cloned into each, awaited in their
/// `select!`s. Dropping every [`ShutdownTrigger`] counts as a shutdown, so a task never
/// outlives the one that would have told it to stop.
#[derive(Clone, Debug)]
pub struct Shutdown(tokio::sync::watch::Receiver<bool>);

/// Sends the [`Shutdown`] signal to every holder.
#[derive(Debug)]
pub struct ShutdownTrigger(tokio::sync::watch::Sender<bool>);

impl ShutdownTrigger {
    /// A trigger and the signal it sends.
    pub fn new() -> (ShutdownTrigger, Shutdown) {
        let (sender, receiver) = tokio::sync::watch::channel(false);
        (ShutdownTrigger(sender), Shutdown(receiver))
    }

    pub fn trigger(&self) {
        self.0.send_replace(true);
    }
}

impl Shutdown {
    /// A signal that never comes (a tool or test that runs until dropped).
    pub fn never() -> Shutdown {
        let (trigger, shutdown) = ShutdownTrigger::new();
        std::mem::forget(trigger);
        shutdown
    }

    /// Completes once shutdown has been asked for.
    pub async fn requested(&mut self) {
        let _ = self.0.wait_for(|stop| *stop).await;
    }

    pub fn is_requested(&self) -> bool {
        *self.0.borrow()
    }
}
