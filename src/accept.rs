//! Accepting connections: a cap on open connections, and backing off on accept errors.
//!
//! Owns the one accept loop every listener (gRPC over TCP, TLS or a unix socket; HTTP;
//! debug) goes through. Two failure modes it exists for:
//!
//! - **Out of file descriptors** (`EMFILE`/`ENFILE`): the pending connection stays in the
//!   kernel's queue, so the listener stays readable and a loop that retries at once spins
//!   a core. Here an accept error sleeps, 5 ms doubling up to 1 s (reset by the next
//!   success), and is logged at most once every 10 s with a count.
//! - **Too many connections**: a listener holds at most its cap of open connections.
//!   Past it, [`Incoming::accept`] stops calling `accept` until one closes, so new
//!   clients wait in the kernel's backlog (and, once that is full, their SYNs are not
//!   answered and they retry) rather than costing a descriptor and memory each. Waiting
//!   at the cap is counted and logged; an already-open connection is never dropped for a
//!   new one.

use std::io;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

pub use crate::stats::AcceptMetrics;

/// The first pause after an accept error; it doubles with each error in a row.
const FIRST_BACKOFF: Duration = Duration::from_millis(5);
/// The longest pause between accept attempts while errors persist.
const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// At most one log line per listener this often about accept errors or the cap.
const ERROR_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// A listening socket `Incoming` can accept from.
pub trait Listener: Send + 'static {
    type Io: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    fn poll_accept(&self, cx: &mut Context<'_>) -> Poll<io::Result<Self::Io>>;
}

impl Listener for tokio::net::TcpListener {
    type Io = tokio::net::TcpStream;

    fn poll_accept(&self, cx: &mut Context<'_>) -> Poll<io::Result<Self::Io>> {
        tokio::net::TcpListener::poll_accept(self, cx).map_ok(|(stream, _)| {
            // Answers are small and latency is the product: never wait to coalesce them.
            let _ = stream.set_nodelay(true);
            stream
        })
    }
}

impl Listener for tokio::net::UnixListener {
    type Io = tokio::net::UnixStream;

    fn poll_accept(&self, cx: &mut Context<'_>) -> Poll<io::Result<Self::Io>> {
        tokio::net::UnixListener::poll_accept(self, cx).map_ok(|(stream, _)| stream)
    }
}

/// The open-connection cap of one listener kind, shared by every listener of that kind
/// (all gRPC workers draw from one cap). A place is taken before `accept` is called, so
/// the cap is never exceeded; the price is that a worker waiting for a connection holds
/// a place meanwhile, so with N workers the cap can be reached up to N - 1 early.
#[derive(Debug)]
pub struct ConnectionCap {
    listener: &'static str,
    max: usize,
    slots: Arc<Semaphore>,
    metrics: AcceptMetrics,
}

impl ConnectionCap {
    pub fn new(listener: &'static str, max: usize, metrics: AcceptMetrics) -> Arc<ConnectionCap> {
        let max = max.clamp(1, Semaphore::MAX_PERMITS);
        Arc::new(ConnectionCap { listener, max, slots: Arc::new(Semaphore::new(max)), metrics })
    }

    /// The listener kind, for logs and metrics.
    pub fn listener(&self) -> &'static str {
        self.listener
    }
}

/// An open connection's place under the cap; dropping it frees the place.
#[derive(Debug)]
pub struct Slot {
    _permit: OwnedSemaphorePermit,
    open: metrics::Gauge,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.open.decrement(1.0);
    }
}

/// Rate-limits the log lines of one recurring event: a flood of accept errors must not
/// become a flood of log lines.
#[derive(Debug, Default)]
struct Reporter {
    last_logged: Option<Instant>,
    unlogged: u64,
}

impl Reporter {
    /// `Some(events since the last line)` if a line is due now; otherwise the event is
    /// counted for the next line.
    fn due(&mut self, now: Instant) -> Option<u64> {
        match self.last_logged {
            Some(at) if now.duration_since(at) < ERROR_LOG_INTERVAL => {
                self.unlogged += 1;
                None
            }
            _ => {
                self.last_logged = Some(now);
                Some(std::mem::take(&mut self.unlogged))
            }
        }
    }
}

/// Connections from one listening socket, under its kind's cap, never an error.
#[derive(Debug)]
pub struct Incoming<L> {
    listener: L,
    cap: Arc<ConnectionCap>,
    /// The pause after the next accept error.
    backoff: Duration,
    errors: Reporter,
    at_cap: Reporter,
}

impl<L: Listener> Incoming<L> {
    pub fn new(listener: L, cap: Arc<ConnectionCap>) -> Incoming<L> {
        Incoming { listener, cap, backoff: FIRST_BACKOFF, errors: Reporter::default(), at_cap: Reporter::default() }
    }

