//! Rate-limit arithmetic: units, limit parameters, and the pure decision functions.
//!
//! Owns "given what a counter held, the time and the hits, what is the answer and what
//! should the counter hold now". Each algorithm is a pure function over its state: one
//! `u64` for the fixed window and for both buckets (GCRA keeps a theoretical arrival
//! time), so the memory store commits with a single compare-and-swap; the sliding window
//! adds a second word for the previous window's count, written before the first (see
//! `sliding_window`). The arithmetic is tested without threads or a store. Parameters are
//! derived once, when the config loads, never per request.
//!
//! This module must not touch atomics, maps, protos or the clock.

pub mod fixed_window;
pub mod gcra;
pub mod sliding_window;

use crate::clock::Nanos;

/// A rate limit unit, as the reference names them. Month is 30 days and year 365 days,
/// as in the reference: windows are epoch-aligned blocks, not calendar months.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Unit {
    Second,
    Minute,
    Hour,
    Day,
    Week,
    Month,
    Year,
}

impl Unit {
    pub const ALL: [Unit; 7] = [Unit::Second, Unit::Minute, Unit::Hour, Unit::Day, Unit::Week, Unit::Month, Unit::Year];

    pub const fn seconds(self) -> u64 {
        match self {
            Unit::Second => 1,
            Unit::Minute => 60,
            Unit::Hour => 3_600,
            Unit::Day => 86_400,
            Unit::Week => 604_800,
            Unit::Month => 2_592_000,
            Unit::Year => 31_536_000,
        }
    }

    /// Parses a config unit name, case-insensitively (`second`, `MINUTE`, ...).
    pub fn parse(text: &str) -> Option<Unit> {
        Unit::ALL.into_iter().find(|u| u.name().eq_ignore_ascii_case(text))
    }

    /// The upper-case proto name (`SECOND`), as `/rlconfig` prints it.
    pub const fn name(self) -> &'static str {
        match self {
            Unit::Second => "SECOND",
            Unit::Minute => "MINUTE",
            Unit::Hour => "HOUR",
            Unit::Day => "DAY",
            Unit::Week => "WEEK",
            Unit::Month => "MONTH",
            Unit::Year => "YEAR",
        }
    }

    /// The number of `envoy.service.ratelimit.v3.RateLimitResponse.RateLimit.Unit`
    /// (the same numbers as `envoy.type.v3.RateLimitUnit`, plus `WEEK = 7`).
    pub const fn proto_number(self) -> i32 {
        match self {
            Unit::Second => 1,
            Unit::Minute => 2,
            Unit::Hour => 3,
            Unit::Day => 4,
            Unit::Month => 5,
            Unit::Year => 6,
            Unit::Week => 7,
        }
    }

    /// The unit of a request's limit override. `0` (`UNKNOWN`) and numbers the proto does
    /// not define are `None`; the reference crashes on them, we reject the request.
    pub const fn from_proto_number(n: i32) -> Option<Unit> {
        match n {
            1 => Some(Unit::Second),
            2 => Some(Unit::Minute),
            3 => Some(Unit::Hour),
            4 => Some(Unit::Day),
            5 => Some(Unit::Month),
            6 => Some(Unit::Year),
            7 => Some(Unit::Week),
            _ => None,
        }
    }
}

/// Which algorithm decides a limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum Algorithm {
    /// The reference's epoch-aligned fixed window.
    #[default]
    FixedWindow,
    /// Two fixed windows, the previous one weighted by how much of it is still inside the
    /// sliding window.
    SlidingWindow,
    /// A bucket of `burst` tokens refilled at the limit's rate.
    TokenBucket,
    /// GCRA with NGINX `limit_req` semantics: requests drain at the limit's rate, `burst`
    /// excess requests are tolerated.
    LeakyBucket,
}

impl Algorithm {
    pub const ALL: [Algorithm; 4] =
        [Algorithm::FixedWindow, Algorithm::SlidingWindow, Algorithm::TokenBucket, Algorithm::LeakyBucket];

