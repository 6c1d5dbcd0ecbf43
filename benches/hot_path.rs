//! Criterion benches for the request hot path: the matcher, the memory store, a whole
//! `ShouldRateLimit` decision without the network, and the gRPC handler around it with
//! tracing off and on (what `TRACING_ENABLED` costs a call). Time comes from a fake clock.
//!
//! ```text
//! cargo bench --bench hot_path
//! ```

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::Entry;
use envoy_types::pb::envoy::service::ratelimit::v3::RateLimitRequest;
use sluicegate::clock::{Clock, FakeClock, Nanos};
use sluicegate::limiter::{Algorithm, LimitParams, Unit};
use sluicegate::rules::{LimitRegistry, RuleSet};
use sluicegate::service::{Active, RateLimiter, ServiceOptions};
use sluicegate::snapshot::load_texts;
use sluicegate::stats::{Stats, StatsOptions};
use sluicegate::store::key::{LimitIdentity, encode};
use sluicegate::store::{MemoryStore, Store};

/// The binary's allocator, so the numbers match what the service does.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const RULES: &str = r#"
domain: bench
descriptors:
  - key: remote_address
    rate_limit: {unit: minute, requests_per_unit: 1000000000}
  - key: remote_address
    value: 10.0.0.66
    rate_limit: {unit: second, requests_per_unit: 0}
  - key: api_key
    value: internal-*
    rate_limit: {unlimited: true}
  - key: api_key
    value: partner-*-v2
    rate_limit: {unit: hour, requests_per_unit: 1000000000}
  - key: api_key
    rate_limit: {unit: hour, requests_per_unit: 1000000000}
  - key: path
    value: /report
    descriptors:
      - key: method
        value: POST
        descriptors:
          - key: tenant
            descriptors:
              - key: plan
                rate_limit: {unit: minute, requests_per_unit: 1000000000}
"#;

fn rules(registry: &LimitRegistry) -> RuleSet {
    load_texts(&[("bench.yaml", RULES)], false, registry).unwrap().rules
}

fn entries(pairs: &[(&str, &str)]) -> Vec<Entry> {
    pairs.iter().map(|(k, v)| Entry { key: k.to_string(), value: v.to_string() }).collect()
}

fn bench_matcher(c: &mut Criterion) {
    let set = rules(&LimitRegistry::new());
    let domain = set.domain("bench").unwrap();
    let mut group = c.benchmark_group("matcher");
    group.throughput(Throughput::Elements(1));
    for (name, pairs) in [
        ("key_only", vec![("remote_address", "10.1.2.3")]),
        ("exact", vec![("remote_address", "10.0.0.66")]),
        ("pattern", vec![("api_key", "partner-acme-v2")]),
        ("four_levels", vec![("path", "/report"), ("method", "POST"), ("tenant", "t-42"), ("plan", "gold")]),
        ("miss", vec![("unknown", "x")]),
    ] {
        let e = entries(&pairs);
        group.bench_function(name, |b| b.iter(|| black_box(domain.find(black_box(&e)))));
    }
    group.finish();
}

fn store_with(distinct: u64) -> (Arc<MemoryStore>, LimitParams, u32, Vec<Vec<u8>>) {
    store_for(LimitParams::fixed_window(u32::MAX, Unit::Hour), distinct)
}

fn store_for(params: LimitParams, distinct: u64) -> (Arc<MemoryStore>, LimitParams, u32, Vec<Vec<u8>>) {
    let registry = Arc::new(LimitRegistry::new());
    let id = registry.intern(b"bench", params);
    let store = Arc::new(MemoryStore::new(registry, 2_000_000));
    let keys: Vec<Vec<u8>> = (0..distinct)
        .map(|i| {
            let mut k = Vec::new();
            let value = format!("10.{}.{}.{}", i >> 16, (i >> 8) & 255, i & 255);
            encode(&mut k, LimitIdentity::Rule(id), &[("remote_address", value.as_str())], |_, e| e.1);
            k
        })
        .collect();
    for k in &keys {
        store.apply(k, &params, 1, Nanos::from_secs(3600));
    }
    (store, params, id, keys)
}

