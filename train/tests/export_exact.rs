//! Exported drafters compute in llama.cpp what they compute in training.
//!
//! A seeded random drafter (with random norms and biases, so that every
//! tensor matters, and attention sharp enough that positions matter) is
//! exported as GGUF and loaded by llama.cpp; its logits on real prompts,
//! tokenized with the target's vocabulary, are compared position by
//! position with the candle model's on the same (rounded) weights.
//!
//! Tolerances, on the largest difference and on the RMS of all differences.
//! Logits here have a standard deviation of about 4 (hidden states of RMS 1
//! against embedding rows of RMS 0.25 over 256 dimensions). In both cases
//! the candle reference uses exactly the weights stored in the file, so
//! what remains is llama.cpp's own arithmetic:
//! - F16 (max 0.25, RMS 0.03): llama.cpp's CPU matmuls round the
//!   activations to f16 before every F16 dot product, and its KV cache is
//!   f16: 2^-11 relative per rounding. At the first position (no attention
//!   mixing) that gives logit differences of RMS 0.003; sharp attention
//!   over two blocks amplifies them to RMS 0.003-0.024 per position
//!   (0.009 overall), and the largest of all 151936 x 99 differences
//!   measured 0.094 (0.106 with flash attention off): noise, with no trend
//!   over positions. The tolerances leave a factor 2.5-3 for other CPUs'
//!   kernels, while the mistakes checked in
//!   `the_comparison_detects_wrong_models` (a wrong rotary base, swapped
//!   MLP projections, query heads paired with the wrong key/value heads)
//!   differ by 18 to 31 at most and by RMS 2.8 to 5.6.
//! - Q8_0 (max 2.0, RMS 0.3): llama.cpp rounds the activations to 8-bit
//!   blocks (one scale per 32 values) before every Q8_0 dot product, about
//!   20 times the f16 rounding error here: RMS 0.05 at the first position,
//!   0.05-0.22 per position (0.11 overall), largest difference measured
//!   1.01. The mistakes above are still beyond five times these.
//!
//! Argmax: llama.cpp must pick the reference's top token wherever the
//! reference's top two logits are further apart than twice the tolerance
//! (there the difference cannot swap them), and on at least 95% (F16) or
//! 85% (Q8_0) of all positions (measured: 98 and 92 of 99).

use std::collections::{BTreeMap, HashMap};
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use candle_core::quantized::gguf_file;
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::LlamaModel;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use specdec_backend::engine::vocab::{check_compatible, VocabInfo};
use specdec_backend::models;
use specdec_train::export::{read_gguf, write_gguf, ExportError, WeightType};
use specdec_train::model::{logits, Drafter, Shape};

/// Largest tolerated |llama.cpp logit - candle logit| for F16 files.
const F16_TOLERANCE: f32 = 0.25;
/// Largest tolerated RMS of all logit differences for F16 files.
const F16_RMS_TOLERANCE: f32 = 0.03;
/// Largest tolerated |llama.cpp logit - candle logit| for Q8_0 files.
const Q8_0_TOLERANCE: f32 = 2.0;
/// Largest tolerated RMS of all logit differences for Q8_0 files.
const Q8_0_RMS_TOLERANCE: f32 = 0.3;
/// Vocabulary size of the Qwen2.5 target.
const VOCAB: usize = 151_936;

/// Real sentences in three languages and scripts.
const PROMPTS: &[&str] = &[
    "Die Verwaltung der Stadt hat beschlossen, dass die Brücke über den Fluss im nächsten Frühjahr vollständig erneuert wird.",
    "Le conseil municipal a décidé que le pont sur la rivière serait entièrement rénové au printemps prochain, malgré les critiques.",
    "市役所は、川に架かる橋を来年の春に全面的に改修することを決定しましたが、住民の意見は分かれています。",
];

fn shape() -> Shape {
    Shape {
        vocab: VOCAB,
        hidden: 256,
        layers: 2,
        heads: 4,
        kv_heads: 2,
        intermediate: 512,
        rope_theta: 1e6,
        rms_eps: 1e-6,
        context: 4096,
    }
}

fn target() -> PathBuf {
    let path = models::model_path(models::DEFAULT_TARGET_FILE);
    assert!(
        path.is_file(),
        "{} is missing: run scripts/fetch-models first",
        path.display()
    );
    path
}

