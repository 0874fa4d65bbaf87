//! The drafter's token embedding, initialised from the target's.
//!
//! A drafter of hidden size `h` cannot reuse the target's 1536-wide
//! embedding, but it can start from its best `h`-dimensional summary: the
//! target's embedding rows projected onto their `h` principal directions
//! (the top eigenvectors of `EᵀE` over the rows the training uses). Tokens
//! that the target places close together start close together in the
//! drafter, so the little training a CPU affords goes into the layers rather
//! than into rediscovering the vocabulary's geometry; and rows the training
//! never touches (tokens absent from the data) still get sensible vectors.

use std::fs::File;
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file;
use candle_core::{DType, Device, Tensor};
use nalgebra::{DMatrix, SymmetricEigen};

/// Why the embedding could not be initialised.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    /// The target's file cannot be read.
    #[error("{path}: {reason}")]
    Target {
        /// The target's GGUF file.
        path: PathBuf,
        /// What failed.
        reason: String,
    },
    /// A tensor operation failed.
    #[error("embedding initialisation: {0}")]
    Tensor(#[from] candle_core::Error),
    /// The requested size cannot be had.
    #[error("{0}")]
    Invalid(String),
}

/// The target's token embedding, dequantized to f32: (vocab, n_embd).
pub fn target_embedding(target: &Path) -> Result<Tensor, InitError> {
    let fail = |reason: String| InitError::Target {
        path: target.to_path_buf(),
        reason,
    };
    let mut file = File::open(target).map_err(|e| fail(e.to_string()))?;
    let content = gguf_file::Content::read(&mut file).map_err(|e| fail(e.to_string()))?;
    let tensor = content
        .tensor(&mut file, "token_embd.weight", &Device::Cpu)
        .map_err(|e| fail(format!("no readable token_embd.weight: {e}")))?;
    Ok(tensor.dequantize(&Device::Cpu)?)
}

/// The full (vocab, `hidden`) embedding: the target's rows projected onto the
/// top `hidden` principal directions of the rows in `fit_rows`, scaled so that
/// entries have a root mean square of 1/sqrt(`hidden`) (logits of order one
/// at the start, as with the usual N(0, 0.02) initialisation of a model this
/// narrow).
pub fn projected_embedding(
    target: &Tensor,
    fit_rows: &[u32],
    hidden: usize,
) -> Result<Tensor, InitError> {
    let (_, width) = target.dims2()?;
    if hidden == 0 || hidden > width {
        return Err(InitError::Invalid(format!(
            "hidden size {hidden} must be between 1 and the target's {width}"
        )));
    }
    if fit_rows.is_empty() {
        return Err(InitError::Invalid(
            "no token rows to fit the projection on".into(),
        ));
    }
    let ids = Tensor::from_slice(fit_rows, fit_rows.len(), target.device())?;
    let rows = target.index_select(&ids, 0)?;
    let gram = rows.t()?.matmul(&rows)?.to_dtype(DType::F64)?;
    let gram: Vec<f64> = gram.flatten_all()?.to_vec1()?;
    let eigen = SymmetricEigen::new(DMatrix::from_row_slice(width, width, &gram));
    let mut order: Vec<usize> = (0..width).collect();
    order.sort_by(|&a, &b| eigen.eigenvalues[b].total_cmp(&eigen.eigenvalues[a]));
    let mut basis = vec![0f32; width * hidden];
    for (column, &k) in order.iter().take(hidden).enumerate() {
        let vector = eigen.eigenvectors.column(k);
        // A deterministic sign: the largest component positive.
        let sign = if vector
            .iter()
            .fold(0.0f64, |m, &x| if x.abs() > m.abs() { x } else { m })
            < 0.0
        {
            -1.0
        } else {
            1.0
        };
        for row in 0..width {
            basis[row * hidden + column] = (sign * vector[row]) as f32;
        }
    }
    let basis = Tensor::from_vec(basis, (width, hidden), target.device())?;
    let projected = target.matmul(&basis)?;
    let rms = projected.sqr()?.mean_all()?.sqrt()?.to_scalar::<f32>()?;
    let want = 1.0 / (hidden as f32).sqrt();
    Ok((projected * f64::from(want / rms.max(f32::MIN_POSITIVE)))?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn projection_keeps_the_principal_directions_and_the_scale() {
        // Rows spread along two directions of a 4-dimensional space.
        let data: Vec<f32> = (0..64)
            .flat_map(|i| {
                let a = (i as f32 * 0.37).sin() * 3.0;
                let b = (i as f32 * 0.91).cos();
                [a, b, 0.01 * a, 0.0]
            })
            .collect();
        let target = Tensor::from_vec(data, (64, 4), &Device::Cpu).unwrap();
        let rows: Vec<u32> = (0..64).collect();
        let projected = projected_embedding(&target, &rows, 2).unwrap();
        assert_eq!(projected.dims(), &[64, 2]);
        let rms = projected.sqr().unwrap().mean_all().unwrap().sqrt().unwrap();
        let rms = rms.to_scalar::<f32>().unwrap();
        assert!((rms - 1.0 / 2f32.sqrt()).abs() < 1e-4, "{rms}");
        // Two directions hold all the variance: distances between rows are
        // kept up to the common scale.
        let p: Vec<Vec<f32>> = projected.to_vec2().unwrap();
        let t: Vec<Vec<f32>> = target.to_vec2().unwrap();
        let d = |v: &Vec<Vec<f32>>, i: usize, j: usize| {
            v[i].iter()
                .zip(&v[j])
                .map(|(a, b)| (a - b).powi(2))
                .sum::<f32>()
                .sqrt()
        };
        let ratio = d(&p, 1, 2) / d(&t, 1, 2);
        assert!((d(&p, 5, 9) / d(&t, 5, 9) - ratio).abs() < 1e-3 * ratio);
        assert!(projected_embedding(&target, &rows, 5).is_err());
    }
}
