//! Wire types of the token endpoint: replies and error bodies.
//!
//! Field names follow the distribution token spec and RFC 6749; these are
//! the shapes clients parse, so they change only with the design.

use serde::{Deserialize, Serialize};

/// A successful `/token` reply (GET and POST share it).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TokenReply {
    /// The access token (docker clients read this field).
    pub token: String,
    /// The same access token (OAuth2 clients read this field).
    pub access_token: String,
    /// Always `Bearer`; OAuth2 client libraries require it.
    pub token_type: String,
    /// Seconds until the access token expires.
    pub expires_in: u64,
    /// RFC 3339 time of issue.
    pub issued_at: String,
    /// A refresh token, when one was asked for and the caller authenticated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_token: Option<String>,
    /// Granted scopes, space-separated (POST replies only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
}

/// One entry of a distribution-style error body.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RegistryError {
    /// Machine-readable code, such as `UNAUTHORIZED`.
    pub code: String,
    /// Human-readable message.
    pub message: String,
}

/// The error body of `GET /token`: `{"errors":[{"code","message"}]}`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RegistryErrors {
    /// The errors.
    pub errors: Vec<RegistryError>,
}

/// The error body of `POST /token` (RFC 6749 section 5.2).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct OAuthError {
    /// Error code, such as `invalid_grant`.
    pub error: String,
    /// Human-readable description.
    pub error_description: String,
}
