//! Service-level behaviour: the reference's test/service cases, driven directly
//! (no network) with a real memory store and a fake clock at 2222 s.

use std::sync::Arc;

use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::{Entry, RateLimitOverride};
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::Code;
use envoy_types::pb::google::protobuf::UInt64Value;

use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::DescriptorStatus;
use envoy_types::pb::google::protobuf::Duration as ProtoDuration;

use super::*;
use crate::clock::FakeClock;
use crate::rules::LimitRegistry;
use crate::snapshot::load_texts;
use crate::store::MemoryStore;

const RULES: &str = r#"
domain: test-domain
descriptors:
  - key: minute
    rate_limit: {unit: minute, requests_per_unit: 10}
  - key: five
    rate_limit: {unit: minute, requests_per_unit: 5}
  - key: one
    rate_limit: {unit: minute, requests_per_unit: 1, name: one_limit}
  - key: zero
    rate_limit: {unit: second, requests_per_unit: 0, name: banned}
  - key: unlimited
    rate_limit: {unlimited: true, requests_per_unit: 55}
  - key: shadowed
    shadow_mode: true
    rate_limit: {unit: minute, requests_per_unit: 1}
  - key: quota1
    quota_mode: true
    metadata: {name: service_1}
    rate_limit: {unit: minute, requests_per_unit: 1}
  - key: quota2
    quota_mode: true
    metadata: {name: service_2, nested: {a: 1}}
    rate_limit: {unit: minute, requests_per_unit: 2}
  - key: meta
    metadata: {name: service_1, nested: {b: 2}}
    rate_limit: {unit: minute, requests_per_unit: 100}
  - key: replacer
    rate_limit: {unit: minute, requests_per_unit: 2, replaces: [{name: banned}]}
  - key: whitelisted
    value: yes
"#;

struct Harness {
    limiter: RateLimiter,
    clock: FakeClock,
}

fn harness(options: ServiceOptions) -> Harness {
    let registry = Arc::new(LimitRegistry::new());
    let snapshot = load_texts(&[("rules.yaml", RULES)], false, &registry).unwrap();
    let config = Active::shared(snapshot);
    let clock = FakeClock::at_secs(2222);
    let store = Store::Memory(Arc::new(MemoryStore::new(registry, 1000)));
    Harness { limiter: RateLimiter::new(config, store, clock.clone().into(), options), clock }
}

fn descriptor(entries: &[(&str, &str)]) -> RateLimitDescriptor {
    RateLimitDescriptor {
        entries: entries.iter().map(|(k, v)| Entry { key: k.to_string(), value: v.to_string() }).collect(),
        ..Default::default()
    }
}

fn request(descriptors: Vec<RateLimitDescriptor>) -> RateLimitRequest {
    RateLimitRequest { domain: "test-domain".into(), descriptors, hits_addend: 0 }
}

fn call(h: &Harness, descriptors: &[&[(&str, &str)]]) -> RateLimitResponse {
    h.limiter.immediate().unwrap().decide(&request(descriptors.iter().map(|d| descriptor(d)).collect())).unwrap()
}

fn codes(r: &RateLimitResponse) -> (i32, Vec<i32>) {
    (r.overall_code, r.statuses.iter().map(|s| s.code).collect())
}

const OK: i32 = Code::Ok as i32;
const OVER: i32 = Code::OverLimit as i32;

#[test]
fn no_rule_matched_is_ok_with_no_limit() {
    let h = harness(ServiceOptions::default());
    let r = call(&h, &[&[("hello", "world")]]);
    assert_eq!(codes(&r), (OK, vec![OK]));
    assert_eq!(r.statuses[0], DescriptorStatus { code: OK, ..Default::default() });
}

