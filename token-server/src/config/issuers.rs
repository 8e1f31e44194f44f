//! The `issuers` section: token issuers trusted for workload identity.

use std::time::Duration;

use super::check::Check;
use super::file::IssuerEntry;
use super::{
    DEFAULT_CREDENTIAL_TTL, DEFAULT_JWKS_MAX_REFRESH, DEFAULT_JWKS_MIN_REFRESH,
    DEFAULT_MAX_TOKEN_AGE,
};
use crate::identity::issuers::{Issuer, IssuerKind, Issuers};
use crate::identity::jwks::{KeyCache, KeySource, RefreshBounds, parse_jwks};

/// The trusted issuers, each with its key source and HTTP client.
pub(super) fn issuers(entries: &[IssuerEntry], c: &mut Check) -> Issuers {
    let mut list = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        let key = |field: &str| format!("issuers[{i}].{field}");
        let kind = match e.kind.value.as_str() {
            "kubernetes" => IssuerKind::Kubernetes,
            "oidc" => IssuerKind::Oidc,
            other => {
                c.fail(
                    key("kind"),
                    &e.kind,
                    format!("unknown issuer kind {other:?}; use kubernetes or oidc"),
                );
                continue;
            }
        };
        if !valid_name(&e.name.value) {
            c.fail(
                key("name"),
                &e.name,
                "must be 1 to 64 letters, digits, '.', '_' or '-', and not '-' alone \
                 (revocations use '*' and '-' to mean any issuer and no issuer)",
            );
        } else if entries[..i].iter().any(|o| o.name.value == e.name.value) {
            c.fail(
                key("name"),
                &e.name,
                "another issuer entry has the same name",
            );
        }
        let issuer = e.issuer.value.trim_end_matches('/').to_owned();
        let secure = issuer.starts_with("https://");
        if !(secure || e.danger_allow_http && issuer.starts_with("http://")) {
            c.fail(
                key("issuer"),
                &e.issuer,
                "must be an https:// URL (danger_allow_http permits http:// for tests)",
            );
        }
        if entries[..i]
            .iter()
            .any(|o| o.issuer.value.trim_end_matches('/') == issuer)
        {
            c.fail(
                key("issuer"),
                &e.issuer,
                "another issuer entry has the same URL",
            );
        }
        if e.audiences.value.is_empty() || e.audiences.value.iter().any(String::is_empty) {
            c.fail(
                key("audiences"),
                &e.audiences,
                "list at least one non-empty audience",
            );
        }
        if let (Some(n), IssuerKind::Kubernetes) = (&e.name_claim, kind) {
            c.fail(key("name_claim"), n, "only oidc issuers take name_claim");
        }
        let source = match (&e.jwks_file, &e.jwks_uri) {
            (Some(f), None) => {
                let path = c.path(&f.value);
                match std::fs::read(&path) {
                    Ok(bytes) => {
                        if let Err(e) = parse_jwks(&bytes) {
                            c.fail_with(key("jwks_file"), f, &e);
                        }
                    }
                    Err(e) => c.fail_with(key("jwks_file"), f, &e),
                }
                KeySource::File(path)
            }
            (None, Some(u)) => KeySource::Uri(u.value.clone()),
            (None, None) => KeySource::Discovery {
                issuer: issuer.clone(),
            },
            (Some(f), Some(_)) => {
                c.fail(key("jwks_file"), f, "give jwks_file or jwks_uri, not both");
                continue;
            }
        };
        let mut http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(10))
            .redirect(reqwest::redirect::Policy::limited(3))
            .user_agent(concat!("regauth-token-server/", env!("CARGO_PKG_VERSION")));
        if let Some(ca) = &e.ca_file {
            match std::fs::read(c.path(&ca.value)) {
                Ok(pem) => match reqwest::Certificate::from_pem_bundle(&pem) {
                    Ok(certs) => {
                        for cert in certs {
                            http = http.add_root_certificate(cert);
                        }
                    }
                    Err(err) => c.fail_with(key("ca_file"), ca, &err),
                },
                Err(err) => c.fail_with(key("ca_file"), ca, &err),
            }
        }
        let http = match http.build() {
            Ok(h) => h,
            Err(err) => {
                c.fail_with(key("name"), &e.name, &err);
                continue;
            }
        };
        let min = c.duration(
            &key("jwks_min_refresh_interval"),
            &e.jwks_min_refresh_interval,
            DEFAULT_JWKS_MIN_REFRESH,
            true,
        );
        let max = c.duration(
            &key("jwks_max_refresh_interval"),
            &e.jwks_max_refresh_interval,
            DEFAULT_JWKS_MAX_REFRESH,
            false,
        );
        if let Some(at) = &e.jwks_max_refresh_interval
            && max < min
        {
            c.fail(
                key("jwks_max_refresh_interval"),
                at,
                "must not be shorter than jwks_min_refresh_interval",
            );
        }
        list.push(Issuer {
            name: e.name.value.clone(),
            kind,
            issuer,
            audiences: e.audiences.value.clone(),
            credential_ttl: c.duration(
                &key("credential_ttl"),
                &e.credential_ttl,
                DEFAULT_CREDENTIAL_TTL,
                false,
            ),
            max_token_age: c.duration(
                &key("max_token_age"),
                &e.max_token_age,
                DEFAULT_MAX_TOKEN_AGE,
                false,
            ),
            name_claim: e
                .name_claim
                .as_ref()
                .map_or_else(|| "sub".to_owned(), |n| n.value.clone()),
            keys: KeyCache::new(
                source,
                http,
                e.danger_allow_http,
                RefreshBounds { min, max },
            ),
        });
    }
    Issuers::new(list)
}

/// An issuer's name is the principal's `issuer` attribute, what `revoke
/// --issuer` takes and part of revocation keys: plain, and never one of
/// the markers `*` (any issuer) and `-` (no issuer).
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name != "-"
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}
