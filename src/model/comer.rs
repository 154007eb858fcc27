//! The ViT-CoMer backbone of all three flavours: spatial prior CNN (`spm`), patch
//! embedding with a run-time bicubic position grid, the interaction blocks (MRFP, CTI to
//! ViT, CTI to CNN with optional CNN feature interaction, extra CTIs) and the output
//! pyramid (`up`, `add_vit_feature`, BatchNorm `norm1..4`).
//!
//! Mirrors `detection/mmdet_custom/models/backbones/{vit_comer,comer_modules}.py`, the
//! segmentation copies (MRFP always built with hidden `dim_ratio`·D, ViT maps added per
//! interaction), the Co-DETR branch's `beit_comer.py` `BEiTComer2` (same modules named
//! `injector`/`extractor`/`extra_extractors`/`multiconv`), and `MSDeformAttn` of
//! `ops/modules/ms_deform_attn.py`.

use candle_core::Tensor;

use super::buffer::par_filled;
use super::config::{ComerConfig, Flavor};
use super::error::ModelError;
use super::kernels::{self, Path};
use super::nn::{BatchNorm, Conv2d, ConvNhwc, DwConv, LayerNorm, Linear, Result, add_at, tensor, values, with_values};
use super::ops::{self, DeformShape, Level};
use super::resize;
use super::vit::Block;
use super::weights::Vb;

/// `MSDeformAttn` with three levels (every use in ViT-CoMer has n_levels = 3).
pub struct MsDeformAttn {
    /// `sampling_offsets` (2n outputs) and `attention_weights` (n) as one Linear of 3n
    /// outputs (n = heads·levels·points): one GEMM over the query, rows read by
    /// [`ops::ms_deform_attn_rows`].
    sampling: Linear,
    value_proj: Linear,
    output_proj: Linear,
    heads: usize,
    points: usize,
    head_dim: usize,
}

const N_LEVELS: usize = 3;

impl MsDeformAttn {
    pub fn new(vb: &Vb, cfg: &ComerConfig) -> Result<MsDeformAttn> {
        let d = cfg.embed_dim;
        let (m, p) = (cfg.deform_num_heads, cfg.n_points);
        let dv = (d as f64 * cfg.deform_ratio) as usize;
        let n = m * N_LEVELS * p;
        let (so, aw) = (vb.pp("sampling_offsets"), vb.pp("attention_weights"));
        // (2n, D) over (n, D) → (3n, D); biases likewise
        let weight = Tensor::cat(&[so.get("weight", &[2 * n, d])?, aw.get("weight", &[n, d])?], 0)?;
        let bias = Tensor::cat(&[so.get("bias", &[2 * n])?, aw.get("bias", &[n])?], 0)?;
        Ok(MsDeformAttn {
            sampling: Linear::from_parts(weight, Some(bias))?,
            value_proj: Linear::new(&vb.pp("value_proj"), d, dv, true)?,
            output_proj: Linear::new(&vb.pp("output_proj"), dv, d, true)?,
            heads: m,
            points: p,
            head_dim: dv / m,
        })
    }

    /// query (B, Lq, D), feat (B, Len, D) → (B, Lq, D), plus `residual` (B, Lq, D) when
    /// given (added by the output projection's GEMM).
    pub fn forward(
        &self,
        query: &Tensor,
        refs: &[[f32; 2]],
        feat: &Tensor,
        levels: &[Level],
        residual: Option<&Tensor>,
    ) -> Result<Tensor> {
        let (b, lq, _) = query.dims3()?;
        let len_in = feat.dim(1)?;
        let value = with_values(feat, |v| self.value_proj.forward_values(v))?;
        // (B·Lq, 3n): each query's 2n offsets, then its n logits
        let sampling = with_values(query, |q| self.sampling.forward_values(q))?;
        let n = self.sampling.out_dim / 3;
        let s = DeformShape { batch: b, len_in, heads: self.heads, head_dim: self.head_dim, points: self.points };
        let out = super::profile::timed("msdeform core", || {
            ops::ms_deform_attn_rows(&value, levels, refs, (&sampling, 3 * n), (&sampling[2 * n..], 3 * n), s)
        });
        let d = self.output_proj.out_dim;
        let y = match residual {
            Some(r) => with_values(r, |r| self.output_proj.forward_values_residual(&out, r))?,
            None => self.output_proj.forward_values(&out),
        };
        // (B, Lq, D)
        tensor(y, &[b, lq, d])
    }
}

