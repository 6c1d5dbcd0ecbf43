//! How a batch reaches the collector: OTLP/gRPC (`TraceService/Export` on a tonic
//! channel) or OTLP/HTTP (a protobuf POST written on its own connection), each plain or
//! over TLS (rustls: the system's roots, or `OTEL_EXPORTER_OTLP_CERTIFICATE`'s, and a
//! client certificate when configured), with the configured headers, every export
//! bounded by the export timeout.
//!
//! Everything that can be wrong with the files or the URL is found in
//! [`Transport::new`], at start-up, so a bad CA path stops the service with its name
//! instead of failing every export.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use prost::Message;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_rustls::{TlsConnector, rustls};
use tonic::metadata::{MetadataKey, MetadataMap, MetadataValue};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use super::otlp::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use super::{ExportProtocol, TraceOptions, TraceTls};

const EXPORT_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

/// Where and how batches are sent.
pub(super) struct Transport {
    endpoint: String,
    timeout: Duration,
    kind: Kind,
}

enum Kind {
    Grpc { client: tonic::client::Grpc<Channel>, metadata: MetadataMap },
    Http(HttpTarget),
}

/// An OTLP/HTTP collector: the address to connect to, TLS if `https`, and the request
/// head up to (not including) its `Content-Length`.
struct HttpTarget {
    address: String,
    tls: Option<(TlsConnector, ServerName<'static>)>,
    head: String,
}

impl Transport {
    pub fn new(options: &TraceOptions) -> Result<Transport, String> {
        let endpoint = options.endpoint.clone();
        let https = endpoint.starts_with("https://");
        let kind = match options.protocol {
            ExportProtocol::Grpc => grpc(options, https)?,
            ExportProtocol::Http => Kind::Http(http(options, https)?),
        };
        Ok(Transport { endpoint, timeout: options.timeout, kind })
    }

    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Exports one batch, within the export timeout.
    pub async fn send(&mut self, request: ExportTraceServiceRequest) -> Result<(), String> {
        let timeout = self.timeout;
        let sent = match &mut self.kind {
            Kind::Grpc { client, metadata } => {
                let mut request = tonic::Request::new(request);
                *request.metadata_mut() = metadata.clone();
                let export = async {
                    client.ready().await.map_err(|e| e.to_string())?;
                    let codec =
                        tonic_prost::ProstCodec::<ExportTraceServiceRequest, ExportTraceServiceResponse>::default();
                    let path = tonic::codegen::http::uri::PathAndQuery::from_static(EXPORT_PATH);
                    client.unary(request, path, codec).await.map(drop).map_err(|e| e.to_string())
                };
                tokio::time::timeout(timeout, export).await
            }
            Kind::Http(target) => tokio::time::timeout(timeout, target.post(&request.encode_to_vec())).await,
        };
        sent.map_err(|_| format!("timed out after {timeout:?}"))?
    }
}

fn grpc(options: &TraceOptions, https: bool) -> Result<Kind, String> {
    let bad_url = |e: &dyn std::fmt::Display| format!("the OTLP endpoint {} is not a URL: {e}", options.endpoint);
    let mut endpoint = Endpoint::from_shared(options.endpoint.clone())
        .map_err(|e| bad_url(&e))?
        .timeout(options.timeout)
        .connect_timeout(options.timeout);
    if https {
        let TraceTls { ca, client } = &options.tls;
        // Read (and parse) here, so a bad file is named at start-up.
        let mut tls = match ca {
            Some(path) => {
                read_certs(path)?;
                ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read(path)?))
            }
            None => {
                system_roots()?;
                ClientTlsConfig::new().with_native_roots()
            }
        };
        if let Some((cert, key)) = client {
            read_certs(cert)?;
            read_key(key)?;
            tls = tls.identity(Identity::from_pem(read(cert)?, read(key)?));
        }
        endpoint = endpoint.tls_config(tls).map_err(|e| format!("OTLP TLS: {e}"))?;
    }
    let mut metadata = MetadataMap::new();
    for (name, value) in &options.headers.0 {
        // `settings` admits only names and values that convert; this says which if not.
        let key = MetadataKey::from_bytes(name.as_bytes()).map_err(|_| format!("header {name}: not a gRPC key"))?;
        let value = MetadataValue::try_from(value.as_str()).map_err(|_| format!("header {name}: not a gRPC value"))?;
        metadata.insert(key, value);
    }
    Ok(Kind::Grpc { client: tonic::client::Grpc::new(endpoint.connect_lazy()), metadata })
}

