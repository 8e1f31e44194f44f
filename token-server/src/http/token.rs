//! `GET /token` (distribution token spec) and `POST /token` (OAuth2 form).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use axum::Json;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, FromRequest, Request, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};

use super::AppState;
use super::auth::{self, Authenticated};
use super::error::{GetError, PostError, TokenError};
use super::form::Form;
use crate::identity::Principal;
use crate::identity::oidc::IdentityError;
use crate::issue;
use crate::policy;
use crate::proto::TokenReply;
use crate::proto::{
    ExchangeReply, GRANT_TOKEN_EXCHANGE, TOKEN_TYPE_ID_TOKEN, TOKEN_TYPE_JWT, TOKEN_TYPE_REFRESH,
};
use crate::scope::{self, Scope};
use crate::secret::Secret;
use crate::tls::PeerInfo;

/// Longest query string accepted on `GET /token`.
const MAX_QUERY: usize = 8 * 1024;

/// What a token request asks for, whichever method carried it.
struct Ask {
    service: String,
    scopes: Vec<Scope>,
    offline: bool,
    client_id: Option<String>,
}

fn ask(
    state: &AppState,
    form: &Form,
    service: Option<&str>,
    scope_values: Vec<&str>,
    offline: bool,
) -> Result<Ask, TokenError> {
    let settings = state.settings();
    let service = match service {
        Some(s) if settings.services.iter().any(|known| known == s) => s.to_owned(),
        Some(s) => return Err(TokenError::BadRequest(format!("unknown service {s:?}"))),
        // Only unambiguous when one registry is served.
        None if settings.services.len() == 1 => settings.services[0].clone(),
        None => return Err(TokenError::BadRequest("missing service parameter".into())),
    };
    let scopes = scope::parse_all(scope_values, settings.limits.max_scopes)
        .map_err(|e| TokenError::InvalidScope(e.to_string()))?;
    let client_id = form.get("client_id").map(|c| c.chars().take(64).collect());
    Ok(Ask {
        service,
        scopes,
        offline,
        client_id,
    })
}

fn peer(req: &Request) -> Option<PeerInfo> {
    req.extensions()
        .get::<ConnectInfo<PeerInfo>>()
        .map(|c| c.0.clone())
}

/// `GET /token`: Basic or no authentication, parameters in the query.
pub async fn get(State(state): State<Arc<AppState>>, req: Request) -> Result<Response, GetError> {
    let now = state.now();
    let peer = peer(&req);
    let client = peer.as_ref().map(|p| p.addr);
    let query = req.uri().query().unwrap_or_default();
    if query.len() > MAX_QUERY {
        return Err(TokenError::BadRequest(format!(
            "query string is longer than {MAX_QUERY} bytes"
        ))
        .into());
    }
    let form = Form::parse(query.as_bytes()).map_err(|e| TokenError::BadRequest(e.to_string()))?;
    let offline = form
        .get("offline_token")
        .is_some_and(|v| v.eq_ignore_ascii_case("true"));
    let ask = ask(
        &state,
        &form,
        form.get("service"),
        form.all("scope").collect(),
        offline,
    )?;
    let creds = auth::basic_credentials(req.headers())?;
    let username = creds.as_ref().map(|c| c.username.clone());
    let authenticated = match (creds, peer.and_then(|p| p.node)) {
        (Some(c), _) => auth::basic(&state, c, client, now)
            .await
            .inspect_err(|e| rejected(&state, e, username.as_deref(), client))?,
        // A verified client certificate authenticates a GET with no Basic header.
        (None, Some(node)) => Authenticated::Identity {
            principal: (*node).clone(),
        },
        (None, None) => Authenticated::Anonymous,
    };
    let reply = respond(&state, authenticated, &ask, client, now, false)?;
    Ok(reply_response(reply))
}

