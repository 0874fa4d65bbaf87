//! The training loop: micro-batches with gradient accumulation, a masked
//! cross-entropy over the vocabulary subset, AdamW with linear warm-up and
//! cosine decay, checkpoints that a rerun resumes from exactly.
//!
//! The optimizer is one fused pass over each parameter's values in host
//! memory (decoupled weight decay, bias-corrected moments, global-norm
//! clipping), instead of a dozen tensor operations per parameter: on a CPU
//! the per-operation allocations of the latter cost more than the update
//! itself. Its moments are part of the checkpoint, and batches depend only
//! on the seed and the step, so an interrupted run that resumes ends with
//! the same weights as one that never stopped.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr_free::normal;
use serde::{Deserialize, Serialize};

use crate::data::{BatchOrder, Packed, NOT_IN_SUBSET};
use crate::model::{Drafter, Shape};
use crate::progress::Progress;

/// Name of the trainable embedding rows (the vocabulary subset) among the weights.
pub const EMBEDDING_ROWS: &str = "token_embd.subset";

/// How a run trains.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainSettings {
    /// Input tokens per sequence.
    pub seq_len: usize,
    /// Sequences per micro-batch (one forward and backward pass).
    pub micro_batch: usize,
    /// Micro-batches per optimizer step.
    pub accumulation: usize,
    /// Optimizer steps.
    pub steps: usize,
    /// Peak learning rate.
    pub learning_rate: f64,
    /// Learning rate at the end of the cosine decay.
    pub min_learning_rate: f64,
    /// Steps of linear warm-up.
    pub warmup: usize,
    /// Decoupled weight decay (matrices only; norms, biases and embeddings are not decayed).
    pub weight_decay: f64,
    /// Adam's first-moment decay.
    pub beta1: f64,
    /// Adam's second-moment decay.
    pub beta2: f64,
    /// Adam's denominator guard.
    pub eps: f64,
    /// Largest global gradient norm (0 disables clipping).
    pub grad_clip: f64,
    /// Seed of the batch order.
    pub seed: u64,
    /// Steps between checkpoints.
    pub checkpoint_every: usize,
}

impl TrainSettings {
    /// Learning rate at `step` (0-based).
    pub fn learning_rate_at(&self, step: usize) -> f64 {
        if step < self.warmup {
            return self.learning_rate * (step + 1) as f64 / self.warmup as f64;
        }
        let span = self.steps.saturating_sub(self.warmup).max(1);
        let progress = ((step - self.warmup) as f64 / span as f64).min(1.0);
        let cosine = 0.5 * (1.0 + (std::f64::consts::PI * progress).cos());
        self.min_learning_rate + (self.learning_rate - self.min_learning_rate) * cosine
    }

    /// Input tokens per optimizer step.
    pub fn tokens_per_step(&self) -> usize {
        self.seq_len * self.micro_batch * self.accumulation
    }

    fn validate(&self) -> Result<(), TrainError> {
        let problems = [
            (self.seq_len == 0, "seq_len must be positive"),
            (self.micro_batch == 0, "micro_batch must be positive"),
            (self.accumulation == 0, "accumulation must be positive"),
            (self.steps == 0, "steps must be positive"),
            (
                !(self.learning_rate > 0.0 && self.learning_rate.is_finite()),
                "learning_rate must be positive",
            ),
            (
                self.min_learning_rate < 0.0 || self.min_learning_rate > self.learning_rate,
                "min_learning_rate must lie between 0 and learning_rate",
            ),
            (
                self.checkpoint_every == 0,
                "checkpoint_every must be positive",
            ),
        ];
        match problems.iter().find(|(bad, _)| *bad) {
            Some((_, message)) => Err(TrainError::Invalid((*message).into())),
            None => Ok(()),
        }
    }
}

/// Why training stopped.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// A tensor operation failed.
    #[error("tensor operation: {0}")]
    Tensor(#[from] candle_core::Error),
    /// The loss or a gradient stopped being a finite number.
    #[error("the loss is {value} at step {step}, micro-batch {micro_batch} (sequences {sequences:?}): lower the learning rate or check the data")]
    NonFinite {
        /// The value (NaN or infinite).
        value: f32,
        /// 0-based optimizer step.
        step: usize,
        /// 0-based micro-batch of the step.
        micro_batch: usize,
        /// Indices of its sequences in the packed data.
        sequences: Vec<usize>,
    },
    /// A checkpoint cannot be read or written.
    #[error("checkpoint {path}: {reason}")]
    Checkpoint {
        /// The checkpoint directory.
        path: PathBuf,
        /// What failed.
        reason: String,
    },
    /// The settings or data cannot work.
    #[error("{0}")]
    Invalid(String),
}

