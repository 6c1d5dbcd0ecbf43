//! Backend settings: where counters live (`BACKEND_TYPE`), the in-memory store's cap, and
//! every Redis setting, the per-second Redis's (`REDIS_PERSECOND_*`) included.

use std::path::PathBuf;
use std::time::Duration;

use super::parse::{optional_path, parse_bool, parse_count, parse_positive_duration, text};
use super::reader::Reader;
use super::setting::{Setting, decimal, settings};
use crate::store::FailurePolicy;
use crate::store::memory::DEFAULT_MAX_COUNTERS;
use crate::store::redis::{Credentials, RedisOptions, RedisTarget, RedisTls, Topology};

settings! {
    BACKEND_TYPE: bool = "memory",
        |s| match s.to_ascii_lowercase().as_str() {
            "memory" => Ok(false),
            "redis" => Ok(true),
            "memcache" => Err("memcache is not supported, nor are the MEMCACHE_* settings (MEMCACHE_HOST_PORT, \
                               MEMCACHE_SRV, ...); use memory, or redis to share counters between replicas"
                .into()),
            _ => Err("expected memory or redis".into()),
        },
        "Where counters live: memory (embedded) or redis";
    MEMORY_MAX_COUNTERS: usize = decimal!(DEFAULT_MAX_COUNTERS), parse_count,
        "Most live counters in memory; the longest-idle are evicted past it";
    BACKEND_FAILURE_POLICY: FailurePolicy = "error",
        |s| match s.to_ascii_lowercase().as_str() {
            "error" => Ok(FailurePolicy::Error),
            "allow" => Ok(FailurePolicy::Allow),
            "local" => Ok(FailurePolicy::Local),
            _ => Err("expected error, allow or local".into()),
        },
        "When Redis fails: error (UNAVAILABLE; Envoy's failure_mode_deny decides), allow (answer OK) or local (count in memory)";
    REDIS_SOCKET_TYPE: String = "tcp", text, "How REDIS_URL is read: tcp (host:port) or unix (a socket path)";
    REDIS_TYPE: String = "SINGLE", text,
        "single, sentinel (REDIS_URL=master,sentinel1,...) or cluster (REDIS_URL=node1,node2,...)";
    REDIS_URL: String = "localhost:6379", text,
        "Redis address(es): host:port, a socket path, or redis:// and rediss:// URLs";
    REDIS_POOL_SIZE: usize = "10", parse_count, "Connections to Redis (each carries many requests at once)";
    REDIS_AUTH: Option<Credentials> = "", credentials, "Redis password, or user:password";
    REDIS_SENTINEL_AUTH: Option<Credentials> = "", credentials, "Sentinel password, or user:password";
    REDIS_TLS: bool = "false", parse_bool, "Connect to Redis over TLS";
    REDIS_TLS_CACERT: Option<PathBuf> = "", optional_path,
        "PEM CA certificates to verify Redis with (default: the system's)";
    REDIS_TLS_CLIENT_CERT: Option<PathBuf> = "", optional_path, "PEM client certificate for Redis";
    REDIS_TLS_CLIENT_KEY: Option<PathBuf> = "", optional_path, "PEM client key for Redis";
    REDIS_TLS_SKIP_HOSTNAME_VERIFICATION: bool = "false", parse_bool, "Do not verify Redis's certificate (testing only)";
    REDIS_TIMEOUT: Duration = "10s", parse_positive_duration, "Bound on connecting to Redis and on every call";
    REDIS_STARTUP_INITIAL_INTERVAL: Duration = "1s", parse_positive_duration,
        "First pause between connection attempts at start-up";
    REDIS_STARTUP_MAX_INTERVAL: Duration = "30s", parse_positive_duration,
        "Longest pause between connection attempts at start-up";
    REDIS_LEASING: bool = "false", parse_bool,
        "Admit windows and token buckets from leases reserved in Redis (docs/leasing.md)";
    REDIS_LEASE_HORIZON: Duration = "1s", parse_positive_duration,
        "Leased mode: a lease holds about what a replica spends in this long (longer: fewer Redis calls, more units held)";
    REDIS_PERSECOND: bool = "false", parse_bool,
        "Count per-second limits in a second Redis (the REDIS_PERSECOND_* settings)";
    REDIS_PERSECOND_SOCKET_TYPE: String = "tcp", text, "REDIS_SOCKET_TYPE of the per-second Redis";
    REDIS_PERSECOND_TYPE: String = "SINGLE", text, "REDIS_TYPE of the per-second Redis";
    REDIS_PERSECOND_URL: String = "localhost:6380", text, "REDIS_URL of the per-second Redis";
    REDIS_PERSECOND_POOL_SIZE: usize = "10", parse_count, "REDIS_POOL_SIZE of the per-second Redis";
    REDIS_PERSECOND_AUTH: Option<Credentials> = "", credentials, "REDIS_AUTH of the per-second Redis";
    REDIS_PERSECOND_SENTINEL_AUTH: Option<Credentials> = "", credentials,
        "REDIS_SENTINEL_AUTH of the per-second Redis";
    REDIS_PERSECOND_TLS: bool = "false", parse_bool,
        "REDIS_TLS of the per-second Redis (with the REDIS_TLS_* files)";
    REDIS_PERSECOND_TIMEOUT: Duration = "10s", parse_positive_duration, "REDIS_TIMEOUT of the per-second Redis";
    CACHE_KEY_PREFIX: String = "", text, "Prefix of every Redis key";
    EXPIRATION_JITTER_MAX_SECONDS: u64 = "300",
        |s| s.parse::<u64>().map_err(|_| "expected a whole number of seconds".into()),
        "Fixed-window Redis keys live up to this much past their window";
    LOCAL_CACHE_SIZE_IN_BYTES: usize = "0",
        |s| s.parse::<usize>().map_err(|_| "expected a whole number of bytes".into()),
        "Remember over-limit Redis keys in this much memory, skipping Redis (0: off)";
}

