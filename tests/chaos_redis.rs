//! Chaos under load, Redis side: the real binary with `BACKEND_TYPE=redis` and
//! `REDIS_TIMEOUT=500ms`, the `loadgen` example calling steadily, and real `redis-server`
//! processes that are killed and restarted, frozen (SIGSTOP) and thawed (SIGCONT), or
//! failed over by Sentinel. For each `BACKEND_FAILURE_POLICY`, and in every phase:
//! - no call waits much past `REDIS_TIMEOUT` (the slowest call per phase is printed);
//! - during an outage the policy answers: `error` UNAVAILABLE, `allow` OK, `local` OK
//!   counted here (a probe burst on a fresh key admits exactly the limit);
//! - Redis answers again within seconds of coming back, without a restart (a fresh key
//!   lands in Redis), and counts exactly (probe bursts);
//! - a counter that lived through a freeze admits only what its limit left.
//!
//! `CHAOS_PHASE_SECONDS` (default 3), `CHAOS_RATE` (default 1000 calls/s) and
//! `CHAOS_SLACK_MS` (default 400: how far past the timeout a call may end, for the
//! scheduling of a loaded debug build) tune it; `scripts/chaos` runs it longer against the
//! release build.

mod common;

use std::time::{Duration, Instant};

use common::load::{Load, Totals, burst, env_or, exact_probe, serve};
use common::poll::poll_until;
use common::redis_server::{RedisServer, free_port};
use common::{TempDir, connect};
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient;
use tonic::transport::Channel;

static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

const TIMEOUT_MS: u64 = 500;
const LIMIT: u32 = 20;
const RULES: &str = "domain: bench\ndescriptors:\n  - key: user\n    rate_limit: {unit: hour, requests_per_unit: 1000000000}\n\
---\ndomain: chaos\ndescriptors:\n  - key: probe\n    rate_limit: {unit: hour, requests_per_unit: 20}\n";

type Client = RateLimitServiceClient<Channel>;

/// The server, its load, and what a phase needs to check its answers.
struct Run {
    policy: &'static str,
    load: Load,
    client: Client,
    phase: Duration,
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

fn start(dir: &TempDir, policy: &str, env: &[(&str, &str)]) -> common::process::Running {
    dir.write("rules.yaml", RULES);
    let timeout = format!("{TIMEOUT_MS}ms");
    let mut all = vec![("BACKEND_TYPE", "redis"), ("REDIS_TIMEOUT", timeout.as_str())];
    all.push(("BACKEND_FAILURE_POLICY", policy));
    all.extend_from_slice(env);
    serve(dir, &all)
}

impl Run {
    /// Waits for a first answer from Redis, then starts the load.
    async fn begin(server: &common::process::Running, policy: &'static str, redis: u16) -> Run {
        let mut client = connect(server.grpc).await;
        poll_until("sluicegate answers from Redis", Duration::from_secs(15), async || {
            in_redis(&mut client, redis).await
        })
        .await;
        let rate = env_or("CHAOS_RATE", 1_000).to_string();
        let args = ["--rate", &rate, "--keys", "1000", "--concurrency", "16", "--connections", "2"];
        let load = Load::start(
            server.grpc,
            &[&args[..], &["--domain", "bench", "--key", "user", "--duration", "3600"]].concat(),
        );
        poll_until("the load runs", Duration::from_secs(10), async || load.total().calls >= 50).await;
        Run { policy, load, client, phase: Duration::from_secs(env_or("CHAOS_PHASE_SECONDS", 3)) }
    }

    /// Load answers from `from` on, and the slowest call, checked against the timeout.
    fn report(&self, phase: &str, from: Instant) -> Totals {
        let t = self.load.between(from, Instant::now());
        println!("chaos {} {phase}: {t}", self.policy);
        let slack = env_or("CHAOS_SLACK_MS", 400);
        assert!(
            t.max_us <= (TIMEOUT_MS + slack) * 1000,
            "{} {phase}: a call waited past REDIS_TIMEOUT: {t}",
            self.policy
        );
        assert_eq!(t.deadline + t.other, 0, "{} {phase}: {t}", self.policy);
        t
    }

