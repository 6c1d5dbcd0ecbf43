//! statsd output (`USE_STATSD=true`), with the reference's dotted names.
//!
//! Owns a second metrics recorder, fanned out beside the Prometheus one, that keeps each
//! series' value in an atomic and, every `STATS_FLUSH_INTERVAL`, sends what changed to
//! `STATSD_HOST:STATSD_PORT` over TCP (the reference's default, through gostats) or UDP
//! (`STATSD_PROTOCOL=udp`): counters as deltas (`|c`), gauges as values (`|g`), the
//! response time as the interval's mean in milliseconds (`|ms`).
//!
//! Names are the reference's (`ratelimit.service.rate_limit.<domain>.<key>.total_hits`,
//! `ratelimit_server.ShouldRateLimit.response_time`, ...), sanitized as it does: `:` and
//! `|` become `_`, and the dots of an IPv4 address inside a key become `_`; and `@` and
//! control characters become `_` too, so no request can write a line of its own. Their
//! request-named parts are already bounded in length (see `stats::label`).

mod names;

use names::dotted;
pub use names::sanitize;

use std::collections::HashMap;
use std::io::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use metrics::{
    Counter, CounterFn, Gauge, GaugeFn, Histogram, HistogramFn, Key, KeyName, Metadata, Recorder, SharedString, Unit,
};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Protocol {
    Tcp,
    Udp,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatsdOptions {
    pub host: String,
    pub port: u16,
    pub protocol: Protocol,
    pub flush_interval: Duration,
}

#[derive(Debug, Default)]
struct Cell {
    value: AtomicU64,
    /// For counters: the value last sent. For histograms: the count last sent.
    sent: AtomicU64,
    /// For histograms: the number of samples (their sum in microseconds is `value`).
    samples: AtomicU64,
}

impl CounterFn for Cell {
    fn increment(&self, value: u64) {
        self.value.fetch_add(value, Ordering::Relaxed);
    }
    fn absolute(&self, value: u64) {
        self.value.fetch_max(value, Ordering::Relaxed);
    }
}

impl GaugeFn for Cell {
    fn increment(&self, value: f64) {
        let _ = self
            .value
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| Some((f64::from_bits(v) + value).to_bits()));
    }
    fn decrement(&self, value: f64) {
        GaugeFn::increment(self, -value);
    }
    fn set(&self, value: f64) {
        self.value.store(value.to_bits(), Ordering::Relaxed);
    }
}

impl HistogramFn for Cell {
    fn record(&self, seconds: f64) {
        self.value.fetch_add((seconds * 1e6) as u64, Ordering::Relaxed);
        self.samples.fetch_add(1, Ordering::Relaxed);
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Counter = 0,
    Gauge = 1,
    Timer = 2,
}

/// Every series registered, findable by name: registrations come once per new series,
/// but there can be tens of thousands of those.
#[derive(Debug, Default)]
struct Series {
    /// In registration order, which is the order they are flushed in.
    cells: Vec<(Arc<str>, Kind, Arc<Cell>)>,
    /// Where each name is in `cells`, one map per kind.
    index: [HashMap<Arc<str>, usize>; 3],
}

/// The series and the connection.
#[derive(Debug)]
pub struct StatsdSink {
    options: StatsdOptions,
    suffix: String,
    series: Mutex<Series>,
    connection: Mutex<Option<std::net::TcpStream>>,
}

impl StatsdSink {
    pub fn new(options: StatsdOptions, extra_tags: &[(String, String)]) -> Self {
        let suffix = extra_tags.iter().map(|(k, v)| format!(".__{k}={v}")).collect();
        StatsdSink { options, suffix, series: Mutex::new(Series::default()), connection: Mutex::new(None) }
    }

    pub fn flush_interval(&self) -> Duration {
        self.options.flush_interval
    }

    fn cell(&self, key: &Key, kind: Kind) -> Option<Arc<Cell>> {
        let name = dotted(key)?;
        let name = format!("{}{}", sanitize(&name), self.suffix);
        let mut series = self.series.lock().unwrap_or_else(|p| p.into_inner());
        let Series { cells, index } = &mut *series;
        if let Some((_, _, cell)) = index[kind as usize].get(name.as_str()).and_then(|&i| cells.get(i)) {
            return Some(cell.clone());
        }
        let name: Arc<str> = name.into();
        let cell = Arc::new(Cell::default());
        index[kind as usize].insert(name.clone(), cells.len());
        cells.push((name, kind, cell.clone()));
        Some(cell)
    }

