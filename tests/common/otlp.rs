//! In-test OTLP trace receivers: a tonic server answering
//! `opentelemetry.proto.collector.trace.v1.TraceService/Export`, and an HTTP one taking
//! protobuf POSTs on `/v1/traces`, each plain or over TLS (optionally asking for a client
//! certificate). Both keep every span they receive and the headers of the last export.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tokio_rustls::rustls;

use prost::Message;
use sluicegate::trace::otlp::{ExportTraceServiceRequest, ExportTraceServiceResponse, Span};
use tonic::codegen::http::HeaderMap;

type Spans = Arc<Mutex<Vec<Span>>>;
type Headers = Arc<Mutex<HeaderMap>>;
type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// A receiver's TLS: its certificate and key (PEM), and the CA a client certificate must
/// chain to, if it asks for one.
pub struct Tls {
    pub cert: String,
    pub key: String,
    pub client_ca: Option<String>,
}

/// A running receiver; [`Receiver::spans`] is what it got so far.
pub struct Receiver {
    pub addr: SocketAddr,
    spans: Spans,
    headers: Headers,
    task: tokio::task::JoinHandle<()>,
}

impl Receiver {
    pub fn spans(&self) -> Vec<Span> {
        self.spans.lock().unwrap().clone()
    }

    /// A header of the last export received.
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers.lock().unwrap().get(name).and_then(|v| v.to_str().ok()).map(str::to_string)
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
struct TraceService(Spans, Headers);

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
        *self.1.lock().unwrap() = request.headers().clone();
        let spans = self.0.clone();
        Box::pin(async move {
            let mut grpc = tonic::server::Grpc::new(tonic_prost::ProstCodec::default());
            Ok(grpc.unary(Export(spans), request).await)
        })
    }
}

/// An OTLP/gRPC receiver on a free loopback port.
pub async fn grpc() -> Receiver {
    grpc_with(None).await
}

/// An OTLP/gRPC receiver on a free loopback port, over TLS if `tls`.
pub async fn grpc_with(tls: Option<&Tls>) -> Receiver {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (spans, headers) = (Spans::default(), Headers::default());
    let incoming = futures_util::stream::unfold(listener, |l| async move {
        let accepted = l.accept().await.map(|(s, _)| s);
        Some((accepted, l))
    });
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = tls {
        let mut config = tonic::transport::ServerTlsConfig::new()
            .identity(tonic::transport::Identity::from_pem(&tls.cert, &tls.key));
        if let Some(ca) = &tls.client_ca {
            config = config.client_ca_root(tonic::transport::Certificate::from_pem(ca));
        }
        builder = builder.tls_config(config).unwrap();
    }
    let router = builder.add_service(TraceService(spans.clone(), headers.clone()));
    let task = tokio::spawn(async move {
        let _ = router.serve_with_incoming(incoming).await;
    });
    Receiver { addr, spans, headers, task }
}

/// An OTLP/HTTP receiver on a free loopback port (protobuf POSTs to `/v1/traces`).
pub async fn http() -> Receiver {
    http_with(None).await
}

/// An OTLP/HTTP receiver on a free loopback port, over TLS if `tls`.
pub async fn http_with(tls: Option<&Tls>) -> Receiver {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (spans, headers) = (Spans::default(), Headers::default());
    let (kept, seen) = (spans.clone(), headers.clone());
    let router = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |got: HeaderMap, body: axum::body::Bytes| {
            let kept = kept.clone();
            *seen.lock().unwrap() = got;
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
    let task = match tls {
        None => tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        }),
        Some(tls) => tokio::spawn(serve_tls(listener, router, server_config(tls))),
    };
    Receiver { addr, spans, headers, task }
}

fn server_config(tls: &Tls) -> Arc<rustls::ServerConfig> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_slice_iter(tls.cert.as_bytes()).collect::<Result<Vec<_>, _>>().unwrap();
    let key = PrivateKeyDer::from_pem_slice(tls.key.as_bytes()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder =
        rustls::ServerConfig::builder_with_provider(provider.clone()).with_safe_default_protocol_versions().unwrap();
    let builder = match &tls.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(ca.as_bytes()) {
                roots.add(cert.unwrap()).unwrap();
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(roots.into(), provider.clone());
            builder.with_client_cert_verifier(verifier.build().unwrap())
        }
    };
    Arc::new(builder.with_single_cert(certs, key).unwrap())
}

/// Serves `router` over HTTP/1.1 in TLS, each connection on its own task.
async fn serve_tls(listener: tokio::net::TcpListener, router: axum::Router, config: Arc<rustls::ServerConfig>) {
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    loop {
        let Ok((tcp, _)) = listener.accept().await else { return };
        let (acceptor, router) = (acceptor.clone(), router.clone());
        tokio::spawn(async move {
            // A refused handshake (a client without the right certificate) ends here.
            let Ok(tls) = acceptor.accept(tcp).await else { return };
            let service = hyper::service::service_fn(move |request| {
                let mut router = router.clone();
                async move { tower_service::Service::call(&mut router, request).await }
            });
            let io = hyper_util::rt::TokioIo::new(tls);
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, service).await;
        });
    }
}
