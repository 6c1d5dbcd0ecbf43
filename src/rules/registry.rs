//! Stable identities for limits, so counters survive reloads of unchanged rules.
//!
//! Owns the mapping from a limit's identity (domain, path of the rule, position of the
//! limit in the rule, and its parameters) to a small number that counter keys carry
//! instead of the identity itself. Two loads of the same rule get the same number, so
//! the memory store finds the same counters after a reload; a changed rule gets a new
//! number and starts counting afresh (docs/architecture.md, "The path of a reload"). The store also asks it for a number's
//! parameters when it sweeps expired counters.
//!
//! Only config loads and the sweeper call in here, never a request, so a mutex is fine.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::limiter::LimitParams;

#[derive(Debug, Default)]
pub struct LimitRegistry {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    ids: HashMap<Vec<u8>, u32>,
    params: Vec<LimitParams>,
}

impl LimitRegistry {
    pub fn new() -> Self {
        Self::default()
    }

    /// The number for a limit identity, assigning the next one on first sight.
    /// `identity` must already encode the parameters (two limits with one identity and
    /// different parameters would share counters).
    pub fn intern(&self, identity: &[u8], params: LimitParams) -> u32 {
        let mut inner = self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(&id) = inner.ids.get(identity) {
            return id;
        }
        let id = u32::try_from(inner.params.len()).expect("fewer than 2^32 distinct limits in one process");
        inner.params.push(params);
        inner.ids.insert(identity.to_vec(), id);
        id
    }

    /// Parameters of every number assigned so far, indexed by number.
    pub fn snapshot(&self) -> Vec<LimitParams> {
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).params.clone()
    }
}
