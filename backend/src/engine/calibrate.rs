//! What start-up measures on the loaded models: the longest target pass
//! whose logits equal single-token decoding (the verification limit), and
//! the costs adaptive drafting weighs (target passes by size, draft steps,
//! sampling).

use std::time::Instant;

use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::LlamaModel;

use crate::config::DraftParams;
use crate::speculative::adaptive::CostModel;
use crate::speculative::sampling::{self, SamplingParams};

use super::error::EngineError;
use super::exactness;
use super::load::{Contexts, LoadedDrafter};
use super::pass::KvLayout;
use super::pass::{
    decode_chunked, decode_timed, ms, truncate_kv, SamplingCosts, MAX_PROMPT_PIECE, PROMPT_CHUNK,
};
use super::runtime::RuntimeInfo;
use super::{Batching, CalibratedCosts, EngineConfig, Verification, MAX_VERIFY_BATCH};

/// How many tokens a verification pass may hold on this machine. On CPU it
/// is the pass size measured exact on the loaded target (see
/// [`exactness`](super::exactness)); with the target on a GPU a whole draft
/// is verified in one pass, and greedy output equals the target's up to
/// floating-point ties. Without drafters nothing is verified or measured.
pub(super) fn verification_limit(
    config: &EngineConfig,
    runtime: &RuntimeInfo,
    target: &LlamaModel,
    drafters: &[LoadedDrafter],
    contexts: &mut Contexts,
) -> Result<Verification, EngineError> {
    let slots = config.slots.max(1);
    let target_on_gpu = target_on_gpu(config, runtime);
    // Nothing is verified and no pass is shared: nothing to measure.
    if drafters.is_empty() && slots == 1 {
        return Ok(Verification {
            max_verify_batch: 1,
            shared_pass_rows: 1,
            prompt_granularity: PROMPT_CHUNK,
            exactness: None,
            target_on_gpu,
            batching: config.batching,
        });
    }
    let cap = MAX_VERIFY_BATCH;
    let measured = exactness::measure(
        target,
        &mut contexts.target,
        &mut contexts.batch,
        cap,
        slots,
    )?;
    let (max_verify_batch, shared_pass_rows, prompt_granularity) = if target_on_gpu {
        // On a GPU passes are batched freely (see `Verification`).
        (cap, slots * cap, GPU_PROMPT_GRANULARITY)
    } else if config.batching == Batching::Throughput {
        (cap, slots * cap, CPU_THROUGHPUT_PROMPT_PIECE)
    } else {
        let granularity = if slots > 1 {
            exactness::prompt_granularity(target, &mut contexts.target, &mut contexts.batch)?
        } else {
            PROMPT_CHUNK
        };
        (
            measured.exact_tokens,
            measured.exact_sequences.min(measured.exact_tokens).max(1),
            granularity,
        )
    };
    tracing::info!(
        exact_tokens = measured.exact_tokens,
        exact_sequences = measured.exact_sequences,
        tried_up_to = measured.tried_up_to,
        first_inexact = ?measured.first_inexact,
        took_ms = measured.took_ms,
        max_verify_batch,
        shared_pass_rows,
        prompt_granularity,
        target_on_gpu,
        batching = ?config.batching,
        "measured the largest target passes with logits bit-identical to single-token decoding"
    );
    Ok(Verification {
        max_verify_batch: if drafters.is_empty() {
            1
        } else {
            max_verify_batch
        },
        shared_pass_rows,
        prompt_granularity,
        exactness: Some(measured),
        target_on_gpu,
        batching: config.batching,
    })
}

/// Whether llama.cpp runs the target on a GPU.
pub(super) fn target_on_gpu(config: &EngineConfig, runtime: &RuntimeInfo) -> bool {
    config.target.gpu_layers > 0 && runtime.has_gpu
}

/// How the contexts hold the slots' sequences: a KV stream each where a
/// sequence's passes must compute what they would alone (exact batching on
/// CPU), else one cache, so that llama.cpp computes any pass in one go.
pub(super) fn kv_layout(config: &EngineConfig, runtime: &RuntimeInfo) -> KvLayout {
    if config.batching == Batching::Exact && !target_on_gpu(config, runtime) {
        KvLayout::Streams
    } else {
        KvLayout::Unified
    }
}

/// Prompt tokens per piece with throughput batching on CPU: pieces ride in
/// the decoding slots' pass, in multiples of this many rows, as many as the
/// prompt pacer finds the step affords (see `PromptPacer`).
const CPU_THROUGHPUT_PROMPT_PIECE: usize = 4;

/// Prompt tokens per piece on a GPU, where passes are not held to bitwise
/// equality: small enough that a long prompt read beside decoding slots
/// delays them little, large enough to keep the device busy.
const GPU_PROMPT_GRANULARITY: usize = MAX_PROMPT_PIECE;

