//! Our own encoders for the two quantized formats of a JANGTQ bundle, used by `zaya synth` and by
//! tests that need quantized tensors with a known float source:
//!
//! - **TurboQuant / MXTQ** (docs/bundle-format.md §3.3–§3.5): the sign vector (numpy
//!   `default_rng(seed).choice([-1.0, 1.0], size=in)`, reproduced bit for bit through our own
//!   SeedSequence → PCG64 → bounded-integer path), the Lloyd-Max codebook (the float64 loop of the
//!   reference, with numpy's trapezoid and pairwise-sum order), the randomized Hadamard rotation
//!   (in-place FWHT, Sylvester order), row norms, strict-`>` cell assignment and LSB-first packing.
//! - **MLX affine** (docs/bundle-format.md §2): per-group scale/bias exactly as `mx.quantize` computes
//!   them (bias = the group's min or max, whichever has the larger magnitude, so scales can be
//!   negative), f16 scales/biases, LSB-first packing.
//!
//! Everything here is plain Rust on host buffers (no MLX), so it is usable from threads.
use crate::ext::sys::lgamma_r;
use half::f16;

use crate::error::{Result, ZayaError};

// ---------------------------------------------------------------------------------------------
// numpy's SeedSequence + PCG64 (the bit generator behind `np.random.default_rng(seed)`)
// ---------------------------------------------------------------------------------------------

const SS_INIT_A: u32 = 0x43b0_d7e5;
const SS_MULT_A: u32 = 0x931e_8875;
const SS_INIT_B: u32 = 0x8b51_f9dd;
const SS_MULT_B: u32 = 0x58f3_8ded;
const SS_MIX_MULT_L: u32 = 0xca01_f9dd;
const SS_MIX_MULT_R: u32 = 0x4973_f715;
const SS_XSHIFT: u32 = 16;
const SS_POOL_SIZE: usize = 4;

/// numpy's `SeedSequence(entropy)` for an integer entropy and no spawn key: the 4-word pool.
fn seed_sequence_pool(entropy: u64) -> [u32; SS_POOL_SIZE] {
    // The integer is split into little-endian 32-bit words (at least one word).
    let mut words = Vec::new();
    let mut v = entropy;
    loop {
        words.push((v & 0xffff_ffff) as u32);
        v >>= 32;
        if v == 0 {
            break;
        }
    }
    let mut hash_const = SS_INIT_A;
    let mut hashmix = |value: u32| -> u32 {
        let mut v = value ^ hash_const;
        hash_const = hash_const.wrapping_mul(SS_MULT_A);
        v = v.wrapping_mul(hash_const);
        v ^ (v >> SS_XSHIFT)
    };
    let mix = |x: u32, y: u32| -> u32 {
        let r = SS_MIX_MULT_L
            .wrapping_mul(x)
            .wrapping_sub(SS_MIX_MULT_R.wrapping_mul(y));
        r ^ (r >> SS_XSHIFT)
    };
    let mut pool = [0u32; SS_POOL_SIZE];
    for (i, p) in pool.iter_mut().enumerate() {
        *p = hashmix(words.get(i).copied().unwrap_or(0));
    }
    for src in 0..SS_POOL_SIZE {
        for dst in 0..SS_POOL_SIZE {
            if src != dst {
                let h = hashmix(pool[src]);
                pool[dst] = mix(pool[dst], h);
            }
        }
    }
    for &w in words.iter().skip(SS_POOL_SIZE) {
        for p in pool.iter_mut() {
            let h = hashmix(w);
            *p = mix(*p, h);
        }
    }
    pool
}

/// numpy's `SeedSequence.generate_state(n_words)` as u32 words.
fn seed_sequence_state(pool: &[u32; SS_POOL_SIZE], n_words: usize) -> Vec<u32> {
    let mut hash_const = SS_INIT_B;
    (0..n_words)
        .map(|i| {
            let mut v = pool[i % SS_POOL_SIZE] ^ hash_const;
            hash_const = hash_const.wrapping_mul(SS_MULT_B);
            v = v.wrapping_mul(hash_const);
            v ^ (v >> SS_XSHIFT)
        })
        .collect()
}

const PCG_MULT: u128 = 0x2360_ed05_1fc6_5da4_4385_df64_9fcc_f645;

/// numpy's `PCG64` bit generator (128-bit LCG, XSL-RR output), including its buffered 32-bit
/// draws (the low half of a 64-bit output first, then the high half).
#[derive(Debug, Clone)]
pub struct Pcg64 {
    state: u128,
    inc: u128,
    pending_u32: Option<u32>,
}

