//! TLS and mutual TLS on the gRPC listener, with a test CA made here (rcgen), and a
//! certificate rotation picked up without a restart.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::process::{Running, sigterm, sluicegate, spawn, wait_exit};
use common::test_ca::Ca;
use common::{TempDir, request};
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

const RULES: &str = "domain: d\ndescriptors:\n  - key: k\n    rate_limit: {unit: hour, requests_per_unit: 5}\n";

fn start(dir: &TempDir, env: &[(&str, String)]) -> Running {
    dir.write("rules/d.yaml", RULES);
    let mut command = sluicegate();
    command
        .env_clear()
        .arg("--config")
        .arg(dir.path().join("rules"))
        .args(["--host", "127.0.0.1", "--port", "0", "--grpc-host", "127.0.0.1", "--grpc-port", "0"])
        .args(["--debug-host", "127.0.0.1", "--debug-port", "0", "--log-level", "info"])
        .env("SHUTDOWN_GRACE_PERIOD", "0");
    for (k, v) in env {
        command.env(k, v);
    }
    spawn(command)
}

/// Writes a file the way a deployment does: a new file renamed over the old one.
fn replace(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(tmp, path).unwrap();
}

async fn call(running: &Running, tls: Option<ClientTlsConfig>) -> Result<(), String> {
    let scheme = if tls.is_some() { "https" } else { "http" };
    let mut endpoint = Channel::from_shared(format!("{scheme}://{}", running.grpc))
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(5));
    if let Some(tls) = tls {
        endpoint = endpoint.tls_config(tls).map_err(|e| e.to_string())?;
    }
    let channel = endpoint.connect().await.map_err(|e| format!("connect: {e:?}"))?;
    let mut client = RateLimitServiceClient::new(channel);
    client.should_rate_limit(request("d", &[&[("k", "v")]])).await.map(|_| ()).map_err(|e| format!("call: {e}"))
}

fn trusting(ca: &Ca) -> ClientTlsConfig {
    ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca.pem())).domain_name("localhost")
}

fn stop(mut running: Running) {
    sigterm(&running.child);
    assert_eq!(wait_exit(&mut running.child, Duration::from_secs(15)).code(), Some(0));
}

#[tokio::test]
async fn serves_tls_and_rotates_the_certificate_without_a_restart() {
    let dir = TempDir::new("tls");
    let ca = Ca::new("test CA");
    let (cert, key) = ca.issue(&["localhost", "127.0.0.1"]);
    let cert_path = dir.write("certs/server.pem", &cert);
    let key_path = dir.write("certs/server.key", &key);
    let running = start(
        &dir,
        &[
            ("GRPC_SERVER_USE_TLS", "true".into()),
            ("GRPC_SERVER_TLS_CERT", cert_path.display().to_string()),
            ("GRPC_SERVER_TLS_KEY", key_path.display().to_string()),
        ],
    );
    call(&running, Some(trusting(&ca))).await.unwrap();
    assert!(call(&running, None).await.is_err(), "plain text is refused");
    let other = Ca::new("another CA");
    assert!(call(&running, Some(trusting(&other))).await.is_err(), "an untrusted certificate is refused");

    // Rotate to a certificate from the other CA: new connections get it.
    let (cert, key) = other.issue(&["localhost"]);
    replace(&key_path, &key);
    replace(&cert_path, &cert);
    let deadline = Instant::now() + Duration::from_secs(10);
    while call(&running, Some(trusting(&other))).await.is_err() {
        assert!(Instant::now() < deadline, "the rotated certificate was not picked up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(call(&running, Some(trusting(&ca))).await.is_err(), "the old certificate is gone");

    // A broken rotation keeps the working certificate.
    replace(&cert_path, "not a certificate");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    call(&running, Some(trusting(&other))).await.unwrap();
    let rest: Vec<String> = running.lines.try_iter().collect();
    assert!(rest.iter().any(|l| l.contains("the TLS certificates did not load")), "{rest:?}");
    stop(running);
}

#[tokio::test]
async fn mutual_tls_requires_a_client_certificate_from_the_ca_with_the_san() {
    let dir = TempDir::new("mtls");
    let ca = Ca::new("test CA");
    let (cert, key) = ca.issue(&["localhost"]);
    let running = start(
        &dir,
        &[
            ("GRPC_SERVER_USE_TLS", "true".into()),
            ("GRPC_SERVER_TLS_CERT", dir.write("server.pem", &cert).display().to_string()),
            ("GRPC_SERVER_TLS_KEY", dir.write("server.key", &key).display().to_string()),
            ("GRPC_CLIENT_TLS_CACERT", dir.write("ca.pem", &ca.pem()).display().to_string()),
            ("GRPC_CLIENT_TLS_SAN", "envoy.example".into()),
        ],
    );
    assert!(call(&running, Some(trusting(&ca))).await.is_err(), "no client certificate");
    let (client_cert, client_key) = ca.issue(&["envoy.example"]);
    let with_identity = trusting(&ca).identity(Identity::from_pem(&client_cert, &client_key));
    call(&running, Some(with_identity)).await.unwrap();
    let (wrong_cert, wrong_key) = ca.issue(&["somebody.else"]);
    let wrong_name = trusting(&ca).identity(Identity::from_pem(&wrong_cert, &wrong_key));
    assert!(call(&running, Some(wrong_name)).await.is_err(), "the SAN must match");
    let stranger = Ca::new("stranger");
    let (cert, key) = stranger.issue(&["envoy.example"]);
    assert!(call(&running, Some(trusting(&ca).identity(Identity::from_pem(cert, key)))).await.is_err());
    stop(running);
}

#[test]
fn missing_or_broken_certificates_stop_start_up_clearly() {
    let output =
        sluicegate().env_clear().args(["--config", "config", "--grpc-server-use-tls", "true"]).output().unwrap();
    assert_eq!(output.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("GRPC_SERVER_TLS_CERT=\"\" is not valid: GRPC_SERVER_USE_TLS needs it"), "{stderr}");
    let dir = TempDir::new("tls-broken");
    let cert = dir.write("c.pem", "garbage");
    let output = sluicegate()
        .env_clear()
        .args(["--config", "config", "--grpc-server-use-tls", "true", "--host", "127.0.0.1", "--port", "0"])
        .args(["--grpc-port", "0", "--debug-port", "0"])
        .arg("--grpc-server-tls-cert")
        .arg(&cert)
        .arg("--grpc-server-tls-key")
        .arg(&cert)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("cannot serve TLS") && stderr.contains("c.pem"), "{stderr}");
}