/// Apply `f(level, src, dst, (H_l, W_l, C), y, x0)` to the three token levels of every
/// image of a (B, 21·HW/4, C) buffer, writing a buffer of the same shape: `src` is the
/// level's map in one image, and `dst` the output tokens `x0..` of its row `y`. The work is
/// split into row segments of W/2 tokens (the narrowest level's row), in parallel.
fn per_level(
    src: &[f32],
    (b, n, c): (usize, usize, usize),
    h: usize,
    w: usize,
    f: impl Fn(usize, &[f32], &mut [f32], (usize, usize, usize), usize, usize) + Sync + Send,
) -> Vec<f32> {
    let levels = ops::pyramid_levels(h, w);
    // Row widths 2W, W, W/2 and level starts 0, 4HW, 5HW are all multiples of W/2 for an
    // even W (the forward only admits those); fall back to single tokens otherwise.
    let seg = if w.is_multiple_of(2) { (w / 2).max(1) } else { 1 };
    super::profile::timed("dwconv", || {
        par_filled(b * n * c, seg * c, |i, dst| {
            let t = i * seg;
            let (bi, ti) = (t / n, t % n);
            // the last level that starts at or before token ti
            let li = levels.iter().rposition(|l| l.start <= ti).unwrap_or(0);
            let l = levels[li];
            let local = ti - l.start;
            let img = &src[(bi * n + l.start) * c..][..l.h * l.w * c];
            f(li, img, dst, (l.h, l.w, c), local / l.w, local % l.w);
        })
    })
}

/// `ConvFFN`: fc1 → depthwise 3×3 per level (`DWConv`) → GELU → fc2.
pub struct ConvFfn {
    fc1: Linear,
    dwconv: DwConv,
    fc2: Linear,
}

impl ConvFfn {
    pub fn new(vb: &Vb, d: usize, hidden: usize) -> Result<ConvFfn> {
        Ok(ConvFfn {
            fc1: Linear::new(&vb.pp("fc1"), d, hidden, true)?,
            dwconv: DwConv::new(&vb.pp("dwconv").pp("dwconv"), hidden, 3)?,
            fc2: Linear::new(&vb.pp("fc2"), hidden, d, true)?,
        })
    }

    /// `residual + self(x)`: the residual (B, N, D) added by fc2's GEMM.
    pub fn forward(&self, x: &Tensor, h: usize, w: usize, residual: &Tensor) -> Result<Tensor> {
        let (b, n, _) = x.dims3()?;
        let y = with_values(x, |v| self.fc1.forward_values(v))?;
        // GELU on each row segment as soon as its convolution is written
        let y = per_level(&y, (b, n, self.fc1.out_dim), h, w, |_, s, d, dims, oy, x0| {
            self.dwconv.run(s, d, dims, oy, x0, 0);
            kernels::gelu_chunk(d, 1, Path::Best);
        });
        // (B, N, D)
        tensor(with_values(residual, |r| self.fc2.forward_values_residual(&y, r))?, &[b, n, self.fc2.out_dim])
    }
}

/// `MRFP` / `MultiConvFFN`: fc1 → per level a 3×3 and a 5×5 depthwise conv on the two
/// channel halves, BatchNorm (folded into the convs), GELU, GELU again → fc2.
pub struct Mrfp {
    fc1: Linear,
    /// Per level: (3×3 on the first half, 5×5 on the second half).
    convs: Vec<(DwConv, DwConv)>,
    fc2: Linear,
    half: usize,
}

impl Mrfp {
    pub fn new(vb: &Vb, d: usize, hidden: usize) -> Result<Mrfp> {
        let half = hidden / 2;
        let dw = vb.pp("dwconv");
        let mut convs = Vec::new();
        for lvl in 0..3 {
            let bn = BatchNorm::new(&dw.pp(format!("bn{}", lvl + 1)), hidden)?;
            let mut a = DwConv::new(&dw.pp(format!("dwconv{}", 2 * lvl + 1)), half, 3)?;
            let mut b = DwConv::new(&dw.pp(format!("dwconv{}", 2 * lvl + 2)), half, 5)?;
            a.fold(&bn, 0);
            b.fold(&bn, half);
            convs.push((a, b));
        }
        Ok(Mrfp { fc1: Linear::new(&vb.pp("fc1"), d, hidden, true)?, convs, fc2: Linear::new(&vb.pp("fc2"), hidden, d, true)?, half })
    }

    pub fn forward(&self, x: &Tensor, h: usize, w: usize) -> Result<Tensor> {
        let (b, n, _) = x.dims3()?;
        let y = with_values(x, |v| self.fc1.forward_values(v))?;
        let y = per_level(&y, (b, n, self.fc1.out_dim), h, w, |li, s, d, dims, oy, x0| {
            let (a, b) = &self.convs[li];
            a.run(s, d, dims, oy, x0, 0);
            b.run(s, d, dims, oy, x0, self.half);
            // `MultiDWConv` ends with its own GELU after the BatchNorm, and `MRFP` applies
            // `act` once more: upstream runs GELU twice here.
            kernels::gelu_chunk(d, 2, Path::Best);
        });
        // (B, N, D)
        tensor(self.fc2.forward_values(&y), &[b, n, self.fc2.out_dim])
    }
}

