//! The counter backend's metrics: Redis connections and health, the local over-limit
//! cache, and calls counted in memory while Redis was down. Names and help texts live
//! here with every other metric's; the Redis store only sets them.

use metrics::{Counter, Gauge};

use super::Stats;

/// One Redis deployment's connection metrics (`redis` or `redis_per_second`).
#[derive(Debug)]
pub struct DeploymentMetrics {
    pub up: Gauge,
    pub active: Gauge,
    pub opened: Counter,
    pub closed: Counter,
}

/// The local over-limit cache's metrics (`LOCAL_CACHE_SIZE_IN_BYTES`).
#[derive(Debug)]
pub struct LocalCacheMetrics {
    pub entries: Gauge,
    pub hits: Counter,
    pub misses: Counter,
}

impl Stats {
    /// The metrics of the deployment named `name`, with the reference's pool names.
    pub fn deployment(&self, name: &'static str) -> DeploymentMetrics {
        let (active, total, closed) = if name == "redis" {
            ("ratelimit_redis_pool_cx_active", "ratelimit_redis_pool_cx_total", "ratelimit_redis_pool_cx_local_close")
        } else {
            (
                "ratelimit_redis_per_second_pool_cx_active",
                "ratelimit_redis_per_second_pool_cx_total",
                "ratelimit_redis_per_second_pool_cx_local_close",
            )
        };
        DeploymentMetrics {
            up: self.gauge("sluicegate_backend_up", &[("backend", name)], "1 while the Redis deployment answers"),
            active: self.gauge(active, &[], "Open Redis connections"),
            opened: self.counter(total, &[], "Redis connections opened"),
            closed: self.counter(closed, &[], "Redis connections closed by sluicegate"),
        }
    }

    /// Requests counted in memory because Redis failed (`BACKEND_FAILURE_POLICY=local`).
    pub fn backend_fallbacks(&self) -> Counter {
        self.counter(
            "sluicegate_backend_fallbacks_total",
            &[],
            "Requests counted in memory because Redis failed (BACKEND_FAILURE_POLICY=local)",
        )
    }

    /// The reference's local cache metrics.
    pub fn local_cache(&self) -> LocalCacheMetrics {
        LocalCacheMetrics {
            entries: self.gauge("ratelimit_localcache_entry_count", &[], "Keys in the local over-limit cache"),
            hits: self.counter(
                "ratelimit_localcache_hit_count",
                &[],
                "Requests answered from the local over-limit cache",
            ),
            misses: self.counter("ratelimit_localcache_miss_count", &[], "Local over-limit cache lookups that missed"),
        }
    }
}
