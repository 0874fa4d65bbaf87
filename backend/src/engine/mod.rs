//! The engine: the only code that touches llama.cpp.
//!
//! llama.cpp contexts are not thread-safe, so the models and contexts live on
//! a dedicated thread ([`worker`]); callers hold a cheap [`Engine`] handle and
//! talk to it through channels, from async code or blocking code alike.

mod calibrate;
pub mod error;
pub mod exactness;
mod load;
mod pass;
mod prefill;
mod prepare;
pub mod request;
mod round;
pub mod runtime;
pub mod vocab;
mod worker;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;

use crate::config::{DraftParams, DrafterConfig, TargetConfig};

pub use error::EngineError;
pub use pass::SamplingCosts;
pub use request::{
    main_drafter, Candidate, ChatMessage, Completion, DrafterChoice, DrafterStats, FinishReason,
    GenerationEvent, GenerationRequest, GenerationStats, Prompt,
};

/// What the engine loads.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// The target model.
    pub target: TargetConfig,
    /// Drafters, by name.
    pub drafters: Vec<DrafterConfig>,
    /// CPU threads llama.cpp uses per evaluation.
    pub threads: u32,
    /// Sequences generated concurrently (sharing the contexts, one sequence
    /// id each, and the passes of every engine step).
    pub slots: usize,
    /// How passes shared by slots are bounded.
    pub batching: Batching,
}

/// How the engine bounds the passes that serve several slots at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Batching {
    /// Every token a request gets is the token it gets served alone: on CPU
    /// passes hold no more rows than measured bit-identical to single-token
    /// decoding, prompts are read in pieces measured to leave the same
    /// cache, and each sequence keeps a KV stream of its own. On a GPU,
    /// passes are batched freely (see [`Verification`]).
    #[default]
    Exact,
    /// Passes hold every slot's rows, as llama-server and vLLM batch: more
    /// tokens per second under load on CPU, and greedy output equals the
    /// target's up to floating-point rounding, which the batch's size and
    /// company may change, as on a GPU.
    Throughput,
}

/// The most tokens one target pass may verify: a whole draft of the longest
/// length and the token before it. On CPU the engine verifies in passes no
/// longer than it measured exact at start-up (see [`Verification`]).
pub const MAX_VERIFY_BATCH: usize = DraftParams::MAX_DRAFT as usize + 1;

impl EngineConfig {
    /// The target and drafters of a registry file, one slot, all cores.
    pub fn from_registry(registry: &crate::config::RegistryConfig) -> Self {
        Self {
            drafters: registry.drafters.clone(),
            ..Self::new(registry.target.clone())
        }
    }

    /// A configuration for one target, no drafters, one slot, all cores.
    pub fn new(target: TargetConfig) -> Self {
        Self {
            target,
            drafters: Vec::new(),
            threads: default_threads(),
            slots: 1,
            batching: Batching::default(),
        }
    }
}

/// The number of CPU threads used when none is configured: all cores.
pub fn default_threads() -> u32 {
    std::thread::available_parallelism().map_or(1, |n| n.get() as u32)
}

/// Facts about a loaded engine.
#[derive(Debug, Clone, PartialEq)]
pub struct EngineInfo {
    /// Context length in tokens.
    pub context: usize,
    /// Size of the target's vocabulary.
    pub vocab_size: usize,
    /// Names of the loaded drafters.
    pub drafters: Vec<String>,
    /// Drafter model files loaded (drafters naming the same file share one).
    pub drafter_models: usize,
    /// Whether the target GGUF carries a chat template.
    pub has_chat_template: bool,
    /// Concurrent sequences.
    pub slots: usize,
    /// How drafts are verified on this machine.
    pub verification: Verification,
    /// What llama.cpp selected on this machine.
    pub runtime: runtime::RuntimeInfo,
    /// The costs measured at start-up for adaptive drafting (none without
    /// drafters).
    pub costs: Option<CalibratedCosts>,
}

