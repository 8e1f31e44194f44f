//! A loopback stand-in for the Kubernetes API server, for the pull-secret
//! controller's tests. No API server can be installed on these machines,
//! so this stub models, honestly and no further, what the controller and
//! kubectl rely on.
//!
//! **Modelled:**
//! - Namespaces, ServiceAccounts, Secrets, Events (`v1` and
//!   `events.k8s.io/v1`) and Leases (`coordination.k8s.io/v1`), each decoded
//!   as its k8s-openapi type on write (a value of the wrong type is a 400;
//!   unknown fields are dropped, as without strict field validation).
//! - One global `resourceVersion` counter bumped by every committed write,
//!   as etcd's revision; a write that changes nothing commits nothing.
//! - `uid` and `creationTimestamp` set on create; names checked as RFC 1123
//!   subdomains; namespaced objects need their namespace (404 otherwise).
//! - List with `labelSelector` (full grammar), `fieldSelector`
//!   (`metadata.name`, `metadata.namespace`), `limit` and `continue`.
//! - Watch (`?watch=1&resourceVersion=N`): the kept changes after N, then
//!   live ones, as newline-delimited JSON events; an object entering or
//!   leaving a label selection is `ADDED` or `DELETED`; `BOOKMARK` events
//!   when `allowWatchBookmarks=true`; `timeoutSeconds`. The history is
//!   bounded: a version older than it gets an `ERROR` event with a 410
//!   `Expired` Status, as the API sends it inside the stream, and
//!   [`KubeApi::expire_watches`] compacts the history and ends every watch
//!   that way.
//! - `PUT` with a stale `metadata.resourceVersion`, a merge patch carrying
//!   one, and a delete whose `preconditions` (`uid`, `resourceVersion`)
//!   the object no longer matches: 409 `Conflict`. A Secret's `type` is
//!   immutable, and so are its `data` and `immutable` once `immutable:
//!   true` is set (422).
//! - Merge patch (RFC 7386) and server-side apply (`PATCH` with
//!   `application/apply-patch+yaml`, `fieldManager`, `force`), with field
//!   ownership per manager in `metadata.managedFields` (see
//!   [`managed_fields`] for the granularity): a field another manager owns
//!   with another value is a 409 unless `force`; fields a manager stops
//!   applying are removed unless someone else owns them. Other writes take
//!   ownership of what they change, under `fieldManager` or the user agent.
//! - Secrets: `stringData` folds into `data`; a `kubernetes.io/dockerconfigjson`
//!   Secret must hold valid JSON.
//! - `TokenRequest` on `serviceaccounts/NAME/token`: `expirationSeconds`
//!   at least 600 (422 below), `audiences` (default: the issuer), tokens
//!   with the real claims, signed RS256 by the stub's key and published
//!   through `/.well-known/openid-configuration` and `/openid/v1/jwks`
//!   (unauthenticated, as with the issuer-discovery role bound to everyone).
//! - Bearer-token authentication: every user has its own token, and
//!   [`KubeApi::requests`] records who did what, when, with what status;
//!   optionally anonymous requests. The API is served over plain HTTP and
//!   over HTTPS (kubectl sends a bearer token only over TLS); the
//!   kubeconfigs the stub writes use HTTPS with the stub's CA.
//! - Authorization by RBAC, once a test loads roles and bindings
//!   ([`KubeApi::enforce_rbac`], normally the shipped manifests): see
//!   [`rbac`] for exactly what is modelled. A refused request is a 403
//!   `Forbidden` Status in the API's words. Without it, every
//!   authenticated user may do everything.
//! - Field managers: `?fieldManager=`, else the User-Agent up to its first
//!   `/`, else `""`, as the API records them in `managedFields`.
//! - `events.k8s.io/v1` Events validated as the API does: `note` at most
//!   1024 bytes, `reason` and `action` at most 128, a `type` of `Normal` or
//!   `Warning`, and `note`, `reason`, `type`, `action`, `regarding` and
//!   `eventTime` immutable (422 `Invalid` otherwise).
//! - Legacy discovery (`/api`, `/apis`, `/api/v1`, `/apis/G/V`, `/version`),
//!   enough for kubectl.
//! - Fault injection: the next N matching requests answer a given status
//!   (and message).
//!
//! **Not modelled:** admission (ValidatingAdmissionPolicy included); garbage collection
//! through `ownerReferences`; a namespace's `Terminating` phase (deleting a
//! namespace removes its objects at once, each with its own `DELETED`
//! event); consistent snapshots for continued lists (later pages read the
//! current objects, reported at the first page's version); strategic merge
//! and JSON patches (415); per-item merging of lists keyed by a field in
//! server-side apply (lists are atomic); protobuf request bodies (a create
//! or update in protobuf, as kubectl's typed commands such as `create
//! token` send, is a 415, after authorization as in the API), protobuf and
//! Table output; `resourceVersionMatch`, `sendInitialEvents`, and field
//! selectors on other fields.

