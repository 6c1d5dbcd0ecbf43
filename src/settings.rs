//! Process settings: the reference's environment variables, each also a flag.
//!
//! Owns reading every setting from its [`Source`] (flags over the environment), parsing
//! it with the reference's syntax (Go booleans and durations), and reporting *every*
//! invalid setting at once as `NAME="value" is not valid: reason`, so an operator fixes a
//! broken deployment in one round. `main` exits with code 64 (`EX_USAGE`) on any error.
//!
//! Tests give a `HashMap` source; nothing here reads or writes the process environment
//! except [`Env`].

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::config::{ConfigSource, EmptyConfig, RuntimeLayout};
use crate::limiter::Algorithm;
use crate::rules::BuildOptions;
use crate::serve::{ConnectionLimits, GrpcLimits, HttpLimits};
use crate::service::{Consume, HeaderNames, RequestCaps, ServiceOptions};
use crate::stats::statsd::{Protocol, StatsdOptions};
use crate::stats::{MIN_LABEL_BYTES, StatsOptions, ValueSeriesLimits};
use crate::store::FailurePolicy;
use crate::store::memory::DEFAULT_MAX_COUNTERS;
use crate::store::redis::{Credentials, RedisOptions, RedisTarget, RedisTls, Topology};
use crate::tls::TlsSettings;

/// One setting: its environment variable, default and help. The flag is the variable
/// in lower case with dashes (`GRPC_PORT` is `--grpc-port`).
#[derive(Clone, Copy, Debug)]
pub struct Spec {
    pub env: &'static str,
    pub default: &'static str,
    pub help: &'static str,
}

const fn spec(env: &'static str, default: &'static str, help: &'static str) -> Spec {
    Spec { env, default, help }
}

