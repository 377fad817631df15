//! Safe Rust wrappers over the C ABI of our C++ MLX extension (`mlx-ext/`, compiled by build.rs).
//!
//! Each wrapper takes and returns [`mlx_rs::Array`]s (lazy graph nodes) on the default stream.
//! Argument errors and C++ exceptions come back as [`ZayaError::Ext`]. [`ExtMode`] chooses between
//! the custom primitive and the portable plain-MLX-ops graph (the primitive falls back to the
//! portable graph on streams where it has no kernel, e.g. GPU streams).
//!
//! Ops: [`cca_conv`] (CCA convolution), [`tq_switch_glu`] (TurboQuant routed experts),
//! [`affine_matmul`] / [`affine_embed`] (MLX affine weights: attention, embedding, tied lm_head),
//! [`affine_multi`] (several affine matmuls side by side as one node), [`dense_matmul`] (float
//! weights: the router MLP and other f16 layers). Fused layer ops (one graph node each where MLX's
//! CPU backend needs tens of small ones): [`res_norm`] (residual scaling + merge + RMSNorm),
//! [`router`] (the MoE router), [`moe_combine`] (the MoE output and skip route), [`cca_qk`] (the CCA
//! conv, mean paths, q/k normalisation and RoPE), [`cca_attention`] (causal GQA attention over the
//! KV storage), [`kv_append`]. The CPU kernels pick AVX-512, AVX2 or scalar code at run time
//! ([`KernelIsa`]). [`graph_nodes`] / [`graph_histogram`] count a lazy graph's nodes.
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
    fn zaya_graph_histogram(outs: *const mlx_array, n: usize) -> *const std::os::raw::c_char;
    fn zaya_ext_trace_enable(on: c_int);
    fn zaya_ext_now_ns() -> i64;
    fn zaya_ext_trace_take(names: *mut *const std::os::raw::c_char, t0: *mut i64, t1: *mut i64, cap: usize) -> usize;
    fn zaya_ext_detected_isa() -> c_int;
    fn zaya_ext_kernel_isa() -> c_int;
    fn zaya_ext_set_max_isa(level: c_int) -> c_int;
    fn zaya_tq_switch_glu(
        y: *mut mlx_array,
        x: mlx_array,
        idx: mlx_array,
        gate_packed: mlx_array,
        gate_norms: mlx_array,
        up_packed: mlx_array,
        up_norms: mlx_array,
        down_packed: mlx_array,
        down_norms: mlx_array,
        gu_codebook: mlx_array,
        gu_signs: mlx_array,
        bits_gu: c_int,
        down_codebook: mlx_array,
        down_signs: mlx_array,
        bits_d: c_int,
        mode: c_int,
        stream: mlx_stream,
    ) -> c_int;
    fn zaya_affine_matmul(
        y: *mut mlx_array,
        x: mlx_array,
        w: mlx_array,
        scales: mlx_array,
        biases: mlx_array,
        bits: c_int,
        group_size: c_int,
        mode: c_int,
        stream: mlx_stream,
    ) -> c_int;
    fn zaya_dense_matmul(
        y: *mut mlx_array,
        x: mlx_array,
        w: mlx_array,
        bias: mlx_array,
        mode: c_int,
        stream: mlx_stream,
    ) -> c_int;
    fn zaya_affine_multi(
        y: *mut mlx_array,
        xs: *const mlx_array,
        ws: *const mlx_array,
        scales: *const mlx_array,
        biases: *const mlx_array,
        k: usize,
        bits: c_int,
        group_size: c_int,
        mode: c_int,
        stream: mlx_stream,
    ) -> c_int;
    fn zaya_cca_qk(
        q: *mut mlx_array,
        k: *mut mlx_array,
        v: *mut mlx_array,
        new_state: *mut mlx_array,
        u: mlx_array,
        state: mlx_array,
        w0: mlx_array,
        b0: mlx_array,
        w1: mlx_array,
        b1: mlx_array,
        temp: mlx_array,
        values: mlx_array,
        q_heads: c_int,
        kv_heads: c_int,
        rotary_dim: c_int,
        rope_theta: f32,
        clamp_temp: c_int,
        offset: c_int,
        row_offsets: *const i32,
        n_row_offsets: usize,
        mode: c_int,
        stream: mlx_stream,
    ) -> c_int;
    fn zaya_cca_attention(
        y: *mut mlx_array,
        q: mlx_array,
        k: mlx_array,
        v: mlx_array,
        len: c_int,
        scale: f32,
        flat: c_int,
        mode: c_int,
        stream: mlx_stream,
    ) -> c_int;
    fn zaya_cca_attention_rows(
        y: *mut mlx_array,
        q: mlx_array,
        k: mlx_array,
        v: mlx_array,
        lens: *const i32,
        n_lens: usize,
        scale: f32,
        flat: c_int,
        mode: c_int,
        stream: mlx_stream,
    ) -> c_int;
    fn zaya_kv_append_rows(
        k_out: *mut mlx_array,
        v_out: *mut mlx_array,
        k: mlx_array,
        v: mlx_array,
        k_new: mlx_array,
        v_new: mlx_array,
        starts: *const i32,
        n_starts: usize,
        mode: c_int,
        stream: mlx_stream,
    ) -> c_int;
    fn zaya_kv_append(
        k_out: *mut mlx_array,
        v_out: *mut mlx_array,
        k: mlx_array,
        v: mlx_array,
        k_new: mlx_array,
        v_new: mlx_array,
        start: c_int,
        stream: mlx_stream,
    ) -> c_int;
    fn zaya_res_norm(
        r_out: *mut mlx_array,
        x_out: *mut mlx_array,
        h: mlx_array,
        r: mlx_array,
        h_bias: mlx_array,
        h_scale: mlx_array,
        r_bias: mlx_array,
        r_scale: mlx_array,
        norm_w: mlx_array,
        eps: f32,
        mode: c_int,
        stream: mlx_stream,
    ) -> c_int;
    fn zaya_router(
        choice: *mut mlx_array,
        score: *mut mlx_array,
        state: *mut mlx_array,
        probs: *mut mlx_array,
        skipped: *mut mlx_array,
        x: mlx_array,
        prev: mlx_array,
        states_scale: mlx_array,
        down_w: mlx_array,
        down_b: mlx_array,
        norm_w: mlx_array,
        eps: f32,
        w0: mlx_array,
        b0: mlx_array,
        w2: mlx_array,
        b2: mlx_array,
        w4: mlx_array,
        balancing: mlx_array,
        num_experts: c_int,
        mode: c_int,
        stream: mlx_stream,
    ) -> c_int;
    fn zaya_moe_combine(
        y: *mut mlx_array,
        ey: mlx_array,
        x: mlx_array,
        choice: mlx_array,
        score: mlx_array,
        num_experts: c_int,
        zero_skip: c_int,
        mode: c_int,
        stream: mlx_stream,
    ) -> c_int;
    fn zaya_affine_embed(
        y: *mut mlx_array,
        ids: mlx_array,
        w: mlx_array,
        scales: mlx_array,
        biases: mlx_array,
        bits: c_int,
        group_size: c_int,
        mode: c_int,
        stream: mlx_stream,
    ) -> c_int;
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
    unsafe { CStr::from_ptr(zaya_ext_version()) }
        .to_string_lossy()
        .into_owned()
}

