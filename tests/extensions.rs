//! The rule language's extensions end to end, in-process over gRPC (and `/json`):
//! algorithms, limit strings, several limits per descriptor, `unit_multiplier`, custom
//! responses, domain defaults, `CONSUME=all_or_nothing`.

mod common;

use std::time::Duration;

use common::{OK, OVER, http, request, start};
use envoy_types::pb::envoy::service::ratelimit::v3::RateLimitResponse;

const RULES: &str = r#"
domain: api
default_limit: "3/minute"
descriptors:
  - key: remote_address
    rate_limit: {requests_per_unit: 4, unit: minute, algorithm: sliding_window}
  - key: api_key
    limit: "2/second;3 per minute"
    response:
      body: "You have exceeded your rate-limit"
      headers: {content-type: text/plain, retry-after: "60"}
  - key: tenant
    rate_limits:
      - {requests_per_unit: 10, unit: second, algorithm: token_bucket, burst: 3}
      - {requests_per_unit: 1000, unit: day}
  - key: export
    rate_limit: {requests_per_unit: 2, unit: second, unit_multiplier: 3}
  - key: queue
    rate_limit: {requests_per_unit: 2, unit: second, algorithm: leaky_bucket}
  - key: path
    value: /ping
    rate_limit: {unlimited: true}
  - key: path
    value: /burst
    limit: 1/second
    inherit_default: true
  - key: shadowed
    shadow_mode: true
    limit: 1/minute
    response: {body: "never sent"}
"#;

/// 2022-01-01T00:00:00Z, a minute boundary.
const T0: u64 = 1_640_995_200;

async fn call(server: &common::TestServer, descriptors: &[&[(&str, &str)]]) -> RateLimitResponse {
    server.client().await.should_rate_limit(request("api", descriptors)).await.unwrap().into_inner()
}

fn limit_of(r: &RateLimitResponse, i: usize) -> (u32, i32) {
    let l = r.statuses[i].current_limit.as_ref().expect("a limit");
    (l.requests_per_unit, l.unit)
}

#[tokio::test]
async fn a_limit_string_sets_several_limits_and_reports_the_one_that_rejected() {
    let server = start(&[("api.yaml", RULES)], &[], T0).await;
    let key: &[(&str, &str)] = &[("api_key", "k1")];
    let r = call(&server, &[key]).await;
    assert_eq!((r.overall_code, limit_of(&r, 0), r.statuses[0].limit_remaining), (OK, (2, 1), 1), "least remaining");
    call(&server, &[key]).await;
    let r = call(&server, &[key]).await;
    assert_eq!((r.overall_code, limit_of(&r, 0)), (OVER, (2, 1)), "the per-second limit rejected");
    server.clock.advance(Duration::from_secs(1));
    // The rejected hit still counted on the minute limit (CONSUME=always): 3 of 3 used.
    let r = call(&server, &[key]).await;
    assert_eq!((r.overall_code, limit_of(&r, 0)), (OVER, (3, 2)), "now the per-minute limit rejects");
    server.stop().await;
}

