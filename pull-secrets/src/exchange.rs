//! The one thing the controller asks of the token server: swap a
//! ServiceAccount token for a registry credential (RFC 8693), behind a
//! narrow trait so the reconciler does not depend on how it is done.

use std::future::Future;

use crate::config::TokenServer;

/// A token or password; its `Debug` never shows it.
pub(crate) use regauth_client::Secret;

/// A credential from the token server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Credential {
    /// The refresh token: the registry password.
    pub refresh_token: Secret,
    /// When it was issued, seconds since the epoch.
    pub issued_at: u64,
    /// When it expires, seconds since the epoch.
    pub expires_at: u64,
}

/// Why an exchange failed, in the terms the controller acts on.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ExchangeError {
    /// The server could not be reached or cannot serve now: retry later.
    #[error("the token server is unavailable")]
    Unavailable(#[source] regauth_client::Error),
    /// The server refused this ServiceAccount's token.
    #[error("the token server refused the ServiceAccount token ({code})")]
    Refused {
        code: String,
        #[source]
        source: regauth_client::Error,
    },
    /// Anything else: a broken reply, a client that cannot be set up.
    #[error("the exchange failed")]
    Failed(#[source] regauth_client::Error),
}

impl ExchangeError {
    /// A short label for metrics.
    pub(crate) fn reason(&self) -> &'static str {
        match self {
            ExchangeError::Unavailable(_) => "token_server_unavailable",
            ExchangeError::Refused { .. } => "exchange_refused",
            ExchangeError::Failed(_) => "exchange_failed",
        }
    }

    /// How long the token server asked clients to wait (`Retry-After`).
    pub(crate) fn retry_after(&self) -> Option<std::time::Duration> {
        match self {
            ExchangeError::Unavailable(e) => e.retry_after(),
            _ => None,
        }
    }
}

impl From<regauth_client::Error> for ExchangeError {
    fn from(e: regauth_client::Error) -> Self {
        if e.is_unavailable() {
            return ExchangeError::Unavailable(e);
        }
        match e.code().map(str::to_owned) {
            Some(code) => ExchangeError::Refused { code, source: e },
            None => ExchangeError::Failed(e),
        }
    }
}

/// Swaps a ServiceAccount token for a credential for a registry `service`.
pub(crate) trait Exchange: Send + Sync + 'static {
    /// `now` is seconds since the epoch.
    fn exchange(
        &self,
        service_account_token: &Secret,
        service: &str,
        now: u64,
    ) -> impl Future<Output = Result<Credential, ExchangeError>> + Send;
}

/// The token server, through the client the credential helper uses too.
#[derive(Debug, Clone)]
pub(crate) struct TokenServerExchange {
    client: regauth_client::TokenClient,
}

impl TokenServerExchange {
    /// A client for `server`.
    pub(crate) fn new(server: &TokenServer) -> Result<Self, regauth_client::Error> {
        let settings = regauth_client::Settings::new(&server.url, CLIENT_ID)
            .ca_file(server.ca_file.clone())
            .timeout(server.timeout)
            .user_agent(crate::USER_AGENT);
        Ok(Self {
            client: regauth_client::TokenClient::new(&settings)?,
        })
    }
}

/// The OAuth2 client ID the controller sends.
const CLIENT_ID: &str = "regauth-pull-secrets";

impl Exchange for TokenServerExchange {
    async fn exchange(
        &self,
        service_account_token: &Secret,
        service: &str,
        now: u64,
    ) -> Result<Credential, ExchangeError> {
        let annotations = std::collections::BTreeMap::new();
        let request = regauth_client::TokenExchange {
            subject_token: service_account_token,
            subject_token_type: regauth_client::SubjectTokenType::Jwt,
            audience: service,
            scopes: &[],
            annotations: &annotations,
        };
        let issued = self.client.exchange(&request, now).await?;
        Ok(Credential {
            refresh_token: issued.refresh_token,
            issued_at: issued.issued_at,
            expires_at: issued.expires_at,
        })
    }
}
