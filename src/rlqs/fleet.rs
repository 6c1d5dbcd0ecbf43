//! Dividing a bucket's limit among sluicegate replicas through Redis
//! (`BACKEND_TYPE=redis`): the [`QuotaSource`] that makes the fleet's assignments, not
//! each replica's, stay within the limit.
//!
//! Each replica publishes, for every limited bucket its clients report, their total
//! demand into a Redis hash per bucket (field: the replica, value: `demand:millis`), and
//! reads every replica's entry back in the same round trip, once per [`SYNC_INTERVAL`].
//! Its budget for the bucket is the limit times its part of the fleet's fresh demand
//! (entries older than [`STALE`] are ignored, and deleted). So the replicas' budgets add
//! up to the limit, as each one's clients' shares add up to its budget.
//!
//! This is demand-proportional division, not leasing: between syncs, and until a
//! replica's first sync of a bucket (it then hands out the whole limit, as without
//! Redis), the fleet can hand out more than the limit, for at most about a second. The
//! leased-quota allocator, once on main, replaces this source behind the same trait.
//! When Redis is unreachable, budgets stay as last synced.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use super::allocator::QuotaSource;
use super::matching::Quota;
use crate::clock::{Clock, Nanos};
use crate::signal::Shutdown;
use crate::store::Lane;
use crate::store::redis::Deployment;

/// How often demands are published and budgets recomputed.
pub const SYNC_INTERVAL: Duration = Duration::from_secs(1);

/// A replica's entry older than this is a replica gone (or cut off from Redis).
pub const STALE: Duration = Duration::from_secs(10);

/// A bucket no client of this replica reported for this long is no longer published.
const FORGET: Duration = Duration::from_secs(60);

/// What this replica knows of one bucket.
#[derive(Clone, Copy, Debug)]
struct Local {
    /// Its clients' demand, requests per second.
    demand: f64,
    /// Its part of the fleet's demand, once synced.
    part: Option<f64>,
    seen: Nanos,
}

/// Budgets from the fleet's demand, kept in Redis.
#[derive(Debug)]
pub struct FleetShares {
    deployment: Arc<Deployment>,
    /// This process, among the replicas (random per start).
    replica: String,
    /// `CACHE_KEY_PREFIX`, so fleets sharing a Redis stay apart.
    prefix: String,
    clock: Clock,
    /// A std mutex: held for a map lookup, never across an await.
    buckets: Mutex<HashMap<String, Local>>,
}

impl FleetShares {
    pub fn new(deployment: Arc<Deployment>, prefix: &str, clock: Clock) -> FleetShares {
        let replica = format!("{:016x}", foldhash::fast::RandomState::default().hash_one(clock.now().0));
        FleetShares { deployment, replica, prefix: prefix.to_string(), clock, buckets: Mutex::default() }
    }

    /// The Redis key of bucket `name`. One hash tag for every key, so a cluster serves a
    /// sync's pipeline from one slot.
    fn key(&self, name: &str) -> String {
        format!("{{{}rlqs}}:{name}", self.prefix)
    }

    /// Publishes and reads back every bucket's demand until `stop`.
    pub async fn run(self: Arc<Self>, mut stop: Shutdown) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(SYNC_INTERVAL) => {}
                _ = stop.requested() => return,
            }
            if let Err(e) = self.sync().await {
                tracing::debug!(error = %e, "RLQS: could not share demands through Redis; budgets stay as they were");
            }
        }
    }

    /// One round trip: publish this replica's demands, read everyone's.
    pub async fn sync(&self) -> Result<(), String> {
        let now = self.clock.now();
        let forget = u64::try_from(FORGET.as_nanos()).unwrap_or(u64::MAX);
        let published: Vec<(String, f64)> = {
            let mut buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
            buckets.retain(|_, b| now.0.saturating_sub(b.seen.0) <= forget);
            buckets.iter().map(|(name, b)| (name.clone(), b.demand)).collect()
        };
        if published.is_empty() {
            return Ok(());
        }
        let millis = now.0 / 1_000_000;
        let keep = u64::try_from(STALE.as_millis()).unwrap_or(u64::MAX);
        let mut pipeline = redis::pipe();
        for (name, demand) in &published {
            let key = self.key(name);
            pipeline.hset(&key, &self.replica, format!("{demand}:{millis}")).ignore();
            pipeline.pexpire(&key, (2 * keep) as i64).ignore();
            pipeline.hgetall(&key);
        }
        let links = self.deployment.links()?;
        let replies = links.here(Lane::Main).query(&pipeline).await.map_err(|e| e.to_string())?;
        let mut stale: Vec<(String, String)> = Vec::new();
        let mut parts: Vec<(String, f64)> = Vec::with_capacity(published.len());
        for ((name, mine), reply) in published.iter().zip(replies) {
            let entries: HashMap<String, String> = redis::from_redis_value(reply).map_err(|e| e.to_string())?;
            let mut total = 0.0;
            for (replica, value) in entries {
                let fresh = value
                    .split_once(':')
                    .and_then(|(d, at)| Some((d.parse::<f64>().ok()?, at.parse::<u64>().ok()?)))
                    .filter(|(d, at)| d.is_finite() && *d >= 0.0 && millis.saturating_sub(*at) <= keep);
                match fresh {
                    Some((demand, _)) => total += demand,
                    None => stale.push((self.key(name), replica)),
                }
            }
            // Nobody demanding anything: split evenly is as good as any, and this
            // replica cannot know how many others there are, so keep the whole limit.
            parts.push((name.clone(), if total > 0.0 { (mine / total).clamp(0.0, 1.0) } else { 1.0 }));
        }
        {
            let mut buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
            for (name, part) in parts {
                if let Some(b) = buckets.get_mut(&name) {
                    b.part = Some(part);
                }
            }
        }
        if !stale.is_empty() {
            let mut pipeline = redis::pipe();
            for (key, replica) in &stale {
                pipeline.hdel(key, replica).ignore();
            }
            links.here(Lane::Main).query(&pipeline).await.map_err(|e| e.to_string())?;
        }
        Ok(())
    }
}

impl QuotaSource for FleetShares {
    fn budget(&self, name: &str, quota: &Quota, demand: f64) -> f64 {
        let now = self.clock.now();
        let mut buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        let local = buckets.entry(name.to_string()).or_insert(Local { demand, part: None, seen: now });
        local.demand = demand;
        local.seen = now;
        // Before the first sync of the bucket: the whole limit, as without Redis.
        f64::from(quota.per_window) * local.part.unwrap_or(1.0)
    }
}
