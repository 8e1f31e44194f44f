//! The token server's replies: a credential, or why there is none.

use serde::Deserialize;

use crate::error::{BadReply, Error, Grant, OAuthError};
use crate::jwt::unverified_claims;
use crate::secret::Secret;

/// The RFC 8693 type of the refresh tokens regauth issues.
pub(crate) const TOKEN_TYPE_REFRESH: &str = "urn:ietf:params:oauth:token-type:refresh_token";

/// A credential from the token server: a regauth refresh token, which
/// clients present as an identity token or as a Basic password.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issued {
    /// The refresh token: the registry credential.
    pub refresh_token: Secret,
    /// When it was issued (seconds since the epoch), never after `now`.
    pub issued_at: u64,
    /// When it expires (seconds since the epoch).
    pub expires_at: u64,
}

/// What the server said, before it is interpreted for one grant.
pub(crate) struct Reply<'a> {
    pub(crate) url: &'a str,
    pub(crate) grant: Grant,
    pub(crate) target: &'a str,
    pub(crate) status: u16,
    /// The `Retry-After` of the reply, when it had one.
    pub(crate) retry_after: Option<std::time::Duration>,
    pub(crate) body: &'a [u8],
}

#[derive(Deserialize)]
struct GrantReply {
    access_token: Secret,
    #[serde(default)]
    refresh_token: Option<Secret>,
    #[serde(default)]
    issued_token_type: String,
    #[serde(default)]
    expires_in: Option<u64>,
}

#[derive(Deserialize)]
struct AccessReply {
    token: Secret,
}

#[derive(Deserialize)]
struct DistributionErrors {
    errors: Vec<DistributionError>,
}

#[derive(Deserialize)]
struct DistributionError {
    code: String,
    #[serde(default)]
    message: String,
}

impl Reply<'_> {
    fn bad(&self, source: BadReply) -> Error {
        Error::BadReply {
            url: self.url.to_owned(),
            source,
        }
    }

    /// A `POST /token` grant reply: the refresh token it carries.
    pub(crate) fn issued(&self, now: u64) -> Result<Issued, Error> {
        if !(200..300).contains(&self.status) {
            return Err(self.failure(oauth_error(self.body)));
        }
        let reply: GrantReply =
            serde_json::from_slice(self.body).map_err(|e| self.bad(BadReply::Json(e)))?;
        if self.grant == Grant::TokenExchange
            && !reply.issued_token_type.is_empty()
            && reply.issued_token_type != TOKEN_TYPE_REFRESH
        {
            let shown = OAuthError {
                error: reply.issued_token_type,
                error_description: String::new(),
            }
            .sanitized();
            return Err(self.bad(BadReply::IssuedTokenType(shown.error)));
        }
        // RFC 8693 puts the issued token in access_token; the other grants
        // return a refresh token beside a short-lived access token.
        let token = match (reply.refresh_token, self.grant) {
            (Some(token), _) if !token.is_empty() => token,
            (_, Grant::TokenExchange) if !reply.access_token.is_empty() => reply.access_token,
            _ => return Err(self.bad(BadReply::NoRefreshToken)),
        };
        lifetime(token, reply.expires_in, now).map_err(|e| self.bad(e))
    }

    /// A `GET /token` reply: the access token it carries.
    pub(crate) fn access_token(&self) -> Result<Secret, Error> {
        if !(200..300).contains(&self.status) {
            return Err(self.failure(distribution_error(self.body)));
        }
        let reply: AccessReply =
            serde_json::from_slice(self.body).map_err(|e| self.bad(BadReply::Json(e)))?;
        Ok(reply.token)
    }

    /// A `GET /healthz` reply.
    pub(crate) fn healthy(&self) -> Result<(), Error> {
        if (200..300).contains(&self.status) {
            Ok(())
        } else {
            Err(self.failure(None))
        }
    }

    /// The error for a non-success status and its parsed error body.
    fn failure(&self, error: Option<OAuthError>) -> Error {
        let error = error.map(OAuthError::sanitized);
        match (self.status, error) {
            (429 | 500..=599, error) => Error::Unavailable {
                url: self.url.to_owned(),
                status: self.status,
                error,
                retry_after: self.retry_after,
            },
            (400..=499, Some(error)) => Error::Refused {
                grant: self.grant,
                target: self.target.to_owned(),
                status: self.status,
                error,
            },
            (400..=499, None) => self.bad(BadReply::NoErrorBody(self.status)),
            (status, _) => self.bad(BadReply::Status(status)),
        }
    }
}

fn oauth_error(body: &[u8]) -> Option<OAuthError> {
    serde_json::from_slice(body).ok()
}

fn distribution_error(body: &[u8]) -> Option<OAuthError> {
    let reply: DistributionErrors = serde_json::from_slice(body).ok()?;
    let first = reply.errors.into_iter().next()?;
    Some(OAuthError {
        error: first.code,
        error_description: first.message,
    })
}

