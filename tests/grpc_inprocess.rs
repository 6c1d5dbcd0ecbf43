//! The whole service in-process: a real tonic client against the server on
//! 127.0.0.1:0, plus `/healthcheck`, `/json` and the debug port over real sockets.

mod common;

use std::time::Duration;

use common::poll::poll_until;
use common::{OK, OVER, descriptor, http, request, start};
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::RateLimitOverride;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

const RULES: &str = r#"
domain: api
descriptors:
  - key: remote_address
    rate_limit: {unit: minute, requests_per_unit: 3}
  - key: path
    value: /admin
    rate_limit: {unit: second, requests_per_unit: 0, name: admin_blocked}
  - key: path
    value: /ping
  - key: tenant
    value: t-*
    descriptors:
      - key: plan
        rate_limit: {unit: hour, requests_per_unit: 2, name: tenant_plan}
"#;

#[tokio::test]
async fn answers_follow_the_rules_and_the_window() {
    let server = start(&[("api.yaml", RULES)], &[], 1_000_000).await;
    let client = server.client().await;
    let call = |r| {
        let mut c = client.clone();
        async move { c.should_rate_limit(r).await.unwrap().into_inner() }
    };
    for remaining in [2, 1, 0] {
        let r = call(request("api", &[&[("remote_address", "10.0.0.1")]])).await;
        assert_eq!(r.overall_code, OK);
        assert_eq!(r.statuses[0].limit_remaining, remaining);
        let limit = r.statuses[0].current_limit.as_ref().unwrap();
        assert_eq!((limit.requests_per_unit, limit.unit), (3, 2));
        // now = 1_000_000 is 40 s into its minute.
        assert_eq!(r.statuses[0].duration_until_reset.unwrap().seconds, 20);
    }
    let r = call(request("api", &[&[("remote_address", "10.0.0.1")], &[("path", "/ping")]])).await;
    assert_eq!((r.overall_code, r.statuses[0].code, r.statuses[1].code), (OVER, OVER, OK));
    assert!(r.statuses[1].current_limit.is_none());
    let r = call(request("api", &[&[("remote_address", "10.0.0.2")]])).await;
    assert_eq!(r.overall_code, OK, "another address has its own counter");

    server.clock.advance(Duration::from_secs(20));
    let r = call(request("api", &[&[("remote_address", "10.0.0.1")]])).await;
    assert_eq!((r.overall_code, r.statuses[0].limit_remaining), (OK, 2), "a new window");

    let r = call(request("api", &[&[("tenant", "t-42"), ("plan", "gold")]])).await;
    assert_eq!(r.statuses[0].current_limit.as_ref().unwrap().name, "tenant_plan");
    let r = call(request("api", &[&[("tenant", "x-42"), ("plan", "gold")]])).await;
    assert!(r.statuses[0].current_limit.is_none(), "the pattern does not match");
    let r = call(request("api", &[&[("path", "/admin")]])).await;
    assert_eq!(r.overall_code, OVER);

    let r = call(request("unknown-domain", &[&[("remote_address", "10.0.0.1")]])).await;
    assert_eq!(r.overall_code, OK);
    server.stop().await;
}

#[tokio::test]
async fn bad_requests_are_invalid_argument_and_the_service_keeps_answering() {
    let server = start(&[("api.yaml", RULES)], &[("MAX_DESCRIPTORS", "4")], 1_000_000).await;
    let mut client = server.client().await;
    let cases = vec![
        (request("", &[&[("a", "b")]]), "rate limit domain must not be empty"),
        (request("api", &[]), "rate limit descriptor list must not be empty"),
        (request("api", &[&[("", "b")]]), "descriptor 0 entry 0 has an empty key"),
        (request("api", &[&[("a", "b")] as &[_]; 5]), "request has 5 descriptors, more than MAX_DESCRIPTORS (4)"),
    ];
    for (req, message) in cases {
        let status = client.should_rate_limit(req).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert_eq!(status.message(), message);
    }
    for unit in [0, 99] {
        let mut req = request("api", &[&[("remote_address", "a")]]);
        req.descriptors[0].limit = Some(RateLimitOverride { requests_per_unit: 5, unit });
        let status = client.should_rate_limit(req).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "the reference crashes on unit {unit}");
        assert!(status.message().contains("limit override has unit"), "{}", status.message());
    }
    let mut req = request("api", &[&[("a", "b")], &[]]);
    req.descriptors[1].limit = Some(RateLimitOverride { requests_per_unit: 5, unit: 1 });
    let status = client.should_rate_limit(req).await.unwrap_err();
    assert_eq!(status.message(), "descriptor 1 has a limit override but no entries");
    // Without an override, a descriptor without entries is OK with no limit, as in the
    // reference.
    let r = client.should_rate_limit(request("api", &[&[("a", "b")], &[]])).await.unwrap().into_inner();
    assert_eq!((r.overall_code, r.statuses.len()), (OK, 2));
    let r = client.should_rate_limit(request("api", &[&[("remote_address", "z")]])).await.unwrap().into_inner();
    assert_eq!(r.overall_code, OK);
    server.stop().await;
}