    /// A phase with Redis healthy: every answer from Redis, probes exact.
    async fn healthy(&mut self, phase: &str) {
        let from = Instant::now();
        tokio::time::sleep(self.phase).await;
        exact_probe(&mut self.client, "chaos", "probe", LIMIT, 3600, 30, phase).await;
        let t = self.report(phase, from);
        assert_eq!(t.errors(), 0, "{} {phase}: errors with Redis up: {t}", self.policy);
    }

    /// A phase with Redis out: the policy's answers to the load and to a probe burst.
    async fn outage(&mut self, phase: &str) {
        let from = Instant::now();
        tokio::time::sleep(self.phase / 2).await;
        let value = format!("{phase}-{}", std::process::id());
        let probe = burst(&mut self.client, "chaos", "probe", &value, 30).await;
        println!("chaos {} {phase}: probe of 30 hits on a limit of {LIMIT}: {probe}", self.policy);
        let expected = match self.policy {
            "error" => Totals { unavailable: 30, ..Totals::default() },
            "allow" => Totals { ok: 30, ..Totals::default() },
            _ => Totals { ok: u64::from(LIMIT), over: 30 - u64::from(LIMIT), ..Totals::default() },
        };
        assert_eq!(Totals { calls: 0, max_us: 0, ..probe }, expected, "{} {phase}: probe {probe}", self.policy);
        tokio::time::sleep(self.phase / 2).await;
        self.report(&format!("{phase} (whole)"), from);
        // Past the first timeout, every load answer is the policy's.
        let t = self.report(phase, from + Duration::from_millis(2 * TIMEOUT_MS));
        match self.policy {
            "error" => assert!(t.ok == 0 && t.unavailable > 0, "error {phase}: {t}"),
            _ => assert!(t.errors() == 0 && t.ok > 0, "{} {phase}: {t}", self.policy),
        }
    }

