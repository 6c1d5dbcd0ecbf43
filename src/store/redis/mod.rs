//! The Redis store: counters shared by every replica, one round trip per request.
//!
//! Owns the store's one entry point and what happens when Redis fails: the error names
//! the backend, a transport failure opens the deployment's breaker (see `link`), and
//! `BACKEND_FAILURE_POLICY` decides the answer (report it, waive the limits, or count in
//! this process's memory) and whether the service reports serving meanwhile (see
//! `maintain`). Turning a batch into pipelines and replies back into outcomes is
//! `batch`'s.
//!
//! Fixed windows are the reference's pipelined `INCRBY key hits` + `EXPIRE key window +
//! jitter`; the other algorithms are one `EVALSHA` each (see `script`). With
//! `REDIS_PERSECOND`, limits whose unit is the second go to the second deployment.

mod batch;
pub mod keys;
pub mod link;
pub mod local_cache;
pub mod maintain;
pub mod mask;
pub mod options;
pub mod script;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use smallvec::SmallVec;

use super::{Applied, Batch, Counter, CounterStore, FailurePolicy, Lane, MemoryStore, StoreError};
use crate::clock::Nanos;
use crate::limiter::Unit;
use crate::rules::EntryView;
use crate::signal::Shutdown;
pub use link::Deployment;
use local_cache::OverLimitCache;
pub use options::{Credentials, NodeAddr, RedisTarget, RedisTls, Topology};

/// Everything the Redis store is configured with.
#[derive(Clone, Debug, PartialEq)]
pub struct RedisOptions {
    pub main: RedisTarget,
    /// `REDIS_PERSECOND`: where per-second limits are counted.
    pub per_second: Option<RedisTarget>,
    /// `CACHE_KEY_PREFIX`.
    pub key_prefix: String,
    /// `EXPIRATION_JITTER_MAX_SECONDS`: fixed-window keys live up to this much longer
    /// than their window, at random, so a window's keys do not all expire at once.
    pub jitter_max_secs: u64,
    /// `LOCAL_CACHE_SIZE_IN_BYTES` (0: off).
    pub local_cache_bytes: usize,
    /// `REDIS_STARTUP_INITIAL_INTERVAL` and `REDIS_STARTUP_MAX_INTERVAL`.
    pub startup_backoff: (Duration, Duration),
    /// `BACKEND_FAILURE_POLICY`.
    pub failure_policy: FailurePolicy,
    /// `REDIS_LEASING`: windows and token buckets are admitted from leases (`store::leased`).
    pub leasing: bool,
    /// `REDIS_LEASE_HORIZON`: a lease holds about what a replica spends in this long.
    pub lease_horizon: Duration,
}

#[derive(Debug)]
pub struct RedisStore {
    options: RedisOptions,
    main: Arc<Deployment>,
    per_second: Option<Arc<Deployment>>,
    local_cache: Option<OverLimitCache>,
    /// `BACKEND_FAILURE_POLICY=local`: where counting goes while Redis is down.
    fallback: Option<Arc<MemoryStore>>,
    /// Batches Redis could not answer (`redis_error`), under every policy.
    pub errors: metrics::Counter,
    /// Batches counted in the fallback instead.
    pub fallbacks: AtomicU64,
}

/// Which deployment a counter goes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Target {
    Main,
    PerSecond,
}

/// One counter's place in a batch.
pub(super) struct Planned {
    pub index: usize,
    pub key: String,
    pub target: Target,
}

impl RedisStore {
    /// A store that connects once [`RedisStore::supervise`] runs. `local` holds the
    /// counts under `BACKEND_FAILURE_POLICY=local` while Redis is down (other policies
    /// drop it).
    pub fn new(options: RedisOptions, local: MemoryStore, errors: metrics::Counter) -> Self {
        let main = Deployment::new("redis", options.main.clone());
        let per_second = options.per_second.clone().map(|t| Deployment::new("redis_per_second", t));
        let local_cache = OverLimitCache::new(options.local_cache_bytes);
        let fallback = (options.failure_policy == FailurePolicy::Local).then(|| Arc::new(local));
        RedisStore { options, main, per_second, local_cache, fallback, errors, fallbacks: AtomicU64::new(0) }
    }

    pub fn options(&self) -> &RedisOptions {
        &self.options
    }

    pub fn fallback(&self) -> Option<&Arc<MemoryStore>> {
        self.fallback.as_ref()
    }

    pub fn local_cache(&self) -> Option<&OverLimitCache> {
        self.local_cache.as_ref()
    }

    /// The deployments (main first).
    pub fn backends(&self) -> impl Iterator<Item = &Arc<Deployment>> {
        std::iter::once(&self.main).chain(self.per_second.as_ref())
    }

