//! Results: every request measured, summaries per language, mode and
//! temperature, the load runs, the prefill interference, and their rendering
//! as JSON, Markdown and PNG.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::chart::{BarChart, Series};
use crate::client::Measurement;
use crate::interference::{PrefillInterference, LEAD_EVENTS, P95_RATIO_LIMIT};
use crate::modes::{Drafting, Mode};
use crate::tasks::Task;

/// Adaptive drafting must reach this fraction of target-only speed.
pub const ADAPTIVE_FLOOR: f64 = 0.97;
/// Where a configuration beats target-only, adaptive must be within this of the best.
pub const ADAPTIVE_TOLERANCE: f64 = 0.05;

/// One measured request.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Run {
    /// What the prompt asks for.
    pub task: Task,
    /// Debian's language code.
    pub language: String,
    /// Where the paragraph comes from.
    pub origin: String,
    /// Sampling temperature.
    pub temperature: f32,
    /// Mode name.
    pub mode: String,
    /// What was measured.
    pub measurement: Measurement,
    /// The English original of the paragraph.
    pub reference: String,
    /// Sentence-level chrF of the output against it.
    pub chrf: f64,
    /// Which repetition of its request this is, from 0 (`--repeat`): the
    /// repetitions of a request send the same prompt with the same seed.
    #[serde(default)]
    pub repeat: usize,
}

/// The figures of one cell (task, language, temperature, mode) from one
/// repetition of its requests.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RepeatFigures {
    /// The repetition, from 0.
    pub repeat: usize,
    /// Generated tokens after the first, per second after the first.
    pub decode_tokens_per_second: f64,
    /// Mean end-to-end latency, milliseconds.
    pub e2e_ms: f64,
    /// Mean time to the first token, milliseconds.
    pub ttft_ms: f64,
    /// Decode speed over specdec's target-only decode speed in the same repetition.
    pub speedup: f64,
    /// End-to-end latency of target-only in the same repetition over this mode's.
    pub e2e_speedup: f64,
}

/// Figures of one mode for one task, language and temperature.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Summary {
    /// The task.
    pub task: Task,
    /// Debian's language code.
    pub language: String,
    /// Sampling temperature.
    pub temperature: f32,
    /// Mode name.
    pub mode: String,
    /// Requests, all repetitions together.
    pub requests: usize,
    /// Generated tokens after the first, per second after the first
    /// (median over the repetitions, as are the timings and speedups below).
    pub decode_tokens_per_second: f64,
    /// Mean end-to-end latency, milliseconds.
    pub e2e_ms: f64,
    /// Mean time to the first token, milliseconds.
    pub ttft_ms: f64,
    /// Accepted / drafted tokens.
    pub acceptance: Option<f64>,
    /// Mean accepted length τ: 1 + accepted / drafts.
    pub tau: Option<f64>,
    /// Decode speed over specdec's target-only decode speed in this run:
    /// the median of the repetitions' own ratios.
    pub speedup: f64,
    /// End-to-end latency of target-only over this mode's.
    pub e2e_speedup: f64,
    /// Greedy only: outputs equal to their server's target-only output, and of how many.
    pub exact: Option<(usize, usize)>,
    /// Corpus-level chrF of the outputs against the English originals.
    pub chrf: f64,
    /// Share of rounds by draft length (adaptive only).
    pub draft_length_share: Vec<f64>,
    /// The timings and speedups of each repetition, in order.
    #[serde(default)]
    pub per_repeat: Vec<RepeatFigures>,
}

impl Summary {
    /// Median and range of the speedup over the repetitions (`None` in
    /// reports from before repetitions were recorded).
    pub fn speedup_spread(&self) -> Option<Spread> {
        let speedups: Vec<f64> = self.per_repeat.iter().map(|r| r.speedup).collect();
        Spread::of(&speedups)
    }
}

/// Median and range of one figure over the repetitions of a cell. With the
/// few repetitions a run affords, the range says more than quartiles would.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Spread {
    /// The median: the middle value, or the mean of the middle two.
    pub median: f64,
    /// The smallest value.
    pub min: f64,
    /// The largest value.
    pub max: f64,
}

impl Spread {
    /// The spread of `values`, in any order; `None` when there are none.
    pub fn of(values: &[f64]) -> Option<Spread> {
        let mut sorted = values.to_vec();
        sorted.sort_by(|a, b| a.total_cmp(b));
        Some(Spread {
            median: median_of_sorted(&sorted)?,
            min: *sorted.first()?,
            max: *sorted.last()?,
        })
    }
}

/// The median of `values`, in any order (0 when there are none).
pub fn median(values: &[f64]) -> f64 {
    Spread::of(values).map_or(0.0, |s| s.median)
}

fn median_of_sorted(sorted: &[f64]) -> Option<f64> {
    let middle = sorted.len() / 2;
    let upper = *sorted.get(middle)?;
    if sorted.len() % 2 == 1 {
        Some(upper)
    } else {
        Some((sorted.get(middle - 1)? + upper) / 2.0)
    }
}

/// The value of `--repeat`: how many times each request is sent, at least once.
pub fn parse_repeat(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(0) => Err("needs at least 1 (every request is sent at least once)".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(format!("not a count of repetitions: {e}")),
    }
}

/// A load run: concurrent clients against one server.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LoadResult {
    /// Server configuration.
    pub server: String,
    /// Concurrent clients (and parallel slots of the server).
    pub concurrency: usize,
    /// Requests completed.
    pub requests: usize,
    /// Generated tokens in all, without end-of-generation tokens (see
    /// [`crate::client::Measurement::tokens_without_end`]).
    pub tokens: u64,
    /// Seconds from the first request to the last response.
    pub wall_s: f64,
    /// tokens / wall_s.
    pub aggregate_tokens_per_second: f64,
    /// Median end-to-end latency, milliseconds.
    pub p50_ms: f64,
    /// 95th percentile end-to-end latency, milliseconds.
    pub p95_ms: f64,
}

