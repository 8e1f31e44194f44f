//! The HTTP surface: paths, verbs, query parameters, watch streams and
//! discovery, mapped onto the [`Store`](super::store::Store).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, Method, Uri, header};
use axum::response::Response;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc};

use super::rbac::{self as authz, Attributes};
use super::resources::{self, RESOURCES, ResourceType};
use super::selector::{FieldSelector, LabelSelector};
use super::status::ApiError;
use super::store::{Change, ChangeKind, Preconditions};
use super::{RequestRecord, State, tokens};
use crate::http_stub;

/// The longest watch the stub keeps open when the client names no timeout.
const MAX_WATCH: Duration = Duration::from_secs(1800);

/// What a request addresses.
#[derive(Debug, Clone)]
struct Target {
    rt: ResourceType,
    namespace: Option<String>,
    name: Option<String>,
    subresource: Option<String>,
}

/// Serves one request.
pub async fn handle(
    state: Arc<State>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().to_owned();
    let query = parse_query(uri.query().unwrap_or_default());
    // The issuer's discovery is public, as with the
    // system:service-account-issuer-discovery role bound to everyone.
    match (method.clone(), path.as_str()) {
        (Method::GET, tokens::DISCOVERY_PATH) => {
            let body = tokens::discovery(&state.url(), &state.key);
            return http_stub::cacheable(http_stub::json(200, "application/json", &body), 3600);
        }
        (Method::GET, tokens::JWKS_PATH) => {
            let body = tokens::jwks(&state.key);
            return http_stub::cacheable(
                http_stub::json(200, "application/jwk-set+json", &body),
                3600,
            );
        }
        _ => {}
    }
    let received = std::time::Instant::now();
    let Some(identity) = state.authenticate(&headers) else {
        return status_response(&ApiError::new(401, "Unauthorized", "Unauthorized"));
    };
    // Discovery is open to every authenticated user (system:discovery).
    if let Some(discovered) = discovery(&path, &state.url()) {
        return http_stub::json(200, "application/json", &discovered);
    }
    let target = match parse_path(&path) {
        Ok(t) => t,
        Err(e) => return status_response(&e),
    };
    let watch = query.get("watch").is_some_and(|v| v == "true" || v == "1");
    let verb = verb(&method, &target, watch, &headers);
    let mut record = RequestRecord {
        user: identity.user.name.clone(),
        client: identity.client.clone(),
        at: received,
        user_agent: headers
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned(),
        verb: verb.to_owned(),
        resource: target.rt.plural.to_owned(),
        group: target.rt.group.to_owned(),
        namespace: target.namespace.clone().unwrap_or_default(),
        name: target.name.clone().unwrap_or_default(),
        subresource: target.subresource.clone().unwrap_or_default(),
        status: 0,
    };
    if let Err(forbidden) = authorize(&state, &identity.user, &target, verb, &query) {
        let status = forbidden.code;
        return state.record(record, status, status_response(&forbidden));
    }
    let response = match state.take_fault(&record) {
        Some(fault) => Err(fault),
        None if verb == "watch" => {
            return state.record(record, 200, watch_response(&state, &target, &query));
        }
        None => serve(&state, &target, verb, &query, &headers, &body),
    };
    let (status, response) = match response {
        Ok((status, value)) => (status, http_stub::json(status, "application/json", &value)),
        Err(e) => (e.code, status_response(&e)),
    };
    record.status = status;
    state.record(record, status, response)
}

