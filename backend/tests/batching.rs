//! Requests served together share the engine's passes, and each still gets
//! exactly the tokens it gets served alone, with real models.

mod common;

use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use common::{chat, model_drafter, ngram_drafter, target_config, TRANSLATIONS};
use specdec_backend::config::DraftParams;
use specdec_backend::engine::{
    Batching, Completion, DrafterChoice, Engine, EngineConfig, GenerationRequest, Prompt,
    MAX_VERIFY_BATCH,
};
use specdec_backend::models;

/// Four slots, the 0.5B drafter and prompt lookup; its own engine, so that
/// the requests of one test are the only ones sharing its passes.
fn engine() -> &'static Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    ENGINE.get_or_init(|| {
        let mut config = EngineConfig::new(target_config(2048));
        config.drafters = vec![
            model_drafter("qwen-0.5b", models::DEFAULT_DRAFTER_FILE),
            ngram_drafter("ngram"),
        ];
        config.slots = 4;
        Engine::start(config).expect("the Qwen pair loads")
    })
}

fn request(
    prompt: Prompt,
    max_tokens: usize,
    drafter: Option<&str>,
    k: u32,
    adaptive: bool,
) -> GenerationRequest {
    let mut request = GenerationRequest::new(prompt, max_tokens);
    if let Some(name) = drafter {
        request.drafter = DrafterChoice::Named(name.into());
        request.draft = Some(DraftParams {
            max: k,
            adaptive,
            ..DraftParams::default()
        });
    }
    request
}

