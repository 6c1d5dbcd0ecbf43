//! Tracing settings: the reference's `TRACING_*` variables with its names and defaults,
//! and the standard OpenTelemetry variables its exporter and batch span processor read
//! (`OTEL_EXPORTER_OTLP_*`, each with its `OTEL_EXPORTER_OTLP_TRACES_*` override, and
//! `OTEL_BSP_*`), read into [`TraceOptions`] (`None` when off).
//!
//! Endpoints follow the OpenTelemetry specification: `http://` is plain, `https://` is
//! TLS, and a `host:port` without a scheme is TLS unless `OTEL_EXPORTER_OTLP_INSECURE`
//! says otherwise. Headers are W3C-baggage-like `key=value,key2=value2` lists with
//! percent-encoded parts; an entry that cannot be sent is a settings error, and values
//! never appear in errors or `Debug` output (they usually carry an API key).

use std::path::PathBuf;
use std::time::Duration;

use super::parse::{optional_path, parse_bool, text};
use super::reader::Reader;
use super::setting::{decimal, settings};
use crate::trace::{
    BatchOptions, DEFAULT_BATCH_DELAY_MS, ExportProtocol, Headers, MAX_BATCH, QUEUE_SPANS, TraceOptions, TraceTls,
};

#[cfg(test)]
#[path = "trace_tests.rs"]
mod tests;

/// Most spans the queue may be asked to hold: a bound on memory, whatever the setting.
const MAX_QUEUE: usize = 1_000_000;

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
    OTEL_EXPORTER_OTLP_INSECURE: bool = "false", parse_bool,
        "Tracing: an endpoint without a scheme is plain http, not TLS";
    OTEL_EXPORTER_OTLP_TRACES_INSECURE: Option<bool> = "", optional_bool,
        "Tracing: OTEL_EXPORTER_OTLP_INSECURE for traces (overrides it)";
    OTEL_EXPORTER_OTLP_HEADERS: Headers = "", parse_headers,
        "Tracing: headers sent with every export, key=value,key2=value2 (percent-encoded)";
    OTEL_EXPORTER_OTLP_TRACES_HEADERS: Option<Headers> = "", |s| optional(s, parse_headers),
        "Tracing: OTEL_EXPORTER_OTLP_HEADERS for traces (replaces it)";
    OTEL_EXPORTER_OTLP_CERTIFICATE: Option<PathBuf> = "", optional_path,
        "Tracing: PEM CA certificates to verify an https collector with (default: the system's)";
    OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE: Option<PathBuf> = "", optional_path,
        "Tracing: OTEL_EXPORTER_OTLP_CERTIFICATE for traces (overrides it)";
    OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE: Option<PathBuf> = "", optional_path,
        "Tracing: PEM client certificate for an https collector that asks for one";
    OTEL_EXPORTER_OTLP_CLIENT_KEY: Option<PathBuf> = "", optional_path,
        "Tracing: PEM key of OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE";
    OTEL_EXPORTER_OTLP_TRACES_CLIENT_CERTIFICATE: Option<PathBuf> = "", optional_path,
        "Tracing: OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE for traces (overrides it)";
    OTEL_EXPORTER_OTLP_TRACES_CLIENT_KEY: Option<PathBuf> = "", optional_path,
        "Tracing: OTEL_EXPORTER_OTLP_CLIENT_KEY for traces (overrides it)";
    OTEL_EXPORTER_OTLP_TIMEOUT: Duration = "10000", parse_millis,
        "Tracing: milliseconds one export may take; also the most shutdown waits for the spans not yet sent";
    OTEL_EXPORTER_OTLP_TRACES_TIMEOUT: Option<Duration> = "", |s| optional(s, parse_millis),
        "Tracing: OTEL_EXPORTER_OTLP_TIMEOUT for traces (overrides it)";
    OTEL_BSP_SCHEDULE_DELAY: Duration = decimal!(DEFAULT_BATCH_DELAY_MS), parse_millis,
        "Tracing: milliseconds a span waits for its batch to fill before the batch is sent";
    OTEL_BSP_MAX_QUEUE_SIZE: usize = decimal!(QUEUE_SPANS),
        |s| bounded_count(s, MAX_QUEUE),
        "Tracing: spans waiting for export; more are dropped and counted";
    OTEL_BSP_MAX_EXPORT_BATCH_SIZE: usize = decimal!(MAX_BATCH),
        |s| bounded_count(s, MAX_QUEUE),
        "Tracing: most spans in one export (at most OTEL_BSP_MAX_QUEUE_SIZE)";
}

