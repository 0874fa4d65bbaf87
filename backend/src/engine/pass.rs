//! llama.cpp passes over a context, and their costs.
//!
//! `llama_decode` queues a pass and, on a GPU backend, returns before the
//! device has finished it: a timer stopped there measures queueing. Every
//! timed pass here therefore ends with `llama_synchronize`, the wait that
//! reading the logits would do anyway, on CPU and GPU alike, so that the
//! costs the adaptive policy weighs are what a round really spends.

use std::time::Instant;

use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::token::LlamaToken;

use super::error::EngineError;

/// Tokens evaluated per llama.cpp batch when reading a prompt.
pub(super) const PROMPT_CHUNK: usize = 512;

/// Most prompt tokens a slot reads in one engine step while others decode.
pub(super) const MAX_PROMPT_PIECE: usize = 128;

/// Milliseconds since `since`.
pub(super) fn ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1000.0
}

/// A unit of work whose cost is measured: `submit` queues it (and may
/// return before the device is done), `wait` blocks until its results can
/// be read.
pub(super) trait Pass {
    /// Queue the work.
    fn submit(&mut self) -> Result<(), EngineError>;
    /// Block until its results are readable.
    fn wait(&mut self);
}

/// Run `pass` and return its milliseconds up to the moment its results are
/// readable (not merely queued).
pub(super) fn timed(pass: &mut impl Pass) -> Result<f64, EngineError> {
    let started = Instant::now();
    pass.submit()?;
    pass.wait();
    Ok(ms(started))
}

/// A sequence's id in a context: the slot it is generated in. Every context
/// holds one KV stream per slot, so a pass may mix rows of several slots.
pub(super) type SeqId = i32;

/// One row of a llama.cpp pass: `token` of sequence `seq` at `position`,
/// with its logits kept or not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Row {
    pub seq: SeqId,
    pub token: u32,
    pub position: usize,
    pub logits: bool,
}

impl Row {
    /// The rows of `tokens` of `seq` from `start`; logits for all of them
    /// when `all_logits`, else for the last only.
    pub fn run(seq: SeqId, tokens: &[u32], start: usize, all_logits: bool) -> Vec<Row> {
        tokens
            .iter()
            .enumerate()
            .map(|(i, &token)| Row {
                seq,
                token,
                position: start + i,
                logits: all_logits || i + 1 == tokens.len(),
            })
            .collect()
    }
}

/// One llama.cpp decode of `rows`.
struct Decode<'a, 'm, 'b> {
    ctx: &'a mut LlamaContext<'m>,
    batch: &'a mut LlamaBatch<'b>,
    rows: &'a [Row],
}

impl Pass for Decode<'_, '_, '_> {
    fn submit(&mut self) -> Result<(), EngineError> {
        decode_rows(self.ctx, self.batch, self.rows)
    }

    fn wait(&mut self) {
        self.ctx.synchronize();
    }
}

/// [`decode_rows`], timed through the completion of its logits.
pub(super) fn decode_rows_timed(
    ctx: &mut LlamaContext,
    batch: &mut LlamaBatch,
    rows: &[Row],
) -> Result<f64, EngineError> {
    timed(&mut Decode { ctx, batch, rows })
}

/// [`decode`], timed through the completion of its logits.
pub(super) fn decode_timed(
    ctx: &mut LlamaContext,
    batch: &mut LlamaBatch,
    seq: SeqId,
    tokens: &[u32],
    start: usize,
    all_logits: bool,
) -> Result<f64, EngineError> {
    decode_rows_timed(ctx, batch, &Row::run(seq, tokens, start, all_logits))
}

/// Evaluate `rows` in one llama.cpp decode; the logits of row `i` (if kept)
/// are then at index `i`. Returns once the pass is queued.
pub(super) fn decode_rows(
    ctx: &mut LlamaContext,
    batch: &mut LlamaBatch,
    rows: &[Row],
) -> Result<(), EngineError> {
    batch.clear();
    for row in rows {
        batch
            .add(
                LlamaToken(row.token as i32),
                row.position as i32,
                &[row.seq],
                row.logits,
            )
            .map_err(|e| EngineError::Decode(e.to_string()))?;
    }
    ctx.decode(batch)
        .map_err(|e| EngineError::Decode(e.to_string()))
}

