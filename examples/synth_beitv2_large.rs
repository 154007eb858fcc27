//! Write a 1.2 GB BEiTv2-large-shaped `{"model": state_dict}` torch zip checkpoint (unilm
//! layout: 24 blocks, embed 1024, 16 heads, per-block relative position tables for a 14×14
//! window, int64 `relative_position_index`) with seeded values, then measure the readers on
//! it: `formats::open` (object tree only), streamed sha256, and materialising every tensor.
//!
//! Mirrors the shapes of microsoft/unilm `beit2` `beit_large_patch16_224` fine-tuned
//! checkpoints (BENCHMARKS.md "Import" input). Usage:
//!
//!     cargo run --release --example synth_beitv2_large -- /tmp/beitv2_large.pth

use comer_port::formats::testkit::{strides, Pickle, ZipWriter};
use std::io::BufWriter;
use std::time::Instant;

/// (name, dtype storage class, shape)
fn layout() -> Vec<(String, &'static str, Vec<i64>)> {
    let d = 1024i64;
    let w = 14i64;
    let table = (2 * w - 1) * (2 * w - 1) + 3;
    let n = w * w + 1;
    let mut v: Vec<(String, &'static str, Vec<i64>)> = vec![
        ("cls_token".into(), "FloatStorage", vec![1, 1, d]),
        ("patch_embed.proj.weight".into(), "FloatStorage", vec![d, 3, 16, 16]),
        ("patch_embed.proj.bias".into(), "FloatStorage", vec![d]),
    ];
    for b in 0..24 {
        let p = |s: &str| format!("blocks.{b}.{s}");
        v.push((p("gamma_1"), "FloatStorage", vec![d]));
        v.push((p("gamma_2"), "FloatStorage", vec![d]));
        v.push((p("norm1.weight"), "FloatStorage", vec![d]));
        v.push((p("norm1.bias"), "FloatStorage", vec![d]));
        v.push((p("attn.q_bias"), "FloatStorage", vec![d]));
        v.push((p("attn.v_bias"), "FloatStorage", vec![d]));
        v.push((p("attn.relative_position_bias_table"), "FloatStorage", vec![table, 16]));
        v.push((p("attn.relative_position_index"), "LongStorage", vec![n, n]));
        v.push((p("attn.qkv.weight"), "FloatStorage", vec![3 * d, d]));
        v.push((p("attn.proj.weight"), "FloatStorage", vec![d, d]));
        v.push((p("attn.proj.bias"), "FloatStorage", vec![d]));
        v.push((p("norm2.weight"), "FloatStorage", vec![d]));
        v.push((p("norm2.bias"), "FloatStorage", vec![d]));
        v.push((p("mlp.fc1.weight"), "FloatStorage", vec![4 * d, d]));
        v.push((p("mlp.fc1.bias"), "FloatStorage", vec![4 * d]));
        v.push((p("mlp.fc2.weight"), "FloatStorage", vec![d, 4 * d]));
        v.push((p("mlp.fc2.bias"), "FloatStorage", vec![d]));
    }
    v.push(("fc_norm.weight".into(), "FloatStorage", vec![d]));
    v.push(("fc_norm.bias".into(), "FloatStorage", vec![d]));
    v.push(("head.weight".into(), "FloatStorage", vec![1000, d]));
    v.push(("head.bias".into(), "FloatStorage", vec![1000]));
    v
}

