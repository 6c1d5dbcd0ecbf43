//! Leased mode's background work: the heartbeat that counts live replicas, the sweep
//! that gives idle leases back to Redis and counts a past window's units as wasted, and
//! publishing the counts as metrics. At shutdown every held unit is given back and the
//! replica leaves the live set.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::task::JoinHandle;

use super::{LeasedStore, reserve, window_index};
use crate::clock::Nanos;
use crate::signal::Shutdown;
use crate::stats::Stats;
use crate::stats::lease::LeaseMetrics;
use crate::store::Lane;

/// Counts of leased mode's work, published as metrics by `background`.
#[derive(Debug, Default)]
pub struct LeaseCounts {
    pub leases: AtomicU64,
    pub reserved: AtomicU64,
    pub returned: AtomicU64,
    pub wasted: AtomicU64,
    pub redis_ops: AtomicU64,
    pub admitted: AtomicU64,
}

/// How often this replica beats (the live set forgets it after `reserve::HEARTBEAT_TTL`).
const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(2);
/// How often leases are swept.
const SWEEP_INTERVAL: Duration = Duration::from_millis(100);
/// A lease unused this long gives its units back.
pub const IDLE_MS: u64 = 300;
/// A lease unused this long, and empty, is forgotten.
const FORGET_MS: u64 = 30_000;
/// Idle leases are looked for every this many sweeps.
const FORGET_EVERY: u64 = 10;
/// How often the metrics are published.
const PUBLISH_INTERVAL: Duration = Duration::from_secs(1);

impl LeasedStore {
    /// The sorted set of live replicas.
    fn replica_set(&self) -> String {
        format!("{}sluicegate_lease_replicas", self.redis.options().key_prefix)
    }

    /// Starts the heartbeat, the sweep and the metrics; they run until `stop`.
    pub fn maintain(self: &Arc<Self>, stop: &Shutdown, stats: &Stats) -> Vec<JoinHandle<()>> {
        vec![
            tokio::spawn(heartbeat_loop(self.clone(), stop.clone())),
            tokio::spawn(sweep_loop(self.clone(), stop.clone())),
            tokio::spawn(publish_loop(self.clone(), stats.lease(), stop.clone())),
        ]
    }

    /// Beats once: records this replica and reads the live count.
    pub async fn beat(&self) {
        let backend = self.deployment(false);
        let Ok(links) = backend.links() else { return };
        self.counts.redis_ops.fetch_add(1, Ordering::Relaxed);
        // Wall-clock time: every replica scores the shared set on the same scale.
        let now_ms = crate::clock::Clock::System.now().0 / 1_000_000;
        match reserve::heartbeat(backend, links.here(Lane::Main), &self.replica_set(), &self.id, now_ms).await {
            Ok(live) => self.live.store(live, Ordering::Relaxed),
            Err(e) => tracing::debug!(error = %e, "lease heartbeat failed"),
        }
    }

    /// One sweep: a past window's units are wasted; an idle lease's (or, with `all`,
    /// every lease's) units go back to Redis.
    pub async fn sweep(&self, all: bool) {
        let now_ms = self.ms();
        let now = Nanos(self.last_now.load(Ordering::Relaxed));
        for lease in self.leases.holding() {
            let Ok(sizing) = lease.reserve.try_lock() else { continue };
            let (window, units) = lease.held();
            if units == 0 {
                continue;
            }
            if lease.params.algorithm == crate::limiter::Algorithm::TokenBucket {
                // A bucket's units are never given back (see `bucket`): they expire.
                if super::bucket::expired(window, now.0 / 1_000_000) || all {
                    let (_, drained) = lease.drain();
                    self.counts.wasted.fetch_add(u64::from(drained), Ordering::Relaxed);
                }
                continue;
            }
            let current = window_index(now, &lease.params);
            if window < current {
                let (_, drained) = lease.drain();
                self.counts.wasted.fetch_add(u64::from(drained), Ordering::Relaxed);
                continue;
            }
            let idle = now_ms.saturating_sub(lease.last_used_ms.load(Ordering::Relaxed)) >= IDLE_MS;
            if !(all || idle) || sizing.key.is_empty() {
                continue;
            }
            let (window, drained) = lease.drain();
            if drained == 0 {
                continue;
            }
            let backend = self.deployment(sizing.per_second);
            let given = match backend.links() {
                Ok(links) => {
                    self.counts.redis_ops.fetch_add(1, Ordering::Relaxed);
                    let link = links.here(Lane::Main);
                    if lease.params.algorithm == crate::limiter::Algorithm::SlidingWindow {
                        let units = u64::from(drained);
                        super::sliding::give_back(backend, link, &sizing.key, units, window, &lease.params).await
                    } else {
                        reserve::give_back(backend, link, &sizing.key, u64::from(drained)).await
                    }
                }
                Err(message) => Err(crate::store::StoreError { message }),
            };
            match given {
                Ok(()) => self.counts.returned.fetch_add(u64::from(drained), Ordering::Relaxed),
                // Not given back: unspent until the window ends, as a lost replica's.
                Err(_) => self.counts.wasted.fetch_add(u64::from(drained), Ordering::Relaxed),
            };
        }
    }

    /// Forgets leases unused for a while that hold nothing.
    pub fn forget_idle(&self) {
        let now_ms = self.ms();
        self.leases.retain(|lease| {
            let (_, units) = lease.held();
            let idle = now_ms.saturating_sub(lease.last_used_ms.load(Ordering::Relaxed));
            units > 0 || idle < FORGET_MS || lease.reserve.try_lock().is_err()
        });
    }
}

async fn heartbeat_loop(store: Arc<LeasedStore>, mut stop: Shutdown) {
    loop {
        store.beat().await;
        tokio::select! {
            _ = tokio::time::sleep(HEARTBEAT_INTERVAL) => {}
            _ = stop.requested() => break,
        }
    }
    // Leaving: give every unit back and drop out of the live set.
    store.sweep(true).await;
    let backend = store.deployment(false);
    if let Ok(links) = backend.links() {
        let _ = reserve::leave(backend, links.here(Lane::Main), &store.replica_set(), &store.id).await;
    }
}

async fn sweep_loop(store: Arc<LeasedStore>, mut stop: Shutdown) {
    for sweeps in 1u64.. {
        tokio::select! {
            _ = tokio::time::sleep(SWEEP_INTERVAL) => {}
            _ = stop.requested() => return,
        }
        store.sweep(false).await;
        // Every table entry is visited to forget the idle: not at every sweep.
        if sweeps % FORGET_EVERY == 0 {
            store.forget_idle();
        }
    }
}

async fn publish_loop(store: Arc<LeasedStore>, metrics: LeaseMetrics, mut stop: Shutdown) {
    loop {
        let c = &store.counts;
        metrics.leases.absolute(c.leases.load(Ordering::Relaxed));
        metrics.reserved.absolute(c.reserved.load(Ordering::Relaxed));
        metrics.returned.absolute(c.returned.load(Ordering::Relaxed));
        metrics.wasted.absolute(c.wasted.load(Ordering::Relaxed));
        metrics.redis_ops.absolute(c.redis_ops.load(Ordering::Relaxed));
        metrics.admitted.absolute(c.admitted.load(Ordering::Relaxed));
        metrics.replicas.set(store.live_replicas() as f64);
        tokio::select! {
            _ = tokio::time::sleep(PUBLISH_INTERVAL) => {}
            _ = stop.requested() => return,
        }
    }
}
