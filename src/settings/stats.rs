//! Stats settings: the near-limit ratio, statsd, extra tags, turning stats off, and the
//! caps on series named by request values (`STATS_MAX_VALUE_*`).

use std::time::Duration;

use super::parse::{parse_bool, parse_count, parse_duration, parse_port, text};
use super::reader::Reader;
use super::setting::{decimal, settings};
use crate::stats::statsd::{Protocol, StatsdOptions};
use crate::stats::{
    DEFAULT_MAX_VALUE_LABEL_BYTES, DEFAULT_MAX_VALUE_SERIES, DEFAULT_MAX_VALUE_SERIES_BYTES, MIN_LABEL_BYTES,
    StatsOptions, ValueSeriesLimits,
};

settings! {
    NEAR_LIMIT_RATIO: f32 = "0.8",
        |s| match s.parse::<f32>() {
            Ok(f) if (0.0..=1.0).contains(&f) => Ok(f),
            _ => Err("expected a number from 0 to 1".into()),
        },
        "Fraction of a limit above which hits count as near the limit";
    USE_STATSD: bool = "false", parse_bool, "Also send stats to statsd";
    STATSD_HOST: String = "localhost", text, "statsd host";
    STATSD_PORT: u16 = "8125", parse_port, "statsd port";
    STATSD_PROTOCOL: Protocol = "tcp",
        |s| match s.to_ascii_lowercase().as_str() {
            "tcp" => Ok(Protocol::Tcp),
            "udp" => Ok(Protocol::Udp),
            _ => Err("expected tcp or udp".into()),
        },
        "statsd transport: tcp (the reference's default) or udp";
    STATS_FLUSH_INTERVAL: Duration = "10s",
        |s| match parse_duration(s) {
            Ok(d) if d >= Duration::from_millis(100) => Ok(d),
            Ok(_) => Err("expected at least 100ms".into()),
            Err(e) => Err(e),
        },
        "How often stats go to statsd";
    DISABLE_STATS: bool = "false", parse_bool, "Record no stats (the /metrics series stay at zero)";
    EXTRA_TAGS: Vec<(String, String)> = "", extra_tags, "Labels on every series, as k1:v1,k2:v2";
    STATS_MAX_VALUE_SERIES: usize = decimal!(DEFAULT_MAX_VALUE_SERIES), parse_count,
        "Most series named by request values (detailed_metric, value_to_metric, overrides, unknown domains); more count under __folded__";
    STATS_MAX_VALUE_SERIES_BYTES: usize = decimal!(DEFAULT_MAX_VALUE_SERIES_BYTES), parse_count,
        "Most bytes of label values over all series named by request values; more count under __folded__";
    STATS_MAX_VALUE_LABEL_BYTES: usize = decimal!(DEFAULT_MAX_VALUE_LABEL_BYTES),
        |s| match s.parse::<usize>() {
            Ok(n) if n >= MIN_LABEL_BYTES => Ok(n),
            _ => Err(format!("expected a whole number of at least {MIN_LABEL_BYTES}")),
        },
        "Longest label value taken from a request; a longer one shows a prefix and a hash of the whole (at least 32)";
    PROMETHEUS_RESPONSE_TIME_AS_MILLISECONDS: bool = "false", parse_bool,
        "Report ratelimit_service_response_time_seconds in milliseconds (the reference's legacy scale)";
}

/// `k1:v1,k2:v2`; empty items are skipped.
fn extra_tags(s: &str) -> Result<Vec<(String, String)>, String> {
    s.split(',')
        .filter(|t| !t.trim().is_empty())
        .map(|t| match t.split_once(':') {
            Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.trim().to_string())),
            _ => Err(format!("expected k1:v1,k2:v2, not {t:?}")),
        })
        .collect()
}

/// The stats settings; `near_limit_ratio` is read earlier (errors keep their order).
pub(super) fn read(r: &mut Reader<'_>, near_limit_ratio: f32) -> StatsOptions {
    let use_statsd = r.get(&USE_STATSD);
    let statsd = StatsdOptions {
        host: r.get(&STATSD_HOST),
        port: r.get(&STATSD_PORT),
        protocol: r.get(&STATSD_PROTOCOL),
        flush_interval: r.get(&STATS_FLUSH_INTERVAL),
    };
    let extra_tags = r.get(&EXTRA_TAGS);
    let value_series = ValueSeriesLimits {
        max_series: r.get(&STATS_MAX_VALUE_SERIES),
        max_bytes: r.get(&STATS_MAX_VALUE_SERIES_BYTES),
        max_label_bytes: r.get(&STATS_MAX_VALUE_LABEL_BYTES),
    };
    StatsOptions {
        disabled: r.get(&DISABLE_STATS),
        near_limit_ratio,
        extra_tags,
        statsd: use_statsd.then_some(statsd),
        value_series,
        response_time_as_milliseconds: r.get(&PROMETHEUS_RESPONSE_TIME_AS_MILLISECONDS),
    }
}
