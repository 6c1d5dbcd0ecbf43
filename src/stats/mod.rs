//! Statistics: the reference's stats, as Prometheus metrics (and statsd lines).
//!
//! Owns every metric the service records and their names. Families and labels follow the
//! reference's Prometheus mapping:
//!
//! - `ratelimit_service_rate_limit_{total_hits,over_limit,near_limit,within_limit,shadow_mode}`
//!   with `domain`, `key1` and, for deeper keys, `key2` (the remaining levels, dot-joined);
//! - `ratelimit_service_rate_limit_domain_not_found{domain}`;
//! - `ratelimit_service_config_load_success`, `ratelimit_service_config_load_error`;
//! - `ratelimit_service_should_rate_limit_error{err_type}`;
//! - `ratelimit_service_total_requests{grpc_method}` and the
//!   `ratelimit_service_response_time_seconds{grpc_method}` histogram;
//! - `ratelimit_service_global_shadow_mode`;
//!
//! plus sluicegate's own `sluicegate_*` gauges and counters (live counters, evictions,
//! the loaded config's version and load time).
//!
//! Recording is cheap: a rule's series are resolved once (the handles hang off the rule)
//! and a hit is a few relaxed atomic adds. Memory and scrape size are bounded: series
//! named by request values (`detailed_metric`, `value_to_metric`, request overrides,
//! unknown domains) show each label value in at most `STATS_MAX_VALUE_LABEL_BYTES` bytes
//! ([`label`]), and are capped together in number and in label bytes ([`value_series`]);
//! past the caps they are counted under a `__folded__` key (unknown domains under a
//! `__folded__` domain). Series named by the rules are the operator's and are not capped.
//! A scrape renders on the blocking pool, never on the runtime that serves health checks
//! ([`exposition`]).
//!
//! This module decides nothing; it only counts what `service` tells it.

pub mod backend;
mod exposition;
mod label;
pub mod lease;
mod listener;
mod millis;
pub mod rlqs;
mod rule_series;
mod rule_stats;
pub mod statsd;
mod value_series;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use metrics::{Counter, Gauge, Histogram, Key, Label, Metadata, Recorder};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use smallvec::SmallVec;

pub use label::MIN_LABEL_BYTES;
use label::{ShownLabel, Text};
pub use listener::{AcceptMetrics, TimeoutMetrics};
pub use rule_series::RuleSeries;
pub use rule_stats::RuleStats;
use value_series::{Budget, SeriesMap};
pub use value_series::{
    DEFAULT_MAX_VALUE_LABEL_BYTES, DEFAULT_MAX_VALUE_SERIES, DEFAULT_MAX_VALUE_SERIES_BYTES, Used, ValueSeriesLimits,
};

/// What replaces the key of a series past the caps.
pub const FOLDED: &str = "__folded__";

const METADATA: Metadata<'static> = Metadata::new(module_path!(), metrics::Level::INFO, Some(module_path!()));

/// The response-time histogram's buckets, in seconds.
const RESPONSE_TIME_BUCKETS: &[f64] =
    &[0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 1.0];

/// Spans tracing did not export, by `reason` (`queue_full`, `export_failed`).
pub const TRACE_SPANS_DROPPED: &str = "sluicegate_trace_spans_dropped_total";

/// The reference's default `NEAR_LIMIT_RATIO`.
pub const DEFAULT_NEAR_LIMIT_RATIO: f32 = 0.8;

/// How the stats are set up (from settings).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StatsOptions {
    /// `DISABLE_STATS`: record nothing (the series still render, at zero).
    pub disabled: bool,
    /// `NEAR_LIMIT_RATIO`.
    pub near_limit_ratio: f32,
    /// `EXTRA_TAGS`: labels on every series (and a `.__k=v` suffix in statsd).
    pub extra_tags: Vec<(String, String)>,
    /// Also send to statsd.
    pub statsd: Option<statsd::StatsdOptions>,
    /// `STATS_MAX_VALUE_*`: the caps on series named by request values.
    pub value_series: ValueSeriesLimits,
    /// `PROMETHEUS_RESPONSE_TIME_AS_MILLISECONDS`: the Prometheus response-time
    /// histogram in milliseconds, as the reference's legacy mapping ([`millis`]).
    pub response_time_as_milliseconds: bool,
}

