//! `families/`: detect a checkpoint's source family, infer its config, and remap it into an
//! upstream ViT-CoMer layout with the rules in `mappings/<family>.toml`.
pub mod detect;
