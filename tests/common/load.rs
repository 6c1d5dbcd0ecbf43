//! Soak and chaos harness: the real `sluicegate` binary and the `loadgen` example as
//! separate processes on loopback, with what the tests measure about them: the load's
//! answers and slowest call per interval (from `loadgen --report-every`), probe bursts
//! checked against a model, the server's resident memory, its metrics and rules.
//!
//! Durations and rates come from environment variables with short defaults, so
//! `cargo test` (CI) runs a short version and `scripts/soak` / `scripts/chaos` the long
//! one against the release build.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::Code;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient;
use tonic::transport::Channel;

use super::{TempDir, process};

/// A number from the environment, or `default`.
pub fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Seconds since the Unix epoch: what the server's fixed windows are aligned to.
pub fn unix_secs() -> u64 {
    // The server's own clock, as the spawned binary reads it.
    sluicegate::clock::Clock::System.now().0 / 1_000_000_000
}

/// The binary serving `dir` (`--config`), on loopback ports of its choosing, with `env`
/// on top of quiet defaults. Killed when dropped.
pub fn serve(dir: &TempDir, env: &[(&str, &str)]) -> process::Running {
    process::spawn(process::loopback(dir.path(), env))
}

/// Resident memory of `pid` in KiB (0 once it is gone).
pub fn rss_kib(pid: u32) -> u64 {
    super::rss::resident_bytes_of(&pid.to_string()).unwrap_or(0) as u64 / 1024
}

/// A value of the Prometheus text on the debug listener's `/metrics`.
pub async fn metric(debug: SocketAddr, name: &str) -> Option<f64> {
    let (_, body) = super::http(debug, "GET", "/metrics", "").await;
    body.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// Answers of one stretch of calls, summed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    pub calls: u64,
    pub ok: u64,
    pub over: u64,
    pub unavailable: u64,
    /// Calls that got no answer within the client's timeout.
    pub deadline: u64,
    pub other: u64,
    /// The slowest call, in microseconds.
    pub max_us: u64,
}

impl Totals {
    pub fn errors(&self) -> u64 {
        self.unavailable + self.deadline + self.other
    }

    fn add(&mut self, t: &Totals) {
        self.calls += t.calls;
        self.ok += t.ok;
        self.over += t.over;
        self.unavailable += t.unavailable;
        self.deadline += t.deadline;
        self.other += t.other;
        self.max_us = self.max_us.max(t.max_us);
    }
}

impl std::fmt::Display for Totals {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "calls={} ok={} over={} unavailable={} deadline={} other={} max={:.1}ms",
            self.calls,
            self.ok,
            self.over,
            self.unavailable,
            self.deadline,
            self.other,
            self.max_us as f64 / 1000.0
        )
    }
}

/// The `loadgen` example running against a server, its interval lines collected with the
/// time each arrived. Killed when dropped.
pub struct Load {
    child: Child,
    ticks: Arc<Mutex<Vec<(Instant, Totals)>>>,
}

/// `loadgen` beside the binary under test (`cargo test` and `cargo build --examples`
/// put examples in `<target>/<profile>/examples/`).
pub fn loadgen_path() -> PathBuf {
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_sluicegate"));
    let path = bin.parent().unwrap().join("examples").join("loadgen");
    assert!(path.exists(), "{} is missing: build it with `cargo build --example loadgen`", path.display());
    path
}

