//! How many tokens a target pass may evaluate while each token's logits stay
//! bit-identical to decoding it alone, measured at start-up on the loaded
//! model.
//!
//! Greedy speculation is token-exact only if verifying a token inside a pass
//! gives the logits plain decoding would. On CPU that holds for short passes
//! only, and how short depends on the kernels the CPU selects: with weight
//! repacking, ggml multiplies a batch's rows in groups with a GEMM kernel and
//! the rest with the single-token GEMV kernel (passes of up to three tokens
//! were exact, four were not, both on an AMD EPYC with the AVX2 kernels and
//! on an Intel Xeon with the AVX-512 ones); other kernels may group
//! differently. So the limit is measured, never assumed: logits of one
//! pass over n tokens against the same tokens evaluated one at a time, for
//! n = 2, 3, ... until the first pass that differs.

use std::time::Instant;

use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::LlamaModel;

use super::error::EngineError;
use super::pass::{decode, decode_chunked, decode_rows, ms, truncate_kv, Row, PROMPT_CHUNK};

/// Tokens of context before the probed positions. With the quantized KV
/// cache specdec uses on CPU (see `BATCH_INVARIANT_KV`), ggml's attention
/// takes the same per-row kernel whatever the context length (its split-KV
/// and tiled kernels are for F16/F32 caches only), so a short context shows
/// what a long one would, and start-up stays quick.
const PROBE_CONTEXT: usize = 64;

/// Single-token references are computed for the first this many probed
/// positions, then doubled as far as the passes stay exact.
const FIRST_REFERENCES: usize = 4;

/// What the measurement found.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Exactness {
    /// The largest pass size (in tokens) such that every pass of at most
    /// that many tokens gave bit-identical logits; at least 1.
    pub exact_tokens: usize,
    /// The largest size the search would have tried (it stops at the
    /// first size that differs).
    pub tried_up_to: usize,
    /// The first size that differed and the largest absolute logit
    /// difference it showed, if any differed.
    pub first_inexact: Option<(usize, f32)>,
    /// Of `exact_tokens`, how many rows of different sequences one pass may
    /// hold with each row's logits still equal to its single-token
    /// decoding (the limit of a pass shared by slots; at most
    /// `exact_tokens`, and 1 with a single slot).
    pub exact_sequences: usize,
    /// Milliseconds the measurement took.
    pub took_ms: f64,
}

/// The largest absolute difference between two logit vectors, or `None` when
/// they are bit-identical.
pub fn logit_difference(a: &[f32], b: &[f32]) -> Option<f32> {
    if a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits()) {
        return None;
    }
    if a.len() != b.len() {
        return Some(f32::INFINITY);
    }
    Some(
        a.iter()
            .zip(b)
            .map(|(x, y)| {
                let d = (x - y).abs();
                if d.is_nan() {
                    f32::INFINITY
                } else {
                    d
                }
            })
            .fold(0.0, f32::max),
    )
}

/// Try pass sizes 2, 3, ... up to `cap`; `differs(n)` says whether a pass of
/// `n` tokens differed from single tokens (and by how much). Stops at the
/// first that does: every size up to the result is exact.
pub fn search(
    cap: usize,
    mut differs: impl FnMut(usize) -> Result<Option<f32>, EngineError>,
) -> Result<(usize, Option<(usize, f32)>), EngineError> {
    let mut exact = 1;
    for n in 2..=cap {
        if let Some(diff) = differs(n)? {
            return Ok((exact, Some((n, diff))));
        }
        exact = n;
    }
    Ok((exact, None))
}