    /// The statsd lines for what changed since the last call.
    pub fn lines(&self) -> Vec<String> {
        let series = self.series.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = Vec::new();
        for (name, kind, cell) in &series.cells {
            match kind {
                Kind::Counter => {
                    let now = cell.value.load(Ordering::Relaxed);
                    let before = cell.sent.swap(now, Ordering::Relaxed);
                    if now > before {
                        out.push(format!("{name}:{}|c", now - before));
                    }
                }
                Kind::Gauge => out.push(format!("{name}:{}|g", f64::from_bits(cell.value.load(Ordering::Relaxed)))),
                Kind::Timer => {
                    let samples = cell.samples.swap(0, Ordering::Relaxed);
                    let micros = cell.value.swap(0, Ordering::Relaxed);
                    if samples > 0 {
                        out.push(format!("{name}:{:.3}|ms", micros as f64 / samples as f64 / 1000.0));
                    }
                }
            }
        }
        out
    }

    /// Sends what changed. Errors are logged and retried at the next flush.
    pub fn flush(&self) {
        let lines = self.lines();
        if lines.is_empty() {
            return;
        }
        let address = format!("{}:{}", self.options.host, self.options.port);
        let result = match self.options.protocol {
            Protocol::Udp => std::net::UdpSocket::bind("0.0.0.0:0").and_then(|socket| {
                // One datagram per batch that fits a typical MTU.
                let mut batch = String::new();
                for line in lines {
                    if !batch.is_empty() && batch.len() + line.len() + 1 > 1400 {
                        socket.send_to(batch.as_bytes(), &address)?;
                        batch.clear();
                    }
                    batch.push_str(&line);
                    batch.push('\n');
                }
                socket.send_to(batch.as_bytes(), &address).map(|_| ())
            }),
            Protocol::Tcp => {
                let mut connection = self.connection.lock().unwrap_or_else(|p| p.into_inner());
                let payload: String = lines.iter().map(|l| format!("{l}\n")).collect();
                let attempt = |conn: &mut Option<std::net::TcpStream>| -> std::io::Result<()> {
                    if conn.is_none() {
                        let stream = std::net::TcpStream::connect(&address)?;
                        stream.set_write_timeout(Some(Duration::from_secs(2)))?;
                        *conn = Some(stream);
                    }
                    let result = conn.as_mut().map_or(Ok(()), |s| s.write_all(payload.as_bytes()));
                    if result.is_err() {
                        *conn = None;
                    }
                    result
                };
                attempt(&mut connection)
            }
        };
        if let Err(e) = result {
            tracing::warn!(address, error = %e, "cannot send stats to statsd");
        }
    }
}

/// The recorder the fanout hands registrations to.
#[derive(Debug)]
pub struct StatsdRecorder(pub Arc<StatsdSink>);

impl Recorder for StatsdRecorder {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}

    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        self.0.cell(key, Kind::Counter).map_or_else(Counter::noop, Counter::from_arc)
    }

    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        self.0.cell(key, Kind::Gauge).map_or_else(Gauge::noop, Gauge::from_arc)
    }

    fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
        self.0.cell(key, Kind::Timer).map_or_else(Histogram::noop, Histogram::from_arc)
    }
}

/// Two recorders behind one: every series goes to Prometheus and to statsd.
#[derive(Debug)]
pub struct Both<A, B>(pub A, pub B);

struct Pair<T>(T, T);

impl CounterFn for Pair<Counter> {
    fn increment(&self, value: u64) {
        self.0.increment(value);
        self.1.increment(value);
    }
    fn absolute(&self, value: u64) {
        self.0.absolute(value);
        self.1.absolute(value);
    }
}

impl GaugeFn for Pair<Gauge> {
    fn increment(&self, value: f64) {
        self.0.increment(value);
        self.1.increment(value);
    }
    fn decrement(&self, value: f64) {
        self.0.decrement(value);
        self.1.decrement(value);
    }
    fn set(&self, value: f64) {
        self.0.set(value);
        self.1.set(value);
    }
}

