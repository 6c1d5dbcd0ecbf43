//! Leased mode under `BACKEND_FAILURE_POLICY`: what a leased counter gets when Redis
//! fails. `error` and `allow` answer as in per-request mode; under `local` the counter
//! is counted in this replica's memory against its *share* of the limit (the limit
//! divided by the live replicas as last seen), so the fleet stays near the limit while
//! Redis is down.

use std::sync::atomic::Ordering;

use super::LeasedStore;
use super::outcome::unset;
use crate::clock::Nanos;
use crate::limiter::{Algorithm, LimitParams};
use crate::rules::EntryView;
use crate::store::{Applied, Counter, FailurePolicy, StoreError};

impl LeasedStore {
    /// Redis failed for a leased counter: the failure policy's answer. Under `local` the
    /// counter is counted in memory against this replica's share of the limit.
    pub(super) fn failed<E: EntryView>(
        &self,
        counter: &Counter<'_, E>,
        mut key: Vec<u8>,
        now: Nanos,
        error: StoreError,
    ) -> Result<Applied, StoreError> {
        self.redis.errors.increment(1);
        match (self.redis.options().failure_policy, self.redis.fallback()) {
            (FailurePolicy::Local, Some(fallback)) => {
                self.redis.fallbacks.fetch_add(1, Ordering::Relaxed);
                let share = share_params(counter.params, self.live_replicas());
                key.extend_from_slice(SHARE_SUFFIX);
                tracing::debug!(error = %error, "Redis failed; counted against this replica's share (leased mode)");
                Ok(fallback.apply(&key, &share, counter.hits, now))
            }
            (FailurePolicy::Allow, _) => Ok(Applied { waived: true, ..unset() }),
            _ => Err(error),
        }
    }
}

/// Appended to a counter's memory key for its share counter under
/// `BACKEND_FAILURE_POLICY=local`, so it never meets the per-request fallback's.
pub(super) const SHARE_SUFFIX: &[u8] = b"\x00lease-share";

/// This replica's share of a limit while Redis is down: the limit divided by the live
/// replicas as last seen, rounded down (so the shares never add up to more than it).
/// A bucket's share is of its rate and of its burst.
pub fn share_params(params: &LimitParams, live: u64) -> LimitParams {
    let divide = |n: u32| u32::try_from(u64::from(n) / live.max(1)).unwrap_or(u32::MAX);
    let burst = (params.algorithm == Algorithm::TokenBucket).then(|| divide(params.burst));
    LimitParams::new(params.algorithm, divide(params.requests_per_unit), params.unit, params.unit_multiplier, burst)
}
