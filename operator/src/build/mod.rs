//! Builders: pure functions from a `SpeculativeDeployment` and its [`Plan`]
//! to the Kubernetes objects that serve it. Tested without a cluster; the
//! controller only applies what these return.
//!
//! [`Plan`]: crate::plan::Plan

mod configmap;
mod deployment;
mod monitoring;
mod overrides;
mod service;

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

pub use configmap::{
    configmap, configmap_name, configmap_name_for_sha, registries_to_collect, REGISTRY_FILE,
    REGISTRY_MOUNT_DIR,
};
pub use deployment::{deployment, HTTP_PORT, HTTP_PORT_NAME, REGISTRY_SHA256_ANNOTATION};
pub use monitoring::{pod_disruption_budget, service_monitor, service_monitor_resource};
pub use service::service;

/// Field manager of every server-side apply.
pub const FIELD_MANAGER: &str = "specdec-operator";

/// Identity of one `SpeculativeDeployment` as its children see it.
#[derive(Debug, Clone, PartialEq)]
pub struct Owner {
    /// Name of the resource (and of most children).
    pub name: String,
    /// Its namespace.
    pub namespace: String,
    /// Controller owner reference to put on every child.
    pub reference: OwnerReference,
}

impl Owner {
    /// Labels that select the pods.
    pub fn selector_labels(&self) -> BTreeMap<String, String> {
        BTreeMap::from([
            ("app.kubernetes.io/name".to_string(), "specdec".to_string()),
            ("app.kubernetes.io/instance".to_string(), self.name.clone()),
        ])
    }

    /// Labels of every child.
    pub fn labels(&self) -> BTreeMap<String, String> {
        let mut labels = self.selector_labels();
        labels.insert("app.kubernetes.io/component".into(), "server".into());
        labels.insert(
            "app.kubernetes.io/managed-by".into(),
            FIELD_MANAGER.to_string(),
        );
        labels
    }

    /// The label selector as a string (`k=v,k=v`).
    pub fn selector_string(&self) -> String {
        self.selector_labels()
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Metadata of a child called `name`.
    pub fn child_meta(&self, name: String) -> ObjectMeta {
        ObjectMeta {
            name: Some(name),
            namespace: Some(self.namespace.clone()),
            labels: Some(self.labels()),
            owner_references: Some(vec![self.reference.clone()]),
            ..ObjectMeta::default()
        }
    }

    /// The in-cluster URL of the API.
    pub fn endpoint(&self, port: i32) -> String {
        format!("http://{}.{}.svc:{port}/v1", self.name, self.namespace)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn owner() -> Owner {
        Owner {
            name: "qwen-coder".into(),
            namespace: "llm".into(),
            reference: OwnerReference {
                api_version: "specdec.io/v1alpha1".into(),
                kind: "SpeculativeDeployment".into(),
                name: "qwen-coder".into(),
                uid: "0000-1111".into(),
                controller: Some(true),
                block_owner_deletion: Some(true),
            },
        }
    }

    #[test]
    fn children_carry_the_controller_owner_reference() {
        let meta = owner().child_meta("x".into());
        let refs = meta.owner_references.unwrap();
        assert_eq!(refs[0].uid, "0000-1111");
        assert_eq!(refs[0].controller, Some(true));
        assert_eq!(
            owner().selector_string(),
            "app.kubernetes.io/instance=qwen-coder,app.kubernetes.io/name=specdec"
        );
    }
}
