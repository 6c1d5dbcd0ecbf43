//! The Redis store's background work: keeping every deployment connected, following
//! their state into the service's health (by the failure policy) and the metrics.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::task::JoinHandle;

use super::{Deployment, RedisStore};
use crate::signal::Shutdown;
use crate::stats::Stats;
use crate::stats::backend::DeploymentMetrics;

/// How often the connection and cache gauges are refreshed.
const GAUGE_INTERVAL: Duration = Duration::from_secs(1);

impl RedisStore {
    /// Starts connecting every deployment (each gRPC worker runtime in `workers` gets
    /// connections of its own, driven on it; `main` serves every other caller) and
    /// following their state: `serving` hears whether the service can answer as its
    /// policy says, the metrics stay current. Runs until `stop`; returns the tasks.
    pub fn maintain(
        self: &Arc<Self>,
        stop: &Shutdown,
        main: tokio::runtime::Handle,
        workers: Vec<tokio::runtime::Handle>,
        stats: &Stats,
        serving: impl Fn(bool) + Send + Sync + 'static,
    ) -> Vec<JoinHandle<()>> {
        let mut tasks = self.supervise(stop, main, workers);
        let serving: Arc<dyn Fn(bool) + Send + Sync> = Arc::new(serving);
        for deployment in self.backends() {
            let follow = follow(deployment.clone(), self.clone(), serving.clone(), stats.deployment(deployment.name));
            tasks.push(tokio::spawn(follow));
        }
        tasks.push(tokio::spawn(gauges(self.clone(), stats, stop.clone())));
        tasks
    }
}

/// Mirrors a deployment's up/down into `serving` and its gauge, at every change.
async fn follow(
    deployment: Arc<Deployment>,
    store: Arc<RedisStore>,
    serving: Arc<dyn Fn(bool) + Send + Sync>,
    metrics: DeploymentMetrics,
) {
    let mut state = deployment.subscribe();
    loop {
        metrics.up.set(if *state.borrow_and_update() { 1.0 } else { 0.0 });
        serving(store.serving());
        if state.changed().await.is_err() {
            return;
        }
    }
}

/// Keeps the connection, fallback and local-cache gauges current.
fn gauges(store: Arc<RedisStore>, stats: &Stats, mut stop: Shutdown) -> impl Future<Output = ()> + use<> {
    let pools: Vec<(Arc<Deployment>, DeploymentMetrics)> =
        store.backends().map(|b| (b.clone(), stats.deployment(b.name))).collect();
    let fallbacks = stats.backend_fallbacks();
    let cache = store.local_cache().map(|_| stats.local_cache());
    async move {
        loop {
            for (deployment, metrics) in &pools {
                let opened = deployment.connections_opened.load(Ordering::Relaxed);
                let closed = deployment.connections_closed.load(Ordering::Relaxed);
                let active = if deployment.is_up() { opened.saturating_sub(closed) } else { 0 };
                metrics.active.set(active as f64);
                metrics.opened.absolute(opened);
                metrics.closed.absolute(closed);
            }
            fallbacks.absolute(store.fallbacks.load(Ordering::Relaxed));
            if let (Some(metrics), Some(local)) = (&cache, store.local_cache()) {
                metrics.entries.set(local.len() as f64);
                metrics.hits.absolute(local.hits.load(Ordering::Relaxed));
                metrics.misses.absolute(local.misses.load(Ordering::Relaxed));
            }
            tokio::select! {
                _ = tokio::time::sleep(GAUGE_INTERVAL) => {}
                _ = stop.requested() => return,
            }
        }
    }
}
