//! The compiled, immutable rule set and the matcher that walks it.
//!
//! Owns "which rule does this descriptor hit". A [`RuleSet`] is built once per config
//! load (`build.rs`) and then only read, shared by every request thread without locks.
//! Matching follows the reference exactly (docs/compatibility.md): at each level the exact
//! `(key, value)` child wins, then the value patterns of that key in file order, then the
//! key-only child; no child means no limit; a rule applies only when the request's
//! entries end at its depth; there is no fallback to a parent. Keys and values are never
//! joined into one string, so `a_b` and `a`/`b` cannot collide.
//!
//! Matching allocates nothing. This module must not count, decide or build responses.

mod bucket;
mod build;
mod registry;
pub mod wildcard;

use std::collections::HashMap;
use std::sync::Arc;

use smallvec::SmallVec;

pub use build::{BuildOptions, DEFAULT_MAX_RULES, build};
pub use registry::LimitRegistry;
use wildcard::Pattern;

use crate::config::yaml::Pos;
use crate::limiter::LimitParams;

type Hasher = foldhash::fast::RandomState;

/// One key/value pair of a request descriptor, however the caller stores it.
pub trait EntryView {
    fn key(&self) -> &str;
    fn value(&self) -> &str;
}

impl EntryView for (&str, &str) {
    fn key(&self) -> &str {
        self.0
    }
    fn value(&self) -> &str {
        self.1
    }
}

impl EntryView for (String, String) {
    fn key(&self) -> &str {
        &self.0
    }
    fn value(&self) -> &str {
        &self.1
    }
}

impl EntryView for envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::Entry {
    fn key(&self) -> &str {
        &self.key
    }
    fn value(&self) -> &str {
        &self.value
    }
}

/// Every domain's rules, as loaded from one set of files.
#[derive(Debug, Default)]
pub struct RuleSet {
    domains: HashMap<Box<str>, Domain, Hasher>,
    /// Rules are numbered `0..rules_built` across domains ([`Rule::index`]).
    rules_built: u32,
}

impl RuleSet {
    pub fn domain(&self, name: &str) -> Option<&Domain> {
        self.domains.get(name)
    }

    /// Domains in name order.
    pub fn domains(&self) -> Vec<&Domain> {
        let mut all: Vec<&Domain> = self.domains.values().collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }

    pub fn is_empty(&self) -> bool {
        self.domains.is_empty()
    }

    pub fn rule_count(&self) -> usize {
        self.domains.values().map(|d| d.rules.len()).sum()
    }

    /// One more than the highest [`Rule::index`]: the length of a table indexed by rule.
    pub fn rule_slots(&self) -> usize {
        self.rules_built as usize
    }

    /// One more than the highest [`Domain::index`].
    pub fn domain_slots(&self) -> usize {
        self.domains.len()
    }
}

/// One domain's rule tree.
#[derive(Debug)]
pub struct Domain {
    /// Unique in its rule set, below [`RuleSet::domain_slots`]: tables built per load
    /// (the stats series) are indexed by it.
    pub index: u32,
    pub name: Arc<str>,
    /// One rule per config descriptor node, in file order.
    rules: Vec<Rule>,
    /// `children[i]` are the children of `rules[i]`.
    children: Vec<Children>,
    root: Children,
    /// `default_limit`: counted per distinct descriptor for descriptors that match no
    /// rule, and added to the limits of rules with `inherit_default`.
    defaults: Box<[Limit]>,
    /// `bucket_key_order`: the order of an RLQS bucket id's keys (empty: the tree's).
    bucket_key_order: Box<[Box<str>]>,
}

#[derive(Debug, Default)]
struct Children {
    by_key: HashMap<Box<str>, KeyChildren, Hasher>,
}

/// The children of one level that share a key.
#[derive(Debug, Default)]
struct KeyChildren {
    exact: HashMap<Box<str>, u32, Hasher>,
    /// In file order: the first pattern that matches wins.
    patterns: Vec<(Pattern, u32)>,
    /// The key-only child (no `value`, or an empty one).
    any: Option<u32>,
}

impl KeyChildren {
    /// The child a value matches at this level: the exact value, else the first matching
    /// pattern, else the key-only rule.
    #[inline]
    fn pick_how(&self, value: &str) -> Option<(u32, How<'_>)> {
        if let Some(&i) = self.exact.get(value) {
            Some((i, How::Exact))
        } else if let Some((p, i)) = self.patterns.iter().find(|(p, _)| p.matches(value)) {
            Some((*i, How::Pattern(p)))
        } else {
            self.any.map(|i| (i, How::AnyValue))
        }
    }

    /// [`KeyChildren::pick_how`]'s rule alone.
    fn pick(&self, value: &str) -> Option<u32> {
        self.pick_how(value).map(|(i, _)| i)
    }
}

