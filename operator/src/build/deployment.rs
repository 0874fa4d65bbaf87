//! The Deployment: init containers that fetch `https://` models, and the
//! server container running the target with all its drafters (co-located, so
//! draft and verify never cross the network).

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment,
};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMapVolumeSource, Container, ContainerPort, EmptyDirVolumeSource, EnvVar,
    EnvVarSource, HTTPGetAction, HostPathVolumeSource, KeyToPath, Lifecycle, LifecycleHandler,
    PersistentVolumeClaimVolumeSource, PodSecurityContext, PodSpec, PodTemplateSpec, Probe,
    ResourceFieldSelector, ResourceRequirements, SeccompProfile, SecretVolumeSource,
    SecurityContext, SleepAction, Toleration, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::configmap::{configmap_name, REGISTRY_FILE, REGISTRY_MOUNT_DIR};
use super::Owner;
use crate::crd::SpeculativeDeploymentSpec;
use crate::model_source::{MODEL_CACHE_DIR, PVC_SOURCES_DIR};
use crate::plan::Plan;
use crate::plan::{Download, InvalidSpec};

/// Pod annotation carrying the registry's SHA-256: a registry change
/// changes the pod template and so rolls the pods.
pub const REGISTRY_SHA256_ANNOTATION: &str = "specdec.io/registry-sha256";
/// Container port of the API (the Service maps its port onto it).
pub const HTTP_PORT: i32 = 8080;
/// Name of that port.
pub const HTTP_PORT_NAME: &str = "http";
/// Extended resource of NVIDIA GPUs.
pub const GPU_RESOURCE: &str = "nvidia.com/gpu";

const REGISTRY_VOLUME: &str = "registry";
const MODEL_CACHE_VOLUME: &str = "model-cache";

fn mount(name: &str, path: &str, read_only: bool) -> VolumeMount {
    VolumeMount {
        name: name.to_string(),
        mount_path: path.to_string(),
        read_only: Some(read_only),
        ..VolumeMount::default()
    }
}

fn probe(path: &str, period: i32, failure_threshold: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_string()),
            port: IntOrString::String(HTTP_PORT_NAME.to_string()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failure_threshold),
        timeout_seconds: Some(5),
        ..Probe::default()
    }
}

/// How the Deployment rolls: the spec's strategy, else with GPUs one pod
/// replaced at a time without surge (a full GPU pool has no room for a
/// surge pod), else Kubernetes' default.
fn strategy(spec: &SpeculativeDeploymentSpec) -> Option<DeploymentStrategy> {
    spec.strategy.clone().or_else(|| {
        (spec.gpus > 0).then(|| DeploymentStrategy {
            type_: Some("RollingUpdate".into()),
            rolling_update: Some(RollingUpdateDeployment {
                max_surge: Some(IntOrString::Int(0)),
                max_unavailable: Some(IntOrString::Int(1)),
            }),
        })
    })
}

/// The server container's resources: the spec's, plus `gpus` as a limit (and
/// request, which Kubernetes requires equal for extended resources).
/// The node-disk resource an emptyDir model cache uses.
const EPHEMERAL_STORAGE: &str = "ephemeral-storage";
/// Name of the container running `specdec serve`.
const SERVER_CONTAINER: &str = "server";
/// Termination message policy: the log's tail when the container failed
/// without writing a message of its own.
const FALLBACK_TO_LOGS_ON_ERROR: &str = "FallbackToLogsOnError";
/// Seconds a terminating pod keeps serving before SIGTERM.
const PRE_STOP_DRAIN_SECONDS: i64 = 5;

/// The user (and group) the containers run as: not root, by number, so that
/// the kubelet can check it without reading the image.
pub const RUN_AS_USER: i64 = 65532;

/// What Pod Security `restricted` asks of the pod: a numeric non-root user,
/// the runtime's seccomp profile, and the model cache writable by the group.
fn pod_security_context() -> PodSecurityContext {
    PodSecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(RUN_AS_USER),
        run_as_group: Some(RUN_AS_USER),
        fs_group: Some(RUN_AS_USER),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".into(),
            ..SeccompProfile::default()
        }),
        ..PodSecurityContext::default()
    }
}

