//! `ShouldRateLimit`: from a request to a response, with the reference's semantics.
//!
//! Owns the request's life, as one pipeline whatever the backend: validate it
//! ([`validate`]), take the current rule snapshot, plan it (`plan`: match each descriptor,
//! apply `unlimited` and `replaces`, list every counter), apply the plan in the store as
//! one batch, conclude (`verdict`: each descriptor's status, the overall answer, stats),
//! roll back a rejected request's hits under `CONSUME=all_or_nothing`, and respond
//! (`respond`: statuses, headers, custom body, dynamic metadata). The gRPC and `/json`
//! front ends both call [`RateLimiter::should_rate_limit`], so they cannot disagree.
//!
//! The memory store answers on the caller's stack: its steps are ready futures, and
//! [`Immediate`] runs the pipeline to completion in one poll. The Redis store's steps
//! wait for one round trip each; what it answers when Redis fails is its own policy.
//!
//! Envoy semantics this code relies on:
//! - `statuses` are one per request descriptor, in request order.
//! - The request's `hits_addend` of 0 means 1 (proto3 cannot tell unset from 0); a
//!   descriptor's own `hits_addend` of 0 means "check without consuming".
//! - An unknown domain is not an error: every descriptor is OK with no limit.
//! - A descriptor's `limit` override, in a known domain, replaces rule matching.
//! - Any gRPC error lets Envoy's `failure_mode_deny` decide, so errors are only for
//!   requests we cannot answer (see [`ServiceError`]).
//!
//! No rate-limit arithmetic lives here (that is `limiter`), and no counter storage
//! (that is `store`).

mod options;
mod plan;
mod respond;
mod validate;
mod verdict;

use std::sync::Arc;

use envoy_types::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use futures_util::FutureExt;

use crate::clock::Clock;
use crate::snapshot::ConfigSnapshot;
use crate::stats::{DEFAULT_NEAR_LIMIT_RATIO, RuleSeries, Stats, StatsOptions};
use crate::store::{Batch, CounterStore, Lane, MemoryStore, Store};
pub use options::{Consume, HeaderNames, RequestCaps, ServiceOptions};
pub use validate::validate;

/// The rules in force and what is built from them, put in force together (one swap), so
/// a request never pairs one load's rules with another's tables.
#[derive(Debug)]
pub struct Active {
    pub snapshot: ConfigSnapshot,
    /// The rules' stats series, indexed by rule.
    pub series: RuleSeries,
}

impl Active {
    pub fn new(snapshot: ConfigSnapshot) -> Self {
        let series = RuleSeries::new(&snapshot.rules);
        Active { snapshot, series }
    }

    /// A shared slot holding `snapshot` in force (tests, benches, tools).
    pub fn shared(snapshot: ConfigSnapshot) -> SharedConfig {
        Arc::new(arc_swap::ArcSwapOption::from_pointee(Active::new(snapshot)))
    }
}

/// What requests read: the rules in force, swapped whole on reload, read without locks.
pub type SharedConfig = Arc<arc_swap::ArcSwapOption<Active>>;

/// Why a request got no answer. The gRPC status for each is in [`ServiceError::code`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ServiceError {
    /// The request itself is malformed or over a cap: `INVALID_ARGUMENT`.
    InvalidArgument(String),
    /// We cannot decide right now (no config yet): `UNAVAILABLE`, so Envoy's
    /// `failure_mode_deny` chooses between failing open and closed.
    Unavailable(String),
    /// The counter backend failed (Redis down or slow) under
    /// `BACKEND_FAILURE_POLICY=error`: `UNAVAILABLE` too, counted as `redis_error`.
    Backend(String),
}

impl ServiceError {
    pub fn message(&self) -> &str {
        match self {
            ServiceError::InvalidArgument(m) | ServiceError::Unavailable(m) | ServiceError::Backend(m) => m,
        }
    }

    pub fn code(&self) -> tonic::Code {
        match self {
            ServiceError::InvalidArgument(_) => tonic::Code::InvalidArgument,
            ServiceError::Unavailable(_) | ServiceError::Backend(_) => tonic::Code::Unavailable,
        }
    }
}

impl std::fmt::Display for ServiceError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.message())
    }
}

impl std::error::Error for ServiceError {}

impl From<ServiceError> for tonic::Status {
    fn from(e: ServiceError) -> Self {
        tonic::Status::new(e.code(), e.message())
    }
}

/// The rate limit decision service, shared by every front end and worker thread.
#[derive(Debug)]
pub struct RateLimiter {
    config: SharedConfig,
    store: Store,
    clock: Clock,
    options: ServiceOptions,
    stats: Arc<Stats>,
}

