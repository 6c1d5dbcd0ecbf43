//! A load generator for any Envoy rate limit service (RLS v3 over gRPC).
//!
//! Keeps C calls in flight over K HTTP/2 connections, cycling through N distinct
//! descriptor values, and prints requests per second, latency percentiles and, given the
//! server's pid, the server's own CPU time per call (summed over its threads from
//! `/proc/<pid>/task/*/schedstat`, in nanoseconds).
//!
//! ```text
//! cargo run --release --example loadgen -- --target 127.0.0.1:8081 \
//!     --concurrency 64 --connections 4 --keys 100000 --duration 10 --server-pid 1234
//! ```
//!
//! It runs on one current-thread runtime, so pin it to a core of its own
//! (`taskset -c 1 ...`) and the server to another.
//!
//! For soak and chaos runs (`tests/soak.rs`, `tests/chaos.rs`): `--rate` paces the calls
//! to a steady total rate, `--report-every` prints one line per interval (calls, answers
//! by kind, the slowest call) so a harness can tell phases apart, and `--timeout` bounds
//! each call on the client side (a call past it counts as `deadline`).
//!
//! `--skew S` (default 1: every value in turn) draws a call's value as `⌊N · u^S⌋` for a
//! pseudo-random `u` in [0, 1): with S = 3 over 100 values (tenants), the busiest gets
//! about a fifth of the calls and the quietest about 0.3 % (the hot-key workload).

/// The same allocator as the `sluicegate` binary, so the comparison is like for like.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::Entry;
use envoy_types::pb::envoy::service::ratelimit::v3::RateLimitRequest;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::Code;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient;
use hdrhistogram::Histogram;
use tonic::transport::{Channel, Endpoint};

struct Options {
    target: String,
    concurrency: usize,
    connections: usize,
    keys: u64,
    skew: f64,
    duration: Duration,
    warmup: Duration,
    domain: String,
    key: String,
    server_pid: Option<u32>,
    /// Another process whose CPU per call to report (Redis).
    backend_pid: Option<u32>,
    label: String,
    /// Calls per second in total, 0 for as fast as possible.
    rate: f64,
    report_every: Option<Duration>,
    timeout: Duration,
}

fn usage() -> ! {
    eprintln!(
        "usage: loadgen --target HOST:PORT [--concurrency 64] [--connections 4] [--keys 100000] [--skew 1] \
         [--duration 10] [--warmup 2] [--domain bench] [--key user] [--server-pid PID] [--backend-pid PID] [--label NAME] \
         [--rate CALLS_PER_SEC] [--report-every SECS] [--timeout SECS]"
    );
    std::process::exit(64)
}

/// The descriptor value of the `n`-th call: in turn, or skewed toward the first values.
fn value_index(n: u64, o: &Options) -> u64 {
    if o.skew == 1.0 {
        return n % o.keys;
    }
    // splitmix64: a cheap, well-spread hash of the call number.
    let mut z = n.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    let u = (z ^ (z >> 31)) as f64 / (u64::MAX as f64 + 1.0);
    ((o.keys as f64 * u.powf(o.skew)) as u64).min(o.keys - 1)
}

