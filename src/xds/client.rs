//! The State-of-the-World ADS client.
//!
//! Owns the stream to the control plane: connect (TLS and mutual TLS as configured), open
//! `AggregatedDiscoveryService/StreamAggregatedResources`, subscribe to every
//! `RateLimitConfig` (a wildcard subscription), and answer each response: a good one is
//! installed and ACKed (its `version_info` and `response_nonce`), a bad one is NACKed
//! with every error in `error_detail` while the rules in force keep serving. A lost
//! stream or a failed connection is retried after the backoff; the rules in force stay
//! until a new good response replaces them. Responses larger than
//! `XDS_CLIENT_MAX_MSG_SIZE_IN_BYTES` end the stream with an error (and a retry).

use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use envoy_types::pb::google::protobuf::{Struct, Value as ProtoValue, value::Kind};
use envoy_types::pb::google::rpc::Status;
use tokio::sync::mpsc;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use super::{TYPE_URL, XdsOptions, convert};
use crate::signal::Shutdown;
use crate::snapshot::Reloader;

/// gRPC's `INVALID_ARGUMENT`, the code of a NACK's `error_detail`.
const INVALID_ARGUMENT: i32 = 3;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a stream ended.
#[derive(Debug)]
enum Ended {
    Stopped,
    /// Never connected: retry after `CONFIG_GRPC_XDS_SERVER_CONNECT_RETRY_INTERVAL`.
    Connect(String),
    /// The stream broke: retry after the backoff.
    Stream(String),
}

/// Runs the client until shutdown is requested.
pub async fn run(options: XdsOptions, reloader: Arc<Reloader>, mut stop: Shutdown) {
    let mut attempt = 0u32;
    // The version last installed, sent again on a new stream.
    let mut version = String::new();
    loop {
        let ended = tokio::select! {
            ended = stream_once(&options, &reloader, &mut version, &mut attempt) => ended,
            _ = stop.requested() => Ended::Stopped,
        };
        let pause = match ended {
            Ended::Stopped => return,
            Ended::Connect(e) => {
                tracing::warn!(server = %options.server_url, error = %e, "cannot connect to the xDS server; retrying");
                options.connect_retry_interval
            }
            Ended::Stream(e) => {
                let pause = options.backoff.pause(attempt, unit_random());
                attempt = attempt.saturating_add(1);
                tracing::warn!(server = %options.server_url, error = %e, ?pause, "the xDS stream ended; the rules in force stay; reconnecting");
                pause
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = stop.requested() => return,
        }
    }
}

async fn stream_once(options: &XdsOptions, reloader: &Arc<Reloader>, version: &mut String, attempt: &mut u32) -> Ended {
    let channel = match connect(options).await {
        Ok(c) => c,
        Err(e) => return Ended::Connect(e),
    };
    let mut client = AggregatedDiscoveryServiceClient::new(channel)
        .max_decoding_message_size(options.max_msg_size)
        .max_encoding_message_size(usize::MAX);
    let (tx, rx) = mpsc::channel::<DiscoveryRequest>(4);
    let node = node(options);
    let _ = tx.try_send(DiscoveryRequest {
        version_info: version.clone(),
        node: Some(node.clone()),
        type_url: TYPE_URL.into(),
        ..Default::default()
    });
    let outgoing = futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|m| (m, rx)) });
    let mut request = tonic::Request::new(outgoing);
    for (k, v) in &options.additional_headers {
        match (k.to_ascii_lowercase().parse::<tonic::metadata::MetadataKey<_>>(), v.parse()) {
            (Ok(k), Ok(v)) => {
                request.metadata_mut().insert(k, v);
            }
            _ => {
                tracing::warn!(header = %k, "CONFIG_GRPC_XDS_CLIENT_ADDITIONAL_HEADERS: not a valid gRPC header; skipped")
            }
        }
    }
    let mut responses = match client.stream_aggregated_resources(request).await {
        Ok(r) => r.into_inner(),
        Err(e) => return Ended::Stream(e.to_string()),
    };
    tracing::info!(server = %options.server_url, node = %options.node_id, "subscribed to rate limit configs over xDS");
    loop {
        let response = match responses.message().await {
            Ok(Some(r)) => r,
            Ok(None) => return Ended::Stream("the server closed the stream".into()),
            Err(e) => return Ended::Stream(e.to_string()),
        };
        *attempt = 0;
        // Building a large rule set takes a while: off the async threads, as file reloads.
        let (r, v, n) = (reloader.clone(), version.clone(), node.clone());
        let Ok((reply, installed)) = tokio::task::spawn_blocking(move || answer(&r, v, n, response)).await else {
            return Ended::Stream("building the rules failed".into());
        };
        *version = installed;
        if tx.send(reply).await.is_err() {
            return Ended::Stream("the request stream closed".into());
        }
    }
}

