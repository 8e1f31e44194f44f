//! The one place the helper reads the wall clock. Everything else takes the
//! time as a parameter, so each decision sees one `now` and tests choose it.

/// A source of the current time, in seconds since the Unix epoch.
pub type Clock = dyn Fn() -> u64 + Sync;

/// The system clock; one set before 1970 reads as 0.
#[allow(clippy::disallowed_methods)] // The one reading of the wall clock.
pub fn system() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
