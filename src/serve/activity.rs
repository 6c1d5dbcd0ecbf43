//! What one connection is doing: requests in flight and answered, when that last
//! changed, and what has arrived of the HTTP/2 preface or the next HTTP/1 request head.
//!
//! Owns the state shared by a connection's request wrapper ([`super::tracked`]), which
//! marks requests as they start and end, its byte observer ([`super::observed_io`]),
//! which marks bytes arriving, and its supervisor ([`super::connection`]), which reads
//! all this to decide when the connection has been quiet or slow too long. Timing is a
//! heuristic, so relaxed atomics suffice; a request costs two atomic increments and a
//! clock read.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

#[derive(Debug)]
pub struct Activity {
    accepted: Instant,
    in_flight: AtomicU32,
    answered: AtomicU64,
    /// When a request last started or ended, in milliseconds after `accepted`.
    last_change_ms: AtomicU64,
    preface_done: AtomicBool,
    /// `answered + 1` at the first byte of the next HTTP/1 request head (0: none yet).
    head_started_after: AtomicU64,
    /// When that byte arrived, in milliseconds after `accepted`.
    head_started_ms: AtomicU64,
    /// Wakes the supervisor when a deadline may have moved earlier.
    pub changed: Notify,
}

impl Activity {
    pub fn new(accepted: Instant) -> Arc<Activity> {
        Arc::new(Activity {
            accepted,
            in_flight: AtomicU32::new(0),
            answered: AtomicU64::new(0),
            last_change_ms: AtomicU64::new(0),
            preface_done: AtomicBool::new(false),
            head_started_after: AtomicU64::new(0),
            head_started_ms: AtomicU64::new(0),
            changed: Notify::new(),
        })
    }

    pub fn accepted(&self) -> Instant {
        self.accepted
    }

    /// Marks a request as started; the guard marks it answered when dropped.
    pub fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.last_change_ms.store(self.elapsed_ms(), Ordering::Relaxed);
        InFlight(self.clone())
    }

    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    pub fn answered(&self) -> u64 {
        self.answered.load(Ordering::Relaxed)
    }

    /// When a request last started or ended (the accept, before any).
    pub fn last_change(&self) -> Instant {
        self.at(self.last_change_ms.load(Ordering::Relaxed))
    }

    pub fn preface_done(&self) -> bool {
        self.preface_done.load(Ordering::Relaxed)
    }

    pub fn mark_preface_done(&self) {
        self.preface_done.store(true, Ordering::Relaxed);
        // The handshake deadline gives way to the idle deadline, which may come first.
        self.changed.notify_one();
    }

    /// Bytes arrived on an HTTP/1 connection: between requests, they start the next head.
    pub fn mark_bytes_between_requests(&self) {
        let answered = self.answered();
        if self.in_flight() > 0 || answered == 0 || self.head_started_after.load(Ordering::Relaxed) == answered + 1 {
            return;
        }
        self.head_started_ms.store(self.elapsed_ms(), Ordering::Relaxed);
        self.head_started_after.store(answered + 1, Ordering::Relaxed);
        // The header deadline from now may come before the idle deadline.
        self.changed.notify_one();
    }

    /// When the head of the request after the last answer started arriving, if it has.
    pub fn next_head_started(&self) -> Option<Instant> {
        let after = self.head_started_after.load(Ordering::Relaxed);
        (after != 0 && after == self.answered() + 1).then(|| self.at(self.head_started_ms.load(Ordering::Relaxed)))
    }

    fn at(&self, ms: u64) -> Instant {
        self.accepted + Duration::from_millis(ms)
    }

    fn elapsed_ms(&self) -> u64 {
        u64::try_from(Instant::now().saturating_duration_since(self.accepted).as_millis()).unwrap_or(u64::MAX)
    }
}

/// A request in flight on a connection.
#[derive(Debug)]
pub struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let activity = &self.0;
        activity.last_change_ms.store(activity.elapsed_ms(), Ordering::Relaxed);
        activity.answered.fetch_add(1, Ordering::Relaxed);
        activity.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_head_starts_with_the_first_byte_after_an_answer() {
        let activity = Activity::new(Instant::now());
        activity.mark_bytes_between_requests();
        assert_eq!(activity.next_head_started(), None, "the first request is not between requests");
        let request = activity.begin();
        activity.mark_bytes_between_requests();
        assert_eq!(activity.next_head_started(), None, "body bytes are not a head");
        drop(request);
        assert_eq!((activity.in_flight(), activity.answered()), (0, 1));
        activity.mark_bytes_between_requests();
        let started = activity.next_head_started().expect("the next head started");
        activity.mark_bytes_between_requests();
        assert_eq!(activity.next_head_started(), Some(started), "later bytes do not restart it");
        drop(activity.begin());
        assert_eq!(activity.next_head_started(), None, "answered: the head after it has not started");
    }
}
