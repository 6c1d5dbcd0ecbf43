//! Process settings: the reference's environment variables, each also a flag.
//!
//! Owns reading every setting from its [`Source`] (flags over the environment), parsing
//! it with the reference's syntax (Go booleans and durations), and reporting *every*
//! invalid setting at once as `NAME="value" is not valid: reason`, so an operator fixes a
//! broken deployment in one round. `main` exits with code 64 (`EX_USAGE`) on any error.
//!
//! Each setting is declared once, as a typed [`Setting`] constant in the file of its
//! subsystem (`listeners`, `rules`, `xds`, `backend`, `service`, `logging`, `stats`,
//! `trace`), and read through that constant; [`SPECS`] lists them all. Defaults that a
//! module owns (its `DEFAULT_*` constants) are taken from it, not written again.
//!
//! Tests give a `HashMap` source; nothing here reads or writes the process environment
//! except [`Env`].

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use crate::config::{ConfigSource, EmptyConfig};
use crate::rules::BuildOptions;
use crate::serve::ConnectionLimits;
use crate::service::ServiceOptions;
use crate::stats::StatsOptions;
use crate::tls::TlsSettings;

pub mod backend;
pub mod listeners;
pub mod logging;
mod parse;
mod reader;
pub mod rlqs;
pub mod rules;
pub mod service;
mod setting;
pub mod stats;
#[cfg(test)]
mod tests;
pub mod trace;
pub mod xds;

pub use backend::Backend;
pub use listeners::Listen;
pub use logging::LogFormat;
pub use parse::{parse_bool, parse_duration};
use reader::Reader;
pub use setting::{Setting, Spec};

/// Every setting sluicegate reads, by subsystem. Defaults are the reference's, except
/// where docs/compatibility.md says otherwise (`BACKEND_TYPE`, `USE_STATSD`,
/// `REDIS_SOCKET_TYPE`).
pub const SPECS: &[Spec] = &ALL_SPECS;

const GROUPS: &[&[Spec]] = &[
    listeners::SPECS,
    rules::SPECS,
    xds::SPECS,
    backend::SPECS,
    service::SPECS,
    logging::SPECS,
    stats::SPECS,
    trace::SPECS,
    rlqs::SPECS,
];
const ALL_SPECS: [Spec; setting::total_len(GROUPS)] = setting::concat(GROUPS);

/// Reference settings accepted for compatibility that change nothing here; setting one
/// logs a warning saying so.
pub const IGNORED: &[(&str, &str)] = &[
    ("USE_PROMETHEUS", "Prometheus metrics are always served on /metrics"),
    ("PROMETHEUS_ADDR", "Prometheus metrics are served on the HTTP and debug ports"),
    ("PROMETHEUS_PATH", "Prometheus metrics are served on /metrics"),
    ("USE_DOG_STATSD", "not supported"),
    ("USE_DOG_STATSD_MOGRIFIERS", "not supported (DogStatsD is not)"),
    ("PROMETHEUS_MAPPER_YAML", "the Prometheus names are fixed, the reference's default mapping"),
    ("STOP_CACHE_KEY_INCREMENT_WHEN_OVERLIMIT", "not supported; CONSUME=all_or_nothing is the exact version"),
    ("REDIS_PIPELINE_WINDOW", "every request is already one pipeline"),
    ("REDIS_PIPELINE_LIMIT", "every request is already one pipeline"),
    ("REDIS_PERSECOND_PIPELINE_WINDOW", "every request is already one pipeline"),
    ("REDIS_PERSECOND_PIPELINE_LIMIT", "every request is already one pipeline"),
    ("REDIS_CLUSTER_PIPELINE_PARALLELISM", "a request's slots are always sent concurrently"),
    ("REDIS_PERSECOND_CLUSTER_PIPELINE_PARALLELISM", "a request's slots are always sent concurrently"),
    ("REDIS_POOL_ON_EMPTY_BEHAVIOR", "connections are multiplexed and never run out"),
    ("REDIS_PERSECOND_POOL_ON_EMPTY_BEHAVIOR", "connections are multiplexed and never run out"),
    ("REDIS_HEALTH_CHECK_ACTIVE_CONNECTION", "health always follows the Redis connection"),
    ("REDIS_STARTUP_MAX_ELAPSED_TIME", "sluicegate retries for ever, answering by BACKEND_FAILURE_POLICY meanwhile"),
    // The memcache backend is refused (BACKEND_TYPE=memcache names these), so its
    // settings could only be leftovers of a reference deployment: say so.
    ("MEMCACHE_HOST_PORT", MEMCACHE),
    ("MEMCACHE_SRV", MEMCACHE),
    ("MEMCACHE_SRV_REFRESH", MEMCACHE),
    ("MEMCACHE_MAX_IDLE_CONNS", MEMCACHE),
    ("MEMCACHE_TLS", MEMCACHE),
    ("MEMCACHE_TLS_CLIENT_CERT", MEMCACHE),
    ("MEMCACHE_TLS_CLIENT_KEY", MEMCACHE),
    ("MEMCACHE_TLS_CACERT", MEMCACHE),
    ("MEMCACHE_TLS_SKIP_HOSTNAME_VERIFICATION", MEMCACHE),
    // Read by the reference's OpenTelemetry SDK, not by sluicegate's exporter.
    ("OTEL_EXPORTER_OTLP_COMPRESSION", "spans are sent uncompressed"),
    ("OTEL_EXPORTER_OTLP_TRACES_COMPRESSION", "spans are sent uncompressed"),
    ("OTEL_EXPORTER_OTLP_PROTOCOL", "TRACING_EXPORTER_PROTOCOL picks the protocol, as in the reference"),
    ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "TRACING_EXPORTER_PROTOCOL picks the protocol, as in the reference"),
    ("OTEL_BSP_EXPORT_TIMEOUT", "each export is bounded by OTEL_EXPORTER_OTLP_TIMEOUT"),
];

