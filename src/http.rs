//! The HTTP front ends: the main port and the debug port.
//!
//! Main port (`PORT`):
//! - `/healthcheck`: `200 OK` when serving, `500` when not (any method, as the reference).
//! - `/json`: a protobuf-JSON `RateLimitRequest` in, the `RateLimitResponse` out; `200`
//!   OK, `429` over the limit, `400` with a one-line reason for a bad request, `503` when
//!   the service cannot decide.
//!
//! Debug port (`DEBUG_PORT`):
//! - `/`: this list of endpoints.
//! - `/rlconfig`: one line per configured limit, as the reference prints it.
//!
//! Routers are plain functions of their state, so tests call them without a socket.

use std::fmt::Write as _;
use std::sync::Arc;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::Code;

use crate::health::Health;
use crate::service::{RateLimiter, ServiceError};

#[derive(Clone, Debug)]
pub struct HttpState {
    pub limiter: Arc<RateLimiter>,
    pub health: Arc<Health>,
}

/// The main HTTP port's routes.
pub fn router(state: HttpState) -> Router {
    Router::new()
        .route("/healthcheck", any(healthcheck))
        .route("/json", any(json))
        .fallback(not_found)
        .with_state(state)
}

/// The debug port's routes.
pub fn debug_router(state: HttpState) -> Router {
    Router::new().route("/", any(index)).route("/rlconfig", any(rlconfig)).fallback(not_found).with_state(state)
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
        Err(e @ ServiceError::Unavailable(_)) => text(StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")),
    }
}

const DEBUG_ENDPOINTS: &[(&str, &str)] = &[("/rlconfig", "print out the currently loaded configuration for debugging")];

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
    let snapshot = limiter.config().load();
    let Some(snapshot) = snapshot.as_deref() else {
        return out;
    };
    for domain in snapshot.rules.domains() {
        for rule in domain.rules() {
            let tail = format!(", shadow_mode: {}, quota_mode: {}", rule.shadow_mode, rule.quota_mode);
            if rule.unlimited {
                let _ = writeln!(out, "{}: unit=UNKNOWN requests_per_unit=0{tail}", rule.stats_key);
            }
            for limit in rule.limits.iter() {
                let p = &limit.params;
                let _ = writeln!(
                    out,
                    "{}: unit={} requests_per_unit={}{tail}",
                    rule.stats_key,
                    p.unit.name(),
                    p.requests_per_unit
                );
            }
        }
    }
    out
}
