//! Leases on token buckets.
//!
//! Owns the token bucket's reservation (one atomic script on the per-request mode's TAT
//! key, so both modes and every replica drain one bucket), admission from a bucket
//! lease, and the outcomes a replica reports from its view of the bucket.
//!
//! A window's units may be spent any time in their window; a bucket has no window, and a
//! unit taken now but spent later could meet units other replicas take meanwhile and
//! together pass the bucket's burst. GCRA's bound holds for units spent no later than
//! the TAT they were charged from (see docs/leasing.md for the argument). So a bucket
//! lease is taken only from a bucket already drained by at least [`MIN_LIFE_MS`] (its
//! TAT at least that far ahead of now), and its units expire at that TAT (or after the
//! lease horizon, if sooner): with `D = TAT - now`, `e` the emission interval and `C`
//! the capacity, a reservation takes `c = min(want, max(need, floor(free/(2N))))` units
//! (`free = (now + C*e - TAT) / e`), moves the TAT by `c*e` and lets them be spent
//! until `now + min(D, horizon)`. A bucket with tokens to spare (`D` short) is decided
//! per request, exactly as in per-request mode, so leasing never costs burst: across the
//! fleet, any interval of length `d` admits at most `C + d/e`, the bucket's own bound.
//!
//! Unspent units are never given back (moving the TAT back could let an old lease's
//! units meet newer ones); they expire and count as wasted. The leaky bucket stays per
//! request: its point is spacing, and a lease is a burst.

use std::sync::LazyLock;
use std::sync::atomic::Ordering;

use redis::Value;

use super::lease::Lease;
use super::reserve::{self, Script};
use super::{LeasedStore, RECHECK_MIN_MS, RECHECK_MS};
use crate::clock::Nanos;
use crate::limiter::{LimitParams, Outcome, gcra};
use crate::rules::EntryView;
use crate::store::redis::link::{Deployment, Link};
use crate::store::redis::{keys, script as per_request};
use crate::store::{Applied, Counter, Lane, StoreError};

pub const SOURCE: &str = r#"
-- sluicegate leased mode: reserve units of a token bucket (TAT in microseconds).
local key = KEYS[1]
local now = tonumber(ARGV[1])
local need = tonumber(ARGV[2])
local want = tonumber(ARGV[3])
local t = tonumber(ARGV[4])
local cap = tonumber(ARGV[5])
local max_life = tonumber(ARGV[6])
local min_life = tonumber(ARGV[7])
local live = math.max(tonumber(ARGV[8]), 1)
local tat = tonumber(redis.call('GET', key)) or 0
local full_at = now + cap * t
local base = math.max(tat, now)
if t <= 0 or need <= 0 or base + need * t > full_at then return {0, tat, 0} end
local got = need
local life = math.min(base - now, max_life)
if life >= min_life then
  local free = math.floor((full_at - base) / t)
  local spendable = math.ceil(want * life / max_life)
  got = math.max(need, math.min(spendable, math.floor(free / (2 * live)), free))
else
  life = 0
end
local new_tat = base + got * t
redis.call('SET', key, string.format('%d', new_tat), 'PX', math.max(math.ceil((new_tat - now) / 1000), 1))
return {got, new_tat, life}
"#;

pub static SHA: LazyLock<String> = LazyLock::new(|| redis::Script::new(SOURCE).get_hash().to_string());

const BUCKET: Script = (SOURCE, &SHA);

/// A bucket lease's "window" in its word: the decision-clock millisecond its units
/// expire at, wrapping at 2^32 (about 49 days; the sweep drops expired units long before).
fn expiry_slot(ms: u64) -> u32 {
    ms as u32
}

/// Whether units expiring at `slot` may still be spent at `now_ms`.
fn spendable(slot: u32, now_ms: u64) -> bool {
    (slot.wrapping_sub(expiry_slot(now_ms)) as i32) >= 0
}

/// Whether a bucket lease's units, expiring at `slot`, are past at `now_ms`.
pub fn expired(slot: u32, now_ms: u64) -> bool {
    !spendable(slot, now_ms)
}

/// A bucket drained by less than this is decided per request (a shorter lease would
/// mostly expire unspent).
pub const MIN_LIFE_MS: u64 = 10;

