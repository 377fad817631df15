//! The MoE half-layer (docs/model.md §4): the router with its depth-carried EDA state
//! ([`router`]), the top-1 SwiGLU experts ([`experts`]), and the output with the MOD skip route:
//! `y = w · expert(x)`, or for the skip route (`e* = E`) `w · x` ([`ModSkip::ScaledIdentity`], the
//! legacy reference) or `0` ([`ModSkip::Zero`]). Which implementation runs each of the three parts is
//! the layer's [`LayerPlan::Moe`](crate::model::plan::LayerPlan), decided at load.
pub mod experts;
pub mod router;

use mlx_rs::macros::ModuleParameters;
use mlx_rs::ops::zeros_dtype;
use mlx_rs::{Array, Dtype};

use crate::config::ZayaConfig;
use crate::error::Result;
use crate::ext::{self, ExtMode, MatmulMode, MatmulPrecision};
use crate::model::plan::Path;
use crate::quant::linear::WeightSource;
use crate::quant::WeightFormat;

pub use experts::{Experts, SwitchMlp, SwitchProj};
pub use router::{gelu, RouteOut, Router, RouterMlp};

/// What the MOD skip route (`e* = num_experts`) outputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ModSkip {
    /// `p_skip · x`: the token's normalized hidden state scaled by the route probability (the legacy
    /// checkpoint's reference semantics, jang_tools, mlx-lm).
    #[default]
    ScaledIdentity,
    /// `0`: no MoE contribution (upstream transformers / vLLM).
    Zero,
}

/// Which implementation runs the routed experts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ExpertBackend {
    /// Plain MLX ops, tokens grouped by expert on the host: the reference path.
    Plain,
    /// The fused mlx-ext TurboQuant switch-GLU primitive (`ext::tq_switch_glu`: rotation, gate/up
    /// SwiGLU and down in one op, no host sync) for TurboQuant experts with power-of-two dims and
    /// 2–4-bit codes; the plain path for every other expert format.
    #[default]
    Fused,
}

/// How one MoE half-layer runs: its [`LayerPlan::Moe`](crate::model::plan::LayerPlan) paths, the
/// skip-route semantics and how the mlx-ext ops execute.
#[derive(Debug, Clone, Copy)]
pub struct MoeStep {
    pub router: Path,
    pub experts: Path,
    /// `Fused` only with fused router and experts (the fused router counts the skips).
    pub combine: Path,
    pub mod_skip: ModSkip,
    pub ext: ExtMode,
    /// The arithmetic of the fused experts' matmuls.
    pub matmul: MatmulPrecision,
}

/// Result of one MoE half-layer.
pub struct MoeOut {
    /// `[N, H]` in the input dtype: `h_n`.
    pub y: Array,
    /// EDA state for the next MoE layer, f32 `[N, R]`.
    pub state: Array,
    /// int32 `[N]` chosen route (`num_experts` = skip).
    pub route: Array,
    /// How many of the N tokens took the skip route (int32 scalar; lazy on the fused path).
    pub skipped: Array,
}

/// A MoE half-layer (`model.layers.{n}.zaya_block`).
#[derive(Debug, Clone, ModuleParameters)]
pub struct ZayaMoe {
    #[param]
    pub router: Router,
    #[param]
    pub experts: Experts,
    pub num_experts: usize,
}

impl ZayaMoe {
    /// Loads `base` = `model.layers.{n}.zaya_block`; float expert weights go to `dtype`.
    pub fn load(src: &mut WeightSource, base: &str, cfg: &ZayaConfig, dtype: Dtype) -> Result<Self> {
        let router = Router::load(src, &format!("{base}.router"), cfg)?;
        let (e, h, i) = (cfg.num_experts, cfg.hidden_size, cfg.expert_intermediate_size);
        let sm = format!("{base}.experts.switch_mlp");
        let switch_mlp = SwitchMlp {
            gate_proj: SwitchProj::load(src, &format!("{sm}.gate_proj"), e, h, i, dtype)?,
            up_proj: SwitchProj::load(src, &format!("{sm}.up_proj"), e, h, i, dtype)?,
            down_proj: SwitchProj::load(src, &format!("{sm}.down_proj"), e, i, h, dtype)?,
        };
        let tq = [&switch_mlp.gate_proj, &switch_mlp.up_proj, &switch_mlp.down_proj]
            .iter()
            .filter(|p| matches!(p.format, WeightFormat::TurboQuant { .. }))
            .count();
        if tq != 0 && tq != 3 {
            return Err(src.quant_err(&sm, "gate/up/down must all be TurboQuant or none".into()));
        }
        Ok(ZayaMoe {
            router,
            experts: Experts { switch_mlp },
            num_experts: e,
        })
    }

