//! The OpenAI-compatible wire format: request bodies, validated once into
//! engine requests, and the response and stream-chunk bodies.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::config::DraftParams;
use crate::engine::{ChatMessage, FinishReason, GenerationStats, Prompt};
use crate::speculative::sampling::SamplingParams;
use crate::speculative::text::MAX_STOP_BYTES;

use super::error::ApiError;

/// Tokens generated when a request gives no `max_tokens`.
pub const DEFAULT_MAX_TOKENS: usize = 256;

/// Fields of the OpenAI API that specdec does not implement. Rejected by name
/// (when set to anything but their neutral value) rather than ignored.
const UNSUPPORTED_FIELDS: &[&str] = &[
    "tools",
    "tool_choice",
    "functions",
    "function_call",
    "parallel_tool_calls",
    "response_format",
    "logit_bias",
    "top_logprobs",
    "audio",
    "modalities",
    "prediction",
    "suffix",
    "echo",
    "best_of",
    "reasoning_effort",
    "web_search_options",
];

/// `stop`: one string or several.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Stop {
    /// One stop string.
    One(String),
    /// Up to four stop strings.
    Many(Vec<String>),
}

/// `stream_options`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamOptions {
    /// Send a last chunk with `usage`.
    #[serde(default)]
    pub include_usage: bool,
}

/// The `speculative` extension.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpeculativeOptions {
    /// `false` decodes with the target alone.
    pub enabled: Option<bool>,
    /// Most drafted tokens per round.
    pub max: Option<u32>,
    /// Fewer drafted tokens than this and a round skips speculation.
    pub min: Option<u32>,
    /// Stop drafting below this drafter confidence.
    pub p_min: Option<f32>,
    /// Choose each round's draft length (up to `max`) from measured
    /// acceptance and costs; defaults to the drafter's setting, and to
    /// `false` when `max` is given.
    pub adaptive: Option<bool>,
    /// Use this registry drafter instead of the one routed by language.
    pub drafter: Option<String>,
}

/// A chat message as sent: `content` may be a string or a list of text parts.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WireMessage {
    /// `system`, `user`, `assistant` (or `developer`, treated as `system`).
    pub role: String,
    /// Text, or an array of `{type: "text", text}` parts.
    pub content: Value,
    /// Ignored name of the participant.
    #[serde(default)]
    pub name: Option<String>,
}

/// Sampling and control fields shared by both endpoints.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct CommonFields {
    /// Model name; must be the served one.
    pub model: String,
    /// Most tokens to generate.
    pub max_tokens: Option<i64>,
    /// Newer name of `max_tokens` in the chat API.
    pub max_completion_tokens: Option<i64>,
    /// Sampling temperature.
    pub temperature: Option<f32>,
    /// Nucleus sampling.
    pub top_p: Option<f32>,
    /// Top-k (extension, as llama.cpp's server).
    pub top_k: Option<i64>,
    /// Min-p (extension, as llama.cpp's server).
    pub min_p: Option<f32>,
    /// Number of choices; only 1.
    pub n: Option<i64>,
    /// Stream with server-sent events.
    pub stream: Option<bool>,
    /// Streaming options.
    pub stream_options: Option<StreamOptions>,
    /// Stop strings.
    pub stop: Option<Stop>,
    /// Random seed.
    pub seed: Option<i64>,
    /// Must be 0 when given.
    pub presence_penalty: Option<f32>,
    /// Must be 0 when given.
    pub frequency_penalty: Option<f32>,
    /// Must be false when given.
    pub logprobs: Option<Value>,
    /// End-user id (recorded nowhere).
    pub user: Option<String>,
    /// Extension: ISO 639-1 code of the input, routes to a drafter.
    pub language: Option<String>,
    /// Extension: speculation controls.
    pub speculative: Option<SpeculativeOptions>,
}

/// What both endpoints hand to the service after validation.
#[derive(Debug, Clone)]
pub struct ValidatedRequest {
    /// The input.
    pub prompt: Prompt,
    /// Text used for language detection: the last user message or the prompt.
    pub detection_text: String,
    /// Most tokens to generate.
    pub max_tokens: usize,
    /// Sampling.
    pub sampling: SamplingParams,
    /// Stop strings.
    pub stop: Vec<String>,
    /// Stream the answer.
    pub stream: bool,
    /// Send usage in the last streamed chunk.
    pub include_usage: bool,
    /// Explicit language.
    pub language: Option<String>,
    /// `speculative.enabled`, default true.
    pub speculative_enabled: bool,
    /// Draft control overrides.
    pub draft_overrides: SpeculativeOptions,
}