/// What a bucket reservation found.
struct Reserved {
    got: u64,
    /// The TAT after it (microseconds), or as found when nothing was taken.
    tat_us: u64,
    /// How long the units beyond the request's may be spent (microseconds; 0: none).
    life_us: u64,
}

/// Reserves units of the bucket under `key`; nothing is taken when the bucket has no
/// room for `need`.
#[allow(clippy::too_many_arguments)]
async fn reserve(
    backend: &Deployment,
    link: &Link,
    key: &str,
    now: Nanos,
    need: u64,
    want: u64,
    params: &LimitParams,
    live: u64,
    horizon_ms: u64,
) -> Result<Reserved, StoreError> {
    let reply = reserve::call(backend, link, BUCKET, |c| {
        c.arg(1).arg(key).arg(per_request::micros(now)).arg(need).arg(want);
        c.arg(per_request::emission_us(params)).arg(params.capacity);
        c.arg(horizon_ms * 1_000).arg(MIN_LIFE_MS * 1_000).arg(live);
    })
    .await?;
    let int = |v: &Value| match v {
        Value::Int(n) => u64::try_from(*n).ok(),
        _ => None,
    };
    match reply {
        Value::Array(items) if items.len() == 3 => match (int(&items[0]), int(&items[1]), int(&items[2])) {
            (Some(got), Some(tat_us), Some(life_us)) => Ok(Reserved { got, tat_us, life_us }),
            _ => Err(reserve::unexpected(backend, &items)),
        },
        other => Err(reserve::unexpected(backend, &[other])),
    }
}

/// The outcome of `hits` admitted with `left` units still in the lease: the bucket as
/// this replica last saw it, its unspent units counted as not taken.
fn admitted(lease: &Lease, left: u32, hits: u64, now: Nanos) -> Applied {
    let params = &lease.params;
    let tat_ns = lease.tat_seen_us.load(Ordering::Acquire).saturating_mul(1_000);
    let unspent_ns = u64::from(left).saturating_mul(params.emission_ns);
    let (view, _) = gcra::decide(tat_ns.saturating_sub(unspent_ns), now, 0, params);
    let outcome = Outcome { over_limit: false, before: view.before.saturating_sub(hits), after: view.before, ..view };
    Applied::decided(outcome, true)
}

/// A check (no hits) decided by Redis, which counts this replica's unspent units as
/// taken: they are this replica's to admit, so it reports them as remaining.
pub fn discount_unspent(lease: &Lease, hits: u64, applied: Applied, now: Nanos) -> Applied {
    let (slot, left) = lease.held();
    if hits > 0 || left == 0 || expired(slot, now.0 / 1_000_000) {
        return applied;
    }
    let o = applied.outcome;
    let left = u64::from(left);
    let remaining = (u64::from(o.remaining) + left).min(lease.params.capacity);
    let outcome = Outcome {
        before: o.before.saturating_sub(left),
        after: o.after.saturating_sub(left),
        remaining: u32::try_from(remaining).unwrap_or(u32::MAX),
        ..o
    };
    Applied { outcome, ..applied }
}

/// The outcome of `hits` rejected against a bucket whose TAT is `tat_us`.
fn rejected(tat_us: u64, hits: u64, now: Nanos, params: &LimitParams) -> Outcome {
    let (outcome, _) = gcra::decide(tat_us.saturating_mul(1_000), now, hits, params);
    // Redis rounds the emission interval up to a microsecond: it may find no room where
    // the nanosecond arithmetic would.
    Outcome { over_limit: true, remaining: 0, ..outcome }
}