    /// The next connection, once there is room under the cap. Errors are logged and
    /// retried after a pause, never returned. Cancel-safe: dropping the future loses no
    /// connection.
    pub async fn accept(&mut self) -> (L::Io, Slot) {
        loop {
            let permit = match self.cap.slots.clone().try_acquire_owned() {
                Ok(permit) => permit,
                Err(_) => {
                    self.cap.metrics.waited_at_cap.increment(1);
                    if let Some(unlogged) = self.at_cap.due(Instant::now()) {
                        tracing::warn!(
                            listener = self.cap.listener,
                            max = self.cap.max,
                            times_since_last_report = unlogged,
                            "at the cap of open connections; new ones wait in the backlog until one closes"
                        );
                    }
                    match self.cap.slots.clone().acquire_owned().await {
                        Ok(permit) => permit,
                        // The semaphore is never closed; should it be, accept nothing more.
                        Err(_) => std::future::pending().await,
                    }
                }
            };
            match std::future::poll_fn(|cx| self.listener.poll_accept(cx)).await {
                Ok(io) => {
                    self.backoff = FIRST_BACKOFF;
                    self.cap.metrics.open.increment(1.0);
                    return (io, Slot { _permit: permit, open: self.cap.metrics.open.clone() });
                }
                Err(e) => {
                    drop(permit);
                    self.cap.metrics.errors.increment(1);
                    if is_about_one_connection(&e) {
                        // That connection is gone from the queue: no spin, no pause needed.
                        tracing::debug!(listener = self.cap.listener, error = %e, "a connection failed before it was accepted");
                        continue;
                    }
                    let pause = self.backoff;
                    self.backoff = (pause * 2).min(MAX_BACKOFF);
                    if let Some(unlogged) = self.errors.due(Instant::now()) {
                        tracing::error!(
                            listener = self.cap.listener,
                            error = %e,
                            errors_since_last_report = unlogged,
                            "cannot accept connections; retrying with backoff (up to {MAX_BACKOFF:?})"
                        );
                    }
                    tokio::time::sleep(pause).await;
                }
            }
        }
    }
}

/// Errors that concern one connection (it was reset while queued), not the listener.
fn is_about_one_connection(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionRefused
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A listener whose every accept fails or succeeds as told, counting attempts.
    struct Scripted {
        fail_with: Option<io::ErrorKind>,
        attempts: std::sync::atomic::AtomicUsize,
    }

    impl Listener for Arc<Scripted> {
        type Io = tokio::io::DuplexStream;

        fn poll_accept(&self, _: &mut Context<'_>) -> Poll<io::Result<Self::Io>> {
            self.attempts.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Poll::Ready(match self.fail_with {
                Some(kind) => Err(io::Error::from(kind)),
                None => Ok(tokio::io::duplex(64).0),
            })
        }
    }

    fn incoming(fail_with: Option<io::ErrorKind>, max: usize) -> (Incoming<Arc<Scripted>>, Arc<Scripted>) {
        let listener = Arc::new(Scripted { fail_with, attempts: Default::default() });
        let stats = crate::stats::Stats::new(Default::default());
        let cap = ConnectionCap::new("test", max, AcceptMetrics::new(&stats, "test"));
        (Incoming::new(listener.clone(), cap), listener)
    }

    #[tokio::test]
    async fn a_persistent_accept_error_backs_off_instead_of_spinning() {
        let (mut incoming, listener) = incoming(Some(io::ErrorKind::OutOfMemory), 10);
        // 5 + 10 + 20 + 40 + 80 + 160 ms of pauses fit in 400 ms: about seven attempts.
        let _ = tokio::time::timeout(Duration::from_millis(400), incoming.accept()).await;
        let attempts = listener.attempts.load(std::sync::atomic::Ordering::Relaxed);
        assert!((5..=9).contains(&attempts), "{attempts} attempts in 400 ms");
        assert_eq!(incoming.backoff, Duration::from_millis(640));
    }

    #[tokio::test]
    async fn the_cap_holds_back_accepts_until_a_connection_closes() {
        let (mut incoming, listener) = incoming(None, 2);
        let first = incoming.accept().await;
        let _second = incoming.accept().await;
        let third = tokio::time::timeout(Duration::from_millis(50), incoming.accept()).await;
        assert!(third.is_err(), "a third connection was accepted past a cap of 2");
        assert_eq!(listener.attempts.load(std::sync::atomic::Ordering::Relaxed), 2, "no accept at the cap");
        drop(first);
        tokio::time::timeout(Duration::from_secs(5), incoming.accept()).await.expect("a freed slot is reused");
    }

    #[test]
    fn errors_are_logged_at_most_once_per_interval_with_a_count() {
        let mut reporter = Reporter::default();
        let start = Instant::now();
        assert_eq!(reporter.due(start), Some(0));
        for _ in 0..1000 {
            assert_eq!(reporter.due(start + Duration::from_secs(1)), None);
        }
        assert_eq!(reporter.due(start + ERROR_LOG_INTERVAL), Some(1000));
    }
}
