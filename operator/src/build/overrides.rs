//! `podOverrides`: a pod template the user merges over the one the operator
//! builds, the way `kubectl patch --type strategic` would for these fields:
//! maps merge, lists of keyed items merge by their key, other lists and
//! values replace, and `null` deletes.

use k8s_openapi::api::core::v1::PodTemplateSpec;
use serde_json::Value;

/// Lists whose items merge by a key (Kubernetes' strategic merge keys).
const MERGE_KEYS: &[(&str, &str)] = &[
    ("containers", "name"),
    ("initContainers", "name"),
    ("volumes", "name"),
    ("env", "name"),
    ("imagePullSecrets", "name"),
    ("volumeMounts", "mountPath"),
    ("ports", "containerPort"),
    ("tolerations", "key"),
];

fn merge(base: &mut Value, patch: &Value, field: Option<&str>) {
    match (base, patch) {
        (Value::Object(base), Value::Object(patch)) => {
            for (key, value) in patch {
                if value.is_null() {
                    base.remove(key);
                } else {
                    merge(
                        base.entry(key.clone()).or_insert(Value::Null),
                        value,
                        Some(key),
                    );
                }
            }
        }
        (Value::Array(base), Value::Array(patch))
            if MERGE_KEYS.iter().any(|(f, _)| Some(*f) == field) =>
        {
            let merge_key = MERGE_KEYS
                .iter()
                .find(|(f, _)| Some(*f) == field)
                .map(|(_, k)| *k)
                .unwrap_or("name");
            for item in patch {
                let key = item.get(merge_key);
                match base
                    .iter_mut()
                    .find(|existing| key.is_some() && existing.get(merge_key) == key)
                {
                    Some(existing) => merge(existing, item, None),
                    None => base.push(item.clone()),
                }
            }
        }
        (base, patch) => *base = patch.clone(),
    }
}

/// `template` with `overrides` merged over it; an error names what does not
/// make a pod template.
pub fn apply(template: PodTemplateSpec, overrides: &Value) -> Result<PodTemplateSpec, String> {
    let mut merged = serde_json::to_value(template).map_err(|e| e.to_string())?;
    merge(&mut merged, overrides, None);
    serde_json::from_value(merged).map_err(|e| format!("podOverrides: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn template() -> PodTemplateSpec {
        serde_json::from_value(json!({
            "metadata": {"labels": {"app": "specdec"}},
            "spec": {
                "containers": [{
                    "name": "server", "image": "specdec",
                    "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}],
                    "volumeMounts": [{"name": "cache", "mountPath": "/models"}]
                }],
                "volumes": [{"name": "cache", "emptyDir": {}}],
                "nodeSelector": {"pool": "gpu"}
            }
        }))
        .unwrap()
    }

    #[test]
    fn named_items_merge_by_name_and_the_rest_is_kept() {
        let merged = apply(
            template(),
            &json!({
                "metadata": {"annotations": {"team": "nlp"}},
                "spec": {
                    "containers": [{
                        "name": "server",
                        "env": [{"name": "B", "value": "3"}, {"name": "C", "value": "4"}]
                    }, {"name": "sidecar", "image": "proxy"}],
                    "hostNetwork": true,
                    "nodeSelector": null
                }
            }),
        )
        .unwrap();
        let value = serde_json::to_value(&merged).unwrap();
        assert_eq!(value["metadata"]["labels"]["app"], "specdec");
        assert_eq!(value["metadata"]["annotations"]["team"], "nlp");
        let server = &value["spec"]["containers"][0];
        assert_eq!(server["image"], "specdec");
        assert_eq!(
            server["env"],
            json!([{"name": "A", "value": "1"}, {"name": "B", "value": "3"}, {"name": "C", "value": "4"}])
        );
        assert_eq!(server["volumeMounts"][0]["mountPath"], "/models");
        assert_eq!(value["spec"]["containers"][1]["name"], "sidecar");
        assert_eq!(value["spec"]["hostNetwork"], true);
        assert!(value["spec"].get("nodeSelector").is_none());
    }

    #[test]
    fn what_is_not_a_pod_template_is_refused_by_name() {
        let err = apply(template(), &json!({"spec": {"containers": "server"}})).unwrap_err();
        assert!(err.starts_with("podOverrides:"), "{err}");
    }
}
