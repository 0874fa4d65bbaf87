//! Several candidate drafters for one language, chosen round by round by the
//! bandit (`speculative::bandit`), against the real models: routing yields
//! the candidates, the engine converges to the faster one, and greedy output
//! stays the target's token for token however often it switches.

mod common;

use std::sync::OnceLock;

use specdec_backend::config::RegistryConfig;
use specdec_backend::engine::{
    Candidate, Completion, DrafterChoice, Engine, EngineConfig, GenerationRequest,
};
use specdec_backend::models;
use specdec_backend::registry::Registry;

use common::{chat, model};

/// German has two candidates, listed poor first so that the bandit starts
/// on it and must move away:
///
/// - `qwen-0.5b-k8`: the 0.5B drafter always drafting 8 tokens, adaptive
///   drafting off — llama.cpp's own draft-and-verify setting. On a 2-core
///   CPU a 0.5B draft step costs half a target pass or more, so 8 steps and
///   the verification passes take several times a plain round while the
///   target accepts 2 or 3 of the tokens: about a third of plain decoding's
///   tokens per second. (Prompt lookup at a fixed 8 tokens, the obvious
///   poor candidate, is not poor here: on this translation it finds a
///   match in few rounds, and a round without a match is plain decoding.)
///   It shares its model, and so its KV cache, with `qwen-0.5b`, whose
///   plain rounds it must catch up on whenever it is chosen again.
/// - `qwen-0.5b`: the same drafter with its defaults (adaptive drafting),
///   which on a 2-core CPU decodes plainly wherever drafting cannot pay, so
///   its rounds run at the target's plain speed, the fastest on offer.
///
/// Dutch has two model drafters with different models (the 0.5B and the
/// target itself), both drafting a fixed 3 tokens: each switch between them
/// makes the other model catch up on the tokens it has not seen.
fn registry_yaml() -> String {
    format!(
        r#"
target:
  model: {target}
  context: 2048
drafters:
  - name: qwen-0.5b-k8
    languages: [de]
    model: {drafter}
    draft: {{ max: 8, adaptive: false }}
  - name: qwen-0.5b
    languages: [de]
    model: {drafter}
  - name: small-k3
    languages: [nl]
    model: {drafter}
    draft: {{ max: 3, adaptive: false }}
  - name: self-k3
    languages: [nl]
    model: {target}
    draft: {{ max: 3, adaptive: false }}
"#,
        target = model(models::DEFAULT_TARGET_FILE).display(),
        drafter = model(models::DEFAULT_DRAFTER_FILE).display(),
    )
}

fn registry() -> &'static RegistryConfig {
    static REGISTRY: OnceLock<RegistryConfig> = OnceLock::new();
    REGISTRY.get_or_init(|| RegistryConfig::from_yaml(&registry_yaml()).expect("a valid registry"))
}

/// One slot: the tests' requests queue, and each language's bandit sees
/// only its own test's rounds.
fn engine() -> &'static Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    ENGINE.get_or_init(|| {
        Engine::start(EngineConfig::from_registry(registry())).expect("the models load")
    })
}

/// A greedy request for `language`, with the candidates routing gives it.
fn routed(prompt: &str, language: &str, max_tokens: usize) -> GenerationRequest {
    let route = Registry::new(registry())
        .route(Some(language), prompt)
        .expect("a known language");
    let mut request = GenerationRequest::new(chat(prompt), max_tokens);
    request.drafter = DrafterChoice::Candidates(
        route
            .drafters
            .iter()
            .map(|name| Candidate::new(name.as_str()))
            .collect(),
    );
    request.language = Some(route.language);
    request
}

fn run(request: GenerationRequest) -> Completion {
    engine()
        .generate_blocking(request)
        .expect("generation succeeds")
}

/// Rounds of the request that went to `drafter`.
fn rounds_of(out: &Completion, drafter: &str) -> u64 {
    out.stats.drafters.get(drafter).map_or(0, |d| d.rounds)
}