/// Why every `MEMCACHE_*` setting is ignored.
const MEMCACHE: &str = "memcached is not supported; counters live in memory or Redis (BACKEND_TYPE)";

/// Where settings come from.
pub trait Source {
    /// The raw value of a setting, by its environment variable name.
    fn get(&self, name: &str) -> Option<String>;
    /// How to name the setting in an error (`NAME` or `--flag`).
    fn describe(&self, name: &str) -> String {
        name.to_string()
    }
}

/// The process environment.
#[derive(Clone, Copy, Debug, Default)]
pub struct Env;

impl Source for Env {
    fn get(&self, name: &str) -> Option<String> {
        std::env::var_os(name).map(|v| v.to_string_lossy().into_owned())
    }
}

impl Source for HashMap<String, String> {
    fn get(&self, name: &str) -> Option<String> {
        HashMap::get(self, name).cloned()
    }
}

impl Source for HashMap<&str, &str> {
    fn get(&self, name: &str) -> Option<String> {
        HashMap::get(self, name).map(|v| v.to_string())
    }
}

/// Command-line flags over another source: a flag wins over its variable.
#[derive(Debug)]
pub struct WithFlags<S> {
    /// Flag values by environment variable name.
    pub flags: HashMap<String, String>,
    pub base: S,
}

impl<S: Source> Source for WithFlags<S> {
    fn get(&self, name: &str) -> Option<String> {
        self.flags.get(name).cloned().or_else(|| self.base.get(name))
    }

    fn describe(&self, name: &str) -> String {
        if self.flags.contains_key(name) { format!("--{}", flag_name(name)) } else { name.to_string() }
    }
}

/// The flag for an environment variable: `GRPC_PORT` → `grpc-port`.
pub fn flag_name(env: &str) -> String {
    env.to_ascii_lowercase().replace('_', "-")
}

/// Every setting, parsed.
#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    pub grpc: Listen,
    /// gRPC worker threads (each a current-thread runtime with its own listener).
    pub grpc_workers: usize,
    /// `GRPC_SERVER_USE_TLS` and its files.
    pub grpc_tls: Option<TlsSettings>,
    pub http: (String, u16),
    pub debug: (String, u16),
    /// What one client can cost: connection caps and timeouts of every listener.
    pub connection_limits: ConnectionLimits,
    pub config_source: ConfigSource,
    /// The xDS provider's options: `Some` with `CONFIG_TYPE=GRPC_XDS_SOTW`, whose rules
    /// replace `config_source`'s.
    pub xds: Option<crate::xds::XdsOptions>,
    /// `MERGE_DOMAIN_CONFIG`, `DEFAULT_ALGORITHM`, `CONFIG_MAX_RULES`.
    pub rules: BuildOptions,
    pub force_start_without_initial_config: bool,
    /// `CONFIG_REFUSE_EMPTY`: whether a load that finds no domain fails.
    pub empty_config: EmptyConfig,
    pub backend: Backend,
    pub memory_max_counters: usize,
    pub service: ServiceOptions,
    pub stats: StatsOptions,
    /// `TRACING_*`: `Some` when `TRACING_ENABLED`.
    pub tracing: Option<crate::trace::TraceOptions>,
    /// `RLQS_*`, and `SHADOW_MODE` for quota assignments.
    pub rlqs: crate::rlqs::RlqsOptions,
    pub healthy_with_at_least_one_config_loaded: bool,
    pub shutdown_grace_period: Duration,
    pub log_level: tracing::level_filters::LevelFilter,
    pub log_format: LogFormat,
    /// Warnings to log once logging is up (settings that do nothing, ignored layouts).
    pub warnings: Vec<String>,
}