    pub const fn name(self) -> &'static str {
        match self {
            Algorithm::FixedWindow => "fixed_window",
            Algorithm::SlidingWindow => "sliding_window",
            Algorithm::TokenBucket => "token_bucket",
            Algorithm::LeakyBucket => "leaky_bucket",
        }
    }

    pub fn parse(text: &str) -> Option<Algorithm> {
        Algorithm::ALL.into_iter().find(|a| a.name() == text)
    }

    /// Whether the algorithm takes a `burst`.
    pub const fn has_burst(self) -> bool {
        matches!(self, Algorithm::TokenBucket | Algorithm::LeakyBucket)
    }

    /// Whether a counter of this algorithm keeps a second word (the sliding window's
    /// previous count) next to its state.
    pub const fn uses_aux_word(self) -> bool {
        matches!(self, Algorithm::SlidingWindow)
    }
}

/// Everything a decision needs about one limit, computed when the config loads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct LimitParams {
    pub algorithm: Algorithm,
    pub requests_per_unit: u32,
    pub unit: Unit,
    /// The window is `unit_multiplier` units long (1 in the reference schema).
    pub unit_multiplier: u32,
    /// Window length in whole seconds (`unit.seconds() * unit_multiplier`), at least 1.
    pub window_secs: u64,
    /// The same in nanoseconds.
    pub window_ns: u64,
    /// `burst` as configured (token bucket: its size; leaky bucket: the excess tolerated).
    pub burst: u32,
    /// GCRA: how many hits the bucket holds at once (token bucket: `burst`; leaky bucket:
    /// `burst + 1`, the request itself plus the tolerated excess).
    pub capacity: u64,
    /// GCRA: nanoseconds per hit at the limit's rate, rounded up so the rate is never
    /// exceeded; 0 when `requests_per_unit` is 0.
    pub emission_ns: u64,
}

impl LimitParams {
    pub fn fixed_window(requests_per_unit: u32, unit: Unit) -> Self {
        Self::new(Algorithm::FixedWindow, requests_per_unit, unit, 1, None)
    }

    /// Derives every parameter. `burst` defaults to `requests_per_unit` for the token
    /// bucket and 0 for the leaky bucket, and is ignored by the window algorithms.
    pub fn new(
        algorithm: Algorithm,
        requests_per_unit: u32,
        unit: Unit,
        unit_multiplier: u32,
        burst: Option<u32>,
    ) -> Self {
        let unit_multiplier = unit_multiplier.max(1);
        let window_secs = unit.seconds().saturating_mul(u64::from(unit_multiplier));
        let window_ns = window_secs.saturating_mul(Nanos::NANOS_PER_SEC);
        let (burst, capacity) = match algorithm {
            Algorithm::TokenBucket => {
                let b = burst.unwrap_or(requests_per_unit);
                (b, u64::from(b))
            }
            Algorithm::LeakyBucket => {
                let b = burst.unwrap_or(0);
                (b, u64::from(b) + 1)
            }
            Algorithm::FixedWindow | Algorithm::SlidingWindow => (0, 0),
        };
        let emission_ns =
            if requests_per_unit == 0 { 0 } else { window_ns.div_ceil(u64::from(requests_per_unit)).max(1) };
        LimitParams {
            algorithm,
            requests_per_unit,
            unit,
            unit_multiplier,
            window_secs,
            window_ns,
            burst,
            capacity,
            emission_ns,
        }
    }
}

/// What one decision says about one limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// The hits were over the limit.
    pub over_limit: bool,
    /// The count before and after this request's hits (hits outstanding, for the
    /// buckets), for the near-limit and over-limit statistics.
    pub before: u64,
    pub after: u64,
    /// What could still be admitted now (0 when over the limit), rounded down.
    pub remaining: u32,
    /// When OK: time until the full allowance is back. When over: time until this request
    /// would be admitted. Whole seconds for fixed windows (as the reference), whole
    /// milliseconds rounded up for the others (never early).
    pub reset_after: Nanos,
}

