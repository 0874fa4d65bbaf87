//! Speculative sampling end to end: reproducible for a seed, statistics sane.

mod common;

use common::{chat, greedy, run, TRANSLATIONS};
use specdec_backend::speculative::sampling::SamplingParams;

fn sampled(prompt: &str, seed: u64, drafter: Option<&str>) -> specdec_backend::engine::Completion {
    let mut request = greedy(chat(prompt), 48, drafter, 4);
    request.sampling = SamplingParams {
        temperature: 0.9,
        top_k: 40,
        top_p: 0.95,
        min_p: 0.05,
        seed,
    };
    run(request)
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
