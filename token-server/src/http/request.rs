//! Parsing a `/token` request, once, into what it presents ([`Grant`]) and
//! what it asks for ([`TokenParams`]).
//!
//! `GET` carries its parameters in the query and credentials in an HTTP
//! Basic header; `POST` carries both in a form body, which may be chunked
//! with no `Content-Length` (skopeo sends it that way).

use axum::body::Body;
use axum::http::{HeaderMap, header};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;

use super::form::{Form, FormError};
use crate::proto::{
    GRANT_TOKEN_EXCHANGE, Grant, TOKEN_TYPE_ID_TOKEN, TOKEN_TYPE_JWT, TOKEN_TYPE_REFRESH,
    TokenParams,
};
use crate::secret::Secret;

/// Longest query string accepted on `GET /token`.
const MAX_QUERY: usize = 8 * 1024;

/// Longest `Authorization` header value accepted.
const MAX_AUTH_HEADER: usize = 8 * 1024;

/// Longest client ID kept for the audit trail.
const MAX_CLIENT_ID: usize = 64;

/// Most `annotation.*` pairs kept from a token exchange, and their sizes.
const MAX_ANNOTATIONS: usize = 16;
const MAX_ANNOTATION_KEY: usize = 128;
const MAX_ANNOTATION_VALUE: usize = 256;

/// A parsed token request.
#[derive(Debug)]
pub struct TokenRequest {
    /// What it presents.
    pub grant: Grant,
    /// What it asks for.
    pub params: TokenParams,
}

/// Why a request could not be parsed. Messages are safe to show the client.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// The query string is too long.
    #[error("query string is longer than {MAX_QUERY} bytes")]
    QueryTooLong,
    /// The body is larger than the configured limit.
    #[error("request body is larger than {0} bytes")]
    TooLarge(usize),
    /// The body could not be read.
    #[error("could not read the request body")]
    Body(#[source] axum::Error),
    /// The POST body is not a form.
    #[error("Content-Type must be application/x-www-form-urlencoded")]
    ContentType,
    /// The query or form does not decode.
    #[error(transparent)]
    Form(#[from] FormError),
    /// The `Authorization` header is not well-formed Basic credentials.
    #[error("malformed Authorization header: {0}")]
    Authorization(&'static str),
    /// A required parameter is absent or empty.
    #[error("missing {0}")]
    Missing(&'static str),
    /// `grant_type` names a grant this server does not implement.
    #[error(
        "unsupported grant_type {0:?}; use password, refresh_token, client_credentials or {GRANT_TOKEN_EXCHANGE}"
    )]
    UnsupportedGrant(String),
    /// RFC 8693 `subject_token_type` other than a JWT or ID token.
    #[error("unsupported subject_token_type {0:?}; use {TOKEN_TYPE_JWT} or {TOKEN_TYPE_ID_TOKEN}")]
    SubjectTokenType(String),
    /// RFC 8693 `requested_token_type` other than a refresh token.
    #[error("requested_token_type {0:?} is not issued; this server issues {TOKEN_TYPE_REFRESH}")]
    RequestedTokenType(String),
}

impl RequestError {
    /// Short label for logs and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            RequestError::TooLarge(_) => "too_large",
            RequestError::UnsupportedGrant(_) => "unsupported_grant",
            _ => "bad_request",
        }
    }
}

/// Parses `GET /token`: parameters from the query, Basic credentials from
/// the headers.
pub fn from_get(query: Option<&str>, headers: &HeaderMap) -> Result<TokenRequest, RequestError> {
    let query = query.unwrap_or_default();
    if query.len() > MAX_QUERY {
        return Err(RequestError::QueryTooLong);
    }
    let form = Form::parse(query.as_bytes())?;
    let grant = match basic_credentials(headers)? {
        Some((username, password)) => Grant::Basic { username, password },
        None => Grant::NoCredentials,
    };
    let params = TokenParams {
        service: form.get("service").map(str::to_owned),
        scopes: form.all("scope").map(str::to_owned).collect(),
        offline: form
            .get("offline_token")
            .is_some_and(|v| v.eq_ignore_ascii_case("true")),
        client_id: client_id(&form),
    };
    Ok(TokenRequest { grant, params })
}

/// Parses `POST /token`: reads the form body (at most `max_body` bytes).
pub async fn from_post(
    headers: &HeaderMap,
    body: Body,
    max_body: usize,
) -> Result<TokenRequest, RequestError> {
    check_form_content_type(headers)?;
    let bytes = axum::body::to_bytes(body, max_body).await.map_err(|e| {
        if is_length_limit(&e) {
            RequestError::TooLarge(max_body)
        } else {
            RequestError::Body(e)
        }
    })?;
    parse_post(&Form::parse(&bytes)?)
}

fn is_length_limit(e: &axum::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        if s.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        source = s.source();
    }
    false
}

pub(crate) fn parse_post(form: &Form) -> Result<TokenRequest, RequestError> {
    let required = |key: &'static str| form.get(key).ok_or(RequestError::Missing(key));
    let secret = |key: &'static str| required(key).map(|v| Secret::new(v.to_owned()));
    let grant_type = required("grant_type")?;
    let (grant, offline) = match grant_type {
        "password" => (
            Grant::Password {
                username: required("username")?.to_owned(),
                password: secret("password")?,
            },
            form.get("access_type") == Some("offline"),
        ),
        // The refresh grant hands the same token back (it is not rotated), and
        // a node asks with its certificate precisely to get a credential.
        "refresh_token" => (Grant::RefreshToken(secret("refresh_token")?), true),
        "client_credentials" => (Grant::ClientCredentials, true),
        GRANT_TOKEN_EXCHANGE => (token_exchange(form)?, true),
        other => {
            return Err(RequestError::UnsupportedGrant(truncate(other, 64)));
        }
    };
    let service = match grant {
        Grant::TokenExchange { .. } => form.get("audience").or(form.get("service")),
        _ => form.get("service"),
    };
    let params = TokenParams {
        service: service.map(str::to_owned),
        // One field of space-separated scopes (RFC 6749); split when parsed.
        scopes: form.all("scope").map(str::to_owned).collect(),
        offline,
        client_id: client_id(form),
    };
    Ok(TokenRequest { grant, params })
}

