//! `verify/vit.rs`: the plain-ViT building blocks shared by the source and target forwards.
//!
//! Mirrors timm `models/vision_transformer.py` (`PatchEmbed`, `Attention`, `Block` with
//! optional `LayerScale`) and the BEiT block of microsoft/unilm `beit/modeling_finetune.py`
//! (q/v bias, relative position bias, `gamma_1/gamma_2`), in candle-core on the CPU in f32.
//! Every family loader in `source_vit.rs` and `target_vit.rs` fills these structs from its own
//! tensor names; the forward computes patch tokens without any prefix token, plus the
//! position embedding, through every block, with no final norm.

use std::collections::BTreeMap;

use candle_core::{D, Device, Tensor};

use super::error::VerifyError;
use crate::formats::Checkpoint;
use crate::model::resize::{self, Layout};
use crate::model::vit::{relative_position_index, relpos_table_side};

pub type Result<T> = std::result::Result<T, VerifyError>;

/// Named f32 CPU tensors: a state dict ready for a forward.
#[derive(Debug, Clone, Default)]
pub struct Weights {
    map: BTreeMap<String, Tensor>,
}

impl Weights {
    /// The checkpoint's state dict (wrapper stripped), every tensor cast to f32.
    pub fn from_checkpoint(ckpt: &Checkpoint) -> Result<Weights> {
        let (_, tensors) = ckpt.state_dict();
        let mut w = Weights::default();
        for (name, view) in tensors {
            w.insert_f32(&name, view.to_f32(), &view.shape)?;
        }
        Ok(w)
    }

    /// Insert one tensor from its elements and shape.
    pub fn insert_f32(&mut self, name: &str, data: Vec<f32>, shape: &[usize]) -> Result<()> {
        let t = Tensor::from_vec(data, shape, &Device::Cpu).map_err(VerifyError::tensor(name))?;
        self.map.insert(name.to_string(), t);
        Ok(())
    }

    pub fn insert(&mut self, name: &str, t: Tensor) {
        self.map.insert(name.to_string(), t);
    }

    pub fn contains(&self, name: &str) -> bool {
        self.map.contains_key(name)
    }

    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.map.keys().map(String::as_str)
    }

    /// The tensor called `name`.
    pub fn get(&self, name: &str) -> Result<Tensor> {
        self.map
            .get(name)
            .cloned()
            .ok_or_else(|| VerifyError::MissingTensor {
                key: name.to_string(),
            })
    }

    /// The tensor called `name`, if present.
    pub fn opt(&self, name: &str) -> Option<Tensor> {
        self.map.get(name).cloned()
    }

    /// The tensor called `name`, checked to have exactly `shape`.
    pub fn get_shaped(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let t = self.get(name)?;
        if t.dims() != shape {
            return Err(VerifyError::Shape {
                key: name.to_string(),
                got: t.dims().to_vec(),
                expected: format!("{shape:?}"),
            });
        }
        Ok(t)
    }

    /// Number of blocks `prefix.0.`, `prefix.1.`, … for which `prefix.N.<probe>` exists.
    pub fn count_blocks(&self, prefix: &str, probe: &str) -> usize {
        (0..)
            .take_while(|i| self.contains(&format!("{prefix}.{i}.{probe}")))
            .count()
    }
}

/// Shape error for `key` when it is not what a loader can use.
pub fn shape_err(key: &str, t: &Tensor, expected: &str) -> VerifyError {
    VerifyError::Shape {
        key: key.to_string(),
        got: t.dims().to_vec(),
        expected: expected.into(),
    }
}

pub use crate::model::Activation;

/// `nn.LayerNorm` over the last dimension.
#[derive(Debug, Clone)]
pub struct LayerNorm {
    pub weight: Tensor,
    pub bias: Tensor,
    pub eps: f64,
}

impl LayerNorm {
    /// `{prefix}.{weight_name}` / `{prefix}.{bias_name}` of width `dim`.
    pub fn load(
        w: &Weights,
        prefix: &str,
        names: (&str, &str),
        dim: usize,
        eps: f64,
    ) -> Result<Self> {
        Self::load_keys(
            w,
            &format!("{prefix}.{}", names.0),
            &format!("{prefix}.{}", names.1),
            dim,
            eps,
        )
    }

