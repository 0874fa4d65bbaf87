//! The engine thread. It owns llama.cpp: the backend, the models and one set
//! of contexts per slot (a target context and one per model drafter). Requests
//! arrive over a channel, wait in a queue for a free slot, and advance one
//! draft-and-verify round at a time, slots in turn, so concurrent requests
//! share the thread fairly. Each request streams its events on its own channel.

use std::collections::{BTreeMap, VecDeque};
use std::num::NonZeroU32;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use llama_cpp_2::context::params::{KvCacheType, LlamaContextParams};
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::{LlamaChatMessage, LlamaModel};
use llama_cpp_2::token::LlamaToken;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};

use crate::config::{DraftParams, DrafterKind};
use crate::speculative::adaptive::{AcceptanceModel, AdaptiveState, CostModel, Options, Proposer};
use crate::speculative::bandit::Bandit;
use crate::speculative::ngram::{self, NgramParams};
use crate::speculative::sampling::{self, Distribution, SamplingParams};
use crate::speculative::text::TextAssembler;
use crate::speculative::verifier::{self, Verdict};

use super::error::EngineError;
use super::exactness;
use super::pass::{decode_chunked, decode_timed, ms, truncate_kv, SamplingCosts, PROMPT_CHUNK};
use super::request::{
    main_drafter, DrafterChoice, DrafterStats, FinishReason, GenerationEvent, GenerationRequest,
    GenerationStats, Prompt,
};
use super::runtime::{backend, runtime_info, RuntimeInfo};
use super::vocab::{check_compatible, VocabInfo};
use super::{
    AdaptiveReport, BanditReport, CalibratedCosts, EngineConfig, EngineInfo, Verification,
    MAX_VERIFY_BATCH,
};

/// Whether contexts use a Q8_0 KV cache with flash attention. On CPU, ggml
/// decodes a single token over an F16/F32 cache of 512 or more cells with a
/// split-KV kernel whose reduction order differs from the per-row kernel used
/// for batches, so a token's logits would depend on whether it was verified in
/// a batch or decoded alone once the context passes about 256 tokens. A Q8_0
/// cache takes the per-row kernel for both (measured bit-identical up to
/// 1,500 tokens with the `batch_invariance` example) and halves KV memory.
/// Contexts of models on a GPU keep llama.cpp's defaults: the CPU kernels'
/// argument does not carry over, and the verification limit does not rest
/// on it there (see [`verification_limit`]). Decided per model at start-up,
/// from where llama.cpp placed it, so a GPU build without a GPU runs as a
/// CPU build does.
fn batch_invariant_kv(runtime: &RuntimeInfo, gpu_layers: u32) -> bool {
    !(runtime.has_gpu && gpu_layers > 0)
}

/// llama.cpp's `LLAMA_FLASH_ATTN_TYPE_ENABLED`.
const FLASH_ATTENTION_ENABLED: i32 = 1;

/// A message to the engine thread.
pub(super) struct Command {
    pub request: GenerationRequest,
    pub events: UnboundedSender<GenerationEvent>,
}

fn load_model(path: &Path, gpu_layers: u32) -> Result<LlamaModel, EngineError> {
    if !path.is_file() {
        return Err(EngineError::ModelNotFound {
            path: path.to_path_buf(),
        });
    }
    let params = LlamaModelParams::default().with_n_gpu_layers(gpu_layers);
    LlamaModel::load_from_file(backend()?, path, &params).map_err(|e| EngineError::ModelLoad {
        path: path.to_path_buf(),
        reason: format!(
            "{e} (not a valid GGUF model, truncated, or of an unsupported architecture)"
        ),
    })
}

/// A drafter as loaded: its settings and, for model drafters, which of the
/// loaded drafter models it uses.
struct LoadedDrafter {
    name: String,
    draft: DraftParams,
    model: Option<usize>,
}

/// The target, the drafter models (each file loaded once, however many
/// drafters name it), and the drafters.
struct LoadedModels {
    target: LlamaModel,
    drafter_models: Vec<LlamaModel>,
    /// Layers offloaded of each drafter model.
    drafter_gpu_layers: Vec<u32>,
    drafters: Vec<LoadedDrafter>,
}

/// Load the models and check every drafter against the target.
fn load_models(config: &EngineConfig) -> Result<LoadedModels, EngineError> {
    let target = load_model(&config.target.model, config.target.gpu_layers)?;
    let target_vocab = VocabInfo::of(&target);
    let mut drafter_models: Vec<LlamaModel> = Vec::new();
    let mut loaded: Vec<(&Path, u32)> = Vec::new();
    let mut drafters = Vec::with_capacity(config.drafters.len());
    for spec in &config.drafters {
        let model = match (spec.kind, &spec.model) {
            (DrafterKind::Ngram, _) => None,
            (DrafterKind::Model, None) => {
                return Err(EngineError::InvalidRequest(format!(
                    "drafter `{}` of kind model has no model file",
                    spec.name
                )))
            }
            (DrafterKind::Model, Some(path)) => {
                let key = (path.as_path(), spec.gpu_layers);
                match loaded.iter().position(|k| *k == key) {
                    Some(index) => Some(index),
                    None => {
                        let model = load_model(path, spec.gpu_layers)?;
                        check_compatible(&target_vocab, &VocabInfo::of(&model)).map_err(
                            |reason| EngineError::IncompatibleDrafter {
                                drafter: spec.name.clone(),
                                reason,
                            },
                        )?;
                        drafter_models.push(model);
                        loaded.push(key);
                        Some(drafter_models.len() - 1)
                    }
                }
            }
        };
        spec.draft
            .validate()
            .map_err(|e| EngineError::InvalidRequest(format!("drafter `{}`: {e}", spec.name)))?;
        drafters.push(LoadedDrafter {
            name: spec.name.clone(),
            draft: spec.draft,
            model,
        });
    }
    Ok(LoadedModels {
        target,
        drafter_models,
        drafter_gpu_layers: loaded.iter().map(|&(_, layers)| layers).collect(),
        drafters,
    })
}

