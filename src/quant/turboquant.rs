//! MXTQ/TurboQuant: the plain-MLX-ops expert matmul `y = norms ⊙ (C[codes] · H(s ⊙ x))` over the
//! bundle's tensors and the sidecar's codebooks and sign vectors (the encoder is in `tools::encode`);
//! at the end, a self-contained f32 dequantizer used by the loader's tests and diagnostics.
//!
//! The plain path here is the reference for the fused `mlx-ext` switch-GLU primitive: the activation
//! is rotated once (`hadamard_transform(s ⊙ x, 1/√d)`, blockwise over the power-of-two decomposition
//! of d, largest block first, as jang_tools does), codes are unpacked with integer ops and looked up
//! in the codebook, and the row norms scale the matmul output (docs/bundle-format.md §3.2–§3.6).
use mlx_rs::ops::indexing::{take, take_axis, IndexOp};
use mlx_rs::ops::{concatenate, floor_divide, remainder};
use mlx_rs::{Array, Dtype};

use crate::error::{Result, ZayaError};

/// Power-of-two blocks of `d`, largest first (2048 → `[2048]`; 192 → `[128, 64]`).
pub fn hadamard_blocks(d: usize) -> Vec<usize> {
    let mut out = Vec::new();
    let mut rem = d;
    while rem > 0 {
        let p = 1usize << (usize::BITS - 1 - rem.leading_zeros());
        out.push(p);
        rem -= p;
    }
    out
}

/// The randomized Hadamard rotation `R(x) = H·(s ⊙ x)` over the last axis, in f32, with the
/// orthonormal scaling `1/√block` per power-of-two block. `signs`: f32 `[d]`.
pub fn rotate(x: &Array, signs: &Array) -> Result<Array> {
    let d = *x
        .shape()
        .last()
        .ok_or_else(|| ZayaError::InvalidArgument("rotate: scalar input".into()))? as usize;
    if signs.shape() != [d as i32] {
        return Err(ZayaError::InvalidArgument(format!(
            "rotate: signs have shape {:?}, expected [{d}]",
            signs.shape()
        )));
    }
    let xs = x.as_dtype(Dtype::Float32)?.multiply(signs)?;
    let blocks = hadamard_blocks(d);
    if blocks.len() == 1 {
        return Ok(xs.hadamard_transform(1.0 / (d as f32).sqrt())?);
    }
    let mut parts = Vec::with_capacity(blocks.len());
    let mut off = 0i32;
    for b in blocks {
        let part = xs.index((mlx_rs::ops::indexing::Ellipsis, off..off + b as i32));
        parts.push(part.hadamard_transform(1.0 / (b as f32).sqrt())?);
        off += b as i32;
    }
    Ok(concatenate(&parts, -1)?)
}

/// Unpacks LSB-first `bits`-wide codes: `packed` U32 `[.., out, cols]` → U32 `[.., out, in]`.
pub fn unpack_codes(packed: &Array, bits: u32, in_features: usize) -> Result<Array> {
    if !(1..=8).contains(&bits) || 32 % bits != 0 {
        return Err(ZayaError::InvalidArgument(format!(
            "TurboQuant bits {bits} unsupported (need 1, 2, 4 or 8)"
        )));
    }
    let per = (32 / bits) as usize;
    let shape = packed.shape().to_vec();
    let cols = *shape.last().unwrap() as usize;
    if cols * per < in_features {
        return Err(ZayaError::InvalidArgument(format!(
            "TurboQuant packed width {cols} too small for {in_features} {bits}-bit codes"
        )));
    }
    let pows: Vec<u32> = (0..per).map(|k| 1u32 << (k as u32 * bits)).collect();
    let pows = Array::from_slice(&pows, &[per as i32]);
    let expanded = packed.expand_dims(-1)?; // [.., out, cols, 1]
    let codes = remainder(
        floor_divide(&expanded, &pows)?,
        Array::from_slice(&[1u32 << bits], &[1]),
    )?;
    let mut new_shape = shape.clone();
    *new_shape.last_mut().unwrap() = (cols * per) as i32;
    let codes = codes.reshape(&new_shape)?;
    if cols * per == in_features {
        Ok(codes)
    } else {
        Ok(codes.index((mlx_rs::ops::indexing::Ellipsis, 0..in_features as i32)))
    }
}

