//! The pull Secret the controller writes for one ServiceAccount: its name,
//! its `.dockerconfigjson`, the controller reference that proves it is
//! ours, and (for people, never read back) a label and annotations saying
//! whose it is and when its credential expires.

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
/// The label that marks our Secrets, for people (it proves nothing).
pub(crate) const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
/// The ServiceAccount a Secret belongs to.
pub(crate) const SERVICE_ACCOUNT_ANNOTATION: &str = "regauth.io/service-account";
/// When the credential in the Secret expires (RFC 3339).
pub(crate) const EXPIRES_ANNOTATION: &str = "regauth.io/expires-at";
/// When it was issued (RFC 3339).
pub(crate) const ISSUED_ANNOTATION: &str = "regauth.io/issued-at";
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
/// (`credentials` in the order of `settings.registries`), owned by `sa`
/// through a controller reference: the proof that the controller wrote it.
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
    let lifetime = Lifetime::of(credentials);
    let annotations = BTreeMap::from([
        (SERVICE_ACCOUNT_ANNOTATION.to_owned(), sa_name.clone()),
        (ISSUED_ANNOTATION.to_owned(), rfc3339(lifetime.issued_at)),
        (EXPIRES_ANNOTATION.to_owned(), rfc3339(lifetime.expires_at)),
    ]);
    Secret {
        metadata: ObjectMeta {
            name: Some(secret_name(&settings.secret_name, &sa_name)),
            namespace: sa.metadata.namespace.clone(),
            labels: Some(BTreeMap::from([(
                MANAGED_BY_LABEL.to_owned(),
                MANAGER.to_owned(),
            )])),
            annotations: Some(annotations),
            owner_references: owner_reference(sa).map(|o| vec![o]),
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

/// The controller reference to `sa` that every Secret it writes carries.
/// `blockOwnerDeletion` stays unset: setting it would need delete rights
/// on ServiceAccounts.
fn owner_reference(sa: &ServiceAccount) -> Option<OwnerReference> {
    Some(OwnerReference {
        api_version: "v1".to_owned(),
        kind: "ServiceAccount".to_owned(),
        name: sa.metadata.name.clone()?,
        uid: sa.metadata.uid.clone()?,
        controller: Some(true),
        ..OwnerReference::default()
    })
}

/// When the credentials of one Secret were issued and when the first of
/// them expires (seconds since the epoch).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Lifetime {
    pub issued_at: u64,
    pub expires_at: u64,
}

impl Lifetime {
    /// The lifetime of a Secret holding `credentials`: the earliest of each.
    pub(crate) fn of(credentials: &[Credential]) -> Self {
        Self {
            issued_at: credentials
                .iter()
                .map(|c| c.issued_at)
                .min()
                .unwrap_or_default(),
            expires_at: credentials
                .iter()
                .map(|c| c.expires_at)
                .min()
                .unwrap_or_default(),
        }
    }
}

/// Who a Secret with our name belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Owner {
    /// There is none.
    Absent,
    /// The controller can prove it wrote it.
    Us,
    /// Anyone else: it is never changed or deleted.
    Someone,
}

/// Whether `existing` is provably the controller's Secret for `sa`: it
/// carries the controller reference to this very ServiceAccount (its uid),
/// or it is the object this replica created (`created` is the uid the API
/// gave it). A label is no proof: anyone may set one.
pub(crate) fn owner(
    existing: Option<&Secret>,
    sa: &ServiceAccount,
    created: Option<&str>,
) -> Owner {
    let Some(secret) = existing else {
        return Owner::Absent;
    };
    let uid = secret.metadata.uid.as_deref();
    if has_controller_reference(secret, sa) || (uid.is_some() && uid == created) {
        Owner::Us
    } else {
        Owner::Someone
    }
}

fn has_controller_reference(secret: &Secret, sa: &ServiceAccount) -> bool {
    let Some(wanted) = owner_reference(sa) else {
        return false;
    };
    secret.metadata.owner_references.iter().flatten().any(|o| {
        o.controller == Some(true)
            && o.kind == wanted.kind
            && o.api_version == wanted.api_version
            && o.name == wanted.name
            && o.uid == wanted.uid
    })
}

