//! End to end through two real Envoys with the `rate_limit_quota` filter
//! (`examples/envoy-rlqs/envoy.yaml`, ports templated) reporting to the sluicegate binary
//! serving `examples/envoy-rlqs/rules`: one bucket per API key, 100 requests per second
//! shared by both Envoys in proportion to what each is offered; `ALLOW_ALL` and
//! `DENY_ALL` keys; a reload that changes the limit; sluicegate stopped (Envoy falls back
//! to its `expired_assignment_behavior`) and restarted (assignments resume).
//!
//! One test, in phases, because the phases share two Envoys and the load running through
//! them, and because measuring rates wants nothing else running. Loopback only; about
//! 90 s.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::envoy::{Envoy, get};
use common::load::write_atomically;
use common::poll::poll_until;
use common::redis_server::free_port;
use common::{TempDir, http, process};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const EXAMPLE_RULES: &str = include_str!("../examples/envoy-rlqs/rules/api.yaml");

/// Requests sent through one Envoy at a steady rate, each answer's status recorded with
/// when it came.
struct Offered {
    answers: Arc<Mutex<Vec<(Instant, u16)>>>,
    stop: Arc<AtomicBool>,
}

/// Connections each load uses, so one slow answer does not hold the rate back.
const CONNECTIONS: u32 = 4;

impl Offered {
    fn start(envoy: SocketAddr, key: &str, per_second: u32) -> Offered {
        let answers = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let period = Duration::from_secs_f64(f64::from(CONNECTIONS) / f64::from(per_second));
        for i in 0..CONNECTIONS {
            let offset = period * i / CONNECTIONS;
            let (answers, stop, key) = (answers.clone(), stop.clone(), key.to_string());
            tokio::spawn(async move {
                let start = tokio::time::Instant::now() + offset;
                let mut ticks = tokio::time::interval_at(start, period);
                let mut connection = None;
                while !stop.load(Ordering::Relaxed) {
                    ticks.tick().await;
                    let status = request(&mut connection, envoy, &key).await;
                    answers.lock().unwrap().push((Instant::now(), status));
                }
            });
        }
        Offered { answers, stop }
    }

    /// (2xx, 429, anything else) answered between `from` and `to`.
    fn between(&self, from: Instant, to: Instant) -> (u64, u64, u64) {
        let answers = self.answers.lock().unwrap();
        let mut counts = (0, 0, 0);
        for (_, status) in answers.iter().filter(|(at, _)| *at >= from && *at < to) {
            match status {
                200..=299 => counts.0 += 1,
                429 => counts.1 += 1,
                _ => counts.2 += 1,
            }
        }
        counts
    }

    /// 2xx answers in the last `window`.
    fn recent_ok(&self, window: Duration) -> u64 {
        let now = Instant::now();
        self.between(now - window, now).0
    }
}

impl Drop for Offered {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// One GET / with `x-api-key: key` on a kept-alive connection (opened again after any
/// error); the status, or 0 when there was no answer.
async fn request(connection: &mut Option<tokio::net::TcpStream>, envoy: SocketAddr, key: &str) -> u16 {
    if connection.is_none() {
        *connection = tokio::net::TcpStream::connect(envoy).await.ok();
    }
    let Some(stream) = connection.as_mut() else { return 0 };
    let head = format!("GET / HTTP/1.1\r\nHost: api\r\nx-api-key: {key}\r\n\r\n");
    let answer = tokio::time::timeout(Duration::from_secs(5), async {
        stream.write_all(head.as_bytes()).await.ok()?;
        read_response(stream).await
    })
    .await;
    match answer {
        Ok(Some((status, keep_alive))) => {
            if !keep_alive {
                *connection = None;
            }
            status
        }
        _ => {
            *connection = None;
            0
        }
    }
}

/// Reads one response: its status, and whether the connection stays open.
async fn read_response(stream: &mut tokio::net::TcpStream) -> Option<(u16, bool)> {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(at) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buffer.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buffer[..head_end]).to_ascii_lowercase();
    let status = head.split(' ').nth(1)?.parse().ok()?;
    let length: usize =
        head.lines().find_map(|l| l.strip_prefix("content-length:")).and_then(|v| v.trim().parse().ok()).unwrap_or(0);
    while buffer.len() < head_end + length {
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buffer.extend_from_slice(&chunk[..n]);
    }
    Some((status, !head.contains("connection: close")))
}

