//! Assignments as Envoy receives them: a client's share of a bucket turned into a
//! `RateLimitStrategy`, and the `BucketAction`s that carry it.
//!
//! Owns the rounding: a share of `s` requests per window becomes a token bucket of
//! `floor(s)` tokens per window (or, below one request per window, one token per
//! `window / s` rounded up to whole seconds), so a client never gets more than its share
//! and the shares of a bucket never add up to more than its limit. The bucket holds the
//! client's share of the rule's burst (at least one token). Envoy (1.40) refills its
//! token bucket continuously at `tokens_per_fill / fill_interval`, reading only the whole
//! seconds of `fill_interval` (a window is always whole seconds).
//!
//! Proto building only: which client gets what is the table's.

use std::time::Duration;

use envoy_types::pb::envoy::service::rate_limit_quota::v3::BucketId;
use envoy_types::pb::envoy::service::rate_limit_quota::v3::rate_limit_quota_response::BucketAction;
use envoy_types::pb::envoy::service::rate_limit_quota::v3::rate_limit_quota_response::bucket_action::{
    AbandonAction, BucketAction as Action, QuotaAssignmentAction,
};
use envoy_types::pb::envoy::r#type::v3::rate_limit_strategy::{BlanketRule, Strategy as ProtoStrategy};
use envoy_types::pb::envoy::r#type::v3::{RateLimitStrategy, TokenBucket};
use envoy_types::pb::google::protobuf::{Duration as ProtoDuration, UInt32Value};

use super::matching::Quota;

/// The longest fill interval handed out (a share far below one request per window):
/// a year, well inside what a protobuf `Duration` and Envoy's timers take.
const MAX_FILL_INTERVAL: Duration = Duration::from_secs(365 * 86_400);

/// What one client may do with one bucket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Strategy {
    AllowAll,
    DenyAll,
    /// Envoy's token bucket: `max_tokens` at once, `tokens_per_fill` more every
    /// `fill_interval`.
    Tokens {
        max_tokens: u32,
        tokens_per_fill: u32,
        fill_interval: Duration,
    },
}

impl Strategy {
    /// The token bucket for a share of `share` requests per window of `quota`, never
    /// more than the share; no share at all denies.
    pub fn for_share(quota: &Quota, share: f64) -> Strategy {
        if !share.is_finite() || share <= 0.0 || quota.per_window == 0 {
            return Strategy::DenyAll;
        }
        let share = share.min(f64::from(quota.per_window));
        let burst = (f64::from(quota.burst) * share / f64::from(quota.per_window)).floor();
        let max_tokens = (burst as u32).max(1);
        if share >= 1.0 {
            return Strategy::Tokens { max_tokens, tokens_per_fill: share.floor() as u32, fill_interval: quota.window };
        }
        // Whole seconds, rounded up: a longer interval is a lower rate.
        let secs = (quota.window.as_secs_f64() / share).min(MAX_FILL_INTERVAL.as_secs_f64()).ceil();
        Strategy::Tokens { max_tokens: 1, tokens_per_fill: 1, fill_interval: Duration::from_secs(secs as u64) }
    }

    /// Requests per second this strategy admits (`None`: no limit).
    pub fn rate(&self) -> Option<f64> {
        match *self {
            Strategy::AllowAll => None,
            Strategy::DenyAll => Some(0.0),
            Strategy::Tokens { tokens_per_fill, fill_interval, .. } => {
                Some(f64::from(tokens_per_fill) / fill_interval.as_secs_f64().max(1e-9))
            }
        }
    }

    fn proto(&self) -> RateLimitStrategy {
        let strategy = match *self {
            Strategy::AllowAll => ProtoStrategy::BlanketRule(BlanketRule::AllowAll as i32),
            Strategy::DenyAll => ProtoStrategy::BlanketRule(BlanketRule::DenyAll as i32),
            Strategy::Tokens { max_tokens, tokens_per_fill, fill_interval } => {
                ProtoStrategy::TokenBucket(TokenBucket {
                    max_tokens,
                    tokens_per_fill: Some(UInt32Value { value: tokens_per_fill }),
                    fill_interval: Some(duration(fill_interval)),
                })
            }
        };
        RateLimitStrategy { strategy: Some(strategy) }
    }

    /// The assignment of this strategy to the bucket `id`, good for `ttl`.
    pub fn action(&self, id: &BucketId, ttl: Duration) -> BucketAction {
        BucketAction {
            bucket_id: Some(id.clone()),
            bucket_action: Some(Action::QuotaAssignmentAction(QuotaAssignmentAction {
                assignment_time_to_live: Some(duration(ttl)),
                rate_limit_strategy: Some(self.proto()),
            })),
        }
    }
}

/// Tells the client to forget the bucket `id` (its rule went away in a reload).
pub fn abandon(id: &BucketId) -> BucketAction {
    BucketAction { bucket_id: Some(id.clone()), bucket_action: Some(Action::AbandonAction(AbandonAction {})) }
}

fn duration(d: Duration) -> ProtoDuration {
    ProtoDuration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: d.subsec_nanos() as i32, // below 1e9: fits
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PER_SECOND: Quota = Quota { per_window: 100, window: Duration::from_secs(1), burst: 100 };

    #[test]
    fn a_share_is_rounded_down_into_a_token_bucket() {
        assert_eq!(
            Strategy::for_share(&PER_SECOND, 66.67),
            Strategy::Tokens { max_tokens: 66, tokens_per_fill: 66, fill_interval: Duration::from_secs(1) }
        );
        let shares = [66.67, 33.33];
        let total: f64 = shares.iter().filter_map(|&s| Strategy::for_share(&PER_SECOND, s).rate()).sum();
        assert!(total <= 100.0, "{total}");
    }

    #[test]
    fn below_one_request_per_window_the_interval_grows() {
        let s = Strategy::for_share(&PER_SECOND, 0.3);
        assert_eq!(s, Strategy::Tokens { max_tokens: 1, tokens_per_fill: 1, fill_interval: Duration::from_secs(4) });
        assert!(s.rate().unwrap() <= 0.3);
    }

    #[test]
    fn no_share_denies_and_absurd_shares_are_capped() {
        assert_eq!(Strategy::for_share(&PER_SECOND, 0.0), Strategy::DenyAll);
        assert_eq!(Strategy::for_share(&PER_SECOND, f64::NAN), Strategy::DenyAll);
        assert_eq!(Strategy::for_share(&PER_SECOND, 1e30).rate(), Some(100.0));
        let tiny = Strategy::for_share(&PER_SECOND, 1e-30);
        assert!(matches!(tiny, Strategy::Tokens { fill_interval, .. } if fill_interval <= MAX_FILL_INTERVAL));
    }
}
