//! The one place that reads the wall clock. Everything else takes the time
//! as a parameter, so tests control it.

use std::time::{SystemTime, UNIX_EPOCH};

/// Seconds since the epoch, now.
#[allow(clippy::disallowed_methods)] // This module is the sanctioned reader.
pub(crate) fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Now, with sub-second precision, for Event timestamps.
#[allow(clippy::disallowed_methods)] // This module is the sanctioned reader.
pub(crate) fn timestamp() -> k8s_openapi::jiff::Timestamp {
    k8s_openapi::jiff::Timestamp::try_from(SystemTime::now())
        .unwrap_or(k8s_openapi::jiff::Timestamp::UNIX_EPOCH)
}
