//! Warning Events on ServiceAccounts (`events.k8s.io/v1`), written with the
//! controller's field manager.
//!
//! Why not kube-rs's `Recorder`: it writes without a field manager, and it
//! folds every Event with the same reason into one series, whose note the
//! API keeps from the first occurrence (an Event's `note` is immutable once
//! written). A failure of another kind would then only raise the count of
//! an Event that names the first cause. Here an Event is folded into a
//! series only when its note is the same, so each new cause gets an Event
//! that names it.

use std::collections::HashMap;
use std::sync::Mutex;

use k8s_openapi::api::core::v1::{ObjectReference, ServiceAccount};
use k8s_openapi::api::events::v1::{Event, EventSeries};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::{Resource, ResourceExt};
use serde_json::json;

use crate::pull_secret::MANAGER;

/// The API's limit on `note`, in bytes.
pub(crate) const MAX_NOTE_BYTES: usize = 1024;
/// The API's limit on `reportingInstance`, in bytes.
const MAX_INSTANCE_BYTES: usize = 128;
/// What marks a cut note.
const ELLIPSIS: &str = "…";
/// An Event is continued as a series only this long after it was last seen,
/// as client-go's recorder does.
const SERIES_WINDOW_SECONDS: u64 = 6 * 60;
/// The most Events remembered for series; the oldest are forgotten first.
const MAX_REMEMBERED: usize = 4096;

/// Which Event an occurrence belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    namespace: String,
    uid: String,
    reason: &'static str,
    note: String,
}

/// An Event already written, for its series.
#[derive(Debug, Clone)]
struct Written {
    name: String,
    count: i32,
    last_seen: u64,
}

/// Writes Warning Events for one controller instance.
pub(crate) struct Events {
    client: kube::Client,
    instance: String,
    written: Mutex<HashMap<Key, Written>>,
}

impl Events {
    /// Events reported by `instance` (this replica's name).
    pub(crate) fn new(client: kube::Client, instance: &str) -> Self {
        Self {
            client,
            instance: truncate(instance, MAX_INSTANCE_BYTES, ""),
            written: Mutex::new(HashMap::new()),
        }
    }

    /// A Warning Event with `reason` on `sa`; `note` is cut to the API's
    /// limit. The same note again within the series window raises the
    /// count of the Event already written.
    pub(crate) async fn warn(
        &self,
        sa: &ServiceAccount,
        reason: &'static str,
        action: &'static str,
        note: &str,
        now: Timestamp,
    ) -> Result<(), kube::Error> {
        let note = truncate(note, MAX_NOTE_BYTES, ELLIPSIS);
        let namespace = sa.namespace().unwrap_or_default();
        let key = Key {
            namespace: namespace.clone(),
            uid: sa.uid().unwrap_or_default(),
            reason,
            note: note.clone(),
        };
        let seconds = u64::try_from(now.as_second()).unwrap_or_default();
        let previous = {
            let mut written = self.lock();
            written.retain(|_, w| w.last_seen.saturating_add(SERIES_WINDOW_SECONDS) > seconds);
            written.get(&key).cloned()
        };
        let api: Api<Event> = Api::namespaced(self.client.clone(), &namespace);
        let continued = match previous {
            Some(mut known) => {
                known.count = known.count.saturating_add(1);
                known.last_seen = seconds;
                let series = EventSeries {
                    count: known.count,
                    last_observed_time: MicroTime(now),
                };
                let params = PatchParams {
                    field_manager: Some(MANAGER.to_owned()),
                    ..PatchParams::default()
                };
                match api
                    .patch(
                        &known.name,
                        &params,
                        &Patch::Merge(json!({"series": series})),
                    )
                    .await
                {
                    Ok(_) => Some(known),
                    // Gone (Events expire, or someone deleted it): start anew.
                    Err(kube::Error::Api(s)) if s.code == 404 => None,
                    Err(e) => return Err(e),
                }
            }
            None => None,
        };
        let record = match continued {
            Some(known) => known,
            None => {
                let event = self.event(sa, reason, action, &note, now);
                let params = PostParams {
                    field_manager: Some(MANAGER.to_owned()),
                    ..PostParams::default()
                };
                let created = api.create(&params, &event).await?;
                Written {
                    name: created.name_any(),
                    count: 1,
                    last_seen: seconds,
                }
            }
        };
        let mut written = self.lock();
        if written.len() >= MAX_REMEMBERED
            && !written.contains_key(&key)
            && let Some(oldest) = written
                .iter()
                .min_by_key(|(_, w)| w.last_seen)
                .map(|(k, _)| k.clone())
        {
            written.remove(&oldest);
        }
        written.insert(key, record);
        Ok(())
    }

    fn event(
        &self,
        sa: &ServiceAccount,
        reason: &str,
        action: &str,
        note: &str,
        now: Timestamp,
    ) -> Event {
        let regarding: ObjectReference = sa.object_ref(&());
        Event {
            metadata: ObjectMeta {
                name: Some(event_name(&sa.name_any(), now)),
                namespace: sa.namespace(),
                ..ObjectMeta::default()
            },
            event_time: Some(MicroTime(now)),
            action: Some(action.to_owned()),
            reason: Some(reason.to_owned()),
            note: Some(note.to_owned()),
            regarding: Some(regarding),
            reporting_controller: Some(MANAGER.to_owned()),
            reporting_instance: Some(self.instance.clone()),
            type_: Some("Warning".to_owned()),
            ..Event::default()
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Written>> {
        self.written
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// `NAME.HEXNANOS`, as client-go names Events, within the 253 bytes of a
/// name.
fn event_name(object: &str, now: Timestamp) -> String {
    let suffix = format!(".{:x}", now.as_nanosecond());
    let mut stem = truncate(object, 253 - suffix.len(), "");
    while stem.ends_with(['-', '.']) {
        stem.pop();
    }
    format!("{stem}{suffix}")
}

/// `text` cut to at most `max` bytes on a character boundary, `marker`
/// included when it was cut.
pub(crate) fn truncate(text: &str, max: usize, marker: &str) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max.saturating_sub(marker.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{marker}", &text[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notes_are_cut_to_the_byte_limit_on_a_character_boundary() {
        assert_eq!(truncate("abc", 5, ELLIPSIS), "abc");
        let long = "é".repeat(1500);
        let cut = truncate(&long, MAX_NOTE_BYTES, ELLIPSIS);
        assert!(cut.len() <= MAX_NOTE_BYTES, "{}", cut.len());
        assert!(cut.ends_with(ELLIPSIS));
        let ascii = truncate(&"x".repeat(3000), MAX_NOTE_BYTES, ELLIPSIS);
        assert_eq!(ascii.len(), MAX_NOTE_BYTES);
        assert_eq!(truncate("ééé", 5, ELLIPSIS), "é…");
    }

    #[test]
    fn event_names_fit_and_end_alphanumeric() {
        let now = Timestamp::from_second(1_700_000_000).unwrap();
        let name = event_name(&format!("{}-.{}", "a".repeat(240), "b"), now);
        assert!(name.len() <= 253, "{}", name.len());
        assert!(!name.contains("-."), "{name}");
        assert_eq!(
            event_name("default", now),
            format!("default.{:x}", now.as_nanosecond())
        );
    }
}
