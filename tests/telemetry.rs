//! Telemetry settings end to end on an in-process server: the response-time histogram in
//! milliseconds (`PROMETHEUS_RESPONSE_TIME_AS_MILLISECONDS`), as `/metrics` shows it; and
//! tracing (`TRACING_*`, `OTEL_EXPORTER_OTLP_*`), its spans caught by in-test OTLP
//! receivers (gRPC and HTTP, plain and TLS with a test CA), headers included.

mod common;

use std::time::Duration;

use common::otlp::{self, Receiver};
use common::poll::poll_until;
use common::test_ca::Ca;
use common::{TempDir, http, metric, request, start};
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

/// A test CA written to a file (for `OTEL_EXPORTER_OTLP_CERTIFICATE`) and a receiver
/// certificate it issued for 127.0.0.1.
struct Pki {
    dir: TempDir,
    ca: Ca,
    ca_path: String,
}

impl Pki {
    fn new() -> Pki {
        let dir = TempDir::new("otlp-tls");
        let ca = Ca::new("otlp test CA");
        let ca_path = dir.write("ca.pem", &ca.pem()).display().to_string();
        Pki { dir, ca, ca_path }
    }

    /// The receiver's TLS; with `client_auth`, it wants a certificate from this CA.
    fn receiver(&self, client_auth: bool) -> otlp::Tls {
        let (cert, key) = self.ca.issue(&["127.0.0.1"]);
        otlp::Tls { cert, key, client_ca: client_auth.then(|| self.ca.pem()) }
    }
}

const HEADERS: &str = "api-key=s3cret%3D%3D, X-Tenant = t1";

fn check_headers(receiver: &Receiver) {
    assert_eq!(receiver.header("api-key").as_deref(), Some("s3cret=="), "percent-decoded");
    assert_eq!(receiver.header("x-tenant").as_deref(), Some("t1"));
}

#[tokio::test]
async fn spans_are_exported_over_otlp_grpc_in_tls_with_headers() {
    let pki = Pki::new();
    let receiver = otlp::grpc_with(Some(&pki.receiver(false))).await;
    // No scheme: TLS, as the OpenTelemetry specification says (OTEL_EXPORTER_OTLP_INSECURE unset).
    let endpoint = receiver.addr.to_string();
    let settings = [
        ("TRACING_EXPORTER_PROTOCOL", "grpc"),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_EXPORTER_OTLP_CERTIFICATE", pki.ca_path.as_str()),
        ("OTEL_EXPORTER_OTLP_HEADERS", HEADERS),
    ];
    two_traced_calls(&receiver, &settings).await;
    check_spans(&receiver.spans());
    check_headers(&receiver);
}

#[tokio::test]
async fn spans_are_exported_over_otlp_http_in_tls_with_headers() {
    let pki = Pki::new();
    let receiver = otlp::http_with(Some(&pki.receiver(false))).await;
    let endpoint = format!("https://{}/v1/traces", receiver.addr);
    let settings = [
        ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", endpoint.as_str()),
        ("OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE", pki.ca_path.as_str()),
        ("OTEL_EXPORTER_OTLP_TRACES_HEADERS", HEADERS),
    ];
    two_traced_calls(&receiver, &settings).await;
    check_spans(&receiver.spans());
    check_headers(&receiver);
}

#[tokio::test]
async fn a_collector_asking_for_a_client_certificate_gets_the_configured_one() {
    let pki = Pki::new();
    let receiver = otlp::http_with(Some(&pki.receiver(true))).await;
    let (cert, key) = pki.ca.issue(&["sluicegate"]);
    let cert_path = pki.dir.write("client.pem", &cert).display().to_string();
    let key_path = pki.dir.write("client.key", &key).display().to_string();
    let endpoint = format!("https://{}", receiver.addr);
    let settings = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_EXPORTER_OTLP_CERTIFICATE", pki.ca_path.as_str()),
        ("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE", cert_path.as_str()),
        ("OTEL_EXPORTER_OTLP_CLIENT_KEY", key_path.as_str()),
    ];
    two_traced_calls(&receiver, &settings).await;
    check_spans(&receiver.spans());
}

#[tokio::test]
async fn a_collector_whose_certificate_the_ca_did_not_issue_gets_nothing() {
    let pki = Pki::new();
    let receiver = otlp::grpc_with(Some(&pki.receiver(false))).await;
    let other = Pki::new();
    let endpoint = format!("https://{}", receiver.addr);
    let settings = [
        ("TRACING_ENABLED", "true"),
        ("TRACING_EXPORTER_PROTOCOL", "grpc"),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_EXPORTER_OTLP_CERTIFICATE", other.ca_path.as_str()),
        ("OTEL_BSP_SCHEDULE_DELAY", "50"),
    ];
    let server = start(&[("t.yaml", RULES)], &settings, 1_000).await;
    let mut client = server.client().await;
    client.should_rate_limit(request("t", &[&[("k", "v")]])).await.unwrap();
    let dropped = async || {
        let labels = [("reason", "export_failed")];
        metric(server.http, "sluicegate_trace_spans_dropped_total", &labels).await.unwrap_or(0.0) >= 1.0
    };
    poll_until("the export fails verification and its span is counted", Duration::from_secs(20), dropped).await;
    assert!(receiver.spans().is_empty(), "nothing reached the collector");
    server.stop().await;
}
