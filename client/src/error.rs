//! Why a request to the token server failed, in three kinds a caller acts
//! on differently: the server is unreachable or unavailable (retry later, or
//! fall back to a cached credential), it refused the request (fix the
//! identity or the config), or it answered something the protocol does not
//! allow (a bug or a wrong URL). Messages never carry a token or password.

use std::fmt;
use std::path::PathBuf;

use serde::Deserialize;

/// The grant a request used; it names what the server refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grant {
    /// RFC 8693 token exchange of a subject token.
    TokenExchange,
    /// The OAuth2 `password` grant of an account.
    Password,
    /// The OAuth2 `client_credentials` grant over mutual TLS.
    ClientCredentials,
    /// `GET /token` with a refresh token as the Basic password.
    RefreshToken,
}

impl Grant {
    /// What the caller presented, for messages.
    pub fn credential(self) -> &'static str {
        match self {
            Grant::TokenExchange => "subject token",
            Grant::Password => "account password",
            Grant::ClientCredentials => "client certificate",
            Grant::RefreshToken => "refresh token",
        }
    }

    /// The request, for messages.
    pub fn request(self) -> &'static str {
        match self {
            Grant::TokenExchange => "token exchange",
            Grant::Password => "password grant",
            Grant::ClientCredentials => "client_credentials grant",
            Grant::RefreshToken => "token request",
        }
    }
}

/// An OAuth2 error reply (RFC 6749 section 5.2), or the first entry of a
/// distribution-style `{"errors":[{"code","message"}]}` reply.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct OAuthError {
    /// The error code, such as `invalid_grant` or `invalid_target`.
    pub error: String,
    /// The server's explanation.
    #[serde(default)]
    pub error_description: String,
}

/// Longest error code or description kept from a reply.
const MAX_ERROR_TEXT: usize = 400;

impl OAuthError {
    /// The error with control characters replaced and its length bounded:
    /// the text came from the network and is printed to terminals and logs.
    pub(crate) fn sanitized(self) -> Self {
        OAuthError {
            error: printable(&self.error),
            error_description: printable(&self.error_description),
        }
    }
}

fn printable(text: &str) -> String {
    text.chars()
        .take(MAX_ERROR_TEXT)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

impl fmt::Display for OAuthError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.error_description.is_empty() {
            f.write_str(&self.error)
        } else {
            write!(f, "{}: {}", self.error, self.error_description)
        }
    }
}

