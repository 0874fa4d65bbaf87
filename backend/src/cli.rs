//! The `specdec` command line. Configuration is read here, once, and passed on
//! as plain structs.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::config::{DraftParams, DrafterConfig, DrafterKind, RegistryConfig, TargetConfig};
use crate::engine::{
    Batching, ChatMessage, DrafterChoice, Engine, EngineConfig, GenerationRequest, Prompt,
};
use crate::models;
use crate::speculative::sampling::SamplingParams;

/// Speculative decoding with language-specialised drafters on llama.cpp.
#[derive(Debug, Parser)]
#[command(name = "specdec", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Generate from one prompt and print the text and statistics.
    Generate(GenerateArgs),
    /// Validate a registry file and every drafter's compatibility, without serving.
    Check(CheckArgs),
    /// Serve the OpenAI-compatible HTTP API.
    Serve(ServeArgs),
    /// Download a model into the model directory, verifying its SHA-256.
    Fetch(FetchArgs),
}

#[derive(Debug, Args)]
struct FetchArgs {
    /// `https://` (or `http://`) URL of the file; stored under its last path segment.
    #[arg(long)]
    url: String,
    /// Expected SHA-256 (64 hex digits); a mismatch keeps nothing and fails.
    #[arg(long)]
    sha256: String,
    /// Expected size in bytes: a larger download is stopped there, and any
    /// other size fails like a checksum mismatch.
    #[arg(long)]
    size_bytes: Option<u64>,
    /// PEM bundle of the certificate authorities to trust for `https://`, in
    /// place of the public web's roots (a model server with a private CA).
    #[arg(long, env = "SPECDEC_FETCH_CA_FILE")]
    ca_file: Option<PathBuf>,
    /// Directory to store the file in (default: the model directory).
    #[arg(long, env = "SPECDEC_MODEL_DIR")]
    dir: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// The registry file (YAML). Without it: the default models in the model
    /// directory, the 0.5B drafter for the languages of the registry example.
    #[arg(long, env = "SPECDEC_REGISTRY")]
    registry: Option<PathBuf>,
    /// Address to listen on.
    #[arg(long, env = "SPECDEC_HOST", default_value = "127.0.0.1")]
    host: std::net::IpAddr,
    /// Port to listen on.
    #[arg(long, env = "SPECDEC_PORT", default_value_t = 8080)]
    port: u16,
    /// Model name served in the API (default: the target file's stem).
    #[arg(long, env = "SPECDEC_MODEL_NAME")]
    model_name: Option<String>,
    /// Sequences generated concurrently.
    #[arg(long, env = "SPECDEC_SLOTS", default_value_t = 2)]
    slots: usize,
    /// How passes serving several slots are bounded: `exact` (every request
    /// gets the tokens it gets alone) or `throughput` (passes hold every
    /// slot's rows; greedy output equal up to floating-point rounding).
    #[arg(long, env = "SPECDEC_BATCHING", value_enum, default_value_t = Batching::Exact)]
    batching: Batching,
    /// Requests that may wait for a slot before new ones get 429.
    #[arg(long, env = "SPECDEC_MAX_WAITING", default_value_t = 16)]
    max_waiting: usize,
    /// Longest a request may take, in seconds.
    #[arg(long, env = "SPECDEC_REQUEST_TIMEOUT", default_value_t = 600)]
    request_timeout: u64,
    /// Longest a client may take to send a request's head (or to keep an
    /// idle connection open), and then its body, in seconds.
    #[arg(long, env = "SPECDEC_READ_TIMEOUT", default_value_t = crate::server::listener::DEFAULT_READ_TIMEOUT_SECS, value_parser = clap::value_parser!(u64).range(1..))]
    read_timeout: u64,
    /// File of API keys `/v1/*` requires as `Authorization: Bearer KEY`
    /// (one per line; `#` comments). Without keys, anyone who reaches the
    /// port may use the model.
    #[arg(long, env = "SPECDEC_API_KEY_FILE")]
    api_key_file: Option<PathBuf>,
    /// API keys, comma-separated: for the environment (a command line is
    /// visible to every local user).
    #[arg(long, env = "SPECDEC_API_KEYS", hide_env_values = true)]
    api_keys: Option<String>,
    /// Most client connections open at once.
    #[arg(long, env = "SPECDEC_MAX_CONNECTIONS", default_value_t = crate::server::listener::DEFAULT_MAX_CONNECTIONS)]
    max_connections: usize,
    #[command(flatten)]
    engine: EngineArgs,
}

