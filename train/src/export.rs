//! GGUF files of trained drafters that llama.cpp and the engine load.
//!
//! A drafter is written as a plain `qwen2` model with tied embeddings (no
//! `output.weight`: llama.cpp's qwen2 loader then uses `token_embd.weight`
//! as the output projection), and with every `tokenizer.*` metadata entry
//! of the target copied unchanged, so both the engine's vocabulary check and
//! llama.cpp's speculative-decoding check see the target's own vocabulary.
//!
//! candle's GGUF writer reverses dimensions, so a candle (out, in) matrix is
//! stored with `ne = [in, out]`: exactly llama.cpp's layout for
//! `attn_q.weight` and `token_embd.weight` (`[hidden, vocab]`).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};

use crate::model::Shape;

/// GGUF name of the token embedding (also the tied output projection).
pub const EMBEDDING_NAME: &str = "token_embd.weight";

/// Prefix of the metadata keys copied verbatim from the target.
pub const TOKENIZER_PREFIX: &str = "tokenizer.";

/// The metadata key listing the target's tokens.
pub const TOKENS_KEY: &str = "tokenizer.ggml.tokens";

/// Tensor data alignment (GGUF's default, which candle's writer uses).
const ALIGNMENT: u32 = 32;

/// llama.cpp's `LLAMA_FTYPE_MOSTLY_F16`.
const FILE_TYPE_F16: u32 = 1;
/// llama.cpp's `LLAMA_FTYPE_MOSTLY_Q8_0`.
const FILE_TYPE_Q8_0: u32 = 7;
/// ggml's quantization format version, recorded in quantized files.
const QUANTIZATION_VERSION: u32 = 2;

/// Storage type of the exported weight matrices. Norms and biases are
/// always F32; Q8_0 applies only to matrices whose rows are a multiple of
/// 32 long (the others stay F16).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum,
)]
pub enum WeightType {
    /// IEEE half precision: rounding only, the default for exact export.
    #[serde(rename = "f16")]
    #[value(name = "f16")]
    F16,
    /// ggml's 8-bit blocks of 32 with one f16 scale each (about half the
    /// size of F16, at some accuracy).
    #[serde(rename = "q8_0")]
    #[value(name = "q8_0")]
    Q8_0,
}

impl WeightType {
    /// llama.cpp's `general.file_type` for a file of this weight type.
    pub fn file_type(self) -> u32 {
        match self {
            Self::F16 => FILE_TYPE_F16,
            Self::Q8_0 => FILE_TYPE_Q8_0,
        }
    }

    /// The storage type of a tensor with these (candle) dimensions.
    fn storage_for(self, dims: &[usize]) -> GgmlDType {
        match (self, dims) {
            (_, [_]) => GgmlDType::F32,
            (Self::Q8_0, [.., row]) if row.is_multiple_of(GgmlDType::Q8_0.block_size()) => {
                GgmlDType::Q8_0
            }
            _ => GgmlDType::F16,
        }
    }
}

/// Why a drafter cannot be exported or read back.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// A file could not be read, written, synced or renamed.
    #[error("{path}: {source}")]
    Io {
        /// The file concerned.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A GGUF file could not be parsed or written.
    #[error("GGUF: {0}")]
    Gguf(String),
    /// A tensor operation failed (conversion, quantization).
    #[error("tensor: {0}")]
    Tensor(#[from] candle_core::Error),
    /// The drafter's shape is inconsistent.
    #[error("invalid drafter shape: {0}")]
    InvalidShape(String),
    /// The embedding does not have one row per token of the target.
    #[error(
        "the embedding has {model_rows} rows but the target {target} has {target_vocab} tokens"
    )]
    VocabularyMismatch {
        /// Rows of the embedding passed in.
        model_rows: usize,
        /// Tokens in the target's `tokenizer.ggml.tokens`.
        target_vocab: usize,
        /// The target GGUF.
        target: PathBuf,
    },
    /// A required metadata entry is missing or has the wrong type.
    #[error("{path}: metadata {key}: {reason}")]
    Metadata {
        /// The GGUF file.
        path: PathBuf,
        /// The key concerned.
        key: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A layer tensor the shape requires is missing.
    #[error("tensor {0} is missing")]
    MissingTensor(String),
    /// A tensor that is no part of the drafter was given or found.
    #[error("tensor {0} is no part of a drafter")]
    UnexpectedTensor(String),
    /// A tensor's dimensions disagree with the shape.
    #[error("tensor {name} has dimensions {found:?}, expected {expected:?}")]
    TensorShape {
        /// The tensor's GGUF name.
        name: String,
        /// Dimensions the shape requires (candle order).
        expected: Vec<usize>,
        /// Dimensions found.
        found: Vec<usize>,
    },
}

