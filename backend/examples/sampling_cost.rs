//! What turning one position's logits into a token costs, on a real model's
//! logits: greedy argmax, the sampling distribution with and without cuts,
//! and the same cuts by a full sort of the vocabulary (the definition the
//! engine's partial selection is tested against). The engine pays one of
//! these per verified position and per draft step; its calibration measures
//! the greedy and plain-temperature cases at start-up.
//!
//! cargo run --release --example sampling_cost -- MODEL.gguf [REPEATS]

use std::num::NonZeroU32;
use std::time::Instant;

use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::LlamaModel;
use specdec_backend::speculative::sampling::{self, SamplingParams};

/// Median milliseconds of `work` over `repeats` runs.
fn median_ms<T>(repeats: usize, mut work: impl FnMut() -> T) -> f64 {
    let mut times: Vec<f64> = (0..repeats)
        .map(|_| {
            let started = Instant::now();
            std::hint::black_box(work());
            started.elapsed().as_secs_f64() * 1000.0
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let Some(path) = args.get(1) else {
        anyhow::bail!("usage: sampling_cost MODEL.gguf [REPEATS]");
    };
    let repeats: usize = args.get(2).map_or(Ok(50), |r| r.parse())?;
    let backend = specdec_backend::engine::runtime::backend()?;
    let model = LlamaModel::load_from_file(backend, path, &LlamaModelParams::default())?;
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get() as i32);
    let params = LlamaContextParams::default()
        .with_n_ctx(NonZeroU32::new(1024))
        .with_n_threads(threads)
        .with_n_threads_batch(threads);
    let mut ctx = model.new_context(backend, params)?;
    // Logits in the middle of a translation: a peaked, realistic shape.
    let prompt = "<|im_start|>user\nTranslate the following German text into English. Reply with the translation only.\n\nDas Paketverwaltungssystem installiert Programme und hält sie aktuell.<|im_end|>\n<|im_start|>assistant\nThe package management system installs";
    let tokens = model.vocab().tokenize(prompt.as_bytes(), true, true);
    let mut batch = LlamaBatch::new(tokens.len(), 1);
    batch.add_sequence(&tokens, 0, false)?;
    ctx.decode(&mut batch)?;
    let logits = ctx.get_logits_ith(batch.n_tokens() - 1).to_vec();

    let plain = SamplingParams {
        temperature: 1.0,
        ..SamplingParams::default()
    };
    let top_p = SamplingParams {
        top_p: 0.95,
        ..plain.clone()
    };
    let min_p = SamplingParams {
        min_p: 0.05,
        ..plain.clone()
    };
    let flat = SamplingParams {
        temperature: 1.5,
        top_p: 0.99,
        ..plain.clone()
    };
    println!(
        "vocabulary {} tokens, median of {repeats} runs, ms per position",
        logits.len()
    );
    println!("| transform | partial selection | full sort | tokens kept |");
    println!("| --- | ---: | ---: | ---: |");
    println!(
        "| argmax (greedy) | {:.3} | | 1 |",
        median_ms(repeats, || sampling::argmax(&logits))
    );
    println!(
        "| top probability (draft `p_min`) | {:.3} | | |",
        median_ms(repeats, || sampling::top_probability(&logits))
    );
    for (name, p) in [
        ("temperature 1", &plain),
        ("top-p 0.95", &top_p),
        ("min-p 0.05", &min_p),
        ("temperature 1.5, top-p 0.99", &flat),
    ] {
        let fast = median_ms(repeats, || sampling::distribution(&logits, p));
        let sorted = median_ms(repeats, || sampling::distribution_by_full_sort(&logits, p));
        let kept = sampling::distribution(&logits, p).entries().len();
        anyhow::ensure!(
            sampling::distribution(&logits, p) == sampling::distribution_by_full_sort(&logits, p),
            "{name}: the two transforms differ"
        );
        println!("| {name} | {fast:.3} | {sorted:.3} | {kept} |");
    }
    Ok(())
}