/// The drafter being trained: its layers and its embedding rows.
pub struct Trainable {
    /// All trainable weights, by name (GGUF names, and [`EMBEDDING_ROWS`]).
    pub varmap: VarMap,
    /// The model.
    pub model: Drafter,
    /// Its shape.
    pub shape: Shape,
}

impl Trainable {
    /// A drafter of `shape` with seeded random layers and embedding rows `embedding_rows` (subset rows, hidden).
    pub fn new(shape: &Shape, embedding_rows: &Tensor, seed: u64) -> Result<Self, TrainError> {
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, embedding_rows.device());
        let model = Drafter::new(shape, vb)?;
        seeded_init(&varmap, shape, seed)?;
        let rows = Var::from_tensor(&embedding_rows.to_dtype(DType::F32)?)?;
        varmap
            .data()
            .lock()
            .map_err(|_| TrainError::Invalid("weights lock poisoned".into()))?
            .insert(EMBEDDING_ROWS.to_string(), rows);
        Ok(Self {
            varmap,
            model,
            shape: shape.clone(),
        })
    }

    /// The embedding rows.
    pub fn embedding(&self) -> Result<Tensor, TrainError> {
        let data = self
            .varmap
            .data()
            .lock()
            .map_err(|_| TrainError::Invalid("weights lock poisoned".into()))?;
        data.get(EMBEDDING_ROWS)
            .map(|v| v.as_tensor().clone())
            .ok_or_else(|| TrainError::Invalid("the embedding rows are missing".into()))
    }

    /// Weights by name (copies of the current values).
    pub fn weights(&self) -> Result<BTreeMap<String, Tensor>, TrainError> {
        let data = self
            .varmap
            .data()
            .lock()
            .map_err(|_| TrainError::Invalid("weights lock poisoned".into()))?;
        let mut weights = BTreeMap::new();
        for (name, var) in data.iter() {
            weights.insert(name.clone(), var.as_tensor().copy()?);
        }
        Ok(weights)
    }

    /// Save every weight to a safetensors file.
    pub fn save(&self, path: &Path) -> Result<(), TrainError> {
        self.varmap.save(path).map_err(|e| TrainError::Checkpoint {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })
    }

    /// Load every weight from a safetensors file written by [`Trainable::save`].
    pub fn load(&mut self, path: &Path) -> Result<(), TrainError> {
        self.varmap.load(path).map_err(|e| TrainError::Checkpoint {
            path: path.to_path_buf(),
            reason: format!("{e} (written for another model shape or vocabulary subset?)"),
        })
    }

    fn vars(&self) -> Result<Vec<(String, Var)>, TrainError> {
        let data = self
            .varmap
            .data()
            .lock()
            .map_err(|_| TrainError::Invalid("weights lock poisoned".into()))?;
        let mut vars: Vec<(String, Var)> =
            data.iter().map(|(n, v)| (n.clone(), v.clone())).collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(vars)
    }
}

/// Seeded initialisation (candle's own random initialisers on the CPU are
/// not seedable): norms 1, biases 0, matrices N(0, 0.02), the projections
/// back into the residual stream scaled down by sqrt(2 * layers) (GPT-2).
fn seeded_init(varmap: &VarMap, shape: &Shape, seed: u64) -> Result<(), TrainError> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let data = varmap
        .data()
        .lock()
        .map_err(|_| TrainError::Invalid("weights lock poisoned".into()))?;
    let mut names: Vec<&String> = data.keys().collect();
    names.sort();
    for name in names {
        let Some(var) = data.get(name) else { continue };
        let dims = var.as_tensor().dims().to_vec();
        let n: usize = dims.iter().product();
        let values: Vec<f32> = if name.ends_with("norm.weight") {
            vec![1.0; n]
        } else if name.ends_with(".bias") {
            vec![0.0; n]
        } else {
            let std = if name.contains("attn_output") || name.contains("ffn_down") {
                0.02 / (2.0 * shape.layers as f64).sqrt()
            } else {
                0.02
            };
            (0..n).map(|_| (normal(&mut rng) * std) as f32).collect()
        };
        var.set(&Tensor::from_vec(values, dims, var.as_tensor().device())?)?;
    }
    Ok(())
}