#[tokio::test]
async fn a_rejecting_rule_sends_its_custom_body_and_headers() {
    let server = start(&[("api.yaml", RULES)], &[("LIMIT_RESPONSE_HEADERS_ENABLED", "true")], T0).await;
    let key: &[(&str, &str)] = &[("api_key", "k2")];
    let r = call(&server, &[key]).await;
    assert!(r.raw_body.is_empty(), "no body while OK");
    call(&server, &[key]).await;
    let r = call(&server, &[key]).await;
    assert_eq!(r.overall_code, OVER);
    assert_eq!(r.raw_body, b"You have exceeded your rate-limit");
    let headers: Vec<(&str, &str)> =
        r.response_headers_to_add.iter().map(|h| (h.key.as_str(), h.value.as_str())).collect();
    for expected in [("content-type", "text/plain"), ("retry-after", "60"), ("RateLimit-Limit", "2")] {
        assert!(headers.contains(&expected), "{expected:?} in {headers:?}");
    }
    // A shadow-mode rule never sends its body.
    call(&server, &[&[("shadowed", "x")]]).await;
    let r = call(&server, &[&[("shadowed", "x")]]).await;
    assert_eq!(r.overall_code, OK);
    assert!(r.raw_body.is_empty());
    // /json carries the body too.
    let body = r#"{"domain":"api","descriptors":[{"entries":[{"key":"api_key","value":"k2"}]}]}"#;
    let (status, text) = http(server.http, "POST", "/json", body).await;
    assert_eq!(status, 429);
    assert!(text.contains(r#""rawBody":"WW91IGhhdmUgZXhjZWVkZWQgeW91ciByYXRlLWxpbWl0""#), "{text}");
    server.stop().await;
}

#[tokio::test]
async fn the_sliding_window_weighs_the_previous_window() {
    let server = start(&[("api.yaml", RULES)], &[], T0 + 30).await;
    let ip: &[(&str, &str)] = &[("remote_address", "10.0.0.1")];
    for _ in 0..4 {
        assert_eq!(call(&server, &[ip]).await.overall_code, OK);
    }
    let r = call(&server, &[ip]).await;
    assert_eq!(r.overall_code, OVER);
    // Rejected until the previous window's 4 weigh less than 4 (counts are floored): just
    // after the next minute starts, reported in whole milliseconds, rounded up.
    let reset = r.statuses[0].duration_until_reset.unwrap();
    assert_eq!((reset.seconds, reset.nanos), (30, 1_000_000));
    server.clock.advance(Duration::from_secs(30));
    assert_eq!(call(&server, &[ip]).await.overall_code, OVER, "the previous window still weighs 4");
    server.clock.advance(Duration::from_millis(1));
    assert_eq!(call(&server, &[ip]).await.overall_code, OK, "it weighs 3.9999: one passes");
    assert_eq!(call(&server, &[ip]).await.overall_code, OVER, "a fixed window would have let 4 through here");
    server.clock.advance(Duration::from_secs(30));
    let r = call(&server, &[ip]).await;
    // Just past half way the previous 4 weigh 1.99998, floored to 1; with the 1 counted
    // and this one, 1 is left.
    assert_eq!((r.overall_code, r.statuses[0].limit_remaining), (OK, 1));
    server.stop().await;
}

#[tokio::test]
async fn token_and_leaky_buckets_answer_with_millisecond_resets() {
    let server = start(&[("api.yaml", RULES)], &[], T0).await;
    let tenant: &[(&str, &str)] = &[("tenant", "t1")];
    for remaining in [2, 1, 0] {
        let r = call(&server, &[tenant]).await;
        assert_eq!((r.overall_code, r.statuses[0].limit_remaining), (OK, remaining));
    }
    let r = call(&server, &[tenant]).await;
    assert_eq!((r.overall_code, limit_of(&r, 0)), (OVER, (10, 1)));
    assert_eq!(r.statuses[0].duration_until_reset.unwrap().nanos, 100_000_000, "one token in 100 ms");
    server.clock.advance(Duration::from_millis(100));
    assert_eq!(call(&server, &[tenant]).await.overall_code, OK);

    let queue: &[(&str, &str)] = &[("queue", "q1")];
    assert_eq!(call(&server, &[queue]).await.overall_code, OK);
    let r = call(&server, &[queue]).await;
    assert_eq!(r.overall_code, OVER, "no burst: spaced 500 ms apart");
    assert_eq!(r.statuses[0].duration_until_reset.unwrap().nanos, 500_000_000);
    server.stop().await;
}

#[tokio::test]
async fn a_unit_multiplier_reports_the_base_unit_and_the_real_window() {
    // T0 + 4: the 3-second window [T0 + 3, T0 + 6) has 2 s left.
    let server = start(&[("api.yaml", RULES)], &[], T0 + 4).await;
    let export: &[(&str, &str)] = &[("export", "e")];
    let r = call(&server, &[export]).await;
    assert_eq!(limit_of(&r, 0), (2, 1), "2 per SECOND: the base unit");
    assert_eq!(r.statuses[0].duration_until_reset.unwrap().seconds, 2);
    call(&server, &[export]).await;
    assert_eq!(call(&server, &[export]).await.overall_code, OVER);
    server.clock.advance(Duration::from_secs(2));
    assert_eq!(call(&server, &[export]).await.overall_code, OK);
    server.stop().await;
}

#[tokio::test]
async fn domain_defaults_apply_per_descriptor_to_unmatched_and_inheriting_rules() {
    let server = start(&[("api.yaml", RULES)], &[], T0).await;
    for i in 0..3 {
        let r = call(&server, &[&[("user", "alice")]]).await;
        assert_eq!((r.overall_code, limit_of(&r, 0), r.statuses[0].limit_remaining), (OK, (3, 2), 2 - i));
    }
    assert_eq!(call(&server, &[&[("user", "alice")]]).await.overall_code, OVER);
    assert_eq!(call(&server, &[&[("user", "bob")]]).await.overall_code, OK, "per distinct descriptor");
    assert_eq!(call(&server, &[&[("user", "bob"), ("plan", "x")]]).await.overall_code, OK);
    for _ in 0..5 {
        let r = call(&server, &[&[("path", "/ping")]]).await;
        assert_eq!((r.overall_code, r.statuses[0].limit_remaining), (OK, u32::MAX), "unlimited is exempt");
    }
    // /burst: its own 1/second and the default 3/minute. The rejected second call still
    // counts on the default (CONSUME=always), so the default is used up by the third.
    let burst: &[(&str, &str)] = &[("path", "/burst")];
    assert_eq!(call(&server, &[burst]).await.overall_code, OK);
    let r = call(&server, &[burst]).await;
    assert_eq!((r.overall_code, limit_of(&r, 0)), (OVER, (1, 1)), "its own limit rejects");
    server.clock.advance(Duration::from_secs(1));
    let r = call(&server, &[burst]).await;
    assert_eq!((r.overall_code, limit_of(&r, 0), r.statuses[0].limit_remaining), (OK, (1, 1), 0));
    server.clock.advance(Duration::from_secs(1));
    let r = call(&server, &[burst]).await;
    assert_eq!((r.overall_code, limit_of(&r, 0)), (OVER, (3, 2)), "the inherited default rejects");
    server.stop().await;
}

#[tokio::test]
async fn all_or_nothing_leaves_the_passing_descriptor_as_it_was() {
    let server = start(&[("api.yaml", RULES)], &[("CONSUME", "all_or_nothing")], T0).await;
    let passing: &[(&str, &str)] = &[("remote_address", "10.9.9.9")];
    let rejecting: &[(&str, &str)] = &[("export", "x")];
    call(&server, &[rejecting]).await;
    call(&server, &[rejecting]).await;
    let r = call(&server, &[passing, rejecting]).await;
    assert_eq!((r.overall_code, r.statuses[0].code, r.statuses[1].code), (OVER, OK, OVER));
    assert_eq!(r.statuses[0].limit_remaining, 4, "remaining after the rollback");
    for _ in 0..3 {
        call(&server, &[passing, rejecting]).await;
    }
    // None of those four rejected requests counted on the passing descriptor.
    for remaining in [3, 2, 1, 0] {
        let r = call(&server, &[passing]).await;
        assert_eq!((r.overall_code, r.statuses[0].limit_remaining), (OK, remaining));
    }
    server.stop().await;
}

#[tokio::test]
async fn always_counts_a_rejected_request_on_every_limit_like_the_reference() {
    let server = start(&[("api.yaml", RULES)], &[], T0).await;
    let passing: &[(&str, &str)] = &[("remote_address", "10.9.9.9")];
    let rejecting: &[(&str, &str)] = &[("export", "x")];
    call(&server, &[rejecting]).await;
    call(&server, &[rejecting]).await;
    let r = call(&server, &[passing, rejecting]).await;
    assert_eq!((r.overall_code, r.statuses[0].limit_remaining), (OVER, 3));
    server.stop().await;
}

#[tokio::test]
async fn the_default_algorithm_setting_applies_where_rules_name_none() {
    let rules = "domain: d\ndescriptors:\n  - key: k\n    rate_limit: {unit: second, requests_per_unit: 2}\n";
    let server = start(&[("d.yaml", rules)], &[("DEFAULT_ALGORITHM", "leaky_bucket")], T0).await;
    let mut client = server.client().await;
    let r = client.should_rate_limit(request("d", &[&[("k", "v")]])).await.unwrap().into_inner();
    assert_eq!(r.overall_code, OK);
    let r = client.should_rate_limit(request("d", &[&[("k", "v")]])).await.unwrap().into_inner();
    assert_eq!(r.overall_code, OVER, "a leaky bucket without burst spaces requests; a fixed window would admit 2");
    server.stop().await;
}
