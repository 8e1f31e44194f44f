//! `GET /token` (distribution token spec) and `POST /token` (OAuth2 form).
//!
//! Each request reads top to bottom: take one snapshot of the settings and
//! one `now`, parse, check the ask, authenticate, decide, issue, audit.

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use axum::Json;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};

use super::AppState;
use super::ask::{Ask, ServiceParam};
use super::audit;
use super::error::{GetError, PostError, TokenError};
use super::request::{self, TokenRequest};
use crate::authenticate::{self, Authenticated, Peer, Refresh};
use crate::proto::{ExchangeReply, Grant, TOKEN_TYPE_REFRESH, TokenReply};
use crate::settings::Settings;
use crate::token::access;

/// `GET /token`: Basic or no authentication, parameters in the query.
pub async fn get(State(state): State<Arc<AppState>>, req: Request) -> Result<Response, GetError> {
    let settings = state.settings();
    let now = state.now();
    let peer = peer(&req);
    let request = request::from_get(req.uri().query(), req.headers()).map_err(TokenError::from)?;
    let reply = answer(&state, &settings, request, &peer, now, Form::Get).await?;
    Ok(reply)
}

/// `POST /token`: the OAuth2 grants and RFC 8693 token exchange.
pub async fn post(State(state): State<Arc<AppState>>, req: Request) -> Result<Response, PostError> {
    let settings = state.settings();
    let now = state.now();
    let peer = peer(&req);
    let (parts, body) = req.into_parts();
    let request = request::from_post(&parts.headers, body, settings.limits.max_body_bytes)
        .await
        .map_err(TokenError::from)?;
    let reply = answer(&state, &settings, request, &peer, now, Form::Post).await?;
    Ok(reply)
}

/// Which reply shape the request gets.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Form {
    Get,
    Post,
}

fn peer(req: &Request) -> Peer {
    req.extensions().get::<Peer>().cloned().unwrap_or_default()
}

async fn answer(
    state: &AppState,
    settings: &Arc<Settings>,
    request: TokenRequest,
    peer: &Peer,
    now: SystemTime,
    form: Form,
) -> Result<Response, TokenError> {
    let TokenRequest { grant, params } = request;
    let grant_name = grant.name();
    let username = grant.username().map(str::to_owned);
    let annotations = match &grant {
        Grant::TokenExchange { annotations, .. } => Some(annotations.clone()),
        _ => None,
    };
    let named = match annotations {
        Some(_) => ServiceParam::Audience,
        None => ServiceParam::Service,
    };
    // Check the whole request before paying for a password hash.
    let ask = Ask::validate(settings, params, named)?;
    let guards = state.guards();
    let who = authenticate::authenticate(settings, grant, peer, now, &guards)
        .await
        .map_err(|e| {
            let e = TokenError::from(e);
            state.metrics().auth_failure(e.reason());
            audit::rejected(&e, grant_name, username.as_deref(), peer);
            e
        })?;
    match annotations {
        Some(annotations) => exchange_reply(settings, who, &ask, &annotations, peer),
        None => {
            let started = Instant::now();
            let reply = token_reply(settings, who, &ask, peer, now, grant_name, form)?;
            state.metrics().issued(started.elapsed());
            Ok(reply)
        }
    }
}

/// Decides the scopes, signs the access token, and adds a refresh token
/// when one was asked for.
fn token_reply(
    settings: &Settings,
    who: Authenticated,
    ask: &Ask,
    peer: &Peer,
    now: SystemTime,
    grant: &'static str,
    form: Form,
) -> Result<Response, TokenError> {
    let decisions = settings.policy.decide(&who.principal, &ask.scopes);
    let grants = crate::policy::granted(&decisions);
    let key = settings.keys.current();
    let access = access::access_token(
        key,
        &settings.issuer,
        &who.principal.subject(),
        &ask.service,
        &grants,
        settings.access_token_ttl,
        now,
    )?;
    let (refresh_token, refresh_jti) = match (who.refresh, ask.offline) {
        (_, false) | (Refresh::Never, true) => (None, None),
        (Refresh::Presented { token, jti }, true) => (Some(token), Some(jti)),
        (Refresh::Mint { pwv, via, ttl, at }, true) => {
            let (token, claims) = settings.refresh.issue(&who.principal, pwv, via, ttl, at)?;
            (Some(token), Some(claims.jti))
        }
    };
    audit::issued(
        &who.principal,
        ask,
        &decisions,
        peer,
        &audit::Issued {
            grant,
            jti: &access.jti,
            kid: key.kid(),
            refresh_jti: refresh_jti.as_deref(),
        },
    );
    let reply = TokenReply {
        token: access.token.clone(),
        access_token: access.token,
        token_type: "Bearer".into(),
        expires_in: access.expires_in,
        issued_at: humantime::format_rfc3339_seconds(now).to_string(),
        refresh_token,
        scope: (form == Form::Post).then(|| audit::granted(grants.iter())),
    };
    Ok(no_store(Json(reply).into_response()))
}

/// RFC 8693: the verified subject becomes a regauth refresh token, the
/// registry credential.
fn exchange_reply(
    settings: &Settings,
    who: Authenticated,
    ask: &Ask,
    annotations: &[(String, String)],
    peer: &Peer,
) -> Result<Response, TokenError> {
    let Refresh::Mint { pwv, via, ttl, at } = who.refresh else {
        // `authenticate` mints for every verified subject token; anything
        // else here would be a bug, and issuing nothing is the safe answer.
        return Err(TokenError::Internal(crate::token::IssueError::NoCredential));
    };
    let (refresh, claims) = settings.refresh.issue(&who.principal, pwv, via, ttl, at)?;
    let decisions = settings.policy.decide(&who.principal, &ask.scopes);
    audit::exchanged(
        &who.principal,
        ask,
        &decisions,
        annotations,
        peer,
        &claims.jti,
    );
    let reply = ExchangeReply {
        access_token: refresh.clone(),
        refresh_token: refresh,
        issued_token_type: TOKEN_TYPE_REFRESH.to_owned(),
        token_type: "N_A".to_owned(),
        expires_in: ttl.as_secs(),
        scope: (!ask.scopes.is_empty()).then(|| audit::granted(decisions.iter().map(|d| &d.grant))),
    };
    Ok(no_store(Json(reply).into_response()))
}

fn no_store(mut resp: Response) -> Response {
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}
