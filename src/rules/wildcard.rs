//! Value patterns with `*` wildcards.
//!
//! Each `*` matches zero or more characters, anywhere in the value and any number of
//! times, as in the reference since March 2026: `foo*` matches `foo` and `foo1`; `bar*b`
//! matches `barb` and `bar123b` but not `bara`; `foo*bar*baz` needs its segments in order.
//! Matching never allocates and never backtracks: the first and last segments anchor the
//! ends, and each middle segment takes its earliest occurrence, which is optimal for
//! patterns whose only operator is `*`.

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pattern {
    text: Box<str>,
    /// The literal text between the `*`s; at least two segments (a pattern has a `*`).
    segments: Box<[Box<str>]>,
}

impl Pattern {
    /// A pattern from text containing at least one `*`; `None` for plain text.
    pub fn new(text: &str) -> Option<Pattern> {
        if !text.contains('*') {
            return None;
        }
        Some(Pattern { text: text.into(), segments: text.split('*').map(Box::from).collect() })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    pub fn matches(&self, value: &str) -> bool {
        let (first, rest) = self.segments.split_first().expect("a pattern has at least two segments");
        let (last, middle) = rest.split_last().expect("a pattern has at least two segments");
        if value.len() < first.len() + last.len() || !value.starts_with(&**first) || !value.ends_with(&**last) {
            return false;
        }
        let mut inner = &value[first.len()..value.len() - last.len()];
        for segment in middle {
            match inner.find(&**segment) {
                Some(at) => inner = &inner[at + segment.len()..],
                None => return false,
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(pattern: &str, value: &str) -> bool {
        Pattern::new(pattern).unwrap().matches(value)
    }

    #[test]
    fn reference_examples() {
        assert!(m("foo*", "foo1"));
        assert!(m("foo*", "foo"));
        assert!(!m("foo*", "bar"));
        for ok in ["barab", "bar123b", "barb"] {
            assert!(m("bar*b", ok), "{ok}");
        }
        for no in ["bara", "xbarb"] {
            assert!(!m("bar*b", no), "{no}");
        }
        for ok in ["foo123bar456baz", "foobarbaz"] {
            assert!(m("foo*bar*baz", ok), "{ok}");
        }
        for no in ["foo123baz", "bar456baz"] {
            assert!(!m("foo*bar*baz", no), "{no}");
        }
        assert!(m("/api*v1", "/api/v1"));
        assert!(m("/api*v1", "/apiXYZv1"));
        assert!(!m("/api*v1", "/api/v2"));
        assert!(m("svc*ep*rpc", "svceprpc"));
        assert!(!m("svc*ep*rpc", "svcABCrpc"));
    }

    #[test]
    fn prefix_and_suffix_must_not_overlap() {
        assert!(!m("ab*ba", "aba"));
        assert!(m("ab*ba", "abba"));
        assert!(m("a*a", "aa"));
        assert!(!m("a*a", "a"));
    }

    #[test]
    fn a_lone_star_matches_everything_including_empty() {
        assert!(m("*", ""));
        assert!(m("*", "anything"));
        assert!(m("**", "x"));
    }

    #[test]
    fn plain_text_is_not_a_pattern() {
        assert_eq!(Pattern::new("foo"), None);
    }

    #[test]
    fn multibyte_text_is_matched_on_char_boundaries() {
        assert!(m("é*ü", "éaü"));
        assert!(!m("é*ü", "é"));
    }
}
