//! One config type for the three upstream ViT-CoMer flavours, read from upstream's own
//! constructor keyword arguments.
//!
//! Mirrors the `__init__` signatures of `detection/.../vit_comer.py` `ViTCoMer` (on
//! `base/vit.py` `TIMMVisionTransformer`), `segmentation/.../vit_comer.py` `ViTCoMer`, and the
//! Co-DETR branch's `beit_comer.py` `BEiTComer2` (on `base/beit.py` `BEiT`), with each
//! flavour's own defaults. JSON in the fixtures' `case.json` shape:
//! `{"flavor": "vit-comer-det", "constructor_kwargs": {...}}` (other top-level fields ignored).
//!
//! Keyword arguments that only affect training (`drop_path_rate`, `with_cp`, `pretrained`, …)
//! are accepted and ignored; any other unknown keyword is an error, so nothing a user wrote is
//! dropped silently.

use crate::text::esc;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value as Json};

/// The three upstream targets. Every name a flavour has — on the command line, in config
/// JSON and metadata, and upstream's module names — is in [`Flavor::names`], once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    /// `vit-comer-det`: detection's `ViTCoMer` on timm blocks.
    Det,
    /// `vit-comer-seg`: segmentation's `ViTCoMer`.
    Seg,
    /// `beit-comer`: the Co-DETR branch's `BEiTComer2` on BEiT blocks.
    Beit,
}

/// What a flavour is called, here and upstream.
#[derive(Debug, PartialEq, Eq)]
pub struct FlavorNames {
    /// The flavour's name (`--flavor`, `"flavor"` in config JSON, `comer_port.flavor`).
    pub name: &'static str,
    /// Upstream's backbone class and the file that defines it.
    pub upstream_class: &'static str,
    pub upstream_file: &'static str,
    /// The interaction's ViT-side module (`CTI_toV` / `Injector`).
    pub tov: &'static str,
    /// The interaction's CNN-side module (`CTI_toC` / `Extractor`).
    pub toc: &'static str,
    /// The last interaction's extra CNN-side modules (a `ModuleList`).
    pub extra: &'static str,
    /// The multi-receptive-field FFN (`MRFP` / `MultiConvFFN`).
    pub mrfp: &'static str,
    /// A block's two layer-scale parameters.
    pub layer_scale: [&'static str; 2],
    /// The constructor keywords that switch the extra, ViT-side and CNN-side modules on.
    pub use_extra_kwarg: &'static str,
    pub use_tov_kwarg: &'static str,
    pub use_toc_kwarg: &'static str,
}

// One row per flavour; `Flavor::names` picks it.
static DET: FlavorNames = FlavorNames {
    name: "vit-comer-det",
    upstream_class: "ViTCoMer",
    upstream_file: "detection/mmdet_custom/models/backbones/vit_comer.py",
    tov: "cti_tov",
    toc: "cti_toc",
    extra: "extra_CTIs",
    mrfp: "mrfp",
    layer_scale: ["gamma1", "gamma2"],
    use_extra_kwarg: "use_extra_CTI",
    use_tov_kwarg: "use_CTI_toV",
    use_toc_kwarg: "use_CTI_toC",
};

static SEG: FlavorNames = FlavorNames {
    name: "vit-comer-seg",
    upstream_class: "ViTCoMer",
    upstream_file: "segmentation/mmseg_custom/models/backbones/vit_comer.py",
    tov: "cti_tov",
    toc: "cti_toc",
    extra: "extra_CTIs",
    mrfp: "mrfp",
    layer_scale: ["gamma1", "gamma2"],
    use_extra_kwarg: "use_extra_CTI",
    use_tov_kwarg: "use_CTI_toV",
    use_toc_kwarg: "use_CTI_toC",
};

static BEIT: FlavorNames = FlavorNames {
    name: "beit-comer",
    upstream_class: "BEiTComer2",
    upstream_file: "mmdet/models/backbones/beit_comer.py (branch Co-DETR)",
    tov: "injector",
    toc: "extractor",
    extra: "extra_extractors",
    mrfp: "multiconv",
    layer_scale: ["gamma_1", "gamma_2"],
    use_extra_kwarg: "use_extra_extractor",
    use_tov_kwarg: "use_injector",
    use_toc_kwarg: "use_extractor",
};

impl Flavor {
    /// Every flavour, in the order they are listed to users.
    pub const ALL: [Flavor; 3] = [Flavor::Det, Flavor::Seg, Flavor::Beit];

    /// Every name of this flavour.
    pub fn names(self) -> &'static FlavorNames {
        match self {
            Flavor::Det => &DET,
            Flavor::Seg => &SEG,
            Flavor::Beit => &BEIT,
        }
    }

