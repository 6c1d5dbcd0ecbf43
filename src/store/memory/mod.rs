//! The embedded counter store: exact, bounded, and never blocked by another decision.
//!
//! Owns the in-process counters. A counter is an `AtomicU64` of algorithm state (and a
//! second word, the sliding window's previous count) in a sharded table (see `table`);
//! a decision is a lookup, a pure `limiter::decide` and a compare-and-swap of the new
//! state, retried on contention. So N concurrent hits on a limit of L admit exactly
//! min(N, L), for every algorithm, on any number of threads.
//!
//! Memory is bounded two ways. Counters whose state is indistinguishable from a new one
//! (their window ended) are reclaimed by [`MemoryStore::sweep`], which the server runs
//! continuously; dropping them changes no decision. And past `max_counters` live
//! counters, inserting a new one first evicts the longest-idle counters of its shard
//! (that does forget their counts, and is counted in `evictions`). A counter's idle clock
//! is the last call that reached it, admitted or rejected, so a client being throttled
//! keeps its counter; what eviction can reset is a counter nobody has asked about for
//! longer than any other in its shard.
//!
//! Removal never loses a hit: entries are removed only under their shard's write lock,
//! when no decision can be in the middle of counting on them.

mod table;

use std::cell::RefCell;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::key::{self, DecodedLimit};
use super::{Batch, Counter};
use crate::clock::Nanos;
use crate::limiter::{self, Algorithm, LimitParams, Outcome, State, Step, sliding_window};
use crate::rules::{EntryView, LimitRegistry};
use table::{Entry, Table};

/// The default cap on live counters: about 75 MB of counters at the cap (about 74 bytes
/// each; up to twice that per counter while the tables are half full).
pub const DEFAULT_MAX_COUNTERS: usize = 1_000_000;

/// What applying hits did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Applied {
    pub outcome: Outcome,
    /// The counter now holds these hits (they would have to be refunded to undo them).
    pub consumed: bool,
    /// Answered from Redis's local over-limit cache, without asking Redis.
    pub cached: bool,
    /// Not decided: the backend failed and its policy (`allow`) waived this limit.
    pub waived: bool,
}

impl Applied {
    /// A decision that consumed hits if it admitted them (or, for fixed windows, always).
    pub fn decided(outcome: Outcome, consumed: bool) -> Applied {
        Applied { outcome, consumed, cached: false, waived: false }
    }
}

#[derive(Debug)]
pub struct MemoryStore {
    counters: Table,
    registry: Arc<LimitRegistry>,
    max_counters: usize,
    evictions: AtomicU64,
    reclaimed: AtomicU64,
}

thread_local! {
    /// Reused key buffer: encoding a key allocates nothing once the buffer has grown.
    static KEY_BUF: RefCell<Vec<u8>> = RefCell::new(Vec::with_capacity(256));
}

/// What one sweep did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SweepReport {
    pub reclaimed: usize,
    pub live: usize,
}

/// The idle clock's unit: whole seconds, saturating (a u32 lasts until 2106).
fn secs_of(now: Nanos) -> u32 {
    u32::try_from(now.as_secs()).unwrap_or(u32::MAX)
}

impl MemoryStore {
    pub fn new(registry: Arc<LimitRegistry>, max_counters: usize) -> Self {
        let max_counters = max_counters.max(1);
        MemoryStore {
            counters: Table::new(max_counters),
            registry,
            max_counters,
            evictions: AtomicU64::new(0),
            reclaimed: AtomicU64::new(0),
        }
    }