/// Whether the fields the controller writes hold exactly what `desired`
/// says: type, `.dockerconfigjson`, our label and annotations, and the
/// controller reference. Fields others add are theirs and do not count.
pub(crate) fn holds(existing: &Secret, desired: &Secret, sa: &ServiceAccount) -> bool {
    let data = |s: &Secret| {
        s.data
            .as_ref()
            .and_then(|d| d.get(DOCKER_CONFIG_KEY))
            .map(|b| b.0.clone())
    };
    let ours = |map: &Option<BTreeMap<String, String>>,
                wanted: &Option<BTreeMap<String, String>>| {
        wanted
            .iter()
            .flatten()
            .all(|(k, v)| map.as_ref().and_then(|m| m.get(k)) == Some(v))
    };
    existing.type_ == desired.type_
        && data(existing) == data(desired)
        && ours(&existing.metadata.labels, &desired.metadata.labels)
        && ours(
            &existing.metadata.annotations,
            &desired.metadata.annotations,
        )
        && has_controller_reference(existing, sa)
}

/// Whether a patch can make `existing` hold `desired`: the API keeps a
/// Secret's `type` for good, and its data too once `immutable` is set (as
/// anyone who may edit it can do to ours). Otherwise it must be created
/// anew.
pub(crate) fn changes_in_place(existing: &Secret, desired: &Secret) -> bool {
    let data = |s: &Secret| {
        s.data
            .as_ref()
            .and_then(|d| d.get(DOCKER_CONFIG_KEY))
            .cloned()
    };
    existing.type_ == desired.type_
        && (existing.immutable != Some(true) || data(existing) == data(desired))
}

/// The merge patch that makes `existing` hold `desired`, guarded by the
/// `resourceVersion` read: if anyone wrote in between, the API answers 409.
/// Other owner references, labels, annotations and data keys are kept.
pub(crate) fn update_patch(existing: &Secret, desired: &Secret) -> serde_json::Value {
    let mine = desired
        .metadata
        .owner_references
        .clone()
        .unwrap_or_default();
    let mut references: Vec<OwnerReference> = existing
        .metadata
        .owner_references
        .iter()
        .flatten()
        .filter(|o| !mine.iter().any(|m| m.uid == o.uid))
        .cloned()
        .collect();
    references.extend(mine);
    serde_json::json!({
        "metadata": {
            "resourceVersion": existing.metadata.resource_version,
            "labels": desired.metadata.labels,
            "annotations": desired.metadata.annotations,
            "ownerReferences": references,
        },
        "data": desired.data,
    })
}

/// The `exp` claim of the first credential in a Secret's
/// `.dockerconfigjson`, **unverified** (the controller cannot check the
/// token server's signature). Used only where a wrong value can do no harm
/// beyond the Secret's own namespace; see the callers.
pub(crate) fn claimed_expiry(secret: &Secret) -> Option<u64> {
    let bytes = &secret.data.as_ref()?.get(DOCKER_CONFIG_KEY)?.0;
    let config: serde_json::Value = serde_json::from_slice(bytes).ok()?;
    let auths = config.get("auths")?.as_object()?;
    auths
        .values()
        .filter_map(|entry| entry.get("password")?.as_str())
        .filter_map(|password| {
            regauth_client::unverified_claims(password)?
                .get("exp")?
                .as_u64()
        })
        .min()
}

