//! `comer-port presets`.

/// Arguments of `comer-port presets`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Arguments (not available yet).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, hide = true)]
    pub rest: Vec<String>,
}

pub fn run(_args: Args) -> anyhow::Result<i32> {
    super::not_yet("presets", 3)
}
