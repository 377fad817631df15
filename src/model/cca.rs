//! The CCA attention half-layer (docs/model.md §3): q/k latent projections, the two-stage
//! causal conv over time (through [`ext::cca_conv`], carrying `conv_state`), the mean paths, fp32 L2
//! q/k normalisation to √D with the key temperature, dual time-stream values (current token ‖ previous
//! token via `prev_hs`), partial NeoX RoPE, GQA softmax attention over the KV cache, and `o_proj`.
//! [`CcaAttention::forward`] runs the layer's planned path: plain MLX ops (plus the conv primitive),
//! or the fused path (projections as [`ext::affine_multi`] nodes, steps 2–6 as [`ext::cca_qk`], the
//! cache append as [`ext::kv_append`], attention as [`ext::cca_attention`]);
//! `CcaAttention::forward_batch` is one decode step of a ragged batch.
use mlx_rs::fast::{self, ScaledDotProductAttentionMask};
use mlx_rs::macros::ModuleParameters;
use mlx_rs::module::Param;
use mlx_rs::ops::indexing::IndexOp;
use mlx_rs::ops::{broadcast_to, clip, concatenate, exp, maximum, zeros_dtype};
use mlx_rs::{Array, Dtype};

use crate::config::ZayaConfig;
use crate::error::Result;
use crate::ext::{self, ExtMode};
use crate::model::cache::{AttnCache, StepTrace};
use crate::model::plan::Path;
use crate::quant::linear::{take_float, LinearBackend, QLinear, WeightSource};
use crate::quant::WeightFormat;

/// One CCA conv stage (`qkv.conv_qk.{0,1}`): weight in MLX layout `[C, K, C/G]`, bias `[C]`; f32 for
/// the plain linear backend, as stored (f16/bf16/f32) for the fused one (its kernels read them so).
#[derive(Debug, Clone, ModuleParameters)]
pub struct ConvStage {
    #[param]
    pub weight: Param<Array>,
    #[param]
    pub bias: Param<Array>,
}

/// `self_attn.qkv`: the CCA projections, convs and key temperature.
#[derive(Debug, Clone, ModuleParameters)]
pub struct CcaQkv {
    #[param]
    pub linear_q: QLinear,
    #[param]
    pub linear_k: QLinear,
    #[param]
    pub val_proj1: QLinear,
    #[param]
    pub val_proj2: QLinear,
    /// `conv_qk.0` (depthwise) and `conv_qk.1` (grouped, one group per head).
    #[param]
    pub conv_qk: Vec<ConvStage>,
    /// Per-KV-head key multiplier, f32 `[Hk]`.
    #[param]
    pub temp: Param<Array>,
}

/// Shapes and options of the attention computation.
#[derive(Debug, Clone, Copy)]
pub struct CcaDims {
    pub hidden: usize,
    pub q_heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub rotary_dim: usize,
    pub rope_theta: f32,
    pub clamp_temp: bool,
}

fn affine_weight(l: &QLinear) -> Option<ext::AffineWeight<'_>> {
    Some(ext::AffineWeight {
        w: &l.weight,
        scales: l.scales.value.as_ref()?,
        biases: l.biases.value.as_ref()?,
    })
}

/// A CCA attention half-layer (`model.layers.{n}.self_attn`).
#[derive(Debug, Clone, ModuleParameters)]
pub struct CcaAttention {
    #[param]
    pub qkv: CcaQkv,
    #[param]
    pub o_proj: QLinear,
    pub dims: CcaDims,
}

/// How one attention forward runs: the layer's [`LayerPlan::Attention`](crate::model::plan::LayerPlan)
/// path, how the mlx-ext ops execute, and the cache's settings.
#[derive(Debug, Clone, Copy)]
pub struct CcaOptions {
    /// `Fused`: the projections as [`ext::affine_multi`] nodes, steps 2–6 as [`ext::cca_qk`], the
    /// append as [`ext::kv_append`], attention as [`ext::cca_attention`] (f32 input only). `Plain`:
    /// MLX ops around the [`ext::cca_conv`] primitive.
    pub path: Path,
    pub ext: ExtMode,
    pub kv_step: usize,
    /// Keep this forward's per-position state in the cache ([`crate::model::cache::ModelCache::keep_recorded`]).
    pub record: bool,
}

