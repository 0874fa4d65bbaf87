//! What callers hand to the engine and what they get back.

use std::collections::BTreeMap;

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
#[derive(Debug, Clone, PartialEq)]
pub enum DrafterChoice {
    /// Plain decoding with the target alone.
    None,
    /// The drafter of that name, with [`GenerationRequest::draft`] or its
    /// configured draft controls.
    Named(String),
    /// Several candidate drafters in order of preference: the engine
    /// chooses one for every round, by the tokens per second each has
    /// delivered for the request's language (see
    /// [`crate::speculative::bandit`]). One candidate is the same as
    /// [`DrafterChoice::Named`]; none is plain decoding.
    Candidates(Vec<Candidate>),
}

/// A candidate drafter of a request.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    /// The drafter's name in the engine's configuration.
    pub name: String,
    /// Its draft controls for this request; `None` takes
    /// [`GenerationRequest::draft`], else the drafter's configured ones.
    pub draft: Option<DraftParams>,
}

impl Candidate {
    /// A candidate with the request's (or its configured) draft controls.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            draft: None,
        }
    }
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
    /// Draft controls; `None` takes the drafter's configured ones. With
    /// several candidates, those of a candidate that gives none.
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

/// What one drafter did in a generation (requests with several candidate
/// drafters switch between them round by round).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DrafterStats {
    /// Rounds this drafter was chosen for (including those in which it, or
    /// adaptive drafting, proposed nothing).
    pub rounds: u64,
    /// Of those, rounds that verified at least one drafted token.
    pub drafts: u64,
    /// Tokens drafted.
    pub draft_tokens: u64,
    /// Drafted tokens the target accepted.
    pub accepted_tokens: u64,
    /// Accepted count by draft position (index 0 is the first drafted token).
    #[serde(default)]
    pub accepted_per_position: Vec<u64>,
    /// Rounds by the draft length chosen for them (index 0: plain rounds).
    #[serde(default)]
    pub rounds_by_draft_length: Vec<u64>,
}

impl DrafterStats {
    /// Count a round that drafted `drafted` tokens of which the target
    /// accepted `accepted`, at the chosen draft length `length`.
    pub(crate) fn record_round(&mut self, length: usize, drafted: usize, accepted: usize) {
        self.rounds += 1;
        if self.rounds_by_draft_length.len() <= length {
            self.rounds_by_draft_length.resize(length + 1, 0);
        }
        self.rounds_by_draft_length[length] += 1;
        if drafted == 0 {
            return;
        }
        self.drafts += 1;
        self.draft_tokens += drafted as u64;
        self.accepted_tokens += accepted as u64;
        if self.accepted_per_position.len() < drafted {
            self.accepted_per_position.resize(drafted, 0);
        }
        for count in &mut self.accepted_per_position[..accepted.min(drafted)] {
            *count += 1;
        }
    }
}

/// The drafter a generation is reported under, among `candidates` (name and
/// statistics, in the order of preference): the one whose drafts produced
/// most of the accepted tokens; on a tie (say, none accepted) the one chosen
/// for more rounds, then the earlier.
pub fn main_drafter<'a>(
    candidates: impl IntoIterator<Item = (&'a str, &'a DrafterStats)>,
) -> Option<&'a str> {
    let mut best: Option<(&str, &DrafterStats)> = None;
    for (name, stats) in candidates {
        let better = best.is_none_or(|(_, b)| {
            (stats.accepted_tokens, stats.rounds) > (b.accepted_tokens, b.rounds)
        });
        if better {
            best = Some((name, stats));
        }
    }
    best.map(|(name, _)| name)
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
    /// Target passes the prompt was read in (more than one or two when it
    /// was read in pieces beside decoding slots).
    pub prompt_passes: u64,
    /// Milliseconds spent drafting.
    pub draft_ms: f64,
    /// Milliseconds spent in target verification passes.
    pub verify_ms: f64,
    /// Milliseconds from the start of prompt evaluation to the last token.
    pub total_ms: f64,
    /// Generated tokens per second of decoding (after the prompt).
    pub tokens_per_second: f64,
    /// The drafter the generation is reported under: with several
    /// candidates, the one that produced most of the accepted tokens (see
    /// [`main_drafter`]); `None` for plain decoding.
    #[serde(default)]
    pub drafter: Option<String>,
    /// What each candidate drafter did, by name (empty for plain decoding;
    /// one entry, equal to the totals, with a single drafter).
    #[serde(default)]
    pub drafters: BTreeMap<String, DrafterStats>,
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
        /// The drafter in use, if any; with several candidates the first
        /// (the one reported at the end is in [`GenerationStats::drafter`]).
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
    /// The drafter used, if any; with several candidates, the one that
    /// produced most of the accepted tokens ([`GenerationStats::drafter`]).
    pub drafter: Option<String>,
    /// Statistics.
    pub stats: GenerationStats,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(rounds: u64, accepted: u64) -> DrafterStats {
        DrafterStats {
            rounds,
            accepted_tokens: accepted,
            ..DrafterStats::default()
        }
    }

    #[test]
    fn the_main_drafter_produced_most_accepted_tokens() {
        let (a, b, c) = (stats(10, 3), stats(2, 7), stats(30, 7));
        assert_eq!(main_drafter([("a", &a), ("b", &b)]), Some("b"));
        assert_eq!(
            main_drafter([("a", &a), ("b", &b), ("c", &c)]),
            Some("c"),
            "a tie goes to more rounds"
        );
        let (x, y) = (stats(5, 0), stats(5, 0));
        assert_eq!(
            main_drafter([("x", &x), ("y", &y)]),
            Some("x"),
            "then the earlier"
        );
        assert_eq!(main_drafter([]), None);
    }

    #[test]
    fn rounds_are_counted_by_length_and_position() {
        let mut d = DrafterStats::default();
        d.record_round(0, 0, 0);
        d.record_round(4, 4, 2);
        d.record_round(4, 3, 3);
        assert_eq!(
            (d.rounds, d.drafts, d.draft_tokens, d.accepted_tokens),
            (3, 2, 7, 5)
        );
        assert_eq!(d.rounds_by_draft_length, [1, 0, 0, 0, 2]);
        assert_eq!(d.accepted_per_position, [2, 2, 1, 0]);
    }
}
