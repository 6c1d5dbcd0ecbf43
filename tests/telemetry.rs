//! Telemetry settings end to end on an in-process server: the response-time histogram in
//! milliseconds (`PROMETHEUS_RESPONSE_TIME_AS_MILLISECONDS`), as `/metrics` shows it.

mod common;

use common::{http, request, start};

const RULES: &str = "domain: t\ndescriptors:\n  - key: k\n    rate_limit: {unit: hour, requests_per_unit: 100}\n";

/// The `le` bounds of the response-time histogram on `/metrics`.
async fn buckets(settings: &[(&str, &str)]) -> Vec<String> {
    let server = start(&[("t.yaml", RULES)], settings, 1_000).await;
    let mut client = server.client().await;
    client.should_rate_limit(request("t", &[&[("k", "v")]])).await.unwrap();
    let (status, text) = http(server.http, "GET", "/metrics", "").await;
    assert_eq!(status, 200);
    server.stop().await;
    text.lines()
        .filter(|l| l.starts_with("ratelimit_service_response_time_seconds_bucket"))
        .filter_map(|l| Some(l.split("le=\"").nth(1)?.split('"').next()?.to_string()))
        .collect()
}

#[tokio::test]
async fn response_time_buckets_are_milliseconds_when_asked() {
    let seconds = buckets(&[]).await;
    assert!(seconds.contains(&"1".to_string()) && !seconds.contains(&"1000".to_string()), "{seconds:?}");
    let millis = buckets(&[("PROMETHEUS_RESPONSE_TIME_AS_MILLISECONDS", "true")]).await;
    assert!(millis.contains(&"1000".to_string()) && millis.contains(&"0.01".to_string()), "{millis:?}");
}
