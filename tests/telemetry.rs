//! Telemetry settings end to end on an in-process server: the response-time histogram in
//! milliseconds (`PROMETHEUS_RESPONSE_TIME_AS_MILLISECONDS`), as `/metrics` shows it; and
//! tracing (`TRACING_*`), its spans caught by in-test OTLP receivers (gRPC and HTTP).

mod common;

use std::time::Duration;

use common::otlp::{self, Receiver};
use common::poll::poll_until;
use common::{http, request, start};
use sluicegate::trace::otlp::Span;

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

const TRACE: &str = "0af7651916cd43dd8448eb211c80319c";
const PARENT: &str = "b7ad6b7169203331";

fn attribute<'a>(span: &'a Span, key: &str) -> Option<&'a str> {
    span.attributes.iter().find(|a| a.key == key)?.value.as_ref()?.string_value.as_deref()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Two calls, one joined to a caller's trace and one not, traced to `receiver`.
async fn two_traced_calls(receiver: &Receiver, settings: &[(&str, &str)]) {
    let mut all = vec![("TRACING_ENABLED", "true")];
    all.extend_from_slice(settings);
    let rules = "domain: t\ndescriptors:\n  - key: k\n    rate_limit: {unit: hour, requests_per_unit: 1}\n";
    let server = start(&[("t.yaml", rules)], &all, 1_000).await;
    let mut client = server.client().await;
    let mut joined = tonic::Request::new(request("t", &[&[("k", "v")]]));
    joined.metadata_mut().insert("traceparent", format!("00-{TRACE}-{PARENT}-01").parse().unwrap());
    client.should_rate_limit(joined).await.unwrap();
    client.should_rate_limit(request("t", &[&[("k", "v")]])).await.unwrap();
    poll_until("two spans arrive", Duration::from_secs(15), async || receiver.spans().len() >= 2).await;
    server.stop().await;
}

fn check_spans(spans: &[Span]) {
    assert_eq!(spans.len(), 2, "{spans:?}");
    let joined = spans.iter().find(|s| hex(&s.trace_id) == TRACE).expect("a span in the caller's trace");
    assert_eq!(hex(&joined.parent_span_id), PARENT);
    assert_eq!(attribute(joined, "domain"), Some("t"));
    assert_eq!(attribute(joined, "code"), Some("OK"));
    let new = spans.iter().find(|s| hex(&s.trace_id) != TRACE).expect("a span in a new trace");
    assert!(new.parent_span_id.is_empty() && new.trace_id.len() == 16, "{new:?}");
    assert_eq!(attribute(new, "code"), Some("OVER_LIMIT"));
}

#[tokio::test]
async fn spans_are_exported_over_otlp_grpc() {
    let receiver = otlp::grpc().await;
    let endpoint = format!("http://{}", receiver.addr);
    two_traced_calls(&receiver, &[("TRACING_EXPORTER_PROTOCOL", "grpc"), ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint)])
        .await;
    check_spans(&receiver.spans());
}

#[tokio::test]
async fn spans_are_exported_over_otlp_http() {
    let receiver = otlp::http().await;
    let endpoint = format!("http://{}", receiver.addr);
    two_traced_calls(&receiver, &[("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint)]).await;
    check_spans(&receiver.spans());
}

#[tokio::test]
async fn sampling_rate_zero_sends_no_new_trace() {
    let receiver = otlp::http().await;
    let endpoint = format!("http://{}/v1/traces", receiver.addr);
    let settings = [
        ("TRACING_ENABLED", "true"),
        ("TRACING_SAMPLING_RATE", "0"),
        ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", endpoint.as_str()),
    ];
    let server = start(&[("t.yaml", RULES)], &settings, 1_000).await;
    let mut client = server.client().await;
    for _ in 0..5 {
        client.should_rate_limit(request("t", &[&[("k", "v")]])).await.unwrap();
    }
    // A caller's sampled trace is still followed (parent-based sampling, as the reference).
    let mut joined = tonic::Request::new(request("t", &[&[("k", "v")]]));
    joined.metadata_mut().insert("traceparent", format!("00-{TRACE}-{PARENT}-01").parse().unwrap());
    client.should_rate_limit(joined).await.unwrap();
    poll_until("the caller's span arrives", Duration::from_secs(15), async || !receiver.spans().is_empty()).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let spans = receiver.spans();
    assert_eq!(spans.len(), 1, "{spans:?}");
    assert_eq!(hex(&spans[0].trace_id), TRACE);
    server.stop().await;
}
