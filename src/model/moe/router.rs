//! The MoE router (docs/model.md §4), in f32 (the fused op's matmuls in bf16 under `--dtype bf16`): `r = W_d x + b_d (+ ρ ⊙ router_states_scale)` with
//! the previous MoE layer's EDA state ρ, `ρ_next = r`, `p = softmax(W₄ GELU(W₂ GELU(W₀ RMSNorm(r) +
//! b₀) + b₂))`, choice `e* = argmax(p + balancing_biases)` (index E = the MOD skip route), gate weight
//! `w = p[e*]`. Plain MLX ops ([`Router::forward`]) or one fused op ([`Router::forward_fused`]).
use std::rc::Rc;

use mlx_rs::macros::ModuleParameters;
use mlx_rs::module::{ModuleParamMut, ModuleParamRef, ModuleParameters, Param};
use mlx_rs::nested::{NestedHashMap, NestedValue};
use mlx_rs::ops::indexing::{argmax_axis, take_along_axis};
use mlx_rs::ops::{erf, softmax_axis};
use mlx_rs::{Array, Dtype};

use crate::config::ZayaConfig;
use crate::error::Result;
use crate::ext::{self, MatmulMode};
use crate::model::norm::RmsNorm;
use crate::quant::linear::{take_float, take_float_opt, LinearBackend, QLinear, WeightSource};
use crate::quant::WeightFormat;

/// Exact-erf GELU (torch `nn.GELU()` default): `x · (1 + erf(x/√2)) / 2`.
pub fn gelu(x: &Array) -> Result<Array> {
    let inner = erf(x.multiply(Array::from_f32(std::f32::consts::FRAC_1_SQRT_2))?)?;
    Ok(x.multiply(inner.add(Array::from_f32(1.0))?)?
        .multiply(Array::from_f32(0.5))?)
}

/// The router MLP `router_mlp.{0,2,4}` (GELUs at 1 and 3 have no parameters; 4 has no bias).
#[derive(Debug, Clone)]
pub struct RouterMlp {
    pub l0: QLinear,
    pub l2: QLinear,
    pub l4: QLinear,
}

impl RouterMlp {
    fn items(&self) -> [(&'static str, &QLinear); 3] {
        [("0", &self.l0), ("2", &self.l2), ("4", &self.l4)]
    }
    fn items_mut(&mut self) -> [(&'static str, &mut QLinear); 3] {
        [("0", &mut self.l0), ("2", &mut self.l2), ("4", &mut self.l4)]
    }
}

impl ModuleParameters for RouterMlp {
    fn num_parameters(&self) -> usize {
        self.items().iter().map(|(_, l)| l.num_parameters()).sum()
    }
    fn parameters(&self) -> ModuleParamRef<'_> {
        let mut p = NestedHashMap::new();
        for (k, l) in self.items() {
            p.insert(Rc::from(k), NestedValue::Map(l.parameters().entries));
        }
        p
    }
    fn parameters_mut(&mut self) -> ModuleParamMut<'_> {
        let mut p = NestedHashMap::new();
        for (k, l) in self.items_mut() {
            p.insert(Rc::from(k), NestedValue::Map(l.parameters_mut().entries));
        }
        p
    }
    fn trainable_parameters(&self) -> ModuleParamRef<'_> {
        let mut p = NestedHashMap::new();
        for (k, l) in self.items() {
            p.insert(Rc::from(k), NestedValue::Map(l.trainable_parameters().entries));
        }
        p
    }
    fn freeze_parameters(&mut self, recursive: bool) {
        for (_, l) in self.items_mut() {
            l.freeze_parameters(recursive);
        }
    }
    fn unfreeze_parameters(&mut self, recursive: bool) {
        for (_, l) in self.items_mut() {
            l.unfreeze_parameters(recursive);
        }
    }
    fn all_frozen(&self) -> Option<bool> {
        let mut r = None;
        for (_, l) in self.items() {
            match l.all_frozen() {
                Some(false) => return Some(false),
                Some(true) => r = Some(true),
                None => {}
            }
        }
        r
    }
    fn any_frozen(&self) -> Option<bool> {
        let mut r = None;
        for (_, l) in self.items() {
            match l.any_frozen() {
                Some(true) => return Some(true),
                Some(false) => r = Some(false),
                None => {}
            }
        }
        r
    }
}

/// The router's outputs for N tokens.
#[derive(Debug, Clone)]
pub struct RouteOut {
    /// f32 `[N, E(+1)]` route probabilities.
    pub probs: Array,
    /// int32 `[N]`: argmax of `probs + balancing_biases` (`num_experts` = skip).
    pub choice: Array,
    /// f32 `[N]`: the unbiased probability of the chosen route.
    pub score: Array,
    /// f32 `[N, R]`: the EDA state handed to the next MoE layer (pre-norm `r`).
    pub state: Array,
    /// int32 scalar: tokens that took the skip route (set by the fused router only).
    pub skipped: Option<Array>,
}