/// Every setting sluicegate reads. Defaults are the reference's, except where
/// docs/compatibility.md says otherwise (`BACKEND_TYPE`, `USE_STATSD`, `REDIS_SOCKET_TYPE`).
pub const SPECS: &[Spec] = &[
    spec("HOST", "0.0.0.0", "Address of the HTTP listener (/healthcheck, /json)"),
    spec("PORT", "8080", "Port of the HTTP listener (0 picks a free port)"),
    spec("GRPC_HOST", "0.0.0.0", "Address of the gRPC listener"),
    spec("GRPC_PORT", "8081", "Port of the gRPC listener (0 picks a free port)"),
    spec("GRPC_UDS", "", "Serve gRPC on this unix socket instead of GRPC_HOST:GRPC_PORT"),
    spec("GRPC_SERVER_USE_TLS", "false", "Serve gRPC over TLS"),
    spec("GRPC_SERVER_TLS_CERT", "", "PEM certificate chain of the gRPC server (reloaded when it changes)"),
    spec("GRPC_SERVER_TLS_KEY", "", "PEM private key of the gRPC server (reloaded when it changes)"),
    spec(
        "GRPC_CLIENT_TLS_CACERT",
        "",
        "Mutual TLS: PEM CA certificates that must have issued the client's certificate",
    ),
    spec("GRPC_CLIENT_TLS_SAN", "", "Mutual TLS: a name the client's certificate must carry"),
    spec("GRPC_WORKERS", "0", "gRPC worker threads, each with its own runtime and listener (0: one per CPU)"),
    spec("DEBUG_HOST", "0.0.0.0", "Address of the debug listener (/rlconfig)"),
    spec("DEBUG_PORT", "6070", "Port of the debug listener (0 picks a free port)"),
    spec(
        "GRPC_MAX_CONNECTIONS",
        "4096",
        "Most open gRPC connections, all workers together; past it new ones wait in the listen backlog",
    ),
    spec("GRPC_MAX_CONCURRENT_STREAMS", "1024", "Most calls at once on one gRPC connection (HTTP/2 streams)"),
    spec(
        "GRPC_HANDSHAKE_TIMEOUT",
        "10s",
        "A gRPC connection must finish its TLS handshake and HTTP/2 preface within this",
    ),
    spec("GRPC_MAX_CONNECTION_IDLE", "15m", "Send GOAWAY to a gRPC connection without a call for this long (0: never)"),
    spec("GRPC_MAX_CONNECTION_AGE", "24h", "Send GOAWAY to a gRPC connection at about this age, +/-10% (0: never)"),
    spec("GRPC_MAX_CONNECTION_AGE_GRACE", "1h", "Then close it if it is still open this long after (0: never)"),
    spec(
        "HTTP_MAX_CONNECTIONS",
        "1024",
        "Most open connections on each of the HTTP and debug listeners; past it new ones wait in the listen backlog",
    ),
    spec(
        "HTTP_HEADER_READ_TIMEOUT",
        "10s",
        "An HTTP request head must arrive within this of the accept or its first byte",
    ),
    spec("HTTP_IDLE_TIMEOUT", "60s", "Close a keep-alive HTTP connection that sends no request for this long"),
    spec("HTTP_REQUEST_TIMEOUT", "30s", "Reading an HTTP request's body and answering it; past it, 408 and close"),
    spec("CONFIG_TYPE", "FILE", "Where rules come from; only FILE is supported"),
    spec("RUNTIME_ROOT", "/srv/runtime_data/current", "Runtime root directory (reference layout)"),
    spec("RUNTIME_SUBDIRECTORY", "", "Subdirectory of RUNTIME_ROOT holding the rules (reference layout)"),
    spec("RUNTIME_APPDIRECTORY", "config", "Directory under the subdirectory with the rule files"),
    spec("RUNTIME_IGNOREDOTFILES", "false", "Skip dot-files and dot-directories in the reference layout"),
    spec("RUNTIME_WATCH_ROOT", "true", "Reload when RUNTIME_ROOT is swapped rather than on file changes"),
    spec("MERGE_DOMAIN_CONFIG", "false", "Allow several files to define the same domain"),
    spec(
        "CONFIG_MAX_RULES",
        "200000",
        "Most rules (descriptor nodes, YAML aliases counted once per use) one load may build",
    ),
    spec("FORCE_START_WITHOUT_INITIAL_CONFIG", "false", "Start even if the first config load fails"),
    spec(
        "CONFIG_REFUSE_EMPTY",
        "false",
        "Fail a config load that finds no domain (the previous rules stay; at start-up, exit 1)",
    ),
    spec("BACKEND_TYPE", "memory", "Where counters live: memory (embedded) or redis"),
    spec("MEMORY_MAX_COUNTERS", "1000000", "Most live counters in memory; the longest-idle are evicted past it"),
    spec(
        "BACKEND_FAILURE_POLICY",
        "error",
        "When Redis fails: error (UNAVAILABLE; Envoy's failure_mode_deny decides), allow (answer OK) or local (count in memory)",
    ),
    spec("REDIS_SOCKET_TYPE", "tcp", "How REDIS_URL is read: tcp (host:port) or unix (a socket path)"),
    spec(
        "REDIS_TYPE",
        "SINGLE",
        "single, sentinel (REDIS_URL=master,sentinel1,...) or cluster (REDIS_URL=node1,node2,...)",
    ),
    spec("REDIS_URL", "localhost:6379", "Redis address(es): host:port, a socket path, or redis:// and rediss:// URLs"),
    spec("REDIS_POOL_SIZE", "10", "Connections to Redis (each carries many requests at once)"),
    spec("REDIS_AUTH", "", "Redis password, or user:password"),
    spec("REDIS_SENTINEL_AUTH", "", "Sentinel password, or user:password"),
    spec("REDIS_TLS", "false", "Connect to Redis over TLS"),
    spec("REDIS_TLS_CACERT", "", "PEM CA certificates to verify Redis with (default: the system's)"),
    spec("REDIS_TLS_CLIENT_CERT", "", "PEM client certificate for Redis"),
    spec("REDIS_TLS_CLIENT_KEY", "", "PEM client key for Redis"),
    spec("REDIS_TLS_SKIP_HOSTNAME_VERIFICATION", "false", "Do not verify Redis's certificate (testing only)"),
    spec("REDIS_TIMEOUT", "10s", "Bound on connecting to Redis and on every call"),
    spec("REDIS_STARTUP_INITIAL_INTERVAL", "1s", "First pause between connection attempts at start-up"),
    spec("REDIS_STARTUP_MAX_INTERVAL", "30s", "Longest pause between connection attempts at start-up"),
    spec("REDIS_PERSECOND", "false", "Count per-second limits in a second Redis (the REDIS_PERSECOND_* settings)"),
    spec("REDIS_PERSECOND_SOCKET_TYPE", "tcp", "REDIS_SOCKET_TYPE of the per-second Redis"),
    spec("REDIS_PERSECOND_TYPE", "SINGLE", "REDIS_TYPE of the per-second Redis"),
    spec("REDIS_PERSECOND_URL", "localhost:6380", "REDIS_URL of the per-second Redis"),
    spec("REDIS_PERSECOND_POOL_SIZE", "10", "REDIS_POOL_SIZE of the per-second Redis"),
    spec("REDIS_PERSECOND_AUTH", "", "REDIS_AUTH of the per-second Redis"),
    spec("REDIS_PERSECOND_SENTINEL_AUTH", "", "REDIS_SENTINEL_AUTH of the per-second Redis"),
    spec("REDIS_PERSECOND_TLS", "false", "REDIS_TLS of the per-second Redis (with the REDIS_TLS_* files)"),
    spec("REDIS_PERSECOND_TIMEOUT", "10s", "REDIS_TIMEOUT of the per-second Redis"),
    spec("CACHE_KEY_PREFIX", "", "Prefix of every Redis key"),
    spec("EXPIRATION_JITTER_MAX_SECONDS", "300", "Fixed-window Redis keys live up to this much past their window"),
    spec(
        "LOCAL_CACHE_SIZE_IN_BYTES",
        "0",
        "Remember over-limit Redis keys in this much memory, skipping Redis (0: off)",
    ),
    spec("DEFAULT_ALGORITHM", "fixed_window", "Algorithm of limits and domains that name none"),
    spec(
        "CONSUME",
        "always",
        "always: every matched limit counts the hit; all_or_nothing: a rejected request counts on none",
    ),
    spec("SHADOW_MODE", "false", "Never reject: OVER_LIMIT answers become OK (statuses keep theirs)"),
    spec("QUOTA_MODE", "false", "Treat every descriptor as a quota descriptor"),
    spec("LIMIT_RESPONSE_HEADERS_ENABLED", "false", "Add RateLimit-Limit/Remaining/Reset headers to responses"),
    spec("LIMIT_LIMIT_HEADER", "RateLimit-Limit", "Name of the limit header"),
    spec("LIMIT_REMAINING_HEADER", "RateLimit-Remaining", "Name of the remaining header"),
    spec("LIMIT_RESET_HEADER", "RateLimit-Reset", "Name of the reset header"),
    spec("RESPONSE_DYNAMIC_METADATA", "false", "Return the request and matched rules' metadata as dynamic metadata"),
    spec("NEAR_LIMIT_RATIO", "0.8", "Fraction of a limit above which hits count as near the limit"),
    spec("HEALTHY_WITH_AT_LEAST_ONE_CONFIG_LOADED", "false", "Report unhealthy until a config with a domain loads"),
    spec("SHUTDOWN_GRACE_PERIOD", "5s", "After SIGTERM, keep answering this long before stopping"),
    spec("MAX_DESCRIPTORS", "256", "Most descriptors in one request"),
    spec("MAX_ENTRIES", "64", "Most entries in one descriptor"),
    spec("MAX_ENTRY_BYTES", "16384", "Longest descriptor key, value or domain, in bytes"),
    spec("LOG_LEVEL", "WARN", "trace, debug, info, warn or error"),
    spec("LOG_FORMAT", "text", "text or json"),
    spec("USE_STATSD", "false", "Also send stats to statsd"),
    spec("STATSD_HOST", "localhost", "statsd host"),
    spec("STATSD_PORT", "8125", "statsd port"),
    spec("STATSD_PROTOCOL", "tcp", "statsd transport: tcp (the reference's default) or udp"),
    spec("STATS_FLUSH_INTERVAL", "10s", "How often stats go to statsd"),
    spec("DISABLE_STATS", "false", "Record no stats (the /metrics series stay at zero)"),
    spec("EXTRA_TAGS", "", "Labels on every series, as k1:v1,k2:v2"),
    spec(
        "STATS_MAX_VALUE_SERIES",
        "10000",
        "Most series named by request values (detailed_metric, value_to_metric, overrides, unknown domains); more count under __folded__",
    ),
    spec(
        "STATS_MAX_VALUE_SERIES_BYTES",
        "1048576",
        "Most bytes of label values over all series named by request values; more count under __folded__",
    ),
    spec(
        "STATS_MAX_VALUE_LABEL_BYTES",
        "128",
        "Longest label value taken from a request; a longer one shows a prefix and a hash of the whole (at least 32)",
    ),
];

