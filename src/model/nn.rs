//! Shared layers of the reference forward — Linear, LayerNorm, BatchNorm (inference
//! affine, optionally folded into the preceding convolution), dense and depthwise
//! convolutions — each loaded by its target state-dict names.
//!
//! Mirrors the `torch.nn` layers upstream's `comer_modules.py`, `base/vit.py` and
//! `base/beit.py` build (`nn.Linear`, `nn.LayerNorm(eps=1e-6)`, `nn.SyncBatchNorm` /
//! `nn.BatchNorm2d` with running statistics, eps 1e-5, `nn.Conv2d`).

use candle_core::{Device, Storage, Tensor};

use super::kernels::{self, Path};

use super::buffer::{par_filled, par_filled_with, par_written};
use super::error::ModelError;
use super::ops;
use super::weights::Vb;

pub type Result<T> = std::result::Result<T, ModelError>;

/// LayerNorm eps of every ViT-CoMer LayerNorm (`partial(nn.LayerNorm, eps=1e-6)`).
pub const LN_EPS: f32 = 1e-6;
/// BatchNorm eps (PyTorch default).
pub const BN_EPS: f64 = 1e-5;

/// A contiguous f32 tensor's values.
pub fn values(t: &Tensor) -> Result<Vec<f32>> {
    Ok(t.flatten_all()?.to_vec1::<f32>()?)
}

/// Run `f` on the values of `t`, borrowed in place when `t` is a contiguous f32 CPU
/// tensor (no copy), else on a copy.
pub fn with_values<T>(t: &Tensor, f: impl FnOnce(&[f32]) -> T) -> Result<T> {
    {
        let (storage, layout) = t.storage_and_layout();
        if let (Storage::Cpu(cpu), Some((lo, hi))) = (&*storage, layout.contiguous_offsets())
            && let Ok(v) = cpu.as_slice::<f32>()
        {
            return Ok(f(&v[lo..hi]));
        }
    }
    Ok(f(&values(t)?))
}

/// A tensor from values and a shape.
pub fn tensor(v: Vec<f32>, shape: &[usize]) -> Result<Tensor> {
    Ok(Tensor::from_vec(v, shape, &Device::Cpu)?)
}

/// `bias` repeated for `rows` rows, filled in parallel.
pub fn repeat_rows(bias: &[f32], rows: usize) -> Vec<f32> {
    let n = bias.len().max(1);
    // SAFETY: each chunk is whole rows of n = bias.len() values (64·n, the last a multiple
    // of n), each written in full by write_copy_of_slice.
    unsafe {
        par_written(rows * bias.len(), 64 * n, |_, c| {
            c.chunks_mut(n).for_each(|r| {
                r.write_copy_of_slice(bias);
            })
        })
    }
}

/// `y (rows, n) (+)= x (rows, k) · w (k, n)` with `y`, `x` contiguous row-major and `w`
/// addressed by `w_strides` = (row stride, column stride); `n` is `y.len() / rows`.
/// Adds to `y` when `accumulate`, else overwrites it. Multi-threaded when large.
pub fn gemm_acc(y: &mut [f32], accumulate: bool, x: &[f32], k: usize, w: &[f32], w_strides: (usize, usize)) {
    gemm_acc_in(y, accumulate, x, k, w, w_strides, true)
}

/// [`gemm_acc`], on the calling thread only unless `parallel`.
fn gemm_acc_in(y: &mut [f32], accumulate: bool, x: &[f32], k: usize, w: &[f32], w_strides: (usize, usize), parallel: bool) {
    let rows = x.len() / k.max(1);
    if rows == 0 || k == 0 {
        return;
    }
    let n = y.len() / rows;
    assert!(rows * k == x.len() && rows * n == y.len(), "gemm_acc: shapes do not match");
    let (rs, cs) = w_strides;
    assert!((k - 1) * rs + (n - 1) * cs < w.len(), "gemm_acc: w is too small");
    let threads = rayon::current_num_threads();
    let par = if parallel && threads > 1 && rows * n * k > 1 << 16 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: y is rows×n and x rows×k, contiguous row-major as asserted above; every
    // element of w gemm reads, (i·rs + j·cs) for i < k and j < n, is in bounds (asserted).
    unsafe {
        gemm::gemm(
            rows, n, k,
            y.as_mut_ptr(), 1, n as isize,
            accumulate,
            x.as_ptr(), 1, k as isize,
            w.as_ptr(), cs as isize, rs as isize,
            1.0, 1.0,
            false, false, false,
            par,
        );
    }
}

