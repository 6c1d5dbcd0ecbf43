//! Running it: hot reload (edits, new and deleted files, ConfigMap symlink swaps, the
//! reference layout's two modes), a broken push, health, metrics, `/debug/config`, the
//! `validate` and `explain` commands, JSON logs. Spawns the built binary.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::poll::eventually;
use common::process::{Running, sigterm, sluicegate, spawn, start, stop, wait_exit};
use common::{OK, TempDir, connect, http, request, request_with_hits};

fn rules(domain: &str, key: &str, rpu: u32) -> String {
    format!(
        "domain: {domain}\ndescriptors:\n  - key: {key}\n    rate_limit: {{unit: hour, requests_per_unit: {rpu}}}\n"
    )
}

/// The `requests_per_unit` a descriptor is limited by now (None: no limit).
async fn limit(running: &Running, domain: &str, entries: &[(&str, &str)]) -> Option<u32> {
    let mut client = connect(running.grpc).await;
    let r = client.should_rate_limit(request_with_hits(domain, entries, 0)).await.unwrap().into_inner();
    r.statuses[0].current_limit.as_ref().map(|l| l.requests_per_unit)
}

#[tokio::test]
async fn reload_follows_edits_and_new_and_deleted_files() {
    let dir = TempDir::new("reload-edit");
    dir.write("a.yaml", &rules("a", "k", 5));
    let running = start(dir.path(), &[]);
    assert_eq!(limit(&running, "a", &[("k", "x")]).await, Some(5));

    dir.write("a.yaml", &rules("a", "k", 7));
    eventually("an in-place edit", || async { limit(&running, "a", &[("k", "x")]).await == Some(7) }).await;

    dir.write("sub/b.yaml", &rules("b", "k", 3));
    eventually("a new file", || async { limit(&running, "b", &[("k", "x")]).await == Some(3) }).await;

    std::fs::remove_file(dir.path().join("sub/b.yaml")).unwrap();
    eventually("a deleted file", || async { limit(&running, "b", &[("k", "x")]).await.is_none() }).await;
    assert_eq!(limit(&running, "a", &[("k", "x")]).await, Some(7));
    stop(running);
}