fn new_context<'m>(
    model: &'m LlamaModel,
    name: &str,
    context: u32,
    threads: i32,
    batch_invariant: bool,
) -> Result<LlamaContext<'m>, EngineError> {
    let params = LlamaContextParams::default()
        .with_n_ctx(NonZeroU32::new(context))
        .with_n_batch(PROMPT_CHUNK as u32)
        .with_n_ubatch(PROMPT_CHUNK as u32)
        .with_n_seq_max(1)
        .with_n_threads(threads)
        .with_n_threads_batch(threads);
    // Batch-invariant attention (see `batch_invariant_kv`): flash attention
    // over a quantized KV cache takes the same per-row kernel for one token as
    // for a batch, at every context length.
    let params = if batch_invariant {
        params
            .with_flash_attention_policy(FLASH_ATTENTION_ENABLED)
            .with_type_k(KvCacheType::Q8_0)
            .with_type_v(KvCacheType::Q8_0)
    } else {
        params
    };
    model
        .new_context(backend()?, params)
        .map_err(|e| EngineError::Context {
            model: name.to_string(),
            reason: e.to_string(),
        })
}

/// Load everything, report readiness (or the load error), then serve commands
/// until every handle is dropped.
pub(super) fn run(
    config: EngineConfig,
    ready: std::sync::mpsc::SyncSender<Result<EngineInfo, EngineError>>,
    commands: UnboundedReceiver<Command>,
    reports: Arc<Mutex<AdaptiveReports>>,
    bandit_reports: Arc<Mutex<BanditReports>>,
) {
    let LoadedModels {
        target,
        drafter_models,
        drafter_gpu_layers,
        drafters,
    } = match load_models(&config) {
        Ok(models) => models,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    let runtime = match runtime_info() {
        Ok(r) => r,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    let threads = config.threads as i32;
    let invariant = Invariance {
        target: batch_invariant_kv(&runtime, config.target.gpu_layers),
        drafters: drafter_gpu_layers
            .iter()
            .map(|&layers| batch_invariant_kv(&runtime, layers))
            .collect(),
    };
    let mut slots = Vec::with_capacity(config.slots);
    for _ in 0..config.slots.max(1) {
        match Slot::new(
            &target,
            &drafter_models,
            config.target.context,
            threads,
            &invariant,
        ) {
            Ok(slot) => slots.push(slot),
            Err(e) => {
                let _ = ready.send(Err(e));
                return;
            }
        }
    }
    let verification =
        match verification_limit(&config, &runtime, &target, &drafters, &mut slots[0]) {
            Ok(v) => v,
            Err(e) => {
                let _ = ready.send(Err(e));
                return;
            }
        };
    let max_verify_batch = verification.max_verify_batch;
    let calibration = match calibrate(&target, &drafters, &mut slots[0], max_verify_batch) {
        Ok(calibration) => calibration,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    let info = EngineInfo {
        context: config.target.context as usize,
        vocab_size: target.vocab().n_tokens().max(0) as usize,
        drafters: drafters.iter().map(|d| d.name.clone()).collect(),
        drafter_models: drafter_models.len(),
        has_chat_template: target.chat_template(None).is_ok(),
        slots: slots.len(),
        verification,
        runtime,
        costs: calibration.table.clone(),
    };
    if ready.send(Ok(info)).is_err() {
        return;
    }
    let mut scheduler = Scheduler {
        target: &target,
        drafters: &drafters,
        context: config.target.context as usize,
        max_verify_batch,
        slots,
        waiting: VecDeque::new(),
        costs: calibration.costs,
        sampling_costs: calibration.sampling,
        adaptive: BTreeMap::new(),
        reports,
        bandits: BTreeMap::new(),
        bandit_reports,
    };
    scheduler.serve(commands);
}

/// One sequence's worth of llama.cpp state.
struct Slot<'m> {
    target: LlamaContext<'m>,
    /// One context per drafter model (drafters sharing a model share it: a
    /// slot runs one sequence at a time, and one drafter per round).
    drafters: Vec<LlamaContext<'m>>,
    batch: LlamaBatch<'static>,
    sequence: Option<Sequence>,
}

/// Which models' contexts take the batch-invariant KV cache (see
/// [`batch_invariant_kv`]).
struct Invariance {
    target: bool,
    /// Per drafter model.
    drafters: Vec<bool>,
}

impl<'m> Slot<'m> {
    fn new(
        target: &'m LlamaModel,
        drafter_models: &'m [LlamaModel],
        context: u32,
        threads: i32,
        invariant: &Invariance,
    ) -> Result<Self, EngineError> {
        let target_ctx = new_context(target, "the target", context, threads, invariant.target)?;
        let mut drafter_ctxs = Vec::with_capacity(drafter_models.len());
        for (i, model) in drafter_models.iter().enumerate() {
            drafter_ctxs.push(new_context(
                model,
                &format!("drafter model {i}"),
                context,
                threads,
                invariant.drafters.get(i).copied().unwrap_or(true),
            )?);
        }
        let capacity = PROMPT_CHUNK.max(DraftParams::MAX_DRAFT as usize + 1);
        Ok(Self {
            target: target_ctx,
            drafters: drafter_ctxs,
            batch: LlamaBatch::new(capacity, 1),
            sequence: None,
        })
    }
}

/// A candidate drafter of a request, resolved against the loaded drafters.
#[derive(Debug, Clone, Copy)]
struct Candidate {
    /// Index into the loaded drafters (and their cost models).
    drafter: usize,
    /// The drafter's model (index into the slot's drafter contexts), if any.
    model: Option<usize>,
    /// Draft controls for this request.
    draft: DraftParams,
}

/// A request, validated and tokenized, waiting for a slot.
struct Prepared {
    tokens: Vec<u32>,
    /// Candidate drafters in order of preference; empty: plain decoding.
    candidates: Vec<Candidate>,
    sampling: SamplingParams,
    max_tokens: usize,
    stop: Vec<String>,
    language: String,
}

/// A request being generated in a slot.
struct Sequence {
    events: UnboundedSender<GenerationEvent>,
    /// Candidate drafters in order of preference; empty: plain decoding.
    candidates: Vec<Candidate>,
    /// The candidates' drafter indices (the bandit's arms).
    arms: Vec<usize>,
    /// The candidate of the current round (0 with fewer than two).
    current: usize,
    /// What each candidate did, parallel to `candidates`.
    by_candidate: Vec<DrafterStats>,
    /// Tokens the last round produced and its milliseconds of drafting and
    /// verification: the bandit's reward.
    last_round: Option<(usize, f64)>,
    /// Key of the adaptive state and the bandit: the request's language.
    language: String,
    /// Prompt lookup's acceptance in this request (adaptive drafting).
    lookup: AcceptanceModel,
    sampling: SamplingParams,
    /// Milliseconds the target's sampling of one position costs this
    /// request (smoothed over its rounds), for adaptive drafting.
    sample_ms: f64,
    max_tokens: usize,
    /// Prompt and generated tokens.
    tokens: Vec<u32>,
    /// Tokens whose keys and values are in the target's KV cache (a prefix of `tokens`).
    target_past: usize,
    /// Positions held in each drafter model's KV cache (indexed like the
    /// slot's drafter contexts); beyond `tokens.len()` they are the current
    /// round's drafted tokens. A model not used for some rounds lags behind
    /// and catches up when next used.
    drafter_past: Vec<usize>,
    rng: ChaCha8Rng,
    text: TextAssembler,
    stats: GenerationStats,
    started: Instant,
}

/// What a round ended with.
enum Progress {
    Continue,
    Finished(FinishReason),
}

struct Scheduler<'m> {
    target: &'m LlamaModel,
    drafters: &'m [LoadedDrafter],
    context: usize,
    max_verify_batch: usize,
    slots: Vec<Slot<'m>>,
    waiting: VecDeque<(Prepared, UnboundedSender<GenerationEvent>)>,
    /// Cost model per drafter (calibrated at start-up), for adaptive drafting.
    costs: Vec<CostModel>,
    /// What sampling one position costs the target (calibrated at start-up).
    sampling_costs: SamplingCosts,
    /// Adaptive state per drafter and language.
    adaptive: BTreeMap<(usize, String), AdaptiveState>,
    /// What the adaptive states last decided, for metrics.
    reports: Arc<Mutex<AdaptiveReports>>,
    /// Per language, the choice among candidate drafters (arms: drafter indices).
    bandits: BTreeMap<String, Bandit<usize>>,
    /// What the bandits last knew, for metrics.
    bandit_reports: Arc<Mutex<BanditReports>>,
}

impl<'m> Scheduler<'m> {
    fn serve(&mut self, mut commands: UnboundedReceiver<Command>) {
        let mut open = true;
        loop {
            let busy = self.slots.iter().any(|s| s.sequence.is_some());
            if !busy && self.waiting.is_empty() {
                if !open {
                    return;
                }
                match commands.blocking_recv() {
                    Some(command) => self.accept(command),
                    None => return,
                }
            }
            while open {
                match commands.try_recv() {
                    Ok(command) => self.accept(command),
                    Err(tokio::sync::mpsc::error::TryRecvError::Empty) => break,
                    Err(tokio::sync::mpsc::error::TryRecvError::Disconnected) => open = false,
                }
            }
            self.admit();
            for index in 0..self.slots.len() {
                self.advance(index);
            }
        }
    }

    /// Validate and tokenize a request; refuse it at once if it is bad.
    fn accept(&mut self, command: Command) {
        match self.prepare(command.request) {
            Ok(prepared) => self.waiting.push_back((prepared, command.events)),
            Err(e) => {
                let _ = command.events.send(GenerationEvent::Failed(e));
            }
        }
    }

    fn prepare(&self, request: GenerationRequest) -> Result<Prepared, EngineError> {
        if request.max_tokens == 0 {
            return Err(EngineError::InvalidRequest(
                "max_tokens must be at least 1".into(),
            ));
        }
        request
            .sampling
            .validate()
            .map_err(|e| EngineError::InvalidRequest(e.message))?;
        if let Some(draft) = request.draft {
            draft.validate().map_err(EngineError::InvalidRequest)?;
        }
        let named: Vec<(&str, Option<DraftParams>)> = match &request.drafter {
            DrafterChoice::None => Vec::new(),
            DrafterChoice::Named(name) => vec![(name.as_str(), None)],
            DrafterChoice::Candidates(list) => {
                list.iter().map(|c| (c.name.as_str(), c.draft)).collect()
            }
        };
        let mut candidates: Vec<Candidate> = Vec::with_capacity(named.len());
        for (name, draft) in named {
            let index = self
                .drafters
                .iter()
                .position(|d| d.name == name)
                .ok_or_else(|| EngineError::UnknownDrafter(name.to_string()))?;
            let draft = draft
                .or(request.draft)
                .unwrap_or(self.drafters[index].draft);
            draft.validate().map_err(EngineError::InvalidRequest)?;
            // A drafter named twice is one arm.
            if candidates.iter().all(|c| c.drafter != index) {
                candidates.push(Candidate {
                    drafter: index,
                    model: self.drafters[index].model,
                    draft,
                });
            }
        }
        let text = match &request.prompt {
            Prompt::Text(text) => text.clone(),
            Prompt::Chat(messages) => self.render_chat(messages)?,
        };
        let vocab = self.target.vocab();
        let tokens: Vec<u32> = vocab
            .tokenize(text.as_bytes(), true, true)
            .into_iter()
            .map(|t| t.0 as u32)
            .collect();
        if tokens.is_empty() {
            return Err(EngineError::InvalidRequest("the prompt is empty".into()));
        }
        if tokens.len() >= self.context {
            return Err(EngineError::PromptTooLong {
                prompt_tokens: tokens.len(),
                context: self.context,
            });
        }
        Ok(Prepared {
            tokens,
            candidates,
            sampling: request.sampling,
            max_tokens: request.max_tokens,
            stop: request.stop,
            language: request.language.unwrap_or_else(|| UNKNOWN_LANGUAGE.into()),
        })
    }

    fn render_chat(&self, messages: &[super::request::ChatMessage]) -> Result<String, EngineError> {
        if messages.is_empty() {
            return Err(EngineError::InvalidRequest("messages is empty".into()));
        }
        let template = self.target.chat_template(None).map_err(|e| {
            EngineError::InvalidRequest(format!("the target model has no chat template: {e}"))
        })?;
        let chat = messages
            .iter()
            .map(|m| LlamaChatMessage::new(m.role.clone(), m.content.clone()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| {
                EngineError::InvalidRequest(format!("message contains a NUL byte: {e}"))
            })?;
        self.target
            .apply_chat_template(&template, &chat, true)
            .map_err(|e| {
                EngineError::InvalidRequest(format!("cannot apply the chat template: {e}"))
            })
    }

    /// Move waiting requests into free slots.
    fn admit(&mut self) {
        for slot in &mut self.slots {
            if slot.sequence.is_some() {
                continue;
            }
            let Some((p, events)) = self.waiting.pop_front() else {
                return;
            };
            if events.is_closed() {
                continue;
            }
            slot.target.clear_kv_cache();
            for ctx in &mut slot.drafters {
                ctx.clear_kv_cache();
            }
            let stats = GenerationStats {
                prompt_tokens: p.tokens.len(),
                ..GenerationStats::default()
            };
            let _ = events.send(GenerationEvent::Started {
                prompt_tokens: p.tokens.len(),
                drafter: p
                    .candidates
                    .first()
                    .map(|c| self.drafters[c.drafter].name.clone()),
            });
            slot.sequence = Some(Sequence {
                events,
                arms: p.candidates.iter().map(|c| c.drafter).collect(),
                by_candidate: vec![DrafterStats::default(); p.candidates.len()],
                candidates: p.candidates,
                current: 0,
                last_round: None,
                language: p.language,
                lookup: AcceptanceModel::default(),
                rng: ChaCha8Rng::seed_from_u64(p.sampling.seed),
                sample_ms: self.sampling_costs.for_request(p.sampling.is_greedy()),
                sampling: p.sampling,
                max_tokens: p.max_tokens,
                tokens: p.tokens,
                target_past: 0,
                drafter_past: vec![0; slot.drafters.len()],
                text: TextAssembler::new(p.stop),
                stats,
                started: Instant::now(),
            });
        }
    }

    /// Run one round for the slot's sequence and report its outcome.
    fn advance(&mut self, index: usize) {
        let slot = &mut self.slots[index];
        let Some(seq) = slot.sequence.as_mut() else {
            return;
        };
        if seq.events.is_closed() {
            // The caller went away: free the slot.
            slot.sequence = None;
            return;
        }
        // Several candidates: the language's bandit picks this round's.
        // With one (or none) there is nothing to choose and nothing to learn.
        let choosing = seq.candidates.len() > 1;
        if choosing {
            seq.current = match self.bandits.get(&seq.language) {
                Some(bandit) => bandit.choose(&seq.arms),
                None => 0,
            };
        }
        let candidate = seq.candidates.get(seq.current).copied();
        let policy = match candidate {
            Some(c) if c.draft.adaptive => self.costs.get_mut(c.drafter).map(|cost| Policy {
                cost,
                state: self
                    .adaptive
                    .entry((c.drafter, seq.language.clone()))
                    .or_default(),
            }),
            _ => None,
        };
        let adaptive_key = policy
            .as_ref()
            .and(candidate)
            .map(|c| (c.drafter, seq.language.clone()));
        let outcome = round(
            self.target,
            self.context,
            self.max_verify_batch,
            slot,
            policy,
        );
        if let (true, Ok(_), Some(c)) = (choosing, &outcome, candidate) {
            self.learn(index, c.drafter);
        }
        self.finish_round(index, outcome);
        if let Some(key) = adaptive_key {
            self.report(&key);
        }
    }

    /// Feed the round just run with `drafter` to its language's bandit:
    /// tokens produced per second of drafting and verification (a drafter
    /// model's catch-up on tokens it had not seen included).
    fn learn(&mut self, index: usize, drafter: usize) {
        let Some(seq) = self.slots[index].sequence.as_mut() else {
            return;
        };
        let Some((tokens, round_ms)) = seq.last_round.take() else {
            return;
        };
        if round_ms <= 0.0 {
            return;
        }
        let bandit = self.bandits.entry(seq.language.clone()).or_default();
        bandit.observe(&drafter, tokens as f64 * 1000.0 / round_ms);
        let reports: Vec<BanditReport> = bandit
            .arms()
            .filter_map(|(&arm, stats)| {
                Some(BanditReport {
                    drafter: self.drafters.get(arm)?.name.clone(),
                    language: seq.language.clone(),
                    share: bandit.share(&arm),
                    tokens_per_second: stats.mean(),
                    rounds: stats.rounds(),
                })
            })
            .collect();
        if let Ok(mut published) = self.bandit_reports.lock() {
            for r in reports {
                published.insert((r.language.clone(), r.drafter.clone()), r);
            }
        }
    }

    /// Stream the end of a generation that finished or failed in this round.
    fn finish_round(&mut self, index: usize, outcome: Result<Progress, EngineError>) {
        let slot = &mut self.slots[index];
        let Some(seq) = slot.sequence.as_mut() else {
            return;
        };
        match outcome {
            Ok(Progress::Continue) => {}
            Ok(Progress::Finished(reason)) => {
                let tail = seq.text.finish();
                if !tail.is_empty() {
                    let _ = seq.events.send(GenerationEvent::Tokens {
                        text: tail,
                        token_ids: Vec::new(),
                    });
                }
                seq.stats.total_ms = ms(seq.started);
                seq.stats.finalize();
                let names: Vec<&str> = seq
                    .candidates
                    .iter()
                    .map(|c| self.drafters[c.drafter].name.as_str())
                    .collect();
                seq.stats.drafter =
                    main_drafter(names.iter().copied().zip(&seq.by_candidate)).map(String::from);
                seq.stats.drafters = names
                    .iter()
                    .map(|n| n.to_string())
                    .zip(std::mem::take(&mut seq.by_candidate))
                    .collect();
                let _ = seq.events.send(GenerationEvent::Finished {
                    reason,
                    stats: std::mem::take(&mut seq.stats),
                });
                slot.sequence = None;
            }
            Err(e) => {
                tracing::error!(error = %e, "generation failed");
                let _ = seq.events.send(GenerationEvent::Failed(e));
                slot.sequence = None;
            }
        }
    }
}

impl Scheduler<'_> {
    /// Publish the adaptive state of `key` for metrics.
    fn report(&self, key: &(usize, String)) {
        let (Some(state), Some(drafter), Some(cost)) = (
            self.adaptive.get(key),
            self.drafters.get(key.0),
            self.costs.get(key.0),
        ) else {
            return;
        };
        let Some(decision) = state.last_decision() else {
            return;
        };
        let report = AdaptiveReport {
            drafter: drafter.name.clone(),
            language: key.1.clone(),
            proposer: decision.proposer,
            draft_length: decision.draft_length,
            expected_tokens_per_second: decision.tokens_per_second,
            plain_tokens_per_second: decision.plain_tokens_per_second,
            acceptance: state.acceptance(drafter.draft.max as usize),
            target_pass_ms: cost.unit_ms(),
            draft_step_ms: cost.draft_step_ms(),
        };
        if let Ok(mut reports) = self.reports.lock() {
            reports.insert((report.drafter.clone(), report.language.clone()), report);
        }
    }
}

/// Latest adaptive decision per drafter and language.
pub(super) type AdaptiveReports = BTreeMap<(String, String), AdaptiveReport>;

/// Latest bandit statistics per language and drafter.
pub(super) type BanditReports = BTreeMap<(String, String), BanditReport>;

/// Prompt lookup as adaptive drafting uses it: a match of at least two
/// tokens. Single-token matches are common in any text (in translation too)
/// and rarely continue correctly; each tried and refused costs a verification
/// pass.
const ADAPTIVE_LOOKUP: NgramParams = NgramParams {
    max_ngram: 3,
    min_ngram: 2,
};

/// Language key of requests that name none.
const UNKNOWN_LANGUAGE: &str = "und";

/// What adaptive drafting consults and refines in a round.
struct Policy<'a> {
    cost: &'a mut CostModel,
    state: &'a mut AdaptiveState,
}

