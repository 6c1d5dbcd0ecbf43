//! Tracing (`TRACING_ENABLED`): one OpenTelemetry span per ShouldRateLimit call, joined to
//! the caller's W3C trace context (`traceparent` metadata) or starting a new trace,
//! sampled as the reference does (parent-based, then by `TRACING_SAMPLING_RATE`), and
//! exported over OTLP (gRPC or HTTP/protobuf, plain or TLS, with the configured headers)
//! in batches by a background task ([`export`], over [`transport`]).
//!
//! The call path only builds a small record and `try_send`s it to a bounded queue: when
//! the queue is full the span is dropped and counted, never waited for. When tracing is
//! off there is no [`Tracer`] at all and the gRPC handler takes one branch. At shutdown
//! [`Exporter::finish`] sends what is still queued, within the export timeout.

mod export;
pub mod otlp;
mod transport;

use std::cell::Cell;
use std::hash::BuildHasher;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use metrics::Counter;
use tokio::sync::{mpsc, oneshot};

use crate::stats::{Stats, TRACE_SPANS_DROPPED};

/// Spans waiting for export by default (`OTEL_BSP_MAX_QUEUE_SIZE`); more are dropped
/// (OpenTelemetry's default queue size).
pub const QUEUE_SPANS: usize = 2048;
/// Most spans in one export by default (`OTEL_BSP_MAX_EXPORT_BATCH_SIZE`), as OpenTelemetry.
pub const MAX_BATCH: usize = 512;
/// How long a span waits for its batch to fill by default (`OTEL_BSP_SCHEDULE_DELAY`),
/// in milliseconds. Shorter than OpenTelemetry's 5 s: spans show up while one looks.
pub const DEFAULT_BATCH_DELAY_MS: u64 = 500;

/// How spans are exported (`TRACING_EXPORTER_PROTOCOL`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExportProtocol {
    /// OTLP/HTTP, protobuf bodies POSTed to `/v1/traces`.
    Http,
    /// OTLP/gRPC, `TraceService/Export`.
    Grpc,
}

/// The tracing settings, read by `settings::trace`.
#[derive(Clone, Debug, PartialEq)]
pub struct TraceOptions {
    pub service_name: String,
    pub service_namespace: String,
    /// Empty: a random one is chosen at start-up, as the reference does.
    pub service_instance_id: String,
    pub protocol: ExportProtocol,
    /// 1 or more samples every new trace, 0 or less none.
    pub sampling_rate: f64,
    /// The full URL spans are sent to (`http(s)://host:port/v1/traces` for HTTP,
    /// `http(s)://host:port` for gRPC); `https` is TLS with [`TraceOptions::tls`].
    pub endpoint: String,
    /// Sent with every export (`OTEL_EXPORTER_OTLP_HEADERS`).
    pub headers: Headers,
    pub tls: TraceTls,
    /// The bound on one export (`OTEL_EXPORTER_OTLP_TIMEOUT`), and on the flush at shutdown.
    pub timeout: Duration,
    pub batch: BatchOptions,
}

/// Header names and values, lower-case names, checked by `settings` to be sendable. Their
/// values are often credentials, so `Debug` shows only the names.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Headers(pub Vec<(String, String)>);

impl std::fmt::Debug for Headers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.0.iter().map(|(name, _)| format!("{name}: ***"))).finish()
    }
}

/// TLS towards an `https` collector: the system's roots unless `ca` is given, and a client
/// certificate if the collector asks for one.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TraceTls {
    /// `OTEL_EXPORTER_OTLP_CERTIFICATE`: PEM CA certificates, instead of the system's.
    pub ca: Option<PathBuf>,
    /// `OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE` and `_CLIENT_KEY`.
    pub client: Option<(PathBuf, PathBuf)>,
}

/// The batch span processor's bounds (`OTEL_BSP_*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchOptions {
    /// Longest a span waits for its batch to fill.
    pub delay: Duration,
    /// Most spans in one export.
    pub max_batch: usize,
    /// Spans waiting for export; more are dropped and counted.
    pub queue: usize,
}

