//! One draft-and-verify round of a sequence: who drafts how much (fixed
//! settings or the adaptive decision), drafting, verification in passes no
//! longer than the verification limit, rolling the caches back to the
//! accepted prefix, recording what the round taught, and streaming its text.

use std::time::Instant;

use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::token::LlamaToken;

use crate::config::DraftParams;
use crate::speculative::adaptive::{AdaptiveState, CostModel, Options, Proposer};
use crate::speculative::ngram::{self, NgramParams};
use crate::speculative::proposer::{drops_short_draft, propose, DraftModel};
use crate::speculative::sampling::{self, Distribution};
use crate::speculative::verifier::{self, Verdict};

use super::error::EngineError;
use super::load::Slot;
use super::pass::{decode_chunked, decode_timed, ms, truncate_kv};
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

/// Weight of a request's sampling cost estimate against a new measurement.
const SAMPLE_COST_SMOOTHING: f64 = 0.8;

/// A request's per-position sampling cost after one more round's measurement.
fn smooth_sample_ms(old: f64, new: f64) -> f64 {
    if !new.is_finite() || new < 0.0 {
        return old;
    }
    SAMPLE_COST_SMOOTHING * old + (1.0 - SAMPLE_COST_SMOOTHING) * new
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
    /// The drafter model stopped before the decided length, unsure.
    stopped_early: bool,
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
    ask: DraftAsk,
) -> Result<Draft, EngineError> {
    let DraftAsk {
        k,
        p_min,
        max_verify_batch,
        target_vocab,
    } = ask;
    let Some(&past) = seq.drafter_past.get(model) else {
        return Err(EngineError::Decode(format!(
            "drafter model {model} has no context in this slot"
        )));
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
    let steps = usize::from(!catching_up);
    let steps_ms = if catching_up { 0.0 } else { first_pass_ms };
    let drafting = Instant::now();
    let first = seq.tokens.len();
    let mut drafter = ContextDrafter {
        ctx,
        batch,
        logits_index: (last.len() - 1) as i32,
        position: first,
        target_vocab,
    };
    let proposal = propose(&mut drafter, k, p_min, first, &seq.sampling, &mut seq.rng)?;
    seq.drafter_past[model] = drafter.position;
    Ok(Draft {
        tokens: proposal.tokens,
        dists: proposal.dists,
        steps: steps + proposal.fed,
        steps_ms: steps_ms + ms(drafting),
        stopped_early: proposal.stopped_early,
    })
}

/// What a round asks of a drafter model.
#[derive(Debug, Clone, Copy)]
struct DraftAsk {
    /// Most tokens to draft.
    k: usize,
    /// Stop below this confidence (0: never).
    p_min: f32,
    /// Longest target pass (how a long catch-up is read).
    max_verify_batch: usize,
    /// The target's vocabulary size (no token beyond it is drafted).
    target_vocab: usize,
}

/// A drafter model's context as the proposer sees it.
struct ContextDrafter<'a, 'm, 'b> {
    ctx: &'a mut LlamaContext<'m>,
    batch: &'a mut LlamaBatch<'b>,
    /// Where the next token's logits are in the last pass.
    logits_index: i32,
    /// Position of the next token fed.
    position: usize,
    target_vocab: usize,
}

impl DraftModel for ContextDrafter<'_, '_, '_> {
    type Error = EngineError;

    fn logits(&self) -> &[f32] {
        within_target_vocab(
            self.ctx.get_logits_ith(self.logits_index),
            self.target_vocab,
        )
    }

    fn feed(&mut self, token: u32) -> Result<(), EngineError> {
        decode_timed(self.ctx, self.batch, &[token], self.position, false)?;
        self.position += 1;
        self.logits_index = 0;
        Ok(())
    }
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
pub(super) fn round(
    target: &LlamaModel,
    context: usize,
    max_verify_batch: usize,
    slot: &mut Slot,
    policy: Option<Policy>,
) -> Result<Progress, EngineError> {
    // The sequence is taken out of its slot for the round, so that its state
    // and the slot's contexts can be lent apart; it goes back whatever happens.
    let Some(mut seq) = slot.sequence.take() else {
        return Ok(Progress::Continue);
    };
    let outcome = run_round(target, context, max_verify_batch, slot, &mut seq, policy);
    slot.sequence = Some(seq);
    outcome
}

/// What a round will do, decided before any model runs.
struct Plan {
    /// Who drafts.
    proposer: Proposer,
    /// How many tokens.
    k: usize,
    /// The prompt lookup proposal the adaptive decision was shown.
    lookup: Vec<u32>,
    /// The candidate's draft controls.
    params: DraftParams,
    /// The candidate's drafter model, if it has one.
    drafter_model: Option<usize>,
    /// Most tokens per target pass.
    chunk: usize,
}

/// What verification found.
struct Verified {
    verdict: Verdict,
    /// Tokens and milliseconds of each target pass run.
    passes: Vec<(usize, f64)>,
}

fn run_round(
    target: &LlamaModel,
    context: usize,
    max_verify_batch: usize,
    slot: &mut Slot,
    seq: &mut Sequence,
    mut policy: Option<Policy>,
) -> Result<Progress, EngineError> {
    read_prompt(slot, seq)?;
    let started = Instant::now();
    let plan = plan(seq, context, max_verify_batch, policy.as_mut());
    let target_vocab = target.vocab().n_tokens().max(0) as usize;
    let draft = draft(&plan, seq, slot, max_verify_batch, target_vocab)?;
    let draft_ms = ms(started);
    seq.stats.draft_ms += draft_ms;

    let started = Instant::now();
    let Verified { verdict, passes } = verify(&plan, &draft, seq, slot)?;
    let verify_ms = ms(started);
    seq.stats.verify_ms += verify_ms;
    let Verdict { accepted, next } = verdict;
    // The round committed the accepted tokens and the target's own.
    seq.last_round = Some((accepted + 1, draft_ms + verify_ms));

    let keep = seq.tokens.len() + accepted;
    roll_back(&plan, seq, slot, keep)?;
    record(&plan, &draft, accepted, &passes, seq, policy);
    Ok(emit(target, context, &draft.tokens[..accepted], next, seq))
}

