//! specdec backend: speculative decoding with language-specialised drafters
//! on llama.cpp.
//!
//! - [`config`]: the drafter-registry file format (shared with the operator;
//!   the only module built without the `engine` feature).
//! - [`speculative`]: model-independent pieces (sampling, acceptance math,
//!   n-gram drafting, text assembly).
//! - [`engine`]: the llama.cpp-owning engine thread and its async handle.
//! - [`registry`]: routing requests to drafters by language.
//! - [`server`]: the OpenAI-compatible HTTP server and its metrics.
//! - [`cli`]: the `specdec` command line.

pub mod config;
pub mod models;

#[cfg(feature = "engine")]
pub mod cli;
#[cfg(feature = "engine")]
pub mod engine;
#[cfg(feature = "engine")]
pub mod registry;
#[cfg(feature = "engine")]
pub mod server;
#[cfg(feature = "engine")]
pub mod speculative;