/// Records the per-position state of a forward: `state` `[B, C, S]` before it, the new pre-conv
/// frames `u` `[B, T, C]` and the layer input `x` `[B, T, H]`.
fn record_trace(cache: &mut AttnCache, state: &Array, u: &Array, x: &Array) -> Result<()> {
    cache.trace = Some(StepTrace {
        len_before: cache.len(),
        padded: concatenate(&[state.transpose_axes(&[0, 2, 1])?, u.clone()], 1)?,
        x: x.clone(),
    });
    Ok(())
}

impl CcaAttention {
    /// Loads `base` = `model.layers.{n}.self_attn`; float linear weights go to `dtype`, `temp` to
    /// f32, conv weights to f32 (plain linear backend) or as stored (fused).
    pub fn load(src: &mut WeightSource, base: &str, cfg: &ZayaConfig, dtype: Dtype) -> Result<Self> {
        let h = cfg.hidden_size;
        let (qd, kd) = (cfg.q_dim(), cfg.k_dim());
        let c = cfg.conv_channels() as i32;
        let cg = cfg.head_dim as i32;
        let q = format!("{base}.qkv");
        let f32 = Dtype::Float32;
        let conv = |src: &mut WeightSource, i: usize, k: usize, in_g: i32| -> Result<ConvStage> {
            let (wn, bn) = (format!("{q}.conv_qk.{i}.weight"), format!("{q}.conv_qk.{i}.bias"));
            let stored = |src: &WeightSource, n: &str| {
                if src.linear_backend() == LinearBackend::Fused {
                    src.peek_dtype(n).unwrap_or(f32)
                } else {
                    f32
                }
            };
            // the grouped stage's weight stays as stored (the fused kernel streams it); the small
            // depthwise weight and the biases are converted to f32 once here instead of per call
            let wd = if in_g > 1 { stored(src, &wn) } else { f32 };
            let bd = f32;
            Ok(ConvStage {
                weight: Param::new(take_float(src, &wn, &[c, k as i32, in_g], wd)?),
                bias: Param::new(take_float(src, &bn, &[c], bd)?),
            })
        };
        let qkv = CcaQkv {
            linear_q: QLinear::load(src, &format!("{q}.linear_q"), h, qd, false, dtype)?,
            linear_k: QLinear::load(src, &format!("{q}.linear_k"), h, kd, false, dtype)?,
            val_proj1: QLinear::load(src, &format!("{q}.val_proj1"), h, kd / 2, false, dtype)?,
            val_proj2: QLinear::load(src, &format!("{q}.val_proj2"), h, kd / 2, false, dtype)?,
            conv_qk: vec![conv(src, 0, cfg.cca_time0, 1)?, conv(src, 1, cfg.cca_time1, cg)?],
            temp: Param::new(take_float(src, &format!("{q}.temp"), &[cfg.num_kv_heads as i32], f32)?),
        };
        Ok(CcaAttention {
            qkv,
            o_proj: QLinear::load(src, &format!("{base}.o_proj"), qd, h, false, dtype)?,
            dims: CcaDims {
                hidden: h,
                q_heads: cfg.num_q_heads,
                kv_heads: cfg.num_kv_heads,
                head_dim: cfg.head_dim,
                rotary_dim: cfg.rotary_dim(),
                rope_theta: cfg.rope_theta,
                clamp_temp: cfg.clamp_temp,
            },
        })
    }

    /// `x [B·T, H]` (input_norm output in the compute dtype, rows sequence-major) at absolute position
    /// `offset` → `h_n [B·T, H]`. Reads and updates the layer's KV cache, `conv_state` and `prev_hs`.
    #[allow(clippy::too_many_arguments)]
    pub fn forward(
        &self,
        x: &Array,
        b: i32,
        t: i32,
        cache: &mut AttnCache,
        offset: usize,
        opts: CcaOptions,
    ) -> Result<Array> {
        match opts.path {
            Path::Fused => self.forward_fused(x, b, t, cache, offset, opts),
            Path::Plain => {
                let hdim = self.dims.hidden as i32;
                let y = self.forward_plain(&x.reshape(&[b, t, hdim])?, cache, offset, opts)?;
                Ok(y.reshape(&[b * t, hdim])?)
            }
        }
    }