/// How many tokens a verification pass may hold on this machine. On CPU it
/// is the pass size measured exact on the loaded target (see
/// [`exactness`](super::exactness)); with the target on a GPU a whole draft
/// is verified in one pass, and greedy output equals the target's up to
/// floating-point ties. Without drafters nothing is verified or measured.
fn verification_limit(
    config: &EngineConfig,
    runtime: &RuntimeInfo,
    target: &LlamaModel,
    drafters: &[LoadedDrafter],
    slot: &mut Slot,
) -> Result<Verification, EngineError> {
    if drafters.is_empty() {
        return Ok(Verification {
            max_verify_batch: 1,
            exactness: None,
            target_on_gpu: false,
        });
    }
    let cap = MAX_VERIFY_BATCH;
    let target_on_gpu = config.target.gpu_layers > 0 && runtime.has_gpu;
    let measured = exactness::measure(target, &mut slot.target, &mut slot.batch, cap)?;
    let max_verify_batch = if target_on_gpu {
        cap
    } else {
        measured.exact_tokens
    };
    tracing::info!(
        exact_tokens = measured.exact_tokens,
        tried_up_to = measured.tried_up_to,
        first_inexact = ?measured.first_inexact,
        took_ms = measured.took_ms,
        max_verify_batch,
        target_on_gpu,
        "measured the largest target pass with logits bit-identical to single-token decoding"
    );
    Ok(Verification {
        max_verify_batch,
        exactness: Some(measured),
        target_on_gpu,
    })
}

