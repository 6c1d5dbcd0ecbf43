//! GCRA: the token bucket and the leaky bucket in one word.
//!
//! Both are the generic cell rate algorithm over a theoretical arrival time (TAT): hits
//! are spaced `emission_ns = window / requests_per_unit` apart, and a bucket of
//! `capacity` lets that many be outstanding at once. A request of `hits` is admitted iff
//! `max(TAT, now) + hits * emission_ns <= now + capacity * emission_ns`, and then moves
//! the TAT there. The state word is the TAT in nanoseconds since the epoch (0: never
//! used), so a decision is one compare-and-swap.
//!
//! - `token_bucket`: capacity = `burst` (default `requests_per_unit`): a full bucket
//!   admits `burst` at once, then refills at the rate.
//! - `leaky_bucket`: NGINX `limit_req`: capacity = `burst + 1` (default `burst` 0), so
//!   with no burst requests are spaced evenly, and `burst` excess ones are tolerated.
//!
//! A rejected request consumes nothing. A request for more hits than the capacity can
//! never pass; it is rejected with the time until the bucket is full again. With
//! `requests_per_unit: 0` nothing that consumes passes.

use super::{LimitParams, Outcome, ceil_millis};
use crate::clock::Nanos;

/// The largest TAT stored: one below the store's tombstone.
const MAX_TAT: u128 = (u64::MAX - 1) as u128;

#[inline]
pub fn decide(tat: u64, now: Nanos, hits: u64, params: &LimitParams) -> (Outcome, u64) {
    let now_ns = u128::from(now.0);
    let t = u128::from(params.emission_ns);
    if t == 0 {
        // requests_per_unit: 0
        let outcome = Outcome {
            over_limit: hits > 0,
            before: 0,
            after: hits,
            remaining: 0,
            reset_after: ceil_millis(params.window_ns),
        };
        return (outcome, tat);
    }
    let capacity = u128::from(params.capacity);
    let tolerance = capacity * t;
    let base = u128::from(tat).max(now_ns);
    let before = (base - now_ns).div_ceil(t) as u64;
    let new_tat = base + u128::from(hits) * t;
    if new_tat <= now_ns + tolerance {
        let word = if hits == 0 { tat } else { new_tat.min(MAX_TAT) as u64 };
        let remaining = ((now_ns + tolerance - new_tat) / t).min(u128::from(u32::MAX)) as u32;
        let reset_after = ceil_millis(new_tat.saturating_sub(now_ns).min(MAX_TAT) as u64);
        let outcome = Outcome { over_limit: false, before, after: before + hits, remaining, reset_after };
        return (outcome, word);
    }
    // Rejected: admitted once enough of the outstanding hits have drained; never if the
    // request is bigger than the bucket, and then "retry now" would only invite a storm of
    // retries, so report the time until the bucket is full or a whole window, if longer.
    let wait = if u128::from(hits) <= capacity {
        new_tat - tolerance - now_ns
    } else {
        (base - now_ns).max(u128::from(params.window_ns))
    };
    let outcome = Outcome {
        over_limit: true,
        before,
        after: before.saturating_add(hits),
        remaining: 0,
        reset_after: ceil_millis(wait.min(MAX_TAT) as u64),
    };
    (outcome, tat)
}

