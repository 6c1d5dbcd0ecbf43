//! xDS config provider settings (`CONFIG_TYPE=GRPC_XDS_SOTW`): the reference's
//! `CONFIG_GRPC_XDS_*` and `XDS_CLIENT_*` variables, with its names and defaults, read into
//! the provider's [`XdsOptions`] (docs/xds.md).

use std::path::PathBuf;
use std::time::Duration;

use super::parse::{parse_bool, parse_duration, text};
use super::reader::Reader;
use super::setting::settings;
use crate::xds::{Backoff, DEFAULT_MAX_MSG_SIZE, XdsOptions, XdsTls, parse_pairs};

settings! {
    CONFIG_GRPC_XDS_NODE_ID: String = "default", text, "xDS: the node ID the control plane keys snapshots by";
    CONFIG_GRPC_XDS_NODE_METADATA: Vec<(String, String)> = "", parse_pairs, "xDS: node metadata, as k1:v1,k2:v2";
    CONFIG_GRPC_XDS_SERVER_URL: String = "localhost:18000", text, "xDS: the control plane's host:port";
    CONFIG_GRPC_XDS_SERVER_CONNECT_RETRY_INTERVAL: Duration = "3s", parse_duration,
        "xDS: pause after a failed connection";
    CONFIG_GRPC_XDS_CLIENT_ADDITIONAL_HEADERS: Vec<(String, String)> = "", parse_pairs,
        "xDS: gRPC headers on the stream, as k1:v1,k2:v2";
    CONFIG_GRPC_XDS_SERVER_USE_TLS: bool = "false", parse_bool, "xDS: connect to the control plane over TLS";
    CONFIG_GRPC_XDS_CLIENT_TLS_CERT: String = "", text, "xDS: PEM client certificate (mutual TLS)";
    CONFIG_GRPC_XDS_CLIENT_TLS_KEY: String = "", text, "xDS: PEM client key (mutual TLS)";
    CONFIG_GRPC_XDS_SERVER_TLS_CACERT: String = "", text,
        "xDS: PEM CA certificates the control plane's certificate must chain to";
    CONFIG_GRPC_XDS_SERVER_TLS_SAN: String = "", text, "xDS: the name the control plane's certificate must carry";
    XDS_CLIENT_BACKOFF_INITIAL_INTERVAL: Duration = "10s", parse_duration,
        "xDS: first pause before reconnecting a lost stream";
    XDS_CLIENT_BACKOFF_MAX_INTERVAL: Duration = "60s", parse_duration, "xDS: longest pause before reconnecting";
    XDS_CLIENT_BACKOFF_RANDOM_FACTOR: f64 = "0.5",
        |s| match s.parse::<f64>() {
            Ok(f) if (0.0..=1.0).contains(&f) => Ok(f),
            _ => Err("expected a number from 0 to 1".into()),
        },
        "xDS: each pause is randomized by +/- this fraction";
    XDS_CLIENT_BACKOFF_JITTER: bool = "true", parse_bool, "xDS: randomize the pauses";
    XDS_CLIENT_MAX_MSG_SIZE_IN_BYTES: usize = "",
        |s| match s {
            "" | "0" => Ok(DEFAULT_MAX_MSG_SIZE),
            _ => s.parse::<usize>().map_err(|_| "expected a number of bytes".into()),
        },
        "xDS: largest response accepted (empty: gRPC's 4 MiB)";
}

/// The provider's options with `CONFIG_TYPE=GRPC_XDS_SOTW`; `None` (and nothing read)
/// otherwise.
pub(super) fn read(r: &mut Reader<'_>, use_xds: bool) -> Option<XdsOptions> {
    if !use_xds {
        return None;
    }
    let file = |r: &mut Reader<'_>, s| Some(r.get(s)).filter(|v: &String| !v.is_empty());
    let tls = r.get(&CONFIG_GRPC_XDS_SERVER_USE_TLS).then(|| {
        let (cert, key) = (file(r, &CONFIG_GRPC_XDS_CLIENT_TLS_CERT), file(r, &CONFIG_GRPC_XDS_CLIENT_TLS_KEY));
        if cert.is_some() != key.is_some() {
            let (env, shown) = match &cert {
                Some(c) => (CONFIG_GRPC_XDS_CLIENT_TLS_CERT.env, format!("{c:?}")),
                None => (CONFIG_GRPC_XDS_CLIENT_TLS_KEY.env, format!("{:?}", key.clone().unwrap_or_default())),
            };
            r.invalid(env, &shown, "CONFIG_GRPC_XDS_CLIENT_TLS_CERT and CONFIG_GRPC_XDS_CLIENT_TLS_KEY go together");
        }
        XdsTls {
            client_cert: cert.zip(key).map(|(c, k)| (PathBuf::from(c), PathBuf::from(k))),
            server_ca: file(r, &CONFIG_GRPC_XDS_SERVER_TLS_CACERT).map(PathBuf::from),
            server_san: file(r, &CONFIG_GRPC_XDS_SERVER_TLS_SAN),
        }
    });
    Some(XdsOptions {
        node_id: r.get(&CONFIG_GRPC_XDS_NODE_ID),
        node_metadata: r.get(&CONFIG_GRPC_XDS_NODE_METADATA),
        server_url: r.get(&CONFIG_GRPC_XDS_SERVER_URL),
        connect_retry_interval: r.get(&CONFIG_GRPC_XDS_SERVER_CONNECT_RETRY_INTERVAL),
        additional_headers: r.get(&CONFIG_GRPC_XDS_CLIENT_ADDITIONAL_HEADERS),
        tls,
        backoff: Backoff {
            initial: r.get(&XDS_CLIENT_BACKOFF_INITIAL_INTERVAL),
            max: r.get(&XDS_CLIENT_BACKOFF_MAX_INTERVAL),
            random_factor: r.get(&XDS_CLIENT_BACKOFF_RANDOM_FACTOR),
            jitter: r.get(&XDS_CLIENT_BACKOFF_JITTER),
        },
        max_msg_size: r.get(&XDS_CLIENT_MAX_MSG_SIZE_IN_BYTES),
    })
}