/// What [`write_gguf`] wrote.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ExportSummary {
    /// The GGUF file.
    pub path: PathBuf,
    /// Its size in bytes.
    pub bytes: u64,
    /// Number of tensors in it.
    pub tensors: usize,
    /// Number of parameters (elements of all tensors, embedding included).
    pub parameters: usize,
}

/// Write the drafter as a qwen2 GGUF at `path`, atomically: the file is
/// written as `path.tmp` beside it, synced, then renamed, so `path` is
/// never a partial file.
///
/// `weights` holds the layer tensors by GGUF name (see
/// [`Shape::tensor_shapes`]); `embedding` is the full (vocab, hidden) token
/// embedding, stored tied; every `tokenizer.*` metadata entry of
/// `target_gguf` is copied unchanged. Refuses an embedding whose row count
/// differs from the target's number of tokens, and weights missing,
/// superfluous or of the wrong dimensions.
pub fn write_gguf(
    path: &Path,
    shape: &Shape,
    weights: &BTreeMap<String, Tensor>,
    embedding: &Tensor,
    target_gguf: &Path,
    weight_type: WeightType,
    name: &str,
) -> Result<ExportSummary, ExportError> {
    shape.validate().map_err(ExportError::InvalidShape)?;
    let target = read_content(target_gguf)?;
    let target_vocab = match target.metadata.get(TOKENS_KEY) {
        Some(Value::Array(tokens)) => tokens.len(),
        other => {
            return Err(ExportError::Metadata {
                path: target_gguf.to_path_buf(),
                key: TOKENS_KEY.into(),
                reason: match other {
                    None => "missing".into(),
                    Some(_) => "not an array".into(),
                },
            })
        }
    };
    let model_rows = embedding.dims().first().copied().unwrap_or(0);
    if model_rows != target_vocab {
        return Err(ExportError::VocabularyMismatch {
            model_rows,
            target_vocab,
            target: target_gguf.to_path_buf(),
        });
    }
    check_dims(
        EMBEDDING_NAME,
        embedding.dims(),
        &[shape.vocab, shape.hidden],
    )?;
    check_weights(shape, weights.iter().map(|(n, t)| (n.as_str(), t.dims())))?;

    let mut tensors: Vec<(String, QTensor)> = Vec::with_capacity(weights.len() + 1);
    let mut parameters = 0;
    let mut add = |name: &str, tensor: &Tensor| -> Result<(), ExportError> {
        let tensor = tensor.to_device(&Device::Cpu)?.to_dtype(DType::F32)?;
        parameters += tensor.elem_count();
        let storage = weight_type.storage_for(tensor.dims());
        tensors.push((name.to_string(), QTensor::quantize(&tensor, storage)?));
        Ok(())
    };
    add(EMBEDDING_NAME, embedding)?;
    // Layer order (blk.0 before blk.1 ...), as llama.cpp's own converters write.
    for (tensor_name, _) in shape.tensor_shapes() {
        let tensor = weights
            .get(&tensor_name)
            .ok_or_else(|| ExportError::MissingTensor(tensor_name.clone()))?;
        add(&tensor_name, tensor)?;
    }

    let metadata = metadata(shape, weight_type, name, target.metadata);
    let metadata_refs: Vec<(&str, &Value)> =
        metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let tensor_refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let bytes = write_atomically(path, |writer| {
        gguf_file::write(writer, &metadata_refs, &tensor_refs)
            .map_err(|e| ExportError::Gguf(e.to_string()))
    })?;
    Ok(ExportSummary {
        path: path.to_path_buf(),
        bytes,
        tensors: tensors.len(),
        parameters,
    })
}

