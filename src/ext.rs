//! Safe Rust wrappers over the C ABI of our C++ MLX extension (`mlx-ext/`, compiled by build.rs).
//!
//! Each wrapper takes and returns [`mlx_rs::Array`]s (lazy graph nodes) on the default stream.
//! Argument errors and C++ exceptions come back as [`ZayaError::Ext`]. [`ExtMode`] chooses between
//! the custom primitive and the portable plain-MLX-ops graph (the primitive falls back to the
//! portable graph on streams where it has no kernel, e.g. GPU streams).
use std::ffi::CStr;
use std::os::raw::c_int;

use mlx_rs::{Array, Stream};
use mlx_sys::{mlx_array, mlx_array_new, mlx_stream};

use crate::error::{Result, ZayaError};

extern "C" {
    fn zaya_ext_last_error() -> *const std::os::raw::c_char;
    fn zaya_ext_version() -> *const std::os::raw::c_char;
    fn zaya_cca_conv(
        z: *mut mlx_array,
        new_state: *mut mlx_array,
        u: mlx_array,
        state: mlx_array,
        w0: mlx_array,
        b0: mlx_array,
        w1: mlx_array,
        b1: mlx_array,
        mode: c_int,
        stream: mlx_stream,
    ) -> c_int;
    fn zaya_graph_nodes(outs: *const mlx_array, n: usize, nodes: *mut i64, casts: *mut i64) -> c_int;
}

/// Which implementation of an extension op to build.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ExtMode {
    /// The custom primitive where it has a kernel (CPU), the portable graph elsewhere.
    #[default]
    Auto,
    /// Always the portable plain-MLX-ops graph (runs on any stream; the reference in tests).
    Portable,
    /// Always the custom primitive (an error on streams without a kernel).
    Primitive,
}

impl ExtMode {
    fn as_c(self) -> c_int {
        match self {
            ExtMode::Auto => 0,
            ExtMode::Portable => 1,
            ExtMode::Primitive => 2,
        }
    }
}

/// Version string of the compiled extension.
pub fn version() -> String {
    // SAFETY: returns a pointer to a static NUL-terminated string.
    unsafe { CStr::from_ptr(zaya_ext_version()) }.to_string_lossy().into_owned()
}

fn last_error() -> ZayaError {
    // SAFETY: thread-local NUL-terminated string owned by the extension, valid until the next call.
    let msg = unsafe { CStr::from_ptr(zaya_ext_last_error()) }.to_string_lossy().into_owned();
    ZayaError::Ext(msg)
}

/// An output handle that frees itself unless turned into an [`Array`].
struct OutHandle(mlx_array);

impl OutHandle {
    fn new() -> Self {
        // SAFETY: creates an empty handle.
        OutHandle(unsafe { mlx_array_new() })
    }
    fn into_array(self) -> Array {
        let h = self.0;
        std::mem::forget(self);
        // SAFETY: the extension set the handle to a valid array; Array takes ownership.
        unsafe { Array::from_ptr(h) }
    }
}

impl Drop for OutHandle {
    fn drop(&mut self) {
        // SAFETY: freeing an empty or set handle is valid exactly once.
        unsafe { mlx_sys::mlx_array_free(self.0) };
    }
}

pub(crate) fn call2(f: impl FnOnce(*mut mlx_array, *mut mlx_array, mlx_stream) -> c_int) -> Result<(Array, Array)> {
    let stream = Stream::thread_local_or_default();
    let mut a = OutHandle::new();
    let mut b = OutHandle::new();
    let rc = f(&mut a.0, &mut b.0, stream.as_ptr());
    if rc != 0 {
        return Err(last_error());
    }
    Ok((a.into_array(), b.into_array()))
}

/// The CCA two-stage causal convolution step (zaya-architecture.md §3.2 step 2, §3.3).
///
/// * `u`: `[B, T, C]` f32 pre-conv frames (q channels then k channels);
/// * `conv_state`: `[B, C, S]` f32, the last `S = (K0-1)+(K1-1)` raw frames (zeros at start);
/// * `w0`/`b0`: depthwise conv `[C, K0, 1]` / `[C]`; `w1`/`b1`: grouped conv `[C, K1, C/G]` / `[C]`
///   (MLX layout, all f32).
///
/// Returns `(z [B, T, C], new_conv_state [B, C, S])`.
pub fn cca_conv(
    u: &Array,
    conv_state: &Array,
    w0: &Array,
    b0: &Array,
    w1: &Array,
    b1: &Array,
    mode: ExtMode,
) -> Result<(Array, Array)> {
    call2(|z, ns, s| unsafe {
        zaya_cca_conv(
            z,
            ns,
            u.as_ptr(),
            conv_state.as_ptr(),
            w0.as_ptr(),
            b0.as_ptr(),
            w1.as_ptr(),
            b1.as_ptr(),
            mode.as_c(),
            s,
        )
    })
}

/// Size of a lazy graph: unevaluated primitive nodes reachable from some outputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct GraphStats {
    /// Primitive nodes an evaluation of the outputs will run (multi-output nodes counted once).
    pub nodes: i64,
    /// How many of them are dtype casts (`AsType`).
    pub casts: i64,
}

/// Counts the nodes that evaluating `outputs` would run (call before `eval`).
pub fn graph_nodes(outputs: &[&Array]) -> Result<GraphStats> {
    let handles: Vec<mlx_array> = outputs.iter().map(|a| a.as_ptr()).collect();
    let mut st = GraphStats::default();
    // SAFETY: the handles stay alive (borrowed) for the duration of the call.
    let rc = unsafe { zaya_graph_nodes(handles.as_ptr(), handles.len(), &mut st.nodes, &mut st.casts) };
    if rc != 0 {
        return Err(last_error());
    }
    Ok(st)
}
