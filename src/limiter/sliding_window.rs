//! The sliding window: two epoch-aligned fixed windows, the previous one weighted.
//!
//! The count at time `t`, `e` into the current window of length `W`, is
//! `floor(previous * (W - e) / W) + current`: the previous window counts in proportion to
//! how much of it still lies inside the window sliding back from `t`. That removes the
//! fixed window's 2x burst across a window edge. A request of `hits` is admitted iff
//! `count + hits <= requests_per_unit`; a rejected request is not counted (unlike the
//! fixed window, where the reference counts every hit), so a client that keeps retrying
//! does not lock itself out of the next window.
//!
//! State, two words:
//! - `word` = `(current window index << 32) | current count`;
//! - `aux` = `(previous window index << 32) | previous count`.
//!
//! The store compare-and-swaps `word` only. When a decision moves `word` into a new
//! window (the roll), it first raises `aux` to the ending window's final count (raises:
//! it never lowers a count for the same window, nor moves to an older one), then swaps
//! `word`. So whoever reads `word` in window `w` then finds `aux` for `w - 1` already in
//! place; if it finds a newer one instead, its `word` is stale and it reads again
//! ([`Step::Retry`]). Every admission is still decided against one committed `word`, so
//! the algorithm stays exact under concurrency.

use super::{LimitParams, Outcome, State, Step, ceil_millis};
use crate::clock::Nanos;

#[inline]
pub fn pack(index: u32, count: u32) -> u64 {
    (u64::from(index) << 32) | u64::from(count)
}

#[inline]
pub fn unpack(word: u64) -> (u32, u32) {
    ((word >> 32) as u32, word as u32)
}

/// `a * b / c`, in 64 bits when the product fits (it nearly always does: the counts are
/// small), else in 128.
#[inline]
fn mul_div(a: u64, b: u64, c: u64) -> u64 {
    match a.checked_mul(b) {
        Some(product) => product / c,
        None => (u128::from(a) * u128::from(b) / u128::from(c)).min(u128::from(u64::MAX)) as u64,
    }
}

/// Smallest `e` in a window of `w` ns at which `floor(count * (w - e) / w) <= budget`.
#[inline]
fn decayed_at(count: u64, budget: u64, w: u64) -> u64 {
    if count == 0 {
        return 0;
    }
    // floor(count * (w - e) / w) <= budget  <=>  count * (w - e) <= (budget + 1) * w - 1
    let slack = match (budget + 1).checked_mul(w) {
        Some(product) => (product - 1) / count,
        None => ((u128::from(budget + 1) * u128::from(w) - 1) / u128::from(count)).min(u128::from(u64::MAX)) as u64,
    };
    w.saturating_sub(slack)
}