/// Evaluate `tokens` of `seq` at positions from `start`; logits for all of
/// them when `all_logits`, else for the last only. Returns once the pass is
/// queued.
pub(super) fn decode(
    ctx: &mut LlamaContext,
    batch: &mut LlamaBatch,
    seq: SeqId,
    tokens: &[u32],
    start: usize,
    all_logits: bool,
) -> Result<(), EngineError> {
    decode_rows(ctx, batch, &Row::run(seq, tokens, start, all_logits))
}

/// Drop every cached position of `seq` from `from` on. llama.cpp refuses a
/// partial removal where the state is not a cache of positions (recurrent
/// models): that is an error, never a silent keep of rejected tokens.
pub(super) fn truncate_kv(
    ctx: &mut LlamaContext,
    seq: SeqId,
    from: usize,
) -> Result<(), EngineError> {
    match ctx.clear_kv_cache_seq(Some(seq as u32), Some(from as u32), None) {
        Ok(true) => Ok(()),
        Ok(false) => Err(EngineError::Decode(format!(
            "llama.cpp refused to roll the model's state back to position {from}"
        ))),
        Err(e) => Err(EngineError::Decode(format!("KV cache rollback: {e}"))),
    }
}

/// Evaluate `tokens` of `seq` in prompt-sized chunks, logits for the last
/// token only.
pub(super) fn decode_chunked(
    ctx: &mut LlamaContext,
    batch: &mut LlamaBatch,
    seq: SeqId,
    tokens: &[u32],
    start: usize,
) -> Result<(), EngineError> {
    for (i, chunk) in tokens.chunks(PROMPT_CHUNK).enumerate() {
        decode(ctx, batch, seq, chunk, start + i * PROMPT_CHUNK, false)?;
    }
    Ok(())
}

/// How llama.cpp takes a pass apart before computing it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum KvLayout {
    /// One KV stream per sequence: llama.cpp computes a pass in one go only
    /// when it holds the same number of rows of consecutive sequence ids,
    /// and splits any other pass into several computations.
    Streams,
    /// One cache for all sequences: any pass is computed in one go.
    Unified,
}

/// The passes that evaluate `groups` (each a sequence id and its row
/// count this step, in increasing sequence order): each pass at most
/// `limit` rows, a group never split between passes, and, over per-sequence
/// KV streams, only groups llama.cpp computes in one go together (see
/// [`KvLayout::Streams`]), so that a pass's cost is one computation's.
/// Returns the groups' indices per pass, in order. A group longer than
/// `limit` gets a pass of its own (the caller splits it).
pub(super) fn pack(groups: &[(SeqId, usize)], limit: usize, layout: KvLayout) -> Vec<Vec<usize>> {
    let limit = limit.max(1);
    let mut passes: Vec<Vec<usize>> = Vec::new();
    let mut rows = 0;
    let mut last: Option<(SeqId, usize)> = None;
    for (i, &(seq, size)) in groups.iter().enumerate() {
        let joins = match (passes.last(), last) {
            (Some(_), Some((last_seq, last_size))) => {
                rows + size <= limit
                    && (layout == KvLayout::Unified || (seq == last_seq + 1 && size == last_size))
            }
            _ => false,
        };
        if joins {
            if let Some(pass) = passes.last_mut() {
                pass.push(i);
            }
            rows += size;
        } else {
            passes.push(vec![i]);
            rows = size;
        }
        last = Some((seq, size));
    }
    passes
}

/// What sampling one position costs the target, by kind of request: the
/// transform from logits to a token runs over the whole vocabulary, on the
/// CPU, once per verified position, so it is part of every round's cost.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct SamplingCosts {
    /// Milliseconds of an argmax (greedy requests).
    pub greedy_ms: f64,
    /// Milliseconds of the sampling distribution at temperature 1 without
    /// cuts (sampled requests; cuts cost about the same, see
    /// [`sampling::distribution`](crate::speculative::sampling::distribution)).
    pub sampled_ms: f64,
}