#[tokio::test]
async fn reload_follows_a_configmap_symlink_swap() {
    // The layout Kubernetes gives a mounted ConfigMap: files are symlinks through
    // `..data`, itself a symlink to a timestamped directory swapped on every update.
    let dir = TempDir::new("reload-configmap");
    let mount = dir.path();
    dir.write("..2026_11_28_00_00_00.1/rules.yaml", &rules("cm", "k", 10));
    std::os::unix::fs::symlink("..2026_11_28_00_00_00.1", mount.join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/rules.yaml", mount.join("rules.yaml")).unwrap();
    let running = start(mount, &[]);
    assert_eq!(limit(&running, "cm", &[("k", "x")]).await, Some(10), "loaded once, not through ..data too");

    dir.write("..2026_11_28_00_01_00.2/rules.yaml", &rules("cm", "k", 20));
    std::os::unix::fs::symlink("..2026_11_28_00_01_00.2", mount.join("..data_tmp")).unwrap();
    std::fs::rename(mount.join("..data_tmp"), mount.join("..data")).unwrap();
    std::fs::remove_dir_all(mount.join("..2026_11_28_00_00_00.1")).unwrap();
    eventually("the ..data swap", || async { limit(&running, "cm", &[("k", "x")]).await == Some(20) }).await;
    stop(running);
}

#[tokio::test]
async fn a_broken_push_keeps_the_old_rules_and_is_counted_and_shown() {
    let dir = TempDir::new("reload-broken");
    dir.write("a.yaml", &rules("a", "k", 5));
    let running = start(dir.path(), &[]);
    dir.write(
        "a.yaml",
        "domain: a\ndescriptors:\n  - key: k\n    rate_limit: {unit: fortnight, requests_per_unit: 1}\n",
    );
    eventually("the failed load to be counted", || async {
        let (_, metrics) = http(running.http, "GET", "/metrics", "").await;
        metrics.contains("ratelimit_service_config_load_error 1")
    })
    .await;
    assert_eq!(limit(&running, "a", &[("k", "x")]).await, Some(5), "the old rules still serve");
    let (status, debug) = http(running.debug, "GET", "/debug/config", "").await;
    assert_eq!(status, 200);
    let debug: serde_json::Value = serde_json::from_str(&debug).unwrap();
    let error = debug["last_reload_error"]["errors"][0].as_str().unwrap();
    assert!(error.ends_with("a.yaml:4:24: invalid rate limit unit 'fortnight'"), "{error}");
    assert_eq!(debug["config"]["version"], 1);
    assert_eq!(debug["loads"]["failed"], 1);
    assert_eq!(http(running.http, "GET", "/healthcheck", "").await.0, 200);

    // Fixing it loads version 2 and clears the error.
    dir.write("a.yaml", &rules("a", "k", 6));
    eventually("the fixed file", || async { limit(&running, "a", &[("k", "x")]).await == Some(6) }).await;
    let (_, debug) = http(running.debug, "GET", "/debug/config", "").await;
    let debug: serde_json::Value = serde_json::from_str(&debug).unwrap();
    assert_eq!((debug["config"]["version"].as_u64(), debug["last_reload_error"].is_null()), (Some(2), true));
    let rest: Vec<String> = running.lines.try_iter().collect();
    assert!(rest.iter().any(|l| l.contains("invalid rate limit unit 'fortnight'")), "the error is logged: {rest:?}");
    stop(running);
}

#[tokio::test]
async fn counters_of_unchanged_rules_survive_a_reload() {
    let dir = TempDir::new("reload-counters");
    dir.write("a.yaml", &rules("a", "kept", 5));
    let running = start(dir.path(), &[]);
    let mut client = connect(running.grpc).await;
    for _ in 0..3 {
        client.should_rate_limit(request("a", &[&[("kept", "x")]])).await.unwrap();
    }
    // Another rule appears; `kept` is unchanged.
    dir.write(
        "a.yaml",
        &format!("{}  - key: other\n    rate_limit: {{unit: hour, requests_per_unit: 1}}\n", rules("a", "kept", 5)),
    );
    eventually("the new rule", || async { limit(&running, "a", &[("other", "x")]).await == Some(1) }).await;
    let r = client.should_rate_limit(request("a", &[&[("kept", "x")]])).await.unwrap().into_inner();
    assert_eq!(r.statuses[0].limit_remaining, 1, "3 earlier hits and this one: 1 of 5 left");
    stop(running);
}

fn reference_command(root: &Path, watch_root: bool) -> Command {
    let mut command = sluicegate();
    common::process::reference_env(&mut command, root);
    command.env("RUNTIME_WATCH_ROOT", if watch_root { "true" } else { "false" });
    command
}

#[tokio::test]
async fn the_reference_directory_mode_reloads() {
    let root = TempDir::new("reload-runtime-dir");
    root.write("ratelimit/config/basic.yaml", &rules("basic", "k", 5));
    let running = spawn(reference_command(root.path(), false));
    assert_eq!(limit(&running, "basic", &[("k", "x")]).await, Some(5));
    root.write("ratelimit/config/basic.yaml", &rules("basic", "k", 8));
    eventually("the edit", || async { limit(&running, "basic", &[("k", "x")]).await == Some(8) }).await;
    stop(running);
}

#[tokio::test]
async fn the_reference_root_swap_mode_reloads() {
    // RUNTIME_ROOT is a symlink; a deploy writes a new tree and swaps the link.
    let top = TempDir::new("reload-runtime-root");
    top.write("v1/ratelimit/config/basic.yaml", &rules("basic", "k", 5));
    top.write("v2/ratelimit/config/basic.yaml", &rules("basic", "k", 9));
    let current = top.path().join("current");
    std::os::unix::fs::symlink(top.path().join("v1"), &current).unwrap();
    let running = spawn(reference_command(&current, true));
    assert_eq!(limit(&running, "basic", &[("k", "x")]).await, Some(5));
    let next = top.path().join("current.next");
    std::os::unix::fs::symlink(top.path().join("v2"), &next).unwrap();
    std::fs::rename(&next, &current).unwrap();
    eventually("the root swap", || async { limit(&running, "basic", &[("k", "x")]).await == Some(9) }).await;
    stop(running);
}

#[tokio::test]
async fn health_waits_for_a_config_when_asked_and_flips_at_sigterm() {
    let dir = TempDir::new("health");
    let running =
        start(dir.path(), &[("HEALTHY_WITH_AT_LEAST_ONE_CONFIG_LOADED", "true"), ("SHUTDOWN_GRACE_PERIOD", "3s")]);
    assert_eq!(http(running.http, "GET", "/healthcheck", "").await.0, 500, "no domain loaded yet");
    dir.write("a.yaml", &rules("a", "k", 5));
    eventually("healthy once a domain loads", || async {
        http(running.http, "GET", "/healthcheck", "").await.0 == 200
    })
    .await;

    let mut client = connect(running.grpc).await;
    let sent = Instant::now();
    sigterm(&running.child);
    eventually("unhealthy at SIGTERM", || async { http(running.http, "GET", "/healthcheck", "").await.0 == 500 }).await;
    // Unhealthy while still serving, not only once it exits: the grace period is for
    // load balancers to see the 500 and move away.
    let mut running = running;
    assert!(running.child.try_wait().unwrap().is_none(), "unhealthy during the grace period, before the exit");
    let r = client.should_rate_limit(request("a", &[&[("k", "x")]])).await.unwrap().into_inner();
    assert_eq!(r.overall_code, OK, "still answering during the grace period");
    assert_eq!(wait_exit(&mut running.child, Duration::from_secs(15)).code(), Some(0));
    assert!(sent.elapsed() >= Duration::from_secs(3), "stayed up for the 3 s grace period");
}

#[tokio::test]
async fn metrics_count_what_happened() {
    let dir = TempDir::new("metrics");
    dir.write(
        "m.yaml",
        "domain: m\ndescriptors:\n  - key: k\n    rate_limit: {unit: hour, requests_per_unit: 2}\n  - key: s\n    shadow_mode: true\n    rate_limit: {unit: hour, requests_per_unit: 1}\n",
    );
    let running = start(dir.path(), &[]);
    let mut client = connect(running.grpc).await;
    for _ in 0..3 {
        client.should_rate_limit(request("m", &[&[("k", "x")]])).await.unwrap();
    }
    for _ in 0..2 {
        client.should_rate_limit(request("m", &[&[("s", "y")]])).await.unwrap();
    }
    client.should_rate_limit(request("nowhere", &[&[("k", "x")]])).await.unwrap();
    let _ = client.should_rate_limit(request("", &[&[("k", "x")]])).await;
    let (status, text) = http(running.http, "GET", "/metrics", "").await;
    assert_eq!(status, 200);
    let value = |series: &str| {
        text.lines()
            .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .unwrap_or_else(|| panic!("no series {series} in\n{text}"))
    };
    assert_eq!(value(r#"ratelimit_service_rate_limit_total_hits{domain="m",key1="k"}"#), 3.0);
    assert_eq!(value(r#"ratelimit_service_rate_limit_within_limit{domain="m",key1="k"}"#), 2.0);
    assert_eq!(value(r#"ratelimit_service_rate_limit_over_limit{domain="m",key1="k"}"#), 1.0);
    assert_eq!(value(r#"ratelimit_service_rate_limit_near_limit{domain="m",key1="k"}"#), 1.0);
    assert_eq!(value(r#"ratelimit_service_rate_limit_shadow_mode{domain="m",key1="s"}"#), 1.0);
    assert_eq!(value(r#"ratelimit_service_rate_limit_domain_not_found{domain="nowhere"}"#), 1.0);
    assert_eq!(value(r#"ratelimit_service_should_rate_limit_error{err_type="service_error"}"#), 1.0);
    assert_eq!(value(r#"ratelimit_service_total_requests{grpc_method="ShouldRateLimit"}"#), 7.0);
    assert_eq!(value("ratelimit_service_config_load_success"), 1.0);
    assert_eq!(value("sluicegate_config_version"), 1.0);
    assert!(text.contains("ratelimit_service_response_time_seconds_bucket{grpc_method=\"ShouldRateLimit\""), "{text}");
    // The debug port serves the same metrics, and lists its endpoints.
    assert!(http(running.debug, "GET", "/metrics", "").await.1.contains("ratelimit_service_total_requests"));
    let (_, index) = http(running.debug, "GET", "/", "").await;
    for endpoint in ["/debug/config", "/metrics", "/rlconfig"] {
        assert!(index.contains(endpoint), "{index}");
    }
    stop(running);
}

#[tokio::test]
async fn statsd_receives_the_reference_names() {
    let statsd = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let port = statsd.local_addr().unwrap().port().to_string();
    let dir = TempDir::new("statsd");
    dir.write("s.yaml", &rules("s", "k", 5));
    let running = start(
        dir.path(),
        &[
            ("USE_STATSD", "true"),
            ("STATSD_HOST", "127.0.0.1"),
            ("STATSD_PORT", &port),
            ("STATSD_PROTOCOL", "udp"),
            ("STATS_FLUSH_INTERVAL", "200ms"),
        ],
    );
    let mut client = connect(running.grpc).await;
    client.should_rate_limit(request("s", &[&[("k", "10.0.0.1")]])).await.unwrap();
    let mut received = String::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !received.contains("ratelimit.service.rate_limit.s.k.total_hits:1|c") && Instant::now() < deadline {
        let mut buf = [0u8; 4096];
        if let Ok(Ok(n)) = tokio::time::timeout(Duration::from_secs(1), statsd.recv(&mut buf)).await {
            received.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    }
    assert!(received.contains("ratelimit.service.rate_limit.s.k.total_hits:1|c"), "{received}");
    assert!(received.contains("ratelimit.service.config_load_success:1|c"), "{received}");
    assert!(received.contains("ratelimit_server.ShouldRateLimit.total_requests:1|c"), "{received}");
    stop(running);
}

#[test]
fn validate_prints_every_error_or_a_summary() {
    let output =
        sluicegate().args(["validate", "config", "tests/fixtures/config/ok/extensions.yaml"]).output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{stdout}");
    assert_eq!(stdout.trim(), "OK: 2 files, 2 domains, 15 rules");

    let output = sluicegate()
        .args(["validate", "tests/fixtures/config/bad/many_errors.yaml", "tests/fixtures/config/bad/bad_yaml.yaml"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stdout.contains("tests/fixtures/config/bad/many_errors.yaml:4:24: invalid rate limit unit 'sec'"),
        "{stdout}"
    );
    assert!(stdout.contains("tests/fixtures/config/bad/bad_yaml.yaml:1:1: error loading config file"), "{stdout}");
    assert!(stdout.trim_end().ends_with("7 errors in 2 files"), "{stdout}");
}

#[test]
fn explain_says_which_rule_matches_and_why_not() {
    let output = sluicegate()
        .args(["explain", "--config", "config", "--domain", "example"])
        .args(["--descriptor", "remote_address=10.0.0.1", "--descriptor", "path=/report,method=DELETE"])
        .args(["--descriptor", "user=alice"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{stdout}");
    let expected = [
        "descriptor 1: remote_address=10.0.0.1",
        "  level 1: (remote_address, 10.0.0.1) matched the key-only rule (any value): example.remote_address (config/example.yaml:6:5)",
        "  => limits: 10 per minute (fixed_window)",
        "descriptor 2: path=/report,method=DELETE",
        "  level 2: (method, DELETE) matched the key-only rule (any value): example.path_/report.method (config/example.yaml:38:9)",
        "  => limits: 60 per minute (fixed_window)",
        "descriptor 3: user=alice",
        "  level 1: (user, alice): no rule has key 'user' here (keys: api_key, path, remote_address)",
        "  => no rule matches: OK, no limit",
    ];
    for line in expected {
        assert!(stdout.lines().any(|l| l == line), "missing {line:?} in\n{stdout}");
    }
    let output = sluicegate()
        .args(["explain", "--config", "config", "--domain", "nope", "--descriptor", "a=b"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&output.stdout).contains("domain 'nope' is not configured"));
    let output = sluicegate()
        .args([
            "explain",
            "--config",
            "tests/fixtures/config/bad/bad_yaml.yaml",
            "--domain",
            "d",
            "--descriptor",
            "a=b",
        ])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
}

#[test]
fn explain_maps_an_rlqs_bucket_id_onto_the_rule_tree() {
    let output = sluicegate()
        .args(["explain", "--config", "config", "--domain", "example"])
        .args(["--bucket", "method=DELETE,path=/report", "--bucket", "remote_address=10.0.0.66"])
        .args(["--bucket", "api_key=internal-ci", "--bucket", "user=alice"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{stdout}");
    let expected = [
        "bucket 1: method=DELETE,path=/report",
        "  levels, in the rule tree's order: path=/report, method=DELETE",
        "  => RLQS: rule example.path_/report.method: a token bucket per client: 60 requests per 60s (burst 60) divided among the clients reporting the bucket, by demand",
        "  => RLQS: rule example.remote_address_10.0.0.66: DENY_ALL (a blanket rule)",
        "  => RLQS: rule example.api_key_internal-*: ALLOW_ALL (a blanket rule)",
        "  level 1: (user, alice): no rule has key 'user' here (keys: api_key, path, remote_address)",
        "  => RLQS: no rule: ALLOW_ALL (a blanket rule)",
    ];
    for line in expected {
        assert!(stdout.lines().any(|l| l == line), "missing {line:?} in\n{stdout}");
    }
}

#[tokio::test]
async fn json_logs_are_one_object_per_line() {
    let dir = TempDir::new("json-logs");
    dir.write("a.yaml", &rules("a", "k", 5));
    let running = start(dir.path(), &[("LOG_FORMAT", "json")]);
    let rest: Vec<String> = running.lines.try_iter().collect();
    assert!(rest.iter().chain(&running.seen).any(|l| l.contains(r#""@message":"Listening for gRPC on '"#)), "{rest:?}");
    for line in rest.iter().filter(|l| !l.is_empty()) {
        let v: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        // The reference's field names, so its log pipelines keep working.
        assert!(v["level"].is_string() && v["@message"].is_string() && v["@timestamp"].is_string(), "{line}");
    }
    stop(running);
}
