//! Held-out evaluation: for each language, the benchmark's translation
//! prompts over Debian Reference paragraphs (which no stage trains on) are
//! answered greedily by the target alone and with each drafter at a fixed
//! draft length, through specdec's engine. Reported per drafter: acceptance
//! rate, τ (mean tokens per round, the target's own token included), the
//! draft step's cost, the measured speedup on this machine, and the speedup
//! a GPU cost model implies. Every speculative answer must equal the
//! target-only answer token for token; a difference is an error.
//!
//! GPU cost model: at batch size one a GPU is latency-bound, so a target
//! pass over k+1 tokens costs about one single-token pass, and a model's
//! step costs in proportion to its depth (each layer is a fixed number of
//! kernel launches); a draft step costs c = drafter layers / target layers of
//! a target step, and speculation yields τ tokens per round of cost
//! k·c + 1, a speedup of τ / (k·c + 1).

use std::path::{Path, PathBuf};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use specdec_backend::config::{DraftParams, DrafterConfig, DrafterKind, TargetConfig};
use specdec_backend::engine::{
    DrafterChoice, Engine, EngineConfig, GenerationRequest, GenerationStats, Prompt,
};
use specdec_backend::models::{self, GENERIC_DRAFTER};
use specdec_bench::chart::{self, BarChart, Series};
use specdec_bench::corpus::{self as reference_corpus, Selection};
use specdec_bench::tasks::Task;

use crate::model::Shape;
use crate::recipe::{PresetName, Workspace};

/// Name of the 0.5B drafter in the evaluation.
pub const BASELINE_DRAFTER: &str = crate::recipe::BASELINE_CANDIDATE;

/// Layers of the default target (Qwen2.5-Coder-1.5B) and 0.5B drafter, for the GPU cost model.
pub const TARGET_LAYERS: f64 = 28.0;
const BASELINE_LAYERS: f64 = 24.0;

/// What `eval` does.
#[derive(Debug, Clone)]
pub struct EvalOptions {
    /// Languages evaluated.
    pub languages: Vec<String>,
    /// Held-out prompts per language.
    pub prompts_per_language: usize,
    /// Longest answer, in tokens.
    pub max_tokens: usize,
    /// Fixed draft length.
    pub draft_length: usize,
    /// Directory of the Debian Reference.
    pub reference: PathBuf,
    /// Where the reports go.
    pub out: PathBuf,
    /// The preset evaluated (names the report files).
    pub preset: PresetName,
    /// Shape of the trained drafters.
    pub shape: Shape,
    /// Models and engine settings.
    pub workspace: Workspace,
}

/// One drafter on one language.
#[derive(Debug, Clone, Serialize)]
pub struct DrafterResult {
    /// `specialised`, `generic` or the 0.5B drafter.
    pub role: String,
    /// Drafter name in the engine.
    pub drafter: String,
    /// Drafted tokens.
    pub draft_tokens: u64,
    /// Accepted drafted tokens.
    pub accepted_tokens: u64,
    /// Draft-and-verify rounds that drafted.
    pub drafts: u64,
    /// accepted / drafted.
    pub acceptance_rate: f64,
    /// Tokens per round: 1 + accepted / drafts.
    pub tau: f64,
    /// Acceptance of each draft position given the ones before it.
    pub acceptance_per_position: Vec<f64>,
    /// Milliseconds of drafting per drafted token.
    pub draft_ms_per_token: f64,
    /// Draft step cost relative to a target step, measured here.
    pub cost_ratio: f64,
    /// Decoding tokens per second here.
    pub tokens_per_second: f64,
    /// Measured speedup over the target alone on this machine.
    pub speedup_here: f64,
    /// Speedup the GPU cost model implies.
    pub speedup_gpu_model: f64,
    /// Whether every answer equalled the target-only answer.
    pub identical_to_target: bool,
    /// Per prompt: (drafted, accepted) tokens.
    pub per_prompt: Vec<(u64, u64)>,
}

/// The specialised drafter against the generic one on the same prompts.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Comparison {
    /// Specialised minus generic acceptance rate (pooled over prompts).
    pub acceptance_difference: f64,
    /// 95 % interval of that difference, by a paired bootstrap over prompts.
    pub interval_95: (f64, f64),
    /// Prompts on which the specialised drafter's acceptance is higher.
    pub prompts_ahead: usize,
    /// Prompts compared.
    pub prompts: usize,
}

/// Resamplings of the paired bootstrap.
const BOOTSTRAP_RESAMPLES: usize = 4000;

