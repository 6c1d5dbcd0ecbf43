//! Leased mode (`REDIS_LEASING=true`) across real processes: one real `redis-server`,
//! several real `sluicegate` replicas, and load driven from this test over gRPC.
//!
//! - a hot key, limit 5000 per 10 s (`LEASING_HOT_LIMIT` scales it), offered 3x its
//!   limit split 50/25/15/10% over four replicas: every window admits at most 5000 and
//!   the whole one at least 4900, and Redis sees under 5% as many round trips as
//!   requests;
//! - 10,000 cold keys, limit 5, demand 1..=8 each, spread over four replicas: each key
//!   admits exactly min(demand, limit);
//! - a replica killed (SIGKILL) mid-window and another added: no window over the limit;
//! - Redis killed under load with `BACKEND_FAILURE_POLICY=local`: the window admits at
//!   most twice the limit, and leases are taken again once Redis is back.
//! - a sliding window over four replicas: no fixed window of it admits more than the limit;
//! - a token bucket over four replicas: no interval of length d admits more than
//!   burst + rate * d, and under overload the fleet still admits about the rate;
//! - 400 concurrent calls on an empty lease wait for a handful of reservations, the lease
//!   metrics are exported, and an idle lease's units go back to Redis.
//!
//! A response is attributed to a window only when it was sent and answered in the same
//! window; the others are reported as uncertain and count only toward the lower bound.
//! The tests run one at a time (they share two cores with everything else).

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::load::{serve, unix_secs};
use common::poll::poll_until;
use common::process::Running;
use common::redis_server::RedisServer;
use common::{TempDir, connect, request};
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::Code;

static SERIAL: Mutex<()> = Mutex::new(());

const RULES: &str = r#"domain: lease
descriptors:
  - key: hot
    rate_limit: {unit: second, unit_multiplier: 10, requests_per_unit: HOT_LIMIT}
  - key: small
    rate_limit: {unit: second, unit_multiplier: 4, requests_per_unit: 1000}
  - key: slide
    rate_limit: {unit: second, unit_multiplier: 4, requests_per_unit: 1000, algorithm: sliding_window}
  - key: cold
    rate_limit: {unit: day, requests_per_unit: 5}
  - key: bucket
    rate_limit: {unit: second, requests_per_unit: 200, algorithm: token_bucket}
"#;

fn now_ns() -> u64 {
    sluicegate::clock::Clock::System.now().0
}

fn replica(dir: &TempDir, redis: &RedisServer, policy: &str) -> Running {
    let url = redis.address();
    serve(
        dir,
        &[
            ("BACKEND_TYPE", "redis"),
            ("REDIS_URL", url.as_str()),
            ("REDIS_LEASING", "true"),
            ("REDIS_TIMEOUT", "500ms"),
            ("BACKEND_FAILURE_POLICY", policy),
        ],
    )
}

/// Waits until a replica answers from Redis in leased mode.
async fn ready(server: &Running) {
    poll_until("the replica is in leased mode and up", Duration::from_secs(20), async || {
        let (_, body) = common::http(server.debug, "GET", "/debug/config", "").await;
        body.contains("\"leased\"") && body.contains("\"up\": true")
    })
    .await;
}

/// Answers per window of `window_secs`: `(certain_ok, uncertain_ok)`.
#[derive(Default)]
struct Tally {
    answers: Vec<(u64, u64, bool)>,
    /// Of each OK answer: when it was sent and its `duration_until_reset` (ns).
    resets: Vec<(u64, u64)>,
}

impl Tally {
    /// OK answers per fixed window of `window_secs`, each counted in the window it was
    /// decided in: the one ending `duration_until_reset` after the decision, which lies
    /// between sending and answering. The window's end is the multiple of the window
    /// nearest to `sent + reset` (whole seconds and the call's latency make it off by at
    /// most a few seconds: this needs windows of 10 s).
    fn windows_by_reset(&self, window_secs: u64) -> std::collections::BTreeMap<u64, u64> {
        assert!(window_secs >= 10, "attribution by reset needs windows well over the latency");
        let w = window_secs * 1_000_000_000;
        let mut out = std::collections::BTreeMap::new();
        for &(sent, reset) in &self.resets {
            *out.entry((sent + reset + w / 2) / w - 1).or_insert(0) += 1;
        }
        out
    }

