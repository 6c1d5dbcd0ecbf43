//! Structured requests (built with `arbitrary`) through the whole `ShouldRateLimit`
//! pipeline: a fixed rule set, a fresh memory store per input, and a frozen fake clock.
//!
//! With time frozen no window rolls and no bucket refills, so each counter's admissions
//! are bounded by its limit alone. Invariants:
//! - for each descriptor (domain and exact entries) matched to a rule with limits, the
//!   hits answered OK never exceed the tightest bound of the rule's limits (a window's
//!   `requests_per_unit`, a bucket's capacity) plus the hits given back to it with
//!   `is_negative_hits`; under `CONSUME=all_or_nothing` only wholly admitted requests
//!   count (a rejected request's OK statuses are rolled back);
//! - the response has one status per descriptor, and OVER_LIMIT overall exactly when
//!   one status is OVER_LIMIT;
//! - an error is `INVALID_ARGUMENT` naming the domain or a descriptor that exists, never
//!   `UNAVAILABLE` (the rules are loaded and the store is in memory).

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use arbitrary::{Arbitrary, Unstructured};
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::{Entry, RateLimitOverride};
use envoy_types::pb::envoy::service::ratelimit::v3::RateLimitRequest;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::Code;
use envoy_types::pb::google::protobuf::UInt64Value;
use sluicegate::clock::FakeClock;
use sluicegate::snapshot::load_texts;
use sluicegate::limiter::{Algorithm, LimitParams};
use sluicegate::rules::{LimitRegistry, RuleSet};
use sluicegate::service::{Consume, RateLimiter, ServiceError, ServiceOptions, SharedConfig};
use sluicegate::stats::{Stats, StatsOptions};
use sluicegate::store::{MemoryStore, Store};

/// Every algorithm, nesting, wildcards (own and shared counters), several limits on one
/// rule, multiples, a zero limit, `unlimited`, a leaf without a limit, default limits.
pub const RULES: &str = r#"
domain: fuzz
default_limit: "7/hour"
descriptors:
  - key: remote_address
    rate_limit: {unit: minute, requests_per_unit: 5}
  - key: remote_address
    value: 10.0.0.66
    rate_limit: {unit: second, requests_per_unit: 0}
  - key: api_key
    value: internal-*
    rate_limit: {unlimited: true}
  - key: api_key
    value: partner-*
    share_threshold: true
    rate_limit: {unit: hour, requests_per_unit: 4, algorithm: sliding_window}
  - key: api_key
    limit: "3/second;6 per 2 minutes"
  - key: tenant
    rate_limits:
      - {requests_per_unit: 9, unit: second, algorithm: token_bucket, burst: 4}
      - {requests_per_unit: 50, unit: day}
    descriptors:
      - key: plan
        value: gold
        rate_limit: {unit: minute, requests_per_unit: 2, algorithm: leaky_bucket, burst: 2}
      - key: plan
        inherit_default: true
        rate_limit: {unit: hour, requests_per_unit: 20, unit_multiplier: 3}
  - key: path
    value: /healthz
"#;

const KEYS: [&str; 7] = ["remote_address", "api_key", "tenant", "plan", "path", "user", ""];
const VALUES: [&str; 10] =
    ["10.0.0.1", "10.0.0.66", "internal-tools", "partner-a", "partner-b", "t1", "gold", "silver", "/healthz", ""];

#[derive(Arbitrary, Debug)]
struct Script {
    all_or_nothing: bool,
    calls: Vec<Call>,
}

#[derive(Arbitrary, Debug)]
struct Call {
    /// 0 is the rules' domain; others test unknown and empty domains.
    domain: u8,
    hits_addend: u8,
    descriptors: Vec<Desc>,
}

#[derive(Arbitrary, Debug)]
struct Desc {
    entries: Vec<(Text<7>, Text<10>)>,
    hits_addend: Option<u8>,
    negative: bool,
    limit: Option<(u8, i8)>,
}

/// Mostly one of `N` known strings (so the fuzzer reaches the rules), sometimes any text.
#[derive(Arbitrary, Debug)]
enum Text<const N: usize> {
    Known(u8),
    Any(String),
}

impl<const N: usize> Text<N> {
    fn get(&self, known: &[&str; N]) -> String {
        match self {
            Text::Known(i) => known[*i as usize % N].to_string(),
            Text::Any(s) => s.clone(),
        }
    }
}

/// What every input shares: the loaded rules (with the registry their counter ids come
/// from) and the stats sink. Loading them per input would cost more than the input.
struct Fixture {
    registry: Arc<LimitRegistry>,
    config: SharedConfig,
    stats: Arc<Stats>,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let registry = Arc::new(LimitRegistry::new());
        let snapshot = load_texts(&[("fuzz.yaml", RULES)], false, &registry).expect("the fuzz rules load");
        let stats = Stats::new(StatsOptions { near_limit_ratio: 0.8, ..StatsOptions::default() });
        Fixture { registry, config: sluicegate::service::Active::shared(snapshot), stats }
    })
}

/// A limiter over [`RULES`] with a fresh, empty memory store and a frozen clock.
pub fn limiter(consume: Consume) -> RateLimiter {
    let f = fixture();
    let store = Store::Memory(Arc::new(MemoryStore::new(f.registry.clone(), 10_000)));
    let options = ServiceOptions { consume, ..ServiceOptions::default() };
    RateLimiter::new(f.config.clone(), store, FakeClock::at_secs(1_000_000).into(), options).with_stats(f.stats.clone())
}