/// What Pod Security `restricted` asks of every container.
fn container_security_context() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            ..Capabilities::default()
        }),
        run_as_non_root: Some(true),
        ..SecurityContext::default()
    }
}

/// What the init container fetching `download` runs `specdec` with.
fn fetch_args(download: &Download) -> Vec<String> {
    let mut args = vec![
        "fetch".to_string(),
        "--url".into(),
        download.url.clone(),
        "--sha256".into(),
        download.sha256.clone(),
    ];
    if let Some(size) = download.size_bytes {
        args.extend(["--size-bytes".into(), size.to_string()]);
    }
    args
}

/// Resources of an init container fetching one model: it streams the file
/// to the cache, so little memory, and a CPU share for hashing.
fn fetch_resources() -> ResourceRequirements {
    let quantity = |q: &str| Quantity(q.into());
    ResourceRequirements {
        requests: Some(BTreeMap::from([
            ("cpu".to_string(), quantity("250m")),
            ("memory".to_string(), quantity("64Mi")),
        ])),
        limits: Some(BTreeMap::from([("memory".to_string(), quantity("256Mi"))])),
        ..ResourceRequirements::default()
    }
}

fn resources(spec: &SpeculativeDeploymentSpec, plan: &Plan) -> Option<ResourceRequirements> {
    let mut resources = spec.resources.clone().unwrap_or_default();
    // Models downloaded into an emptyDir fill the node's disk: the scheduler
    // must know how much, or it places the pod where it gets evicted.
    if let Some(limit) = plan.cache_size_limit.clone() {
        resources
            .requests
            .get_or_insert_with(BTreeMap::new)
            .entry(EPHEMERAL_STORAGE.into())
            .or_insert(limit);
    }
    if spec.gpus > 0 {
        let gpus = Quantity(spec.gpus.to_string());
        resources
            .limits
            .get_or_insert_with(BTreeMap::new)
            .insert(GPU_RESOURCE.into(), gpus.clone());
        resources
            .requests
            .get_or_insert_with(BTreeMap::new)
            .insert(GPU_RESOURCE.into(), gpus);
    }
    (resources != ResourceRequirements::default()).then_some(resources)
}

/// The spec's tolerations, plus the `nvidia.com/gpu` taint when GPUs are
/// requested (as Kubernetes' ExtendedResourceToleration admission would add).
fn tolerations(spec: &SpeculativeDeploymentSpec) -> Option<Vec<Toleration>> {
    let mut tolerations = spec.tolerations.clone().unwrap_or_default();
    if spec.gpus > 0
        && !tolerations
            .iter()
            .any(|t| t.key.as_deref() == Some(GPU_RESOURCE))
    {
        tolerations.push(Toleration {
            key: Some(GPU_RESOURCE.into()),
            operator: Some("Exists".into()),
            effect: Some("NoSchedule".into()),
            ..Toleration::default()
        });
    }
    (!tolerations.is_empty()).then_some(tolerations)
}

/// Volume of the model downloads' CA bundle.
const MODEL_CA_VOLUME: &str = "model-ca";
/// Where the init containers see it.
const MODEL_CA_MOUNT_DIR: &str = "/etc/specdec/model-ca";
/// The bundle's file in it.
const MODEL_CA_FILE: &str = "ca.crt";

/// Volume of the API keys' Secret.
const API_KEYS_VOLUME: &str = "api-keys";
/// Where the server container sees it.
const API_KEYS_MOUNT_DIR: &str = "/etc/specdec/api-keys";
/// The file of keys in it.
const API_KEYS_FILE: &str = "keys";

