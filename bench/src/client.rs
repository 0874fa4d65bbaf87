//! One streamed chat completion, timed on the client side the same way for
//! both servers: time to the first content, time to the end, the arrival of
//! every piece of text, and the speculation figures each server reports.

use std::time::Instant;

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// Sampling of a request.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Sampling {
    /// 0 is greedy.
    pub temperature: f32,
    /// Seed of the sampler.
    pub seed: u64,
}

/// What one request measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Measurement {
    /// The generated text.
    pub text: String,
    /// Generated tokens (as the server counts them).
    pub completion_tokens: u64,
    /// Prompt tokens.
    pub prompt_tokens: u64,
    /// Milliseconds to the first content.
    pub ttft_ms: f64,
    /// Milliseconds to the end of the response.
    pub e2e_ms: f64,
    /// Drafted tokens, when the server reports them.
    pub draft_tokens: Option<u64>,
    /// Accepted drafted tokens, when the server reports them.
    pub accepted_tokens: Option<u64>,
    /// Rounds that verified a draft, when the server reports them.
    pub drafts: Option<u64>,
    /// Rounds by draft length (specdec only).
    pub rounds_by_draft_length: Vec<u64>,
    /// Why generation ended (`stop`, `length`), as the server says.
    #[serde(default)]
    pub finish_reason: Option<String>,
}

impl Measurement {
    /// Milliseconds after the first content (the decoding of the rest).
    pub fn decode_ms(&self) -> f64 {
        (self.e2e_ms - self.ttft_ms).max(0.0)
    }

    /// Generated tokens counted alike on both servers: llama-server counts
    /// the end-of-generation token it sampled in `completion_tokens`,
    /// specdec does not (the benchmark sends no stop strings, so `stop`
    /// means that token).
    pub fn tokens_without_end(&self, counts_end_token: bool) -> u64 {
        let ended_by_token = self.finish_reason.as_deref() == Some("stop");
        self.completion_tokens
            .saturating_sub(u64::from(counts_end_token && ended_by_token))
    }
}

/// The system message of every benchmark request.
pub const SYSTEM_PROMPT: &str = "You are a helpful assistant.";

/// The chat request body both servers accept; `extra` adds server-specific fields.
pub fn chat_body(
    user: &str,
    max_tokens: u32,
    sampling: Sampling,
    extra: &serde_json::Map<String, Value>,
) -> Value {
    let mut body = json!({
        "model": crate::servers::MODEL_NAME,
        // A system message of its own: a chat template that adds a
        // default one when there is none (Qwen's, as llama-server applies
        // it) then gives both servers the same prompt tokens.
        "messages": [
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": user},
        ],
        "max_tokens": max_tokens,
        "temperature": sampling.temperature,
        // Plain sampling from the full distribution on both servers
        // (llama-server otherwise applies its own top-k, top-p and min-p).
        "top_p": 1.0,
        "top_k": 0,
        "min_p": 0.0,
        "seed": sampling.seed,
        "stream": true,
        "stream_options": {"include_usage": true},
    });
    if let Some(object) = body.as_object_mut() {
        for (k, v) in extra {
            object.insert(k.clone(), v.clone());
        }
    }
    body
}

/// Send `body` to `base_url`'s chat endpoint and read the stream to its end.
pub async fn chat(
    client: &reqwest::Client,
    base_url: &str,
    body: &Value,
) -> anyhow::Result<Measurement> {
    let (measurement, _) = chat_with_arrivals(client, base_url, body, |_| {}).await?;
    Ok(measurement)
}

