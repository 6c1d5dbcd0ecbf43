//! An in-test xDS control plane: a State-of-the-World ADS server (tonic and the
//! envoy-types discovery service) serving `RateLimitConfig` resources, recording every
//! request it receives (ACKs, NACKs, subscriptions), stoppable and restartable on the
//! same port, with optional (mutual) TLS.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::google::protobuf::Any;
use envoy_types::pb::ratelimit::config::ratelimit::v3::RateLimitConfig;
use futures_util::Stream;
use prost::Message;
use tokio::sync::{mpsc, watch};
use tonic::{Request, Response, Status, Streaming};

pub const TYPE_URL: &str = "type.googleapis.com/ratelimit.config.ratelimit.v3.RateLimitConfig";

/// One request received, with when.
#[derive(Clone, Debug)]
pub struct Received {
    pub at: Instant,
    /// Which stream (counted from 1) it came on.
    pub stream: usize,
    pub request: DiscoveryRequest,
}

#[derive(Default)]
struct Log {
    requests: Vec<Received>,
    streams: usize,
    /// Request headers of each stream's opening.
    headers: Vec<Vec<(String, String)>>,
}

#[derive(Clone)]
struct Service {
    snapshot: watch::Receiver<Option<(String, Vec<Any>)>>,
    down: watch::Receiver<bool>,
    log: Arc<Mutex<Log>>,
}

type Out = Pin<Box<dyn Stream<Item = Result<DiscoveryResponse, Status>> + Send>>;
type DeltaOut = Pin<Box<dyn Stream<Item = Result<DeltaDiscoveryResponse, Status>> + Send>>;

#[tonic::async_trait]
impl AggregatedDiscoveryService for Service {
    type StreamAggregatedResourcesStream = Out;
    type DeltaAggregatedResourcesStream = DeltaOut;

    async fn stream_aggregated_resources(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Out>, Status> {
        let stream_id = {
            let mut log = self.log.lock().unwrap();
            log.streams += 1;
            let headers = request
                .metadata()
                .iter()
                .filter_map(|kv| match kv {
                    tonic::metadata::KeyAndValueRef::Ascii(k, v) => {
                        Some((k.to_string(), v.to_str().unwrap_or("").to_string()))
                    }
                    _ => None,
                })
                .collect();
            log.headers.push(headers);
            log.streams
        };
        let mut incoming = request.into_inner();
        let (tx, rx) = mpsc::channel::<Result<DiscoveryResponse, Status>>(4);
        let (mut snapshot, mut down, log) = (self.snapshot.clone(), self.down.clone(), self.log.clone());
        tokio::spawn(async move {
            let mut nonce = 0u64;
            let mut subscribed = false;
            loop {
                tokio::select! {
                    got = incoming.message() => match got {
                        Ok(Some(request)) => {
                            log.lock().unwrap().requests.push(Received { at: Instant::now(), stream: stream_id, request });
                            if !subscribed {
                                subscribed = true;
                                snapshot.mark_changed();
                            }
                        }
                        _ => return,
                    },
                    changed = snapshot.changed(), if subscribed => {
                        if changed.is_err() { return; }
                        let current = snapshot.borrow_and_update().clone();
                        if let Some((version, resources)) = current {
                            nonce += 1;
                            let response = DiscoveryResponse {
                                version_info: version,
                                resources,
                                type_url: TYPE_URL.into(),
                                nonce: format!("{stream_id}-{nonce}"),
                                ..Default::default()
                            };
                            if tx.send(Ok(response)).await.is_err() { return; }
                        }
                    }
                    _ = async { let _ = down.wait_for(|d| *d).await; } => {
                        let _ = tx.send(Err(Status::unavailable("control plane going down"))).await;
                        return;
                    }
                }
            }
        });
        let out = futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|m| (m, rx)) });
        Ok(Response::new(Box::pin(out)))
    }

    async fn delta_aggregated_resources(
        &self,
        _: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<DeltaOut>, Status> {
        Err(Status::unimplemented("delta xDS"))
    }
}

/// TLS of the control plane: its certificate, and the CA its clients' must chain to.
#[derive(Clone)]
pub struct ServerTls {
    pub cert: String,
    pub key: String,
    pub client_ca: Option<String>,
}

