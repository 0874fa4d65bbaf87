//! The engine thread. It owns llama.cpp: the backend, the models and their
//! contexts (a target context and one per drafter model, each holding one
//! sequence per slot). Requests arrive over a channel, prepared (validated
//! and tokenized, see [`super::prepare`]), wait in a queue for a free slot,
//! and advance together: each engine step runs one draft-and-verify round
//! of every ready slot, their passes shared (see [`super::round`]), and
//! reads a piece of the prompts still being read. Each request streams its
//! events on its own channel.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use llama_cpp_2::model::LlamaModel;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};

use crate::speculative::adaptive::{AcceptanceModel, AdaptiveState, CostModel};
use crate::speculative::bandit::Bandit;
use crate::speculative::sampling::SamplingParams;
use crate::speculative::text::TextAssembler;

use super::calibrate::{calibrate, kv_layout, verification_limit};
use super::error::EngineError;
use super::load::{
    batch_invariant_kv, load_models, ContextShape, Contexts, Invariance, LoadedDrafter,
    LoadedModels,
};
use super::pass::{ms, SamplingCosts, SeqId, MAX_PROMPT_PIECE};
use super::prefill::{row_ms_from_calibration, PromptPacer};
use super::prepare::{Candidate, Prepared, Preparer};
use super::request::{main_drafter, DrafterStats, GenerationEvent, GenerationStats};
use super::round::{
    conclude, draft_all, first_passes, is_ready, plan, read_prompts, roll_back, verify,
    FirstPasses, Limits, Plan, Policy, Progress, RidingPieces,
};
use super::runtime::runtime_info;
use super::{AdaptiveReport, BanditReport, EngineConfig, EngineInfo, PassCounters};

/// A message to the engine thread: a request prepared for it.
pub(super) struct Command {
    pub prepared: Prepared,
    pub events: UnboundedSender<GenerationEvent>,
}

/// Load everything, report readiness (or the load error), then serve commands
/// until every handle is dropped.
pub(super) fn run(
    config: EngineConfig,
    ready: std::sync::mpsc::SyncSender<Result<(EngineInfo, Preparer), EngineError>>,
    commands: UnboundedReceiver<Command>,
    reports: Arc<Mutex<AdaptiveReports>>,
    bandit_reports: Arc<Mutex<BanditReports>>,
    waiting_gauge: Arc<AtomicUsize>,
    pass_counters: Arc<PassCounters>,
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
    // Shared with the thread that tokenizes requests.
    let target = Arc::new(target);
    let slot_count = config.slots.max(1);
    let invariant = Invariance {
        target: batch_invariant_kv(&runtime, config.target.gpu_layers),
        drafters: drafter_gpu_layers
            .iter()
            .map(|&layers| batch_invariant_kv(&runtime, layers))
            .collect(),
    };
    let layout = kv_layout(&config, &runtime);
    let shape = ContextShape {
        context: config.target.context,
        sequences: slot_count as u32,
        threads: config.threads as i32,
        layout,
    };
    let mut contexts =
        match Contexts::new(&target, &drafter_models, shape, &invariant, pass_counters) {
            Ok(contexts) => contexts,
            Err(e) => {
                let _ = ready.send(Err(e));
                return;
            }
        };
    let verification =
        match verification_limit(&config, &runtime, &target, &drafters, &mut contexts) {
            Ok(v) => v,
            Err(e) => {
                let _ = ready.send(Err(e));
                return;
            }
        };
    let limits = Limits {
        context: config.target.context as usize,
        max_verify_batch: verification.max_verify_batch,
        shared_pass_rows: verification.shared_pass_rows,
        prompt_granularity: verification.prompt_granularity,
        layout,
    };
    let calibration = match calibrate(
        &target,
        &drafters,
        &mut contexts,
        verification.max_verify_batch,
    ) {
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
        slots: slot_count,
        verification,
        runtime,
        costs: calibration.table.clone(),
    };
    let preparer = Preparer {
        target: Arc::clone(&target),
        drafters: drafters.clone(),
        context: config.target.context as usize,
    };
    if ready.send(Ok((info, preparer))).is_err() {
        return;
    }
    let mut scheduler = Scheduler {
        target: &target,
        drafters: &drafters,
        limits,
        slots: (0..slot_count).map(|_| None).collect(),
        contexts,
        prompt_turn: 0,
        decode_ms: 0.0,
        pacer: PromptPacer::seeded(
            calibration
                .table
                .as_ref()
                .and_then(|t| row_ms_from_calibration(&t.target_passes)),
        ),
        waiting: VecDeque::new(),
        costs: calibration.costs,
        sampling_costs: calibration.sampling,
        adaptive: BTreeMap::new(),
        reports,
        bandits: BTreeMap::new(),
        bandit_reports,
        waiting_gauge,
    };
    scheduler.serve(commands);
}

