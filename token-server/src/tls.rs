//! HTTPS serving with optional client certificates (RFC 8705 style): the
//! rustls settings, the files they come from, and their reload on change.
//!
//! Handshakes run in each connection's own task (see `serve`).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

use crate::identity::certificate::ClientCas;

/// Where the TLS certificate, key and client CA are on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// Certificate chain.
    pub cert: PathBuf,
    /// Private key.
    pub key: PathBuf,
    /// Client CA bundle.
    pub client_ca: Option<PathBuf>,
}

/// HTTPS settings: the rustls config and the files it was loaded from.
#[derive(Debug, Clone)]
pub struct TlsSettings {
    /// The loaded rustls server config.
    pub config: Arc<rustls::ServerConfig>,
    /// The files, watched for changes.
    pub files: TlsFiles,
    /// The client CAs trusted now (none without `client_ca`): the same
    /// bundle as `config`'s, kept current when the watched files change, so
    /// that refresh tokens minted from a certificate are checked against
    /// what TLS trusts.
    pub client_cas: Arc<ArcSwap<ClientCas>>,
}

impl TlsSettings {
    /// Loads the files.
    pub fn load(files: TlsFiles) -> Result<Self, TlsError> {
        let (config, cas) = server_config(&files)?;
        Ok(TlsSettings {
            config,
            files,
            client_cas: Arc::new(ArcSwap::from_pointee(cas)),
        })
    }
}

/// Why TLS settings could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The certificate chain file is unreadable or holds no certificate.
    #[error("{path}: no usable CERTIFICATE blocks")]
    Cert {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: PemError,
    },
    /// The key file is unreadable or holds no private key.
    #[error("{path}: no usable private key")]
    Key {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: PemError,
    },
    /// The client CA bundle is unusable.
    #[error("{path}: unusable client CA bundle")]
    ClientCa {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: PemError,
    },
    /// rustls rejected the combination (for example a key that does not match).
    #[error("TLS configuration rejected")]
    Config(#[source] rustls::Error),
}

/// Why a PEM file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum PemError {
    /// Unreadable, or not PEM.
    #[error(transparent)]
    Pem(#[from] rustls_pki_types::pem::Error),
    /// Readable PEM, but without the expected block.
    #[error("the file holds no such block")]
    Empty,
    /// A certificate rustls refuses as a trust anchor or verifier input.
    #[error(transparent)]
    Rustls(#[from] rustls::Error),
    /// The client verifier could not be built.
    #[error(transparent)]
    Verifier(#[from] rustls::server::VerifierBuilderError),
}

fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, PemError> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)?.collect::<Result<_, _>>()?;
    if certs.is_empty() {
        return Err(PemError::Empty);
    }
    Ok(certs)
}

/// Builds the rustls server config, and the client CAs it trusts. With a
/// client CA, clients may present a certificate, which must then chain to
/// that CA and be within its validity period; clients without one still
/// connect and use passwords or tokens.
fn server_config(files: &TlsFiles) -> Result<(Arc<rustls::ServerConfig>, ClientCas), TlsError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let chain = certs(&files.cert).map_err(|source| TlsError::Cert {
        path: files.cert.clone(),
        source,
    })?;
    let private = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| TlsError::Key {
        path: files.key.clone(),
        source: e.into(),
    })?;
    let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Config)?;
    let (builder, cas) = match &files.client_ca {
        None => (builder.with_no_client_auth(), ClientCas::default()),
        Some(ca) => {
            let fail = |source: PemError| TlsError::ClientCa {
                path: ca.clone(),
                source,
            };
            let bundle = certs(ca).map_err(fail)?;
            let cas = ClientCas::new(&bundle);
            let mut roots = rustls::RootCertStore::empty();
            for c in bundle {
                roots.add(c).map_err(|e| fail(e.into()))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .allow_unauthenticated()
                .build()
                .map_err(|e| fail(e.into()))?;
            (builder.with_client_cert_verifier(verifier), cas)
        }
    };
    let mut config = builder
        .with_single_cert(chain, private)
        .map_err(TlsError::Config)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok((Arc::new(config), cas))
}

/// The TLS settings in force, reloaded when the certificate, key or client
/// CA files change on disk, without dropping established connections.
pub struct TlsReloader {
    files: ArcSwap<TlsFiles>,
    current: ArcSwap<rustls::ServerConfig>,
    /// The client CAs of the settings in force, updated with `current`.
    client_cas: ArcSwap<ArcSwap<ClientCas>>,
}

impl TlsReloader {
    /// Starts from settings already loaded.
    pub fn new(settings: &TlsSettings) -> Arc<Self> {
        Arc::new(TlsReloader {
            files: ArcSwap::from_pointee(settings.files.clone()),
            current: ArcSwap::new(Arc::clone(&settings.config)),
            client_cas: ArcSwap::new(Arc::clone(&settings.client_cas)),
        })
    }

    /// An acceptor for the settings in force now.
    pub fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.current.load_full())
    }

    /// Reloads from the files now; on error the settings in force stay.
    pub fn reload(&self) -> Result<(), TlsError> {
        let (config, cas) = server_config(&self.files.load())?;
        self.current.store(config);
        self.client_cas.load().store(Arc::new(cas));
        Ok(())
    }

    /// Replaces the settings and the files to watch (after a config reload).
    pub fn replace(&self, settings: &TlsSettings) {
        self.files.store(Arc::new(settings.files.clone()));
        self.current.store(Arc::clone(&settings.config));
        self.client_cas.store(Arc::clone(&settings.client_cas));
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
