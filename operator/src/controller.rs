//! The reconciler: dereference -> validate -> build -> apply -> update
//! status, for every `SpeculativeDeployment`. Validation and building are the
//! pure [`plan`](crate::plan) and [`build`](crate::build) modules; this file
//! only talks to the API server and the pods.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Pod, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams};
use kube::core::NamespaceResourceScope;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{predicates, watcher, PredicateConfig, WatchStreamExt};
use kube::{Client, Resource, ResourceExt};
use serde_json::json;

use crate::acceptance::{self, Totals};
use crate::applied::{self, AppliedChildren, Child, Observed, ABSENT};
use crate::build::{self, Owner, FIELD_MANAGER, HTTP_PORT};
use crate::crd::{SpeculativeDeployment, SpeculativeDeploymentSpec};
use crate::metrics::Metrics;
use crate::plan::{self, Plan};
use crate::status::{self, Observation, Outcome};

/// Settings of the reconciler, read once from the command line.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Namespace to watch; all when `None`.
    pub namespace: Option<String>,
    /// How often a healthy deployment's status (and acceptance) is refreshed.
    pub status_interval: Duration,
    /// How long an applied child is left alone at most: then it is applied
    /// again even if no watch shows a change (and a child whose kind is not
    /// watched has nothing else to show one).
    pub resync_interval: Duration,
    /// Timeout of one pod's `/metrics` scrape.
    pub scrape_timeout: Duration,
    /// Image of a spec that names none.
    pub default_image: String,
    /// Image of a spec that names none and asks for GPUs.
    pub default_cuda_image: String,
}

impl Settings {
    /// The image `spec`'s pods run: its own, else the default for its kind.
    pub fn image_for(&self, spec: &SpeculativeDeploymentSpec) -> String {
        match (&spec.image, spec.gpus > 0) {
            (Some(image), _) => image.clone(),
            (None, true) => self.default_cuda_image.clone(),
            (None, false) => self.default_image.clone(),
        }
    }
}

/// What every reconcile shares.
pub struct Context {
    client: Client,
    metrics: Arc<Metrics>,
    /// One recorder for the process, so repeated events are counted as a
    /// series instead of created anew.
    recorder: Recorder,
    http: reqwest::Client,
    settings: Settings,
    /// Consecutive failures per object, for exponential backoff.
    failures: Mutex<HashMap<String, u32>>,
}

impl Context {
    /// A context for `client`.
    pub fn new(
        client: Client,
        metrics: Arc<Metrics>,
        identity: String,
        settings: Settings,
    ) -> Result<Self, Error> {
        let http = reqwest::Client::builder()
            .timeout(settings.scrape_timeout)
            .build()
            .map_err(|e| Error::Http(e.to_string()))?;
        let recorder = Recorder::new(
            client.clone(),
            Reporter {
                controller: FIELD_MANAGER.into(),
                instance: Some(identity),
            },
        );
        Ok(Self {
            client,
            metrics,
            recorder,
            http,
            settings,
            failures: Mutex::default(),
        })
    }

    fn failures(&self) -> std::sync::MutexGuard<'_, HashMap<String, u32>> {
        self.failures.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The watch caches of one leadership term: the children as they are now,
/// known without asking the API server.
struct ChildStores {
    configmaps: Store<ConfigMap>,
    services: Store<Service>,
    deployments: Store<Deployment>,
    budgets: Store<PodDisruptionBudget>,
}

/// What the reconciles of one leadership term share. A new term starts
/// with no record of what was applied, so it applies every child once.
struct Term {
    ctx: Arc<Context>,
    children: ChildStores,
    applied: AppliedChildren,
}

/// A reconcile that failed; it is retried with backoff.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The API server refused or could not be reached.
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// The object lacks metadata the API server always sets.
    #[error("object has no {0}")]
    MissingMetadata(&'static str),
    /// The HTTP client for scraping could not be built.
    #[error("http client: {0}")]
    Http(String),
    /// The API server refused a child as invalid or forbidden: retrying the
    /// same object cannot succeed, so the object is Degraded instead.
    #[error("the API server refused {object}: {message}")]
    Rejected {
        /// `Kind/name` of the child.
        object: String,
        /// The API server's message.
        message: String,
    },
}

impl Error {
    /// Label of the error in metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Kube(kube::Error::Api(_)) => "api",
            Error::Kube(_) => "transport",
            Error::MissingMetadata(_) => "metadata",
            Error::Http(_) => "http",
            Error::Rejected { .. } => "rejected",
        }
    }
}

