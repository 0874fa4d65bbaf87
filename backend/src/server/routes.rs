//! The warp routes and their handlers. Every handler answers with a response
//! (errors included, through [`error::reply`]), so the status mapping lives in
//! one place.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Buf, Bytes};
use futures_util::stream::{self, Stream, StreamExt};
use rand::Rng;
use serde_json::{json, Value};
use warp::http::header::{HeaderMap, AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE};
use warp::http::StatusCode;
use warp::reply::Response;
use warp::{Filter, Rejection, Reply};

use super::auth::ApiKeys;
use super::error::{self, ApiError};
use super::listener::HttpLimits;
use super::openai::{self, Endpoint, Usage, ValidatedRequest};
use super::service::{Generation, Service, Step};

/// Largest accepted request body.
pub const MAX_BODY_BYTES: u64 = 4 << 20;

/// All routes of the server.
pub fn routes(
    service: Arc<Service>,
    limits: HttpLimits,
    keys: ApiKeys,
) -> impl Filter<Extract = (Response,), Error = Infallible> + Clone {
    // Checked before the body is read: an unknown client costs nothing.
    let authorized = warp::header::headers_cloned()
        .and_then(move |headers: HeaderMap| {
            let checked = keys
                .check(headers.get(AUTHORIZATION).map(|v| v.as_bytes()))
                .map_err(warp::reject::custom);
            async move { checked }
        })
        .untuple_one();
    let with_service = {
        let service = Arc::clone(&service);
        warp::any().map(move || Arc::clone(&service))
    };
    let healthz = warp::path!("healthz")
        .and(warp::get())
        .and(with_service.clone())
        .map(|service: Arc<Service>| match service.liveness() {
            Ok(()) => warp::reply::with_status("ok", StatusCode::OK).into_response(),
            Err(e) => error::reply(&e),
        });
    let readyz = warp::path!("readyz")
        .and(warp::get())
        .and(with_service.clone())
        .map(|service: Arc<Service>| match service.readiness() {
            Ok(_) => warp::reply::with_status("ready", StatusCode::OK).into_response(),
            Err(e) => error::reply(&e),
        });
    let metrics = warp::path!("metrics")
        .and(warp::get())
        .and(with_service.clone())
        .map(|service: Arc<Service>| {
            warp::reply::with_header(
                service.render_metrics(),
                "content-type",
                "text/plain; version=0.0.4",
            )
            .into_response()
        });
    let models = warp::path!("v1" / "models")
        .and(warp::get())
        .and(authorized.clone())
        .and(with_service.clone())
        .map(|service: Arc<Service>| {
            warp::reply::json(&json!({
                "object": "list",
                "data": [{
                    "id": service.model_name(),
                    "object": "model",
                    "created": unix_time(),
                    "owned_by": "specdec",
                }],
            }))
            .into_response()
        });
    let body = json_body(limits.read_timeout);
    let chat = warp::path!("v1" / "chat" / "completions")
        .and(warp::post())
        .and(authorized.clone())
        .and(with_service.clone())
        .and(body.clone())
        .then(|service, body| generate(service, Endpoint::Chat, body));
    let completions = warp::path!("v1" / "completions")
        .and(warp::post())
        .and(authorized)
        .and(with_service)
        .and(body)
        .then(|service, body| generate(service, Endpoint::Completions, body));
    healthz
        .or(readyz)
        .unify()
        .or(metrics)
        .unify()
        .or(models)
        .unify()
        .or(chat)
        .unify()
        .or(completions)
        .unify()
        .recover(|rejection: Rejection| async move { Ok::<_, Infallible>(rejected(rejection)) })
        .unify()
}

