//! `verify/resize.rs`: bicubic grid resize with PyTorch semantics, for position embeddings.
//!
//! Mirrors `torch.nn.functional.interpolate(mode="bicubic", align_corners=False,
//! antialias=False)` (aten `upsample_bicubic2d`: cubic convolution with A = -0.75, source
//! index `(dst + 0.5) * in / out - 0.5` left unclamped, taps clamped to the border), which is
//! what timm `resample_abs_pos_embed` and ViT-CoMer `_get_pos_embed` call.

/// The cubic-convolution coefficient PyTorch uses.
const CUBIC_A: f64 = -0.75;

/// Weights of the four taps at `floor(src) - 1 ..= floor(src) + 2` for fractional part `t`.
fn cubic_weights(t: f64) -> [f64; 4] {
    let a = CUBIC_A;
    let near = |x: f64| ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0;
    let far = |x: f64| ((a * x - 5.0 * a) * x + 8.0 * a) * x - 4.0 * a;
    [far(t + 1.0), near(t), near(1.0 - t), far(2.0 - t)]
}

/// For each output index: the four clamped source indices and their weights.
fn taps(n_in: usize, n_out: usize) -> Vec<([usize; 4], [f64; 4])> {
    let scale = n_in as f64 / n_out as f64;
    let last = n_in as i64 - 1;
    (0..n_out)
        .map(|o| {
            let src = (o as f64 + 0.5) * scale - 0.5;
            let i0 = src.floor();
            let w = cubic_weights(src - i0);
            let i0 = i0 as i64;
            let idx = [-1i64, 0, 1, 2].map(|d| (i0 + d).clamp(0, last) as usize);
            (idx, w)
        })
        .collect()
}

/// Resize `src`, laid out `(C, in_h, in_w)` row-major, to `(C, out_h, out_w)`.
/// Sizes equal to the input return the input unchanged (PyTorch copies in that case too).
pub fn bicubic_resize(
    src: &[f32],
    channels: usize,
    (in_h, in_w): (usize, usize),
    (out_h, out_w): (usize, usize),
) -> Vec<f32> {
    if (in_h, in_w) == (out_h, out_w) {
        return src.to_vec();
    }
    let ty = taps(in_h, out_h);
    let tx = taps(in_w, out_w);
    let mut out = Vec::with_capacity(channels * out_h * out_w);
    for c in 0..channels {
        let plane = &src[c * in_h * in_w..(c + 1) * in_h * in_w];
        for (iy, wy) in &ty {
            for (ix, wx) in &tx {
                let mut acc = 0.0f64;
                for (yy, wyy) in iy.iter().zip(wy) {
                    let row = &plane[yy * in_w..(yy + 1) * in_w];
                    let mut r = 0.0f64;
                    for (xx, wxx) in ix.iter().zip(wx) {
                        r += f64::from(row[*xx]) * wxx;
                    }
                    acc += r * wyy;
                }
                out.push(acc as f32);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_sum_to_one() {
        for t in [0.0, 0.25, 0.5, 0.9] {
            let s: f64 = cubic_weights(t).iter().sum();
            assert!((s - 1.0).abs() < 1e-12);
        }
    }

    #[test]
    fn identity_and_constant() {
        let src: Vec<f32> = (0..16).map(|i| i as f32).collect();
        assert_eq!(bicubic_resize(&src, 1, (4, 4), (4, 4)), src);
        let ones = vec![2.5f32; 2 * 16];
        let out = bicubic_resize(&ones, 2, (4, 4), (6, 8));
        assert_eq!(out.len(), 2 * 48);
        assert!(out.iter().all(|v| (v - 2.5).abs() < 1e-6));
    }

    #[test]
    fn matches_torch_upsample_1d_row() {
        // torch.nn.functional.interpolate(torch.arange(4.).view(1,1,1,4), size=(1,8),
        // mode="bicubic", align_corners=False)
        let src = [0.0f32, 1.0, 2.0, 3.0];
        let out = bicubic_resize(&src, 1, (1, 4), (1, 8));
        let exp = [
            -0.105469, 0.191406, 0.667969, 1.296875, 1.703125, 2.332031, 2.808594, 3.105469,
        ];
        for (o, e) in out.iter().zip(exp) {
            assert!((o - e).abs() < 1e-5, "{out:?}");
        }
    }
}
