//! Redis-specific behaviour against real `redis-server` processes: the reference's key
//! strings, one round trip per request, the local over-limit cache, the per-second Redis,
//! scripts after `SCRIPT FLUSH`, auth, a three-master Cluster, two sluicegate processes
//! sharing one Redis, and what each failure policy does when Redis dies, freezes or is
//! not there at start-up. (Behaviour shared with the memory store is in
//! `store_behaviour.rs`.)

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::poll::poll_until;
use common::redis_server::{CountingProxy, RedisCluster, RedisServer};
use common::{OK, OVER, TestServer, http, request};
use envoy_types::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use sluicegate::service::ServiceError;

/// 1_700_000_040 is on a minute boundary.
const T0: u64 = 1_700_000_040;

const RULES: &str = r#"
domain: api
descriptors:
  - key: user
    rate_limit: {unit: minute, requests_per_unit: 3}
  - key: second
    rate_limit: {unit: second, requests_per_unit: 5}
  - key: path
    value: /report
    descriptors:
      - key: method
        rate_limit: {unit: hour, requests_per_unit: 100}
  - key: layered
    limit: "5/second;100/hour"
  - key: bucket
    rate_limit: {unit: second, requests_per_unit: 10, algorithm: token_bucket, burst: 20}
  - key: sliding
    rate_limit: {unit: minute, requests_per_unit: 10, algorithm: sliding_window}
  - key: open
"#;

async fn start(redis_url: &str, settings: &[(&str, &str)]) -> TestServer {
    let mut all = vec![("BACKEND_TYPE", "redis"), ("REDIS_URL", redis_url), ("REDIS_TIMEOUT", "2s")];
    all.extend_from_slice(settings);
    common::start(&[("api.yaml", RULES)], &all, T0).await
}

async fn ask(server: &TestServer, descriptors: &[&[(&str, &str)]]) -> Result<RateLimitResponse, ServiceError> {
    server.shared.limiter.should_rate_limit(&request("api", descriptors)).await
}

fn keys(conn: &mut redis::Connection) -> Vec<String> {
    let mut keys: Vec<String> = redis::cmd("KEYS").arg("*").query(conn).unwrap();
    keys.sort();
    keys
}

fn ttl(conn: &mut redis::Connection, key: &str) -> i64 {
    redis::cmd("TTL").arg(key).query(conn).unwrap()
}

#[tokio::test]
async fn fixed_windows_use_the_reference_keys_and_expiry() {
    let redis = RedisServer::start(&[]);
    let server = start(&redis.address(), &[("EXPIRATION_JITTER_MAX_SECONDS", "0")]).await;
    server.wait_redis_up().await;
    ask(&server, &[&[("user", "alice")], &[("path", "/report"), ("method", "GET")]]).await.unwrap();
    server.clock.advance(Duration::from_secs(1));
    ask(&server, &[&[("second", "s")], &[("open", "x")]]).await.unwrap();
    let mut conn = redis.connection(None);
    let minute = T0 / 60 * 60;
    let hour = T0 / 3600 * 3600;
    assert_eq!(
        keys(&mut conn),
        vec![
            format!("api_path_/report_method_GET_{hour}"),
            format!("api_second_s_{}", T0 + 1),
            format!("api_user_alice_{minute}"),
        ],
        "the reference's keys; a whitelist writes nothing"
    );
    let get = |conn: &mut redis::Connection, key: String| -> i64 { redis::cmd("GET").arg(key).query(conn).unwrap() };
    assert_eq!(get(&mut conn, format!("api_user_alice_{minute}")), 1);
    assert_eq!(ttl(&mut conn, &format!("api_user_alice_{minute}")), 60, "EXPIRE window, no jitter");
    assert_eq!(ttl(&mut conn, &format!("api_path_/report_method_GET_{hour}")), 3600);
    assert_eq!(ttl(&mut conn, &format!("api_second_s_{}", T0 + 1)), 1);
    server.stop().await;

    // With a prefix and jitter; and the keys of limits the reference has no key for.
    let redis = RedisServer::start(&[]);
    let server =
        start(&redis.address(), &[("CACHE_KEY_PREFIX", "rl:"), ("EXPIRATION_JITTER_MAX_SECONDS", "100")]).await;
    server.wait_redis_up().await;
    ask(&server, &[&[("user", "bob")], &[("layered", "l")], &[("bucket", "b")], &[("sliding", "s")]]).await.unwrap();
    let mut conn = redis.connection(None);
    let mut expected = vec![
        format!("rl:api_user_bob_{minute}"),
        format!("rl:api_layered_l_{T0}"),
        format!("rl:api_layered_l_{hour}_fixed_window.100per3600s"),
        "rl:api_bucket_b_token_bucket.10per1s.b20".to_string(),
        "rl:api_sliding_s_sliding_window.10per60s".to_string(),
    ];
    expected.sort();
    assert_eq!(keys(&mut conn), expected);
    let t = ttl(&mut conn, &format!("rl:api_user_bob_{minute}"));
    assert!((60..160).contains(&t), "window plus jitter below 100 s: {t}");
    let kind: String = redis::cmd("TYPE").arg("rl:api_sliding_s_sliding_window.10per60s").query(&mut conn).unwrap();
    assert_eq!(kind, "hash");
    server.stop().await;
}