    /// From two full keys (names not joined by a dot, e.g. Flax `LayerNorm_0/scale`).
    pub fn load_keys(w: &Weights, weight: &str, bias: &str, dim: usize, eps: f64) -> Result<Self> {
        Ok(LayerNorm {
            weight: w.get_shaped(weight, &[dim])?,
            bias: w.get_shaped(bias, &[dim])?,
            eps,
        })
    }

    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let mean = x.mean_keepdim(D::Minus1)?;
        let xc = x.broadcast_sub(&mean)?;
        let var = xc.sqr()?.mean_keepdim(D::Minus1)?;
        let xn = xc.broadcast_div(&(var + self.eps)?.sqrt()?)?;
        xn.broadcast_mul(&self.weight)?.broadcast_add(&self.bias)
    }
}

/// `nn.Linear`: `weight` is `(out, in)`.
#[derive(Debug, Clone)]
pub struct Linear {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
}

impl Linear {
    /// `{prefix}.weight` of shape `(out, in)` and `{prefix}.bias` of `(out,)`.
    pub fn load(w: &Weights, prefix: &str, out: usize, inp: usize) -> Result<Self> {
        Ok(Linear {
            weight: w.get_shaped(&format!("{prefix}.weight"), &[out, inp])?,
            bias: Some(w.get_shaped(&format!("{prefix}.bias"), &[out])?),
        })
    }

    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let (b, n, c) = x.dims3()?;
        let out = self.weight.dim(0)?;
        let y = x.reshape((b * n, c))?.matmul(&self.weight.t()?)?; // (B*N, Cout)
        let y = match &self.bias {
            Some(bias) => y.broadcast_add(bias)?,
            None => y,
        };
        y.reshape((b, n, out)) // (B, N, Cout)
    }
}

/// Softmax over the last dimension, max-subtracted.
fn softmax_last(x: &Tensor) -> candle_core::Result<Tensor> {
    let e = x.broadcast_sub(&x.max_keepdim(D::Minus1)?)?.exp()?;
    e.broadcast_div(&e.sum_keepdim(D::Minus1)?)
}

/// BEiT relative position bias table for a square window, without its 3 cls rows.
#[derive(Debug, Clone)]
pub struct RelPosTable {
    /// `((2w-1)^2, heads)`.
    pub table: Tensor,
    pub window: usize,
}

impl RelPosTable {
    /// From a table of `(2w-1)^2` rows (ViT-CoMer `beit-comer` layout) or of `(2w-1)^2 + 3`
    /// rows (unilm layout: the last three are cls rows, dropped). The two row counts never
    /// coincide for odd `2w-1`.
    pub fn from_table(key: &str, table: &Tensor) -> Result<Self> {
        let (rows, _) = table
            .dims2()
            .map_err(|_| shape_err(key, table, "(rows, heads)"))?;
        let side = relpos_table_side(rows).ok_or_else(|| shape_err(key, table, "((2w-1)^2 [+ 3], heads)"))?;
        let table = table
            .narrow(0, 0, side * side)
            .map_err(VerifyError::tensor(key))?;
        Ok(RelPosTable {
            table,
            window: side.div_ceil(2),
        })
    }

    /// The bias `(1, heads, N, N)` for an `(gh, gw)` grid equal to the window.
    fn bias(&self, (gh, gw): (usize, usize)) -> Result<Tensor> {
        let w = self.window;
        if (gh, gw) != (w, w) {
            return Err(VerifyError::Grid {
                key: "relative_position_bias_table".into(),
                reason: format!("grid {gh}x{gw} differs from the table's window {w}x{w}"),
            });
        }
        let n = gh * gw;
        // unilm's index without its cls row and column
        let idx: Vec<u32> = relative_position_index(w).into_iter().map(|i| i as u32).collect();
        let idx = Tensor::from_vec(idx, n * n, &Device::Cpu)?;
        let heads = self.table.dim(1)?;
        let bias = self.table.index_select(&idx, 0)?; // (N*N, H)
        let bias = bias.reshape((n, n, heads))?.permute((2, 0, 1))?; // (H, N, N)
        Ok(bias.unsqueeze(0)?.contiguous()?) // (1, H, N, N)
    }
}