/// A longer German paragraph than the shared test prompts: more rounds to
/// learn from, and little for lookup to find.
const GERMAN: &str = "Übersetze ins Englische: Das Debian-Projekt ist eine \
Vereinigung von Einzelpersonen, die gemeinsam ein freies Betriebssystem \
entwickeln. Freiwillige auf der ganzen Welt paketieren tausende Programme, \
beheben Fehler und veröffentlichen etwa alle zwei Jahre eine neue stabile \
Version, die über Jahre hinweg Sicherheitsaktualisierungen erhält.";

/// Most tokens per request (the translation ends after 50, in 30 to 50
/// rounds: the good candidate mostly decodes plainly, one token a round).
const TOKENS: usize = 64;

/// The engine converges to the good candidate: over the first request
/// (30 to 50 rounds, learning from scratch, the poor candidate tried first)
/// the good one takes at least 80 % of the rounds, over the second at least
/// 90 %; both outputs equal target-only decoding token for token.
#[test]
fn the_bandit_converges_to_the_faster_drafter_and_output_stays_exact() {
    let routed_de = routed(GERMAN, "de", TOKENS);
    let DrafterChoice::Candidates(candidates) = &routed_de.drafter else {
        panic!("German routes to two candidates: {:?}", routed_de.drafter);
    };
    let names: Vec<&str> = candidates.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["qwen-0.5b-k8", "qwen-0.5b"], "registry order");

    let started = std::time::Instant::now();
    let baseline = run(GenerationRequest::new(chat(GERMAN), TOKENS));
    eprintln!(
        "baseline: {} tokens, {:.1} tok/s (engine ready after {:.0} s)",
        baseline.token_ids.len(),
        baseline.stats.tokens_per_second,
        started.elapsed().as_secs_f64()
    );
    let first = run(routed_de);
    let second = run(routed(GERMAN, "de", TOKENS));

    for (i, out) in [&first, &second].into_iter().enumerate() {
        assert_eq!(
            out.token_ids, baseline.token_ids,
            "request {i}: tokens differ from the target alone"
        );
        let by_drafter = &out.stats.drafters;
        eprintln!(
            "request {i}: {} rounds, {:.1} tok/s, by drafter {by_drafter:?}",
            out.stats.rounds, out.stats.tokens_per_second
        );
        assert_eq!(by_drafter.len(), 2, "both candidates are listed");
        let total: u64 = by_drafter.values().map(|d| d.rounds).sum();
        assert_eq!(total, out.stats.rounds, "every round is attributed once");
        let drafted: u64 = by_drafter.values().map(|d| d.draft_tokens).sum();
        let accepted: u64 = by_drafter.values().map(|d| d.accepted_tokens).sum();
        assert_eq!(
            (drafted, accepted),
            (out.stats.draft_tokens, out.stats.accepted_tokens)
        );
        for d in by_drafter.values() {
            assert_eq!(d.rounds_by_draft_length.iter().sum::<u64>(), d.rounds);
        }
        // The poor candidate always drafts 8 tokens.
        let poor = &by_drafter["qwen-0.5b-k8"];
        assert_eq!(poor.rounds_by_draft_length.iter().sum::<u64>(), poor.rounds);
        assert_eq!(
            poor.rounds_by_draft_length.get(8).copied().unwrap_or(0),
            poor.rounds
        );
    }

    let good_share =
        |out: &Completion| rounds_of(out, "qwen-0.5b") as f64 / out.stats.rounds as f64;
    assert!(
        good_share(&first) >= 0.8,
        "first request: the good drafter had {:.2} of the rounds",
        good_share(&first)
    );
    assert!(
        good_share(&second) >= 0.9,
        "second request: the good drafter had {:.2} of the rounds",
        good_share(&second)
    );
    assert!(
        rounds_of(&first, "qwen-0.5b-k8") >= 1,
        "the poor candidate is tried first"
    );
    // The request is reported under the drafter that produced most of the
    // accepted tokens (on a tie, the one used for most rounds).
    let reported = |out: &Completion| out.drafter.clone().unwrap_or_default();
    for out in [&first, &second] {
        let stats = &out.stats.drafters;
        let (poor, good) = (&stats["qwen-0.5b-k8"], &stats["qwen-0.5b"]);
        let expected = if (poor.accepted_tokens, poor.rounds) > (good.accepted_tokens, good.rounds)
        {
            "qwen-0.5b-k8"
        } else {
            "qwen-0.5b"
        };
        assert_eq!(reported(out), expected);
        assert_eq!(out.stats.drafter.as_deref(), Some(expected));
    }

    // What the bandit exports: the good candidate holds most of German's
    // recent rounds and the higher tokens per second.
    let reports: Vec<_> = engine()
        .bandit_reports()
        .into_iter()
        .filter(|r| r.language == "de")
        .collect();
    eprintln!("bandit: {reports:?}");
    let report = |name: &str| {
        reports
            .iter()
            .find(|r| r.drafter == name)
            .unwrap_or_else(|| panic!("no report for {name}: {reports:?}"))
    };
    let (good, poor) = (report("qwen-0.5b"), report("qwen-0.5b-k8"));
    assert!((good.share + poor.share - 1.0).abs() < 1e-9);
    assert!(good.share > 0.8, "{good:?}");
    assert!(
        good.tokens_per_second > poor.tokens_per_second,
        "{reports:?}"
    );
    assert_eq!(
        good.rounds + poor.rounds,
        first.stats.rounds + second.stats.rounds
    );
}

