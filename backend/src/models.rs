//! Where the project's models live and which ones are the defaults. The file
//! names are those of the project's `models.toml`, which `scripts/fetch-models`
//! downloads into [`model_dir`].

use std::path::PathBuf;

/// Environment variable overriding the model directory.
pub const MODEL_DIR_ENV: &str = "SPECDEC_MODEL_DIR";

/// The default target: Qwen2.5-Coder-1.5B-Instruct, Q4_K_M.
pub const DEFAULT_TARGET_FILE: &str = "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf";

/// The default drafter: Qwen2.5-Coder-0.5B-Instruct, Q4_K_M (same tokenizer).
pub const DEFAULT_DRAFTER_FILE: &str = "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf";

/// A small model with another tokenizer (SmolLM2-135M), for tests.
pub const SMALL_OTHER_VOCAB_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

/// `$SPECDEC_MODEL_DIR`, else `specdec/models` under the user's cache
/// directory (`$XDG_CACHE_HOME`, else `~/.cache`).
pub fn model_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os(MODEL_DIR_ENV).filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from(".cache"));
    cache.join("specdec").join("models")
}

/// Path of a model file in [`model_dir`].
pub fn model_path(file: &str) -> PathBuf {
    model_dir().join(file)
}

/// Directory of trained drafters under the model directory: one
/// `<language>.gguf` per language (ISO 639-1), [`GENERIC_DRAFTER`]`.gguf`,
/// and the registry file [`TRAINED_REGISTRY_FILE`] that serves them.
pub const TRAINED_DRAFTERS_DIR: &str = "drafters";

/// Name of the same-shape drafter trained without per-language finetuning.
pub const GENERIC_DRAFTER: &str = "generic";

/// Registry file written beside the trained drafters.
pub const TRAINED_REGISTRY_FILE: &str = "registry.yaml";

/// Path of the trained drafter `name` (a language code or [`GENERIC_DRAFTER`]).
pub fn trained_drafter_path(name: &str) -> PathBuf {
    model_dir()
        .join(TRAINED_DRAFTERS_DIR)
        .join(format!("{name}.gguf"))
}
