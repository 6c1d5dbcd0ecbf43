//! Planning a request: which rule each descriptor matches, what `replaces` removes, and
//! every counter the request touches, listed for the store as one batch.
//!
//! Matching is `rules`' (the reference's tree walk); this room decides what a match means
//! for counting: `unlimited` and whitelisted rules are answered at once, a descriptor's
//! `limit` override bypasses the rules, a domain's `default_limit` covers descriptors no
//! rule matches, and named limits another matched rule `replaces` are dropped.

use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::Entry;
use envoy_types::pb::envoy::service::ratelimit::v3::RateLimitRequest;
use smallvec::SmallVec;

use super::verdict::Verdict;
use crate::clock::Nanos;
use crate::limiter::{LimitParams, Unit};
use crate::rules::{Domain, Limit, Rule, RuleSet};
use crate::store::Counter;
use crate::store::key::LimitIdentity;

/// What a descriptor matched, before counting.
#[derive(Clone, Copy, Debug)]
pub(super) enum Matched<'a> {
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
pub(super) struct Planned<'a> {
    pub identity: LimitIdentity<'a>,
    pub params: &'a LimitParams,
    /// The limit's `name`, reported as `current_limit.name` when it decides.
    pub name: Option<&'a str>,
    /// The rule whose path shapes the counter key (`share_threshold`); `None` for
    /// defaults and overrides, keyed by the request's own entries.
    pub rule: Option<&'a Rule>,
}

/// A request, matched and planned: what each descriptor needs and every counter of the
/// request (`limits` and `counters` run in parallel; a descriptor's `Plan::Counted` gives
/// its range of them).
pub(super) struct RequestPlan<'a> {
    pub now: Nanos,
    pub domain_name: &'a str,
    /// Whether the request's domain has rules (else every descriptor is OK, unlimited).
    pub domain_found: bool,
    pub matched: SmallVec<[Matched<'a>; 8]>,
    pub plans: SmallVec<[Plan<'a>; 8]>,
    pub limits: SmallVec<[Planned<'a>; 8]>,
    pub counters: SmallVec<[Counter<'a, Entry>; 8]>,
}

/// A descriptor's plan: answered without counting, or counted against `limits` (a
/// range of the request's planned limits, which the store applies in one batch).
#[derive(Clone, Debug)]
pub(super) enum Plan<'a> {
    Decided(Verdict<'a>),
    /// `hits` are what stats count: 0 when the descriptor gives hits back.
    Counted {
        limits: std::ops::Range<usize>,
        hits: u64,
        rule: Option<&'a Rule>,
    },
}

/// Matches every descriptor and lists every counter the request touches, so the store
/// gets them in one batch (one round trip to Redis). `global_quota_mode` marks the
/// descriptors answered without counting as quota descriptors (`QUOTA_MODE`).
pub(super) fn plan<'a>(
    request: &'a RateLimitRequest,
    rules: &'a RuleSet,
    overrides: &'a [Option<LimitParams>],
    now: Nanos,
    global_quota_mode: bool,
) -> RequestPlan<'a> {
    let domain_name = request.domain.as_str();
    let domain = rules.domain(domain_name);
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
                plans.push(Plan::Decided(Verdict { quota: global_quota_mode, ..Verdict::ok() }));
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
    RequestPlan { now, domain_name, domain_found: domain.is_some(), matched, plans, limits, counters }
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
pub(super) fn overrides_of(request: &RateLimitRequest) -> SmallVec<[Option<LimitParams>; 8]> {
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