/// Switching between two model drafters mid-request: each catches up on
/// the tokens the other drafted for, and the output is the target's.
#[test]
fn switching_between_model_drafters_keeps_the_output_exact() {
    let (_, prompt) = common::TRANSLATIONS[2];
    let max_tokens = 24;
    let baseline = run(GenerationRequest::new(chat(prompt), max_tokens));
    let out = run(routed(prompt, "nl", max_tokens));
    eprintln!("by drafter: {:?}", out.stats.drafters);
    assert_eq!(out.token_ids, baseline.token_ids);
    // A fresh bandit tries each candidate once first: both drafted, the
    // second catching up on the prompt and the first one's tokens.
    for name in ["small-k3", "self-k3"] {
        let d = &out.stats.drafters[name];
        assert!(d.rounds >= 1 && d.draft_tokens >= 1, "{name}: {d:?}");
    }
    let target_as_drafter = &out.stats.drafters["self-k3"];
    assert_eq!(
        target_as_drafter.accepted_tokens, target_as_drafter.draft_tokens,
        "the target drafting for itself is always right"
    );
}

/// A drafter the request names, and plain decoding, work as before: one
/// drafter, no bandit, the breakdown holds that drafter alone.
#[test]
fn a_named_drafter_and_plain_decoding_are_unchanged() {
    let (_, prompt) = common::TRANSLATIONS[1];
    let mut named = GenerationRequest::new(chat(prompt), 16);
    named.drafter = DrafterChoice::Named("small-k3".into());
    named.language = Some("de".into());
    let out = run(named);
    assert_eq!(out.drafter.as_deref(), Some("small-k3"));
    assert_eq!(out.stats.drafters.len(), 1);
    assert_eq!(out.stats.drafters["small-k3"].rounds, out.stats.rounds);
    assert_eq!(
        out.stats.drafters["small-k3"].accepted_per_position,
        out.stats.accepted_per_position
    );
    let plain = run(GenerationRequest::new(chat(prompt), 16));
    assert_eq!(plain.token_ids, out.token_ids);
    assert_eq!(plain.drafter, None);
    assert!(plain.stats.drafters.is_empty());
}