/// How long an idle engine with several slots waits for requests arriving
/// together with the first.
const ARRIVAL_GATHER: std::time::Duration = std::time::Duration::from_millis(5);

/// A request being generated in a slot.
pub(super) struct Sequence {
    pub(super) events: UnboundedSender<GenerationEvent>,
    /// Candidate drafters in order of preference; empty: plain decoding.
    pub(super) candidates: Vec<Candidate>,
    /// The candidates' drafter indices (the bandit's arms).
    pub(super) arms: Vec<usize>,
    /// The candidate of the current round (0 with fewer than two).
    pub(super) current: usize,
    /// What each candidate did, parallel to `candidates`.
    pub(super) by_candidate: Vec<DrafterStats>,
    /// Tokens the last round produced and its milliseconds of drafting and
    /// verification: the bandit's reward.
    pub(super) last_round: Option<(usize, f64)>,
    /// Key of the adaptive state and the bandit: the request's language.
    pub(super) language: String,
    /// Prompt lookup's acceptance in this request (adaptive drafting).
    pub(super) lookup: AcceptanceModel,
    pub(super) sampling: SamplingParams,
    /// Milliseconds the target's sampling of one position costs this
    /// request (smoothed over its rounds), for adaptive drafting.
    pub(super) sample_ms: f64,
    pub(super) max_tokens: usize,
    /// Prompt and generated tokens.
    pub(super) tokens: Vec<u32>,
    /// Tokens whose keys and values are in the target's KV cache (a prefix of `tokens`).
    pub(super) target_past: usize,
    /// Positions held in each drafter model's KV cache (indexed like the
    /// slot's drafter contexts); beyond `tokens.len()` they are the current
    /// round's drafted tokens. A model not used for some rounds lags behind
    /// and catches up when next used.
    pub(super) drafter_past: Vec<usize>,
    pub(super) rng: ChaCha8Rng,
    pub(super) text: TextAssembler,
    pub(super) stats: GenerationStats,
    pub(super) started: Instant,
}

struct Scheduler<'m> {
    target: &'m LlamaModel,
    drafters: &'m [LoadedDrafter],
    limits: Limits,
    /// The sequence generated in each slot (its sequence id in the contexts
    /// is the slot's index).
    slots: Vec<Option<Sequence>>,
    contexts: Contexts<'m>,
    /// The slot whose prompt is read first in the next step.
    prompt_turn: usize,
    /// Milliseconds the last step's rounds took: the time prompt reading
    /// may take in the next step while slots decode.
    decode_ms: f64,
    /// How many prompt rows ride in a step's shared pass (unified cache).
    pacer: PromptPacer,
    waiting: VecDeque<(Prepared, UnboundedSender<GenerationEvent>)>,
    /// Cost model per drafter (calibrated at start-up), for adaptive drafting.
    costs: Vec<CostModel>,
    /// What sampling one position costs the target (calibrated at start-up).
    sampling_costs: SamplingCosts,
    /// Adaptive state per drafter, language and greedy or sampled requests.
    adaptive: BTreeMap<(usize, String, bool), AdaptiveState>,
    /// What the adaptive states last decided, for metrics.
    reports: Arc<Mutex<AdaptiveReports>>,
    /// Per language, the choice among candidate drafters (arms: drafter indices).
    bandits: BTreeMap<String, Bandit<usize>>,
    /// What the bandits last knew, for metrics.
    bandit_reports: Arc<Mutex<BanditReports>>,
    /// Requests waiting for a slot, for metrics and tests.
    waiting_gauge: Arc<AtomicUsize>,
}

impl<'m> Scheduler<'m> {
    fn serve(&mut self, mut commands: UnboundedReceiver<Command>) {
        let mut open = true;
        loop {
            let busy = self.slots.iter().any(Option::is_some);
            if !busy && self.waiting.is_empty() {
                if !open {
                    return;
                }
                match commands.blocking_recv() {
                    Some(command) => self.accept(command),
                    None => return,
                }
                // Requests sent together reach an idle engine a few
                // milliseconds apart: gathered, their prompts are read
                // before any of them starts decoding, not a piece at a
                // time beside the first.
                if self.slots.len() > 1 {
                    let gathering = Instant::now();
                    while gathering.elapsed() < ARRIVAL_GATHER {
                        match commands.try_recv() {
                            Ok(command) => self.accept(command),
                            Err(tokio::sync::mpsc::error::TryRecvError::Empty) => {
                                std::thread::sleep(std::time::Duration::from_millis(1));
                            }
                            Err(tokio::sync::mpsc::error::TryRecvError::Disconnected) => break,
                        }
                    }
                }
            }
            while open {
                match commands.try_recv() {
                    Ok(command) => self.accept(command),
                    Err(tokio::sync::mpsc::error::TryRecvError::Empty) => break,
                    Err(tokio::sync::mpsc::error::TryRecvError::Disconnected) => open = false,
                }
            }
            // A request whose caller went away while it waited is dropped
            // now, not when a slot frees: the queue holds live requests only.
            self.waiting.retain(|(_, events)| !events.is_closed());
            self.waiting_gauge
                .store(self.waiting.len(), Ordering::Relaxed);
            self.admit();
            self.step();
        }
    }

