//! Matcher tests, mostly the reference's own cases (its test/config fixtures).

use super::*;
use crate::config::diag::Diagnostics;
use crate::limiter::Unit;

const BASIC: &str = r#"
domain: test-domain
descriptors:
  - key: key1
    value: value1
    descriptors:
      - key: subkey1
        rate_limit: {unit: second, requests_per_unit: 5}
      - key: subkey1
        value: subvalue1
        rate_limit: {unit: second, requests_per_unit: 10}
  - key: key2
    rate_limit: {unit: minute, requests_per_unit: 20}
  - key: key2
    value: value2
    rate_limit: {unit: minute, requests_per_unit: 30}
  - key: key2
    value: value3
  - key: key3
    rate_limit: {unit: hour, requests_per_unit: 1}
  - key: key4
    rate_limit: {unit: day, requests_per_unit: 1, name: key4_rate_limit}
  - key: key5
    value: value5
    rate_limit: {unit: day, requests_per_unit: 15}
    descriptors:
      - key: subkey5
        value: subvalue5
        rate_limit: {unit: day, requests_per_unit: 25}
  - key: key6
    rate_limit: {unlimited: true}
  - key: key7
    detailed_metric: true
    rate_limit: {unit: minute, requests_per_unit: 70}
"#;

const WILDCARD: &str = r#"
domain: test-domain
descriptors:
  - key: wild
    value: foo*
    rate_limit: {unit: minute, requests_per_unit: 20}
  - key: noWild
    value: foo
    rate_limit: {unit: minute, requests_per_unit: 20}
  - key: noVal
    rate_limit: {unit: minute, requests_per_unit: 20}
  - key: midWild
    value: bar*b
    rate_limit: {unit: minute, requests_per_unit: 20}
  - key: multiWild
    value: foo*bar*baz
    rate_limit: {unit: minute, requests_per_unit: 10}
  - key: nestedWild
    value: val1
    descriptors:
      - key: wild
        value: goo*
        rate_limit: {unit: minute, requests_per_unit: 20}
"#;

/// What a load compiled (the rule set of `snapshot::load_texts`, without the snapshot).
#[derive(Debug)]
struct Loaded {
    rules: RuleSet,
}

/// Compiles rule files given as (name, text) pairs.
fn load_texts(texts: &[(&str, &str)], merge_domains: bool, registry: &LimitRegistry) -> Result<Loaded, Diagnostics> {
    let mut diags = Diagnostics::default();
    let mut docs = Vec::new();
    for (name, text) in texts {
        docs.extend(crate::config::read_text(&Arc::from(*name), text.as_bytes(), &mut diags));
    }
    let options = BuildOptions { merge_domains, ..BuildOptions::default() };
    let rules = build(&docs, &options, registry, &mut diags);
    if diags.has_errors() { Err(diags) } else { Ok(Loaded { rules }) }
}

fn rules(text: &str) -> RuleSet {
    load_texts(&[("t.yaml", text)], false, &LimitRegistry::new()).unwrap().rules
}

fn limit_of(set: &RuleSet, entries: &[(&str, &str)]) -> Option<(u32, Unit, String)> {
    let rule = set.domain("test-domain")?.find(entries)?;
    let limit = rule.limits.first()?;
    Some((limit.params.requests_per_unit, limit.params.unit, rule.stats_key()))
}

#[test]
fn reference_basic_config_cases() {
    let set = rules(BASIC);
    assert!(set.domain("foo_domain").is_none());
    assert_eq!(limit_of(&set, &[]), None);
    assert_eq!(limit_of(&set, &[("key1", "something")]), None);
    assert_eq!(limit_of(&set, &[("key1", "value1")]), None, "C4: placeholder node");
    assert_eq!(limit_of(&set, &[("key2", "value2"), ("subkey", "subvalue")]), None, "C5: depth");
    assert_eq!(limit_of(&set, &[("key5", "value5"), ("subkey5", "subvalue")]), None, "C6: no fallback");
    assert_eq!(
        limit_of(&set, &[("key1", "value1"), ("subkey1", "something")]),
        Some((5, Unit::Second, "test-domain.key1_value1.subkey1".into()))
    );
    assert_eq!(
        limit_of(&set, &[("key1", "value1"), ("subkey1", "subvalue1")]),
        Some((10, Unit::Second, "test-domain.key1_value1.subkey1_subvalue1".into()))
    );
    assert_eq!(limit_of(&set, &[("key2", "something")]), Some((20, Unit::Minute, "test-domain.key2".into())));
    assert_eq!(limit_of(&set, &[("key2", "value2")]), Some((30, Unit::Minute, "test-domain.key2_value2".into())));
    let whitelisted = set.domain("test-domain").unwrap().find(&[("key2", "value3")]).unwrap();
    assert!(!whitelisted.is_limited() && !whitelisted.unlimited, "C11: whitelist");
    assert_eq!(limit_of(&set, &[("key3", "foo")]), Some((1, Unit::Hour, "test-domain.key3".into())));
    let key4 = set.domain("test-domain").unwrap().find(&[("key4", "foo")]).unwrap();
    assert_eq!(key4.names().collect::<Vec<_>>(), vec!["key4_rate_limit"]);
    let key6 = set.domain("test-domain").unwrap().find(&[("key6", "foo")]).unwrap();
    assert!(key6.unlimited && !key6.is_limited());
    assert_eq!(limit_of(&set, &[("key7", "x")]).map(|l| l.0), Some(70));
}

