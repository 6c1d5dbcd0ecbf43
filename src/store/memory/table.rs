//! The counter table: a fixed set of shards, each a SwissTable behind a reader-writer
//! lock, holding 64-byte entries.
//!
//! Owns where a counter's words live and when entries come and go. Why not a lock-free
//! map: the one used before (papaya) could livelock in a blocking resize when one thread
//! inserted while another iterated and removed, allocating a new table on every turn, so
//! a flood of distinct keys with a small `MEMORY_MAX_COUNTERS` hung a call and grew
//! memory without bound. Here a resize and a removal happen only under their shard's
//! write lock, so neither can race the other; a resize is an ordinary rehash of one
//! shard (a few thousand entries at the default cap), never a loop.
//!
//! Decisions stay lock-free where it matters: a request that finds its counter holds
//! the shard's read lock (shared with every other reader, never waiting on one) while it
//! compare-and-swaps the counter's atomic words, exactly as before. Only inserting a new
//! counter, sweeping, and evicting take a shard's write lock, and each holds it for one
//! shard's worth of work. Because entries are removed only under the write lock, no
//! reader can be counting on an entry while it goes, and no hit is ever lost to a
//! removal.
//!
//! The cap is global (`live` counts every entry) but eviction is local: an insert that
//! finds the table at its cap evicts the longest-idle sixteenth of its own shard first.
//! Keys hash evenly over the shards, so that approximates evicting the table's idlest
//! counters while costing each insert an amortized constant; the table never holds more
//! than the cap plus one entry per shard.

use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use hashbrown::HashTable;

use crate::store::key::INLINE;

/// One counter: its two algorithm words, its idle clock and its key, in one cache line
/// (and one mimalloc 64-byte size class).
#[repr(C)]
pub struct Entry {
    /// The algorithm's state word.
    pub state: AtomicU64,
    /// The sliding window's previous-window word (0 for the other algorithms).
    pub aux: AtomicU64,
    /// Unix second of the last call that reached this counter, admitted or rejected: the
    /// idle clock eviction goes by, so a client being throttled is never "idle".
    touched: AtomicU32,
    key_len: u8,
    key: [u8; INLINE],
}

const _: () = assert!(std::mem::size_of::<Entry>() == 64);

impl Entry {
    fn new(key: &[u8], now_secs: u32) -> Entry {
        let mut inline = [0; INLINE];
        // `key::encode` never makes a longer key; a longer one would be a bug, cut rather
        // than panic (it can only make two such keys share a counter).
        let len = key.len().min(INLINE);
        inline[..len].copy_from_slice(&key[..len]);
        Entry {
            state: AtomicU64::new(0),
            aux: AtomicU64::new(0),
            touched: AtomicU32::new(now_secs),
            key_len: len as u8,
            key: inline,
        }
    }

    pub fn key(&self) -> &[u8] {
        &self.key[..usize::from(self.key_len)]
    }

    /// Records a call at `now_secs`; written only when the second changes, so a hot
    /// counter's line is not dirtied by every call.
    #[inline]
    pub fn touch(&self, now_secs: u32) {
        if self.touched.load(Ordering::Relaxed) != now_secs {
            self.touched.store(now_secs, Ordering::Relaxed);
        }
    }

    pub fn touched(&self) -> u32 {
        self.touched.load(Ordering::Relaxed)
    }
}

impl std::fmt::Debug for Entry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Entry")
            .field("key", &self.key())
            .field("state", &self.state.load(Ordering::Relaxed))
            .field("touched", &self.touched())
            .finish_non_exhaustive()
    }
}

/// One shard, padded to its own cache lines so readers of neighbouring shards do not
/// contend on one lock word.
#[repr(align(128))]
struct Shard(RwLock<HashTable<Entry>>);

impl Shard {
    fn read(&self) -> RwLockReadGuard<'_, HashTable<Entry>> {
        // Nothing panics while holding a shard's lock; should it ever, the table is
        // still consistent (every write is one hashbrown call), so keep serving.
        self.0.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, HashTable<Entry>> {
        self.0.write().unwrap_or_else(PoisonError::into_inner)
    }
}

/// How many entries a shard holds at the cap: hashbrown's most for 4,096 buckets (it
/// fills a table to 7/8), so a full shard is one 4,096-bucket table and the whole store at
/// its cap costs about 74 bytes a counter, never a half-empty doubled table. Small enough,
/// too, that a sweep or an eviction holds one shard's write lock for tens of microseconds.
const SHARD_ENTRIES: usize = 4096 / 8 * 7;
/// Shard headers cost 128 bytes each; past this many, shards grow instead.
const MAX_SHARDS: usize = 16_384;