#[test]
fn unknown_domain_is_ok_even_with_an_override() {
    let h = harness(ServiceOptions::default());
    let mut d = descriptor(&[("minute", "x")]);
    d.limit = Some(RateLimitOverride { requests_per_unit: 0, unit: 1 });
    let r = h
        .limiter
        .immediate()
        .unwrap()
        .decide(&RateLimitRequest { domain: "foo_domain".into(), descriptors: vec![d], hits_addend: 0 })
        .unwrap();
    assert_eq!(codes(&r), (OK, vec![OK]));
    assert!(r.statuses[0].current_limit.is_none());
}

#[test]
fn statuses_follow_request_order_with_limit_remaining_and_reset() {
    let h = harness(ServiceOptions::default());
    let r = call(&h, &[&[("hello", "world")], &[("minute", "a")], &[("one", "b")]]);
    assert_eq!(codes(&r), (OK, vec![OK, OK, OK]));
    let s = &r.statuses[1];
    let limit = s.current_limit.as_ref().unwrap();
    assert_eq!((limit.requests_per_unit, limit.unit, limit.name.as_str()), (10, 2, ""));
    assert_eq!(s.limit_remaining, 9);
    assert_eq!(s.duration_until_reset, Some(ProtoDuration { seconds: 58, nanos: 0 }));
    assert_eq!(r.statuses[2].current_limit.as_ref().unwrap().name, "one_limit");
    let r = call(&h, &[&[("hello", "world")], &[("minute", "a")], &[("one", "b")]]);
    assert_eq!(codes(&r), (OVER, vec![OK, OK, OVER]));
    assert_eq!(r.statuses[2].limit_remaining, 0);
}

#[test]
fn windows_reset_when_the_clock_crosses_them() {
    let h = harness(ServiceOptions::default());
    assert_eq!(call(&h, &[&[("one", "x")]]).overall_code, OK);
    assert_eq!(call(&h, &[&[("one", "x")]]).overall_code, OVER);
    h.clock.advance(std::time::Duration::from_secs(57));
    assert_eq!(call(&h, &[&[("one", "x")]]).statuses[0].duration_until_reset.unwrap().seconds, 1);
    h.clock.advance(std::time::Duration::from_secs(1));
    assert_eq!(call(&h, &[&[("one", "x")]]).overall_code, OK);
}

#[test]
fn each_distinct_value_of_a_key_only_rule_has_its_own_counter() {
    let h = harness(ServiceOptions::default());
    assert_eq!(call(&h, &[&[("one", "a")]]).overall_code, OK);
    assert_eq!(call(&h, &[&[("one", "b")]]).overall_code, OK);
    assert_eq!(call(&h, &[&[("one", "a")]]).overall_code, OVER);
}

#[test]
fn unlimited_rules_report_max_remaining_and_no_limit() {
    let h = harness(ServiceOptions::default());
    let r = call(&h, &[&[("minute", "a")], &[("hello", "x")], &[("unlimited", "z")]]);
    assert_eq!(r.statuses[0].limit_remaining, 9);
    assert_eq!(r.statuses[2], DescriptorStatus { code: OK, limit_remaining: u32::MAX, ..Default::default() });
}

#[test]
fn whitelisted_rules_are_ok_without_counting() {
    let h = harness(ServiceOptions::default());
    for _ in 0..3 {
        let r = call(&h, &[&[("whitelisted", "yes")]]);
        assert_eq!(r.statuses[0], DescriptorStatus { code: OK, ..Default::default() });
    }
    assert!(h.limiter.store().memory().unwrap().is_empty());
}