    fn windows(&self, window_secs: u64) -> std::collections::BTreeMap<u64, (u64, u64)> {
        let w = window_secs * 1_000_000_000;
        let mut out = std::collections::BTreeMap::new();
        for &(sent, got, ok) in &self.answers {
            if !ok {
                continue;
            }
            if sent / w == got / w {
                out.entry(sent / w).or_insert((0, 0)).0 += 1;
            } else {
                out.entry(got / w).or_insert((0, 0)).1 += 1;
            }
        }
        out
    }
}

/// Sends `rate` calls per second for the hot key `value` to `target` until `stop`.
fn drive(
    target: Arc<Mutex<SocketAddr>>,
    rate: f64,
    descriptor_key: &'static str,
    tally: Arc<Mutex<Tally>>,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut addr = *target.lock().unwrap();
        let mut client = connect(addr).await;
        let start = Instant::now();
        let mut sent = 0u64;
        let mut tick = tokio::time::interval(Duration::from_millis(5));
        while !stop.load(Ordering::Relaxed) {
            tick.tick().await;
            let now_addr = *target.lock().unwrap();
            if now_addr != addr {
                addr = now_addr;
                client = connect(addr).await;
            }
            let due = (start.elapsed().as_secs_f64() * rate) as u64;
            while sent < due {
                sent += 1;
                let mut c = client.clone();
                let tally = tally.clone();
                tokio::spawn(async move {
                    let at = now_ns();
                    let req = request("lease", &[&[(descriptor_key, "k")]]);
                    let answer = tokio::time::timeout(Duration::from_secs(2), c.should_rate_limit(req)).await;
                    if let Ok(Ok(r)) = answer {
                        let r = r.into_inner();
                        let ok = r.overall_code == Code::Ok as i32;
                        let reset = r.statuses.first().and_then(|s| s.duration_until_reset);
                        let mut tally = tally.lock().unwrap_or_else(|e| e.into_inner());
                        tally.answers.push((at, now_ns(), ok));
                        if let (true, Some(d)) = (ok, reset) {
                            tally.resets.push((at, d.seconds as u64 * 1_000_000_000 + d.nanos as u64));
                        }
                    }
                });
            }
        }
    })
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

/// Redis operations sluicegate sent (script calls and heartbeat pipelines; commands a
/// script runs inside Redis are not round trips), and all commands Redis counted.
fn redis_ops(redis: &RedisServer) -> (u64, u64) {
    let calls = RedisServer::command_calls(&mut redis.connection(None));
    println!("commandstats: {calls:?}");
    let get = |n: &str| calls.get(n).copied().unwrap_or(0);
    let round_trips = get("evalsha") + get("eval") + get("zadd");
    let all = calls.iter().filter(|(n, _)| n.as_str() != "info" && n.as_str() != "config").map(|(_, c)| c).sum();
    (round_trips, all)
}

