//! Compiling validated rule files into a [`RuleSet`].
//!
//! Owns the checks that need more than one node: duplicate siblings (the reference's
//! `duplicate descriptor composite key`), duplicate domains across files unless merging,
//! and the merge itself (top-level descriptor lists appended, as in the reference).
//! Duplicates are reported at the second occurrence; a duplicate domain names the file
//! and position of the first. It also settles each limit's algorithm (the limit's own,
//! else its domain's, else the `DEFAULT_ALGORITHM` setting) and checks what depends on
//! it (`burst`).

use std::sync::Arc;

use super::wildcard::Pattern;
use super::{Children, CustomResponse, Domain, Level, Limit, LimitRegistry, Rule, RuleSet};
use crate::config::diag::{Diagnostic, Diagnostics};
use crate::config::schema::{DescriptorDef, DomainDoc, LimitDef};
use crate::limiter::{Algorithm, LimitParams};

/// Load-wide choices that shape compilation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BuildOptions {
    /// `MERGE_DOMAIN_CONFIG`: several files may define one domain.
    pub merge_domains: bool,
    /// `DEFAULT_ALGORITHM`: for limits that name none, in domains that name none.
    pub default_algorithm: Algorithm,
}

/// Builds the rule set from every document of a load, in load order.
pub fn build(docs: &[DomainDoc], options: &BuildOptions, registry: &LimitRegistry, diags: &mut Diagnostics) -> RuleSet {
    let mut set = RuleSet::default();
    let mut first_seen: std::collections::HashMap<&str, &DomainDoc> = std::collections::HashMap::new();
    let mut defaults_seen: std::collections::HashMap<&str, &DomainDoc> = std::collections::HashMap::new();
    for doc in docs {
        if let Some(first) = first_seen.get(doc.domain.as_str()) {
            if !options.merge_domains {
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
            defaults: Box::default(),
            default_stats: std::sync::OnceLock::new(),
        });
        let algorithm = doc.algorithm.unwrap_or(options.default_algorithm);
        let mut builder = Builder { domain, registry, file: &doc.file, diags, algorithm };
        if !doc.default_limits.is_empty() {
            if let Some(first) = defaults_seen.get(doc.domain.as_str()) {
                builder.diags.push(Diagnostic::error(
                    &doc.file,
                    doc.default_limits[0].pos,
                    format!(
                        "default_limit of domain '{}' is already set (at {}:{})",
                        doc.domain, first.file, first.default_limits[0].pos
                    ),
                ));
            } else {
                defaults_seen.insert(&doc.domain, doc);
                let defaults = builder.limits(&doc.default_limits, "\0default_limit", &[]);
                builder.domain.defaults = defaults.into();
            }
        }
        for def in &doc.descriptors {
            builder.add(None, def, &[]);
        }
    }
    // Only now, with every file of a merged domain in, is it known whether a domain has
    // defaults for its rules to inherit.
    for domain in set.domains.values().filter(|d| d.defaults.is_empty()) {
        for rule in domain.rules.iter().filter(|r| r.inherit_default) {
            diags.push(Diagnostic::warning(
                &rule.file,
                rule.pos,
                "inherit_default has no effect: the domain has no default_limit",
            ));
        }
    }
    set
}

struct Builder<'a> {
    domain: &'a mut Domain,
    registry: &'a LimitRegistry,
    file: &'a Arc<str>,
    diags: &'a mut Diagnostics,
    /// The algorithm of limits that name none (the document's, else the setting's).
    algorithm: Algorithm,
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
        let limits = if unlimited { Vec::new() } else { self.limits(&def.limits, &domain, path) };
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
            response: def.response.as_ref().map(|r| CustomResponse {
                body: r.body.as_bytes().into(),
                headers: r.headers.iter().map(|(k, v)| (Box::from(k.as_str()), Box::from(v.as_str()))).collect(),
            }),
            inherit_default: def.inherit_default,
            stats: std::sync::OnceLock::new(),
        }
    }

    /// Compiles limit definitions, settling each one's algorithm and checking its burst.
    /// `scope` names what the limits belong to (the domain for rules; a marker for the
    /// domain's defaults) so their counter identities differ.
    fn limits(&mut self, defs: &[LimitDef], scope: &str, path: &[Level]) -> Vec<Limit> {
        let mut limits: Vec<Limit> = Vec::with_capacity(defs.len());
        for def in defs {
            let algorithm = def.algorithm.unwrap_or(self.algorithm);
            if let Some((burst, pos)) = def.burst {
                if !algorithm.has_burst() {
                    self.diags.push(Diagnostic::error(
                        self.file,
                        pos,
                        format!("burst applies only to token_bucket and leaky_bucket, not {}", algorithm.name()),
                    ));
                    continue;
                }
                if algorithm == Algorithm::TokenBucket && burst == 0 {
                    self.diags.push(Diagnostic::error(self.file, pos, "a token_bucket needs a burst of at least 1"));
                    continue;
                }
            }
            let params = LimitParams::new(
                algorithm,
                def.requests_per_unit,
                def.unit,
                def.unit_multiplier,
                def.burst.map(|(b, _)| b),
            );
            if limits.iter().any(|l| l.params == params) {
                // The same limit twice would count every hit twice on one counter.
                self.diags.push(Diagnostic::warning(
                    self.file,
                    def.pos,
                    "this limit is listed twice; the copy is ignored",
                ));
                continue;
            }
            limits.push(Limit { counter_id: self.counter_id(scope, path, &params), params });
        }
        limits
    }

    /// A limit's counters are identified by its rule and parameters, not its position in
    /// the rule, so reordering a rule's limits keeps their counts.
    fn counter_id(&self, scope: &str, path: &[Level], params: &LimitParams) -> u32 {
        let mut identity = Vec::with_capacity(64);
        let mut field = |bytes: &[u8]| {
            identity.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
            identity.extend_from_slice(bytes);
        };
        field(self.domain.name.as_bytes());
        field(scope.as_bytes());
        for level in path {
            field(level.key.as_bytes());
            field(level.value.as_bytes());
            field(&[u8::from(level.share_threshold)]);
        }
        field(format!("{params:?}").as_bytes());
        self.registry.intern(&identity, *params)
    }
}