    /// `x [N, H]` (the input_norm output in the compute dtype) → `h_n [N, H]`, given the previous
    /// MoE layer's state. `x_router` is the same input in f32 (the router reads f32, and its fused
    /// matmuls follow `step.matmul`; pass `x` itself when it is f32).
    pub fn forward(&self, x: &Array, x_router: &Array, prev_state: Option<&Array>, step: MoeStep) -> Result<MoeOut> {
        let route = match step.router {
            Path::Fused => self.router.forward_fused(
                x_router,
                prev_state,
                MatmulMode {
                    ext: step.ext,
                    precision: step.matmul,
                },
            )?,
            Path::Plain => self.router.forward(x_router, prev_state)?,
        };
        let sm = &self.experts.switch_mlp;
        let e = self.num_experts;
        let score = || route.score.expand_dims(-1); // [N, 1] f32
        let (y, skipped) = match (step.experts, step.combine, route.skipped.as_ref()) {
            // one node each: experts (skip rows zero), then p·(experts | x | 0)
            (Path::Fused, Path::Fused, Some(skipped)) => {
                let ey = sm.forward_fused(
                    x,
                    &route.choice,
                    MatmulMode {
                        ext: step.ext,
                        precision: step.matmul,
                    },
                )?;
                let y = ext::moe_combine(
                    &ey,
                    x_router,
                    &route.choice,
                    &route.score,
                    e as u32,
                    step.mod_skip == ModSkip::Zero,
                    step.ext,
                )?;
                (y, skipped.clone())
            }
            (Path::Fused, _, _) => {
                let score = score()?;
                let ey = sm
                    .forward_fused(
                        x,
                        &route.choice,
                        MatmulMode {
                            ext: step.ext,
                            precision: step.matmul,
                        },
                    )?
                    .multiply(&score)?;
                let is_skip = route.choice.eq(Array::from_int(e as i32))?;
                let skipped = is_skip.as_dtype(Dtype::Int32)?.sum(None)?;
                let y = match step.mod_skip {
                    // skip rows of `ey` are zero already
                    ModSkip::Zero => ey,
                    ModSkip::ScaledIdentity => {
                        mlx_rs::ops::select(&is_skip.expand_dims(-1)?, x_router.multiply(&score)?, &ey)?
                    }
                };
                (y, skipped)
            }
            (Path::Plain, _, _) => {
                let (expert_y, skipped) = sm.forward_grouped(x, &route.choice, e)?;
                let score = score()?;
                let y = match (expert_y, skipped) {
                    (Some(ey), 0) => ey.multiply(&score)?,
                    (ey, _) => {
                        let skip_value = match step.mod_skip {
                            ModSkip::ScaledIdentity => x_router.multiply(&score)?,
                            ModSkip::Zero => zeros_dtype(x.shape(), Dtype::Float32)?,
                        };
                        match ey {
                            None => skip_value,
                            Some(ey) => {
                                let active = route.choice.lt(Array::from_int(e as i32))?.expand_dims(-1)?;
                                mlx_rs::ops::select(&active, ey.multiply(&score)?, skip_value)?
                            }
                        }
                    }
                };
                (y, Array::from_int(skipped as i32))
            }
        };
        let y = if y.dtype() == x.dtype() {
            y
        } else {
            y.as_dtype(x.dtype())?
        };
        Ok(MoeOut {
            y,
            state: route.state,
            route: route.choice,
            skipped,
        })
    }
}