/// The machine and software a report was measured on.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Machine {
    /// CPU model.
    pub cpu: String,
    /// Logical cores.
    pub cores: usize,
    /// Memory in GiB.
    pub memory_gib: f64,
    /// GPUs, if any.
    pub gpus: Vec<String>,
    /// Operating system kernel.
    pub kernel: String,
    /// Commit of this repository (with `-dirty` for local changes).
    pub commit: String,
    /// llama-server's version line.
    pub llama_server: String,
    /// What each specdec server reported of its llama.cpp kernels (CPU
    /// module, weight buffer types, verification pass limit), by server.
    #[serde(default)]
    pub specdec_kernels: Vec<String>,
}

/// Settings of a run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Settings {
    /// Quick mode.
    pub quick: bool,
    /// Paragraphs per language.
    pub per_language: usize,
    /// Most generated tokens per request.
    pub max_tokens: u32,
    /// Tasks and the temperatures each is measured at (0: greedy).
    pub plan: Vec<(Task, f32)>,
    /// Fixed draft lengths measured.
    pub fixed_lengths: Vec<u32>,
    /// Draft length of n-gram, llama-server and adaptive's upper bound.
    pub draft_max: u32,
    /// CPU threads per evaluation, both servers.
    pub threads: u32,
    /// Layers offloaded to a GPU.
    pub gpu_layers: u32,
    /// Concurrency levels of the load mode.
    pub concurrency: Vec<usize>,
    /// Times each request was sent per mode (`--repeat`).
    #[serde(default = "one")]
    pub repeat: usize,
}

fn one() -> usize {
    1
}

/// A whole benchmark report.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    /// When it started (UTC, RFC 3339).
    pub started: String,
    /// Seconds it took.
    pub duration_s: f64,
    /// Where it ran.
    pub machine: Machine,
    /// How it ran.
    pub settings: Settings,
    /// The modes, in table order.
    pub modes: Vec<Mode>,
    /// Languages, in table order.
    pub languages: Vec<String>,
    /// Per language, mode and temperature.
    pub summaries: Vec<Summary>,
    /// The load runs.
    pub load: Vec<LoadResult>,
    /// The prefill-interference measurement, per server (`--prefill-interference`).
    #[serde(default)]
    pub prefill_interference: Vec<PrefillInterference>,
    /// Every request.
    pub runs: Vec<Run>,
}

impl Report {
    /// The summary of `mode` for `task`, `language` and `temperature`, if
    /// measured. Tables and charts look summaries up here only, by all four
    /// keys: two tasks share temperatures, languages and modes.
    pub fn summary(
        &self,
        task: Task,
        language: &str,
        temperature: f32,
        mode: &str,
    ) -> Option<&Summary> {
        self.summaries.iter().find(|x| {
            x.task == task
                && x.language == language
                && x.temperature == temperature
                && x.mode == mode
        })
    }
}

/// Summaries of `runs` per language, temperature and mode. Timings and
/// speedups are computed per repetition, each against target-only in the same
/// repetition, and summarized by their median; counts (acceptance, τ,
/// exactness, chrF, draft lengths) are pooled over all repetitions.
pub fn summarize(
    runs: &[Run],
    modes: &[Mode],
    languages: &[String],
    plan: &[(Task, f32)],
) -> Vec<Summary> {
    let mut out = Vec::new();
    for &(task, temperature) in plan {
        for language in languages {
            let of = |mode: &str| -> Vec<&Run> {
                runs.iter()
                    .filter(|r| {
                        r.task == task
                            && &r.language == language
                            && r.temperature == temperature
                            && r.mode == mode
                    })
                    .collect()
            };
            let Some(baseline) = modes.iter().find(|m| m.is_baseline()) else {
                continue;
            };
            let base = of(&baseline.name);
            for mode in modes {
                let these = of(&mode.name);
                if these.is_empty() {
                    continue;
                }
                let per_repeat = repeat_figures(&these, &base);
                let median_of = |figure: fn(&RepeatFigures) -> f64| {
                    median(&per_repeat.iter().map(figure).collect::<Vec<_>>())
                };
                let drafted: Option<u64> = these.iter().map(|r| r.measurement.draft_tokens).sum();
                let accepted: Option<u64> =
                    these.iter().map(|r| r.measurement.accepted_tokens).sum();
                let drafts: Option<u64> = these.iter().map(|r| r.measurement.drafts).sum();
                let acceptance = match (accepted, drafted) {
                    (Some(a), Some(d)) if d > 0 => Some(a as f64 / d as f64),
                    _ => None,
                };
                let tau = match (accepted, drafts) {
                    (Some(a), Some(n)) if n > 0 => Some(1.0 + a as f64 / n as f64),
                    _ => None,
                };
                let exact = (temperature == 0.0 && mode.must_match_target()).then(|| {
                    let reference = modes
                        .iter()
                        .find(|m| m.server_baseline_of(mode))
                        .map(|m| of(&m.name))
                        .unwrap_or_default();
                    let matched = these
                        .iter()
                        .filter(|r| {
                            reference.iter().any(|b| {
                                b.origin == r.origin
                                    && b.repeat == r.repeat
                                    && b.measurement.text == r.measurement.text
                            })
                        })
                        .count();
                    (matched, these.len())
                });
                let pairs: Vec<(String, String)> = these
                    .iter()
                    .map(|r| (r.measurement.text.clone(), r.reference.clone()))
                    .collect();
                let mut lengths: Vec<u64> = Vec::new();
                for r in &these {
                    for (k, &n) in r.measurement.rounds_by_draft_length.iter().enumerate() {
                        if lengths.len() <= k {
                            lengths.resize(k + 1, 0);
                        }
                        lengths[k] += n;
                    }
                }
                let rounds: u64 = lengths.iter().sum();
                let draft_length_share = if mode.drafting == Drafting::Adaptive && rounds > 0 {
                    lengths.iter().map(|&n| n as f64 / rounds as f64).collect()
                } else {
                    Vec::new()
                };
                out.push(Summary {
                    task,
                    language: language.clone(),
                    temperature,
                    mode: mode.name.clone(),
                    requests: these.len(),
                    decode_tokens_per_second: median_of(|r| r.decode_tokens_per_second),
                    e2e_ms: median_of(|r| r.e2e_ms),
                    ttft_ms: median_of(|r| r.ttft_ms),
                    acceptance,
                    tau,
                    speedup: median_of(|r| r.speedup),
                    e2e_speedup: median_of(|r| r.e2e_speedup),
                    exact,
                    chrf: crate::chrf::corpus_chrf(&pairs),
                    draft_length_share,
                    per_repeat,
                });
            }
        }
    }
    out
}