fn key(sd: &SpeculativeDeployment) -> String {
    format!("{}/{}", sd.namespace().unwrap_or_default(), sd.name_any())
}

/// Backoff after `failures` consecutive failures: 5 s doubling to 5 min.
pub fn backoff(failures: u32) -> Duration {
    let exponent = failures.saturating_sub(1).min(6);
    Duration::from_secs((5u64 << exponent).min(300))
}

/// Check what the spec names but the schema cannot see: that its
/// PersistentVolumeClaims exist.
async fn dereference(
    client: &Client,
    namespace: &str,
    spec: &SpeculativeDeploymentSpec,
    plan: &Plan,
) -> Result<Result<(), Outcome>, Error> {
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), namespace);
    let cache = spec.cache_claim();
    for name in plan.required_claims(spec) {
        let Some(claim) = claims.get_opt(name).await? else {
            return Ok(Err(Outcome::Blocked {
                reason: "MissingPersistentVolumeClaim".into(),
                message: format!(
                    "PersistentVolumeClaim `{name}` does not exist in namespace `{namespace}`; create it or change the model source or model cache"
                ),
            }));
        };
        if Some(name) == cache {
            if let Err(message) = plan::shared_cache_check(spec.replicas, &claim) {
                return Ok(Err(Outcome::Blocked {
                    reason: "ModelCacheNotShared".into(),
                    message,
                }));
            }
        }
    }
    Ok(Ok(()))
}

async fn delete_if_present<K>(api: &Api<K>, name: &str) -> Result<(), Error>
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    match api.delete(name, &DeleteParams::background()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.is_not_found() => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Whether the cluster serves the Prometheus Operator's ServiceMonitor.
async fn has_service_monitors(client: &Client) -> bool {
    let gvk = kube::api::GroupVersionKind::gvk("monitoring.coreos.com", "v1", "ServiceMonitor");
    kube::discovery::pinned_kind(client, &gvk).await.is_ok()
}

/// Server-side apply one child, telling a refusal of the object itself
/// (invalid, or forbidden by policy or quota) from a failure worth retrying.
async fn apply_child<K>(api: &Api<K>, name: &str, child: &K) -> Result<K, Error>
where
    K: Resource<DynamicType = ()>
        + Clone
        + serde::Serialize
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    let params = PatchParams::apply(FIELD_MANAGER).force();
    match api.patch(name, &params, &Patch::Apply(child)).await {
        Err(kube::Error::Api(status))
            if matches!(status.code, 400 | 403 | 422) && !refused_for_termination(&status) =>
        {
            Err(Error::Rejected {
                object: format!("{}/{name}", K::kind(&())),
                message: status.message,
            })
        }
        result => Ok(result?),
    }
}

/// The child `name` of `owner`'s namespace as `store` holds it, and the
/// version by which [`AppliedChildren`] knows whether it changed.
fn watched<K>(store: &Store<K>, owner: &Owner, name: &str) -> (Option<Arc<K>>, Observed)
where
    K: Resource<DynamicType = ()> + Clone,
{
    let current = store.get(&ObjectRef::new(name).within(&owner.namespace));
    let version = current.as_ref().and_then(|c| applied::version_of(c.meta()));
    (current, Observed::Watched(version))
}