#[tokio::test]
async fn a_request_is_one_round_trip_whatever_it_holds() {
    let redis = RedisServer::start(&[]);
    let proxy = CountingProxy::start(redis.port).await;
    let server = start(&format!("127.0.0.1:{}", proxy.port), &[("REDIS_POOL_SIZE", "1")]).await;
    server.wait_redis_up().await;
    let mut conn = redis.connection(None);
    let _: () = redis::cmd("CONFIG").arg("RESETSTAT").query(&mut conn).unwrap();
    let before = proxy.bursts();
    let descriptors: &[&[(&str, &str)]] = &[
        &[("user", "a")],
        &[("second", "b")],
        &[("layered", "c")],
        &[("bucket", "d")],
        &[("sliding", "e")],
        &[("path", "/report"), ("method", "POST")],
        &[("open", "f")],
    ];
    for _ in 0..10 {
        let r = ask(&server, descriptors).await.unwrap();
        assert_eq!(r.statuses.len(), 7);
    }
    assert_eq!(proxy.bursts() - before, 10, "one burst of commands per request");
    let calls = RedisServer::command_calls(&mut conn);
    // Per request: 5 fixed windows (user, second, both of layered, path) and 2 scripts.
    assert_eq!(calls.get("incrby"), Some(&50));
    assert_eq!(calls.get("expire"), Some(&50));
    assert_eq!(calls.get("evalsha"), Some(&20));
    let others: Vec<_> = calls
        .keys()
        .filter(|c| !["incrby", "expire", "evalsha", "info", "config|resetstat"].contains(&c.as_str()))
        .collect();
    // Script commands inside EVALSHA show as their own entries (hmget, hset, get, set, pexpire).
    assert!(
        others.iter().all(|c| ["hmget", "hset", "get", "set", "pexpire"].contains(&c.as_str())),
        "no other commands: {others:?}"
    );
    // A request that matches no limit never reaches Redis.
    let before = proxy.bursts();
    ask(&server, &[&[("open", "x")], &[("unknown", "y")]]).await.unwrap();
    assert_eq!(proxy.bursts(), before);
    server.stop().await;
}