/// The seeded random drafter: layer weights by GGUF name and the embedding.
struct Random {
    weights: BTreeMap<String, Tensor>,
    embedding: Tensor,
}

fn random_drafter() -> &'static Random {
    static DRAFTER: OnceLock<Random> = OnceLock::new();
    DRAFTER.get_or_init(|| {
        let shape = shape();
        let mut rng = ChaCha8Rng::seed_from_u64(20_240_611);
        // Uniform with the given mean and standard deviation.
        let mut tensor = |dims: &[usize], mean: f32, stdev: f32| {
            let half_width = stdev * 3f32.sqrt();
            let n: usize = dims.iter().product();
            let values: Vec<f32> = (0..n)
                .map(|_| mean + rng.gen_range(-half_width..half_width))
                .collect();
            Tensor::from_vec(values, dims, &Device::Cpu).unwrap()
        };
        let mut weights = BTreeMap::new();
        for (name, dims) in shape.tensor_shapes() {
            let t = if name.ends_with("norm.weight") {
                tensor(&dims, 1.0, 0.1)
            } else if name.ends_with(".bias") {
                tensor(&dims, 0.0, 0.1)
            } else if name.contains("attn_q") || name.contains("attn_k") {
                // Large enough that attention is sharp, so that positions
                // (and the rotary embedding) matter.
                tensor(&dims, 0.0, 2.0 / (dims[1] as f32).sqrt())
            } else {
                tensor(&dims, 0.0, 1.0 / (dims[1] as f32).sqrt())
            };
            weights.insert(name, t);
        }
        let embedding = tensor(&[VOCAB, shape.hidden], 0.0, 0.25);
        Random { weights, embedding }
    })
}

fn round_f16(t: &Tensor) -> Tensor {
    t.to_dtype(DType::F16)
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap()
}

fn drafter(shape: &Shape, weights: &BTreeMap<String, Tensor>) -> Drafter {
    let tensors: HashMap<String, Tensor> = weights
        .iter()
        .map(|(n, t)| (n.clone(), t.clone()))
        .collect();
    Drafter::new(
        shape,
        VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu),
    )
    .unwrap()
}

/// A fresh directory for one test's files, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "specdec-export-exact-{}-{name}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn export(dir: &Path, weight_type: WeightType) -> PathBuf {
    let random = random_drafter();
    let path = dir.join("drafter.gguf");
    let summary = write_gguf(
        &path,
        &shape(),
        &random.weights,
        &random.embedding,
        &target(),
        weight_type,
        "export-exact",
    )
    .unwrap();
    eprintln!(
        "{weight_type:?}: {} bytes, {} tensors, {} parameters",
        summary.bytes, summary.tensors, summary.parameters
    );
    assert_eq!(summary.tensors, shape().tensor_shapes().len() + 1);
    assert_eq!(summary.parameters, shape().layer_parameters() + VOCAB * 256);
    assert_eq!(summary.bytes, std::fs::metadata(&path).unwrap().len());
    assert!(!dir.join("drafter.gguf.tmp").exists());
    path
}

fn load(path: &Path, vocab_only: bool) -> LlamaModel {
    let backend = specdec_backend::engine::runtime::backend().unwrap();
    let params = LlamaModelParams::default().with_vocab_only(vocab_only);
    LlamaModel::load_from_file(backend, path, &params).unwrap()
}

/// The prompts as token ids of the target's vocabulary.
fn prompt_tokens() -> Vec<Vec<u32>> {
    let target = load(&target(), true);
    PROMPTS
        .iter()
        .map(|text| {
            let tokens = target.vocab().tokenize(text.as_bytes(), false, false);
            assert!(tokens.len() >= 20, "{text}: {} tokens", tokens.len());
            tokens.into_iter().map(|t| t.0 as u32).collect()
        })
        .collect()
}

