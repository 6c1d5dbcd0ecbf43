//! The export task: takes finished spans off the bounded queue, batches them (up to
//! [`MAX_BATCH`] or [`BATCH_DELAY`]) and sends each batch as one OTLP
//! `ExportTraceServiceRequest`, over gRPC (`TraceService/Export`) or HTTP (a protobuf
//! POST, written on a plain TCP connection). A failed batch is dropped and counted.

use std::time::Duration;

use metrics::Counter;
use prost::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use super::otlp::{self, ExportTraceServiceRequest, ExportTraceServiceResponse, attribute};
use super::{ExportProtocol, SpanRecord, TraceOptions, random_u64};

/// Most spans in one export.
pub const MAX_BATCH: usize = 512;
/// Longest a span waits for its batch to fill.
pub const BATCH_DELAY: Duration = Duration::from_millis(500);
/// Longest one export may take.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);
const EXPORT_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";
/// The span name: the gRPC method, as OpenTelemetry's gRPC instrumentation names it.
const SPAN_NAME: &str = "envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit";

/// Runs until every [`super::Tracer`] is dropped and the queue is empty.
pub(super) async fn run(options: TraceOptions, mut spans: mpsc::Receiver<SpanRecord>, failed: Counter) {
    let resource = resource(&options);
    let mut grpc = None;
    let mut batch = Vec::with_capacity(MAX_BATCH);
    loop {
        let Some(first) = spans.recv().await else { return };
        batch.push(first);
        let deadline = tokio::time::sleep(BATCH_DELAY);
        tokio::pin!(deadline);
        while batch.len() < MAX_BATCH {
            tokio::select! {
                span = spans.recv() => match span {
                    Some(span) => batch.push(span),
                    None => break,
                },
                () = &mut deadline => break,
            }
        }
        let count = batch.len() as u64;
        let request = request(&resource, batch.drain(..));
        let sent = match options.protocol {
            ExportProtocol::Grpc => send_grpc(&mut grpc, &options.endpoint, request).await,
            ExportProtocol::Http => send_http(&options.endpoint, request.encode_to_vec()).await,
        };
        if let Err(e) = sent {
            failed.increment(count);
            tracing::warn!(endpoint = %options.endpoint, "dropped {count} spans: {e}");
        }
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

type GrpcClient = tonic::client::Grpc<tonic::transport::Channel>;

async fn send_grpc(
    client: &mut Option<GrpcClient>,
    endpoint: &str,
    request: ExportTraceServiceRequest,
) -> Result<(), String> {
    if client.is_none() {
        let channel = tonic::transport::Endpoint::from_shared(endpoint.to_string())
            .map_err(|e| e.to_string())?
            .timeout(EXPORT_TIMEOUT)
            .connect_lazy();
        *client = Some(tonic::client::Grpc::new(channel));
    }
    let grpc = client.as_mut().expect("set above");
    grpc.ready().await.map_err(|e| e.to_string())?;
    let codec = tonic_prost::ProstCodec::<ExportTraceServiceRequest, ExportTraceServiceResponse>::default();
    let path = tonic::codegen::http::uri::PathAndQuery::from_static(EXPORT_PATH);
    grpc.unary(tonic::Request::new(request), path, codec).await.map(drop).map_err(|e| e.to_string())
}

/// POSTs `body` to `endpoint` (`http://host:port/path`) over HTTP/1.1 and wants a 2xx.
async fn send_http(endpoint: &str, body: Vec<u8>) -> Result<(), String> {
    let rest = endpoint.strip_prefix("http://").ok_or("only http:// endpoints are supported")?;
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let path = if path.is_empty() { "/" } else { path };
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(authority).await?;
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: {authority}\r\nContent-Type: application/x-protobuf\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        stream.write_all(head.as_bytes()).await?;
        stream.write_all(&body).await?;
        let mut status = [0u8; 12];
        stream.read_exact(&mut status).await?;
        Ok::<_, std::io::Error>(status)
    };
    let status = tokio::time::timeout(EXPORT_TIMEOUT, exchange)
        .await
        .map_err(|_| "timed out".to_string())?
        .map_err(|e| e.to_string())?;
    match &status[9..10] {
        b"2" => Ok(()),
        _ => Err(format!("answered {}", String::from_utf8_lossy(&status))),
    }
}
