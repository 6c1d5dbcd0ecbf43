//! Where counters live.
//!
//! Owns applying a request's hits to its counters and returning each limit's outcome.
//! The store is an enum, not a trait object: the memory path never waits and stays
//! inlined, and each backend encodes its own keys from the same structured description
//! of a counter ([`Counter`]), so no joined string ever identifies a counter in memory.
//! A request's counters go to the store as one batch, which Redis turns into one round
//! trip. [`CounterStore`] is what the service's pipeline asks of any store: apply a batch,
//! take one back. What a call gets when the backend fails is the store's to decide
//! ([`FailurePolicy`]): the service sees either outcomes or an error it must report.
//!
//! This module must not match rules or build responses.

pub mod key;
pub mod leased;
pub mod memory;
pub mod redis;

use std::future::Future;
use std::sync::Arc;

use smallvec::SmallVec;

use crate::clock::Nanos;
use crate::limiter::LimitParams;
use crate::rules::{EntryView, Rule};
use key::LimitIdentity;
pub use leased::LeasedStore;
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

/// Which runtime a call runs on, so a backend with connections per runtime (Redis) uses
/// the ones driven there and a call never wakes another thread.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Lane {
    /// The runtime of the HTTP front end and the background tasks.
    #[default]
    Main,
    /// A gRPC worker's runtime, by its index.
    Worker(usize),
}

/// `BACKEND_FAILURE_POLICY`: the answer when the counter backend (Redis) cannot be
/// reached. The memory backend never fails, so this only matters for Redis.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum FailurePolicy {
    /// Answer `UNAVAILABLE` and let Envoy's `failure_mode_deny` decide (the reference's
    /// behaviour); the service reports not serving meanwhile.
    #[default]
    Error,
    /// Answer OK: the limits counted where Redis failed are waived while it is down.
    Allow,
    /// Count in this process's memory until the backend is back: limits hold per
    /// replica instead of across replicas.
    Local,
}

/// What the service's pipeline asks of a store. The memory store's futures are ready
/// at once; Redis's wait for one round trip.
pub trait CounterStore {
    /// Applies every counter's hits and decides each, in order. `Err` only when the
    /// backend failed and its failure policy says to report it.
    fn apply_batch<E: EntryView>(
        &self,
        counters: &[Counter<'_, E>],
        now: Nanos,
        lane: Lane,
    ) -> impl Future<Output = Result<Batch, StoreError>>;

    /// Takes back the hits that decisions at `consumed_at` counted (a rejected request
    /// under `CONSUME=all_or_nothing`).
    fn refund_batch<E: EntryView>(
        &self,
        counters: &[Counter<'_, E>],
        consumed_at: Nanos,
        lane: Lane,
    ) -> impl Future<Output = Result<(), StoreError>>;
}

impl CounterStore for MemoryStore {
    fn apply_batch<E: EntryView>(
        &self,
        counters: &[Counter<'_, E>],
        now: Nanos,
        _lane: Lane,
    ) -> impl Future<Output = Result<Batch, StoreError>> {
        std::future::ready(Ok(self.apply_all(counters, now)))
    }

    fn refund_batch<E: EntryView>(
        &self,
        counters: &[Counter<'_, E>],
        consumed_at: Nanos,
        _lane: Lane,
    ) -> impl Future<Output = Result<(), StoreError>> {
        self.refund_all(counters, consumed_at);
        std::future::ready(Ok(()))
    }
}

/// The store a service counts in.
#[derive(Clone, Debug)]
pub enum Store {
    Memory(Arc<MemoryStore>),
    Redis(Arc<RedisStore>),
    /// Redis with leases in front of its windows and token buckets (`REDIS_LEASING=true`).
    Leased(Arc<LeasedStore>),
}

impl Store {
    /// The in-process counters behind this store, to sweep: the memory store itself, or
    /// Redis's fallback under `BACKEND_FAILURE_POLICY=local`.
    pub fn memory(&self) -> Option<&Arc<MemoryStore>> {
        match self {
            Store::Memory(m) => Some(m),
            Store::Redis(r) => r.fallback(),
            Store::Leased(l) => l.redis().fallback(),
        }
    }
}