fn bench_store(c: &mut Criterion) {
    let mut group = c.benchmark_group("memory_store");
    group.throughput(Throughput::Elements(1));
    for distinct in [1u64, 1_000_000] {
        let (store, params, _, keys) = store_with(distinct);
        let mut i = 0usize;
        group.bench_function(format!("apply_{distinct}_keys"), |b| {
            b.iter(|| {
                i = (i + 7919) % keys.len();
                black_box(store.apply(&keys[i], &params, 1, Nanos::from_secs(3600)))
            })
        });
    }
    // Two threads on one counter: the CAS retry cost under contention.
    for threads in [1usize, 2] {
        let (store, params, _, keys) = store_with(1);
        let key = Arc::new(keys[0].clone());
        group.bench_function(format!("apply_one_key_{threads}_threads"), |b| {
            b.iter_custom(|iters| {
                let start = Instant::now();
                std::thread::scope(|s| {
                    for _ in 0..threads {
                        let (store, key) = (store.clone(), key.clone());
                        s.spawn(move || {
                            for _ in 0..iters {
                                black_box(store.apply(&key, &params, 1, Nanos::from_secs(3600)));
                            }
                        });
                    }
                });
                start.elapsed() / threads as u32
            })
        });
    }
    group.finish();
}

/// Every algorithm on the same store path, limits never reached: the cost of the
/// decision itself, against the fixed window's.
fn bench_algorithms(c: &mut Criterion) {
    let mut group = c.benchmark_group("algorithm");
    group.throughput(Throughput::Elements(1));
    for algorithm in Algorithm::ALL {
        for distinct in [1u64, 100_000] {
            let params = LimitParams::new(algorithm, u32::MAX, Unit::Hour, 1, None);
            let (store, params, _, keys) = store_for(params, distinct);
            let mut i = 0usize;
            group.bench_function(format!("{}_{distinct}_keys", algorithm.name()), |b| {
                b.iter(|| {
                    i = (i + 7919) % keys.len();
                    black_box(store.apply(&keys[i], &params, 1, Nanos::from_secs(3600)))
                })
            });
        }
    }
    group.finish();
}

fn limiter(distinct: u64) -> (RateLimiter, Vec<RateLimitRequest>, Vec<RateLimitRequest>) {
    limiter_with(distinct, false)
}

fn limiter_with(distinct: u64, stats_disabled: bool) -> (RateLimiter, Vec<RateLimitRequest>, Vec<RateLimitRequest>) {
    let registry = Arc::new(LimitRegistry::new());
    let snapshot = load_texts(&[("bench.yaml", RULES)], false, &registry).unwrap();
    let store = Store::Memory(Arc::new(MemoryStore::new(registry, 4_000_000)));
    let clock: Clock = FakeClock::at_secs(3600).into();
    let stats = Stats::new(StatsOptions { disabled: stats_disabled, near_limit_ratio: 0.8, ..StatsOptions::default() });
    let limiter = RateLimiter::new(Active::shared(snapshot), store, clock, ServiceOptions::default()).with_stats(stats);
    let descriptor = |pairs: &[(&str, &str)]| RateLimitDescriptor { entries: entries(pairs), ..Default::default() };
    let request = |descriptors| RateLimitRequest { domain: "bench".into(), descriptors, hits_addend: 0 };
    let one: Vec<RateLimitRequest> = (0..distinct)
        .map(|i| request(vec![descriptor(&[("remote_address", &format!("10.{}.{}", i >> 8, i & 255))])]))
        .collect();
    let four: Vec<RateLimitRequest> = (0..distinct.min(100_000))
        .map(|i| {
            let v = format!("{i}");
            request(vec![
                descriptor(&[("remote_address", &v)]),
                descriptor(&[("api_key", &format!("partner-{v}-v2"))]),
                descriptor(&[("path", "/report"), ("method", "POST"), ("tenant", &v), ("plan", "gold")]),
                descriptor(&[("api_key", "internal-tools")]),
            ])
        })
        .collect();
    for r in one.iter().chain(&four) {
        limiter.immediate().unwrap().decide(r).unwrap();
    }
    (limiter, one, four)
}

