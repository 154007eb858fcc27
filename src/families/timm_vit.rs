//! Family `timm-vit`: timm VisionTransformer state dicts. Rules in `mappings/timm-vit.toml`.

/// The mapping file, embedded.
pub const MAPPING: &str = include_str!("../../mappings/timm-vit.toml");

/// Whether a state dict's keys look like this family.
pub fn looks_like(keys: &[&str]) -> bool {
    let has = |k: &str| keys.contains(&k);
    let any = |p: &str| keys.iter().any(|k| k.starts_with(p));
    let _ = (&has, &any);
    has("pos_embed") && has("blocks.0.attn.qkv.weight")
}