impl Pcg64 {
    /// The generator of `np.random.default_rng(seed)` (= `PCG64(SeedSequence(seed))`).
    pub fn from_numpy_seed(seed: u64) -> Self {
        let w = seed_sequence_state(&seed_sequence_pool(seed), 8);
        let s: Vec<u64> = (0..4)
            .map(|i| u64::from(w[2 * i]) | (u64::from(w[2 * i + 1]) << 32))
            .collect();
        let initstate = (u128::from(s[0]) << 64) | u128::from(s[1]);
        let initseq = (u128::from(s[2]) << 64) | u128::from(s[3]);
        let mut g = Pcg64 {
            state: 0,
            inc: (initseq << 1) | 1,
            pending_u32: None,
        };
        g.step();
        g.state = g.state.wrapping_add(initstate);
        g.step();
        g
    }

    fn step(&mut self) {
        self.state = self.state.wrapping_mul(PCG_MULT).wrapping_add(self.inc);
    }

    /// Next 64-bit output (`bit_generator.random_raw()`).
    pub fn next_u64(&mut self) -> u64 {
        self.step();
        let hi = (self.state >> 64) as u64;
        let lo = self.state as u64;
        let rot = (self.state >> 122) as u32;
        (hi ^ lo).rotate_right(rot)
    }

    /// Next 32-bit output, buffered the way numpy's PCG64 does it.
    pub fn next_u32(&mut self) -> u32 {
        if let Some(v) = self.pending_u32.take() {
            return v;
        }
        let v = self.next_u64();
        self.pending_u32 = Some((v >> 32) as u32);
        v as u32
    }

    /// numpy's Lemire bounded draw in [0, range] (inclusive) for range < 2^32 - 1, the path
    /// `Generator.integers` takes for small populations.
    pub fn bounded_u32(&mut self, range: u32) -> u32 {
        debug_assert!(range != u32::MAX);
        let excl = u64::from(range) + 1;
        let mut m = u64::from(self.next_u32()) * excl;
        let mut leftover = m as u32;
        if u64::from(leftover) < excl {
            let threshold = ((u64::from(u32::MAX) - u64::from(range)) % excl) as u32;
            while leftover < threshold {
                m = u64::from(self.next_u32()) * excl;
                leftover = m as u32;
            }
        }
        (m >> 32) as u32
    }
}

