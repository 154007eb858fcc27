//! Numeric kernels of the reference forward as plain loops on `f32` slices: depthwise
//! convolution, max pooling, LayerNorm, softmax and multi-scale deformable attention with
//! `grid_sample` semantics (bilinear, zero padding, `align_corners=False`). Resizes
//! (`F.interpolate`) live in [`super::resize`].
//!
//! Mirrors `F.grid_sample` as called by upstream's
//! `ops/functions/ms_deform_attn_func.py` `ms_deform_attn_core_pytorch`, and the
//! `nn.LayerNorm` / `nn.Conv2d(groups=C)` / `nn.MaxPool2d` layers of `comer_modules.py`.
//! Feature maps here are channels-last (`(B, H, W, C)`, the token layout), so every kernel
//! runs innermost over contiguous channels.

// Index loops below mirror the kernels' arithmetic over several arrays at once.
#![allow(clippy::needless_range_loop)]

use std::mem::MaybeUninit;

use super::buffer::{par_filled, par_filled_with, par_written_many};
use super::kernels::{Path, exp_fast, lane_sum, multiversion};

/// Depthwise `k×k` convolution, stride 1, zero padding `k/2`, with bias, on channels
/// `c0..c0+cn` (`cn` = `bias.len()`) of one channels-last image `x` (H, W, C): output
/// tokens `x0..x0 + dst.len()/C` of row `oy`, written to the same channels of `dst`.
/// `weight_t` is the PyTorch weight (cn, 1, k, k) transposed to (k, k, cn).
#[allow(clippy::too_many_arguments)]
pub fn dwconv_row(
    x: &[f32],
    dst: &mut [f32],
    (h, w, c): (usize, usize, usize),
    oy: usize,
    x0: usize,
    c0: usize,
    weight_t: &[f32],
    bias: &[f32],
    k: usize,
) {
    let cn = bias.len();
    let ntok = dst.len() / c;
    let pad = k / 2;
    multiversion!(Path::Best, {
        for o in dst.chunks_mut(c) {
            o[c0..c0 + cn].copy_from_slice(bias);
        }
        // Taps outermost, the segment's tokens inside: the output segment stays in L1 and
        // each tap streams one input row. Every output still sums its taps in (ky, kx)
        // order after the bias, as before.
        for ky in 0..k {
            let Some(iy) = (oy + ky).checked_sub(pad).filter(|iy| *iy < h) else { continue };
            let row = &x[iy * w * c..][..w * c];
            for kx in 0..k {
                let wt = &weight_t[(ky * k + kx) * cn..][..cn];
                // tokens x0 + i whose input column x0 + i + kx − pad lies in 0..w
                let first = pad.saturating_sub(x0 + kx);
                let end = ntok.min((w + pad).saturating_sub(x0 + kx));
                for i in first..end {
                    let ix = x0 + i + kx - pad;
                    let src = &row[ix * c + c0..][..cn];
                    let o = &mut dst[i * c + c0..][..cn];
                    for ch in 0..cn {
                        o[ch] += src[ch] * wt[ch];
                    }
                }
            }
        }
    })
}

/// Mean and 1/std of one LayerNorm row: two passes in f32 lane sums (mean, then the
/// variance around it).
#[inline(always)]
fn row_stats(r: &[f32], eps: f32) -> (f32, f32) {
    let c = r.len() as f32;
    let mean = lane_sum(r, |v| v) / c;
    let var = lane_sum(r, |v| (v - mean) * (v - mean)) / c;
    (mean, 1.0 / (var + eps).sqrt())
}

/// LayerNorm over the last axis (length `c`) of every row: two passes in f32 lane sums
/// (mean, then the variance around it).
pub fn layer_norm_rows(x: &[f32], c: usize, weight: &[f32], bias: &[f32], eps: f32) -> Vec<f32> {
    let mut outs = layer_norm_chains(x, c, &[&[(weight, bias)]], eps);
    outs.pop().expect("one chain, one output")
}

