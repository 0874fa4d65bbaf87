//! The whole recipe on the smoke preset, end to end, against the real
//! target: corpus from the Debian packages, batched distillation by the target,
//! pretraining, finetuning per language, the generic drafter, GGUF export,
//! evaluation on held-out prompts. Then what users do with the drafters:
//! `specdec check` accepts the registry, llama.cpp's `llama-server` loads
//! each drafter as `-md`, greedy speculative output equals the target's
//! (the evaluation refuses any difference), and an interrupted distillation
//! resumes without losing a record.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use std::num::NonZeroU32;

use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::LlamaModel;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use specdec_backend::models::{self, GENERIC_DRAFTER, TRAINED_DRAFTERS_DIR, TRAINED_REGISTRY_FILE};
use specdec_backend::speculative::sampling::{self, Distribution, SamplingParams};
use specdec_backend::speculative::verifier::{check_sampled_token, TokenCheck};

const LANGUAGES: [&str; 3] = ["de", "fr", "ja"];

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("specdec-train-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch directory");
    dir
}

/// A model directory holding links to the real target and 0.5B drafter,
/// so the drafters written into it stay out of the real one.
fn model_dir(root: &Path) -> PathBuf {
    let dir = root.join("models");
    std::fs::create_dir_all(&dir).expect("model directory");
    for file in [models::DEFAULT_TARGET_FILE, models::DEFAULT_DRAFTER_FILE] {
        let real = models::model_path(file);
        assert!(
            real.is_file(),
            "{} is missing: run scripts/fetch-models",
            real.display()
        );
        std::os::unix::fs::symlink(&real, dir.join(file)).expect("link a model");
    }
    dir
}

fn specdec_train(root: &Path, models: &Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_specdec-train"))
        .args(["--preset", "smoke"])
        .args(args)
        .env("SPECDEC_TRAIN_DIR", root.join("work"))
        .env("SPECDEC_MODEL_DIR", models)
        .env("SPECDEC_THREADS", "2")
        .output()
        .expect("run specdec-train")
}

