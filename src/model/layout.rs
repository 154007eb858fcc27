//! The exact upstream `state_dict()` of a ViT-CoMer configuration: every parameter and
//! buffer with its name, shape and dtype, in upstream's order, plus the scheme upstream's
//! `_init_weights` / `_reset_parameters` would give it.
//!
//! Mirrors the module trees of `detection/mmdet_custom/models/backbones/{vit_comer,
//! comer_modules,base/vit}.py` and `segmentation/...` (branch `main`), and
//! `mmdet/models/backbones/{beit_comer,comer_modules,base/beit}.py` (branch `Co-DETR`).
//! PyTorch orders a state dict as: a module's own parameters, then its own buffers, then
//! each child in registration order.

use super::config::{ComerConfig, Flavor};
use crate::formats::DType;

/// Parameter (learned) or buffer (derived or running statistic).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum EntryKind {
    /// A learned parameter.
    Param,
    /// A buffer: derived (`relative_position_index`) or a running statistic.
    Buffer,
}

/// How upstream initialises a target key when nothing comes from the source.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(rename_all = "kebab-case", tag = "scheme")]
pub enum Init {
    /// `trunc_normal_(std)` cut at ±2 (absolute, as timm's default `a=-2, b=2`).
    TruncNormal {
        /// Standard deviation.
        std: f64,
    },
    /// `normal_(0, std)`.
    Normal {
        /// Standard deviation.
        std: f64,
    },
    /// Conv / ConvTranspose: `normal_(0, sqrt(2 / fan_out))`.
    ConvFanOut {
        /// `k·k·out/groups`.
        fan_out: usize,
    },
    /// `xavier_uniform_` of a Linear (fan_in, fan_out).
    XavierUniform {
        /// Input features.
        fan_in: usize,
        /// Output features.
        fan_out: usize,
    },
    /// A constant (zeros, ones, `init_values`).
    Constant {
        /// The value.
        value: f64,
    },
    /// MSDeformAttn `sampling_offsets.bias`: the fixed direction grid, point i scaled by i+1.
    OffsetGrid {
        /// Attention heads.
        heads: usize,
        /// Feature levels.
        levels: usize,
        /// Sampling points per level.
        points: usize,
    },
    /// BEiT `relative_position_index` of a window w.
    RelPosIndex {
        /// The window side.
        window: usize,
    },
}

/// One row of a target layout.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct TargetEntry {
    /// The target key.
    pub name: String,
    /// Its shape.
    pub shape: Vec<usize>,
    /// Its dtype.
    #[serde(serialize_with = "ser_dtype")]
    pub dtype: DType,
    /// Parameter or buffer.
    pub kind: EntryKind,
    /// Upstream's init of the key.
    pub init: Init,
}

fn ser_dtype<S: serde::Serializer>(d: &DType, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(d.name())
}