/// Read the prompt (all but its last token, which opens the first round).
fn read_prompt(slot: &mut Slot, seq: &mut Sequence) -> Result<(), EngineError> {
    let len = seq.tokens.len();
    if seq.target_past + 1 < len {
        let started = Instant::now();
        let pending = seq.tokens[seq.target_past..len - 1].to_vec();
        decode_chunked(&mut slot.target, &mut slot.batch, &pending, seq.target_past)?;
        // Wait for the device, so that the reading is counted here.
        slot.target.synchronize();
        seq.target_past = len - 1;
        seq.stats.prefill_ms += ms(started);
    }
    Ok(())
}

/// Who drafts how much: the fixed settings, or the adaptive decision among
/// the drafter model, prompt lookup and plain decoding; never more than fits
/// in the context or than `max_tokens` can use.
fn plan(
    seq: &Sequence,
    context: usize,
    max_verify_batch: usize,
    policy: Option<&mut Policy>,
) -> Plan {
    let candidate = seq.candidates.get(seq.current).copied();
    let drafter_model = candidate.and_then(|c| c.model);
    let params = candidate.map_or_else(DraftParams::default, |c| c.draft);
    let remaining = seq.max_tokens - seq.stats.completion_tokens;
    let room = context.saturating_sub(seq.tokens.len() + 1);
    let most = (params.max as usize)
        .min(room)
        .min(remaining.saturating_sub(1));
    let chunk = max_verify_batch.max(1);
    let (proposer, k, lookup) = match (policy, candidate) {
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
    Plan {
        proposer,
        k,
        lookup,
        params,
        drafter_model,
        chunk,
    }
}

/// Draft as planned; a draft shorter than the candidate's `min` is dropped
/// where that cannot bias the output.
fn draft(
    plan: &Plan,
    seq: &mut Sequence,
    slot: &mut Slot,
    max_verify_batch: usize,
    target_vocab: usize,
) -> Result<Draft, EngineError> {
    let k = plan.k;
    let model = plan
        .drafter_model
        .and_then(|m| slot.drafters.get_mut(m).map(|ctx| (m, ctx)));
    let mut draft = match (plan.proposer, model) {
        (Proposer::Model, Some((m, ctx))) if k > 0 => draft_with_model(
            seq,
            m,
            ctx,
            &mut slot.batch,
            DraftAsk {
                k,
                p_min: plan.params.p_min,
                max_verify_batch,
                target_vocab,
            },
        )?,
        (Proposer::Lookup, _) if k > 0 => {
            // The adaptive decision drafts from the proposal it was shown.
            let mut tokens = if plan.lookup.is_empty() {
                ngram::propose(&seq.tokens, NgramParams::default(), k)
            } else {
                plan.lookup.clone()
            };
            tokens.truncate(k);
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
        _ => Draft::default(),
    };
    let drawn_at_random = plan.proposer == Proposer::Model && seq.sampling.draws_at_random();
    if drops_short_draft(
        draft.tokens.len(),
        plan.params.min as usize,
        drawn_at_random,
    ) {
        // Not verified, so nothing to learn from either.
        draft = Draft::default();
    }
    Ok(draft)
}

/// Verify the last token and the draft in target passes of at most
/// `plan.chunk` tokens, evaluated only as far as acceptance goes.
fn verify(
    plan: &Plan,
    draft: &Draft,
    seq: &mut Sequence,
    slot: &mut Slot,
) -> Result<Verified, EngineError> {
    let len = seq.tokens.len();
    let mut batch_tokens = Vec::with_capacity(draft.tokens.len() + 1);
    batch_tokens.push(seq.tokens[len - 1]);
    batch_tokens.extend_from_slice(&draft.tokens);
    let mut window = VerifyWindow {
        ctx: &mut slot.target,
        batch: &mut slot.batch,
        tokens: &batch_tokens,
        start: len - 1,
        chunk: plan.chunk,
        evaluated: 0,
        passes: Vec::with_capacity(1),
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
    Ok(Verified {
        verdict,
        passes: std::mem::take(&mut window.passes),
    })
}

/// Roll the target's cache, and the cache of this round's drafter model,
/// back to the `keep` positions of the accepted prefix.
fn roll_back(
    plan: &Plan,
    seq: &mut Sequence,
    slot: &mut Slot,
    keep: usize,
) -> Result<(), EngineError> {
    truncate_kv(&mut slot.target, keep)?;
    seq.target_past = keep;
    // Only this round's drafter model can hold positions past `keep`: the
    // others stopped at most at the start of this round.
    if let Some(m) = plan.drafter_model {
        if let (Some(past), Some(ctx)) = (seq.drafter_past.get_mut(m), slot.drafters.get_mut(m)) {
            if *past > keep {
                *past = keep;
                truncate_kv(ctx, keep)?;
            }
        }
    }
    Ok(())
}

/// What the round teaches: the adaptive policy's costs and acceptance, and
/// the request's statistics.
fn record(
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
        p.cost.observe_draft(draft.steps, draft.steps_ms);
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
