//! Rate-limit arithmetic: units, limit parameters, and the pure decision functions.
//!
//! Owns "given what a counter held, the time and the hits, what is the answer and what
//! should the counter hold now". Each algorithm is a pure function over one `u64` of
//! state, so the memory store can commit the result with a single compare-and-swap and
//! the arithmetic is tested without threads or a store. Parameters are derived once, when
//! the config loads, never per request.
//!
//! This module must not touch atomics, maps, protos or the clock.

pub mod fixed_window;

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
}

impl Algorithm {
    pub const fn name(self) -> &'static str {
        match self {
            Algorithm::FixedWindow => "fixed_window",
        }
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
}

impl LimitParams {
    pub fn fixed_window(requests_per_unit: u32, unit: Unit) -> Self {
        Self::new(Algorithm::FixedWindow, requests_per_unit, unit, 1)
    }

    pub fn new(algorithm: Algorithm, requests_per_unit: u32, unit: Unit, unit_multiplier: u32) -> Self {
        let unit_multiplier = unit_multiplier.max(1);
        LimitParams {
            algorithm,
            requests_per_unit,
            unit,
            unit_multiplier,
            window_secs: unit.seconds().saturating_mul(u64::from(unit_multiplier)),
        }
    }
}

/// What one decision says about one limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// The hits were over the limit.
    pub over_limit: bool,
    /// The count before and after this request's hits, for the near-limit and over-limit
    /// statistics (which the reference computes from both).
    pub before: u64,
    pub after: u64,
    /// What could still be admitted now (0 when over the limit).
    pub remaining: u32,
    /// When OK: time until the full allowance is back. When over: time until this request
    /// would be admitted.
    pub reset_after: Nanos,
}

/// The state word no algorithm ever produces. The memory store writes it into a counter
/// it is about to remove, so a request that raced with the removal retries on a fresh
/// counter instead of counting on a dead one.
pub const TOMBSTONE: u64 = u64::MAX;

/// Decides one limit: the pure step every store runs, in memory under a CAS loop.
/// Returns the outcome and the state to commit (equal to `state` when nothing changes).
#[inline]
pub fn decide(state: u64, now: Nanos, hits: u64, params: &LimitParams) -> (Outcome, u64) {
    match params.algorithm {
        Algorithm::FixedWindow => fixed_window::decide(state, now, hits, params),
    }
}

/// The instant from which a counter holding `state` is indistinguishable from a new one,
/// so the store may drop it without changing any future decision.
#[inline]
pub fn fresh_at(state: u64, params: &LimitParams) -> Nanos {
    match params.algorithm {
        Algorithm::FixedWindow => fixed_window::fresh_at(state, params),
    }
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
