//! The drafter: a shallow Qwen2-architecture transformer on candle.
//!
//! Pre-norm residual blocks of causal grouped-query self-attention (with
//! biased Q/K/V projections and NEOX-style rotary position embeddings) and a
//! SwiGLU MLP, then a final RMSNorm. The token embedding is not owned by the
//! drafter: it is passed to [`Drafter::forward_hidden`] and [`logits`], because
//! training works on a row subset of the vocabulary while export writes the
//! full matrix, tied as the output projection (as llama.cpp's qwen2 loader
//! does when a file has no `output.weight`).
//!
//! Parameters carry their GGUF names, so export is a copy without renaming.
//! Every operation here is differentiable: candle's fused `softmax_last_dim`,
//! `rms_norm` and `rope` kernels have no backward pass, so the first is
//! replaced by a fused CPU kernel with a backward pass of its own and the
//! other two are composed of differentiable tensor operations.

use std::sync::Mutex;

use candle_core::{CpuStorage, CustomOp1, DType, Device, Layout, Module, Tensor, D};
use candle_nn::{Init, Linear, VarBuilder};

/// Standard deviation of the normal initialisation of weight matrices.
pub const INIT_STDEV: f64 = 0.02;

/// The hyper-parameters that fix a drafter's tensors and its GGUF metadata.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Shape {
    /// Rows of the full token embedding (the target's vocabulary size).
    pub vocab: usize,
    /// Width of the residual stream.
    pub hidden: usize,
    /// Number of transformer blocks.
    pub layers: usize,
    /// Query heads per block.
    pub heads: usize,
    /// Key/value heads per block (grouped-query attention; divides `heads`).
    pub kv_heads: usize,
    /// Width of the SwiGLU MLP.
    pub intermediate: usize,
    /// Base of the rotary position embedding's frequencies.
    pub rope_theta: f64,
    /// Epsilon of every RMSNorm.
    pub rms_eps: f64,
    /// Longest sequence the drafter is meant for (GGUF context length).
    pub context: usize,
}

impl Shape {
    /// Width of one attention head.
    pub fn head_dim(&self) -> usize {
        self.hidden / self.heads.max(1)
    }

    /// Why this shape cannot describe a drafter; `Ok` when it can.
    pub fn validate(&self) -> Result<(), String> {
        let positive = [
            ("vocab", self.vocab),
            ("hidden", self.hidden),
            ("layers", self.layers),
            ("heads", self.heads),
            ("kv_heads", self.kv_heads),
            ("intermediate", self.intermediate),
            ("context", self.context),
        ];
        for (name, value) in positive {
            if value == 0 {
                return Err(format!("{name} must be positive"));
            }
        }
        if !self.hidden.is_multiple_of(self.heads) {
            return Err(format!(
                "hidden ({}) is not a multiple of heads ({})",
                self.hidden, self.heads
            ));
        }
        if !self.heads.is_multiple_of(self.kv_heads) {
            return Err(format!(
                "heads ({}) is not a multiple of kv_heads ({})",
                self.heads, self.kv_heads
            ));
        }
        if !self.head_dim().is_multiple_of(2) {
            return Err(format!(
                "the head width {} is odd; rotary embeddings rotate pairs",
                self.head_dim()
            ));
        }
        if !(self.rope_theta.is_finite() && self.rope_theta > 1.0) {
            return Err(format!(
                "rope_theta must be finite and above 1, not {}",
                self.rope_theta
            ));
        }
        if !(self.rms_eps.is_finite() && self.rms_eps > 0.0) {
            return Err(format!(
                "rms_eps must be finite and positive, not {}",
                self.rms_eps
            ));
        }
        Ok(())
    }

    /// Width of the key and value projections (`kv_heads * head_dim`).
    pub fn kv_width(&self) -> usize {
        self.kv_heads * self.head_dim()
    }

