//! The Rate Limit Quota Service's metrics. Names and help texts live here with every
//! other metric's; `rlqs` only sets them. No series is labelled by bucket or client
//! (unbounded); per-bucket detail is on `/debug/config`.

use metrics::{Counter, Gauge};

use super::Stats;

/// Every RLQS series.
#[derive(Clone, Debug)]
pub struct RlqsMetrics {
    pub streams: Gauge,
    pub buckets: Gauge,
    /// (bucket, client) pairs: clients per bucket on average is this over `buckets`.
    pub subscriptions: Gauge,
    pub max_clients_per_bucket: Gauge,
    /// Requests per second handed out in token buckets, over every client and bucket.
    pub assigned_rate: Gauge,
    /// Requests per second the clients report being offered (allowed plus denied).
    pub reported_rate: Gauge,
    pub reports: Counter,
    pub reported_allowed: Counter,
    pub reported_denied: Counter,
    pub assignments: Counter,
    pub abandons: Counter,
    pub invalid_reports: Counter,
    pub refused_streams: Counter,
    pub refused_buckets: Counter,
    /// Actions dropped because a stream's client was not reading its answers.
    pub undelivered: Counter,
}

impl Stats {
    pub fn rlqs(&self) -> RlqsMetrics {
        let requests =
            |outcome, help| self.counter("sluicegate_rlqs_reported_requests_total", &[("outcome", outcome)], help);
        let actions = |action, help| self.counter("sluicegate_rlqs_actions_total", &[("action", action)], help);
        let refused = |what, help| self.counter("sluicegate_rlqs_refused_total", &[("what", what)], help);
        RlqsMetrics {
            streams: self.gauge("sluicegate_rlqs_streams", &[], "Open RLQS streams"),
            buckets: self.gauge("sluicegate_rlqs_buckets", &[], "RLQS buckets with at least one subscribed client"),
            subscriptions: self.gauge(
                "sluicegate_rlqs_subscriptions",
                &[],
                "RLQS (bucket, client) subscriptions; over sluicegate_rlqs_buckets, the clients per bucket",
            ),
            max_clients_per_bucket: self.gauge(
                "sluicegate_rlqs_max_clients_per_bucket",
                &[],
                "Most clients subscribed to one RLQS bucket",
            ),
            assigned_rate: self.gauge(
                "sluicegate_rlqs_assigned_requests_per_second",
                &[],
                "Requests per second assigned to RLQS clients in token buckets",
            ),
            reported_rate: self.gauge(
                "sluicegate_rlqs_reported_requests_per_second",
                &[],
                "Requests per second RLQS clients report being offered (allowed plus denied)",
            ),
            reports: self.counter("sluicegate_rlqs_reports_total", &[], "RLQS bucket usage reports received"),
            reported_allowed: requests("allowed", "Requests RLQS clients report, by what they did with them"),
            reported_denied: requests("denied", "Requests RLQS clients report, by what they did with them"),
            assignments: actions("assign", "RLQS bucket actions sent, by kind"),
            abandons: actions("abandon", "RLQS bucket actions sent, by kind"),
            invalid_reports: self.counter(
                "sluicegate_rlqs_invalid_reports_total",
                &[],
                "RLQS streams closed with INVALID_ARGUMENT for a malformed report",
            ),
            refused_streams: refused(
                "stream",
                "RLQS streams and buckets refused over RLQS_MAX_STREAMS or RLQS_MAX_BUCKETS_PER_STREAM",
            ),
            refused_buckets: refused(
                "bucket",
                "RLQS streams and buckets refused over RLQS_MAX_STREAMS or RLQS_MAX_BUCKETS_PER_STREAM",
            ),
            undelivered: self.counter(
                "sluicegate_rlqs_undelivered_total",
                &[],
                "RLQS answers dropped because the client was not reading its stream",
            ),
        }
    }
}
