//! Children applied once, then left alone while nothing changes.
//!
//! A server-side apply of an unchanged object changes nothing, yet costs an
//! API call per child on every status tick. The controller records what it
//! applied (a digest of the object) and the child's version the API server
//! gave back. A child is applied again when the object it should be differs,
//! when the watched child's version differs (someone edited or deleted it),
//! or when the resync interval has passed (the only sign of change for a
//! child whose kind is not watched).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::Serialize;
use sha2::{Digest, Sha256};

/// The digest recorded for a child that should not exist (and was deleted).
pub const ABSENT: &str = "absent";

/// What the watch shows of a child now.
#[derive(Debug, Clone, PartialEq)]
pub enum Observed {
    /// The child's kind is watched; the child's version, `None` when it does
    /// not exist.
    Watched(Option<String>),
    /// The child's kind is not watched: only the resync interval catches
    /// changes made by others.
    NotWatched,
}

/// The version of a child that changes when its desired state is changed by
/// anyone: the generation where the kind has one (a Deployment's status
/// moves its resourceVersion with every pod, its generation only with its
/// spec), else the resourceVersion.
pub fn version_of(meta: &ObjectMeta) -> Option<String> {
    match meta.generation {
        Some(generation) => Some(format!("generation {generation}")),
        None => meta.resource_version.clone(),
    }
}

/// Digest of the object the controller would apply.
pub fn digest<K: Serialize>(child: &K) -> String {
    // Serialising plain Kubernetes types does not fail; were it to, an
    // empty digest never matches a record, so the child is applied.
    let bytes = serde_json::to_vec(child).unwrap_or_default();
    hex::encode(Sha256::digest(bytes))
}

#[derive(Debug, Clone, PartialEq)]
struct Record {
    digest: String,
    version: Option<String>,
    at: Instant,
}

/// Whether the child recorded as `record` is still what `digest` asks for.
fn up_to_date(
    record: Option<&Record>,
    digest: &str,
    observed: &Observed,
    now: Instant,
    resync: Duration,
) -> bool {
    let Some(record) = record else {
        return false;
    };
    if record.digest != digest || now.saturating_duration_since(record.at) >= resync {
        return false;
    }
    match observed {
        Observed::Watched(version) => *version == record.version,
        Observed::NotWatched => true,
    }
}

/// Key of a SpeculativeDeployment: namespace and name.
type OwnerKey = (String, String);
/// Key of one of its children: kind and name.
type ChildKey = (String, String);

/// What was last applied to each child, per owner.
#[derive(Debug)]
pub struct AppliedChildren {
    records: Mutex<HashMap<OwnerKey, HashMap<ChildKey, Record>>>,
    resync: Duration,
}

/// One child of one owner.
#[derive(Debug, Clone, Copy)]
pub struct Child<'a> {
    /// Namespace of the owner and the child.
    pub namespace: &'a str,
    /// Name of the owning SpeculativeDeployment.
    pub owner: &'a str,
    /// Kind of the child.
    pub kind: &'a str,
    /// Name of the child.
    pub name: &'a str,
}

impl AppliedChildren {
    /// Records that expire after `resync`, so that even a child whose kind
    /// is not watched is applied again now and then.
    pub fn new(resync: Duration) -> Self {
        Self {
            records: Mutex::default(),
            resync,
        }
    }

