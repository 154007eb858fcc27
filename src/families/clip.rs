//! Family `clip`: OpenAI CLIP / open_clip visual towers, plain state dicts and TorchScript archives. Rules in `mappings/clip.toml`.

/// The mapping file, embedded.
pub const MAPPING: &str = include_str!("../../mappings/clip.toml");

/// Whether a state dict's keys look like this family.
pub fn looks_like(keys: &[&str]) -> bool {
    let has = |k: &str| keys.contains(&k);
    let any = |p: &str| keys.iter().any(|k| k.starts_with(p));
    let _ = (&has, &any);
    has("visual.conv1.weight") || (has("conv1.weight") && any("transformer.resblocks."))
}
