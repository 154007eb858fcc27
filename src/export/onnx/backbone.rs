//! The whole backbone as one ONNX graph, flavour by flavour: upstream's `ViTCoMer.forward`
//! (detection `vit_comer.py` on `base/vit.py`, segmentation `vit_comer.py`) and the Co-DETR
//! branch's `BEiTComer2.forward` (on `base/beit.py`), with `CTIBlock`/`InteractionBlock`,
//! `CTI_toV`/`Injector`, `CTI_toC`/`Extractor`, `Extractor_CTI`/`Extractor_tail`,
//! `MultiscaleExtractor` and the `CNN`/`SpatialPriorModule` stem of `comer_modules.py`.

use super::OnnxError;
use super::builder::{Graph, attr_i, attr_ints, attr_f, attr_s};
use super::deform::{Deform, DeformSpec, Sampling};
use super::dims::Dim;
use super::layers::Levels;
use crate::model::resize::{self, Layout};
use crate::model::{ComerConfig, Flavor};

const LN_EPS: f32 = 1e-6;

pub struct Ctx<'c> {
    pub cfg: &'c ComerConfig,
    pub lv: Levels,
    pub deform: Deform,
    /// Deformable attention's shared reference points and level sizes.
    pub at: Sampling,
}

impl Ctx<'_> {
    fn spec(&self) -> DeformSpec<'_> {
        DeformSpec { heads: self.cfg.deform_num_heads, points: self.cfg.n_points, levels: &self.lv, at: &self.at }
    }
    fn n(&self) -> Dim {
        self.lv.n()
    }
}