/// Server-side apply `child` unless this term applied the same object
/// already and the watch shows it unchanged since; returns the child as
/// stored (or as watched).
async fn sync_child<K>(
    term: &Term,
    owner: &Owner,
    store: &Store<K>,
    name: &str,
    child: &K,
    writes: &mut u32,
) -> Result<K, Error>
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + Clone
        + serde::Serialize
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    let kind = K::kind(&());
    let key = Child {
        namespace: &owner.namespace,
        owner: &owner.name,
        kind: &kind,
        name,
    };
    let digest = applied::digest(child);
    let (current, observed) = watched(store, owner, name);
    if let Some(current) = current {
        if !term.applied.needs_write(key, &digest, &observed) {
            return Ok((*current).clone());
        }
    }
    let api = Api::<K>::namespaced(term.ctx.client.clone(), &owner.namespace);
    let stored = apply_child(&api, name, child).await?;
    *writes += 1;
    term.applied
        .record(key, digest, applied::version_of(stored.meta()));
    Ok(stored)
}

/// Bring every child to what the spec asks for, writing only those that
/// differ; returns the Deployment as stored.
async fn apply(
    term: &Term,
    owner: &Owner,
    spec: &SpeculativeDeploymentSpec,
    plan: &Plan,
    deployment: &Deployment,
    writes: &mut u32,
) -> Result<Deployment, Error> {
    let client = &term.ctx.client;
    let ns = owner.namespace.as_str();
    let stores = &term.children;
    let configmap = build::configmap(owner, plan);
    let configmap_name = configmap.metadata.name.clone().unwrap_or_default();
    sync_child(
        term,
        owner,
        &stores.configmaps,
        &configmap_name,
        &configmap,
        writes,
    )
    .await?;
    let service = build::service(owner, spec);
    sync_child(term, owner, &stores.services, &owner.name, &service, writes).await?;
    let deployment = sync_child(
        term,
        owner,
        &stores.deployments,
        &owner.name,
        deployment,
        writes,
    )
    .await?;
    match build::pod_disruption_budget(owner, spec) {
        Some(pdb) => {
            sync_child(term, owner, &stores.budgets, &owner.name, &pdb, writes).await?;
        }
        // Deleted only when the watch shows one: asking each tick would cost
        // a call for nothing.
        None => {
            if watched(&stores.budgets, owner, &owner.name).0.is_some() {
                let budgets = Api::<PodDisruptionBudget>::namespaced(client.clone(), ns);
                delete_if_present(&budgets, &owner.name).await?;
                *writes += 1;
            }
        }
    }
    if has_service_monitors(client).await {
        // Not watched (the kind may come and go with the Prometheus
        // Operator): the record alone, renewed each resync, says whether it
        // is as applied.
        let resource = build::service_monitor_resource();
        let monitors = Api::<DynamicObject>::namespaced_with(client.clone(), ns, &resource);
        let key = Child {
            namespace: ns,
            owner: &owner.name,
            kind: &resource.kind,
            name: &owner.name,
        };
        let monitor = build::service_monitor(owner, spec);
        let digest = monitor
            .as_ref()
            .map_or_else(|| ABSENT.to_string(), applied::digest);
        if term
            .applied
            .needs_write(key, &digest, &Observed::NotWatched)
        {
            match &monitor {
                Some(monitor) => {
                    let params = PatchParams::apply(FIELD_MANAGER).force();
                    monitors
                        .patch(&owner.name, &params, &Patch::Apply(monitor))
                        .await?;
                }
                None => delete_if_present(&monitors, &owner.name).await?,
            }
            *writes += 1;
            term.applied.record(key, digest, None);
        }
    }
    Ok(deployment)
}

/// The pods of `owner`'s Deployment. A failure to list leaves them unknown
/// (empty): what they report is information, not a reason to fail.
async fn list_pods(ctx: &Context, owner: &Owner) -> Vec<Pod> {
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &owner.namespace);
    match pods
        .list(&ListParams::default().labels(&owner.selector_string()))
        .await
    {
        Ok(list) => list.items,
        Err(e) => {
            tracing::debug!(error = %e, "cannot list pods");
            Vec::new()
        }
    }
}

