//! The status a reconcile publishes: a pure function of what it observed.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ContainerStateTerminated, ContainerStatus, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use crate::crd::{LanguageAcceptance, SpeculativeDeploymentStatus};

/// Condition: the API is served (the Deployment has its minimum
/// availability) and nothing is degraded. A healthy rolling update keeps it.
pub const READY: &str = "Ready";
/// Condition: the Deployment has its minimum availability: at most
/// `maxUnavailable` desired replicas are not ready.
pub const AVAILABLE: &str = "Available";
/// Condition: a rollout or scale is under way.
pub const PROGRESSING: &str = "Progressing";
/// Condition: the spec cannot be (fully) applied, or its pods fail.
pub const DEGRADED: &str = "Degraded";

/// Reasons a container waits that do not go away by waiting.
const FAILING_WAIT_REASONS: &[&str] = &[
    "ErrImagePull",
    "ImagePullBackOff",
    "InvalidImageName",
    "CrashLoopBackOff",
    "CreateContainerConfigError",
    "CreateContainerError",
    "RunContainerError",
];

/// Something wrong with one pod, as its status tells.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodProblem {
    /// The pod's name.
    pub pod: String,
    /// CamelCase reason (`ImagePullBackOff`, `InitContainerFailed`, ...).
    pub reason: String,
    /// What happened, naming the container.
    pub message: String,
}

fn container_problem(pod: &str, init: bool, c: &ContainerStatus) -> Option<PodProblem> {
    let state = c.state.as_ref()?;
    let kind = if init { "init container" } else { "container" };
    // A failed init container is restarted with a back-off: while it waits,
    // why it failed is in its last state, which is what a user needs to see
    // (a download's HTTP status, a checksum mismatch), not "back-off".
    let failed_init = |t: &ContainerStateTerminated, waiting: Option<&str>| PodProblem {
        pod: pod.into(),
        reason: "InitContainerFailed".into(),
        message: format!(
            "pod {pod}, init container {} exited with {}: {}{}",
            c.name,
            t.exit_code,
            t.message
                .as_deref()
                .map(str::trim)
                .or(t.reason.as_deref())
                .unwrap_or("no message"),
            waiting.map(|w| format!(" ({w})")).unwrap_or_default()
        ),
    };
    if let Some(waiting) = &state.waiting {
        let reason = waiting.reason.as_deref().unwrap_or_default();
        if FAILING_WAIT_REASONS.contains(&reason) {
            let last_failure = c
                .last_state
                .as_ref()
                .and_then(|s| s.terminated.as_ref())
                .filter(|t| init && t.exit_code != 0);
            if let Some(t) = last_failure {
                return Some(failed_init(t, Some(reason)));
            }
            let detail = waiting.message.as_deref().unwrap_or("no message");
            return Some(PodProblem {
                pod: pod.into(),
                reason: reason.into(),
                message: format!("pod {pod}, {kind} {}: {reason}: {detail}", c.name),
            });
        }
    }
    match &state.terminated {
        // An init container that failed is retried (or fails the pod): the
        // server never starts until it succeeds.
        Some(t) if init && t.exit_code != 0 => Some(failed_init(t, None)),
        _ => None,
    }
}