/// RBAC's view of a request. A server-side apply is a `patch`, and one that
/// would create the object must be allowed `create` as well; a list or
/// watch is named by a `metadata.name` field selector; a collection create
/// has no name.
fn authorize(
    state: &State,
    user: &authz::UserInfo,
    target: &Target,
    verb: &str,
    query: &Query,
) -> Result<(), ApiError> {
    let attributes = |verb: &str, name: String| Attributes {
        verb: verb.to_owned(),
        group: target.rt.group.to_owned(),
        resource: target.rt.plural.to_owned(),
        subresource: target.subresource.clone().unwrap_or_default(),
        namespace: target.namespace.clone().unwrap_or_default(),
        name,
    };
    let name = target.name.clone().unwrap_or_default();
    match verb {
        "list" | "watch" => {
            let named = query
                .get("fieldSelector")
                .and_then(|f| authz::name_from_field_selector(f))
                .unwrap_or_default();
            state.authorize(user, &attributes(verb, named))
        }
        "apply" => {
            state.authorize(user, &attributes("patch", name.clone()))?;
            let exists = {
                let store = state.store.lock().expect("stub store lock");
                store
                    .get(
                        target.rt,
                        target.namespace.as_deref().unwrap_or_default(),
                        &name,
                    )
                    .is_ok()
            };
            if exists {
                Ok(())
            } else {
                state.authorize(user, &attributes("create", String::new()))
            }
        }
        "create" if target.subresource.is_none() => {
            state.authorize(user, &attributes("create", String::new()))
        }
        other => state.authorize(user, &attributes(other, name)),
    }
}

fn verb(method: &Method, target: &Target, watch: bool, headers: &HeaderMap) -> &'static str {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    match (method.as_str(), target.name.is_some()) {
        ("GET", false) if watch => "watch",
        ("GET", false) => "list",
        ("GET", true) => "get",
        ("POST", _) => "create",
        ("PUT", _) => "update",
        ("PATCH", _) if content_type.starts_with("application/apply-patch") => "apply",
        ("PATCH", _) => "patch",
        ("DELETE", _) => "delete",
        _ => "unsupported",
    }
}

fn serve(
    state: &State,
    target: &Target,
    verb: &str,
    query: &Query,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(u16, Value), ApiError> {
    let rt = target.rt;
    let ns = target.namespace.as_deref().unwrap_or_default();
    let now = state.now_rfc3339();
    let manager = manager(query, headers);
    if matches!(verb, "create" | "update") {
        let content_type = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("application/json");
        // The API also takes protobuf and CBOR; the stub only JSON, and says so
        // as the API does for a type it does not know.
        if !content_type.starts_with("application/json") {
            return Err(ApiError::new(
                415,
                "UnsupportedMediaType",
                format!(
                    "the body of the request was in an unknown format ({content_type}) - accepted media types include: application/json"
                ),
            ));
        }
    }
    let mut store = state.store.lock().expect("stub store lock");
    match (verb, target.name.as_deref(), target.subresource.as_deref()) {
        ("list", None, None) => list(&store, target, query).map(|v| (200, v)),
        ("get", Some(name), None) => store.get(rt, ns, name).map(|v| (200, v)),
        ("create", None, None) => {
            let object = json_body(body)?;
            store
                .create(rt, ns, &object, &manager, &now)
                .map(|v| (201, v))
        }
        ("create", Some(name), Some("token")) if rt.kind == "ServiceAccount" => {
            let sa = store.get(rt, ns, name)?;
            drop(store);
            let request = json_body(body)?;
            tokens::token_request(
                &state.key,
                &state.url(),
                &sa,
                &request,
                crate::oidc_issuer::claims::now(),
            )
            .map(|v| (201, v))
        }
        ("update", Some(name), None) => {
            let object = json_body(body)?;
            store
                .replace(rt, ns, name, &object, &manager, &now)
                .map(|v| (200, v))
        }
        ("patch", Some(name), None) => {
            let content_type = headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default();
            if !content_type.starts_with("application/merge-patch+json") {
                return Err(ApiError::new(
                    415,
                    "UnsupportedMediaType",
                    format!(
                        "the stub models merge patches and server-side apply, not {content_type:?}"
                    ),
                ));
            }
            let patch = json_body(body)?;
            store
                .merge_patch(rt, ns, name, &patch, &manager, &now)
                .map(|v| (200, v))
        }
        ("apply", Some(name), None) => {
            // YAML is a superset of JSON; clients (kube-rs, kubectl) send JSON.
            let config = json_body(body)?;
            let force = query.get("force").is_some_and(|v| v == "true");
            let field_manager = query.get("fieldManager").cloned().unwrap_or_default();
            let existed = store.get(rt, ns, name).is_ok();
            store
                .apply(rt, ns, name, &config, &field_manager, force, &now)
                .map(|v| (if existed { 200 } else { 201 }, v))
        }
        ("delete", Some(name), None) => {
            let preconditions = if body.is_empty() {
                Preconditions::default()
            } else {
                let options = json_body(body)?;
                let field = |key: &str| options["preconditions"][key].as_str().map(str::to_owned);
                Preconditions {
                    uid: field("uid"),
                    resource_version: field("resourceVersion"),
                }
            };
            store.delete(rt, ns, name, &preconditions).map(|v| (200, v))
        }
        _ => Err(ApiError::new(
            405,
            "MethodNotAllowed",
            format!("the stub does not serve {verb} on this path"),
        )),
    }
}

/// The field manager of a non-apply write: `fieldManager`, or the client's
/// user agent up to the first `/`, or `""` without one, as the API
/// defaults it.
fn manager(query: &Query, headers: &HeaderMap) -> String {
    query.get("fieldManager").cloned().unwrap_or_else(|| {
        headers
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .and_then(|ua| ua.split('/').next())
            .unwrap_or_default()
            .to_owned()
    })
}

fn json_body(body: &[u8]) -> Result<Value, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("the request body is not JSON: {e}")))
}

