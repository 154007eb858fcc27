//! `model/plain_vit.rs`: the plain-ViT building blocks shared by the source families'
//! forwards (`families/<family>.rs`) and the artifact's ViT branch (`verify/target_vit.rs`).
//!
//! Mirrors timm `models/vision_transformer.py` (`PatchEmbed`, `Attention`, `Block` with
//! optional `LayerScale`) and the BEiT block of microsoft/unilm `beit/modeling_finetune.py`
//! (q/v bias, relative position bias, `gamma_1/gamma_2`), in candle-core on the CPU in f32.
//! Every family fills these structs from its own tensor names ([`load_timm`] and
//! [`load_beit`] are the two layouts the targets share with their source families); the
//! forward computes patch tokens without any prefix token, plus the position embedding,
//! through every block, with no final norm. This is not the ViT-CoMer forward (`comer.rs`).


use candle_core::{D, Device, Tensor};

use crate::model::resize::{self, Layout};
use crate::model::vit::{relative_position_index, relpos_table_side};

pub use super::error::VitError;

/// Result of the plain-ViT loaders and forwards.
pub type Result<T> = std::result::Result<T, VitError>;

/// The source's or the artifact's tensors by name, f32 on the CPU: the crate's one
/// named-tensor store (`model::weights::Store`), read without its strict-load accounting.
pub type Weights = super::weights::Store;

/// Shape error for `key` when it is not what a loader can use.
pub fn shape_err(key: &str, t: &Tensor, expected: &str) -> VitError {
    VitError::Shape {
        key: key.to_string(),
        got: t.dims().to_vec(),
        expected: expected.into(),
    }
}

pub use crate::model::Activation;

/// `nn.LayerNorm` over the last dimension.
#[derive(Debug, Clone)]
pub struct LayerNorm {
    /// Scale `(C,)`.
    pub weight: Tensor,
    /// Shift `(C,)`.
    pub bias: Tensor,
    /// Added to the variance.
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

    /// Normalise `x` over its last dimension.
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
    /// `(out, in)`.
    pub weight: Tensor,
    /// `(out,)`, when the layer has one.
    pub bias: Option<Tensor>,
}

impl Linear {
    /// A fused `qkv` Linear `(3C, C)` from separate q, k, v Linears `{prefix}.{q|k|v}.{weight,
    /// bias}` (Hugging Face ViT `query/key/value`, SigLIP `q_proj/k_proj/v_proj`), concatenated
    /// in q, k, v order as timm's `qkv` holds them.
    pub fn fused_qkv(w: &Weights, prefix: &str, [q, k, v]: [&str; 3], c: usize) -> Result<Linear> {
        let get = |n: &str, part: &str, s: &[usize]| w.get_shaped(&format!("{prefix}.{n}.{part}"), s);
        let weight = Tensor::cat(&[get(q, "weight", &[c, c])?, get(k, "weight", &[c, c])?, get(v, "weight", &[c, c])?], 0)?;
        let bias = Tensor::cat(&[get(q, "bias", &[c])?, get(k, "bias", &[c])?, get(v, "bias", &[c])?], 0)?;
        Ok(Linear { weight, bias: Some(bias) })
    }

    /// `{prefix}.weight` of shape `(out, in)` and `{prefix}.bias` of `(out,)`.
    pub fn load(w: &Weights, prefix: &str, out: usize, inp: usize) -> Result<Self> {
        Ok(Linear {
            weight: w.get_shaped(&format!("{prefix}.weight"), &[out, inp])?,
            bias: Some(w.get_shaped(&format!("{prefix}.bias"), &[out])?),
        })
    }

