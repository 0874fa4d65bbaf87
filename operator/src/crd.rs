//! The `SpeculativeDeployment` custom resource: its spec, status and the
//! schema rules the API server enforces at `kubectl apply`.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::DeploymentStrategy;
use k8s_openapi::api::core::v1::{
    Affinity, EnvFromSource, EnvVar, LocalObjectReference, ResourceRequirements, Toleration,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

/// API group of the resource.
pub const GROUP: &str = "specdec.io";

/// A target model and per-language drafters, served by specdec with
/// speculative decoding.
// Each `printcolumn(...)` repeats `type_`; clippy mistakes them for one attribute.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[kube(
    group = "specdec.io",
    version = "v1alpha1",
    kind = "SpeculativeDeployment",
    namespaced,
    shortname = "specdep",
    category = "specdec",
    status = "SpeculativeDeploymentStatus",
    doc = "A target model and per-language drafters served by specdec with speculative decoding.",
    scale(
        spec_replicas_path = ".spec.replicas",
        status_replicas_path = ".status.replicas",
        label_selector_path = ".status.selector"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.ready",
        description = "Ready replicas / desired replicas"
    ),
    printcolumn(
        name = "Acceptance",
        type_ = "string",
        json_path = ".status.acceptanceRate",
        description = "Share of drafted tokens the target accepted, over all languages"
    ),
    printcolumn(
        name = "Endpoint",
        type_ = "string",
        json_path = ".status.endpoint",
        priority = 1,
        description = "In-cluster URL of the OpenAI-compatible API"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[x_kube(
    validation = Rule::new("self.drafters.all(d, self.drafters.exists_one(e, e.name == d.name))").message("drafter names must be unique"),
    validation = Rule::new("self.drafters.all(a, self.drafters.all(b, a.name == b.name || !a.languages.exists(l, l in b.languages)))").message("a language may be claimed by only one drafter"),
    validation = Rule::new("!has(self.defaultDrafter) || self.drafters.exists(d, d.name == self.defaultDrafter)").message("defaultDrafter must name one of the drafters"),
    validation = Rule::new("!has(self.resources) || ((!has(self.resources.limits) || !('nvidia.com/gpu' in self.resources.limits)) && (!has(self.resources.requests) || !('nvidia.com/gpu' in self.resources.requests)))").message("request GPUs with gpus, not resources: gpus also offloads the layers to them and tolerates the GPU taint"),
)]
#[serde(rename_all = "camelCase")]
pub struct SpeculativeDeploymentSpec {
    /// The target model whose output is served; drafters only make it faster.
    pub target: TargetSpec,
    /// Drafters and the languages (ISO 639-1 codes, or `*`) they serve. The
    /// item limits bound the cost of the CEL rules, which the API server checks.
    #[serde(default)]
    #[schemars(
        length(max = 16),
        extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"])
    )]
    pub drafters: Vec<DrafterSpec>,
    /// Drafter for requests whose language no drafter claims. Without it such
    /// requests are decoded without speculation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 40))]
    pub default_drafter: Option<String>,
    /// Number of server pods.
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 0, max = 1000))]
    pub replicas: i32,
    /// Container image of the specdec backend (a CUDA build when GPUs are
    /// requested). Unset: the operator's default for its own version, chosen
    /// at each reconcile (and so upgraded with the operator), never stored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512))]
    pub image: Option<String>,
    /// When the kubelet pulls the image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_policy: Option<PullPolicy>,
    /// Secrets holding credentials for the image's registry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("x-kubernetes-list-type" = "atomic"))]
    pub image_pull_secrets: Option<Vec<LocalObjectReference>>,
    /// Extra environment of the server container (say `SPECDEC_*` settings
    /// or a proxy); it overrides what the operator sets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("x-kubernetes-list-type" = "atomic"))]
    pub env: Option<Vec<EnvVar>>,
    /// Environment of the server container from ConfigMaps and Secrets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("x-kubernetes-list-type" = "atomic"))]
    pub env_from: Option<Vec<EnvFromSource>>,
    /// API keys the pods require on `/v1/*` (`Authorization: Bearer KEY`);
    /// without them anyone who reaches the Service may use the model.
    /// Health, readiness and metrics stay open.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_keys: Option<ApiKeysSecret>,
    /// Certificate authorities that `https://` model downloads trust, in
    /// place of the public web's roots: for a model server whose
    /// certificate a private CA signed.
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "modelCA")]
    pub model_ca: Option<CaBundleConfigMap>,
    /// PriorityClass of the pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub priority_class_name: Option<String>,
    /// A pod template merged over the one the operator builds, as a
    /// strategic merge patch: maps merge, lists of named items (containers,
    /// volumes, env, mounts, ports) merge by name, other lists replace. The
    /// escape hatch for what the spec has no field for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "free_form_object")]
    pub pod_overrides: Option<serde_json::Value>,
    /// NVIDIA GPUs per pod (`nvidia.com/gpu`). With GPUs, every layer is
    /// offloaded and pods tolerate the `nvidia.com/gpu` taint.
    #[serde(default)]
    #[schemars(range(min = 0, max = 16))]
    pub gpus: i32,
    /// How the Deployment replaces its pods on a change. Unset: Kubernetes'
    /// rolling update (25 % surge) without GPUs; with `gpus`, no surge and
    /// one pod down at a time, since a surge pod waits for GPUs a full pool
    /// does not have and the rollout would never progress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strategy: Option<DeploymentStrategy>,
    /// CPU and memory of the server container; `gpus` adds the GPU limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Node labels the pods must match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<BTreeMap<String, String>>,
    /// Taints the pods tolerate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tolerations: Option<Vec<Toleration>>,
    /// Node and pod affinity of the pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
    /// Where `https://` models are downloaded to (default: an emptyDir).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_cache: Option<ModelCacheSpec>,
    /// The Service in front of the pods.
    #[serde(default)]
    pub service: ServiceSpec,
    /// Prometheus scraping.
    #[serde(default)]
    pub monitoring: MonitoringSpec,
    /// Server settings.
    #[serde(default)]
    pub server: ServerSpec,
}

