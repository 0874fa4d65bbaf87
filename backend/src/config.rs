//! The drafter-registry file: the one definition of its format, shared by the
//! backend (which reads it) and the operator (which writes it). Compiled
//! without the `engine` feature, so the operator never links llama.cpp.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Context length used when the registry does not give one.
pub const DEFAULT_CONTEXT: u32 = 4096;

/// Per-round draft controls.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DraftParams {
    /// Most tokens drafted per round.
    pub max: u32,
    /// Fewer drafted tokens than this and the round decodes without speculation.
    pub min: u32,
    /// Stop drafting when the drafter's top probability falls below this.
    pub p_min: f32,
    /// Choose each round's draft length, from 0 to `max`, online from measured
    /// acceptance and costs (`false`: always draft up to `max`).
    pub adaptive: bool,
}

impl Default for DraftParams {
    fn default() -> Self {
        Self {
            max: 8,
            min: 0,
            p_min: 0.0,
            adaptive: true,
        }
    }
}

impl DraftParams {
    /// Largest `max` accepted: a verification batch is `max + 1` tokens.
    pub const MAX_DRAFT: u32 = 64;

    /// Check the ranges of the fields.
    pub fn validate(&self) -> Result<(), String> {
        if self.max > Self::MAX_DRAFT {
            return Err(format!(
                "draft.max {} exceeds {}",
                self.max,
                Self::MAX_DRAFT
            ));
        }
        if self.min > self.max {
            return Err(format!(
                "draft.min {} exceeds draft.max {}",
                self.min, self.max
            ));
        }
        if !(0.0..=1.0).contains(&self.p_min) {
            return Err(format!("draft.p_min {} is outside [0, 1]", self.p_min));
        }
        Ok(())
    }
}

/// The target model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetConfig {
    /// Path of the GGUF file; a relative path is resolved against the model
    /// directory.
    pub model: PathBuf,
    /// Context length in tokens.
    #[serde(default = "default_context")]
    pub context: u32,
    /// Layers offloaded to the GPU (ignored by CPU builds).
    #[serde(default)]
    pub gpu_layers: u32,
}

fn default_context() -> u32 {
    DEFAULT_CONTEXT
}

/// How a drafter proposes tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DrafterKind {
    /// A GGUF model sharing the target's tokenizer.
    #[default]
    Model,
    /// Model-free prompt lookup.
    Ngram,
}

/// One drafter of the registry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DrafterConfig {
    /// Unique name, used in routing, metrics and responses.
    pub name: String,
    /// Kind of drafter.
    #[serde(default)]
    pub kind: DrafterKind,
    /// ISO 639-1 codes this drafter serves; `*` for any. Several drafters
    /// may serve the same language: its requests then choose among them
    /// round by round (see `speculative::bandit`).
    #[serde(default)]
    pub languages: Vec<String>,
    /// Path of the GGUF file (kind `model` only); a relative path is
    /// resolved against the model directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<PathBuf>,
    /// Layers offloaded to the GPU (kind `model` only).
    #[serde(default)]
    pub gpu_layers: u32,
    /// Draft controls.
    #[serde(default)]
    pub draft: DraftParams,
}

/// The registry file: a target and its drafters by language.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryConfig {
    /// The target model.
    pub target: TargetConfig,
    /// The drafters, in order: a language's candidates are its drafters in
    /// this order.
    #[serde(default)]
    pub drafters: Vec<DrafterConfig>,
    /// Name of the drafter used when no language matches; none means plain decoding.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<String>,
}

/// A registry file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The YAML does not parse into the format (serde's message names the line).
    #[error("registry file: {0}")]
    Parse(#[from] serde_yaml::Error),
    /// The YAML parses but breaks a rule of the format.
    #[error("registry file: {0}")]
    Invalid(String),
}

impl RegistryConfig {
    /// Parse and validate a registry file's text.
    pub fn from_yaml(text: &str) -> Result<Self, ConfigError> {
        let config: Self = serde_yaml::from_str(text)?;
        config.validate().map_err(ConfigError::Invalid)?;
        Ok(config)
    }

    /// Resolve relative model paths against `model_dir` (the model directory,
    /// `SPECDEC_MODEL_DIR`), so one registry file works wherever the models
    /// were fetched to. Absolute paths are kept.
    pub fn resolve_model_paths(&mut self, model_dir: &Path) {
        let resolve = |path: &mut PathBuf| {
            if path.is_relative() {
                *path = model_dir.join(&*path);
            }
        };
        resolve(&mut self.target.model);
        for drafter in &mut self.drafters {
            if let Some(model) = drafter.model.as_mut() {
                resolve(model);
            }
        }
    }

    /// Render as YAML.
    pub fn to_yaml(&self) -> Result<String, ConfigError> {
        Ok(serde_yaml::to_string(self)?)
    }