/// The token positions of one call: the three levels and their reference points.
pub struct Geometry {
    pub h: usize,
    pub w: usize,
    pub levels: [Level; 3],
    pub refs: Vec<[f32; 2]>,
}

impl Geometry {
    pub fn new(h: usize, w: usize) -> Geometry {
        let levels = ops::pyramid_levels(h, w);
        let refs = ops::reference_points(&levels);
        Geometry { h, w, levels, refs }
    }

    /// Split (B, 21n, C) into the three levels.
    fn split(&self, c: &Tensor) -> Result<[Tensor; 3]> {
        let l = &self.levels;
        Ok([
            c.narrow(1, 0, l[1].start)?,
            c.narrow(1, l[1].start, l[1].h * l[1].w)?,
            c.narrow(1, l[2].start, l[2].h * l[2].w)?,
        ])
    }
}

/// `MultiscaleExtractor` (`cfinter`): deformable self-attention of the CNN tokens over the
/// three levels, plus an optional ConvFFN.
pub struct CfInter {
    query_norm: LayerNorm,
    feat_norm: LayerNorm,
    attn: MsDeformAttn,
    ffn: Option<(LayerNorm, ConvFfn)>,
}

fn ffn_part(vb: &Vb, cfg: &ComerConfig) -> Result<(LayerNorm, ConvFfn)> {
    let d = cfg.embed_dim;
    let hidden = (d as f64 * cfg.cffn_ratio) as usize;
    Ok((LayerNorm::new(&vb.pp("ffn_norm"), d)?, ConvFfn::new(&vb.pp("ffn"), d, hidden)?))
}

impl CfInter {
    fn new(vb: &Vb, cfg: &ComerConfig) -> Result<CfInter> {
        let d = cfg.embed_dim;
        Ok(CfInter {
            query_norm: LayerNorm::new(&vb.pp("query_norm"), d)?,
            feat_norm: LayerNorm::new(&vb.pp("feat_norm"), d)?,
            attn: MsDeformAttn::new(&vb.pp("attn"), cfg)?,
            ffn: if cfg.with_cffn { Some(ffn_part(vb, cfg)?) } else { None },
        })
    }

    /// `c` normed by the outer module's `query_norm` and `feat_norm` before it comes here,
    /// all four norms in one pass over `c`.
    fn forward(&self, c: &Tensor, outer: (&LayerNorm, &LayerNorm), g: &Geometry) -> Result<Tensor> {
        let (qn, fnorm) = outer;
        let [query, q, f] = LayerNorm::chains(c, [&[qn], &[qn, &self.query_norm], &[fnorm, &self.feat_norm]])?;
        // query + attn(…), then q + ffn(…): each residual added by the GEMM before it
        let mut q = self.attn.forward(&q, &g.refs, &f, &g.levels, Some(&query))?;
        if let Some((norm, ffn)) = &self.ffn {
            q = ffn.forward(&norm.forward(&q)?, g.h, g.w, &q)?;
        }
        Ok(q)
    }
}

/// `CTI_toV` / `Injector`: CNN tokens attend to themselves over three levels, ConvFFN,
/// then the three levels resampled to the ViT grid are added to the ViT tokens × `gamma`.
pub struct CtiToV {
    query_norm: LayerNorm,
    feat_norm: LayerNorm,
    attn: MsDeformAttn,
    gamma: Vec<f32>,
    ffn_norm: LayerNorm,
    ffn: ConvFfn,
}

impl CtiToV {
    fn new(vb: &Vb, cfg: &ComerConfig) -> Result<CtiToV> {
        let d = cfg.embed_dim;
        let (ffn_norm, ffn) = ffn_part(vb, cfg)?;
        Ok(CtiToV {
            query_norm: LayerNorm::new(&vb.pp("query_norm"), d)?,
            feat_norm: LayerNorm::new(&vb.pp("feat_norm"), d)?,
            attn: MsDeformAttn::new(&vb.pp("attn"), cfg)?,
            gamma: vb.vec("gamma", &[d])?,
            ffn_norm,
            ffn,
        })
    }

