//! The leases one replica holds, and admission from them.
//!
//! Owns the in-memory side of leased mode: a table from a counter (its memory-store key,
//! which names the counter but not the window) to its [`Lease`], and the lock-free
//! admission from a lease. A lease's units and its window share one word,
//! `(window_index << 32) | units`, so taking units is one compare-and-swap that cannot
//! spend a past window's units in the next one. Reserving more units is serialized per
//! lease by an async mutex: exactly one reservation is in flight per counter in this
//! replica, and requests that find the lease empty wait for it instead of each asking
//! Redis.
//!
//! This module does not talk to Redis; `reserve` does.

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

use hashbrown::HashMap;

use crate::limiter::LimitParams;

const SHARDS: usize = 64;

type Shard = RwLock<HashMap<Box<[u8]>, Arc<Lease>, foldhash::fast::FixedState>>;

#[inline]
pub fn pack(window: u32, units: u32) -> u64 {
    (u64::from(window) << 32) | u64::from(units)
}

#[inline]
pub fn unpack(word: u64) -> (u32, u32) {
    ((word >> 32) as u32, word as u32)
}

/// What the reservation lock guards: the demand estimate and the window's Redis key.
#[derive(Debug, Default)]
pub struct Sizing {
    /// When the last reservation was made (ms since the store started), if ever.
    pub last_at_ms: Option<u64>,
    /// `Lease::spent` at the last reservation.
    pub spent_then: u64,
    /// Units per second this replica spends on the counter (moving average).
    pub rate: f64,
    /// The Redis key of the window the lease's units belong to.
    pub key: String,
    /// Where the key lives: the per-second deployment or the main one.
    pub per_second: bool,
}

impl Sizing {
    /// How many units to ask for: about what this replica spends in `horizon_ms` at its
    /// recent rate, and never fewer than the request needs. A cold counter asks for
    /// what the request needs.
    pub fn want(&mut self, spent: u64, now_ms: u64, need: u64, horizon_ms: u64) -> u64 {
        if let Some(then) = self.last_at_ms {
            let elapsed = now_ms.saturating_sub(then).max(1) as f64 / 1000.0;
            let sample = spent.saturating_sub(self.spent_then) as f64 / elapsed;
            // A gap of several horizons means demand fell: trust the sample more.
            let weight = if elapsed * 1000.0 > 4.0 * horizon_ms as f64 { 1.0 } else { 0.5 };
            self.rate = self.rate * (1.0 - weight) + sample * weight;
        }
        self.last_at_ms = Some(now_ms);
        self.spent_then = spent;
        let horizon = (self.rate * horizon_ms as f64 / 1000.0).ceil();
        (horizon as u64).clamp(need, u64::from(u32::MAX / 2))
    }
}

/// One counter's lease in this replica.
#[derive(Debug)]
pub struct Lease {
    /// `(window_index << 32) | units` still leased and unspent.
    word: AtomicU64,
    /// `(window_index << 32) | count`: Redis's count after this replica's last
    /// reservation, for the remaining reported to the caller.
    seen: AtomicU64,
    /// `(window_index << 32) | count`: the sliding window's previous count, as last seen.
    previous: AtomicU64,
    /// Units admitted from this lease, ever (for the demand estimate).
    pub spent: AtomicU64,
    /// `(window_index << 32) | units` admitted from the lease in that window and not
    /// refunded: the most a refund may put back.
    spent_in: AtomicU64,
    /// Token bucket: the bucket's TAT in Redis (microseconds) after this replica's last
    /// reservation, for the remaining reported to the caller.
    pub tat_seen_us: AtomicU64,
    /// When a request last asked (ms since the store started).
    pub last_used_ms: AtomicU64,
    /// `window_index + 1` while Redis said the window has nothing left for us.
    closed_window: AtomicU32,
    /// When a closed window may be asked again (ms of the decision clock).
    reopen_at_ms: AtomicU64,
    pub params: LimitParams,
    pub reserve: tokio::sync::Mutex<Sizing>,
}

