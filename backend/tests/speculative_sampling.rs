//! Speculative sampling end to end: reproducible for a seed, statistics sane.

mod common;

use common::{chat, greedy, run, TRANSLATIONS};
use specdec_backend::speculative::sampling::SamplingParams;

fn sampled_request(
    prompt: &str,
    seed: Option<u64>,
    drafter: Option<&str>,
) -> specdec_backend::engine::GenerationRequest {
    let mut request = greedy(chat(prompt), 48, drafter, 4);
    request.sampling = SamplingParams {
        temperature: 0.9,
        top_k: 40,
        top_p: 0.95,
        min_p: 0.05,
        seed,
    };
    request
}

fn sampled(prompt: &str, seed: u64, drafter: Option<&str>) -> specdec_backend::engine::Completion {
    run(sampled_request(prompt, Some(seed), drafter))
}

/// A seeded sampled request yields the tokens plain sampling yields for the
/// seed, whoever drafts and however much: fixed lengths, prompt lookup,
/// adaptive drafting (whose lengths follow the machine's timings) and a
/// minimum draft length with a confidence cut.
#[test]
fn a_seed_gives_the_same_tokens_whatever_drafting_does() {
    let (_, prompt) = TRANSLATIONS[2];
    let plain = sampled(prompt, 5, None);
    assert!(plain.token_ids.len() > 8);
    for drafter in ["qwen-0.5b", "ngram", "self"] {
        let fixed = sampled(prompt, 5, Some(drafter));
        assert_eq!(
            fixed.token_ids, plain.token_ids,
            "{drafter}, fixed length 4"
        );
        let mut adaptive = sampled_request(prompt, Some(5), Some(drafter));
        adaptive.draft = Some(specdec_backend::config::DraftParams {
            max: 6,
            min: 2,
            p_min: 0.3,
            adaptive: true,
        });
        let adaptive = run(adaptive);
        assert_eq!(adaptive.token_ids, plain.token_ids, "{drafter}, adaptive");
    }
    // The model drafter is right often enough to be accepted at all.
    assert!(sampled(prompt, 5, Some("qwen-0.5b")).stats.accepted_tokens > 0);
}

/// Without a seed, requests draw their own randomness.
#[test]
fn unseeded_requests_differ() {
    let (_, prompt) = TRANSLATIONS[3];
    let outputs: std::collections::BTreeSet<Vec<u32>> = (0..3)
        .map(|_| run(sampled_request(prompt, None, Some("qwen-0.5b"))).token_ids)
        .collect();
    assert!(outputs.len() > 1, "three unseeded requests gave one output");
}

#[test]
fn same_seed_same_output() {
    let (_, prompt) = TRANSLATIONS[1];
    for drafter in [None, Some("qwen-0.5b"), Some("ngram")] {
        let a = sampled(prompt, 42, drafter);
        let b = sampled(prompt, 42, drafter);
        assert_eq!(a.token_ids, b.token_ids, "drafter {drafter:?}");
        assert_eq!(a.stats.accepted_tokens, b.stats.accepted_tokens);
    }
}

#[test]
fn different_seeds_explore() {
    let (_, prompt) = TRANSLATIONS[3];
    let outputs: std::collections::BTreeSet<Vec<u32>> = (0..4)
        .map(|seed| sampled(prompt, seed, Some("qwen-0.5b")).token_ids)
        .collect();
    assert!(outputs.len() > 1, "four seeds gave one output");
}

#[test]
fn sampled_acceptance_is_sane_and_below_greedy() {
    let (mut greedy_drafted, mut greedy_accepted) = (0u64, 0u64);
    let (mut sampled_drafted, mut sampled_accepted) = (0u64, 0u64);
    for (_, prompt) in &TRANSLATIONS[1..4] {
        let g = run(greedy(chat(prompt), 48, Some("qwen-0.5b"), 4)).stats;
        greedy_drafted += g.draft_tokens;
        greedy_accepted += g.accepted_tokens;
        for seed in 0..2 {
            let s = sampled(prompt, seed, Some("qwen-0.5b")).stats;
            assert!(s.accepted_tokens <= s.draft_tokens, "{s:?}");
            assert!((0.0..=1.0).contains(&s.acceptance_rate));
            assert!(s.mean_accepted_length >= 1.0 && s.mean_accepted_length <= 5.0);
            sampled_drafted += s.draft_tokens;
            sampled_accepted += s.accepted_tokens;
        }
    }
    let greedy_rate = greedy_accepted as f64 / greedy_drafted as f64;
    let sampled_rate = sampled_accepted as f64 / sampled_drafted as f64;
    assert!(
        sampled_rate < greedy_rate,
        "sampling acceptance {sampled_rate:.3} should be below greedy {greedy_rate:.3}"
    );
    assert!(sampled_rate > 0.0);
}