/// Several chains of LayerNorms over the same rows in one pass: output `j` is the norms of
/// `chains[j]` applied in order (each a (weight, bias) pair of length `c`), every norm
/// computed as a lone LayerNorm computes it (the same bits), while `x` is read once and a
/// chain's inner links stay in a scratch row. CTI's query and feature norms of one input.
pub fn layer_norm_chains(x: &[f32], c: usize, chains: &[&[(&[f32], &[f32])]], eps: f32) -> Vec<Vec<f32>> {
    const ROWS: usize = 16;
    assert!(c > 0 && x.len().is_multiple_of(c), "LayerNorm input is whole rows of {c}");
    assert!(chains.iter().all(|ch| !ch.is_empty()), "a chain has at least one norm");
    assert!(chains.iter().flat_map(|ch| ch.iter()).all(|(w, b)| w.len() == c && b.len() == c), "norms of width {c}");
    let rows = |i: usize, outs: &mut [&mut [MaybeUninit<f32>]]| {
        let n = outs[0].len();
        let src = &x[i * ROWS * c..][..n];
        // a chain's inner links write `b` from `a` (or from the input row), then swap
        let (mut a, mut b) = (vec![0f32; c], vec![0f32; c]);
        multiversion!(Path::Best, {
            for (t, r) in src.chunks_exact(c).enumerate() {
                for (chain, out) in chains.iter().zip(outs.iter_mut()) {
                    let (last, inner) = chain.split_last().expect("non-empty chain");
                    let mut linked = false;
                    for (w, bn) in inner.iter() {
                        let input: &[f32] = if linked { &a } else { r };
                        let (mean, rstd) = row_stats(input, eps);
                        for (((o, &v), &w), &bn) in b.iter_mut().zip(input).zip(*w).zip(*bn) {
                            *o = (v - mean) * rstd * w + bn;
                        }
                        std::mem::swap(&mut a, &mut b);
                        linked = true;
                    }
                    let input: &[f32] = if linked { &a } else { r };
                    let (mean, rstd) = row_stats(input, eps);
                    let o = &mut out[t * c..][..c];
                    for (((o, &v), &w), &bn) in o.iter_mut().zip(input).zip(last.0).zip(last.1) {
                        o.write((v - mean) * rstd * w + bn);
                    }
                }
            }
        })
    };
    // SAFETY: every chunk is whole rows of c values (x is, asserted above), and `rows`
    // writes every value of every row of every output.
    unsafe { par_written_many(chains.len(), x.len(), ROWS * c, rows) }
}

/// Softmax in place over one row.
pub fn softmax_row(r: &mut [f32]) {
    let m = r.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut s = 0f32;
    for v in r.iter_mut() {
        *v = (*v - m).exp();
        s += *v;
    }
    for v in r.iter_mut() {
        *v /= s;
    }
}

/// One level of the value tensor of multi-scale deformable attention.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Level {
    /// Height in tokens.
    pub h: usize,
    /// Width in tokens.
    pub w: usize,
    /// First token of this level in the flattened value tensor.
    pub start: usize,
}

/// Levels of the stride 8/16/32 pyramid for a `(h, w)` token grid (stride 16), in order.
pub fn pyramid_levels(h: usize, w: usize) -> [Level; 3] {
    let l0 = Level { h: 2 * h, w: 2 * w, start: 0 };
    let l1 = Level { h, w, start: 4 * h * w };
    let l2 = Level { h: h / 2, w: w / 2, start: 5 * h * w };
    [l0, l1, l2]
}

/// Upstream's `get_reference_points`: the centre of every token of each level, normalised
/// to [0, 1], as (x, y), concatenated over the levels.
pub fn reference_points(levels: &[Level]) -> Vec<[f32; 2]> {
    let mut refs = Vec::new();
    for l in levels {
        for i in 0..l.h {
            for j in 0..l.w {
                // torch.linspace(0.5, H - 0.5, H)[i] / H
                refs.push([(j as f32 + 0.5) / l.w as f32, (i as f32 + 0.5) / l.h as f32]);
            }
        }
    }
    refs
}

/// Shapes of one multi-scale deformable attention call.
#[derive(Debug, Clone, Copy)]
pub struct DeformShape {
    /// Images in the batch.
    pub batch: usize,
    /// Value tokens per image (sum over levels).
    pub len_in: usize,
    /// Attention heads.
    pub heads: usize,
    /// Value channels per head.
    pub head_dim: usize,
    /// Sampling points per head and level.
    pub points: usize,
}

