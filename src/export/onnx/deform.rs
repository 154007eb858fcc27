//! Multi-scale deformable attention (`MSDeformAttn` of upstream's `ops/modules/
//! ms_deform_attn.py`, sampled as in `ops/functions/ms_deform_attn_func.py`
//! `ms_deform_attn_core_pytorch`) in three standard-op formulations:
//!
//! - `GridSample`: one float32 `GridSample` (bilinear, zero padding, align_corners=0) per
//!   level, exactly upstream's pure-PyTorch path;
//! - `Gather`: the four bilinear taps of every sampling point computed with Floor, clamped
//!   flat indices and validity masks, one `Gather` of value rows for all levels, and one
//!   batched MatMul with the attention × bilinear weights;
//! - `DeformConv` (opset 19): per level one depthwise `DeformConv` whose kernel is the P
//!   points of every head (weight 1, offset group = head, mask = the attention weights),
//!   the queries laid out on a (OH, OW) output grid. In ONNX Runtime 1.32 CPU one level of
//!   5376 queries × 6 heads × 64 channels × 4 points took 18 ms this way against 44 ms for
//!   `GridSample` + weighting + `ReduceSum` (2 threads); the default.
//!
//! Every ViT-CoMer deformable attention reads the three stride-8/16/32 levels with the
//! queries' own positions as reference points, so the reference points, spatial shapes and
//! level start indices are one [`Sampling`] per graph: constants for a fixed size, computed
//! from the input's shape for `--dynamic` (upstream's `deform_inputs`).

use super::OnnxError;
use super::builder::{Graph, attr_i, attr_ints, attr_s};
use super::dims::Dim;
use super::layers::Levels;

/// How the bilinear sampling of deformable attention is expressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Deform {
    /// float32 `GridSample` per level (upstream's pure-PyTorch formulation).
    GridSample,
    /// Floor/Gather/weights: the four bilinear taps as one flat `Gather` + MatMul.
    Gather,
    /// One depthwise `DeformConv` per level (opset 19), the attention weights as its mask.
    DeformConv,
}

impl Deform {
    /// The name `--deform` takes.
    pub fn name(self) -> &'static str {
        match self {
            Deform::GridSample => "grid-sample",
            Deform::Gather => "gather",
            Deform::DeformConv => "deform-conv",
        }
    }

    /// The opset a graph with this sampling needs: `DeformConv` came in opset 19.
    pub fn opset(self) -> i64 {
        match self {
            Deform::DeformConv => 19,
            Deform::GridSample | Deform::Gather => 17,
        }
    }
}

/// Shape of one deformable attention.
pub struct DeformSpec<'s> {
    pub heads: usize,
    pub points: usize,
    pub levels: &'s Levels,
    pub at: &'s Sampling,
}

/// The float32 tensors every deformable attention of a graph shares (built once, in a
/// float32 region).
pub struct Sampling {
    /// Reference points (1, Lq, 1, 1, 1, 2) as (x, y) in [0, 1].
    refp: String,
    /// Per level (w, h): (1, 1, 1, 3, 1, 2).
    normc: String,
    /// Per level width, height and first token, (1, 1, 1, 3, 1, 1) each: the `Gather`
    /// formulation's.
    levels: Option<[String; 3]>,
    /// The `DeformConv` formulation's query grid and offset shift.
    conv: Option<ConvGrid>,
}

/// Where `DeformConv` puts the queries: query q is output pixel (q / OW, q % OW) of an
/// OH × OW grid (OH = the stride-8 level's height, so every level's map fits under it
/// with zero padding; the last row is padded), and kernel point k of that pixel samples
/// at (oy, ox + k) plus its offset. The offsets are the pixel locations grid_sample
/// would use minus those bases.
struct ConvGrid {
    oh: Dim,
    ow: Dim,
    /// OH·OW − Lq padded query rows.
    pad: Dim,
    /// (L·M·P·2, Lq): what turns a query's sampling offsets (rows ordered level, head,
    /// point, (y, x)) into `DeformConv` offsets, ref·size − 0.5 − (ox + k, oy). Upstream
    /// samples at pixel loc·size − 0.5 with loc = ref + offset / size (grid_sample,
    /// align_corners=False): the same point.
    shift: String,
}