/// Build the graph from input `image` (B, 3, 16h, 16w), already cast to the graph's float
/// type; returns the output names.
pub fn build(g: &mut Graph, image: &str, cx: &Ctx) -> Result<Vec<String>, OnnxError> {
    let cfg = cx.cfg;
    let lv = &cx.lv;
    let (b, d) = (&lv.b, cfg.embed_dim);
    let nm = cfg.flavor.names();
    let image = image.to_string();
    // --- spm: the convolutional stem ---
    let (c1, cs) = g.scoped("spm", |g| spm(g, &image, cx))?;
    // --- patch embedding + position embedding ---
    let x = g.scoped("patch_embed", |g| -> Result<String, OnnxError> {
        let p = g.conv(&image, "patch_embed.proj", cfg.patch_size, 0, 1)?;
        Ok(g.map_to_tokens(&p, b, d, &cx.n()))
    })?;
    let mut x = g.scoped("pos_embed", |g| add_pos_embed(g, &x, cx))?;
    let mut c = cs;

    // --- interactions ---
    let n_int = cfg.interaction_indexes.len();
    let mut outs = Vec::new();
    for i in 0..n_int {
        let key = format!("interactions.{i}");
        if cfg.use_cti_tov[i] {
            let k = format!("{key}.{}", nm.mrfp);
            c = g.scoped(&k, |g| g.mrfp(&c, &k, lv))?;
            let k = format!("{key}.{}", nm.tov);
            // c = cat(c1, c2 + x, c3); x = CTI_toV(x, c)
            c = g.scoped(&k, |g| {
                let mid = g.slice_to(&c, 1, &lv.start(1), &lv.start(2));
                let mid = g.add(&mid, &x);
                let a = g.slice_to(&c, 1, &lv.start(0), &lv.start(1));
                let z = g.slice_to(&c, 1, &lv.start(2), &lv.total());
                g.concat(&[&a, &mid, &z], 1)
            });
            x = g.scoped(&k, |g| cti_tov(g, &x, &c, &k, cx))?;
        }
        let [first, last] = cfg.interaction_indexes[i];
        for bi in first..=last {
            let k = format!("blocks.{bi}");
            x = g.scoped(&k, |g| block(g, &x, bi, cx))?;
        }
        if cfg.use_cti_toc[i] {
            let k = format!("{key}.{}", nm.toc);
            c = g.scoped(&k, |g| cti_toc(g, &c, &x, &k, cfg.cnn_feature_interaction[i], false, cx))?;
        }
        if i == n_int - 1 && cfg.use_extra_cti {
            let extra = if cfg.flavor == Flavor::Det { cfg.extra_num } else { 4 };
            for e in 0..extra {
                let k = format!("{key}.{}.{e}", nm.extra);
                c = g.scoped(&k, |g| cti_toc(g, &c, &x, &k, cfg.cnn_feature_interaction[i], cfg.with_cffn, cx))?;
            }
        }
        outs.push(x.clone());
    }

    // --- the pyramid ---
    g.scoped("pyramid", |g| -> Result<Vec<String>, OnnxError> {
        let mut maps = Vec::new();
        for l in 0..3 {
            let t = g.slice_to(&c, 1, &lv.start(l), &lv.start(l + 1));
            let (h, w) = lv.grid(l);
            maps.push(g.tokens_to_map(&t, b, d, &h, &w));
        }
        let [c2, c3, c4]: [String; 3] = maps.try_into().expect("three levels");
        let upw = g.param("up.weight", Some(&[d, d, 2, 2]))?;
        let upb = g.param("up.bias", Some(&[d]))?;
        let up = g.op(
            "ConvTranspose",
            &[&c2, &upw, &upb],
            vec![attr_ints("kernel_shape", &[2, 2]), attr_ints("strides", &[2, 2])],
        );
        let mut fs = [g.add(&up, &c1), c2, c3, c4];
        let mut x_out = None;
        if cfg.add_vit_feature {
            let src: Vec<String> = if cfg.flavor == Flavor::Seg {
                outs.clone()
            } else {
                vec![x.clone(); 4]
            };
            let (h4, w4) = (g.dim_mul(&lv.h, &4.into()), g.dim_mul(&lv.w, &4.into()));
            let sizes = [(h4, w4), lv.grid(0), lv.grid(1), lv.grid(2)];
            for (l, f) in fs.iter_mut().enumerate() {
                let m = g.tokens_to_map(&src[l], b, d, &lv.h, &lv.w);
                if l == 2 && cfg.flavor != Flavor::Seg {
                    x_out = Some(m.clone());
                }
                let (sh, sw) = sizes[l].clone();
                let m = if l == 2 { m } else { g.resize_bilinear(&m, [b.clone(), d.into(), sh, sw]) };
                *f = g.add(f, &m);
            }
        }
        let mut names = Vec::new();
        if cfg.flavor == Flavor::Beit {
            // BEiTComer2 returns x first: the token map when add_vit_feature, else tokens.
            let xo = x_out.unwrap_or_else(|| x.clone());
            g.output(&xo, "x");
            names.push("x".to_string());
        }
        for (l, f) in fs.iter().enumerate() {
            let bn = g.batch_norm(f, &format!("norm{}", l + 1))?;
            let out = format!("f{}", l + 1);
            g.output(&bn, &out);
            names.push(out);
        }
        Ok(names)
    })
}

/// `CNN` / `SpatialPriorModule`: returns c1 (B, D, 4h, 4w) and c = cat(c2, c3, c4) tokens
/// with `level_embed` added.
fn spm(g: &mut Graph, image: &str, cx: &Ctx) -> Result<(String, String), OnnxError> {
    let (b, d) = (&cx.lv.b, cx.cfg.embed_dim);
    let mut t = image.to_string();
    for (conv, bn, stride) in [("stem.0", "stem.1", 2), ("stem.3", "stem.4", 1), ("stem.6", "stem.7", 1)] {
        t = g.conv(&t, &format!("spm.{conv}"), stride, 1, 1)?;
        t = g.batch_norm(&t, &format!("spm.{bn}"))?;
        t = g.relu(&t);
    }
    let c1 = g.op(
        "MaxPool",
        &[&t],
        vec![attr_ints("kernel_shape", &[3, 3]), attr_ints("strides", &[2, 2]), attr_ints("pads", &[1, 1, 1, 1])],
    );
    let mut feats = vec![c1];
    for s in ["conv2", "conv3", "conv4"] {
        let prev = feats.last().cloned().unwrap_or_default();
        let y = g.conv(&prev, &format!("spm.{s}.0"), 2, 1, 1)?;
        let y = g.batch_norm(&y, &format!("spm.{s}.1"))?;
        feats.push(g.relu(&y));
    }
    let c1 = g.conv(&feats[0], "spm.fc1", 1, 0, 1)?;
    let (_, le) = g.weights.get("level_embed", Some(&[3, d]))?;
    let mut toks = Vec::new();
    for l in 0..3 {
        let y = g.conv(&feats[l + 1], &format!("spm.fc{}", l + 2), 1, 0, 1)?;
        let y = g.map_to_tokens(&y, b, d, &cx.lv.len(l));
        let e = g.const_f32(&[d], &le[l * d..(l + 1) * d]);
        toks.push(g.add(&y, &e));
    }
    let refs: Vec<&str> = toks.iter().map(|s| s.as_str()).collect();
    let c = g.concat(&refs, 1);
    Ok((c1, c))
}