/// `nn.Linear`: weight (out, in), run as one GEMM with the bias preloaded in the output.
pub struct Linear {
    /// Wᵀ: (in, out), row-major — transposed once at load. The `gemm` crate packs an
    /// operand whose rows are contiguous with plain copies; read in place from (out, in) it
    /// gathers with stride `in`: the forward's GEMM shapes ran 2–40 % slower that way, the
    /// S@512 forward about 8 % (docs/performance.md).
    weight_t: Vec<f32>,
    bias: Option<Vec<f32>>,
    pub in_dim: usize,
    pub out_dim: usize,
}

impl Linear {
    pub fn new(vb: &Vb, in_dim: usize, out_dim: usize, bias: bool) -> Result<Linear> {
        let w = vb.get("weight", &[out_dim, in_dim])?;
        let b = if bias { Some(vb.get("bias", &[out_dim])?) } else { None };
        Linear::from_parts(w, b)
    }

    pub fn from_parts(weight: Tensor, bias: Option<Tensor>) -> Result<Linear> {
        let (out_dim, in_dim) = weight.dims2()?;
        let bias = match bias {
            Some(b) => Some(values(&b)?),
            None => None,
        };
        // (out, in) → (in, out) straight from the tensor's storage, one copy as `values`
        // would make: the (B, HW, C) → (B, C, HW) transpose with B = 1, HW = out, C = in
        let weight_t = with_values(&weight, |w| ops::nhwc_to_nchw(w, 1, out_dim, in_dim, None))?;
        Ok(Linear { weight_t, bias, in_dim, out_dim })
    }

    /// Scale output `j` by `gamma[j]` (its weight row and bias): `self(x)·γ` afterwards,
    /// so a layer scale rides in the GEMM instead of a pass of its own.
    pub fn scale_outputs(&mut self, gamma: &[f32]) {
        assert_eq!(gamma.len(), self.out_dim, "one scale per output");
        for row in self.weight_t.chunks_mut(self.out_dim) {
            row.iter_mut().zip(gamma).for_each(|(w, g)| *w *= g);
        }
        if let Some(b) = &mut self.bias {
            b.iter_mut().zip(gamma).for_each(|(b, g)| *b *= g);
        }
    }

    /// Rows of `x` (rows, in) → (rows, out) values.
    pub fn forward_values(&self, x: &[f32]) -> Vec<f32> {
        super::profile::timed("linear", || self.forward_values_untimed(x))
    }

    fn forward_values_untimed(&self, x: &[f32]) -> Vec<f32> {
        let rows = x.len() / self.in_dim;
        assert_eq!(rows * self.in_dim, x.len(), "Linear input is (rows, {})", self.in_dim);
        let mut y = match &self.bias {
            Some(b) => repeat_rows(b, rows),
            None => par_filled(rows * self.out_dim, 64 * self.out_dim, |_, _| {}),
        };
        gemm_acc(&mut y, self.bias.is_some(), x, self.in_dim, &self.weight_t, (self.out_dim, 1));
        y
    }