#[tokio::test]
async fn the_local_cache_answers_known_over_limit_keys_without_redis() {
    let redis = RedisServer::start(&[]);
    let server = start(&redis.address(), &[("LOCAL_CACHE_SIZE_IN_BYTES", "1000000")]).await;
    server.wait_redis_up().await;
    let mut conn = redis.connection(None);
    for _ in 0..3 {
        assert_eq!(ask(&server, &[&[("user", "c")]]).await.unwrap().overall_code, OK);
    }
    assert_eq!(ask(&server, &[&[("user", "c")]]).await.unwrap().overall_code, OVER, "Redis says over");
    let _: () = redis::cmd("CONFIG").arg("RESETSTAT").query(&mut conn).unwrap();
    server.clock.advance(Duration::from_secs(30));
    for _ in 0..5 {
        let r = ask(&server, &[&[("user", "c")]]).await.unwrap();
        assert_eq!((r.overall_code, r.statuses[0].limit_remaining), (OVER, 0));
        assert_eq!(r.statuses[0].duration_until_reset.as_ref().unwrap().seconds, 30);
    }
    assert_eq!(RedisServer::command_calls(&mut conn).get("incrby"), None, "answered locally");
    let metrics = server.shared.stats.render();
    let line = metrics
        .lines()
        .find(|l| l.starts_with("ratelimit_service_rate_limit_over_limit_with_local_cache{"))
        .expect("the local cache series");
    assert!(line.ends_with(" 5"), "{line}");
    // The next window asks Redis again.
    server.clock.advance(Duration::from_secs(30));
    assert_eq!(ask(&server, &[&[("user", "c")]]).await.unwrap().overall_code, OK);
    assert_eq!(RedisServer::command_calls(&mut conn).get("incrby"), Some(&1));
    server.stop().await;
}

#[tokio::test]
async fn per_second_limits_go_to_the_per_second_redis() {
    let main = RedisServer::start(&[]);
    let per_second = RedisServer::start(&[]);
    let url = per_second.address();
    let server = start(&main.address(), &[("REDIS_PERSECOND", "true"), ("REDIS_PERSECOND_URL", url.as_str())]).await;
    server.wait_redis_up().await;
    let r = ask(&server, &[&[("user", "u")], &[("second", "s")], &[("layered", "l")], &[("bucket", "b")]]).await;
    assert_eq!(r.unwrap().overall_code, OK);
    let mut expected_main = vec![
        format!("api_user_u_{}", T0 / 60 * 60),
        format!("api_layered_l_{}_fixed_window.100per3600s", T0 / 3600 * 3600),
    ];
    expected_main.sort();
    let mut expected_second = vec![
        format!("api_second_s_{T0}"),
        format!("api_layered_l_{T0}"),
        "api_bucket_b_token_bucket.10per1s.b20".to_string(),
    ];
    expected_second.sort();
    assert_eq!(keys(&mut main.connection(None)), expected_main);
    assert_eq!(keys(&mut per_second.connection(None)), expected_second);
    server.stop().await;
}

#[tokio::test]
async fn scripts_survive_script_flush_and_counts_continue() {
    let redis = RedisServer::start(&[]);
    let server = start(&redis.address(), &[]).await;
    server.wait_redis_up().await;
    let mut conn = redis.connection(None);
    for expected in [19, 18] {
        let r = ask(&server, &[&[("bucket", "f")], &[("sliding", "f")]]).await.unwrap();
        assert_eq!(r.statuses[0].limit_remaining, expected);
    }
    let _: () = redis::cmd("SCRIPT").arg("FLUSH").query(&mut conn).unwrap();
    let r = ask(&server, &[&[("bucket", "f")], &[("sliding", "f")]]).await.unwrap();
    assert_eq!(r.statuses[0].limit_remaining, 17, "the script was sent again and the count kept");
    assert_eq!(r.statuses[1].limit_remaining, 7);
    let calls = RedisServer::command_calls(&mut conn);
    assert_eq!(calls.get("eval"), Some(&2), "the two lost calls went in full, once");
    let r = ask(&server, &[&[("bucket", "f")]]).await.unwrap();
    assert_eq!(r.statuses[0].limit_remaining, 16);
    assert_eq!(RedisServer::command_calls(&mut conn).get("eval"), Some(&2), "then by SHA again");
    server.stop().await;
}