/// Pass sizes measured at start-up: every size up to 16 (the verification
/// cost curve) and the largest a round may verify; sizes in between are
/// interpolated.
fn calibration_sizes(largest: usize) -> Vec<usize> {
    let mut sizes: Vec<usize> = (1..=largest.min(16)).collect();
    if largest > 16 {
        sizes.push(largest);
    }
    sizes
}
/// Tokens of context before the measured passes.
const CALIBRATION_PREFIX: usize = 32;
/// Timed pairs per measured pass size and per draft step.
const CALIBRATION_PAIRS: usize = 3;

/// What start-up measured for the adaptive policy.
struct Calibration {
    /// Cost model per drafter.
    costs: Vec<CostModel>,
    /// What sampling one position costs the target.
    sampling: SamplingCosts,
    /// The measurements, for reports.
    table: Option<CalibratedCosts>,
}

/// Measure, on this hardware, target passes by size, each drafter's draft
/// step and the target's sampling of one position, for the adaptive policy
/// (which any request may ask for, so every engine with drafters
/// calibrates). Every pass is timed through the completion of its logits;
/// a draft step includes choosing its token. Uses (and clears) one slot's
/// contexts.
fn calibrate(
    target: &LlamaModel,
    drafters: &[LoadedDrafter],
    slot: &mut Slot,
    max_verify_batch: usize,
) -> Result<Calibration, EngineError> {
    if drafters.is_empty() {
        return Ok(Calibration {
            costs: Vec::new(),
            sampling: SamplingCosts {
                greedy_ms: 0.0,
                sampled_ms: 0.0,
            },
            table: None,
        });
    }
    let started = Instant::now();
    let largest = max_verify_batch.clamp(1, DraftParams::MAX_DRAFT as usize + 1);
    let text = "The quick brown fox jumps over the lazy dog. ".repeat(8);
    let mut prefix: Vec<u32> = target
        .vocab()
        .tokenize(text.as_bytes(), true, false)
        .into_iter()
        .map(|t| t.0 as u32)
        .collect();
    prefix.truncate(CALIBRATION_PREFIX);
    if prefix.is_empty() {
        return Err(EngineError::Decode(
            "calibration: the target tokenizes no text".into(),
        ));
    }
    let start = prefix.len();
    let probe: Vec<u32> = prefix.iter().cycle().take(largest).copied().collect();
    slot.target.clear_kv_cache();
    decode_chunked(&mut slot.target, &mut slot.batch, &prefix, 0)?;
    for ctx in &mut slot.drafters {
        ctx.clear_kv_cache();
        decode_chunked(ctx, &mut slot.batch, &prefix, 0)?;
    }
    let sizes = calibration_sizes(largest);
    // A first pass of each context warms caches and threads up.
    time_pass(&mut slot.target, &mut slot.batch, &probe[..1], start)?;
    for ctx in &mut slot.drafters {
        time_draft_step(ctx, &mut slot.batch, probe[0], start)?;
    }
    // Each larger pass and each draft step is timed right after a
    // one-token target pass, and costs what the median pair says relative
    // to it: a change of load during start-up touches both halves of a
    // pair alike, where it would skew times taken apart.
    let mut unit = f64::INFINITY;
    let mut pass_ratios = vec![Vec::with_capacity(CALIBRATION_PAIRS); sizes.len()];
    let mut step_ratios = vec![Vec::with_capacity(CALIBRATION_PAIRS); slot.drafters.len()];
    for _ in 0..CALIBRATION_PAIRS {
        for (&n, ratios) in sizes.iter().zip(&mut pass_ratios).filter(|(n, _)| **n > 1) {
            let one = time_pass(&mut slot.target, &mut slot.batch, &probe[..1], start)?;
            let pass = time_pass(&mut slot.target, &mut slot.batch, &probe[..n], start)?;
            unit = unit.min(one);
            ratios.push(pass / one);
        }
        for (ctx, ratios) in slot.drafters.iter_mut().zip(&mut step_ratios) {
            let one = time_pass(&mut slot.target, &mut slot.batch, &probe[..1], start)?;
            let step = time_draft_step(ctx, &mut slot.batch, probe[0], start)?;
            unit = unit.min(one);
            ratios.push(step / one);
        }
    }
    if !unit.is_finite() {
        unit = time_pass(&mut slot.target, &mut slot.batch, &probe[..1], start)?;
    }
    let passes: Vec<(usize, f64)> = sizes
        .iter()
        .zip(&mut pass_ratios)
        .map(|(&n, ratios)| (n, if n == 1 { unit } else { unit * median(ratios) }))
        .collect();
    let step_by_model: Vec<f64> = step_ratios
        .iter_mut()
        .map(|ratios| unit * median(ratios))
        .collect();
    for ctx in &mut slot.drafters {
        ctx.clear_kv_cache();
    }
    // Sampling one position, on the logits of a real pass.
    decode_timed(&mut slot.target, &mut slot.batch, &probe[..1], start, true)?;
    let logits = slot.target.get_logits_ith(0).to_vec();
    truncate_kv(&mut slot.target, start)?;
    let sampling = SamplingCosts {
        greedy_ms: best_of_three(|| sampling::argmax(&logits)),
        sampled_ms: best_of_three(|| {
            sampling::distribution(
                &logits,
                &SamplingParams {
                    temperature: 1.0,
                    ..SamplingParams::default()
                },
            )
        }),
    };
    slot.target.clear_kv_cache();
    let mut costs = Vec::with_capacity(drafters.len());
    for d in drafters {
        let step = d
            .model
            .and_then(|m| step_by_model.get(m).copied())
            .unwrap_or(0.0);
        let cost = CostModel::calibrated(&passes, step, largest).ok_or_else(|| {
            EngineError::Decode("calibration measured no single-token pass".into())
        })?;
        costs.push(cost);
    }
    let took_ms = ms(started);
    tracing::info!(
        passes = ?passes,
        draft_steps = ?step_by_model,
        sample_greedy_ms = sampling.greedy_ms,
        sample_ms = sampling.sampled_ms,
        took_ms,
        "calibrated costs for adaptive drafting"
    );
    Ok(Calibration {
        costs,
        sampling,
        table: Some(CalibratedCosts {
            target_passes: passes,
            draft_steps: step_by_model,
            sampling,
            took_ms,
        }),
    })
}

