//! Deterministic random float weights for synthetic bundles. Every block of a tensor (a run of
//! rows, or one expert matrix) has its own ChaCha8 stream keyed by SHA-256(seed, tensor name,
//! block index), so the values do not depend on thread count or write order, and the float source
//! and the quantized bundle of one seed hold the same weights. Normals come from a 128-layer
//! ziggurat (Marsaglia & Tsang) with the layer and the value drawn from separate bits; its tables
//! and rare tail/wedge steps use libm, so values are reproducible on one platform.
use std::sync::OnceLock;

use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sha2::{Digest, Sha256};

use super::plan::Init;

/// Elements per generation block of a regular tensor.
pub const BLOCK_ELEMS: usize = 1 << 20;

/// Rows per generation block for a tensor with `cols` columns.
pub fn rows_per_block(cols: usize) -> usize {
    (BLOCK_ELEMS / cols.max(1)).max(1)
}

/// Number of generation blocks of a [rows, cols] tensor.
pub fn num_blocks(rows: usize, cols: usize) -> usize {
    rows.div_ceil(rows_per_block(cols)).max(1)
}

/// The random stream of one block.
pub struct BlockRng {
    rng: ChaCha8Rng,
}

/// Rightmost layer edge of the 128-layer normal ziggurat.
const ZIG_R: f64 = 3.442_619_855_899;
/// Area of each layer (and of the base strip with its tail).
const ZIG_V: f64 = 9.912_563_035_262_17e-3;

/// Ziggurat tables: `k` acceptance thresholds on |j| (j a signed 32-bit draw), `w` = x-edge / 2^31,
/// `f` = density at the x-edges.
struct Ziggurat {
    k: [u64; 128],
    w: [f64; 128],
    f: [f64; 128],
}

fn ziggurat() -> &'static Ziggurat {
    static Z: OnceLock<Ziggurat> = OnceLock::new();
    Z.get_or_init(|| {
        let m = 2f64.powi(31);
        let mut z = Ziggurat {
            k: [0; 128],
            w: [0.0; 128],
            f: [0.0; 128],
        };
        let mut d = ZIG_R;
        let mut t = d;
        let q = ZIG_V / (-0.5 * d * d).exp();
        z.k[0] = ((d / q) * m) as u64;
        z.k[1] = 0;
        z.w[0] = q / m;
        z.w[127] = d / m;
        z.f[0] = 1.0;
        z.f[127] = (-0.5 * d * d).exp();
        for i in (1..127).rev() {
            d = (-2.0 * (ZIG_V / d + (-0.5 * d * d).exp()).ln()).sqrt();
            z.k[i + 1] = ((d / t) * m) as u64;
            t = d;
            z.f[i] = (-0.5 * d * d).exp();
            z.w[i] = d / m;
        }
        z
    })
}

impl BlockRng {
    pub fn new(seed: u64, name: &str, block: u64) -> Self {
        let mut h = Sha256::new();
        h.update(b"zaya-synth/v1\0");
        h.update(seed.to_le_bytes());
        h.update(block.to_le_bytes());
        h.update(name.as_bytes());
        let key: [u8; 32] = h.finalize().into();
        BlockRng {
            rng: ChaCha8Rng::from_seed(key),
        }
    }

    /// Uniform in [−1, 1) with 24-bit resolution.
    fn uniform_pm1(&mut self) -> f32 {
        (self.rng.next_u32() >> 8) as f32 * (1.0 / (1u32 << 23) as f32) - 1.0
    }