/// Pass sizes measured at start-up: every size up to 16 (the verification
/// cost curve) and the largest a round may verify; sizes in between are
/// interpolated.
pub(super) fn calibration_sizes(largest: usize) -> Vec<usize> {
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
pub(super) struct Calibration {
    /// Cost model per drafter.
    pub(super) costs: Vec<CostModel>,
    /// What sampling one position costs the target.
    pub(super) sampling: SamplingCosts,
    /// The measurements, for reports.
    pub(super) table: Option<CalibratedCosts>,
}

/// Measure, on this hardware, target passes by size, each drafter's draft
/// step and the target's sampling of one position, for the adaptive policy
/// (which any request may ask for, so every engine with drafters
/// calibrates). Every pass is timed through the completion of its logits;
/// a draft step includes choosing its token. Uses (and clears) one slot's
/// contexts.
pub(super) fn calibrate(
    target: &LlamaModel,
    drafters: &[LoadedDrafter],
    contexts: &mut Contexts,
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
    contexts.target.clear_kv_cache();
    decode_chunked(&mut contexts.target, &mut contexts.batch, 0, &prefix, 0)?;
    for ctx in &mut contexts.drafters {
        ctx.clear_kv_cache();
        decode_chunked(ctx, &mut contexts.batch, 0, &prefix, 0)?;
    }
    let sizes = calibration_sizes(largest);
    // A first pass of each context warms caches and threads up; the
    // target's logits serve to time sampling one position.
    time_pass(
        &mut contexts.target,
        &mut contexts.batch,
        &probe[..1],
        start,
    )?;
    let logits = contexts.target.get_logits_ith(0).to_vec();
    for ctx in &mut contexts.drafters {
        time_draft_step(ctx, &mut contexts.batch, probe[0], start)?;
    }
    // Each larger pass and each draft step is timed right after a
    // one-token target pass, and costs what the median pair says relative
    // to it: a change of load during start-up touches both halves of a
    // pair alike, where it would skew times taken apart.
    let Contexts {
        target: target_ctx,
        drafters: drafter_ctxs,
        batch,
        ..
    } = &mut *contexts;
    let mut unit = f64::INFINITY;
    let mut pass_ratios = vec![Vec::with_capacity(CALIBRATION_PAIRS); sizes.len()];
    let mut step_ratios = vec![Vec::with_capacity(CALIBRATION_PAIRS); drafter_ctxs.len()];
    for _ in 0..CALIBRATION_PAIRS {
        for (&n, ratios) in sizes.iter().zip(&mut pass_ratios).filter(|(n, _)| **n > 1) {
            let one = time_pass(target_ctx, batch, &probe[..1], start)?;
            let pass = time_pass(target_ctx, batch, &probe[..n], start)?;
            unit = unit.min(one);
            ratios.push(pass / one);
        }
        for (ctx, ratios) in drafter_ctxs.iter_mut().zip(&mut step_ratios) {
            let one = time_pass(target_ctx, batch, &probe[..1], start)?;
            let step = time_draft_step(ctx, batch, probe[0], start)?;
            unit = unit.min(one);
            ratios.push(step / one);
        }
    }
    if !unit.is_finite() {
        unit = time_pass(target_ctx, batch, &probe[..1], start)?;
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
    for ctx in &mut contexts.drafters {
        ctx.clear_kv_cache();
    }
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
    contexts.target.clear_kv_cache();
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

/// Milliseconds of one pass over `tokens` at `start`, through the
/// completion of its logits, rolled back after.
pub(super) fn time_pass(
    ctx: &mut LlamaContext,
    batch: &mut LlamaBatch,
    tokens: &[u32],
    start: usize,
) -> Result<f64, EngineError> {
    let elapsed = decode_timed(ctx, batch, 0, tokens, start, true)?;
    truncate_kv(ctx, 0, start)?;
    Ok(elapsed)
}

/// Milliseconds of one draft step at `start`: a one-token pass through its
/// logits and the (greedy) choice of its token, rolled back after.
pub(super) fn time_draft_step(
    ctx: &mut LlamaContext,
    batch: &mut LlamaBatch,
    token: u32,
    start: usize,
) -> Result<f64, EngineError> {
    let started = Instant::now();
    decode_timed(ctx, batch, 0, &[token], start, false)?;
    std::hint::black_box(sampling::argmax(ctx.get_logits_ith(0)));
    let elapsed = ms(started);
    truncate_kv(ctx, 0, start)?;
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

#[cfg(test)]
mod tests {
    use super::calibration_sizes;

    #[test]
    fn calibration_covers_the_curve_and_the_largest_pass() {
        assert_eq!(calibration_sizes(1), [1]);
        assert_eq!(calibration_sizes(5), [1, 2, 3, 4, 5]);
        let gpu = calibration_sizes(65);
        assert_eq!(gpu.len(), 17);
        assert_eq!((gpu[15], gpu[16]), (16, 65));
    }
}
