//! Choosing the drafter's shape by measurement: draft-step cost against
//! acceptance.
//!
//! Each candidate shape is pretrained and finetuned for one language with
//! the preset's data and steps. Acceptance is measured on held-out prompts
//! (the evaluation's Debian Reference translation prompts) against the
//! target's greedy answers: with the answer as context, the drafter's greedy
//! choice at each position either equals the target's next token or not,
//! and greedy speculative decoding with draft length k accepts exactly the
//! run of equal choices from each round's start (at most k), so rounds, τ
//! and acceptance follow from that sequence without running the engine.
//! The draft step's cost is timed in llama.cpp on the exported GGUF (logits
//! read back, as the engine does), against the target's single-token step
//! and its (k+1)-token verification pass.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{DType, Device, Tensor, D};
use candle_nn::VarBuilder;
use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::token::LlamaToken;
use serde::Serialize;
use specdec_backend::engine::runtime::backend;

use crate::batched::{self, GeneratorSettings, Job};
use crate::eval::{self, TARGET_LAYERS};
use crate::export;
use crate::model::{self, Drafter, Shape};
use crate::recipe::{self, file_error, Preset, RecipeError, Stage, Workspace};
use crate::tokenizer::Tokenizer;

/// Single-token steps timed per model (after warm-up), median taken.
const TIMED_STEPS: usize = 48;

/// What `sweep` does.
#[derive(Debug, Clone)]
pub struct SweepOptions {
    /// Language of the finetuning and of the held-out prompts.
    pub language: String,
    /// Candidate shapes, by label.
    pub shapes: Vec<(String, Shape)>,
    /// Held-out prompts.
    pub prompts: usize,
    /// Longest held-out answer, in tokens.
    pub max_tokens: usize,
    /// Draft length k.
    pub draft_length: usize,
    /// Directory of the Debian Reference.
    pub reference: PathBuf,
    /// Where `shapes-<preset>.{json,md}` go.
    pub out: PathBuf,
}

/// One candidate shape, measured.
#[derive(Debug, Clone, Serialize)]
pub struct ShapeResult {
    /// Label, e.g. `2x256`.
    pub label: String,
    /// The shape.
    pub shape: Shape,
    /// Parameters outside the embedding.
    pub layer_parameters: usize,
    /// Seconds per pretraining step.
    pub pretrain_seconds_per_step: f64,
    /// Final finetuning loss.
    pub finetune_loss: f64,
    /// Share of answer positions where the drafter's greedy choice is the
    /// target's token (the acceptance of a round's first draft).
    pub top1_agreement: f64,
    /// Accepted / drafted at draft length k.
    pub acceptance_rate: f64,
    /// Tokens per round at draft length k.
    pub tau: f64,
    /// Milliseconds per draft step in llama.cpp.
    pub draft_ms: f64,
    /// Draft step over the target's single-token step.
    pub cost_ratio: f64,
    /// τ / (k · cost + verification cost), the CPU's measured costs.
    pub speedup_cpu: f64,
    /// τ / (k · layers/28 + 1), the GPU cost model.
    pub speedup_gpu_model: f64,
}

/// The sweep.
#[derive(Debug, Clone, Serialize)]
pub struct SweepReport {
    /// Language.
    pub language: String,
    /// Draft length.
    pub draft_length: usize,
    /// Held-out prompts and answer tokens.
    pub prompts: usize,
    /// Answer tokens over all prompts.
    pub answer_tokens: usize,
    /// Target single-token step, ms.
    pub target_ms: f64,
    /// Target pass over k+1 tokens over its single-token step.
    pub verify_cost: f64,
    /// CPU of this machine.
    pub cpu: String,
    /// The candidates.
    pub shapes: Vec<ShapeResult>,
}

