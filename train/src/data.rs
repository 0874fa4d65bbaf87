//! Training data: distilled examples on disk, the vocabulary subset the
//! drafter is trained over, and packing into fixed-length sequences with
//! loss masks.
//!
//! A packed sequence holds `len + 1` tokens: inputs are tokens `0..len`,
//! targets `1..=len`, and `mask[i]` says whether target `i` counts in the
//! loss. Pretraining text counts everywhere; a distilled example counts only
//! on its response (the prompt is the target's input, not something the
//! drafter will ever have to propose).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// A data file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// Reading or writing failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// A line is not what the format says.
    #[error("{path}, line {line}: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        reason: String,
    },
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> DataError + '_ {
    move |source| DataError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// One prompt and the target's answer, as token ids.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Example {
    /// Position in the distillation plan (resuming continues after the last).
    pub id: usize,
    /// Which prompt template made it (`translate`, `summarise`, ...).
    pub kind: String,
    /// Sampling temperature of the answer (0 = greedy).
    pub temperature: f32,
    /// Where the paragraph came from.
    pub source: String,
    /// The chat-templated prompt, tokenized as the engine tokenizes it.
    pub prompt: Vec<u32>,
    /// The target's answer, ending with its end-of-turn token when it stopped by itself.
    pub response: Vec<u32>,
}

/// Read a JSON-lines file of `T`, refusing a corrupt line or a truncated
/// file (no newline after the last record) with the file and line.
pub fn read_jsonl<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<Vec<T>, DataError> {
    let file = File::open(path).map_err(io_error(path))?;
    let mut reader = BufReader::new(file);
    let mut records = Vec::new();
    let mut line = Vec::new();
    let mut number = 0;
    loop {
        line.clear();
        let read = reader
            .read_until(b'\n', &mut line)
            .map_err(io_error(path))?;
        if read == 0 {
            return Ok(records);
        }
        number += 1;
        let corrupt = |reason: String| DataError::Corrupt {
            path: path.to_path_buf(),
            line: number,
            reason,
        };
        if line.last() != Some(&b'\n') {
            return Err(corrupt(
                "the last record has no end of line: the file is truncated".into(),
            ));
        }
        let text = std::str::from_utf8(&line).map_err(|e| corrupt(format!("not UTF-8: {e}")))?;
        if text.trim().is_empty() {
            return Err(corrupt("empty line".into()));
        }
        records.push(serde_json::from_str(text).map_err(|e| corrupt(e.to_string()))?);
    }
}

/// Appends records to a JSON-lines file, one flushed line at a time, so an
/// interruption loses at most the record being written.
pub struct JsonlAppender {
    file: File,
    path: PathBuf,
}

impl JsonlAppender {
    /// Open `path` for appending, first cutting off an incomplete last line
    /// left by an interrupted run; returns the appender and the complete
    /// records already there.
    pub fn resume<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<(Self, Vec<T>), DataError> {
        let mut records = Vec::new();
        if path.exists() {
            let bytes = std::fs::read(path).map_err(io_error(path))?;
            let complete = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
            if complete < bytes.len() {
                tracing::warn!(
                    file = %path.display(),
                    bytes = bytes.len() - complete,
                    "dropping an incomplete last record left by an interrupted run"
                );
                let file = std::fs::OpenOptions::new()
                    .write(true)
                    .open(path)
                    .map_err(io_error(path))?;
                file.set_len(complete as u64).map_err(io_error(path))?;
            }
            if complete > 0 {
                records = read_jsonl(path)?;
            }
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(io_error(path))?;
        Ok((
            Self {
                file,
                path: path.to_path_buf(),
            },
            records,
        ))
    }

    /// Append one record and flush it to the file.
    pub fn append<T: Serialize>(&mut self, record: &T) -> Result<(), DataError> {
        let mut line = serde_json::to_vec(record).map_err(|e| DataError::Corrupt {
            path: self.path.clone(),
            line: 0,
            reason: format!("cannot serialise a record: {e}"),
        })?;
        line.push(b'\n');
        self.file.write_all(&line).map_err(io_error(&self.path))?;
        self.file.flush().map_err(io_error(&self.path))?;
        self.file.sync_data().map_err(io_error(&self.path))
    }
}

/// The tokens the drafter is trained over: every token of the training data.
/// Training computes logits over this subset only (as FR-Spec drafts over
/// frequent tokens), which makes the output layer's cost proportional to
/// the tokens the languages use rather than to the full vocabulary; the
/// exported model scores the full vocabulary with the same (tied) rows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VocabSubset {
    /// Token id of each subset row, ascending.
    pub ids: Vec<u32>,
}

