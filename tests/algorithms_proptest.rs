//! Property tests: every algorithm against a plain, obviously-correct model, driven by a
//! fake clock through random sequences of calls.
//!
//! The models keep their state the obvious way (a count per window, a log of admitted
//! hits per window, a draining water level) where the algorithms pack theirs into one or
//! two words. For every call we check that the decision and `limit_remaining` agree with
//! the model, that the algorithm's bound holds, and that after a rejection the request
//! passes exactly when `duration_until_reset` says and not before.

use std::collections::HashMap;

use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;
use sluicegate::clock::Nanos;
use sluicegate::limiter::{Algorithm, LimitParams, Outcome, State, Step, Unit, decide};

const SEC: u64 = Nanos::NANOS_PER_SEC;
const MS: u64 = 1_000_000;
/// Start far from the epoch, mid-window, as real clocks are.
const START: u64 = 1_700_000_000 * SEC + 123_456_789;

/// One step, applied as the memory store would, sequentially.
fn step(state: &mut State, now: u64, hits: u64, p: &LimitParams) -> Outcome {
    match decide(*state, Nanos(now), hits, p) {
        Step::Decided { outcome, word, aux } => {
            if let Some(aux) = aux {
                state.aux = aux;
            }
            state.word = word;
            outcome
        }
        Step::Retry => panic!("a sequential run never needs a retry"),
    }
}

/// What the model says about one call.
struct Verdict {
    admitted: bool,
    remaining: u64,
}

trait Model {
    fn call(&mut self, now: u64, hits: u64) -> Verdict;
}

/// Fixed window: a count per epoch-aligned window; every hit counts, admitted or not.
struct FixedModel {
    window: u64,
    limit: u64,
    counts: HashMap<u64, u64>,
}

impl Model for FixedModel {
    fn call(&mut self, now: u64, hits: u64) -> Verdict {
        let count = self.counts.entry(now / SEC / self.window).or_default();
        *count += hits;
        let admitted = *count <= self.limit;
        Verdict { admitted, remaining: if admitted { self.limit - *count } else { 0 } }
    }
}

/// Sliding window: the admitted hits of each window; the previous window weighs by its
/// overlap with the sliding window.
struct SlidingModel {
    window_ns: u64,
    limit: u64,
    admitted: HashMap<u64, u64>,
}

impl SlidingModel {
    fn count(&self, now: u64) -> u64 {
        let index = now / self.window_ns;
        let elapsed = now - index * self.window_ns;
        let previous = self.admitted.get(&(index - 1)).copied().unwrap_or(0);
        let current = self.admitted.get(&index).copied().unwrap_or(0);
        (u128::from(previous) * u128::from(self.window_ns - elapsed) / u128::from(self.window_ns)) as u64 + current
    }
}

impl Model for SlidingModel {
    fn call(&mut self, now: u64, hits: u64) -> Verdict {
        let after = self.count(now) + hits;
        if after > self.limit {
            return Verdict { admitted: false, remaining: 0 };
        }
        *self.admitted.entry(now / self.window_ns).or_default() += hits;
        Verdict { admitted: true, remaining: self.limit - after }
    }
}

/// Both buckets: a water level (nanoseconds of work) that drains at one nanosecond per
/// nanosecond; a hit adds `spacing`; a call fits if the level stays within
/// `capacity * spacing`.
struct BucketModel {
    spacing: u64,
    capacity: u64,
    level: u64,
    last: u64,
}

impl Model for BucketModel {
    fn call(&mut self, now: u64, hits: u64) -> Verdict {
        self.level = self.level.saturating_sub(now - self.last);
        self.last = now;
        if self.spacing == 0 {
            return Verdict { admitted: hits == 0, remaining: 0 };
        }
        let full = self.capacity * self.spacing;
        let after = self.level + hits * self.spacing;
        if after > full {
            return Verdict { admitted: false, remaining: 0 };
        }
        self.level = after;
        Verdict { admitted: true, remaining: (full - after) / self.spacing }
    }
}

fn model_for(p: &LimitParams) -> Box<dyn Model> {
    let limit = u64::from(p.requests_per_unit);
    match p.algorithm {
        Algorithm::FixedWindow => Box::new(FixedModel { window: p.window_secs, limit, counts: HashMap::new() }),
        Algorithm::SlidingWindow => Box::new(SlidingModel { window_ns: p.window_ns, limit, admitted: HashMap::new() }),
        Algorithm::TokenBucket | Algorithm::LeakyBucket => {
            Box::new(BucketModel { spacing: p.emission_ns, capacity: p.capacity, level: 0, last: START })
        }
    }
}

/// The most hits a limit could ever admit at once (a bigger request never passes).
fn largest_admissible(p: &LimitParams) -> u64 {
    match p.algorithm {
        Algorithm::FixedWindow | Algorithm::SlidingWindow => u64::from(p.requests_per_unit),
        Algorithm::TokenBucket | Algorithm::LeakyBucket if p.requests_per_unit == 0 => 0,
        Algorithm::TokenBucket | Algorithm::LeakyBucket => p.capacity,
    }
}

fn params_strategy() -> impl Strategy<Value = LimitParams> {
    params_of(&Algorithm::ALL)
}