/// The candidates around a preset's shape: depth 1, 2 and 4 at its width,
/// and 1.5 times its width at depth 2.
pub fn candidates(base: &Shape) -> Vec<(String, Shape)> {
    let label = |s: &Shape| format!("{}x{}", s.layers, s.hidden);
    let wider = Shape {
        hidden: base.hidden * 3 / 2,
        heads: base.heads * 3 / 2,
        intermediate: base.intermediate * 3 / 2,
        layers: 2,
        ..base.clone()
    };
    let mut shapes: Vec<Shape> = [1, 2, 4]
        .into_iter()
        .map(|layers| Shape {
            layers,
            ..base.clone()
        })
        .collect();
    shapes.push(wider);
    shapes.into_iter().map(|s| (label(&s), s)).collect()
}

/// The rounds of greedy speculative decoding with draft length `k` along an
/// answer, given whether the drafter's choice equals the target's token at
/// each position: (rounds, drafted, accepted).
pub fn simulate_rounds(matches: &[bool], k: usize) -> (usize, usize, usize) {
    let (mut position, mut rounds, mut drafted, mut accepted) = (0, 0, 0, 0);
    while position < matches.len() {
        // The last round drafts only up to the answer's end.
        let room = k.min(matches.len() - position);
        let run = matches[position..position + room]
            .iter()
            .take_while(|&&m| m)
            .count();
        rounds += 1;
        drafted += room;
        accepted += run;
        position += run + 1;
    }
    (rounds, drafted, accepted)
}

/// Run the sweep.
pub fn run(
    workspace: &Workspace,
    preset: &Preset,
    options: &SweepOptions,
) -> Result<SweepReport, RecipeError> {
    let tokenizer = Tokenizer::load(&workspace.target)?;
    let heldout = heldout_answers(workspace, options, &tokenizer)?;
    let answer_tokens: usize = heldout.iter().map(|(_, a)| a.len()).sum();
    let timing_prompt: Vec<u32> = heldout
        .first()
        .map(|(p, _)| p.iter().copied().take(64).collect())
        .unwrap_or_default();
    let [target_ms, verify_ms] = pass_ms(
        &workspace.target,
        workspace.threads,
        &timing_prompt,
        [1, options.draft_length + 1],
    )?;
    let mut results = Vec::new();
    for (label, shape) in &options.shapes {
        let candidate = Preset {
            shape: shape.clone(),
            ..preset.clone()
        };
        // The preset's own shape is the recipe's run; others get their own work directory.
        let ws = if *shape == preset.shape {
            workspace.clone()
        } else {
            sweep_workspace(workspace, preset, label)?
        };
        let prepared = recipe::prepare(&ws, &candidate, &tokenizer)?;
        recipe::train_stage(&ws, &candidate, &prepared, &Stage::Pretrain, None)?;
        let finetune = Stage::Finetune(options.language.clone());
        recipe::train_stage(&ws, &candidate, &prepared, &finetune, None)?;
        let (weights, embedding) = recipe::trained(&ws, &candidate, &prepared, &finetune)?;
        let pretrain_seconds_per_step =
            report_value(&ws, &candidate, &Stage::Pretrain, "seconds_per_step");
        let finetune_loss = report_value(&ws, &candidate, &finetune, "final_loss");
        drop(prepared);

        let drafter = Drafter::new(
            shape,
            VarBuilder::from_tensors(
                weights.clone().into_iter().collect::<HashMap<_, _>>(),
                DType::F32,
                &Device::Cpu,
            ),
        )?;
        let (mut rounds, mut drafted, mut accepted, mut agreeing) = (0, 0, 0, 0);
        for (prompt, answer) in &heldout {
            let matches = greedy_matches(&drafter, &embedding, prompt, answer)?;
            let (r, d, a) = simulate_rounds(&matches, options.draft_length);
            rounds += r;
            drafted += d;
            accepted += a;
            agreeing += matches.iter().filter(|&&m| m).count();
        }
        let gguf = ws.root.join(format!("sweep-{label}.gguf"));
        export::write_gguf(
            &gguf,
            shape,
            &weights,
            &embedding,
            &workspace.target,
            preset.weight_type,
            &format!("specdec sweep {label}"),
        )?;
        let [draft_ms] = pass_ms(&gguf, workspace.threads, &timing_prompt, [1])?;
        let _ = std::fs::remove_file(&gguf);
        let k = options.draft_length as f64;
        let tau = answer_tokens as f64 / rounds.max(1) as f64;
        let cost_ratio = draft_ms / target_ms;
        let result = ShapeResult {
            label: label.clone(),
            shape: shape.clone(),
            layer_parameters: shape.layer_parameters(),
            pretrain_seconds_per_step,
            finetune_loss,
            top1_agreement: agreeing as f64 / answer_tokens.max(1) as f64,
            acceptance_rate: accepted as f64 / drafted.max(1) as f64,
            tau,
            draft_ms,
            cost_ratio,
            speedup_cpu: tau / (k * cost_ratio + verify_ms / target_ms),
            speedup_gpu_model: tau / (k * shape.layers as f64 / TARGET_LAYERS + 1.0),
        };
        tracing::info!(
            shape = %label,
            acceptance = format!("{:.3}", result.acceptance_rate),
            tau = format!("{:.3}", result.tau),
            cost = format!("{:.3}", result.cost_ratio),
            "measured"
        );
        results.push(result);
    }
    let report = SweepReport {
        language: options.language.clone(),
        draft_length: options.draft_length,
        prompts: heldout.len(),
        answer_tokens,
        target_ms,
        verify_cost: verify_ms / target_ms,
        cpu: specdec_bench::report::cpu_name(),
        shapes: results,
    };
    write_reports(&report, preset, &options.out)?;
    Ok(report)
}