/// Empty, or an `http://` or `https://` URL, or a `host:port` (whose scheme
/// `OTEL_EXPORTER_OTLP_INSECURE` decides).
fn endpoint(s: &str) -> Result<String, String> {
    match s.trim().trim_end_matches('/') {
        url if url.starts_with("http://") || url.starts_with("https://") || !url.contains("://") => Ok(url.to_string()),
        _ => Err("expected an http:// or https:// URL, or host:port".into()),
    }
}

/// `None` when empty, else what `parse` makes of it.
fn optional<T>(s: &str, parse: fn(&str) -> Result<T, String>) -> Result<Option<T>, String> {
    if s.is_empty() { Ok(None) } else { parse(s).map(Some) }
}

fn optional_bool(s: &str) -> Result<Option<bool>, String> {
    optional(s, parse_bool)
}

/// A whole number of milliseconds above zero (OpenTelemetry's unit for these).
fn parse_millis(s: &str) -> Result<Duration, String> {
    match s.trim().parse::<u64>() {
        Ok(ms) if ms > 0 => Ok(Duration::from_millis(ms)),
        _ => Err("expected a whole number of milliseconds above zero".into()),
    }
}

fn bounded_count(s: &str, max: usize) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(n) if (1..=max).contains(&n) => Ok(n),
        _ => Err(format!("expected a whole number from 1 to {max}")),
    }
}

/// Headers the exporter writes itself: taking them from the setting would break the
/// request (`content-length`) or the protocol (`te`, `grpc-*`).
const RESERVED: &[&str] =
    &["content-type", "content-length", "host", "connection", "transfer-encoding", "te", "upgrade", "keep-alive"];

/// `key=value,key2=value2`, as OpenTelemetry reads `OTEL_EXPORTER_OTLP_HEADERS`: entries
/// split on `,`, each on its first `=`, both sides trimmed and percent-decoded. A later
/// entry with the same key replaces an earlier one. Errors name the entry by its position
/// and key, never its value.
pub fn parse_headers(s: &str) -> Result<Headers, String> {
    let mut headers: Vec<(String, String)> = Vec::new();
    for (i, entry) in s.split(',').enumerate().filter(|(_, e)| !e.trim().is_empty()) {
        let n = i + 1;
        let Some((key, value)) = entry.split_once('=') else {
            return Err(format!("entry {n} has no '=': expected key=value,key2=value2"));
        };
        let key = percent_decode(key.trim()).map_err(|e| format!("entry {n}: the key {e}"))?.to_ascii_lowercase();
        let value = percent_decode(value.trim()).map_err(|e| format!("entry {n} ({key}): the value {e}"))?;
        let name_ok =
            !key.is_empty() && key.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
        if !name_ok || key.ends_with("-bin") {
            return Err(format!("entry {n}: {key:?} is not a header name (letters, digits and -, no -bin suffix)"));
        }
        if RESERVED.contains(&key.as_str()) || key.starts_with("grpc-") {
            return Err(format!("entry {n}: {key} is set by the exporter itself"));
        }
        if !value.bytes().all(|b| b == b'\t' || (b' '..=b'~').contains(&b)) {
            return Err(format!("entry {n} ({key}): the value must be printable ASCII once decoded"));
        }
        headers.retain(|(k, _)| *k != key);
        headers.push((key, value));
    }
    Ok(Headers(headers))
}

/// Decodes `%XX` escapes; the result must be UTF-8.
fn percent_decode(s: &str) -> Result<String, String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok());
            let byte = hex
                .filter(|h| h.bytes().all(|b| b.is_ascii_hexdigit()))
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or("has a % not followed by two hex digits")?;
            out.push(byte);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "is not UTF-8 once percent-decoded".to_string())
}