    /// Check the rules the types cannot express.
    pub fn validate(&self) -> Result<(), String> {
        if self.target.context < 16 {
            return Err(format!(
                "target.context {} is too small",
                self.target.context
            ));
        }
        let mut names = BTreeSet::new();
        for d in &self.drafters {
            if d.name.is_empty() {
                return Err("a drafter has an empty name".into());
            }
            if !names.insert(d.name.as_str()) {
                return Err(format!("drafter name `{}` is used twice", d.name));
            }
            d.draft
                .validate()
                .map_err(|e| format!("drafter `{}`: {e}", d.name))?;
            match (d.kind, &d.model) {
                (DrafterKind::Model, None) => {
                    return Err(format!("drafter `{}` of kind model needs `model`", d.name))
                }
                (DrafterKind::Ngram, Some(_)) => {
                    return Err(format!(
                        "drafter `{}` of kind ngram takes no `model`",
                        d.name
                    ))
                }
                _ => {}
            }
            let mut languages = BTreeSet::new();
            for lang in &d.languages {
                if lang != "*" && !is_iso639_1(lang) {
                    return Err(format!(
                        "drafter `{}`: `{lang}` is not an ISO 639-1 code (two lowercase letters) or `*`",
                        d.name
                    ));
                }
                // Several drafters may serve one language (the engine chooses
                // among them per round); one drafter naming it twice is a slip.
                if !languages.insert(lang.as_str()) {
                    return Err(format!(
                        "drafter `{}` lists language `{lang}` twice",
                        d.name
                    ));
                }
            }
        }
        if let Some(default) = &self.default {
            if !names.contains(default.as_str()) {
                return Err(format!("default drafter `{default}` is not defined"));
            }
        }
        Ok(())
    }
}

/// Whether `code` has the shape of an ISO 639-1 code.
pub fn is_iso639_1(code: &str) -> bool {
    code.len() == 2 && code.bytes().all(|b| b.is_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"
target:
  model: /models/target.gguf
  context: 4096
  gpu_layers: 999
drafters:
  - name: qwen-0.5b
    languages: [de, fr, es]
    model: /models/drafter.gguf
    draft: { max: 8, min: 0, p_min: 0.0, adaptive: true }
  - name: lookup
    kind: ngram
    languages: ["*"]
default: lookup
"#;

    #[test]
    fn parses_the_design_example() {
        let c = RegistryConfig::from_yaml(EXAMPLE).unwrap();
        assert_eq!(c.drafters.len(), 2);
        assert_eq!(c.drafters[1].kind, DrafterKind::Ngram);
        assert!(c.drafters[0].draft.adaptive);
        assert_eq!(c.default.as_deref(), Some("lookup"));
        let again = RegistryConfig::from_yaml(&c.to_yaml().unwrap()).unwrap();
        assert_eq!(again, c);
    }

    fn invalid(text: &str) -> String {
        RegistryConfig::from_yaml(text).unwrap_err().to_string()
    }

    #[test]
    fn resolves_relative_model_paths_against_the_model_dir() {
        let mut config = RegistryConfig::from_yaml(
            "target: {model: t.gguf}\ndrafters: [{name: d, model: /abs/d.gguf}, {name: e, model: sub/e.gguf}]\n",
        )
        .unwrap();
        config.resolve_model_paths(Path::new("/cache/models"));
        assert_eq!(config.target.model, Path::new("/cache/models/t.gguf"));
        assert_eq!(
            config.drafters[0].model.as_deref(),
            Some(Path::new("/abs/d.gguf"))
        );
        assert_eq!(
            config.drafters[1].model.as_deref(),
            Some(Path::new("/cache/models/sub/e.gguf"))
        );
    }

    #[test]
    fn rejects_unknown_field_with_its_line() {
        let msg = invalid(&EXAMPLE.replace("context: 4096", "contxt: 4096"));
        assert!(msg.contains("contxt") && msg.contains("line"), "{msg}");
    }

    #[test]
    fn rejects_duplicates_and_dangling_default() {
        assert!(invalid(&EXAMPLE.replace("name: lookup", "name: qwen-0.5b")).contains("used twice"));
        assert!(invalid(&EXAMPLE.replace("[de, fr, es]", "[de, fr, de]"))
            .contains("lists language `de` twice"));
        assert!(invalid(&EXAMPLE.replace("default: lookup", "default: nope")).contains("nope"));
        assert!(invalid(&EXAMPLE.replace("[de, fr, es]", "[deu]")).contains("ISO 639-1"));
        assert!(invalid(&EXAMPLE.replace("min: 0", "min: 9")).contains("draft.min"));
    }

    #[test]
    fn several_drafters_may_serve_one_language() {
        let c = RegistryConfig::from_yaml(&EXAMPLE.replace("[\"*\"]", "[de, \"*\"]")).unwrap();
        assert_eq!(c.drafters[0].languages, ["de", "fr", "es"]);
        assert_eq!(c.drafters[1].languages, ["de", "*"]);
        // And several may serve any language.
        let text = r#"
target: { model: /m/t.gguf }
drafters:
  - { name: a, kind: ngram, languages: ["*"] }
  - { name: b, model: /m/d.gguf, languages: ["*", de] }
default: a
"#;
        let c = RegistryConfig::from_yaml(text).unwrap();
        assert_eq!(c.default.as_deref(), Some("a"));
        assert_eq!(RegistryConfig::from_yaml(&c.to_yaml().unwrap()).unwrap(), c);
    }
}
