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
use crate::token::refresh::{RefreshClaims, RefreshError, RefreshTokens};

/// Facts about the connection a request arrived on.
#[derive(Debug, Clone, Default)]
pub struct Peer {
    /// The client's address.
    pub addr: Option<SocketAddr>,
    /// The certificates the client presented (the leaf first, then what it
    /// sent with it), which TLS verified; `None` when it presented none.
    pub certificates: Option<Arc<[CertificateDer<'static>]>>,
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
    /// fingerprint when the caller used a password, or to what vouched for
    /// the caller otherwise.
    Mint {
        /// Fingerprint of the account's password hash.
        pwv: Option<String>,
        /// The issuer's `iss`, or the fingerprint of the client CA, that
        /// vouched for the caller (see [`RefreshClaims::via`]).
        via: Option<String>,
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
    /// A client certificate that chains to no client CA the settings in
    /// force trust (the bundle changed since the connection was made).
    #[error("the client certificate chains to no client CA the server trusts now")]
    UntrustedCertificate,
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
            AuthError::NoClientCertificate
            | AuthError::UnusableCertificate
            | AuthError::UntrustedCertificate => "invalid_client",
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
        Grant::NoCredentials => match &peer.certificates {
            Some(chain) => certificate(settings, chain, fleet_now).map(alone),
            None => Ok(alone(Authenticated {
                principal: Principal::anonymous(),
                refresh: Refresh::Never,
            })),
        },
        Grant::ClientCredentials => match &peer.certificates {
            Some(chain) => certificate(settings, chain, fleet_now).map(alone),
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

/// A client certificate's principal; its refresh token names the client CA
/// the certificate chains to, among those the settings in force trust.
fn certificate(
    settings: &Settings,
    chain: &[CertificateDer<'_>],
    at: SystemTime,
) -> Result<Authenticated, AuthError> {
    let leaf = chain.first().ok_or(AuthError::UnusableCertificate)?;
    let principal = certificate::principal(leaf, &settings.certificates)
        .ok_or(AuthError::UnusableCertificate)?;
    let cas = settings
        .tls
        .as_ref()
        .map(|t| t.client_cas.load_full())
        .ok_or(AuthError::UntrustedCertificate)?;
    let anchor = cas.anchor(chain).ok_or(AuthError::UntrustedCertificate)?;
    Ok(Authenticated {
        principal,
        refresh: Refresh::Mint {
            pwv: None,
            via: Some(anchor.to_owned()),
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
            guards.limiter.cached_success(addr, username).await;
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
                via: None,
                ttl: settings.refresh_token_ttl,
                at,
            },
        }),
        Verified::No => Err(AuthError::BadPassword),
    }
}

/// Verifies a refresh token and re-checks, against the settings in force,
/// what vouched for the principal it was issued to.
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
        if !still_vouched_for(settings, &claims) {
            return Err(RefreshError::Revoked.into());
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

/// True while the settings in force still trust what vouched for a
/// principal other than an account when its refresh token was minted:
/// - an issuer's principals: an issuer of the same name and kind, with the
///   `iss` the token names (tokens minted before they named it: the `iss`
///   an OIDC principal's claims recorded; a Kubernetes one's name and kind
///   alone), so an issuer removed, or replaced under its name, revokes them;
/// - a certificate's: the client CA it chained to (tokens minted before
///   they named it: a CA with the name of the certificate's issuer), so a
///   CA no longer trusted, or `tls.client_ca` removed, revokes them.
fn still_vouched_for(settings: &Settings, claims: &RefreshClaims) -> bool {
    let principal = &claims.principal;
    match principal.kind {
        Kind::Kubernetes | Kind::Oidc => {
            let Some(name) = principal.attributes.get("issuer") else {
                return false;
            };
            let issuers = settings.issuers.all();
            let Some(issuer) = issuers
                .iter()
                .find(|i| i.name == *name && i.kind.principal_kind() == principal.kind)
            else {
                return false;
            };
            match (&claims.via, principal.attributes.get("claims.iss")) {
                (Some(iss), _) | (None, Some(iss)) => *iss == issuer.issuer,
                (None, None) => principal.kind == Kind::Kubernetes,
            }
        }
        Kind::Node | Kind::Certificate => {
            let Some(tls) = &settings.tls else {
                return false;
            };
            let cas = tls.client_cas.load();
            match &claims.via {
                Some(fingerprint) => cas.trusts(fingerprint),
                None => principal
                    .attributes
                    .get("issuer")
                    .is_some_and(|name| cas.has_subject(name)),
            }
        }
        Kind::Account | Kind::Anonymous => false,
    }
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
            via: Some(issuer.issuer.clone()),
            ttl: issuer.credential_ttl,
            at,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    /// A config trusting the Kubernetes issuer `cluster-a`
    /// (`https://a.example`) and the OIDC issuer `ci` (`https://ci.example`),
    /// without TLS.
    fn settings() -> (tempfile::TempDir, Settings) {
        let dir = tempfile::tempdir().unwrap();
        let g =
            crate::keys::generate(crate::keys::Algorithm::Es256, "t", crate::clock::now()).unwrap();
        std::fs::write(dir.path().join("k.pem"), g.key_pem).unwrap();
        std::fs::write(dir.path().join("c.pem"), g.cert_pem).unwrap();
        std::fs::write(dir.path().join("secret"), [9u8; 32]).unwrap();
        let text = "issuer: t\nservices: [r]\nsigning_keys: [{key: k.pem, cert: c.pem}]\n\
             refresh_secret_file: secret\n\
             issuers:\n\
             \x20 - {name: cluster-a, kind: kubernetes, issuer: https://a.example, audiences: [r], jwks_uri: https://a.example/k}\n\
             \x20 - {name: ci, kind: oidc, issuer: https://ci.example, audiences: [r], jwks_uri: https://ci.example/k}\n";
        let settings =
            crate::config::load_str(text, dir.path(), std::path::Path::new("c")).unwrap();
        (dir, settings)
    }

    fn claims(kind: Kind, attributes: &[(&str, &str)], via: Option<&str>) -> RefreshClaims {
        RefreshClaims {
            iss: "t".into(),
            aud: "t".into(),
            sub: String::new(),
            iat: 0,
            nbf: 0,
            exp: 0,
            jti: "rt.x".into(),
            token_use: "refresh".into(),
            principal: Principal {
                kind,
                name: "n".into(),
                attributes: attributes
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect::<BTreeMap<_, _>>(),
            },
            pwv: None,
            via: via.map(str::to_owned),
        }
    }

    /// An issuer's principals stand while an issuer of that name, kind and
    /// `iss` is configured; tokens minted before they named the `iss` are
    /// checked by the `iss` an OIDC token recorded, or by name and kind.
    /// Certificates need a client CA, which this config has not.
    #[test]
    fn what_vouched_for_a_principal_is_checked_against_the_config() {
        let (_dir, s) = settings();
        let k8s = |via| claims(Kind::Kubernetes, &[("issuer", "cluster-a")], via);
        assert!(still_vouched_for(&s, &k8s(Some("https://a.example"))));
        assert!(!still_vouched_for(&s, &k8s(Some("https://old.example"))));
        assert!(still_vouched_for(&s, &k8s(None)), "minted before via");
        let oidc = |iss, via| claims(Kind::Oidc, &[("issuer", "ci"), ("claims.iss", iss)], via);
        assert!(still_vouched_for(&s, &oidc("https://ci.example", None)));
        assert!(!still_vouched_for(&s, &oidc("https://old.example", None)));
        assert!(still_vouched_for(
            &s,
            &oidc("https://ci.example", Some("https://ci.example"))
        ));
        assert!(
            !still_vouched_for(
                &s,
                &claims(
                    Kind::Oidc,
                    &[("issuer", "cluster-a")],
                    Some("https://a.example")
                )
            ),
            "the kind must match too"
        );
        assert!(!still_vouched_for(
            &s,
            &claims(Kind::Oidc, &[], Some("https://ci.example"))
        ));
        for kind in [Kind::Node, Kind::Certificate] {
            assert!(!still_vouched_for(
                &s,
                &claims(kind, &[("issuer", "CN=ca")], Some("sha256:00"))
            ));
        }
    }
}