fn last_error() -> ZayaError {
    // SAFETY: thread-local NUL-terminated string owned by the extension, valid until the next call.
    let msg = unsafe { CStr::from_ptr(zaya_ext_last_error()) }
        .to_string_lossy()
        .into_owned();
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

pub(crate) fn call1(f: impl FnOnce(*mut mlx_array, mlx_stream) -> c_int) -> Result<Array> {
    let stream = Stream::thread_local_or_default();
    let mut a = OutHandle::new();
    let rc = f(&mut a.0, stream.as_ptr());
    if rc != 0 {
        return Err(last_error());
    }
    Ok(a.into_array())
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

/// The CCA two-stage causal convolution step (docs/model.md §3.2 step 2, §3.3).
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

/// The nodes [`graph_nodes`] counts, by primitive name, most frequent first.
pub fn graph_histogram(outputs: &[&Array]) -> Result<Vec<(String, i64)>> {
    let handles: Vec<mlx_array> = outputs.iter().map(|a| a.as_ptr()).collect();
    // SAFETY: the handles stay alive for the call; the returned thread-local string is copied at once.
    let p = unsafe { zaya_graph_histogram(handles.as_ptr(), handles.len()) };
    if p.is_null() {
        return Err(last_error());
    }
    let text = unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned();
    Ok(text
        .lines()
        .filter_map(|l| {
            let (name, n) = l.rsplit_once(' ')?;
            Some((name.to_string(), n.parse().ok()?))
        })
        .collect())
}

/// One run of a custom primitive's CPU task, recorded while [`trace_enable`] is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceEvent {
    /// The primitive's name (e.g. `ZayaAffineMatmul`).
    pub name: &'static str,
    /// Start and end on the clock [`now_ns`] reads (nanoseconds).
    pub start_ns: i64,
    pub end_ns: i64,
}

/// Turns the kernel trace on or off (profiling support; off by default). While on, every custom
/// primitive's CPU task records a [`TraceEvent`] when it runs; [`trace_take`] drains them.
pub fn trace_enable(on: bool) {
    // SAFETY: sets an atomic flag.
    unsafe { zaya_ext_trace_enable(on as c_int) }
}

/// Nanoseconds on the steady clock the kernel trace uses.
pub fn now_ns() -> i64 {
    // SAFETY: reads a clock.
    unsafe { zaya_ext_now_ns() }
}

/// Drains the recorded [`TraceEvent`]s, oldest first.
pub fn trace_take() -> Vec<TraceEvent> {
    const CAP: usize = 4096;
    let mut out = Vec::new();
    loop {
        let mut names = vec![std::ptr::null(); CAP];
        let (mut t0, mut t1) = (vec![0i64; CAP], vec![0i64; CAP]);
        // SAFETY: the three buffers hold CAP entries each.
        let n = unsafe { zaya_ext_trace_take(names.as_mut_ptr(), t0.as_mut_ptr(), t1.as_mut_ptr(), CAP) };
        for i in 0..n {
            // SAFETY: the names are the primitives' static C string literals.
            let name = unsafe { CStr::from_ptr(names[i]) }.to_str().unwrap_or("?");
            out.push(TraceEvent {
                name,
                start_ns: t0[i],
                end_ns: t1[i],
            });
        }
        if n < CAP {
            return out;
        }
    }
}

/// Instruction set of the TurboQuant / affine CPU kernels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum KernelIsa {
    /// Portable scalar C++ (any CPU).
    Scalar,
    /// AVX2 + FMA + F16C, 8 lanes.
    Avx2,
    /// AVX-512 F/BW/DQ/VL, 16 lanes.
    Avx512,
}

