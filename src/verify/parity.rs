//! `verify/parity.rs`: mapping parity, verify check (a) of issue 5.
//!
//! Runs the source family's own forward (`families/<family>.rs`) and the imported artifact's ViT
//! branch with every CTI injection off (`target_vit.rs`) on deterministic seeded images (the
//! grids are `artifact.rs`'s choice), and reports max abs / relative error and cosine
//! similarity per input against a stated bound. When an input fails, the per-block taps name
//! the first block where the two sides part. Both models stream block by block
//! ([`LazyVit`]): a block is read from the mapped file, run on every input (inputs on one
//! grid as one batch) and dropped, so neither model is ever held whole.

use candle_core::{Device, Tensor};

use super::compare::{Check, Report};
use super::error::VerifyError;
use super::target_vit::{TargetFlavour, target_lazy};
use crate::families::{Family, SourceConfig};
use crate::model::plain_vit::{Block, LazyVit, VitError, Weights};

/// Result of the verify runners.
pub type Result<T> = std::result::Result<T, VerifyError>;

/// Deterministic values in about [-2, 2] from a SplitMix64 stream (same on every platform).
pub fn seeded_values(seed: u64, n: usize) -> Vec<f32> {
    let mut state = seed;
    (0..n)
        .map(|_| {
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            // Top 24 bits → [0, 1) exactly representable in f32, then to [-2, 2).
            ((z >> 40) as f32 / (1u64 << 24) as f32) * 4.0 - 2.0
        })
        .collect()
}

/// Two seeded `(1, 3, H, W)` images: `(h, w)` (the parity grid's pixels) and a non-square second size
/// (`1.5 h` by `2 w`, rounded down to whole patches), named `image{h}x{w}`.
pub fn seeded_images(
    seed: u64,
    (h, w): (usize, usize),
    patch: usize,
) -> Result<Vec<(String, Tensor)>> {
    let p = patch.max(1);
    let h2 = (h * 3 / 2 / p).max(1) * p;
    let w2 = (w * 2 / p).max(1) * p;
    let mut out = Vec::with_capacity(2);
    for (i, (hh, ww)) in [(h, w), (h2, w2)].into_iter().enumerate() {
        let data = seeded_values(seed.wrapping_add(i as u64), 3 * hh * ww);
        out.push((
            format!("image{hh}x{ww}"),
            Tensor::from_vec(data, (1, 3, hh, ww), &Device::Cpu)?,
        ));
    }
    Ok(out)
}

/// One seeded `(1, 3, h, w)` image.
pub fn seeded_image(seed: u64, (h, w): (usize, usize)) -> Result<Tensor> {
    Ok(Tensor::from_vec(seeded_values(seed, 3 * h * w), (1, 3, h, w), &Device::Cpu)?)
}

/// The source side of a parity run: the family, the source's own config, its tensors.
pub struct SourceSide<'a> {
    /// The source family (its forward).
    pub family: &'a dyn Family,
    /// The source's config (head count, eps, activation) as its detector read it.
    pub config: &'a SourceConfig,
    /// The source's tensors (wrapper stripped).
    pub weights: &'a Weights,
}

/// The artifact side of a parity run.
pub struct TargetSide<'a> {
    /// The artifact's layout.
    pub flavour: TargetFlavour,
    /// The artifact's tensors.
    pub weights: &'a Weights,
    /// The artifact's head count.
    pub num_heads: usize,
}

/// Compare the source forward with the artifact's ViT branch on each input, against `bound`
/// (relative, `policy::EXACT_BOUND` for exact mappings). A failing check names the first
/// block whose output parts. Both models are streamed block by block ([`LazyVit`]).
pub fn mapping_parity(
    source: &SourceSide,
    target: &TargetSide,
    inputs: &[(String, Tensor)],
    bound: f64,
) -> Result<Report> {
    let pairs: Vec<(String, Tensor, Tensor)> = inputs.iter().map(|(n, t)| (n.clone(), t.clone(), t.clone())).collect();
    let src = source.family.source_lazy(source.weights, source.config)?;
    let taps = SourceTaps::of(&src, &pairs, &mut |_, _| Ok(()))?;
    let tgt = match target_lazy(target.flavour, target.weights, target.num_heads) {
        Ok(t) => t,
        Err(e) => {
            let mut report = Report::default();
            report.push(artifact_failure("mapping parity", &e));
            return Ok(report);
        }
    };
    let set = TapSet { src: &taps, inputs: &pairs, bound, shared_patches: false };
    Ok(compare_taps(&[set], &tgt, &mut |_, _| {})?.pop().unwrap_or_default())
}

