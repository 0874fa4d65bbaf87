//! `specdec-bench`: the multilingual benchmark of specdec against llama.cpp's
//! own server (see bench/README.md). It starts both servers on loopback with
//! the same models, threads and slots, sends the same translate-to-English
//! prompts to each configuration in turn, and writes JSON, Markdown and a PNG
//! chart under the output directory. `--prefill-interference` measures instead
//! the inter-token latency of a streamed request while a long prompt is read.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context};
use clap::Parser;
use tokio::sync::Mutex;

use specdec_bench::client::{chat, chat_body, Sampling};
use specdec_bench::corpus::{Paragraph, Selection};
use specdec_bench::modes::ServerKind;
use specdec_bench::report::{LoadResult, Machine, Report, Run, Settings};
use specdec_bench::servers::{Server, ServerSettings};
use specdec_bench::tasks::Task;
use specdec_bench::{chart, chrf, corpus, interference, modes, report, servers};

/// Run the benchmark.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// A short run (one paragraph per language, short outputs) that takes
    /// under 15 minutes on a 2-core CPU.
    #[arg(long)]
    quick: bool,
    /// Paragraphs per language (default: 1 quick, 3 full).
    #[arg(long)]
    per_language: Option<usize>,
    /// Most tokens generated per request (default: 40 quick, 128 full; 96
    /// for the stream of `--prefill-interference`).
    #[arg(long)]
    max_tokens: Option<u32>,
    /// Languages (Debian's codes), default all eight.
    #[arg(long, value_delimiter = ',')]
    languages: Vec<String>,
    /// Fixed draft lengths of the 0.5B drafter.
    #[arg(long, value_delimiter = ',', default_value = "1,2,4")]
    fixed_lengths: Vec<u32>,
    /// Draft length of n-gram drafting, llama-server's drafting and the upper
    /// bound of adaptive drafting (default: the longest fixed length).
    #[arg(long)]
    draft_max: Option<u32>,
    /// Tasks measured.
    #[arg(long, value_delimiter = ',', default_value = "translate,proofread")]
    tasks: Vec<Task>,
    /// Temperatures of the translation task (0 is greedy; others use fixed seeds).
    #[arg(long, value_delimiter = ',', default_value = "0,0.7")]
    temperatures: Vec<f32>,
    /// Temperatures of the proofreading task.
    #[arg(long, value_delimiter = ',', default_value = "0")]
    proofread_temperatures: Vec<f32>,
    /// Times each request is sent to each mode (same prompt and seed): the
    /// report gives medians and the speedups' range, so that a difference
    /// between languages can be told from the noise of a shared machine.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = report::parse_repeat)]
    repeat: usize,
    /// Concurrent clients in the load mode (`--concurrency` alone: skip it).
    #[arg(long, value_delimiter = ',', num_args = 0.., default_value = "1,4,8")]
    concurrency: Vec<usize>,
    /// Measure only the prefill interference: a greedy translation streams
    /// alone, then again while a second request's long prompt is read; the
    /// stream's inter-token gaps during that prefill against its gaps alone,
    /// on specdec (adaptive) and llama-server, each with 2 slots and a
    /// context of at least 4096 per slot. No per-language modes, no load runs.
    #[arg(long)]
    prefill_interference: bool,
    /// Measure only the load runs (no per-language modes).
    #[arg(long, conflicts_with = "prefill_interference")]
    load_only: bool,
    /// Also measure specdec with throughput batching (`--batching
    /// throughput`: passes hold every slot's rows, not only as many as stay
    /// bit-identical) in the load runs and the prefill interference.
    #[arg(long)]
    throughput_batching: bool,
    /// Size of the long prompt of `--prefill-interference`, in tokens
    /// (estimated from its characters; the report gives the server's count).
    #[arg(long, default_value_t = interference::DEFAULT_LONG_PROMPT_TOKENS, requires = "prefill_interference")]
    long_prompt_tokens: u32,
    /// CPU threads per evaluation for both servers (default: all cores).
    #[arg(long)]
    threads: Option<u32>,
    /// Layers offloaded to the GPU (GPU builds; 0 on CPU).
    #[arg(long, default_value_t = 0)]
    gpu_layers: u32,
    /// Context per sequence.
    #[arg(long, default_value_t = 2048)]
    context: u32,
    /// The `specdec` binary.
    #[arg(long, env = "SPECDEC_BIN", required_unless_present = "export_prompts")]
    specdec: Option<PathBuf>,
    /// A `specdec` built for this machine's CPU only (static llama.cpp,
    /// `-march=native`; `BENCH_NATIVE=1 bench/setup` builds it): adds its
    /// target-only mode, measured right after the portable build's, so the
    /// cost of portability shows as a ratio.
    #[arg(long, env = "SPECDEC_NATIVE_BIN")]
    native_specdec: Option<PathBuf>,
    /// llama.cpp's `llama-server` binary.
    #[arg(long, env = "LLAMA_SERVER_BIN", required_unless_present_any = ["without_llama_server", "export_prompts"])]
    llama_server: Option<PathBuf>,
    /// Measure specdec alone: no llama-server modes and load runs (where no
    /// llama-server is built, as on the device kit's GPU machine).
    #[arg(long, conflicts_with = "llama_server")]
    without_llama_server: bool,
    /// Directory of the GGUF models.
    #[arg(long, env = "SPECDEC_MODEL_DIR")]
    model_dir: Option<PathBuf>,
    /// The target, a file in the model directory.
    #[arg(long, default_value = TARGET_FILE)]
    target_file: PathBuf,
    /// The drafter of the fixed-length and adaptive modes, a file in the
    /// model directory (same vocabulary as the target).
    #[arg(long, default_value = DRAFTER_FILE)]
    drafter_file: PathBuf,
    /// The Debian Reference's HTML.
    #[arg(long, default_value = corpus::DEFAULT_DIR)]
    corpus_dir: PathBuf,
    /// Read the paragraphs from this JSON file (written by
    /// `--export-prompts`) instead of the Debian Reference, for machines
    /// without it.
    #[arg(long, conflicts_with = "export_prompts")]
    prompts: Option<PathBuf>,
    /// Write the paragraphs the selection takes from the Debian Reference to
    /// this JSON file, then exit.
    #[arg(long)]
    export_prompts: Option<PathBuf>,
    /// Font for the chart.
    #[arg(long, default_value = chart::DEFAULT_FONT_PATH)]
    font: PathBuf,
    /// Where reports go.
    #[arg(long, default_value = "bench/results")]
    out: PathBuf,
    /// Name of the report files (default: `quick`, `full` or
    /// `prefill-interference`, plus `-gpu` with GPU layers).
    #[arg(long)]
    name: Option<String>,
}