/// What is wrong with `pods`, each pod at most once: a container that cannot
/// start or keeps crashing, an init container that failed, a pod that failed
/// or that no node can take.
pub fn pod_problems(pods: &[Pod]) -> Vec<PodProblem> {
    let mut problems = Vec::new();
    for pod in pods {
        let name = pod.metadata.name.clone().unwrap_or_default();
        let Some(status) = &pod.status else { continue };
        if pod.metadata.deletion_timestamp.is_some() {
            continue;
        }
        if status.phase.as_deref() == Some("Failed") {
            problems.push(PodProblem {
                pod: name.clone(),
                reason: status.reason.clone().unwrap_or_else(|| "PodFailed".into()),
                message: format!(
                    "pod {name} failed: {}",
                    status.message.as_deref().unwrap_or("no message")
                ),
            });
            continue;
        }
        let init = status.init_container_statuses.iter().flatten();
        let main = status.container_statuses.iter().flatten();
        let found = init
            .filter_map(|c| container_problem(&name, true, c))
            .chain(main.filter_map(|c| container_problem(&name, false, c)))
            .next()
            .or_else(|| {
                let unschedulable = status.conditions.iter().flatten().find(|c| {
                    c.type_ == "PodScheduled"
                        && c.status == "False"
                        && c.reason.as_deref() == Some("Unschedulable")
                })?;
                Some(PodProblem {
                    pod: name.clone(),
                    reason: "Unschedulable".into(),
                    message: format!(
                        "pod {name} cannot be scheduled: {}",
                        unschedulable.message.as_deref().unwrap_or("no message")
                    ),
                })
            });
        problems.extend(found);
    }
    problems
}

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
    /// What is wrong with its pods.
    pub pod_problems: Vec<PodProblem>,
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

fn deployment_condition<'a>(
    deployment: Option<&'a Deployment>,
    type_: &str,
) -> Option<&'a k8s_openapi::api::apps::v1::DeploymentCondition> {
    deployment?
        .status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == type_)
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
    let cond = |type_: &str, status: bool, reason: &str, message: String| {
        condition(
            previous_conditions,
            type_,
            status,
            reason,
            message,
            generation,
            &now,
        )
    };
    let replicas_ready = format!("{} of {desired} replicas ready", rollout.ready);
    let deadline_exceeded = deployment_condition(observation.deployment, "Progressing")
        .filter(|c| c.reason.as_deref() == Some("ProgressDeadlineExceeded"));
    let replica_failure = deployment_condition(observation.deployment, "ReplicaFailure")
        .filter(|c| c.status == "True");
    let available = if rollout.complete && desired == 0 {
        cond(
            AVAILABLE,
            true,
            "ScaledToZero",
            "no replicas are asked for".into(),
        )
    } else if deployment_condition(observation.deployment, "Available")
        .is_some_and(|c| c.status == "True")
    {
        cond(
            AVAILABLE,
            true,
            "MinimumReplicasAvailable",
            replicas_ready.clone(),
        )
    } else {
        cond(
            AVAILABLE,
            false,
            "MinimumReplicasUnavailable",
            replicas_ready.clone(),
        )
    };
    let progressing = if let Some(exceeded) = deadline_exceeded {
        cond(
            PROGRESSING,
            false,
            "ProgressDeadlineExceeded",
            exceeded.message.clone().unwrap_or_default(),
        )
    } else if rollout.complete {
        cond(
            PROGRESSING,
            false,
            "RolloutComplete",
            rollout.message.clone(),
        )
    } else {
        cond(PROGRESSING, true, "RollingOut", rollout.message.clone())
    };
    // The first cause wins: what the operator could not apply, then what the
    // pods report, then what the Deployment controller gave up on.
    let degraded = if let Outcome::Blocked { reason, message } = &observation.outcome {
        cond(DEGRADED, true, reason, message.clone())
    } else if let Some(first) = observation.pod_problems.first() {
        let more = observation
            .pod_problems
            .iter()
            .filter(|p| p.pod != first.pod)
            .count();
        let message = match more {
            0 => first.message.clone(),
            n => format!("{}; {n} more pods failing", first.message),
        };
        cond(DEGRADED, true, &first.reason, message)
    } else if let Some(exceeded) = deadline_exceeded {
        let message = exceeded.message.clone().unwrap_or_default();
        cond(DEGRADED, true, "ProgressDeadlineExceeded", message)
    } else if let Some(failure) = replica_failure {
        let reason = failure.reason.as_deref().unwrap_or("ReplicaFailure");
        let message = failure.message.clone().unwrap_or_default();
        cond(DEGRADED, true, reason, message)
    } else {
        cond(
            DEGRADED,
            false,
            "AsExpected",
            "every object is applied".into(),
        )
    };
    let ready = if degraded.status == "True" {
        cond(READY, false, "Degraded", degraded.message.clone())
    } else if available.status != "True" {
        cond(READY, false, "ReplicasNotReady", replicas_ready)
    } else if desired == 0 {
        cond(
            READY,
            true,
            "ScaledToZero",
            "no replicas are asked for".into(),
        )
    } else if rollout.complete {
        cond(READY, true, "AllReplicasReady", replicas_ready)
    } else {
        // A healthy rolling update or scale keeps serving.
        cond(
            READY,
            true,
            "MinimumReplicasAvailable",
            format!("{replicas_ready}; {}", rollout.message),
        )
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
        conditions: vec![ready, available, progressing, degraded],
    }
}

