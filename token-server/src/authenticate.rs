//! Every way into the server: a [`Grant`] and the connection it came on
//! become an [`Authenticated`] caller, or an [`AuthError`].
//!
//! Functions here hold passwords and tokens, so they are instrumented with
//! `skip_all` and log only outcomes.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use rustls_pki_types::CertificateDer;

use crate::identity::account::Verified;
use crate::identity::issuers::SubjectTokenError;
use crate::identity::{Kind, Principal, certificate};
use crate::limiter::Throttled;
use crate::metrics::{Metrics, SharedUse};
use crate::password_check::{CheckError, PasswordChecks};
use crate::proto::Grant;
use crate::secret::Secret;
use crate::settings::{RevocationUnavailable, Settings};
use crate::shared::SharedState;
use crate::shared::limiter::Limiter;
use crate::shared::revocation::{Presented, Revoked};
use crate::token::refresh::{RefreshError, RefreshTokens};

/// Facts about the connection a request arrived on.
#[derive(Debug, Clone, Default)]
pub struct Peer {
    /// The client's address.
    pub addr: Option<SocketAddr>,
    /// The leaf certificate the client presented and TLS verified.
    pub certificate: Option<Arc<CertificateDer<'static>>>,
}

/// A caller whose credentials checked out.
#[derive(Debug)]
pub struct Authenticated {
    /// Who it is.
    pub principal: Principal,
    /// What refresh token the caller gets when it asks for one.
    pub refresh: Refresh,
}

/// The refresh token an authenticated caller may be given.
#[derive(Debug)]
pub enum Refresh {
    /// The refresh token the caller presented: handed back, never rotated,
    /// because clients such as skopeo keep the token they were given.
    Presented {
        /// The token.
        token: Secret,
        /// Its `jti`, for the audit log.
        jti: String,
    },
    /// A new one, valid for `ttl`, bound to the account's password-hash
    /// fingerprint when the caller used a password.
    Mint {
        /// Fingerprint of the account's password hash.
        pwv: Option<String>,
        /// Lifetime.
        ttl: Duration,
        /// When it is issued, in the fleet's clock (see
        /// [`SharedState::fleet_time`]): refresh tokens are stamped and
        /// checked in it.
        at: SystemTime,
    },
    /// None: anonymous callers get no credential.
    Never,
}

/// Why a caller was not authenticated. Messages are safe to show the client.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// Unknown account or wrong password; the two are not told apart.
    #[error("invalid username or password")]
    BadPassword,
    /// A refresh token that is invalid, expired or revoked.
    #[error(transparent)]
    Refresh(#[from] RefreshError),
    /// A subject token that did not verify.
    #[error(transparent)]
    SubjectToken(SubjectTokenError),
    /// The subject token's issuer keys cannot be fetched; retry later.
    #[error("the subject token cannot be checked now: {0}")]
    IssuerUnavailable(#[source] SubjectTokenError),
    /// `client_credentials` without a trusted client certificate.
    #[error("client_credentials needs a client certificate the server trusts (mutual TLS)")]
    NoClientCertificate,
    /// A client certificate TLS accepted but that names nobody.
    #[error("the client certificate has no usable subject common name")]
    UnusableCertificate,
    /// Too many failed attempts from this client or for this account.
    #[error(transparent)]
    Throttled(#[from] Throttled),
    /// Every password-hashing slot is busy; retry after the given time.
    #[error("the server is busy checking passwords; retry in {} s", .0.as_secs().max(1))]
    Busy(Duration),
    /// The credential, or its subject, was revoked.
    #[error(transparent)]
    Revoked(#[from] Revoked),
    /// Revocations cannot be read and `revocation_unavailable` is `deny`.
    #[error("revocation status cannot be checked now; retry shortly")]
    RevocationUnavailable,
    /// The password check could not run.
    #[error("the password check failed")]
    Internal,
}

impl From<CheckError> for AuthError {
    fn from(e: CheckError) -> Self {
        match e {
            CheckError::Throttled(t) => AuthError::Throttled(t),
            CheckError::Busy(wait) => AuthError::Busy(wait),
            CheckError::Failed => AuthError::Internal,
        }
    }
}

impl AuthError {
    /// Short label for logs and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            AuthError::BadPassword | AuthError::Refresh(_) => "bad_credentials",
            AuthError::SubjectToken(e) | AuthError::IssuerUnavailable(e) => e.reason(),
            AuthError::NoClientCertificate | AuthError::UnusableCertificate => "invalid_client",
            AuthError::Throttled(_) => "rate_limited",
            AuthError::Busy(_) => "busy",
            AuthError::Revoked(_) => "revoked",
            AuthError::RevocationUnavailable => "revocation_unavailable",
            AuthError::Internal => "internal",
        }
    }
}

/// What authentication needs besides the settings: process-wide state that
/// outlives config reloads.
pub struct Guards<'a> {
    /// Backoff after failed password checks, fleet-wide when shared.
    pub limiter: &'a Arc<Limiter>,
    /// The fleet's shared state, when configured.
    pub shared: Option<&'a SharedState>,
    /// Bounded, joined password hashing.
    pub checks: &'a Arc<PasswordChecks>,
    /// Counters.
    pub metrics: &'a Metrics,
}