/// Installs a response's rules and makes its ACK, or its NACK with every error.
/// Returns the reply and the version in force after it.
fn answer(
    reloader: &Reloader,
    mut version: String,
    node: Node,
    response: DiscoveryResponse,
) -> (DiscoveryRequest, String) {
    let mut reply = DiscoveryRequest {
        node: Some(node),
        type_url: TYPE_URL.into(),
        response_nonce: response.nonce.clone(),
        ..Default::default()
    };
    if response.type_url != TYPE_URL {
        tracing::warn!(type_url = %response.type_url, "ignoring an xDS response of another type");
        reply.version_info = version.clone();
        reply.type_url = response.type_url;
        return (reply, version);
    }
    let loader = &reloader.loader;
    let next = reloader.version_in_force().unwrap_or(0) + 1;
    let built = convert::build(&response.resources, &loader.options, &loader.registry, loader.empty, next);
    match reloader.apply(built) {
        Ok(()) => {
            tracing::info!(version = %response.version_info, resources = response.resources.len(), "xDS: ACK");
            version = response.version_info;
            reply.version_info = version.clone();
        }
        Err(diags) => {
            tracing::error!(version = %response.version_info, errors = diags.error_count(), "xDS: NACK");
            reply.version_info = version.clone();
            let message = diags.errors().map(|d| d.to_string()).collect::<Vec<_>>().join("\n");
            reply.error_detail = Some(Status { code: INVALID_ARGUMENT, message, details: Vec::new() });
        }
    }
    (reply, version)
}

fn node(options: &XdsOptions) -> Node {
    let fields = options
        .node_metadata
        .iter()
        .map(|(k, v)| (k.clone(), ProtoValue { kind: Some(Kind::StringValue(v.clone())) }))
        .collect();
    Node {
        id: options.node_id.clone(),
        metadata: (!options.node_metadata.is_empty()).then_some(Struct { fields }),
        user_agent_name: "sluicegate".into(),
        ..Default::default()
    }
}

async fn connect(options: &XdsOptions) -> Result<Channel, String> {
    let url = &options.server_url;
    let uri = if url.contains("://") {
        url.clone()
    } else if options.tls.is_some() {
        format!("https://{url}")
    } else {
        format!("http://{url}")
    };
    let mut endpoint = Endpoint::from_shared(uri).map_err(|e| format!("CONFIG_GRPC_XDS_SERVER_URL: {e}"))?;
    endpoint = endpoint.connect_timeout(CONNECT_TIMEOUT);
    if let Some(tls) = &options.tls {
        let mut config = ClientTlsConfig::new();
        if let Some(ca) = &tls.server_ca {
            let pem = std::fs::read(ca).map_err(|e| format!("{}: {e}", ca.display()))?;
            config = config.ca_certificate(Certificate::from_pem(pem));
        }
        if let Some((cert, key)) = &tls.client_cert {
            let c = std::fs::read(cert).map_err(|e| format!("{}: {e}", cert.display()))?;
            let k = std::fs::read(key).map_err(|e| format!("{}: {e}", key.display()))?;
            config = config.identity(Identity::from_pem(c, k));
        }
        if let Some(san) = &tls.server_san {
            config = config.domain_name(san.clone());
        }
        endpoint = endpoint.tls_config(config).map_err(|e| format!("TLS: {e}"))?;
    }
    endpoint.connect().await.map_err(|e| {
        use std::error::Error;
        let mut text = e.to_string();
        let mut source = e.source();
        while let Some(s) = source {
            text.push_str(&format!(": {s}"));
            source = s.source();
        }
        text
    })
}

/// A uniform number in [0, 1) for jitter (no random-number crate needed for this).
fn unit_random() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(0);
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}