    /// The plain path in MLX ops (plus the conv primitive), `x [B, T, H]` → `[B, T, H]`: the
    /// parity reference of [`forward_fused`](Self::forward_fused).
    fn forward_plain(&self, x: &Array, cache: &mut AttnCache, offset: usize, opts: CcaOptions) -> Result<Array> {
        let d = self.dims;
        let (b, t) = (x.shape()[0], x.shape()[1]);
        let (hq, hk, hd) = (d.q_heads as i32, d.kv_heads as i32, d.head_dim as i32);
        let g = hq / hk;
        let f32 = Dtype::Float32;
        let c = (hq + hk) * hd;
        let s = (self.qkv.conv_qk[0].weight.shape()[1] - 1) + (self.qkv.conv_qk[1].weight.shape()[1] - 1);

        // 1. latent projections
        let q_pre = self.qkv.linear_q.forward(x)?.as_dtype(f32)?; // [B, T, Hq·D]
        let k_pre = self.qkv.linear_k.forward(x)?.as_dtype(f32)?; // [B, T, Hk·D]

        // 2. two-stage causal conv over [q̃ ‖ k̃] with the carried frames
        let u = concatenate(&[&q_pre, &k_pre], -1)?;
        let state = match cache.conv_state.take() {
            Some(st) => st,
            None => zeros_dtype(&[b, c, s], f32)?,
        };
        if opts.record {
            record_trace(cache, &state, &u, x)?;
        }
        let f = |a: &Array| -> Result<Array> { Ok(if a.dtype() == f32 { a.clone() } else { a.as_dtype(f32)? }) };
        let (z, new_state) = ext::cca_conv(
            &u,
            &state,
            &f(&self.qkv.conv_qk[0].weight)?,
            &f(&self.qkv.conv_qk[0].bias)?,
            &f(&self.qkv.conv_qk[1].weight)?,
            &f(&self.qkv.conv_qk[1].bias)?,
            opts.ext,
        )?;
        cache.conv_state = Some(new_state);

        // 3. mean paths from the pre-conv projections
        let q4 = q_pre.reshape(&[b, t, hq, hd])?;
        let k4 = k_pre.reshape(&[b, t, hk, hd])?;
        let k_rep = broadcast_to(k4.reshape(&[b, t, hk, 1, hd])?, &[b, t, hk, g, hd])?.reshape(&[b, t, hq, hd])?;
        let q_mean = q4.add(&k_rep)?.multiply(Array::from_f32(0.5))?;
        let k_mean = q_mean.reshape(&[b, t, hk, g, hd])?.mean_axis(3, false)?;
        let z_q = z.index((.., .., 0..hq * hd)).reshape(&[b, t, hq, hd])?;
        let z_k = z.index((.., .., hq * hd..)).reshape(&[b, t, hk, hd])?;
        let queries = z_q.add(&q_mean)?;
        let keys = z_k.add(&k_mean)?;

        // 4. fp32 L2 normalisation to √D; keys times the temperature
        let sqrt_d = Array::from_f32((d.head_dim as f32).sqrt());
        let l2 = |a: &Array| -> Result<Array> {
            Ok(maximum(a.square()?.sum_axis(-1, true)?.sqrt()?, Array::from_f32(1e-6))?)
        };
        let queries = queries.multiply(sqrt_d.divide(l2(&queries)?)?)?;
        let temp = if d.clamp_temp {
            exp(clip(&*self.qkv.temp, (1e-7f32, 2.0f32))?)?
        } else {
            (*self.qkv.temp).clone()
        };
        let keys = keys
            .multiply(sqrt_d.divide(l2(&keys)?)?)?
            .multiply(temp.reshape(&[1, 1, hk, 1])?)?;

        // 5. values: [x_t W_v1ᵀ ‖ x_{t-1} W_v2ᵀ] reshaped to Hk heads
        let prev = match cache.prev_hs.take() {
            Some(p) => p,
            None => zeros_dtype(&[b, d.hidden as i32], f32)?,
        };
        cache.prev_hs = Some(x.index((.., t - 1, ..)).as_dtype(f32)?);
        let prev = prev.as_dtype(x.dtype())?.reshape(&[b, 1, d.hidden as i32])?;
        let shifted = if t > 1 {
            concatenate(&[prev, x.index((.., 0..t - 1, ..))], 1)?
        } else {
            prev
        };
        let v1 = self.qkv.val_proj1.forward(x)?;
        let v2 = self.qkv.val_proj2.forward(&shifted)?;
        let values = concatenate(&[v1, v2], -1)?.reshape(&[b, t, hk, hd])?.as_dtype(f32)?;

        // 6. [B, heads, T, D], partial NeoX RoPE at the absolute position
        let queries = queries.transpose_axes(&[0, 2, 1, 3])?;
        let keys = keys.transpose_axes(&[0, 2, 1, 3])?;
        let values = values.transpose_axes(&[0, 2, 1, 3])?;
        let rd = d.rotary_dim as i32;
        let (queries, keys) = if rd > 0 {
            let off = offset as i32;
            (
                fast::rope(&queries, rd, false, d.rope_theta, 1.0, off, None)?,
                fast::rope(&keys, rd, false, d.rope_theta, 1.0, off, None)?,
            )
        } else {
            (queries, keys)
        };

        // 7. GQA attention over the cache (fp32), causal within the chunk
        let (all_k, all_v) = cache.update_and_fetch(&keys, &values, opts.kv_step)?;
        let scale = 1.0 / (d.head_dim as f32).sqrt();
        let mask = if t > 1 {
            Some(ScaledDotProductAttentionMask::Causal)
        } else {
            None
        };
        let out = fast::scaled_dot_product_attention(&queries, &all_k, &all_v, scale, mask, None)?;

        // 8. heads concatenated → o_proj
        let out = out
            .transpose_axes(&[0, 2, 1, 3])?
            .reshape(&[b, t, hq * hd])?
            .as_dtype(x.dtype())?;
        self.o_proj.forward(&out)
    }