#[test]
fn hits_addend_request_zero_means_one_descriptor_zero_checks_only() {
    let h = harness(ServiceOptions::default());
    let mut req = request(vec![descriptor(&[("five", "a")])]);
    req.hits_addend = 3;
    assert_eq!(h.limiter.immediate().unwrap().decide(&req).unwrap().statuses[0].limit_remaining, 2);
    req.hits_addend = 0;
    assert_eq!(h.limiter.immediate().unwrap().decide(&req).unwrap().statuses[0].limit_remaining, 1);
    req.descriptors[0].hits_addend = Some(UInt64Value { value: 0 });
    let r = h.limiter.immediate().unwrap().decide(&req).unwrap();
    assert_eq!((r.overall_code, r.statuses[0].limit_remaining), (OK, 1), "checking consumes nothing");
    req.descriptors[0].hits_addend = Some(UInt64Value { value: 2 });
    assert_eq!(h.limiter.immediate().unwrap().decide(&req).unwrap().overall_code, OVER);
}

#[test]
fn overrides_bypass_the_tree_and_count_per_value() {
    let h = harness(ServiceOptions::default());
    let mut d = descriptor(&[("nothing", "matches")]);
    d.limit = Some(RateLimitOverride { requests_per_unit: 1, unit: 3 });
    let r = h.limiter.immediate().unwrap().decide(&request(vec![d.clone()])).unwrap();
    let limit = r.statuses[0].current_limit.as_ref().unwrap();
    assert_eq!((limit.requests_per_unit, limit.unit, r.statuses[0].limit_remaining), (1, 3, 0));
    assert_eq!(r.statuses[0].duration_until_reset.unwrap().seconds, 3600 - 2222);
    assert_eq!(h.limiter.immediate().unwrap().decide(&request(vec![d])).unwrap().overall_code, OVER);
}

#[test]
fn replaces_drops_the_named_limit_for_this_request_only() {
    let h = harness(ServiceOptions::default());
    let r = call(&h, &[&[("zero", "x")]]);
    assert_eq!(r.overall_code, OVER, "banned alone rejects");
    let r = call(&h, &[&[("zero", "x")], &[("replacer", "y")]]);
    assert_eq!(codes(&r), (OK, vec![OK, OK]));
    assert_eq!(r.statuses[0], DescriptorStatus { code: OK, ..Default::default() });
    assert_eq!(r.statuses[1].limit_remaining, 1);
}

#[test]
fn per_rule_shadow_mode_counts_but_never_rejects() {
    let h = harness(ServiceOptions::default());
    call(&h, &[&[("shadowed", "x")]]);
    let r = call(&h, &[&[("shadowed", "x")]]);
    assert_eq!(codes(&r), (OK, vec![OK]));
    assert_eq!(r.statuses[0].limit_remaining, 0);
    assert!(r.statuses[0].current_limit.is_some());
    let r = call(&h, &[&[("shadowed", "x")], &[("zero", "y")]]);
    assert_eq!(codes(&r), (OVER, vec![OK, OVER]));
}

#[test]
fn global_shadow_mode_turns_the_overall_answer_but_not_statuses() {
    let h = harness(ServiceOptions { global_shadow_mode: true, ..Default::default() });
    let r = call(&h, &[&[("zero", "x")], &[("minute", "y")]]);
    assert_eq!(codes(&r), (OK, vec![OVER, OK]));
}

#[test]
fn quota_mode_rejects_only_when_every_quota_descriptor_is_over() {
    let h = harness(ServiceOptions::default());
    // quota1 allows 1, quota2 allows 2 per minute.
    assert_eq!(codes(&call(&h, &[&[("quota1", "a")], &[("quota2", "a")]])), (OK, vec![OK, OK]));
    assert_eq!(codes(&call(&h, &[&[("quota1", "a")], &[("quota2", "a")]])), (OK, vec![OVER, OK]));
    assert_eq!(codes(&call(&h, &[&[("quota1", "a")], &[("quota2", "a")]])), (OVER, vec![OVER, OVER]));
    // A regular OVER_LIMIT still rejects next to a passing quota descriptor (S18).
    assert_eq!(call(&h, &[&[("zero", "x")], &[("quota2", "b")]]).overall_code, OVER);
    // A quota descriptor alone and over rejects (S19).
    assert_eq!(call(&h, &[&[("minute", "q")], &[("quota1", "a")]]).overall_code, OVER);
}