/// What is done to block `j` of a streamed model after it is read and before it runs (BEiT's
/// tables cropped to the parity grid).
pub type BlockFix<'a> = dyn FnMut(usize, &mut Block) -> Result<()> + 'a;

/// Where a streamed forward starts: an image (through the model's own patch embedding) or
/// patch tokens `(B, N, C)` of a grid (another model's patch embedding).
pub enum Start<'a> {
    /// A `(B, 3, H, W)` image.
    Image(&'a Tensor),
    /// Patch tokens and their grid.
    Patches(&'a Tensor, (usize, usize)),
}

/// The taps (after the stem, then after every block) of `vit` for every start, streamed:
/// each block is read once, run on every start, and dropped before the next is read, so at
/// most one block's weights are held. Starts on the same grid run as one batch (one pass
/// over the block's weights, which is what a few tokens through a large model costs). `fix`
/// adjusts each block before it runs.
pub fn streamed_taps(vit: &LazyVit, starts: &[Start], fix: &mut BlockFix) -> Result<(Vec<Vec<Tensor>>, Vec<String>)> {
    let mut batches: Vec<Batch> = Vec::new();
    for (i, s) in starts.iter().enumerate() {
        let (t, grid) = match s {
            Start::Image(img) => vit.stem.patch_tokens(img)?,
            Start::Patches(p, grid) => ((*p).clone(), *grid),
        };
        let x = vit.stem.stem_from_patches(t, grid)?;
        let member = (i, x.dim(0)?);
        match batches.iter_mut().find(|b| b.grid == grid) {
            Some(b) => {
                b.members.push(member);
                b.x = Tensor::cat(&[&b.x, &x], 0)?; // (B, N, C)
            }
            None => batches.push(Batch { grid, members: vec![member], x }),
        }
    }
    let mut taps: Vec<Vec<Tensor>> = vec![Vec::with_capacity(vit.depth + 1); starts.len()];
    for b in &batches {
        b.record(&mut taps)?;
    }
    let mut names = Vec::with_capacity(vit.depth);
    for j in 0..vit.depth {
        let mut block = vit.block(j)?;
        fix(j, &mut block)?;
        for b in &mut batches {
            b.x = block.run(&b.x, b.grid)?;
            b.record(&mut taps)?;
        }
        names.push(block.name.clone());
    }
    Ok((taps, names))
}

/// The starts of [`streamed_taps`] on one grid, run as one batch.
struct Batch {
    grid: (usize, usize),
    /// Each start's index and batch size, in the order stacked in `x`.
    members: Vec<(usize, usize)>,
    /// Their tokens `(B, N, C)`.
    x: Tensor,
}

impl Batch {
    /// Append each member's slice of `x` to its taps.
    fn record(&self, taps: &mut [Vec<Tensor>]) -> Result<()> {
        let mut at = 0;
        for &(i, b) in &self.members {
            taps[i].push(self.x.narrow(0, at, b)?); // (b, N, C)
            at += b;
        }
        Ok(())
    }
}

/// The source forward's taps (embeddings, then after every block) on each input's source
/// image, and its block names: what a parity run keeps of the source side. The source is
/// streamed block by block, so its weights are never held whole.
pub struct SourceTaps {
    /// Per input, the taps.
    pub taps: Vec<Vec<Tensor>>,
    /// Per input, the source's patch tokens `(B, N, C)` and their grid.
    pub patches: Vec<(Tensor, (usize, usize))>,
    /// The source's block names, in order.
    pub blocks: Vec<String>,
}

impl SourceTaps {
    /// Run `src` on every input's source image, `fix` applied to each block as it is read.
    pub fn of(src: &LazyVit, inputs: &[(String, Tensor, Tensor)], fix: &mut BlockFix) -> Result<SourceTaps> {
        let mut patches = Vec::with_capacity(inputs.len());
        for (_, image, _) in inputs {
            patches.push(src.stem.patch_tokens(image)?);
        }
        let starts: Vec<Start> = patches.iter().map(|(p, g)| Start::Patches(p, *g)).collect();
        let (taps, blocks) = streamed_taps(src, &starts, fix)?;
        Ok(SourceTaps { taps, patches, blocks })
    }

    /// The taps of inputs `at..`, split off (one streamed pass serves several sets of inputs).
    pub fn split_off(&mut self, at: usize) -> SourceTaps {
        SourceTaps {
            taps: self.taps.split_off(at.min(self.taps.len())),
            patches: self.patches.split_off(at.min(self.patches.len())),
            blocks: self.blocks.clone(),
        }
    }
}

/// One set of inputs judged against the source's taps on them: the artifact's branch starts
/// from each input's target image, or with `shared_patches` from the source's own patch
/// tokens (what follows a changed patch kernel); held to `bound` (relative).
pub struct TapSet<'a> {
    /// The source's taps on these inputs.
    pub src: &'a SourceTaps,
    /// `(name, source image, target image)`.
    pub inputs: &'a [(String, Tensor, Tensor)],
    /// The relative bound.
    pub bound: f64,
    /// Start from the source's patch tokens instead of the target image.
    pub shared_patches: bool,
}

