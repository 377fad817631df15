//! The MoE half-layer (docs/model.md §4): the router with its depth-carried EDA state, the
//! top-1 SwiGLU experts in every storage format (TurboQuant, MLX affine, MXFP4, float), and the MOD
//! skip route.
//!
//! Router (all f32): `r = W_d x + b_d (+ ρ ⊙ router_states_scale)`, `ρ_next = r`,
//! `p = softmax(W₄ GELU(W₂ GELU(W₀ RMSNorm(r) + b₀) + b₂))`, choice `e* = argmax(p + balancing_biases)`,
//! gate weight `w = p[e*]` (unbiased). Experts: `y = w · down(silu(gate x) ⊙ up x)`; the skip route
//! (`e* = E`) gives `w · x` ([`ModSkip::ScaledIdentity`], the legacy reference) or `0` ([`ModSkip::Zero`]).
//!
//! With [`MoeOptions::fused_layers`] the router runs as one op ([`ext::router`]) and the output with
//! its skip route as another ([`ext::moe_combine`]) around the fused experts.
//!
//! The plain expert path groups the tokens by chosen expert on the host (one sync per MoE layer) and
//! runs each used expert once over its rows; TurboQuant rows are rotated once and shared by gate and
//! up (docs/bundle-format.md §3.6, §4.4).
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;

use mlx_rs::macros::ModuleParameters;
use mlx_rs::module::{ModuleParamMut, ModuleParamRef, ModuleParameters, Param};
use mlx_rs::nested::{NestedHashMap, NestedValue};
use mlx_rs::ops::indexing::{argmax_axis, take_along_axis, take_axis, IndexOp};
use mlx_rs::ops::{concatenate, erf, sigmoid, softmax_axis, zeros_dtype};
use mlx_rs::{Array, Dtype};

use crate::config::ZayaConfig;
use crate::error::{Result, ZayaError};
use crate::ext::{self, ExtMode, TqCodec, TqWeights};
use crate::model::norm::RmsNorm;
use crate::quant::affine;
use crate::quant::linear::{take_float, take_float_opt, LinearBackend, QLinear, WeightSource};
use crate::quant::turboquant::{rotate, TqMatrix};
use crate::quant::WeightFormat;

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

/// Exact-erf GELU (torch `nn.GELU()` default): `x · (1 + erf(x/√2)) / 2`.
pub fn gelu(x: &Array) -> Result<Array> {
    let inner = erf(x.multiply(Array::from_f32(std::f32::consts::FRAC_1_SQRT_2))?)?;
    Ok(x.multiply(inner.add(Array::from_f32(1.0))?)?
        .multiply(Array::from_f32(0.5))?)
}

