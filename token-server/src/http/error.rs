//! The one place errors become HTTP status codes and bodies.
//!
//! `GET /token` answers in the distribution shape `{"errors":[...]}`;
//! `POST /token` answers in the OAuth2 shape `{"error","error_description"}`.
//! 5xx bodies never carry detail: that goes to the log.

use std::time::Duration;

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::request::RequestError;
use crate::authenticate::AuthError;
use crate::proto::{OAuthError, RegistryError, RegistryErrors};
use crate::scope::ScopeListError;
use crate::token::IssueError;

/// Everything that can go wrong answering a token request.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The request is malformed (bad header, bad parameter, missing field).
    #[error(transparent)]
    Request(#[from] RequestError),
    /// A scope does not parse, or there are too many.
    #[error(transparent)]
    Scope(#[from] ScopeListError),
    /// No `service`, and more than one is served.
    #[error("missing service parameter")]
    MissingService,
    /// A `service` this server does not issue tokens for.
    #[error("unknown service {0:?}")]
    UnknownService(String),
    /// RFC 8693: an `audience` this server does not issue tokens for.
    #[error("unknown audience {0:?}")]
    UnknownAudience(String),
    /// The caller's credentials did not check out.
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// A token could not be issued; the detail was logged.
    #[error("internal error")]
    Internal(#[from] IssueError),
}

impl TokenError {
    /// Short label for logs and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            TokenError::Request(e) => e.reason(),
            TokenError::Scope(_) => "invalid_scope",
            TokenError::MissingService | TokenError::UnknownService(_) => "bad_request",
            TokenError::UnknownAudience(_) => "invalid_target",
            TokenError::Auth(e) => e.reason(),
            TokenError::Internal(_) => "internal",
        }
    }

    fn retry_after(&self) -> Option<Duration> {
        match self {
            TokenError::Auth(AuthError::Throttled(t)) => Some(t.0),
            TokenError::Auth(AuthError::Busy(wait)) => Some(*wait),
            TokenError::Auth(AuthError::RevocationUnavailable) => Some(Duration::from_secs(1)),
            _ => None,
        }
    }
}

/// The one mapping from an error to its status and codes: the status, the
/// distribution error code (`GET`), and the OAuth2 error code (`POST`).
fn wire(e: &TokenError) -> (StatusCode, &'static str, StatusCode, &'static str) {
    use StatusCode as S;
    match e {
        TokenError::Request(RequestError::TooLarge(_)) => (
            S::PAYLOAD_TOO_LARGE,
            "TOO_LARGE",
            S::PAYLOAD_TOO_LARGE,
            "invalid_request",
        ),
        TokenError::Request(RequestError::UnsupportedGrant(_)) => (
            S::BAD_REQUEST,
            "INVALID_REQUEST",
            S::BAD_REQUEST,
            "unsupported_grant_type",
        ),
        TokenError::Request(_) | TokenError::MissingService | TokenError::UnknownService(_) => (
            S::BAD_REQUEST,
            "INVALID_REQUEST",
            S::BAD_REQUEST,
            "invalid_request",
        ),
        TokenError::Scope(_) => (
            S::BAD_REQUEST,
            "INVALID_SCOPE",
            S::BAD_REQUEST,
            "invalid_scope",
        ),
        TokenError::UnknownAudience(_) => (
            S::BAD_REQUEST,
            "INVALID_REQUEST",
            S::BAD_REQUEST,
            "invalid_target",
        ),
        // RFC 6749 5.2: a wrong password or refresh token is invalid_grant, 400.
        TokenError::Auth(
            AuthError::BadPassword | AuthError::Refresh(_) | AuthError::Revoked(_),
        ) => (
            S::UNAUTHORIZED,
            "UNAUTHORIZED",
            S::BAD_REQUEST,
            "invalid_grant",
        ),
        TokenError::Auth(AuthError::SubjectToken(_)) => (
            S::BAD_REQUEST,
            "INVALID_REQUEST",
            S::BAD_REQUEST,
            "invalid_request",
        ),
        TokenError::Auth(
            AuthError::IssuerUnavailable(_) | AuthError::Busy(_) | AuthError::RevocationUnavailable,
        ) => (
            S::SERVICE_UNAVAILABLE,
            "UNAVAILABLE",
            S::SERVICE_UNAVAILABLE,
            "temporarily_unavailable",
        ),
        TokenError::Auth(
            AuthError::NoClientCertificate
            | AuthError::UnusableCertificate
            | AuthError::UntrustedCertificate,
        ) => (
            S::UNAUTHORIZED,
            "UNAUTHORIZED",
            S::UNAUTHORIZED,
            "invalid_client",
        ),
        TokenError::Auth(AuthError::Throttled(_)) => (
            S::TOO_MANY_REQUESTS,
            "TOOMANYREQUESTS",
            S::TOO_MANY_REQUESTS,
            "slow_down",
        ),
        TokenError::Auth(AuthError::Internal) | TokenError::Internal(_) => (
            S::INTERNAL_SERVER_ERROR,
            "INTERNAL",
            S::INTERNAL_SERVER_ERROR,
            "server_error",
        ),
    }
}

