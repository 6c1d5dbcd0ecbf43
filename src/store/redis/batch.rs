//! Redis batches: a request's counters as pipelines, and the replies as outcomes.
//!
//! Owns the wire side of the Redis store: one pipeline per deployment (per slot on a
//! Cluster, the groups sent concurrently), each counter's commands (the reference's
//! `INCRBY` + `EXPIRE`, or one script call; a refund before the check when hits are given
//! back), a script Redis has forgotten sent again in full, the local over-limit cache's
//! answers and entries, and the expiry jitter.

use std::cell::Cell;

use futures_util::future::join_all;
use redis::{Pipeline, Value};
use smallvec::SmallVec;

use super::link::{Deployment, Link, describe_error, is_transport_error};
use super::{Planned, RedisStore, Target, keys, script};
use crate::clock::Nanos;
use crate::limiter::{Algorithm, Outcome, fixed_window};
use crate::rules::EntryView;
use crate::store::{Applied, Batch, Counter, Lane, StoreError};

impl RedisStore {
    /// Decides a batch in Redis (and the local over-limit cache): the outcomes, and if a
    /// deployment failed, its error and the indexes of the counters it did not decide.
    pub(crate) async fn decide_all<E: EntryView>(
        &self,
        counters: &[Counter<'_, E>],
        now: Nanos,
        lane: Lane,
    ) -> (Batch, Option<(StoreError, SmallVec<[usize; 8]>)>) {
        let unset = Applied::decided(fresh_outcome(), false);
        let mut results: Batch = smallvec::smallvec![unset; counters.len()];
        let mut planned: SmallVec<[Planned; 8]> = SmallVec::new();
        for (index, counter) in counters.iter().enumerate() {
            let mut key = String::new();
            keys::write_key(&mut key, &self.options.key_prefix, counter, now);
            if counter.give_back
                && let Some(cache) = &self.local_cache
            {
                // The count goes down: the key may no longer be over its limit.
                cache.forget(&key);
            } else if counter.params.algorithm == Algorithm::FixedWindow
                && let Some(cache) = &self.local_cache
                && let Some(until) = cache.lookup(&key, now)
            {
                results[index] = cached_over_limit(counter, until, now);
                continue;
            }
            planned.push(Planned { index, key, target: self.target_of(counter) });
        }
        if planned.is_empty() {
            return (results, None);
        }
        let (main, per_second) = if self.per_second.is_none() {
            // One deployment: no need to split or join.
            let all: SmallVec<[&Planned; 8]> = planned.iter().collect();
            let main = self.run_decisions(&self.main, counters, &all, now, lane).await.map_err(|e| (Target::Main, e));
            (main, Ok(SmallVec::new()))
        } else {
            let per_target = [Target::Main, Target::PerSecond].map(|t| {
                let mine: SmallVec<[&Planned; 8]> = planned.iter().filter(|p| p.target == t).collect();
                async move {
                    if mine.is_empty() {
                        return Ok(SmallVec::new());
                    }
                    self.run_decisions(self.backend(t), counters, &mine, now, lane).await.map_err(|e| (t, e))
                }
            });
            let [main, per_second] = per_target;
            tokio::join!(main, per_second)
        };
        let mut first_error = None;
        let mut failed: SmallVec<[usize; 8]> = SmallVec::new();
        for outcome in [main, per_second] {
            match outcome {
                Ok(decided) => {
                    for (index, applied) in decided {
                        results[index] = applied;
                    }
                }
                Err((target, e)) => {
                    failed.extend(planned.iter().filter(|p| p.target == target).map(|p| p.index));
                    first_error.get_or_insert(e);
                }
            }
        }
        if let Some(cache) = &self.local_cache {
            for p in planned.iter().filter(|p| !failed.contains(&p.index)) {
                let counter = &counters[p.index];
                if results[p.index].outcome.over_limit && counter.params.algorithm == Algorithm::FixedWindow {
                    cache.insert(&p.key, window_end(counter, now), now);
                }
            }
        }
        (results, first_error.map(|e| (e, failed)))
    }

    /// Sends one deployment's part of a batch and reads its outcomes.
    async fn run_decisions<E: EntryView>(
        &self,
        backend: &Deployment,
        counters: &[Counter<'_, E>],
        planned: &[&Planned],
        now: Nanos,
        lane: Lane,
    ) -> Result<SmallVec<[(usize, Applied); 8]>, StoreError> {
        let links = backend.links().map_err(|message| StoreError { message })?;
        let link = links.here(lane);
        let command = |p: &Planned, script: ScriptCall| -> SmallVec<[redis::Cmd; 2]> {
            let counter = &counters[p.index];
            let params = counter.params;
            let mut commands = SmallVec::new();
            // Giving hits back (`is_negative_hits`) is a refund, then a check of what is
            // left: both in this pipeline, the check's reply after the refund's.
            let hits = if counter.give_back {
                let mut refund = script.command();
                script::refund_args(&mut refund, &p.key, params, counter.hits, now);
                commands.push(refund);
                0
            } else {
                counter.hits
            };
            if params.algorithm == Algorithm::FixedWindow {
                let ttl = params.window_secs + jitter(self.options.jitter_max_secs);
                let mut incr = redis::cmd("INCRBY");
                incr.arg(&p.key).arg(hits);
                let mut expire = redis::cmd("EXPIRE");
                expire.arg(&p.key).arg(ttl);
                commands.push(incr);
                commands.push(expire);
            } else {
                let mut call = script.command();
                script::decide_args(&mut call, &p.key, params, hits, now);
                commands.push(call);
            }
            commands
        };
        let replies = self.exchange(backend, link, planned, command).await?;
        let mut decided = SmallVec::new();
        for (p, reply) in planned.iter().zip(replies) {
            let counter = &counters[p.index];
            let (hits, reply) =
                if counter.give_back { (0, reply.get(1..).unwrap_or(&[])) } else { (counter.hits, &reply[..]) };
            let outcome = if counter.params.algorithm == Algorithm::FixedWindow {
                let after = match reply.first() {
                    Some(Value::Int(n)) => u64::try_from(*n).unwrap_or(0),
                    other => return Err(unexpected(backend, "INCRBY", other)),
                };
                fixed_window::outcome_of_count(after, hits, now, counter.params)
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
            let consumed = hits > 0 && (counter.params.algorithm == Algorithm::FixedWindow || !outcome.over_limit);
            decided.push((p.index, Applied::decided(outcome, consumed)));
        }
        Ok(decided)
    }

    /// Sends each planned counter's commands and returns each one's replies. On a
    /// Cluster, commands are grouped by slot and the groups sent concurrently. A script
    /// Redis has forgotten (`NOSCRIPT`) is sent again in full, which also reloads it.
    pub(super) async fn exchange(
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
pub(super) enum ScriptCall {
    BySha,
    InFull,
}

impl ScriptCall {
    pub(super) fn command(self) -> redis::Cmd {
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
    Applied { outcome, consumed: false, cached: true, waived: false }
}

/// A uniform number of seconds in `[0, max)`.
fn jitter(max: u64) -> u64 {
    if max == 0 {
        return 0;
    }
    thread_local! {
        static STATE: Cell<u64> = Cell::new({
            use std::hash::BuildHasher;
            // A fresh random hasher per thread makes the seed random.
            foldhash::fast::RandomState::default().hash_one(0u64) | 1
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