/// SiLU `x · σ(x)`.
pub fn silu(x: &Array) -> Result<Array> {
    Ok(x.multiply(sigmoid(x)?)?)
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

/// The MoE router (`zaya_block.router`). Everything is computed in f32.
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
    pub fn forward_fused(&self, x: &Array, prev_state: Option<&Array>) -> Result<RouteOut> {
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
            ExtMode::Auto,
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

/// One stacked expert projection (`experts.switch_mlp.{gate,up,down}_proj`), `[E, out, in]`, in any
/// format. Parameter names follow the bundle (`weight`/`scales`/`biases` or `tq_packed`/`tq_norms`).
#[derive(Debug, Clone, ModuleParameters)]
pub struct SwitchProj {
    #[param]
    pub weight: Param<Option<Array>>,
    #[param]
    pub scales: Param<Option<Array>>,
    #[param]
    pub biases: Param<Option<Array>>,
    #[param]
    pub tq_packed: Param<Option<Array>>,
    #[param]
    pub tq_norms: Param<Option<Array>>,
    pub format: WeightFormat,
    pub num_experts: usize,
    pub in_features: usize,
    pub out_features: usize,
    /// TurboQuant sidecar data (codebook f32 `[2^bits]`, signs f32 `[in]`) and the codebook's
    /// halfword lookup table (`turboquant::halfword_lut`).
    pub tq_codebook: Option<Array>,
    pub tq_signs: Option<Array>,
    pub tq_lut: Option<Array>,
}

impl SwitchProj {
    /// Loads `base` (`...switch_mlp.gate_proj` etc.). Float weights go to `dtype`, affine scales and
    /// biases to f32.
    pub fn load(src: &mut WeightSource, base: &str, e: usize, in_f: usize, out_f: usize, dtype: Dtype) -> Result<Self> {
        let format = if src.has(&format!("{base}.tq_packed")) {
            match src.format(base, in_f)? {
                f @ WeightFormat::TurboQuant { .. } => f,
                other => return Err(src.quant_err(base, format!("has tq_packed but is declared {other:?}"))),
            }
        } else {
            src.format(base, in_f)?
        };
        let (ei, oi) = (e as i32, out_f as i32);
        let mut p = SwitchProj {
            weight: Param::new(None),
            scales: Param::new(None),
            biases: Param::new(None),
            tq_packed: Param::new(None),
            tq_norms: Param::new(None),
            format: format.clone(),
            num_experts: e,
            in_features: in_f,
            out_features: out_f,
            tq_codebook: None,
            tq_signs: None,
            tq_lut: None,
        };
        match format {
            WeightFormat::Float => {
                *p.weight = Some(take_float(
                    src,
                    &format!("{base}.weight"),
                    &[ei, oi, in_f as i32],
                    dtype,
                )?);
            }
            WeightFormat::Affine { bits, group_size } => {
                let (b, g) = (bits as usize, group_size as usize);
                if g == 0 || !in_f.is_multiple_of(g) || !(in_f * b).is_multiple_of(32) {
                    return Err(src.quant_err(base, format!("in_features {in_f} does not fit {b}-bit groups of {g}")));
                }
                *p.weight = Some(src.take_shaped(&format!("{base}.weight"), &[ei, oi, (in_f * b / 32) as i32])?);
                let gs = [ei, oi, (in_f / g) as i32];
                // f32: quantized matmuls accumulate in f32 (see QLinear)
                *p.scales = Some(take_float(src, &format!("{base}.scales"), &gs, Dtype::Float32)?);
                *p.biases = Some(take_float(src, &format!("{base}.biases"), &gs, Dtype::Float32)?);
            }
            WeightFormat::Mxfp4 { group_size } => {
                if group_size != 32 || !in_f.is_multiple_of(32) {
                    return Err(src.quant_err(base, format!("mxfp4 needs groups of 32 dividing in_features {in_f}")));
                }
                *p.weight = Some(src.take_shaped(&format!("{base}.weight"), &[ei, oi, (in_f / 8) as i32])?);
                *p.scales = Some(src.take_shaped(&format!("{base}.scales"), &[ei, oi, (in_f / 32) as i32])?);
            }
            WeightFormat::TurboQuant {
                bits,
                in_features,
                seed,
            } => {
                if in_features as usize != in_f {
                    return Err(src.quant_err(
                        base,
                        format!("declared in_features {in_features}, the model needs {in_f}"),
                    ));
                }
                if !(1..=8).contains(&bits) || 32 % bits != 0 {
                    return Err(src.quant_err(base, format!("{bits}-bit TurboQuant codes are not supported")));
                }
                let cols = (in_f * bits as usize).div_ceil(32) as i32;
                let packed = src.take_shaped(&format!("{base}.tq_packed"), &[ei, oi, cols])?;
                if packed.dtype() != Dtype::Uint32 {
                    return Err(ZayaError::Dtype {
                        name: format!("{base}.tq_packed"),
                        file: src.origin().to_string(),
                        expected: "uint32".into(),
                        found: format!("{:?}", packed.dtype()),
                    });
                }
                *p.tq_packed = Some(packed);
                *p.tq_norms = Some(take_float(src, &format!("{base}.tq_norms"), &[ei, oi], Dtype::Float32)?);
                let cb = src.tq_codebook(in_features, bits)?;
                let signs = src.tq_signs(in_features, seed)?;
                if cb.shape() != [1 << bits] || signs.shape() != [in_f as i32] {
                    return Err(ZayaError::MissingSidecar(format!(
                        "codebook/signs for {base} have shapes {:?}/{:?}, expected [{}]/[{in_f}]",
                        cb.shape(),
                        signs.shape(),
                        1 << bits
                    )));
                }
                let cb = cb.as_dtype(Dtype::Float32)?;
                p.tq_lut = Some(src.tq_lut(in_features, bits)?);
                p.tq_codebook = Some(cb);
                p.tq_signs = Some(signs.as_dtype(Dtype::Float32)?);
            }
        }
        Ok(p)
    }

    /// The TurboQuant view of this projection, if it is TurboQuant.
    pub fn tq(&self) -> Option<TqMatrix> {
        match self.format {
            WeightFormat::TurboQuant { bits, .. } => Some(TqMatrix {
                packed: self.tq_packed.value.as_ref().unwrap().clone(),
                norms: self.tq_norms.value.as_ref().unwrap().clone(),
                codebook: self.tq_codebook.clone().unwrap(),
                signs: self.tq_signs.clone().unwrap(),
                bits,
                in_features: self.in_features,
                out_features: self.out_features,
                lut: self.tq_lut.clone(),
            }),
            _ => None,
        }
    }

    /// The stacked codes and row norms, borrowed (TurboQuant projections only: checked by the
    /// callers through `fused_supported`).
    fn tq_weights(&self) -> TqWeights<'_> {
        TqWeights {
            packed: self.tq_packed.value.as_ref().expect("TurboQuant codes"),
            norms: self.tq_norms.value.as_ref().expect("TurboQuant norms"),
        }
    }

    /// The sidecar codebook and signs with the bit width, borrowed (TurboQuant projections only).
    fn tq_codec(&self) -> TqCodec<'_> {
        let bits = match self.format {
            WeightFormat::TurboQuant { bits, .. } => bits,
            _ => unreachable!("tq_codec on a {:?} projection", self.format),
        };
        TqCodec {
            codebook: self.tq_codebook.as_ref().expect("sidecar codebook"),
            signs: self.tq_signs.as_ref().expect("sidecar signs"),
            bits,
        }
    }

    /// `x [N, in] → [N, out]` through expert `e` (non-TurboQuant formats).
    fn matmul(&self, x: &Array, e: i32) -> Result<Array> {
        let w = self.weight.value.as_ref().expect("float/affine weight").index(e);
        match crate::quant::linear::spec_of(&self.format) {
            None => Ok(x.matmul(w.t())?),
            Some(spec) => {
                let s = self.scales.value.as_ref().unwrap().index(e);
                let b = self.biases.value.as_ref().map(|b| b.index(e));
                let xf = if x.dtype() == Dtype::Float32 {
                    x.clone()
                } else {
                    x.as_dtype(Dtype::Float32)?
                };
                affine::matmul_t(&xf, &w, &s, b.as_ref(), spec)
            }
        }
    }
}

