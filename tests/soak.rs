//! Soak: the real binary under steady load from the `loadgen` example, with a key space
//! far above `MEMORY_MAX_COUNTERS` (so it evicts all the time) and the rule file
//! rewritten every two seconds. Checks, as it runs and at the end:
//! - no call gets an error (UNAVAILABLE, other, or no answer within 5 s);
//! - probe bursts on fresh keys admit exactly min(hits, limit), for a fixed and a
//!   sliding window, across reloads (an unchanged rule keeps its counters) and eviction;
//! - the reloads happened, and (memory) counters were evicted;
//! - resident memory is flat after warm-up (sampled from `/proc/<pid>/statm`).
//!
//! Short by default (CI, the debug binary). `scripts/soak` runs it long against the
//! release build with the variables below; the figures go to BENCHMARKS.md.
//!
//! | variable | default | meaning |
//! |---|---|---|
//! | `SOAK_SECONDS` / `SOAK_REDIS_SECONDS` | 20 / 12 | length of the memory / Redis run |
//! | `SOAK_RATE` | 2000 | calls per second of the load |
//! | `SOAK_KEYS` / `SOAK_MAX_COUNTERS` | 50000 / 5000 | key space / `MEMORY_MAX_COUNTERS` |

mod common;

use std::time::{Duration, Instant};

use common::load::{Load, burst, env_or, exact_probe, metric, rss_kib, serve, write_atomically};
use common::poll::poll_until;
use common::redis_server::RedisServer;
use common::{TempDir, connect, http};

/// One soak at a time: they measure memory and answers under a steady load, and two on
/// two cores would measure each other.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

const PROBE_LIMIT: u32 = 20;

/// The load's rule (a counter per `user`, never reached), the probes' rules, and a rule
/// whose limit each rewrite changes (so every reload builds a different rule set).
fn rules(generation: u64) -> String {
    format!(
        "domain: bench\ndescriptors:\n  - key: user\n    rate_limit: {{unit: hour, requests_per_unit: 1000000000}}\n\
         ---\ndomain: soak\ndescriptors:\n  - key: probe\n    rate_limit: {{unit: hour, requests_per_unit: {PROBE_LIMIT}}}\n\
         \x20 - key: probe_sliding\n    rate_limit: {{unit: hour, requests_per_unit: {PROBE_LIMIT}, algorithm: sliding_window}}\n\
         \x20 - key: filler\n    rate_limit: {{unit: minute, requests_per_unit: {}}}\n",
        generation + 1
    )
}

#[test]
fn memory_soak_with_eviction_and_reloads() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let cap = env_or("SOAK_MAX_COUNTERS", 5_000).to_string();
    soak("memory", env_or("SOAK_SECONDS", 20), &[("MEMORY_MAX_COUNTERS", &cap)]);
}

#[test]
fn redis_soak_with_reloads() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let redis = RedisServer::start(&[]);
    let url = redis.address();
    let env = [("BACKEND_TYPE", "redis"), ("REDIS_URL", &url), ("REDIS_TIMEOUT", "2s")];
    soak("redis", env_or("SOAK_REDIS_SECONDS", 12), &env);
}