fn bench_decide(c: &mut Criterion) {
    let mut group = c.benchmark_group("decide");
    group.throughput(Throughput::Elements(1));
    // One descriptor over 1 and 1,000,000 distinct values; four descriptors (one request
    // object each, so fewer of them to keep the benchmark's own memory in bounds) over
    // 1 and 100,000.
    for distinct in [1u64, 1_000_000] {
        let (limiter, one, four) = limiter(distinct);
        let mut i = 0usize;
        group.bench_function(format!("one_descriptor_{distinct}_keys"), |b| {
            b.iter(|| {
                i = (i + 7919) % one.len();
                black_box(limiter.immediate().unwrap().decide(&one[i]).unwrap())
            })
        });
        group.bench_function(format!("four_descriptors_{}_keys", four.len()), |b| {
            b.iter(|| {
                i = (i + 7919) % four.len();
                black_box(limiter.immediate().unwrap().decide(&four[i]).unwrap())
            })
        });
    }
    // What recording the stats costs: the same decisions with DISABLE_STATS.
    for disabled in [false, true] {
        let (limiter, one, four) = limiter_with(1, disabled);
        let suffix = if disabled { "stats_disabled" } else { "stats_enabled" };
        group.bench_function(format!("one_descriptor_{suffix}"), |b| {
            b.iter(|| black_box(limiter.immediate().unwrap().decide(&one[0]).unwrap()))
        });
        group.bench_function(format!("four_descriptors_{suffix}"), |b| {
            b.iter(|| black_box(limiter.immediate().unwrap().decide(&four[0]).unwrap()))
        });
    }
    // The cost of a new counter (insert) on top of a decision.
    let (limiter, _, _) = limiter(1);
    let mut n = 0u64;
    group.bench_function("one_descriptor_new_key", |b| {
        b.iter_batched(
            || {
                n += 1;
                RateLimitRequest {
                    domain: "bench".into(),
                    descriptors: vec![RateLimitDescriptor {
                        entries: entries(&[("remote_address", &format!("new-{n}"))]),
                        ..Default::default()
                    }],
                    hits_addend: 0,
                }
            },
            |r| black_box(limiter.immediate().unwrap().decide(&r).unwrap()),
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

/// The gRPC handler (`RlsService::should_rate_limit`, decoded request to response) with
/// tracing off (no tracer: one branch) and on with the call's span not sampled
/// (`TRACING_SAMPLING_RATE=0`: the `traceparent` look-up and new ids, nothing queued).
fn bench_handler(c: &mut Criterion) {
    use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_server::RateLimitService;
    use sluicegate::grpc::RlsService;
    use sluicegate::trace::{BatchOptions, ExportProtocol, TraceOptions, Tracer};

    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let (limiter, one, _) = limiter(1);
    let limiter = Arc::new(limiter);
    let options = TraceOptions {
        service_name: "bench".into(),
        service_namespace: String::new(),
        service_instance_id: String::new(),
        protocol: ExportProtocol::Http,
        sampling_rate: 0.0,
        endpoint: "http://127.0.0.1:9/v1/traces".into(),
        headers: Default::default(),
        tls: Default::default(),
        timeout: Duration::from_secs(1),
        batch: BatchOptions { delay: Duration::from_millis(500), max_batch: 512, queue: 2048 },
    };
    let stats = Stats::new(StatsOptions::default());
    let (tracer, _exporter) = runtime.block_on(async { Tracer::start(options, &stats) }).unwrap();
    let mut group = c.benchmark_group("grpc_handler");
    group.throughput(Throughput::Elements(1));
    for (name, tracer) in [("tracing_off", None), ("tracing_on_unsampled", Some(tracer))] {
        let service = RlsService::new(limiter.clone(), 0).traced(tracer);
        group.bench_function(name, |b| {
            b.iter(|| {
                let request = tonic::Request::new(one[0].clone());
                black_box(runtime.block_on(service.should_rate_limit(request)).unwrap())
            })
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3));
    targets = bench_matcher, bench_store, bench_algorithms, bench_decide, bench_handler
}
criterion_main!(benches);