/// The artifact's ViT branch, streamed once over every set's inputs, against the source's
/// taps: one report per set. A failing check names the first block whose output parts; a
/// target-side error (a missing or mis-shaped tensor) fails every check, naming the tensor.
pub fn compare_taps(sets: &[TapSet], tgt: &LazyVit, fix: &mut dyn FnMut(usize, &mut Block)) -> Result<Vec<Report>> {
    let mut starts = Vec::new();
    for set in sets {
        for ((_, _, tgt_image), (patches, grid)) in set.inputs.iter().zip(&set.src.patches) {
            starts.push(if set.shared_patches { Start::Patches(patches, *grid) } else { Start::Image(tgt_image) });
        }
    }
    let streamed = streamed_taps(tgt, &starts, &mut |j, b| {
        fix(j, b);
        Ok(())
    });
    let mut got = match streamed {
        Ok((taps, _)) => Ok(taps.into_iter()),
        Err(VerifyError::Vit(e)) => Err(e),
        Err(e) => return Err(e),
    };
    let mut reports = Vec::with_capacity(sets.len());
    for set in sets {
        let mut report = Report::default();
        for ((name, _, _), a) in set.inputs.iter().zip(&set.src.taps) {
            let check_name = if set.shared_patches {
                format!("mapping parity {name} (source patch tokens)")
            } else {
                format!("mapping parity {name}")
            };
            let b = match &mut got {
                Ok(taps) => taps.next().unwrap_or_default(),
                Err(e) => {
                    report.push(artifact_failure(&check_name, e));
                    continue;
                }
            };
            let (Some(got), Some(exp)) = (b.last(), a.last()) else {
                continue;
            };
            let shape = exp.dims().to_vec();
            let mut check = Check::new(check_name, &shape, &flat(got)?, &flat(exp)?, set.bound);
            if got.dims() != exp.dims() {
                check.passed = false;
                check.note = Some(format!("artifact gives shape {:?}, source {:?}", got.dims(), exp.dims()));
            } else if !check.passed {
                check.note = first_parting_tap(a, &b, set.bound, &set.src.blocks)?;
            }
            report.push(check);
        }
        reports.push(report);
    }
    Ok(reports)
}

/// Every `p×p` patch of a `(1, 3, g·p, g·p')` image resized to `q×q` (antialiased bicubic, the
/// resize timm's FlexiViT pseudo-inverse kernel inverts): the image a `q`-pixel-patch model
/// must see to compute the same tokens as a `p`-pixel one (FlexiViT's identity
/// `<resize(x), pinv_resize(w)> = <x, w>`).
pub fn resize_patches(image: &Tensor, p: usize, q: usize) -> Result<Tensor> {
    let (b, c, h, w) = image.dims4()?;
    let (gh, gw) = (h / p, w / p);
    let src = image.flatten_all()?.to_vec1::<f32>()?;
    let mut out = vec![0f32; b * c * gh * q * gw * q];
    let (oh, ow) = (gh * q, gw * q);
    let mut patch = vec![0f32; p * p];
    for plane in 0..b * c {
        for gy in 0..gh {
            for gx in 0..gw {
                for y in 0..p {
                    for x in 0..p {
                        patch[y * p + x] = src[(plane * h + gy * p + y) * w + gx * p + x];
                    }
                }
                let r = crate::model::resize::bicubic_aa_plane(&patch, (p, p), (q, q));
                for y in 0..q {
                    for x in 0..q {
                        out[(plane * oh + gy * q + y) * ow + gx * q + x] = r[y * q + x] as f32;
                    }
                }
            }
        }
    }
    Ok(Tensor::from_vec(out, (b, c, oh, ow), image.device())?) // (B, 3, gh·q, gw·q)
}

