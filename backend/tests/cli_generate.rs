//! `specdec generate --json` as a user runs it.

mod common;

use std::process::Command;

use serde_json::Value;
use specdec_backend::models;

const GERMAN: &str = "Übersetze ins Englische: Das Debian-Projekt pflegt ein freies Betriebssystem. Freiwillige paketieren tausende Programme und veröffentlichen etwa alle zwei Jahre eine neue stabile Version.";

fn generate(extra: &[&str]) -> Value {
    let output = Command::new(env!("CARGO_BIN_EXE_specdec"))
        .args([
            "generate",
            "--json",
            "--max-tokens",
            "48",
            "--context",
            "1024",
        ])
        .arg("--target")
        .arg(common::model(models::DEFAULT_TARGET_FILE))
        .args(["--chat", GERMAN])
        .args(extra)
        .output()
        .expect("specdec runs");
    assert!(
        output.status.success(),
        "specdec failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("one JSON object on stdout")
}

#[test]
fn json_reports_drafting_statistics() {
    let plain = generate(&[]);
    let drafter = common::model(models::DEFAULT_DRAFTER_FILE);
    let spec = generate(&["--drafter", drafter.to_str().unwrap(), "--draft-max", "4"]);

    assert_eq!(spec["token_ids"], plain["token_ids"]);
    assert_eq!(spec["text"], plain["text"]);
    let text = spec["text"].as_str().unwrap();
    assert!(text.contains("Debian"), "a translation: {text}");

    let stats = &spec["stats"];
    let drafted = stats["draft_tokens"].as_u64().unwrap();
    let accepted = stats["accepted_tokens"].as_u64().unwrap();
    assert!(drafted > 0 && accepted <= drafted);
    assert!(stats["rounds"].as_u64().unwrap() > 0);
    assert!(stats["tokens_per_second"].as_f64().unwrap() > 0.0);
    let rate = stats["acceptance_rate"].as_f64().unwrap();
    assert!((rate - accepted as f64 / drafted as f64).abs() < 1e-9);
    assert_eq!(plain["stats"]["draft_tokens"].as_u64(), Some(0));
}

#[test]
fn bad_arguments_fail_cleanly() {
    let output = Command::new(env!("CARGO_BIN_EXE_specdec"))
        .args([
            "generate",
            "--target",
            "/nonexistent.gguf",
            "--prompt",
            "hi",
        ])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("/nonexistent.gguf does not exist"),
        "{stderr}"
    );
}

fn check(registry: &str) -> std::process::Output {
    let path = std::env::temp_dir().join(format!("specdec-check-{}.yaml", std::process::id()));
    std::fs::write(&path, registry).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_specdec"))
        .args(["check", "--registry"])
        .arg(&path)
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&path);
    out
}

#[test]
fn check_validates_registry_files() {
    let target = common::model(models::DEFAULT_TARGET_FILE);
    let drafter = common::model(models::DEFAULT_DRAFTER_FILE);
    let smol = common::model(models::SMALL_OTHER_VOCAB_FILE);
    let good = format!(
        "target: {{ model: {}, context: 512 }}\ndrafters:\n  - name: qwen\n    languages: [de]\n    model: {}\n  - name: lookup\n    kind: ngram\n    languages: [\"*\"]\ndefault: lookup\n",
        target.display(),
        drafter.display()
    );
    let out = check(&good);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("qwen, lookup"));

    let incompatible = good.replace(&drafter.display().to_string(), &smol.display().to_string());
    let out = check(&incompatible);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("drafter `qwen` is incompatible"),
        "{stderr}"
    );

    let typo = good.replace("languages: [de]", "langauges: [de]");
    let stderr = String::from_utf8_lossy(&check(&typo).stderr).into_owned();
    assert!(
        stderr.contains("langauges") && stderr.contains("line 4"),
        "{stderr}"
    );

    let missing = good.replace(&drafter.display().to_string(), "/nonexistent/d.gguf");
    let stderr = String::from_utf8_lossy(&check(&missing).stderr).into_owned();
    assert!(
        stderr.contains("/nonexistent/d.gguf") && stderr.contains("qwen"),
        "{stderr}"
    );
}