    fn forward(&self, x: &Tensor, c: &Tensor, g: &Geometry) -> Result<Tensor> {
        let [q, f] = LayerNorm::chains(c, [&[&self.query_norm], &[&self.feat_norm]])?;
        let c1 = self.attn.forward(&q, &g.refs, &f, &g.levels, None)?;
        let c1 = self.ffn.forward(&self.ffn_norm.forward(&c1)?, g.h, g.w, &c1)?;
        let (b, n, d) = c1.dims3()?;
        let (h, w) = (g.h, g.w);
        let [_, l2, l3] = g.levels;
        // Per output row of the h×w grid: level 1 (2h×2w) and level 3 (h/2×w/2) resampled
        // to h×w, summed with level 2 in upstream's order ((c1 + c2) + c3), then
        // x + gamma·sum, all in one pass read in place from c1 and x.
        let out = with_values(&c1, |v| {
            with_values(x, |xv| {
                par_filled(b * h * w * d, w * d, |row, dst| kernels::multiversion!(Path::Best, {
                    let (bi, oy) = (row / h, row % h);
                    let img = &v[bi * n * d..][..n * d];
                    let (a, rest) = img.split_at(l2.start * d);
                    let (m, z) = rest.split_at((l3.start - l2.start) * d);
                    resize::bilinear_row(a, (2 * h, 2 * w, d), (h, w), Some(0.5), oy, dst, false);
                    dst.iter_mut().zip(&m[oy * w * d..][..w * d]).for_each(|(o, m)| *o += m);
                    resize::bilinear_row(z, (h / 2, w / 2, d), (h, w), Some(2.0), oy, dst, true);
                    let xs = &xv[row * w * d..][..w * d];
                    for (t, o) in dst.chunks_mut(d).enumerate() {
                        let xt = &xs[t * d..][..d];
                        o.iter_mut().zip(xt).zip(&self.gamma).for_each(|((o, x), g)| *o = x + *o * g);
                    }
                }))
            })
        })??;
        // (B, HW, D)
        tensor(out, &[b, h * w, d])
    }
}

/// `CTI_toC` / `Extractor` (no FFN of its own) and `Extractor_CTI` / `Extractor_tail`
/// (with one when `with_cffn`): add the ViT tokens to the stride-16 level, then optional
/// FFN and CNN feature interaction.
pub struct CtiToC {
    query_norm: LayerNorm,
    feat_norm: LayerNorm,
    ffn: Option<(LayerNorm, ConvFfn)>,
    cfinter: Option<CfInter>,
}

impl CtiToC {
    fn new(vb: &Vb, cfg: &ComerConfig, with_ffn: bool, cfi: bool) -> Result<CtiToC> {
        let d = cfg.embed_dim;
        Ok(CtiToC {
            query_norm: LayerNorm::new(&vb.pp("query_norm"), d)?,
            feat_norm: LayerNorm::new(&vb.pp("feat_norm"), d)?,
            ffn: if with_ffn && cfg.with_cffn { Some(ffn_part(vb, cfg)?) } else { None },
            cfinter: if cfi { Some(CfInter::new(&vb.pp("cfinter"), cfg)?) } else { None },
        })
    }

    fn forward(&self, c: &Tensor, x: &Tensor, g: &Geometry) -> Result<Tensor> {
        let mut c = add_at(c, x, g.levels[1].start)?;
        if let Some((norm, ffn)) = &self.ffn {
            c = ffn.forward(&norm.forward(&c)?, g.h, g.w, &c)?;
        }
        if let Some(cf) = &self.cfinter {
            c = cf.forward(&c, (&self.query_norm, &self.feat_norm), g)?;
        }
        Ok(c)
    }
}

/// `CTIBlock` / `InteractionBlock`.
pub struct Interaction {
    mrfp: Option<Mrfp>,
    cti_tov: Option<CtiToV>,
    cti_toc: Option<CtiToC>,
    extra: Vec<CtiToC>,
    blocks: std::ops::RangeInclusive<usize>,
}

impl Interaction {
    fn new(vb: &Vb, cfg: &ComerConfig, i: usize) -> Result<Interaction> {
        let d = cfg.embed_dim;
        let names = cfg.flavor.names();
        let (tov, toc, extra, mrfp) = (names.tov, names.toc, names.extra, names.mrfp);
        let use_tov = cfg.use_cti_tov[i];
        let cfi = cfg.cnn_feature_interaction[i];
        let mrfp_built = use_tov || cfg.flavor != Flavor::Det;
        let last = i + 1 == cfg.interaction_indexes.len();
        let n_extra = if last && cfg.use_extra_cti { cfg.extra_num } else { 0 };
        let [a, b] = cfg.interaction_indexes[i];
        Ok(Interaction {
            mrfp: if mrfp_built { Some(Mrfp::new(&vb.pp(mrfp), d, (d as f64 * cfg.dim_ratio) as usize)?) } else { None },
            cti_tov: if use_tov { Some(CtiToV::new(&vb.pp(tov), cfg)?) } else { None },
            cti_toc: if cfg.use_cti_toc[i] { Some(CtiToC::new(&vb.pp(toc), cfg, false, cfi)?) } else { None },
            extra: (0..n_extra).map(|k| CtiToC::new(&vb.pp(extra).pp(k), cfg, true, cfi)).collect::<Result<_>>()?,
            blocks: a..=b,
        })
    }

