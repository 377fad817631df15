//! The randomized Hadamard rotation of TurboQuant: the in-place fast Walsh-Hadamard transform
//! (Sylvester order), the power-of-two block split of a dimension, and R(x) = H·(s ⊙ x)/√d.
use crate::error::{Result, ZayaError};

/// Unnormalized in-place Walsh-Hadamard transform in Sylvester (natural) order; `x.len()` must
/// be a power of two. Stage h = 1, 2, 4, …: each pair (a at i, b at i+h) → (a+b, a−b).
pub fn fwht_inplace(x: &mut [f32]) {
    let n = x.len();
    debug_assert!(n.is_power_of_two());
    let mut h = 1;
    if n >= 8 {
        // stages 1, 2, 4 fused per 8-element chunk (same additions in the same order)
        for c in x.chunks_exact_mut(8) {
            let mut v = [0f32; 8];
            v.copy_from_slice(c);
            for step in [1, 2, 4] {
                for base in (0..8).step_by(2 * step) {
                    for i in base..base + step {
                        let (p, q) = (v[i], v[i + step]);
                        v[i] = p + q;
                        v[i + step] = p - q;
                    }
                }
            }
            c.copy_from_slice(&v);
        }
        h = 8;
    }
    while h < n {
        for block in x.chunks_exact_mut(2 * h) {
            let (a, b) = block.split_at_mut(h);
            for (p, q) in a.iter_mut().zip(b.iter_mut()) {
                let (s, d) = (*p + *q, *p - *q);
                *p = s;
                *q = d;
            }
        }
        h *= 2;
    }
}

/// Power-of-two blocks of a dimension, largest first (1536 → [1024, 512]).
pub fn hadamard_blocks(dim: usize) -> Vec<usize> {
    let mut blocks = Vec::new();
    let mut rest = dim;
    while rest > 0 {
        let p = 1usize << (usize::BITS - 1 - rest.leading_zeros());
        blocks.push(p);
        rest -= p;
    }
    blocks
}

/// R(x) = H·(s ⊙ x)/√d in place, block-wise for non-power-of-two lengths (each block with its
/// slice of `signs` and its own 1/√block scale). f32 throughout, in the reference's order.
pub fn hadamard_rotate_inplace(x: &mut [f32], signs: &[f32]) -> Result<()> {
    if x.len() != signs.len() {
        return Err(ZayaError::InvalidArgument(format!(
            "hadamard rotation: vector of length {} with {} signs",
            x.len(),
            signs.len()
        )));
    }
    rotate_blocks(x, signs, &hadamard_blocks(x.len()));
    Ok(())
}

pub(super) fn rotate_blocks(x: &mut [f32], signs: &[f32], blocks: &[usize]) {
    let mut off = 0;
    for &b in blocks {
        let seg = &mut x[off..off + b];
        for (v, s) in seg.iter_mut().zip(&signs[off..off + b]) {
            *v *= *s;
        }
        fwht_inplace(seg);
        let scale = (1.0f64 / (b as f64).sqrt()) as f32;
        for v in seg.iter_mut() {
            *v *= scale;
        }
        off += b;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tools::encode::random_signs;

    #[test]
    fn hadamard_is_orthonormal_and_self_inverse() {
        let signs = random_signs(96, 3); // 64 + 32 blocks
        let x: Vec<f32> = (0..96).map(|i| ((i * 37 % 11) as f32 - 5.0) * 0.1).collect();
        let mut y = x.clone();
        hadamard_rotate_inplace(&mut y, &signs).unwrap();
        let nx: f32 = x.iter().map(|v| v * v).sum();
        let ny: f32 = y.iter().map(|v| v * v).sum();
        assert!((nx - ny).abs() < 1e-4 * nx);
        // inverse: s ⊙ H(y)
        let mut off = 0;
        for b in hadamard_blocks(96) {
            fwht_inplace(&mut y[off..off + b]);
            for i in off..off + b {
                y[i] *= signs[i] / (b as f32).sqrt();
            }
            off += b;
        }
        for (a, b) in x.iter().zip(&y) {
            assert!((a - b).abs() < 1e-5);
        }
        assert!(hadamard_rotate_inplace(&mut [0.0; 3], &[1.0; 4]).is_err());
    }

    #[test]
    fn hadamard_matches_matrix_definition() {
        // H[i,j] = (-1)^popcount(i&j) / sqrt(d), f64 loop.
        let d: usize = 16;
        let x: Vec<f32> = (0..d).map(|i| (i as f32 * 0.7).sin()).collect();
        let mut y = x.clone();
        fwht_inplace(&mut y);
        for (i, &yi) in y.iter().enumerate() {
            let e: f64 = (0..d)
                .map(|j| {
                    if (i & j).count_ones() % 2 == 0 {
                        x[j] as f64
                    } else {
                        -(x[j] as f64)
                    }
                })
                .sum();
            assert!((e - yi as f64).abs() < 1e-5, "{i}: {e} vs {yi}");
        }
    }
}