impl TargetEntry {
    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

struct Builder {
    out: Vec<TargetEntry>,
}

impl Builder {
    fn push(&mut self, name: String, shape: Vec<usize>, dtype: DType, kind: EntryKind, init: Init) {
        self.out.push(TargetEntry { name, shape, dtype, kind, init });
    }
    fn param(&mut self, name: String, shape: Vec<usize>, init: Init) {
        self.push(name, shape, DType::F32, EntryKind::Param, init);
    }
    fn constant(&mut self, name: String, shape: Vec<usize>, value: f64) {
        self.param(name, shape, Init::Constant { value });
    }
    /// `nn.Linear(i, o)` with upstream's `_init_weights`: trunc-normal(0.02), zero bias.
    fn linear(&mut self, p: &str, i: usize, o: usize, bias: bool) {
        self.param(format!("{p}.weight"), vec![o, i], Init::TruncNormal { std: 0.02 });
        if bias {
            self.constant(format!("{p}.bias"), vec![o], 0.0);
        }
    }
    /// A Linear that MSDeformAttn re-initialises with constants.
    fn linear_const(&mut self, p: &str, i: usize, o: usize, w: Init, b: Init) {
        self.param(format!("{p}.weight"), vec![o, i], w);
        self.param(format!("{p}.bias"), vec![o], b);
    }
    fn layer_norm(&mut self, p: &str, d: usize) {
        self.constant(format!("{p}.weight"), vec![d], 1.0);
        self.constant(format!("{p}.bias"), vec![d], 0.0);
    }
    fn batch_norm(&mut self, p: &str, d: usize) {
        self.layer_norm(p, d);
        self.push(format!("{p}.running_mean"), vec![d], DType::F32, EntryKind::Buffer, Init::Constant { value: 0.0 });
        self.push(format!("{p}.running_var"), vec![d], DType::F32, EntryKind::Buffer, Init::Constant { value: 1.0 });
        self.push(format!("{p}.num_batches_tracked"), vec![], DType::I64, EntryKind::Buffer, Init::Constant { value: 0.0 });
    }
    /// `nn.Conv2d(i, o, k, groups)`; fan_out = k·k·o / groups.
    fn conv(&mut self, p: &str, i: usize, o: usize, k: usize, groups: usize, bias: bool) {
        let fan_out = k * k * o / groups;
        self.param(format!("{p}.weight"), vec![o, i / groups, k, k], Init::ConvFanOut { fan_out });
        if bias {
            self.constant(format!("{p}.bias"), vec![o], 0.0);
        }
    }
    /// `MSDeformAttn(d_model, n_levels, n_heads, n_points, ratio)` after `_reset_parameters`.
    fn ms_deform_attn(&mut self, p: &str, c: &ComerConfig, levels: usize) {
        let d = c.embed_dim;
        let (h, pts) = (c.deform_num_heads, c.n_points);
        let value_dim = (d as f64 * c.deform_ratio) as usize;
        let zero = Init::Constant { value: 0.0 };
        self.linear_const(
            &format!("{p}.sampling_offsets"),
            d,
            h * levels * pts * 2,
            zero.clone(),
            Init::OffsetGrid { heads: h, levels, points: pts },
        );
        self.linear_const(&format!("{p}.attention_weights"), d, h * levels * pts, zero.clone(), zero.clone());
        self.linear_const(
            &format!("{p}.value_proj"),
            d,
            value_dim,
            Init::XavierUniform { fan_in: d, fan_out: value_dim },
            zero.clone(),
        );
        self.linear_const(
            &format!("{p}.output_proj"),
            value_dim,
            d,
            Init::XavierUniform { fan_in: value_dim, fan_out: d },
            zero,
        );
    }
    /// `ConvFFN(dim, hidden = dim·cffn_ratio)`: fc1, dwconv.dwconv, fc2.
    fn conv_ffn(&mut self, p: &str, c: &ComerConfig) {
        let d = c.embed_dim;
        let hid = (d as f64 * c.cffn_ratio) as usize;
        self.linear(&format!("{p}.fc1"), d, hid, true);
        self.conv(&format!("{p}.dwconv.dwconv"), hid, hid, 3, hid, true);
        self.linear(&format!("{p}.fc2"), hid, d, true);
    }
    /// `MultiscaleExtractor` (`cfinter`): 3-level attention plus optional ConvFFN.
    fn multiscale_extractor(&mut self, p: &str, c: &ComerConfig) {
        self.layer_norm(&format!("{p}.query_norm"), c.embed_dim);
        self.layer_norm(&format!("{p}.feat_norm"), c.embed_dim);
        self.ms_deform_attn(&format!("{p}.attn"), c, 3);
        if c.with_cffn {
            self.conv_ffn(&format!("{p}.ffn"), c);
            self.layer_norm(&format!("{p}.ffn_norm"), c.embed_dim);
        }
    }
    /// `CTI_toV` / `Injector`: gamma, norms, 3-level attention, ConvFFN.
    fn cti_tov(&mut self, p: &str, c: &ComerConfig) {
        let d = c.embed_dim;
        self.constant(format!("{p}.gamma"), vec![d], c.init_values.unwrap_or(0.0));
        self.layer_norm(&format!("{p}.query_norm"), d);
        self.layer_norm(&format!("{p}.feat_norm"), d);
        self.ms_deform_attn(&format!("{p}.attn"), c, 3);
        self.conv_ffn(&format!("{p}.ffn"), c);
        self.layer_norm(&format!("{p}.ffn_norm"), d);
    }
    /// `CTI_toC` / `Extractor`: norms and, with CNN feature interaction, `cfinter`.
    fn cti_toc(&mut self, p: &str, c: &ComerConfig, cfi: bool) {
        self.layer_norm(&format!("{p}.query_norm"), c.embed_dim);
        self.layer_norm(&format!("{p}.feat_norm"), c.embed_dim);
        if cfi {
            self.multiscale_extractor(&format!("{p}.cfinter"), c);
        }
    }
    /// `Extractor_CTI` (one of the extra CTIs): norms, ConvFFN, optional `cfinter`.
    fn extra_cti(&mut self, p: &str, c: &ComerConfig, cfi: bool) {
        self.layer_norm(&format!("{p}.query_norm"), c.embed_dim);
        self.layer_norm(&format!("{p}.feat_norm"), c.embed_dim);
        if c.with_cffn {
            self.conv_ffn(&format!("{p}.ffn"), c);
            self.layer_norm(&format!("{p}.ffn_norm"), c.embed_dim);
        }
        if cfi {
            self.multiscale_extractor(&format!("{p}.cfinter"), c);
        }
    }
    /// `MRFP` / `MultiConvFFN`: fc1, MultiDWConv (six depthwise convs on hidden/2, three
    /// BatchNorms on hidden), fc2.
    fn mrfp(&mut self, p: &str, d: usize, hid: usize) {
        self.linear(&format!("{p}.fc1"), d, hid, true);
        let half = hid / 2;
        for (i, k) in [3, 5, 3, 5, 3, 5].iter().enumerate() {
            self.conv(&format!("{p}.dwconv.dwconv{}", i + 1), half, half, *k, half, true);
        }
        for i in 1..=3 {
            self.batch_norm(&format!("{p}.dwconv.bn{i}"), hid);
        }
        self.linear(&format!("{p}.fc2"), hid, d, true);
    }
    /// `CNN` / `SpatialPriorModule`.
    fn spm(&mut self, c: &ComerConfig) {
        let (i, d) = (c.conv_inplane, c.embed_dim);
        self.conv("spm.stem.0", c.in_chans, i, 3, 1, false);
        self.batch_norm("spm.stem.1", i);
        self.conv("spm.stem.3", i, i, 3, 1, false);
        self.batch_norm("spm.stem.4", i);
        self.conv("spm.stem.6", i, i, 3, 1, false);
        self.batch_norm("spm.stem.7", i);
        self.conv("spm.conv2.0", i, 2 * i, 3, 1, false);
        self.batch_norm("spm.conv2.1", 2 * i);
        self.conv("spm.conv3.0", 2 * i, 4 * i, 3, 1, false);
        self.batch_norm("spm.conv3.1", 4 * i);
        self.conv("spm.conv4.0", 4 * i, 4 * i, 3, 1, false);
        self.batch_norm("spm.conv4.1", 4 * i);
        self.conv("spm.fc1", i, d, 1, 1, true);
        self.conv("spm.fc2", 2 * i, d, 1, 1, true);
        self.conv("spm.fc3", 4 * i, d, 1, 1, true);
        self.conv("spm.fc4", 4 * i, d, 1, 1, true);
    }
}

/// The number of patches per side of the pretraining grid.
pub fn pretrain_grid(c: &ComerConfig) -> usize {
    c.pretrain_size / c.patch_size
}

/// The (2w−1)² rows of a BEiT relative-position table for window w.
pub fn relpos_rows(w: usize) -> usize {
    (2 * w - 1) * (2 * w - 1)
}

/// Every key of upstream's `state_dict()` for `c`, in upstream order.
pub fn target_layout(c: &ComerConfig) -> Vec<TargetEntry> {
    let mut b = Builder { out: Vec::new() };
    let d = c.embed_dim;
    let beit = c.flavor == Flavor::Beit;
    let mlp_hidden = (d as f64 * c.mlp_ratio) as usize;
    // The root module's own parameters.
    if !beit || c.use_abs_pos_emb {
        let g = pretrain_grid(c);
        let rows = if beit { g * g } else { g * g + 1 };
        b.param("pos_embed".into(), vec![1, rows, d], Init::TruncNormal { std: 0.02 });
    }
    b.param("level_embed".into(), vec![3, d], Init::Normal { std: 1.0 });
    // patch_embed.proj: upstream's ViT init leaves it at PyTorch's Conv2d default; it always
    // comes from the source, so the scheme here only matters for a source without it.
    b.conv("patch_embed.proj", c.in_chans, d, c.patch_size, 1, true);
    if beit && c.use_shared_rel_pos_bias {
        let w = c.window_size.first().copied().flatten().unwrap_or(pretrain_grid(c));
        b.param(
            "rel_pos_bias.relative_position_bias_table".into(),
            vec![relpos_rows(w), c.num_heads],
            Init::Constant { value: 0.0 },
        );
        b.push(
            "rel_pos_bias.relative_position_index".into(),
            vec![w * w, w * w],
            DType::I64,
            EntryKind::Buffer,
            Init::RelPosIndex { window: w },
        );
    }
    for i in 0..c.depth {
        let p = format!("blocks.{i}");
        let [g1, g2] = c.flavor.names().layer_scale;
        if beit {
            if let Some(v) = c.init_values.filter(|v| *v > 0.0) {
                b.constant(format!("{p}.{g1}"), vec![d], v);
                b.constant(format!("{p}.{g2}"), vec![d], v);
            }
        } else if c.layer_scale {
            b.constant(format!("{p}.{g1}"), vec![d], 1.0);
            b.constant(format!("{p}.{g2}"), vec![d], 1.0);
        }
        b.layer_norm(&format!("{p}.norm1"), d);
        if beit {
            if c.qkv_bias {
                b.constant(format!("{p}.attn.q_bias"), vec![d], 0.0);
                b.constant(format!("{p}.attn.v_bias"), vec![d], 0.0);
            }
            let w = c.window_size[i].unwrap_or(pretrain_grid(c));
            b.param(
                format!("{p}.attn.relative_position_bias_table"),
                vec![relpos_rows(w), c.num_heads],
                Init::Constant { value: 0.0 },
            );
            b.push(
                format!("{p}.attn.relative_position_index"),
                vec![w * w, w * w],
                DType::I64,
                EntryKind::Buffer,
                Init::RelPosIndex { window: w },
            );
            b.linear(&format!("{p}.attn.qkv"), d, 3 * d, false);
        } else {
            b.linear(&format!("{p}.attn.qkv"), d, 3 * d, c.qkv_bias);
        }
        b.linear(&format!("{p}.attn.proj"), d, d, true);
        b.layer_norm(&format!("{p}.norm2"), d);
        b.linear(&format!("{p}.mlp.fc1"), d, mlp_hidden, true);
        b.linear(&format!("{p}.mlp.fc2"), mlp_hidden, d, true);
    }
    b.spm(c);
    let n = c.interaction_indexes.len();
    for i in 0..n {
        let p = format!("interactions.{i}");
        let last = i + 1 == n;
        let cfi = c.cnn_feature_interaction[i];
        let names = c.flavor.names();
        let (tov, toc, extra, mrfp) = (names.tov, names.toc, names.extra, names.mrfp);
        if c.use_cti_tov[i] {
            b.cti_tov(&format!("{p}.{tov}"), c);
        }
        if c.use_cti_toc[i] {
            b.cti_toc(&format!("{p}.{toc}"), c, cfi);
        }
        if last && c.use_extra_cti {
            for e in 0..c.extra_num {
                b.extra_cti(&format!("{p}.{extra}.{e}"), c, cfi);
            }
        }
        let (build_mrfp, hid) = match c.flavor {
            Flavor::Det => (c.use_cti_tov[i], (d as f64 * 0.5) as usize),
            Flavor::Seg => (true, (d as f64 * c.dim_ratio) as usize),
            Flavor::Beit => (true, (d as f64 * 0.5) as usize),
        };
        if build_mrfp {
            b.mrfp(&format!("{p}.{mrfp}"), d, hid);
        }
    }
    // up: ConvTranspose2d(D, D, 2, 2), weight (in, out, k, k), fan_out = k·k·out.
    b.param("up.weight".into(), vec![d, d, 2, 2], Init::ConvFanOut { fan_out: 4 * d });
    b.constant("up.bias".into(), vec![d], 0.0);
    for k in 1..=4 {
        b.batch_norm(&format!("norm{k}"), d);
    }
    b.out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::presets::{PRESETS, preset, preset_layout};

    #[test]
    fn presets_match_upstream_layouts_exactly() {
        for p in PRESETS {
            let cfg = preset(p.name).expect("preset parses");
            let got: Vec<(String, Vec<usize>, String)> = target_layout(&cfg)
                .into_iter()
                .map(|e| (e.name, e.shape, dtype_label(e.dtype).to_string()))
                .collect();
            let want = preset_layout(p.name).expect("layout");
            assert_eq!(got.len(), want.len(), "{}: entry count", p.name);
            for (g, w) in got.iter().zip(&want) {
                assert_eq!(g, w, "{}", p.name);
            }
        }
    }

    fn dtype_label(d: DType) -> &'static str {
        match d {
            DType::I64 => "int64",
            _ => "float32",
        }
    }
}
