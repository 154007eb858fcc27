//! Every image/grid resize of the crate, with PyTorch's semantics: the forward's
//! channels-last float32 kernels, the float64 grid resizes of the import, the verifier and
//! the ONNX exporter, and the antialiased bicubic of the patch-kernel pseudo-inverse.
//!
//! Mirrors `torch.nn.functional.interpolate` as `aten/src/ATen/native/UpSample.h` and
//! `native/cpu/UpSampleKernel.cpp` compute it:
//! - `mode="bicubic", align_corners=False` (`upsample_bicubic2d`): cubic convolution with
//!   A = −0.75, source index `(dst + 0.5)·scale − 0.5` left unclamped, the four taps clamped
//!   to the border — what timm `resample_abs_pos_embed`, upstream's `_get_pos_embed` and the
//!   Co-DETR branch's relative-position loader call;
//! - `mode="bilinear", align_corners=False` (`upsample_bilinear2d`): source index clamped
//!   below at 0, the second tap clamped at the last pixel — upstream's ×0.5/×2/×4 maps and
//!   its `convert_14to16`;
//! - `mode="bicubic", antialias=True` (`_upsample_bicubic2d_aa`): PIL's kernel with
//!   A = −0.5, support widened by the scale when downsampling, taps outside the input left
//!   out and the rest renormalised — what timm `resample_patch_embed` builds its matrix from.
//!
//! The taps and weights of each mode are computed here once, generic over the float type
//! ([`Real`]): the forward runs them in f32 (as PyTorch's float32 kernel does), the import,
//! verifier and exporter in f64. Only the loops that apply them differ: fused,
//! channels-last and parallel in the forward; plain separable sums over planes or rows in
//! f64 elsewhere.

// Index loops below mirror the kernels' arithmetic over several arrays at once.
#![allow(clippy::needless_range_loop)]

use std::ops::{Add, Div, Mul, Sub};

use super::buffer::par_filled;
use super::kernels::{Path, multiversion};

/// The float type tap weights are computed in: f32 for the forward, f64 at import, verify
/// and export time. Exactly the operations the coefficient formulas use.
pub trait Real:
    Copy + PartialOrd + Add<Output = Self> + Sub<Output = Self> + Mul<Output = Self> + Div<Output = Self>
{
    /// `v as Self`.
    fn of_f64(v: f64) -> Self;
    /// `n as Self`.
    fn of_usize(n: usize) -> Self;
    /// `floor(self)`.
    fn floor(self) -> Self;
    /// `self.max(0.0)` (a NaN gives 0).
    fn max0(self) -> Self;
    /// `self as isize` (saturating, NaN → 0).
    fn to_isize(self) -> isize;
    /// `self as usize` (saturating, NaN and negatives → 0).
    fn to_usize(self) -> usize;
}

macro_rules! real {
    ($t:ty) => {
        impl Real for $t {
            fn of_f64(v: f64) -> Self {
                v as $t
            }
            fn of_usize(n: usize) -> Self {
                n as $t
            }
            fn floor(self) -> Self {
                <$t>::floor(self)
            }
            fn max0(self) -> Self {
                <$t>::max(self, 0.0)
            }
            fn to_isize(self) -> isize {
                self as isize
            }
            fn to_usize(self) -> usize {
                self as usize
            }
        }
    };
}
real!(f32);
real!(f64);

// ---- taps and weights: the one place each mode's index and coefficient math lives ----

/// The cubic-convolution coefficient A of `upsample_bicubic2d`.
pub const CUBIC_A: f64 = -0.75;

/// aten `cubic_convolution1`: the cubic kernel for |x| ≤ 1.
fn cubic1<T: Real>(x: T, a: T) -> T {
    ((a + T::of_f64(2.0)) * x - (a + T::of_f64(3.0))) * x * x + T::of_f64(1.0)
}

/// aten `cubic_convolution2`: the cubic kernel for 1 < |x| < 2.
fn cubic2<T: Real>(x: T, a: T) -> T {
    let k = T::of_f64;
    ((a * x - k(5.0) * a) * x + k(8.0) * a) * x - k(4.0) * a
}