/// Costs measured on this machine at start-up, each through the completion
/// of the logits it produces.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct CalibratedCosts {
    /// (tokens, milliseconds) of target passes, after a 32-token context:
    /// the cost of verifying a draft of `tokens - 1`.
    pub target_passes: Vec<(usize, f64)>,
    /// Milliseconds of one draft step (a pass of one token and the choice of
    /// its token) per drafter model, in load order.
    pub draft_steps: Vec<f64>,
    /// Milliseconds of sampling the target at one position.
    pub sampling: SamplingCosts,
    /// How long calibrating took.
    pub took_ms: f64,
}

/// How drafts are verified, as decided at start-up.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Verification {
    /// Most tokens in one target pass when verifying a draft; a longer draft
    /// is verified in several passes, stopping at a rejection.
    pub max_verify_batch: usize,
    /// Most rows one target pass may hold when it serves several slots (on
    /// CPU the rows of different sequences measured exact together; the
    /// engine packs the slots' rows of a step into passes of at most this).
    pub shared_pass_rows: usize,
    /// Prompts are read in passes of multiples of this many tokens (then
    /// their remainder alone), measured to leave the cache that reading at
    /// once leaves; a prompt read beside decoding slots advances by one
    /// such piece per engine step.
    pub prompt_granularity: usize,
    /// What the start-up measurement found (none without drafters).
    pub exactness: Option<exactness::Exactness>,
    /// Whether the target runs on a GPU (drafts verified in one pass).
    pub target_on_gpu: bool,
    /// The batching mode asked for.
    pub batching: Batching,
}

/// The latest decision of adaptive drafting for one drafter and language.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct AdaptiveReport {
    /// The drafter.
    pub drafter: String,
    /// The language (ISO 639-1, `und` when unknown).
    pub language: String,
    /// Whether this is the state of greedy requests (else of sampled ones).
    pub greedy: bool,
    /// Who drafted in the latest round.
    pub proposer: crate::speculative::adaptive::Proposer,
    /// Draft length chosen for the latest round (0: plain decoding).
    pub draft_length: usize,
    /// Expected tokens per second at that length.
    pub expected_tokens_per_second: f64,
    /// Expected tokens per second of plain decoding.
    pub plain_tokens_per_second: f64,
    /// Estimated acceptance of each of the drafter model's positions given the ones before it.
    pub acceptance: Vec<f64>,
    /// Milliseconds of a one-token target pass, as currently estimated.
    pub target_pass_ms: f64,
    /// Milliseconds of one draft step, as currently estimated.
    pub draft_step_ms: f64,
}

/// What the bandit choosing among a language's candidate drafters knows of
/// one of them (see [`crate::speculative::bandit`]).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct BanditReport {
    /// The language (ISO 639-1, `und` when unknown).
    pub language: String,
    /// The candidate drafter.
    pub drafter: String,
    /// Its share of the language's recent rounds (discounted, about the
    /// last 50; the shares of a language's candidates sum to 1).
    pub share: f64,
    /// Tokens per second of its recent rounds (discounted mean).
    pub tokens_per_second: f64,
    /// Rounds it was chosen for in all.
    pub rounds: u64,
}

/// Target passes the engine has run and the rows they held: their ratio is
/// how many tokens a pass serves on average, which batching raises.
#[derive(Debug, Default)]
pub struct PassCounters {
    passes: std::sync::atomic::AtomicU64,
    rows: std::sync::atomic::AtomicU64,
}

impl PassCounters {
    /// Count one target pass of `rows` rows.
    fn record(&self, rows: usize) {
        self.passes.fetch_add(1, Ordering::Relaxed);
        self.rows.fetch_add(rows as u64, Ordering::Relaxed);
    }

    /// Target passes and rows so far.
    pub fn totals(&self) -> PassTotals {
        PassTotals {
            passes: self.passes.load(Ordering::Relaxed),
            rows: self.rows.load(Ordering::Relaxed),
        }
    }
}

