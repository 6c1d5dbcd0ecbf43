//! TLS and mTLS for the gRPC listener (rustls), with certificates reloaded on change.
//!
//! Owns the server's TLS configuration: `GRPC_SERVER_TLS_CERT` and `GRPC_SERVER_TLS_KEY`
//! (PEM), and, for mutual TLS, `GRPC_CLIENT_TLS_CACERT` (clients must present a
//! certificate issued by it) and optionally `GRPC_CLIENT_TLS_SAN` (and name it). The
//! configuration is swapped whole when any of these files changes, so a rotated
//! certificate serves new connections within about a second with no restart; a rotation
//! that does not load (a half-written file) keeps the previous one and logs why.
//!
//! Each connection is handshaken by its own task on the worker that accepted it, within
//! `GRPC_HANDSHAKE_TIMEOUT` (bounded where connections are served).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use notify::RecursiveMode;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use tokio_rustls::rustls::client::danger::HandshakeSignatureValid;
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use tokio_rustls::rustls::{self, DistinguishedName, ServerConfig, SignatureScheme};

use crate::watch::Watching;

/// Where the certificates are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsSettings {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Mutual TLS: clients must present a certificate issued by one of these.
    pub client_ca: Option<PathBuf>,
    /// Mutual TLS: and the certificate must name this (a DNS name or an IP address).
    pub client_san: Option<String>,
}

/// The live server configuration.
#[derive(Debug)]
pub struct Tls {
    settings: TlsSettings,
    current: ArcSwap<ServerConfig>,
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
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

/// Checks, after the usual chain validation, that a client certificate names the SAN.
#[derive(Debug)]
struct RequireSan {
    inner: Arc<dyn ClientCertVerifier>,
    san: ServerName<'static>,
}

impl ClientCertVerifier for RequireSan {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self.inner.verify_client_cert(end_entity, intermediates, now)?;
        let cert = webpki::EndEntityCert::try_from(end_entity)
            .map_err(|e| rustls::Error::General(format!("unreadable client certificate: {e}")))?;
        cert.verify_is_valid_for_subject_name(&self.san)
            .map_err(|_| rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForName))?;
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Builds a server configuration from the files as they are now.
pub fn server_config(settings: &TlsSettings) -> Result<ServerConfig, String> {
    let certs = read_certs(&settings.cert)?;
    let key = PrivateKeyDer::from_pem_file(&settings.key)
        .map_err(|e| format!("{}: cannot read a PEM private key: {e}", settings.key.display()))?;
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?;
    let builder = match &settings.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in read_certs(ca)? {
                roots.add(cert).map_err(|e| format!("{}: {e}", ca.display()))?;
            }
            let verifier: Arc<dyn ClientCertVerifier> =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                    .build()
                    .map_err(|e| format!("{}: {e}", ca.display()))?;
            let verifier = match &settings.client_san {
                None => verifier,
                Some(san) => {
                    let san = ServerName::try_from(san.clone())
                        .map_err(|e| format!("GRPC_CLIENT_TLS_SAN {san:?} is not a DNS name or an IP address: {e}"))?;
                    Arc::new(RequireSan { inner: verifier, san })
                }
            };
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .map_err(|e| format!("{} and {}: {e}", settings.cert.display(), settings.key.display()))?;
    // gRPC is HTTP/2.
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

impl Tls {
    /// Loads the certificates; an error stops start-up.
    pub fn load(settings: TlsSettings) -> Result<Arc<Tls>, String> {
        let config = server_config(&settings)?;
        Ok(Arc::new(Tls { settings, current: ArcSwap::from_pointee(config) }))
    }

    /// Reloads the certificates, keeping the previous ones if the new do not load.
    pub fn reload(&self) {
        match server_config(&self.settings) {
            Ok(config) => {
                self.current.store(Arc::new(config));
                tracing::info!(cert = %self.settings.cert.display(), "reloaded the TLS certificates");
            }
            Err(e) => tracing::error!(error = %e, "the TLS certificates did not load; the previous ones stay"),
        }
    }

    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.current.load_full())
    }

    /// Watches on the directories of the certificate files (atomic renames replace the
    /// files themselves).
    pub fn watching_files(settings: &TlsSettings) -> Watching {
        let mut files = vec![settings.cert.clone(), settings.key.clone()];
        files.extend(settings.client_ca.clone());
        Watching::arm_targets(Box::new(move || {
            let mut dirs: Vec<(PathBuf, RecursiveMode)> = files
                .iter()
                .map(|f| {
                    let dir = f.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
                    (dir.to_path_buf(), RecursiveMode::Recursive)
                })
                .collect();
            dirs.sort();
            dirs.dedup();
            dirs
        }))
    }
}
