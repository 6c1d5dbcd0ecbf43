//! From an RLQS bucket id to a descriptor: the order of its entries.
//!
//! A rate limit descriptor is an ordered list of entries, one per level of the rule tree;
//! an RLQS `BucketId` is a map, whose order means nothing (Envoy's proto says so). This
//! file owns the one rule that turns the map into levels, so the server and
//! `sluicegate explain --bucket` cannot disagree: walk the domain's tree from the top,
//! and at each level take, among the entries not placed yet, the one whose matching rule
//! (exact value, then pattern, then key-only, as at any level of a match) comes first in
//! the file. Entries that no rule takes stay at the end in key order, so the walk stops
//! there and the bucket matches no rule, as a descriptor with an unknown entry does.
//! A domain's `bucket_key_order` replaces that rule: its keys first, in its order, then
//! the keys it does not name, in key order.
//!
//! The order depends on the rules only, never on the map's iteration order; at most
//! `entries²` lookups (bucket ids are small and capped by `RLQS_MAX_BUCKET_ENTRIES`).

use smallvec::SmallVec;

use super::{Children, Domain};

impl Domain {
    /// `entries` (a bucket id's key/value pairs, any order) in this domain's tree order.
    pub fn bucket_levels<'e>(&self, entries: &[(&'e str, &'e str)]) -> SmallVec<[(&'e str, &'e str); 8]> {
        let mut rest: SmallVec<[(&'e str, &'e str); 8]> = entries.iter().copied().collect();
        rest.sort_unstable();
        if !self.bucket_key_order.is_empty() {
            let rank = |key: &str| self.bucket_key_order.iter().position(|k| &**k == key).unwrap_or(usize::MAX);
            // Stable: keys the order does not name keep their key order.
            rest.sort_by_key(|(key, _)| rank(key));
            return rest;
        }
        let mut levels = SmallVec::with_capacity(rest.len());
        let mut children: &Children = &self.root;
        while !rest.is_empty() {
            let first = rest
                .iter()
                .enumerate()
                .filter_map(|(at, (key, value))| Some((children.by_key.get(*key)?.pick(value)?, at)))
                .min();
            let Some((rule, at)) = first else { break };
            levels.push(rest.remove(at));
            children = &self.children[rule as usize];
        }
        levels.extend(rest);
        levels
    }
}

#[cfg(test)]
mod tests {
    use crate::rules::LimitRegistry;
    use crate::snapshot::load_texts;

    const RULES: &str = r#"
domain: api
descriptors:
  - key: tenant
    value: acme
    descriptors:
      - key: api_key
        rate_limit: {unit: second, requests_per_unit: 5}
  - key: api_key
    rate_limit: {unit: second, requests_per_unit: 100}
    descriptors:
      - key: method
        rate_limit: {unit: second, requests_per_unit: 7}
"#;

    fn order(entries: &[(&'static str, &'static str)]) -> Vec<(&'static str, &'static str)> {
        order_in(RULES, entries)
    }

    fn order_in(rules: &str, entries: &[(&'static str, &'static str)]) -> Vec<(&'static str, &'static str)> {
        let snapshot = load_texts(&[("api.yaml", rules)], false, &LimitRegistry::new()).unwrap();
        snapshot.rules.domain("api").unwrap().bucket_levels(entries).into_vec()
    }

    #[test]
    fn a_bucket_key_order_overrides_the_tree() {
        let rules = format!("bucket_key_order: [api_key, tenant]\n{RULES}");
        assert_eq!(
            order_in(&rules, &[("tenant", "acme"), ("z", "1"), ("api_key", "k1"), ("a", "2")]),
            vec![("api_key", "k1"), ("tenant", "acme"), ("a", "2"), ("z", "1")]
        );
    }

    #[test]
    fn a_bad_bucket_key_order_is_an_error_at_its_place() {
        for (order, message) in [
            ("bucket_key_order: [a, a]", "api.yaml:1:23: bucket_key_order names 'a' twice"),
            ("bucket_key_order: [\"\"]", "api.yaml:1:20: bucket_key_order has an empty key"),
            ("bucket_key_order: a", "api.yaml:1:19: bucket_key_order must be a list of keys, found"),
        ] {
            let text = format!("{order}\n{RULES}");
            let errors = load_texts(&[("api.yaml", &text)], false, &LimitRegistry::new()).unwrap_err().to_string();
            assert!(errors.contains(message), "{message:?} not in {errors}");
        }
    }

    #[test]
    fn the_tree_decides_the_order_not_the_map() {
        let expected = vec![("api_key", "k1"), ("method", "GET")];
        assert_eq!(order(&[("method", "GET"), ("api_key", "k1")]), expected);
        assert_eq!(order(&[("api_key", "k1"), ("method", "GET")]), expected);
    }

    #[test]
    fn the_first_rule_in_the_file_wins_between_two_candidates() {
        // Both `tenant: acme` and `api_key` have a rule at the top; `tenant` comes first.
        assert_eq!(order(&[("api_key", "k1"), ("tenant", "acme")]), vec![("tenant", "acme"), ("api_key", "k1")]);
        // Another tenant has no rule: api_key leads, and tenant is left over at the end.
        assert_eq!(order(&[("tenant", "other"), ("api_key", "k1")]), vec![("api_key", "k1"), ("tenant", "other")]);
    }

    #[test]
    fn entries_no_rule_takes_stay_in_key_order() {
        assert_eq!(order(&[("z", "1"), ("a", "2")]), vec![("a", "2"), ("z", "1")]);
    }
}