/// `experts.switch_mlp`: the stacked SwiGLU experts.
#[derive(Debug, Clone, ModuleParameters)]
pub struct SwitchMlp {
    #[param]
    pub gate_proj: SwitchProj,
    #[param]
    pub up_proj: SwitchProj,
    #[param]
    pub down_proj: SwitchProj,
}

impl SwitchMlp {
    /// `down_e(silu(gate_e x) ⊙ up_e x)` for rows `x [n, H]` that all chose expert `e`; f32 or
    /// the compute dtype depending on the format.
    fn expert(&self, x: &Array, e: i32) -> Result<Array> {
        match (self.gate_proj.tq(), self.up_proj.tq(), self.down_proj.tq()) {
            (Some(g), Some(u), Some(d)) => {
                // one rotation shared by gate and up when they use the same signs (always for ZAYA)
                let xr = rotate(x, &g.signs)?;
                let xu = if same_rotation(&self.gate_proj.format, &self.up_proj.format) {
                    xr.clone()
                } else {
                    rotate(x, &u.signs)?
                };
                let a = silu(&g.matmul_rotated(&xr, e)?)?.multiply(u.matmul_rotated(&xu, e)?)?;
                d.matmul(&a, e)
            }
            (None, None, None) => {
                let g = self.gate_proj.matmul(x, e)?;
                let u = self.up_proj.matmul(x, e)?;
                let a = silu(&g)?.multiply(&u)?;
                self.down_proj.matmul(&a, e)
            }
            _ => Err(ZayaError::InvalidArgument(
                "mixing TurboQuant and other formats inside one expert set is not supported".into(),
            )),
        }
    }

