//! Family `beit`: microsoft/unilm BEiT / BEiTv2 checkpoints (per-block or shared relative-position tables). Rules in `mappings/beit.toml`.

/// The mapping file, embedded.
pub const MAPPING: &str = include_str!("../../mappings/beit.toml");

/// Whether a state dict's keys look like this family.
pub fn looks_like(keys: &[&str]) -> bool {
    let has = |k: &str| keys.contains(&k);
    let any = |p: &str| keys.iter().any(|k| k.starts_with(p));
    let _ = (&has, &any);
    has("blocks.0.attn.q_bias") || any("rel_pos_bias.")
}
