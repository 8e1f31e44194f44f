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
