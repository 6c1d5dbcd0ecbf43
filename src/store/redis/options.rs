//! Redis connection settings: where Redis is, how to reach it, and how to log it.
//!
//! Owns parsing the reference's `REDIS_*` forms (`host:port`, a unix socket path, comma
//! lists for Cluster, `master,sentinel1,...` for Sentinel, and `redis://`/`rediss://`
//! URLs) into [`RedisTarget`], and turning a target into the redis crate's connection
//! infos. Credentials never leave this module in text: `Debug` and [`RedisTarget::describe`]
//! mask them (with `mask.rs`), so settings, logs and `/debug/config` can show a target
//! safely.

use std::path::PathBuf;
use std::time::Duration;

use redis::{ConnectionAddr, ConnectionInfo, IntoConnectionInfo};

use super::mask::{mask_address, mask_url, split_addresses};

/// How the Redis deployment is laid out (`REDIS_TYPE`).
#[derive(Clone, PartialEq, Eq)]
pub enum Topology {
    Single,
    /// Sentinels that know the master named `master`.
    Sentinel {
        master: String,
    },
    Cluster,
}

impl std::fmt::Debug for Topology {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Topology::Single => f.write_str("Single"),
            // The name comes first in REDIS_URL, so misplaced credentials land in it too.
            Topology::Sentinel { master } => f.debug_struct("Sentinel").field("master", &mask_address(master)).finish(),
            Topology::Cluster => f.write_str("Cluster"),
        }
    }
}

/// One address from `REDIS_URL`.
#[derive(Clone, PartialEq, Eq)]
pub enum NodeAddr {
    Tcp {
        host: String,
        port: u16,
    },
    Unix(PathBuf),
    /// A `redis://`, `rediss://` or `unix://` URL, kept as written (it may hold credentials).
    Url(String),
}

impl NodeAddr {
    /// The address for logs: URLs with their password masked.
    pub fn describe(&self) -> String {
        match self {
            NodeAddr::Tcp { host, port } => format!("{host}:{port}"),
            NodeAddr::Unix(path) => path.display().to_string(),
            NodeAddr::Url(url) => mask_url(url),
        }
    }
}

impl std::fmt::Debug for NodeAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

/// `REDIS_AUTH`: a password, or `user:password`.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: Option<String>,
    pub password: String,
}

impl Credentials {
    pub fn parse(text: &str) -> Option<Credentials> {
        if text.is_empty() {
            return None;
        }
        Some(match text.split_once(':') {
            Some((user, password)) => Credentials { username: Some(user.to_string()), password: password.to_string() },
            None => Credentials { username: None, password: text.to_string() },
        })
    }
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.username {
            Some(user) => write!(f, "{user}:***"),
            None => f.write_str("***"),
        }
    }
}

/// `REDIS_TLS` and its files.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RedisTls {
    /// CA certificates to verify Redis with (else the system's).
    pub ca: Option<PathBuf>,
    /// Client certificate and key, for Redis servers that require them.
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// `REDIS_TLS_SKIP_HOSTNAME_VERIFICATION`. The redis client cannot skip only the
    /// hostname check, so this skips certificate verification altogether.
    pub skip_verification: bool,
}

/// One Redis deployment: the main one, or the per-second one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RedisTarget {
    pub topology: Topology,
    pub nodes: Vec<NodeAddr>,
    pub auth: Option<Credentials>,
    pub sentinel_auth: Option<Credentials>,
    pub tls: Option<RedisTls>,
    /// Connections kept open (each one multiplexes many requests).
    pub pool_size: usize,
    /// Bounds connecting and every call.
    pub timeout: Duration,
}

impl RedisTarget {
    /// Parses the reference's `REDIS_TYPE`, `REDIS_SOCKET_TYPE` and `REDIS_URL`.
    pub fn parse_addresses(kind: &str, socket: &str, url: &str) -> Result<(Topology, Vec<NodeAddr>), String> {
        let unix = match socket.to_ascii_lowercase().as_str() {
            "tcp" => false,
            "unix" => true,
            other => return Err(format!("REDIS_SOCKET_TYPE {other:?} is not tcp or unix")),
        };
        if split_addresses(url).len() != url.split(',').count() {
            // Quoting the pieces would show the password's pieces.
            return Err("a URL's credentials hold a comma, which separates addresses here: write it as %2C".into());
        }
        let parts: Vec<&str> = url.split(',').map(str::trim).filter(|p| !p.is_empty()).collect();
        if parts.is_empty() {
            return Err("expected an address (host:port, a socket path or a redis:// URL)".into());
        }
        let node = |part: &str| parse_node(part, unix);
        match kind.to_ascii_lowercase().as_str() {
            "single" => {
                if parts.len() != 1 {
                    return Err("a single Redis takes one address; use REDIS_TYPE=cluster for several".into());
                }
                Ok((Topology::Single, vec![node(parts[0])?]))
            }
            "cluster" => Ok((Topology::Cluster, parts.iter().map(|p| node(p)).collect::<Result<_, _>>()?)),
            "sentinel" => {
                if parts.len() < 2 {
                    return Err("Expected master name and a list of urls for the sentinels, in the format: <redis master name>,<sentinel1>,...,<sentineln>".into());
                }
                let master = parts[0].to_string();
                let nodes = parts[1..].iter().map(|p| node(p)).collect::<Result<_, _>>()?;
                Ok((Topology::Sentinel { master }, nodes))
            }
            other => Err(format!("Unrecognized redis type {other}")),
        }
    }