pub mod managed_fields;
pub mod rbac;
pub mod resources;
pub mod routes;
pub mod selector;
pub mod status;
pub mod store;
pub mod tokens;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::http::{HeaderMap, Method, Uri, header};
use axum::response::Response;
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tokio::sync::broadcast;

use self::rbac::{Rbac, UserInfo};
use self::status::ApiError;
use self::store::Store;
use crate::http_stub::HttpStub;
use crate::oidc_issuer::keys::{IssuerKey, KeyAlg};
use crate::secrets::random_hex;

/// How many changes the stub keeps for watches by default.
pub const DEFAULT_HISTORY: usize = 100_000;
/// How often watches that allow them get a `BOOKMARK` by default.
pub const DEFAULT_BOOKMARK_INTERVAL: Duration = Duration::from_secs(2);
/// The user of requests without credentials, when they are allowed.
pub const ANONYMOUS: &str = "system:anonymous";
/// The field manager the tests' own writes use.
pub const TEST_MANAGER: &str = "regauth-e2e";

/// One request, as the stub saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestRecord {
    /// The authenticated user.
    pub user: String,
    /// Which client it was: the label its token was made for (several
    /// replicas share one user, as a Deployment's pods share a ServiceAccount).
    pub client: String,
    /// When the stub received it.
    pub at: Instant,
    /// Its `User-Agent` (`""` without one).
    pub user_agent: String,
    /// `get`, `list`, `watch`, `create`, `update`, `patch`, `apply` or `delete`.
    pub verb: String,
    /// The resource plural.
    pub resource: String,
    /// The API group (`""` for core).
    pub group: String,
    /// The namespace (`""` for none).
    pub namespace: String,
    /// The object's name (`""` for a collection).
    pub name: String,
    /// The subresource, like `token`.
    pub subresource: String,
    /// The status answered.
    pub status: u16,
}

impl RequestRecord {
    /// Whether the request changed (or tried to change) stored objects.
    pub fn is_write(&self) -> bool {
        matches!(
            self.verb.as_str(),
            "create" | "update" | "patch" | "apply" | "delete"
        ) && self.subresource != "token"
    }
}

/// Answers the next `times` requests matching `verb` and `resource` (and
/// `namespace` and `client` when set) with `status`, without touching the
/// store.
#[derive(Debug, Clone)]
pub struct Fault {
    /// The verb to match.
    pub verb: String,
    /// The resource plural to match.
    pub resource: String,
    /// The namespace to match (`None`: any).
    pub namespace: Option<String>,
    /// The client to match, by the label its token was made for (`None`:
    /// any).
    pub client: Option<String>,
    /// The status to answer (409 is a `Conflict`, 500 an internal error…).
    pub status: u16,
    /// How many more requests to fail.
    pub times: usize,
    /// The `Status` message (default: "injected fault").
    pub message: Option<String>,
}

/// Who a bearer token belongs to.
#[derive(Debug, Clone)]
struct Identity {
    /// The label of the client it was made for.
    client: String,
    user: UserInfo,
}

/// What the HTTP handler and the test share.
#[derive(Debug)]
pub struct State {
    store: Mutex<Store>,
    key: IssuerKey,
    url: OnceLock<String>,
    users: Mutex<BTreeMap<String, Identity>>,
    /// `None`: every authenticated user may do everything.
    rbac: Mutex<Option<Rbac>>,
    faults: Mutex<Vec<Fault>>,
    requests: Mutex<Vec<RequestRecord>>,
    expire: broadcast::Sender<()>,
    bookmark_interval: Duration,
    anonymous: std::sync::atomic::AtomicBool,
}

impl State {
    fn url(&self) -> String {
        self.url.get().cloned().unwrap_or_default()
    }

