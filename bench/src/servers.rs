//! The servers under test, started as child processes on loopback and
//! stopped when dropped: specdec's own server and llama.cpp's llama-server.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use specdec_backend::config::{
    DraftParams, DrafterConfig, DrafterKind, RegistryConfig, TargetConfig,
};

/// How long a server may take to load its models.
const START_TIMEOUT: Duration = Duration::from_secs(300);

/// The model name requests use; both servers answer to it.
pub const MODEL_NAME: &str = "bench";

/// Names of the drafters in the benchmark's registry.
pub const MODEL_DRAFTER: &str = "qwen-0-5b";
/// The model-free drafter.
pub const NGRAM_DRAFTER: &str = "ngram";

/// A running server.
pub struct Server {
    /// What it is, for messages.
    pub name: String,
    /// `http://127.0.0.1:PORT`.
    pub base_url: String,
    child: Child,
    log: PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    /// The last lines of the server's log, for error messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

/// Models and settings shared by both servers.
#[derive(Debug, Clone)]
pub struct ServerSettings {
    /// The target GGUF.
    pub target: PathBuf,
    /// The drafter GGUF.
    pub drafter: PathBuf,
    /// CPU threads per evaluation.
    pub threads: u32,
    /// Parallel sequences.
    pub slots: usize,
    /// Context per sequence.
    pub context: u32,
    /// Most tokens drafted per round.
    pub draft_max: u32,
    /// Layers offloaded to a GPU (0 on CPU).
    pub gpu_layers: u32,
}

/// A free loopback port.
fn free_port() -> anyhow::Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// The registry the benchmark serves: the 0.5B drafter for every benchmark
/// language, adaptive by default, and an n-gram drafter chosen per request.
pub fn registry(settings: &ServerSettings, languages: &[String]) -> RegistryConfig {
    let adaptive = DraftParams {
        max: settings.draft_max,
        adaptive: true,
        ..DraftParams::default()
    };
    RegistryConfig {
        target: TargetConfig {
            model: settings.target.clone(),
            context: settings.context,
            gpu_layers: settings.gpu_layers,
        },
        drafters: vec![
            DrafterConfig {
                name: MODEL_DRAFTER.into(),
                kind: DrafterKind::Model,
                languages: languages.to_vec(),
                model: Some(settings.drafter.clone()),
                gpu_layers: settings.gpu_layers,
                draft: adaptive,
            },
            DrafterConfig {
                name: NGRAM_DRAFTER.into(),
                kind: DrafterKind::Ngram,
                languages: Vec::new(),
                model: None,
                gpu_layers: 0,
                draft: adaptive,
            },
        ],
        default: None,
    }
}

/// Start `specdec serve` with `registry` and `batching` (`exact` or
/// `throughput`); `name` names its log and registry file.
pub fn start_specdec(
    name: &str,
    binary: &Path,
    registry: &RegistryConfig,
    settings: &ServerSettings,
    batching: &str,
    work_dir: &Path,
) -> anyhow::Result<Server> {
    let registry_path = work_dir.join(format!("{name}-registry.yaml"));
    std::fs::write(&registry_path, serde_yaml::to_string(registry)?)
        .with_context(|| format!("cannot write {}", registry_path.display()))?;
    let port = free_port()?;
    let mut command = Command::new(binary);
    command
        .arg("serve")
        .arg("--registry")
        .arg(&registry_path)
        .args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .args(["--model-name", MODEL_NAME])
        .args(["--slots", &settings.slots.to_string()])
        .args(["--batching", batching])
        .args(["--max-waiting", "64"])
        .args(["--threads", &settings.threads.to_string()]);
    spawn(name, command, port, "/readyz", work_dir)
}

/// Start llama-server with the target and, when `draft` is set, the drafter
/// (`-md`), with the same threads, slots and context per slot.
pub fn start_llama_server(
    binary: &Path,
    settings: &ServerSettings,
    draft: bool,
    work_dir: &Path,
) -> anyhow::Result<Server> {
    let port = free_port()?;
    let mut command = Command::new(binary);
    command
        .arg("-m")
        .arg(&settings.target)
        .args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .args(["-t", &settings.threads.to_string()])
        .args(["-tb", &settings.threads.to_string()])
        .args(["-np", &settings.slots.to_string()])
        .args([
            "-c",
            &(settings.context as usize * settings.slots).to_string(),
        ])
        .args(["-ngl", &settings.gpu_layers.to_string()])
        // The same KV cache as specdec's CPU build, so attention costs the same.
        .args(["-fa", "on", "-ctk", "q8_0", "-ctv", "q8_0"])
        .args(["--alias", MODEL_NAME])
        .arg("--no-webui");
    if draft {
        // Without --spec-type, llama-server infers the kind of speculation
        // from the draft GGUF's metadata, and a plain model means none.
        command
            .args(["--spec-type", "draft-simple"])
            .arg("-md")
            .arg(&settings.drafter)
            .args(["-ngld", &settings.gpu_layers.to_string()])
            .args(["--spec-draft-n-max", &settings.draft_max.to_string()])
            .args(["-ctkd", "q8_0", "-ctvd", "q8_0"]);
    }
    let name = if draft {
        "llama-server-draft"
    } else {
        "llama-server"
    };
    spawn(name, command, port, "/health", work_dir)
}

/// What a specdec server's `/metrics` says of its llama.cpp kernels: the CPU
/// module, its weight buffer types and the verification pass limit.
pub fn describe_kernels(metrics: &str) -> String {
    let label = |line: &str, name: &str| {
        line.split(&format!("{name}=\""))
            .nth(1)?
            .split('"')
            .next()
            .map(str::to_string)
    };
    let mut parts = Vec::new();
    for line in metrics.lines() {
        if line.starts_with("specdec_cpu_backend_info{") {
            parts.push(format!(
                "CPU kernels {} (weight buffers: {})",
                label(line, "module").unwrap_or_default(),
                label(line, "buffer_types").unwrap_or_default()
            ));
        } else if let Some(n) = line.strip_prefix("specdec_verify_batch_max_tokens ") {
            parts.push(format!("verification passes of up to {n} tokens"));
        } else if let Some(n) = line.strip_prefix("specdec_shared_pass_max_rows ") {
            parts.push(format!("passes shared by slots of up to {n} rows"));
        } else if let Some(n) = line.strip_prefix("specdec_prompt_piece_tokens ") {
            parts.push(format!("prompt pieces of {n} tokens beside decoding slots"));
        }
    }
    parts.join("; ")
}

/// Whether `GET path` on the loopback port answers 200.
fn answers_ok(port: u16, path: &str) -> bool {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let request = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    if stream.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).is_ok() && head.starts_with(b"HTTP/1.1 200")
}