fn selectors(query: &Query) -> Result<(LabelSelector, FieldSelector), ApiError> {
    let labels = LabelSelector::parse(query.get("labelSelector").map_or("", String::as_str))
        .map_err(ApiError::bad_request)?;
    let fields = FieldSelector::parse(query.get("fieldSelector").map_or("", String::as_str))
        .map_err(ApiError::bad_request)?;
    Ok((labels, fields))
}

/// A list, paginated with `limit` and `continue`. A continued page reads
/// the objects as they are now (the API reads them at the first page's
/// version), but reports the first page's version, so a watch from it
/// sees every change since.
fn list(store: &super::store::Store, target: &Target, query: &Query) -> Result<Value, ApiError> {
    let (labels, fields) = selectors(query)?;
    let limit: Option<usize> = match query.get("limit") {
        Some(l) => Some(
            l.parse()
                .map_err(|_| ApiError::bad_request(format!("invalid limit {l:?}")))?,
        ),
        None => None,
    }
    .filter(|l| *l > 0);
    let (rv, after) = match query.get("continue").filter(|c| !c.is_empty()) {
        Some(token) => {
            let (rv, after) = decode_continue(token)?;
            if store.is_expired(rv) {
                return Err(ApiError::expired(
                    "The provided continue parameter is too old to display a consistent list result. \
                     You can start a new list without the continue parameter.",
                ));
            }
            (rv, Some(after))
        }
        None => (store.resource_version(), None),
    };
    let mut items = store.list(
        target.rt,
        target.namespace.as_deref(),
        &labels,
        &fields,
        after.as_ref(),
    );
    let mut metadata = json!({"resourceVersion": rv.to_string()});
    if let Some(limit) = limit
        && items.len() > limit
    {
        let remaining = items.len() - limit;
        items.truncate(limit);
        if let Some((last, _)) = items.last() {
            metadata["continue"] = encode_continue(rv, last).into();
            metadata["remainingItemCount"] = remaining.into();
        }
    }
    Ok(json!({
        "kind": format!("{}List", target.rt.kind),
        "apiVersion": target.rt.api_version(),
        "metadata": metadata,
        "items": items.into_iter().map(|(_, v)| v).collect::<Vec<_>>(),
    }))
}

fn encode_continue(rv: u64, last: &(String, String)) -> String {
    URL_SAFE_NO_PAD.encode(json!({"rv": rv, "ns": last.0, "name": last.1}).to_string())
}

