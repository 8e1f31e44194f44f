//! The kubelet image credential provider exec plugin
//! (`credentialprovider.kubelet.k8s.io` v1, v1beta1 and v1alpha1).
//!
//! The kubelet writes a `CredentialProviderRequest` on stdin and decodes the
//! `CredentialProviderResponse` on stdout strictly, in the request's
//! apiVersion, so the response carries exactly the known fields. With a
//! `serviceAccountToken` (KEP-4412) the pod's token is exchanged as workload
//! identity; without one, the node identity from the helper config is used.
//!
//! A pod's token comes from outside and is not verified here, so it earns
//! nothing before the token server has accepted it: an expired or not yet
//! valid one is refused at once, and a cached credential is served only to
//! the exact token it was issued for. The kubelet may cache the answer no
//! longer than the token lives.

use std::collections::BTreeMap;

use regauth_client::Secret;
use serde::{Deserialize, Serialize};

use crate::cache::Entry;
use crate::clock::Clock;
use crate::config::{Config, ConfigError, Registry};
use crate::credential::{self, GetError};
use crate::identity::{self, IdentityError};
use crate::matcher::Target;

/// The API group of the plugin protocol.
pub(crate) const GROUP: &str = "credentialprovider.kubelet.k8s.io";
/// The versions this plugin speaks.
pub(crate) const VERSIONS: [&str; 3] = ["v1", "v1beta1", "v1alpha1"];

/// Why a request could not be answered.
#[derive(Debug, thiserror::Error)]
pub enum KubeletError {
    /// Not JSON, or not the request shape.
    #[error("malformed CredentialProviderRequest")]
    Malformed(#[source] serde_json::Error),
    /// An apiVersion this plugin does not speak.
    #[error("unsupported apiVersion {0:?}; expected {GROUP}/v1, v1beta1 or v1alpha1")]
    ApiVersion(String),
    /// A kind other than `CredentialProviderRequest`.
    #[error("unsupported kind {0:?}; expected CredentialProviderRequest")]
    Kind(String),
    /// The image reference has no registry host.
    #[error("image {0:?} has no registry host")]
    Image(String),
    /// The helper config could not be loaded.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// No credential could be obtained.
    #[error(transparent)]
    Credential(#[from] GetError),
    /// The pod's service-account token is unusable.
    #[error("refusing the pod's service-account token")]
    Token(#[source] IdentityError),
}

/// The request, as the kubelet sends it.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Request {
    /// `credentialprovider.kubelet.k8s.io/VERSION`.
    pub api_version: String,
    /// `CredentialProviderRequest`.
    pub kind: String,
    /// The image being pulled.
    pub image: String,
    /// The pod's service-account token, when the kubelet is configured to send it.
    #[serde(default)]
    pub service_account_token: Option<Secret>,
    /// Selected annotations of the pod's service account.
    #[serde(default)]
    pub service_account_annotations: Option<BTreeMap<String, String>>,
}

/// One `auth` entry.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct AuthConfig {
    /// The username.
    pub username: String,
    /// The password (a regauth refresh token).
    pub password: Secret,
}

/// The response; field order and names follow the API.
#[derive(Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Response {
    /// Same as the request's.
    pub api_version: String,
    /// `CredentialProviderResponse`.
    pub kind: &'static str,
    /// `Registry`: one credential serves every image of a matching registry;
    /// `Image`: only this image.
    pub cache_key_type: &'static str,
    /// Go duration, such as `29m30s`.
    pub cache_duration: String,
    /// Credentials by `matchImages`-style key.
    pub auth: BTreeMap<String, AuthConfig>,
}

fn shown(text: &str, max: usize) -> String {
    text.chars().take(max).collect()
}

/// Parses and checks a request.
pub fn parse(input: &str) -> Result<Request, KubeletError> {
    let req: Request = serde_json::from_str(input).map_err(KubeletError::Malformed)?;
    let version = req
        .api_version
        .strip_prefix(GROUP)
        .and_then(|v| v.strip_prefix('/'));
    if !version.is_some_and(|v| VERSIONS.contains(&v)) {
        return Err(KubeletError::ApiVersion(shown(&req.api_version, 100)));
    }
    if req.kind != "CredentialProviderRequest" {
        return Err(KubeletError::Kind(shown(&req.kind, 100)));
    }
    Ok(req)
}

