//! Loading: the models (each file once, every drafter checked against the
//! target) and each slot's llama.cpp contexts.

use std::num::NonZeroU32;
use std::path::Path;
use std::sync::Arc;

use llama_cpp_2::context::params::{KvCacheType, LlamaContextParams};
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::LlamaModel;

use crate::config::{DraftParams, DrafterKind};

use super::error::EngineError;
use super::pass::{KvLayout, MAX_PROMPT_PIECE, PROMPT_CHUNK};
use super::runtime::{backend, RuntimeInfo};
use super::vocab::{check_compatible, VocabInfo};
use super::{EngineConfig, PassCounters};

/// Whether contexts use a Q8_0 KV cache with flash attention. On CPU, ggml
/// decodes a single token over an F16/F32 cache of 512 or more cells with a
/// split-KV kernel whose reduction order differs from the per-row kernel used
/// for batches, so a token's logits would depend on whether it was verified in
/// a batch or decoded alone once the context passes about 256 tokens. A Q8_0
/// cache takes the per-row kernel for both (measured bit-identical up to
/// 1,500 tokens with the `batch_invariance` example) and halves KV memory.
/// Contexts of models on a GPU keep llama.cpp's defaults: the CPU kernels'
/// argument does not carry over, and the verification limit does not rest
/// on it there (see [`verification_limit`]). Decided per model at start-up,
/// from where llama.cpp placed it, so a GPU build without a GPU runs as a
/// CPU build does.
pub(super) fn batch_invariant_kv(runtime: &RuntimeInfo, gpu_layers: u32) -> bool {
    !(runtime.has_gpu && gpu_layers > 0)
}

/// llama.cpp's `LLAMA_FLASH_ATTN_TYPE_ENABLED`.
const FLASH_ATTENTION_ENABLED: i32 = 1;

fn load_model(path: &Path, gpu_layers: u32) -> Result<LlamaModel, EngineError> {
    if !path.is_file() {
        return Err(EngineError::ModelNotFound {
            path: path.to_path_buf(),
        });
    }
    let params = LlamaModelParams::default().with_n_gpu_layers(gpu_layers);
    LlamaModel::load_from_file(backend()?, path, &params).map_err(|e| EngineError::ModelLoad {
        path: path.to_path_buf(),
        reason: format!(
            "{e} (not a valid GGUF model, truncated, or of an unsupported architecture)"
        ),
    })
}

/// A drafter as loaded: its settings and, for model drafters, which of the
/// loaded drafter models it uses.
#[derive(Debug, Clone)]
pub(super) struct LoadedDrafter {
    pub(super) name: String,
    pub(super) draft: DraftParams,
    pub(super) model: Option<usize>,
}

/// The target, the drafter models (each file loaded once, however many
/// drafters name it), and the drafters.
pub(super) struct LoadedModels {
    pub(super) target: LlamaModel,
    pub(super) drafter_models: Vec<LlamaModel>,
    /// Layers offloaded of each drafter model.
    pub(super) drafter_gpu_layers: Vec<u32>,
    pub(super) drafters: Vec<LoadedDrafter>,
}

/// Load the models and check every drafter against the target.
pub(super) fn load_models(config: &EngineConfig) -> Result<LoadedModels, EngineError> {
    let target = load_model(&config.target.model, config.target.gpu_layers)?;
    if !config.drafters.is_empty() {
        refuse_unrollable(&target, &config.target.model, "the target of speculation")?;
    }
    let target_vocab = VocabInfo::of(&target);
    let mut drafter_models: Vec<LlamaModel> = Vec::new();
    let mut loaded: Vec<(&Path, u32)> = Vec::new();
    let mut drafters = Vec::with_capacity(config.drafters.len());
    for spec in &config.drafters {
        let model = match (spec.kind, &spec.model) {
            (DrafterKind::Ngram, _) => None,
            (DrafterKind::Model, None) => {
                return Err(EngineError::InvalidRequest(format!(
                    "drafter `{}` of kind model has no model file",
                    spec.name
                )))
            }
            (DrafterKind::Model, Some(path)) => {
                let key = (path.as_path(), spec.gpu_layers);
                match loaded.iter().position(|k| *k == key) {
                    Some(index) => Some(index),
                    None => {
                        let model = load_model(path, spec.gpu_layers)?;
                        refuse_unrollable(&model, path, &format!("drafter `{}`", spec.name))?;
                        check_compatible(&target_vocab, &VocabInfo::of(&model)).map_err(
                            |reason| EngineError::IncompatibleDrafter {
                                drafter: spec.name.clone(),
                                reason,
                            },
                        )?;
                        drafter_models.push(model);
                        loaded.push(key);
                        Some(drafter_models.len() - 1)
                    }
                }
            }
        };
        spec.draft
            .validate()
            .map_err(|e| EngineError::InvalidRequest(format!("drafter `{}`: {e}", spec.name)))?;
        drafters.push(LoadedDrafter {
            name: spec.name.clone(),
            draft: spec.draft,
            model,
        });
    }
    Ok(LoadedModels {
        target,
        drafter_models,
        drafter_gpu_layers: loaded.iter().map(|&(_, layers)| layers).collect(),
        drafters,
    })
}

