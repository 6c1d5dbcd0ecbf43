//! Chaos under load, server side: the real binary (memory backend) with the `loadgen`
//! example calling steadily, while
//! - it gets SIGTERM: every call within `SHUTDOWN_GRACE_PERIOD` is answered, the process
//!   then exits 0 and its connections close (calls after that fail);
//! - its rule files get a storm of writes (hundreds within seconds, in place and by
//!   rename, some of them broken YAML): never an UNAVAILABLE answer, and at the end the
//!   last good rules are in force (`/rlconfig`, `/debug/config` and a decision say so).
//!
//! `CHAOS_RATE` (default 1000 calls/s), `CHAOS_GRACE_SECONDS` (default 2) and
//! `CHAOS_STORM_WRITES` (default 300) tune it; `scripts/chaos` runs it against the release
//! build.

mod common;

use std::time::{Duration, Instant};

use common::load::{Load, env_or, exact_probe, serve, write_atomically};
use common::poll::poll_until;
use common::{TempDir, connect, http, process};

static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

const LOAD_RULES: &str =
    "domain: bench\ndescriptors:\n  - key: user\n    rate_limit: {unit: hour, requests_per_unit: 1000000000}\n";

fn storm_rules(limit: u32) -> String {
    format!("domain: storm\ndescriptors:\n  - key: probe\n    rate_limit: {{unit: hour, requests_per_unit: {limit}}}\n")
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

fn load(server: &process::Running) -> Load {
    let rate = env_or("CHAOS_RATE", 1_000).to_string();
    let load = Load::start(
        server.grpc,
        &["--rate", &rate, "--keys", "10000", "--concurrency", "16", "--connections", "2", "--duration", "3600"],
    );
    load.wait_for_calls(50, Duration::from_secs(10));
    load
}

#[test]
fn sigterm_under_load_answers_every_call_of_the_grace_period() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = TempDir::new("chaos-sigterm");
    dir.write("bench.yaml", LOAD_RULES);
    let grace = Duration::from_secs(env_or("CHAOS_GRACE_SECONDS", 2));
    let grace_env = format!("{}s", grace.as_secs());
    let mut server = serve(&dir, &[("SHUTDOWN_GRACE_PERIOD", &grace_env)]);
    let load = load(&server);
    std::thread::sleep(Duration::from_secs(1));
    let before = load.total();
    assert_eq!(before.errors(), 0, "before SIGTERM: {before}");

    let term = Instant::now();
    process::sigterm(&server.child);
    let status = process::wait_exit(&mut server.child, grace + Duration::from_secs(10));
    let exited = Instant::now();
    assert!(status.success(), "exit status {status:?}");
    assert!(exited - term >= grace, "exited {:?} after SIGTERM, within the grace period", exited - term);
    // Reports arrive every 250 ms; the last one wholly inside the grace period ends by
    // `grace` after SIGTERM, so leave it a report's length of margin.
    let during = load.between(term, term + grace - Duration::from_millis(250));
    println!("chaos sigterm: grace period {grace:?}: {during}; exited after {:.2}s", (exited - term).as_secs_f64());
    assert_eq!(during.errors(), 0, "calls failed within the grace period: {during}");
    assert!(during.ok > 0, "no call was answered within the grace period: {during}");

    // After the exit, connections are closed: calls fail (quickly, not by timing out).
    std::thread::sleep(Duration::from_secs(1));
    let after = load.between(exited + Duration::from_millis(300), Instant::now());
    println!("chaos sigterm: after exit: {after}");
    assert!(after.calls > 0 && after.ok == 0 && after.deadline == 0, "after the exit: {after}");
}

#[test]
fn reload_storm_under_load_never_fails_a_call_and_ends_on_the_last_good_rules() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = TempDir::new("chaos-storm");
    dir.write("bench.yaml", LOAD_RULES);
    let storm_file = dir.write("storm.yaml", &storm_rules(1000));
    let server = serve(&dir, &[]);
    let load = load(&server);
    // One broken write seen failing first, so the storm surely exercises failed loads
    // (the watcher folds a burst of writes into few loads, which may all see good files).
    std::fs::write(&storm_file, "domain: storm\ndescriptors: [\n").unwrap();
    runtime().block_on(poll_until("a broken write fails to load", Duration::from_secs(10), async || {
        let (_, body) = http(server.debug, "GET", "/debug/config", "").await;
        serde_json::from_str::<serde_json::Value>(&body).is_ok_and(|c| c["loads"]["failed"].as_u64() >= Some(1))
    }));
    let writes = env_or("CHAOS_STORM_WRITES", 300);
    let started = Instant::now();
    let bench_file = dir.path().join("bench.yaml");
    for i in 0..writes {
        // Every third write is broken; the rest alternate in-place writes and renames,
        // and every tenth touches the file the load depends on.
        let text = if i % 3 == 2 {
            format!("domain: storm\ndescriptors: [{{key: probe, {i}\n")
        } else {
            storm_rules(1000 + i as u32)
        };
        if i % 2 == 0 {
            std::fs::write(&storm_file, &text).unwrap();
        } else {
            write_atomically(&storm_file, &text);
        }
        if i % 10 == 0 {
            let broken = i % 20 == 0;
            write_atomically(
                &bench_file,
                if broken { "domain: bench\ndescriptors:\n  - key: [user\n" } else { LOAD_RULES },
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    // The storm ends on good files, the probe's limit a value no other write had.
    write_atomically(&bench_file, LOAD_RULES);
    std::fs::write(&storm_file, storm_rules(42)).unwrap();
    let storm_took = started.elapsed();

    runtime().block_on(async {
        let took = poll_until("the last rules in force", Duration::from_secs(10), async || {
            http(server.debug, "GET", "/rlconfig", "").await.1.contains("storm.probe: unit=HOUR requests_per_unit=42,")
        })
        .await;
        let (_, body) = http(server.debug, "GET", "/debug/config", "").await;
        let config: serde_json::Value = serde_json::from_str(&body).unwrap();
        let domains: Vec<&str> =
            config["config"]["domains"].as_array().unwrap().iter().map(|d| d["name"].as_str().unwrap()).collect();
        assert_eq!(domains, ["bench", "storm"], "{body}");
        let (ok, failed) = (config["loads"]["succeeded"].as_u64().unwrap(), config["loads"]["failed"].as_u64().unwrap());
        println!(
            "chaos storm: {} writes in {:.2}s; {ok} loads succeeded, {failed} failed; last rules in force {:.2}s after the last write",
            writes + writes / 10 + 2,
            storm_took.as_secs_f64(),
            took.as_secs_f64()
        );
        let mut client = connect(server.grpc).await;
        exact_probe(&mut client, "storm", "probe", 42, 3600, 60, "storm").await;
    });
    let total = load.total();
    println!("chaos storm: load {total}");
    assert_eq!(total.errors(), 0, "calls failed during the reload storm: {total}");
}