/// Takes back `hits` consumed earlier: moves the TAT back by their emission time.
#[inline]
pub fn refund(tat: u64, hits: u64, params: &LimitParams) -> u64 {
    let back = (u128::from(hits) * u128::from(params.emission_ns)).min(u128::from(u64::MAX)) as u64;
    tat.saturating_sub(back)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limiter::{Algorithm, Unit};

    fn token(rpu: u32, unit: Unit, burst: Option<u32>) -> LimitParams {
        LimitParams::new(Algorithm::TokenBucket, rpu, unit, 1, burst)
    }

    fn leaky(rpu: u32, unit: Unit, burst: Option<u32>) -> LimitParams {
        LimitParams::new(Algorithm::LeakyBucket, rpu, unit, 1, burst)
    }

    fn run(state: &mut u64, at: Nanos, hits: u64, params: &LimitParams) -> Outcome {
        let (outcome, next) = decide(*state, at, hits, params);
        *state = next;
        outcome
    }

    const T0: Nanos = Nanos(1_000 * Nanos::NANOS_PER_SEC);

    fn at_ms(ms: u64) -> Nanos {
        T0.saturating_add(Nanos::from_millis(ms))
    }

    #[test]
    fn a_full_token_bucket_admits_its_burst_then_refills_at_the_rate() {
        // 10 per second, burst 20: 20 at once, then one every 100 ms.
        let p = token(10, Unit::Second, Some(20));
        let mut s = 0;
        for i in 0..20 {
            let o = run(&mut s, T0, 1, &p);
            assert!(!o.over_limit, "hit {i}");
            assert_eq!(o.remaining, 19 - i);
        }
        let o = run(&mut s, T0, 1, &p);
        assert!(o.over_limit);
        assert_eq!(o.reset_after, Nanos::from_millis(100));
        assert!(run(&mut s, at_ms(99), 1, &p).over_limit);
        assert!(!run(&mut s, at_ms(100), 1, &p).over_limit);
        assert!(run(&mut s, at_ms(150), 1, &p).over_limit);
        assert!(!run(&mut s, at_ms(200), 1, &p).over_limit);
    }

    #[test]
    fn the_token_bucket_burst_defaults_to_requests_per_unit() {
        let p = token(5, Unit::Minute, None);
        assert_eq!(p.capacity, 5);
        let mut s = 0;
        for _ in 0..5 {
            assert!(!run(&mut s, T0, 1, &p).over_limit);
        }
        let o = run(&mut s, T0, 1, &p);
        assert!(o.over_limit);
        assert_eq!(o.reset_after, Nanos::from_secs(12));
    }

    #[test]
    fn a_leaky_bucket_without_burst_spaces_requests_evenly() {
        let p = leaky(2, Unit::Second, None);
        let mut s = 0;
        assert!(!run(&mut s, T0, 1, &p).over_limit);
        let o = run(&mut s, T0, 1, &p);
        assert!(o.over_limit);
        assert_eq!(o.reset_after, Nanos::from_millis(500));
        assert!(!run(&mut s, at_ms(500), 1, &p).over_limit);
        assert!(!run(&mut s, at_ms(1000), 1, &p).over_limit);
    }

    #[test]
    fn a_leaky_bucket_tolerates_burst_excess_requests() {
        let p = leaky(1, Unit::Second, Some(3));
        let mut s = 0;
        for _ in 0..4 {
            assert!(!run(&mut s, T0, 1, &p).over_limit);
        }
        assert!(run(&mut s, T0, 1, &p).over_limit);
    }

    #[test]
    fn hits_above_one_take_that_many_tokens_and_more_than_the_bucket_never_passes() {
        let p = token(10, Unit::Second, Some(10));
        let mut s = 0;
        let o = run(&mut s, T0, 4, &p);
        assert_eq!((o.over_limit, o.remaining, o.after), (false, 6, 4));
        assert_eq!(o.reset_after, Nanos::from_millis(400), "full again after the 4 drain");
        let o = run(&mut s, T0, 11, &p);
        assert!(o.over_limit);
        assert_eq!(o.reset_after, Nanos::from_secs(1), "never passes: reports a whole window at least");
        let o = run(&mut s, T0, 7, &p);
        assert_eq!((o.over_limit, o.reset_after), (true, Nanos::from_millis(100)));
    }

    #[test]
    fn zero_hits_check_without_consuming() {
        let p = token(3, Unit::Second, None);
        let mut s = 0;
        run(&mut s, T0, 3, &p);
        let before = s;
        let o = run(&mut s, T0, 0, &p);
        assert_eq!((o.over_limit, o.remaining), (false, 0));
        assert_eq!(s, before);
    }

    #[test]
    fn zero_requests_per_unit_rejects_every_consuming_hit() {
        for p in [token(0, Unit::Second, None), leaky(0, Unit::Second, Some(5))] {
            let mut s = 0;
            assert!(run(&mut s, T0, 1, &p).over_limit);
            assert!(!run(&mut s, T0, 0, &p).over_limit);
        }
    }

    #[test]
    fn refunds_give_the_tokens_back() {
        let p = token(10, Unit::Second, Some(10));
        let mut s = 0;
        run(&mut s, T0, 10, &p);
        s = refund(s, 3, &p);
        let o = run(&mut s, T0, 0, &p);
        assert_eq!(o.remaining, 3);
    }

    #[test]
    fn rates_that_do_not_divide_evenly_round_the_spacing_up() {
        let p = token(3, Unit::Second, Some(1));
        assert_eq!(p.emission_ns, 333_333_334);
    }
}
