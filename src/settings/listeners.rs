//! Listener settings: the gRPC, HTTP and debug addresses, gRPC workers, gRPC TLS (and
//! mutual TLS), and every listener's connection caps and timeouts.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::parse::{parse_bool, parse_duration, parse_port, parse_positive_duration, text};
use super::reader::Reader;
use super::setting::settings;
use crate::serve::{ConnectionLimits, GrpcLimits, HttpLimits};
use crate::tls::TlsSettings;

settings! {
    HOST: String = "0.0.0.0", text, "Address of the HTTP listener (/healthcheck, /json)";
    PORT: u16 = "8080", parse_port, "Port of the HTTP listener (0 picks a free port)";
    GRPC_HOST: String = "0.0.0.0", text, "Address of the gRPC listener";
    GRPC_PORT: u16 = "8081", parse_port, "Port of the gRPC listener (0 picks a free port)";
    GRPC_UDS: String = "", text, "Serve gRPC on this unix socket instead of GRPC_HOST:GRPC_PORT";
    GRPC_SERVER_USE_TLS: bool = "false", parse_bool, "Serve gRPC over TLS";
    GRPC_SERVER_TLS_CERT: String = "", text,
        "PEM certificate chain of the gRPC server (reloaded when it changes)";
    GRPC_SERVER_TLS_KEY: String = "", text, "PEM private key of the gRPC server (reloaded when it changes)";
    GRPC_CLIENT_TLS_CACERT: String = "", text,
        "Mutual TLS: PEM CA certificates that must have issued the client's certificate";
    GRPC_CLIENT_TLS_SAN: String = "", text, "Mutual TLS: a name the client's certificate must carry";
    GRPC_WORKERS: usize = "0", |s| s.parse::<usize>().map_err(|_| "expected a whole number".into()),
        "gRPC worker threads, each with its own runtime and listener (0: one per CPU)";
    DEBUG_HOST: String = "0.0.0.0", text, "Address of the debug listener (/rlconfig)";
    DEBUG_PORT: u16 = "6070", parse_port, "Port of the debug listener (0 picks a free port)";
    GRPC_MAX_CONNECTIONS: usize = "4096", max_connections,
        "Most open gRPC connections, all workers together; past it new ones wait in the listen backlog";
    GRPC_MAX_CONCURRENT_STREAMS: u32 = "1024",
        |s| match s.parse::<u32>() {
            Ok(n @ 1..) => Ok(n),
            _ => Err(format!("expected a whole number from 1 to {}", u32::MAX)),
        },
        "Most calls at once on one gRPC connection (HTTP/2 streams)";
    GRPC_HANDSHAKE_TIMEOUT: Duration = "10s", parse_positive_duration,
        "A gRPC connection must finish its TLS handshake and HTTP/2 preface within this";
    GRPC_MAX_CONNECTION_IDLE: Option<Duration> = "15m", zero_is_never,
        "Send GOAWAY to a gRPC connection without a call for this long (0: never)";
    GRPC_MAX_CONNECTION_AGE: Option<Duration> = "24h", zero_is_never,
        "Send GOAWAY to a gRPC connection at about this age, +/-10% (0: never)";
    GRPC_MAX_CONNECTION_AGE_GRACE: Option<Duration> = "1h", zero_is_never,
        "Then close it if it is still open this long after (0: never)";
    HTTP_MAX_CONNECTIONS: usize = "1024", max_connections,
        "Most open connections on each of the HTTP and debug listeners; past it new ones wait in the listen backlog";
    HTTP_HEADER_READ_TIMEOUT: Duration = "10s", parse_positive_duration,
        "An HTTP request head must arrive within this of the accept or its first byte";
    HTTP_IDLE_TIMEOUT: Duration = "60s", parse_positive_duration,
        "Close a keep-alive HTTP connection that sends no request for this long";
    HTTP_REQUEST_TIMEOUT: Duration = "30s", parse_positive_duration,
        "Reading an HTTP request's body and answering it; past it, 408 and close";
}

fn max_connections(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n @ 1..=1_000_000) => Ok(n),
        _ => Err("expected a whole number from 1 to 1000000".to_string()),
    }
}