/// A counter's state: the algorithm's word, and a second word only the sliding window
/// uses (its previous window's count).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct State {
    pub word: u64,
    pub aux: u64,
}

/// The result of one decision step over a [`State`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Decided: commit `word` (with a compare-and-swap from the word decided on), after
    /// raising the aux word to `aux` if given. Nothing to commit when both are unchanged.
    Decided { outcome: Outcome, word: u64, aux: Option<u64> },
    /// The two words were read at different moments and disagree: read them again.
    Retry,
}

/// Decides one limit: the pure step every store runs, in memory under a CAS loop.
#[inline]
pub fn decide(state: State, now: Nanos, hits: u64, params: &LimitParams) -> Step {
    match params.algorithm {
        Algorithm::FixedWindow => {
            let (outcome, word) = fixed_window::decide(state.word, now, hits, params);
            Step::Decided { outcome, word, aux: None }
        }
        Algorithm::SlidingWindow => sliding_window::decide(state, now, hits, params),
        Algorithm::TokenBucket | Algorithm::LeakyBucket => {
            let (outcome, word) = gcra::decide(state.word, now, hits, params);
            Step::Decided { outcome, word, aux: None }
        }
    }
}

/// Takes back `hits` that a decision at `consumed_at` counted (`CONSUME=all_or_nothing`
/// rolling back a rejected request). Returns the state to commit; hits that have since
/// left the counter's memory (an ended window) are not taken back twice.
#[inline]
pub fn refund(state: State, consumed_at: Nanos, hits: u64, params: &LimitParams) -> State {
    match params.algorithm {
        Algorithm::FixedWindow => State { word: fixed_window::refund(state.word, consumed_at, hits, params), ..state },
        Algorithm::SlidingWindow => sliding_window::refund(state, consumed_at, hits, params),
        Algorithm::TokenBucket | Algorithm::LeakyBucket => {
            State { word: gcra::refund(state.word, hits, params), ..state }
        }
    }
}

/// The instant from which a counter holding `state` is indistinguishable from a new one,
/// so the store may drop it without changing any future decision.
#[inline]
pub fn fresh_at(state: State, params: &LimitParams) -> Nanos {
    match params.algorithm {
        Algorithm::FixedWindow => fixed_window::fresh_at(state.word, params),
        Algorithm::SlidingWindow => sliding_window::fresh_at(state.word, params),
        Algorithm::TokenBucket | Algorithm::LeakyBucket => Nanos(state.word),
    }
}

/// What a limit reports as remaining once `hits` it had counted are taken back: the
/// remaining before, plus the hits, never more than the limit holds.
#[inline]
pub fn remaining_after_refund(params: &LimitParams, remaining: u32, hits: u64) -> u32 {
    let most = if params.algorithm.has_burst() { params.capacity } else { u64::from(params.requests_per_unit) };
    (u64::from(remaining).saturating_add(hits)).min(most).min(u64::from(u32::MAX)) as u32
}

/// Rounds a duration up to whole milliseconds (the precision reported for every
/// algorithm but the fixed window).
#[inline]
pub(crate) fn ceil_millis(n: u64) -> Nanos {
    Nanos(n.div_ceil(1_000_000).saturating_mul(1_000_000))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_parse_case_insensitively_and_map_to_proto_numbers() {
        assert_eq!(Unit::parse("second"), Some(Unit::Second));
        assert_eq!(Unit::parse("MiNuTe"), Some(Unit::Minute));
        assert_eq!(Unit::parse("week"), Some(Unit::Week));
        assert_eq!(Unit::parse("unknown"), None);
        assert_eq!(Unit::parse(""), None);
        for unit in Unit::ALL {
            assert_eq!(Unit::from_proto_number(unit.proto_number()), Some(unit));
        }
        assert_eq!(Unit::from_proto_number(0), None);
        assert_eq!(Unit::from_proto_number(8), None);
        assert_eq!(Unit::from_proto_number(-1), None);
        assert_eq!(Unit::Month.seconds(), 30 * 86_400);
        assert_eq!(Unit::Year.seconds(), 365 * 86_400);
    }
}
