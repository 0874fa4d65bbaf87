//! Cross-entropy over logits as one fused operation with its own backward
//! pass: per row, log-sum-exp minus the target's logit; gradient
//! softmax − one-hot. Composed of candle operations (log-softmax, gather),
//! the same loss materialises several (tokens × vocabulary) tensors in each
//! direction and its backward pass dominated a training step on a CPU.

use candle_core::{CpuStorage, CustomOp1, Layout, Tensor};

/// Negative log-likelihood of `targets` under `logits` (rows × classes),
/// one value per row.
pub fn cross_entropy(logits: &Tensor, targets: &[u32]) -> candle_core::Result<Tensor> {
    let (rows, classes) = logits.dims2()?;
    if rows != targets.len() {
        candle_core::bail!("{rows} rows of logits for {} targets", targets.len());
    }
    if let Some(t) = targets.iter().find(|&&t| t as usize >= classes) {
        candle_core::bail!("target {t} is outside the {classes} classes");
    }
    logits.contiguous()?.apply_op1(CrossEntropy {
        targets: targets.to_vec(),
    })
}

struct CrossEntropy {
    targets: Vec<u32>,
}

fn rows_of<'a>(
    storage: &'a CpuStorage,
    layout: &Layout,
) -> candle_core::Result<(&'a [f32], usize)> {
    let values = storage.as_slice::<f32>()?;
    let Some((start, end)) = layout.contiguous_offsets() else {
        candle_core::bail!("cross-entropy logits must be contiguous");
    };
    let width = layout.dims().last().copied().unwrap_or(1).max(1);
    Ok((&values[start..end], width))
}

/// Rows split over candle's thread count, in whole rows.
fn parallel_rows<F>(rows: usize, width: usize, out: &mut [f32], out_width: usize, f: F)
where
    F: Fn(usize, &mut [f32]) + Sync,
{
    let threads = candle_core::utils::get_num_threads().clamp(1, rows.max(1));
    let per = rows.div_ceil(threads).max(1);
    let _ = width;
    std::thread::scope(|scope| {
        for (chunk_index, chunk) in out.chunks_mut(per * out_width).enumerate() {
            let f = &f;
            scope.spawn(move || {
                for (i, row_out) in chunk.chunks_mut(out_width).enumerate() {
                    f(chunk_index * per + i, row_out);
                }
            });
        }
    });
}

fn log_sum_exp(row: &[f32]) -> f32 {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f32 = row.iter().map(|&v| (v - max).exp()).sum();
    max + sum.ln()
}

impl CustomOp1 for CrossEntropy {
    fn name(&self) -> &'static str {
        "specdec-cross-entropy"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, candle_core::Shape)> {
        let (values, width) = rows_of(storage, layout)?;
        let rows = values.len() / width;
        let mut out = vec![0f32; rows];
        parallel_rows(rows, width, &mut out, 1, |r, o| {
            let row = &values[r * width..(r + 1) * width];
            o[0] = log_sum_exp(row) - row[self.targets[r] as usize];
        });
        Ok((CpuStorage::F32(out), candle_core::Shape::from(rows)))
    }

    fn bwd(
        &self,
        arg: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        let (rows, width) = arg.dims2()?;
        let device = arg.device().clone();
        let logits: Vec<f32> = arg.flatten_all()?.to_vec1()?;
        let upstream: Vec<f32> = grad_res.flatten_all()?.to_vec1()?;
        let mut grad = vec![0f32; rows * width];
        parallel_rows(rows, width, &mut grad, width, |r, g| {
            let row = &logits[r * width..(r + 1) * width];
            let lse = log_sum_exp(row);
            let scale = upstream[r];
            for (gi, &v) in g.iter_mut().zip(row) {
                *gi = (v - lse).exp() * scale;
            }
            g[self.targets[r] as usize] -= scale;
        });
        Ok(Some(Tensor::from_vec(grad, (rows, width), &device)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn matches_the_composed_loss_and_its_gradient() {
        let values: Vec<f32> = (0..5 * 7)
            .map(|i| ((i * 37 % 11) as f32 - 5.0) * 0.3)
            .collect();
        let targets = [0u32, 6, 3, 3, 1];
        let x = Var::from_tensor(&Tensor::from_vec(values, (5, 7), &Device::Cpu).unwrap()).unwrap();
        let weights = Tensor::new(&[1.0f32, 0.5, 2.0, 0.0, 1.0], &Device::Cpu).unwrap();
        let fused = (cross_entropy(x.as_tensor(), &targets).unwrap() * &weights)
            .unwrap()
            .sum_all()
            .unwrap();
        let grads = fused.backward().unwrap();
        let fused_grad: Vec<Vec<f32>> = grads.get(x.as_tensor()).unwrap().to_vec2().unwrap();

        let t = Tensor::new(&targets, &Device::Cpu)
            .unwrap()
            .unsqueeze(1)
            .unwrap();
        let log_probs = candle_nn::ops::log_softmax(x.as_tensor(), 1).unwrap();
        let picked = log_probs.gather(&t, 1).unwrap().squeeze(1).unwrap();
        let composed = (picked * &weights)
            .unwrap()
            .sum_all()
            .unwrap()
            .neg()
            .unwrap();
        let grads = composed.backward().unwrap();
        let composed_grad: Vec<Vec<f32>> = grads.get(x.as_tensor()).unwrap().to_vec2().unwrap();

        let a = fused.to_scalar::<f32>().unwrap();
        let b = composed.to_scalar::<f32>().unwrap();
        assert!((a - b).abs() < 1e-5 * b.abs().max(1.0), "{a} vs {b}");
        for (r, (f, c)) in fused_grad.iter().zip(&composed_grad).enumerate() {
            for (x, y) in f.iter().zip(c) {
                assert!((x - y).abs() < 1e-5, "row {r}: {x} vs {y}");
            }
        }
        assert!(cross_entropy(x.as_tensor(), &[0, 1, 2, 3, 7]).is_err());
    }
}