impl Load {
    /// Starts `loadgen` on `target`, reporting every 250 ms, with `args` (`--rate`,
    /// `--keys`, `--domain`, `--key`, `--duration` ...).
    pub fn start(target: SocketAddr, args: &[&str]) -> Load {
        let mut child = Command::new(loadgen_path())
            .arg("--target")
            .arg(target.to_string())
            .args(["--warmup", "0", "--report-every", "0.25", "--timeout", "5"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let ticks = Arc::new(Mutex::new(Vec::new()));
        let sink = ticks.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(t) = parse_interval(&line) {
                    sink.lock().unwrap().push((Instant::now(), t));
                }
            }
        });
        Load { child, ticks }
    }

    /// Everything reported between `from` and `to`.
    pub fn between(&self, from: Instant, to: Instant) -> Totals {
        let mut sum = Totals::default();
        for (_, t) in self.ticks.lock().unwrap().iter().filter(|(at, _)| *at >= from && *at <= to) {
            sum.add(t);
        }
        sum
    }

    /// What the last `window` reported; `None` before two reports have arrived in it.
    pub fn recent(&self, window: Duration) -> Option<Totals> {
        let since = Instant::now() - window;
        let ticks = self.ticks.lock().unwrap();
        let recent: Vec<&Totals> = ticks.iter().filter(|(at, _)| *at >= since).map(|(_, t)| t).collect();
        if recent.len() < 2 {
            return None;
        }
        let mut sum = Totals::default();
        recent.into_iter().for_each(|t| sum.add(t));
        Some(sum)
    }

    /// Everything reported so far.
    pub fn total(&self) -> Totals {
        self.between(Instant::now() - Duration::from_secs(86_400), Instant::now())
    }

    /// Waits (bounded) until the load has answered at least `calls` calls in all.
    pub fn wait_for_calls(&self, calls: u64, within: Duration) {
        let deadline = Instant::now() + within;
        while self.total().calls < calls {
            assert!(Instant::now() < deadline, "the load made {} calls in {within:?}", self.total().calls);
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn parse_interval(line: &str) -> Option<Totals> {
    let rest = line.strip_prefix("interval ")?;
    let field = |name: &str| -> Option<u64> {
        rest.split_whitespace().find_map(|kv| kv.strip_prefix(name)?.strip_prefix('=')?.parse().ok())
    };
    Some(Totals {
        calls: field("calls")?,
        ok: field("ok")?,
        over: field("over")?,
        unavailable: field("unavailable")?,
        deadline: field("deadline")?,
        other: field("other")?,
        max_us: field("max_us")?,
    })
}

/// `hits` calls, one after another, each with one descriptor `key=value` of `domain`.
pub async fn burst(
    client: &mut RateLimitServiceClient<Channel>,
    domain: &str,
    key: &str,
    value: &str,
    hits: u32,
) -> Totals {
    let mut t = Totals::default();
    for _ in 0..hits {
        let request = super::request(domain, &[&[(key, value)]]);
        let started = Instant::now();
        let answer = tokio::time::timeout(Duration::from_secs(10), client.should_rate_limit(request)).await;
        t.calls += 1;
        t.max_us = t.max_us.max(started.elapsed().as_micros() as u64);
        match answer {
            Ok(Ok(r)) if r.get_ref().overall_code == Code::Ok as i32 => t.ok += 1,
            Ok(Ok(_)) => t.over += 1,
            Ok(Err(s)) if s.code() == tonic::Code::Unavailable => t.unavailable += 1,
            Ok(Err(_)) => t.other += 1,
            Err(_) => t.deadline += 1,
        }
    }
    t
}

/// A burst on a fresh counter of a limit of `limit` per `window_secs`: its OK answers
/// must be exactly min(hits, limit). Retried on another key when the burst straddled a
/// window boundary (the model then does not apply); returns the burst's answers.
pub async fn exact_probe(
    client: &mut RateLimitServiceClient<Channel>,
    domain: &str,
    key: &str,
    limit: u32,
    window_secs: u64,
    hits: u32,
    label: &str,
) -> Totals {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    for _ in 0..3 {
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let value = format!("{label}-{}-{n}", std::process::id());
        let window = unix_secs() / window_secs;
        let t = burst(client, domain, key, &value, hits).await;
        if unix_secs() / window_secs != window {
            continue;
        }
        assert_eq!(t.errors(), 0, "{label}: a probe got errors: {t}");
        assert_eq!(t.ok, u64::from(hits.min(limit)), "{label}: {hits} hits on a limit of {limit}: {t}");
        return t;
    }
    panic!("{label}: three probes in a row straddled a window boundary");
}

/// Writes `text` to `path` the way `mv` does (a temporary file renamed over it), so a
/// reload never sees half a file.
pub fn write_atomically(path: &std::path::Path, text: &str) {
    let tmp = path.with_extension("tmp~");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}