/// Measure on `ctx` (a context of `model` holding `sequences` sequences;
/// its KV cache is cleared before and after) for pass sizes up to `cap`.
pub(super) fn measure(
    model: &LlamaModel,
    ctx: &mut LlamaContext,
    batch: &mut LlamaBatch,
    cap: usize,
    sequences: usize,
) -> Result<Exactness, EngineError> {
    let started = Instant::now();
    let cap = cap.max(1);
    // Ordinary multilingual text; what matters is that the logits are real.
    let text = "Speculative decoding verifies drafted tokens in one pass. \
                Die Übersetzung wird Satz für Satz geprüft. \
                La vérification garde le préfixe accepté. 検証は一度に行われる。 ";
    let mut tokens: Vec<u32> = Vec::with_capacity(PROBE_CONTEXT + cap);
    let pattern = probe_tokens(model, text, "exactness probe")?;
    while tokens.len() < PROBE_CONTEXT + cap {
        tokens.extend(&pattern);
    }
    let prefix = PROBE_CONTEXT.min(ctx.n_ctx() as usize / 2);
    let cap = cap
        .min((ctx.n_ctx() as usize).saturating_sub(prefix))
        .max(1);
    tokens.truncate(prefix + cap);
    let probed = &tokens[prefix..];

    ctx.clear_kv_cache();
    decode_chunked(ctx, batch, 0, &tokens[..prefix], 0)?;
    // The references: each probed token evaluated alone, in order. Computed
    // lazily, as the search stops at the first inexact size (on CPU a
    // handful of tokens), and recomputed from the prefix when more are
    // needed, since every pass under test rewrites the cache after it.
    let mut single: Vec<Vec<f32>> = Vec::new();
    let (exact_tokens, first_inexact) = search(cap, |n| {
        if single.len() < n {
            let want = n.max(FIRST_REFERENCES).max(2 * single.len()).min(cap);
            truncate_kv(ctx, 0, prefix)?;
            single.clear();
            for (i, &t) in probed[..want].iter().enumerate() {
                decode(ctx, batch, 0, &[t], prefix + i, true)?;
                single.push(ctx.get_logits_ith(0).to_vec());
            }
        }
        truncate_kv(ctx, 0, prefix)?;
        decode(ctx, batch, 0, &probed[..n], prefix, true)?;
        let mut worst: Option<f32> = None;
        for (i, reference) in single.iter().enumerate().take(n) {
            if let Some(d) = logit_difference(ctx.get_logits_ith(i as i32), reference) {
                worst = Some(worst.map_or(d, |w| w.max(d)));
            }
        }
        Ok(worst)
    })?;
    // Rows of different sequences in one pass: every sequence holds the
    // same prefix, each evaluates the first probed token, and each row must
    // equal that token evaluated alone.
    truncate_kv(ctx, 0, prefix)?;
    let most = sequences.min(exact_tokens).max(1);
    for seq in 1..most as i32 {
        truncate_kv(ctx, seq, 0)?;
        ctx.copy_kv_cache_seq(0, seq, None, None)
            .map_err(|e| EngineError::Decode(format!("exactness probe: {e}")))?;
    }
    let (exact_sequences, _) = search(most, |n| {
        let rows: Vec<Row> = (0..n as i32)
            .map(|seq| Row {
                seq,
                token: probed[0],
                position: prefix,
                logits: true,
            })
            .collect();
        decode_rows(ctx, batch, &rows)?;
        let mut worst: Option<f32> = None;
        for i in 0..n {
            if let Some(d) = logit_difference(ctx.get_logits_ith(i as i32), &single[0]) {
                worst = Some(worst.map_or(d, |w| w.max(d)));
            }
        }
        for seq in 0..n as i32 {
            truncate_kv(ctx, seq, prefix)?;
        }
        Ok(worst)
    })?;
    ctx.clear_kv_cache();
    Ok(Exactness {
        exact_tokens,
        tried_up_to: cap,
        first_inexact,
        exact_sequences,
        took_ms: ms(started),
    })
}

/// `text` in the target's tokens, for the probe named `probe`.
fn probe_tokens(model: &LlamaModel, text: &str, probe: &str) -> Result<Vec<u32>, EngineError> {
    let tokens: Vec<u32> = model
        .vocab()
        .tokenize(text.as_bytes(), false, false)
        .into_iter()
        .map(|t| t.0 as u32)
        .collect();
    if tokens.is_empty() {
        return Err(EngineError::Decode(format!(
            "{probe}: the target tokenizes no text"
        )));
    }
    Ok(tokens)
}

/// Tokens of the prompt the granularity probe reads.
const GRANULARITY_PROMPT: usize = 64;

/// Chunk sizes tried for reading a prompt piecewise, smallest first.
const GRANULARITY_CANDIDATES: [usize; 3] = [8, 16, 32];