/// llama.cpp's logits at every position of `tokens`, (positions, vocab).
fn llama_logits(model: &LlamaModel, tokens: &[u32]) -> Vec<Vec<f32>> {
    let backend = specdec_backend::engine::runtime::backend().unwrap();
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get()) as i32;
    let params = LlamaContextParams::default()
        .with_n_ctx(NonZeroU32::new(512))
        .with_n_batch(512)
        .with_n_ubatch(512)
        .with_n_threads(threads)
        .with_n_threads_batch(threads);
    let mut ctx = model.new_context(backend, params).unwrap();
    let mut batch = LlamaBatch::new(tokens.len(), 1);
    for (pos, &t) in tokens.iter().enumerate() {
        batch
            .add(
                llama_cpp_2::token::LlamaToken(t as i32),
                pos as i32,
                &[0],
                true,
            )
            .unwrap();
    }
    ctx.decode(&mut batch).unwrap();
    (0..tokens.len())
        .map(|i| ctx.get_logits_ith(i as i32).to_vec())
        .collect()
}

/// The candle model's logits at every position of `tokens`, (positions, vocab).
fn candle_logits(model: &Drafter, embedding: &Tensor, tokens: &[u32]) -> Vec<Vec<f32>> {
    let ids = Tensor::from_vec(tokens.to_vec(), (1, tokens.len()), &Device::Cpu).unwrap();
    let hidden = model.forward_hidden(embedding, &ids).unwrap();
    logits(&hidden, embedding)
        .unwrap()
        .squeeze(0)
        .unwrap()
        .to_vec2()
        .unwrap()
}

fn argmax(row: &[f32]) -> usize {
    row.iter()
        .enumerate()
        .fold((0, f32::NEG_INFINITY), |best, (i, &v)| {
            if v > best.1 {
                (i, v)
            } else {
                best
            }
        })
        .0
}

/// Gap between the largest and second-largest value.
fn top_gap(row: &[f32]) -> f32 {
    let (mut first, mut second) = (f32::NEG_INFINITY, f32::NEG_INFINITY);
    for &v in row {
        if v > first {
            second = first;
            first = v;
        } else if v > second {
            second = v;
        }
    }
    first - second
}

/// How llama.cpp's logits compare with the reference's.
#[derive(Debug, Default)]
struct Comparison {
    max_abs_diff: f32,
    positions: usize,
    argmax_agree: usize,
    /// Positions where the reference's top-two gap exceeds twice the
    /// tolerance, and how many of them llama.cpp's argmax agrees on.
    clear_positions: usize,
    clear_agree: usize,
    distinct_argmax: usize,
    logit_stdev: f32,
    /// Root mean square of all differences.
    rms_diff: f32,
}

fn compare(reference: &[Vec<Vec<f32>>], llama: &[Vec<Vec<f32>>], tolerance: f32) -> Comparison {
    let mut c = Comparison::default();
    let mut argmaxes = std::collections::BTreeSet::new();
    let (mut sum, mut sum_sq, mut diff_sq, mut n) = (0f64, 0f64, 0f64, 0f64);
    for (ref_prompt, llama_prompt) in reference.iter().zip(llama) {
        assert_eq!(ref_prompt.len(), llama_prompt.len());
        for (r, l) in ref_prompt.iter().zip(llama_prompt) {
            assert_eq!(r.len(), l.len());
            for (&a, &b) in r.iter().zip(l) {
                assert!(b.is_finite());
                c.max_abs_diff = c.max_abs_diff.max((a - b).abs());
                diff_sq += f64::from(a - b).powi(2);
                sum += f64::from(a);
                sum_sq += f64::from(a) * f64::from(a);
                n += 1.0;
            }
            c.positions += 1;
            let agree = argmax(r) == argmax(l);
            c.argmax_agree += usize::from(agree);
            if top_gap(r) > 2.0 * tolerance {
                c.clear_positions += 1;
                c.clear_agree += usize::from(agree);
            }
            argmaxes.insert(argmax(r));
        }
    }
    c.distinct_argmax = argmaxes.len();
    c.logit_stdev = ((sum_sq / n - (sum / n).powi(2)).sqrt()) as f32;
    c.rms_diff = (diff_sq / n).sqrt() as f32;
    c
}