/// Every invalid setting of one parse.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SettingsError(pub Vec<String>);

impl std::fmt::Display for SettingsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0.join("\n"))
    }
}

impl std::error::Error for SettingsError {}

impl Reader<'_> {
    /// What was read, or every invalid setting.
    fn finish<T>(self, value: T) -> Result<T, SettingsError> {
        if self.errors.is_empty() { Ok(value) } else { Err(SettingsError(self.errors)) }
    }
}

/// The settings a config load depends on (`MERGE_DOMAIN_CONFIG`, `DEFAULT_ALGORITHM`),
/// for the commands that load rules without serving.
pub fn build_options(source: &dyn Source) -> Result<BuildOptions, SettingsError> {
    let mut r = Reader::new(source);
    let options = rules::build_options(&mut r);
    r.finish(options)
}

/// `CONFIG_REFUSE_EMPTY`, for the commands that load rules without serving.
pub fn empty_config(source: &dyn Source) -> Result<EmptyConfig, SettingsError> {
    let mut r = Reader::new(source);
    let empty = r.get(&rules::CONFIG_REFUSE_EMPTY);
    r.finish(empty)
}

impl Settings {
    /// Parses every setting from `source`. `config_paths` are the `--config` arguments.
    pub fn parse(source: &dyn Source, config_paths: Vec<PathBuf>) -> Result<Settings, SettingsError> {
        let mut r = Reader::new(source);
        let mut warnings = Vec::new();

        let listeners = listeners::read(&mut r);
        let use_xds = r.get(&rules::CONFIG_TYPE);
        let config_source = rules::config_source(&mut r, config_paths, use_xds, &mut warnings);
        let xds = xds::read(&mut r, use_xds);
        let build = rules::build_options(&mut r);
        let force_start_without_initial_config = r.get(&rules::FORCE_START_WITHOUT_INITIAL_CONFIG);
        let empty_config = r.get(&rules::CONFIG_REFUSE_EMPTY);
        let (backend, memory_max_counters) = backend::read(&mut r, &mut warnings);
        let service = service::read(&mut r);
        let near_limit_ratio = r.get(&stats::NEAR_LIMIT_RATIO);
        let healthy_with_at_least_one_config_loaded = r.get(&service::HEALTHY_WITH_AT_LEAST_ONE_CONFIG_LOADED);
        let shutdown_grace_period = r.get(&service::SHUTDOWN_GRACE_PERIOD);
        let log_level = r.get(&logging::LOG_LEVEL);
        let log_format = r.get(&logging::LOG_FORMAT);
        let stats = stats::read(&mut r, near_limit_ratio);
        let tracing = trace::read(&mut r, &mut warnings);
        let rlqs = rlqs::read(&mut r, service.global_shadow_mode);

        for (name, why) in IGNORED {
            if r.is_set(name) {
                warnings.push(format!("{name} is set but has no effect in sluicegate: {why}"));
            }
        }
        let listeners::Listeners { grpc, grpc_workers, grpc_tls, http, debug, connection_limits } = listeners;
        r.finish(Settings {
            grpc,
            grpc_workers,
            grpc_tls,
            http,
            debug,
            connection_limits,
            config_source,
            xds,
            rules: build,
            force_start_without_initial_config,
            empty_config,
            backend,
            memory_max_counters,
            service,
            stats,
            tracing,
            rlqs,
            healthy_with_at_least_one_config_loaded,
            shutdown_grace_period,
            log_level,
            log_format,
            warnings,
        })
    }

    /// Settings for tests and embedding: every default, all listeners on loopback port 0,
    /// one gRPC worker, the given rule paths, no grace period.
    pub fn for_tests(config_paths: Vec<PathBuf>) -> Settings {
        Settings::for_tests_with(config_paths, &[]).expect("test settings are valid")
    }

    /// [`Settings::for_tests`] with some variables set (they win over the test defaults).
    pub fn for_tests_with(config_paths: Vec<PathBuf>, variables: &[(&str, &str)]) -> Result<Settings, SettingsError> {
        use listeners::{DEBUG_HOST, DEBUG_PORT, GRPC_HOST, GRPC_PORT, GRPC_WORKERS, HOST, PORT};
        let mut source: HashMap<&str, &str> = [
            (HOST.env, "127.0.0.1"),
            (PORT.env, "0"),
            (GRPC_HOST.env, "127.0.0.1"),
            (GRPC_PORT.env, "0"),
            (GRPC_WORKERS.env, "1"),
            (DEBUG_HOST.env, "127.0.0.1"),
            (DEBUG_PORT.env, "0"),
            (service::SHUTDOWN_GRACE_PERIOD.env, "0"),
        ]
        .into_iter()
        .collect();
        source.extend(variables.iter().copied());
        Settings::parse(&source, config_paths)
    }
}