/// Compare two drafters' per-prompt (drafted, accepted) counts on the same
/// prompts: the difference of pooled acceptance rates and its 95 % interval
/// from a paired bootstrap over prompts (prompts differ far more than tokens
/// within a prompt, so prompts, not tokens, are the unit resampled).
pub fn compare(a: &[(u64, u64)], b: &[(u64, u64)], seed: u64) -> Option<Comparison> {
    if a.len() != b.len() || a.is_empty() {
        return None;
    }
    let pooled = |counts: &mut dyn Iterator<Item = (u64, u64)>| {
        let (drafted, accepted) = counts.fold((0u64, 0u64), |s, c| (s.0 + c.0, s.1 + c.1));
        accepted as f64 / drafted.max(1) as f64
    };
    let difference = |indices: &[usize]| {
        pooled(&mut indices.iter().map(|&i| a[i])) - pooled(&mut indices.iter().map(|&i| b[i]))
    };
    let all: Vec<usize> = (0..a.len()).collect();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut resampled: Vec<f64> = (0..BOOTSTRAP_RESAMPLES)
        .map(|_| {
            let indices: Vec<usize> = (0..a.len()).map(|_| rng.gen_range(0..a.len())).collect();
            difference(&indices)
        })
        .collect();
    resampled.sort_by(f64::total_cmp);
    let at = |q: f64| resampled[((q * (resampled.len() - 1) as f64).round()) as usize];
    let rate = |(drafted, accepted): (u64, u64)| accepted as f64 / drafted.max(1) as f64;
    Some(Comparison {
        acceptance_difference: difference(&all),
        interval_95: (at(0.025), at(0.975)),
        prompts_ahead: a
            .iter()
            .zip(b)
            .filter(|(x, y)| rate(**x) > rate(**y))
            .count(),
        prompts: a.len(),
    })
}

/// One language.
#[derive(Debug, Clone, Serialize)]
pub struct LanguageResult {
    /// ISO 639-1 code.
    pub language: String,
    /// Prompts evaluated.
    pub prompts: usize,
    /// Answer tokens of the target alone.
    pub answer_tokens: usize,
    /// Target-only decoding rate.
    pub target_tokens_per_second: f64,
    /// Milliseconds per target token.
    pub target_ms_per_token: f64,
    /// The drafters.
    pub drafters: Vec<DrafterResult>,
    /// Specialised against generic, paired by prompt.
    pub specialised_vs_generic: Option<Comparison>,
}

/// The evaluation.
#[derive(Debug, Clone, Serialize)]
pub struct EvalReport {
    /// Preset of the trained drafters.
    pub preset: PresetName,
    /// Draft length.
    pub draft_length: usize,
    /// Drafter shape.
    pub shape: Shape,
    /// The cost model used for the GPU column.
    pub gpu_cost_model: String,
    /// CPU of this machine.
    pub cpu: String,
    /// Per language.
    pub languages: Vec<LanguageResult>,
}

