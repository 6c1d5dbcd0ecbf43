//! Tests of the settings: defaults, every error at once, flags over the environment,
//! credential masking, and that every declared setting is listed once with a default
//! that parses.

use super::reader::shown;
use super::setting::decimal;
use super::*;
use crate::stats::ValueSeriesLimits;
use crate::store::FailurePolicy;
use crate::store::memory::DEFAULT_MAX_COUNTERS;
use crate::store::redis::{Credentials, Topology};

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
    assert_eq!(s.stats.near_limit_ratio, crate::stats::DEFAULT_NEAR_LIMIT_RATIO);
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
    assert_eq!(secrets, ["REDIS_AUTH", "REDIS_SENTINEL_AUTH", "REDIS_PERSECOND_AUTH", "REDIS_PERSECOND_SENTINEL_AUTH"]);
    for name in secrets {
        assert_eq!(shown(name, "user:s3cret"), "\"***\"", "{name}");
    }
    // Header lists carry API keys.
    let headers: Vec<&str> = SPECS.iter().map(|s| s.env).filter(|n| n.ends_with("_HEADERS")).collect();
    assert_eq!(headers.len(), 3, "{headers:?}");
    for name in headers {
        assert_eq!(shown(name, "api-key=s3cret"), "\"***\"", "{name}");
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
    let err = parse(&[("CONFIG_TYPE", "GRPC_XDS_DELTA"), ("BACKEND_TYPE", "memcache")]).unwrap_err();
    assert_eq!(err.0.len(), 2, "{err}");
    assert!(err.0[0].contains("expected FILE or GRPC_XDS_SOTW"), "{err}");
    assert!(err.0[1].contains("memcache is not supported"));
    assert!(err.0[1].contains("MEMCACHE_HOST_PORT"), "the refusal names the settings that go with it: {err}");
}

#[test]
fn memcache_settings_are_named_as_ignored() {
    let s = parse(&[("MEMCACHE_HOST_PORT", "memcached:11211"), ("MEMCACHE_MAX_IDLE_CONNS", "100")]).unwrap();
    assert_eq!(s.warnings.len(), 2, "{:?}", s.warnings);
    assert!(
        s.warnings[0]
            .starts_with("MEMCACHE_HOST_PORT is set but has no effect in sluicegate: memcached is not supported")
    );
    assert!(s.warnings[1].starts_with("MEMCACHE_MAX_IDLE_CONNS is set but has no effect"), "{:?}", s.warnings);
    let memcache: Vec<&str> = IGNORED.iter().map(|(n, _)| *n).filter(|n| n.starts_with("MEMCACHE_")).collect();
    assert_eq!(memcache.len(), 9, "every MEMCACHE_* setting of the reference: {memcache:?}");
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
    let s = parse(&[("LIMIT_RESPONSE_HEADERS_ENABLED", "true"), ("LIMIT_LIMIT_HEADER", "A-Ratelimit-Limit")]).unwrap();
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

#[test]
fn every_default_parses_with_its_own_parser() {
    let groups = [
        listeners::check_defaults(),
        rules::check_defaults(),
        xds::check_defaults(),
        backend::check_defaults(),
        service::check_defaults(),
        logging::check_defaults(),
        stats::check_defaults(),
        trace::check_defaults(),
        rlqs::check_defaults(),
    ];
    let bad = groups.concat();
    assert!(bad.is_empty(), "{bad:?}");
}

#[test]
fn every_setting_is_listed_once_and_none_is_also_ignored() {
    let mut names: Vec<&str> = SPECS.iter().map(|s| s.env).collect();
    assert_eq!(names.len(), GROUPS.iter().map(|g| g.len()).sum::<usize>());
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), SPECS.len(), "a setting is declared twice");
    for (ignored, _) in IGNORED {
        assert!(!names.contains(ignored), "{ignored} is both read and ignored");
    }
    assert!(SPECS.iter().all(|s| !s.env.is_empty() && !s.help.is_empty()));
}

#[test]
fn defaults_owned_by_other_modules_are_the_settings_defaults() {
    let s = parse(&[]).unwrap();
    assert_eq!(s.service, ServiceOptions::default());
    assert_eq!(s.rules, BuildOptions::default());
    assert_eq!(s.stats.value_series, ValueSeriesLimits::default());
    assert_eq!(s.memory_max_counters, DEFAULT_MAX_COUNTERS);
    assert_eq!(s.stats.near_limit_ratio, crate::stats::DEFAULT_NEAR_LIMIT_RATIO);
    assert_eq!((backend::MEMORY_MAX_COUNTERS.default, service::MAX_ENTRY_BYTES.default), ("1000000", "16384"));
    assert_eq!(rules::CONFIG_MAX_RULES.default, "200000");
    assert_eq!(stats::STATS_MAX_VALUE_SERIES_BYTES.default, "1048576");
}

#[test]
fn decimal_writes_numbers_at_compile_time() {
    const ZERO: &str = decimal!(0);
    const TEN: &str = decimal!(10);
    const MAX: &str = decimal!(u64::MAX);
    assert_eq!([ZERO, TEN, MAX], ["0", "10", "18446744073709551615"]);
}

#[test]
fn the_rlqs_defaults_are_the_options_defaults() {
    let settings = Settings::for_tests(vec![PathBuf::from("config")]);
    assert_eq!(settings.rlqs, crate::rlqs::RlqsOptions::DEFAULT);
}