    /// `r + self(x)` on rows: the residual `r` (rows, out) and the bias are preloaded in the
    /// output and the GEMM adds into it, instead of a separate pass adding two buffers.
    /// The sum is taken as `(r + b) + x·Wᵀ` rather than upstream's `r + (x·Wᵀ + b)`: the
    /// same terms, rounded in another order.
    pub fn forward_values_residual(&self, x: &[f32], r: &[f32]) -> Vec<f32> {
        super::profile::timed("linear", || {
            let rows = x.len() / self.in_dim;
            let n = self.out_dim;
            assert!(rows * self.in_dim == x.len() && r.len() == rows * n, "residual is (rows, {n})");
            // SAFETY: each chunk is whole rows of n values; with a bias every row is written
            // element by element over its n values (b has n), else the chunk is copied
            // whole from the residual rows of the same length.
            let mut y = unsafe {
                par_written(rows * n, 64 * n, |i, c| {
                    let rs = &r[i * 64 * n..][..c.len()];
                    match &self.bias {
                        Some(b) => c.chunks_mut(n).zip(rs.chunks(n)).for_each(|(o, r)| {
                            o.iter_mut().zip(r).zip(&b[..n]).for_each(|((o, r), b)| {
                                o.write(r + b);
                            })
                        }),
                        None => {
                            c.write_copy_of_slice(rs);
                        }
                    }
                })
            };
            gemm_acc(&mut y, true, x, self.in_dim, &self.weight_t, (self.out_dim, 1));
            y
        })
    }

    /// (…, in) → (…, out)
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = with_values(x, |v| self.forward_values(v))?;
        self.output_tensor(x, y)
    }

    /// `r + self(x)` on tensors (…, in) and (…, out) ([`Linear::forward_values_residual`]).
    pub fn forward_residual(&self, x: &Tensor, r: &Tensor) -> Result<Tensor> {
        let y = with_values(x, |v| with_values(r, |r| self.forward_values_residual(v, r)))??;
        self.output_tensor(x, y)
    }

    /// `GELU(self(x))`, the activation fused after the GEMM.
    pub fn forward_gelu(&self, x: &Tensor) -> Result<Tensor> {
        let mut y = with_values(x, |v| self.forward_values(v))?;
        kernels::gelu_inplace(&mut y, 1, Path::Best);
        self.output_tensor(x, y)
    }

    /// The output values `y` of input `x` (…, in) as a tensor (…, out).
    fn output_tensor(&self, x: &Tensor, y: Vec<f32>) -> Result<Tensor> {
        let mut out = x.dims().to_vec();
        let last = out.len() - 1;
        out[last] = self.out_dim;
        tensor(y, &out)
    }
}

/// `nn.LayerNorm` over the last axis.
pub struct LayerNorm {
    weight: Vec<f32>,
    bias: Vec<f32>,
}

impl LayerNorm {
    pub fn new(vb: &Vb, dim: usize) -> Result<LayerNorm> {
        Ok(LayerNorm { weight: vb.vec("weight", &[dim])?, bias: vb.vec("bias", &[dim])? })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let c = self.weight.len();
        super::profile::timed("layernorm", || {
            let v = with_values(x, |x| ops::layer_norm_rows(x, c, &self.weight, &self.bias, LN_EPS))?;
            tensor(v, x.dims())
        })
    }

    /// Chains of norms over the same input in one pass over it: output `j` is the norms of
    /// `chains[j]` applied in order, each exactly as [`LayerNorm::forward`] computes it.
    pub fn chains<const K: usize>(x: &Tensor, chains: [&[&LayerNorm]; K]) -> Result<[Tensor; K]> {
        let c = x.dim(candle_core::D::Minus1)?;
        let pairs: Vec<Vec<(&[f32], &[f32])>> =
            chains.iter().map(|ch| ch.iter().map(|n| (&n.weight[..], &n.bias[..])).collect()).collect();
        let pairs: Vec<&[(&[f32], &[f32])]> = pairs.iter().map(|p| &p[..]).collect();
        super::profile::timed("layernorm", || {
            let outs = with_values(x, |v| ops::layer_norm_chains(v, c, &pairs, LN_EPS))?;
            let outs: Vec<Tensor> = outs.into_iter().map(|v| tensor(v, x.dims())).collect::<Result<_>>()?;
            Ok(outs.try_into().unwrap_or_else(|_| unreachable!("one output per chain")))
        })
    }
}