/// Which endpoint a body came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `/v1/chat/completions`
    Chat,
    /// `/v1/completions`
    Completions,
}

fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::InvalidRequest {
        message: message.into(),
        param: None,
    }
}

fn invalid_param(param: &str, message: impl Into<String>) -> ApiError {
    ApiError::InvalidRequest {
        message: message.into(),
        param: Some(param.to_string()),
    }
}

/// Parse and validate a request body. `served_model` is the one model name
/// this server answers to.
pub fn validate(
    endpoint: Endpoint,
    body: &[u8],
    served_model: &str,
) -> Result<ValidatedRequest, ApiError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| invalid(format!("the body is not valid JSON: {e}")))?;
    let Value::Object(mut object) = value else {
        return Err(invalid("the body must be a JSON object"));
    };
    for field in UNSUPPORTED_FIELDS {
        match object.get(*field) {
            None | Some(Value::Null) => {}
            Some(Value::Bool(false)) if *field == "echo" => {}
            Some(_) => {
                return Err(invalid_param(
                    field,
                    format!("`{field}` is not supported by this server"),
                ))
            }
        }
        object.remove(*field);
    }
    let (common, input) = match endpoint {
        Endpoint::Chat => {
            let messages = object
                .remove("messages")
                .ok_or_else(|| invalid_param("messages", "`messages` is required"))?;
            let messages = wire_messages(messages)?;
            (parse_common(object)?, Input::Chat(messages))
        }
        Endpoint::Completions => {
            let prompt = object
                .remove("prompt")
                .ok_or_else(|| invalid_param("prompt", "`prompt` is required"))?;
            (parse_common(object)?, Input::Text(prompt))
        }
    };
    if common.model != served_model {
        return Err(ApiError::ModelNotFound(common.model));
    }
    let (prompt, detection_text) = match input {
        Input::Chat(messages) => chat_prompt(messages)?,
        Input::Text(prompt) => text_prompt(prompt)?,
    };
    let max_tokens = match common.max_completion_tokens.or(common.max_tokens) {
        None => DEFAULT_MAX_TOKENS,
        Some(n) if n >= 1 => usize::try_from(n).unwrap_or(usize::MAX),
        Some(n) => {
            return Err(invalid_param(
                "max_tokens",
                format!("max_tokens must be at least 1, got {n}"),
            ))
        }
    };
    if let Some(n) = common.n {
        if n != 1 {
            return Err(invalid_param(
                "n",
                format!("only n = 1 is supported, got {n}"),
            ));
        }
    }
    for (name, value) in [
        ("presence_penalty", common.presence_penalty),
        ("frequency_penalty", common.frequency_penalty),
    ] {
        if value.is_some_and(|v| v != 0.0) {
            return Err(invalid_param(
                name,
                format!("`{name}` is not supported (only 0)"),
            ));
        }
    }
    match &common.logprobs {
        None | Some(Value::Null) | Some(Value::Bool(false)) => {}
        Some(_) => return Err(invalid_param("logprobs", "`logprobs` is not supported")),
    }
    // OpenAI's own bound; the engine's ranges are checked below.
    let temperature = common.temperature.unwrap_or(1.0);
    if !(0.0..=2.0).contains(&temperature) {
        return Err(invalid_param(
            "temperature",
            format!("temperature must be between 0 and 2, got {temperature}"),
        ));
    }
    let top_k = match common.top_k {
        None => 0,
        Some(k) if k >= 0 => usize::try_from(k).unwrap_or(usize::MAX),
        Some(k) => {
            return Err(invalid_param(
                "top_k",
                format!("top_k must be >= 0, got {k}"),
            ))
        }
    };
    // Without a seed the engine draws at random; with one, the request is
    // reproducible whatever drafting does.
    let seed = common.seed.map(|s| s as u64);
    let stop = match common.stop {
        None => Vec::new(),
        Some(Stop::One(s)) => vec![s],
        Some(Stop::Many(v)) if v.len() <= 4 => v,
        Some(Stop::Many(v)) => {
            return Err(invalid_param(
                "stop",
                format!("at most 4 stop strings, got {}", v.len()),
            ))
        }
    };
    if let Some(long) = stop.iter().find(|s| s.len() > MAX_STOP_BYTES) {
        return Err(invalid_param(
            "stop",
            format!(
                "stop strings must be at most {MAX_STOP_BYTES} bytes, got one of {}",
                long.len()
            ),
        ));
    }
    let speculative = common.speculative.unwrap_or_default();
    check_speculative(&speculative)?;
    let sampling = SamplingParams {
        temperature,
        top_k,
        top_p: common.top_p.unwrap_or(1.0),
        min_p: common.min_p.unwrap_or(0.0),
        seed,
    };
    sampling
        .validate()
        .map_err(|e| invalid_param(e.field, e.message))?;
    let stream = common.stream.unwrap_or(false);
    Ok(ValidatedRequest {
        prompt,
        detection_text,
        max_tokens,
        sampling,
        stop,
        stream,
        include_usage: stream
            && common
                .stream_options
                .as_ref()
                .is_some_and(|o| o.include_usage),
        language: common.language,
        speculative_enabled: speculative.enabled.unwrap_or(true),
        draft_overrides: speculative,
    })
}