/// Serve `requests` one at a time, then all at once; each answer must be
/// the same token for token. The tests of this binary take turns, so that
/// "alone" means alone.
/// Request `i` is sent `delays_ms[i]` after the first (none: at once). Also
/// returns the target passes each way took.
fn assert_concurrent_equals_alone(
    requests: Vec<GenerationRequest>,
    delays_ms: &[u64],
) -> (Vec<Completion>, u64, u64) {
    static TURN: Mutex<()> = Mutex::new(());
    let _turn = TURN.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let engine = engine();
    let before = engine.pass_totals().passes;
    let alone: Vec<Completion> = requests
        .iter()
        .map(|r| {
            engine
                .generate_blocking(r.clone())
                .expect("generation succeeds")
        })
        .collect();
    let between = engine.pass_totals().passes;
    let together: Vec<Completion> = std::thread::scope(|scope| {
        let handles: Vec<_> = requests
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let delay = Duration::from_millis(delays_ms.get(i).copied().unwrap_or(0));
                scope.spawn(move || {
                    std::thread::sleep(delay);
                    engine.generate_blocking(r.clone())
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("no panic").expect("generation succeeds"))
            .collect()
    });
    for (i, (a, t)) in alone.iter().zip(&together).enumerate() {
        assert!(
            a.token_ids.len() >= 8,
            "request {i} produced too little: {:?}",
            a.text
        );
        assert_eq!(
            t.token_ids, a.token_ids,
            "request {i}: served with others, the tokens differ from serving it alone"
        );
        assert_eq!(t.text, a.text);
        assert_eq!(t.finish_reason, a.finish_reason);
    }
    let after = engine.pass_totals().passes;
    (together, between - before, after - between)
}

#[test]
fn four_concurrent_greedy_requests_each_equal_the_request_alone() {
    let info = engine().info();
    assert_eq!(info.slots, 4);
    let v = &info.verification;
    let measured = v.exactness.as_ref().expect("measured at start-up");
    // Shared passes never exceed what was measured exact for rows of
    // different sequences, itself within the single-sequence limit.
    assert!(v.shared_pass_rows >= 1);
    assert!(v.shared_pass_rows <= measured.exact_tokens);
    assert_eq!(v.shared_pass_rows, measured.exact_sequences);
    let prompts: Vec<&str> = TRANSLATIONS.iter().map(|(_, p)| *p).collect();
    let (together, _, _) = assert_concurrent_equals_alone(
        vec![
            request(chat(prompts[1]), 40, None, 0, false),
            request(chat(prompts[2]), 40, Some("qwen-0.5b"), 4, false),
            request(chat(prompts[3]), 40, Some("qwen-0.5b"), 8, true),
            request(chat(prompts[4]), 40, Some("ngram"), 8, false),
        ],
        &[],
    );
    assert!(
        together[1].stats.draft_tokens > 0,
        "the drafter drafted while sharing passes"
    );
}

#[test]
fn a_long_prompt_read_beside_streaming_requests_gives_the_same_tokens() {
    // A prompt of several hundred tokens is read a piece per step while the
    // other requests decode, and must leave the cache reading it at once
    // leaves.
    let long = format!(
        "Summarise in two sentences:\n{}",
        TRANSLATIONS
            .iter()
            .map(|(_, p)| *p)
            .collect::<Vec<_>>()
            .join("\n")
            .repeat(3)
    );
    let prompts: Vec<&str> = TRANSLATIONS.iter().map(|(_, p)| *p).collect();
    let (together, _, _) = assert_concurrent_equals_alone(
        vec![
            request(chat(prompts[0]), 48, Some("qwen-0.5b"), 4, false),
            request(chat(&long), 16, None, 0, false),
            request(chat(prompts[2]), 48, None, 0, false),
        ],
        &[0, 1500, 0],
    );
    // Sent once the others decode, the long prompt was read in pieces: far
    // more passes than reading it at once takes (chunks of 512 tokens, then
    // the remainder).
    let long = &together[1].stats;
    let at_once = (long.prompt_tokens as u64 - 1).div_ceil(512) + 1;
    assert!(
        long.prompt_passes >= 2 * at_once,
        "{} prompt tokens read in {} passes",
        long.prompt_tokens,
        long.prompt_passes
    );
}

#[test]
fn requests_served_together_share_target_passes() {
    let prompts: Vec<&str> = TRANSLATIONS.iter().map(|(_, p)| *p).collect();
    let (_, alone, together) = assert_concurrent_equals_alone(
        vec![
            request(chat(prompts[1]), 32, None, 0, false),
            request(chat(prompts[2]), 32, None, 0, false),
            request(chat(prompts[4]), 32, None, 0, false),
        ],
        &[],
    );
    // Alone, each plain token is a pass of its own; together, up to three
    // slots' tokens share one.
    assert!(
        together * 3 < alone * 2,
        "{together} target passes together against {alone} alone"
    );
}

#[test]
fn throughput_batching_puts_every_slot_in_one_pass() {
    let mut config = EngineConfig::new(target_config(1024));
    config.slots = 3;
    config.batching = Batching::Throughput;
    let engine = Engine::start(config).expect("the target loads");
    let v = &engine.info().verification;
    assert_eq!(v.batching, Batching::Throughput);
    assert_eq!(v.shared_pass_rows, 3 * MAX_VERIFY_BATCH);
    let prompts: Vec<&str> = TRANSLATIONS.iter().map(|(_, p)| *p).collect();
    let before = engine.pass_totals();
    let together: Vec<Completion> = std::thread::scope(|scope| {
        let handles: Vec<_> = [1, 2, 4]
            .iter()
            .map(|&i| {
                let engine = &engine;
                let request = request(chat(prompts[i]), 24, None, 0, false);
                scope.spawn(move || engine.generate_blocking(request))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("no panic").expect("generation succeeds"))
            .collect()
    });
    let after = engine.pass_totals();
    let tokens: usize = together.iter().map(|c| c.token_ids.len()).sum();
    assert!(
        together.iter().all(|c| c.token_ids.len() >= 8),
        "{together:?}"
    );
    let decode_passes = (after.passes - before.passes) as usize;
    // Three sequences decoding together: about a third of a pass per token
    // (prompt pieces aside).
    assert!(
        decode_passes * 2 < tokens,
        "{decode_passes} target passes for {tokens} tokens"
    );
}