    /// Uniform in (0, 1].
    fn uniform_01(&mut self) -> f64 {
        ((self.rng.next_u64() >> 11) + 1) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// A standard normal draw (ziggurat).
    pub fn normal(&mut self) -> f32 {
        let z = ziggurat();
        loop {
            let r = self.rng.next_u64();
            let layer = ((r >> 32) & 127) as usize;
            let j = r as u32 as i32;
            let x = j as f64 * z.w[layer];
            if (j.unsigned_abs() as u64) < z.k[layer] {
                return x as f32;
            }
            if layer == 0 {
                // tail beyond R: Marsaglia's exponential rejection
                loop {
                    let a = -self.uniform_01().ln() / ZIG_R;
                    let b = -self.uniform_01().ln();
                    if 2.0 * b >= a * a {
                        return (if j > 0 { ZIG_R + a } else { -(ZIG_R + a) }) as f32;
                    }
                }
            }
            // wedge: accept under the density
            if z.f[layer] + self.uniform_01() * (z.f[layer - 1] - z.f[layer]) < (-0.5 * x * x).exp() {
                return x as f32;
            }
        }
    }

    /// Fills `out` with the next values of `init`; `offset` is the flat index of `out[0]` in the
    /// tensor (only [`Init::BalancingBiases`] looks at positions).
    pub fn fill(&mut self, out: &mut [f32], init: Init, offset: usize, total: usize) {
        match init {
            Init::Normal { std } => out.iter_mut().for_each(|v| *v = self.normal() * std),
            Init::OnesNoise { std } => out.iter_mut().for_each(|v| *v = 1.0 + self.normal() * std),
            Init::Uniform { bound } => out.iter_mut().for_each(|v| *v = self.uniform_pm1() * bound),
            Init::CenteredRows { std, cols } => {
                out.iter_mut().for_each(|v| *v = self.normal() * std);
                for row in out.chunks_mut(cols.max(1)) {
                    let mean = row.iter().map(|&x| x as f64).sum::<f64>() / row.len() as f64;
                    row.iter_mut().for_each(|v| *v -= mean as f32);
                }
            }
            Init::BalancingBiases { std, skip } => {
                for (k, v) in out.iter_mut().enumerate() {
                    *v = if skip && offset + k == total - 1 {
                        -1.0
                    } else {
                        self.normal() * std
                    };
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_are_deterministic_and_distinct() {
        let mut a = BlockRng::new(7, "x", 0);
        let mut b = BlockRng::new(7, "x", 0);
        let mut c = BlockRng::new(7, "x", 1);
        let va: Vec<f32> = (0..16).map(|_| a.normal()).collect();
        let vb: Vec<f32> = (0..16).map(|_| b.normal()).collect();
        let vc: Vec<f32> = (0..16).map(|_| c.normal()).collect();
        assert_eq!(va, vb);
        assert_ne!(va, vc);
    }

    #[test]
    fn normal_moments() {
        let mut r = BlockRng::new(1, "moments", 0);
        let n = 200_000;
        let v: Vec<f64> = (0..n).map(|_| r.normal() as f64).collect();
        let mean = v.iter().sum::<f64>() / n as f64;
        let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n as f64;
        let kurt = v.iter().map(|x| (x - mean).powi(4)).sum::<f64>() / n as f64 / (var * var);
        // standard errors: mean 0.0022, var 0.0032, kurtosis ≈ 0.011
        assert!(mean.abs() < 0.01, "{mean}");
        assert!((var - 1.0).abs() < 0.015, "{var}");
        assert!((kurt - 3.0).abs() < 0.06, "{kurt}");
        // tails: P(|z| > 3) = 0.0027 (se 0.00012), P(|z| > 3.5) = 4.65e-4 (beyond the ziggurat edge)
        let p3 = v.iter().filter(|x| x.abs() > 3.0).count() as f64 / n as f64;
        let p35 = v.iter().filter(|x| x.abs() > 3.5).count() as f64 / n as f64;
        assert!((p3 - 0.0027).abs() < 0.0005, "{p3}");
        assert!((p35 - 4.65e-4).abs() < 2.5e-4, "{p35}");
        // quartiles: Φ⁻¹(0.75) = 0.6745
        let mut s = v.clone();
        s.sort_by(f64::total_cmp);
        assert!((s[3 * n / 4] - 0.6745).abs() < 0.01, "{}", s[3 * n / 4]);
    }

    #[test]
    fn balancing_biases_skip_route() {
        let mut r = BlockRng::new(1, "b", 0);
        let mut v = vec![0f32; 17];
        r.fill(&mut v, Init::BalancingBiases { std: 0.01, skip: true }, 0, 17);
        assert_eq!(v[16], -1.0);
        assert!(v[..16].iter().all(|x| x.abs() < 0.1));
    }
}