impl Lease {
    fn new(params: LimitParams, now_ms: u64) -> Lease {
        Lease {
            word: AtomicU64::new(0),
            seen: AtomicU64::new(0),
            previous: AtomicU64::new(0),
            spent: AtomicU64::new(0),
            spent_in: AtomicU64::new(0),
            tat_seen_us: AtomicU64::new(0),
            last_used_ms: AtomicU64::new(now_ms),
            closed_window: AtomicU32::new(0),
            reopen_at_ms: AtomicU64::new(0),
            params,
            reserve: tokio::sync::Mutex::new(Sizing::default()),
        }
    }

    /// Takes `hits` units of `window` from the lease: the units left after, or `None`
    /// when the lease holds fewer (or another window's).
    #[inline]
    pub fn take(&self, window: u32, hits: u64) -> Option<u32> {
        self.take_where(hits, |w| w == window)
    }

    /// Takes `hits` units if the lease's window passes `spendable`: the units left after.
    #[inline]
    pub fn take_where(&self, hits: u64, spendable: impl Fn(u32) -> bool) -> Option<u32> {
        let mut current = self.word.load(Ordering::Acquire);
        loop {
            let (w, units) = unpack(current);
            if !spendable(w) || u64::from(units) < hits {
                return None;
            }
            let left = units - hits as u32;
            match self.word.compare_exchange_weak(current, pack(w, left), Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => {
                    self.spent.fetch_add(hits, Ordering::Relaxed);
                    return Some(left);
                }
                Err(actual) => current = actual,
            }
        }
    }

    /// Adds `units` of `window` to the lease. Returns the units of an earlier window it
    /// held, which are now wasted.
    pub fn add(&self, window: u32, units: u64) -> u64 {
        let mut current = self.word.load(Ordering::Acquire);
        loop {
            let (w, held) = unpack(current);
            let (next, wasted) = if w == window {
                (pack(w, held.saturating_add(units as u32)), 0)
            } else if w < window {
                (pack(window, units as u32), u64::from(held))
            } else {
                // A later window already: these units are of the past.
                return units;
            };
            match self.word.compare_exchange_weak(current, next, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return wasted,
                Err(actual) => current = actual,
            }
        }
    }

    /// Takes every unit of the lease, whatever its window: `(window, units)`.
    pub fn drain(&self) -> (u32, u32) {
        let mut current = self.word.load(Ordering::Acquire);
        loop {
            let (w, units) = unpack(current);
            if units == 0 {
                return (w, 0);
            }
            match self.word.compare_exchange_weak(current, pack(w, 0), Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return (w, units),
                Err(actual) => current = actual,
            }
        }
    }

    /// Records `hits` admitted from the lease in `window`.
    pub fn note_spent(&self, window: u32, hits: u64) {
        let _ = self.spent_in.fetch_update(Ordering::AcqRel, Ordering::Acquire, |word| {
            let (w, n) = unpack(word);
            Some(if w == window { pack(w, n.saturating_add(hits as u32)) } else { pack(window, hits as u32) })
        });
    }

    /// Takes back up to `hits` of what the lease admitted in `window`: how many.
    pub fn unspend(&self, window: u32, hits: u64) -> u64 {
        let mut back = 0;
        let _ = self.spent_in.fetch_update(Ordering::AcqRel, Ordering::Acquire, |word| {
            let (w, n) = unpack(word);
            if w != window {
                back = 0;
                return None;
            }
            back = hits.min(u64::from(n));
            Some(pack(w, n - back as u32))
        });
        back
    }

    /// The units held and their window.
    pub fn held(&self) -> (u32, u32) {
        unpack(self.word.load(Ordering::Acquire))
    }

