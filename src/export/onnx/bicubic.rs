//! Bicubic resize of the position-embedding grid, computed at export time: PyTorch's
//! `F.interpolate(mode='bicubic', align_corners=False)` (A = −0.75, source index
//! `(dst + 0.5)·in/out − 0.5`, taps clamped at the borders), as upstream's `_get_pos_embed`
//! in `vit_comer.py`/`beit_comer.py` runs it. Private to the exporter for now.

const A: f64 = -0.75;

fn cubic1(x: f64) -> f64 {
    ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
}

fn cubic2(x: f64) -> f64 {
    ((A * x - 5.0 * A) * x + 8.0 * A) * x - 4.0 * A
}

/// Per output index: the four clamped source indices and their weights.
fn taps(inp: usize, out: usize) -> Vec<([usize; 4], [f64; 4])> {
    let scale = inp as f64 / out as f64;
    (0..out)
        .map(|o| {
            let real = scale * (o as f64 + 0.5) - 0.5;
            let i0 = real.floor();
            let t = real - i0;
            let w = [cubic2(t + 1.0), cubic1(t), cubic1(1.0 - t), cubic2(2.0 - t)];
            let idx = [-1i64, 0, 1, 2].map(|k| (i0 as i64 + k).clamp(0, inp as i64 - 1) as usize);
            (idx, w)
        })
        .collect()
}

/// Resize a (gh, gw, C) grid (row-major, channels last) to (oh, ow, C).
pub fn resize(grid: &[f32], gh: usize, gw: usize, c: usize, oh: usize, ow: usize) -> Vec<f32> {
    if gh == oh && gw == ow {
        return grid.to_vec();
    }
    let ty = taps(gh, oh);
    let tx = taps(gw, ow);
    let mut out = vec![0f32; oh * ow * c];
    for (y, (iy, wy)) in ty.iter().enumerate() {
        for (x, (ix, wx)) in tx.iter().enumerate() {
            for ch in 0..c {
                let mut acc = 0f64;
                for a in 0..4 {
                    let mut row = 0f64;
                    for bb in 0..4 {
                        row += wx[bb] * grid[(iy[a] * gw + ix[bb]) * c + ch] as f64;
                    }
                    acc += wy[a] * row;
                }
                out[(y * ow + x) * c + ch] = acc as f32;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_size_is_identity_and_constant_stays_constant() {
        let g: Vec<f32> = (0..12).map(|v| v as f32).collect();
        assert_eq!(resize(&g, 2, 3, 2, 2, 3), g);
        let c = vec![1.5f32; 16];
        for v in resize(&c, 4, 4, 1, 6, 8) {
            assert!((v - 1.5).abs() < 1e-6);
        }
    }
}
