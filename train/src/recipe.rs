//! The recipe: where each stage reads and writes, the presets (smoke, quick,
//! full), and the stages that tie the pieces together — the vocabulary
//! subset, pretraining on the corpus, finetuning per language on distilled
//! answers, the generic drafter, export.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};
use specdec_backend::config::{
    DraftParams, DrafterConfig, DrafterKind, RegistryConfig, TargetConfig,
};
use specdec_backend::models::{self, GENERIC_DRAFTER, TRAINED_DRAFTERS_DIR, TRAINED_REGISTRY_FILE};

use crate::corpus;
use crate::data::{self, pack_examples, pack_text, Packed, VocabSubset};
use crate::distill::{self, PromptKind};
use crate::export::{self, WeightType};
use crate::init;
use crate::model::Shape;
use crate::tokenizer::Tokenizer;
use crate::trainer::{self, TrainReport, TrainSettings, Trainable, EMBEDDING_ROWS};

/// A failed stage.
#[derive(Debug, thiserror::Error)]
pub enum RecipeError {
    /// Corpus stage.
    #[error(transparent)]
    Corpus(#[from] corpus::CorpusError),
    /// Distillation stage.
    #[error(transparent)]
    Distill(#[from] distill::DistillError),
    /// Data files.
    #[error(transparent)]
    Data(#[from] data::DataError),
    /// Training.
    #[error(transparent)]
    Train(#[from] trainer::TrainError),
    /// Export.
    #[error(transparent)]
    Export(#[from] export::ExportError),
    /// Embedding initialisation.
    #[error(transparent)]
    Init(#[from] init::InitError),
    /// Tokenizer.
    #[error(transparent)]
    Tokenizer(#[from] crate::tokenizer::TokenizerError),
    /// Tensor operations.
    #[error("tensor operation: {0}")]
    Tensor(#[from] candle_core::Error),
    /// A file of the work directory.
    #[error("{path}: {reason}")]
    File {
        /// The file.
        path: PathBuf,
        /// What failed.
        reason: String,
    },
    /// A stage that needs an earlier one.
    #[error("{0}")]
    Missing(String),
}

/// A [`RecipeError::File`] for `path`.
pub(crate) fn file_error(path: &Path, e: impl std::fmt::Display) -> RecipeError {
    RecipeError::File {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

/// Named settings of the whole recipe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum PresetName {
    /// Minutes: the whole pipeline on very little data (tests, CI).
    Smoke,
    /// About an hour on a 2-core CPU: de, fr, ja and the generic drafter.
    Quick,
    /// The full recipe, for a GPU (`--features cuda`).
    Full,
}

/// Every setting of the recipe.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Preset {
    /// Which preset.
    pub name: PresetName,
    /// Languages that get a specialised drafter.
    pub languages: Vec<String>,
    /// Languages of the pretraining (and generic) text.
    pub pretrain_languages: Vec<String>,
    /// Corpus tokens taken per pretraining language.
    pub pretrain_tokens_per_language: usize,
    /// Distilled answers per language.
    pub distill_per_language: usize,
    /// Longest distilled answer, in tokens.
    pub distill_max_tokens: usize,
    /// Answers generated together (one llama.cpp pass per step).
    pub distill_sequences: usize,
    /// Prompt kinds of distillation, cycled.
    pub distill_kinds: Vec<PromptKind>,
    /// Sampling temperatures of distillation, cycled.
    pub distill_temperatures: Vec<f32>,
    /// The drafter's shape.
    pub shape: Shape,
    /// Pretraining.
    pub pretrain: TrainSettings,
    /// Finetuning per language; the generic drafter continues pretraining
    /// for as many steps of as many tokens.
    pub finetune: TrainSettings,
    /// Storage type of exported weights.
    pub weight_type: WeightType,
    /// Held-out prompts per language in `eval`.
    pub eval_prompts: usize,
    /// Longest answer in `eval`, in tokens.
    pub eval_max_tokens: usize,
    /// Draft length in `eval`.
    pub eval_draft_length: usize,
}

impl Preset {
    /// The settings of `name`.
    pub fn of(name: PresetName) -> Self {
        let shape = Shape {
            vocab: 151_936,
            hidden: 256,
            layers: 2,
            heads: 4,
            kv_heads: 2,
            intermediate: 768,
            rope_theta: 1_000_000.0,
            rms_eps: 1e-6,
            context: 4096,
        };
        let base = TrainSettings {
            seq_len: 512,
            micro_batch: 4,
            accumulation: 2,
            steps: 300,
            learning_rate: 2e-3,
            min_learning_rate: 2e-4,
            warmup: 20,
            weight_decay: 0.01,
            beta1: 0.9,
            beta2: 0.98,
            eps: 1e-8,
            grad_clip: 1.0,
            seed: 1,
            checkpoint_every: 25,
        };
        let languages: Vec<String> = ["de", "fr", "ja"].map(String::from).to_vec();
        let mut pretrain_languages = languages.clone();
        pretrain_languages.push("en".into());
        let kinds = vec![
            PromptKind::Translate,
            PromptKind::Proofread,
            PromptKind::Translate,
            PromptKind::Summarise,
        ];
        match name {
            PresetName::Smoke => Self {
                name,
                languages,
                pretrain_languages,
                pretrain_tokens_per_language: 20_000,
                distill_per_language: 3,
                distill_max_tokens: 24,
                distill_sequences: 4,
                distill_kinds: kinds,
                distill_temperatures: vec![0.0, 0.7],
                shape: Shape {
                    hidden: 64,
                    heads: 2,
                    kv_heads: 1,
                    intermediate: 128,
                    ..shape
                },
                pretrain: TrainSettings {
                    seq_len: 128,
                    micro_batch: 4,
                    accumulation: 1,
                    steps: 20,
                    warmup: 4,
                    checkpoint_every: 10,
                    ..base.clone()
                },
                finetune: TrainSettings {
                    seq_len: 128,
                    micro_batch: 4,
                    accumulation: 1,
                    steps: 8,
                    warmup: 2,
                    learning_rate: 1e-3,
                    min_learning_rate: 1e-4,
                    checkpoint_every: 4,
                    ..base
                },
                weight_type: WeightType::F16,
                eval_prompts: 1,
                eval_max_tokens: 24,
                eval_draft_length: 4,
            },
            PresetName::Quick => Self {
                name,
                languages,
                pretrain_languages,
                pretrain_tokens_per_language: 160_000,
                distill_per_language: 144,
                distill_max_tokens: 128,
                distill_sequences: 16,
                distill_kinds: kinds,
                distill_temperatures: vec![0.0, 0.3, 0.7, 1.0],
                shape,
                pretrain: TrainSettings {
                    seq_len: 256,
                    micro_batch: 8,
                    accumulation: 1,
                    steps: 300,
                    warmup: 15,
                    checkpoint_every: 50,
                    ..base.clone()
                },
                finetune: TrainSettings {
                    seq_len: 256,
                    micro_batch: 8,
                    accumulation: 1,
                    steps: 72,
                    warmup: 6,
                    learning_rate: 1.5e-3,
                    min_learning_rate: 1.5e-4,
                    checkpoint_every: 12,
                    ..base.clone()
                },
                weight_type: WeightType::F16,
                eval_prompts: 8,
                eval_max_tokens: 96,
                eval_draft_length: 4,
            },
            PresetName::Full => Self {
                name,
                languages: ["de", "fr", "es", "it", "ja", "pt", "ru", "zh"]
                    .map(String::from)
                    .to_vec(),
                pretrain_languages: ["de", "fr", "es", "it", "ja", "pt", "ru", "zh", "en"]
                    .map(String::from)
                    .to_vec(),
                pretrain_tokens_per_language: 20_000_000,
                distill_per_language: 4000,
                distill_max_tokens: 512,
                distill_sequences: 64,
                distill_kinds: kinds,
                distill_temperatures: vec![0.0, 0.3, 0.7, 1.0],
                shape: Shape {
                    hidden: 512,
                    heads: 8,
                    kv_heads: 2,
                    intermediate: 1536,
                    ..shape
                },
                pretrain: TrainSettings {
                    micro_batch: 16,
                    accumulation: 4,
                    steps: 20_000,
                    warmup: 500,
                    learning_rate: 1e-3,
                    min_learning_rate: 1e-4,
                    checkpoint_every: 500,
                    ..base.clone()
                },
                finetune: TrainSettings {
                    micro_batch: 16,
                    accumulation: 2,
                    steps: 3000,
                    warmup: 100,
                    learning_rate: 3e-4,
                    min_learning_rate: 3e-5,
                    checkpoint_every: 250,
                    ..base
                },
                weight_type: WeightType::Q8_0,
                eval_prompts: 40,
                eval_max_tokens: 256,
                eval_draft_length: 6,
            },
        }
    }
}

/// Where the stages keep their work, and where the results go.
#[derive(Debug, Clone)]
pub struct Workspace {
    /// Work directory (corpus, distilled answers, checkpoints).
    pub root: PathBuf,
    /// The target model.
    pub target: PathBuf,
    /// The model directory; trained drafters go to its `drafters/`.
    pub model_dir: PathBuf,
    /// CPU threads of llama.cpp (distillation, evaluation).
    pub threads: u32,
    /// Layers of the target on a GPU (distillation, evaluation).
    pub gpu_layers: u32,
    /// Candle device of training.
    pub device: Device,
}

impl Workspace {
    /// Corpus directory.
    pub fn corpus(&self) -> PathBuf {
        self.root.join("corpus")
    }

    /// Distilled answers of a preset.
    pub fn distill(&self, preset: &Preset) -> PathBuf {
        self.root
            .join(format!("{}-distill", preset_dir(preset.name)))
    }

    /// Directory of a training run (`pretrain`, `finetune-de`, `generic`).
    pub fn run(&self, preset: &Preset, run: &str) -> PathBuf {
        self.root.join(preset_dir(preset.name)).join(run)
    }

    /// The trained drafters' directory.
    pub fn drafters(&self) -> PathBuf {
        self.model_dir.join(TRAINED_DRAFTERS_DIR)
    }

    fn vocab(&self, preset: &Preset) -> PathBuf {
        self.root.join(preset_dir(preset.name)).join("vocab.json")
    }

    fn embedding(&self, preset: &Preset) -> PathBuf {
        self.root
            .join(preset_dir(preset.name))
            .join("embedding.safetensors")
    }
}

/// The name of a preset's directories and result files (`quick`).
pub fn preset_dir(name: PresetName) -> &'static str {
    match name {
        PresetName::Smoke => "smoke",
        PresetName::Quick => "quick",
        PresetName::Full => "full",
    }
}

/// The pretraining documents of `language`: corpus paragraphs in a seeded
/// order until `budget` tokens.
fn pretrain_documents(
    workspace: &Workspace,
    tokenizer: &Tokenizer,
    language: &str,
    budget: usize,
    seed: u64,
) -> Result<Vec<Vec<u32>>, RecipeError> {
    // The distillation plan's order, from the far end: with a small budget
    // the paragraphs distilled first are not also pretrained on.
    let mut paragraphs = distill::plan(&workspace.corpus(), language, (1, usize::MAX), seed)?;
    paragraphs.reverse();
    let mut documents = Vec::new();
    let mut tokens = 0;
    for paragraph in paragraphs {
        if tokens >= budget {
            break;
        }
        let ids = tokenizer.encode(&paragraph.text, false)?;
        tokens += ids.len() + 1;
        documents.push(ids);
    }
    Ok(documents)
}

/// Everything the training stages share: the documents, the subset, the
/// projected embedding.
pub struct Prepared {
    /// Pretraining text, packed.
    pub pretrain: Packed,
    /// Distilled examples, packed, per language.
    pub finetune: BTreeMap<String, Packed>,
    /// Vocabulary subset.
    pub subset: VocabSubset,
    /// Full projected embedding (vocab, hidden).
    pub embedding: Tensor,
}

/// The subset is saved with the preset's runs: finetuning must use exactly
/// the subset pretraining was built with.
#[derive(Debug, Serialize, Deserialize)]
struct SavedSubset {
    subset: VocabSubset,
    hidden: usize,
}

/// Tokenize and pack the data, build (or reload) the vocabulary subset and the projected embedding.
pub fn prepare(
    workspace: &Workspace,
    preset: &Preset,
    tokenizer: &Tokenizer,
) -> Result<Prepared, RecipeError> {
    let eos = tokenizer.eos();
    let mut documents = Vec::new();
    for language in &preset.pretrain_languages {
        let docs = pretrain_documents(
            workspace,
            tokenizer,
            language,
            preset.pretrain_tokens_per_language,
            preset.pretrain.seed,
        )?;
        tracing::info!(
            language = %language,
            documents = docs.len(),
            tokens = docs.iter().map(|d| d.len() + 1).sum::<usize>(),
            "pretraining text"
        );
        documents.push(docs);
    }
    let mut examples = BTreeMap::new();
    for language in &preset.languages {
        examples.insert(
            language.clone(),
            distill::read(&workspace.distill(preset), language)?,
        );
    }
    let vocab_path = workspace.vocab(preset);
    let subset = if vocab_path.is_file() {
        let text = std::fs::read(&vocab_path).map_err(|e| file_error(&vocab_path, e))?;
        let saved: SavedSubset =
            serde_json::from_slice(&text).map_err(|e| file_error(&vocab_path, e))?;
        saved.subset
    } else {
        let all_docs = documents.iter().flatten().map(|d| d.as_slice());
        let all_examples = examples
            .values()
            .flatten()
            .flat_map(|e| [e.prompt.as_slice(), e.response.as_slice()]);
        let subset =
            VocabSubset::from_tokens(all_docs.chain(all_examples), &[eos], preset.shape.vocab);
        std::fs::create_dir_all(vocab_path.parent().unwrap_or(Path::new(".")))
            .map_err(|e| file_error(&vocab_path, e))?;
        let saved = SavedSubset {
            subset: subset.clone(),
            hidden: preset.shape.hidden,
        };
        let json = serde_json::to_vec(&saved).map_err(|e| file_error(&vocab_path, e))?;
        write_atomically(&vocab_path, &json)?;
        subset
    };
    tracing::info!(rows = subset.len(), "vocabulary subset");
    let index = subset.index(preset.shape.vocab);
    let seq_len = preset.pretrain.seq_len;
    // Languages interleaved in equal shares: one packed stream per language.
    let mut pretrain = Packed::new(seq_len);
    for docs in &documents {
        pretrain.extend(&pack_text(
            docs.iter().map(|d| d.as_slice()),
            eos,
            seq_len,
            &index,
        ));
    }
    let finetune = examples
        .iter()
        .map(|(language, examples)| {
            (
                language.clone(),
                pack_examples(examples, eos, preset.finetune.seq_len, &index),
            )
        })
        .collect();
    let embedding = projected_embedding(workspace, preset, &subset)?;
    Ok(Prepared {
        pretrain,
        finetune,
        subset,
        embedding,
    })
}

fn projected_embedding(
    workspace: &Workspace,
    preset: &Preset,
    subset: &VocabSubset,
) -> Result<Tensor, RecipeError> {
    let path = workspace.embedding(preset);
    if path.is_file() {
        let mut tensors = candle_core::safetensors::load(&path, &Device::Cpu)
            .map_err(|e| file_error(&path, e))?;
        if let Some(embedding) = tensors.remove("embedding") {
            if embedding.dims() == [preset.shape.vocab, preset.shape.hidden] {
                return Ok(embedding);
            }
        }
    }
    tracing::info!(
        hidden = preset.shape.hidden,
        "projecting the target's embedding onto its principal directions"
    );
    let target = init::target_embedding(&workspace.target)?;
    let embedding = init::projected_embedding(&target, &subset.ids, preset.shape.hidden)?;
    let tmp = path.with_extension("tmp");
    candle_core::safetensors::save(
        &[("embedding".to_string(), embedding.clone())]
            .into_iter()
            .collect(),
        &tmp,
    )
    .map_err(|e| file_error(&tmp, e))?;
    std::fs::rename(&tmp, &path).map_err(|e| file_error(&path, e))?;
    Ok(embedding)
}

fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), RecipeError> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).map_err(|e| file_error(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| file_error(path, e))
}

/// A fresh drafter whose embedding rows are the subset's projected rows.
fn fresh(preset: &Preset, prepared: &Prepared, device: &Device) -> Result<Trainable, RecipeError> {
    let ids = Tensor::from_slice(&prepared.subset.ids, prepared.subset.len(), &Device::Cpu)?;
    let rows = prepared
        .embedding
        .index_select(&ids, 0)?
        .to_device(device)?;
    Ok(Trainable::new(&preset.shape, &rows, preset.pretrain.seed)?)
}

/// Which training run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stage {
    /// Pretraining on the corpus of all pretraining languages.
    Pretrain,
    /// Finetuning of the pretrained drafter on one language's distilled answers.
    Finetune(String),
    /// The pretrained drafter trained on for a finetuning's budget on the corpus.
    Generic,
}

impl Stage {
    /// Directory name of the run.
    pub fn run_name(&self) -> String {
        match self {
            Stage::Pretrain => "pretrain".into(),
            Stage::Finetune(language) => format!("finetune-{language}"),
            Stage::Generic => GENERIC_DRAFTER.into(),
        }
    }
}

const FINAL_WEIGHTS: &str = "final.safetensors";

/// Run (or resume) one training stage; a finished stage is not rerun.
pub fn train_stage(
    workspace: &Workspace,
    preset: &Preset,
    prepared: &Prepared,
    stage: &Stage,
    stop_after: Option<usize>,
) -> Result<Option<TrainReport>, RecipeError> {
    let dir = workspace.run(preset, &stage.run_name());
    let done = dir.join(FINAL_WEIGHTS);
    if done.is_file() {
        tracing::info!(run = %stage.run_name(), "already trained; remove {} to train again", dir.display());
        return Ok(None);
    }
    let mut trainable = fresh(preset, prepared, &workspace.device)?;
    let (data, settings) = match stage {
        Stage::Pretrain => (&prepared.pretrain, preset.pretrain.clone()),
        Stage::Finetune(language) => {
            let data = prepared.finetune.get(language).ok_or_else(|| {
                RecipeError::Missing(format!("no distilled answers for {language}"))
            })?;
            (data, preset.finetune.clone())
        }
        Stage::Generic => (
            &prepared.pretrain,
            TrainSettings {
                seq_len: preset.pretrain.seq_len,
                ..preset.finetune.clone()
            },
        ),
    };
    if *stage != Stage::Pretrain {
        let pretrained = workspace
            .run(preset, &Stage::Pretrain.run_name())
            .join(FINAL_WEIGHTS);
        if !pretrained.is_file() {
            return Err(RecipeError::Missing(format!(
                "{} does not exist: run `specdec-train train --stage pretrain` first",
                pretrained.display()
            )));
        }
        trainable.load(&pretrained)?;
    }
    let report = trainer::train(
        &mut trainable,
        data,
        &settings,
        &dir,
        &stage.run_name(),
        stop_after,
    )?;
    if report.steps == settings.steps {
        trainable.save(&done)?;
        let json = serde_json::to_vec_pretty(&report).map_err(|e| file_error(&dir, e))?;
        write_atomically(&dir.join("report.json"), &json)?;
    }
    tracing::info!(
        run = %stage.run_name(),
        steps = report.steps,
        final_loss = format!("{:.3}", report.final_loss),
        tokens_per_second = format!("{:.0}", report.tokens_per_second),
        seconds_per_step = format!("{:.2}", report.seconds_per_step),
        "trained"
    );
    Ok(Some(report))
}

/// Export every trained drafter of the preset into the model directory's
/// `drafters/`, and write the registry that serves them.
pub fn export_all(
    workspace: &Workspace,
    preset: &Preset,
    prepared: &Prepared,
) -> Result<Vec<export::ExportSummary>, RecipeError> {
    let out = workspace.drafters();
    std::fs::create_dir_all(&out).map_err(|e| file_error(&out, e))?;
    let mut summaries = Vec::new();
    let mut names: Vec<String> = preset.languages.clone();
    names.push(GENERIC_DRAFTER.into());
    for name in &names {
        let stage = if name == GENERIC_DRAFTER {
            Stage::Generic
        } else {
            Stage::Finetune(name.clone())
        };
        let (weights, embedding) = trained(workspace, preset, prepared, &stage)?;
        let path = out.join(format!("{name}.gguf"));
        let summary = export::write_gguf(
            &path,
            &preset.shape,
            &weights,
            &embedding,
            &workspace.target,
            preset.weight_type,
            &format!("specdec drafter {name}"),
        )?;
        tracing::info!(file = %summary.path.display(), bytes = summary.bytes, "exported");
        summaries.push(summary);
    }
    let registry = registry(workspace, preset);
    let yaml = registry.to_yaml().map_err(|e| file_error(&out, e))?;
    write_atomically(&out.join(TRAINED_REGISTRY_FILE), yaml.as_bytes())?;
    Ok(summaries)
}

/// A finished stage's weights on the CPU, by GGUF name (layers only), and
/// the full embedding (the subset's rows trained, the others projected).
pub fn trained(
    workspace: &Workspace,
    preset: &Preset,
    prepared: &Prepared,
    stage: &Stage,
) -> Result<(BTreeMap<String, Tensor>, Tensor), RecipeError> {
    let weights_path = workspace.run(preset, &stage.run_name()).join(FINAL_WEIGHTS);
    if !weights_path.is_file() {
        return Err(RecipeError::Missing(format!(
            "{} does not exist: train `{}` first",
            weights_path.display(),
            stage.run_name()
        )));
    }
    let mut trainable = fresh(preset, prepared, &Device::Cpu)?;
    trainable.load(&weights_path)?;
    let mut weights = trainable.weights()?;
    let rows = weights
        .remove(EMBEDDING_ROWS)
        .ok_or_else(|| RecipeError::Missing("the embedding rows are missing".into()))?;
    let embedding = full_embedding(&prepared.embedding, &prepared.subset, &rows)?;
    Ok((weights, embedding))
}

/// The full embedding with the subset's rows replaced by the trained ones.
pub fn full_embedding(
    projected: &Tensor,
    subset: &VocabSubset,
    rows: &Tensor,
) -> Result<Tensor, RecipeError> {
    let (vocab, hidden) = projected.dims2()?;
    let mut full: Vec<f32> = projected.flatten_all()?.to_vec1()?;
    let trained: Vec<f32> = rows.to_device(&Device::Cpu)?.flatten_all()?.to_vec1()?;
    for (row, &id) in subset.ids.iter().enumerate() {
        let id = id as usize;
        full[id * hidden..(id + 1) * hidden]
            .copy_from_slice(&trained[row * hidden..(row + 1) * hidden]);
    }
    Ok(Tensor::from_vec(full, (vocab, hidden), &Device::Cpu)?)
}

/// Name of the 0.5B drafter in the registry of trained drafters.
pub const BASELINE_CANDIDATE: &str = "qwen-0.5b";

/// The registry serving the trained drafters: each language its specialised
/// drafter and, where the model directory has it, the 0.5B drafter as a
/// second candidate; the generic drafter for every other language. Paths
/// are relative to the model directory.
pub fn registry(workspace: &Workspace, preset: &Preset) -> RegistryConfig {
    let draft = DraftParams::default();
    let mut drafters: Vec<DrafterConfig> = preset
        .languages
        .iter()
        .map(|language| DrafterConfig {
            name: language.clone(),
            kind: DrafterKind::Model,
            languages: vec![language.clone()],
            model: Some(PathBuf::from(TRAINED_DRAFTERS_DIR).join(format!("{language}.gguf"))),
            gpu_layers: workspace.gpu_layers,
            draft,
        })
        .collect();
    // The 0.5B drafter as a second candidate for the same languages: the
    // engine's bandit keeps whichever yields more tokens per second.
    if workspace
        .model_dir
        .join(models::DEFAULT_DRAFTER_FILE)
        .is_file()
    {
        drafters.push(DrafterConfig {
            name: BASELINE_CANDIDATE.into(),
            kind: DrafterKind::Model,
            languages: preset.languages.clone(),
            model: Some(PathBuf::from(models::DEFAULT_DRAFTER_FILE)),
            gpu_layers: workspace.gpu_layers,
            draft,
        });
    }
    drafters.push(DrafterConfig {
        name: GENERIC_DRAFTER.into(),
        kind: DrafterKind::Model,
        languages: vec!["*".into()],
        model: Some(PathBuf::from(TRAINED_DRAFTERS_DIR).join(format!("{GENERIC_DRAFTER}.gguf"))),
        gpu_layers: workspace.gpu_layers,
        draft,
    });
    let target_file = workspace
        .target
        .file_name()
        .map_or_else(|| workspace.target.clone(), PathBuf::from);
    RegistryConfig {
        target: TargetConfig {
            model: target_file,
            context: 4096,
            gpu_layers: workspace.gpu_layers,
        },
        drafters,
        default: Some(GENERIC_DRAFTER.into()),
    }
}
