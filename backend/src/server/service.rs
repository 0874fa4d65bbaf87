//! Between HTTP and inference: readiness, load shedding, routing by language,
//! draft parameters, and the accounting of each generation in the metrics.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use tokio::sync::mpsc::UnboundedReceiver;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::{DraftParams, RegistryConfig};
use crate::engine::{
    AdaptiveReport, BanditReport, Candidate, DrafterChoice, Engine, EngineError, FinishReason,
    GenerationEvent, GenerationRequest, GenerationStats, PassTotals,
};
use crate::registry::Registry;

use super::error::ApiError;
use super::metrics::Metrics;
use super::openai::ValidatedRequest;

/// The inference side as the HTTP layer sees it.
pub trait Backend: Send + Sync + 'static {
    /// Start a generation; its events arrive on the returned channel, and
    /// dropping the channel cancels it.
    fn submit(&self, request: GenerationRequest) -> UnboundedReceiver<GenerationEvent>;

    /// The latest adaptive drafting decisions, for metrics.
    fn adaptive_reports(&self) -> Vec<AdaptiveReport> {
        Vec::new()
    }

    /// What the bandits know of the languages' candidate drafters, for metrics.
    fn bandit_reports(&self) -> Vec<BanditReport> {
        Vec::new()
    }

    /// Why the backend can no longer serve any request, if it cannot.
    fn failure(&self) -> Option<String> {
        None
    }

    /// Target passes run and the rows they held, for metrics.
    fn pass_totals(&self) -> PassTotals {
        PassTotals::default()
    }
}

impl Backend for Engine {
    fn submit(&self, request: GenerationRequest) -> UnboundedReceiver<GenerationEvent> {
        Engine::submit(self, request)
    }

    fn adaptive_reports(&self) -> Vec<AdaptiveReport> {
        Engine::adaptive_reports(self)
    }

    fn bandit_reports(&self) -> Vec<BanditReport> {
        Engine::bandit_reports(self)
    }

    fn failure(&self) -> Option<String> {
        Engine::failure(self)
    }

    fn pass_totals(&self) -> PassTotals {
        Engine::pass_totals(self)
    }
}

/// Settings of the service.
#[derive(Debug, Clone)]
pub struct ServiceConfig {
    /// The name the model is served under.
    pub model_name: String,
    /// Sequences generated concurrently.
    pub slots: usize,
    /// Requests that may wait for a slot; beyond, 429.
    pub max_waiting: usize,
    /// Longest a request may take.
    pub request_timeout: Duration,
}

/// Shared state of the server.
pub struct Service {
    config: ServiceConfig,
    backend: OnceLock<Arc<dyn Backend>>,
    not_ready: std::sync::Mutex<String>,
    shutting_down: AtomicBool,
    registry: Registry,
    draft_params: BTreeMap<String, DraftParams>,
    admission: Arc<Semaphore>,
    /// The metrics.
    pub metrics: Metrics,
}

impl Service {
    /// A service whose backend is not loaded yet.
    pub fn new(config: ServiceConfig, registry: &RegistryConfig) -> Self {
        let metrics = Metrics::new();
        let draft_params = registry
            .drafters
            .iter()
            .map(|d| (d.name.clone(), d.draft))
            .collect::<BTreeMap<_, _>>();
        Self {
            admission: Arc::new(Semaphore::new(config.slots + config.max_waiting)),
            config,
            backend: OnceLock::new(),
            not_ready: std::sync::Mutex::new("the models are loading".into()),
            shutting_down: AtomicBool::new(false),
            registry: Registry::new(registry),
            draft_params,
            metrics,
        }
    }

    /// The served model name.
    pub fn model_name(&self) -> &str {
        &self.config.model_name
    }

    /// The per-request timeout.
    pub fn request_timeout(&self) -> Duration {
        self.config.request_timeout
    }

    /// Mark the backend loaded.
    pub fn set_ready(&self, backend: Arc<dyn Backend>) {
        let _ = self.backend.set(backend);
    }

    /// Record why the backend is not available.
    pub fn set_not_ready(&self, reason: String) {
        if let Ok(mut r) = self.not_ready.lock() {
            *r = reason;
        }
    }

