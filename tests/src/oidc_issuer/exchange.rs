//! RFC 8693 token exchange at the token server, as the helper does it:
//! `POST /token` with a subject JWT, answered with a regauth refresh token.

use crate::token_client::{HttpReply, TokenClient};

/// `grant_type` of a token exchange.
pub const GRANT_TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
/// `subject_token_type` of a plain JWT (service-account tokens).
pub const TOKEN_TYPE_JWT: &str = "urn:ietf:params:oauth:token-type:jwt";
/// `subject_token_type` of an OpenID Connect ID token.
pub const TOKEN_TYPE_ID_TOKEN: &str = "urn:ietf:params:oauth:token-type:id_token";
/// `issued_token_type` of the reply: a regauth refresh token.
pub const TOKEN_TYPE_REFRESH: &str = "urn:ietf:params:oauth:token-type:refresh_token";

/// One exchange request; `None` fields are left out of the form.
#[derive(Debug, Clone, Copy)]
pub struct ExchangeRequest<'a> {
    /// The subject token (a JWT from the workload's issuer).
    pub subject_token: &'a str,
    /// `subject_token_type`.
    pub subject_token_type: &'a str,
    /// `audience`: the registry service the credential is for.
    pub audience: Option<&'a str>,
    /// `scope`, space-separated.
    pub scope: Option<&'a str>,
}

impl<'a> ExchangeRequest<'a> {
    /// A JWT-typed exchange of `subject_token` for the registry `audience`.
    pub fn jwt(subject_token: &'a str, audience: &'a str) -> Self {
        Self {
            subject_token,
            subject_token_type: TOKEN_TYPE_JWT,
            audience: Some(audience),
            scope: None,
        }
    }

    /// Sends the form to `POST /token`.
    pub fn send(&self, client: &TokenClient) -> HttpReply {
        let mut form = vec![
            ("grant_type", GRANT_TOKEN_EXCHANGE),
            ("subject_token", self.subject_token),
            ("subject_token_type", self.subject_token_type),
        ];
        if let Some(audience) = self.audience {
            form.push(("audience", audience));
        }
        if let Some(scope) = self.scope {
            form.push(("scope", scope));
        }
        client.post_token(&form)
    }
}

/// A successful exchange: the regauth credential and its lifetime.
#[derive(Debug, Clone)]
pub struct Exchanged {
    /// The regauth refresh token (`access_token` = `refresh_token`).
    pub credential: String,
    /// `expires_in`, seconds.
    pub expires_in: u64,
}

/// Checks a reply against the exchange contract (200, `access_token` equal
/// to `refresh_token`, `issued_token_type` refresh token, `token_type`
/// `N_A`, positive `expires_in`) and returns the credential. `what` names
/// the exchange in failure messages.
pub fn expect_exchanged(reply: &HttpReply, what: &str) -> Exchanged {
    assert_eq!(
        reply.status, 200,
        "{what}: the exchange must succeed; got {}: {}",
        reply.status, reply.body
    );
    let body = reply.json();
    let credential = reply.json_str("access_token");
    assert_eq!(
        body["refresh_token"], credential,
        "{what}: access_token and refresh_token must be the same regauth refresh token: {body}"
    );
    assert_eq!(
        body["issued_token_type"], TOKEN_TYPE_REFRESH,
        "{what}: issued_token_type: {body}"
    );
    assert_eq!(body["token_type"], "N_A", "{what}: token_type: {body}");
    let expires_in = body["expires_in"]
        .as_u64()
        .filter(|s| *s > 0)
        .unwrap_or_else(|| panic!("{what}: expires_in must be a positive integer: {body}"));
    assert_eq!(
        credential.split('.').count(),
        3,
        "{what}: the credential is a JWT: {body}"
    );
    Exchanged {
        credential,
        expires_in,
    }
}

/// Exchanges `subject_token` (JWT type) for `audience`, asserting success.
pub fn exchange_ok(client: &TokenClient, subject_token: &str, audience: &str) -> Exchanged {
    let reply = ExchangeRequest::jwt(subject_token, audience).send(client);
    expect_exchanged(&reply, "token exchange")
}

/// Asserts a refused exchange: status 400, OAuth2 `error` equal to
/// `error`, and an `error_description` that is non-empty, mentions at least
/// one of `keywords` (case-insensitive; any when empty) and does not echo
/// `subject_token`. Returns the description.
pub fn expect_refused(
    reply: &HttpReply,
    error: &str,
    keywords: &[&str],
    subject_token: &str,
    what: &str,
) -> String {
    assert_eq!(
        reply.status, 400,
        "{what}: must be refused with 400; got {}: {}",
        reply.status, reply.body
    );
    let body = reply.json();
    assert_eq!(
        body["error"], error,
        "{what}: OAuth2 error code: {}",
        reply.body
    );
    let description = body["error_description"]
        .as_str()
        .unwrap_or_else(|| panic!("{what}: error_description must be a string: {}", reply.body))
        .to_owned();
    assert!(
        !description.trim().is_empty(),
        "{what}: error_description must say why: {}",
        reply.body
    );
    let lower = description.to_lowercase();
    assert!(
        keywords.is_empty() || keywords.iter().any(|k| lower.contains(&k.to_lowercase())),
        "{what}: error_description {description:?} should mention one of {keywords:?}"
    );
    if let Some((_, signature)) = subject_token.rsplit_once('.')
        && signature.len() > 8
    {
        assert!(
            !reply.body.contains(signature),
            "{what}: the error echoes the subject token: {}",
            reply.body
        );
    }
    description
}
