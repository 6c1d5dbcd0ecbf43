//! The rule file schema: from a positioned YAML tree to typed definitions.
//!
//! Owns every per-node check of the reference schema (docs/compatibility.md) and reports each problem
//! at its node, continuing past it so a file's every error is reported in one run. The
//! message texts after the position are the reference's (`config error, unknown key
//! 'ratelimit'`, `invalid rate limit unit 'foo'`, ...) so operators' alerts keep matching;
//! where the reference only says `error checking config` we say exactly what is wrong.
//!
//! Like the reference, one flat list of key names is known at every level: a known key in
//! the wrong place (`unit` at the top level) is accepted, with a warning; a name known
//! nowhere is an error.
//!
//! sluicegate's extensions (docs/rules.md: `algorithm`, `limit` strings, `rate_limits`,
//! `burst`, `unit_multiplier`, `response`, `default_limit`, `inherit_default`,
//! `bucket_key_order`) are read
//! here too; a reference file never needs them.
//!
//! Cross-node checks (duplicate siblings, duplicate domains, a `burst` on an algorithm
//! inherited from the domain) belong to `rules::build`, which sees every file. This
//! module must not build match trees.

use std::collections::HashSet;
use std::sync::Arc;

use envoy_types::pb::google::protobuf::{ListValue, Struct, Value as ProtoValue, value::Kind};

use super::diag::{Diagnostic, Diagnostics};
use super::limit_string;
use super::yaml::{Node, Pos, ScalarKind, Value};
use crate::limiter::{Algorithm, Unit};

/// One YAML document: one domain's rules.
#[derive(Clone, Debug, PartialEq)]
pub struct DomainDoc {
    pub file: Arc<str>,
    pub pos: Pos,
    pub domain: String,
    pub domain_pos: Pos,
    pub descriptors: Vec<DescriptorDef>,
    /// The domain's default `algorithm`, if set.
    pub algorithm: Option<Algorithm>,
    /// `default_limit`: applied to descriptors that match no rule.
    pub default_limits: Vec<LimitDef>,
    /// `bucket_key_order`: the order of an RLQS bucket id's keys, and where it was set.
    pub bucket_key_order: Option<(Pos, Vec<String>)>,
}

/// One `descriptors` entry, with its children.
#[derive(Clone, Debug, PartialEq)]
pub struct DescriptorDef {
    pub pos: Pos,
    pub key: String,
    /// Empty means "any value" (a key-only rule); `*` anywhere makes it a pattern.
    pub value: String,
    pub rate_limit: Option<RateLimitDef>,
    pub shadow_mode: bool,
    pub quota_mode: bool,
    pub detailed_metric: bool,
    pub value_to_metric: bool,
    pub share_threshold: bool,
    pub metadata: Option<Struct>,
    pub descriptors: Vec<DescriptorDef>,
    /// Limits from `limit` (a limit string) and `rate_limits`, in that order; the
    /// `rate_limit` one, if any, comes first of all.
    pub limits: Vec<LimitDef>,
    pub response: Option<ResponseDef>,
    /// Also apply the domain's `default_limit`.
    pub inherit_default: bool,
}

/// One limit, however it was written.
#[derive(Clone, Debug, PartialEq)]
pub struct LimitDef {
    pub pos: Pos,
    /// `rate_limit.name`, or a `rate_limits` item's `name` (limit strings have none).
    pub name: Option<String>,
    pub requests_per_unit: u32,
    pub unit: Unit,
    pub unit_multiplier: u32,
    /// `None`: the domain's, else the `DEFAULT_ALGORITHM` setting's.
    pub algorithm: Option<Algorithm>,
    /// With the position of `burst`, for errors once the algorithm is known.
    pub burst: Option<(u32, Pos)>,
}

/// A rule's custom answer, sent when it rejects.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResponseDef {
    pub pos: Pos,
    pub body: String,
    pub headers: Vec<(String, String)>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct RateLimitDef {
    pub pos: Pos,
    pub unlimited: bool,
    /// Always present unless `unlimited`.
    pub unit: Option<Unit>,
    pub requests_per_unit: u32,
    pub name: Option<String>,
    /// The names replaced, with where each was written.
    pub replaces: Vec<(String, Pos)>,
    /// The limit itself (absent when `unlimited`).
    pub limit: Option<LimitDef>,
}

