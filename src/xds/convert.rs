//! From `RateLimitConfig` resources to a rule snapshot.
//!
//! Owns decoding the pushed resources and turning them into the same rule model a rule
//! file gives. Each resource is written out as a rule document (JSON, which the YAML
//! reader reads) and loaded with the rule files' own reader, schema checks and builder,
//! so a pushed domain is validated exactly as the same rules in a file would be, and
//! its errors carry a position: `xds:<resource name>:line:col` in that document
//! (`/debug/config` and NACKs show them). Proto fields left at their defaults are left
//! out, as a file would omit them.

use std::sync::Arc;

use envoy_types::pb::google::protobuf::{Any, Struct, Value as ProtoValue, value::Kind};
use envoy_types::pb::ratelimit::config::ratelimit::v3::{
    RateLimitConfig, RateLimitDescriptor, RateLimitPolicy, RateLimitUnit,
};
use prost::Message;
use serde_json::{Map, Value, json};

use super::TYPE_URL;
use crate::config::EmptyConfig;
use crate::config::diag::{Diagnostic, Diagnostics};
use crate::config::yaml::Pos;
use crate::rules::{BuildOptions, LimitRegistry};
use crate::snapshot::{ConfigSnapshot, check_empty, load_texts_with};

/// The name diagnostics give a resource.
pub fn source_name(resource: &str) -> String {
    format!("xds:{resource}")
}

/// Decodes the resources of one response into (name, config) pairs; every resource that
/// cannot be decoded is an error.
pub fn decode(resources: &[Any], diags: &mut Diagnostics) -> Vec<(String, RateLimitConfig)> {
    let mut out = Vec::new();
    for (i, any) in resources.iter().enumerate() {
        let fallback = Arc::from(format!("xds:resource[{i}]"));
        if any.type_url != TYPE_URL {
            let msg = format!("unexpected resource type {:?}, expected {TYPE_URL}", any.type_url);
            diags.push(Diagnostic::error(&fallback, Pos::START, msg));
            continue;
        }
        match RateLimitConfig::decode(any.value.as_slice()) {
            Ok(config) => {
                let name = if config.name.is_empty() { config.domain.clone() } else { config.name.clone() };
                out.push((name, config));
            }
            Err(e) => diags.push(Diagnostic::error(&fallback, Pos::START, format!("cannot decode resource: {e}"))),
        }
    }
    out
}

/// One resource as a rule document (pretty JSON, so positions name a line).
pub fn to_document(config: &RateLimitConfig) -> String {
    let mut doc = Map::new();
    doc.insert("domain".into(), json!(config.domain));
    if !config.descriptors.is_empty() {
        doc.insert("descriptors".into(), Value::Array(config.descriptors.iter().map(descriptor).collect()));
    }
    serde_json::to_string_pretty(&Value::Object(doc)).expect("a JSON value serializes")
}

fn descriptor(d: &RateLimitDescriptor) -> Value {
    let mut m = Map::new();
    m.insert("key".into(), json!(d.key));
    if !d.value.is_empty() {
        m.insert("value".into(), json!(d.value));
    }
    if let Some(policy) = &d.rate_limit {
        m.insert("rate_limit".into(), rate_limit(policy));
    }
    for (name, on) in
        [("shadow_mode", d.shadow_mode), ("detailed_metric", d.detailed_metric), ("quota_mode", d.quota_mode)]
    {
        if on {
            m.insert(name.into(), Value::Bool(true));
        }
    }
    if let Some(metadata) = &d.metadata {
        m.insert("metadata".into(), structure(metadata));
    }
    if !d.descriptors.is_empty() {
        m.insert("descriptors".into(), Value::Array(d.descriptors.iter().map(descriptor).collect()));
    }
    Value::Object(m)
}

fn rate_limit(p: &RateLimitPolicy) -> Value {
    let mut m = Map::new();
    match RateLimitUnit::try_from(p.unit) {
        Ok(RateLimitUnit::Unknown) => {}
        Ok(unit) => {
            m.insert("unit".into(), json!(unit.as_str_name().to_ascii_lowercase()));
        }
        // An unknown number: the schema reports it as an invalid unit.
        Err(_) => {
            m.insert("unit".into(), json!(p.unit.to_string()));
        }
    }
    if p.unit != RateLimitUnit::Unknown as i32 || p.requests_per_unit != 0 {
        m.insert("requests_per_unit".into(), json!(p.requests_per_unit));
    }
    if p.unlimited {
        m.insert("unlimited".into(), Value::Bool(true));
    }
    if !p.name.is_empty() {
        m.insert("name".into(), json!(p.name));
    }
    if !p.replaces.is_empty() {
        m.insert("replaces".into(), p.replaces.iter().map(|r| json!({ "name": r.name })).collect());
    }
    Value::Object(m)
}