#[derive(Debug, Args)]
struct EngineArgs {
    /// CPU threads per evaluation (default: all cores).
    #[arg(long, env = "SPECDEC_THREADS")]
    threads: Option<u32>,
}

#[derive(Debug, Args)]
struct GenerateArgs {
    /// Target GGUF (default: the 1.5B Qwen target in the model directory).
    #[arg(long)]
    target: Option<PathBuf>,
    /// Drafter GGUF sharing the target's tokenizer.
    #[arg(long, conflicts_with = "ngram")]
    drafter: Option<PathBuf>,
    /// Draft by n-gram prompt lookup instead of a model.
    #[arg(long)]
    ngram: bool,
    /// Raw text prompt.
    #[arg(long, conflicts_with = "chat", required_unless_present = "chat")]
    prompt: Option<String>,
    /// A user message, rendered with the target's chat template.
    #[arg(long)]
    chat: Option<String>,
    /// A system message to put before `--chat`.
    #[arg(long, requires = "chat")]
    system: Option<String>,
    /// Most tokens to generate.
    #[arg(long, default_value_t = 128)]
    max_tokens: usize,
    /// Sampling temperature; 0 is greedy.
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    /// Top-k cut (0 disables).
    #[arg(long, default_value_t = 0)]
    top_k: usize,
    /// Nucleus cut (1 disables).
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,
    /// Min-p cut (0 disables).
    #[arg(long, default_value_t = 0.0)]
    min_p: f32,
    /// Seed: the same output for the same seed whatever drafting does (random when not given).
    #[arg(long)]
    seed: Option<u64>,
    /// Stop string (repeatable).
    #[arg(long)]
    stop: Vec<String>,
    /// Most tokens drafted per round.
    #[arg(long, default_value_t = DraftParams::default().max)]
    draft_max: u32,
    /// Fewer drafted tokens than this and the round skips speculation.
    #[arg(long, default_value_t = DraftParams::default().min)]
    draft_min: u32,
    /// Stop drafting when the drafter's top probability is below this.
    #[arg(long, default_value_t = DraftParams::default().p_min)]
    draft_p_min: f32,
    /// Choose each round's draft length (0 to --draft-max) from measured
    /// acceptance and costs instead of always drafting --draft-max.
    #[arg(long)]
    adaptive: bool,
    /// Context length.
    #[arg(long, default_value_t = crate::config::DEFAULT_CONTEXT)]
    context: u32,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    engine: EngineArgs,
}

#[derive(Debug, Args)]
struct CheckArgs {
    /// The registry file (YAML).
    #[arg(long, env = "SPECDEC_REGISTRY")]
    registry: PathBuf,
    /// Print what was found as one JSON object (runtime, verification and
    /// the calibrated costs) instead of text.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    engine: EngineArgs,
}

