//! ServiceAccount tokens, requested from the API (`TokenRequest`) and kept
//! in memory while more than half of their life is left, so retries of a
//! failing exchange reuse one token instead of asking the API for a new
//! one each time.

use std::collections::HashMap;
use std::sync::Mutex;

use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::ResourceExt;
use kube::api::{Api, PostParams};
use kube::runtime::reflector::ObjectRef;

use crate::config::Settings;
use crate::exchange::Secret as Token;
use crate::pull_secret::MANAGER;

/// A token and its lifetime (seconds since the epoch).
#[derive(Debug, Clone)]
struct Held {
    /// The ServiceAccount it was issued for: a recreated one is another.
    uid: Option<String>,
    token: Token,
    issued_at: u64,
    expires_at: u64,
}

impl Held {
    /// Still more than half of its life left at `now`.
    fn reusable(&self, uid: Option<&str>, now: u64) -> bool {
        let half = self.expires_at.saturating_sub(self.issued_at) / 2;
        self.uid.as_deref() == uid && now < self.issued_at.saturating_add(half)
    }
}

/// The tokens this replica holds, per ServiceAccount.
#[derive(Debug, Default)]
pub(crate) struct Tokens {
    held: Mutex<HashMap<ObjectRef<ServiceAccount>, Held>>,
}

impl Tokens {
    /// A token for `sa`: the one held while reusable, else a new one from
    /// the API. `now` is seconds since the epoch.
    pub(crate) async fn get(
        &self,
        client: &kube::Client,
        settings: &Settings,
        sa: &ServiceAccount,
        now: u64,
    ) -> Result<Token, kube::Error> {
        let key = ObjectRef::from_obj(sa);
        let uid = sa.uid();
        if let Some(held) = self
            .lock()
            .get(&key)
            .filter(|h| h.reusable(uid.as_deref(), now))
        {
            return Ok(held.token.clone());
        }
        let namespace = sa.namespace().unwrap_or_default();
        let api: Api<ServiceAccount> = Api::namespaced(client.clone(), &namespace);
        let requested = settings.token_expiration.as_secs();
        let request = TokenRequest {
            spec: Some(TokenRequestSpec {
                audiences: Some(vec![settings.audience.clone()]),
                expiration_seconds: i64::try_from(requested).ok(),
                ..TokenRequestSpec::default()
            }),
            ..TokenRequest::default()
        };
        let params = PostParams {
            field_manager: Some(MANAGER.to_owned()),
            ..PostParams::default()
        };
        let reply = api
            .create_token_request(&sa.name_any(), &params, &request)
            .await?;
        let status = reply.status.unwrap_or_default();
        // The API may shorten the lifetime; never assume a longer one.
        let expires_at = status
            .expiration_timestamp
            .and_then(|t| u64::try_from(t.0.as_second()).ok())
            .unwrap_or_default()
            .min(now.saturating_add(requested));
        let token = Token::new(status.token.unwrap_or_default());
        self.lock().insert(
            key,
            Held {
                uid,
                token: token.clone(),
                issued_at: now,
                expires_at,
            },
        );
        Ok(token)
    }

    /// Keeps only the tokens of ServiceAccounts `keep` says exist.
    pub(crate) fn retain(&self, keep: impl Fn(&ObjectRef<ServiceAccount>) -> bool) {
        self.lock().retain(|sa, _| keep(sa));
    }

    /// Drops the token held for `sa` (it was refused, or `sa` left).
    pub(crate) fn forget(&self, sa: &ObjectRef<ServiceAccount>) {
        self.lock().remove(sa);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ObjectRef<ServiceAccount>, Held>> {
        self.held
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_reused_until_half_its_life_is_gone() {
        let held = Held {
            uid: Some("u1".into()),
            token: Token::new("t"),
            issued_at: 1000,
            expires_at: 1600,
        };
        assert!(held.reusable(Some("u1"), 1000));
        assert!(held.reusable(Some("u1"), 1299));
        assert!(!held.reusable(Some("u1"), 1300));
        assert!(!held.reusable(Some("u2"), 1000), "another ServiceAccount");
        let broken = Held {
            expires_at: 0,
            ..held
        };
        assert!(!broken.reusable(Some("u1"), 1000));
    }
}
