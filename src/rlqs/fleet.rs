//! Dividing a bucket's limit among sluicegate replicas through Redis
//! (`BACKEND_TYPE=redis`): the [`QuotaSource`] that makes the fleet's assignments, not
//! each replica's, stay within the limit.
//!
//! A replica hands out only what it has claimed in Redis first. Once per
//! [`SYNC_INTERVAL`], for every limited bucket its clients report, it runs the claim
//! script (`claim`) on the bucket's hash: it publishes its clients' demand and gets back
//! its *grant*, its demand-proportional part of the limit as far as the other replicas'
//! live claims leave room. The claims in Redis never add up to more than the limit, and
//! a replica's budget is never more than its claim, so the fleet's assignments stay
//! within the limit:
//!
//! - **Before the first claim** of a bucket the budget is 0 (its clients are told
//!   `DENY_ALL`); a new bucket wakes the sync at once, and the upkeep after it pushes the
//!   real assignment, a few milliseconds later.
//! - **Releasing.** The claim stored is the larger of the new grant and the grant in
//!   force until now, so a reduction is released one sync later: the upkeep that follows
//!   every sync ([`FleetShares::run`]'s `after`) has queued the smaller assignments to the
//!   clients a whole [`SYNC_INTERVAL`] before the budget is given up.
//! - **A dead replica's** clients keep their assignments until their time to live runs
//!   out; its claim lives [`CLAIM_MARGIN`] longer than the longest time to live it
//!   handed out for the bucket, and only then do the others get its part.
//! - **Redis unreachable:** grants stay as last claimed (never grow).
//!
//! The claims' expiry times are the replicas' clocks: a skew between replicas shortens
//! or lengthens a claim's life by the skew, well inside [`CLAIM_MARGIN`] for clocks kept
//! by NTP.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use super::allocator::QuotaSource;
use super::claim::{self, Ask};
use super::matching::Quota;
use crate::clock::{Clock, Nanos};
use crate::signal::Shutdown;
use crate::store::Lane;
use crate::store::redis::Deployment;

/// How often every bucket's claim is renewed (and, one sync after a reduction, released).
pub const SYNC_INTERVAL: Duration = Duration::from_secs(1);

/// How much longer than the longest assignment time to live a claim lives unrefreshed:
/// the time between a replica's last assignment and its last sync, the delay before
/// Envoy receives an assignment, clock skew, a short Redis outage.
pub const CLAIM_MARGIN: Duration = Duration::from_secs(15);

/// A bucket no client of this replica reported for this long is no longer claimed (its
/// claim then lives out its lifetime in Redis).
const FORGET: Duration = Duration::from_secs(60);

/// What this replica knows of one bucket.
#[derive(Clone, Copy, Debug)]
struct Local {
    /// Its clients' demand, requests per second.
    demand: f64,
    /// The bucket's limit, requests per window.
    limit: f64,
    /// The longest assignment time to live handed out for the bucket.
    ttl: Duration,
    /// What it may hand out, once claimed.
    grant: Option<f64>,
    seen: Nanos,
}

/// Budgets claimed from the bucket's limit in Redis.
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
    /// Woken by a bucket not claimed yet, so its first claim does not wait for the tick.
    unclaimed: tokio::sync::Notify,
}

impl FleetShares {
    pub fn new(deployment: Arc<Deployment>, prefix: &str, clock: Clock) -> FleetShares {
        let replica = format!("{:016x}", foldhash::fast::RandomState::default().hash_one(clock.now().0));
        FleetShares {
            deployment,
            replica,
            prefix: prefix.to_string(),
            clock,
            buckets: Mutex::default(),
            unclaimed: tokio::sync::Notify::new(),
        }
    }

    /// The Redis key of bucket `name`. One hash tag for every key, so a cluster serves a
    /// sync's pipeline from one slot.
    fn key(&self, name: &str) -> String {
        format!("{{{}rlqs}}:{name}", self.prefix)
    }

