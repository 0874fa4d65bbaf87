//! Diagnostic: are llama.cpp's logits for a position the same whether the
//! token is evaluated alone or inside a batch? Greedy speculative decoding is
//! token-exact only if they are. Prints, per batch size, the largest absolute
//! logit difference against one-token-at-a-time evaluation and whether any
//! argmax flipped. The engine measures the same at start-up on the loaded
//! model (`engine/exactness.rs`) and verifies in passes no longer than what
//! it found exact; this example explores more sizes, contexts and KV types.
//!
//! cargo run --release --example batch_invariance -- MODEL.gguf [TOKENS_TEXT]
//!
//! Environment: `KV_TYPE` (`q8_0`, `f32`; default F16), `PREFIX_TOKENS`
//! (context before the probed tokens, default 20), `NO_REPACK=1` (weights in
//! plain CPU buffers), `SEQS=N` (a context of N sequences, and a pass with
//! one row of each against one token alone), `UNIFIED=1` (one KV cache for
//! all sequences), `CHUNKS=1` (a 512-token prompt read in chunks of 1 to 256
//! tokens against one pass: the next token's logits).

use std::num::NonZeroU32;

use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::token::LlamaToken;

fn eval(ctx: &mut LlamaContext, tokens: &[LlamaToken], start: usize) -> Vec<Vec<f32>> {
    let mut batch = LlamaBatch::new(512, 1);
    for (i, &t) in tokens.iter().enumerate() {
        batch.add(t, (start + i) as i32, &[0], true).unwrap();
    }
    ctx.decode(&mut batch).unwrap();
    (0..tokens.len())
        .map(|i| ctx.get_logits_ith(i as i32).to_vec())
        .collect()
}

fn prefill(ctx: &mut LlamaContext, tokens: &[LlamaToken]) {
    for (i, chunk) in tokens.chunks(256).enumerate() {
        eval(ctx, chunk, i * 256);
    }
}