pub struct Table {
    shards: Box<[Shard]>,
    hasher: foldhash::fast::RandomState,
    live: AtomicUsize,
}

impl std::fmt::Debug for Table {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Table").field("shards", &self.shards.len()).field("live", &self.len()).finish()
    }
}

impl Table {
    /// A table sized for `cap` entries.
    pub fn new(cap: usize) -> Table {
        let shards = cap.div_ceil(SHARD_ENTRIES).clamp(1, MAX_SHARDS);
        Table {
            shards: (0..shards).map(|_| Shard(RwLock::new(HashTable::new()))).collect(),
            hasher: foldhash::fast::RandomState::default(),
            live: AtomicUsize::new(0),
        }
    }

    pub fn len(&self) -> usize {
        self.live.load(Ordering::Relaxed)
    }

    #[inline]
    pub fn hash(&self, key: &[u8]) -> u64 {
        self.hasher.hash_one(key)
    }

    /// A shard is picked by the hash's top 32 bits (multiplied into range, so any number
    /// of shards works); hashbrown indexes buckets by the low bits and uses the top 7
    /// only as tags, so every shard still spreads its keys over all its buckets.
    #[inline]
    fn shard(&self, hash: u64) -> &Shard {
        let index = ((hash >> 32) * self.shards.len() as u64) >> 32;
        &self.shards[index as usize]
    }

    /// Runs `f` on the entry of `key`, if there is one, under its shard's read lock.
    #[inline]
    pub fn with_existing<R>(&self, hash: u64, key: &[u8], f: impl FnOnce(&Entry) -> R) -> Option<R> {
        let shard = self.shard(hash).read();
        shard.find(hash, |e| e.key() == key).map(f)
    }

    /// Runs `f` on the entry of `key`, creating it if needed, under its shard's write
    /// lock. A new entry past `cap` live ones first evicts the longest-idle entries of
    /// its shard; returns how many went.
    pub fn with_inserted<R>(
        &self,
        hash: u64,
        key: &[u8],
        now_secs: u32,
        cap: usize,
        f: impl FnOnce(&Entry) -> R,
    ) -> (R, usize) {
        let mut shard = self.shard(hash).write();
        if let Some(entry) = shard.find(hash, |e| e.key() == key) {
            return (f(entry), 0);
        }
        let evicted = if self.len() >= cap { self.evict_idlest(&mut shard) } else { 0 };
        let entry = shard.insert_unique(hash, Entry::new(key, now_secs), |e| self.hash(e.key())).into_mut();
        self.live.fetch_add(1, Ordering::Relaxed);
        (f(entry), evicted)
    }

    /// Removes the longest-idle sixteenth of a shard (at least one entry).
    fn evict_idlest(&self, shard: &mut HashTable<Entry>) -> usize {
        if shard.is_empty() {
            return 0;
        }
        let excess = (shard.len() / 16).max(1);
        let mut touched: Vec<u32> = shard.iter().map(Entry::touched).collect();
        let (_, &mut threshold, _) = touched.select_nth_unstable(excess - 1);
        // Everything idler than the threshold goes, then as many at the threshold as
        // are still needed.
        let mut ties = excess - touched.iter().filter(|&&t| t < threshold).count();
        let before = shard.len();
        shard.retain(|e| {
            let t = e.touched();
            if t < threshold {
                return false;
            }
            if t == threshold && ties > 0 {
                ties -= 1;
                return false;
            }
            true
        });
        let evicted = before - shard.len();
        self.live.fetch_sub(evicted, Ordering::Relaxed);
        evicted
    }

    /// Keeps only the entries `keep` says to, one shard's write lock at a time; returns
    /// how many went. A shard left mostly empty gives its memory back.
    pub fn retain(&self, mut keep: impl FnMut(&Entry) -> bool) -> usize {
        let mut removed = 0;
        for shard in self.shards.iter() {
            // Look under the read lock first: most sweeps of most shards find nothing to
            // remove and should not stop requests even briefly.
            if shard.read().iter().all(&mut keep) {
                continue;
            }
            let mut table = shard.write();
            let before = table.len();
            table.retain(|e| keep(e));
            let gone = before - table.len();
            let live = table.len();
            if live * 4 < table.capacity() {
                table.shrink_to(live, |e| self.hash(e.key()));
            }
            drop(table);
            self.live.fetch_sub(gone, Ordering::Relaxed);
            removed += gone;
        }
        removed
    }
}