/// `POST /token`: the OAuth2 `password` and `refresh_token` grants.
pub async fn post(State(state): State<Arc<AppState>>, req: Request) -> Result<Response, PostError> {
    let now = state.now();
    let peer = peer(&req);
    let client = peer.as_ref().map(|p| p.addr);
    check_form_content_type(req.headers())?;
    let limit = state.settings().limits.max_body_bytes;
    let body = Bytes::from_request(req, &state)
        .await
        .map_err(|rejection| {
            if rejection.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                TokenError::TooLarge(limit)
            } else {
                TokenError::BadRequest("could not read the request body".into())
            }
        })?;
    let form = Form::parse(&body).map_err(|e| TokenError::BadRequest(e.to_string()))?;
    let grant = form
        .get("grant_type")
        .ok_or_else(|| TokenError::BadRequest("missing grant_type".into()))?;
    if grant == GRANT_TOKEN_EXCHANGE {
        let reply = exchange(&state, &form, client, now).await?;
        let mut resp = Json(reply).into_response();
        resp.headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        return Ok(resp);
    }
    let offline = match grant {
        "password" => form.get("access_type") == Some("offline"),
        // The refresh grant hands the same token back (it is not rotated), and
        // a node asks with its certificate precisely to get a credential.
        "refresh_token" | "client_credentials" => true,
        other => return Err(TokenError::UnsupportedGrant(other.chars().take(64).collect()).into()),
    };
    // Validate the whole request before paying for a password hash check.
    let ask = ask(
        &state,
        &form,
        form.get("service"),
        form.all("scope").collect(),
        offline,
    )?;
    let authenticated = match grant {
        "password" => {
            let user = form
                .get("username")
                .ok_or_else(|| TokenError::BadRequest("missing username".into()))?;
            let password = form
                .get("password")
                .ok_or_else(|| TokenError::BadRequest("missing password".into()))?;
            // Clients handed a username and password by a credential plugin
            // (the kubelet passes the pair to containerd) send the regauth
            // refresh token as the password of this grant: accept it as such.
            let creds = auth::BasicCredentials {
                username: user.to_owned(),
                password: Secret::new(password.as_bytes().to_vec()),
            };
            let result = auth::basic(&state, creds, client, now).await;
            result.inspect_err(|e| rejected(&state, e, Some(user), client))?
        }
        "refresh_token" => {
            let token = form
                .get("refresh_token")
                .ok_or_else(|| TokenError::BadRequest("missing refresh_token".into()))?;
            let result = auth::refresh(&state, Secret::new(token.as_bytes().to_vec()), now);
            result.inspect_err(|e| rejected(&state, e, None, client))?
        }
        _ => match peer.and_then(|p| p.node) {
            Some(node) => Authenticated::Identity {
                principal: (*node).clone(),
            },
            None => {
                let e = TokenError::InvalidClient(
                    "client_credentials needs a client certificate the server trusts (mutual TLS)"
                        .into(),
                );
                rejected(&state, &e, None, client);
                return Err(e.into());
            }
        },
    };
    let reply = respond(&state, authenticated, &ask, client, now, true)?;
    Ok(reply_response(reply))
}

