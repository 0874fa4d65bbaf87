//! The configurations measured: specdec's target alone, fixed draft lengths,
//! n-gram drafting and adaptive drafting, and llama-server with and without
//! its `-md` drafter. Each is a server plus request fields.

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::servers::{MODEL_DRAFTER, NGRAM_DRAFTER};

/// Which running server a mode talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ServerKind {
    /// `specdec serve`.
    Specdec,
    /// `specdec serve` of a build for this machine's CPU only (static
    /// llama.cpp, `-march=native`), against the portable build above.
    SpecdecNative,
    /// llama-server with the target only.
    LlamaServer,
    /// llama-server with the target and `-md` drafter.
    LlamaServerDraft,
}

/// What a mode drafts with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Drafting {
    /// No drafting.
    None,
    /// The 0.5B drafter, always `k` tokens.
    Fixed(u32),
    /// Prompt-lookup n-grams, up to `k` tokens.
    Ngram(u32),
    /// specdec's adaptive draft length.
    Adaptive,
    /// llama-server's drafting with up to `k` tokens (its own defaults otherwise).
    LlamaServer(u32),
}

/// One configuration under test.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Mode {
    /// Short name used in tables.
    pub name: String,
    /// The server it talks to.
    pub server: ServerKind,
    /// How it drafts.
    pub drafting: Drafting,
}

impl Mode {
    /// Whether this is specdec's target-only mode, the baseline of speedups.
    pub fn is_baseline(&self) -> bool {
        self.server == ServerKind::Specdec && self.drafting == Drafting::None
    }

    /// Whether greedy outputs of this mode must equal its server's target-only output.
    pub fn must_match_target(&self) -> bool {
        !matches!(self.drafting, Drafting::None)
    }

    /// The request fields that select this mode; `language` is the ISO 639-1
    /// code of the request (only specdec reads it).
    pub fn request_fields(&self, language: &str) -> Map<String, Value> {
        let value = match (self.server, self.drafting) {
            (ServerKind::Specdec, Drafting::None) => {
                json!({"language": language, "speculative": {"enabled": false}})
            }
            (ServerKind::Specdec, Drafting::Fixed(k)) => json!({
                "language": language,
                "speculative": {"drafter": MODEL_DRAFTER, "max": k, "adaptive": false}
            }),
            (ServerKind::Specdec, Drafting::Ngram(k)) => json!({
                "language": language,
                "speculative": {"drafter": NGRAM_DRAFTER, "max": k, "adaptive": false}
            }),
            (ServerKind::Specdec, _) => json!({"language": language}),
            (ServerKind::SpecdecNative, _) => {
                json!({"language": language, "speculative": {"enabled": false}})
            }
            // llama-server would otherwise reuse the KV cache of a previous
            // request with the same prompt; specdec keeps no prompt cache.
            (_, Drafting::LlamaServer(k)) => json!({"speculative.n_max": k, "cache_prompt": false}),
            _ => json!({"cache_prompt": false}),
        };
        match value {
            Value::Object(map) => map,
            _ => Map::new(),
        }
    }
}

/// Name of the native build's target-only mode.
pub const NATIVE_TARGET: &str = "target (native build)";

/// The modes of a run, in table order; `native` adds the native build's
/// target-only mode, `llama_server` llama-server's two modes.
pub fn modes(fixed_lengths: &[u32], draft_max: u32, native: bool, llama_server: bool) -> Vec<Mode> {
    let mut modes = vec![Mode {
        name: "target".into(),
        server: ServerKind::Specdec,
        drafting: Drafting::None,
    }];
    if native {
        modes.push(Mode {
            name: NATIVE_TARGET.into(),
            server: ServerKind::SpecdecNative,
            drafting: Drafting::None,
        });
    }
    for &k in fixed_lengths {
        modes.push(Mode {
            name: format!("k={k}"),
            server: ServerKind::Specdec,
            drafting: Drafting::Fixed(k),
        });
    }
    modes.push(Mode {
        name: format!("ngram k={draft_max}"),
        server: ServerKind::Specdec,
        drafting: Drafting::Ngram(draft_max),
    });
    modes.push(Mode {
        name: "adaptive".into(),
        server: ServerKind::Specdec,
        drafting: Drafting::Adaptive,
    });
    if !llama_server {
        return modes;
    }
    modes.push(Mode {
        name: "llama-server".into(),
        server: ServerKind::LlamaServer,
        drafting: Drafting::None,
    });
    modes.push(Mode {
        name: format!("llama-server -md k={draft_max}"),
        server: ServerKind::LlamaServerDraft,
        drafting: Drafting::LlamaServer(draft_max),
    });
    modes
}