#[inline]
pub fn decide(state: State, now: Nanos, hits: u64, params: &LimitParams) -> Step {
    let w = params.window_ns.max(1);
    // Truncation is the encoding: one-second windows overflow 32 bits only in 2106.
    let mut index = (now.0 / w) as u32;
    let mut now_ns = now.0;
    let (word_index, word_count) = unpack(state.word);
    if word_index > index && state.word != 0 {
        // This thread read the clock before another moved the counter on: decide at the
        // start of the counter's window (the strictest moment of it).
        index = word_index;
        now_ns = u64::from(index) * w;
    }
    // `word == 0` is a counter that has never counted: it may look like window 0, the
    // window of every limit longer than the time since the epoch (a sliding window of
    // 60 years), but it has no previous window to agree with.
    let (previous, current, aux) = if word_index == index && state.word != 0 {
        let (aux_index, aux_count) = unpack(state.aux);
        if aux_index != index.wrapping_sub(1) {
            return Step::Retry;
        }
        (u64::from(aux_count), u64::from(word_count), None)
    } else {
        let previous = if word_index == index.wrapping_sub(1) { word_count } else { 0 };
        (u64::from(previous), 0, Some(pack(index.wrapping_sub(1), previous)))
    };
    let elapsed = now_ns - u64::from(index) * w;
    let left = w - elapsed;
    let rpu = u64::from(params.requests_per_unit);
    let before = mul_div(previous, left, w) + current;
    let after = before.saturating_add(hits);
    if after <= rpu {
        let new_current = current + hits;
        let reset = if new_current > 0 {
            left + decayed_at(new_current, 0, w)
        } else {
            decayed_at(previous, 0, w).saturating_sub(elapsed)
        };
        let outcome = Outcome {
            over_limit: false,
            before,
            after,
            remaining: (rpu - after) as u32,
            reset_after: ceil_millis(reset),
        };
        return Step::Decided { outcome, word: pack(index, new_current as u32), aux };
    }
    // Rejected. When would it pass, with no other traffic? Within this window, once the
    // previous window has decayed enough; else in the next one, once this window (then
    // the previous) has; else never (more hits than the limit): report when the counter
    // is fresh again.
    let reset = match rpu.checked_sub(current.saturating_add(hits)) {
        Some(budget) if decayed_at(previous, budget, w) < w => decayed_at(previous, budget, w) - elapsed,
        _ => match rpu.checked_sub(hits) {
            Some(budget) => left + decayed_at(current, budget, w),
            None => left + w,
        },
    };
    let outcome = Outcome { over_limit: true, before, after, remaining: 0, reset_after: ceil_millis(reset) };
    let word = if aux.is_some() { pack(index, current as u32) } else { state.word };
    Step::Decided { outcome, word, aux }
}

/// Takes back hits counted at `consumed_at`: from the current count if the counter is
/// still in that window, from the previous count if it has moved on by one.
#[inline]
pub fn refund(state: State, consumed_at: Nanos, hits: u64, params: &LimitParams) -> State {
    let index = (consumed_at.0 / params.window_ns.max(1)) as u32;
    let hits = u32::try_from(hits).unwrap_or(u32::MAX);
    let (word_index, word_count) = unpack(state.word);
    let (aux_index, aux_count) = unpack(state.aux);
    if word_index == index {
        State { word: pack(index, word_count.saturating_sub(hits)), ..state }
    } else if aux_index == index {
        State { aux: pack(index, aux_count.saturating_sub(hits)), ..state }
    } else {
        state
    }
}