/// [`chat`], also giving when each event that carried text arrived, in
/// order (events read together from the network arrive together).
/// `on_text` is called right after each such event with their count so far,
/// so that a caller can act while the stream goes on.
pub async fn chat_with_arrivals(
    client: &reqwest::Client,
    base_url: &str,
    body: &Value,
    mut on_text: impl FnMut(usize),
) -> anyhow::Result<(Measurement, Vec<Instant>)> {
    let started = Instant::now();
    let mut arrivals = Vec::new();
    let mut response = client
        .post(format!("{base_url}/v1/chat/completions"))
        .json(body)
        .send()
        .await
        .with_context(|| format!("POST {base_url}/v1/chat/completions"))?;
    let status = response.status();
    if !status.is_success() {
        let text = response.text().await.unwrap_or_default();
        bail!("{base_url} answered {status}: {text}");
    }
    let mut buffer = String::new();
    let mut pending = Vec::new();
    let mut text = String::new();
    let mut ttft_ms = None;
    let mut usage = Value::Null;
    let mut timings = Value::Null;
    let mut finish_reason = None;
    while let Some(chunk) = response.chunk().await? {
        pending.extend_from_slice(&chunk);
        // Only whole UTF-8 text goes to the line buffer.
        let valid = match std::str::from_utf8(&pending) {
            Ok(s) => s.len(),
            Err(e) => e.valid_up_to(),
        };
        buffer.push_str(std::str::from_utf8(&pending[..valid]).unwrap_or_default());
        pending.drain(..valid);
        while let Some(end) = buffer.find('\n') {
            let line: String = buffer.drain(..=end).collect();
            let Some(data) = line.trim().strip_prefix("data:") else {
                continue;
            };
            let data = data.trim();
            if data == "[DONE]" {
                continue;
            }
            let event: Value =
                serde_json::from_str(data).with_context(|| format!("bad event: {data}"))?;
            if let Some(error) = event.get("error") {
                bail!("{base_url} streamed an error: {error}");
            }
            let content = event
                .pointer("/choices/0/delta/content")
                .and_then(Value::as_str)
                .unwrap_or_default();
            if !content.is_empty() {
                let now = Instant::now();
                ttft_ms.get_or_insert_with(|| (now - started).as_secs_f64() * 1000.0);
                text.push_str(content);
                arrivals.push(now);
                on_text(arrivals.len());
            }
            if let Some(reason) = event
                .pointer("/choices/0/finish_reason")
                .and_then(Value::as_str)
            {
                finish_reason = Some(reason.to_string());
            }
            if event.get("usage").is_some_and(|u| !u.is_null()) {
                usage = event["usage"].clone();
            }
            if event.get("timings").is_some_and(|t| !t.is_null()) {
                timings = event["timings"].clone();
            }
        }
    }
    let e2e_ms = started.elapsed().as_secs_f64() * 1000.0;
    let count = |v: &Value, key: &str| v.get(key).and_then(Value::as_u64);
    let completion_tokens = count(&usage, "completion_tokens")
        .or_else(|| count(&timings, "predicted_n"))
        .context("the server reported no completion token count")?;
    let speculative = usage.get("speculative").cloned().unwrap_or(Value::Null);
    let (draft_tokens, accepted_tokens, drafts) = if speculative.is_object() {
        (
            count(&speculative, "draft_tokens"),
            count(&speculative, "accepted_tokens"),
            count(&speculative, "drafts"),
        )
    } else {
        (
            count(&timings, "draft_n"),
            count(&timings, "draft_n_accepted"),
            None,
        )
    };
    let rounds_by_draft_length = speculative
        .get("rounds_by_draft_length")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_u64).collect())
        .unwrap_or_default();
    let measurement = Measurement {
        text,
        completion_tokens,
        prompt_tokens: count(&usage, "prompt_tokens")
            .or_else(|| count(&timings, "prompt_n"))
            .unwrap_or(0),
        ttft_ms: ttft_ms.unwrap_or(e2e_ms),
        e2e_ms,
        draft_tokens,
        accepted_tokens,
        drafts,
        rounds_by_draft_length,
        finish_reason,
    };
    Ok((measurement, arrivals))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ended(reason: Option<&str>, tokens: u64) -> Measurement {
        Measurement {
            text: String::new(),
            completion_tokens: tokens,
            prompt_tokens: 10,
            ttft_ms: 1.0,
            e2e_ms: 2.0,
            draft_tokens: None,
            accepted_tokens: None,
            drafts: None,
            rounds_by_draft_length: Vec::new(),
            finish_reason: reason.map(str::to_string),
        }
    }

    #[test]
    fn only_a_server_that_counts_the_end_token_loses_it_and_only_at_a_stop() {
        assert_eq!(ended(Some("stop"), 43).tokens_without_end(true), 42);
        assert_eq!(ended(Some("stop"), 42).tokens_without_end(false), 42);
        // Cut at max_tokens: no end token was sampled.
        assert_eq!(ended(Some("length"), 96).tokens_without_end(true), 96);
        assert_eq!(ended(None, 0).tokens_without_end(true), 0);
    }
}
