//! The embedded counter store: lock-free, exact, bounded.
//!
//! Owns the in-process counters. A counter is an `AtomicU64` of algorithm state (and a
//! second word: the sliding window's previous count, or else the time of the last hit)
//! in a lock-free hash map (papaya); a decision is a map lookup, a pure
//! `limiter::decide` and a compare-and-swap of the new state, retried on contention. So
//! N concurrent hits on a limit of L admit exactly min(N, L), for every algorithm, on any
//! number of threads, and no request ever waits on a lock.
//!
//! Memory is bounded two ways. Counters whose state is indistinguishable from a new one
//! (their window ended) are reclaimed by [`MemoryStore::sweep`], which the server runs
//! continuously; dropping them changes no decision. And past `max_counters` live
//! counters, the longest-idle are evicted (that does forget their counts, and is counted
//! in `evictions`). Eviction runs in the background as soon as the cap is passed; only if
//! a flood of new keys outruns it (half again over the cap) does an inserting request
//! help, so memory stays bounded whatever the traffic.
//!
//! Removal never loses a hit: a counter about to be removed is first marked dead with a
//! CAS from the exact state that made it removable; a request that finds a dead counter
//! removes it and retries on a fresh one.

use std::cell::RefCell;
use std::ptr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use super::key::{self, CompactKey, DecodedLimit};
use crate::clock::Nanos;
use crate::limiter::{self, Algorithm, LimitParams, Outcome, State, Step, TOMBSTONE, sliding_window};
use crate::rules::LimitRegistry;

/// The default cap on live counters: about 100 MB of counters at the measured cost of
/// under 100 bytes each.
pub const DEFAULT_MAX_COUNTERS: usize = 1_000_000;

#[derive(Debug)]
struct Slot {
    /// The algorithm's state word; [`TOMBSTONE`] once the counter is being removed.
    state: AtomicU64,
    /// The sliding window's previous-window word (see `limiter::sliding_window`); for the
    /// other algorithms, the unix second of the last hit, for longest-idle eviction
    /// (relaxed: an eviction order off by a racing hit is harmless).
    aux: AtomicU64,
}

/// What applying hits did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Applied {
    pub outcome: Outcome,
    /// The counter now holds these hits (they would have to be refunded to undo them).
    pub consumed: bool,
    /// Answered from Redis's local over-limit cache, without asking Redis.
    pub cached: bool,
}

type Map = papaya::HashMap<CompactKey, Slot, foldhash::fast::RandomState>;

#[derive(Debug)]
pub struct MemoryStore {
    counters: Map,
    registry: Arc<LimitRegistry>,
    max_counters: usize,
    evictions: AtomicU64,
    reclaimed: AtomicU64,
    /// Set while some thread evicts, so only one does at a time (nobody waits on it).
    evicting: AtomicBool,
    /// Wakes the background sweeper when the cap is passed.
    over_cap: tokio::sync::Notify,
}

thread_local! {
    /// Reused key buffer: encoding a key allocates nothing once the buffer has grown.
    static KEY_BUF: RefCell<Vec<u8>> = RefCell::new(Vec::with_capacity(256));
}

/// What one sweep did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SweepReport {
    pub reclaimed: usize,
    pub evicted: usize,
    pub live: usize,
}