#[test]
fn a_hot_key_over_four_replicas_admits_its_limit_per_window_with_few_redis_operations() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let redis = RedisServer::start(&[]);
    let dir = TempDir::new("leasing-hot");
    // LEASING_HOT_LIMIT scales the test (a slower machine may need less); the load is 3x it.
    let limit = common::load::env_or("LEASING_HOT_LIMIT", 5000);
    dir.write("rules.yaml", &RULES.replace("HOT_LIMIT", &limit.to_string()));
    let replicas: Vec<Running> = (0..4).map(|_| replica(&dir, &redis, "error")).collect();
    runtime().block_on(async {
        for r in &replicas {
            ready(r).await;
        }
        let _: () = redis::cmd("CONFIG").arg("RESETSTAT").query(&mut redis.connection(None)).unwrap();
        let tally = Arc::new(Mutex::new(Tally::default()));
        let stop = Arc::new(AtomicBool::new(false));
        // 3x the limit (1500 calls/s), split 50/25/15/10%.
        let rate = 3.0 * limit as f64 / 10.0;
        let shares = [0.50, 0.25, 0.15, 0.10];
        let drivers: Vec<_> = replicas
            .iter()
            .zip(shares)
            .map(|(r, s)| drive(Arc::new(Mutex::new(r.grpc)), rate * s, "hot", tally.clone(), stop.clone()))
            .collect();
        // Run through the end of the next whole window.
        let first_whole = unix_secs() / 10 + 1;
        while unix_secs() < (first_whole + 1) * 10 + 1 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        stop.store(true, Ordering::Relaxed);
        for d in drivers {
            d.await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let tally = tally.lock().unwrap();
        let windows = tally.windows(10);
        let requests = tally.answers.len() as u64;
        let (round_trips, all) = redis_ops(&redis);
        println!("hot key: {requests} answers; per window (certain ok, uncertain ok): {windows:?}");
        println!(
            "hot key: Redis round trips {round_trips} ({:.2}% of requests), all commands incl. script-internal {all}",
            100.0 * round_trips as f64 / requests as f64
        );
        let answered_in = |w: u64| tally.answers.iter().filter(|a| a.0 / 10_000_000_000 == w).count() as u64;
        println!("hot key: {} calls answered in the measured window", answered_in(first_whole));
        // Each admission in the window it was decided in (by its reset time).
        let decided = tally.windows_by_reset(10);
        println!("hot key: admitted per window, by the window each was decided in: {decided:?}");
        for (&w, &(certain, _)) in &windows {
            assert!(certain <= limit, "window {w} admitted {certain} > {limit}");
        }
        for (&w, &admitted) in &decided {
            assert!(admitted <= limit, "window {w} admitted {admitted} > {limit}");
        }
        let whole = decided.get(&first_whole).copied().unwrap_or_default();
        assert!(whole >= limit * 98 / 100, "the whole window {first_whole} admitted only {whole}");
        assert!(round_trips * 20 < requests, "{round_trips} Redis operations for {requests} requests");
    });
}

#[test]
fn a_sliding_window_over_four_replicas_never_admits_more_than_its_limit() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let redis = RedisServer::start(&[]);
    let dir = TempDir::new("leasing-slide");
    dir.write("rules.yaml", &RULES.replace("HOT_LIMIT", "5000"));
    let replicas: Vec<Running> = (0..4).map(|_| replica(&dir, &redis, "error")).collect();
    runtime().block_on(async {
        for r in &replicas {
            ready(r).await;
        }
        let _: () = redis::cmd("CONFIG").arg("RESETSTAT").query(&mut redis.connection(None)).unwrap();
        let tally = Arc::new(Mutex::new(Tally::default()));
        let stop = Arc::new(AtomicBool::new(false));
        // 3x the limit of 1000 per 4 s, split 50/25/15/10%.
        let drivers: Vec<_> = replicas
            .iter()
            .zip([0.50, 0.25, 0.15, 0.10])
            .map(|(r, s)| drive(Arc::new(Mutex::new(r.grpc)), 750.0 * s, "slide", tally.clone(), stop.clone()))
            .collect();
        let first = unix_secs() / 4 + 1;
        while unix_secs() < (first + 2) * 4 + 1 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        stop.store(true, Ordering::Relaxed);
        for d in drivers {
            d.await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let tally = tally.lock().unwrap();
        let windows = tally.windows(4);
        let requests = tally.answers.len() as u64;
        let (round_trips, _) = redis_ops(&redis);
        println!("sliding: {requests} answers, {round_trips} Redis round trips; per window: {windows:?}");
        // The sliding estimate is at least the current window's count: no fixed window
        // of it admits more than the limit.
        for (&w, &(certain, _)) in &windows {
            assert!(certain <= 1000, "window {w} admitted {certain} > 1000");
        }
        // In steady overload the previous window weighs its full count, so a window
        // admits about what the previous one's weight leaves; together, two consecutive
        // windows stay near the limit each.
        let (a, ua) = windows.get(&(first + 1)).copied().unwrap_or_default();
        assert!(a + ua >= 400, "the sliding window still admits under load: {a}+{ua}");
    });
}