/// A Secret of the namespace holding API keys.
#[derive(KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ApiKeysSecret {
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub secret_name: String,
    /// Its item holding the keys, one per line (`#` comments allowed).
    #[serde(default = "default_api_keys_item")]
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

fn default_api_keys_item() -> String {
    "api-keys".into()
}

/// A ConfigMap of the namespace holding PEM certificates.
#[derive(KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct CaBundleConfigMap {
    /// Name of the ConfigMap.
    #[schemars(length(min = 1, max = 253))]
    pub config_map_name: String,
    /// Its item holding the certificates (PEM).
    #[serde(default = "default_ca_bundle_item")]
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

fn default_ca_bundle_item() -> String {
    "ca.crt".into()
}

impl SpeculativeDeploymentSpec {
    /// The PersistentVolumeClaim of the model cache, if it is one.
    pub fn cache_claim(&self) -> Option<&str> {
        self.model_cache
            .as_ref()
            .and_then(|c| c.persistent_volume_claim.as_ref())
            .map(|p| p.claim_name.as_str())
    }
}

fn default_replicas() -> i32 {
    1
}

/// When the kubelet pulls an image.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum PullPolicy {
    /// On every container start.
    Always,
    /// When the node does not have it.
    IfNotPresent,
    /// Never: the node must have it.
    Never,
}

impl PullPolicy {
    /// The name Kubernetes uses.
    pub fn as_str(self) -> &'static str {
        match self {
            PullPolicy::Always => "Always",
            PullPolicy::IfNotPresent => "IfNotPresent",
            PullPolicy::Never => "Never",
        }
    }
}

/// An object of any fields, kept as given (pruning would drop them).
fn free_form_object(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true,
    })
}

/// Where a model file comes from.
#[derive(KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[x_kube(
    validation = Rule::new("self.uri.startsWith('https://') || self.uri.startsWith('pvc://') || self.uri.startsWith('file:///')").message("model uri must start with https://, pvc:// or file:///"),
    validation = Rule::new("!self.uri.startsWith('https://') || has(self.sha256)").message("an https:// model source needs sha256"),
    validation = Rule::new("self.uri.startsWith('https://') || !has(self.sizeBytes)").message("sizeBytes is for https:// model sources, which are downloaded"),
    validation = Rule::new("!self.uri.startsWith('pvc://') || self.uri.matches('^pvc://[a-z0-9]([-a-z0-9.]*[a-z0-9])?/[^/].*$')").message("a pvc:// model source is pvc://CLAIM/PATH"),
    validation = Rule::new("self.uri.matches('^[^?#]*[.]gguf([?#].*)?$')").message("model uri must name a .gguf file"),
)]
#[serde(rename_all = "camelCase")]
pub struct ModelSource {
    /// `https://HOST/PATH.gguf` (downloaded by an init container and checked
    /// against `sha256`), `pvc://CLAIM/PATH.gguf` (a file on a
    /// PersistentVolumeClaim of the namespace, mounted read-only) or
    /// `file:///PATH.gguf` (a file already on the node, mounted as a hostPath
    /// volume: only a namespace whose Pod Security level is `privileged`
    /// admits such pods; elsewhere the object turns Degraded with the
    /// admission's refusal).
    #[schemars(length(min = 1, max = 2048))]
    pub uri: String,
    /// Lowercase hex SHA-256 of the file; required for `https://`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9a-f]{64}$"))]
    pub sha256: Option<String>,
    /// Size of the file in bytes (`https://` only). A download is stopped
    /// past it and refused if it ends short. When every downloaded model
    /// declares its size, an emptyDir model cache is limited, and requested
    /// as ephemeral storage, to fit them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub size_bytes: Option<i64>,
}