/// Run the command line; errors are printed, never panicked.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
    let result = match cli.command {
        Command::Generate(args) => generate(args),
        Command::Check(args) => check(args),
        Command::Serve(args) => serve(args),
        Command::Fetch(args) => fetch(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SPECDEC_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,specdec_backend=info"));
    // Colours only on a terminal: logs written to files stay plain text.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .try_init();
}

fn fetch(args: FetchArgs) -> anyhow::Result<()> {
    let dir = args.dir.unwrap_or_else(models::model_dir);
    let roots = match &args.ca_file {
        Some(path) => crate::fetch::TrustedRoots::from_pem_file(path)?,
        None => crate::fetch::TrustedRoots::Public,
    };
    let (path, outcome) =
        crate::fetch::fetch(&args.url, &args.sha256, args.size_bytes, &dir, &roots)?;
    match outcome {
        crate::fetch::FetchOutcome::Downloaded { bytes } => {
            println!(
                "{}: downloaded {bytes} bytes, sha256 verified",
                path.display()
            )
        }
        crate::fetch::FetchOutcome::AlreadyPresent => {
            println!("{}: already present, sha256 verified", path.display())
        }
    }
    Ok(())
}

const DRAFTER_NAME: &str = "drafter";

fn generate(args: GenerateArgs) -> anyhow::Result<()> {
    let target = args
        .target
        .unwrap_or_else(|| models::model_path(models::DEFAULT_TARGET_FILE));
    let draft = DraftParams {
        max: args.draft_max,
        min: args.draft_min,
        p_min: args.draft_p_min,
        adaptive: args.adaptive,
    };
    let drafter = match (&args.drafter, args.ngram) {
        (Some(path), _) => Some(DrafterConfig {
            name: DRAFTER_NAME.into(),
            kind: DrafterKind::Model,
            languages: Vec::new(),
            model: Some(path.clone()),
            gpu_layers: 0,
            draft,
        }),
        (None, true) => Some(DrafterConfig {
            name: DRAFTER_NAME.into(),
            kind: DrafterKind::Ngram,
            languages: Vec::new(),
            model: None,
            gpu_layers: 0,
            draft,
        }),
        (None, false) => None,
    };
    let mut config = EngineConfig::new(TargetConfig {
        model: target,
        context: args.context,
        gpu_layers: 0,
    });
    if let Some(threads) = args.engine.threads {
        config.threads = threads;
    }
    let choice = match &drafter {
        Some(d) => DrafterChoice::Named(d.name.clone()),
        None => DrafterChoice::None,
    };
    config.drafters.extend(drafter);
    let prompt = match (args.prompt, args.chat) {
        (Some(text), _) => Prompt::Text(text),
        (None, Some(user)) => {
            let mut messages = Vec::new();
            if let Some(system) = args.system {
                messages.push(ChatMessage {
                    role: "system".into(),
                    content: system,
                });
            }
            messages.push(ChatMessage {
                role: "user".into(),
                content: user,
            });
            Prompt::Chat(messages)
        }
        (None, None) => anyhow::bail!("give --prompt or --chat"),
    };
    let engine = Engine::start(config)?;
    let request = GenerationRequest {
        prompt,
        max_tokens: args.max_tokens,
        sampling: SamplingParams {
            temperature: args.temperature,
            top_k: args.top_k,
            top_p: args.top_p,
            min_p: args.min_p,
            seed: args.seed,
        },
        drafter: choice,
        draft: None,
        stop: args.stop,
        language: None,
    };
    let completion = engine.generate_blocking(request)?;
    if args.json {
        println!("{}", serde_json::to_string(&completion)?);
    } else {
        println!("{}", completion.text);
        let s = &completion.stats;
        eprintln!(
            "[{} prompt + {} generated tokens, finish {:?}; {:.1} tokens/s; {} rounds, drafted {}, accepted {} ({:.1} %), mean accepted length {:.2}]",
            s.prompt_tokens,
            s.completion_tokens,
            completion.finish_reason,
            s.tokens_per_second,
            s.rounds,
            s.draft_tokens,
            s.accepted_tokens,
            s.acceptance_rate * 100.0,
            s.mean_accepted_length,
        );
    }
    Ok(())
}

/// Read and validate a registry file, including that its model files exist.
fn read_registry(path: &std::path::Path) -> anyhow::Result<RegistryConfig> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
    let mut registry =
        RegistryConfig::from_yaml(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    registry.resolve_model_paths(&models::model_dir());
    check_model_files(&registry)?;
    Ok(registry)
}

fn check_model_files(registry: &RegistryConfig) -> anyhow::Result<()> {
    let models = std::iter::once(("the target", &registry.target.model)).chain(
        registry
            .drafters
            .iter()
            .filter_map(|d| d.model.as_ref().map(|m| (d.name.as_str(), m))),
    );
    for (owner, path) in models {
        if !path.is_file() {
            anyhow::bail!("model file {} of {owner} does not exist", path.display());
        }
    }
    Ok(())
}

/// The registry used when `serve` is given none: the default models, the
/// 0.5B drafter for the languages of the design's example.
fn default_registry() -> RegistryConfig {
    RegistryConfig {
        target: TargetConfig {
            model: models::model_path(models::DEFAULT_TARGET_FILE),
            context: crate::config::DEFAULT_CONTEXT,
            gpu_layers: 0,
        },
        drafters: vec![DrafterConfig {
            name: "qwen-0.5b".into(),
            kind: DrafterKind::Model,
            languages: ["de", "fr", "es", "it", "pt", "ja", "zh"]
                .map(String::from)
                .to_vec(),
            model: Some(models::model_path(models::DEFAULT_DRAFTER_FILE)),
            gpu_layers: 0,
            draft: DraftParams::default(),
        }],
        default: None,
    }
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let registry = match &args.registry {
        Some(path) => read_registry(path)?,
        None => {
            let registry = default_registry();
            check_model_files(&registry)
                .map_err(|e| anyhow::anyhow!("{e} (run scripts/fetch-models)"))?;
            registry
        }
    };
    let model_name = args.model_name.unwrap_or_else(|| {
        registry
            .target
            .model
            .file_stem()
            .map_or_else(|| "specdec".into(), |s| s.to_string_lossy().into_owned())
    });
    let api_keys =
        crate::server::auth::ApiKeys::load(args.api_key_file.as_deref(), args.api_keys.as_deref())
            .map_err(|e| anyhow::anyhow!(e))?;
    let config = crate::server::ServerConfig {
        registry,
        listen: std::net::SocketAddr::new(args.host, args.port),
        model_name,
        slots: args.slots.max(1),
        batching: args.batching,
        max_waiting: args.max_waiting,
        request_timeout: std::time::Duration::from_secs(args.request_timeout.max(1)),
        http: crate::server::listener::HttpLimits {
            read_timeout: std::time::Duration::from_secs(args.read_timeout),
            max_connections: args.max_connections,
        },
        api_keys,
        threads: args
            .engine
            .threads
            .unwrap_or_else(crate::engine::default_threads),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(crate::server::serve(config))
}

fn check(args: CheckArgs) -> anyhow::Result<()> {
    let registry = read_registry(&args.registry)?;
    let mut config = EngineConfig::from_registry(&registry);
    if let Some(threads) = args.engine.threads {
        config.threads = threads;
    }
    let engine = Engine::start(config)?;
    let info = engine.info();
    if args.json {
        let report = serde_json::json!({
            "target": registry.target.model,
            "context": info.context,
            "drafters": info.drafters,
            "runtime": info.runtime,
            "verification": info.verification,
            "costs": info.costs,
        });
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    println!(
        "ok: target {} (context {}), drafters: {}",
        registry.target.model.display(),
        info.context,
        info.drafters.join(", ")
    );
    println!(
        "llama.cpp CPU kernels: {} ({}); weight buffer types: {}",
        info.runtime.cpu_module_path.display(),
        info.runtime.cpu_features.join(" "),
        if info.runtime.cpu_buffer_types.is_empty() {
            "none".to_string()
        } else {
            info.runtime.cpu_buffer_types.join(" ")
        }
    );
    let v = &info.verification;
    match &v.exactness {
        Some(e) => println!(
            "verification: passes of up to {} tokens (measured exact up to {} of at most {}{}){}",
            v.max_verify_batch,
            e.exact_tokens,
            e.tried_up_to,
            e.first_inexact
                .map(|(n, d)| format!("; {n} tokens differ by up to {d:.3}"))
                .unwrap_or_default(),
            if v.target_on_gpu {
                "; target on GPU"
            } else {
                ""
            }
        ),
        None => println!("verification: none (no drafters)"),
    }
    if info.slots > 1 {
        println!(
            "{} slots: target passes shared by slots hold up to {} rows; prompts read beside \
             decoding slots advance {} tokens a step",
            info.slots, v.shared_pass_rows, v.prompt_granularity
        );
    }
    if let Some(costs) = &info.costs {
        let unit = costs.target_passes.first().map_or(1.0, |p| p.1);
        println!("calibrated costs (through the logits; ms, and relative to a one-token pass):");
        for (tokens, ms) in &costs.target_passes {
            println!(
                "  target pass of {tokens:>2} tokens: {ms:8.2} ms  {:5.2}x",
                ms / unit
            );
        }
        for (i, ms) in costs.draft_steps.iter().enumerate() {
            println!(
                "  draft step, drafter model {i}: {ms:8.2} ms  {:5.2}x",
                ms / unit
            );
        }
        println!(
            "  sampling one position: greedy {:.3} ms, at temperature 1 {:.3} ms",
            costs.sampling.greedy_ms, costs.sampling.sampled_ms
        );
    }
    Ok(())
}
