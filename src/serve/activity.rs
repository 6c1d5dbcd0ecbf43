//! What one connection is doing: requests in flight, requests answered, and when that
//! last changed.
//!
//! Owns the shared state between a connection's request wrapper ([`super::tracked`]),
//! which updates it as requests start and end, and the two things that decide when the
//! connection has been quiet too long: its read deadlines ([`super::deadline_io`]) and
//! its supervisor ([`super::connection`]). Timing is a heuristic, so plain relaxed
//! atomics suffice; a request costs two atomic increments and a clock read.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

#[derive(Debug)]
pub struct Activity {
    accepted: Instant,
    in_flight: AtomicU32,
    answered: AtomicU64,
    /// When a request last started or ended, in milliseconds after `accepted`.
    last_change_ms: AtomicU64,
}

impl Activity {
    pub fn new(accepted: Instant) -> Arc<Activity> {
        Arc::new(Activity {
            accepted,
            in_flight: AtomicU32::new(0),
            answered: AtomicU64::new(0),
            last_change_ms: AtomicU64::new(0),
        })
    }

    pub fn accepted(&self) -> Instant {
        self.accepted
    }

    /// Marks a request as started; the guard marks it answered when dropped.
    pub fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.touch();
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
        self.accepted + Duration::from_millis(self.last_change_ms.load(Ordering::Relaxed))
    }

    /// When the connection will have been without requests for `idle`, if none is in
    /// flight now; `None` while one is (idle time only starts when it ends).
    pub fn idle_deadline(&self, idle: Duration) -> Option<Instant> {
        (self.in_flight() == 0).then(|| self.last_change() + idle)
    }

    fn touch(&self) {
        let ms = Instant::now().saturating_duration_since(self.accepted).as_millis();
        self.last_change_ms.store(u64::try_from(ms).unwrap_or(u64::MAX), Ordering::Relaxed);
    }
}

/// A request in flight on a connection.
#[derive(Debug)]
pub struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.touch();
        self.0.answered.fetch_add(1, Ordering::Relaxed);
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_time_counts_from_the_end_of_the_last_request() {
        let activity = Activity::new(Instant::now() - Duration::from_secs(60));
        assert!(activity.idle_deadline(Duration::from_secs(30)).unwrap() <= Instant::now(), "quiet since accept");
        let request = activity.begin();
        assert_eq!(activity.idle_deadline(Duration::from_secs(30)), None, "busy");
        drop(request);
        let deadline = activity.idle_deadline(Duration::from_secs(30)).unwrap();
        assert!(deadline > Instant::now() + Duration::from_secs(29), "{deadline:?}");
        assert_eq!((activity.in_flight(), activity.answered()), (0, 1));
    }
}