    /// The target for logs and `/debug/config`: topology and addresses, no secrets.
    pub fn describe(&self) -> String {
        let nodes: Vec<String> = self.nodes.iter().map(NodeAddr::describe).collect();
        let topology = match &self.topology {
            Topology::Single => "single".to_string(),
            Topology::Sentinel { master } => format!("sentinel master {:?} via", mask_address(master)),
            Topology::Cluster => "cluster".to_string(),
        };
        let tls = if self.tls.is_some() { ", tls" } else { "" };
        format!("{topology} {}{tls}", nodes.join(","))
    }

    /// The connection info of one node, with `REDIS_AUTH` and TLS applied.
    pub(crate) fn connection_info(
        &self,
        node: &NodeAddr,
        auth: Option<&Credentials>,
    ) -> redis::RedisResult<ConnectionInfo> {
        let insecure = self.tls.as_ref().is_some_and(|t| t.skip_verification);
        let info = match node {
            NodeAddr::Tcp { host, port } if self.tls.is_some() => {
                ConnectionAddr::TcpTls { host: host.clone(), port: *port, insecure, tls_params: None }
                    .into_connection_info()?
            }
            NodeAddr::Tcp { host, port } => ConnectionAddr::Tcp(host.clone(), *port).into_connection_info()?,
            NodeAddr::Unix(path) => ConnectionAddr::Unix(path.clone()).into_connection_info()?,
            NodeAddr::Url(url) => url.as_str().into_connection_info()?,
        };
        Ok(match auth {
            Some(auth) => {
                let mut settings = info.redis_settings().clone().set_password(&auth.password);
                if let Some(user) = &auth.username {
                    settings = settings.set_username(user);
                }
                info.set_redis_settings(settings)
            }
            None => info,
        })
    }

    /// The CA and client certificate files, read now (so a renewed file is used on the
    /// next reconnect).
    pub(crate) fn certificates(&self) -> Result<Option<redis::TlsCertificates>, String> {
        let Some(tls) = &self.tls else { return Ok(None) };
        let read = |p: &PathBuf| std::fs::read(p).map_err(|e| format!("cannot read {}: {e}", p.display()));
        let root_cert = tls.ca.as_ref().map(read).transpose()?;
        let client_tls = match (&tls.cert, &tls.key) {
            (Some(cert), Some(key)) => {
                Some(redis::ClientTlsConfig { client_cert: read(cert)?, client_key: read(key)? })
            }
            _ => None,
        };
        Ok(Some(redis::TlsCertificates { client_tls, root_cert }))
    }
}