/// Weight of a request's sampling cost estimate against a new measurement.
const SAMPLE_COST_SMOOTHING: f64 = 0.8;

/// A request's per-position sampling cost after one more round's measurement.
fn smooth_sample_ms(old: f64, new: f64) -> f64 {
    if !new.is_finite() || new < 0.0 {
        return old;
    }
    SAMPLE_COST_SMOOTHING * old + (1.0 - SAMPLE_COST_SMOOTHING) * new
}

/// Milliseconds of one pass over `tokens` at `start`, through the
/// completion of its logits, rolled back after.
fn time_pass(
    ctx: &mut LlamaContext,
    batch: &mut LlamaBatch,
    tokens: &[u32],
    start: usize,
) -> Result<f64, EngineError> {
    let elapsed = decode_timed(ctx, batch, tokens, start, true)?;
    truncate_kv(ctx, start)?;
    Ok(elapsed)
}

/// Milliseconds of one draft step at `start`: a one-token pass through its
/// logits and the (greedy) choice of its token, rolled back after.
fn time_draft_step(
    ctx: &mut LlamaContext,
    batch: &mut LlamaBatch,
    token: u32,
    start: usize,
) -> Result<f64, EngineError> {
    let started = Instant::now();
    decode_timed(ctx, batch, &[token], start, false)?;
    std::hint::black_box(sampling::argmax(ctx.get_logits_ith(0)));
    let elapsed = ms(started);
    truncate_kv(ctx, start)?;
    Ok(elapsed)
}

