//! When a connection has been quiet or slow too long, and what that means.
//!
//! Owns the deadlines about a client *not sending*, computed from the connection's
//! [`Activity`] each time the supervisor looks:
//!
//! - gRPC: the HTTP/2 preface must arrive within `GRPC_HANDSHAKE_TIMEOUT` of the accept
//!   (or the connection is dropped); then, without a call for `GRPC_MAX_CONNECTION_IDLE`,
//!   it is sent a GOAWAY.
//! - HTTP/1, as Go's `ReadHeaderTimeout` and `IdleTimeout`: a new connection must deliver
//!   its first request head within the header timeout of the accept; after a response,
//!   the next request may take the idle timeout to start and then, from its first byte,
//!   the header timeout to finish its head. Either way the connection is dropped. A
//!   request in flight is bounded by the request timeout, not here.

use std::time::Duration;

use tokio::time::Instant;

use super::activity::Activity;

/// Which deadline passed, for the action and the metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expired {
    /// The TLS handshake or the HTTP/2 preface.
    Handshake,
    HeaderRead,
    Idle,
}

/// The deadlines of one connection.
#[derive(Clone, Copy, Debug)]
pub enum Deadlines {
    Grpc { preface_by: Instant, idle: Option<Duration> },
    Http1 { header: Duration, idle: Duration },
}

impl Deadlines {
    /// When to look again, and what will have expired then unless the client does
    /// something first (`None`: nothing to watch, a gRPC connection without an idle
    /// limit). A deadline that moves earlier is signalled by [`Activity::changed`].
    pub fn next(&self, activity: &Activity, now: Instant) -> Option<(Instant, Expired)> {
        match *self {
            Deadlines::Grpc { preface_by, .. } if !activity.preface_done() => Some((preface_by, Expired::Handshake)),
            Deadlines::Grpc { idle, .. } => {
                let idle = idle?;
                // Busy: idle time can start no earlier than now, so look again then.
                let from = if activity.in_flight() > 0 { now } else { activity.last_change() };
                Some((from + idle, Expired::Idle))
            }
            Deadlines::Http1 { header, idle } => {
                if activity.in_flight() > 0 {
                    // Idle time cannot end before now + idle; the request's end is seen
                    // at that look (the request timeout bounds the request itself).
                    return Some((now + idle, Expired::Idle));
                }
                if activity.answered() == 0 {
                    return Some((activity.accepted() + header, Expired::HeaderRead));
                }
                match activity.next_head_started() {
                    Some(started) => Some((started + header, Expired::HeaderRead)),
                    None => Some((activity.last_change() + idle, Expired::Idle)),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HTTP1: Deadlines = Deadlines::Http1 { header: Duration::from_secs(10), idle: Duration::from_secs(60) };

    #[test]
    fn a_new_http1_connection_gets_the_header_timeout_from_the_accept() {
        let activity = Activity::new(Instant::now());
        let expected = Some((activity.accepted() + Duration::from_secs(10), Expired::HeaderRead));
        assert_eq!(HTTP1.next(&activity, Instant::now()), expected);
        activity.mark_bytes_between_requests();
        assert_eq!(HTTP1.next(&activity, Instant::now()), expected, "dribbling does not extend it");
    }

    #[test]
    fn between_http1_requests_the_idle_timeout_then_the_header_timeout_from_the_first_byte() {
        let activity = Activity::new(Instant::now());
        let request = activity.begin();
        let now = Instant::now();
        assert_eq!(HTTP1.next(&activity, now), Some((now + Duration::from_secs(60), Expired::Idle)), "busy");
        drop(request);
        let idle = (activity.last_change() + Duration::from_secs(60), Expired::Idle);
        assert_eq!(HTTP1.next(&activity, Instant::now()), Some(idle));
        activity.mark_bytes_between_requests();
        let (deadline, which) = HTTP1.next(&activity, Instant::now()).unwrap();
        assert_eq!(which, Expired::HeaderRead);
        assert!(deadline <= Instant::now() + Duration::from_secs(10));
    }

    #[test]
    fn grpc_connections_owe_the_preface_then_a_call_every_idle_period() {
        let activity = Activity::new(Instant::now());
        let preface_by = activity.accepted() + Duration::from_secs(5);
        let grpc = Deadlines::Grpc { preface_by, idle: Some(Duration::from_secs(600)) };
        assert_eq!(grpc.next(&activity, Instant::now()), Some((preface_by, Expired::Handshake)));
        activity.mark_preface_done();
        let idle = activity.last_change() + Duration::from_secs(600);
        assert_eq!(grpc.next(&activity, Instant::now()), Some((idle, Expired::Idle)));
        let unlimited = Deadlines::Grpc { preface_by, idle: None };
        assert_eq!(unlimited.next(&activity, Instant::now()), None);
    }
}
