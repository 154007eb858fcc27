//! The plain-ViT blocks of the three flavours: timm-style blocks (`qkv` with bias,
//! `gamma1/gamma2` layer scale, optional windowed attention with zero padding) and BEiT
//! blocks (`q_bias`/`v_bias`, per-block relative-position bias, `gamma_1/gamma_2`,
//! windowed or global attention).
//!
//! Mirrors `detection/mmdet_custom/models/backbones/base/vit.py` (`Attention`,
//! `WindowedAttention`, `Block`; the segmentation copy is the same) and the Co-DETR
//! branch's `mmdet/models/backbones/base/beit.py` (`Attention`, `Block`).
//!
//! Padding differs between the two, exactly as upstream: timm's `WindowedAttention` pads the
//! `qkv` map (padded q, k, v are zero), BEiT pads the normed tokens before `qkv` (padded
//! tokens get q = `q_bias`, k = 0, v = `v_bias`). Padded tokens take part in the softmax
//! in both.

use candle_core::Tensor;

use super::config::{ComerConfig, Flavor};
use super::error::ModelError;
use super::kernels::{self, AttnShape, Path};
use super::nn::{LayerNorm, Linear, Result, tensor, with_values};
use super::weights::Vb;

/// BEiT's `relative_position_index` for a `w×w` window, (w², w²) row-major: for tokens
/// a = (ya, xa) and b = (yb, xb), `(ya − yb + w − 1)·(2w − 1) + (xa − xb + w − 1)`. The one
/// copy of the index: upstream's `beit.py` buffer (checked at load, written at import) and
/// the patch block of unilm's index (whose extra cls row and column are not modelled).
pub fn relative_position_index(w: usize) -> Vec<i64> {
    let n = w * w;
    let mut idx = vec![0i64; n * n];
    for i in 0..n {
        let (yi, xi) = ((i / w) as i64, (i % w) as i64);
        for j in 0..n {
            let (yj, xj) = ((j / w) as i64, (j % w) as i64);
            idx[i * n + j] = (yi - yj + w as i64 - 1) * (2 * w as i64 - 1) + (xi - xj + w as i64 - 1);
        }
    }
    idx
}

/// Whether `index` is [`relative_position_index`]`(w)`, checked row by row without building
/// it (a 56×56 window's index is 3136² values, 79 MB).
pub fn is_relative_position_index(index: &[i64], w: usize) -> bool {
    relative_position_index_matches(index.len(), w, |k| index[k])
}

/// [`is_relative_position_index`] of `len` values read by `at(k)` (say, straight from a
/// mapped little-endian buffer).
pub fn relative_position_index_matches(len: usize, w: usize, at: impl Fn(usize) -> i64) -> bool {
    let n = w * w;
    let side = 2 * w as i64 - 1;
    len == n * n
        && (0..n).all(|i| {
            let (yi, xi) = ((i / w) as i64, (i % w) as i64);
            (0..n).all(|j| {
                let (yj, xj) = ((j / w) as i64, (j % w) as i64);
                at(i * n + j) == (yi - yj + w as i64 - 1) * side + (xi - xj + w as i64 - 1)
            })
        })
}

/// The side 2w − 1 of a relative-position bias table of `rows` rows: (2w − 1)² rows
/// (upstream's `beit.py` layout) or (2w − 1)² + 3 (unilm's, the last three being the cls
/// rows). The two never coincide for an odd side.
pub fn relpos_table_side(rows: usize) -> Option<usize> {
    let odd_side = |r: usize| {
        let s = (r as f64).sqrt().round() as usize;
        (s * s == r && s % 2 == 1).then_some(s)
    };
    odd_side(rows).or_else(|| rows.checked_sub(3).and_then(odd_side))
}

/// Self-attention of one block, global or windowed.
pub struct Attention {
    qkv: Linear,
    proj: Linear,
    heads: usize,
    head_dim: usize,
    scale: f64,
    /// Window size when windowed.
    window: Option<usize>,
    /// The `qkv` row of a padded token (timm: zeros; BEiT: the qkv bias).
    pad_row: Vec<f32>,
    /// BEiT: its window w and relative-position table, head-major `(heads, (2w-1)²)`; the
    /// bias is gathered row by row in the attention kernel, never expanded to (heads, w², w²).
    rel_bias: Option<(usize, Vec<f32>)>,
    block: usize,
}

