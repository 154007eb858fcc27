//! Family `mae`: facebookresearch/mae pre-training checkpoints (encoder plus decoder). Rules in `mappings/mae.toml`.

/// The mapping file, embedded.
pub const MAPPING: &str = include_str!("../../mappings/mae.toml");

/// Whether a state dict's keys look like this family.
pub fn looks_like(keys: &[&str]) -> bool {
    let has = |k: &str| keys.contains(&k);
    let any = |p: &str| keys.iter().any(|k| k.starts_with(p));
    let _ = (&has, &any);
    any("decoder_") && has("blocks.0.attn.qkv.weight")
}
