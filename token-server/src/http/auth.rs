//! Turning presented credentials into a [`Principal`].
//!
//! Functions here hold passwords and tokens, so they are instrumented with
//! `skip_all` and log only outcomes.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use axum::http::{HeaderMap, header};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;

use super::AppState;
use super::error::TokenError;
use crate::identity::account::Verified;
use crate::identity::{Kind, Principal};
use crate::refresh::{RefreshError, RefreshTokens};
use crate::secret::Secret;

/// Longest `Authorization` header value accepted.
const MAX_AUTH_HEADER: usize = 8 * 1024;

/// Credentials from an HTTP Basic header.
#[derive(Debug)]
pub struct BasicCredentials {
    /// The user name (not secret).
    pub username: String,
    /// The password or refresh token.
    pub password: Secret,
}

/// Parses the `Authorization` header: `None` when absent, an error when
/// present but not well-formed Basic credentials.
#[tracing::instrument(level = "debug", skip_all)]
pub fn basic_credentials(headers: &HeaderMap) -> Result<Option<BasicCredentials>, TokenError> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let bad = |why: &str| TokenError::BadRequest(format!("malformed Authorization header: {why}"));
    if value.len() > MAX_AUTH_HEADER {
        return Err(bad("too long"));
    }
    let value = value.to_str().map_err(|_| bad("not ASCII"))?;
    let (scheme, rest) = value
        .split_once(' ')
        .ok_or_else(|| bad("expected `Basic <credentials>`"))?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return Err(bad("only the Basic scheme is accepted here"));
    }
    let decoded = STANDARD
        .decode(rest.trim())
        .map_err(|_| bad("credentials are not base64"))?;
    let text = String::from_utf8(decoded).map_err(|_| bad("credentials are not UTF-8"))?;
    let (user, password) = text
        .split_once(':')
        .ok_or_else(|| bad("credentials lack a ':'"))?;
    Ok(Some(BasicCredentials {
        username: user.to_owned(),
        password: Secret::new(password.as_bytes().to_vec()),
    }))
}

/// How a caller proved who it is.
#[derive(Debug)]
pub enum Authenticated {
    /// No credentials.
    Anonymous,
    /// An account password.
    Password {
        /// The account.
        principal: Principal,
        /// Password-hash fingerprint, bound into refresh tokens.
        pwv: String,
    },
    /// A verified client certificate, or a token from a trusted issuer.
    Identity {
        /// The node or workload.
        principal: Principal,
    },
    /// A refresh token this server issued; it is handed back unchanged.
    Refresh {
        /// Who the token stands for (with current account labels).
        principal: Principal,
        /// The token itself.
        token: Secret,
    },
}

impl Authenticated {
    /// The principal, or anonymous.
    pub fn principal(&self) -> Principal {
        match self {
            Authenticated::Anonymous => Principal::anonymous(),
            Authenticated::Password { principal, .. }
            | Authenticated::Refresh { principal, .. }
            | Authenticated::Identity { principal } => principal.clone(),
        }
    }
}

/// Authenticates Basic credentials: a refresh token if the password has the
/// shape of one, otherwise an account password.
#[tracing::instrument(level = "debug", skip_all)]
pub async fn basic(
    state: &Arc<AppState>,
    creds: BasicCredentials,
    client: Option<SocketAddr>,
    now: SystemTime,
) -> Result<Authenticated, TokenError> {
    let as_text = std::str::from_utf8(creds.password.expose()).unwrap_or_default();
    if RefreshTokens::looks_like_token(as_text) {
        return refresh(state, creds.password, now);
    }
    password(state, &creds.username, creds.password, client).await
}

