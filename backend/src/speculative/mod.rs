//! The model-independent pieces of speculative decoding: how logits become a
//! distribution, the acceptance math, the adaptive draft-length policy, the
//! n-gram proposer and streaming text assembly. Pure code, unit tested without models; the engine wires them to
//! llama.cpp.

pub mod adaptive;
pub mod bandit;
pub mod ngram;
pub mod proposer;
pub mod sampling;
pub mod text;
pub mod verifier;
