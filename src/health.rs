//! Health: a few named components whose AND is "serving".
//!
//! Owns the one answer that `/healthcheck` and the gRPC health service both give.
//! Components, as in the reference: `config` (only when
//! `HEALTHY_WITH_AT_LEAST_ONE_CONFIG_LOADED`: a config with at least one domain is
//! loaded), `backend` (the counter store can answer), and `draining` (SIGTERM arrived;
//! Kubernetes and Envoy should stop sending). Every change is published on a watch
//! channel that keeps the gRPC health service in step.

use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::watch;

#[derive(Debug)]
pub struct Health {
    require_config: bool,
    config_loaded: AtomicBool,
    backend_ok: AtomicBool,
    draining: AtomicBool,
    serving: watch::Sender<bool>,
}

impl Health {
    pub fn new(require_config: bool) -> Self {
        let (serving, _) = watch::channel(!require_config);
        Health {
            require_config,
            config_loaded: AtomicBool::new(false),
            backend_ok: AtomicBool::new(true),
            draining: AtomicBool::new(false),
            serving,
        }
    }

    pub fn is_serving(&self) -> bool {
        (!self.require_config || self.config_loaded.load(Ordering::Acquire))
            && self.backend_ok.load(Ordering::Acquire)
            && !self.draining.load(Ordering::Acquire)
    }

    /// A config loaded; `domains` is how many it has (zero counts as not loaded, as in
    /// the reference).
    pub fn set_config_loaded(&self, domains: usize) {
        self.config_loaded.store(domains > 0, Ordering::Release);
        self.publish();
    }

    pub fn set_backend_ok(&self, ok: bool) {
        self.backend_ok.store(ok, Ordering::Release);
        self.publish();
    }

    /// SIGTERM arrived: report not serving from now on.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Release);
        self.publish();
    }

    /// Follows every change of the serving state.
    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.serving.subscribe()
    }

    fn publish(&self) {
        let now = self.is_serving();
        self.serving.send_if_modified(|serving| std::mem::replace(serving, now) != now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_component_counts_only_when_required() {
        let h = Health::new(false);
        assert!(h.is_serving());
        let h = Health::new(true);
        assert!(!h.is_serving());
        h.set_config_loaded(2);
        assert!(h.is_serving());
        h.set_config_loaded(0);
        assert!(!h.is_serving(), "a load with no domains is not healthy (reference S15)");
    }

    #[test]
    fn draining_and_backend_failures_flip_it_and_subscribers_see_it() {
        let h = Health::new(false);
        let mut rx = h.subscribe();
        h.set_backend_ok(false);
        assert!(rx.has_changed().unwrap());
        assert!(!*rx.borrow_and_update());
        h.set_backend_ok(true);
        assert!(*rx.borrow_and_update());
        h.start_draining();
        assert!(!h.is_serving());
        assert!(!*rx.borrow_and_update());
    }
}
