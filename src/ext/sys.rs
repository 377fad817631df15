//! Every foreign function this crate declares, in one place: the C ABI of our C++ MLX extension
//! (`mlx-ext/zaya_ext.h`, compiled by build.rs) and the one libm function the encoders need. Only
//! `ext` wraps them in safe functions (and `bundle::mmap` the external-array constructor).
#![allow(clippy::too_many_arguments)]
use std::os::raw::{c_int, c_void};

use mlx_sys::{mlx_array, mlx_stream};

extern "C" {
    pub(crate) fn zaya_ext_last_error() -> *const std::os::raw::c_char;
    pub(crate) fn zaya_ext_version() -> *const std::os::raw::c_char;
    pub(crate) fn zaya_cca_conv(
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
    pub(crate) fn zaya_graph_nodes(outs: *const mlx_array, n: usize, nodes: *mut i64, casts: *mut i64) -> c_int;
    pub(crate) fn zaya_graph_histogram(outs: *const mlx_array, n: usize) -> *const std::os::raw::c_char;
    pub(crate) fn zaya_ext_trace_enable(on: c_int);
    pub(crate) fn zaya_ext_now_ns() -> i64;
    pub(crate) fn zaya_ext_trace_take(
        names: *mut *const std::os::raw::c_char,
        t0: *mut i64,
        t1: *mut i64,
        cap: usize,
    ) -> usize;
    pub(crate) fn zaya_ext_detected_isa() -> c_int;
    pub(crate) fn zaya_ext_kernel_isa() -> c_int;
    pub(crate) fn zaya_ext_set_max_isa(level: c_int) -> c_int;
    pub(crate) fn zaya_ext_bf16_dot() -> c_int;
    pub(crate) fn zaya_ext_panel_min_rows(kind: c_int) -> c_int;
    pub(crate) fn zaya_tq_switch_glu(
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
    pub(crate) fn zaya_affine_matmul(
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
    pub(crate) fn zaya_dense_matmul(
        y: *mut mlx_array,
        x: mlx_array,
        w: mlx_array,
        bias: mlx_array,
        mode: c_int,
        stream: mlx_stream,
    ) -> c_int;
    pub(crate) fn zaya_affine_multi(
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
    pub(crate) fn zaya_cca_qk(
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
    pub(crate) fn zaya_cca_attention(
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
    pub(crate) fn zaya_cca_attention_rows(
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
    pub(crate) fn zaya_kv_append_rows(
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
    pub(crate) fn zaya_kv_append(
        k_out: *mut mlx_array,
        v_out: *mut mlx_array,
        k: mlx_array,
        v: mlx_array,
        k_new: mlx_array,
        v_new: mlx_array,
        start: c_int,
        stream: mlx_stream,
    ) -> c_int;
    pub(crate) fn zaya_res_norm(
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
    pub(crate) fn zaya_router(
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
    pub(crate) fn zaya_moe_combine(
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
    pub(crate) fn zaya_affine_embed(
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

    // mlx-ext/external_array.cpp: an MLX array over bytes the caller keeps alive (bundle::mmap)
    pub(crate) fn zaya_array_from_external(
        out: *mut mlx_array,
        data: *mut c_void,
        shape: *const c_int,
        ndim: c_int,
        dtype: c_int,
        payload: *mut c_void,
        release: unsafe extern "C" fn(*mut c_void),
        zero_copy: *mut c_int,
        consumed: *mut c_int,
    ) -> c_int;
}

#[cfg(feature = "tools")]
extern "C" {
    // C99/POSIX reentrant log-gamma from the platform libm (glibc, Apple libm): the codebook of
    // tools::encode.
    pub(crate) fn lgamma_r(x: f64, sign: *mut c_int) -> f64;
}