/// One finished span, as the call path hands it to the exporter.
#[derive(Debug)]
struct SpanRecord {
    trace_id: [u8; 16],
    span_id: [u8; 8],
    parent_span_id: Option<[u8; 8]>,
    start_unix_nanos: u64,
    end_unix_nanos: u64,
    domain: String,
    code: &'static str,
    error: Option<String>,
}

/// A span begun by [`Tracer::start`]; [`Tracer::finish`] queues it if it is sampled.
#[derive(Debug)]
pub struct Begun {
    trace_id: [u8; 16],
    span_id: [u8; 8],
    parent_span_id: Option<[u8; 8]>,
    sampled: bool,
    start_unix_nanos: u64,
}

/// Makes spans and queues them for the export task.
#[derive(Debug)]
pub struct Tracer {
    queue: mpsc::Sender<SpanRecord>,
    sampling_rate: f64,
    dropped: Counter,
}

/// The export task, for shutdown: [`Exporter::finish`] sends the spans still queued.
#[derive(Debug)]
pub struct Exporter {
    flush: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
    timeout: Duration,
}

impl Tracer {
    /// Starts the export task on the current runtime. Fails, saying why, when the TLS
    /// files do not load or the endpoint is not a URL.
    pub fn start(options: TraceOptions, stats: &Stats) -> Result<(Arc<Tracer>, Exporter), String> {
        let transport = transport::Transport::new(&options)?;
        let (queue, spans) = mpsc::channel(options.batch.queue);
        let (flush, flushed) = oneshot::channel();
        let dropped = |reason| stats.counter(TRACE_SPANS_DROPPED, &[("reason", reason)], "Spans not exported");
        let tracer = Tracer { queue, sampling_rate: options.sampling_rate, dropped: dropped("queue_full") };
        let timeout = options.timeout;
        let inbox = export::Inbox::new(spans, flushed);
        let task = tokio::spawn(export::run(options, transport, inbox, dropped("export_failed")));
        Ok((Arc::new(tracer), Exporter { flush, task, timeout }))
    }

    /// Begins the span of a call whose metadata is `metadata`.
    pub fn start_span(&self, metadata: &tonic::metadata::MetadataMap) -> Begun {
        let parent = metadata.get("traceparent").and_then(|v| v.to_str().ok()).and_then(parse_traceparent);
        let span_id = random_u64().to_be_bytes();
        let (trace_id, parent_span_id, sampled) = match parent {
            Some(p) => (p.trace_id, Some(p.span_id), p.sampled),
            None => {
                let trace_id = ((u128::from(random_u64()) << 64) | u128::from(random_u64())).to_be_bytes();
                (trace_id, None, sample(self.sampling_rate, &trace_id))
            }
        };
        Begun { trace_id, span_id, parent_span_id, sampled, start_unix_nanos: unix_nanos() }
    }

    /// Ends `span` with the call's domain and overall code (or its error) and queues it.
    pub fn finish(&self, span: Begun, domain: &str, code: &'static str, error: Option<String>) {
        if !span.sampled {
            return;
        }
        let record = SpanRecord {
            trace_id: span.trace_id,
            span_id: span.span_id,
            parent_span_id: span.parent_span_id,
            start_unix_nanos: span.start_unix_nanos,
            end_unix_nanos: unix_nanos(),
            domain: domain.to_string(),
            code,
            error,
        };
        if self.queue.try_send(record).is_err() {
            self.dropped.increment(1);
        }
    }
}

impl Exporter {
    /// Sends every span still queued, and waits for it at most the export timeout
    /// (`OTEL_EXPORTER_OTLP_TIMEOUT`): a collector that does not answer must not hold the
    /// process at shutdown. Spans of calls that end after this are not exported.
    pub async fn finish(self) {
        let Exporter { flush, mut task, timeout } = self;
        let _ = flush.send(());
        if tokio::time::timeout(timeout, &mut task).await.is_err() {
            task.abort();
            tracing::warn!(?timeout, "the last spans were not exported within the timeout; stopping without them");
        }
    }
}