    /// Two projections of one affine spec on the fused backend as one [`ext::affine_multi`] node, else
    /// two linears concatenated. Output f32 `[.., out_a + out_b]`.
    fn project_pair(a: (&Array, &QLinear), b: (&Array, &QLinear), mode: ExtMode) -> Result<Array> {
        let spec = |l: &QLinear| match l.format {
            WeightFormat::Affine { bits, group_size }
                if l.backend == LinearBackend::Fused && l.bias.value.is_none() =>
            {
                Some((bits, group_size))
            }
            _ => None,
        };
        match (spec(a.1), spec(b.1)) {
            (Some(sa), Some(sb)) if sa == sb => {
                if let (Some(wa), Some(wb)) = (affine_weight(a.1), affine_weight(b.1)) {
                    let mode = ext::MatmulMode {
                        ext: mode,
                        precision: a.1.matmul_mode().precision,
                    };
                    return ext::affine_multi(&[(a.0, wa), (b.0, wb)], sa.0, sa.1, mode);
                }
                Self::project_pair_plain(a, b)
            }
            _ => Self::project_pair_plain(a, b),
        }
    }

    fn project_pair_plain(a: (&Array, &QLinear), b: (&Array, &QLinear)) -> Result<Array> {
        let f32 = Dtype::Float32;
        let ya = a.1.forward(a.0)?.as_dtype(f32)?;
        let yb = b.1.forward(b.0)?.as_dtype(f32)?;
        let lead: Vec<i32> = ya.shape()[..ya.ndim() - 1].to_vec();
        let mut shape = lead;
        shape.push(*yb.shape().last().unwrap());
        Ok(concatenate(&[ya, yb.reshape(&shape)?], -1)?)
    }