/// Reference settings accepted for compatibility that change nothing here; setting one
/// logs a warning saying so.
pub const IGNORED: &[(&str, &str)] = &[
    ("USE_PROMETHEUS", "Prometheus metrics are always served on /metrics"),
    ("PROMETHEUS_ADDR", "Prometheus metrics are served on the HTTP and debug ports"),
    ("PROMETHEUS_PATH", "Prometheus metrics are served on /metrics"),
    ("USE_DOG_STATSD", "not supported"),
    ("TRACING_ENABLED", "not supported"),
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
];

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

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Listen {
    Tcp { host: String, port: u16 },
    Unix(PathBuf),
}

impl Listen {
    /// Resolves a TCP listen address (hosts may be names, as in the reference).
    pub fn socket_addr(host: &str, port: u16) -> std::io::Result<SocketAddr> {
        use std::net::ToSocketAddrs;
        (host, port)
            .to_socket_addrs()?
            .next()
            .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, format!("{host} has no address")))
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum Backend {
    Memory,
    Redis(Box<RedisOptions>),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
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
    /// `MERGE_DOMAIN_CONFIG`, `DEFAULT_ALGORITHM`, `CONFIG_MAX_RULES`.
    pub rules: BuildOptions,
    pub force_start_without_initial_config: bool,
    /// `CONFIG_REFUSE_EMPTY`: whether a load that finds no domain fails.
    pub empty_config: EmptyConfig,
    pub backend: Backend,
    pub memory_max_counters: usize,
    pub service: ServiceOptions,
    pub stats: StatsOptions,
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

struct Reader<'a> {
    source: &'a dyn Source,
    errors: Vec<String>,
}

impl Reader<'_> {
    fn spec(name: &str) -> &'static Spec {
        SPECS.iter().find(|s| s.env == name).expect("every setting read is in SPECS")
    }

    /// The raw value, or the default if unset or empty (as the reference's envconfig).
    fn raw(&self, name: &str) -> String {
        match self.source.get(name) {
            Some(v) if !v.is_empty() => v,
            _ => Self::spec(name).default.to_string(),
        }
    }

    fn is_set(&self, name: &str) -> bool {
        self.source.get(name).is_some_and(|v| !v.is_empty())
    }

    /// Parses a setting; on error records it and falls back to the default's parse.
    fn parse<T>(&mut self, name: &str, parse: impl Fn(&str) -> Result<T, String>) -> T {
        let raw = self.raw(name);
        match parse(&raw) {
            Ok(v) => v,
            Err(reason) => {
                self.errors.push(format!(
                    "{}={} is not valid: {reason}",
                    self.source.describe(name),
                    shown(name, &raw)
                ));
                parse(Self::spec(name).default).unwrap_or_else(|e| panic!("default of {name} must parse: {e}"))
            }
        }
    }

    /// As [`Reader::parse`], for settings whose default may not parse on its own (it
    /// depends on other settings): on error, `fallback`.
    fn parse_or<T>(&mut self, name: &str, parse: impl Fn(&str) -> Result<T, String>, fallback: T) -> T {
        let raw = self.raw(name);
        match parse(&raw) {
            Ok(v) => v,
            Err(reason) => {
                self.errors.push(format!(
                    "{}={} is not valid: {reason}",
                    self.source.describe(name),
                    shown(name, &raw)
                ));
                fallback
            }
        }
    }

    fn string(&mut self, name: &str) -> String {
        self.raw(name)
    }

    fn boolean(&mut self, name: &str) -> bool {
        self.parse(name, parse_bool)
    }

    fn empty_config(&mut self) -> EmptyConfig {
        if self.boolean("CONFIG_REFUSE_EMPTY") { EmptyConfig::Refuse } else { EmptyConfig::Warn }
    }
}

/// A value as a settings error quotes it. Passwords (`*_AUTH` and the like) never show,
/// and addresses (`*_URL`) show with their credentials masked: errors reach logs.
fn shown(name: &str, raw: &str) -> String {
    if ["AUTH", "PASS", "PASSWORD", "SECRET", "TOKEN"].iter().any(|word| name.split('_').any(|part| part == *word)) {
        "\"***\"".to_string()
    } else if name.ends_with("_URL") {
        format!("{:?}", crate::store::redis::mask::mask_addresses(raw))
    } else {
        format!("{raw:?}")
    }
}

/// Go's `strconv.ParseBool`, as the reference accepts.
pub fn parse_bool(s: &str) -> Result<bool, String> {
    match s {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Ok(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Ok(false),
        _ => Err("expected true or false (or 1, 0, t, f)".into()),
    }
}

/// Go's `time.ParseDuration`: a sequence of decimal numbers with units `ns`, `us`/`µs`,
/// `ms`, `s`, `m`, `h` (`1h30m`, `1.5s`, `250ms`). A bare `0` is zero.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let bad = || format!("expected a duration such as 500ms, 10s or 1h30m, not {s:?}");
    let mut rest = s;
    let mut total = 0f64;
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let number_len = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
        if number_len == 0 {
            return Err(bad());
        }
        let number: f64 = rest[..number_len].parse().map_err(|_| bad())?;
        rest = &rest[number_len..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(rest.len());
        let seconds_per_unit = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(bad()),
        };
        rest = &rest[unit_len..];
        total += number * seconds_per_unit;
    }
    if !total.is_finite() || total > 1e12 {
        return Err(bad());
    }
    Ok(Duration::from_secs_f64(total))
}

fn parse_port(s: &str) -> Result<u16, String> {
    s.parse::<u16>().map_err(|_| "expected a port number from 0 to 65535".into())
}

fn parse_count(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) | Err(_) => Err("expected a whole number of at least 1".into()),
        Ok(n) => Ok(n),
    }
}

/// The listeners' connection caps and timeouts.
fn connection_limits(r: &mut Reader<'_>) -> ConnectionLimits {
    let max_connections = |s: &str| match s.parse::<usize>() {
        Ok(n @ 1..=1_000_000) => Ok(n),
        _ => Err("expected a whole number from 1 to 1000000".to_string()),
    };
    // Go's gRPC servers read a zero age or idle time as "never"; so does the reference.
    let zero_is_never = |s: &str| parse_duration(s).map(|d| (!d.is_zero()).then_some(d));
    let grpc = GrpcLimits {
        max_connections: r.parse("GRPC_MAX_CONNECTIONS", max_connections),
        max_concurrent_streams: r.parse("GRPC_MAX_CONCURRENT_STREAMS", |s| match s.parse::<u32>() {
            Ok(n @ 1..) => Ok(n),
            _ => Err(format!("expected a whole number from 1 to {}", u32::MAX)),
        }),
        handshake_timeout: r.parse("GRPC_HANDSHAKE_TIMEOUT", parse_positive_duration),
        max_connection_idle: r.parse("GRPC_MAX_CONNECTION_IDLE", zero_is_never),
        max_connection_age: r.parse("GRPC_MAX_CONNECTION_AGE", zero_is_never),
        max_connection_age_grace: r.parse("GRPC_MAX_CONNECTION_AGE_GRACE", zero_is_never),
    };
    let http = HttpLimits {
        max_connections: r.parse("HTTP_MAX_CONNECTIONS", max_connections),
        header_read_timeout: r.parse("HTTP_HEADER_READ_TIMEOUT", parse_positive_duration),
        idle_timeout: r.parse("HTTP_IDLE_TIMEOUT", parse_positive_duration),
        request_timeout: r.parse("HTTP_REQUEST_TIMEOUT", parse_positive_duration),
    };
    ConnectionLimits { grpc, http }
}