    /// True when `ext::tq_switch_glu` can run these experts: TurboQuant gate/up sharing one
    /// rotation and bit width, 2–4-bit codes, power-of-two input widths.
    pub fn fused_supported(&self) -> bool {
        let ok = |p: &SwitchProj| match p.format {
            WeightFormat::TurboQuant { bits, in_features, .. } => {
                (2..=4).contains(&bits) && in_features.is_power_of_two()
            }
            _ => false,
        };
        let same_bits = match (&self.gate_proj.format, &self.up_proj.format) {
            (WeightFormat::TurboQuant { bits: a, .. }, WeightFormat::TurboQuant { bits: b, .. }) => a == b,
            _ => false,
        };
        ok(&self.gate_proj)
            && ok(&self.up_proj)
            && ok(&self.down_proj)
            && same_bits
            && same_rotation(&self.gate_proj.format, &self.up_proj.format)
    }

    /// All experts of the N rows through the fused primitive; rows routed to an id ≥ E (skip) get
    /// zeros. f32 `[N, H]`.
    fn fused(&self, x: &Array, choice: &Array) -> Result<Array> {
        let (g, u, d) = (&self.gate_proj, &self.up_proj, &self.down_proj);
        ext::tq_switch_glu(
            &x.as_dtype(Dtype::Float32)?, // no node when already f32
            choice,
            g.tq_weights(),
            u.tq_weights(),
            d.tq_weights(),
            g.tq_codec(),
            d.tq_codec(),
            ExtMode::Auto,
        )
    }
}

/// Gate and up read the same sidecar sign vector (same in_features and seed), so one rotation of
/// the input serves both.
fn same_rotation(a: &WeightFormat, b: &WeightFormat) -> bool {
    matches!((a, b), (WeightFormat::TurboQuant { in_features: ia, seed: sa, .. },
                      WeightFormat::TurboQuant { in_features: ib, seed: sb, .. }) if ia == ib && sa == sb)
}

/// `zaya_block.experts` (only holds `switch_mlp`).
#[derive(Debug, Clone, ModuleParameters)]
pub struct Experts {
    #[param]
    pub switch_mlp: SwitchMlp,
}