/// The target model.
#[derive(KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TargetSpec {
    /// Where the target's GGUF file comes from.
    pub model: ModelSource,
    /// Context length in tokens.
    #[serde(default = "default_context")]
    #[schemars(range(min = 16, max = 1048576))]
    pub context: i32,
}

fn default_context() -> i32 {
    specdec_backend::config::DEFAULT_CONTEXT as i32
}

/// How a drafter proposes tokens.
#[derive(
    schemars::JsonSchema, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default,
)]
#[serde(rename_all = "lowercase")]
pub enum DrafterKind {
    /// A GGUF model sharing the target's tokenizer.
    #[default]
    Model,
    /// Model-free prompt lookup (n-gram).
    Ngram,
}

/// One drafter.
#[derive(KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[x_kube(
    validation = Rule::new("self.kind == 'ngram' ? !has(self.model) : has(self.model)").message("a drafter of kind model needs model; kind ngram takes none"),
)]
#[serde(rename_all = "camelCase")]
pub struct DrafterSpec {
    /// Unique name (a DNS label), used in routing, metrics and responses.
    #[schemars(
        length(min = 1, max = 40),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub name: String,
    /// `model` (a GGUF drafter) or `ngram` (prompt lookup, no model).
    #[serde(default)]
    pub kind: DrafterKind,
    /// ISO 639-1 codes of the input languages this drafter serves, or `*`.
    #[serde(default)]
    #[schemars(
        length(max = 64),
        inner(regex(pattern = r"^([a-z]{2}|\*)$"), length(min = 1, max = 2)),
        extend("x-kubernetes-list-type" = "set")
    )]
    pub languages: Vec<String>,
    /// Where the drafter's GGUF file comes from (kind `model` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<ModelSource>,
    /// Draft controls.
    #[serde(default)]
    pub draft: DraftSpec,
}

/// Per-round draft controls.
#[derive(KubeSchema, Serialize, Deserialize, Debug, Clone, Copy, PartialEq)]
#[x_kube(validation = Rule::new("self.min <= self.max").message("draft.min must not exceed draft.max"))]
#[serde(rename_all = "camelCase")]
pub struct DraftSpec {
    /// Most tokens drafted per round.
    #[serde(default = "default_draft_max")]
    #[schemars(range(min = 0, max = 64))]
    pub max: i32,
    /// Fewer drafted tokens than this and the round decodes without speculation.
    #[serde(default)]
    #[schemars(range(min = 0, max = 64))]
    pub min: i32,
    /// Stop drafting when the drafter's top probability falls below this.
    #[serde(default)]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub p_min: f32,
    /// Choose each round's draft length, from 0 (plain decoding) to max,
    /// online from measured acceptance and costs; false drafts max every round.
    #[serde(default = "default_adaptive")]
    pub adaptive: bool,
}

fn default_draft_max() -> i32 {
    specdec_backend::config::DraftParams::default().max as i32
}

fn default_adaptive() -> bool {
    specdec_backend::config::DraftParams::default().adaptive
}

impl Default for DraftSpec {
    fn default() -> Self {
        Self {
            max: default_draft_max(),
            min: 0,
            p_min: 0.0,
            adaptive: default_adaptive(),
        }
    }
}

/// Storage for downloaded models; exactly one of the two.
#[derive(KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[x_kube(validation = Rule::new("has(self.emptyDir) != has(self.persistentVolumeClaim)").message("modelCache takes exactly one of emptyDir and persistentVolumeClaim"))]
#[serde(rename_all = "camelCase")]
pub struct ModelCacheSpec {
    /// A per-pod emptyDir (models are downloaded again by every new pod).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub empty_dir: Option<EmptyDirCache>,
    /// A PersistentVolumeClaim shared by the pods (ReadWriteMany when
    /// replicas > 1); downloads survive pod restarts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub persistent_volume_claim: Option<PvcCache>,
}

