//! The service's background loops: histogram upkeep, statsd flushes, and sweeping
//! expired counters. Each ends at shutdown.

use std::sync::Arc;
use std::time::Duration;

use crate::clock::Clock;
use crate::signal::Shutdown;
use crate::stats::Stats;
use crate::stats::statsd::StatsdSink;
use crate::store::MemoryStore;

/// How often histogram samples are folded into buckets.
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);
/// The shortest pause between sweeps of expired counters.
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// Folds histogram samples into buckets, so their memory stays bounded between scrapes.
pub(super) async fn upkeep_loop(stats: Arc<Stats>, mut stop: Shutdown) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(UPKEEP_INTERVAL) => stats.upkeep(),
            _ = stop.requested() => return,
        }
    }
}

/// Sends stats to statsd every `STATS_FLUSH_INTERVAL`.
pub(super) async fn statsd_loop(statsd: Arc<StatsdSink>, mut stop: Shutdown) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(statsd.flush_interval()) => {}
            _ = stop.requested() => return,
        }
        let sink = statsd.clone();
        let _ = tokio::task::spawn_blocking(move || sink.flush()).await;
    }
}

/// Reclaims expired counters every second, pacing itself so sweeping a huge store takes
/// at most about 5% of a core; keeps the memory gauges current. (Eviction past the cap
/// needs no sweeper: inserts do it.)
pub(super) async fn sweep_loop(memory: Arc<MemoryStore>, clock: Clock, stats: Arc<Stats>, mut stop: Shutdown) {
    let mut pause = SWEEP_INTERVAL;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = stop.requested() => return,
        }
        let store = memory.clone();
        let now = clock.now();
        let started = std::time::Instant::now();
        let Ok(report) = tokio::task::spawn_blocking(move || store.sweep(now)).await else {
            return;
        };
        pause = SWEEP_INTERVAL.max(started.elapsed() * 20);
        stats.counters_live.set(report.live as f64);
        stats.counter_evictions.absolute(memory.evictions());
        stats.counters_reclaimed.absolute(memory.reclaimed());
    }
}