    /// Waits until calls reach Redis again, the load's as well as a probe's (each gRPC
    /// worker has its own Redis connection, and each reconnects on its own); returns how
    /// long that took.
    async fn recovery(&mut self, phase: &str, redis: u16) -> Duration {
        let from = Instant::now();
        let load = &self.load;
        let took = poll_until(&format!("{phase}: answers from Redis"), Duration::from_secs(15), async || {
            in_redis(&mut self.client, redis).await
                && load.recent(Duration::from_millis(600)).is_some_and(|t| t.errors() == 0 && t.calls > 0)
        })
        .await;
        println!("chaos {} {phase}: answers from Redis again after {:.2}s", self.policy, took.as_secs_f64());
        self.report(phase, from);
        took
    }
}

/// One call on a fresh key answered without error and counted in the Redis on `port`.
async fn in_redis(client: &mut Client, port: u16) -> bool {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let value = format!("up-{}-{}", std::process::id(), N.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
    if burst(client, "chaos", "probe", &value, 1).await.errors() != 0 {
        return false;
    }
    let Ok(client) = redis::Client::open(format!("redis://127.0.0.1:{port}/")) else { return false };
    let Ok(mut conn) = client.get_connection_with_timeout(Duration::from_secs(1)) else { return false };
    let keys: Vec<String> = redis::cmd("KEYS").arg(format!("*{value}*")).query(&mut conn).unwrap_or_default();
    !keys.is_empty()
}

fn outages(policy: &'static str) {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut redis = RedisServer::start(&[]);
    let dir = TempDir::new("chaos");
    let url = redis.address();
    let server = start(&dir, policy, &[("REDIS_URL", &url)]);
    runtime().block_on(async {
        let mut run = Run::begin(&server, policy, redis.port).await;
        run.healthy("baseline").await;

        redis.kill();
        run.outage("killed").await;
        redis.restart();
        run.recovery("restarted", redis.port).await;
        run.healthy("after restart").await;

        // A counter that lives through the freeze: half its limit used before.
        let kept = format!("kept-{policy}-{}", std::process::id());
        let before = burst(&mut run.client, "chaos", "probe", &kept, LIMIT / 2).await;
        assert_eq!(before.ok, u64::from(LIMIT / 2), "{before}");
        redis.freeze(true);
        run.outage("frozen").await;
        redis.freeze(false);
        run.recovery("thawed", redis.port).await;
        run.healthy("after thaw").await;
        let after = burst(&mut run.client, "chaos", "probe", &kept, 30).await;
        println!("chaos {policy} after thaw: 30 more hits on a counter with {} left: {after}", LIMIT / 2);
        assert_eq!(after.ok, u64::from(LIMIT / 2), "{policy}: admitted past the limit after the freeze: {after}");
    });
}

#[test]
fn redis_killed_and_frozen_under_load_policy_error() {
    outages("error");
}

#[test]
fn redis_killed_and_frozen_under_load_policy_allow() {
    outages("allow");
}

#[test]
fn redis_killed_and_frozen_under_load_policy_local() {
    outages("local");
}

/// A Sentinel process watching one master, stopped when dropped.
struct Sentinel {
    port: u16,
    child: std::process::Child,
    _dir: TempDir,
}

impl Sentinel {
    fn start(master: u16) -> Sentinel {
        let dir = TempDir::new("chaos-sentinel");
        let port = free_port();
        let conf = dir.write(
            "sentinel.conf",
            &format!(
                "port {port}\nbind 127.0.0.1\nsentinel monitor mymaster 127.0.0.1 {master} 1\n\
                 sentinel down-after-milliseconds mymaster 1000\nsentinel failover-timeout mymaster 5000\n"
            ),
        );
        let child = std::process::Command::new("redis-server")
            .arg(&conf)
            .arg("--sentinel")
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        Sentinel { port, child, _dir: dir }
    }

    fn ask(&self, args: &[&str]) -> Option<redis::Value> {
        let client = redis::Client::open(format!("redis://127.0.0.1:{}/", self.port)).ok()?;
        let mut conn = client.get_connection_with_timeout(Duration::from_secs(1)).ok()?;
        let mut cmd = redis::cmd("SENTINEL");
        for a in args {
            cmd.arg(*a);
        }
        cmd.query(&mut conn).ok()
    }

    fn master_port(&self) -> Option<u16> {
        let reply: Vec<String> = redis::from_redis_value(self.ask(&["get-master-addr-by-name", "mymaster"])?).ok()?;
        reply.get(1)?.parse().ok()
    }
}

impl Drop for Sentinel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn sentinel_failover_under_load_policy_error() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut master = RedisServer::start(&[]);
    let replica = RedisServer::start(&["--replicaof", "127.0.0.1", &master.port.to_string()]);
    let sentinel = Sentinel::start(master.port);
    let dir = TempDir::new("chaos");
    let url = format!("mymaster,127.0.0.1:{}", sentinel.port);
    let server = start(&dir, "error", &[("REDIS_TYPE", "sentinel"), ("REDIS_URL", &url)]);
    runtime().block_on(async {
        // The replica in sync, and known to the Sentinel, before the master dies.
        poll_until("the replica syncs and the Sentinel sees it", Duration::from_secs(20), async || {
            let mut conn = replica.connection(None);
            let info: String = redis::cmd("INFO").arg("replication").query(&mut conn).unwrap_or_default();
            let replicas = sentinel.ask(&["replicas", "mymaster"]);
            info.contains("master_link_status:up")
                && matches!(replicas, Some(redis::Value::Array(ref r)) if !r.is_empty())
        })
        .await;
        let mut run = Run::begin(&server, "error", master.port).await;
        run.healthy("baseline").await;

        let from = Instant::now();
        master.kill();
        let promoted = poll_until("the Sentinel promotes the replica", Duration::from_secs(30), async || {
            sentinel.master_port() == Some(replica.port)
        })
        .await;
        println!("chaos sentinel: replica promoted {:.2}s after the master died", promoted.as_secs_f64());
        let t = run.report("failover", from);
        assert!(t.unavailable > 0 && t.deadline + t.other == 0, "failover: {t}");
        let took = run.recovery("promoted", replica.port).await;
        println!("chaos sentinel: answers from the new master {:.2}s after the promotion", took.as_secs_f64());
        run.healthy("after failover").await;
    });
}