/// Every key name the reference knows, at any level.
const REFERENCE_KEYS: &[&str] = &[
    "domain",
    "key",
    "value",
    "descriptors",
    "rate_limit",
    "unit",
    "requests_per_unit",
    "unlimited",
    "shadow_mode",
    "quota_mode",
    "name",
    "replaces",
    "detailed_metric",
    "value_to_metric",
    "share_threshold",
    "metadata",
];

/// The keys sluicegate adds (docs/rules.md); like the reference's, known at every level.
const EXTENSION_KEYS: &[&str] = &[
    "algorithm",
    "default_limit",
    "limit",
    "rate_limits",
    "burst",
    "unit_multiplier",
    "response",
    "body",
    "headers",
    "inherit_default",
    "bucket_key_order",
];

const TOP_KEYS: &[&str] = &["domain", "descriptors", "algorithm", "default_limit", "bucket_key_order"];
const DESCRIPTOR_KEYS: &[&str] = &[
    "key",
    "value",
    "rate_limit",
    "descriptors",
    "shadow_mode",
    "quota_mode",
    "detailed_metric",
    "value_to_metric",
    "share_threshold",
    "metadata",
    "limit",
    "rate_limits",
    "response",
    "inherit_default",
];
const RATE_LIMIT_KEYS: &[&str] =
    &["unit", "requests_per_unit", "unlimited", "name", "replaces", "algorithm", "burst", "unit_multiplier"];
const LIMIT_KEYS: &[&str] = &["unit", "requests_per_unit", "algorithm", "burst", "unit_multiplier", "name"];
const RESPONSE_KEYS: &[&str] = &["body", "headers"];

/// The most limits one rule may have. Real rules have two or three; the cap keeps a
/// mistaken (or generated) limit string of thousands of items a clear error, not a
/// rule every request would spend milliseconds on.
pub const MAX_LIMITS_PER_RULE: usize = 32;

/// The longest window accepted: 100 years of 365 days.
const MAX_WINDOW_SECS: u64 = 100 * 365 * 86_400;
const REPLACES_KEYS: &[&str] = &["name"];

/// Reads the documents of one file. Documents with errors yield what could be read, so
/// later checks still run; the caller rejects the load if `diags` has any error.
pub fn read_file(file: &Arc<str>, documents: &[Node], diags: &mut Diagnostics) -> Vec<DomainDoc> {
    let mut reader = Reader { file: file.clone(), diags };
    let non_empty: Vec<&Node> = documents.iter().filter(|d| !d.is_null()).collect();
    if non_empty.is_empty() {
        // An empty file is a config without a domain, as in the reference.
        let pos = documents.first().map_or(Pos::START, |d| d.pos);
        reader.error(pos, "config file cannot have empty domain");
        return Vec::new();
    }
    non_empty.into_iter().filter_map(|doc| reader.document(doc)).collect()
}

struct Reader<'a> {
    file: Arc<str>,
    diags: &'a mut Diagnostics,
}

/// The entries of a mapping whose keys passed the key checks, last occurrence winning.
struct Fields<'n> {
    entries: Vec<(&'n str, &'n Node)>,
}

impl<'n> Fields<'n> {
    fn get(&self, name: &str) -> Option<&'n Node> {
        self.entries.iter().rev().find(|(k, _)| *k == name).map(|(_, v)| *v)
    }
}