    /// The flavour's name: `vit-comer-det`, `vit-comer-seg` or `beit-comer`.
    pub fn name(self) -> &'static str {
        self.names().name
    }

    /// The flavour of that name.
    pub fn parse(s: &str) -> Result<Flavor, ConfigError> {
        Flavor::ALL.into_iter().find(|f| f.name() == s).ok_or_else(|| ConfigError::UnknownFlavor(s.to_string()))
    }

    /// The names as a sentence: "vit-comer-det, vit-comer-seg or beit-comer".
    fn expected() -> String {
        let names: Vec<_> = Flavor::ALL.iter().map(|f| f.name()).collect();
        match names.split_last() {
            Some((last, rest)) if !rest.is_empty() => format!("{} or {last}", rest.join(", ")),
            _ => names.concat(),
        }
    }
}

impl Serialize for Flavor {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl<'de> Deserialize<'de> for Flavor {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Flavor::parse(&String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

/// Why a configuration is refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The JSON did not parse or a field has the wrong type.
    #[error("config: {}", esc(.0))]
    Json(String),
    /// `flavor` is not one of the three upstream targets.
    #[error("config: unknown flavor '{}' (expected {expected})", esc(.0), expected = Flavor::expected())]
    UnknownFlavor(String),
    /// A constructor keyword upstream's class does not take.
    #[error("config: keyword '{key}' is not an argument of upstream's {flavor} constructor", key = esc(.key))]
    UnknownKwarg {
        /// The flavour's name.
        flavor: &'static str,
        /// The keyword.
        key: String,
    },
    /// A value outside the range [`limits`] allows for its field.
    #[error("config: {field} = {value} is out of range (allowed: {allowed})", field = esc(.field), value = esc(.value))]
    OutOfRange {
        /// The constructor keyword (with its index for per-block lists: `window_size[3]`).
        field: String,
        /// The value given.
        value: String,
        /// The allowed values, in words (`1..=64`, `a finite number in (0, 16]`).
        allowed: String,
    },
    /// Values that do not fit together (list lengths, divisibility, grids, interaction
    /// indexes), each named with its value.
    #[error("config: {}", esc(.0))]
    Invalid(String),
    /// No preset with that name.
    #[error("config: unknown preset '{name}' (known: {known})", name = esc(.name), known = esc(.known))]
    UnknownPreset {
        /// The name asked for.
        name: String,
        /// The known names, comma-separated.
        known: String,
    },
}

/// A fully resolved ViT-CoMer configuration: every constructor argument with its flavour's
/// default applied and per-stage/per-block options expanded to lists.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ComerConfig {
    /// Which upstream class.
    pub flavor: Flavor,
    // --- the ViT part ---
    /// Input image side the model is built for (`img_size`).
    pub img_size: usize,
    /// Image side the position embedding was pretrained at (its grid is `pretrain_size / 16`).
    pub pretrain_size: usize,
    /// Patch size (16: upstream's pyramid assumes stride-16 patches).
    pub patch_size: usize,
    /// Input channels.
    pub in_chans: usize,
    /// Token width D.
    pub embed_dim: usize,
    /// Number of ViT blocks.
    pub depth: usize,
    /// Attention heads per ViT block.
    pub num_heads: usize,
    /// MLP hidden width as a multiple of D.
    pub mlp_ratio: f64,
    /// det/seg: `qkv` Linear has a bias. beit: separate `q_bias`/`v_bias` parameters.
    pub qkv_bias: bool,
    /// det/seg: `gamma1`/`gamma2` layer scale (`layer_scale`, on by default).
    pub layer_scale: bool,
    /// Per block: windowed attention.
    pub window_attn: Vec<bool>,
    /// Per block: window size (None where upstream passed None; only read when windowed,
    /// and for beit also the relative-position table size of a global block).
    pub window_size: Vec<Option<usize>>,
    /// beit: absolute position embedding (`use_abs_pos_emb`).
    pub use_abs_pos_emb: bool,
    /// beit: per-block relative position bias (`use_rel_pos_bias`).
    pub use_rel_pos_bias: bool,
    /// beit: one shared table (`use_shared_rel_pos_bias`).
    pub use_shared_rel_pos_bias: bool,
    /// beit: `qk_scale` (None → head_dim^-0.5).
    pub qk_scale: Option<f64>,
    /// `init_values`: CTI/injector `gamma` init, and for beit the blocks' layer-scale init
    /// (beit blocks have `gamma_1/gamma_2` whenever it is not None, 0.0 included).
    pub init_values: Option<f64>,
    // --- the CNN / interaction part ---
    /// Width of the spatial prior module's convolution stem (`conv_inplane`).
    pub conv_inplane: usize,
    /// Sampling points per head and level of deformable attention (`n_points`).
    pub n_points: usize,
    /// Heads of deformable attention (`deform_num_heads`).
    pub deform_num_heads: usize,
    /// Per interaction: the first and last ViT block it spans (`interaction_indexes`).
    pub interaction_indexes: Vec<[usize; 2]>,
    /// ConvFFN in the multi-scale extractors and the extra CTIs (`with_cffn`).
    pub with_cffn: bool,
    /// ConvFFN hidden width as a multiple of D (`cffn_ratio`).
    pub cffn_ratio: f64,
    /// Deformable attention's value width as a multiple of D (`deform_ratio`).
    pub deform_ratio: f64,
    /// Add the ViT tokens to the output pyramid (`add_vit_feature`).
    pub add_vit_feature: bool,
    /// det/seg `use_extra_CTI`, beit `use_extra_extractor`.
    pub use_extra_cti: bool,
    /// Per interaction: det/seg `use_CTI_toV`, beit `use_injector`.
    pub use_cti_tov: Vec<bool>,
    /// Per interaction: det/seg `use_CTI_toC`, beit `use_extractor`.
    pub use_cti_toc: Vec<bool>,
    /// Per interaction: `cnn_feature_interaction`.
    pub cnn_feature_interaction: Vec<bool>,
    /// det: `extra_num` (default 4); seg and beit always build 4 extra CTIs.
    pub extra_num: usize,
    /// seg: MRFP hidden = `dim_ratio`·D (default 6.0). det/beit: hidden = 0.5·D.
    pub dim_ratio: f64,
}

/// Arguments that only matter for training or logging: accepted, ignored.
const IGNORED_KWARGS: &[&str] = &[
    "drop_rate",
    "attn_drop_rate",
    "drop_path_rate",
    "with_cp",
    "use_checkpoint",
    "pretrained",
    "num_classes",
    "version",
    "residual_indices",
    "norm_layer",
    "act_layer",
    "embed_layer",
    "hybrid_backbone",
    "out_indices",
    "init_cfg",
    "type",
];

/// The allowed values of every numeric field, checked by [`ComerConfig::validate`] (and
/// `depth` by the parser before any per-block list is built). Generous around upstream's own
/// configs (ViT-L: D 1024, depth 24, 16 heads; windows 14 and 56; 4 points; conv_inplane 64;
/// ratios 0.25–6), and small enough that nothing a config alone sizes — per-block lists,
/// relative-position tables and their (w²)² indexes, position grids, fresh parameters — can
/// exhaust memory or overflow before the weights are read. `docs/guarantees.md` lists them.
pub mod limits {
    use std::ops::RangeInclusive;