pub fn check(data: &[u8]) {
    let Ok(script) = Script::arbitrary_take_rest(Unstructured::new(data)) else { return };
    let limiter = limiter(if script.all_or_nothing { Consume::AllOrNothing } else { Consume::Always });
    let config = fixture().config.load();
    let rules = &config.as_deref().expect("loaded").snapshot.rules;
    let mut model = Model::default();
    for call in script.calls.iter().take(64) {
        let request = call.request();
        let answer = limiter.immediate().expect("a memory store").decide(&request);
        model.observe(&request, &answer, rules, script.all_or_nothing);
    }
}

impl Call {
    fn request(&self) -> RateLimitRequest {
        let domain = match self.domain % 8 {
            0..=5 => "fuzz",
            6 => "elsewhere",
            _ => "",
        };
        RateLimitRequest {
            domain: domain.into(),
            hits_addend: u32::from(self.hits_addend % 8),
            descriptors: self
                .descriptors
                .iter()
                .take(8)
                .map(|d| RateLimitDescriptor {
                    entries: d
                        .entries
                        .iter()
                        .take(5)
                        .map(|(k, v)| Entry { key: k.get(&KEYS), value: v.get(&VALUES) })
                        .collect(),
                    // Overrides are rare (a unit from -1 to 8, a small limit), as in life.
                    limit: d.limit.filter(|(n, _)| n % 4 == 0).map(|(n, unit)| RateLimitOverride {
                        requests_per_unit: u32::from(n / 4),
                        unit: i32::from(unit % 10) - 1,
                    }),
                    hits_addend: d.hits_addend.map(|h| UInt64Value { value: u64::from(h % 6) }),
                    is_negative_hits: d.negative,
                })
                .collect(),
        }
    }
}

/// Per counter (domain and entries, as counted): hits admitted and hits given back.
#[derive(Default)]
struct Model {
    counters: HashMap<CounterId, (u64, u64)>,
}

/// A domain and its entries' keys and counted values.
type CounterId = (String, Vec<(String, String)>);

impl Model {
    fn observe(
        &mut self,
        request: &RateLimitRequest,
        answer: &Result<envoy_types::pb::envoy::service::ratelimit::v3::RateLimitResponse, ServiceError>,
        rules: &RuleSet,
        all_or_nothing: bool,
    ) {
        let response = match answer {
            Ok(r) => r,
            Err(ServiceError::InvalidArgument(m)) => {
                let names_descriptor =
                    (0..request.descriptors.len()).any(|i| m.starts_with(&format!("descriptor {i} ")));
                assert!(
                    m.contains("domain")
                        || m.contains("descriptor list")
                        || m.contains("descriptors")
                        || names_descriptor,
                    "INVALID_ARGUMENT names no domain or descriptor: {m:?} for {request:?}"
                );
                return;
            }
            Err(e) => panic!("{e:?} for {request:?}"),
        };
        assert_eq!(response.statuses.len(), request.descriptors.len(), "one status per descriptor");
        let any_over = response.statuses.iter().any(|s| s.code == Code::OverLimit as i32);
        assert_eq!(response.overall_code == Code::OverLimit as i32, any_over, "{response:?}");
        let Some(domain) = rules.domain(&request.domain) else { return };
        let request_hits = u64::from(request.hits_addend.max(1));
        for (d, status) in request.descriptors.iter().zip(&response.statuses) {
            let hits = d.hits_addend.as_ref().map_or(request_hits, |h| h.value);
            let rule = domain.find(&d.entries);
            // Keyed as the store keys counters: a `share_threshold` level counts every
            // matching value on the pattern, so give-backs there serve all of them.
            let id = (
                request.domain.clone(),
                d.entries
                    .iter()
                    .enumerate()
                    .map(|(i, e)| (e.key.clone(), rule.map_or(&*e.value, |r| r.counter_value(i, &e.value)).to_string()))
                    .collect(),
            );
            let entry = self.counters.entry(id).or_default();
            if d.is_negative_hits {
                // Whatever the answer, these hits may have gone back to the counter.
                entry.1 += hits;
                continue;
            }
            let admitted = status.code == Code::Ok as i32 && (!all_or_nothing || !any_over);
            if !admitted || d.limit.is_some() || status.current_limit.is_none() {
                continue;
            }
            let Some(rule) = rule else { continue };
            let Some(bound) = rule.limits.iter().map(|l| bound(&l.params)).min() else { continue };
            entry.0 += hits;
            assert!(
                entry.0 <= bound + entry.1,
                "{} hits admitted on {:?} ({} given back), more than its bound of {bound} at one instant; \
                 last request {request:?}",
                entry.0,
                d.entries,
                entry.1
            );
        }
    }
}

/// The most hits a fresh counter admits at one instant.
fn bound(p: &LimitParams) -> u64 {
    match p.algorithm {
        Algorithm::FixedWindow | Algorithm::SlidingWindow => u64::from(p.requests_per_unit),
        Algorithm::TokenBucket | Algorithm::LeakyBucket => {
            if p.requests_per_unit == 0 {
                0
            } else {
                p.capacity
            }
        }
    }
}