/// Multi-scale deformable attention core, one fused pass over (batch, query, head, level,
/// point): softmax of the `logits` over level×point, sampling location = reference point +
/// offset / (W_l, H_l), bilinear taps read straight from `value` (B, Len_in, heads,
/// head_dim) with `grid_sample`'s zero padding and `align_corners=False`.
///
/// `offsets`: (B, Lq, heads, levels, points, 2) as (x, y); `logits`: (B, Lq, heads, levels,
/// points). Returns (B, Lq, heads·head_dim).
pub fn ms_deform_attn(
    value: &[f32],
    levels: &[Level],
    refs: &[[f32; 2]],
    offsets: &[f32],
    logits: &[f32],
    s: DeformShape,
) -> Vec<f32> {
    let n = s.heads * levels.len() * s.points;
    ms_deform_attn_rows(value, levels, refs, (offsets, 2 * n), (logits, n), s)
}

/// [`ms_deform_attn`] with each query's offsets and logits read from rows of the given
/// strides: query `q`'s 2n offsets start at `offsets.0[q·offsets.1]` and its n logits at
/// `logits.0[q·logits.1]` (n = heads·levels·points). One GEMM's (B·Lq, 3n) output serves
/// both: (its values, 3n) and (its values from column 2n on, 3n).
pub fn ms_deform_attn_rows(
    value: &[f32],
    levels: &[Level],
    refs: &[[f32; 2]],
    (offsets, off_stride): (&[f32], usize),
    (logits, logit_stride): (&[f32], usize),
    s: DeformShape,
) -> Vec<f32> {
    let lq = refs.len();
    let lp = levels.len() * s.points;
    // sampling points per query, k = (head, level, point), in blocks of PTS lanes
    let n = s.heads * lp;
    let blocks = n.div_ceil(PTS);
    let np = blocks * PTS;
    let cdim = s.heads * s.head_dim;
    // per sampling point k: its level's width, height and last token (padding points: a
    // 1×1 level), and the value offset of its level's first token for its head in image 0
    let level = |k: usize| &levels[(k % lp) / s.points];
    let wk: Vec<f32> = (0..np).map(|k| if k < n { level(k).w as f32 } else { 1.0 }).collect();
    let hk: Vec<f32> = (0..np).map(|k| if k < n { level(k).h as f32 } else { 1.0 }).collect();
    let last: Vec<u32> = (0..np)
        .map(|k| if k < n { u32::try_from((level(k).h * level(k).w).saturating_sub(1)).unwrap_or(u32::MAX) } else { 0 })
        .collect();
    let kbase: Vec<usize> = (0..n).map(|k| (level(k).start * s.heads + k / lp) * s.head_dim).collect();
    // value offset of one token step
    let tok_stride = s.heads * s.head_dim;
    let scratch = || QueryScratch { aw: vec![0.0; np], off: vec![0.0; 2 * np], corners: vec![CornerBlock::default(); blocks] };
    par_filled_with(s.batch * lq * cdim, cdim, scratch, |st, row, dst| multiversion!(Path::Best, {
        let [rx, ry] = refs[row % lq];
        let vbase = (row / lq) * s.len_in * tok_stride;
        let QueryScratch { aw, off, corners } = st;
        // this query's offsets; the padding points keep offset 0 and weight 0
        off[..2 * n].copy_from_slice(&offsets[row * off_stride..][..2 * n]);
        // softmax over level×point, per head: the shifted exponentials in lanes over all
        // points, then each head's sum in order
        let lg = &logits[row * logit_stride..][..n];
        for (a, l) in aw.chunks_mut(lp).zip(lg.chunks(lp)) {
            a.fill(l.iter().copied().fold(f32::NEG_INFINITY, f32::max));
        }
        aw[..n].iter_mut().zip(lg).for_each(|(a, l)| *a = exp_fast(l - *a));
        for a in aw[..n].chunks_mut(lp) {
            let inv = 1.0 / a.iter().fold(0f32, |s, a| s + a);
            a.iter_mut().for_each(|a| *a *= inv);
        }
        for (bi, cb) in corners.iter_mut().enumerate() {
            let lanes = bi * PTS..(bi + 1) * PTS;
            let off2 = bi * 2 * PTS..(bi + 1) * 2 * PTS;
            let level_lanes = (lanes_of(&wk[lanes.clone()]), lanes_of(&hk[lanes.clone()]), lanes_of(&last[lanes.clone()]));
            corner_block([rx, ry], lanes_of(&off[off2]), lanes_of(&aw[lanes]), level_lanes, cb);
        }
        for m in 0..s.heads {
            let out = &mut dst[m * s.head_dim..(m + 1) * s.head_dim];
            let pts = m * lp..(m + 1) * lp;
            match s.head_dim {
                64 => gather_head::<64>(value, corners, pts, &kbase, vbase, tok_stride, out),
                32 => gather_head::<32>(value, corners, pts, &kbase, vbase, tok_stride, out),
                _ => {
                    for_each_tap(corners, pts, &kbase, vbase, tok_stride, |at, f| {
                        out.iter_mut().zip(&value[at..at + s.head_dim]).for_each(|(a, v)| *a += f * v)
                    });
                }
            }
        }
    }))
}