fn parse_options() -> Options {
    let mut o = Options {
        target: String::new(),
        concurrency: 64,
        connections: 4,
        keys: 100_000,
        skew: 1.0,
        duration: Duration::from_secs(10),
        warmup: Duration::from_secs(2),
        domain: "bench".into(),
        key: "user".into(),
        server_pid: None,
        backend_pid: None,
        label: "run".into(),
        rate: 0.0,
        report_every: None,
        timeout: Duration::from_secs(30),
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().unwrap_or_else(|| usage());
        let number = || value.parse::<u64>().unwrap_or_else(|_| usage());
        match flag.as_str() {
            "--target" => o.target = value.clone(),
            "--concurrency" => o.concurrency = number() as usize,
            "--connections" => o.connections = number() as usize,
            "--keys" => o.keys = number().max(1),
            "--skew" => o.skew = value.parse().ok().filter(|s: &f64| *s >= 1.0).unwrap_or_else(|| usage()),
            "--duration" => o.duration = Duration::from_secs_f64(value.parse().unwrap_or_else(|_| usage())),
            "--warmup" => o.warmup = Duration::from_secs_f64(value.parse().unwrap_or_else(|_| usage())),
            "--domain" => o.domain = value.clone(),
            "--key" => o.key = value.clone(),
            "--server-pid" => o.server_pid = Some(number() as u32),
            "--backend-pid" => o.backend_pid = Some(number() as u32),
            "--label" => o.label = value.clone(),
            "--rate" => o.rate = value.parse().unwrap_or_else(|_| usage()),
            "--report-every" => {
                o.report_every = Some(Duration::from_secs_f64(value.parse().unwrap_or_else(|_| usage())))
            }
            "--timeout" => o.timeout = Duration::from_secs_f64(value.parse().unwrap_or_else(|_| usage())),
            _ => usage(),
        }
    }
    if o.target.is_empty() || o.concurrency == 0 || o.connections == 0 {
        usage();
    }
    o
}

/// CPU time of every thread of `pid`, in nanoseconds.
fn cpu_nanos(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return 0 };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next().and_then(|n| n.parse::<u64>().ok()))
        .sum()
}

#[derive(Default)]
struct Tally {
    ok: u64,
    over: u64,
    errors: u64,
}

/// One reporting interval, shared by the workers and the reporter. Counts every call,
/// warm-up included: a harness reading these lines wants every answer.
#[derive(Default)]
struct Interval {
    ok: AtomicU64,
    over: AtomicU64,
    unavailable: AtomicU64,
    deadline: AtomicU64,
    other: AtomicU64,
    max_us: AtomicU64,
}

