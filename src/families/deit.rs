//! Family `deit`: facebookresearch/deit checkpoints (plain and distilled), timm names. Rules in `mappings/deit.toml`.

/// The mapping file, embedded.
pub const MAPPING: &str = include_str!("../../mappings/deit.toml");

/// Whether a state dict's keys look like this family.
pub fn looks_like(keys: &[&str]) -> bool {
    let has = |k: &str| keys.contains(&k);
    let any = |p: &str| keys.iter().any(|k| k.starts_with(p));
    let _ = (&has, &any);
    has("pos_embed") && any("blocks.") && (has("dist_token") || has("head.weight")) && !any("decoder_")
}