#[test]
fn no_backtracking_to_the_key_only_branch() {
    // (key1, value1) exists, so its subtree is taken even when a key-only key1 would
    // have matched the second entry (reference issues #435, #287).
    let set = rules(
        "domain: test-domain\ndescriptors:\n  - key: a\n    value: x\n    descriptors:\n      - key: b\n        value: only\n        rate_limit: {unit: second, requests_per_unit: 1}\n  - key: a\n    descriptors:\n      - key: b\n        rate_limit: {unit: second, requests_per_unit: 2}\n",
    );
    assert_eq!(limit_of(&set, &[("a", "x"), ("b", "other")]), None);
    assert_eq!(limit_of(&set, &[("a", "y"), ("b", "other")]).map(|l| l.0), Some(2));
}

#[test]
fn a_node_with_children_and_a_limit_applies_when_entries_end_there() {
    let set = rules(
        "domain: test-domain\ndescriptors:\n  - key: key-1\n    rate_limit: {unit: minute, requests_per_unit: 100}\n    descriptors:\n      - key: key-2\n        rate_limit: {unit: minute, requests_per_unit: 5}\n",
    );
    assert_eq!(limit_of(&set, &[("key-1", "v")]).map(|l| l.0), Some(100));
    assert_eq!(limit_of(&set, &[("key-1", "v"), ("key-2", "w")]).map(|l| l.0), Some(5));
    assert_eq!(limit_of(&set, &[("key-1", "v"), ("key-2", "w"), ("key-3", "z")]), None);
}

#[test]
fn reference_wildcard_cases() {
    let set = rules(WILDCARD);
    assert_eq!(limit_of(&set, &[("noVal", "foo1")]).map(|l| l.2).as_deref(), Some("test-domain.noVal"));
    assert_eq!(limit_of(&set, &[("wild", "foo1")]).map(|l| l.2).as_deref(), Some("test-domain.wild_foo*"));
    assert_eq!(limit_of(&set, &[("wild", "foo2")]).map(|l| l.2).as_deref(), Some("test-domain.wild_foo*"));
    assert_eq!(
        limit_of(&set, &[("nestedWild", "val1"), ("wild", "goo2")]).map(|l| l.2).as_deref(),
        Some("test-domain.nestedWild_val1.wild_goo*")
    );
    assert_eq!(limit_of(&set, &[("wild", "bar")]), None);
    assert_eq!(limit_of(&set, &[("noWild", "foo1")]), None);
    for ok in ["barab", "bar123b", "barb"] {
        assert!(limit_of(&set, &[("midWild", ok)]).is_some(), "C39 {ok}");
    }
    for no in ["bara", "xbarb"] {
        assert!(limit_of(&set, &[("midWild", no)]).is_none(), "C39 {no}");
    }
    assert!(limit_of(&set, &[("multiWild", "foo123bar456baz")]).is_some());
    assert!(limit_of(&set, &[("multiWild", "foo123baz")]).is_none());
}

#[test]
fn exact_beats_patterns_and_patterns_go_in_file_order_before_key_only() {
    let set = rules(
        "domain: test-domain\ndescriptors:\n  - key: k\n    rate_limit: {unit: second, requests_per_unit: 1}\n  - key: k\n    value: ab*\n    rate_limit: {unit: second, requests_per_unit: 2}\n  - key: k\n    value: a*\n    rate_limit: {unit: second, requests_per_unit: 3}\n  - key: k\n    value: abc\n    rate_limit: {unit: second, requests_per_unit: 4}\n",
    );
    assert_eq!(limit_of(&set, &[("k", "abc")]).map(|l| l.0), Some(4));
    assert_eq!(limit_of(&set, &[("k", "abd")]).map(|l| l.0), Some(2));
    assert_eq!(limit_of(&set, &[("k", "axx")]).map(|l| l.0), Some(3));
    assert_eq!(limit_of(&set, &[("k", "zzz")]).map(|l| l.0), Some(1));
}