/// Seconds since the epoch as RFC 3339 (`2026-01-01T00:00:00Z`).
pub(crate) fn rfc3339(seconds: u64) -> String {
    i64::try_from(seconds)
        .ok()
        .and_then(|s| k8s_openapi::jiff::Timestamp::from_second(s).ok())
        .map(|t| t.to_string())
        .unwrap_or_default()
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
        let owner = &secret.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(
            (owner.uid.as_str(), owner.controller),
            ("uid-1", Some(true))
        );
        assert_eq!(owner.block_owner_deletion, None);
        assert_eq!(
            secret.metadata.annotations.as_ref().unwrap()[EXPIRES_ANNOTATION],
            "2023-11-14T23:13:20Z"
        );
    }

    fn credential(token: &str, exp: u64) -> Credential {
        Credential {
            refresh_token: Token::new(token),
            issued_at: 1_700_000_000,
            expires_at: exp,
        }
    }

    #[test]
    fn only_a_controller_reference_to_this_service_account_or_our_own_create_proves_ownership() {
        let settings = settings();
        let ours = build(&settings, &sa(), &[credential("tok", 1_700_003_600)]);
        assert_eq!(owner(None, &sa(), None), Owner::Absent);
        assert_eq!(owner(Some(&ours), &sa(), None), Owner::Us);
        // Our label alone proves nothing.
        let mut labelled = ours.clone();
        labelled.metadata.owner_references = None;
        assert_eq!(owner(Some(&labelled), &sa(), None), Owner::Someone);
        // A reference that is not the controller's, or to another
        // incarnation of the ServiceAccount, neither.
        let mut weak = ours.clone();
        weak.metadata.owner_references.as_mut().unwrap()[0].controller = None;
        assert_eq!(owner(Some(&weak), &sa(), None), Owner::Someone);
        let mut recreated = sa();
        recreated.metadata.uid = Some("uid-2".into());
        assert_eq!(owner(Some(&ours), &recreated, None), Owner::Someone);
        // The object this replica created stays provably ours.
        labelled.metadata.uid = Some("secret-uid".into());
        assert_eq!(owner(Some(&labelled), &sa(), Some("secret-uid")), Owner::Us);
        assert_eq!(owner(Some(&labelled), &sa(), Some("other")), Owner::Someone);
    }

    #[test]
    fn a_secret_holds_what_we_wrote_only_while_our_fields_are_unchanged() {
        let settings = settings();
        let desired = build(&settings, &sa(), &[credential("tok", 1_700_003_600)]);
        let mut stored = desired.clone();
        // Fields others add are theirs.
        stored
            .metadata
            .annotations
            .as_mut()
            .unwrap()
            .insert("team/note".into(), "x".into());
        stored
            .data
            .as_mut()
            .unwrap()
            .insert("extra".into(), ByteString(b"x".to_vec()));
        assert!(holds(&stored, &desired, &sa()));
        let mut edited = stored.clone();
        edited
            .metadata
            .annotations
            .as_mut()
            .unwrap()
            .insert(EXPIRES_ANNOTATION.into(), "2099-01-01T00:00:00Z".into());
        assert!(!holds(&edited, &desired, &sa()));
        let other = build(&settings, &sa(), &[credential("other", 1_700_003_600)]);
        assert!(!holds(&other, &desired, &sa()));
        let mut unowned = stored;
        unowned.metadata.owner_references = None;
        assert!(!holds(&unowned, &desired, &sa()));
    }

    #[test]
    fn another_type_or_immutable_data_cannot_change_in_place() {
        let settings = settings();
        let desired = build(&settings, &sa(), &[credential("new", 1_700_003_600)]);
        let stored = build(&settings, &sa(), &[credential("old", 1_700_003_600)]);
        assert!(changes_in_place(&stored, &desired));
        let mut opaque = stored.clone();
        opaque.type_ = Some("Opaque".into());
        assert!(!changes_in_place(&opaque, &desired));
        let mut frozen = stored;
        frozen.immutable = Some(true);
        assert!(
            !changes_in_place(&frozen, &desired),
            "its data would change"
        );
        // Only metadata to repair: a patch still works.
        let mut same = desired.clone();
        same.immutable = Some(true);
        same.metadata.annotations = None;
        assert!(changes_in_place(&same, &desired));
    }

    #[test]
    fn the_update_keeps_other_owners_and_carries_the_version_read() {
        let settings = settings();
        let desired = build(&settings, &sa(), &[credential("tok", 1_700_003_600)]);
        let mut existing = desired.clone();
        existing.metadata.resource_version = Some("42".into());
        existing
            .metadata
            .owner_references
            .as_mut()
            .unwrap()
            .push(OwnerReference {
                api_version: "v1".into(),
                kind: "ConfigMap".into(),
                name: "x".into(),
                uid: "cm-uid".into(),
                ..OwnerReference::default()
            });
        let patch = update_patch(&existing, &desired);
        assert_eq!(patch["metadata"]["resourceVersion"], "42");
        let uids: Vec<&str> = patch["metadata"]["ownerReferences"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| o["uid"].as_str().unwrap())
            .collect();
        assert_eq!(uids, ["cm-uid", "uid-1"]);
        assert!(patch["data"][DOCKER_CONFIG_KEY].is_string());
    }

    #[test]
    fn the_claimed_expiry_is_the_earliest_exp_in_the_secret_or_none() {
        use base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let settings = settings();
        let jwt = |exp: u64| {
            format!(
                "e30.{}.sig",
                URL_SAFE_NO_PAD.encode(format!("{{\"exp\":{exp}}}"))
            )
        };
        let secret = build(&settings, &sa(), &[credential(&jwt(1_700_000_500), 1)]);
        assert_eq!(claimed_expiry(&secret), Some(1_700_000_500));
        let opaque = build(&settings, &sa(), &[credential("opaque", 1)]);
        assert_eq!(claimed_expiry(&opaque), None);
        let mut broken = opaque;
        broken.data = Some(BTreeMap::from([(
            DOCKER_CONFIG_KEY.to_owned(),
            ByteString(b"{not json".to_vec()),
        )]));
        assert_eq!(claimed_expiry(&broken), None);
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
        assert_eq!(rfc3339(u64::MAX), "");
    }
}