/// Delete the registry ConfigMaps that neither the current spec, a rollback
/// to the previous one nor a running pod needs. What exists is read from the
/// watch, not listed on every tick.
async fn collect_registries(
    term: &Term,
    owner: &Owner,
    registry_sha256: &str,
    pods: &[Pod],
    writes: &mut u32,
) -> Result<(), Error> {
    let selector = owner.selector_labels();
    let existing: Vec<ConfigMap> = term
        .children
        .configmaps
        .state()
        .iter()
        .filter(|c| c.metadata.namespace.as_deref() == Some(owner.namespace.as_str()))
        .filter(|c| {
            let labels = c.metadata.labels.as_ref();
            selector
                .iter()
                .all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v))
        })
        .map(|c| (**c).clone())
        .collect();
    let current = build::configmap_name_for_sha(owner, registry_sha256);
    let api = Api::<ConfigMap>::namespaced(term.ctx.client.clone(), &owner.namespace);
    for name in build::registries_to_collect(owner, &current, &existing, pods) {
        tracing::debug!(object = %format!("{}/{}", owner.namespace, owner.name), configmap = %name, "collecting an old registry");
        delete_if_present(&api, &name).await?;
        *writes += 1;
    }
    Ok(())
}

/// Sum the acceptance counters of the ready pods. A pod that cannot be
/// scraped is skipped: acceptance is information, not a reason to fail.
async fn scrape_acceptance(ctx: &Context, pods: &[Pod]) -> Totals {
    let urls: Vec<String> = pods
        .iter()
        .filter(|pod| {
            pod.status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        })
        .filter_map(|pod| pod.status.as_ref()?.pod_ip.clone())
        .map(|ip| format!("http://{ip}:{HTTP_PORT}/metrics"))
        .collect();
    let bodies = futures::future::join_all(urls.iter().map(|url| async move {
        let response = ctx.http.get(url).send().await?.error_for_status()?;
        response.text().await
    }))
    .await;
    let mut totals = Totals::new();
    for (url, body) in urls.iter().zip(bodies) {
        match body {
            Ok(text) => acceptance::add_exposition(&mut totals, &text),
            Err(e) => tracing::debug!(url, error = %e, "cannot scrape pod"),
        }
    }
    totals
}