/// The ranges of the `speculative` extension, checked whatever drafter the
/// request ends up with (even none).
fn check_speculative(options: &SpeculativeOptions) -> Result<(), ApiError> {
    let most = DraftParams::MAX_DRAFT;
    for (name, value) in [("max", options.max), ("min", options.min)] {
        if let Some(n) = value.filter(|&n| n > most) {
            return Err(invalid_param(
                &format!("speculative.{name}"),
                format!("speculative.{name} must be at most {most}, got {n}"),
            ));
        }
    }
    if let (Some(min), Some(max)) = (options.min, options.max) {
        if min > max {
            return Err(invalid_param(
                "speculative.min",
                format!("speculative.min ({min}) must not exceed speculative.max ({max})"),
            ));
        }
    }
    if let Some(p) = options.p_min {
        // Deserialised as f32: out-of-range JSON numbers arrive as infinity.
        if !(p.is_finite() && (0.0..=1.0).contains(&p)) {
            return Err(invalid_param(
                "speculative.p_min",
                "speculative.p_min must be a number between 0 and 1",
            ));
        }
    }
    Ok(())
}

/// `messages` as a list of message objects; an error names the message and
/// what is wrong in the API's terms, not the parser's.
fn wire_messages(messages: Value) -> Result<Vec<WireMessage>, ApiError> {
    let Value::Array(items) = messages else {
        return Err(invalid_param("messages", "`messages` must be an array"));
    };
    items
        .into_iter()
        .enumerate()
        .map(|(i, item)| {
            let param = format!("messages[{i}]");
            if !item.is_object() {
                return Err(invalid_param(
                    &param,
                    format!("{param} must be an object with `role` and `content`"),
                ));
            }
            serde_json::from_value(item).map_err(|e| invalid_param(&param, format!("{param}: {e}")))
        })
        .collect()
}

enum Input {
    Chat(Vec<WireMessage>),
    Text(Value),
}

/// The remaining fields, with unknown ones refused by name.
fn parse_common(object: serde_json::Map<String, Value>) -> Result<CommonFields, ApiError> {
    const KNOWN: &[&str] = &[
        "model",
        "max_tokens",
        "max_completion_tokens",
        "temperature",
        "top_p",
        "top_k",
        "min_p",
        "n",
        "stream",
        "stream_options",
        "stop",
        "seed",
        "presence_penalty",
        "frequency_penalty",
        "logprobs",
        "user",
        "language",
        "speculative",
    ];
    if let Some(unknown) = object.keys().find(|k| !KNOWN.contains(&k.as_str())) {
        return Err(invalid_param(unknown, format!("unknown field `{unknown}`")));
    }
    if !object.contains_key("model") {
        return Err(invalid_param("model", "`model` is required"));
    }
    // Shapes serde would report with this crate's type names.
    for (field, shape) in [
        ("speculative", "an object"),
        ("stream_options", "an object"),
        ("stop", "a string or an array of strings"),
    ] {
        let fits = match (object.get(field), field) {
            (None | Some(Value::Null), _) => true,
            (Some(Value::String(_)), "stop") => true,
            (Some(Value::Array(items)), "stop") => items.iter().all(Value::is_string),
            (Some(value), _) => value.is_object() && field != "stop",
        };
        if !fits {
            return Err(invalid_param(field, format!("`{field}` must be {shape}")));
        }
    }
    // Read in place, not from a copy: only a refused body pays for more.
    let body = Value::Object(object);
    CommonFields::deserialize(&body).map_err(|e| {
        // Name the field: the first that fails on its own.
        let field = body.as_object().and_then(|fields| {
            fields.iter().find(|(key, value)| {
                let alone = serde_json::json!({"model": "", *key: value});
                CommonFields::deserialize(&alone).is_err()
            })
        });
        match field {
            Some((key, _)) => invalid_param(key, format!("`{key}`: {e}")),
            None => invalid(e.to_string()),
        }
    })
}

