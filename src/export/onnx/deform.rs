//! Multi-scale deformable attention (`MSDeformAttn` of upstream's `ops/modules/
//! ms_deform_attn.py`, sampled as in `ops/functions/ms_deform_attn_func.py`
//! `ms_deform_attn_core_pytorch`) in two standard-op formulations:
//!
//! - `GridSample`: one float32 `GridSample` (bilinear, zero padding, align_corners=0) per
//!   level, exactly upstream's pure-PyTorch path;
//! - `Gather`: the four bilinear taps of every sampling point computed with Floor, clamped
//!   flat indices and validity masks, one `Gather` of value rows for all levels, and one
//!   batched MatMul with the attention × bilinear weights.
//!
//! Every ViT-CoMer deformable attention reads the three stride-8/16/32 levels with the
//! queries' own positions as reference points, so the reference points, spatial shapes and
//! level start indices are constants here.

use super::OnnxError;
use super::builder::{Graph, attr_i, attr_s};
use super::layers::Levels;

/// How the bilinear sampling of deformable attention is expressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Deform {
    /// float32 `GridSample` per level (upstream's pure-PyTorch formulation).
    GridSample,
    /// Floor/Gather/weights: the four bilinear taps as one flat `Gather` + MatMul.
    Gather,
}

impl Deform {
    /// The name `--deform` takes.
    pub fn name(self) -> &'static str {
        match self {
            Deform::GridSample => "grid-sample",
            Deform::Gather => "gather",
        }
    }
}

/// Shape of one deformable attention.
pub struct DeformSpec {
    pub heads: usize,
    pub points: usize,
    pub levels: Levels,
}

/// Reference points of `get_reference_points` for the three levels: (Lq, 2) as (x, y).
fn reference_points(lv: Levels) -> Vec<f32> {
    let mut out = Vec::with_capacity(lv.total() * 2);
    for l in 0..3 {
        let (h, w) = lv.grid(l);
        for i in 0..h {
            for j in 0..w {
                out.push((j as f32 + 0.5) / w as f32);
                out.push((i as f32 + 0.5) / h as f32);
            }
        }
    }
    out
}