    /// `depth`: ViT blocks.
    pub const DEPTH: RangeInclusive<usize> = 1..=64;
    /// `embed_dim`: the token width D.
    pub const EMBED_DIM: RangeInclusive<usize> = 1..=8192;
    /// `num_heads`: attention heads per ViT block.
    pub const NUM_HEADS: RangeInclusive<usize> = 1..=256;
    /// `deform_num_heads`: heads of deformable attention.
    pub const DEFORM_NUM_HEADS: RangeInclusive<usize> = 1..=256;
    /// `patch_size`: upstream's pyramid assumes stride-16 patches.
    pub const PATCH_SIZE: RangeInclusive<usize> = 16..=16;
    /// `img_size` and `pretrain_size`, in pixels (and a multiple of `patch_size`).
    pub const IMAGE_SIZE: RangeInclusive<usize> = 16..=4096;
    /// `in_chans`: input channels.
    pub const IN_CHANS: RangeInclusive<usize> = 1..=64;
    /// Every `window_size` entry (a windowed block's window; a BEiT block's table side).
    pub const WINDOW_SIZE: RangeInclusive<usize> = 1..=64;
    /// `conv_inplane`: the spatial prior module's stem width (its widest conv has 4×).
    pub const CONV_INPLANE: RangeInclusive<usize> = 1..=512;
    /// `n_points`: sampling points per head and level.
    pub const N_POINTS: RangeInclusive<usize> = 1..=32;
    /// `extra_num`: extra CTIs on the last interaction (det; seg and beit build 4).
    pub const EXTRA_NUM: RangeInclusive<usize> = 0..=16;
    /// `mlp_ratio`, `cffn_ratio`, `deform_ratio`, `dim_ratio`: finite, above 0, at most this.
    pub const RATIO_MAX: f64 = 16.0;
    /// `qk_scale` (when given): finite, above 0, at most this.
    pub const QK_SCALE_MAX: f64 = 1e3;
    /// `init_values` (when given): finite, at most this in magnitude.
    pub const INIT_VALUES_MAX: f64 = 1e3;
}

/// `value` within `range`, or [`ConfigError::OutOfRange`] naming `field`.
pub(crate) fn in_range(field: &str, value: usize, range: &std::ops::RangeInclusive<usize>) -> Result<(), ConfigError> {
    if range.contains(&value) {
        return Ok(());
    }
    let allowed = if range.start() == range.end() { range.start().to_string() } else { format!("{}..={}", range.start(), range.end()) };
    Err(ConfigError::OutOfRange { field: field.into(), value: value.to_string(), allowed })
}

/// A float field: finite and within `(0, max]` (`positive`) or `[-max, max]`.
fn in_float_range(field: &str, value: f64, max: f64, positive: bool) -> Result<(), ConfigError> {
    let ok = value.is_finite() && if positive { value > 0.0 && value <= max } else { value.abs() <= max };
    if ok {
        return Ok(());
    }
    let allowed = if positive { format!("a finite number in (0, {max}]") } else { format!("a finite number in [-{max}, {max}]") };
    Err(ConfigError::OutOfRange { field: field.into(), value: value.to_string(), allowed })
}

/// `int(d * ratio)`, as upstream sizes hidden widths (Python's `int` truncates).
pub fn scaled(d: usize, ratio: f64) -> usize {
    (d as f64 * ratio) as usize
}

struct Kwargs<'a> {
    map: &'a Map<String, Json>,
    used: std::collections::BTreeSet<String>,
}

