//! API errors and their `Status` bodies, as kube-apiserver writes them.

use serde_json::{Value, json};

/// A failed API call: the HTTP status, the `Status.reason` and a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status code (also `Status.code`).
    pub code: u16,
    /// `Status.reason`, like `Conflict` or `NotFound`.
    pub reason: &'static str,
    /// `Status.message`.
    pub message: String,
}

impl ApiError {
    /// A 404 for `plural` `name`.
    pub fn not_found(plural: &str, name: &str) -> Self {
        Self::new(404, "NotFound", format!("{plural} \"{name}\" not found"))
    }

    /// A 409 `AlreadyExists`.
    pub fn already_exists(plural: &str, name: &str) -> Self {
        Self::new(
            409,
            "AlreadyExists",
            format!("{plural} \"{name}\" already exists"),
        )
    }

    /// A 409 `Conflict` for a stale `resourceVersion` (the API's wording).
    pub fn stale(plural: &str, name: &str) -> Self {
        Self::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {plural} \"{name}\": the object has been \
                 modified; please apply your changes to the latest version and try again"
            ),
        )
    }

    /// A 409 `Conflict` for a delete whose precondition on `field` (`UID`
    /// or `ResourceVersion`) the object does not meet (the API's wording).
    pub fn precondition_failed(
        plural: &str,
        name: &str,
        field: &str,
        wanted: &str,
        actual: &str,
    ) -> Self {
        Self::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {plural} \"{name}\": Precondition failed: \
                 {field} in precondition: {wanted}, {field} in object meta: {actual}"
            ),
        )
    }

    /// A 400 `BadRequest`.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message)
    }

    /// A 422 `Invalid`.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(422, "Invalid", message)
    }

    /// A 410 `Expired` (a resource version older than the kept history).
    pub fn expired(message: impl Into<String>) -> Self {
        Self::new(410, "Expired", message)
    }

    /// Any status.
    pub fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            reason,
            message: message.into(),
        }
    }

    /// The `Status` object.
    pub fn status(&self) -> Value {
        json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        })
    }
}
