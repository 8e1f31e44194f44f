//! The pull Secret the controller writes for one ServiceAccount: its name,
//! its `.dockerconfigjson`, the labels that mark it as ours, and the
//! annotations that say when its credential expires.

use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{Secret, ServiceAccount};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use serde::Serialize;

use crate::config::Settings;
use crate::exchange::Credential;

/// The field manager of every write, and the `managed-by` label's value.
pub(crate) const MANAGER: &str = "regauth-pull-secrets";
/// The label that marks our Secrets.
pub(crate) const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
/// The label selector of our Secrets.
pub(crate) const MANAGED_SELECTOR: &str = "app.kubernetes.io/managed-by=regauth-pull-secrets";
/// The ServiceAccount a Secret belongs to.
pub(crate) const SERVICE_ACCOUNT_ANNOTATION: &str = "regauth.io/service-account";
/// When the credential in the Secret expires (RFC 3339).
pub(crate) const EXPIRES_ANNOTATION: &str = "regauth.io/expires-at";
/// When it was issued (RFC 3339).
pub(crate) const ISSUED_ANNOTATION: &str = "regauth.io/issued-at";
/// A fingerprint of the registries it was written for, so a config change
/// rewrites it.
pub(crate) const REGISTRIES_ANNOTATION: &str = "regauth.io/registries";
/// The Secret type the kubelet reads.
pub(crate) const DOCKER_CONFIG_JSON: &str = "kubernetes.io/dockerconfigjson";
/// Its one key.
pub(crate) const DOCKER_CONFIG_KEY: &str = ".dockerconfigjson";
/// The username beside the refresh token. The token server ignores it.
pub(crate) const USERNAME: &str = "regauth";

/// Longest Secret name the API accepts.
const MAX_NAME: usize = 253;

/// The Secret's name for ServiceAccount `service_account`:
/// `PREFIX-SERVICEACCOUNT`, shortened with a hash when that is too long.
pub(crate) fn secret_name(prefix: &str, service_account: &str) -> String {
    let name = format!("{prefix}-{service_account}");
    if name.len() <= MAX_NAME {
        return name;
    }
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, service_account.as_bytes());
    let hash: String = digest.as_ref()[..4]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let keep = MAX_NAME - prefix.len() - hash.len() - 2;
    let mut cut = service_account[..keep.min(service_account.len())].to_owned();
    while cut.ends_with(['-', '.']) {
        cut.pop();
    }
    format!("{prefix}-{cut}-{hash}")
}

/// What the registries section of the config says, as a stable string:
/// a Secret written for other registries is rewritten.
pub(crate) fn registries_fingerprint(settings: &Settings) -> String {
    let mut text = settings.token_server.url.clone();
    for r in &settings.registries {
        text.push('|');
        text.push_str(&r.service);
        for host in &r.hosts {
            text.push(',');
            text.push_str(host);
        }
    }
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, text.as_bytes());
    digest.as_ref()[..12]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// One registry's credential, for the `auths` map.
#[derive(Debug, Serialize)]
struct AuthEntry<'a> {
    username: &'a str,
    password: &'a str,
    auth: String,
}

#[derive(Debug, Serialize)]
struct DockerConfig<'a> {
    auths: BTreeMap<&'a str, AuthEntry<'a>>,
}

/// `{"auths":{HOST:{"username","password","auth"}}}`, the shape
/// `kubectl create secret docker-registry` writes.
pub(crate) fn docker_config_json(entries: &[(&str, &str)]) -> Vec<u8> {
    let auths = entries
        .iter()
        .map(|(host, password)| {
            (
                *host,
                AuthEntry {
                    username: USERNAME,
                    password,
                    auth: STANDARD.encode(format!("{USERNAME}:{password}")),
                },
            )
        })
        .collect();
    // Serializing maps of strings cannot fail.
    serde_json::to_vec(&DockerConfig { auths }).unwrap_or_default()
}

/// The Secret for `sa`, holding one credential per configured registry
/// (`credentials` in the order of `settings.registries`).
pub(crate) fn build(
    settings: &Settings,
    sa: &ServiceAccount,
    credentials: &[Credential],
) -> Secret {
    let sa_name = sa.metadata.name.clone().unwrap_or_default();
    let mut entries = Vec::new();
    for (registry, credential) in settings.registries.iter().zip(credentials) {
        for host in &registry.hosts {
            entries.push((host.as_str(), credential.refresh_token.expose()));
        }
    }
    let issued_at = credentials
        .iter()
        .map(|c| c.issued_at)
        .min()
        .unwrap_or_default();
    let expires_at = credentials
        .iter()
        .map(|c| c.expires_at)
        .min()
        .unwrap_or_default();
    let annotations = BTreeMap::from([
        (SERVICE_ACCOUNT_ANNOTATION.to_owned(), sa_name.clone()),
        (ISSUED_ANNOTATION.to_owned(), rfc3339(issued_at)),
        (EXPIRES_ANNOTATION.to_owned(), rfc3339(expires_at)),
        (
            REGISTRIES_ANNOTATION.to_owned(),
            registries_fingerprint(settings),
        ),
    ]);
    let owner = sa.metadata.uid.clone().map(|uid| OwnerReference {
        api_version: "v1".to_owned(),
        kind: "ServiceAccount".to_owned(),
        name: sa_name.clone(),
        uid,
        ..OwnerReference::default()
    });
    Secret {
        metadata: ObjectMeta {
            name: Some(secret_name(&settings.secret_name, &sa_name)),
            namespace: sa.metadata.namespace.clone(),
            labels: Some(BTreeMap::from([(
                MANAGED_BY_LABEL.to_owned(),
                MANAGER.to_owned(),
            )])),
            annotations: Some(annotations),
            owner_references: owner.map(|o| vec![o]),
            ..ObjectMeta::default()
        },
        type_: Some(DOCKER_CONFIG_JSON.to_owned()),
        data: Some(BTreeMap::from([(
            DOCKER_CONFIG_KEY.to_owned(),
            ByteString(docker_config_json(&entries)),
        )])),
        ..Secret::default()
    }
}