fn soak(backend: &str, seconds: u64, env: &[(&str, &str)]) {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let dir = TempDir::new("soak");
    let file = dir.path().join("soak.yaml");
    write_atomically(&file, &rules(0));
    let server = serve(&dir, env);
    let pid = server.child.id();
    let (rate, keys) = (env_or("SOAK_RATE", 2_000), env_or("SOAK_KEYS", 50_000));
    let duration = Duration::from_secs(seconds);
    runtime.block_on(async {
        let mut client = connect(server.grpc).await;
        // Redis connects in the background: start once a call is answered.
        poll_until("the first answer", Duration::from_secs(15), async || {
            burst(&mut client, "soak", "probe", "ready", 1).await.errors() == 0
        })
        .await;
        let load = Load::start(
            server.grpc,
            &[
                "--rate",
                &rate.to_string(),
                "--keys",
                &keys.to_string(),
                "--concurrency",
                "32",
                "--connections",
                "2",
                "--domain",
                "bench",
                "--key",
                "user",
                "--duration",
                &(seconds + 30).to_string(),
            ],
        );
        let start = Instant::now();
        let mut samples: Vec<(f64, u64)> = vec![(0.0, rss_kib(pid))];
        let (mut writes, mut probes) = (0u64, 0u64);
        let (mut next_write, mut next_sample) = (start, start);
        let sample_every = Duration::from_secs((seconds / 40).clamp(1, 10));
        while start.elapsed() < duration {
            if Instant::now() >= next_write {
                writes += 1;
                write_atomically(&file, &rules(writes));
                next_write += Duration::from_secs(2);
            }
            if Instant::now() >= next_sample {
                samples.push((start.elapsed().as_secs_f64(), rss_kib(pid)));
                next_sample += sample_every;
            }
            probes += 1;
            let label = format!("{backend}-soak-{probes}");
            exact_probe(&mut client, "soak", "probe", PROBE_LIMIT, 3600, 30, &label).await;
            exact_probe(&mut client, "soak", "probe_sliding", PROBE_LIMIT, 3600, 30, &label).await;
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        samples.push((start.elapsed().as_secs_f64(), rss_kib(pid)));
        let total = load.total();
        println!("soak {backend}: {seconds}s at {rate}/s over {keys} keys: {total}; {probes} probe pairs exact");
        assert_eq!(total.errors(), 0, "{backend}: error answers under soak: {total}");
        // The load must really have run. A tenth of the asked rate on average: a debug
        // build on a two-core machine shared with other builds reached 22 % of 2000/s
        // (Redis) and 45 % (memory); a run that stalled (a hang, a lost connection)
        // reaches far less. The rate itself is measured by scripts/soak on a release build.
        assert!(total.calls >= rate * seconds / 10, "{backend}: the load fell behind: {total}");

        // Every rewrite is a different rule set; the watcher may fold close ones together.
        let (_, body) = http(server.debug, "GET", "/debug/config", "").await;
        let config: serde_json::Value = serde_json::from_str(&body).unwrap();
        let loads = config["loads"]["succeeded"].as_u64().unwrap();
        println!("soak {backend}: {writes} rule rewrites, {loads} loads");
        assert!(loads >= 2 && loads <= writes + 1, "{backend}: {loads} loads for {writes} rewrites");
        assert!(config["loads"]["failed"].as_u64() == Some(0), "{body}");
        if backend == "memory" {
            let evicted = metric(server.debug, "sluicegate_memory_counter_evictions_total").await.unwrap_or(0.0);
            println!("soak {backend}: {evicted} counters evicted");
            assert!(evicted > 0.0, "the key space did not force eviction");
        }
        rss_is_flat(backend, &samples);
        // Still answering exactly after all of it.
        poll_until("a last probe", Duration::from_secs(5), async || {
            exact_probe(&mut client, "soak", "probe", PROBE_LIMIT, 3600, 30, "final").await;
            true
        })
        .await;
    });
}

/// Resident memory after warm-up (the first 40% of the run: the counter table fills to
/// its cap, allocator pools grow) stays within 25% + 16 MiB of where warm-up ended.
fn rss_is_flat(backend: &str, samples: &[(f64, u64)]) {
    let end = samples.last().unwrap().0;
    let warm = samples.iter().rev().find(|(t, _)| *t <= end * 0.4).unwrap_or(&samples[0]).1;
    let peak_after = samples.iter().filter(|(t, _)| *t > end * 0.4).map(|s| s.1).max().unwrap_or(warm);
    let table: Vec<String> = samples.iter().map(|(t, kib)| format!("{t:.0}s={:.1}MiB", *kib as f64 / 1024.0)).collect();
    println!("soak {backend}: rss {}", table.join(" "));
    println!(
        "soak {backend}: rss after warm-up {:.1} MiB, peak after it {:.1} MiB",
        warm as f64 / 1024.0,
        peak_after as f64 / 1024.0
    );
    assert!(peak_after <= warm + warm / 4 + 16 * 1024, "{backend}: memory grew after warm-up: {table:?}");
}