#[test]
fn a_token_bucket_over_four_replicas_never_admits_more_than_burst_plus_rate() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let redis = RedisServer::start(&[]);
    let dir = TempDir::new("leasing-bucket");
    dir.write("rules.yaml", &RULES.replace("HOT_LIMIT", "5000"));
    let replicas: Vec<Running> = (0..4).map(|_| replica(&dir, &redis, "error")).collect();
    runtime().block_on(async {
        for r in &replicas {
            ready(r).await;
        }
        let tally = Arc::new(Mutex::new(Tally::default()));
        let stop = Arc::new(AtomicBool::new(false));
        // 3x the rate of 200/s (burst 200), split 50/25/15/10%, for 6 s.
        let drivers: Vec<_> = replicas
            .iter()
            .zip([0.50, 0.25, 0.15, 0.10])
            .map(|(r, s)| drive(Arc::new(Mutex::new(r.grpc)), 600.0 * s, "bucket", tally.clone(), stop.clone()))
            .collect();
        let started = now_ns();
        tokio::time::sleep(Duration::from_secs(6)).await;
        stop.store(true, Ordering::Relaxed);
        for d in drivers {
            d.await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let tally = tally.lock().unwrap();
        let ended = now_ns();
        let mut ok: Vec<(u64, u64)> = tally.answers.iter().filter(|a| a.2).map(|a| (a.0, a.1)).collect();
        ok.sort_unstable();
        // An answer was decided between its sending and its arrival: those sent and
        // answered within [a, a + d] were certainly decided in it.
        for d_ms in [100u64, 1_000, 3_000] {
            let d = d_ms * 1_000_000;
            let bound = 200 + 200 * d_ms / 1_000;
            let mut worst = 0;
            let mut a = started;
            while a + d <= ended {
                let certain = ok.iter().filter(|&&(sent, got)| sent >= a && got <= a + d).count() as u64;
                worst = worst.max(certain);
                a += 10_000_000;
            }
            println!("bucket: at most {worst} admitted in any {d_ms} ms (bound {bound})");
            assert!(worst <= bound, "{worst} admitted within {d_ms} ms > burst 200 + rate 200/s");
        }
        // After the first second (the burst), the fleet admits about the rate.
        let from = started + 1_000_000_000;
        let to = started + 6_000_000_000;
        let admitted = ok.iter().filter(|&&(sent, _)| sent >= from && sent < to).count() as u64;
        let (round_trips, _) = redis_ops(&redis);
        println!("bucket: {admitted} admitted in 5 s of overload at 200/s; {round_trips} Redis round trips");
        assert!(admitted >= 800, "only {admitted} admitted in 5 s at a rate of 200/s");
    });
}