    /// Every layer tensor (all but the embedding) by GGUF name, with its
    /// candle shape: matrices as (out, in), which GGUF stores as
    /// `ne = [in, out]`.
    pub fn tensor_shapes(&self) -> Vec<(String, Vec<usize>)> {
        let (h, kv, ff) = (self.hidden, self.kv_width(), self.intermediate);
        let mut shapes = Vec::with_capacity(self.layers * 12 + 1);
        for i in 0..self.layers {
            let name = |suffix: &str| format!("blk.{i}.{suffix}");
            shapes.extend([
                (name("attn_norm.weight"), vec![h]),
                (name("attn_q.weight"), vec![h, h]),
                (name("attn_q.bias"), vec![h]),
                (name("attn_k.weight"), vec![kv, h]),
                (name("attn_k.bias"), vec![kv]),
                (name("attn_v.weight"), vec![kv, h]),
                (name("attn_v.bias"), vec![kv]),
                (name("attn_output.weight"), vec![h, h]),
                (name("ffn_norm.weight"), vec![h]),
                (name("ffn_gate.weight"), vec![ff, h]),
                (name("ffn_up.weight"), vec![ff, h]),
                (name("ffn_down.weight"), vec![h, ff]),
            ]);
        }
        shapes.push(("output_norm.weight".to_string(), vec![h]));
        shapes
    }

    /// Number of parameters of the layer tensors (without the embedding).
    pub fn layer_parameters(&self) -> usize {
        self.tensor_shapes()
            .iter()
            .map(|(_, dims)| dims.iter().product::<usize>())
            .sum()
    }
}

/// One pre-norm transformer block.
struct Block {
    attn_norm: Tensor,
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    ffn_norm: Tensor,
    gate: Linear,
    up: Linear,
    down: Linear,
}

/// The drafter's layers (everything but the token embedding).
pub struct Drafter {
    shape: Shape,
    blocks: Vec<Block>,
    output_norm: Tensor,
    /// Rotary cosines and sines for positions `0..context`, (context, head_dim / 2).
    cos: Tensor,
    sin: Tensor,
    /// The causal mask of the last sequence length seen: training repeats one
    /// length, and a mask for the whole context would be context² floats.
    mask: Mutex<Option<(usize, Tensor)>>,
}

