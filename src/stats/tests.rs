//! The stats module's unit tests: the reference's arithmetic, key layout and caps.

use super::*;
use crate::clock::Nanos;
use crate::limiter::Outcome;

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
    for i in 0..DEFAULT_MAX_VALUE_SERIES + 5 {
        stats.for_values(vec!["d".into(), format!("user_{i}")]).total_hits.increment(1);
    }
    let text = stats.render();
    assert_eq!(value(&text, "ratelimit_service_rate_limit_total_hits{domain=\"d\",key1=\"__folded__\"}"), 5);
    assert_eq!(text.matches("ratelimit_service_rate_limit_total_hits{").count(), DEFAULT_MAX_VALUE_SERIES + 1);
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

/// A descriptor as big as the request caps let it be: 64 entries with 16 KiB values,
/// made into a stats key as for a limit override (`key_value` per entry), `tag` making it
/// differ from others only at its very end.
fn huge_override_key(domain: &str, tag: usize) -> Vec<String> {
    let mut parts = vec![domain.to_string()];
    parts.extend((0..64).map(|i| format!("key{i}_{}{tag}", "v".repeat(16 * 1024))));
    parts
}

fn total_hits_lines(text: &str) -> Vec<&str> {
    text.lines().filter(|l| l.starts_with("ratelimit_service_rate_limit_total_hits{")).collect()
}

#[test]
fn huge_request_values_render_in_bounded_bytes_and_stay_distinct() {
    let stats = Stats::new(StatsOptions::default());
    for tag in 0..20 {
        stats.for_values(huge_override_key("d", tag)).total_hits.increment(1);
    }
    // The same values again land on the same series.
    stats.for_values(huge_override_key("d", 7)).total_hits.increment(1);
    let text = stats.render();
    // Six families of 20 series, each label at most 128 bytes: about 60 KB (it was 120 MB).
    assert!(text.len() < 100_000, "{} bytes", text.len());
    let lines = total_hits_lines(&text);
    assert_eq!(lines.len(), 20, "every long key keeps its own series");
    let counts: Vec<u64> = lines.iter().filter_map(|l| l.rsplit(' ').next()?.parse().ok()).collect();
    assert_eq!((counts.iter().sum::<u64>(), counts.iter().max()), (21, Some(&2)));
    for line in &lines {
        let key1 = line.split("key1=\"").nth(1).and_then(|rest| rest.split('"').next()).unwrap_or_default();
        assert_eq!(key1.len(), DEFAULT_MAX_VALUE_LABEL_BYTES, "{key1}");
        assert!(key1.starts_with("key0_vvvv") && key1.contains("…#"), "{key1}");
    }
    let used = stats.value_series_used();
    assert_eq!(used.series, 20);
    assert!(used.bytes <= 20 * 3 * DEFAULT_MAX_VALUE_LABEL_BYTES, "{used:?}");
}

#[test]
fn the_byte_cap_folds_series_named_by_request_values() {
    let value_series = ValueSeriesLimits { max_bytes: 1000, ..ValueSeriesLimits::default() };
    let stats = Stats::new(StatsOptions { value_series, ..StatsOptions::default() });
    for tag in 0..10 {
        stats.for_values(huge_override_key("d", tag)).total_hits.increment(1);
    }
    let text = stats.render();
    // Each series shows 1 + 128 + 128 label bytes: three fit in 1000, the rest fold.
    assert_eq!(total_hits_lines(&text).len(), 3 + 1, "{text}");
    assert_eq!(value(&text, "ratelimit_service_rate_limit_total_hits{domain=\"d\",key1=\"__folded__\"}"), 7);
    assert_eq!(stats.value_series_used(), Used { series: 3, bytes: 3 * 257 });
}

#[test]
fn unknown_domains_are_shortened_and_fold_past_the_caps() {
    let value_series = ValueSeriesLimits { max_series: 5, ..ValueSeriesLimits::default() };
    let stats = Stats::new(StatsOptions { value_series, ..StatsOptions::default() });
    let huge = |i: usize| format!("{i}{}", "d".repeat(16 * 1024));
    for i in 0..50 {
        stats.domain_not_found(&huge(i), 2);
    }
    stats.domain_not_found(&huge(0), 1);
    let text = stats.render();
    let lines: Vec<&str> =
        text.lines().filter(|l| l.starts_with("ratelimit_service_rate_limit_domain_not_found{")).collect();
    assert_eq!(lines.len(), 5 + 1, "{lines:?}");
    assert!(text.len() < 10_000, "{} bytes", text.len());
    assert_eq!(value(&text, "ratelimit_service_rate_limit_domain_not_found{domain=\"__folded__\"}"), 45 * 2);
    let first = "ratelimit_service_rate_limit_domain_not_found{domain=\"0ddd";
    assert_eq!(value(&text, first), 3, "the same domain keeps its series");
}