/// aten `get_cubic_upsample_coefficients`: the weights of the four taps at
/// `floor(src) − 1 ..= floor(src) + 2` for the fractional part `t` (A = −0.75).
pub fn cubic_coeffs<T: Real>(t: T) -> [T; 4] {
    let (a, one, two) = (T::of_f64(CUBIC_A), T::of_f64(1.0), T::of_f64(2.0));
    [cubic2(t + one, a), cubic1(t, a), cubic1(one - t, a), cubic2(two - t, a)]
}

/// PyTorch's `area_pixel_compute_scale` (`align_corners=False`): `1/scale_factor` when a
/// factor was given, else `in/out`.
pub fn pixel_scale<T: Real>(input: usize, output: usize, factor: Option<f64>) -> T {
    match factor {
        Some(f) if f > 0.0 => T::of_f64(1.0 / f),
        _ => T::of_usize(input) / T::of_usize(output),
    }
}

/// Bicubic taps of output index `dst` along an axis of `n_in` pixels: the four source
/// indices (clamped to the border) and their weights.
pub fn bicubic_tap<T: Real>(scale: T, dst: usize, n_in: usize) -> ([usize; 4], [T; 4]) {
    let half = T::of_f64(0.5);
    let real = scale * (T::of_usize(dst) + half) - half;
    let base = real.floor();
    let w = cubic_coeffs(real - base);
    let i0 = base.to_isize();
    let last = n_in as isize - 1;
    (std::array::from_fn(|k| (i0 - 1 + k as isize).clamp(0, last) as usize), w)
}

/// Bilinear taps of output index `dst` along an axis of `n_in` pixels: the two source
/// indices (the second clamped to the last pixel) and their weights `[1 − λ, λ]`.
pub fn bilinear_tap<T: Real>(scale: T, dst: usize, n_in: usize) -> ([usize; 2], [T; 2]) {
    let half = T::of_f64(0.5);
    let src = (scale * (T::of_usize(dst) + half) - half).max0();
    let i0 = src.to_usize().min(n_in - 1);
    let step = usize::from(i0 < n_in - 1);
    let lambda = src - T::of_usize(i0);
    ([i0, i0 + step], [T::of_f64(1.0) - lambda, lambda])
}

/// [`bicubic_tap`] for every output index of an `n_in` → `n_out` axis.
pub fn bicubic_axis<T: Real>(n_in: usize, n_out: usize, factor: Option<f64>) -> Vec<([usize; 4], [T; 4])> {
    let scale = pixel_scale(n_in, n_out, factor);
    (0..n_out).map(|o| bicubic_tap(scale, o, n_in)).collect()
}

/// [`bilinear_tap`] for every output index of an `n_in` → `n_out` axis.
pub fn bilinear_axis<T: Real>(n_in: usize, n_out: usize, factor: Option<f64>) -> Vec<([usize; 2], [T; 2])> {
    let scale = pixel_scale(n_in, n_out, factor);
    (0..n_out).map(|o| bilinear_tap(scale, o, n_in)).collect()
}

/// Antialiased bicubic (`antialias=True`) taps of an `n_in` → `n_out` axis: per output
/// index, the first source index and the normalised weights of the consecutive taps from
/// there (aten's `_compute_indices_weights_aa` with PIL's A = −0.5).
pub fn bicubic_aa_axis(n_in: usize, n_out: usize) -> Vec<(usize, Vec<f64>)> {
    const A: f64 = -0.5;
    // aten `aa_filter` for bicubic: its own spelling of the outer piece.
    let filter = |x: f64| {
        let x = x.abs();
        if x < 1.0 {
            cubic1(x, A)
        } else if x < 2.0 {
            (((x - 5.0) * x + 8.0) * x - 4.0) * A
        } else {
            0.0
        }
    };
    let scale = n_in as f64 / n_out as f64;
    let (support, inv) = if scale >= 1.0 { (2.0 * scale, 1.0 / scale) } else { (2.0, 1.0) };
    (0..n_out)
        .map(|i| {
            let center = scale * (i as f64 + 0.5);
            let xmin = ((center - support + 0.5).floor().max(0.0)) as usize;
            let xmax = ((center + support + 0.5).floor() as usize).min(n_in);
            let mut w: Vec<f64> = (xmin..xmax).map(|j| filter((j as f64 - center + 0.5) * inv)).collect();
            let total: f64 = w.iter().sum();
            if total != 0.0 {
                for v in &mut w {
                    *v /= total;
                }
            }
            (xmin, w)
        })
        .collect()
}

