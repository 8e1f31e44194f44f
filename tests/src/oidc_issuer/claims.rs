//! Claim sets shaped like the real tokens regauth exchanges: Kubernetes
//! projected service-account tokens and GitHub Actions OIDC tokens.
//!
//! Samples of both live in `fixtures/identity/`; [`json_shape`] lets a test
//! check that what these builders mint has exactly the fixture's shape.

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use crate::bins::workspace_root;
use crate::secrets::random_bytes;

/// The Kubernetes sample claim set in `fixtures/identity/`.
pub const KUBERNETES_FIXTURE: &str = "kubernetes-sa-token-claims.json";
/// The GitHub Actions sample claim set in `fixtures/identity/`.
pub const GITHUB_FIXTURE: &str = "github-actions-token-claims.json";

/// Seconds since the epoch, now: the test suite's one reader of the wall
/// clock.
#[allow(clippy::disallowed_methods)]
pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
        .try_into()
        .expect("time fits i64")
}

/// A random RFC 4122-looking (version 4) UUID, as Kubernetes uses for uids and jtis.
pub fn random_uuid() -> String {
    let mut b = random_bytes(16);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

/// `fixtures/identity/NAME`.
pub fn fixture_path(name: &str) -> PathBuf {
    workspace_root()
        .join("fixtures")
        .join("identity")
        .join(name)
}

/// Reads and parses a JSON fixture from `fixtures/identity/`.
pub fn load_fixture(name: &str) -> Value {
    let path = fixture_path(name);
    let text =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

/// The shape of a JSON value: objects keep their keys, arrays the shape of
/// their first element, and every leaf becomes its type name.
pub fn json_shape(value: &Value) -> Value {
    match value {
        Value::Null => "null".into(),
        Value::Bool(_) => "bool".into(),
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer".into(),
        Value::Number(_) => "number".into(),
        Value::String(_) => "string".into(),
        Value::Array(items) => Value::Array(items.iter().take(1).map(json_shape).collect()),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| (k.clone(), json_shape(v)))
                .collect(),
        ),
    }
}

/// A Kubernetes service account in a pod on a node: what a projected
/// service-account token describes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceAccount {
    /// Namespace.
    pub namespace: String,
    /// Service account name.
    pub name: String,
    /// Service account uid.
    pub uid: String,
    /// Pod name.
    pub pod: String,
    /// Pod uid.
    pub pod_uid: String,
    /// Node name.
    pub node: String,
    /// Node uid.
    pub node_uid: String,
}

impl ServiceAccount {
    /// Service account `name` in `namespace`, in a fresh pod on `worker-1`.
    pub fn new(namespace: &str, name: &str) -> Self {
        let suffix: String = random_bytes(3).iter().map(|b| format!("{b:02x}")).collect();
        Self {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            uid: random_uuid(),
            pod: format!("{name}-{suffix}"),
            pod_uid: random_uuid(),
            node: "worker-1".to_owned(),
            node_uid: random_uuid(),
        }
    }

    /// The service account, pod and node of the Kubernetes fixture.
    pub fn from_fixture() -> Self {
        let claims = load_fixture(KUBERNETES_FIXTURE);
        let k = &claims["kubernetes.io"];
        let text = |v: &Value| {
            v.as_str()
                .unwrap_or_else(|| panic!("{KUBERNETES_FIXTURE}: expected a string, got {v}"))
                .to_owned()
        };
        Self {
            namespace: text(&k["namespace"]),
            name: text(&k["serviceaccount"]["name"]),
            uid: text(&k["serviceaccount"]["uid"]),
            pod: text(&k["pod"]["name"]),
            pod_uid: text(&k["pod"]["uid"]),
            node: text(&k["node"]["name"]),
            node_uid: text(&k["node"]["uid"]),
        }
    }

    /// `system:serviceaccount:NAMESPACE:NAME`, the token's `sub`.
    pub fn subject(&self) -> String {
        format!("system:serviceaccount:{}:{}", self.namespace, self.name)
    }

