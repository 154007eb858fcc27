//! Standard-op building blocks: Linear, LayerNorm, GELU (erf), Conv/BatchNorm, bilinear
//! resize, token ↔ map reshapes, and the ConvFFN/MRFP modules of upstream's
//! `comer_modules.py` (`ConvFFN`, `DWConv`, `MRFP`/`MultiConvFFN`, `MultiDWConv`).
//! Sizes that depend on the input are [`Dim`]s: fixed for a fixed-size export, computed in
//! the graph for `--dynamic`.

use super::OnnxError;
use super::builder::{Graph, attr_f, attr_i, attr_ints, attr_s};
use super::dims::Dim;

/// Batch, token counts and grids of the three stride-8/16/32 levels for a patch grid
/// `h`×`w`, each computed once (in the graph, when symbolic).
#[derive(Debug, Clone)]
pub struct Levels {
    pub b: Dim,
    pub h: Dim,
    pub w: Dim,
    grids: [(Dim, Dim); 3],
    lens: [Dim; 3],
    starts: [Dim; 4],
}

impl Levels {
    /// The levels of batch `b` over a `h`×`w` patch grid (ViT-CoMer's inputs are multiples
    /// of 32, so `h`, `w` are even).
    pub fn new(g: &mut Graph, b: Dim, h: Dim, w: Dim) -> Levels {
        let two = Dim::Fixed(2);
        let grids = [
            (g.dim_mul(&h, &two), g.dim_mul(&w, &two)),
            (h.clone(), w.clone()),
            (g.dim_div(&h, 2), g.dim_div(&w, 2)),
        ];
        let lens = [0, 1, 2].map(|l| g.dim_mul(&grids[l].0, &grids[l].1));
        let s2 = g.dim_add(&lens[0], &lens[1]);
        let s3 = g.dim_add(&s2, &lens[2]);
        let starts = [Dim::Fixed(0), lens[0].clone(), s2, s3];
        Levels { b, h, w, grids, lens, starts }
    }

    /// Fixed sizes: batch `b`, patch grid `h`×`w`.
    pub fn fixed(b: usize, h: usize, w: usize) -> Levels {
        let grids = [(2 * h, 2 * w), (h, w), (h / 2, w / 2)];
        let lens = grids.map(|(gh, gw)| gh * gw);
        let starts = [0, lens[0], lens[0] + lens[1], lens[0] + lens[1] + lens[2]];
        Levels {
            b: b.into(),
            h: h.into(),
            w: w.into(),
            grids: grids.map(|(gh, gw)| (gh.into(), gw.into())),
            lens: lens.map(Dim::from),
            starts: starts.map(Dim::from),
        }
    }

    /// (height, width) of level `l` (0: stride 8, 1: stride 16, 2: stride 32).
    pub fn grid(&self, l: usize) -> (Dim, Dim) {
        self.grids[l].clone()
    }
    /// Tokens of level `l`.
    pub fn len(&self, l: usize) -> Dim {
        self.lens[l].clone()
    }
    /// First token of level `l` in the concatenated (B, Ltot, C) layout; `start(3)` is Ltot.
    pub fn start(&self, l: usize) -> Dim {
        self.starts[l].clone()
    }
    /// All tokens of the three levels.
    pub fn total(&self) -> Dim {
        self.start(3)
    }
    /// Tokens of the stride-16 (ViT) grid.
    pub fn n(&self) -> Dim {
        self.len(1)
    }
}

fn i64s(v: &[usize]) -> Vec<i64> {
    v.iter().map(|&d| d as i64).collect()
}

