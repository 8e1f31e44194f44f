//! When a credential is refreshed: `refresh_threshold` before it expires,
//! or at half its life; but never before half its life, and never sooner
//! than [`MIN_REFRESH_AGE`] after this replica obtained it.
//!
//! Without those two floors a threshold as long as the credential lives
//! (the shipped 20 min against credentials of 15 min), or a token server
//! whose credentials live a second, made every reconcile due at once:
//! each refresh wrote the Secret, whose watch event started the next
//! reconcile, thousands of exchanges in seconds for one ServiceAccount.
//! Half the life is the credential helper's rule too.

use std::time::Duration;

use crate::pull_secret::Lifetime;

/// No credential is refreshed sooner than this after it was obtained,
/// whatever the config or the token server's lifetimes say.
pub(crate) const MIN_REFRESH_AGE: Duration = Duration::from_secs(10);

/// Why a refresh point was moved later than the config asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Clamp {
    /// `refresh_threshold` is at least half the credential's life.
    Threshold,
    /// The credential lives less than twice [`MIN_REFRESH_AGE`] (or was
    /// issued long before it arrived).
    ShortLived,
}

/// When to refresh one credential, and whether the wish was overruled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RefreshPoint {
    /// Seconds since the epoch.
    pub at: u64,
    pub clamped: Option<Clamp>,
}

/// The refresh point of a credential living `lifetime`, obtained at
/// `obtained_at` (this replica's clock; seconds since the epoch), for a
/// `threshold` (`None`: half its life).
pub(crate) fn refresh_at(
    lifetime: Lifetime,
    threshold: Option<Duration>,
    obtained_at: u64,
) -> RefreshPoint {
    let life = lifetime.expires_at.saturating_sub(lifetime.issued_at);
    let half = lifetime.issued_at.saturating_add(life / 2);
    let wanted = threshold.map_or(half, |t| lifetime.expires_at.saturating_sub(t.as_secs()));
    let floor = obtained_at.saturating_add(MIN_REFRESH_AGE.as_secs());
    let at = wanted.max(half).max(floor);
    let clamped = if wanted < half {
        Some(Clamp::Threshold)
    } else if wanted < floor {
        Some(Clamp::ShortLived)
    } else {
        None
    };
    RefreshPoint { at, clamped }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: Lifetime = Lifetime {
        issued_at: 1000,
        expires_at: 4600,
    };

    #[test]
    fn refresh_happens_at_half_life_or_threshold_before_expiry() {
        assert_eq!(
            refresh_at(HOUR, None, 1000),
            RefreshPoint {
                at: 2800,
                clamped: None
            }
        );
        assert_eq!(
            refresh_at(HOUR, Some(Duration::from_secs(600)), 1000),
            RefreshPoint {
                at: 4000,
                clamped: None
            }
        );
    }

    /// The shipped 20 min against 15 min credentials, or any threshold
    /// longer than the credential lives: half its life, and said so.
    #[test]
    fn a_threshold_of_half_the_life_or_more_is_held_to_half_the_life() {
        let quarter_hour = Lifetime {
            issued_at: 1000,
            expires_at: 1900,
        };
        for threshold in [1200, 900, 451, 86_400] {
            assert_eq!(
                refresh_at(quarter_hour, Some(Duration::from_secs(threshold)), 1000),
                RefreshPoint {
                    at: 1450,
                    clamped: Some(Clamp::Threshold)
                },
                "{threshold}"
            );
        }
        assert_eq!(
            refresh_at(quarter_hour, Some(Duration::from_secs(450)), 1000).clamped,
            None
        );
    }

    /// Credentials of 2 s (or ones issued long before they arrived) are
    /// refreshed no sooner than `MIN_REFRESH_AGE` after they arrived.
    #[test]
    fn no_credential_is_refreshed_sooner_than_the_least_age() {
        let two_seconds = Lifetime {
            issued_at: 1000,
            expires_at: 1002,
        };
        assert_eq!(
            refresh_at(two_seconds, None, 1000),
            RefreshPoint {
                at: 1010,
                clamped: Some(Clamp::ShortLived)
            }
        );
        // Issued an hour before this replica got it (a skewed clock).
        assert_eq!(refresh_at(HOUR, None, 9000).at, 9010);
        // Nothing overflows or underflows.
        let broken = Lifetime {
            issued_at: u64::MAX,
            expires_at: 0,
        };
        assert_eq!(
            refresh_at(broken, Some(Duration::MAX), u64::MAX).at,
            u64::MAX
        );
        let huge = Lifetime {
            issued_at: u64::MAX - 1,
            expires_at: u64::MAX,
        };
        assert_eq!(refresh_at(huge, None, 0).at, u64::MAX - 1);
    }
}
