//! Hot loops of the reference forward, vectorised: a polynomial `exp` for softmax, an erf
//! GELU, and fused multi-head attention straight from the `qkv` buffer (no q/k/v copies, no
//! materialised `(heads, N, N)` logits) with matrix products through the `gemm` crate.
//!
//! Each elementwise kernel is written once as plain scalar Rust and compiled twice: as is
//! (the portable path) and inside a `#[target_feature(enable = "avx512f", …)]` wrapper that
//! LLVM vectorises 16 lanes wide, chosen at run time with `is_x86_feature_detected!`.
//! Both paths run the same arithmetic, so they agree to the last bit on ordinary inputs;
//! every public kernel takes a [`Path`] so tests can force the portable one.
//!
//! Mirrors the softmax and `nn.GELU` of upstream's `base/vit.py` `Attention` / `Mlp`
//! (`(q @ k.transpose(-2, -1)) * scale`, `softmax(dim=-1)`, `attn @ v`).

use rayon::prelude::*;

/// Which code path a kernel runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Path {
    /// The widest path this CPU supports.
    Best,
    /// Plain scalar code, as compiled for the target's baseline (the tests run it beside
    /// `Best`).
    #[cfg_attr(not(test), allow(dead_code))]
    Portable,
}

impl Path {
    /// Whether the AVX-512 build of a kernel may run.
    pub(crate) fn wide(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            self == Path::Best && avx512()
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    }
}

#[cfg(target_arch = "x86_64")]
fn avx512() -> bool {
    use std::sync::OnceLock;
    static HAS: OnceLock<bool> = OnceLock::new();
    *HAS.get_or_init(|| {
        is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512vl")
            && is_x86_feature_detected!("avx512dq")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("avx2")
    })
}

