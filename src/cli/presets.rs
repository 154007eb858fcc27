//! `comer-port presets`: the named configurations of real upstream models and where
//! upstream defines them; and the parser every `--preset` argument uses, so an unknown name
//! is a usage error (exit 2, the names listed) before any file is opened.

use comer_port::model::presets::{PRESETS, preset};

/// Arguments of `comer-port presets`.
#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:\n  comer-port presets\n  comer-port presets --json\n  \
comer-port import deit_small_patch16_224.pth --preset vit-comer-s-seg -o comer.safetensors\n\n\
Exit codes: 0 ok, 2 usage.")]
pub struct Args {
    /// One JSON array on stdout (name, flavor, source, constructor kwargs).
    #[arg(long)]
    pub json: bool,
}

/// The value parser of every `--preset NAME`: one of [`comer_port::model::presets::names`].
pub fn parser() -> clap::builder::PossibleValuesParser {
    clap::builder::PossibleValuesParser::new(comer_port::model::presets::names())
}

pub fn run(args: Args) -> anyhow::Result<i32> {
    let mut rows = Vec::new();
    for p in PRESETS {
        let cfg = preset(p.name)?;
        rows.push((p, cfg));
    }
    if args.json {
        let v: Vec<serde_json::Value> = rows
            .iter()
            .map(|(p, c)| serde_json::json!({"name": p.name, "flavor": c.flavor.name(), "source": p.source, "config": c.to_case_json()}))
            .collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        for (p, c) in &rows {
            println!("{:<24} {:<14} D={:<5} depth={:<3} {}", p.name, c.flavor.name(), c.embed_dim, c.depth, p.source);
        }
    }
    Ok(super::EXIT_OK)
}