fn volumes(owner: &Owner, spec: &SpeculativeDeploymentSpec, plan: &Plan) -> Vec<Volume> {
    let mut volumes = vec![Volume {
        name: REGISTRY_VOLUME.into(),
        config_map: Some(ConfigMapVolumeSource {
            name: configmap_name(owner, plan),
            ..ConfigMapVolumeSource::default()
        }),
        ..Volume::default()
    }];
    let cache = spec.model_cache.as_ref();
    let cache_volume = match cache.and_then(|c| c.persistent_volume_claim.as_ref()) {
        Some(pvc) => Volume {
            name: MODEL_CACHE_VOLUME.into(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: pvc.claim_name.clone(),
                read_only: Some(false),
            }),
            ..Volume::default()
        },
        None => Volume {
            name: MODEL_CACHE_VOLUME.into(),
            empty_dir: Some(EmptyDirVolumeSource {
                size_limit: plan.cache_size_limit.clone(),
                ..EmptyDirVolumeSource::default()
            }),
            ..Volume::default()
        },
    };
    volumes.push(cache_volume);
    if let Some(keys) = &spec.api_keys {
        volumes.push(Volume {
            name: API_KEYS_VOLUME.into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(keys.secret_name.clone()),
                items: Some(vec![KeyToPath {
                    key: keys.key.clone(),
                    path: API_KEYS_FILE.into(),
                    mode: None,
                }]),
                // The user and its group (fsGroup) only.
                default_mode: Some(0o440),
                optional: Some(false),
            }),
            ..Volume::default()
        });
    }
    if let Some(ca) = &spec.model_ca {
        volumes.push(Volume {
            name: MODEL_CA_VOLUME.into(),
            config_map: Some(ConfigMapVolumeSource {
                name: ca.config_map_name.clone(),
                items: Some(vec![KeyToPath {
                    key: ca.key.clone(),
                    path: MODEL_CA_FILE.into(),
                    mode: None,
                }]),
                optional: Some(false),
                ..ConfigMapVolumeSource::default()
            }),
            ..Volume::default()
        });
    }
    for (i, claim) in plan.source_claims.iter().enumerate() {
        volumes.push(Volume {
            name: format!("source-pvc-{i}"),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: claim.clone(),
                read_only: Some(true),
            }),
            ..Volume::default()
        });
    }
    for (i, file) in plan.node_files.iter().enumerate() {
        volumes.push(Volume {
            name: format!("source-node-{i}"),
            host_path: Some(HostPathVolumeSource {
                path: file.host_path.clone(),
                type_: Some("File".into()),
            }),
            ..Volume::default()
        });
    }
    volumes
}

fn source_mounts(plan: &Plan) -> Vec<VolumeMount> {
    let pvc = plan.source_claims.iter().enumerate().map(|(i, claim)| {
        mount(
            &format!("source-pvc-{i}"),
            &format!("{PVC_SOURCES_DIR}/{claim}"),
            true,
        )
    });
    let node = plan
        .node_files
        .iter()
        .enumerate()
        .map(|(i, file)| mount(&format!("source-node-{i}"), &file.mount_path, true));
    pvc.chain(node).collect()
}

