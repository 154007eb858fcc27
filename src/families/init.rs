//! Fresh parameters for the target keys no source key feeds: upstream's `_init_weights`
//! (`vit_comer.py` / `beit_comer.py`), `MSDeformAttn._reset_parameters` (`ops/modules/
//! ms_deform_attn.py`) and the constant initialisers of LayerNorm, BatchNorm and `gamma`.
//!
//! Random schemes draw from a documented, platform-independent generator: one SplitMix64
//! stream per target key, seeded from (seed, FNV-1a of the key name), so the values of a key
//! never depend on which other keys exist or in which order they are produced. Normals come
//! from Marsaglia's polar method in f64 (both values of each accepted pair, in order: no
//! trigonometry, one logarithm per two values); the truncated normal rejects draws outside
//! [−2, 2] (absolute, as `torch.nn.init.trunc_normal_(std=…)` with its default bounds a=−2, b=2).

use crate::model::layout::Init;
use crate::model::vit::relative_position_index;

/// SplitMix64 (Steele, Lea & Flood 2014): small, fast, and fully specified.
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// A stream starting from state `seed`.
    pub fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }
    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in (0, 1): 53 random bits, never exactly 0.
    pub fn uniform(&mut self) -> f64 {
        ((self.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }
}

/// Standard normals from a [`SplitMix64`] stream by Marsaglia's polar method: draw (u, v)
/// uniform in the square (−1, 1)², keep the pair when 0 < s = u² + v² < 1, and return
/// u·√(−2 ln s / s) then v·√(−2 ln s / s).
pub struct Normals {
    rng: SplitMix64,
    spare: Option<f64>,
}

impl Normals {
    /// Normals drawn from `rng`.
    pub fn new(rng: SplitMix64) -> Self {
        Normals { rng, spare: None }
    }
    /// The next standard normal.
    pub fn sample(&mut self) -> f64 {
        if let Some(v) = self.spare.take() {
            return v;
        }
        loop {
            let u = 2.0 * self.rng.uniform() - 1.0;
            let v = 2.0 * self.rng.uniform() - 1.0;
            let s = u * u + v * v;
            if s > 0.0 && s < 1.0 {
                let m = (-2.0 * s.ln() / s).sqrt();
                self.spare = Some(v * m);
                return u * m;
            }
        }
    }
}

/// The stream for one target key.
pub fn stream(seed: u64, key: &str) -> SplitMix64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    let mut s = SplitMix64::new(seed ^ h);
    // Decorrelate neighbouring seeds.
    let mixed = s.next_u64();
    SplitMix64::new(mixed)
}

/// Values of `numel` elements for `init`, as f32 (the integers of `RelPosIndex` exactly, from
/// [`relative_position_index`]).
pub fn fill(init: &Init, numel: usize, seed: u64, key: &str) -> Vec<f32> {
    let mut rng = stream(seed, key);
    let mut normals = Normals::new(stream(seed, key));
    match *init {
        Init::Constant { value } => vec![value as f32; numel],
        Init::Normal { std } => (0..numel).map(|_| (normals.sample() * std) as f32).collect(),
        Init::TruncNormal { std } => (0..numel)
            .map(|_| loop {
                let x = normals.sample() * std;
                if (-2.0..=2.0).contains(&x) {
                    break x as f32;
                }
            })
            .collect(),
        Init::ConvFanOut { fan_out } => {
            let std = (2.0 / fan_out.max(1) as f64).sqrt();
            (0..numel).map(|_| (normals.sample() * std) as f32).collect()
        }
        Init::XavierUniform { fan_in, fan_out } => {
            let bound = (6.0 / (fan_in + fan_out).max(1) as f64).sqrt();
            (0..numel).map(|_| ((2.0 * rng.uniform() - 1.0) * bound) as f32).collect()
        }
        Init::OffsetGrid { heads, levels, points } => offset_grid(heads, levels, points),
        Init::RelPosIndex { window } => relative_position_index(window).into_iter().map(|v| v as f32).collect(),
    }
}

