//! The one place that reads the wall clock.
//!
//! Everything else takes `now` as an argument, read once per decision, so a
//! request sees one instant throughout and tests can fix time.

use std::time::SystemTime;

/// The current wall-clock time.
///
/// Debug builds shift it by `REGAUTH_TEST_CLOCK_OFFSET` seconds (negative
/// for a clock behind), read once, so that end-to-end tests can run a
/// replica whose clock is wrong; release builds never read it.
#[allow(clippy::disallowed_methods)] // This module is the sanctioned reader.
pub fn now() -> SystemTime {
    let now = SystemTime::now();
    #[cfg(debug_assertions)]
    let now = test_offset::shifted(now);
    now
}

/// Seconds since the Unix epoch; 0 for times before it.
pub fn unix(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(debug_assertions)]
mod test_offset {
    use std::sync::OnceLock;
    use std::time::{Duration, SystemTime};

    /// The variable a debug build's clock is shifted by.
    const VARIABLE: &str = "REGAUTH_TEST_CLOCK_OFFSET";

    pub(super) fn shifted(now: SystemTime) -> SystemTime {
        static OFFSET: OnceLock<i64> = OnceLock::new();
        let offset = *OFFSET.get_or_init(|| {
            std::env::var(VARIABLE)
                .ok()
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0)
        });
        let by = Duration::from_secs(offset.unsigned_abs());
        if offset >= 0 {
            now.checked_add(by).unwrap_or(now)
        } else {
            now.checked_sub(by).unwrap_or(now)
        }
    }
}
