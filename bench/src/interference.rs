//! Prefill interference: the inter-token latency of a streamed request while
//! another request's long prompt is being read. The request streams alone
//! first (the baseline); then it streams again, and once it has received its
//! first [`LEAD_EVENTS`] pieces of text, a second request with a prompt of
//! about 3,000 tokens arrives. Its prefill lasts from sending it to its first
//! text; the stream's gaps that overlap that window are compared with the
//! baseline's. The limit: the p95 gap during the prefill within
//! [`P95_RATIO_LIMIT`] times the p95 gap alone.
//!
//! Gaps are measured between streamed events that carried text, not between
//! tokens: specdec sends all the tokens of a speculative round in one event,
//! and neither server says how many tokens an event holds. Each stream's
//! mean tokens per event (its generated tokens over its text events) is
//! reported beside the gaps.

use std::time::Instant;

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::client::{chat, chat_with_arrivals};
use crate::corpus::Paragraph;
use crate::report::percentile;
use crate::servers::Server;

/// Text events the stream receives before the long prompt is sent.
pub const LEAD_EVENTS: usize = 4;
/// Tokens the long request generates: only its prefill matters.
pub const LONG_MAX_TOKENS: u32 = 8;
/// Most tokens the stream generates unless `--max-tokens` says otherwise.
pub const DEFAULT_STREAM_TOKENS: u32 = 96;
/// Size of the long prompt, in tokens, unless `--long-prompt-tokens` says otherwise.
pub const DEFAULT_LONG_PROMPT_TOKENS: u32 = 3000;
/// The limit on the p95 gap during the prefill over the p95 gap alone.
pub const P95_RATIO_LIMIT: f64 = 2.0;
/// Parallel slots of the servers in this measurement: the stream and the long prompt.
pub const SLOTS: usize = 2;
/// Smallest context per slot in this measurement.
pub const MIN_CONTEXT: u32 = 4096;
/// Characters per token assumed when building the long prompt from English
/// prose. The target's tokenizer gives 4.2 to 5.2 on the benchmark's English
/// outputs; the Debian Reference's technical text is denser, so a lower
/// figure, and the prompt's real size is the count the server reports.
const CHARS_PER_TOKEN: usize = 4;
/// What the long prompt asks before its text.
const LONG_PROMPT_INSTRUCTION: &str = "Summarize the following text in one sentence.";

/// Context per slot for a long prompt of `long_prompt_tokens`: at least the
/// `requested` context and [`MIN_CONTEXT`], with room for a prompt a quarter
/// longer than estimated, the chat template and the answer.
pub fn context_for(requested: u32, long_prompt_tokens: u32) -> u32 {
    let room = long_prompt_tokens
        .saturating_add(long_prompt_tokens / 4)
        .saturating_add(256);
    requested.max(MIN_CONTEXT).max(room)
}

/// The long prompt: an instruction, then the English originals of
/// `paragraphs` joined by blank lines, repeated in order until about
/// `tokens` tokens (estimated from the characters).
pub fn long_prompt(paragraphs: &[Paragraph], tokens: u32) -> anyhow::Result<String> {
    let texts: Vec<&str> = paragraphs
        .iter()
        .map(|p| p.reference.as_str())
        .filter(|text| !text.trim().is_empty())
        .collect();
    if texts.is_empty() {
        bail!("no English paragraph to build the long prompt from");
    }
    let wanted_chars = tokens as usize * CHARS_PER_TOKEN;
    let mut prompt = String::from(LONG_PROMPT_INSTRUCTION);
    let mut chars = prompt.chars().count();
    for text in texts.iter().cycle() {
        if chars >= wanted_chars {
            break;
        }
        prompt.push_str("\n\n");
        prompt.push_str(text);
        chars += 2 + text.chars().count();
    }
    Ok(prompt)
}

/// The paragraph whose translation streams: the one with the longest
/// English original, so that the answer lasts.
pub fn stream_paragraph(paragraphs: &[Paragraph]) -> Option<&Paragraph> {
    paragraphs
        .iter()
        .max_by_key(|p| p.reference.chars().count())
}

/// Gaps between consecutive arrivals, in their order.
pub fn gaps_ms(arrivals_ms: &[f64]) -> Vec<f64> {
    arrivals_ms.windows(2).map(|w| w[1] - w[0]).collect()
}

/// The gaps between consecutive arrivals that overlap `window_ms` (start,
/// end): a gap counts when it ends after the window starts and begins before
/// the window ends. A stall over the whole window is one gap that counts,
/// though no text arrived inside the window.
pub fn gaps_overlapping_ms(arrivals_ms: &[f64], window_ms: (f64, f64)) -> Vec<f64> {
    let (start, end) = window_ms;
    arrivals_ms
        .windows(2)
        .filter(|w| w[1] > start && w[0] < end)
        .map(|w| w[1] - w[0])
        .collect()
}