    /// `blocks`: this interaction's own ViT blocks (`self.blocks` of the model's), in order.
    fn forward(&self, x: Tensor, c: Tensor, blocks: &[Block], g: &Geometry) -> Result<(Tensor, Tensor)> {
        let (mut x, mut c) = (x, c);
        if let Some(tov) = &self.cti_tov {
            if let Some(m) = &self.mrfp {
                c = super::profile::timed("mrfp", || m.forward(&c, g.h, g.w))?;
            }
            c = add_at(&c, &x, g.levels[1].start)?;
            x = super::profile::timed("cti_tov", || tov.forward(&x, &c, g))?;
        }
        for blk in blocks {
            x = super::profile::timed("vit blocks", || blk.forward(&x, g.h, g.w))?;
        }
        if let Some(toc) = &self.cti_toc {
            c = super::profile::timed("cti_toc", || toc.forward(&c, &x, g))?;
        }
        for e in &self.extra {
            c = super::profile::timed("extra cti", || e.forward(&c, &x, g))?;
        }
        Ok((x, c))
    }
}

/// Spatial prior module (`CNN` / `SpatialPriorModule`), run channels-last with the
/// BatchNorms folded into the convs and the 1×1 `fc1..fc4` as Linear layers.
pub struct Spm {
    stem: [ConvNhwc; 3],
    convs: [ConvNhwc; 3],
    fcs: [Linear; 4],
}

impl Spm {
    fn new(vb: &Vb, cfg: &ComerConfig) -> Result<Spm> {
        let p = cfg.conv_inplane;
        let d = cfg.embed_dim;
        let conv_bn = |vb: &Vb, conv: &str, bn: &str, cin: usize, cout: usize, stride: usize| -> Result<ConvNhwc> {
            let bn = BatchNorm::new(&vb.pp(bn), cout)?;
            ConvNhwc::new(&vb.pp(conv), cin, cout, 3, stride, 1, Some(&bn), true)
        };
        let fc = |name: &str, cin: usize| -> Result<Linear> {
            let v = vb.pp(name);
            // (D, C_in, 1, 1) → (D, C_in)
            Linear::from_parts(v.get("weight", &[d, cin, 1, 1])?.reshape((d, cin))?, Some(v.get("bias", &[d])?))
        };
        let st = vb.pp("stem");
        Ok(Spm {
            stem: [
                conv_bn(&st, "0", "1", cfg.in_chans, p, 2)?,
                conv_bn(&st, "3", "4", p, p, 1)?,
                conv_bn(&st, "6", "7", p, p, 1)?,
            ],
            convs: [
                conv_bn(&vb.pp("conv2"), "0", "1", p, 2 * p, 2)?,
                conv_bn(&vb.pp("conv3"), "0", "1", 2 * p, 4 * p, 2)?,
                conv_bn(&vb.pp("conv4"), "0", "1", 4 * p, 4 * p, 2)?,
            ],
            fcs: [fc("fc1", p)?, fc("fc2", 2 * p)?, fc("fc3", 4 * p)?, fc("fc4", 4 * p)?],
        })
    }

    /// (B, 3, H, W) → c1..c4 as channels-last tokens (B, HW, D) and c1's (H, W).
    fn forward(&self, x: &Tensor) -> Result<([Tensor; 4], (usize, usize))> {
        let (b, cin, h, w) = x.dims4()?;
        // (B, C, H, W) → (B, H, W, C)
        let mut y = values(&x.permute((0, 2, 3, 1))?.contiguous()?)?;
        let (mut hh, mut ww, mut c) = (h, w, cin);
        for conv in &self.stem {
            let (v, oh, ow) = conv.forward(&y, (b, hh, ww, c))?;
            (y, hh, ww, c) = (v, oh, ow, conv.out_channels());
        }
        let (p, oh, ow) = ops::max_pool_3s2p1_nhwc(&y, b, hh, ww, c);
        let mut levels = vec![(p, oh, ow, c)];
        for conv in &self.convs {
            let (v, ph, pw, pc) = levels[levels.len() - 1].clone();
            let (o, nh, nw) = conv.forward(&v, (b, ph, pw, pc))?;
            levels.push((o, nh, nw, conv.out_channels()));
        }
        let mut outs = Vec::new();
        for (fc, (v, lh, lw, lc)) in self.fcs.iter().zip(levels) {
            // (B, HW, C)
            outs.push(fc.forward(&tensor(v, &[b, lh * lw, lc])?)?);
        }
        let [c1, c2, c3, c4]: [Tensor; 4] = match outs.try_into() {
            Ok(a) => a,
            Err(_) => unreachable!("four levels"),
        };
        Ok(([c1, c2, c3, c4], (oh, ow)))
    }
}