/// Speculation rolls every model's state back past rejected drafts, which
/// the state of a recurrent or hybrid model does not allow.
fn refuse_unrollable(model: &LlamaModel, path: &Path, role: &str) -> Result<(), EngineError> {
    if model.is_recurrent() || model.is_hybrid() {
        return Err(EngineError::CannotRollBack {
            model: path.display().to_string(),
            role: role.to_string(),
        });
    }
    Ok(())
}

fn new_context<'m>(
    model: &'m LlamaModel,
    name: &str,
    shape: ContextShape,
    batch_invariant: bool,
) -> Result<LlamaContext<'m>, EngineError> {
    let ContextShape {
        context,
        sequences,
        threads,
        layout,
    } = shape;
    let total = context
        .checked_mul(sequences)
        .ok_or_else(|| EngineError::Context {
            model: name.to_string(),
            reason: format!("{sequences} slots of {context} tokens overflow the context size"),
        })?;
    // With a KV stream per sequence, a sequence's cells sit in position
    // order whatever the other sequences do, so its attention sums in the
    // order it would alone; a unified cache lets llama.cpp compute any
    // pass at once (see `KvLayout`). Either way a sequence has a whole
    // context.
    let params = LlamaContextParams::default()
        .with_n_ctx(NonZeroU32::new(total))
        .with_n_batch(batch_capacity(sequences as usize) as u32)
        .with_n_ubatch(PROMPT_CHUNK as u32)
        .with_n_seq_max(sequences)
        .with_kv_unified(layout == KvLayout::Unified)
        .with_n_threads(threads)
        .with_n_threads_batch(threads);
    // Batch-invariant attention (see `batch_invariant_kv`): flash attention
    // over a quantized KV cache takes the same per-row kernel for one token as
    // for a batch, at every context length.
    let params = if batch_invariant {
        params
            .with_flash_attention_policy(FLASH_ATTENTION_ENABLED)
            .with_type_k(KvCacheType::Q8_0)
            .with_type_v(KvCacheType::Q8_0)
    } else {
        params
    };
    model
        .new_context(backend()?, params)
        .map_err(|e| EngineError::Context {
            model: name.to_string(),
            reason: e.to_string(),
        })
}

/// Rows one pass may hold: a prompt chunk, or one step's rows of every slot
/// (a whole verification window and a prompt piece each).
pub(super) fn batch_capacity(slots: usize) -> usize {
    PROMPT_CHUNK.max(slots.max(1) * (DraftParams::MAX_DRAFT as usize + 1 + MAX_PROMPT_PIECE))
}

/// How contexts are sized.
#[derive(Debug, Clone, Copy)]
pub(super) struct ContextShape {
    /// Tokens per sequence.
    pub(super) context: u32,
    /// Sequences (slots).
    pub(super) sequences: u32,
    pub(super) threads: i32,
    pub(super) layout: KvLayout,
}

/// The engine's llama.cpp contexts: one for the target and one per drafter
/// model, each holding every slot's sequence (sequence id = slot index), so
/// that one pass serves several slots.
pub(super) struct Contexts<'m> {
    pub(super) target: LlamaContext<'m>,
    /// One context per drafter model (drafters sharing a model share it).
    pub(super) drafters: Vec<LlamaContext<'m>>,
    pub(super) batch: LlamaBatch<'static>,
    /// Target passes served while generating, for metrics.
    pub(super) target_passes: Arc<PassCounters>,
}

/// Which models' contexts take the batch-invariant KV cache (see
/// [`batch_invariant_kv`]).
pub(super) struct Invariance {
    pub(super) target: bool,
    /// Per drafter model.
    pub(super) drafters: Vec<bool>,
}

impl<'m> Contexts<'m> {
    pub(super) fn new(
        target: &'m LlamaModel,
        drafter_models: &'m [LlamaModel],
        shape: ContextShape,
        invariant: &Invariance,
        target_passes: Arc<PassCounters>,
    ) -> Result<Self, EngineError> {
        let target_ctx = new_context(target, "the target", shape, invariant.target)?;
        let mut drafter_ctxs = Vec::with_capacity(drafter_models.len());
        for (i, model) in drafter_models.iter().enumerate() {
            drafter_ctxs.push(new_context(
                model,
                &format!("drafter model {i}"),
                shape,
                invariant.drafters.get(i).copied().unwrap_or(true),
            )?);
        }
        Ok(Self {
            target: target_ctx,
            drafters: drafter_ctxs,
            batch: LlamaBatch::new(batch_capacity(shape.sequences as usize), 1),
            target_passes,
        })
    }

    /// Forget every sequence `seq` holds in every context.
    pub(super) fn clear_sequence(&mut self, seq: i32) {
        let _ = self.target.clear_kv_cache_seq(Some(seq as u32), None, None);
        for ctx in &mut self.drafters {
            let _ = ctx.clear_kv_cache_seq(Some(seq as u32), None, None);
        }
    }
}