/// Options of the MoE forward.
#[derive(Debug, Clone, Copy, Default)]
pub struct MoeOptions {
    pub mod_skip: ModSkip,
    pub backend: ExpertBackend,
    /// Use the fused router and output ops ([`ext::router`], [`ext::moe_combine`]) where they apply.
    pub fused_layers: bool,
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
    /// MoE layer's state. `x_router` is the same input in f32 (the router always runs in f32; pass
    /// `x` itself when it is f32).
    pub fn forward(&self, x: &Array, x_router: &Array, prev_state: Option<&Array>, opts: MoeOptions) -> Result<MoeOut> {
        let fused_router = opts.fused_layers && self.router.fused_supported() && x_router.dtype() == Dtype::Float32;
        let route = if fused_router {
            self.router.forward_fused(x_router, prev_state)?
        } else {
            self.router.forward(x_router, prev_state)?
        };
        let sm = &self.experts.switch_mlp;
        let e_count = self.num_experts as i32;
        let fused_out = opts.backend == ExpertBackend::Fused && sm.fused_supported() && opts.fused_layers;
        if let (true, Some(skipped)) = (fused_out, route.skipped.as_ref()) {
            // one node each: experts (skip rows zero), then p·(experts | x | 0)
            let ey = sm.fused(x, &route.choice)?;
            let y = ext::moe_combine(
                &ey,
                x_router,
                &route.choice,
                &route.score,
                self.num_experts as u32,
                opts.mod_skip == ModSkip::Zero,
                ExtMode::Auto,
            )?;
            let y = if y.dtype() == x.dtype() {
                y
            } else {
                y.as_dtype(x.dtype())?
            };
            return Ok(MoeOut {
                y,
                state: route.state,
                route: route.choice,
                skipped: skipped.clone(),
            });
        }
        if opts.backend == ExpertBackend::Fused && sm.fused_supported() {
            let score = route.score.expand_dims(-1)?; // [N, 1] f32
            let ey = sm.fused(x, &route.choice)?.multiply(&score)?;
            let is_skip = route.choice.eq(Array::from_int(e_count))?;
            let skipped = is_skip.as_dtype(Dtype::Int32)?.sum(None)?;
            let y = match opts.mod_skip {
                // skip rows of `ey` are zero already
                ModSkip::Zero => ey,
                ModSkip::ScaledIdentity => {
                    mlx_rs::ops::select(&is_skip.expand_dims(-1)?, x_router.multiply(&score)?, &ey)?
                }
            };
            let y = if y.dtype() == x.dtype() {
                y
            } else {
                y.as_dtype(x.dtype())?
            };
            return Ok(MoeOut {
                y,
                state: route.state,
                route: route.choice,
                skipped,
            });
        }
        let n = x.shape()[0] as usize;
        route.choice.eval()?;
        let choice: Vec<i32> = route.choice.as_slice::<i32>().to_vec();

        // group rows by expert (BTreeMap: deterministic expert order)
        let mut groups: BTreeMap<i32, Vec<u32>> = BTreeMap::new();
        for (row, &c) in choice.iter().enumerate() {
            if c < e_count {
                groups.entry(c).or_default().push(row as u32);
            }
        }
        let skipped = n - groups.values().map(Vec::len).sum::<usize>();
        let out_dtype = x.dtype();
        let score = route.score.expand_dims(-1)?; // [N, 1] f32

        let expert_y = if groups.is_empty() {
            None
        } else if groups.len() == 1 && skipped == 0 {
            let (&e, _) = groups.iter().next().unwrap();
            Some(sm.expert(x, e)?)
        } else {
            let mut parts = Vec::with_capacity(groups.len() + 1);
            let mut position = HashMap::with_capacity(n);
            let mut next = 0u32;
            for (&e, rows) in &groups {
                let idx = Array::from_slice(rows, &[rows.len() as i32]);
                parts.push(sm.expert(&take_axis(x, &idx, 0)?, e)?);
                for &r in rows {
                    position.insert(r, next);
                    next += 1;
                }
            }
            let h = *x.shape().last().unwrap();
            let dt = parts[0].dtype();
            parts.push(zeros_dtype(&[1, h], dt)?); // row `next`: skip tokens
            let gather: Vec<u32> = (0..n as u32).map(|r| *position.get(&r).unwrap_or(&next)).collect();
            let all = concatenate(&parts, 0)?;
            Some(take_axis(&all, Array::from_slice(&gather, &[n as i32]), 0)?)
        };

        let y = match (expert_y, skipped) {
            (Some(ey), 0) => ey.multiply(&score)?,
            (ey, _) => {
                let skip_value = match opts.mod_skip {
                    ModSkip::ScaledIdentity => x_router.multiply(&score)?,
                    ModSkip::Zero => zeros_dtype(x.shape(), Dtype::Float32)?,
                };
                match ey {
                    None => skip_value,
                    Some(ey) => {
                        let active = route.choice.lt(Array::from_int(e_count))?.expand_dims(-1)?;
                        mlx_rs::ops::select(&active, ey.multiply(&score)?, skip_value)?
                    }
                }
            }
        };
        let y = if y.dtype() == out_dtype {
            y
        } else {
            y.as_dtype(out_dtype)?
        };
        Ok(MoeOut {
            y,
            state: route.state,
            route: route.choice,
            skipped: Array::from_int(skipped as i32),
        })
    }
}