impl Drafter {
    /// Layer weights come from `vb` under their GGUF names (so export is a
    /// rename-free copy): `blk.{i}.attn_norm.weight` (hidden),
    /// `blk.{i}.attn_q.weight` (hidden x hidden, candle's (out, in) layout),
    /// `blk.{i}.attn_q.bias`, `blk.{i}.attn_k.weight` (kv_heads*head_dim x
    /// hidden), `blk.{i}.attn_k.bias`, `blk.{i}.attn_v.weight`,
    /// `blk.{i}.attn_v.bias`, `blk.{i}.attn_output.weight` (no bias),
    /// `blk.{i}.ffn_norm.weight`, `blk.{i}.ffn_gate.weight` (intermediate x
    /// hidden), `blk.{i}.ffn_up.weight`, `blk.{i}.ffn_down.weight` (hidden x
    /// intermediate), and `output_norm.weight`.
    ///
    /// Created from a `VarMap`, norms start at 1, biases at 0 and weights
    /// normal(0, [`INIT_STDEV`]), with the projections that write into the
    /// residual stream (`attn_output`, `ffn_down`) scaled by
    /// 1/sqrt(2 * layers) so its variance does not grow with depth (GPT-2).
    pub fn new(shape: &Shape, vb: VarBuilder) -> candle_core::Result<Self> {
        shape.validate().map_err(candle_core::Error::msg)?;
        let (h, kv, ff) = (shape.hidden, shape.kv_width(), shape.intermediate);
        let weight_init = Init::Randn {
            mean: 0.0,
            stdev: INIT_STDEV,
        };
        let residual_init = Init::Randn {
            mean: 0.0,
            stdev: INIT_STDEV / (2.0 * shape.layers as f64).sqrt(),
        };
        let norm = |name: &str| vb.get_with_hints(h, name, Init::Const(1.0));
        let linear = |name: &str, out: usize, inp: usize, init: Init, bias: bool| {
            let weight = vb.get_with_hints((out, inp), &format!("{name}.weight"), init)?;
            let bias = if bias {
                Some(vb.get_with_hints(out, &format!("{name}.bias"), Init::Const(0.0))?)
            } else {
                None
            };
            Ok::<_, candle_core::Error>(Linear::new(weight, bias))
        };
        let mut blocks = Vec::with_capacity(shape.layers);
        for i in 0..shape.layers {
            let p = format!("blk.{i}");
            blocks.push(Block {
                attn_norm: norm(&format!("{p}.attn_norm.weight"))?,
                q: linear(&format!("{p}.attn_q"), h, h, weight_init, true)?,
                k: linear(&format!("{p}.attn_k"), kv, h, weight_init, true)?,
                v: linear(&format!("{p}.attn_v"), kv, h, weight_init, true)?,
                o: linear(&format!("{p}.attn_output"), h, h, residual_init, false)?,
                ffn_norm: norm(&format!("{p}.ffn_norm.weight"))?,
                gate: linear(&format!("{p}.ffn_gate"), ff, h, weight_init, false)?,
                up: linear(&format!("{p}.ffn_up"), ff, h, weight_init, false)?,
                down: linear(&format!("{p}.ffn_down"), h, ff, residual_init, false)?,
            });
        }
        let output_norm = norm("output_norm.weight")?;
        let (cos, sin) = rope_tables(shape, vb.device(), vb.dtype())?;
        Ok(Self {
            shape: shape.clone(),
            blocks,
            output_norm,
            cos,
            sin,
            mask: Mutex::new(None),
        })
    }

    /// The drafter's shape.
    pub fn shape(&self) -> &Shape {
        &self.shape
    }

    /// Hidden states after the final RMSNorm, (batch, seq, hidden).
    ///
    /// `embedding` is the token embedding matrix (rows, hidden) and `tokens`
    /// (batch, seq, u32) index its rows: training passes a row subset of the
    /// vocabulary with remapped ids, export and evaluation the full matrix.
    /// Tokens sit at positions `0..seq`; attention is causal.
    pub fn forward_hidden(
        &self,
        embedding: &Tensor,
        tokens: &Tensor,
    ) -> candle_core::Result<Tensor> {
        let (batch, seq) = tokens.dims2()?;
        if seq == 0 || seq > self.shape.context {
            candle_core::bail!(
                "sequence length {seq} is outside 1..={}",
                self.shape.context
            );
        }
        let (_, width) = embedding.dims2()?;
        if width != self.shape.hidden {
            candle_core::bail!(
                "embedding width {width} differs from the drafter's hidden size {}",
                self.shape.hidden
            );
        }
        let mut x = embedding
            .index_select(&tokens.flatten_all()?, 0)?
            .reshape((batch, seq, self.shape.hidden))?;
        let mask = self.causal_mask(seq, x.device(), x.dtype())?;
        let cos = self.cos.narrow(0, 0, seq)?;
        let sin = self.sin.narrow(0, 0, seq)?;
        for block in &self.blocks {
            x = self.block_forward(block, &x, &mask, &cos, &sin)?;
        }
        rms_norm(&x, &self.output_norm, self.shape.rms_eps)
    }

