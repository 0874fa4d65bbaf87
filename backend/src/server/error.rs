//! API errors and their one mapping to HTTP statuses and OpenAI's error object.

use serde::Serialize;
use warp::http::StatusCode;

use crate::engine::EngineError;

/// Everything a request can fail with.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ApiError {
    /// Malformed or unsupported input.
    #[error("{message}")]
    InvalidRequest {
        /// What is wrong.
        message: String,
        /// The offending field.
        param: Option<String>,
    },
    /// The request names a model this server does not serve.
    #[error("the model `{0}` does not exist")]
    ModelNotFound(String),
    /// Unknown route.
    #[error("not found")]
    NotFound,
    /// Wrong HTTP method.
    #[error("method not allowed")]
    MethodNotAllowed,
    /// Body too large.
    #[error("the request body is too large")]
    PayloadTooLarge,
    /// No API key, or a wrong one, on a server that requires one.
    #[error("{0}")]
    Unauthorized(String),
    /// The body is not declared as JSON.
    #[error("the request body must be JSON: send `Content-Type: application/json`{0}")]
    UnsupportedMediaType(String),
    /// The client did not send its whole body within the read timeout.
    #[error("the request body did not arrive within {0} seconds")]
    BodyTimeout(u64),
    /// Slots and queue are full.
    #[error("the server is busy: all {capacity} slots and queue places are taken; retry later")]
    Overloaded {
        /// Slots plus queue places.
        capacity: usize,
    },
    /// The models are still loading, or failed to load, or shutdown began.
    #[error("the server is not ready: {0}")]
    NotReady(String),
    /// The request ran past the per-request timeout.
    #[error("the request took longer than {0} seconds")]
    Timeout(u64),
    /// The engine failed.
    #[error("{0}")]
    Engine(EngineError),
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        Self::Engine(e)
    }
}

/// OpenAI's error body: `{"error": {...}}`.
#[derive(Debug, Serialize)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorObject,
}

/// OpenAI's error object.
#[derive(Debug, Serialize)]
pub struct ErrorObject {
    /// Human-readable message.
    pub message: String,
    /// Error class, as OpenAI names them.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// Offending field.
    pub param: Option<String>,
    /// Machine-readable code.
    pub code: Option<&'static str>,
}

impl ApiError {
    /// HTTP status of the error.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::InvalidRequest { .. } => StatusCode::BAD_REQUEST,
            Self::ModelNotFound(_) | Self::NotFound => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            Self::Overloaded { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::NotReady(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
            Self::Engine(e) => match e {
                EngineError::InvalidRequest(_)
                | EngineError::PromptTooLong { .. }
                | EngineError::UnknownDrafter(_) => StatusCode::BAD_REQUEST,
                EngineError::ShutDown => StatusCode::SERVICE_UNAVAILABLE,
                _ => StatusCode::INTERNAL_SERVER_ERROR,
            },
        }
    }

    /// OpenAI's error object for this error.
    pub fn body(&self) -> ErrorBody {
        let (kind, code, param) = match self {
            Self::InvalidRequest { param, .. } => ("invalid_request_error", None, param.clone()),
            Self::ModelNotFound(_) => (
                "invalid_request_error",
                Some("model_not_found"),
                Some("model".to_string()),
            ),
            Self::NotFound
            | Self::MethodNotAllowed
            | Self::PayloadTooLarge
            | Self::UnsupportedMediaType(_)
            | Self::BodyTimeout(_) => ("invalid_request_error", None, None),
            Self::Unauthorized(_) => ("invalid_request_error", Some("invalid_api_key"), None),
            Self::Overloaded { .. } => ("rate_limit_error", Some("rate_limit_exceeded"), None),
            Self::NotReady(_) => ("server_error", Some("not_ready"), None),
            Self::Timeout(_) => ("server_error", Some("timeout"), None),
            Self::Engine(EngineError::PromptTooLong { .. }) => (
                "invalid_request_error",
                Some("context_length_exceeded"),
                Some("messages".to_string()),
            ),
            Self::Engine(EngineError::InvalidRequest(_) | EngineError::UnknownDrafter(_)) => {
                ("invalid_request_error", None, None)
            }
            Self::Engine(_) => ("server_error", None, None),
        };
        ErrorBody {
            error: ErrorObject {
                message: self.to_string(),
                kind,
                param,
                code,
            },
        }
    }

    /// Seconds a client should wait before retrying, for 429 and 503.
    pub fn retry_after(&self) -> Option<u64> {
        match self {
            Self::Overloaded { .. } => Some(1),
            Self::NotReady(_) => Some(5),
            _ => None,
        }
    }
}

impl warp::reject::Reject for ApiError {}

/// The HTTP response of an error.
pub fn reply(error: &ApiError) -> warp::reply::Response {
    use warp::Reply;
    let mut response =
        warp::reply::with_status(warp::reply::json(&error.body()), error.status()).into_response();
    if matches!(error, ApiError::Unauthorized(_)) {
        response.headers_mut().insert(
            "www-authenticate",
            warp::http::HeaderValue::from_static("Bearer"),
        );
    }
    if let Some(seconds) = error.retry_after() {
        if let Ok(value) = seconds.to_string().parse() {
            response.headers_mut().insert("retry-after", value);
        }
    }
    response
}