/// Add the absolute position embedding, resized bicubically (`F.interpolate(mode='bicubic',
/// align_corners=False)`, upstream's `_get_pos_embed`) to the patch grid: a constant resized
/// here for a fixed size, an ONNX `Resize` (cubic, a = −0.75, half-pixel, edge taps clamped —
/// PyTorch's bicubic) of the pretrain table in float32 for `--dynamic`.
fn add_pos_embed(g: &mut Graph, x: &str, cx: &Ctx) -> Result<String, OnnxError> {
    let cfg = cx.cfg;
    if cfg.flavor == Flavor::Beit && !cfg.use_abs_pos_emb {
        return Ok(x.to_string());
    }
    let d = cfg.embed_dim;
    let (shape, pe) = g.weights.get("pos_embed", None)?;
    let grid = cfg.pretrain_size / 16;
    let prefix = if cfg.flavor == Flavor::Beit { 0 } else { 1 };
    if shape.len() != 3 || shape[2] != d || shape[1] != grid * grid + prefix {
        return Err(g.node_error(
            "Add",
            format!("pos_embed has shape {shape:?}, expected [1, {}, {d}] for pretrain_size {}", grid * grid + prefix, cfg.pretrain_size),
        ));
    }
    let rows = &pe[prefix * d..];
    let (Some(h), Some(w)) = (cx.lv.h.fixed(), cx.lv.w.fixed()) else {
        g.enter_f32(&[]);
        // (G·G, D) rows → (1, D, G, G) channels first, as `_get_pos_embed` permutes them.
        let mut table = vec![0f32; rows.len()];
        for (t, row) in rows.chunks_exact(d).enumerate() {
            for (c, v) in row.iter().enumerate() {
                table[c * grid * grid + t] = *v;
            }
        }
        let table = g.const_f32(&[1, d, grid, grid], &table);
        let sizes = g.shape_tensor(&[1.into(), d.into(), cx.lv.h.clone(), cx.lv.w.clone()]);
        let resized = g.op(
            "Resize",
            &[&table, "", "", &sizes],
            vec![
                attr_s("mode", "cubic"),
                attr_f("cubic_coeff_a", -0.75),
                attr_s("coordinate_transformation_mode", "half_pixel"),
            ],
        ); // (1, D, h, w)
        let flat = g.reshape_i64(&resized, &[1, d as i64, -1]); // (1, D, N)
        let tokens = g.transpose(&flat, &[0, 2, 1]); // (1, N, D)
        let tokens = g.leave_f32(&tokens);
        return Ok(g.add(x, &tokens));
    };
    let resized = resize::bicubic(rows, d, Layout::Rows, (grid, grid), (h, w));
    let c = g.const_f32(&[1, h * w, d], &resized);
    Ok(g.add(x, &c))
}

