//! Leased mode of the Redis store (`REDIS_LEASING=true`): a replica reserves part of a
//! counter's window in Redis and admits from that lease in memory.
//!
//! Owns which counters are leased and the answer for each: a fixed-window, sliding-window
//! or token-bucket limit consuming hits is admitted from this replica's lease (see
//! `lease`), and when the lease is empty one reservation per counter goes to Redis (see
//! `reserve`, `sliding`, `bucket`) while the others wait for it. Every other counter (the
//! leaky bucket, checks with no hits, hits given back) goes through the per-request
//! Redis store unchanged. When
//! Redis fails, `BACKEND_FAILURE_POLICY` applies as in per-request mode, except that
//! `local` counts against this replica's share of the limit (limit / live replicas).
//! Giving idle units back, wasting a past window's, the heartbeat and the metrics are
//! `background`'s. docs/leasing.md states the bound and why the leaky bucket is not leased.
//!
//! The per-request store does not know this module: it is wrapped, not changed.

mod background;
mod fallback;
pub use background::LeaseCounts;
mod bucket;
pub mod lease;
mod outcome;
pub mod reserve;
pub mod sliding;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use futures_util::future::join_all;
use smallvec::SmallVec;

use super::redis::{Deployment, keys};
use super::{Applied, Batch, Counter, CounterStore, Lane, RedisStore, StoreError};
use crate::clock::Nanos;
use crate::limiter::{Algorithm, LimitParams, Outcome, Unit, fixed_window};
use crate::rules::EntryView;
use fallback::SHARE_SUFFIX;
pub use fallback::share_params;
use lease::{Lease, Leases};
pub use outcome::window_index;
use outcome::{admitted_outcome, closed, rejected, unset};
use reserve::Ask;

/// A window Redis said is full is asked again after this long (units may have been given
/// back by idle replicas).
pub const RECHECK_MS: u64 = 1_000;
/// A full sliding window frees room continuously as its previous window decays, and an
/// empty bucket as it refills: either is asked again once that would admit the request,
/// but not sooner than this (fewer, larger reservations; the cost is rejecting early,
/// never admitting more; a bucket's tokens keep accruing in Redis meanwhile).
pub const RECHECK_MIN_MS: u64 = 50;

/// The Redis store with leases in front of its windows and token buckets.
#[derive(Debug)]
pub struct LeasedStore {
    redis: Arc<RedisStore>,
    leases: Leases,
    /// Time origin for the leases' millisecond stamps (always the system's monotonic
    /// time: leases age in real time whatever clock decides windows).
    epoch: Instant,
    /// Replicas with a live heartbeat, as last read (at least 1).
    live: AtomicU64,
    /// The latest `now` a decision was made at: the sweep's idea of the current window.
    last_now: AtomicU64,
    /// This replica's id in the heartbeat set.
    id: String,
    /// A lease aims to hold what this replica spends in this long (`REDIS_LEASE_HORIZON`).
    horizon_ms: u64,
    pub counts: LeaseCounts,
}

impl LeasedStore {
    /// Leases in front of `redis`, at most `max_leases` of them (`MEMORY_MAX_COUNTERS`);
    /// counters past that are decided per request.
    pub fn new(redis: Arc<RedisStore>, max_leases: usize) -> LeasedStore {
        use std::hash::BuildHasher;
        let random = foldhash::fast::RandomState::default().hash_one(std::process::id());
        let id = format!("{:016x}-{}", random, std::process::id());
        let horizon_ms = u64::try_from(redis.options().lease_horizon.as_millis()).unwrap_or(u64::MAX).max(1);
        LeasedStore {
            horizon_ms,
            redis,
            leases: Leases::new(max_leases),
            epoch: Instant::now(),
            live: AtomicU64::new(1),
            last_now: AtomicU64::new(0),
            id,
            counts: LeaseCounts::default(),
        }
    }

    /// The per-request store behind the leases.
    pub fn redis(&self) -> &Arc<RedisStore> {
        &self.redis
    }

    pub fn live_replicas(&self) -> u64 {
        self.live.load(Ordering::Relaxed).max(1)
    }

    pub fn lease_count(&self) -> usize {
        self.leases.len()
    }