#[test]
fn global_quota_mode_makes_unmatched_descriptors_passing_quota_ones() {
    let h = harness(ServiceOptions { global_quota_mode: true, ..Default::default() });
    let r = call(&h, &[&[("zero", "x")], &[("nothing", "x")]]);
    assert_eq!(codes(&r), (OK, vec![OVER, OK]));
    let r = call(&h, &[&[("zero", "x")], &[("one", "x")], &[("one", "x")]]);
    assert_eq!(codes(&r), (OK, vec![OVER, OK, OVER]), "one quota descriptor passed");
    let r = call(&h, &[&[("zero", "x")], &[("one", "x")]]);
    assert_eq!(codes(&r), (OVER, vec![OVER, OVER]), "S16: every quota descriptor over");
    let h = harness(ServiceOptions { global_quota_mode: true, global_shadow_mode: true, ..Default::default() });
    assert_eq!(call(&h, &[&[("zero", "x")]]).overall_code, OK);
}

#[test]
fn limit_headers_describe_the_chosen_descriptor() {
    let names = HeaderNames {
        limit: "A-Ratelimit-Limit".into(),
        remaining: "A-Ratelimit-Remaining".into(),
        reset: "A-Ratelimit-Reset".into(),
    };
    let h = harness(ServiceOptions { response_headers: Some(names), ..Default::default() });
    let r = call(&h, &[&[("minute", "x")], &[("five", "y")], &[("hello", "z")]]);
    let headers: Vec<(String, String)> =
        r.response_headers_to_add.iter().map(|h| (h.key.clone(), h.value.clone())).collect();
    assert_eq!(
        headers,
        vec![
            ("A-Ratelimit-Limit".to_string(), "5".to_string()),
            ("A-Ratelimit-Remaining".to_string(), "4".to_string()),
            ("A-Ratelimit-Reset".to_string(), "58".to_string()),
        ],
        "the smallest remaining wins"
    );
    let h = harness(ServiceOptions { response_headers: Some(HeaderNames::default()), ..Default::default() });
    call(&h, &[&[("one", "x")]]);
    let r = call(&h, &[&[("one", "x")], &[("five", "y")]]);
    assert_eq!(r.response_headers_to_add[0].key, "RateLimit-Limit");
    assert_eq!(r.response_headers_to_add[0].value, "1", "an OVER_LIMIT descriptor overrides the choice");
    assert_eq!(r.response_headers_to_add[1].value, "0");
    let r = call(&h, &[&[("hello", "x")]]);
    assert!(r.response_headers_to_add.is_empty(), "no limit, no headers");
}

#[test]
fn dynamic_metadata_echoes_the_request_and_merges_passing_rules_metadata() {
    let h = harness(ServiceOptions { dynamic_metadata: true, global_quota_mode: true, ..Default::default() });
    let mut req =
        request(vec![descriptor(&[("meta", "a")]), descriptor(&[("quota2", "b")]), descriptor(&[("quota1", "c")])]);
    req.hits_addend = 1;
    h.limiter
        .immediate()
        .unwrap()
        .decide(&RateLimitRequest { descriptors: vec![descriptor(&[("quota1", "c")])], ..req.clone() })
        .unwrap();
    let r = h.limiter.immediate().unwrap().decide(&req).unwrap();
    assert_eq!(r.overall_code, OK);
    let md = r.dynamic_metadata.unwrap();
    let json = crate::json::response_json(&RateLimitResponse { dynamic_metadata: Some(md), ..Default::default() });
    assert_eq!(
        json["dynamicMetadata"],
        serde_json::json!({
            "domain": "test-domain",
            "hitsAddend": 1,
            "descriptors": [{"entries": ["meta=a"]}, {"entries": ["quota2=b"]}, {"entries": ["quota1=c"]}],
            "metadata": {"name": "service_1", "nested": {"a": 1, "b": 2}},
        }),
        "S22/S23: first descriptor wins name; quota1 is over so its metadata is left out"
    );
}