/// The Hadamard sign vector `signs.{dim}.{seed}`: numpy's
/// `default_rng(seed).choice([-1.0, 1.0], size=dim)` as f32 (docs/bundle-format.md §3.4).
pub fn random_signs(dim: usize, seed: u64) -> Vec<f32> {
    let mut g = Pcg64::from_numpy_seed(seed);
    (0..dim)
        .map(|_| if g.bounded_u32(1) == 0 { -1.0 } else { 1.0 })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Lloyd-Max codebook (float64, numpy operation order)
// ---------------------------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------------------------
// Randomized Hadamard rotation and the TurboQuant row encoder
// ---------------------------------------------------------------------------------------------

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

fn rotate_blocks(x: &mut [f32], signs: &[f32], blocks: &[usize]) {
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

/// Codes per encoding chunk in [`TqEncoder::encode_row`].
const CHUNK: usize = 64;

/// The TurboQuant encoder of one `in_features` width: signs, codebook and cell boundaries.
#[derive(Debug, Clone)]
pub struct TqEncoder {
    in_features: usize,
    bits: u32,
    signs: Vec<f32>,
    codebook: Vec<f32>,
    midpoints: Vec<f32>,
    blocks: Vec<usize>,
}

/// Packed codes and f16 row norms of a TurboQuant-encoded matrix.
#[derive(Debug, Clone, PartialEq)]
pub struct TqEncoded {
    /// U32 [rows, packed_cols], codes LSB-first.
    pub packed: Vec<u32>,
    /// F16 [rows].
    pub norms: Vec<f16>,
}

impl TqEncoder {
    /// Encoder with the sidecar tables computed here: `signs.{in}.{seed}`, `codebook.{in}.{bits}`.
    pub fn new(in_features: usize, bits: u32, seed: u64) -> Result<Self> {
        Self::check(in_features, bits)?;
        Self::with_tables(
            in_features,
            bits,
            random_signs(in_features, seed),
            codebook_f32(in_features, bits),
        )
    }

    /// Encoder with given tables (e.g. read from a sidecar).
    pub fn with_tables(in_features: usize, bits: u32, signs: Vec<f32>, codebook: Vec<f32>) -> Result<Self> {
        Self::check(in_features, bits)?;
        if signs.len() != in_features {
            return Err(ZayaError::InvalidArgument(format!(
                "TurboQuant signs have {} entries, in_features is {in_features}",
                signs.len()
            )));
        }
        if codebook.len() != 1 << bits
            || codebook
                .windows(2)
                .any(|w| w[0].partial_cmp(&w[1]).is_none_or(|o| o.is_gt()))
        {
            return Err(ZayaError::InvalidArgument(format!(
                "TurboQuant codebook must have {} ascending entries, got {}",
                1 << bits,
                codebook.len()
            )));
        }
        let midpoints = codebook.windows(2).map(|w| (w[0] + w[1]) / 2.0).collect();
        Ok(TqEncoder {
            in_features,
            bits,
            blocks: hadamard_blocks(in_features),
            signs,
            codebook,
            midpoints,
        })
    }

    fn check(in_features: usize, bits: u32) -> Result<()> {
        if in_features == 0 {
            return Err(ZayaError::InvalidArgument(
                "TurboQuant in_features must be positive".into(),
            ));
        }
        if !(1..=8).contains(&bits) {
            return Err(ZayaError::InvalidArgument(format!(
                "TurboQuant bits must be 1..=8, got {bits}"
            )));
        }
        Ok(())
    }

    pub fn in_features(&self) -> usize {
        self.in_features
    }
    pub fn bits(&self) -> u32 {
        self.bits
    }
    pub fn signs(&self) -> &[f32] {
        &self.signs
    }
    pub fn codebook(&self) -> &[f32] {
        &self.codebook
    }
    /// Codes per U32 word (`32 / bits`, rounded down as the converter does).
    pub fn codes_per_word(&self) -> usize {
        32 / self.bits as usize
    }
    /// U32 words per row (rows zero-padded to whole words).
    pub fn packed_cols(&self) -> usize {
        self.in_features.div_ceil(self.codes_per_word())
    }

    /// R(row) in place.
    pub fn rotate(&self, row: &mut [f32]) {
        debug_assert_eq!(row.len(), self.in_features);
        rotate_blocks(row, &self.signs, &self.blocks);
    }

    /// Encodes one row: `row` (length in_features) is overwritten with its rotation, the codes go
    /// to `packed` (length packed_cols) and the f32 row norm is returned (stored as f16).
    ///
    /// Bit-exact with the reference on Linux: the squared norm is summed sequentially in f32 (as
    /// MLX's CPU reduction does), u = w_rot / max(n, 1e-10) is an f32 division, and the code is
    /// the number of f32 midpoints u exceeds.
    pub fn encode_row(&self, row: &mut [f32], packed: &mut [u32]) -> f32 {
        debug_assert_eq!(row.len(), self.in_features);
        debug_assert_eq!(packed.len(), self.packed_cols());
        self.rotate(row);
        let mut sq = 0f32;
        for &v in row.iter() {
            sq += v * v;
        }
        let norm = sq.sqrt();
        let safe = norm.max(1e-10);
        let per = self.codes_per_word();
        let bits = self.bits;
        // Chunks of whole words (≤ 64 codes) so the compare loops run on fixed-size arrays.
        let words_per_chunk = (CHUNK / per).max(1);
        let chunk = per * words_per_chunk;
        let mut u = [0f32; CHUNK];
        let mut codes = [0u8; CHUNK];
        for (vals, words) in row.chunks(chunk).zip(packed.chunks_mut(words_per_chunk)) {
            let n = vals.len();
            u.fill(0.0);
            for (d, &v) in u.iter_mut().zip(vals) {
                *d = v / safe;
            }
            codes.fill(0);
            for &m in &self.midpoints {
                for (c, &x) in codes.iter_mut().zip(u.iter()) {
                    *c += u8::from(x > m);
                }
            }
            for (word, cs) in words.iter_mut().zip(codes[..n].chunks(per)) {
                let mut acc = 0u32;
                let mut shift = 0u32;
                for &c in cs {
                    acc |= u32::from(c) << shift;
                    shift += bits;
                }
                *word = acc;
            }
        }
        norm
    }

    /// Encodes a row-major [rows, in_features] matrix.
    pub fn encode_matrix(&self, w: &[f32], rows: usize) -> Result<TqEncoded> {
        if w.len() != rows * self.in_features {
            return Err(ZayaError::InvalidArgument(format!(
                "TurboQuant encode: {} values for {rows} rows of {}",
                w.len(),
                self.in_features
            )));
        }
        let pc = self.packed_cols();
        let mut packed = vec![0u32; rows * pc];
        let mut norms = Vec::with_capacity(rows);
        let mut row = vec![0f32; self.in_features];
        for r in 0..rows {
            row.copy_from_slice(&w[r * self.in_features..(r + 1) * self.in_features]);
            let n = self.encode_row(&mut row, &mut packed[r * pc..(r + 1) * pc]);
            norms.push(f16::from_f32(n));
        }
        Ok(TqEncoded { packed, norms })
    }

    /// Dequantizes one packed row back to the original domain: s ⊙ (H · (n · C[codes]))/√d.
    pub fn dequantize_row(&self, packed: &[u32], norm: f32, out: &mut [f32]) {
        debug_assert_eq!(out.len(), self.in_features);
        let per = self.codes_per_word();
        let mask = (1u32 << self.bits) - 1;
        for (i, o) in out.iter_mut().enumerate() {
            let code = (packed[i / per] >> ((i % per) as u32 * self.bits)) & mask;
            *o = norm * self.codebook[code as usize];
        }
        let mut off = 0;
        for &b in &self.blocks {
            let seg = &mut out[off..off + b];
            fwht_inplace(seg);
            let scale = (1.0f64 / (b as f64).sqrt()) as f32;
            for (v, s) in seg.iter_mut().zip(&self.signs[off..off + b]) {
                *v *= scale * *s;
            }
            off += b;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// MLX affine
// ---------------------------------------------------------------------------------------------

/// Packed weight and f16 scales/biases of an affine-quantized matrix.
#[derive(Debug, Clone, PartialEq)]
pub struct AffineEncoded {
    /// U32 [rows, cols·bits/32], codes LSB-first.
    pub weight: Vec<u32>,
    /// F16 [rows, cols/group_size].
    pub scales: Vec<f16>,
    /// F16 [rows, cols/group_size].
    pub biases: Vec<f16>,
}

fn check_affine(len: usize, rows: usize, cols: usize, bits: u32, group_size: usize) -> Result<()> {
    if ![2, 4, 8].contains(&bits) {
        return Err(ZayaError::InvalidArgument(format!(
            "affine quantization: bits must be 2, 4 or 8, got {bits}"
        )));
    }
    if ![32, 64, 128].contains(&group_size) {
        return Err(ZayaError::InvalidArgument(format!(
            "affine quantization: group_size must be 32, 64 or 128, got {group_size}"
        )));
    }
    if cols == 0 || !cols.is_multiple_of(group_size) {
        return Err(ZayaError::InvalidArgument(format!(
            "affine quantization: {cols} columns are not a positive multiple of group_size {group_size}"
        )));
    }
    if len != rows * cols {
        return Err(ZayaError::InvalidArgument(format!(
            "affine quantization: {len} values for {rows}×{cols}"
        )));
    }
    Ok(())
}

/// `mx.quantize(w, group_size, bits)` (affine mode) of a row-major f16 [rows, cols] matrix,
/// computed in f32 like MLX's CPU kernel: per group, scale = max((max−min)/(2^bits−1), 1e-7),
/// negated unless |min| > |max|; edge = min or max accordingly; q0 = rint(edge/scale); when
/// q0 ≠ 0, scale = edge/q0 and bias = edge, else bias = 0; code = clamp(rint((w−bias)/scale)).
pub fn affine_quantize(w: &[f16], rows: usize, cols: usize, bits: u32, group_size: usize) -> Result<AffineEncoded> {
    check_affine(w.len(), rows, cols, bits, group_size)?;
    let per = 32 / bits as usize;
    let n_bins = ((1u32 << bits) - 1) as f32;
    let groups = rows * cols / group_size;
    let mut weight = vec![0u32; rows * cols / per];
    let mut scales = Vec::with_capacity(groups);
    let mut biases = Vec::with_capacity(groups);
    let mut vals = vec![0f32; group_size];
    for (g, chunk) in w.chunks_exact(group_size).enumerate() {
        let mut wmin = f32::INFINITY;
        let mut wmax = f32::NEG_INFINITY;
        for (v, h) in vals.iter_mut().zip(chunk) {
            *v = h.to_f32();
            wmax = wmax.max(*v);
            wmin = wmin.min(*v);
        }
        let mask = wmin.abs() > wmax.abs();
        let mut scale = ((wmax - wmin) / n_bins).max(1e-7);
        if !mask {
            scale = -scale;
        }
        let edge = if mask { wmin } else { wmax };
        let q0 = (edge / scale).round_ties_even();
        let mut bias = 0f32;
        if q0 != 0.0 {
            scale = edge / q0;
            bias = edge;
        }
        let out = &mut weight[g * group_size / per..(g + 1) * group_size / per];
        for (word, vs) in out.iter_mut().zip(vals.chunks_exact(per)) {
            let mut acc = 0u32;
            for (k, &v) in vs.iter().enumerate() {
                let q = ((v - bias) / scale).round_ties_even().clamp(0.0, n_bins);
                acc |= (q as u32) << (k as u32 * bits);
            }
            *word = acc;
        }
        scales.push(f16::from_f32(scale));
        biases.push(f16::from_f32(bias));
    }
    Ok(AffineEncoded { weight, scales, biases })
}

/// [`affine_quantize`] of f32 weights rounded to f16 first (what the converter does).
pub fn affine_quantize_f32(w: &[f32], rows: usize, cols: usize, bits: u32, group_size: usize) -> Result<AffineEncoded> {
    let h: Vec<f16> = w.iter().map(|&v| f16::from_f32(v)).collect();
    affine_quantize(&h, rows, cols, bits, group_size)
}

/// Affine dequantization: w = scale · q + bias (f32).
pub fn affine_dequantize(
    enc: &AffineEncoded,
    rows: usize,
    cols: usize,
    bits: u32,
    group_size: usize,
) -> Result<Vec<f32>> {
    check_affine(rows * cols, rows, cols, bits, group_size)?;
    let per = 32 / bits as usize;
    if enc.weight.len() != rows * cols / per
        || enc.scales.len() != rows * cols / group_size
        || enc.biases.len() != enc.scales.len()
    {
        return Err(ZayaError::InvalidArgument(
            "affine dequantization: buffer sizes do not match the shape".into(),
        ));
    }
    let mask = (1u32 << bits) - 1;
    Ok((0..rows * cols)
        .map(|i| {
            let q = (enc.weight[i / per] >> ((i % per) as u32 * bits)) & mask;
            let g = i / group_size;
            enc.scales[g].to_f32() * q as f32 + enc.biases[g].to_f32()
        })
        .collect())
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

    #[test]
    fn bad_inputs_are_typed_errors() {
        assert!(TqEncoder::new(0, 4, 42).is_err());
        assert!(TqEncoder::new(64, 9, 42).is_err());
        assert!(TqEncoder::with_tables(4, 1, vec![1.0; 4], vec![1.0, -1.0]).is_err());
        assert!(affine_quantize_f32(&[0.0; 40], 1, 40, 8, 32).is_err());
        assert!(affine_quantize_f32(&[0.0; 64], 1, 64, 3, 32).is_err());
        assert!(affine_quantize_f32(&[0.0; 64], 2, 64, 8, 32).is_err());
    }

    #[test]
    fn affine_roundtrip_error_is_bounded_by_the_grid() {
        // MLX re-derives the scale from the rounded edge code (scale = edge / rint(edge / s0)), so
        // the grid can fall short of the far end of the range by up to n·s0·0.5/(n/2 − 0.5) ≈ 1.07
        // steps at 4 bits; inside the grid the error is half a step.
        let w: Vec<f32> = (0..256)
            .map(|i| ((i * 7919 % 257) as f32 / 257.0 - 0.3) * 2.0)
            .collect();
        for bits in [4u32, 8] {
            let n = ((1u32 << bits) - 1) as f32;
            let enc = affine_quantize_f32(&w, 2, 128, bits, 32).unwrap();
            let back = affine_dequantize(&enc, 2, 128, bits, 32).unwrap();
            for (g, chunk) in w.chunks(32).enumerate() {
                let h: Vec<f32> = chunk.iter().map(|&v| f16::from_f32(v).to_f32()).collect();
                let range = h.iter().cloned().fold(f32::MIN, f32::max) - h.iter().cloned().fold(f32::MAX, f32::min);
                let s0 = range / n;
                let tol = 0.5 * s0 + n * s0 * 0.5 / (n / 2.0 - 0.5) + 2e-3 * range;
                for (j, &v) in h.iter().enumerate() {
                    let err = (back[g * 32 + j] - v).abs();
                    assert!(err <= tol, "bits {bits} group {g}: error {err} > {tol}");
                }
            }
        }
    }
}