fn assert_success(output: &std::process::Output, what: &str) {
    assert!(
        output.status.success(),
        "{what} failed: {}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The `specdec` binary of the same build (beside this test's directory).
fn specdec_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable");
    let release = exe
        .parent()
        .and_then(Path::parent)
        .expect("target directory");
    let binary = release.join("specdec");
    assert!(
        binary.is_file(),
        "{} is missing: cargo build --release --bin specdec",
        binary.display()
    );
    binary
}

#[test]
fn smoke_recipe_end_to_end() {
    let root = scratch("recipe");
    let models = model_dir(&root);
    let results = root.join("results");
    let output = specdec_train(
        &root,
        &models,
        &["quick", "--out", results.to_str().expect("utf-8 path")],
    );
    assert_success(&output, "specdec-train quick");

    // The drafters and their registry.
    let drafters = models.join(TRAINED_DRAFTERS_DIR);
    let mut names: Vec<&str> = LANGUAGES.to_vec();
    names.push(GENERIC_DRAFTER);
    for name in &names {
        let path = drafters.join(format!("{name}.gguf"));
        assert!(path.is_file(), "{} was not exported", path.display());
    }
    let registry = drafters.join(TRAINED_REGISTRY_FILE);

    // The evaluation covered every language and drafter, and every
    // speculative answer equalled the target's (it fails otherwise).
    let report: serde_json::Value = serde_json::from_slice(
        &std::fs::read(results.join("eval-smoke.json")).expect("evaluation report"),
    )
    .expect("evaluation JSON");
    let languages = report["languages"].as_array().expect("languages");
    assert_eq!(languages.len(), LANGUAGES.len());
    for language in languages {
        let drafters = language["drafters"].as_array().expect("drafters");
        assert_eq!(drafters.len(), 3, "{language}");
        for d in drafters {
            assert_eq!(d["identical_to_target"], true, "{d}");
            assert!(d["draft_tokens"].as_u64().unwrap_or(0) > 0, "{d}");
        }
    }
    assert!(results.join("eval-smoke.md").is_file());

    // specdec accepts the registry: every drafter loads and passes the vocabulary check.
    let check = Command::new(specdec_binary())
        .args(["check", "--registry"])
        .arg(&registry)
        .env("SPECDEC_MODEL_DIR", &models)
        .output()
        .expect("run specdec check");
    assert_success(&check, "specdec check");
    let stdout = String::from_utf8_lossy(&check.stdout);
    assert!(
        stdout.contains("drafters: de, fr, ja, qwen-0.5b, generic"),
        "{stdout}"
    );

    // llama.cpp's own server accepts each drafter for speculative decoding.
    match std::env::var_os("LLAMA_SERVER_BIN") {
        Some(server) => {
            for name in &names {
                assert_llama_server_drafts_with(
                    Path::new(&server),
                    &models,
                    &drafters.join(format!("{name}.gguf")),
                );
            }
        }
        None => panic!("LLAMA_SERVER_BIN is not set: run `. bench/setup` (scripts/test does)"),
    }

    // Speculative sampling with a trained drafter keeps the target's
    // distribution: the engine's acceptance rule, fed the real next-token
    // distributions of the target and of each trained drafter.
    for name in &names {
        assert_sampling_follows_target(
            &models.join(models::DEFAULT_TARGET_FILE),
            &drafters.join(format!("{name}.gguf")),
        );
    }

    // An interrupted distillation: the last record half written. Rerunning
    // keeps the complete records, redoes the cut one and nothing else.
    let distilled = root.join("work").join("smoke-distill").join("de.jsonl");
    let text = std::fs::read_to_string(&distilled).expect("distilled answers");
    let lines: Vec<&str> = text.lines().collect();
    let keep = lines[..lines.len() - 1].join("\n");
    let cut = &lines[lines.len() - 1][..20];
    std::fs::write(&distilled, format!("{keep}\n{cut}")).expect("cut the last record");
    let output = specdec_train(&root, &models, &["distill"]);
    assert_success(&output, "resumed distill");
    let resumed = std::fs::read_to_string(&distilled).expect("distilled answers");
    let resumed_lines: Vec<&str> = resumed.lines().collect();
    assert_eq!(resumed_lines.len(), lines.len());
    assert_eq!(resumed_lines[..lines.len() - 1], lines[..lines.len() - 1]);
    // The redone record is the same example: id, prompt, kind and
    // temperature. Its answer may differ in a token where a near-tie fell
    // the other way: it was generated alone, the original in a batch, and
    // llama.cpp's CPU kernels are not bit-identical across batch sizes.
    let record =
        |line: &str| -> serde_json::Value { serde_json::from_str(line).expect("a record") };
    let (redone, original) = (
        record(resumed_lines[lines.len() - 1]),
        record(lines[lines.len() - 1]),
    );
    for field in ["id", "kind", "temperature", "source", "prompt"] {
        assert_eq!(redone[field], original[field], "{field}");
    }
    assert!(!redone["response"].as_array().expect("response").is_empty());

    // A truncated file is refused by training with its name and line.
    std::fs::write(&distilled, format!("{keep}\n{cut}")).expect("cut the last record");
    let output = specdec_train(
        &root,
        &models,
        &["train", "--stage", "finetune", "--language", "de"],
    );
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("de.jsonl") && stderr.contains(&format!("line {}", lines.len())),
        "{stderr}"
    );

    std::fs::remove_dir_all(&root).expect("clean up");
}

/// Start llama-server with the target and `drafter` as its draft model and
/// have it answer one request with speculative decoding.
fn assert_llama_server_drafts_with(server: &Path, models: &Path, drafter: &Path) {
    let port = free_port();
    let mut child = Command::new(server)
        .arg("-m")
        .arg(models.join(models::DEFAULT_TARGET_FILE))
        .arg("-md")
        .arg(drafter)
        .args([
            "--host",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "-c",
            "1024",
            "-t",
            "2",
            "--spec-draft-n-max",
            "4",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start llama-server");
    let deadline = Instant::now() + Duration::from_secs(180);
    let url = format!("http://127.0.0.1:{port}");
    let mut ready = false;
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            let mut stderr = String::new();
            if let Some(mut pipe) = child.stderr.take() {
                use std::io::Read;
                let _ = pipe.read_to_string(&mut stderr);
            }
            panic!(
                "llama-server refused {} ({status}):\n{stderr}",
                drafter.display()
            );
        }
        if http_get(&format!("{url}/health")).is_some_and(|(code, _)| code == 200) {
            ready = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(
        ready,
        "llama-server did not become ready with {}",
        drafter.display()
    );
    let body = r#"{"prompt": "Übersetze ins Englische: Guten Morgen.", "n_predict": 16, "temperature": 0}"#;
    let response = http_post(&format!("{url}/completion"), body);
    let _ = child.kill();
    let _ = child.wait();
    let (code, text) = response.expect("llama-server answered");
    assert_eq!(code, 200, "{text}");
    let json: serde_json::Value = serde_json::from_str(&text).expect("completion JSON");
    assert!(json["content"].as_str().is_some(), "{text}");
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn http_get(url: &str) -> Option<(u16, String)> {
    request("GET", url, None)
}

fn http_post(url: &str, body: &str) -> Option<(u16, String)> {
    request("POST", url, Some(body))
}

/// A minimal HTTP/1.1 client (one request per connection), enough for llama-server's JSON API.
fn request(method: &str, url: &str, body: Option<&str>) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let rest = url.strip_prefix("http://")?;
    let (host, path) = rest
        .split_once('/')
        .map_or((rest, "/".to_string()), |(h, p)| (h, format!("/{p}")));
    let mut stream = std::net::TcpStream::connect(host).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(120)))
        .ok()?;
    let body = body.unwrap_or("");
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .ok()?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).ok()?;
    let text = String::from_utf8_lossy(&response).into_owned();
    let code = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text
        .split_once("\r\n\r\n")
        .map_or(String::new(), |(_, b)| b.to_string());
    Some((code, body))
}

