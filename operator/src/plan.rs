//! Validation: a pure function from the spec to everything the builders need
//! (the registry file and where each model comes from), or a clear reason why
//! the spec cannot be served. Catches what the schema cannot: rules that only
//! the backend's registry format knows, and file-name clashes in the cache.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use sha2::{Digest, Sha256};
use specdec_backend::config::{
    DraftParams, DrafterConfig, DrafterKind as RegistryDrafterKind, RegistryConfig, TargetConfig,
};

use crate::crd::{DrafterKind, ModelSource as ModelSourceSpec, SpeculativeDeploymentSpec};
use crate::model_source::{ModelSource, NODE_SOURCES_DIR, PVC_SOURCES_DIR};

/// GPU layers set for target and drafters when the pods get GPUs: all of them.
pub const ALL_LAYERS: u32 = 999;

/// Why a spec cannot be served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidSpec(pub String);

impl fmt::Display for InvalidSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A model the init containers download into the model cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Download {
    /// The URL.
    pub url: String,
    /// Expected SHA-256.
    pub sha256: String,
    /// File name in the model cache.
    pub file_name: String,
    /// Declared size in bytes.
    pub size_bytes: Option<u64>,
}

/// A file on the node mounted into the pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeFile {
    /// Absolute path on the node.
    pub host_path: String,
    /// Where it appears in the pod.
    pub mount_path: String,
}

/// Everything derived from a valid spec.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// The registry the pods run with (model paths as seen in the pod;
    /// downloaded models relative to the model cache).
    pub registry: RegistryConfig,
    /// Its YAML, as stored in the ConfigMap.
    pub registry_yaml: String,
    /// SHA-256 of `registry_yaml`; a change rolls the pods.
    pub registry_sha256: String,
    /// Models to download, one per file name.
    pub downloads: Vec<Download>,
    /// Claims holding `pvc://` models, sorted.
    pub source_claims: Vec<String>,
    /// Node files holding `file:///` models.
    pub node_files: Vec<NodeFile>,
    /// Size limit (and ephemeral-storage request) of an emptyDir model
    /// cache: the spec's, else one that fits the declared model sizes.
    pub cache_size_limit: Option<Quantity>,
}

impl Plan {
    /// Every PersistentVolumeClaim the pods need: the model cache's and the
    /// sources'.
    pub fn required_claims<'a>(
        &'a self,
        spec: &'a SpeculativeDeploymentSpec,
    ) -> impl Iterator<Item = &'a str> {
        spec.cache_claim()
            .into_iter()
            .chain(self.source_claims.iter().map(String::as_str))
    }
}

/// Whether the model cache `claim` can be written by `replicas` pods at
/// once: more than one needs ReadWriteMany (pods land on several nodes).
pub fn shared_cache_check(
    replicas: i32,
    claim: &k8s_openapi::api::core::v1::PersistentVolumeClaim,
) -> Result<(), String> {
    let modes = claim
        .spec
        .as_ref()
        .and_then(|s| s.access_modes.clone())
        .unwrap_or_default();
    if replicas <= 1 || modes.iter().any(|m| m == "ReadWriteMany") {
        return Ok(());
    }
    let name = claim.metadata.name.as_deref().unwrap_or_default();
    Err(format!(
        "model cache PersistentVolumeClaim `{name}` has access modes [{}], but {replicas} replicas write to it from several nodes: use a ReadWriteMany claim, one replica, or an emptyDir cache",
        modes.join(", ")
    ))
}

#[derive(Default)]
struct Sources {
    downloads: BTreeMap<String, Download>,
    claims: Vec<String>,
    node_files: Vec<NodeFile>,
}

