//! Turning logits into the distribution a token is drawn from.
//!
//! Target and drafter go through the *same* transform, so that speculative
//! sampling reproduces exactly the distribution that plain sampling with these
//! parameters would draw from. The order is fixed and documented: temperature,
//! then top-k, then top-p (nucleus), then min-p, each on the result of the one
//! before, renormalised at the end.

use rand::Rng;

/// Sampling parameters of one request, already validated.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// 0 means greedy (argmax); otherwise logits are divided by it.
    pub temperature: f32,
    /// Keep the k most likely tokens; 0 disables.
    pub top_k: usize,
    /// Keep the smallest set whose mass reaches top_p; 1.0 disables.
    pub top_p: f32,
    /// Drop tokens whose probability is below min_p times the top one; 0 disables.
    pub min_p: f32,
    /// The request's seed. Given one, sampling is reproducible: every
    /// choice is Gumbel-max with noise keyed by the seed and the position
    /// ([`Distribution::coupled_choice`]), so the tokens are the same
    /// whatever drafting did. Without one, a random generator.
    pub seed: Option<u64>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            seed: None,
        }
    }
}

/// A sampling parameter out of its range.
#[derive(Debug, Clone, PartialEq)]
pub struct InvalidSampling {
    /// The parameter's name.
    pub field: &'static str,
    /// What is wrong with it.
    pub message: String,
}

impl SamplingParams {
    /// Whether decoding is greedy (deterministic argmax).
    pub fn is_greedy(&self) -> bool {
        self.temperature <= 0.0
    }

    /// Whether choices are drawn with a random generator (sampling without
    /// a seed): drafts are then verified by the rejection rule, which needs
    /// the distributions they were drawn from, and the output depends on
    /// what was drafted. Greedy and seeded choices are functions of the
    /// logits (and seed and position), verified by equality.
    pub fn draws_at_random(&self) -> bool {
        !self.is_greedy() && self.seed.is_none()
    }

    /// Check the ranges of the parameters.
    pub fn validate(&self) -> Result<(), InvalidSampling> {
        let invalid = |field, message| Err(InvalidSampling { field, message });
        if !self.temperature.is_finite() || self.temperature < 0.0 {
            let t = self.temperature;
            return invalid(
                "temperature",
                format!("temperature must be a finite number >= 0, got {t}"),
            );
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return invalid(
                "top_p",
                format!("top_p must be in (0, 1], got {}", self.top_p),
            );
        }
        if !(0.0..1.0).contains(&self.min_p) {
            return invalid(
                "min_p",
                format!("min_p must be in [0, 1), got {}", self.min_p),
            );
        }
        Ok(())
    }
}

/// A probability distribution over token ids, sparse: only tokens with a
/// non-zero probability are stored, sorted by id so lookups are a binary search.
#[derive(Debug, Clone, PartialEq)]
pub struct Distribution {
    entries: Vec<(u32, f32)>,
}

impl Distribution {
    /// Build from (token, weight) pairs; weights need not be normalised.
    /// Returns `None` when the total weight is zero or not finite.
    pub fn from_weights(mut entries: Vec<(u32, f32)>) -> Option<Self> {
        entries.retain(|&(_, w)| w > 0.0);
        // Summed in id order, so equal sets of weights give equal probabilities.
        entries.sort_unstable_by_key(|&(t, _)| t);
        let total: f64 = entries.iter().map(|&(_, w)| f64::from(w)).sum();
        if !(total.is_finite() && total > 0.0) {
            return None;
        }
        for entry in &mut entries {
            entry.1 = (f64::from(entry.1) / total) as f32;
        }
        Some(Self { entries })
    }

    /// A distribution that puts all its mass on one token.
    pub fn point_mass(token: u32) -> Self {
        Self {
            entries: vec![(token, 1.0)],
        }
    }

    /// The probability of `token`.
    pub fn prob(&self, token: u32) -> f32 {
        self.entries
            .binary_search_by_key(&token, |&(t, _)| t)
            .map_or(0.0, |i| self.entries[i].1)
    }