// ---- the forward: channels-last f32 kernels ----

/// `F.interpolate(mode='bicubic', align_corners=False)` to (`oh`, `ow`) on a channels-last
/// map (B, H, W, C) in f32; borders clamp. Same size returns the input (PyTorch copies).
pub fn bicubic_nhwc(src: &[f32], b: usize, h: usize, w: usize, c: usize, oh: usize, ow: usize) -> Vec<f32> {
    if h == oh && w == ow {
        return src[..b * h * w * c].to_vec();
    }
    let ty = bicubic_axis::<f32>(h, oh, None);
    let tx = bicubic_axis::<f32>(w, ow, None);
    par_filled(b * oh * ow * c, ow * c, |row, dst| {
        let bi = row / oh;
        let (ys, cy) = &ty[row % oh];
        for ((xs, cx), o) in tx.iter().zip(dst.chunks_mut(c)) {
            // the 4×4 source pixels, each C values
            let t: [[&[f32]; 4]; 4] = std::array::from_fn(|k| std::array::from_fn(|j| &src[((bi * h + ys[k]) * w + xs[j]) * c..][..c]));
            cubic_mix(o, &t, cx, cy);
        }
    })
}

/// One output pixel of the bicubic resize from its 4×4 source pixels `t` (rows, then
/// columns): along x first, then y, each sum from zero in tap order, as PyTorch.
fn cubic_mix(o: &mut [f32], t: &[[&[f32]; 4]; 4], cx: &[f32; 4], cy: &[f32; 4]) {
    multiversion!(Path::Best, {
        for ch in 0..o.len() {
            let r = [cubic_row(&t[0], ch, cx), cubic_row(&t[1], ch, cx), cubic_row(&t[2], ch, cx), cubic_row(&t[3], ch, cx)];
            o[ch] = r[0] * cy[0] + r[1] * cy[1] + r[2] * cy[2] + r[3] * cy[3];
        }
    })
}

/// Channel `ch` of one source row's four taps weighted by `cx`, summed from zero in tap
/// order.
#[inline(always)]
fn cubic_row(t: &[&[f32]; 4], ch: usize, cx: &[f32; 4]) -> f32 {
    0.0 + t[0][ch] * cx[0] + t[1][ch] * cx[1] + t[2][ch] * cx[2] + t[3][ch] * cx[3]
}

/// `F.interpolate(mode='bilinear', align_corners=False)` on a channels-last map
/// (B, H, W, C) to (`oh`, `ow`) in f32; `factor` is the `scale_factor` upstream passed, if
/// any (it sets the source-coordinate scale as in PyTorch).
#[allow(clippy::too_many_arguments)]
pub fn bilinear_nhwc(
    src: &[f32],
    b: usize,
    h: usize,
    w: usize,
    c: usize,
    oh: usize,
    ow: usize,
    factor: Option<f64>,
) -> Vec<f32> {
    let img = h * w * c;
    par_filled(b * oh * ow * c, ow * c, |row, dst| {
        let bi = row / oh;
        bilinear_row(&src[bi * img..(bi + 1) * img], (h, w, c), (oh, ow), factor, row % oh, dst, false);
    })
}

