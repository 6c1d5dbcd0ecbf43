//! Serving connections: every listener's accept loop and connection lifecycle.
//!
//! Owns what a client can cost: the bounds of [`GrpcLimits`] and [`HttpLimits`] (read
//! from their settings by the `settings` module), and [`serve`], which accepts from a listener
//! under its cap ([`crate::accept`]) and serves each connection with hyper
//! (module `connection`) until the stop signal, then waits for the connections to finish.
//!
//! tonic's own server is not used for gRPC: it retries accept errors at once (a spin
//! when out of descriptors), has no deadline for the HTTP/2 preface and no idle GOAWAY,
//! and drops old connections without a GOAWAY when `max_connection_age_grace` is set.
//! The gRPC services are still tonic's; only the connection handling is here, on the
//! same hyper that tonic uses.

mod activity;
mod connection;
mod deadlines;
mod drain;
mod observed_io;
mod tracked;

use std::sync::Arc;
use std::time::Duration;

use crate::accept::{Incoming, Listener};
use crate::signal::Shutdown;
pub use crate::stats::TimeoutMetrics;
use crate::tls::Tls;

pub use drain::{CallGuard, CallsInFlight};
pub use tracked::parse_grpc_timeout;

/// How long connections get to finish their calls after the stop signal before they are
/// closed anyway.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a connection sent a GOAWAY for being idle gets to finish a call that crossed
/// it before it is closed anyway (a peer that vanished never acknowledges a GOAWAY).
const GOAWAY_DRAIN: Duration = Duration::from_secs(10);

/// Bounds on gRPC connections (`GRPC_*` settings).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GrpcLimits {
    /// `GRPC_MAX_CONNECTIONS`: open connections, all workers together.
    pub max_connections: usize,
    /// `GRPC_MAX_CONCURRENT_STREAMS`: calls at once on one connection.
    pub max_concurrent_streams: u32,
    /// `GRPC_HANDSHAKE_TIMEOUT`: from the accept to the end of the TLS handshake (if any)
    /// and of the HTTP/2 preface.
    pub handshake_timeout: Duration,
    /// `GRPC_MAX_CONNECTION_IDLE`: GOAWAY after this long without a call (`None`: never).
    pub max_connection_idle: Option<Duration>,
    /// `GRPC_MAX_CONNECTION_AGE`: GOAWAY at about this age, ±10% (`None`: never).
    pub max_connection_age: Option<Duration>,
    /// `GRPC_MAX_CONNECTION_AGE_GRACE`: then closed this long after (`None`: never).
    pub max_connection_age_grace: Option<Duration>,
}

/// Bounds on connections to the HTTP and debug listeners (`HTTP_*` settings).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpLimits {
    /// `HTTP_MAX_CONNECTIONS`: open connections, on each of the two listeners.
    pub max_connections: usize,
    /// `HTTP_HEADER_READ_TIMEOUT`: a request head must arrive within this.
    pub header_read_timeout: Duration,
    /// `HTTP_IDLE_TIMEOUT`: a keep-alive connection without a request is closed after this.
    pub idle_timeout: Duration,
    /// `HTTP_REQUEST_TIMEOUT`: reading a request's body and answering it.
    pub request_timeout: Duration,
}

/// Every listener's bounds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectionLimits {
    pub grpc: GrpcLimits,
    pub http: HttpLimits,
}

/// What a listener speaks, with its bounds.
#[derive(Clone, Debug)]
pub enum Protocol {
    Grpc(GrpcLimits),
    Http1(HttpLimits),
}

/// What one listener serves, and how.
#[derive(Clone, Debug)]
pub struct Endpoint {
    pub router: axum::Router,
    pub protocol: Protocol,
    /// TLS first (gRPC over TLS).
    pub tls: Option<Arc<Tls>>,
    pub timeouts: TimeoutMetrics,
    /// Every request dispatched on this endpoint's connections, for the drain.
    pub calls: Arc<CallsInFlight>,
}

impl Endpoint {
    /// The bound on the TLS handshake.
    fn handshake_timeout(&self) -> Duration {
        match &self.protocol {
            Protocol::Grpc(limits) => limits.handshake_timeout,
            Protocol::Http1(limits) => limits.header_read_timeout,
        }
    }
}

/// Accepts and serves connections until `stop` turns true; then stops accepting (the
/// listening socket closes, so new clients are refused at once instead of queueing), asks
/// every connection to finish, and returns once all have closed.
pub async fn serve<L: Listener>(mut incoming: Incoming<L>, endpoint: Endpoint, mut stop: Shutdown) {
    let endpoint = Arc::new(endpoint);
    // Every connection task holds a sender; `recv` ends when the last one is dropped.
    let (open, mut all_closed) = tokio::sync::mpsc::channel::<()>(1);
    loop {
        let (io, slot) = tokio::select! {
            biased;
            _ = stop.requested() => break,
            accepted = incoming.accept() => accepted,
        };
        let (endpoint, stop, open) = (endpoint.clone(), stop.clone(), open.clone());
        tokio::spawn(async move {
            connection::serve(io, endpoint, stop).await;
            drop((slot, open));
        });
    }
    drop(incoming);
    drop(open);
    let _ = all_closed.recv().await;
}
