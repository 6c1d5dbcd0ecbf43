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
fn past_the_cap_the_longest_idle_counters_go_first() {
    let params = LimitParams::fixed_window(100, Unit::Day);
    // 32 counters fit one shard, so eviction order is exact here.
    let (store, id) = store_with(params, 32);
    for i in 0..32u64 {
        store.apply(&key_for(id, &i.to_string()), &params, 1, Nanos::from_secs(1000 + i));
    }
    assert_eq!((store.len(), store.evictions()), (32, 0));
    // Touch the oldest one again, then go over the cap: each new key evicts the idlest
    // sixteenth of the shard (two counters).
    store.apply(&key_for(id, "0"), &params, 1, Nanos::from_secs(1100));
    for i in 32..36u64 {
        store.apply(&key_for(id, &i.to_string()), &params, 1, Nanos::from_secs(1200 + i));
    }
    assert!(store.len() <= 32, "{}", store.len());
    let t = Nanos::from_secs(2000);
    assert_eq!(store.peek(&key_for(id, "0"), &params, t).remaining, 98, "recently used survives");
    assert_eq!(store.peek(&key_for(id, "1"), &params, t).remaining, 100, "idlest was evicted");
    assert_eq!(store.peek(&key_for(id, "35"), &params, t).remaining, 99);
    assert_eq!(store.evictions() as usize, 36 - store.len());
}

#[test]
fn a_rejected_client_is_active_not_idle() {
    let params = LimitParams::new(Algorithm::TokenBucket, 1, Unit::Hour, 1, None);
    let (store, id) = store_with(params, 16);
    let throttled = key_for(id, "throttled");
    assert!(!store.apply(&throttled, &params, 1, Nanos::from_secs(1000)).outcome.over_limit);
    for i in 0..200u64 {
        let now = Nanos::from_secs(1001 + i);
        // The throttled client keeps calling (and keeps being rejected) while others
        // come and go past the cap.
        assert!(store.apply(&throttled, &params, 1, now).outcome.over_limit, "admitted again at {i}");
        store.apply(&key_for(id, &format!("other-{i}")), &params, 1, now);
    }
    assert!(store.evictions() > 100);
}

#[test]
fn a_flood_of_new_keys_stays_bounded_without_a_sweeper() {
    let params = LimitParams::fixed_window(100, Unit::Day);
    let (store, id) = store_with(params, 64);
    for i in 0..10_000u64 {
        store.apply(&key_for(id, &i.to_string()), &params, 1, Nanos::from_secs(1000 + i));
        assert!(store.len() <= 64, "{} live at {i}", store.len());
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
fn many_shards_hold_the_cap_and_sweeping_frees_them() {
    let params = LimitParams::fixed_window(5, Unit::Second);
    let (store, id) = store_with(params, 20_000);
    for i in 0..60_000u64 {
        store.apply(&key_for(id, &i.to_string()), &params, 1, Nanos::from_secs(10));
    }
    // At most one entry over the cap per shard.
    assert!(store.len() <= 20_000 + 8, "{}", store.len());
    assert!(store.evictions() >= 40_000);
    assert_eq!(store.sweep(Nanos::from_secs(11)).live, 0);
    assert!(store.is_empty());
}