/// A counter is fresh once both its windows have slid out.
#[inline]
pub fn fresh_at(word: u64, params: &LimitParams) -> Nanos {
    if word == 0 {
        return Nanos(0);
    }
    let (index, _) = unpack(word);
    Nanos((u64::from(index) + 2).saturating_mul(params.window_ns))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limiter::{Algorithm, Unit};

    fn params(rpu: u32, unit: Unit, multiplier: u32) -> LimitParams {
        LimitParams::new(Algorithm::SlidingWindow, rpu, unit, multiplier, None)
    }

    /// Applies a step as the store would, sequentially.
    fn run(state: &mut State, at: Nanos, hits: u64, p: &LimitParams) -> Outcome {
        match decide(*state, at, hits, p) {
            Step::Decided { outcome, word, aux } => {
                if let Some(aux) = aux {
                    state.aux = aux;
                }
                state.word = word;
                outcome
            }
            Step::Retry => panic!("a sequential run never retries"),
        }
    }

    fn secs(s: f64) -> Nanos {
        Nanos((s * 1e9) as u64)
    }

    #[test]
    fn the_previous_window_counts_in_proportion_to_its_overlap() {
        // 10 per 2 s; fill the window [1000, 1002), then look 0.5 s into the next.
        let p = params(10, Unit::Second, 2);
        let mut s = State::default();
        for _ in 0..10 {
            assert!(!run(&mut s, secs(1000.0), 1, &p).over_limit);
        }
        assert!(run(&mut s, secs(1001.9), 1, &p).over_limit);
        // 0.5 s into [1002, 1004): the previous 10 weigh 0.75 -> 7; 3 more pass.
        let o = run(&mut s, secs(1002.5), 0, &p);
        assert_eq!(o.remaining, 3);
        for _ in 0..3 {
            assert!(!run(&mut s, secs(1002.5), 1, &p).over_limit);
        }
        assert!(run(&mut s, secs(1002.5), 1, &p).over_limit);
    }

    #[test]
    fn no_double_burst_across_a_window_edge() {
        let p = params(10, Unit::Second, 1);
        let mut s = State::default();
        let admitted: usize = (0..20).filter(|_| !run(&mut s, secs(1000.99), 1, &p).over_limit).count();
        let admitted_after: usize = (0..20).filter(|_| !run(&mut s, secs(1001.01), 1, &p).over_limit).count();
        assert_eq!(admitted, 10);
        // 0.01 s into the next window the previous 10 still weigh 9.9, floored to 9.
        assert_eq!(admitted_after, 1, "a fixed window would admit 10 more here");
    }

    #[test]
    fn rejections_are_not_counted_and_report_when_they_would_pass() {
        let p = params(4, Unit::Second, 1);
        let mut s = State::default();
        for _ in 0..4 {
            run(&mut s, secs(1000.0), 1, &p);
        }
        let o = run(&mut s, secs(1000.5), 1, &p);
        assert!(o.over_limit);
        // In the next window the previous 4 must decay to 3: (1 - e) * 4 < 4 at any e > 0,
        // so the first nanosecond of the next window, rounded up to a millisecond.
        assert_eq!(o.reset_after, Nanos::from_millis(501));
        assert!(run(&mut s, secs(1000.9999), 1, &p).over_limit);
        assert!(!run(&mut s, Nanos(1001 * Nanos::NANOS_PER_SEC + 1), 1, &p).over_limit);
    }

    #[test]
    fn more_hits_than_the_limit_never_pass() {
        let p = params(3, Unit::Second, 1);
        let mut s = State::default();
        let o = run(&mut s, secs(1000.25), 4, &p);
        assert!(o.over_limit);
        assert_eq!(o.reset_after, Nanos::from_millis(1750));
        assert_eq!(s.word, pack(1000, 0), "nothing counted");
    }

    #[test]
    fn a_stale_aux_word_asks_for_a_retry() {
        let p = params(3, Unit::Second, 1);
        let state = State { word: pack(1000, 1), aux: pack(1000, 2) };
        assert_eq!(decide(state, secs(1000.5), 1, &p), Step::Retry);
    }

    #[test]
    fn a_thread_behind_the_counter_decides_at_the_counters_window() {
        let p = params(3, Unit::Second, 1);
        let state = State { word: pack(1001, 3), aux: pack(1000, 0) };
        let Step::Decided { outcome, .. } = decide(state, secs(1000.9), 1, &p) else { panic!() };
        assert!(outcome.over_limit);
    }

    #[test]
    fn refunds_take_back_from_the_window_the_hits_went_into() {
        let p = params(5, Unit::Second, 1);
        let mut s = State::default();
        run(&mut s, secs(1000.1), 3, &p);
        assert_eq!(unpack(refund(s, secs(1000.1), 2, &p).word), (1000, 1));
        run(&mut s, secs(1001.1), 0, &p);
        let moved = State { word: pack(1001, 0), aux: pack(1000, 3) };
        assert_eq!(unpack(refund(moved, secs(1000.1), 2, &p).aux), (1000, 1));
    }

    #[test]
    fn windows_longer_than_the_epoch_count_from_the_first_hit() {
        // 100 years: every time since 1970 is in window 0, the index a fresh counter has.
        let p = params(2, Unit::Year, 100);
        let mut s = State::default();
        let now = Nanos::from_secs(1_764_000_000);
        assert!(!run(&mut s, now, 1, &p).over_limit);
        assert!(!run(&mut s, now, 1, &p).over_limit);
        assert!(run(&mut s, now, 1, &p).over_limit);
        assert_eq!(unpack(s.word), (0, 2));
    }

    #[test]
    fn fresh_after_two_windows() {
        let p = params(5, Unit::Minute, 1);
        assert_eq!(fresh_at(pack(10, 1), &p), Nanos::from_secs(12 * 60));
    }
}
