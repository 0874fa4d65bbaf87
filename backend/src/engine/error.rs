//! Typed errors of the engine. The HTTP layer maps them to statuses in one place.

use std::path::PathBuf;

/// Everything that can go wrong loading models or generating.
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum EngineError {
    /// A model file does not exist.
    #[error("model file {path} does not exist")]
    ModelNotFound {
        /// The path given.
        path: PathBuf,
    },
    /// llama.cpp could not load a model file (truncated, corrupt, unsupported).
    #[error("cannot load model {path}: {reason}")]
    ModelLoad {
        /// The path given.
        path: PathBuf,
        /// Why, as far as is known.
        reason: String,
    },
    /// A drafter's vocabulary does not match the target's.
    #[error("drafter `{drafter}` is incompatible with the target: {reason}")]
    IncompatibleDrafter {
        /// The drafter's name.
        drafter: String,
        /// The first rule it breaks.
        reason: String,
    },
    /// A model whose state cannot be rolled back to a position (recurrent or
    /// hybrid: the state is not a cache of positions) was configured for
    /// speculation, which drops rejected drafts by truncating that state.
    #[error("{model} is a recurrent or hybrid model: it cannot drop rejected drafts from its state, so it cannot take part in speculative decoding ({role})")]
    CannotRollBack {
        /// Which model.
        model: String,
        /// What it was configured as.
        role: String,
    },
    /// llama.cpp could not create an inference context.
    #[error("cannot create a llama.cpp context for {model}: {reason}")]
    Context {
        /// Which model.
        model: String,
        /// Why.
        reason: String,
    },
    /// The request is malformed.
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// The request names a drafter the engine does not have.
    #[error("unknown drafter `{0}`")]
    UnknownDrafter(String),
    /// The prompt does not fit in the context with room for one token.
    #[error("the prompt has {prompt_tokens} tokens, but the context holds {context} (including at least one generated token)")]
    PromptTooLong {
        /// Tokens in the prompt.
        prompt_tokens: usize,
        /// Context length.
        context: usize,
    },
    /// llama.cpp failed to evaluate a batch.
    #[error("llama.cpp decode failed: {0}")]
    Decode(String),
    /// llama.cpp's runtime cannot be used on this machine as built or
    /// installed (no CPU kernels for this CPU, AMX kernels offered).
    #[error("llama.cpp runtime: {0}")]
    Runtime(String),
    /// The engine thread has stopped.
    #[error("the engine has shut down")]
    ShutDown,
}
