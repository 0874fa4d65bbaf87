//! Training language-specialised drafters for specdec (Yi et al. 2024):
//! a shallow Qwen2-architecture drafter with the target's vocabulary,
//! pretrained on multilingual text, then finetuned per language on the
//! target's own answers (self-distillation), exported as GGUF for the engine.
//!
//! - [`corpus`]: multilingual text from Debian packages, deduplicated, with a manifest.
//! - [`distill`]: the target's answers to prompts built from the corpus.
//! - [`batched`]: many of those answers generated in one llama.cpp pass per step.
//! - [`data`]: token files, sequence packing and loss masks.
//! - [`model`]: the drafter (Qwen2 blocks) on candle.
//! - [`init`]: the drafter's embedding initialised from the target's.
//! - [`trainer`]: AdamW with warm-up and cosine decay, checkpoints, resume.
//! - [`export`]: GGUF files the engine and llama.cpp load.
//! - [`eval`]: acceptance and cost of specialised, generic and 0.5B drafters.
//! - [`sweep`]: the drafter's shape chosen by draft cost against acceptance.
//! - [`tokenizer`]: the target's tokenizer, through llama.cpp.

pub mod batched;
pub mod corpus;
pub mod data;
pub mod distill;
pub mod eval;
pub mod export;
pub mod init;
pub mod loss;
pub mod model;
pub mod progress;
pub mod recipe;
pub mod sweep;
pub mod tokenizer;
pub mod trainer;
