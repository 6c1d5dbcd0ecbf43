//! Wiring: from settings to a running service, and back down on shutdown.
//!
//! Owns the start-up sequence (load the rules, bind every listener, report
//! ready) and the shutdown sequence (report not-ready at once, keep answering for the
//! grace period, stop accepting, let in-flight calls finish, return). Binding is separate
//! from running ([`Server::start`] then [`Started::run`]) so tests bind port 0, read the
//! chosen ports, and pass their own shutdown future.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_server::RateLimitServiceServer;
use tokio::sync::watch;

use crate::accept::{AcceptMetrics, ConnectionCap, Incoming};
use crate::clock::Clock;
use crate::config;
use crate::config::diag::Diagnostics;
use crate::config::reload::{ConfigLoader, ReloadStatus, Reloader, Watching};
use crate::grpc::{self, GrpcListener, RlsService};
use crate::health::Health;
use crate::http::{self, HttpState};
use crate::rules::LimitRegistry;
use crate::serve::{Endpoint, HttpLimits, Protocol, TimeoutMetrics};
use crate::service::RateLimiter;
use crate::settings::{Backend, Listen, Settings};
use crate::stats::Stats;
use crate::stats::statsd::StatsdSink;
use crate::store::{MemoryStore, RedisStore, Store};
use crate::tls::Tls;

