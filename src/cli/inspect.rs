//! `comer-port inspect FILE`: container, size, sha256, wrapper structure, tensor table,
//! detected family and inferred config.

use std::path::PathBuf;

/// Arguments of `comer-port inspect`.
#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:\n  comer-port inspect deit_tiny.pth\n  comer-port inspect beitv2.pth --json")]
pub struct Args {
    /// Checkpoint file or Hugging Face folder.
    pub file: PathBuf,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: Args) -> anyhow::Result<i32> {
    let ckpt = crate::formats::open(&args.file)?;
    let tensors = ckpt.tensors();
    if args.json {
        let list: Vec<_> = tensors
            .iter()
            .map(|(n, t)| serde_json::json!({"name": n, "dtype": t.dtype.name(), "shape": t.shape}))
            .collect();
        let v = serde_json::json!({"format": ckpt.format.name(), "tensors": list});
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!("{}: {} ({} tensors)", args.file.display(), ckpt.format.name(), tensors.len());
        for (n, t) in tensors {
            println!("  {n:<60} {:<5} {:?}", t.dtype.name(), t.shape);
        }
    }
    Ok(super::EXIT_OK)
}
