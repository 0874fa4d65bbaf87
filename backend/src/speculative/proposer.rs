//! Drafting with a model: the proposer loop and the rule for drafts too short
//! to verify, apart from llama.cpp so that whole rounds (draft, drop rule,
//! verification) can be tested on synthetic distributions.

use rand::Rng;

use super::sampling::{self, Distribution, SamplingParams};

/// A drafter model as the proposer sees it: the logits of the next token,
/// and a way to feed it the token drafted.
pub trait DraftModel {
    /// What feeding a token can fail with.
    type Error;
    /// Logits of the next token after everything fed so far (restricted to
    /// the target's vocabulary).
    fn logits(&self) -> &[f32];
    /// Evaluate one drafted token, so that [`DraftModel::logits`] follows it.
    fn feed(&mut self, token: u32) -> Result<(), Self::Error>;
}

/// What the drafter proposed.
#[derive(Debug, Default)]
pub struct Proposal {
    /// The drafted tokens.
    pub tokens: Vec<u32>,
    /// When sampling, the distribution each token was drawn from.
    pub dists: Vec<Distribution>,
    /// Tokens fed back to the drafter (each a draft step).
    pub fed: usize,
    /// Whether drafting stopped before `k` tokens because the drafter was
    /// unsure (`p_min`).
    pub stopped_early: bool,
}

/// Draft up to `k` tokens, the first at sequence position `position`:
/// greedily; or, under the request's `sampling`, with the seed's coupled
/// choice (see [`Distribution::coupled_choice`]) or drawn with `rng`, keeping
/// the distributions for verification. Stop early where the drafter's most
/// likely token is below `p_min` (0 never stops). The last token drafted is
/// not fed back: the next round starts from the target's choice anyway.
pub fn propose<M: DraftModel, R: Rng + ?Sized>(
    model: &mut M,
    k: usize,
    p_min: f32,
    position: usize,
    sampling: &SamplingParams,
    rng: &mut R,
) -> Result<Proposal, M::Error> {
    let mut drafting = Proposing::new(k, p_min, position);
    while let Next::Feed(token) = drafting.step(model.logits(), sampling, rng) {
        model.feed(token)?;
    }
    Ok(drafting.finish())
}

/// What a drafter model does after a drafting step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Evaluate this drafted token and step again with its logits.
    Feed(u32),
    /// The draft is complete.
    Done,
}

/// [`propose`] one step at a time, for an engine that evaluates the
/// drafted tokens of several sequences in one pass: each step takes the
/// drafter's logits for the next position and says whether to feed a token.
#[derive(Debug)]
pub struct Proposing {
    k: usize,
    p_min: f32,
    position: usize,
    proposal: Proposal,
    done: bool,
}

impl Proposing {
    /// Start a draft of up to `k` tokens at sequence position `position`.
    pub fn new(k: usize, p_min: f32, position: usize) -> Self {
        Self {
            k,
            p_min,
            position,
            proposal: Proposal {
                tokens: Vec::with_capacity(k),
                ..Proposal::default()
            },
            done: k == 0,
        }
    }

    /// Whether the draft is complete.
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// Draft the next token from `logits` (see [`propose`]).
    pub fn step<R: Rng + ?Sized>(
        &mut self,
        logits: &[f32],
        sampling: &SamplingParams,
        rng: &mut R,
    ) -> Next {
        if self.done || self.proposal.tokens.len() >= self.k {
            self.done = true;
            return Next::Done;
        }
        if self.p_min > 0.0 && sampling::top_probability(logits) < self.p_min {
            self.proposal.stopped_early = true;
            self.done = true;
            return Next::Done;
        }
        let token = if sampling.is_greedy() {
            sampling::argmax(logits)
        } else {
            let q = sampling::distribution(logits, sampling);
            match sampling.seed {
                Some(seed) => q.coupled_choice(seed, self.position + self.proposal.tokens.len()),
                None => {
                    let token = q.sample(rng);
                    self.proposal.dists.push(q);
                    token
                }
            }
        };
        self.proposal.tokens.push(token);
        if self.proposal.tokens.len() < self.k {
            self.proposal.fed += 1;
            Next::Feed(token)
        } else {
            self.done = true;
            Next::Done
        }
    }

    /// The draft.
    pub fn finish(self) -> Proposal {
        self.proposal
    }
}

