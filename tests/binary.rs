//! The built binary, started the way the reference's integration tests start theirs:
//! its environment variables and a `RUNTIME_ROOT/RUNTIME_SUBDIRECTORY/config` directory;
//! stopped by signals, with the spans still queued sent before it exits.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::process::{exit_and_stderr, loopback, reference_env, sigterm, sluicegate, spawn, wait_exit};
use common::{OK, OVER, TempDir, connect, http, otlp, request};

const RULES: &str = r#"
domain: basic
descriptors:
  - key: key1
    rate_limit: {unit: second, requests_per_unit: 50}
  - key: one_per_minute
    rate_limit: {unit: minute, requests_per_unit: 1}
"#;

const ANOTHER: &str = r#"
domain: another
descriptors:
  - key: key2
    rate_limit: {unit: minute, requests_per_unit: 20}
"#;

#[tokio::test]
async fn serves_the_reference_layout_over_grpc_and_json_then_stops_on_sigterm() {
    let root = TempDir::new("binary");
    root.write("ratelimit/config/basic.yaml", RULES);
    root.write("ratelimit/config/sub/another.yaml", ANOTHER);
    let mut command = sluicegate();
    reference_env(&mut command, root.path());
    let mut running = spawn(command);

    let mut client = connect(running.grpc).await;
    let r = client.should_rate_limit(request("basic", &[&[("key1", "foo")]])).await.unwrap().into_inner();
    assert_eq!(
        (r.overall_code, r.statuses[0].limit_remaining),
        (OK, 49),
        "a first call at 50/s leaves 49 (reference case I2, docs/compatibility.md)"
    );
    for i in 0..25u32 {
        let r = client.should_rate_limit(request("another", &[&[("key2", "r1")]])).await.unwrap().into_inner();
        let expected = if i < 20 { OK } else { OVER };
        assert_eq!(r.overall_code, expected, "20/min: the first 20 calls OK, then over (reference case I3), call {i}");
        assert_eq!(r.statuses[0].limit_remaining, 19u32.saturating_sub(i), "call {i}");
    }
    let r = client.should_rate_limit(request("foo", &[&[("hello", "world")]])).await.unwrap().into_inner();
    assert_eq!(r.overall_code, OK, "an unknown domain is OK, with no limit (reference case I1)");

    let body = r#"{"domain":"basic","descriptors":[{"entries":[{"key":"one_per_minute","value":"x"}]}]}"#;
    assert_eq!(http(running.http, "POST", "/json", body).await.0, 200);
    assert_eq!(http(running.http, "POST", "/json", body).await.0, 429);
    assert_eq!(http(running.http, "GET", "/healthcheck", "").await, (200, "OK".into()));
    let (_, rlconfig) = http(running.debug, "GET", "/rlconfig", "").await;
    assert!(rlconfig.contains("another.key2: unit=MINUTE requests_per_unit=20"), "{rlconfig}");

    sigterm(&running.child);
    let status = wait_exit(&mut running.child, Duration::from_secs(15));
    assert_eq!(status.code(), Some(0));
    let rest: Vec<String> = running.lines.try_iter().collect();
    assert!(rest.iter().any(|l| l.contains("received SIGTERM")), "{rest:?}");
}

#[tokio::test]
async fn sigterm_lets_in_flight_calls_finish() {
    let root = TempDir::new("binary-inflight");
    root.write("ratelimit/config/basic.yaml", RULES);
    let mut command = sluicegate();
    reference_env(&mut command, root.path());
    command.env("SHUTDOWN_GRACE_PERIOD", "1s");
    let mut running = spawn(command);
    let client = connect(running.grpc).await;
    let calls: Vec<_> = (0..200)
        .map(|i| {
            let mut c = client.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(i * 4)).await;
                c.should_rate_limit(request("basic", &[&[("key1", "k")]])).await
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(100)).await;
    sigterm(&running.child);
    for call in calls {
        let response = call.await.unwrap();
        assert!(response.is_ok(), "a call during the grace period failed: {response:?}");
    }
    assert_eq!(wait_exit(&mut running.child, Duration::from_secs(15)).code(), Some(0));
}