impl<'a> Kwargs<'a> {
    fn raw(&mut self, keys: &[&str]) -> Option<&'a Json> {
        for k in keys {
            if let Some(v) = self.map.get(*k) {
                self.used.insert((*k).to_string());
                return Some(v);
            }
        }
        None
    }
    fn usize(&mut self, keys: &[&str], default: usize) -> Result<usize, ConfigError> {
        match self.raw(keys) {
            None => Ok(default),
            Some(v) => v
                .as_u64()
                .map(|x| x as usize)
                .ok_or_else(|| ConfigError::Json(format!("'{}' must be a non-negative integer, got {v}", keys[0]))),
        }
    }
    fn f64(&mut self, keys: &[&str], default: f64) -> Result<f64, ConfigError> {
        match self.raw(keys) {
            None => Ok(default),
            Some(v) => v
                .as_f64()
                .ok_or_else(|| ConfigError::Json(format!("'{}' must be a number, got {v}", keys[0]))),
        }
    }
    fn opt_f64(&mut self, keys: &[&str], default: Option<f64>) -> Result<Option<f64>, ConfigError> {
        match self.raw(keys) {
            None => Ok(default),
            Some(Json::Null) => Ok(None),
            Some(v) => v
                .as_f64()
                .map(Some)
                .ok_or_else(|| ConfigError::Json(format!("'{}' must be a number or null, got {v}", keys[0]))),
        }
    }
    fn bool(&mut self, keys: &[&str], default: bool) -> Result<bool, ConfigError> {
        match self.raw(keys) {
            None => Ok(default),
            Some(v) => v
                .as_bool()
                .ok_or_else(|| ConfigError::Json(format!("'{}' must be true or false, got {v}", keys[0]))),
        }
    }
    /// A bool or a list of bools (upstream's `x if isinstance(x, bool) else x[i]`).
    fn bool_list(&mut self, keys: &[&str], default: bool, n: usize) -> Result<Vec<bool>, ConfigError> {
        match self.raw(keys) {
            None => Ok(vec![default; n]),
            Some(Json::Bool(b)) => Ok(vec![*b; n]),
            Some(Json::Array(items)) => {
                let v: Option<Vec<bool>> = items.iter().map(|x| x.as_bool()).collect();
                let v = v.ok_or_else(|| ConfigError::Json(format!("'{}' must hold booleans", keys[0])))?;
                if v.len() < n {
                    return Err(ConfigError::Invalid(format!(
                        "'{}' has {} entries but {n} are needed",
                        keys[0],
                        v.len()
                    )));
                }
                Ok(v)
            }
            Some(v) => Err(ConfigError::Json(format!("'{}' must be a bool or a list of bools, got {v}", keys[0]))),
        }
    }
}

impl ComerConfig {
    /// Parse the fixtures' `case.json` shape (`flavor` + `constructor_kwargs`).
    pub fn from_case_json(text: &str) -> Result<ComerConfig, ConfigError> {
        let v: Json = serde_json::from_str(text).map_err(|e| ConfigError::Json(e.to_string()))?;
        let flavor = v
            .get("flavor")
            .and_then(|f| f.as_str())
            .ok_or_else(|| ConfigError::Json("missing string field 'flavor'".into()))?;
        let flavor = Flavor::parse(flavor)?;
        let empty = Map::new();
        let kwargs = match v.get("constructor_kwargs") {
            None => &empty,
            Some(Json::Object(m)) => m,
            Some(_) => return Err(ConfigError::Json("'constructor_kwargs' must be an object".into())),
        };
        ComerConfig::from_kwargs(flavor, kwargs)
    }

