//! Family `beit`: microsoft/unilm BEiT / BEiTv2 checkpoints (`beit2/modeling_finetune.py`):
//! q/v bias, per-block or shared relative position tables with 3 cls rows, `gamma_1/gamma_2`.
//! Rules in `mappings/beit.toml`.

use super::Family;
use crate::model::Flavor;
use super::detect::{Keys, Meta, QkvStyle, RelPos, SourceConfig, heads_or_assumed, square, timm_like_config, timm_prefix};
use crate::model::plain_vit::{LazyVit, Result, Weights, lazy_beit};

/// The BEiT / BEiTv2 family.
pub struct Beit;

impl Family for Beit {
    fn name(&self) -> &'static str {
        "beit"
    }
    fn mapping(&self) -> &'static str {
        include_str!("../../mappings/beit.toml")
    }
    fn recognise(&self, k: &Keys<'_>, _: &Meta) -> Option<String> {
        let p = timm_prefix(k)?;
        let key = |s: &str| format!("{p}{s}");
        let shared = k.has(&key("rel_pos_bias.relative_position_bias_table"));
        (k.has(&key("blocks.0.attn.q_bias")) || k.has(&key("blocks.0.attn.relative_position_bias_table")) || shared).then(
            || {
                format!(
                    "q_bias/v_bias and gamma_1/gamma_2 (unilm BEiT layout); {} relative position bias",
                    if shared && !k.has(&key("blocks.0.attn.relative_position_bias_table")) { "one shared" } else { "per-block" }
                )
            },
        )
    }
    fn config(&self, k: &Keys<'_>, _: &Meta) -> std::result::Result<SourceConfig, String> {
        let p = timm_prefix(k).unwrap_or_default();
        let key = |s: &str| format!("{p}{s}");
        let mut c = timm_like_config(k, &p)?;
        let (table, shared) = match k.shape(&key("blocks.0.attn.relative_position_bias_table")) {
            Some(s) => (Some(s), false),
            None => (k.shape(&key("rel_pos_bias.relative_position_bias_table")), true),
        };
        // The timm-like reader assumed the heads; a table says them exactly.
        c.assumed.clear();
        c.notes.clear();
        match table {
            Some([rows, cols]) => {
                let w = rows.checked_sub(3).and_then(square).map(|s| s.div_ceil(2));
                match w {
                    Some(w) if (2 * w - 1) * (2 * w - 1) + 3 == *rows => {
                        c.notes.push(format!("num_heads {cols} from the relative position table's columns"));
                        c.num_heads = *cols;
                        c.rel_pos = if shared { RelPos::Shared { window: w } } else { RelPos::PerBlock { window: w } };
                    }
                    _ => return Err(format!("BEiT relative position table of {rows} rows is not (2w-1)^2+3")),
                }
            }
            _ => c.num_heads = heads_or_assumed(c.embed_dim, &mut c.assumed, &mut c.notes),
        }
        let window = match c.rel_pos {
            RelPos::PerBlock { window } | RelPos::Shared { window } => Some(window),
            RelPos::None => None,
        };
        c.pretrain_grid = c.pretrain_grid.or(window.map(|w| (w, w)));
        c.prefix_tokens = k.has(&key("cls_token")) as usize;
        c.num_registers = 0;
        c.qkv = if k.has(&key("blocks.0.attn.q_bias")) { QkvStyle::FusedQvBias } else { QkvStyle::FusedNoBias };
        c.layer_scale = k.has(&key("blocks.0.gamma_1")).then(|| "gamma_1".to_string());
        Ok(c)
    }
    /// Upstream's BEiT-CoMer preset (Co-DETR, BEiTv2-L) is the `beit-comer` flavour.
    fn preset_flavor(&self) -> Flavor {
        Flavor::Beit
    }
    fn source_lazy<'w>(&self, w: &'w Weights, sc: &SourceConfig) -> Result<LazyVit<'w>> {
        lazy_beit(w, sc.num_heads)
    }
}
