//! What a leased decision reports: the outcome of hits admitted from a lease, of a
//! window found full, and the window a lease belongs to. Outcomes come from this
//! replica's view of the counter (Redis's counts at its last reservation, less its
//! unspent units), which is exact when it is the only replica counting.

use super::lease::Lease;
use super::sliding;
use crate::clock::Nanos;
use crate::limiter::{Algorithm, LimitParams, Outcome, fixed_window};
use crate::store::Applied;

/// The fixed window holding `now`, as the lease's word numbers it.
pub fn window_index(now: Nanos, params: &LimitParams) -> u32 {
    (now.as_secs() / params.window_secs.max(1)) as u32
}

/// Admitted from the lease, `left` units remaining in it: the outcome from this
/// replica's view of the counter (exact when it is the only replica counting).
pub fn admitted_outcome(lease: &Lease, window: u32, left: u32, hits: u64, now: Nanos) -> Applied {
    let params = &lease.params;
    let used = lease.seen(window).saturating_sub(u64::from(left));
    if params.algorithm == Algorithm::SlidingWindow {
        let mut outcome =
            sliding::outcome(window, lease.previous(window), used.saturating_sub(hits), hits, now, params);
        // The units were taken from Redis: admitted whatever this view says.
        outcome.over_limit = false;
        return Applied::decided(outcome, true);
    }
    outcome_admitted(used.max(hits), hits, now, params)
}

/// Rejected locally: Redis said the window had no room, and it is not time to ask again.
pub fn closed(lease: &Lease, window: u32, hits: u64, now: Nanos) -> Applied {
    let params = &lease.params;
    if params.algorithm == Algorithm::SlidingWindow {
        let mut outcome = sliding::outcome(window, lease.previous(window), lease.seen(window), hits, now, params);
        outcome.over_limit = true;
        outcome.remaining = 0;
        return Applied::decided(outcome, false);
    }
    rejected(lease.seen(window).max(u64::from(params.requests_per_unit)), hits, now, params)
}

fn outcome_admitted(after: u64, hits: u64, now: Nanos, params: &LimitParams) -> Applied {
    let limit = u64::from(params.requests_per_unit);
    Applied::decided(fixed_window::outcome_of_count(after.min(limit), hits, now, params), true)
}

/// Over the limit: Redis had `count` units taken when the window was found full. Nothing
/// is consumed.
pub fn rejected(count: u64, hits: u64, now: Nanos, params: &LimitParams) -> Applied {
    let after = count.saturating_add(hits).max(u64::from(params.requests_per_unit) + 1);
    Applied::decided(fixed_window::outcome_of_count(after, hits, now, params), false)
}

pub fn unset() -> Applied {
    Applied::decided(Outcome { over_limit: false, before: 0, after: 0, remaining: 0, reset_after: Nanos(0) }, false)
}