    /// Redis's count for `window` as last seen here.
    pub fn seen(&self, window: u32) -> u64 {
        let (w, count) = unpack(self.seen.load(Ordering::Acquire));
        if w == window { u64::from(count) } else { 0 }
    }

    pub fn set_seen(&self, window: u32, count: u64) {
        self.seen.store(pack(window, u32::try_from(count).unwrap_or(u32::MAX)), Ordering::Release);
    }

    /// The sliding window's previous count for `window`, as last seen here.
    pub fn previous(&self, window: u32) -> u64 {
        let (w, count) = unpack(self.previous.load(Ordering::Acquire));
        if w == window { u64::from(count) } else { 0 }
    }

    pub fn set_previous(&self, window: u32, count: u64) {
        self.previous.store(pack(window, u32::try_from(count).unwrap_or(u32::MAX)), Ordering::Release);
    }

    /// Whether Redis said `window` has nothing left for us, and it is not time to ask
    /// again.
    pub fn is_closed(&self, window: u32, now_ms: u64) -> bool {
        self.closed_window.load(Ordering::Acquire) == window.wrapping_add(1)
            && now_ms < self.reopen_at_ms.load(Ordering::Acquire)
    }

    /// Hits were given back to the counter in Redis: ask it again at the next need.
    pub fn reopen(&self) {
        self.closed_window.store(0, Ordering::Release);
    }

    pub fn close(&self, window: u32, until_ms: u64) {
        self.reopen_at_ms.store(until_ms, Ordering::Release);
        self.closed_window.store(window.wrapping_add(1), Ordering::Release);
    }
}

/// Slots remembering counters called recently without a lease.
const RECENT_SLOTS: usize = 1 << 14;

/// Every lease of this replica, by counter, at most `cap` of them. A counter gets a
/// lease only when called again within the warm-up time: a cold counter (one call now
/// and then) is decided per request and costs no table entry.
#[derive(Debug)]
pub struct Leases {
    shards: Box<[Shard]>,
    hasher: foldhash::fast::FixedState,
    count: AtomicUsize,
    cap: usize,
    /// `(tag << 32) | ms`: a counter's hash tag and when it was last called unleased.
    recent: Box<[AtomicU64]>,
}

impl Leases {
    pub fn new(cap: usize) -> Leases {
        Leases {
            shards: (0..SHARDS).map(|_| RwLock::new(HashMap::default())).collect(),
            hasher: foldhash::fast::FixedState::with_seed(0x5eed_1ea5),
            count: AtomicUsize::new(0),
            cap,
            recent: (0..RECENT_SLOTS).map(|_| AtomicU64::new(0)).collect(),
        }
    }
}

impl Leases {
    fn shard(&self, key: &[u8]) -> &Shard {
        use std::hash::BuildHasher;
        &self.shards[(self.hasher.hash_one(key) as usize) % SHARDS]
    }

    /// The lease of the counter under `key`; made if the counter was last called
    /// unleased less than `warm_ms` ago and the table has room; else `None` (the
    /// counter is then decided per request).
    pub fn get(&self, key: &[u8], params: &LimitParams, now_ms: u64, warm_ms: u64) -> Option<Arc<Lease>> {
        use std::hash::BuildHasher;
        let hash = self.hasher.hash_one(key);
        let shard = &self.shards[(hash as usize) % SHARDS];
        match shard.read().unwrap_or_else(|e| e.into_inner()).get(key) {
            Some(lease) if lease.params == *params => return Some(lease.clone()),
            Some(_) => {}
            None => {
                let tag = hash >> 32;
                let slot = &self.recent[((hash >> 8) as usize) % RECENT_SLOTS];
                let last = slot.swap((tag << 32) | (now_ms & 0xffff_ffff), Ordering::Relaxed);
                let warm = last >> 32 == tag && (now_ms as u32).wrapping_sub(last as u32) < warm_ms as u32;
                if !warm {
                    return None;
                }
            }
        }
        let mut map = shard.write().unwrap_or_else(|e| e.into_inner());
        match map.get(key) {
            Some(lease) if lease.params == *params => Some(lease.clone()),
            Some(_) => {
                // Its limit changed with a reload: a fresh lease (the old one's units go
                // unspent, erring toward rejecting).
                let lease = Arc::new(Lease::new(*params, now_ms));
                map.insert(key.into(), lease.clone());
                Some(lease)
            }
            None if self.count.load(Ordering::Relaxed) >= self.cap => None,
            None => {
                let lease = Arc::new(Lease::new(*params, now_ms));
                map.insert(key.into(), lease.clone());
                self.count.fetch_add(1, Ordering::Relaxed);
                Some(lease)
            }
        }
    }