/// How long in-flight calls get to finish once the grace period is over.
const DRAIN_TIMEOUT: Duration = crate::serve::DRAIN_TIMEOUT;
/// How often shutdown checks whether calls are still in flight.
const IN_FLIGHT_POLL: Duration = Duration::from_millis(20);
/// How often histogram samples are folded into buckets.
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);
/// The shortest pause between sweeps of expired counters.
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// Why the service could not start.
#[derive(Debug)]
pub enum StartError {
    /// The first config load failed (and `FORCE_START_WITHOUT_INITIAL_CONFIG` is off).
    Config(Diagnostics),
    /// The TLS certificates did not load.
    Tls(String),
    /// A listener could not bind.
    Bind {
        listener: &'static str,
        address: String,
        error: std::io::Error,
    },
    Io(std::io::Error),
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StartError::Config(d) => {
                let n = d.error_count();
                let plural = if n == 1 { "" } else { "s" };
                write!(f, "the rate limit configuration did not load: {n} error{plural}")
            }
            StartError::Bind { listener, address, error } => {
                write!(f, "cannot listen for {listener} on {address}: {error}")
            }
            StartError::Tls(e) => write!(f, "cannot serve TLS: {e}"),
            StartError::Io(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for StartError {}

/// Everything the service shares between its front ends.
#[derive(Debug, Clone)]
pub struct Shared {
    pub limiter: Arc<RateLimiter>,
    pub health: Arc<Health>,
    pub reloader: Arc<Reloader>,
    pub stats: Arc<Stats>,
    /// In-process counters to sweep: the memory store, or Redis's local fallback.
    pub memory: Option<Arc<MemoryStore>>,
    pub redis: Option<Arc<RedisStore>>,
}

pub struct Server;

/// A service whose rules are loaded and whose listeners are bound.
#[derive(Debug)]
pub struct Started {
    pub shared: Shared,
    watching: Watching,
    /// The TLS configuration, with its certificate watches armed before the first read.
    tls: Option<(Arc<Tls>, Watching)>,
    settings: Settings,
    grpc_listeners: Vec<GrpcListener>,
    http_listener: std::net::TcpListener,
    debug_listener: std::net::TcpListener,
    /// The bound gRPC address (`None` on a unix socket).
    pub grpc_addr: Option<SocketAddr>,
    pub http_addr: SocketAddr,
    pub debug_addr: SocketAddr,
}

impl Server {
    /// Loads the rules and binds every listener, with the system clock.
    pub fn start(settings: Settings) -> Result<Started, StartError> {
        Self::start_with_clock(settings, Clock::System)
    }

    /// As [`Server::start`], with the given clock (tests pass a fake one).
    pub fn start_with_clock(settings: Settings, clock: Clock) -> Result<Started, StartError> {
        for warning in &settings.warnings {
            tracing::warn!("{warning}");
        }
        let registry = Arc::new(LimitRegistry::new());
        let options = settings.rules;
        let stats = Stats::new(settings.stats.clone());
        let reloader = Arc::new(Reloader {
            loader: ConfigLoader::new(settings.config_source.clone(), options, registry.clone())
                .on_empty(settings.empty_config),
            config: Arc::new(ArcSwapOption::empty()),
            health: Arc::new(Health::new(settings.healthy_with_at_least_one_config_loaded)),
            status: ReloadStatus::default(),
            observer: Some(stats.clone()),
        });
        let health = reloader.health.clone();
        let config = reloader.config.clone();
        // Watch first, load second: a change during the load still reloads.
        let watching = Watching::arm(&settings.config_source);
        if let Err(diags) = reloader.reload() {
            if !settings.force_start_without_initial_config {
                return Err(StartError::Config(diags));
            }
            tracing::warn!(
                "starting without rules (FORCE_START_WITHOUT_INITIAL_CONFIG); every call is UNAVAILABLE until a config loads"
            );
        }
        let (store, memory, redis) = match &settings.backend {
            Backend::Memory => {
                let memory = Arc::new(MemoryStore::new(registry, settings.memory_max_counters));
                (Store::Memory(memory.clone()), Some(memory), None)
            }
            Backend::Redis(options) => {
                let policy = options.failure_policy;
                let local = MemoryStore::new(registry, settings.memory_max_counters);
                let redis = Arc::new(RedisStore::new((**options).clone(), local, stats.backend_error.clone()));
                // Until Redis first answers, the policy says whether calls can be answered.
                health.set_backend_ok(redis.serving());
                for backend in redis.backends() {
                    tracing::warn!(
                        "counting in Redis ({}): {}; BACKEND_FAILURE_POLICY={policy:?}",
                        backend.name,
                        backend.target.describe()
                    );
                }
                (Store::Redis(redis.clone()), redis.fallback().cloned(), Some(redis))
            }
        };
        let limiter =
            Arc::new(RateLimiter::new(config, store, clock, settings.service.clone()).with_stats(stats.clone()));

        let tls = match &settings.grpc_tls {
            Some(t) => {
                let watching = Tls::watching_files(t);
                Some((Tls::load(t.clone()).map_err(StartError::Tls)?, watching))
            }
            None => None,
        };
        let (grpc_listeners, grpc_addr) = bind_grpc(&settings)?;
        let http_listener = bind_plain("HTTP", &settings.http.0, settings.http.1)?;
        let debug_listener = bind_plain("debug", &settings.debug.0, settings.debug.1)?;
        let http_addr = http_listener.local_addr().map_err(StartError::Io)?;
        let debug_addr = debug_listener.local_addr().map_err(StartError::Io)?;
        // The reference's start-up lines, at the level it uses, so they show by default.
        tracing::warn!("Listening for debug on '{debug_addr}'");
        match (&settings.grpc, grpc_addr) {
            (_, Some(addr)) => tracing::warn!("Listening for gRPC on '{addr}' ({} workers)", grpc_listeners.len()),
            (Listen::Unix(path), None) => {
                tracing::warn!("Listening for gRPC on unix socket '{}'", path.display())
            }
            _ => {}
        }
        tracing::warn!("Listening for HTTP on '{http_addr}'");
        Ok(Started {
            shared: Shared { limiter, health, reloader, stats, memory, redis },
            watching,
            tls,
            settings,
            grpc_listeners,
            http_listener,
            debug_listener,
            grpc_addr,
            http_addr,
            debug_addr,
        })
    }
}

fn bind_error(listener: &'static str, address: String) -> impl FnOnce(std::io::Error) -> StartError {
    move |error| StartError::Bind { listener, address, error }
}

fn bind_plain(listener: &'static str, host: &str, port: u16) -> Result<std::net::TcpListener, StartError> {
    let shown = format!("{host}:{port}");
    let addr = Listen::socket_addr(host, port).map_err(bind_error(listener, shown.clone()))?;
    let l = std::net::TcpListener::bind(addr).map_err(bind_error(listener, shown.clone()))?;
    l.set_nonblocking(true).map_err(bind_error(listener, shown))?;
    Ok(l)
}

fn reuseport_listener(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

fn bind_grpc(settings: &Settings) -> Result<(Vec<GrpcListener>, Option<SocketAddr>), StartError> {
    match &settings.grpc {
        Listen::Unix(path) => {
            let shown = path.display().to_string();
            // A socket file left by a previous run would make bind fail.
            if std::fs::symlink_metadata(path).is_ok_and(|m| {
                use std::os::unix::fs::FileTypeExt;
                m.file_type().is_socket()
            }) {
                let _ = std::fs::remove_file(path);
            }
            let l = std::os::unix::net::UnixListener::bind(path).map_err(bind_error("gRPC", shown.clone()))?;
            l.set_nonblocking(true).map_err(bind_error("gRPC", shown))?;
            Ok((vec![GrpcListener::Unix(l)], None))
        }
        Listen::Tcp { host, port } => {
            let shown = format!("{host}:{port}");
            let workers = if settings.grpc_workers == 0 {
                std::thread::available_parallelism().map_or(1, |n| n.get())
            } else {
                settings.grpc_workers
            };
            let addr = Listen::socket_addr(host, *port).map_err(bind_error("gRPC", shown.clone()))?;
            let first = reuseport_listener(addr).map_err(bind_error("gRPC", shown.clone()))?;
            // Port 0 picks a port once; every other worker binds that same port.
            let bound = first.local_addr().map_err(StartError::Io)?;
            let mut listeners = vec![GrpcListener::Tcp(first)];
            for _ in 1..workers {
                let l = reuseport_listener(bound).map_err(bind_error("gRPC", bound.to_string()))?;
                listeners.push(GrpcListener::Tcp(l));
            }
            Ok((listeners, Some(bound)))
        }
    }
}

impl Started {
    /// Serves until `shutdown` completes, then drains (docs/architecture.md) and returns.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), StartError> {
        let Started { shared, watching, tls, settings, grpc_listeners, http_listener, debug_listener, .. } = self;
        let (stop_tx, stop_rx) = watch::channel(false);

        let (reporter, health_server) = tonic_health::server::health_reporter();
        let health_task = tokio::spawn(grpc::follow_health(shared.health.clone(), reporter));
        let mut workers = Vec::new();
        let mut in_flight = Vec::new();
        let (runtime_tx, runtime_rx) = std::sync::mpsc::channel();
        let limits = &settings.connection_limits;
        let grpc_cap =
            ConnectionCap::new("grpc", limits.grpc.max_connections, AcceptMetrics::new(&shared.stats, "grpc"));
        let grpc_timeouts = TimeoutMetrics::new(&shared.stats, "grpc");
        for (index, listener) in grpc_listeners.into_iter().enumerate() {
            let rls = RlsService::new(shared.limiter.clone(), index);
            in_flight.push(rls.in_flight());
            let (done_tx, done_rx) = tokio::sync::oneshot::channel();
            let endpoint = Endpoint {
                router: grpc::router(RateLimitServiceServer::new(rls), health_server.clone()),
                protocol: Protocol::Grpc(limits.grpc.clone()),
                tls: tls.as_ref().map(|(tls, _)| tls.clone()),
                timeouts: grpc_timeouts.clone(),
            };
            let (cap, ready) = (grpc_cap.clone(), runtime_tx.clone());
            grpc::spawn_worker(index, listener, endpoint, cap, stop_rx.clone(), done_tx, ready)
                .map_err(StartError::Io)?;
            workers.push(done_rx);
        }

        let state = HttpState {
            limiter: shared.limiter.clone(),
            health: shared.health.clone(),
            reloader: shared.reloader.clone(),
            stats: shared.stats.clone(),
        };
        let (stats, http_limits) = (&shared.stats, &limits.http);
        let http =
            serve_http("http", http_listener, http::router(state.clone()), http_limits.clone(), stats, &stop_rx)?;
        let debug =
            serve_http("debug", debug_listener, http::debug_router(state), http_limits.clone(), stats, &stop_rx)?;
        let mut background = vec![
            tokio::spawn(config::reload::watch(shared.reloader.clone(), watching, stop_rx.clone())),
            tokio::spawn(upkeep_loop(shared.stats.clone(), stop_rx.clone())),
        ];
        if let Some(memory) = shared.memory.clone() {
            let clock = shared.limiter.clock().clone();
            background.push(tokio::spawn(sweep_loop(memory, clock, shared.stats.clone(), stop_rx.clone())));
        }
        if let Some(statsd) = shared.stats.statsd.clone() {
            background.push(tokio::spawn(statsd_loop(statsd, stop_rx.clone())));
        }
        if let Some(redis) = shared.redis.clone() {
            // Each worker gets its own Redis connections, driven on its own runtime, so a
            // call never crosses threads; other callers (/json) use this runtime's.
            drop(runtime_tx);
            let mut worker_runtimes: Vec<(usize, tokio::runtime::Handle)> = runtime_rx.iter().collect();
            worker_runtimes.sort_by_key(|(i, _)| *i);
            let runtimes = worker_runtimes.into_iter().map(|(_, h)| h).collect();
            let health = shared.health.clone();
            let serving = move |ok| health.set_backend_ok(ok);
            let main = tokio::runtime::Handle::current();
            background.extend(redis.maintain(&stop_rx, main, runtimes, &shared.stats, serving));
        }
        if let Some((tls, watching)) = tls {
            background.push(tokio::spawn(crate::tls::watch(tls, watching, stop_rx.clone())));
        }

        shutdown.await;
        shared.health.start_draining();
        tracing::warn!(
            grace_period = ?settings.shutdown_grace_period,
            "shutting down: reporting not serving, still answering during the grace period"
        );
        tokio::time::sleep(settings.shutdown_grace_period).await;
        let _ = stop_tx.send(true);
        // Stop once every worker has closed its connections, or once no call is in flight
        // (idle connections of clients that ignore GOAWAY must not hold the process).
        let calls_in_flight = || in_flight.iter().map(|n| n.load(Ordering::Acquire)).sum::<usize>();
        let workers_done = async {
            for worker in workers {
                let _ = worker.await;
            }
        };
        let no_calls_in_flight = async {
            // Two quiet polls in a row: a call whose bytes were still being read at the
            // first one has reached the handler by the second, and the last responses
            // have left the socket buffers.
            let mut quiet = 0;
            while quiet < 2 {
                tokio::time::sleep(IN_FLIGHT_POLL).await;
                quiet = if calls_in_flight() == 0 { quiet + 1 } else { 0 };
            }
        };
        let drained = tokio::time::timeout(DRAIN_TIMEOUT, async {
            tokio::select! {
                _ = workers_done => {}
                _ = no_calls_in_flight => {}
            }
            let _ = http.await;
            let _ = debug.await;
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                timeout = ?DRAIN_TIMEOUT,
                in_flight = calls_in_flight(),
                "calls still in flight after the drain timeout; stopping anyway"
            );
        }
        for task in background {
            task.abort();
        }
        if let Some(statsd) = shared.stats.statsd.clone() {
            // The last interval's stats, so a clean stop loses none.
            let _ = tokio::task::spawn_blocking(move || statsd.flush()).await;
        }
        health_task.abort();
        tracing::warn!("stopped");
        Ok(())
    }
}

/// Serves `router` on an HTTP listener (`name`: `http` or `debug`, in metrics and logs),
/// which has a connection cap of its own.
fn serve_http(
    name: &'static str,
    listener: std::net::TcpListener,
    router: axum::Router,
    limits: HttpLimits,
    stats: &Stats,
    stop: &watch::Receiver<bool>,
) -> Result<tokio::task::JoinHandle<()>, StartError> {
    let listener = tokio::net::TcpListener::from_std(listener).map_err(StartError::Io)?;
    let cap = ConnectionCap::new(name, limits.max_connections, AcceptMetrics::new(stats, name));
    let endpoint =
        Endpoint { router, protocol: Protocol::Http1(limits), tls: None, timeouts: TimeoutMetrics::new(stats, name) };
    Ok(tokio::spawn(crate::serve::serve(Incoming::new(listener, cap), endpoint, stop.clone())))
}

/// Folds histogram samples into buckets, so their memory stays bounded between scrapes.
async fn upkeep_loop(stats: Arc<Stats>, mut stop: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(UPKEEP_INTERVAL) => stats.upkeep(),
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// Sends stats to statsd every `STATS_FLUSH_INTERVAL`.
async fn statsd_loop(statsd: Arc<StatsdSink>, mut stop: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(statsd.flush_interval()) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let sink = statsd.clone();
        let _ = tokio::task::spawn_blocking(move || sink.flush()).await;
    }
}

/// Reclaims expired counters every second, pacing itself so sweeping a huge store takes
/// at most about 5% of a core; keeps the memory gauges current. (Eviction past the cap
/// needs no sweeper: inserts do it.)
async fn sweep_loop(memory: Arc<MemoryStore>, clock: Clock, stats: Arc<Stats>, mut stop: watch::Receiver<bool>) {
    let mut pause = SWEEP_INTERVAL;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let store = memory.clone();
        let now = clock.now();
        let started = std::time::Instant::now();
        let Ok(report) = tokio::task::spawn_blocking(move || store.sweep(now)).await else {
            return;
        };
        pause = SWEEP_INTERVAL.max(started.elapsed() * 20);
        stats.counters_live.set(report.live as f64);
        stats.counter_evictions.absolute(memory.evictions());
        stats.counters_reclaimed.absolute(memory.reclaimed());
    }
}

/// Test helper: a config directory path's settings with everything on loopback port 0.
pub fn test_settings(config: impl Into<PathBuf>) -> Settings {
    Settings::for_tests(vec![config.into()])
}
