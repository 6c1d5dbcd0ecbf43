//! Compiling validated rule files into a [`RuleSet`].
//!
//! Owns the checks that need more than one node: duplicate siblings (the reference's
//! `duplicate descriptor composite key`), duplicate domains across files unless merging,
//! and the merge itself (top-level descriptor lists appended, as in the reference).
//! Duplicates are reported at the second occurrence; a duplicate domain names the file
//! and position of the first. It also settles each limit's algorithm (the limit's own,
//! else its domain's, else the `DEFAULT_ALGORITHM` setting) and checks what depends on
//! it (`burst`), and holds a load to `CONFIG_MAX_RULES` rules (YAML aliases can multiply
//! a small file into very many). Every check is linear in the number of rules.

use std::collections::HashSet;
use std::sync::Arc;

use super::wildcard::Pattern;
use super::{Children, CustomResponse, Domain, Level, Limit, LimitRegistry, Path, Rule, RuleSet};
use crate::config::diag::{Diagnostic, Diagnostics};
use crate::config::schema::{DescriptorDef, DomainDoc, LimitDef};
use crate::limiter::{Algorithm, LimitParams};

/// Load-wide choices that shape compilation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BuildOptions {
    /// `MERGE_DOMAIN_CONFIG`: several files may define one domain.
    pub merge_domains: bool,
    /// `DEFAULT_ALGORITHM`: for limits that name none, in domains that name none.
    pub default_algorithm: Algorithm,
    /// `CONFIG_MAX_RULES`: the most rules (descriptor nodes) one load may build.
    pub max_rules: usize,
}

/// The default of `CONFIG_MAX_RULES`: far above hand-written or generated rule sets
/// (thousands), far below what costs real memory (each rule is a few hundred bytes).
pub const DEFAULT_MAX_RULES: usize = 200_000;

impl Default for BuildOptions {
    fn default() -> Self {
        BuildOptions { merge_domains: false, default_algorithm: Algorithm::default(), max_rules: DEFAULT_MAX_RULES }
    }
}

/// Builds the rule set from every document of a load, in load order.
pub fn build(docs: &[DomainDoc], options: &BuildOptions, registry: &LimitRegistry, diags: &mut Diagnostics) -> RuleSet {
    let mut set = RuleSet::default();
    let mut first_seen: std::collections::HashMap<&str, &DomainDoc> = std::collections::HashMap::new();
    let mut defaults_seen: std::collections::HashMap<&str, &DomainDoc> = std::collections::HashMap::new();
    let mut budget = RuleBudget { left: options.max_rules, max: options.max_rules, reported: false };
    let mut patterns_seen: HashSet<PatternSibling> = HashSet::new();
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
        let next_domain = set.domains.len() as u32;
        let domain = set.domains.entry(doc.domain.as_str().into()).or_insert_with(|| Domain {
            index: next_domain,
            name: Arc::from(doc.domain.as_str()),
            rules: Vec::new(),
            children: Vec::new(),
            root: Children::default(),
            defaults: Box::default(),
            bucket_key_order: Box::default(),
        });
        let algorithm = doc.algorithm.unwrap_or(options.default_algorithm);
        let mut builder = Builder {
            domain,
            registry,
            file: &doc.file,
            diags,
            algorithm,
            budget: &mut budget,
            patterns_seen: &mut patterns_seen,
        };
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
                let defaults = builder.limits(&doc.default_limits, "\0default_limit", None);
                builder.domain.defaults = defaults.into();
            }
        }
        if let Some((pos, keys)) = &doc.bucket_key_order {
            if builder.domain.bucket_key_order.is_empty() {
                builder.domain.bucket_key_order = keys.iter().map(|k| Box::from(k.as_str())).collect();
            } else {
                builder.diags.push(Diagnostic::error(
                    &doc.file,
                    *pos,
                    format!("bucket_key_order of domain '{}' is already set in another file", doc.domain),
                ));
            }
        }
        for def in &doc.descriptors {
            builder.add(None, def, None);
        }
    }
    set.rules_built = (options.max_rules - budget.left) as u32;
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

/// How many more rules a load may build.
struct RuleBudget {
    left: usize,
    max: usize,
    /// The cap is reported once, at the first rule past it.
    reported: bool,
}

struct Builder<'a> {
    domain: &'a mut Domain,
    registry: &'a LimitRegistry,
    file: &'a Arc<str>,
    diags: &'a mut Diagnostics,
    /// The algorithm of limits that name none (the document's, else the setting's).
    algorithm: Algorithm,
    budget: &'a mut RuleBudget,
    /// (domain, parent rule, key, pattern) of every pattern sibling so far, so finding a
    /// duplicate pattern costs a lookup, not a scan of its siblings.
    patterns_seen: &'a mut HashSet<PatternSibling>,
}

/// A pattern rule's place: domain, parent rule (none at the top), key and pattern.
type PatternSibling = (Arc<str>, Option<u32>, Box<str>, Box<str>);

