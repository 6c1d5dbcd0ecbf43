//! Key churn against the memory store: millions of distinct keys through small and large
//! caps, with the sweeper running meanwhile. Every call must return and resident memory
//! must stay bounded by the cap, not by the number of keys ever seen.
//!
//! This is the regression test for a hang: the store's previous map (papaya, blocking
//! resizes) could livelock when one thread inserted while another iterated and removed,
//! allocating a fresh table on every turn until memory ran out. A watchdog turns a hang
//! into a failure instead of a stuck test.

#[path = "common/rss.rs"]
#[allow(dead_code)]
mod rss;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sluicegate::clock::Nanos;
use sluicegate::limiter::{Algorithm, LimitParams, Unit};
use sluicegate::rules::LimitRegistry;
use sluicegate::store::MemoryStore;
use sluicegate::store::key::{LimitIdentity, encode};

use rss::resident_bytes;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// What one churn run saw.
struct Churned {
    /// Most live counters seen.
    peak: usize,
    /// Resident growth from the start until the store had seen twice its cap in keys, and
    /// at least a quarter of the run (the allocator's own pools settle by then).
    warm_up: usize,
    /// Resident growth over the rest of the run (the store full, keys still new).
    after_warm_up: usize,
}

/// Pushes `keys` distinct keys through a store capped at `cap` from two threads while a
/// third sweeps without pause.
/// Odd keys count against a one-second limit (their counters expire, so sweeps remove
/// while the writers insert), even keys against an hourly one (they fill the cap, so
/// inserts evict).
fn churn(cap: usize, keys: u64, algorithm: Algorithm) -> Churned {
    let short = LimitParams::new(algorithm, 100, Unit::Second, 1, None);
    let long = LimitParams::new(algorithm, 100, Unit::Hour, 1, None);
    let registry = Arc::new(LimitRegistry::new());
    let limits = [(registry.intern(b"short", short), short), (registry.intern(b"long", long), long)];
    let store = Arc::new(MemoryStore::new(registry, cap));
    let done = Arc::new(AtomicBool::new(false));
    let progress = Arc::new(AtomicU64::new(0));
    let peak = Arc::new(AtomicU64::new(0));
    // The fake clock, in seconds: a second passes every 10,000 keys.
    let clock = Arc::new(AtomicU64::new(1_000));
    let before = resident_bytes();

    let sweeper = {
        let (store, done, clock) = (store.clone(), done.clone(), clock.clone());
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                store.sweep(Nanos::from_secs(clock.load(Ordering::Relaxed)));
                std::thread::yield_now();
            }
        })
    };
    let writers: Vec<_> = (0..2u64)
        .map(|writer| {
            let (store, progress, peak, clock) = (store.clone(), progress.clone(), peak.clone(), clock.clone());
            std::thread::spawn(move || {
                let mut key = Vec::with_capacity(64);
                for i in (writer..keys).step_by(2) {
                    let value = format!("client-{i}");
                    let (id, params) = limits[(i / 2 % 2) as usize];
                    encode(&mut key, LimitIdentity::Rule(id), &[("user", value.as_str())], |_, e| e.1);
                    clock.fetch_max(1_000 + i / 10_000, Ordering::Relaxed);
                    let now = Nanos::from_secs(clock.load(Ordering::Relaxed));
                    let applied = store.apply(&key, &params, 1, now);
                    assert!(!applied.outcome.over_limit, "a fresh key is admitted");
                    progress.fetch_add(1, Ordering::Relaxed);
                    if i % 1024 == 0 {
                        peak.fetch_max(store.len() as u64, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();

    // Watchdog: progress must never stall for long. Meanwhile, resident memory.
    let mut last = (0, Instant::now());
    let mut warm: Option<usize> = None;
    let mut highest = before;
    while !writers.iter().all(|w| w.is_finished()) {
        std::thread::sleep(Duration::from_millis(50));
        let now = progress.load(Ordering::Relaxed);
        if now != last.0 {
            last = (now, Instant::now());
        }
        assert!(last.1.elapsed() < Duration::from_secs(20), "no call returned for 20 s at {now} keys (cap {cap})");
        let resident = resident_bytes();
        highest = highest.max(resident);
        if warm.is_none() && now >= (2 * cap as u64).max(keys / 4) {
            warm = Some(highest);
        }
    }
    for w in writers {
        w.join().unwrap();
    }
    done.store(true, Ordering::Relaxed);
    sweeper.join().unwrap();
    assert_eq!(progress.load(Ordering::Relaxed), keys);
    let highest = highest.max(resident_bytes());
    let warm = warm.unwrap_or(highest);
    Churned {
        peak: peak.load(Ordering::Relaxed) as usize,
        warm_up: warm.saturating_sub(before),
        after_warm_up: highest.saturating_sub(warm),
    }
}

#[test]
fn millions_of_keys_through_every_cap_answer_and_stay_bounded() {
    let runs = [
        (10_000, 1_000_000, Algorithm::FixedWindow),
        (10_000, 1_000_000, Algorithm::SlidingWindow),
        (100_000, 1_000_000, Algorithm::FixedWindow),
        (1_000_000, 2_500_000, Algorithm::FixedWindow),
    ];
    for (cap, keys, algorithm) in runs {
        {
            let started = Instant::now();
            let run = churn(cap, keys, algorithm);
            println!(
                "cap {cap}, {keys} keys, {algorithm:?}: peak {} live; resident +{} MiB warming up, +{} MiB after; {:.1?}",
                run.peak,
                run.warm_up >> 20,
                run.after_warm_up >> 20,
                started.elapsed()
            );
            // The cap holds (plus at most one entry per shard racing it).
            assert!(run.peak <= cap + cap / 3584 + 1, "peak {} over cap {cap}", run.peak);
            // Memory follows the cap, not the number of keys seen: filling the store
            // costs about what its counters do (tables of 74 bytes a counter when full,
            // plus what the allocator keeps of the smaller tables they grew from, per
            // thread), and once full it stays flat however many new keys arrive.
            let full = cap * 400 + (32 << 20);
            assert!(run.warm_up <= full, "resident grew {} bytes filling a cap of {cap}", run.warm_up);
            // A leak of even 32 bytes a key over the three quarters of the run left is
            // 24 MB for a million keys; allocator noise (segments committed late, per
            // thread caches) stays under 16 MiB.
            let flat = run.warm_up / 10 + (16 << 20);
            assert!(run.after_warm_up <= flat, "resident grew {} bytes after warm-up (cap {cap})", run.after_warm_up);
        }
    }
}
