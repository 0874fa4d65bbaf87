//! Bad input gets a clear typed error, and the process (and a running engine)
//! carries on.

mod common;

use common::{chat, engine, greedy, model, model_drafter, run, target_config};
use specdec_backend::config::TargetConfig;
use specdec_backend::engine::{Engine, EngineConfig, EngineError, FinishReason, Prompt};
use specdec_backend::models;

fn start_with_target(path: std::path::PathBuf) -> Result<Engine, EngineError> {
    let mut target = target_config(512);
    target.model = path;
    Engine::start(EngineConfig::new(target))
}

fn assert_engine_still_serves() {
    let c = run(greedy(chat("Say OK."), 4, Some("qwen-0.5b"), 2));
    assert!(!c.token_ids.is_empty());
}

#[test]
fn missing_model_file() {
    let err = start_with_target("/nonexistent/model.gguf".into())
        .err()
        .unwrap();
    assert!(matches!(err, EngineError::ModelNotFound { .. }), "{err}");
    assert!(err.to_string().contains("/nonexistent/model.gguf"));
}

/// A file in the temp directory, removed on drop.
struct TempFile(std::path::PathBuf);

impl TempFile {
    fn with(bytes: &[u8]) -> Self {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let path = std::env::temp_dir().join(format!(
            "specdec-test-{}-{}.gguf",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::write(&path, bytes).unwrap();
        Self(path)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[test]
fn truncated_gguf() {
    let real = std::fs::read(model(models::SMALL_OTHER_VOCAB_FILE)).unwrap();
    let truncated = TempFile::with(&real[..real.len() / 3]);
    let err = start_with_target(truncated.0.clone()).err().unwrap();
    assert!(matches!(err, EngineError::ModelLoad { .. }), "{err}");
    assert_engine_still_serves();
}

#[test]
fn corrupt_gguf() {
    let mut garbage = b"GGUF".to_vec();
    garbage.extend((0..4096u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8));
    let corrupt = TempFile::with(&garbage);
    let err = start_with_target(corrupt.0.clone()).err().unwrap();
    assert!(matches!(err, EngineError::ModelLoad { .. }), "{err}");

    let not_gguf = TempFile::with(b"this is not a model at all\n");
    let err = start_with_target(not_gguf.0.clone()).err().unwrap();
    assert!(matches!(err, EngineError::ModelLoad { .. }), "{err}");
    assert_engine_still_serves();
}

#[test]
fn incompatible_drafter_is_refused_with_reason() {
    let mut config = EngineConfig::new(target_config(512));
    config.drafters = vec![model_drafter("smol", models::SMALL_OTHER_VOCAB_FILE)];
    let err = Engine::start(config).err().unwrap();
    match &err {
        EngineError::IncompatibleDrafter { drafter, reason } => {
            assert_eq!(drafter, "smol");
            assert!(
                reason.contains("vocabulary") || reason.contains("token"),
                "reason says why: {reason}"
            );
        }
        other => panic!("expected IncompatibleDrafter, got {other}"),
    }
    assert_engine_still_serves();
}

#[test]
fn prompt_longer_than_context() {
    let long = "word ".repeat(3000);
    let err = engine()
        .generate_blocking(greedy(Prompt::Text(long), 8, None, 0))
        .unwrap_err();
    assert!(
        matches!(err, EngineError::PromptTooLong { context: 2048, .. }),
        "{err}"
    );
    assert_engine_still_serves();
}

#[test]
fn zero_max_tokens_and_bad_sampling() {
    let err = engine()
        .generate_blocking(greedy(chat("hi"), 0, None, 0))
        .unwrap_err();
    assert!(matches!(err, EngineError::InvalidRequest(_)), "{err}");

    let mut bad = greedy(chat("hi"), 4, None, 0);
    bad.sampling.temperature = -1.0;
    assert!(matches!(
        engine().generate_blocking(bad).unwrap_err(),
        EngineError::InvalidRequest(_)
    ));

    let mut bad = greedy(chat("hi"), 4, Some("qwen-0.5b"), 4);
    bad.draft.as_mut().unwrap().min = 9;
    assert!(matches!(
        engine().generate_blocking(bad).unwrap_err(),
        EngineError::InvalidRequest(_)
    ));

    let unknown = greedy(chat("hi"), 4, Some("nope"), 4);
    assert_eq!(
        engine().generate_blocking(unknown).unwrap_err(),
        EngineError::UnknownDrafter("nope".into())
    );
    assert!(matches!(
        engine()
            .generate_blocking(greedy(Prompt::Chat(vec![]), 4, None, 0))
            .unwrap_err(),
        EngineError::InvalidRequest(_)
    ));
    assert_engine_still_serves();
}

/// Filling the context ends the generation with `length`, speculative or not,
/// never with a llama.cpp abort.
#[test]
fn full_context_finishes_with_length() {
    let mut config = EngineConfig::new(target_config(64));
    config.drafters = vec![model_drafter("qwen-0.5b", models::DEFAULT_DRAFTER_FILE)];
    let small = Engine::start(config).unwrap();
    let prompt = chat("Count from one to one hundred in words, separated by commas.");
    let plain = small
        .generate_blocking(greedy(prompt.clone(), 500, None, 0))
        .unwrap();
    let spec = small
        .generate_blocking(greedy(prompt, 500, Some("qwen-0.5b"), 8))
        .unwrap();
    assert_eq!(plain.finish_reason, FinishReason::Length);
    assert_eq!(
        plain.stats.prompt_tokens + plain.stats.completion_tokens,
        64
    );
    assert_eq!(spec.token_ids, plain.token_ids);
    assert_eq!(spec.finish_reason, FinishReason::Length);
}

#[test]
fn stop_strings_and_max_tokens() {
    let prompt = chat("List three colours, one per line, no other text.");
    let free = run(greedy(prompt.clone(), 40, None, 0));
    assert!(free.text.contains('\n'), "{:?}", free.text);
    for drafter in [None, Some("qwen-0.5b")] {
        let stopped = run(greedy(prompt.clone(), 40, drafter, 4).with_stop("\n"));
        assert_eq!(stopped.finish_reason, FinishReason::Stop);
        assert_eq!(stopped.text, free.text.split('\n').next().unwrap());
        let capped = run(greedy(prompt.clone(), 3, drafter, 4));
        assert_eq!(capped.finish_reason, FinishReason::Length);
        assert_eq!(capped.token_ids, free.token_ids[..3]);
    }
}

#[test]
fn cancelled_request_frees_its_slot() {
    // Drop the receiver at once: the engine notices and moves on.
    for _ in 0..4 {
        drop(engine().submit(greedy(chat("Write a long story."), 500, None, 0)));
    }
    assert_engine_still_serves();
}

/// Drafters naming the same file share one loaded model (and one context per
/// slot); both still serve their own requests.
#[test]
fn drafters_sharing_a_file_share_the_model() {
    let mut config = EngineConfig::new(target_config(256));
    config.drafters = vec![
        model_drafter("euro", models::DEFAULT_DRAFTER_FILE),
        model_drafter("asia", models::DEFAULT_DRAFTER_FILE),
    ];
    let shared = Engine::start(config).unwrap();
    assert_eq!(shared.info().drafter_models, 1);
    assert_eq!(shared.info().drafters, ["euro", "asia"]);
    let plain = shared
        .generate_blocking(greedy(chat("Say hello in German."), 8, None, 0))
        .unwrap();
    for name in ["euro", "asia", "euro"] {
        let c = shared
            .generate_blocking(greedy(chat("Say hello in German."), 8, Some(name), 4))
            .unwrap();
        assert_eq!(c.drafter.as_deref(), Some(name));
        assert_eq!(c.token_ids, plain.token_ids);
    }
}

/// Requests whose callers went away while they waited for a slot leave the
/// engine's queue at its next step, not when a slot frees.
#[test]
fn cancelled_waiting_requests_leave_the_queue_at_once() {
    use specdec_backend::engine::GenerationEvent;
    use std::time::{Duration, Instant};

    let mut target = target_config(4096);
    target.model = model(models::SMALL_OTHER_VOCAB_FILE);
    let mut config = EngineConfig::new(target);
    config.slots = 1;
    let engine = Engine::start(config).unwrap();
    let counting: String = (1..=20).map(|i| format!("{i}, ")).collect();
    let mut busy = engine.submit(greedy(Prompt::Text(counting.clone()), 3000, None, 0));
    let busy_finished = |busy: &mut tokio::sync::mpsc::UnboundedReceiver<GenerationEvent>| {
        let mut finished = false;
        while let Ok(event) = busy.try_recv() {
            finished |= matches!(
                event,
                GenerationEvent::Finished { .. } | GenerationEvent::Failed(_)
            );
        }
        finished
    };
    let wait_for = |what: &str, done: &dyn Fn() -> bool| {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !done() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(5));
        }
    };
    let cancelled: Vec<_> = (0..5)
        .map(|_| engine.submit(greedy(Prompt::Text(counting.clone()), 8, None, 0)))
        .collect();
    let live = engine.submit(greedy(Prompt::Text(counting.clone()), 8, None, 0));
    wait_for("six waiting requests", &|| engine.waiting() == 6);
    drop(cancelled);
    wait_for("the cancelled requests to leave", &|| engine.waiting() == 1);
    assert!(
        !busy_finished(&mut busy),
        "the queue emptied while the slot was still busy"
    );
    drop(busy);
    let mut live = live;
    let mut finished = false;
    while let Some(event) = live.blocking_recv() {
        if let GenerationEvent::Finished { reason, .. } = event {
            assert_eq!(reason, FinishReason::Length);
            finished = true;
        }
    }
    assert!(finished, "the live request is served");
}

/// A recurrent model keeps rejected drafts in its state (it cannot drop
/// positions from its end), so it is refused as the target of speculation
/// and as a drafter, with the reason; without drafters it decodes plainly.
#[test]
fn recurrent_models_are_refused_for_speculation() {
    let small = model(models::SMALL_OTHER_VOCAB_FILE);
    let mamba = TempFile::with(b"");
    common::gguf::write_tiny_mamba(&small, 49152, &mamba.0).unwrap();

    let mut target = target_config(512);
    target.model = mamba.0.clone();
    let mut config = EngineConfig::new(target.clone());
    config.drafters = vec![common::ngram_drafter("ngram")];
    let err = Engine::start(config).err().unwrap();
    assert!(
        matches!(&err, EngineError::CannotRollBack { role, .. } if role.contains("target")),
        "{err}"
    );

    let mut config = EngineConfig::new(TargetConfig {
        model: small.clone(),
        ..target_config(512)
    });
    let mut drafter = model_drafter("mamba", models::SMALL_OTHER_VOCAB_FILE);
    drafter.model = Some(mamba.0.clone());
    config.drafters = vec![drafter];
    let err = Engine::start(config).err().unwrap();
    assert!(
        matches!(&err, EngineError::CannotRollBack { role, .. } if role.contains("`mamba`")),
        "{err}"
    );
    assert!(err.to_string().contains("recurrent"), "{err}");

    let plain = Engine::start(EngineConfig::new(target)).unwrap();
    let out = plain
        .generate_blocking(greedy(Prompt::Text("Hello".into()), 4, None, 0))
        .unwrap();
    assert!(
        !out.token_ids.is_empty() && out.token_ids.len() <= 4,
        "{out:?}"
    );
}