impl Domain {
    /// The rule a descriptor's entries end at, if any. A rule with no limits in the result
    /// is an explicit whitelist (or a placeholder the request stopped at).
    #[inline]
    pub fn find<E: EntryView>(&self, entries: &[E]) -> Option<&Rule> {
        self.walk(entries, |_, _, _| {}).ok()
    }

    /// Walks the tree like [`Domain::find`], saying at each level what matched and how,
    /// or why nothing did: the heart of `sluicegate explain`.
    pub fn explain<E: EntryView>(&self, entries: &[E]) -> (Option<&Rule>, Vec<String>) {
        let mut lines = Vec::new();
        let walked = self.walk(entries, |depth, rule, how| {
            let entry = &entries[depth];
            let how = match how {
                How::Exact => "the exact value".to_string(),
                How::Pattern(p) => format!("the pattern '{}'", p.as_str()),
                How::AnyValue => "the key-only rule (any value)".to_string(),
            };
            lines.push(format!(
                "level {}: ({}, {}) matched {how}: {} ({}:{})",
                depth + 1,
                entry.key(),
                entry.value(),
                rule.stats_key(),
                rule.file,
                rule.pos
            ));
        });
        let stop = match walked {
            Ok(rule) => return (Some(rule), lines),
            Err(stop) => stop,
        };
        lines.push(match stop {
            Stop::Empty => "the descriptor has no entries".into(),
            Stop::UnknownKey { depth, children } => {
                let (key, value) = (entries[depth].key(), entries[depth].value());
                let mut keys: Vec<&str> = children.by_key.keys().map(|k| &**k).collect();
                keys.sort_unstable();
                if keys.is_empty() {
                    format!("level {}: ({key}, {value}): the rule above has no child rules", depth + 1)
                } else {
                    format!(
                        "level {}: ({key}, {value}): no rule has key '{key}' here (keys: {})",
                        depth + 1,
                        keys.join(", ")
                    )
                }
            }
            Stop::UnknownValue { depth, same_key } => {
                let (key, value) = (entries[depth].key(), entries[depth].value());
                let mut values: Vec<&str> = same_key.exact.keys().map(|v| &**v).collect();
                values.extend(same_key.patterns.iter().map(|(p, _)| p.as_str()));
                values.sort_unstable();
                format!(
                    "level {}: ({key}, {value}): no rule for this value and no key-only rule for '{key}' (values: {})",
                    depth + 1,
                    values.join(", ")
                )
            }
        });
        (None, lines)
    }

    /// The one tree walk behind [`Domain::find`] and [`Domain::explain`]: at each level the
    /// exact value, else the first matching pattern, else the key-only rule; `matched`
    /// hears every level that matched. Allocates nothing.
    #[inline]
    fn walk<'a, E: EntryView>(
        &'a self,
        entries: &[E],
        mut matched: impl FnMut(usize, &'a Rule, How<'a>),
    ) -> Result<&'a Rule, Stop<'a>> {
        let last = entries.len().checked_sub(1).ok_or(Stop::Empty)?;
        let mut children = &self.root;
        for (depth, entry) in entries.iter().enumerate() {
            let Some(same_key) = children.by_key.get(entry.key()) else {
                return Err(Stop::UnknownKey { depth, children });
            };
            let Some((index, how)) = same_key.pick_how(entry.value()) else {
                return Err(Stop::UnknownValue { depth, same_key });
            };
            let rule = &self.rules[index as usize];
            matched(depth, rule, how);
            if depth == last {
                return Ok(rule);
            }
            children = &self.children[index as usize];
        }
        Err(Stop::Empty)
    }

    /// Every rule of the domain, in file order.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// The domain's default limits (empty if it has none).
    pub fn defaults(&self) -> &[Limit] {
        &self.defaults
    }
}

/// How a level of a walk matched.
enum How<'a> {
    Exact,
    Pattern(&'a Pattern),
    AnyValue,
}

/// Why a walk found no rule.
enum Stop<'a> {
    Empty,
    /// No rule at `depth` has the entry's key (`children` are the rules there).
    UnknownKey {
        depth: usize,
        children: &'a Children,
    },
    /// Rules at `depth` have the key, but none the value, and there is no key-only rule.
    UnknownValue {
        depth: usize,
        same_key: &'a KeyChildren,
    },
}

/// One level of a rule's path, as the config wrote it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Level {
    pub key: Box<str>,
    /// The configured value: exact text, a pattern, or empty for "any value".
    pub value: Box<str>,
    /// This level's counter uses the pattern instead of the request's value, so every
    /// matching value shares one counter.
    pub share_threshold: bool,
    pub value_to_metric: bool,
}

impl Level {
    /// The reference's composite form: `key` or `key_value`.
    pub fn composite(&self) -> String {
        composite(&self.key, &self.value)
    }
}

/// One level of a stats key, the reference's way: `key`, or `key_value` when there is a
/// value. Every stats key (a rule's, a request value's, an override's) is these, after
/// the domain, dot-joined.
pub fn composite(key: &str, value: &str) -> String {
    if value.is_empty() { key.to_string() } else { format!("{key}_{value}") }
}