async fn publish(
    ctx: &Context,
    sd: &SpeculativeDeployment,
    type_: EventType,
    reason: &str,
    note: String,
) {
    let event = Event {
        type_,
        reason: reason.into(),
        note: Some(note),
        action: "Reconcile".into(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&event, &sd.object_ref(&())).await {
        tracing::warn!(error = %e, reason, "cannot publish event");
    }
}

/// Whether the API server refused because the object's namespace is being
/// deleted: the object goes with it, so there is nothing to fix or retry.
fn namespace_terminating(error: &Error) -> bool {
    match error {
        Error::Kube(kube::Error::Api(status)) => refused_for_termination(status),
        _ => false,
    }
}

fn refused_for_termination(status: &kube::core::Status) -> bool {
    status
        .details
        .as_ref()
        .is_some_and(|d| d.causes.iter().any(|c| c.reason == "NamespaceTerminating"))
}

/// Whether the API server answered that the reconciled object itself no
/// longer exists: it was deleted while the reconcile ran (its children go
/// with it through their owner references), so there is nothing to retry.
fn object_deleted(error: &Error, name: &str) -> bool {
    match error {
        Error::Kube(kube::Error::Api(status)) => {
            status.is_not_found()
                && status.details.as_ref().is_some_and(|d| {
                    d.name == name
                        && d.kind == SpeculativeDeployment::plural(&())
                        && d.group == SpeculativeDeployment::group(&())
                })
        }
        _ => false,
    }
}

async fn reconcile(sd: Arc<SpeculativeDeployment>, term: Arc<Term>) -> Result<Action, Error> {
    match reconcile_once(&sd, &term).await {
        Err(error) if namespace_terminating(&error) || object_deleted(&error, &sd.name_any()) => {
            tracing::debug!(object = %key(&sd), %error, "object or its namespace is being deleted; nothing to reconcile");
            term.ctx.failures().remove(&key(&sd));
            Ok(Action::await_change())
        }
        result => result,
    }
}

async fn reconcile_once(sd: &Arc<SpeculativeDeployment>, term: &Term) -> Result<Action, Error> {
    let ctx = term.ctx.as_ref();
    // Children written (applied or deleted) by this reconcile.
    let mut writes = 0;
    let _timer = ctx
        .metrics
        .duration
        .with_label_values(&[] as &[&str])
        .start_timer();
    let namespace = sd.namespace().ok_or(Error::MissingMetadata("namespace"))?;
    let mut reference = sd
        .controller_owner_ref(&())
        .ok_or(Error::MissingMetadata("uid"))?;
    // Foreground deletion of the object waits for its children.
    reference.block_owner_deletion = Some(true);
    let owner = Owner {
        name: sd.name_any(),
        namespace: namespace.clone(),
        reference,
    };
    let spec = &sd.spec;
    // Dereference and validate; build and apply only what is valid.
    let image = ctx.settings.image_for(spec);
    let built = plan::plan(spec).and_then(|plan| {
        let deployment = build::deployment(&owner, spec, &plan, &image)?;
        Ok((plan, deployment))
    });
    let planned = match built {
        Ok((plan, deployment)) => dereference(&ctx.client, &namespace, spec, &plan)
            .await?
            .map(|()| (plan, deployment)),
        Err(invalid) => Err(Outcome::Blocked {
            reason: "InvalidSpec".into(),
            message: invalid.0,
        }),
    };
    let previous_sha = sd.status.as_ref().and_then(|s| s.registry_sha256.clone());
    let applied = match planned {
        Ok((plan, deployment)) => {
            match apply(term, &owner, spec, &plan, &deployment, &mut writes).await {
                Ok(deployment) => Ok((plan, deployment)),
                Err(rejected @ Error::Rejected { .. }) => Err(Outcome::Blocked {
                    reason: "ApplyRejected".into(),
                    message: rejected.to_string(),
                }),
                Err(e) => return Err(e),
            }
        }
        Err(blocked) => Err(blocked),
    };
    let (outcome, deployment, registry_sha256) = match applied {
        Ok((plan, deployment)) => {
            if previous_sha.as_deref() != Some(plan.registry_sha256.as_str()) {
                let note = match previous_sha {
                    Some(_) => "registry changed; rolling the pods",
                    None => "registry created",
                };
                publish(ctx, sd, EventType::Normal, "RegistryApplied", note.into()).await;
            }
            (
                Outcome::Applied,
                Some(deployment),
                Some(plan.registry_sha256),
            )
        }
        Err(blocked) => {
            if let Outcome::Blocked { reason, message } = &blocked {
                tracing::warn!(object = %key(sd), reason, message, "not applied");
                publish(ctx, sd, EventType::Warning, reason, message.clone()).await;
            }
            let deployment = watched(&term.children.deployments, &owner, &owner.name)
                .0
                .map(|d| (*d).clone());
            (blocked, deployment, None)
        }
    };
    let pods = list_pods(ctx, &owner).await;
    if let (Outcome::Applied, Some(current)) = (&outcome, &registry_sha256) {
        collect_registries(term, &owner, current, &pods, &mut writes).await?;
    }
    let totals = scrape_acceptance(ctx, &pods).await;
    let observation = Observation {
        generation: sd.metadata.generation,
        desired_replicas: spec.replicas,
        outcome: outcome.clone(),
        deployment: deployment.as_ref(),
        pod_problems: status::pod_problems(&pods),
        selector: owner.selector_string(),
        endpoint: owner.endpoint(spec.service.port),
        registry_sha256,
        acceptance: acceptance::summarize(&totals),
        acceptance_rate: acceptance::overall_rate(&totals),
    };
    let status = status::status(
        sd.status.as_ref(),
        &observation,
        Time(jiff::Timestamp::now()),
    );
    // What the pods or the Deployment report is published once, as it
    // turns up; a refused spec above is published on every attempt.
    if outcome == Outcome::Applied {
        if let Some(newly) = status::newly_degraded(sd.status.as_ref(), &status) {
            tracing::warn!(object = %key(sd), reason = %newly.reason, message = %newly.message, "degraded");
            publish(
                ctx,
                sd,
                EventType::Warning,
                &newly.reason,
                newly.message.clone(),
            )
            .await;
        }
    }
    let status_changed = sd.status.as_ref() != Some(&status);
    if status_changed {
        let patch = json!({
            "apiVersion": SpeculativeDeployment::api_version(&()),
            "kind": SpeculativeDeployment::kind(&()),
            "status": status,
        });
        Api::<SpeculativeDeployment>::namespaced(ctx.client.clone(), &namespace)
            .patch_status(
                &owner.name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&patch),
            )
            .await?;
        ctx.metrics
            .status_writes
            .with_label_values(&[] as &[&str])
            .inc();
    }
    ctx.metrics.set_deployment(
        &namespace,
        &owner.name,
        status.ready_replicas,
        &status.acceptance,
    );
    ctx.failures().remove(&key(sd));
    tracing::debug!(object = %key(sd), status_written = status_changed, children_written = writes, "reconcile done");
    let result = match outcome {
        Outcome::Applied => "applied",
        Outcome::Blocked { .. } => "blocked",
    };
    ctx.metrics
        .reconciliations
        .with_label_values(&[result])
        .inc();
    Ok(match outcome {
        // A missing claim may appear without the object changing.
        Outcome::Blocked { .. } => {
            Action::requeue(ctx.settings.status_interval.min(Duration::from_secs(30)))
        }
        Outcome::Applied => Action::requeue(ctx.settings.status_interval),
    })
}