fn decode_continue(token: &str) -> Result<(u64, (String, String)), ApiError> {
    let bad = || ApiError::bad_request("invalid continue token");
    let bytes = URL_SAFE_NO_PAD.decode(token).map_err(|_| bad())?;
    let value: Value = serde_json::from_slice(&bytes).map_err(|_| bad())?;
    let rv = value["rv"].as_u64().ok_or_else(bad)?;
    let ns = value["ns"].as_str().ok_or_else(bad)?.to_owned();
    let name = value["name"].as_str().ok_or_else(bad)?.to_owned();
    Ok((rv, (ns, name)))
}

/// Which events of a change a watch with these selectors sees: leaving the
/// selection is a `DELETED`, entering it an `ADDED`.
struct Filter {
    rt: ResourceType,
    namespace: Option<String>,
    labels: LabelSelector,
    fields: FieldSelector,
}

impl Filter {
    fn selects(&self, object: &Value) -> bool {
        self.namespace
            .as_deref()
            .is_none_or(|ns| object["metadata"]["namespace"].as_str() == Some(ns))
            && self.labels.matches(object)
            && self.fields.matches(object)
    }

    fn event(&self, change: &Change) -> Option<Value> {
        if change.resource != self.rt {
            return None;
        }
        let before = change.old.as_ref().is_some_and(|o| self.selects(o));
        let after = change.kind != ChangeKind::Deleted && self.selects(&change.new);
        let kind = match (change.kind, before, after) {
            (ChangeKind::Deleted, true, _) | (_, true, false) => "DELETED",
            (_, false, true) => "ADDED",
            (_, true, true) => "MODIFIED",
            _ => return None,
        };
        Some(json!({"type": kind, "object": change.new}))
    }
}

fn watch_response(state: &Arc<State>, target: &Target, query: &Query) -> Response {
    let (labels, fields) = match selectors(query) {
        Ok(s) => s,
        Err(e) => return status_response(&e),
    };
    let filter = Filter {
        rt: target.rt,
        namespace: target.namespace.clone(),
        labels,
        fields,
    };
    let bookmarks = query
        .get("allowWatchBookmarks")
        .is_some_and(|v| v == "true");
    let timeout = query
        .get("timeoutSeconds")
        .and_then(|t| t.parse().ok())
        .map_or(MAX_WATCH, Duration::from_secs)
        .min(MAX_WATCH);
    let requested: Option<u64> = query
        .get("resourceVersion")
        .and_then(|v| v.parse().ok())
        .filter(|v| *v != 0);
    let (start_rv, first, feed) = {
        let store = state.store.lock().expect("stub store lock");
        match requested {
            Some(rv) => match store.watch_from(rv) {
                Ok((past, feed)) => {
                    let events: Vec<Value> = past.iter().filter_map(|c| filter.event(c)).collect();
                    let last = past.last().map_or(rv, |c| c.rv);
                    (last, events, feed)
                }
                // The API answers an expired version inside the stream.
                Err(e) => (
                    rv,
                    vec![json!({"type": "ERROR", "object": e.status()})],
                    store.subscribe(),
                ),
            },
            None => {
                let (rv, objects, feed) = store.snapshot_and_feed(
                    filter.rt,
                    filter.namespace.as_deref(),
                    &filter.labels,
                    &filter.fields,
                );
                let events = objects
                    .into_iter()
                    .map(|o| json!({"type": "ADDED", "object": o}))
                    .collect();
                (rv, events, feed)
            }
        }
    };
    let (tx, rx) = mpsc::channel::<Result<Bytes, Infallible>>(256);
    let expire = state.expire.subscribe();
    let bookmark_every = state.bookmark_interval;
    tokio::spawn(stream_watch(
        filter,
        start_rv,
        first,
        feed,
        tx,
        expire,
        bookmarks.then_some(bookmark_every),
        timeout,
    ));
    let body = Body::from_stream(futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    }));
    http_stub::respond(200, "application/json", body)
}