/// A rule's path from the top of its tree: its own level, and its parent's path shared
/// with every sibling. A rule stores one level, not a copy of its whole path, so a deep
/// tree (or one multiplied by YAML aliases) costs memory in its number of rules only.
#[derive(Debug)]
pub struct Path {
    level: Level,
    parent: Option<Arc<Path>>,
    /// Levels from the top down to this one (1 at the top).
    depth: usize,
}

impl Path {
    pub fn new(level: Level, parent: Option<Arc<Path>>) -> Path {
        let depth = parent.as_ref().map_or(0, |p| p.depth) + 1;
        Path { level, parent, depth }
    }

    /// This rule's own level (the last of the path).
    pub fn level(&self) -> &Level {
        &self.level
    }

    pub fn depth(&self) -> usize {
        self.depth
    }

    /// Every level, from the top down.
    pub fn levels(&self) -> SmallVec<[&Level; 8]> {
        let mut levels = SmallVec::with_capacity(self.depth);
        let mut at = Some(self);
        while let Some(path) = at {
            levels.push(&path.level);
            at = path.parent.as_deref();
        }
        levels.reverse();
        levels
    }

    /// The level at `depth` (0 at the top).
    pub fn at(&self, depth: usize) -> Option<&Level> {
        let mut at = self;
        for _ in depth..self.depth.checked_sub(1)? {
            at = at.parent.as_deref()?;
        }
        (depth < self.depth).then_some(&at.level)
    }
}

/// One config descriptor node, compiled.
#[derive(Debug)]
pub struct Rule {
    /// Unique in its rule set, below [`RuleSet::rule_slots`]: tables built per load (the
    /// stats series) are indexed by it.
    pub index: u32,
    pub domain: Arc<str>,
    pub file: Arc<str>,
    pub pos: Pos,
    pub path: Arc<Path>,
    /// Bit `d` is set when level `d` shares its counter across values
    /// (`share_threshold`); levels are at most 64 deep, so every one has a bit.
    shared_levels: u128,
    /// Some level names the request's value in the stats key (`value_to_metric`).
    pub value_to_metric: bool,
    /// Empty for a whitelist node or an `unlimited` rule.
    pub limits: Box<[Limit]>,
    pub unlimited: bool,
    pub replaces: Box<[Box<str>]>,
    pub shadow_mode: bool,
    pub quota_mode: bool,
    pub detailed_metric: bool,
    pub metadata: Option<Arc<envoy_types::pb::google::protobuf::Struct>>,
    /// Sent when this rule makes a request OVER_LIMIT.
    pub response: Option<CustomResponse>,
    /// The domain's default limits apply too.
    pub inherit_default: bool,
}

/// A rule's custom answer for rejected requests: Envoy sends it with the 429.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CustomResponse {
    pub body: Box<[u8]>,
    pub headers: Box<[(Box<str>, Box<str>)]>,
}

impl Rule {
    /// Whether the rule counts anything.
    pub fn is_limited(&self) -> bool {
        !self.limits.is_empty()
    }

    /// The value a request entry contributes to counter keys at `depth`: the pattern for
    /// a `share_threshold` level, else the request's own value.
    #[inline]
    pub fn counter_value<'a>(&'a self, depth: usize, request_value: &'a str) -> &'a str {
        if depth < 128
            && self.shared_levels >> depth & 1 == 1
            && let Some(level) = self.path.at(depth)
        {
            return &level.value;
        }
        request_value
    }

    /// Whether any level shares its counter across values.
    #[cfg(test)]
    pub fn shares_counters(&self) -> bool {
        self.shared_levels != 0
    }

    /// The reference's stats key, also how messages name the rule: the domain and each
    /// level's composite, dot-joined (`domain.k1_v1.k2`).
    pub fn stats_key(&self) -> String {
        self.stats_parts().join(".")
    }

    /// The parts of [`Rule::stats_key`]: the domain, then each level's composite.
    pub fn stats_parts(&self) -> Vec<String> {
        let levels = self.path.levels();
        let mut parts = Vec::with_capacity(levels.len() + 1);
        parts.push(self.domain.to_string());
        parts.extend(levels.iter().map(|l| l.composite()));
        parts
    }

    /// The names of the rule's limits, in order (`rate_limit`'s and `rate_limits`' items).
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.limits.iter().filter_map(|l| l.name.as_deref())
    }
}

/// One limit of a rule, with the identity its counters are stored under.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limit {
    /// Stable across reloads while the rule's domain, path and parameters stay the same,
    /// so an unchanged rule keeps its counts.
    pub counter_id: u32,
    pub params: LimitParams,
    /// `name` of the limit (`rate_limit.name`, or a `rate_limits` item's): reported as
    /// `current_limit.name` when this limit decides, and what `replaces` names.
    pub name: Option<Arc<str>>,
}

#[cfg(test)]
mod tests;