/// RFC 8693 token exchange: a token from a trusted issuer becomes a regauth
/// refresh token, the registry credential.
async fn exchange(
    state: &AppState,
    form: &Form,
    client: Option<SocketAddr>,
    now: SystemTime,
) -> Result<ExchangeReply, TokenError> {
    let settings = state.settings();
    let token = form
        .get("subject_token")
        .ok_or_else(|| TokenError::BadRequest("missing subject_token".into()))?;
    match form.get("subject_token_type") {
        Some(TOKEN_TYPE_JWT | TOKEN_TYPE_ID_TOKEN) => {}
        Some(other) => {
            return Err(TokenError::BadRequest(format!(
                "unsupported subject_token_type {:?}; use {TOKEN_TYPE_JWT} or {TOKEN_TYPE_ID_TOKEN}",
                other.chars().take(100).collect::<String>()
            )));
        }
        None => return Err(TokenError::BadRequest("missing subject_token_type".into())),
    }
    if let Some(t) = form
        .get("requested_token_type")
        .filter(|t| *t != TOKEN_TYPE_REFRESH)
    {
        return Err(TokenError::BadRequest(format!(
            "requested_token_type {:?} is not issued; this server issues {TOKEN_TYPE_REFRESH}",
            t.chars().take(100).collect::<String>()
        )));
    }
    let audience = form.get("audience").or(form.get("service"));
    let ask =
        ask(state, form, audience, form.all("scope").collect(), true).map_err(|e| match e {
            TokenError::BadRequest(m) if m.starts_with("unknown service") => {
                TokenError::InvalidTarget(m.replacen("unknown service", "unknown audience", 1))
            }
            e => e,
        })?;
    let (principal, issuer) = settings.issuers.verify(token, now).await.map_err(|e| {
        state.metrics().auth_failure(e.reason());
        tracing::info!(
            target: "regauth::audit",
            outcome = "rejected",
            reason = e.reason(),
            grant = "token-exchange",
            client = %client.map_or_else(|| "-".to_owned(), |c| c.to_string()),
            "token exchange rejected: {e}"
        );
        match e {
            IdentityError::Keys(_) => TokenError::Unavailable(e.to_string()),
            e => TokenError::SubjectToken(e.to_string()),
        }
    })?;
    let (refresh, claims) = settings
        .refresh
        .issue(&principal, None, issuer.credential_ttl, now)
        .map_err(|e| {
            tracing::error!(error = %e, "signing a refresh token failed");
            TokenError::Internal
        })?;
    let decisions = settings.policy.decide(&principal, &ask.scopes);
    let granted = scope_list(&policy::granted(&decisions));
    // Service-account annotations a kubelet plugin forwarded: recorded for
    // the audit trail only, since nothing vouches for them.
    let annotations: Vec<String> = form
        .with_prefix("annotation.")
        .take(16)
        .map(|(k, v)| format!("{}={}", truncate(k, 128), truncate(v, 256)))
        .collect();
    tracing::info!(
        target: "regauth::audit",
        outcome = "exchanged",
        kind = %principal.kind,
        sub = %principal.subject(),
        issuer = %issuer.name,
        service = %ask.service,
        client = %client.map_or_else(|| "-".to_owned(), |c| c.to_string()),
        requested = %ask.scopes.iter().map(Scope::to_string).collect::<Vec<_>>().join(" "),
        granted = %granted,
        annotations = %annotations.join(","),
        jti = %claims.jti,
        "credential issued for a subject token"
    );
    Ok(ExchangeReply {
        access_token: refresh.clone(),
        refresh_token: refresh,
        issued_token_type: TOKEN_TYPE_REFRESH.to_owned(),
        token_type: "N_A".to_owned(),
        expires_in: issuer.credential_ttl.as_secs(),
        scope: (!ask.scopes.is_empty()).then_some(granted),
    })
}

fn truncate(s: &str, max: usize) -> String {
    s.chars().take(max).collect()
}

fn scope_list(grants: &[policy::Grant]) -> String {
    grants
        .iter()
        .map(|g| format!("{}:{}:{}", g.resource_type, g.name, g.actions.join(",")))
        .collect::<Vec<_>>()
        .join(" ")
}

fn check_form_content_type(headers: &HeaderMap) -> Result<(), TokenError> {
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
        Err(TokenError::BadRequest(
            "Content-Type must be application/x-www-form-urlencoded".into(),
        ))
    }
}

