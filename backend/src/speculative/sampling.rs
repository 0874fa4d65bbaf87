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
    /// Seed of the request's random generator.
    pub seed: u64,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            seed: 0,
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
        let total: f64 = entries.iter().map(|&(_, w)| f64::from(w)).sum();
        if !(total.is_finite() && total > 0.0) {
            return None;
        }
        entries.sort_unstable_by_key(|&(t, _)| t);
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

/// The distribution sampling with `params` draws from, given raw logits.
/// Only meaningful for temperature > 0; greedy decoding uses [`argmax`].
pub fn distribution(logits: &[f32], params: &SamplingParams) -> Distribution {
    let temperature = params.temperature.max(f32::MIN_POSITIVE);
    let mut candidates: Vec<(u32, f32)> = logits
        .iter()
        .enumerate()
        .filter(|(_, l)| l.is_finite())
        .map(|(i, &l)| (i as u32, l / temperature))
        .collect();
    if candidates.is_empty() {
        return Distribution::point_mass(argmax(logits));
    }
    // Descending logit, ties by id, so that every cut below is deterministic.
    let descending = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
    if params.top_k > 0 && params.top_k < candidates.len() {
        candidates.select_nth_unstable_by(params.top_k - 1, descending);
        candidates.truncate(params.top_k);
    }
    let cuts_by_mass = params.top_p < 1.0 || params.min_p > 0.0;
    // Sorting a 150k vocabulary costs milliseconds: only do it when a cut needs it.
    if cuts_by_mass {
        candidates.sort_unstable_by(descending);
    }
    let max = candidates
        .iter()
        .map(|c| c.1)
        .fold(f32::NEG_INFINITY, f32::max);
    let mut total = 0.0f64;
    for c in &mut candidates {
        c.1 = (c.1 - max).exp();
        total += f64::from(c.1);
    }
    for c in &mut candidates {
        c.1 = (f64::from(c.1) / total) as f32;
    }
    if params.top_p < 1.0 {
        let mut mass = 0.0f32;
        let mut keep = candidates.len();
        for (i, c) in candidates.iter().enumerate() {
            mass += c.1;
            if mass >= params.top_p {
                keep = i + 1;
                break;
            }
        }
        candidates.truncate(keep.max(1));
    }
    if params.min_p > 0.0 {
        let threshold = candidates[0].1 * params.min_p;
        let keep = candidates.iter().take_while(|c| c.1 >= threshold).count();
        candidates.truncate(keep.max(1));
    }
    let fallback = candidates[0].0;
    Distribution::from_weights(candidates).unwrap_or_else(|| Distribution::point_mass(fallback))
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
    fn top_probability_matches_softmax() {
        assert!((top_probability(&[0.0, 0.0]) - 0.5).abs() < 1e-6);
    }
}
