//! How to reach a token server, and the HTTP client built from it.

use std::path::PathBuf;
use std::time::Duration;

use crate::error::SetupError;
use crate::secret::Secret;

/// Longest a connection may take to open, whatever the request timeout.
const MAX_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How to reach one token server.
#[derive(Debug, Clone)]
pub struct Settings {
    pub(crate) token_server: String,
    pub(crate) ca_file: Option<PathBuf>,
    pub(crate) timeout: Duration,
    pub(crate) identity: Option<Secret>,
    pub(crate) client_id: String,
    pub(crate) user_agent: String,
}

impl Settings {
    /// Settings for the token server at `token_server`, its base URL such as
    /// `https://auth.example.com:5001` (`/token` is appended), presenting
    /// `client_id` as the OAuth2 client. Defaults: system roots only, a 10 s
    /// timeout, no client certificate.
    pub fn new(token_server: &str, client_id: &str) -> Self {
        Settings {
            token_server: token_server.trim_end_matches('/').to_owned(),
            ca_file: None,
            timeout: Duration::from_secs(10),
            identity: None,
            client_id: client_id.to_owned(),
            user_agent: client_id.to_owned(),
        }
    }

    /// Trusts the PEM certificates in `path` besides the system roots.
    pub fn ca_file(mut self, path: Option<PathBuf>) -> Self {
        self.ca_file = path;
        self
    }

    /// Bounds each request, from connecting to the last byte of the reply.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Presents a client certificate (mutual TLS): `pem` holds the chain,
    /// then the private key.
    pub fn identity(mut self, pem: Option<Secret>) -> Self {
        self.identity = pem;
        self
    }

    /// Sends `user_agent` (by default the client ID).
    pub fn user_agent(mut self, user_agent: &str) -> Self {
        self.user_agent = user_agent.to_owned();
        self
    }

    /// The token server's base URL, without a trailing slash.
    pub fn token_server(&self) -> &str {
        &self.token_server
    }
}

/// Builds an HTTP client from `settings`: rustls with the system roots and
/// the CA file, the timeout, the client certificate if any, no redirects
/// (a token endpoint has no business redirecting a password), and the
/// proxy variables `HTTPS_PROXY`, `HTTP_PROXY`, `ALL_PROXY` and `NO_PROXY`.
pub fn http_client(settings: &Settings) -> Result<reqwest::Client, SetupError> {
    let mut builder = reqwest::Client::builder()
        .timeout(settings.timeout)
        .connect_timeout(settings.timeout.min(MAX_CONNECT_TIMEOUT))
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(settings.user_agent.as_str());
    if let Some(path) = &settings.ca_file {
        let pem = std::fs::read(path).map_err(|source| SetupError::CaFile {
            path: path.clone(),
            source,
        })?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| SetupError::CaPem {
            path: path.clone(),
            source: Some(e),
        })?;
        if certs.is_empty() {
            return Err(SetupError::CaPem {
                path: path.clone(),
                source: None,
            });
        }
        for cert in certs {
            builder = builder.add_root_certificate(cert);
        }
    }
    if let Some(pem) = &settings.identity {
        let identity =
            reqwest::Identity::from_pem(pem.expose().as_bytes()).map_err(SetupError::Identity)?;
        builder = builder.identity(identity);
    }
    builder.build().map_err(SetupError::Build)
}

/// Why a body could not be read whole.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The connection failed mid-body (or the timeout struck).
    #[error("the reply was cut off")]
    Transport(#[source] reqwest::Error),
    /// The body exceeded the limit.
    #[error("the reply is larger than {0} bytes")]
    TooLarge(usize),
}

/// Reads `response`'s body, refusing more than `max` bytes, whatever the
/// `Content-Length` says (or chunked bodies, which have none).
pub async fn read_limited(
    mut response: reqwest::Response,
    max: usize,
) -> Result<Vec<u8>, ReadError> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(ReadError::Transport)? {
        if body.len() + chunk.len() > max {
            return Err(ReadError::TooLarge(max));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ca_and_identity_problems_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let settings = Settings::new("http://127.0.0.1:1", "test").ca_file(Some(missing.clone()));
        match http_client(&settings) {
            Err(SetupError::CaFile { path, .. }) => assert_eq!(path, missing),
            other => panic!("{other:?}"),
        }
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "no certificates here\n").unwrap();
        let settings = Settings::new("http://127.0.0.1:1", "test").ca_file(Some(empty));
        assert!(matches!(
            http_client(&settings),
            Err(SetupError::CaPem { .. })
        ));
        let settings = Settings::new("http://127.0.0.1:1", "test")
            .identity(Some(Secret::from("-----BEGIN NOTHING-----\n")));
        let err = http_client(&settings).unwrap_err();
        assert!(matches!(err, SetupError::Identity(_)), "{err:?}");
        assert!(
            !format!("{err:?}").contains("BEGIN NOTHING"),
            "the key never reaches a message"
        );
    }

    #[test]
    fn the_base_url_loses_its_trailing_slash() {
        let s = Settings::new("https://auth.example.com:5001/", "c");
        assert_eq!(s.token_server(), "https://auth.example.com:5001");
        assert_eq!(s.timeout, Duration::from_secs(10));
    }
}
