//! Model-free drafting by prompt lookup: find the most recent earlier
//! occurrence of the longest suffix n-gram of the context and propose the
//! tokens that followed it. Costs microseconds, and pays off wherever output
//! copies input (translation of names and numbers, code edits, quoting).

/// Settings of the n-gram proposer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NgramParams {
    /// Longest suffix n-gram to look up.
    pub max_ngram: usize,
    /// Shortest suffix n-gram that still counts as a match.
    pub min_ngram: usize,
}

impl Default for NgramParams {
    fn default() -> Self {
        Self {
            max_ngram: 3,
            min_ngram: 1,
        }
    }
}

/// Propose up to `max_tokens` continuation tokens for `context`.
pub fn propose(context: &[u32], params: NgramParams, max_tokens: usize) -> Vec<u32> {
    if max_tokens == 0 || context.len() < 2 {
        return Vec::new();
    }
    let longest = params.max_ngram.min(context.len() - 1);
    for n in (params.min_ngram.max(1)..=longest).rev() {
        let suffix = &context[context.len() - n..];
        // Search backwards for the latest earlier occurrence that has at
        // least one token after it.
        let last_start = context.len() - n - 1;
        for start in (0..=last_start).rev() {
            if &context[start..start + n] == suffix {
                let from = start + n;
                let to = (from + max_tokens).min(context.len());
                return context[from..to].to_vec();
            }
        }
    }
    Vec::new()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proposes_continuation_of_latest_match() {
        let ctx = [1, 2, 3, 9, 1, 2, 3, 4, 5, 1, 2, 3];
        assert_eq!(propose(&ctx, NgramParams::default(), 2), [4, 5]);
    }

    #[test]
    fn prefers_longer_ngram() {
        // "3" alone last appears before 7, but "2 3" appears before 4.
        let ctx = [2, 3, 4, 3, 7, 2, 3];
        assert_eq!(propose(&ctx, NgramParams::default(), 1), [4]);
    }

    #[test]
    fn no_match_gives_empty_draft() {
        assert!(propose(&[1, 2, 3, 4], NgramParams::default(), 4).is_empty());
        assert!(propose(&[1], NgramParams::default(), 4).is_empty());
        assert!(propose(&[1, 1], NgramParams::default(), 0).is_empty());
    }

    #[test]
    fn continuation_is_cut_at_context_end() {
        assert_eq!(propose(&[5, 6, 5], NgramParams::default(), 8), [6, 5]);
    }
}