/// Every metric, registered with the Prometheus recorder (and statsd, if enabled).
pub struct Stats {
    recorder: Box<dyn Recorder + Send + Sync>,
    prometheus: PrometheusHandle,
    options: StatsOptions,
    pub config_load_success: Counter,
    pub config_load_error: Counter,
    pub service_error: Counter,
    pub backend_error: Counter,
    pub total_requests: Counter,
    pub response_time: Histogram,
    pub global_shadow_mode: Counter,
    pub counters_live: Gauge,
    pub counter_evictions: Counter,
    pub counters_reclaimed: Counter,
    pub config_version: Gauge,
    pub config_loaded_at: Gauge,
    /// Rule series by stats key: reused across reloads, so a rule's counts continue.
    rules: Mutex<HashMap<Vec<String>, Arc<RuleStats>>>,
    /// Series named by request values, within `value_budget`; and, outside it, one
    /// `__folded__` series per domain (a configured one: see [`Stats::for_values`]).
    values: SeriesMap<Arc<RuleStats>>,
    domains_not_found: SeriesMap<Counter>,
    /// Unknown domains past `value_budget`, all together.
    domain_not_found_folded: OnceLock<Counter>,
    value_budget: Budget,
    scrapes: exposition::Scrapes,
    /// Flushes statsd, if enabled (kept so the task lives as long as the stats).
    pub statsd: Option<Arc<statsd::StatsdSink>>,
}

impl std::fmt::Debug for Stats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stats").field("options", &self.options).finish_non_exhaustive()
    }
}

fn labels(pairs: &[(&str, &str)]) -> Vec<Label> {
    pairs.iter().map(|(k, v)| Label::new(k.to_string(), v.to_string())).collect()
}