    fn records(&self) -> std::sync::MutexGuard<'_, HashMap<OwnerKey, HashMap<ChildKey, Record>>> {
        self.records.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether `child` must be written (applied, or deleted when `digest` is
    /// [`ABSENT`]) to become what `digest` describes.
    pub fn needs_write(&self, child: Child<'_>, digest: &str, observed: &Observed) -> bool {
        let records = self.records();
        let record = records
            .get(&(child.namespace.to_string(), child.owner.to_string()))
            .and_then(|children| children.get(&(child.kind.to_string(), child.name.to_string())));
        !up_to_date(record, digest, observed, Instant::now(), self.resync)
    }

    /// Record that `child` was written as `digest` and is now at `version`.
    pub fn record(&self, child: Child<'_>, digest: String, version: Option<String>) {
        self.records()
            .entry((child.namespace.to_string(), child.owner.to_string()))
            .or_default()
            .insert(
                (child.kind.to_string(), child.name.to_string()),
                Record {
                    digest,
                    version,
                    at: Instant::now(),
                },
            );
    }

    /// Forget an owner's children: the next reconcile writes them all, as it
    /// must after it failed halfway or the owner was deleted.
    pub fn forget(&self, namespace: &str, owner: &str) {
        self.records()
            .remove(&(namespace.to_string(), owner.to_string()));
    }

    /// The owners with records.
    pub fn owners(&self) -> Vec<(String, String)> {
        self.records().keys().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RESYNC: Duration = Duration::from_secs(300);

    fn record(digest: &str, version: Option<&str>, at: Instant) -> Record {
        Record {
            digest: digest.into(),
            version: version.map(Into::into),
            at,
        }
    }

    #[test]
    fn an_unchanged_child_at_the_recorded_version_is_not_written() {
        let now = Instant::now();
        let r = record("d1", Some("7"), now);
        let watched = Observed::Watched(Some("7".into()));
        assert!(up_to_date(Some(&r), "d1", &watched, now, RESYNC));
        assert!(up_to_date(
            Some(&r),
            "d1",
            &Observed::NotWatched,
            now,
            RESYNC
        ));
    }

    #[test]
    fn a_new_desired_object_an_edit_a_deletion_or_age_means_a_write() {
        let now = Instant::now();
        let r = record("d1", Some("7"), now);
        // Nothing recorded: this term never wrote it.
        assert!(!up_to_date(None, "d1", &Observed::NotWatched, now, RESYNC));
        // The spec changed.
        let watched = Observed::Watched(Some("7".into()));
        assert!(!up_to_date(Some(&r), "d2", &watched, now, RESYNC));
        // Someone else edited the child...
        let edited = Observed::Watched(Some("8".into()));
        assert!(!up_to_date(Some(&r), "d1", &edited, now, RESYNC));
        // ...or deleted it.
        assert!(!up_to_date(
            Some(&r),
            "d1",
            &Observed::Watched(None),
            now,
            RESYNC
        ));
        // The resync interval passed.
        let later = now + RESYNC;
        assert!(!up_to_date(
            Some(&r),
            "d1",
            &Observed::NotWatched,
            later,
            RESYNC
        ));
    }

    #[test]
    fn an_absent_child_stays_absent_until_it_appears() {
        let now = Instant::now();
        let deleted = record(ABSENT, None, now);
        assert!(up_to_date(
            Some(&deleted),
            ABSENT,
            &Observed::Watched(None),
            now,
            RESYNC
        ));
        let recreated = Observed::Watched(Some("3".into()));
        assert!(!up_to_date(Some(&deleted), ABSENT, &recreated, now, RESYNC));
    }

    #[test]
    fn the_generation_is_the_version_where_there_is_one() {
        let deployment = ObjectMeta {
            generation: Some(4),
            resource_version: Some("1234".into()),
            ..ObjectMeta::default()
        };
        assert_eq!(version_of(&deployment).as_deref(), Some("generation 4"));
        let configmap = ObjectMeta {
            resource_version: Some("1234".into()),
            ..ObjectMeta::default()
        };
        assert_eq!(version_of(&configmap).as_deref(), Some("1234"));
    }

    #[test]
    fn records_are_per_owner_and_forgotten_with_it() {
        let applied = AppliedChildren::new(RESYNC);
        let child = Child {
            namespace: "llm",
            owner: "qwen",
            kind: "Service",
            name: "qwen",
        };
        let observed = Observed::Watched(Some("5".into()));
        assert!(applied.needs_write(child, "d", &observed));
        applied.record(child, "d".into(), Some("5".into()));
        assert!(!applied.needs_write(child, "d", &observed));
        let other = Child {
            owner: "other",
            ..child
        };
        assert!(applied.needs_write(other, "d", &observed));
        assert_eq!(applied.owners(), vec![("llm".into(), "qwen".into())]);
        applied.forget("llm", "qwen");
        assert!(applied.needs_write(child, "d", &observed));
    }
}
