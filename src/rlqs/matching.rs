//! From a bucket to what its clients may do: the rule it matches and the quota it gets.
//!
//! Owns the mapping of an RLQS bucket onto the domain's rule tree (the entries' order is
//! `rules::Domain::bucket_levels`'s) and of the rule onto a [`Target`]: `unlimited`, a
//! whitelist rule, `shadow_mode` (the rule's or the global `SHADOW_MODE`) and an unknown
//! domain or unmatched bucket without a `default_limit` allow everything; a limit of 0
//! denies everything; any other limit is a [`Quota`] to divide. Of several limits, the
//! lowest rate applies (Envoy's token bucket enforces one rate per bucket).
//!
//! Pure: no state, no clock, no I/O.

use std::time::Duration;

use crate::limiter::{Algorithm, LimitParams};
use crate::rules::{Limit, RuleSet};

/// A limit as RLQS hands it out: `per_window` requests every `window`, at most `burst`
/// at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Quota {
    pub per_window: u32,
    pub window: Duration,
    pub burst: u32,
}

impl Quota {
    fn of(params: &LimitParams) -> Quota {
        let burst = match params.algorithm {
            // The bucket's own size: what the rule lets through at once.
            Algorithm::TokenBucket | Algorithm::LeakyBucket => u32::try_from(params.capacity).unwrap_or(u32::MAX),
            // A window admits its whole limit at once.
            Algorithm::FixedWindow | Algorithm::SlidingWindow => params.requests_per_unit,
        };
        Quota { per_window: params.requests_per_unit, window: Duration::from_secs(params.window_secs), burst }
    }

    /// Requests per second.
    pub fn rate(&self) -> f64 {
        f64::from(self.per_window) / self.window.as_secs_f64().max(1e-9)
    }

    /// Whether `self` admits fewer requests per second than `other`, compared exactly.
    fn stricter_than(&self, other: &Quota) -> bool {
        u128::from(self.per_window) * other.window.as_nanos() < u128::from(other.per_window) * self.window.as_nanos()
    }
}

/// What a bucket's clients are told.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// No rules are loaded yet: no assignment (Envoy applies `no_assignment_behavior`).
    Unassigned,
    AllowAll,
    DenyAll,
    /// A limit shared by every client of the bucket.
    Limit(Quota),
}

/// A bucket's [`Target`] and the rule behind it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolved {
    pub target: Target,
    /// A rule (or the domain's `default_limit`) applies; when a reload takes this away
    /// from a bucket, its clients are told to abandon it.
    pub matched: bool,
    /// The rule's stats key (`domain.key_value`), or `default_limit`, for operators.
    pub rule: Option<String>,
}

impl Resolved {
    const UNMATCHED: Resolved = Resolved { target: Target::AllowAll, matched: false, rule: None };
}

/// Resolves the bucket `entries` (any order) of `domain` under `rules` (`None`: no rules
/// loaded yet); `shadow` is the global `SHADOW_MODE`.
pub fn resolve(rules: Option<&RuleSet>, domain: &str, entries: &[(&str, &str)], shadow: bool) -> Resolved {
    let Some(rules) = rules else {
        return Resolved { target: Target::Unassigned, matched: false, rule: None };
    };
    let Some(domain) = rules.domain(domain) else { return Resolved::UNMATCHED };
    let levels = domain.bucket_levels(entries);
    let Some(rule) = domain.find(&levels) else {
        if domain.defaults().is_empty() {
            return Resolved::UNMATCHED;
        }
        let target = if shadow { Target::AllowAll } else { strictest(domain.defaults()) };
        return Resolved { target, matched: true, rule: Some("default_limit".into()) };
    };
    let limits: Vec<&Limit> =
        rule.limits.iter().chain(if rule.inherit_default { domain.defaults() } else { &[] }).collect();
    let target = if rule.unlimited || rule.shadow_mode || shadow || limits.is_empty() {
        Target::AllowAll
    } else {
        strictest(limits)
    };
    Resolved { target, matched: true, rule: Some(rule.stats_key()) }
}

/// The lowest-rate limit of `limits` (at least one), as a target.
fn strictest<'a>(limits: impl IntoIterator<Item = &'a Limit>) -> Target {
    let mut best: Option<Quota> = None;
    for limit in limits {
        let quota = Quota::of(&limit.params);
        if best.is_none_or(|b| quota.stricter_than(&b)) {
            best = Some(quota);
        }
    }
    match best {
        Some(q) if q.per_window == 0 => Target::DenyAll,
        Some(q) => Target::Limit(q),
        None => Target::AllowAll,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::LimitRegistry;
    use crate::snapshot::load_texts;

    const RULES: &str = r#"
domain: api
descriptors:
  - key: api_key
    value: free-*
    rate_limit: {unit: second, requests_per_unit: 0}
  - key: api_key
    value: internal
    rate_limit: {unlimited: true}
  - key: api_key
    rate_limits:
      - {unit: second, requests_per_unit: 100}
      - {unit: minute, requests_per_unit: 600}
    descriptors:
      - key: path
        value: /healthz
  - key: shadowed
    shadow_mode: true
    rate_limit: {unit: second, requests_per_unit: 1}
"#;

    fn resolved(entries: &[(&str, &str)]) -> Resolved {
        let snapshot = load_texts(&[("api.yaml", RULES)], false, &LimitRegistry::new()).unwrap();
        resolve(Some(&snapshot.rules), "api", entries, false)
    }

    #[test]
    fn each_kind_of_rule_has_its_target() {
        assert_eq!(resolved(&[("api_key", "free-1")]).target, Target::DenyAll);
        assert_eq!(resolved(&[("api_key", "internal")]).target, Target::AllowAll);
        assert_eq!(resolved(&[("shadowed", "x")]).target, Target::AllowAll);
        assert_eq!(resolved(&[("path", "/healthz"), ("api_key", "k")]).target, Target::AllowAll);
        // 600 per minute is 10 per second: stricter than 100 per second.
        let limited = resolved(&[("api_key", "k1")]);
        assert_eq!(
            limited.target,
            Target::Limit(Quota { per_window: 600, window: Duration::from_secs(60), burst: 600 })
        );
        assert_eq!(limited.rule.as_deref(), Some("api.api_key"));
        assert!(limited.matched);
    }

    #[test]
    fn no_rule_no_domain_and_no_rules_loaded() {
        assert_eq!(resolved(&[("other", "x")]), Resolved::UNMATCHED);
        let snapshot = load_texts(&[("api.yaml", RULES)], false, &LimitRegistry::new()).unwrap();
        assert_eq!(resolve(Some(&snapshot.rules), "nope", &[("api_key", "k")], false), Resolved::UNMATCHED);
        assert_eq!(resolve(None, "api", &[("api_key", "k")], false).target, Target::Unassigned);
        assert_eq!(resolve(Some(&snapshot.rules), "api", &[("api_key", "k")], true).target, Target::AllowAll);
    }
}
