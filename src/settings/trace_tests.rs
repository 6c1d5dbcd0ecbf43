//! Tests of the tracing settings: endpoints as the OpenTelemetry variables resolve them,
//! the `TRACES_` overrides, the batch bounds, and header lists (percent-decoding, clear
//! errors that never quote a value).

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use crate::settings::{Settings, SettingsError};

fn parse(pairs: &[(&str, &str)]) -> Result<Settings, SettingsError> {
    let source: HashMap<&str, &str> = pairs.iter().copied().collect();
    Settings::parse(&source, vec![PathBuf::from("config")])
}

#[test]
fn tracing_is_off_by_default_and_finds_its_endpoint_as_the_otel_variables_say() {
    assert_eq!(parse(&[]).unwrap().tracing, None);
    let endpoint = |pairs: &[(&str, &str)]| {
        let mut all = vec![("TRACING_ENABLED", "true")];
        all.extend_from_slice(pairs);
        parse(&all).unwrap().tracing.expect("tracing on").endpoint
    };
    assert_eq!(endpoint(&[]), "http://localhost:4318/v1/traces");
    assert_eq!(endpoint(&[("TRACING_EXPORTER_PROTOCOL", "grpc")]), "http://localhost:4317");
    assert_eq!(endpoint(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318/")]), "http://c:4318/v1/traces");
    let traces = [("OTEL_EXPORTER_OTLP_ENDPOINT", "c:1"), ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://t:2/x")];
    assert_eq!(endpoint(&traces), "http://t:2/x");
    assert_eq!(endpoint(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "https://c:4318")]), "https://c:4318/v1/traces");
    // Without a scheme, TLS unless insecure (the OpenTelemetry specification's rule).
    let grpc = ("TRACING_EXPORTER_PROTOCOL", "grpc");
    assert_eq!(endpoint(&[grpc, ("OTEL_EXPORTER_OTLP_ENDPOINT", "c:4317")]), "https://c:4317");
    let insecure = ("OTEL_EXPORTER_OTLP_INSECURE", "true");
    assert_eq!(endpoint(&[grpc, insecure, ("OTEL_EXPORTER_OTLP_ENDPOINT", "c:4317")]), "http://c:4317");
    let traces_secure = ("OTEL_EXPORTER_OTLP_TRACES_INSECURE", "false");
    assert_eq!(endpoint(&[grpc, insecure, traces_secure, ("OTEL_EXPORTER_OTLP_ENDPOINT", "c:1")]), "https://c:1");
    assert_eq!(endpoint(&[insecure, ("OTEL_EXPORTER_OTLP_ENDPOINT", "https://c:1")]), "https://c:1/v1/traces");
    assert!(parse(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "grpc://c:4318")]).is_err());
    assert!(parse(&[("TRACING_EXPORTER_PROTOCOL", "udp")]).is_err());
}

#[test]
fn tracing_bounds_have_safe_defaults_and_traces_settings_override() {
    let on = |pairs: &[(&str, &str)]| {
        let mut all = vec![("TRACING_ENABLED", "true")];
        all.extend_from_slice(pairs);
        parse(&all).unwrap().tracing.expect("tracing on")
    };
    let t = on(&[]);
    assert_eq!(t.timeout, Duration::from_secs(10));
    let batch = crate::trace::BatchOptions { delay: Duration::from_millis(500), max_batch: 512, queue: 2048 };
    assert_eq!(t.batch, batch);
    assert_eq!((t.headers, t.tls), (Default::default(), Default::default()));
    let t = on(&[
        ("OTEL_EXPORTER_OTLP_TIMEOUT", "3000"),
        ("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "250"),
        ("OTEL_EXPORTER_OTLP_CERTIFICATE", "/all.pem"),
        ("OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE", "/traces.pem"),
        ("OTEL_BSP_MAX_QUEUE_SIZE", "100"),
        ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "512"),
        ("OTEL_BSP_SCHEDULE_DELAY", "60000"),
    ]);
    assert_eq!((t.timeout, t.tls.ca), (Duration::from_millis(250), Some(PathBuf::from("/traces.pem"))));
    assert_eq!((t.batch.queue, t.batch.max_batch), (100, 100), "a batch is at most the queue");
    assert_eq!(t.batch.delay, Duration::from_secs(60));
    let err = parse(&[
        ("OTEL_EXPORTER_OTLP_TIMEOUT", "10s"),
        ("OTEL_BSP_MAX_QUEUE_SIZE", "0"),
        ("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE", "/c.pem"),
    ])
    .unwrap_err();
    assert_eq!(err.0.len(), 3, "{err}");
    assert!(err.0[0].starts_with("OTEL_EXPORTER_OTLP_CLIENT_KEY="), "{err}");
    assert!(err.0[1].contains("expected a whole number of milliseconds"), "{err}");
    assert!(err.0[2].starts_with("OTEL_BSP_MAX_QUEUE_SIZE=\"0\""), "{err}");
}

#[test]
fn otlp_headers_are_percent_decoded_and_bad_ones_named_without_their_values() {
    let headers = |pairs: &[(&str, &str)]| {
        let mut all = vec![("TRACING_ENABLED", "true")];
        all.extend_from_slice(pairs);
        parse(&all).map(|s| s.tracing.expect("tracing on").headers.0)
    };
    let pairs = |list: &[(&str, &str)]| list.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<Vec<_>>();
    assert_eq!(
        headers(&[("OTEL_EXPORTER_OTLP_HEADERS", " API-Key = s3cret%3D%3D , x-tenant=a%2Cb,")]).unwrap(),
        pairs(&[("api-key", "s3cret=="), ("x-tenant", "a,b")])
    );
    let both = [("OTEL_EXPORTER_OTLP_HEADERS", "a=1"), ("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "b=2,b=3")];
    assert_eq!(headers(&both).unwrap(), pairs(&[("b", "3")]), "the traces list replaces; a later key wins");
    for (bad, reason) in [
        ("api-key=s3cret,novalue", "entry 2 has no '='"),
        ("api-key=s3cret%zz", "entry 1 (api-key): the value has a % not followed by two hex digits"),
        ("api-key=s3cret%0D%0Ax", "entry 1 (api-key): the value must be printable ASCII"),
        ("bad key=s3cret", "entry 1: \"bad key\" is not a header name"),
        ("content-length=s3cret", "entry 1: content-length is set by the exporter itself"),
        ("grpc-timeout=s3cret", "entry 1: grpc-timeout is set by the exporter itself"),
    ] {
        let err = headers(&[("OTEL_EXPORTER_OTLP_HEADERS", bad)]).unwrap_err().to_string();
        assert!(err.starts_with("OTEL_EXPORTER_OTLP_HEADERS=\"***\" is not valid: "), "{err}");
        assert!(err.contains(reason), "{bad}: {err}");
        assert!(!err.contains("s3cret"), "{err}");
    }
    let s = parse(&[("TRACING_ENABLED", "true"), ("OTEL_EXPORTER_OTLP_HEADERS", "api-key=s3cret")]).unwrap();
    assert!(!format!("{s:?}").contains("s3cret"), "header values are masked in Debug");
}

#[test]
fn tls_files_with_a_plain_endpoint_are_pointed_out() {
    let s = parse(&[("TRACING_ENABLED", "true"), ("OTEL_EXPORTER_OTLP_CERTIFICATE", "/ca.pem")]).unwrap();
    assert_eq!(s.warnings.len(), 1, "{:?}", s.warnings);
    assert!(s.warnings[0].contains("is plain http"), "{:?}", s.warnings);
}