impl Reader<'_> {
    fn error(&mut self, pos: Pos, message: impl Into<String>) {
        self.diags.push(Diagnostic::error(&self.file, pos, message));
    }

    fn warning(&mut self, pos: Pos, message: impl Into<String>) {
        self.diags.push(Diagnostic::warning(&self.file, pos, message));
    }

    fn document(&mut self, doc: &Node) -> Option<DomainDoc> {
        let Value::Map(_) = &doc.value else {
            self.error(
                doc.pos,
                format!(
                    "error loading config file: the top level must be a mapping with 'domain' and 'descriptors', found {}",
                    doc.describe()
                ),
            );
            return None;
        };
        let fields = self.fields(doc, TOP_KEYS);
        let (domain, domain_pos) = match fields.get("domain") {
            Some(node) => (self.text(node, "domain").unwrap_or_default(), node.pos),
            None => (String::new(), doc.pos),
        };
        if domain.is_empty() {
            self.error(domain_pos, "config file cannot have empty domain");
        }
        let algorithm = fields.get("algorithm").and_then(|a| self.algorithm(a));
        let default_limits =
            fields.get("default_limit").map(|l| self.limit_string(l, "default_limit")).unwrap_or_default();
        let bucket_key_order = fields.get("bucket_key_order").map(|n| (n.pos, self.key_list(n, "bucket_key_order")));
        let descriptors = match fields.get("descriptors") {
            Some(node) => self.descriptor_list(node),
            None => Vec::new(),
        };
        if domain.is_empty() {
            return None;
        }
        Some(DomainDoc {
            file: self.file.clone(),
            pos: doc.pos,
            domain,
            domain_pos,
            descriptors,
            algorithm,
            default_limits,
            bucket_key_order,
        })
    }

    /// A list of distinct, non-empty key names.
    fn key_list(&mut self, node: &Node, field: &str) -> Vec<String> {
        let Value::Seq(items) = &node.value else {
            self.error(node.pos, format!("{field} must be a list of keys, found {}", node.describe()));
            return Vec::new();
        };
        let mut keys: Vec<String> = Vec::with_capacity(items.len());
        for item in items {
            match self.text(item, field) {
                Some(key) if key.is_empty() => self.error(item.pos, format!("{field} has an empty key")),
                Some(key) if keys.contains(&key) => self.error(item.pos, format!("{field} names '{key}' twice")),
                Some(key) => keys.push(key),
                None => {}
            }
        }
        keys
    }

    /// Checks a mapping's keys: strings, known somewhere, expected here.
    fn fields<'n>(&mut self, map: &'n Node, expected: &[&str]) -> Fields<'n> {
        let Value::Map(entries) = &map.value else {
            return Fields { entries: Vec::new() };
        };
        let mut seen = HashSet::new();
        let mut out = Vec::with_capacity(entries.len());
        for (key, value) in entries {
            let name = match &key.value {
                Value::Scalar(s) if s.kind == ScalarKind::Str => s.text.as_str(),
                Value::Scalar(s) => {
                    self.error(key.pos, format!("config error, key is not of type string: {}", s.text));
                    continue;
                }
                _ => {
                    self.error(key.pos, format!("config error, key is not of type string: {}", key.describe()));
                    continue;
                }
            };
            if expected.contains(&name) {
                if !seen.insert(name) {
                    self.warning(
                        key.pos,
                        format!("key '{name}' appears more than once in this mapping; the last one is used"),
                    );
                }
                out.push((name, value));
            } else if REFERENCE_KEYS.contains(&name) || EXTENSION_KEYS.contains(&name) {
                self.warning(key.pos, format!("'{name}' has no effect here and is ignored"));
            } else {
                self.error(key.pos, format!("config error, unknown key '{name}'"));
            }
        }
        Fields { entries: out }
    }

    /// The elements of a list that must hold mappings (`descriptors`, `replaces`).
    fn map_list<'n>(&mut self, node: &'n Node, field: &str) -> Vec<&'n Node> {
        match &node.value {
            Value::Scalar(s) if s.kind == ScalarKind::Null => Vec::new(),
            Value::Seq(items) => items
                .iter()
                .filter(|item| match &item.value {
                    Value::Map(_) => true,
                    Value::Scalar(s) => {
                        self.error(
                            item.pos,
                            format!("config error, yaml file contains list of type other than map: {}", s.text),
                        );
                        false
                    }
                    Value::Seq(_) => {
                        self.error(item.pos, "config error, yaml file contains list of type other than map: a list");
                        false
                    }
                })
                .collect(),
            _ => {
                self.error(node.pos, format!("{field} must be a list, found {}", node.describe()));
                Vec::new()
            }
        }
    }

    fn descriptor_list(&mut self, node: &Node) -> Vec<DescriptorDef> {
        self.map_list(node, "descriptors").into_iter().map(|item| self.descriptor(item)).collect()
    }

    fn descriptor(&mut self, node: &Node) -> DescriptorDef {
        let fields = self.fields(node, DESCRIPTOR_KEYS);
        let key = match fields.get("key") {
            Some(k) => match self.text(k, "key") {
                Some(text) if text.is_empty() => {
                    self.error(k.pos, "descriptor has empty key");
                    text
                }
                Some(text) => text,
                None => String::new(),
            },
            None => {
                self.error(node.pos, "descriptor has empty key");
                String::new()
            }
        };
        let value = fields.get("value").and_then(|v| self.text(v, "value")).unwrap_or_default();
        let flag =
            |reader: &mut Self, name: &str| fields.get(name).and_then(|v| reader.boolean(v, name)).unwrap_or(false);
        let shadow_mode = flag(self, "shadow_mode");
        let quota_mode = flag(self, "quota_mode");
        let detailed_metric = flag(self, "detailed_metric");
        let value_to_metric = flag(self, "value_to_metric");
        let share_threshold = flag(self, "share_threshold");
        let rate_limit = fields.get("rate_limit").and_then(|rl| self.rate_limit(rl));
        if share_threshold && !value.contains('*') {
            let shown = if value.is_empty() { key.clone() } else { format!("{key}_{value}") };
            let pos = fields.get("share_threshold").map_or(node.pos, |n| n.pos);
            self.error(
                pos,
                format!(
                    "share_threshold can only be used with wildcard values (containing '*'), but found key '{shown}'"
                ),
            );
        }
        let metadata = fields.get("metadata").and_then(|m| match metadata_struct(m) {
            Ok(s) => s,
            Err((pos, message)) => {
                self.error(pos, format!("error parsing metadata: {message}"));
                None
            }
        });
        let inherit_default = flag(self, "inherit_default");
        let mut limits: Vec<LimitDef> = rate_limit.as_ref().and_then(|rl| rl.limit.clone()).into_iter().collect();
        if let Some(l) = fields.get("limit") {
            limits.extend(self.limit_string(l, "limit"));
        }
        if let Some(list) = fields.get("rate_limits") {
            for item in self.map_list(list, "rate_limits") {
                let item_fields = self.fields(item, LIMIT_KEYS);
                limits.extend(self.structured_limit(item, &item_fields));
            }
        }
        if limits.len() > MAX_LIMITS_PER_RULE {
            self.error(
                limits[MAX_LIMITS_PER_RULE].pos,
                format!("a rule may have at most {MAX_LIMITS_PER_RULE} limits; this one has {}", limits.len()),
            );
            limits.truncate(MAX_LIMITS_PER_RULE);
        }
        if let Some(rl) = &rate_limit {
            for (replaced, pos) in &rl.replaces {
                if limits.iter().skip(1).any(|l| l.name.as_deref() == Some(replaced.as_str())) {
                    self.error(*pos, "replaces should not contain name of same descriptor");
                }
            }
        }
        if rate_limit.as_ref().is_some_and(|rl| rl.unlimited) && limits.iter().any(|_| true) {
            let pos = fields.get("limit").or(fields.get("rate_limits")).map_or(node.pos, |n| n.pos);
            self.error(pos, "an unlimited rule cannot also have limit or rate_limits");
        }
        let response = fields.get("response").and_then(|r| self.response(r));
        if let Some(r) = &response
            && limits.is_empty()
            && !inherit_default
        {
            self.warning(r.pos, "response has no effect: the rule has no limit that could reject");
        }
        let descriptors = fields.get("descriptors").map(|d| self.descriptor_list(d)).unwrap_or_default();
        DescriptorDef {
            pos: node.pos,
            key,
            value,
            rate_limit,
            shadow_mode,
            quota_mode,
            detailed_metric,
            value_to_metric,
            share_threshold,
            metadata,
            descriptors,
            limits,
            response,
            inherit_default,
        }
    }

    fn rate_limit(&mut self, node: &Node) -> Option<RateLimitDef> {
        match &node.value {
            Value::Map(_) => {}
            Value::Scalar(s) if s.kind == ScalarKind::Null => return None,
            _ => {
                self.error(node.pos, format!("rate_limit must be a mapping, found {}", node.describe()));
                return None;
            }
        }
        let fields = self.fields(node, RATE_LIMIT_KEYS);
        let unlimited = fields.get("unlimited").and_then(|v| self.boolean(v, "unlimited")).unwrap_or(false);
        let requests_per_unit =
            fields.get("requests_per_unit").and_then(|v| self.count(v, "requests_per_unit")).unwrap_or(0);
        let name = fields.get("name").and_then(|v| self.text(v, "name")).filter(|n| !n.is_empty());
        let unit_node = fields.get("unit");
        let unit_text = unit_node.and_then(|u| self.text(u, "unit")).unwrap_or_default();
        let unit_pos = unit_node.map_or(node.pos, |u| u.pos);
        let unit = Unit::parse(&unit_text);
        let mut valid = true;
        if unlimited {
            if unit.is_some() {
                self.error(unit_pos, "should not specify rate limit unit when unlimited");
                valid = false;
            }
        } else if unit.is_none() {
            self.error(unit_pos, format!("invalid rate limit unit '{unit_text}'"));
            valid = false;
        }
        let mut replaces = Vec::new();
        if let Some(list) = fields.get("replaces") {
            for item in self.map_list(list, "replaces") {
                let item_fields = self.fields(item, REPLACES_KEYS);
                let replaced = item_fields.get("name").and_then(|n| self.text(n, "name")).unwrap_or_default();
                let pos = item_fields.get("name").map_or(item.pos, |n| n.pos);
                if replaced.is_empty() {
                    self.error(pos, "should not have an empty replaces entry");
                } else if name.as_deref() == Some(replaced.as_str()) {
                    self.error(pos, "replaces should not contain name of same descriptor");
                } else {
                    replaces.push((replaced, pos));
                }
            }
        }
        if unlimited {
            for extra in ["algorithm", "burst", "unit_multiplier"] {
                if let Some(n) = fields.get(extra) {
                    self.warning(n.pos, format!("{extra} has no effect on an unlimited rule"));
                }
            }
        }
        let limit = match unit {
            Some(unit) if valid && !unlimited => self
                .limit_options(node.pos, requests_per_unit, unit, &fields)
                .map(|l| LimitDef { name: name.clone(), ..l }),
            _ => None,
        };
        valid.then_some(RateLimitDef {
            pos: node.pos,
            unlimited,
            unit: if unlimited { None } else { unit },
            requests_per_unit,
            name,
            replaces,
            limit,
        })
    }

    /// The options every structured limit shares: `algorithm`, `burst`, `unit_multiplier`.
    fn limit_options(&mut self, pos: Pos, requests_per_unit: u32, unit: Unit, fields: &Fields<'_>) -> Option<LimitDef> {
        let algorithm = fields.get("algorithm").and_then(|a| self.algorithm(a));
        let burst = fields.get("burst").and_then(|b| self.count(b, "burst").map(|n| (n, b.pos)));
        let unit_multiplier = match fields.get("unit_multiplier") {
            None => 1,
            Some(m) => match self.count(m, "unit_multiplier") {
                Some(0) => {
                    self.error(m.pos, "unit_multiplier must be at least 1");
                    return None;
                }
                Some(n) if unit.seconds().saturating_mul(u64::from(n)) > MAX_WINDOW_SECS => {
                    self.error(m.pos, format!("unit_multiplier {n} makes a window longer than 100 years"));
                    return None;
                }
                Some(n) => n,
                None => return None,
            },
        };
        Some(LimitDef { pos, name: None, requests_per_unit, unit, unit_multiplier, algorithm, burst })
    }

    /// One item of `rate_limits`.
    fn structured_limit(&mut self, node: &Node, fields: &Fields<'_>) -> Option<LimitDef> {
        let requests_per_unit =
            fields.get("requests_per_unit").and_then(|v| self.count(v, "requests_per_unit")).unwrap_or(0);
        let unit_node = fields.get("unit");
        let unit_text = unit_node.and_then(|u| self.text(u, "unit")).unwrap_or_default();
        let Some(unit) = Unit::parse(&unit_text) else {
            self.error(unit_node.map_or(node.pos, |u| u.pos), format!("invalid rate limit unit '{unit_text}'"));
            return None;
        };
        let name = fields.get("name").and_then(|v| self.text(v, "name")).filter(|n| !n.is_empty());
        self.limit_options(node.pos, requests_per_unit, unit, fields).map(|l| LimitDef { name, ..l })
    }

    /// A limit string (`limit`, `default_limit`), each error at its column.
    fn limit_string(&mut self, node: &Node, field: &str) -> Vec<LimitDef> {
        let scalar = match node.as_scalar() {
            Some(s) if s.kind == ScalarKind::Str => s,
            _ => {
                self.error(
                    node.pos,
                    format!("{field} must be a string such as \"10/minute\", found {}", node.describe()),
                );
                return Vec::new();
            }
        };
        // Columns count characters; counted incrementally, since items come in order and a
        // long string must not cost a count from its start per item.
        let mut counted = (0usize, 0u32);
        let mut at = |offset: usize| match scalar.text_offset {
            Some(extra) => {
                let (from, chars) = if offset >= counted.0 { counted } else { (0, 0) };
                let chars = chars + scalar.text.get(from..offset).map_or(0, |t| t.chars().count() as u32);
                counted = (offset, chars);
                Pos { line: node.pos.line, col: node.pos.col + extra + chars }
            }
            None => node.pos,
        };
        match limit_string::parse(&scalar.text) {
            Ok(items) => items
                .into_iter()
                .filter_map(|item| {
                    if item.unit.seconds().saturating_mul(u64::from(item.multiplier)) > MAX_WINDOW_SECS {
                        self.error(
                            at(item.offset),
                            format!("invalid {field} {:?}: a window longer than 100 years", scalar.text),
                        );
                        return None;
                    }
                    Some(LimitDef {
                        pos: at(item.offset),
                        name: None,
                        requests_per_unit: item.requests_per_unit,
                        unit: item.unit,
                        unit_multiplier: item.multiplier,
                        algorithm: None,
                        burst: None,
                    })
                })
                .collect(),
            Err(e) => {
                self.error(at(e.offset), format!("invalid {field} {:?}: {}", scalar.text, e.message));
                Vec::new()
            }
        }
    }

    fn algorithm(&mut self, node: &Node) -> Option<Algorithm> {
        let text = self.text(node, "algorithm")?;
        let algorithm = Algorithm::parse(&text);
        if algorithm.is_none() {
            self.error(
                node.pos,
                format!(
                    "unknown algorithm '{text}'; expected fixed_window, sliding_window, token_bucket or leaky_bucket"
                ),
            );
        }
        algorithm
    }

    fn response(&mut self, node: &Node) -> Option<ResponseDef> {
        match &node.value {
            Value::Map(_) => {}
            Value::Scalar(s) if s.kind == ScalarKind::Null => return None,
            _ => {
                self.error(
                    node.pos,
                    format!("response must be a mapping with body and headers, found {}", node.describe()),
                );
                return None;
            }
        }
        let fields = self.fields(node, RESPONSE_KEYS);
        let body = fields.get("body").and_then(|b| self.text(b, "body")).unwrap_or_default();
        let mut headers = Vec::new();
        if let Some(h) = fields.get("headers") {
            match &h.value {
                Value::Map(entries) => {
                    for (name_node, value_node) in entries {
                        let Some(name) = self.text(name_node, "a response header name") else { continue };
                        let Some(value) = self.text(value_node, "a response header value") else { continue };
                        if name.is_empty() || !name.bytes().all(is_header_name_byte) {
                            self.error(
                                name_node.pos,
                                format!("response header name {name:?} is not a valid HTTP header name"),
                            );
                        } else if value.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0) {
                            self.error(value_node.pos, format!("response header {name} has a line break in its value"));
                        } else {
                            headers.push((name, value));
                        }
                    }
                }
                Value::Scalar(s) if s.kind == ScalarKind::Null => {}
                _ => self.error(
                    h.pos,
                    format!("response headers must be a mapping of names to values, found {}", h.describe()),
                ),
            }
        }
        Some(ResponseDef { pos: node.pos, body, headers })
    }

    /// A string field. Integers and booleans are taken as their text, as the reference
    /// does; null is empty; floats and collections are errors.
    fn text(&mut self, node: &Node, field: &str) -> Option<String> {
        match &node.value {
            Value::Scalar(s) => match s.kind {
                ScalarKind::Str | ScalarKind::Int(_) | ScalarKind::BigInt | ScalarKind::Bool(_) => Some(s.text.clone()),
                ScalarKind::Null => Some(String::new()),
                ScalarKind::Float => {
                    self.error(
                        node.pos,
                        format!("{field} must be a string, found {} (quote it to use it as text)", node.describe()),
                    );
                    None
                }
            },
            _ => {
                self.error(node.pos, format!("{field} must be a string, found {}", node.describe()));
                None
            }
        }
    }

    fn boolean(&mut self, node: &Node, field: &str) -> Option<bool> {
        match node.as_scalar().map(|s| s.kind) {
            Some(ScalarKind::Bool(b)) => Some(b),
            Some(ScalarKind::Null) => Some(false),
            _ => {
                self.error(node.pos, format!("{field} must be true or false, found {}", node.describe()));
                None
            }
        }
    }

    fn count(&mut self, node: &Node, field: &str) -> Option<u32> {
        match node.as_scalar().map(|s| s.kind) {
            Some(ScalarKind::Int(i)) if (0..=i128::from(u32::MAX)).contains(&i) => Some(i as u32),
            Some(ScalarKind::Null) => Some(0),
            _ => {
                self.error(
                    node.pos,
                    format!("{field} must be a whole number from 0 to {}, found {}", u32::MAX, node.describe()),
                );
                None
            }
        }
    }
}

