//! The resource types the stub serves, and how a written object is checked:
//! it must decode as its k8s-openapi type (what the real API's decoder
//! checks), and a few API validations the controller depends on are applied.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Event as CoreEvent, Namespace, Secret, ServiceAccount};
use k8s_openapi::api::events::v1::Event;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

/// One served resource type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ResourceType {
    /// API group (`""` for the core group).
    pub group: &'static str,
    /// API version.
    pub version: &'static str,
    /// URL plural, like `serviceaccounts`.
    pub plural: &'static str,
    /// Kind, like `ServiceAccount`.
    pub kind: &'static str,
    /// Whether objects live in a namespace.
    pub namespaced: bool,
    /// Short names kubectl may use.
    pub short_names: &'static [&'static str],
}

impl ResourceType {
    /// `v1` or `GROUP/VERSION`.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_owned()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// Decodes `object` as this type and encodes it back: unknown fields are
    /// dropped (as the API does without strict field validation) and a value
    /// of the wrong type is an error.
    pub fn normalize(&self, object: &Value) -> Result<Value, String> {
        let mut value = match self.kind {
            "Namespace" => round_trip::<Namespace>(object),
            "ServiceAccount" => round_trip::<ServiceAccount>(object),
            "Secret" => round_trip::<Secret>(object).and_then(|v| secret_rules(&v)),
            "Lease" => round_trip::<Lease>(object),
            "Event" if self.group.is_empty() => round_trip::<CoreEvent>(object),
            "Event" => round_trip::<Event>(object),
            other => Err(format!("kind {other} is not served")),
        }?;
        value["apiVersion"] = self.api_version().into();
        value["kind"] = self.kind.into();
        Ok(value)
    }

    /// What the API validates on a write beyond the type (`old` is the
    /// stored object on an update): the message of a 422 `Invalid`.
    pub fn validate(&self, object: &Value, old: Option<&Value>) -> Result<(), String> {
        if self.kind == "Event" && self.group == "events.k8s.io" {
            return event_rules(object, old);
        }
        Ok(())
    }
}

/// Limits of `events.k8s.io/v1` Events, as the API's strict validation
/// counts them: in bytes.
const EVENT_NOTE_BYTES: usize = 1024;
const EVENT_FIELD_BYTES: usize = 128;

/// The API's validation of `events.k8s.io/v1` Events on create and update.
fn event_rules(event: &Value, old: Option<&Value>) -> Result<(), String> {
    let mut problems = Vec::new();
    let text = |field: &str| event[field].as_str().unwrap_or_default();
    if text("note").len() > EVENT_NOTE_BYTES {
        problems.push(format!(
            "note: Too long: may not be more than {EVENT_NOTE_BYTES} bytes"
        ));
    }
    for field in ["reason", "action", "reportingInstance"] {
        if text(field).len() > EVENT_FIELD_BYTES {
            problems.push(format!(
                "{field}: Too long: may not be more than {EVENT_FIELD_BYTES} bytes"
            ));
        }
    }
    for field in ["reason", "action", "reportingController", "eventTime"] {
        if event[field].is_null() || event[field] == "" {
            problems.push(format!("{field}: Required value"));
        }
    }
    if !matches!(text("type"), "Normal" | "Warning") {
        problems.push(format!(
            "type: Unsupported value: {:?}: supported values: \"Normal\", \"Warning\"",
            text("type")
        ));
    }
    if !event["series"].is_null() {
        if event["series"]["count"].as_i64().is_none_or(|c| c < 2) {
            problems.push("series.count: Invalid value: must be at least 2".to_owned());
        }
        if event["series"]["lastObservedTime"].is_null() {
            problems.push("series.lastObservedTime: Required value".to_owned());
        }
    }
    if let Some(old) = old {
        for field in [
            "note",
            "reason",
            "type",
            "action",
            "regarding",
            "eventTime",
            "reportingController",
            "reportingInstance",
        ] {
            if event[field] != old[field] {
                problems.push(format!("{field}: Invalid value: field is immutable"));
            }
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join(", "))
    }
}

/// Every resource the stub serves.
pub const RESOURCES: &[ResourceType] = &[
    ResourceType {
        group: "",
        version: "v1",
        plural: "namespaces",
        kind: "Namespace",
        namespaced: false,
        short_names: &["ns"],
    },
    ResourceType {
        group: "",
        version: "v1",
        plural: "serviceaccounts",
        kind: "ServiceAccount",
        namespaced: true,
        short_names: &["sa"],
    },
    ResourceType {
        group: "",
        version: "v1",
        plural: "secrets",
        kind: "Secret",
        namespaced: true,
        short_names: &[],
    },
    ResourceType {
        group: "",
        version: "v1",
        plural: "events",
        kind: "Event",
        namespaced: true,
        short_names: &["ev"],
    },
    ResourceType {
        group: "events.k8s.io",
        version: "v1",
        plural: "events",
        kind: "Event",
        namespaced: true,
        short_names: &["ev"],
    },
    ResourceType {
        group: "coordination.k8s.io",
        version: "v1",
        plural: "leases",
        kind: "Lease",
        namespaced: true,
        short_names: &[],
    },
];

