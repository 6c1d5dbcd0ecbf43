//! Calls in flight, for shutdown to wait on.
//!
//! Owns the drain signal: every request an endpoint's connections dispatch holds a
//! [`CallGuard`] from the moment hyper hands it over (headers read) until its answer is
//! written or it is dropped; the last guard to go wakes whoever waits in
//! [`CallsInFlight::idle`]. Shutdown waits on that, with no polling.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::Notify;

/// The calls one endpoint is answering (one per gRPC worker, so counting costs no
/// cross-core traffic).
#[derive(Debug, Default)]
pub struct CallsInFlight {
    count: AtomicUsize,
    idle: Notify,
}

/// One call in flight; dropping it ends the call.
#[derive(Debug)]
pub struct CallGuard(Arc<CallsInFlight>);

impl CallsInFlight {
    pub fn enter(self: &Arc<Self>) -> CallGuard {
        self.count.fetch_add(1, Ordering::AcqRel);
        CallGuard(self.clone())
    }

    pub fn count(&self) -> usize {
        self.count.load(Ordering::Acquire)
    }

    /// Completes when no call is in flight (at once, if none is).
    pub async fn idle(&self) {
        loop {
            let notified = self.idle.notified();
            tokio::pin!(notified);
            // Registered before the check, so a last call ending in between still wakes us.
            notified.as_mut().enable();
            if self.count() == 0 {
                return;
            }
            notified.await;
        }
    }
}

impl Drop for CallGuard {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn idle_completes_when_the_last_call_ends_and_not_before() {
        let calls = Arc::new(CallsInFlight::default());
        calls.idle().await;
        let (first, second) = (calls.enter(), calls.enter());
        let waiter = tokio::spawn({
            let calls = calls.clone();
            async move { calls.idle().await }
        });
        drop(first);
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished(), "one call is still in flight");
        assert_eq!(calls.count(), 1);
        drop(second);
        tokio::time::timeout(Duration::from_secs(5), waiter).await.expect("woken by the last call").unwrap();
    }
}
