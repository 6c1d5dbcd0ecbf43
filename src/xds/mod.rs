//! The xDS config provider (`CONFIG_TYPE=GRPC_XDS_SOTW`): rules pushed by a control plane.
//!
//! Owns the provider's options ([`XdsOptions`], plain data filled in by `settings`; this
//! module tree never imports `settings`), the conversion of `RateLimitConfig` resources
//! into the rule model (`convert.rs`) and the State-of-the-World ADS client that
//! subscribes, ACKs and NACKs, and reconnects with backoff (`client.rs`). Rules are
//! installed through the file reloader's own install path ([`Reloader::apply`]), so
//! validation, `MERGE_DOMAIN_CONFIG`, counters of unchanged rules, metrics and
//! `/rlconfig` behave exactly as for rule files.
//!
//! [`Reloader::apply`]: crate::snapshot::Reloader::apply

pub mod client;
pub mod convert;

use std::path::PathBuf;
use std::time::Duration;

/// gRPC's default cap on a received message, `XDS_CLIENT_MAX_MSG_SIZE_IN_BYTES`'s default.
pub const DEFAULT_MAX_MSG_SIZE: usize = 4 * 1024 * 1024;

/// The resource type subscribed to.
pub const TYPE_URL: &str = "type.googleapis.com/ratelimit.config.ratelimit.v3.RateLimitConfig";

/// Everything the xDS client needs (the reference's `CONFIG_GRPC_XDS_*` and
/// `XDS_CLIENT_*` settings).
#[derive(Clone, Debug, PartialEq)]
pub struct XdsOptions {
    /// `CONFIG_GRPC_XDS_NODE_ID`.
    pub node_id: String,
    /// `CONFIG_GRPC_XDS_NODE_METADATA`: `k1:v1,k2=v2`, sent as string values.
    pub node_metadata: Vec<(String, String)>,
    /// `CONFIG_GRPC_XDS_SERVER_URL`: `host:port` (or a full `http(s)://` URI).
    pub server_url: String,
    /// `CONFIG_GRPC_XDS_SERVER_CONNECT_RETRY_INTERVAL`: pause after a failed connection.
    pub connect_retry_interval: Duration,
    /// `CONFIG_GRPC_XDS_CLIENT_ADDITIONAL_HEADERS`: gRPC metadata on the stream.
    pub additional_headers: Vec<(String, String)>,
    /// `CONFIG_GRPC_XDS_SERVER_USE_TLS` and its files.
    pub tls: Option<XdsTls>,
    pub backoff: Backoff,
    /// `XDS_CLIENT_MAX_MSG_SIZE_IN_BYTES`: the largest response accepted.
    pub max_msg_size: usize,
}

/// TLS towards the control plane.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct XdsTls {
    /// `CONFIG_GRPC_XDS_CLIENT_TLS_CERT` / `_KEY`: our certificate, for mutual TLS.
    pub client_cert: Option<(PathBuf, PathBuf)>,
    /// `CONFIG_GRPC_XDS_SERVER_TLS_CACERT`: the CAs the server's certificate must chain to.
    pub server_ca: Option<PathBuf>,
    /// `CONFIG_GRPC_XDS_SERVER_TLS_SAN`: the name the server's certificate must carry
    /// (default: the host of the server URL).
    pub server_san: Option<String>,
}

/// Reconnection backoff (`XDS_CLIENT_BACKOFF_*`): exponential from `initial` up to `max`,
/// each pause randomized by +/- `random_factor` when `jitter` is on.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
    pub random_factor: f64,
    pub jitter: bool,
}

impl Backoff {
    /// The pause before reconnection attempt `attempt` (0-based), given a uniform random
    /// number `unit` in [0, 1).
    pub fn pause(&self, attempt: u32, unit: f64) -> Duration {
        let base = self.initial.as_secs_f64() * 2f64.powi(attempt.min(30) as i32);
        let base = base.min(self.max.as_secs_f64());
        let factor = if self.jitter { 1.0 + self.random_factor * (2.0 * unit - 1.0) } else { 1.0 };
        Duration::from_secs_f64((base * factor).max(0.0))
    }
}

/// Parses `k1:v1,k2=v2` (the reference's map syntax; either separator) into pairs.
pub fn parse_pairs(s: &str) -> Result<Vec<(String, String)>, String> {
    s.split(',')
        .filter(|t| !t.trim().is_empty())
        .map(|t| match t.split_once([':', '=']) {
            Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.trim().to_string())),
            _ => Err(format!("expected k1:v1,k2:v2, not {t:?}")),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_its_cap_and_jitters_within_the_factor() {
        let b = Backoff {
            initial: Duration::from_secs(10),
            max: Duration::from_secs(60),
            random_factor: 0.5,
            jitter: false,
        };
        let pauses: Vec<u64> = (0..5).map(|n| b.pause(n, 0.9).as_secs()).collect();
        assert_eq!(pauses, [10, 20, 40, 60, 60]);
        let j = Backoff { jitter: true, ..b };
        assert_eq!(j.pause(0, 0.0), Duration::from_secs(5));
        assert_eq!(j.pause(0, 0.5), Duration::from_secs(10));
        assert!(j.pause(0, 0.999) < Duration::from_secs(15));
    }

    #[test]
    fn pairs_take_either_separator() {
        assert_eq!(
            parse_pairs("a:1, b=2,").unwrap(),
            vec![("a".to_string(), "1".to_string()), ("b".to_string(), "2".to_string())]
        );
        assert!(parse_pairs("nokey").is_err());
    }
}