/// Authenticates `grant`, presented over the connection `peer`, under one
/// snapshot of the settings; then, in a fleet, checks the revocations this
/// replica holds, and how fresh they are.
#[tracing::instrument(level = "debug", skip_all)]
pub async fn authenticate(
    settings: &Arc<Settings>,
    grant: Grant,
    peer: &Peer,
    now: SystemTime,
    guards: &Guards<'_>,
) -> Result<Authenticated, AuthError> {
    let (authenticated, presented) = identify(settings, grant, peer, now, guards).await?;
    if let Some(shared) = guards.shared
        && authenticated.principal.kind != Kind::Anonymous
    {
        let held = Instant::now();
        // What this replica holds is enforced whether or not Redis answers.
        shared
            .revocations()
            .check(&authenticated.principal, presented.as_ref(), held)?;
        if !shared.in_sync(held, settings.revocation_staleness) {
            guards.metrics.shared_state_fallback(SharedUse::Revocation);
            if settings.revocation_unavailable == RevocationUnavailable::Deny {
                return Err(AuthError::RevocationUnavailable);
            }
        }
    }
    Ok(authenticated)
}

/// Who the caller is, and the refresh token it presented, if any.
async fn identify(
    settings: &Arc<Settings>,
    grant: Grant,
    peer: &Peer,
    now: SystemTime,
    guards: &Guards<'_>,
) -> Result<(Authenticated, Option<Presented>), AuthError> {
    let alone = |a: Authenticated| (a, None);
    // Refresh tokens are minted and checked in the fleet's clock.
    let fleet_now = guards.shared.map_or(now, |s| s.fleet_time(now));
    match grant {
        // A verified client certificate authenticates a request that
        // carries no other credentials.
        Grant::NoCredentials => match &peer.certificate {
            Some(cert) => certificate(settings, cert, fleet_now).map(alone),
            None => Ok(alone(Authenticated {
                principal: Principal::anonymous(),
                refresh: Refresh::Never,
            })),
        },
        Grant::ClientCredentials => match &peer.certificate {
            Some(cert) => certificate(settings, cert, fleet_now).map(alone),
            None => Err(AuthError::NoClientCertificate),
        },
        // Clients handed a username and password by a credential plugin
        // (the kubelet passes the pair to containerd) send the regauth
        // refresh token as the password: accept it as such.
        Grant::Basic { username, password } | Grant::Password { username, password } => {
            if RefreshTokens::looks_like_token(password.expose()) {
                refresh(settings, password, fleet_now)
            } else {
                account_password(settings, &username, password, peer, guards, fleet_now)
                    .await
                    .map(alone)
            }
        }
        Grant::RefreshToken(token) => refresh(settings, token, fleet_now),
        Grant::TokenExchange { subject_token, .. } => {
            exchange(settings, &subject_token, now, fleet_now)
                .await
                .map(alone)
        }
    }
}

