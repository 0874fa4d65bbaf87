//! The operator's own Prometheus metrics: the one definition of their names.

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;

use prometheus::{
    Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};

/// Prefix of every operator metric.
pub const NAMESPACE: &str = "specdec_operator";
/// Label naming a SpeculativeDeployment's namespace. Not `namespace`: a
/// scrape through a ServiceMonitor sets that label to the operator's own
/// namespace, and Prometheus would rename ours to `exported_namespace`.
pub const LABEL_NAMESPACE: &str = "specdeployment_namespace";
/// Label naming a SpeculativeDeployment.
pub const LABEL_NAME: &str = "specdeployment";

type DeploymentKey = (String, String);
type LanguageKey = (String, String);

/// The operator's metrics.
pub struct Metrics {
    /// Acceptance label sets published per deployment, so that stale ones can
    /// be removed.
    published: Mutex<HashMap<DeploymentKey, BTreeSet<LanguageKey>>>,
    registry: Registry,
    /// Reconciles by result (`applied`, `blocked`, `error`).
    pub reconciliations: IntCounterVec,
    /// Failed reconciles by error kind.
    pub errors: IntCounterVec,
    /// Reconcile duration.
    pub duration: HistogramVec,
    /// Status writes (patches of a SpeculativeDeployment's status).
    pub status_writes: IntCounterVec,
    /// 1 while this replica holds the leader Lease.
    pub leader: IntGauge,
    /// Acceptance per deployment and language, from the pods.
    pub acceptance_rate: GaugeVec,
    /// Mean accepted length per deployment and language.
    pub mean_accepted_length: GaugeVec,
    /// Ready replicas per deployment.
    pub ready_replicas: GaugeVec,
}

/// A metric definition error: a programming error in this file.
#[derive(Debug, thiserror::Error)]
#[error("metric definition: {0}")]
pub struct MetricsError(#[from] prometheus::Error);

impl Metrics {
    /// Create and register every metric.
    pub fn new() -> Result<Self, MetricsError> {
        let registry = Registry::new();
        let opts = |name: &str, help: &str| Opts::new(name, help).namespace(NAMESPACE);
        let reconciliations = IntCounterVec::new(
            opts(
                "reconciliations_total",
                "Reconciles of SpeculativeDeployments by result.",
            ),
            &["result"],
        )?;
        let errors = IntCounterVec::new(
            opts(
                "reconcile_errors_total",
                "Reconciles that failed, by error kind.",
            ),
            &["kind"],
        )?;
        let status_writes = IntCounterVec::new(
            opts(
                "status_writes_total",
                "Patches of SpeculativeDeployment status, written when it changed.",
            ),
            &[],
        )?;
        let duration = HistogramVec::new(
            HistogramOpts::new("reconcile_duration_seconds", "Time a reconcile took.")
                .namespace(NAMESPACE)
                .buckets(vec![0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]),
            &[],
        )?;
        let leader = IntGauge::with_opts(opts(
            "leader",
            "1 while this replica holds the leader Lease and reconciles.",
        ))?;
        let labels = [LABEL_NAMESPACE, LABEL_NAME, "language", "drafter"];
        let acceptance_rate = GaugeVec::new(
            opts(
                "acceptance_rate",
                "Drafted tokens accepted / drafted, per deployment and language, since the pods started.",
            ),
            &labels,
        )?;
        let mean_accepted_length = GaugeVec::new(
            opts(
                "mean_accepted_length",
                "1 + accepted / drafts, per deployment and language, since the pods started.",
            ),
            &labels,
        )?;
        let ready_replicas = GaugeVec::new(
            opts("ready_replicas", "Ready server pods per deployment."),
            &[LABEL_NAMESPACE, LABEL_NAME],
        )?;
        registry.register(Box::new(reconciliations.clone()))?;
        registry.register(Box::new(errors.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        registry.register(Box::new(status_writes.clone()))?;
        registry.register(Box::new(leader.clone()))?;
        registry.register(Box::new(acceptance_rate.clone()))?;
        registry.register(Box::new(mean_accepted_length.clone()))?;
        registry.register(Box::new(ready_replicas.clone()))?;
        Ok(Self {
            published: Mutex::default(),
            registry,
            reconciliations,
            errors,
            duration,
            status_writes,
            leader,
            acceptance_rate,
            mean_accepted_length,
            ready_replicas,
        })
    }

    /// Publish a deployment's ready replicas and acceptance, removing
    /// languages it no longer reports.
    pub fn set_deployment(
        &self,
        namespace: &str,
        name: &str,
        ready_replicas: i32,
        acceptance: &[crate::crd::LanguageAcceptance],
    ) {
        self.ready_replicas
            .with_label_values(&[namespace, name])
            .set(f64::from(ready_replicas));
        let mut current = BTreeSet::new();
        for a in acceptance {
            let labels = [namespace, name, a.language.as_str(), a.drafter.as_str()];
            let rate = a.accepted_tokens as f64 / a.draft_tokens.max(1) as f64;
            let length = 1.0 + a.accepted_tokens as f64 / a.drafts.max(1) as f64;
            self.acceptance_rate.with_label_values(&labels).set(rate);
            self.mean_accepted_length
                .with_label_values(&labels)
                .set(length);
            current.insert((a.language.clone(), a.drafter.clone()));
        }
        let key = (namespace.to_string(), name.to_string());
        let mut published = self.published.lock().unwrap_or_else(|p| p.into_inner());
        let previous = published.insert(key, current.clone()).unwrap_or_default();
        for (language, drafter) in previous.difference(&current) {
            self.remove_language(namespace, name, language, drafter);
        }
    }

    fn remove_language(&self, namespace: &str, name: &str, language: &str, drafter: &str) {
        let labels = [namespace, name, language, drafter];
        let _ = self.acceptance_rate.remove_label_values(&labels);
        let _ = self.mean_accepted_length.remove_label_values(&labels);
    }

    /// Deployments that have published gauges.
    pub fn published_deployments(&self) -> Vec<(String, String)> {
        let published = self.published.lock().unwrap_or_else(|p| p.into_inner());
        published.keys().cloned().collect()
    }

    /// Forget the gauges of a deployment that no longer exists.
    pub fn forget(&self, namespace: &str, name: &str) {
        let _ = self.ready_replicas.remove_label_values(&[namespace, name]);
        let key = (namespace.to_string(), name.to_string());
        let removed = {
            let mut published = self.published.lock().unwrap_or_else(|p| p.into_inner());
            published.remove(&key).unwrap_or_default()
        };
        for (language, drafter) in removed {
            self.remove_language(namespace, name, &language, &drafter);
        }
    }

    /// Forget every deployment's gauges: a replica that stops leading no
    /// longer knows them, and another replica publishes them now.
    pub fn forget_all(&self) {
        for (namespace, name) in self.published_deployments() {
            self.forget(&namespace, &name);
        }
        self.ready_replicas.reset();
    }

    /// The text exposition.
    pub fn render(&self) -> String {
        let mut buffer = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buffer);
        String::from_utf8(buffer).unwrap_or_default()
    }
}