impl Mode {
    /// Whether `self` is the target-only mode of `other`'s server family
    /// (specdec's for specdec modes, llama-server's for llama-server's).
    fn server_baseline_of(&self, other: &Mode) -> bool {
        use crate::modes::ServerKind::*;
        self.drafting == Drafting::None
            && matches!(
                (self.server, other.server),
                (Specdec, Specdec) | (LlamaServer, LlamaServer | LlamaServerDraft)
            )
    }
}

/// The figures of `these` runs of one cell, per repetition, against the
/// `baseline` runs of the same repetition.
fn repeat_figures<'a>(these: &[&'a Run], baseline: &[&'a Run]) -> Vec<RepeatFigures> {
    let mut repeats: Vec<usize> = these.iter().map(|r| r.repeat).collect();
    repeats.sort_unstable();
    repeats.dedup();
    repeats
        .into_iter()
        .map(|repeat| {
            let of = |runs: &[&'a Run]| -> Vec<&'a Run> {
                runs.iter()
                    .filter(|r| r.repeat == repeat)
                    .copied()
                    .collect()
            };
            let (mine, base) = (of(these), of(baseline));
            let tps = decode_rate(&mine);
            let e2e = mean(mine.iter().map(|r| r.measurement.e2e_ms));
            let base_e2e = mean(base.iter().map(|r| r.measurement.e2e_ms));
            RepeatFigures {
                repeat,
                decode_tokens_per_second: tps,
                e2e_ms: e2e,
                ttft_ms: mean(mine.iter().map(|r| r.measurement.ttft_ms)),
                speedup: ratio(tps, decode_rate(&base)),
                e2e_speedup: ratio(base_e2e, e2e),
            }
        })
        .collect()
}

fn decode_rate(runs: &[&Run]) -> f64 {
    let tokens: f64 = runs
        .iter()
        .map(|r| r.measurement.completion_tokens.saturating_sub(1) as f64)
        .sum();
    let ms: f64 = runs.iter().map(|r| r.measurement.decode_ms()).sum();
    ratio(tokens * 1000.0, ms)
}

fn mean(values: impl Iterator<Item = f64>) -> f64 {
    let (sum, n) = values.fold((0.0, 0usize), |(s, n), v| (s + v, n + 1));
    if n == 0 {
        0.0
    } else {
        sum / n as f64
    }
}

fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 {
        a / b
    } else {
        0.0
    }
}

/// Percentile `p` (0..=100) of `values` by nearest rank.
pub fn percentile(values: &[f64], p: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(|a, b| a.total_cmp(b));
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// The verdicts the issue asks for, per task, language and temperature.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Check {
    /// Task.
    pub task: Task,
    /// Language.
    pub language: String,
    /// Temperature.
    pub temperature: f32,
    /// Adaptive over target-only decode speed.
    pub adaptive_vs_target: f64,
    /// Adaptive over llama-server's speculative decode speed.
    pub adaptive_vs_llama_server_draft: Option<f64>,
    /// The fastest specdec configuration other than adaptive, and its speedup.
    pub best_fixed: (String, f64),
    /// Adaptive over that configuration, when it beats target-only.
    pub adaptive_vs_best: Option<f64>,
    /// Whether all of the above hold.
    pub pass: bool,
}