    /// The most likely token and its probability (lowest id on ties).
    pub fn argmax(&self) -> (u32, f32) {
        let mut best = self.entries[0];
        for &(t, p) in &self.entries[1..] {
            if p > best.1 {
                best = (t, p);
            }
        }
        best
    }

    /// The (token, probability) pairs, sorted by token id.
    pub fn entries(&self) -> &[(u32, f32)] {
        &self.entries
    }

    /// Draw a token.
    /// The token Gumbel-max sampling picks with the noise of `(seed,
    /// position)`: the largest `ln p(x) + g(x)`, with `g(x)` standard Gumbel
    /// noise that is a function of the seed, the position and `x`. Over
    /// fresh noise it is a draw from this distribution. A drafter and the
    /// target choosing with the same noise agree as often as their
    /// distributions let them, and the target's choice at a position does
    /// not depend on what was drafted: sampled speculative decoding then
    /// yields exactly the tokens plain sampling yields for the seed.
    pub fn coupled_choice(&self, seed: u64, position: usize) -> u32 {
        let mut best = (self.entries[0].0, f64::NEG_INFINITY);
        for &(token, p) in &self.entries {
            // ln p + Gumbel = ln p - ln(-ln u).
            let score = f64::from(p).ln() - (-keyed_uniform(seed, position, token).ln()).ln();
            if score > best.1 {
                best = (token, score);
            }
        }
        best.0
    }

    /// A draw from the distribution with `rng`.
    pub fn sample<R: Rng + ?Sized>(&self, rng: &mut R) -> u32 {
        let mut u: f32 = rng.gen::<f32>();
        for &(t, p) in &self.entries {
            if u < p {
                return t;
            }
            u -= p;
        }
        // Rounding left a sliver of mass: give it to the last token.
        self.entries[self.entries.len() - 1].0
    }
}

/// SplitMix64's finaliser: a well-mixed 64-bit function of `x`.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// A uniform number in (0, 1) that is a function of the seed, the position
/// and the token alone.
fn keyed_uniform(seed: u64, position: usize, token: u32) -> f64 {
    let bits = mix(seed ^ mix(position as u64 ^ mix(u64::from(token))));
    ((bits >> 11) as f64 + 0.5) / (1u64 << 53) as f64
}

/// Index of the largest logit (lowest index on ties), as llama.cpp's greedy
/// sampler chooses.
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0usize;
    for (i, &l) in logits.iter().enumerate().skip(1) {
        if l > logits[best] {
            best = i;
        }
    }
    best as u32
}

/// Largest softmax probability of the logits at temperature 1, the drafter's
/// confidence used by the `p_min` draft control.
pub fn top_probability(logits: &[f32]) -> f32 {
    let max = logits[argmax(logits) as usize];
    let sum: f64 = logits.iter().map(|&l| f64::from((l - max).exp())).sum();
    (1.0 / sum) as f32
}

/// Tokens in the first partial selection of a nucleus (top-p) cut, grown
/// fourfold while their mass falls short. Language models put most of the
/// mass on a few tokens, so one selection over the vocabulary usually ends it.
const NUCLEUS_FIRST_SELECTION: usize = 64;

/// Descending weight, ties by lower id: the total order of every cut, so cuts
/// are deterministic and target and drafter cut alike.
fn descending(a: &(u32, f32), b: &(u32, f32)) -> std::cmp::Ordering {
    b.1.total_cmp(&a.1).then(a.0.cmp(&b.0))
}