/// What one optimizer step reports.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StepLog {
    /// 1-based step.
    pub step: usize,
    /// Mean loss per counted target (nats).
    pub loss: f64,
    /// Learning rate used.
    pub learning_rate: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// Input tokens per second in this step.
    pub tokens_per_second: f64,
    /// Seconds of this step.
    pub seconds: f64,
}

/// What a finished run reports.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TrainReport {
    /// Steps done (in all sessions of the run).
    pub steps: usize,
    /// Mean loss of the last tenth of the steps run in this session.
    pub final_loss: f64,
    /// Input tokens per second over this session.
    pub tokens_per_second: f64,
    /// Seconds per step over this session.
    pub seconds_per_step: f64,
    /// Input tokens per step.
    pub tokens_per_step: usize,
    /// Whether this session resumed from a checkpoint.
    pub resumed_from: Option<usize>,
}

/// Adam's moments, per parameter, in host memory.
#[derive(Default)]
struct Moments {
    first: BTreeMap<String, Vec<f32>>,
    second: BTreeMap<String, Vec<f32>>,
}

/// What a checkpoint's `state.json` holds.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct CheckpointState {
    step: usize,
    settings: TrainSettings,
    shape: Shape,
    /// Identifies the data: sequences and a checksum of their tokens.
    data: DataFingerprint,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct DataFingerprint {
    sequences: usize,
    checksum: u64,
}

impl DataFingerprint {
    fn of(packed: &Packed) -> Self {
        let checksum = packed
            .tokens
            .iter()
            .fold(0xcbf2_9ce4_8422_2325u64, |h, &t| {
                (h ^ u64::from(t)).wrapping_mul(0x100_0000_01b3)
            });
        Self {
            sequences: packed.sequences(),
            checksum,
        }
    }
}

