//! Time for rate-limit decisions.
//!
//! Owns the one place where the service reads the wall clock. Every decision takes
//! "now" as an argument computed here, so tests drive time with [`FakeClock`] and never
//! sleep to cross a window. Times are [`Nanos`] since the Unix epoch because fixed windows
//! are aligned to the epoch (`floor(now / window) * window`), which is what lets replicas,
//! Redis and the reference service agree on window boundaries without talking.
//!
//! This module must not know anything about limits.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Nanoseconds since the Unix epoch. Small, `Copy`, fits in an atomic word.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Nanos(pub u64);

impl Nanos {
    pub const NANOS_PER_SEC: u64 = 1_000_000_000;

    pub const fn from_secs(secs: u64) -> Self {
        Nanos(secs.saturating_mul(Self::NANOS_PER_SEC))
    }

    pub const fn from_millis(millis: u64) -> Self {
        Nanos(millis.saturating_mul(1_000_000))
    }

    /// Whole seconds since the epoch (rounded down).
    pub const fn as_secs(self) -> u64 {
        self.0 / Self::NANOS_PER_SEC
    }

    pub const fn as_nanos(self) -> u64 {
        self.0
    }

    pub const fn saturating_add(self, other: Nanos) -> Nanos {
        Nanos(self.0.saturating_add(other.0))
    }

    pub const fn saturating_sub(self, other: Nanos) -> Nanos {
        Nanos(self.0.saturating_sub(other.0))
    }
}

impl From<Duration> for Nanos {
    fn from(d: Duration) -> Self {
        Nanos(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
    }
}

impl From<Nanos> for Duration {
    fn from(n: Nanos) -> Self {
        Duration::from_nanos(n.0)
    }
}

impl fmt::Debug for Nanos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&Duration::from_nanos(self.0), f)
    }
}

/// The source of "now" for the service.
///
/// An enum rather than a trait object: the hot path reads the clock once per request and
/// the branch is cheaper than an indirect call.
#[derive(Clone, Debug, Default)]
pub enum Clock {
    /// The system wall clock.
    #[default]
    System,
    /// A clock that only moves when a test says so.
    Fake(FakeClock),
}

impl Clock {
    pub fn now(&self) -> Nanos {
        match self {
            Clock::System => system_now(),
            Clock::Fake(fake) => fake.now(),
        }
    }
}

#[allow(clippy::disallowed_methods)] // the one sanctioned read of the wall clock
fn system_now() -> Nanos {
    // A clock before 1970 is a broken host; answering "the epoch" keeps the service up and
    // every window consistent with itself.
    SystemTime::now().duration_since(UNIX_EPOCH).map(Nanos::from).unwrap_or_default()
}

/// When something happened, for operators to read (`/debug/config`, log lines): the wall
/// clock as a `SystemTime`, not the decision clock, which tests may hold still.
#[allow(clippy::disallowed_methods)] // the other sanctioned read of the wall clock
pub fn wall_clock_now() -> SystemTime {
    SystemTime::now()
}

/// A manually driven clock. Clones share the same time, so a test keeps one clone and
/// hands another to the code under test.
#[derive(Clone, Debug, Default)]
pub struct FakeClock(Arc<AtomicU64>);

impl FakeClock {
    pub fn new(start: Nanos) -> Self {
        FakeClock(Arc::new(AtomicU64::new(start.0)))
    }

    pub fn at_secs(secs: u64) -> Self {
        Self::new(Nanos::from_secs(secs))
    }

    pub fn now(&self) -> Nanos {
        Nanos(self.0.load(Ordering::Acquire))
    }

    pub fn set(&self, to: Nanos) {
        self.0.store(to.0, Ordering::Release);
    }

    pub fn advance(&self, by: Duration) {
        let by = Nanos::from(by).0;
        self.0.fetch_add(by, Ordering::AcqRel);
    }
}

impl From<FakeClock> for Clock {
    fn from(fake: FakeClock) -> Self {
        Clock::Fake(fake)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fake_clock_clones_share_time() {
        let clock = FakeClock::at_secs(1234);
        let seen_by_service = Clock::from(clock.clone());
        clock.advance(Duration::from_millis(1500));
        assert_eq!(seen_by_service.now(), Nanos(1_235_500_000_000));
        assert_eq!(seen_by_service.now().as_secs(), 1235);
    }
}