pub struct ControlPlane {
    pub addr: SocketAddr,
    snapshot: watch::Sender<Option<(String, Vec<Any>)>>,
    down: Option<watch::Sender<bool>>,
    task: Option<tokio::task::JoinHandle<()>>,
    log: Arc<Mutex<Log>>,
    tls: Option<ServerTls>,
    version: u64,
}

pub fn any(config: &RateLimitConfig) -> Any {
    Any { type_url: TYPE_URL.into(), value: config.encode_to_vec() }
}

impl ControlPlane {
    /// Starts serving on a free loopback port, with no snapshot yet.
    pub async fn start(tls: Option<ServerTls>) -> ControlPlane {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (snapshot, _) = watch::channel(None);
        let mut cp = ControlPlane { addr, snapshot, down: None, task: None, log: Arc::default(), tls, version: 0 };
        cp.serve(listener);
        cp
    }

    fn serve(&mut self, listener: tokio::net::TcpListener) {
        let (down_tx, down_rx) = watch::channel(false);
        let service = Service { snapshot: self.snapshot.subscribe(), down: down_rx.clone(), log: self.log.clone() };
        let mut builder = tonic::transport::Server::builder();
        if let Some(tls) = &self.tls {
            let mut config = tonic::transport::ServerTlsConfig::new()
                .identity(tonic::transport::Identity::from_pem(&tls.cert, &tls.key));
            if let Some(ca) = &tls.client_ca {
                config = config.client_ca_root(tonic::transport::Certificate::from_pem(ca));
            }
            builder = builder.tls_config(config).unwrap();
        }
        let incoming = futures_util::stream::unfold(listener, |l| async move {
            let accepted = l.accept().await.map(|(s, _)| s);
            Some((accepted, l))
        });
        let mut down = down_rx;
        let router = builder.add_service(AggregatedDiscoveryServiceServer::new(service));
        self.task = Some(tokio::spawn(async move {
            let _ = router
                .serve_with_incoming_shutdown(incoming, async move {
                    let _ = down.wait_for(|d| *d).await;
                })
                .await;
        }));
        self.down = Some(down_tx);
    }

    /// Pushes a new snapshot (every domain), versioned 1, 2, 3...; returns its version.
    pub fn push(&mut self, configs: &[RateLimitConfig]) -> String {
        self.push_any(configs.iter().map(any).collect())
    }

    pub fn push_any(&mut self, resources: Vec<Any>) -> String {
        self.version += 1;
        let version = self.version.to_string();
        self.snapshot.send_replace(Some((version.clone(), resources)));
        version
    }

    /// Stops serving: open streams end with UNAVAILABLE, the port closes.
    pub async fn stop(&mut self) {
        if let Some(down) = self.down.take() {
            let _ = down.send(true);
        }
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(std::time::Duration::from_secs(5), task).await;
        }
    }

    /// Serves again on the same port.
    pub async fn restart(&mut self) {
        let listener = tokio::net::TcpListener::bind(self.addr).await.unwrap();
        self.serve(listener);
    }

    pub fn requests(&self) -> Vec<Received> {
        self.log.lock().unwrap().requests.clone()
    }

    pub fn streams(&self) -> usize {
        self.log.lock().unwrap().streams
    }

    pub fn headers(&self, stream: usize) -> Vec<(String, String)> {
        self.log.lock().unwrap().headers.get(stream - 1).cloned().unwrap_or_default()
    }

    /// The replies (ACKs and NACKs: requests with a nonce) received since `at`.
    pub fn replies_since(&self, at: Instant) -> Vec<DiscoveryRequest> {
        self.requests()
            .into_iter()
            .filter(|r| r.at >= at && !r.request.response_nonce.is_empty())
            .map(|r| r.request)
            .collect()
    }

    /// Waits (polling, at most 10 s) for the first reply since `at`.
    pub async fn reply_since(&self, at: Instant) -> DiscoveryRequest {
        let deadline = Instant::now() + std::time::Duration::from_secs(10);
        loop {
            if let Some(r) = self.replies_since(at).into_iter().next() {
                return r;
            }
            assert!(Instant::now() < deadline, "no ACK or NACK within 10 s");
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        if let Some(down) = self.down.take() {
            let _ = down.send(true);
        }
    }
}