/// Go's gRPC servers read a zero age or idle time as "never"; so does the reference.
fn zero_is_never(s: &str) -> Result<Option<Duration>, String> {
    parse_duration(s).map(|d| (!d.is_zero()).then_some(d))
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Listen {
    Tcp { host: String, port: u16 },
    Unix(PathBuf),
}

impl Listen {
    /// Resolves a TCP listen address (hosts may be names, as in the reference).
    pub fn socket_addr(host: &str, port: u16) -> std::io::Result<SocketAddr> {
        use std::net::ToSocketAddrs;
        (host, port)
            .to_socket_addrs()?
            .next()
            .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, format!("{host} has no address")))
    }
}

/// The listener settings, parsed.
pub(super) struct Listeners {
    pub grpc: Listen,
    pub grpc_workers: usize,
    pub grpc_tls: Option<TlsSettings>,
    pub http: (String, u16),
    pub debug: (String, u16),
    pub connection_limits: ConnectionLimits,
}

pub(super) fn read(r: &mut Reader<'_>) -> Listeners {
    let grpc_host = r.get(&GRPC_HOST);
    let grpc_port = r.get(&GRPC_PORT);
    let grpc_uds = r.get(&GRPC_UDS);
    let grpc = if grpc_uds.is_empty() {
        Listen::Tcp { host: grpc_host, port: grpc_port }
    } else {
        Listen::Unix(PathBuf::from(grpc_uds))
    };
    let grpc_workers = r.get(&GRPC_WORKERS);
    let grpc_tls = grpc_tls(r, &grpc);
    let http = (r.get(&HOST), r.get(&PORT));
    let debug = (r.get(&DEBUG_HOST), r.get(&DEBUG_PORT));
    let connection_limits = connection_limits(r);
    Listeners { grpc, grpc_workers, grpc_tls, http, debug, connection_limits }
}

/// `GRPC_SERVER_USE_TLS` with its files, which it needs; mutual TLS needs it.
fn grpc_tls(r: &mut Reader<'_>, grpc: &Listen) -> Option<TlsSettings> {
    let use_tls = r.get(&GRPC_SERVER_USE_TLS);
    let (cert, key) = (r.get(&GRPC_SERVER_TLS_CERT), r.get(&GRPC_SERVER_TLS_KEY));
    let (client_ca, client_san) = (r.get(&GRPC_CLIENT_TLS_CACERT), r.get(&GRPC_CLIENT_TLS_SAN));
    if !use_tls {
        if !client_ca.is_empty() {
            r.invalid(
                GRPC_CLIENT_TLS_CACERT.env,
                &format!("{client_ca:?}"),
                "mutual TLS needs GRPC_SERVER_USE_TLS=true",
            );
        }
        return None;
    }
    for (name, value) in [(GRPC_SERVER_TLS_CERT.env, &cert), (GRPC_SERVER_TLS_KEY.env, &key)] {
        if value.is_empty() {
            r.invalid(name, "\"\"", "GRPC_SERVER_USE_TLS needs it");
        }
    }
    if matches!(grpc, Listen::Unix(_)) {
        r.invalid(GRPC_SERVER_USE_TLS.env, "\"true\"", "TLS is for TCP listeners, not GRPC_UDS");
    }
    Some(TlsSettings {
        cert: PathBuf::from(cert),
        key: PathBuf::from(key),
        client_ca: (!client_ca.is_empty()).then(|| PathBuf::from(client_ca)),
        client_san: (!client_san.is_empty()).then_some(client_san),
    })
}

/// The listeners' connection caps and timeouts.
fn connection_limits(r: &mut Reader<'_>) -> ConnectionLimits {
    let grpc = GrpcLimits {
        max_connections: r.get(&GRPC_MAX_CONNECTIONS),
        max_concurrent_streams: r.get(&GRPC_MAX_CONCURRENT_STREAMS),
        handshake_timeout: r.get(&GRPC_HANDSHAKE_TIMEOUT),
        max_connection_idle: r.get(&GRPC_MAX_CONNECTION_IDLE),
        max_connection_age: r.get(&GRPC_MAX_CONNECTION_AGE),
        max_connection_age_grace: r.get(&GRPC_MAX_CONNECTION_AGE_GRACE),
    };
    let http = HttpLimits {
        max_connections: r.get(&HTTP_MAX_CONNECTIONS),
        header_read_timeout: r.get(&HTTP_HEADER_READ_TIMEOUT),
        idle_timeout: r.get(&HTTP_IDLE_TIMEOUT),
        request_timeout: r.get(&HTTP_REQUEST_TIMEOUT),
    };
    ConnectionLimits { grpc, http }
}