/// Read a drafter written by [`write_gguf`]: its shape, its layer tensors
/// by GGUF name and its embedding, dequantized to f32 on the CPU.
pub fn read_gguf(path: &Path) -> Result<(Shape, BTreeMap<String, Tensor>, Tensor), ExportError> {
    let file = File::open(path).map_err(|source| ExportError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let mut reader = BufReader::new(file);
    let content = gguf_file::Content::read(&mut reader).map_err(|e| gguf_error(path, e))?;
    let meta = |key: &str| {
        content
            .metadata
            .get(key)
            .ok_or_else(|| ExportError::Metadata {
                path: path.to_path_buf(),
                key: key.into(),
                reason: "missing".into(),
            })
    };
    let bad = |key: &str, e: candle_core::Error| ExportError::Metadata {
        path: path.to_path_buf(),
        key: key.into(),
        reason: e.to_string(),
    };
    let architecture = meta("general.architecture")?
        .to_string()
        .map_err(|e| bad("general.architecture", e))?;
    if architecture != "qwen2" {
        return Err(ExportError::Metadata {
            path: path.to_path_buf(),
            key: "general.architecture".into(),
            reason: format!("{architecture:?}, not \"qwen2\""),
        });
    }
    let count = |key: &str| -> Result<usize, ExportError> {
        let value = meta(key)?;
        let value = match value {
            Value::U64(v) => *v,
            other => u64::from(other.to_u32().map_err(|e| bad(key, e))?),
        };
        usize::try_from(value).map_err(|e| ExportError::Metadata {
            path: path.to_path_buf(),
            key: key.into(),
            reason: e.to_string(),
        })
    };
    let float = |key: &str| -> Result<f64, ExportError> {
        match meta(key)? {
            Value::F64(v) => Ok(*v),
            // GGUF stores these as f32; the shortest decimal that rounds to
            // the stored value is the one written (1e-6, not
            // 9.999999974752427e-7), so shapes survive a round trip.
            other => {
                let value = other.to_f32().map_err(|e| bad(key, e))?;
                Ok(value.to_string().parse::<f64>().unwrap_or(f64::from(value)))
            }
        }
    };
    let embedding_info = content
        .tensor_infos
        .get(EMBEDDING_NAME)
        .ok_or_else(|| ExportError::MissingTensor(EMBEDDING_NAME.into()))?;
    let shape = Shape {
        vocab: embedding_info.shape.dims().first().copied().unwrap_or(0),
        hidden: count("qwen2.embedding_length")?,
        layers: count("qwen2.block_count")?,
        heads: count("qwen2.attention.head_count")?,
        kv_heads: count("qwen2.attention.head_count_kv")?,
        intermediate: count("qwen2.feed_forward_length")?,
        rope_theta: float("qwen2.rope.freq_base")?,
        rms_eps: float("qwen2.attention.layer_norm_rms_epsilon")?,
        context: count("qwen2.context_length")?,
    };
    shape.validate().map_err(ExportError::InvalidShape)?;
    check_dims(
        EMBEDDING_NAME,
        embedding_info.shape.dims(),
        &[shape.vocab, shape.hidden],
    )?;
    check_weights(
        &shape,
        content
            .tensor_infos
            .iter()
            .filter(|(n, _)| n.as_str() != EMBEDDING_NAME)
            .map(|(n, info)| (n.as_str(), info.shape.dims())),
    )?;

    let mut load = |name: &str| -> Result<Tensor, ExportError> {
        let tensor = content
            .tensor(&mut reader, name, &Device::Cpu)
            .map_err(|e| gguf_error(path, e))?;
        Ok(tensor.dequantize(&Device::Cpu)?)
    };
    let embedding = load(EMBEDDING_NAME)?;
    let mut weights = BTreeMap::new();
    for (name, _) in shape.tensor_shapes() {
        let tensor = load(&name)?;
        weights.insert(name, tensor);
    }
    Ok((shape, weights, embedding))
}

/// The exported file's metadata: architecture and hyper-parameters, then
/// the target's tokenizer entries (sorted by key, so files are reproducible).
fn metadata(
    shape: &Shape,
    weight_type: WeightType,
    name: &str,
    target_metadata: std::collections::HashMap<String, Value>,
) -> Vec<(String, Value)> {
    // GGUF stores these counts as u32; no trainable drafter comes near
    // that, so saturating only avoids a panic on absurd input.
    let count = |n: usize| Value::U32(u32::try_from(n).unwrap_or(u32::MAX));
    let mut entries = vec![
        (
            "general.architecture".to_string(),
            Value::String("qwen2".into()),
        ),
        ("general.name".to_string(), Value::String(name.into())),
        (
            "general.file_type".to_string(),
            Value::U32(weight_type.file_type()),
        ),
        ("general.alignment".to_string(), Value::U32(ALIGNMENT)),
        ("qwen2.context_length".to_string(), count(shape.context)),
        ("qwen2.embedding_length".to_string(), count(shape.hidden)),
        ("qwen2.block_count".to_string(), count(shape.layers)),
        (
            "qwen2.feed_forward_length".to_string(),
            count(shape.intermediate),
        ),
        ("qwen2.attention.head_count".to_string(), count(shape.heads)),
        (
            "qwen2.attention.head_count_kv".to_string(),
            count(shape.kv_heads),
        ),
        (
            "qwen2.rope.freq_base".to_string(),
            Value::F32(shape.rope_theta as f32),
        ),
        (
            "qwen2.attention.layer_norm_rms_epsilon".to_string(),
            Value::F32(shape.rms_eps as f32),
        ),
    ];
    if weight_type == WeightType::Q8_0 {
        entries.push((
            "general.quantization_version".to_string(),
            Value::U32(QUANTIZATION_VERSION),
        ));
    }
    let mut tokenizer: Vec<(String, Value)> = target_metadata
        .into_iter()
        .filter(|(key, _)| key.starts_with(TOKENIZER_PREFIX))
        .collect();
    tokenizer.sort_by(|a, b| a.0.cmp(&b.0));
    entries.extend(tokenizer);
    entries
}

/// Refuse layer tensors that are missing, superfluous or misshapen.
fn check_weights<'a>(
    shape: &Shape,
    given: impl Iterator<Item = (&'a str, &'a [usize])>,
) -> Result<(), ExportError> {
    let expected: BTreeMap<String, Vec<usize>> = shape.tensor_shapes().into_iter().collect();
    let mut seen = std::collections::BTreeSet::new();
    for (name, dims) in given {
        let want = expected
            .get(name)
            .ok_or_else(|| ExportError::UnexpectedTensor(name.to_string()))?;
        check_dims(name, dims, want)?;
        seen.insert(name);
    }
    match expected.keys().find(|name| !seen.contains(name.as_str())) {
        Some(missing) => Err(ExportError::MissingTensor(missing.clone())),
        None => Ok(()),
    }
}

