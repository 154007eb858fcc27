//! Writes a BEiTv2-large-shaped `{"model": state_dict}` torch zip checkpoint in the unilm
//! fine-tuned layout (304 M parameters, ~1.22 GB) with seeded values, for the import
//! benchmark (`docs/performance.md`). Usage: `import_bench_source OUT.pth`.

use comer_port::export::atomic::WriteError;
use comer_port::export::safetensors::OutTensor;
use comer_port::formats::DType;

fn main() -> Result<(), WriteError> {
    let out = std::env::args().nth(1).unwrap_or_else(|| "beitv2_large_synth.pth".into());
    let (d, depth, heads) = (1024usize, 24usize, 16usize);
    let mut t = vec![(String::from("cls_token"), vec![1, 1, d], DType::F32)];
    t.push(("patch_embed.proj.weight".into(), vec![d, 3, 16, 16], DType::F32));
    t.push(("patch_embed.proj.bias".into(), vec![d], DType::F32));
    for i in 0..depth {
        let p = format!("blocks.{i}");
        let f = |n: &str, s: Vec<usize>| (format!("{p}.{n}"), s, DType::F32);
        t.push(f("gamma_1", vec![d]));
        t.push(f("gamma_2", vec![d]));
        t.push(f("norm1.weight", vec![d]));
        t.push(f("norm1.bias", vec![d]));
        t.push(f("attn.q_bias", vec![d]));
        t.push(f("attn.v_bias", vec![d]));
        t.push(f("attn.relative_position_bias_table", vec![27 * 27 + 3, heads]));
        t.push((format!("{p}.attn.relative_position_index"), vec![197, 197], DType::I64));
        t.push(f("attn.qkv.weight", vec![3 * d, d]));
        t.push(f("attn.proj.weight", vec![d, d]));
        t.push(f("attn.proj.bias", vec![d]));
        t.push(f("norm2.weight", vec![d]));
        t.push(f("norm2.bias", vec![d]));
        t.push(f("mlp.fc1.weight", vec![4 * d, d]));
        t.push(f("mlp.fc1.bias", vec![4 * d]));
        t.push(f("mlp.fc2.weight", vec![d, 4 * d]));
        t.push(f("mlp.fc2.bias", vec![d]));
    }
    t.push(("fc_norm.weight".into(), vec![d], DType::F32));
    t.push(("fc_norm.bias".into(), vec![d], DType::F32));
    t.push(("head.weight".into(), vec![1000, d], DType::F32));
    t.push(("head.bias".into(), vec![1000], DType::F32));
    let tensors: Vec<OutTensor> =
        t.iter().map(|(n, s, dt)| OutTensor { name: n.clone(), shape: s.clone(), dtype: *dt }).collect();
    comer_port::export::pth::write_with_root(std::path::Path::new(&out), true, "model", &tensors, &[], |i| -> Result<Vec<u8>, comer_port::export::atomic::WriteError> {
        let tt = &tensors[i];
        let n: usize = tt.shape.iter().product();
        if tt.dtype == DType::I64 {
            return Ok(comer_port::model::relative_position_index(14)
                .into_iter()
                .chain(std::iter::repeat(0))
                .take(n)
                .flat_map(|v| v.to_le_bytes())
                .collect());
        }
        let mut rng = comer_port::families::init::stream(1, &tt.name);
        Ok((0..n).flat_map(|_| (((rng.next_u64() >> 40) as f32 / (1u32 << 24) as f32 - 0.5) * 0.04).to_le_bytes()).collect())
    })?;
    eprintln!("wrote {out}");
    Ok(())
}