impl Graph<'_> {
    pub fn add(&mut self, a: &str, b: &str) -> String {
        self.op("Add", &[a, b], vec![])
    }
    pub fn sub(&mut self, a: &str, b: &str) -> String {
        self.op("Sub", &[a, b], vec![])
    }
    pub fn mul(&mut self, a: &str, b: &str) -> String {
        self.op("Mul", &[a, b], vec![])
    }
    pub fn div(&mut self, a: &str, b: &str) -> String {
        self.op("Div", &[a, b], vec![])
    }
    pub fn matmul(&mut self, a: &str, b: &str) -> String {
        self.op("MatMul", &[a, b], vec![])
    }
    pub fn reshape(&mut self, x: &str, shape: &[usize]) -> String {
        let s = self.const_i64(&i64s(shape));
        self.op("Reshape", &[x, &s], vec![])
    }
    /// `x.reshape(shape)` with ONNX's `-1` (inferred) allowed.
    pub fn reshape_i64(&mut self, x: &str, shape: &[i64]) -> String {
        let s = self.const_i64(shape);
        self.op("Reshape", &[x, &s], vec![])
    }
    pub fn transpose(&mut self, x: &str, perm: &[i64]) -> String {
        self.op("Transpose", &[x], vec![attr_ints("perm", perm)])
    }
    pub fn concat(&mut self, xs: &[&str], axis: i64) -> String {
        self.op("Concat", xs, vec![attr_i("axis", axis)])
    }
    /// `x[..., i, ...]` along `axis` (drops the axis).
    pub fn pick(&mut self, x: &str, axis: i64, i: i64) -> String {
        let idx = self.const_i64_shaped(&[], &[i]);
        self.op("Gather", &[x, &idx], vec![attr_i("axis", axis)])
    }
    pub fn unsqueeze(&mut self, x: &str, axis: i64) -> String {
        let a = self.const_i64(&[axis]);
        self.op("Unsqueeze", &[x, &a], vec![])
    }

    /// `nn.Linear` on the last axis: MatMul with the transposed weight, plus the bias.
    pub fn linear(&mut self, x: &str, key: &str) -> Result<String, OnnxError> {
        let (shape, w) = self.weights.get(&format!("{key}.weight"), None)?;
        if shape.len() != 2 {
            return Err(OnnxError::WeightShape { key: format!("{key}.weight"), expected: vec![0, 0], got: shape });
        }
        let bias = if self.weights.has(&format!("{key}.bias")) {
            Some(self.weights.get(&format!("{key}.bias"), Some(&[shape[0]]))?.1)
        } else {
            None
        };
        self.linear_with(x, key, &shape, &w, bias.as_deref())
    }

    /// Tokens (B, N, in) → channels first (B, out, N): one Gemm W·xᵀ + b with the queries on
    /// the last axis, so a depthwise conv or `DeformConv` reads it without a Transpose (for
    /// one image; more images take one (out, B, N) → (B, out, N) Transpose). `rows`, when
    /// given, reorders the outputs (row i is the weight's row `rows[i]`; deformable
    /// attention's level-major order), stored as `{key}.weight_by_level`.
    pub fn linear_to_channels(&mut self, x: &str, key: &str, rows: Option<&[usize]>, b: &Dim, n: &Dim) -> Result<String, OnnxError> {
        let (shape, w) = self.weights.get(&format!("{key}.weight"), None)?;
        let (out, inp) = (shape[0], shape[1]);
        let (_, bias) = self.weights.get(&format!("{key}.bias"), Some(&[out]))?;
        let (wn, bn) = match rows {
            None => (self.init_f32(&format!("{key}.weight"), &[out, inp], &w), self.init_f32(&format!("{key}.bias_column"), &[out, 1], &bias)),
            Some(order) => {
                if order.len() != out {
                    return Err(self.node_error("Gemm", format!("{key}.weight has {out} rows, expected {}", order.len())));
                }
                let wp: Vec<f32> = order.iter().flat_map(|&r| w[r * inp..][..inp].iter().copied()).collect();
                let bp: Vec<f32> = order.iter().map(|&r| bias[r]).collect();
                (self.init_f32(&format!("{key}.weight_by_level"), &[out, inp], &wp), self.init_f32(&format!("{key}.bias_by_level"), &[out, 1], &bp))
            }
        };
        let all = self.dim_mul(b, n);
        let x2 = self.reshape_to(x, &[all, inp.into()]); // (B·N, in)
        let y = self.op("Gemm", &[&wn, &x2, &bn], vec![attr_i("transB", 1)]); // (out, B·N)
        if b.fixed() == Some(1) {
            return Ok(self.reshape_to(&y, &[1.into(), out.into(), n.clone()])); // (1, out, N)
        }
        let y = self.reshape_to(&y, &[out.into(), b.clone(), n.clone()]); // (out, B, N)
        Ok(self.transpose(&y, &[1, 0, 2])) // (B, out, N)
    }

    /// One image's channels-first (1, in, N) → tokens (1, N, out): one Gemm xᵀ·Wᵀ + b (ONNX
    /// Runtime reads both operands transposed in place).
    pub fn linear_from_channels(&mut self, x: &str, key: &str, n: &Dim) -> Result<String, OnnxError> {
        let (shape, w) = self.weights.get(&format!("{key}.weight"), None)?;
        let (out, inp) = (shape[0], shape[1]);
        let (_, b) = self.weights.get(&format!("{key}.bias"), Some(&[out]))?;
        let wn = self.init_f32(&format!("{key}.weight"), &[out, inp], &w);
        let bn = self.init_f32(&format!("{key}.bias"), &[out], &b);
        let x2 = self.reshape_to(x, &[inp.into(), n.clone()]); // (in, N)
        let y = self.op("Gemm", &[&x2, &wn, &bn], vec![attr_i("transA", 1), attr_i("transB", 1)]); // (N, out)
        Ok(self.reshape_to(&y, &[1.into(), n.clone(), out.into()])) // (1, N, out)
    }

    /// A Linear from explicit weight (out, in) and optional bias values.
    pub fn linear_with(&mut self, x: &str, key: &str, shape: &[usize], w: &[f32], bias: Option<&[f32]>) -> Result<String, OnnxError> {
        let (out, inp) = (shape[0], shape[1]);
        let mut wt = vec![0f32; out * inp];
        for o in 0..out {
            for i in 0..inp {
                wt[i * out + o] = w[o * inp + i];
            }
        }
        let wname = self.init_f32(&format!("{key}.weight_t"), &[inp, out], &wt);
        let y = self.matmul(x, &wname);
        Ok(match bias {
            Some(b) => {
                let bname = self.init_f32(&format!("{key}.bias"), &[out], b);
                self.add(&y, &bname)
            }
            None => y,
        })
    }

    /// `nn.LayerNorm` over the last axis.
    pub fn layer_norm(&mut self, x: &str, key: &str, eps: f32) -> Result<String, OnnxError> {
        let x = self.enter_f32(&[x]).remove(0);
        let w = self.param(&format!("{key}.weight"), None)?;
        let b = self.param(&format!("{key}.bias"), None)?;
        let y = self.op("LayerNormalization", &[&x, &w, &b], vec![attr_i("axis", -1), attr_f("epsilon", eps)]);
        Ok(self.leave_f32(&y))
    }

    /// Exact (erf) GELU: `x · 0.5 · (1 + erf(x / √2))`, the pattern ONNX Runtime fuses.
    pub fn gelu(&mut self, x: &str) -> String {
        let sqrt2 = self.scalar(std::f32::consts::SQRT_2);
        let one = self.scalar(1.0);
        let half = self.scalar(0.5);
        let d = self.div(x, &sqrt2);
        let e = self.op("Erf", &[&d], vec![]);
        let e1 = self.add(&e, &one);
        let xe = self.mul(x, &e1);
        self.mul(&xe, &half)
    }

    pub fn relu(&mut self, x: &str) -> String {
        self.op("Relu", &[x], vec![])
    }

    /// Conv2d with weight `{key}.weight` (and `{key}.bias` when present).
    pub fn conv(&mut self, x: &str, key: &str, stride: usize, pad: usize, groups: usize) -> Result<String, OnnxError> {
        let (shape, w) = self.weights.get(&format!("{key}.weight"), None)?;
        let bias = if self.weights.has(&format!("{key}.bias")) {
            Some(self.weights.get(&format!("{key}.bias"), Some(&shape[..1]))?.1)
        } else {
            None
        };
        Ok(self.conv_with(x, key, &shape, &w, bias.as_deref(), stride, pad, groups))
    }

    #[allow(clippy::too_many_arguments)]
    pub fn conv_with(
        &mut self,
        x: &str,
        key: &str,
        shape: &[usize],
        w: &[f32],
        bias: Option<&[f32]>,
        stride: usize,
        pad: usize,
        groups: usize,
    ) -> String {
        let wn = self.init_f32(&format!("{key}.weight"), shape, w);
        let mut inputs = vec![x.to_string(), wn];
        if let Some(b) = bias {
            inputs.push(self.init_f32(&format!("{key}.bias"), &shape[..1], b));
        }
        let refs: Vec<&str> = inputs.iter().map(|s| s.as_str()).collect();
        let (kh, kw) = (shape[2] as i64, shape[3] as i64);
        let (s, p) = (stride as i64, pad as i64);
        self.op(
            "Conv",
            &refs,
            vec![
                attr_ints("kernel_shape", &[kh, kw]),
                attr_ints("strides", &[s, s]),
                attr_ints("pads", &[p, p, p, p]),
                attr_ints("dilations", &[1, 1]),
                attr_i("group", groups as i64),
            ],
        )
    }

    /// `BatchNorm2d` in eval mode (running statistics), eps 1e-5.
    pub fn batch_norm(&mut self, x: &str, key: &str) -> Result<String, OnnxError> {
        let x = self.enter_f32(&[x]).remove(0);
        let w = self.param(&format!("{key}.weight"), None)?;
        let b = self.param(&format!("{key}.bias"), None)?;
        let m = self.param(&format!("{key}.running_mean"), None)?;
        let v = self.param(&format!("{key}.running_var"), None)?;
        let y = self.op("BatchNormalization", &[&x, &w, &b, &m, &v], vec![attr_f("epsilon", 1e-5)]);
        Ok(self.leave_f32(&y))
    }

    /// `F.interpolate(mode='bilinear', align_corners=False)` to an exact integer ratio.
    pub fn resize_bilinear(&mut self, x: &str, out: [Dim; 4]) -> String {
        let sizes = self.shape_tensor(&out);
        self.op(
            "Resize",
            &[x, "", "", &sizes],
            vec![
                attr_s("mode", "linear"),
                attr_s("coordinate_transformation_mode", "half_pixel"),
            ],
        )
    }

    /// (B, N, C) tokens → (B, C, h, w) map.
    pub fn tokens_to_map(&mut self, x: &str, b: &Dim, c: usize, h: &Dim, w: &Dim) -> String {
        let t = self.transpose(x, &[0, 2, 1]); // (B, C, N)
        self.reshape_to(&t, &[b.clone(), c.into(), h.clone(), w.clone()]) // (B, C, h, w)
    }

    /// (B, C, h, w) map → (B, h·w, C) tokens.
    pub fn map_to_tokens(&mut self, x: &str, b: &Dim, c: usize, n: &Dim) -> String {
        let r = self.reshape_to(x, &[b.clone(), c.into(), n.clone()]); // (B, C, N)
        self.transpose(&r, &[0, 2, 1]) // (B, N, C)
    }

    /// Level `l` of three-level features as a (B, C, h, w) map: from tokens (B, N, C), or
    /// from one image's channels first (1, C, N) without a Transpose.
    pub fn level_map(&mut self, x: &str, lv: &Levels, l: usize, c: usize, channels_first: bool) -> String {
        let (h, w) = lv.grid(l);
        if channels_first {
            let t = self.slice_to(x, 2, &lv.start(l), &lv.start(l + 1)); // (1, C, h·w)
            return self.reshape_to(&t, &[1.into(), c.into(), h, w]); // (1, C, h, w)
        }
        let t = self.slice_to(x, 1, &lv.start(l), &lv.start(l + 1)); // (B, h·w, C)
        self.tokens_to_map(&t, &lv.b, c, &h, &w)
    }

    /// The three level maps (B, C, h, w) joined back into the layout [`Graph::level_map`]
    /// took them from: tokens (B, N, C), or channels first (1, C, N).
    pub fn join_levels(&mut self, maps: &[String], lv: &Levels, c: usize, channels_first: bool) -> String {
        let mut outs = Vec::new();
        for (l, m) in maps.iter().enumerate() {
            outs.push(if channels_first {
                self.reshape_to(m, &[1.into(), c.into(), lv.len(l)]) // (1, C, h·w)
            } else {
                self.map_to_tokens(m, &lv.b, c, &lv.len(l)) // (B, h·w, C)
            });
        }
        let refs: Vec<&str> = outs.iter().map(|s| s.as_str()).collect();
        self.concat(&refs, if channels_first { 2 } else { 1 })
    }

    /// fc1 of ConvFFN / MRFP: tokens → tokens, or for one image straight to channels first,
    /// where its level convs and fc2 ([`Graph::fc_out`]) read it without Transposes.
    fn fc_in(&mut self, x: &str, key: &str, lv: &Levels, channels_first: bool) -> Result<String, OnnxError> {
        if channels_first { self.linear_to_channels(x, key, None, &lv.b, &lv.total()) } else { self.linear(x, key) }
    }

    /// fc2 of ConvFFN / MRFP, back to tokens from the layout [`Graph::fc_in`] made.
    fn fc_out(&mut self, x: &str, key: &str, lv: &Levels, channels_first: bool) -> Result<String, OnnxError> {
        if channels_first { self.linear_from_channels(x, key, &lv.total()) } else { self.linear(x, key) }
    }

    /// `DWConv`: one depthwise 3×3 conv applied to each of the three levels of the
    /// concatenated features (tokens (B, 21·n, C), or channels first for one image).
    pub fn dwconv_levels(&mut self, x: &str, key: &str, lv: &Levels, c: usize, channels_first: bool) -> Result<String, OnnxError> {
        let (shape, w) = self.weights.get(&format!("{key}.weight"), None)?;
        let bias = self.weights.get(&format!("{key}.bias"), Some(&shape[..1]))?.1;
        let mut maps = Vec::new();
        for l in 0..3 {
            let m = self.level_map(x, lv, l, c, channels_first);
            maps.push(self.conv_with(&m, key, &shape, &w, Some(&bias), 1, shape[2] / 2, c));
        }
        Ok(self.join_levels(&maps, lv, c, channels_first))
    }

    /// `ConvFFN`: fc1 → DWConv → GELU → fc2.
    pub fn conv_ffn(&mut self, x: &str, key: &str, lv: &Levels) -> Result<String, OnnxError> {
        let hidden = self.weights.get(&format!("{key}.fc1.bias"), None)?.0[0];
        // One image: channels first from fc1 to fc2, no token/map Transposes.
        let cf = lv.b.fixed() == Some(1);
        let y = self.fc_in(x, &format!("{key}.fc1"), lv, cf)?;
        let y = self.dwconv_levels(&y, &format!("{key}.dwconv.dwconv"), lv, hidden, cf)?;
        let y = self.gelu(&y);
        self.fc_out(&y, &format!("{key}.fc2"), lv, cf)
    }

    /// `MRFP` / `MultiConvFFN`: fc1 → per level a 3×3 depthwise conv on the first half of
    /// the channels and a 5×5 on the second (merged here into one 5×5 depthwise conv with the
    /// 3×3 kernel zero-padded), BatchNorm, GELU — then MRFP's own GELU again → fc2.
    pub fn mrfp(&mut self, x: &str, key: &str, lv: &Levels) -> Result<String, OnnxError> {
        let hidden = self.weights.get(&format!("{key}.fc1.bias"), None)?.0[0];
        let half = hidden / 2;
        // One image: channels first from fc1 to fc2 (see `conv_ffn`).
        let cf = lv.b.fixed() == Some(1);
        let y = self.fc_in(x, &format!("{key}.fc1"), lv, cf)?;
        let mut maps = Vec::new();
        for l in 0..3 {
            let k3 = format!("{key}.dwconv.dwconv{}", 2 * l + 1);
            let k5 = format!("{key}.dwconv.dwconv{}", 2 * l + 2);
            let (_, w3) = self.weights.get(&format!("{k3}.weight"), Some(&[half, 1, 3, 3]))?;
            let (_, b3) = self.weights.get(&format!("{k3}.bias"), Some(&[half]))?;
            let (_, w5) = self.weights.get(&format!("{k5}.weight"), Some(&[hidden - half, 1, 5, 5]))?;
            let (_, b5) = self.weights.get(&format!("{k5}.bias"), Some(&[hidden - half]))?;
            let mut w = vec![0f32; hidden * 25];
            for c in 0..half {
                for i in 0..3 {
                    for j in 0..3 {
                        w[c * 25 + (i + 1) * 5 + j + 1] = w3[c * 9 + i * 3 + j];
                    }
                }
            }
            w[half * 25..].copy_from_slice(&w5);
            let b: Vec<f32> = b3.iter().chain(&b5).copied().collect();
            let m = self.level_map(&y, lv, l, hidden, cf);
            let merged = format!("{key}.dwconv.level{l}_merged");
            let cv = self.conv_with(&m, &merged, &[hidden, 1, 5, 5], &w, Some(&b), 1, 2, hidden);
            let bn = self.batch_norm(&cv, &format!("{key}.dwconv.bn{}", l + 1))?;
            maps.push(self.gelu(&bn));
        }
        let y = self.join_levels(&maps, lv, hidden, cf);
        // MRFP.forward applies its own GELU after MultiDWConv's per-level GELU.
        let y = self.gelu(&y);
        self.fc_out(&y, &format!("{key}.fc2"), lv, cf)
    }
}