impl HistogramFn for Pair<Histogram> {
    fn record(&self, value: f64) {
        self.0.record(value);
        self.1.record(value);
    }
}

impl<A: Recorder, B: Recorder> Recorder for Both<A, B> {
    fn describe_counter(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.0.describe_counter(key.clone(), unit, description.clone());
        self.1.describe_counter(key, unit, description);
    }
    fn describe_gauge(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.0.describe_gauge(key.clone(), unit, description.clone());
        self.1.describe_gauge(key, unit, description);
    }
    fn describe_histogram(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.0.describe_histogram(key.clone(), unit, description.clone());
        self.1.describe_histogram(key, unit, description);
    }
    fn register_counter(&self, key: &Key, metadata: &Metadata<'_>) -> Counter {
        Counter::from_arc(Arc::new(Pair(
            self.0.register_counter(key, metadata),
            self.1.register_counter(key, metadata),
        )))
    }
    fn register_gauge(&self, key: &Key, metadata: &Metadata<'_>) -> Gauge {
        Gauge::from_arc(Arc::new(Pair(self.0.register_gauge(key, metadata), self.1.register_gauge(key, metadata))))
    }
    fn register_histogram(&self, key: &Key, metadata: &Metadata<'_>) -> Histogram {
        Histogram::from_arc(Arc::new(Pair(
            self.0.register_histogram(key, metadata),
            self.1.register_histogram(key, metadata),
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_flush_as_deltas_and_timers_as_means() {
        let sink = Arc::new(StatsdSink::new(
            StatsdOptions {
                host: "127.0.0.1".into(),
                port: 9,
                protocol: Protocol::Udp,
                flush_interval: Duration::from_secs(1),
            },
            &[("env".into(), "prod".into())],
        ));
        let recorder = StatsdRecorder(sink.clone());
        let key = Key::from_parts(
            "ratelimit_service_rate_limit_total_hits",
            vec![metrics::Label::new("domain", "d"), metrics::Label::new("key1", "k_v")],
        );
        let c = recorder.register_counter(&key, &Metadata::new("t", metrics::Level::INFO, None));
        let h = recorder.register_histogram(
            &Key::from_parts(
                "ratelimit_service_response_time_seconds",
                vec![metrics::Label::new("grpc_method", "ShouldRateLimit")],
            ),
            &Metadata::new("t", metrics::Level::INFO, None),
        );
        c.increment(3);
        h.record(0.002);
        h.record(0.004);
        assert_eq!(
            sink.lines(),
            vec![
                "ratelimit.service.rate_limit.d.k_v.total_hits.__env=prod:3|c",
                "ratelimit_server.ShouldRateLimit.response_time.__env=prod:3.000|ms",
            ]
        );
        c.increment(1);
        assert_eq!(sink.lines(), vec!["ratelimit.service.rate_limit.d.k_v.total_hits.__env=prod:1|c"]);
    }

    #[test]
    fn a_name_registered_again_shares_its_cell_and_kinds_stay_apart() {
        let options = StatsdOptions {
            host: "127.0.0.1".into(),
            port: 9,
            protocol: Protocol::Udp,
            flush_interval: Duration::from_secs(1),
        };
        let recorder = StatsdRecorder(Arc::new(StatsdSink::new(options, &[])));
        let metadata = Metadata::new("t", metrics::Level::INFO, None);
        let key = |i: usize| {
            Key::from_parts(
                "ratelimit_service_rate_limit_total_hits",
                vec![metrics::Label::new("domain", "d"), metrics::Label::new("key1", format!("user_{i}"))],
            )
        };
        for i in 0..1000 {
            recorder.register_counter(&key(i), &metadata).increment(1);
        }
        recorder.register_counter(&key(7), &metadata).increment(1);
        recorder.register_gauge(&key(7), &metadata).set(5.0);
        let lines = recorder.0.lines();
        assert_eq!(lines.len(), 1001);
        assert_eq!(lines[7], "ratelimit.service.rate_limit.d.user_7.total_hits:2|c");
        assert_eq!(lines[1000], "ratelimit.service.rate_limit.d.user_7.total_hits:5|g");
    }
}