fn message_text(content: Value) -> Result<String, ApiError> {
    match content {
        Value::String(s) => Ok(s),
        Value::Array(parts) => {
            let mut text = String::new();
            for part in parts {
                match (part.get("type").and_then(Value::as_str), part.get("text")) {
                    (Some("text"), Some(Value::String(t))) => text.push_str(t),
                    _ => {
                        return Err(invalid_param(
                            "messages",
                            "only text content parts are supported",
                        ))
                    }
                }
            }
            Ok(text)
        }
        _ => Err(invalid_param(
            "messages",
            "message content must be a string or a list of text parts",
        )),
    }
}

fn chat_prompt(messages: Vec<WireMessage>) -> Result<(Prompt, String), ApiError> {
    if messages.is_empty() {
        return Err(invalid_param("messages", "`messages` must not be empty"));
    }
    let mut out = Vec::with_capacity(messages.len());
    for m in messages {
        let role = match m.role.as_str() {
            "system" | "developer" => "system",
            "user" => "user",
            "assistant" => "assistant",
            other => {
                return Err(invalid_param(
                    "messages",
                    format!("unsupported message role `{other}`"),
                ))
            }
        };
        let content = message_text(m.content)?;
        if content.contains('\0') {
            return Err(invalid_param(
                "messages",
                "message content contains a NUL byte",
            ));
        }
        out.push(ChatMessage {
            role: role.to_string(),
            content,
        });
    }
    if !out.iter().any(|m| m.role == "user") {
        return Err(invalid_param("messages", "`messages` needs a user message"));
    }
    let detection_text = out
        .iter()
        .rev()
        .find(|m| m.role == "user")
        .map(|m| m.content.clone())
        .unwrap_or_default();
    Ok((Prompt::Chat(out), detection_text))
}

fn text_prompt(prompt: Value) -> Result<(Prompt, String), ApiError> {
    let text = match prompt {
        Value::String(s) => s,
        Value::Array(items) if items.len() == 1 && items[0].is_string() => {
            items[0].as_str().unwrap_or_default().to_string()
        }
        _ => {
            return Err(invalid_param(
                "prompt",
                "`prompt` must be a string (or a list of one string)",
            ))
        }
    };
    if text.is_empty() {
        return Err(invalid_param("prompt", "`prompt` must not be empty"));
    }
    Ok((Prompt::Text(text.clone()), text))
}

/// `usage.speculative.drafters.NAME`: what one candidate drafter did.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DrafterUsage {
    /// Rounds it was chosen for.
    pub rounds: u64,
    /// Of those, rounds that verified at least one drafted token.
    pub drafts: u64,
    /// Tokens it drafted.
    pub draft_tokens: u64,
    /// Of those, tokens the target accepted.
    pub accepted_tokens: u64,
}

/// `usage.speculative`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SpeculativeUsage {
    /// Drafter used, `null` for plain decoding. Where the language has
    /// several candidate drafters, the one whose drafts produced most of the
    /// accepted tokens (on a tie, the one used for more rounds, then the
    /// first in registry order).
    pub drafter: Option<String>,
    /// Routed language.
    pub language: String,
    /// Rounds that verified at least one drafted token.
    pub drafts: u64,
    /// Tokens drafted.
    pub draft_tokens: u64,
    /// Drafted tokens accepted.
    pub accepted_tokens: u64,
    /// accepted / drafted.
    pub acceptance_rate: f64,
    /// 1 + accepted / drafts.
    pub mean_accepted_length: f64,
    /// Decoding rounds by draft length (index 0: rounds without a draft).
    #[serde(default)]
    pub rounds_by_draft_length: Vec<u64>,
    /// Of `draft_tokens`, those proposed by prompt lookup.
    #[serde(default)]
    pub lookup_draft_tokens: u64,
    /// Of `accepted_tokens`, those proposed by prompt lookup.
    #[serde(default)]
    pub lookup_accepted_tokens: u64,
    /// Per candidate drafter, by name: what it did in the rounds it was
    /// chosen for (one entry with a single drafter, none without).
    #[serde(default)]
    pub drafters: BTreeMap<String, DrafterUsage>,
}