/// The body of a generation request: declared as JSON (415 otherwise), at
/// most [`MAX_BODY_BYTES`] whether its length is announced or it arrives in
/// chunks (413 past it), and whole within `read_timeout` (408 otherwise).
fn json_body(read_timeout: Duration) -> impl Filter<Extract = (Bytes,), Error = Rejection> + Clone {
    warp::header::headers_cloned()
        .and(warp::body::stream())
        .and_then(move |headers: HeaderMap, body| async move {
            check_json_content_type(&headers)?;
            let announced = headers
                .get(CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
            if announced.is_some_and(|n| n > MAX_BODY_BYTES) {
                return Err(warp::reject::custom(ApiError::PayloadTooLarge));
            }
            tokio::time::timeout(read_timeout, read_limited(body))
                .await
                .unwrap_or(Err(ApiError::BodyTimeout(read_timeout.as_secs())))
                .map_err(warp::reject::custom)
        })
}

/// `application/json`, with parameters or not, in any letter case.
fn check_json_content_type(headers: &HeaderMap) -> Result<(), Rejection> {
    let declared = headers.get(CONTENT_TYPE).map(|v| v.to_str().unwrap_or("?"));
    let is_json = declared.is_some_and(|v| {
        v.split(';')
            .next()
            .is_some_and(|media| media.trim().eq_ignore_ascii_case("application/json"))
    });
    if is_json {
        return Ok(());
    }
    let got = match declared {
        Some(v) => format!(" (got `{}`)", v.chars().take(100).collect::<String>()),
        None => " (got none)".to_string(),
    };
    Err(warp::reject::custom(ApiError::UnsupportedMediaType(got)))
}

/// Collect a body of at most [`MAX_BODY_BYTES`]. Past that, the rest is
/// read and dropped (up to as much again), so that the client, still
/// sending, receives the 413 instead of a connection reset.
async fn read_limited(
    body: impl Stream<Item = Result<impl Buf, warp::Error>>,
) -> Result<Bytes, ApiError> {
    let mut body = std::pin::pin!(body);
    let mut collected = Vec::new();
    let mut received = 0u64;
    while let Some(chunk) = body.next().await {
        let mut chunk = chunk.map_err(|_| ApiError::InvalidRequest {
            message: "the request body could not be read".into(),
            param: None,
        })?;
        received += chunk.remaining() as u64;
        if received > 2 * MAX_BODY_BYTES {
            break;
        }
        if received <= MAX_BODY_BYTES {
            collected.extend_from_slice(&chunk.copy_to_bytes(chunk.remaining()));
        }
    }
    if received > MAX_BODY_BYTES {
        return Err(ApiError::PayloadTooLarge);
    }
    Ok(Bytes::from(collected))
}

/// Map warp's own rejections (unknown path, wrong method) and ours.
fn rejected(rejection: Rejection) -> Response {
    let e = if rejection.is_not_found() {
        ApiError::NotFound
    } else if let Some(e) = rejection.find::<ApiError>() {
        e.clone()
    } else if rejection.find::<warp::reject::MethodNotAllowed>().is_some() {
        ApiError::MethodNotAllowed
    } else if rejection.find::<warp::reject::PayloadTooLarge>().is_some() {
        ApiError::PayloadTooLarge
    } else {
        // Never a debug string of warp's types in a client's error.
        tracing::debug!(?rejection, "request refused");
        ApiError::InvalidRequest {
            message: "the request is malformed".into(),
            param: None,
        }
    };
    error::reply(&e)
}

fn unix_time() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn request_id(endpoint: Endpoint) -> String {
    let prefix = match endpoint {
        Endpoint::Chat => "chatcmpl",
        Endpoint::Completions => "cmpl",
    };
    let n: u128 = rand::thread_rng().gen();
    format!("{prefix}-{:024x}", n & ((1u128 << 96) - 1))
}

async fn generate(service: Arc<Service>, endpoint: Endpoint, body: Bytes) -> Response {
    let response = match openai::validate(endpoint, &body, service.model_name()) {
        Err(e) => error::reply(&e),
        Ok(request) if request.stream => stream(&service, endpoint, request).await,
        Ok(request) => complete(&service, endpoint, request).await,
    };
    service.metrics.record_status(response.status().as_u16());
    response
}

/// A whole (non-streamed) answer.
async fn complete(
    service: &Arc<Service>,
    endpoint: Endpoint,
    request: ValidatedRequest,
) -> Response {
    let mut generation = match service.start(request_id(endpoint), request) {
        Ok(g) => g,
        Err(e) => return error::reply(&e),
    };
    let mut text = String::new();
    let (reason, stats) = loop {
        match generation.next().await {
            Ok(Step::Text(t)) => text.push_str(&t),
            Ok(Step::Finished { reason, stats }) => break (reason, stats),
            Err(e) => return error::reply(&e),
        }
    };
    let usage = Usage::new(
        &stats,
        generation.drafter.clone(),
        generation.language.clone(),
    );
    let id = generation.id.clone();
    let model = service.model_name();
    let finish = openai::finish_reason(reason);
    let body = match endpoint {
        Endpoint::Chat => json!({
            "id": id,
            "object": "chat.completion",
            "created": unix_time(),
            "model": model,
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": finish,
                "logprobs": null,
            }],
            "usage": usage,
        }),
        Endpoint::Completions => json!({
            "id": id,
            "object": "text_completion",
            "created": unix_time(),
            "model": model,
            "choices": [{
                "index": 0,
                "text": text,
                "finish_reason": finish,
                "logprobs": null,
            }],
            "usage": usage,
        }),
    };
    warp::reply::json(&body).into_response()
}

