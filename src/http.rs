//! The HTTP front ends: the main port and the debug port.
//!
//! Main port (`PORT`):
//! - `/healthcheck`: `200 OK` when serving, `500` when not (any method, as the reference).
//! - `/json`: a protobuf-JSON `RateLimitRequest` in, the `RateLimitResponse` out; `200`
//!   OK, `429` over the limit, `400` with a one-line reason for a bad request, `503` when
//!   the service cannot decide.
//!
//! - `/metrics`: Prometheus text exposition.
//!
//! Debug port (`DEBUG_PORT`):
//! - `/`: this list of endpoints.
//! - `/rlconfig`: one line per configured limit, as the reference prints it.
//! - `/debug/config`: the loaded rules as JSON: files, domains, version, load time,
//!   warnings and the last failed reload. Never a secret: no settings, no environment.
//! - `/metrics`: as on the main port.
//!
//! Routers are plain functions of their state, so tests call them without a socket.

use std::fmt::Write as _;
use std::sync::Arc;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::Code;

use crate::health::Health;
use crate::rlqs::Rlqs;
use crate::service::{RateLimiter, ServiceError};
use crate::snapshot::Reloader;
use crate::stats::Stats;

#[derive(Clone, Debug)]
pub struct HttpState {
    pub limiter: Arc<RateLimiter>,
    /// The quota service, whose buckets `/debug/config` lists.
    pub rlqs: Arc<Rlqs>,
    pub health: Arc<Health>,
    pub reloader: Arc<Reloader>,
    pub stats: Arc<Stats>,
}

/// The main HTTP port's routes.
pub fn router(state: HttpState) -> Router {
    Router::new()
        .route("/healthcheck", any(healthcheck))
        .route("/json", any(json))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .with_state(state)
}

/// The debug port's routes.
pub fn debug_router(state: HttpState) -> Router {
    Router::new()
        .route("/", any(index))
        .route("/rlconfig", any(rlconfig))
        .route("/debug/config", get(debug_config))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .with_state(state)
}

async fn metrics(State(state): State<HttpState>) -> Response {
    // Rendered off this runtime, which also answers /healthcheck and /json.
    match state.stats.scrape().await {
        Some(body) => {
            (StatusCode::OK, [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], body).into_response()
        }
        None => text(StatusCode::INTERNAL_SERVER_ERROR, "cannot render the metrics\n".to_string()),
    }
}

/// RFC 3339 UTC with milliseconds, for `/debug/config`.
pub fn rfc3339(t: std::time::SystemTime) -> String {
    let d = t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // The civil date of a day count since the epoch (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
}

/// Where counters live and, for Redis, each deployment's state (addresses only: no
/// credentials) and the mode: per request, or leased (with the replicas and leases seen).
fn backend_state(store: &crate::store::Store) -> serde_json::Value {
    use crate::store::Store;
    match store {
        Store::Memory(memory) => serde_json::json!({
            "type": "memory",
            "counters": memory.len(),
            "max_counters": memory.max_counters(),
        }),
        Store::Redis(redis) => redis_state(redis, "per_request"),
        Store::Leased(leased) => {
            let mut state = redis_state(leased.redis(), "leased");
            state["live_replicas"] = leased.live_replicas().into();
            state["leases"] = leased.lease_count().into();
            state
        }
    }
}

fn redis_state(redis: &crate::store::RedisStore, mode: &str) -> serde_json::Value {
    serde_json::json!({
        "type": "redis",
        "mode": mode,
        "failure_policy": format!("{:?}", redis.options().failure_policy).to_ascii_lowercase(),
        "deployments": redis.backends().map(|d| serde_json::json!({
            "name": d.name,
            "target": d.target.describe(),
            "up": d.is_up(),
        })).collect::<Vec<_>>(),
        "local_cache_entries": redis.local_cache().map(|c| c.len()),
    })
}

async fn debug_config(State(state): State<HttpState>) -> Response {
    use std::sync::atomic::Ordering;
    let active = state.limiter.config().load();
    let status = &state.reloader.status;
    let loaded = active.as_deref().map(|active| &active.snapshot).map(|s| {
        serde_json::json!({
            "version": s.version,
            "loaded_at": rfc3339(s.loaded_at),
            "files": s.files.iter().map(|f| serde_json::json!({"path": &*f.path, "domains": f.domains})).collect::<Vec<_>>(),
            "domains": s.rules.domains().iter().map(|d| serde_json::json!({
                "name": &*d.name,
                "rules": d.rules().len(),
                "default_limits": d.defaults().len(),
            })).collect::<Vec<_>>(),
            "warnings": s.warnings.0.iter().map(|w| w.to_string()).collect::<Vec<_>>(),
        })
    });
    let failure = status.last_failure().map(|f| serde_json::json!({"at": rfc3339(f.at), "errors": f.errors}));
    let body = serde_json::json!({
        "config": loaded,
        "loads": {
            "succeeded": status.succeeded.load(Ordering::Relaxed),
            "failed": status.failed.load(Ordering::Relaxed),
        },
        "last_reload_error": failure,
        "backend": backend_state(state.limiter.store()),
        "rlqs": rlqs_state(&state.rlqs),
    });
    (StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], format!("{body:#}\n")).into_response()
}

