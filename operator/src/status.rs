//! The status a reconcile publishes: a pure function of what it observed.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use crate::crd::{LanguageAcceptance, SpeculativeDeploymentStatus};

/// Condition: the API is served by every desired replica.
pub const READY: &str = "Ready";
/// Condition: a rollout or scale is under way.
pub const PROGRESSING: &str = "Progressing";
/// Condition: the spec cannot be (fully) applied.
pub const DEGRADED: &str = "Degraded";

/// How applying the spec went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Every child object is applied.
    Applied,
    /// The spec, or something it names, is unusable; nothing new was applied.
    Blocked {
        /// CamelCase reason, also the Event's.
        reason: String,
        /// What is wrong and what to do.
        message: String,
    },
}

/// What a reconcile observed.
#[derive(Debug, Clone)]
pub struct Observation<'a> {
    /// `metadata.generation` of the SpeculativeDeployment.
    pub generation: Option<i64>,
    /// `spec.replicas`.
    pub desired_replicas: i32,
    /// How applying went.
    pub outcome: Outcome,
    /// The Deployment as the API server returned it, if it exists.
    pub deployment: Option<&'a Deployment>,
    /// The pods' label selector.
    pub selector: String,
    /// URL of the API.
    pub endpoint: String,
    /// Registry SHA-256 the pods were given (`None` when blocked).
    pub registry_sha256: Option<String>,
    /// Acceptance per language.
    pub acceptance: Vec<LanguageAcceptance>,
    /// Acceptance over all languages.
    pub acceptance_rate: Option<f64>,
}

struct Rollout {
    replicas: i32,
    ready: i32,
    complete: bool,
    message: String,
}

fn rollout(deployment: Option<&Deployment>, desired: i32) -> Rollout {
    let Some(deployment) = deployment else {
        return Rollout {
            replicas: 0,
            ready: 0,
            complete: false,
            message: "the Deployment does not exist yet".into(),
        };
    };
    let status = deployment.status.clone().unwrap_or_default();
    let replicas = status.replicas.unwrap_or(0);
    let ready = status.ready_replicas.unwrap_or(0);
    let updated = status.updated_replicas.unwrap_or(0);
    let observed =
        status.observed_generation.unwrap_or(0) >= deployment.metadata.generation.unwrap_or(0);
    let complete = observed && updated == desired && ready == desired && replicas == desired;
    let message = if !observed {
        "the Deployment controller has not seen the latest spec yet".to_string()
    } else {
        format!("{updated} of {desired} pods updated, {ready} ready, {replicas} running in all")
    };
    Rollout {
        replicas,
        ready,
        complete,
        message,
    }
}

fn condition(
    previous: &[Condition],
    type_: &str,
    status: bool,
    reason: &str,
    message: String,
    generation: Option<i64>,
    now: &Time,
) -> Condition {
    let status = if status { "True" } else { "False" }.to_string();
    let last_transition_time = previous
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| now.clone());
    Condition {
        type_: type_.to_string(),
        status,
        reason: reason.to_string(),
        message,
        observed_generation: generation,
        last_transition_time,
    }
}