#[test]
fn ten_thousand_cold_keys_each_admit_exactly_min_of_demand_and_limit() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let redis = RedisServer::start(&[]);
    let dir = TempDir::new("leasing-cold");
    dir.write("rules.yaml", &RULES.replace("HOT_LIMIT", "5000"));
    let replicas: Vec<Running> = (0..4).map(|_| replica(&dir, &redis, "error")).collect();
    let keys: usize = common::load::env_or("LEASING_COLD_KEYS", 10_000) as usize;
    runtime().block_on(async {
        for r in &replicas {
            ready(r).await;
        }
        let day = unix_secs() / 86_400;
        let clients: Vec<_> = futures_util_join(replicas.iter().map(|r| connect(r.grpc))).await;
        // Calls of 10 descriptors (10 keys) each; a key's calls go to every replica.
        let demand = |k: usize| (k * 7919 % 8) + 1;
        let mut calls: Vec<(usize, Vec<usize>)> = Vec::new();
        let mut round = 0;
        loop {
            let live: Vec<usize> = (0..keys).filter(|&k| demand(k) > round).collect();
            if live.is_empty() {
                break;
            }
            for (i, chunk) in live.chunks(10).enumerate() {
                calls.push(((i + round) % 4, chunk.to_vec()));
            }
            round += 1;
        }
        let admitted = Arc::new(Mutex::new(vec![0usize; keys]));
        let semaphore = Arc::new(tokio::sync::Semaphore::new(64));
        let mut tasks = Vec::new();
        let started = Instant::now();
        for (r, chunk) in calls {
            let permit = semaphore.clone().acquire_owned().await.unwrap();
            let mut client = clients[r].clone();
            let admitted = admitted.clone();
            tasks.push(tokio::spawn(async move {
                let values: Vec<String> = chunk.iter().map(|k| format!("c{k}")).collect();
                let entries: Vec<[(&str, &str); 1]> = values.iter().map(|v| [("cold", v.as_str())]).collect();
                let descriptors: Vec<&[(&str, &str)]> = entries.iter().map(|e| &e[..]).collect();
                let r = client.should_rate_limit(request("lease", &descriptors)).await.unwrap().into_inner();
                let mut admitted = admitted.lock().unwrap();
                for (k, status) in chunk.iter().zip(r.statuses) {
                    if status.code == Code::Ok as i32 {
                        admitted[*k] += 1;
                    }
                }
                drop(permit);
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        println!("cold keys: {keys} keys in {:?}", started.elapsed());
        assert_eq!(unix_secs() / 86_400, day, "the day changed during the run; run again");
        let admitted = admitted.lock().unwrap();
        let wrong: Vec<(usize, usize, usize)> =
            (0..keys).filter(|&k| admitted[k] != demand(k).min(5)).map(|k| (k, demand(k), admitted[k])).collect();
        assert!(
            wrong.is_empty(),
            "{} keys admitted other than min(demand, 5): {:?}",
            wrong.len(),
            &wrong[..wrong.len().min(10)]
        );
    });
}

async fn futures_util_join<F: Future>(futures: impl Iterator<Item = F>) -> Vec<F::Output> {
    let mut out = Vec::new();
    for f in futures {
        out.push(f.await);
    }
    out
}

#[test]
fn a_replica_killed_mid_window_and_one_added_never_exceed_the_limit() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let redis = RedisServer::start(&[]);
    let dir = TempDir::new("leasing-churn");
    dir.write("rules.yaml", &RULES.replace("HOT_LIMIT", "5000"));
    let mut replicas: Vec<Running> = (0..3).map(|_| replica(&dir, &redis, "error")).collect();
    runtime().block_on(async {
        for r in &replicas {
            ready(r).await;
        }
        let tally = Arc::new(Mutex::new(Tally::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let targets: Vec<_> = replicas.iter().map(|r| Arc::new(Mutex::new(r.grpc))).collect();
        // 3x the limit of 1000 per 4 s.
        let drivers: Vec<_> =
            targets.iter().map(|t| drive(t.clone(), 250.0, "small", tally.clone(), stop.clone())).collect();
        // Mid-window: kill one, then add one and move the dead one's load to it.
        let w = unix_secs() / 4 + 1;
        while unix_secs() < w * 4 + 1 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let mut dead = replicas.remove(0);
        let _ = dead.child.kill();
        let _ = dead.child.wait();
        let added = replica(&dir, &redis, "error");
        ready(&added).await;
        *targets[0].lock().unwrap() = added.grpc;
        replicas.push(added);
        while unix_secs() < (w + 2) * 4 + 1 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        stop.store(true, Ordering::Relaxed);
        for d in drivers {
            d.await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let windows = tally.lock().unwrap().windows(4);
        println!("churn: per window (certain ok, uncertain ok): {windows:?}");
        for (&window, &(certain, _)) in &windows {
            assert!(certain <= 1000, "window {window} admitted {certain} > 1000");
        }
        let (certain, uncertain) = windows.get(&(w + 1)).copied().unwrap_or_default();
        assert!(certain + uncertain >= 900, "the window after the churn admitted only {certain}+{uncertain}");
    });
}

#[test]
fn redis_killed_under_load_with_policy_local_admits_at_most_twice_the_limit_then_leases_again() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut redis = RedisServer::start(&[]);
    let dir = TempDir::new("leasing-outage");
    dir.write("rules.yaml", &RULES.replace("HOT_LIMIT", "5000"));
    let replicas: Vec<Running> = (0..4).map(|_| replica(&dir, &redis, "local")).collect();
    runtime().block_on(async {
        for r in &replicas {
            ready(r).await;
        }
        // Every replica has seen the others' heartbeats (its share is limit / 4).
        for r in &replicas {
            poll_until("four live replicas", Duration::from_secs(10), async || {
                common::load::metric(r.debug, "sluicegate_lease_live_replicas").await == Some(4.0)
            })
            .await;
        }
        let tally = Arc::new(Mutex::new(Tally::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let drivers: Vec<_> = replicas
            .iter()
            .map(|r| drive(Arc::new(Mutex::new(r.grpc)), 750.0 / 4.0, "small", tally.clone(), stop.clone()))
            .collect();
        let w = unix_secs() / 4 + 1;
        while unix_secs() < w * 4 + 1 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        redis.kill();
        // Window w + 1 runs wholly without Redis.
        while unix_secs() < (w + 2) * 4 + 1 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let taken_before = common::load::metric(replicas[0].debug, "sluicegate_lease_taken_total").await;
        redis.restart();
        let back = Instant::now();
        poll_until("leases are taken again", Duration::from_secs(10), async || {
            common::load::metric(replicas[0].debug, "sluicegate_lease_taken_total").await > taken_before
        })
        .await;
        println!("outage: leasing again {:?} after Redis restarted", back.elapsed());
        stop.store(true, Ordering::Relaxed);
        for d in drivers {
            d.await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let windows = tally.lock().unwrap().windows(4);
        println!("outage: per window (certain ok, uncertain ok): {windows:?}");
        let (certain, _) = windows.get(&w).copied().unwrap_or_default();
        assert!(certain <= 2000, "the window Redis died in admitted {certain} > 2 x 1000");
        let (certain, _) = windows.get(&(w + 1)).copied().unwrap_or_default();
        assert!(certain <= 1000, "a window without Redis admitted {certain} > 4 shares of 250");
        // Redis came back empty (no persistence) a second into window w + 2: its shares
        // and then fresh leases.
        let (certain, _) = windows.get(&(w + 2)).copied().unwrap_or_default();
        assert!(certain <= 2000, "the window Redis came back in admitted {certain} > 2 x 1000");
    });
}

#[test]
fn concurrent_requests_on_an_empty_lease_wait_for_one_reservation_and_metrics_show_it() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let redis = RedisServer::start(&[]);
    let dir = TempDir::new("leasing-inflight");
    dir.write("rules.yaml", &RULES.replace("HOT_LIMIT", "1000000"));
    let server = replica(&dir, &redis, "error");
    runtime().block_on(async {
        ready(&server).await;
        let _: () = redis::cmd("CONFIG").arg("RESETSTAT").query(&mut redis.connection(None)).unwrap();
        let client = connect(server.grpc).await;
        // 400 calls at once on a cold counter.
        let calls: Vec<_> = (0..400)
            .map(|_| {
                let mut c = client.clone();
                tokio::spawn(async move {
                    c.should_rate_limit(request("lease", &[&[("hot", "burst")]]))
                        .await
                        .unwrap()
                        .into_inner()
                        .overall_code
                })
            })
            .collect();
        for call in calls {
            assert_eq!(call.await.unwrap(), Code::Ok as i32);
        }
        let calls = RedisServer::command_calls(&mut redis.connection(None));
        let scripts = calls.get("evalsha").copied().unwrap_or(0) + calls.get("eval").copied().unwrap_or(0);
        println!("in flight: {scripts} reservations for 400 concurrent calls");
        assert!(scripts < 40, "{scripts} reservations for 400 concurrent calls on one counter");
        poll_until("the lease metrics are published", Duration::from_secs(5), async || {
            common::load::metric(server.debug, "sluicegate_lease_admitted_total").await == Some(400.0)
        })
        .await;
        for name in [
            "sluicegate_lease_taken_total",
            "sluicegate_lease_units_reserved_total",
            "sluicegate_lease_units_returned_total",
            "sluicegate_lease_units_wasted_total",
            "sluicegate_lease_redis_ops_total",
            "sluicegate_lease_live_replicas",
        ] {
            assert!(common::load::metric(server.debug, name).await.is_some(), "{name} is exported");
        }
        // Idle: the unspent units go back to Redis.
        poll_until("unspent units are returned when the lease goes idle", Duration::from_secs(5), async || {
            let reserved = common::load::metric(server.debug, "sluicegate_lease_units_reserved_total").await;
            let returned = common::load::metric(server.debug, "sluicegate_lease_units_returned_total").await;
            matches!((reserved, returned), (Some(r), Some(b)) if r - b == 400.0)
        })
        .await;
    });
}