/// Train `trainable` on `data`, checkpointing into `dir` and resuming from
/// the checkpoint there if one matches these settings and data; with
/// `stop_after`, stop (checkpointed) after that many steps, to be resumed later.
pub fn train(
    trainable: &mut Trainable,
    data: &Packed,
    settings: &TrainSettings,
    dir: &Path,
    label: &str,
    stop_after: Option<usize>,
) -> Result<TrainReport, TrainError> {
    settings.validate()?;
    let last_step = stop_after.map_or(settings.steps, |s| s.min(settings.steps));
    if data.width != settings.seq_len + 1 {
        return Err(TrainError::Invalid(format!(
            "the data is packed in sequences of {} tokens, the settings want {}",
            data.width.saturating_sub(1),
            settings.seq_len
        )));
    }
    if data.sequences() == 0 || data.counted_targets() == 0 {
        return Err(TrainError::Invalid(format!(
            "{label}: no training data (no sequence with a counted target)"
        )));
    }
    if let Some(position) = data.tokens.iter().position(|&t| t == NOT_IN_SUBSET) {
        return Err(TrainError::Invalid(format!(
            "{label}: sequence {} holds a token outside the vocabulary subset the model was built with; rebuild it with this data",
            position / data.width
        )));
    }
    std::fs::create_dir_all(dir).map_err(|e| checkpoint_error(dir, e))?;
    let fingerprint = DataFingerprint::of(data);
    let mut moments = Moments::default();
    let mut step = 0;
    let mut resumed_from = None;
    if let Some(state) = load_checkpoint(dir, trainable, &mut moments)? {
        if state.settings != *settings
            || state.shape != trainable.shape
            || state.data != fingerprint
        {
            return Err(TrainError::Checkpoint {
                path: dir.join("checkpoint"),
                reason: "it was made with other settings, shape or data; remove the directory to start over".into(),
            });
        }
        step = state.step;
        resumed_from = Some(step);
        tracing::info!(label, step, "resuming from the checkpoint");
    }
    let vars = trainable.vars()?;
    let device = trainable.embedding()?.device().clone();
    let mut order = BatchOrder::new(settings.seed, data.sequences());
    let mut progress = Progress::new(label, settings.steps as u64, step as u64);
    let session_start = Instant::now();
    let session_first_step = step;
    let mut recent_losses = Vec::new();
    let mut log = Vec::new();
    while step < last_step {
        let started = Instant::now();
        // Sequences of each micro-batch of this step.
        let batches: Vec<Vec<usize>> = (0..settings.accumulation)
            .map(|m| {
                (0..settings.micro_batch)
                    .map(|j| {
                        order.sequence_at(
                            (step * settings.accumulation + m) * settings.micro_batch + j,
                        )
                    })
                    .collect()
            })
            .collect();
        let counted: f32 = batches
            .iter()
            .flatten()
            .map(|&s| data.sequence(s).1.iter().sum::<f32>())
            .sum();
        let mut gradients: BTreeMap<String, Vec<f32>> = BTreeMap::new();
        let mut loss_total = 0.0f64;
        for (m, sequences) in batches.iter().enumerate() {
            let Some(loss_sum) = micro_batch_loss(trainable, data, sequences, &device)? else {
                continue;
            };
            let value = loss_sum.to_scalar::<f32>()?;
            if !value.is_finite() {
                return Err(TrainError::NonFinite {
                    value,
                    step,
                    micro_batch: m,
                    sequences: sequences.clone(),
                });
            }
            loss_total += f64::from(value);
            let grads = (loss_sum / f64::from(counted.max(1.0)))?.backward()?;
            for (name, var) in &vars {
                if let Some(g) = grads.get(var.as_tensor()) {
                    let g: Vec<f32> = g.flatten_all()?.to_vec1()?;
                    match gradients.get_mut(name) {
                        Some(sum) => sum.iter_mut().zip(&g).for_each(|(s, x)| *s += x),
                        None => {
                            gradients.insert(name.clone(), g);
                        }
                    }
                }
            }
        }
        let grad_norm = gradients
            .values()
            .flat_map(|g| g.iter())
            .map(|&x| f64::from(x) * f64::from(x))
            .sum::<f64>()
            .sqrt();
        if !grad_norm.is_finite() {
            return Err(TrainError::NonFinite {
                value: grad_norm as f32,
                step,
                micro_batch: settings.accumulation - 1,
                sequences: batches.concat(),
            });
        }
        let learning_rate = settings.learning_rate_at(step);
        let clip = if settings.grad_clip > 0.0 && grad_norm > settings.grad_clip {
            settings.grad_clip / grad_norm
        } else {
            1.0
        };
        adamw_step(
            &vars,
            &gradients,
            &mut moments,
            settings,
            step + 1,
            learning_rate,
            clip,
        )?;
        step += 1;
        let loss = loss_total / f64::from(counted.max(1.0));
        let seconds = started.elapsed().as_secs_f64();
        let entry = StepLog {
            step,
            loss,
            learning_rate,
            grad_norm,
            tokens_per_second: settings.tokens_per_step() as f64 / seconds.max(1e-9),
            seconds,
        };
        recent_losses.push(loss);
        progress.update(
            step as u64,
            &format!(
                "loss {loss:.3}, {:.0} tokens/s, {seconds:.2} s/step",
                entry.tokens_per_second
            ),
        );
        log.push(entry);
        if step % settings.checkpoint_every == 0 || step == last_step {
            save_checkpoint(
                dir,
                trainable,
                &moments,
                &CheckpointState {
                    step,
                    settings: settings.clone(),
                    shape: trainable.shape.clone(),
                    data: fingerprint.clone(),
                },
            )?;
            append_log(dir, &log)?;
            log.clear();
        }
    }
    progress.finish();
    let session_steps = step - session_first_step;
    let elapsed = session_start.elapsed().as_secs_f64();
    let tail = (recent_losses.len() / 10).max(1);
    let final_loss = if recent_losses.is_empty() {
        f64::NAN
    } else {
        recent_losses[recent_losses.len().saturating_sub(tail)..]
            .iter()
            .sum::<f64>()
            / tail.min(recent_losses.len()) as f64
    };
    Ok(TrainReport {
        steps: step,
        final_loss,
        tokens_per_second: (session_steps * settings.tokens_per_step()) as f64 / elapsed.max(1e-9),
        seconds_per_step: elapsed / session_steps.max(1) as f64,
        tokens_per_step: settings.tokens_per_step(),
        resumed_from,
    })
}