/// Whether a draft shorter than the drafter's `min` is dropped (the round
/// then decodes plainly). Where the output does not depend on the draft
/// (greedy or seeded requests: verification keeps only what the target
/// itself would choose), and for a draft that is a function of the tokens
/// so far (prompt lookup), dropping it changes only the speed. A model
/// draft drawn at random (`drawn_at_random`) is never dropped: its length
/// depends on the tokens drawn (the drafter grew unsure after some of them),
/// so keeping only the long ones would favour the tokens after which the
/// drafter stays sure, and the output would no longer follow the target's
/// distribution.
pub fn drops_short_draft(len: usize, min: usize, drawn_at_random: bool) -> bool {
    len < min && !drawn_at_random
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::speculative::verifier;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    /// A three-token drafter that is sure of its next token after token 0
    /// and unsure after tokens 1 and 2.
    struct Drafter {
        fed: Vec<u32>,
        logits: Vec<f32>,
    }

    fn log_probs(p: &[f32]) -> Vec<f32> {
        p.iter().map(|x| x.ln()).collect()
    }

    impl Drafter {
        fn new() -> Self {
            Self {
                fed: Vec::new(),
                logits: log_probs(&[0.5, 0.3, 0.2]),
            }
        }
    }

    impl DraftModel for Drafter {
        type Error = std::convert::Infallible;
        fn logits(&self) -> &[f32] {
            &self.logits
        }
        fn feed(&mut self, token: u32) -> Result<(), Self::Error> {
            self.fed.push(token);
            self.logits = if token == 0 {
                log_probs(&[0.9, 0.05, 0.05])
            } else {
                log_probs(&[0.4, 0.3, 0.3])
            };
            Ok(())
        }
    }

    /// Target: the same distribution at every position.
    const TARGET: [f32; 3] = [0.3, 0.4, 0.3];

    /// First tokens emitted by `n` whole rounds (draft, drop rule, verify)
    /// with `min` 2 and `p_min` 0.5, drafting up to 3 tokens.
    fn first_tokens(n: u64, drops: impl Fn(usize) -> bool) -> [u64; 3] {
        let sampling = SamplingParams {
            temperature: 1.0,
            ..SamplingParams::default()
        };
        let target = Distribution::from_weights(vec![(0, 0.3), (1, 0.4), (2, 0.3)]).unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let mut counts = [0u64; 3];
        for _ in 0..n {
            let mut drafter = Drafter::new();
            let mut p = propose(&mut drafter, 3, 0.5, 0, &sampling, &mut rng).unwrap();
            if drops(p.tokens.len()) {
                p.tokens.clear();
                p.dists.clear();
            }
            let verdict = verifier::verify_sampled_lazily::<std::convert::Infallible, _>(
                &p.tokens,
                &p.dists,
                |_| Ok(target.clone()),
                &mut rng,
            )
            .unwrap();
            let first = if verdict.accepted > 0 {
                p.tokens[0]
            } else {
                verdict.next
            };
            counts[first as usize] += 1;
        }
        counts
    }

    fn chi_square(counts: &[u64; 3], n: u64) -> f64 {
        counts
            .iter()
            .zip(TARGET)
            .map(|(&c, p)| {
                let expected = n as f64 * f64::from(p);
                (c as f64 - expected).powi(2) / expected
            })
            .sum()
    }

    /// Chi-square with 2 degrees of freedom at p = 0.001.
    const CRITICAL_2_DOF: f64 = 13.82;

    #[test]
    fn sampled_rounds_with_min_and_p_min_follow_the_target() {
        let n = 60_000;
        let counts = first_tokens(n, |len| drops_short_draft(len, 2, true));
        let stat = chi_square(&counts, n);
        assert!(stat < CRITICAL_2_DOF, "{counts:?}: chi-square {stat:.1}");
        // Dropping every short draft (the old rule) visibly biases the output.
        let biased = first_tokens(n, |len| len < 2);
        assert!(
            chi_square(&biased, n) > 100.0 * CRITICAL_2_DOF,
            "{biased:?}"
        );
    }

    #[test]
    fn the_drafter_stops_below_p_min_and_feeds_all_but_the_last_token() {
        let greedy = SamplingParams::default();
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        let mut drafter = Drafter::new();
        // Greedy: 0 (sure after it), 0, 0.
        let p = propose(&mut drafter, 3, 0.5, 0, &greedy, &mut rng).unwrap();
        assert_eq!(
            (p.tokens, p.fed, drafter.fed),
            (vec![0, 0, 0], 2, vec![0, 0])
        );
        // Unsure from the start: nothing drafted.
        let mut unsure = Drafter::new();
        unsure.logits = log_probs(&[0.4, 0.3, 0.3]);
        let p = propose(&mut unsure, 3, 0.5, 0, &greedy, &mut rng).unwrap();
        assert!(p.tokens.is_empty() && p.fed == 0 && p.stopped_early);
    }

    #[test]
    fn only_drafts_that_cannot_bias_are_dropped() {
        assert!(drops_short_draft(1, 2, false));
        assert!(!drops_short_draft(1, 2, true));
        assert!(!drops_short_draft(2, 2, false));
    }
}