/// The tracing settings; `None` unless `TRACING_ENABLED`. The `TRACES_` variant of a
/// setting wins over the general one when set, as OpenTelemetry specifies.
pub(super) fn read(r: &mut Reader<'_>, warnings: &mut Vec<String>) -> Option<TraceOptions> {
    let enabled = r.get(&TRACING_ENABLED);
    let service_name = r.get(&TRACING_SERVICE_NAME);
    let service_namespace = r.get(&TRACING_SERVICE_NAMESPACE);
    let service_instance_id = r.get(&TRACING_SERVICE_INSTANCE_ID);
    let protocol = r.get(&TRACING_EXPORTER_PROTOCOL);
    let sampling_rate = r.get(&TRACING_SAMPLING_RATE);
    let base = r.get(&OTEL_EXPORTER_OTLP_ENDPOINT);
    let traces = r.get(&OTEL_EXPORTER_OTLP_TRACES_ENDPOINT);
    let insecure = r.get(&OTEL_EXPORTER_OTLP_TRACES_INSECURE).unwrap_or(r.get(&OTEL_EXPORTER_OTLP_INSECURE));
    let headers = r.get(&OTEL_EXPORTER_OTLP_TRACES_HEADERS).unwrap_or(r.get(&OTEL_EXPORTER_OTLP_HEADERS));
    let ca = r.get(&OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE).or(r.get(&OTEL_EXPORTER_OTLP_CERTIFICATE));
    let traces_cert = r.get(&OTEL_EXPORTER_OTLP_TRACES_CLIENT_CERTIFICATE);
    let traces_key = r.get(&OTEL_EXPORTER_OTLP_TRACES_CLIENT_KEY);
    let (cert, key) = if traces_cert.is_some() || traces_key.is_some() {
        (traces_cert, traces_key)
    } else {
        (r.get(&OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE), r.get(&OTEL_EXPORTER_OTLP_CLIENT_KEY))
    };
    let client = match (cert, key) {
        (Some(cert), Some(key)) => Some((cert, key)),
        (None, None) => None,
        (cert, _) => {
            let missing =
                if cert.is_some() { "OTEL_EXPORTER_OTLP_CLIENT_KEY" } else { "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE" };
            r.invalid(
                missing,
                "\"\"",
                "a client certificate needs both OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE and _CLIENT_KEY",
            );
            None
        }
    };
    let timeout = r.get(&OTEL_EXPORTER_OTLP_TRACES_TIMEOUT).unwrap_or(r.get(&OTEL_EXPORTER_OTLP_TIMEOUT));
    let delay = r.get(&OTEL_BSP_SCHEDULE_DELAY);
    let queue = r.get(&OTEL_BSP_MAX_QUEUE_SIZE);
    // OpenTelemetry's batch processor takes a batch larger than the queue as the queue.
    let max_batch = r.get(&OTEL_BSP_MAX_EXPORT_BATCH_SIZE).min(queue);

    let with_scheme = |url: String| match url.contains("://") {
        true => url,
        false if insecure => format!("http://{url}"),
        false => format!("https://{url}"),
    };
    let endpoint = match (traces.is_empty(), base.is_empty(), protocol) {
        (false, _, _) => with_scheme(traces),
        (true, false, ExportProtocol::Http) => format!("{}/v1/traces", with_scheme(base)),
        (true, false, ExportProtocol::Grpc) => with_scheme(base),
        (true, true, ExportProtocol::Http) => "http://localhost:4318/v1/traces".into(),
        (true, true, ExportProtocol::Grpc) => "http://localhost:4317".into(),
    };
    let tls = TraceTls { ca, client };
    if enabled && !endpoint.starts_with("https://") && tls != TraceTls::default() {
        warnings.push(format!(
            "the OTLP endpoint {endpoint} is plain http, so the OTEL_EXPORTER_OTLP_*CERTIFICATE and *CLIENT_KEY settings are not used"
        ));
    }
    enabled.then_some(TraceOptions {
        service_name,
        service_namespace,
        service_instance_id,
        protocol,
        sampling_rate,
        endpoint,
        headers,
        tls,
        timeout,
        batch: BatchOptions { delay, max_batch, queue },
    })
}