/// Output row `oy` of [`bilinear_nhwc`] for one image `src` (H, W, C), stored in `dst` or,
/// with `accumulate`, added to it: the fused kernel the CTI and output-pyramid passes call
/// row by row.
pub fn bilinear_row(
    src: &[f32],
    (h, w, c): (usize, usize, usize),
    (oh, ow): (usize, usize),
    factor: Option<f64>,
    oy: usize,
    dst: &mut [f32],
    accumulate: bool,
) {
    let sh: f32 = pixel_scale(h, oh, factor);
    let sw: f32 = pixel_scale(w, ow, factor);
    let ([y0, y1], [ly0, ly1]) = bilinear_tap(sh, oy, h);
    for (ox, o) in dst[..ow * c].chunks_mut(c).enumerate() {
        let ([x0, x1], [lx0, lx1]) = bilinear_tap(sw, ox, w);
        let p = |y: usize, x: usize| &src[(y * w + x) * c..][..c];
        let taps = [p(y0, x0), p(y0, x1), p(y1, x0), p(y1, x1)];
        bilinear_mix(o, taps, [lx0, lx1, ly0, ly1], accumulate);
    }
}

/// `o (=|+=) ly0·(lx0·a + lx1·b) + ly1·(lx0·c + lx1·d)` per channel, PyTorch's order.
fn bilinear_mix(o: &mut [f32], [a, b, c, d]: [&[f32]; 4], [lx0, lx1, ly0, ly1]: [f32; 4], accumulate: bool) {
    multiversion!(Path::Best, {
        let n = o.len();
        let (a, b, c, d) = (&a[..n], &b[..n], &c[..n], &d[..n]);
        if accumulate {
            for ch in 0..n {
                o[ch] += ly0 * (lx0 * a[ch] + lx1 * b[ch]) + ly1 * (lx0 * c[ch] + lx1 * d[ch]);
            }
        } else {
            for ch in 0..n {
                o[ch] = ly0 * (lx0 * a[ch] + lx1 * b[ch]) + ly1 * (lx0 * c[ch] + lx1 * d[ch]);
            }
        }
    })
}

// ---- import, verify and export: f64 grid resizes ----

/// How a grid of `C` channels over `h×w` pixels is laid out in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// `(C, H, W)`: one plane per channel (NCHW without the batch).
    Planes,
    /// `(H, W, C)`: one row of `C` values per pixel (a token table, channels last).
    Rows,
}

impl Layout {
    /// Offset of (channel, pixel) in a grid of `c` channels and `n` pixels.
    fn at(self, ch: usize, px: usize, c: usize, n: usize) -> usize {
        match self {
            Layout::Planes => ch * n + px,
            Layout::Rows => px * c + ch,
        }
    }
}

/// `F.interpolate(mode='bicubic', align_corners=False)` of `c` channels from `h×w` to
/// `oh×ow` in `layout`, weights and sums in f64, rounded to f32 once. Same size returns the
/// input (PyTorch copies).
pub fn bicubic(src: &[f32], c: usize, layout: Layout, (h, w): (usize, usize), (oh, ow): (usize, usize)) -> Vec<f32> {
    if (h, w) == (oh, ow) {
        return src[..c * h * w].to_vec();
    }
    separable(src, c, layout, (h, w), &bicubic_axis(h, oh, None), &bicubic_axis(w, ow, None))
}

/// `F.interpolate(mode='bilinear', align_corners=False)` of `c` channels from `h×w` to
/// `oh×ow` in `layout`, weights and sums in f64, rounded to f32 once.
pub fn bilinear(src: &[f32], c: usize, layout: Layout, (h, w): (usize, usize), (oh, ow): (usize, usize)) -> Vec<f32> {
    separable(src, c, layout, (h, w), &bilinear_axis(h, oh, None), &bilinear_axis(w, ow, None))
}

/// A separable K-tap resize: per output pixel, Σ_a wy[a] · Σ_b wx[b] · src[iy[a], ix[b]],
/// each sum from zero in tap order, in f64.
fn separable<const K: usize>(
    src: &[f32],
    c: usize,
    layout: Layout,
    (h, w): (usize, usize),
    ay: &[([usize; K], [f64; K])],
    ax: &[([usize; K], [f64; K])],
) -> Vec<f32> {
    let (n_in, n_out) = (h * w, ay.len() * ax.len());
    let mut out = vec![0f32; c * n_out];
    for ch in 0..c {
        for (oy, (iy, wy)) in ay.iter().enumerate() {
            for (ox, (ix, wx)) in ax.iter().enumerate() {
                let mut acc = 0.0f64;
                for (a, &yy) in iy.iter().enumerate() {
                    let mut row = 0.0f64;
                    for (b, &xx) in ix.iter().enumerate() {
                        row += wx[b] * src[layout.at(ch, yy * w + xx, c, n_in)] as f64;
                    }
                    acc += wy[a] * row;
                }
                out[layout.at(ch, oy * ax.len() + ox, c, n_out)] = acc as f32;
            }
        }
    }
    out
}