/// Reference points of `get_reference_points` for the three levels: (Lq, 2) as (x, y).
fn reference_points(lv: &Levels) -> Vec<f32> {
    let mut out = Vec::new();
    for l in 0..3 {
        let (h, w) = lv.grid(l);
        let (h, w) = (h.fixed().unwrap_or(0), w.fixed().unwrap_or(0));
        for i in 0..h {
            for j in 0..w {
                out.push((j as f32 + 0.5) / w as f32);
                out.push((i as f32 + 0.5) / h as f32);
            }
        }
    }
    out
}

impl Sampling {
    /// The shared tensors of `lv` for sampling `how`: constants when its sizes are fixed.
    pub fn new(g: &mut Graph, lv: &Levels, how: Deform, heads: usize, points: usize) -> Sampling {
        g.in_f32(|g| {
            let refp = if lv.total().fixed().is_some() {
                let pts = reference_points(lv);
                g.const_f32(&[1, pts.len() / 2, 1, 1, 1, 2], &pts)
            } else {
                let per: Vec<String> = (0..3).map(|l| level_reference_points(g, lv, l)).collect();
                let refs: Vec<&str> = per.iter().map(|s| s.as_str()).collect();
                let all = g.concat(&refs, 0); // (Lq, 2)
                g.reshape_i64(&all, &[1, -1, 1, 1, 1, 2]) // (1, Lq, 1, 1, 1, 2)
            };
            let grids: Vec<(Dim, Dim)> = (0..3).map(|l| lv.grid(l)).collect();
            let wh: Vec<Dim> = grids.iter().flat_map(|(h, w)| [w.clone(), h.clone()]).collect();
            let normc = g.floats_of(&wh, &[1, 1, 1, 3, 1, 2]);
            let levels = (how == Deform::Gather).then(|| {
                let level = [1, 1, 1, 3, 1, 1];
                let widths = g.floats_of(&grids.iter().map(|(_, w)| w.clone()).collect::<Vec<_>>(), &level);
                let heights = g.floats_of(&grids.iter().map(|(h, _)| h.clone()).collect::<Vec<_>>(), &level);
                let starts = g.floats_of(&(0..3).map(|l| lv.start(l)).collect::<Vec<_>>(), &level);
                [widths, heights, starts]
            });
            let conv = (how == Deform::DeformConv).then(|| conv_grid(g, lv, &refp, &normc, heads, points));
            Sampling { refp, normc, levels, conv }
        })
    }
}

/// The `DeformConv` query grid of `lv`: OH = 2h (the stride-8 level's height) and
/// OW = ⌈Lq / OH⌉ = ⌈21w/8⌉, since Lq = 4hw + hw + hw/4 (h, w: the stride-16 grid).
fn conv_grid(g: &mut Graph, lv: &Levels, refp: &str, normc: &str, m: usize, p: usize) -> ConvGrid {
    let (oh, _) = lv.grid(0);
    let (_, w) = lv.grid(1);
    let w21 = g.dim_mul(&w, &21.into());
    let w21 = g.dim_add(&w21, &7.into());
    let ow = g.dim_div(&w21, 8);
    let lq = lv.total();
    let all = g.dim_mul(&oh, &ow);
    let pad = g.dim_sub(&all, &lq);
    let base = match (lq.fixed(), ow.fixed()) {
        (Some(lq), Some(ow)) => {
            let mut v = Vec::with_capacity(lq * p * 2);
            for q in 0..lq {
                for k in 0..p {
                    v.push(((q % ow + k) as f64 + 0.5) as f32);
                    v.push(((q / ow) as f64 + 0.5) as f32);
                }
            }
            g.const_f32(&[1, lq, 1, 1, p, 2], &v)
        }
        _ => {
            let q = g.range(&lq); // (Lq,) int64
            let owt = g.dim_tensor(&ow);
            let oy = g.op("Div", &[&q, &owt], vec![]);
            let ox = g.op("Mod", &[&q, &owt], vec![]);
            let to_f = |g: &mut Graph, t: &str| {
                let t = g.op("Cast", &[t], vec![attr_i("to", super::proto::data_type::FLOAT as i64)]);
                g.reshape_i64(&t, &[-1, 1]) // (Lq, 1)
            };
            let (oy, ox) = (to_f(g, &oy), to_f(g, &ox));
            let ks: Vec<f32> = (0..p).map(|k| k as f32 + 0.5).collect();
            let ks = g.const_f32(&[1, p], &ks);
            let x = g.add(&ox, &ks); // (Lq, P)
            let half = g.scalar(0.5);
            let y = g.add(&oy, &half); // (Lq, 1)
            let lqp = g.shape_tensor(&[lq.clone(), p.into()]);
            let y = g.op("Expand", &[&y, &lqp], vec![]); // (Lq, P)
            let x = g.unsqueeze(&x, 2);
            let y = g.unsqueeze(&y, 2);
            let xy = g.concat(&[&x, &y], 2); // (Lq, P, 2)
            g.reshape_i64(&xy, &[1, -1, 1, 1, p as i64, 2]) // (1, Lq, 1, 1, P, 2)
        }
    }; // (1, Lq, 1, 1, P, 2): (ox + k, oy) + 0.5 as (x, y)
    let at = g.mul(refp, normc); // (1, Lq, 1, L, 1, 2): the reference point in pixels
    let shift = g.sub(&at, &base); // (1, Lq, 1, L, P, 2)
    let yx = g.const_i64(&[1, 0]);
    let shift = g.op("Gather", &[&shift, &yx], vec![attr_i("axis", 5)]); // (y, x): DeformConv's order
    let shift = g.reshape_to(&shift, &[lq.clone(), 3.into(), 1.into(), p.into(), 2.into()]); // (Lq, L, 1, P, 2)
    let shift = g.transpose(&shift, &[1, 2, 3, 4, 0]); // (L, 1, P, 2, Lq)
    let full = g.shape_tensor(&[3.into(), m.into(), p.into(), 2.into(), lq.clone()]);
    let shift = g.op("Expand", &[&shift, &full], vec![]); // (L, M, P, 2, Lq)
    let shift = g.reshape_to(&shift, &[(3 * m * p * 2).into(), lq]); // (L·M·P·2, Lq)
    ConvGrid { oh, ow, pad, shift }
}