    fn ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Whether `counter` is admitted from a lease.
    fn is_leased<E: EntryView>(counter: &Counter<'_, E>) -> bool {
        matches!(counter.params.algorithm, Algorithm::FixedWindow | Algorithm::SlidingWindow | Algorithm::TokenBucket)
            && !counter.give_back
            && counter.hits > 0
    }

    /// Whether `counter`'s hits, when taken back, go back into its lease: a window's
    /// do; a bucket's go back to Redis as in per-request mode (its lease expires too
    /// soon to hold them).
    fn refunds_to_lease<E: EntryView>(counter: &Counter<'_, E>) -> bool {
        Self::is_leased(counter) && counter.params.algorithm != Algorithm::TokenBucket
    }

    fn per_second(&self, params: &LimitParams) -> bool {
        self.redis.options().per_second.is_some() && params.unit == Unit::Second && params.unit_multiplier == 1
    }

    fn deployment(&self, per_second: bool) -> &Arc<Deployment> {
        let mut backends = self.redis.backends();
        let main = backends.next().expect("a main deployment");
        if per_second { backends.next().unwrap_or(main) } else { main }
    }

    /// Decides one leased counter of any algorithm.
    async fn admit_any<E: EntryView>(
        &self,
        counter: &Counter<'_, E>,
        now: Nanos,
        lane: Lane,
    ) -> Result<Applied, StoreError> {
        if counter.params.algorithm == Algorithm::TokenBucket {
            self.admit_bucket(counter, now, lane).await
        } else {
            self.admit(counter, now, lane).await
        }
    }

    /// Decides one leased window counter.
    async fn admit<E: EntryView>(
        &self,
        counter: &Counter<'_, E>,
        now: Nanos,
        lane: Lane,
    ) -> Result<Applied, StoreError> {
        let params = counter.params;
        let hits = counter.hits;
        let window = window_index(now, params);
        // Closed windows reopen by the decision clock (a sliding window decays by it).
        let decision_ms = now.0 / 1_000_000;
        let mut key = Vec::with_capacity(64);
        counter.encode(&mut key);
        let used_at_ms = self.ms();
        let Some(lease) = self.leases.get(&key, params, used_at_ms, self.horizon_ms) else {
            return self.per_request(counter, key, now, lane, None).await;
        };
        lease.last_used_ms.store(used_at_ms, Ordering::Relaxed);
        if let Some(left) = lease.take(window, hits) {
            return Ok(self.admitted(&lease, window, left, hits, now));
        }
        if lease.is_closed(window, decision_ms) {
            return Ok(closed(&lease, window, hits, now));
        }
        // Empty: one reservation per counter at a time; the others wait for it here.
        let mut sizing = lease.reserve.lock().await;
        if let Some(left) = lease.take(window, hits) {
            return Ok(self.admitted(&lease, window, left, hits, now));
        }
        let now_ms = self.ms();
        if lease.is_closed(window, decision_ms) {
            return Ok(closed(&lease, window, hits, now));
        }
        let per_second = self.per_second(params);
        let backend = self.deployment(per_second);
        let links = match backend.links() {
            Ok(links) => links,
            Err(message) => return self.failed(counter, key, now, StoreError { message }),
        };
        let want = sizing.want(lease.spent.load(Ordering::Relaxed), now_ms, hits, self.horizon_ms);
        if want == hits && params.algorithm == Algorithm::FixedWindow {
            // Cold: a lease would hold nothing beyond this request, so it is counted as
            // per-request mode counts it (INCRBY), at per-request mode's cost.
            return self.per_request(counter, key, now, lane, Some((&lease, window))).await;
        }
        let mut redis_key = String::with_capacity(64);
        keys::write_key(&mut redis_key, &self.redis.options().key_prefix, counter, now);
        let ask = Ask {
            want,
            need: hits,
            limit: u64::from(params.requests_per_unit),
            live: self.live_replicas(),
            ttl_secs: params.window_secs.max(1) + 1,
        };
        self.counts.redis_ops.fetch_add(1, Ordering::Relaxed);
        let sliding = params.algorithm == Algorithm::SlidingWindow;
        let found =
            if sliding {
                sliding::reserve(backend, links.here(lane), &redis_key, ask, params, now).await
            } else {
                reserve::reserve(backend, links.here(lane), &redis_key, ask)
                    .await
                    .map(|(got, current)| sliding::Found { got, window, previous: 0, current })
            };
        match found {
            Ok(sliding::Found { got, window, previous, current: count }) => {
                lease.set_seen(window, count);
                lease.set_previous(window, previous);
                if got >= hits {
                    self.counts.leases.fetch_add(1, Ordering::Relaxed);
                    self.counts.reserved.fetch_add(got, Ordering::Relaxed);
                    sizing.key = redis_key;
                    sizing.per_second = per_second;
                    let wasted = lease.add(window, got - hits);
                    self.counts.wasted.fetch_add(wasted, Ordering::Relaxed);
                    lease.spent.fetch_add(hits, Ordering::Relaxed);
                    lease.note_spent(window, hits);
                    self.counts.admitted.fetch_add(hits, Ordering::Relaxed);
                    let (_, left) = lease.held();
                    Ok(admitted_outcome(&lease, window, left, hits, now))
                } else if sliding {
                    // No room for the hits: not counted, as in per-request mode. Ask
                    // again when the previous window has decayed enough, or sooner.
                    let outcome = sliding::outcome(window, previous, count, hits, now, params);
                    let decayed_ms = outcome.reset_after.0 / 1_000_000;
                    lease.close(window, decision_ms + decayed_ms.clamp(RECHECK_MIN_MS, RECHECK_MS));
                    Ok(Applied::decided(outcome, false))
                } else {
                    // The window has fewer units left than this request needs.
                    // Redis counted the hits anyway, as the per-request mode does.
                    lease.close(window, decision_ms + RECHECK_MS);
                    Ok(rejected(count.saturating_sub(hits), hits, now, params))
                }
            }
            Err(e) => self.failed(counter, key, now, e),
        }
    }

