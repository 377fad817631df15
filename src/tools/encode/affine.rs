//! MLX affine quantization: per-group scale/bias exactly as `mx.quantize` computes them on the CPU
//! (bias = the group's min or max, whichever has the larger magnitude), f16 scales/biases, LSB-first
//! packing, and the inverse.
use half::f16;

use crate::error::{Result, ZayaError};

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