/// Reference points of level `l` computed in the graph: (h·w, 2) rows ((j + 0.5)/w,
/// (i + 0.5)/h), as `get_reference_points` builds them with `linspace(0.5, H − 0.5, H)`.
fn level_reference_points(g: &mut Graph, lv: &Levels, l: usize) -> String {
    let (h, w) = lv.grid(l);
    let axis = |g: &mut Graph, n: &Dim| {
        let r = g.range(n); // (n,) int64: 0 .. n−1
        let r = g.op("Cast", &[&r], vec![attr_i("to", super::proto::data_type::FLOAT as i64)]);
        let half = g.scalar(0.5);
        let c = g.add(&r, &half);
        let nf = g.dim_f32(n);
        g.div(&c, &nf) // (n,)
    };
    let xs = axis(g, &w);
    let ys = axis(g, &h);
    let hw = g.shape_tensor(&[h, w]);
    let xs = g.unsqueeze(&xs, 0); // (1, w)
    let ys = g.unsqueeze(&ys, 1); // (h, 1)
    let x = g.op("Expand", &[&xs, &hw], vec![]); // (h, w)
    let y = g.op("Expand", &[&ys, &hw], vec![]); // (h, w)
    let x = g.reshape_i64(&x, &[-1, 1]); // (h·w, 1)
    let y = g.reshape_i64(&y, &[-1, 1]); // (h·w, 1)
    g.concat(&[&x, &y], 1) // (h·w, 2)
}