/// The 16-bit lookup table of a codebook: row `h` holds the `16/bits` codebook values of the codes
/// packed LSB-first in the halfword `h`, f32 `[65536, 16/bits]`. Dequantizing through it takes one
/// gather per halfword instead of one per code.
pub fn halfword_lut(codebook: &Array, bits: u32) -> Result<Array> {
    if !matches!(bits, 1 | 2 | 4 | 8) {
        return Err(ZayaError::InvalidArgument(format!(
            "TurboQuant bits {bits} unsupported (need 1, 2, 4 or 8)"
        )));
    }
    if codebook.shape() != [1 << bits] {
        return Err(ZayaError::InvalidArgument(format!(
            "codebook has shape {:?}, expected [{}] for {bits} bits",
            codebook.shape(),
            1 << bits
        )));
    }
    let h: Vec<u32> = (0..65536u32).collect();
    let h = Array::from_slice(&h, &[65536, 1]);
    let per = (16 / bits) as usize;
    let pows: Vec<u32> = (0..per).map(|k| 1u32 << (k as u32 * bits)).collect();
    let codes = remainder(
        floor_divide(&h, Array::from_slice(&pows, &[1, per as i32]))?,
        Array::from_slice(&[1u32 << bits], &[1]),
    )?;
    Ok(take(&codebook.as_dtype(Dtype::Float32)?, &codes)?)
}

/// One stacked TurboQuant projection `[E, out, in]` (`tq_packed` + `tq_norms`) with its sidecar
/// codebook and signs.
#[derive(Debug, Clone)]
pub struct TqMatrix {
    /// U32 `[E, out, in·bits/32]`.
    pub packed: Array,
    /// f32 `[E, out]` row norms.
    pub norms: Array,
    /// f32 `[2^bits]`.
    pub codebook: Array,
    /// f32 `[in]` ±1.
    pub signs: Array,
    pub bits: u32,
    pub in_features: usize,
    pub out_features: usize,
    /// [`halfword_lut`] of the codebook (built by [`TqMatrix::new`]); `None` unpacks code by code.
    pub lut: Option<Array>,
}

impl TqMatrix {
    /// A projection with its lookup table precomputed.
    pub fn new(
        packed: Array,
        norms: Array,
        codebook: Array,
        signs: Array,
        bits: u32,
        in_features: usize,
        out_features: usize,
    ) -> Result<Self> {
        let lut = Some(halfword_lut(&codebook, bits)?);
        Ok(TqMatrix {
            packed,
            norms,
            codebook,
            signs,
            bits,
            in_features,
            out_features,
            lut,
        })
    }

    /// Rotated-domain weight of expert `e` without norms: `C[codes[e]]`, f32 `[out, in]`.
    pub fn rotated_codes_weight(&self, e: i32) -> Result<Array> {
        let packed_e = take_axis(&self.packed, Array::from_int(e), 0)?;
        match &self.lut {
            Some(lut) => {
                // little-endian: halfword 2k is the low half of word k, so LSB-first order holds
                let cols = packed_e.shape()[1];
                let halves = packed_e.view::<u16>()?.reshape(&[self.out_features as i32, cols * 2])?;
                let per = lut.shape()[1];
                let w = take_axis(lut, &halves, 0)?.reshape(&[self.out_features as i32, cols * 2 * per])?;
                if (cols * 2 * per) as usize == self.in_features {
                    Ok(w)
                } else {
                    Ok(w.index((.., 0..self.in_features as i32)))
                }
            }
            None => {
                let codes = unpack_codes(&packed_e, self.bits, self.in_features)?;
                Ok(take(&self.codebook, &codes)?)
            }
        }
    }

    /// `y = norms[e] ⊙ (C[codes[e]] · x_rot)` for already-rotated rows `x_rot` f32 `[N, in]` → `[N, out]`.
    pub fn matmul_rotated(&self, x_rot: &Array, e: i32) -> Result<Array> {
        let w = self.rotated_codes_weight(e)?;
        let norms_e = take_axis(&self.norms, Array::from_int(e), 0)?;
        Ok(x_rot.matmul(w.t())?.multiply(&norms_e)?)
    }

