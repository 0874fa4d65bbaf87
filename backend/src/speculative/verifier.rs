//! Acceptance math of draft-and-verify: pure functions, no model.
//!
//! Greedy: a drafted token is accepted while it equals the target's argmax;
//! the first mismatch is replaced by the target's own token, and a fully
//! accepted draft earns one bonus token. The result is the target's greedy
//! output, token for token.
//!
//! Sampling (Leviathan et al. 2023; Chen et al. 2023): a drafted token x, drawn
//! from the drafter's distribution q, is accepted with probability
//! min(1, p(x)/q(x)); on rejection a replacement is drawn from
//! normalize(max(0, p - q)). Every emitted token is then distributed exactly
//! as p, the target's distribution.

use std::convert::Infallible;

use rand::Rng;

use super::sampling::Distribution;

/// Outcome of verifying one draft.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// How many drafted tokens were accepted (a prefix of the draft).
    pub accepted: usize,
    /// The token the target contributes after the accepted prefix: the
    /// correction of the first rejected draft, or the bonus token.
    pub next: u32,
}

/// Greedy verification. `target_argmax[i]` is the target's argmax after the
/// context extended by `draft[..i]`; it has `draft.len() + 1` entries.
pub fn verify_greedy(draft: &[u32], target_argmax: &[u32]) -> Verdict {
    debug_assert_eq!(target_argmax.len(), draft.len() + 1);
    let Ok(verdict) = verify_greedy_lazily::<Infallible>(draft, |i| Ok(target_argmax[i]));
    verdict
}

/// [`verify_greedy`] with the target's argmax at position `i` computed on
/// demand, in increasing `i`, and never past the first rejection: the engine
/// evaluates the draft in several target passes and skips the passes a
/// rejection makes useless.
pub fn verify_greedy_lazily<E>(
    draft: &[u32],
    mut target_argmax: impl FnMut(usize) -> Result<u32, E>,
) -> Result<Verdict, E> {
    for (i, &x) in draft.iter().enumerate() {
        let t = target_argmax(i)?;
        if t != x {
            return Ok(Verdict {
                accepted: i,
                next: t,
            });
        }
    }
    Ok(Verdict {
        accepted: draft.len(),
        next: target_argmax(draft.len())?,
    })
}

/// Result of checking one drafted token under sampling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenCheck {
    /// The drafted token is kept.
    Accepted,
    /// The drafted token is rejected; this token replaces it.
    Replaced(u32),
}

/// Speculative sampling for one drafted token `x`, drawn from `q`, against the
/// target distribution `p` at the same position.
pub fn check_sampled_token<R: Rng + ?Sized>(
    x: u32,
    p: &Distribution,
    q: &Distribution,
    rng: &mut R,
) -> TokenCheck {
    let px = p.prob(x);
    let qx = q.prob(x);
    // q(x) = 0 cannot happen for a token drawn from q, but a caller may pass a
    // token from elsewhere: treat the ratio as infinite when p(x) > 0.
    let accept_probability = if qx <= 0.0 {
        if px > 0.0 {
            1.0
        } else {
            0.0
        }
    } else {
        (px / qx).min(1.0)
    };
    if accept_probability >= 1.0 || rng.gen::<f32>() < accept_probability {
        return TokenCheck::Accepted;
    }
    TokenCheck::Replaced(residual(p, q).sample(rng))
}

/// normalize(max(0, p - q)): what a rejected draft is replaced from. When p
/// and q are equal (up to rounding) the residual has no mass, and rejection
/// has probability zero in exact arithmetic; fall back to p then.
pub fn residual(p: &Distribution, q: &Distribution) -> Distribution {
    let weights = p
        .entries()
        .iter()
        .map(|&(t, pt)| (t, (pt - q.prob(t)).max(0.0)))
        .collect();
    Distribution::from_weights(weights).unwrap_or_else(|| p.clone())
}

