//! `specdec-train`: the recipe of language-specialised drafters as commands.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use clap::{Parser, Subcommand};
use specdec_backend::models;
use specdec_train::corpus;
use specdec_train::distill::{self, DistillOptions};
use specdec_train::eval::{self, EvalOptions};
use specdec_train::recipe::{self, Preset, PresetName, Stage, Workspace};
use specdec_train::sweep;
use specdec_train::tokenizer::Tokenizer;

/// Train drafters specialised per language for specdec: corpus,
/// self-distillation, pretraining and finetuning, GGUF export, evaluation.
#[derive(Parser, Debug)]
#[command(name = "specdec-train", version)]
struct Cli {
    #[command(flatten)]
    common: Common,
    #[command(subcommand)]
    command: Command,
}

/// Settings every subcommand reads.
#[derive(clap::Args, Debug)]
struct Common {
    /// Settings of the whole recipe: `smoke` (minutes), `quick` (about an
    /// hour on a 2-core CPU), `full` (a GPU).
    #[arg(
        long,
        global = true,
        env = "SPECDEC_TRAIN_PRESET",
        value_enum,
        default_value = "quick"
    )]
    preset: PresetName,
    /// Work directory: corpus, distilled answers, checkpoints.
    #[arg(long, global = true, env = "SPECDEC_TRAIN_DIR")]
    work: Option<PathBuf>,
    /// Model directory: the target is read from it, drafters are written to its `drafters/`.
    #[arg(long, global = true, env = "SPECDEC_MODEL_DIR")]
    model_dir: Option<PathBuf>,
    /// The target model (default: the default target in the model directory).
    #[arg(long, global = true)]
    target: Option<PathBuf>,
    /// CPU threads of llama.cpp (distillation, evaluation).
    #[arg(long, global = true, env = "SPECDEC_THREADS")]
    threads: Option<u32>,
    /// Layers of the target offloaded to a GPU (distillation, evaluation).
    #[arg(long, global = true, default_value_t = 0)]
    gpu_layers: u32,
    /// Train on the GPU (builds with `--features cuda`).
    #[arg(long, global = true)]
    cuda: bool,
    /// Override the preset's languages (ISO 639-1, comma-separated).
    #[arg(long, global = true, value_delimiter = ',')]
    languages: Option<Vec<String>>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Build the multilingual corpus from Debian's handbook and manual pages.
    Corpus {
        /// Rebuild even if the manifest matches.
        #[arg(long)]
        force: bool,
    },
    /// Have the target answer prompts built from the corpus (resumable).
    Distill,
    /// Train one stage (resumable from its last checkpoint).
    Train {
        /// `pretrain`, `finetune` (with --language) or `generic`.
        #[arg(long, value_enum)]
        stage: StageName,
        /// Language of a finetuning.
        #[arg(long)]
        language: Option<String>,
        /// Stop after this many steps (checkpointed), to resume later.
        #[arg(long)]
        stop_after: Option<usize>,
    },
    /// Export the trained drafters as GGUF, and their registry file.
    Export,
    /// Measure acceptance and cost of the specialised, generic and 0.5B drafters on held-out prompts.
    Eval {
        /// Directory of the Debian Reference (held-out prompts).
        #[arg(long, default_value = specdec_bench::corpus::DEFAULT_DIR)]
        reference: PathBuf,
        /// Where the JSON, Markdown and PNG go.
        #[arg(long, default_value = "train/results")]
        out: PathBuf,
    },
    /// Measure candidate drafter shapes (depth 1/2/4, 1.5x width): each
    /// pretrained and finetuned for one language, its acceptance on held-out
    /// prompts and its draft-step cost in llama.cpp.
    Sweep {
        /// Language of the finetuning and of the held-out prompts.
        #[arg(long, default_value = "de")]
        language: String,
        /// Directory of the Debian Reference (held-out prompts).
        #[arg(long, default_value = specdec_bench::corpus::DEFAULT_DIR)]
        reference: PathBuf,
        /// Where `shapes-<preset>.{json,md}` go.
        #[arg(long, default_value = "train/results")]
        out: PathBuf,
    },
    /// Run every stage in order: corpus, distill, train, export, eval.
    Quick {
        /// Directory of the Debian Reference (held-out prompts).
        #[arg(long, default_value = specdec_bench::corpus::DEFAULT_DIR)]
        reference: PathBuf,
        /// Where the evaluation's JSON, Markdown and PNG go.
        #[arg(long, default_value = "train/results")]
        out: PathBuf,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum StageName {
    Pretrain,
    Finetune,
    Generic,
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    if let Err(e) = run(cli) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let (workspace, preset) = settings(&cli.common)?;
    match cli.command {
        Command::Corpus { force } => corpus_stage(&workspace, &preset, force),
        Command::Distill => distill_stage(&workspace, &preset),
        Command::Train {
            stage,
            language,
            stop_after,
        } => {
            let stage = match (stage, language) {
                (StageName::Pretrain, None) => Stage::Pretrain,
                (StageName::Generic, None) => Stage::Generic,
                (StageName::Finetune, Some(language)) => {
                    if !preset.languages.contains(&language) {
                        anyhow::bail!(
                            "{language} is not among the preset's languages {:?} (set --languages)",
                            preset.languages
                        );
                    }
                    Stage::Finetune(language)
                }
                (StageName::Finetune, None) => anyhow::bail!("--stage finetune needs --language"),
                (_, Some(_)) => anyhow::bail!("--language applies to --stage finetune only"),
            };
            let tokenizer = Tokenizer::load(&workspace.target)?;
            let prepared = recipe::prepare(&workspace, &preset, &tokenizer)?;
            recipe::train_stage(&workspace, &preset, &prepared, &stage, stop_after)?;
            Ok(())
        }
        Command::Export => {
            let tokenizer = Tokenizer::load(&workspace.target)?;
            let prepared = recipe::prepare(&workspace, &preset, &tokenizer)?;
            recipe::export_all(&workspace, &preset, &prepared)?;
            Ok(())
        }
        Command::Eval { reference, out } => eval_stage(&workspace, &preset, &reference, &out),
        Command::Sweep {
            language,
            reference,
            out,
        } => {
            if !preset.languages.contains(&language) {
                anyhow::bail!(
                    "{language} is not among the preset's languages {:?} (set --languages)",
                    preset.languages
                );
            }
            let options = sweep::SweepOptions {
                language,
                shapes: sweep::candidates(&preset.shape),
                // Twice the evaluation's prompts: acceptance here needs no engine runs.
                prompts: preset.eval_prompts * 2,
                max_tokens: preset.eval_max_tokens,
                draft_length: preset.eval_draft_length,
                reference,
                out,
            };
            let report = sweep::run(&workspace, &preset, &options)?;
            println!("{}", sweep::markdown(&report));
            Ok(())
        }
        Command::Quick { reference, out } => {
            let started = Instant::now();
            let mut times = Vec::new();
            let mut timed = |name: &str, started_stage: Instant| {
                times.push((name.to_string(), started_stage.elapsed().as_secs_f64()));
            };
            let t = Instant::now();
            corpus_stage(&workspace, &preset, false)?;
            timed("corpus", t);
            let t = Instant::now();
            distill_stage(&workspace, &preset)?;
            timed("distill", t);
            let tokenizer = Tokenizer::load(&workspace.target)?;
            let t = Instant::now();
            let prepared = recipe::prepare(&workspace, &preset, &tokenizer)?;
            timed("prepare", t);
            let mut stages = vec![Stage::Pretrain];
            stages.extend(preset.languages.iter().cloned().map(Stage::Finetune));
            stages.push(Stage::Generic);
            for stage in &stages {
                let t = Instant::now();
                recipe::train_stage(&workspace, &preset, &prepared, stage, None)?;
                timed(&stage.run_name(), t);
            }
            let t = Instant::now();
            recipe::export_all(&workspace, &preset, &prepared)?;
            timed("export", t);
            drop(prepared);
            let t = Instant::now();
            eval_stage(&workspace, &preset, &reference, &out)?;
            timed("eval", t);
            for (name, seconds) in &times {
                tracing::info!(stage = %name, seconds = format!("{seconds:.0}"), "stage time");
            }
            tracing::info!(
                seconds = format!("{:.0}", started.elapsed().as_secs_f64()),
                "the whole recipe"
            );
            Ok(())
        }
    }
}

fn settings(common: &Common) -> anyhow::Result<(Workspace, Preset)> {
    let model_dir = common.model_dir.clone().unwrap_or_else(models::model_dir);
    let target = common
        .target
        .clone()
        .unwrap_or_else(|| model_dir.join(models::DEFAULT_TARGET_FILE));
    let root = common.work.clone().unwrap_or_else(|| {
        model_dir
            .parent()
            .map_or_else(|| PathBuf::from("train-work"), |p| p.join("train"))
    });
    let device = if common.cuda {
        candle_core::Device::new_cuda(0)
            .context("--cuda: no usable GPU (was it built with --features cuda?)")?
    } else {
        candle_core::Device::Cpu
    };
    let mut preset = Preset::of(common.preset);
    if let Some(languages) = &common.languages {
        for language in languages {
            if !specdec_backend::config::is_iso639_1(language) {
                anyhow::bail!("--languages: `{language}` is not an ISO 639-1 code");
            }
        }
        preset.languages = languages.clone();
        for language in languages {
            if !preset.pretrain_languages.contains(language) {
                preset.pretrain_languages.push(language.clone());
            }
        }
    }
    let workspace = Workspace {
        root,
        target,
        model_dir,
        threads: common
            .threads
            .unwrap_or_else(specdec_backend::engine::default_threads),
        gpu_layers: common.gpu_layers,
        device,
    };
    Ok((workspace, preset))
}

fn corpus_stage(workspace: &Workspace, preset: &Preset, force: bool) -> anyhow::Result<()> {
    let tokenizer = Tokenizer::load(&workspace.target)?;
    let mut languages = preset.pretrain_languages.clone();
    for language in &preset.languages {
        if !languages.contains(language) {
            languages.push(language.clone());
        }
    }
    let mut options = corpus::CorpusOptions::new(workspace.corpus());
    options.languages = Some(languages);
    options.force = force;
    let manifest = corpus::build(&options, &tokenizer)?;
    tracing::info!(
        languages = manifest.languages.len(),
        dir = %workspace.corpus().display(),
        "corpus ready"
    );
    Ok(())
}

fn distill_stage(workspace: &Workspace, preset: &Preset) -> anyhow::Result<()> {
    let tokenizer = Tokenizer::load(&workspace.target)?;
    let options = DistillOptions {
        corpus: workspace.corpus(),
        out: workspace.distill(preset),
        languages: preset.languages.clone(),
        per_language: preset.distill_per_language,
        kinds: preset.distill_kinds.clone(),
        temperatures: preset.distill_temperatures.clone(),
        max_tokens: preset.distill_max_tokens,
        paragraph_chars: (150, 600),
        seed: preset.pretrain.seed,
        target: workspace.target.clone(),
        threads: workspace.threads,
        sequences: preset.distill_sequences,
        gpu_layers: workspace.gpu_layers,
    };
    let report = distill::run(&options, &tokenizer)?;
    let path = workspace.distill(preset).join("report.json");
    std::fs::write(&path, serde_json::to_vec_pretty(&report)?)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

fn eval_stage(
    workspace: &Workspace,
    preset: &Preset,
    reference: &std::path::Path,
    out: &std::path::Path,
) -> anyhow::Result<()> {
    let options = EvalOptions {
        languages: preset.languages.clone(),
        prompts_per_language: preset.eval_prompts,
        max_tokens: preset.eval_max_tokens,
        draft_length: preset.eval_draft_length,
        reference: reference.to_path_buf(),
        out: out.to_path_buf(),
        preset: preset.name,
        shape: preset.shape.clone(),
        workspace: workspace.clone(),
    };
    let report = eval::run(&options)?;
    println!("{}", eval::markdown(&report));
    Ok(())
}
