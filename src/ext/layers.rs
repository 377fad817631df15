//! Fused layer ops: residual scaling + merge + RMSNorm, the MoE router, the MoE output.
use std::os::raw::c_int;

use mlx_rs::{Array, Stream};

use super::handle::*;
use super::sys::*;
use super::{ExtMode, MatmulMode};
use crate::error::Result;

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
    let none = OutHandle::new();
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
/// With [`MatmulPrecision::Bf16`](super::MatmulPrecision) the three layers' GEMMs take bf16 dot
/// products (f32 accumulation) in calls of 20 or more token rows on CPUs with AVX512-BF16; the rest
/// (bias, norm, GELU, softmax, the choice) stays f32.
pub fn router(
    x: &Array,
    prev: Option<(&Array, &Array)>,
    w: RouterWeights<'_>,
    mode: impl Into<MatmulMode>,
) -> Result<RouterOut> {
    let mode = mode.into();
    let none = OutHandle::new();
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