/// Why evaluation failed.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// The held-out corpus.
    #[error(transparent)]
    Reference(#[from] reference_corpus::CorpusError),
    /// The engine.
    #[error(transparent)]
    Engine(#[from] specdec_backend::engine::EngineError),
    /// A drafter is missing.
    #[error("{0}")]
    Missing(String),
    /// Speculative output differs from the target's: exactness is broken.
    #[error("drafter {drafter} changed the greedy answer to prompt {prompt} of {language}")]
    NotExact {
        /// The drafter.
        drafter: String,
        /// The language.
        language: String,
        /// Index of the prompt.
        prompt: usize,
    },
    /// Writing the reports.
    #[error("{path}: {reason}")]
    Write {
        /// The file.
        path: PathBuf,
        /// What failed.
        reason: String,
    },
}

/// The held-out prompts of `language`: the benchmark's translation prompt
/// over the first `count` Debian Reference paragraphs it selects.
pub fn heldout_prompts(
    reference: &Path,
    language: &str,
    count: usize,
) -> Result<Vec<String>, reference_corpus::CorpusError> {
    // The Debian Reference names its Chinese translation zh-cn.
    let debian = if language == "zh" { "zh-cn" } else { language };
    let paragraphs = reference_corpus::extract(reference, &[debian], &Selection::new(count))?;
    Ok(paragraphs
        .iter()
        .map(|p| Task::Translate.prompt(p))
        .collect())
}

/// Run the evaluation and write `eval-<preset>.{json,md,png}` into `out`.
pub fn run(options: &EvalOptions) -> Result<EvalReport, EvalError> {
    let ws = &options.workspace;
    let k = options.draft_length as u32;
    let draft = DraftParams {
        max: k,
        min: 0,
        p_min: 0.0,
        adaptive: false,
    };
    let model_drafter = |name: &str, path: PathBuf| -> Result<DrafterConfig, EvalError> {
        if !path.is_file() {
            return Err(EvalError::Missing(format!(
                "{} does not exist: run `specdec-train export` (or `fetch-models` for the 0.5B drafter)",
                path.display()
            )));
        }
        Ok(DrafterConfig {
            name: name.into(),
            kind: DrafterKind::Model,
            languages: Vec::new(),
            model: Some(path),
            gpu_layers: ws.gpu_layers,
            draft,
        })
    };
    let mut drafters = Vec::new();
    for language in &options.languages {
        drafters.push(model_drafter(
            language,
            ws.drafters().join(format!("{language}.gguf")),
        )?);
    }
    drafters.push(model_drafter(
        GENERIC_DRAFTER,
        ws.drafters().join(format!("{GENERIC_DRAFTER}.gguf")),
    )?);
    drafters.push(model_drafter(
        BASELINE_DRAFTER,
        ws.model_dir.join(models::DEFAULT_DRAFTER_FILE),
    )?);
    let mut config = EngineConfig::new(TargetConfig {
        model: ws.target.clone(),
        context: 4096,
        gpu_layers: ws.gpu_layers,
    });
    config.drafters = drafters;
    config.threads = ws.threads;
    let engine = Engine::start(config)?;

    let mut languages = Vec::new();
    for language in &options.languages {
        let prompts = heldout_prompts(&options.reference, language, options.prompts_per_language)?;
        let roles = [
            ("specialised", language.as_str()),
            ("generic", GENERIC_DRAFTER),
            ("0.5B", BASELINE_DRAFTER),
        ];
        let mut baseline = Vec::new();
        let mut target_stats = Totals::default();
        for prompt in &prompts {
            let completion = engine.generate_blocking(request(
                prompt,
                options.max_tokens,
                DrafterChoice::None,
            ))?;
            target_stats.add(&completion.stats);
            baseline.push(completion.token_ids);
        }
        let target_ms = target_stats.ms_per_token();
        let mut results = Vec::new();
        for (role, name) in roles {
            let mut totals = Totals::default();
            for (i, prompt) in prompts.iter().enumerate() {
                let completion = engine.generate_blocking(request(
                    prompt,
                    options.max_tokens,
                    DrafterChoice::Named(name.into()),
                ))?;
                if completion.token_ids != baseline[i] {
                    return Err(EvalError::NotExact {
                        drafter: name.into(),
                        language: language.clone(),
                        prompt: i,
                    });
                }
                totals.add(&completion.stats);
                totals.per_prompt.push((
                    completion.stats.draft_tokens,
                    completion.stats.accepted_tokens,
                ));
            }
            let layers = if name == BASELINE_DRAFTER {
                BASELINE_LAYERS
            } else {
                options.shape.layers as f64
            };
            results.push(totals.result(role, name, target_ms, layers, options.draft_length));
            tracing::info!(
                language = %language,
                drafter = name,
                acceptance = format!("{:.3}", results.last().map_or(0.0, |r: &DrafterResult| r.acceptance_rate)),
                tau = format!("{:.2}", results.last().map_or(0.0, |r: &DrafterResult| r.tau)),
                "evaluated"
            );
        }
        let counts = |role: &str| {
            results
                .iter()
                .find(|r| r.role == role)
                .map(|r| r.per_prompt.clone())
                .unwrap_or_default()
        };
        let specialised_vs_generic = compare(&counts("specialised"), &counts("generic"), 1);
        languages.push(LanguageResult {
            specialised_vs_generic,
            language: language.clone(),
            prompts: prompts.len(),
            answer_tokens: baseline.iter().map(Vec::len).sum(),
            target_tokens_per_second: 1000.0 / target_ms.max(1e-9),
            target_ms_per_token: target_ms,
            drafters: results,
        });
    }
    let report = EvalReport {
        preset: options.preset,
        draft_length: options.draft_length,
        shape: options.shape.clone(),
        gpu_cost_model: "speedup = tau / (k * c + 1), c = drafter layers / target layers (28); verification of k+1 tokens costs one target step".into(),
        cpu: specdec_bench::report::cpu_name(),
        languages,
    };
    write_reports(&report, &options.out)?;
    Ok(report)
}

fn request(prompt: &str, max_tokens: usize, drafter: DrafterChoice) -> GenerationRequest {
    let mut request = GenerationRequest::new(
        Prompt::Chat(vec![specdec_backend::engine::ChatMessage {
            role: "user".into(),
            content: prompt.into(),
        }]),
        max_tokens,
    );
    request.drafter = drafter;
    request
}

/// Sums of generation statistics over prompts.
#[derive(Default)]
struct Totals {
    completion_tokens: usize,
    decode_ms: f64,
    draft_ms: f64,
    drafts: u64,
    draft_tokens: u64,
    accepted_tokens: u64,
    per_position: Vec<u64>,
    per_prompt: Vec<(u64, u64)>,
}

impl Totals {
    fn add(&mut self, stats: &GenerationStats) {
        self.completion_tokens += stats.completion_tokens;
        self.decode_ms += stats.total_ms - stats.prefill_ms;
        self.draft_ms += stats.draft_ms;
        self.drafts += stats.drafts;
        self.draft_tokens += stats.draft_tokens;
        self.accepted_tokens += stats.accepted_tokens;
        if self.per_position.len() < stats.accepted_per_position.len() {
            self.per_position
                .resize(stats.accepted_per_position.len(), 0);
        }
        for (sum, &n) in self
            .per_position
            .iter_mut()
            .zip(&stats.accepted_per_position)
        {
            *sum += n;
        }
    }

    fn ms_per_token(&self) -> f64 {
        self.decode_ms / self.completion_tokens.max(1) as f64
    }

    fn result(
        &self,
        role: &str,
        name: &str,
        target_ms: f64,
        layers: f64,
        k: usize,
    ) -> DrafterResult {
        let acceptance_rate = self.accepted_tokens as f64 / self.draft_tokens.max(1) as f64;
        let tau = 1.0 + self.accepted_tokens as f64 / self.drafts.max(1) as f64;
        // Position i is drafted in every round that reached it: every round
        // for i = 0, then the rounds whose position i - 1 was accepted.
        let mut reached = self.drafts;
        let acceptance_per_position = self
            .per_position
            .iter()
            .map(|&accepted| {
                let rate = accepted as f64 / reached.max(1) as f64;
                reached = accepted;
                rate
            })
            .collect();
        let draft_ms_per_token = self.draft_ms / self.draft_tokens.max(1) as f64;
        let tokens_per_second = self.completion_tokens as f64 * 1000.0 / self.decode_ms.max(1e-9);
        let c_gpu = layers / TARGET_LAYERS;
        DrafterResult {
            role: role.into(),
            drafter: name.into(),
            draft_tokens: self.draft_tokens,
            accepted_tokens: self.accepted_tokens,
            drafts: self.drafts,
            acceptance_rate,
            tau,
            acceptance_per_position,
            draft_ms_per_token,
            cost_ratio: draft_ms_per_token / target_ms.max(1e-9),
            tokens_per_second,
            speedup_here: tokens_per_second * target_ms / 1000.0,
            speedup_gpu_model: tau / (k as f64 * c_gpu + 1.0),
            identical_to_target: true,
            per_prompt: self.per_prompt.clone(),
        }
    }
}

/// The report as a Markdown table.
pub fn markdown(report: &EvalReport) -> String {
    let mut md = format!(
        "# Drafter evaluation ({:?} preset)\n\nHeld-out prompts: the benchmark's translation prompts over Debian Reference paragraphs. Greedy, draft length k = {}. Drafter shape: {} layers, hidden {}, {} heads ({} KV), MLP {}.\nCPU: {}.\nGPU column: {}.\n\n",
        report.preset,
        report.draft_length,
        report.shape.layers,
        report.shape.hidden,
        report.shape.heads,
        report.shape.kv_heads,
        report.shape.intermediate,
        report.cpu,
        report.gpu_cost_model
    );
    md.push_str("| language | drafter | acceptance | τ | draft ms/token | cost vs target | speedup here (measured) | speedup GPU (model) | identical |\n");
    md.push_str("|---|---|---:|---:|---:|---:|---:|---:|---|\n");
    for language in &report.languages {
        for d in &language.drafters {
            md.push_str(&format!(
                "| {} | {} ({}) | {:.3} | {:.2} | {:.2} | {:.3} | {:.2}× | {:.2}× | {} |\n",
                language.language,
                d.role,
                d.drafter,
                d.acceptance_rate,
                d.tau,
                d.draft_ms_per_token,
                d.cost_ratio,
                d.speedup_here,
                d.speedup_gpu_model,
                if d.identical_to_target { "yes" } else { "NO" }
            ));
        }
    }
    md.push_str("\nSpecialised minus generic acceptance (paired bootstrap over prompts, 95 % interval):\n\n");
    for language in &report.languages {
        if let Some(c) = &language.specialised_vs_generic {
            md.push_str(&format!(
                "- {}: {:+.3} [{:+.3}, {:+.3}]; specialised ahead on {} of {} prompts\n",
                language.language,
                c.acceptance_difference,
                c.interval_95.0,
                c.interval_95.1,
                c.prompts_ahead,
                c.prompts
            ));
        }
    }
    md.push_str("\nTarget alone: ");
    let rates: Vec<String> = report
        .languages
        .iter()
        .map(|l| {
            format!(
                "{} {:.1} tokens/s ({} prompts, {} tokens)",
                l.language, l.target_tokens_per_second, l.prompts, l.answer_tokens
            )
        })
        .collect();
    md.push_str(&rates.join("; "));
    md.push('\n');
    md
}

fn write_reports(report: &EvalReport, out: &Path) -> Result<(), EvalError> {
    let fail = |path: &Path, e: &dyn std::fmt::Display| EvalError::Write {
        path: path.to_path_buf(),
        reason: e.to_string(),
    };
    std::fs::create_dir_all(out).map_err(|e| fail(out, &e))?;
    let stem = format!("eval-{}", crate::recipe::preset_dir(report.preset));
    let json_path = out.join(format!("{stem}.json"));
    let json = serde_json::to_vec_pretty(report).map_err(|e| fail(&json_path, &e))?;
    std::fs::write(&json_path, json).map_err(|e| fail(&json_path, &e))?;
    let md_path = out.join(format!("{stem}.md"));
    std::fs::write(&md_path, markdown(report)).map_err(|e| fail(&md_path, &e))?;
    let categories: Vec<String> = report
        .languages
        .iter()
        .map(|l| l.language.clone())
        .collect();
    let series = |pick: &dyn Fn(&DrafterResult) -> f64| -> Vec<Series> {
        ["specialised", "generic", "0.5B"]
            .iter()
            .map(|role| Series {
                name: (*role).to_string(),
                values: report
                    .languages
                    .iter()
                    .map(|l| l.drafters.iter().find(|d| d.role == *role).map(pick))
                    .collect(),
            })
            .collect()
    };
    let charts = vec![
        BarChart {
            title: format!(
                "Acceptance rate on held-out prompts (k = {})",
                report.draft_length
            ),
            y_label: "acceptance".into(),
            categories: categories.clone(),
            series: series(&|d| d.acceptance_rate),
            reference_line: None,
        },
        BarChart {
            title: "Speedup over the target alone: measured here".into(),
            y_label: "speedup".into(),
            categories: categories.clone(),
            series: series(&|d| d.speedup_here),
            reference_line: Some(1.0),
        },
        BarChart {
            title: "Speedup implied on a GPU (cost model)".into(),
            y_label: "speedup".into(),
            categories,
            series: series(&|d| d.speedup_gpu_model),
            reference_line: Some(1.0),
        },
    ];
    let png = out.join(format!("{stem}.png"));
    let font = Path::new(chart::DEFAULT_FONT_PATH);
    if font.is_file() {
        chart::render_png(&charts, font, &png).map_err(|e| fail(&png, &e))?;
    } else {
        tracing::warn!(font = %font.display(), "no chart font: the PNG is not drawn (install fonts-dejavu-core)");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comparison_pools_prompts_and_brackets_the_difference() {
        // Specialised accepts 6/10 on every prompt, generic 2/10.
        let a = vec![(10, 6); 8];
        let b = vec![(10, 2); 8];
        let c = compare(&a, &b, 7).unwrap();
        assert!((c.acceptance_difference - 0.4).abs() < 1e-12);
        assert!((c.interval_95.0 - 0.4).abs() < 1e-12 && (c.interval_95.1 - 0.4).abs() < 1e-12);
        assert_eq!((c.prompts_ahead, c.prompts), (8, 8));
        // Pooling weights prompts by drafted tokens: 1/2 and 0/100 pool to 1/102.
        let c = compare(&[(2, 1), (100, 0)], &[(2, 0), (100, 0)], 7).unwrap();
        assert!((c.acceptance_difference - 1.0 / 102.0).abs() < 1e-12);
        assert_eq!(c.prompts_ahead, 1);
        // A difference carried by one prompt out of many: the interval reaches zero.
        let mut a = vec![(20, 2); 9];
        a.push((20, 20));
        let b = vec![(20, 2); 10];
        let c = compare(&a, &b, 7).unwrap();
        assert!(c.acceptance_difference > 0.0);
        assert!(
            c.interval_95.0 <= 0.0 && c.interval_95.1 > 0.0,
            "{:?}",
            c.interval_95
        );
        assert!(compare(&a, &b[..3], 7).is_none());
        assert!(compare(&[], &[], 7).is_none());
    }
}
