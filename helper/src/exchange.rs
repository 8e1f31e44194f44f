//! Swapping a local identity for a regauth refresh token at the token
//! server, through the shared client (`regauth-client`). Only the GitHub
//! Actions source needs a request of its own first: its ID token.

use regauth_client::{
    Issued, ReadError, Secret, Settings, SetupError, SubjectTokenType, TokenClient, TokenExchange,
};
use serde::Deserialize;

use crate::config::Registry;
use crate::identity::{Identity, Material};

/// The OAuth2 client ID the helper sends.
pub(crate) const CLIENT_ID: &str = "docker-credential-regauth";

/// Largest reply read from the GitHub token endpoint.
const MAX_GITHUB_REPLY_BYTES: usize = 64 * 1024;

/// Why an exchange failed. Messages never include a token or password.
#[derive(Debug, thiserror::Error)]
pub enum ExchangeError {
    /// The token server failed or refused.
    #[error(transparent)]
    Server(#[from] regauth_client::Error),
    /// The GitHub Actions ID token could not be obtained.
    #[error("cannot get a GitHub Actions ID token")]
    Github(#[source] GithubError),
}

impl ExchangeError {
    /// True when a server could not be reached or said it cannot serve now,
    /// as opposed to refusing the identity.
    pub(crate) fn is_unavailable(&self) -> bool {
        match self {
            ExchangeError::Server(e) => e.is_unavailable(),
            ExchangeError::Github(e) => matches!(e, GithubError::Unreachable { .. }),
        }
    }
}

/// Why the GitHub Actions ID token request failed.
#[derive(Debug, thiserror::Error)]
pub enum GithubError {
    /// The HTTP client could not be set up.
    #[error(transparent)]
    Setup(#[from] SetupError),
    /// `ACTIONS_ID_TOKEN_REQUEST_URL` does not parse.
    #[error("ACTIONS_ID_TOKEN_REQUEST_URL is not a URL")]
    Url(#[source] url::ParseError),
    /// No reply.
    #[error("cannot reach {url}")]
    Unreachable {
        /// The endpoint, without its query.
        url: String,
        /// The transport's reason.
        #[source]
        source: reqwest::Error,
    },
    /// The endpoint said no.
    #[error("{url} answered {status}; the workflow needs `permissions: id-token: write`")]
    Status {
        /// The endpoint, without its query.
        url: String,
        /// The HTTP status.
        status: u16,
    },
    /// The reply is not `{"value": "<token>"}`.
    #[error("unexpected reply from {url}")]
    BadReply {
        /// The endpoint, without its query.
        url: String,
        /// The parser's reason.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// How to reach the registry entry's token server, presenting `identity`
/// (a client certificate and key, PEM) when given.
pub(crate) fn settings(registry: &Registry, identity: Option<Secret>) -> Settings {
    Settings::new(&registry.token_server, CLIENT_ID)
        .ca_file(registry.ca_file.clone())
        .timeout(registry.timeout)
        .identity(identity)
        .user_agent(concat!(
            "docker-credential-regauth/",
            env!("CARGO_PKG_VERSION")
        ))
}

/// Exchanges `identity` for a refresh token at the registry's token server.
pub(crate) async fn exchange(
    registry: &Registry,
    identity: &Identity,
    now: u64,
) -> Result<Issued, ExchangeError> {
    let client = |pem: Option<Secret>| TokenClient::new(&settings(registry, pem));
    let exchange = |token, token_type| TokenExchange {
        subject_token: token,
        subject_token_type: token_type,
        audience: &registry.service,
        scopes: &[],
        annotations: &identity.annotations,
    };
    let issued = match &identity.material {
        Material::Jwt { token, token_type } => {
            client(None)?
                .exchange(&exchange(token, *token_type), now)
                .await?
        }
        Material::GithubActions {
            url,
            bearer,
            audience,
        } => {
            let token = github_id_token(registry, url, bearer, audience)
                .await
                .map_err(ExchangeError::Github)?;
            client(None)?
                .exchange(&exchange(&token, SubjectTokenType::IdToken), now)
                .await?
        }
        Material::Account { username, password } => {
            client(None)?
                .password(&registry.service, username, password, now)
                .await?
        }
        Material::Certificate { pem } => {
            client(Some(pem.clone()))?
                .client_credentials(&registry.service, now)
                .await?
        }
    };
    Ok(issued)
}

/// Requests a GitHub Actions ID token for `audience`.
async fn github_id_token(
    registry: &Registry,
    url: &str,
    bearer: &Secret,
    audience: &str,
) -> Result<Secret, GithubError> {
    let http = regauth_client::http_client(&settings(registry, None))?;
    let mut request_url = url::Url::parse(url).map_err(GithubError::Url)?;
    request_url
        .query_pairs_mut()
        .append_pair("audience", audience);
    let shown = format!(
        "{}://{}{}",
        request_url.scheme(),
        request_url.host_str().unwrap_or(""),
        request_url.path()
    );
    let response = http
        .get(request_url)
        .bearer_auth(bearer.expose())
        .header(reqwest::header::ACCEPT, "application/json")
        .send()
        .await
        .map_err(|e| GithubError::Unreachable {
            url: shown.clone(),
            source: e.without_url(),
        })?;
    let status = response.status();
    if !status.is_success() {
        return Err(GithubError::Status {
            url: shown,
            status: status.as_u16(),
        });
    }
    let body = match regauth_client::read_limited(response, MAX_GITHUB_REPLY_BYTES).await {
        Ok(body) => body,
        Err(ReadError::Transport(e)) => {
            return Err(GithubError::Unreachable {
                url: shown,
                source: e.without_url(),
            });
        }
        Err(e) => {
            return Err(GithubError::BadReply {
                url: shown,
                source: Box::new(e),
            });
        }
    };
    #[derive(Deserialize)]
    struct Reply {
        value: Secret,
    }
    serde_json::from_slice::<Reply>(&body)
        .map(|r| r.value)
        .map_err(|e| GithubError::BadReply {
            url: shown,
            source: Box::new(e),
        })
}