impl Graph<'_> {
    /// `MSDeformAttn(query, reference_points, feat, ...)` under weight prefix `key`, for
    /// query and feat both of the three-level token layout (B, Ltot, C).
    pub fn ms_deform_attn(&mut self, query: &str, feat: &str, key: &str, s: &DeformSpec, how: Deform) -> Result<String, OnnxError> {
        let lv = s.levels;
        let (b, m, p, nl) = (lv.b, s.heads, s.points, 3usize);
        let lq = lv.total();
        let vdim = self.weights.get(&format!("{key}.value_proj.bias"), None)?.0[0];
        if vdim % m != 0 {
            return Err(self.node_error("Reshape", format!("value dim {vdim} is not a multiple of {m} heads")));
        }
        let d = vdim / m;
        let off_rows = self.weights.get(&format!("{key}.sampling_offsets.bias"), None)?.0[0];
        if off_rows != m * nl * p * 2 {
            return Err(self.node_error(
                "Reshape",
                format!("sampling_offsets has {off_rows} rows, expected heads·levels·points·2 = {}", m * nl * p * 2),
            ));
        }
        let value = self.linear(feat, &format!("{key}.value_proj"))?; // (B, Lin, M·D)
        let off = self.linear(query, &format!("{key}.sampling_offsets"))?;
        let aw = self.linear(query, &format!("{key}.attention_weights"))?;
        // The sampling (locations, softmax, bilinear taps, weighted sum) in float32 whatever
        // the graph's dtype: float16 locations would move a point by up to 1/2048 of the map.
        let [value, off, aw]: [String; 3] = self.enter_f32(&[&value, &off, &aw]).try_into().expect("three inputs");
        let off = self.reshape(&off, &[b, lq, m, nl, p, 2]); // (B, Lq, M, L, P, 2)
        let aw = self.reshape(&aw, &[b, lq, m, nl * p]); // (B, Lq, M, L·P)
        let aw = self.op("Softmax", &[&aw], vec![attr_i("axis", -1)]);
        let aw = self.reshape(&aw, &[b, lq, m, nl, p]); // (B, Lq, M, L, P)

        let refp = self.const_f32(&[1, lq, 1, 1, 1, 2], &reference_points(lv));
        let mut norm = Vec::new();
        for l in 0..nl {
            let (h, w) = lv.grid(l);
            norm.extend([w as f32, h as f32]);
        }
        let normc = self.const_f32(&[1, 1, 1, nl, 1, 2], &norm);
        let scaled = self.div(&off, &normc);
        let loc = self.add(&refp, &scaled); // (B, Lq, M, L, P, 2) in [0, 1]
        let two = self.scalar(2.0);
        let one = self.scalar(1.0);
        let g2 = self.mul(&loc, &two);
        let grid = self.sub(&g2, &one); // grid_sample coordinates in [-1, 1]

        let out = match how {
            Deform::GridSample => self.sample_grid_sample(&value, &grid, &aw, s, d),
            Deform::Gather => self.sample_gather(&value, &grid, &normc, &aw, s, d),
        }; // (B, Lq, M·D)
        let out = self.leave_f32(&out);
        self.linear(&out, &format!("{key}.output_proj"))
    }

    fn sample_grid_sample(&mut self, value: &str, grid: &str, aw: &str, s: &DeformSpec, d: usize) -> String {
        let lv = s.levels;
        let (b, m, p) = (lv.b, s.heads, s.points);
        let lq = lv.total();
        // Per level: sample, weight by that level's attention and reduce over points, so the
        // (B·M, D, Lq, L·P) stack of upstream's torch.stack never has to be materialised.
        let a = self.transpose(aw, &[0, 2, 1, 3, 4]); // (B, M, Lq, L, P)
        let axes = self.const_i64(&[-1]);
        let mut per_level = Vec::new();
        for l in 0..3 {
            let (h, w) = lv.grid(l);
            let v = self.slice(value, 1, lv.start(l), lv.start(l) + lv.len(l)); // (B, HW, M·D)
            let v = self.transpose(&v, &[0, 2, 1]); // (B, M·D, HW)
            let v = self.reshape(&v, &[b * m, d, h, w]); // (B·M, D, H, W)
            let g = self.pick(grid, 3, l as i64); // (B, Lq, M, P, 2)
            let g = self.transpose(&g, &[0, 2, 1, 3, 4]); // (B, M, Lq, P, 2)
            let g = self.reshape(&g, &[b * m, lq, p, 2]); // (B·M, Lq, P, 2)
            let sampled = self.op(
                "GridSample",
                &[&v, &g],
                vec![attr_s("mode", "bilinear"), attr_s("padding_mode", "zeros"), attr_i("align_corners", 0)],
            ); // (B·M, D, Lq, P)
            let al = self.pick(&a, 3, l as i64); // (B, M, Lq, P)
            let al = self.reshape(&al, &[b * m, 1, lq, p]); // (B·M, 1, Lq, P)
            let prod = self.mul(&sampled, &al);
            per_level.push(self.op("ReduceSum", &[&prod, &axes], vec![attr_i("keepdims", 0)])); // (B·M, D, Lq)
        }
        let refs: Vec<&str> = per_level.iter().map(|x| x.as_str()).collect();
        let summed = self.op("Sum", &refs, vec![]); // (B·M, D, Lq)
        let o = self.reshape(&summed, &[b, m * d, lq]); // (B, M·D, Lq)
        self.transpose(&o, &[0, 2, 1]) // (B, Lq, M·D)
    }

    fn sample_gather(&mut self, value: &str, grid: &str, normc: &str, aw: &str, s: &DeformSpec, d: usize) -> String {
        let lv = s.levels;
        let (b, m, p, nl) = (lv.b, s.heads, s.points, 3usize);
        let lq = lv.total();
        let lin = lv.total();
        // grid_sample's unnormalisation (align_corners=False): ((g + 1)·size − 1) / 2.
        let one = self.scalar(1.0);
        let half = self.scalar(0.5);
        let g1 = self.add(grid, &one);
        let gs = self.mul(&g1, normc);
        let gm = self.sub(&gs, &one);
        let pix = self.mul(&gm, &half); // (B, Lq, M, L, P, 2) pixel coordinates
        let f0 = self.op("Floor", &[&pix], vec![]);
        let frac = self.sub(&pix, &f0);
        let split = |g: &mut Self, t: &str, i: i64| {
            let c = g.pick(t, 5, i); // (B, Lq, M, L, P)
            g.unsqueeze(&c, 5) // (B, Lq, M, L, P, 1)
        };
        let x0 = split(self, &f0, 0);
        let y0 = split(self, &f0, 1);
        let fx = split(self, &frac, 0);
        let fy = split(self, &frac, 1);
        // The four taps (x0,y0), (x0+1,y0), (x0,y0+1), (x0+1,y0+1) on a last axis of 4.
        let dx = [0f32, 1., 0., 1.];
        let dy = [0f32, 0., 1., 1.];
        let tap = |g: &mut Self, base: &str, frac: &str, dv: &[f32; 4], size_m1: &[f32]| {
            let dc = g.const_f32(&[4], dv);
            let a: Vec<f32> = dv.iter().map(|v| 1.0 - v).collect();
            let bb: Vec<f32> = dv.iter().map(|v| 2.0 * v - 1.0).collect();
            let ac = g.const_f32(&[4], &a);
            let bc = g.const_f32(&[4], &bb);
            let coord = g.add(base, &dc); // (B, Lq, M, L, P, 4)
            let t = g.mul(frac, &bc);
            let weight = g.add(&ac, &t); // 1 − f or f
            let zero = g.scalar(0.0);
            let hi = g.const_f32(&[1, 1, 1, 3, 1, 1], size_m1);
            let lo = g.op("Max", &[&coord, &zero], vec![]);
            let clamped = g.op("Min", &[&lo, &hi], vec![]);
            let inside = g.op("Equal", &[&clamped, &coord], vec![]);
            let inside = g.op("Cast", &[&inside], vec![attr_i("to", 1)]);
            let weight = g.mul(&weight, &inside);
            (clamped, weight)
        };
        let wm1: Vec<f32> = (0..nl).map(|l| lv.grid(l).1 as f32 - 1.0).collect();
        let hm1: Vec<f32> = (0..nl).map(|l| lv.grid(l).0 as f32 - 1.0).collect();
        let (cx, wx) = tap(self, &x0, &fx, &dx, &wm1);
        let (cy, wy) = tap(self, &y0, &fy, &dy, &hm1);
        let wxy = self.mul(&wx, &wy);
        let a = self.unsqueeze(aw, 5); // (B, Lq, M, L, P, 1)
        let weight = self.mul(&wxy, &a); // (B, Lq, M, L, P, 4)
        let weight = self.reshape(&weight, &[b, lq, m, 1, nl * p * 4]); // (B, Lq, M, 1, K)
        // Flat row index into value viewed as (B·Lin·M, D): ((b·Lin + tok)·M + m).
        let widths: Vec<f32> = (0..nl).map(|l| lv.grid(l).1 as f32).collect();
        let starts: Vec<f32> = (0..nl).map(|l| lv.start(l) as f32).collect();
        let wc = self.const_f32(&[1, 1, 1, 3, 1, 1], &widths);
        let sc = self.const_f32(&[1, 1, 1, 3, 1, 1], &starts);
        let row = self.mul(&cy, &wc);
        let tok = self.add(&row, &cx);
        let tok = self.add(&tok, &sc);
        let tok = self.op("Cast", &[&tok], vec![attr_i("to", 7)]); // int64 token index
        let mc = self.const_i64_shaped(&[], &[m as i64]);
        let tok = self.mul(&tok, &mc);
        let mut base = Vec::with_capacity(b * m);
        for bi in 0..b {
            for mi in 0..m {
                base.push((bi * lin * m + mi) as i64);
            }
        }
        let basec = self.const_i64_shaped(&[b, 1, m, 1, 1, 1], &base);
        let idx = self.add(&tok, &basec); // (B, Lq, M, L, P, 4)
        let idx = self.reshape(&idx, &[b, lq, m, nl * p * 4]); // (B, Lq, M, K)
        let flat = self.reshape(value, &[b * lin * m, d]); // (B·Lin·M, D)
        let taps = self.op("Gather", &[&flat, &idx], vec![attr_i("axis", 0)]); // (B, Lq, M, K, D)
        let out = self.matmul(&weight, &taps); // (B, Lq, M, 1, D)
        self.reshape(&out, &[b, lq, m * d]) // (B, Lq, M·D)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_points_are_pixel_centres() {
        let lv = Levels { b: 1, h: 2, w: 2 };
        let r = reference_points(lv);
        assert_eq!(r.len(), 21 * 2);
        assert_eq!(&r[..4], &[0.125, 0.125, 0.375, 0.125]);
        assert_eq!(&r[r.len() - 2..], &[0.5, 0.5]);
    }
}