/// Check adaptive drafting against target-only, llama-server and the best fixed configuration.
pub fn checks(summaries: &[Summary], modes: &[Mode]) -> Vec<Check> {
    // Grouped in report order: task, temperature, language.
    let mut groups: BTreeMap<(usize, String, usize), Vec<&Summary>> = BTreeMap::new();
    let mut order: Vec<(Task, String)> = Vec::new();
    let mut languages: Vec<&str> = Vec::new();
    for s in summaries {
        let key = (s.task, format!("{:.2}", s.temperature));
        if !order.contains(&key) {
            order.push(key.clone());
        }
        if !languages.contains(&s.language.as_str()) {
            languages.push(&s.language);
        }
        let first = order.iter().position(|k| k == &key).unwrap_or(0);
        let lang = languages.iter().position(|l| *l == s.language).unwrap_or(0);
        groups.entry((first, key.1, lang)).or_default().push(s);
    }
    let name_of =
        |pred: &dyn Fn(&Mode) -> bool| modes.iter().find(|m| pred(m)).map(|m| m.name.clone());
    let adaptive = name_of(&|m| m.drafting == Drafting::Adaptive);
    let llama_draft = name_of(&|m| matches!(m.drafting, Drafting::LlamaServer(_)));
    let mut out = Vec::new();
    for group in groups.values() {
        let get = |name: &Option<String>| {
            name.as_ref()
                .and_then(|n| group.iter().find(|s| &s.mode == n))
                .copied()
        };
        let Some(a) = get(&adaptive) else { continue };
        let llama = get(&llama_draft);
        let best = group
            .iter()
            .filter(|s| {
                modes.iter().any(|m| {
                    m.name == s.mode
                        && m.server == crate::modes::ServerKind::Specdec
                        && m.drafting != Drafting::Adaptive
                })
            })
            .max_by(|x, y| x.speedup.total_cmp(&y.speedup));
        let Some(best) = best else { continue };
        let vs_llama = llama.map(|l| ratio(a.decode_tokens_per_second, l.decode_tokens_per_second));
        let vs_best = (best.speedup > 1.0).then(|| ratio(a.speedup, best.speedup));
        let pass = a.speedup >= ADAPTIVE_FLOOR
            && vs_llama.is_none_or(|r| r >= 1.0)
            && vs_best.is_none_or(|r| r >= 1.0 - ADAPTIVE_TOLERANCE);
        out.push(Check {
            task: a.task,
            language: a.language.clone(),
            temperature: a.temperature,
            adaptive_vs_target: a.speedup,
            adaptive_vs_llama_server_draft: vs_llama,
            best_fixed: (best.mode.clone(), best.speedup),
            adaptive_vs_best: vs_best,
            pass,
        });
    }
    out
}

fn temperature_label(t: f32) -> String {
    if t == 0.0 {
        "greedy".into()
    } else {
        format!("T={t}")
    }
}

/// The report as Markdown.
pub fn markdown(report: &Report) -> String {
    let mut md = String::new();
    let m = &report.machine;
    let s = &report.settings;
    let _ = writeln!(
        md,
        "# specdec benchmark{}\n",
        if s.quick { " (quick)" } else { "" }
    );
    let mut plan = s
        .plan
        .iter()
        .map(|(task, t)| format!("{} {}", task.name(), temperature_label(*t)))
        .collect::<Vec<_>>()
        .join(", ");
    if plan.is_empty() {
        plan = "none".into();
    }
    let _ = writeln!(
        md,
        "- started {} · {:.0} s · commit `{}`\n- machine: {} ({} cores, {:.0} GiB){} · kernel {}\n- llama-server: {}\n- {} paragraph(s) per language from the Debian Reference; tasks: {}; at most {} tokens, {} thread(s), draft length {} (fixed lengths {:?}), {} GPU layer(s){}\n",
        report.started,
        report.duration_s,
        m.commit,
        m.cpu,
        m.cores,
        m.memory_gib,
        if m.gpus.is_empty() { String::new() } else { format!(", GPU {}", m.gpus.join(", ")) },
        m.kernel,
        if m.llama_server.is_empty() { "not run" } else { &m.llama_server },
        s.per_language,
        plan,
        s.max_tokens,
        s.threads,
        s.draft_max,
        s.fixed_lengths,
        s.gpu_layers,
        if s.repeat > 1 {
            format!("; every request sent {} times, timings and speedups are medians over them", s.repeat)
        } else {
            String::new()
        },
    );
    for kernels in &m.specdec_kernels {
        let _ = writeln!(md, "- {kernels}");
    }
    if !m.specdec_kernels.is_empty() {
        let _ = writeln!(md);
    }
    for &(task, t) in &s.plan {
        let _ = writeln!(
            md,
            "## {}: decode tokens/s and speedup over specdec target-only, {}\n",
            task.name(),
            temperature_label(t)
        );
        if s.repeat > 1 {
            let _ = writeln!(
                md,
                "Medians of {} repetitions; after the speedup, its range over them (min–max).\n",
                s.repeat
            );
        }
        let _ = write!(md, "| language |");
        for mode in &report.modes {
            let _ = write!(md, " {} |", mode.name);
        }
        let _ = writeln!(md);
        let _ = writeln!(md, "|---|{}", "---:|".repeat(report.modes.len()));
        for lang in &report.languages {
            let _ = write!(md, "| {lang} |");
            for mode in &report.modes {
                match report.summary(task, lang, t, &mode.name) {
                    Some(x) => {
                        let range = match x.speedup_spread() {
                            Some(spread) if s.repeat > 1 => {
                                format!(", {:.2}–{:.2}", spread.min, spread.max)
                            }
                            _ => String::new(),
                        };
                        let _ = write!(
                            md,
                            " {:.1} ({:.2}×{range}) |",
                            x.decode_tokens_per_second, x.speedup
                        );
                    }
                    None => {
                        let _ = write!(md, " – |");
                    }
                }
            }
            let _ = writeln!(md);
        }
        let _ = writeln!(md);
        let _ = writeln!(
            md,
            "### {}: acceptance, τ, end-to-end latency, exactness and chrF, {}\n",
            task.name(),
            temperature_label(t)
        );
        let _ = writeln!(md, "| language | mode | acceptance | τ | e2e ms | e2e speedup | TTFT ms | exact | chrF | adaptive rounds by k |");
        let _ = writeln!(md, "|---|---|---:|---:|---:|---:|---:|---:|---:|---|");
        for lang in &report.languages {
            for mode in &report.modes {
                let Some(x) = report.summary(task, lang, t, &mode.name) else {
                    continue;
                };
                let opt = |v: Option<f64>, p: usize| v.map_or("–".into(), |v| format!("{v:.p$}"));
                let exact = x.exact.map_or("–".into(), |(a, b)| format!("{a}/{b}"));
                let share = x
                    .draft_length_share
                    .iter()
                    .enumerate()
                    .filter(|(_, &v)| v > 0.0)
                    .map(|(k, v)| format!("{k}: {:.0} %", v * 100.0))
                    .collect::<Vec<_>>()
                    .join(", ");
                let _ = writeln!(
                    md,
                    "| {lang} | {} | {} | {} | {:.0} | {:.2}× | {:.0} | {exact} | {:.1} | {share} |",
                    mode.name,
                    opt(x.acceptance, 2),
                    opt(x.tau, 2),
                    x.e2e_ms,
                    x.e2e_speedup,
                    x.ttft_ms,
                    x.chrf,
                );
            }
        }
        let _ = writeln!(md);
    }
    let checks = checks(&report.summaries, &report.modes);
    if !checks.is_empty() {
        checks_markdown(&mut md, &checks);
    }
    if !report.load.is_empty() {
        load_markdown(&mut md, &report.load);
    }
    if !report.prefill_interference.is_empty() {
        prefill_interference_markdown(&mut md, &report.prefill_interference);
    }
    md
}