    /// Decides one counter as per-request mode does (its script or `INCRBY`), but with
    /// leased mode's failure policy. With its fixed-window lease, an admission is noted
    /// as spent from it (a refund may put it back there: the unit was taken from Redis)
    /// and a full window closes it.
    async fn per_request<E: EntryView>(
        &self,
        counter: &Counter<'_, E>,
        key: Vec<u8>,
        now: Nanos,
        lane: Lane,
        lease: Option<(&Lease, u32)>,
    ) -> Result<Applied, StoreError> {
        self.counts.redis_ops.fetch_add(1, Ordering::Relaxed);
        let (decided, failure) = self.redis.decide_all(std::slice::from_ref(counter), now, lane).await;
        if let Some((error, _)) = failure {
            return self.failed(counter, key, now, error);
        }
        let applied = decided[0];
        if let Some((lease, window)) = lease {
            lease.set_seen(window, applied.outcome.after);
            if applied.outcome.over_limit {
                lease.close(window, now.0 / 1_000_000 + RECHECK_MS);
            } else {
                lease.spent.fetch_add(counter.hits, Ordering::Relaxed);
                lease.note_spent(window, counter.hits);
            }
        }
        if !applied.outcome.over_limit {
            // Taken from Redis like a lease's units, and spent at once.
            self.counts.reserved.fetch_add(counter.hits, Ordering::Relaxed);
            self.counts.admitted.fetch_add(counter.hits, Ordering::Relaxed);
        }
        Ok(applied)
    }

    /// A leased counter decided per request: a check (no hits) counts this replica's
    /// unspent leased units as not used; hits given back reopen the lease.
    fn adjust<E: EntryView>(&self, counter: &Counter<'_, E>, applied: Applied, now: Nanos) -> Applied {
        let params = counter.params;
        if !matches!(params.algorithm, Algorithm::FixedWindow | Algorithm::SlidingWindow | Algorithm::TokenBucket)
            || applied.waived
            || applied.cached
        {
            return applied;
        }
        let mut key = Vec::with_capacity(64);
        counter.encode(&mut key);
        let Some(lease) = self.leases.find(&key).filter(|l| l.params == *params) else { return applied };
        if counter.give_back {
            lease.reopen();
        }
        if params.algorithm == Algorithm::TokenBucket {
            return bucket::discount_unspent(&lease, counter.hits, applied, now);
        }
        let (window, left) = lease.held();
        if counter.hits > 0 || window != window_index(now, params) || left == 0 {
            return applied;
        }
        let after = applied.outcome.after.saturating_sub(u64::from(left));
        if params.algorithm == Algorithm::SlidingWindow {
            let o = applied.outcome;
            let remaining = (u64::from(o.remaining) + u64::from(left)).min(u64::from(params.requests_per_unit));
            let outcome =
                Outcome { before: o.before.saturating_sub(u64::from(left)), after, remaining: remaining as u32, ..o };
            return Applied { outcome, ..applied };
        }
        Applied { outcome: fixed_window::outcome_of_count(after, 0, now, params), ..applied }
    }

