//! Numeric transforms applied to source tensors on the way into a target layout: the
//! position-table, relative-position-table and patch-kernel resizes of the mappings' closed
//! set, on top of [`crate::model::resize`] (PyTorch's `F.interpolate`, computed in f64 and
//! returned as f32). Mirrors timm `resample_abs_pos_embed`, the Co-DETR branch BEiT
//! loader's relative-position table resize (`mmdet/models/backbones/base/beit.py`), unilm
//! BEiT's geometric-progression spline resize of those tables (its checkpoint loaders),
//! upstream's `convert_14to16` patch-kernel resize and timm `resample_patch_embed`.

use crate::model::resize::{self, Layout};
use crate::model::vit::relpos_table_side;

/// A position table `(prefix + gh·gw, D)`: keep the first `keep` prefix rows, drop the
/// other prefix rows, resize the grid bicubically to `dst`. Returns `(keep + oh·ow, D)`.
pub fn resize_pos_embed(
    table: &[f32],
    dim: usize,
    prefix: usize,
    keep: usize,
    src: (usize, usize),
    dst: (usize, usize),
) -> Vec<f32> {
    let grid = &table[prefix * dim..(prefix + src.0 * src.1) * dim];
    let mut out = table[..keep * dim].to_vec();
    out.extend(resize::bicubic(grid, dim, Layout::Rows, src, dst));
    out
}

/// A BEiT relative-position table `(rows, heads)`: drop the 3 cls rows when present and
/// resize the (2w−1)² grid to (2w'−1)² bicubically (the Co-DETR branch loader).
pub fn resize_relpos_bicubic(table: &[f32], heads: usize, dst_window: usize) -> Result<Vec<f32>, String> {
    let rows = table.len() / heads.max(1);
    let side = relpos_table_side(rows).ok_or_else(|| format!("{rows} rows is neither (2w-1)^2 nor (2w-1)^2+3"))?;
    let grid = &table[..side * side * heads];
    let dst = 2 * dst_window - 1;
    Ok(resize::bicubic(grid, heads, Layout::Rows, (side, side), (dst, dst)))
}

/// Weights (n_out × n_in, row-major) of the not-a-knot cubic interpolating spline through
/// knots `x` evaluated at `xs` (clamped to [x₀, xₙ₋₁] as FITPACK's `fpbisp` does). The spline
/// is linear in the data, so row r holds the weights of every data value for `xs[r]`.
/// Equal to scipy `RectBivariateSpline(kx=3, ky=3, s=0)` along one axis.
pub fn not_a_knot_weights(x: &[f64], xs: &[f64]) -> Vec<f64> {
    let n = x.len();
    let mut w = vec![0.0; xs.len() * n];
    if n < 4 {
        // Too few knots for a cubic: linear interpolation.
        for (r, &v) in xs.iter().enumerate() {
            let v = v.clamp(x[0], x[n - 1]);
            let i = (0..n - 1).find(|&i| v <= x[i + 1]).unwrap_or(n.saturating_sub(2));
            let h = x[i + 1] - x[i];
            let t = if h > 0.0 { (v - x[i]) / h } else { 0.0 };
            w[r * n + i] += 1.0 - t;
            w[r * n + i + 1] += t;
        }
        return w;
    }
    let h: Vec<f64> = (0..n - 1).map(|i| x[i + 1] - x[i]).collect();
    // Second derivatives M = A⁻¹ B y; solve A M = B e_j for every unit vector e_j.
    let mut a = vec![0.0; n * n];
    let mut b = vec![0.0; n * n];
    a[0] = h[1];
    a[1] = -(h[0] + h[1]);
    a[2] = h[0];
    for i in 1..n - 1 {
        a[i * n + i - 1] = h[i - 1];
        a[i * n + i] = 2.0 * (h[i - 1] + h[i]);
        a[i * n + i + 1] = h[i];
        b[i * n + i + 1] = 6.0 / h[i];
        b[i * n + i] = -6.0 / h[i] - 6.0 / h[i - 1];
        b[i * n + i - 1] = 6.0 / h[i - 1];
    }
    let l = (n - 1) * n;
    a[l + n - 3] = h[n - 2];
    a[l + n - 2] = -(h[n - 3] + h[n - 2]);
    a[l + n - 1] = h[n - 3];
    // Gaussian elimination with partial pivoting on [A | B].
    for c in 0..n {
        let p = (c..n).max_by(|&i, &j| a[i * n + c].abs().total_cmp(&a[j * n + c].abs())).unwrap_or(c);
        if p != c {
            for k in 0..n {
                a.swap(c * n + k, p * n + k);
                b.swap(c * n + k, p * n + k);
            }
        }
        let d = a[c * n + c];
        for r in 0..n {
            if r == c || a[r * n + c] == 0.0 {
                continue;
            }
            let f = a[r * n + c] / d;
            for k in 0..n {
                a[r * n + k] -= f * a[c * n + k];
                b[r * n + k] -= f * b[c * n + k];
            }
        }
    }
    for r in 0..n {
        let d = a[r * n + r];
        for k in 0..n {
            b[r * n + k] /= d;
        }
    }
    // b now maps data → second derivatives.
    for (r, &v) in xs.iter().enumerate() {
        let v = v.clamp(x[0], x[n - 1]);
        let i = (0..n - 1).find(|&i| v <= x[i + 1]).unwrap_or(n - 2);
        let hi = h[i];
        let (p, q) = (x[i + 1] - v, v - x[i]);
        let row = &mut w[r * n..(r + 1) * n];
        row[i] += p / hi;
        row[i + 1] += q / hi;
        let (ci, cj) = ((p * p * p / hi - hi * p) / 6.0, (q * q * q / hi - hi * q) / 6.0);
        for k in 0..n {
            row[k] += ci * b[i * n + k] + cj * b[(i + 1) * n + k];
        }
    }
    w
}

