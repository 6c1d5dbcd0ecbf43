//! TLS and mutual TLS on the gRPC listener, with a test CA made here (rcgen), and a
//! certificate rotation picked up without a restart.

mod common;

use std::path::Path;
use std::time::Duration;

use common::poll::{eventually, poll_until};
use common::process::{self, Running, sluicegate, stop};
use common::test_ca::Ca;
use common::{TempDir, request};
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

const RULES: &str = "domain: d\ndescriptors:\n  - key: k\n    rate_limit: {unit: hour, requests_per_unit: 5}\n";

fn start(dir: &TempDir, env: &[(&str, String)]) -> Running {
    dir.write("rules/d.yaml", RULES);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    process::start(&dir.path().join("rules"), &env)
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

/// One quota report over a fresh connection: the stream's first answer.
async fn quota(running: &Running, tls: Option<ClientTlsConfig>) -> Result<usize, String> {
    use envoy_types::pb::envoy::service::rate_limit_quota::v3::rate_limit_quota_service_client::RateLimitQuotaServiceClient;
    use envoy_types::pb::envoy::service::rate_limit_quota::v3::rate_limit_quota_usage_reports::BucketQuotaUsage;
    use envoy_types::pb::envoy::service::rate_limit_quota::v3::{BucketId, RateLimitQuotaUsageReports};
    use futures_util::StreamExt;
    let scheme = if tls.is_some() { "https" } else { "http" };
    let mut endpoint =
        Channel::from_shared(format!("{scheme}://{}", running.grpc)).unwrap().connect_timeout(Duration::from_secs(5));
    if let Some(tls) = tls {
        endpoint = endpoint.tls_config(tls).map_err(|e| e.to_string())?;
    }
    let channel = endpoint.connect().await.map_err(|e| format!("connect: {e:?}"))?;
    let report = RateLimitQuotaUsageReports {
        domain: "d".into(),
        bucket_quota_usages: vec![BucketQuotaUsage {
            bucket_id: Some(BucketId { bucket: [("k".to_string(), "v".to_string())].into() }),
            ..BucketQuotaUsage::default()
        }],
    };
    // One report, and the stream stays open (an ended request stream would end the call).
    let reports = futures_util::stream::iter([report]).chain(futures_util::stream::pending());
    let mut answers = RateLimitQuotaServiceClient::new(channel)
        .stream_rate_limit_quotas(reports)
        .await
        .map_err(|e| format!("call: {e}"))?
        .into_inner();
    let answer = tokio::time::timeout(Duration::from_secs(5), answers.message()).await.map_err(|e| e.to_string())?;
    Ok(answer.map_err(|e| e.to_string())?.map_or(0, |a| a.bucket_action.len()))
}

fn trusting(ca: &Ca) -> ClientTlsConfig {
    ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca.pem())).domain_name("localhost")
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
    // The quota service shares the listener, so its TLS.
    assert_eq!(quota(&running, Some(trusting(&ca))).await, Ok(1), "an RLQS assignment over TLS");
    assert!(quota(&running, None).await.is_err(), "plain text is refused for RLQS too");
    let other = Ca::new("another CA");
    assert!(call(&running, Some(trusting(&other))).await.is_err(), "an untrusted certificate is refused");

    // Rotate to a certificate from the other CA: new connections get it.
    let (cert, key) = other.issue(&["localhost"]);
    replace(&key_path, &key);
    replace(&cert_path, &cert);
    eventually("the rotated certificate is picked up", async || call(&running, Some(trusting(&other))).await.is_ok())
        .await;
    assert!(call(&running, Some(trusting(&ca))).await.is_err(), "the old certificate is gone");

    // A broken rotation is logged, and keeps the working certificate.
    replace(&cert_path, "not a certificate");
    let mut logged = Vec::new();
    poll_until("the broken certificate is reported", Duration::from_secs(10), async || {
        logged.extend(running.lines.try_iter());
        logged.iter().any(|l| l.contains("the TLS certificates did not load"))
    })
    .await;
    call(&running, Some(trusting(&other))).await.unwrap();
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
    let mut command = process::loopback(Path::new("config"), &[("GRPC_SERVER_USE_TLS", "true")]);
    command.arg("--grpc-server-tls-cert").arg(&cert).arg("--grpc-server-tls-key").arg(&cert);
    let (code, stderr) = process::exit_and_stderr(command);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("cannot serve TLS") && stderr.contains("c.pem"), "{stderr}");
}