/// `usage`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Usage {
    /// Prompt tokens.
    pub prompt_tokens: usize,
    /// Generated tokens.
    pub completion_tokens: usize,
    /// Sum of both.
    pub total_tokens: usize,
    /// Speculation figures.
    pub speculative: SpeculativeUsage,
}

impl Usage {
    /// Usage of a finished generation.
    pub fn new(stats: &GenerationStats, drafter: Option<String>, language: String) -> Self {
        Self {
            prompt_tokens: stats.prompt_tokens,
            completion_tokens: stats.completion_tokens,
            total_tokens: stats.prompt_tokens + stats.completion_tokens,
            speculative: SpeculativeUsage {
                drafter,
                language,
                drafts: stats.drafts,
                draft_tokens: stats.draft_tokens,
                accepted_tokens: stats.accepted_tokens,
                acceptance_rate: stats.acceptance_rate,
                mean_accepted_length: stats.mean_accepted_length,
                rounds_by_draft_length: stats.rounds_by_draft_length.clone(),
                lookup_draft_tokens: stats.lookup_draft_tokens,
                lookup_accepted_tokens: stats.lookup_accepted_tokens,
                drafters: stats
                    .drafters
                    .iter()
                    .map(|(name, d)| {
                        let usage = DrafterUsage {
                            rounds: d.rounds,
                            drafts: d.drafts,
                            draft_tokens: d.draft_tokens,
                            accepted_tokens: d.accepted_tokens,
                        };
                        (name.clone(), usage)
                    })
                    .collect(),
            },
        }
    }
}

