//! Where counters live.
//!
//! Owns applying a request's hits to its counters and returning each limit's outcome.
//! The store is an enum, not a trait object: the memory path never waits and stays
//! inlined, and each backend encodes its own keys from the same structured description
//! of a counter ([`Counter`]), so no joined string ever identifies a counter in memory.
//! A request's counters go to the store as one batch, which Redis turns into one round
//! trip.
//!
//! This module must not match rules or build responses.

pub mod key;
pub mod memory;
pub mod redis;

use std::sync::Arc;

use smallvec::SmallVec;

use crate::clock::Nanos;
use crate::limiter::{LimitParams, Outcome};
use crate::rules::{EntryView, Rule};
use key::LimitIdentity;
pub use memory::{Applied, MemoryStore};
pub use redis::RedisStore;

/// The outcomes of one batch, in the batch's order.
pub type Batch = SmallVec<[Applied; 8]>;

/// Why a backend could not apply a batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreError {
    /// What failed, naming the backend (never credentials).
    pub message: String,
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for StoreError {}

/// One limit of one request descriptor.
#[derive(Debug)]
pub struct Counter<'a, E> {
    pub domain: &'a str,
    pub entries: &'a [E],
    /// The matched rule (for `share_threshold` values); `None` for a request override.
    pub rule: Option<&'a Rule>,
    pub identity: LimitIdentity<'a>,
    pub params: &'a LimitParams,
    pub hits: u64,
    /// `is_negative_hits`: the hits are given back to the counter (never below empty),
    /// and the outcome is the counter's state after that, as a check that consumes
    /// nothing.
    pub give_back: bool,
}

// By hand: derived impls would require `E: Copy`, but only references to `E` are held.
impl<E> Clone for Counter<'_, E> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<E> Copy for Counter<'_, E> {}

impl<'a, E: EntryView> Counter<'a, E> {
    /// The memory store's key for this counter.
    pub fn encode(&self, buf: &mut Vec<u8>) {
        key::encode(buf, self.identity, self.entries, |depth, e| self.value_at(depth, e));
    }

    /// The value this counter is kept under at `depth`: the rule's pattern on a
    /// `share_threshold` level, else the request's value.
    pub fn value_at(&self, depth: usize, entry: &'a E) -> &'a str {
        match self.rule {
            Some(rule) => rule.counter_value(depth, entry.value()),
            None => entry.value(),
        }
    }
}

#[derive(Clone, Debug)]
pub enum Store {
    Memory(Arc<MemoryStore>),
    Redis(Arc<RedisStore>),
}

impl Store {
    /// Applies every counter's hits and decides each, in order. The memory store never
    /// fails and never waits; Redis sends the whole batch in one round trip.
    #[inline]
    pub async fn apply_batch<E: EntryView>(
        &self,
        counters: &[Counter<'_, E>],
        now: Nanos,
    ) -> Result<Batch, StoreError> {
        match self {
            Store::Memory(memory) => Ok(apply_in_memory(memory, counters, now)),
            // Boxed: the Redis future is large, and inline it would make every caller's
            // future (and so every memory-backend call) that large too.
            Store::Redis(redis) => Box::pin(redis.apply_batch(counters, now)).await,
        }
    }

    /// Takes back the hits that decisions at `consumed_at` counted (a rejected request
    /// under `CONSUME=all_or_nothing`).
    pub async fn refund_batch<E: EntryView>(
        &self,
        counters: &[Counter<'_, E>],
        consumed_at: Nanos,
    ) -> Result<(), StoreError> {
        match self {
            Store::Memory(memory) => {
                refund_in_memory(memory, counters, consumed_at);
                Ok(())
            }
            Store::Redis(redis) => Box::pin(redis.refund_batch(counters, consumed_at)).await,
        }
    }

    /// The in-process counters behind this store: the memory store itself, or Redis's
    /// fallback under `BACKEND_FAILURE_POLICY=local`.
    pub fn memory(&self) -> Option<&Arc<MemoryStore>> {
        match self {
            Store::Memory(m) => Some(m),
            Store::Redis(r) => r.fallback(),
        }
    }

    /// The current decision for a counter, without changing it (memory only; `None`
    /// for Redis, where a look costs a round trip).
    pub fn peek<E: EntryView>(&self, counter: &Counter<'_, E>, now: Nanos) -> Option<Outcome> {
        match self {
            Store::Memory(memory) => {
                let mut buf = Vec::new();
                counter.encode(&mut buf);
                Some(memory.peek(&buf, counter.params, now))
            }
            Store::Redis(_) => None,
        }
    }
}

/// Applies a batch to in-process counters.
#[inline]
pub fn apply_in_memory<E: EntryView>(memory: &MemoryStore, counters: &[Counter<'_, E>], now: Nanos) -> Batch {
    counters
        .iter()
        .map(|counter| {
            let encode = |buf: &mut Vec<u8>| counter.encode(buf);
            if counter.give_back {
                memory.give_back_with_key(encode, counter.params, counter.hits, now)
            } else {
                memory.apply_with_key(encode, counter.params, counter.hits, now)
            }
        })
        .collect()
}

/// Takes back a batch's hits from in-process counters.
pub fn refund_in_memory<E: EntryView>(memory: &MemoryStore, counters: &[Counter<'_, E>], consumed_at: Nanos) {
    for counter in counters {
        memory.refund_with_key(|buf| counter.encode(buf), counter.params, counter.hits, consumed_at);
    }
}
