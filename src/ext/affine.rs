//! MLX affine quantized matmuls (one or several weights per node), the embedding-row gather, and
//! the dense matmul of float weights.

use mlx_rs::Array;
use mlx_sys::mlx_array;

use super::handle::*;
use super::sys::*;
use super::{ExtMode, MatmulMode};
use crate::error::Result;

/// `y = x · Wᵀ` for an MLX affine weight (`mx.quantized_matmul(x, w, scales, biases,
/// transpose=True, group_size, bits)`), with f32 accumulation.
///
/// * `x`: `[..., in]` float32; `w`: `[out, in·bits/32]` uint32 (bits 4 or 8);
/// * `scales`, `biases`: `[out, in/group_size]`, float16/bfloat16/float32 (same dtype);
/// * `group_size` divides `in` and is a multiple of `32/bits`.
///
/// Returns `[..., out]` float32. `mode`: an [`ExtMode`] (f32) or a [`MatmulMode`].
pub fn affine_matmul(
    x: &Array,
    w: &Array,
    scales: &Array,
    biases: &Array,
    bits: u32,
    group_size: u32,
    mode: impl Into<MatmulMode>,
) -> Result<Array> {
    let mode = mode.into();
    call1(|y, s| unsafe {
        zaya_affine_matmul(
            y,
            x.as_ptr(),
            w.as_ptr(),
            scales.as_ptr(),
            biases.as_ptr(),
            c_int_of(bits),
            c_int_of(group_size),
            mode.as_c(),
            s,
        )
    })
}

/// One affine weight of [`affine_multi`]: `w` `[out, in·bits/32]` uint32 with its scales and biases.
#[derive(Debug, Clone, Copy)]
pub struct AffineWeight<'a> {
    pub w: &'a Array,
    pub scales: &'a Array,
    pub biases: &'a Array,
}

/// Several [`affine_matmul`]s as one op, outputs side by side:
/// `y = [x_0·W_0ᵀ ‖ x_1·W_1ᵀ ‖ …]` (1 to 4 weights of one `bits` / `group_size`). Every `x_i` is
/// float32 with the same number of rows; the output has `x_0`'s leading shape and `Σ out_i` columns.
pub fn affine_multi(
    parts: &[(&Array, AffineWeight<'_>)],
    bits: u32,
    group_size: u32,
    mode: impl Into<MatmulMode>,
) -> Result<Array> {
    let mode = mode.into();
    let xs: Vec<mlx_array> = parts.iter().map(|p| p.0.as_ptr()).collect();
    let ws: Vec<mlx_array> = parts.iter().map(|p| p.1.w.as_ptr()).collect();
    let ss: Vec<mlx_array> = parts.iter().map(|p| p.1.scales.as_ptr()).collect();
    let bs: Vec<mlx_array> = parts.iter().map(|p| p.1.biases.as_ptr()).collect();
    call1(|y, s| unsafe {
        zaya_affine_multi(
            y,
            xs.as_ptr(),
            ws.as_ptr(),
            ss.as_ptr(),
            bs.as_ptr(),
            parts.len(),
            c_int_of(bits),
            c_int_of(group_size),
            mode.as_c(),
            s,
        )
    })
}

/// Dequantized rows `W[ids]` of an MLX affine weight (the quantized embedding): `ids` int32/uint32
/// of any shape → `ids.shape + [in]` float32. Ids outside `[0, out)` give zero rows (validate token
/// ids before calling).
pub fn affine_embed(
    ids: &Array,
    w: &Array,
    scales: &Array,
    biases: &Array,
    bits: u32,
    group_size: u32,
    mode: ExtMode,
) -> Result<Array> {
    call1(|y, s| unsafe {
        zaya_affine_embed(
            y,
            ids.as_ptr(),
            w.as_ptr(),
            scales.as_ptr(),
            biases.as_ptr(),
            c_int_of(bits),
            c_int_of(group_size),
            mode.as_c(),
            s,
        )
    })
}

/// `y = x · Wᵀ (+ bias)` for float weights read as stored (f16/bf16/f32, converted in registers),
/// f32 accumulation: a fast replacement for `matmul(x, w.T)` on the CPU, where MLX's GEMV is slow
/// (≈1.2 GB/s with f16 weights).
///
/// * `x`: `[..., in]` float32; `w`: `[out, in]` float16/bfloat16/float32;
/// * `bias`: `[out]` float16/bfloat16/float32 or `None`.
///
/// Returns `[..., out]` float32.
pub fn dense_matmul(x: &Array, w: &Array, bias: Option<&Array>, mode: ExtMode) -> Result<Array> {
    // SAFETY: an empty handle (ctx == NULL) means "no bias"; it is freed by OutHandle's drop.
    let none = OutHandle::new();
    call1(|y, s| unsafe {
        zaya_dense_matmul(
            y,
            x.as_ptr(),
            w.as_ptr(),
            bias.map_or(none.0, |b| b.as_ptr()),
            mode.as_c(),
            s,
        )
    })
}