/// OpenAI's name of a finish reason.
pub fn finish_reason(reason: FinishReason) -> &'static str {
    match reason {
        FinishReason::Stop => "stop",
        FinishReason::Length => "length",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MODEL: &str = "m";

    fn chat(body: &str) -> Result<ValidatedRequest, ApiError> {
        validate(Endpoint::Chat, body.as_bytes(), MODEL)
    }

    #[test]
    fn minimal_chat_request_gets_defaults() {
        let r = chat(r#"{"model":"m","messages":[{"role":"user","content":"Hallo"}]}"#).unwrap();
        assert_eq!(r.max_tokens, DEFAULT_MAX_TOKENS);
        assert_eq!(r.sampling.temperature, 1.0);
        assert!(!r.stream && r.speculative_enabled);
        assert_eq!(r.detection_text, "Hallo");
    }

    #[test]
    fn a_seed_is_passed_on_and_none_is_not_invented() {
        let body = r#"{"model":"m","messages":[{"role":"user","content":"Hallo"}]}"#;
        assert_eq!(chat(body).unwrap().sampling.seed, None);
        let seeded = r#"{"model":"m","seed":7,"messages":[{"role":"user","content":"Hallo"}]}"#;
        assert_eq!(chat(seeded).unwrap().sampling.seed, Some(7));
    }

    #[test]
    fn extensions_and_text_parts_are_read() {
        let r = chat(
            r#"{"model":"m","stream":true,"stream_options":{"include_usage":true},
                "language":"de","speculative":{"enabled":false,"max":3},
                "messages":[{"role":"system","content":"be brief"},
                            {"role":"user","content":[{"type":"text","text":"a"},{"type":"text","text":"b"}]}]}"#,
        )
        .unwrap();
        assert!(r.include_usage && !r.speculative_enabled);
        assert_eq!(r.language.as_deref(), Some("de"));
        assert_eq!(r.draft_overrides.max, Some(3));
        assert_eq!(r.detection_text, "ab");
    }

    #[test]
    fn each_bad_field_is_named() {
        let long = "x".repeat(MAX_STOP_BYTES + 1);
        let too_long_stop = format!(
            r#"{{"model":"m","messages":[{{"role":"user","content":"x"}}],"stop":"{long}"}}"#
        );
        let too_long_stop_in_a_list = format!(
            r#"{{"model":"m","messages":[{{"role":"user","content":"x"}}],"stop":["a","{long}"]}}"#
        );
        let cases: [(&str, &str); 8] = [
            (r#"{"model":"m","messages":[],"max_tokens":0}"#, "messages"),
            (
                r#"{"model":"m","messages":[{"role":"user","content":"x"}],"max_tokens":0}"#,
                "max_tokens",
            ),
            (
                r#"{"model":"m","messages":[{"role":"user","content":"x"}],"tools":[]}"#,
                "tools",
            ),
            (
                r#"{"model":"m","messages":[{"role":"user","content":"x"}],"nope":1}"#,
                "nope",
            ),
            (
                r#"{"model":"m","messages":[{"role":"user","content":"x"}],"n":3}"#,
                "n",
            ),
            (
                r#"{"model":"m","messages":[{"role":"user","content":"x"}],"top_p":0}"#,
                "top_p",
            ),
            (&too_long_stop, "stop"),
            (&too_long_stop_in_a_list, "stop"),
        ];
        for (body, param) in cases {
            match chat(body) {
                Err(ApiError::InvalidRequest { param: Some(p), .. }) => {
                    assert_eq!(p, param, "{body}")
                }
                other => panic!("{body}: {other:?}"),
            }
        }
    }

    #[test]
    fn out_of_range_and_misshapen_values_are_refused_by_name() {
        let with = |extra: &str| {
            format!(r#"{{"model":"m","messages":[{{"role":"user","content":"x"}}],{extra}}}"#)
        };
        let cases = [
            (with(r#""speculative":{"p_min":-1}"#), "speculative.p_min"),
            (with(r#""speculative":{"p_min":1.5}"#), "speculative.p_min"),
            (
                with(r#""speculative":{"p_min":1e308}"#),
                "speculative.p_min",
            ),
            (
                with(r#""speculative":{"p_min":9223372036854775808}"#),
                "speculative.p_min",
            ),
            (
                with(r#""speculative":{"min":100,"max":2}"#),
                "speculative.min",
            ),
            (
                with(r#""speculative":{"min":2147483648}"#),
                "speculative.min",
            ),
            (with(r#""speculative":{"max":65}"#), "speculative.max"),
            (with(r#""speculative":5"#), "speculative"),
            (with(r#""speculative":{"maximum":5}"#), "speculative"),
            (with(r#""stream_options":[]"#), "stream_options"),
            (with(r#""stop":5"#), "stop"),
            (with(r#""stop":["a",1]"#), "stop"),
            (
                r#"{"model":"m","messages":[[]]}"#.to_string(),
                "messages[0]",
            ),
            (
                r#"{"model":"m","messages":[{"role":"user","content":"x"},{"content":"y"}]}"#
                    .to_string(),
                "messages[1]",
            ),
            (r#"{"model":"m","messages":{}}"#.to_string(), "messages"),
            (with(r#""temperature":"hot""#), "temperature"),
            (with(r#""max_tokens":1.5"#), "max_tokens"),
        ];
        for (body, param) in cases {
            match chat(&body) {
                Err(ApiError::InvalidRequest {
                    param: Some(p),
                    message,
                }) => {
                    assert_eq!(p, param, "{body}");
                    // No type name of this crate reaches the client.
                    for internal in ["struct", "enum", "WireMessage", "SpeculativeOptions"] {
                        assert!(!message.contains(internal), "{body}: {message}");
                    }
                }
                other => panic!("{body}: {other:?}"),
            }
        }
        // In range, they pass.
        assert!(chat(&with(r#""speculative":{"p_min":0.5,"min":1,"max":4}"#)).is_ok());
    }

    #[test]
    fn a_stop_string_of_the_largest_size_is_accepted() {
        let longest = "x".repeat(MAX_STOP_BYTES);
        let body = format!(
            r#"{{"model":"m","messages":[{{"role":"user","content":"x"}}],"stop":["{longest}"]}}"#
        );
        assert_eq!(chat(&body).unwrap().stop, vec![longest]);
    }

    #[test]
    fn unknown_model_is_not_found() {
        let e =
            chat(r#"{"model":"other","messages":[{"role":"user","content":"x"}]}"#).unwrap_err();
        assert!(matches!(e, ApiError::ModelNotFound(_)));
        assert_eq!(e.status(), warp::http::StatusCode::NOT_FOUND);
    }
}