    /// Resolve upstream constructor keyword arguments with the flavour's defaults.
    pub fn from_kwargs(flavor: Flavor, map: &Map<String, Json>) -> Result<ComerConfig, ConfigError> {
        let mut k = Kwargs { map, used: Default::default() };
        let beit = flavor == Flavor::Beit;
        let names = flavor.names();
        let depth = k.usize(&["depth"], 12)?;
        // `depth` sizes every per-block list built below: checked before any is allocated.
        in_range("depth", depth, &limits::DEPTH)?;
        let img_size = k.usize(&["img_size"], if beit { 512 } else { 224 })?;
        let pretrain_size = k.usize(&["pretrain_size"], 224)?;
        let window_attn = k.bool_list(&["window_attn"], false, depth)?;
        let window_size = match k.raw(&["window_size"]) {
            None => vec![Some(14); depth],
            Some(Json::Null) => vec![None; depth],
            Some(Json::Array(items)) => items
                .iter()
                .map(|x| match x {
                    Json::Null => Ok(None),
                    other => other
                        .as_u64()
                        .map(|w| Some(w as usize))
                        .ok_or_else(|| ConfigError::Json(format!("window_size entry {other} is not an integer"))),
                })
                .collect::<Result<Vec<_>, _>>()?,
            Some(v) => vec![Some(v.as_u64().ok_or_else(|| ConfigError::Json(format!("window_size {v} is not an integer")))? as usize); depth],
        };
        let interaction_indexes: Vec<[usize; 2]> = match k.raw(&["interaction_indexes"]) {
            None => return Err(ConfigError::Invalid("'interaction_indexes' is required (upstream has no default)".into())),
            Some(v) => serde_json::from_value(v.clone())
                .map_err(|e| ConfigError::Json(format!("interaction_indexes: {e}")))?,
        };
        let n_int = interaction_indexes.len();
        // The per-interaction lists below have this many entries (validate() checks the rest).
        if n_int == 0 || n_int > depth {
            return Err(ConfigError::Invalid(format!(
                "interaction_indexes has {n_int} entries; 1..={depth} (one per stretch of the {depth} blocks) are allowed"
            )));
        }
        let cfg = ComerConfig {
            flavor,
            img_size,
            pretrain_size,
            patch_size: k.usize(&["patch_size"], 16)?,
            in_chans: k.usize(&["in_chans"], 3)?,
            embed_dim: k.usize(&["embed_dim"], 768)?,
            depth,
            num_heads: k.usize(&["num_heads"], 12)?,
            mlp_ratio: k.f64(&["mlp_ratio"], 4.0)?,
            qkv_bias: k.bool(&["qkv_bias"], !beit)?,
            layer_scale: if beit { false } else { k.bool(&["layer_scale"], true)? },
            window_attn,
            window_size,
            use_abs_pos_emb: if beit { k.bool(&["use_abs_pos_emb"], false)? } else { true },
            use_rel_pos_bias: if beit { k.bool(&["use_rel_pos_bias"], true)? } else { false },
            use_shared_rel_pos_bias: if beit { k.bool(&["use_shared_rel_pos_bias"], false)? } else { false },
            qk_scale: if beit { k.opt_f64(&["qk_scale"], None)? } else { None },
            init_values: k.opt_f64(&["init_values"], Some(0.0))?,
            conv_inplane: k.usize(&["conv_inplane"], 64)?,
            n_points: k.usize(&["n_points"], 4)?,
            deform_num_heads: k.usize(&["deform_num_heads"], 6)?,
            interaction_indexes,
            with_cffn: k.bool(&["with_cffn"], true)?,
            cffn_ratio: k.f64(&["cffn_ratio"], 0.25)?,
            deform_ratio: k.f64(&["deform_ratio"], 1.0)?,
            add_vit_feature: k.bool(&["add_vit_feature"], true)?,
            use_extra_cti: k.bool(&[names.use_extra_kwarg], true)?,
            use_cti_tov: k.bool_list(&[names.use_tov_kwarg], true, n_int)?,
            use_cti_toc: k.bool_list(&[names.use_toc_kwarg], true, n_int)?,
            cnn_feature_interaction: k.bool_list(&["cnn_feature_interaction"], flavor == Flavor::Seg, n_int)?,
            extra_num: if flavor == Flavor::Det { k.usize(&["extra_num"], 4)? } else { 4 },
            dim_ratio: if flavor == Flavor::Seg { k.f64(&["dim_ratio"], 6.0)? } else { 0.5 },
        };
        if beit && map.get("version").is_some_and(|v| v.as_str() != Some("new")) {
            return Err(ConfigError::Invalid(
                format!("{} version other than 'new' (per-interaction ViT maps) is not supported", flavor.names().upstream_class),
            ));
        }
        for key in map.keys() {
            if !k.used.contains(key) && !IGNORED_KWARGS.contains(&key.as_str()) {
                return Err(ConfigError::UnknownKwarg { flavor: flavor.name(), key: key.clone() });
            }
        }
        cfg.validate()?;
        Ok(cfg)
    }

