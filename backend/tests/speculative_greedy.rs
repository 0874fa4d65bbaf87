//! Greedy speculative decoding reproduces the target's own greedy output,
//! token for token, with real models.

mod common;

use common::{chat, greedy, run, TRANSLATIONS};

/// Draft lengths the issue asks for.
const DRAFT_LENGTHS: [u32; 3] = [1, 4, 8];

fn assert_same_as_target(language: &str, prompt: &str, max_tokens: usize) {
    let baseline = run(greedy(chat(prompt), max_tokens, None, 0));
    assert!(
        baseline.token_ids.len() >= 8,
        "{language}: the target produced too little to compare: {:?}",
        baseline.text
    );
    for k in DRAFT_LENGTHS {
        let spec = run(greedy(chat(prompt), max_tokens, Some("qwen-0.5b"), k));
        assert_eq!(
            spec.token_ids, baseline.token_ids,
            "{language}, 0.5B drafter, k={k}: tokens differ from the target alone"
        );
        assert_eq!(spec.text, baseline.text);
        assert_eq!(spec.finish_reason, baseline.finish_reason);
        let s = &spec.stats;
        assert!(s.draft_tokens > 0, "{language}, k={k}: nothing was drafted");
        assert!(s.accepted_tokens <= s.draft_tokens);
        assert!(s.draft_tokens <= s.drafts * u64::from(k));
        assert_eq!(
            s.accepted_per_position.iter().sum::<u64>(),
            s.accepted_tokens,
            "per-position counts add up to the accepted total"
        );
    }
    let lookup = run(greedy(chat(prompt), max_tokens, Some("ngram"), 8));
    assert_eq!(
        lookup.token_ids, baseline.token_ids,
        "{language}, n-gram drafter: tokens differ from the target alone"
    );
}

#[test]
fn english_matches_target() {
    let (lang, prompt) = TRANSLATIONS[0];
    assert_same_as_target(lang, prompt, 48);
}

#[test]
fn german_matches_target() {
    let (lang, prompt) = TRANSLATIONS[1];
    assert_same_as_target(lang, prompt, 48);
}

#[test]
fn french_matches_target() {
    let (lang, prompt) = TRANSLATIONS[2];
    assert_same_as_target(lang, prompt, 48);
}

#[test]
fn japanese_matches_target() {
    let (lang, prompt) = TRANSLATIONS[3];
    assert_same_as_target(lang, prompt, 48);
}

#[test]
fn chinese_matches_target() {
    let (lang, prompt) = TRANSLATIONS[4];
    assert_same_as_target(lang, prompt, 48);
}

/// A long generation: KV caches of target and drafter stay consistent through
/// many rounds of rollback.
#[test]
fn long_generation_stays_consistent() {
    let prompt = chat("Write a Python module with a function that parses an INI file into a dict of dicts, with docstrings and three unit tests.");
    let baseline = run(greedy(prompt.clone(), 400, None, 0));
    let n = baseline.token_ids.len();
    assert!(
        n > 250,
        "the target wrote only {n} tokens: {:?}",
        baseline.text
    );
    let spec = run(greedy(prompt.clone(), 400, Some("qwen-0.5b"), 6));
    assert_eq!(spec.token_ids, baseline.token_ids);
    assert!(
        spec.stats.rounds < n as u64 / 2,
        "speculation saved target passes"
    );
    let lookup = run(greedy(prompt, 400, Some("ngram"), 6));
    assert_eq!(lookup.token_ids, baseline.token_ids);
}

/// The target as its own drafter agrees with itself on every token.
#[test]
fn identical_drafter_accepts_everything() {
    let (_, prompt) = TRANSLATIONS[1];
    let spec = run(greedy(chat(prompt), 40, Some("self"), 4));
    let s = &spec.stats;
    assert!(s.draft_tokens > 0);
    assert_eq!(s.accepted_tokens, s.draft_tokens, "{s:?}");
    assert_eq!(s.acceptance_rate, 1.0);
}