#[test]
fn bad_requests_get_invalid_argument_naming_the_problem() {
    let h = harness(ServiceOptions::default());
    let err = |req: RateLimitRequest| h.limiter.immediate().unwrap().decide(&req).unwrap_err();
    assert_eq!(
        err(RateLimitRequest { domain: String::new(), ..request(vec![descriptor(&[("a", "b")])]) }),
        ServiceError::InvalidArgument("rate limit domain must not be empty".into())
    );
    assert_eq!(
        err(request(vec![])),
        ServiceError::InvalidArgument("rate limit descriptor list must not be empty".into())
    );
    let mut overridden = descriptor(&[]);
    overridden.limit = Some(RateLimitOverride { requests_per_unit: 1, unit: 1 });
    assert_eq!(
        err(request(vec![descriptor(&[("a", "b")]), overridden])),
        ServiceError::InvalidArgument("descriptor 1 has a limit override but no entries".into())
    );
    assert_eq!(
        err(request(vec![descriptor(&[("a", "b"), ("", "c")])])),
        ServiceError::InvalidArgument("descriptor 0 entry 1 has an empty key".into())
    );
    for (unit, shown) in [(0, "UNKNOWN (0)"), (42, "42 (undefined)"), (-3, "-3 (undefined)")] {
        let mut d = descriptor(&[("a", "b")]);
        d.limit = Some(RateLimitOverride { requests_per_unit: 1, unit });
        let e = err(request(vec![d]));
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(e.message().contains(shown), "{e}");
    }
    // The service still answers afterwards.
    assert_eq!(call(&h, &[&[("minute", "a")]]).overall_code, OK);
}

#[test]
fn requests_over_the_caps_are_rejected_naming_the_cap() {
    let caps = RequestCaps { max_descriptors: 2, max_entries: 2, max_entry_bytes: 11 };
    let h = harness(ServiceOptions { caps, ..Default::default() });
    let e = h.limiter.immediate().unwrap().decide(&request(vec![descriptor(&[("a", "b")]); 3])).unwrap_err();
    assert_eq!(e.message(), "request has 3 descriptors, more than MAX_DESCRIPTORS (2)");
    let e = h
        .limiter
        .immediate()
        .unwrap()
        .decide(&request(vec![descriptor(&[("a", "b"), ("c", "d"), ("e", "f")])]))
        .unwrap_err();
    assert_eq!(e.message(), "descriptor 0 has 3 entries, more than MAX_ENTRIES (2)");
    let e = h.limiter.immediate().unwrap().decide(&request(vec![descriptor(&[("a", "123456789012")])])).unwrap_err();
    assert_eq!(e.message(), "descriptor 0 entry 0 value is 12 bytes, more than MAX_ENTRY_BYTES (11)");
    let e = h
        .limiter
        .immediate()
        .unwrap()
        .decide(&RateLimitRequest { domain: "d".repeat(12), ..request(vec![descriptor(&[("a", "b")])]) });
    assert_eq!(e.unwrap_err().message(), "rate limit domain is 12 bytes, more than MAX_ENTRY_BYTES (11)");
}

#[test]
fn no_config_loaded_is_unavailable() {
    let registry = Arc::new(LimitRegistry::new());
    let limiter = RateLimiter::new(
        SharedConfig::default(),
        Store::Memory(Arc::new(MemoryStore::new(registry, 10))),
        Clock::System,
        ServiceOptions::default(),
    );
    let e = limiter.immediate().unwrap().decide(&request(vec![descriptor(&[("a", "b")])])).unwrap_err();
    assert_eq!(e, ServiceError::Unavailable("no rate limit configuration loaded".into()));
    assert_eq!(tonic::Status::from(e).code(), tonic::Code::Unavailable);
}