/// Summed negative log-likelihood of the counted targets of `sequences`, or
/// `None` when none counts. Logits are computed only where a target counts:
/// a distilled example's prompt costs a forward pass through the layers but
/// nothing in the output layer.
fn micro_batch_loss(
    trainable: &Trainable,
    data: &Packed,
    sequences: &[usize],
    device: &Device,
) -> Result<Option<Tensor>, TrainError> {
    let len = data.width - 1;
    let mut inputs = Vec::with_capacity(sequences.len() * len);
    let mut targets = Vec::new();
    let mut positions = Vec::new();
    for (b, &s) in sequences.iter().enumerate() {
        let (tokens, mask) = data.sequence(s);
        inputs.extend_from_slice(&tokens[..len]);
        for (i, &m) in mask.iter().enumerate() {
            if m > 0.0 {
                targets.push(tokens[i + 1]);
                positions.push((b * len + i) as u32);
            }
        }
    }
    if targets.is_empty() {
        return Ok(None);
    }
    let embedding = trainable.embedding()?;
    let inputs = Tensor::from_vec(inputs, (sequences.len(), len), device)?;
    let hidden = trainable.model.forward_hidden(&embedding, &inputs)?;
    let hidden = hidden.reshape((sequences.len() * len, trainable.shape.hidden))?;
    let counted = targets.len();
    let positions = Tensor::from_vec(positions, counted, device)?;
    let hidden = hidden.index_select(&positions, 0)?;
    let logits = hidden.matmul(&embedding.t()?)?;
    Ok(Some(
        crate::loss::cross_entropy(&logits, &targets)?.sum_all()?,
    ))
}

/// One AdamW update of every parameter with a gradient.
fn adamw_step(
    vars: &[(String, Var)],
    gradients: &BTreeMap<String, Vec<f32>>,
    moments: &mut Moments,
    settings: &TrainSettings,
    t: usize,
    learning_rate: f64,
    clip: f64,
) -> Result<(), TrainError> {
    let (b1, b2) = (settings.beta1, settings.beta2);
    let correction1 = 1.0 - b1.powi(t as i32);
    let correction2 = 1.0 - b2.powi(t as i32);
    for (name, var) in vars {
        let Some(gradient) = gradients.get(name) else {
            continue;
        };
        let tensor = var.as_tensor();
        let mut values: Vec<f32> = tensor.flatten_all()?.to_vec1()?;
        let first = moments
            .first
            .entry(name.clone())
            .or_insert_with(|| vec![0.0; values.len()]);
        let second = moments
            .second
            .entry(name.clone())
            .or_insert_with(|| vec![0.0; values.len()]);
        let decay = if decays(name) {
            settings.weight_decay
        } else {
            0.0
        };
        let (b1f, b2f) = (b1 as f32, b2 as f32);
        let (lr, eps, clip, decay) = (
            learning_rate as f32,
            settings.eps as f32,
            clip as f32,
            decay as f32,
        );
        let (c1, c2) = (correction1 as f32, correction2 as f32);
        for i in 0..values.len() {
            let g = gradient[i] * clip;
            first[i] = b1f * first[i] + (1.0 - b1f) * g;
            second[i] = b2f * second[i] + (1.0 - b2f) * g * g;
            let update = (first[i] / c1) / ((second[i] / c2).sqrt() + eps);
            values[i] -= lr * (update + decay * values[i]);
        }
        var.set(&Tensor::from_vec(values, tensor.dims(), tensor.device())?)?;
    }
    Ok(())
}

/// Whether weight decay applies: matrices of the layers, not norms, biases or embeddings.
fn decays(name: &str) -> bool {
    name.ends_with(".weight") && !name.contains("norm") && name != EMBEDDING_ROWS
}