fn checks_markdown(md: &mut String, checks: &[Check]) {
    let _ = writeln!(md, "## Adaptive drafting: checks\n");
    let _ = writeln!(
        md,
        "Adaptive must reach {ADAPTIVE_FLOOR}× target-only, at least llama-server's speculative speed, and, where some fixed configuration beats target-only, come within {:.0} % of the best one.\n",
        ADAPTIVE_TOLERANCE * 100.0
    );
    let _ = writeln!(md, "| task | language | sampling | adaptive / target | adaptive / llama-server -md | best other specdec config | adaptive / best (if best > 1×) | pass |");
    let _ = writeln!(md, "|---|---|---|---:|---:|---|---:|---|");
    for c in checks {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {:.3} | {} | {} ({:.2}×) | {} | {} |",
            c.task.name(),
            c.language,
            temperature_label(c.temperature),
            c.adaptive_vs_target,
            c.adaptive_vs_llama_server_draft
                .map_or("–".into(), |v| format!("{v:.3}")),
            c.best_fixed.0,
            c.best_fixed.1,
            c.adaptive_vs_best.map_or("–".into(), |v| format!("{v:.3}")),
            if c.pass { "yes" } else { "**no**" },
        );
    }
    let _ = writeln!(md);
}

fn load_markdown(md: &mut String, load: &[LoadResult]) {
    let _ = writeln!(
        md,
        "## Load: concurrent clients, greedy, same number of parallel slots\n"
    );
    let _ = writeln!(
        md,
        "| server | clients | requests | tokens | aggregate tokens/s | p50 ms | p95 ms |"
    );
    let _ = writeln!(md, "|---|---:|---:|---:|---:|---:|---:|");
    for l in load {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {:.1} | {:.0} | {:.0} |",
            l.server,
            l.concurrency,
            l.requests,
            l.tokens,
            l.aggregate_tokens_per_second,
            l.p50_ms,
            l.p95_ms
        );
    }
    let _ = writeln!(md);
}

fn prefill_interference_markdown(md: &mut String, results: &[PrefillInterference]) {
    let _ = writeln!(
        md,
        "## Prefill interference: a streamed request while a long prompt is read\n"
    );
    let _ = writeln!(
        md,
        "Gaps between the stream's events with text (an event may hold several tokens; tokens per event alone / beside), alone and while a second request's long prompt is read: from sending it, after the stream's first {LEAD_EVENTS} events, to its first text. The p95 during the prefill must stay within {P95_RATIO_LIMIT}× the p95 alone.\n"
    );
    let _ = writeln!(
        md,
        "| server | alone p50 ms | alone p95 ms | prefill p50 ms | prefill p95 ms | prefill max ms | gaps in prefill | p95 ratio | within {P95_RATIO_LIMIT}× | prefill s | long prompt tokens | tokens/event |"
    );
    let _ = writeln!(
        md,
        "|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|"
    );
    for r in results {
        let _ = writeln!(
            md,
            "| {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {} | {} | {} | {:.2} | {} | {:.2} / {:.2} |",
            r.server,
            r.baseline.p50_ms,
            r.baseline.p95_ms,
            r.during_prefill.p50_ms,
            r.during_prefill.p95_ms,
            r.during_prefill.max_ms,
            r.during_prefill.gaps,
            r.p95_ratio.map_or("–".into(), |v| format!("{v:.2}×")),
            match r.within_limit {
                Some(true) => "yes",
                Some(false) => "**no**",
                None => "–",
            },
            r.prefill_s,
            r.long_prompt_tokens,
            r.baseline_tokens_per_event,
            r.stream_tokens_per_event,
        );
    }
    let _ = writeln!(md);
    for r in results.iter().filter(|r| !r.stream_outlasted_prefill) {
        let _ = writeln!(
            md,
            "- {}: the stream ended before the prefill did; its gaps after the long prompt was sent are all in the window.",
            r.server
        );
    }
    if results.iter().any(|r| !r.stream_outlasted_prefill) {
        let _ = writeln!(md);
    }
}

/// Draw [`charts`] of `report` into the PNG at `path`.
pub fn chart(report: &Report, font: &Path, path: &Path) -> anyhow::Result<()> {
    crate::chart::render_png(&charts(report), font, path)?;
    Ok(())
}