impl RateLimiter {
    /// A limiter with its own stats (the reference's default `NEAR_LIMIT_RATIO`).
    pub fn new(config: SharedConfig, store: Store, clock: Clock, options: ServiceOptions) -> Self {
        let stats = Stats::new(StatsOptions { near_limit_ratio: DEFAULT_NEAR_LIMIT_RATIO, ..StatsOptions::default() });
        RateLimiter { config, store, clock, options, stats }
    }

    /// Records into `stats` instead.
    pub fn with_stats(self, stats: Arc<Stats>) -> Self {
        RateLimiter { stats, ..self }
    }

    pub fn stats(&self) -> &Arc<Stats> {
        &self.stats
    }

    pub fn config(&self) -> &SharedConfig {
        &self.config
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    pub fn options(&self) -> &ServiceOptions {
        &self.options
    }

    /// Answers one `ShouldRateLimit` call made outside the gRPC workers (`/json`, tests).
    pub async fn should_rate_limit(&self, request: &RateLimitRequest) -> Result<RateLimitResponse, ServiceError> {
        self.should_rate_limit_on(request, Lane::Main).await
    }

    /// Answers one `ShouldRateLimit` call made on `lane` (a gRPC worker uses its own).
    pub async fn should_rate_limit_on(
        &self,
        request: &RateLimitRequest,
        lane: Lane,
    ) -> Result<RateLimitResponse, ServiceError> {
        match &self.store {
            Store::Memory(memory) => Immediate { limiter: self, memory }.decide(request),
            // Boxed: the Redis pipeline's future is large, and inline it would make every
            // caller's future (and so every memory-backend call) that large too.
            Store::Redis(redis) => {
                let result = Box::pin(self.run(request, &**redis, lane)).await;
                self.count_error(&result);
                result
            }
            Store::Leased(leased) => {
                let result = Box::pin(self.run(request, &**leased, lane)).await;
                self.count_error(&result);
                result
            }
        }
    }

    /// The synchronous path, when the counters are in this process.
    pub fn immediate(&self) -> Option<Immediate<'_>> {
        match &self.store {
            Store::Memory(memory) => Some(Immediate { limiter: self, memory }),
            Store::Redis(_) | Store::Leased(_) => None,
        }
    }

    fn count_error(&self, result: &Result<RateLimitResponse, ServiceError>) {
        if let Err(e) = result
            && self.stats.enabled()
        {
            match e {
                // The store counts its own failures (`redis_error`), whatever the policy.
                ServiceError::Backend(_) => {}
                _ => self.stats.service_error.increment(1),
            }
        }
    }

    /// The one pipeline: validate, plan, apply, conclude, roll back, respond.
    async fn run<S: CounterStore>(
        &self,
        request: &RateLimitRequest,
        store: &S,
        lane: Lane,
    ) -> Result<RateLimitResponse, ServiceError> {
        validate(request, &self.options.caps)?;
        let active = self.config.load();
        let Some(Active { snapshot, series }) = active.as_deref() else {
            return Err(ServiceError::Unavailable("no rate limit configuration loaded".into()));
        };
        let overrides = plan::overrides_of(request);
        let quota = self.options.global_quota_mode;
        let plan = plan::plan(request, &snapshot.rules, &overrides, self.clock.now(), quota);
        if !plan.domain_found {
            self.stats.domain_not_found(plan.domain_name, request.descriptors.len() as u64);
        }
        let applied = if plan.counters.is_empty() {
            Batch::new()
        } else {
            store.apply_batch(&plan.counters, plan.now, lane).await.map_err(|e| ServiceError::Backend(e.message))?
        };
        let (mut verdicts, over) = verdict::conclude(request, &plan, &applied, (&self.stats, series), quota);
        if over && self.options.rolls_back() {
            let taken = verdict::taken(&plan, &applied);
            if !taken.is_empty() {
                match store.refund_batch(&taken, plan.now, lane).await {
                    Ok(()) => verdict::after_rollback(&plan, &mut verdicts),
                    Err(e) => tracing::warn!(error = %e, "could not take back the hits of a rejected request"),
                }
            }
        }
        Ok(respond::respond(request, &verdicts, over, &self.options, &self.stats))
    }
}

/// The rate limiter over in-process counters: the same pipeline, run to completion on
/// the caller's stack (nothing in it waits), for callers without an async runtime
/// (benches, tests) and for every memory-backend call.
#[derive(Clone, Copy, Debug)]
pub struct Immediate<'a> {
    limiter: &'a RateLimiter,
    memory: &'a MemoryStore,
}

impl Immediate<'_> {
    pub fn decide(&self, request: &RateLimitRequest) -> Result<RateLimitResponse, ServiceError> {
        let result = self
            .limiter
            .run(request, self.memory, Lane::Main)
            .now_or_never()
            .expect("every step of the memory store is a ready future");
        self.limiter.count_error(&result);
        result
    }
}

#[cfg(test)]
mod tests;
