//! The Redis store: counters shared by every replica, one round trip per request.
//!
//! Owns turning a batch of counters into pipelines (one per deployment, or per slot on
//! a Cluster, sent concurrently), reading the replies back into outcomes, the local
//! over-limit cache, and what happens when Redis fails: the error names the backend, a
//! transport failure opens the deployment's breaker (see `link`), and under
//! `BACKEND_FAILURE_POLICY=local` the batch is counted in this process's memory instead.
//!
//! Fixed windows are the reference's pipelined `INCRBY key hits` + `EXPIRE key window +
//! jitter`; the other algorithms are one `EVALSHA` each (see `script`). With
//! `REDIS_PERSECOND`, limits whose unit is the second go to the second deployment.

pub mod keys;
pub mod link;
pub mod local_cache;
pub mod mask;
pub mod options;
pub mod script;

use std::cell::Cell;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::future::join_all;
use redis::{Pipeline, Value};
use smallvec::SmallVec;
use tokio::sync::watch;

use super::{Applied, Batch, Counter, MemoryStore, StoreError, apply_in_memory, refund_in_memory};
use crate::clock::Nanos;
use crate::limiter::{Algorithm, Outcome, Unit, fixed_window};
use crate::rules::EntryView;
pub use link::Deployment;
use link::{Link, describe_error, is_transport_error};
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
enum Target {
    Main,
    PerSecond,
}

/// One counter's place in a batch.
struct Planned {
    index: usize,
    key: String,
    target: Target,
}