/// `CTI_toV` / `Injector`: deformable attention from the three-level c tokens, ConvFFN,
/// the stride-8 and stride-32 results resized onto the ViT grid, `x + gamma·(sum)`.
fn cti_tov(g: &mut Graph, x: &str, c: &str, key: &str, cx: &Ctx) -> Result<String, OnnxError> {
    let lv = &cx.lv;
    let (b, d) = (&lv.b, cx.cfg.embed_dim);
    let q = g.layer_norm(c, &format!("{key}.query_norm"), LN_EPS)?;
    let f = g.layer_norm(c, &format!("{key}.feat_norm"), LN_EPS)?;
    let a = g.ms_deform_attn(&q, &f, &format!("{key}.attn"), &cx.spec(), cx.deform)?;
    let n = g.layer_norm(&a, &format!("{key}.ffn_norm"), LN_EPS)?;
    let ff = g.conv_ffn(&n, &format!("{key}.ffn"), lv)?;
    let c1 = g.add(&a, &ff);
    let [s1, s2, s3] = [0, 1, 2].map(|l| g.slice_to(&c1, 1, &lv.start(l), &lv.start(l + 1)));
    let onto_vit_grid = |g: &mut Graph, t: &str, l: usize| {
        let (lh, lw) = lv.grid(l);
        let m = g.tokens_to_map(t, b, d, &lh, &lw);
        let m = g.resize_bilinear(&m, [b.clone(), d.into(), lv.h.clone(), lv.w.clone()]);
        g.map_to_tokens(&m, b, d, &lv.n())
    };
    let s1 = onto_vit_grid(g, &s1, 0);
    let s3 = onto_vit_grid(g, &s3, 2);
    let sum = g.add(&s1, &s2);
    let sum = g.add(&sum, &s3);
    let gamma = g.param(&format!("{key}.gamma"), Some(&[d]))?;
    let scaled = g.mul(&sum, &gamma);
    Ok(g.add(x, &scaled))
}

/// `CTI_toC` / `Extractor` (`ffn` false) and `Extractor_CTI` / `Extractor_tail` (`ffn` =
/// with_cffn): add the ViT tokens to the stride-16 level, optional ConvFFN, then the
/// `cfinter` MultiscaleExtractor on the normalised tokens.
fn cti_toc(g: &mut Graph, c: &str, x: &str, key: &str, cfinter: bool, ffn: bool, cx: &Ctx) -> Result<String, OnnxError> {
    let lv = &cx.lv;
    let a = g.slice_to(c, 1, &lv.start(0), &lv.start(1));
    let mid = g.slice_to(c, 1, &lv.start(1), &lv.start(2));
    let z = g.slice_to(c, 1, &lv.start(2), &lv.total());
    let mid = g.add(&mid, x);
    let mut q = g.concat(&[&a, &mid, &z], 1);
    if ffn {
        let n = g.layer_norm(&q, &format!("{key}.ffn_norm"), LN_EPS)?;
        let f = g.conv_ffn(&n, &format!("{key}.ffn"), lv)?;
        q = g.add(&q, &f);
    }
    if cfinter {
        let qn = g.layer_norm(&q, &format!("{key}.query_norm"), LN_EPS)?;
        let fnm = g.layer_norm(&q, &format!("{key}.feat_norm"), LN_EPS)?;
        let k = format!("{key}.cfinter");
        q = g.scoped(&k, |g| multiscale_extractor(g, &qn, &fnm, &k, cx))?;
    }
    Ok(q)
}

/// `MultiscaleExtractor`: query + attn(query_norm(query), feat_norm(feat)), then + ConvFFN.
fn multiscale_extractor(g: &mut Graph, query: &str, feat: &str, key: &str, cx: &Ctx) -> Result<String, OnnxError> {
    let q = g.layer_norm(query, &format!("{key}.query_norm"), LN_EPS)?;
    let f = g.layer_norm(feat, &format!("{key}.feat_norm"), LN_EPS)?;
    let a = g.ms_deform_attn(&q, &f, &format!("{key}.attn"), &cx.spec(), cx.deform)?;
    let mut out = g.add(query, &a);
    if cx.cfg.with_cffn {
        let n = g.layer_norm(&out, &format!("{key}.ffn_norm"), LN_EPS)?;
        let ff = g.conv_ffn(&n, &format!("{key}.ffn"), &cx.lv)?;
        out = g.add(&out, &ff);
    }
    Ok(out)
}

