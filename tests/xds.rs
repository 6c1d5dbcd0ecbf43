//! The xDS config provider (`CONFIG_TYPE=GRPC_XDS_SOTW`) against an in-test control plane
//! (tests/common/control_plane.rs): pushed rules served and ACKed, updates adding,
//! changing and removing domains (`/rlconfig` then prints what the file loader prints for
//! the same rules, and counters of unchanged rules keep their counts), bad updates NACKed
//! with every error while the old rules answer, a lost control plane (rules stay, the
//! client re-subscribes after its backoff), mutual TLS, and the message size cap.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::control_plane::{ControlPlane, ServerTls};
use common::test_ca::Ca;
use common::{TempDir, http, request};
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::Code;
use envoy_types::pb::ratelimit::config::ratelimit::v3::{
    RateLimitConfig, RateLimitDescriptor, RateLimitPolicy, RateLimitUnit,
};
use sluicegate::app::Server;
use sluicegate::clock::FakeClock;
use sluicegate::settings::Settings;

const WITHIN: Duration = Duration::from_secs(10);

struct Running {
    grpc: SocketAddr,
    debug: SocketAddr,
    http: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        let _ = tokio::time::timeout(WITHIN, self.task).await;
    }

    async fn rlconfig(&self) -> String {
        http(self.debug, "GET", "/rlconfig", "").await.1
    }

    async fn code(&self, domain: &str, entries: &[(&str, &str)]) -> Result<Code, tonic::Code> {
        let mut client = common::connect(self.grpc).await;
        match client.should_rate_limit(request(domain, &[entries])).await {
            Ok(r) => Ok(r.into_inner().overall_code()),
            Err(status) => Err(status.code()),
        }
    }

    async fn wait_rlconfig(&self, what: &str, check: impl Fn(&str) -> bool) -> String {
        let start = Instant::now();
        loop {
            let text = self.rlconfig().await;
            if check(&text) {
                return text;
            }
            assert!(start.elapsed() < WITHIN, "{what}: not within {WITHIN:?}; /rlconfig:\n{text}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Starts sluicegate in this process, subscribed to `cp`, with extra settings.
async fn start(cp: &ControlPlane, extra: &[(&str, &str)]) -> Running {
    let url = cp.addr.to_string();
    let mut vars = vec![
        ("CONFIG_TYPE", "GRPC_XDS_SOTW"),
        ("CONFIG_GRPC_XDS_SERVER_URL", url.as_str()),
        ("CONFIG_GRPC_XDS_NODE_ID", "test-node"),
        ("CONFIG_GRPC_XDS_SERVER_CONNECT_RETRY_INTERVAL", "100ms"),
        ("XDS_CLIENT_BACKOFF_INITIAL_INTERVAL", "200ms"),
        ("XDS_CLIENT_BACKOFF_MAX_INTERVAL", "1s"),
        ("FORCE_START_WITHOUT_INITIAL_CONFIG", "true"),
    ];
    vars.extend_from_slice(extra);
    let settings = Settings::for_tests_with(vec![], &vars).unwrap();
    let started = Server::start_with_clock(settings, FakeClock::at_secs(1_000_000).into()).unwrap();
    let (grpc, http, debug) = (started.grpc_addr.unwrap(), started.http_addr, started.debug_addr);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let _ = started
            .run(async {
                let _ = stopped.await;
            })
            .await;
    });
    Running { grpc, debug, http, stop: Some(stop), task }
}

fn limit(key: &str, value: &str, unit: RateLimitUnit, n: u32) -> RateLimitDescriptor {
    RateLimitDescriptor {
        key: key.into(),
        value: value.into(),
        rate_limit: Some(RateLimitPolicy { unit: unit as i32, requests_per_unit: n, ..Default::default() }),
        ..Default::default()
    }
}

fn domain(name: &str, descriptors: Vec<RateLimitDescriptor>) -> RateLimitConfig {
    RateLimitConfig { name: name.into(), domain: name.into(), descriptors }
}

/// What the file loader prints on /rlconfig for `files`.
async fn rlconfig_of_files(files: &[(&str, &str)]) -> String {
    let server = common::start(files, &[], 1_000_000).await;
    let text = http(server.debug, "GET", "/rlconfig", "").await.1;
    server.stop().await;
    text
}

#[tokio::test]
async fn pushed_rules_are_acked_served_updated_and_keep_their_counters() {
    let mut cp = ControlPlane::start(None).await;
    let v1 = cp.push(&[domain("a", vec![limit("k", "v", RateLimitUnit::Minute, 2)])]);
    let t0 = Instant::now();
    let server = start(&cp, &[("CONFIG_GRPC_XDS_CLIENT_ADDITIONAL_HEADERS", "x-team:rl,x-env=test")]).await;
    server.wait_rlconfig("the initial push", |t| t.contains("a.k_v: unit=MINUTE")).await;

    // The subscription, then the ACK: version and nonce of the response.
    let requests = cp.requests();
    let first = &requests[0].request;
    assert_eq!(first.type_url, common::control_plane::TYPE_URL);
    assert_eq!(first.node.as_ref().unwrap().id, "test-node");
    assert!(first.resource_names.is_empty() && first.response_nonce.is_empty(), "{first:?}");
    let ack = cp.reply_since(t0).await;
    assert_eq!((ack.version_info.as_str(), ack.response_nonce.as_str()), (v1.as_str(), "1-1"));
    assert!(ack.error_detail.is_none(), "{ack:?}");
    let headers = cp.headers(1);
    assert!(headers.contains(&("x-team".into(), "rl".into())) && headers.contains(&("x-env".into(), "test".into())));

    assert_eq!(server.code("a", &[("k", "v")]).await, Ok(Code::Ok));
    assert_eq!(server.code("a", &[("k", "v")]).await, Ok(Code::Ok));
    assert_eq!(server.code("a", &[("k", "v")]).await, Ok(Code::OverLimit));

    // Adding a domain leaves a's rule, and its counter, as they were.
    let t1 = Instant::now();
    let v2 = cp.push(&[
        domain("a", vec![limit("k", "v", RateLimitUnit::Minute, 2)]),
        domain("b", vec![limit("x", "", RateLimitUnit::Hour, 7)]),
    ]);
    server.wait_rlconfig("adding b", |t| t.contains("b.x: unit=HOUR requests_per_unit=7")).await;
    assert_eq!(cp.reply_since(t1).await.version_info, v2);
    assert_eq!(server.code("a", &[("k", "v")]).await, Ok(Code::OverLimit), "the counter of an unchanged rule stays");

    // Changing a and removing b: /rlconfig is what the file loader prints.
    let v3 = cp
        .push(&[domain("a", vec![limit("k", "v", RateLimitUnit::Second, 5), limit("k2", "", RateLimitUnit::Day, 1)])]);
    let text = server.wait_rlconfig("changing a, removing b", |t| !t.contains("b.x") && t.contains("a.k2")).await;
    let file = "domain: a\ndescriptors:\n  - key: k\n    value: v\n    rate_limit: {unit: second, requests_per_unit: 5}\n  - key: k2\n    rate_limit: {unit: day, requests_per_unit: 1}\n";
    assert_eq!(text, rlconfig_of_files(&[("a.yaml", file)]).await);
    assert_eq!(server.code("b", &[("x", "1")]).await, Ok(Code::Ok), "b is gone: no limit");
    assert!(cp.requests().iter().any(|r| r.request.version_info == v3));
    server.stop().await;
    cp.stop().await;
}

#[tokio::test]
async fn a_bad_update_is_nacked_with_every_error_and_the_old_rules_keep_answering() {
    let mut cp = ControlPlane::start(None).await;
    let good = cp.push(&[domain("a", vec![limit("k", "v", RateLimitUnit::Minute, 1)])]);
    let t0 = Instant::now();
    let server = start(&cp, &[]).await;
    server.wait_rlconfig("the first push", |t| t.contains("a.k_v")).await;
    assert_eq!(cp.reply_since(t0).await.version_info, good, "the first push is ACKed");

    let t = Instant::now();
    let bad_unit = limit("k", "v", RateLimitUnit::Unknown, 3);
    let duplicate = limit("k", "v", RateLimitUnit::Hour, 3);
    let bad = cp.push(&[domain("a", vec![bad_unit]), domain("c", vec![duplicate.clone(), duplicate])]);
    let nack = cp.reply_since(t).await;
    assert_eq!(nack.version_info, good, "a NACK carries the version in force");
    assert_ne!(nack.version_info, bad);
    let detail = nack.error_detail.expect("a NACK has an error_detail");
    assert_eq!(detail.code, 3, "INVALID_ARGUMENT");
    assert!(detail.message.contains("xds:a:"), "{}", detail.message);
    assert!(detail.message.contains("xds:c:"), "{}", detail.message);
    assert!(detail.message.lines().count() >= 2, "every error: {}", detail.message);

    // The old rules answer.
    assert!(server.rlconfig().await.contains("a.k_v: unit=MINUTE requests_per_unit=1"));
    assert_eq!(server.code("a", &[("k", "v")]).await, Ok(Code::Ok));
    assert_eq!(server.code("a", &[("k", "v")]).await, Ok(Code::OverLimit));
    let (_, debug) = http(server.debug, "GET", "/debug/config", "").await;
    assert!(debug.contains("xds:c:"), "the failure shows on /debug/config: {debug}");

    // A good update after a bad one is ACKed.
    let t = Instant::now();
    let fixed = cp.push(&[domain("a", vec![limit("k", "v", RateLimitUnit::Minute, 9)])]);
    let ack = cp.reply_since(t).await;
    assert_eq!((ack.version_info, ack.error_detail), (fixed, None));
    server.stop().await;
    cp.stop().await;
}

#[tokio::test]
async fn rules_survive_a_lost_control_plane_and_the_client_resubscribes_after_its_backoff() {
    let mut cp = ControlPlane::start(None).await;
    cp.push(&[domain("a", vec![limit("k", "v", RateLimitUnit::Minute, 1)])]);
    let server =
        start(&cp, &[("XDS_CLIENT_BACKOFF_INITIAL_INTERVAL", "1s"), ("XDS_CLIENT_BACKOFF_JITTER", "false")]).await;
    server.wait_rlconfig("the first push", |t| t.contains("a.k_v")).await;
    assert_eq!(cp.streams(), 1);

    let lost = Instant::now();
    cp.stop().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(server.rlconfig().await.contains("a.k_v"), "the rules stay");
    assert_eq!(server.code("a", &[("k", "v")]).await, Ok(Code::Ok));
    assert_eq!(server.code("a", &[("k", "v")]).await, Ok(Code::OverLimit));

    cp.restart().await;
    cp.push(&[
        domain("a", vec![limit("k", "v", RateLimitUnit::Minute, 1)]),
        domain("z", vec![limit("q", "", RateLimitUnit::Hour, 4)]),
    ]);
    server.wait_rlconfig("rules after the restart", |t| t.contains("z.q: unit=HOUR")).await;
    let requests = cp.requests();
    let resubscribed = requests.iter().find(|r| r.stream == 2).expect("a second stream");
    let waited = resubscribed.at - lost;
    assert!(waited >= Duration::from_millis(950), "reconnected after {waited:?}, before the 1s backoff");
    assert!(resubscribed.request.version_info == "1", "the re-subscription names the version in force");
    assert_eq!(server.code("a", &[("k", "v")]).await, Ok(Code::OverLimit), "counters survive the reconnect");
    server.stop().await;
    cp.stop().await;
}

#[tokio::test]
async fn with_force_start_it_is_ready_at_once_and_calls_are_unavailable_until_the_first_config() {
    let cp = ControlPlane::start(None).await;
    let server = start(&cp, &[]).await;
    assert_eq!(server.code("a", &[("k", "v")]).await, Err(tonic::Code::Unavailable));
    let (status, _) = http(server.http, "GET", "/healthcheck", "").await;
    assert_eq!(status, 200, "ready at once (Envoy Gateway's readiness probe)");
    server.stop().await;
}

fn write_pair(dir: &TempDir, name: &str, pair: (String, String)) -> (String, String) {
    let cert = dir.write(&format!("{name}.crt"), &pair.0);
    let key = dir.write(&format!("{name}.key"), &pair.1);
    (cert.display().to_string(), key.display().to_string())
}

#[tokio::test]
async fn mutual_tls_with_the_test_ca_works_and_a_wrong_ca_is_refused() {
    let ca = Ca::new("xds test CA");
    let dir = TempDir::new("xds-tls");
    let ca_file = dir.write("ca.pem", &ca.pem()).display().to_string();
    let (client_cert, client_key) = write_pair(&dir, "client", ca.issue(&["sluicegate"]));
    let server_pair = ca.issue(&["control-plane.test"]);
    let tls = ServerTls { cert: server_pair.0, key: server_pair.1, client_ca: Some(ca.pem()) };
    let mut cp = ControlPlane::start(Some(tls)).await;
    cp.push(&[domain("a", vec![limit("k", "v", RateLimitUnit::Minute, 1)])]);
    let tls_vars = |ca: &str| {
        vec![
            ("CONFIG_GRPC_XDS_SERVER_USE_TLS", "true".to_string()),
            ("CONFIG_GRPC_XDS_CLIENT_TLS_CERT", client_cert.clone()),
            ("CONFIG_GRPC_XDS_CLIENT_TLS_KEY", client_key.clone()),
            ("CONFIG_GRPC_XDS_SERVER_TLS_CACERT", ca.to_string()),
            ("CONFIG_GRPC_XDS_SERVER_TLS_SAN", "control-plane.test".to_string()),
        ]
    };
    let vars = tls_vars(&ca_file);
    let vars: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let server = start(&cp, &vars).await;
    server.wait_rlconfig("rules over mutual TLS", |t| t.contains("a.k_v")).await;
    server.stop().await;

    let wrong = Ca::new("another CA");
    let wrong_file = dir.write("wrong.pem", &wrong.pem()).display().to_string();
    let streams = cp.streams();
    let vars = tls_vars(&wrong_file);
    let vars: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let refused = start(&cp, &vars).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(refused.rlconfig().await, "", "no rules from a server whose certificate the CA did not issue");
    assert_eq!(cp.streams(), streams, "no stream was opened");
    refused.stop().await;
    cp.stop().await;
}

#[tokio::test]
async fn a_response_over_the_size_cap_is_refused_and_the_rules_in_force_stay() {
    let mut cp = ControlPlane::start(None).await;
    cp.push(&[domain("a", vec![limit("k", "v", RateLimitUnit::Minute, 1)])]);
    let t0 = Instant::now();
    let server = start(&cp, &[("XDS_CLIENT_MAX_MSG_SIZE_IN_BYTES", "4096")]).await;
    server.wait_rlconfig("the first push", |t| t.contains("a.k_v")).await;
    cp.reply_since(t0).await;

    let t = Instant::now();
    let big: Vec<RateLimitDescriptor> =
        (0..200).map(|i| limit("key", &format!("value-{i:04}"), RateLimitUnit::Hour, 1)).collect();
    cp.push(&[domain("a", big)]);
    // The stream breaks (the client re-subscribes), nothing is ACKed, the rules stay.
    let start_wait = Instant::now();
    while cp.streams() < 2 {
        assert!(start_wait.elapsed() < WITHIN, "the client did not re-subscribe");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(cp.replies_since(t).is_empty(), "{:?}", cp.replies_since(t));
    let text = server.rlconfig().await;
    assert!(text.contains("a.k_v: unit=MINUTE") && !text.contains("value-0001"), "{text}");
    server.stop().await;
    cp.stop().await;
}

#[tokio::test]
async fn without_force_start_nothing_answers_until_the_first_config() {
    let mut cp = ControlPlane::start(None).await;
    let server = start(&cp, &[("FORCE_START_WITHOUT_INITIAL_CONFIG", "false")]).await;
    let early = tokio::time::timeout(Duration::from_millis(500), http(server.http, "GET", "/healthcheck", "")).await;
    assert!(early.is_err(), "answered before the first config: {early:?}");
    cp.push(&[domain("a", vec![limit("k", "v", RateLimitUnit::Minute, 1)])]);
    let start = Instant::now();
    while http(server.http, "GET", "/healthcheck", "").await.0 != 200 {
        assert!(start.elapsed() < WITHIN, "not serving after the first config");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(server.code("a", &[("k", "v")]).await, Ok(Code::Ok));
    server.stop().await;
    cp.stop().await;
}

#[test]
fn xds_settings_have_the_reference_names_and_defaults() {
    use sluicegate::xds::{Backoff, XdsOptions};
    let source: std::collections::HashMap<&str, &str> = [("CONFIG_TYPE", "grpc_xds_sotw")].into_iter().collect();
    let settings = Settings::parse(&source, vec![]).expect("no RUNTIME_SUBDIRECTORY needed with xDS");
    assert_eq!(
        settings.xds,
        Some(XdsOptions {
            node_id: "default".into(),
            node_metadata: vec![],
            server_url: "localhost:18000".into(),
            connect_retry_interval: Duration::from_secs(3),
            additional_headers: vec![],
            tls: None,
            backoff: Backoff {
                initial: Duration::from_secs(10),
                max: Duration::from_secs(60),
                random_factor: 0.5,
                jitter: true,
            },
            max_msg_size: 4 * 1024 * 1024,
        })
    );
    let source: std::collections::HashMap<&str, &str> = [
        ("CONFIG_TYPE", "GRPC_XDS_SOTW"),
        ("CONFIG_GRPC_XDS_SERVER_USE_TLS", "true"),
        ("CONFIG_GRPC_XDS_CLIENT_TLS_CERT", "/certs/tls.crt"),
        ("XDS_CLIENT_BACKOFF_RANDOM_FACTOR", "2"),
        ("CONFIG_GRPC_XDS_NODE_METADATA", "novalue"),
    ]
    .into_iter()
    .collect();
    let errors = Settings::parse(&source, vec![]).unwrap_err().0;
    assert_eq!(errors.len(), 3, "{errors:?}");
    assert!(errors.iter().any(|e| e.contains("CONFIG_GRPC_XDS_CLIENT_TLS_KEY go together")), "{errors:?}");
    assert!(errors.iter().any(|e| e.starts_with("XDS_CLIENT_BACKOFF_RANDOM_FACTOR=\"2\"")), "{errors:?}");
    assert!(errors.iter().any(|e| e.starts_with("CONFIG_GRPC_XDS_NODE_METADATA=")), "{errors:?}");
    let file = Settings::parse(&std::collections::HashMap::<&str, &str>::new(), vec!["rules".into()]).unwrap();
    assert!(file.xds.is_none(), "FILE is the default");
}
