//! One stats key's series: the reference's rate limit counters, and their arithmetic.
//!
//! Owns how one descriptor's decision is counted into `total_hits`, `over_limit`,
//! `near_limit`, `within_limit`, `shadow_mode` and `over_limit_with_local_cache`, exactly as
//! the reference's `base_limiter` does. Recording is a few relaxed atomic adds.

use metrics::Counter;

use crate::limiter::Outcome;

/// One rule's (or one stats key's) six counters.
#[derive(Debug)]
pub struct RuleStats {
    pub(super) total_hits: Counter,
    pub(super) over_limit: Counter,
    pub(super) near_limit: Counter,
    pub(super) within_limit: Counter,
    pub(super) shadow_mode: Counter,
    pub(super) over_limit_with_local_cache: Counter,
}

impl RuleStats {
    /// Records hits answered OVER_LIMIT from the local over-limit cache (reference:
    /// `over_limit` and `over_limit_with_local_cache`, and `shadow_mode` for a shadow rule).
    pub fn record_cached(&self, hits: u64, shadow: bool) {
        self.total_hits.increment(hits);
        self.over_limit.increment(hits);
        self.over_limit_with_local_cache.increment(hits);
        if shadow {
            self.shadow_mode.increment(hits);
        }
    }

    /// Records one descriptor's decision, with the reference's arithmetic (its
    /// `base_limiter`): hits between the near-limit threshold and the limit are "near",
    /// hits past the limit are "over", a shadow rule's over-limit hits are "shadow".
    pub fn record(&self, outcome: &Outcome, limit: u32, hits: u64, shadow: bool, near_ratio: f32) {
        if hits == 0 {
            return;
        }
        let limit = u64::from(limit);
        let near = (limit as f64 * f64::from(near_ratio)).floor() as u64;
        let (before, after) = (outcome.before, outcome.after);
        self.total_hits.increment(hits);
        if outcome.over_limit {
            if before >= limit {
                self.over_limit.increment(hits);
            } else {
                self.over_limit.increment(after.saturating_sub(limit));
                self.near_limit.increment(limit.saturating_sub(near.max(before)));
            }
            if shadow {
                self.shadow_mode.increment(if before >= limit { hits } else { after.saturating_sub(limit) });
            }
        } else {
            self.within_limit.increment(hits);
            if after > near {
                self.near_limit.increment(if before >= near { hits } else { after - near });
            }
        }
    }
}
