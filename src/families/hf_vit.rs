//! Family `hf-vit`: Hugging Face ViTModel folders (transformers 4.x and 5.x names). Rules in `mappings/hf-vit.toml`.

/// The mapping file, embedded.
pub const MAPPING: &str = include_str!("../../mappings/hf-vit.toml");

/// Whether a state dict's keys look like this family.
pub fn looks_like(keys: &[&str]) -> bool {
    let has = |k: &str| keys.contains(&k);
    let any = |p: &str| keys.iter().any(|k| k.starts_with(p));
    let _ = (&has, &any);
    any("encoder.layer.") && any("embeddings.patch_embeddings.")
}