/// Run `$body` (an expression using only safe code) compiled for AVX-512 when `$path`
/// allows it, else as is. Keep loops with a per-element inner loop out of `$body`'s hot
/// path: LLVM vectorises the innermost loop only.
macro_rules! multiversion {
    ($path:expr, $body:expr) => {{
        #[cfg(target_arch = "x86_64")]
        {
            #[target_feature(enable = "avx512f,avx512vl,avx512dq,avx512bw,avx2,fma")]
            fn wide<T>(f: impl FnOnce() -> T) -> T {
                f()
            }
            if $crate::model::kernels::Path::wide($path) {
                // SAFETY: `Path::wide` checked at run time that this CPU has every feature
                // the wrapper enables.
                unsafe { wide(#[inline(always)] || $body) }
            } else {
                $body
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            $body
        }
    }};
}

pub(crate) use multiversion;

/// Lanes of the accumulators below: one AVX-512 register of f32.
const LANES: usize = 16;

/// `exp(x)` for `x ≤ 88`, within 2 ulp of `f32::exp` (Cephes `expf`: round to a power of
/// two, degree-6 polynomial on the remainder); inputs below −87.3 give `exp(−87.3)`
/// instead of 0 (≈ 1e-38, invisible after a softmax sum). Branch-free so it vectorises.
#[inline(always)]
pub fn exp_fast(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const C1: f32 = 0.693_359_4;
    const C2: f32 = -2.121_944_4e-4;
    // 1.5·2²³: adding and subtracting it rounds to the nearest integer.
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.3, 88.0);
    let t = x * LOG2E + ROUND;
    let n = t - ROUND;
    // n as an integer straight from t's bits (|n| ≤ 127 sits in the low mantissa bits):
    // integer lanes only, where `n as i32` would be a saturating scalar conversion per lane
    let ni = t.to_bits().wrapping_sub(ROUND.to_bits()) as i32;
    let r = x - n * C1 - n * C2;
    let mut p = 1.987_569_2e-4f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5;
    let y = p * r * r + r + 1.0;
    y * f32::from_bits(((ni + 127) as u32) << 23)
}

/// `erf(x)`, absolute error below 2e-7 (Abramowitz & Stegun 7.1.26 with [`exp_fast`]).
#[inline(always)]
fn erf_fast(x: f32) -> f32 {
    let a = x.abs();
    let t = 1.0 / (1.0 + 0.327_591_1 * a);
    let poly = t * (0.254_829_6 + t * (-0.284_496_74 + t * (1.421_413_8 + t * (-1.453_152_1 + t * 1.061_405_4))));
    let e = 1.0 - poly * exp_fast(-a * a);
    e.copysign(x)
}

/// `nn.GELU()` (the erf form) of one value.
#[inline(always)]
pub fn gelu_fast(x: f32) -> f32 {
    0.5 * x * (1.0 + erf_fast(x * std::f32::consts::FRAC_1_SQRT_2))
}

/// GELU in place, `times` times over (MRFP applies it twice), split over the thread pool.
pub fn gelu_inplace(x: &mut [f32], times: usize, path: Path) {
    x.par_chunks_mut(1 << 14).for_each(|c| gelu_chunk(c, times, path));
}

/// GELU in place on the calling thread, `times` times over (for a chunk a parallel
/// kernel has just written, while it is in cache).
pub fn gelu_chunk(c: &mut [f32], times: usize, path: Path) {
    multiversion!(path, {
        // Passes outermost: a loop inside the element loop would not vectorise.
        for _ in 0..times {
            c.iter_mut().for_each(|v| *v = gelu_fast(*v));
        }
    })
}

/// `Σ f(v)` over a row, in [`LANES`] partial sums (so it vectorises).
#[inline(always)]
pub fn lane_sum(r: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    let mut acc = [0f32; LANES];
    let chunks = r.chunks_exact(LANES);
    let tail: f32 = chunks.remainder().iter().map(|&v| f(v)).sum();
    for c in chunks {
        for i in 0..LANES {
            acc[i] += f(c[i]);
        }
    }
    tail + acc.iter().sum::<f32>()
}

/// Row maximum.
#[inline(always)]
fn max_row(r: &[f32]) -> f32 {
    let mut m = [f32::NEG_INFINITY; LANES];
    let chunks = r.chunks_exact(LANES);
    let tail = chunks.remainder();
    for c in chunks {
        for i in 0..LANES {
            m[i] = m[i].max(c[i]);
        }
    }
    tail.iter().chain(&m).copied().fold(f32::NEG_INFINITY, f32::max)
}

/// `r ← exp(r − max r)` in place; returns the sum.
#[inline(always)]
fn exp_shifted(r: &mut [f32]) -> f32 {
    let m = max_row(r);
    let mut acc = [0f32; LANES];
    let mut chunks = r.chunks_exact_mut(LANES);
    for c in &mut chunks {
        for i in 0..LANES {
            c[i] = exp_fast(c[i] - m);
            acc[i] += c[i];
        }
    }
    let mut s = 0f32;
    for v in chunks.into_remainder() {
        *v = exp_fast(*v - m);
        s += *v;
    }
    s + acc.iter().sum::<f32>()
}

/// Softmax in place over each contiguous row of length `n` (the tests' check of
/// `exp_shifted`; attention fuses its own softmax).
#[cfg(test)]
pub fn softmax_rows(x: &mut [f32], n: usize, path: Path) {
    x.par_chunks_mut(n).for_each(|r| {
        multiversion!(path, {
            let inv = 1.0 / exp_shifted(r);
            r.iter_mut().for_each(|v| *v *= inv);
        })
    });
}

/// Shapes and options of one [`attention`] call.
#[derive(Debug, Clone, Copy)]
pub struct AttnShape {
    /// Independent sequences (images × windows).
    pub seqs: usize,
    /// Tokens per sequence.
    pub n: usize,
    pub heads: usize,
    pub head_dim: usize,
    /// Multiplies `q·k`.
    pub scale: f32,
}

/// Which query rows of each sequence are real tokens when the sequences are the
/// `win×win` windows of an `h×w` grid padded bottom and right (`vit::gather_windows`):
/// window `l` (row-major over `ny×nx` windows per image) holds real tokens in its top-left
/// `min(win, h - wy·win) × min(win, w - wx·win)` rectangle. The other rows' outputs are
/// dropped by the caller, so [`attention`] skips them (they stay zero); padded tokens still
/// take part as keys and values, exactly as upstream.
#[derive(Debug, Clone, Copy)]
pub struct LiveRows {
    pub win: usize,
    pub h: usize,
    pub w: usize,
}

impl LiveRows {
    /// (rows, columns) of real tokens in window `seq`.
    fn rect(&self, seq: usize) -> (usize, usize) {
        let (ny, nx) = (self.h.div_ceil(self.win), self.w.div_ceil(self.win));
        let (wy, wx) = ((seq / nx) % ny, seq % nx);
        ((self.h - wy * self.win).min(self.win), (self.w - wx * self.win).min(self.win))
    }
}

/// Query rows per task, at most: each row is K and V's packed operand reused once more.
const ATTN_ROWS: usize = 256;
/// Logits per task, at most (1 MB): the (rows, N) block stays in L2 beside K and V.
const ATTN_LOGITS: usize = 1 << 18;

/// BEiT's relative-position bias of a `w x w` window (N = w²), gathered row by row from its
/// table `(heads, (2w-1)²)` (head-major), never expanded to (heads, N, N): for query token
/// `(yi, xi)` and key `(yj, xj)` the row `(yi-yj+w-1)·(2w-1) + (xi-xj+w-1)` of unilm's
/// `relative_position_index`.
#[derive(Debug, Clone, Copy)]
pub struct RelBias<'a> {
    /// `(heads, (2w-1)²)`.
    pub table: &'a [f32],
    /// The window side w.
    pub window: usize,
}

impl RelBias<'_> {
    /// Add head `h`'s bias of query row `qi` to `row` (N logits).
    #[inline]
    fn add_row(&self, h: usize, qi: usize, row: &mut [f32]) {
        let w = self.window;
        let side = 2 * w - 1;
        let th = &self.table[h * side * side..][..side * side];
        let (yi, xi) = (qi / w, qi % w);
        for (yj, keys) in row.chunks_mut(w).enumerate() {
            // xj = 0..w reads the table backwards from (yi-yj+w-1, xi+w-1)
            let base = (yi + w - 1 - yj) * side + xi + w - 1;
            keys.iter_mut().enumerate().for_each(|(xj, x)| *x += th[base - xj]);
        }
    }
}