    /// The lease of the counter under `key`, if there is one.
    pub fn find(&self, key: &[u8]) -> Option<Arc<Lease>> {
        self.shard(key).read().unwrap_or_else(|e| e.into_inner()).get(key).cloned()
    }

    /// The leases holding units, for the background sweep.
    pub fn holding(&self) -> Vec<Arc<Lease>> {
        let mut out = Vec::new();
        for shard in self.shards.iter() {
            let map = shard.read().unwrap_or_else(|e| e.into_inner());
            out.extend(map.values().filter(|lease| lease.held().1 > 0).cloned());
        }
        out
    }

    /// Drops leases `keep` says no to.
    pub fn retain(&self, mut keep: impl FnMut(&Lease) -> bool) {
        for shard in self.shards.iter() {
            let mut map = shard.write().unwrap_or_else(|e| e.into_inner());
            let before = map.len();
            map.retain(|_, lease| keep(lease));
            self.count.fetch_sub(before - map.len(), Ordering::Relaxed);
        }
    }

    pub fn len(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limiter::Unit;

    #[test]
    fn units_are_taken_only_from_their_window() {
        let lease = Lease::new(LimitParams::fixed_window(10, Unit::Second), 0);
        assert_eq!(lease.take(5, 1), None);
        assert_eq!(lease.add(5, 3), 0);
        assert_eq!(lease.take(5, 2), Some(1));
        assert_eq!(lease.take(6, 1), None);
        assert_eq!(lease.take(5, 2), None);
        // A new window's units replace the old window's, which are wasted.
        assert_eq!(lease.add(6, 4), 1);
        assert_eq!(lease.take(6, 4), Some(0));
        assert_eq!(lease.add(5, 2), 2, "a past window's units are wasted at once");
        assert_eq!(lease.held(), (6, 0));
    }

    #[test]
    fn demand_follows_the_rate_and_starts_at_the_need() {
        let mut sizing = Sizing::default();
        assert_eq!(sizing.want(0, 1_000, 1, 100), 1, "cold: one unit");
        // 100 units in 100 ms: 1000/s, half-weighted.
        assert_eq!(sizing.want(100, 1_100, 1, 100), 50);
        assert_eq!(sizing.want(200, 1_200, 1, 100), 75);
        // A long pause: the rate falls at once.
        assert_eq!(sizing.want(201, 11_200, 1, 100), 1);
        assert_eq!(sizing.want(201, 11_300, 3, 100), 3, "never fewer than the request needs");
    }

    #[test]
    fn concurrent_takes_never_spend_more_than_added() {
        let lease = Arc::new(Lease::new(LimitParams::fixed_window(10, Unit::Second), 0));
        lease.add(1, 10_000);
        let taken: u64 = std::thread::scope(|s| {
            let handles: Vec<_> = (0..4)
                .map(|_| {
                    let lease = lease.clone();
                    s.spawn(move || (0..5_000).filter(|_| lease.take(1, 1).is_some()).count() as u64)
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).sum()
        });
        assert_eq!(taken, 10_000);
        assert_eq!(lease.spent.load(Ordering::Relaxed), 10_000);
    }
}
