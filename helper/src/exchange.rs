//! Swapping a local identity for a regauth refresh token at the token server.
//!
//! The `password` and `client_credentials` grants go through the oauth2
//! crate. RFC 8693 token exchange has no support there, so that form is
//! posted directly and its reply parsed here.

use std::time::Duration;

use oauth2::basic::{BasicClient, BasicErrorResponse};
use oauth2::{
    AuthType, ClientId, HttpRequest, HttpResponse, RequestTokenError, ResourceOwnerPassword,
    ResourceOwnerUsername, TokenResponse, TokenUrl,
};
use serde::Deserialize;

use crate::config::Registry;
use crate::identity::{Identity, Material, TOKEN_TYPE_ID_TOKEN, unverified_claims};

/// Largest reply body read from the token server or the GitHub endpoint.
const MAX_REPLY_BYTES: usize = 256 * 1024;

/// The OAuth2 client ID the helper sends.
pub const CLIENT_ID: &str = "docker-credential-regauth";

const GRANT_TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";

/// Why an exchange failed. Messages never include a token or password.
#[derive(Debug, thiserror::Error)]
pub enum ExchangeError {
    /// The token server could not be reached (connection, TLS, timeout).
    #[error("cannot reach the token server at {url}: {reason}")]
    Unreachable {
        /// The URL.
        url: String,
        /// Why.
        reason: String,
    },
    /// The token server refused the identity.
    #[error("the token server refused the {what}: {error}: {description}")]
    Refused {
        /// What was presented.
        what: &'static str,
        /// OAuth2 error code.
        error: String,
        /// The server's description.
        description: String,
    },
    /// The reply was not what the protocol says.
    #[error("unexpected reply from {url}: {reason}")]
    BadReply {
        /// The URL.
        url: String,
        /// What was wrong.
        reason: String,
    },
    /// The HTTP client could not be set up (bad CA file, bad client certificate).
    #[error("{0}")]
    Setup(String),
}

impl ExchangeError {
    /// True when the server could not be reached or answered like it is down,
    /// as opposed to refusing the identity.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, ExchangeError::Unreachable { .. })
    }
}

/// A credential from the token server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issued {
    /// The refresh token: the registry credential.
    pub refresh_token: String,
    /// When it was issued (seconds since the epoch).
    pub issued_at: u64,
    /// When it expires (seconds since the epoch).
    pub expires_at: u64,
}

/// Builds the HTTP client for one registry entry: rustls, the configured CA,
/// the timeout, the proxy environment, and the client certificate if any.
pub fn http_client(
    registry: &Registry,
    identity: Option<&[u8]>,
) -> Result<reqwest::Client, ExchangeError> {
    let mut builder = reqwest::Client::builder()
        .timeout(registry.timeout)
        .connect_timeout(registry.timeout.min(Duration::from_secs(5)))
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!(
            "docker-credential-regauth/",
            env!("CARGO_PKG_VERSION")
        ));
    if let Some(ca) = &registry.ca_file {
        let pem = std::fs::read(ca).map_err(|e| {
            ExchangeError::Setup(format!("cannot read ca_file {}: {e}", ca.display()))
        })?;
        for cert in reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|e| ExchangeError::Setup(format!("ca_file {}: {e}", ca.display())))?
        {
            builder = builder.add_root_certificate(cert);
        }
    }
    if let Some(pem) = identity {
        let id = reqwest::Identity::from_pem(pem).map_err(|e| {
            ExchangeError::Setup(format!("client certificate or key is unusable: {e}"))
        })?;
        builder = builder.identity(id);
    }
    builder
        .build()
        .map_err(|e| ExchangeError::Setup(format!("cannot build the HTTP client: {e}")))
}

fn unreachable(url: &str, e: &reqwest::Error) -> ExchangeError {
    // reqwest's Display includes the URL but never the body or headers.
    let mut reason = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        reason.push_str(": ");
        reason.push_str(&s.to_string());
        source = s.source();
    }
    ExchangeError::Unreachable {
        url: url.to_owned(),
        reason,
    }
}

