//! `ShouldRateLimit`: from a request to a response, with the reference's semantics.
//!
//! Owns the request's life: validate it, take the current rule snapshot, match each
//! descriptor, apply `unlimited` and `replaces`, count each limit in the store, then
//! assemble per-descriptor statuses, shadow and quota modes, response headers and dynamic
//! metadata (SPEC §1.3, §3; reference §3.5, §3.11). The gRPC and `/json` front ends both
//! call [`RateLimiter::should_rate_limit`], so they cannot disagree.
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

use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::HeaderValue;
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::Entry;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::{Code, DescriptorStatus, RateLimit};
use envoy_types::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use envoy_types::pb::google::protobuf::{Duration as ProtoDuration, ListValue, Struct, Value, value::Kind};
use smallvec::SmallVec;

use crate::clock::{Clock, Nanos};
use crate::limiter::{LimitParams, Outcome, Unit};
use crate::rules::{Domain, EntryView, Limit, Rule};
use crate::stats::{RuleStats, Stats, StatsOptions};
use crate::store::key::LimitIdentity;
use crate::store::{Applied, Batch, Counter, Store, apply_in_memory, refund_in_memory};

pub use crate::config::reload::SharedConfig;

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

/// Caps on request size, so a hostile or broken client costs bounded work.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RequestCaps {
    pub max_descriptors: usize,
    pub max_entries: usize,
    pub max_entry_bytes: usize,
}

impl Default for RequestCaps {
    fn default() -> Self {
        RequestCaps { max_descriptors: 256, max_entries: 64, max_entry_bytes: 16 * 1024 }
    }
}

/// Names of the `LIMIT_RESPONSE_HEADERS_ENABLED` headers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeaderNames {
    pub limit: String,
    pub remaining: String,
    pub reset: String,
}

impl Default for HeaderNames {
    fn default() -> Self {
        HeaderNames {
            limit: "RateLimit-Limit".into(),
            remaining: "RateLimit-Remaining".into(),
            reset: "RateLimit-Reset".into(),
        }
    }
}

/// `CONSUME`: whether a rejected request still counts on the limits that admitted it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Consume {
    /// Every matched limit counts the hit (the reference's behaviour).
    #[default]
    Always,
    /// A request answered OVER_LIMIT counts on none of its limits.
    AllOrNothing,
}

/// Process-wide behaviour switches (from settings; fixed for the process's life).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ServiceOptions {
    /// `SHADOW_MODE`: an OVER_LIMIT overall answer becomes OK (statuses keep theirs).
    pub global_shadow_mode: bool,
    /// `QUOTA_MODE`: every descriptor but `unlimited` ones is a quota descriptor.
    pub global_quota_mode: bool,
    /// `LIMIT_RESPONSE_HEADERS_ENABLED` with its header names.
    pub response_headers: Option<HeaderNames>,
    /// `RESPONSE_DYNAMIC_METADATA`.
    pub dynamic_metadata: bool,
    pub consume: Consume,
    pub caps: RequestCaps,
    /// `BACKEND_FAILURE_POLICY`: what a request gets when the counter backend fails.
    pub failure_policy: FailurePolicy,
}

/// `BACKEND_FAILURE_POLICY`: the answer when the counter backend (Redis) cannot be
/// reached. The memory backend never fails, so this only matters for Redis.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum FailurePolicy {
    /// Answer `UNAVAILABLE` and let Envoy's `failure_mode_deny` decide (the reference's
    /// behaviour).
    #[default]
    Error,
    /// Answer OK: nothing is limited while the backend is down.
    Allow,
    /// Count in this process's memory until the backend is back: limits hold per
    /// replica instead of across replicas.
    Local,
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