/// Sampling points whose corners are computed together, one AVX-512 register wide.
const PTS: usize = 16;

/// The four bilinear corners (x0,y0), (x1,y0), (x0,y1), (x1,y1) of [`PTS`] sampling
/// points: weight (attention weight × bilinear weight), whether the corner may be read
/// (not certainly outside its level), and its token `y·W_l + x` within the level.
#[derive(Debug, Clone, Copy, Default)]
struct CornerBlock {
    weight: [[f32; PTS]; 4],
    inside: [[bool; PTS]; 4],
    token: [[u32; PTS]; 4],
}

/// Per-query work arrays of [`ms_deform_attn`], made once per rayon job.
struct QueryScratch {
    aw: Vec<f32>,
    off: Vec<f32>,
    corners: Vec<CornerBlock>,
}

/// A slice of exactly `N` values as an array reference.
#[inline(always)]
fn lanes_of<T, const N: usize>(s: &[T]) -> &[T; N] {
    match s.try_into() {
        Ok(a) => a,
        Err(_) => unreachable!("callers slice exactly N values"),
    }
}

/// The corners of [`PTS`] sampling points around reference point `r` (x, y in [0, 1]):
/// `off` their (x, y) offsets in pixels of their level, `aw` their attention weights, `wk`
/// and `hk` their levels' sizes. Straight-line code over the lanes, so it vectorises.
#[inline(always)]
fn corner_block(
    r: [f32; 2],
    off: &[f32; 2 * PTS],
    aw: &[f32; PTS],
    (wk, hk, last): (&[f32; PTS], &[f32; PTS], &[u32; PTS]),
    cb: &mut CornerBlock,
) {
    // An integer-valued float t in [0, 2²³) plus 2²³ has t in its low mantissa bits.
    const MAGIC: f32 = 8_388_608.0;
    // One loop per quantity, each over the lanes (a loop mixing x and y would be
    // vectorised two lanes wide, x beside y, instead of PTS wide).
    let (mut ix, mut iy) = ([0f32; PTS], [0f32; PTS]);
    for j in 0..PTS {
        // sampling location in [0, 1], then grid_sample's unnormalisation
        let gx = 2.0 * (r[0] + off[2 * j] / wk[j]) - 1.0;
        ix[j] = ((gx + 1.0) * wk[j] - 1.0) / 2.0;
    }
    for j in 0..PTS {
        let gy = 2.0 * (r[1] + off[2 * j + 1] / hk[j]) - 1.0;
        iy[j] = ((gy + 1.0) * hk[j] - 1.0) / 2.0;
    }
    for c in 0..4 {
        let (dx, dy) = (c % 2, c / 2);
        for j in 0..PTS {
            let (x0, y0) = (ix[j].floor(), iy[j].floor());
            let (x1, y1) = (x0 + 1.0, y0 + 1.0);
            let (tx, wx) = if dx == 0 { (x0, x1 - ix[j]) } else { (x1, ix[j] - x0) };
            let (ty, wy) = if dy == 0 { (y0, y1 - iy[j]) } else { (y1, iy[j] - y0) };
            cb.weight[c][j] = aw[j] * (wx * wy);
            // skipped only when certainly outside: a NaN location stays in, as in PyTorch
            cb.inside[c][j] = !(tx < 0.0 || ty < 0.0 || tx >= wk[j] || ty >= hk[j]);
            // exact for an inside corner; an outside one's token is never read; a NaN
            // location reads the level's last token (its weight is NaN, so the output is)
            // (clamped as an integer: f32::max/min or a select here would not vectorise)
            let tok = (ty * wk[j] + tx + MAGIC).to_bits().wrapping_sub(MAGIC.to_bits());
            cb.token[c][j] = tok.min(last[j]);
        }
    }
}