impl SamplingCosts {
    /// The cost to start a request with these parameters from.
    pub fn for_request(&self, greedy: bool) -> f64 {
        if greedy {
            self.greedy_ms
        } else {
            self.sampled_ms
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// Work that, like a GPU pass, is queued at once and done later.
    struct Asynchronous {
        queued: bool,
        device_time: Duration,
    }

    impl Pass for Asynchronous {
        fn submit(&mut self) -> Result<(), EngineError> {
            self.queued = true;
            Ok(())
        }

        fn wait(&mut self) {
            assert!(self.queued, "waited for work never queued");
            std::thread::sleep(self.device_time);
        }
    }

    #[test]
    fn a_timed_pass_includes_waiting_for_its_results() {
        let mut pass = Asynchronous {
            queued: false,
            device_time: Duration::from_millis(40),
        };
        let took = timed(&mut pass).unwrap();
        assert!(took >= 40.0, "timed {took} ms of a 40 ms pass");
    }

    #[test]
    fn a_failed_submission_is_not_waited_for() {
        struct Refused;
        impl Pass for Refused {
            fn submit(&mut self) -> Result<(), EngineError> {
                Err(EngineError::Decode("no room".into()))
            }
            fn wait(&mut self) {
                panic!("waited for a refused pass");
            }
        }
        assert!(timed(&mut Refused).is_err());
    }

    #[test]
    fn groups_are_packed_whole_within_the_limit() {
        let unified = |sizes: &[usize], limit| {
            let groups: Vec<(SeqId, usize)> = sizes
                .iter()
                .enumerate()
                .map(|(i, &n)| (i as SeqId, n))
                .collect();
            pack(&groups, limit, KvLayout::Unified)
        };
        assert_eq!(unified(&[1, 1, 1, 1], 3), vec![vec![0, 1, 2], vec![3]]);
        assert_eq!(unified(&[2, 2, 1], 3), vec![vec![0], vec![1, 2]]);
        assert_eq!(unified(&[4, 1], 3), vec![vec![0], vec![1]]);
        assert_eq!(unified(&[3, 5, 2], 17), vec![vec![0, 1, 2]]);
        assert!(unified(&[], 3).is_empty());
    }

    #[test]
    fn over_kv_streams_a_pass_holds_what_llama_cpp_computes_at_once() {
        let streams = |groups: &[(SeqId, usize)], limit| pack(groups, limit, KvLayout::Streams);
        // Consecutive sequences, one row each: together.
        assert_eq!(streams(&[(0, 1), (1, 1), (2, 1)], 3), vec![vec![0, 1, 2]]);
        // A gap in the sequence ids, or rows of unequal counts: apart.
        assert_eq!(
            streams(&[(0, 1), (2, 1), (3, 1)], 3),
            vec![vec![0], vec![1, 2]]
        );
        assert_eq!(
            streams(&[(0, 2), (1, 1), (2, 1)], 3),
            vec![vec![0], vec![1, 2]]
        );
        assert_eq!(streams(&[(0, 2), (1, 2)], 4), vec![vec![0, 1]]);
        assert_eq!(
            streams(&[(0, 1), (1, 1), (2, 1), (3, 1)], 3),
            vec![vec![0, 1, 2], vec![3]]
        );
    }

    #[test]
    fn rows_of_a_run_keep_the_last_logits_or_all() {
        let rows = Row::run(2, &[7, 8], 10, false);
        assert_eq!(
            rows,
            [
                Row {
                    seq: 2,
                    token: 7,
                    position: 10,
                    logits: false
                },
                Row {
                    seq: 2,
                    token: 8,
                    position: 11,
                    logits: true
                },
            ]
        );
        assert!(Row::run(0, &[1, 2], 0, true).iter().all(|r| r.logits));
    }

    #[test]
    fn requests_start_from_the_cost_of_their_kind() {
        let costs = SamplingCosts {
            greedy_ms: 0.1,
            sampled_ms: 1.5,
        };
        assert_eq!(costs.for_request(true), 0.1);
        assert_eq!(costs.for_request(false), 1.5);
    }
}