    /// Every check of a config, in one place: each numeric field within its [`limits`]
    /// range, then what must fit together (heads dividing widths, hidden widths of at least
    /// one channel, windows, interaction indexes, position grids). Every config is checked
    /// here before anything is built from it: [`ComerConfig::from_kwargs`] (so `--config`
    /// files, presets, an artifact's recorded `comer_port.config` and configs taken from a
    /// source) ends with it, and the forward and the ONNX export call it again on configs
    /// built in code. Cheap: no allocation beyond the message.
    pub fn validate(&self) -> Result<(), ConfigError> {
        use limits::*;
        let bad = |m: String| Err(ConfigError::Invalid(m));
        let flavor = self.flavor.name();
        in_range("depth", self.depth, &DEPTH)?;
        in_range("embed_dim", self.embed_dim, &EMBED_DIM)?;
        in_range("num_heads", self.num_heads, &NUM_HEADS)?;
        in_range("deform_num_heads", self.deform_num_heads, &DEFORM_NUM_HEADS)?;
        in_range("patch_size", self.patch_size, &PATCH_SIZE)?;
        in_range("img_size", self.img_size, &IMAGE_SIZE)?;
        in_range("pretrain_size", self.pretrain_size, &IMAGE_SIZE)?;
        in_range("in_chans", self.in_chans, &IN_CHANS)?;
        in_range("conv_inplane", self.conv_inplane, &CONV_INPLANE)?;
        in_range("n_points", self.n_points, &N_POINTS)?;
        in_range("extra_num", self.extra_num, &EXTRA_NUM)?;
        in_float_range("mlp_ratio", self.mlp_ratio, RATIO_MAX, true)?;
        in_float_range("cffn_ratio", self.cffn_ratio, RATIO_MAX, true)?;
        in_float_range("deform_ratio", self.deform_ratio, RATIO_MAX, true)?;
        in_float_range("dim_ratio", self.dim_ratio, RATIO_MAX, true)?;
        if let Some(s) = self.qk_scale {
            in_float_range("qk_scale", s, QK_SCALE_MAX, true)?;
        }
        if let Some(v) = self.init_values {
            in_float_range("init_values", v, INIT_VALUES_MAX, false)?;
        }
        // Fields a flavour fixes (upstream has no keyword for them there).
        if self.flavor != Flavor::Det && self.extra_num != 4 {
            return bad(format!("extra_num = {}: {flavor} always builds 4 extra modules", self.extra_num));
        }
        if self.flavor != Flavor::Seg && self.dim_ratio != 0.5 {
            return bad(format!("dim_ratio = {}: {flavor}'s MRFP hidden width is fixed at 0.5·embed_dim", self.dim_ratio));
        }
        // Widths that must divide or be at least one channel.
        let d = self.embed_dim;
        if !d.is_multiple_of(self.num_heads) {
            return bad(format!("embed_dim {d} must be a multiple of num_heads {}", self.num_heads));
        }
        if !d.is_multiple_of(self.deform_num_heads) {
            return bad(format!("embed_dim {d} must be a multiple of deform_num_heads {}", self.deform_num_heads));
        }
        let value_dim = scaled(d, self.deform_ratio);
        if value_dim == 0 || !value_dim.is_multiple_of(self.deform_num_heads) {
            return bad(format!(
                "embed_dim·deform_ratio = {d}·{} = {value_dim} must be a positive multiple of deform_num_heads {}",
                self.deform_ratio, self.deform_num_heads
            ));
        }
        for (field, ratio, what) in [
            ("mlp_ratio", self.mlp_ratio, "the ViT blocks' MLP"),
            ("cffn_ratio", self.cffn_ratio, "ConvFFN"),
            ("dim_ratio", self.dim_ratio, "MRFP"),
        ] {
            if scaled(d, ratio) == 0 {
                return bad(format!("embed_dim·{field} = {d}·{ratio} gives {what} no hidden channel (at least 1 is needed)"));
            }
        }
        // Per-block lists and windows.
        if self.window_attn.len() < self.depth || self.window_size.len() < self.depth {
            return bad(format!(
                "window_attn has {} and window_size {} entries; depth {} needs one per block",
                self.window_attn.len(),
                self.window_size.len(),
                self.depth
            ));
        }
        for i in 0..self.depth {
            match self.window_size[i] {
                Some(w) => in_range(&format!("window_size[{i}]"), w, &WINDOW_SIZE)?,
                None if self.window_attn[i] => {
                    return bad(format!("window_attn[{i}] is true but window_size[{i}] is null: a windowed block needs its window"));
                }
                None => {}
            }
        }
        // Interactions: increasing, non-overlapping stretches of blocks within depth.
        let n_int = self.interaction_indexes.len();
        if n_int == 0 || n_int > self.depth {
            return bad(format!("interaction_indexes has {n_int} entries; 1..={} are allowed", self.depth));
        }
        let mut next = 0;
        for (i, &[a, b]) in self.interaction_indexes.iter().enumerate() {
            if a > b || b >= self.depth || a < next {
                return bad(format!(
                    "interaction_indexes[{i}] = [{a}, {b}]: each interaction spans blocks [first, last] with \
                     first <= last < depth {}, after the previous one ends (from block {next} on)",
                    self.depth
                ));
            }
            next = b + 1;
        }
        if self.flavor == Flavor::Seg && n_int != 4 {
            return bad(format!(
                "interaction_indexes has {n_int} entries: vit-comer-seg adds the ViT map after each interaction, so exactly 4 are needed"
            ));
        }
        for (field, list) in [
            (self.flavor.names().use_tov_kwarg, &self.use_cti_tov),
            (self.flavor.names().use_toc_kwarg, &self.use_cti_toc),
            ("cnn_feature_interaction", &self.cnn_feature_interaction),
        ] {
            if list.len() < n_int {
                return bad(format!("{field} has {} entries but the {n_int} interactions need one each", list.len()));
            }
        }
        // Position grids: whole patches, and one grid where the position table is absolute.
        let ps = self.patch_size;
        for (field, size) in [("img_size", self.img_size), ("pretrain_size", self.pretrain_size)] {
            if !size.is_multiple_of(ps) {
                return bad(format!("{field} {size} must be a multiple of patch_size {ps}"));
            }
        }
        if (self.use_abs_pos_emb || self.flavor != Flavor::Beit) && self.img_size != self.pretrain_size {
            let (img, pre) = (self.img_size, self.pretrain_size);
            return bad(format!(
                "img_size {img} and pretrain_size {pre} give different position grids ({}x{0} and {}x{1}); upstream's \
                 _get_pos_embed reshapes the table to the pretrain grid, so they must be equal",
                img / ps,
                pre / ps,
            ));
        }
        Ok(())
    }