fn structure(s: &Struct) -> Value {
    let mut fields: Vec<(&String, &ProtoValue)> = s.fields.iter().collect();
    fields.sort_by(|a, b| a.0.cmp(b.0));
    Value::Object(fields.into_iter().map(|(k, v)| (k.clone(), value(v))).collect())
}

fn value(v: &ProtoValue) -> Value {
    match &v.kind {
        None | Some(Kind::NullValue(_)) => Value::Null,
        Some(Kind::NumberValue(n)) => serde_json::Number::from_f64(*n).map_or(Value::Null, Value::Number),
        Some(Kind::StringValue(s)) => json!(s),
        Some(Kind::BoolValue(b)) => Value::Bool(*b),
        Some(Kind::StructValue(s)) => structure(s),
        Some(Kind::ListValue(l)) => Value::Array(l.values.iter().map(value).collect()),
    }
}

/// Builds a snapshot from every resource of one State-of-the-World response, with the
/// rule files' options; fails with every error of every resource. `version` numbers the
/// snapshot.
pub fn build(
    resources: &[Any],
    options: &BuildOptions,
    registry: &LimitRegistry,
    empty: EmptyConfig,
    version: u64,
) -> Result<ConfigSnapshot, Diagnostics> {
    let mut diags = Diagnostics::default();
    let configs = decode(resources, &mut diags);
    let mut documents: Vec<(String, String)> = Vec::with_capacity(configs.len());
    for (name, config) in &configs {
        // Names are keys in xDS; should two resources share one, they still need telling
        // apart in errors.
        let mut shown = source_name(name);
        let mut n = 1;
        while documents.iter().any(|(d, _)| *d == shown) {
            n += 1;
            shown = format!("{}#{n}", source_name(name));
        }
        documents.push((shown, to_document(config)));
    }
    let texts: Vec<(&str, &str)> = documents.iter().map(|(n, t)| (n.as_str(), t.as_str())).collect();
    let loaded = load_texts_with(&texts, options, registry);
    match loaded {
        Ok(mut snapshot) if !diags.has_errors() => {
            snapshot.version = version;
            check_empty(snapshot, &Arc::from("xds"), "the control plane sent no domain", empty)
        }
        Ok(_) => Err(diags),
        Err(errors) => {
            diags.extend(errors);
            Err(diags)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::ratelimit::config::ratelimit::v3::RateLimitReplace;

    fn any(config: &RateLimitConfig) -> Any {
        Any { type_url: TYPE_URL.into(), value: config.encode_to_vec() }
    }

    fn config(domain: &str, descriptors: Vec<RateLimitDescriptor>) -> RateLimitConfig {
        RateLimitConfig { name: domain.into(), domain: domain.into(), descriptors }
    }

    fn limited(key: &str, value: &str, unit: RateLimitUnit, n: u32) -> RateLimitDescriptor {
        RateLimitDescriptor {
            key: key.into(),
            value: value.into(),
            rate_limit: Some(RateLimitPolicy { unit: unit as i32, requests_per_unit: n, ..Default::default() }),
            ..Default::default()
        }
    }

    #[test]
    fn a_resource_builds_the_rules_its_file_would() {
        let mut d = limited("k", "v", RateLimitUnit::Minute, 5);
        d.shadow_mode = true;
        d.rate_limit.as_mut().unwrap().name = "a".into();
        d.rate_limit.as_mut().unwrap().replaces = vec![RateLimitReplace { name: "b".into() }];
        let snapshot =
            build(&[any(&config("d", vec![d]))], &BuildOptions::default(), &LimitRegistry::new(), EmptyConfig::Warn, 7)
                .unwrap();
        assert_eq!(snapshot.version, 7);
        assert_eq!(snapshot.files[0].path.as_ref(), "xds:d");
        let file = "domain: d\ndescriptors:\n  - key: k\n    value: v\n    shadow_mode: true\n    rate_limit:\n      unit: minute\n      requests_per_unit: 5\n      name: a\n      replaces:\n        - name: b\n";
        let from_file = crate::snapshot::load_texts(&[("f.yaml", file)], false, &LimitRegistry::new()).unwrap();
        // The same rules but for where they were written.
        let shown = |s: &ConfigSnapshot| {
            let text = format!("{:?}", s.rules.domains());
            let (from, to) = (text.find("file: ").unwrap(), text.find("path: ").unwrap());
            format!("{}{}", &text[..from], &text[to..])
        };
        assert_eq!(shown(&snapshot), shown(&from_file));
    }

    #[test]
    fn every_error_of_every_resource_is_reported_with_its_resource() {
        let bad_unit = limited("k", "v", RateLimitUnit::Unknown, 5);
        let resources = [
            any(&config("a", vec![bad_unit])),
            any(&RateLimitConfig { name: "a2".into(), domain: "a".into(), descriptors: vec![] }),
            Any { type_url: "type.googleapis.com/other".into(), value: vec![] },
        ];
        let errors = build(&resources, &BuildOptions::default(), &LimitRegistry::new(), EmptyConfig::Warn, 1)
            .unwrap_err()
            .to_string();
        assert!(errors.contains("xds:resource[2]:1:1: unexpected resource type"), "{errors}");
        assert!(errors.contains("xds:a:7:21: invalid rate limit unit"), "{errors}");
        assert!(errors.contains("xds:a2:2:13: duplicate domain 'a'"), "{errors}");
    }

    #[test]
    fn descriptor_metadata_arrives_as_it_was_sent() {
        use envoy_types::pb::google::protobuf::ListValue;
        let v = |kind| ProtoValue { kind: Some(kind) };
        let nested = Struct { fields: [("deep".to_string(), v(Kind::BoolValue(true)))].into_iter().collect() };
        let metadata = Struct {
            fields: [
                ("team".to_string(), v(Kind::StringValue("payments: \"core\"".into()))),
                ("weight".to_string(), v(Kind::NumberValue(2.5))),
                ("count".to_string(), v(Kind::NumberValue(3.0))),
                ("list".to_string(), v(Kind::ListValue(ListValue { values: vec![v(Kind::NumberValue(1.0))] }))),
                ("nested".to_string(), v(Kind::StructValue(nested))),
            ]
            .into_iter()
            .collect(),
        };
        let mut d = limited("k", "v", RateLimitUnit::Second, 1);
        d.metadata = Some(metadata.clone());
        let snapshot =
            build(&[any(&config("d", vec![d]))], &BuildOptions::default(), &LimitRegistry::new(), EmptyConfig::Warn, 1)
                .unwrap();
        let rule = &snapshot.rules.domains()[0].rules()[0];
        assert_eq!(rule.metadata.as_deref(), Some(&metadata));
    }

    #[test]
    fn one_domain_in_two_resources_merges_only_with_merge_domain_config() {
        let resources = [
            any(&config("a", vec![limited("k1", "", RateLimitUnit::Second, 1)])),
            any(&RateLimitConfig {
                name: "a-more".into(),
                domain: "a".into(),
                descriptors: vec![limited("k2", "", RateLimitUnit::Hour, 2)],
            }),
        ];
        let registry = LimitRegistry::new();
        assert!(build(&resources, &BuildOptions::default(), &registry, EmptyConfig::Warn, 1).is_err());
        let merge = BuildOptions { merge_domains: true, ..BuildOptions::default() };
        let snapshot = build(&resources, &merge, &registry, EmptyConfig::Warn, 1).unwrap();
        assert_eq!((snapshot.rules.domains().len(), snapshot.rules.rule_count()), (1, 2));
    }

    #[test]
    fn an_empty_push_is_refused_only_when_asked() {
        let registry = LimitRegistry::new();
        let warned = build(&[], &BuildOptions::default(), &registry, EmptyConfig::Warn, 1).unwrap();
        let warning = warned.warnings.to_string();
        assert!(warning.contains("xds:1:1: warning: the control plane sent no domain: every request"), "{warning}");
        let errors = build(&[], &BuildOptions::default(), &registry, EmptyConfig::Refuse, 1).unwrap_err().to_string();
        assert!(errors.contains("the control plane sent no domain, and CONFIG_REFUSE_EMPTY=true refuses"), "{errors}");
    }
}
