//! The stats module's unit tests: the reference's arithmetic, key layout and caps.

use super::*;
use crate::clock::Nanos;

fn outcome(over: bool, before: u64, after: u64) -> Outcome {
    Outcome { over_limit: over, before, after, remaining: 0, reset_after: Nanos(0) }
}

fn value(text: &str, series: &str) -> u64 {
    text.lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[test]
fn near_and_over_limit_follow_the_reference_arithmetic() {
    let stats = Stats::new(StatsOptions { near_limit_ratio: 0.8, ..Default::default() });
    let s = stats.keyed(vec!["d".into(), "k".into()]);
    // Reference L6: limit 15, counts 11, 13, 16 (near threshold 12).
    s.record(&outcome(false, 10, 11), 15, 1, false, 0.8);
    s.record(&outcome(false, 12, 13), 15, 1, false, 0.8);
    s.record(&outcome(true, 15, 16), 15, 1, false, 0.8);
    // Reference L10/L11: limit 20, addends 3 and 7 ending at 22 (near threshold 16).
    let t = stats.keyed(vec!["d".into(), "t".into()]);
    t.record(&outcome(true, 19, 22), 20, 3, false, 0.8);
    t.record(&outcome(true, 15, 22), 20, 7, false, 0.8);
    let text = stats.render();
    let series =
        |stat: &str, key1: &str| format!("ratelimit_service_rate_limit_{stat}{{domain=\"d\",key1=\"{key1}\"}}");
    assert_eq!(value(&text, &series("total_hits", "k")), 3);
    assert_eq!(value(&text, &series("near_limit", "k")), 1);
    assert_eq!(value(&text, &series("over_limit", "k")), 1);
    assert_eq!(value(&text, &series("within_limit", "k")), 2);
    assert_eq!(value(&text, &series("over_limit", "t")), 4);
    assert_eq!(value(&text, &series("near_limit", "t")), 1 + 4);
}

#[test]
fn series_keyed_by_values_are_capped_and_folded() {
    let stats = Stats::new(StatsOptions::default());
    for i in 0..MAX_VALUE_SERIES + 5 {
        stats.for_values(vec!["d".into(), format!("user_{i}")]).total_hits.increment(1);
    }
    let text = stats.render();
    assert_eq!(value(&text, "ratelimit_service_rate_limit_total_hits{domain=\"d\",key1=\"__folded__\"}"), 5);
    assert_eq!(text.matches("ratelimit_service_rate_limit_total_hits{").count(), MAX_VALUE_SERIES + 1);
}

#[test]
fn deep_keys_put_the_levels_after_the_first_in_key2() {
    let stats = Stats::new(StatsOptions::default());
    stats.keyed(vec!["d".into(), "a_1".into(), "b".into(), "c_2".into()]).total_hits.increment(2);
    let text = stats.render();
    assert_eq!(
        value(&text, "ratelimit_service_rate_limit_total_hits{domain=\"d\",key1=\"a_1\",key2=\"b.c_2\"}"),
        2,
        "{text}"
    );
}