    /// The claims kube-apiserver puts in a projected token for `audience`,
    /// issued now (`iat` = `nbf`) and valid for `lifetime`.
    pub fn claims(&self, issuer: &str, audience: &str, lifetime: Duration) -> Value {
        let iat = now();
        json!({
            "aud": [audience],
            "exp": iat + secs(lifetime),
            "iat": iat,
            "iss": issuer,
            "jti": random_uuid(),
            "kubernetes.io": {
                "namespace": self.namespace,
                "node": {"name": self.node, "uid": self.node_uid},
                "pod": {"name": self.pod, "uid": self.pod_uid},
                "serviceaccount": {"name": self.name, "uid": self.uid},
            },
            "nbf": iat,
            "sub": self.subject(),
        })
    }
}

/// A GitHub Actions workflow run: what its OIDC token describes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GithubWorkflow {
    /// `ORG/REPO`.
    pub repository: String,
    /// The git ref, like `refs/heads/main`.
    pub git_ref: String,
    /// The user who triggered the run.
    pub actor: String,
    /// The workflow's name.
    pub workflow: String,
    /// The triggering event, like `push`.
    pub event_name: String,
}

impl GithubWorkflow {
    /// A push to `main` of `repository` (`ORG/REPO`) running workflow `release`.
    pub fn new(repository: &str) -> Self {
        Self {
            repository: repository.to_owned(),
            git_ref: "refs/heads/main".to_owned(),
            actor: "octocat".to_owned(),
            workflow: "release".to_owned(),
            event_name: "push".to_owned(),
        }
    }

    /// The repository owner (the part before `/`).
    pub fn owner(&self) -> &str {
        self.repository
            .split_once('/')
            .map_or(self.repository.as_str(), |(owner, _)| owner)
    }

    /// `repo:ORG/REPO:ref:REF`, the token's default `sub`.
    pub fn subject(&self) -> String {
        format!("repo:{}:ref:{}", self.repository, self.git_ref)
    }

    /// The claims GitHub puts in an Actions OIDC token requested with
    /// `&audience=AUDIENCE`: a string `aud`, `nbf` five minutes back, valid
    /// for five minutes.
    pub fn claims(&self, issuer: &str, audience: &str) -> Value {
        let iat = now();
        let sha: String = random_bytes(20)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let workflow_ref = format!(
            "{}/.github/workflows/{}.yml@{}",
            self.repository, self.workflow, self.git_ref
        );
        let ref_type = if self.git_ref.starts_with("refs/tags/") {
            "tag"
        } else {
            "branch"
        };
        json!({
            "actor": self.actor,
            "actor_id": "583231",
            "aud": audience,
            "base_ref": "",
            "event_name": self.event_name,
            "exp": iat + 300,
            "head_ref": "",
            "iat": iat,
            "iss": issuer,
            "job_workflow_ref": workflow_ref,
            "job_workflow_sha": sha,
            "jti": random_uuid(),
            "nbf": iat - 300,
            "ref": self.git_ref,
            "ref_protected": "true",
            "ref_type": ref_type,
            "repository": self.repository,
            "repository_id": "801234567",
            "repository_owner": self.owner(),
            "repository_owner_id": "91234567",
            "repository_visibility": "private",
            "run_attempt": "1",
            "run_id": "12874563210",
            "run_number": "42",
            "runner_environment": "github-hosted",
            "sha": sha,
            "sub": self.subject(),
            "workflow": self.workflow,
            "workflow_ref": workflow_ref,
            "workflow_sha": sha,
        })
    }
}

fn secs(d: Duration) -> i64 {
    d.as_secs().try_into().expect("duration fits i64")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuids_look_like_uuids() {
        let id = random_uuid();
        assert_eq!(id.len(), 36);
        assert_eq!(id.matches('-').count(), 4);
        assert_eq!(&id[14..15], "4");
    }

    #[test]
    fn shape_keeps_keys_and_leaf_types() {
        let shape = json_shape(&json!({"a": [1, 2], "b": {"c": "x", "d": true}}));
        assert_eq!(
            shape,
            json!({"a": ["integer"], "b": {"c": "string", "d": "bool"}})
        );
    }
}
