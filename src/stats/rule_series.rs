//! The stats series of one load's rules, in a table built with the load.
//!
//! Owns the link from a rule to its series without the rule holding it (rules are plain
//! data): the app builds a [`RuleSeries`] next to every snapshot it puts in force, and a
//! request indexes it by [`Rule::index`]. A rule's series is resolved on its first hit
//! (most rules of a large set are never hit, and each series costs the exporter a few
//! hundred bytes); after that, recording is an index and an atomic load, no lookup.

use std::borrow::Cow;
use std::sync::{Arc, OnceLock};

use super::{RuleStats, Stats};
use crate::rules::{Domain, Rule, RuleSet};

/// Per-rule and per-domain (`default_limit`) series of one rule set.
#[derive(Debug)]
pub struct RuleSeries {
    rules: Box<[OnceLock<Arc<RuleStats>>]>,
    domain_defaults: Box<[OnceLock<Arc<RuleStats>>]>,
}

impl RuleSeries {
    /// An empty table sized for `rules`.
    pub fn new(rules: &RuleSet) -> Self {
        RuleSeries {
            rules: (0..rules.rule_slots()).map(|_| OnceLock::new()).collect(),
            domain_defaults: (0..rules.domain_slots()).map(|_| OnceLock::new()).collect(),
        }
    }
}

impl Stats {
    /// The series of a rule's stats key. Borrowed from `series`, so the hot path does no
    /// reference-count traffic on a series every worker thread shares; a rule from
    /// another rule set than `series` was built for (never, when they are swapped in
    /// together) still gets its own series.
    pub fn for_rule<'s>(&self, series: &'s RuleSeries, rule: &Rule) -> Cow<'s, Arc<RuleStats>> {
        match series.rules.get(rule.index as usize) {
            Some(slot) => Cow::Borrowed(slot.get_or_init(|| self.keyed(rule.stats_parts()))),
            None => Cow::Owned(self.keyed(rule.stats_parts())),
        }
    }

    /// The series of descriptors that only a domain's `default_limit` counts.
    pub fn for_domain_default<'s>(&self, series: &'s RuleSeries, domain: &Domain) -> Cow<'s, Arc<RuleStats>> {
        let parts = || vec![domain.name.to_string(), "default_limit".to_string()];
        match series.domain_defaults.get(domain.index as usize) {
            Some(slot) => Cow::Borrowed(slot.get_or_init(|| self.keyed(parts()))),
            None => Cow::Owned(self.keyed(parts())),
        }
    }
}