    /// `(B, N, in)` → `(B, N, out)`.
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
    /// Window side w.
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
            .map_err(VitError::tensor(key))?;
        Ok(RelPosTable {
            table,
            window: side.div_ceil(2),
        })
    }

    /// The bias `(1, heads, N, N)` for an `(gh, gw)` grid equal to the window.
    fn bias(&self, (gh, gw): (usize, usize)) -> Result<Tensor> {
        let w = self.window;
        if (gh, gw) != (w, w) {
            return Err(VitError::Grid {
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
    /// The fused q/k/v projection `(3C, C)`.
    pub qkv: Linear,
    /// The output projection.
    pub proj: Linear,
    /// Attention heads.
    pub num_heads: usize,
    /// BEiT's relative position bias, when the family has one.
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
    /// Norm before attention.
    pub norm1: LayerNorm,
    /// Self-attention.
    pub attn: Attention,
    /// Norm before the MLP.
    pub norm2: LayerNorm,
    /// MLP input projection.
    pub fc1: Linear,
    /// MLP output projection.
    pub fc2: Linear,
    /// MLP activation.
    pub act: Activation,
    /// Layer scale of the attention branch, when present.
    pub gamma1: Option<Tensor>,
    /// Layer scale of the MLP branch, when present.
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

/// How a source resizes its position table to another grid at run time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PosResize {
    /// `F.interpolate(mode="bicubic", align_corners=False)`: timm, upstream ViT-CoMer.
    #[default]
    Bicubic,
    /// `F.interpolate(mode="bilinear", align_corners=False, antialias=True)`: SigLIP 2.
    /// Modelled for upsampling (where antialiasing changes nothing); a smaller grid is refused.
    BilinearAntialias,
}

/// Absolute position embedding of the patch grid (prefix rows already removed).
#[derive(Debug, Clone)]
pub struct PosEmbed {
    /// `(gh * gw, C)` in row-major grid order.
    pub table: Tensor,
    /// The table's grid.
    pub grid: (usize, usize),
    /// How the source resizes it.
    pub resize: PosResize,
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
            .map_err(VitError::tensor(key))?;
        Ok(PosEmbed { table, grid: (side, side), resize: PosResize::Bicubic })
    }

    /// The embedding for an `(gh, gw)` grid, bicubically resized when it differs: `(1, N, C)`.
    fn for_grid(&self, grid: (usize, usize)) -> Result<Tensor> {
        let (n, c) = self.table.dims2()?;
        if grid == self.grid {
            return Ok(self.table.unsqueeze(0)?); // (1, N, C)
        }
        let rows = self.table.flatten_all()?.to_vec1::<f32>()?; // (N, C)
        debug_assert_eq!(rows.len(), n * c);
        let out = match self.resize {
            PosResize::Bicubic => resize::bicubic(&rows, c, Layout::Rows, self.grid, grid),
            // Antialiasing changes nothing when upsampling: plain bilinear is the same function.
            PosResize::BilinearAntialias if grid.0 >= self.grid.0 && grid.1 >= self.grid.1 => {
                resize::bilinear(&rows, c, Layout::Rows, self.grid, grid)
            }
            PosResize::BilinearAntialias => {
                return Err(VitError::Grid {
                    key: "pos_embed".into(),
                    reason: format!(
                        "an antialiased bilinear resize {:?} -> {grid:?} (downsampling) is not modelled",
                        self.grid
                    ),
                });
            }
        };
        Ok(Tensor::from_vec(out, (1, grid.0 * grid.1, c), &Device::Cpu)?) // (1, N', C)
    }
}

/// Patch embedding: a `p x p` convolution with stride `p`, as an unfold and a matmul.
#[derive(Debug, Clone)]
pub struct PatchEmbed {
    /// `(C, in_chans, p, p)`.
    pub weight: Tensor,
    /// `(C,)`, when the projection has one.
    pub bias: Option<Tensor>,
}

impl PatchEmbed {
    /// Patch side p (the kernel's last dimension).
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
            return Err(VitError::Grid {
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
    /// Patch embedding.
    pub patch_embed: PatchEmbed,
    /// Absolute position embedding, when the family adds one.
    pub pos_embed: Option<PosEmbed>,
    /// Norm before the first block (CLIP `ln_pre`, Uni-Perceiver `embeddings_norm`).
    pub pre_norm: Option<LayerNorm>,
    /// The transformer blocks, in order.
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
        let (x, grid) = self.patch_embed.forward(image)?;
        self.taps_from_patches(x, grid)
    }

    /// The patch embedding alone: tokens `(B, gh * gw, C)` and the grid.
    pub fn patch_tokens(&self, image: &Tensor) -> Result<(Tensor, (usize, usize))> {
        self.patch_embed.forward(image)
    }

    /// [`PlainVit::forward_taps`] from patch tokens `(B, gh * gw, C)` (another model's patch
    /// embedding, say): position, pre-norm, then every block.
    pub fn taps_from_patches(&self, patches: Tensor, grid: (usize, usize)) -> Result<Vec<Tensor>> {
        let mut x = self.stem_from_patches(patches, grid)?;
        let mut taps = vec![x.clone()];
        for block in &self.blocks {
            x = block.run(&x, grid)?;
            taps.push(x.clone());
        }
        Ok(taps)
    }
}

/// A plain ViT whose blocks are read from its weights one at a time: the stem (patch
/// embedding, position, pre-norm) held, each block built when asked for. Verification
/// streams a source and an artifact through it block by block, so neither model is ever
/// held whole (a 4 GB ViT-g/14 stays within a block's worth of weights).
pub struct LazyVit<'w> {
    /// Patch embedding, position embedding and pre-norm; `blocks` is empty.
    pub stem: PlainVit,
    /// The number of blocks.
    pub depth: usize,
    build: Box<dyn Fn(usize) -> Result<Block> + 'w>,
}

impl<'w> LazyVit<'w> {
    /// A stem (its `blocks` are ignored), its depth, and how block `i` is read.
    pub fn new(mut stem: PlainVit, depth: usize, build: impl Fn(usize) -> Result<Block> + 'w) -> LazyVit<'w> {
        stem.blocks.clear();
        LazyVit { stem, depth, build: Box::new(build) }
    }

    /// Block `i` (`0..depth`), read from the weights now.
    pub fn block(&self, i: usize) -> Result<Block> {
        (self.build)(i)
    }

    /// Every block read: the whole model.
    pub fn build(self) -> Result<PlainVit> {
        let LazyVit { mut stem, depth, build } = self;
        stem.blocks.reserve(depth);
        for i in 0..depth {
            stem.blocks.push(build(i)?);
        }
        Ok(stem)
    }
}

impl PlainVit {
    /// The stem on patch tokens `(B, N, C)`: position, then pre-norm (the first tap).
    pub fn stem_from_patches(&self, patches: Tensor, grid: (usize, usize)) -> Result<Tensor> {
        let mut x = patches;
        if let Some(pos) = &self.pos_embed {
            x = x.broadcast_add(&pos.for_grid(grid)?)?;
        }
        if let Some(norm) = &self.pre_norm {
            x = norm.forward(&x)?;
        }
        Ok(x)
    }
}

impl Block {
    /// This block on tokens `(B, N, C)` of a `grid`, errors naming the block.
    pub fn run(&self, x: &Tensor, grid: (usize, usize)) -> Result<Tensor> {
        self.forward(x, grid).map_err(|e| in_block(e, &self.name))
    }
}

/// Name the block in an anonymous tensor error.
fn in_block(e: VitError, name: &str) -> VitError {
    match e {
        VitError::Tensor { block, source } if block.is_empty() => VitError::Tensor {
            block: name.to_string(),
            source,
        },
        other => other,
    }
}

// ---- loaders shared by the targets and their source families ----

/// `prefix` when `probe` exists under it, else the empty prefix.
pub fn pick_prefix(w: &Weights, prefix: &str, probe: &str) -> String {
    if w.contains(&format!("{prefix}{probe}")) {
        prefix.to_string()
    } else {
        String::new()
    }
}

/// Embed width from a patch kernel `(C, 3, p, p)`, checked against the head count.
pub fn embed_dim(key: &str, kernel: &Tensor, num_heads: usize) -> Result<usize> {
    let dims = kernel.dims();
    if dims.len() != 4 || num_heads == 0 || !dims[0].is_multiple_of(num_heads) {
        return Err(shape_err(
            key,
            kernel,
            &format!("(C, 3, p, p) with C divisible by {num_heads} heads"),
        ));
    }
    Ok(dims[0])
}

/// A position table as `(rows, C)`, whether stored `(1, rows, C)` or `(rows, C)`.
pub fn rows2(key: &str, t: Tensor) -> Result<Tensor> {
    match t.dims() {
        [1, _, _] => Ok(t.squeeze(0)?),
        [_, _] => Ok(t),
        _ => Err(shape_err(key, &t, "(1, rows, C) or (rows, C)")),
    }
}

/// Hidden width of an MLP from its first weight `(hidden, C)`.
pub fn hidden_of(w: &Weights, key: &str) -> Result<usize> {
    let t = w.get(key)?;
    t.dims()
        .first()
        .copied()
        .ok_or_else(|| shape_err(key, &t, "(hidden, C)"))
}

/// Number of blocks `prefix.N.` that hold `probe`; none is a missing-tensor error.
pub fn mlp_depth(w: &Weights, prefix: &str, probe: &str) -> Result<usize> {
    match w.count_blocks(prefix, probe) {
        0 => Err(VitError::MissingTensor {
            key: format!("{prefix}.0.{probe}"),
        }),
        n => Ok(n),
    }
}

/// timm / DeiT / MAE / DINOv2: `blocks.N.{norm1, attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2}`
/// with optional layer scale `blocks.N.{gammas[0], gammas[1]}` (DINOv2 `ls1.gamma`, ViT-CoMer
/// `gamma1`); `prefix` leading `pos_embed` rows (cls, dist) are dropped.
pub fn load_timm(w: &Weights, heads: usize, prefix: usize, gammas: [&str; 2]) -> Result<PlainVit> {
    lazy_timm(w, heads, prefix, gammas)?.build()
}

/// [`load_timm`] with its blocks read one at a time ([`LazyVit`]).
pub fn lazy_timm<'w>(w: &'w Weights, heads: usize, prefix: usize, gammas: [&str; 2]) -> Result<LazyVit<'w>> {
    let eps = 1e-6;
    let kernel = w.get("patch_embed.proj.weight")?;
    let c = embed_dim("patch_embed.proj.weight", &kernel, heads)?;
    let pos = rows2("pos_embed", w.get("pos_embed")?)?;
    let pos = PosEmbed::from_rows("pos_embed", &pos, prefix)?;
    let depth = mlp_depth(w, "blocks", "norm1.weight")?;
    let stem = PlainVit {
        patch_embed: PatchEmbed {
            weight: kernel,
            bias: w.opt("patch_embed.proj.bias"),
        },
        pos_embed: Some(pos),
        pre_norm: None,
        blocks: Vec::new(),
    };
    let gammas = gammas.map(str::to_string);
    Ok(LazyVit::new(stem, depth, move |i| {
        let p = format!("blocks.{i}");
        let hidden = hidden_of(w, &format!("{p}.mlp.fc1.weight"))?;
        Ok(Block {
            name: p.clone(),
            norm1: LayerNorm::load(w, &format!("{p}.norm1"), ("weight", "bias"), c, eps)?,
            attn: Attention {
                qkv: Linear::load(w, &format!("{p}.attn.qkv"), 3 * c, c)?,
                proj: Linear::load(w, &format!("{p}.attn.proj"), c, c)?,
                num_heads: heads,
                rel_pos: None,
            },
            norm2: LayerNorm::load(w, &format!("{p}.norm2"), ("weight", "bias"), c, eps)?,
            fc1: Linear::load(w, &format!("{p}.mlp.fc1"), hidden, c)?,
            fc2: Linear::load(w, &format!("{p}.mlp.fc2"), c, hidden)?,
            act: Activation::Gelu,
            gamma1: w.opt(&format!("{p}.{}", gammas[0])),
            gamma2: w.opt(&format!("{p}.{}", gammas[1])),
        })
    }))
}

/// BEiT / BEiTv2 (unilm): qkv without bias plus `q_bias`/`v_bias` (k bias zero), a per-block
/// `attn.relative_position_bias_table` or the shared `rel_pos_bias.relative_position_bias_table`
/// (minus its 3 cls rows; ViT-CoMer `beit-comer` tables have none), `gamma_1/gamma_2`; an
/// absolute `pos_embed` (with its cls row) only when stored.
pub fn load_beit(w: &Weights, heads: usize) -> Result<PlainVit> {
    lazy_beit(w, heads)?.build()
}

/// [`load_beit`] with its blocks read one at a time ([`LazyVit`]).
pub fn lazy_beit(w: &Weights, heads: usize) -> Result<LazyVit<'_>> {
    let eps = 1e-6;
    let kernel = w.get("patch_embed.proj.weight")?;
    let c = embed_dim("patch_embed.proj.weight", &kernel, heads)?;
    let pos_embed = match w.opt("pos_embed") {
        Some(t) => Some(PosEmbed::from_rows(
            "pos_embed",
            &rows2("pos_embed", t)?,
            1,
        )?),
        None => None,
    };
    let shared_key = "rel_pos_bias.relative_position_bias_table";
    let shared = match w.opt(shared_key) {
        Some(t) => Some(RelPosTable::from_table(shared_key, &t)?),
        None => None,
    };
    let depth = mlp_depth(w, "blocks", "norm1.weight")?;
    let stem = PlainVit {
        patch_embed: PatchEmbed {
            weight: kernel,
            bias: w.opt("patch_embed.proj.bias"),
        },
        pos_embed,
        pre_norm: None,
        blocks: Vec::new(),
    };
    Ok(LazyVit::new(stem, depth, move |i| {
        let p = format!("blocks.{i}");
        let hidden = hidden_of(w, &format!("{p}.mlp.fc1.weight"))?;
        let q_bias = w.get_shaped(&format!("{p}.attn.q_bias"), &[c])?;
        let v_bias = w.get_shaped(&format!("{p}.attn.v_bias"), &[c])?;
        let qkv_bias = Tensor::cat(&[&q_bias, &q_bias.zeros_like()?, &v_bias], 0)?;
        let table_key = format!("{p}.attn.relative_position_bias_table");
        let rel_pos = match (w.opt(&table_key), &shared) {
            (Some(t), _) => Some(RelPosTable::from_table(&table_key, &t)?),
            (None, Some(s)) => Some(s.clone()),
            (None, None) => None,
        };
        Ok(Block {
            name: p.clone(),
            norm1: LayerNorm::load(w, &format!("{p}.norm1"), ("weight", "bias"), c, eps)?,
            attn: Attention {
                qkv: Linear {
                    weight: w.get_shaped(&format!("{p}.attn.qkv.weight"), &[3 * c, c])?,
                    bias: Some(qkv_bias),
                },
                proj: Linear::load(w, &format!("{p}.attn.proj"), c, c)?,
                num_heads: heads,
                rel_pos,
            },
            norm2: LayerNorm::load(w, &format!("{p}.norm2"), ("weight", "bias"), c, eps)?,
            fc1: Linear::load(w, &format!("{p}.mlp.fc1"), hidden, c)?,
            fc2: Linear::load(w, &format!("{p}.mlp.fc2"), c, hidden)?,
            act: Activation::Gelu,
            gamma1: w.opt(&format!("{p}.gamma_1")),
            gamma2: w.opt(&format!("{p}.gamma_2")),
        })
    }))
}
