//! `crds/` is generated from the Rust types; this fails when it is stale.

use std::path::Path;

const CRD_FILE: &str = "crds/speculativedeployments.specdec.io.yaml";

#[test]
fn crds_directory_matches_the_rust_types() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(CRD_FILE);
    let generated = specdec_operator::cli::crd_yaml().expect("the CRD renders");
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "{CRD_FILE} is stale; regenerate it with `cargo run --release -p specdec-operator -- crd > {CRD_FILE}`"
    );
}

#[test]
fn crd_has_the_names_and_rules_users_rely_on() {
    let generated = specdec_operator::cli::crd_yaml().expect("the CRD renders");
    let crd: serde_json::Value = serde_yaml::from_str(&generated).expect("valid YAML");
    assert_eq!(crd["spec"]["group"], "specdec.io");
    assert_eq!(crd["spec"]["scope"], "Namespaced");
    assert_eq!(crd["spec"]["names"]["shortNames"][0], "specdep");
    let version = &crd["spec"]["versions"][0];
    assert_eq!(version["name"], "v1alpha1");
    assert!(version["subresources"]["status"].is_object());
    let columns: Vec<&str> = version["additionalPrinterColumns"]
        .as_array()
        .expect("printer columns")
        .iter()
        .filter_map(|c| c["name"].as_str())
        .collect();
    assert_eq!(columns, ["Ready", "Acceptance", "Endpoint", "Age"]);
    for rule in [
        "drafter names must be unique",
        "a language may be claimed by only one drafter",
        "defaultDrafter must name one of the drafters",
        "model uri must start with https://, pvc:// or file:///",
        "an https:// model source needs sha256",
    ] {
        assert!(generated.contains(rule), "missing rule: {rule}");
    }
}

/// Every property of the schema has a description (users read them with
/// `kubectl explain`).
#[test]
fn every_field_is_documented() {
    fn walk(path: &str, schema: &serde_json::Value, missing: &mut Vec<String>) {
        if let Some(props) = schema["properties"].as_object() {
            for (name, sub) in props {
                let here = format!("{path}.{name}");
                let inherited = matches!(name.as_str(), "apiVersion" | "kind" | "metadata");
                if !inherited && sub["description"].as_str().unwrap_or("").is_empty() {
                    missing.push(here.clone());
                }
                walk(&here, sub, missing);
            }
        }
        if schema["items"].is_object() {
            walk(&format!("{path}[]"), &schema["items"], missing);
        }
    }
    let generated = specdec_operator::cli::crd_yaml().expect("the CRD renders");
    let crd: serde_json::Value = serde_yaml::from_str(&generated).expect("valid YAML");
    let schema = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
    let mut missing = Vec::new();
    walk("", schema, &mut missing);
    assert!(
        missing.is_empty(),
        "fields without description: {missing:?}"
    );
}