const TARGET_FILE: &str = "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf";
const DRAFTER_FILE: &str = "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf";

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let started = Instant::now();
    let started_at = jiff::Timestamp::now()
        .round(jiff::Unit::Second)?
        .to_string();
    let per_language = args.per_language.unwrap_or(if args.quick { 1 } else { 3 });
    let prefill_interference = args.prefill_interference;
    let max_tokens = args.max_tokens.unwrap_or(if prefill_interference {
        interference::DEFAULT_STREAM_TOKENS
    } else if args.quick {
        40
    } else {
        128
    });
    let languages: Vec<String> = if args.languages.is_empty() {
        corpus::LANGUAGES.iter().map(|s| s.to_string()).collect()
    } else {
        args.languages.clone()
    };
    if args.fixed_lengths.is_empty() || args.fixed_lengths.contains(&0) {
        bail!("--fixed-lengths needs lengths of at least 1");
    }
    let draft_max = args
        .draft_max
        .unwrap_or_else(|| args.fixed_lengths.iter().copied().max().unwrap_or(4));
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get() as u32));
    // The load levels measured; the prefill interference has none.
    let load_levels: &[usize] = if prefill_interference {
        &[]
    } else {
        &args.concurrency
    };
    let (slots, context) = if prefill_interference {
        (
            interference::SLOTS,
            interference::context_for(args.context, args.long_prompt_tokens),
        )
    } else {
        (
            args.concurrency.iter().copied().max().unwrap_or(1).max(1),
            args.context,
        )
    };
    let language_refs: Vec<&str> = languages.iter().map(String::as_str).collect();
    let paragraphs = match &args.prompts {
        Some(path) => read_prompts(path, &language_refs, per_language)?,
        None => corpus::extract(
            &args.corpus_dir,
            &language_refs,
            &Selection::new(per_language),
        )
        .context("cannot build the corpus")?,
    };
    tracing::info!(paragraphs = paragraphs.len(), "corpus ready");
    if let Some(path) = &args.export_prompts {
        std::fs::write(path, serde_json::to_string_pretty(&paragraphs)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
        eprintln!(
            "wrote {} paragraphs to {}",
            paragraphs.len(),
            path.display()
        );
        return Ok(());
    }
    let Some(model_dir) = &args.model_dir else {
        bail!("the model directory is not set (--model-dir or SPECDEC_MODEL_DIR)");
    };
    let Some(specdec_bin) = &args.specdec else {
        bail!("the specdec binary is not set (--specdec or SPECDEC_BIN)");
    };
    for (what, path) in [("specdec", specdec_bin), ("the chart font", &args.font)]
        .into_iter()
        .chain(args.llama_server.as_ref().map(|p| ("llama-server", p)))
        .chain(
            args.native_specdec
                .as_ref()
                .map(|p| ("the native specdec", p)),
        )
    {
        if !path.is_file() {
            bail!(
                "{what}: {} does not exist (run bench/setup)",
                path.display()
            );
        }
    }
    let settings = ServerSettings {
        target: model_dir.join(&args.target_file),
        drafter: model_dir.join(&args.drafter_file),
        threads,
        slots,
        context,
        draft_max,
        gpu_layers: args.gpu_layers,
    };
    for model in [&settings.target, &settings.drafter] {
        if !model.is_file() {
            bail!("{} is missing (run scripts/fetch-models)", model.display());
        }
    }

    let work_dir = args.out.join("tmp");
    std::fs::create_dir_all(&work_dir)?;
    let iso: Vec<String> = {
        let mut v: Vec<String> = paragraphs.iter().map(|p| p.iso639_1.clone()).collect();
        v.sort();
        v.dedup();
        v
    };
    let registry = servers::registry(&settings, &iso);
    let specdec = servers::start_specdec(
        "specdec",
        specdec_bin,
        &registry,
        &settings,
        "exact",
        &work_dir,
    )?;
    let specdec_throughput = if args.throughput_batching {
        Some(servers::start_specdec(
            "specdec-throughput",
            specdec_bin,
            &registry,
            &settings,
            "throughput",
            &work_dir,
        )?)
    } else {
        None
    };
    let native = match args
        .native_specdec
        .as_ref()
        .filter(|_| !prefill_interference)
    {
        Some(binary) => Some(servers::start_specdec(
            "specdec-native",
            binary,
            &registry,
            &settings,
            "exact",
            &work_dir,
        )?),
        None => None,
    };
    let llama = match &args.llama_server {
        Some(binary) => Some(servers::start_llama_server(
            binary, &settings, false, &work_dir,
        )?),
        None => None,
    };
    // The prefill interference measures llama-server without its drafter only.
    let llama_draft = match args
        .llama_server
        .as_ref()
        .filter(|_| !prefill_interference && !args.load_only)
    {
        Some(binary) => Some(servers::start_llama_server(
            binary, &settings, true, &work_dir,
        )?),
        None => None,
    };
    // Modes of servers that do not run are never measured.
    let server_of = |kind: ServerKind| -> &Server {
        match kind {
            ServerKind::Specdec => &specdec,
            ServerKind::SpecdecNative => native.as_ref().unwrap_or(&specdec),
            ServerKind::LlamaServer => llama.as_ref().unwrap_or(&specdec),
            ServerKind::LlamaServerDraft => llama_draft.as_ref().unwrap_or(&specdec),
        }
    };

    let modes = if prefill_interference {
        Vec::new()
    } else {
        modes::modes(
            &args.fixed_lengths,
            draft_max,
            native.is_some(),
            llama.is_some(),
        )
    };
    // A fresh connection per request: llama-server may close idle ones.
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()?;
    let mut specdec_kernels = Vec::new();
    for server in std::iter::once(&specdec)
        .chain(specdec_throughput.as_ref())
        .chain(native.as_ref())
    {
        let metrics = client
            .get(format!("{}/metrics", server.base_url))
            .send()
            .await?
            .text()
            .await?;
        let kernels = servers::describe_kernels(&metrics);
        tracing::info!(server = %server.name, %kernels, "specdec's llama.cpp kernels");
        specdec_kernels.push(format!("{}: {kernels}", server.name));
    }
    // One unmeasured request per server warms caches and threads.
    for server in std::iter::once(&specdec)
        .chain(specdec_throughput.as_ref())
        .chain(llama.as_ref())
        .chain(llama_draft.as_ref())
        .chain(native.as_ref())
    {
        let body = chat_body(
            "Say hello.",
            8,
            Sampling {
                temperature: 0.0,
                seed: 0,
            },
            &Default::default(),
        );
        chat(&client, &server.base_url, &body)
            .await
            .with_context(|| format!("warm-up of {}:\n{}", server.name, server.log_tail()))?;
    }

    let tasks: &[Task] = if prefill_interference || args.load_only {
        &[]
    } else {
        &args.tasks
    };
    let plan: Vec<(Task, f32)> = tasks
        .iter()
        .flat_map(|&task| {
            let temperatures = match task {
                Task::Translate => &args.temperatures,
                Task::Proofread => &args.proofread_temperatures,
            };
            temperatures.iter().map(move |&t| (task, t))
        })
        .collect();
    let mut runs = Vec::new();
    let total = paragraphs.len() * plan.len() * modes.len() * args.repeat;
    // The repetitions of a request are apart by the other paragraphs'
    // requests, so that they meet the machine at different moments; within
    // each, the compared modes still run back to back.
    for &(task, temperature) in &plan {
        for repeat in 0..args.repeat {
            for (index, paragraph) in paragraphs.iter().enumerate() {
                let sampling = Sampling {
                    temperature,
                    seed: 1000 + index as u64,
                };
                let user = task.prompt(paragraph);
                let reference = task.reference(paragraph);
                for mode in modes::measurement_order(&modes) {
                    let server = server_of(mode.server);
                    let body = chat_body(
                        &user,
                        max_tokens,
                        sampling,
                        &mode.request_fields(&paragraph.iso639_1),
                    );
                    let measurement =
                        chat(&client, &server.base_url, &body)
                            .await
                            .with_context(|| {
                                format!(
                                    "{} on {}:\n{}",
                                    mode.name,
                                    paragraph.origin,
                                    server.log_tail()
                                )
                            })?;
                    tracing::info!(
                        done = runs.len() + 1,
                        total,
                        task = task.name(),
                        language = %paragraph.language,
                        temperature,
                        repeat,
                        mode = %mode.name,
                        tokens = measurement.completion_tokens,
                        e2e_ms = measurement.e2e_ms as u64,
                        "measured"
                    );
                    runs.push(Run {
                        task,
                        language: paragraph.language.clone(),
                        origin: paragraph.origin.clone(),
                        temperature,
                        mode: mode.name.clone(),
                        chrf: chrf::chrf(&measurement.text, reference),
                        measurement,
                        reference: reference.to_string(),
                        repeat,
                    });
                }
            }
        }
    }

    let mut load = Vec::new();
    // llama-server's drafting is left out of the load runs: on CPU it is
    // far slower than its plain decoding (see the per-language tables).
    for (name, server, fields) in std::iter::once(("specdec (adaptive)", &specdec, true))
        .chain(
            specdec_throughput
                .as_ref()
                .map(|s| ("specdec (adaptive, throughput batching)", s, true)),
        )
        .chain(llama.as_ref().map(|l| ("llama-server", l, false)))
    {
        for &concurrency in load_levels {
            let result = load_run(
                &client,
                server,
                name,
                concurrency,
                &paragraphs,
                max_tokens,
                fields,
            )
            .await?;
            tracing::info!(
                server = name,
                concurrency,
                tokens_per_second = result.aggregate_tokens_per_second,
                "load"
            );
            load.push(result);
        }
    }
    let mut prefill = Vec::new();
    if prefill_interference {
        let paragraph = interference::stream_paragraph(&paragraphs)
            .context("no paragraph to stream a translation of")?;
        let long_prompt = interference::long_prompt(&paragraphs, args.long_prompt_tokens)?;
        let greedy = Sampling {
            temperature: 0.0,
            seed: 0,
        };
        for (name, server, specdec_fields) in
            std::iter::once(("specdec (adaptive)", &specdec, true))
                .chain(
                    specdec_throughput
                        .as_ref()
                        .map(|s| ("specdec (adaptive, throughput batching)", s, true)),
                )
                .chain(llama.as_ref().map(|l| ("llama-server", l, false)))
        {
            let stream_body = chat_body(
                &Task::Translate.prompt(paragraph),
                max_tokens,
                greedy,
                &request_fields(specdec_fields, Some(&paragraph.iso639_1)),
            );
            // specdec routes the long prompt by its language, as any request.
            let long_body = chat_body(
                &long_prompt,
                interference::LONG_MAX_TOKENS,
                greedy,
                &request_fields(specdec_fields, None),
            );
            let result =
                interference::measure(&client, server, name, &stream_body, &long_body).await?;
            tracing::info!(
                server = name,
                baseline_p95_ms = result.baseline.p95_ms,
                prefill_p95_ms = result.during_prefill.p95_ms,
                gaps = result.during_prefill.gaps,
                prefill_s = result.prefill_s,
                long_prompt_tokens = result.long_prompt_tokens,
                "prefill interference"
            );
            prefill.push(result);
        }
    }
    drop((specdec, specdec_throughput, native, llama, llama_draft));

    let summaries = report::summarize(&runs, &modes, &languages, &plan);
    let report = Report {
        started: started_at,
        duration_s: started.elapsed().as_secs_f64(),
        machine: Machine {
            specdec_kernels,
            ..machine(args.llama_server.as_deref())
        },
        settings: Settings {
            quick: args.quick,
            per_language,
            max_tokens,
            plan: plan.clone(),
            fixed_lengths: args.fixed_lengths.clone(),
            draft_max,
            threads,
            gpu_layers: args.gpu_layers,
            concurrency: load_levels.to_vec(),
            repeat: args.repeat,
        },
        modes,
        languages,
        summaries,
        load,
        prefill_interference: prefill,
        runs,
    };
    let name = args.name.clone().unwrap_or_else(|| {
        let base = if prefill_interference {
            "prefill-interference"
        } else if args.load_only {
            "load"
        } else if args.quick {
            "quick"
        } else {
            "full"
        };
        if args.gpu_layers > 0 {
            format!("{base}-gpu")
        } else {
            base.into()
        }
    });
    std::fs::create_dir_all(&args.out)?;
    let json_path = args.out.join(format!("{name}.json"));
    let md_path = args.out.join(format!("{name}.md"));
    let png_path = args.out.join(format!("{name}.png"));
    std::fs::write(&json_path, serde_json::to_string_pretty(&report)?)?;
    std::fs::write(&md_path, report::markdown(&report))?;
    let mut written = vec![
        json_path.display().to_string(),
        md_path.display().to_string(),
    ];
    // The prefill interference alone has no chart.
    if !report::charts(&report).is_empty() {
        report::chart(&report, &args.font, &png_path)?;
        written.push(png_path.display().to_string());
    }
    println!("{}", report::markdown(&report));
    eprintln!("wrote {} in {:.0} s", written.join(", "), report.duration_s);
    Ok(())
}

