//! The ConfigMap holding the backend's registry file.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ConfigMap;

use super::Owner;
use crate::plan::Plan;

/// Key (and file name) of the registry in the ConfigMap.
pub const REGISTRY_FILE: &str = "registry.yaml";
/// Where the ConfigMap is mounted in the server container.
pub const REGISTRY_MOUNT_DIR: &str = "/etc/specdec";

/// Name of the ConfigMap of `owner`.
pub fn configmap_name(owner: &Owner) -> String {
    format!("{}-registry", owner.name)
}

/// The ConfigMap with the registry file, exactly as the backend parses it.
pub fn configmap(owner: &Owner, plan: &Plan) -> ConfigMap {
    ConfigMap {
        metadata: owner.child_meta(configmap_name(owner)),
        data: Some(BTreeMap::from([(
            REGISTRY_FILE.to_string(),
            plan.registry_yaml.clone(),
        )])),
        ..ConfigMap::default()
    }
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
        assert_eq!(cm.metadata.name.as_deref(), Some("qwen-coder-registry"));
        let text = &cm.data.unwrap()[REGISTRY_FILE];
        assert_eq!(RegistryConfig::from_yaml(text).unwrap(), plan.registry);
    }
}