impl RedisStore {
    /// A store that connects once [`RedisStore::supervise`] runs. `fallback` is the
    /// in-process store used under `BACKEND_FAILURE_POLICY=local`.
    pub fn new(options: RedisOptions, fallback: Option<Arc<MemoryStore>>, errors: metrics::Counter) -> Self {
        let main = Deployment::new("redis", options.main.clone());
        let per_second = options.per_second.clone().map(|t| Deployment::new("redis_per_second", t));
        let local_cache = OverLimitCache::new(options.local_cache_bytes);
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

    /// Connects every deployment and keeps it connected until `stop`. Each gRPC worker
    /// runtime in `workers` gets connections of its own, driven on it; `main` serves
    /// every other caller.
    pub fn supervise(
        &self,
        stop: &watch::Receiver<bool>,
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

    fn backend(&self, target: Target) -> &Arc<Deployment> {
        match (target, &self.per_second) {
            (Target::PerSecond, Some(b)) => b,
            _ => &self.main,
        }
    }

    fn target_of<E: EntryView>(&self, counter: &Counter<'_, E>) -> Target {
        if self.per_second.is_some() && counter.params.unit == Unit::Second && counter.params.unit_multiplier == 1 {
            Target::PerSecond
        } else {
            Target::Main
        }
    }

    /// Applies a request's counters: one pipeline per deployment, sent concurrently.
    pub async fn apply_batch<E: EntryView>(
        &self,
        counters: &[Counter<'_, E>],
        now: Nanos,
    ) -> Result<Batch, StoreError> {
        let unset = Applied { outcome: fresh_outcome(), consumed: false, cached: false };
        let mut results: Batch = smallvec::smallvec![unset; counters.len()];
        let mut planned: SmallVec<[Planned; 8]> = SmallVec::new();
        for (index, counter) in counters.iter().enumerate() {
            let mut key = String::new();
            keys::write_key(&mut key, &self.options.key_prefix, counter, now);
            if counter.params.algorithm == Algorithm::FixedWindow
                && let Some(cache) = &self.local_cache
                && let Some(until) = cache.lookup(&key, now)
            {
                results[index] = cached_over_limit(counter, until, now);
                continue;
            }
            planned.push(Planned { index, key, target: self.target_of(counter) });
        }
        if planned.is_empty() {
            return Ok(results);
        }
        let (main, per_second) = if self.per_second.is_none() {
            // One deployment: no need to split or join.
            let all: SmallVec<[&Planned; 8]> = planned.iter().collect();
            let main = self.run_decisions(&self.main, counters, &all, now).await.map_err(|e| (Target::Main, e));
            (main, Ok(SmallVec::new()))
        } else {
            let per_target = [Target::Main, Target::PerSecond].map(|t| {
                let mine: SmallVec<[&Planned; 8]> = planned.iter().filter(|p| p.target == t).collect();
                async move {
                    if mine.is_empty() {
                        return Ok(SmallVec::new());
                    }
                    self.run_decisions(self.backend(t), counters, &mine, now).await.map_err(|e| (t, e))
                }
            });
            let [main, per_second] = per_target;
            tokio::join!(main, per_second)
        };
        let mut first_error = None;
        let mut failed: SmallVec<[&Planned; 8]> = SmallVec::new();
        for outcome in [main, per_second] {
            match outcome {
                Ok(decided) => {
                    for (index, applied) in decided {
                        results[index] = applied;
                    }
                }
                Err((target, e)) => {
                    failed.extend(planned.iter().filter(|p| p.target == target));
                    first_error.get_or_insert(e);
                }
            }
        }
        if let Some(error) = first_error {
            self.errors.increment(1);
            let Some(fallback) = &self.fallback else { return Err(error) };
            // Under the local policy the failed deployment's counters are counted here.
            self.fallbacks.fetch_add(1, Ordering::Relaxed);
            let local: SmallVec<[Counter<'_, E>; 8]> = failed.iter().map(|p| counters[p.index]).collect();
            for (p, applied) in failed.iter().zip(apply_in_memory(fallback, &local, now)) {
                results[p.index] = applied;
            }
            tracing::debug!(error = %error, "Redis failed; counted in memory (BACKEND_FAILURE_POLICY=local)");
        }
        if let Some(cache) = &self.local_cache {
            for p in &planned {
                let counter = &counters[p.index];
                let applied = &results[p.index];
                if applied.outcome.over_limit && counter.params.algorithm == Algorithm::FixedWindow {
                    cache.insert(&p.key, window_end(counter, now), now);
                }
            }
        }
        Ok(results)
    }

    /// Sends one deployment's part of a batch and reads its outcomes.
    async fn run_decisions<E: EntryView>(
        &self,
        backend: &Deployment,
        counters: &[Counter<'_, E>],
        planned: &[&Planned],
        now: Nanos,
    ) -> Result<SmallVec<[(usize, Applied); 8]>, StoreError> {
        let links = backend.links().map_err(|message| StoreError { message })?;
        let link = links.here();
        let command = |p: &Planned, script: ScriptCall| -> SmallVec<[redis::Cmd; 2]> {
            let counter = &counters[p.index];
            let params = counter.params;
            if params.algorithm == Algorithm::FixedWindow {
                let ttl = params.window_secs + jitter(self.options.jitter_max_secs);
                let mut incr = redis::cmd("INCRBY");
                incr.arg(&p.key).arg(counter.hits);
                let mut expire = redis::cmd("EXPIRE");
                expire.arg(&p.key).arg(ttl);
                smallvec::smallvec![incr, expire]
            } else {
                let mut call = script.command();
                script::decide_args(&mut call, &p.key, params, counter.hits, now);
                smallvec::smallvec![call]
            }
        };
        let replies = self.exchange(backend, link, planned, command).await?;
        let mut decided = SmallVec::new();
        for (p, reply) in planned.iter().zip(replies) {
            let counter = &counters[p.index];
            let outcome = if counter.params.algorithm == Algorithm::FixedWindow {
                let after = match reply.first() {
                    Some(Value::Int(n)) => u64::try_from(*n).unwrap_or(0),
                    other => return Err(unexpected(backend, "INCRBY", other)),
                };
                fixed_window::outcome_of_count(after, counter.hits, now, counter.params)
            } else {
                match reply.first() {
                    Some(Value::Array(items)) if items.len() == 5 => {
                        let mut numbers = [0i64; 5];
                        for (n, item) in numbers.iter_mut().zip(items) {
                            *n = match item {
                                Value::Int(v) => *v,
                                other => return Err(unexpected(backend, "the decision script", Some(other))),
                            };
                        }
                        script::outcome_of_reply(&numbers)
                    }
                    other => return Err(unexpected(backend, "the decision script", other)),
                }
            };
            // A fixed window counts every hit (as the reference's INCRBY does); the
            // scripts count only admitted ones.
            let consumed =
                counter.hits > 0 && (counter.params.algorithm == Algorithm::FixedWindow || !outcome.over_limit);
            decided.push((p.index, Applied { outcome, consumed, cached: false }));
        }
        Ok(decided)
    }

    /// Takes back hits decided at `consumed_at` (`CONSUME=all_or_nothing`).
    pub async fn refund_batch<E: EntryView>(
        &self,
        counters: &[Counter<'_, E>],
        consumed_at: Nanos,
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
                        refund_in_memory(fallback, &local, consumed_at);
                        continue;
                    }
                    return Err(StoreError { message });
                }
            };
            let command = |p: &Planned, script: ScriptCall| -> SmallVec<[redis::Cmd; 2]> {
                let counter = &counters[p.index];
                let mut call = script.command();
                script::refund_args(&mut call, &p.key, counter.params, counter.hits, consumed_at);
                smallvec::smallvec![call]
            };
            self.exchange(backend, links.here(), &mine, command).await?;
        }
        Ok(())
    }

    /// Sends each planned counter's commands and returns each one's replies. On a
    /// Cluster, commands are grouped by slot and the groups sent concurrently. A script
    /// Redis has forgotten (`NOSCRIPT`) is sent again in full, which also reloads it.
    async fn exchange(
        &self,
        backend: &Deployment,
        link: &Link,
        planned: &[&Planned],
        command: impl Fn(&Planned, ScriptCall) -> SmallVec<[redis::Cmd; 2]>,
    ) -> Result<Vec<SmallVec<[Value; 2]>>, StoreError> {
        let groups: Vec<Vec<usize>> = if link.is_cluster() {
            let mut by_slot: Vec<(u16, Vec<usize>)> = Vec::new();
            for (i, p) in planned.iter().enumerate() {
                let slot = keys::cluster_slot(p.key.as_bytes());
                match by_slot.iter_mut().find(|(s, _)| *s == slot) {
                    Some((_, members)) => members.push(i),
                    None => by_slot.push((slot, vec![i])),
                }
            }
            by_slot.into_iter().map(|(_, members)| members).collect()
        } else {
            vec![(0..planned.len()).collect()]
        };
        let mut replies: Vec<SmallVec<[Value; 2]>> = vec![SmallVec::new(); planned.len()];
        self.send_groups(backend, link, planned, &groups, &command, ScriptCall::BySha, &mut replies).await?;
        // Redis lost the script (a restart, a failover, SCRIPT FLUSH): send those calls
        // again with the script in full, which also loads it for the next ones.
        let lost: Vec<Vec<usize>> = groups
            .iter()
            .map(|members| members.iter().copied().filter(|&i| replies[i].iter().any(is_noscript)).collect())
            .filter(|members: &Vec<usize>| !members.is_empty())
            .collect();
        if !lost.is_empty() {
            tracing::info!(backend = backend.name, "Redis lost the decision script; sending it again");
            self.send_groups(backend, link, planned, &lost, &command, ScriptCall::InFull, &mut replies).await?;
        }
        for reply in &replies {
            if let Some(Value::ServerError(e)) = reply.iter().find(|v| matches!(v, Value::ServerError(_))) {
                let e: redis::RedisError = e.clone().into();
                return Err(self.fail(backend, &e));
            }
        }
        Ok(replies)
    }

    /// Sends one pipeline per group (concurrently) and stores each planned counter's
    /// replies at its index.
    #[allow(clippy::too_many_arguments)] // private; grouping them would only rename them
    async fn send_groups(
        &self,
        backend: &Deployment,
        link: &Link,
        planned: &[&Planned],
        groups: &[Vec<usize>],
        command: &impl Fn(&Planned, ScriptCall) -> SmallVec<[redis::Cmd; 2]>,
        script: ScriptCall,
        replies: &mut [SmallVec<[Value; 2]>],
    ) -> Result<(), StoreError> {
        let sent = join_all(groups.iter().map(|members| {
            let mut pipeline = redis::pipe();
            pipeline.ignore_errors();
            let mut shape = Vec::with_capacity(members.len());
            for &i in members {
                let commands = command(planned[i], script);
                shape.push(commands.len());
                for c in commands {
                    pipeline.add_command(c);
                }
            }
            async move { (self.send(backend, link, &pipeline).await, shape) }
        }))
        .await;
        for (members, (result, shape)) in groups.iter().zip(sent) {
            let mut values = result?.into_iter();
            for (&i, n) in members.iter().zip(shape) {
                replies[i] = values.by_ref().take(n).collect();
            }
        }
        Ok(())
    }

    /// Sends one pipeline within the deadline.
    async fn send(&self, backend: &Deployment, link: &Link, pipeline: &Pipeline) -> Result<Vec<Value>, StoreError> {
        let timeout = backend.target.timeout;
        match tokio::time::timeout(timeout, link.query(pipeline)).await {
            Ok(Ok(values)) => Ok(values),
            Ok(Err(e)) => Err(self.fail(backend, &e)),
            Err(_) => {
                let message = format!("{}: no answer within {timeout:?}", backend.name);
                backend.trip(&message);
                Err(StoreError { message })
            }
        }
    }

    fn fail(&self, backend: &Deployment, e: &redis::RedisError) -> StoreError {
        let message = format!("{}: {}", backend.name, describe_error(e));
        if is_transport_error(e) {
            backend.trip(&message);
        }
        StoreError { message }
    }
}

/// How a script command names its script.
#[derive(Clone, Copy)]
enum ScriptCall {
    BySha,
    InFull,
}

impl ScriptCall {
    fn command(self) -> redis::Cmd {
        match self {
            ScriptCall::BySha => {
                let mut c = redis::cmd("EVALSHA");
                c.arg(script::SHA.as_str());
                c
            }
            ScriptCall::InFull => {
                let mut c = redis::cmd("EVAL");
                c.arg(script::SOURCE);
                c
            }
        }
    }
}

fn is_noscript(v: &Value) -> bool {
    matches!(v, Value::ServerError(e) if e.kind() == Some(redis::ServerErrorKind::NoScript))
}

fn unexpected(backend: &Deployment, what: &str, got: Option<&Value>) -> StoreError {
    StoreError { message: format!("{}: unexpected reply to {what}: {got:?}", backend.name) }
}

fn fresh_outcome() -> Outcome {
    Outcome { over_limit: false, before: 0, after: 0, remaining: 0, reset_after: Nanos(0) }
}

/// The end of the fixed window holding `now`.
fn window_end<E: EntryView>(counter: &Counter<'_, E>, now: Nanos) -> Nanos {
    Nanos::from_secs(fixed_window::window_start(now, counter.params) + counter.params.window_secs.max(1))
}

/// A key the local cache knows is over its limit: over, as the reference answers it.
fn cached_over_limit<E: EntryView>(counter: &Counter<'_, E>, until: Nanos, now: Nanos) -> Applied {
    let limit = u64::from(counter.params.requests_per_unit);
    let outcome = Outcome {
        over_limit: true,
        before: limit,
        after: limit.saturating_add(counter.hits),
        remaining: 0,
        reset_after: Nanos::from_secs(until.0.saturating_sub(now.0).div_ceil(Nanos::NANOS_PER_SEC)),
    };
    Applied { outcome, consumed: false, cached: true }
}

/// A uniform number of seconds in `[0, max)`.
fn jitter(max: u64) -> u64 {
    if max == 0 {
        return 0;
    }
    thread_local! {
        static STATE: Cell<u64> = Cell::new({
            use std::hash::BuildHasher;
            foldhash::fast::RandomState::default().hash_one(std::time::SystemTime::now()) | 1
        });
    }
    STATE.with(|s| {
        // xorshift64*: plenty for spreading expiries.
        let mut x = s.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        s.set(x);
        x.wrapping_mul(0x2545_f491_4f6c_dd1d) % max
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_in_range_and_varies() {
        assert_eq!(jitter(0), 0);
        let draws: Vec<u64> = (0..1000).map(|_| jitter(300)).collect();
        assert!(draws.iter().all(|&d| d < 300));
        let distinct: std::collections::HashSet<_> = draws.iter().collect();
        assert!(distinct.len() > 100, "{} distinct values", distinct.len());
    }
}