/// The most RLQS buckets `/debug/config` lists (the totals count every one).
const DEBUG_MAX_BUCKETS: usize = 1000;

/// The RLQS streams and buckets: per bucket its rule, what it resolves to, and per
/// client (by stream) its demand and what it holds.
fn rlqs_state(rlqs: &Rlqs) -> serde_json::Value {
    use crate::rlqs::{Strategy, Target};
    let strategy = |s: &Strategy| match s {
        Strategy::AllowAll => serde_json::json!("ALLOW_ALL"),
        Strategy::DenyAll => serde_json::json!("DENY_ALL"),
        Strategy::Tokens { max_tokens, tokens_per_fill, fill_interval } => serde_json::json!({
            "max_tokens": max_tokens,
            "tokens_per_fill": tokens_per_fill,
            "fill_interval": format!("{fill_interval:?}"),
        }),
    };
    let totals = rlqs.totals();
    let buckets: Vec<serde_json::Value> = rlqs
        .buckets(DEBUG_MAX_BUCKETS)
        .iter()
        .map(|b| {
            serde_json::json!({
                "domain": &*b.name.domain,
                "bucket_id": b.name.entries.iter().map(|(k, v)| (k.to_string(), serde_json::json!(&**v))).collect::<serde_json::Map<_, _>>(),
                "rule": b.rule,
                "target": match b.target {
                    Target::Unassigned => serde_json::json!("unassigned"),
                    Target::AllowAll => serde_json::json!("ALLOW_ALL"),
                    Target::DenyAll => serde_json::json!("DENY_ALL"),
                    Target::Limit(q) => serde_json::json!({"requests": q.per_window, "per": format!("{:?}", q.window), "burst": q.burst}),
                },
                "clients": b.clients.iter().map(|(stream, demand, held)| serde_json::json!({
                    "stream": stream,
                    "demand_per_second": demand,
                    "assigned": held.as_ref().map(strategy),
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    serde_json::json!({
        "streams": totals.streams,
        "buckets": totals.buckets,
        "subscriptions": totals.subscriptions,
        "listed": buckets,
    })
}

async fn not_found() -> Response {
    (StatusCode::NOT_FOUND, "404 page not found\n").into_response()
}

async fn healthcheck(State(state): State<HttpState>) -> Response {
    if state.health.is_serving() {
        (StatusCode::OK, "OK").into_response()
    } else {
        StatusCode::INTERNAL_SERVER_ERROR.into_response()
    }
}

fn text(status: StatusCode, body: String) -> Response {
    (status, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], body).into_response()
}

async fn json(State(state): State<HttpState>, body: Bytes) -> Response {
    let request = match crate::json::parse_request(&body) {
        Ok(r) => r,
        Err(reason) => return text(StatusCode::BAD_REQUEST, format!("{reason}\n")),
    };
    match state.limiter.should_rate_limit(&request).await {
        Ok(response) => {
            let status = match Code::try_from(response.overall_code) {
                Ok(Code::Ok) => StatusCode::OK,
                Ok(Code::OverLimit) => StatusCode::TOO_MANY_REQUESTS,
                _ => StatusCode::INTERNAL_SERVER_ERROR,
            };
            let body = crate::json::response_json(&response).to_string();
            (status, [(header::CONTENT_TYPE, "application/json")], Body::from(body)).into_response()
        }
        Err(e @ ServiceError::InvalidArgument(_)) => text(StatusCode::BAD_REQUEST, format!("{e}\n")),
        Err(e @ (ServiceError::Unavailable(_) | ServiceError::Backend(_))) => {
            text(StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n"))
        }
    }
}

const DEBUG_ENDPOINTS: &[(&str, &str)] = &[
    ("/debug/config", "the loaded rules as JSON: files, domains, version, load time, last reload error"),
    ("/metrics", "Prometheus metrics"),
    ("/rlconfig", "print out the currently loaded configuration for debugging"),
];

async fn index() -> Response {
    let mut body = String::new();
    for (path, help) in DEBUG_ENDPOINTS {
        let _ = writeln!(body, "{path}: {help}");
    }
    text(StatusCode::OK, body)
}

async fn rlconfig(State(state): State<HttpState>) -> Response {
    text(StatusCode::OK, rlconfig_text(&state.limiter))
}

/// `/rlconfig`: `<stats key>: unit=<UNIT> requests_per_unit=<n>, shadow_mode: <bool>,
/// quota_mode: <bool>` for every rule with a limit, by domain then file order.
pub fn rlconfig_text(limiter: &RateLimiter) -> String {
    let mut out = String::new();
    let active = limiter.config().load();
    let Some(snapshot) = active.as_deref().map(|active| &active.snapshot) else {
        return out;
    };
    for domain in snapshot.rules.domains() {
        for rule in domain.rules() {
            let tail = format!(", shadow_mode: {}, quota_mode: {}", rule.shadow_mode, rule.quota_mode);
            let stats_key = rule.stats_key();
            if rule.unlimited {
                let _ = writeln!(out, "{stats_key}: unit=UNKNOWN requests_per_unit=0{tail}");
            }
            for limit in rule.limits.iter() {
                let p = &limit.params;
                let _ = writeln!(
                    out,
                    "{stats_key}: unit={} requests_per_unit={}{tail}",
                    p.unit.name(),
                    p.requests_per_unit
                );
            }
        }
    }
    out
}
