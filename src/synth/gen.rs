//! Deterministic random float weights for synthetic bundles. Every block of a tensor (a run of
//! rows, or one expert matrix) has its own ChaCha8 stream keyed by SHA-256(seed, tensor name,
//! block index), so the values do not depend on thread count or write order, and the float source
//! and the quantized bundle of one seed hold the same weights. Normals use the Marsaglia polar
//! method in f32 (bit-identical across runs on one platform; libm's `logf` may differ elsewhere).
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
    spare: Option<f32>,
}

impl BlockRng {
    pub fn new(seed: u64, name: &str, block: u64) -> Self {
        let mut h = Sha256::new();
        h.update(b"zaya-synth/v1\0");
        h.update(seed.to_le_bytes());
        h.update(block.to_le_bytes());
        h.update(name.as_bytes());
        let key: [u8; 32] = h.finalize().into();
        BlockRng { rng: ChaCha8Rng::from_seed(key), spare: None }
    }

    /// Uniform in [−1, 1) with 24-bit resolution.
    fn uniform_pm1(&mut self) -> f32 {
        (self.rng.next_u32() >> 8) as f32 * (1.0 / (1u32 << 23) as f32) - 1.0
    }

    /// A standard normal draw.
    pub fn normal(&mut self) -> f32 {
        if let Some(z) = self.spare.take() {
            return z;
        }
        loop {
            let u = self.uniform_pm1();
            let v = self.uniform_pm1();
            let s = u * u + v * v;
            if s < 1.0 && s > 0.0 {
                let f = (-2.0 * s.ln() / s).sqrt();
                self.spare = Some(v * f);
                return u * f;
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
            Init::BalancingBiases { std, skip } => {
                for (k, v) in out.iter_mut().enumerate() {
                    *v = if skip && offset + k == total - 1 { -1.0 } else { self.normal() * std };
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