/// A reading of [`PassCounters`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PassTotals {
    /// Target passes run (prompt pieces and verification passes).
    pub passes: u64,
    /// Rows they held.
    pub rows: u64,
}

/// Handle to a running engine. Cloning is cheap; the engine thread ends when
/// the last handle is dropped and the requests in flight are done.
#[derive(Clone)]
pub struct Engine {
    submissions: mpsc::UnboundedSender<prepare::Submission>,
    info: Arc<EngineInfo>,
    adaptive: Arc<Mutex<worker::AdaptiveReports>>,
    bandits: Arc<Mutex<worker::BanditReports>>,
    waiting: Arc<AtomicUsize>,
    passes: Arc<PassCounters>,
    failure: Failure,
}

/// Why the engine thread stopped serving, once it has (a panic).
#[derive(Clone, Default)]
pub struct Failure(Arc<Mutex<Option<String>>>);

impl Failure {
    /// The reason, if the engine has failed.
    pub fn reason(&self) -> Option<String> {
        // A poisoned lock means a panic while recording one: failed all the same.
        match self.0.lock() {
            Ok(reason) => reason.clone(),
            Err(_) => Some("the engine thread panicked".into()),
        }
    }

    fn record(&self, reason: String) {
        if let Ok(mut slot) = self.0.lock() {
            slot.get_or_insert(reason);
        }
    }
}

/// Run `body` (an engine thread's whole life), recording a panic in
/// `failure` instead of letting it end the thread unnoticed: every request
/// would then fail while the process looked healthy.
fn supervise(failure: &Failure, body: impl FnOnce()) {
    if let Err(panic) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(body)) {
        let message = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "no message".into());
        tracing::error!(%message, "the engine thread panicked; the engine is down");
        failure.record(format!("the engine thread panicked: {message}"));
    }
}

impl Engine {
    /// Load the models on a new engine thread and wait until they are ready.
    /// Blocks: call it before serving, or from `spawn_blocking`.
    pub fn start(config: EngineConfig) -> Result<Self, EngineError> {
        let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel(1);
        let (commands, commands_rx) = mpsc::unbounded_channel();
        let (submissions, submissions_rx) = mpsc::unbounded_channel();
        let adaptive = Arc::new(Mutex::new(worker::AdaptiveReports::new()));
        let bandits = Arc::new(Mutex::new(worker::BanditReports::new()));
        let waiting = Arc::new(AtomicUsize::new(0));
        let reports = Arc::clone(&adaptive);
        let bandit_reports = Arc::clone(&bandits);
        let waiting_gauge = Arc::clone(&waiting);
        let passes = Arc::new(PassCounters::default());
        let pass_counters = Arc::clone(&passes);
        let failure = Failure::default();
        let recorded = failure.clone();
        std::thread::Builder::new()
            .name("specdec-engine".into())
            .spawn(move || {
                supervise(&recorded, || {
                    worker::run(
                        config,
                        ready_tx,
                        commands_rx,
                        reports,
                        bandit_reports,
                        waiting_gauge,
                        pass_counters,
                    )
                })
            })
            .map_err(|e| EngineError::Context {
                model: "the engine thread".into(),
                reason: e.to_string(),
            })?;
        let (info, preparer) = ready_rx.recv().map_err(|_| {
            failure
                .reason()
                .map_or(EngineError::ShutDown, EngineError::Runtime)
        })??;
        let recorded = failure.clone();
        std::thread::Builder::new()
            .name("specdec-prepare".into())
            .spawn(move || supervise(&recorded, || preparer.serve(submissions_rx, commands)))
            .map_err(|e| EngineError::Context {
                model: "the request preparation thread".into(),
                reason: e.to_string(),
            })?;
        Ok(Self {
            submissions,
            info: Arc::new(info),
            adaptive,
            bandits,
            waiting,
            passes,
            failure,
        })
    }