/// `MSDeformAttn` sampling-offset bias: head h points along θ = h·2π/H, the direction
/// (cos θ, sin θ) divided by its largest absolute component, point i scaled by i+1, the same
/// for every level. Computed in f32 like PyTorch. Layout (H, L, P, 2) flattened.
pub fn offset_grid(heads: usize, levels: usize, points: usize) -> Vec<f32> {
    let step = (2.0 * std::f64::consts::PI / heads as f64) as f32;
    let mut out = Vec::with_capacity(heads * levels * points * 2);
    for h in 0..heads {
        let theta = h as f32 * step;
        let (c, s) = (theta.cos(), theta.sin());
        let m = c.abs().max(s.abs());
        for _ in 0..levels {
            for p in 0..points {
                let k = (p + 1) as f32;
                out.push(c / m * k);
                out.push(s / m * k);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mean_std(v: &[f32]) -> (f64, f64) {
        let n = v.len() as f64;
        let m = v.iter().map(|&x| x as f64).sum::<f64>() / n;
        let var = v.iter().map(|&x| (x as f64 - m).powi(2)).sum::<f64>() / n;
        (m, var.sqrt())
    }

    #[test]
    fn streams_depend_on_seed_and_key_only() {
        let a = fill(&Init::Normal { std: 1.0 }, 16, 0, "level_embed");
        let b = fill(&Init::Normal { std: 1.0 }, 16, 0, "level_embed");
        let c = fill(&Init::Normal { std: 1.0 }, 16, 1, "level_embed");
        let d = fill(&Init::Normal { std: 1.0 }, 16, 0, "up.weight");
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_ne!(a, d);
    }

    #[test]
    fn random_schemes_have_their_moments() {
        let n = 200_000;
        let (m, s) = mean_std(&fill(&Init::TruncNormal { std: 0.02 }, n, 0, "t"));
        assert!(m.abs() < 3e-4 && (s - 0.02).abs() < 3e-4, "trunc {m} {s}");
        let v = fill(&Init::TruncNormal { std: 1.5 }, n, 0, "t2");
        assert!(v.iter().all(|x| x.abs() <= 2.0), "truncated at ±2");
        let (m, s) = mean_std(&fill(&Init::Normal { std: 1.0 }, n, 0, "n"));
        assert!(m.abs() < 0.01 && (s - 1.0).abs() < 0.01, "normal {m} {s}");
        let (m, s) = mean_std(&fill(&Init::ConvFanOut { fan_out: 288 }, n, 0, "c"));
        let want = (2.0f64 / 288.0).sqrt();
        assert!(m.abs() < 0.01 * want * 10.0 && (s / want - 1.0).abs() < 0.01, "conv {m} {s}");
        let v = fill(&Init::XavierUniform { fan_in: 384, fan_out: 384 }, n, 0, "x");
        let bound = (6.0f64 / 768.0).sqrt();
        let (m, s) = mean_std(&v);
        assert!(v.iter().all(|&x| (x as f64).abs() <= bound));
        assert!(m.abs() < 1e-3 && (s / (bound / 3f64.sqrt()) - 1.0).abs() < 0.01, "xavier {m} {s}");
    }

    #[test]
    fn offset_grid_is_upstreams_direction_grid() {
        let g = offset_grid(8, 3, 4);
        assert_eq!(g.len(), 8 * 3 * 4 * 2);
        // Head 0 points along +x: (1,0),(2,0),(3,0),(4,0) on every level.
        assert_eq!(&g[0..8], &[1.0, 0.0, 2.0, 0.0, 3.0, 0.0, 4.0, 0.0]);
        assert_eq!(&g[8..16], &g[0..8]);
        // Head 2 of 8 points along +y (cos ≈ 0): (≈0, 1) scaled.
        let h2 = 2 * 3 * 4 * 2;
        assert!(g[h2].abs() < 1e-6 && (g[h2 + 1] - 1.0).abs() < 1e-6);
        // Head 1 of 8: 45°, both components 1 after max-normalisation.
        let h1 = 3 * 4 * 2;
        assert!((g[h1] - 1.0).abs() < 1e-6 && (g[h1 + 1] - 1.0).abs() < 1e-6);
    }
}