    /// Claims every bucket each [`SYNC_INTERVAL`], and new buckets at once, until `stop`;
    /// calls `after` after each claim, so the budgets reach the clients before the next
    /// sync (which may release what they no longer hold).
    pub async fn run(self: Arc<Self>, mut stop: Shutdown, after: impl Fn() + Send) {
        let mut tick = tokio::time::Instant::now() + SYNC_INTERVAL;
        loop {
            let all = tokio::select! {
                _ = tokio::time::sleep_until(tick) => true,
                _ = self.unclaimed.notified() => false,
                _ = stop.requested() => return,
            };
            match self.sync(all).await {
                Ok(()) => after(),
                Err(e) => {
                    tracing::debug!(error = %e, "RLQS: could not claim budgets in Redis; they stay as they were")
                }
            }
            if all {
                // From the end of this sync: a reduction is released at least a whole
                // interval after the upkeep above pushed it.
                tick = tokio::time::Instant::now() + SYNC_INTERVAL;
            }
        }
    }

    /// One round trip: claims every bucket (`all`), or only those not claimed yet.
    pub async fn sync(&self, all: bool) -> Result<(), String> {
        let now = self.clock.now();
        let now_ms = now.0 / 1_000_000;
        let forget = u64::try_from(FORGET.as_nanos()).unwrap_or(u64::MAX);
        let asks: Vec<(String, Ask)> = {
            let mut buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
            buckets.retain(|_, b| now.0.saturating_sub(b.seen.0) <= forget);
            buckets
                .iter()
                .filter(|(_, b)| all || b.grant.is_none())
                .map(|(name, b)| {
                    let lifetime = b.ttl.saturating_add(CLAIM_MARGIN);
                    let ask = Ask {
                        demand: b.demand,
                        limit: b.limit,
                        now_ms,
                        lifetime_ms: u64::try_from(lifetime.as_millis()).unwrap_or(u64::MAX),
                        // The grant in force until now: its assignments may still be held.
                        keep: b.grant.unwrap_or(0.0),
                    };
                    (name.clone(), ask)
                })
                .collect()
        };
        if asks.is_empty() {
            return Ok(());
        }
        let replies = self.claim(&asks).await?;
        let mut buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        for ((name, _), reply) in asks.iter().zip(replies) {
            let (grant, _claim) = claim::parse(reply)?;
            if let Some(b) = buckets.get_mut(name) {
                b.grant = Some(grant);
            }
        }
        Ok(())
    }

    /// Runs the claim script for every ask in one pipeline; again in full if Redis does
    /// not know the script (a restart, a failover, `SCRIPT FLUSH`).
    async fn claim(&self, asks: &[(String, Ask)]) -> Result<Vec<redis::Value>, String> {
        let links = self.deployment.links()?;
        for full in [false, true] {
            let mut pipeline = redis::pipe();
            pipeline.ignore_errors();
            for (name, ask) in asks {
                claim::add(&mut pipeline, full, &self.key(name), &self.replica, ask);
            }
            let replies: Vec<redis::Value> =
                tokio::time::timeout(SYNC_INTERVAL, links.here(Lane::Main).query(&pipeline))
                    .await
                    .map_err(|_| format!("no answer within {SYNC_INTERVAL:?}"))?
                    .map_err(|e| e.to_string())?;
            let unknown = replies.iter().any(
                |r| matches!(r, redis::Value::ServerError(e) if e.kind() == Some(redis::ServerErrorKind::NoScript)),
            );
            if unknown && !full {
                continue;
            }
            if let Some(redis::Value::ServerError(e)) =
                replies.iter().find(|r| matches!(r, redis::Value::ServerError(_)))
            {
                return Err(format!("the RLQS claim script failed: {e:?}"));
            }
            if replies.len() != asks.len() {
                return Err(format!("{} replies to {} claims", replies.len(), asks.len()));
            }
            return Ok(replies);
        }
        Err("the RLQS claim script could not be loaded".to_string())
    }
}

impl QuotaSource for FleetShares {
    fn budget(&self, name: &str, quota: &Quota, demand: f64, ttl: Duration) -> f64 {
        let now = self.clock.now();
        let limit = f64::from(quota.per_window);
        let demand = if demand.is_finite() { demand.max(0.0) } else { 0.0 };
        let mut buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        let local = buckets.entry(name.to_string()).or_insert(Local { demand, limit, ttl, grant: None, seen: now });
        local.demand = demand;
        local.limit = limit;
        local.ttl = local.ttl.max(ttl);
        local.seen = now;
        match local.grant {
            Some(grant) => grant.min(limit),
            None => {
                // Nothing is handed out before it is claimed.
                self.unclaimed.notify_one();
                0.0
            }
        }
    }
}