/// A work directory for a candidate shape that shares the recipe's corpus
/// and distilled answers (links), with its own subset, embedding and runs.
fn sweep_workspace(
    workspace: &Workspace,
    preset: &Preset,
    label: &str,
) -> Result<Workspace, RecipeError> {
    let root = workspace.root.join("sweep").join(label);
    std::fs::create_dir_all(&root).map_err(|e| file_error(&root, e))?;
    let ws = Workspace {
        root,
        ..workspace.clone()
    };
    for (shared, linked) in [
        (workspace.corpus(), ws.corpus()),
        (workspace.distill(preset), ws.distill(preset)),
    ] {
        if !linked.exists() {
            std::os::unix::fs::symlink(&shared, &linked).map_err(|e| file_error(&linked, e))?;
        }
    }
    Ok(ws)
}

fn report_value(ws: &Workspace, preset: &Preset, stage: &Stage, key: &str) -> f64 {
    let path = ws.run(preset, &stage.run_name()).join("report.json");
    std::fs::read(&path)
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|v| v[key].as_f64())
        .unwrap_or(f64::NAN)
}

/// A held-out prompt's tokens and the target's greedy answer to it.
type PromptAnswer = (Vec<u32>, Vec<u32>);

/// The held-out prompts and the target's greedy answers (cached in the work directory).
fn heldout_answers(
    workspace: &Workspace,
    options: &SweepOptions,
    tokenizer: &Tokenizer,
) -> Result<Vec<PromptAnswer>, RecipeError> {
    let cache = workspace.root.join("sweep").join(format!(
        "heldout-{}-{}x{}.json",
        options.language, options.prompts, options.max_tokens
    ));
    if let Ok(bytes) = std::fs::read(&cache) {
        if let Ok(pairs) = serde_json::from_slice(&bytes) {
            return Ok(pairs);
        }
    }
    let mut prompts = Vec::new();
    for user in eval::heldout_prompts(&options.reference, &options.language, options.prompts)
        .map_err(|e| file_error(&options.reference, e))?
    {
        prompts.push(tokenizer.encode(&tokenizer.chat_prompt(&user)?, true)?);
    }
    let jobs: Vec<Job> = prompts
        .iter()
        .map(|prompt| Job {
            prompt: prompt.clone(),
            temperature: 0.0,
            seed: 0,
        })
        .collect();
    // One sequence at a time: the answers are the target's plain greedy ones.
    let settings = GeneratorSettings {
        target: workspace.target.clone(),
        sequences: 1,
        max_tokens: options.max_tokens,
        max_prompt: prompts.iter().map(Vec::len).max().unwrap_or(1),
        threads: workspace.threads,
        gpu_layers: workspace.gpu_layers,
    };
    let mut answers = vec![Vec::new(); jobs.len()];
    batched::generate(&settings, &jobs, |index, answer| {
        answers[index] = answer.tokens;
        Ok(())
    })
    .map_err(|e| file_error(&workspace.target, e))?;
    let pairs: Vec<PromptAnswer> = prompts.into_iter().zip(answers).collect();
    if let Some(dir) = cache.parent() {
        std::fs::create_dir_all(dir).map_err(|e| file_error(dir, e))?;
    }
    let json = serde_json::to_vec(&pairs).map_err(|e| file_error(&cache, e))?;
    std::fs::write(&cache, json).map_err(|e| file_error(&cache, e))?;
    Ok(pairs)
}