/// The client could not be set up; nothing was sent.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SetupError {
    /// The token server URL does not parse, or is not http(s).
    #[error("token server URL {url:?} is not an http:// or https:// URL")]
    Url {
        /// The URL as given.
        url: String,
        /// The parser's reason, when it failed to parse.
        #[source]
        source: Option<url::ParseError>,
    },
    /// The CA file could not be read.
    #[error("cannot read the CA file {path}")]
    CaFile {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The CA file holds no usable PEM certificate.
    #[error("the CA file {path} holds no usable PEM certificate")]
    CaPem {
        /// The file.
        path: PathBuf,
        /// The parser's reason, when it failed.
        #[source]
        source: Option<reqwest::Error>,
    },
    /// The client certificate or its key does not parse.
    #[error(
        "the client certificate or key is unusable (expected PEM: the chain, then a PKCS#8, PKCS#1 or SEC1 key)"
    )]
    Identity(#[source] reqwest::Error),
    /// The HTTP client could not be built.
    #[error("cannot build the HTTP client")]
    Build(#[source] reqwest::Error),
}

/// What was wrong with a reply.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BadReply {
    /// The body exceeded the size limit.
    #[error("the reply is larger than {0} bytes")]
    TooLarge(usize),
    /// The body is not the JSON the protocol defines.
    #[error("the reply is not the expected JSON")]
    Json(#[source] serde_json::Error),
    /// An error status without an error body: probably not a regauth token
    /// server, or a proxy in the way.
    #[error("status {0} without an OAuth2 error body (is the URL a regauth token server?)")]
    NoErrorBody(u16),
    /// A status the protocol does not use here (redirects are not followed).
    #[error("unexpected status {0}")]
    Status(u16),
    /// A successful grant reply without a refresh token.
    #[error("no refresh_token in the reply")]
    NoRefreshToken,
    /// A token exchange issued something other than a refresh token.
    #[error("issued_token_type is {0:?}, not a refresh token")]
    IssuedTokenType(String),
    /// The credential says nowhere when it expires.
    #[error("the credential has no expiry (neither an exp claim nor expires_in)")]
    NoExpiry,
    /// The credential had expired on arrival.
    #[error("the credential had already expired on arrival (check the clocks)")]
    Expired,
}

/// Why a request to the token server failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The client could not be set up.
    #[error(transparent)]
    Setup(#[from] SetupError),
    /// No reply: connection refused, name resolution, TLS handshake,
    /// timeout, or the connection dropped mid-reply.
    #[error("cannot reach the token server at {url}")]
    Unreachable {
        /// The URL asked.
        url: String,
        /// The transport's reason.
        #[source]
        source: reqwest::Error,
    },
    /// The server answered that it cannot serve now: a 5xx, or 429 (slow down).
    #[error("the token server at {url} is unavailable: {}", unavailable(*.status, .error.as_ref()))]
    Unavailable {
        /// The URL asked.
        url: String,
        /// The HTTP status.
        status: u16,
        /// The error body, when there was one.
        error: Option<OAuthError>,
        /// How long the server asked clients to wait (`Retry-After`).
        retry_after: Option<std::time::Duration>,
    },
    /// The server refused the request (a 4xx with an error body).
    #[error("{}", refusal(*.grant, .target, .error))]
    Refused {
        /// The grant asked for.
        grant: Grant,
        /// The service (audience) asked for.
        target: String,
        /// The HTTP status.
        status: u16,
        /// The error code and the server's description.
        error: OAuthError,
    },
    /// The reply broke the protocol.
    #[error("unexpected reply from {url}")]
    BadReply {
        /// The URL asked.
        url: String,
        /// What was wrong.
        #[source]
        source: BadReply,
    },
}

impl Error {
    /// True when the server could not be reached or said it cannot serve
    /// now, as opposed to refusing the request: a still-valid cached
    /// credential may be used instead.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Error::Unreachable { .. } | Error::Unavailable { .. })
    }

    /// How long the server asked clients to wait before trying again (its
    /// `Retry-After`, at most [`crate::MAX_RETRY_AFTER`]), when it said.
    pub fn retry_after(&self) -> Option<std::time::Duration> {
        match self {
            Error::Unavailable { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// The OAuth2 error code of a refusal (`invalid_grant`, `invalid_target`…).
    pub fn code(&self) -> Option<&str> {
        match self {
            Error::Refused { error, .. } => Some(&error.error),
            _ => None,
        }
    }

    /// True when the server does not serve the service (audience) asked for.
    pub fn is_unknown_target(&self) -> bool {
        self.code() == Some("invalid_target")
    }
}

fn unavailable(status: u16, error: Option<&OAuthError>) -> String {
    match error {
        Some(e) => format!("status {status}, {e}"),
        None => format!("status {status}"),
    }
}

/// Says what the server objected to. Only the codes that mean "bad
/// credentials" blame the credential: a wrong service is not a wrong password.
fn refusal(grant: Grant, target: &str, error: &OAuthError) -> String {
    match error.error.as_str() {
        "invalid_target" => format!(
            "the token server does not serve {target:?} (the service, or audience, asked for): {error}"
        ),
        "invalid_grant"
        | "invalid_client"
        | "unauthorized_client"
        | "access_denied"
        | "UNAUTHORIZED"
        | "DENIED" => {
            format!(
                "the token server refused the {}: {error}",
                grant.credential()
            )
        }
        _ => format!("the token server refused the {}: {error}", grant.request()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(grant: Grant, code: &str, description: &str) -> Error {
        Error::Refused {
            grant,
            target: "registry.test".into(),
            status: 400,
            error: OAuthError {
                error: code.into(),
                error_description: description.into(),
            },
        }
    }

    #[test]
    fn refusals_blame_the_credential_only_when_the_code_says_so() {
        let wrong_password = refused(Grant::Password, "invalid_grant", "wrong password");
        assert_eq!(
            wrong_password.to_string(),
            "the token server refused the account password: invalid_grant: wrong password"
        );
        let unknown_service = refused(Grant::Password, "invalid_request", "unknown service \"x\"");
        assert_eq!(
            unknown_service.to_string(),
            "the token server refused the password grant: invalid_request: unknown service \"x\""
        );
        let target = refused(Grant::TokenExchange, "invalid_target", "unknown audience");
        assert!(target.is_unknown_target());
        assert!(
            target.to_string().starts_with(
                "the token server does not serve \"registry.test\" (the service, or audience, asked for)"
            ),
            "{target}"
        );
        assert!(!target.is_unavailable());
    }

    #[test]
    fn server_text_is_made_printable_and_bounded() {
        let e = OAuthError {
            error: "invalid_request".into(),
            error_description: format!("a\nforged line\u{1b}[31m{}", "x".repeat(1000)),
        }
        .sanitized();
        assert!(!e.error_description.contains(['\n', '\u{1b}']));
        assert_eq!(e.error_description.chars().count(), MAX_ERROR_TEXT);
    }

    #[test]
    fn unavailable_is_told_apart() {
        let e = Error::Unavailable {
            url: "http://t/token".into(),
            status: 503,
            error: None,
            retry_after: Some(std::time::Duration::from_secs(3)),
        };
        assert!(e.is_unavailable());
        assert_eq!(e.retry_after(), Some(std::time::Duration::from_secs(3)));
        assert_eq!(e.code(), None);
        assert_eq!(
            e.to_string(),
            "the token server at http://t/token is unavailable: status 503"
        );
    }
}