/// `softmax(scale·q kᵀ + bias) v` for every sequence and head. `qkv` is (seqs, N, 3, heads,
/// head_dim) as the `qkv` Linear writes it; `bias`, if any, a [`RelBias`]. Returns
/// (seqs, N, heads·head_dim). Works on blocks of query rows in parallel, as many as fit
/// [`ATTN_LOGITS`] (at most [`ATTN_ROWS`], at least 16).
///
/// With `live`, only the real tokens' rows of each padded window are computed (the others
/// are left zero): a 14×14 grid in 56×56 windows computes 196 of 3136 rows.
pub fn attention(qkv: &[f32], bias: Option<RelBias>, live: Option<LiveRows>, s: AttnShape, path: Path) -> Vec<f32> {
    let (n, hd) = (s.n, s.head_dim);
    let block_rows = (ATTN_LOGITS / n.max(1)).clamp(16, ATTN_ROWS);
    let c = s.heads * hd;
    assert_eq!(qkv.len(), s.seqs * n * 3 * c, "qkv is (seqs, N, 3C)");
    if let Some(b) = &bias {
        assert_eq!(b.window * b.window, n, "a relative bias's window is the sequence");
        assert_eq!(b.table.len(), s.heads * (2 * b.window - 1) * (2 * b.window - 1), "table is (heads, (2w-1)^2)");
    }
    if let Some(l) = &live {
        assert_eq!(l.win * l.win, n, "live rows describe windows of the sequence's size");
    }
    super::buffer::par_filled(s.seqs * n * c, n * c, |seq, out_seq| {
        let qkv = &qkv[seq * n * 3 * c..(seq + 1) * n * 3 * c];
        // Tasks: (first row, its block of output rows). Every row, or each real run of a
        // padded window (rows y·win .. y·win + cols for y < rows), in blocks of block_rows.
        let tasks: Vec<(usize, &mut [f32])> = match live {
            None => out_seq.chunks_mut(block_rows * c).enumerate().map(|(b, d)| (b * block_rows, d)).collect(),
            Some(l) => {
                let (ry, rx) = l.rect(seq);
                out_seq
                    .chunks_mut(l.win * c)
                    .take(ry)
                    .enumerate()
                    .flat_map(|(y, run)| {
                        run[..rx * c].chunks_mut(block_rows * c).enumerate().map(move |(b, d)| (y * l.win + b * block_rows, d))
                    })
                    .collect()
            }
        };
        tasks.into_par_iter().for_each(|(r0, dst)| {
            let rows = dst.len() / c;
            let mut logits = vec![0f32; rows * n];
            for h in 0..s.heads {
                let q = &qkv[r0 * 3 * c + h * hd..];
                let k = &qkv[c + h * hd..];
                let v = &qkv[2 * c + h * hd..];
                // (rows, N) = scale · q (rows, hd) · kᵀ (hd, N)
                // SAFETY: every index gemm touches is in bounds: q rows r0..r0+rows and
                // k columns 0..N step 3C from the sequence's own qkv block, each read
                // head_dim wide from its head's offset; logits is rows×N contiguous.
                unsafe {
                    gemm::gemm(
                        rows, n, hd,
                        logits.as_mut_ptr(), 1, n as isize,
                        false,
                        q.as_ptr(), 1, 3 * c as isize,
                        k.as_ptr(), 3 * c as isize, 1,
                        0.0, s.scale,
                        false, false, false,
                        gemm::Parallelism::None,
                    );
                }
                let mut inv = [0f32; ATTN_ROWS];
                for (i, r) in logits.chunks_mut(n).enumerate() {
                    if let Some(b) = &bias {
                        b.add_row(h, r0 + i, r);
                    }
                    inv[i] = 1.0 / multiversion!(path, exp_shifted(r));
                }
                let o = &mut dst[h * hd..];
                // (rows, hd) = p (rows, N) · v (N, hd), into columns h·hd.. of dst
                // SAFETY: dst is this block's rows×C output; row i writes dst[i·C + h·hd ..
                // + hd], inside it. v rows 0..N step 3C stay in the sequence's qkv block.
                unsafe {
                    gemm::gemm(
                        rows, hd, n,
                        o.as_mut_ptr(), 1, c as isize,
                        false,
                        logits.as_ptr(), 1, n as isize,
                        v.as_ptr(), 1, 3 * c as isize,
                        0.0, 1.0,
                        false, false, false,
                        gemm::Parallelism::None,
                    );
                }
                for (i, row) in dst.chunks_mut(c).enumerate() {
                    row[h * hd..(h + 1) * hd].iter_mut().for_each(|x| *x *= inv[i]);
                }
            }
        });
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rel_close(a: &[f32], b: &[f32], tol: f32) {
        assert_eq!(a.len(), b.len());
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            assert!((x - y).abs() <= tol * y.abs().max(1.0), "[{i}] {x} vs {y}");
        }
    }

    fn seeded(n: usize, seed: u32) -> Vec<f32> {
        let mut s = seed.wrapping_mul(2_654_435_761) | 1;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                (s >> 8) as f32 / (1u32 << 24) as f32 * 2.0 - 1.0
            })
            .collect()
    }

    #[test]
    fn exp_matches_std_on_softmax_range() {
        for i in 0..=20_000 {
            let x = -87.0 + i as f32 * (88.0 + 87.0) / 20_000.0;
            let (a, b) = (exp_fast(x), x.exp());
            assert!((a - b).abs() <= 3e-7 * b, "exp({x}) = {a}, std {b}");
        }
    }

    #[test]
    fn gelu_matches_erf_form() {
        for i in 0..=4000 {
            let x = -10.0 + i as f32 * 0.005;
            let exact = 0.5 * x as f64 * (1.0 + erf64(x as f64 / std::f64::consts::SQRT_2));
            assert!((gelu_fast(x) as f64 - exact).abs() < 3e-7 * x.abs().max(1.0) as f64, "gelu({x})");
        }
    }

    /// erf by its Taylor series (|x| ≤ 3) or the continued-fraction tail, in f64.
    fn erf64(x: f64) -> f64 {
        if x.abs() > 5.0 {
            return x.signum();
        }
        let mut sum = 0.0;
        let mut term = x;
        let mut k = 0.0;
        while term.abs() > 1e-17 || k < 5.0 {
            sum += term / (2.0 * k + 1.0);
            k += 1.0;
            term *= -x * x / k;
        }
        sum * 2.0 / std::f64::consts::PI.sqrt()
    }

    #[test]
    fn wide_and_portable_paths_agree() {
        let mut a = seeded(1000, 1);
        a.iter_mut().for_each(|v| *v *= 8.0);
        let mut b = a.clone();
        gelu_inplace(&mut a, 2, Path::Best);
        gelu_inplace(&mut b, 2, Path::Portable);
        rel_close(&a, &b, 1e-6);
        let mut a = seeded(7 * 37, 2);
        let mut b = a.clone();
        softmax_rows(&mut a, 37, Path::Best);
        softmax_rows(&mut b, 37, Path::Portable);
        rel_close(&a, &b, 1e-6);
        let sum: f32 = a[..37].iter().sum();
        assert!((sum - 1.0).abs() < 1e-6);
    }

    /// Plain candle: softmax(scale·q kᵀ + bias) v per head.
    fn attention_candle(qkv: &[f32], bias: Option<&[f32]>, s: AttnShape) -> Vec<f32> {
        use candle_core::{Device, Tensor, D};
        let c = s.heads * s.head_dim;
        let t = Tensor::from_slice(qkv, (s.seqs, s.n, 3, s.heads, s.head_dim), &Device::Cpu).unwrap();
        // (3, seqs, heads, N, hd)
        let t = t.permute((2, 0, 3, 1, 4)).unwrap().contiguous().unwrap();
        let (q, k, v) = (t.get(0).unwrap(), t.get(1).unwrap(), t.get(2).unwrap());
        let mut l = (q.matmul(&k.t().unwrap()).unwrap() * s.scale as f64).unwrap();
        if let Some(b) = bias {
            l = l.broadcast_add(&Tensor::from_slice(b, (1, s.heads, s.n, s.n), &Device::Cpu).unwrap()).unwrap();
        }
        let m = l.max_keepdim(D::Minus1).unwrap();
        let e = l.broadcast_sub(&m).unwrap().exp().unwrap();
        let p = e.broadcast_div(&e.sum_keepdim(D::Minus1).unwrap()).unwrap();
        // (seqs, heads, N, hd) → (seqs, N, C)
        let o = p.matmul(&v).unwrap().transpose(1, 2).unwrap().reshape((s.seqs, s.n, c)).unwrap();
        o.flatten_all().unwrap().to_vec1().unwrap()
    }

    /// unilm's bias of a `w x w` window expanded through `relative_position_index`:
    /// (heads, N, N) from the head-major table.
    fn expanded(table: &[f32], heads: usize, w: usize) -> Vec<f32> {
        let (n, side) = (w * w, 2 * w - 1);
        let index = crate::model::vit::relative_position_index(w);
        let mut dense = vec![0f32; heads * n * n];
        for h in 0..heads {
            for (ij, &r) in index.iter().enumerate() {
                dense[h * n * n + ij] = table[h * side * side + r as usize];
            }
        }
        dense
    }

    #[test]
    fn live_rows_compute_only_the_real_tokens_of_padded_windows() {
        // An 11×5 grid of one image in 8×8 windows: two windows, real rectangles 8×5 and
        // 3×5; with a BEiT bias and without. Real rows equal the full computation's (bit for
        // bit at this size, where the row blocks' GEMMs sum in the same order; at large sizes
        // blocks of other heights may round differently), padded rows are 0.
        let (win, h, w) = (8, 11, 5);
        let n = win * win;
        let s = AttnShape { seqs: 2, n, heads: 2, head_dim: 8, scale: 0.35 };
        let c = 16;
        let qkv: Vec<f32> = seeded(2 * n * 3 * c, 5).iter().map(|v| v * 3.0).collect();
        let table = seeded(2 * (2 * win - 1) * (2 * win - 1), 6);
        for bias in [None, Some(RelBias { table: &table, window: win })] {
            let full = attention(&qkv, bias, None, s, Path::Best);
            let live = attention(&qkv, bias, Some(LiveRows { win, h, w }), s, Path::Best);
            let mut real = 0;
            for seq in 0..2 {
                for k in 0..n {
                    let (y, x) = (seq * win + k / win, k % win);
                    let at = (seq * n + k) * c;
                    if y < h && x < w {
                        real += 1;
                        assert_eq!(live[at..at + c], full[at..at + c], "row {k} of window {seq}");
                    } else {
                        assert!(live[at..at + c].iter().all(|&v| v == 0.0), "padded row {k} of window {seq}");
                    }
                }
            }
            assert_eq!(real, h * w);
        }
    }

    #[test]
    fn attention_matches_candle_on_both_paths() {
        // N = 64: one block of rows, two sequences; N = 289: a full 256-row block and a
        // partial one.
        for (seqs, w) in [(2, 8), (1, 17)] {
            let n = w * w;
            let s = AttnShape { seqs, n, heads: 3, head_dim: 8, scale: 0.35 };
            let qkv: Vec<f32> = seeded(seqs * n * 3 * 24, 3).iter().map(|v| v * 3.0).collect();
            let table = seeded(3 * (2 * w - 1) * (2 * w - 1), 4);
            let dense = expanded(&table, 3, w);
            for (b, d) in [(None, None), (Some(RelBias { table: &table, window: w }), Some(&dense[..]))] {
                let want = attention_candle(&qkv, d, s);
                for path in [Path::Best, Path::Portable] {
                    rel_close(&attention(&qkv, b, None, s, path), &want, 2e-6);
                }
            }
        }
    }
}
