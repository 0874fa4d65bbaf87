//! Diagnostic: are llama.cpp's logits for a position the same whether the
//! token is evaluated alone or inside a batch? Greedy speculative decoding is
//! token-exact only if they are. Prints, per batch size, the largest absolute
//! logit difference against one-token-at-a-time evaluation and whether any
//! argmax flipped. The engine measures the same at start-up on the loaded
//! model (`engine/exactness.rs`) and verifies in passes no longer than what
//! it found exact; this example explores more sizes, contexts and KV types.
//!
//! cargo run --release --example batch_invariance -- MODEL.gguf [TOKENS_TEXT]

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
    let model = LlamaModel::load_from_file(backend, path, &LlamaModelParams::default()).unwrap();
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get() as i32);
    let params = LlamaContextParams::default()
        .with_n_ctx(NonZeroU32::new(2048))
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
    for b in [2usize, 3, 4, 7, 8, 9, 16] {
        ctx.clear_kv_cache();
        prefill(&mut ctx, &tokens[..prefix]);
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
            "batch {b:2}: max |logit diff| {max_diff:.3e}, argmax flips {flips}/{}",
            rest.len()
        );
    }
}