    fn block_forward(
        &self,
        block: &Block,
        x: &Tensor,
        mask: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
    ) -> candle_core::Result<Tensor> {
        let s = &self.shape;
        let (batch, seq, _) = x.dims3()?;
        let (heads, kv_heads, head_dim) = (s.heads, s.kv_heads, s.head_dim());
        let group = heads / kv_heads;

        let h = rms_norm(x, &block.attn_norm, s.rms_eps)?;
        // (batch, seq, n * head_dim) -> (batch, n, seq, head_dim), contiguous
        // so that the reshapes below are free.
        let split = |t: Tensor, n: usize| {
            t.reshape((batch, seq, n, head_dim))?
                .transpose(1, 2)?
                .contiguous()
        };
        let q = split(block.q.forward(&h)?, heads)?;
        let k = split(block.k.forward(&h)?, kv_heads)?;
        let v = split(block.v.forward(&h)?, kv_heads)?;
        // Scaling q (seq x head_dim per head) is cheaper than scaling the
        // scores (seq x seq).
        let q = (rope(&q, cos, sin)? * (1.0 / (head_dim as f64).sqrt()))?;
        let k = rope(&k, cos, sin)?;

        // Grouped-query attention without copying keys and values: query
        // head j uses key/value head j / group (llama.cpp's mapping), and
        // the `group` query heads of one key/value head are adjacent in
        // memory, so they stack into one (group * seq) x head_dim matrix.
        let q = q.reshape((batch, kv_heads, group * seq, head_dim))?;
        let scores = q.matmul(&k.t()?)?.reshape((batch, heads, seq, seq))?;
        let probs = softmax_last_dim(&scores.broadcast_add(mask)?)?;
        let attended = probs
            .reshape((batch, kv_heads, group * seq, seq))?
            .matmul(&v)?
            .reshape((batch, heads, seq, head_dim))?
            .transpose(1, 2)?
            .reshape((batch, seq, s.hidden))?;
        let x = (x + block.o.forward(&attended)?)?;

        let h = rms_norm(&x, &block.ffn_norm, s.rms_eps)?;
        let mlp = (block.gate.forward(&h)?.silu()? * block.up.forward(&h)?)?;
        x + block.down.forward(&mlp)?
    }

    /// The additive causal mask (seq, seq): 0 on and below the diagonal,
    /// -inf above.
    fn causal_mask(
        &self,
        seq: usize,
        device: &Device,
        dtype: DType,
    ) -> candle_core::Result<Tensor> {
        // A poisoned lock only means another thread panicked while caching;
        // the cached value is still either absent or complete.
        let mut cached = self.mask.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((len, mask)) = cached.as_ref() {
            if *len == seq && mask.device().same_device(device) && mask.dtype() == dtype {
                return Ok(mask.clone());
            }
        }
        let values: Vec<f32> = (0..seq)
            .flat_map(|i| (0..seq).map(move |j| if j > i { f32::NEG_INFINITY } else { 0.0 }))
            .collect();
        let mask = Tensor::from_vec(values, (seq, seq), device)?.to_dtype(dtype)?;
        *cached = Some((seq, mask.clone()));
        Ok(mask)
    }
}

/// Logits for hidden states with tied embeddings: `hidden` (batch, seq,
/// hidden) times `embedding` (rows, hidden) transposed, (batch, seq, rows).
pub fn logits(hidden: &Tensor, embedding: &Tensor) -> candle_core::Result<Tensor> {
    let (batch, seq, width) = hidden.dims3()?;
    let (rows, _) = embedding.dims2()?;
    // One (batch * seq, hidden) x (hidden, rows) product instead of a
    // broadcast batched one: the embedding is then read once.
    hidden
        .contiguous()?
        .reshape((batch * seq, width))?
        .matmul(&embedding.t()?)?
        .reshape((batch, seq, rows))
}

/// Rotary tables for positions `0..context`: cos and sin of `pos *
/// theta^(-2i / head_dim)` for `i < head_dim / 2`, each (context, head_dim / 2).
fn rope_tables(
    shape: &Shape,
    device: &Device,
    dtype: DType,
) -> candle_core::Result<(Tensor, Tensor)> {
    let half = shape.head_dim() / 2;
    let inv_freq: Vec<f64> = (0..half)
        .map(|i| {
            shape
                .rope_theta
                .powf(-2.0 * i as f64 / shape.head_dim() as f64)
        })
        .collect();
    let mut cos = Vec::with_capacity(shape.context * half);
    let mut sin = Vec::with_capacity(shape.context * half);
    for pos in 0..shape.context {
        for f in &inv_freq {
            let angle = pos as f64 * f;
            cos.push(angle.cos() as f32);
            sin.push(angle.sin() as f32);
        }
    }
    let cos = Tensor::from_vec(cos, (shape.context, half), device)?.to_dtype(dtype)?;
    let sin = Tensor::from_vec(sin, (shape.context, half), device)?.to_dtype(dtype)?;
    Ok((cos, sin))
}