/// The MLP activation of a ViT: what a source family uses (detected at import, modelled by
/// verify's source forwards). Upstream's flavours all use exact GELU (`nn.GELU()`), which
/// the forward fuses into its Linear ([`Linear::forward_gelu`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Activation {
    /// `nn.GELU()` (erf form).
    Gelu,
    /// OpenAI CLIP `QuickGELU`: `x * sigmoid(1.702 x)`.
    QuickGelu,
    /// `nn.GELU(approximate='tanh')` (SigLIP's `gelu_pytorch_tanh`).
    GeluTanh,
}

impl Activation {
    /// The activation on a tensor, elementwise.
    pub fn forward(self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Activation::Gelu => x.gelu_erf(),
            // candle's `gelu` is the tanh approximation PyTorch computes for approximate='tanh'.
            Activation::GeluTanh => x.gelu(),
            Activation::QuickGelu => {
                // x / (1 + exp(-1.702 x))
                let denom = (x.affine(-1.702, 0.0)?.exp()? + 1.0)?;
                x.div(&denom)
            }
        }
    }
}

/// BatchNorm in inference mode as a per-channel affine `y = x·scale + shift`.
pub struct BatchNorm {
    pub scale: Vec<f32>,
    pub shift: Vec<f32>,
}

impl BatchNorm {
    /// Reads weight, bias, running_mean, running_var (and accepts `num_batches_tracked`).
    pub fn new(vb: &Vb, dim: usize) -> Result<BatchNorm> {
        let w = vb.vec("weight", &[dim])?;
        let b = vb.vec("bias", &[dim])?;
        let m = vb.vec("running_mean", &[dim])?;
        let v = vb.vec("running_var", &[dim])?;
        vb.buffer_i64("num_batches_tracked", &[])?;
        let mut scale = Vec::with_capacity(dim);
        let mut shift = Vec::with_capacity(dim);
        for i in 0..dim {
            let s = w[i] as f64 / (v[i] as f64 + BN_EPS).sqrt();
            scale.push(s as f32);
            shift.push((b[i] as f64 - m[i] as f64 * s) as f32);
        }
        Ok(BatchNorm { scale, shift })
    }

    /// Fold channels `c0..c0 + C` of this affine into the convolution that precedes it:
    /// `weight` is channels-last (rows of C output channels, any number of rows) and is
    /// scaled per channel; `bias` (C) becomes `b·scale + shift`, or `shift` when the
    /// convolution has no bias of its own (`has_bias` false). The one BatchNorm fold of the
    /// forward (the stem's dense convs and MRFP's depthwise convs).
    pub fn fold_into(&self, c0: usize, weight: &mut [f32], bias: &mut [f32], has_bias: bool) {
        let c = bias.len();
        let (scale, shift) = (&self.scale[c0..c0 + c], &self.shift[c0..c0 + c]);
        for ch in 0..c {
            bias[ch] = if has_bias { bias[ch] * scale[ch] + shift[ch] } else { shift[ch] };
        }
        for row in weight.chunks_mut(c) {
            row.iter_mut().zip(scale).for_each(|(w, s)| *w *= s);
        }
    }
}

/// A dense `nn.Conv2d` on NCHW (the patch embedding).
pub struct Conv2d {
    weight: Tensor,
    bias: Option<Tensor>,
    stride: usize,
    padding: usize,
}

impl Conv2d {
    pub fn new(vb: &Vb, cin: usize, cout: usize, k: usize, stride: usize, padding: usize, bias: bool) -> Result<Conv2d> {
        let weight = vb.get("weight", &[cout, cin, k, k])?;
        let bias = if bias { Some(tensor(vb.vec("bias", &[cout])?, &[1, cout, 1, 1])?) } else { None };
        Ok(Conv2d { weight: weight.contiguous()?, bias, stride, padding })
    }

    /// (B, C_in, H, W) → (B, C_out, H', W')
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = x.conv2d(&self.weight, self.padding, self.stride, 1, 1)?;
        Ok(match &self.bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        })
    }
}