/// The Deployment of `owner`, its pods running `image`; refused when the
/// spec's `podOverrides` do not make a pod template.
pub fn deployment(
    owner: &Owner,
    spec: &SpeculativeDeploymentSpec,
    plan: &Plan,
    image: &str,
) -> Result<Deployment, InvalidSpec> {
    let pull_policy = spec.image_pull_policy.map(|p| p.as_str().to_string());
    let model_dir_env = EnvVar {
        name: specdec_backend::models::MODEL_DIR_ENV.into(),
        value: Some(MODEL_CACHE_DIR.into()),
        ..EnvVar::default()
    };
    let mut fetch_env = vec![model_dir_env.clone()];
    let mut fetch_mounts = vec![mount(MODEL_CACHE_VOLUME, MODEL_CACHE_DIR, false)];
    if spec.model_ca.is_some() {
        fetch_env.push(EnvVar {
            name: "SPECDEC_FETCH_CA_FILE".into(),
            value: Some(format!("{MODEL_CA_MOUNT_DIR}/{MODEL_CA_FILE}")),
            ..EnvVar::default()
        });
        fetch_mounts.push(mount(MODEL_CA_VOLUME, MODEL_CA_MOUNT_DIR, true));
    }
    let init_containers: Vec<Container> = plan
        .downloads
        .iter()
        .enumerate()
        .map(|(i, download)| Container {
            name: format!("fetch-{i}"),
            image: Some(image.to_string()),
            image_pull_policy: pull_policy.clone(),
            command: Some(vec!["specdec".into()]),
            args: Some(fetch_args(download)),
            env: Some(fetch_env.clone()),
            volume_mounts: Some(fetch_mounts.clone()),
            resources: Some(fetch_resources()),
            security_context: Some(container_security_context()),
            // A failed download's last log lines become the container's
            // termination message, which the status and Events then quote.
            termination_message_policy: Some(FALLBACK_TO_LOGS_ON_ERROR.into()),
            ..Container::default()
        })
        .collect();
    let mut mounts = vec![
        mount(REGISTRY_VOLUME, REGISTRY_MOUNT_DIR, true),
        mount(MODEL_CACHE_VOLUME, MODEL_CACHE_DIR, true),
    ];
    mounts.extend(source_mounts(plan));
    let env = |name: &str, value: String| EnvVar {
        name: name.into(),
        value: Some(value),
        ..EnvVar::default()
    };
    // One llama.cpp thread per CPU of the container's limit (the node's
    // CPUs when it has none): more threads than CPUs only contend.
    let threads = EnvVar {
        name: "SPECDEC_THREADS".into(),
        value_from: Some(EnvVarSource {
            resource_field_ref: Some(ResourceFieldSelector {
                container_name: Some(SERVER_CONTAINER.into()),
                resource: "limits.cpu".into(),
                divisor: Some(Quantity("1".into())),
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    };
    let mut fixed_env = vec![
        model_dir_env,
        env("SPECDEC_SLOTS", spec.server.slots.to_string()),
        env("SPECDEC_MAX_WAITING", spec.server.max_waiting.to_string()),
        threads,
    ];
    if spec.api_keys.is_some() {
        fixed_env.push(env(
            "SPECDEC_API_KEY_FILE",
            format!("{API_KEYS_MOUNT_DIR}/{API_KEYS_FILE}"),
        ));
        mounts.push(mount(API_KEYS_VOLUME, API_KEYS_MOUNT_DIR, true));
    }
    let server = Container {
        name: SERVER_CONTAINER.into(),
        image: Some(image.to_string()),
        image_pull_policy: pull_policy,
        command: Some(vec!["specdec".into()]),
        args: Some(vec![
            "serve".into(),
            "--registry".into(),
            format!("{REGISTRY_MOUNT_DIR}/{REGISTRY_FILE}"),
            "--host".into(),
            "0.0.0.0".into(),
            "--port".into(),
            HTTP_PORT.to_string(),
            "--model-name".into(),
            owner.name.clone(),
        ]),
        env: Some(server_env(
            fixed_env,
            spec.env.as_deref().unwrap_or_default(),
        )),
        env_from: spec.env_from.clone(),
        termination_message_policy: Some(FALLBACK_TO_LOGS_ON_ERROR.into()),
        // Endpoints take a few seconds to drop a terminating pod: it keeps
        // serving meanwhile, then SIGTERM lets in-flight requests finish.
        lifecycle: Some(Lifecycle {
            pre_stop: Some(LifecycleHandler {
                sleep: Some(SleepAction {
                    seconds: PRE_STOP_DRAIN_SECONDS,
                }),
                ..LifecycleHandler::default()
            }),
            ..Lifecycle::default()
        }),
        ports: Some(vec![ContainerPort {
            name: Some(HTTP_PORT_NAME.into()),
            container_port: HTTP_PORT,
            protocol: Some("TCP".into()),
            ..ContainerPort::default()
        }]),
        // Loading a model can take minutes: the startup probe allows 10
        // minutes before liveness applies.
        startup_probe: Some(probe("/healthz", 5, 120)),
        liveness_probe: Some(probe("/healthz", 10, 3)),
        readiness_probe: Some(probe("/readyz", 5, 2)),
        resources: resources(spec, plan),
        volume_mounts: Some(mounts),
        security_context: Some(container_security_context()),
        ..Container::default()
    };
    let mut pod_labels = owner.labels();
    pod_labels.extend(owner.selector_labels());
    let annotations = BTreeMap::from([(
        REGISTRY_SHA256_ANNOTATION.to_string(),
        plan.registry_sha256.clone(),
    )]);
    let mut template = PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some(pod_labels),
            annotations: Some(annotations),
            ..ObjectMeta::default()
        }),
        spec: Some(PodSpec {
            init_containers: (!init_containers.is_empty()).then_some(init_containers),
            containers: vec![server],
            volumes: Some(volumes(owner, spec, plan)),
            node_selector: spec.node_selector.clone(),
            tolerations: tolerations(spec),
            affinity: spec.affinity.clone(),
            image_pull_secrets: spec.image_pull_secrets.clone(),
            priority_class_name: spec.priority_class_name.clone(),
            security_context: Some(pod_security_context()),
            // The server never calls the Kubernetes API.
            automount_service_account_token: Some(false),
            // In-flight generations get time to finish on SIGTERM.
            termination_grace_period_seconds: Some(60),
            ..PodSpec::default()
        }),
    };
    if let Some(overrides) = &spec.pod_overrides {
        template = super::overrides::apply(template, overrides).map_err(InvalidSpec)?;
    }
    Ok(Deployment {
        metadata: owner.child_meta(owner.name.clone()),
        spec: Some(DeploymentSpec {
            replicas: Some(spec.replicas),
            strategy: strategy(spec),
            selector: LabelSelector {
                match_labels: Some(owner.selector_labels()),
                ..LabelSelector::default()
            },
            template,
            ..DeploymentSpec::default()
        }),
        ..Deployment::default()
    })
}

/// The operator's environment of the server, then the spec's: a variable
/// the spec sets replaces the operator's of that name.
fn server_env(ours: Vec<EnvVar>, theirs: &[EnvVar]) -> Vec<EnvVar> {
    let mut env: Vec<EnvVar> = ours
        .into_iter()
        .filter(|e| !theirs.iter().any(|t| t.name == e.name))
        .collect();
    env.extend(theirs.iter().cloned());
    env
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::tests::owner;
    use crate::plan::{plan, tests::sample_spec};

    fn pod(spec: &SpeculativeDeploymentSpec) -> PodSpec {
        let plan = plan(spec).unwrap();
        deployment(&owner(), spec, &plan, "specdec:test")
            .unwrap()
            .spec
            .unwrap()
            .template
            .spec
            .unwrap()
    }

    /// The volume of `pod` named `name`.
    fn volume(pod: &PodSpec, name: &str) -> Volume {
        pod.volumes
            .iter()
            .flatten()
            .find(|v| v.name == name)
            .cloned()
            .unwrap_or_else(|| panic!("no volume {name}"))
    }

    /// The value `container` gives variable `name`.
    fn env_value(container: &Container, name: &str) -> Option<String> {
        container
            .env
            .iter()
            .flatten()
            .find(|e| e.name == name)
            .and_then(|e| e.value.clone())
    }

    /// Whether `container` mounts volume `name` read-only.
    fn mounts_read_only(container: &Container, name: &str) -> bool {
        container
            .volume_mounts
            .iter()
            .flatten()
            .any(|m| m.name == name && m.read_only == Some(true))
    }

    /// Whether `container` mounts volume `name` at all.
    fn mounts(container: &Container, name: &str) -> bool {
        container
            .volume_mounts
            .iter()
            .flatten()
            .any(|m| m.name == name)
    }

    #[test]
    fn fetches_https_models_with_their_checksums() {
        let spec = sample_spec();
        let pod = pod(&spec);
        let init = pod.init_containers.unwrap();
        assert_eq!(init.len(), 2);
        let args = init
            .iter()
            .map(|c| c.args.clone().unwrap().join(" "))
            .collect::<Vec<_>>()
            .join("\n");
        assert!(args.contains(spec.target.model.sha256.as_deref().unwrap()));
        assert!(args.contains("fetch --url https://"));
        assert!(args.contains("--size-bytes 1117320768"), "{args}");
    }

    #[test]
    fn a_model_ca_is_given_to_the_downloads_only() {
        let mut spec = sample_spec();
        let init = pod(&spec).init_containers.unwrap();
        assert_eq!(env_value(&init[0], "SPECDEC_FETCH_CA_FILE"), None);
        assert_eq!(
            init[0].termination_message_policy.as_deref(),
            Some("FallbackToLogsOnError")
        );
        spec.model_ca = Some(crate::crd::CaBundleConfigMap {
            config_map_name: "internal-ca".into(),
            key: "ca.crt".into(),
        });
        let pod = pod(&spec);
        let config_map = volume(&pod, MODEL_CA_VOLUME).config_map.unwrap();
        assert_eq!(config_map.name, "internal-ca");
        assert_eq!(config_map.items.unwrap()[0].key, "ca.crt");
        for init in pod.init_containers.iter().flatten() {
            assert_eq!(
                env_value(init, "SPECDEC_FETCH_CA_FILE"),
                Some(format!("{MODEL_CA_MOUNT_DIR}/{MODEL_CA_FILE}"))
            );
            assert!(mounts_read_only(init, MODEL_CA_VOLUME));
        }
        assert!(!mounts(&pod.containers[0], MODEL_CA_VOLUME));
    }

    #[test]
    fn api_keys_are_mounted_from_their_secret_for_the_server_only() {
        let mut spec = sample_spec();
        assert!(pod(&spec)
            .volumes
            .unwrap()
            .iter()
            .all(|v| v.secret.is_none()));
        spec.api_keys = Some(crate::crd::ApiKeysSecret {
            secret_name: "llm-keys".into(),
            key: "api-keys".into(),
        });
        let pod = pod(&spec);
        let secret = volume(&pod, API_KEYS_VOLUME).secret.unwrap();
        assert_eq!(secret.secret_name.as_deref(), Some("llm-keys"));
        assert_eq!(secret.items.unwrap()[0].key, "api-keys");
        let server = &pod.containers[0];
        assert_eq!(
            env_value(server, "SPECDEC_API_KEY_FILE"),
            Some(format!("{API_KEYS_MOUNT_DIR}/{API_KEYS_FILE}"))
        );
        assert!(mounts_read_only(server, API_KEYS_VOLUME));
        // The init containers that fetch models never see the keys.
        for init in pod.init_containers.iter().flatten() {
            assert!(!mounts(init, API_KEYS_VOLUME));
        }
    }

    #[test]
    fn pods_meet_pod_security_restricted_and_drain_before_stopping() {
        let pod = pod(&sample_spec());
        let security = pod.security_context.unwrap();
        assert_eq!(security.run_as_non_root, Some(true));
        assert_eq!(security.run_as_user, Some(RUN_AS_USER));
        assert_eq!(security.seccomp_profile.unwrap().type_, "RuntimeDefault");
        assert_eq!(pod.automount_service_account_token, Some(false));
        let init = pod.init_containers.unwrap();
        for c in init.iter().chain(&pod.containers) {
            let security = c.security_context.clone().unwrap();
            assert_eq!(
                security.allow_privilege_escalation,
                Some(false),
                "{}",
                c.name
            );
            assert_eq!(
                security.capabilities.unwrap().drop.unwrap(),
                ["ALL"],
                "{}",
                c.name
            );
        }
        assert!(init.iter().all(|c| c.resources.is_some()));
        // The sample's emptyDir cache is limited to its models' sizes, and
        // that is requested as node disk.
        let requests = pod.containers[0]
            .resources
            .clone()
            .unwrap()
            .requests
            .unwrap();
        assert_eq!(requests[EPHEMERAL_STORAGE], Quantity("1629Mi".into()));
        let cache = pod
            .volumes
            .unwrap()
            .into_iter()
            .find(|v| v.name == MODEL_CACHE_VOLUME)
            .unwrap();
        assert_eq!(
            cache.empty_dir.unwrap().size_limit,
            Some(Quantity("1629Mi".into()))
        );
        let server = &pod.containers[0];
        let pre_stop = server.lifecycle.clone().unwrap().pre_stop.unwrap();
        assert_eq!(pre_stop.sleep.unwrap().seconds, PRE_STOP_DRAIN_SECONDS);
        let threads = server
            .env
            .iter()
            .flatten()
            .find(|e| e.name == "SPECDEC_THREADS")
            .unwrap();
        let field = threads
            .value_from
            .clone()
            .unwrap()
            .resource_field_ref
            .unwrap();
        assert_eq!(field.resource, "limits.cpu");
        assert_eq!(field.container_name.as_deref(), Some(SERVER_CONTAINER));
    }

    fn rolling(spec: &SpeculativeDeploymentSpec) -> Option<DeploymentStrategy> {
        let plan = plan(spec).unwrap();
        deployment(&owner(), spec, &plan, "specdec:test")
            .unwrap()
            .spec
            .unwrap()
            .strategy
    }

    #[test]
    fn gpu_pods_roll_one_at_a_time_without_surge_unless_the_spec_says() {
        let mut spec = sample_spec();
        spec.gpus = 1;
        let gpu = rolling(&spec).unwrap().rolling_update.unwrap();
        assert_eq!(gpu.max_surge, Some(IntOrString::Int(0)));
        assert_eq!(gpu.max_unavailable, Some(IntOrString::Int(1)));
        // Without GPUs, Kubernetes' default.
        spec.gpus = 0;
        assert_eq!(rolling(&spec), None);
        // The spec's own strategy wins, GPUs or not.
        let recreate = DeploymentStrategy {
            type_: Some("Recreate".into()),
            rolling_update: None,
        };
        spec.gpus = 2;
        spec.strategy = Some(recreate.clone());
        assert_eq!(rolling(&spec), Some(recreate));
    }

    #[test]
    fn gpus_become_limits_and_a_toleration() {
        let mut spec = sample_spec();
        spec.gpus = 2;
        let pod = pod(&spec);
        let server = &pod.containers[0];
        let limits = server.resources.clone().unwrap().limits.unwrap();
        assert_eq!(limits[GPU_RESOURCE], Quantity("2".into()));
        assert_eq!(limits["memory"], Quantity("8Gi".into()));
        assert!(pod
            .tolerations
            .unwrap()
            .iter()
            .any(|t| t.key.as_deref() == Some(GPU_RESOURCE)));
        spec.gpus = 0;
        spec.resources = None;
        spec.model_cache = None;
        let pod = super::tests::pod(&spec);
        // Only the disk of the default emptyDir cache, sized from the models.
        let resources = pod.containers[0].resources.clone().unwrap();
        assert_eq!(resources.limits, None);
        assert_eq!(
            resources.requests.unwrap().into_keys().collect::<Vec<_>>(),
            [EPHEMERAL_STORAGE]
        );
        assert!(pod.tolerations.is_none());
    }

    #[test]
    fn registry_change_changes_the_pod_template() {
        let spec = sample_spec();
        let annotation = |spec: &SpeculativeDeploymentSpec| {
            let plan = plan(spec).unwrap();
            deployment(&owner(), spec, &plan, "specdec:test")
                .unwrap()
                .spec
                .unwrap()
                .template
                .metadata
                .unwrap()
                .annotations
                .unwrap()[REGISTRY_SHA256_ANNOTATION]
                .clone()
        };
        let mut edited = spec.clone();
        edited.drafters[0].languages.retain(|l| l != "de");
        assert_ne!(annotation(&spec), annotation(&edited));
        assert_eq!(annotation(&spec), annotation(&spec.clone()));
    }

    #[test]
    fn probes_and_placement_follow_the_spec() {
        let mut spec = sample_spec();
        spec.node_selector = Some(BTreeMap::from([("pool".into(), "gpu".into())]));
        let pod = pod(&spec);
        let server = &pod.containers[0];
        let path = |p: &Option<Probe>| p.clone().unwrap().http_get.unwrap().path.unwrap();
        assert_eq!(path(&server.readiness_probe), "/readyz");
        assert_eq!(path(&server.liveness_probe), "/healthz");
        assert_eq!(pod.node_selector.unwrap()["pool"], "gpu");
    }
}
