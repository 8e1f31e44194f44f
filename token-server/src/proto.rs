//! Wire types of the token endpoint: what a request presents, replies and
//! error bodies.
//!
//! Field names follow the distribution token spec and RFC 6749; these are
//! the shapes clients parse, so they change only with the design.

use serde::Serialize;

use crate::secret::Secret;

/// What a token request presents to prove who is asking, parsed once from
/// the request (`http::request`).
#[derive(Debug)]
pub enum Grant {
    /// No credentials: a verified client certificate, if any, authenticates;
    /// otherwise the caller is anonymous.
    NoCredentials,
    /// `GET` with HTTP Basic: an account password, or a refresh token given
    /// as the password.
    Basic {
        /// The user name (not secret).
        username: String,
        /// The password or refresh token.
        password: Secret,
    },
    /// `grant_type=password`; clients handed a refresh token as a password
    /// (the kubelet path) send it here too.
    Password {
        /// The user name (not secret).
        username: String,
        /// The password or refresh token.
        password: Secret,
    },
    /// `grant_type=refresh_token`.
    RefreshToken(Secret),
    /// `grant_type=client_credentials`, authenticated by the TLS client
    /// certificate (RFC 8705 style).
    ClientCredentials,
    /// RFC 8693 token exchange of a token from a trusted issuer.
    TokenExchange {
        /// The subject token.
        subject_token: Secret,
        /// `annotation.KEY=VALUE` pairs a kubelet plugin forwarded; recorded
        /// for the audit trail only, since nothing vouches for them.
        annotations: Vec<(String, String)>,
    },
}

impl Grant {
    /// The grant's name for logs and metrics.
    pub fn name(&self) -> &'static str {
        match self {
            Grant::NoCredentials => "none",
            Grant::Basic { .. } => "basic",
            Grant::Password { .. } => "password",
            Grant::RefreshToken(_) => "refresh_token",
            Grant::ClientCredentials => "client_credentials",
            Grant::TokenExchange { .. } => "token_exchange",
        }
    }

    /// The user name a password grant claims, for the audit trail.
    pub fn username(&self) -> Option<&str> {
        match self {
            Grant::Basic { username, .. } | Grant::Password { username, .. } => Some(username),
            _ => None,
        }
    }
}

/// What a token request asks for, whichever method carried it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TokenParams {
    /// The registry `service` (for token exchange: `audience`, else `service`).
    pub service: Option<String>,
    /// Raw scope strings, one per scope.
    pub scopes: Vec<String>,
    /// True when the caller asked for a refresh token too.
    pub offline: bool,
    /// The client's self-declared ID, truncated, for the audit trail.
    pub client_id: Option<String>,
}

/// A successful `/token` reply (GET and POST share it).
#[derive(Debug, Clone, Serialize)]
pub struct TokenReply {
    /// The access token (docker clients read this field).
    pub token: Secret,
    /// The same access token (OAuth2 clients read this field).
    pub access_token: Secret,
    /// Always `Bearer`; OAuth2 client libraries require it.
    pub token_type: String,
    /// Seconds until the access token expires.
    pub expires_in: u64,
    /// RFC 3339 time of issue.
    pub issued_at: String,
    /// A refresh token, when one was asked for and the caller authenticated.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refresh_token: Option<Secret>,
    /// Granted scopes, space-separated (POST replies only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
}

/// One entry of a distribution-style error body.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct RegistryError {
    /// Machine-readable code, such as `UNAUTHORIZED`.
    pub code: String,
    /// Human-readable message.
    pub message: String,
}

/// The error body of `GET /token`: `{"errors":[{"code","message"}]}`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct RegistryErrors {
    /// The errors.
    pub errors: Vec<RegistryError>,
}

/// The error body of `POST /token` (RFC 6749 section 5.2).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct OAuthError {
    /// Error code, such as `invalid_grant`.
    pub error: String,
    /// Human-readable description.
    pub error_description: String,
}

/// The RFC 8693 token-exchange type of a JWT subject token.
pub const TOKEN_TYPE_JWT: &str = "urn:ietf:params:oauth:token-type:jwt";
/// The RFC 8693 token-exchange type of an OIDC ID token.
pub const TOKEN_TYPE_ID_TOKEN: &str = "urn:ietf:params:oauth:token-type:id_token";
/// The RFC 8693 type of the token this server issues in exchange.
pub const TOKEN_TYPE_REFRESH: &str = "urn:ietf:params:oauth:token-type:refresh_token";
/// The RFC 8693 grant type.
pub const GRANT_TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";

/// A successful token-exchange reply (RFC 8693 section 2.2.1). The issued
/// token is a refresh token: the registry credential.
#[derive(Debug, Clone, Serialize)]
pub struct ExchangeReply {
    /// The issued token (RFC 8693 puts any issued token here).
    pub access_token: Secret,
    /// The same token, for clients that look for a refresh token.
    pub refresh_token: Secret,
    /// Always [`TOKEN_TYPE_REFRESH`].
    pub issued_token_type: String,
    /// `N_A`: the issued token is not an access token (RFC 8693 2.2.1).
    pub token_type: String,
    /// Seconds until the issued token expires.
    pub expires_in: u64,
    /// Scopes the credential would be granted now, if scopes were asked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
}

/// RFC 8414 authorization server metadata.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ServerMetadata {
    /// This server's URL.
    pub issuer: String,
    /// Where to get tokens.
    pub token_endpoint: String,
    /// Where the signing keys are.
    pub jwks_uri: String,
    /// Grants `/token` accepts.
    pub grant_types_supported: Vec<String>,
    /// How clients authenticate.
    pub token_endpoint_auth_methods_supported: Vec<String>,
    /// Token types accepted as `subject_token_type`.
    pub subject_token_types_supported: Vec<String>,
}
