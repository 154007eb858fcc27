//! `families/`: the source-checkpoint families, as a registry. A family is one
//! `families/<family>.rs` implementing [`Family`] (detection from keys and shapes → the
//! source's own [`SourceConfig`], the source's own plain-ViT forward used for parity, its
//! [`Fit`] with upstream's layout) plus its rules in `mappings/<family>.toml`, listed once in
//! [`FAMILIES`]. The shared remapping machinery (`mapping.rs`, `transforms.rs`, `init.rs`)
//! turns a family's state dict into an upstream ViT-CoMer layout.
//!
//! Adding a family: one file here, one mapping file, one line in [`FAMILIES`]; the compiler
//! asks for every method.
pub mod augreg_npz;
pub mod beit;
pub mod clip;
pub mod deit;
pub mod deit3;
pub mod detect;
pub mod dinov2;
pub mod error;
pub mod hf_vit;
pub mod init;
pub mod mae;
#[allow(missing_docs)] // docs land with the families/verify restructure
pub mod mapping;
pub mod siglip;
pub mod timm_vit;
pub mod transforms;
pub mod uniperceiver;

pub use detect::{Detection, Keys, Meta, SourceConfig};
pub use error::ImportError;

use crate::model::Flavor;
use crate::model::plain_vit::{self, LazyVit, PlainVit, Weights};

/// LayerNorm eps of upstream's ViT blocks.
pub const TARGET_EPS: f64 = 1e-6;

/// How far a family's source forward and the plain ViT-CoMer layout can agree. Declared by
/// the family; `verify::policy` turns it into the bound a parity check is held to.
#[derive(Debug, Clone, PartialEq)]
pub enum Fit {
    /// Renames, splits, concatenations and transposes only: exact.
    Exact,
    /// Exact tensors, but the source's LayerNorm eps (`from`) becomes upstream's 1e-6.
    EpsChange {
        /// The source's eps.
        from: f64,
    },
    /// The source computes something slightly different that upstream's layout cannot say
    /// (SigLIP's tanh GELU against upstream's erf GELU): a declared approximation, held to
    /// `bound` and reported with its measured deviation.
    Approximation {
        /// What differs.
        what: String,
        /// The relative-error bound it is held to.
        bound: f64,
    },
    /// Something the source computes has no place in the target layout: no stated bound,
    /// the figures are reported as skipped with this reason.
    Inexpressible(String),
}

/// One source family. Implemented once per `families/<family>.rs`, listed in [`FAMILIES`].
pub trait Family: Sync {
    /// Name as `inspect` prints it and `--family` takes it; also the mapping file's stem.
    fn name(&self) -> &'static str;
    /// The rules of `mappings/<name>.toml`, embedded.
    fn mapping(&self) -> &'static str;
    /// Why `keys` are this family's, or `None`. Asked in [`FAMILIES`] order, so a family
    /// only needs to tell itself apart from those listed after it.
    fn recognise(&self, keys: &Keys<'_>, meta: &Meta) -> Option<String>;
    /// The source's own config from its keys, shapes and metadata (`config.json`), with
    /// every assumption named; `Err(reason)` when the keys do not hold this family's model.
    fn config(&self, keys: &Keys<'_>, meta: &Meta) -> Result<SourceConfig, String>;
    /// The family's own plain-ViT forward on its own tensor names (wrapper stripped),
    /// mirroring the source library: what mapping parity and the `vit_tokens` goldens run.
    fn source_vit(&self, w: &Weights, sc: &SourceConfig) -> plain_vit::Result<PlainVit> {
        self.source_lazy(w, sc)?.build()
    }
    /// [`Family::source_vit`] with its blocks read one at a time (what mapping parity streams).
    fn source_lazy<'w>(&self, w: &'w Weights, sc: &SourceConfig) -> plain_vit::Result<LazyVit<'w>>;
    /// How far this family's function and upstream's layout agree for this source.
    fn fit(&self, sc: &SourceConfig) -> Fit {
        eps_fit(sc.layernorm_eps)
    }
    /// The flavour whose presets `import` picks from when no target is given
    /// (`target::pick_preset`): the upstream configs built for this family's weights. The
    /// ADE20K `vit-comer-seg` presets by default; BEiT and DINOv2 say otherwise.
    fn preset_flavor(&self) -> Flavor {
        Flavor::Seg
    }
}

/// Exact, or an eps change when the source's LayerNorm eps is not upstream's.
pub fn eps_fit(eps: f64) -> Fit {
    if (eps - TARGET_EPS).abs() > 1e-12 { Fit::EpsChange { from: eps } } else { Fit::Exact }
}

/// Every family, most specific first: the first that recognises a state dict is detected.
pub static FAMILIES: &[&dyn Family] = &[
    &hf_vit::HfVit,
    &siglip::Siglip,
    &augreg_npz::AugregNpz,
    &clip::Clip,
    &uniperceiver::Uniperceiver,
    &beit::Beit,
    &deit3::Deit3,
    &dinov2::Dinov2,
    &mae::Mae,
    &deit::Deit,
    &timm_vit::TimmVit,
];

/// The family called `name`.
pub fn by_name(name: &str) -> Result<&'static dyn Family, ImportError> {
    FAMILIES
        .iter()
        .copied()
        .find(|f| f.name() == name)
        .ok_or_else(|| ImportError::NoSuchFamily { name: name.to_string(), known: names().join(", ") })
}

/// Every family's name, in registry order.
pub fn names() -> Vec<&'static str> {
    FAMILIES.iter().map(|f| f.name()).collect()
}

/// The compiled mapping of a family by name.
pub fn mapping_for(name: &str) -> Result<mapping::Mapping, ImportError> {
    mapping::Mapping::parse(by_name(name)?.mapping())
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_mapping_compiles_and_names_itself() {
        for f in super::FAMILIES {
            let m = super::mapping_for(f.name()).unwrap_or_else(|e| panic!("{}: {e}", f.name()));
            assert_eq!(m.family, f.name());
            assert!(!m.map.is_empty());
        }
    }

    #[test]
    fn names_are_unique() {
        let mut n = super::names();
        n.sort();
        n.dedup();
        assert_eq!(n.len(), super::FAMILIES.len());
    }
}
