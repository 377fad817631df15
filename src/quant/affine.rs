//! MLX block-quantized weights: the affine mode (`.weight` U32 packed LSB-first, `.scales`/`.biases`
//! per group, docs/bundle-format.md §2) and the mxfp4 mode (`.weight` U32 packed e2m1, `.scales` U8 e8m0,
//! groups of 32). Matmuls y = x·Wᵀ, gathered (per-expert) matmuls and row dequantization, built from
//! MLX's stock quantized ops. The fused CPU kernels live in `mlx-ext/` and are reached through
//! [`crate::quant::linear::LinearBackend`]. At the end: f32 dequantization helpers used by the
//! loader's tests and diagnostics.
use std::ffi::CStr;
use std::os::raw::c_int;

use mlx_rs::{Array, Dtype, Stream};

use crate::error::{Result, ZayaError};

/// The MLX quantization mode of a block-quantized tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuantMode {
    /// Scale and bias per group (`w = scale·q + bias`), any bits MLX supports.
    Affine,
    /// OCP MX fp4: e2m1 codes with one e8m0 (U8) scale per group of 32, no biases.
    Mxfp4,
}

impl QuantMode {
    fn c_name(self) -> &'static CStr {
        match self {
            QuantMode::Affine => c"affine",
            QuantMode::Mxfp4 => c"mxfp4",
        }
    }
}

/// A block-quantized weight triplet (or pair for mxfp4) with its quantization parameters.
#[derive(Debug, Clone, Copy)]
pub struct QuantSpec {
    pub mode: QuantMode,
    pub bits: i32,
    pub group_size: i32,
}

/// Makes sure mlx-rs has installed its MLX error handler before we call mlx-c directly (the mlx-c
/// default handler would terminate the process).
fn ensure_error_handler() {
    // Any mlx-rs operation going through its guarded FFI path installs the handler once.
    let _ = Array::from_int(0).clone();
}

/// Runs a raw mlx-c op that returns one array. mlx-c reports failures through the error handler
/// that mlx-rs installed (the message stays in mlx-rs's private stash), so the error we return
/// names the op and its arguments instead.
fn raw_op(what: impl FnOnce() -> String, f: impl FnOnce(*mut mlx_sys::mlx_array) -> c_int) -> Result<Array> {
    ensure_error_handler();
    // SAFETY: creates an empty handle that the op fills; freed on failure, owned by Array on success.
    let mut res = unsafe { mlx_sys::mlx_array_new() };
    let rc = f(&mut res);
    if rc != 0 {
        unsafe { mlx_sys::mlx_array_free(res) };
        return Err(ZayaError::Mlx(mlx_rs::error::Exception::custom(format!(
            "MLX rejected {}",
            what()
        ))));
    }
    Ok(unsafe { Array::from_ptr(res) })
}

fn opt_int(v: i32) -> mlx_sys::mlx_optional_int {
    mlx_sys::mlx_optional_int {
        value: v,
        has_value: true,
    }
}

fn null_array() -> mlx_sys::mlx_array {
    // SAFETY: an empty handle means "absent" for optional mlx-c arguments.
    unsafe { mlx_sys::mlx_array_new() }
}

/// `y = x · Wᵀ` for a quantized W `[out, in·bits/32]` (MLX `quantized_matmul`, transpose = true).
pub fn matmul_t(x: &Array, w: &Array, scales: &Array, biases: Option<&Array>, spec: QuantSpec) -> Result<Array> {
    let stream = Stream::thread_local_or_default();
    let nb = null_array();
    let out = raw_op(
        || {
            format!(
                "quantized_matmul(x {:?} {:?}, w {:?}, scales {:?} {:?}, {:?} bits {} group {})",
                x.shape(),
                x.dtype(),
                w.shape(),
                scales.shape(),
                scales.dtype(),
                spec.mode,
                spec.bits,
                spec.group_size
            )
        },
        |res| unsafe {
            mlx_sys::mlx_quantized_matmul(
                res,
                x.as_ptr(),
                w.as_ptr(),
                scales.as_ptr(),
                biases.map(|b| b.as_ptr()).unwrap_or(nb),
                true,
                opt_int(spec.group_size),
                opt_int(spec.bits),
                spec.mode.c_name().as_ptr(),
                stream.as_ptr(),
            )
        },
    );
    unsafe { mlx_sys::mlx_array_free(nb) };
    out
}

/// Gathered quantized matmul over stacked weights `[E, out, in·bits/32]`: row batch `b` of `x`
/// (`[.., M, in]`) is multiplied by `W[rhs_indices[b]]ᵀ` (MLX `gather_qmm`, transpose = true).
pub fn gather_matmul_t(
    x: &Array,
    w: &Array,
    scales: &Array,
    biases: Option<&Array>,
    rhs_indices: &Array,
    spec: QuantSpec,
    sorted: bool,
) -> Result<Array> {
    let stream = Stream::thread_local_or_default();
    let nb = null_array();
    let nl = null_array();
    let out = raw_op(
        || {
            format!(
                "gather_qmm(x {:?}, w {:?}, scales {:?}, indices {:?}, {:?} bits {} group {})",
                x.shape(),
                w.shape(),
                scales.shape(),
                rhs_indices.shape(),
                spec.mode,
                spec.bits,
                spec.group_size
            )
        },
        |res| unsafe {
            mlx_sys::mlx_gather_qmm(
                res,
                x.as_ptr(),
                w.as_ptr(),
                scales.as_ptr(),
                biases.map(|b| b.as_ptr()).unwrap_or(nb),
                nl,
                rhs_indices.as_ptr(),
                true,
                opt_int(spec.group_size),
                opt_int(spec.bits),
                spec.mode.c_name().as_ptr(),
                sorted,
                stream.as_ptr(),
            )
        },
    );
    unsafe {
        mlx_sys::mlx_array_free(nb);
        mlx_sys::mlx_array_free(nl);
    }
    out
}

/// Dequantizes `w` (any leading dims) to `dtype` (MLX `dequantize`).
pub fn dequantize_to(
    w: &Array,
    scales: &Array,
    biases: Option<&Array>,
    spec: QuantSpec,
    dtype: Dtype,
) -> Result<Array> {
    let stream = Stream::thread_local_or_default();
    let nb = null_array();
    let ng = null_array();
    let out = raw_op(
        || {
            format!(
                "dequantize(w {:?}, scales {:?}, {:?} bits {} group {})",
                w.shape(),
                scales.shape(),
                spec.mode,
                spec.bits,
                spec.group_size
            )
        },
        |res| unsafe {
            mlx_sys::mlx_dequantize(
                res,
                w.as_ptr(),
                scales.as_ptr(),
                biases.map(|b| b.as_ptr()).unwrap_or(nb),
                opt_int(spec.group_size),
                opt_int(spec.bits),
                spec.mode.c_name().as_ptr(),
                ng,
                mlx_sys::mlx_optional_dtype {
                    value: dtype.into(),
                    has_value: true,
                },
                stream.as_ptr(),
            )
        },
    );
    unsafe {
        mlx_sys::mlx_array_free(nb);
        mlx_sys::mlx_array_free(ng);
    }
    out
}

// ---- dequantization (used by tests and by the loader's consistency checks) ----------------------

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
            mlx_sys::mlx_optional_int {
                value: group_size as i32,
                has_value: true,
            },
            mlx_sys::mlx_optional_int {
                value: 4,
                has_value: true,
            },
            c"mxfp4".as_ptr(),
            none,
            mlx_sys::mlx_optional_dtype {
                value: mlx_sys::mlx_dtype__MLX_FLOAT32,
                has_value: true,
            },
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
