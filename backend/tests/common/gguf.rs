//! A tiny recurrent (Mamba) model written as GGUF, for tests of how the
//! engine treats models whose state cannot be rolled back. Its weights are
//! random; its tokenizer is copied from a real model, so that it loads and
//! shares that model's vocabulary.

use std::io::{self, Read, Write};
use std::path::Path;

/// GGUF's value type of a string and of an array.
const STRING: u32 = 8;
const ARRAY: u32 = 9;
/// Bytes of each fixed-size GGUF value type, by type id.
fn fixed_size(kind: u32) -> Option<usize> {
    match kind {
        0 | 1 | 7 => Some(1),
        2 | 3 => Some(2),
        4..=6 => Some(4),
        10..=12 => Some(8),
        _ => None,
    }
}

fn read_u32(r: &mut impl Read) -> io::Result<u32> {
    let mut b = [0; 4];
    r.read_exact(&mut b)?;
    Ok(u32::from_le_bytes(b))
}

fn read_u64(r: &mut impl Read) -> io::Result<u64> {
    let mut b = [0; 8];
    r.read_exact(&mut b)?;
    Ok(u64::from_le_bytes(b))
}

fn read_string(r: &mut impl Read) -> io::Result<Vec<u8>> {
    let n = read_u64(r)? as usize;
    let mut s = vec![0; n];
    r.read_exact(&mut s)?;
    Ok(s)
}

/// The encoded bytes of one value of type `kind` (type id not included).
fn read_value(r: &mut impl Read, kind: u32) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    match kind {
        STRING => {
            let s = read_string(r)?;
            out.extend((s.len() as u64).to_le_bytes());
            out.extend(s);
        }
        ARRAY => {
            let element = read_u32(r)?;
            let n = read_u64(r)?;
            out.extend(element.to_le_bytes());
            out.extend(n.to_le_bytes());
            for _ in 0..n {
                out.extend(read_value(r, element)?);
            }
        }
        k => {
            let size = fixed_size(k)
                .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "unknown GGUF type"))?;
            let mut b = vec![0; size];
            r.read_exact(&mut b)?;
            out.extend(b);
        }
    }
    Ok(out)
}

/// The `tokenizer.*` key-value pairs of a GGUF file, encoded as they stand.
fn tokenizer_pairs(path: &Path) -> io::Result<Vec<(String, u32, Vec<u8>)>> {
    let mut r = io::BufReader::new(std::fs::File::open(path)?);
    let mut magic = [0; 4];
    r.read_exact(&mut magic)?;
    assert_eq!(&magic, b"GGUF");
    let _version = read_u32(&mut r)?;
    let _tensors = read_u64(&mut r)?;
    let pairs = read_u64(&mut r)?;
    let mut out = Vec::new();
    for _ in 0..pairs {
        let key = String::from_utf8_lossy(&read_string(&mut r)?).into_owned();
        let kind = read_u32(&mut r)?;
        let value = read_value(&mut r, kind)?;
        if key.starts_with("tokenizer.") {
            out.push((key, kind, value));
        }
    }
    Ok(out)
}

fn put_string(out: &mut Vec<u8>, s: &str) {
    out.extend((s.len() as u64).to_le_bytes());
    out.extend(s.as_bytes());
}