    /// Refuse new requests from now on (shutdown has begun).
    pub fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
        self.set_not_ready("the server is shutting down".into());
    }

    /// Generations admitted and not finished (running or waiting).
    pub fn in_flight(&self) -> usize {
        (self.config.slots + self.config.max_waiting)
            .saturating_sub(self.admission.available_permits())
    }

    /// `Ok` when requests can be served, else why not.
    pub fn readiness(&self) -> Result<&Arc<dyn Backend>, ApiError> {
        self.liveness()?;
        match self.backend.get() {
            Some(b) if !self.shutting_down.load(Ordering::SeqCst) => Ok(b),
            _ => Err(ApiError::NotReady(
                self.not_ready.lock().map(|r| r.clone()).unwrap_or_default(),
            )),
        }
    }

    /// `Ok` unless the backend has failed for good (its engine thread
    /// panicked): only a restart of the process helps then. Loading and
    /// shutting down are alive.
    pub fn liveness(&self) -> Result<(), ApiError> {
        match self.backend.get().and_then(|b| b.failure()) {
            Some(reason) => Err(ApiError::NotReady(reason)),
            None => Ok(()),
        }
    }

    /// The metrics in the text exposition, with the backend's latest
    /// adaptive decisions.
    pub fn render_metrics(&self) -> String {
        if let Some(backend) = self.backend.get() {
            self.metrics.observe_adaptive(&backend.adaptive_reports());
            self.metrics.observe_bandits(&backend.bandit_reports());
            self.metrics.observe_passes(backend.pass_totals());
        }
        self.metrics.render()
    }

    /// Admit, route and start a generation; `id` names it in the logs.
    pub fn start(
        self: &Arc<Self>,
        id: String,
        request: ValidatedRequest,
    ) -> Result<Generation, ApiError> {
        let backend = self.readiness()?;
        let route = self
            .registry
            .route(request.language.as_deref(), &request.detection_text)
            .map_err(|e| ApiError::InvalidRequest {
                message: e.to_string(),
                param: Some("language".into()),
            })?;
        let o = &request.draft_overrides;
        // A drafter the request names replaces the language's candidates.
        let routed: Vec<String> = match &o.drafter {
            Some(name) if !self.draft_params.contains_key(name) => {
                return Err(ApiError::InvalidRequest {
                    message: format!(
                        "speculative.drafter: no drafter `{name}` in the registry (it has: {})",
                        self.draft_params
                            .keys()
                            .cloned()
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                    param: Some("speculative.drafter".into()),
                });
            }
            Some(name) => vec![name.clone()],
            None => route.drafters,
        };
        let candidates = if request.speculative_enabled {
            routed
        } else {
            Vec::new()
        };
        // Each candidate's own draft controls, with the request's overrides.
        let mut drafts = Vec::with_capacity(candidates.len());
        for name in &candidates {
            let base = self.draft_params.get(name).copied().unwrap_or_default();
            let params = DraftParams {
                max: o.max.unwrap_or(base.max),
                min: o.min.unwrap_or(base.min),
                p_min: o.p_min.unwrap_or(base.p_min),
                adaptive: o.adaptive.unwrap_or(base.adaptive && o.max.is_none()),
            };
            params
                .validate()
                .map_err(|message| ApiError::InvalidRequest {
                    message: format!("speculative: {message}"),
                    param: Some("speculative".into()),
                })?;
            drafts.push(params);
        }
        let (choice, draft) = match candidates.as_slice() {
            [] => (DrafterChoice::None, None),
            [one] => (DrafterChoice::Named(one.clone()), drafts.first().copied()),
            several => (
                DrafterChoice::Candidates(
                    several
                        .iter()
                        .zip(&drafts)
                        .map(|(name, &draft)| Candidate {
                            name: name.clone(),
                            draft: Some(draft),
                        })
                        .collect(),
                ),
                None,
            ),
        };
        let permit = Arc::clone(&self.admission)
            .try_acquire_owned()
            .map_err(|_| ApiError::Overloaded {
                capacity: self.config.slots + self.config.max_waiting,
            })?;
        let events = backend.submit(GenerationRequest {
            prompt: request.prompt,
            max_tokens: request.max_tokens,
            sampling: request.sampling,
            drafter: choice,
            draft,
            stop: request.stop,
            language: Some(route.language.clone()),
        });
        self.metrics.waiting.inc();
        Ok(Generation {
            id,
            service: Arc::clone(self),
            events,
            _permit: permit,
            drafter: candidates.into_iter().next(),
            language: route.language,
            accepted_at: Instant::now(),
            deadline: tokio::time::Instant::now() + self.config.request_timeout,
            first_token_at: None,
            state: State::Waiting,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Waiting,
    Running,
    Done,
}

/// What a generation yields to the HTTP layer.
#[derive(Debug)]
pub enum Step {
    /// Text (possibly empty) and how many tokens it carries.
    Text(String),
    /// The end.
    Finished {
        /// Why.
        reason: FinishReason,
        /// Statistics (boxed: far larger than the text of a step).
        stats: Box<GenerationStats>,
    },
}

/// The `status` of `requests_total` for a generation its client abandoned
/// (a streamed one is also counted under the 200 its response began with).
pub const CANCELLED: &str = "cancelled";

/// A running generation: its events, its admission permit, and its metrics
/// bookkeeping. Dropping it cancels the generation and frees its place.
pub struct Generation {
    /// The request id (also in the response).
    pub id: String,
    service: Arc<Service>,
    events: UnboundedReceiver<GenerationEvent>,
    _permit: OwnedSemaphorePermit,
    /// The drafter in use; with several candidates, the first until the
    /// generation finishes, then the one that produced most of the accepted
    /// tokens ([`GenerationStats::drafter`]).
    pub drafter: Option<String>,
    /// The routed language.
    pub language: String,
    accepted_at: Instant,
    deadline: tokio::time::Instant,
    first_token_at: Option<Instant>,
    state: State,
}

impl Generation {
    /// The next piece of the generation, or the error that ended it.
    pub async fn next(&mut self) -> Result<Step, ApiError> {
        loop {
            if self.state == State::Done {
                return Err(ApiError::Engine(EngineError::ShutDown));
            }
            let event = tokio::time::timeout_at(self.deadline, self.events.recv()).await;
            let event = match event {
                Err(_) => {
                    self.finish_gauges();
                    return Err(ApiError::Timeout(
                        self.service.config.request_timeout.as_secs(),
                    ));
                }
                Ok(None) => {
                    self.finish_gauges();
                    return Err(ApiError::Engine(EngineError::ShutDown));
                }
                Ok(Some(event)) => event,
            };
            match event {
                GenerationEvent::Started { .. } => {
                    self.service.metrics.waiting.dec();
                    self.service.metrics.running.inc();
                    self.state = State::Running;
                }
                GenerationEvent::Tokens { text, token_ids } => {
                    if self.first_token_at.is_none() && !token_ids.is_empty() {
                        self.first_token_at = Some(Instant::now());
                    }
                    return Ok(Step::Text(text));
                }
                GenerationEvent::Finished { reason, stats } => {
                    self.finish_gauges();
                    if stats.drafter.is_some() {
                        self.drafter.clone_from(&stats.drafter);
                    }
                    let duration = self.accepted_at.elapsed().as_secs_f64();
                    let ttft = self
                        .first_token_at
                        .map(|t| (t - self.accepted_at).as_secs_f64());
                    self.service.metrics.record_generation(
                        self.drafter.as_deref(),
                        &self.language,
                        &stats,
                        ttft,
                        duration,
                    );
                    tracing::info!(
                        id = %self.id,
                        language = %self.language,
                        drafter = self.drafter.as_deref().unwrap_or("none"),
                        prompt_tokens = stats.prompt_tokens,
                        completion_tokens = stats.completion_tokens,
                        acceptance = format!("{:.3}", stats.acceptance_rate),
                        latency_ms = format!("{:.0}", duration * 1000.0),
                        finish = ?reason,
                        "request finished"
                    );
                    return Ok(Step::Finished {
                        reason,
                        stats: Box::new(stats),
                    });
                }
                GenerationEvent::Failed(e) => {
                    self.finish_gauges();
                    return Err(ApiError::Engine(e));
                }
            }
        }
    }

    fn finish_gauges(&mut self) {
        match self.state {
            State::Waiting => self.service.metrics.waiting.dec(),
            State::Running => self.service.metrics.running.dec(),
            State::Done => {}
        }
        self.state = State::Done;
    }
}

impl Drop for Generation {
    fn drop(&mut self) {
        // A client that went away: the events channel closes with us, which
        // cancels the generation in the engine.
        if self.state != State::Done {
            self.service.metrics.record_status(CANCELLED);
            tracing::info!(
                id = %self.id,
                language = %self.language,
                latency_ms = format!("{:.0}", self.accepted_at.elapsed().as_secs_f64() * 1000.0),
                "request cancelled: the client went away"
            );
        }
        self.finish_gauges();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use tokio::sync::mpsc;

    use super::*;
    use crate::server::openai::{validate, Endpoint};

    /// A backend that keeps what it is asked to generate.
    #[derive(Default)]
    struct Capture(Mutex<Vec<GenerationRequest>>);

    impl Backend for Capture {
        fn submit(&self, request: GenerationRequest) -> UnboundedReceiver<GenerationEvent> {
            if let Ok(mut requests) = self.0.lock() {
                requests.push(request);
            }
            mpsc::unbounded_channel().1
        }
    }

    /// A backend whose engine has died.
    struct Crashed;

    impl Backend for Crashed {
        fn submit(&self, _: GenerationRequest) -> UnboundedReceiver<GenerationEvent> {
            mpsc::unbounded_channel().1
        }

        fn failure(&self) -> Option<String> {
            Some("the engine thread panicked: boom".into())
        }
    }

    #[tokio::test]
    async fn a_failed_engine_fails_readiness_and_liveness() {
        let service = test_service();
        let routes = crate::server::routes::routes(
            Arc::clone(&service),
            crate::server::listener::HttpLimits::default(),
            crate::server::auth::ApiKeys::default(),
        );
        let status = |path: &'static str| {
            let routes = routes.clone();
            async move {
                warp::test::request()
                    .path(path)
                    .reply(&routes)
                    .await
                    .status()
            }
        };
        // Loading: alive, not ready.
        assert_eq!(status("/healthz").await, 200);
        assert_eq!(status("/readyz").await, 503);
        service.set_ready(Arc::new(Crashed));
        assert_eq!(status("/healthz").await, 503);
        assert_eq!(status("/readyz").await, 503);
        let body = warp::test::request().path("/readyz").reply(&routes).await;
        assert!(String::from_utf8_lossy(body.body()).contains("panicked: boom"));
    }

    const REGISTRY: &str = r#"
target: { model: /m/t.gguf }
drafters:
  - { name: lookup-k8, kind: ngram, languages: [de], draft: { max: 8, adaptive: false } }
  - { name: euro, model: /m/d.gguf, languages: [de, fr] }
"#;

    /// A service over [`REGISTRY`] with one slot, its backend not loaded.
    fn test_service() -> Arc<Service> {
        let registry = RegistryConfig::from_yaml(REGISTRY).unwrap();
        let config = ServiceConfig {
            model_name: "m".into(),
            slots: 1,
            max_waiting: 4,
            request_timeout: Duration::from_secs(60),
        };
        Arc::new(Service::new(config, &registry))
    }

    /// Start a request with `extra` JSON fields and hand back what the
    /// backend was asked and the drafter the generation starts under.
    fn start(extra: &str) -> (GenerationRequest, Option<String>) {
        let service = test_service();
        let backend = Arc::new(Capture::default());
        service.set_ready(backend.clone());
        let body = format!(
            r#"{{"model": "m", "messages": [{{"role": "user", "content": "Hallo"}}] {extra}}}"#
        );
        let request = validate(Endpoint::Chat, body.as_bytes(), "m").unwrap();
        let generation = service.start("id".into(), request).unwrap();
        let drafter = generation.drafter.clone();
        let submitted = backend.0.lock().unwrap().pop().unwrap();
        (submitted, drafter)
    }

    fn candidates(request: &GenerationRequest) -> Vec<(String, DraftParams)> {
        match &request.drafter {
            DrafterChoice::Candidates(list) => list
                .iter()
                .map(|c| (c.name.clone(), c.draft.unwrap()))
                .collect(),
            other => panic!("not candidates: {other:?}"),
        }
    }

    #[test]
    fn a_language_with_several_drafters_passes_them_all_with_their_settings() {
        let (request, drafter) = start(r#", "language": "de""#);
        let fixed = DraftParams {
            max: 8,
            adaptive: false,
            ..DraftParams::default()
        };
        assert_eq!(
            candidates(&request),
            [
                ("lookup-k8".to_string(), fixed),
                ("euro".to_string(), DraftParams::default())
            ]
        );
        assert_eq!(request.draft, None);
        assert_eq!(request.language.as_deref(), Some("de"));
        assert_eq!(
            drafter.as_deref(),
            Some("lookup-k8"),
            "the first, until finished"
        );
        // The request's overrides apply to every candidate.
        let (request, _) = start(r#", "language": "de", "speculative": {"max": 3}"#);
        for (_, draft) in candidates(&request) {
            assert_eq!((draft.max, draft.adaptive), (3, false));
        }
    }

    #[test]
    fn one_drafter_a_named_drafter_and_no_speculation_work_as_before() {
        let (request, drafter) = start(r#", "language": "fr""#);
        assert_eq!(request.drafter, DrafterChoice::Named("euro".into()));
        assert_eq!(request.draft, Some(DraftParams::default()));
        assert_eq!(drafter.as_deref(), Some("euro"));
        let (request, _) = start(r#", "language": "de", "speculative": {"drafter": "euro"}"#);
        assert_eq!(request.drafter, DrafterChoice::Named("euro".into()));
        let (request, drafter) = start(r#", "language": "de", "speculative": {"enabled": false}"#);
        assert_eq!(
            (request.drafter, request.draft, drafter),
            (DrafterChoice::None, None, None)
        );
    }
}