fn spawn(
    name: &str,
    mut command: Command,
    port: u16,
    ready_path: &str,
    work_dir: &Path,
) -> anyhow::Result<Server> {
    let log = work_dir.join(format!("{name}.log"));
    let file = std::fs::File::create(&log)?;
    command
        .stdin(Stdio::null())
        .stdout(file.try_clone()?)
        .stderr(file);
    let child = command
        .spawn()
        .with_context(|| format!("cannot start {name} ({:?})", command.get_program()))?;
    let mut server = Server {
        name: name.into(),
        base_url: format!("http://127.0.0.1:{port}"),
        child,
        log,
    };
    let started = Instant::now();
    loop {
        if let Some(status) = server.child.try_wait()? {
            bail!(
                "{name} exited with {status} while starting:\n{}",
                server.log_tail()
            );
        }
        if answers_ok(port, ready_path) {
            tracing::info!(
                server = name,
                port,
                took_s = started.elapsed().as_secs_f64(),
                "ready"
            );
            return Ok(server);
        }
        if started.elapsed() > START_TIMEOUT {
            bail!(
                "{name} not ready after {START_TIMEOUT:?}:\n{}",
                server.log_tail()
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernels_are_read_from_the_metrics() {
        let metrics = "# HELP x\nspecdec_cpu_backend_info{buffer_types=\"CPU_REPACK\",module=\"libggml-cpu-zen4.so\"} 1\nspecdec_verify_batch_max_tokens 3\nspecdec_verify_batch_exact_tokens 3\n";
        assert_eq!(
            describe_kernels(metrics),
            "CPU kernels libggml-cpu-zen4.so (weight buffers: CPU_REPACK); verification passes of up to 3 tokens"
        );
        assert_eq!(describe_kernels(""), "");
    }
}