#[allow(clippy::too_many_arguments)] // one watch's whole context
async fn stream_watch(
    filter: Filter,
    mut last: u64,
    first: Vec<Value>,
    mut feed: broadcast::Receiver<Arc<Change>>,
    tx: mpsc::Sender<Result<Bytes, Infallible>>,
    mut expire: broadcast::Receiver<()>,
    bookmarks: Option<Duration>,
    timeout: Duration,
) {
    let send = |event: Value| {
        let tx = tx.clone();
        async move {
            let mut line = event.to_string().into_bytes();
            line.push(b'\n');
            tx.send(Ok(Bytes::from(line))).await.is_ok()
        }
    };
    let ended_by_error = first.iter().any(|e| e["type"] == "ERROR");
    for event in first {
        if !send(event).await {
            return;
        }
    }
    if ended_by_error {
        return;
    }
    let expired = |rv: u64| json!({"type": "ERROR", "object": ApiError::expired(format!("too old resource version: {rv}")).status()});
    let deadline = tokio::time::sleep(timeout);
    tokio::pin!(deadline);
    let mut ticker = tokio::time::interval(bookmarks.unwrap_or(MAX_WATCH));
    ticker.tick().await;
    loop {
        tokio::select! {
            change = feed.recv() => match change {
                Ok(change) => {
                    if change.rv <= last {
                        continue;
                    }
                    last = change.rv;
                    if let Some(event) = filter.event(&change)
                        && !send(event).await
                    {
                        return;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    send(expired(last)).await;
                    return;
                }
                Err(broadcast::error::RecvError::Closed) => return,
            },
            _ = ticker.tick(), if bookmarks.is_some() => {
                let bookmark = json!({"type": "BOOKMARK", "object": {
                    "kind": filter.rt.kind,
                    "apiVersion": filter.rt.api_version(),
                    "metadata": {"resourceVersion": last.to_string()},
                }});
                if !send(bookmark).await {
                    return;
                }
            }
            _ = expire.recv() => {
                send(expired(last)).await;
                return;
            }
            () = &mut deadline => return,
            () = tx.closed() => return,
        }
    }
}

/// `/api/v1/...` or `/apis/GROUP/VERSION/...` to a resource, namespace,
/// name and subresource.
fn parse_path(path: &str) -> Result<Target, ApiError> {
    let not_found = || {
        ApiError::new(
            404,
            "NotFound",
            format!("the server could not find the requested resource ({path})"),
        )
    };
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version, rest) = match segments.as_slice() {
        ["api", version, rest @ ..] => ("", *version, rest),
        ["apis", group, version, rest @ ..] => (*group, *version, rest),
        _ => return Err(not_found()),
    };
    let resource = |plural: &str| resources::find(group, version, plural).ok_or_else(not_found);
    let owned = |s: &&str| Some((*s).to_owned());
    let target = match rest {
        [plural] => Target {
            rt: resource(plural)?,
            namespace: None,
            name: None,
            subresource: None,
        },
        ["namespaces", ns, plural] => Target {
            rt: resource(plural)?,
            namespace: owned(ns),
            name: None,
            subresource: None,
        },
        ["namespaces", ns, plural, name] => Target {
            rt: resource(plural)?,
            namespace: owned(ns),
            name: owned(name),
            subresource: None,
        },
        ["namespaces", ns, plural, name, sub] => Target {
            rt: resource(plural)?,
            namespace: owned(ns),
            name: owned(name),
            subresource: owned(sub),
        },
        [plural, name] => Target {
            rt: resource(plural)?,
            namespace: None,
            name: owned(name),
            subresource: None,
        },
        _ => return Err(not_found()),
    };
    if target.rt.namespaced != target.namespace.is_some() && target.name.is_some() {
        return Err(not_found());
    }
    if !target.rt.namespaced && target.namespace.is_some() {
        return Err(not_found());
    }
    Ok(target)
}

