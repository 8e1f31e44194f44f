//! The `limits` section: request size, time and abuse bounds.

use super::check::Check;
use super::file::LimitsEntry;
use crate::settings::Limits;

/// The limits, defaults filled in.
pub(super) fn limits(l: &LimitsEntry, c: &mut Check) -> Limits {
    let mut limits = Limits::default();
    if let Some(v) = &l.max_body_bytes {
        if v.value < 1024 {
            c.fail("limits.max_body_bytes", v, "must be at least 1024");
        }
        limits.max_body_bytes = v.value;
    }
    if let Some(v) = &l.max_scopes {
        if v.value == 0 {
            c.fail("limits.max_scopes", v, "must be at least 1");
        }
        limits.max_scopes = v.value;
    }
    limits.request_timeout = c.duration(
        "limits.request_timeout",
        &l.request_timeout,
        limits.request_timeout,
        false,
    );
    limits.header_read_timeout = c.duration(
        "limits.header_read_timeout",
        &l.header_read_timeout,
        limits.header_read_timeout,
        false,
    );
    limits.idle_timeout = c.duration(
        "limits.idle_timeout",
        &l.idle_timeout,
        limits.idle_timeout,
        false,
    );
    limits.drain_timeout = c.duration(
        "limits.drain_timeout",
        &l.drain_timeout,
        limits.drain_timeout,
        true,
    );
    limits.max_backoff = c.duration(
        "limits.max_backoff",
        &l.max_backoff,
        limits.max_backoff,
        false,
    );
    if let Some(v) = &l.max_header_bytes {
        if v.value < 8192 {
            c.fail("limits.max_header_bytes", v, "must be at least 8192");
        }
        limits.max_header_bytes = v.value;
    }
    if let Some(v) = &l.max_connections {
        if v.value == 0 {
            c.fail("limits.max_connections", v, "must be at least 1");
        }
        limits.max_connections = v.value;
    }
    if let Some(v) = &l.auth_failures_before_backoff {
        if v.value == 0 {
            c.fail(
                "limits.auth_failures_before_backoff",
                v,
                "must be at least 1",
            );
        }
        limits.auth_failures_before_backoff = v.value;
    }

    if let Some(v) = &l.max_concurrent_password_checks {
        if v.value == 0 {
            c.fail(
                "limits.max_concurrent_password_checks",
                v,
                "must be at least 1",
            );
        }
        limits.max_concurrent_password_checks = v.value;
    }
    limits.password_check_queue_timeout = c.duration(
        "limits.password_check_queue_timeout",
        &l.password_check_queue_timeout,
        limits.password_check_queue_timeout,
        false,
    );
    limits.shared_state_timeout = c.duration(
        "limits.shared_state_timeout",
        &l.shared_state_timeout,
        limits.shared_state_timeout,
        false,
    );
    limits
}
