//! The Rate Limit Quota Service at the protocol level: a real tonic client on the
//! in-process server's gRPC port (fake clock, so TTLs pass only when a test says so).
//! Assignments at once, division by demand, blanket rules, reloads, releases, bounds and
//! malformed reports.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::load::write_atomically;
use common::poll::eventually;
use common::rlqs::{Said, open, rate, reports, said};
use common::{OK, TestServer, http, metric, request, start};
use envoy_types::pb::envoy::service::rate_limit_quota::v3::RateLimitQuotaUsageReports;
use envoy_types::pb::envoy::service::rate_limit_quota::v3::rate_limit_quota_usage_reports::BucketQuotaUsage;
use tonic::{Code, Status};

const RULES: &str = r#"
domain: api
descriptors:
  - key: api_key
    rate_limit: {unit: second, requests_per_unit: 100}
  - key: api_key
    value: internal
    rate_limit: {unlimited: true}
  - key: api_key
    value: blocked
    rate_limit: {unit: second, requests_per_unit: 0}
"#;

/// Assignments live at least 2 s here (15 s by default), so TTLs show the reporting
/// interval's part.
const TTL_MIN: (&str, &str) = ("RLQS_ASSIGNMENT_TTL_MIN", "2s");

async fn server() -> TestServer {
    start(&[("api.yaml", RULES)], &[TTL_MIN], 1_000_000).await
}

#[tokio::test]
async fn the_first_report_of_a_bucket_gets_its_assignment_at_once() {
    let server = server().await;
    let mut quota = open(server.grpc).await.unwrap();
    quota.report("api", &[(&[("api_key", "k1")], 1, 0, 0)]).await;
    let (bucket, said) = quota.action().await;
    assert_eq!(bucket, HashMap::from([("api_key".to_string(), "k1".to_string())]));
    assert_eq!(said, Said::Tokens(100.0, 100, Duration::from_secs(2)));
    // A report that says it covers 1 s makes the assignment live three of them.
    quota.report("", &[(&[("api_key", "k1")], 50, 0, 1000)]).await;
    assert_eq!(quota.action().await.1, Said::Tokens(100.0, 100, Duration::from_secs(3)));
    server.stop().await;
}

#[tokio::test]
async fn two_clients_divide_a_limit_by_demand_and_a_closed_stream_releases_its_share() {
    let server = server().await;
    let bucket: &[(&str, &str)] = &[("api_key", "shared")];
    let mut a = open(server.grpc).await.unwrap();
    a.report("api", &[(bucket, 100, 100, 1000)]).await;
    assert_eq!(rate(a.action().await.1), 100.0);

    // B offers half what A does: A is told to make room at once, without reporting.
    let mut b = open(server.grpc).await.unwrap();
    b.report("api", &[(bucket, 60, 40, 1000)]).await;
    let (rate_b, rate_a) = (rate(b.action().await.1), rate(a.action().await.1));
    assert_eq!((rate_a, rate_b), (66.0, 33.0), "shares by demand 2:1, rounded down");

    // A reports the same demand again: its share is unchanged, only its TTL refreshed.
    a.report("api", &[(bucket, 70, 130, 1000)]).await;
    assert_eq!(rate(a.action().await.1), 66.0);

    // B goes away: A gets the whole limit back.
    b.reports = None;
    assert!(matches!(b.next().await, Ok(None)), "B's stream ends cleanly after its half-close");
    assert_eq!(rate(a.action().await.1), 100.0);
    server.stop().await;
}

#[tokio::test]
async fn a_silent_client_releases_its_share_when_its_assignment_expires() {
    let server = server().await;
    let bucket: &[(&str, &str)] = &[("api_key", "k")];
    let (mut a, mut b) = (open(server.grpc).await.unwrap(), open(server.grpc).await.unwrap());
    a.report("api", &[(bucket, 50, 0, 1000)]).await;
    assert_eq!(rate(a.action().await.1), 100.0);
    b.report("api", &[(bucket, 50, 0, 1000)]).await;
    assert_eq!(rate(b.action().await.1), 50.0);
    assert_eq!(rate(a.action().await.1), 50.0);
    // Both assignments live 3 s. A keeps reporting (at the same rate: 100 in the 2 s
    // since its last report); B falls silent.
    server.clock.advance(Duration::from_secs(2));
    a.report("api", &[(bucket, 100, 0, 2000)]).await;
    assert_eq!(rate(a.action().await.1), 50.0);
    server.clock.advance(Duration::from_millis(1500));
    // The upkeep (every 500 ms) finds B silent past its TTL and gives A the whole limit.
    assert_eq!(rate(a.action().await.1), 100.0);
    server.stop().await;
}

