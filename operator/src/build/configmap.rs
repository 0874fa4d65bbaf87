//! The ConfigMaps holding the backend's registry file: one per registry
//! content, named by its hash and immutable, so that a container restarted
//! in an old pod reads the registry its init containers fetched models for.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{ConfigMap, Pod};

use super::Owner;
use crate::plan::Plan;

/// Key (and file name) of the registry in the ConfigMap.
pub const REGISTRY_FILE: &str = "registry.yaml";
/// Where the ConfigMap is mounted in the server container.
pub const REGISTRY_MOUNT_DIR: &str = "/etc/specdec";

/// Hex digits of the registry's SHA-256 in a ConfigMap's name.
const NAME_HASH_DIGITS: usize = 12;

/// Prefix of the names of `owner`'s registry ConfigMaps.
fn name_prefix(owner: &Owner) -> String {
    format!("{}-registry-", owner.name)
}

/// Name of the ConfigMap holding `plan`'s registry.
pub fn configmap_name(owner: &Owner, plan: &Plan) -> String {
    configmap_name_for_sha(owner, &plan.registry_sha256)
}

/// Name of the ConfigMap holding the registry whose SHA-256 is `sha256`.
pub fn configmap_name_for_sha(owner: &Owner, sha256: &str) -> String {
    let digits = sha256.get(..NAME_HASH_DIGITS).unwrap_or(sha256);
    format!("{}{digits}", name_prefix(owner))
}

/// The immutable ConfigMap with the registry file, exactly as the backend
/// parses it.
pub fn configmap(owner: &Owner, plan: &Plan) -> ConfigMap {
    ConfigMap {
        metadata: owner.child_meta(configmap_name(owner, plan)),
        data: Some(BTreeMap::from([(
            REGISTRY_FILE.to_string(),
            plan.registry_yaml.clone(),
        )])),
        immutable: Some(true),
        ..ConfigMap::default()
    }
}

/// Which of `existing` (`owner`'s ConfigMaps) to delete: every registry
/// ConfigMap but the current one, the newest other one (what a rollback to
/// the previous spec uses again) and any a pod still mounts. Also the single
/// mutable `<name>-registry` of earlier versions of the operator, once no
/// pod mounts it.
pub fn registries_to_collect(
    owner: &Owner,
    current: &str,
    existing: &[ConfigMap],
    pods: &[Pod],
) -> Vec<String> {
    let prefix = name_prefix(owner);
    let legacy = format!("{}-registry", owner.name);
    let mounted: BTreeSet<&str> = pods
        .iter()
        .filter_map(|p| p.spec.as_ref()?.volumes.as_ref())
        .flatten()
        .filter_map(|v| Some(v.config_map.as_ref()?.name.as_str()))
        .collect();
    let mut registries: Vec<&ConfigMap> = existing
        .iter()
        .filter(|c| {
            c.metadata
                .name
                .as_deref()
                .is_some_and(|n| n != current && (n.starts_with(&prefix) || n == legacy))
        })
        .collect();
    // Newest first; the name breaks ties so that the choice is stable.
    registries.sort_by(|a, b| {
        (&b.metadata.creation_timestamp, &b.metadata.name)
            .cmp(&(&a.metadata.creation_timestamp, &a.metadata.name))
    });
    registries
        .iter()
        .skip(1)
        .filter_map(|c| c.metadata.name.clone())
        .filter(|n| !mounted.contains(n.as_str()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::tests::owner;
    use crate::plan::{plan, tests::sample_spec};
    use specdec_backend::config::RegistryConfig;

    #[test]
    fn holds_a_registry_the_backend_accepts() {
        let plan = plan(&sample_spec()).unwrap();
        let cm = configmap(&owner(), &plan);
        let name = cm.metadata.name.clone().unwrap();
        assert_eq!(
            name,
            format!("qwen-coder-registry-{}", &plan.registry_sha256[..12])
        );
        assert_eq!(cm.immutable, Some(true));
        let text = &cm.data.unwrap()[REGISTRY_FILE];
        assert_eq!(RegistryConfig::from_yaml(text).unwrap(), plan.registry);
        // Another registry, another ConfigMap.
        let mut spec = sample_spec();
        spec.drafters[0].languages = vec!["de".into()];
        let other = configmap(&owner(), &plan_of(&spec));
        assert_ne!(other.metadata.name.unwrap(), name);
    }

    fn plan_of(spec: &crate::crd::SpeculativeDeploymentSpec) -> Plan {
        plan(spec).unwrap()
    }

    fn existing(name: &str, created: i64) -> ConfigMap {
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
        ConfigMap {
            metadata: ObjectMeta {
                name: Some(name.into()),
                creation_timestamp: Some(Time(jiff::Timestamp::from_second(created).unwrap())),
                ..ObjectMeta::default()
            },
            ..ConfigMap::default()
        }
    }

    fn mounting(name: &str) -> Pod {
        use k8s_openapi::api::core::v1::{ConfigMapVolumeSource, PodSpec, Volume};
        Pod {
            spec: Some(PodSpec {
                volumes: Some(vec![Volume {
                    name: "registry".into(),
                    config_map: Some(ConfigMapVolumeSource {
                        name: name.into(),
                        ..ConfigMapVolumeSource::default()
                    }),
                    ..Volume::default()
                }]),
                ..PodSpec::default()
            }),
            ..Pod::default()
        }
    }

    #[test]
    fn keeps_the_current_the_previous_and_the_mounted_registries() {
        let all = [
            existing("qwen-coder-registry-aaaa", 10),
            existing("qwen-coder-registry-bbbb", 20),
            existing("qwen-coder-registry-cccc", 30),
            existing("qwen-coder-registry-dddd", 40),
            existing("qwen-coder-registry", 5),
            existing("other-registry-eeee", 1),
            existing("qwen-coder-extra", 1),
        ];
        let owner = owner();
        // dddd is current, cccc the previous; bbbb is still mounted.
        let collected = registries_to_collect(
            &owner,
            "qwen-coder-registry-dddd",
            &all,
            &[mounting("qwen-coder-registry-bbbb")],
        );
        assert_eq!(
            collected,
            ["qwen-coder-registry-aaaa", "qwen-coder-registry"]
        );
        // Nothing but the current one: nothing to collect.
        assert!(
            registries_to_collect(&owner, "qwen-coder-registry-dddd", &all[3..4], &[]).is_empty()
        );
    }
}
