//! MLX affine quantization: packing layout, dequantization and the encoder used by `zaya synth`.

// ---- dequantization (used by tests and by the loader's consistency checks) ----------------------

use mlx_rs::Array;

use crate::error::{Result, ZayaError};

/// Dequantizes MLX affine weights to f32: `w[.., r, j] = scales[.., r, j/G] · q[.., r, j] +
/// biases[.., r, j/G]`, with `q` the `bits`-bit codes packed LSB-first into `w` (U32
/// `[.., out, in·bits/32]`); `scales`/`biases` `[.., out, in/G]` in any float dtype (negative scales
/// are legal). Plain MLX ops (`mx::dequantize` on f32 scales), any leading batch dimensions.
pub fn dequantize(w: &Array, scales: &Array, biases: &Array, bits: u32, group_size: u32) -> Result<Array> {
    let s = scales.as_type::<f32>()?;
    let b = biases.as_type::<f32>()?;
    Ok(mlx_rs::ops::dequantize(w, &s, &b, group_size as i32, bits as i32)?)
}

/// Dequantizes MLX `mxfp4` weights to f32: `.weight` U32 `[.., out, in/8]` (e2m1 codes, LSB-first),
/// `.scales` U8 `[.., out, in/group]` (e8m0 exponents), group size 32.
pub fn dequantize_mxfp4(w: &Array, scales: &Array, group_size: u32) -> Result<Array> {
    let stream = mlx_rs::Stream::thread_local_or_default();
    // SAFETY: valid handles; the output handle is owned by the returned Array (or freed on error).
    unsafe {
        let mut res = mlx_sys::mlx_array_new();
        let none = mlx_sys::mlx_array_new();
        let rc = mlx_sys::mlx_dequantize(
            &mut res,
            w.as_ptr(),
            scales.as_ptr(),
            none,
            mlx_sys::mlx_optional_int { value: group_size as i32, has_value: true },
            mlx_sys::mlx_optional_int { value: 4, has_value: true },
            c"mxfp4".as_ptr(),
            none,
            mlx_sys::mlx_optional_dtype { value: mlx_sys::mlx_dtype__MLX_FLOAT32, has_value: true },
            stream.as_ptr(),
        );
        mlx_sys::mlx_array_free(none);
        if rc != 0 {
            mlx_sys::mlx_array_free(res);
            return Err(ZayaError::InvalidArgument(format!(
                "mxfp4 dequantize failed for weight {:?} / scales {:?} (group {group_size})",
                w.shape(),
                scales.shape()
            )));
        }
        Ok(Array::from_ptr(res))
    }
}