#[test]
fn every_bad_setting_is_named_and_the_exit_code_is_64() {
    let output = sluicegate()
        .env_clear()
        .env("PORT", "eighty")
        .env("SHADOW_MODE", "maybe")
        .env("RUNTIME_SUBDIRECTORY", "ratelimit")
        .arg("--grpc-port=70000")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("PORT=\"eighty\" is not valid"), "{stderr}");
    assert!(stderr.contains("--grpc-port=\"70000\" is not valid"), "{stderr}");
    assert!(stderr.contains("SHADOW_MODE=\"maybe\" is not valid"), "{stderr}");
}

#[test]
fn a_bad_redis_url_is_named_without_its_password() {
    for url in ["redis://app:s3cret/x@redis:6379", "app:s3cret@redis:6379"] {
        let mut command =
            loopback(Path::new("config"), &[("BACKEND_TYPE", "redis"), ("REDIS_URL", url), ("REDIS_AUTH", "s3cret")]);
        command.args(["--redis-persecond", "true", "--redis-persecond-url", url]);
        // Bounded: a URL taken for valid would start a server.
        let (code, stderr) = exit_and_stderr(command);
        assert_eq!(code, Some(64), "{stderr}");
        assert!(stderr.contains("REDIS_URL=\"") && stderr.contains("--redis-persecond-url=\""), "{stderr}");
        assert!(!stderr.contains("s3cret"), "{stderr}");
    }
}

#[test]
fn an_empty_runtime_subdirectory_is_a_clear_start_up_error() {
    let output = sluicegate().env_clear().output().unwrap();
    assert_eq!(output.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&output.stderr).contains("RUNTIME_SUBDIRECTORY=\"\" is not valid"));
}

#[test]
fn a_broken_rule_file_stops_start_up_with_its_position() {
    let root = TempDir::new("binary-bad");
    root.write(
        "rules/bad.yaml",
        "domain: d\ndescriptors:\n  - key: k\n    rate_limit: {unit: fortnight, requests_per_unit: 1}\n",
    );
    let (code, stderr) = exit_and_stderr(loopback(&root.path().join("rules"), &[]));
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("bad.yaml:4:24: invalid rate limit unit 'fortnight'"), "{stderr}");
}

#[test]
fn a_taken_port_fails_start_up() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let root = TempDir::new("binary-port");
    root.write("rules/ok.yaml", RULES);
    let (code, stderr) = exit_and_stderr(loopback(&root.path().join("rules"), &[("PORT", &port)]));
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains(&format!("cannot listen for HTTP on 127.0.0.1:{port}")), "{stderr}");
}

#[test]
fn help_and_version_exit_zero() {
    let help = sluicegate().arg("--help").output().unwrap();
    assert_eq!(help.status.code(), Some(0));
    let text = String::from_utf8_lossy(&help.stdout);
    assert!(text.contains("--grpc-port") && text.contains("[env: GRPC_PORT]"), "{text}");
    let version = sluicegate().arg("--version").output().unwrap();
    assert_eq!(version.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&version.stdout).starts_with("sluicegate "));
}

#[tokio::test]
async fn sigint_stops_the_service_cleanly_too() {
    let root = TempDir::new("binary-sigint");
    root.write("ratelimit/config/basic.yaml", RULES);
    let mut command = sluicegate();
    reference_env(&mut command, root.path());
    let mut running = spawn(command);
    let mut client = connect(running.grpc).await;
    let r = client.should_rate_limit(request("basic", &[&[("key1", "x")]])).await.unwrap().into_inner();
    assert_eq!(r.overall_code, OK);
    let status = Command::new("kill").arg("-INT").arg(running.child.id().to_string()).status().unwrap();
    assert!(status.success());
    assert_eq!(wait_exit(&mut running.child, Duration::from_secs(15)).code(), Some(0));
    let rest: Vec<String> = running.lines.try_iter().collect();
    assert!(rest.iter().any(|l| l.contains("received SIGINT")), "{rest:?}");
}