#[tokio::test]
async fn requirepass_works_and_a_wrong_password_is_reported_without_it() {
    let redis = RedisServer::start(&["--requirepass", "s3cret-pw"]);
    let server = start(&redis.address(), &[("REDIS_AUTH", "s3cret-pw")]).await;
    server.wait_redis_up().await;
    assert_eq!(ask(&server, &[&[("user", "a")]]).await.unwrap().statuses[0].limit_remaining, 2);
    let keys: Vec<String> = redis::cmd("KEYS").arg("*").query(&mut redis.connection(Some("s3cret-pw"))).unwrap();
    assert_eq!(keys.len(), 1);
    server.stop().await;

    // A password in the URL, wrong this time: never shown.
    let url = format!("redis://default:wrong-pw@127.0.0.1:{}/", redis.port);
    let server = start(&url, &[("REDIS_TIMEOUT", "500ms")]).await;
    let mut err = None;
    poll_until("the wrong password fails a call", Duration::from_secs(10), async || {
        err = ask(&server, &[&[("user", "a")]]).await.err();
        err.is_some()
    })
    .await;
    let err = err.unwrap();
    assert!(matches!(err, ServiceError::Backend(_)), "{err:?}");
    assert!(err.message().contains("redis"), "{err}");
    assert!(!err.message().contains("wrong-pw"), "{err}");
    let (status, _) = http(server.http, "GET", "/healthcheck", "").await;
    assert_eq!(status, 500, "not serving: every limited call would fail");
    let (_, config) = http(server.debug, "GET", "/debug/config", "").await;
    assert!(config.contains("redis://default:***@127.0.0.1"), "{config}");
    assert!(config.contains("\"up\": false"), "{config}");
    assert!(!config.contains("wrong-pw"));
    server.stop().await;
}