/// NEOX-style rotary embedding (the first and second halves of each head
/// form the rotated pairs, as llama.cpp does for qwen2): `x` is (batch,
/// heads, seq, head_dim), `cos`/`sin` (seq, head_dim / 2). Same result as
/// `candle_nn::rotary_emb::rope`, whose kernel has no backward pass.
fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> candle_core::Result<Tensor> {
    let half = x.dim(D::Minus1)? / 2;
    let x1 = x.narrow(D::Minus1, 0, half)?;
    let x2 = x.narrow(D::Minus1, half, half)?;
    let cos = cos.unsqueeze(0)?.unsqueeze(0)?;
    let sin = sin.unsqueeze(0)?.unsqueeze(0)?;
    let rotated1 = (x1.broadcast_mul(&cos)? - x2.broadcast_mul(&sin)?)?;
    let rotated2 = (x2.broadcast_mul(&cos)? + x1.broadcast_mul(&sin)?)?;
    Tensor::cat(&[rotated1, rotated2], D::Minus1)
}

/// RMSNorm over the last dimension, times `weight` (no +1 offset), with
/// differentiable operations (candle's fused kernel has no backward pass).
fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> candle_core::Result<Tensor> {
    let mean_square = x.sqr()?.mean_keepdim(D::Minus1)?;
    let inv_rms = (mean_square + eps)?.sqrt()?.recip()?;
    x.broadcast_mul(&inv_rms)?.broadcast_mul(weight)
}

/// Softmax over the last dimension, differentiable. On the CPU in f32 a
/// fused kernel with an analytic backward pass; elsewhere candle's composed
/// softmax (candle's fused `softmax_last_dim` has no backward pass).
pub fn softmax_last_dim(x: &Tensor) -> candle_core::Result<Tensor> {
    if x.device().is_cpu() && x.dtype() == DType::F32 {
        x.contiguous()?.apply_op1(SoftmaxLastDim)
    } else {
        candle_nn::ops::softmax(x, D::Minus1)
    }
}

/// Fused softmax over the last dimension (CPU, f32) with a backward pass.
struct SoftmaxLastDim;

impl CustomOp1 for SoftmaxLastDim {
    fn name(&self) -> &'static str {
        "specdec-softmax-last-dim"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, candle_core::Shape)> {
        let values = storage.as_slice::<f32>()?;
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("softmax input must be contiguous");
        };
        let values = &values[start..end];
        let width = layout.dims().last().copied().unwrap_or(1).max(1);
        let mut out = vec![0f32; values.len()];
        let rows = values.len() / width;
        let threads = candle_core::utils::get_num_threads().clamp(1, rows.max(1));
        // Rows are independent; split them over the same number of threads
        // candle's own kernels use, in whole rows.
        let rows_per_thread = rows.div_ceil(threads).max(1);
        let chunk = rows_per_thread * width;
        std::thread::scope(|scope| {
            for (src, dst) in values.chunks(chunk).zip(out.chunks_mut(chunk)) {
                scope.spawn(move || {
                    for (row, out_row) in src.chunks(width).zip(dst.chunks_mut(width)) {
                        softmax_row(row, out_row);
                    }
                });
            }
        });
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }

    fn bwd(
        &self,
        _arg: &Tensor,
        res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        // d softmax: dx = y * (g - sum(g * y)) over the last dimension.
        let gy = (grad_res * res)?;
        let dot = gy.sum_keepdim(D::Minus1)?;
        Ok(Some((gy - res.broadcast_mul(&dot)?)?))
    }
}

