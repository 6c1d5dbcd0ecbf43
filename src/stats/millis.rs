//! `PROMETHEUS_RESPONSE_TIME_AS_MILLISECONDS`: a recorder wrapper that makes the
//! Prometheus response-time histogram record milliseconds, as the reference does with
//! that setting (same series name, `ratelimit_service_response_time_seconds`; values and
//! bucket bounds a thousand times larger). Only the Prometheus side is wrapped: statsd
//! still gets seconds and sends its `|ms` lines unchanged.

use std::sync::Arc;

use metrics::{Counter, Gauge, Histogram, HistogramFn, Key, KeyName, Metadata, Recorder, SharedString, Unit};

/// The histogram whose samples are scaled.
pub(super) const RESPONSE_TIME: &str = "ratelimit_service_response_time_seconds";

/// Wraps a recorder; [`RESPONSE_TIME`] samples are multiplied by 1000 on the way in.
pub(super) struct Millis<R>(pub R);

struct Scaled(Histogram);

impl HistogramFn for Scaled {
    fn record(&self, value: f64) {
        self.0.record(value * 1000.0);
    }
}

impl<R: Recorder> Recorder for Millis<R> {
    fn describe_counter(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.0.describe_counter(key, unit, description);
    }
    fn describe_gauge(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.0.describe_gauge(key, unit, description);
    }
    fn describe_histogram(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        let unit = if key.as_str() == RESPONSE_TIME { Some(Unit::Milliseconds) } else { unit };
        self.0.describe_histogram(key, unit, description);
    }
    fn register_counter(&self, key: &Key, metadata: &Metadata<'_>) -> Counter {
        self.0.register_counter(key, metadata)
    }
    fn register_gauge(&self, key: &Key, metadata: &Metadata<'_>) -> Gauge {
        self.0.register_gauge(key, metadata)
    }
    fn register_histogram(&self, key: &Key, metadata: &Metadata<'_>) -> Histogram {
        let inner = self.0.register_histogram(key, metadata);
        if key.name() == RESPONSE_TIME { Histogram::from_arc(Arc::new(Scaled(inner))) } else { inner }
    }
}