/// What an existing Secret of ours says about its credential.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Written {
    pub issued_at: u64,
    pub expires_at: u64,
}

/// Reads our annotations back; `None` when the Secret is not ours, was
/// written for other registries, or is unreadable (then it is rewritten).
pub(crate) fn written(settings: &Settings, secret: &Secret) -> Option<Written> {
    let labels = secret.metadata.labels.as_ref()?;
    if labels.get(MANAGED_BY_LABEL).map(String::as_str) != Some(MANAGER) {
        return None;
    }
    let annotations = secret.metadata.annotations.as_ref()?;
    if annotations.get(REGISTRIES_ANNOTATION)? != &registries_fingerprint(settings) {
        return None;
    }
    if secret.type_.as_deref() != Some(DOCKER_CONFIG_JSON)
        || !secret
            .data
            .as_ref()
            .is_some_and(|d| d.contains_key(DOCKER_CONFIG_KEY))
    {
        return None;
    }
    Some(Written {
        issued_at: parse_rfc3339(annotations.get(ISSUED_ANNOTATION)?)?,
        expires_at: parse_rfc3339(annotations.get(EXPIRES_ANNOTATION)?)?,
    })
}

/// Whether a Secret carries our label (the only Secrets we ever delete).
pub(crate) fn is_ours(secret: &Secret) -> bool {
    secret
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(MANAGED_BY_LABEL))
        .is_some_and(|v| v == MANAGER)
}

/// Seconds since the epoch as RFC 3339 (`2026-01-01T00:00:00Z`).
pub(crate) fn rfc3339(seconds: u64) -> String {
    i64::try_from(seconds)
        .ok()
        .and_then(|s| k8s_openapi::jiff::Timestamp::from_second(s).ok())
        .map(|t| t.to_string())
        .unwrap_or_default()
}

fn parse_rfc3339(text: &str) -> Option<u64> {
    let t: k8s_openapi::jiff::Timestamp = text.parse().ok()?;
    u64::try_from(t.as_second()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exchange::Secret as Token;

    fn settings() -> Settings {
        crate::config::tests_support::settings(
            "token_server:\n  url: https://auth\nregistries:\n  - hosts: [r.example.com, \"r.example.com:5000\"]\n    service: r.example.com\n",
        )
    }

    fn sa() -> ServiceAccount {
        let mut sa = ServiceAccount::default();
        sa.metadata.name = Some("default".into());
        sa.metadata.namespace = Some("team-a".into());
        sa.metadata.uid = Some("uid-1".into());
        sa
    }

    #[test]
    fn the_secret_holds_username_password_and_auth_per_host() {
        let settings = settings();
        let credential = Credential {
            refresh_token: Token::new("tok"),
            issued_at: 1_700_000_000,
            expires_at: 1_700_003_600,
        };
        let secret = build(&settings, &sa(), &[credential]);
        assert_eq!(
            secret.metadata.name.as_deref(),
            Some("regauth-pull-default")
        );
        assert_eq!(secret.type_.as_deref(), Some(DOCKER_CONFIG_JSON));
        let data = &secret.data.as_ref().unwrap()[DOCKER_CONFIG_KEY].0;
        let parsed: serde_json::Value = serde_json::from_slice(data).unwrap();
        let entry = &parsed["auths"]["r.example.com:5000"];
        assert_eq!(entry["username"], USERNAME);
        assert_eq!(entry["password"], "tok");
        assert_eq!(entry["auth"], STANDARD.encode("regauth:tok"));
        assert!(parsed["auths"]["r.example.com"].is_object());
        assert_eq!(
            written(&settings, &secret),
            Some(Written {
                issued_at: 1_700_000_000,
                expires_at: 1_700_003_600
            })
        );
        assert_eq!(secret.metadata.owner_references.unwrap()[0].uid, "uid-1");
    }

    #[test]
    fn long_names_are_shortened_but_stay_distinct() {
        let a = secret_name("regauth-pull", &"a".repeat(300));
        let b = secret_name("regauth-pull", &format!("{}b", "a".repeat(299)));
        assert!(a.len() <= MAX_NAME && b.len() <= MAX_NAME);
        assert_ne!(a, b);
        assert_eq!(secret_name("p", "default"), "p-default");
    }

    #[test]
    fn timestamps_round_trip() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(parse_rfc3339(&rfc3339(1_700_000_000)), Some(1_700_000_000));
    }
}