/// Next-token distributions of `model` after a German translation prompt,
/// at temperature 0.8 and top-k 40 (the engine's sampling code).
fn next_token_distribution(model_path: &Path) -> Distribution {
    let backend = specdec_backend::engine::runtime::backend().expect("llama.cpp backend");
    let model = LlamaModel::load_from_file(backend, model_path, &LlamaModelParams::default())
        .expect("load a model");
    let prompt = "<|im_start|>user\nTranslate the following German text into English. Reply with the translation only.\n\nDas Paketsystem verwaltet die installierte Software.<|im_end|>\n<|im_start|>assistant\nThe";
    let tokens = model.vocab().tokenize(prompt.as_bytes(), false, true);
    let params = LlamaContextParams::default()
        .with_n_ctx(NonZeroU32::new(512))
        .with_n_threads(2)
        .with_n_threads_batch(2);
    let mut ctx = model.new_context(backend, params).expect("a context");
    let mut batch = LlamaBatch::new(tokens.len(), 1);
    let last = tokens.len() - 1;
    for (i, &t) in tokens.iter().enumerate() {
        batch.add(t, i as i32, &[0], i == last).expect("batch");
    }
    ctx.decode(&mut batch).expect("decode");
    let logits = ctx.get_logits_ith(last as i32).to_vec();
    let sampling = SamplingParams {
        temperature: 0.8,
        top_k: 40,
        ..SamplingParams::default()
    };
    sampling::distribution(&logits, &sampling)
}

/// Tokens emitted by speculative sampling (a draft from q checked against p)
/// follow p: a chi-square test over p's tokens of at least 0.5 % and the rest.
fn assert_sampling_follows_target(target: &Path, drafter: &Path) {
    let p = next_token_distribution(target);
    let q = next_token_distribution(drafter);
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let trials = 60_000u64;
    let mut counts: std::collections::BTreeMap<u32, u64> = std::collections::BTreeMap::new();
    let mut accepted = 0u64;
    for _ in 0..trials {
        let x = q.sample(&mut rng);
        let token = match check_sampled_token(x, &p, &q, &mut rng) {
            TokenCheck::Accepted => {
                accepted += 1;
                x
            }
            TokenCheck::Replaced(y) => y,
        };
        *counts.entry(token).or_default() += 1;
    }
    // Buckets: p's tokens of at least 0.5 %, and everything else.
    let mut statistic = 0.0;
    let mut rest_expected = trials as f64;
    let mut rest_observed = trials;
    let mut buckets = 0;
    for &(token, prob) in p.entries() {
        if prob < 0.005 {
            continue;
        }
        let expected = prob as f64 * trials as f64;
        let observed = counts.get(&token).copied().unwrap_or(0);
        statistic += (observed as f64 - expected).powi(2) / expected;
        rest_expected -= expected;
        rest_observed -= observed;
        buckets += 1;
    }
    if rest_expected > 5.0 {
        statistic += (rest_observed as f64 - rest_expected).powi(2) / rest_expected;
        buckets += 1;
    }
    let dof = (buckets - 1).max(1) as f64;
    // Wilson–Hilferty approximation of the chi-square 99.9 % quantile.
    let z = 3.09;
    let critical = dof * (1.0 - 2.0 / (9.0 * dof) + z * (2.0 / (9.0 * dof)).sqrt()).powi(3);
    assert!(
        statistic < critical,
        "{}: emitted tokens do not follow the target (chi-square {statistic:.1}, {dof} dof, critical {critical:.1}; acceptance {:.3})",
        drafter.display(),
        accepted as f64 / trials as f64
    );
}