fn checkpoint_error(path: &Path, e: impl std::fmt::Display) -> TrainError {
    TrainError::Checkpoint {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

fn save_checkpoint(
    dir: &Path,
    trainable: &Trainable,
    moments: &Moments,
    state: &CheckpointState,
) -> Result<(), TrainError> {
    let tmp = dir.join("checkpoint.tmp");
    let current = dir.join("checkpoint");
    let old = dir.join("checkpoint.old");
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| checkpoint_error(&tmp, e))?;
    }
    std::fs::create_dir_all(&tmp).map_err(|e| checkpoint_error(&tmp, e))?;
    trainable.save(&tmp.join("weights.safetensors"))?;
    let mut tensors = BTreeMap::new();
    for (kind, map) in [("first", &moments.first), ("second", &moments.second)] {
        for (name, values) in map {
            tensors.insert(
                format!("{kind}/{name}"),
                Tensor::from_slice(values, values.len(), &Device::Cpu)?,
            );
        }
    }
    let optimizer = tmp.join("optimizer.safetensors");
    candle_core::safetensors::save(&tensors.into_iter().collect(), &optimizer)
        .map_err(|e| checkpoint_error(&optimizer, e))?;
    let json = serde_json::to_vec_pretty(state).map_err(|e| checkpoint_error(&tmp, e))?;
    std::fs::write(tmp.join("state.json"), json).map_err(|e| checkpoint_error(&tmp, e))?;
    if current.exists() {
        if old.exists() {
            std::fs::remove_dir_all(&old).map_err(|e| checkpoint_error(&old, e))?;
        }
        std::fs::rename(&current, &old).map_err(|e| checkpoint_error(&current, e))?;
    }
    std::fs::rename(&tmp, &current).map_err(|e| checkpoint_error(&current, e))?;
    if old.exists() {
        std::fs::remove_dir_all(&old).map_err(|e| checkpoint_error(&old, e))?;
    }
    Ok(())
}

fn load_checkpoint(
    dir: &Path,
    trainable: &mut Trainable,
    moments: &mut Moments,
) -> Result<Option<CheckpointState>, TrainError> {
    // An interruption between the two renames of a save leaves the previous checkpoint as `.old`.
    let path = [dir.join("checkpoint"), dir.join("checkpoint.old")]
        .into_iter()
        .find(|p| p.join("state.json").is_file());
    let Some(path) = path else {
        return Ok(None);
    };
    let text = std::fs::read(path.join("state.json")).map_err(|e| checkpoint_error(&path, e))?;
    let state: CheckpointState = serde_json::from_slice(&text)
        .map_err(|e| checkpoint_error(&path, format!("state.json: {e}")))?;
    trainable.load(&path.join("weights.safetensors"))?;
    let optimizer = path.join("optimizer.safetensors");
    let tensors = candle_core::safetensors::load(&optimizer, &Device::Cpu)
        .map_err(|e| checkpoint_error(&optimizer, e))?;
    for (key, tensor) in tensors {
        let values: Vec<f32> = tensor.to_vec1()?;
        match key.split_once('/') {
            Some(("first", name)) => {
                moments.first.insert(name.to_string(), values);
            }
            Some(("second", name)) => {
                moments.second.insert(name.to_string(), values);
            }
            _ => {
                return Err(checkpoint_error(
                    &optimizer,
                    format!("unexpected tensor {key}"),
                ))
            }
        }
    }
    Ok(Some(state))
}

fn append_log(dir: &Path, entries: &[StepLog]) -> Result<(), TrainError> {
    use std::io::Write;
    let path = dir.join("log.jsonl");
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .map_err(|e| checkpoint_error(&path, e))?;
    for entry in entries {
        let line = serde_json::to_string(entry).map_err(|e| checkpoint_error(&path, e))?;
        writeln!(file, "{line}").map_err(|e| checkpoint_error(&path, e))?;
    }
    Ok(())
}

/// Standard normal samples from a seeded generator (Box–Muller), so that
/// initialisation depends on nothing but the seed.
mod rand_distr_free {
    use rand::Rng;