/// Multi-head self-attention with a fused `(3C, C)` q/k/v projection (timm layout).
#[derive(Debug, Clone)]
pub struct Attention {
    pub qkv: Linear,
    pub proj: Linear,
    pub num_heads: usize,
    pub rel_pos: Option<RelPosTable>,
}

impl Attention {
    fn forward(&self, x: &Tensor, grid: (usize, usize)) -> Result<Tensor> {
        let (b, n, c) = x.dims3()?;
        let h = self.num_heads;
        let d = c / h;
        let qkv = self.qkv.forward(x)?; // (B, N, 3C)
        let qkv = qkv.reshape((b, n, 3, h, d))?.permute((2, 0, 3, 1, 4))?; // (3, B, H, N, D)
        let q = (qkv.get(0)?.contiguous()? * (d as f64).powf(-0.5))?; // (B, H, N, D)
        let k = qkv.get(1)?.contiguous()?; // (B, H, N, D)
        let v = qkv.get(2)?.contiguous()?; // (B, H, N, D)
        let attn = q.matmul(&k.t()?.contiguous()?)?; // (B, H, N, N)
        let attn = match &self.rel_pos {
            Some(table) => attn.broadcast_add(&table.bias(grid)?)?,
            None => attn,
        };
        let out = softmax_last(&attn)?.matmul(&v)?; // (B, H, N, D)
        let out = out.transpose(1, 2)?.contiguous()?.reshape((b, n, c))?; // (B, N, C)
        Ok(self.proj.forward(&out)?)
    }
}

/// Pre-norm transformer block with optional layer scale.
#[derive(Debug, Clone)]
pub struct Block {
    /// `blocks.N` (or the family's own block name), for errors.
    pub name: String,
    pub norm1: LayerNorm,
    pub attn: Attention,
    pub norm2: LayerNorm,
    pub fc1: Linear,
    pub fc2: Linear,
    pub act: Activation,
    pub gamma1: Option<Tensor>,
    pub gamma2: Option<Tensor>,
}

impl Block {
    fn forward(&self, x: &Tensor, grid: (usize, usize)) -> Result<Tensor> {
        let y = self.attn.forward(&self.norm1.forward(x)?, grid)?;
        let y = scale(y, &self.gamma1)?;
        let x = (x + y)?;
        let y = self.fc1.forward(&self.norm2.forward(&x)?)?;
        let y = self.fc2.forward(&self.act.forward(&y)?)?;
        let y = scale(y, &self.gamma2)?;
        Ok((x + y)?)
    }
}

fn scale(y: Tensor, gamma: &Option<Tensor>) -> candle_core::Result<Tensor> {
    match gamma {
        Some(g) => y.broadcast_mul(g),
        None => Ok(y),
    }
}

/// Absolute position embedding of the patch grid (prefix rows already removed).
#[derive(Debug, Clone)]
pub struct PosEmbed {
    /// `(gh * gw, C)` in row-major grid order.
    pub table: Tensor,
    pub grid: (usize, usize),
}

impl PosEmbed {
    /// From `(rows, C)` with `prefix` leading rows to drop and a square remainder.
    pub fn from_rows(key: &str, rows: &Tensor, prefix: usize) -> Result<Self> {
        let (n, _) = rows
            .dims2()
            .map_err(|_| shape_err(key, rows, "(rows, C)"))?;
        let side = (n.saturating_sub(prefix) as f64).sqrt().round() as usize;
        if n < prefix || side * side + prefix != n || side == 0 {
            return Err(shape_err(key, rows, &format!("({prefix} + g^2, C)")));
        }
        let table = rows
            .narrow(0, prefix, side * side)
            .map_err(VerifyError::tensor(key))?;
        Ok(PosEmbed {
            table,
            grid: (side, side),
        })
    }

    /// The embedding for an `(gh, gw)` grid, bicubically resized when it differs: `(1, N, C)`.
    fn for_grid(&self, grid: (usize, usize)) -> Result<Tensor> {
        let (n, c) = self.table.dims2()?;
        if grid == self.grid {
            return Ok(self.table.unsqueeze(0)?); // (1, N, C)
        }
        let rows = self.table.flatten_all()?.to_vec1::<f32>()?; // (N, C)
        debug_assert_eq!(rows.len(), n * c);
        let out = resize::bicubic(&rows, c, Layout::Rows, self.grid, grid);
        Ok(Tensor::from_vec(out, (1, grid.0 * grid.1, c), &Device::Cpu)?) // (1, N', C)
    }
}