impl Attention {
    pub fn new(vb: &Vb, cfg: &ComerConfig, block: usize) -> Result<Attention> {
        let d = cfg.embed_dim;
        let heads = cfg.num_heads;
        let head_dim = d / heads;
        let windowed = cfg.window_attn[block];
        let proj = Linear::new(&vb.pp("proj"), d, d, true)?;
        if cfg.flavor != Flavor::Beit {
            let qkv = Linear::new(&vb.pp("qkv"), d, 3 * d, cfg.qkv_bias)?;
            return Ok(Attention {
                qkv,
                proj,
                heads,
                head_dim,
                scale: (head_dim as f64).powf(-0.5),
                window: if windowed { cfg.window_size[block] } else { None },
                pad_row: vec![0.0; 3 * d],
                rel_bias: None,
                block,
            });
        }
        let w = vb.pp("qkv").get("weight", &[3 * d, d])?;
        let mut bias = vec![0f32; 3 * d];
        if cfg.qkv_bias {
            let q = vb.vec("q_bias", &[d])?;
            let v = vb.vec("v_bias", &[d])?;
            bias[..d].copy_from_slice(&q);
            bias[2 * d..].copy_from_slice(&v);
        }
        let qkv = Linear::from_parts(w, Some(tensor(bias.clone(), &[3 * d])?))?;
        let ws = cfg.window_size[block].unwrap_or(14);
        let nrel = (2 * ws - 1) * (2 * ws - 1);
        let table = vb.vec("relative_position_bias_table", &[nrel, heads])?;
        let stored = vb.buffer_i64("relative_position_index", &[ws * ws, ws * ws])?;
        if stored.is_some_and(|s| !is_relative_position_index(&s, ws)) {
            return Err(ModelError::RelativePositionIndex { name: vb.name("relative_position_index") });
        }
        // (rows, heads) → (heads, rows)
        let mut rb = vec![0f32; heads * nrel];
        for (r, row) in table.chunks(heads).enumerate() {
            for (h, v) in row.iter().enumerate() {
                rb[h * nrel + r] = *v;
            }
        }
        Ok(Attention {
            qkv,
            proj,
            heads,
            head_dim,
            scale: cfg.qk_scale.filter(|s| *s != 0.0).unwrap_or((head_dim as f64).powf(-0.5)),
            window: if windowed { Some(ws) } else { None },
            pad_row: bias,
            rel_bias: Some((ws, rb)),
            block,
        })
    }

    /// (Bw, n, 3C) values → (Bw, n, C) values. BEiT scales q before `q @ kᵀ` and timm
    /// scales the product; both are the scale applied inside the one fused kernel here.
    fn core(&self, qkv: &[f32], bw: usize, n: usize, live: Option<kernels::LiveRows>) -> Vec<f32> {
        let s = AttnShape { seqs: bw, n, heads: self.heads, head_dim: self.head_dim, scale: self.scale as f32 };
        let bias = self.rel_bias.as_ref().map(|(w, t)| kernels::RelBias { table: t, window: *w });
        kernels::attention(qkv, bias, live, s, Path::Best)
    }

    /// `residual + self(x)`, (B, N, C) → (B, N, C) on an `h×w` token grid; the residual
    /// is added by the output projection's GEMM.
    pub fn forward(&self, x: &Tensor, h: usize, w: usize, residual: &Tensor) -> Result<Tensor> {
        let (b, n, c) = x.dims3()?;
        let qkv = with_values(x, |v| self.qkv.forward_values(v))?;
        let out = match self.window {
            None => {
                if let Some((ws, _)) = self.rel_bias.as_ref().filter(|(ws, _)| ws * ws != n) {
                    return Err(ModelError::GlobalWindow { block: self.block, window: *ws, h, w });
                }
                self.core(&qkv, b, n, None)
            }
            Some(win) => {
                // (B·L, win², 3C)
                let (wins, ny, nx) = gather_windows(&qkv, (b, h, w, 3 * c), win, &self.pad_row);
                // Padded positions' outputs are dropped by scatter_windows: not computed.
                let live = (!h.is_multiple_of(win) || !w.is_multiple_of(win)).then_some(kernels::LiveRows { win, h, w });
                let o = self.core(&wins, b * ny * nx, win * win, live);
                scatter_windows(&o, (b, h, w, c), win, ny, nx)
            }
        };
        // (B, N, C)
        let out = tensor(out, &[b, n, c])?;
        self.proj.forward_residual(&out, residual)
    }
}

/// Partition a channels-last (B, H, W, C) map into `win×win` windows after padding bottom
/// and right with `pad` rows; returns (B·L, win², C) and the window grid.
fn gather_windows(x: &[f32], dims: (usize, usize, usize, usize), win: usize, pad: &[f32]) -> (Vec<f32>, usize, usize) {
    let (b, h, w, c) = dims;
    let ny = h.div_ceil(win);
    let nx = w.div_ceil(win);
    let mut out = vec![0f32; b * ny * nx * win * win * c];
    for (t, dst) in out.chunks_mut(c).enumerate() {
        let k = t % (win * win);
        let l = t / (win * win);
        let (bi, wy, wx) = (l / (ny * nx), (l / nx) % ny, l % nx);
        let (y, xx) = (wy * win + k / win, wx * win + k % win);
        if y < h && xx < w {
            dst.copy_from_slice(&x[((bi * h + y) * w + xx) * c..][..c]);
        } else {
            dst.copy_from_slice(pad);
        }
    }
    (out, ny, nx)
}

