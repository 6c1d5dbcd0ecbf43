//! The local over-limit cache (`LOCAL_CACHE_SIZE_IN_BYTES`).
//!
//! Once Redis says a fixed-window key is over its limit, it stays over until its window
//! ends (a fixed window's count only grows), so later requests for that key are answered
//! here, without a round trip, until the window's end. As in the reference this only
//! remembers over-limit keys, and only for fixed windows, where the answer cannot change;
//! a key's window start is part of the key, so an entry can never outlive its meaning.
//!
//! Bounded: the byte budget becomes a cap on entries (each costs its key plus about 64
//! bytes); at the cap, expired entries are dropped, and if none have expired the new
//! entry is not cached (the answer is still right, just not cached). Entries live in a
//! few shards behind reader-writer locks: lookups (every request) share a read lock;
//! only an insert (a key going over its limit, once per window) writes.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{PoisonError, RwLock};

use crate::clock::Nanos;

/// What one entry costs besides its key: the map's slot, the boxed key's header and the
/// expiry.
const ENTRY_OVERHEAD: usize = 64;
/// The typical key length the byte budget is divided by.
const TYPICAL_KEY: usize = 64;

/// Shards of the cache: enough that the worker threads rarely meet on one lock.
const SHARDS: usize = 16;

type Shard = RwLock<HashMap<Box<str>, Nanos, foldhash::fast::RandomState>>;

#[derive(Debug)]
pub struct OverLimitCache {
    shards: Box<[Shard]>,
    hasher: foldhash::fast::RandomState,
    len: AtomicUsize,
    max_entries: usize,
    pub hits: AtomicU64,
    pub misses: AtomicU64,
}

impl OverLimitCache {
    /// `None` for a budget of 0 (the cache is off).
    pub fn new(bytes: usize) -> Option<OverLimitCache> {
        (bytes > 0).then(|| OverLimitCache {
            shards: (0..SHARDS).map(|_| RwLock::default()).collect(),
            hasher: foldhash::fast::RandomState::default(),
            len: AtomicUsize::new(0),
            max_entries: (bytes / (ENTRY_OVERHEAD + TYPICAL_KEY)).max(1),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        })
    }

    fn shard(&self, key: &str) -> &Shard {
        &self.shards[self.hasher.hash_one(key) as usize % SHARDS]
    }

    /// The end of the window `key` is known to be over in, if it has not passed.
    pub fn lookup(&self, key: &str, now: Nanos) -> Option<Nanos> {
        let shard = self.shard(key).read().unwrap_or_else(PoisonError::into_inner);
        let found = shard.get(key).copied().filter(|until| *until > now);
        drop(shard);
        let stat = if found.is_some() { &self.hits } else { &self.misses };
        stat.fetch_add(1, Ordering::Relaxed);
        found
    }

    /// Remembers that `key` is over its limit until `until`.
    pub fn insert(&self, key: &str, until: Nanos, now: Nanos) {
        if self.len() >= self.max_entries {
            for shard in self.shards.iter() {
                let mut shard = shard.write().unwrap_or_else(PoisonError::into_inner);
                let before = shard.len();
                shard.retain(|_, expiry| *expiry > now);
                self.len.fetch_sub(before - shard.len(), Ordering::Relaxed);
            }
            if self.len() >= self.max_entries {
                return;
            }
        }
        let mut shard = self.shard(key).write().unwrap_or_else(PoisonError::into_inner);
        if shard.insert(key.into(), until).is_none() {
            self.len.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Forgets `key` (hits were given back to it: it may be under its limit again).
    pub fn forget(&self, key: &str) {
        let mut shard = self.shard(key).write().unwrap_or_else(PoisonError::into_inner);
        if shard.remove(key).is_some() {
            self.len.fetch_sub(1, Ordering::Relaxed);
        }
    }

    pub fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn capacity(&self) -> usize {
        self.max_entries
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_until_the_window_ends_and_stays_bounded() {
        let cache = OverLimitCache::new(128 * 3).unwrap();
        assert_eq!(cache.capacity(), 3);
        let t = Nanos::from_secs(100);
        cache.insert("a", Nanos::from_secs(120), t);
        assert_eq!(cache.lookup("a", t), Some(Nanos::from_secs(120)));
        assert_eq!(cache.lookup("a", Nanos::from_secs(120)), None, "gone at the window's end");
        assert_eq!(cache.lookup("b", t), None);
        cache.insert("b", Nanos::from_secs(110), t);
        cache.insert("c", Nanos::from_secs(130), t);
        cache.insert("d", Nanos::from_secs(130), t);
        assert_eq!(cache.len(), 3, "full: d is not cached");
        assert_eq!(cache.lookup("d", t), None);
        // Once b has expired, there is room again.
        cache.insert("d", Nanos::from_secs(130), Nanos::from_secs(111));
        assert!(cache.lookup("d", Nanos::from_secs(111)).is_some());
        assert_eq!(cache.hits.load(Ordering::Relaxed), 2);
        assert!(OverLimitCache::new(0).is_none());
    }
}