fn error_policy(sd: Arc<SpeculativeDeployment>, error: &Error, term: Arc<Term>) -> Action {
    let ctx = &term.ctx;
    ctx.metrics
        .reconciliations
        .with_label_values(&["error"])
        .inc();
    ctx.metrics.errors.with_label_values(&[error.kind()]).inc();
    let failures = {
        let mut failures = ctx.failures();
        let count = failures.entry(key(&sd)).or_insert(0);
        *count += 1;
        *count
    };
    let delay = backoff(failures);
    tracing::warn!(object = %key(&sd), %error, failures, retry_in = ?delay, "reconcile failed");
    Action::requeue(delay)
}

/// A watch of one kind of child, cached in a store the reconciles read.
fn watch_children<K>(
    api: Api<K>,
) -> (
    Store<K>,
    impl futures::Stream<Item = Result<K, watcher::Error>> + Send + 'static,
)
where
    K: Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let children =
        watcher::Config::default().labels(&format!("app.kubernetes.io/managed-by={FIELD_MANAGER}"));
    let (store, writer) = reflector::store();
    let stream = watcher(api, children)
        .default_backoff()
        .reflect(writer)
        .touched_objects();
    (store, stream)
}

fn scoped<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// Run the controller until `shutdown` completes.
pub async fn run(ctx: Arc<Context>, shutdown: impl Future<Output = ()> + Send + Sync + 'static) {
    let client = ctx.client.clone();
    let namespace = ctx.settings.namespace.as_deref();
    let (configmaps, configmap_changes) = watch_children(scoped::<ConfigMap>(&client, namespace));
    let (services, service_changes) = watch_children(scoped::<Service>(&client, namespace));
    let (deployments, deployment_changes) =
        watch_children(scoped::<Deployment>(&client, namespace));
    let (budgets, budget_changes) =
        watch_children(scoped::<PodDisruptionBudget>(&client, namespace));
    // Only a new generation (a spec change) of an object triggers a
    // reconcile, never its status: the reconcile's own status write must not
    // be what wakes it up next (under traffic every write would, as the
    // acceptance counters move). Children's changes still trigger, and the
    // status timer refreshes what the pods report.
    let (store, writer) = reflector::store();
    let primary = watcher(
        scoped::<SpeculativeDeployment>(&client, namespace),
        watcher::Config::default().any_semantic(),
    )
    .default_backoff()
    .reflect(writer)
    .applied_objects()
    .predicate_filter(predicates::generation, PredicateConfig::default());
    let controller = Controller::for_stream(primary, store.clone());
    let term = Arc::new(Term {
        applied: AppliedChildren::new(ctx.settings.resync_interval),
        children: ChildStores {
            configmaps,
            services,
            deployments,
            budgets,
        },
        ctx,
    });
    // Deleted objects are not reconciled: drop their gauges and records here.
    let cleanup = tokio::spawn({
        let term = term.clone();
        async move {
            if store.wait_until_ready().await.is_err() {
                return;
            }
            let gone = |namespace: &str, name: &str| {
                store.get(&ObjectRef::new(name).within(namespace)).is_none()
            };
            loop {
                for (namespace, name) in term.ctx.metrics.published_deployments() {
                    if gone(&namespace, &name) {
                        term.ctx.metrics.forget(&namespace, &name);
                    }
                }
                for (namespace, name) in term.applied.owners() {
                    if gone(&namespace, &name) {
                        term.applied.forget(&namespace, &name);
                    }
                }
                tokio::time::sleep(Duration::from_secs(15)).await;
            }
        }
    });
    controller
        .owns_stream(deployment_changes)
        .owns_stream(configmap_changes)
        .owns_stream(service_changes)
        .owns_stream(budget_changes)
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, term)
        .for_each(|result| async move {
            match result {
                Ok((object, _)) => tracing::debug!(object = %object, "reconciled"),
                Err(e) => tracing::debug!(error = %e, "reconcile failed"),
            }
        })
        .await;
    cleanup.abort();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_five_minutes() {
        assert_eq!(backoff(1), Duration::from_secs(5));
        assert_eq!(backoff(2), Duration::from_secs(10));
        assert_eq!(backoff(4), Duration::from_secs(40));
        assert_eq!(backoff(50), Duration::from_secs(300));
    }

    fn forbidden(cause: &str) -> Error {
        let status = kube::core::Status::failure("forbidden", "Forbidden")
            .with_code(403)
            .with_details(kube::core::response::StatusDetails {
                causes: vec![kube::core::response::StatusCause {
                    reason: cause.into(),
                    message: String::new(),
                    field: "metadata.namespace".into(),
                }],
                name: "qwen".into(),
                group: String::new(),
                kind: "services".into(),
                uid: String::new(),
                retry_after_seconds: 0,
            });
        Error::Kube(kube::Error::Api(status.boxed()))
    }

    fn not_found(kind: &str, group: &str, name: &str) -> Error {
        let status = kube::core::Status::failure("not found", "NotFound")
            .with_code(404)
            .with_details(kube::core::response::StatusDetails {
                causes: vec![],
                name: name.into(),
                group: group.into(),
                kind: kind.into(),
                uid: String::new(),
                retry_after_seconds: 0,
            });
        Error::Kube(kube::Error::Api(status.boxed()))
    }

    #[test]
    fn only_the_reconciled_object_gone_is_not_an_error() {
        let group = "specdec.io";
        assert!(object_deleted(
            &not_found("speculativedeployments", group, "qwen"),
            "qwen"
        ));
        // Another object of the kind, or a child of the same name, missing
        // is a real failure.
        assert!(!object_deleted(
            &not_found("speculativedeployments", group, "other"),
            "qwen"
        ));
        assert!(!object_deleted(
            &not_found("deployments", "apps", "qwen"),
            "qwen"
        ));
        assert!(!object_deleted(&forbidden("NamespaceTerminating"), "qwen"));
    }

    #[test]
    fn only_a_terminating_namespace_is_not_an_error() {
        assert!(namespace_terminating(&forbidden("NamespaceTerminating")));
        assert!(!namespace_terminating(&forbidden("FieldValueForbidden")));
        assert!(!namespace_terminating(&Error::MissingMetadata("uid")));
    }
}