    fn now_rfc3339(&self) -> String {
        let seconds = crate::oidc_issuer::claims::now();
        k8s_openapi::jiff::Timestamp::from_second(seconds)
            .map(|t| t.to_string())
            .unwrap_or_default()
    }

    /// The user whose bearer token the request carries.
    fn authenticate(&self, headers: &HeaderMap) -> Option<Identity> {
        if !headers.contains_key(header::AUTHORIZATION)
            && self.anonymous.load(std::sync::atomic::Ordering::SeqCst)
        {
            return Some(Identity {
                client: ANONYMOUS.to_owned(),
                user: UserInfo::new(ANONYMOUS),
            });
        }
        let token = headers
            .get(header::AUTHORIZATION)?
            .to_str()
            .ok()?
            .strip_prefix("Bearer ")?
            .trim();
        self.users
            .lock()
            .expect("stub users lock")
            .get(token)
            .cloned()
    }

    /// Whether `user` may make the request `attributes` describes.
    fn authorize(&self, user: &UserInfo, attributes: &rbac::Attributes) -> Result<(), ApiError> {
        let rbac = self.rbac.lock().expect("stub rbac lock");
        match rbac.as_ref() {
            Some(rbac) if !rbac.allows(user, attributes) => Err(ApiError::new(
                403,
                "Forbidden",
                attributes.forbidden_message(&user.name),
            )),
            _ => Ok(()),
        }
    }

    fn take_fault(&self, request: &RequestRecord) -> Option<ApiError> {
        let mut faults = self.faults.lock().expect("stub faults lock");
        let fault = faults.iter_mut().find(|f| {
            f.times > 0
                && f.verb == request.verb
                && f.resource == request.resource
                && f.namespace
                    .as_deref()
                    .is_none_or(|n| n == request.namespace)
                && f.client.as_deref().is_none_or(|c| c == request.client)
        })?;
        fault.times -= 1;
        Some(match (fault.status, &fault.message) {
            (409, None) => ApiError::stale(&request.resource, &request.name),
            (code, message) => ApiError::new(
                code,
                "InternalError",
                message
                    .clone()
                    .unwrap_or_else(|| "injected fault".to_owned()),
            ),
        })
    }

    fn record(&self, mut record: RequestRecord, status: u16, response: Response) -> Response {
        record.status = status;
        self.requests
            .lock()
            .expect("stub requests lock")
            .push(record);
        response
    }
}

/// Options for [`KubeApi::start_with`].
#[derive(Debug, Clone)]
pub struct Options {
    /// Changes kept for watches.
    pub history: usize,
    /// Interval between `BOOKMARK` events.
    pub bookmark_interval: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            history: DEFAULT_HISTORY,
            bookmark_interval: DEFAULT_BOOKMARK_INTERVAL,
        }
    }
}

/// The running stub; stops on drop.
#[derive(Debug)]
pub struct KubeApi {
    state: Arc<State>,
    server: HttpStub,
    /// The CA of the HTTPS endpoint's certificate (PEM).
    ca_pem: String,
}

impl KubeApi {
    /// Starts the stub with the default options.
    pub fn start() -> Self {
        Self::start_with(Options::default())
    }