    /// Channels per ViT attention head (D / `num_heads`).
    pub fn head_dim(&self) -> usize {
        self.embed_dim / self.num_heads
    }

    /// Upstream constructor keyword arguments that rebuild this config (in upstream names).
    pub fn to_kwargs(&self) -> Map<String, Json> {
        use serde_json::json;
        let beit = self.flavor == Flavor::Beit;
        let mut m = Map::new();
        let mut put = |k: &str, v: Json| {
            m.insert(k.to_string(), v);
        };
        put("img_size", json!(self.img_size));
        put("pretrain_size", json!(self.pretrain_size));
        put("patch_size", json!(self.patch_size));
        put("in_chans", json!(self.in_chans));
        put("embed_dim", json!(self.embed_dim));
        put("depth", json!(self.depth));
        put("num_heads", json!(self.num_heads));
        put("mlp_ratio", json!(self.mlp_ratio));
        put("qkv_bias", json!(self.qkv_bias));
        put("window_attn", json!(self.window_attn));
        put("window_size", json!(self.window_size));
        put("init_values", json!(self.init_values));
        put("conv_inplane", json!(self.conv_inplane));
        put("n_points", json!(self.n_points));
        put("deform_num_heads", json!(self.deform_num_heads));
        put("interaction_indexes", json!(self.interaction_indexes));
        put("with_cffn", json!(self.with_cffn));
        put("cffn_ratio", json!(self.cffn_ratio));
        put("deform_ratio", json!(self.deform_ratio));
        put("add_vit_feature", json!(self.add_vit_feature));
        put("cnn_feature_interaction", json!(self.cnn_feature_interaction));
        if beit {
            put("use_abs_pos_emb", json!(self.use_abs_pos_emb));
            put("use_rel_pos_bias", json!(self.use_rel_pos_bias));
            put("use_shared_rel_pos_bias", json!(self.use_shared_rel_pos_bias));
            put("qk_scale", json!(self.qk_scale));
        } else {
            put("layer_scale", json!(self.layer_scale));
        }
        let names = self.flavor.names();
        put(names.use_extra_kwarg, json!(self.use_extra_cti));
        put(names.use_tov_kwarg, json!(self.use_cti_tov));
        put(names.use_toc_kwarg, json!(self.use_cti_toc));
        if self.flavor == Flavor::Det {
            put("extra_num", json!(self.extra_num));
        }
        if self.flavor == Flavor::Seg {
            put("dim_ratio", json!(self.dim_ratio));
        }
        m
    }

