//! Where counters live.
//!
//! Owns applying a request's hits to its counters and returning each limit's outcome.
//! The store is an enum, not a trait object: the memory path stays synchronous and
//! inlined, and each backend encodes its own keys from the same structured description
//! of a counter ([`Counter`]), so no joined string ever identifies a counter in memory.
//!
//! This module must not match rules or build responses.

pub mod key;
pub mod memory;

use std::sync::Arc;

use crate::clock::Nanos;
use crate::limiter::{LimitParams, Outcome};
use crate::rules::{EntryView, Rule};
use key::LimitIdentity;
pub use memory::{Applied, MemoryStore};

/// One limit of one request descriptor.
#[derive(Clone, Copy, Debug)]
pub struct Counter<'a, E> {
    pub domain: &'a str,
    pub entries: &'a [E],
    /// The matched rule (for `share_threshold` values); `None` for a request override.
    pub rule: Option<&'a Rule>,
    pub identity: LimitIdentity<'a>,
    pub params: &'a LimitParams,
    pub hits: u64,
}

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
}

impl Store {
    /// Applies one counter's hits and decides.
    #[inline]
    pub fn apply<E: EntryView>(&self, counter: &Counter<'_, E>, now: Nanos) -> Applied {
        match self {
            Store::Memory(memory) => {
                memory.apply_with_key(|buf| counter.encode(buf), counter.params, counter.hits, now)
            }
        }
    }

    /// Takes back the hits a decision at `consumed_at` counted (a rejected request
    /// under `CONSUME=all_or_nothing`).
    pub fn refund<E: EntryView>(&self, counter: &Counter<'_, E>, consumed_at: Nanos) {
        match self {
            Store::Memory(memory) => {
                memory.refund_with_key(|buf| counter.encode(buf), counter.params, counter.hits, consumed_at)
            }
        }
    }

    /// The current decision for a counter, without changing it.
    pub fn peek<E: EntryView>(&self, counter: &Counter<'_, E>, now: Nanos) -> Outcome {
        match self {
            Store::Memory(memory) => {
                let mut buf = Vec::new();
                counter.encode(&mut buf);
                memory.peek(&buf, counter.params, now)
            }
        }
    }

    pub fn memory(&self) -> Option<&Arc<MemoryStore>> {
        match self {
            Store::Memory(m) => Some(m),
        }
    }
}