/// Marks a token outside the subset in [`VocabSubset::index`].
pub const NOT_IN_SUBSET: u32 = u32::MAX;

impl VocabSubset {
    /// The subset of tokens occurring in `sequences`, plus `always` (special
    /// tokens the chat template needs).
    pub fn from_tokens<'a>(
        sequences: impl IntoIterator<Item = &'a [u32]>,
        always: &[u32],
        vocab: usize,
    ) -> Self {
        let mut seen = vec![false; vocab];
        for &t in always {
            if let Some(s) = seen.get_mut(t as usize) {
                *s = true;
            }
        }
        for sequence in sequences {
            for &t in sequence {
                if let Some(s) = seen.get_mut(t as usize) {
                    *s = true;
                }
            }
        }
        let ids = seen
            .iter()
            .enumerate()
            .filter(|(_, &s)| s)
            .map(|(i, _)| i as u32)
            .collect();
        Self { ids }
    }

    /// Number of rows.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Whether the subset is empty.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Subset row of each token id ([`NOT_IN_SUBSET`] for the others).
    pub fn index(&self, vocab: usize) -> Vec<u32> {
        let mut index = vec![NOT_IN_SUBSET; vocab];
        for (row, &id) in self.ids.iter().enumerate() {
            if let Some(slot) = index.get_mut(id as usize) {
                *slot = row as u32;
            }
        }
        index
    }
}

/// Fixed-length training sequences with loss masks, in subset rows.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Packed {
    /// Tokens per sequence, inputs plus the last target (`len + 1`).
    pub width: usize,
    /// `width` tokens per sequence, concatenated (subset rows).
    pub tokens: Vec<u32>,
    /// `width - 1` loss weights per sequence (1 = counts), concatenated.
    pub mask: Vec<f32>,
}

impl Packed {
    /// Empty set of sequences of `len` inputs.
    pub fn new(len: usize) -> Self {
        Self {
            width: len + 1,
            ..Self::default()
        }
    }

    /// Number of sequences.
    pub fn sequences(&self) -> usize {
        self.tokens.len() / self.width.max(1)
    }

    /// Targets that count in the loss, over all sequences.
    pub fn counted_targets(&self) -> usize {
        self.mask.iter().filter(|&&m| m > 0.0).count()
    }

    /// Tokens and mask of sequence `i`.
    pub fn sequence(&self, i: usize) -> (&[u32], &[f32]) {
        let w = self.width;
        (
            &self.tokens[i * w..(i + 1) * w],
            &self.mask[i * (w - 1)..(i + 1) * (w - 1)],
        )
    }

    fn push(&mut self, tokens: &[u32], mask: &[f32]) {
        debug_assert_eq!(tokens.len(), self.width);
        debug_assert_eq!(mask.len(), self.width - 1);
        self.tokens.extend_from_slice(tokens);
        self.mask.extend_from_slice(mask);
    }

    /// Append the sequences of `other` (same width).
    pub fn extend(&mut self, other: &Packed) {
        debug_assert_eq!(self.width, other.width);
        self.tokens.extend_from_slice(&other.tokens);
        self.mask.extend_from_slice(&other.mask);
    }
}

/// Pack documents (token ids) into sequences of `len` inputs: documents are
/// joined by `separator` into one stream, cut into windows of `len + 1`
/// tokens that overlap by one (every token is a target exactly once), and a
/// last partial window is dropped. Every target counts.
pub fn pack_text<'a>(
    documents: impl IntoIterator<Item = &'a [u32]>,
    separator: u32,
    len: usize,
    index: &[u32],
) -> Packed {
    let mut packed = Packed::new(len);
    let mut window: Vec<u32> = Vec::with_capacity(len + 1);
    let ones = vec![1.0f32; len];
    let emit = |token: u32, window: &mut Vec<u32>, packed: &mut Packed| {
        window.push(index.get(token as usize).copied().unwrap_or(NOT_IN_SUBSET));
        if window.len() == len + 1 {
            packed.push(window, &ones);
            let last = window[len];
            window.clear();
            window.push(last);
        }
    };
    for document in documents {
        for &t in document {
            emit(t, &mut window, &mut packed);
        }
        emit(separator, &mut window, &mut packed);
    }
    packed
}