/// `f(value offset, weight)` for every readable corner of sampling points `pts`, in
/// (level, point, corner) order.
#[inline(always)]
fn for_each_tap(
    corners: &[CornerBlock],
    pts: std::ops::Range<usize>,
    kbase: &[usize],
    vbase: usize,
    tok_stride: usize,
    mut f: impl FnMut(usize, f32),
) {
    for k in pts {
        let cb = &corners[k / PTS];
        let j = k % PTS;
        for c in 0..4 {
            if cb.inside[c][j] {
                f(vbase + kbase[k] + cb.token[c][j] as usize * tok_stride, cb.weight[c][j]);
            }
        }
    }
}

/// `out = Σ weight·value[at..at + HD]` over one head's taps, in order, with the sum held
/// in registers (the same additions, in the same order, as accumulating into `out` from
/// zero).
#[inline(always)]
fn gather_head<const HD: usize>(
    value: &[f32],
    corners: &[CornerBlock],
    pts: std::ops::Range<usize>,
    kbase: &[usize],
    vbase: usize,
    tok_stride: usize,
    out: &mut [f32],
) {
    let mut acc = [0f32; HD];
    for_each_tap(corners, pts, kbase, vbase, tok_stride, |at, f| {
        let v: &[f32; HD] = match value[at..at + HD].try_into() {
            Ok(v) => v,
            Err(_) => unreachable!("a slice of HD values"),
        };
        for d in 0..HD {
            acc[d] += f * v[d];
        }
    });
    out.copy_from_slice(&acc);
}

/// im2col rows `r0..r1`, on the calling thread, of a `k×k`, stride `s`, padding `p`
/// convolution on a channels-last map (B, H, W, C): each row is (ky, kx, c) for one output
/// pixel, zeros outside.
#[allow(clippy::too_many_arguments)]
pub fn im2col_nhwc(
    x: &[f32],
    dims: (usize, usize, usize, usize),
    k: usize,
    s: usize,
    p: usize,
    out_hw: (usize, usize),
    rows: std::ops::Range<usize>,
    dst: &mut [f32],
) {
    let (_b, h, w, c) = dims;
    let (oh, ow) = out_hw;
    let kc = k * k * c;
    dst.chunks_mut(kc).zip(rows).for_each(|(row, r)| {
        let bi = r / (oh * ow);
        let oy = (r / ow) % oh;
        let ox = r % ow;
        for ky in 0..k {
            let iy = (oy * s + ky) as isize - p as isize;
            for kx in 0..k {
                let ix = (ox * s + kx) as isize - p as isize;
                let d = &mut row[(ky * k + kx) * c..][..c];
                if iy < 0 || ix < 0 || iy >= h as isize || ix >= w as isize {
                    d.fill(0.0);
                } else {
                    d.copy_from_slice(&x[((bi * h + iy as usize) * w + ix as usize) * c..][..c]);
                }
            }
        }
    });
}

/// Channels-last (B, HW, C) → channels-first (B, C, HW), optionally with a per-channel
/// affine `v·scale + shift` (an inference BatchNorm) applied on the way. Works on blocks of
/// 16 channels so every read is one cache line.
pub fn nhwc_to_nchw(x: &[f32], b: usize, hw: usize, c: usize, affine: Option<(&[f32], &[f32])>) -> Vec<f32> {
    // the widest block of up to 16 channels that divides C, so no block spans two images
    let block = [16, 8, 4, 2, 1].into_iter().find(|k| c.is_multiple_of(*k)).unwrap_or(1);
    let blocks = c / block;
    // identity affine when none is given (v·1 + 0 = v; a −0 comes out as +0)
    let (ones, zeros) = (vec![1f32; c], vec![0f32; c]);
    let (scale, shift) = affine.unwrap_or((&ones, &zeros));
    par_filled(b * hw * c, block * hw, |i, planes| multiversion!(Path::Best, {
        let (bi, c0) = (i / blocks, (i % blocks) * block);
        let src = &x[bi * hw * c..][..hw * c];
        let (s, t) = (&scale[c0..c0 + block], &shift[c0..c0 + block]);
        // tiles of 16 pixels × the block's channels, transposed through the stack
        let mut tile = [[0f32; 16]; 16];
        for p0 in (0..hw).step_by(16) {
            let np = 16.min(hw - p0);
            for (i, r) in tile[..np].iter_mut().enumerate() {
                r[..block].copy_from_slice(&src[(p0 + i) * c + c0..][..block]);
            }
            for j in 0..block {
                let dst = &mut planes[j * hw + p0..][..np];
                for (i, o) in dst.iter_mut().enumerate() {
                    *o = tile[i][j] * s[j] + t[j];
                }
            }
        }
    }))
}

