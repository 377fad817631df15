//! The TurboQuant routed experts as one fused switch-GLU op.

use mlx_rs::Array;

use super::handle::*;
use super::sys::*;
use super::MatmulMode;
use crate::error::Result;

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
/// Returns `[N, O]` (or `[N, K, O]`) float32; the router's gate weight is not applied. `mode`: an
/// [`ExtMode`](super::ExtMode) (f32) or a [`MatmulMode`].
#[allow(clippy::too_many_arguments)]
pub fn tq_switch_glu(
    x: &Array,
    idx: &Array,
    gate: TqWeights<'_>,
    up: TqWeights<'_>,
    down: TqWeights<'_>,
    gate_up: TqCodec<'_>,
    down_codec: TqCodec<'_>,
    mode: impl Into<MatmulMode>,
) -> Result<Array> {
    let mode = mode.into();
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