impl Builder<'_> {
    fn add(&mut self, parent: Option<u32>, def: &DescriptorDef, parent_path: Option<&Arc<Path>>) {
        if def.key.is_empty() {
            return; // already reported by the schema reader
        }
        if self.budget.left == 0 {
            if !self.budget.reported {
                self.budget.reported = true;
                self.diags.push(Diagnostic::error(
                    self.file,
                    def.pos,
                    format!(
                        "the configuration has more than {} rules (CONFIG_MAX_RULES); YAML aliases count once per use",
                        self.budget.max
                    ),
                ));
            }
            return;
        }
        self.budget.left -= 1;
        let level = Level {
            key: def.key.as_str().into(),
            value: def.value.as_str().into(),
            share_threshold: def.share_threshold,
            value_to_metric: def.value_to_metric,
        };
        let path = Arc::new(Path::new(level, parent_path.cloned()));
        let index = u32::try_from(self.domain.rules.len()).expect("fewer than 2^32 rules in a domain");
        let siblings = match parent {
            None => &mut self.domain.root,
            Some(p) => &mut self.domain.children[p as usize],
        };
        let same_key = siblings.by_key.entry(def.key.as_str().into()).or_default();
        let pattern = Pattern::new(&def.value);
        let duplicate = if def.value.is_empty() {
            same_key.any.is_some()
        } else if pattern.is_some() {
            let seen = (self.domain.name.clone(), parent, Box::from(def.key.as_str()), Box::from(def.value.as_str()));
            !self.patterns_seen.insert(seen)
        } else {
            same_key.exact.contains_key(def.value.as_str())
        };
        if duplicate {
            self.diags.push(Diagnostic::error(
                self.file,
                def.pos,
                format!("duplicate descriptor composite key '{}.{}'", self.domain.name, composite_path(&path)),
            ));
            return;
        }
        if def.value.is_empty() {
            same_key.any = Some(index);
        } else if let Some(pattern) = pattern {
            same_key.patterns.push((pattern, index));
        } else {
            same_key.exact.insert(def.value.as_str().into(), index);
        }
        let rule = self.rule(def, &path);
        self.domain.rules.push(rule);
        self.domain.children.push(Children::default());
        for child in &def.descriptors {
            self.add(Some(index), child, Some(&path));
        }
    }

    fn rule(&mut self, def: &DescriptorDef, path: &Arc<Path>) -> Rule {
        let domain = self.domain.name.clone();
        let rate_limit = def.rate_limit.as_ref();
        let unlimited = rate_limit.is_some_and(|rl| rl.unlimited);
        let limits = if unlimited { Vec::new() } else { self.limits(&def.limits, &domain, Some(path)) };
        let levels = path.levels();
        let shared_levels = levels
            .iter()
            .enumerate()
            .filter(|(_, l)| l.share_threshold)
            .fold(0u128, |mask, (depth, _)| mask | 1u128.checked_shl(depth as u32).unwrap_or(0));
        Rule {
            index: (self.budget.max - self.budget.left - 1) as u32,
            domain,
            file: self.file.clone(),
            pos: def.pos,
            path: path.clone(),
            shared_levels,
            value_to_metric: levels.iter().any(|l| l.value_to_metric),
            limits: limits.into(),
            unlimited,
            replaces: rate_limit
                .map(|rl| rl.replaces.iter().map(|(r, _)| Box::from(r.as_str())).collect())
                .unwrap_or_default(),
            shadow_mode: def.shadow_mode,
            quota_mode: def.quota_mode,
            detailed_metric: def.detailed_metric,
            metadata: def.metadata.clone().map(Arc::new),
            response: def.response.as_ref().map(|r| CustomResponse {
                body: r.body.as_bytes().into(),
                headers: r.headers.iter().map(|(k, v)| (Box::from(k.as_str()), Box::from(v.as_str()))).collect(),
            }),
            inherit_default: def.inherit_default,
        }
    }

    /// Compiles limit definitions, settling each one's algorithm and checking its burst.
    /// `scope` names what the limits belong to (the domain for rules; a marker for the
    /// domain's defaults) so their counter identities differ.
    fn limits(&mut self, defs: &[LimitDef], scope: &str, path: Option<&Arc<Path>>) -> Vec<Limit> {
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
            let name = def.name.as_deref().map(Arc::from);
            limits.push(Limit { counter_id: self.counter_id(scope, path, &params), params, name });
        }
        limits
    }

    /// A limit's counters are identified by its rule and parameters, not its position in
    /// the rule, so reordering a rule's limits keeps their counts.
    fn counter_id(&self, scope: &str, path: Option<&Arc<Path>>, params: &LimitParams) -> u32 {
        let mut identity = Vec::with_capacity(64);
        let mut field = |bytes: &[u8]| {
            identity.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
            identity.extend_from_slice(bytes);
        };
        field(self.domain.name.as_bytes());
        field(scope.as_bytes());
        for level in path.map(|p| p.levels()).unwrap_or_default() {
            field(level.key.as_bytes());
            field(level.value.as_bytes());
            field(&[u8::from(level.share_threshold)]);
        }
        field(format!("{params:?}").as_bytes());
        self.registry.intern(&identity, *params)
    }
}

/// `k1_v1.k2`: a path's levels in the reference's composite form, dot-joined.
fn composite_path(path: &Path) -> String {
    path.levels().iter().map(|l| l.composite()).collect::<Vec<_>>().join(".")
}