impl Sources {
    /// Record a source and return the model path the registry names.
    fn add(&mut self, owner: &str, spec: &ModelSourceSpec) -> Result<PathBuf, InvalidSpec> {
        let source = ModelSource::parse(&spec.uri, spec.sha256.as_deref())
            .map_err(|e| InvalidSpec(format!("{owner}: {e}")))?;
        match source {
            ModelSource::Https {
                url,
                sha256,
                file_name,
            } => {
                let size_bytes = spec
                    .size_bytes
                    .map(|n| {
                        u64::try_from(n)
                            .map_err(|_| InvalidSpec(format!("{owner}: sizeBytes {n} is negative")))
                    })
                    .transpose()?;
                if let Some(existing) = self.downloads.get(&file_name) {
                    if existing.url != url
                        || existing.sha256 != sha256
                        || existing.size_bytes != size_bytes
                    {
                        return Err(InvalidSpec(format!(
                            "{owner}: file name `{file_name}` is also used by {} with another url, sha256 or sizeBytes; the model cache holds one file per name",
                            existing.url
                        )));
                    }
                } else {
                    self.downloads.insert(
                        file_name.clone(),
                        Download {
                            url,
                            sha256,
                            file_name: file_name.clone(),
                            size_bytes,
                        },
                    );
                }
                Ok(PathBuf::from(file_name))
            }
            ModelSource::Pvc { claim, path } => {
                if !self.claims.contains(&claim) {
                    self.claims.push(claim.clone());
                }
                Ok(PathBuf::from(format!("{PVC_SOURCES_DIR}/{claim}/{path}")))
            }
            ModelSource::File { path } => {
                let index = match self.node_files.iter().position(|f| f.host_path == path) {
                    Some(i) => i,
                    None => {
                        let file_name = path.rsplit('/').next().unwrap_or_default();
                        let i = self.node_files.len();
                        self.node_files.push(NodeFile {
                            host_path: path.clone(),
                            mount_path: format!("{NODE_SOURCES_DIR}/{i}/{file_name}"),
                        });
                        i
                    }
                };
                Ok(PathBuf::from(&self.node_files[index].mount_path))
            }
        }
    }
}

fn non_negative(value: i32, owner: &str, field: &str) -> Result<u32, InvalidSpec> {
    u32::try_from(value).map_err(|_| InvalidSpec(format!("{owner}: {field} {value} is negative")))
}

/// Validate a spec and derive the plan.
pub fn plan(spec: &SpeculativeDeploymentSpec) -> Result<Plan, InvalidSpec> {
    let gpu_layers = if spec.gpus > 0 { ALL_LAYERS } else { 0 };
    let mut sources = Sources::default();
    let target_model = sources.add("target", &spec.target.model)?;
    let mut drafters = Vec::with_capacity(spec.drafters.len());
    for d in &spec.drafters {
        let owner = format!("drafter `{}`", d.name);
        let (kind, model) = match (d.kind, &d.model) {
            (DrafterKind::Model, Some(source)) => (
                RegistryDrafterKind::Model,
                Some(sources.add(&owner, source)?),
            ),
            (DrafterKind::Model, None) => {
                return Err(InvalidSpec(format!("{owner} of kind model needs model")))
            }
            (DrafterKind::Ngram, None) => (RegistryDrafterKind::Ngram, None),
            (DrafterKind::Ngram, Some(_)) => {
                return Err(InvalidSpec(format!("{owner} of kind ngram takes no model")))
            }
        };
        drafters.push(DrafterConfig {
            name: d.name.clone(),
            kind,
            languages: d.languages.clone(),
            model,
            gpu_layers: if kind == RegistryDrafterKind::Model {
                gpu_layers
            } else {
                0
            },
            draft: DraftParams {
                max: non_negative(d.draft.max, &owner, "draft.max")?,
                min: non_negative(d.draft.min, &owner, "draft.min")?,
                p_min: d.draft.p_min,
                adaptive: d.draft.adaptive,
            },
        });
    }
    let registry = RegistryConfig {
        target: TargetConfig {
            model: target_model,
            context: non_negative(spec.target.context, "target", "context")?,
            gpu_layers,
        },
        drafters,
        default: spec.default_drafter.clone(),
    };
    registry.validate().map_err(InvalidSpec)?;
    if spec.replicas < 0 {
        return Err(InvalidSpec(format!(
            "replicas {} is negative",
            spec.replicas
        )));
    }
    let registry_yaml = registry
        .to_yaml()
        .map_err(|e| InvalidSpec(format!("cannot render the registry: {e}")))?;
    let registry_sha256 = hex::encode(Sha256::digest(registry_yaml.as_bytes()));
    let downloads: Vec<Download> = sources.downloads.into_values().collect();
    let cache_size_limit = cache_size_limit(spec, &downloads)?;
    Ok(Plan {
        registry,
        registry_yaml,
        registry_sha256,
        downloads,
        source_claims: sources.claims,
        node_files: sources.node_files,
        cache_size_limit,
    })
}

/// Room an emptyDir cache sized from the models keeps beyond them: the
/// checksum records and lock files, and the file system's own overhead.
fn cache_headroom(models: u64) -> u64 {
    models / 50 + (64 << 20)
}