/// The speedup charts, one per task and temperature in plan order, then the
/// load chart if there were load runs.
pub fn charts(report: &Report) -> Vec<BarChart> {
    let mut charts = Vec::new();
    for &(task, t) in &report.settings.plan {
        let series = report
            .modes
            .iter()
            .map(|mode| Series {
                name: mode.name.clone(),
                values: report
                    .languages
                    .iter()
                    .map(|lang| report.summary(task, lang, t, &mode.name).map(|x| x.speedup))
                    .collect(),
            })
            .collect();
        charts.push(BarChart {
            title: format!(
                "{}: decode speed over specdec target-only, {} ({})",
                task.name(),
                temperature_label(t),
                report.machine.cpu
            ),
            y_label: "speedup (×)".into(),
            categories: report.languages.clone(),
            series,
            reference_line: Some(1.0),
        });
    }
    if !report.load.is_empty() {
        let mut levels: Vec<usize> = report.load.iter().map(|l| l.concurrency).collect();
        levels.sort_unstable();
        levels.dedup();
        let mut servers: Vec<String> = Vec::new();
        for l in &report.load {
            if !servers.contains(&l.server) {
                servers.push(l.server.clone());
            }
        }
        let series = servers
            .iter()
            .map(|server| Series {
                name: server.clone(),
                values: levels
                    .iter()
                    .map(|&c| {
                        report
                            .load
                            .iter()
                            .find(|l| &l.server == server && l.concurrency == c)
                            .map(|l| l.aggregate_tokens_per_second)
                    })
                    .collect(),
            })
            .collect();
        charts.push(BarChart {
            title: "Load: aggregate tokens/s by concurrent clients".into(),
            y_label: "tokens/s".into(),
            categories: levels.iter().map(|c| format!("{c} clients")).collect(),
            series,
            reference_line: None,
        });
    }
    charts
}