/// The Redis settings (`BACKEND_TYPE=redis`).
fn redis_options(r: &mut Reader<'_>, failure_policy: FailurePolicy) -> RedisOptions {
    let tls_files = RedisTls {
        ca: non_empty_path(r.string("REDIS_TLS_CACERT")),
        cert: non_empty_path(r.string("REDIS_TLS_CLIENT_CERT")),
        key: non_empty_path(r.string("REDIS_TLS_CLIENT_KEY")),
        skip_verification: r.boolean("REDIS_TLS_SKIP_HOSTNAME_VERIFICATION"),
    };
    if tls_files.cert.is_some() != tls_files.key.is_some() {
        let name = if tls_files.cert.is_some() { "REDIS_TLS_CLIENT_KEY" } else { "REDIS_TLS_CLIENT_CERT" };
        r.errors.push(format!(
            "{}=\"\" is not valid: a client certificate needs both REDIS_TLS_CLIENT_CERT and REDIS_TLS_CLIENT_KEY",
            r.source.describe(name)
        ));
    }
    let main = redis_target(r, "REDIS_", &tls_files);
    let per_second = r.boolean("REDIS_PERSECOND").then(|| redis_target(r, "REDIS_PERSECOND_", &tls_files));
    RedisOptions {
        main,
        per_second,
        key_prefix: r.string("CACHE_KEY_PREFIX"),
        jitter_max_secs: r.parse("EXPIRATION_JITTER_MAX_SECONDS", |s| {
            s.parse::<u64>().map_err(|_| "expected a whole number of seconds".into())
        }),
        local_cache_bytes: r.parse("LOCAL_CACHE_SIZE_IN_BYTES", |s| {
            s.parse::<usize>().map_err(|_| "expected a whole number of bytes".into())
        }),
        startup_backoff: (
            r.parse("REDIS_STARTUP_INITIAL_INTERVAL", parse_positive_duration),
            r.parse("REDIS_STARTUP_MAX_INTERVAL", parse_positive_duration),
        ),
        failure_policy,
    }
}

/// One deployment's settings, named with `prefix` (`REDIS_` or `REDIS_PERSECOND_`).
fn redis_target(r: &mut Reader<'_>, prefix: &str, tls_files: &RedisTls) -> RedisTarget {
    let name = |suffix: &str| format!("{prefix}{suffix}");
    let socket = r.string(&name("SOCKET_TYPE"));
    let kind = r.string(&name("TYPE"));
    let (topology, nodes) = r.parse_or(
        &name("URL"),
        |url| {
            RedisTarget::parse_addresses(&kind, &socket, url)
                .map_err(|e| format!("{e} (with {prefix}TYPE={kind}, {prefix}SOCKET_TYPE={socket})"))
        },
        (Topology::Single, Vec::new()),
    );
    let auth = Credentials::parse(&r.string(&name("AUTH")));
    let sentinel_auth = Credentials::parse(&r.string(&name("SENTINEL_AUTH")));
    let tls = r.boolean(&name("TLS")).then(|| tls_files.clone());
    let pool_size = r.parse(&name("POOL_SIZE"), parse_count);
    let timeout = r.parse(&name("TIMEOUT"), parse_positive_duration);
    RedisTarget { topology, nodes, auth, sentinel_auth, tls, pool_size, timeout }
}

fn non_empty_path(s: String) -> Option<PathBuf> {
    (!s.is_empty()).then(|| PathBuf::from(s))
}

fn parse_positive_duration(s: &str) -> Result<Duration, String> {
    match parse_duration(s)? {
        d if d.is_zero() => Err("expected a duration above zero".into()),
        d => Ok(d),
    }
}

/// The settings a config load depends on (`MERGE_DOMAIN_CONFIG`, `DEFAULT_ALGORITHM`),
/// for the commands that load rules without serving.
pub fn build_options(source: &dyn Source) -> Result<BuildOptions, SettingsError> {
    let mut r = Reader { source, errors: Vec::new() };
    let options = read_build_options(&mut r);
    if !r.errors.is_empty() {
        return Err(SettingsError(r.errors));
    }
    Ok(options)
}

fn read_build_options(r: &mut Reader<'_>) -> BuildOptions {
    BuildOptions {
        merge_domains: r.boolean("MERGE_DOMAIN_CONFIG"),
        default_algorithm: r.parse("DEFAULT_ALGORITHM", |s| {
            Algorithm::parse(s)
                .ok_or_else(|| "expected fixed_window, sliding_window, token_bucket or leaky_bucket".into())
        }),
        max_rules: r.parse("CONFIG_MAX_RULES", |s| match parse_count(s)? {
            0 => Err("expected at least 1".into()),
            n => Ok(n),
        }),
    }
}

/// `CONFIG_REFUSE_EMPTY`, for the commands that load rules without serving.
pub fn empty_config(source: &dyn Source) -> Result<EmptyConfig, SettingsError> {
    let mut r = Reader { source, errors: Vec::new() };
    let empty = r.empty_config();
    if !r.errors.is_empty() {
        return Err(SettingsError(r.errors));
    }
    Ok(empty)
}