/// A Go `time.Duration` string, as `metav1.Duration` serializes it.
pub(crate) fn go_duration(secs: u64) -> String {
    let (h, m, s) = (secs / 3600, secs % 3600 / 60, secs % 60);
    match (h, m) {
        (0, 0) => format!("{s}s"),
        (0, _) => format!("{m}m{s}s"),
        _ => format!("{h}h{m}m{s}s"),
    }
}

/// Answers `req` with `config`. An image no registry entry matches gets an
/// empty `auth`, which tells the kubelet this plugin has nothing for it.
pub(crate) fn answer(
    config: Option<&Config>,
    req: &Request,
    env: &dyn Fn(&str) -> Option<String>,
    clock: &Clock,
) -> Result<Response, KubeletError> {
    let target =
        Target::parse(&req.image).ok_or_else(|| KubeletError::Image(shown(&req.image, 200)))?;
    let nothing = || Response {
        api_version: req.api_version.clone(),
        kind: "CredentialProviderResponse",
        cache_key_type: "Registry",
        cache_duration: "0s".to_owned(),
        auth: BTreeMap::new(),
    };
    let Some(config) = config else {
        return Ok(nothing());
    };
    let Some(registry) = config.registry_for(&target) else {
        return Ok(nothing());
    };
    let sa_token = req
        .service_account_token
        .as_ref()
        .filter(|t| !t.expose().trim().is_empty());
    let (obtained, token_expires_at) = match sa_token {
        Some(token) => {
            // Checked before the cache is consulted: an expired token gets
            // nothing, not even what its earlier self was given.
            let mut id =
                identity::service_account_token(token, clock()).map_err(KubeletError::Token)?;
            let forwarded: BTreeMap<String, String> = req
                .service_account_annotations
                .iter()
                .flatten()
                .filter(|(k, _)| {
                    registry
                        .forward_annotations
                        .iter()
                        .any(|allowed| allowed == *k)
                })
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            // Different annotations are a different request to the server,
            // so they get their own cache entry.
            let pairs: Vec<String> = forwarded.iter().map(|(k, v)| format!("{k}={v}")).collect();
            id.fingerprint = identity::fingerprint(&[&id.fingerprint, &pairs.join("\n")]);
            id.annotations = forwarded;
            let expires = id.expires_at;
            (
                credential::credential_for_identity(config, registry, &id, clock)?,
                expires,
            )
        }
        None => (credential::credential(config, registry, env, clock)?, None),
    };
    let mut resp = build(req, registry, &target, &obtained.entry, obtained.now);
    if let Some(token_exp) = token_expires_at {
        // The kubelet keys its cache on the pod's token or service account:
        // an answer must not outlive the token it was given for.
        let limit = token_exp.saturating_sub(obtained.now);
        let half_life = obtained.entry.expires_at.saturating_sub(obtained.now) / 2;
        resp.cache_duration = go_duration(half_life.min(limit));
    }
    if !covers_whole_host(config, &target) {
        resp.cache_key_type = "Image";
    }
    Ok(resp)
}

/// True when every config pattern that could serve this image's host
/// covers the whole host (no path). Only then may the kubelet reuse this
/// answer for every image of the registry (`cacheKeyType: Registry`);
/// otherwise an answer for `host/alice` would be served for `host/bob`.
fn covers_whole_host(config: &Config, target: &Target) -> bool {
    let host_only = Target::parse(&target.host);
    config
        .registries
        .iter()
        .flat_map(|r| &r.patterns)
        .filter(|p| host_only.as_ref().is_some_and(|h| p.matches_host(h)))
        .all(|p| !p.has_path())
}

