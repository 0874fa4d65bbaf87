//! chrF (Popović 2015), computed the way sacreBLEU 2.x's `CHRF` does with its
//! defaults: character n-grams of orders 1 to 6, whitespace removed before the
//! n-grams are taken, beta = 2, case kept, and "effective order" averaging (an
//! order for which the hypothesis or the reference has no n-gram is left out
//! of the averages instead of being smoothed with an epsilon).
//!
//! Scores are on a 0–100 scale, like sacreBLEU's.

use std::collections::HashMap;

/// Highest character n-gram order (sacreBLEU's `CHRF.CHAR_ORDER`).
const CHAR_ORDER: usize = 6;

/// Weight of recall relative to precision (sacreBLEU's `CHRF.BETA`).
const BETA: f64 = 2.0;

/// N-gram counts of one order, summable over sentences for a corpus score.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct OrderStatistics {
    /// N-grams in the hypothesis (zero when the reference has none of this
    /// order, as sacreBLEU counts them).
    hypothesis: usize,
    /// N-grams in the reference.
    reference: usize,
    /// N-grams shared, each counted at most as often as in either side.
    matches: usize,
}

/// The statistics of every order, index 0 holding unigrams.
type Statistics = [OrderStatistics; CHAR_ORDER];

/// Sentence-level chrF of `hypothesis` against a single `reference`, 0–100.
pub fn chrf(hypothesis: &str, reference: &str) -> f64 {
    f_score(&pair_statistics(hypothesis, reference))
}

/// Corpus-level chrF of `(hypothesis, reference)` pairs, 0–100.
///
/// As in sacreBLEU, the n-gram statistics are summed over all pairs before
/// precision and recall are computed, so this is not the mean of the sentence
/// scores. An empty corpus scores 0.
pub fn corpus_chrf(pairs: &[(String, String)]) -> f64 {
    let mut totals = Statistics::default();
    for (hypothesis, reference) in pairs {
        let pair = pair_statistics(hypothesis, reference);
        for (total, order) in totals.iter_mut().zip(pair.iter()) {
            total.hypothesis += order.hypothesis;
            total.reference += order.reference;
            total.matches += order.matches;
        }
    }
    f_score(&totals)
}

/// Whitespace as Python's `str.split()` sees it, which is what sacreBLEU
/// strips: Rust's notion plus the ASCII information separators U+001C–U+001F.
fn is_python_whitespace(character: char) -> bool {
    character.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&character)
}

/// Counts the character n-grams of one order in `characters`.
fn ngram_counts(characters: &[char], order: usize) -> HashMap<&[char], usize> {
    let mut counts = HashMap::new();
    for ngram in characters.windows(order) {
        *counts.entry(ngram).or_insert(0) += 1;
    }
    counts
}

/// The n-gram statistics of one hypothesis/reference pair.
fn pair_statistics(hypothesis: &str, reference: &str) -> Statistics {
    let without_whitespace =
        |text: &str| -> Vec<char> { text.chars().filter(|&c| !is_python_whitespace(c)).collect() };
    let hypothesis = without_whitespace(hypothesis);
    let reference = without_whitespace(reference);

    let mut statistics = Statistics::default();
    for (index, order_statistics) in statistics.iter_mut().enumerate() {
        let order = index + 1;
        let hypothesis_ngrams = ngram_counts(&hypothesis, order);
        let reference_ngrams = ngram_counts(&reference, order);
        let matches = hypothesis_ngrams
            .iter()
            .filter_map(|(ngram, &count)| {
                reference_ngrams
                    .get(ngram)
                    .map(|&in_reference| count.min(in_reference))
            })
            .sum();
        let reference_total: usize = reference_ngrams.values().sum();
        // sacreBLEU reports no hypothesis n-grams for an order the reference
        // lacks; this matters once statistics are summed over a corpus.
        let hypothesis_total = if reference_total == 0 {
            0
        } else {
            hypothesis_ngrams.values().sum()
        };
        *order_statistics = OrderStatistics {
            hypothesis: hypothesis_total,
            reference: reference_total,
            matches,
        };
    }
    statistics
}