    /// Queue a prepared request.
    fn accept(&mut self, command: Command) {
        self.waiting.push_back((command.prepared, command.events));
    }

    /// Move waiting requests into free slots.
    fn admit(&mut self) {
        for (index, slot) in self.slots.iter_mut().enumerate() {
            if slot.is_some() {
                continue;
            }
            let Some((p, events)) = self.waiting.pop_front() else {
                return;
            };
            if events.is_closed() {
                continue;
            }
            self.contexts.clear_sequence(index as SeqId);
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
            *slot = Some(Sequence {
                events,
                arms: p.candidates.iter().map(|c| c.drafter).collect(),
                by_candidate: vec![DrafterStats::default(); p.candidates.len()],
                candidates: p.candidates,
                current: 0,
                last_round: None,
                language: p.language,
                lookup: AcceptanceModel::default(),
                rng: p
                    .sampling
                    .seed
                    .map_or_else(ChaCha8Rng::from_entropy, ChaCha8Rng::seed_from_u64),
                sample_ms: self.sampling_costs.for_request(p.sampling.is_greedy()),
                sampling: p.sampling,
                max_tokens: p.max_tokens,
                tokens: p.tokens,
                target_past: 0,
                drafter_past: vec![0; self.contexts.drafters.len()],
                text: TextAssembler::new(p.stop),
                stats,
                started: Instant::now(),
            });
        }
    }

    /// One engine step: free the slots whose caller went away, read a
    /// piece of the waiting prompts, then one round for every ready slot,
    /// the slots' drafting and verification sharing passes.
    fn step(&mut self) {
        for slot in &mut self.slots {
            if slot.as_ref().is_some_and(|seq| seq.events.is_closed()) {
                *slot = None;
            }
        }
        let turn = self.prompt_turn;
        self.prompt_turn = (turn + 1) % self.slots.len().max(1);
        let riding = match read_prompts(
            &mut self.slots,
            &mut self.contexts,
            self.limits,
            turn,
            self.decode_ms,
            self.pacer
                .riding_rows(self.limits.prompt_granularity, MAX_PROMPT_PIECE),
        ) {
            Ok(riding) => riding,
            Err((index, e)) => {
                self.finish_round(index, Err(e));
                RidingPieces::default()
            }
        };
        let ready: Vec<usize> = (0..self.slots.len())
            .filter(|&i| self.slots[i].as_ref().is_some_and(is_ready))
            .collect();
        if ready.is_empty() {
            return;
        }
        // Plan every ready slot's round, each weighing what it adds to the
        // passes the others fill.
        let others = ready.len() - 1;
        let started = Instant::now();
        let mut rounds: Vec<(usize, Plan)> = Vec::with_capacity(ready.len());
        for &index in &ready {
            let Some(seq) = self.slots[index].as_mut() else {
                continue;
            };
            // Several candidates: the language's bandit picks this round's.
            // With one (or none) there is nothing to choose and nothing to learn.
            if seq.candidates.len() > 1 {
                seq.current = match self.bandits.get(&seq.language) {
                    Some(bandit) => bandit.choose(&seq.arms),
                    None => 0,
                };
            }
            let mut policy =
                adaptive_key(seq).and_then(|key| policy(&mut self.costs, &mut self.adaptive, &key));
            let plan = plan(seq, self.limits, others, policy.as_mut());
            rounds.push((index, plan));
        }
        let target_vocab = self.target.vocab().n_tokens().max(0) as usize;
        let drafts = match draft_all(
            &rounds,
            &mut self.slots,
            &mut self.contexts,
            self.limits,
            target_vocab,
        ) {
            Ok(drafts) => drafts,
            Err((index, e)) => return self.fail_step(&rounds, index, e),
        };
        let draft_ms = ms(started);
        let started = Instant::now();
        let FirstPasses {
            windows: firsts,
            paced,
        } = match first_passes(
            &rounds,
            &drafts,
            &mut self.slots,
            &mut self.contexts,
            self.limits,
            riding,
        ) {
            Ok(firsts) => firsts,
            Err((index, e)) => return self.fail_step(&rounds, index, e),
        };
        for (((index, plan), draft), first) in rounds.iter().zip(&drafts).zip(firsts) {
            let index = *index;
            let Some(mut seq) = self.slots[index].take() else {
                continue;
            };
            let key = adaptive_key(&seq);
            // The drafter the language's bandit chose, where it chose one.
            let chooser = (seq.candidates.len() > 1)
                .then(|| seq.candidates.get(seq.current).map(|c| c.drafter))
                .flatten();
            let outcome = verify(
                index,
                draft,
                first,
                &mut seq,
                &mut self.contexts,
                self.limits,
            )
            .and_then(|verified| {
                // The round committed the accepted tokens and the target's own.
                let verify_ms = ms(started);
                seq.stats.draft_ms += draft_ms;
                seq.stats.verify_ms += verify_ms;
                seq.last_round = Some((verified.verdict.accepted + 1, draft_ms + verify_ms));
                let policy = key
                    .as_ref()
                    .and_then(|key| policy(&mut self.costs, &mut self.adaptive, key));
                conclude(
                    self.target,
                    index,
                    plan,
                    draft,
                    verified,
                    &mut seq,
                    &mut self.contexts,
                    self.limits,
                    policy,
                )
            });
            self.slots[index] = Some(seq);
            if let (Ok(_), Some(drafter)) = (&outcome, chooser) {
                self.learn(index, drafter);
            }
            self.finish_round(index, outcome);
            if let Some(key) = &key {
                self.report(key);
            }
        }
        self.decode_ms = draft_ms + ms(started);
        if let Some((riding, pass_ms)) = paced {
            self.pacer.observe(riding, pass_ms, self.decode_ms);
        }
    }