#[test]
fn unknown_domains_and_value_series_share_one_budget() {
    let value_series = ValueSeriesLimits { max_series: 3, ..ValueSeriesLimits::default() };
    let stats = Stats::new(StatsOptions { value_series, ..StatsOptions::default() });
    stats.domain_not_found("nope", 1);
    stats.domain_not_found("nada", 1);
    stats.for_values(vec!["d".into(), "user_1".into()]).total_hits.increment(1);
    stats.for_values(vec!["d".into(), "user_2".into()]).total_hits.increment(1);
    stats.domain_not_found("zilch", 1);
    let text = stats.render();
    assert_eq!(value(&text, "ratelimit_service_rate_limit_total_hits{domain=\"d\",key1=\"__folded__\"}"), 1);
    assert_eq!(value(&text, "ratelimit_service_rate_limit_domain_not_found{domain=\"__folded__\"}"), 1);
    assert_eq!(stats.value_series_used().series, 3);
}

#[test]
fn statsd_names_of_long_values_are_bounded() {
    let statsd = statsd::StatsdOptions {
        host: "127.0.0.1".into(),
        port: 9,
        protocol: statsd::Protocol::Udp,
        flush_interval: Duration::from_secs(1),
    };
    let stats = Stats::new(StatsOptions { statsd: Some(statsd), ..StatsOptions::default() });
    stats.for_values(huge_override_key("d", 1)).total_hits.increment(1);
    stats.domain_not_found(&"u".repeat(16 * 1024), 1);
    let mut lines = stats.statsd.as_ref().map(|s| s.lines()).unwrap_or_default();
    lines.retain(|l| l.starts_with("ratelimit.service.rate_limit."));
    assert_eq!(lines.len(), 2, "{lines:?}");
    for line in &lines {
        // "ratelimit.service.rate_limit." and ".over_limit_with_local_cache:1|c" around at
        // most three labels of 128 bytes.
        assert!(line.len() <= 30 + 3 * 128 + 2 + 40, "{} bytes: {line}", line.len());
        assert!(line.contains("…#"), "{line}");
    }
}

/// The largest `/metrics` the default caps allow: every series named by request values
/// used, with three labels that use up the byte cap, and every counter at its widest.
/// README's Metrics section states this size.
#[test]
fn the_worst_case_exposition_stays_within_the_documented_bound() {
    let stats = Stats::new(StatsOptions::default());
    let limits = ValueSeriesLimits::default();
    let label_bytes = limits.max_bytes / limits.max_series - 1;
    for i in 0..limits.max_series {
        let key1 = format!("{i:0width$}", width = label_bytes / 2);
        let key2 = format!("{i:0width$}", width = label_bytes - label_bytes / 2);
        let series = stats.for_values(vec!["d".into(), key1, key2]);
        for counter in [
            &series.total_hits,
            &series.over_limit,
            &series.near_limit,
            &series.within_limit,
            &series.shadow_mode,
            &series.over_limit_with_local_cache,
        ] {
            counter.increment(u64::MAX);
        }
    }
    stats.for_values(vec!["d".into(), "one".into(), "more".into()]).total_hits.increment(1);
    stats.domain_not_found("no_room_left", 1);
    let used = stats.value_series_used();
    assert_eq!(used.series, limits.max_series);
    assert!(used.bytes + limits.max_series > limits.max_bytes, "{used:?}");
    let size = stats.render().len();
    eprintln!("worst-case exposition with the default caps: {size} bytes");
    assert!(size < 13_000_000, "{size} bytes");
}

#[test]
fn response_time_is_in_milliseconds_when_asked() {
    let sum = |millis: bool| {
        let stats = Stats::new(StatsOptions { response_time_as_milliseconds: millis, ..StatsOptions::default() });
        stats.response_time.record(0.25);
        stats.upkeep();
        let text = stats.render();
        let sum = text
            .lines()
            .find(|l| l.starts_with("ratelimit_service_response_time_seconds_sum"))
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .unwrap_or_else(|| panic!("no sum in\n{text}"));
        (sum, text.contains("le=\"1000\""))
    };
    assert_eq!(sum(false), (0.25, false));
    assert_eq!(sum(true), (250.0, true));
}