fn certificate(
    settings: &Settings,
    cert: &CertificateDer<'_>,
    at: SystemTime,
) -> Result<Authenticated, AuthError> {
    let principal = certificate::principal(cert, &settings.certificates)
        .ok_or(AuthError::UnusableCertificate)?;
    Ok(Authenticated {
        principal,
        refresh: Refresh::Mint {
            pwv: None,
            ttl: settings.refresh_token_ttl,
            at,
        },
    })
}

/// Checks an account password: refused at once while the account or the
/// client's network is in backoff, then the cache, then a slow hash check
/// that is reserved against the backoff allowance before it runs.
async fn account_password(
    settings: &Arc<Settings>,
    username: &str,
    password: Secret,
    peer: &Peer,
    guards: &Guards<'_>,
    at: SystemTime,
) -> Result<Authenticated, AuthError> {
    let addr = peer.addr.map(|a| a.ip());
    // No round trip: this process's counts and the fleet's mirrored blocks.
    guards.limiter.check(addr, username)?;
    let cached =
        settings
            .accounts
            .verify_cached(username, password.expose().as_bytes(), Instant::now());
    guards.metrics.password_cache(cached.is_some());
    let verified = match cached {
        Some(v) => {
            guards.limiter.cached_success(addr, username);
            v
        }
        None => {
            let key = settings
                .accounts
                .check_key(username, password.expose().as_bytes());
            // The same guess arriving while this one is checked shares its
            // result and its one attempt against the allowance.
            let limiter = Arc::clone(guards.limiter);
            let name = username.to_owned();
            let reserve = Box::pin(async move { limiter.reserve(addr, &name).await });
            guards
                .checks
                .check(settings, key, username, password, reserve)
                .await?
        }
    };
    match verified {
        Verified::Yes { principal, pwv } => Ok(Authenticated {
            principal,
            refresh: Refresh::Mint {
                pwv: Some(pwv),
                ttl: settings.refresh_token_ttl,
                at,
            },
        }),
        Verified::No => Err(AuthError::BadPassword),
    }
}

/// Verifies a refresh token and re-checks the account it was issued to.
fn refresh(
    settings: &Settings,
    token: Secret,
    now: SystemTime,
) -> Result<(Authenticated, Option<Presented>), AuthError> {
    let claims = settings.refresh.verify(token.expose(), now)?;
    let principal = if claims.principal.kind == Kind::Account {
        // A removed account or a changed password revokes its tokens.
        let same = claims.pwv.as_deref().is_some_and(|pwv| {
            settings
                .accounts
                .pwv_is_current(&claims.principal.name, pwv)
        });
        if !same {
            return Err(RefreshError::Revoked.into());
        }
        settings
            .accounts
            .principal(&claims.principal.name)
            .ok_or(RefreshError::Revoked)?
    } else {
        // A token minted from an issuer's token stands only while this
        // config still trusts that issuer: removing it revokes them.
        if matches!(claims.principal.kind, Kind::Kubernetes | Kind::Oidc) {
            let issuer = claims.principal.attributes.get("issuer");
            let trusted =
                issuer.is_some_and(|name| {
                    settings.issuers.all().iter().any(|i| {
                        i.name == *name && i.kind.principal_kind() == claims.principal.kind
                    })
                });
            if !trusted {
                return Err(RefreshError::Revoked.into());
            }
        }
        claims.principal
    };
    let presented = Presented {
        jti: claims.jti.clone(),
        iat: claims.iat,
    };
    Ok((
        Authenticated {
            principal,
            refresh: Refresh::Presented {
                token,
                jti: claims.jti,
            },
        },
        Some(presented),
    ))
}

/// RFC 8693: a token from a trusted issuer, checked against `now`; the
/// refresh token is minted `at` (the fleet's clock).
async fn exchange(
    settings: &Settings,
    subject_token: &Secret,
    now: SystemTime,
    at: SystemTime,
) -> Result<Authenticated, AuthError> {
    let (principal, issuer) = settings
        .issuers
        .verify(subject_token.expose(), now)
        .await
        .map_err(|e| match e {
            SubjectTokenError::Keys(_) => AuthError::IssuerUnavailable(e),
            e => AuthError::SubjectToken(e),
        })?;
    Ok(Authenticated {
        principal,
        refresh: Refresh::Mint {
            pwv: None,
            ttl: issuer.credential_ttl,
            at,
        },
    })
}
