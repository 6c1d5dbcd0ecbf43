//! The per-request wrapper between hyper and a listener's router.
//!
//! Owns two things every request goes through: marking it in flight on its connection's
//! [`Activity`] (which the idle and read deadlines follow), and bounding how long it may
//! take. HTTP requests get `HTTP_REQUEST_TIMEOUT` (reading the body included, so a client
//! dribbling a body cannot hold a connection open) and then a `408` that closes the
//! connection. gRPC calls get the deadline their client sent in `grpc-timeout`, if any,
//! and then `DEADLINE_EXCEEDED`, as tonic's own server did.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode, header};
use tower_service::Service;

use super::activity::Activity;
use super::drain::CallsInFlight;

/// How long a request may take.
#[derive(Clone, Copy, Debug)]
pub enum RequestLimit {
    /// HTTP: at most this, then `408 Request Timeout`.
    Http(Duration),
    /// gRPC: the client's `grpc-timeout`, then `DEADLINE_EXCEEDED`.
    GrpcTimeoutHeader,
}

impl RequestLimit {
    fn for_request(self, request: &Request<Incoming>) -> Option<Duration> {
        match self {
            RequestLimit::Http(limit) => Some(limit),
            RequestLimit::GrpcTimeoutHeader => {
                request.headers().get("grpc-timeout").and_then(|v| v.to_str().ok()).and_then(parse_grpc_timeout)
            }
        }
    }

    fn timed_out(self) -> Response<Body> {
        match self {
            RequestLimit::Http(_) => {
                let mut response = Response::new(Body::from("request timeout\n"));
                *response.status_mut() = StatusCode::REQUEST_TIMEOUT;
                // Part of the body may still be unread: the connection cannot be reused.
                response.headers_mut().insert(header::CONNECTION, header::HeaderValue::from_static("close"));
                response
            }
            RequestLimit::GrpcTimeoutHeader => {
                tonic::Status::deadline_exceeded("the call's grpc-timeout passed before it was answered").into_http()
            }
        }
    }
}

/// The gRPC wire format of a timeout: at most 8 digits and a unit (`H`, `M`, `S`, `m`,
/// `u`, `n`). Anything else is ignored, as if no timeout were sent.
pub fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    let digits_len = value.len().checked_sub(1)?;
    let (digits, unit) = value.split_at_checked(digits_len)?;
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// A listener's router as a hyper service for one connection.
#[derive(Clone)]
pub struct Tracked {
    pub router: axum::Router,
    pub activity: Arc<Activity>,
    pub limit: RequestLimit,
    /// Counts requests cut short by their limit.
    pub timeouts: metrics::Counter,
    /// The endpoint's calls in flight, which shutdown drains.
    pub calls: Arc<CallsInFlight>,
}

type Answer = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

impl hyper::service::Service<Request<Incoming>> for Tracked {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Answer;

    fn call(&self, request: Request<Incoming>) -> Answer {
        let in_flight = (self.activity.begin(), self.calls.enter());
        let limit = self.limit;
        let deadline = limit.for_request(&request);
        let mut router = self.router.clone();
        let timeouts = self.timeouts.clone();
        Box::pin(async move {
            let _in_flight = in_flight;
            let answer = async move {
                std::future::poll_fn(|cx| Service::<Request<Incoming>>::poll_ready(&mut router, cx)).await?;
                router.call(request).await
            };
            match deadline {
                None => answer.await,
                Some(deadline) => match tokio::time::timeout(deadline, answer).await {
                    Ok(answered) => answered,
                    Err(_) => {
                        timeouts.increment(1);
                        Ok(limit.timed_out())
                    }
                },
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_parse_as_the_wire_format_says() {
        assert_eq!(parse_grpc_timeout("20m"), Some(Duration::from_millis(20)));
        assert_eq!(parse_grpc_timeout("1S"), Some(Duration::from_secs(1)));
        assert_eq!(parse_grpc_timeout("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(parse_grpc_timeout("99999999n"), Some(Duration::from_nanos(99_999_999)));
        for bad in ["", "m", "123456789m", "10", "10x", "-1S", "1.5S", "+1S", "1é"] {
            assert_eq!(parse_grpc_timeout(bad), None, "{bad:?}");
        }
    }
}