impl Settings {
    /// Parses every setting from `source`. `config_paths` are the `--config` arguments.
    pub fn parse(source: &dyn Source, config_paths: Vec<PathBuf>) -> Result<Settings, SettingsError> {
        let mut r = Reader { source, errors: Vec::new() };
        let mut warnings = Vec::new();

        let grpc_host = r.string("GRPC_HOST");
        let grpc_port = r.parse("GRPC_PORT", parse_port);
        let grpc_uds = r.string("GRPC_UDS");
        let grpc = if grpc_uds.is_empty() {
            Listen::Tcp { host: grpc_host, port: grpc_port }
        } else {
            Listen::Unix(PathBuf::from(grpc_uds))
        };
        let grpc_workers =
            r.parse("GRPC_WORKERS", |s| s.parse::<usize>().map_err(|_| "expected a whole number".into()));
        let use_tls = r.boolean("GRPC_SERVER_USE_TLS");
        let (cert, key) = (r.string("GRPC_SERVER_TLS_CERT"), r.string("GRPC_SERVER_TLS_KEY"));
        let (client_ca, client_san) = (r.string("GRPC_CLIENT_TLS_CACERT"), r.string("GRPC_CLIENT_TLS_SAN"));
        let grpc_tls = if use_tls {
            for (name, value) in [("GRPC_SERVER_TLS_CERT", &cert), ("GRPC_SERVER_TLS_KEY", &key)] {
                if value.is_empty() {
                    r.errors.push(format!("{}=\"\" is not valid: GRPC_SERVER_USE_TLS needs it", source.describe(name)));
                }
            }
            if matches!(grpc, Listen::Unix(_)) {
                r.errors.push(format!(
                    "{}=\"true\" is not valid: TLS is for TCP listeners, not GRPC_UDS",
                    source.describe("GRPC_SERVER_USE_TLS")
                ));
            }
            Some(TlsSettings {
                cert: PathBuf::from(cert),
                key: PathBuf::from(key),
                client_ca: (!client_ca.is_empty()).then(|| PathBuf::from(client_ca)),
                client_san: (!client_san.is_empty()).then_some(client_san),
            })
        } else {
            if !client_ca.is_empty() {
                r.errors.push(format!(
                    "{}={client_ca:?} is not valid: mutual TLS needs GRPC_SERVER_USE_TLS=true",
                    source.describe("GRPC_CLIENT_TLS_CACERT")
                ));
            }
            None
        };
        let http = (r.string("HOST"), r.parse("PORT", parse_port));
        let debug = (r.string("DEBUG_HOST"), r.parse("DEBUG_PORT", parse_port));
        let connection_limits = connection_limits(&mut r);

        r.parse("CONFIG_TYPE", |s| match s.to_ascii_uppercase().as_str() {
            "FILE" => Ok(()),
            "GRPC_XDS_SOTW" => Err("the xDS config provider is not supported; use FILE".into()),
            _ => Err("expected FILE".into()),
        });
        let layout = RuntimeLayout {
            root: PathBuf::from(r.string("RUNTIME_ROOT")),
            subdirectory: r.string("RUNTIME_SUBDIRECTORY"),
            appdirectory: r.string("RUNTIME_APPDIRECTORY"),
            ignore_dotfiles: r.boolean("RUNTIME_IGNOREDOTFILES"),
            watch_root: r.boolean("RUNTIME_WATCH_ROOT"),
        };
        let config_source = if !config_paths.is_empty() {
            let runtime_set: Vec<&str> = ["RUNTIME_ROOT", "RUNTIME_SUBDIRECTORY", "RUNTIME_APPDIRECTORY"]
                .into_iter()
                .filter(|n| r.is_set(n))
                .collect();
            if !runtime_set.is_empty() {
                warnings.push(format!("--config is given, so {} is ignored", runtime_set.join(", ")));
            }
            ConfigSource::Paths(config_paths)
        } else {
            if layout.subdirectory.is_empty() {
                r.errors.push(format!(
                    "{}=\"\" is not valid: set it (with RUNTIME_ROOT) to the directory holding the rules, or pass --config PATH; with it empty the reference service silently loads no rules",
                    source.describe("RUNTIME_SUBDIRECTORY")
                ));
            }
            ConfigSource::Runtime(layout)
        };
        let rules = read_build_options(&mut r);
        let force_start_without_initial_config = r.boolean("FORCE_START_WITHOUT_INITIAL_CONFIG");
        let empty_config = r.empty_config();
        let use_redis = r.parse("BACKEND_TYPE", |s| match s.to_ascii_lowercase().as_str() {
            "memory" => Ok(false),
            "redis" => Ok(true),
            "memcache" => Err("memcache is not supported; use memory or redis".into()),
            _ => Err("expected memory or redis".into()),
        });
        let failure_policy = r.parse("BACKEND_FAILURE_POLICY", |s| match s.to_ascii_lowercase().as_str() {
            "error" => Ok(FailurePolicy::Error),
            "allow" => Ok(FailurePolicy::Allow),
            "local" => Ok(FailurePolicy::Local),
            _ => Err("expected error, allow or local".into()),
        });
        let backend = if use_redis {
            Backend::Redis(Box::new(redis_options(&mut r, failure_policy)))
        } else {
            let set: Vec<&str> = SPECS
                .iter()
                .map(|s| s.env)
                .filter(|n| (n.starts_with("REDIS_") || *n == "LOCAL_CACHE_SIZE_IN_BYTES") && r.is_set(n))
                .collect();
            if !set.is_empty() {
                let verb = if set.len() == 1 { "is" } else { "are" };
                warnings
                    .push(format!("{} {verb} set but BACKEND_TYPE is memory, so Redis is not used", set.join(", ")));
            }
            Backend::Memory
        };
        let memory_max_counters = r.parse("MEMORY_MAX_COUNTERS", parse_count);
        let consume = r.parse("CONSUME", |s| match s {
            "always" => Ok(Consume::Always),
            "all_or_nothing" => Ok(Consume::AllOrNothing),
            _ => Err("expected always or all_or_nothing".into()),
        });
        debug_assert_eq!(Reader::spec("MEMORY_MAX_COUNTERS").default, DEFAULT_MAX_COUNTERS.to_string());

        let response_headers = r.boolean("LIMIT_RESPONSE_HEADERS_ENABLED").then(|| HeaderNames {
            limit: r.string("LIMIT_LIMIT_HEADER"),
            remaining: r.string("LIMIT_REMAINING_HEADER"),
            reset: r.string("LIMIT_RESET_HEADER"),
        });
        let service = ServiceOptions {
            global_shadow_mode: r.boolean("SHADOW_MODE"),
            global_quota_mode: r.boolean("QUOTA_MODE"),
            response_headers,
            dynamic_metadata: r.boolean("RESPONSE_DYNAMIC_METADATA"),
            consume,
            caps: RequestCaps {
                max_descriptors: r.parse("MAX_DESCRIPTORS", parse_count),
                max_entries: r.parse("MAX_ENTRIES", parse_count),
                max_entry_bytes: r.parse("MAX_ENTRY_BYTES", parse_count),
            },
        };
        let near_limit_ratio = r.parse("NEAR_LIMIT_RATIO", |s| match s.parse::<f32>() {
            Ok(f) if (0.0..=1.0).contains(&f) => Ok(f),
            _ => Err("expected a number from 0 to 1".into()),
        });
        let healthy_with_at_least_one_config_loaded = r.boolean("HEALTHY_WITH_AT_LEAST_ONE_CONFIG_LOADED");
        let shutdown_grace_period = r.parse("SHUTDOWN_GRACE_PERIOD", parse_duration);
        let log_level = r.parse("LOG_LEVEL", |s| {
            use tracing::level_filters::LevelFilter;
            match s.to_ascii_lowercase().as_str() {
                "trace" => Ok(LevelFilter::TRACE),
                "debug" => Ok(LevelFilter::DEBUG),
                "info" => Ok(LevelFilter::INFO),
                "warn" | "warning" => Ok(LevelFilter::WARN),
                "error" | "fatal" | "panic" => Ok(LevelFilter::ERROR),
                _ => Err("expected trace, debug, info, warn or error".into()),
            }
        });
        let log_format = r.parse("LOG_FORMAT", |s| match s.to_ascii_lowercase().as_str() {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            _ => Err("expected text or json".into()),
        });
        let use_statsd = r.boolean("USE_STATSD");
        let statsd_host = r.string("STATSD_HOST");
        let statsd_port = r.parse("STATSD_PORT", parse_port);
        let statsd_protocol = r.parse("STATSD_PROTOCOL", |s| match s.to_ascii_lowercase().as_str() {
            "tcp" => Ok(Protocol::Tcp),
            "udp" => Ok(Protocol::Udp),
            _ => Err("expected tcp or udp".into()),
        });
        let flush_interval = r.parse("STATS_FLUSH_INTERVAL", |s| match parse_duration(s) {
            Ok(d) if d >= Duration::from_millis(100) => Ok(d),
            Ok(_) => Err("expected at least 100ms".into()),
            Err(e) => Err(e),
        });
        let extra_tags = r.parse("EXTRA_TAGS", |s| {
            s.split(',')
                .filter(|t| !t.trim().is_empty())
                .map(|t| match t.split_once(':') {
                    Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.trim().to_string())),
                    _ => Err(format!("expected k1:v1,k2:v2, not {t:?}")),
                })
                .collect()
        });
        let value_series = ValueSeriesLimits {
            max_series: r.parse("STATS_MAX_VALUE_SERIES", parse_count),
            max_bytes: r.parse("STATS_MAX_VALUE_SERIES_BYTES", parse_count),
            max_label_bytes: r.parse("STATS_MAX_VALUE_LABEL_BYTES", |s| match s.parse::<usize>() {
                Ok(n) if n >= MIN_LABEL_BYTES => Ok(n),
                _ => Err(format!("expected a whole number of at least {MIN_LABEL_BYTES}")),
            }),
        };
        let stats = StatsOptions {
            disabled: r.boolean("DISABLE_STATS"),
            near_limit_ratio,
            extra_tags,
            statsd: use_statsd.then_some(StatsdOptions {
                host: statsd_host,
                port: statsd_port,
                protocol: statsd_protocol,
                flush_interval,
            }),
            value_series,
        };

        for (name, why) in IGNORED {
            if r.is_set(name) {
                warnings.push(format!("{name} is set but has no effect in sluicegate: {why}"));
            }
        }
        if !r.errors.is_empty() {
            return Err(SettingsError(r.errors));
        }
        Ok(Settings {
            grpc,
            grpc_workers,
            grpc_tls,
            http,
            debug,
            connection_limits,
            config_source,
            rules,
            force_start_without_initial_config,
            empty_config,
            backend,
            memory_max_counters,
            service,
            stats,
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
        let mut source: HashMap<&str, &str> = [
            ("HOST", "127.0.0.1"),
            ("PORT", "0"),
            ("GRPC_HOST", "127.0.0.1"),
            ("GRPC_PORT", "0"),
            ("GRPC_WORKERS", "1"),
            ("DEBUG_HOST", "127.0.0.1"),
            ("DEBUG_PORT", "0"),
            ("SHUTDOWN_GRACE_PERIOD", "0"),
        ]
        .into_iter()
        .collect();
        source.extend(variables.iter().copied());
        Settings::parse(&source, config_paths)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(pairs: &[(&str, &str)]) -> Result<Settings, SettingsError> {
        let source: HashMap<&str, &str> = pairs.iter().copied().collect();
        Settings::parse(&source, vec![PathBuf::from("config")])
    }

    #[test]
    fn defaults_are_the_reference_ones() {
        let s = parse(&[]).unwrap();
        assert_eq!(s.grpc, Listen::Tcp { host: "0.0.0.0".into(), port: 8081 });
        assert_eq!(s.http, ("0.0.0.0".into(), 8080));
        assert_eq!(s.debug, ("0.0.0.0".into(), 6070));
        assert_eq!(s.backend, Backend::Memory);
        assert_eq!(s.shutdown_grace_period, Duration::from_secs(5));
        assert_eq!(s.stats.near_limit_ratio, 0.8);
        assert_eq!(s.memory_max_counters, DEFAULT_MAX_COUNTERS);
        assert_eq!(s.rules, BuildOptions::default());
        assert!(s.service.response_headers.is_none());
        assert!(s.stats.statsd.is_none());
    }

    #[test]
    fn every_bad_setting_is_reported_at_once() {
        let err = parse(&[("PORT", "http"), ("SHADOW_MODE", "yes please"), ("LOG_LEVEL", "loud")]).unwrap_err();
        assert_eq!(
            err.0,
            vec![
                "PORT=\"http\" is not valid: expected a port number from 0 to 65535",
                "SHADOW_MODE=\"yes please\" is not valid: expected true or false (or 1, 0, t, f)",
                "LOG_LEVEL=\"loud\" is not valid: expected trace, debug, info, warn or error",
            ]
        );
    }

    #[test]
    fn flags_win_over_the_environment_and_are_named_in_errors() {
        let env: HashMap<String, String> = [("GRPC_PORT".to_string(), "9000".to_string())].into();
        let flags: HashMap<String, String> = [("GRPC_PORT".to_string(), "9001".to_string())].into();
        let s = Settings::parse(&WithFlags { flags, base: env.clone() }, vec!["c".into()]).unwrap();
        assert_eq!(s.grpc, Listen::Tcp { host: "0.0.0.0".into(), port: 9001 });
        let flags: HashMap<String, String> = [("GRPC_PORT".to_string(), "x".to_string())].into();
        let err = Settings::parse(&WithFlags { flags, base: env }, vec!["c".into()]).unwrap_err();
        assert_eq!(err.0, vec!["--grpc-port=\"x\" is not valid: expected a port number from 0 to 65535"]);
    }

    #[test]
    fn the_reference_layout_needs_a_subdirectory() {
        let source: HashMap<&str, &str> = HashMap::new();
        let err = Settings::parse(&source, Vec::new()).unwrap_err();
        assert!(err.0[0].starts_with("RUNTIME_SUBDIRECTORY=\"\" is not valid"), "{err}");
        let source: HashMap<&str, &str> = [("RUNTIME_ROOT", "/r"), ("RUNTIME_SUBDIRECTORY", "ratelimit")].into();
        let s = Settings::parse(&source, Vec::new()).unwrap();
        let ConfigSource::Runtime(layout) = s.config_source else { panic!() };
        assert_eq!(layout.config_dir(), PathBuf::from("/r/ratelimit/config"));
    }

    #[test]
    fn config_flag_wins_over_the_runtime_layout_with_a_warning() {
        let s = parse(&[("RUNTIME_SUBDIRECTORY", "ratelimit")]).unwrap();
        assert_eq!(s.config_source, ConfigSource::Paths(vec![PathBuf::from("config")]));
        assert_eq!(s.warnings, vec!["--config is given, so RUNTIME_SUBDIRECTORY is ignored"]);
    }

    #[test]
    fn redis_settings_parse_with_the_reference_names() {
        let s = parse(&[
            ("BACKEND_TYPE", "REDIS"),
            ("REDIS_TYPE", "cluster"),
            ("REDIS_URL", "10.0.0.1:7000,10.0.0.2:7000"),
            ("REDIS_AUTH", "app:pw"),
            ("REDIS_POOL_SIZE", "4"),
            ("REDIS_TIMEOUT", "250ms"),
            ("REDIS_PERSECOND", "true"),
            ("REDIS_PERSECOND_URL", "/run/redis.sock"),
            ("REDIS_PERSECOND_SOCKET_TYPE", "unix"),
            ("CACHE_KEY_PREFIX", "rl:"),
            ("LOCAL_CACHE_SIZE_IN_BYTES", "1048576"),
            ("BACKEND_FAILURE_POLICY", "local"),
            ("REDIS_PIPELINE_WINDOW", "150us"),
        ])
        .unwrap();
        let Backend::Redis(redis) = &s.backend else { panic!("{:?}", s.backend) };
        assert_eq!(redis.main.topology, Topology::Cluster);
        assert_eq!(redis.main.nodes.len(), 2);
        assert_eq!(redis.main.auth, Credentials::parse("app:pw"));
        assert_eq!((redis.main.pool_size, redis.main.timeout), (4, Duration::from_millis(250)));
        let per_second = redis.per_second.as_ref().unwrap();
        assert_eq!(per_second.nodes, vec![crate::store::redis::NodeAddr::Unix("/run/redis.sock".into())]);
        assert_eq!(per_second.timeout, Duration::from_secs(10));
        assert_eq!((redis.key_prefix.as_str(), redis.jitter_max_secs, redis.local_cache_bytes), ("rl:", 300, 1 << 20));
        assert_eq!(redis.failure_policy, FailurePolicy::Local);
        assert!(s.warnings.iter().any(|w| w.starts_with("REDIS_PIPELINE_WINDOW is set but has no effect")));
        assert!(!format!("{s:?}").contains("pw\""), "credentials are masked in Debug");
    }

    #[test]
    fn bad_redis_settings_are_all_named() {
        let err = parse(&[
            ("BACKEND_TYPE", "redis"),
            ("REDIS_TYPE", "sentinel"),
            ("REDIS_URL", "only-a-master-name"),
            ("REDIS_TIMEOUT", "0"),
            ("BACKEND_FAILURE_POLICY", "ignore"),
            ("REDIS_TLS_CLIENT_CERT", "/c.pem"),
        ])
        .unwrap_err();
        assert_eq!(err.0.len(), 4, "{err}");
        assert!(err.0[0].starts_with("BACKEND_FAILURE_POLICY=\"ignore\" is not valid"), "{err}");
        assert!(err.0[1].contains("REDIS_TLS_CLIENT_KEY"), "{err}");
        assert!(err.0[2].contains("Expected master name"), "{err}");
        assert!(err.0[3].starts_with("REDIS_TIMEOUT=\"0\""), "{err}");
        let err = parse(&[("BACKEND_TYPE", "redis"), ("REDIS_TYPE", "ring")]).unwrap_err();
        assert!(err.0[0].contains("Unrecognized redis type ring"), "{err}");
    }

    #[test]
    fn errors_never_quote_a_redis_password() {
        for url in ["redis://user:s3cret/x@h:6379", "user:s3cret@h:6379", "redis://:s3cret@h:notaport"] {
            let err = parse(&[
                ("BACKEND_TYPE", "redis"),
                ("REDIS_URL", url),
                ("REDIS_PERSECOND", "true"),
                ("REDIS_PERSECOND_URL", url),
            ])
            .unwrap_err();
            assert_eq!(err.0.len(), 2, "{err}");
            assert!(err.0[0].starts_with("REDIS_URL=\""), "{err}");
            assert!(err.0[1].starts_with("REDIS_PERSECOND_URL=\""), "{err}");
            assert!(!err.to_string().contains("s3cret"), "{err}");
        }
    }

    #[test]
    fn every_credential_setting_is_masked_in_errors() {
        let secret = |n: &&str| ["AUTH", "PASS", "SECRET", "TOKEN"].iter().any(|w| n.contains(w));
        let secrets: Vec<&str> = SPECS.iter().map(|s| s.env).filter(secret).collect();
        // A new credential setting lands here first: check it is masked, then add it.
        assert_eq!(
            secrets,
            ["REDIS_AUTH", "REDIS_SENTINEL_AUTH", "REDIS_PERSECOND_AUTH", "REDIS_PERSECOND_SENTINEL_AUTH"]
        );
        for name in secrets {
            assert_eq!(shown(name, "user:s3cret"), "\"***\"", "{name}");
        }
        for name in SPECS.iter().map(|s| s.env).filter(|n| n.ends_with("_URL")) {
            assert!(!shown(name, "redis://u:s3cret@h,u:s3cret@h:1").contains("s3cret"), "{name}");
        }
    }

    #[test]
    fn empty_loads_are_refused_only_when_asked() {
        assert_eq!(parse(&[]).unwrap().empty_config, EmptyConfig::Warn);
        assert_eq!(parse(&[("CONFIG_REFUSE_EMPTY", "true")]).unwrap().empty_config, EmptyConfig::Refuse);
        let err = parse(&[("CONFIG_REFUSE_EMPTY", "always")]).unwrap_err();
        assert!(err.0[0].starts_with("CONFIG_REFUSE_EMPTY=\"always\" is not valid"), "{err}");
    }

    #[test]
    fn redis_settings_without_redis_are_pointed_out() {
        let s = parse(&[("REDIS_URL", "redis:6379"), ("LOCAL_CACHE_SIZE_IN_BYTES", "1000")]).unwrap();
        assert_eq!(s.backend, Backend::Memory);
        assert_eq!(
            s.warnings,
            vec!["REDIS_URL, LOCAL_CACHE_SIZE_IN_BYTES are set but BACKEND_TYPE is memory, so Redis is not used"]
        );
    }

    #[test]
    fn unsupported_providers_and_backends_are_named() {
        let err = parse(&[("CONFIG_TYPE", "GRPC_XDS_SOTW"), ("BACKEND_TYPE", "memcache")]).unwrap_err();
        assert_eq!(err.0.len(), 2, "{err}");
        assert!(err.0[0].contains("xDS"));
        assert!(err.0[1].contains("memcache is not supported"));
    }

    #[test]
    fn go_durations_and_booleans_parse() {
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("150us"), Ok(Duration::from_micros(150)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        for bad in ["", "10", "s", "1x", "-1s", "1.2.3s"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_bool("T"), Ok(true));
        assert_eq!(parse_bool("0"), Ok(false));
        assert!(parse_bool("yes").is_err());
    }

    #[test]
    fn empty_values_mean_the_default() {
        let s = parse(&[("GRPC_PORT", ""), ("SHADOW_MODE", ""), ("NEAR_LIMIT_RATIO", ""), ("GRPC_WORKERS", "")])
            .expect("empty values parse as their defaults");
        assert_eq!(s.grpc, Listen::Tcp { host: "0.0.0.0".into(), port: 8081 });
        assert!(!s.service.global_shadow_mode);
        assert_eq!(s.stats.near_limit_ratio, 0.8, "not 0, which an empty number could read as");
    }

    #[test]
    fn response_header_names_are_configurable() {
        let s =
            parse(&[("LIMIT_RESPONSE_HEADERS_ENABLED", "true"), ("LIMIT_LIMIT_HEADER", "A-Ratelimit-Limit")]).unwrap();
        let names = s.service.response_headers.unwrap();
        assert_eq!((names.limit.as_str(), names.remaining.as_str()), ("A-Ratelimit-Limit", "RateLimit-Remaining"));
    }

    #[test]
    fn value_series_caps_default_safely_and_reject_nonsense() {
        assert_eq!(parse(&[]).unwrap().stats.value_series, ValueSeriesLimits::default());
        let s = parse(&[
            ("STATS_MAX_VALUE_SERIES", "50"),
            ("STATS_MAX_VALUE_SERIES_BYTES", "65536"),
            ("STATS_MAX_VALUE_LABEL_BYTES", "32"),
        ])
        .unwrap();
        assert_eq!(s.stats.value_series, ValueSeriesLimits { max_series: 50, max_bytes: 65536, max_label_bytes: 32 });
        let err = parse(&[
            ("STATS_MAX_VALUE_SERIES", "0"),
            ("STATS_MAX_VALUE_SERIES_BYTES", "1MiB"),
            ("STATS_MAX_VALUE_LABEL_BYTES", "31"),
        ])
        .unwrap_err();
        assert_eq!(
            err.0,
            vec![
                "STATS_MAX_VALUE_SERIES=\"0\" is not valid: expected a whole number of at least 1",
                "STATS_MAX_VALUE_SERIES_BYTES=\"1MiB\" is not valid: expected a whole number of at least 1",
                "STATS_MAX_VALUE_LABEL_BYTES=\"31\" is not valid: expected a whole number of at least 32",
            ]
        );
    }

    #[test]
    fn connection_limits_default_safely_and_zero_ages_mean_never() {
        let limits = parse(&[]).unwrap().connection_limits;
        assert_eq!((limits.grpc.max_connections, limits.grpc.max_concurrent_streams), (4096, 1024));
        assert_eq!(limits.grpc.handshake_timeout, Duration::from_secs(10));
        assert_eq!(limits.grpc.max_connection_idle, Some(Duration::from_secs(15 * 60)));
        assert_eq!(limits.grpc.max_connection_age, Some(Duration::from_secs(24 * 3600)), "the reference's default");
        assert_eq!(limits.grpc.max_connection_age_grace, Some(Duration::from_secs(3600)), "the reference's default");
        assert_eq!(limits.http.max_connections, 1024);
        let http = (limits.http.header_read_timeout, limits.http.idle_timeout, limits.http.request_timeout);
        assert_eq!(http, (Duration::from_secs(10), Duration::from_secs(60), Duration::from_secs(30)));

        let s = parse(&[("GRPC_MAX_CONNECTION_AGE", "0"), ("GRPC_MAX_CONNECTION_IDLE", "0")]).unwrap();
        assert_eq!(
            (s.connection_limits.grpc.max_connection_age, s.connection_limits.grpc.max_connection_idle),
            (None, None)
        );
        assert!(s.warnings.is_empty(), "no longer ignored: {:?}", s.warnings);
    }

    #[test]
    fn bad_connection_limits_are_named() {
        let err = parse(&[
            ("GRPC_MAX_CONNECTIONS", "0"),
            ("GRPC_MAX_CONCURRENT_STREAMS", "-1"),
            ("GRPC_HANDSHAKE_TIMEOUT", "0"),
            ("GRPC_MAX_CONNECTION_AGE", "a day"),
            ("HTTP_MAX_CONNECTIONS", "2000000"),
            ("HTTP_IDLE_TIMEOUT", "60"),
        ])
        .unwrap_err();
        assert_eq!(
            err.0,
            vec![
                "GRPC_MAX_CONNECTIONS=\"0\" is not valid: expected a whole number from 1 to 1000000",
                "GRPC_MAX_CONCURRENT_STREAMS=\"-1\" is not valid: expected a whole number from 1 to 4294967295",
                "GRPC_HANDSHAKE_TIMEOUT=\"0\" is not valid: expected a duration above zero",
                "GRPC_MAX_CONNECTION_AGE=\"a day\" is not valid: expected a duration such as 500ms, 10s or 1h30m, not \"a day\"",
                "HTTP_MAX_CONNECTIONS=\"2000000\" is not valid: expected a whole number from 1 to 1000000",
                "HTTP_IDLE_TIMEOUT=\"60\" is not valid: expected a duration such as 500ms, 10s or 1h30m, not \"60\"",
            ]
        );
    }
}