/// F-beta of the precision and recall averaged over the effective orders,
/// scaled to 0–100; operations follow sacreBLEU's `_compute_f_score` so that
/// the floating-point results agree.
fn f_score(statistics: &Statistics) -> f64 {
    let mut precision_sum = 0.0;
    let mut recall_sum = 0.0;
    let mut effective_orders = 0usize;
    for order in statistics {
        if order.hypothesis > 0 && order.reference > 0 {
            precision_sum += order.matches as f64 / order.hypothesis as f64;
            recall_sum += order.matches as f64 / order.reference as f64;
            effective_orders += 1;
        }
    }
    if effective_orders == 0 {
        return 0.0;
    }
    let precision = precision_sum / effective_orders as f64;
    let recall = recall_sum / effective_orders as f64;
    if precision + recall == 0.0 {
        return 0.0;
    }
    let factor = BETA * BETA;
    let score = (1.0 + factor) * precision * recall / (factor * precision + recall);
    100.0 * score
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOLERANCE: f64 = 1e-6;

    fn assert_close(actual: f64, expected: f64) {
        assert!(
            (actual - expected).abs() < TOLERANCE,
            "expected {expected}, got {actual}"
        );
    }

    #[test]
    fn identical_strings_score_100() {
        assert_close(chrf("Die Katze saß.", "Die Katze saß."), 100.0);
        assert_close(chrf("a", "a"), 100.0);
    }

    #[test]
    fn disjoint_strings_score_0() {
        assert_close(chrf("xyz", "abc"), 0.0);
    }

    #[test]
    fn empty_hypothesis_scores_0() {
        assert_close(chrf("", "abc"), 0.0);
        assert_close(chrf("   ", "abc"), 0.0);
        assert_close(chrf("", ""), 0.0);
    }

    #[test]
    fn hand_computed_example() {
        // hypothesis "ab", reference "abc":
        //   n=1: hyp {a, b}, ref {a, b, c}, 2 matches -> P = 2/2 = 1, R = 2/3
        //   n=2: hyp {ab},   ref {ab, bc},  1 match  -> P = 1/1 = 1, R = 1/2
        //   n=3: hyp has no trigram (ref has "abc") -> order left out;
        //   n=4..6: neither side has n-grams        -> left out.
        //   avg P = (1 + 1) / 2 = 1, avg R = (2/3 + 1/2) / 2 = 7/12
        //   F2 = (1 + 4) * P * R / (4 * P + R) = (35/12) / (55/12) = 7/11
        //   score = 100 * 7/11 = 63.6363...
        assert_close(chrf("ab", "abc"), 700.0 / 11.0);
    }

    #[test]
    fn whitespace_is_ignored() {
        assert_close(chrf("a b c", "abc"), 100.0);
        assert_close(
            chrf("Die  Katze\tsaß\n", "DieKatze saß"),
            chrf("DieKatzesaß", "DieKatzesaß"),
        );
        assert_close(
            chrf("the cat sat", "the mat"),
            chrf("thecatsat", "t h e m a t"),
        );
    }

    #[test]
    fn corpus_of_one_pair_equals_sentence_score() {
        let hypothesis = "The quick brown fox jumps over the lazy dog";
        let reference = "A quick brown dog jumps over the lazy fox";
        let corpus = [(hypothesis.to_string(), reference.to_string())];
        assert_close(corpus_chrf(&corpus), chrf(hypothesis, reference));
    }

    #[test]
    fn empty_corpus_scores_0() {
        assert_close(corpus_chrf(&[]), 0.0);
    }

    /// (hypothesis, reference, sentence chrF) with values from sacreBLEU 2.x's
    /// `CHRF()` defaults (sacreBLEU 2.6.0, signature
    /// `nrefs:1|case:mixed|eff:yes|nc:6|nw:0|space:no`).
    const SACREBLEU_SENTENCES: [(&str, &str, f64); 3] = [
        (
            "Die Katze saß auf der Matte.",
            "Die Katze sitzt auf der Matte.",
            71.62879262719996,
        ),
        (
            "Über den Wolken muss die Freiheit wohl grenzenlos sein.",
            "Über den Wolken ist die Freiheit sicher grenzenlos.",
            64.79639215707448,
        ),
        (
            "The quick brown fox jumps over the lazy dog",
            "A quick brown dog jumps over the lazy fox",
            73.6690180551178,
        ),
    ];

    /// sacreBLEU 2.6.0 `CHRF().corpus_score` of the three sentences above.
    const SACREBLEU_CORPUS: f64 = 69.24969345785243;

    #[test]
    fn matches_sacrebleu_sentence_scores() {
        for (hypothesis, reference, expected) in SACREBLEU_SENTENCES {
            assert_close(chrf(hypothesis, reference), expected);
        }
    }

    #[test]
    fn matches_sacrebleu_corpus_score() {
        let pairs: Vec<(String, String)> = SACREBLEU_SENTENCES
            .iter()
            .map(|(hypothesis, reference, _)| (hypothesis.to_string(), reference.to_string()))
            .collect();
        assert_close(corpus_chrf(&pairs), SACREBLEU_CORPUS);
    }
}