fn check_dims(name: &str, found: &[usize], expected: &[usize]) -> Result<(), ExportError> {
    if found != expected {
        return Err(ExportError::TensorShape {
            name: name.to_string(),
            expected: expected.to_vec(),
            found: found.to_vec(),
        });
    }
    Ok(())
}

fn read_content(path: &Path) -> Result<gguf_file::Content, ExportError> {
    let file = File::open(path).map_err(|source| ExportError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    gguf_file::Content::read(&mut BufReader::new(file)).map_err(|e| gguf_error(path, e))
}

fn gguf_error(path: &Path, e: candle_core::Error) -> ExportError {
    ExportError::Gguf(format!("{}: {e}", path.display()))
}

/// Write a file through `write` into `path.tmp`, sync it, rename it to
/// `path` and sync the directory; returns the file's size. The temporary
/// file is removed when anything fails.
fn write_atomically(
    path: &Path,
    write: impl FnOnce(&mut BufWriter<File>) -> Result<(), ExportError>,
) -> Result<u64, ExportError> {
    let io = |p: &Path| {
        let p = p.to_path_buf();
        move |source| ExportError::Io { path: p, source }
    };
    let file_name = path.file_name().ok_or_else(|| ExportError::Io {
        path: path.to_path_buf(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a file name"),
    })?;
    let mut tmp_name = file_name.to_os_string();
    tmp_name.push(".tmp");
    let tmp = path.with_file_name(tmp_name);
    let result = (|| {
        let file = File::create(&tmp).map_err(io(&tmp))?;
        let mut writer = BufWriter::new(file);
        write(&mut writer)?;
        writer.flush().map_err(io(&tmp))?;
        let file = writer.into_inner().map_err(|e| io(&tmp)(e.into_error()))?;
        file.sync_all().map_err(io(&tmp))?;
        let bytes = file.metadata().map_err(io(&tmp))?.len();
        std::fs::rename(&tmp, path).map_err(io(path))?;
        Ok(bytes)
    })();
    match result {
        Ok(bytes) => {
            // The rename is durable only once the directory is synced.
            let dir = match path.parent() {
                Some(p) if !p.as_os_str().is_empty() => p,
                _ => Path::new("."),
            };
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(io(dir))?;
            Ok(bytes)
        }
        Err(e) => {
            // Best effort: the write already failed, and a leftover
            // temporary file is harmless (the next export replaces it).
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn storage_types() {
        assert_eq!(WeightType::F16.storage_for(&[64]), GgmlDType::F32);
        assert_eq!(WeightType::Q8_0.storage_for(&[64]), GgmlDType::F32);
        assert_eq!(WeightType::F16.storage_for(&[8, 64]), GgmlDType::F16);
        assert_eq!(WeightType::Q8_0.storage_for(&[8, 64]), GgmlDType::Q8_0);
        assert_eq!(WeightType::Q8_0.storage_for(&[64, 48]), GgmlDType::F16);
    }

    #[test]
    fn weight_type_names() {
        use clap::ValueEnum;
        assert_eq!(WeightType::from_str("q8_0", false), Ok(WeightType::Q8_0));
        assert_eq!(WeightType::from_str("f16", false), Ok(WeightType::F16));
        assert_eq!(
            serde_json::to_string(&WeightType::Q8_0).unwrap(),
            "\"q8_0\""
        );
    }

    #[test]
    fn weights_are_checked_against_the_shape() {
        let shape = Shape {
            vocab: 10,
            hidden: 8,
            layers: 1,
            heads: 2,
            kv_heads: 1,
            intermediate: 16,
            rope_theta: 1e4,
            rms_eps: 1e-6,
            context: 32,
        };
        let all = shape.tensor_shapes();
        let given = |list: &[(String, Vec<usize>)]| {
            check_weights(&shape, list.iter().map(|(n, d)| (n.as_str(), d.as_slice())))
        };
        assert!(given(&all).is_ok());
        assert!(matches!(given(&all[1..]), Err(ExportError::MissingTensor(n)) if n == all[0].0));
        let mut extra = all.clone();
        extra.push(("output.weight".into(), vec![10, 8]));
        assert!(
            matches!(given(&extra), Err(ExportError::UnexpectedTensor(n)) if n == "output.weight")
        );
        let mut wrong = all.clone();
        wrong[1].1 = vec![8, 4];
        assert!(matches!(
            given(&wrong),
            Err(ExportError::TensorShape { .. })
        ));
    }

    #[test]
    fn failed_writes_leave_nothing_behind() {
        let dir = std::env::temp_dir().join(format!("specdec-export-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("x.gguf");
        let err = write_atomically(&path, |w| {
            w.write_all(b"partial").unwrap();
            Err(ExportError::Gguf("boom".into()))
        })
        .unwrap_err();
        assert!(matches!(err, ExportError::Gguf(_)));
        assert!(!path.exists());
        assert!(!dir.join("x.gguf.tmp").exists());
        let bytes = write_atomically(&path, |w| {
            w.write_all(b"whole").map_err(|e| ExportError::Io {
                path: PathBuf::new(),
                source: e,
            })
        })
        .unwrap();
        assert_eq!(bytes, 5);
        assert_eq!(std::fs::read(&path).unwrap(), b"whole");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