/// One transformer block: timm-style (`base/vit.py` `Block`, global or windowed attention
/// with zero-padded q/k/v) or BEiT (`base/beit.py` `Block`, q/v bias, relative position bias,
/// windows padded before qkv).
fn block(g: &mut Graph, x: &str, i: usize, cx: &Ctx) -> Result<String, OnnxError> {
    let cfg = cx.cfg;
    let key = format!("blocks.{i}");
    let n1 = g.layer_norm(x, &format!("{key}.norm1"), LN_EPS)?;
    let a = if cfg.flavor == Flavor::Beit { beit_attention(g, &n1, i, cx)? } else { vit_attention(g, &n1, i, cx)? };
    let [ls1, ls2] = cfg.flavor.names().layer_scale;
    let (g1, g2) = if cfg.flavor == Flavor::Beit {
        let has = g.weights.has(&format!("{key}.{ls1}"));
        (has.then(|| format!("{key}.{ls1}")), has.then(|| format!("{key}.{ls2}")))
    } else if cfg.layer_scale {
        (Some(format!("{key}.{ls1}")), Some(format!("{key}.{ls2}")))
    } else {
        (None, None)
    };
    let a = match &g1 {
        Some(k) => {
            let p = g.param(k, Some(&[cfg.embed_dim]))?;
            g.mul(&a, &p)
        }
        None => a,
    };
    let x = g.add(x, &a);
    let n2 = g.layer_norm(&x, &format!("{key}.norm2"), LN_EPS)?;
    let m = g.linear(&n2, &format!("{key}.mlp.fc1"))?;
    let m = g.gelu(&m);
    let m = g.linear(&m, &format!("{key}.mlp.fc2"))?;
    let m = match &g2 {
        Some(k) => {
            let p = g.param(k, Some(&[cfg.embed_dim]))?;
            g.mul(&m, &p)
        }
        None => m,
    };
    Ok(g.add(&x, &m))
}

/// Shape and scaling of one multi-head attention over (B', N', 3C) packed q/k/v.
#[derive(Clone)]
struct Sdpa<'s> {
    bn: Dim,
    n: Dim,
    heads: usize,
    hd: usize,
    scale: f32,
    /// Scale q before the product (BEiT) instead of the logits (timm).
    prescale: bool,
    /// Added to the logits (BEiT relative position bias).
    bias: Option<&'s str>,
}

/// Scaled dot-product attention; returns (B', N', C).
fn sdpa(g: &mut Graph, qkv: &str, a: &Sdpa) -> String {
    let Sdpa { bn, n, heads, hd, scale, prescale, bias } = a.clone();
    let t = g.reshape_to(qkv, &[bn.clone(), n.clone(), 3.into(), heads.into(), hd.into()]); // (B', N', 3, h, hd)
    let t = g.transpose(&t, &[2, 0, 3, 1, 4]); // (3, B', h, N', hd)
    let q = g.pick(&t, 0, 0);
    let k = g.pick(&t, 0, 1);
    let v = g.pick(&t, 0, 2);
    let s = g.scalar(scale);
    let q = if prescale { g.mul(&q, &s) } else { q };
    let kt = g.transpose(&k, &[0, 1, 3, 2]); // (B', h, hd, N')
    let mut logits = g.matmul(&q, &kt); // (B', h, N', N')
    if !prescale {
        logits = g.mul(&logits, &s);
    }
    if let Some(bias) = bias {
        logits = g.add(&logits, bias);
    }
    let logits = g.enter_f32(&[&logits]).remove(0);
    let p = g.op("Softmax", &[&logits], vec![attr_i("axis", -1)]);
    let p = g.leave_f32(&p);
    let o = g.matmul(&p, &v); // (B', h, N', hd)
    let o = g.transpose(&o, &[0, 2, 1, 3]); // (B', N', h, hd)
    g.reshape_to(&o, &[bn, n, (heads * hd).into()]) // (B', N', C)
}

/// A window layout: batch, unpadded grid (h, w), padded grid (hp, wp) of (nh, nw) windows
/// of `ws`×`ws`, and the window count B·nh·nw.
struct Win {
    b: Dim,
    h: Dim,
    w: Dim,
    hp: Dim,
    wp: Dim,
    nh: Dim,
    nw: Dim,
    ws: usize,
    count: Dim,
}

impl Win {
    fn new(g: &mut Graph, lv: &Levels, ws: usize) -> Win {
        let (hp, wp) = (g.dim_round_up(&lv.h, ws), g.dim_round_up(&lv.w, ws));
        let (nh, nw) = (g.dim_div(&hp, ws), g.dim_div(&wp, ws));
        let per_image = g.dim_mul(&nh, &nw);
        let count = g.dim_mul(&lv.b, &per_image);
        Win { b: lv.b.clone(), h: lv.h.clone(), w: lv.w.clone(), hp, wp, nh, nw, ws, count }
    }
}