/// The credential's lifetime, from its own `iat`/`exp` claims when it is a
/// JWT (the server's clock decides), else from `expires_in` counted from `now`.
fn lifetime(refresh_token: Secret, expires_in: Option<u64>, now: u64) -> Result<Issued, BadReply> {
    let claims = unverified_claims(refresh_token.expose());
    let claim = |name: &str| claims.as_ref()?.get(name)?.as_u64();
    let issued_at = claim("iat").unwrap_or(now).min(now);
    let expires_at = claim("exp")
        .or_else(|| expires_in.map(|e| now.saturating_add(e)))
        .ok_or(BadReply::NoExpiry)?;
    if expires_at <= now {
        return Err(BadReply::Expired);
    }
    Ok(Issued {
        refresh_token,
        issued_at,
        expires_at,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;

    const NOW: u64 = 1100;

    fn reply(grant: Grant, status: u16, body: &str) -> Result<Issued, Error> {
        Reply {
            url: "http://t/token",
            grant,
            target: "registry.test",
            status,
            retry_after: None,
            body: body.as_bytes(),
        }
        .issued(NOW)
    }

    fn jwt(claims: &str) -> String {
        format!("e30.{}.sig", URL_SAFE_NO_PAD.encode(claims))
    }

    #[test]
    fn lifetime_comes_from_the_token_claims() {
        let token = jwt(r#"{"iat":1000,"exp":4600}"#);
        let body = format!(
            r#"{{"access_token":"{token}","issued_token_type":"{TOKEN_TYPE_REFRESH}","expires_in":60}}"#
        );
        let i = reply(Grant::TokenExchange, 200, &body).unwrap();
        assert_eq!((i.issued_at, i.expires_at), (1000, 4600));
        assert_eq!(i.refresh_token.expose(), token);
        let opaque = reply(
            Grant::TokenExchange,
            200,
            r#"{"access_token":"opaque","expires_in":60}"#,
        )
        .unwrap();
        assert_eq!((opaque.issued_at, opaque.expires_at), (NOW, NOW + 60));
    }

    #[test]
    fn an_issued_credential_never_shows_in_debug() {
        let i = reply(
            Grant::TokenExchange,
            200,
            r#"{"access_token":"refresh-s3cret","expires_in":60}"#,
        )
        .unwrap();
        assert!(!format!("{i:?}").contains("refresh-s3cret"));
    }

    #[test]
    fn password_and_certificate_grants_need_a_refresh_token() {
        let refresh = jwt(r#"{"iat":1000,"exp":4600}"#);
        let body = format!(r#"{{"access_token":"access","refresh_token":"{refresh}"}}"#);
        let i = reply(Grant::Password, 200, &body).unwrap();
        assert_eq!(i.refresh_token.expose(), refresh);
        for grant in [Grant::Password, Grant::ClientCredentials] {
            let e = reply(grant, 200, r#"{"access_token":"a","expires_in":60}"#).unwrap_err();
            assert!(
                matches!(
                    e,
                    Error::BadReply {
                        source: BadReply::NoRefreshToken,
                        ..
                    }
                ),
                "{e:?}"
            );
        }
    }

    #[test]
    fn malformed_successes_are_bad_replies() {
        let cases = [
            ("not json", "the reply is not the expected JSON"),
            (r#"{"access_token":"opaque"}"#, "no expiry"),
            (
                &format!(r#"{{"access_token":"{}"}}"#, jwt(r#"{"exp":5}"#)),
                "already expired",
            ),
            (
                r#"{"access_token":"t","issued_token_type":"urn:x:access_token","expires_in":5}"#,
                "issued_token_type",
            ),
            (r#"{"access_token":"","expires_in":5}"#, "no refresh_token"),
        ];
        for (body, want) in cases {
            let e = reply(Grant::TokenExchange, 200, body).unwrap_err();
            let Error::BadReply { source, .. } = &e else {
                panic!("{body}: {e:?}")
            };
            assert!(source.to_string().contains(want), "{body}: {source}");
        }
    }

    #[test]
    fn failures_are_sorted_into_refused_unavailable_and_bad() {
        let refused = reply(
            Grant::TokenExchange,
            400,
            r#"{"error":"invalid_request","error_description":"token expired"}"#,
        )
        .unwrap_err();
        assert_eq!(refused.code(), Some("invalid_request"));
        assert!(!refused.is_unavailable());
        assert_eq!(
            refused.to_string(),
            "the token server refused the token exchange: invalid_request: token expired"
        );

        for status in [429, 500, 502, 503] {
            let e = reply(
                Grant::Password,
                status,
                r#"{"error":"temporarily_unavailable"}"#,
            )
            .unwrap_err();
            assert!(e.is_unavailable(), "{status}: {e:?}");
        }
        let html = reply(Grant::Password, 503, "<html>").unwrap_err();
        assert!(html.is_unavailable());
        assert_eq!(html.retry_after(), None);
        let later = Reply {
            url: "http://t/token",
            grant: Grant::TokenExchange,
            target: "registry.test",
            status: 429,
            retry_after: Some(std::time::Duration::from_secs(7)),
            body: b"",
        }
        .issued(NOW)
        .unwrap_err();
        assert_eq!(later.retry_after(), Some(std::time::Duration::from_secs(7)));

        let proxy = reply(Grant::Password, 404, "<html>").unwrap_err();
        assert!(matches!(
            proxy,
            Error::BadReply {
                source: BadReply::NoErrorBody(404),
                ..
            }
        ));
        let redirect = reply(Grant::Password, 302, "").unwrap_err();
        assert!(matches!(
            redirect,
            Error::BadReply {
                source: BadReply::Status(302),
                ..
            }
        ));
    }

    #[test]
    fn get_errors_use_the_distribution_shape() {
        let r = Reply {
            url: "http://t/token",
            grant: Grant::RefreshToken,
            target: "registry.test",
            status: 401,
            retry_after: None,
            body: br#"{"errors":[{"code":"UNAUTHORIZED","message":"bad credentials"}]}"#,
        };
        let e = r.access_token().unwrap_err();
        assert_eq!(
            e.to_string(),
            "the token server refused the refresh token: UNAUTHORIZED: bad credentials"
        );
        let ok = Reply {
            status: 200,
            body: br#"{"token":"t","access_token":"t","expires_in":300}"#,
            ..r
        };
        assert_eq!(ok.access_token().unwrap().expose(), "t");
    }
}