/// RFC 9110 `tchar`: the bytes a header name may hold.
fn is_header_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// The deepest `metadata` accepted: a response carries it inside its own messages, and
/// Envoy (like most protobuf decoders) refuses messages nested past 100 levels, each
/// level of metadata costing two (a `Struct` and a `Value`).
pub const MAX_METADATA_DEPTH: usize = 32;

/// Converts `metadata` to the protobuf Struct returned in dynamic metadata.
fn metadata_struct(node: &Node) -> Result<Option<Struct>, (Pos, String)> {
    match &node.value {
        Value::Scalar(s) if s.kind == ScalarKind::Null => Ok(None),
        Value::Map(_) => match to_proto_value(node, 1)?.kind {
            Some(Kind::StructValue(s)) => Ok(Some(s)),
            _ => Err((node.pos, "metadata must be a mapping".to_string())),
        },
        _ => Err((node.pos, format!("metadata must be a mapping, found {}", node.describe()))),
    }
}

fn to_proto_value(node: &Node, depth: usize) -> Result<ProtoValue, (Pos, String)> {
    if depth > MAX_METADATA_DEPTH && !matches!(node.value, Value::Scalar(_)) {
        return Err((
            node.pos,
            format!(
                "metadata nests deeper than {MAX_METADATA_DEPTH} levels, more than Envoy could decode in a response"
            ),
        ));
    }
    let kind = match &node.value {
        Value::Scalar(s) => match s.kind {
            ScalarKind::Null => Kind::NullValue(0),
            ScalarKind::Bool(b) => Kind::BoolValue(b),
            ScalarKind::Int(i) => Kind::NumberValue(i as f64),
            ScalarKind::BigInt | ScalarKind::Float => {
                let number = s.text.replace('_', "").parse::<f64>().ok().filter(|f| f.is_finite());
                match number {
                    Some(f) => Kind::NumberValue(f),
                    None => return Err((node.pos, format!("{} is not a finite number", s.text))),
                }
            }
            ScalarKind::Str => Kind::StringValue(s.text.clone()),
        },
        Value::Seq(items) => Kind::ListValue(ListValue {
            values: items.iter().map(|item| to_proto_value(item, depth + 1)).collect::<Result<_, _>>()?,
        }),
        Value::Map(entries) => {
            let mut fields = std::collections::HashMap::new();
            for (k, v) in entries {
                // Lenient where the reference is not: `on:` or `n:` (booleans in YAML 1.1)
                // and numbers are fine metadata keys, taken as their text.
                let name = match k.as_scalar() {
                    Some(s) if !matches!(s.kind, ScalarKind::Null | ScalarKind::Float) => s.text.clone(),
                    _ => return Err((k.pos, format!("key {} is not a string", k.describe()))),
                };
                fields.insert(name, to_proto_value(v, depth + 1)?);
            }
            Kind::StructValue(Struct { fields })
        }
    };
    Ok(ProtoValue { kind: Some(kind) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::yaml::parse_documents;

    fn read(text: &str) -> (Vec<DomainDoc>, Vec<String>) {
        let file: Arc<str> = Arc::from("t.yaml");
        let docs = parse_documents(text).unwrap();
        let mut diags = Diagnostics::default();
        let out = read_file(&file, &docs, &mut diags);
        (out, diags.0.iter().map(|d| d.to_string()).collect())
    }

    #[test]
    fn reads_the_reference_schema() {
        let (docs, diags) = read(
            "domain: d\ndescriptors:\n  - key: k\n    value: v\n    shadow_mode: true\n    rate_limit:\n      unit: Second\n      requests_per_unit: 5\n      name: n\n      replaces:\n        - name: other\n    descriptors:\n      - key: sub\n",
        );
        assert!(diags.is_empty(), "{diags:?}");
        let d = &docs[0].descriptors[0];
        assert_eq!((d.key.as_str(), d.value.as_str(), d.shadow_mode), ("k", "v", true));
        let rl = d.rate_limit.as_ref().unwrap();
        assert_eq!((rl.unit, rl.requests_per_unit, rl.name.as_deref()), (Some(Unit::Second), 5, Some("n")));
        assert_eq!(rl.replaces, vec![("other".to_string(), Pos { line: 11, col: 17 })]);
        assert_eq!(d.descriptors[0].key, "sub");
    }

    #[test]
    fn integers_and_booleans_as_keys_or_values_are_their_text() {
        let (docs, diags) = read("domain: 5\ndescriptors:\n  - key: 10\n    value: yes\n");
        assert!(diags.is_empty(), "{diags:?}");
        assert_eq!(docs[0].domain, "5");
        assert_eq!((docs[0].descriptors[0].key.as_str(), docs[0].descriptors[0].value.as_str()), ("10", "yes"));
    }

    #[test]
    fn every_error_of_a_file_is_reported_with_its_position() {
        let (_, diags) = read(
            "domain: d\ndescriptors:\n  - key: a\n    rate_limit: {unit: sec, requests_per_unit: 1}\n  - value: x\n  - key: c\n    ratelimit: 1\n",
        );
        assert_eq!(
            diags,
            vec![
                "t.yaml:4:24: invalid rate limit unit 'sec'",
                "t.yaml:5:5: descriptor has empty key",
                "t.yaml:7:5: config error, unknown key 'ratelimit'",
            ]
        );
    }

    #[test]
    fn known_keys_in_the_wrong_place_are_warnings() {
        let (docs, diags) = read("domain: d\nunit: second\ndescriptors: []\n");
        assert_eq!(docs.len(), 1);
        assert_eq!(diags, vec!["t.yaml:2:1: warning: 'unit' has no effect here and is ignored"]);
    }

    #[test]
    fn metadata_becomes_a_struct() {
        let (docs, diags) = read("domain: d\ndescriptors:\n  - key: k\n    metadata: {name: s, n: 2, l: [true, ~]}\n");
        assert!(diags.is_empty(), "{diags:?}");
        let md = docs[0].descriptors[0].metadata.as_ref().unwrap();
        assert_eq!(md.fields["name"].kind, Some(Kind::StringValue("s".into())));
        assert_eq!(md.fields["n"].kind, Some(Kind::NumberValue(2.0)));
    }
}
