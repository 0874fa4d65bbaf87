//! The whole recipe on the smoke preset, end to end, against the real
//! target: corpus from the Debian packages, distillation through the engine,
//! pretraining, finetuning per language, the generic drafter, GGUF export,
//! evaluation on held-out prompts. Then what users do with the drafters:
//! `specdec check` accepts the registry, llama.cpp's `llama-server` loads
//! each drafter as `-md`, greedy speculative output equals the target's
//! (the evaluation refuses any difference), and an interrupted distillation
//! resumes without losing a record.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use specdec_backend::models::{self, GENERIC_DRAFTER, TRAINED_DRAFTERS_DIR, TRAINED_REGISTRY_FILE};

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
    assert!(stdout.contains("drafters: de, fr, ja, generic"), "{stdout}");

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
    // Greedy or seeded sampling: the redone answer is the same answer.
    assert_eq!(resumed_lines[lines.len() - 1], lines[lines.len() - 1]);

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
            "--draft-max",
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