/// What one forward returns: the pyramid, BEiT's ViT map, and the fixtures' taps.
pub struct Outputs {
    /// f1..f4, NCHW, strides 4/8/16/32.
    pub f: [Tensor; 4],
    /// beit-comer's first output (the ViT tokens as a map when `add_vit_feature`).
    pub x: Option<Tensor>,
    /// (`spm.c1`, tensor), … in the fixtures' tap names (without the input prefix).
    pub taps: Vec<(String, Tensor)>,
}

/// Runs interaction `i` on `(x, c)` (with its blocks): `x`, `c` after it.
type Step<'a> = dyn FnMut(usize, Tensor, Tensor, &Geometry) -> Result<(Tensor, Tensor)> + 'a;

/// A ViT-CoMer backbone of any flavour.
pub struct Comer {
    /// The configuration it was built for.
    pub cfg: ComerConfig,
    patch_embed: Conv2d,
    /// The position grid without prefix rows, channels-last (P, P, D), at pretrain size.
    pos_embed: Option<Vec<f32>>,
    blocks: Vec<Block>,
    level_embed: Tensor,
    spm: Spm,
    interactions: Vec<Interaction>,
    /// `up` ConvTranspose2d(D, D, 2, 2) as a Linear D_in → 4·D_out, outputs ordered
    /// (dy, dx, o), and its bias.
    up: Linear,
    up_bias: Vec<f32>,
    norms: [BatchNorm; 4],
}

impl Comer {
    /// Build from weights by target name (call [`super::weights::Store::finish`] after).
    pub fn new(vb: &Vb, cfg: &ComerConfig) -> Result<Comer> {
        let mut m = Comer::head(vb, cfg)?;
        m.blocks = (0..cfg.depth).map(|i| Block::new(&vb.pp("blocks").pp(i), cfg, i)).collect::<Result<Vec<_>>>()?;
        m.interactions = (0..cfg.interaction_indexes.len())
            .map(|i| Interaction::new(&vb.pp("interactions").pp(i), cfg, i))
            .collect::<Result<Vec<_>>>()?;
        Ok(m)
    }

    /// Everything but the ViT blocks and the interactions (the stem, the pyramid's ends):
    /// the part [`Comer::forward_streaming`] holds for the whole forward.
    fn head(vb: &Vb, cfg: &ComerConfig) -> Result<Comer> {
        cfg.validate()?;
        let d = cfg.embed_dim;
        let ps = cfg.patch_size;
        let grid = cfg.pretrain_size / 16;
        let beit = cfg.flavor == Flavor::Beit;
        // The parameter has (img_size/16)² rows; upstream reshapes it to the pretrain grid at
        // run time: `validate` has checked that the two grids agree.
        let pos_embed = if !beit {
            let v = vb.vec("pos_embed", &[1, grid * grid + 1, d])?;
            Some(v[d..].to_vec())
        } else if cfg.use_abs_pos_emb {
            Some(vb.vec("pos_embed", &[1, grid * grid, d])?)
        } else {
            None
        };
        if beit && cfg.use_shared_rel_pos_bias {
            // Built upstream but never passed to the blocks by BEiTComer2: read and unused.
            let w = cfg.window_size[0].unwrap_or(14);
            vb.pp("rel_pos_bias").vec("relative_position_bias_table", &[(2 * w - 1) * (2 * w - 1), cfg.num_heads])?;
            vb.pp("rel_pos_bias").buffer_i64("relative_position_index", &[w * w, w * w])?;
        }
        let up_w = vb.pp("up").get("weight", &[d, d, 2, 2])?;
        // (D_in, D_out, 2, 2) → (2, 2, D_out, D_in) → (4·D_out, D_in) for Linear: output
        // column (dy·2 + dx)·D + o, so each (dy, dx) tap is D contiguous values
        let up = Linear::from_parts(up_w.permute((2, 3, 1, 0))?.contiguous()?.reshape((4 * d, d))?, None)?;
        Ok(Comer {
            cfg: cfg.clone(),
            patch_embed: Conv2d::new(&vb.pp("patch_embed").pp("proj"), cfg.in_chans, d, ps, ps, 0, true)?,
            pos_embed,
            blocks: Vec::new(),
            level_embed: vb.get("level_embed", &[3, d])?,
            spm: Spm::new(&vb.pp("spm"), cfg)?,
            interactions: Vec::new(),
            up,
            up_bias: vb.pp("up").vec("bias", &[d])?,
            norms: [
                BatchNorm::new(&vb.pp("norm1"), d)?,
                BatchNorm::new(&vb.pp("norm2"), d)?,
                BatchNorm::new(&vb.pp("norm3"), d)?,
                BatchNorm::new(&vb.pp("norm4"), d)?,
            ],
        })
    }