/// The middle of `values` (the lower middle of an even count; 1 when empty).
fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => 1.0,
        n => values[(n - 1) / 2],
    }
}

/// Milliseconds of `work`, the best of three runs (sampling transforms are
/// pure, so repeating them changes nothing).
fn best_of_three<T>(mut work: impl FnMut() -> T) -> f64 {
    (0..3)
        .map(|_| {
            let started = Instant::now();
            std::hint::black_box(work());
            ms(started)
        })
        .fold(f64::INFINITY, f64::min)
}

/// A draft: tokens and, when sampling, the distributions they were drawn from.
#[derive(Default)]
struct Draft {
    tokens: Vec<u32>,
    dists: Vec<Distribution>,
    /// Single-token drafter steps taken and their milliseconds, each
    /// through its logits and the choice of its token (catching up on a long
    /// run of unseen tokens is not a step).
    steps: usize,
    steps_ms: f64,
}

/// Propose up to `k` tokens with drafter model `model`. The drafter first
/// catches up on the tokens it has not seen (the previous round's last
/// token, or every token since it last drafted when other candidates
/// drafted in between), then decodes its own proposals, stopping early
/// below `p_min` confidence.
fn draft_with_model(
    seq: &mut Sequence,
    model: usize,
    ctx: &mut LlamaContext,
    batch: &mut LlamaBatch,
    k: usize,
    p_min: f32,
    max_verify_batch: usize,
) -> Result<Draft, EngineError> {
    let Some(&past) = seq.drafter_past.get(model) else {
        return Err(EngineError::Decode(format!(
            "drafter model {model} has no context in this slot"
        )));
    };
    let mut draft = Draft {
        tokens: Vec::with_capacity(k),
        ..Draft::default()
    };
    // Catch up the way the target evaluated the same tokens (a long run as a
    // prompt, then its last token alone), so that a drafter identical to the
    // target also computes identical logits.
    let unseen = seq.tokens[past..].to_vec();
    let (body, last) = if unseen.len() > max_verify_batch {
        unseen.split_at(unseen.len() - 1)
    } else {
        unseen.split_at(0)
    };
    decode_chunked(ctx, batch, body, past)?;
    let first_pass_ms = decode_timed(ctx, batch, last, past + body.len(), false)?;
    // The first decode is a step when it evaluates one token.
    let catching_up = last.len() > 1;
    let mut steps = usize::from(!catching_up);
    let mut steps_ms = if catching_up { 0.0 } else { first_pass_ms };
    seq.drafter_past[model] = seq.tokens.len();
    let mut logits_index = (last.len() - 1) as i32;
    loop {
        let choosing = Instant::now();
        let logits = ctx.get_logits_ith(logits_index);
        if p_min > 0.0 && sampling::top_probability(logits) < p_min {
            steps_ms += ms(choosing);
            break;
        }
        let token = if seq.sampling.is_greedy() {
            sampling::argmax(logits)
        } else {
            let q = sampling::distribution(logits, &seq.sampling);
            let token = q.sample(&mut seq.rng);
            draft.dists.push(q);
            token
        };
        draft.tokens.push(token);
        steps_ms += ms(choosing);
        if draft.tokens.len() == k {
            break;
        }
        steps_ms += decode_timed(ctx, batch, &[token], seq.drafter_past[model], false)?;
        steps += 1;
        seq.drafter_past[model] += 1;
        logits_index = 0;
    }
    draft.steps = steps;
    draft.steps_ms = steps_ms;
    Ok(draft)
}

