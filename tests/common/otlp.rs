//! In-test OTLP trace receivers: a tonic server answering
//! `opentelemetry.proto.collector.trace.v1.TraceService/Export`, and an HTTP one taking
//! protobuf POSTs on `/v1/traces`. Both keep every span they receive.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use prost::Message;
use sluicegate::trace::otlp::{ExportTraceServiceRequest, ExportTraceServiceResponse, Span};

type Spans = Arc<Mutex<Vec<Span>>>;
type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// A running receiver; [`Receiver::spans`] is what it got so far.
pub struct Receiver {
    pub addr: SocketAddr,
    spans: Spans,
    task: tokio::task::JoinHandle<()>,
}

impl Receiver {
    pub fn spans(&self) -> Vec<Span> {
        self.spans.lock().unwrap().clone()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn keep(spans: &Spans, request: ExportTraceServiceRequest) {
    let mut kept = spans.lock().unwrap();
    for resource in request.resource_spans {
        for scope in resource.scope_spans {
            kept.extend(scope.spans);
        }
    }
}

#[derive(Clone)]
struct TraceService(Spans);

impl tonic::server::NamedService for TraceService {
    const NAME: &'static str = "opentelemetry.proto.collector.trace.v1.TraceService";
}

struct Export(Spans);

impl tonic::server::UnaryService<ExportTraceServiceRequest> for Export {
    type Response = ExportTraceServiceResponse;
    type Future = BoxFuture<Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status>>;
    fn call(&mut self, request: tonic::Request<ExportTraceServiceRequest>) -> Self::Future {
        keep(&self.0, request.into_inner());
        Box::pin(async { Ok(tonic::Response::new(ExportTraceServiceResponse {})) })
    }
}

impl tower_service::Service<tonic::codegen::http::Request<tonic::body::Body>> for TraceService {
    type Response = tonic::codegen::http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Self::Response, Infallible>>;
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }
    fn call(&mut self, request: tonic::codegen::http::Request<tonic::body::Body>) -> Self::Future {
        let spans = self.0.clone();
        Box::pin(async move {
            let mut grpc = tonic::server::Grpc::new(tonic_prost::ProstCodec::default());
            Ok(grpc.unary(Export(spans), request).await)
        })
    }
}

/// An OTLP/gRPC receiver on a free loopback port.
pub async fn grpc() -> Receiver {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let spans = Spans::default();
    let incoming = futures_util::stream::unfold(listener, |l| async move {
        let accepted = l.accept().await.map(|(s, _)| s);
        Some((accepted, l))
    });
    let router = tonic::transport::Server::builder().add_service(TraceService(spans.clone()));
    let task = tokio::spawn(async move {
        let _ = router.serve_with_incoming(incoming).await;
    });
    Receiver { addr, spans, task }
}

/// An OTLP/HTTP receiver on a free loopback port (protobuf POSTs to `/v1/traces`).
pub async fn http() -> Receiver {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let spans = Spans::default();
    let kept = spans.clone();
    let router = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |body: axum::body::Bytes| {
            let kept = kept.clone();
            async move {
                match ExportTraceServiceRequest::decode(body) {
                    Ok(request) => {
                        keep(&kept, request);
                        (tonic::codegen::http::StatusCode::OK, ExportTraceServiceResponse {}.encode_to_vec())
                    }
                    Err(_) => (tonic::codegen::http::StatusCode::BAD_REQUEST, Vec::new()),
                }
            }
        }),
    );
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    Receiver { addr, spans, task }
}