impl Interval {
    fn record(&self, result: &Result<bool, tonic::Code>, micros: u64) {
        let counter = match result {
            Ok(true) => &self.ok,
            Ok(false) => &self.over,
            Err(tonic::Code::Unavailable) => &self.unavailable,
            Err(tonic::Code::DeadlineExceeded) => &self.deadline,
            Err(_) => &self.other,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        self.max_us.fetch_max(micros, Ordering::Relaxed);
    }

    /// `interval t=<s since start> calls= ok= over= unavailable= deadline=
    /// other= max_us=`, and resets the counts.
    fn report(&self, since: Instant) {
        let take = |c: &AtomicU64| c.swap(0, Ordering::Relaxed);
        let (ok, over, unavailable) = (take(&self.ok), take(&self.over), take(&self.unavailable));
        let (deadline, other, max_us) = (take(&self.deadline), take(&self.other), take(&self.max_us));
        println!(
            "interval t={:.3} calls={} ok={ok} over={over} unavailable={unavailable} \
             deadline={deadline} other={other} max_us={max_us}",
            since.elapsed().as_secs_f64(),
            ok + over + unavailable + deadline + other,
        );
    }
}

async fn worker(
    mut client: RateLimitServiceClient<Channel>,
    worker: u64,
    stride: u64,
    o: Arc<Options>,
    interval: Arc<Interval>,
    measure_from: Instant,
    until: Instant,
) -> (Histogram<u64>, Tally) {
    let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds");
    let mut tally = Tally::default();
    let mut n = worker;
    // With --rate, this worker's k-th call is due at k * concurrency / rate after start.
    let paced_from = Instant::now();
    let mut k = 0u64;
    loop {
        if o.rate > 0.0 {
            let due = paced_from + Duration::from_secs_f64(k as f64 * o.concurrency as f64 / o.rate);
            k += 1;
            tokio::time::sleep_until(due.into()).await;
        }
        let started = Instant::now();
        if started >= until {
            break;
        }
        let request = RateLimitRequest {
            domain: o.domain.clone(),
            descriptors: vec![RateLimitDescriptor {
                entries: vec![Entry { key: o.key.clone(), value: format!("u-{}", value_index(n, &o)) }],
                ..Default::default()
            }],
            hits_addend: 0,
        };
        n += stride;
        let result = match tokio::time::timeout(o.timeout, client.should_rate_limit(request)).await {
            Ok(Ok(r)) => Ok(r.get_ref().overall_code == Code::Ok as i32),
            Ok(Err(status)) => Err(status.code()),
            Err(_) => Err(tonic::Code::DeadlineExceeded),
        };
        let micros = started.elapsed().as_micros() as u64;
        interval.record(&result, micros);
        if started < measure_from {
            continue;
        }
        let _ = histogram.record(micros);
        match result {
            Ok(true) => tally.ok += 1,
            Ok(false) => tally.over += 1,
            Err(_) => tally.errors += 1,
        }
    }
    (histogram, tally)
}

fn main() {
    let o = Arc::new(parse_options());
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    runtime.block_on(async move {
        let mut channels = Vec::new();
        for _ in 0..o.connections {
            let endpoint = Endpoint::from_shared(format!("http://{}", o.target)).expect("target").tcp_nodelay(true);
            channels.push(endpoint.connect().await.expect("connect to the target"));
        }
        let start = Instant::now();
        let measure_from = start + o.warmup;
        let until = measure_from + o.duration;
        let interval = Arc::new(Interval::default());
        let tasks: Vec<_> = (0..o.concurrency)
            .map(|i| {
                let client = RateLimitServiceClient::new(channels[i % channels.len()].clone());
                let (o, interval) = (o.clone(), interval.clone());
                tokio::spawn(worker(client, i as u64, o.concurrency as u64, o, interval, measure_from, until))
            })
            .collect();
        let reporter = o.report_every.map(|every| {
            let interval = interval.clone();
            tokio::spawn(async move {
                let mut ticks = tokio::time::interval_at((start + every).into(), every);
                loop {
                    ticks.tick().await;
                    interval.report(start);
                }
            })
        });
        tokio::time::sleep_until(measure_from.into()).await;
        let cpu_before = o.server_pid.map(cpu_nanos);
        let backend_before = o.backend_pid.map(cpu_nanos);
        let wall_before = Instant::now();
        let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds");
        let mut total = Tally::default();
        for t in tasks {
            let (h, tally) = t.await.expect("worker");
            histogram.add(h).expect("same bounds");
            total.ok += tally.ok;
            total.over += tally.over;
            total.errors += tally.errors;
        }
        let wall = wall_before.elapsed().as_secs_f64();
        if let Some(reporter) = reporter {
            reporter.abort();
            interval.report(start);
        }
        let cpu_after = o.server_pid.map(cpu_nanos);
        let backend_after = o.backend_pid.map(cpu_nanos);
        let calls = total.ok + total.over + total.errors;
        let rps = calls as f64 / wall;
        print!(
            "{label}: calls={calls} ok={} over={} errors={} rps={rps:.0} p50={}us p90={}us p99={}us p999={}us max={}us",
            total.ok,
            total.over,
            total.errors,
            histogram.value_at_quantile(0.50),
            histogram.value_at_quantile(0.90),
            histogram.value_at_quantile(0.99),
            histogram.value_at_quantile(0.999),
            histogram.max(),
            label = o.label,
        );
        if let (Some(before), Some(after)) = (cpu_before, cpu_after) {
            let cpu = after.saturating_sub(before) as f64;
            print!(
                " server_cpu={:.3}s server_cpu_per_call={:.2}us server_cpu_util={:.0}%",
                cpu / 1e9,
                cpu / 1e3 / calls.max(1) as f64,
                cpu / 1e9 / wall * 100.0
            );
        }
        if let (Some(before), Some(after)) = (backend_before, backend_after) {
            let cpu = after.saturating_sub(before) as f64;
            print!(
                " backend_cpu_per_call={:.2}us backend_cpu_util={:.0}%",
                cpu / 1e3 / calls.max(1) as f64,
                cpu / 1e9 / wall * 100.0
            );
        }
        println!();
    });
}
