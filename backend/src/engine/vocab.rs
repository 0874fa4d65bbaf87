//! Drafter/target vocabulary compatibility, with llama.cpp's own rules
//! (`common_speculative_are_compatible`): same vocabulary type, same BOS/EOS
//! handling, sizes within 128 tokens, identical token text from id 5 on.

use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::token::LlamaToken;

/// Largest difference in vocabulary size llama.cpp tolerates between a target
/// and its drafter.
pub const MAX_VOCAB_SIZE_DIFFERENCE: usize = 128;

/// Token ids below this may differ (control tokens); llama.cpp skips them too.
pub const FIRST_COMPARED_TOKEN: usize = 5;

/// The facts about a vocabulary that compatibility depends on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VocabInfo {
    /// Tokenizer family (SPM, BPE, ...).
    pub vocab_type: String,
    /// Beginning-of-sequence token id.
    pub bos: i32,
    /// End-of-sequence token id.
    pub eos: i32,
    /// Whether a BOS token is prepended.
    pub add_bos: bool,
    /// Whether an EOS token is appended.
    pub add_eos: bool,
    /// Text of each token, by id.
    pub texts: Vec<Vec<u8>>,
}

impl VocabInfo {
    /// Read the vocabulary of a loaded model.
    pub fn of(model: &LlamaModel) -> Self {
        let vocab = model.vocab();
        let n = usize::try_from(vocab.n_tokens()).unwrap_or(0);
        let texts = (0..n)
            .map(|id| {
                vocab
                    .text(LlamaToken(id as i32))
                    .map(|t| t.to_bytes().to_vec())
                    .unwrap_or_default()
            })
            .collect();
        Self {
            vocab_type: format!("{:?}", vocab.vocab_type()),
            bos: vocab.bos().0,
            eos: vocab.eos().0,
            add_bos: vocab.should_add_bos(),
            add_eos: vocab.should_add_eos(),
            texts,
        }
    }

    /// Number of tokens.
    pub fn len(&self) -> usize {
        self.texts.len()
    }

    /// Whether the vocabulary is empty.
    pub fn is_empty(&self) -> bool {
        self.texts.is_empty()
    }
}

/// A drafter's logits restricted to the target's vocabulary: a drafter may
/// have up to [`MAX_VOCAB_SIZE_DIFFERENCE`] more tokens (padding, extra
/// control tokens), which the target could never evaluate, so they are never
/// drafted.
pub fn within_target_vocab(logits: &[f32], target_vocab: usize) -> &[f32] {
    &logits[..target_vocab.min(logits.len())]
}

/// Why a drafter's vocabulary cannot serve a target; `Ok` when it can.
pub fn check_compatible(target: &VocabInfo, drafter: &VocabInfo) -> Result<(), String> {
    if target.vocab_type != drafter.vocab_type {
        return Err(format!(
            "vocabulary type differs: target {}, drafter {}",
            target.vocab_type, drafter.vocab_type
        ));
    }
    if target.add_bos != drafter.add_bos || target.add_eos != drafter.add_eos {
        return Err(format!(
            "BOS/EOS insertion differs: target add_bos={} add_eos={}, drafter add_bos={} add_eos={}",
            target.add_bos, target.add_eos, drafter.add_bos, drafter.add_eos
        ));
    }
    if target.bos != drafter.bos || target.eos != drafter.eos {
        return Err(format!(
            "special tokens differ: target bos={} eos={}, drafter bos={} eos={}",
            target.bos, target.eos, drafter.bos, drafter.eos
        ));
    }
    let difference = target.len().abs_diff(drafter.len());
    if difference > MAX_VOCAB_SIZE_DIFFERENCE {
        return Err(format!(
            "vocabulary sizes differ by {difference} (target {}, drafter {}; at most {MAX_VOCAB_SIZE_DIFFERENCE} allowed)",
            target.len(),
            drafter.len()
        ));
    }
    let shared = target.len().min(drafter.len());
    for id in FIRST_COMPARED_TOKEN..shared {
        if target.texts[id] != drafter.texts[id] {
            return Err(format!(
                "token {id} differs: target {:?}, drafter {:?}",
                String::from_utf8_lossy(&target.texts[id]),
                String::from_utf8_lossy(&drafter.texts[id])
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_larger_drafter_vocabulary_is_never_drafted_beyond_the_target() {
        use crate::speculative::sampling::{self, SamplingParams};
        // The drafter's favourite token lies in its extra 128 ids.
        let mut logits = vec![0.0f32; 1000 + MAX_VOCAB_SIZE_DIFFERENCE];
        logits[1000 + 5] = 9.0;
        logits[7] = 3.0;
        let cut = within_target_vocab(&logits, 1000);
        assert_eq!(sampling::argmax(cut), 7);
        let params = SamplingParams {
            temperature: 1.0,
            ..SamplingParams::default()
        };
        let q = sampling::distribution(cut, &params);
        assert!(q.entries().iter().all(|&(t, _)| t < 1000));
        // A smaller drafter vocabulary is left whole.
        assert_eq!(within_target_vocab(&logits[..900], 1000).len(), 900);
    }

    fn vocab(n: usize) -> VocabInfo {
        VocabInfo {
            vocab_type: "BPE".into(),
            bos: 1,
            eos: 2,
            add_bos: false,
            add_eos: false,
            texts: (0..n).map(|i| format!("t{i}").into_bytes()).collect(),
        }
    }

    #[test]
    fn identical_vocabularies_are_compatible() {
        assert_eq!(check_compatible(&vocab(300), &vocab(300)), Ok(()));
    }

    #[test]
    fn small_size_difference_is_tolerated() {
        assert_eq!(check_compatible(&vocab(300), &vocab(300 + 128)), Ok(()));
        let err = check_compatible(&vocab(300), &vocab(300 + 129)).unwrap_err();
        assert!(err.contains("differ by 129"), "{err}");
    }

    #[test]
    fn each_rule_is_reported() {
        let mut d = vocab(300);
        d.vocab_type = "SPM".into();
        assert!(check_compatible(&vocab(300), &d)
            .unwrap_err()
            .contains("type"));

        let mut d = vocab(300);
        d.add_bos = true;
        assert!(check_compatible(&vocab(300), &d)
            .unwrap_err()
            .contains("BOS/EOS"));

        let mut d = vocab(300);
        d.eos = 7;
        assert!(check_compatible(&vocab(300), &d)
            .unwrap_err()
            .contains("eos=7"));

        let mut d = vocab(300);
        d.texts[42] = b"other".to_vec();
        assert!(check_compatible(&vocab(300), &d)
            .unwrap_err()
            .contains("token 42"));
    }

    #[test]
    fn first_tokens_may_differ() {
        let mut d = vocab(300);
        d.texts[4] = b"other".to_vec();
        assert_eq!(check_compatible(&vocab(300), &d), Ok(()));
    }
}