/// What a descriptor matched, before counting.
#[derive(Clone, Copy, Debug)]
enum Matched<'a> {
    /// No rule, an unknown domain, or a rule without a limit.
    NoLimit,
    Unlimited(&'a Rule),
    Limited(&'a Rule),
    /// No rule, in a domain with a `default_limit`.
    Default(&'a Domain),
    Override(&'a LimitParams),
    /// Limited, but another matched rule `replaces` it in this request.
    Replaced,
}

/// One limit a descriptor is counted against.
#[derive(Clone, Copy, Debug)]
struct Planned<'a> {
    identity: LimitIdentity<'a>,
    params: &'a LimitParams,
    /// The limit's `name`, reported as `current_limit.name` when it decides.
    name: Option<&'a str>,
    /// The rule whose path shapes the counter key (`share_threshold`); `None` for
    /// defaults and overrides, keyed by the request's own entries.
    rule: Option<&'a Rule>,
}

/// One descriptor's answer, before it becomes a proto status.
#[derive(Clone, Copy, Debug)]
struct Verdict<'a> {
    over_limit: bool,
    /// The limit reported in `current_limit`.
    reported: Option<Planned<'a>>,
    remaining: u32,
    reset_after: Nanos,
    unlimited: bool,
    quota: bool,
    /// The matched rule, for its name, metadata and custom response.
    rule: Option<&'a Rule>,
}

impl<'a> Verdict<'a> {
    fn ok() -> Self {
        Verdict {
            over_limit: false,
            reported: None,
            remaining: 0,
            reset_after: Nanos(0),
            unlimited: false,
            quota: false,
            rule: None,
        }
    }
}

/// A request, matched and planned: what each descriptor needs and every counter of the
/// request (`limits` and `counters` run in parallel; a descriptor's `Plan::Counted` gives
/// its range of them).
struct RequestPlan<'a> {
    now: Nanos,
    domain_name: &'a str,
    matched: SmallVec<[Matched<'a>; 8]>,
    plans: SmallVec<[Plan<'a>; 8]>,
    limits: SmallVec<[Planned<'a>; 8]>,
    counters: SmallVec<[Counter<'a, Entry>; 8]>,
}

/// The counters of a rejected request that hold its hits (`CONSUME=all_or_nothing`).
fn taken<'a>(plan: &RequestPlan<'a>, applied: &[Applied]) -> SmallVec<[Counter<'a, Entry>; 8]> {
    plan.counters.iter().zip(applied).filter(|(_, a)| a.consumed).map(|(c, _)| *c).collect()
}

/// After a rollback, descriptors that passed report what they have once their hits are
/// back.
fn after_rollback(plan: &RequestPlan<'_>, verdicts: &mut [Verdict<'_>]) {
    for (p, verdict) in plan.plans.iter().zip(verdicts.iter_mut()) {
        if let (Plan::Counted { hits, .. }, false, Some(limit)) = (p, verdict.over_limit, verdict.reported) {
            let most = if limit.params.algorithm.has_burst() {
                limit.params.capacity
            } else {
                u64::from(limit.params.requests_per_unit)
            };
            verdict.remaining = (u64::from(verdict.remaining) + hits).min(most).min(u64::from(u32::MAX)) as u32;
        }
    }
}

/// A descriptor's plan: answered without counting, or counted against `limits` (a
/// range of the request's planned limits, which the store applies in one batch).
#[derive(Clone, Debug)]
enum Plan<'a> {
    Decided(Verdict<'a>),
    /// `hits` are what stats count: 0 when the descriptor gives hits back.
    Counted {
        limits: std::ops::Range<usize>,
        hits: u64,
        rule: Option<&'a Rule>,
    },
}

impl RateLimiter {
    /// A limiter with its own stats (the reference's default `NEAR_LIMIT_RATIO`).
    pub fn new(config: SharedConfig, store: Store, clock: Clock, options: ServiceOptions) -> Self {
        let stats = Stats::new(StatsOptions { near_limit_ratio: 0.8, ..StatsOptions::default() });
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

    /// Answers one `ShouldRateLimit` call.
    pub async fn should_rate_limit(&self, request: &RateLimitRequest) -> Result<RateLimitResponse, ServiceError> {
        let result = match self.store {
            // The memory store never waits: answer on this stack. The answer's future is a
            // few kilobytes; kept out of this one, every call's boxed future stays small.
            Store::Memory(_) => self.answer_now(request),
            Store::Redis(_) => Box::pin(self.answer(request)).await,
        };
        self.count_error(&result);
        result
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

    /// [`RateLimiter::should_rate_limit`] for callers without an async runtime (tests,
    /// benches). The memory store never waits, so this completes at once; a backend that
    /// does wait (Redis) needs the async call.
    pub fn decide(&self, request: &RateLimitRequest) -> Result<RateLimitResponse, ServiceError> {
        let result = self.answer_now(request);
        self.count_error(&result);
        result
    }

    /// The memory store's path: everything on this stack, nothing awaited.
    fn answer_now(&self, request: &RateLimitRequest) -> Result<RateLimitResponse, ServiceError> {
        let Store::Memory(memory) = &self.store else {
            return Err(ServiceError::Unavailable("this backend answers asynchronously: use should_rate_limit".into()));
        };
        validate(request, &self.options.caps)?;
        let snapshot = self.config.load();
        let Some(snapshot) = snapshot.as_deref() else {
            return Err(ServiceError::Unavailable("no rate limit configuration loaded".into()));
        };
        let overrides = overrides_of(request);
        let plan = self.plan(request, snapshot, &overrides);
        let applied = apply_in_memory(memory, &plan.counters, plan.now);
        let (mut verdicts, over) = self.conclude(request, &plan, &applied);
        if over && self.rolls_back() {
            refund_in_memory(memory, &taken(&plan, &applied), plan.now);
            after_rollback(&plan, &mut verdicts);
        }
        Ok(self.respond(request, &verdicts, over))
    }

    /// The path of a store that waits (Redis): one batch out, one back.
    async fn answer(&self, request: &RateLimitRequest) -> Result<RateLimitResponse, ServiceError> {
        validate(request, &self.options.caps)?;
        let snapshot = self.config.load();
        let Some(snapshot) = snapshot.as_deref() else {
            return Err(ServiceError::Unavailable("no rate limit configuration loaded".into()));
        };
        let overrides = overrides_of(request);
        let plan = self.plan(request, snapshot, &overrides);
        let applied = if plan.counters.is_empty() {
            Batch::new()
        } else {
            match self.store.apply_batch(&plan.counters, plan.now).await {
                Ok(applied) => applied,
                Err(e) if self.options.failure_policy == FailurePolicy::Allow => {
                    // BACKEND_FAILURE_POLICY=allow: answer as if nothing were limited.
                    tracing::debug!(error = %e, "backend failed; allowing the request");
                    let verdicts: SmallVec<[Verdict<'_>; 8]> = plan
                        .plans
                        .iter()
                        .map(|p| match p {
                            Plan::Decided(v) => *v,
                            Plan::Counted { .. } => Verdict { quota: self.options.global_quota_mode, ..Verdict::ok() },
                        })
                        .collect();
                    return Ok(self.respond(request, &verdicts, false));
                }
                Err(e) => return Err(ServiceError::Backend(e.to_string())),
            }
        };
        let (mut verdicts, over) = self.conclude(request, &plan, &applied);
        if over && self.rolls_back() {
            let taken = taken(&plan, &applied);
            if !taken.is_empty() {
                match self.store.refund_batch(&taken, plan.now).await {
                    Ok(()) => after_rollback(&plan, &mut verdicts),
                    Err(e) => tracing::warn!(error = %e, "could not take back the hits of a rejected request"),
                }
            }
        }
        Ok(self.respond(request, &verdicts, over))
    }

    /// Whether a rejected request's hits are taken back (`CONSUME=all_or_nothing`; in
    /// global shadow mode nothing is rejected).
    fn rolls_back(&self) -> bool {
        self.options.consume == Consume::AllOrNothing && !self.options.global_shadow_mode
    }

    /// Matches every descriptor and lists every counter the request touches, so the store
    /// gets them in one batch (one round trip to Redis).
    fn plan<'a>(
        &self,
        request: &'a RateLimitRequest,
        snapshot: &'a crate::config::ConfigSnapshot,
        overrides: &'a [Option<LimitParams>],
    ) -> RequestPlan<'a> {
        let now = self.clock.now();
        let domain_name = request.domain.as_str();
        let domain = snapshot.rules.domain(domain_name);
        if domain.is_none() {
            self.stats.domain_not_found(domain_name, request.descriptors.len() as u64);
        }
        let mut matched: SmallVec<[Matched<'a>; 8]> =
            request.descriptors.iter().zip(overrides).map(|(d, o)| resolve(domain, d, o.as_ref())).collect();
        let replaced = replaced_names(&matched);
        let kept = |limit: &Limit| limit.name.as_deref().is_none_or(|name| !replaced.contains(&name));
        for m in matched.iter_mut() {
            // A rule whose every limit is replaced answers as a replaced rule: OK, no limit.
            if let Matched::Limited(rule) = m
                && !rule.limits.is_empty()
                && !rule.limits.iter().any(kept)
                && !(rule.inherit_default && domain.is_some_and(|d| !d.defaults().is_empty()))
            {
                *m = Matched::Replaced;
            }
        }
        let request_hits = u64::from(request.hits_addend.max(1));
        let mut plans: SmallVec<[Plan<'a>; 8]> = SmallVec::with_capacity(matched.len());
        let mut limits: SmallVec<[Planned<'a>; 8]> = SmallVec::new();
        let mut counters: SmallVec<[Counter<'a, Entry>; 8]> = SmallVec::new();
        for (descriptor, m) in request.descriptors.iter().zip(&matched) {
            let hits = descriptor.hits_addend.as_ref().map_or(request_hits, |h| h.value);
            let give_back = descriptor.is_negative_hits;
            let start = limits.len();
            let rule = match m {
                Matched::NoLimit | Matched::Replaced => {
                    plans.push(Plan::Decided(Verdict { quota: self.options.global_quota_mode, ..Verdict::ok() }));
                    continue;
                }
                Matched::Unlimited(rule) => {
                    let v = Verdict { remaining: u32::MAX, unlimited: true, rule: Some(rule), ..Verdict::ok() };
                    plans.push(Plan::Decided(v));
                    continue;
                }
                Matched::Override(params) => {
                    let identity = LimitIdentity::Override { domain: domain_name, unit: params.unit };
                    limits.push(Planned { identity, params, name: None, rule: None });
                    None
                }
                Matched::Default(domain) => {
                    limits.extend(defaults_of(domain));
                    None
                }
                Matched::Limited(rule) => {
                    limits.extend(rule.limits.iter().filter(|l| kept(l)).map(|l| Planned {
                        identity: LimitIdentity::Rule(l.counter_id),
                        params: &l.params,
                        name: l.name.as_deref(),
                        rule: Some(rule),
                    }));
                    if rule.inherit_default
                        && let Some(domain) = domain
                    {
                        limits.extend(defaults_of(domain));
                    }
                    Some(*rule)
                }
            };
            counters.extend(limits[start..].iter().map(|p| counter_of(domain_name, descriptor, p, hits, give_back)));
            let counted = if give_back { 0 } else { hits };
            plans.push(Plan::Counted { limits: start..limits.len(), hits: counted, rule });
        }
        RequestPlan { now, domain_name, matched, plans, limits, counters }
    }

    /// Every descriptor's verdict from the store's outcomes, and the overall answer.
    fn conclude<'a>(
        &self,
        request: &'a RateLimitRequest,
        plan: &RequestPlan<'a>,
        applied: &[Applied],
    ) -> (SmallVec<[Verdict<'a>; 8]>, bool) {
        let mut verdicts: SmallVec<[Verdict<'a>; 8]> = SmallVec::with_capacity(plan.plans.len());
        for (p, (descriptor, m)) in plan.plans.iter().zip(request.descriptors.iter().zip(&plan.matched)) {
            verdicts.push(match p {
                Plan::Decided(v) => *v,
                Plan::Counted { limits: range, hits, rule } => self.verdict(
                    plan.domain_name,
                    descriptor,
                    m,
                    *rule,
                    &plan.limits[range.clone()],
                    &applied[range.clone()],
                    *hits,
                ),
            });
        }
        let over = is_over_limit(&verdicts);
        (verdicts, over)
    }

    /// One counted descriptor's answer from its limits' outcomes, with its stats.
    #[allow(clippy::too_many_arguments)] // one call site; a struct would only rename them
    fn verdict<'a>(
        &self,
        domain_name: &str,
        descriptor: &RateLimitDescriptor,
        matched: &Matched<'a>,
        rule: Option<&'a Rule>,
        limits: &[Planned<'a>],
        applied: &[Applied],
        hits: u64,
    ) -> Verdict<'a> {
        // Report the first limit that rejected, else the one with the least remaining (the
        // first on a tie): SPEC §9.1.
        let mut reported: Option<(Outcome, Planned<'a>, bool)> = None;
        for (limit, applied) in limits.iter().zip(applied) {
            let outcome = applied.outcome;
            let better = match &reported {
                None => true,
                Some((best, _, _)) => !best.over_limit && (outcome.over_limit || outcome.remaining < best.remaining),
            };
            if better {
                reported = Some((outcome, *limit, applied.cached));
            }
        }
        let Some((outcome, limit, cached)) = reported else { return Verdict::ok() };
        if self.stats.enabled() {
            let shadow = rule.is_some_and(|r| r.shadow_mode);
            let ratio = self.stats.near_limit_ratio();
            let record = |series: &RuleStats| {
                if cached {
                    series.record_cached(hits, shadow);
                } else {
                    series.record(&outcome, limit.params.requests_per_unit, hits, shadow, ratio);
                }
            };
            // Borrowed where the series is resolved already: no reference-count traffic
            // on a rule's series, which every worker thread shares.
            match (matched, rule) {
                (_, Some(rule)) if rule.detailed_metric || rule.value_to_metric => {
                    record(&self.stats.for_values(value_stats_key(rule, &descriptor.entries)))
                }
                (_, Some(rule)) => record(self.stats.for_rule(rule)),
                (Matched::Default(domain), None) => record(
                    domain
                        .default_stats
                        .get_or_init(|| self.stats.keyed(vec![domain.name.to_string(), "default_limit".to_string()])),
                ),
                _ => record(&self.stats.for_values(override_stats_key(domain_name, &descriptor.entries))),
            }
        }
        let quota = self.options.global_quota_mode || rule.is_some_and(|r| r.quota_mode);
        let mut verdict = Verdict {
            over_limit: outcome.over_limit,
            reported: Some(limit),
            remaining: outcome.remaining,
            reset_after: outcome.reset_after,
            unlimited: false,
            quota,
            rule,
        };
        if rule.is_some_and(|r| r.shadow_mode) {
            // Counted and reported, but never enforced; remaining stays as counted.
            verdict.over_limit = false;
        }
        verdict
    }

    fn respond(&self, request: &RateLimitRequest, verdicts: &[Verdict<'_>], over: bool) -> RateLimitResponse {
        let statuses: Vec<DescriptorStatus> = verdicts.iter().map(status_of).collect();
        let mut response = RateLimitResponse {
            overall_code: if over { Code::OverLimit } else { Code::Ok } as i32,
            statuses,
            ..Default::default()
        };
        if let Some(names) = &self.options.response_headers {
            add_limit_headers(&mut response.response_headers_to_add, names, verdicts);
        }
        if over && self.options.global_shadow_mode {
            response.overall_code = Code::Ok as i32;
            if self.stats.enabled() {
                self.stats.global_shadow_mode.increment(1);
            }
        }
        if response.overall_code == Code::OverLimit as i32 {
            // The first rejecting descriptor whose rule has a custom answer gives it.
            let custom =
                verdicts.iter().filter(|v| v.over_limit).find_map(|v| v.rule.and_then(|r| r.response.as_ref()));
            if let Some(custom) = custom {
                response.raw_body = custom.body.to_vec();
                for (key, value) in custom.headers.iter() {
                    response.response_headers_to_add.push(HeaderValue {
                        key: key.to_string(),
                        value: value.to_string(),
                        raw_value: Vec::new(),
                    });
                }
            }
        }
        if self.options.dynamic_metadata {
            response.dynamic_metadata = Some(dynamic_metadata(request, verdicts));
        }
        response
    }
}

/// The reference's stats key of a `detailed_metric` or `value_to_metric` rule, which
/// names the request's values: a detailed rule shows every level's `key_value`; a
/// `value_to_metric` level shows its value; `share_threshold` levels keep the pattern.
fn value_stats_key<E: EntryView>(rule: &Rule, entries: &[E]) -> Vec<String> {
    let levels = rule.path.levels();
    let mut parts = Vec::with_capacity(levels.len() + 1);
    parts.push(rule.domain.to_string());
    for (level, entry) in levels.iter().zip(entries) {
        parts.push(if level.share_threshold {
            level.composite()
        } else if rule.detailed_metric || (level.value_to_metric && !entry.value().is_empty()) {
            format!("{}_{}", entry.key(), entry.value())
        } else if level.value_to_metric {
            entry.key().to_string()
        } else {
            level.composite()
        });
    }
    parts
}

/// The reference's stats key of a request's limit override: every entry, `key_value`.
fn override_stats_key<E: EntryView>(domain: &str, entries: &[E]) -> Vec<String> {
    let mut parts = vec![domain.to_string()];
    parts.extend(
        entries
            .iter()
            .map(|e| if e.value().is_empty() { e.key().to_string() } else { format!("{}_{}", e.key(), e.value()) }),
    );
    parts
}

/// Whether the request is OVER_LIMIT (before `SHADOW_MODE`): some non-quota descriptor is
/// over, or there are quota descriptors and every one of them is.
fn is_over_limit(verdicts: &[Verdict<'_>]) -> bool {
    let mut non_quota_over = false;
    let (mut quota_total, mut quota_over) = (0usize, 0usize);
    for v in verdicts {
        if v.quota && !v.unlimited {
            quota_total += 1;
            quota_over += usize::from(v.over_limit);
        } else if v.over_limit {
            non_quota_over = true;
        }
    }
    non_quota_over || (quota_total > 0 && quota_over == quota_total)
}

fn defaults_of(domain: &Domain) -> SmallVec<[Planned<'_>; 4]> {
    domain
        .defaults()
        .iter()
        .map(|l| Planned { identity: LimitIdentity::Default(l.counter_id), params: &l.params, name: None, rule: None })
        .collect()
}

fn counter_of<'a>(
    domain: &'a str,
    descriptor: &'a RateLimitDescriptor,
    limit: &Planned<'a>,
    hits: u64,
    give_back: bool,
) -> Counter<'a, Entry> {
    Counter {
        domain,
        entries: &descriptor.entries,
        rule: limit.rule,
        identity: limit.identity,
        params: limit.params,
        hits,
        give_back,
    }
}

/// The parameters of each descriptor's `limit` override, if it has one.
fn overrides_of(request: &RateLimitRequest) -> SmallVec<[Option<LimitParams>; 8]> {
    request
        .descriptors
        .iter()
        .map(|d| {
            d.limit.as_ref().map(|limit| {
                // `validate` has already rejected undefined units.
                let unit = Unit::from_proto_number(limit.unit).unwrap_or(Unit::Second);
                LimitParams::fixed_window(limit.requests_per_unit, unit)
            })
        })
        .collect()
}

fn resolve<'a>(
    domain: Option<&'a Domain>,
    descriptor: &RateLimitDescriptor,
    override_params: Option<&'a LimitParams>,
) -> Matched<'a> {
    // The domain check comes first: an override for an unknown domain is ignored, as in
    // the reference.
    let Some(domain) = domain else { return Matched::NoLimit };
    if let Some(params) = override_params {
        return Matched::Override(params);
    }
    if descriptor.entries.is_empty() {
        // As in the reference: a lookup of no entries finds no rule (and no defaults).
        return Matched::NoLimit;
    }
    match domain.find(&descriptor.entries) {
        Some(rule) if rule.unlimited => Matched::Unlimited(rule),
        Some(rule) if rule.is_limited() || (rule.inherit_default && !domain.defaults().is_empty()) => {
            Matched::Limited(rule)
        }
        Some(_) => Matched::NoLimit,
        None if !domain.defaults().is_empty() => Matched::Default(domain),
        None => Matched::NoLimit,
    }
}

/// Every limit name another matched rule of this request replaces (unlimited rules'
/// `replaces` count too; two rules naming each other's limits both lose them).
fn replaced_names<'a>(matched: &[Matched<'a>]) -> SmallVec<[&'a str; 4]> {
    let mut replaced = SmallVec::new();
    for m in matched {
        if let Matched::Limited(rule) | Matched::Unlimited(rule) = m {
            replaced.extend(rule.replaces.iter().map(|r| &**r));
        }
    }
    replaced
}

fn proto_duration(n: Nanos) -> ProtoDuration {
    ProtoDuration { seconds: (n.0 / Nanos::NANOS_PER_SEC) as i64, nanos: (n.0 % Nanos::NANOS_PER_SEC) as i32 }
}

fn status_of(v: &Verdict<'_>) -> DescriptorStatus {
    let code = if v.over_limit { Code::OverLimit } else { Code::Ok } as i32;
    match v.reported {
        None => DescriptorStatus { code, limit_remaining: v.remaining, ..Default::default() },
        Some(limit) => DescriptorStatus {
            code,
            current_limit: Some(RateLimit {
                name: limit.name.unwrap_or_default().to_string(),
                requests_per_unit: limit.params.requests_per_unit,
                unit: limit.params.unit.proto_number(),
            }),
            limit_remaining: v.remaining,
            duration_until_reset: Some(proto_duration(v.reset_after)),
            quota: None,
        },
    }
}

/// The reference's choice of descriptor for the `RateLimit-*` headers: the first with the
/// strictly smallest remaining among those with a limit, overridden by every non-quota
/// OVER_LIMIT one (so the last of those wins).
fn add_limit_headers(headers: &mut Vec<HeaderValue>, names: &HeaderNames, verdicts: &[Verdict<'_>]) {
    let mut chosen: Option<&Verdict<'_>> = None;
    for v in verdicts.iter().filter(|v| v.reported.is_some()) {
        if chosen.is_none_or(|c| v.remaining < c.remaining) {
            chosen = Some(v);
        }
    }
    for v in verdicts.iter().filter(|v| v.reported.is_some() && v.over_limit && !v.quota) {
        chosen = Some(v);
    }
    let Some(v) = chosen else { return };
    let Some(Planned { params, .. }) = v.reported else { return };
    let reset_secs = v.reset_after.0.div_ceil(Nanos::NANOS_PER_SEC);
    for (name, value) in [
        (&names.limit, params.requests_per_unit.to_string()),
        (&names.remaining, v.remaining.to_string()),
        (&names.reset, reset_secs.to_string()),
    ] {
        headers.push(HeaderValue { key: name.clone(), value, raw_value: Vec::new() });
    }
}

fn string_value(s: impl Into<String>) -> Value {
    Value { kind: Some(Kind::StringValue(s.into())) }
}

fn number_value(n: f64) -> Value {
    Value { kind: Some(Kind::NumberValue(n)) }
}

/// `RESPONSE_DYNAMIC_METADATA`: the request echoed back, plus the merged `metadata` of
/// every rule whose descriptor passed (the first descriptor wins a scalar conflict).
fn dynamic_metadata(request: &RateLimitRequest, verdicts: &[Verdict<'_>]) -> Struct {
    let mut fields = std::collections::HashMap::new();
    fields.insert("domain".to_string(), string_value(&request.domain));
    let descriptors = request
        .descriptors
        .iter()
        .map(|d| {
            let mut f = std::collections::HashMap::new();
            let entries = d.entries.iter().map(|e| string_value(format!("{}={}", e.key, e.value))).collect();
            f.insert("entries".to_string(), Value { kind: Some(Kind::ListValue(ListValue { values: entries })) });
            if let Some(limit) = &d.limit {
                let unit = Unit::from_proto_number(limit.unit).map_or("UNKNOWN", Unit::name);
                f.insert(
                    "limit".to_string(),
                    string_value(format!("requests_per_unit:{} unit:{unit}", limit.requests_per_unit)),
                );
            }
            if let Some(h) = &d.hits_addend {
                f.insert("hitsAddend".to_string(), number_value(h.value as f64));
            }
            Value { kind: Some(Kind::StructValue(Struct { fields: f })) }
        })
        .collect();
    fields.insert("descriptors".to_string(), Value { kind: Some(Kind::ListValue(ListValue { values: descriptors })) });
    if request.hits_addend != 0 {
        fields.insert("hitsAddend".to_string(), number_value(f64::from(request.hits_addend)));
    }
    let mut merged = Struct::default();
    for v in verdicts.iter().filter(|v| !v.over_limit && !v.unlimited) {
        if let Some(metadata) = v.rule.and_then(|r| r.metadata.as_ref()) {
            merge_struct(&mut merged, metadata);
        }
    }
    if !merged.fields.is_empty() {
        fields.insert("metadata".to_string(), Value { kind: Some(Kind::StructValue(merged)) });
    }
    Struct { fields }
}

/// Merges `from` into `into`: nested structs merge, existing scalars win.
fn merge_struct(into: &mut Struct, from: &Struct) {
    for (key, value) in &from.fields {
        match (into.fields.get_mut(key), &value.kind) {
            (None, _) => {
                into.fields.insert(key.clone(), value.clone());
            }
            (Some(Value { kind: Some(Kind::StructValue(existing)) }), Some(Kind::StructValue(incoming))) => {
                merge_struct(existing, incoming);
            }
            (Some(_), _) => {}
        }
    }
}

/// Rejects requests we must not answer, with a reason naming the problem (SPEC §1.3).
pub fn validate(request: &RateLimitRequest, caps: &RequestCaps) -> Result<(), ServiceError> {
    let invalid = |m: String| Err(ServiceError::InvalidArgument(m));
    if request.domain.is_empty() {
        return invalid("rate limit domain must not be empty".into());
    }
    if request.domain.len() > caps.max_entry_bytes {
        return invalid(format!(
            "rate limit domain is {} bytes, more than MAX_ENTRY_BYTES ({})",
            request.domain.len(),
            caps.max_entry_bytes
        ));
    }
    if request.descriptors.is_empty() {
        return invalid("rate limit descriptor list must not be empty".into());
    }
    if request.descriptors.len() > caps.max_descriptors {
        return invalid(format!(
            "request has {} descriptors, more than MAX_DESCRIPTORS ({})",
            request.descriptors.len(),
            caps.max_descriptors
        ));
    }
    for (i, d) in request.descriptors.iter().enumerate() {
        if d.entries.is_empty() && d.limit.is_some() {
            // The reference would count this under a malformed key.
            return invalid(format!("descriptor {i} has a limit override but no entries"));
        }
        if d.entries.len() > caps.max_entries {
            return invalid(format!(
                "descriptor {i} has {} entries, more than MAX_ENTRIES ({})",
                d.entries.len(),
                caps.max_entries
            ));
        }
        for (j, e) in d.entries.iter().enumerate() {
            if e.key.is_empty() {
                return invalid(format!("descriptor {i} entry {j} has an empty key"));
            }
            for (what, text) in [("key", &e.key), ("value", &e.value)] {
                if text.len() > caps.max_entry_bytes {
                    return invalid(format!(
                        "descriptor {i} entry {j} {what} is {} bytes, more than MAX_ENTRY_BYTES ({})",
                        text.len(),
                        caps.max_entry_bytes
                    ));
                }
            }
        }
        if let Some(limit) = &d.limit
            && Unit::from_proto_number(limit.unit).is_none()
        {
            let shown = if limit.unit == 0 { "UNKNOWN (0)".to_string() } else { format!("{} (undefined)", limit.unit) };
            return invalid(format!(
                "descriptor {i} limit override has unit {shown}; expected SECOND, MINUTE, HOUR, DAY, WEEK, MONTH or YEAR"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