/// Requests each load client sends: a client whose request ends sends its
/// next while the others' are still running, as a steady load does.
const LOAD_REQUESTS_PER_CLIENT: usize = 2;

/// `concurrency` clients send greedy requests (`LOAD_REQUESTS_PER_CLIENT`
/// each) from a shared queue; aggregate throughput and latency percentiles.
async fn load_run(
    client: &reqwest::Client,
    server: &Server,
    name: &str,
    concurrency: usize,
    paragraphs: &[Paragraph],
    max_tokens: u32,
    specdec_fields: bool,
) -> anyhow::Result<LoadResult> {
    let requests = concurrency.max(1) * LOAD_REQUESTS_PER_CLIENT;
    let queue: Vec<serde_json::Value> = (0..requests)
        .map(|i| {
            let p = &paragraphs[i % paragraphs.len()];
            chat_body(
                &Task::Translate.prompt(p),
                max_tokens,
                Sampling {
                    temperature: 0.0,
                    seed: i as u64,
                },
                &request_fields(specdec_fields, Some(&p.iso639_1)),
            )
        })
        .collect();
    let queue = Arc::new(Mutex::new(queue));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency.max(1) {
        let queue = Arc::clone(&queue);
        let client = client.clone();
        let url = server.base_url.clone();
        tasks.push(tokio::spawn(async move {
            let mut done = Vec::new();
            loop {
                let Some(body) = queue.lock().await.pop() else {
                    return Ok::<_, anyhow::Error>(done);
                };
                done.push(chat(&client, &url, &body).await?);
            }
        }));
    }
    let mut measurements = Vec::new();
    for task in tasks {
        measurements.extend(task.await.context("a load client panicked")??);
    }
    let wall_s = started.elapsed().as_secs_f64();
    let tokens: u64 = measurements
        .iter()
        .map(|m| m.tokens_without_end(!specdec_fields))
        .sum();
    let latencies: Vec<f64> = measurements.iter().map(|m| m.e2e_ms).collect();
    Ok(LoadResult {
        server: name.into(),
        concurrency,
        requests: measurements.len(),
        tokens,
        wall_s,
        aggregate_tokens_per_second: tokens as f64 / wall_s.max(1e-9),
        p50_ms: report::percentile(&latencies, 50.0),
        p95_ms: report::percentile(&latencies, 95.0),
    })
}