/// The binary in the reference layout with tracing to `endpoint`, a batch delay of a
/// minute (so only the flush at shutdown can send the spans of a short test), and `env`.
fn traced(root: &TempDir, protocol: &str, endpoint: &str, env: &[(&str, &str)]) -> Command {
    root.write("ratelimit/config/basic.yaml", RULES);
    let mut command = sluicegate();
    reference_env(&mut command, root.path());
    command
        .env("TRACING_ENABLED", "true")
        .env("TRACING_EXPORTER_PROTOCOL", protocol)
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)
        .env("OTEL_BSP_SCHEDULE_DELAY", "60000");
    command.envs(env.iter().copied());
    command
}

/// Sends SIGTERM and waits (off the runtime, which the receiver needs) for the exit.
async fn sigterm_and_wait(running: common::process::Running) -> (std::process::ExitStatus, Vec<String>) {
    sigterm(&running.child);
    tokio::task::spawn_blocking(move || {
        let mut running = running;
        let status = wait_exit(&mut running.child, Duration::from_secs(20));
        // Its last lines may still be on their way from the reader thread: read until it
        // ends (stderr closed), within a bound.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let mut lines = Vec::new();
        while let Ok(line) = running.lines.recv_timeout(deadline.saturating_duration_since(std::time::Instant::now())) {
            lines.push(line);
        }
        (status, lines)
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_sends_the_spans_still_queued_before_exiting() {
    for protocol in ["grpc", "http"] {
        let receiver = if protocol == "grpc" { otlp::grpc().await } else { otlp::http().await };
        let root = TempDir::new("binary-flush");
        let running = spawn(traced(&root, protocol, &format!("http://{}", receiver.addr), &[]));
        let mut client = connect(running.grpc).await;
        for _ in 0..3 {
            client.should_rate_limit(request("basic", &[&[("key1", "foo")]])).await.unwrap();
        }
        assert!(receiver.spans().is_empty(), "{protocol}: nothing is sent before the batch delay or shutdown");
        let (status, _) = sigterm_and_wait(running).await;
        assert_eq!(status.code(), Some(0), "{protocol}");
        assert_eq!(receiver.spans().len(), 3, "{protocol}: the queued spans were sent at shutdown");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_that_never_answers_holds_shutdown_only_for_the_export_timeout() {
    // Accepts connections and never answers.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", silent.local_addr().unwrap());
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((stream, _)) = silent.accept().await {
            open.push(stream);
        }
    });
    let root = TempDir::new("binary-flush-timeout");
    let running = spawn(traced(&root, "http", &endpoint, &[("OTEL_EXPORTER_OTLP_TIMEOUT", "1000")]));
    let mut client = connect(running.grpc).await;
    client.should_rate_limit(request("basic", &[&[("key1", "foo")]])).await.unwrap();
    let started = std::time::Instant::now();
    let (status, lines) = sigterm_and_wait(running).await;
    assert_eq!(status.code(), Some(0));
    assert!(started.elapsed() < Duration::from_secs(10), "stopped after {:?}", started.elapsed());
    assert!(lines.iter().any(|l| l.contains("spans")), "the lost spans are logged: {lines:?}");
    held.abort();
}

#[test]
fn an_unreadable_otlp_ca_file_stops_start_up_naming_it() {
    let root = TempDir::new("binary-otlp-ca");
    let missing = root.path().join("missing-ca.pem");
    let mut command = traced(&root, "http", "https://127.0.0.1:4318", &[]);
    command.env("OTEL_EXPORTER_OTLP_CERTIFICATE", &missing);
    let (code, stderr) = exit_and_stderr(command);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains(&format!("cannot export traces: {}", missing.display())), "{stderr}");
}