fn reply_response(reply: TokenReply) -> Response {
    let mut resp = Json(reply).into_response();
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

fn rejected(state: &AppState, e: &TokenError, username: Option<&str>, client: Option<SocketAddr>) {
    state.metrics().auth_failure(e.reason());
    // Usernames are logged only when they look like account names, so a
    // password typed into the user field never reaches the log.
    let user = username.filter(|u| {
        u.len() <= 64
            && u.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-@".contains(&b))
    });
    tracing::info!(
        target: "regauth::audit",
        outcome = "rejected",
        reason = e.reason(),
        user = user.unwrap_or("-"),
        client = %client.map_or_else(|| "-".to_owned(), |c| c.to_string()),
        "token request rejected: {e}"
    );
}

/// Decides the scopes, signs the access token, and adds a refresh token
/// when one was asked for.
fn respond(
    state: &AppState,
    authenticated: Authenticated,
    ask: &Ask,
    client: Option<SocketAddr>,
    now: SystemTime,
    oauth: bool,
) -> Result<TokenReply, TokenError> {
    let started = Instant::now();
    let settings = state.settings();
    let principal = authenticated.principal();
    let decisions = settings.policy.decide(&principal, &ask.scopes);
    let grants = policy::granted(&decisions);
    let key = settings.keys.current();
    let access = issue::access_token(
        key,
        &settings.issuer,
        &principal.subject(),
        &ask.service,
        &grants,
        settings.access_token_ttl,
        now,
    )
    .map_err(|e| {
        tracing::error!(error = %e, "signing an access token failed");
        TokenError::Internal
    })?;

    state.metrics().issued(started.elapsed());
    let refresh_token = match (&authenticated, ask.offline) {
        (Authenticated::Refresh { token, .. }, true) => {
            // Not rotated: clients such as skopeo keep the token they were given.
            Some(String::from_utf8_lossy(token.expose()).into_owned())
        }
        (
            Authenticated::Password { principal, .. } | Authenticated::Identity { principal },
            true,
        ) => {
            let pwv = match &authenticated {
                Authenticated::Password { pwv, .. } => Some(pwv.clone()),
                _ => None,
            };
            let (token, _) = settings
                .refresh
                .issue(principal, pwv, settings.refresh_token_ttl, now)
                .map_err(|e| {
                    tracing::error!(error = %e, "signing a refresh token failed");
                    TokenError::Internal
                })?;
            Some(token)
        }
        _ => None,
    };

    audit(
        &principal,
        ask,
        &decisions,
        &access,
        key.kid(),
        client,
        refresh_token.is_some(),
    );
    let scope = oauth.then(|| {
        grants
            .iter()
            .map(|g| format!("{}:{}:{}", g.resource_type, g.name, g.actions.join(",")))
            .collect::<Vec<_>>()
            .join(" ")
    });
    Ok(TokenReply {
        token: access.token.clone(),
        access_token: access.token,
        token_type: "Bearer".into(),
        expires_in: access.expires_in,
        issued_at: humantime::format_rfc3339_seconds(now).to_string(),
        refresh_token,
        scope,
    })
}

fn audit(
    principal: &Principal,
    ask: &Ask,
    decisions: &[policy::Decision],
    access: &issue::AccessToken,
    kid: &str,
    client: Option<SocketAddr>,
    refresh: bool,
) {
    let requested: Vec<String> = ask.scopes.iter().map(Scope::to_string).collect();
    let granted: Vec<String> = decisions
        .iter()
        .filter(|d| !d.grant.actions.is_empty())
        .map(|d| {
            format!(
                "{}:{}:{}",
                d.grant.resource_type,
                d.grant.name,
                d.grant.actions.join(",")
            )
        })
        .collect();
    let rules: Vec<String> = decisions
        .iter()
        .map(|d| d.rule.map_or_else(|| "none".to_owned(), |r| r.to_string()))
        .collect();
    let fully = decisions
        .iter()
        .zip(&ask.scopes)
        .all(|(d, s)| d.grant.actions.len() == s.actions.len());
    tracing::info!(
        target: "regauth::audit",
        outcome = if fully { "granted" } else { "partially_denied" },
        kind = %principal.kind,
        sub = %principal.subject(),
        service = %ask.service,
        client = %client.map_or_else(|| "-".to_owned(), |c| c.to_string()),
        client_id = ask.client_id.as_deref().unwrap_or("-"),
        requested = %requested.join(" "),
        granted = %granted.join(" "),
        rules = %rules.join(","),
        jti = %access.jti,
        kid,
        refresh,
        "token issued"
    );
}