/// The target's view of a verification batch, evaluated in passes of at most
/// `chunk` tokens as positions are asked for (in increasing order).
struct VerifyWindow<'a, 'm> {
    ctx: &'a mut LlamaContext<'m>,
    batch: &'a mut LlamaBatch<'static>,
    tokens: &'a [u32],
    start: usize,
    chunk: usize,
    evaluated: usize,
    /// Tokens and milliseconds of each target pass run, through the
    /// completion of its logits.
    passes: Vec<(usize, f64)>,
    /// Positions sampled and the milliseconds their sampling took.
    sampled: usize,
    sampling_ms: f64,
}

impl VerifyWindow<'_, '_> {
    /// `choose` applied to the target's logits after `tokens[..=i]`.
    fn sample<T>(&mut self, i: usize, choose: impl FnOnce(&[f32]) -> T) -> Result<T, EngineError> {
        if i >= self.evaluated {
            let end = (self.evaluated + self.chunk).min(self.tokens.len());
            let pass_ms = decode_timed(
                self.ctx,
                self.batch,
                &self.tokens[self.evaluated..end],
                self.start + self.evaluated,
                true,
            )?;
            self.passes.push((end - self.evaluated, pass_ms));
            self.evaluated = end;
        }
        let pass_start = (self.evaluated - 1) / self.chunk * self.chunk;
        debug_assert!(
            i >= pass_start,
            "positions are asked for in increasing order"
        );
        let in_pass = i - pass_start;
        let started = Instant::now();
        let chosen = choose(self.ctx.get_logits_ith(in_pass as i32));
        self.sampling_ms += ms(started);
        self.sampled += 1;
        Ok(chosen)
    }
}