fn write(path: &std::path::Path) -> std::io::Result<u64> {
    let layout = layout();
    let mut pkl = Pickle::new().empty_dict().str("model").global("collections", "OrderedDict").empty_tuple().reduce().mark();
    for (i, (name, class, shape)) in layout.iter().enumerate() {
        let numel: i64 = shape.iter().product();
        pkl = pkl.str(name).tensor(class, &i.to_string(), numel, 0, shape, &strides(shape));
    }
    pkl = pkl.setitems().setitem().stop();
    let f = std::fs::File::create(path)?;
    let mut z = ZipWriter::new(BufWriter::with_capacity(1 << 22, f));
    z.add("beitv2_large/data.pkl", &pkl.0)?;
    z.add("beitv2_large/byteorder", b"little")?;
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut buf = vec![0u8; 1 << 20];
    for (i, (_, class, shape)) in layout.iter().enumerate() {
        let numel: u64 = shape.iter().map(|&x| x as u64).product();
        let es = if *class == "LongStorage" { 8 } else { 4 };
        let size = numel * es;
        z.add_with(&format!("beitv2_large/data/{i}"), size, |sink| {
            let mut left = size as usize;
            while left > 0 {
                let n = left.min(buf.len());
                for c in buf[..n].chunks_exact_mut(4) {
                    // xorshift64*: small values in [-0.05, 0.05)
                    state ^= state >> 12;
                    state ^= state << 25;
                    state ^= state >> 27;
                    let r = (state.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 40) as f32 / (1u64 << 24) as f32;
                    c.copy_from_slice(&((r - 0.5) * 0.1).to_le_bytes());
                }
                if es == 8 {
                    for c in buf[..n].chunks_exact_mut(8) {
                        c.copy_from_slice(&((state & 0xff) as i64).to_le_bytes());
                    }
                }
                sink(&buf[..n])?;
                left -= n;
            }
            Ok(())
        })?;
    }
    let w = z.finish()?;
    drop(w);
    Ok(std::fs::metadata(path)?.len())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() -> anyhow::Result<()> {
    let path = std::env::args().nth(1).unwrap_or_else(|| "/tmp/beitv2_large_synth.pth".into());
    let path = std::path::PathBuf::from(path);
    if !path.exists() {
        let t = Instant::now();
        let n = write(&path)?;
        println!("wrote {} ({n} bytes) in {:.2} s", path.display(), t.elapsed().as_secs_f64());
    }
    let size = std::fs::metadata(&path)?.len();
    // Warm the page cache once (as the python baseline in BENCHMARKS.md is measured).
    let _ = comer_port::formats::open(&path)?;

    let mut open_t = Vec::new();
    let mut n_tensors = 0;
    for _ in 0..5 {
        let t = Instant::now();
        let ck = comer_port::formats::open(&path)?;
        let d = comer_port::families::detect::detect_checkpoint(&ck);
        n_tensors = ck.tensors().len();
        open_t.push(t.elapsed().as_secs_f64());
        assert_eq!(d.family, "beit");
    }
    println!("open + detect (object tree only): median {:.4} s over 5 runs, {n_tensors} tensors", median(open_t));

    let ck = comer_port::formats::open(&path)?;
    let tensors = ck.tensors();
    let bytes: usize = tensors.iter().map(|(_, t)| t.nbytes()).sum();
    let mut le_t = Vec::new();
    let mut f32_t = Vec::new();
    for _ in 0..3 {
        let t = Instant::now();
        let mut sink = 0u64;
        for (_, v) in &tensors {
            let b = v.to_le_bytes();
            sink = sink.wrapping_add(b.len() as u64 + b.first().copied().unwrap_or(0) as u64);
        }
        std::hint::black_box(sink);
        le_t.push(t.elapsed().as_secs_f64());
        let t = Instant::now();
        let mut acc = 0f32;
        for (_, v) in &tensors {
            let x = v.to_f32();
            acc += x.first().copied().unwrap_or(0.0);
        }
        std::hint::black_box(acc);
        f32_t.push(t.elapsed().as_secs_f64());
    }
    let (le, f) = (median(le_t), median(f32_t));
    println!(
        "materialise every tensor ({:.2} GB): to_le_bytes median {le:.3} s = {:.2} GB/s; to_f32 median {f:.3} s = {:.2} GB/s",
        bytes as f64 / 1e9,
        bytes as f64 / 1e9 / le,
        bytes as f64 / 1e9 / f
    );
    // Memory bandwidth reference: one plain copy of the same number of bytes.
    let src = vec![1u8; bytes.min(1 << 30)];
    let t = Instant::now();
    let dst = src.clone();
    std::hint::black_box(&dst);
    let c = t.elapsed().as_secs_f64();
    println!("reference memcpy of {:.2} GB: {c:.3} s = {:.2} GB/s", src.len() as f64 / 1e9, src.len() as f64 / 1e9 / c);

    use sha2::Digest;
    let t = Instant::now();
    let mut h = sha2::Sha256::new();
    let mut f = std::fs::File::open(&path)?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = std::io::Read::read(&mut f, &mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    let _ = h.finalize();
    println!("sha256 streamed over {:.2} GB: {:.3} s", size as f64 / 1e9, t.elapsed().as_secs_f64());
    Ok(())
}
