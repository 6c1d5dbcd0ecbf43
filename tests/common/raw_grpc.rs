//! gRPC calls over a bare HTTP/2 client (the `h2` crate), for tests that need what a
//! gRPC library hides: a call whose request is sent in two halves (so it stays open as
//! long as the test likes), and when the server ends the connection.

use std::net::SocketAddr;
use std::time::Instant;

use envoy_types::pb::envoy::service::ratelimit::v3::RateLimitRequest;
use h2::client::{ResponseFuture, SendRequest};
use h2::{RecvStream, SendStream};
use hyper::body::Bytes;
use prost::Message;
use tokio::task::JoinHandle;

const SHOULD_RATE_LIMIT: &str = "http://localhost/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit";

/// An HTTP/2 connection: where to open calls, and its driver, which ends (with the
/// instant it did) when the server closes the connection.
pub struct Connection {
    pub calls: Calls,
    pub closed: JoinHandle<Instant>,
}

/// Opens calls on a connection; clones share it.
#[derive(Clone)]
pub struct Calls(SendRequest<Bytes>);

pub async fn connect(addr: SocketAddr) -> Connection {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (client, driver) = h2::client::handshake(tcp).await.unwrap();
    let closed = tokio::spawn(async move {
        let _ = driver.await;
        Instant::now()
    });
    Connection { calls: Calls(client), closed }
}

/// A call whose request headers are sent and whose message is not (yet).
pub struct OpenCall {
    pub response: ResponseFuture,
    pub body: SendStream<Bytes>,
}

impl Calls {
    /// Starts a `ShouldRateLimit` call, waiting for the server to allow another stream.
    pub async fn open_call(&mut self, grpc_timeout: Option<&str>) -> Result<OpenCall, h2::Error> {
        let mut request =
            hyper::Request::post(SHOULD_RATE_LIMIT).header("content-type", "application/grpc").header("te", "trailers");
        if let Some(timeout) = grpc_timeout {
            request = request.header("grpc-timeout", timeout);
        }
        self.0 = self.0.clone().ready().await?;
        let (response, body) = self.0.send_request(request.body(()).unwrap(), false)?;
        Ok(OpenCall { response, body })
    }

    /// A whole call; its `grpc-status`.
    pub async fn call(&mut self, request: &RateLimitRequest) -> Result<String, h2::Error> {
        self.open_call(None).await?.finish(request).await
    }
}

impl OpenCall {
    /// Sends the request message and reads the answer; its `grpc-status`.
    pub async fn finish(mut self, request: &RateLimitRequest) -> Result<String, h2::Error> {
        self.body.send_data(frame(request), true)?;
        grpc_status(self.response).await
    }
}

/// The `grpc-status` of an answer, from its headers (trailers-only) or its trailers.
pub async fn grpc_status(response: ResponseFuture) -> Result<String, h2::Error> {
    let response = response.await?;
    if let Some(status) = response.headers().get("grpc-status") {
        return Ok(status.to_str().unwrap_or("?").to_string());
    }
    let mut body: RecvStream = response.into_body();
    while let Some(chunk) = body.data().await {
        let chunk = chunk?;
        let _ = body.flow_control().release_capacity(chunk.len());
    }
    let trailers = body.trailers().await?.unwrap_or_default();
    Ok(trailers.get("grpc-status").and_then(|s| s.to_str().ok()).unwrap_or("none").to_string())
}

/// A gRPC length-prefixed message.
pub fn frame(message: &impl Message) -> Bytes {
    let encoded = message.encode_to_vec();
    let mut framed = Vec::with_capacity(5 + encoded.len());
    framed.push(0);
    framed.extend_from_slice(&u32::try_from(encoded.len()).unwrap().to_be_bytes());
    framed.extend_from_slice(&encoded);
    Bytes::from(framed)
}