    /// The `case.json`-shaped JSON (`flavor` + `constructor_kwargs`) for this config.
    pub fn to_case_json(&self) -> Json {
        serde_json::json!({ "flavor": self.flavor.name(), "constructor_kwargs": self.to_kwargs() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixture_cases_parse_and_round_trip() {
        for case in ["det_tiny", "det_tiny_cfi_window", "seg_tiny", "beit_tiny"] {
            let p = format!("{}/fixtures/forward/{case}/case.json", env!("CARGO_MANIFEST_DIR"));
            let text = std::fs::read_to_string(&p).expect("fixture present");
            let cfg = ComerConfig::from_case_json(&text).expect(case);
            let again = ComerConfig::from_case_json(&cfg.to_case_json().to_string()).expect(case);
            assert_eq!(cfg, again, "{case}");
        }
    }

    #[test]
    fn unknown_kwarg_is_refused() {
        let err = ComerConfig::from_case_json(
            r#"{"flavor":"vit-comer-det","constructor_kwargs":{"interaction_indexes":[[0,2],[3,5],[6,8],[9,11]],"emb_dim":3}}"#,
        )
        .unwrap_err();
        assert!(matches!(err, ConfigError::UnknownKwarg { .. }));
    }

    /// det_tiny's case.json with one keyword replaced.
    fn tiny_with(key: &str, value: Json) -> Result<ComerConfig, ConfigError> {
        let p = format!("{}/fixtures/forward/det_tiny/case.json", env!("CARGO_MANIFEST_DIR"));
        let mut v: Json = serde_json::from_str(&std::fs::read_to_string(p).expect("fixture")).expect("json");
        v["constructor_kwargs"][key] = value;
        ComerConfig::from_case_json(&v.to_string())
    }

    #[test]
    fn out_of_range_names_field_value_and_range() {
        use serde_json::json;
        for (key, value, field) in [
            ("n_points", json!(0), "n_points"),
            ("conv_inplane", json!(0), "conv_inplane"),
            ("depth", json!(1_000_000_000u64), "depth"),
            ("extra_num", json!(1_000_000_000u64), "extra_num"),
            ("cffn_ratio", json!(1e9), "cffn_ratio"),
            ("pretrain_size", json!(1_000_000_000u64), "pretrain_size"),
            ("embed_dim", json!(0), "embed_dim"),
            ("num_heads", json!(0), "num_heads"),
            ("deform_num_heads", json!(0), "deform_num_heads"),
            ("mlp_ratio", json!(-1.0), "mlp_ratio"),
            ("window_size", json!(1_000_000_000u64), "window_size[0]"),
            ("init_values", json!(1e300), "init_values"),
        ] {
            match tiny_with(key, value.clone()) {
                Err(ConfigError::OutOfRange { field: f, value: v, allowed }) => {
                    assert_eq!(f, field, "{key}");
                    assert!(!v.is_empty() && !allowed.is_empty(), "{key}");
                }
                other => panic!("{key} = {value}: {other:?}"),
            }
        }
        let e = tiny_with("n_points", json!(0)).unwrap_err().to_string();
        assert_eq!(e, "config: n_points = 0 is out of range (allowed: 1..=32)");
    }

    #[test]
    fn inconsistent_values_are_invalid() {
        use serde_json::json;
        for (key, value, says) in [
            ("num_heads", json!(5), "multiple of num_heads 5"),
            ("deform_num_heads", json!(7), "multiple of deform_num_heads 7"),
            ("interaction_indexes", json!([[0, 1], [1, 2], [3, 3]]), "interaction_indexes[1] = [1, 2]"),
            ("interaction_indexes", json!([[2, 1]]), "interaction_indexes[0] = [2, 1]"),
            ("interaction_indexes", json!([[0, 4]]), "interaction_indexes[0] = [0, 4]"),
            ("interaction_indexes", json!([]), "interaction_indexes has 0 entries"),
            ("img_size", json!(72), "img_size 72 must be a multiple of patch_size 16"),
            ("img_size", json!(128), "img_size 128 and pretrain_size 64 give different position grids"),
            ("mlp_ratio", json!(0.001), "mlp_ratio"),
            ("window_attn", json!(true), "window_size[0] is null"),
        ] {
            match tiny_with(key, value.clone()) {
                Err(ConfigError::Invalid(m)) => assert!(m.contains(says), "{key} = {value}: {m}"),
                other => panic!("{key} = {value}: {other:?}"),
            }
        }
    }

    #[test]
    fn a_config_changed_in_code_is_checked_again() {
        let p = format!("{}/fixtures/forward/det_tiny/case.json", env!("CARGO_MANIFEST_DIR"));
        let mut c = ComerConfig::from_case_json(&std::fs::read_to_string(p).expect("fixture")).expect("valid");
        c.window_size = vec![Some(1 << 40); 4];
        c.window_attn = vec![true; 4];
        assert!(matches!(c.validate(), Err(ConfigError::OutOfRange { .. })));
        c.window_size = vec![Some(2); 4];
        c.use_cti_tov.truncate(1);
        assert!(matches!(c.validate(), Err(ConfigError::Invalid(_))));
    }

    #[test]
    fn json_variant() {
        assert!(matches!(ComerConfig::from_case_json("{"), Err(ConfigError::Json(_))));
        assert!(matches!(tiny_with("depth", serde_json::json!("four")), Err(ConfigError::Json(_))));
    }

    #[test]
    fn flavour_names_parse_back_and_serialise_as_names() {
        for f in Flavor::ALL {
            assert_eq!(Flavor::parse(f.name()).unwrap(), f);
            assert_eq!(serde_json::to_string(&f).unwrap(), format!("\"{}\"", f.name()));
            assert_eq!(serde_json::from_str::<Flavor>(&format!("\"{}\"", f.name())).unwrap(), f);
        }
        let err = Flavor::parse("vit-comer").unwrap_err();
        assert!(matches!(err, ConfigError::UnknownFlavor(_)));
        assert_eq!(
            err.to_string(),
            "config: unknown flavor 'vit-comer' (expected vit-comer-det, vit-comer-seg or beit-comer)"
        );
        assert_eq!(Flavor::Beit.names().mrfp, "multiconv");
        assert_eq!(Flavor::Seg.names().layer_scale, ["gamma1", "gamma2"]);
    }
}