/// The MoE router (`zaya_block.router`). Computed in f32; [`forward_fused`](Self::forward_fused) with
/// [`MatmulPrecision::Bf16`](crate::ext::MatmulPrecision) takes bf16 dot products for the matmuls of
/// prefill-sized calls (f32 accumulation; bias, norm, GELU, softmax and the choice stay f32).
#[derive(Debug, Clone, ModuleParameters)]
pub struct Router {
    #[param]
    pub down_proj: QLinear,
    #[param]
    pub rmsnorm_eda: RmsNorm,
    #[param]
    pub router_mlp: RouterMlp,
    #[param]
    pub balancing_biases: Param<Array>,
    /// Absent in the first MoE layer.
    #[param]
    pub router_states_scale: Param<Option<Array>>,
    pub num_experts: usize,
    pub use_eda: bool,
}

impl Router {
    /// Loads `{base}.*` (base = `model.layers.{n}.zaya_block.router`).
    pub fn load(src: &mut WeightSource, base: &str, cfg: &ZayaConfig) -> Result<Self> {
        let (h, r) = (cfg.hidden_size, cfg.router_hidden_size);
        let nl = cfg.num_router_logits();
        let f32 = Dtype::Float32;
        Ok(Router {
            down_proj: QLinear::load(src, &format!("{base}.down_proj"), h, r, true, f32)?,
            rmsnorm_eda: RmsNorm::load(src, &format!("{base}.rmsnorm_eda"), r, cfg.norm_eps, f32)?,
            router_mlp: RouterMlp {
                l0: QLinear::load(src, &format!("{base}.router_mlp.0"), r, r, true, f32)?,
                l2: QLinear::load(src, &format!("{base}.router_mlp.2"), r, r, true, f32)?,
                l4: QLinear::load(src, &format!("{base}.router_mlp.4"), r, nl, false, f32)?,
            },
            balancing_biases: Param::new(take_float(src, &format!("{base}.balancing_biases"), &[nl as i32], f32)?),
            router_states_scale: Param::new(take_float_opt(
                src,
                &format!("{base}.router_states_scale"),
                &[r as i32],
                f32,
            )?),
            num_experts: cfg.num_experts,
            use_eda: cfg.use_eda,
        })
    }

    /// Routes `x` `[N, H]` given the previous MoE layer's state `[N, R]`.
    pub fn forward(&self, x: &Array, prev_state: Option<&Array>) -> Result<RouteOut> {
        let mut r = self.down_proj.forward(&x.as_dtype(Dtype::Float32)?)?;
        if let (true, Some(prev), Some(scale)) = (self.use_eda, prev_state, self.router_states_scale.value.as_ref()) {
            r = r.add(prev.multiply(scale)?)?;
        }
        let n = self.rmsnorm_eda.forward(&r)?;
        let a1 = gelu(&self.router_mlp.l0.forward(&n)?)?;
        let a2 = gelu(&self.router_mlp.l2.forward(&a1)?)?;
        let logits = self.router_mlp.l4.forward(&a2)?;
        let probs = softmax_axis(&logits, -1, true)?;
        let choice = argmax_axis(probs.add(&*self.balancing_biases)?, -1, true)?;
        let score = take_along_axis(&probs, &choice, -1)?.squeeze_axes(&[-1])?;
        let choice = choice.squeeze_axes(&[-1])?.as_dtype(Dtype::Int32)?;
        Ok(RouteOut {
            probs,
            choice,
            score,
            state: r,
            skipped: None,
        })
    }

    /// True when [`forward_fused`](Self::forward_fused) can run this router: every linear float on
    /// the fused backend, with the biases the router has.
    pub fn fused_supported(&self) -> bool {
        let ok = |l: &QLinear, bias: bool| {
            l.format == WeightFormat::Float && l.backend == LinearBackend::Fused && l.bias.value.is_some() == bias
        };
        ok(&self.down_proj, true)
            && ok(&self.router_mlp.l0, true)
            && ok(&self.router_mlp.l2, true)
            && ok(&self.router_mlp.l4, false)
            && self.rmsnorm_eda.weight.dtype() == Dtype::Float32
    }

    /// The router as one fused op ([`ext::router`]); same results as [`forward`](Self::forward).
    /// `x`: f32 `[N, H]`. Requires [`fused_supported`](Self::fused_supported).
    pub fn forward_fused(
        &self,
        x: &Array,
        prev_state: Option<&Array>,
        mode: impl Into<MatmulMode>,
    ) -> Result<RouteOut> {
        let prev = match (self.use_eda, prev_state, self.router_states_scale.value.as_ref()) {
            (true, Some(p), Some(s)) => Some((p, s)),
            _ => None,
        };
        let o = ext::router(
            x,
            prev,
            ext::RouterWeights {
                down_w: &self.down_proj.weight,
                down_b: self.down_proj.bias.value.as_ref().unwrap(),
                norm_w: &self.rmsnorm_eda.weight,
                eps: self.rmsnorm_eda.eps,
                w0: &self.router_mlp.l0.weight,
                b0: self.router_mlp.l0.bias.value.as_ref().unwrap(),
                w2: &self.router_mlp.l2.weight,
                b2: self.router_mlp.l2.bias.value.as_ref().unwrap(),
                w4: &self.router_mlp.l4.weight,
                balancing: &self.balancing_biases,
                num_experts: self.num_experts as u32,
            },
            mode,
        )?;
        Ok(RouteOut {
            probs: o.probs,
            choice: o.choice,
            score: o.score,
            state: o.state,
            skipped: Some(o.skipped),
        })
    }
}