    fn admitted(&self, lease: &Lease, window: u32, left: u32, hits: u64, now: Nanos) -> Applied {
        lease.note_spent(window, hits);
        self.counts.admitted.fetch_add(hits, Ordering::Relaxed);
        admitted_outcome(lease, window, left, hits, now)
    }

    /// Takes back hits of leased counters decided at `consumed_at`: into the lease, up to
    /// what the lease admitted in that window (so only units taken from Redis return to
    /// it); the rest into the fallback's share counter, where it counted them.
    fn refund_leased<E: EntryView>(&self, counter: &Counter<'_, E>, consumed_at: Nanos) {
        let mut key = Vec::with_capacity(64);
        counter.encode(&mut key);
        let window = window_index(consumed_at, counter.params);
        let mut rest = counter.hits;
        if let Some(lease) = self.leases.find(&key)
            && lease.params == *counter.params
        {
            let back = lease.unspend(window, rest);
            if back > 0 {
                let wasted = lease.add(window, back);
                self.counts.wasted.fetch_add(wasted, Ordering::Relaxed);
            }
            rest -= back;
        }
        if rest > 0
            && let Some(fallback) = self.redis.fallback()
        {
            let share = share_params(counter.params, self.live_replicas());
            key.extend_from_slice(SHARE_SUFFIX);
            fallback.refund(&key, &share, rest, consumed_at);
        }
    }
}

impl CounterStore for LeasedStore {
    async fn apply_batch<E: EntryView>(
        &self,
        counters: &[Counter<'_, E>],
        now: Nanos,
        lane: Lane,
    ) -> Result<Batch, StoreError> {
        self.last_now.fetch_max(now.0, Ordering::Relaxed);
        if !counters.iter().any(Self::is_leased) {
            let mut decided = self.redis.apply_batch(counters, now, lane).await?;
            for (counter, applied) in counters.iter().zip(decided.iter_mut()) {
                *applied = self.adjust(counter, *applied, now);
            }
            return Ok(decided);
        }
        let mut results: Batch = smallvec::smallvec![unset(); counters.len()];
        let others: SmallVec<[Counter<'_, E>; 8]> = counters.iter().filter(|c| !Self::is_leased(c)).copied().collect();
        if !others.is_empty() {
            let decided = self.redis.apply_batch(&others, now, lane).await?;
            let places = counters.iter().enumerate().filter(|(_, c)| !Self::is_leased(c)).map(|(i, _)| i);
            for (i, applied) in places.zip(decided) {
                results[i] = self.adjust(&counters[i], applied, now);
            }
        }
        let leased: SmallVec<[usize; 8]> = (0..counters.len()).filter(|&i| Self::is_leased(&counters[i])).collect();
        if let [only] = leased[..] {
            results[only] = self.admit_any(&counters[only], now, lane).await?;
        } else {
            let decided = join_all(leased.iter().map(|&i| self.admit_any(&counters[i], now, lane))).await;
            for (&i, applied) in leased.iter().zip(decided) {
                results[i] = applied?;
            }
        }
        Ok(results)
    }

    async fn refund_batch<E: EntryView>(
        &self,
        counters: &[Counter<'_, E>],
        consumed_at: Nanos,
        lane: Lane,
    ) -> Result<(), StoreError> {
        let others: SmallVec<[Counter<'_, E>; 8]> =
            counters.iter().filter(|c| !Self::refunds_to_lease(c)).copied().collect();
        for counter in counters.iter().filter(|c| Self::is_leased(c)) {
            if Self::refunds_to_lease(counter) {
                self.refund_leased(counter, consumed_at);
            } else {
                self.bucket_refunded(counter);
            }
        }
        if others.is_empty() { Ok(()) } else { self.redis.refund_batch(&others, consumed_at, lane).await }
    }
}
