//! The reference's fixed window, epoch-aligned, in one word.
//!
//! State: `(window_index << 32) | count`, where `window_index = floor(now / window)` in
//! Unix seconds. A counter from an earlier window reads as zero, so windows reset without
//! any timer. Arithmetic (the reference's, exactly; docs/compatibility.md): `after = count + hits`; over the
//! limit iff `after > requests_per_unit`; remaining `requests_per_unit - after` when OK and
//! 0 when over; `duration_until_reset = window - now mod window` in whole seconds. Hits
//! are counted even when over the limit, as the reference's `INCRBY` does. The count
//! saturates at `u32::MAX`, far beyond any `requests_per_unit`.

use super::{LimitParams, Outcome};
use crate::clock::Nanos;

#[inline]
fn unpack(state: u64) -> (u32, u32) {
    ((state >> 32) as u32, state as u32)
}

#[inline]
fn pack(window_index: u32, count: u32) -> u64 {
    (u64::from(window_index) << 32) | u64::from(count)
}

#[inline]
pub fn decide(state: u64, now: Nanos, hits: u64, params: &LimitParams) -> (Outcome, u64) {
    let window = params.window_secs.max(1);
    let now_secs = now.as_secs();
    // Truncation is the encoding: second-long windows overflow 32 bits only in 2106.
    let mut index = (now_secs / window) as u32;
    let (state_index, count) = unpack(state);
    if state_index > index && count > 0 {
        // This thread read the clock before another counted in the next window (or the
        // clock stepped back): count in the counter's window, never move it back.
        index = state_index;
    }
    let before = if state_index == index { u64::from(count) } else { 0 };
    let after = before.saturating_add(hits);
    let new_state = if hits == 0 { state } else { pack(index, u32::try_from(after).unwrap_or(u32::MAX)) };
    let limit = u64::from(params.requests_per_unit);
    let over_limit = after > limit;
    let remaining = if over_limit { 0 } else { (limit - after) as u32 };
    let reset_after = Nanos::from_secs(((u64::from(index) + 1) * window).saturating_sub(now_secs));
    (Outcome { over_limit, before, after, remaining, reset_after }, new_state)
}

/// The outcome when an external counter (Redis's `INCRBY`) reads `after` once `hits`
/// were added, with the same arithmetic as [`decide`].
#[inline]
pub fn outcome_of_count(after: u64, hits: u64, now: Nanos, params: &LimitParams) -> Outcome {
    let window = params.window_secs.max(1);
    let now_secs = now.as_secs();
    let limit = u64::from(params.requests_per_unit);
    let over_limit = after > limit;
    let remaining = if over_limit { 0 } else { (limit - after) as u32 };
    let reset_after = Nanos::from_secs(window - now_secs % window);
    Outcome { over_limit, before: after.saturating_sub(hits), after, remaining, reset_after }
}

/// The start of the window holding `now`, in Unix seconds (the reference's key suffix).
#[inline]
pub fn window_start(now: Nanos, params: &LimitParams) -> u64 {
    let window = params.window_secs.max(1);
    now.as_secs() / window * window
}

/// Takes back hits counted at `consumed_at`, if the counter is still in that window.
#[inline]
pub fn refund(state: u64, consumed_at: Nanos, hits: u64, params: &LimitParams) -> u64 {
    let index = (consumed_at.as_secs() / params.window_secs.max(1)) as u32;
    let (state_index, count) = unpack(state);
    if state_index != index {
        return state;
    }
    pack(index, count.saturating_sub(u32::try_from(hits).unwrap_or(u32::MAX)))
}