#[tokio::test]
async fn a_three_master_cluster_counts_exactly_across_slots() {
    let cluster = RedisCluster::start();
    let url = cluster.url();
    let server = start(&url, &[("REDIS_TYPE", "cluster")]).await;
    server.wait_redis_up().await;
    // Many values: their keys land in every master's slots.
    let users: Vec<String> = (0..30).map(|i| format!("u{i}")).collect();
    let descriptors: Vec<[(&str, &str); 1]> = users.iter().map(|u| [("user", u.as_str())]).collect();
    let refs: Vec<&[(&str, &str)]> = descriptors.iter().map(|d| &d[..]).collect();
    for expected in [2, 1, 0] {
        let r = ask(&server, &refs).await.unwrap();
        assert!(r.statuses.iter().all(|s| s.limit_remaining == expected), "{:?}", r.statuses);
    }
    let r = ask(&server, &refs).await.unwrap();
    assert!(r.statuses.iter().all(|s| s.code == OVER));
    let keys = cluster.keys();
    assert_eq!(keys.len(), 30);
    let nodes: std::collections::HashSet<u16> = keys.iter().map(|(port, _)| *port).collect();
    assert_eq!(nodes.len(), 3, "keys on every master");
    // Scripts run on the cluster too, exactly under concurrency.
    let server = Arc::new(server);
    let admitted = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let (server, admitted) = (server.clone(), admitted.clone());
            tokio::spawn(async move {
                for _ in 0..5 {
                    if ask(&server, &[&[("bucket", "shared")]]).await.unwrap().overall_code == OK {
                        admitted.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(admitted.load(Ordering::Relaxed), 20, "a burst of 20 out of 40 tries");
}

/// Runs `load` concurrent callers until told to stop, recording the slowest call and
/// how each call ended.
struct Load {
    stop: Arc<AtomicBool>,
    /// Calls answered so far, by every caller.
    calls: Arc<AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<(Duration, u64, u64, u64)>>,
}

impl Load {
    fn start(server: &Arc<TestServer>, callers: usize, request: RateLimitRequest) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let calls = Arc::new(AtomicU64::new(0));
        let tasks = (0..callers)
            .map(|_| {
                let (server, stop, request) = (server.clone(), stop.clone(), request.clone());
                let calls = calls.clone();
                tokio::spawn(async move {
                    let (mut slowest, mut ok, mut over, mut errors) = (Duration::ZERO, 0, 0, 0);
                    while !stop.load(Ordering::Relaxed) {
                        let started = Instant::now();
                        match server.shared.limiter.should_rate_limit(&request).await {
                            Ok(r) if r.overall_code == OK => ok += 1,
                            Ok(_) => over += 1,
                            Err(_) => errors += 1,
                        }
                        slowest = slowest.max(started.elapsed());
                        calls.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(2)).await;
                    }
                    (slowest, ok, over, errors)
                })
            })
            .collect();
        Load { stop, calls, tasks }
    }

    /// Waits until `more` calls have been answered from now on.
    async fn wait_for_calls(&self, what: &str, more: u64) {
        let from = self.calls.load(Ordering::Relaxed);
        poll_until(what, Duration::from_secs(10), async || self.calls.load(Ordering::Relaxed) >= from + more).await;
    }

    async fn finish(self) -> (Duration, u64, u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        let mut total = (Duration::ZERO, 0, 0, 0);
        for t in self.tasks {
            let (slowest, ok, over, errors) = t.await.expect("no caller panicked");
            total = (total.0.max(slowest), total.1 + ok, total.2 + over, total.3 + errors);
        }
        total
    }
}

/// Kills Redis during a load run and restarts it, under `policy`; returns what the
/// calls saw while Redis was down.
async fn redis_dies_and_comes_back(policy: &str) -> (TestServer, RedisServer, (Duration, u64, u64, u64)) {
    let mut redis = RedisServer::start(&[]);
    let server = start(&redis.address(), &[("BACKEND_FAILURE_POLICY", policy), ("REDIS_TIMEOUT", "500ms")]).await;
    server.wait_redis_up().await;
    let server = Arc::new(server);
    let mut wide = request("api", &[&[("path", "/report"), ("method", "LOAD")]]);
    wide.hits_addend = 0;
    let load = Load::start(&server, 4, wide.clone());
    load.wait_for_calls("calls answered from Redis", 20).await;
    redis.kill();
    let store = server.shared.redis.clone().unwrap();
    poll_until("the store sees Redis down", Duration::from_secs(10), async || !store.is_up()).await;
    load.wait_for_calls("calls answered while Redis is down", 20).await;
    let during = load.finish().await;
    // A call that matches no limit never needs Redis.
    assert_eq!(ask(&server, &[&[("open", "x")]]).await.unwrap().overall_code, OK);
    // The breaker is open: a call is answered without waiting out REDIS_TIMEOUT (500ms).
    let started = Instant::now();
    let _ = server.shared.limiter.should_rate_limit(&wide).await;
    assert!(started.elapsed() < Duration::from_millis(500), "breaker open: {:?}", started.elapsed());
    let metrics = server.shared.stats.render();
    assert!(metrics.contains("sluicegate_backend_up{backend=\"redis\"} 0"), "{metrics}");
    assert!(
        metrics.lines().any(|l| l.starts_with("ratelimit_service_should_rate_limit_error{err_type=\"redis_error\"}")
            && !l.ends_with(" 0")),
        "redis errors are counted"
    );

    redis.restart();
    poll_until("Redis is used again", Duration::from_secs(5), async || store.is_up()).await;
    let r = server.shared.limiter.should_rate_limit(&wide).await.unwrap();
    assert_eq!(r.overall_code, OK);
    let mut conn = redis.connection(None);
    assert_eq!(keys(&mut conn).len(), 1, "counted in the new Redis");
    let server = Arc::try_unwrap(server).ok().expect("the load has stopped");
    (server, redis, during)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_error_answers_unavailable_while_redis_is_down_and_recovers() {
    let (server, _redis, (slowest, ok, _, errors)) = redis_dies_and_comes_back("error").await;
    assert!(slowest < Duration::from_millis(1500), "no call waited past the timeout: {slowest:?}");
    assert!(ok > 0 && errors > 0, "OK before the kill ({ok}), UNAVAILABLE after ({errors})");
    poll_until("healthy again", Duration::from_secs(2), async || {
        http(server.http, "GET", "/healthcheck", "").await.0 == 200
    })
    .await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_allow_answers_ok_while_redis_is_down() {
    let (server, _redis, (slowest, ok, _, errors)) = redis_dies_and_comes_back("allow").await;
    assert!(slowest < Duration::from_millis(1500), "{slowest:?}");
    assert_eq!(errors, 0, "allow never fails a call");
    assert!(ok > 0);
    assert_eq!(http(server.http, "GET", "/healthcheck", "").await.0, 200);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_local_counts_in_memory_while_redis_is_down() {
    let mut redis = RedisServer::start(&[]);
    let server = start(&redis.address(), &[("BACKEND_FAILURE_POLICY", "local"), ("REDIS_TIMEOUT", "500ms")]).await;
    server.wait_redis_up().await;
    assert_eq!(ask(&server, &[&[("user", "l")]]).await.unwrap().statuses[0].limit_remaining, 2);
    redis.kill();
    // Limits still hold, counted in this process.
    let mut codes = Vec::new();
    for _ in 0..4 {
        let started = Instant::now();
        codes.push(ask(&server, &[&[("user", "m")]]).await.unwrap().overall_code);
        assert!(started.elapsed() < Duration::from_millis(1000));
    }
    assert_eq!(codes, vec![OK, OK, OK, OVER]);
    assert_eq!(http(server.http, "GET", "/healthcheck", "").await.0, 200, "still serving");
    redis.restart();
    let store = server.shared.redis.clone().unwrap();
    poll_until("Redis is used again", Duration::from_secs(5), async || store.is_up()).await;
    assert_eq!(ask(&server, &[&[("user", "m")]]).await.unwrap().statuses[0].limit_remaining, 2, "Redis counts again");
    let (slowest, ok, _, errors) = {
        let server = Arc::new(server);
        let load = Load::start(&server, 4, request("api", &[&[("path", "/report"), ("method", "L")]]));
        load.wait_for_calls("calls answered from Redis", 20).await;
        redis.kill();
        poll_until("the store sees Redis down", Duration::from_secs(10), async || !store.is_up()).await;
        load.wait_for_calls("calls answered while Redis is down", 20).await;
        let seen = load.finish().await;
        Arc::try_unwrap(server).ok().unwrap().stop().await;
        seen
    };
    assert!(slowest < Duration::from_millis(1500), "{slowest:?}");
    assert_eq!(errors, 0, "local never fails a call");
    assert!(ok > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_redis_costs_one_timeout_then_the_breaker_answers_at_once() {
    let redis = RedisServer::start(&[]);
    let server = start(&redis.address(), &[("REDIS_TIMEOUT", "300ms")]).await;
    server.wait_redis_up().await;
    redis.freeze(true);
    let started = Instant::now();
    let err = ask(&server, &[&[("user", "f")]]).await.unwrap_err();
    let first = started.elapsed();
    assert!(first >= Duration::from_millis(250) && first < Duration::from_millis(800), "{first:?}: {err}");
    for _ in 0..10 {
        let started = Instant::now();
        assert!(ask(&server, &[&[("user", "f")]]).await.is_err());
        // The breaker answers at once, not after another REDIS_TIMEOUT (300ms).
        assert!(started.elapsed() < Duration::from_millis(250), "{:?}", started.elapsed());
    }
    redis.freeze(false);
    let store = server.shared.redis.clone().unwrap();
    poll_until("Redis is used again", Duration::from_secs(5), async || store.is_up()).await;
    assert_eq!(ask(&server, &[&[("user", "f")]]).await.unwrap().overall_code, OK);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_up_without_redis_serves_and_connects_when_it_appears() {
    let port = common::redis_server::free_port();
    let url = format!("127.0.0.1:{port}");
    let server = start(
        &url,
        &[
            ("REDIS_TIMEOUT", "300ms"),
            ("REDIS_STARTUP_INITIAL_INTERVAL", "50ms"),
            ("REDIS_STARTUP_MAX_INTERVAL", "200ms"),
        ],
    )
    .await;
    assert_eq!(http(server.http, "GET", "/healthcheck", "").await.0, 500, "not ready without Redis");
    let started = Instant::now();
    let err = ask(&server, &[&[("user", "s")]]).await.unwrap_err();
    assert!(started.elapsed() < Duration::from_millis(250), "no REDIS_TIMEOUT (300ms) waited: {:?}", started.elapsed());
    assert!(err.message().contains("redis"), "{err}");
    assert_eq!(ask(&server, &[&[("open", "x")]]).await.unwrap().overall_code, OK);
    let _redis = RedisServer::start_on(port);
    server.wait_redis_up().await;
    poll_until("ready", Duration::from_secs(2), async || http(server.http, "GET", "/healthcheck", "").await.0 == 200)
        .await;
    assert_eq!(ask(&server, &[&[("user", "s")]]).await.unwrap().overall_code, OK);
    server.stop().await;
}

#[test]
fn two_sluicegate_processes_sharing_one_redis_admit_exactly_the_limit() {
    use common::process;
    let redis = RedisServer::start(&[]);
    let dir = common::TempDir::new("shared-redis");
    dir.write("ratelimit/config/api.yaml", "domain: api\ndescriptors:\n  - key: user\n    rate_limit: {unit: hour, requests_per_unit: 150}\n  - key: bucket\n    rate_limit: {unit: hour, requests_per_unit: 60, algorithm: token_bucket}\n");
    let spawn = || {
        let mut command = process::sluicegate();
        process::reference_env(&mut command, dir.path());
        command.env("BACKEND_TYPE", "redis").env("REDIS_URL", redis.address()).env("GRPC_WORKERS", "2");
        process::spawn(command)
    };
    let (mut a, mut b) = (spawn(), spawn());
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(async {
        // Wait until both are connected (health follows Redis under the default policy).
        for r in [&a, &b] {
            poll_until("connected", Duration::from_secs(10), async || {
                http(r.http, "GET", "/healthcheck", "").await.0 == 200
            })
            .await;
        }
        for (key, limit) in [("user", 150), ("bucket", 60)] {
            let admitted = Arc::new(AtomicU64::new(0));
            let mut tasks = Vec::new();
            for addr in [a.grpc, b.grpc] {
                for _ in 0..4 {
                    let admitted = admitted.clone();
                    tasks.push(tokio::spawn(async move {
                        let mut client = common::connect(addr).await;
                        for _ in 0..50 {
                            let r = client.should_rate_limit(request("api", &[&[(key, "shared")]])).await.unwrap();
                            if r.into_inner().overall_code == OK {
                                admitted.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }));
                }
            }
            for t in tasks {
                t.await.unwrap();
            }
            assert_eq!(admitted.load(Ordering::Relaxed), limit, "{key}: 400 calls through two processes");
        }
    });
    for r in [&mut a, &mut b] {
        process::sigterm(&r.child);
        assert!(process::wait_exit(&mut r.child, Duration::from_secs(10)).success());
    }
}

#[tokio::test]
async fn a_descriptor_hits_addend_of_zero_still_reads_redis_without_counting() {
    let redis = RedisServer::start(&[]);
    let server = start(&redis.address(), &[]).await;
    server.wait_redis_up().await;
    ask(&server, &[&[("user", "z")]]).await.unwrap();
    let mut req = request("api", &[&[("user", "z")], &[("bucket", "z")]]);
    for d in &mut req.descriptors {
        d.hits_addend = common::hits(0);
    }
    let r = server.shared.limiter.should_rate_limit(&req).await.unwrap();
    assert_eq!(r.statuses[0].limit_remaining, 2);
    assert_eq!(r.statuses[1].limit_remaining, 20);
    let mut conn = redis.connection(None);
    assert_eq!(keys(&mut conn).len(), 1, "checking a bucket writes nothing");
    server.stop().await;
}

#[tokio::test]
async fn sentinel_finds_the_master() {
    let master = RedisServer::start(&[]);
    let dir = common::TempDir::new("sentinel");
    let port = common::redis_server::free_port();
    let conf = dir.write(
        "sentinel.conf",
        &format!(
            "port {port}\nbind 127.0.0.1\nsentinel monitor mymaster 127.0.0.1 {} 1\nsentinel down-after-milliseconds mymaster 1000\n",
            master.port
        ),
    );
    let mut sentinel = std::process::Command::new("redis-server")
        .arg(&conf)
        .arg("--sentinel")
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    poll_until("the sentinel listens", Duration::from_secs(10), async || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    })
    .await;
    let url = format!("mymaster,127.0.0.1:{port}");
    let server = start(&url, &[("REDIS_TYPE", "sentinel")]).await;
    server.wait_redis_up().await;
    assert_eq!(ask(&server, &[&[("user", "s")]]).await.unwrap().statuses[0].limit_remaining, 2);
    assert_eq!(keys(&mut master.connection(None)), vec![format!("api_user_s_{}", T0 / 60 * 60)]);
    server.stop().await;
    let _ = sentinel.kill();
    let _ = sentinel.wait();
}

#[tokio::test]
async fn tls_to_redis_verifies_the_server_with_the_given_ca() {
    use common::test_ca::Ca;
    let ca = Ca::new("redis test CA");
    let dir = common::TempDir::new("redis-tls");
    let (cert, key) = ca.issue(&["localhost", "127.0.0.1"]);
    let cert_file = dir.write("redis.pem", &cert);
    let key_file = dir.write("redis.key", &key);
    let ca_file = dir.write("ca.pem", &ca.pem());
    let redis = RedisServer::start_tls(&[
        "--tls-cert-file",
        cert_file.to_str().unwrap(),
        "--tls-key-file",
        key_file.to_str().unwrap(),
        "--tls-ca-cert-file",
        ca_file.to_str().unwrap(),
        "--tls-auth-clients",
        "no",
    ]);
    let url = format!("localhost:{}", redis.port);
    let ca_path = ca_file.to_str().unwrap();
    let server = start(&url, &[("REDIS_TLS", "true"), ("REDIS_TLS_CACERT", ca_path)]).await;
    server.wait_redis_up().await;
    assert_eq!(ask(&server, &[&[("user", "t")]]).await.unwrap().statuses[0].limit_remaining, 2);
    assert_eq!(ask(&server, &[&[("user", "t")]]).await.unwrap().statuses[0].limit_remaining, 1);
    server.stop().await;

    // A CA that did not issue Redis's certificate: never connected.
    let other = Ca::new("another CA");
    let other_file = dir.write("other.pem", &other.pem());
    let other_path = other_file.to_str().unwrap();
    let server =
        start(&url, &[("REDIS_TLS", "true"), ("REDIS_TLS_CACERT", other_path), ("REDIS_TIMEOUT", "500ms")]).await;
    // Asserting that something does not happen: give the connection attempts a
    // REDIS_TIMEOUT to succeed (they must not), then check.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!server.shared.redis.clone().unwrap().is_up());
    assert!(ask(&server, &[&[("user", "t")]]).await.is_err());
    server.stop().await;
    drop(redis);
}