/// A failed check for an artifact whose ViT branch cannot be built or run (a missing,
/// renamed or mis-shaped tensor): the error names the key.
pub fn artifact_failure(name: &str, e: &VitError) -> Check {
    Check::outcome(name, &[1], 1, Some(0), Some(format!("the artifact's ViT branch: {e}")))
}

/// Name of the first tap (`embed` after patch + position, then each block) where the sides part.
fn first_parting_tap(a: &[Tensor], b: &[Tensor], bound: f64, blocks: &[String]) -> Result<Option<String>> {
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        let c = Check::new("tap", x.dims(), &flat(y)?, &flat(x)?, bound);
        if !c.passed {
            let name = match i {
                0 => "embeddings".to_string(),
                _ => blocks.get(i - 1).cloned().unwrap_or_default(),
            };
            return Ok(Some(format!("first parts after {name}")));
        }
    }
    Ok(None)
}

fn flat(t: &Tensor) -> Result<Vec<f32>> {
    Ok(t.flatten_all()?.to_vec1::<f32>()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeded_values_are_deterministic_and_bounded() {
        let a = seeded_values(7, 1000);
        assert_eq!(a, seeded_values(7, 1000));
        assert_ne!(a, seeded_values(8, 1000));
        assert!(a.iter().all(|v| (-2.0..2.0).contains(v)));
        let mean: f32 = a.iter().sum::<f32>() / a.len() as f32;
        assert!(mean.abs() < 0.2);
    }

    /// A timm-named ViT (embed 8, 2 heads, depth 2, 4-pixel patches, a 2x2 position grid).
    fn tiny_timm() -> Weights {
        let d = 8;
        let mut t: Vec<(String, Vec<usize>)> =
            vec![("pos_embed".into(), vec![1, 5, d]), ("patch_embed.proj.weight".into(), vec![d, 3, 4, 4])];
        for i in 0..2 {
            t.extend(crate::formats::testkit::timm_block(i, d));
        }
        Weights::new(t.into_iter().enumerate().map(|(k, (name, shape))| {
            let n: usize = shape.iter().product();
            let v: Vec<f32> = seeded_values(k as u64, n).into_iter().map(|x| x * 0.2).collect();
            (name, Tensor::from_vec(v, shape, &Device::Cpu).expect("tensor"))
        }))
    }

    #[test]
    fn streamed_batched_taps_equal_the_whole_model_on_each_input() {
        let w = tiny_timm();
        let lazy = crate::model::plain_vit::lazy_timm(&w, 2, 1, ["ls1.gamma", "ls2.gamma"]).expect("lazy");
        let whole = crate::model::plain_vit::load_timm(&w, 2, 1, ["ls1.gamma", "ls2.gamma"]).expect("whole");
        // Two images on one grid (one batch) and one on another.
        let imgs = [seeded_image(1, (16, 16)).unwrap(), seeded_image(2, (16, 16)).unwrap(), seeded_image(3, (8, 16)).unwrap()];
        let starts: Vec<Start> = imgs.iter().map(Start::Image).collect();
        let mut fixed = Vec::new();
        let (taps, names) = streamed_taps(&lazy, &starts, &mut |j, _| {
            fixed.push(j);
            Ok(())
        })
        .expect("streamed");
        assert_eq!(fixed, [0, 1], "each block read and fixed once");
        assert_eq!(names, ["blocks.0", "blocks.1"]);
        for (img, got) in imgs.iter().zip(&taps) {
            let want = whole.forward_taps(img).expect("forward");
            assert_eq!(got.len(), want.len());
            for (a, b) in got.iter().zip(&want) {
                assert_eq!(a.dims(), b.dims());
                let c = Check::new("tap", a.dims(), &flat(a).unwrap(), &flat(b).unwrap(), 1e-6);
                assert!(c.passed, "max rel {:e}", c.figures.max_rel);
            }
        }
    }

    #[test]
    fn seeded_images_pretrain_and_non_square() {
        let imgs = seeded_images(0, (64, 64), 16).unwrap();
        assert_eq!(imgs[0].0, "image64x64");
        assert_eq!(imgs[1].0, "image96x128");
        assert_eq!(imgs[1].1.dims(), &[1, 3, 96, 128]);
    }
}