impl KernelIsa {
    fn from_c(v: c_int) -> Self {
        match v {
            2 => KernelIsa::Avx512,
            1 => KernelIsa::Avx2,
            _ => KernelIsa::Scalar,
        }
    }
    fn as_c(self) -> c_int {
        self as c_int
    }
}

/// The best kernel instruction set this CPU supports.
pub fn detected_isa() -> KernelIsa {
    // SAFETY: plain query.
    KernelIsa::from_c(unsafe { zaya_ext_detected_isa() })
}

/// The instruction set that ops built now use: the detected one capped by [`set_max_isa`] (or the
/// `ZAYA_EXT_ISA=scalar|avx2|avx512` environment variable). The choice is fixed when an op is built.
pub fn kernel_isa() -> KernelIsa {
    // SAFETY: plain query.
    KernelIsa::from_c(unsafe { zaya_ext_kernel_isa() })
}

/// Caps the kernel instruction set process-wide (for tests and benchmarks); returns the previous cap.
pub fn set_max_isa(level: KernelIsa) -> KernelIsa {
    // SAFETY: atomic store in the extension.
    KernelIsa::from_c(unsafe { zaya_ext_set_max_isa(level.as_c()) })
}

fn c_int_of(v: u32) -> c_int {
    c_int::try_from(v).unwrap_or(c_int::MAX)
}

/// One stacked TurboQuant expert projection (`….tq_packed`, `….tq_norms`).
#[derive(Debug, Clone, Copy)]
pub struct TqWeights<'a> {
    /// `[E, out, ceil(in / (32/bits))]` uint32, codes LSB-first.
    pub packed: &'a Array,
    /// `[E, out]` float16 (as stored), bfloat16 or float32 row norms.
    pub norms: &'a Array,
}

/// The rotation domain of a TurboQuant projection input: codebook, sign vector and bit width.
#[derive(Debug, Clone, Copy)]
pub struct TqCodec<'a> {
    /// `[2^bits]` float32 (sidecar `codebook.{in}.{bits}`).
    pub codebook: &'a Array,
    /// `[in]` float32 ±1 (sidecar `signs.{in}.{seed}`).
    pub signs: &'a Array,
    /// 2, 3 or 4.
    pub bits: u32,
}

