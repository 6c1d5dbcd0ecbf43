//! Memory per live counter: at most 192 bytes resident per counter at 1,000,000 counters
//! with keys of about 20 bytes (a key name and a value like `user-000123456`). A full
//! table costs 64 bytes an entry plus a control byte, at most 7/8 full: about 74 bytes a
//! counter; the rest is what the allocator keeps of the smaller tables each shard grew
//! through (mimalloc holds on to them for reuse; glibc's malloc measures about 120 bytes).
//!
//! Resident memory is read from `/proc/self/statm` around the inserts; this test file
//! holds a single test so nothing else allocates in the process meanwhile. It uses the
//! binary's allocator (mimalloc), whose 64-byte size class the map entries are sized for.

#[path = "common/rss.rs"]
#[allow(dead_code)]
mod rss;

use std::sync::Arc;

use sluicegate::clock::Nanos;
use sluicegate::limiter::{LimitParams, Unit};
use sluicegate::rules::LimitRegistry;
use sluicegate::store::MemoryStore;
use sluicegate::store::key::{LimitIdentity, encode};

use rss::resident_bytes;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[test]
fn a_million_counters_cost_at_most_192_bytes_each() {
    const COUNTERS: usize = 1_000_000;
    let params = LimitParams::fixed_window(100, Unit::Hour);
    let registry = Arc::new(LimitRegistry::new());
    let id = registry.intern(b"footprint", params);
    let store = MemoryStore::new(registry, 2 * COUNTERS);
    let mut key = Vec::with_capacity(64);
    // Warm the allocator and the store's thread-locals before measuring.
    encode(&mut key, LimitIdentity::Rule(id), &[("user", "warm-up")], |_, e| e.1);
    store.apply(&key, &params, 1, Nanos::from_secs(3600));
    let before = resident_bytes();
    for i in 0..COUNTERS {
        let value = format!("user-{i:09}");
        encode(&mut key, LimitIdentity::Rule(id), &[("user", value.as_str())], |_, e| e.1);
        store.apply(&key, &params, 1, Nanos::from_secs(3600));
    }
    let after = resident_bytes();
    assert_eq!(store.len(), COUNTERS + 1);
    let per_counter = (after - before) as f64 / COUNTERS as f64;
    println!("{per_counter:.1} bytes resident per counter at {COUNTERS} counters");
    assert!(per_counter <= 192.0, "{per_counter:.1} bytes per counter");
}