#[test]
fn keys_and_values_are_never_joined() {
    // The reference stores `a_b` (key only) and `a`/`b` under the same string.
    let set = rules(
        "domain: test-domain\ndescriptors:\n  - key: a_b\n    rate_limit: {unit: second, requests_per_unit: 1}\n  - key: a\n    value: b\n    rate_limit: {unit: second, requests_per_unit: 2}\n",
    );
    assert_eq!(limit_of(&set, &[("a_b", "x")]).map(|l| l.0), Some(1));
    assert_eq!(limit_of(&set, &[("a", "b")]).map(|l| l.0), Some(2));
    assert_eq!(limit_of(&set, &[("a", "b_x")]), None);
}

#[test]
fn a_rule_in_one_domain_never_changes_a_match_in_another() {
    let set = load_texts(
        &[
            ("a.yaml", "domain: a\ndescriptors:\n  - key: k\n    rate_limit: {unit: second, requests_per_unit: 1}\n"),
            ("b.yaml", "domain: b\ndescriptors:\n  - key: k\n    value: v\n"),
        ],
        false,
        &LimitRegistry::new(),
    )
    .unwrap()
    .rules;
    assert!(set.domain("a").unwrap().find(&[("k", "v")]).unwrap().is_limited());
    assert!(!set.domain("b").unwrap().find(&[("k", "v")]).unwrap().is_limited());
}

#[test]
fn share_threshold_levels_put_the_pattern_in_counter_keys() {
    let set = rules(
        "domain: test-domain\ndescriptors:\n  - key: files\n    value: files/*\n    share_threshold: true\n    rate_limit: {unit: hour, requests_per_unit: 10}\n",
    );
    let rule = set.domain("test-domain").unwrap().find(&[("files", "files/a.pdf")]).unwrap();
    assert!(rule.shares_counters());
    assert_eq!(rule.counter_value(0, "files/a.pdf"), "files/*");
}

#[test]
fn merged_domains_append_top_level_descriptors() {
    let registry = LimitRegistry::new();
    let one = (
        "merge_domain_key1.yaml",
        "domain: test-domain\ndescriptors:\n  - key: key1\n    value: value1\n    rate_limit: {unit: minute, requests_per_unit: 10}\n",
    );
    let two = (
        "merge_domain_key2.yaml",
        "domain: test-domain\ndescriptors:\n  - key: key2\n    value: value2\n    rate_limit: {unit: minute, requests_per_unit: 20}\n",
    );
    let set = load_texts(&[one, two], true, &registry).unwrap().rules;
    assert_eq!(limit_of(&set, &[("key1", "value1")]).map(|l| l.0), Some(10));
    assert_eq!(limit_of(&set, &[("key2", "value2")]).map(|l| l.0), Some(20));
    let err = load_texts(&[one, one], true, &registry).unwrap_err();
    assert_eq!(
        err.to_string(),
        "merge_domain_key1.yaml:3:5: duplicate descriptor composite key 'test-domain.key1_value1'"
    );
    let err = load_texts(&[one, two], false, &registry).unwrap_err();
    assert_eq!(
        err.to_string(),
        "merge_domain_key2.yaml:1:9: duplicate domain 'test-domain' in config file (first defined at merge_domain_key1.yaml:1:9)"
    );
}

#[test]
fn unchanged_rules_keep_their_counter_ids_across_loads() {
    let registry = LimitRegistry::new();
    let id = |text: &str| {
        let set = load_texts(&[("t.yaml", text)], false, &registry).unwrap().rules;
        set.domain("test-domain").unwrap().find(&[("k", "v")]).unwrap().limits[0].counter_id
    };
    let before =
        id("domain: test-domain\ndescriptors:\n  - key: k\n    rate_limit: {unit: second, requests_per_unit: 5}\n");
    let same = id(
        "domain: test-domain\ndescriptors:\n  - key: other\n  - key: k\n    rate_limit: {unit: second, requests_per_unit: 5}\n",
    );
    let changed =
        id("domain: test-domain\ndescriptors:\n  - key: k\n    rate_limit: {unit: second, requests_per_unit: 6}\n");
    assert_eq!(before, same);
    assert_ne!(before, changed);
}