/// The status to publish, keeping each condition's transition time while its
/// status is unchanged.
pub fn status(
    previous: Option<&SpeculativeDeploymentStatus>,
    observation: &Observation<'_>,
    now: Time,
) -> SpeculativeDeploymentStatus {
    let previous_conditions = previous.map(|s| s.conditions.as_slice()).unwrap_or(&[]);
    let desired = observation.desired_replicas;
    let rollout = rollout(observation.deployment, desired);
    let generation = observation.generation;
    let ready = if rollout.complete && desired == 0 {
        condition(
            previous_conditions,
            READY,
            true,
            "ScaledToZero",
            "no replicas are asked for".into(),
            generation,
            &now,
        )
    } else if rollout.complete {
        condition(
            previous_conditions,
            READY,
            true,
            "AllReplicasReady",
            format!("{desired} of {desired} replicas ready"),
            generation,
            &now,
        )
    } else {
        condition(
            previous_conditions,
            READY,
            false,
            "ReplicasNotReady",
            format!("{} of {desired} replicas ready", rollout.ready),
            generation,
            &now,
        )
    };
    let progressing = if rollout.complete {
        condition(
            previous_conditions,
            PROGRESSING,
            false,
            "RolloutComplete",
            rollout.message.clone(),
            generation,
            &now,
        )
    } else {
        condition(
            previous_conditions,
            PROGRESSING,
            true,
            "RollingOut",
            rollout.message.clone(),
            generation,
            &now,
        )
    };
    let degraded = match &observation.outcome {
        Outcome::Applied => condition(
            previous_conditions,
            DEGRADED,
            false,
            "AsExpected",
            "every object is applied".into(),
            generation,
            &now,
        ),
        Outcome::Blocked { reason, message } => condition(
            previous_conditions,
            DEGRADED,
            true,
            reason,
            message.clone(),
            generation,
            &now,
        ),
    };
    let registry_sha256 = observation
        .registry_sha256
        .clone()
        .or_else(|| previous.and_then(|p| p.registry_sha256.clone()));
    SpeculativeDeploymentStatus {
        observed_generation: generation,
        replicas: rollout.replicas,
        ready_replicas: rollout.ready,
        ready: Some(format!("{}/{desired}", rollout.ready)),
        selector: Some(observation.selector.clone()),
        endpoint: Some(observation.endpoint.clone()),
        registry_sha256,
        acceptance_rate: observation.acceptance_rate.map(|r| format!("{r:.2}")),
        acceptance: observation.acceptance.clone(),
        conditions: vec![ready, progressing, degraded],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::apps::v1::DeploymentStatus;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn deployment(
        generation: i64,
        observed: i64,
        replicas: i32,
        updated: i32,
        ready: i32,
    ) -> Deployment {
        Deployment {
            metadata: ObjectMeta {
                generation: Some(generation),
                ..ObjectMeta::default()
            },
            status: Some(DeploymentStatus {
                observed_generation: Some(observed),
                replicas: Some(replicas),
                updated_replicas: Some(updated),
                ready_replicas: Some(ready),
                ..DeploymentStatus::default()
            }),
            ..Deployment::default()
        }
    }

    fn observe(deployment: Option<&Deployment>, outcome: Outcome) -> Observation<'_> {
        Observation {
            generation: Some(3),
            desired_replicas: 2,
            outcome,
            deployment,
            selector: "a=b".into(),
            endpoint: "http://x.y.svc:8080/v1".into(),
            registry_sha256: Some("abc".into()),
            acceptance: vec![],
            acceptance_rate: Some(0.744),
        }
    }

    fn find<'a>(s: &'a SpeculativeDeploymentStatus, t: &str) -> &'a Condition {
        s.conditions.iter().find(|c| c.type_ == t).unwrap()
    }

    fn at(seconds: i64) -> Time {
        Time(jiff::Timestamp::from_second(seconds).unwrap())
    }

    #[test]
    fn ready_when_every_replica_is_updated_and_ready() {
        let d = deployment(2, 2, 2, 2, 2);
        let s = status(None, &observe(Some(&d), Outcome::Applied), at(10));
        assert_eq!(find(&s, READY).status, "True");
        assert_eq!(find(&s, PROGRESSING).status, "False");
        assert_eq!(find(&s, DEGRADED).status, "False");
        assert_eq!(s.ready.as_deref(), Some("2/2"));
        assert_eq!(s.acceptance_rate.as_deref(), Some("0.74"));
        assert_eq!(s.observed_generation, Some(3));
    }

    #[test]
    fn progressing_during_a_rollout_and_before_the_controller_observed_it() {
        let rolling = deployment(2, 2, 3, 1, 2);
        let s = status(None, &observe(Some(&rolling), Outcome::Applied), at(10));
        assert_eq!(find(&s, READY).status, "False");
        assert_eq!(find(&s, PROGRESSING).reason, "RollingOut");
        let unobserved = deployment(3, 2, 2, 2, 2);
        let s = status(None, &observe(Some(&unobserved), Outcome::Applied), at(10));
        assert_eq!(find(&s, PROGRESSING).status, "True");
        let s = status(None, &observe(None, Outcome::Applied), at(10));
        assert_eq!(s.ready.as_deref(), Some("0/2"));
    }

    #[test]
    fn blocked_is_degraded_with_the_reason_and_keeps_the_old_registry() {
        let d = deployment(2, 2, 2, 2, 2);
        let previous = status(None, &observe(Some(&d), Outcome::Applied), at(10));
        let mut obs = observe(
            Some(&d),
            Outcome::Blocked {
                reason: "MissingPersistentVolumeClaim".into(),
                message: "claim `models` does not exist".into(),
            },
        );
        obs.registry_sha256 = None;
        let s = status(Some(&previous), &obs, at(20));
        let degraded = find(&s, DEGRADED);
        assert_eq!(degraded.status, "True");
        assert_eq!(degraded.reason, "MissingPersistentVolumeClaim");
        assert_eq!(degraded.last_transition_time, at(20));
        // Unchanged conditions keep their transition time.
        assert_eq!(find(&s, READY).last_transition_time, at(10));
        assert_eq!(s.registry_sha256.as_deref(), Some("abc"));
    }
}