/// Checks an account password, using the cache first and the slow hash check
/// on a blocking thread otherwise.
#[tracing::instrument(level = "debug", skip_all)]
pub async fn password(
    state: &Arc<AppState>,
    username: &str,
    password: Secret,
    client: Option<SocketAddr>,
) -> Result<Authenticated, TokenError> {
    let settings = state.settings();
    // Only existing accounts get their own record, so a spray of made-up
    // names cannot fill the table; the address is limited either way.
    let account = settings.accounts.principal(username).map(|_| username);
    let addr = client.map(|c| c.ip());
    // Refuse before any hash is computed while in backoff.
    if let Err(wait) = state.limiter.check(addr, account, Instant::now()) {
        tracing::info!(
            target: "regauth::audit",
            outcome = "throttled",
            client = %client.map_or_else(|| "-".to_owned(), |c| c.to_string()),
            retry_after = wait.as_secs(),
            "password check refused: too many failed attempts"
        );
        return Err(TokenError::TooMany(wait));
    }
    let verified =
        match settings
            .accounts
            .verify_cached(username, password.expose(), Instant::now())
        {
            Some(v) => {
                state.metrics().password_cache(true);
                v
            }
            None => {
                state.metrics().password_cache(false);
                let user = username.to_owned();
                tokio::task::spawn_blocking(move || {
                    settings
                        .accounts
                        .verify_slow(&user, password.expose(), Instant::now())
                })
                .await
                .map_err(|e| {
                    tracing::error!(error = %e, "password check task failed");
                    TokenError::Internal
                })?
            }
        };
    match verified {
        Verified::Yes { principal, pwv } => {
            state.limiter.success(account);
            Ok(Authenticated::Password { principal, pwv })
        }
        Verified::No => {
            state.limiter.failure(addr, account, Instant::now());
            Err(TokenError::BadCredentials(
                "invalid username or password".into(),
            ))
        }
    }
}

/// Verifies a refresh token and re-checks the account it was issued to.
#[tracing::instrument(level = "debug", skip_all)]
pub fn refresh(
    state: &Arc<AppState>,
    token: Secret,
    now: SystemTime,
) -> Result<Authenticated, TokenError> {
    let settings = state.settings();
    let text =
        std::str::from_utf8(token.expose()).map_err(|_| refresh_error(RefreshError::Invalid))?;
    let claims = settings.refresh.verify(text, now).map_err(refresh_error)?;
    let principal = if claims.principal.kind == Kind::Account {
        // A removed account or a changed password revokes its tokens.
        let current = settings.accounts.current_pwv(&claims.principal.name);
        if current.is_none() || current != claims.pwv {
            return Err(refresh_error(RefreshError::Revoked));
        }
        settings
            .accounts
            .principal(&claims.principal.name)
            .ok_or(refresh_error(RefreshError::Revoked))?
    } else {
        claims.principal
    };
    Ok(Authenticated::Refresh { principal, token })
}

fn refresh_error(e: RefreshError) -> TokenError {
    match e {
        RefreshError::Sign => TokenError::Internal,
        e => TokenError::BadCredentials(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(v: &[u8]) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, HeaderValue::from_bytes(v).unwrap());
        h
    }

    #[test]
    fn parses_basic() {
        let c = basic_credentials(&headers(b"Basic YWxpY2U6cDpx"))
            .unwrap()
            .unwrap();
        assert_eq!(c.username, "alice");
        assert_eq!(c.password.expose(), b"p:q");
        assert!(basic_credentials(&HeaderMap::new()).unwrap().is_none());
    }

    #[test]
    fn malformed_basic_is_a_clear_error() {
        for bad in [
            &b"Basic"[..],
            b"Bearer abc",
            b"Basic !!!notbase64",
            b"Basic YWxpY2U=",
            b"Basic /w==",
            b"Basic \xff\xfe",
        ] {
            match basic_credentials(&headers(bad)) {
                Err(TokenError::BadRequest(m)) => {
                    assert!(m.starts_with("malformed Authorization header"), "{m}")
                }
                other => panic!("{:?} gave {other:?}", String::from_utf8_lossy(bad)),
            }
        }
        let long = format!("Basic {}", "A".repeat(MAX_AUTH_HEADER));
        assert!(basic_credentials(&headers(long.as_bytes())).is_err());
    }
}