/// The response for a credential: every pattern of the entry that matches
/// the image becomes an `auth` key, and the kubelet may cache the credential
/// for half of its remaining life.
pub(crate) fn build(
    req: &Request,
    registry: &Registry,
    target: &Target,
    entry: &Entry,
    now: u64,
) -> Response {
    let remaining = entry.expires_at.saturating_sub(now);
    let auth = registry
        .patterns
        .iter()
        .filter(|p| p.matches(target))
        .map(|p| {
            let creds = AuthConfig {
                username: registry.username.clone(),
                password: entry.refresh_token.clone(),
            };
            (p.auth_key().to_owned(), creds)
        })
        .collect();
    Response {
        api_version: req.api_version.clone(),
        kind: "CredentialProviderResponse",
        cache_key_type: "Registry",
        cache_duration: go_duration(remaining / 2),
        auth,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        /// Whatever arrives on stdin, parsing returns; it never panics.
        #[test]
        fn parsing_never_panics(input in ".{0,400}") {
            let _ = parse(&input);
        }

        /// Near-valid requests too: the right envelope around any values.
        #[test]
        fn parsing_near_valid_requests_never_panics(
            version in "[a-z0-9./]{0,40}",
            image in ".{0,200}",
            token in ".{0,200}",
        ) {
            let request = serde_json::json!({
                "apiVersion": version, "kind": "CredentialProviderRequest",
                "image": image, "serviceAccountToken": token,
            });
            if let Ok(req) = parse(&request.to_string()) {
                let _ = answer(None, &req, &|_| None, &|| 0);
            }
        }
    }

    #[test]
    fn durations_look_like_go() {
        assert_eq!(go_duration(0), "0s");
        assert_eq!(go_duration(59), "59s");
        assert_eq!(go_duration(1770), "29m30s");
        assert_eq!(go_duration(3600), "1h0m0s");
        assert_eq!(go_duration(5430), "1h30m30s");
    }

    #[test]
    fn requests_are_checked() {
        for v in VERSIONS {
            let req = format!(
                r#"{{"apiVersion":"{GROUP}/{v}","kind":"CredentialProviderRequest","image":"r.example.com/a:1"}}"#
            );
            assert_eq!(parse(&req).unwrap().api_version, format!("{GROUP}/{v}"));
        }
        assert!(matches!(parse("{"), Err(KubeletError::Malformed(_))));
        assert!(matches!(
            parse(r#"{"apiVersion":"x/v1","kind":"CredentialProviderRequest","image":"i"}"#),
            Err(KubeletError::ApiVersion(_))
        ));
        assert!(matches!(
            parse(&format!(
                r#"{{"apiVersion":"{GROUP}/v2","kind":"CredentialProviderRequest","image":"i"}}"#
            )),
            Err(KubeletError::ApiVersion(_))
        ));
        assert!(matches!(
            parse(&format!(
                r#"{{"apiVersion":"{GROUP}/v1","kind":"Other","image":"i"}}"#
            )),
            Err(KubeletError::Kind(_))
        ));
        assert!(matches!(
            parse(&format!(
                r#"{{"apiVersion":"{GROUP}/v1","kind":"CredentialProviderRequest"}}"#
            )),
            Err(KubeletError::Malformed(_))
        ));
    }

    #[test]
    fn unmatched_image_gets_an_empty_response_with_known_fields_only() {
        let req = parse(&format!(
            r#"{{"apiVersion":"{GROUP}/v1beta1","kind":"CredentialProviderRequest","image":"other.example.com/a:1"}}"#
        ))
        .unwrap();
        let resp = answer(None, &req, &|_| None, &|| 1_000_000).unwrap();
        let json = serde_json::to_value(&resp).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"apiVersion": format!("{GROUP}/v1beta1"), "kind": "CredentialProviderResponse",
                "cacheKeyType": "Registry", "cacheDuration": "0s", "auth": {}})
        );
    }

    fn fixture(name: &str) -> String {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../fixtures/kubelet")
            .join(name);
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    fn example_registry() -> Registry {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/helper.yaml");
        let config = crate::config::load(&dir, &|_| None).unwrap();
        config.registries[0].clone()
    }

    /// Each apiVersion's sample request gets exactly the sample response.
    #[test]
    fn golden_responses_for_every_api_version() {
        for v in VERSIONS {
            let req = parse(&fixture(&format!("request-{v}.json"))).unwrap();
            let target = Target::parse(&req.image).unwrap();
            let now = 1_000_000;
            let entry = Entry::new(
                regauth_client::Issued {
                    refresh_token: Secret::from("<regauth refresh token>"),
                    issued_at: now - 60,
                    expires_at: now + 3540,
                },
                None,
            );
            let resp = build(&req, &example_registry(), &target, &entry, now);
            let got = serde_json::to_value(&resp).unwrap();
            let want: serde_json::Value =
                serde_json::from_str(&fixture(&format!("response-{v}.json"))).unwrap();
            assert_eq!(got, want, "{v}");
        }
    }

    /// The pod's token and the credential serialize as the API says, and
    /// stay out of every `Debug` rendering.
    #[test]
    fn debug_shows_no_token_or_credential() {
        let req = parse(&format!(
            r#"{{"apiVersion":"{GROUP}/v1","kind":"CredentialProviderRequest","image":"registry.example.com/a:1","serviceAccountToken":"sa-token-s3cret"}}"#
        ))
        .unwrap();
        assert!(!format!("{req:?}").contains("sa-token-s3cret"));
        let target = Target::parse(&req.image).unwrap();
        let entry = Entry::new(
            regauth_client::Issued {
                refresh_token: Secret::from("refresh-s3cret"),
                issued_at: 1,
                expires_at: 3601,
            },
            None,
        );
        let resp = build(&req, &example_registry(), &target, &entry, 1);
        assert!(!format!("{resp:?}").contains("refresh-s3cret"));
        let auth = resp.auth.values().next().unwrap();
        assert!(!format!("{auth:?}").contains("refresh-s3cret"));
        let json = serde_json::to_value(&resp).unwrap();
        assert_eq!(
            json["auth"]["registry.example.com"]["password"],
            "refresh-s3cret"
        );
    }

    #[test]
    fn service_account_request_sample() {
        let req = parse(&fixture("request-v1-service-account.json")).unwrap();
        assert!(req.service_account_token.unwrap().expose().starts_with('<'));
        assert_eq!(
            req.service_account_annotations.unwrap()["regauth.io/purpose"],
            "build"
        );
    }

    /// The shipped kubelet config parses as `kubelet.config.k8s.io/v1`
    /// (every field known) and routes the sample image to this plugin.
    #[test]
    fn shipped_credential_provider_config() {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields, rename_all = "camelCase")]
        struct ProviderConfig {
            api_version: String,
            kind: String,
            providers: Vec<Provider>,
        }
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields, rename_all = "camelCase")]
        struct Provider {
            name: String,
            api_version: String,
            #[serde(default)]
            args: Vec<String>,
            match_images: Vec<String>,
            default_cache_duration: String,
            #[serde(default)]
            env: Vec<EnvVar>,
            #[serde(default)]
            token_attributes: Option<TokenAttributes>,
        }
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct EnvVar {
            name: String,
            value: String,
        }
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields, rename_all = "camelCase")]
        struct TokenAttributes {
            service_account_token_audience: String,
            cache_type: String,
            require_service_account: bool,
            #[serde(default)]
            required_service_account_annotation_keys: Vec<String>,
            #[serde(default)]
            optional_service_account_annotation_keys: Vec<String>,
        }
        let c: ProviderConfig =
            serde_saphyr::from_str(&fixture("credential-provider-config.yaml")).unwrap();
        assert_eq!(
            (c.api_version.as_str(), c.kind.as_str()),
            ("kubelet.config.k8s.io/v1", "CredentialProviderConfig")
        );
        let p = &c.providers[0];
        assert_eq!(p.name, "docker-credential-regauth");
        assert_eq!(p.args, ["kubelet"]);
        assert_eq!(p.api_version, format!("{GROUP}/v1"));
        assert_eq!(p.default_cache_duration, "5m");
        assert_eq!(p.env[0].name, "REGAUTH_HELPER_CONFIG");
        assert!(!p.env[0].value.is_empty());
        let t = p.token_attributes.as_ref().unwrap();
        assert_eq!(t.service_account_token_audience, "registry.example.com");
        assert!(["ServiceAccount", "Token"].contains(&t.cache_type.as_str()));
        assert!(!t.require_service_account);
        assert!(t.required_service_account_annotation_keys.is_empty());
        assert_eq!(
            t.optional_service_account_annotation_keys,
            ["regauth.io/purpose"]
        );
        let image = Target::parse("registry.example.com/team-a/app:1.0").unwrap();
        assert!(
            p.match_images
                .iter()
                .any(|m| crate::matcher::Pattern::new(m).unwrap().matches(&image))
        );
    }

    #[test]
    fn path_scoped_entries_make_the_answer_per_image() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("helper.yaml");
        std::fs::write(
            &path,
            "registries:\n\
             \x20 - match: [\"r.test:5000/alice\"]\n    token_server: http://x\n    service: s\n    identity: {kind: oidc_env, variable: A}\n\
             \x20 - match: [\"r.test:5000/bob\"]\n    token_server: http://x\n    service: s\n    identity: {kind: oidc_env, variable: B}\n\
             \x20 - match: [\"whole.test\"]\n    token_server: http://x\n    service: s\n    identity: {kind: oidc_env, variable: C}\n",
        )
        .unwrap();
        let config = crate::config::load(&path, &|_| None).unwrap();
        let t = |image: &str| Target::parse(image).unwrap();
        assert!(
            !covers_whole_host(&config, &t("r.test:5000/alice/app:1")),
            "bob's entry shares the host"
        );
        assert!(covers_whole_host(&config, &t("whole.test/any/app:1")));
    }
}
