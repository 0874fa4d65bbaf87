//! specdec backend: speculative decoding with language-specialised drafters
//! on llama.cpp.
//!
//! - [`config`]: the drafter-registry file format (shared with the operator;
//!   built without the `engine` feature).
//! - [`metric_names`]: names of the metrics the operator reads (also built
//!   without the `engine` feature).
//! - [`fetch`]: downloading a model with checksum verification.
//! - [`speculative`]: model-independent pieces (sampling, acceptance math,
//!   n-gram drafting, text assembly).
//! - [`engine`]: the llama.cpp-owning engine thread and its async handle.
//! - [`registry`]: routing requests to drafters by language.
//! - [`server`]: the OpenAI-compatible HTTP server and its metrics.
//! - [`cli`]: the `specdec` command line.

pub mod config;
pub mod metric_names;
pub mod models;

#[cfg(feature = "engine")]
pub mod fetch;

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