    /// A pass shared by the step's rounds failed: the slot it is blamed on
    /// fails, and the others' rounds are abandoned (their caches rolled back
    /// to what they had committed), to be run again next step.
    fn fail_step(&mut self, rounds: &[(usize, Plan)], failed: usize, error: EngineError) {
        for (index, plan) in rounds {
            if *index == failed {
                continue;
            }
            let Some(mut seq) = self.slots[*index].take() else {
                continue;
            };
            let keep = seq.tokens.len() - 1;
            let outcome = roll_back(*index, plan, &mut seq, &mut self.contexts, keep);
            self.slots[*index] = Some(seq);
            if let Err(e) = outcome {
                self.finish_round(*index, Err(e));
            }
        }
        self.finish_round(failed, Err(error));
    }

    /// Feed the round just run with `drafter` to its language's bandit:
    /// tokens produced per second of drafting and verification (a drafter
    /// model's catch-up on tokens it had not seen included).
    fn learn(&mut self, index: usize, drafter: usize) {
        let Some(seq) = self.slots[index].as_mut() else {
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
        let Some(seq) = slot.as_mut() else {
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
                *slot = None;
            }
            Err(e) => {
                tracing::error!(error = %e, "generation failed");
                let _ = seq.events.send(GenerationEvent::Failed(e));
                *slot = None;
            }
        }
    }
}

impl Scheduler<'_> {
    /// Publish the adaptive state of `key` for metrics.
    fn report(&self, key: &AdaptiveKey) {
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
            greedy: key.2,
            proposer: decision.proposer,
            draft_length: decision.draft_length,
            expected_tokens_per_second: decision.tokens_per_second,
            plain_tokens_per_second: decision.plain_tokens_per_second,
            acceptance: state.acceptance(drafter.draft.max as usize),
            target_pass_ms: cost.unit_ms(),
            draft_step_ms: cost.draft_step_ms(),
        };
        if let Ok(mut reports) = self.reports.lock() {
            reports.insert(
                (
                    report.drafter.clone(),
                    report.language.clone(),
                    report.greedy,
                ),
                report,
            );
        }
    }
}

/// Adaptive state key: drafter, language, and greedy (else sampled).
type AdaptiveKey = (usize, String, bool);

/// The adaptive state key of `seq`'s current candidate, if it drafts
/// adaptively.
fn adaptive_key(seq: &Sequence) -> Option<AdaptiveKey> {
    seq.candidates
        .get(seq.current)
        .filter(|c| c.draft.adaptive)
        .map(|c| (c.drafter, seq.language.clone(), seq.sampling.is_greedy()))
}

/// The adaptive policy of `key`: its drafter's costs and its state.
fn policy<'a>(
    costs: &'a mut [CostModel],
    adaptive: &'a mut BTreeMap<AdaptiveKey, AdaptiveState>,
    key: &AdaptiveKey,
) -> Option<Policy<'a>> {
    let cost = costs.get_mut(key.0)?;
    let state = adaptive.entry(key.clone()).or_default();
    Some(Policy { cost, state })
}

/// Latest adaptive decision per drafter, language and greedy or sampled.
pub(super) type AdaptiveReports = BTreeMap<(String, String, bool), AdaptiveReport>;

/// Latest bandit statistics per language and drafter.
pub(super) type BanditReports = BTreeMap<(String, String), BanditReport>;
