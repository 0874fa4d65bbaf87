//! The multilingual benchmark of specdec against llama.cpp's `llama-server`,
//! as a library: its corpus (Debian Reference paragraphs), its tasks and
//! prompts, the prefill-interference measurement, its charts and reports.
//! The `specdec-bench` binary drives them; `specdec-train eval` reuses the
//! corpus and prompts, so held-out evaluation asks exactly what the
//! benchmark asks.

pub mod chart;
pub mod chrf;
pub mod client;
pub mod corpus;
pub mod interference;
pub mod modes;
pub mod report;
pub mod servers;
pub mod tasks;