/// The CPU's model name from `/proc/cpuinfo` (the architecture where it has none).
pub fn cpu_name() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|text| {
            text.lines().find_map(|l| {
                l.strip_prefix("model name")
                    .and_then(|r| r.split(':').nth(1))
                    .map(|s| s.trim().to_string())
            })
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::modes::modes;

    fn run(lang: &str, mode: &str, text: &str, tokens: u64, ttft: f64, e2e: f64) -> Run {
        Run {
            task: Task::Translate,
            language: lang.into(),
            origin: "ch01#1".into(),
            temperature: 0.0,
            mode: mode.into(),
            measurement: Measurement {
                text: text.into(),
                completion_tokens: tokens,
                prompt_tokens: 50,
                ttft_ms: ttft,
                e2e_ms: e2e,
                draft_tokens: Some(10),
                accepted_tokens: Some(5),
                drafts: Some(5),
                rounds_by_draft_length: vec![3, 1],
                finish_reason: Some("stop".into()),
            },
            reference: "Hello".into(),
            chrf: 100.0,
            repeat: 0,
        }
    }

    /// A quick report of `summaries`, without runs or load runs.
    fn report_of(
        modes: Vec<Mode>,
        languages: Vec<String>,
        plan: Vec<(Task, f32)>,
        summaries: Vec<Summary>,
    ) -> Report {
        Report {
            started: "now".into(),
            duration_s: 1.0,
            machine: Machine {
                cpu: "cpu".into(),
                cores: 2,
                memory_gib: 24.0,
                gpus: vec![],
                kernel: "k".into(),
                commit: "abc".into(),
                llama_server: "v".into(),
                specdec_kernels: vec!["specdec: CPU kernels libggml-cpu-zen4.so".into()],
            },
            settings: Settings {
                quick: true,
                per_language: 1,
                max_tokens: 48,
                plan,
                fixed_lengths: vec![2],
                draft_max: 4,
                threads: 2,
                gpu_layers: 0,
                concurrency: vec![],
                repeat: 1,
            },
            modes,
            languages,
            summaries,
            load: vec![],
            prefill_interference: vec![],
            runs: vec![],
        }
    }

    /// A summary whose speedup is `speedup`, the other figures arbitrary.
    fn summary_with(
        task: Task,
        language: &str,
        temperature: f32,
        mode: &str,
        speedup: f64,
    ) -> Summary {
        Summary {
            task,
            language: language.into(),
            temperature,
            mode: mode.into(),
            requests: 1,
            decode_tokens_per_second: 10.0 * speedup,
            e2e_ms: 1000.0 / speedup,
            ttft_ms: 100.0,
            acceptance: None,
            tau: None,
            speedup,
            e2e_speedup: speedup,
            exact: None,
            chrf: 50.0,
            draft_length_share: vec![],
            per_repeat: vec![],
        }
    }

    #[test]
    fn every_chart_bar_is_its_own_tasks_summary() {
        let modes = modes(&[2], 4, false, false);
        let languages: Vec<String> = vec!["de".into(), "ja".into()];
        // Both tasks at both temperatures: every cell but the language, the
        // mode or the task alike with some other.
        let plan = vec![
            (Task::Translate, 0.0),
            (Task::Translate, 0.7),
            (Task::Proofread, 0.0),
            (Task::Proofread, 0.7),
        ];
        let mut summaries = Vec::new();
        for &(task, t) in &plan {
            for language in &languages {
                for mode in &modes {
                    // One cell unmeasured: its bar must be missing, not borrowed.
                    if task == Task::Proofread && t == 0.7 && language == "ja" && mode.name == "k=2"
                    {
                        continue;
                    }
                    let distinct = 0.5 + summaries.len() as f64 / 64.0;
                    summaries.push(summary_with(task, language, t, &mode.name, distinct));
                }
            }
        }
        let report = report_of(
            modes.clone(),
            languages.clone(),
            plan.clone(),
            summaries.clone(),
        );
        let charts = charts(&report);
        assert_eq!(
            charts.len(),
            plan.len(),
            "one chart per task and temperature, no load"
        );
        let mut bars = 0;
        for (chart, &(task, t)) in charts.iter().zip(&plan) {
            let heading = format!(
                "{}: decode speed over specdec target-only, {} ",
                task.name(),
                temperature_label(t)
            );
            assert!(
                chart.title.starts_with(&heading),
                "{} for {heading}",
                chart.title
            );
            assert_eq!(chart.categories, languages);
            let names: Vec<&str> = chart.series.iter().map(|x| x.name.as_str()).collect();
            let mode_names: Vec<&str> = modes.iter().map(|m| m.name.as_str()).collect();
            assert_eq!(names, mode_names);
            for series in &chart.series {
                assert_eq!(series.values.len(), languages.len());
                for (language, &value) in languages.iter().zip(&series.values) {
                    let expected = summaries
                        .iter()
                        .find(|x| {
                            x.task == task
                                && x.temperature == t
                                && &x.language == language
                                && x.mode == series.name
                        })
                        .map(|x| x.speedup);
                    assert_eq!(
                        value,
                        expected,
                        "{} {} {language} {}",
                        task.name(),
                        temperature_label(t),
                        series.name
                    );
                    bars += usize::from(value.is_some());
                }
            }
        }
        assert_eq!(bars, summaries.len(), "every summary drawn once");
    }

    #[test]
    fn summaries_give_speedups_exactness_and_checks() {
        let modes = modes(&[2], 4, false, true);
        let runs = vec![
            run("de", "target", "Hello", 11, 100.0, 1100.0), // 10 tokens in 1 s
            run("de", "k=2", "Hello", 11, 100.0, 2100.0),    // 0.5×
            run("de", "ngram k=4", "Hullo", 11, 100.0, 600.0), // 2×, but not exact
            run("de", "adaptive", "Hello", 11, 100.0, 650.0),
            run("de", "llama-server", "Hi", 11, 100.0, 1100.0),
            run("de", "llama-server -md k=4", "Hi", 11, 100.0, 1600.0),
        ];
        let s = summarize(&runs, &modes, &["de".into()], &[(Task::Translate, 0.0)]);
        let get = |m: &str| s.iter().find(|x| x.mode == m).unwrap();
        assert!((get("target").decode_tokens_per_second - 10.0).abs() < 1e-9);
        assert!((get("k=2").speedup - 0.5).abs() < 1e-9);
        assert_eq!(get("k=2").exact, Some((1, 1)));
        assert_eq!(get("ngram k=4").exact, Some((0, 1)));
        assert_eq!(
            get("llama-server -md k=4").exact,
            Some((1, 1)),
            "against llama-server's own"
        );
        assert_eq!(get("target").exact, None);
        assert_eq!(get("adaptive").acceptance, Some(0.5));
        assert_eq!(get("adaptive").tau, Some(2.0));
        assert_eq!(get("adaptive").draft_length_share, vec![0.75, 0.25]);
        let c = &checks(&s, &modes)[0];
        assert_eq!(c.best_fixed.0, "ngram k=4");
        assert!((c.adaptive_vs_best.unwrap() - 1.0 / 1.1).abs() < 1e-9);
        assert!(!c.pass, "adaptive is 9 % behind the best configuration");
        let mut report = report_of(
            modes.clone(),
            vec!["de".into()],
            vec![(Task::Translate, 0.0)],
            s.clone(),
        );
        report.runs = runs;
        let md = markdown(&report);
        assert!(md.contains("| de | 10.0 (1.00×) | 5.0 (0.50×) |"), "{md}");
        assert!(md.contains("## translate: decode tokens/s"), "{md}");
        assert!(md.contains("**no**"));
        assert!(
            md.contains("- specdec: CPU kernels libggml-cpu-zen4.so"),
            "{md}"
        );
    }

    #[test]
    fn spreads_of_odd_even_and_single_counts() {
        let odd = Spread::of(&[3.0, 1.0, 2.0]).unwrap();
        assert_eq!((odd.median, odd.min, odd.max), (2.0, 1.0, 3.0));
        let even = Spread::of(&[4.0, 1.0, 3.0, 2.0]).unwrap();
        assert_eq!(
            (even.median, even.min, even.max),
            (2.5, 1.0, 4.0),
            "the mean of the middle two"
        );
        let single = Spread::of(&[1.7]).unwrap();
        assert_eq!((single.median, single.min, single.max), (1.7, 1.7, 1.7));
        assert_eq!(Spread::of(&[]), None);
        assert_eq!(median(&[]), 0.0);
        assert_eq!(median(&[5.0, 1.0]), 3.0);
    }

    #[test]
    fn repeats_give_medians_of_paired_ratios_and_their_range() {
        let modes = modes(&[2], 4, false, false);
        let repeated = |repeat, mode, text, e2e| Run {
            repeat,
            ..run("de", mode, text, 11, 100.0, e2e)
        };
        let runs = vec![
            repeated(0, "target", "Hello", 1100.0),   // 10 tokens/s
            repeated(0, "adaptive", "Hello", 600.0),  // 20 tokens/s: 2×
            repeated(1, "target", "Hello", 2100.0),   // the machine slowed down: 5 tokens/s
            repeated(1, "adaptive", "Hello", 2100.0), // 1×
            repeated(2, "target", "Hello", 1100.0),
            repeated(2, "adaptive", "Hullo", 900.0), // 12.5 tokens/s: 1.25×, not exact
        ];
        let s = summarize(&runs, &modes, &["de".into()], &[(Task::Translate, 0.0)]);
        let get = |m: &str| s.iter().find(|x| x.mode == m).unwrap();
        let adaptive = get("adaptive");
        assert_eq!(adaptive.requests, 3);
        assert_eq!(
            adaptive
                .per_repeat
                .iter()
                .map(|r| r.speedup)
                .collect::<Vec<_>>(),
            [2.0, 1.0, 1.25],
            "each repetition against target-only in the same repetition"
        );
        assert_eq!(adaptive.speedup, 1.25, "the median, not the pooled 1.21");
        assert_eq!(adaptive.decode_tokens_per_second, 12.5);
        assert_eq!(adaptive.e2e_ms, 900.0);
        assert_eq!(adaptive.exact, Some((2, 3)));
        let spread = adaptive.speedup_spread().unwrap();
        assert_eq!((spread.min, spread.max), (1.0, 2.0));
        assert_eq!(get("target").decode_tokens_per_second, 10.0);
        assert_eq!(get("target").speedup, 1.0);
        let json = serde_json::to_value(adaptive).unwrap();
        assert_eq!(json["per_repeat"][1]["decode_tokens_per_second"], 5.0);

        let mut report = report_of(modes, vec!["de".into()], vec![(Task::Translate, 0.0)], s);
        report.settings.repeat = 3;
        let md = markdown(&report);
        assert!(md.contains("every request sent 3 times"), "{md}");
        assert!(md.contains("Medians of 3 repetitions"), "{md}");
        assert!(
            md.contains("| de | 10.0 (1.00×, 1.00–1.00) | – | – | 12.5 (1.25×, 1.00–2.00) |"),
            "{md}"
        );
    }

    #[test]
    fn reports_from_before_repeats_still_read() {
        let settings: Settings = serde_json::from_value(serde_json::json!({
            "quick": true, "per_language": 1, "max_tokens": 40,
            "plan": [["translate", 0.0]], "fixed_lengths": [2], "draft_max": 4,
            "threads": 2, "gpu_layers": 0, "concurrency": []
        }))
        .unwrap();
        assert_eq!(settings.repeat, 1);
        let mut old =
            serde_json::to_value(run("de", "target", "Hello", 11, 100.0, 1100.0)).unwrap();
        old.as_object_mut().unwrap().remove("repeat");
        assert_eq!(serde_json::from_value::<Run>(old).unwrap().repeat, 0);
    }

    #[test]
    fn repeat_must_be_at_least_one() {
        assert_eq!(parse_repeat("1"), Ok(1));
        assert_eq!(parse_repeat("5"), Ok(5));
        assert!(parse_repeat("0").unwrap_err().contains("at least 1"));
        assert!(parse_repeat("-1").is_err());
        assert!(parse_repeat("three").is_err());
    }

    #[test]
    fn prefill_interference_alone_has_its_table_and_no_other() {
        use crate::interference::TimedStream;
        let alone = TimedStream {
            arrivals_ms: vec![0.0, 10.0, 20.0, 30.0],
            tokens: 8,
        };
        let beside = TimedStream {
            arrivals_ms: vec![0.0, 10.0, 20.0, 30.0, 530.0, 540.0],
            tokens: 6,
        };
        let specdec =
            PrefillInterference::new("specdec (adaptive)", &alone, &beside, (35.0, 535.0), 3012);
        let early = TimedStream {
            arrivals_ms: vec![0.0, 10.0, 20.0, 30.0],
            tokens: 4,
        };
        let llama = PrefillInterference::new("llama-server", &alone, &early, (35.0, 2035.0), 2990);
        let mut report = report_of(vec![], vec!["de".into()], vec![], vec![]);
        report.prefill_interference = vec![specdec, llama];
        let md = markdown(&report);
        assert!(md.contains("tasks: none"), "{md}");
        assert!(!md.contains("## Adaptive drafting: checks"), "{md}");
        assert!(!md.contains("## Load"), "{md}");
        assert!(md.contains("## Prefill interference"), "{md}");
        assert!(
            md.contains("| specdec (adaptive) | 10.0 | 10.0 | 10.0 | 500.0 | 500.0 | 2 | 50.00× | **no** | 0.50 | 3012 | 2.00 / 1.00 |"),
            "{md}"
        );
        assert!(
            md.contains("| llama-server | 10.0 | 10.0 | 0.0 | 0.0 | 0.0 | 0 | – | – | 2.00 | 2990 | 2.00 / 1.00 |"),
            "{md}"
        );
        assert!(
            md.contains("- llama-server: the stream ended before the prefill did"),
            "{md}"
        );
        assert!(
            !md.contains("- specdec (adaptive): the stream ended"),
            "{md}"
        );
        assert!(charts(&report).is_empty(), "no chart to draw");
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["prefill_interference"][0]["during_prefill"]["gaps"], 2);
        let mut old = json;
        old.as_object_mut().unwrap().remove("prefill_interference");
        let read: Report = serde_json::from_value(old).unwrap();
        assert!(
            read.prefill_interference.is_empty(),
            "reports from before still read"
        );
    }

    #[test]
    fn percentiles_by_nearest_rank() {
        let v: Vec<f64> = (1..=20).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 10.0);
        assert_eq!(percentile(&v, 95.0), 19.0);
        assert_eq!(percentile(&[3.0], 95.0), 3.0);
        assert_eq!(percentile(&[], 50.0), 0.0);
    }
}
