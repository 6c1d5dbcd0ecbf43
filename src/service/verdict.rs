//! Verdicts: what each descriptor's limits decided, and what the request as a whole is.
//!
//! Owns reading the store's outcomes back into one status per descriptor (the limit that
//! rejected, else the one with the least left), per-rule shadow mode, quota mode's
//! overall answer, the reference's stats for each decision, and what a rollback under
//! `CONSUME=all_or_nothing` takes back and reports.

use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::Entry;
use envoy_types::pb::envoy::service::ratelimit::v3::RateLimitRequest;
use smallvec::SmallVec;

use super::plan::{Matched, Plan, Planned, RequestPlan};
use crate::clock::Nanos;
use crate::limiter::{self, Outcome};
use crate::rules::{self, EntryView, Rule};
use crate::stats::{RuleSeries, RuleStats, Stats};
use crate::store::{Applied, Counter};

/// One descriptor's answer, before it becomes a proto status.
#[derive(Clone, Copy, Debug)]
pub(super) struct Verdict<'a> {
    pub over_limit: bool,
    /// The limit reported in `current_limit`.
    pub reported: Option<Planned<'a>>,
    pub remaining: u32,
    pub reset_after: Nanos,
    pub unlimited: bool,
    pub quota: bool,
    /// The matched rule, for its name, metadata and custom response.
    pub rule: Option<&'a Rule>,
}

impl<'a> Verdict<'a> {
    pub fn ok() -> Self {
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

/// Every descriptor's verdict from the store's outcomes (counted in `stats`), and the
/// overall answer.
pub(super) fn conclude<'a>(
    request: &'a RateLimitRequest,
    plan: &RequestPlan<'a>,
    applied: &[Applied],
    (stats, series): (&Stats, &RuleSeries),
    global_quota_mode: bool,
) -> (SmallVec<[Verdict<'a>; 8]>, bool) {
    let mut verdicts: SmallVec<[Verdict<'a>; 8]> = SmallVec::with_capacity(plan.plans.len());
    for (p, (descriptor, m)) in plan.plans.iter().zip(request.descriptors.iter().zip(&plan.matched)) {
        verdicts.push(match p {
            Plan::Decided(v) => *v,
            Plan::Counted { limits: range, hits, rule } => verdict(
                (stats, series),
                global_quota_mode,
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

/// One counted descriptor's answer from its limits' outcomes, with its stats. Limits a
/// failed backend's policy waived do not report; with all waived, the descriptor is OK.
#[allow(clippy::too_many_arguments)] // one call site; a struct would only rename them
fn verdict<'a>(
    (stats, series): (&Stats, &RuleSeries),
    global_quota_mode: bool,
    domain_name: &str,
    descriptor: &RateLimitDescriptor,
    matched: &Matched<'a>,
    rule: Option<&'a Rule>,
    limits: &[Planned<'a>],
    applied: &[Applied],
    hits: u64,
) -> Verdict<'a> {
    // Report the first limit that rejected, else the one with the least remaining (the
    // first on a tie).
    let mut reported: Option<(Outcome, Planned<'a>, bool)> = None;
    for (limit, applied) in limits.iter().zip(applied).filter(|(_, a)| !a.waived) {
        let outcome = applied.outcome;
        let better = match &reported {
            None => true,
            Some((best, _, _)) => !best.over_limit && (outcome.over_limit || outcome.remaining < best.remaining),
        };
        if better {
            reported = Some((outcome, *limit, applied.cached));
        }
    }
    let Some((outcome, limit, cached)) = reported else {
        return Verdict { quota: global_quota_mode, ..Verdict::ok() };
    };
    if stats.enabled() {
        let shadow = rule.is_some_and(|r| r.shadow_mode);
        let ratio = stats.near_limit_ratio();
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
                record(&stats.for_values(value_stats_key(rule, &descriptor.entries)))
            }
            (_, Some(rule)) => record(&stats.for_rule(series, rule)),
            (Matched::Default(domain), None) => record(&stats.for_domain_default(series, domain)),
            _ => record(&stats.for_values(override_stats_key(domain_name, &descriptor.entries))),
        }
    }
    let quota = global_quota_mode || rule.is_some_and(|r| r.quota_mode);
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

/// Whether the request is OVER_LIMIT (before `SHADOW_MODE`): some non-quota descriptor is
/// over, or there are quota descriptors and every one of them is.
pub(super) fn is_over_limit(verdicts: &[Verdict<'_>]) -> bool {
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

/// The counters of a rejected request that hold its hits (`CONSUME=all_or_nothing`).
pub(super) fn taken<'a>(plan: &RequestPlan<'a>, applied: &[Applied]) -> SmallVec<[Counter<'a, Entry>; 8]> {
    plan.counters.iter().zip(applied).filter(|(_, a)| a.consumed).map(|(c, _)| *c).collect()
}

/// After a rollback, descriptors that passed report what they have once their hits are
/// back.
pub(super) fn after_rollback(plan: &RequestPlan<'_>, verdicts: &mut [Verdict<'_>]) {
    for (p, verdict) in plan.plans.iter().zip(verdicts.iter_mut()) {
        if let (Plan::Counted { hits, .. }, false, Some(limit)) = (p, verdict.over_limit, verdict.reported) {
            verdict.remaining = limiter::remaining_after_refund(limit.params, verdict.remaining, *hits);
        }
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
        } else if rule.detailed_metric {
            // The reference joins key and value here even when the value is empty.
            format!("{}_{}", entry.key(), entry.value())
        } else if level.value_to_metric {
            rules::composite(entry.key(), entry.value())
        } else {
            level.composite()
        });
    }
    parts
}

/// The reference's stats key of a request's limit override: every entry, `key_value`.
fn override_stats_key<E: EntryView>(domain: &str, entries: &[E]) -> Vec<String> {
    let mut parts = vec![domain.to_string()];
    parts.extend(entries.iter().map(|e| rules::composite(e.key(), e.value())));
    parts
}