    pub fn len(&self) -> usize {
        self.counters.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
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

    /// Runs `f` on a key encoded into the thread's reusable buffer.
    #[inline]
    fn with_key<R>(encode: impl FnOnce(&mut Vec<u8>), f: impl FnOnce(&[u8]) -> R) -> R {
        KEY_BUF.with(|buf| match buf.try_borrow_mut() {
            Ok(mut buf) => {
                encode(&mut buf);
                f(&buf)
            }
            // Only reachable if `encode` itself re-entered the store.
            Err(_) => {
                let mut own = Vec::new();
                encode(&mut own);
                f(&own)
            }
        })
    }

    /// Encodes a key with the thread's reusable buffer and applies `hits` to it.
    #[inline]
    pub fn apply_with_key(
        &self,
        encode: impl FnOnce(&mut Vec<u8>),
        params: &LimitParams,
        hits: u64,
        now: Nanos,
    ) -> Applied {
        Self::with_key(encode, |key| self.apply(key, params, hits, now))
    }

    /// Encodes a key with the thread's reusable buffer and takes back hits it counted.
    pub fn refund_with_key(
        &self,
        encode: impl FnOnce(&mut Vec<u8>),
        params: &LimitParams,
        hits: u64,
        consumed_at: Nanos,
    ) {
        Self::with_key(encode, |key| self.refund(key, params, hits, consumed_at))
    }

    /// Applies a batch, each counter in turn.
    #[inline]
    pub fn apply_all<E: EntryView>(&self, counters: &[Counter<'_, E>], now: Nanos) -> Batch {
        counters
            .iter()
            .map(|counter| {
                let encode = |buf: &mut Vec<u8>| counter.encode(buf);
                if counter.give_back {
                    self.give_back_with_key(encode, counter.params, counter.hits, now)
                } else {
                    self.apply_with_key(encode, counter.params, counter.hits, now)
                }
            })
            .collect()
    }

    /// Takes back a batch's hits.
    pub fn refund_all<E: EntryView>(&self, counters: &[Counter<'_, E>], consumed_at: Nanos) {
        for counter in counters {
            self.refund_with_key(|buf| counter.encode(buf), counter.params, counter.hits, consumed_at);
        }
    }

    /// Encodes a key with the thread's reusable buffer, gives `hits` back to its counter
    /// (`is_negative_hits`) and reports its state after that.
    pub fn give_back_with_key(
        &self,
        encode: impl FnOnce(&mut Vec<u8>),
        params: &LimitParams,
        hits: u64,
        now: Nanos,
    ) -> Applied {
        Self::with_key(encode, |key| {
            self.refund(key, params, hits, now);
            self.apply(key, params, 0, now)
        })
    }

    /// Adds `hits` to the counter under `key` and decides. `hits == 0` checks without
    /// consuming and never creates a counter.
    pub fn apply(&self, key: &[u8], params: &LimitParams, hits: u64, now: Nanos) -> Applied {
        let secs = secs_of(now);
        let hash = self.counters.hash(key);
        let found = self.counters.with_existing(hash, key, |entry| {
            entry.touch(secs);
            commit(entry, now, hits, params)
        });
        if let Some(applied) = found {
            return applied;
        }
        if hits == 0 {
            return Applied::decided(check_fresh(now, params), false);
        }
        let (applied, evicted) =
            self.counters.with_inserted(hash, key, secs, self.max_counters, |entry| commit(entry, now, hits, params));
        if evicted > 0 {
            self.evictions.fetch_add(evicted as u64, Ordering::Relaxed);
        }
        applied
    }

    /// Takes back `hits` that a decision at `consumed_at` counted under `key`.
    pub fn refund(&self, key: &[u8], params: &LimitParams, hits: u64, consumed_at: Nanos) {
        let hash = self.counters.hash(key);
        self.counters.with_existing(hash, key, |entry| {
            loop {
                let word = entry.state.load(Ordering::Acquire);
                let aux = if params.algorithm.uses_aux_word() { entry.aux.load(Ordering::Acquire) } else { 0 };
                let after = limiter::refund(State { word, aux }, consumed_at, hits, params);
                let swapped = if after.word != word {
                    entry.state.compare_exchange_weak(word, after.word, Ordering::AcqRel, Ordering::Acquire).is_ok()
                } else if after.aux != aux {
                    entry.aux.compare_exchange_weak(aux, after.aux, Ordering::AcqRel, Ordering::Acquire).is_ok()
                } else {
                    true
                };
                if swapped {
                    return;
                }
            }
        });
    }

    /// The current decision for `key` without changing it.
    #[cfg(test)]
    pub fn peek(&self, key: &[u8], params: &LimitParams, now: Nanos) -> Outcome {
        let hash = self.counters.hash(key);
        self.counters
            .with_existing(hash, key, |entry| {
                loop {
                    let word = entry.state.load(Ordering::Acquire);
                    let aux = if params.algorithm.uses_aux_word() { entry.aux.load(Ordering::Acquire) } else { 0 };
                    if let Step::Decided { outcome, .. } = limiter::decide(State { word, aux }, now, 0, params) {
                        return outcome;
                    }
                }
            })
            .unwrap_or_else(|| check_fresh(now, params))
    }

    /// Reclaims every expired counter, one shard at a time. Runs off the request path.
    pub fn sweep(&self, now: Nanos) -> SweepReport {
        let params = self.registry.snapshot();
        let reclaimed = self.counters.retain(|entry| {
            let Some(limit) = params_of(entry.key(), &params) else { return true };
            let state = State { word: entry.state.load(Ordering::Acquire), aux: entry.aux.load(Ordering::Acquire) };
            limiter::fresh_at(state, &limit) > now
        });
        self.reclaimed.fetch_add(reclaimed as u64, Ordering::Relaxed);
        SweepReport { reclaimed, live: self.len() }
    }
}

/// The parameters of the limit a stored key counts against.
fn params_of(key: &[u8], registry: &[LimitParams]) -> Option<LimitParams> {
    match key::decode_limit(key)? {
        DecodedLimit::Rule(id) => registry.get(id as usize).copied(),
        DecodedLimit::Override { unit } => Some(LimitParams::fixed_window(0, unit)),
    }
}

/// The answer for a counter that does not exist yet.
fn check_fresh(now: Nanos, params: &LimitParams) -> Outcome {
    loop {
        // A fresh state's two words always agree, so this decides at once.
        if let Step::Decided { outcome, .. } = limiter::decide(State::default(), now, 0, params) {
            return outcome;
        }
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
/// first.
#[inline]
fn commit(entry: &Entry, now: Nanos, hits: u64, params: &LimitParams) -> Applied {
    let uses_aux = params.algorithm.uses_aux_word();
    loop {
        let word = entry.state.load(Ordering::Acquire);
        let aux = if uses_aux { entry.aux.load(Ordering::Acquire) } else { 0 };
        let Step::Decided { outcome, word: next, aux: next_aux } =
            limiter::decide(State { word, aux }, now, hits, params)
        else {
            continue;
        };
        if let Some(next_aux) = next_aux {
            raise_aux(&entry.aux, next_aux);
        }
        // The fixed window counts every hit, as the reference's INCRBY does; the others
        // count only admitted ones.
        let consumed = hits > 0 && (!outcome.over_limit || params.algorithm == Algorithm::FixedWindow);
        if next == word || entry.state.compare_exchange_weak(word, next, Ordering::AcqRel, Ordering::Acquire).is_ok() {
            return Applied::decided(outcome, consumed);
        }
    }
}

#[cfg(test)]
mod tests;
