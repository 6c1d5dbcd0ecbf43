//! One accepted connection, from its TLS handshake to its close.
//!
//! Owns a connection's lifecycle: the TLS handshake (bounded, with the HTTP/2 preface, by
//! `GRPC_HANDSHAKE_TIMEOUT`), serving it with hyper (HTTP/2 for gRPC, HTTP/1 for the HTTP
//! listeners), and ending it: dropped when the client is too slow or idle
//! ([`super::deadlines`]); sent a GOAWAY when a gRPC connection is idle or old (clients
//! such as Envoy reconnect transparently), then dropped if it has not finished after a
//! grace period; asked to finish its calls and close on the stop signal.

use std::pin::{Pin, pin};
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;

use super::activity::Activity;
use super::deadlines::{Deadlines, Expired};
use super::observed_io::{ObservedIo, Watching};
use super::tracked::{RequestLimit, Tracked};
use super::{DRAIN_TIMEOUT, Endpoint, GOAWAY_DRAIN, GrpcLimits, HttpLimits, Protocol, TimeoutMetrics};
use crate::signal::Shutdown;

/// Serves one connection until it closes.
pub async fn serve<Io>(io: Io, endpoint: Arc<Endpoint>, mut stop: Shutdown)
where
    Io: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let accepted = Instant::now();
    let Some(tls) = &endpoint.tls else {
        return serve_plain(io, &endpoint, accepted, stop).await;
    };
    let deadline = accepted + endpoint.handshake_timeout();
    let handshake = tokio::time::timeout_at(deadline, tls.acceptor().accept(io));
    let handshake = tokio::select! {
        handshake = handshake => handshake,
        _ = stop.requested() => return,
    };
    match handshake {
        Ok(Ok(stream)) => serve_plain(stream, &endpoint, accepted, stop).await,
        Ok(Err(e)) => tracing::debug!(error = %e, "TLS handshake failed"),
        Err(_) => {
            endpoint.timeouts.handshake.increment(1);
            tracing::debug!("TLS handshake timed out");
        }
    }
}

async fn serve_plain<Io>(io: Io, endpoint: &Endpoint, accepted: Instant, stop: Shutdown)
where
    Io: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let activity = Activity::new(accepted);
    match &endpoint.protocol {
        Protocol::Grpc(limits) => {
            let io = TokioIo::new(ObservedIo::new(io, Watching::preface(), activity.clone()));
            let service = tracked(endpoint, &activity, RequestLimit::GrpcTimeoutHeader);
            let conn = http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .max_concurrent_streams(limits.max_concurrent_streams)
                .serve_connection(io, service);
            let ends = Ends::grpc(limits, accepted);
            supervise(conn, |c| c.graceful_shutdown(), ends, &activity, &endpoint.timeouts, stop).await;
        }
        Protocol::Http1(limits) => {
            let io = TokioIo::new(ObservedIo::new(io, Watching::Http1Heads, activity.clone()));
            let service = tracked(endpoint, &activity, RequestLimit::Http(limits.request_timeout));
            // The supervisor's deadlines replace hyper's header timeout, which would also
            // count the quiet time between keep-alive requests.
            let conn = http1::Builder::new().keep_alive(true).header_read_timeout(None).serve_connection(io, service);
            let ends = Ends::http1(limits);
            supervise(conn, |c| c.graceful_shutdown(), ends, &activity, &endpoint.timeouts, stop).await;
        }
    }
}

fn tracked(endpoint: &Endpoint, activity: &Arc<Activity>, limit: RequestLimit) -> Tracked {
    Tracked {
        router: endpoint.router.clone(),
        activity: activity.clone(),
        limit,
        timeouts: endpoint.timeouts.request.clone(),
        calls: endpoint.calls.clone(),
    }
}

/// How a connection is ended when it has not finished on its own.
#[derive(Clone, Copy, Debug)]
struct Ends {
    deadlines: Deadlines,
    /// An idle connection is sent a GOAWAY (gRPC) rather than dropped (HTTP/1, whose
    /// clients expect keep-alive connections to close under them).
    idle_goes_away: bool,
    /// At this age, a GOAWAY, and a drop after the grace (if any).
    age: Option<(Instant, Option<Duration>)>,
    /// At the stop signal, drop a connection that has not sent a whole request yet
    /// (HTTP/1: there is no GOAWAY to tell it, and its head may never come).
    drop_unused_at_stop: bool,
}

impl Ends {
    fn grpc(limits: &GrpcLimits, accepted: Instant) -> Ends {
        Ends {
            deadlines: Deadlines::Grpc {
                preface_by: accepted + limits.handshake_timeout,
                idle: limits.max_connection_idle,
            },
            idle_goes_away: true,
            age: limits.max_connection_age.map(|age| (accepted + jittered(age), limits.max_connection_age_grace)),
            drop_unused_at_stop: false,
        }
    }