/// Whether the drafter's greedy choice equals each answer token, with the
/// prompt and the answer before it as context.
fn greedy_matches(
    drafter: &Drafter,
    embedding: &Tensor,
    prompt: &[u32],
    answer: &[u32],
) -> Result<Vec<bool>, RecipeError> {
    if answer.is_empty() || prompt.is_empty() {
        return Ok(Vec::new());
    }
    let mut tokens = prompt.to_vec();
    tokens.extend_from_slice(&answer[..answer.len() - 1]);
    let input = Tensor::from_slice(&tokens, (1, tokens.len()), &Device::Cpu)?;
    let hidden = drafter.forward_hidden(embedding, &input)?;
    let hidden = hidden.narrow(1, prompt.len() - 1, answer.len())?;
    let choices: Vec<u32> = model::logits(&hidden, embedding)?
        .argmax(D::Minus1)?
        .squeeze(0)?
        .to_vec1()?;
    Ok(choices.iter().zip(answer).map(|(c, a)| c == a).collect())
}

/// For each pass size, the median milliseconds of one llama.cpp pass over
/// that many tokens after `prompt`, logits read back; the model is loaded once.
fn pass_ms<const N: usize>(
    path: &Path,
    threads: u32,
    prompt: &[u32],
    tokens_per_pass: [usize; N],
) -> Result<[f64; N], RecipeError> {
    let fail = |e: String| file_error(path, e);
    let backend = backend().map_err(|e| fail(e.to_string()))?;
    let model = LlamaModel::load_from_file(backend, path, &LlamaModelParams::default())
        .map_err(|e| fail(e.to_string()))?;
    let threads = i32::try_from(threads.max(1)).unwrap_or(1);
    let params = LlamaContextParams::default()
        .with_n_ctx(NonZeroU32::new(1024))
        .with_n_batch(512)
        .with_n_threads(threads)
        .with_n_threads_batch(threads);
    let mut ctx = model
        .new_context(backend, params)
        .map_err(|e| fail(e.to_string()))?;
    let mut batch = LlamaBatch::new(512, 1);
    let prompt: Vec<u32> = if prompt.is_empty() {
        vec![0]
    } else {
        prompt.to_vec()
    };
    for (i, &t) in prompt.iter().enumerate() {
        batch
            .add(LlamaToken(t as i32), i as i32, &[0], i + 1 == prompt.len())
            .map_err(|e| fail(e.to_string()))?;
    }
    ctx.decode(&mut batch).map_err(|e| fail(e.to_string()))?;
    let start = prompt.len();
    let mut medians = [0.0; N];
    for (median, tokens_per_pass) in medians.iter_mut().zip(tokens_per_pass) {
        let mut times = Vec::with_capacity(TIMED_STEPS);
        for step in 0..TIMED_STEPS + 4 {
            batch.clear();
            for i in 0..tokens_per_pass {
                let token = prompt[(step + i) % prompt.len()];
                batch
                    .add(
                        LlamaToken(token as i32),
                        (start + i) as i32,
                        &[0],
                        i + 1 == tokens_per_pass,
                    )
                    .map_err(|e| fail(e.to_string()))?;
            }
            let t = Instant::now();
            ctx.decode(&mut batch).map_err(|e| fail(e.to_string()))?;
            // Reading the logits waits for the backend to finish the pass.
            let logits = ctx.get_logits_ith(tokens_per_pass as i32 - 1);
            std::hint::black_box(logits.first());
            let elapsed = t.elapsed().as_secs_f64() * 1000.0;
            ctx.clear_kv_cache_seq(Some(0), Some(start as u32), None)
                .map_err(|e| fail(e.to_string()))?;
            if step >= 4 {
                times.push(elapsed);
            }
        }
        times.sort_by(f64::total_cmp);
        *median = times[times.len() / 2];
    }
    Ok(medians)
}