    /// The fused path over rows: `x [B·T, H]` (f32) → `h_n [B·T, H]`. q/k projections as one node,
    /// values as one node, the conv, mean paths, normalisation and RoPE as one ([`ext::cca_qk`]),
    /// the cache append, attention as one ([`ext::cca_attention`]), then `o_proj`. Same results as
    /// [`forward_plain`](Self::forward_plain).
    fn forward_fused(
        &self,
        x: &Array,
        b: i32,
        t: i32,
        cache: &mut AttnCache,
        offset: usize,
        opts: CcaOptions,
    ) -> Result<Array> {
        let d = self.dims;
        let hdim = d.hidden as i32;
        let (hq, hk, hd) = (d.q_heads as i32, d.kv_heads as i32, d.head_dim as i32);
        let f32 = Dtype::Float32;
        let c = (hq + hk) * hd;
        let s = (self.qkv.conv_qk[0].weight.shape()[1] - 1) + (self.qkv.conv_qk[1].weight.shape()[1] - 1);
        let qkv = &self.qkv;

        let prev = match cache.prev_hs.take() {
            Some(p) => p,
            None => zeros_dtype(&[b, hdim], f32)?,
        };
        let (shifted, last) = if t > 1 {
            let x3 = x.reshape(&[b, t, hdim])?;
            let sh = concatenate(&[prev.reshape(&[b, 1, hdim])?, x3.index((.., 0..t - 1, ..))], 1)?;
            (sh.reshape(&[b * t, hdim])?, x3.index((.., t - 1, ..)))
        } else {
            (prev, x.clone()) // one row per sequence: x_{t-1} is prev_hs, x itself the next one
        };
        cache.prev_hs = Some(last);
        // [q̃ ‖ k̃] and [v1(x_t) ‖ v2(x_{t-1})], rows [B·T, ·], two nodes. (All four as one node measured
        // 2% slower per decode step, alternating both in one process: more range starts per thread.)
        let u = Self::project_pair((x, &qkv.linear_q), (x, &qkv.linear_k), opts.ext)?;
        let values = Self::project_pair((x, &qkv.val_proj1), (&shifted, &qkv.val_proj2), opts.ext)?;

        let state = match cache.conv_state.take() {
            Some(st) => st,
            None => zeros_dtype(&[b, c, s], f32)?,
        };
        if opts.record {
            record_trace(cache, &state, &u.reshape(&[b, t, c])?, &x.reshape(&[b, t, hdim])?)?;
        }
        let out = ext::cca_qk(
            &u,
            &state,
            &qkv.conv_qk[0].weight,
            &qkv.conv_qk[0].bias,
            &qkv.conv_qk[1].weight,
            &qkv.conv_qk[1].bias,
            &qkv.temp,
            &values,
            self.qk_params(offset),
            opts.ext,
        )?;
        cache.conv_state = Some(out.conv_state);
        let (all_k, all_v, len) = cache.append(&out.k, &out.v, opts.kv_step)?;
        let scale = 1.0 / (d.head_dim as f32).sqrt();
        let attn = ext::cca_attention(&out.q, &all_k, &all_v, len, scale, true, opts.ext)?;
        self.o_proj.forward(&attn)
    }

    /// The q/k chain's parameters at RoPE position `offset` (per-row positions override it).
    fn qk_params(&self, offset: usize) -> ext::CcaQkParams {
        let d = self.dims;
        ext::CcaQkParams {
            q_heads: d.q_heads as u32,
            kv_heads: d.kv_heads as u32,
            rotary_dim: d.rotary_dim as u32,
            rope_theta: d.rope_theta,
            clamp_temp: d.clamp_temp,
            offset,
        }
    }

    /// One decode step of a ragged batch on the fused path: `x [N, H]` (f32 input_norm output, one
    /// row per sequence), sequence `b` at its own position `lens[b]`, reading and updating the
    /// batch's state of this layer (KV rows, conv states, `prev_hs`). Per layer the same nodes as one
    /// sequence's decode step, whatever N: the projections over N rows, [`ext::cca_qk_rows`],
    /// [`ext::kv_append_rows`] and [`ext::cca_attention_rows`], `o_proj`.
    pub(crate) fn forward_batch(
        &self,
        x: &Array,
        st: &mut crate::runtime::engine::BatchLayer,
        lens: &[usize],
        mode: ExtMode,
    ) -> Result<Array> {
        let d = self.dims;
        let qkv = &self.qkv;
        let prev = st.prev.take().expect("a batch row has prev_hs");
        st.prev = Some(x.clone());
        let u = Self::project_pair((x, &qkv.linear_q), (x, &qkv.linear_k), mode)?;
        let values = Self::project_pair((x, &qkv.val_proj1), (&prev, &qkv.val_proj2), mode)?;
        let state = st.conv.take().expect("a batch row has a conv state");
        let out = ext::cca_qk_rows(
            &u,
            &state,
            &qkv.conv_qk[0].weight,
            &qkv.conv_qk[0].bias,
            &qkv.conv_qk[1].weight,
            &qkv.conv_qk[1].bias,
            &qkv.temp,
            &values,
            self.qk_params(0),
            lens,
            mode,
        )?;
        st.conv = Some(out.conv_state);
        let (k, v) = ext::kv_append_rows(
            &st.keys.take().expect("reserved storage"),
            &st.values.take().expect("reserved storage"),
            &out.k,
            &out.v,
            lens,
            mode,
        )?;
        st.keys = Some(k.clone());
        st.values = Some(v.clone());
        let after: Vec<usize> = lens.iter().map(|l| l + 1).collect();
        let scale = 1.0 / (d.head_dim as f32).sqrt();
        let attn = ext::cca_attention_rows(&out.q, &k, &v, &after, scale, true, mode)?;
        self.o_proj.forward(&attn)
    }
}
