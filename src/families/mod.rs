//! `families/`: detect a checkpoint's source family, infer its config, and remap it into an
//! upstream ViT-CoMer layout with the rules in `mappings/<family>.toml`.
//!
//! Adding a family: one file here (its embedded mapping and a key-pattern test) plus one
//! `mappings/<family>.toml`, and a line in [`FAMILIES`].
pub mod augreg_npz;
pub mod beit;
pub mod clip;
pub mod deit;
#[allow(missing_docs)] // docs land with the families/verify restructure
pub mod detect;
pub mod dinov2;
pub mod error;
pub mod hf_vit;
pub mod init;
pub mod mae;
#[allow(missing_docs)] // docs land with the families/verify restructure
pub mod mapping;
#[allow(missing_docs)] // docs land with the families/verify restructure
pub mod pipeline;
pub mod timm_vit;
pub mod transforms;
pub mod uniperceiver;

pub use error::ImportError;

/// One family: its name, embedded mapping and key-pattern test.
#[allow(missing_docs)] // docs land with the families/verify restructure
pub struct FamilyEntry {
    pub name: &'static str,
    pub mapping: &'static str,
    pub looks_like: fn(&[&str]) -> bool,
}

/// Every family, most specific first (the first whose pattern matches is guessed).
pub const FAMILIES: &[FamilyEntry] = &[
    FamilyEntry { name: "mae", mapping: mae::MAPPING, looks_like: mae::looks_like },
    FamilyEntry { name: "dinov2", mapping: dinov2::MAPPING, looks_like: dinov2::looks_like },
    FamilyEntry { name: "beit", mapping: beit::MAPPING, looks_like: beit::looks_like },
    FamilyEntry { name: "clip", mapping: clip::MAPPING, looks_like: clip::looks_like },
    FamilyEntry { name: "uniperceiver", mapping: uniperceiver::MAPPING, looks_like: uniperceiver::looks_like },
    FamilyEntry { name: "hf-vit", mapping: hf_vit::MAPPING, looks_like: hf_vit::looks_like },
    FamilyEntry { name: "augreg-npz", mapping: augreg_npz::MAPPING, looks_like: augreg_npz::looks_like },
    FamilyEntry { name: "deit", mapping: deit::MAPPING, looks_like: deit::looks_like },
    FamilyEntry { name: "timm-vit", mapping: timm_vit::MAPPING, looks_like: timm_vit::looks_like },
];

/// The compiled mapping of a family by name.
pub fn mapping_for(name: &str) -> Result<mapping::Mapping, ImportError> {
    let f = FAMILIES.iter().find(|f| f.name == name).ok_or_else(|| ImportError::UnknownFamily {
        reason: format!(
            "no family '{name}' (known: {})",
            FAMILIES.iter().map(|f| f.name).collect::<Vec<_>>().join(", ")
        ),
    })?;
    mapping::Mapping::parse(f.mapping)
}

/// Guess the family from key patterns (used when `detect` has no answer).
pub fn guess(keys: &[&str]) -> Option<&'static str> {
    FAMILIES.iter().find(|f| (f.looks_like)(keys)).map(|f| f.name)
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_mapping_compiles_and_names_itself() {
        for f in super::FAMILIES {
            let m = super::mapping_for(f.name).unwrap_or_else(|e| panic!("{}: {e}", f.name));
            assert_eq!(m.family, f.name);
            assert!(!m.map.is_empty());
        }
    }
}
