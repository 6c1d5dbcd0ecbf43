//! Test harness shared by the integration tests: temporary rule directories, an
//! in-process server on loopback port 0 with a fake clock, a real tonic client, request
//! builders and the status codes they are answered with, an RLQS client (`rlqs`), a tiny
//! HTTP/1.1 client, the built binary on loopback ports (`process`), and polling with a
//! deadline (`poll`).
#![allow(dead_code)]

pub mod control_plane;
pub mod envoy;
pub mod load;
pub mod otlp;
pub mod poll;
pub mod raw_grpc;
pub mod redis_server;
pub mod rlqs;
pub mod rss;
pub mod test_ca;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::Entry;
use envoy_types::pb::envoy::service::ratelimit::v3::RateLimitRequest;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::Code;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient;
use envoy_types::pb::google::protobuf::UInt64Value;
use sluicegate::app::{Server, Shared};
use sluicegate::clock::FakeClock;
use sluicegate::settings::Settings;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::transport::Channel;

/// The answer codes, as the `i32`s a response carries.
pub const OK: i32 = Code::Ok as i32;
pub const OVER: i32 = Code::OverLimit as i32;
pub const UNKNOWN: i32 = Code::Unknown as i32;

/// A directory under the system temp dir, removed when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(name: &str) -> TempDir {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "sluicegate-{name}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn write(&self, relative: &str, text: &str) -> PathBuf {
        let path = self.0.join(relative);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, text).unwrap();
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A server running in this process on loopback port 0.
pub struct TestServer {
    pub grpc: SocketAddr,
    pub http: SocketAddr,
    pub debug: SocketAddr,
    pub clock: FakeClock,
    pub shared: Shared,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
    /// The rule directory it serves (tests rewrite files in it to reload).
    pub rules: TempDir,
}

/// Starts a server serving `rules` (file name, YAML) with extra settings, the clock at
/// `clock_secs`.
pub async fn start(rules: &[(&str, &str)], settings: &[(&str, &str)], clock_secs: u64) -> TestServer {
    let dir = TempDir::new("rules");
    for (name, text) in rules {
        dir.write(name, text);
    }
    let settings = Settings::for_tests_with(vec![dir.path().to_path_buf()], settings).unwrap();
    let clock = FakeClock::at_secs(clock_secs);
    let started = Server::start_with_clock(settings, clock.clone().into()).unwrap();
    let (grpc, http, debug) = (started.grpc_addr.unwrap(), started.http_addr, started.debug_addr);
    let shared = started.shared.clone();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        started
            .run(async {
                let _ = stopped.await;
            })
            .await
            .unwrap();
    });
    TestServer { grpc, http, debug, clock, shared, stop: Some(stop), task: Some(task), rules: dir }
}

impl TestServer {
    pub async fn client(&self) -> RateLimitServiceClient<Channel> {
        connect(self.grpc).await
    }

    /// Waits until the server's Redis store is connected (it must have one).
    pub async fn wait_redis_up(&self) {
        let store = self.shared.redis.clone().expect("a Redis store");
        poll::poll_until("sluicegate connects to Redis", Duration::from_secs(15), async || store.is_up()).await;
    }

    /// Stops the server and waits for it to finish.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.unwrap();
        }
    }
}

pub async fn connect(addr: SocketAddr) -> RateLimitServiceClient<Channel> {
    let channel = Channel::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap();
    RateLimitServiceClient::new(channel)
}

pub fn descriptor(entries: &[(&str, &str)]) -> RateLimitDescriptor {
    RateLimitDescriptor {
        entries: entries.iter().map(|(k, v)| Entry { key: k.to_string(), value: v.to_string() }).collect(),
        ..Default::default()
    }
}

pub fn request(domain: &str, descriptors: &[&[(&str, &str)]]) -> RateLimitRequest {
    RateLimitRequest {
        domain: domain.to_string(),
        descriptors: descriptors.iter().map(|d| descriptor(d)).collect(),
        hits_addend: 0,
    }
}

/// A descriptor's own `hits_addend` (0: check without counting).
pub fn hits(value: u64) -> Option<UInt64Value> {
    Some(UInt64Value { value })
}

/// A request with one descriptor carrying its own `hits_addend`.
pub fn request_with_hits(domain: &str, entries: &[(&str, &str)], value: u64) -> RateLimitRequest {
    let mut request = request(domain, &[entries]);
    request.descriptors[0].hits_addend = hits(value);
    request
}

/// One HTTP/1.1 request; returns the status code and body.
pub async fn http(addr: SocketAddr, method: &str, path: &str, body: &str) -> (u16, String) {
    // Connection errors come back as status 0, so polling loops can keep polling.
    let Ok(mut stream) = tokio::net::TcpStream::connect(addr).await else { return (0, String::new()) };
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    if stream.write_all(request.as_bytes()).await.is_err() {
        return (0, String::new());
    }
    let mut response = Vec::new();
    if stream.read_to_end(&mut response).await.is_err() && response.is_empty() {
        return (0, String::new());
    }
    let response = String::from_utf8_lossy(&response).into_owned();
    let status = response.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status, body)
}