/// One round of draft-and-verify for the slot's sequence. With an empty draft
/// it is exactly one step of plain decoding.
fn round(
    target: &LlamaModel,
    context: usize,
    max_verify_batch: usize,
    slot: &mut Slot,
    mut policy: Option<Policy>,
) -> Result<Progress, EngineError> {
    let Some(seq) = slot.sequence.as_mut() else {
        return Ok(Progress::Continue);
    };
    let len = seq.tokens.len();

    // Read the prompt (all but its last token, which opens the first round).
    if seq.target_past + 1 < len {
        let t0 = Instant::now();
        let pending = seq.tokens[seq.target_past..len - 1].to_vec();
        decode_chunked(&mut slot.target, &mut slot.batch, &pending, seq.target_past)?;
        // Wait for the device, so that the reading is counted here.
        slot.target.synchronize();
        seq.target_past = len - 1;
        seq.stats.prefill_ms += ms(t0);
    }

    // This round's drafter: the candidate chosen for it, if any.
    let candidate = seq.candidates.get(seq.current).copied();
    let drafter_model = candidate.and_then(|c| c.model);
    let params = candidate.map_or_else(DraftParams::default, |c| c.draft);

    // Draft: no more than fits in the context or than max_tokens can use.
    let remaining = seq.max_tokens - seq.stats.completion_tokens;
    let room = context.saturating_sub(len + 1);
    let most = (params.max as usize)
        .min(room)
        .min(remaining.saturating_sub(1));
    let chunk = max_verify_batch.max(1);
    let t0 = Instant::now();
    // Who drafts how much: the fixed settings, or the adaptive decision
    // among the drafter model, prompt lookup and plain decoding.
    let (proposer, k, lookup) = match (policy.as_mut(), candidate) {
        (Some(p), Some(_)) => {
            let lookup = if most > 0 {
                ngram::propose(&seq.tokens, ADAPTIVE_LOOKUP, most)
            } else {
                Vec::new()
            };
            let decision = p.state.decide(
                p.cost,
                &Options {
                    model: drafter_model.is_some(),
                    lookup: lookup.len(),
                    min: params.min as usize,
                    max: most,
                    chunk,
                    sample_ms: seq.sample_ms,
                },
                &seq.lookup,
            );
            (decision.proposer, decision.draft_length, lookup)
        }
        (_, Some(_)) if most > 0 => match drafter_model {
            Some(_) => (Proposer::Model, most, Vec::new()),
            None => (Proposer::Lookup, most, Vec::new()),
        },
        _ => (Proposer::None, 0, Vec::new()),
    };
    let mut draft = match (
        proposer,
        drafter_model.and_then(|m| slot.drafters.get_mut(m).map(|ctx| (m, ctx))),
    ) {
        (Proposer::Model, Some((m, ctx))) if k > 0 => draft_with_model(
            seq,
            m,
            ctx,
            &mut slot.batch,
            k,
            params.p_min,
            max_verify_batch,
        )?,
        (Proposer::Lookup, _) if k > 0 => {
            // The adaptive decision drafts from the proposal it was shown.
            let mut tokens = if lookup.is_empty() {
                ngram::propose(&seq.tokens, NgramParams::default(), k)
            } else {
                lookup
            };
            tokens.truncate(k);
            let dists = if seq.sampling.is_greedy() {
                Vec::new()
            } else {
                tokens
                    .iter()
                    .map(|&t| Distribution::point_mass(t))
                    .collect()
            };
            Draft {
                tokens,
                dists,
                steps: 0,
                steps_ms: 0.0,
            }
        }
        _ => Draft::default(),
    };
    if draft.tokens.len() < params.min as usize {
        draft.tokens.clear();
        draft.dists.clear();
    }
    let draft_ms = ms(t0);
    seq.stats.draft_ms += draft_ms;

    // Verify the last token and the draft in target passes of at most
    // `max_verify_batch` tokens, evaluated only as far as acceptance goes.
    let t0 = Instant::now();
    let mut batch_tokens = Vec::with_capacity(draft.tokens.len() + 1);
    batch_tokens.push(seq.tokens[len - 1]);
    batch_tokens.extend_from_slice(&draft.tokens);
    let mut window = VerifyWindow {
        ctx: &mut slot.target,
        batch: &mut slot.batch,
        tokens: &batch_tokens,
        start: len - 1,
        chunk,
        evaluated: 0,
        passes: Vec::with_capacity(1),
        sampled: 0,
        sampling_ms: 0.0,
    };
    let verdict = if seq.sampling.is_greedy() {
        verifier::verify_greedy_lazily(&draft.tokens, |i| window.sample(i, sampling::argmax))?
    } else {
        let params = &seq.sampling;
        verifier::verify_sampled_lazily(
            &draft.tokens,
            &draft.dists,
            |i| window.sample(i, |l| sampling::distribution(l, params)),
            &mut seq.rng,
        )?
    };
    let verify_ms = ms(t0);
    seq.stats.verify_ms += verify_ms;
    let passes = std::mem::take(&mut window.passes);
    if window.sampled > 0 {
        seq.sample_ms = smooth_sample_ms(seq.sample_ms, window.sampling_ms / window.sampled as f64);
    }
    let Verdict { accepted, next } = verdict;
    // The round committed the accepted tokens and the target's own.
    seq.last_round = Some((accepted + 1, draft_ms + verify_ms));

    if let Some(p) = policy {
        for &(tokens, pass_ms) in &passes {
            p.cost.observe_pass(tokens, pass_ms);
        }
        p.cost.observe_draft(draft.steps, draft.steps_ms);
        p.state
            .observe(proposer, draft.tokens.len(), accepted, &mut seq.lookup);
    }
    if seq.stats.rounds_by_draft_length.len() <= k {
        seq.stats.rounds_by_draft_length.resize(k + 1, 0);
    }
    seq.stats.rounds_by_draft_length[k] += 1;

    // Roll both KV caches back to the accepted prefix.
    let keep = len + accepted;
    truncate_kv(&mut slot.target, keep)?;
    seq.target_past = keep;
    // Only this round's drafter model can hold positions past `keep`: the
    // others stopped at most at the start of this round.
    if let Some(m) = drafter_model {
        if let (Some(past), Some(ctx)) = (seq.drafter_past.get_mut(m), slot.drafters.get_mut(m)) {
            if *past > keep {
                *past = keep;
                truncate_kv(ctx, keep)?;
            }
        }
    }
    if let Some(stats) = seq.by_candidate.get_mut(seq.current) {
        stats.record_round(k, draft.tokens.len(), accepted);
    }

    seq.stats.rounds += 1;
    if !draft.tokens.is_empty() {
        seq.stats.drafts += 1;
        seq.stats.draft_tokens += draft.tokens.len() as u64;
        seq.stats.accepted_tokens += accepted as u64;
        if proposer == Proposer::Lookup {
            seq.stats.lookup_draft_tokens += draft.tokens.len() as u64;
            seq.stats.lookup_accepted_tokens += accepted as u64;
        }
        if seq.stats.accepted_per_position.len() < draft.tokens.len() {
            seq.stats
                .accepted_per_position
                .resize(draft.tokens.len(), 0);
        }
        for count in &mut seq.stats.accepted_per_position[..accepted] {
            *count += 1;
        }
    }

    // Emit the accepted tokens and the target's own, stopping where due.
    let vocab = target.vocab();
    let mut emitted = Vec::with_capacity(accepted + 1);
    let mut released = String::new();
    let mut finish = None;
    for &token in draft.tokens[..accepted]
        .iter()
        .chain(std::iter::once(&next))
    {
        if vocab.is_eog(LlamaToken(token as i32)) {
            finish = Some(FinishReason::Stop);
            break;
        }
        seq.tokens.push(token);
        seq.stats.completion_tokens += 1;
        emitted.push(token);
        let pushed = seq
            .text
            .push(&vocab.token_to_piece(LlamaToken(token as i32), false, None));
        released.push_str(&pushed.released);
        if pushed.stopped {
            finish = Some(FinishReason::Stop);
            break;
        }
        if seq.stats.completion_tokens >= seq.max_tokens {
            finish = Some(FinishReason::Length);
            break;
        }
    }
    if finish.is_none() && seq.tokens.len() >= context {
        finish = Some(FinishReason::Length);
    }
    if !emitted.is_empty() || !released.is_empty() {
        let _ = seq.events.send(GenerationEvent::Tokens {
            text: released,
            token_ids: emitted,
        });
    }
    Ok(finish.map_or(Progress::Continue, Progress::Finished))
}

#[cfg(test)]
mod tests {
    use super::{calibration_sizes, smooth_sample_ms};

    #[test]
    fn a_request_sampling_cost_follows_its_measurements() {
        let mut cost = 0.1;
        for _ in 0..40 {
            cost = smooth_sample_ms(cost, 2.0);
        }
        assert!((cost - 2.0).abs() < 0.01, "{cost}");
        assert_eq!(smooth_sample_ms(cost, f64::NAN), cost);
        assert_eq!(smooth_sample_ms(cost, -1.0), cost);
    }

    #[test]
    fn calibration_covers_the_curve_and_the_largest_pass() {
        assert_eq!(calibration_sizes(1), [1]);
        assert_eq!(calibration_sizes(5), [1, 2, 3, 4, 5]);
        let gpu = calibration_sizes(65);
        assert_eq!(gpu.len(), 17);
        assert_eq!((gpu[15], gpu[16]), (16, 65));
    }
}