/// The smallest chunk size `g` such that reading a prompt in passes of
/// multiples of `g` tokens leaves the same cache as reading it in one pass
/// (the next token's logits bit-identical), measured on `ctx` (cleared
/// before and after); [`PROMPT_CHUNK`] if none of the candidates does.
///
/// ggml multiplies a pass's rows in tiles whose kernel depends on the row
/// count, so a prompt read piecewise need not leave the bits one pass
/// would; where whole tiles agree, a prompt may be read a few tiles per
/// engine step while other slots decode, and the cache, and so the output,
/// stays what reading it at once gives.
pub(super) fn prompt_granularity(
    model: &LlamaModel,
    ctx: &mut LlamaContext,
    batch: &mut LlamaBatch,
) -> Result<usize, EngineError> {
    let text = "Die Übersetzung wird Satz für Satz geprüft, und jeder Satz bleibt, \
                wie er war. La vérification garde le préfixe accepté. ";
    let pattern = probe_tokens(model, text, "granularity probe")?;
    let tokens: Vec<u32> = pattern
        .iter()
        .cycle()
        .take(GRANULARITY_PROMPT + 1)
        .copied()
        .collect();
    let (prompt, next) = tokens.split_at(GRANULARITY_PROMPT);
    let mut read = |chunk: usize| -> Result<Vec<f32>, EngineError> {
        ctx.clear_kv_cache();
        for (i, piece) in prompt.chunks(chunk).enumerate() {
            decode(ctx, batch, 0, piece, i * chunk, false)?;
        }
        decode(ctx, batch, 0, next, GRANULARITY_PROMPT, true)?;
        Ok(ctx.get_logits_ith(0).to_vec())
    };
    let whole = read(GRANULARITY_PROMPT)?;
    let mut found = PROMPT_CHUNK;
    for g in GRANULARITY_CANDIDATES {
        if logit_difference(&read(g)?, &whole).is_none() {
            found = g;
            break;
        }
    }
    ctx.clear_kv_cache();
    Ok(found)
}

/// The passes that read prompt tokens `from..to` of a prompt read from
/// position 0 in passes of multiples of `granularity` (at most `most`
/// tokens this step): a piece ending on a multiple of `granularity`, or the
/// final remainder as a pass of its own, so that however many steps the
/// reading takes, every pass covers the rows it would cover read at once.
pub fn prompt_piece(from: usize, to: usize, granularity: usize, most: usize) -> usize {
    let g = granularity.max(1);
    let aligned_end = to / g * g;
    if from >= aligned_end {
        // The remainder, whole.
        return to.saturating_sub(from);
    }
    // Whole tiles from `from` (itself on a tile boundary).
    let budget = (most.max(g) / g) * g;
    budget.min(aligned_end - from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identical_logits_have_no_difference() {
        assert_eq!(logit_difference(&[1.0, -2.5, 0.0], &[1.0, -2.5, 0.0]), None);
    }

    #[test]
    fn any_bit_counts() {
        assert_eq!(logit_difference(&[1.0, 2.0], &[1.0, 2.5]), Some(0.5));
        // -0.0 and 0.0 compare equal as numbers but not as bits.
        assert_eq!(logit_difference(&[0.0], &[-0.0]), Some(0.0));
        assert_eq!(logit_difference(&[f32::NAN], &[1.0]), Some(f32::INFINITY));
        assert_eq!(logit_difference(&[1.0], &[1.0, 2.0]), Some(f32::INFINITY));
    }

    #[test]
    fn search_stops_at_the_first_inexact_size() {
        let mut tried = Vec::new();
        let found = search(8, |n| {
            tried.push(n);
            Ok((n >= 4).then_some(0.5))
        })
        .unwrap();
        assert_eq!(found, (3, Some((4, 0.5))));
        assert_eq!(tried, [2, 3, 4], "nothing past the first failure is tried");
    }

    #[test]
    fn a_size_after_an_inexact_one_never_counts() {
        // Exact again at 5 does not help: a pass of 4 may still be needed.
        let found = search(8, |n| Ok((n == 4).then_some(0.1))).unwrap();
        assert_eq!(found.0, 3);
    }

    #[test]
    fn everything_exact_reaches_the_cap() {
        assert_eq!(search(5, |_| Ok(None)).unwrap(), (5, None));
        assert_eq!(search(1, |_| Ok(Some(1.0))).unwrap(), (1, None));
    }

    #[test]
    fn a_prompt_is_read_in_whole_tiles_then_its_remainder_alone() {
        // 45 tokens, tiles of 8, 16 per step: 16, 16, 8, then the 5 left.
        let mut at = 0;
        let mut pieces = Vec::new();
        while at < 45 {
            let n = prompt_piece(at, 45, 8, 16);
            pieces.push(n);
            at += n;
        }
        assert_eq!(pieces, [16, 16, 8, 5]);
        // Read at once: the aligned body in one pass, the remainder in another.
        assert_eq!(prompt_piece(0, 45, 8, 512), 40);
        assert_eq!(prompt_piece(40, 45, 8, 512), 5);
        // A budget below a tile still reads a whole tile.
        assert_eq!(prompt_piece(0, 45, 8, 3), 8);
        // Shorter than a tile: one pass.
        assert_eq!(prompt_piece(0, 5, 8, 512), 5);
        assert_eq!(prompt_piece(5, 5, 8, 512), 0);
    }

    #[test]
    fn errors_propagate() {
        let err = search(4, |_| Err(EngineError::Decode("boom".into())));
        assert_eq!(err, Err(EngineError::Decode("boom".into())));
    }
}
