//! One engine step: every active slot's round, its passes shared with the
//! other slots'. A step reads a piece of the waiting prompts, plans each
//! ready slot's round (who drafts how much: fixed settings or the adaptive
//! decision), drafts with every drafter model for all its slots at once
//! (one pass per drafted position), verifies the slots' drafts in shared
//! target passes no larger than the exactness limits allow, then per slot
//! rolls the caches back to the accepted prefix, records what the round
//! taught and streams its text.

use std::time::Instant;

use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::token::LlamaToken;

use crate::config::DraftParams;
use crate::speculative::adaptive::{AdaptiveState, CostModel, Options, Proposer};
use crate::speculative::ngram::{self, NgramParams};
use crate::speculative::proposer::{drops_short_draft, Next, Proposing};
use crate::speculative::sampling::{self, Distribution};
use crate::speculative::verifier::{self, Verdict};

use super::error::EngineError;
use super::exactness::prompt_piece;
use super::load::Contexts;
use super::pass::{
    decode_chunked, decode_rows_timed, decode_timed, ms, pack, truncate_kv, KvLayout, Row, SeqId,
    MAX_PROMPT_PIECE, PROMPT_CHUNK,
};
use super::request::{FinishReason, GenerationEvent};
use super::vocab::within_target_vocab;
use super::worker::Sequence;

/// What a round ended with.
pub(super) enum Progress {
    Continue,
    Finished(FinishReason),
}

/// Prompt lookup as adaptive drafting uses it: a match of at least two
/// tokens. Single-token matches are common in any text (in translation too)
/// and rarely continue correctly; each tried and refused costs a verification
/// pass.
const ADAPTIVE_LOOKUP: NgramParams = NgramParams {
    max_ngram: 3,
    min_ngram: 2,
};

/// What adaptive drafting consults and refines in a round.
pub(super) struct Policy<'a> {
    pub(super) cost: &'a mut CostModel,
    pub(super) state: &'a mut AdaptiveState,
}