/// `nn.MaxPool2d(3, 2, 1)` on a channels-last map; returns the map and its (H, W).
pub fn max_pool_3s2p1_nhwc(x: &[f32], b: usize, h: usize, w: usize, c: usize) -> (Vec<f32>, usize, usize) {
    let oh = (h + 2 - 3) / 2 + 1;
    let ow = (w + 2 - 3) / 2 + 1;
    let out = par_filled(b * oh * ow * c, ow * c, |row, dst| {
        let bi = row / oh;
        let oy = row % oh;
        dst.fill(f32::NEG_INFINITY);
        for ox in 0..ow {
            let o = &mut dst[ox * c..(ox + 1) * c];
            for iy in (2 * oy).saturating_sub(1)..(2 * oy + 2).min(h) {
                for ix in (2 * ox).saturating_sub(1)..(2 * ox + 2).min(w) {
                    let src = &x[((bi * h + iy) * w + ix) * c..][..c];
                    for ch in 0..c {
                        o[ch] = o[ch].max(src[ch]);
                    }
                }
            }
        }
    });
    (out, oh, ow)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: &[f32], b: &[f32]) {
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() < 1e-5, "{a:?} vs {b:?}");
        }
    }

    #[test]
    fn dwconv_3x3_sums_neighbourhood() {
        let x = vec![1.0f32; 9];
        let mut out = vec![0f32; 9];
        for (oy, row) in out.chunks_mut(3).enumerate() {
            dwconv_row(&x, row, (3, 3, 1), oy, 0, 0, &[1.0; 9], &[0.5], 3);
        }
        close(&out, &[4.5, 6.5, 4.5, 6.5, 9.5, 6.5, 4.5, 6.5, 4.5]);
        // a row segment starting mid-row writes only its own tokens
        let mut seg = vec![0f32; 2];
        dwconv_row(&x, &mut seg, (3, 3, 1), 1, 1, 0, &[1.0; 9], &[0.5], 3);
        close(&seg, &[9.5, 6.5]);
    }

    #[test]
    fn max_pool_pads_with_minus_infinity() {
        let x: Vec<f32> = (0..16).map(|v| -(v as f32)).collect();
        let (out, oh, ow) = max_pool_3s2p1_nhwc(&x, 1, 4, 4, 1);
        assert_eq!((oh, ow), (2, 2));
        close(&out, &[0.0, -1.0, -4.0, -5.0]);
    }

    #[test]
    fn layer_norm_and_softmax() {
        let out = layer_norm_rows(&[1.0, 3.0], 2, &[1.0, 1.0], &[0.0, 0.0], 0.0);
        close(&out, &[-1.0, 1.0]);
        let mut s = [0.0f32, 0.0, (3f32).ln()];
        softmax_row(&mut s);
        close(&s, &[0.2, 0.2, 0.6]);
    }

    /// A LayerNorm in f64, one row at a time.
    fn layer_norm_reference(x: &[f32], w: &[f32], b: &[f32], eps: f64) -> Vec<f32> {
        let c = w.len();
        x.chunks(c)
            .flat_map(|r| {
                let mean = r.iter().map(|&v| v as f64).sum::<f64>() / c as f64;
                let var = r.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / c as f64;
                (0..c).map(move |i| ((r[i] as f64 - mean) / (var + eps).sqrt() * w[i] as f64 + b[i] as f64) as f32)
            })
            .collect()
    }

    #[test]
    fn layer_norm_chains_equal_lone_norms_bit_for_bit() {
        // 37 rows of 40 (a partial chunk of rows, a partial lane block per row)
        let c = 40;
        let val = |i: usize, k: usize| ((i * 7919 + k * 104_729) % 1000) as f32 / 100.0 - 5.0;
        let x: Vec<f32> = (0..37 * c).map(|i| val(i, 1) * (1.0 + (i / c) as f32)).collect();
        let (wa, ba): (Vec<f32>, Vec<f32>) = ((0..c).map(|i| val(i, 2)).collect(), (0..c).map(|i| val(i, 3)).collect());
        let (wb, bb): (Vec<f32>, Vec<f32>) = ((0..c).map(|i| val(i, 4)).collect(), (0..c).map(|i| val(i, 5)).collect());
        let (a, b) = ((&wa[..], &ba[..]), (&wb[..], &bb[..]));
        let outs = layer_norm_chains(&x, c, &[&[a], &[a, b], &[b, a, b]], 1e-6);
        let lone = |x: &[f32], (w, bias): (&[f32], &[f32])| layer_norm_rows(x, c, w, bias, 1e-6);
        assert_eq!(outs[0], lone(&x, a));
        assert_eq!(outs[1], lone(&lone(&x, a), b));
        assert_eq!(outs[2], lone(&lone(&lone(&x, b), a), b));
        let want = layer_norm_reference(&layer_norm_reference(&x, &wa, &ba, 1e-6), &wb, &bb, 1e-6);
        for (g, w) in outs[1].iter().zip(&want) {
            assert!((g - w).abs() <= 1e-5 * w.abs().max(1.0), "{g} vs {w}");
        }
    }

    /// `ms_deform_attn` written out plainly, one tap at a time (upstream's
    /// `ms_deform_attn_core_pytorch` with `grid_sample`'s zero padding).
    fn deform_reference(value: &[f32], levels: &[Level], refs: &[[f32; 2]], offsets: &[f32], logits: &[f32], s: DeformShape) -> Vec<f32> {
        let (lq, lp) = (refs.len(), levels.len() * s.points);
        let mut out = vec![0f32; s.batch * lq * s.heads * s.head_dim];
        for row in 0..s.batch * lq {
            let [rx, ry] = refs[row % lq];
            for m in 0..s.heads {
                let ab = (row * s.heads + m) * lp;
                let mut w = logits[ab..ab + lp].to_vec();
                softmax_row(&mut w);
                for (li, l) in levels.iter().enumerate() {
                    for p in 0..s.points {
                        let k = li * s.points + p;
                        let (wf, hf) = (l.w as f32, l.h as f32);
                        let ix = ((2.0 * (rx + offsets[(ab + k) * 2] / wf) - 1.0 + 1.0) * wf - 1.0) / 2.0;
                        let iy = ((2.0 * (ry + offsets[(ab + k) * 2 + 1] / hf) - 1.0 + 1.0) * hf - 1.0) / 2.0;
                        let (x0, y0) = (ix.floor(), iy.floor());
                        for (tx, ty, tw) in [
                            (x0, y0, (x0 + 1.0 - ix) * (y0 + 1.0 - iy)),
                            (x0 + 1.0, y0, (ix - x0) * (y0 + 1.0 - iy)),
                            (x0, y0 + 1.0, (x0 + 1.0 - ix) * (iy - y0)),
                            (x0 + 1.0, y0 + 1.0, (ix - x0) * (iy - y0)),
                        ] {
                            if tx < 0.0 || ty < 0.0 || tx >= wf || ty >= hf {
                                continue;
                            }
                            let tok = (row / lq) * s.len_in + l.start + ty as usize * l.w + tx as usize;
                            for d in 0..s.head_dim {
                                out[(row * s.heads + m) * s.head_dim + d] += w[k] * tw * value[(tok * s.heads + m) * s.head_dim + d];
                            }
                        }
                    }
                }
            }
        }
        out
    }

    #[test]
    fn deform_attn_matches_plain_reference_for_every_head_width() {
        let levels = pyramid_levels(4, 6);
        let refs = reference_points(&levels);
        let mut r = 0x2545_f491_u64;
        let mut rnd = move || {
            r ^= r << 13;
            r ^= r >> 7;
            r ^= r << 17;
            (r >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        };
        // head widths 64 and 32 (register paths) and 5 (plain path); 2 images; offsets up
        // to ±3 pixels, so many corners fall outside their level
        for (heads, head_dim) in [(2, 64), (3, 32), (2, 5)] {
            // a NaN offset makes that head's output NaN, as upstream's, without a panic
            let levels1 = [Level { h: 2, w: 2, start: 0 }];
            let s1 = DeformShape { batch: 1, len_in: 4, heads, head_dim, points: 1 };
            let v1 = vec![1f32; 4 * heads * head_dim];
            let mut off1 = vec![0f32; 2 * heads];
            off1[1] = f32::NAN;
            let out = ms_deform_attn(&v1, &levels1, &[[0.5, 0.5]], &off1, &vec![0f32; heads], s1);
            assert!(out[..head_dim].iter().all(|v| v.is_nan()), "head 0 reads a NaN location");
            assert!(out[head_dim..].iter().all(|v| (v - 1.0).abs() < 1e-6), "other heads are untouched");
            let len_in = refs.len();
            let s = DeformShape { batch: 2, len_in, heads, head_dim, points: 4 };
            let n = 2 * len_in * heads * 12;
            let value: Vec<f32> = (0..2 * len_in * heads * head_dim).map(|_| rnd()).collect();
            let offsets: Vec<f32> = (0..2 * n).map(|_| rnd() * 6.0).collect();
            let logits: Vec<f32> = (0..n).map(|_| rnd() * 4.0).collect();
            let got = ms_deform_attn(&value, &levels, &refs, &offsets, &logits, s);
            let want = deform_reference(&value, &levels, &refs, &offsets, &logits, s);
            assert_eq!(got.len(), want.len());
            // the same offsets and logits as rows (2n offsets, n logits) of one buffer
            let per = heads * 12;
            let rows: Vec<f32> = offsets.chunks(2 * per).zip(logits.chunks(per)).flat_map(|(o, l)| o.iter().chain(l)).copied().collect();
            let strided = ms_deform_attn_rows(&value, &levels, &refs, (&rows, 3 * per), (&rows[2 * per..], 3 * per), s);
            assert_eq!(strided, got, "rows of one buffer read as the two buffers");
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                assert!((g - w).abs() <= 1e-5 * w.abs().max(1.0), "heads {heads} × {head_dim}: [{i}] {g} vs {w}");
            }
        }
    }

    #[test]
    fn deform_attn_samples_bilinearly_with_zero_padding() {
        // one 2×2 level, one head of 1 channel, one point; value = [1, 2, 3, 4]
        let levels = [Level { h: 2, w: 2, start: 0 }];
        let value = [1.0, 2.0, 3.0, 4.0];
        let s = DeformShape { batch: 1, len_in: 4, heads: 1, head_dim: 1, points: 1 };
        // reference at the centre (0.5, 0.5) → pixel (0.5, 0.5): mean of all four = 2.5
        let out = ms_deform_attn(&value, &levels, &[[0.5, 0.5]], &[0.0, 0.0], &[0.0], s);
        close(&out, &[2.5]);
        // offset −0.5 px in x from the centre of token (0,0): pixel (−0.5, 0): half the
        // weight falls outside (zero padding) → 0.5·v(0,0) = 0.5
        let out = ms_deform_attn(&value, &levels, &[[0.25, 0.25]], &[-0.5, 0.0], &[0.0], s);
        close(&out, &[0.5]);
        // two points, logits equal: average of v(0,0) = 1 and v(1,1) = 4
        let s2 = DeformShape { points: 2, ..s };
        let out = ms_deform_attn(&value, &levels, &[[0.25, 0.25]], &[0.0, 0.0, 1.0, 1.0], &[0.0, 0.0], s2);
        close(&out, &[2.5]);
    }

    #[test]
    fn nhwc_to_nchw_transposes_with_affine() {
        // C = 32 (two 16-channel blocks) over 2 images of HW = 19 (a full 16-pixel tile and
        // a partial one), then C = 17 (no block wider than 1 divides it)
        let x: Vec<f32> = (0..2 * 19 * 32).map(|v| v as f32).collect();
        let out = nhwc_to_nchw(&x, 2, 19, 32, None);
        for bi in 0..2 {
            for ch in 0..32 {
                for p in 0..19 {
                    assert_eq!(out[(bi * 32 + ch) * 19 + p], x[(bi * 19 + p) * 32 + ch]);
                }
            }
        }
        let x: Vec<f32> = (0..3 * 17).map(|v| v as f32).collect();
        let out = nhwc_to_nchw(&x, 1, 3, 17, None);
        for ch in 0..17 {
            for p in 0..3 {
                assert_eq!(out[ch * 3 + p], x[p * 17 + ch]);
            }
        }
        let s = vec![2.0; 17];
        let t = vec![1.0; 17];
        let out = nhwc_to_nchw(&x, 1, 3, 17, Some((&s, &t)));
        assert_eq!(out[16 * 3 + 2], x[2 * 17 + 16] * 2.0 + 1.0);
    }

    #[test]
    fn reference_points_are_token_centres() {
        let refs = reference_points(&[Level { h: 1, w: 2, start: 0 }]);
        assert_eq!(refs, vec![[0.25, 0.5], [0.75, 0.5]]);
    }
}
