//! What a token request asks for, checked against the settings before any
//! credential is: a known service and scopes that parse.

use super::error::TokenError;
use crate::proto::TokenParams;
use crate::scope::{self, Scope};
use crate::settings::Settings;

/// A validated request: the service, the scopes, and whether a refresh
/// token is wanted too.
#[derive(Debug)]
pub struct Ask {
    /// The registry `service` the access token is for.
    pub service: String,
    /// The requested scopes, parsed and merged.
    pub scopes: Vec<Scope>,
    /// True when a refresh token is wanted.
    pub offline: bool,
    /// The client's self-declared ID, for the audit trail.
    pub client_id: Option<String>,
}

/// What the `service` parameter is called in the request: token exchange
/// names it `audience` (RFC 8693), with its own error code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServiceParam {
    /// `service` (distribution token spec, OAuth2 grants).
    Service,
    /// `audience` (RFC 8693).
    Audience,
}

impl Ask {
    /// Checks `params` against `settings`.
    pub fn validate(
        settings: &Settings,
        params: TokenParams,
        named: ServiceParam,
    ) -> Result<Self, TokenError> {
        let service = match params.service {
            Some(s) if settings.serves(&s) => s,
            Some(s) => {
                let shown: String = s.chars().take(256).collect();
                return Err(match named {
                    ServiceParam::Service => TokenError::UnknownService(shown),
                    ServiceParam::Audience => TokenError::UnknownAudience(shown),
                });
            }
            // Only unambiguous when one registry is served.
            None => match settings.services.as_slice() {
                [only] => only.clone(),
                _ => return Err(TokenError::MissingService),
            },
        };
        let scopes = scope::parse_all(
            params.scopes.iter().map(String::as_str),
            settings.limits.max_scopes,
        )?;
        Ok(Ask {
            service,
            scopes,
            offline: params.offline,
            client_id: params.client_id,
        })
    }
}