/// Pack distilled examples into sequences of `len` inputs, whole examples
/// only (an example is never split across sequences, so a response is
/// always seen with its prompt); the loss counts the response tokens only.
/// An example longer than a sequence keeps the end of its prompt and as much
/// of its response as fits. The rest of a sequence is padded with
/// `separator`, not counted.
pub fn pack_examples(examples: &[Example], separator: u32, len: usize, index: &[u32]) -> Packed {
    let mut packed = Packed::new(len);
    let width = len + 1;
    let mut tokens: Vec<u32> = Vec::with_capacity(width);
    // Whether each token of `tokens` is a response token (its prediction counts).
    let mut counts: Vec<bool> = Vec::with_capacity(width);
    let map = |t: u32| index.get(t as usize).copied().unwrap_or(NOT_IN_SUBSET);
    let flush = |tokens: &mut Vec<u32>, counts: &mut Vec<bool>, packed: &mut Packed| {
        if tokens.is_empty() {
            return;
        }
        let pad = map(separator);
        while tokens.len() < width {
            tokens.push(pad);
            counts.push(false);
        }
        // Target i is token i + 1.
        let mask: Vec<f32> = counts[1..]
            .iter()
            .map(|&c| f32::from(u8::from(c)))
            .collect();
        packed.push(tokens, &mask);
        tokens.clear();
        counts.clear();
    };
    for example in examples {
        if example.response.is_empty() || example.prompt.is_empty() {
            continue;
        }
        let mut prompt: &[u32] = &example.prompt;
        let mut response: &[u32] = &example.response;
        // Keep at least a few prompt tokens before the response.
        let prompt_room = width.saturating_sub(response.len()).max(width / 4);
        if prompt.len() > prompt_room {
            prompt = &prompt[prompt.len() - prompt_room..];
        }
        if prompt.len() + response.len() > width {
            response = &response[..width - prompt.len()];
        }
        if tokens.len() + prompt.len() + response.len() > width {
            flush(&mut tokens, &mut counts, &mut packed);
        }
        tokens.extend(prompt.iter().map(|&t| map(t)));
        counts.extend(std::iter::repeat_n(false, prompt.len()));
        tokens.extend(response.iter().map(|&t| map(t)));
        counts.extend(std::iter::repeat_n(true, response.len()));
    }
    flush(&mut tokens, &mut counts, &mut packed);
    packed
}

/// Which sequences make up each micro-batch: an epoch-wise shuffle that
/// depends only on the seed and the position, so a resumed run sees exactly
/// the batches an uninterrupted one would.
#[derive(Debug, Clone)]
pub struct BatchOrder {
    seed: u64,
    sequences: usize,
    cached_epoch: Option<(usize, Vec<usize>)>,
}

impl BatchOrder {
    /// Order over `sequences` sequences.
    pub fn new(seed: u64, sequences: usize) -> Self {
        Self {
            seed,
            sequences,
            cached_epoch: None,
        }
    }

    /// The sequence at global position `position` (epochs concatenated).
    pub fn sequence_at(&mut self, position: usize) -> usize {
        let n = self.sequences.max(1);
        let epoch = position / n;
        let offset = position % n;
        let stale = self.cached_epoch.as_ref().is_none_or(|(e, _)| *e != epoch);
        if stale {
            let mut order: Vec<usize> = (0..n).collect();
            let mut rng = ChaCha8Rng::seed_from_u64(
                self.seed ^ (epoch as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15),
            );
            order.shuffle(&mut rng);
            self.cached_epoch = Some((epoch, order));
        }
        self.cached_epoch
            .as_ref()
            .map_or(offset, |(_, order)| order[offset])
    }
}