/// Softmax of one row; a row of only -inf gives zeros rather than NaN
/// (it cannot occur under a causal mask, whose diagonal is open).
fn softmax_row(row: &[f32], out: &mut [f32]) {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if max == f32::NEG_INFINITY {
        out.fill(0.0);
        return;
    }
    let mut sum = 0f32;
    for (o, &v) in out.iter_mut().zip(row) {
        let e = (v - max).exp();
        *o = e;
        sum += e;
    }
    let inv = 1.0 / sum;
    for o in out.iter_mut() {
        *o *= inv;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_nn::VarMap;

    fn small_shape(heads: usize, kv_heads: usize) -> Shape {
        Shape {
            vocab: 50,
            hidden: 32,
            layers: 2,
            heads,
            kv_heads,
            intermediate: 64,
            rope_theta: 10_000.0,
            rms_eps: 1e-6,
            context: 64,
        }
    }

    /// A drafter with random (not initial) norms and biases, so every
    /// parameter matters.
    fn drafter(shape: &Shape) -> (Drafter, VarMap, Tensor) {
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        let model = Drafter::new(shape, vb).unwrap();
        for var in varmap.all_vars() {
            let noise = Tensor::randn(0f32, 0.3, var.shape(), &Device::Cpu).unwrap();
            var.set(&(var.as_tensor() + noise).unwrap()).unwrap();
        }
        let embedding =
            Tensor::randn(0f32, 1.0, (shape.vocab, shape.hidden), &Device::Cpu).unwrap();
        (model, varmap, embedding)
    }

    fn tokens(ids: &[u32], batch: usize) -> Tensor {
        let all: Vec<u32> = (0..batch).flat_map(|_| ids.iter().copied()).collect();
        Tensor::from_vec(all, (batch, ids.len()), &Device::Cpu).unwrap()
    }

    fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    }

    #[test]
    fn shapes_of_hidden_states_and_logits() {
        let shape = small_shape(4, 2);
        let (model, varmap, embedding) = drafter(&shape);
        let hidden = model
            .forward_hidden(&embedding, &tokens(&[1, 2, 3, 4, 5, 6, 7], 3))
            .unwrap();
        assert_eq!(hidden.dims(), &[3, 7, 32]);
        assert_eq!(logits(&hidden, &embedding).unwrap().dims(), &[3, 7, 50]);
        // The VarMap holds exactly the GGUF-named tensors, with their shapes.
        let data = varmap.data().lock().unwrap();
        let mut names: Vec<_> = data.keys().cloned().collect();
        names.sort();
        let mut expected: Vec<_> = shape.tensor_shapes();
        expected.sort();
        assert_eq!(
            names,
            expected.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>()
        );
        for (name, dims) in expected {
            assert_eq!(data[&name].dims(), dims.as_slice(), "{name}");
        }
    }

    #[test]
    fn initialisation_follows_the_recipe() {
        let shape = small_shape(4, 2);
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        Drafter::new(&shape, vb).unwrap();
        let data = varmap.data().lock().unwrap();
        let values = |n: &str| data[n].flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert!(values("blk.0.attn_norm.weight").iter().all(|&v| v == 1.0));
        assert!(values("blk.1.attn_k.bias").iter().all(|&v| v == 0.0));
        let stdev = |v: &[f32]| (v.iter().map(|x| x * x).sum::<f32>() / v.len() as f32).sqrt();
        let up = stdev(&values("blk.0.ffn_up.weight"));
        let down = stdev(&values("blk.0.ffn_down.weight"));
        assert!((up - 0.02).abs() < 0.003, "{up}");
        assert!((down - 0.01).abs() < 0.002, "{down}");
    }

    #[test]
    fn later_tokens_do_not_change_earlier_positions() {
        for (heads, kv_heads) in [(4, 4), (4, 2), (4, 1)] {
            let shape = small_shape(heads, kv_heads);
            let (model, _, embedding) = drafter(&shape);
            let a = model
                .forward_hidden(&embedding, &tokens(&[3, 9, 4, 7, 1, 2], 1))
                .unwrap();
            let b = model
                .forward_hidden(&embedding, &tokens(&[3, 9, 4, 7, 30, 40], 1))
                .unwrap();
            let prefix = |t: &Tensor| t.narrow(1, 0, 4).unwrap();
            assert!(max_abs_diff(&prefix(&a), &prefix(&b)) < 1e-6);
            let last = |t: &Tensor| t.narrow(1, 4, 2).unwrap();
            assert!(max_abs_diff(&last(&a), &last(&b)) > 1e-3);
        }
    }

    /// With one block, the causal mask alone cannot tell the order of the
    /// tokens before the last: only the rotary embedding can.
    #[test]
    fn token_order_matters_through_rotary_embeddings() {
        let shape = Shape {
            layers: 1,
            ..small_shape(4, 2)
        };
        let (model, _, embedding) = drafter(&shape);
        let last = |ids: &[u32]| {
            let h = model.forward_hidden(&embedding, &tokens(ids, 1)).unwrap();
            h.narrow(1, ids.len() - 1, 1).unwrap()
        };
        assert!(max_abs_diff(&last(&[3, 9, 4]), &last(&[9, 3, 4])) > 1e-3);
        // The same token repeated attends to identical values wherever it is.
        let same = model
            .forward_hidden(&embedding, &tokens(&[5, 5, 5], 1))
            .unwrap();
        assert!(
            max_abs_diff(
                &same.narrow(1, 0, 1).unwrap(),
                &same.narrow(1, 2, 1).unwrap()
            ) < 1e-5
        );
    }

    #[test]
    fn batch_rows_are_independent() {
        let shape = small_shape(4, 2);
        let (model, _, embedding) = drafter(&shape);
        let ids = Tensor::new(&[[1u32, 2, 3, 4], [7, 8, 9, 10]], &Device::Cpu).unwrap();
        let both = model.forward_hidden(&embedding, &ids).unwrap();
        let second = model
            .forward_hidden(&embedding, &tokens(&[7, 8, 9, 10], 1))
            .unwrap();
        assert!(max_abs_diff(&both.narrow(0, 1, 1).unwrap(), &second) < 1e-5);
    }

    /// Grouped-query attention equals multi-head attention with every
    /// key/value head repeated for its group (query head j uses kv head
    /// j / group).
    #[test]
    fn grouped_query_attention_equals_repeated_heads() {
        let gqa = small_shape(4, 2);
        let (model, varmap, embedding) = drafter(&gqa);
        let mha = small_shape(4, 4);
        let data = varmap.data().lock().unwrap();
        let mut tensors = std::collections::HashMap::new();
        for (name, var) in data.iter() {
            let t = var.as_tensor().clone();
            let t = if name.contains("attn_k.") || name.contains("attn_v.") {
                // Rows are kv heads of head_dim rows each; repeat each head twice.
                let head_dim = gqa.head_dim();
                let heads: Vec<Tensor> = (0..gqa.kv_heads)
                    .flat_map(|h| {
                        let part = t.narrow(0, h * head_dim, head_dim).unwrap();
                        [part.clone(), part]
                    })
                    .collect();
                Tensor::cat(&heads, 0).unwrap()
            } else {
                t
            };
            tensors.insert(name.clone(), t);
        }
        let reference = Drafter::new(
            &mha,
            VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu),
        )
        .unwrap();
        let ids = tokens(&[4, 8, 15, 16, 23, 42], 2);
        let a = model.forward_hidden(&embedding, &ids).unwrap();
        let b = reference.forward_hidden(&embedding, &ids).unwrap();
        assert!(max_abs_diff(&a, &b) < 1e-5);
    }

    #[test]
    fn rope_matches_candle_kernel() {
        let x = Tensor::randn(0f32, 1.0, (2, 3, 5, 8), &Device::Cpu).unwrap();
        let shape = Shape {
            hidden: 24,
            heads: 3,
            kv_heads: 3,
            ..small_shape(4, 4)
        };
        let (cos, sin) = rope_tables(&shape, &Device::Cpu, DType::F32).unwrap();
        let (cos, sin) = (cos.narrow(0, 0, 5).unwrap(), sin.narrow(0, 0, 5).unwrap());
        let ours = rope(&x, &cos, &sin).unwrap();
        let candle = candle_nn::rotary_emb::rope(&x, &cos, &sin).unwrap();
        assert!(max_abs_diff(&ours, &candle) < 1e-6);
    }

    #[test]
    fn softmax_and_its_gradient_match_the_composed_one() {
        let x = Tensor::randn(0f32, 2.0, (3, 4, 7), &Device::Cpu).unwrap();
        let mask = Tensor::new(
            &[0f32, 0., 0., f32::NEG_INFINITY, 0., f32::NEG_INFINITY, 0.],
            &Device::Cpu,
        )
        .unwrap();
        let weights = Tensor::randn(0f32, 1.0, (3, 4, 7), &Device::Cpu).unwrap();
        let var = candle_core::Var::from_tensor(&x).unwrap();
        let run = |f: &dyn Fn(&Tensor) -> candle_core::Result<Tensor>| {
            let y = f(&var.as_tensor().broadcast_add(&mask).unwrap()).unwrap();
            let loss = (&y * &weights).unwrap().sum_all().unwrap();
            let grads = loss.backward().unwrap();
            (y, grads.get(var.as_tensor()).unwrap().clone())
        };
        let (y1, g1) = run(&|t| softmax_last_dim(t));
        let (y2, g2) = run(&|t| candle_nn::ops::softmax(t, D::Minus1));
        assert!(max_abs_diff(&y1, &y2) < 1e-6);
        assert!(max_abs_diff(&g1, &g2) < 1e-6);
        assert!(
            g1.abs()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
                > 0.1
        );
    }

    #[test]
    fn every_parameter_and_the_embedding_get_gradients() {
        let shape = small_shape(4, 2);
        let (model, varmap, embedding) = drafter(&shape);
        let embedding = candle_core::Var::from_tensor(&embedding).unwrap();
        let ids = tokens(&[1, 5, 9, 13, 17], 2);
        let hidden = model.forward_hidden(embedding.as_tensor(), &ids).unwrap();
        let loss = logits(&hidden, embedding.as_tensor())
            .unwrap()
            .sqr()
            .unwrap()
            .mean_all()
            .unwrap();
        let grads = loss.backward().unwrap();
        let data = varmap.data().lock().unwrap();
        for (name, var) in data.iter() {
            let grad = grads
                .get(var.as_tensor())
                .unwrap_or_else(|| panic!("no gradient for {name}"));
            let size = grad
                .abs()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(size > 0.0 && size.is_finite(), "{name}: {size}");
        }
        assert!(grads.get(embedding.as_tensor()).is_some());
    }

    #[test]
    fn invalid_shapes_are_refused() {
        let ok = small_shape(4, 2);
        assert_eq!(ok.validate(), Ok(()));
        assert!(Shape {
            heads: 5,
            ..ok.clone()
        }
        .validate()
        .unwrap_err()
        .contains("heads"));
        assert!(Shape {
            kv_heads: 3,
            ..ok.clone()
        }
        .validate()
        .unwrap_err()
        .contains("kv_heads"));
        assert!(Shape {
            hidden: 36,
            heads: 12,
            kv_heads: 12,
            ..ok.clone()
        }
        .validate()
        .unwrap_err()
        .contains("odd"));
        assert!(Shape { layers: 0, ..ok }.validate().is_err());
    }
}