fn http(options: &TraceOptions, https: bool) -> Result<HttpTarget, String> {
    let url = &options.endpoint;
    let (rest, default_port) = match url.strip_prefix("https://") {
        Some(rest) => (rest, 443),
        None => (url.strip_prefix("http://").ok_or_else(|| format!("{url}: expected http:// or https://"))?, 80),
    };
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let path = if path.is_empty() { "/" } else { path };
    let (host, port) = split_authority(authority);
    if host.is_empty() {
        return Err(format!("the OTLP endpoint {url} names no host"));
    }
    let address = if port.is_some() { authority.to_string() } else { format!("{authority}:{default_port}") };
    let tls = match https {
        false => None,
        true => {
            let name = ServerName::try_from(host.to_string())
                .map_err(|e| format!("the OTLP endpoint {url}: {host} is not a TLS server name: {e}"))?;
            Some((TlsConnector::from(Arc::new(client_config(&options.tls)?)), name))
        }
    };
    let mut head = format!(
        "POST {path} HTTP/1.1\r\nHost: {authority}\r\nContent-Type: application/x-protobuf\r\nConnection: close\r\n"
    );
    for (name, value) in &options.headers.0 {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    Ok(HttpTarget { address, tls, head })
}

/// `host` and the port, if any, of `host:port`, `host`, `[v6]:port` or `[v6]`.
fn split_authority(authority: &str) -> (&str, Option<&str>) {
    if let Some(v6) = authority.strip_prefix('[') {
        let (host, rest) = v6.split_once(']').unwrap_or((v6, ""));
        return (host, rest.strip_prefix(':'));
    }
    match authority.rsplit_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (authority, None),
    }
}

impl HttpTarget {
    /// POSTs `body` over HTTP/1.1 and wants a 2xx.
    async fn post(&self, body: &[u8]) -> Result<(), String> {
        let tcp = tokio::net::TcpStream::connect(&self.address)
            .await
            .map_err(|e| format!("cannot connect to {}: {e}", self.address))?;
        match &self.tls {
            None => exchange(tcp, &self.head, body).await,
            Some((connector, name)) => {
                let tls = connector.connect(name.clone(), tcp).await.map_err(|e| format!("TLS handshake: {e}"))?;
                exchange(tls, &self.head, body).await
            }
        }
    }
}

async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S, head: &str, body: &[u8]) -> Result<(), String> {
    let io = async {
        let head = format!("{head}Content-Length: {}\r\n\r\n", body.len());
        stream.write_all(head.as_bytes()).await?;
        stream.write_all(body).await?;
        // TLS buffers what is written; the request must leave before the answer is read.
        stream.flush().await?;
        let mut status = [0u8; 12];
        stream.read_exact(&mut status).await?;
        Ok::<_, std::io::Error>(status)
    };
    let status = io.await.map_err(|e| e.to_string())?;
    match &status[9..10] {
        b"2" => Ok(()),
        _ => Err(format!("answered {}", String::from_utf8_lossy(&status))),
    }
}

/// The HTTP exporter's rustls configuration.
fn client_config(tls: &TraceTls) -> Result<rustls::ClientConfig, String> {
    let mut roots = rustls::RootCertStore::empty();
    match &tls.ca {
        Some(path) => {
            for cert in read_certs(path)? {
                roots.add(cert).map_err(|e| format!("{}: not a CA certificate: {e}", path.display()))?;
            }
        }
        None => {
            roots.add_parsable_certificates(system_roots()?);
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("OTLP TLS: {e}"))?
        .with_root_certificates(roots);
    let mut config = match &tls.client {
        Some((cert, key)) => builder
            .with_client_auth_cert(read_certs(cert)?, read_key(key)?)
            .map_err(|e| format!("{}: OTLP client certificate: {e}", cert.display()))?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// The system's CA certificates; none at all is an error, since no https collector could
/// then be verified.
fn system_roots() -> Result<Vec<CertificateDer<'static>>, String> {
    let found = rustls_native_certs::load_native_certs();
    if found.certs.is_empty() {
        let why = found.errors.first().map(|e| format!(" ({e})")).unwrap_or_default();
        return Err(format!(
            "no system CA certificates found{why} to verify the https OTLP collector with; \
             set OTEL_EXPORTER_OTLP_CERTIFICATE"
        ));
    }
    Ok(found.certs)
}

fn read(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{}: cannot read PEM certificates: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: holds no PEM certificate", path.display()));
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| format!("{}: cannot read a PEM private key: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::split_authority;

    #[test]
    fn authorities_split_into_host_and_port() {
        assert_eq!(split_authority("c:4318"), ("c", Some("4318")));
        assert_eq!(split_authority("c"), ("c", None));
        assert_eq!(split_authority("[::1]:4318"), ("::1", Some("4318")));
        assert_eq!(split_authority("[::1]"), ("::1", None));
    }
}
