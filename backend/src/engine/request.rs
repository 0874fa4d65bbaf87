//! What callers hand to the engine and what they get back.

use serde::{Deserialize, Serialize};

use crate::config::DraftParams;
use crate::speculative::sampling::SamplingParams;

use super::error::EngineError;

/// One chat message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// `system`, `user` or `assistant`.
    pub role: String,
    /// The text.
    pub content: String,
}

/// The input of a generation.
#[derive(Debug, Clone, PartialEq)]
pub enum Prompt {
    /// Raw text, tokenized as is (special tokens are parsed).
    Text(String),
    /// Chat messages, rendered with the target GGUF's chat template.
    Chat(Vec<ChatMessage>),
}

/// Which drafter a request uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DrafterChoice {
    /// Plain decoding with the target alone.
    None,
    /// The drafter of that name.
    Named(String),
}

/// A generation request.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationRequest {
    /// Input.
    pub prompt: Prompt,
    /// Most tokens to generate (at least 1).
    pub max_tokens: usize,
    /// Sampling parameters (temperature 0 is greedy).
    pub sampling: SamplingParams,
    /// Drafter to speculate with.
    pub drafter: DrafterChoice,
    /// Draft controls; `None` takes the drafter's configured ones.
    pub draft: Option<DraftParams>,
    /// Stop strings; the text ends before the first one found.
    pub stop: Vec<String>,
    /// The request's language (ISO 639-1), if known: adaptive drafting keeps
    /// its acceptance estimates per drafter and language.
    pub language: Option<String>,
}

impl GenerationRequest {
    /// A greedy request without speculation.
    pub fn new(prompt: Prompt, max_tokens: usize) -> Self {
        Self {
            prompt,
            max_tokens,
            sampling: SamplingParams::default(),
            drafter: DrafterChoice::None,
            draft: None,
            stop: Vec::new(),
            language: None,
        }
    }

    /// Add a stop string.
    pub fn with_stop(mut self, stop: impl Into<String>) -> Self {
        self.stop.push(stop.into());
        self
    }
}

/// Why a generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// An end-of-generation token or a stop string.
    Stop,
    /// `max_tokens` reached, or the context is full.
    Length,
}

/// Statistics of one generation.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GenerationStats {
    /// Tokens in the prompt.
    pub prompt_tokens: usize,
    /// Tokens generated.
    pub completion_tokens: usize,
    /// Verification rounds (target forward passes after the prompt).
    pub rounds: u64,
    /// Rounds that verified at least one drafted token (vLLM's num_drafts).
    pub drafts: u64,
    /// Tokens drafted.
    pub draft_tokens: u64,
    /// Drafted tokens the target accepted.
    pub accepted_tokens: u64,
    /// Of the drafted tokens, those proposed by prompt lookup (adaptive
    /// drafting with a model drafter may use lookup where it pays).
    pub lookup_draft_tokens: u64,
    /// Of the accepted tokens, those proposed by prompt lookup.
    pub lookup_accepted_tokens: u64,
    /// Accepted count by draft position (index 0 is the first drafted token).
    pub accepted_per_position: Vec<u64>,
    /// accepted / drafted, 0 when nothing was drafted.
    pub acceptance_rate: f64,
    /// 1 + accepted / drafts (vLLM's mean accepted length), 0 when nothing was drafted.
    pub mean_accepted_length: f64,
    /// Rounds by the draft length chosen for them (index 0: plain rounds).
    pub rounds_by_draft_length: Vec<u64>,
    /// Milliseconds evaluating the prompt.
    pub prefill_ms: f64,
    /// Milliseconds spent drafting.
    pub draft_ms: f64,
    /// Milliseconds spent in target verification passes.
    pub verify_ms: f64,
    /// Milliseconds from the start of prompt evaluation to the last token.
    pub total_ms: f64,
    /// Generated tokens per second of decoding (after the prompt).
    pub tokens_per_second: f64,
}

impl GenerationStats {
    /// Fill the derived ratios from the counters and timings.
    pub fn finalize(&mut self) {
        self.acceptance_rate = ratio(self.accepted_tokens, self.draft_tokens);
        self.mean_accepted_length = if self.drafts == 0 {
            0.0
        } else {
            1.0 + ratio(self.accepted_tokens, self.drafts)
        };
        let decode_ms = self.total_ms - self.prefill_ms;
        self.tokens_per_second = if decode_ms > 0.0 {
            self.completion_tokens as f64 * 1000.0 / decode_ms
        } else {
            0.0
        };
    }
}

fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 {
        0.0
    } else {
        a as f64 / b as f64
    }
}

/// What the engine streams back for a request.
#[derive(Debug, Clone, PartialEq)]
pub enum GenerationEvent {
    /// The prompt is accepted and evaluation begins.
    Started {
        /// Tokens in the prompt.
        prompt_tokens: usize,
        /// The drafter in use, if any.
        drafter: Option<String>,
    },
    /// New tokens and the text they complete (text may lag tokens by a few
    /// bytes while a UTF-8 character or a possible stop string is pending).
    Tokens {
        /// Released text.
        text: String,
        /// Token ids.
        token_ids: Vec<u32>,
    },
    /// The generation ended.
    Finished {
        /// Why.
        reason: FinishReason,
        /// Statistics.
        stats: GenerationStats,
    },
    /// The generation failed; nothing more follows.
    Failed(EngineError),
}

/// A whole generation, collected.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Completion {
    /// Generated text.
    pub text: String,
    /// Generated token ids (end-of-generation tokens excluded).
    pub token_ids: Vec<u32>,
    /// Why it ended.
    pub finish_reason: FinishReason,
    /// The drafter used, if any.
    pub drafter: Option<String>,
    /// Statistics.
    pub stats: GenerationStats,
}
