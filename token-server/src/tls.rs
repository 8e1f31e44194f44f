//! HTTPS serving with optional client certificates (node identity, RFC 8705
//! style), and the connection facts handlers read.
//!
//! Handshakes run in each connection's own task (see `serve`), and the
//! certificate is reloaded from disk when it changes.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

use crate::config::TlsFiles;
use crate::identity::Principal;

/// Why TLS settings could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The certificate chain file is unreadable or holds no certificate.
    #[error("{path}: no usable CERTIFICATE blocks ({reason})")]
    Cert {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The key file is unreadable or holds no private key.
    #[error("{path}: no usable private key ({reason})")]
    Key {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The client CA bundle is unusable.
    #[error("{path}: unusable client CA bundle ({reason})")]
    ClientCa {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// rustls rejected the combination (for example a key that does not match).
    #[error("TLS configuration rejected: {0}")]
    Config(String),
}

fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .map_err(|e| e.to_string())?
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string())?;
    if certs.is_empty() {
        return Err("the file has none".into());
    }
    Ok(certs)
}

/// Builds the rustls server config. With `client_ca`, clients may present a
/// certificate, which must then chain to that CA and be within its validity
/// period; clients without one still connect and use passwords or tokens.
pub fn server_config(
    cert: &Path,
    key: &Path,
    client_ca: Option<&Path>,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let chain = certs(cert).map_err(|reason| TlsError::Cert {
        path: cert.to_owned(),
        reason,
    })?;
    let private = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::Key {
        path: key.to_owned(),
        reason: e.to_string(),
    })?;
    let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let fail = |reason: String| TlsError::ClientCa {
                path: ca.to_owned(),
                reason,
            };
            let mut roots = rustls::RootCertStore::empty();
            for c in certs(ca).map_err(fail)? {
                roots.add(c).map_err(|e| fail(e.to_string()))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .allow_unauthenticated()
                .build()
                .map_err(|e| fail(e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(chain, private)
        .map_err(|e| TlsError::Config(e.to_string()))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Facts about the connection a request arrived on.
#[derive(Debug, Clone)]
pub struct PeerInfo {
    /// The client's address.
    pub addr: SocketAddr,
    /// The node principal of a verified client certificate, if one was shown.
    pub node: Option<Arc<Principal>>,
}

/// The TLS settings in force, reloaded when the certificate, key or client
/// CA files change on disk, without dropping established connections.
pub struct TlsReloader {
    files: ArcSwap<TlsFiles>,
    current: ArcSwap<rustls::ServerConfig>,
}

impl TlsReloader {
    /// Starts from `config`, which was loaded from `files`.
    pub fn new(files: TlsFiles, config: Arc<rustls::ServerConfig>) -> Arc<Self> {
        Arc::new(TlsReloader {
            files: ArcSwap::from_pointee(files),
            current: ArcSwap::new(config),
        })
    }

    /// An acceptor for the settings in force now.
    pub fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.current.load_full())
    }

    /// Reloads from the files now; on error the settings in force stay.
    pub fn reload(&self) -> Result<(), TlsError> {
        let f = self.files.load();
        let config = server_config(&f.cert, &f.key, f.client_ca.as_deref())?;
        self.current.store(config);
        Ok(())
    }

    /// Replaces the settings and the files to watch (after a config reload).
    pub fn replace(&self, config: Arc<rustls::ServerConfig>, files: TlsFiles) {
        self.files.store(Arc::new(files));
        self.current.store(config);
    }

    fn stamp(&self) -> Vec<Option<std::time::SystemTime>> {
        let f = self.files.load();
        [Some(&f.cert), Some(&f.key), f.client_ca.as_ref()]
            .into_iter()
            .flatten()
            .map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
            .collect()
    }

    /// Polls the files every `interval` and reloads when one changes.
    pub fn watch(self: &Arc<Self>, interval: Duration) {
        let this = Arc::clone(self);
        tokio::spawn(async move {
            let mut seen = this.stamp();
            loop {
                tokio::time::sleep(interval).await;
                let now = this.stamp();
                if now == seen {
                    continue;
                }
                // Writers replace a certificate and key in two steps; give
                // them a moment so the pair is consistent.
                tokio::time::sleep(Duration::from_millis(200)).await;
                match this.reload() {
                    Ok(()) => {
                        tracing::info!(cert = %this.files.load().cert.display(), "TLS certificate reloaded");
                        seen = this.stamp();
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "TLS files changed but do not load; keeping the previous certificate")
                    }
                }
            }
        });
    }
}
