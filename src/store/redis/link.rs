//! Connections to one Redis deployment, and the breaker that guards them.
//!
//! Owns opening a [`Link`] (a pool of multiplexed connections to a single node or to the
//! master a Sentinel names, or a Cluster connection), sending pipelines over it within
//! the deadline, and the [`Deployment`] state machine: a transport failure (refused, reset,
//! timed out, a cluster or failover error) opens the breaker, so later requests fail at
//! once instead of each waiting out `REDIS_TIMEOUT`; the supervisor task then reconnects
//! with backoff (a fresh link, so a Sentinel failover finds the new master) and closes
//! the breaker when Redis answers `PING`. Start-up is the same loop: the service serves
//! at once and the backend comes up when Redis does.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use redis::aio::MultiplexedConnection;
use redis::cluster_async::ClusterConnection;
use redis::{AsyncConnectionConfig, Pipeline, RedisError, Value};
use tokio::sync::{Notify, watch};

use super::options::{RedisTarget, Topology};
use crate::signal::Shutdown;

/// The first pause between reconnection attempts after an outage; it doubles up to
/// [`RECOVERY_MAX_PAUSE`], so Redis is back in service within about a second of
/// answering again.
const RECOVERY_FIRST_PAUSE: Duration = Duration::from_millis(50);
const RECOVERY_MAX_PAUSE: Duration = Duration::from_secs(1);

/// Open connections to one deployment.
pub enum Link {
    Pool { connections: Box<[MultiplexedConnection]>, next: AtomicUsize },
    Cluster(ClusterConnection),
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Link::Pool { connections, .. } => write!(f, "Link::Pool({})", connections.len()),
            Link::Cluster(_) => f.write_str("Link::Cluster"),
        }
    }
}

impl Link {
    /// Connects to `target` with `pool_size` connections and checks it answers `PING`.
    /// The connections' I/O runs on the runtime this is called on.
    pub async fn open(target: &RedisTarget, pool_size: usize) -> Result<Link, String> {
        let fail = |e: RedisError| describe_error(&e);
        let timeout = Some(target.timeout);
        let certificates = target.certificates()?;
        let link = match &target.topology {
            Topology::Single | Topology::Sentinel { .. } => {
                let client = match &target.topology {
                    Topology::Sentinel { master } => sentinel_master(target, master).await?,
                    _ => {
                        let info = target.connection_info(&target.nodes[0], target.auth.as_ref()).map_err(fail)?;
                        match &certificates {
                            Some(certs) => redis::Client::build_with_tls(info, certs.clone()).map_err(fail)?,
                            None => redis::Client::open(info).map_err(fail)?,
                        }
                    }
                };
                let config = AsyncConnectionConfig::new().set_connection_timeout(timeout).set_response_timeout(timeout);
                let mut connections = Vec::with_capacity(pool_size);
                for _ in 0..pool_size.max(1) {
                    connections.push(client.get_multiplexed_async_connection_with_config(&config).await.map_err(fail)?);
                }
                Link::Pool { connections: connections.into(), next: AtomicUsize::new(0) }
            }
            Topology::Cluster => {
                let infos = target
                    .nodes
                    .iter()
                    .map(|n| target.connection_info(n, target.auth.as_ref()))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(fail)?;
                let mut builder = redis::cluster::ClusterClientBuilder::new(infos)
                    .connection_timeout(target.timeout)
                    .response_timeout(target.timeout)
                    .retries(2);
                if let Some(tls) = &target.tls {
                    let mode = if tls.skip_verification { redis::TlsMode::Insecure } else { redis::TlsMode::Secure };
                    builder = builder.tls(mode);
                }
                if let Some(certs) = certificates {
                    builder = builder.certs(certs);
                }
                let client = builder.build().map_err(fail)?;
                Link::Cluster(client.get_async_connection().await.map_err(fail)?)
            }
        };
        let pong: String = link.query_cmd(&redis::cmd("PING")).await.map_err(fail)?;
        if pong != "PONG" {
            return Err(format!("PING answered {pong:?}"));
        }
        // Loaded now, so calls by SHA find it (a Cluster sends this to every master).
        let mut load = redis::cmd("SCRIPT");
        load.arg("LOAD").arg(super::script::SOURCE);
        let _: redis::Value = link.query_cmd(&load).await.map_err(fail)?;
        Ok(link)
    }

    /// Sends `pipeline` (on the next pooled connection) and returns each command's reply;
    /// a command's error comes back as its `Value::ServerError`.
    pub async fn query(&self, pipeline: &Pipeline) -> Result<Vec<Value>, RedisError> {
        match self {
            Link::Pool { connections, next } => {
                let i = next.fetch_add(1, Ordering::Relaxed) % connections.len();
                let mut connection = connections[i].clone();
                pipeline.query_async(&mut connection).await
            }
            Link::Cluster(cluster) => pipeline.query_async(&mut cluster.clone()).await,
        }
    }