/// (B, hp, wp, C) map → (B·nW, ws·ws, C) windows.
fn partition(g: &mut Graph, x: &str, win: &Win, c: usize) -> String {
    let ws = Dim::Fixed(win.ws);
    let t = g.reshape_to(x, &[win.b.clone(), win.nh.clone(), ws.clone(), win.nw.clone(), ws, c.into()]); // (B, h/ws, ws, w/ws, ws, C)
    let t = g.transpose(&t, &[0, 1, 3, 2, 4, 5]); // (B, h/ws, w/ws, ws, ws, C)
    g.reshape_to(&t, &[win.count.clone(), (win.ws * win.ws).into(), c.into()])
}

/// Inverse of [`partition`], cropped back to the unpadded (B, H·W, C) tokens.
fn unpartition(g: &mut Graph, x: &str, win: &Win, n: &Dim, c: usize) -> String {
    let ws = Dim::Fixed(win.ws);
    let t = g.reshape_to(x, &[win.b.clone(), win.nh.clone(), win.nw.clone(), ws.clone(), ws, c.into()]); // (B, h/ws, w/ws, ws, ws, C)
    let t = g.transpose(&t, &[0, 1, 3, 2, 4, 5]); // (B, h/ws, ws, w/ws, ws, C)
    let t = g.reshape_to(&t, &[win.b.clone(), win.hp.clone(), win.wp.clone(), c.into()]); // (B, H_, W_, C)
    let t = if win.hp != win.h { g.slice_to(&t, 1, &0.into(), &win.h) } else { t };
    let t = if win.wp != win.w { g.slice_to(&t, 2, &0.into(), &win.w) } else { t };
    g.reshape_to(&t, &[win.b.clone(), n.clone(), c.into()]) // (B, N, C)
}

/// Zero-pad a (B, h, w, C) map at the bottom/right to (B, hp, wp, C).
fn pad_hw(g: &mut Graph, x: &str, win: &Win) -> String {
    if win.hp == win.h && win.wp == win.w {
        return x.to_string();
    }
    let dh = g.dim_sub(&win.hp, &win.h);
    let dw = g.dim_sub(&win.wp, &win.w);
    let z = Dim::Fixed(0);
    let pads = g.shape_tensor(&[z.clone(), z.clone(), z.clone(), z.clone(), z.clone(), dh, dw, z]);
    g.op("Pad", &[x, &pads], vec![])
}

fn vit_attention(g: &mut Graph, x: &str, i: usize, cx: &Ctx) -> Result<String, OnnxError> {
    let cfg = cx.cfg;
    let lv = &cx.lv;
    let c = cfg.embed_dim;
    let key = format!("blocks.{i}.attn");
    let heads = cfg.num_heads;
    let hd = c / heads;
    let scale = (hd as f64).powf(-0.5) as f32;
    let qkv = g.linear(x, &format!("{key}.qkv"))?; // (B, N, 3C)
    let out = if cfg.window_attn[i] {
        let wl = Win::new(g, lv, cfg.window_size[i].unwrap_or(14));
        let m = g.reshape_to(&qkv, &[lv.b.clone(), lv.h.clone(), lv.w.clone(), (3 * c).into()]); // (B, H, W, 3C)
        let m = pad_hw(g, &m, &wl); // (B, H_, W_, 3C), zero q/k/v in the padding
        let win = partition(g, &m, &wl, 3 * c);
        let a = Sdpa { bn: wl.count.clone(), n: (wl.ws * wl.ws).into(), heads, hd, scale, prescale: false, bias: None };
        let o = sdpa(g, &win, &a);
        unpartition(g, &o, &wl, &lv.n(), c)
    } else {
        sdpa(g, &qkv, &Sdpa { bn: lv.b.clone(), n: lv.n(), heads, hd, scale, prescale: false, bias: None })
    };
    g.linear(&out, &format!("{key}.proj"))
}

