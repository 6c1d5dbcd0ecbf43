//! Leased mode's metrics (`REDIS_LEASING=true`): leases taken, units reserved, returned
//! and wasted, and the Redis operations and admissions from which operations per
//! admitted request are derived. Names and help texts live here with every other
//! metric's; the leased store only counts, and its background task publishes the counts.

use metrics::{Counter, Gauge};

use super::Stats;

/// The leased store's metrics.
#[derive(Debug)]
pub struct LeaseMetrics {
    pub leases: Counter,
    pub reserved: Counter,
    pub returned: Counter,
    pub wasted: Counter,
    pub redis_ops: Counter,
    pub admitted: Counter,
    pub replicas: Gauge,
}

impl Stats {
    pub fn lease(&self) -> LeaseMetrics {
        LeaseMetrics {
            leases: self.counter("sluicegate_lease_taken_total", &[], "Reservations that took units from Redis"),
            reserved: self.counter(
                "sluicegate_lease_units_reserved_total",
                &[],
                "Units taken from Redis by reservations, and one request at a time for cold counters",
            ),
            returned: self.counter(
                "sluicegate_lease_units_returned_total",
                &[],
                "Unspent leased units given back to Redis when a lease went idle",
            ),
            wasted: self.counter(
                "sluicegate_lease_units_wasted_total",
                &[],
                "Leased units left unspent when their window ended",
            ),
            redis_ops: self.counter(
                "sluicegate_lease_redis_ops_total",
                &[],
                "Redis operations of leased mode (reservations, give-backs, heartbeats)",
            ),
            admitted: self.counter(
                "sluicegate_lease_admitted_total",
                &[],
                "Hits admitted from leases (divide redis_ops by it for operations per admitted hit)",
            ),
            replicas: self.gauge(
                "sluicegate_lease_live_replicas",
                &[],
                "Replicas with a live heartbeat in Redis, as last read",
            ),
        }
    }
}