impl Graph<'_> {
    /// `MSDeformAttn(query, reference_points, feat, ...)` under weight prefix `key`, for
    /// query and feat both of the three-level token layout (B, Ltot, C).
    pub fn ms_deform_attn(&mut self, query: &str, feat: &str, key: &str, s: &DeformSpec, how: Deform) -> Result<String, OnnxError> {
        let (m, p, nl) = (s.heads, s.points, 3usize);
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
        match how {
            Deform::DeformConv => self.attn_by_deform_conv(query, feat, key, s, d),
            Deform::GridSample => self.attn_by_locations(query, feat, key, s, d, false),
            Deform::Gather => self.attn_by_locations(query, feat, key, s, d, true),
        }
    }

    /// The `DeformConv` formulation, value projection to output projection.
    fn attn_by_deform_conv(&mut self, query: &str, feat: &str, key: &str, s: &DeformSpec, d: usize) -> Result<String, OnnxError> {
        let (b, lq) = (&s.levels.b, s.levels.total());
        if b.fixed() == Some(1) {
            // One image: value channels first straight from its Gemm, and output_proj
            // reading the sampled channels-first result in place.
            let value = self.linear_to_channels(feat, &format!("{key}.value_proj"), None, b, &lq)?; // (1, M·D, Lin)
            let out = self.deform_conv_attn(query, &value, key, s, d, true)?; // (1, M·D, Lq)
            return self.linear_from_channels(&out, &format!("{key}.output_proj"), &lq);
        }
        let value = self.linear(feat, &format!("{key}.value_proj"))?; // (B, Lin, M·D)
        let out = self.deform_conv_attn(query, &value, key, s, d, false)?; // (B, Lq, M·D)
        self.linear(&out, &format!("{key}.output_proj"))
    }

    /// The `GridSample` and (with `gather`) `Gather` formulations: upstream's sampling
    /// locations in [0, 1], then the taps.
    fn attn_by_locations(&mut self, query: &str, feat: &str, key: &str, s: &DeformSpec, d: usize, gather: bool) -> Result<String, OnnxError> {
        let lv = s.levels;
        let (b, m, p, nl) = (lv.b.clone(), s.heads, s.points, 3usize);
        let lq = lv.total();
        let value = self.linear(feat, &format!("{key}.value_proj"))?; // (B, Lin, M·D)
        let off = self.linear(query, &format!("{key}.sampling_offsets"))?;
        let aw = self.linear(query, &format!("{key}.attention_weights"))?;
        // The sampling (locations, softmax, bilinear taps, weighted sum) in float32 whatever
        // the graph's dtype: float16 locations would move a point by up to 1/2048 of the map.
        let [value, off, aw]: [String; 3] = self.enter_f32(&[&value, &off, &aw]).try_into().expect("three inputs");
        let off = self.reshape_to(&off, &[b.clone(), lq.clone(), m.into(), nl.into(), p.into(), 2.into()]); // (B, Lq, M, L, P, 2)
        let aw = self.reshape_to(&aw, &[b.clone(), lq.clone(), m.into(), (nl * p).into()]); // (B, Lq, M, L·P)
        let aw = self.op("Softmax", &[&aw], vec![attr_i("axis", -1)]);
        let aw = self.reshape_to(&aw, &[b, lq, m.into(), nl.into(), p.into()]); // (B, Lq, M, L, P)

        let scaled = self.div(&off, &s.at.normc);
        let loc = self.add(&s.at.refp, &scaled); // (B, Lq, M, L, P, 2) in [0, 1]
        let two = self.scalar(2.0);
        let one = self.scalar(1.0);
        let g2 = self.mul(&loc, &two);
        let grid = self.sub(&g2, &one); // grid_sample coordinates in [-1, 1]

        let out = if gather {
            self.sample_gather(&value, &grid, &aw, s, d)?
        } else {
            self.sample_grid_sample(&value, &grid, &aw, s, d)
        }; // (B, Lq, M·D)
        let out = self.leave_f32(&out);
        self.linear(&out, &format!("{key}.output_proj"))
    }

    fn sample_grid_sample(&mut self, value: &str, grid: &str, aw: &str, s: &DeformSpec, d: usize) -> String {
        let lv = s.levels;
        let (m, p) = (s.heads, s.points);
        let lq = lv.total();
        let bm = self.dim_mul(&lv.b, &m.into());
        // Per level: sample, weight by that level's attention and reduce over points, so the
        // (B·M, D, Lq, L·P) stack of upstream's torch.stack never has to be materialised.
        let a = self.transpose(aw, &[0, 2, 1, 3, 4]); // (B, M, Lq, L, P)
        let axes = self.const_i64(&[-1]);
        let mut per_level = Vec::new();
        for l in 0..3 {
            let (h, w) = lv.grid(l);
            let v = self.slice_to(value, 1, &lv.start(l), &lv.start(l + 1)); // (B, HW, M·D)
            let v = self.transpose(&v, &[0, 2, 1]); // (B, M·D, HW)
            let v = self.reshape_to(&v, &[bm.clone(), d.into(), h, w]); // (B·M, D, H, W)
            let g = self.pick(grid, 3, l as i64); // (B, Lq, M, P, 2)
            let g = self.transpose(&g, &[0, 2, 1, 3, 4]); // (B, M, Lq, P, 2)
            let g = self.reshape_to(&g, &[bm.clone(), lq.clone(), p.into(), 2.into()]); // (B·M, Lq, P, 2)
            let sampled = self.op(
                "GridSample",
                &[&v, &g],
                vec![attr_s("mode", "bilinear"), attr_s("padding_mode", "zeros"), attr_i("align_corners", 0)],
            ); // (B·M, D, Lq, P)
            let al = self.pick(&a, 3, l as i64); // (B, M, Lq, P)
            let al = self.reshape_to(&al, &[bm.clone(), 1.into(), lq.clone(), p.into()]); // (B·M, 1, Lq, P)
            let prod = self.mul(&sampled, &al);
            per_level.push(self.op("ReduceSum", &[&prod, &axes], vec![attr_i("keepdims", 0)])); // (B·M, D, Lq)
        }
        let refs: Vec<&str> = per_level.iter().map(|x| x.as_str()).collect();
        let summed = self.op("Sum", &refs, vec![]); // (B·M, D, Lq)
        let o = self.reshape_to(&summed, &[lv.b.clone(), (m * d).into(), lq]); // (B, M·D, Lq)
        self.transpose(&o, &[0, 2, 1]) // (B, Lq, M·D)
    }

    /// The `DeformConv` formulation of `MSDeformAttn`'s sampling: `value` (B, Lin, M·D) →
    /// (B, Lq, M·D), or with `channels_first` (one image) (1, M·D, Lin) → (1, M·D, Lq); in
    /// the graph's dtype, before `output_proj`.
    fn deform_conv_attn(&mut self, query: &str, value: &str, key: &str, s: &DeformSpec, d: usize, channels_first: bool) -> Result<String, OnnxError> {
        let lv = s.levels;
        let Some(cg) = &s.at.conv else {
            return Err(self.node_error("DeformConv", "the graph's sampling tensors were not built for DeformConv".into()));
        };
        let (m, p, nl) = (s.heads, s.points, 3usize);
        let (b, lq, c) = (lv.b.clone(), lv.total(), m * d);
        // Offsets with rows (level, head, point, (y, x)) from upstream's (head, level, point,
        // (x, y)); attention logits in upstream's (head, level, point).
        let mut order = Vec::with_capacity(nl * m * p * 2);
        for l in 0..nl {
            for mi in 0..m {
                for k in 0..p {
                    for yx in 0..2 {
                        order.push(((mi * nl + l) * p + k) * 2 + (1 - yx));
                    }
                }
            }
        }
        let off = self.linear_to_channels(query, &format!("{key}.sampling_offsets"), Some(&order), &b, &lq)?; // (B, L·M·P·2, Lq)
        let aw = self.linear_to_channels(query, &format!("{key}.attention_weights"), None, &b, &lq)?; // (B, M·L·P, Lq)
        // The sampling (offsets, softmax, taps) in float32 whatever the graph's dtype.
        let [value, off, aw]: [String; 3] = self.enter_f32(&[value, &off, &aw]).try_into().expect("three inputs");
        let off = self.add(&off, &cg.shift); // DeformConv's offsets
        let aw = self.reshape_to(&aw, &[b.clone(), m.into(), (nl * p).into(), lq.clone()]); // (B, M, L·P, Lq)
        let aw = self.op("Softmax", &[&aw], vec![attr_i("axis", 2)]);
        let aw = self.reshape_to(&aw, &[b.clone(), m.into(), nl.into(), p.into(), lq.clone()]); // (B, M, L, P, Lq)
        let aw = self.transpose(&aw, &[0, 2, 1, 3, 4]); // (B, L, M, P, Lq)
        // Query columns padded to OH·OW, then made the OH × OW grid.
        let grid = |g: &mut Self, x: &str, ch: usize| -> String {
            let x = if cg.pad.fixed() == Some(0) {
                x.to_string()
            } else {
                let z: Dim = 0.into();
                let pads = g.shape_tensor(&[z.clone(), z.clone(), z.clone(), z.clone(), z, cg.pad.clone()]);
                let x = g.reshape_to(x, &[b.clone(), ch.into(), lq.clone()]);
                g.op("Pad", &[&x, &pads], vec![])
            };
            g.reshape_to(&x, &[b.clone(), ch.into(), cg.oh.clone(), cg.ow.clone()]) // (B, ch, OH, OW)
        };
        let off = grid(self, &off, nl * m * p * 2); // (B, L·M·P·2, OH, OW)
        let mask = grid(self, &aw, nl * m * p); // (B, L·M·P, OH, OW)
        // Depthwise: every channel its own group with weight 1 at each of the P points.
        let ones = self.init_f32(&format!("deform_conv_ones_{c}x{p}"), &[c, 1, 1, p], &vec![1.0; c * p]);
        let mut per_level = Vec::new();
        for l in 0..nl {
            let (h, w) = lv.grid(l);
            let v = self.level_map(&value, lv, l, c, channels_first); // (B, C, H, W)
            // The map zero-padded below and right to (OH, OW + P − 1), so the output grid is
            // OH × OW: in the node's pads when the sizes are known, else by a Pad.
            let wide = self.dim_add(&cg.ow, &(p - 1).into());
            let bottom = self.dim_sub(&cg.oh, &h);
            let right = self.dim_sub(&wide, &w);
            let (v, pads) = match (bottom.fixed(), right.fixed()) {
                (Some(pb), Some(pr)) => (v, vec![0, 0, pb as i64, pr as i64]),
                _ => {
                    let z: Dim = 0.into();
                    let pads = self.shape_tensor(&[z.clone(), z.clone(), z.clone(), z.clone(), z.clone(), z, bottom, right]);
                    (self.op("Pad", &[&v, &pads], vec![]), vec![0, 0, 0, 0])
                }
            };
            let (o0, o1) = (l * m * p * 2, (l + 1) * m * p * 2);
            let off_l = self.slice_to(&off, 1, &o0.into(), &o1.into()); // (B, M·P·2, OH, OW)
            let mask_l = self.slice_to(&mask, 1, &(l * m * p).into(), &((l + 1) * m * p).into()); // (B, M·P, OH, OW)
            per_level.push(self.op(
                "DeformConv",
                &[&v, &ones, &off_l, "", &mask_l],
                vec![
                    attr_ints("kernel_shape", &[1, p as i64]),
                    attr_i("group", c as i64),
                    attr_i("offset_group", m as i64),
                    attr_ints("pads", &pads),
                    attr_ints("strides", &[1, 1]),
                    attr_ints("dilations", &[1, 1]),
                ],
            )); // (B, C, OH, OW)
        }
        let refs: Vec<&str> = per_level.iter().map(|x| x.as_str()).collect();
        let summed = self.op("Sum", &refs, vec![]); // (B, C, OH, OW)
        let all = self.dim_mul(&cg.oh, &cg.ow);
        let o = self.reshape_to(&summed, &[b, c.into(), all]); // (B, C, OH·OW)
        let o = if cg.pad.fixed() == Some(0) { o } else { self.slice_to(&o, 2, &0.into(), &lq) }; // (B, C, Lq)
        let o = if channels_first { o } else { self.transpose(&o, &[0, 2, 1]) }; // (B, Lq, C)
        Ok(self.leave_f32(&o))
    }

    fn sample_gather(&mut self, value: &str, grid: &str, aw: &str, s: &DeformSpec, d: usize) -> Result<String, OnnxError> {
        let lv = s.levels;
        let Some([widths, heights, starts]) = &s.at.levels else {
            return Err(self.node_error("Gather", "the graph's sampling tensors were built for GridSample".into()));
        };
        let (m, p, nl) = (s.heads, s.points, 3usize);
        let lq = lv.total();
        // grid_sample's unnormalisation (align_corners=False): ((g + 1)·size − 1) / 2.
        let one = self.scalar(1.0);
        let half = self.scalar(0.5);
        let g1 = self.add(grid, &one);
        let gs = self.mul(&g1, &s.at.normc);
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
        let tap = |g: &mut Self, base: &str, frac: &str, dv: &[f32; 4], size: &str| {
            let dc = g.const_f32(&[4], dv);
            let a: Vec<f32> = dv.iter().map(|v| 1.0 - v).collect();
            let bb: Vec<f32> = dv.iter().map(|v| 2.0 * v - 1.0).collect();
            let ac = g.const_f32(&[4], &a);
            let bc = g.const_f32(&[4], &bb);
            let coord = g.add(base, &dc); // (B, Lq, M, L, P, 4)
            let t = g.mul(frac, &bc);
            let weight = g.add(&ac, &t); // 1 − f or f
            let zero = g.scalar(0.0);
            let one = g.scalar(1.0);
            let hi = g.sub(size, &one); // (1, 1, 1, 3, 1, 1): size − 1 per level
            let lo = g.op("Max", &[&coord, &zero], vec![]);
            let clamped = g.op("Min", &[&lo, &hi], vec![]);
            let inside = g.op("Equal", &[&clamped, &coord], vec![]);
            let inside = g.op("Cast", &[&inside], vec![attr_i("to", 1)]);
            let weight = g.mul(&weight, &inside);
            (clamped, weight)
        };
        let (cx, wx) = tap(self, &x0, &fx, &dx, widths);
        let (cy, wy) = tap(self, &y0, &fy, &dy, heights);
        let wxy = self.mul(&wx, &wy);
        let a = self.unsqueeze(aw, 5); // (B, Lq, M, L, P, 1)
        let weight = self.mul(&wxy, &a); // (B, Lq, M, L, P, 4)
        let k = nl * p * 4;
        let weight = self.reshape_to(&weight, &[lv.b.clone(), lq.clone(), m.into(), 1.into(), k.into()]); // (B, Lq, M, 1, K)
        // Flat row index into value viewed as (B·Lin·M, D): ((b·Lin + tok)·M + m).
        let row = self.mul(&cy, widths);
        let tok = self.add(&row, &cx);
        let tok = self.add(&tok, starts);
        let tok = self.op("Cast", &[&tok], vec![attr_i("to", 7)]); // int64 token index
        let mc = self.const_i64_shaped(&[], &[m as i64]);
        let tok = self.mul(&tok, &mc);
        let basec = self.gather_base(lv, m); // (B, 1, M, 1, 1, 1)
        let idx = self.add(&tok, &basec); // (B, Lq, M, L, P, 4)
        let idx = self.reshape_to(&idx, &[lv.b.clone(), lq.clone(), m.into(), k.into()]); // (B, Lq, M, K)
        let rows = self.dim_mul(&lv.b, &lq);
        let rows = self.dim_mul(&rows, &m.into());
        let flat = self.reshape_to(value, &[rows, d.into()]); // (B·Lin·M, D)
        let taps = self.op("Gather", &[&flat, &idx], vec![attr_i("axis", 0)]); // (B, Lq, M, K, D)
        let out = self.matmul(&weight, &taps); // (B, Lq, M, 1, D)
        Ok(self.reshape_to(&out, &[lv.b.clone(), lq, (m * d).into()])) // (B, Lq, M·D)
    }

    /// The first flat value row of each (batch, head): b·Lin·M + m, shaped (B, 1, M, 1, 1, 1).
    fn gather_base(&mut self, lv: &Levels, m: usize) -> String {
        let lin = lv.total();
        if let (Some(b), Some(lin)) = (lv.b.fixed(), lin.fixed()) {
            let mut base = Vec::with_capacity(b * m);
            for bi in 0..b {
                for mi in 0..m {
                    base.push((bi * lin * m + mi) as i64);
                }
            }
            return self.const_i64_shaped(&[b, 1, m, 1, 1, 1], &base);
        }
        let stride = self.dim_mul(&lin, &m.into());
        let stride = self.dim_tensor(&stride);
        let bs = self.range(&lv.b); // (B,)
        let bs = self.mul(&bs, &stride);
        let bs = self.reshape_i64(&bs, &[-1, 1, 1, 1, 1, 1]); // (B, 1, 1, 1, 1, 1)
        let ms = self.range(&m.into()); // (M,)
        let ms = self.reshape_i64(&ms, &[1, 1, -1, 1, 1, 1]); // (1, 1, M, 1, 1, 1)
        self.add(&bs, &ms)
    }

    /// The float32 values of `dims` in a tensor of `shape` (a constant when all are fixed).
    fn floats_of(&mut self, dims: &[Dim], shape: &[usize]) -> String {
        if let Some(v) = dims.iter().map(Dim::fixed).collect::<Option<Vec<usize>>>() {
            let f: Vec<f32> = v.iter().map(|&x| x as f32).collect();
            return self.const_f32(shape, &f);
        }
        let t = self.shape_tensor(dims);
        let t = self.op("Cast", &[&t], vec![attr_i("to", super::proto::data_type::FLOAT as i64)]);
        self.reshape(&t, shape)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_points_are_pixel_centres() {
        let lv = Levels::fixed(1, 2, 2);
        let r = reference_points(&lv);
        assert_eq!(r.len(), 21 * 2);
        assert_eq!(&r[..4], &[0.125, 0.125, 0.375, 0.125]);
        assert_eq!(&r[r.len() - 2..], &[0.5, 0.5]);
    }
}