/// unilm BEiT's geometric relative-position resize: the source table's (2w−1)² grid (cls rows
/// dropped) sits on a geometric progression of offsets whose half-width reaches the target's
/// w'−1 (ratio found by bisection on [1.01, 1.5] to 1e-6, as unilm does), and a cubic
/// interpolating spline is evaluated on the target's integer offsets. Returns (2w'−1)² rows.
pub fn resize_relpos_geometric(table: &[f32], heads: usize, dst_window: usize) -> Result<Vec<f32>, String> {
    let rows = table.len() / heads.max(1);
    let src = relpos_table_side(rows).ok_or_else(|| format!("{rows} rows is neither (2w-1)^2 nor (2w-1)^2+3"))?;
    let dst = 2 * dst_window - 1;
    let gp = |r: f64, n: usize| (1.0 - r.powi(n as i32)) / (1.0 - r);
    let (mut lo, mut hi) = (1.01f64, 1.5f64);
    let mut q = 1.01;
    while hi - lo > 1e-6 {
        q = (lo + hi) / 2.0;
        if gp(q, src / 2) > (dst / 2) as f64 {
            hi = q;
        } else {
            lo = q;
        }
    }
    let mut dis = Vec::new();
    let mut cur = 1.0;
    for i in 0..src / 2 {
        dis.push(cur);
        cur += q.powi(i as i32 + 1);
    }
    let mut x: Vec<f64> = dis.iter().rev().map(|d| -d).collect();
    x.push(0.0);
    x.extend(&dis);
    let t = (dst / 2) as f64;
    let xs: Vec<f64> = (0..dst).map(|i| -t + i as f64).collect();
    let w = not_a_knot_weights(&x, &xs);
    let mut out = vec![0.0f32; dst * dst * heads];
    for hd in 0..heads {
        let z: Vec<f64> = (0..src * src).map(|i| table[i * heads + hd] as f64).collect();
        // Along x (columns) for every source row, then along y (rows).
        let mut tmp = vec![0.0; src * dst];
        for r in 0..src {
            for c in 0..dst {
                tmp[r * dst + c] = (0..src).map(|k| w[c * src + k] * z[r * src + k]).sum();
            }
        }
        for r in 0..dst {
            for c in 0..dst {
                let v: f64 = (0..src).map(|k| w[r * src + k] * tmp[k * dst + c]).sum();
                out[(r * dst + c) * heads + hd] = v as f32;
            }
        }
    }
    Ok(out)
}

/// SigLIP 2's patch Linear `(o, k·k·3)` (pixels flattened `(k, k, 3)`, its processor's
/// order) as a convolution kernel `(o, 3, k, k)`.
pub fn patch_linear_to_conv(w: &[f32], o: usize, k: usize) -> Vec<f32> {
    let mut out = vec![0.0f32; w.len()];
    for oc in 0..o {
        for y in 0..k {
            for x in 0..k {
                for ch in 0..3 {
                    out[((oc * 3 + ch) * k + y) * k + x] = w[((oc * k + y) * k + x) * 3 + ch];
                }
            }
        }
    }
    out
}