/// sluicegate's `/debug/config` RLQS section.
async fn rlqs_state(debug: SocketAddr) -> serde_json::Value {
    let (_, body) = http(debug, "GET", "/debug/config", "").await;
    serde_json::from_str::<serde_json::Value>(&body).map(|v| v["rlqs"].clone()).unwrap_or_default()
}

/// The bucket `{api_key: key}` as `/debug/config` lists it.
async fn bucket(debug: SocketAddr, key: &str) -> Option<serde_json::Value> {
    let state = rlqs_state(debug).await;
    state["listed"].as_array()?.iter().find(|b| b["bucket_id"]["api_key"] == key).cloned()
}

fn serve(rules: &TempDir, grpc_port: u16) -> process::Running {
    let port = grpc_port.to_string();
    process::spawn(process::loopback(rules.path(), &[("GRPC_PORT", &port), ("GRPC_WORKERS", "1")]))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_envoys_share_a_bucket_by_demand_and_follow_reloads_outages_and_blanket_rules() {
    let rules = TempDir::new("envoy-rlqs");
    let rules_file = rules.write("api.yaml", EXAMPLE_RULES);
    let grpc_port = free_port();
    let sluicegate = serve(&rules, grpc_port);
    let debug = sluicegate.debug;
    let (a, b) =
        (Envoy::start_example("envoy-rlqs", grpc_port, |c| c), Envoy::start_example("envoy-rlqs", grpc_port, |c| c));
    let logs = || format!("envoy a:\n{}\nenvoy b:\n{}", a.log(), b.log());

    // Phase 1: 300 requests per second on one key, split 2:1 between the Envoys. The
    // first assignments come at once, but say nothing of demand yet (a subscription's
    // first report covers no time), so the bucket starts split evenly; Envoy 1.40 sends
    // its next report 5 s later (its interval is hard-coded), and from then on the
    // division follows demand. The split is measured from there; the total also over the
    // 30 s from the first assignment.
    let (load_a, load_b) = (Offered::start(a.addr, "k1", 200), Offered::start(b.addr, "k1", 100));
    poll_until("both Envoys hold an assignment for k1", Duration::from_secs(20), async || {
        bucket(debug, "k1").await.is_some_and(|b| {
            b["clients"].as_array().is_some_and(|c| c.len() == 2 && c.iter().all(|c| c["assigned"].is_object()))
        })
    })
    .await;
    let first_assigned = Instant::now();
    poll_until("the division follows demand", Duration::from_secs(20), async || {
        bucket(debug, "k1").await.is_some_and(|b| {
            let tokens: Vec<f64> = b["clients"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|c| c["assigned"]["tokens_per_fill"].as_f64())
                .collect();
            tokens.len() == 2 && {
                let ratio = tokens[0].max(tokens[1]) / tokens[0].min(tokens[1]).max(1.0);
                (1.8..=2.2).contains(&ratio)
            }
        })
    })
    .await;
    let from = Instant::now();
    let window = Duration::from_secs(30);
    tokio::time::sleep(window).await;
    let (ok_a, denied_a, other_a) = load_a.between(from, from + window);
    let (ok_b, denied_b, other_b) = load_b.between(from, from + window);
    let secs = window.as_secs_f64();
    let total = (ok_a + ok_b) as f64 / secs;
    let state = bucket(debug, "k1").await;
    let per_second: Vec<(u64, u64)> = (0..window.as_secs())
        .map(|i| {
            let at = from + Duration::from_secs(i);
            (load_a.between(at, at + Duration::from_secs(1)).0, load_b.between(at, at + Duration::from_secs(1)).0)
        })
        .collect();
    let report = format!(
        "a: {ok_a} ok, {denied_a} denied, {other_a} other; b: {ok_b} ok, {denied_b} denied, {other_b} other; \
         {total:.1}/s admitted; each second (a, b): {per_second:?}; sluicegate: {state:#?}"
    );
    assert!((90.0..=105.0).contains(&total), "admitted {total:.1}/s, not within 90..=105: {report}\n{}", logs());
    let (rate_a, rate_b) = (ok_a as f64 / secs, ok_b as f64 / secs);
    assert!((rate_a - total * 2.0 / 3.0).abs() <= total * 2.0 / 3.0 * 0.1, "a's share is off: {report}");
    assert!((rate_b - total / 3.0).abs() <= total / 3.0 * 0.1, "b's share is off: {report}");
    assert_eq!(other_a + other_b, 0, "every request answered 200 or 429: {report}");
    eprintln!("division: {total:.1}/s admitted, a {rate_a:.1}/s, b {rate_b:.1}/s");
    // The total holds from the first assignment on too, its first-second burst (each
    // Envoy starts a full bucket) and the even split before demand is known included.
    let since_first = (load_a.between(first_assigned, first_assigned + window).0
        + load_b.between(first_assigned, first_assigned + window).0) as f64
        / secs;
    eprintln!("total over the 30 s from the first assignment: {since_first:.1}/s");
    assert!(
        (90.0..=105.0).contains(&since_first),
        "admitted {since_first:.1}/s over the 30 s from the first assignment: {report}"
    );

    // Phase 2: blanket rules. A revoked key is denied by Envoy itself once its DENY_ALL
    // arrives; an internal key is let through far past any limit.
    poll_until("the blocked key is denied", Duration::from_secs(10), async || {
        get(a.addr, "/", &[("x-api-key", "blocked")]).status == 429
    })
    .await;
    for _ in 0..20 {
        assert_eq!(get(a.addr, "/", &[("x-api-key", "blocked")]).status, 429);
    }
    get(b.addr, "/", &[("x-api-key", "internal")]);
    poll_until("the internal key is assigned ALLOW_ALL", Duration::from_secs(10), async || {
        bucket(debug, "internal").await.is_some_and(|b| b["clients"][0]["assigned"] == "ALLOW_ALL")
    })
    .await;
    let internal = Offered::start(b.addr, "internal", 400);
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (ok, denied, _) = internal.between(started, started + Duration::from_secs(2));
    drop(internal);
    assert!(ok >= 600 && denied == 0, "ALLOW_ALL: {ok} ok, {denied} denied in 2 s at 400/s");

    // Phase 3: a reload cuts k1 to 20 per second; within two reporting intervals (1 s
    // each) both Envoys enforce it.
    write_atomically(&rules_file, &EXAMPLE_RULES.replace("requests_per_unit: 100", "requests_per_unit: 20"));
    let reloaded = Instant::now();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (after_a, after_b) = (
        load_a.between(reloaded + Duration::from_secs(2), reloaded + Duration::from_secs(5)).0,
        load_b.between(reloaded + Duration::from_secs(2), reloaded + Duration::from_secs(5)).0,
    );
    // 3 s at 20/s is 60, plus the fresh buckets' bursts (20 between them); the old
    // limit would have let 300 through.
    assert!(after_a + after_b <= 85, "after the reload: a {after_a}, b {after_b} ok in 3 s");
    eprintln!("after the reload: a {after_a}, b {after_b} ok in 3 s");

    // Phase 4: sluicegate stops. Once the assignments expire (15 s: three of Envoy's
    // 5 s reports) the Envoys fall back to their expired_assignment_behavior, ALLOW_ALL:
    // everything offered goes through.
    tokio::task::block_in_place(|| process::stop(sluicegate));
    let fell_back = poll_until("the Envoys fall back to ALLOW_ALL", Duration::from_secs(30), async || {
        load_a.recent_ok(Duration::from_secs(1)) + load_b.recent_ok(Duration::from_secs(1)) > 200
    })
    .await;
    eprintln!("fell back to ALLOW_ALL {fell_back:?} after the stop");
    // Restarted, it gets the Envoys' next reports (within 5 s) and assigns at once.
    let sluicegate = serve(&rules, grpc_port);
    let resumed = poll_until("assignments resume after the restart", Duration::from_secs(20), async || {
        load_a.recent_ok(Duration::from_secs(1)) + load_b.recent_ok(Duration::from_secs(1)) < 40
    })
    .await;
    eprintln!("limited again {resumed:?} after the restart");
    assert_eq!(rlqs_state(sluicegate.debug).await["streams"], 2, "{}", logs());
    drop((load_a, load_b));
    tokio::task::block_in_place(|| process::stop(sluicegate));
}