fn argmax(v: &[f32]) -> usize {
    let mut b = 0;
    for i in 1..v.len() {
        if v[i] > v[b] {
            b = i;
        }
    }
    b
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let path = &args[1];
    let text = args.get(2).cloned().unwrap_or_else(|| {
        "<|im_start|>user\nWrite a Python function that computes the nth Fibonacci number iteratively, with a docstring.<|im_end|>\n<|im_start|>assistant\nHere is a Python function that computes the nth Fibonacci number iteratively:\n\n```python\ndef fibonacci(n):\n    \"\"\"Compute the nth Fibonacci number.".into()
    });
    // llama.cpp as specdec sets it up: the CPU kernel module for this CPU.
    let backend = specdec_backend::engine::runtime::backend().unwrap();
    // NO_REPACK=1: weights in plain CPU buffers (no repacked GEMM kernels).
    let mut model_params = Box::pin(LlamaModelParams::default());
    if std::env::var("NO_REPACK").is_ok_and(|v| v == "1") {
        model_params.as_mut().add_cpu_buft_override(c".*");
    }
    let model = LlamaModel::load_from_file(backend, path, &model_params).unwrap();
    let seqs: u32 = std::env::var("SEQS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get() as i32);
    let params = LlamaContextParams::default()
        .with_n_ctx(NonZeroU32::new(2048 * seqs))
        .with_n_seq_max(seqs)
        .with_kv_unified(std::env::var("UNIFIED").is_ok_and(|v| v == "1"))
        .with_n_threads(threads)
        .with_n_threads_batch(threads);
    let params = match std::env::var("KV_TYPE").ok().as_deref() {
        Some("q8_0") => params
            .with_type_k(llama_cpp_2::context::params::KvCacheType::Q8_0)
            .with_type_v(llama_cpp_2::context::params::KvCacheType::Q8_0),
        Some("f32") => params
            .with_type_k(llama_cpp_2::context::params::KvCacheType::F32)
            .with_type_v(llama_cpp_2::context::params::KvCacheType::F32),
        _ => params,
    };
    let mut ctx = model.new_context(backend, params).unwrap();
    let tokens = model.vocab().tokenize(text.as_bytes(), true, true);
    // CHUNKS=1: read a 512-token prompt in chunks of several sizes and
    // compare the next token's logits with reading it in one pass.
    if std::env::var("CHUNKS").is_ok_and(|v| v == "1") {
        let mut long = tokens.clone();
        while long.len() < 513 {
            long.extend(tokens.clone());
        }
        let prompt = &long[..512];
        let next = long[512];
        let read = |ctx: &mut LlamaContext, c: usize| -> (Vec<f32>, f64) {
            ctx.clear_kv_cache();
            let started = std::time::Instant::now();
            for (i, chunk) in prompt.chunks(c).enumerate() {
                eval(ctx, chunk, i * c);
            }
            let took = started.elapsed().as_secs_f64() * 1000.0 / prompt.len().div_ceil(c) as f64;
            (eval(ctx, &[next], 512).remove(0), took)
        };
        let (whole, took) = read(&mut ctx, 512);
        println!("chunk 512: {took:.0} ms per pass");
        for c in [1usize, 2, 4, 8, 16, 32, 64, 128, 256] {
            let (l, took) = read(&mut ctx, c);
            let d = l
                .iter()
                .zip(&whole)
                .map(|(x, y)| (x - y).abs())
                .fold(0f32, f32::max);
            println!(
                "chunk {c:3}: next-token logits vs one 512 pass: {d:.3e}, {took:.0} ms per pass"
            );
        }
        return;
    }
    // PREFIX_TOKENS: evaluate the first tokens as context (default 20);
    // repeat the text to reach long contexts.
    let prefix: usize = std::env::var("PREFIX_TOKENS")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(20);
    let mut tokens = tokens;
    while tokens.len() < prefix + 35 {
        let again = tokens.clone();
        tokens.extend(again);
    }
    let tokens = &tokens[..prefix + 35];
    let rest = &tokens[prefix..];

    let reference: Vec<Vec<f32>> = {
        ctx.clear_kv_cache();
        prefill(&mut ctx, &tokens[..prefix]);
        let mut out = Vec::new();
        for (i, &t) in rest.iter().enumerate() {
            out.extend(eval(&mut ctx, &[t], prefix + i));
        }
        out
    };
    let timing = std::time::Instant::now();
    {
        ctx.clear_kv_cache();
        prefill(&mut ctx, &tokens[..prefix]);
        for (i, &t) in rest.iter().enumerate() {
            eval(&mut ctx, &[t], prefix + i);
        }
    }
    println!(
        "single tokens: {:.1} ms each",
        timing.elapsed().as_secs_f64() * 1000.0 / rest.len() as f64
    );
    for b in [2usize, 3, 4, 7, 8, 9, 16] {
        ctx.clear_kv_cache();
        prefill(&mut ctx, &tokens[..prefix]);
        let started = std::time::Instant::now();
        let mut max_diff = 0f32;
        let mut flips = 0;
        for (c, chunk) in rest.chunks(b).enumerate() {
            let logits = eval(&mut ctx, chunk, prefix + c * b);
            for (j, l) in logits.iter().enumerate() {
                let r = &reference[c * b + j];
                let d = l
                    .iter()
                    .zip(r)
                    .map(|(x, y)| (x - y).abs())
                    .fold(0f32, f32::max);
                max_diff = max_diff.max(d);
                flips += usize::from(argmax(l) != argmax(r));
            }
        }
        println!(
            "batch {b:2}: max |logit diff| {max_diff:.3e}, argmax flips {flips}/{}, {:.1} ms per pass",
            rest.len(),
            started.elapsed().as_secs_f64() * 1000.0 / rest.len().div_ceil(b) as f64
        );
    }
    // SEQS > 1: one pass with one row per sequence (each sequence holds the
    // same prefix), against the single-token reference.
    if seqs > 1 {
        ctx.clear_kv_cache();
        prefill(&mut ctx, &tokens[..prefix]);
        for s in 1..seqs as i32 {
            ctx.copy_kv_cache_seq(0, s, None, None).unwrap();
        }
        let mut first_batched: Option<Vec<f32>> = None;
        for n in 2..=seqs as usize {
            for s in 0..seqs as i32 {
                ctx.clear_kv_cache_seq(Some(s as u32), Some(prefix as u32), None)
                    .unwrap();
            }
            let mut batch = LlamaBatch::new(512, seqs as i32);
            for s in 0..n {
                batch
                    .add(rest[0], prefix as i32, &[s as i32], true)
                    .unwrap();
            }
            let started = std::time::Instant::now();
            ctx.decode(&mut batch).unwrap();
            let took = started.elapsed().as_secs_f64() * 1000.0;
            let mut max_diff = 0f32;
            let mut rows = Vec::new();
            for s in 0..n {
                let l = ctx.get_logits_ith(s as i32);
                let d = l
                    .iter()
                    .zip(&reference[0])
                    .map(|(x, y)| (x - y).abs())
                    .fold(0f32, f32::max);
                max_diff = max_diff.max(d);
                rows.push(l.to_vec());
            }
            if first_batched.is_none() && n >= 4 {
                first_batched = Some(rows[0].clone());
            }
            let vs_batched: Vec<String> = rows
                .iter()
                .map(|r| match &first_batched {
                    Some(b) => format!(
                        "{:.0e}",
                        r.iter()
                            .zip(b)
                            .map(|(x, y)| (x - y).abs())
                            .fold(0f32, f32::max)
                    ),
                    None => "-".into(),
                })
                .collect();
            println!("{n} sequences, one row each: max |logit diff| {max_diff:.3e}, {took:.1} ms; rows vs 4-row pass: {}", vs_batched.join(" "));
        }
    }
}
