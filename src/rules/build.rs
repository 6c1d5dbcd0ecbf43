//! Compiling validated rule files into a [`RuleSet`].
//!
//! Owns the checks that need more than one node: duplicate siblings (the reference's
//! `duplicate descriptor composite key`), duplicate domains across files unless merging,
//! and the merge itself (top-level descriptor lists appended, as in the reference).
//! Duplicates are reported at the second occurrence; a duplicate domain names the file
//! and position of the first.

use std::sync::Arc;

use super::wildcard::Pattern;
use super::{Children, Domain, Level, Limit, LimitRegistry, Rule, RuleSet};
use crate::config::diag::{Diagnostic, Diagnostics};
use crate::config::schema::{DescriptorDef, DomainDoc};
use crate::limiter::LimitParams;

/// Builds the rule set from every document of a load, in load order.
pub fn build(docs: &[DomainDoc], merge_domains: bool, registry: &LimitRegistry, diags: &mut Diagnostics) -> RuleSet {
    let mut set = RuleSet::default();
    let mut first_seen: std::collections::HashMap<&str, &DomainDoc> = std::collections::HashMap::new();
    for doc in docs {
        if let Some(first) = first_seen.get(doc.domain.as_str()) {
            if !merge_domains {
                diags.push(Diagnostic::error(
                    &doc.file,
                    doc.domain_pos,
                    format!(
                        "duplicate domain '{}' in config file (first defined at {}:{})",
                        doc.domain, first.file, first.domain_pos
                    ),
                ));
                continue;
            }
        } else {
            first_seen.insert(&doc.domain, doc);
        }
        let domain = set.domains.entry(doc.domain.as_str().into()).or_insert_with(|| Domain {
            name: Arc::from(doc.domain.as_str()),
            rules: Vec::new(),
            children: Vec::new(),
            root: Children::default(),
        });
        let mut builder = Builder { domain, registry, file: &doc.file, diags };
        for def in &doc.descriptors {
            builder.add(None, def, &[]);
        }
    }
    set
}

struct Builder<'a> {
    domain: &'a mut Domain,
    registry: &'a LimitRegistry,
    file: &'a Arc<str>,
    diags: &'a mut Diagnostics,
}

impl Builder<'_> {
    fn add(&mut self, parent: Option<u32>, def: &DescriptorDef, parent_path: &[Level]) {
        if def.key.is_empty() {
            return; // already reported by the schema reader
        }
        let level = Level {
            key: def.key.as_str().into(),
            value: def.value.as_str().into(),
            share_threshold: def.share_threshold,
            value_to_metric: def.value_to_metric,
        };
        let mut path = parent_path.to_vec();
        path.push(level);
        let index = u32::try_from(self.domain.rules.len()).expect("fewer than 2^32 rules in a domain");
        let siblings = match parent {
            None => &mut self.domain.root,
            Some(p) => &mut self.domain.children[p as usize],
        };
        let same_key = siblings.by_key.entry(def.key.as_str().into()).or_default();
        let duplicate = if def.value.is_empty() {
            same_key.any.is_some()
        } else if let Some(pattern) = Pattern::new(&def.value) {
            same_key.patterns.iter().any(|(p, _)| *p == pattern)
        } else {
            same_key.exact.contains_key(def.value.as_str())
        };
        if duplicate {
            let mut composite = String::from(&*self.domain.name);
            for level in &path {
                composite.push('.');
                composite.push_str(&level.composite());
            }
            self.diags.push(Diagnostic::error(
                self.file,
                def.pos,
                format!("duplicate descriptor composite key '{composite}'"),
            ));
            return;
        }
        if def.value.is_empty() {
            same_key.any = Some(index);
        } else if let Some(pattern) = Pattern::new(&def.value) {
            same_key.patterns.push((pattern, index));
        } else {
            same_key.exact.insert(def.value.as_str().into(), index);
        }
        let rule = self.rule(def, &path);
        self.domain.rules.push(rule);
        self.domain.children.push(Children::default());
        for child in &def.descriptors {
            self.add(Some(index), child, &path);
        }
    }

    fn rule(&mut self, def: &DescriptorDef, path: &[Level]) -> Rule {
        let domain = self.domain.name.clone();
        let mut stats_key = String::from(&*domain);
        for level in path {
            stats_key.push('.');
            stats_key.push_str(&level.composite());
        }
        let rate_limit = def.rate_limit.as_ref();
        let unlimited = rate_limit.is_some_and(|rl| rl.unlimited);
        let limits: Vec<Limit> = match rate_limit {
            Some(rl) if !rl.unlimited => rl
                .unit
                .map(|unit| {
                    let params = LimitParams::fixed_window(rl.requests_per_unit, unit);
                    vec![Limit { counter_id: self.counter_id(&domain, path, 0, &params), params }]
                })
                .unwrap_or_default(),
            _ => Vec::new(),
        };
        Rule {
            domain,
            file: self.file.clone(),
            pos: def.pos,
            path: path.into(),
            stats_key: stats_key.into(),
            name: rate_limit.and_then(|rl| rl.name.as_deref()).map(Box::from),
            limits: limits.into(),
            unlimited,
            replaces: rate_limit
                .map(|rl| rl.replaces.iter().map(|r| Box::from(r.as_str())).collect())
                .unwrap_or_default(),
            shadow_mode: def.shadow_mode,
            quota_mode: def.quota_mode,
            detailed_metric: def.detailed_metric,
            metadata: def.metadata.clone(),
            shares_counters: path.iter().any(|l| l.share_threshold),
        }
    }

    fn counter_id(&self, domain: &str, path: &[Level], index: usize, params: &LimitParams) -> u32 {
        let mut identity = Vec::with_capacity(64);
        let mut field = |bytes: &[u8]| {
            identity.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
            identity.extend_from_slice(bytes);
        };
        field(domain.as_bytes());
        for level in path {
            field(level.key.as_bytes());
            field(level.value.as_bytes());
            field(&[u8::from(level.share_threshold)]);
        }
        field(&(index as u64).to_le_bytes());
        field(format!("{params:?}").as_bytes());
        self.registry.intern(&identity, *params)
    }
}
