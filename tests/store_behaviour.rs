//! One behaviour suite, run against every backend: each scenario below is written once
//! and runs as `memory::<name>` and `redis::<name>` (a real `redis-server` per test).
//! The clock is fake, so windows pass without sleeping, in memory and in Redis alike.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use common::redis_server::RedisServer;
use common::{OK, OVER, TestServer, request, request_with_hits};
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::RateLimitOverride;
use envoy_types::pb::envoy::service::ratelimit::v3::RateLimitResponse;

/// A Unix time on a minute boundary (and an hour boundary: 1_699_999_200 + 3_600 * k).
const T0: u64 = 1_700_002_800;

const RULES: &str = r#"
domain: suite
descriptors:
  - key: fixed
    rate_limit: {unit: minute, requests_per_unit: 3}
  - key: wide
    rate_limit: {unit: minute, requests_per_unit: 10}
  - key: sliding
    rate_limit: {unit: minute, requests_per_unit: 10, algorithm: sliding_window}
  - key: token
    rate_limit: {unit: second, requests_per_unit: 10, algorithm: token_bucket, burst: 20}
  - key: leaky
    rate_limit: {unit: second, requests_per_unit: 2, algorithm: leaky_bucket}
  - key: bucket2
    rate_limit: {unit: minute, requests_per_unit: 2, algorithm: token_bucket}
  - key: layered
    limit: "5/second;8/minute"
  - key: busy
    rate_limit: {unit: hour, requests_per_unit: 100}
  - key: busy_bucket
    rate_limit: {unit: hour, requests_per_unit: 100, algorithm: token_bucket}
  - key: busy_sliding
    rate_limit: {unit: hour, requests_per_unit: 100, algorithm: sliding_window}
  - key: path
    value: /files/*
    share_threshold: true
    rate_limit: {unit: minute, requests_per_unit: 2}
  - key: named
    rate_limits:
      - {requests_per_unit: 2, unit: minute, name: per_minute}
      - {requests_per_unit: 5, unit: hour, name: per_hour}
  - key: replacer
    rate_limit: {unit: minute, requests_per_unit: 100, replaces: [{name: per_minute}]}
"#;

const DEFAULTS: &str = r#"
domain: defaults
default_limit: "3/minute"
descriptors:
  - key: search
    limit: "10/second"
    inherit_default: true
  - key: open
"#;

enum Kind {
    Memory,
    Redis,
    /// Redis in leased mode (`REDIS_LEASING=true`): one replica, so every unit it
    /// reserves is spent or given back and decisions match per-request mode's.
    Leased,
}

struct Backend {
    server: TestServer,
    _redis: Option<RedisServer>,
}

impl Kind {
    async fn start(&self, settings: &[(&str, &str)]) -> Backend {
        let rules = [("suite.yaml", RULES), ("defaults.yaml", DEFAULTS)];
        match self {
            Kind::Memory => Backend { server: common::start(&rules, settings, T0).await, _redis: None },
            Kind::Redis | Kind::Leased => {
                let redis = RedisServer::start(&[]);
                let url = redis.address();
                let mut all = vec![("BACKEND_TYPE", "redis"), ("REDIS_URL", url.as_str()), ("REDIS_TIMEOUT", "2s")];
                if matches!(self, Kind::Leased) {
                    all.push(("REDIS_LEASING", "true"));
                }
                all.extend_from_slice(settings);
                let server = common::start(&rules, &all, T0).await;
                server.wait_redis_up().await;
                Backend { server, _redis: Some(redis) }
            }
        }
    }
}

impl Backend {
    async fn ask_in(&self, domain: &str, descriptors: &[&[(&str, &str)]]) -> RateLimitResponse {
        self.server.shared.limiter.should_rate_limit(&request(domain, descriptors)).await.unwrap()
    }

    async fn ask(&self, descriptors: &[&[(&str, &str)]]) -> RateLimitResponse {
        self.ask_in("suite", descriptors).await
    }

    /// One descriptor with its own `hits_addend`.
    async fn ask_hits(&self, entries: &[(&str, &str)], hits: u64) -> RateLimitResponse {
        self.server.shared.limiter.should_rate_limit(&request_with_hits("suite", entries, hits)).await.unwrap()
    }

    fn advance(&self, by: Duration) {
        self.server.clock.advance(by);
    }
}

fn remaining(r: &RateLimitResponse) -> Vec<u32> {
    r.statuses.iter().map(|s| s.limit_remaining).collect()
}

fn reset_ms(r: &RateLimitResponse, i: usize) -> u64 {
    let d = r.statuses[i].duration_until_reset.as_ref().expect("a reset duration");
    d.seconds as u64 * 1000 + d.nanos as u64 / 1_000_000
}

async fn fixed_window_counts_with_the_reference_arithmetic(kind: Kind) {
    let b = kind.start(&[]).await;
    b.advance(Duration::from_secs(15));
    for expected in [2, 1, 0] {
        let r = b.ask(&[&[("fixed", "a")]]).await;
        assert_eq!((r.overall_code, remaining(&r)), (OK, vec![expected]));
        assert_eq!(reset_ms(&r, 0), 45_000, "whole seconds to the window's end");
    }
    let r = b.ask(&[&[("fixed", "a")]]).await;
    assert_eq!((r.overall_code, remaining(&r)), (OVER, vec![0]));
    assert_eq!(r.statuses[0].current_limit.as_ref().unwrap().requests_per_unit, 3);
    assert_eq!(b.ask(&[&[("fixed", "b")]]).await.overall_code, OK, "another value, another counter");
    b.advance(Duration::from_secs(44));
    assert_eq!(b.ask(&[&[("fixed", "a")]]).await.overall_code, OVER, "same window");
    b.advance(Duration::from_secs(1));
    let r = b.ask(&[&[("fixed", "a")]]).await;
    assert_eq!((r.overall_code, remaining(&r)), (OK, vec![2]), "a new window");
}

async fn hits_addend_counts_and_zero_only_checks(kind: Kind) {
    let b = kind.start(&[]).await;
    assert_eq!(remaining(&b.ask_hits(&[("fixed", "h")], 2).await), vec![1]);
    assert_eq!(remaining(&b.ask_hits(&[("fixed", "h")], 0).await), vec![1], "0 checks");
    assert_eq!(remaining(&b.ask_hits(&[("fixed", "h")], 0).await), vec![1]);
    let r = b.ask_hits(&[("fixed", "h")], 2).await;
    assert_eq!((r.overall_code, remaining(&r)), (OVER, vec![0]), "4 > 3");
    // The fixed window counts rejected hits, as the reference's INCRBY does.
    let r = b.ask_hits(&[("fixed", "h")], 0).await;
    assert_eq!(r.overall_code, OVER, "the count is 4 now");
    let mut req = request("suite", &[&[("fixed", "r")]]);
    req.hits_addend = 3;
    let r = b.server.shared.limiter.should_rate_limit(&req).await.unwrap();
    assert_eq!((r.overall_code, remaining(&r)), (OK, vec![0]), "the request's hits_addend");
}

async fn statuses_follow_the_request_order(kind: Kind) {
    let b = kind.start(&[]).await;
    let r = b.ask(&[&[("wide", "x")], &[("nothing", "matches")], &[("fixed", "x")], &[("token", "x")]]).await;
    assert_eq!(r.overall_code, OK);
    assert_eq!(remaining(&r), vec![9, 0, 2, 19]);
    assert!(r.statuses[1].current_limit.is_none());
    let limits: Vec<u32> =
        r.statuses.iter().map(|s| s.current_limit.as_ref().map_or(0, |l| l.requests_per_unit)).collect();
    assert_eq!(limits, vec![10, 0, 3, 10]);
}

async fn sliding_window_weighs_the_previous_window(kind: Kind) {
    let b = kind.start(&[]).await;
    for i in 0..10 {
        let r = b.ask(&[&[("sliding", "s")]]).await;
        assert_eq!((r.overall_code, remaining(&r)), (OK, vec![9 - i]));
    }
    let r = b.ask(&[&[("sliding", "s")]]).await;
    assert_eq!(r.overall_code, OVER);
    // Rejected hits do not count, so a retry after the wait succeeds.
    // The moment the next window starts, the full previous window weighs just under 10.
    assert_eq!(reset_ms(&r, 0), 60_001);
    b.advance(Duration::from_secs(90));
    // Half the previous window still weighs: 10 * 30/60 = 5 of 10 are used.
    for i in 0..5 {
        let r = b.ask(&[&[("sliding", "s")]]).await;
        assert_eq!((r.overall_code, remaining(&r)), (OK, vec![4 - i]), "hit {i}");
    }
    assert_eq!(b.ask(&[&[("sliding", "s")]]).await.overall_code, OVER);
    b.advance(Duration::from_secs(6));
    assert_eq!(b.ask(&[&[("sliding", "s")]]).await.overall_code, OK, "the previous window has decayed by one");
}

async fn token_bucket_admits_its_burst_then_refills_at_the_rate(kind: Kind) {
    let b = kind.start(&[]).await;
    for i in 0..20 {
        let r = b.ask(&[&[("token", "t")]]).await;
        assert_eq!((r.overall_code, remaining(&r)), (OK, vec![19 - i]), "hit {i}");
    }
    let r = b.ask(&[&[("token", "t")]]).await;
    assert_eq!(r.overall_code, OVER);
    assert_eq!(reset_ms(&r, 0), 100, "one token every 100 ms");
    b.advance(Duration::from_millis(100));
    assert_eq!(b.ask(&[&[("token", "t")]]).await.overall_code, OK);
    assert_eq!(b.ask(&[&[("token", "t")]]).await.overall_code, OVER);
    b.advance(Duration::from_secs(2));
    let r = b.ask(&[&[("token", "t")]]).await;
    assert_eq!(remaining(&r), vec![19], "full again after two seconds");
    let r = b.ask_hits(&[("token", "big")], 21).await;
    assert_eq!(r.overall_code, OVER, "more than the bucket holds never passes");
    assert!(reset_ms(&r, 0) >= 1_000, "and says so with at least a window");
}

async fn leaky_bucket_spaces_requests_evenly(kind: Kind) {
    let b = kind.start(&[]).await;
    assert_eq!(b.ask(&[&[("leaky", "l")]]).await.overall_code, OK);
    let r = b.ask(&[&[("leaky", "l")]]).await;
    assert_eq!(r.overall_code, OVER);
    assert_eq!(reset_ms(&r, 0), 500);
    b.advance(Duration::from_millis(499));
    assert_eq!(b.ask(&[&[("leaky", "l")]]).await.overall_code, OVER);
    b.advance(Duration::from_millis(1));
    assert_eq!(b.ask(&[&[("leaky", "l")]]).await.overall_code, OK);
}

async fn several_limits_on_one_descriptor_report_the_tightest(kind: Kind) {
    let b = kind.start(&[]).await;
    for i in 0..5u32 {
        let r = b.ask(&[&[("layered", "x")]]).await;
        assert_eq!((r.overall_code, remaining(&r)), (OK, vec![4 - i]), "per second is tighter");
    }
    let r = b.ask(&[&[("layered", "x")]]).await;
    assert_eq!(r.overall_code, OVER);
    assert_eq!(r.statuses[0].current_limit.as_ref().unwrap().requests_per_unit, 5);
    b.advance(Duration::from_secs(1));
    // 6 hits counted per minute (fixed windows count rejected hits too): 2 left.
    for expected in [1, 0] {
        let r = b.ask(&[&[("layered", "x")]]).await;
        assert_eq!((r.overall_code, remaining(&r)), (OK, vec![expected]));
        assert_eq!(r.statuses[0].current_limit.as_ref().unwrap().requests_per_unit, 8);
    }
    let r = b.ask(&[&[("layered", "x")]]).await;
    assert_eq!(r.overall_code, OVER);
    assert_eq!(r.statuses[0].current_limit.as_ref().unwrap().requests_per_unit, 8, "now the minute rejects");
}

async fn domain_defaults_count_per_descriptor_and_are_inherited(kind: Kind) {
    let b = kind.start(&[]).await;
    for expected in [2, 1, 0] {
        let r = b.ask_in("defaults", &[&[("anything", "a")]]).await;
        assert_eq!((r.overall_code, remaining(&r)), (OK, vec![expected]));
    }
    assert_eq!(b.ask_in("defaults", &[&[("anything", "a")]]).await.overall_code, OVER);
    assert_eq!(b.ask_in("defaults", &[&[("anything", "b")]]).await.overall_code, OK, "per value");
    assert_eq!(b.ask_in("defaults", &[&[("open", "x")]]).await.overall_code, OK);
    for _ in 0..5 {
        assert_eq!(b.ask_in("defaults", &[&[("open", "x")]]).await.overall_code, OK, "a whitelist");
    }
    for _ in 0..3 {
        assert_eq!(b.ask_in("defaults", &[&[("search", "q")]]).await.overall_code, OK);
    }
    let r = b.ask_in("defaults", &[&[("search", "q")]]).await;
    assert_eq!(r.overall_code, OVER, "the inherited 3/minute");
    assert_eq!(r.statuses[0].current_limit.as_ref().unwrap().requests_per_unit, 3);
}

async fn share_threshold_values_share_one_counter(kind: Kind) {
    let b = kind.start(&[]).await;
    assert_eq!(b.ask(&[&[("path", "/files/a")]]).await.overall_code, OK);
    assert_eq!(b.ask(&[&[("path", "/files/b")]]).await.overall_code, OK);
    assert_eq!(b.ask(&[&[("path", "/files/c")]]).await.overall_code, OVER);
}

async fn a_request_override_counts_per_entries_and_unit(kind: Kind) {
    let b = kind.start(&[]).await;
    let mut req = request("suite", &[&[("custom", "o")]]);
    req.descriptors[0].limit = Some(RateLimitOverride { requests_per_unit: 2, unit: 2 });
    let limiter = &b.server.shared.limiter;
    assert_eq!(remaining(&limiter.should_rate_limit(&req).await.unwrap()), vec![1]);
    assert_eq!(remaining(&limiter.should_rate_limit(&req).await.unwrap()), vec![0]);
    assert_eq!(limiter.should_rate_limit(&req).await.unwrap().overall_code, OVER);
    req.descriptors[0].limit = Some(RateLimitOverride { requests_per_unit: 5, unit: 2 });
    assert_eq!(remaining(&limiter.should_rate_limit(&req).await.unwrap()), vec![1], "same counter, new limit");
}

async fn all_or_nothing_takes_back_a_rejected_requests_hits(kind: Kind) {
    let b = kind.start(&[("CONSUME", "all_or_nothing")]).await;
    for (wide, narrow) in [("wide", "fixed"), ("sliding", "bucket2"), ("token", "bucket2")] {
        let value = format!("{wide}-{narrow}");
        let pair: [&[(&str, &str)]; 2] = [&[(wide, value.as_str())], &[(narrow, value.as_str())]];
        let limit = if narrow == "fixed" { 3 } else { 2 };
        for _ in 0..limit {
            assert_eq!(b.ask(&pair).await.overall_code, OK);
        }
        let before = remaining(&b.ask_hits(&[(wide, value.as_str())], 0).await)[0];
        for _ in 0..3 {
            let r = b.ask(&pair).await;
            assert_eq!(r.overall_code, OVER, "{narrow} is exhausted");
            assert_eq!(r.statuses[0].code, OK);
            assert_eq!(r.statuses[0].limit_remaining, before, "{wide} reports what it has after the rollback");
        }
        let after = remaining(&b.ask_hits(&[(wide, value.as_str())], 0).await)[0];
        assert_eq!(after, before, "{wide} kept none of the rejected requests' hits");
    }
}

async fn concurrent_requests_admit_exactly_the_limit(kind: Kind) {
    let b = Arc::new(kind.start(&[]).await);
    for key in ["busy", "busy_bucket", "busy_sliding"] {
        let admitted = Arc::new(AtomicU64::new(0));
        let tasks: Vec<_> = (0..8)
            .map(|_| {
                let (b, admitted) = (b.clone(), admitted.clone());
                tokio::spawn(async move {
                    for _ in 0..40 {
                        if b.ask(&[&[(key, "c")]]).await.overall_code == OK {
                            admitted.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(admitted.load(Ordering::Relaxed), 100, "{key}: 320 tries, a limit of 100");
    }
}

async fn counters_of_different_limits_never_share_a_key(kind: Kind) {
    let b = kind.start(&[]).await;
    // The same entries under two rules' limits, and a default: all separate.
    assert_eq!(remaining(&b.ask(&[&[("fixed", "same")], &[("wide", "same")]]).await), vec![2, 9]);
    assert_eq!(remaining(&b.ask(&[&[("fixed", "same")], &[("wide", "same")]]).await), vec![1, 8]);
    assert_eq!(remaining(&b.ask_in("defaults", &[&[("fixed", "same")]]).await), vec![2]);
    assert_eq!(remaining(&b.ask(&[&[("layered", "same")]]).await), vec![4]);
    assert_eq!(remaining(&b.ask(&[&[("layered", "same")]]).await), vec![3]);
}

/// `is_negative_hits`: hits given back to a counter, for every algorithm.
async fn negative_hits_give_quota_back(kind: Kind) {
    let b = kind.start(&[]).await;
    let give_back = |entries: &'static [(&'static str, &'static str)], hits: u64| {
        let mut req = request("suite", &[entries]);
        req.descriptors[0].hits_addend = common::hits(hits);
        req.descriptors[0].is_negative_hits = true;
        req
    };
    for (key, limit) in [("fixed", 3), ("sliding", 10), ("token", 20), ("bucket2", 2)] {
        let entries: &'static [(&'static str, &'static str)] = match key {
            "fixed" => &[("fixed", "neg")],
            "sliding" => &[("sliding", "neg")],
            "token" => &[("token", "neg")],
            _ => &[("bucket2", "neg")],
        };
        for _ in 0..limit {
            assert_eq!(b.ask(&[entries]).await.overall_code, OK, "{key}");
        }
        assert_eq!(b.ask(&[entries]).await.overall_code, OVER, "{key} is full");
        // The fixed window counted the rejected hit too: give back two to reopen one.
        let back = if key == "fixed" { 2 } else { 1 };
        let r = b.server.shared.limiter.should_rate_limit(&give_back(entries, back)).await.unwrap();
        assert_eq!((r.overall_code, remaining(&r)), (OK, vec![1]), "{key}: giving back is a check, not a hit");
        assert_eq!(remaining(&b.ask(&[entries]).await), vec![0], "{key}: the hit given back is admitted");
        assert_eq!(b.ask(&[entries]).await.overall_code, OVER, "{key}: and only that one");
    }
    // Never below empty: giving back more than was counted leaves a fresh counter.
    let r = b.server.shared.limiter.should_rate_limit(&give_back(&[("wide", "neg")], 50)).await.unwrap();
    assert_eq!(remaining(&r), vec![10]);
    assert_eq!(remaining(&b.ask(&[&[("wide", "neg")]]).await), vec![9]);
}

/// A `rate_limits` item's `name`: reported when that limit decides, and replaceable.
async fn limit_names_are_reported_and_replaceable(kind: Kind) {
    let b = kind.start(&[]).await;
    let name = |r: &RateLimitResponse, i: usize| r.statuses[i].current_limit.as_ref().unwrap().name.clone();
    let r = b.ask(&[&[("named", "n")]]).await;
    assert_eq!((remaining(&r), name(&r, 0)), (vec![1], "per_minute".to_string()), "the tightest decides");
    b.ask(&[&[("named", "n")]]).await;
    let r = b.ask(&[&[("named", "n")]]).await;
    assert_eq!((r.overall_code, name(&r, 0)), (OVER, "per_minute".to_string()));
    // With the replacer in the request, only the hourly limit counts the named key.
    b.advance(Duration::from_secs(60));
    let r = b.ask(&[&[("named", "m")], &[("replacer", "x")]]).await;
    assert_eq!((remaining(&r)[0], name(&r, 0)), (4, "per_hour".to_string()));
    for _ in 0..2 {
        b.ask(&[&[("named", "m")], &[("replacer", "x")]]).await;
    }
    assert_eq!(b.ask(&[&[("named", "m")], &[("replacer", "x")]]).await.statuses[0].code, OK, "per_minute is replaced");
}

/// A descriptor without entries matches no rule, as in the reference; the others count.
async fn an_empty_descriptor_is_ok_with_no_limit(kind: Kind) {
    let b = kind.start(&[]).await;
    for expected in [2, 1, 0] {
        let r = b.ask(&[&[], &[("fixed", "e")]]).await;
        assert_eq!((r.overall_code, remaining(&r)), (OK, vec![0, expected]));
        assert!(r.statuses[0].current_limit.is_none());
    }
    assert_eq!(b.ask(&[&[], &[("fixed", "e")]]).await.overall_code, OVER);
    assert_eq!(b.ask_in("defaults", &[&[]]).await.statuses[0].current_limit, None, "no domain default either");
    let mut req = request("suite", &[&[]]);
    req.descriptors[0].limit = Some(RateLimitOverride { requests_per_unit: 1, unit: 1 });
    let err = b.server.shared.limiter.should_rate_limit(&req).await.unwrap_err();
    assert_eq!(err.message(), "descriptor 0 has a limit override but no entries");
}

macro_rules! suite {
    ($($scenario:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() {
                    super::$scenario(super::Kind::Memory).await
                }
            )*
        }
        mod redis {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() {
                    super::$scenario(super::Kind::Redis).await
                }
            )*
        }
        mod leased {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() {
                    super::$scenario(super::Kind::Leased).await
                }
            )*
        }
    };
}

suite!(
    fixed_window_counts_with_the_reference_arithmetic,
    hits_addend_counts_and_zero_only_checks,
    statuses_follow_the_request_order,
    sliding_window_weighs_the_previous_window,
    token_bucket_admits_its_burst_then_refills_at_the_rate,
    leaky_bucket_spaces_requests_evenly,
    several_limits_on_one_descriptor_report_the_tightest,
    domain_defaults_count_per_descriptor_and_are_inherited,
    share_threshold_values_share_one_counter,
    a_request_override_counts_per_entries_and_unit,
    all_or_nothing_takes_back_a_rejected_requests_hits,
    concurrent_requests_admit_exactly_the_limit,
    counters_of_different_limits_never_share_a_key,
    negative_hits_give_quota_back,
    limit_names_are_reported_and_replaceable,
    an_empty_descriptor_is_ok_with_no_limit,
);