/// Percentiles of a set of gaps, milliseconds (0 without gaps).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GapStats {
    /// How many gaps.
    pub gaps: usize,
    /// Median gap.
    pub p50_ms: f64,
    /// 95th percentile gap (nearest rank).
    pub p95_ms: f64,
    /// Longest gap.
    pub max_ms: f64,
}

impl GapStats {
    /// The figures of `gaps_ms`.
    pub fn of(gaps_ms: &[f64]) -> GapStats {
        GapStats {
            gaps: gaps_ms.len(),
            p50_ms: percentile(gaps_ms, 50.0),
            p95_ms: percentile(gaps_ms, 95.0),
            max_ms: gaps_ms.iter().copied().fold(0.0, f64::max),
        }
    }
}

/// One streamed request as this measurement keeps it.
#[derive(Debug, Clone, PartialEq)]
pub struct TimedStream {
    /// When each event with text arrived, ms after the request was sent.
    pub arrivals_ms: Vec<f64>,
    /// Tokens generated, as the server counts them.
    pub tokens: u64,
}

impl TimedStream {
    /// Mean tokens per text event (0 without events).
    pub fn tokens_per_event(&self) -> f64 {
        if self.arrivals_ms.is_empty() {
            0.0
        } else {
            self.tokens as f64 / self.arrivals_ms.len() as f64
        }
    }
}

/// The measurement of one server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PrefillInterference {
    /// Server configuration.
    pub server: String,
    /// The stream's gaps alone.
    pub baseline: GapStats,
    /// The stream's gaps that overlap the long prompt's prefill.
    pub during_prefill: GapStats,
    /// `during_prefill.p95_ms / baseline.p95_ms`; none without gaps on either side.
    pub p95_ratio: Option<f64>,
    /// Whether the ratio is within [`P95_RATIO_LIMIT`]; none without a ratio.
    pub within_limit: Option<bool>,
    /// Seconds from sending the long request to its first text.
    pub prefill_s: f64,
    /// Prompt tokens of the long request, as the server counts them.
    pub long_prompt_tokens: u64,
    /// Mean tokens per text event of the stream alone.
    pub baseline_tokens_per_event: f64,
    /// Mean tokens per text event of the stream beside the long prompt.
    pub stream_tokens_per_event: f64,
    /// Whether the stream was still going when the prefill ended; if not,
    /// every gap of the stream after the long request was sent is in the window.
    pub stream_outlasted_prefill: bool,
    /// The prefill, ms after the stream's request was sent (start, end).
    pub window_ms: (f64, f64),
    /// Arrivals of the stream's text alone, ms after its request was sent.
    pub baseline_arrivals_ms: Vec<f64>,
    /// Arrivals of the stream's text beside the long prompt, ms after its
    /// request was sent.
    pub stream_arrivals_ms: Vec<f64>,
}

impl PrefillInterference {
    /// The figures of `server` from the stream `alone`, the stream `beside`
    /// the long prompt, and the long prompt's prefill `window_ms` on the
    /// time line of `beside`.
    pub fn new(
        server: &str,
        alone: &TimedStream,
        beside: &TimedStream,
        window_ms: (f64, f64),
        long_prompt_tokens: u64,
    ) -> PrefillInterference {
        let baseline = GapStats::of(&gaps_ms(&alone.arrivals_ms));
        let during_prefill = GapStats::of(&gaps_overlapping_ms(&beside.arrivals_ms, window_ms));
        let p95_ratio = (baseline.gaps > 0 && during_prefill.gaps > 0 && baseline.p95_ms > 0.0)
            .then(|| during_prefill.p95_ms / baseline.p95_ms);
        PrefillInterference {
            server: server.into(),
            within_limit: p95_ratio.map(|r| r <= P95_RATIO_LIMIT),
            p95_ratio,
            baseline,
            during_prefill,
            prefill_s: (window_ms.1 - window_ms.0) / 1000.0,
            long_prompt_tokens,
            baseline_tokens_per_event: alone.tokens_per_event(),
            stream_tokens_per_event: beside.tokens_per_event(),
            stream_outlasted_prefill: beside.arrivals_ms.last().is_some_and(|&t| t >= window_ms.1),
            window_ms,
            baseline_arrivals_ms: alone.arrivals_ms.clone(),
            stream_arrivals_ms: beside.arrivals_ms.clone(),
        }
    }
}

/// Milliseconds from `origin` to each of `instants`.
fn ms_since(origin: Instant, instants: &[Instant]) -> Vec<f64> {
    instants
        .iter()
        .map(|&t| t.saturating_duration_since(origin).as_secs_f64() * 1000.0)
        .collect()
}

