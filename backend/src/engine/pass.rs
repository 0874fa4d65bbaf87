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

/// One llama.cpp decode of `tokens` at positions from `start`.
struct Decode<'a, 'm, 'b> {
    ctx: &'a mut LlamaContext<'m>,
    batch: &'a mut LlamaBatch<'b>,
    tokens: &'a [u32],
    start: usize,
    all_logits: bool,
}

impl Pass for Decode<'_, '_, '_> {
    fn submit(&mut self) -> Result<(), EngineError> {
        decode(
            self.ctx,
            self.batch,
            self.tokens,
            self.start,
            self.all_logits,
        )
    }

    fn wait(&mut self) {
        self.ctx.synchronize();
    }
}

/// [`decode`], timed through the completion of its logits.
pub(super) fn decode_timed(
    ctx: &mut LlamaContext,
    batch: &mut LlamaBatch,
    tokens: &[u32],
    start: usize,
    all_logits: bool,
) -> Result<f64, EngineError> {
    timed(&mut Decode {
        ctx,
        batch,
        tokens,
        start,
        all_logits,
    })
}

/// Evaluate `tokens` at positions from `start`; logits for all of them when
/// `all_logits`, else for the last only. Returns once the pass is queued.
pub(super) fn decode(
    ctx: &mut LlamaContext,
    batch: &mut LlamaBatch,
    tokens: &[u32],
    start: usize,
    all_logits: bool,
) -> Result<(), EngineError> {
    batch.clear();
    for (i, &t) in tokens.iter().enumerate() {
        let wants_logits = all_logits || i + 1 == tokens.len();
        batch
            .add(LlamaToken(t as i32), (start + i) as i32, &[0], wants_logits)
            .map_err(|e| EngineError::Decode(e.to_string()))?;
    }
    ctx.decode(batch)
        .map_err(|e| EngineError::Decode(e.to_string()))
}

/// Drop every cached position from `from` on. llama.cpp refuses a partial
/// removal where the state is not a cache of positions (recurrent models):
/// that is an error, never a silent keep of rejected tokens.
pub(super) fn truncate_kv(ctx: &mut LlamaContext, from: usize) -> Result<(), EngineError> {
    match ctx.clear_kv_cache_seq(Some(0), Some(from as u32), None) {
        Ok(true) => Ok(()),
        Ok(false) => Err(EngineError::Decode(format!(
            "llama.cpp refused to roll the model's state back to position {from}"
        ))),
        Err(e) => Err(EngineError::Decode(format!("KV cache rollback: {e}"))),
    }
}

/// Evaluate `tokens` in prompt-sized chunks, logits for the last token only.
pub(super) fn decode_chunked(
    ctx: &mut LlamaContext,
    batch: &mut LlamaBatch,
    tokens: &[u32],
    start: usize,
) -> Result<(), EngineError> {
    for (i, chunk) in tokens.chunks(PROMPT_CHUNK).enumerate() {
        decode(ctx, batch, chunk, start + i * PROMPT_CHUNK, false)?;
    }
    Ok(())
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
    fn requests_start_from_the_cost_of_their_kind() {
        let costs = SamplingCosts {
            greedy_ms: 0.1,
            sampled_ms: 1.5,
        };
        assert_eq!(costs.for_request(true), 0.1);
        assert_eq!(costs.for_request(false), 1.5);
    }
}