impl Stats {
    pub fn new(options: StatsOptions) -> Arc<Stats> {
        let millis = options.response_time_as_milliseconds;
        let scale = if millis { 1000.0 } else { 1.0 };
        let buckets: Vec<f64> = RESPONSE_TIME_BUCKETS.iter().map(|b| b * scale).collect();
        let mut builder = PrometheusBuilder::new()
            .set_buckets_for_metric(metrics_exporter_prometheus::Matcher::Full(millis::RESPONSE_TIME.into()), &buckets)
            .expect("the bucket list is not empty");
        for (k, v) in &options.extra_tags {
            builder = builder.add_global_label(k.clone(), v.clone());
        }
        let prometheus = builder.build_recorder();
        let handle = prometheus.handle();
        let statsd = options.statsd.clone().map(|o| Arc::new(statsd::StatsdSink::new(o, &options.extra_tags)));
        let recorder: Box<dyn Recorder + Send + Sync> = match (&statsd, millis) {
            (Some(sink), false) => Box::new(statsd::Both(prometheus, statsd::StatsdRecorder(sink.clone()))),
            (Some(sink), true) => {
                Box::new(statsd::Both(millis::Millis(prometheus), statsd::StatsdRecorder(sink.clone())))
            }
            (None, false) => Box::new(prometheus),
            (None, true) => Box::new(millis::Millis(prometheus)),
        };
        let counter = |name: &'static str, l: &[(&str, &str)]| {
            recorder.register_counter(&Key::from_parts(name, labels(l)), &METADATA)
        };
        let gauge = |name: &'static str| recorder.register_gauge(&Key::from_name(name), &METADATA);
        let method = [("grpc_method", "ShouldRateLimit")];
        let stats = Stats {
            config_load_success: counter("ratelimit_service_config_load_success", &[]),
            config_load_error: counter("ratelimit_service_config_load_error", &[]),
            service_error: counter("ratelimit_service_should_rate_limit_error", &[("err_type", "service_error")]),
            backend_error: counter("ratelimit_service_should_rate_limit_error", &[("err_type", "redis_error")]),
            total_requests: counter("ratelimit_service_total_requests", &method),
            response_time: recorder.register_histogram(
                &Key::from_parts("ratelimit_service_response_time_seconds", labels(&method)),
                &METADATA,
            ),
            global_shadow_mode: counter("ratelimit_service_global_shadow_mode", &[]),
            counters_live: gauge("sluicegate_memory_counters"),
            counter_evictions: counter("sluicegate_memory_counter_evictions_total", &[]),
            counters_reclaimed: counter("sluicegate_memory_counters_reclaimed_total", &[]),
            config_version: gauge("sluicegate_config_version"),
            config_loaded_at: gauge("sluicegate_config_loaded_at_seconds"),
            recorder,
            prometheus: handle,
            value_budget: Budget::new(options.value_series.clone()),
            options,
            rules: Mutex::new(HashMap::new()),
            values: SeriesMap::default(),
            domains_not_found: SeriesMap::default(),
            domain_not_found_folded: OnceLock::new(),
            scrapes: exposition::Scrapes::default(),
            statsd,
        };
        for (name, help) in [
            ("ratelimit_service_rate_limit_total_hits", "Hits (sum of hits_addend) counted against a rule"),
            ("ratelimit_service_rate_limit_over_limit", "Hits past a rule's limit"),
            (
                "ratelimit_service_rate_limit_near_limit",
                "Hits between NEAR_LIMIT_RATIO of a rule's limit and the limit",
            ),
            ("ratelimit_service_rate_limit_within_limit", "Hits of OK answers"),
            ("ratelimit_service_rate_limit_shadow_mode", "Over-limit hits a shadow-mode rule let through"),
            (
                "ratelimit_service_rate_limit_over_limit_with_local_cache",
                "Over-limit hits answered from the local over-limit cache, without Redis",
            ),
            ("ratelimit_service_rate_limit_domain_not_found", "Descriptors of requests for an unknown domain"),
            ("ratelimit_service_config_load_success", "Rule loads that succeeded"),
            ("ratelimit_service_config_load_error", "Rule loads that failed (the previous rules stayed)"),
            ("ratelimit_service_should_rate_limit_error", "Calls answered with an error, by kind"),
            ("ratelimit_service_total_requests", "gRPC calls"),
            ("ratelimit_service_global_shadow_mode", "Answers SHADOW_MODE turned from OVER_LIMIT to OK"),
            ("sluicegate_memory_counter_evictions_total", "Counters evicted because MEMORY_MAX_COUNTERS was reached"),
            ("sluicegate_memory_counters_reclaimed_total", "Counters dropped because their window ended"),
        ] {
            stats.recorder.describe_counter(name.into(), None, help.into());
        }
        stats.recorder.describe_histogram(
            "ratelimit_service_response_time_seconds".into(),
            Some(metrics::Unit::Seconds),
            "Time to answer a ShouldRateLimit call".into(),
        );
        for (name, help) in [
            ("sluicegate_memory_counters", "Live counters in memory"),
            ("sluicegate_config_version", "Version of the loaded rules (counts successful loads)"),
            ("sluicegate_config_loaded_at_seconds", "Unix time the loaded rules were loaded"),
        ] {
            stats.recorder.describe_gauge(name.into(), None, help.into());
        }
        Arc::new(stats)
    }

    /// A counter outside the fixed set (backend metrics), registered on first use.
    pub fn counter(&self, name: &'static str, labels_: &[(&str, &str)], help: &'static str) -> Counter {
        self.recorder.describe_counter(name.into(), None, help.into());
        self.recorder.register_counter(&Key::from_parts(name, labels(labels_)), &METADATA)
    }

    /// A gauge outside the fixed set (backend metrics), registered on first use.
    pub fn gauge(&self, name: &'static str, labels_: &[(&str, &str)], help: &'static str) -> Gauge {
        self.recorder.describe_gauge(name.into(), None, help.into());
        self.recorder.register_gauge(&Key::from_parts(name, labels(labels_)), &METADATA)
    }

    pub fn near_limit_ratio(&self) -> f32 {
        self.options.near_limit_ratio
    }

    pub fn enabled(&self) -> bool {
        !self.options.disabled
    }

    /// The Prometheus text exposition of every series, rendered on this thread (a server
    /// uses [`Stats::scrape`]).
    pub fn render(&self) -> String {
        self.prometheus.render()
    }

    /// Folds recorded histogram samples into their buckets; run every few seconds.
    pub fn upkeep(&self) {
        self.prometheus.run_upkeep();
    }

    fn register(&self, domain: &str, key1: &str, key2: Option<&str>) -> RuleStats {
        let mut l = vec![("domain", domain), ("key1", key1)];
        if let Some(key2) = key2 {
            l.push(("key2", key2));
        }
        let counter =
            |name: &'static str| self.recorder.register_counter(&Key::from_parts(name, labels(&l)), &METADATA);
        RuleStats {
            total_hits: counter("ratelimit_service_rate_limit_total_hits"),
            over_limit: counter("ratelimit_service_rate_limit_over_limit"),
            near_limit: counter("ratelimit_service_rate_limit_near_limit"),
            within_limit: counter("ratelimit_service_rate_limit_within_limit"),
            shadow_mode: counter("ratelimit_service_rate_limit_shadow_mode"),
            over_limit_with_local_cache: counter("ratelimit_service_rate_limit_over_limit_with_local_cache"),
        }
    }

    /// The series of a stats key from the rules, shared by every rule that has it (and
    /// across reloads). Its labels are the operator's, so they are shown as they are.
    pub fn keyed(&self, parts: Vec<String>) -> Arc<RuleStats> {
        let mut rules = self.rules.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = rules.get(&parts) {
            return s.clone();
        }
        let key2 = parts.get(2..).filter(|rest| !rest.is_empty()).map(|rest| rest.join("."));
        let (domain, key1) = (parts.first().map_or("", String::as_str), parts.get(1).map_or("", String::as_str));
        let s = Arc::new(self.register(domain, key1, key2.as_deref()));
        rules.insert(parts, s.clone());
        s
    }

    /// The series of a stats key made from request values (`domain`, then the levels),
    /// each label value shortened past `STATS_MAX_VALUE_LABEL_BYTES`. Past the caps, the
    /// domain's `__folded__` series: those are not capped, as the domain is a configured
    /// one (overrides and value-named rules only exist for configured domains).
    pub fn for_values(&self, parts: Vec<String>) -> Arc<RuleStats> {
        let max = self.options.value_series.max_label_bytes;
        let domain = ShownLabel::one(parts.first().map_or("", String::as_str), max);
        let mut labels: SmallVec<[ShownLabel<'_>; 3]> = SmallVec::new();
        labels.push(domain);
        labels.push(ShownLabel::one(parts.get(1).map_or("", String::as_str), max));
        if let Some(rest) = parts.get(2..).filter(|rest| !rest.is_empty()) {
            labels.push(ShownLabel::new(Text::Joined(rest), max));
        }
        let register = |shown: &[Box<str>]| {
            let label = |i: usize| shown.get(i).map(|s| &**s);
            Arc::new(self.register(label(0).unwrap_or(""), label(1).unwrap_or(""), label(2)))
        };
        if let Some(series) = self.values.get_or_admit(&labels, &self.value_budget, register) {
            return series;
        }
        self.values.get_or_insert(&[domain, ShownLabel::one(FOLDED, max)], register)
    }

    /// Counts descriptors of a request for a domain that has no rules. The domain is the
    /// request's, so it is shown shortened, and past the caps as `__folded__`.
    pub fn domain_not_found(&self, domain: &str, descriptors: u64) {
        if self.options.disabled {
            return;
        }
        let register = |shown: &str| {
            self.recorder.register_counter(
                &Key::from_parts("ratelimit_service_rate_limit_domain_not_found", labels(&[("domain", shown)])),
                &METADATA,
            )
        };
        let label = [ShownLabel::one(domain, self.options.value_series.max_label_bytes)];
        let counter = self
            .domains_not_found
            .get_or_admit(&label, &self.value_budget, |shown| register(shown.first().map_or("", |s| &**s)))
            .unwrap_or_else(|| self.domain_not_found_folded.get_or_init(|| register(FOLDED)).clone());
        counter.increment(descriptors);
    }

    /// What the series named by request values have used of their caps.
    pub fn value_series_used(&self) -> Used {
        self.value_budget.used()
    }

    /// Counts a good load and sets the gauges that describe the rules it put in force.
    pub fn config_loaded(&self, version: u64, loaded_at: std::time::SystemTime, domains: usize) {
        self.config_load_success.increment(1);
        self.config_version.set(version as f64);
        let at = loaded_at.duration_since(std::time::UNIX_EPOCH).unwrap_or(Duration::ZERO);
        self.config_loaded_at.set(at.as_secs_f64());
        // An empty load lets every request through: worth an alert, even between scrapes.
        self.gauge("sluicegate_config_domains", &[], "Domains in the loaded rules (0: no request is limited)")
            .set(domains as f64);
        self.counter("sluicegate_config_empty_loads_total", &[], "Loads that succeeded with no domain")
            .increment(u64::from(domains == 0));
    }

    /// Counts a failed load.
    pub fn config_failed(&self) {
        self.config_load_error.increment(1);
    }
}

#[cfg(test)]
mod tests;