impl LeasedStore {
    /// Decides one leased token-bucket counter.
    pub(super) async fn admit_bucket<E: EntryView>(
        &self,
        counter: &Counter<'_, E>,
        now: Nanos,
        lane: Lane,
    ) -> Result<Applied, StoreError> {
        let (params, hits) = (counter.params, counter.hits);
        let now_ms = now.0 / 1_000_000;
        let mut key = Vec::with_capacity(64);
        counter.encode(&mut key);
        let used_at_ms = self.ms();
        let Some(lease) = self.leases.get(&key, params, used_at_ms, self.horizon_ms) else {
            return self.per_request(counter, key, now, lane, None).await;
        };
        lease.last_used_ms.store(used_at_ms, Ordering::Relaxed);
        let live = |slot| spendable(slot, now_ms);
        if let Some(left) = lease.take_where(hits, live) {
            return Ok(self.bucket_admitted(&lease, left, hits, now));
        }
        if lease.is_closed(0, now_ms) {
            return Ok(Applied::decided(self.bucket_closed(&lease, hits, now), false));
        }
        // Empty: one reservation per counter at a time; the others wait for it here.
        let mut sizing = lease.reserve.lock().await;
        if let Some(left) = lease.take_where(hits, live) {
            return Ok(self.bucket_admitted(&lease, left, hits, now));
        }
        if lease.is_closed(0, now_ms) {
            return Ok(Applied::decided(self.bucket_closed(&lease, hits, now), false));
        }
        let per_second = self.per_second(params);
        let backend = self.deployment(per_second);
        let links = match backend.links() {
            Ok(links) => links,
            Err(message) => return self.failed(counter, key, now, StoreError { message }),
        };
        let want = sizing.want(lease.spent.load(Ordering::Relaxed), self.ms(), hits, self.horizon_ms);
        let mut redis_key = String::with_capacity(64);
        keys::write_key(&mut redis_key, &self.redis.options().key_prefix, counter, now);
        self.counts.redis_ops.fetch_add(1, Ordering::Relaxed);
        let live_replicas = self.live_replicas();
        let link = links.here(lane);
        match reserve(backend, link, &redis_key, now, hits, want, params, live_replicas, self.horizon_ms).await {
            Ok(Reserved { got, tat_us, life_us }) => {
                lease.tat_seen_us.store(tat_us, Ordering::Release);
                if got < hits {
                    let outcome = rejected(tat_us, hits, now, params);
                    let wait_ms = outcome.reset_after.0 / 1_000_000;
                    lease.close(0, now_ms + wait_ms.clamp(RECHECK_MIN_MS, RECHECK_MS));
                    return Ok(Applied::decided(outcome, false));
                }
                self.counts.leases.fetch_add(1, Ordering::Relaxed);
                self.counts.reserved.fetch_add(got, Ordering::Relaxed);
                sizing.key = redis_key;
                sizing.per_second = per_second;
                if got > hits && life_us >= 1_000 {
                    // Spendable while the decision's millisecond is below the deadline's,
                    // so strictly before now + life: never after the TAT they were
                    // charged from.
                    let deadline_ms = (now.0 / 1_000 + life_us) / 1_000;
                    let wasted = lease.add(expiry_slot(deadline_ms - 1), got - hits);
                    self.counts.wasted.fetch_add(wasted, Ordering::Relaxed);
                } else {
                    self.counts.wasted.fetch_add(got - hits, Ordering::Relaxed);
                }
                lease.spent.fetch_add(hits, Ordering::Relaxed);
                let (_, left) = lease.held();
                Ok(self.bucket_admitted(&lease, left, hits, now))
            }
            Err(e) => self.failed(counter, key, now, e),
        }
    }

    /// A leased bucket's hits go back to Redis (the per-request `gcra_refund`): this
    /// replica's view of the bucket follows.
    pub(super) fn bucket_refunded<E: EntryView>(&self, counter: &Counter<'_, E>) {
        let mut key = Vec::with_capacity(64);
        counter.encode(&mut key);
        if let Some(lease) = self.leases.find(&key).filter(|l| l.params == *counter.params) {
            let back = counter.hits.saturating_mul(per_request::emission_us(counter.params));
            let _ =
                lease.tat_seen_us.fetch_update(Ordering::AcqRel, Ordering::Acquire, |t| Some(t.saturating_sub(back)));
        }
    }

    fn bucket_admitted(&self, lease: &Lease, left: u32, hits: u64, now: Nanos) -> Applied {
        self.counts.admitted.fetch_add(hits, Ordering::Relaxed);
        admitted(lease, left, hits, now)
    }

    /// Rejected locally: Redis found no room, and it is not time to ask again.
    fn bucket_closed(&self, lease: &Lease, hits: u64, now: Nanos) -> Outcome {
        rejected(lease.tat_seen_us.load(Ordering::Acquire), hits, now, &lease.params)
    }
}
