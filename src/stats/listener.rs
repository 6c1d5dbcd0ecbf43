//! The series of the listeners: open connections, waits at the connection cap, accept
//! errors, and connections or requests cut short by a deadline, each labelled by listener
//! (`grpc`, `http` or `debug`). Defined here so every metric name lives in `stats`;
//! `accept` and `serve` only increment them.

use super::Stats;

/// The metrics of one listener kind (`listener` label: `grpc`, `http` or `debug`).
#[derive(Clone, Debug)]
pub struct AcceptMetrics {
    pub open: metrics::Gauge,
    pub waited_at_cap: metrics::Counter,
    pub errors: metrics::Counter,
}

impl AcceptMetrics {
    pub fn new(stats: &Stats, listener: &'static str) -> AcceptMetrics {
        let labels = [("listener", listener)];
        AcceptMetrics {
            open: stats.gauge("sluicegate_connections_open", &labels, "Connections open on the listener"),
            waited_at_cap: stats.counter(
                "sluicegate_connections_at_cap_total",
                &labels,
                "Times the listener stopped accepting because it held its cap of open connections",
            ),
            errors: stats.counter(
                "sluicegate_accept_errors_total",
                &labels,
                "Failed accepts (out of descriptors, ...)",
            ),
        }
    }
}

/// Connections closed, or requests answered early, because a deadline passed
/// (`sluicegate_timeouts_total{listener, timeout}`).
#[derive(Clone, Debug)]
pub struct TimeoutMetrics {
    pub handshake: metrics::Counter,
    pub header_read: metrics::Counter,
    pub idle: metrics::Counter,
    pub max_age: metrics::Counter,
    pub request: metrics::Counter,
}

impl TimeoutMetrics {
    pub fn new(stats: &Stats, listener: &'static str) -> TimeoutMetrics {
        let counter = |timeout| {
            stats.counter(
                "sluicegate_timeouts_total",
                &[("listener", listener), ("timeout", timeout)],
                "Connections closed or asked to go away, and requests answered early, because a deadline passed",
            )
        };
        TimeoutMetrics {
            handshake: counter("handshake"),
            header_read: counter("header_read"),
            idle: counter("idle"),
            max_age: counter("max_age"),
            request: counter("request"),
        }
    }
}
