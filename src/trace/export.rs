//! The export task: takes finished spans off the bounded queue, batches them (up to
//! `OTEL_BSP_MAX_EXPORT_BATCH_SIZE` spans or `OTEL_BSP_SCHEDULE_DELAY`) and sends each
//! batch as one OTLP `ExportTraceServiceRequest` through the [`Transport`]. A failed
//! batch is dropped and counted. Asked to flush (at shutdown), it sends the batch it is
//! filling and every span still queued, then ends.

use metrics::Counter;
use tokio::sync::{mpsc, oneshot};

use super::otlp::{self, ExportTraceServiceRequest, attribute};
use super::transport::Transport;
use super::{SpanRecord, TraceOptions, random_u64};

/// The span name: the gRPC method, as OpenTelemetry's gRPC instrumentation names it.
const SPAN_NAME: &str = "envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit";

/// What the task waits on: the queue, and the one flush request.
pub(super) struct Inbox {
    spans: mpsc::Receiver<SpanRecord>,
    /// `None` once the flush request has come (or can no longer come).
    flush: Option<oneshot::Receiver<()>>,
}

enum Next {
    Span(SpanRecord),
    /// Every sender is gone and the queue is empty.
    Closed,
    Flush,
}

impl Inbox {
    pub fn new(spans: mpsc::Receiver<SpanRecord>, flush: oneshot::Receiver<()>) -> Self {
        Inbox { spans, flush: Some(flush) }
    }

    /// The next span or event. Cancel-safe (both receivers are), so it can race a timer.
    async fn next(&mut self) -> Next {
        let span = |s: Option<SpanRecord>| s.map_or(Next::Closed, Next::Span);
        loop {
            let Some(flush) = &mut self.flush else { return span(self.spans.recv().await) };
            let asked = tokio::select! {
                s = self.spans.recv() => return span(s),
                asked = flush => asked,
            };
            self.flush = None;
            // A dropped `Exporter` never asks: carry on until the queue closes.
            if asked.is_ok() {
                return Next::Flush;
            }
        }
    }
}

/// Runs until every [`super::Tracer`] is dropped and the queue is empty, or until a flush
/// has sent everything queued.
pub(super) async fn run(options: TraceOptions, mut transport: Transport, mut inbox: Inbox, failed: Counter) {
    let resource = resource(&options);
    let max_batch = options.batch.max_batch;
    let mut batch = Vec::with_capacity(max_batch);
    let mut flushing = false;
    while !flushing {
        match inbox.next().await {
            Next::Span(first) => batch.push(first),
            Next::Closed => return,
            Next::Flush => flushing = true,
        }
        let deadline = tokio::time::sleep(options.batch.delay);
        tokio::pin!(deadline);
        while !flushing && !batch.is_empty() && batch.len() < max_batch {
            tokio::select! {
                next = inbox.next() => match next {
                    Next::Span(span) => batch.push(span),
                    Next::Closed => break,
                    Next::Flush => flushing = true,
                },
                () = &mut deadline => break,
            }
        }
        if flushing {
            // Everything queued by now goes out, in batches, then the task ends.
            while let Ok(span) = inbox.spans.try_recv() {
                batch.push(span);
                if batch.len() == max_batch {
                    send(&mut transport, &resource, &mut batch, &failed).await;
                }
            }
        }
        send(&mut transport, &resource, &mut batch, &failed).await;
    }
}

/// Exports `batch` (emptying it); a failure is logged and its spans counted as dropped.
async fn send(transport: &mut Transport, resource: &otlp::Resource, batch: &mut Vec<SpanRecord>, failed: &Counter) {
    if batch.is_empty() {
        return;
    }
    let count = batch.len() as u64;
    if let Err(e) = transport.send(request(resource, batch.drain(..))).await {
        failed.increment(count);
        tracing::warn!(endpoint = %transport.endpoint(), "dropped {count} spans: {e}");
    }
}

fn resource(options: &TraceOptions) -> otlp::Resource {
    let instance = match options.service_instance_id.as_str() {
        "" => format!("{:016x}{:016x}", random_u64(), random_u64()),
        id => id.to_string(),
    };
    otlp::Resource {
        attributes: vec![
            attribute("service.name", &options.service_name),
            attribute("service.namespace", &options.service_namespace),
            attribute("service.instance.id", &instance),
        ],
    }
}

fn request(resource: &otlp::Resource, spans: impl Iterator<Item = SpanRecord>) -> ExportTraceServiceRequest {
    let spans = spans
        .map(|s| otlp::Span {
            trace_id: s.trace_id.to_vec(),
            span_id: s.span_id.to_vec(),
            parent_span_id: s.parent_span_id.map(|p| p.to_vec()).unwrap_or_default(),
            name: SPAN_NAME.to_string(),
            kind: 2,
            start_time_unix_nano: s.start_unix_nanos,
            end_time_unix_nano: s.end_unix_nanos,
            attributes: vec![attribute("domain", &s.domain), attribute("code", s.code)],
            status: Some(match s.error {
                None => otlp::Status { message: String::new(), code: 1 },
                Some(message) => otlp::Status { message, code: 2 },
            }),
        })
        .collect();
    ExportTraceServiceRequest {
        resource_spans: vec![otlp::ResourceSpans {
            resource: Some(resource.clone()),
            scope_spans: vec![otlp::ScopeSpans {
                scope: Some(otlp::InstrumentationScope { name: "sluicegate".into() }),
                spans,
            }],
        }],
    }
}