/// Patch embedding: a `p x p` convolution with stride `p`, as an unfold and a matmul.
#[derive(Debug, Clone)]
pub struct PatchEmbed {
    /// `(C, in_chans, p, p)`.
    pub weight: Tensor,
    pub bias: Option<Tensor>,
}

impl PatchEmbed {
    pub fn patch(&self) -> usize {
        self.weight.dims().last().copied().unwrap_or(1)
    }

    /// `(B, 3, H, W)` → tokens `(B, gh * gw, C)` and the grid; trailing pixels that do not fill
    /// a patch are dropped, as the strided convolution does.
    fn forward(&self, img: &Tensor) -> Result<(Tensor, (usize, usize))> {
        let (b, cin, h, w) = img.dims4()?;
        let (cout, wcin, p, _) = self.weight.dims4()?;
        let (gh, gw) = (h / p, w / p);
        if gh == 0 || gw == 0 || cin != wcin {
            return Err(VerifyError::Grid {
                key: "image".into(),
                reason: format!("{cin}x{h}x{w} does not fit {wcin}-channel {p}x{p} patches"),
            });
        }
        let x = img.narrow(2, 0, gh * p)?.narrow(3, 0, gw * p)?;
        let x = x.reshape(&[b, cin, gh, p, gw, p][..])?; // (B, Cin, gh, p, gw, p)
        let x = x.permute(vec![0, 2, 4, 1, 3, 5])?.contiguous()?; // (B, gh, gw, Cin, p, p)
        let x = x.reshape((b * gh * gw, cin * p * p))?; // (B*N, Cin*p*p)
        let wf = self.weight.reshape((cout, cin * p * p))?; // (C, Cin*p*p)
        let y = x.matmul(&wf.t()?)?; // (B*N, C)
        let y = match &self.bias {
            Some(bias) => y.broadcast_add(bias)?,
            None => y,
        };
        Ok((y.reshape((b, gh * gw, cout))?, (gh, gw))) // (B, N, C)
    }
}

/// A plain ViT on patch tokens: patch embed, + position (optional), pre-norm (CLIP `ln_pre`,
/// Uni-Perceiver `embeddings_norm`), blocks. No prefix tokens, no final norm.
#[derive(Debug, Clone)]
pub struct PlainVit {
    pub patch_embed: PatchEmbed,
    pub pos_embed: Option<PosEmbed>,
    pub pre_norm: Option<LayerNorm>,
    pub blocks: Vec<Block>,
}

impl PlainVit {
    /// Tokens `(B, N, C)` after the last block.
    pub fn forward(&self, image: &Tensor) -> Result<Tensor> {
        let (mut x, grid) = self.patch_embed.forward(image)?;
        if let Some(pos) = &self.pos_embed {
            x = x.broadcast_add(&pos.for_grid(grid)?)?;
        }
        if let Some(norm) = &self.pre_norm {
            x = norm.forward(&x)?;
        }
        for block in &self.blocks {
            x = block
                .forward(&x, grid)
                .map_err(|e| in_block(e, &block.name))?;
        }
        Ok(x)
    }

    /// Tokens after every block, for locating the first block where two forwards part.
    pub fn forward_taps(&self, image: &Tensor) -> Result<Vec<Tensor>> {
        let (mut x, grid) = self.patch_embed.forward(image)?;
        if let Some(pos) = &self.pos_embed {
            x = x.broadcast_add(&pos.for_grid(grid)?)?;
        }
        if let Some(norm) = &self.pre_norm {
            x = norm.forward(&x)?;
        }
        let mut taps = vec![x.clone()];
        for block in &self.blocks {
            x = block
                .forward(&x, grid)
                .map_err(|e| in_block(e, &block.name))?;
            taps.push(x.clone());
        }
        Ok(taps)
    }
}

/// Name the block in an anonymous tensor error.
fn in_block(e: VerifyError, name: &str) -> VerifyError {
    match e {
        VerifyError::Tensor { block, source } if block.is_empty() => VerifyError::Tensor {
            block: name.to_string(),
            source,
        },
        other => other,
    }
}