/// A dense `k×k` `nn.Conv2d` run channels-last as im2col + GEMM over row chunks, with
/// an optional BatchNorm folded in and an optional fused ReLU.
pub struct ConvNhwc {
    /// (k·k·C_in, C_out), rows ordered (ky, kx, c_in).
    weight: Vec<f32>,
    bias: Vec<f32>,
    k: usize,
    stride: usize,
    padding: usize,
    relu: bool,
}

/// Output pixels per convolution task: their im2col block (at most 256 × 3·3·256 values,
/// 2.4 MB; 590 KB for the 64-channel stem) stays in the core's L2 for its GEMM.
const IM2COL_ROWS: usize = 256;

impl ConvNhwc {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        vb: &Vb,
        cin: usize,
        cout: usize,
        k: usize,
        stride: usize,
        padding: usize,
        bn: Option<&BatchNorm>,
        relu: bool,
    ) -> Result<ConvNhwc> {
        let w = vb.vec("weight", &[cout, cin, k, k])?;
        let mut bias = if bn.is_none() { vb.vec("bias", &[cout])? } else { vec![0.0; cout] };
        let mut m = vec![0f32; k * k * cin * cout];
        for o in 0..cout {
            for ci in 0..cin {
                for t in 0..k * k {
                    m[(t * cin + ci) * cout + o] = w[(o * cin + ci) * k * k + t];
                }
            }
        }
        if let Some(bn) = bn {
            // upstream's conv before a BatchNorm has no bias
            bn.fold_into(0, &mut m, &mut bias, false);
        }
        Ok(ConvNhwc { weight: m, bias, k, stride, padding, relu })
    }

    pub fn out_channels(&self) -> usize {
        self.bias.len()
    }

    /// (B, H, W, C_in) values → (B, H', W', C_out) values and (H', W').
    pub fn forward(&self, x: &[f32], dims: (usize, usize, usize, usize)) -> Result<(Vec<f32>, usize, usize)> {
        let (b, h, w, c) = dims;
        let oh = (h + 2 * self.padding - self.k) / self.stride + 1;
        let ow = (w + 2 * self.padding - self.k) / self.stride + 1;
        let cout = self.bias.len();
        let kc = self.k * self.k * c;
        let total = b * oh * ow;
        // One task per block of output pixels, in parallel: bias, im2col into the task's
        // own scratch, a single-threaded GEMM, ReLU, all while the block is cache-hot.
        let scratch = || vec![0f32; IM2COL_ROWS.min(total) * kc];
        let out = par_filled_with(total * cout, IM2COL_ROWS * cout, scratch, |cols, i, dst| {
            let r0 = i * IM2COL_ROWS;
            let rows = dst.len() / cout;
            let cols = &mut cols[..rows * kc];
            dst.chunks_mut(cout).for_each(|r| r.copy_from_slice(&self.bias));
            ops::im2col_nhwc(x, dims, self.k, self.stride, self.padding, (oh, ow), r0..r0 + rows, cols);
            // (rows, C_out) += (rows, k·k·C_in) · (k·k·C_in, C_out)
            gemm_acc_in(dst, true, cols, kc, &self.weight, (cout, 1), false);
            if self.relu {
                dst.iter_mut().for_each(|v| *v = v.max(0.0));
            }
        });
        Ok((out, oh, ow))
    }
}

/// A depthwise `nn.Conv2d(C, C, k, 1, k//2, groups=C)` run channels-last, optionally with a
/// BatchNorm folded in.
pub struct DwConv {
    /// (k, k, C)
    weight_t: Vec<f32>,
    bias: Vec<f32>,
    pub k: usize,
}

impl DwConv {
    pub fn new(vb: &Vb, c: usize, k: usize) -> Result<DwConv> {
        let w = vb.vec("weight", &[c, 1, k, k])?;
        let bias = vb.vec("bias", &[c])?;
        let mut weight_t = vec![0f32; c * k * k];
        for ch in 0..c {
            for t in 0..k * k {
                weight_t[t * c + ch] = w[ch * k * k + t];
            }
        }
        Ok(DwConv { weight_t, bias, k })
    }

