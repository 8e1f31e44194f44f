//! The tokens this server issues: short-lived access tokens a registry
//! verifies offline, and refresh tokens only this server verifies.
//!
//! Both share the time claims and token IDs made here.

pub mod access;
pub mod refresh;

use std::time::{Duration, SystemTime};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use crate::clock::unix;
use crate::secret::{RandomError, random};

/// How far `nbf` is set before `iat`, to absorb clock skew between this
/// server and the registry (which itself allows 60 s).
pub const NBF_SKEW: Duration = Duration::from_secs(10);

/// The validity window of a token issued at `now` for `ttl`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// Issued at (seconds since the epoch).
    pub iat: u64,
    /// Not before: a little before `iat`.
    pub nbf: u64,
    /// Expiry.
    pub exp: u64,
}

impl Window {
    /// The window of a token issued at `now` that lives `ttl`.
    pub fn starting(now: SystemTime, ttl: Duration) -> Self {
        let iat = unix(now);
        Window {
            iat,
            nbf: iat.saturating_sub(NBF_SKEW.as_secs()),
            exp: iat.saturating_add(ttl.as_secs()),
        }
    }
}

/// 128 random bits, base64url: unguessable token IDs.
pub fn random_id() -> Result<String, RandomError> {
    Ok(URL_SAFE_NO_PAD.encode(random::<16>()?))
}

/// Why a token could not be issued: always a server-side fault.
#[derive(Debug, thiserror::Error)]
pub enum IssueError {
    /// The claims could not be serialized.
    #[error("encoding the claims failed")]
    Encode(#[from] serde_json::Error),
    /// No token ID could be made.
    #[error(transparent)]
    Random(#[from] RandomError),
    /// The signing key refused to sign.
    #[error(transparent)]
    Sign(#[from] crate::keys::KeyError),
    /// The refresh-token MAC failed.
    #[error("signing a refresh token failed")]
    Mac(#[source] jsonwebtoken::errors::Error),
    /// A credential was to be issued to a caller that cannot hold one (an
    /// anonymous caller); refusing is the safe answer.
    #[error("no credential can be issued to this caller")]
    NoCredential,
}
