//! The images that `scripts/images` tags are the ones the operator defaults
//! to, the sample SpeculativeDeployment names and the Helm chart installs:
//! a user who builds and pushes them gets a deployment that pulls them.

use std::path::{Path, PathBuf};

use specdec_operator::cli::{DEFAULT_CUDA_SERVER_IMAGE, DEFAULT_SERVER_IMAGE};

const VERSION: &str = env!("CARGO_PKG_VERSION");

fn repo_file(path: &str) -> (PathBuf, String) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    (path, text)
}

/// The tag `scripts/images` gives image `name`, with its `$version` filled in.
fn tag_of_scripts_images(name: &str) -> String {
    let (path, script) = repo_file("scripts/images");
    let prefix = format!("[{name}]=\"");
    let line = script
        .lines()
        .map(str::trim)
        .find_map(|l| l.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("{} tags no image {name}", path.display()));
    line.trim_end_matches('"').replace("$version", VERSION)
}

#[test]
fn scripts_images_tags_what_the_operator_defaults_to() {
    assert_eq!(tag_of_scripts_images("cpu"), DEFAULT_SERVER_IMAGE);
    assert_eq!(tag_of_scripts_images("cuda"), DEFAULT_CUDA_SERVER_IMAGE);
}

#[test]
fn the_sample_names_the_cuda_image_of_this_version() {
    let (_, sample) = repo_file("examples/speculativedeployment.yaml");
    let sample: serde_json::Value = serde_yaml::from_str(&sample).expect("valid YAML");
    assert_eq!(sample["spec"]["gpus"], 1, "the sample asks for GPUs");
    assert_eq!(sample["spec"]["image"], DEFAULT_CUDA_SERVER_IMAGE);
}

#[test]
fn the_chart_installs_the_operator_image_of_this_version() {
    let (_, values) = repo_file("charts/specdec-operator/values.yaml");
    let values: serde_json::Value = serde_yaml::from_str(&values).expect("valid YAML");
    let (_, chart) = repo_file("charts/specdec-operator/Chart.yaml");
    let chart: serde_json::Value = serde_yaml::from_str(&chart).expect("valid YAML");
    assert_eq!(chart["appVersion"], VERSION);
    let tag = values["image"]["tag"].as_str().unwrap_or_default();
    let tag = if tag.is_empty() { VERSION } else { tag };
    let repository = values["image"]["repository"].as_str().unwrap_or_default();
    assert_eq!(
        format!("{repository}:{tag}"),
        tag_of_scripts_images("operator")
    );
}