/// The order in which the modes are measured on each prompt: the pairs the
/// checks compare (portable and native target, target and adaptive, adaptive and llama-server's
/// drafting, the two llama-server modes) back to back, so that slow drifts
/// of a shared machine's speed affect both sides of a ratio alike.
pub fn measurement_order(modes: &[Mode]) -> Vec<&Mode> {
    let rank = |m: &Mode| match (m.server, m.drafting) {
        (ServerKind::Specdec, Drafting::None) => 0,
        (ServerKind::SpecdecNative, _) => 1,
        (_, Drafting::Adaptive) => 2,
        (ServerKind::LlamaServerDraft, _) => 3,
        (ServerKind::LlamaServer, _) => 4,
        _ => 5,
    };
    let mut ordered: Vec<&Mode> = modes.iter().collect();
    ordered.sort_by_key(|m| rank(m));
    ordered
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_of_mode_is_measured_once() {
        let modes = modes(&[1, 2, 4], 4, false, true);
        let names: Vec<_> = modes.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "target",
                "k=1",
                "k=2",
                "k=4",
                "ngram k=4",
                "adaptive",
                "llama-server",
                "llama-server -md k=4"
            ]
        );
        assert_eq!(modes.iter().filter(|m| m.is_baseline()).count(), 1);
    }

    #[test]
    fn without_llama_server_its_modes_are_left_out() {
        let modes = modes(&[2, 4, 8], 8, false, false);
        let names: Vec<_> = modes.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(
            names,
            ["target", "k=2", "k=4", "k=8", "ngram k=8", "adaptive"]
        );
    }

    #[test]
    fn compared_modes_are_measured_back_to_back() {
        let modes = modes(&[1, 2, 4], 4, false, true);
        let order: Vec<_> = measurement_order(&modes)
            .iter()
            .map(|m| m.name.as_str())
            .collect();
        assert_eq!(
            order,
            [
                "target",
                "adaptive",
                "llama-server -md k=4",
                "llama-server",
                "k=1",
                "k=2",
                "k=4",
                "ngram k=4"
            ]
        );
    }

    #[test]
    fn the_native_build_is_measured_right_after_the_portable_one() {
        let modes = modes(&[2], 2, true, true);
        assert_eq!(modes[1].name, NATIVE_TARGET);
        assert_eq!(modes[1].server, ServerKind::SpecdecNative);
        assert!(
            !modes[1].is_baseline(),
            "the portable build is the baseline"
        );
        assert!(
            !modes[1].must_match_target(),
            "other kernels may round differently"
        );
        let order: Vec<_> = measurement_order(&modes)
            .iter()
            .map(|m| m.name.as_str())
            .collect();
        assert_eq!(order[..2], ["target", NATIVE_TARGET]);
        assert_eq!(
            modes[1].request_fields("de")["speculative"]["enabled"],
            false
        );
    }

    #[test]
    fn request_fields_select_the_mode() {
        let modes = modes(&[2], 4, false, true);
        let fixed = modes[1].request_fields("de");
        assert_eq!(fixed["speculative"]["max"], 2);
        assert_eq!(fixed["speculative"]["adaptive"], false);
        assert_eq!(fixed["language"], "de");
        let adaptive = modes[3].request_fields("ja");
        assert!(
            adaptive.get("speculative").is_none(),
            "the registry's default"
        );
        let llama = modes[5].request_fields("de");
        assert_eq!(llama["speculative.n_max"], 4);
        assert!(llama.get("language").is_none());
    }
}
