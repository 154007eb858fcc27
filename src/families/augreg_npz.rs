//! Family `augreg-npz`: big_vision / vision_transformer .npz checkpoints (Flax names). Rules in `mappings/augreg-npz.toml`.

/// The mapping file, embedded.
pub const MAPPING: &str = include_str!("../../mappings/augreg-npz.toml");

/// Whether a state dict's keys look like this family.
pub fn looks_like(keys: &[&str]) -> bool {
    let has = |k: &str| keys.contains(&k);
    let any = |p: &str| keys.iter().any(|k| k.starts_with(p));
    let _ = (&has, &any);
    any("Transformer/encoderblock_")
}