/// State of a server-sent-event stream.
struct StreamState {
    generation: Generation,
    endpoint: Endpoint,
    id: String,
    model: String,
    created: u64,
    include_usage: bool,
    /// Events ready to send before asking the generation for more.
    pending: std::collections::VecDeque<String>,
    /// The first event came from the generation before the response began.
    first: Option<Result<Step, ApiError>>,
    done: bool,
}

impl StreamState {
    fn chunk(&self, text: Option<&str>, finish: Option<&str>, role: bool) -> String {
        let choice = match self.endpoint {
            Endpoint::Chat => {
                let mut delta = serde_json::Map::new();
                if role {
                    delta.insert("role".into(), json!("assistant"));
                }
                if let Some(t) = text {
                    delta.insert("content".into(), json!(t));
                }
                json!({"index": 0, "delta": delta, "finish_reason": finish, "logprobs": null})
            }
            Endpoint::Completions => {
                json!({"index": 0, "text": text.unwrap_or(""), "finish_reason": finish, "logprobs": null})
            }
        };
        self.envelope(vec![choice], None)
    }

    fn envelope(&self, choices: Vec<Value>, usage: Option<&Usage>) -> String {
        let object = match self.endpoint {
            Endpoint::Chat => "chat.completion.chunk",
            Endpoint::Completions => "text_completion",
        };
        let mut body = json!({
            "id": self.id,
            "object": object,
            "created": self.created,
            "model": self.model,
            "choices": choices,
        });
        if let Some(usage) = usage {
            body["usage"] = json!(usage);
        }
        body.to_string()
    }

    /// Turn one step of the generation into the events to send.
    fn on_step(&mut self, step: Result<Step, ApiError>) {
        match step {
            Ok(Step::Text(text)) => {
                if !text.is_empty() {
                    let chunk = self.chunk(Some(&text), None, false);
                    self.pending.push_back(chunk);
                }
            }
            Ok(Step::Finished { reason, stats }) => {
                let finish = self.chunk(None, Some(openai::finish_reason(reason)), false);
                self.pending.push_back(finish);
                if self.include_usage {
                    let usage = Usage::new(
                        &stats,
                        self.generation.drafter.clone(),
                        self.generation.language.clone(),
                    );
                    let last = self.envelope(Vec::new(), Some(&usage));
                    self.pending.push_back(last);
                }
                self.pending.push_back("[DONE]".into());
                self.done = true;
            }
            Err(e) => {
                self.pending.push_back(json!(e.body()).to_string());
                self.done = true;
            }
        }
    }
}

fn events(state: StreamState) -> impl Stream<Item = Result<warp::sse::Event, Infallible>> {
    stream::unfold(state, |mut state| async move {
        loop {
            if let Some(data) = state.pending.pop_front() {
                return Some((Ok(warp::sse::Event::default().data(data)), state));
            }
            if state.done {
                return None;
            }
            let step = match state.first.take() {
                Some(step) => step,
                None => state.generation.next().await,
            };
            state.on_step(step);
        }
    })
}

/// A streamed answer. Errors found before the first token (bad prompt,
/// overload) still get their proper status; later ones arrive as an error
/// event in the stream.
async fn stream(service: &Arc<Service>, endpoint: Endpoint, request: ValidatedRequest) -> Response {
    let include_usage = request.include_usage;
    let mut generation = match service.start(request_id(endpoint), request) {
        Ok(g) => g,
        Err(e) => return error::reply(&e),
    };
    let first = match generation.next().await {
        Err(e) => return error::reply(&e),
        Ok(step) => step,
    };
    let mut state = StreamState {
        id: generation.id.clone(),
        generation,
        endpoint,
        model: service.model_name().to_string(),
        created: unix_time(),
        include_usage,
        pending: Default::default(),
        first: Some(Ok(first)),
        done: false,
    };
    if endpoint == Endpoint::Chat {
        let opening = state.chunk(Some(""), None, true);
        state.pending.push_back(opening);
    }
    warp::sse::reply(warp::sse::keep_alive().stream(events(state))).into_response()
}