/// Token counts per language, for the manifest and reports.
pub type TokenCounts = BTreeMap<String, usize>;

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(vocab: usize) -> Vec<u32> {
        (0..vocab as u32).collect()
    }

    #[test]
    fn text_packing_makes_every_token_a_target_once() {
        let docs: Vec<Vec<u32>> = vec![vec![1, 2, 3], vec![4, 5, 6, 7]];
        let packed = pack_text(docs.iter().map(|d| d.as_slice()), 0, 4, &identity(10));
        // Stream: 1 2 3 0 4 5 6 7 0 -> windows [1 2 3 0 4] [4 5 6 7 0].
        assert_eq!(packed.sequences(), 2);
        assert_eq!(packed.sequence(0).0, &[1, 2, 3, 0, 4]);
        assert_eq!(packed.sequence(1).0, &[4, 5, 6, 7, 0]);
        assert_eq!(packed.counted_targets(), 8);
    }

    #[test]
    fn example_packing_counts_only_response_tokens() {
        let examples = vec![
            Example {
                id: 0,
                kind: "translate".into(),
                temperature: 0.0,
                source: "s".into(),
                prompt: vec![10, 11, 12],
                response: vec![20, 21],
            },
            Example {
                id: 1,
                kind: "translate".into(),
                temperature: 0.0,
                source: "s".into(),
                prompt: vec![13, 14],
                response: vec![22],
            },
        ];
        let packed = pack_examples(&examples, 0, 9, &identity(30));
        assert_eq!(packed.sequences(), 1);
        let (tokens, mask) = packed.sequence(0);
        assert_eq!(tokens, &[10, 11, 12, 20, 21, 13, 14, 22, 0, 0]);
        // Targets: 11 12 20 21 13 14 22 0 0 -> counted where the target is a response token.
        assert_eq!(mask, &[0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 1.0, 0.0, 0.0]);
    }

    #[test]
    fn example_packing_never_splits_an_example() {
        let example = |id, n| Example {
            id,
            kind: "k".into(),
            temperature: 0.0,
            source: "s".into(),
            prompt: vec![1; n],
            response: vec![2; n],
        };
        let packed = pack_examples(&[example(0, 3), example(1, 3)], 0, 8, &identity(5));
        assert_eq!(packed.sequences(), 2);
        assert_eq!(packed.counted_targets(), 6);
    }

    #[test]
    fn long_examples_keep_the_prompt_end_and_the_response_start() {
        let example = Example {
            id: 0,
            kind: "k".into(),
            temperature: 0.0,
            source: "s".into(),
            prompt: (100..120).collect(),
            response: (200..210).collect(),
        };
        let packed = pack_examples(&[example], 0, 11, &identity(300));
        let (tokens, mask) = packed.sequence(0);
        // A quarter of the sequence for the prompt's end, the rest for the response's start.
        assert_eq!(&tokens[..3], &[117, 118, 119]);
        assert_eq!(&tokens[3..], &(200..209).collect::<Vec<_>>()[..]);
        assert_eq!(mask.iter().filter(|&&m| m > 0.0).count(), 9);
    }

    #[test]
    fn subset_rows_map_tokens_and_back() {
        let docs: Vec<Vec<u32>> = vec![vec![7, 3, 7], vec![9]];
        let subset = VocabSubset::from_tokens(docs.iter().map(|d| d.as_slice()), &[1], 12);
        assert_eq!(subset.ids, vec![1, 3, 7, 9]);
        let index = subset.index(12);
        assert_eq!(index[7], 2);
        assert_eq!(index[5], NOT_IN_SUBSET);
    }

    #[test]
    fn batch_order_is_a_per_epoch_permutation_independent_of_history() {
        let mut a = BatchOrder::new(3, 10);
        let first: Vec<usize> = (0..25).map(|p| a.sequence_at(p)).collect();
        let mut sorted = first[..10].to_vec();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..10).collect::<Vec<_>>());
        let mut b = BatchOrder::new(3, 10);
        assert_eq!(b.sequence_at(17), first[17]);
        assert_ne!(first[..10], first[10..20]);
    }

    #[test]
    fn truncated_and_corrupt_files_are_refused_with_their_line() {
        let dir = std::env::temp_dir().join(format!("specdec-data-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("x.jsonl");
        std::fs::write(&path, "{\"a\":1}\n{\"a\":2}").unwrap();
        let e = read_jsonl::<serde_json::Value>(&path).unwrap_err();
        assert!(
            e.to_string().contains("line 2") && e.to_string().contains("truncated"),
            "{e}"
        );
        std::fs::write(&path, "{\"a\":1}\n{\"a\":\n").unwrap();
        let e = read_jsonl::<serde_json::Value>(&path).unwrap_err();
        assert!(e.to_string().contains("line 2"), "{e}");
        // Resuming cuts the partial record and keeps the complete one.
        std::fs::write(&path, "{\"a\":1}\n{\"a\":2").unwrap();
        let (mut appender, records) = JsonlAppender::resume::<serde_json::Value>(&path).unwrap();
        assert_eq!(records.len(), 1);
        appender.append(&serde_json::json!({"a": 3})).unwrap();
        assert_eq!(read_jsonl::<serde_json::Value>(&path).unwrap().len(), 2);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
