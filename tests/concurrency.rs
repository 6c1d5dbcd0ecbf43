//! Exactness under concurrency: however many threads and in-flight calls hit one counter,
//! a limit of L admits exactly L (and with `hits_addend` h, exactly floor(L / h) calls).

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use common::{connect, request, start};
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::Code;
use sluicegate::clock::Nanos;
use sluicegate::limiter::{LimitParams, Unit};
use sluicegate::rules::LimitRegistry;
use sluicegate::store::MemoryStore;
use sluicegate::store::key::{LimitIdentity, encode};

fn hammer_store(threads: usize, per_thread: usize, limit: u32, hits: u64) -> u64 {
    let params = LimitParams::fixed_window(limit, Unit::Hour);
    let registry = Arc::new(LimitRegistry::new());
    let id = registry.intern(b"hammer", params);
    let store = Arc::new(MemoryStore::new(registry, 1000));
    let mut key = Vec::new();
    encode(&mut key, LimitIdentity::Rule(id), &[("user", "alice")], |_, e| e.1);
    let key = Arc::new(key);
    let admitted = Arc::new(AtomicU64::new(0));
    let barrier = Arc::new(std::sync::Barrier::new(threads));
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let (store, key, admitted, barrier) = (store.clone(), key.clone(), admitted.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                for _ in 0..per_thread {
                    if !store.apply(&key, &params, hits, Nanos::from_secs(7200)).outcome.over_limit {
                        admitted.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    admitted.load(Ordering::Relaxed)
}

#[test]
fn threads_hammering_one_counter_admit_exactly_the_limit() {
    for threads in [1, 2, 8, 16] {
        assert_eq!(hammer_store(threads, 32_000 / threads, 10_000, 1), 10_000, "{threads} threads");
    }
}

#[test]
fn hits_addend_above_one_admits_exactly_floor_of_limit_over_hits() {
    for threads in [2, 8] {
        assert_eq!(hammer_store(threads, 2_000, 1_000, 3), 333, "{threads} threads");
    }
}

const RULES: &str =
    "domain: hammer\ndescriptors:\n  - key: user\n    rate_limit: {unit: hour, requests_per_unit: 1000}\n";

async fn hammer_grpc(hits_addend: u32) -> u64 {
    let server = start(&[("hammer.yaml", RULES)], &[("GRPC_WORKERS", "2")], 7200).await;
    let admitted = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    // 4 connections, 16 calls in flight on each, 3,000 calls in all.
    for _ in 0..4 {
        let client = connect(server.grpc).await;
        for _ in 0..16 {
            let (mut client, admitted) = (client.clone(), admitted.clone());
            tasks.push(tokio::spawn(async move {
                for _ in 0..47 {
                    let mut req = request("hammer", &[&[("user", "alice")]]);
                    req.hits_addend = hits_addend;
                    let r = client.should_rate_limit(req).await.unwrap().into_inner();
                    if r.overall_code == Code::Ok as i32 {
                        admitted.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }));
        }
    }
    for t in tasks {
        t.await.unwrap();
    }
    server.stop().await;
    admitted.load(Ordering::Relaxed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn in_flight_grpc_calls_on_several_connections_admit_exactly_the_limit() {
    assert_eq!(hammer_grpc(1).await, 1000);
    assert_eq!(hammer_grpc(3).await, 333);
}