/// The `Degraded` condition of `next` when it is true and was not, or was
/// for another reason, in `previous`: what deserves an Event.
pub fn newly_degraded<'a>(
    previous: Option<&SpeculativeDeploymentStatus>,
    next: &'a SpeculativeDeploymentStatus,
) -> Option<&'a Condition> {
    let degraded = |s: &'a SpeculativeDeploymentStatus| {
        s.conditions
            .iter()
            .find(|c| c.type_ == DEGRADED && c.status == "True")
    };
    let now = degraded(next)?;
    let before = previous.and_then(|p| {
        p.conditions
            .iter()
            .find(|c| c.type_ == DEGRADED && c.status == "True")
    });
    (before.map(|b| &b.reason) != Some(&now.reason)).then_some(now)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::apps::v1::{DeploymentCondition, DeploymentStatus};
    use k8s_openapi::api::core::v1::{
        ContainerState, ContainerStateTerminated, ContainerStateWaiting, PodCondition, PodStatus,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn with_condition(mut d: Deployment, type_: &str, status: &str, reason: &str) -> Deployment {
        let conditions = d
            .status
            .get_or_insert_with(DeploymentStatus::default)
            .conditions
            .get_or_insert_with(Vec::new);
        conditions.push(DeploymentCondition {
            type_: type_.into(),
            status: status.into(),
            reason: Some(reason.into()),
            message: Some(format!("{type_} {reason}")),
            ..DeploymentCondition::default()
        });
        d
    }

    fn available(d: Deployment) -> Deployment {
        with_condition(d, "Available", "True", "MinimumReplicasAvailable")
    }

    fn pod(name: &str, init: Vec<ContainerStatus>, main: Vec<ContainerStatus>) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..ObjectMeta::default()
            },
            status: Some(PodStatus {
                phase: Some("Pending".into()),
                init_container_statuses: Some(init),
                container_statuses: Some(main),
                ..PodStatus::default()
            }),
            ..Pod::default()
        }
    }

    fn waiting(name: &str, reason: &str) -> ContainerStatus {
        ContainerStatus {
            name: name.into(),
            state: Some(ContainerState {
                waiting: Some(ContainerStateWaiting {
                    reason: Some(reason.into()),
                    message: Some(format!("{reason} detail")),
                }),
                ..ContainerState::default()
            }),
            ..ContainerStatus::default()
        }
    }

    fn exited(name: &str, code: i32) -> ContainerStatus {
        ContainerStatus {
            name: name.into(),
            state: Some(ContainerState {
                terminated: Some(ContainerStateTerminated {
                    exit_code: code,
                    reason: Some("Error".into()),
                    ..ContainerStateTerminated::default()
                }),
                ..ContainerState::default()
            }),
            ..ContainerStatus::default()
        }
    }

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
            pod_problems: vec![],
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
        let d = available(deployment(2, 2, 2, 2, 2));
        let s = status(None, &observe(Some(&d), Outcome::Applied), at(10));
        assert_eq!(find(&s, READY).status, "True");
        assert_eq!(find(&s, AVAILABLE).status, "True");
        assert_eq!(find(&s, PROGRESSING).status, "False");
        assert_eq!(find(&s, DEGRADED).status, "False");
        assert_eq!(s.ready.as_deref(), Some("2/2"));
        assert_eq!(s.acceptance_rate.as_deref(), Some("0.74"));
        assert_eq!(s.observed_generation, Some(3));
    }

    #[test]
    fn progressing_during_a_rollout_and_before_the_controller_observed_it() {
        // A healthy rolling update keeps serving: Ready stays.
        let rolling = available(deployment(2, 2, 3, 1, 2));
        let s = status(None, &observe(Some(&rolling), Outcome::Applied), at(10));
        assert_eq!(find(&s, READY).status, "True");
        assert_eq!(find(&s, READY).reason, "MinimumReplicasAvailable");
        assert_eq!(find(&s, PROGRESSING).reason, "RollingOut");
        // Below the minimum availability it is not ready.
        let starting = deployment(1, 1, 2, 2, 0);
        let s = status(None, &observe(Some(&starting), Outcome::Applied), at(10));
        assert_eq!(find(&s, READY).status, "False");
        assert_eq!(find(&s, AVAILABLE).status, "False");
        let unobserved = deployment(3, 2, 2, 2, 2);
        let s = status(None, &observe(Some(&unobserved), Outcome::Applied), at(10));
        assert_eq!(find(&s, PROGRESSING).status, "True");
        let s = status(None, &observe(None, Outcome::Applied), at(10));
        assert_eq!(s.ready.as_deref(), Some("0/2"));
    }

    #[test]
    fn blocked_is_degraded_with_the_reason_and_keeps_the_old_registry() {
        let d = available(deployment(2, 2, 2, 2, 2));
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
        assert_eq!(find(&s, AVAILABLE).last_transition_time, at(10));
        assert_eq!(find(&s, READY).status, "False");
        assert_eq!(find(&s, READY).last_transition_time, at(20));
        assert_eq!(s.registry_sha256.as_deref(), Some("abc"));
    }

    #[test]
    fn failing_pods_are_found_once_each_with_the_container() {
        let pods = vec![
            pod(
                "a",
                vec![exited("fetch-0", 0)],
                vec![waiting("server", "ImagePullBackOff")],
            ),
            // The init container's failure is the cause; not also the
            // server's waiting for it.
            pod(
                "b",
                vec![exited("fetch-0", 1)],
                vec![waiting("server", "PodInitializing")],
            ),
            pod("c", vec![], vec![waiting("server", "ContainerCreating")]),
            pod("d", vec![], vec![waiting("server", "CrashLoopBackOff")]),
        ];
        let problems = pod_problems(&pods);
        let found: Vec<(&str, &str)> = problems
            .iter()
            .map(|p| (p.pod.as_str(), p.reason.as_str()))
            .collect();
        assert_eq!(
            found,
            [
                ("a", "ImagePullBackOff"),
                ("b", "InitContainerFailed"),
                ("d", "CrashLoopBackOff")
            ]
        );
        assert!(problems[0].message.contains("container server"));
        assert!(problems[1]
            .message
            .contains("init container fetch-0 exited with 1"));
    }

    #[test]
    fn an_init_container_in_back_off_is_reported_with_why_it_failed() {
        let mut fetch = waiting("fetch-0", "CrashLoopBackOff");
        fetch.last_state = Some(ContainerState {
            terminated: Some(ContainerStateTerminated {
                exit_code: 1,
                reason: Some("Error".into()),
                message: Some(
                    "error: downloading https://m/t.gguf: the server answered HTTP 404\n".into(),
                ),
                ..ContainerStateTerminated::default()
            }),
            ..ContainerState::default()
        });
        let problems = pod_problems(&[pod(
            "a",
            vec![fetch],
            vec![waiting("server", "PodInitializing")],
        )]);
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].reason, "InitContainerFailed");
        assert_eq!(
            problems[0].message,
            "pod a, init container fetch-0 exited with 1: error: downloading \
             https://m/t.gguf: the server answered HTTP 404 (CrashLoopBackOff)"
        );
    }

    #[test]
    fn an_unschedulable_or_failed_pod_is_a_problem() {
        let mut pending = pod("p", vec![], vec![]);
        if let Some(status) = pending.status.as_mut() {
            status.conditions = Some(vec![PodCondition {
                type_: "PodScheduled".into(),
                status: "False".into(),
                reason: Some("Unschedulable".into()),
                message: Some("0/4 nodes are available: 4 Insufficient nvidia.com/gpu".into()),
                ..PodCondition::default()
            }]);
        }
        let mut failed = pod("f", vec![], vec![]);
        if let Some(status) = failed.status.as_mut() {
            status.phase = Some("Failed".into());
            status.reason = Some("Evicted".into());
        }
        let problems = pod_problems(&[pending, failed]);
        assert_eq!(problems[0].reason, "Unschedulable");
        assert!(problems[0].message.contains("Insufficient nvidia.com/gpu"));
        assert_eq!(problems[1].reason, "Evicted");
    }

    #[test]
    fn pod_problems_degrade_and_unready_even_while_available() {
        let d = available(deployment(2, 2, 3, 1, 2));
        let mut obs = observe(Some(&d), Outcome::Applied);
        obs.pod_problems = pod_problems(&[
            pod("new-1", vec![], vec![waiting("server", "CrashLoopBackOff")]),
            pod("new-2", vec![], vec![waiting("server", "CrashLoopBackOff")]),
        ]);
        let s = status(None, &obs, at(10));
        let degraded = find(&s, DEGRADED);
        assert_eq!(
            (degraded.status.as_str(), degraded.reason.as_str()),
            ("True", "CrashLoopBackOff")
        );
        assert!(
            degraded.message.ends_with("; 1 more pods failing"),
            "{}",
            degraded.message
        );
        assert_eq!(find(&s, READY).status, "False");
        assert_eq!(find(&s, AVAILABLE).status, "True");
    }

    #[test]
    fn a_degradation_is_new_once_per_reason() {
        let healthy = status(
            None,
            &observe(
                Some(&available(deployment(2, 2, 2, 2, 2))),
                Outcome::Applied,
            ),
            at(10),
        );
        let d = available(deployment(2, 2, 3, 1, 2));
        let mut obs = observe(Some(&d), Outcome::Applied);
        obs.pod_problems = pod_problems(&[pod(
            "n",
            vec![],
            vec![waiting("server", "CrashLoopBackOff")],
        )]);
        let crashing = status(Some(&healthy), &obs, at(20));
        assert_eq!(
            newly_degraded(Some(&healthy), &crashing).map(|c| c.reason.as_str()),
            Some("CrashLoopBackOff")
        );
        assert!(newly_degraded(Some(&crashing), &crashing).is_none());
        assert!(newly_degraded(Some(&crashing), &healthy).is_none());
    }

    #[test]
    fn the_deployments_deadline_and_replica_failures_degrade() {
        let stuck = with_condition(
            available(deployment(2, 2, 3, 1, 2)),
            "Progressing",
            "False",
            "ProgressDeadlineExceeded",
        );
        let s = status(None, &observe(Some(&stuck), Outcome::Applied), at(10));
        assert_eq!(find(&s, PROGRESSING).reason, "ProgressDeadlineExceeded");
        assert_eq!(find(&s, PROGRESSING).status, "False");
        assert_eq!(find(&s, DEGRADED).reason, "ProgressDeadlineExceeded");
        let refused = with_condition(
            deployment(2, 2, 0, 0, 0),
            "ReplicaFailure",
            "True",
            "FailedCreate",
        );
        let s = status(None, &observe(Some(&refused), Outcome::Applied), at(10));
        assert_eq!(find(&s, DEGRADED).reason, "FailedCreate");
        assert_eq!(find(&s, DEGRADED).message, "ReplicaFailure FailedCreate");
    }
}