/// A counter is fresh again once its window has ended.
#[inline]
pub fn fresh_at(state: u64, params: &LimitParams) -> Nanos {
    let (index, count) = unpack(state);
    if count == 0 {
        return Nanos(0);
    }
    Nanos::from_secs((u64::from(index) + 1).saturating_mul(params.window_secs.max(1)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limiter::Unit;

    fn run(state: &mut u64, now_secs: u64, hits: u64, params: &LimitParams) -> Outcome {
        let (outcome, next) = decide(*state, Nanos::from_secs(now_secs), hits, params);
        *state = next;
        outcome
    }

    #[test]
    fn counts_up_to_the_limit_then_rejects_with_reference_arithmetic() {
        let params = LimitParams::fixed_window(3, Unit::Minute);
        let mut state = 0;
        // now = 2222: the minute window started at 2220, so 58 s remain (reference S7).
        let o = run(&mut state, 2222, 1, &params);
        assert_eq!((o.over_limit, o.remaining, o.reset_after), (false, 2, Nanos::from_secs(58)));
        assert_eq!(run(&mut state, 2222, 1, &params).remaining, 1);
        assert_eq!(run(&mut state, 2222, 1, &params).remaining, 0);
        let o = run(&mut state, 2279, 1, &params);
        assert!(o.over_limit);
        assert_eq!((o.remaining, o.before, o.after, o.reset_after), (0, 3, 4, Nanos::from_secs(1)));
    }

    #[test]
    fn a_new_window_starts_from_zero() {
        let params = LimitParams::fixed_window(1, Unit::Second);
        let mut state = 0;
        assert!(!run(&mut state, 1234, 1, &params).over_limit);
        assert!(run(&mut state, 1234, 1, &params).over_limit);
        let o = run(&mut state, 1235, 1, &params);
        assert!(!o.over_limit);
        assert_eq!(o.before, 0);
    }

    #[test]
    fn hits_above_one_use_after_greater_than_limit() {
        // Reference L7..L12 (20/s with addend 3 and counts 5, 19, 22).
        let params = LimitParams::fixed_window(20, Unit::Second);
        let mut state = pack(1234, 2);
        let o = run(&mut state, 1234, 3, &params);
        assert_eq!((o.over_limit, o.remaining), (false, 15));
        let mut state = pack(1234, 16);
        assert_eq!(run(&mut state, 1234, 3, &params).remaining, 1);
        let mut state = pack(1234, 19);
        let o = run(&mut state, 1234, 3, &params);
        assert_eq!((o.over_limit, o.before, o.after), (true, 19, 22));
    }

    #[test]
    fn zero_hits_checks_without_consuming() {
        let params = LimitParams::fixed_window(2, Unit::Minute);
        let mut state = pack(2222 / 60, 2);
        let before = state;
        let o = run(&mut state, 2222, 0, &params);
        // 2 > 2 is false: at the limit a check-only call is still OK (reference quirk).
        assert_eq!((o.over_limit, o.remaining), (false, 0));
        assert_eq!(state, before);
    }

    #[test]
    fn zero_requests_per_unit_rejects_every_consuming_hit() {
        let params = LimitParams::fixed_window(0, Unit::Second);
        let mut state = 0;
        assert!(run(&mut state, 10, 1, &params).over_limit);
        assert!(!run(&mut state, 11, 0, &params).over_limit);
    }

    #[test]
    fn windows_of_several_units_are_epoch_aligned() {
        let params = LimitParams::new(crate::limiter::Algorithm::FixedWindow, 5, Unit::Second, 3, None);
        let mut state = 0;
        // now = 10: the 3 s window is [9, 12), so 2 s remain.
        assert_eq!(run(&mut state, 10, 1, &params).reset_after, Nanos::from_secs(2));
        assert_eq!(run(&mut state, 11, 1, &params).before, 1);
        assert_eq!(run(&mut state, 12, 1, &params).before, 0);
    }

    #[test]
    fn the_count_saturates_instead_of_wrapping() {
        let params = LimitParams::fixed_window(u32::MAX, Unit::Day);
        let mut state = 0;
        let o = run(&mut state, 5, u64::MAX, &params);
        assert!(o.over_limit);
        let o = run(&mut state, 5, 1, &params);
        assert!(o.over_limit);
        assert_eq!(o.before, u64::from(u32::MAX));
    }

    #[test]
    fn a_late_reader_of_the_clock_never_moves_a_counter_back_a_window() {
        let params = LimitParams::fixed_window(10, Unit::Minute);
        let mut state = 0;
        for _ in 0..5 {
            run(&mut state, 125, 1, &params);
        }
        let o = run(&mut state, 119, 1, &params);
        assert_eq!((o.before, o.reset_after), (5, Nanos::from_secs(61)));
        assert_eq!(run(&mut state, 126, 1, &params).before, 6);
    }

    #[test]
    fn refunds_apply_only_within_the_window_they_were_counted_in() {
        let params = LimitParams::fixed_window(5, Unit::Minute);
        let t = Nanos::from_secs(2222);
        let (_, state) = decide(0, t, 3, &params);
        assert_eq!(unpack(refund(state, t, 2, &params)).1, 1);
        assert_eq!(refund(state, Nanos::from_secs(2280), 2, &params), state, "another window");
    }

    #[test]
    fn fresh_at_is_the_end_of_the_counted_window() {
        let params = LimitParams::fixed_window(5, Unit::Minute);
        let (_, state) = decide(0, Nanos::from_secs(2222), 1, &params);
        assert_eq!(fresh_at(state, &params), Nanos::from_secs(2280));
        assert_eq!(fresh_at(0, &params), Nanos(0));
    }
}