/// A `traceparent` header's parts.
#[derive(Debug, PartialEq)]
struct Parent {
    trace_id: [u8; 16],
    span_id: [u8; 8],
    sampled: bool,
}

/// `00-<32 hex trace id>-<16 hex span id>-<2 hex flags>`; all-zero ids are invalid.
fn parse_traceparent(text: &str) -> Option<Parent> {
    let mut parts = text.trim().split('-');
    let version = parts.next()?;
    let (trace, span, flags) = (parts.next()?, parts.next()?, parts.next()?);
    if version.len() != 2 || version == "ff" || trace.len() != 32 || span.len() != 16 || flags.len() != 2 {
        return None;
    }
    let trace_id = u128::from_str_radix(trace, 16).ok().filter(|&t| t != 0)?.to_be_bytes();
    let span_id = u64::from_str_radix(span, 16).ok().filter(|&s| s != 0)?.to_be_bytes();
    let flags = u8::from_str_radix(flags, 16).ok()?;
    Some(Parent { trace_id, span_id, sampled: flags & 1 == 1 })
}

/// OpenTelemetry's `TraceIDRatioBased`: the trace id's low 8 bytes against the rate.
fn sample(rate: f64, trace_id: &[u8; 16]) -> bool {
    if rate >= 1.0 {
        return true;
    }
    if rate <= 0.0 {
        return false;
    }
    let low = u64::from_be_bytes(trace_id[8..].try_into().expect("8 bytes")) >> 1;
    (low as f64) < rate * (1u64 << 63) as f64
}

/// Wall-clock time: a span's times are for the collector, not the limiter's clock.
fn unix_nanos() -> u64 {
    crate::clock::wall_clock_now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

/// A random non-zero `u64` (a per-thread xorshift seeded from the process's random state).
fn random_u64() -> u64 {
    thread_local! {
        static STATE: Cell<u64> = Cell::new(foldhash::fast::RandomState::default().hash_one(std::thread::current().id()) | 1);
    }
    STATE.with(|s| {
        let mut x = s.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        s.set(x);
        x
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_parses_and_refuses_bad_ones() {
        let p = parse_traceparent("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01").unwrap();
        assert_eq!(p.trace_id[..2], [0x0a, 0xf7]);
        assert_eq!(p.span_id[7], 0x31);
        assert!(p.sampled);
        assert!(!parse_traceparent("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00").unwrap().sampled);
        for bad in ["", "00-00000000000000000000000000000000-b7ad6b7169203331-01", "00-xyz-b7ad6b7169203331-01"] {
            assert_eq!(parse_traceparent(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_full_queue_drops_and_counts_without_waiting() {
        let stats = Stats::new(crate::stats::StatsOptions::default());
        let (queue, _spans) = mpsc::channel(1);
        let dropped = stats.counter(TRACE_SPANS_DROPPED, &[("reason", "queue_full")], "Spans not exported");
        let tracer = Tracer { queue, sampling_rate: 1.0, dropped };
        for _ in 0..3 {
            let span = tracer.start_span(&tonic::metadata::MetadataMap::new());
            tracer.finish(span, "d", "OK", None);
        }
        let text = stats.render();
        let line = text.lines().find(|l| l.starts_with(TRACE_SPANS_DROPPED)).expect("the counter");
        assert!(line.ends_with(" 2"), "{line}");
    }

    #[test]
    fn sampling_follows_the_rate() {
        let ids: Vec<[u8; 16]> =
            (0..1000).map(|_| (u128::from(random_u64()) << 64 | u128::from(random_u64())).to_be_bytes()).collect();
        assert!(ids.iter().all(|id| sample(1.0, id)));
        assert!(!ids.iter().any(|id| sample(0.0, id)));
        let half = ids.iter().filter(|id| sample(0.5, id)).count();
        assert!((350..650).contains(&half), "{half}");
    }
}