/// The tokens with finite logits, scaled by the temperature, and top-k
/// applied: the candidates every cut starts from. The largest logit is
/// subtracted before dividing, so a tiny temperature sends the others to
/// minus infinity (weight 0) and leaves the most likely token, instead of
/// overflowing every logit to infinity.
fn tempered_candidates(logits: &[f32], params: &SamplingParams) -> Vec<(u32, f32)> {
    let temperature = params.temperature.max(f32::MIN_POSITIVE);
    let max = logits
        .iter()
        .copied()
        .filter(|l| l.is_finite())
        .fold(f32::NEG_INFINITY, f32::max);
    let mut candidates: Vec<(u32, f32)> = logits
        .iter()
        .enumerate()
        .filter(|(_, l)| l.is_finite())
        .map(|(i, &l)| (i as u32, (l - max) / temperature))
        .collect();
    if params.top_k > 0 && params.top_k < candidates.len() {
        candidates.select_nth_unstable_by(params.top_k - 1, descending);
        candidates.truncate(params.top_k);
    }
    candidates
}

/// Turn scaled logits into softmax weights in place (the largest weight is
/// 1); returns their sum.
fn softmax_weights(candidates: &mut [(u32, f32)]) -> f64 {
    let max = candidates
        .iter()
        .map(|c| c.1)
        .fold(f32::NEG_INFINITY, f32::max);
    let mut total = 0.0f64;
    for c in candidates.iter_mut() {
        c.1 = (c.1 - max).exp();
        total += f64::from(c.1);
    }
    total
}

/// How many of the `candidates`, taken most likely first, form the nucleus:
/// the fewest whose probability (weight / `total`) reaches `top_p`. Leaves
/// that many at the front in descending order; the rest are unordered.
///
/// Partial selection instead of a full sort: the most likely
/// [`NUCLEUS_FIRST_SELECTION`] are selected (linear time) and sorted, and the
/// selection grows fourfold while their mass falls short.
fn nucleus_len(candidates: &mut [(u32, f32)], total: f64, top_p: f32) -> usize {
    let mut mass = 0.0f32;
    let mut sorted = 0;
    let mut want = NUCLEUS_FIRST_SELECTION;
    while sorted < candidates.len() {
        let end = want.min(candidates.len());
        let rest = &mut candidates[sorted..];
        if end - sorted < rest.len() {
            rest.select_nth_unstable_by(end - sorted - 1, descending);
        }
        rest[..end - sorted].sort_unstable_by(descending);
        for (i, c) in candidates[sorted..end].iter().enumerate() {
            mass += (f64::from(c.1) / total) as f32;
            if mass >= top_p {
                return sorted + i + 1;
            }
        }
        sorted = end;
        want = want.saturating_mul(4);
    }
    candidates.len()
}

/// The distribution sampling with `params` draws from, given raw logits.
/// Only meaningful for temperature > 0; greedy decoding uses [`argmax`].
///
/// Equal to [`distribution_by_full_sort`], the definition, in linear time
/// plus a sort of the nucleus alone.
pub fn distribution(logits: &[f32], params: &SamplingParams) -> Distribution {
    let mut candidates = tempered_candidates(logits, params);
    if candidates.is_empty() {
        return Distribution::point_mass(argmax(logits));
    }
    let total = softmax_weights(&mut candidates);
    if params.top_p < 1.0 {
        let keep = nucleus_len(&mut candidates, total, params.top_p);
        candidates.truncate(keep.max(1));
    }
    if params.min_p > 0.0 {
        // Relative to the most likely token, whose weight is 1.
        candidates.retain(|c| c.1 >= params.min_p);
    }
    Distribution::from_weights(candidates)
        .unwrap_or_else(|| Distribution::point_mass(argmax(logits)))
}