    /// Requests prepared and waiting for a slot (requests whose caller went
    /// away are dropped from the queue every engine step).
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }

    /// Target passes run so far and the rows they held.
    pub fn pass_totals(&self) -> PassTotals {
        self.passes.totals()
    }

    /// Why the engine can no longer serve (its thread panicked), if so.
    pub fn failure(&self) -> Option<String> {
        self.failure.reason()
    }

    /// What the bandits know of every language's candidate drafters seen
    /// in rounds with several candidates.
    pub fn bandit_reports(&self) -> Vec<BanditReport> {
        self.bandits
            .lock()
            .map(|reports| reports.values().cloned().collect())
            .unwrap_or_default()
    }

    /// The latest adaptive decision of every drafter and language seen.
    pub fn adaptive_reports(&self) -> Vec<AdaptiveReport> {
        self.adaptive
            .lock()
            .map(|reports| reports.values().cloned().collect())
            .unwrap_or_default()
    }

    /// Facts about the loaded models.
    pub fn info(&self) -> &EngineInfo {
        &self.info
    }

    /// Queue a request; its events arrive on the returned channel. Dropping
    /// the receiver cancels the generation and frees its slot.
    pub fn submit(&self, request: GenerationRequest) -> mpsc::UnboundedReceiver<GenerationEvent> {
        let (events, rx) = mpsc::unbounded_channel();
        if let Err(rejected) = self
            .submissions
            .send(prepare::Submission { request, events })
        {
            let _ = rejected
                .0
                .events
                .send(GenerationEvent::Failed(EngineError::ShutDown));
        }
        rx
    }

    /// Generate to the end and collect the result.
    pub async fn generate(&self, request: GenerationRequest) -> Result<Completion, EngineError> {
        let mut events = self.submit(request);
        let mut collector = Collector::default();
        while let Some(event) = events.recv().await {
            if let Some(done) = collector.push(event) {
                return done;
            }
        }
        Err(EngineError::ShutDown)
    }

    /// [`Engine::generate`] for blocking callers (not on an async worker).
    pub fn generate_blocking(&self, request: GenerationRequest) -> Result<Completion, EngineError> {
        let mut events = self.submit(request);
        let mut collector = Collector::default();
        while let Some(event) = events.blocking_recv() {
            if let Some(done) = collector.push(event) {
                return done;
            }
        }
        Err(EngineError::ShutDown)
    }
}

/// Folds a stream of events into a [`Completion`].
#[derive(Default)]
struct Collector {
    text: String,
    token_ids: Vec<u32>,
    drafter: Option<String>,
}

impl Collector {
    fn push(&mut self, event: GenerationEvent) -> Option<Result<Completion, EngineError>> {
        match event {
            GenerationEvent::Started { drafter, .. } => self.drafter = drafter,
            GenerationEvent::Tokens { text, token_ids } => {
                self.text.push_str(&text);
                self.token_ids.extend(token_ids);
            }
            GenerationEvent::Finished { reason, stats } => {
                let started_with = self.drafter.take();
                return Some(Ok(Completion {
                    text: std::mem::take(&mut self.text),
                    token_ids: std::mem::take(&mut self.token_ids),
                    finish_reason: reason,
                    drafter: stats.drafter.clone().or(started_with),
                    stats,
                }));
            }
            GenerationEvent::Failed(e) => return Some(Err(e)),
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_on_the_engine_thread_is_recorded_with_its_message() {
        let failure = Failure::default();
        let recorded = failure.clone();
        std::thread::spawn(move || supervise(&recorded, || panic!("index out of range")))
            .join()
            .expect("supervise catches the panic");
        assert_eq!(
            failure.reason().as_deref(),
            Some("the engine thread panicked: index out of range")
        );
        let healthy = Failure::default();
        supervise(&healthy, || {});
        assert_eq!(healthy.reason(), None);
    }
}