    /// `y = Ŵ_e · x` for unrotated rows `x [N, in]` (rotates them first).
    pub fn matmul(&self, x: &Array, e: i32) -> Result<Array> {
        self.matmul_rotated(&rotate(x, &self.signs)?, e)
    }

    /// The dequantized original-domain weight of expert `e`: `Ŵ[r,:] = s ⊙ H·(n_r · C[codes[r,:]])`,
    /// f32 `[out, in]`.
    pub fn dequantized_expert(&self, e: i32) -> Result<Array> {
        let norms_e = take_axis(&self.norms, Array::from_int(e), 0)?.expand_dims(-1)?;
        let wrot = self.rotated_codes_weight(e)?.multiply(&norms_e)?;
        // H is symmetric and orthonormal per block, so the inverse rotation is s ⊙ (H·row).
        let ones = mlx_rs::ops::ones::<f32>(&[self.in_features as i32])?;
        let hw = rotate(&wrot, &ones)?;
        Ok(hw.multiply(&self.signs)?)
    }
}

// ---- dequantization (self-contained; used by tests and diagnostics) -----------------------------

/// Dequantizes TurboQuant weights to f32 with plain MLX ops (docs/bundle-format.md §3.6):
/// `W[.., r, :] = s ⊙ H(norms[.., r] · C[codes[.., r, :]])`, where `codes` are the `bits`-bit indices
/// packed LSB-first into `packed` (U32 `[.., out, ceil(in / (32/bits))]`), `norms` `[.., out]`,
/// `codebook` f32 `[2^bits]`, `signs` f32 `[in]`, and `H` the orthonormal Sylvester Walsh-Hadamard
/// matrix (`hadamard_transform` with scale 1/√in). `in_features` must be a power of two.
pub fn dequantize(
    packed: &mlx_rs::Array,
    norms: &mlx_rs::Array,
    codebook: &mlx_rs::Array,
    signs: &mlx_rs::Array,
    bits: u32,
    in_features: usize,
) -> crate::error::Result<mlx_rs::Array> {
    use crate::error::ZayaError;
    use mlx_rs::ops::indexing::IndexOp;
    use mlx_rs::Array;
    if ![1, 2, 3, 4, 8].contains(&bits) {
        return Err(ZayaError::InvalidArgument(format!(
            "TurboQuant bits must be 1, 2, 3, 4 or 8, got {bits}"
        )));
    }
    if !in_features.is_power_of_two() {
        return Err(ZayaError::InvalidArgument(format!(
            "TurboQuant dequantize needs a power-of-two in_features, got {in_features}"
        )));
    }
    let per_word = (32 / bits) as usize;
    let shape = packed.shape().to_vec();
    if shape.len() < 2 || shape[shape.len() - 1] as usize != in_features.div_ceil(per_word) {
        return Err(ZayaError::InvalidArgument(format!(
            "tq_packed {shape:?} does not hold {in_features} inputs at {bits} bits"
        )));
    }
    // codes[.., r, w, k] = (packed[.., r, w] / 2^(k·bits)) mod 2^bits
    let divisors: Vec<u32> = (0..per_word).map(|k| 1u32 << (k as u32 * bits)).collect();
    let divisors = Array::from_slice(&divisors, &[per_word as i32]);
    let modulus = Array::from_int(1i32 << bits).as_type::<u32>()?;
    let codes = packed.expand_dims(-1)?.floor_divide(&divisors)?.remainder(&modulus)?;
    let mut flat = shape.clone();
    let last = flat.len() - 1;
    flat[last] *= per_word as i32;
    let codes = codes
        .reshape(&flat)?
        .index((mlx_rs::ops::indexing::Ellipsis, ..in_features as i32));
    let codes = codes.reshape(&[-1])?;
    let mut out_shape = shape.clone();
    out_shape[last] = in_features as i32;
    let vals = codebook.as_type::<f32>()?.take(&codes)?.reshape(&out_shape)?;
    let rot = vals.multiply(norms.as_type::<f32>()?.expand_dims(-1)?)?;
    let w = rot.hadamard_transform(1.0 / (in_features as f32).sqrt())?;
    Ok(w.multiply(signs.as_type::<f32>()?)?)
}