/// The sweep as Markdown.
pub fn markdown(report: &SweepReport) -> String {
    let mut md = format!(
        "# Drafter shape: cost against acceptance ({})\n\nEach shape pretrained and finetuned for {} with the preset's data and steps; acceptance of greedy drafting at k = {} on {} held-out prompts ({} target answer tokens), from the drafter's choices along the target's answers. Costs timed in llama.cpp on this CPU ({}): target step {:.1} ms, its {}-token verification pass {:.2} target steps. CPU speedup = τ / (k · cost + verification); GPU model = τ / (k · layers/28 + 1).\n\n",
        report.language,
        report.language,
        report.draft_length,
        report.prompts,
        report.answer_tokens,
        report.cpu,
        report.target_ms,
        report.draft_length + 1,
        report.verify_cost
    );
    md.push_str("| shape | layer params | s/step (pretrain) | finetune loss | top-1 agreement | acceptance | τ | draft ms | cost vs target | speedup CPU | speedup GPU (model) |\n");
    md.push_str("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for s in &report.shapes {
        md.push_str(&format!(
            "| {} | {:.2} M | {:.2} | {:.3} | {:.3} | {:.3} | {:.3} | {:.2} | {:.3} | {:.2}× | {:.2}× |\n",
            s.label,
            s.layer_parameters as f64 / 1e6,
            s.pretrain_seconds_per_step,
            s.finetune_loss,
            s.top1_agreement,
            s.acceptance_rate,
            s.tau,
            s.draft_ms,
            s.cost_ratio,
            s.speedup_cpu,
            s.speedup_gpu_model
        ));
    }
    md
}

fn write_reports(report: &SweepReport, preset: &Preset, out: &Path) -> Result<(), RecipeError> {
    std::fs::create_dir_all(out).map_err(|e| file_error(out, e))?;
    let stem = format!("shapes-{}", recipe::preset_dir(preset.name));
    let json_path = out.join(format!("{stem}.json"));
    let json = serde_json::to_vec_pretty(report).map_err(|e| file_error(&json_path, e))?;
    std::fs::write(&json_path, json).map_err(|e| file_error(&json_path, e))?;
    let md_path = out.join(format!("{stem}.md"));
    std::fs::write(&md_path, markdown(report)).map_err(|e| file_error(&md_path, e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounds_accept_the_run_of_matches_up_to_k() {
        let m = [true, true, true, false, true, false];
        // Round 1 at 0: drafts 2, accepts 2, emits 3 tokens -> position 3.
        // Round 2 at 3: drafts 2 (F, T), accepts 0 -> position 4.
        // Round 3 at 4: drafts 2 (T, F), accepts 1 -> position 6.
        assert_eq!(simulate_rounds(&m, 2), (3, 6, 3));
        // Every token matches: rounds of k + 1 tokens, the last one short.
        assert_eq!(simulate_rounds(&[true; 7], 3), (2, 6, 6));
        // Nothing matches: one round per token.
        assert_eq!(simulate_rounds(&[false; 4], 4), (4, 4 + 3 + 2 + 1, 0));
        assert_eq!(simulate_rounds(&[], 4), (0, 0, 0));
    }

    #[test]
    fn candidates_span_depth_and_width() {
        let base = Preset::of(recipe::PresetName::Quick).shape;
        let labels: Vec<String> = candidates(&base).into_iter().map(|(l, _)| l).collect();
        assert_eq!(labels, ["1x256", "2x256", "4x256", "2x384"]);
        for (_, shape) in candidates(&base) {
            shape.validate().unwrap();
        }
    }
}
