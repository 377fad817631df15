//! CCA attention ops: the conv step, the fused q/k chain, attention over the KV storage, the KV
//! append, and their ragged-batch forms (a position or a length per row).
use std::os::raw::c_int;

use mlx_rs::{Array, Stream};

use super::handle::*;
use super::sys::*;
use super::ExtMode;
use crate::error::{Result, ZayaError};

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