    /// Fold a per-channel affine (channels `c0..c0+C` of `bn`) into the weights and bias.
    pub fn fold(&mut self, bn: &BatchNorm, c0: usize) {
        bn.fold_into(c0, &mut self.weight_t, &mut self.bias, true);
    }

    /// Channels `c0..c0+C` of one image `x` (H, W, C_total) into the same channels of
    /// `out`, output tokens `x0..` of row `oy` (see [`ops::dwconv_row`]).
    pub fn run(&self, x: &[f32], out: &mut [f32], dims: (usize, usize, usize), oy: usize, x0: usize, c0: usize) {
        ops::dwconv_row(x, out, dims, oy, x0, c0, &self.weight_t, &self.bias, self.k);
    }
}

/// `x + y` on (B, N_x, C) and (B, N_y, C), with `y` added at tokens `at..at+N_y` of every
/// image of `x`: the level-2 add of the CTI modules in one elementwise pass, no broadcast
/// tensors.
pub fn add_at(x: &Tensor, y: &Tensor, at: usize) -> Result<Tensor> {
    super::profile::timed("add", || add_at_untimed(x, y, at))
}

fn add_at_untimed(x: &Tensor, y: &Tensor, at: usize) -> Result<Tensor> {
    let (b, nx, c) = x.dims3()?;
    let ny = y.dim(1)?;
    assert!(at + ny <= nx && y.dim(0)? == b && y.dim(2)? == c, "add_at: y does not fit x");
    let out = with_values(x, |xv| {
        with_values(y, |yv| {
            // one task per 64 tokens; token t of image bi takes y's token t − at when inside
            // SAFETY: each chunk is whole tokens of c values; every token is either copied
            // whole from x or written element by element over its c values (xs and ys
            // both have c).
            unsafe {
                par_written(xv.len(), 64 * c, |i, o| {
                    let xs = &xv[i * 64 * c..][..o.len()];
                    for (j, (o, xs)) in o.chunks_mut(c).zip(xs.chunks(c)).enumerate() {
                        let t = i * 64 + j;
                        let (bi, ti) = (t / nx, t % nx);
                        if ti < at || ti >= at + ny {
                            o.write_copy_of_slice(xs);
                            continue;
                        }
                        let ys = &yv[(bi * ny + ti - at) * c..][..c];
                        o.iter_mut().zip(xs).zip(ys).for_each(|((o, x), y)| {
                            o.write(x + y);
                        });
                    }
                })
            }
        })
    })??;
    tensor(out, &[b, nx, c])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A Linear on its transposed weight gives what `x Wᵀ + b` gives, and `scale_outputs`
    /// scales output columns.
    #[test]
    fn transposed_weights_compute_x_w_t_plus_b() {
        let (n_in, n_out, n) = (5, 3, 4);
        let w: Vec<f32> = (0..n_out * n_in).map(|i| (i % 7) as f32 - 3.0).collect();
        let b = vec![0.5, -1.0, 2.0];
        let x: Vec<f32> = (0..n * n_in).map(|i| (i % 5) as f32 * 0.25).collect();
        let mut lin = Linear::from_parts(tensor(w.clone(), &[n_out, n_in]).unwrap(), Some(tensor(b.clone(), &[n_out]).unwrap())).unwrap();
        lin.scale_outputs(&[1.0, 2.0, -1.0]);
        let y = lin.forward_values(&x);
        for i in 0..n {
            for (o, g) in [1.0f32, 2.0, -1.0].iter().enumerate() {
                let want = g * ((0..n_in).map(|k| x[i * n_in + k] * w[o * n_in + k]).sum::<f32>() + b[o]);
                assert_eq!(y[i * n_out + o], want, "row {i} output {o}");
            }
        }
    }
}