fn parse_node(part: &str, unix: bool) -> Result<NodeAddr, String> {
    if part.contains("://") {
        // Validate now, so a typo stops start-up instead of every request.
        part.into_connection_info().map_err(|e| format!("{} is not a Redis URL: {e}", mask_url(part)))?;
        return Ok(NodeAddr::Url(part.to_string()));
    }
    if unix {
        return Ok(NodeAddr::Unix(PathBuf::from(part)));
    }
    // Not an address the reference reads either; refused rather than taken for a host
    // name, which every log line would then show with its password.
    if part.contains('@') {
        return Err(format!(
            "{} holds credentials but no scheme: write redis://user:password@host:port, or set the password in REDIS_AUTH",
            mask_address(part)
        ));
    }
    let (host, port) = part.rsplit_once(':').ok_or_else(|| format!("{part:?} is not host:port"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port: u16 = port.parse().map_err(|_| format!("{part:?} is not host:port"))?;
    if host.is_empty() {
        return Err(format!("{part:?} has no host"));
    }
    Ok(NodeAddr::Tcp { host: host.to_string(), port })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_address_forms_parse() {
        let (t, n) = RedisTarget::parse_addresses("SINGLE", "tcp", "localhost:6379").unwrap();
        assert_eq!(t, Topology::Single);
        assert_eq!(n, vec![NodeAddr::Tcp { host: "localhost".into(), port: 6379 }]);
        let (_, n) = RedisTarget::parse_addresses("single", "unix", "/var/run/redis.sock").unwrap();
        assert_eq!(n, vec![NodeAddr::Unix("/var/run/redis.sock".into())]);
        let (t, n) = RedisTarget::parse_addresses("cluster", "tcp", "a:1, b:2,c:3").unwrap();
        assert_eq!(t, Topology::Cluster);
        assert_eq!(n.len(), 3);
        let (t, n) = RedisTarget::parse_addresses("Sentinel", "tcp", "mymaster,s1:26379,s2:26379").unwrap();
        assert_eq!(t, Topology::Sentinel { master: "mymaster".into() });
        assert_eq!(n.len(), 2);
        let (_, n) = RedisTarget::parse_addresses("single", "tcp", "[::1]:6379").unwrap();
        assert_eq!(n, vec![NodeAddr::Tcp { host: "::1".into(), port: 6379 }]);
        let (_, n) = RedisTarget::parse_addresses("single", "tcp", "rediss://u:pw@h:6380/0").unwrap();
        assert_eq!(n, vec![NodeAddr::Url("rediss://u:pw@h:6380/0".into())]);
    }

    #[test]
    fn bad_addresses_say_why() {
        let e = RedisTarget::parse_addresses("sentinel", "tcp", "mymaster").unwrap_err();
        assert!(e.starts_with("Expected master name"), "{e}");
        let e = RedisTarget::parse_addresses("ring", "tcp", "a:1").unwrap_err();
        assert_eq!(e, "Unrecognized redis type ring");
        assert!(RedisTarget::parse_addresses("single", "tcp", "nohost").unwrap_err().contains("host:port"));
        assert!(RedisTarget::parse_addresses("single", "tcp", "a:1,b:2").unwrap_err().contains("cluster"));
        assert!(RedisTarget::parse_addresses("single", "udp", "a:1").unwrap_err().contains("REDIS_SOCKET_TYPE"));
        assert!(RedisTarget::parse_addresses("single", "tcp", "").is_err());
    }

    #[test]
    fn an_address_with_credentials_but_no_scheme_is_refused_masked() {
        let e = RedisTarget::parse_addresses("single", "tcp", "user:pw@host:6379").unwrap_err();
        assert!(!e.contains("pw"), "{e}");
        assert!(e.contains("***@host:6379") && e.contains("redis://"), "{e}");
        let e = RedisTarget::parse_addresses("cluster", "tcp", "a:1,:p/w@b:2").unwrap_err();
        assert!(!e.contains("p/w"), "{e}");
        let e = RedisTarget::parse_addresses("cluster", "tcp", "redis://u:p,w@h:1,redis://k:2").unwrap_err();
        assert!(e.contains("%2C") && !e.contains("p,") && !e.contains(":p"), "{e}");
        let e = RedisTarget::parse_addresses("single", "tcp", "redis://u:p/w@h").unwrap_err();
        assert!(e.starts_with("redis://u:***@h is not a Redis URL"), "{e}");
        let (_, n) = RedisTarget::parse_addresses("single", "unix", "/run/redis@1.sock").unwrap();
        assert_eq!(n, vec![NodeAddr::Unix("/run/redis@1.sock".into())], "a socket path may hold an @");
    }

    #[test]
    fn secrets_never_print() {
        assert_eq!(mask_url("redis://user:s3cret@host:6379/0"), "redis://user:***@host:6379/0");
        assert_eq!(mask_url("rediss://:s3cret@host"), "rediss://:***@host");
        assert_eq!(mask_url("redis://host:6379"), "redis://host:6379");
        let auth = Credentials::parse("admin:s3cret").unwrap();
        assert_eq!(format!("{auth:?}"), "admin:***");
        assert_eq!(format!("{:?}", Credentials::parse("s3cret").unwrap()), "***");
        let target = RedisTarget {
            topology: Topology::Single,
            nodes: vec![NodeAddr::Url("redis://u:s3cret@h:1".into())],
            auth: Some(auth),
            sentinel_auth: None,
            tls: None,
            pool_size: 1,
            timeout: Duration::from_secs(1),
        };
        assert!(!format!("{target:?}").contains("s3cret"));
        assert!(!target.describe().contains("s3cret"));
        let (topology, nodes) = RedisTarget::parse_addresses("sentinel", "tcp", "u:s3cret@m,s:26379").unwrap();
        let sentinel = RedisTarget { topology, nodes, ..target };
        assert_eq!(sentinel.describe(), "sentinel master \"***@m\" via s:26379");
        assert!(!format!("{sentinel:?}").contains("s3cret"));
    }
}