/// The value of the series `name` with `labels` (among others; none for a series
/// without labels) in the Prometheus text served at `addr`'s `/metrics`, if it is there.
pub async fn metric(addr: SocketAddr, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let (_, text) = http(addr, "GET", "/metrics", "").await;
    text.lines()
        .filter(|l| l.strip_prefix(name).is_some_and(|rest| rest.starts_with(['{', ' '])))
        .filter(|l| labels.iter().all(|(k, v)| l.contains(&format!("{k}=\"{v}\""))))
        .find_map(|l| l.rsplit(' ').next()?.parse().ok())
}

/// Running the built binary.
pub mod process {
    use std::io::{BufRead, BufReader};
    use std::net::SocketAddr;
    use std::process::{Child, Command, Stdio};
    use std::sync::mpsc;
    use std::time::{Duration, Instant};

    pub struct Running {
        pub child: Child,
        pub lines: mpsc::Receiver<String>,
        /// The lines read while waiting for the listeners.
        pub seen: Vec<String>,
        pub grpc: SocketAddr,
        pub http: SocketAddr,
        pub debug: SocketAddr,
    }

    impl Drop for Running {
        /// A test that fails halfway must not leave its server running.
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    pub fn sluicegate() -> Command {
        Command::new(env!("CARGO_BIN_EXE_sluicegate"))
    }

    /// Settings every spawned server gets: nothing from the test's own environment,
    /// every listener on a loopback port of its choosing, no statsd, no shutdown grace,
    /// quiet logs.
    pub fn loopback_env(command: &mut Command) -> &mut Command {
        command
            .env_clear()
            .env("USE_STATSD", "false")
            .env("HOST", "127.0.0.1")
            .env("GRPC_HOST", "127.0.0.1")
            .env("DEBUG_HOST", "127.0.0.1")
            .env("PORT", "0")
            .env("GRPC_PORT", "0")
            .env("DEBUG_PORT", "0")
            .env("SHUTDOWN_GRACE_PERIOD", "0")
            .env("LOG_LEVEL", "warn")
    }

    /// The binary serving `--config <config>` with [`loopback_env`] and `env` on top.
    pub fn loopback(config: &std::path::Path, env: &[(&str, &str)]) -> Command {
        let mut command = sluicegate();
        loopback_env(&mut command).arg("--config").arg(config);
        for (k, v) in env {
            command.env(k, v);
        }
        command
    }

    /// Starts the binary serving `--config <config>` on loopback ports, logging at info
    /// (so tests can look for what it logs), with `env` on top.
    pub fn start(config: &std::path::Path, env: &[(&str, &str)]) -> Running {
        let mut command = loopback(config, &[("LOG_LEVEL", "info")]);
        for (k, v) in env {
            command.env(k, v);
        }
        spawn(command)
    }

    /// Runs `command`, which should fail at start-up, to its exit: its exit code and what
    /// it printed on stderr. Killed past 15 s, so one that serves instead fails the test
    /// rather than hanging it.
    pub fn exit_and_stderr(mut command: Command) -> (Option<i32>, String) {
        let mut child = command.stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
        let mut stderr = child.stderr.take().unwrap();
        let reader = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = std::io::Read::read_to_string(&mut stderr, &mut text);
            text
        });
        let status = wait_exit(&mut child, Duration::from_secs(15));
        (status.code(), reader.join().unwrap())
    }

    /// SIGTERM, a clean exit (code 0), and the lines it logged after start-up.
    pub fn stop(mut running: Running) -> Vec<String> {
        sigterm(&running.child);
        assert_eq!(wait_exit(&mut running.child, Duration::from_secs(15)).code(), Some(0));
        running.lines.try_iter().collect()
    }

    pub fn address_in(line: &str, prefix: &str) -> Option<SocketAddr> {
        let rest = line.split(prefix).nth(1)?;
        rest.split('\'').next()?.parse().ok()
    }

    /// Starts the binary and waits for its three "Listening" lines.
    pub fn spawn(mut command: Command) -> Running {
        let mut child = command.stderr(Stdio::piped()).stdout(Stdio::null()).spawn().unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let (mut grpc, mut http, mut debug) = (None, None, None);
        let mut seen = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        while grpc.is_none() || http.is_none() || debug.is_none() {
            let Ok(line) = lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) else {
                // A server stuck at start-up may ignore SIGTERM: kill it, or it outlives the test.
                let _ = child.kill();
                let _ = child.wait();
                panic!("no listening lines within 20s; it printed {seen:?}");
            };
            seen.push(line.clone());
            grpc = grpc.or(address_in(&line, "Listening for gRPC on '"));
            http = http.or(address_in(&line, "Listening for HTTP on '"));
            debug = debug.or(address_in(&line, "Listening for debug on '"));
        }
        Running { child, lines, seen, grpc: grpc.unwrap(), http: http.unwrap(), debug: debug.unwrap() }
    }

    /// The reference's layout: `RUNTIME_ROOT/RUNTIME_SUBDIRECTORY/config`, on loopback.
    pub fn reference_env(command: &mut Command, root: &std::path::Path) {
        loopback_env(command)
            .env("RUNTIME_ROOT", root)
            .env("RUNTIME_SUBDIRECTORY", "ratelimit")
            .env("RUNTIME_WATCH_ROOT", "false");
    }

    pub fn sigterm(child: &Child) {
        let status = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status().unwrap();
        assert!(status.success());
    }

    pub fn wait_exit(child: &mut Child, within: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("the process did not exit within {within:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
