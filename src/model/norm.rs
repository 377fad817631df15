//! The config-independent layers every half-layer shares: [`RmsNorm`] and the residual scaling and
//! merge [`ResScale`] (with its fused merge + RMSNorm form), docs/model.md §2.3, §2.5. They live apart
//! from `model` so that `model`, `cca` and `moe` all depend on them and not on each other.

use mlx_rs::macros::ModuleParameters;
use mlx_rs::module::Param;
use mlx_rs::{fast, Array, Dtype};

use crate::error::Result;
use crate::ext::{self, ExtMode};
use crate::model::plan::Path;
use crate::quant::linear::{take_float, take_float_opt, WeightSource};

/// RMSNorm with a plain weight: `w ⊙ x / sqrt(mean(x²) + eps)` (input cast to the weight dtype,
/// statistics in f32 by MLX's `fast::rms_norm`).
#[derive(Debug, Clone, ModuleParameters)]
pub struct RmsNorm {
    #[param]
    pub weight: Param<Array>,
    pub eps: f32,
}

impl RmsNorm {
    /// Loads `{base}.weight` `[dim]` converted to `dtype`.
    pub fn load(src: &mut WeightSource, base: &str, dim: usize, eps: f32, dtype: Dtype) -> Result<Self> {
        Ok(RmsNorm {
            weight: Param::new(take_float(src, &format!("{base}.weight"), &[dim as i32], dtype)?),
            eps,
        })
    }

    pub fn forward(&self, x: &Array) -> Result<Array> {
        let x = if x.dtype() == self.weight.dtype() {
            x.clone()
        } else {
            x.as_dtype(self.weight.dtype())?
        };
        Ok(fast::rms_norm(&x, Some(&*self.weight), self.eps)?)
    }
}

/// Learned residual scaling (`res_scale`): `h' = (h + b_h)·s_h`, `R' = (R + b_r)·s_r`, in f32.
/// Layer 0 has only the hidden pair.
#[derive(Debug, Clone, ModuleParameters)]
pub struct ResScale {
    #[param]
    pub hidden_states_scale: Param<Array>,
    #[param]
    pub hidden_states_bias: Param<Array>,
    #[param]
    pub residual_scale: Param<Option<Array>>,
    #[param]
    pub residual_bias: Param<Option<Array>>,
}

/// mlx-rs's unary-module interface (`Module<&Array>`): the same as [`RmsNorm::forward`].
impl mlx_rs::module::Module<&Array> for RmsNorm {
    type Output = Array;
    type Error = crate::error::ZayaError;

    fn forward(&mut self, x: &Array) -> Result<Array> {
        RmsNorm::forward(self, x)
    }

    fn training_mode(&mut self, _mode: bool) {}
}

impl ResScale {
    /// Loads `base` (= `….res_scale`); `residual`: whether the residual pair must exist.
    pub fn load(src: &mut WeightSource, base: &str, dim: usize, residual: bool) -> Result<Self> {
        let f = Dtype::Float32;
        let d = [dim as i32];
        let (rs, rb) = if residual {
            (
                Some(take_float(src, &format!("{base}.residual_scale"), &d, f)?),
                Some(take_float(src, &format!("{base}.residual_bias"), &d, f)?),
            )
        } else {
            (
                take_float_opt(src, &format!("{base}.residual_scale"), &d, f)?,
                take_float_opt(src, &format!("{base}.residual_bias"), &d, f)?,
            )
        };
        Ok(ResScale {
            hidden_states_scale: Param::new(take_float(src, &format!("{base}.hidden_states_scale"), &d, f)?),
            hidden_states_bias: Param::new(take_float(src, &format!("{base}.hidden_states_bias"), &d, f)?),
            residual_scale: Param::new(rs),
            residual_bias: Param::new(rb),
        })
    }

    /// True when [`merge_norm`](Self::merge_norm) can run fused with `norm`: every weight f32.
    pub fn fused_supported(&self, norm: &RmsNorm) -> bool {
        let f32 = Dtype::Float32;
        norm.weight.dtype() == f32
            && self.hidden_states_scale.dtype() == f32
            && self.hidden_states_bias.dtype() == f32
            && self.residual_scale.value.as_ref().is_none_or(|s| s.dtype() == f32)
            && self.residual_bias.value.as_ref().is_none_or(|b| b.dtype() == f32)
    }

    /// [`merge`](Self::merge) followed by `norm`: returns `(R' + h', norm(R' + h'))`, both f32; one
    /// fused op ([`ext::res_norm`]) on the fused path (requires
    /// [`fused_supported`](Self::fused_supported)), MLX ops on the plain one.
    pub fn merge_norm(
        &self,
        residual: Option<&Array>,
        h: &Array,
        norm: &RmsNorm,
        path: Path,
        mode: ExtMode,
    ) -> Result<(Array, Array)> {
        match path {
            Path::Plain => {
                let r = self.merge(residual, h)?;
                let x = norm.forward(&r)?;
                Ok((r, x))
            }
            Path::Fused => {
                let f32 = Dtype::Float32;
                let pair = match (self.residual_scale.value.as_ref(), self.residual_bias.value.as_ref()) {
                    (Some(s), Some(b)) if residual.is_some() => Some((s, b)),
                    _ => None,
                };
                let h = if h.dtype() == f32 { h.clone() } else { h.as_dtype(f32)? };
                ext::res_norm(
                    &h,
                    residual,
                    &self.hidden_states_bias,
                    &self.hidden_states_scale,
                    pair,
                    &norm.weight,
                    norm.eps,
                    mode,
                )
            }
        }
    }

    /// Scales `(R, h)` and merges them: returns the new residual stream `R' + h'` (or `h'`), f32.
    pub fn merge(&self, residual: Option<&Array>, h: &Array) -> Result<Array> {
        let hs = h
            .as_dtype(Dtype::Float32)?
            .add(&*self.hidden_states_bias)?
            .multiply(&*self.hidden_states_scale)?;
        match residual {
            None => Ok(hs),
            Some(r) => {
                let r = match (self.residual_scale.value.as_ref(), self.residual_bias.value.as_ref()) {
                    (Some(s), Some(b)) => r.add(b)?.multiply(s)?,
                    _ => r.clone(),
                };
                Ok(r.add(&hs)?)
            }
        }
    }
}
