//! Wiring: from settings to a running service, and back down on shutdown.
//!
//! Owns the service's life, in three rooms: building (`build.rs`: load the rules, make
//! the store and the limiter, put every load in force through [`Installer`]), binding
//! (`bind.rs`: every listener, before anything is served) and running (`run.rs`: serve,
//! then on shutdown report not-ready at once, keep answering for the grace period, stop
//! accepting, drain the calls in flight, return), with the background loops in
//! `background.rs`. Binding is separate from running ([`Server::start`] then
//! [`Started::run`]) so tests bind port 0, read the chosen ports, and pass their own
//! shutdown future. The path of a call and of a reload are in docs/architecture.md.

mod background;
mod bind;
mod build;
mod run;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use crate::config::diag::Diagnostics;
use crate::grpc::GrpcListener;
use crate::health::Health;
use crate::rlqs::Rlqs;
use crate::service::RateLimiter;
use crate::settings::Settings;
use crate::snapshot::Reloader;
use crate::stats::Stats;
use crate::store::{MemoryStore, RedisStore};
use crate::tls::Tls;
use crate::watch::Watching;
pub use build::Installer;

/// Why the service could not start.
#[derive(Debug)]
pub enum StartError {
    /// The first config load failed (and `FORCE_START_WITHOUT_INITIAL_CONFIG` is off).
    Config(Diagnostics),
    /// The TLS certificates did not load.
    Tls(String),
    /// The trace exporter could not be set up (its TLS files, its endpoint).
    Tracing(String),
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
            StartError::Tracing(e) => write!(f, "cannot export traces: {e}"),
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
    /// The quota service, on the gRPC listener next to the rate limit service.
    pub rlqs: Arc<Rlqs>,
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

/// Test helper: a config directory path's settings with everything on loopback port 0.
pub fn test_settings(config: impl Into<PathBuf>) -> Settings {
    Settings::for_tests(vec![config.into()])
}
