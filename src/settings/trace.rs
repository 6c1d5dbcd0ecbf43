//! Tracing settings: the reference's `TRACING_*` variables with its names and defaults,
//! and OpenTelemetry's standard `OTEL_EXPORTER_OTLP_ENDPOINT` /
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, read into [`TraceOptions`] (`None` when off).

use super::parse::{parse_bool, text};
use super::reader::Reader;
use super::setting::settings;
use crate::trace::{ExportProtocol, TraceOptions};

settings! {
    TRACING_ENABLED: bool = "false", parse_bool, "Export a span per ShouldRateLimit call over OTLP";
    TRACING_SERVICE_NAME: String = "RateLimit", text, "Tracing: the service.name resource attribute";
    TRACING_SERVICE_NAMESPACE: String = "", text, "Tracing: the service.namespace resource attribute";
    TRACING_SERVICE_INSTANCE_ID: String = "", text,
        "Tracing: the service.instance.id resource attribute (empty: a random one)";
    TRACING_EXPORTER_PROTOCOL: ExportProtocol = "http",
        |s| match s.to_ascii_lowercase().as_str() {
            "http" => Ok(ExportProtocol::Http),
            "grpc" => Ok(ExportProtocol::Grpc),
            _ => Err("expected http or grpc".into()),
        },
        "Tracing: OTLP over http (protobuf POSTs to /v1/traces) or grpc";
    TRACING_SAMPLING_RATE: f64 = "1",
        |s| s.parse::<f64>().ok().filter(|f| f.is_finite()).ok_or_else(|| "expected a number".to_string()),
        "Tracing: fraction of new traces sampled (a caller's sampled flag is followed)";
    OTEL_EXPORTER_OTLP_ENDPOINT: String = "", endpoint,
        "Tracing: OTLP collector base URL (empty: http://localhost:4318, or http://localhost:4317 for grpc)";
    OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: String = "", endpoint,
        "Tracing: OTLP traces URL, used as is (overrides OTEL_EXPORTER_OTLP_ENDPOINT)";
}

/// Empty, or an `http://` URL (a bare `host:port` gets `http://`).
fn endpoint(s: &str) -> Result<String, String> {
    match s.trim() {
        "" => Ok(String::new()),
        url if url.starts_with("http://") => Ok(url.trim_end_matches('/').to_string()),
        url if url.contains("://") => Err("only http:// endpoints are supported".into()),
        url => Ok(format!("http://{}", url.trim_end_matches('/'))),
    }
}

/// The tracing settings; `None` unless `TRACING_ENABLED`.
pub(super) fn read(r: &mut Reader<'_>) -> Option<TraceOptions> {
    let enabled = r.get(&TRACING_ENABLED);
    let service_name = r.get(&TRACING_SERVICE_NAME);
    let service_namespace = r.get(&TRACING_SERVICE_NAMESPACE);
    let service_instance_id = r.get(&TRACING_SERVICE_INSTANCE_ID);
    let protocol = r.get(&TRACING_EXPORTER_PROTOCOL);
    let sampling_rate = r.get(&TRACING_SAMPLING_RATE);
    let base = r.get(&OTEL_EXPORTER_OTLP_ENDPOINT);
    let traces = r.get(&OTEL_EXPORTER_OTLP_TRACES_ENDPOINT);
    let endpoint = match (traces.is_empty(), base.is_empty(), protocol) {
        (false, _, _) => traces,
        (true, false, ExportProtocol::Http) => format!("{base}/v1/traces"),
        (true, false, ExportProtocol::Grpc) => base,
        (true, true, ExportProtocol::Http) => "http://localhost:4318/v1/traces".into(),
        (true, true, ExportProtocol::Grpc) => "http://localhost:4317".into(),
    };
    enabled.then_some(TraceOptions {
        service_name,
        service_namespace,
        service_instance_id,
        protocol,
        sampling_rate,
        endpoint,
    })
}