fn assert_close(
    what: &str,
    c: &Comparison,
    tolerance: f32,
    rms_tolerance: f32,
    argmax_percent: usize,
) {
    eprintln!("{what}: {c:?} (tolerance {tolerance})");
    // The logits are non-trivial: spread out, with different winners.
    assert!(c.logit_stdev > 2.0, "{what}: logits too flat: {c:?}");
    assert!(
        c.distinct_argmax * 2 > c.positions,
        "{what}: argmax barely varies: {c:?}"
    );
    assert!(
        c.max_abs_diff < tolerance,
        "{what}: max |logit difference| {} exceeds {tolerance}",
        c.max_abs_diff
    );
    assert!(
        c.rms_diff < rms_tolerance,
        "{what}: RMS logit difference {} exceeds {rms_tolerance}",
        c.rms_diff
    );
    assert_eq!(c.clear_agree, c.clear_positions, "{what}: {c:?}");
    assert!(
        c.argmax_agree * 100 >= c.positions * argmax_percent,
        "{what}: {c:?}"
    );
}

fn reference_logits(
    shape: &Shape,
    weights: &BTreeMap<String, Tensor>,
    embedding: &Tensor,
) -> Vec<Vec<Vec<f32>>> {
    let model = drafter(shape, weights);
    prompt_tokens()
        .iter()
        .map(|tokens| candle_logits(&model, embedding, tokens))
        .collect()
}

fn llama_all(path: &Path) -> Vec<Vec<Vec<f32>>> {
    let model = load(path, false);
    prompt_tokens()
        .iter()
        .map(|tokens| llama_logits(&model, tokens))
        .collect()
}

fn max_abs(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar()
        .unwrap()
}

#[test]
fn f16_export_matches_llama_cpp() {
    let dir = TempDir::new("f16");
    let path = export(&dir.0, WeightType::F16);
    let random = random_drafter();
    let weights: BTreeMap<String, Tensor> = random
        .weights
        .iter()
        .map(|(n, t)| (n.clone(), round_f16(t)))
        .collect();
    let embedding = round_f16(&random.embedding);

    // Reading the file back gives exactly the rounded weights (norms and
    // biases are F32, so rounding through f16 must not apply to them).
    let (read_shape, read_weights, read_embedding) = read_gguf(&path).unwrap();
    assert_eq!(read_shape, shape());
    assert_eq!(max_abs(&read_embedding, &embedding), 0.0);
    for (name, t) in &read_weights {
        let expected = if t.rank() == 1 {
            &random.weights[name]
        } else {
            &weights[name]
        };
        assert_eq!(max_abs(t, expected), 0.0, "{name}");
    }

    let reference = reference_logits(&shape(), &weights, &embedding);
    let llama = llama_all(&path);
    assert_close(
        "F16",
        &compare(&reference, &llama, F16_TOLERANCE),
        F16_TOLERANCE,
        F16_RMS_TOLERANCE,
        95,
    );
}

#[test]
fn q8_0_export_matches_llama_cpp() {
    let dir = TempDir::new("q8_0");
    let path = export(&dir.0, WeightType::Q8_0);
    let (read_shape, weights, embedding) = read_gguf(&path).unwrap();
    assert_eq!(read_shape, shape());
    // Q8_0 keeps each weight within half a step (max |block| / 254, plus
    // the f16 rounding of the block's scale) of the original; a wrong
    // layout would be far off. Norms and biases stay exact.
    let random = random_drafter();
    let q8_bound = |t: &Tensor| max_abs(t, &t.zeros_like().unwrap()) * (1.0 / 254.0 + 1.0 / 2048.0);
    assert!(max_abs(&embedding, &random.embedding) <= q8_bound(&random.embedding));
    for (name, t) in &weights {
        let original = &random.weights[name];
        let bound = if t.rank() == 1 {
            0.0
        } else {
            q8_bound(original)
        };
        assert!(max_abs(t, original) <= bound, "{name}");
    }

    let reference = reference_logits(&shape(), &weights, &embedding);
    let llama = llama_all(&path);
    assert_close(
        "Q8_0",
        &compare(&reference, &llama, Q8_0_TOLERANCE),
        Q8_0_TOLERANCE,
        Q8_0_RMS_TOLERANCE,
        85,
    );
}

