//! The xDS provider in deployment: the sluicegate binary with rules arriving over xDS
//! behind a real Envoy (the file-based Envoy test's `/` scenario), and the binary started
//! with Envoy Gateway's exact environment (examples/envoy-gateway/README.md) against the
//! in-test control plane, over TLS both ways, sending statsd lines and, with Envoy
//! Gateway's tracing variables, spans to an in-test OTLP collector.

mod common;

use std::io::{BufRead, BufReader};
use std::time::{Duration, Instant};

use common::TempDir;
use common::control_plane::{ControlPlane, ServerTls};
use common::envoy::{Envoy, get};
use common::process::{self, Running};
use common::test_ca::Ca;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::Code;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient;
use envoy_types::pb::ratelimit::config::ratelimit::v3::{
    RateLimitConfig, RateLimitDescriptor, RateLimitPolicy, RateLimitUnit,
};

fn index_limit(per_minute: u32) -> RateLimitConfig {
    let per_client = RateLimitDescriptor {
        key: "remote_address".into(),
        rate_limit: Some(RateLimitPolicy {
            unit: RateLimitUnit::Minute as i32,
            requests_per_unit: per_minute,
            ..Default::default()
        }),
        ..Default::default()
    };
    RateLimitConfig {
        name: "webapp".into(),
        domain: "webapp".into(),
        descriptors: vec![RateLimitDescriptor {
            key: "generic_key".into(),
            value: "index".into(),
            descriptors: vec![per_client],
            ..Default::default()
        }],
    }
}

fn spawn(env: &[(&str, &str)]) -> Running {
    let mut command = process::sluicegate();
    command.env_clear();
    for (k, v) in env {
        command.env(k, v);
    }
    process::spawn(command)
}

/// Waits out a minute window about to end, so a test's calls share one window.
#[allow(clippy::disallowed_methods)] // real Envoy and a real server: real time
fn within_one_minute() {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
    let left = 60.0 - now % 60.0;
    if left < 5.0 {
        std::thread::sleep(Duration::from_secs_f64(left + 0.01));
    }
}

fn poll(what: &str, within: Duration, mut check: impl FnMut() -> bool) {
    let start = Instant::now();
    while !check() {
        assert!(start.elapsed() < within, "{what}: not within {within:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn rules_pushed_over_xds_limit_traffic_through_a_real_envoy() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut cp = rt.block_on(ControlPlane::start(None));
    cp.push(&[index_limit(10)]);
    let url = cp.addr.to_string();
    let sluicegate = spawn(&[
        ("CONFIG_TYPE", "GRPC_XDS_SOTW"),
        ("CONFIG_GRPC_XDS_SERVER_URL", &url),
        ("HOST", "127.0.0.1"),
        ("PORT", "0"),
        ("GRPC_HOST", "127.0.0.1"),
        ("GRPC_PORT", "0"),
        ("DEBUG_HOST", "127.0.0.1"),
        ("DEBUG_PORT", "0"),
        ("SHUTDOWN_GRACE_PERIOD", "0"),
    ]);
    poll("rules from the control plane", Duration::from_secs(10), || {
        get(sluicegate.debug, "/rlconfig", &[]).body.contains("webapp.generic_key_index.remote_address")
    });
    let envoy = Envoy::start(sluicegate.grpc.port(), |c| c);
    within_one_minute();
    let client = [("x-forwarded-for", "10.9.0.1")];
    for i in 0..10 {
        assert_eq!(get(envoy.addr, "/", &client).status, 200, "request {i}");
    }
    assert_eq!(get(envoy.addr, "/", &client).status, 429);
    assert_eq!(get(envoy.addr, "/", &[("x-forwarded-for", "10.9.0.2")]).status, 200, "another client");

    // The control plane removes the limit: the next requests pass.
    cp.push(&[RateLimitConfig { name: "webapp".into(), domain: "webapp".into(), descriptors: vec![] }]);
    poll("the limit removed", Duration::from_secs(10), || get(envoy.addr, "/", &client).status == 200);
    drop(envoy);
    drop(sluicegate);
    rt.block_on(cp.stop());
}

/// Collects statsd lines sent over TCP (the reference's default protocol) to `port` on
/// every loopback address "localhost" may name.
fn statsd_listener() -> (u16, std::sync::mpsc::Receiver<String>) {
    let v4 = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = v4.local_addr().unwrap().port();
    let mut listeners = vec![v4];
    if let Ok(v6) = std::net::TcpListener::bind(("::1", port)) {
        listeners.push(v6);
    }
    let (tx, rx) = std::sync::mpsc::channel();
    for listener in listeners {
        let tx = tx.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().map_while(Result::ok) {
                let tx = tx.clone();
                std::thread::spawn(move || {
                    for line in BufReader::new(stream).lines().map_while(Result::ok) {
                        if tx.send(line).is_err() {
                            return;
                        }
                    }
                });
            }
        });
    }
    (port, rx)
}