/// The fields a request adds for its server: for specdec, the `language`
/// that routes it (when given); for llama-server, its prompt cache turned
/// off (specdec has none, and the benchmark sends prompts several times).
fn request_fields(
    specdec: bool,
    language: Option<&str>,
) -> serde_json::Map<String, serde_json::Value> {
    let mut fields = serde_json::Map::new();
    if specdec {
        if let Some(language) = language {
            fields.insert("language".into(), language.into());
        }
    } else {
        fields.insert("cache_prompt".into(), false.into());
    }
    fields
}

/// The paragraphs of `languages` in an exported prompt file, at most
/// `per_language` each, in file order.
fn read_prompts(
    path: &Path,
    languages: &[&str],
    per_language: usize,
) -> anyhow::Result<Vec<Paragraph>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the prompts in {}", path.display()))?;
    let all: Vec<Paragraph> = serde_json::from_str(&text)
        .with_context(|| format!("{} is not a prompt file", path.display()))?;
    let mut chosen = Vec::new();
    for &language in languages {
        let of_language: Vec<Paragraph> = all
            .iter()
            .filter(|p| p.language == language)
            .take(per_language)
            .cloned()
            .collect();
        if of_language.is_empty() {
            bail!("{} holds no paragraph in {language}", path.display());
        }
        chosen.extend(of_language);
    }
    Ok(chosen)
}