fn token_exchange(form: &Form) -> Result<Grant, RequestError> {
    let subject_token = form
        .get("subject_token")
        .ok_or(RequestError::Missing("subject_token"))?;
    match form.get("subject_token_type") {
        Some(TOKEN_TYPE_JWT | TOKEN_TYPE_ID_TOKEN) => {}
        Some(other) => return Err(RequestError::SubjectTokenType(truncate(other, 100))),
        None => return Err(RequestError::Missing("subject_token_type")),
    }
    if let Some(t) = form
        .get("requested_token_type")
        .filter(|t| *t != TOKEN_TYPE_REFRESH)
    {
        return Err(RequestError::RequestedTokenType(truncate(t, 100)));
    }
    let annotations = form
        .with_prefix("annotation.")
        .take(MAX_ANNOTATIONS)
        .map(|(k, v)| {
            (
                truncate(k, MAX_ANNOTATION_KEY),
                truncate(v, MAX_ANNOTATION_VALUE),
            )
        })
        .collect();
    Ok(Grant::TokenExchange {
        subject_token: Secret::new(subject_token.to_owned()),
        annotations,
    })
}

fn client_id(form: &Form) -> Option<String> {
    form.get("client_id").map(|c| truncate(c, MAX_CLIENT_ID))
}

fn truncate(s: &str, max: usize) -> String {
    s.chars().take(max).collect()
}

fn check_form_content_type(headers: &HeaderMap) -> Result<(), RequestError> {
    let Some(ct) = headers.get(header::CONTENT_TYPE) else {
        return Ok(());
    };
    let ok = ct
        .to_str()
        .ok()
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| {
            v.trim()
                .eq_ignore_ascii_case("application/x-www-form-urlencoded")
        });
    if ok {
        Ok(())
    } else {
        Err(RequestError::ContentType)
    }
}

/// Parses the `Authorization` header: `None` when absent, an error when
/// present but not well-formed Basic credentials.
#[tracing::instrument(level = "debug", skip_all)]
fn basic_credentials(headers: &HeaderMap) -> Result<Option<(String, Secret)>, RequestError> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let bad = RequestError::Authorization;
    if value.len() > MAX_AUTH_HEADER {
        return Err(bad("too long"));
    }
    let value = value.to_str().map_err(|_| bad("not ASCII"))?;
    let (scheme, rest) = value
        .split_once(' ')
        .ok_or(bad("expected `Basic <credentials>`"))?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return Err(bad("only the Basic scheme is accepted here"));
    }
    let decoded = STANDARD
        .decode(rest.trim())
        .map_err(|_| bad("credentials are not base64"))?;
    let text = String::from_utf8(decoded).map_err(|_| bad("credentials are not UTF-8"))?;
    let (user, password) = text.split_once(':').ok_or(bad("credentials lack a ':'"))?;
    Ok(Some((user.to_owned(), Secret::new(password.to_owned()))))
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
        let (user, password) = basic_credentials(&headers(b"Basic YWxpY2U6cDpx"))
            .unwrap()
            .unwrap();
        assert_eq!(user, "alice");
        assert_eq!(password.expose(), "p:q");
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
                Err(e @ RequestError::Authorization(_)) => {
                    assert!(
                        e.to_string().starts_with("malformed Authorization header"),
                        "{e}"
                    )
                }
                other => panic!("{:?} gave {other:?}", String::from_utf8_lossy(bad)),
            }
        }
        let long = format!("Basic {}", "A".repeat(MAX_AUTH_HEADER));
        assert!(basic_credentials(&headers(long.as_bytes())).is_err());
    }

    #[test]
    fn post_grants_are_parsed_once_into_their_variant() {
        let parse = |body: &str| parse_post(&Form::parse(body.as_bytes()).unwrap());
        let r = parse("grant_type=password&username=alice&password=pw&access_type=offline&scope=a:b:pull+c:d:push").unwrap();
        assert!(matches!(r.grant, Grant::Password { ref username, .. } if username == "alice"));
        assert!(r.params.offline);
        assert_eq!(r.params.scopes, ["a:b:pull c:d:push"]);
        let r = parse("grant_type=refresh_token&refresh_token=t&service=s").unwrap();
        assert!(matches!(r.grant, Grant::RefreshToken(_)));
        assert_eq!(r.params.service.as_deref(), Some("s"));
        let r = parse(&format!(
            "grant_type={GRANT_TOKEN_EXCHANGE}&subject_token=t&subject_token_type={TOKEN_TYPE_JWT}&audience=a&service=s&annotation.k=v"
        ))
        .unwrap();
        assert_eq!(r.params.service.as_deref(), Some("a"), "audience wins");
        assert!(
            matches!(r.grant, Grant::TokenExchange { ref annotations, .. } if annotations == &[("k".to_owned(), "v".to_owned())])
        );
        assert!(matches!(
            parse("grant_type=magic"),
            Err(RequestError::UnsupportedGrant(g)) if g == "magic"
        ));
        assert!(matches!(
            parse("grant_type=password&username=a"),
            Err(RequestError::Missing("password"))
        ));
        assert!(matches!(
            parse("x=y"),
            Err(RequestError::Missing("grant_type"))
        ));
    }
}