/// The TurboQuant routed experts as one fused switch-GLU (docs/bundle-format.md §3–4):
/// `y[d] = down_e(R_d(silu(gate_e x̂) ⊙ up_e x̂))` with `x̂ = R_gu(x)`, `R(v) = H(s ⊙ v)/√dim`.
///
/// * `x`: `[N, H]` float32, **unrotated** (the op applies `gate_up`'s rotation itself);
/// * `idx`: `[N]` or `[N, K]` int32/uint32 expert ids; an id outside `[0, E)` (e.g. ZAYA's skip
///   route `E`) yields a zero row and reads no weights, so the raw router argmax can be passed;
/// * `gate`, `up`: `[E, I, ·]` sharing `gate_up` (codebook keyed on H, signs `[H]`);
///   `down`: `[E, O, ·]` with `down_codec` (codebook keyed on I, signs `[I]`); H and I powers of two.
///
/// Returns `[N, O]` (or `[N, K, O]`) float32; the router's gate weight is not applied.
#[allow(clippy::too_many_arguments)]
pub fn tq_switch_glu(
    x: &Array,
    idx: &Array,
    gate: TqWeights<'_>,
    up: TqWeights<'_>,
    down: TqWeights<'_>,
    gate_up: TqCodec<'_>,
    down_codec: TqCodec<'_>,
    mode: ExtMode,
) -> Result<Array> {
    call1(|y, s| unsafe {
        zaya_tq_switch_glu(
            y,
            x.as_ptr(),
            idx.as_ptr(),
            gate.packed.as_ptr(),
            gate.norms.as_ptr(),
            up.packed.as_ptr(),
            up.norms.as_ptr(),
            down.packed.as_ptr(),
            down.norms.as_ptr(),
            gate_up.codebook.as_ptr(),
            gate_up.signs.as_ptr(),
            c_int_of(gate_up.bits),
            down_codec.codebook.as_ptr(),
            down_codec.signs.as_ptr(),
            c_int_of(down_codec.bits),
            mode.as_c(),
            s,
        )
    })
}