fn read(path: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

fn command_output(program: &str, args: &[&str]) -> Option<String> {
    let out = std::process::Command::new(program)
        .args(args)
        .output()
        .ok()?;
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    Some(text.trim().to_string())
}

/// The machine and software this run measures.
fn machine(llama_server: Option<&Path>) -> Machine {
    let cpu = report::cpu_name();
    let memory_gib = read("/proc/meminfo")
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|r| r.split_whitespace().next()?.parse::<f64>().ok())
        .map_or(0.0, |kib| kib / 1024.0 / 1024.0);
    let gpus = command_output("nvidia-smi", &["--query-gpu=name", "--format=csv,noheader"])
        .map(|s| {
            s.lines()
                .map(str::to_string)
                .filter(|l| !l.is_empty() && !l.contains("failed"))
                .collect()
        })
        .unwrap_or_default();
    let commit = command_output("git", &["rev-parse", "--short=12", "HEAD"]).unwrap_or_default();
    let dirty = command_output("git", &["status", "--porcelain", "--untracked-files=no"])
        .is_some_and(|s| !s.is_empty());
    let llama_version = llama_server
        .and_then(|binary| command_output(&binary.to_string_lossy(), &["--version"]))
        .and_then(|s| {
            s.lines()
                .find(|l| l.contains("version"))
                .map(str::to_string)
        })
        .unwrap_or_default();
    Machine {
        cpu,
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        memory_gib,
        gpus,
        kernel: read("/proc/sys/kernel/osrelease").trim().to_string(),
        commit: if dirty {
            format!("{commit}-dirty")
        } else {
            commit
        },
        llama_server: llama_version,
        specdec_kernels: Vec::new(),
    }
}