/// How the engine's passes are bounded on this machine (see
/// [`super::Verification`]).
#[derive(Debug, Clone, Copy)]
pub(super) struct Limits {
    /// Tokens per sequence.
    pub(super) context: usize,
    /// Most tokens of one sequence's verification in one target pass.
    pub(super) max_verify_batch: usize,
    /// Most rows of one target pass shared by several slots.
    pub(super) shared_pass_rows: usize,
    /// Prompts are read in passes of multiples of this many tokens.
    pub(super) prompt_granularity: usize,
    /// How the contexts hold the sequences (what llama.cpp computes at once).
    pub(super) layout: KvLayout,
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

/// Prompt rows to evaluate in the step's shared target pass (a unified
/// cache computes any pass at once, so a piece of a prompt rides along with
/// the other slots' verification rows instead of a pass of its own).
#[derive(Debug, Default)]
pub(super) struct RidingPieces {
    rows: Vec<Row>,
    /// (slot, tokens) per piece, to advance once the pass has run.
    pieces: Vec<(usize, usize)>,
}

impl RidingPieces {
    /// The pieces were read, in a pass of `pass_ms`: advance their prompts.
    fn commit(self, slots: &mut [Option<Sequence>], pass_ms: f64) {
        for (slot, tokens) in self.pieces {
            if let Some(seq) = slots[slot].as_mut() {
                seq.target_past += tokens;
                seq.stats.prefill_ms += pass_ms;
                seq.stats.prompt_passes += 1;
            }
        }
    }
}

/// Read pieces of the waiting prompts (all but each prompt's last token,
/// which opens its first round). With no slot decoding, a piece of up to a
/// prompt chunk per prompting slot. While other slots decode, pieces of
/// `prompt_granularity` tokens, slot after slot from `first`, for as long
/// as the step's decoding took last time (`decode_ms`, at least one piece):
/// a long prompt then at most doubles the others' time between tokens. Over
/// a unified cache pieces of up to `riding_rows` rows in all ride in the
/// step's shared pass instead (returned), and a prompt of at most
/// `MAX_PROMPT_PIECE` tokens rides whole if that many rows are left. Every
/// piece ends on a multiple of the granularity, or is the prompt's
/// remainder alone (see [`prompt_piece`]), so the cache holds what reading
/// the prompt at once leaves.
pub(super) fn read_prompts(
    slots: &mut [Option<Sequence>],
    contexts: &mut Contexts,
    limits: Limits,
    first: usize,
    decode_ms: f64,
    riding_rows: usize,
) -> Result<RidingPieces, (usize, EngineError)> {
    let decoding = slots.iter().flatten().any(is_ready);
    let mut riding = RidingPieces::default();
    let budget = if decoding {
        limits.prompt_granularity
    } else {
        PROMPT_CHUNK
    };
    // Over a unified cache, pieces of several prompts share a pass: beside
    // decoding slots, the step's shared pass, with `riding_rows` prompt
    // rows (see `PromptPacer`); otherwise a pass of their own.
    let rides = limits.layout == KvLayout::Unified;
    let riding_rows = if decoding { riding_rows } else { PROMPT_CHUNK };
    let started = Instant::now();
    let mut read_any = false;
    let n = slots.len();
    // While others decode, slots take turns until the time is spent.
    let mut pending: Vec<usize> = (0..n).map(|i| (first + i) % n).collect();
    while !pending.is_empty() {
        let mut next = Vec::with_capacity(pending.len());
        for index in pending {
            if decoding && read_any && ms(started) >= decode_ms {
                return Ok(riding);
            }
            let Some(seq) = slots[index].as_mut() else {
                continue;
            };
            let end = seq.tokens.len() - 1;
            if seq.target_past >= end {
                continue;
            }
            let piece = if rides {
                // A short prompt rides whole where rows are left: its slot
                // produces nothing until it is read, and it delays the
                // others once, by a pass of at most `MAX_PROMPT_PIECE` rows.
                let most = if decoding && seq.tokens.len() <= MAX_PROMPT_PIECE {
                    MAX_PROMPT_PIECE.max(riding_rows)
                } else {
                    riding_rows
                };
                let left = most.saturating_sub(riding.rows.len());
                if left == 0 {
                    continue;
                }
                prompt_piece(seq.target_past, end, limits.prompt_granularity, left)
            } else {
                prompt_piece(seq.target_past, end, limits.prompt_granularity, budget)
            };
            let tokens = &seq.tokens[seq.target_past..seq.target_past + piece];
            let rows = Row::run(index as SeqId, tokens, seq.target_past, false);
            if rides {
                // One piece per prompting slot while rows are left.
                riding
                    .rows
                    .extend(rows.into_iter().map(|r| Row { logits: false, ..r }));
                riding.pieces.push((index, piece));
                continue;
            }
            let piece_started = Instant::now();
            decode_rows_timed(&mut contexts.target, &mut contexts.batch, &rows)
                .map_err(|e| (index, e))?;
            contexts.target_passes.record(piece);
            seq.target_past += piece;
            seq.stats.prefill_ms += ms(piece_started);
            seq.stats.prompt_passes += 1;
            read_any = true;
            if decoding && seq.target_past < end {
                next.push(index);
            }
        }
        if !decoding {
            break;
        }
        pending = next;
    }
    if rides && !decoding && !riding.rows.is_empty() {
        // No step pass to ride in: the pieces' own pass.
        let started = Instant::now();
        let blamed = riding.pieces[0].0;
        decode_rows_timed(&mut contexts.target, &mut contexts.batch, &riding.rows)
            .map_err(|e| (blamed, e))?;
        contexts.target_passes.record(riding.rows.len());
        riding.commit(slots, ms(started));
        return Ok(RidingPieces::default());
    }
    Ok(riding)
}

/// Whether a slot's prompt has been read and its rounds can start.
pub(super) fn is_ready(seq: &Sequence) -> bool {
    seq.target_past + 1 >= seq.tokens.len()
}

/// What a round will do, decided before any model runs.
pub(super) struct Plan {
    /// Who drafts.
    pub(super) proposer: Proposer,
    /// How many tokens.
    pub(super) k: usize,
    /// The prompt lookup proposal the adaptive decision was shown.
    lookup: Vec<u32>,
    /// The candidate's draft controls.
    params: DraftParams,
    /// The candidate's drafter model, if it has one.
    pub(super) drafter_model: Option<usize>,
}

/// Who drafts how much: the fixed settings, or the adaptive decision among
/// the drafter model, prompt lookup and plain decoding, weighing the costs
/// this sequence adds to passes `others` rows of other slots share; never
/// more than fits in the context or than `max_tokens` can use.
pub(super) fn plan(
    seq: &Sequence,
    limits: Limits,
    others: usize,
    policy: Option<&mut Policy>,
) -> Plan {
    let candidate = seq.candidates.get(seq.current).copied();
    let drafter_model = candidate.and_then(|c| c.model);
    let params = candidate.map_or_else(DraftParams::default, |c| c.draft);
    let remaining = seq.max_tokens - seq.stats.completion_tokens;
    let room = limits.context.saturating_sub(seq.tokens.len() + 1);
    let most = (params.max as usize)
        .min(room)
        .min(remaining.saturating_sub(1));
    let (proposer, k, lookup) = match (policy, candidate) {
        (Some(p), Some(_)) => {
            let lookup = if most > 0 {
                ngram::propose(&seq.tokens, ADAPTIVE_LOOKUP, most)
            } else {
                Vec::new()
            };
            // Tokens the drafter model has not read: what a draft with it
            // would first have to catch up on.
            let unseen = drafter_model.map_or(0, |m| {
                let seen = seq.drafter_past.get(m).copied().unwrap_or(0);
                seq.tokens.len().saturating_sub(seen)
            });
            let decision = p.state.decide(
                &p.cost.shared_by(others),
                &Options {
                    model: drafter_model.is_some(),
                    lookup: lookup.len(),
                    min: params.min as usize,
                    max: most,
                    chunk: limits.max_verify_batch.max(1),
                    sample_ms: seq.sample_ms,
                    // Catching the drafter up on a long run costs every
                    // slot sharing the step: probe alone, or caught up.
                    defer_probe: others > 0 && unseen > limits.max_verify_batch,
                    // Its whole time: the step's other slots wait for it.
                    catch_up_ms: p.cost.catch_up_ms(unseen),
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
    Plan {
        proposer,
        k,
        lookup,
        params,
        drafter_model,
    }
}

/// A draft: tokens and, when sampling, the distributions they were drawn from.
#[derive(Default)]
pub(super) struct Draft {
    pub(super) tokens: Vec<u32>,
    dists: Vec<Distribution>,
    /// Drafter passes this draft took part in and their milliseconds, each
    /// through its logits and the choice of its token (catching up on a long
    /// run of unseen tokens is not a step).
    steps: usize,
    steps_ms: f64,
    /// Whether other slots' rows shared those passes (their cost then says
    /// little about a draft step's).
    shared: bool,
    /// The drafter model stopped before the decided length, unsure.
    stopped_early: bool,
}

/// A slot drafting with a model during the draft phase.
struct Drafting {
    slot: usize,
    proposing: Proposing,
    /// Index of this slot's logits in the latest pass.
    logits_index: usize,
    /// Whether the first pass is a draft step for this slot (it evaluates
    /// one token, not a catch-up run).
    first_is_step: bool,
    steps: usize,
    steps_ms: f64,
    shared: bool,
}

/// Draft for every ready slot as planned: prompt lookup at once; each
/// drafter model for all its slots together, one pass per drafted
/// position. A draft shorter than the candidate's `min` is dropped where
/// that cannot bias the output.
pub(super) fn draft_all(
    rounds: &[(usize, Plan)],
    slots: &mut [Option<Sequence>],
    contexts: &mut Contexts,
    limits: Limits,
    target_vocab: usize,
) -> Result<Vec<Draft>, (usize, EngineError)> {
    let mut drafts: Vec<Draft> = rounds.iter().map(|_| Draft::default()).collect();
    for (i, (slot, plan)) in rounds.iter().enumerate() {
        if plan.proposer == Proposer::Lookup && plan.k > 0 {
            if let Some(seq) = slots[*slot].as_ref() {
                drafts[i] = lookup_draft(plan, seq);
            }
        }
    }
    let Contexts {
        drafters, batch, ..
    } = contexts;
    for (model, ctx) in drafters.iter_mut().enumerate() {
        let members: Vec<usize> = rounds
            .iter()
            .enumerate()
            .filter(|(_, (_, p))| {
                p.proposer == Proposer::Model && p.k > 0 && p.drafter_model == Some(model)
            })
            .map(|(i, _)| i)
            .collect();
        if members.is_empty() {
            continue;
        }
        draft_with_model(
            model,
            ctx,
            batch,
            &members,
            rounds,
            slots,
            &mut drafts,
            limits,
            target_vocab,
        )?;
    }
    for (i, (_, plan)) in rounds.iter().enumerate() {
        let Some(seq) = slots[rounds[i].0].as_ref() else {
            continue;
        };
        let drawn_at_random = plan.proposer == Proposer::Model && seq.sampling.draws_at_random();
        if drops_short_draft(
            drafts[i].tokens.len(),
            plan.params.min as usize,
            drawn_at_random,
        ) {
            // Not verified, so nothing to learn from either.
            drafts[i] = Draft::default();
        }
    }
    Ok(drafts)
}

/// The prompt lookup draft of a round.
fn lookup_draft(plan: &Plan, seq: &Sequence) -> Draft {
    // The adaptive decision drafts from the proposal it was shown.
    let mut tokens = if plan.lookup.is_empty() {
        ngram::propose(&seq.tokens, NgramParams::default(), plan.k)
    } else {
        plan.lookup.clone()
    };
    tokens.truncate(plan.k);
    let dists = if seq.sampling.draws_at_random() {
        tokens
            .iter()
            .map(|&t| Distribution::point_mass(t))
            .collect()
    } else {
        Vec::new()
    };
    Draft {
        tokens,
        dists,
        ..Draft::default()
    }
}

/// Draft with drafter model `model` for the rounds `members` (indices into
/// `rounds`). Each slot first catches up on the tokens its drafter has not
/// seen (the previous round's last token, or every token since it last
/// drafted): a long run alone, as the target read it, and the rest in the
/// first shared pass; then each pass evaluates every slot's latest drafted
/// token, until every draft is complete or stopped below `p_min`.
#[allow(clippy::too_many_arguments)]
fn draft_with_model(
    model: usize,
    ctx: &mut LlamaContext,
    batch: &mut LlamaBatch,
    members: &[usize],
    rounds: &[(usize, Plan)],
    slots: &mut [Option<Sequence>],
    drafts: &mut [Draft],
    limits: Limits,
    target_vocab: usize,
) -> Result<(), (usize, EngineError)> {
    let mut rows: Vec<Row> = Vec::new();
    let mut drafting: Vec<(usize, Drafting)> = Vec::with_capacity(members.len());
    for &i in members {
        let (slot, plan) = &rounds[i];
        let Some(seq) = slots[*slot].as_mut() else {
            continue;
        };
        let seq_id = *slot as SeqId;
        let Some(&past) = seq.drafter_past.get(model) else {
            return Err((
                *slot,
                EngineError::Decode(format!("drafter model {model} has no sequence state")),
            ));
        };
        // Catch up the way the target evaluated the same tokens (a long run
        // as a prompt, then its last token alone), so that a drafter
        // identical to the target also computes identical logits.
        let unseen = &seq.tokens[past..];
        let (body, last) = if unseen.len() > limits.max_verify_batch {
            unseen.split_at(unseen.len() - 1)
        } else {
            unseen.split_at(0)
        };
        if last.is_empty() {
            // Nothing new to draft from (never the case between rounds:
            // each round ends with a token the drafter has not seen).
            continue;
        }
        decode_chunked(ctx, batch, seq_id, body, past).map_err(|e| (*slot, e))?;
        rows.extend(Row::run(seq_id, last, past + body.len(), false));
        seq.drafter_past[model] = seq.tokens.len();
        drafting.push((
            i,
            Drafting {
                slot: *slot,
                proposing: Proposing::new(plan.k, plan.params.p_min, seq.tokens.len()),
                logits_index: rows.len() - 1,
                first_is_step: last.len() == 1,
                steps: usize::from(last.len() == 1),
                steps_ms: 0.0,
                shared: false,
            },
        ));
    }
    let mut pass_rows = rows;
    let mut first = true;
    while !pass_rows.is_empty() {
        let pass_ms = decode_rows_timed(ctx, batch, &pass_rows)
            .map_err(|e| (drafting.first().map_or(0, |d| d.1.slot), e))?;
        let active: Vec<bool> = drafting
            .iter()
            .map(|(_, d)| !d.proposing.is_done())
            .collect();
        let shared = active.iter().filter(|&&a| a).count() > 1;
        let started = Instant::now();
        let mut next_rows = Vec::new();
        for (j, (_, d)) in drafting.iter_mut().enumerate() {
            if !active[j] {
                continue;
            }
            if !first || d.first_is_step {
                d.steps_ms += pass_ms;
                d.shared |= shared;
            }
            let Some(seq) = slots[d.slot].as_mut() else {
                continue;
            };
            let logits =
                within_target_vocab(ctx.get_logits_ith(d.logits_index as i32), target_vocab);
            if let Next::Feed(token) = d.proposing.step(logits, &seq.sampling, &mut seq.rng) {
                let position = seq.drafter_past[model];
                next_rows.push(Row {
                    seq: d.slot as SeqId,
                    token,
                    position,
                    logits: true,
                });
                seq.drafter_past[model] = position + 1;
                d.logits_index = next_rows.len() - 1;
                d.steps += 1;
            }
        }
        // Choosing the tokens is part of every drafting slot's step.
        let choosing_ms = ms(started);
        for ((_, d), _) in drafting.iter_mut().zip(&active).filter(|(_, &a)| a) {
            d.steps_ms += choosing_ms;
        }
        pass_rows = next_rows;
        first = false;
    }
    for (i, d) in drafting {
        let proposal = d.proposing.finish();
        drafts[i] = Draft {
            tokens: proposal.tokens,
            dists: proposal.dists,
            steps: d.steps,
            steps_ms: d.steps_ms,
            shared: d.shared,
            stopped_early: proposal.stopped_early,
        };
    }
    Ok(())
}

/// Logits of the target's first verification rows of a slot, evaluated
/// in a pass shared with other slots, and the pass's size and time.
pub(super) struct FirstPass {
    logits: Vec<Vec<f32>>,
    pass: (usize, f64),
}

/// Evaluate the first rows of every ready slot's verification window (the
/// last token and the draft, at most `max_verify_batch` of them) in target
/// passes of at most `shared_pass_rows` rows, a slot's rows never split
/// between passes; a window longer than that is continued lazily, in the
/// slot's own passes, as far as acceptance goes (see [`verify`]).
pub(super) fn first_passes(
    rounds: &[(usize, Plan)],
    drafts: &[Draft],
    slots: &mut [Option<Sequence>],
    contexts: &mut Contexts,
    limits: Limits,
    riding: RidingPieces,
) -> Result<FirstPasses, (usize, EngineError)> {
    let windows: Vec<Vec<Row>> = rounds
        .iter()
        .zip(drafts)
        .map(|((slot, _), draft)| {
            let Some(seq) = slots[*slot].as_ref() else {
                return Vec::new();
            };
            let len = seq.tokens.len();
            let mut tokens = Vec::with_capacity(draft.tokens.len() + 1);
            tokens.push(seq.tokens[len - 1]);
            tokens.extend_from_slice(&draft.tokens);
            tokens.truncate(limits.max_verify_batch.max(1));
            Row::run(*slot as SeqId, &tokens, len - 1, true)
        })
        .collect();
    let groups: Vec<(SeqId, usize)> = rounds
        .iter()
        .zip(&windows)
        .map(|((slot, _), rows)| (*slot as SeqId, rows.len()))
        .collect();
    let mut out: Vec<FirstPass> = rounds
        .iter()
        .map(|_| FirstPass {
            logits: Vec::new(),
            pass: (0, 0.0),
        })
        .collect();
    let mut riding = Some(riding);
    let mut paced = None;
    for members in pack(&groups, limits.shared_pass_rows, limits.layout) {
        let mut rows: Vec<Row> = members
            .iter()
            .flat_map(|&i| windows[i].iter().copied())
            .collect();
        if rows.is_empty() {
            continue;
        }
        // Prompt pieces ride in the first pass, after the windows' rows so
        // that those keep their logits' indices.
        let pieces = riding.take().unwrap_or_default();
        rows.extend_from_slice(&pieces.rows);
        let pass_ms = decode_rows_timed(&mut contexts.target, &mut contexts.batch, &rows)
            .map_err(|e| (rounds[members[0]].0, e))?;
        contexts.target_passes.record(rows.len());
        paced.get_or_insert((pieces.rows.len(), pass_ms));
        pieces.commit(slots, pass_ms);
        let mut at = 0;
        for &i in &members {
            let n = windows[i].len();
            out[i] = FirstPass {
                logits: (at..at + n)
                    .map(|r| contexts.target.get_logits_ith(r as i32).to_vec())
                    .collect(),
                pass: (rows.len(), pass_ms),
            };
            at += n;
        }
    }
    Ok(FirstPasses {
        windows: out,
        paced,
    })
}

/// The step's first passes: each round's, and the prompt rows that rode in
/// the step's first pass with its milliseconds (what the prompt pacer
/// learns from).
pub(super) struct FirstPasses {
    pub(super) windows: Vec<FirstPass>,
    pub(super) paced: Option<(usize, f64)>,
}

/// The target's view of a slot's verification window: the rows evaluated
/// in the shared first pass, then passes of at most `chunk` tokens of its
/// own as positions are asked for (in increasing order).
struct VerifyWindow<'a, 'm> {
    ctx: &'a mut LlamaContext<'m>,
    batch: &'a mut LlamaBatch<'static>,
    seq: SeqId,
    tokens: &'a [u32],
    start: usize,
    chunk: usize,
    first: Vec<Vec<f32>>,
    evaluated: usize,
    /// Start of the last own pass.
    pass_start: usize,
    /// Rows and milliseconds of each target pass run for this window.
    passes: Vec<(usize, f64)>,
    /// Positions sampled and the milliseconds their sampling took.
    sampled: usize,
    sampling_ms: f64,
}

impl VerifyWindow<'_, '_> {
    /// `choose` applied to the target's logits after `tokens[..=i]`.
    fn sample<T>(&mut self, i: usize, choose: impl FnOnce(&[f32]) -> T) -> Result<T, EngineError> {
        let started;
        let chosen = if let Some(logits) = self.first.get(i) {
            started = Instant::now();
            choose(logits)
        } else {
            if i >= self.evaluated {
                let end = (self.evaluated + self.chunk).min(self.tokens.len());
                let pass_ms = decode_timed(
                    self.ctx,
                    self.batch,
                    self.seq,
                    &self.tokens[self.evaluated..end],
                    self.start + self.evaluated,
                    true,
                )?;
                self.passes.push((end - self.evaluated, pass_ms));
                self.pass_start = self.evaluated;
                self.evaluated = end;
            }
            debug_assert!(
                i >= self.pass_start,
                "positions are asked for in increasing order"
            );
            started = Instant::now();
            choose(self.ctx.get_logits_ith((i - self.pass_start) as i32))
        };
        self.sampling_ms += ms(started);
        self.sampled += 1;
        Ok(chosen)
    }
}

/// What verification found.
pub(super) struct Verified {
    pub(super) verdict: Verdict,
    /// Rows and milliseconds of each target pass run.
    passes: Vec<(usize, f64)>,
}

/// Verify the last token and the draft: the rows of the shared first pass,
/// then the slot's own passes of at most `max_verify_batch` tokens,
/// evaluated only as far as acceptance goes.
pub(super) fn verify(
    slot: usize,
    draft: &Draft,
    first: FirstPass,
    seq: &mut Sequence,
    contexts: &mut Contexts,
    limits: Limits,
) -> Result<Verified, EngineError> {
    let len = seq.tokens.len();
    let mut batch_tokens = Vec::with_capacity(draft.tokens.len() + 1);
    batch_tokens.push(seq.tokens[len - 1]);
    batch_tokens.extend_from_slice(&draft.tokens);
    let evaluated = first.logits.len();
    let mut passes = Vec::with_capacity(1);
    if evaluated > 0 {
        passes.push(first.pass);
    }
    let mut window = VerifyWindow {
        ctx: &mut contexts.target,
        batch: &mut contexts.batch,
        seq: slot as SeqId,
        tokens: &batch_tokens,
        start: len - 1,
        chunk: limits.max_verify_batch.max(1),
        first: first.logits,
        evaluated,
        pass_start: evaluated,
        passes,
        sampled: 0,
        sampling_ms: 0.0,
    };
    let params = &seq.sampling;
    let verdict = if params.is_greedy() {
        verifier::verify_greedy_lazily(&draft.tokens, |i| window.sample(i, sampling::argmax))?
    } else if let Some(seed) = params.seed {
        // Seeded: the target's coupled choice at each position, kept while
        // the draft matches it; the tokens are those plain sampling gives.
        verifier::verify_greedy_lazily(&draft.tokens, |i| {
            window.sample(i, |l| {
                sampling::distribution(l, params).coupled_choice(seed, len + i)
            })
        })?
    } else {
        verifier::verify_sampled_lazily(
            &draft.tokens,
            &draft.dists,
            |i| window.sample(i, |l| sampling::distribution(l, params)),
            &mut seq.rng,
        )?
    };
    if window.sampled > 0 {
        seq.sample_ms = smooth_sample_ms(seq.sample_ms, window.sampling_ms / window.sampled as f64);
    }
    // The shared first pass was counted where it ran.
    for &(rows, _) in &window.passes[usize::from(evaluated > 0)..] {
        contexts.target_passes.record(rows);
    }
    Ok(Verified {
        verdict,
        passes: std::mem::take(&mut window.passes),
    })
}

/// Roll the slot's sequence back to the `keep` positions of the accepted
/// prefix in the target's cache and in this round's drafter model's.
pub(super) fn roll_back(
    slot: usize,
    plan: &Plan,
    seq: &mut Sequence,
    contexts: &mut Contexts,
    keep: usize,
) -> Result<(), EngineError> {
    let seq_id = slot as SeqId;
    truncate_kv(&mut contexts.target, seq_id, keep)?;
    seq.target_past = keep;
    // Only this round's drafter model can hold positions past `keep`: the
    // others stopped at most at the start of this round.
    if let Some(m) = plan.drafter_model {
        if let (Some(past), Some(ctx)) = (seq.drafter_past.get_mut(m), contexts.drafters.get_mut(m))
        {
            if *past > keep {
                *past = keep;
                truncate_kv(ctx, seq_id, keep)?;
            }
        }
    }
    Ok(())
}

/// What the round teaches: the adaptive policy's costs and acceptance, and
/// the request's statistics.
pub(super) fn record(
    plan: &Plan,
    draft: &Draft,
    accepted: usize,
    passes: &[(usize, f64)],
    seq: &mut Sequence,
    policy: Option<Policy>,
) {
    let k = plan.k;
    if let Some(p) = policy {
        for &(tokens, pass_ms) in passes {
            p.cost.observe_pass(tokens, pass_ms);
        }
        if !draft.shared {
            p.cost.observe_draft(draft.steps, draft.steps_ms);
        }
        p.state.observe(
            plan.proposer,
            draft.tokens.len(),
            accepted,
            draft.stopped_early,
            &mut seq.lookup,
        );
    }
    if seq.stats.rounds_by_draft_length.len() <= k {
        seq.stats.rounds_by_draft_length.resize(k + 1, 0);
    }
    seq.stats.rounds_by_draft_length[k] += 1;
    if let Some(stats) = seq.by_candidate.get_mut(seq.current) {
        stats.record_round(k, draft.tokens.len(), accepted);
    }
    seq.stats.rounds += 1;
    if !draft.tokens.is_empty() {
        seq.stats.drafts += 1;
        seq.stats.draft_tokens += draft.tokens.len() as u64;
        seq.stats.accepted_tokens += accepted as u64;
        if plan.proposer == Proposer::Lookup {
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
}

/// Finish a slot's round after verification: roll back, record, emit.
#[allow(clippy::too_many_arguments)]
pub(super) fn conclude(
    target: &LlamaModel,
    slot: usize,
    plan: &Plan,
    draft: &Draft,
    verified: Verified,
    seq: &mut Sequence,
    contexts: &mut Contexts,
    limits: Limits,
    policy: Option<Policy>,
) -> Result<Progress, EngineError> {
    let Verdict { accepted, next } = verified.verdict;
    let keep = seq.tokens.len() + accepted;
    roll_back(slot, plan, seq, contexts, keep)?;
    record(plan, draft, accepted, &verified.passes, seq, policy);
    Ok(emit(
        target,
        limits.context,
        &draft.tokens[..accepted],
        next,
        seq,
    ))
}

/// Emit the accepted tokens and the target's own, stopping where due.
fn emit(
    target: &LlamaModel,
    context: usize,
    accepted: &[u32],
    next: u32,
    seq: &mut Sequence,
) -> Progress {
    let vocab = target.vocab();
    let mut emitted = Vec::with_capacity(accepted.len() + 1);
    let mut released = String::new();
    let mut finish = None;
    for &token in accepted.iter().chain(std::iter::once(&next)) {
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
    finish.map_or(Progress::Continue, Progress::Finished)
}

#[cfg(test)]
mod tests {
    use super::smooth_sample_ms;

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
}
