//! Family `dinov2`: facebookresearch/dinov2 hub checkpoints (patch 14, ls1/ls2, optional registers). Rules in `mappings/dinov2.toml`.

/// The mapping file, embedded.
pub const MAPPING: &str = include_str!("../../mappings/dinov2.toml");

/// Whether a state dict's keys look like this family.
pub fn looks_like(keys: &[&str]) -> bool {
    let has = |k: &str| keys.contains(&k);
    let any = |p: &str| keys.iter().any(|k| k.starts_with(p));
    let _ = (&has, &any);
    has("blocks.0.ls1.gamma") && has("mask_token")
}
