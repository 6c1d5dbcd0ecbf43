//! Read deadlines on a connection's byte stream, for clients that connect and then send
//! too little too slowly.
//!
//! Owns the deadlines that are about *bytes not arriving*, which only the reading side
//! can see: the HTTP/2 preface on gRPC connections, and, on HTTP/1 connections, the
//! request head and the quiet time between keep-alive requests. When one passes while
//! the server waits for bytes, the read fails with `TimedOut` and hyper closes the
//! connection. Deadlines about *requests* (idle gRPC connections, connection age) need a
//! GOAWAY rather than a failed read, and live in [`super::connection`].
//!
//! HTTP/1 deadlines, as Go's `ReadHeaderTimeout` and `IdleTimeout`:
//! - a new connection must deliver its first request head within the header timeout
//!   of the accept;
//! - after a response, the next request may take the idle timeout to start, and, from
//!   its first byte, the header timeout to finish its head;
//! - while a request is in flight (its body being read, its answer computed) no read
//!   deadline applies: the request timeout bounds it.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use super::activity::Activity;

/// The HTTP/2 client preface (`PRI * HTTP/2.0...`) is this long.
const H2_PREFACE_LEN: usize = 24;

/// Which read deadlines apply.
#[derive(Debug)]
pub enum Deadlines {
    /// gRPC: the preface must be in by `deadline`; then no read deadline.
    Preface { remaining: usize, deadline: Instant },
    /// HTTP/1 requests and keep-alive.
    Http1 {
        header: Duration,
        idle: Duration,
        /// When the head of the request after answer number `.0` started arriving.
        head_started: Option<(u64, Instant)>,
    },
}

/// Which deadline passed, for the metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expired {
    /// The gRPC preface.
    Handshake,
    HeaderRead,
    Idle,
}

impl Deadlines {
    pub fn preface(deadline: Instant) -> Deadlines {
        Deadlines::Preface { remaining: H2_PREFACE_LEN, deadline }
    }

    pub fn http1(header: Duration, idle: Duration) -> Deadlines {
        Deadlines::Http1 { header, idle, head_started: None }
    }

    /// Bytes arrived.
    fn on_read(&mut self, bytes: usize, activity: &Activity) {
        match self {
            Deadlines::Preface { remaining, .. } => *remaining = remaining.saturating_sub(bytes),
            Deadlines::Http1 { head_started, .. } => {
                let answered = activity.answered();
                let waiting_for_next_head = activity.in_flight() == 0 && answered > 0;
                if waiting_for_next_head && head_started.is_none_or(|(after, _)| after != answered) {
                    *head_started = Some((answered, Instant::now()));
                }
            }
        }
    }

    /// The deadline for bytes that have not arrived yet, if any.
    fn current(&self, activity: &Activity) -> Option<(Instant, Expired)> {
        match self {
            Deadlines::Preface { remaining: 0, .. } => None,
            Deadlines::Preface { deadline, .. } => Some((*deadline, Expired::Handshake)),
            Deadlines::Http1 { header, idle, head_started } => {
                if activity.in_flight() > 0 {
                    return None;
                }
                let answered = activity.answered();
                if answered == 0 {
                    return Some((activity.accepted() + *header, Expired::HeaderRead));
                }
                match head_started {
                    Some((after, started)) if *after == answered => Some((*started + *header, Expired::HeaderRead)),
                    _ => Some((activity.last_change() + *idle, Expired::Idle)),
                }
            }
        }
    }
}

/// A byte stream whose reads fail once a deadline for missing bytes passes.
pub struct DeadlineIo<Io> {
    io: Io,
    deadlines: Deadlines,
    activity: Arc<Activity>,
    timer: Pin<Box<Sleep>>,
    /// The instant `timer` is set for.
    armed_for: Option<Instant>,
    on_expiry: Box<dyn Fn(Expired) + Send>,
}

impl<Io> DeadlineIo<Io> {
    pub fn new(
        io: Io,
        deadlines: Deadlines,
        activity: Arc<Activity>,
        on_expiry: Box<dyn Fn(Expired) + Send>,
    ) -> DeadlineIo<Io> {
        let timer = Box::pin(tokio::time::sleep_until(activity.accepted()));
        DeadlineIo { io, deadlines, activity, timer, armed_for: None, on_expiry }
    }
}

impl<Io: AsyncRead + Unpin> AsyncRead for DeadlineIo<Io> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let read = buf.filled().len() - before;
                if read > 0 {
                    this.deadlines.on_read(read, &this.activity);
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                let Some((deadline, which)) = this.deadlines.current(&this.activity) else {
                    return Poll::Pending;
                };
                if this.armed_for != Some(deadline) {
                    this.timer.as_mut().reset(deadline);
                    this.armed_for = Some(deadline);
                }
                ready!(this.timer.as_mut().poll(cx));
                (this.on_expiry)(which);
                let what = match which {
                    Expired::Handshake => "the HTTP/2 preface did not arrive in time",
                    Expired::HeaderRead => "the request head did not arrive in time",
                    Expired::Idle => "the connection was idle too long",
                };
                Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, what)))
            }
        }
    }
}

impl<Io: AsyncWrite + Unpin> AsyncWrite for DeadlineIo<Io> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn http1() -> Deadlines {
        Deadlines::http1(Duration::from_secs(10), Duration::from_secs(60))
    }

    #[test]
    fn a_new_connection_gets_the_header_timeout_from_the_accept() {
        let activity = Activity::new(Instant::now());
        let mut deadlines = http1();
        let expected = Some((activity.accepted() + Duration::from_secs(10), Expired::HeaderRead));
        assert_eq!(deadlines.current(&activity), expected);
        deadlines.on_read(3, &activity);
        assert_eq!(deadlines.current(&activity), expected, "dribbling does not extend it");
    }

    #[test]
    fn between_requests_the_idle_timeout_then_the_header_timeout_from_the_first_byte() {
        let activity = Activity::new(Instant::now());
        let mut deadlines = http1();
        let request = activity.begin();
        assert_eq!(deadlines.current(&activity), None, "no read deadline while a request is in flight");
        drop(request);
        let (deadline, which) = deadlines.current(&activity).unwrap();
        assert_eq!((deadline, which), (activity.last_change() + Duration::from_secs(60), Expired::Idle));
        deadlines.on_read(1, &activity);
        let (deadline, which) = deadlines.current(&activity).unwrap();
        assert_eq!(which, Expired::HeaderRead);
        assert!(deadline <= Instant::now() + Duration::from_secs(10));
    }

    #[test]
    fn the_preface_deadline_ends_once_24_bytes_arrive() {
        let activity = Activity::new(Instant::now());
        let mut deadlines = Deadlines::preface(activity.accepted() + Duration::from_secs(5));
        deadlines.on_read(20, &activity);
        assert!(deadlines.current(&activity).is_some());
        deadlines.on_read(4, &activity);
        assert_eq!(deadlines.current(&activity), None);
    }
}