/// Inverse of [`gather_windows`], dropping the padded positions.
fn scatter_windows(x: &[f32], dims: (usize, usize, usize, usize), win: usize, ny: usize, nx: usize) -> Vec<f32> {
    let (b, h, w, c) = dims;
    let mut out = vec![0f32; b * h * w * c];
    for (t, src) in x.chunks(c).enumerate() {
        let k = t % (win * win);
        let l = t / (win * win);
        let (bi, wy, wx) = (l / (ny * nx), (l / nx) % ny, l % nx);
        let (y, xx) = (wy * win + k / win, wx * win + k % win);
        if y < h && xx < w {
            out[((bi * h + y) * w + xx) * c..][..c].copy_from_slice(src);
        }
    }
    out
}

/// One transformer block (pre-norm attention + MLP, optional layer scale). The layer
/// scales `gamma1/gamma2` are folded into `attn.proj` and `fc2` at load (`x + γ·(aWᵀ + b)`
/// computed as `(x + γb) + a(γW)ᵀ`, the same terms rounded in another order), and both
/// residuals are added by those GEMMs.
pub struct Block {
    norm1: LayerNorm,
    attn: Attention,
    norm2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
}

impl Block {
    pub fn new(vb: &Vb, cfg: &ComerConfig, i: usize) -> Result<Block> {
        let d = cfg.embed_dim;
        let hidden = (d as f64 * cfg.mlp_ratio) as usize;
        let [g1, g2] = cfg.flavor.names().layer_scale;
        let has_ls = if cfg.flavor == Flavor::Beit { cfg.init_values.is_some() } else { cfg.layer_scale };
        let mut attn = Attention::new(&vb.pp("attn"), cfg, i)?;
        let mut fc2 = Linear::new(&vb.pp("mlp").pp("fc2"), hidden, d, true)?;
        if has_ls {
            attn.proj.scale_outputs(&vb.vec(g1, &[d])?);
            fc2.scale_outputs(&vb.vec(g2, &[d])?);
        }
        Ok(Block {
            norm1: LayerNorm::new(&vb.pp("norm1"), d)?,
            attn,
            norm2: LayerNorm::new(&vb.pp("norm2"), d)?,
            fc1: Linear::new(&vb.pp("mlp").pp("fc1"), d, hidden, true)?,
            fc2,
        })
    }

    /// (B, N, C) → (B, N, C)
    pub fn forward(&self, x: &Tensor, h: usize, w: usize) -> Result<Tensor> {
        // x + γ1·attn(norm1(x)), then x + γ2·mlp(norm2(x)): γ folded, residuals in the GEMMs
        let x = super::profile::timed("attention", || self.attn.forward(&self.norm1.forward(x)?, h, w, x))?;
        let h1 = super::profile::timed("mlp fc1", || self.fc1.forward_gelu(&self.norm2.forward(&x)?))?;
        super::profile::timed("mlp fc2", || self.fc2.forward_residual(&h1, &x))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_index_matches_upstream_for_w2() {
        // upstream for window 2: [[4,3,1,0],[5,4,2,1],[7,6,4,3],[8,7,5,4]]
        assert_eq!(relative_position_index(2), vec![4, 3, 1, 0, 5, 4, 2, 1, 7, 6, 4, 3, 8, 7, 5, 4]);
        for w in [1, 2, 5, 14] {
            let mut idx = relative_position_index(w);
            assert!(is_relative_position_index(&idx, w));
            assert!(!is_relative_position_index(&idx[1..], w), "length");
            let last = idx.len() - 1;
            idx[last] += 1;
            assert!(!is_relative_position_index(&idx, w), "one value off");
        }
    }

    #[test]
    fn relpos_table_side_with_and_without_cls_rows() {
        assert_eq!(relpos_table_side(49), Some(7));
        assert_eq!(relpos_table_side(52), Some(7));
        assert_eq!(relpos_table_side(50), None);
        assert_eq!(relpos_table_side(1), Some(1));
        assert_eq!(relpos_table_side(0), None);
    }

    #[test]
    fn windows_round_trip_with_padding() {
        let x: Vec<f32> = (0..2 * 3 * 5).map(|v| v as f32).collect();
        let (w, ny, nx) = gather_windows(&x, (2, 3, 5, 1), 2, &[-1.0]);
        assert_eq!((ny, nx), (2, 3));
        assert_eq!(&w[..4], &[0.0, 1.0, 5.0, 6.0]);
        assert_eq!(scatter_windows(&w, (2, 3, 5, 1), 2, ny, nx), x);
    }
}