/// BEiT relative position bias (heads, ws², ws²), gathered in the graph from the block's
/// table (side², heads) by the relative-position index of `ws` (one initializer shared by
/// every block of that window size): the file holds the table, never the expanded bias
/// (16 × 3136² floats, 630 MB, per 56-window block of BEiT-comer-L). Upstream's beit.py
/// does the same gather in its forward; ONNX Runtime folds it once at session load.
fn rel_pos_bias(g: &mut Graph, key: &str, ws: usize, heads: usize) -> Result<String, OnnxError> {
    let side = 2 * ws - 1;
    let n = ws * ws;
    let table = g.param(&format!("{key}.relative_position_bias_table"), Some(&[side * side, heads]))?;
    let index = g.named_i64(&format!("relative_position_index_{ws}"), &[n, n], || crate::model::vit::relative_position_index(ws));
    let b = g.op("Gather", &[&table, &index], vec![attr_i("axis", 0)]); // (N, N, heads)
    Ok(g.op("Transpose", &[&b], vec![attr_ints("perm", &[2, 0, 1])])) // (heads, N, N)
}

fn beit_attention(g: &mut Graph, x: &str, i: usize, cx: &Ctx) -> Result<String, OnnxError> {
    let cfg = cx.cfg;
    let lv = &cx.lv;
    let c = cfg.embed_dim;
    let key = format!("blocks.{i}.attn");
    let heads = cfg.num_heads;
    let (wshape, wq) = g.weights.get(&format!("{key}.qkv.weight"), None)?;
    if wshape.len() != 2 || wshape[0] % (3 * heads) != 0 {
        return Err(OnnxError::WeightShape { key: format!("{key}.qkv.weight"), expected: vec![3 * c, c], got: wshape });
    }
    let all = wshape[0] / 3;
    let hd = all / heads;
    let bias = if g.weights.has(&format!("{key}.q_bias")) {
        let (_, qb) = g.weights.get(&format!("{key}.q_bias"), Some(&[all]))?;
        let (_, vb) = g.weights.get(&format!("{key}.v_bias"), Some(&[all]))?;
        Some(qb.iter().copied().chain(std::iter::repeat_n(0.0, all)).chain(vb).collect::<Vec<f32>>())
    } else {
        None
    };
    let scale = cfg.qk_scale.unwrap_or((hd as f64).powf(-0.5)) as f32;
    let ws = cfg.window_size[i].unwrap_or(14);
    let relb = rel_pos_bias(g, &key, ws, heads)?;
    let out = if cfg.window_attn[i] {
        let wl = Win::new(g, lv, ws);
        let m = g.reshape_to(x, &[lv.b.clone(), lv.h.clone(), lv.w.clone(), c.into()]); // (B, H, W, C)
        let m = pad_hw(g, &m, &wl); // zero tokens before qkv
        let win = partition(g, &m, &wl, c);
        let qkv = g.linear_with(&win, &format!("{key}.qkv"), &wshape, &wq, bias.as_deref())?;
        let a = Sdpa { bn: wl.count.clone(), n: (ws * ws).into(), heads, hd, scale, prescale: true, bias: Some(&relb) };
        let o = sdpa(g, &qkv, &a);
        let o = g.linear(&o, &format!("{key}.proj"))?;
        unpartition(g, &o, &wl, &lv.n(), c)
    } else {
        // A global block's table fixes the token grid (upstream's beit.py builds the bias for
        // its window_size only): exportable at that grid alone, so never --dynamic.
        let grid = match (lv.h.fixed(), lv.w.fixed()) {
            (Some(h), Some(w)) => format!("the token grid is {h}×{w}"),
            _ => "the input size is --dynamic".to_string(),
        };
        if lv.n().fixed() != Some(ws * ws) {
            return Err(g.node_error(
                "Add",
                format!("global BEiT block {i} has a {ws}×{ws} relative-position table but {grid}; export at --input-size {}x{}", ws * 16, ws * 16),
            ));
        }
        let qkv = g.linear_with(x, &format!("{key}.qkv"), &wshape, &wq, bias.as_deref())?;
        let o = sdpa(g, &qkv, &Sdpa { bn: lv.b.clone(), n: lv.n(), heads, hd, scale, prescale: true, bias: Some(&relb) });
        g.linear(&o, &format!("{key}.proj"))?
    };
    Ok(out)
}
