//! The TurboQuant Lloyd-Max codebook: float64 levels for one coordinate of a uniformly random unit
//! vector, computed with numpy's operation order (trapezoid rule, pairwise summation, `linspace`) so
//! that the f32 cast matches the reference sidecar bit for bit.
use crate::ext::sys::lgamma_r;

fn lgamma(x: f64) -> f64 {
    let mut sign: std::os::raw::c_int = 0;
    // SAFETY: lgamma_r only writes the sign through the valid pointer we pass.
    unsafe { lgamma_r(x, &mut sign) }
}

/// numpy's pairwise summation of a contiguous float64 array (8 accumulators up to 128 elements,
/// recursive halving above), as used by `np.add.reduce` / `ndarray.sum`.
fn pairwise_sum(a: &[f64]) -> f64 {
    let n = a.len();
    if n < 8 {
        let mut r = 0.0;
        for &v in a {
            r += v;
        }
        r
    } else if n <= 128 {
        let mut r = [0f64; 8];
        r.copy_from_slice(&a[..8]);
        let mut i = 8;
        while i < n - (n % 8) {
            for k in 0..8 {
                r[k] += a[i + k];
            }
            i += 8;
        }
        let mut res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
        while i < n {
            res += a[i];
            i += 1;
        }
        res
    } else {
        let mut n2 = n / 2;
        n2 -= n2 % 8;
        pairwise_sum(&a[..n2]) + pairwise_sum(&a[n2..])
    }
}

/// `np.sum` of a float64 array: the identity 0 plus the pairwise sum.
fn np_sum(a: &[f64]) -> f64 {
    0.0 + pairwise_sum(a)
}

/// `np.trapezoid(y, x)`: sum of `(x[k+1]-x[k]) * (y[k+1]+y[k]) / 2.0`.
fn trapezoid(y: &[f64], x: &[f64], scratch: &mut Vec<f64>) -> f64 {
    scratch.clear();
    scratch.extend((0..x.len().saturating_sub(1)).map(|k| (x[k + 1] - x[k]) * (y[k + 1] + y[k]) / 2.0));
    np_sum(scratch)
}

/// `np.linspace(start, stop, num)` (endpoint included): `i * step + start`, last = stop.
fn linspace(start: f64, stop: f64, num: usize) -> Vec<f64> {
    if num == 0 {
        return vec![];
    }
    if num == 1 {
        return vec![start];
    }
    let step = (stop - start) / (num - 1) as f64;
    let mut y: Vec<f64> = (0..num).map(|i| i as f64 * step + start).collect();
    y[num - 1] = stop;
    y
}

/// Grid points of the codebook integral.
const CODEBOOK_GRID: usize = 10_000;
/// Maximum Lloyd-Max iterations.
const CODEBOOK_ITERS: usize = 200;

/// Lloyd-Max codebook for one coordinate of a uniformly random unit vector in R^dim
/// (density ∝ (1−x²)^((dim−3)/2) on [−1, 1]), 2^bits levels, ascending, in float64
/// (docs/bundle-format.md §3.3). Follows the reference algorithm step for step: trapezoid rule on
/// 10000 points, start evenly spaced on [−3/√dim, 3/√dim], boundaries at midpoints, each level
/// the conditional mean of its cell (a cell with ≤ 1 grid point keeps its level), stop when
/// `np.allclose(old, new, rtol=1e-5, atol=1e-10)` (keeping the old levels) or after 200 iterations.
///
/// The f32 cast of the result ([`codebook_f32`]) equals the reference sidecar bit for bit; the
/// float64 values can differ from numpy's in the last bit or two because libm's exp/log/lgamma
/// are not numpy's SIMD ones.
pub fn compute_codebook(dim: usize, bits: u32) -> Vec<f64> {
    if bits < 1 {
        return vec![0.0];
    }
    let n_codes = 1usize << bits;
    let grid = linspace(-1.0, 1.0, CODEBOOK_GRID);
    let mut pdf: Vec<f64> = if dim <= 2 {
        vec![0.5; grid.len()]
    } else {
        let d = dim as f64;
        let log_const = lgamma(d / 2.0) - 0.5 * std::f64::consts::PI.ln() - lgamma((d - 1.0) / 2.0);
        let power = (dim as f64 - 3.0) / 2.0;
        grid.iter()
            .map(|&x| {
                let safe = (1.0 - x * x).max(1e-30);
                (log_const + power * safe.ln()).exp()
            })
            .collect()
    };
    let mut scratch = Vec::with_capacity(grid.len());
    let total = trapezoid(&pdf, &grid, &mut scratch);
    if total > 0.0 {
        for p in pdf.iter_mut() {
            *p /= total;
        }
    }
    let xpdf: Vec<f64> = grid.iter().zip(&pdf).map(|(x, p)| x * p).collect();

    let support = 3.0 / (dim.max(1) as f64).sqrt();
    let mut centroids = linspace(-support, support, n_codes);
    let mut boundaries = vec![0f64; n_codes + 1];
    let mut next = vec![0f64; n_codes];
    for _ in 0..CODEBOOK_ITERS {
        boundaries[0] = -1.0;
        boundaries[n_codes] = 1.0;
        for i in 0..n_codes - 1 {
            boundaries[i + 1] = (centroids[i] + centroids[i + 1]) / 2.0;
        }
        for i in 0..n_codes {
            let (lo, hi) = (boundaries[i], boundaries[i + 1]);
            // The grid is sorted, so the cell mask is a contiguous index range.
            let start = grid.partition_point(|&g| g < lo);
            let end = if i == n_codes - 1 {
                grid.partition_point(|&g| g <= hi)
            } else {
                grid.partition_point(|&g| g < hi)
            };
            if end <= start + 1 {
                next[i] = centroids[i];
                continue;
            }
            let gx = &grid[start..end];
            let mass = trapezoid(&pdf[start..end], gx, &mut scratch);
            let moment = trapezoid(&xpdf[start..end], gx, &mut scratch);
            next[i] = moment / mass.max(1e-10);
        }
        let close = centroids
            .iter()
            .zip(&next)
            .all(|(a, b)| (a - b).abs() <= 1e-10 + 1e-5 * b.abs());
        if close {
            break;
        }
        centroids.copy_from_slice(&next);
    }
    centroids.sort_by(f64::total_cmp);
    centroids
}

/// The sidecar codebook `codebook.{dim}.{bits}`: [`compute_codebook`] cast to f32.
pub fn codebook_f32(dim: usize, bits: u32) -> Vec<f32> {
    compute_codebook(dim, bits).into_iter().map(|v| v as f32).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairwise_sum_small_and_blocked() {
        let a: Vec<f64> = (0..300).map(|i| i as f64).collect();
        assert_eq!(np_sum(&a), 44850.0);
        assert_eq!(np_sum(&a[..5]), 10.0);
        assert_eq!(np_sum(&[]), 0.0);
    }
}
