//! The one place errors become HTTP status codes and bodies.
//!
//! `GET /token` answers in the distribution shape `{"errors":[...]}`;
//! `POST /token` answers in the OAuth2 shape `{"error","error_description"}`.
//! 5xx bodies never carry detail: that goes to the log.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::proto::{OAuthError, RegistryError, RegistryErrors};

/// Everything that can go wrong answering a token request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// The request is malformed (bad header, bad parameter, missing field).
    #[error("{0}")]
    BadRequest(String),
    /// A scope does not parse, or there are too many.
    #[error("{0}")]
    InvalidScope(String),
    /// Credentials were presented and are wrong, expired or revoked.
    #[error("{0}")]
    BadCredentials(String),
    /// POST with a `grant_type` this server does not implement.
    #[error("unsupported grant_type {0:?}; use password or refresh_token")]
    UnsupportedGrant(String),
    /// RFC 8693: the subject token is invalid; the message says why.
    #[error("{0}")]
    SubjectToken(String),
    /// The requested audience is not a service this server issues for.
    #[error("{0}")]
    InvalidTarget(String),
    /// A grant that needs client authentication (a certificate) got none.
    #[error("{0}")]
    InvalidClient(String),
    /// A dependency (an issuer's key endpoint) is unreachable; retry later.
    #[error("{0}")]
    Unavailable(String),
    /// Too many failed attempts from this client or for this account.
    #[error("too many failed attempts; retry in {} s", .0.as_secs().max(1))]
    TooMany(std::time::Duration),
    /// The body is larger than the configured limit.
    #[error("request body is larger than {0} bytes")]
    TooLarge(usize),
    /// A server-side failure; the detail was logged.
    #[error("internal error")]
    Internal,
}

impl TokenError {
    fn status(&self) -> StatusCode {
        match self {
            TokenError::BadRequest(_)
            | TokenError::InvalidScope(_)
            | TokenError::UnsupportedGrant(_)
            | TokenError::SubjectToken(_)
            | TokenError::InvalidTarget(_) => StatusCode::BAD_REQUEST,
            TokenError::BadCredentials(_) | TokenError::InvalidClient(_) => {
                StatusCode::UNAUTHORIZED
            }
            TokenError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            TokenError::TooMany(_) => StatusCode::TOO_MANY_REQUESTS,
            TokenError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            TokenError::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// Short label for logs and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            TokenError::BadRequest(_) => "bad_request",
            TokenError::InvalidScope(_) => "invalid_scope",
            TokenError::BadCredentials(_) => "bad_credentials",
            TokenError::UnsupportedGrant(_) => "unsupported_grant",
            TokenError::TooLarge(_) => "too_large",
            TokenError::SubjectToken(_) => "invalid_subject_token",
            TokenError::InvalidTarget(_) => "invalid_target",
            TokenError::InvalidClient(_) => "invalid_client",
            TokenError::Unavailable(_) => "unavailable",
            TokenError::TooMany(_) => "rate_limited",
            TokenError::Internal => "internal",
        }
    }
}

/// Adds `Retry-After` to a 429.
fn retry_after(e: &TokenError, resp: &mut Response) {
    if let TokenError::TooMany(wait) = e {
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
        let code = match &self.0 {
            TokenError::BadCredentials(_) | TokenError::InvalidClient(_) => "UNAUTHORIZED",
            TokenError::InvalidScope(_) => "INVALID_SCOPE",
            TokenError::UnsupportedGrant(_)
            | TokenError::BadRequest(_)
            | TokenError::SubjectToken(_)
            | TokenError::InvalidTarget(_) => "INVALID_REQUEST",
            TokenError::Unavailable(_) => "UNAVAILABLE",
            TokenError::TooMany(_) => "TOOMANYREQUESTS",
            TokenError::TooLarge(_) => "TOO_LARGE",
            TokenError::Internal => "INTERNAL",
        };
        let body = RegistryErrors {
            errors: vec![RegistryError {
                code: code.to_owned(),
                message: self.0.to_string(),
            }],
        };
        let mut resp = (self.0.status(), Json(body)).into_response();
        retry_after(&self.0, &mut resp);
        if matches!(
            self.0,
            TokenError::BadCredentials(_) | TokenError::InvalidClient(_)
        ) {
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
        let (status, error) = match &self.0 {
            // RFC 6749 5.2: a wrong password or refresh token is invalid_grant, 400.
            TokenError::BadCredentials(_) => (StatusCode::BAD_REQUEST, "invalid_grant"),
            TokenError::InvalidScope(_) => (StatusCode::BAD_REQUEST, "invalid_scope"),
            TokenError::UnsupportedGrant(_) => (StatusCode::BAD_REQUEST, "unsupported_grant_type"),
            TokenError::BadRequest(_) | TokenError::TooLarge(_) | TokenError::SubjectToken(_) => {
                (self.0.status(), "invalid_request")
            }
            TokenError::InvalidTarget(_) => (StatusCode::BAD_REQUEST, "invalid_target"),
            TokenError::InvalidClient(_) => (StatusCode::UNAUTHORIZED, "invalid_client"),
            TokenError::Unavailable(_) => {
                (StatusCode::SERVICE_UNAVAILABLE, "temporarily_unavailable")
            }
            TokenError::TooMany(_) => (StatusCode::TOO_MANY_REQUESTS, "slow_down"),
            TokenError::Internal => (StatusCode::INTERNAL_SERVER_ERROR, "server_error"),
        };
        let body = OAuthError {
            error: error.to_owned(),
            error_description: self.0.to_string(),
        };
        let mut resp = (status, Json(body)).into_response();
        retry_after(&self.0, &mut resp);
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
        let resp = GetError(TokenError::BadCredentials(
            "invalid username or password".into(),
        ))
        .into_response();
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
        let resp = PostError(TokenError::UnsupportedGrant("magic".into())).into_response();
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
        assert_eq!(body(resp).await["error"], "unsupported_grant_type");
        let resp = PostError(TokenError::TooLarge(10)).into_response();
        assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    }

    #[tokio::test]
    async fn internal_errors_hide_detail() {
        let b = body(PostError(TokenError::Internal).into_response()).await;
        assert_eq!(b["error_description"], "internal error");
    }
}