    /// Starts the stub on 127.0.0.1.
    pub fn start_with(options: Options) -> Self {
        let state = Arc::new(State {
            store: Mutex::new(Store::new(options.history)),
            key: IssuerKey::generate(KeyAlg::Rs256),
            url: OnceLock::new(),
            users: Mutex::new(BTreeMap::new()),
            rbac: Mutex::new(None),
            faults: Mutex::new(Vec::new()),
            requests: Mutex::new(Vec::new()),
            expire: broadcast::channel(4).0,
            bookmark_interval: options.bookmark_interval,
            anonymous: std::sync::atomic::AtomicBool::new(false),
        });
        let serving = Arc::clone(&state);
        let router = Router::new().fallback(
            move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
                routes::handle(Arc::clone(&serving), method, uri, headers, body)
            },
        );
        let mut server = HttpStub::start("kube-api", router.clone());
        let ca = crate::pki::Ca::new("kube-api stub CA");
        let certified = ca.issue_server();
        server.serve_tls(router, &certified.cert_pem, &certified.key_pem);
        state.url.set(server.url()).expect("URL set once");
        Self {
            state,
            server,
            ca_pem: ca.cert_pem().to_owned(),
        }
    }

    /// `http://127.0.0.1:PORT`: the API server URL and the token issuer.
    pub fn url(&self) -> String {
        self.server.url()
    }

    /// `https://127.0.0.1:PORT`: the same API over TLS.
    pub fn https_url(&self) -> String {
        self.server.https_url().expect("the stub serves TLS")
    }

    /// The CA certificate (PEM) of the HTTPS endpoint.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// Adds a user and returns its bearer token.
    pub fn add_user(&self, name: &str) -> String {
        self.add_client(name, UserInfo::new(name))
    }

    /// Adds a token for `user`, recorded as client `label` (for several
    /// clients sharing one user), and returns it.
    pub fn add_client(&self, label: &str, user: UserInfo) -> String {
        let token = format!("stub-{}-{}", label.replace([':', '/'], "-"), random_hex(16));
        self.state.users.lock().expect("stub users lock").insert(
            token.clone(),
            Identity {
                client: label.to_owned(),
                user,
            },
        );
        token
    }

    /// From now on, authorizes every request by RBAC, with the roles and
    /// bindings among `documents` (namespaced ones without a namespace go
    /// to `namespace`); later calls add more.
    pub fn enforce_rbac(&self, documents: &[Value], namespace: &str) {
        let mut rbac = self.state.rbac.lock().expect("stub rbac lock");
        rbac.get_or_insert_with(Rbac::default)
            .load(documents, namespace)
            .unwrap_or_else(|e| panic!("load RBAC into the stub: {e}"));
    }

    /// Lets requests without credentials in as `system:anonymous`, as an
    /// API server with anonymous authentication does. kubectl does not send
    /// a bearer token to a plain-HTTP server, so its checks need this.
    pub fn allow_anonymous(&self) {
        self.state
            .anonymous
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Writes a kubeconfig for a new user `name` to `path`.
    pub fn write_kubeconfig(&self, path: &Path, user: &str) {
        self.write_kubeconfig_for(path, user, UserInfo::new(user));
    }

    /// Writes a kubeconfig to `path` with a new token for `user`, recorded
    /// as client `label`; it reaches the stub over HTTPS, trusting its CA.
    pub fn write_kubeconfig_for(&self, path: &Path, label: &str, user: UserInfo) {
        use base64::Engine as _;
        let token = self.add_client(label, user);
        let ca = base64::engine::general_purpose::STANDARD.encode(&self.ca_pem);
        let config = json!({
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "stub", "cluster": {"server": self.https_url(), "certificate-authority-data": ca}}],
            "users": [{"name": label, "user": {"token": token}}],
            "contexts": [{"name": "stub", "context": {"cluster": "stub", "user": label, "namespace": "default"}}],
            "current-context": "stub",
        });
        std::fs::write(
            path,
            serde_json::to_vec_pretty(&config).expect("kubeconfig JSON"),
        )
        .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    }

    /// The issuer's public key set.
    pub fn jwks(&self) -> Value {
        tokens::jwks(&self.state.key)
    }

    /// Creates an object as the test (field manager [`TEST_MANAGER`]).
    pub fn create<K>(&self, object: &K) -> K
    where
        K: k8s_openapi::Resource + Serialize + DeserializeOwned,
    {
        let value = serde_json::to_value(object).expect("serialize a k8s-openapi object");
        let ns = value["metadata"]["namespace"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let now = self.state.now_rfc3339();
        let created = self
            .store()
            .create(resources::of::<K>(), &ns, &value, TEST_MANAGER, &now)
            .unwrap_or_else(|e| panic!("create {} in the stub: {}", K::KIND, e.message));
        typed(created)
    }

    /// Replaces an object unconditionally, as the test.
    pub fn update<K>(&self, object: &K) -> K
    where
        K: k8s_openapi::Resource
            + k8s_openapi::Metadata<Ty = k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta>
            + Serialize
            + DeserializeOwned,
    {
        let mut value = serde_json::to_value(object).expect("serialize a k8s-openapi object");
        if let Some(meta) = value["metadata"].as_object_mut() {
            meta.remove("resourceVersion");
        }
        let ns = value["metadata"]["namespace"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let name = value["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let now = self.state.now_rfc3339();
        let updated = self
            .store()
            .replace(resources::of::<K>(), &ns, &name, &value, TEST_MANAGER, &now)
            .unwrap_or_else(|e| panic!("update {} {name} in the stub: {}", K::KIND, e.message));
        typed(updated)
    }

    /// One object, if it exists (`namespace` is `""` for cluster-scoped types).
    pub fn get<K>(&self, namespace: &str, name: &str) -> Option<K>
    where
        K: k8s_openapi::Resource + DeserializeOwned,
    {
        self.store()
            .get(resources::of::<K>(), namespace, name)
            .ok()
            .map(typed)
    }

    /// Every object of a type, in namespace and name order.
    pub fn list<K>(&self) -> Vec<K>
    where
        K: k8s_openapi::Resource + DeserializeOwned,
    {
        // Decode after the lock is released: the server keeps serving.
        let values = self.store().list(
            resources::of::<K>(),
            None,
            &Default::default(),
            &Default::default(),
            None,
        );
        values.into_iter().map(|(_, v)| typed(v)).collect()
    }

    /// Deletes an object; false when it did not exist.
    pub fn delete<K>(&self, namespace: &str, name: &str) -> bool
    where
        K: k8s_openapi::Resource,
    {
        self.store()
            .delete(
                resources::of::<K>(),
                namespace,
                name,
                &store::Preconditions::default(),
            )
            .is_ok()
    }

    /// Creates namespace `name` with `labels`, and its `default`
    /// ServiceAccount, as the cluster's service-account controller would.
    pub fn create_namespace(&self, name: &str, labels: &[(&str, &str)]) {
        let labels: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let mut namespace = Namespace::default();
        namespace.metadata.name = Some(name.to_owned());
        namespace.metadata.labels = (!labels.is_empty()).then_some(labels);
        self.create(&namespace);
        self.create_service_account(name, "default");
    }

    /// Creates ServiceAccount `name` in `namespace`.
    pub fn create_service_account(&self, namespace: &str, name: &str) -> ServiceAccount {
        let mut sa = ServiceAccount::default();
        sa.metadata.name = Some(name.to_owned());
        sa.metadata.namespace = Some(namespace.to_owned());
        self.create(&sa)
    }

    /// Fails the next requests that match (see [`Fault`]).
    pub fn inject(&self, fault: Fault) {
        self.state
            .faults
            .lock()
            .expect("stub faults lock")
            .push(fault);
    }

    /// How many injected failures are still pending.
    pub fn pending_faults(&self) -> usize {
        self.state
            .faults
            .lock()
            .expect("stub faults lock")
            .iter()
            .map(|f| f.times)
            .sum()
    }

    /// Compacts the history and ends every open watch with a 410
    /// `Expired` error, so every client must list again.
    pub fn expire_watches(&self) {
        self.store().compact();
        let _ = self.state.expire.send(());
    }

    /// Every request so far, oldest first.
    pub fn requests(&self) -> Vec<RequestRecord> {
        self.state
            .requests
            .lock()
            .expect("stub requests lock")
            .clone()
    }

    /// The current resource version.
    pub fn resource_version(&self) -> u64 {
        self.store().resource_version()
    }

    fn store(&self) -> std::sync::MutexGuard<'_, Store> {
        self.state.store.lock().expect("stub store lock")
    }
}

fn typed<K: DeserializeOwned>(value: Value) -> K {
    serde_json::from_value(value).expect("the stub stores objects of their own type")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::token_client::{http_client, send};

    #[test]
    fn authenticates_and_answers_with_status_objects() {
        let api = KubeApi::start();
        let token = api.add_user("alice");
        api.create_namespace("team-a", &[("env", "prod")]);
        let url = format!(
            "{}/api/v1/namespaces/team-a/serviceaccounts/default",
            api.url()
        );
        assert_eq!(send(http_client().get(&url)).status, 401);
        let reply = send(http_client().get(&url).bearer_auth(&token));
        assert_eq!(reply.status, 200, "{}", reply.body);
        assert_eq!(reply.json()["metadata"]["name"], "default");
        let missing = send(
            http_client()
                .get(format!("{}/api/v1/namespaces/team-b", api.url()))
                .bearer_auth(&token),
        );
        assert_eq!(missing.status, 404);
        assert_eq!(missing.json()["kind"], "Status");
        assert_eq!(missing.json()["reason"], "NotFound");
        let seen = api.requests();
        assert_eq!(seen.len(), 2, "the unauthenticated request is not recorded");
        assert_eq!(
            (seen[0].user.as_str(), seen[0].verb.as_str()),
            ("alice", "get")
        );
    }
}