    async fn query_cmd<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T, RedisError> {
        match self {
            Link::Pool { connections, .. } => cmd.query_async(&mut connections[0].clone()).await,
            Link::Cluster(cluster) => cmd.query_async(&mut cluster.clone()).await,
        }
    }

    pub fn is_cluster(&self) -> bool {
        matches!(self, Link::Cluster(_))
    }

    pub fn connections(&self) -> usize {
        match self {
            Link::Pool { connections, .. } => connections.len(),
            Link::Cluster(_) => 1,
        }
    }
}

async fn sentinel_master(target: &RedisTarget, master: &str) -> Result<redis::Client, String> {
    use redis::sentinel::{SentinelClientBuilder, SentinelServerType};
    let fail = |e: RedisError| describe_error(&e);
    let sentinels = target
        .nodes
        .iter()
        .map(|n| target.connection_info(n, None).map(|i| i.addr().clone()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(fail)?;
    let mut builder = SentinelClientBuilder::new(sentinels, master, SentinelServerType::Master).map_err(fail)?;
    if let Some(auth) = &target.auth {
        builder = builder.set_client_to_redis_password(&auth.password);
        if let Some(user) = &auth.username {
            builder = builder.set_client_to_redis_username(user);
        }
    }
    if let Some(auth) = &target.sentinel_auth {
        builder = builder.set_client_to_sentinel_password(&auth.password);
        if let Some(user) = &auth.username {
            builder = builder.set_client_to_sentinel_username(user);
        }
    }
    if let Some(tls) = &target.tls {
        let mode = if tls.skip_verification { redis::TlsMode::Insecure } else { redis::TlsMode::Secure };
        builder = builder.set_client_to_redis_tls_mode(mode);
        if let Some(certs) = target.certificates()? {
            builder = builder.set_client_to_redis_certificates(certs);
        }
    }
    let mut client = builder.build().map_err(fail)?;
    tokio::time::timeout(target.timeout, client.async_get_client())
        .await
        .map_err(|_| format!("no sentinel answered within {:?}", target.timeout))?
        .map_err(fail)
}

/// One [`Link`] per runtime that calls Redis: index 0 for the runtime that runs the
/// service's background tasks (and `/json`), then one per gRPC worker.
#[derive(Debug)]
pub struct Links(Box<[Link]>);

impl Links {
    /// The link whose I/O runs on `lane`'s runtime.
    pub fn here(&self, lane: crate::store::Lane) -> &Link {
        let slot = match lane {
            crate::store::Lane::Main => 0,
            crate::store::Lane::Worker(w) => w + 1,
        };
        self.0.get(slot).unwrap_or(&self.0[0])
    }

    fn connections(&self) -> usize {
        self.0.iter().map(Link::connections).sum()
    }

    /// Opens a link on each runtime, sharing `REDIS_POOL_SIZE` connections among them
    /// (at least one each).
    async fn open(target: &RedisTarget, runtimes: &[tokio::runtime::Handle]) -> Result<Links, String> {
        let share = target.pool_size.div_ceil(runtimes.len().max(1)).max(1);
        let opening: Vec<_> = runtimes
            .iter()
            .map(|runtime| {
                let target = target.clone();
                runtime.spawn(async move { Link::open(&target, share).await })
            })
            .collect();
        let mut links = Vec::with_capacity(opening.len());
        for handle in opening {
            links.push(handle.await.map_err(|e| format!("connecting failed: {e}"))??);
        }
        Ok(Links(links.into()))
    }
}

/// Whether an error means the link is unusable (rather than one command failing).
pub fn is_transport_error(e: &RedisError) -> bool {
    use redis::{ErrorKind, ServerErrorKind};
    e.is_io_error()
        || e.is_timeout()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || matches!(
            e.kind(),
            ErrorKind::Server(
                ServerErrorKind::ClusterDown
                    | ServerErrorKind::MasterDown
                    | ServerErrorKind::ReadOnly
                    | ServerErrorKind::BusyLoading
                    | ServerErrorKind::TryAgain
            ) | ErrorKind::ClusterConnectionNotFound
                | ErrorKind::AuthenticationFailed
        )
}

/// A redis error as text. The redis crate never puts passwords in its errors.
pub fn describe_error(e: &RedisError) -> String {
    e.to_string()
}

/// One deployment's connection state, shared by every request and its supervisor.
#[derive(Debug)]
pub struct Deployment {
    /// `redis` or `redis_per_second`, in messages and metrics.
    pub name: &'static str,
    pub target: RedisTarget,
    links: ArcSwapOption<Links>,
    /// The breaker: requests fail at once while it is open.
    open: AtomicBool,
    /// Why it opened, for the errors requests get meanwhile.
    last_error: std::sync::Mutex<String>,
    /// Wakes the supervisor when a request opens the breaker.
    tripped: Notify,
    /// Publishes up/down to whoever follows it (health, metrics, logs).
    up: watch::Sender<bool>,
    pub connections_opened: AtomicU64,
    pub connections_closed: AtomicU64,
}

impl Deployment {
    pub fn new(name: &'static str, target: RedisTarget) -> Arc<Deployment> {
        Arc::new(Deployment {
            name,
            target,
            links: ArcSwapOption::empty(),
            open: AtomicBool::new(true),
            last_error: std::sync::Mutex::new("not connected yet".into()),
            tripped: Notify::new(),
            up: watch::channel(false).0,
            connections_opened: AtomicU64::new(0),
            connections_closed: AtomicU64::new(0),
        })
    }

    /// The links to use, or why there are none (the breaker is open).
    pub fn links(&self) -> Result<Arc<Links>, String> {
        if !self.open.load(Ordering::Acquire)
            && let Some(links) = self.links.load_full()
        {
            return Ok(links);
        }
        let why = self.last_error.lock().map(|e| e.clone()).unwrap_or_default();
        Err(format!("{} is unavailable ({why}); waiting for it to answer again", self.name))
    }

    pub fn is_up(&self) -> bool {
        !self.open.load(Ordering::Acquire)
    }

    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.up.subscribe()
    }

    /// A request saw a transport failure: open the breaker and wake the supervisor.
    pub fn trip(&self, why: &str) {
        if let Ok(mut last) = self.last_error.lock() {
            *last = why.to_string();
        }
        if !self.open.swap(true, Ordering::AcqRel) {
            tracing::warn!(backend = self.name, error = why, "Redis failed; answering without it until it is back");
            self.up.send_replace(false);
            self.tripped.notify_one();
        }
    }

    fn close(&self, links: Links) {
        let opened = links.connections() as u64;
        if let Some(old) = self.links.swap(Some(Arc::new(links))) {
            self.connections_closed.fetch_add(old.connections() as u64, Ordering::Relaxed);
        }
        self.connections_opened.fetch_add(opened, Ordering::Relaxed);
        self.open.store(false, Ordering::Release);
        self.up.send_replace(true);
    }

    /// Keeps the backend connected until `stop`: connects (at start-up with the
    /// `REDIS_STARTUP_*` backoff, after an outage starting faster), then sleeps until a
    /// request trips the breaker.
    pub async fn supervise(
        self: Arc<Self>,
        startup: (Duration, Duration),
        runtimes: Arc<[tokio::runtime::Handle]>,
        mut stop: Shutdown,
    ) {
        let mut connected_once = false;
        loop {
            let (mut pause, max_pause) =
                if connected_once { (RECOVERY_FIRST_PAUSE, RECOVERY_MAX_PAUSE) } else { startup };
            let mut attempts = 0u32;
            loop {
                let attempt = tokio::time::timeout(self.target.timeout, Links::open(&self.target, &runtimes)).await;
                match attempt {
                    Ok(Ok(links)) => {
                        self.close(links);
                        let target = self.target.describe();
                        if connected_once {
                            tracing::warn!(backend = self.name, %target, "Redis is back");
                        } else {
                            tracing::warn!(backend = self.name, %target, "connected to Redis");
                        }
                        connected_once = true;
                        break;
                    }
                    Ok(Err(e)) => self.note_failure(&e, attempts),
                    Err(_) => self.note_failure(&format!("no answer within {:?}", self.target.timeout), attempts),
                }
                attempts += 1;
                tokio::select! {
                    _ = tokio::time::sleep(pause) => {}
                    _ = stop.requested() => return,
                }
                pause = (pause * 2).min(max_pause);
            }
            tokio::select! {
                _ = self.tripped.notified() => {}
                _ = stop.requested() => return,
            }
        }
    }

    fn note_failure(&self, why: &str, attempts: u32) {
        if let Ok(mut last) = self.last_error.lock() {
            *last = why.to_string();
        }
        // Every failure at first, then every 20th: a long outage must not flood the logs.
        if attempts < 3 || attempts.is_multiple_of(20) {
            tracing::warn!(backend = self.name, target = %self.target.describe(), error = why, "cannot reach Redis; retrying");
        }
    }
}