/// The size limit of an emptyDir model cache: the spec's (refused when it
/// cannot hold the declared models), else derived from the declared sizes
/// when every downloaded model has one. A claim-backed cache has none.
fn cache_size_limit(
    spec: &SpeculativeDeploymentSpec,
    downloads: &[Download],
) -> Result<Option<Quantity>, InvalidSpec> {
    if spec.cache_claim().is_some() {
        return Ok(None);
    }
    let declared: Option<u64> = if downloads.is_empty() {
        None
    } else {
        downloads.iter().map(|d| d.size_bytes).sum()
    };
    let given = spec
        .model_cache
        .as_ref()
        .and_then(|c| c.empty_dir.as_ref())
        .and_then(|e| e.size_limit.clone());
    match (given, declared) {
        (Some(limit), Some(models)) => {
            if quantity_bytes(&limit.0).is_some_and(|bytes| bytes < models as f64) {
                return Err(InvalidSpec(format!(
                    "modelCache.emptyDir.sizeLimit {} cannot hold the {models} bytes ({:.2} GiB) of the models downloaded into it",
                    limit.0,
                    models as f64 / f64::from(1u32 << 30)
                )));
            }
            Ok(Some(limit))
        }
        (Some(limit), None) => Ok(Some(limit)),
        (None, Some(models)) => {
            let mebibytes = (models + cache_headroom(models)).div_ceil(1 << 20);
            Ok(Some(Quantity(format!("{mebibytes}Mi"))))
        }
        (None, None) => Ok(None),
    }
}