#[tokio::test]
async fn overrides_and_hits_addend_work_end_to_end() {
    let server = start(&[("api.yaml", RULES)], &[], 1_000_000).await;
    let mut client = server.client().await;
    let mut req = request("api", &[&[("anything", "x")]]);
    req.descriptors[0].limit = Some(RateLimitOverride { requests_per_unit: 10, unit: 3 });
    req.hits_addend = 4;
    let r = client.should_rate_limit(req.clone()).await.unwrap().into_inner();
    assert_eq!(r.statuses[0].limit_remaining, 6);
    req.descriptors[0].hits_addend = common::hits(0);
    let r = client.should_rate_limit(req.clone()).await.unwrap().into_inner();
    assert_eq!((r.overall_code, r.statuses[0].limit_remaining), (OK, 6));
    req.descriptors[0].hits_addend = common::hits(7);
    let r = client.should_rate_limit(req).await.unwrap().into_inner();
    assert_eq!(r.overall_code, OVER);
    server.stop().await;
}

#[tokio::test]
async fn health_is_served_over_grpc_and_http() {
    let server = start(&[("api.yaml", RULES)], &[], 1_000_000).await;
    let channel =
        tonic::transport::Channel::from_shared(format!("http://{}", server.grpc)).unwrap().connect().await.unwrap();
    let mut health = HealthClient::new(channel);
    for service in [
        "",
        "ratelimit",
        "envoy.service.ratelimit.v3.RateLimitService",
        "envoy.service.rate_limit_quota.v3.RateLimitQuotaService",
    ] {
        let r = health.check(HealthCheckRequest { service: service.into() }).await.unwrap().into_inner();
        assert_eq!(r.status, 1, "SERVING for {service:?}");
    }
    assert_eq!(http(server.http, "GET", "/healthcheck", "").await, (200, "OK".to_string()));
    server.shared.health.start_draining();
    assert_eq!(http(server.http, "GET", "/healthcheck", "").await.0, 500);
    // The gRPC health service follows within a moment.
    poll_until("gRPC health reports NOT_SERVING after draining starts", Duration::from_secs(5), async || {
        let r = health.check(HealthCheckRequest { service: "ratelimit".into() }).await.unwrap().into_inner();
        r.status == 2
    })
    .await;
    server.stop().await;
}

#[tokio::test]
async fn json_endpoint_answers_like_the_grpc_service() {
    let server = start(&[("api.yaml", RULES)], &[], 1_000_000).await;
    let body = r#"{"domain":"api","descriptors":[{"entries":[{"key":"remote_address","value":"1.2.3.4"}]}]}"#;
    let (status, text) = http(server.http, "POST", "/json", body).await;
    assert_eq!(status, 200);
    assert_eq!(
        text,
        r#"{"overallCode":"OK","statuses":[{"code":"OK","currentLimit":{"requestsPerUnit":3,"unit":"MINUTE"},"limitRemaining":2,"durationUntilReset":"20s"}]}"#
    );
    let snake = r#"{"domain":"api","descriptors":[{"entries":[{"key":"path","value":"/admin"}]}],"hits_addend":1}"#;
    let (status, text) = http(server.http, "POST", "/json", snake).await;
    assert_eq!(status, 429);
    assert_eq!(
        text,
        r#"{"overallCode":"OVER_LIMIT","statuses":[{"code":"OVER_LIMIT","currentLimit":{"name":"admin_blocked","unit":"SECOND"},"durationUntilReset":"1s"}]}"#
    );
    assert_eq!(http(server.http, "POST", "/json", "").await.0, 400);
    let (status, text) = http(server.http, "POST", "/json", "}").await;
    assert_eq!(status, 400);
    assert!(text.starts_with("the request body is not valid JSON"), "{text}");
    let (status, text) = http(server.http, "POST", "/json", r#"{"domain":"","descriptors":[]}"#).await;
    assert_eq!((status, text.as_str()), (400, "rate limit domain must not be empty\n"));
    assert_eq!(http(server.http, "GET", "/nothing-here", "").await.0, 404);
    server.stop().await;
}

#[tokio::test]
async fn the_debug_port_lists_endpoints_and_prints_rlconfig() {
    let server = start(&[("api.yaml", RULES)], &[], 1_000_000).await;
    let (status, index) = http(server.debug, "GET", "/", "").await;
    assert_eq!(status, 200);
    assert!(index.contains("/rlconfig: "), "{index}");
    let (_, rlconfig) = http(server.debug, "GET", "/rlconfig", "").await;
    assert_eq!(
        rlconfig,
        "api.remote_address: unit=MINUTE requests_per_unit=3, shadow_mode: false, quota_mode: false\n\
         api.path_/admin: unit=SECOND requests_per_unit=0, shadow_mode: false, quota_mode: false\n\
         api.tenant_t-*.plan: unit=HOUR requests_per_unit=2, shadow_mode: false, quota_mode: false\n"
    );
    server.stop().await;
}

#[tokio::test]
async fn statuses_keep_request_order_across_many_descriptors() {
    let server = start(&[("api.yaml", RULES)], &[], 1_000_000).await;
    let mut client = server.client().await;
    let mut req = request("api", &[]);
    for i in 0..20 {
        req.descriptors.push(if i % 2 == 0 {
            descriptor(&[("path", "/admin")])
        } else {
            descriptor(&[("remote_address", &format!("10.1.0.{i}"))])
        });
    }
    let r = client.should_rate_limit(req).await.unwrap().into_inner();
    assert_eq!(r.statuses.len(), 20);
    for (i, s) in r.statuses.iter().enumerate() {
        assert_eq!(s.code, if i % 2 == 0 { OVER } else { OK }, "status {i}");
    }
    server.stop().await;
}
