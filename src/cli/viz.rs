//! False-colour PCA rendering of the output pyramid for `comer-port run --viz`: per level,
//! the top three principal components of the channel vectors mapped to RGB (each component
//! min-max scaled), the four levels upscaled (nearest) to the stride-4 size, side by side.

use candle_core::Tensor;

/// Top-`k` eigenvectors of a symmetric `d×d` matrix by power iteration with deflation.
fn top_eigenvectors(cov: &mut [f64], d: usize, k: usize) -> Vec<Vec<f64>> {
    let mut vecs = Vec::new();
    for comp in 0..k {
        let mut v: Vec<f64> = (0..d).map(|i| 1.0 + ((i * 7 + comp * 13) % 11) as f64 * 0.1).collect();
        let mut lambda = 0.0;
        for _ in 0..100 {
            let mut nv = vec![0f64; d];
            for i in 0..d {
                nv[i] = (0..d).map(|j| cov[i * d + j] * v[j]).sum();
            }
            let norm = nv.iter().map(|x| x * x).sum::<f64>().sqrt();
            if norm == 0.0 {
                break;
            }
            lambda = norm;
            v = nv.into_iter().map(|x| x / norm).collect();
        }
        for i in 0..d {
            for j in 0..d {
                cov[i * d + j] -= lambda * v[i] * v[j];
            }
        }
        vecs.push(v);
    }
    vecs
}

/// One level (1, D, H, W) of the first image → RGB bytes (H, W, 3).
fn level_rgb(f: &Tensor) -> anyhow::Result<(Vec<u8>, usize, usize)> {
    let (_, d, h, w) = f.dims4()?;
    let v = f.get(0)?.flatten_all()?.to_vec1::<f32>()?; // (D, H·W)
    let n = h * w;
    let mean: Vec<f64> = (0..d).map(|c| v[c * n..(c + 1) * n].iter().map(|&x| x as f64).sum::<f64>() / n as f64).collect();
    // Centred channels, then the upper triangle of the covariance, a row per task: each
    // dot product is summed in f32 lanes over 256-element blocks and the blocks in f64,
    // the same order on any number of threads (the PNG is byte-identical everywhere).
    // D²/2·HW multiply-adds: 10 G for a 1024-channel stride-4 level of a 640×480 image,
    // 16 s as scalar f64 sums, well under a second like this.
    let centred: Vec<f32> = (0..d)
        .flat_map(|c| {
            let m = mean[c];
            v[c * n..(c + 1) * n].iter().map(move |&x| (x as f64 - m) as f32)
        })
        .collect();
    let dot = |a: &[f32], b: &[f32]| -> f64 {
        a.chunks(256)
            .zip(b.chunks(256))
            .map(|(x, y)| {
                let mut acc = [0f32; 16];
                let (xc, yc) = (x.chunks_exact(16), y.chunks_exact(16));
                let (xr, yr) = (xc.remainder(), yc.remainder());
                for (p, q) in xc.zip(yc) {
                    for l in 0..16 {
                        acc[l] += p[l] * q[l];
                    }
                }
                let tail: f32 = xr.iter().zip(yr).map(|(p, q)| p * q).sum();
                acc.iter().map(|&a| a as f64).sum::<f64>() + tail as f64
            })
            .sum()
    };
    use rayon::prelude::*;
    let upper: Vec<Vec<f64>> = (0..d)
        .into_par_iter()
        .map(|i| (i..d).map(|j| dot(&centred[i * n..(i + 1) * n], &centred[j * n..(j + 1) * n]) / n as f64).collect())
        .collect();
    let mut cov = vec![0f64; d * d];
    for (i, row) in upper.iter().enumerate() {
        for (k, &c) in row.iter().enumerate() {
            cov[i * d + i + k] = c;
            cov[(i + k) * d + i] = c;
        }
    }
    let comps = top_eigenvectors(&mut cov, d, 3);
    let mut rgb = vec![0u8; n * 3];
    for (k, e) in comps.iter().enumerate() {
        // Channel by channel over contiguous rows (the same sums, in channel order, per pixel).
        let mut proj = vec![0f64; n];
        for c in 0..d {
            for (acc, &x) in proj.iter_mut().zip(&centred[c * n..(c + 1) * n]) {
                *acc += x as f64 * e[c];
            }
        }
        let (lo, hi) = proj.iter().fold((f64::MAX, f64::MIN), |(a, b), &x| (a.min(x), b.max(x)));
        let span = if hi > lo { hi - lo } else { 1.0 };
        for p in 0..n {
            rgb[p * 3 + k] = ((proj[p] - lo) / span * 255.0).round() as u8;
        }
    }
    Ok((rgb, h, w))
}

/// PNG bytes of the four levels side by side, each at the stride-4 size.
pub fn pyramid_png(f: &[Tensor; 4]) -> anyhow::Result<Vec<u8>> {
    let (_, _, h1, w1) = f[0].dims4()?;
    let width = 4 * w1;
    let mut canvas = vec![0u8; h1 * width * 3];
    for (li, level) in f.iter().enumerate() {
        let (rgb, h, w) = level_rgb(level)?;
        for y in 0..h1 {
            for x in 0..w1 {
                let (sy, sx) = (y * h / h1, x * w / w1);
                let o = (y * width + li * w1 + x) * 3;
                canvas[o..o + 3].copy_from_slice(&rgb[(sy * w + sx) * 3..][..3]);
            }
        }
    }
    let mut bytes = Vec::new();
    let img = image::RgbImage::from_raw(width as u32, h1 as u32, canvas)
        .ok_or_else(|| anyhow::anyhow!("viz: canvas size mismatch"))?;
    img.write_to(&mut std::io::Cursor::new(&mut bytes), image::ImageFormat::Png)?;
    Ok(bytes)
}