/// Verify a sampled draft: `target[i]` is p after `draft[..i]` (one more entry
/// than the draft), `draft_dists[i]` is q from which `draft[i]` was drawn.
pub fn verify_sampled<R: Rng + ?Sized>(
    draft: &[u32],
    draft_dists: &[Distribution],
    target: &[Distribution],
    rng: &mut R,
) -> Verdict {
    debug_assert_eq!(target.len(), draft.len() + 1);
    let Ok(verdict) =
        verify_sampled_lazily::<Infallible, R>(draft, draft_dists, |i| Ok(target[i].clone()), rng);
    verdict
}

/// [`verify_sampled`] with the target distribution at position `i` computed on
/// demand, in increasing `i`, never past the first rejection.
pub fn verify_sampled_lazily<E, R: Rng + ?Sized>(
    draft: &[u32],
    draft_dists: &[Distribution],
    mut target: impl FnMut(usize) -> Result<Distribution, E>,
    rng: &mut R,
) -> Result<Verdict, E> {
    for (i, (&x, q)) in draft.iter().zip(draft_dists).enumerate() {
        if let TokenCheck::Replaced(next) = check_sampled_token(x, &target(i)?, q, rng) {
            return Ok(Verdict { accepted: i, next });
        }
    }
    Ok(Verdict {
        accepted: draft.len(),
        next: target(draft.len())?.sample(rng),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    fn dist(weights: &[f32]) -> Distribution {
        Distribution::from_weights(
            weights
                .iter()
                .enumerate()
                .map(|(i, &w)| (i as u32, w))
                .collect(),
        )
        .unwrap()
    }

    #[test]
    fn greedy_accepts_matching_prefix_and_corrects() {
        let v = verify_greedy(&[5, 6, 7], &[5, 6, 9, 1]);
        assert_eq!(
            v,
            Verdict {
                accepted: 2,
                next: 9
            }
        );
    }

    #[test]
    fn greedy_full_acceptance_earns_bonus() {
        let v = verify_greedy(&[5, 6], &[5, 6, 8]);
        assert_eq!(
            v,
            Verdict {
                accepted: 2,
                next: 8
            }
        );
    }

    #[test]
    fn lazy_greedy_stops_at_first_rejection() {
        let mut asked = Vec::new();
        let v: Result<_, ()> = verify_greedy_lazily(&[5, 6, 7], |i| {
            asked.push(i);
            Ok([5, 9, 7, 1][i])
        });
        assert_eq!(
            v,
            Ok(Verdict {
                accepted: 1,
                next: 9
            })
        );
        assert_eq!(
            asked,
            [0, 1],
            "positions past the rejection are never evaluated"
        );
    }

    #[test]
    fn greedy_empty_draft_is_plain_decoding() {
        assert_eq!(
            verify_greedy(&[], &[3]),
            Verdict {
                accepted: 0,
                next: 3
            }
        );
    }

    /// Pearson chi-square statistic of observed counts against p.
    fn chi_square(counts: &[u64], p: &Distribution, n: u64) -> (f64, usize) {
        let mut stat = 0.0;
        let mut cells: usize = 0;
        for (t, &c) in counts.iter().enumerate() {
            let expected = f64::from(p.prob(t as u32)) * n as f64;
            if expected == 0.0 {
                assert_eq!(c, 0, "token {t} has p = 0 but was emitted");
                continue;
            }
            stat += (c as f64 - expected).powi(2) / expected;
            cells += 1;
        }
        (stat, cells.saturating_sub(1))
    }

    /// 99.9 % quantile of chi-square for small degrees of freedom.
    fn critical(dof: usize) -> f64 {
        [10.83, 13.82, 16.27, 18.47, 20.52, 22.46, 24.32, 26.12][dof - 1]
    }

    /// Draw x from q, run the acceptance step, and count the emitted token.
    fn emitted_frequencies(p: &Distribution, q: &Distribution, n: u64, seed: u64) -> Vec<u64> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut counts = vec![0u64; 8];
        for _ in 0..n {
            let x = q.sample(&mut rng);
            let token = match check_sampled_token(x, p, q, &mut rng) {
                TokenCheck::Accepted => x,
                TokenCheck::Replaced(t) => t,
            };
            counts[token as usize] += 1;
        }
        counts
    }

    fn assert_follows_p(p: &Distribution, q: &Distribution) {
        let n = 200_000;
        let counts = emitted_frequencies(p, q, n, 7);
        let (stat, dof) = chi_square(&counts, p, n);
        if dof > 0 {
            assert!(
                stat < critical(dof),
                "chi-square {stat:.2} with {dof} dof: counts {counts:?} do not follow {p:?}"
            );
        }
    }

    #[test]
    fn emitted_tokens_follow_target_for_overlapping_distributions() {
        assert_follows_p(&dist(&[0.4, 0.3, 0.2, 0.1]), &dist(&[0.1, 0.2, 0.3, 0.4]));
    }

    #[test]
    fn emitted_tokens_follow_target_when_drafter_misses_tokens() {
        // q(x) = 0 for tokens 3 and 4: they can only come from the residual.
        assert_follows_p(&dist(&[0.2, 0.2, 0.2, 0.2, 0.2]), &dist(&[0.5, 0.3, 0.2]));
    }

    #[test]
    fn emitted_tokens_follow_target_when_equal() {
        let p = dist(&[0.5, 0.25, 0.125, 0.125]);
        assert_follows_p(&p, &p.clone());
        // Equal distributions never reject.
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        for _ in 0..10_000 {
            let x = p.sample(&mut rng);
            assert_eq!(
                check_sampled_token(x, &p, &p, &mut rng),
                TokenCheck::Accepted
            );
        }
    }

    #[test]
    fn emitted_tokens_follow_target_for_disjoint_supports() {
        let p = Distribution::from_weights(vec![(0, 0.7), (1, 0.3)]).unwrap();
        let q = Distribution::from_weights(vec![(2, 0.5), (3, 0.5)]).unwrap();
        // Every draft is rejected; the residual is p itself.
        let counts = emitted_frequencies(&p, &q, 100_000, 3);
        assert_eq!(counts[2] + counts[3], 0);
        let (stat, dof) = chi_square(&counts, &p, 100_000);
        assert!(stat < critical(dof), "chi-square {stat}");
    }

    #[test]
    fn residual_is_positive_part_of_difference() {
        let r = residual(&dist(&[0.5, 0.5]), &dist(&[0.75, 0.25]));
        assert_eq!(r.entries(), &[(1, 1.0)]);
    }

    #[test]
    fn sampled_full_acceptance_draws_bonus_from_last_target() {
        let p = dist(&[0.0, 1.0]);
        let bonus = Distribution::point_mass(5);
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        let v = verify_sampled(
            &[1],
            std::slice::from_ref(&p),
            &[p.clone(), bonus],
            &mut rng,
        );
        assert_eq!(
            v,
            Verdict {
                accepted: 1,
                next: 5
            }
        );
    }

    #[test]
    fn sampled_chain_matches_target_joint_distribution() {
        // Two positions; the target's second distribution does not depend on
        // the first token here, so the joint is a product of marginals.
        let p0 = dist(&[0.6, 0.4]);
        let p1 = dist(&[0.1, 0.9]);
        let q0 = dist(&[0.2, 0.8]);
        let q1 = dist(&[0.5, 0.5]);
        let mut rng = ChaCha8Rng::seed_from_u64(11);
        let n = 100_000u64;
        let mut first = vec![0u64; 8];
        for _ in 0..n {
            let draft = [q0.sample(&mut rng), q1.sample(&mut rng)];
            let v = verify_sampled(
                &draft,
                &[q0.clone(), q1.clone()],
                &[p0.clone(), p1.clone(), p1.clone()],
                &mut rng,
            );
            let token = if v.accepted == 0 { v.next } else { draft[0] };
            first[token as usize] += 1;
        }
        let (stat, dof) = chi_square(&first, &p0, n);
        assert!(stat < critical(dof), "chi-square {stat}");
    }
}