/// One `h×w` plane resized to `oh×ow` with antialiased bicubic (`antialias=True`), kept in
/// f64 (the columns of timm's resample matrix).
pub fn bicubic_aa_plane(src: &[f32], (h, w): (usize, usize), (oh, ow): (usize, usize)) -> Vec<f64> {
    let ay = bicubic_aa_axis(h, oh);
    let ax = bicubic_aa_axis(w, ow);
    let mut out = Vec::with_capacity(oh * ow);
    for (y0, wy) in &ay {
        for (x0, wx) in &ax {
            let mut acc = 0.0;
            for (a, wa) in wy.iter().enumerate() {
                for (b, wb) in wx.iter().enumerate() {
                    acc += wa * wb * src[(y0 + a) * w + x0 + b] as f64;
                }
            }
            out.push(acc);
        }
    }
    out
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
    fn cubic_weights_sum_to_one_and_match_hand_values() {
        for t in [0.0, 0.25, 0.5, 0.9] {
            let s: f64 = cubic_coeffs(t).iter().sum();
            assert!((s - 1.0).abs() < 1e-12);
        }
        // A = -0.75, t = 0.5: weights [-0.09375, 0.59375, 0.59375, -0.09375]
        close(&cubic_coeffs(0.5f32), &[-0.09375, 0.59375, 0.59375, -0.09375]);
        // t = 0: the centre tap alone, exactly
        assert_eq!(cubic_coeffs(0.0f64), [0.0, 1.0, 0.0, 0.0]);
    }

    #[test]
    fn f32_and_f64_taps_are_the_same_formula() {
        for (n_in, n_out) in [(2, 4), (4, 8), (7, 11), (14, 16), (37, 14)] {
            let a32 = bicubic_axis::<f32>(n_in, n_out, None);
            let a64 = bicubic_axis::<f64>(n_in, n_out, None);
            for ((i32_, w32), (i64_, w64)) in a32.iter().zip(&a64) {
                assert_eq!(i32_, i64_);
                for (x, y) in w32.iter().zip(w64) {
                    assert!((f64::from(*x) - y).abs() < 1e-5, "{n_in} -> {n_out}: {x} vs {y}");
                }
            }
        }
    }

    #[test]
    fn bilinear_half_averages_pairs() {
        // 1×2×2×1 map → ×0.5: PyTorch gives the mean of the four.
        let out = bilinear_nhwc(&[1.0, 2.0, 3.0, 4.0], 1, 2, 2, 1, 1, 1, Some(0.5));
        close(&out, &[2.5]);
    }

    #[test]
    fn bilinear_double_matches_torch() {
        // torch: F.interpolate([[0,1]], scale_factor=2, bilinear) = [0, .25, .75, 1] per row
        let out = bilinear_nhwc(&[0.0, 1.0], 1, 1, 2, 1, 1, 4, Some(2.0));
        close(&out, &[0.0, 0.25, 0.75, 1.0]);
        // the f64 grid resize, to size, is exact here
        assert_eq!(bilinear(&[0.0, 1.0], 1, Layout::Planes, (1, 2), (1, 4)), vec![0.0, 0.25, 0.75, 1.0]);
    }

    #[test]
    fn bilinear_row_accumulates() {
        let mut dst = vec![1.0f32; 4];
        bilinear_row(&[0.0, 1.0], (1, 2, 1), (1, 4), Some(2.0), 0, &mut dst, true);
        close(&dst, &[1.0, 1.25, 1.75, 2.0]);
    }

    #[test]
    fn bicubic_same_size_is_identity_and_upsample_matches_hand_values() {
        let src = [0.0, 1.0, 2.0, 3.0];
        close(&bicubic_nhwc(&src, 1, 2, 2, 1, 2, 2), &src);
        // 1×2 → 1×4 along x: source x = 0.5·(dst+0.5) − 0.5 = −0.25, 0.25, 0.75, 1.25.
        // dst 0: t = 0.75 at x0 = −1, taps clamp to [0, 0, 0, 1] → cubic2(1.25) = −0.10546875;
        // dst 1: t = 0.25 at x0 = 0, taps [0, 0, 1, 1] → cubic1(0.75) + cubic2(1.75)
        //        = 0.26171875 − 0.03515625 = 0.2265625; the rest by symmetry.
        let want = [-0.10546875, 0.2265625, 0.7734375, 1.105_468_8];
        close(&bicubic_nhwc(&[0.0, 1.0], 1, 1, 2, 1, 1, 4), &want);
        close(&bicubic(&[0.0, 1.0], 1, Layout::Rows, (1, 2), (1, 4)), &want);
    }

    #[test]
    fn bicubic_grid_identity_and_constant_in_both_layouts() {
        let x: Vec<f32> = (0..24).map(|v| v as f32).collect();
        for layout in [Layout::Planes, Layout::Rows] {
            assert_eq!(bicubic(&x, 2, layout, (3, 4), (3, 4)), x);
            let c = vec![2.5f32; 2 * 9];
            let out = bicubic(&c, 2, layout, (3, 3), (5, 7));
            assert_eq!(out.len(), 2 * 35);
            assert!(out.iter().all(|v| (v - 2.5).abs() < 1e-6));
        }
    }

    #[test]
    fn bicubic_layouts_agree_bit_for_bit() {
        let (c, h, w) = (3, 4, 5);
        let planes: Vec<f32> = (0..c * h * w).map(|v| ((v * 37) % 11) as f32 - 5.0).collect();
        let mut rows = vec![0f32; planes.len()];
        for ch in 0..c {
            for p in 0..h * w {
                rows[p * c + ch] = planes[ch * h * w + p];
            }
        }
        let a = bicubic(&planes, c, Layout::Planes, (h, w), (7, 3));
        let b = bicubic(&rows, c, Layout::Rows, (h, w), (7, 3));
        for ch in 0..c {
            for p in 0..21 {
                assert_eq!(a[ch * 21 + p].to_bits(), b[p * c + ch].to_bits());
            }
        }
    }

    #[test]
    fn bicubic_matches_torch_upsample_1d_row() {
        // torch.nn.functional.interpolate(torch.arange(4.).view(1,1,1,4), size=(1,8),
        // mode="bicubic", align_corners=False)
        let out = bicubic(&[0.0, 1.0, 2.0, 3.0], 1, Layout::Planes, (1, 4), (1, 8));
        let exp = [-0.105469, 0.191406, 0.667969, 1.296875, 1.703125, 2.332031, 2.808594, 3.105469];
        close(&out, &exp);
    }

    #[test]
    fn antialiased_bicubic_same_size_identity_and_downsample_hand_values() {
        let x: Vec<f32> = (0..9).map(|v| v as f32).collect();
        let same = bicubic_aa_plane(&x, (3, 3), (3, 3));
        assert!(same.iter().zip(&x).all(|(a, b)| (a - f64::from(*b)).abs() < 1e-12), "{same:?}");
        // 1×4 → 1×2 (scale 2, support 4): output 0 at centre 1 reads taps 0..4 at
        // (j − 0.5)/2 = −0.25, 0.25, 0.75, 1.25 → PIL weights 0.8671875, 0.8671875,
        // 0.2265625, −0.0703125 (sum 1.890625); output 1 by symmetry.
        let out = bicubic_aa_plane(&[0.0, 1.0, 2.0, 3.0], (1, 4), (1, 2));
        let v0 = (0.8671875 + 2.0 * 0.2265625 - 3.0 * 0.0703125) / 1.890625;
        assert!((out[0] - v0).abs() < 1e-12 && (out[1] - (3.0 - v0)).abs() < 1e-12, "{out:?}");
        for (_, w) in bicubic_aa_axis(7, 3).iter().chain(&bicubic_aa_axis(3, 7)) {
            assert!((w.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        }
    }
}