fn credentials(s: &str) -> Result<Option<Credentials>, String> {
    Ok(Credentials::parse(s))
}

#[derive(Clone, Debug, PartialEq)]
pub enum Backend {
    Memory,
    Redis(Box<RedisOptions>),
}

/// One Redis deployment's settings: the main one's (`REDIS_*`) or the per-second one's.
struct TargetSettings {
    socket_type: Setting<String>,
    kind: Setting<String>,
    url: Setting<String>,
    auth: Setting<Option<Credentials>>,
    sentinel_auth: Setting<Option<Credentials>>,
    tls: Setting<bool>,
    pool_size: Setting<usize>,
    timeout: Setting<Duration>,
}

const MAIN: TargetSettings = TargetSettings {
    socket_type: REDIS_SOCKET_TYPE,
    kind: REDIS_TYPE,
    url: REDIS_URL,
    auth: REDIS_AUTH,
    sentinel_auth: REDIS_SENTINEL_AUTH,
    tls: REDIS_TLS,
    pool_size: REDIS_POOL_SIZE,
    timeout: REDIS_TIMEOUT,
};

const PER_SECOND: TargetSettings = TargetSettings {
    socket_type: REDIS_PERSECOND_SOCKET_TYPE,
    kind: REDIS_PERSECOND_TYPE,
    url: REDIS_PERSECOND_URL,
    auth: REDIS_PERSECOND_AUTH,
    sentinel_auth: REDIS_PERSECOND_SENTINEL_AUTH,
    tls: REDIS_PERSECOND_TLS,
    pool_size: REDIS_PERSECOND_POOL_SIZE,
    timeout: REDIS_PERSECOND_TIMEOUT,
};

/// The backend and the in-memory cap. With the memory backend, Redis settings that are
/// set are pointed out in `warnings`.
pub(super) fn read(r: &mut Reader<'_>, warnings: &mut Vec<String>) -> (Backend, usize) {
    let use_redis = r.get(&BACKEND_TYPE);
    let failure_policy = r.get(&BACKEND_FAILURE_POLICY);
    let backend = if use_redis {
        Backend::Redis(Box::new(redis_options(r, failure_policy)))
    } else {
        let set: Vec<&str> = SPECS
            .iter()
            .map(|s| s.env)
            .filter(|n| (n.starts_with("REDIS_") || *n == LOCAL_CACHE_SIZE_IN_BYTES.env) && r.is_set(n))
            .collect();
        if !set.is_empty() {
            let verb = if set.len() == 1 { "is" } else { "are" };
            warnings.push(format!("{} {verb} set but BACKEND_TYPE is memory, so Redis is not used", set.join(", ")));
        }
        Backend::Memory
    };
    (backend, r.get(&MEMORY_MAX_COUNTERS))
}

/// The Redis settings (`BACKEND_TYPE=redis`).
fn redis_options(r: &mut Reader<'_>, failure_policy: FailurePolicy) -> RedisOptions {
    let tls_files = RedisTls {
        ca: r.get(&REDIS_TLS_CACERT),
        cert: r.get(&REDIS_TLS_CLIENT_CERT),
        key: r.get(&REDIS_TLS_CLIENT_KEY),
        skip_verification: r.get(&REDIS_TLS_SKIP_HOSTNAME_VERIFICATION),
    };
    if tls_files.cert.is_some() != tls_files.key.is_some() {
        let missing = if tls_files.cert.is_some() { REDIS_TLS_CLIENT_KEY.env } else { REDIS_TLS_CLIENT_CERT.env };
        r.invalid(missing, "\"\"", "a client certificate needs both REDIS_TLS_CLIENT_CERT and REDIS_TLS_CLIENT_KEY");
    }
    let main = redis_target(r, &MAIN, &tls_files);
    let per_second = r.get(&REDIS_PERSECOND).then(|| redis_target(r, &PER_SECOND, &tls_files));
    RedisOptions {
        main,
        per_second,
        key_prefix: r.get(&CACHE_KEY_PREFIX),
        jitter_max_secs: r.get(&EXPIRATION_JITTER_MAX_SECONDS),
        local_cache_bytes: r.get(&LOCAL_CACHE_SIZE_IN_BYTES),
        startup_backoff: (r.get(&REDIS_STARTUP_INITIAL_INTERVAL), r.get(&REDIS_STARTUP_MAX_INTERVAL)),
        failure_policy,
        leasing: r.get(&REDIS_LEASING),
        lease_horizon: r.get(&REDIS_LEASE_HORIZON),
    }
}

/// One deployment's settings.
fn redis_target(r: &mut Reader<'_>, settings: &TargetSettings, tls_files: &RedisTls) -> RedisTarget {
    let (kind_env, socket_env) = (settings.kind.env, settings.socket_type.env);
    let socket = r.get(&settings.socket_type);
    let kind = r.get(&settings.kind);
    let (topology, nodes) = r.get_with(
        &settings.url,
        |url| {
            RedisTarget::parse_addresses(&kind, &socket, url)
                .map_err(|e| format!("{e} (with {kind_env}={kind}, {socket_env}={socket})"))
        },
        (Topology::Single, Vec::new()),
    );
    let auth = r.get(&settings.auth);
    let sentinel_auth = r.get(&settings.sentinel_auth);
    let tls = r.get(&settings.tls).then(|| tls_files.clone());
    let pool_size = r.get(&settings.pool_size);
    let timeout = r.get(&settings.timeout);
    RedisTarget { topology, nodes, auth, sentinel_auth, tls, pool_size, timeout }
}