async fn read_body(url: &str, mut resp: reqwest::Response) -> Result<Vec<u8>, ExchangeError> {
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| unreachable(url, &e))? {
        if body.len() + chunk.len() > MAX_REPLY_BYTES {
            return Err(ExchangeError::BadReply {
                url: url.to_owned(),
                reason: "reply too large".into(),
            });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

async fn send(
    client: &reqwest::Client,
    request: HttpRequest,
) -> Result<HttpResponse, ExchangeError> {
    let (parts, body) = request.into_parts();
    let url = parts.uri.to_string();
    let resp = client
        .request(parts.method, &url)
        .headers(parts.headers)
        .body(body)
        .send()
        .await
        .map_err(|e| unreachable(&url, &e))?;
    let mut builder = oauth2::http::Response::builder().status(resp.status());
    for (name, value) in resp.headers() {
        builder = builder.header(name, value);
    }
    let body = read_body(&url, resp).await?;
    builder.body(body).map_err(|e| ExchangeError::BadReply {
        url,
        reason: e.to_string(),
    })
}

#[derive(Deserialize)]
struct OAuthErrorBody {
    error: String,
    #[serde(default)]
    error_description: String,
}

#[derive(Deserialize)]
struct ExchangeReply {
    access_token: String,
    #[serde(default)]
    issued_token_type: String,
    #[serde(default)]
    expires_in: Option<u64>,
}

/// Exchanges `identity` for a refresh token at the registry's token server.
pub async fn exchange(
    registry: &Registry,
    identity: &Identity,
    now: u64,
) -> Result<Issued, ExchangeError> {
    match &identity.material {
        Material::Jwt { token, token_type } => {
            token_exchange(registry, token, token_type, &identity.annotations, now).await
        }
        Material::GithubActions {
            url,
            bearer,
            audience,
        } => {
            let token = github_id_token(registry, url, bearer, audience).await?;
            token_exchange(
                registry,
                &token,
                TOKEN_TYPE_ID_TOKEN,
                &identity.annotations,
                now,
            )
            .await
        }
        Material::Account { username, password } => {
            let http = http_client(registry, None)?;
            let client = oauth_client(registry)?;
            let reply = client
                .exchange_password(
                    &ResourceOwnerUsername::new(username.clone()),
                    &ResourceOwnerPassword::new(password.clone()),
                )
                .add_extra_param("service", registry.service.clone())
                .add_extra_param("access_type", "offline")
                .request_async(&|r| send(&http, r))
                .await;
            oauth_result(registry, reply, "account password", now)
        }
        Material::Certificate { pem } => {
            let http = http_client(registry, Some(pem))?;
            let client = oauth_client(registry)?;
            let reply = client
                .exchange_client_credentials()
                .add_extra_param("service", registry.service.clone())
                .request_async(&|r| send(&http, r))
                .await;
            oauth_result(registry, reply, "client certificate", now)
        }
    }
}

type OAuthClient = oauth2::Client<
    BasicErrorResponse,
    oauth2::basic::BasicTokenResponse,
    oauth2::basic::BasicTokenIntrospectionResponse,
    oauth2::StandardRevocableToken,
    oauth2::basic::BasicRevocationErrorResponse,
    oauth2::EndpointNotSet,
    oauth2::EndpointNotSet,
    oauth2::EndpointNotSet,
    oauth2::EndpointNotSet,
    oauth2::EndpointSet,
>;

fn oauth_client(registry: &Registry) -> Result<OAuthClient, ExchangeError> {
    let url = TokenUrl::new(registry.token_url())
        .map_err(|e| ExchangeError::Setup(format!("token_server is not a valid URL: {e}")))?;
    // The client ID goes in the body: the token server takes no client secret.
    Ok(BasicClient::new(ClientId::new(CLIENT_ID.to_owned()))
        .set_auth_type(AuthType::RequestBody)
        .set_token_uri(url))
}

fn oauth_result(
    registry: &Registry,
    reply: Result<
        oauth2::basic::BasicTokenResponse,
        RequestTokenError<ExchangeError, BasicErrorResponse>,
    >,
    what: &'static str,
    now: u64,
) -> Result<Issued, ExchangeError> {
    let url = registry.token_url();
    match reply {
        Ok(token) => {
            let refresh = token
                .refresh_token()
                .ok_or_else(|| ExchangeError::BadReply {
                    url: url.clone(),
                    reason: "no refresh_token in the reply".into(),
                })?;
            issued(&url, refresh.secret().clone(), None, now)
        }
        Err(RequestTokenError::ServerResponse(e)) => Err(ExchangeError::Refused {
            what,
            error: e.error().to_string(),
            description: e.error_description().cloned().unwrap_or_default(),
        }),
        Err(RequestTokenError::Request(e)) => Err(e),
        Err(RequestTokenError::Parse(e, _)) => Err(ExchangeError::BadReply {
            url,
            reason: e.to_string(),
        }),
        Err(RequestTokenError::Other(e)) => Err(ExchangeError::BadReply { url, reason: e }),
    }
}

/// Lifetime from the token's own claims when it has them, else `expires_in`.
fn issued(
    url: &str,
    refresh_token: String,
    expires_in: Option<u64>,
    now: u64,
) -> Result<Issued, ExchangeError> {
    let claims = unverified_claims(&refresh_token);
    let claim = |k: &str| {
        claims
            .as_ref()
            .and_then(|c| c.get(k))
            .and_then(|v| v.as_u64())
    };
    let issued_at = claim("iat").unwrap_or(now);
    let expires_at = claim("exp")
        .or(expires_in.map(|e| now + e))
        .ok_or_else(|| ExchangeError::BadReply {
            url: url.to_owned(),
            reason: "the credential has no expiry".into(),
        })?;
    if expires_at <= now {
        return Err(ExchangeError::BadReply {
            url: url.to_owned(),
            reason: "the credential is already expired".into(),
        });
    }
    Ok(Issued {
        refresh_token,
        issued_at: issued_at.min(now),
        expires_at,
    })
}

async fn token_exchange(
    registry: &Registry,
    token: &str,
    token_type: &str,
    annotations: &std::collections::BTreeMap<String, String>,
    now: u64,
) -> Result<Issued, ExchangeError> {
    let url = registry.token_url();
    let http = http_client(registry, None)?;
    let mut form: Vec<(String, &str)> = vec![
        ("grant_type".into(), GRANT_TOKEN_EXCHANGE),
        ("subject_token".into(), token),
        ("subject_token_type".into(), token_type),
        ("audience".into(), registry.service.as_str()),
        ("client_id".into(), CLIENT_ID),
    ];
    // Only keys the config allows reach this point (kubelet mode).
    form.extend(
        annotations
            .iter()
            .map(|(k, v)| (format!("annotation.{k}"), v.as_str())),
    );
    let resp = http
        .post(&url)
        .form(&form)
        .send()
        .await
        .map_err(|e| unreachable(&url, &e))?;
    let status = resp.status();
    let body = read_body(&url, resp).await?;
    if status.is_success() {
        let reply: ExchangeReply =
            serde_json::from_slice(&body).map_err(|e| ExchangeError::BadReply {
                url: url.clone(),
                reason: e.to_string(),
            })?;
        if !reply.issued_token_type.is_empty()
            && !reply.issued_token_type.ends_with(":refresh_token")
        {
            return Err(ExchangeError::BadReply {
                url,
                reason: format!("issued_token_type is {}", reply.issued_token_type),
            });
        }
        return issued(&url, reply.access_token, reply.expires_in, now);
    }
    match serde_json::from_slice::<OAuthErrorBody>(&body) {
        // A 5xx means the server is in trouble: worth falling back to the cache.
        Ok(e) if status.is_server_error() => Err(ExchangeError::Unreachable {
            url,
            reason: format!("{status}: {}: {}", e.error, e.error_description),
        }),
        Ok(e) => Err(ExchangeError::Refused {
            what: "subject token",
            error: e.error,
            description: e.error_description,
        }),
        Err(_) if status.is_server_error() => Err(ExchangeError::Unreachable {
            url,
            reason: status.to_string(),
        }),
        Err(_) => Err(ExchangeError::BadReply {
            url,
            reason: format!("status {status} without an OAuth2 error body"),
        }),
    }
}

/// Requests a GitHub Actions ID token for `audience`.
async fn github_id_token(
    registry: &Registry,
    url: &str,
    bearer: &str,
    audience: &str,
) -> Result<String, ExchangeError> {
    let http = http_client(registry, None)?;
    let mut request_url = reqwest::Url::parse(url).map_err(|e| {
        ExchangeError::Setup(format!("ACTIONS_ID_TOKEN_REQUEST_URL is not a URL: {e}"))
    })?;
    request_url
        .query_pairs_mut()
        .append_pair("audience", audience);
    let shown = format!(
        "{}://{}{}",
        request_url.scheme(),
        request_url.host_str().unwrap_or(""),
        request_url.path()
    );
    let resp = http
        .get(request_url)
        .bearer_auth(bearer)
        .header("Accept", "application/json")
        .send()
        .await
        .map_err(|e| unreachable(&shown, &e))?;
    let status = resp.status();
    let body = read_body(&shown, resp).await?;
    if !status.is_success() {
        return Err(ExchangeError::Refused {
            what: "GitHub Actions token request",
            error: status.to_string(),
            description: "check `permissions: id-token: write` in the workflow".into(),
        });
    }
    #[derive(Deserialize)]
    struct Reply {
        value: String,
    }
    serde_json::from_slice::<Reply>(&body)
        .map(|r| r.value)
        .map_err(|e| ExchangeError::BadReply {
            url: shown,
            reason: e.to_string(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;

    #[test]
    fn lifetime_comes_from_the_token_claims() {
        let token = format!(
            "e30.{}.sig",
            URL_SAFE_NO_PAD.encode(r#"{"iat":1000,"exp":4600}"#)
        );
        let i = issued("u", token, Some(60), 1100).unwrap();
        assert_eq!((i.issued_at, i.expires_at), (1000, 4600));
        let opaque = issued("u", "opaque".into(), Some(60), 1100).unwrap();
        assert_eq!((opaque.issued_at, opaque.expires_at), (1100, 1160));
        assert!(issued("u", "opaque".into(), None, 1100).is_err());
        let expired = format!("e30.{}.sig", URL_SAFE_NO_PAD.encode(r#"{"iat":1,"exp":2}"#));
        assert!(issued("u", expired, None, 1100).is_err());
    }
}
