//! Family `uniperceiver`: Uni-Perceiver release checkpoints (fused_encoder.*). Rules in `mappings/uniperceiver.toml`.

/// The mapping file, embedded.
pub const MAPPING: &str = include_str!("../../mappings/uniperceiver.toml");

/// Whether a state dict's keys look like this family.
pub fn looks_like(keys: &[&str]) -> bool {
    let has = |k: &str| keys.contains(&k);
    let any = |p: &str| keys.iter().any(|k| k.starts_with(p));
    let _ = (&has, &any);
    any("fused_encoder.layers.")
}