/// `y = x · Wᵀ` for an MLX affine weight (`mx.quantized_matmul(x, w, scales, biases,
/// transpose=True, group_size, bits)`), with f32 accumulation.
///
/// * `x`: `[..., in]` float32; `w`: `[out, in·bits/32]` uint32 (bits 4 or 8);
/// * `scales`, `biases`: `[out, in/group_size]`, float16/bfloat16/float32 (same dtype);
/// * `group_size` divides `in` and is a multiple of `32/bits`.
///
/// Returns `[..., out]` float32.
pub fn affine_matmul(
    x: &Array,
    w: &Array,
    scales: &Array,
    biases: &Array,
    bits: u32,
    group_size: u32,
    mode: ExtMode,
) -> Result<Array> {
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
pub fn affine_multi(parts: &[(&Array, AffineWeight<'_>)], bits: u32, group_size: u32, mode: ExtMode) -> Result<Array> {
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

/// An empty handle standing for an absent optional argument.
struct NoArray(mlx_array);

impl NoArray {
    fn new() -> Self {
        // SAFETY: creates an empty handle (ctx == NULL), freed by Drop.
        NoArray(unsafe { mlx_array_new() })
    }
    fn or(&self, a: Option<&Array>) -> mlx_array {
        a.map_or(self.0, |a| a.as_ptr())
    }
}

impl Drop for NoArray {
    fn drop(&mut self) {
        // SAFETY: an empty handle is freed exactly once.
        unsafe { mlx_sys::mlx_array_free(self.0) };
    }
}

/// The residual scaling of one half-layer merged with its RMSNorm (docs/model.md §2.3, §2.5):
/// `r' = (h + h_bias)·h_scale + [(r + r_bias)·r_scale | r]` and `x = RMSNorm(r'; norm_w, eps)`.
///
/// * `h`, `r`: `[..., H]` float32 (`r` absent in layer 0);
/// * `h_bias`, `h_scale`, `norm_w`: `[H]` float32; `r_scale_bias`: `(r_scale, r_bias)` `[H]` float32.
///
/// Returns `(r', x)`, both `[..., H]` float32.
#[allow(clippy::too_many_arguments)]
pub fn res_norm(
    h: &Array,
    r: Option<&Array>,
    h_bias: &Array,
    h_scale: &Array,
    r_scale_bias: Option<(&Array, &Array)>,
    norm_w: &Array,
    eps: f32,
    mode: ExtMode,
) -> Result<(Array, Array)> {
    let none = NoArray::new();
    call2(|ro, xo, s| unsafe {
        zaya_res_norm(
            ro,
            xo,
            h.as_ptr(),
            none.or(r),
            h_bias.as_ptr(),
            h_scale.as_ptr(),
            none.or(r_scale_bias.map(|p| p.1)),
            none.or(r_scale_bias.map(|p| p.0)),
            norm_w.as_ptr(),
            eps,
            mode.as_c(),
            s,
        )
    })
}

/// Weights of the MoE router for [`router`] (docs/model.md §4.1).
#[derive(Debug, Clone, Copy)]
pub struct RouterWeights<'a> {
    /// `[R, H]` f16/bf16/f32 and its bias `[R]` f32.
    pub down_w: &'a Array,
    pub down_b: &'a Array,
    /// `rmsnorm_eda.weight` `[R]` f32 and its eps.
    pub norm_w: &'a Array,
    pub eps: f32,
    /// `router_mlp.0` `[R, R]` + bias `[R]`, `router_mlp.2` likewise, `router_mlp.4` `[L, R]`.
    pub w0: &'a Array,
    pub b0: &'a Array,
    pub w2: &'a Array,
    pub b2: &'a Array,
    pub w4: &'a Array,
    /// `[L]` f32.
    pub balancing: &'a Array,
    /// Experts E (route ids ≥ E are the MOD skip route).
    pub num_experts: u32,
}

/// Outputs of [`router`].
#[derive(Debug, Clone)]
pub struct RouterOut {
    /// int32 `[N]`.
    pub choice: Array,
    /// f32 `[N]`: the unbiased probability of the choice.
    pub score: Array,
    /// f32 `[N, R]`: the EDA state (pre-norm `r`).
    pub state: Array,
    /// f32 `[N, L]`.
    pub probs: Array,
    /// int32 scalar: tokens whose choice is ≥ E.
    pub skipped: Array,
}

/// The MoE router as one op: `r = x·W_dᵀ + b_d (+ prev ⊙ states_scale)`, RMSNorm, the GELU MLP,
/// softmax, `argmax(p + balancing)`. `x`: `[N, H]` f32; `prev`: `(state [N, R], router_states_scale [R])`.
pub fn router(x: &Array, prev: Option<(&Array, &Array)>, w: RouterWeights<'_>, mode: ExtMode) -> Result<RouterOut> {
    let none = NoArray::new();
    let stream = Stream::thread_local_or_default();
    let mut o: Vec<OutHandle> = (0..5).map(|_| OutHandle::new()).collect();
    let (o0, rest) = o.split_at_mut(1);
    let (o1, rest) = rest.split_at_mut(1);
    let (o2, rest) = rest.split_at_mut(1);
    let (o3, o4) = rest.split_at_mut(1);
    // SAFETY: all handles are valid for the call; outputs are caller-owned empty handles.
    let rc = unsafe {
        zaya_router(
            &mut o0[0].0,
            &mut o1[0].0,
            &mut o2[0].0,
            &mut o3[0].0,
            &mut o4[0].0,
            x.as_ptr(),
            none.or(prev.map(|p| p.0)),
            none.or(prev.map(|p| p.1)),
            w.down_w.as_ptr(),
            w.down_b.as_ptr(),
            w.norm_w.as_ptr(),
            w.eps,
            w.w0.as_ptr(),
            w.b0.as_ptr(),
            w.w2.as_ptr(),
            w.b2.as_ptr(),
            w.w4.as_ptr(),
            w.balancing.as_ptr(),
            c_int_of(w.num_experts),
            mode.as_c(),
            stream.as_ptr(),
        )
    };
    if rc != 0 {
        return Err(last_error());
    }
    let mut it = o.into_iter().map(OutHandle::into_array);
    Ok(RouterOut {
        choice: it.next().unwrap(),
        score: it.next().unwrap(),
        state: it.next().unwrap(),
        probs: it.next().unwrap(),
        skipped: it.next().unwrap(),
    })
}

/// The MoE output: `y[n] = score[n]·ey[n]` for routed tokens (`0 ≤ choice[n] < num_experts`), else
/// `score[n]·x[n]` (`zero_skip = false`, the `p·x` skip route) or zeros. `ey`, `x`: `[N, H]` f32;
/// `choice`: int32 `[N]`; `score`: f32 `[N]`.
pub fn moe_combine(
    ey: &Array,
    x: &Array,
    choice: &Array,
    score: &Array,
    num_experts: u32,
    zero_skip: bool,
    mode: ExtMode,
) -> Result<Array> {
    call1(|y, s| unsafe {
        zaya_moe_combine(
            y,
            ey.as_ptr(),
            x.as_ptr(),
            choice.as_ptr(),
            score.as_ptr(),
            c_int_of(num_experts),
            c_int::from(zero_skip),
            mode.as_c(),
            s,
        )
    })
}

/// Static parameters of [`cca_qk`].
#[derive(Debug, Clone, Copy)]
pub struct CcaQkParams {
    pub q_heads: u32,
    pub kv_heads: u32,
    /// Rotated dims per head (even, ≤ head_dim; 0 = no RoPE).
    pub rotary_dim: u32,
    pub rope_theta: f32,
    /// Keys times `exp(clip(temp, 1e-7, 2))` instead of the raw `temp`.
    pub clamp_temp: bool,
    /// Absolute position of the first frame.
    pub offset: usize,
}

/// Outputs of [`cca_qk`].
#[derive(Debug, Clone)]
pub struct CcaQkOut {
    /// f32 `[B, Hq, T, D]`, post-RoPE.
    pub q: Array,
    /// f32 `[B, Hk, T, D]`, post-RoPE, temperature applied.
    pub k: Array,
    /// f32 `[B, Hk, T, D]`.
    pub v: Array,
    /// f32 `[B, C, S]`.
    pub conv_state: Array,
}

/// The CCA q/k chain after the projections (docs/model.md §3.2 steps 2–6, §3.3) as one op:
/// the two-stage causal conv over `u = [q̃ ‖ k̃]` (`[B, T, (Hq+Hk)·D]` f32) continuing `conv_state`
/// (`[B, C, S]` f32), the mean paths, L2 normalisation to √D, the key temperature, partial NeoX RoPE
/// at `offset + t`, and `values` (`[B, T, Hk·D]` f32) split per KV head. Conv weights `[C, K, C/G]`
/// (MLX layout), biases `[C]` and `temp` `[Hk]` in any float dtype.
#[allow(clippy::too_many_arguments)]
pub fn cca_qk(
    u: &Array,
    conv_state: &Array,
    w0: &Array,
    b0: &Array,
    w1: &Array,
    b1: &Array,
    temp: &Array,
    values: &Array,
    p: CcaQkParams,
    mode: ExtMode,
) -> Result<CcaQkOut> {
    cca_qk_rows(u, conv_state, w0, b0, w1, b1, temp, values, p, &[], mode)
}

/// Positions as C ints for the kernels (an error naming `what` past `i32::MAX`).
fn positions(v: &[usize], what: &str) -> Result<Vec<i32>> {
    v.iter()
        .map(|&x| i32::try_from(x).map_err(|_| ZayaError::Ext(format!("{what}: position {x} out of range"))))
        .collect()
}

/// [`cca_qk`] for a ragged batch: sequence `b` (row `b` of `u`, `conv_state` and `values`) sits at
/// its own position `row_offsets[b]` (`p.offset` is then unused). An empty `row_offsets` is
/// [`cca_qk`].
#[allow(clippy::too_many_arguments)]
pub fn cca_qk_rows(
    u: &Array,
    conv_state: &Array,
    w0: &Array,
    b0: &Array,
    w1: &Array,
    b1: &Array,
    temp: &Array,
    values: &Array,
    p: CcaQkParams,
    row_offsets: &[usize],
    mode: ExtMode,
) -> Result<CcaQkOut> {
    let offset =
        c_int::try_from(p.offset).map_err(|_| ZayaError::Ext(format!("cca_qk: offset {} out of range", p.offset)))?;
    let rows = positions(row_offsets, "cca_qk")?;
    let stream = Stream::thread_local_or_default();
    let (mut a, mut b, mut c, mut d) = (OutHandle::new(), OutHandle::new(), OutHandle::new(), OutHandle::new());
    // SAFETY: valid handles for the call; outputs are caller-owned empty handles.
    let rc = unsafe {
        zaya_cca_qk(
            &mut a.0,
            &mut b.0,
            &mut c.0,
            &mut d.0,
            u.as_ptr(),
            conv_state.as_ptr(),
            w0.as_ptr(),
            b0.as_ptr(),
            w1.as_ptr(),
            b1.as_ptr(),
            temp.as_ptr(),
            values.as_ptr(),
            c_int_of(p.q_heads),
            c_int_of(p.kv_heads),
            c_int_of(p.rotary_dim),
            p.rope_theta,
            c_int::from(p.clamp_temp),
            offset,
            rows.as_ptr(),
            rows.len(),
            mode.as_c(),
            stream.as_ptr(),
        )
    };
    if rc != 0 {
        return Err(last_error());
    }
    Ok(CcaQkOut {
        q: a.into_array(),
        k: b.into_array(),
        v: c.into_array(),
        conv_state: d.into_array(),
    })
}

/// Causal GQA attention of `q` (`[B, Hq, T, D]` f32) over the first `len` positions of the KV cache
/// arrays `k`, `v` (`[B, Hk, capacity, D]` f32): query `t` sits at position `len - T + t`. Softmax of
/// `scale · q·kᵀ` in f32. Returns `[B, T, Hq·D]` f32 (heads concatenated), or `[B·T, Hq·D]` when
/// `flat`.
pub fn cca_attention(
    q: &Array,
    k: &Array,
    v: &Array,
    len: usize,
    scale: f32,
    flat: bool,
    mode: ExtMode,
) -> Result<Array> {
    let len = c_int::try_from(len).map_err(|_| ZayaError::Ext(format!("cca_attention: len {len} out of range")))?;
    call1(|y, s| unsafe {
        zaya_cca_attention(
            y,
            q.as_ptr(),
            k.as_ptr(),
            v.as_ptr(),
            len,
            scale,
            c_int::from(flat),
            mode.as_c(),
            s,
        )
    })
}

/// Writes `k_new`, `v_new` (`[B, Hk, T, D]`) into positions `start..start+T` of the cache storage
/// `k`, `v` (`[B, Hk, capacity, D]`), returning the updated storage (two SliceUpdate nodes, no
/// reshapes; MLX updates in place when the old storage is not shared, e.g. by a snapshot).
pub fn kv_append(k: &Array, v: &Array, k_new: &Array, v_new: &Array, start: usize) -> Result<(Array, Array)> {
    let start = c_int::try_from(start).map_err(|_| ZayaError::Ext(format!("kv_append: start {start} out of range")))?;
    call2(|ko, vo, s| unsafe {
        zaya_kv_append(ko, vo, k.as_ptr(), v.as_ptr(), k_new.as_ptr(), v_new.as_ptr(), start, s)
    })
}

/// [`cca_attention`] for a ragged batch: sequence `b` attends the first `lens[b]` positions of row
/// `b` of the storage `k`, `v` (`[R, Hk, capacity, D]`, `R ≥ B` rows); its query `t` sits at position
/// `lens[b] - T + t`.
pub fn cca_attention_rows(
    q: &Array,
    k: &Array,
    v: &Array,
    lens: &[usize],
    scale: f32,
    flat: bool,
    mode: ExtMode,
) -> Result<Array> {
    let lens = positions(lens, "cca_attention_rows")?;
    call1(|y, s| unsafe {
        zaya_cca_attention_rows(
            y,
            q.as_ptr(),
            k.as_ptr(),
            v.as_ptr(),
            lens.as_ptr(),
            lens.len(),
            scale,
            c_int::from(flat),
            mode.as_c(),
            s,
        )
    })
}

/// Ragged KV append: `k_new`, `v_new` (`[N, Hk, T, D]`) go to positions `starts[b]..starts[b]+T` of
/// row `b` of the storage `k`, `v` (`[R, Hk, capacity, D]` f32, `R ≥ N`). One node per array, written
/// in place when nothing else (e.g. a snapshot) shares the storage.
pub fn kv_append_rows(
    k: &Array,
    v: &Array,
    k_new: &Array,
    v_new: &Array,
    starts: &[usize],
    mode: ExtMode,
) -> Result<(Array, Array)> {
    let starts = positions(starts, "kv_append_rows")?;
    call2(|ko, vo, s| unsafe {
        zaya_kv_append_rows(
            ko,
            vo,
            k.as_ptr(),
            v.as_ptr(),
            k_new.as_ptr(),
            v_new.as_ptr(),
            starts.as_ptr(),
            starts.len(),
            mode.as_c(),
            s,
        )
    })
}
