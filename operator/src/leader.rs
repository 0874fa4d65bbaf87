//! Leader election through a `coordination.k8s.io/v1` Lease, so that several
//! operator replicas can run and only one reconciles. Optimistic concurrency
//! (the Lease's resourceVersion) decides races; a holder that stops renewing
//! loses the Lease once it expires.

use std::time::Duration;

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
}

fn now() -> jiff::Timestamp {
    jiff::Timestamp::now()
}

/// Whether a Lease held by someone else has expired at `at`.
pub fn expired(spec: &LeaseSpec, at: jiff::Timestamp) -> bool {
    let Some(MicroTime(renewed)) = spec.renew_time.as_ref() else {
        return true;
    };
    let duration = i64::from(spec.lease_duration_seconds.unwrap_or(0));
    match renewed.checked_add(jiff::SignedDuration::from_secs(duration)) {
        Ok(deadline) => deadline < at,
        Err(_) => false,
    }
}

impl LeaderElector {
    /// An elector for `settings`.
    pub fn new(client: Client, settings: LeaseSettings) -> Self {
        Self {
            api: Api::namespaced(client, &settings.namespace),
            settings,
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
        if !ours && !holder.is_empty() && !expired(&spec, now()) {
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

    #[test]
    fn a_lease_expires_after_its_duration_since_renewal() {
        let renewed = jiff::Timestamp::from_second(1_000).unwrap();
        let spec = LeaseSpec {
            holder_identity: Some("a".into()),
            lease_duration_seconds: Some(15),
            renew_time: Some(MicroTime(renewed)),
            ..LeaseSpec::default()
        };
        assert!(!expired(
            &spec,
            jiff::Timestamp::from_second(1_010).unwrap()
        ));
        assert!(expired(&spec, jiff::Timestamp::from_second(1_016).unwrap()));
        assert!(expired(&LeaseSpec::default(), renewed));
    }
}
