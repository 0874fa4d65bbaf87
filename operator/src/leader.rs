//! Leader election through a `coordination.k8s.io/v1` Lease, so that several
//! operator replicas can run and only one reconciles. Optimistic concurrency
//! (the Lease's resourceVersion) decides races; a holder that stops renewing
//! loses the Lease once it expires. Expiry is judged on this replica's own
//! clock, from when it last saw the Lease change (as client-go does), never
//! by comparing the holder's `renewTime` with the local time: clocks of two
//! nodes differ.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, PostParams};
use kube::Client;

/// Settings of the election, read once from the command line.
#[derive(Debug, Clone)]
pub struct LeaseSettings {
    /// Name of the Lease.
    pub name: String,
    /// Its namespace.
    pub namespace: String,
    /// This replica's identity (its pod name).
    pub identity: String,
    /// How long a Lease stays valid without renewal.
    pub duration: Duration,
    /// How often the holder renews, and others retry.
    pub retry_period: Duration,
}

/// Whether this replica holds the Lease after a try.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Leadership {
    /// This replica holds the Lease.
    Leading,
    /// Another replica holds a valid Lease.
    Following,
}

/// Acquires and renews the Lease.
pub struct LeaderElector {
    api: Api<Lease>,
    settings: LeaseSettings,
    /// The other holder's Lease as last seen, and when it was first seen so.
    observed: Mutex<Option<Observed>>,
}

/// A Lease record as seen by this replica, on this replica's clock.
#[derive(Debug, Clone, PartialEq)]
pub struct Observed {
    /// What identifies one renewal: holder, renew time and duration.
    record: (String, Option<MicroTime>, Option<i32>),
    /// When this replica first saw that record.
    seen_at: Instant,
}

impl Observed {
    /// `previous` kept if `spec` is the record it saw, else `spec` seen `now`.
    pub fn update(previous: Option<&Observed>, spec: &LeaseSpec, now: Instant) -> Observed {
        let record = (
            spec.holder_identity.clone().unwrap_or_default(),
            spec.renew_time.clone(),
            spec.lease_duration_seconds,
        );
        match previous {
            Some(p) if p.record == record => p.clone(),
            _ => Observed {
                record,
                seen_at: now,
            },
        }
    }

    /// Whether the holder has let the Lease lapse by `now`: no renewal seen
    /// for the Lease's duration.
    pub fn expired(&self, now: Instant) -> bool {
        let duration = Duration::from_secs(self.record.2.unwrap_or(0).max(0).unsigned_abs().into());
        now.saturating_duration_since(self.seen_at) > duration
    }
}

fn now() -> jiff::Timestamp {
    jiff::Timestamp::now()
}

impl LeaderElector {
    /// An elector for `settings`.
    pub fn new(client: Client, settings: LeaseSettings) -> Self {
        Self {
            api: Api::namespaced(client, &settings.namespace),
            settings,
            observed: Mutex::default(),
        }
    }

    /// The settings.
    pub fn settings(&self) -> &LeaseSettings {
        &self.settings
    }

    fn spec(&self, acquired: MicroTime, transitions: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(self.settings.identity.clone()),
            lease_duration_seconds: Some(
                self.settings
                    .duration
                    .as_secs()
                    .try_into()
                    .unwrap_or(i32::MAX),
            ),
            acquire_time: Some(acquired),
            renew_time: Some(MicroTime(now())),
            lease_transitions: Some(transitions),
            ..LeaseSpec::default()
        }
    }

    /// Acquire the Lease if it is free or expired, renew it if held. Errors
    /// are transport errors; losing a race is `Following`.
    pub async fn try_acquire_or_renew(&self) -> Result<Leadership, kube::Error> {
        let name = &self.settings.name;
        let Some(mut lease) = self.api.get_opt(name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(name.clone()),
                    namespace: Some(self.settings.namespace.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(self.spec(MicroTime(now()), 0)),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(Leadership::Leading),
                Err(kube::Error::Api(s)) if s.is_already_exists() || s.is_conflict() => {
                    Ok(Leadership::Following)
                }
                Err(e) => Err(e),
            };
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.as_deref().unwrap_or_default();
        let ours = holder == self.settings.identity;
        let expired = {
            let mut observed = self.observed.lock().unwrap_or_else(|p| p.into_inner());
            let seen = Observed::update(observed.as_ref(), &spec, Instant::now());
            let expired = seen.expired(Instant::now());
            *observed = Some(seen);
            expired
        };
        if !ours && !holder.is_empty() && !expired {
            return Ok(Leadership::Following);
        }
        let (acquired, transitions) = if ours {
            (
                spec.acquire_time.clone().unwrap_or(MicroTime(now())),
                spec.lease_transitions.unwrap_or(0),
            )
        } else {
            (MicroTime(now()), spec.lease_transitions.unwrap_or(0) + 1)
        };
        lease.spec = Some(self.spec(acquired, transitions));
        // replace carries the resourceVersion we read: a concurrent writer
        // makes this a conflict instead of two leaders.
        match self.api.replace(name, &PostParams::default(), &lease).await {
            Ok(_) => Ok(Leadership::Leading),
            Err(kube::Error::Api(s)) if s.is_conflict() => Ok(Leadership::Following),
            Err(e) => Err(e),
        }
    }

    /// Give the Lease up so that another replica takes over at once.
    pub async fn release(&self) -> Result<(), kube::Error> {
        let Some(mut lease) = self.api.get_opt(&self.settings.name).await? else {
            return Ok(());
        };
        let Some(spec) = lease.spec.as_mut() else {
            return Ok(());
        };
        if spec.holder_identity.as_deref() != Some(self.settings.identity.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        match self
            .api
            .replace(&self.settings.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.is_conflict() => Ok(()),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(holder: &str, renewed: i64) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(holder.into()),
            lease_duration_seconds: Some(15),
            renew_time: Some(MicroTime(jiff::Timestamp::from_second(renewed).unwrap())),
            ..LeaseSpec::default()
        }
    }

    #[test]
    fn a_lease_expires_a_duration_after_it_was_last_seen_renewed() {
        let start = Instant::now();
        let at = |s: u64| start + Duration::from_secs(s);
        // A renew time far behind this clock (the holder's clock is behind)
        // is not an expired Lease: only not seeing it change is.
        let seen = Observed::update(None, &spec("a", 1_000), at(0));
        assert!(!seen.expired(at(10)));
        assert!(seen.expired(at(16)));
        // A renewal seen at 12 restarts the count; the same record does not.
        let renewed = Observed::update(Some(&seen), &spec("a", 1_003), at(12));
        assert!(!renewed.expired(at(20)));
        let unchanged = Observed::update(Some(&renewed), &spec("a", 1_003), at(20));
        assert_eq!(unchanged.seen_at, at(12));
        assert!(unchanged.expired(at(28)));
        // Another holder is another record.
        let other = Observed::update(Some(&unchanged), &spec("b", 1_003), at(28));
        assert!(!other.expired(at(30)));
    }
}