#[tokio::test]
async fn unlimited_and_zero_limits_are_blanket_rules_and_unknown_buckets_are_allowed() {
    let server = server().await;
    let mut quota = open(server.grpc).await.unwrap();
    quota
        .report(
            "api",
            &[
                (&[("api_key", "internal")], 1, 0, 0),
                (&[("api_key", "blocked")], 1, 0, 0),
                (&[("tenant", "x")], 1, 0, 0),
            ],
        )
        .await;
    let actions: Vec<Said> = quota.actions().await.iter().map(|a| said(a).1).collect();
    assert_eq!(actions.len(), 3);
    assert!(actions.contains(&Said::AllowAll) && actions.contains(&Said::DenyAll), "{actions:?}");
    assert_eq!(actions.iter().filter(|s| **s == Said::AllowAll).count(), 2, "{actions:?}");

    let mut other = open(server.grpc).await.unwrap();
    other.report("no-such-domain", &[(&[("api_key", "k")], 1, 0, 0)]).await;
    assert_eq!(other.action().await.1, Said::AllowAll);
    server.stop().await;
}

#[tokio::test]
async fn a_reload_reassigns_changed_buckets_and_abandons_unmatched_ones() {
    let server = server().await;
    let mut quota = open(server.grpc).await.unwrap();
    quota.report("api", &[(&[("api_key", "k")], 1, 0, 0), (&[("api_key", "internal")], 1, 0, 0)]).await;
    assert_eq!(quota.actions().await.len(), 2);

    let file = server.rules.path().join("api.yaml");
    write_atomically(&file, &RULES.replace("requests_per_unit: 100", "requests_per_unit: 40"));
    // Pushed at the reload, with no report in between.
    assert_eq!(rate(quota.action().await.1), 40.0);

    write_atomically(
        &file,
        "domain: api\ndescriptors:\n  - key: tenant\n    rate_limit: {unit: second, requests_per_unit: 1}\n",
    );
    let mut actions: Vec<(HashMap<String, String>, Said)> = quota.actions().await.iter().map(said).collect();
    actions.sort_by(|x, y| x.0["api_key"].cmp(&y.0["api_key"]));
    assert_eq!(actions.iter().map(|a| a.1).collect::<Vec<_>>(), vec![Said::Abandon, Said::Abandon]);

    // Abandoned buckets are forgotten: reporting again subscribes afresh (and no rule
    // matches now, so everything is allowed).
    quota.report("", &[(&[("api_key", "k")], 1, 0, 0)]).await;
    assert_eq!(quota.action().await.1, Said::AllowAll);
    server.stop().await;
}

/// Sends `message` as a stream's first report; returns the status the stream ends with.
async fn malformed(
    server: &TestServer,
    first: Option<RateLimitQuotaUsageReports>,
    message: RateLimitQuotaUsageReports,
) -> Status {
    let mut quota = open(server.grpc).await.unwrap();
    if let Some(first) = first {
        quota.send(first).await;
        quota.actions().await;
    }
    quota.send(message).await;
    match quota.next().await {
        Err(status) => status,
        Ok(answer) => panic!("expected an error status, got {answer:?}"),
    }
}

#[tokio::test]
async fn malformed_reports_end_the_stream_with_the_reason_and_harm_nothing_else() {
    let server = server().await;
    let good: &[(&str, &str)] = &[("api_key", "k")];
    let mut bystander = open(server.grpc).await.unwrap();
    bystander.report("api", &[(good, 1, 0, 0)]).await;
    bystander.actions().await;

    let cases: Vec<(Option<RateLimitQuotaUsageReports>, RateLimitQuotaUsageReports, &str)> = vec![
        (None, reports("", &[(good, 1, 0, 0)]), "must name its domain"),
        (None, reports("api", &[(&[], 1, 0, 0)]), "no entries"),
        (None, reports("api", &[(good, u64::MAX, 0, 1000)]), "num_requests_allowed"),
        (None, reports("api", &[(good, 1, u64::MAX / 2, 1000)]), "num_requests_denied"),
        (None, reports("api", &[(good, 1, 0, 1000 * 86_400 * 365)]), "time_elapsed"),
        (None, reports("api", &[(&[("", "v")], 1, 0, 0)]), "empty key"),
        // (Another bucket than the bystander's, whose share would change meanwhile.)
        (
            Some(reports("api", &[(&[("api_key", "other")], 1, 0, 0)])),
            reports("other", &[(good, 1, 0, 0)]),
            "domain changed",
        ),
        (
            None,
            RateLimitQuotaUsageReports { domain: "api".into(), bucket_quota_usages: vec![BucketQuotaUsage::default()] },
            "no bucket_id",
        ),
    ];
    for (first, message, reason) in cases {
        let status = malformed(&server, first, message).await;
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(status.message().contains(reason), "{reason:?} not in {:?}", status.message());
    }
    let huge = "v".repeat(2000);
    let status = malformed(&server, None, reports("api", &[(&[("api_key", &huge)], 1, 0, 0)])).await;
    assert!(status.message().contains("RLQS_MAX_BUCKET_ID_BYTES"), "{status:?}");

    // The server is unharmed: the bystander's stream still works, so does ShouldRateLimit,
    // and the bad streams left nothing behind.
    bystander.report("", &[(good, 1, 0, 1000)]).await;
    assert_eq!(rate(bystander.action().await.1), 100.0);
    let answer = server.client().await.should_rate_limit(request("api", &[&[("api_key", "x")]])).await.unwrap();
    assert_eq!(answer.into_inner().overall_code, OK);
    let totals = server.shared.rlqs.totals();
    assert_eq!((totals.streams, totals.buckets), (1, 1));
    assert_eq!(metric(server.debug, "sluicegate_rlqs_invalid_reports_total", &[]).await, Some(9.0));
    server.stop().await;
}