/// Write a two-layer Mamba model with the tokenizer of `tokenizer_from`
/// (whose vocabulary has `vocab` tokens) to `path`.
pub fn write_tiny_mamba(tokenizer_from: &Path, vocab: usize, path: &Path) -> io::Result<()> {
    const EMBD: usize = 16;
    const INNER: usize = 2 * EMBD;
    const STATE: usize = 4;
    const CONV: usize = 4;
    const DT_RANK: usize = 2;
    const LAYERS: usize = 2;
    let mut pairs: Vec<(String, u32, Vec<u8>)> = Vec::new();
    let string = |key: &str, value: &str| {
        let mut v = Vec::new();
        put_string(&mut v, value);
        (key.to_string(), STRING, v)
    };
    pairs.push(string("general.architecture", "mamba"));
    pairs.push(string("general.name", "specdec test mamba"));
    let u32_pair = |key: &str, value: u32| (key.to_string(), 4u32, value.to_le_bytes().to_vec());
    pairs.push(u32_pair("mamba.context_length", 4096));
    pairs.push(u32_pair("mamba.embedding_length", EMBD as u32));
    pairs.push(u32_pair("mamba.block_count", LAYERS as u32));
    pairs.push(u32_pair("mamba.feed_forward_length", 0));
    pairs.push(u32_pair("mamba.attention.head_count", 0));
    pairs.push(u32_pair("mamba.ssm.conv_kernel", CONV as u32));
    pairs.push(u32_pair("mamba.ssm.inner_size", INNER as u32));
    pairs.push(u32_pair("mamba.ssm.state_size", STATE as u32));
    pairs.push(u32_pair("mamba.ssm.time_step_rank", DT_RANK as u32));
    pairs.push((
        "mamba.attention.layer_norm_rms_epsilon".into(),
        6,
        1e-5f32.to_le_bytes().to_vec(),
    ));
    pairs.push(u32_pair("general.file_type", 0));
    pairs.extend(tokenizer_pairs(tokenizer_from)?);

    // Tensors (ggml order: the first dimension varies fastest), all F32.
    let mut tensors: Vec<(String, Vec<usize>)> = vec![
        ("token_embd.weight".into(), vec![EMBD, vocab]),
        ("output_norm.weight".into(), vec![EMBD]),
    ];
    for i in 0..LAYERS {
        let b = |name: &str| format!("blk.{i}.{name}");
        tensors.extend([
            (b("attn_norm.weight"), vec![EMBD]),
            (b("ssm_in.weight"), vec![EMBD, 2 * INNER]),
            (b("ssm_conv1d.weight"), vec![CONV, INNER]),
            (b("ssm_conv1d.bias"), vec![INNER]),
            (b("ssm_x.weight"), vec![INNER, DT_RANK + 2 * STATE]),
            (b("ssm_dt.weight"), vec![DT_RANK, INNER]),
            (b("ssm_dt.bias"), vec![INNER]),
            (b("ssm_a"), vec![STATE, INNER]),
            (b("ssm_d"), vec![INNER]),
            (b("ssm_out.weight"), vec![INNER, EMBD]),
        ]);
    }
    const ALIGN: usize = 32;
    let mut header = Vec::new();
    header.extend(b"GGUF");
    header.extend(3u32.to_le_bytes());
    header.extend((tensors.len() as u64).to_le_bytes());
    header.extend((pairs.len() as u64).to_le_bytes());
    for (key, kind, value) in &pairs {
        put_string(&mut header, key);
        header.extend(kind.to_le_bytes());
        header.extend(value);
    }
    let mut offset = 0usize;
    let mut data = Vec::new();
    // A fixed pseudo-random sequence: small weights, negative `ssm_a`.
    let mut state = 0x2545_f491_u32;
    for (name, dims) in &tensors {
        put_string(&mut header, name);
        header.extend((dims.len() as u32).to_le_bytes());
        for &d in dims {
            header.extend((d as u64).to_le_bytes());
        }
        header.extend(0u32.to_le_bytes()); // F32
        header.extend((offset as u64).to_le_bytes());
        let count: usize = dims.iter().product();
        for _ in 0..count {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            let unit = (state as f32 / u32::MAX as f32) - 0.5;
            let value = if name.ends_with("norm.weight") {
                1.0
            } else if name.ends_with("ssm_a") {
                -1.0 - unit.abs()
            } else {
                unit * 0.2
            };
            data.extend(value.to_le_bytes());
        }
        offset += count * 4;
        while data.len() % ALIGN != 0 {
            data.push(0);
            offset += 1;
        }
    }
    while header.len() % ALIGN != 0 {
        header.push(0);
    }
    let mut file = std::fs::File::create(path)?;
    file.write_all(&header)?;
    file.write_all(&data)?;
    Ok(())
}