impl MemoryStore {
    pub fn new(registry: Arc<LimitRegistry>, max_counters: usize) -> Self {
        MemoryStore {
            counters: papaya::HashMap::builder()
                .hasher(foldhash::fast::RandomState::default())
                .resize_mode(papaya::ResizeMode::Blocking)
                .build(),
            registry,
            max_counters: max_counters.max(1),
            evictions: AtomicU64::new(0),
            reclaimed: AtomicU64::new(0),
            evicting: AtomicBool::new(false),
            over_cap: tokio::sync::Notify::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.counters.len()
    }

    pub fn is_empty(&self) -> bool {
        self.counters.is_empty()
    }

    pub fn max_counters(&self) -> usize {
        self.max_counters
    }

    /// Counters evicted for the cap since start.
    pub fn evictions(&self) -> u64 {
        self.evictions.load(Ordering::Relaxed)
    }

    /// Expired counters reclaimed since start.
    pub fn reclaimed(&self) -> u64 {
        self.reclaimed.load(Ordering::Relaxed)
    }

    /// Encodes a key with the thread's reusable buffer and applies `hits` to it.
    pub fn apply_with_key(
        &self,
        encode: impl FnOnce(&mut Vec<u8>),
        params: &LimitParams,
        hits: u64,
        now: Nanos,
    ) -> Applied {
        KEY_BUF.with(|buf| match buf.try_borrow_mut() {
            Ok(mut buf) => {
                encode(&mut buf);
                self.apply(&buf, params, hits, now)
            }
            // Only reachable if `encode` itself re-entered the store.
            Err(_) => {
                let mut own = Vec::new();
                encode(&mut own);
                self.apply(&own, params, hits, now)
            }
        })
    }

    /// Encodes a key with the thread's reusable buffer and takes back hits it counted.
    pub fn refund_with_key(
        &self,
        encode: impl FnOnce(&mut Vec<u8>),
        params: &LimitParams,
        hits: u64,
        consumed_at: Nanos,
    ) {
        KEY_BUF.with(|buf| match buf.try_borrow_mut() {
            Ok(mut buf) => {
                encode(&mut buf);
                self.refund(&buf, params, hits, consumed_at)
            }
            Err(_) => {
                let mut own = Vec::new();
                encode(&mut own);
                self.refund(&own, params, hits, consumed_at)
            }
        })
    }

    /// Adds `hits` to the counter under `key` and decides. `hits == 0` checks without
    /// consuming and never creates a counter.
    pub fn apply(&self, key: &[u8], params: &LimitParams, hits: u64, now: Nanos) -> Applied {
        let guard = self.counters.guard();
        loop {
            let slot = match self.counters.get(key, &guard) {
                Some(slot) => slot,
                None if hits == 0 => {
                    return Applied { outcome: check_fresh(now, params), consumed: false, cached: false };
                }
                None => {
                    let slot = self.counters.get_or_insert_with(CompactKey::new(key), Slot::fresh, &guard);
                    self.after_insert(now);
                    slot
                }
            };
            if let Some(applied) = commit(slot, now, hits, params) {
                if applied.consumed && !params.algorithm.uses_aux_word() {
                    slot.aux.store(now.as_secs(), Ordering::Relaxed);
                }
                return applied;
            }
            // The counter was being removed: finish removing it, then use a fresh one.
            let _ = self.counters.remove_if(key, |_, v| ptr::eq(v, slot), &guard);
        }
    }

    /// Takes back `hits` that a decision at `consumed_at` counted under `key`.
    pub fn refund(&self, key: &[u8], params: &LimitParams, hits: u64, consumed_at: Nanos) {
        let guard = self.counters.guard();
        let Some(slot) = self.counters.get(key, &guard) else { return };
        loop {
            let word = slot.state.load(Ordering::Acquire);
            if word == TOMBSTONE {
                return; // being removed: its hits go with it
            }
            let aux = if params.algorithm.uses_aux_word() { slot.aux.load(Ordering::Acquire) } else { 0 };
            let after = limiter::refund(State { word, aux }, consumed_at, hits, params);
            let swapped = if after.word != word {
                slot.state.compare_exchange_weak(word, after.word, Ordering::AcqRel, Ordering::Acquire).is_ok()
            } else if after.aux != aux {
                slot.aux.compare_exchange_weak(aux, after.aux, Ordering::AcqRel, Ordering::Acquire).is_ok()
            } else {
                true
            };
            if swapped {
                return;
            }
        }
    }

    /// The current decision for `key` without changing it (for `explain` and tests).
    pub fn peek(&self, key: &[u8], params: &LimitParams, now: Nanos) -> Outcome {
        let guard = self.counters.guard();
        match self.counters.get(key, &guard) {
            None => check_fresh(now, params),
            Some(slot) => loop {
                let word = slot.state.load(Ordering::Acquire);
                if word == TOMBSTONE {
                    return check_fresh(now, params);
                }
                let aux = slot.aux.load(Ordering::Acquire);
                let aux = if params.algorithm.uses_aux_word() { aux } else { 0 };
                if let Step::Decided { outcome, .. } = limiter::decide(State { word, aux }, now, 0, params) {
                    return outcome;
                }
            },
        }
    }

    fn after_insert(&self, _now: Nanos) {
        let live = self.counters.len();
        if live > self.max_counters {
            self.over_cap.notify_one();
            if live > self.max_counters + self.max_counters / 2 {
                self.evict_idle();
            }
        }
    }

    /// Waits until the cap has been passed (the background sweeper's wake-up).
    pub async fn over_cap(&self) {
        self.over_cap.notified().await;
    }

    /// Reclaims every expired counter, then evicts the longest-idle ones if the store is
    /// over its cap. Runs off the request path.
    pub fn sweep(&self, now: Nanos) -> SweepReport {
        let params = self.registry.snapshot();
        let guard = self.counters.guard();
        let mut reclaimed = 0;
        for (key, slot) in self.counters.iter(&guard) {
            let word = slot.state.load(Ordering::Acquire);
            if word == TOMBSTONE {
                continue;
            }
            let Some(limit) = params_of(key, &params) else { continue };
            let aux = slot.aux.load(Ordering::Acquire);
            if limiter::fresh_at(State { word, aux }, &limit) <= now && self.retire(key, slot, word, &guard) {
                reclaimed += 1;
            }
        }
        drop(guard);
        self.reclaimed.fetch_add(reclaimed as u64, Ordering::Relaxed);
        let evicted = if self.counters.len() > self.max_counters { self.evict_idle() } else { 0 };
        SweepReport { reclaimed, evicted, live: self.counters.len() }
    }

    /// Evicts the longest-idle counters until the store is a sixteenth under its cap, so
    /// a steady stream of new keys does not evict on every insert. Returns how many went.
    fn evict_idle(&self) -> usize {
        if self.evicting.swap(true, Ordering::Acquire) {
            return 0; // someone else is already at it
        }
        let params = self.registry.snapshot();
        let idle_since = |key: &CompactKey, slot: &Slot| -> u32 {
            match params_of(key, &params) {
                Some(p) if p.algorithm.uses_aux_word() => {
                    sliding_window::touched_secs(slot.state.load(Ordering::Relaxed), &p)
                }
                _ => slot.aux.load(Ordering::Relaxed) as u32,
            }
        };
        let target = self.max_counters - self.max_counters / 16;
        let guard = self.counters.guard();
        let mut touched: Vec<u32> = self.counters.iter(&guard).map(|(k, s)| idle_since(k, s)).collect();
        let mut evicted = 0;
        if touched.len() > target {
            let excess = touched.len() - target;
            let (_, &mut threshold, _) = touched.select_nth_unstable(excess - 1);
            let mut ties_allowed = excess - touched.iter().filter(|&&t| t < threshold).count();
            for (key, slot) in self.counters.iter(&guard) {
                if evicted >= excess {
                    break;
                }
                let t = idle_since(key, slot);
                let chosen = t < threshold || (t == threshold && ties_allowed > 0);
                if chosen {
                    let state = slot.state.load(Ordering::Acquire);
                    if state != TOMBSTONE && self.retire(key, slot, state, &guard) {
                        evicted += 1;
                        if t == threshold {
                            ties_allowed -= 1;
                        }
                    }
                }
            }
        }
        drop(guard);
        self.evictions.fetch_add(evicted as u64, Ordering::Relaxed);
        self.evicting.store(false, Ordering::Release);
        evicted
    }

    /// Marks a counter dead if it still holds `expected`, then removes it.
    fn retire(&self, key: &CompactKey, slot: &Slot, expected: u64, guard: &impl papaya::Guard) -> bool {
        if slot.state.compare_exchange(expected, TOMBSTONE, Ordering::AcqRel, Ordering::Acquire).is_err() {
            return false;
        }
        let _ = self.counters.remove_if(key.as_bytes(), |_, v| ptr::eq(v, slot), guard);
        true
    }
}

impl Slot {
    fn fresh() -> Slot {
        Slot { state: AtomicU64::new(0), aux: AtomicU64::new(0) }
    }
}

/// The parameters of the limit a stored key counts against.
fn params_of(key: &CompactKey, registry: &[LimitParams]) -> Option<LimitParams> {
    match key::decode_limit(key.as_bytes())? {
        DecodedLimit::Rule(id) => registry.get(id as usize).copied(),
        DecodedLimit::Override { unit } => Some(LimitParams::fixed_window(0, unit)),
    }
}

/// The answer for a counter that does not exist yet.
fn check_fresh(now: Nanos, params: &LimitParams) -> Outcome {
    match limiter::decide(State::default(), now, 0, params) {
        Step::Decided { outcome, .. } => outcome,
        Step::Retry => unreachable!("a fresh state is consistent"),
    }
}

/// Raises the sliding window's previous-window word to `target`, never lowering it.
#[inline]
fn raise_aux(aux: &AtomicU64, target: u64) {
    let (target_index, target_count) = sliding_window::unpack(target);
    let mut current = aux.load(Ordering::Acquire);
    loop {
        let (index, count) = sliding_window::unpack(current);
        if current != 0 && (index > target_index || (index == target_index && count >= target_count)) {
            return;
        }
        match aux.compare_exchange_weak(current, target, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => return,
            Err(actual) => current = actual,
        }
    }
}

/// The CAS loop: decide on the current state, commit, retry if another hit got there
/// first. `None` if the counter is dead.
#[inline]
fn commit(slot: &Slot, now: Nanos, hits: u64, params: &LimitParams) -> Option<Applied> {
    let uses_aux = params.algorithm.uses_aux_word();
    loop {
        let word = slot.state.load(Ordering::Acquire);
        if word == TOMBSTONE {
            return None;
        }
        let aux = if uses_aux { slot.aux.load(Ordering::Acquire) } else { 0 };
        let Step::Decided { outcome, word: next, aux: next_aux } =
            limiter::decide(State { word, aux }, now, hits, params)
        else {
            continue;
        };
        if let Some(next_aux) = next_aux {
            raise_aux(&slot.aux, next_aux);
        }
        // The fixed window counts every hit, as the reference's INCRBY does; the others
        // count only admitted ones.
        let consumed = hits > 0 && (!outcome.over_limit || params.algorithm == Algorithm::FixedWindow);
        if next == word || slot.state.compare_exchange_weak(word, next, Ordering::AcqRel, Ordering::Acquire).is_ok() {
            return Some(Applied { outcome, consumed, cached: false });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limiter::Unit;
    use crate::rules::EntryView;
    use crate::store::key::{LimitIdentity, encode};

    fn key_for(id: u32, value: &str) -> Vec<u8> {
        let mut buf = Vec::new();
        let entries = [("k", value)];
        encode(&mut buf, LimitIdentity::Rule(id), &entries, |_, e| e.value());
        buf
    }

    fn store_with(params: LimitParams, max: usize) -> (MemoryStore, u32) {
        let registry = Arc::new(LimitRegistry::new());
        let id = registry.intern(b"test", params);
        (MemoryStore::new(registry, max), id)
    }

    #[test]
    fn counts_per_key_and_resets_with_the_window() {
        let params = LimitParams::fixed_window(2, Unit::Second);
        let (store, id) = store_with(params, 100);
        let (a, b) = (key_for(id, "a"), key_for(id, "b"));
        let t = Nanos::from_secs(1000);
        assert!(!store.apply(&a, &params, 1, t).outcome.over_limit);
        assert!(!store.apply(&a, &params, 1, t).outcome.over_limit);
        assert!(store.apply(&a, &params, 1, t).outcome.over_limit);
        assert!(!store.apply(&b, &params, 1, t).outcome.over_limit);
        assert!(!store.apply(&a, &params, 1, Nanos::from_secs(1001)).outcome.over_limit);
    }

    #[test]
    fn check_only_calls_create_no_counter() {
        let params = LimitParams::fixed_window(2, Unit::Second);
        let (store, id) = store_with(params, 100);
        let o = store.apply(&key_for(id, "a"), &params, 0, Nanos::from_secs(5)).outcome;
        assert_eq!((o.over_limit, o.remaining), (false, 2));
        assert!(store.is_empty());
    }

    #[test]
    fn sweeping_reclaims_ended_windows_only() {
        let params = LimitParams::fixed_window(5, Unit::Minute);
        let (store, id) = store_with(params, 100);
        store.apply(&key_for(id, "old"), &params, 1, Nanos::from_secs(60));
        store.apply(&key_for(id, "new"), &params, 1, Nanos::from_secs(125));
        let report = store.sweep(Nanos::from_secs(130));
        assert_eq!((report.reclaimed, report.live), (1, 1));
        assert_eq!(store.peek(&key_for(id, "new"), &params, Nanos::from_secs(130)).remaining, 4);
        assert_eq!(store.reclaimed(), 1);
    }

    #[test]
    fn over_the_cap_the_longest_idle_counters_go_first() {
        let params = LimitParams::fixed_window(100, Unit::Day);
        let (store, id) = store_with(params, 32);
        for i in 0..32u64 {
            store.apply(&key_for(id, &i.to_string()), &params, 1, Nanos::from_secs(1000 + i));
        }
        assert_eq!(store.sweep(Nanos::from_secs(2000)).evicted, 0);
        // Touch the oldest one again, then go over the cap.
        store.apply(&key_for(id, "0"), &params, 1, Nanos::from_secs(1100));
        for i in 32..40u64 {
            store.apply(&key_for(id, &i.to_string()), &params, 1, Nanos::from_secs(1200 + i));
        }
        let report = store.sweep(Nanos::from_secs(2000));
        assert_eq!(report.live, 30, "{report:?}");
        assert_eq!(report.evicted, 10);
        let t = Nanos::from_secs(2000);
        assert_eq!(store.peek(&key_for(id, "0"), &params, t).remaining, 98, "recently used survives");
        assert_eq!(store.peek(&key_for(id, "1"), &params, t).remaining, 100, "idlest was evicted");
        assert_eq!(store.peek(&key_for(id, "39"), &params, t).remaining, 99);
        assert_eq!(store.evictions(), 10);
    }

    #[test]
    fn a_flood_of_new_keys_stays_bounded_without_a_sweeper() {
        let params = LimitParams::fixed_window(100, Unit::Day);
        let (store, id) = store_with(params, 64);
        for i in 0..10_000u64 {
            store.apply(&key_for(id, &i.to_string()), &params, 1, Nanos::from_secs(1000 + i));
            assert!(store.len() <= 64 + 32 + 1, "{} live at {i}", store.len());
        }
    }

    #[test]
    fn every_algorithm_counts_per_key_and_refunds() {
        for algorithm in Algorithm::ALL {
            // A leaky bucket with burst 2 holds 3, like the others' limit of 3.
            let burst = (algorithm == Algorithm::LeakyBucket).then_some(2);
            let params = LimitParams::new(algorithm, 3, Unit::Minute, 1, burst);
            let (store, id) = store_with(params, 100);
            let key = key_for(id, "a");
            let t = Nanos::from_secs(6000);
            let admitted = (0..5).filter(|_| !store.apply(&key, &params, 1, t).outcome.over_limit).count();
            assert_eq!(admitted, 3, "{algorithm:?}");
            let applied = store.apply(&key, &params, 1, t);
            assert_eq!(applied.consumed, algorithm == Algorithm::FixedWindow, "{algorithm:?} counts rejected hits?");
            store.refund(&key, &params, 1 + u64::from(algorithm == Algorithm::FixedWindow) * 3, t);
            assert!(!store.apply(&key, &params, 1, t).outcome.over_limit, "{algorithm:?} after a refund");
        }
    }

    #[test]
    fn sliding_window_counters_are_swept_after_two_windows() {
        let params = LimitParams::new(Algorithm::SlidingWindow, 3, Unit::Minute, 1, None);
        let (store, id) = store_with(params, 100);
        store.apply(&key_for(id, "a"), &params, 1, Nanos::from_secs(6000));
        assert_eq!(store.sweep(Nanos::from_secs(6119)).reclaimed, 0);
        assert_eq!(store.sweep(Nanos::from_secs(6120)).reclaimed, 1);
    }

    #[test]
    fn a_removed_counter_is_replaced_not_counted_on() {
        let params = LimitParams::fixed_window(5, Unit::Second);
        let (store, id) = store_with(params, 100);
        let key = key_for(id, "a");
        store.apply(&key, &params, 1, Nanos::from_secs(10));
        // Simulate the sweeper having marked it dead but not removed it yet.
        let guard = store.counters.guard();
        store.counters.get(&key[..], &guard).unwrap().state.store(TOMBSTONE, Ordering::Release);
        drop(guard);
        let o = store.apply(&key, &params, 1, Nanos::from_secs(10)).outcome;
        assert_eq!(o.before, 0);
        assert_eq!(store.len(), 1);
    }
}