    /// Whether every deployment is connected and its breaker closed.
    pub fn is_up(&self) -> bool {
        self.backends().all(|b| b.is_up())
    }

    /// Whether the service can answer as it should: under `BACKEND_FAILURE_POLICY=error`
    /// a limited call fails while Redis is down, so the service is not serving; the other
    /// policies answer regardless.
    pub fn serving(&self) -> bool {
        self.options.failure_policy != FailurePolicy::Error || self.is_up()
    }

    /// Connects every deployment and keeps it connected until `stop`. Each gRPC worker
    /// runtime in `workers` gets connections of its own, driven on it; `main` serves
    /// every other caller.
    pub fn supervise(
        &self,
        stop: &Shutdown,
        main: tokio::runtime::Handle,
        workers: Vec<tokio::runtime::Handle>,
    ) -> Vec<tokio::task::JoinHandle<()>> {
        let runtimes: Arc<[tokio::runtime::Handle]> = std::iter::once(main).chain(workers).collect();
        self.backends()
            .map(|b| {
                let task = b.clone().supervise(self.options.startup_backoff, runtimes.clone(), stop.clone());
                tokio::spawn(task)
            })
            .collect()
    }

    pub(super) fn backend(&self, target: Target) -> &Arc<Deployment> {
        match (target, &self.per_second) {
            (Target::PerSecond, Some(b)) => b,
            _ => &self.main,
        }
    }

    pub(super) fn target_of<E: EntryView>(&self, counter: &Counter<'_, E>) -> Target {
        if self.per_second.is_some() && counter.params.unit == Unit::Second && counter.params.unit_multiplier == 1 {
            Target::PerSecond
        } else {
            Target::Main
        }
    }
}

impl CounterStore for RedisStore {
    /// One pipeline per deployment, sent concurrently; what a failed deployment's
    /// counters get is the failure policy's.
    async fn apply_batch<E: EntryView>(
        &self,
        counters: &[Counter<'_, E>],
        now: Nanos,
        lane: Lane,
    ) -> Result<Batch, StoreError> {
        let (mut results, failure) = self.decide_all(counters, now, lane).await;
        let Some((error, failed)) = failure else { return Ok(results) };
        self.errors.increment(1);
        match (self.options.failure_policy, &self.fallback) {
            (FailurePolicy::Local, Some(fallback)) => {
                self.fallbacks.fetch_add(1, Ordering::Relaxed);
                let local: SmallVec<[Counter<'_, E>; 8]> = failed.iter().map(|&i| counters[i]).collect();
                for (&i, applied) in failed.iter().zip(fallback.apply_all(&local, now)) {
                    results[i] = applied;
                }
                tracing::debug!(error = %error, "Redis failed; counted in memory (BACKEND_FAILURE_POLICY=local)");
                Ok(results)
            }
            (FailurePolicy::Allow, _) => {
                for &i in &failed {
                    results[i] = Applied { waived: true, ..results[i] };
                }
                tracing::debug!(error = %error, "Redis failed; limits waived (BACKEND_FAILURE_POLICY=allow)");
                Ok(results)
            }
            _ => Err(error),
        }
    }

    /// Takes back hits decided at `consumed_at`; where they went to the fallback, from
    /// the fallback.
    async fn refund_batch<E: EntryView>(
        &self,
        counters: &[Counter<'_, E>],
        consumed_at: Nanos,
        lane: Lane,
    ) -> Result<(), StoreError> {
        let mut planned: SmallVec<[Planned; 8]> = SmallVec::new();
        for (index, counter) in counters.iter().enumerate() {
            let mut key = String::new();
            keys::write_key(&mut key, &self.options.key_prefix, counter, consumed_at);
            planned.push(Planned { index, key, target: self.target_of(counter) });
        }
        for target in [Target::Main, Target::PerSecond] {
            let mine: SmallVec<[&Planned; 8]> = planned.iter().filter(|p| p.target == target).collect();
            if mine.is_empty() {
                continue;
            }
            let backend = self.backend(target);
            let links = match backend.links() {
                Ok(links) => links,
                Err(message) => {
                    // The hits went to the fallback, if anywhere: take them back there.
                    if let Some(fallback) = &self.fallback {
                        let local: SmallVec<[Counter<'_, E>; 8]> = mine.iter().map(|p| counters[p.index]).collect();
                        fallback.refund_all(&local, consumed_at);
                        continue;
                    }
                    return Err(StoreError { message });
                }
            };
            let command = |p: &Planned, script: batch::ScriptCall| -> SmallVec<[redis::Cmd; 2]> {
                let counter = &counters[p.index];
                let mut call = script.command();
                script::refund_args(&mut call, &p.key, counter.params, counter.hits, consumed_at);
                smallvec::smallvec![call]
            };
            self.exchange(backend, links.here(lane), &mine, command).await?;
        }
        Ok(())
    }
}
