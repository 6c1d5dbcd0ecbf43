//! A connection's byte stream, observed: what has arrived of the HTTP/2 preface, and
//! when the next HTTP/1 request head started.
//!
//! Owns noticing bytes arrive, which only the reading side can see, and telling the
//! connection's [`Activity`]; the deadlines themselves are enforced by the supervisor
//! ([`super::connection`]), which cannot rely on hyper polling the read side while a
//! connection sits idle. After the preface, a gRPC connection's reads cost one branch.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::activity::Activity;

/// The HTTP/2 client preface (`PRI * HTTP/2.0...`) is this long.
const H2_PREFACE_LEN: usize = 24;

/// What to watch for in the bytes.
#[derive(Clone, Copy, Debug)]
pub enum Watching {
    /// gRPC: this many bytes of the preface still to come (then nothing).
    Preface(usize),
    /// HTTP/1: the first byte of each request head after the first.
    Http1Heads,
}

impl Watching {
    pub fn preface() -> Watching {
        Watching::Preface(H2_PREFACE_LEN)
    }
}

pub struct ObservedIo<Io> {
    io: Io,
    watching: Watching,
    activity: Arc<Activity>,
}

impl<Io> ObservedIo<Io> {
    pub fn new(io: Io, watching: Watching, activity: Arc<Activity>) -> ObservedIo<Io> {
        ObservedIo { io, watching, activity }
    }

    fn on_read(&mut self, bytes: usize) {
        match &mut self.watching {
            Watching::Preface(0) => {}
            Watching::Preface(remaining) => {
                *remaining = remaining.saturating_sub(bytes);
                if *remaining == 0 {
                    self.activity.mark_preface_done();
                }
            }
            Watching::Http1Heads => self.activity.mark_bytes_between_requests(),
        }
    }
}

impl<Io: AsyncRead + Unpin> AsyncRead for ObservedIo<Io> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        let read = buf.filled().len() - before;
        if read > 0 {
            self.on_read(read);
        }
        polled
    }
}

impl<Io: AsyncWrite + Unpin> AsyncWrite for ObservedIo<Io> {
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
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn the_preface_is_done_once_24_bytes_arrive_in_any_pieces() {
        let (mut client, server) = tokio::io::duplex(64);
        let activity = Activity::new(tokio::time::Instant::now());
        let mut observed = ObservedIo::new(server, Watching::preface(), activity.clone());
        let mut buf = [0u8; 64];
        client.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
        let _ = observed.read(&mut buf).await.unwrap();
        assert!(!activity.preface_done());
        client.write_all(b"\r\nSM\r\n\r\n").await.unwrap();
        let _ = observed.read(&mut buf).await.unwrap();
        assert!(activity.preface_done());
    }
}