/// The served type at `group/version/plural`.
pub fn find(group: &str, version: &str, plural: &str) -> Option<ResourceType> {
    RESOURCES
        .iter()
        .find(|r| r.group == group && r.version == version && r.plural == plural)
        .copied()
}

/// The served type of a k8s-openapi type.
pub fn of<K: k8s_openapi::Resource>() -> ResourceType {
    find(K::GROUP, K::VERSION, K::URL_PATH_SEGMENT)
        .unwrap_or_else(|| panic!("the Kubernetes API stub does not serve {}", K::KIND))
}

fn round_trip<K: Serialize + DeserializeOwned>(object: &Value) -> Result<Value, String> {
    let typed: K = serde_json::from_value(object.clone()).map_err(|e| e.to_string())?;
    serde_json::to_value(&typed).map_err(|e| e.to_string())
}

/// What the API does to Secrets on write: `stringData` is merged into
/// `data` and dropped, `type` defaults to `Opaque`, and a
/// `kubernetes.io/dockerconfigjson` Secret must hold a JSON
/// `.dockerconfigjson`.
fn secret_rules(secret: &Value) -> Result<Value, String> {
    let mut secret = secret.clone();
    if let Some(Value::Object(strings)) = secret.get("stringData").cloned() {
        for (key, value) in strings {
            let text = value.as_str().unwrap_or_default();
            secret["data"][&key] = STANDARD.encode(text).into();
        }
        if let Some(object) = secret.as_object_mut() {
            object.remove("stringData");
        }
    }
    if secret.get("type").is_none_or(Value::is_null) {
        secret["type"] = "Opaque".into();
    }
    if secret["type"] == "kubernetes.io/dockerconfigjson" {
        let encoded = secret["data"][".dockerconfigjson"]
            .as_str()
            .ok_or("data[.dockerconfigjson]: Required value")?;
        let bytes = STANDARD
            .decode(encoded)
            .map_err(|e| format!("data[.dockerconfigjson]: not base64: {e}"))?;
        serde_json::from_slice::<Value>(&bytes)
            .map_err(|e| format!("data[.dockerconfigjson]: Invalid value: invalid JSON: {e}"))?;
    }
    Ok(secret)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn secrets_fold_string_data_and_check_docker_config() {
        let secrets = of::<Secret>();
        let folded = secrets
            .normalize(&json!({"metadata": {"name": "s"}, "stringData": {"k": "v"}}))
            .unwrap();
        assert_eq!(folded["data"]["k"], "dg==");
        assert_eq!(folded["type"], "Opaque");
        assert!(folded.get("stringData").is_none());
        let bad = json!({"metadata": {"name": "s"}, "type": "kubernetes.io/dockerconfigjson",
            "data": {".dockerconfigjson": STANDARD.encode("{not json")}});
        assert!(
            secrets
                .normalize(&bad)
                .unwrap_err()
                .contains("invalid JSON")
        );
    }

    #[test]
    fn event_notes_are_limited_in_bytes_and_immutable() {
        let events = find("events.k8s.io", "v1", "events").unwrap();
        let event = |note: &str| {
            json!({"metadata": {"name": "e"}, "eventTime": "2026-01-01T00:00:00.000000Z",
                "reason": "RefreshFailed", "action": "Refresh", "type": "Warning",
                "reportingController": "ctl", "reportingInstance": "ctl-1", "note": note})
        };
        assert!(events.validate(&event(&"x".repeat(1024)), None).is_ok());
        // 1022 ASCII bytes and one 3-byte character: 1025 bytes, 1023 characters.
        let over = format!("{}…", "x".repeat(1022));
        let err = events.validate(&event(&over), None).unwrap_err();
        assert!(err.contains("note: Too long"), "{err}");
        let err = events
            .validate(&event("second cause"), Some(&event("first cause")))
            .unwrap_err();
        assert!(
            err.contains("note: Invalid value: field is immutable"),
            "{err}"
        );
        let mut no_type = event("x");
        no_type["type"] = "Bad".into();
        assert!(events.validate(&no_type, None).is_err());
    }

    #[test]
    fn wrong_field_types_are_refused() {
        let err = of::<Namespace>()
            .normalize(&json!({"metadata": {"name": 5}}))
            .unwrap_err();
        assert!(err.contains("invalid type"), "{err}");
    }
}