/// Legacy discovery (`/api`, `/apis`, `/api/v1`, `/apis/G/V`) and `/version`:
/// enough for kubectl to map resource names.
fn discovery(path: &str, url: &str) -> Option<Value> {
    let host = url.trim_start_matches("http://");
    let group_versions = || {
        let mut seen: Vec<(&str, &str)> = RESOURCES
            .iter()
            .filter(|r| !r.group.is_empty())
            .map(|r| (r.group, r.version))
            .collect();
        seen.dedup();
        seen
    };
    let resource_list = |group: &str, version: &str| {
        let mut list: Vec<Value> = RESOURCES
            .iter()
            .filter(|r| r.group == group && r.version == version)
            .map(|r| {
                json!({
                    "name": r.plural,
                    "singularName": r.kind.to_lowercase(),
                    "namespaced": r.namespaced,
                    "kind": r.kind,
                    "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"],
                    "shortNames": r.short_names,
                })
            })
            .collect();
        if group.is_empty() {
            list.push(json!({
                "name": "serviceaccounts/token", "singularName": "", "namespaced": true,
                "group": "authentication.k8s.io", "version": "v1", "kind": "TokenRequest",
                "verbs": ["create"],
            }));
        }
        let group_version = if group.is_empty() {
            version.to_owned()
        } else {
            format!("{group}/{version}")
        };
        json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version, "resources": list})
    };
    match path.trim_end_matches('/') {
        "/version" => Some(
            json!({"major": "1", "minor": "37", "gitVersion": "v1.37.0-regauth-stub", "platform": "linux/amd64"}),
        ),
        "/api" => Some(json!({"kind": "APIVersions", "versions": ["v1"],
            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": host}]})),
        "/apis" => Some(json!({"kind": "APIGroupList", "apiVersion": "v1", "groups":
            group_versions().into_iter().map(|(g, v)| {
                let gv = json!({"groupVersion": format!("{g}/{v}"), "version": v});
                json!({"name": g, "versions": [gv.clone()], "preferredVersion": gv})
            }).collect::<Vec<_>>()})),
        "/api/v1" => Some(resource_list("", "v1")),
        other => {
            let rest = other.strip_prefix("/apis/")?;
            let (group, version) = rest.split_once('/')?;
            group_versions()
                .contains(&(group, version))
                .then(|| resource_list(group, version))
        }
    }
}

type Query = std::collections::BTreeMap<String, String>;

fn parse_query(query: &str) -> Query {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k), decode(v))
        })
        .collect()
}

fn decode(s: &str) -> String {
    let s = s.replace('+', " ");
    percent_encoding_decode(&s)
}

/// `%XX` decoding; malformed escapes stay as they are.
fn percent_encoding_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let Some(b) = std::str::from_utf8(&bytes[i + 1..i + 3])
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn status_response(error: &ApiError) -> Response {
    http_stub::json(error.code, "application/json", &error.status())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_map_to_resources() {
        let t = parse_path("/api/v1/namespaces/team-a/serviceaccounts/default/token").unwrap();
        assert_eq!(
            (
                t.rt.plural,
                t.namespace.as_deref(),
                t.name.as_deref(),
                t.subresource.as_deref()
            ),
            (
                "serviceaccounts",
                Some("team-a"),
                Some("default"),
                Some("token")
            )
        );
        let t = parse_path("/api/v1/namespaces/team-a").unwrap();
        assert_eq!(
            (t.rt.plural, t.name.as_deref()),
            ("namespaces", Some("team-a"))
        );
        let t = parse_path("/apis/coordination.k8s.io/v1/namespaces/x/leases").unwrap();
        assert_eq!(t.rt.kind, "Lease");
        assert_eq!(parse_path("/api/v1/secrets/x").unwrap_err().code, 404);
        assert_eq!(parse_path("/apis/nope/v1/things").unwrap_err().code, 404);
    }

    #[test]
    fn query_values_are_decoded() {
        let q = parse_query("labelSelector=a%3Db%2Cc+in+(x)&watch=1&bad=%zz");
        assert_eq!(q["labelSelector"], "a=b,c in (x)");
        assert_eq!(q["bad"], "%zz");
    }
}