/// Measure `server` (`name` in the report): `stream_body` alone, then again
/// with `long_body` sent once the stream has received [`LEAD_EVENTS`] events
/// with text.
pub async fn measure(
    client: &reqwest::Client,
    server: &Server,
    name: &str,
    stream_body: &Value,
    long_body: &Value,
) -> anyhow::Result<PrefillInterference> {
    let url = &server.base_url;
    let sent = Instant::now();
    let (measurement, arrivals) = chat_with_arrivals(client, url, stream_body, |_| {})
        .await
        .with_context(|| format!("the stream alone on {name}:\n{}", server.log_tail()))?;
    let alone = TimedStream {
        arrivals_ms: ms_since(sent, &arrivals),
        tokens: measurement.completion_tokens,
    };

    let (lead_sender, lead_received) = tokio::sync::oneshot::channel();
    let mut lead_sender = Some(lead_sender);
    let stream_sent = Instant::now();
    let stream = {
        let client = client.clone();
        let url = url.clone();
        let body = stream_body.clone();
        tokio::spawn(async move {
            chat_with_arrivals(&client, &url, &body, |events| {
                if events == LEAD_EVENTS {
                    if let Some(sender) = lead_sender.take() {
                        let _ = sender.send(());
                    }
                }
            })
            .await
        })
    };
    if lead_received.await.is_err() {
        // The stream ended, or failed, before its lead.
        stream
            .await
            .context("the stream panicked")?
            .with_context(|| format!("the stream on {name}:\n{}", server.log_tail()))?;
        bail!("the stream on {name} ended after fewer than {LEAD_EVENTS} events with text");
    }
    let long_sent = Instant::now();
    let long = match chat(client, url, long_body).await {
        Ok(long) => long,
        Err(e) => {
            stream.abort();
            return Err(e.context(format!("the long prompt on {name}:\n{}", server.log_tail())));
        }
    };
    let (measurement, arrivals) =
        stream
            .await
            .context("the stream panicked")?
            .with_context(|| {
                format!(
                    "the stream beside the long prompt on {name}:\n{}",
                    server.log_tail()
                )
            })?;
    let beside = TimedStream {
        arrivals_ms: ms_since(stream_sent, &arrivals),
        tokens: measurement.completion_tokens,
    };
    let start_ms = long_sent
        .saturating_duration_since(stream_sent)
        .as_secs_f64()
        * 1000.0;
    Ok(PrefillInterference::new(
        name,
        &alone,
        &beside,
        (start_ms, start_ms + long.ttft_ms),
        long.prompt_tokens,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paragraph(reference: &str) -> Paragraph {
        Paragraph {
            language: "de".into(),
            iso639_1: "de".into(),
            source: "Quelle".into(),
            reference: reference.into(),
            origin: "ch01.de.html#0".into(),
        }
    }

    #[test]
    fn gaps_overlapping_the_window_include_those_across_its_edges() {
        // Text every 10 ms, a 1 s stall, then every 10 ms again.
        let arrivals = [0.0, 10.0, 20.0, 30.0, 1030.0, 1040.0, 1050.0];
        assert_eq!(gaps_ms(&arrivals), [10.0, 10.0, 10.0, 1000.0, 10.0, 10.0]);
        // The window opens inside the gap 20..30 and closes inside 1030..1040:
        // those two count, and so does the stall between them; 0..20 ended
        // before and 1040..1050 began after.
        assert_eq!(
            gaps_overlapping_ms(&arrivals, (25.0, 1035.0)),
            [10.0, 1000.0, 10.0]
        );
        // A gap that ends exactly as the window opens, or begins exactly as
        // it closes, is outside it.
        assert_eq!(gaps_overlapping_ms(&arrivals, (30.0, 1030.0)), [1000.0]);
    }

    #[test]
    fn a_stall_over_the_whole_window_is_one_gap_in_it() {
        // No text arrives during the prefill (25..500): counting arrivals
        // inside the window would find nothing wrong.
        let arrivals = [0.0, 10.0, 20.0, 520.0, 530.0];
        assert_eq!(gaps_overlapping_ms(&arrivals, (25.0, 500.0)), [500.0]);
        assert!(gaps_overlapping_ms(&arrivals, (600.0, 700.0)).is_empty());
        assert!(gaps_overlapping_ms(&[5.0], (0.0, 10.0)).is_empty());
    }

    #[test]
    fn figures_compare_the_window_with_the_stream_alone() {
        let alone = TimedStream {
            // Twenty gaps: 19 of 10 ms and one of 30 ms, so the p95 is 10 ms.
            arrivals_ms: (0..20)
                .map(|i| f64::from(i) * 10.0)
                .chain([220.0])
                .collect(),
            tokens: 42,
        };
        // Beside the long prompt: 10 ms gaps, then 40 ms ones during the
        // prefill (100..300), then 10 ms again.
        let mut arrivals = vec![0.0, 10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0, 80.0, 90.0];
        arrivals.extend([140.0, 180.0, 220.0, 260.0, 300.0]);
        arrivals.extend([310.0, 320.0, 330.0]);
        let beside = TimedStream {
            arrivals_ms: arrivals,
            tokens: 36,
        };
        let figures = PrefillInterference::new("specdec", &alone, &beside, (100.0, 300.0), 3012);
        assert_eq!(figures.baseline.gaps, 20);
        assert_eq!(figures.baseline.p50_ms, 10.0);
        assert_eq!(figures.baseline.p95_ms, 10.0);
        assert_eq!(figures.baseline.max_ms, 30.0);
        // 90..140 overlaps the window's start, 260..300 ends at its end;
        // 300..310 begins as it closes and is left out.
        assert_eq!(figures.during_prefill.gaps, 5);
        assert_eq!(figures.during_prefill.p50_ms, 40.0);
        assert_eq!(figures.during_prefill.p95_ms, 50.0);
        assert_eq!(figures.during_prefill.max_ms, 50.0);
        assert_eq!(figures.p95_ratio, Some(5.0));
        assert_eq!(figures.within_limit, Some(false));
        assert_eq!(figures.prefill_s, 0.2);
        assert_eq!(figures.long_prompt_tokens, 3012);
        assert_eq!(figures.baseline_tokens_per_event, 2.0);
        assert_eq!(figures.stream_tokens_per_event, 2.0);
        assert!(figures.stream_outlasted_prefill);

        // The same stream against a slower baseline is within the limit.
        let slow_alone = TimedStream {
            arrivals_ms: vec![0.0, 30.0, 60.0],
            tokens: 3,
        };
        let figures = PrefillInterference::new("specdec", &slow_alone, &beside, (100.0, 300.0), 0);
        assert_eq!(figures.p95_ratio, Some(50.0 / 30.0));
        assert_eq!(figures.within_limit, Some(true));
    }

    #[test]
    fn without_gaps_there_is_no_ratio() {
        let alone = TimedStream {
            arrivals_ms: vec![0.0, 10.0, 20.0],
            tokens: 3,
        };
        // The stream ended before the long prompt was sent.
        let early = TimedStream {
            arrivals_ms: vec![0.0, 10.0],
            tokens: 2,
        };
        let figures = PrefillInterference::new("llama-server", &alone, &early, (50.0, 90.0), 10);
        assert_eq!(figures.during_prefill, GapStats::of(&[]));
        assert_eq!(figures.during_prefill.gaps, 0);
        assert_eq!(figures.p95_ratio, None);
        assert_eq!(figures.within_limit, None);
        assert!(!figures.stream_outlasted_prefill);
        let silent = TimedStream {
            arrivals_ms: vec![],
            tokens: 0,
        };
        assert_eq!(silent.tokens_per_event(), 0.0);
        let figures = PrefillInterference::new("llama-server", &silent, &alone, (5.0, 15.0), 10);
        assert_eq!(figures.p95_ratio, None, "no baseline");
    }

    #[test]
    fn the_long_prompt_repeats_the_english_paragraphs_to_its_size() {
        let paragraphs = [
            paragraph("First paragraph."),
            paragraph("  "),
            paragraph("Second one."),
        ];
        let prompt = long_prompt(&paragraphs, 20).unwrap();
        assert!(prompt.starts_with(LONG_PROMPT_INSTRUCTION));
        let chars = prompt.chars().count();
        assert!(
            (80..80 + "\n\nFirst paragraph.".len()).contains(&chars),
            "{chars} characters for 20 tokens"
        );
        assert!(
            prompt.contains("First paragraph.\n\nSecond one.\n\nFirst paragraph."),
            "in order, repeated, blank ones left out: {prompt}"
        );
        assert!(long_prompt(&[paragraph("")], 20).is_err());
        assert!(long_prompt(&[], 20).is_err());
    }

    #[test]
    fn the_context_holds_the_long_prompt() {
        assert_eq!(context_for(2048, DEFAULT_LONG_PROMPT_TOKENS), MIN_CONTEXT);
        assert_eq!(context_for(8192, DEFAULT_LONG_PROMPT_TOKENS), 8192);
        assert_eq!(context_for(2048, 6000), 6000 + 1500 + 256);
    }

    #[test]
    fn the_stream_translates_the_longest_paragraph() {
        let paragraphs = [
            paragraph("Short."),
            paragraph("The longest one."),
            paragraph("Mid one."),
        ];
        assert_eq!(
            stream_paragraph(&paragraphs).map(|p| p.reference.as_str()),
            Some("The longest one.")
        );
        assert!(stream_paragraph(&[]).is_none());
    }
}