    /// Forward one NCHW batch; `name` only labels errors.
    pub fn forward(&self, img: &Tensor, name: &str) -> Result<Outputs> {
        self.forward_with(img, name, &mut |i, x, c, g| {
            let inter = &self.interactions[i];
            inter.forward(x, c, &self.blocks[inter.blocks.clone()], g)
        })
    }

    /// [`Comer::forward`] holding one interaction's weights at a time: each interaction and
    /// its ViT blocks are read from `vb` just before they run and dropped after, so a
    /// memory-mapped artifact's resident set is the stem, the pyramid's ends and one
    /// interaction (BEiT-comer-L: about 0.4 GB instead of 1.4 GB). Same numbers as
    /// [`Comer::forward`]; call [`super::weights::Store::finish`] after it.
    pub fn forward_streaming(vb: &Vb, cfg: &ComerConfig, img: &Tensor, name: &str) -> Result<Outputs> {
        let head = Comer::head(vb, cfg)?;
        head.forward_with(img, name, &mut |i, x, c, g| {
            let inter = Interaction::new(&vb.pp("interactions").pp(i), cfg, i)?;
            let blocks =
                inter.blocks.clone().map(|j| Block::new(&vb.pp("blocks").pp(j), cfg, j)).collect::<Result<Vec<_>>>()?;
            inter.forward(x, c, &blocks, g)
        })
    }

