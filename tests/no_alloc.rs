//! The decision path allocates nothing: matching a descriptor of up to four entries and
//! counting it on an existing counter, with a counting global allocator watching.
//! (Building the protobuf response does allocate: its `Vec` of statuses is the caller's.)

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::Arc;

use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::Entry;
use sluicegate::clock::Nanos;
use sluicegate::rules::LimitRegistry;
use sluicegate::snapshot::load_texts;
use sluicegate::store::key::LimitIdentity;
use sluicegate::store::{Counter, MemoryStore};

struct Counting;

thread_local! {
    static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations_during(f: impl FnOnce()) -> usize {
    let before = ALLOCATIONS.with(Cell::get);
    f();
    ALLOCATIONS.with(Cell::get) - before
}

const RULES: &str = r#"
domain: d
descriptors:
  - key: remote_address
    rate_limit: {unit: minute, requests_per_unit: 1000000}
  - key: tenant
    value: t-*
    descriptors:
      - key: path
        descriptors:
          - key: method
            value: GET
            descriptors:
              - key: user
                rate_limit: {unit: hour, requests_per_unit: 1000000}
"#;

#[test]
fn matching_and_counting_existing_counters_allocates_nothing() {
    let registry = Arc::new(LimitRegistry::new());
    let rules = load_texts(&[("d.yaml", RULES)], false, &registry).unwrap().rules;
    let store = MemoryStore::new(registry, 1000);
    let domain = rules.domain("d").unwrap();
    let entry = |k: &str, v: &str| Entry { key: k.into(), value: v.into() };
    let descriptors = [
        vec![entry("remote_address", "10.0.0.1")],
        vec![
            entry("tenant", "t-42"),
            entry("path", "/api/v1/orders/with/a/rather/long/path/that/does/not/fit/inline"),
            entry("method", "GET"),
            entry("user", "alice"),
        ],
    ];
    let decide = |entries: &[Entry]| {
        let rule = domain.find(entries).expect("a rule matches");
        let limit = &rule.limits[0];
        let counter = Counter {
            domain: "d",
            entries,
            rule: Some(rule),
            identity: LimitIdentity::Rule(limit.counter_id),
            params: &limit.params,
            hits: 1,
            give_back: false,
        };
        let batch = store.apply_all(std::slice::from_ref(&counter), Nanos::from_secs(7200));
        assert!(!batch[0].outcome.over_limit);
    };
    // The allocator really is watching.
    assert_eq!(allocations_during(|| drop(std::hint::black_box(vec![1u8]))), 1);
    // The first decision per key creates its counter (and warms thread-locals).
    for entries in &descriptors {
        decide(entries);
    }
    for entries in &descriptors {
        assert_eq!(allocations_during(|| decide(entries)), 0, "{} entries", entries.len());
    }
}