/// The transform of [`distribution`] by its definition: sort every candidate
/// by descending probability, then cut. Slow on a real vocabulary (a full
/// sort per position); kept as the specification that the fast version is
/// tested and timed against.
pub fn distribution_by_full_sort(logits: &[f32], params: &SamplingParams) -> Distribution {
    let mut candidates = tempered_candidates(logits, params);
    if candidates.is_empty() {
        return Distribution::point_mass(argmax(logits));
    }
    let total = softmax_weights(&mut candidates);
    candidates.sort_unstable_by(descending);
    let mut keep = candidates.len();
    if params.top_p < 1.0 {
        let mut mass = 0.0f32;
        for (i, c) in candidates.iter().enumerate() {
            mass += (f64::from(c.1) / total) as f32;
            if mass >= params.top_p {
                keep = i + 1;
                break;
            }
        }
    }
    if params.min_p > 0.0 {
        keep = keep.min(
            candidates
                .iter()
                .take_while(|c| c.1 >= params.min_p)
                .count(),
        );
    }
    candidates.truncate(keep.max(1));
    Distribution::from_weights(candidates)
        .unwrap_or_else(|| Distribution::point_mass(argmax(logits)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(temperature: f32) -> SamplingParams {
        SamplingParams {
            temperature,
            ..SamplingParams::default()
        }
    }

    #[test]
    fn argmax_prefers_lowest_index_on_ties() {
        assert_eq!(argmax(&[1.0, 3.0, 3.0, -1.0]), 1);
    }

    #[test]
    fn softmax_at_temperature_one() {
        let d = distribution(&[0.0, (2.0f32).ln()], &params(1.0));
        assert!((d.prob(0) - 1.0 / 3.0).abs() < 1e-6);
        assert!((d.prob(1) - 2.0 / 3.0).abs() < 1e-6);
    }

    #[test]
    fn top_k_keeps_k_most_likely() {
        let p = SamplingParams {
            top_k: 2,
            ..params(1.0)
        };
        let d = distribution(&[1.0, 3.0, 2.0, 0.0], &p);
        assert_eq!(d.entries().iter().map(|e| e.0).collect::<Vec<_>>(), [1, 2]);
    }

    #[test]
    fn top_p_keeps_smallest_set_reaching_mass() {
        let logits: Vec<f32> = [0.5f32, 0.3, 0.15, 0.05].iter().map(|p| p.ln()).collect();
        let p = SamplingParams {
            top_p: 0.75,
            ..params(1.0)
        };
        let d = distribution(&logits, &p);
        assert_eq!(d.entries().len(), 2);
        assert!((d.prob(0) - 0.625).abs() < 1e-5);
    }

    #[test]
    fn min_p_drops_unlikely_tokens() {
        let logits: Vec<f32> = [0.6f32, 0.3, 0.05, 0.05].iter().map(|p| p.ln()).collect();
        let p = SamplingParams {
            min_p: 0.2,
            ..params(1.0)
        };
        let d = distribution(&logits, &p);
        assert_eq!(d.entries().len(), 2);
    }

    #[test]
    fn low_temperature_concentrates_mass() {
        let d = distribution(&[1.0, 2.0], &params(0.01));
        assert!(d.prob(1) > 0.999);
    }

    #[test]
    fn coupled_choices_follow_the_distribution_and_agree_where_it_does() {
        let p = Distribution::from_weights(vec![(0, 0.5), (3, 0.3), (7, 0.2)]).unwrap();
        let n = 60_000;
        let mut counts = [0u64; 3];
        for position in 0..n {
            let i = match p.coupled_choice(9, position) {
                0 => 0,
                3 => 1,
                7 => 2,
                other => panic!("{other} is not in the distribution"),
            };
            counts[i] += 1;
        }
        let chi: f64 = counts
            .iter()
            .zip([0.5, 0.3, 0.2])
            .map(|(&c, q)| (c as f64 - n as f64 * q).powi(2) / (n as f64 * q))
            .sum();
        assert!(
            chi < 13.82,
            "{counts:?}: chi-square {chi:.1} (2 dof, p = 0.001)"
        );
        // A function of (seed, position): the same again, another with another seed.
        let again: Vec<u32> = (0..64).map(|i| p.coupled_choice(9, i)).collect();
        assert_eq!(
            again,
            (0..64).map(|i| p.coupled_choice(9, i)).collect::<Vec<_>>()
        );
        assert_ne!(
            again,
            (0..64).map(|i| p.coupled_choice(10, i)).collect::<Vec<_>>()
        );
        // A close distribution agrees at most positions; the same one at all.
        let q = Distribution::from_weights(vec![(0, 0.45), (3, 0.35), (7, 0.2)]).unwrap();
        let agree = (0..10_000)
            .filter(|&i| p.coupled_choice(1, i) == q.coupled_choice(1, i))
            .count();
        assert!(agree > 8_500, "{agree}");
        assert!((0..1000).all(|i| p.coupled_choice(1, i) == p.clone().coupled_choice(1, i)));
    }

    #[test]
    fn vanishing_temperatures_pick_the_most_likely_token() {
        let logits = [3.0, -1.0, 7.5, 7.0, f32::NEG_INFINITY, 2.0];
        for t in [1e-30, 1e-37, 1e-38, f32::MIN_POSITIVE, 1e-45] {
            for cut in [distribution, distribution_by_full_sort] {
                let d = cut(&logits, &params(t));
                assert_eq!(d.argmax(), (2, 1.0), "temperature {t}");
                assert!(d.entries().iter().all(|e| e.1.is_finite()), "{t}");
            }
        }
        // Tied most likely tokens share the mass.
        let d = distribution(&[5.0, 1.0, 5.0], &params(1e-38));
        assert_eq!((d.prob(0), d.prob(2)), (0.5, 0.5));
    }

    /// Logits shaped like a language model's: a few likely tokens, a long
    /// tail, ties (quantised values) and some masked (-inf) tokens.
    fn model_like_logits(rng: &mut impl Rng, vocab: usize) -> Vec<f32> {
        let peak = rng.gen_range(-4.0f32..12.0);
        (0..vocab)
            .map(|i| match rng.gen_range(0..100) {
                0 => f32::NEG_INFINITY,
                1..=3 => peak + rng.gen_range(-2.0f32..0.0),
                _ if i % 7 == 0 => (rng.gen_range(-40i32..0) as f32) / 4.0,
                _ => rng.gen_range(-12.0f32..2.0),
            })
            .collect()
    }

    #[test]
    fn partial_selection_equals_the_full_sort_definition() {
        use rand::SeedableRng;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
        let mut nucleus_sizes = Vec::new();
        for case in 0..500 {
            let vocab = [5, 64, 65, 300, 5000][case % 5];
            let logits = model_like_logits(&mut rng, vocab);
            let params = SamplingParams {
                temperature: [0.2, 0.7, 1.0, 1.5][case % 4],
                top_k: [0, 0, 3, 40, 200][(case / 5) % 5],
                top_p: [1.0, 0.95, 0.5, 0.999, 0.05][(case / 25) % 5],
                min_p: [0.0, 0.0, 0.05, 0.3][(case / 125) % 4],
                seed: None,
            };
            let fast = distribution(&logits, &params);
            assert_eq!(
                fast,
                distribution_by_full_sort(&logits, &params),
                "case {case}: {params:?}"
            );
            nucleus_sizes.push(fast.entries().len());
        }
        // The cases cover nuclei inside and beyond the first selection.
        assert!(nucleus_sizes.iter().any(|&n| n < NUCLEUS_FIRST_SELECTION));
        assert!(nucleus_sizes
            .iter()
            .any(|&n| n > 4 * NUCLEUS_FIRST_SELECTION));
    }

    #[test]
    fn nucleus_ties_are_cut_by_lower_id() {
        // Four equally likely tokens, top_p 0.5: the two lowest ids.
        let p = SamplingParams {
            top_p: 0.5,
            ..params(1.0)
        };
        let d = distribution(&[0.0, 1.0, 1.0, 1.0, 1.0], &p);
        let ids: Vec<u32> = d.entries().iter().map(|e| e.0).collect();
        assert!(ids == [1, 2] || ids == [1, 2, 3], "{ids:?}");
        assert_eq!(d, distribution_by_full_sort(&[0.0, 1.0, 1.0, 1.0, 1.0], &p));
    }

    #[test]
    fn top_probability_matches_softmax() {
        assert!((top_probability(&[0.0, 0.0]) - 0.5).abs() < 1e-6);
    }
}