/// p_min stops drafting at low drafter confidence; min discards short drafts.
#[test]
fn draft_controls_bound_the_drafts() {
    let (_, prompt) = TRANSLATIONS[2];
    let mut confident = greedy(chat(prompt), 40, Some("qwen-0.5b"), 8);
    confident.draft = Some(specdec_backend::config::DraftParams {
        max: 8,
        min: 0,
        p_min: 0.99,
        adaptive: false,
    });
    let baseline = run(greedy(chat(prompt), 40, None, 0));
    let unrestricted = run(greedy(chat(prompt), 40, Some("qwen-0.5b"), 8));
    let restricted = run(confident);
    assert_eq!(restricted.token_ids, baseline.token_ids);
    assert!(restricted.stats.draft_tokens < unrestricted.stats.draft_tokens);
    assert!(restricted.stats.acceptance_rate >= unrestricted.stats.acceptance_rate);

    let mut long_only = greedy(chat(prompt), 40, Some("ngram"), 8);
    long_only.draft = Some(specdec_backend::config::DraftParams {
        max: 8,
        min: 8,
        p_min: 0.0,
        adaptive: false,
    });
    let long_only = run(long_only);
    assert_eq!(long_only.token_ids, baseline.token_ids);
    assert_eq!(long_only.stats.draft_tokens, long_only.stats.drafts * 8);
}

/// A request that takes the drafter's own (adaptive) draft settings.
fn adaptive(
    prompt: specdec_backend::engine::Prompt,
    max_tokens: usize,
    drafter: &str,
) -> specdec_backend::engine::GenerationRequest {
    let mut request = greedy(prompt, max_tokens, None, 0);
    request.drafter = specdec_backend::engine::DrafterChoice::Named(drafter.into());
    request.language = Some("de".into());
    request
}

/// Adaptive drafting changes how many tokens are drafted per round, never
/// which tokens come out; every round is counted at the length it used.
#[test]
fn adaptive_drafting_matches_target() {
    let (_, prompt) = TRANSLATIONS[1];
    let baseline = run(greedy(chat(prompt), 48, None, 0));
    for drafter in ["qwen-0.5b", "ngram"] {
        let out = run(adaptive(chat(prompt), 48, drafter));
        assert_eq!(out.token_ids, baseline.token_ids, "{drafter}");
        let by_length = &out.stats.rounds_by_draft_length;
        assert_eq!(by_length.iter().sum::<u64>(), out.stats.rounds, "{drafter}");
        assert!(
            by_length.len() <= 9,
            "never beyond draft.max 8: {by_length:?}"
        );
        let drafted_rounds: u64 = by_length.iter().skip(1).sum();
        assert!(out.stats.drafts <= drafted_rounds, "{drafter}");
    }
}

/// The target drafting for itself costs a full target pass per drafted token:
/// even with every token accepted that cannot beat plain decoding, so the
/// policy never drafts (and never probes) with it; only free prompt lookup
/// may draft.
#[test]
fn adaptive_drafting_never_drafts_when_it_cannot_pay() {
    let (_, prompt) = TRANSLATIONS[2];
    let out = run(adaptive(chat(prompt), 32, "self"));
    assert_eq!(
        out.stats.draft_tokens, out.stats.lookup_draft_tokens,
        "the model drafted: {:?}",
        out.stats
    );
    let baseline = run(greedy(chat(prompt), 32, None, 0));
    assert_eq!(out.token_ids, baseline.token_ids);
}

/// Where the output repeats the prompt, adaptive drafting with a model
/// drafter drafts by prompt lookup, and the output stays the target's.
#[test]
fn adaptive_drafting_uses_prompt_lookup_where_it_pays() {
    let prompt = chat("Repeat the following text exactly, word for word: Debian is a free operating system. Volunteers package thousands of programs and release a new stable version about every two years. The packages are maintained by a large community spread across the whole world.");
    let out = run(adaptive(prompt.clone(), 48, "qwen-0.5b"));
    let baseline = run(greedy(prompt, 48, None, 0));
    assert_eq!(out.token_ids, baseline.token_ids);
    assert!(out.stats.lookup_draft_tokens > 0, "{:?}", out.stats);
    assert!(
        out.stats.lookup_accepted_tokens > out.stats.lookup_draft_tokens / 2,
        "{:?}",
        out.stats
    );
}

#[test]
fn verification_passes_are_the_size_measured_exact_at_start_up() {
    let info = common::engine().info();
    let v = &info.verification;
    let measured = v
        .exactness
        .as_ref()
        .expect("an engine with drafters measures");
    assert!(measured.exact_tokens >= 1);
    assert_eq!(
        measured.tried_up_to,
        specdec_backend::engine::MAX_VERIFY_BATCH
    );
    assert!(!v.target_on_gpu);
    // On CPU verification never uses a pass longer than was measured exact,
    // and, where a longer pass differed, by how much is recorded.
    assert_eq!(v.max_verify_batch, measured.exact_tokens);
    if let Some((n, diff)) = measured.first_inexact {
        assert_eq!(n, measured.exact_tokens + 1);
        assert!(diff >= 0.0);
    } else {
        assert_eq!(measured.exact_tokens, measured.tried_up_to);
    }
}
