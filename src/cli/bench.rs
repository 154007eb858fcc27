//! `comer-port bench`: median forward latency and peak memory of a preset on seeded random
//! weights and one random S×S image (BENCHMARKS.md, "Reference forward").

use std::collections::HashMap;
use std::time::Instant;

use candle_core::{Device, Tensor};

use comer_port::model::{Comer, Store, presets};

/// Arguments of `comer-port bench`.
#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:\n  comer-port bench --preset vit-comer-s-seg\n  \
comer-port bench --preset vit-comer-t-seg --size 224 --runs 3 --threads 4 --profile\n  \
comer-port bench --preset beit-comer-l-codetr --size 512 --json\n\n\
Exit codes: 0 ok, 2 usage, 3 bad input.")]
pub struct Args {
    /// Preset name (see `comer-port presets`).
    #[arg(long, value_parser = super::presets::parser())]
    pub preset: String,
    /// Square input size (a multiple of 32, at most 4096).
    #[arg(long, default_value_t = 512, value_parser = parse_size)]
    pub size: usize,
    /// Worker threads (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Timed runs (after one warm-up run).
    #[arg(long, default_value_t = 5)]
    pub runs: usize,
    /// Seed of the random weights and image.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Print where the time of the timed runs goes, per forward stage.
    #[arg(long)]
    pub profile: bool,
    /// One JSON object on stdout.
    #[arg(long)]
    pub json: bool,
}

/// `--size`: what `export onnx --input-size` takes for one side (a positive multiple of 32, at
/// most `onnx::MAX_INPUT_SIDE`), so a bad size is a usage error before any weight is made.
fn parse_size(s: &str) -> Result<usize, String> {
    let v = s.trim().parse::<usize>().map_err(|_| format!("'{s}' is not a size in pixels (e.g. 512)"))?;
    comer_port::export::onnx::check_input_size(v, v).map_err(|e| e.to_string())?;
    Ok(v)
}

/// xorshift64*: a small seeded generator, enough for benchmark weights.
struct Rng(u64);

impl Rng {
    fn next_f32(&mut self) -> f32 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let v = self.0.wrapping_mul(0x2545_f491_4f6c_dd1d);
        (v >> 40) as f32 / (1u64 << 24) as f32
    }
    /// Uniform in [-a, a).
    fn uniform(&mut self, a: f32) -> f32 {
        (self.next_f32() * 2.0 - 1.0) * a
    }
}

/// Seeded random weights with a preset's exact layout (float tensors only; int64 buffers
/// are left out, as `--no-buffers` artifacts do). Norm weights and variances near 1.
pub fn random_weights(preset: &str, seed: u64) -> anyhow::Result<HashMap<String, Tensor>> {
    let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let mut out = HashMap::new();
    for (name, shape, dtype) in presets::preset_layout(preset)? {
        if !dtype.to_ascii_lowercase().contains("float") {
            continue;
        }
        let n: usize = shape.iter().product();
        let near_one = name.ends_with("running_var") || (shape.len() == 1 && name.ends_with("norm.weight"));
        let v: Vec<f32> = (0..n)
            .map(|_| if near_one { 1.0 + rng.uniform(0.1).abs() } else { rng.uniform(0.05) })
            .collect();
        out.insert(name, Tensor::from_vec(v, shape, &Device::Cpu)?);
    }
    Ok(out)
}

/// Peak resident memory (VmHWM) in bytes, where /proc is available.
pub fn peak_rss_bytes() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

pub fn run(args: Args) -> anyhow::Result<i32> {
    if let Some(n) = args.threads {
        rayon::ThreadPoolBuilder::new().num_threads(n).build_global()?;
    }
    let threads = rayon::current_num_threads();
    let cfg = presets::preset(&args.preset)?;
    let model = {
        // The random weights are dropped once the model holds its own copies, as `run`
        // drops its mapped file: the peak is the model's, not the model's plus its source.
        let store = Store::new(random_weights(&args.preset, args.seed)?);
        let model = Comer::new(&store.root(), &cfg)?;
        store.finish()?;
        model
    };
    let mut rng = Rng(args.seed ^ 0x5151_5151 | 1);
    let s = args.size;
    let img: Vec<f32> = (0..cfg.in_chans * s * s).map(|_| rng.uniform(2.0)).collect();
    let img = Tensor::from_vec(img, (1, cfg.in_chans, s, s), &Device::Cpu)?;
    model.forward(&img, "bench")?;
    comer_port::model::profile::enable(args.profile);
    let mut times = Vec::new();
    let cpu0 = comer_port::model::profile::process_cpu();
    for _ in 0..args.runs.max(1) {
        let t = Instant::now();
        model.forward(&img, "bench")?;
        times.push(t.elapsed().as_secs_f64());
    }
    let (wall, cpu) = (times.iter().sum::<f64>(), comer_port::model::profile::process_cpu() - cpu0);
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    let rss = peak_rss_bytes();
    if args.profile {
        // CPU/wall: how many of the worker threads the stage kept busy on average.
        for (stage, secs, cpu_s, calls) in comer_port::model::profile::report() {
            let busy = if secs > 0.0 { cpu_s / secs } else { 0.0 };
            eprintln!("  {stage:<14} {:>8.3} s/run  {busy:>4.2} cores busy  ({calls} calls)", secs / times.len() as f64);
        }
        let busy = if wall > 0.0 { cpu / wall } else { 0.0 };
        eprintln!("  {:<14} {:>8.3} s/run  {busy:>4.2} cores busy", "whole forward", wall / times.len() as f64);
    }
    if args.json {
        let v = serde_json::json!({
            "preset": args.preset, "size": s, "threads": threads, "runs": times.len(),
            "median_s": median, "min_s": times[0], "max_s": times[times.len() - 1],
            "peak_rss_bytes": rss,
        });
        println!("{v}");
    } else {
        println!("{} at {s}×{s}, {threads} thread(s), {} runs", args.preset, times.len());
        println!("median {median:.3} s (min {:.3} s, max {:.3} s)", times[0], times[times.len() - 1]);
        if let Some(r) = rss {
            println!("peak RSS {:.1} MiB", r as f64 / (1 << 20) as f64);
        }
    }
    Ok(super::EXIT_OK)
}