/// Patch-embedding kernel `(O, C, k, k)` resized to `(O, C, k', k')` with plain bilinear
/// interpolation (upstream's `convert_14to16`: `F.interpolate(w, size=16, mode="bilinear")`).
pub fn resize_patch_bilinear(w: &[f32], o: usize, c: usize, k: usize, k2: usize) -> Vec<f32> {
    resize::bilinear(w, o * c, Layout::Planes, (k, k), (k2, k2))
}

/// Patch-embedding kernel resized by timm's FlexiViT pseudo-inverse method
/// (`timm.layers.resample_patch_embed`): with M the (k'², k²) bicubic resize matrix (antialiased
/// bicubic, as timm builds it), the new kernel is pinv(Mᵀ)·k = M (MᵀM)⁻¹ k, so that
/// ⟨resized patch, new kernel⟩ = ⟨patch, old kernel⟩. Only upsampling (k' ≥ k) is supported.
pub fn resize_patch_pinv(w: &[f32], o: usize, c: usize, k: usize, k2: usize) -> Result<Vec<f32>, String> {
    if k2 < k {
        return Err(format!("pinv resize {k} -> {k2} downsamples (needs an antialiased matrix)"));
    }
    let (n, m) = (k * k, k2 * k2);
    // Column j of M: the bicubic resize of basis image e_j.
    let mut mat = vec![0.0f64; m * n];
    for j in 0..n {
        let mut e = vec![0.0f32; n];
        e[j] = 1.0;
        for (i, v) in resize::bicubic_aa_plane(&e, (k, k), (k2, k2)).into_iter().enumerate() {
            mat[i * n + j] = v;
        }
    }
    // G = MᵀM (n × n), inverted once by Gauss–Jordan.
    let mut g = vec![0.0f64; n * n];
    for a in 0..n {
        for b in 0..n {
            g[a * n + b] = (0..m).map(|i| mat[i * n + a] * mat[i * n + b]).sum();
        }
    }
    let mut inv = vec![0.0f64; n * n];
    for i in 0..n {
        inv[i * n + i] = 1.0;
    }
    for col in 0..n {
        let p = (col..n).max_by(|&i, &j| g[i * n + col].abs().total_cmp(&g[j * n + col].abs())).unwrap_or(col);
        for kk in 0..n {
            g.swap(col * n + kk, p * n + kk);
            inv.swap(col * n + kk, p * n + kk);
        }
        let d = g[col * n + col];
        if d.abs() < 1e-300 {
            return Err("resize matrix is singular".into());
        }
        for kk in 0..n {
            g[col * n + kk] /= d;
            inv[col * n + kk] /= d;
        }
        for r in 0..n {
            let f = g[r * n + col];
            if r == col || f == 0.0 {
                continue;
            }
            for kk in 0..n {
                g[r * n + kk] -= f * g[col * n + kk];
                inv[r * n + kk] -= f * inv[col * n + kk];
            }
        }
    }
    let mut out = Vec::with_capacity(o * c * m);
    for plane in w.chunks_exact(n).take(o * c) {
        let a: Vec<f64> = (0..n).map(|r| (0..n).map(|kk| inv[r * n + kk] * plane[kk] as f64).sum()).collect();
        for i in 0..m {
            out.push((0..n).map(|j| mat[i * n + j] * a[j]).sum::<f64>() as f32);
        }
    }
    Ok(out)
}

/// `cat(q_bias, zeros, v_bias)`: BEiT's q/v biases as the fused `qkv.bias` (k has none).
pub fn qv_bias_concat(q: &[f32], v: &[f32]) -> Vec<f32> {
    let mut out = Vec::with_capacity(q.len() * 3);
    out.extend_from_slice(q);
    out.extend(std::iter::repeat_n(0.0, q.len()));
    out.extend_from_slice(v);
    out
}

/// Transpose a 2-D (r, c) row-major matrix.
pub fn transpose2(x: &[f32], r: usize, c: usize) -> Vec<f32> {
    let mut out = vec![0.0; r * c];
    for i in 0..r {
        for j in 0..c {
            out[j * r + i] = x[i * c + j];
        }
    }
    out
}

/// HWIO → OIHW (Flax conv kernel to PyTorch).
pub fn hwio_to_oihw(x: &[f32], h: usize, w: usize, i: usize, o: usize) -> Vec<f32> {
    let mut out = vec![0.0; x.len()];
    for a in 0..h {
        for b in 0..w {
            for ci in 0..i {
                for co in 0..o {
                    out[((co * i + ci) * h + a) * w + b] = x[((a * w + b) * i + ci) * o + co];
                }
            }
        }
    }
    out
}
