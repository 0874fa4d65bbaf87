//! Objects that exist only where they apply: a PodDisruptionBudget when more
//! than one pod serves, and a Prometheus Operator ServiceMonitor when the
//! cluster has that CRD and the spec asks for it.

use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
use serde_json::json;

use super::{Owner, HTTP_PORT_NAME};
use crate::crd::SpeculativeDeploymentSpec;

/// Group, version and kind of the Prometheus Operator's ServiceMonitor.
pub fn service_monitor_resource() -> ApiResource {
    ApiResource::from_gvk(&GroupVersionKind::gvk(
        "monitoring.coreos.com",
        "v1",
        "ServiceMonitor",
    ))
}

/// A budget that keeps all but one pod up during voluntary disruptions;
/// `None` when fewer than two replicas are asked for (a budget would then
/// block node drains forever).
pub fn pod_disruption_budget(
    owner: &Owner,
    spec: &SpeculativeDeploymentSpec,
) -> Option<PodDisruptionBudget> {
    (spec.replicas >= 2).then(|| PodDisruptionBudget {
        metadata: owner.child_meta(owner.name.clone()),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(LabelSelector {
                match_labels: Some(owner.selector_labels()),
                ..LabelSelector::default()
            }),
            ..PodDisruptionBudgetSpec::default()
        }),
        ..PodDisruptionBudget::default()
    })
}

/// The ServiceMonitor scraping the pods' `/metrics`; `None` when the spec
/// turns monitoring off.
pub fn service_monitor(owner: &Owner, spec: &SpeculativeDeploymentSpec) -> Option<DynamicObject> {
    if !spec.monitoring.service_monitor {
        return None;
    }
    let resource = service_monitor_resource();
    let mut object = DynamicObject::new(&owner.name, &resource).within(&owner.namespace);
    object.metadata = owner.child_meta(owner.name.clone());
    // The operator's own labels win: they select what it owns.
    let mut labels = spec.monitoring.labels.clone();
    labels.extend(object.metadata.labels.take().unwrap_or_default());
    object.metadata.labels = Some(labels);
    object.data = json!({
        "spec": {
            "selector": { "matchLabels": owner.selector_labels() },
            "namespaceSelector": { "matchNames": [owner.namespace] },
            "endpoints": [{
                "port": HTTP_PORT_NAME,
                "path": "/metrics",
                "interval": spec.monitoring.interval,
            }],
        }
    });
    Some(object)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::tests::owner;
    use crate::plan::tests::sample_spec;

    #[test]
    fn the_monitor_carries_the_specs_labels() {
        let mut spec = sample_spec();
        spec.monitoring.labels = [("release".to_string(), "kube-prometheus".to_string())].into();
        let monitor = service_monitor(&owner(), &spec).unwrap();
        let labels = monitor.metadata.labels.unwrap();
        assert_eq!(labels["release"], "kube-prometheus");
        assert_eq!(labels["app.kubernetes.io/instance"], "qwen-coder");
    }

    #[test]
    fn budget_only_with_two_or_more_replicas() {
        let mut spec = sample_spec();
        spec.replicas = 2;
        let pdb = pod_disruption_budget(&owner(), &spec).unwrap();
        assert_eq!(pdb.spec.unwrap().max_unavailable, Some(IntOrString::Int(1)));
        spec.replicas = 1;
        assert!(pod_disruption_budget(&owner(), &spec).is_none());
    }

    #[test]
    fn service_monitor_scrapes_the_http_port() {
        let mut spec = sample_spec();
        let sm = service_monitor(&owner(), &spec).unwrap();
        assert_eq!(sm.types.as_ref().unwrap().kind, "ServiceMonitor");
        assert_eq!(sm.data["spec"]["endpoints"][0]["port"], "http");
        assert_eq!(sm.data["spec"]["endpoints"][0]["interval"], "15s");
        spec.monitoring.service_monitor = false;
        assert!(service_monitor(&owner(), &spec).is_none());
    }
}