/// The message a client sees: 5xx bodies never carry detail.
fn message(e: &TokenError) -> String {
    match e {
        TokenError::Auth(AuthError::Internal) | TokenError::Internal(_) => {
            "internal error".to_owned()
        }
        e => e.to_string(),
    }
}

/// Adds `Retry-After` to a 429.
fn add_retry_after(e: &TokenError, resp: &mut Response) {
    if let Some(wait) = e.retry_after() {
        let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        if let Ok(v) = HeaderValue::from_str(&secs.max(1).to_string()) {
            resp.headers_mut().insert(header::RETRY_AFTER, v);
        }
    }
}

/// A [`TokenError`] rendered for `GET /token`.
#[derive(Debug)]
pub struct GetError(pub TokenError);

impl From<TokenError> for GetError {
    fn from(e: TokenError) -> Self {
        GetError(e)
    }
}

impl IntoResponse for GetError {
    fn into_response(self) -> Response {
        let (status, code, _, _) = wire(&self.0);
        let body = RegistryErrors {
            errors: vec![RegistryError {
                code: code.to_owned(),
                message: message(&self.0),
            }],
        };
        let mut resp = (status, Json(body)).into_response();
        add_retry_after(&self.0, &mut resp);
        if status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"regauth\""),
            );
        }
        resp
    }
}

/// A [`TokenError`] rendered for `POST /token`.
#[derive(Debug)]
pub struct PostError(pub TokenError);

impl From<TokenError> for PostError {
    fn from(e: TokenError) -> Self {
        PostError(e)
    }
}

impl IntoResponse for PostError {
    fn into_response(self) -> Response {
        let (_, _, status, error) = wire(&self.0);
        let body = OAuthError {
            error: error.to_owned(),
            error_description: message(&self.0),
        };
        let mut resp = (status, Json(body)).into_response();
        add_retry_after(&self.0, &mut resp);
        resp.headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn body(resp: Response) -> serde_json::Value {
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 16)
            .await
            .unwrap();
        serde_json::from_slice(&bytes).unwrap()
    }

    #[tokio::test]
    async fn get_unauthorized_has_challenge_and_registry_shape() {
        let resp = GetError(TokenError::Auth(AuthError::BadPassword)).into_response();
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
        assert!(
            resp.headers()[header::WWW_AUTHENTICATE]
                .to_str()
                .unwrap()
                .starts_with("Basic ")
        );
        let b = body(resp).await;
        assert_eq!(b["errors"][0]["code"], "UNAUTHORIZED");
    }

    #[tokio::test]
    async fn post_uses_oauth_shape() {
        let resp = PostError(TokenError::Request(RequestError::UnsupportedGrant(
            "magic".into(),
        )))
        .into_response();
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
        assert_eq!(body(resp).await["error"], "unsupported_grant_type");
        let resp = PostError(TokenError::Request(RequestError::TooLarge(10))).into_response();
        assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    }

    #[tokio::test]
    async fn internal_errors_hide_detail() {
        let e = IssueError::Random(crate::secret::RandomError);
        let b = body(PostError(TokenError::Internal(e)).into_response()).await;
        assert_eq!(b["error_description"], "internal error");
    }
}