#[test]
fn envoy_gateway_environment_serves_pushed_rules_over_tls_and_sends_statsd() {
    let ca = Ca::new("envoy-gateway test CA");
    let dir = TempDir::new("envoy-gateway");
    let ca_file = dir.write("ca.crt", &ca.pem()).display().to_string();
    let (cert, key) = ca.issue(&["envoy-ratelimit", "localhost"]);
    let cert_file = dir.write("tls.crt", &cert).display().to_string();
    let key_file = dir.write("tls.key", &key).display().to_string();
    let cp_pair = ca.issue(&["127.0.0.1"]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let tls = ServerTls { cert: cp_pair.0, key: cp_pair.1, client_ca: Some(ca.pem()) };
    let mut cp = rt.block_on(ControlPlane::start(Some(tls)));
    cp.push(&[index_limit(2)]);
    let url = cp.addr.to_string();
    let (statsd_port, statsd) = statsd_listener();
    let statsd_port = statsd_port.to_string();
    let collector = rt.block_on(common::otlp::http());
    let collector_url = format!("http://{}", collector.addr);

    // Envoy Gateway's environment (its rate limit Deployment), with local addresses:
    // only the listen addresses are added, so parallel tests do not fight over ports.
    let running = spawn(&[
        ("RUNTIME_ROOT", "/data"),
        ("RUNTIME_SUBDIRECTORY", "ratelimit"),
        ("RUNTIME_IGNOREDOTFILES", "true"),
        ("RUNTIME_WATCH_ROOT", "false"),
        ("LOG_LEVEL", "info"),
        ("USE_STATSD", "true"),
        ("STATSD_PORT", &statsd_port),
        ("CONFIG_TYPE", "GRPC_XDS_SOTW"),
        ("CONFIG_GRPC_XDS_SERVER_URL", &url),
        ("CONFIG_GRPC_XDS_NODE_ID", "envoy-ratelimit"),
        ("GRPC_SERVER_USE_TLS", "true"),
        ("GRPC_SERVER_TLS_CERT", &cert_file),
        ("GRPC_SERVER_TLS_KEY", &key_file),
        ("GRPC_SERVER_TLS_CA_CERT", &ca_file),
        ("CONFIG_GRPC_XDS_SERVER_USE_TLS", "true"),
        ("CONFIG_GRPC_XDS_CLIENT_TLS_CERT", &cert_file),
        ("CONFIG_GRPC_XDS_CLIENT_TLS_KEY", &key_file),
        ("CONFIG_GRPC_XDS_SERVER_TLS_CACERT", &ca_file),
        ("FORCE_START_WITHOUT_INITIAL_CONFIG", "true"),
        ("REDIS_SOCKET_TYPE", "tcp"),
        ("REDIS_URL", "127.0.0.1:1"),
        // What Envoy Gateway adds with `rateLimit.telemetry.tracing` set.
        ("TRACING_ENABLED", "true"),
        ("TRACING_SERVICE_NAME", "envoy-ratelimit"),
        ("TRACING_SERVICE_NAMESPACE", "envoy-gateway-system"),
        ("TRACING_SERVICE_INSTANCE_ID", "envoy-ratelimit-5d8f7c9b4-x2x7q"),
        ("TRACING_SAMPLING_RATE", "1.0"),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", &collector_url),
        ("HOST", "127.0.0.1"),
        ("PORT", "0"),
        ("GRPC_HOST", "127.0.0.1"),
        ("GRPC_PORT", "0"),
        ("DEBUG_HOST", "127.0.0.1"),
        ("DEBUG_PORT", "0"),
    ]);
    poll("ready on /healthcheck", Duration::from_secs(15), || get(running.http, "/healthcheck", &[]).status == 200);
    let start = Instant::now();
    while !get(running.debug, "/rlconfig", &[]).body.contains("webapp.generic_key_index") {
        if start.elapsed() > Duration::from_secs(15) {
            let logs: Vec<String> = running.lines.try_iter().collect();
            panic!("no rules over TLS within 15s; the log:\n{}", logs.join("\n"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let requests = cp.requests();
    assert_eq!(requests[0].request.node.as_ref().unwrap().id, "envoy-ratelimit");

    rt.block_on(async {
        let tls = tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(ca.pem()))
            .domain_name("envoy-ratelimit");
        let channel = tonic::transport::Channel::from_shared(format!("https://{}", running.grpc))
            .unwrap()
            .tls_config(tls)
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut client = RateLimitServiceClient::new(channel);
        let call = common::request("webapp", &[&[("generic_key", "index"), ("remote_address", "10.0.0.1")]]);
        let mut codes = Vec::new();
        for _ in 0..3 {
            codes.push(client.should_rate_limit(call.clone()).await.unwrap().into_inner().overall_code());
        }
        assert_eq!(codes, [Code::Ok, Code::Ok, Code::OverLimit]);
        let three_spans = async || collector.spans().len() >= 3;
        common::poll::poll_until("a span per call at the collector", Duration::from_secs(15), three_spans).await;
    });
    let spans = collector.spans();
    assert!(spans.iter().all(|s| s.attributes.iter().any(|a| a.key == "domain")), "{spans:?}");

    // The reference's statsd names, flushed every STATS_FLUSH_INTERVAL (10s by default).
    let wanted = "ratelimit.service.rate_limit.webapp.generic_key_index.remote_address.over_limit:1|c";
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut lines = Vec::new();
    while !lines.iter().any(|l: &String| l == wanted) {
        let left = deadline.saturating_duration_since(Instant::now());
        match statsd.recv_timeout(left) {
            Ok(line) => lines.push(line),
            Err(_) => panic!("no {wanted} within 30s; statsd got {lines:?}"),
        }
    }
    drop(running);
    rt.block_on(cp.stop());
}