fn params_of(algorithms: &'static [Algorithm]) -> impl Strategy<Value = LimitParams> {
    (
        prop::sample::select(algorithms),
        0u32..12,
        prop_oneof![Just(Unit::Second), Just(Unit::Minute)],
        1u32..4,
        prop::option::of(0u32..8),
    )
        .prop_map(|(algorithm, rpu, unit, multiplier, burst)| {
            let burst = match algorithm {
                // A token bucket holds at least one (the config loader insists).
                Algorithm::TokenBucket => burst.map(|b| b.max(1)).or(Some(rpu.max(1))),
                Algorithm::LeakyBucket => burst,
                Algorithm::FixedWindow | Algorithm::SlidingWindow => None,
            };
            LimitParams::new(algorithm, rpu, unit, multiplier, burst)
        })
}

/// Calls as (gap before the call in milliseconds, hits). Gaps mix bursts (0), steady
/// traffic and pauses longer than a minute-long window.
fn calls_strategy() -> impl Strategy<Value = Vec<(u64, u64)>> {
    prop::collection::vec(
        (prop_oneof![4 => Just(0u64), 4 => 1u64..400, 2 => 400u64..5_000, 1 => 60_000u64..200_000], 0u64..4),
        1..120,
    )
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 400,
        max_global_rejects: 1_000_000,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct("tests/algorithms_proptest.regressions"))),
        ..ProptestConfig::default()
    })]

    #[test]
    fn every_algorithm_agrees_with_its_model(p in params_strategy(), calls in calls_strategy()) {
        let mut model = model_for(&p);
        let mut state = State::default();
        let mut now = START;
        for (i, (gap_ms, hits)) in calls.into_iter().enumerate() {
            now += gap_ms * MS;
            let before = state;
            let outcome = step(&mut state, now, hits, &p);
            let expected = model.call(now, hits);
            prop_assert_eq!(!outcome.over_limit, expected.admitted, "call {} ({} hits) at {:?} with {:?}", i, hits, Nanos(now - START), p);
            prop_assert_eq!(u64::from(outcome.remaining), expected.remaining, "remaining, call {}", i);
            if hits == 0 {
                // Checking consumes nothing (a sliding window may only record its roll).
                prop_assert_eq!(outcome.after, outcome.before);
                if p.algorithm != Algorithm::SlidingWindow {
                    prop_assert_eq!(state, before);
                }
            }
        }
    }

    #[test]
    fn a_rejected_call_passes_exactly_when_duration_until_reset_says(
        p in params_strategy(),
        calls in calls_strategy(),
        retry_hits in 1u64..4,
    ) {
        let mut state = State::default();
        let mut now = START;
        for (gap_ms, hits) in calls {
            now += gap_ms * MS;
            step(&mut state, now, hits, &p);
        }
        let mut probe = state;
        let outcome = step(&mut probe, now, retry_hits, &p);
        prop_assume!(outcome.over_limit && retry_hits <= largest_admissible(&p));
        let reset = outcome.reset_after.0;
        // The call, repeated after exactly `reset` with nothing else in between, passes.
        let mut later = state;
        let passed = step(&mut later, now + reset, retry_hits, &p);
        prop_assert!(!passed.over_limit, "rejected at +{:?} though told to wait {:?} ({:?})", Nanos(reset), Nanos(reset), p);
        // And not before: one unit of reported precision earlier (whole seconds for fixed
        // windows, as the reference; milliseconds for the others) it is still rejected.
        let precision = if p.algorithm == Algorithm::FixedWindow { SEC } else { MS };
        if reset >= precision {
            let mut earlier = state;
            let early = step(&mut earlier, now + reset - precision, retry_hits, &p);
            prop_assert!(early.over_limit, "passed {:?} before the reported {:?} ({:?})", Nanos(precision), Nanos(reset), p);
        }
    }

    #[test]
    fn buckets_never_admit_more_than_capacity_plus_the_refill(
        p in params_of(&[Algorithm::TokenBucket, Algorithm::LeakyBucket]),
        calls in calls_strategy(),
    ) {
        prop_assume!(p.requests_per_unit > 0);
        let mut state = State::default();
        let mut now = START;
        let mut admitted: Vec<(u64, u64)> = Vec::new();
        for (gap_ms, hits) in calls {
            now += gap_ms * MS;
            if !step(&mut state, now, hits, &p).over_limit && hits > 0 {
                admitted.push((now, hits));
            }
        }
        for i in 0..admitted.len() {
            let mut total = 0;
            for j in i..admitted.len() {
                total += admitted[j].1;
                let refill = (admitted[j].0 - admitted[i].0) / p.emission_ns;
                prop_assert!(total <= p.capacity + refill, "{} hits between {:?} and {:?}", total, admitted[i].0, admitted[j].0);
            }
        }
    }

    #[test]
    fn windows_never_admit_more_than_the_limit_per_window(
        p in params_of(&[Algorithm::FixedWindow, Algorithm::SlidingWindow]),
        calls in calls_strategy(),
    ) {
        let mut state = State::default();
        let mut now = START;
        let mut per_window: HashMap<u64, u64> = HashMap::new();
        for (gap_ms, hits) in calls {
            now += gap_ms * MS;
            if !step(&mut state, now, hits, &p).over_limit {
                *per_window.entry(now / p.window_ns).or_default() += hits;
            }
        }
        for (window, total) in per_window {
            prop_assert!(total <= u64::from(p.requests_per_unit), "{} admitted in window {}", total, window);
        }
    }
}