/// Bytes of a Kubernetes quantity such as `20Gi`, `1.5G` or `1000000`;
/// `None` for forms not used for sizes (exponents, milli-units), which the
/// API server has accepted and are then left unchecked.
pub fn quantity_bytes(quantity: &str) -> Option<f64> {
    let split = quantity
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(quantity.len());
    let (number, suffix) = quantity.split_at(split);
    let number: f64 = number.parse().ok()?;
    let scale = match suffix {
        "" => 1.0,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024f64,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        _ => return None,
    };
    Some(number * scale)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The sample users copy, parsed; tests build on it.
    pub(crate) fn sample_spec() -> SpeculativeDeploymentSpec {
        let text = include_str!("../../examples/speculativedeployment.yaml");
        let object: crate::crd::SpeculativeDeployment =
            serde_yaml::from_str(text).expect("the sample parses");
        object.spec
    }

    #[test]
    fn a_cache_shared_by_replicas_must_be_read_write_many() {
        use k8s_openapi::api::core::v1::{PersistentVolumeClaim, PersistentVolumeClaimSpec};
        let claim = |mode: &str| PersistentVolumeClaim {
            metadata: kube::api::ObjectMeta {
                name: Some("cache".into()),
                ..Default::default()
            },
            spec: Some(PersistentVolumeClaimSpec {
                access_modes: Some(vec![mode.into()]),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert!(shared_cache_check(1, &claim("ReadWriteOnce")).is_ok());
        assert!(shared_cache_check(3, &claim("ReadWriteMany")).is_ok());
        let err = shared_cache_check(2, &claim("ReadWriteOnce")).unwrap_err();
        assert!(
            err.contains("[ReadWriteOnce]") && err.contains("ReadWriteMany"),
            "{err}"
        );
    }

    #[test]
    fn sample_plans_downloads_and_relative_registry_paths() {
        let plan = plan(&sample_spec()).unwrap();
        assert_eq!(plan.downloads.len(), 2);
        assert!(plan.registry.target.model.is_relative());
        assert_eq!(
            plan.registry.target.model,
            PathBuf::from(specdec_backend::models::DEFAULT_TARGET_FILE)
        );
        // The backend parses exactly what the operator renders.
        let reparsed = RegistryConfig::from_yaml(&plan.registry_yaml).unwrap();
        assert_eq!(reparsed, plan.registry);
        assert_eq!(plan.registry_sha256.len(), 64);
    }

    #[test]
    fn gpus_offload_every_layer() {
        let mut spec = sample_spec();
        spec.gpus = 1;
        let plan = plan(&spec).unwrap();
        assert_eq!(plan.registry.target.gpu_layers, ALL_LAYERS);
        spec.gpus = 0;
        let cpu = super::plan(&spec).unwrap();
        assert_eq!(cpu.registry.target.gpu_layers, 0);
        assert_ne!(cpu.registry_sha256, plan.registry_sha256);
    }

    #[test]
    fn same_file_name_with_another_checksum_is_refused() {
        let mut spec = sample_spec();
        let mut other = spec.target.model.clone();
        other.sha256 = Some("1".repeat(64));
        spec.drafters[0].model = Some(other);
        let err = plan(&spec).unwrap_err().0;
        assert!(err.contains("one file per name"), "{err}");
    }

    #[test]
    fn an_empty_dir_cache_is_sized_from_the_declared_models() {
        use crate::crd::{EmptyDirCache, ModelCacheSpec};
        let mut spec = sample_spec();
        spec.model_cache = Some(ModelCacheSpec {
            empty_dir: Some(EmptyDirCache::default()),
            persistent_volume_claim: None,
        });
        // The sample declares 1117320768 + 491400064 bytes: 1534.2 MiB, plus
        // 2 % and 64 MiB of headroom.
        let models = 1_117_320_768u64 + 491_400_064;
        let limit = plan(&spec).unwrap().cache_size_limit.unwrap().0;
        assert_eq!(limit, "1629Mi");
        let bytes = quantity_bytes(&limit).unwrap();
        assert!(bytes >= (models + cache_headroom(models)) as f64);
        // One model without a size: no limit can be derived.
        spec.drafters[0].model.as_mut().unwrap().size_bytes = None;
        assert_eq!(plan(&spec).unwrap().cache_size_limit, None);
    }

    #[test]
    fn a_given_cache_limit_is_kept_unless_the_models_do_not_fit() {
        use crate::crd::{EmptyDirCache, ModelCacheSpec};
        let mut spec = sample_spec();
        let with_limit = |limit: &str| {
            Some(ModelCacheSpec {
                empty_dir: Some(EmptyDirCache {
                    size_limit: Some(Quantity(limit.into())),
                }),
                persistent_volume_claim: None,
            })
        };
        spec.model_cache = with_limit("4Gi");
        assert_eq!(
            plan(&spec).unwrap().cache_size_limit,
            Some(Quantity("4Gi".into()))
        );
        spec.model_cache = with_limit("1G");
        let err = plan(&spec).unwrap_err().0;
        assert!(
            err.contains("sizeLimit 1G cannot hold the 1608720832 bytes (1.50 GiB)"),
            "{err}"
        );
        // A cache on a claim has no size limit of ours.
        spec.model_cache = Some(ModelCacheSpec {
            empty_dir: None,
            persistent_volume_claim: Some(crate::crd::PvcCache {
                claim_name: "models".into(),
            }),
        });
        assert_eq!(plan(&spec).unwrap().cache_size_limit, None);
    }

    #[test]
    fn quantities_in_bytes() {
        assert_eq!(quantity_bytes("20Gi"), Some(20.0 * 1024f64.powi(3)));
        assert_eq!(quantity_bytes("1.5G"), Some(1.5e9));
        assert_eq!(quantity_bytes("1000"), Some(1000.0));
        assert_eq!(quantity_bytes("512Ki"), Some(512.0 * 1024.0));
        assert_eq!(quantity_bytes("1e9"), None);
        assert_eq!(quantity_bytes("100m"), None);
        assert_eq!(quantity_bytes("Gi"), None);
    }

    #[test]
    fn pvc_and_node_sources_map_to_mounts() {
        let mut spec = sample_spec();
        spec.target.model = ModelSourceSpec {
            uri: "pvc://models/qwen/target.gguf".into(),
            sha256: None,
            size_bytes: None,
        };
        spec.drafters[0].model = Some(ModelSourceSpec {
            uri: "file:///var/lib/models/drafter.gguf".into(),
            sha256: None,
            size_bytes: None,
        });
        let plan = plan(&spec).unwrap();
        assert_eq!(plan.source_claims, vec!["models".to_string()]);
        assert_eq!(
            plan.registry.target.model,
            PathBuf::from("/sources/pvc/models/qwen/target.gguf")
        );
        assert_eq!(plan.node_files[0].host_path, "/var/lib/models/drafter.gguf");
        assert_eq!(
            plan.registry.drafters[0].model.as_deref(),
            Some(std::path::Path::new("/sources/node/0/drafter.gguf"))
        );
        assert!(plan.downloads.is_empty());
    }

    #[test]
    fn backend_rules_are_enforced_too() {
        let mut spec = sample_spec();
        spec.drafters[0].languages = vec!["de".into(), "de".into()];
        let err = plan(&spec).unwrap_err().0;
        assert!(err.contains("lists language `de` twice"), "{err}");
        let mut spec = sample_spec();
        spec.default_drafter = Some("missing".into());
        assert!(plan(&spec).unwrap_err().0.contains("not defined"));
    }
}
