//! The one place that reads the wall clock.
//!
//! Everything else takes `now` as an argument, read once per decision, so a
//! request sees one instant throughout and tests can fix time.

use std::time::SystemTime;

/// The current wall-clock time.
#[allow(clippy::disallowed_methods)] // This module is the sanctioned reader.
pub fn now() -> SystemTime {
    SystemTime::now()
}

/// Seconds since the Unix epoch; 0 for times before it.
pub fn unix(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