    fn http1(limits: &HttpLimits) -> Ends {
        Ends {
            deadlines: Deadlines::Http1 { header: limits.header_read_timeout, idle: limits.idle_timeout },
            idle_goes_away: false,
            age: None,
            drop_unused_at_stop: true,
        }
    }
}

/// `age` ± 10%, so connections opened together (after a deploy) do not all go away
/// together, as gRPC's own servers do.
fn jittered(age: Duration) -> Duration {
    use std::hash::{BuildHasher, Hasher};
    let random = std::collections::hash_map::RandomState::new().build_hasher().finish();
    let factor = 0.9 + 0.2 * (random as f64 / u64::MAX as f64);
    age.mul_f64(factor)
}

/// A connection asked to go away, and when it is dropped if it has not.
#[derive(Debug, Default)]
struct Farewell {
    asked: bool,
    drop_by: Option<Instant>,
}

impl Farewell {
    /// Asks (once) and moves the drop deadline earlier if `drop_after` says so; true if
    /// the connection must be told now.
    fn ask(&mut self, drop_after: Option<Duration>) -> bool {
        if let Some(after) = drop_after {
            let at = Instant::now() + after;
            self.drop_by = Some(self.drop_by.map_or(at, |by| by.min(at)));
        }
        !std::mem::replace(&mut self.asked, true)
    }
}

/// Drives `conn` to its end. Drops it (closing the socket) when the client is too slow
/// to send its preface or request head, or an HTTP/1 connection sits idle; asks it to go
/// away (`graceful`: GOAWAY on HTTP/2, no more keep-alive on HTTP/1) when a gRPC
/// connection is idle or old or the server stops, and drops it if it has not finished
/// in time after that.
async fn supervise<C>(
    conn: C,
    graceful: impl Fn(Pin<&mut C>),
    ends: Ends,
    activity: &Activity,
    timeouts: &TimeoutMetrics,
    mut stop: Shutdown,
) where
    C: Future<Output = Result<(), hyper::Error>>,
{
    let mut conn = pin!(conn);
    let accepted = activity.accepted();
    let mut deadline = ends.deadlines.next(activity, accepted);
    let mut look = pin!(tokio::time::sleep_until(deadline.map_or(accepted, |(at, _)| at)));
    let mut old_age = pin!(tokio::time::sleep_until(ends.age.map_or(accepted, |(at, _)| at)));
    let mut drop_at = pin!(tokio::time::sleep_until(accepted));
    let mut farewell = Farewell::default();
    let mut stopping = false;
    loop {
        let drop_after = tokio::select! {
            ended = &mut conn => {
                if let Err(e) = ended {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                return;
            }
            _ = stop.requested(), if !stopping => {
                stopping = true;
                if ends.drop_unused_at_stop && activity.answered() == 0 && activity.in_flight() == 0 {
                    // Nothing asked yet, nothing to lose: do not wait for a slow head.
                    return;
                }
                Some(DRAIN_TIMEOUT)
            }
            _ = activity.changed.notified() => {
                deadline = ends.deadlines.next(activity, Instant::now());
                look.as_mut().reset(deadline.map_or(accepted, |(at, _)| at));
                continue;
            }
            _ = &mut look, if deadline.is_some() && !farewell.asked => {
                let now = Instant::now();
                deadline = ends.deadlines.next(activity, now);
                match deadline {
                    Some((at, expired)) if at <= now => {
                        timeouts.expired(expired);
                        tracing::debug!(?expired, "a connection's deadline passed");
                        if !(expired == Expired::Idle && ends.idle_goes_away) {
                            return;
                        }
                        Some(GOAWAY_DRAIN)
                    }
                    // The client did something: look again at the new deadline.
                    _ => {
                        look.as_mut().reset(deadline.map_or(accepted, |(at, _)| at));
                        continue;
                    }
                }
            }
            _ = &mut old_age, if ends.age.is_some() && !farewell.asked => {
                timeouts.max_age.increment(1);
                tracing::debug!("asking a connection past GRPC_MAX_CONNECTION_AGE to go away");
                ends.age.and_then(|(_, grace)| grace)
            }
            _ = &mut drop_at, if farewell.drop_by.is_some() => {
                tracing::debug!("dropping a connection that did not finish after being asked to go away");
                return;
            }
        };
        if farewell.ask(drop_after) {
            graceful(conn.as_mut());
        }
        if let Some(by) = farewell.drop_by {
            drop_at.as_mut().reset(by);
        }
    }
}

impl TimeoutMetrics {
    fn expired(&self, which: Expired) {
        match which {
            Expired::Handshake => self.handshake.increment(1),
            Expired::HeaderRead => self.header_read.increment(1),
            Expired::Idle => self.idle.increment(1),
        }
    }
}