    /// The forward, with interaction `i` run by `step(i, x, c, geometry)`.
    fn forward_with(
        &self,
        img: &Tensor,
        name: &str,
        step: &mut Step<'_>,
    ) -> Result<Outputs> {
        let dims = img.dims().to_vec();
        if dims.len() != 4 || dims[1] != self.cfg.in_chans {
            return Err(ModelError::InputShape { name: name.into(), shape: dims, in_chans: self.cfg.in_chans });
        }
        let (b, ih, iw) = (dims[0], dims[2], dims[3]);
        if ih % 32 != 0 || iw % 32 != 0 || ih == 0 || iw == 0 {
            return Err(ModelError::InputSize { name: name.into(), h: ih, w: iw });
        }
        let d = self.cfg.embed_dim;
        let mut taps = Vec::new();
        let ([c1, c2, c3, c4], (h1, w1)) = super::profile::timed("spm", || self.spm.forward(img))?;
        // (B, H·W, D) → (B, D, H, W)
        let c1_nchw = tensor(with_values(&c1, |v| ops::nhwc_to_nchw(v, b, h1 * w1, d, None))?, &[b, d, h1, w1])?;
        taps.push(("spm.c1".to_string(), c1_nchw));
        taps.push(("spm.c2".to_string(), c2.clone()));
        taps.push(("spm.c3".to_string(), c3.clone()));
        taps.push(("spm.c4".to_string(), c4.clone()));
        let le = |i: usize| self.level_embed.get(i);
        let c = Tensor::cat(&[c2.broadcast_add(&le(0)?)?, c3.broadcast_add(&le(1)?)?, c4.broadcast_add(&le(2)?)?], 1)?;

        let pe = super::profile::timed("patch embed", || self.patch_embed.forward(img))?;
        let (h, w) = (pe.dim(2)?, pe.dim(3)?);
        // (B, D, H, W) → (B, HW, D)
        let mut x = pe.flatten_from(2)?.transpose(1, 2)?.contiguous()?;
        taps.push(("patch_embed".to_string(), x.clone()));
        if let Some(pos) = &self.pos_embed {
            let grid = self.cfg.pretrain_size / 16;
            let p = resize::bicubic_nhwc(pos, 1, grid, grid, d, h, w);
            x = x.broadcast_add(&tensor(p, &[1, h * w, d])?)?;
        }
        let g = Geometry::new(h, w);
        let mut c = c;
        let mut outs = Vec::new();
        for i in 0..self.cfg.interaction_indexes.len() {
            let (nx, nc) = step(i, x, c, &g)?;
            x = nx;
            c = nc;
            taps.push((format!("interactions.{i}.x"), x.clone()));
            taps.push((format!("interactions.{i}.c"), c.clone()));
            outs.push(x.clone());
        }

        let f = super::profile::timed("output pyramid", || -> Result<Vec<Tensor>> {
            // pyramid, channels-last; the ViT maps added per level when add_vit_feature
            let [t2, t3, t4] = g.split(&c)?;
            // seg adds each interaction's output to its level; det and beit add the last x to
            // all four (one copy, read by every level)
            let maps: Vec<Vec<f32>> = match (self.cfg.add_vit_feature, self.cfg.flavor) {
                (false, _) => Vec::new(),
                (true, Flavor::Seg) => outs.iter().map(values).collect::<Result<_>>()?,
                (true, _) => vec![values(&x)?],
            };
            let map = |level: usize| if maps.len() == 1 { maps.first() } else { maps.get(level) };
            let img = h * w * d;
            // f1 = c1 + (up(c2) + bias) (+ ViT map ×4), one output row (bi, Y) per task
            let up = with_values(&t2, |v| self.up.forward_values(v))?; // (B, 2H·2W, 4·D) as (dy, dx, o)
            let f1 = with_values(&c1, |c1v| {
                par_filled(b * h1 * w1 * d, w1 * d, |row, dst| {
                    let (bi, yy) = (row / h1, row % h1);
                    let (y, dy) = (yy / 2, yy % 2);
                    let c1row = &c1v[row * w1 * d..][..w1 * d];
                    for (xx, (o, c)) in dst.chunks_mut(d).zip(c1row.chunks(d)).enumerate() {
                        let (x, dx) = (xx / 2, xx % 2);
                        let src = &up[((bi * 2 * h + y) * 2 * w + x) * 4 * d + (dy * 2 + dx) * d..][..d];
                        o.iter_mut().zip(c).zip(src).zip(&self.up_bias).for_each(|(((o, c), u), bias)| *o = c + (u + bias));
                    }
                    if let Some(m) = map(0) {
                        resize::bilinear_row(&m[bi * img..][..img], (h, w, d), (h1, w1), Some(4.0), yy, dst, true);
                    }
                })
            })?;
            // f2..f4 = the CNN level (+ its ViT map resampled ×2, ×1, ×0.5)
            let level = |t: &Tensor, i: usize, (lh, lw): (usize, usize), factor: f64| {
                with_values(t, |tv| {
                    par_filled(b * lh * lw * d, lw * d, |row, dst| {
                        dst.copy_from_slice(&tv[row * lw * d..][..lw * d]);
                        match map(i) {
                            // same grid: the map itself, added as upstream adds it
                            Some(m) if (lh, lw) == (h, w) => {
                                dst.iter_mut().zip(&m[row * lw * d..][..lw * d]).for_each(|(o, v)| *o += v)
                            }
                            Some(m) => {
                                let (bi, yy) = (row / lh, row % lh);
                                resize::bilinear_row(&m[bi * img..][..img], (h, w, d), (lh, lw), Some(factor), yy, dst, true);
                            }
                            None => {}
                        }
                    })
                })
            };
            let f2 = level(&t2, 1, (2 * h, 2 * w), 2.0)?;
            let f3 = level(&t3, 2, (h, w), 1.0)?;
            let f4 = level(&t4, 3, (h / 2, w / 2), 0.5)?;
            let sizes = [(h1, w1), (2 * h, 2 * w), (h, w), (h / 2, w / 2)];
            let mut f: Vec<Tensor> = Vec::new();
            for (i, v) in [f1, f2, f3, f4].into_iter().enumerate() {
                let (fh, fw) = sizes[i];
                let bn = &self.norms[i];
                // (B, H, W, D) → (B, D, H, W), BatchNorm applied on the way
                let v = super::profile::timed("to nchw", || ops::nhwc_to_nchw(&v, b, fh * fw, d, Some((&bn.scale, &bn.shift))));
                f.push(tensor(v, &[b, d, fh, fw])?);
            }
            Ok(f)
        })?;
        let x_out = if self.cfg.flavor == Flavor::Beit {
            Some(if self.cfg.add_vit_feature {
                // (B, HW, D) → (B, D, H, W)
                x.transpose(1, 2)?.reshape((b, d, h, w))?.contiguous()?
            } else {
                x
            })
        } else {
            None
        };
        let [f1, f2, f3, f4]: [Tensor; 4] = match f.try_into() {
            Ok(a) => a,
            Err(_) => unreachable!("exactly four levels were pushed"),
        };
        Ok(Outputs { f: [f1, f2, f3, f4], x: x_out, taps })
    }
}