/// An emptyDir model cache.
#[derive(KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct EmptyDirCache {
    /// Size limit of the emptyDir, also requested as ephemeral storage.
    /// Default: the downloaded models' declared sizes (`sizeBytes`) with
    /// some headroom, when every one declares it. A limit below their total
    /// is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_limit: Option<Quantity>,
}

/// A PersistentVolumeClaim model cache.
#[derive(KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PvcCache {
    /// Name of an existing claim in the namespace.
    #[schemars(length(min = 1, max = 253))]
    pub claim_name: String,
}

/// How the Service is exposed.
#[derive(
    schemars::JsonSchema, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default,
)]
pub enum ServiceType {
    /// Inside the cluster only.
    #[default]
    ClusterIP,
    /// Also on a port of every node.
    NodePort,
    /// Also through the cloud's load balancer.
    LoadBalancer,
}

impl ServiceType {
    /// The name Kubernetes uses.
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceType::ClusterIP => "ClusterIP",
            ServiceType::NodePort => "NodePort",
            ServiceType::LoadBalancer => "LoadBalancer",
        }
    }
}

/// The Service in front of the pods.
#[derive(KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ServiceSpec {
    /// `ClusterIP`, `NodePort` or `LoadBalancer`.
    #[serde(default, rename = "type")]
    pub type_: ServiceType,
    /// Port of the OpenAI-compatible API.
    #[serde(default = "default_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
}

fn default_port() -> i32 {
    8080
}

impl Default for ServiceSpec {
    fn default() -> Self {
        Self {
            type_: ServiceType::default(),
            port: default_port(),
        }
    }
}

/// Prometheus scraping.
#[derive(KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MonitoringSpec {
    /// Create a ServiceMonitor when the cluster has that CRD (Prometheus Operator).
    #[serde(default = "default_true")]
    pub service_monitor: bool,
    /// Scrape interval of the ServiceMonitor.
    #[serde(default = "default_interval")]
    #[schemars(regex(pattern = r"^[0-9]+(ms|s|m|h)$"))]
    pub interval: String,
    /// Labels of the ServiceMonitor, for the Prometheus that selects it
    /// (kube-prometheus-stack selects `release: <its release>`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

fn default_true() -> bool {
    true
}

fn default_interval() -> String {
    "30s".into()
}

impl Default for MonitoringSpec {
    fn default() -> Self {
        Self {
            service_monitor: true,
            interval: default_interval(),
            labels: BTreeMap::new(),
        }
    }
}

/// Server settings.
#[derive(KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ServerSpec {
    /// Sequences generated concurrently per pod.
    #[serde(default = "default_slots")]
    #[schemars(range(min = 1, max = 256))]
    pub slots: i32,
    /// Requests that may wait for a slot before new ones get 429.
    #[serde(default = "default_max_waiting")]
    #[schemars(range(min = 0, max = 100000))]
    pub max_waiting: i32,
}

fn default_slots() -> i32 {
    2
}

fn default_max_waiting() -> i32 {
    16
}

impl Default for ServerSpec {
    fn default() -> Self {
        Self {
            slots: default_slots(),
            max_waiting: default_max_waiting(),
        }
    }
}

/// Observed state.
#[derive(KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct SpeculativeDeploymentStatus {
    /// The spec generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Pods of the Deployment.
    #[serde(default)]
    pub replicas: i32,
    /// Pods that pass their readiness probe.
    #[serde(default)]
    pub ready_replicas: i32,
    /// `ready/desired`, for display.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready: Option<String>,
    /// Label selector of the pods (for the scale subresource).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    /// In-cluster URL of the OpenAI-compatible API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// SHA-256 of the registry file the pods run with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registry_sha256: Option<String>,
    /// Share of drafted tokens accepted over all languages, e.g. `0.74`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acceptance_rate: Option<String>,
    /// Acceptance per language, summed over the ready pods' counters.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub acceptance: Vec<LanguageAcceptance>,
    /// `Ready`, `Available`, `Progressing` and `Degraded`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}

/// Acceptance of one language, read from the pods' `/metrics`.
#[derive(KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct LanguageAcceptance {
    /// ISO 639-1 code, or `unknown`.
    pub language: String,
    /// Drafter that served the language.
    pub drafter: String,
    /// Verification rounds with at least one drafted token.
    pub drafts: i64,
    /// Tokens drafted.
    pub draft_tokens: i64,
    /// Drafted tokens accepted.
    pub accepted_tokens: i64,
    /// accepted / drafted, e.g. `0.74`.
    pub acceptance_rate: String,
    /// 1 + accepted / drafts, e.g. `2.81`.
    pub mean_accepted_length: String,
}