/// The tolerance is tight enough to catch real mistakes: references with
/// a wrong rotary base, swapped gate and up projections, or query heads
/// grouped with the wrong key/value heads all differ from llama.cpp far
/// beyond it.
#[test]
fn the_comparison_detects_wrong_models() {
    let dir = TempDir::new("mutants");
    let path = export(&dir.0, WeightType::F16);
    let random = random_drafter();
    let weights: BTreeMap<String, Tensor> = random
        .weights
        .iter()
        .map(|(n, t)| (n.clone(), round_f16(t)))
        .collect();
    let embedding = round_f16(&random.embedding);
    let llama = llama_all(&path);

    let wrong_base = Shape {
        rope_theta: 1e4,
        ..shape()
    };
    let mut swapped = weights.clone();
    for i in 0..shape().layers {
        let gate = swapped[&format!("blk.{i}.ffn_gate.weight")].clone();
        let up = swapped[&format!("blk.{i}.ffn_up.weight")].clone();
        swapped.insert(format!("blk.{i}.ffn_gate.weight"), up);
        swapped.insert(format!("blk.{i}.ffn_up.weight"), gate);
    }
    // Swapping the two key/value heads pairs each query head with the
    // other group's keys and values.
    let mut regrouped = weights.clone();
    let head_dim = shape().head_dim();
    for i in 0..shape().layers {
        for part in ["attn_k", "attn_v"] {
            for kind in ["weight", "bias"] {
                let name = format!("blk.{i}.{part}.{kind}");
                let t = &regrouped[&name];
                let t = Tensor::cat(
                    &[
                        t.narrow(0, head_dim, head_dim).unwrap(),
                        t.narrow(0, 0, head_dim).unwrap(),
                    ],
                    0,
                )
                .unwrap();
                regrouped.insert(name, t);
            }
        }
    }
    for (what, s, w) in [
        ("rotary base 1e4", wrong_base, &weights),
        ("gate and up swapped", shape(), &swapped),
        ("key/value heads swapped", shape(), &regrouped),
    ] {
        let c = compare(&reference_logits(&s, w, &embedding), &llama, F16_TOLERANCE);
        eprintln!(
            "mutant {what}: max |logit difference| {}, RMS {}",
            c.max_abs_diff, c.rms_diff
        );
        // Far beyond even the Q8_0 tolerances, by both measures.
        assert!(c.max_abs_diff > 5.0 * Q8_0_TOLERANCE, "{what}: {c:?}");
        assert!(c.rms_diff > 5.0 * Q8_0_RMS_TOLERANCE, "{what}: {c:?}");
    }
}

#[test]
fn export_refuses_an_embedding_of_another_vocabulary() {
    let dir = TempDir::new("refuse");
    let random = random_drafter();
    let path = dir.0.join("drafter.gguf");
    let short = random.embedding.narrow(0, 0, VOCAB - 1).unwrap();
    let err = write_gguf(
        &path,
        &shape(),
        &random.weights,
        &short,
        &target(),
        WeightType::F16,
        "short",
    )
    .unwrap_err();
    match err {
        ExportError::VocabularyMismatch {
            model_rows,
            target_vocab,
            ..
        } => assert_eq!((model_rows, target_vocab), (VOCAB - 1, VOCAB)),
        other => panic!("unexpected error: {other}"),
    }
    assert!(!path.exists());
    assert!(std::fs::read_dir(&dir.0).unwrap().next().is_none());
}

#[test]
fn exported_vocabulary_passes_the_engine_check() {
    let dir = TempDir::new("vocab");
    let path = export(&dir.0, WeightType::Q8_0);
    let target_info = VocabInfo::of(&load(&target(), true));
    let drafter_info = VocabInfo::of(&load(&path, true));
    assert_eq!(drafter_info.len(), VOCAB);
    assert_eq!(check_compatible(&target_info, &drafter_info), Ok(()));
    // Stronger than the engine's rules: every tokenizer entry (merges,
    // token types, chat template ...) is the target's.
    let tokenizer_metadata = |p: &Path| {
        let mut file = std::fs::File::open(p).unwrap();
        let content = gguf_file::Content::read(&mut file).unwrap();
        content
            .metadata
            .into_iter()
            .filter(|(k, _)| k.starts_with("tokenizer."))
            .map(|(k, v)| (k, format!("{v:?}")))
            .collect::<BTreeMap<_, _>>()
    };
    let ours = tokenizer_metadata(&path);
    assert!(ours.contains_key("tokenizer.chat_template"));
    assert!(ours.contains_key("tokenizer.ggml.merges"));
    assert!(ours == tokenizer_metadata(&target()));
}