    /// One N(0, 1) sample.
    pub fn normal(rng: &mut impl Rng) -> f64 {
        let u1: f64 = rng.gen_range(f64::MIN_POSITIVE..1.0);
        let u2: f64 = rng.gen();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::{pack_text, VocabSubset};

    fn tiny_shape(vocab: usize) -> Shape {
        Shape {
            vocab,
            hidden: 16,
            layers: 1,
            heads: 2,
            kv_heads: 1,
            intermediate: 32,
            rope_theta: 10000.0,
            rms_eps: 1e-6,
            context: 64,
        }
    }

    fn settings(steps: usize) -> TrainSettings {
        TrainSettings {
            seq_len: 8,
            micro_batch: 2,
            accumulation: 2,
            steps,
            learning_rate: 1e-2,
            min_learning_rate: 1e-3,
            warmup: 2,
            weight_decay: 0.01,
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            grad_clip: 1.0,
            seed: 7,
            checkpoint_every: 2,
        }
    }

    fn data() -> (Packed, usize) {
        let docs: Vec<Vec<u32>> = (0..12u32)
            .map(|d| (0..9u32).map(|i| (d * 3 + i * 5) % 20 + 1).collect())
            .collect();
        let subset = VocabSubset::from_tokens(docs.iter().map(|d| d.as_slice()), &[0], 24);
        let index = subset.index(24);
        (
            pack_text(docs.iter().map(|d| d.as_slice()), 0, 8, &index),
            subset.len(),
        )
    }

    fn fresh(rows: usize) -> Trainable {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let values: Vec<f32> = (0..rows * 16)
            .map(|_| (normal(&mut rng) * 0.25) as f32)
            .collect();
        let embedding = Tensor::from_vec(values, (rows, 16), &Device::Cpu).unwrap();
        Trainable::new(&tiny_shape(24), &embedding, 3).unwrap()
    }

    #[test]
    fn schedule_warms_up_then_decays_to_the_minimum() {
        let s = settings(10);
        assert!((s.learning_rate_at(0) - 5e-3).abs() < 1e-12);
        assert!((s.learning_rate_at(1) - 1e-2).abs() < 1e-12);
        assert!(s.learning_rate_at(5) < 1e-2 && s.learning_rate_at(5) > 1e-3);
        assert!((s.learning_rate_at(10) - 1e-3).abs() < 1e-12);
    }

    #[test]
    fn training_lowers_the_loss() {
        let (packed, rows) = data();
        let dir = std::env::temp_dir().join(format!("specdec-train-loss-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut t = fresh(rows);
        let first = train(&mut t, &packed, &settings(1), &dir.join("a"), "test", None).unwrap();
        let mut t = fresh(rows);
        let later = train(&mut t, &packed, &settings(30), &dir.join("b"), "test", None).unwrap();
        assert!(
            later.final_loss < first.final_loss * 0.8,
            "{} -> {}",
            first.final_loss,
            later.final_loss
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_resumed_run_ends_with_the_weights_of_an_uninterrupted_one() {
        let (packed, rows) = data();
        let dir = std::env::temp_dir().join(format!("specdec-train-resume-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut straight = fresh(rows);
        train(
            &mut straight,
            &packed,
            &settings(6),
            &dir.join("straight"),
            "test",
            None,
        )
        .unwrap();

        // Stopped after step 3 (between checkpoints, as an interruption
        // would), then resumed by a new process with the same settings.
        let mut stopped = fresh(rows);
        let report = train(
            &mut stopped,
            &packed,
            &settings(6),
            &dir.join("resumed"),
            "test",
            Some(3),
        )
        .unwrap();
        assert_eq!(report.steps, 3);
        let mut resumed = fresh(rows);
        let report = train(
            &mut resumed,
            &packed,
            &settings(6),
            &dir.join("resumed"),
            "test",
            None,
        )
        .unwrap();
        assert_eq!(report.resumed_from, Some(3));
        assert_eq!(report.steps, 6);
        let a = straight.weights().unwrap();
        let b = resumed.weights().unwrap();
        assert_eq!(a.len(), b.len());
        for (name, x) in &a {
            let x: Vec<f32> = x.flatten_all().unwrap().to_vec1().unwrap();
            let y: Vec<f32> = b[name].flatten_all().unwrap().to_vec1().unwrap();
            assert_eq!(x, y, "{name} differs");
        }
        // Other settings are refused rather than silently mixed.
        let mut other = fresh(rows);
        let e = train(
            &mut other,
            &packed,
            &settings(8),
            &dir.join("resumed"),
            "test",
            None,
        )
        .unwrap_err();
        assert!(e.to_string().contains("other settings"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_non_finite_loss_stops_with_the_step_and_batch() {
        let (packed, rows) = data();
        let dir = std::env::temp_dir().join(format!("specdec-train-nan-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut t = fresh(rows);
        let mut s = settings(3);
        s.learning_rate = 1e30;
        s.min_learning_rate = 1e30;
        s.grad_clip = 0.0;
        let e = train(&mut t, &packed, &s, &dir, "test", None).unwrap_err();
        assert!(matches!(e, TrainError::NonFinite { .. }), "{e}");
        assert!(
            e.to_string().contains("step") && e.to_string().contains("sequences"),
            "{e}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