#[tokio::test]
async fn streams_and_buckets_are_capped() {
    let server = start(
        &[("api.yaml", RULES)],
        &[("RLQS_MAX_STREAMS", "1"), ("RLQS_MAX_BUCKETS_PER_STREAM", "1"), TTL_MIN],
        1_000_000,
    )
    .await;
    let mut quota = open(server.grpc).await.unwrap();
    quota.report("api", &[(&[("api_key", "a")], 1, 0, 0), (&[("api_key", "b")], 1, 0, 0)]).await;
    let (bucket, _) = quota.action().await;
    assert_eq!(bucket["api_key"], "a", "the bucket over the cap gets no assignment");

    let refused = open(server.grpc).await.err().expect("a second stream is refused");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(refused.message().contains("RLQS_MAX_STREAMS"), "{refused:?}");

    // Closing the first makes room.
    drop(quota);
    eventually("the closed stream is forgotten", async || server.shared.rlqs.totals().streams == 0).await;
    let mut again = open(server.grpc).await.unwrap();
    again.report("api", &[(&[("api_key", "b")], 1, 0, 0)]).await;
    assert_eq!(again.action().await.0["api_key"], "b");
    server.stop().await;
}

#[tokio::test]
async fn buckets_are_capped_across_streams_too() {
    let server = start(&[("api.yaml", RULES)], &[("RLQS_MAX_BUCKETS", "1"), TTL_MIN], 1_000_000).await;
    let mut first = open(server.grpc).await.unwrap();
    first.report("api", &[(&[("api_key", "a")], 1, 0, 0)]).await;
    assert_eq!(first.action().await.0["api_key"], "a");
    // Another stream may join the bucket there is, but not start a second one.
    let mut second = open(server.grpc).await.unwrap();
    second.report("api", &[(&[("api_key", "b")], 1, 0, 0), (&[("api_key", "a")], 1, 0, 0)]).await;
    assert_eq!(second.action().await.0["api_key"], "a");
    assert_eq!(server.shared.rlqs.totals().buckets, 1);
    assert_eq!(metric(server.debug, "sluicegate_rlqs_refused_total", &[("what", "bucket")]).await, Some(1.0));
    server.stop().await;
}

#[tokio::test]
async fn buckets_show_on_debug_config_and_in_metrics() {
    let server = server().await;
    let mut quota = open(server.grpc).await.unwrap();
    quota.report("api", &[(&[("api_key", "k9")], 30, 10, 1000)]).await;
    quota.actions().await;
    let (status, body) = http(server.debug, "GET", "/debug/config", "").await;
    assert_eq!(status, 200);
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    let bucket = &json["rlqs"]["listed"][0];
    assert_eq!(bucket["bucket_id"]["api_key"], "k9", "{body}");
    assert_eq!(bucket["rule"], "api.api_key", "{body}");
    assert_eq!(bucket["clients"][0]["demand_per_second"], 40.0, "{body}");
    assert_eq!(bucket["clients"][0]["assigned"]["tokens_per_fill"], 100, "{body}");
    eventually("the RLQS gauges follow", async || {
        metric(server.debug, "sluicegate_rlqs_streams", &[]).await == Some(1.0)
            && metric(server.debug, "sluicegate_rlqs_buckets", &[]).await == Some(1.0)
            && metric(server.debug, "sluicegate_rlqs_assigned_requests_per_second", &[]).await == Some(100.0)
            && metric(server.debug, "sluicegate_rlqs_reported_requests_per_second", &[]).await == Some(40.0)
    })
    .await;
    assert_eq!(
        metric(server.debug, "sluicegate_rlqs_reported_requests_total", &[("outcome", "denied")]).await,
        Some(10.0)
    );
    server.stop().await;
}

#[tokio::test]
async fn shutdown_ends_open_streams_with_unavailable() {
    let server = server().await;
    let mut quota = open(server.grpc).await.unwrap();
    quota.report("api", &[(&[("api_key", "k")], 1, 0, 0)]).await;
    quota.actions().await;
    let stopped = tokio::spawn(server.stop());
    let status = quota.next().await.expect_err("the stream ends with a status");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    // The open stream does not hold the drain until its timeout.
    tokio::time::timeout(Duration::from_secs(5), stopped).await.expect("a prompt stop").unwrap();
}
