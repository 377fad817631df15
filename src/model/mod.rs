//! The ZAYA1 model (docs/model.md §2, §8): embedding, the 80 residual-scaled half-layers
//! (even = CCA attention in [`crate::model::cca`], odd = MoE in [`crate::model::moe`]), the final residual scaling
//! and RMSNorm, and the tied lm_head; loading from a [`Bundle`] / [`CanonicalWeights`] by canonical
//! name; chunked prefill and one-token decode over a [`ModelCache`]; optional per-layer capture of
//! hidden states, residuals and routes for parity checks.
//!
//! Dtype policy: the residual stream, the RMSNorms, the final norm, the logits, the router (and its
//! input, the f32 input_norm output), the q/k normalisation, attention, the CCA conv and its state
//! are f32 always; the linear projections and the experts run in [`ModelOptions::dtype`] (f32
//! default, bf16/f16 allowed). On the fused path bf16 means bf16 dot products inside the matmul
//! kernels ([`MatmulPrecision::Bf16`]: x and the decoded weights rounded to bf16, f32 accumulation,
//! f32 activations between the kernels) in calls with many token rows on CPUs with AVX512-BF16, and
//! the f32 kernels elsewhere; on the plain path (and for f16) the input_norm output is rounded once
//! to that dtype and MLX computes in it. Float weights are converted to their compute dtype once,
//! when the model is built.
//!
//! Execution paths, decided once: [`ZayaModel::plan`] says for every half-layer whether it runs as
//! our fused mlx-ext primitives (residual merge + norm, fused projections, CCA q/k chain, attention,
//! TurboQuant experts, router, MoE output: ≈6 graph nodes per half-layer on average) or as stock MLX
//! ops (the parity reference; both agree to ~1e-6 relative, tests/model_backends.rs), built from the
//! options and what each layer's weights support. The forward (`forward.rs`, one `match`
//! on the plan per half-layer) carries the hidden and residual streams as rows `[B·T, H]` on both
//! paths. `probe.rs` measures a decode step's graph and phases.
//!
//! Module tree: the structs derive mlx-rs's `ModuleParameters`, so `parameters().flatten()` yields
//! every weight under its canonical bundle name (evaluated at load, hashed by
//! [`ZayaModel::fingerprint`], counted by the benchmarks). The model and the unary layers
//! (`RmsNorm`, `QLinear`) implement mlx-rs's `Module`; the half-layers keep inherent forwards that
//! take their part of the per-sequence state and their planned path.
pub mod cache;
pub mod cca;
mod forward;
pub mod moe;
pub mod norm;
pub mod plan;
mod probe;

pub use forward::{ForwardOptions, ForwardOutput, LayerCapture, LogitsMode};
pub use probe::PhaseTimes;

use mlx_rs::macros::ModuleParameters;
use mlx_rs::ops::indexing::IndexOp;
use mlx_rs::Dtype;

use crate::bundle::{Bundle, CanonicalWeights};
use crate::config::ZayaConfig;
use crate::error::{Result, ZayaError};
use crate::ext::{ExtMode, MatmulPrecision};
use crate::model::cache::{ModelCache, DEFAULT_KV_STEP};
use crate::model::cca::CcaAttention;
use crate::model::moe::{ExpertBackend, ModSkip, MoeStep, ZayaMoe};
use crate::model::plan::{ExecutionPlan, LayerPlan, Path};
use crate::quant::linear::{LinearBackend, QLinear, WeightSource};

/// Default prefill chunk (positions per forward call inside [`ZayaModel::prefill`]).
pub const DEFAULT_PREFILL_CHUNK: usize = 512;

/// How the model runs. `Default` = f32, `p·x` skip route, the fused kernels where they apply,
/// chunks of 512.
#[derive(Debug, Clone, Copy)]
pub struct ModelOptions {
    /// Activation dtype of the projections and experts: `Float32`, `Bfloat16` or `Float16`.
    pub dtype: Dtype,
    /// MOD skip-route semantics.
    pub mod_skip: ModSkip,
    /// Routed-expert implementation (can be changed with [`ZayaModel::set_options`]).
    pub expert_backend: ExpertBackend,
    /// Linear implementation (attention, router, embedding, lm_head); fixed at build because it
    /// decides the stored dtypes.
    pub linear_backend: LinearBackend,
    /// How the mlx-ext ops execute (every fused primitive and the plain path's conv): `Auto` runs
    /// the CPU kernel where the stream has one, `Portable` their plain-MLX-ops graphs. Fixed at build
    /// (the linears keep it).
    pub ext_mode: ExtMode,
    /// Positions per chunk when a forward covers more tokens.
    pub prefill_chunk: usize,
    /// KV cache growth step in positions.
    pub kv_step: usize,
    /// The fused per-layer mlx-ext primitives (residual merge + RMSNorm, the router and MoE output,
    /// the CCA q/k chain, attention) in place of chains of small MLX ops. Only with
    /// `linear_backend: Fused`: the plain configuration stays plain MLX ops throughout.
    pub fused_layers: bool,
}

impl Default for ModelOptions {
    fn default() -> Self {
        ModelOptions {
            dtype: Dtype::Float32,
            mod_skip: ModSkip::ScaledIdentity,
            expert_backend: ExpertBackend::Fused,
            linear_backend: LinearBackend::Fused,
            ext_mode: ExtMode::Auto,
            prefill_chunk: DEFAULT_PREFILL_CHUNK,
            kv_step: DEFAULT_KV_STEP,
            fused_layers: true,
        }
    }
}

pub use crate::model::norm::{ResScale, RmsNorm};

/// One half-layer `model.layers.{n}`: residual scaling, input norm and either CCA attention (even
/// n) or MoE (odd n).
#[derive(Debug, Clone, ModuleParameters)]
pub struct ZayaLayer {
    #[param]
    pub input_norm: RmsNorm,
    #[param]
    pub res_scale: ResScale,
    #[param]
    pub self_attn: Option<CcaAttention>,
    #[param]
    pub zaya_block: Option<ZayaMoe>,
    pub index: usize,
}

/// The `model.` subtree.
#[derive(Debug, Clone, ModuleParameters)]
pub struct ZayaBody {
    /// Token embedding; also the tied lm_head (`x · Eᵀ`).
    #[param]
    pub embed_tokens: QLinear,
    #[param]
    pub layers: Vec<ZayaLayer>,
    #[param]
    pub final_norm: RmsNorm,
    #[param]
    pub res_scale: ResScale,
}

/// The ZAYA1 causal LM.
#[derive(Debug, ModuleParameters)]
pub struct ZayaModel {
    #[param]
    pub model: ZayaBody,
    /// Only for untied checkpoints.
    #[param]
    pub lm_head: Option<QLinear>,
    config: ZayaConfig,
    options: ModelOptions,
    /// How each half-layer runs, decided from the options and the weights at build and on
    /// [`set_options`](Self::set_options); the forward passes follow it.
    plan: ExecutionPlan,
    /// [`ZayaModel::fingerprint`], computed on first use.
    fingerprint: std::sync::OnceLock<String>,
}

fn check_options(o: &ModelOptions) -> Result<()> {
    if !matches!(o.dtype, Dtype::Float32 | Dtype::Bfloat16 | Dtype::Float16) {
        return Err(ZayaError::InvalidArgument(format!(
            "compute dtype {:?} unsupported (f32, bf16, f16)",
            o.dtype
        )));
    }
    if o.prefill_chunk == 0 || o.kv_step == 0 {
        return Err(ZayaError::InvalidArgument(
            "prefill_chunk and kv_step must be positive".into(),
        ));
    }
    Ok(())
}

impl ZayaModel {
    /// Opens and validates the bundle in `dir` (see [`Bundle::open`]) and builds the model.
    pub fn load(dir: impl AsRef<std::path::Path>, options: ModelOptions) -> Result<Self> {
        Self::from_bundle(Bundle::open(dir)?, options)
    }

    /// Builds the model from an opened bundle.
    pub fn from_bundle(bundle: Bundle, options: ModelOptions) -> Result<Self> {
        let origin = bundle.dir.display().to_string();
        Self::from_weights(bundle.config, bundle.weights, options, &origin)
    }

    /// Builds the model from canonical weights; every tensor must be consumed (`origin` names the
    /// weights in errors).
    pub fn from_weights(
        config: ZayaConfig,
        weights: CanonicalWeights,
        options: ModelOptions,
        origin: &str,
    ) -> Result<Self> {
        check_options(&options)?;
        crate::runtime::memory::keep_freed_memory();
        let cfg = &config;
        let mut src = WeightSource::new(weights, origin);
        let dt = options.dtype;
        let f32 = Dtype::Float32;
        let h = cfg.hidden_size;
        src.set_linear_backend(options.linear_backend);
        src.set_ext_mode(options.ext_mode);
        let embed_tokens = QLinear::load(&mut src, "model.embed_tokens", h, cfg.vocab_size, false, f32)?;
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for n in 0..cfg.num_hidden_layers {
            let base = format!("model.layers.{n}");
            let input_norm = RmsNorm::load(&mut src, &format!("{base}.input_norm"), h, cfg.norm_eps, f32)?;
            let res_scale = ResScale::load(&mut src, &format!("{base}.res_scale"), h, n > 0)?;
            let (self_attn, zaya_block) = if n % 2 == 0 {
                (
                    Some(CcaAttention::load(&mut src, &format!("{base}.self_attn"), cfg, dt)?),
                    None,
                )
            } else {
                (
                    None,
                    Some(ZayaMoe::load(&mut src, &format!("{base}.zaya_block"), cfg, dt)?),
                )
            };
            layers.push(ZayaLayer {
                input_norm,
                res_scale,
                self_attn,
                zaya_block,
                index: n,
            });
        }
        let final_norm = RmsNorm::load(&mut src, "model.final_norm", h, cfg.norm_eps, f32)?;
        let res_scale = ResScale::load(&mut src, "model.res_scale", h, true)?;
        let lm_head = if cfg.tie_word_embeddings {
            None
        } else {
            Some(QLinear::load(&mut src, "lm_head", h, cfg.vocab_size, false, f32)?)
        };
        src.finish()?;
        let mut model = ZayaModel {
            model: ZayaBody {
                embed_tokens,
                layers,
                final_norm,
                res_scale,
            },
            lm_head,
            config,
            options,
            plan: ExecutionPlan::default(),
            fingerprint: std::sync::OnceLock::new(),
        };
        model.plan = model.build_plan();
        // materialize the dtype conversions now (load time), not in the first forward
        {
            use mlx_rs::module::ModuleParameters;
            let params = model.parameters().flatten();
            mlx_rs::transforms::eval(params.values().copied())?;
        }
        Ok(model)
    }

    /// How each half-layer runs with these options and weights (tests/model_graph.rs checks it
    /// against the primitives a decode step runs).
    pub fn plan(&self) -> &ExecutionPlan {
        &self.plan
    }

    /// Decides the plan: the fused per-layer primitives need [`ModelOptions::fused_layers`] with
    /// the fused linear backend; attention also an f32 compute dtype, each router and expert set
    /// weights its kernel reads, the MoE output op a fused router and experts.
    fn build_plan(&self) -> ExecutionPlan {
        let fused = self.options.fused_layers && self.options.linear_backend == LinearBackend::Fused;
        // bf16 on the fused path: f32 activations between the kernels, bf16 dot products inside
        let matmul = if fused && self.options.dtype == Dtype::Bfloat16 {
            MatmulPrecision::Bf16
        } else {
            MatmulPrecision::F32
        };
        let f32 = self.options.dtype == Dtype::Float32 || matmul == MatmulPrecision::Bf16;
        let body = &self.model;
        let norms = fused
            && body.layers.iter().all(|l| l.res_scale.fused_supported(&l.input_norm))
            && body.res_scale.fused_supported(&body.final_norm);
        let layers: Vec<LayerPlan> = body
            .layers
            .iter()
            .map(|l| match (&l.self_attn, &l.zaya_block) {
                (Some(_), _) => LayerPlan::Attention {
                    path: Path::of(fused && f32),
                },
                (None, Some(m)) => {
                    let router = fused && m.router.fused_supported();
                    let experts =
                        self.options.expert_backend == ExpertBackend::Fused && m.experts.switch_mlp.fused_supported();
                    LayerPlan::Moe {
                        router: Path::of(router),
                        experts: Path::of(experts),
                        combine: Path::of(fused && router && experts),
                    }
                }
                (None, None) => unreachable!("every half-layer is attention or MoE"),
            })
            .collect();
        // f32 only: with bf16 a large enough batch (ext::panel_min_rows) would take the bf16 kernels
        // where the same sequence alone decodes one row (f32 kernels), so batched rows would not
        // equal the single stream
        let batching = norms
            && self.options.dtype == Dtype::Float32
            && layers
                .iter()
                .all(|l| !matches!(l, LayerPlan::Attention { path: Path::Plain }));
        ExecutionPlan {
            norms: Path::of(norms),
            layers,
            batching,
            ext: self.options.ext_mode,
            matmul,
        }
    }

    /// True when the fused per-layer primitives run (the plan's norms are fused).
    pub fn fused_layers(&self) -> bool {
        self.plan.norms == Path::Fused
    }

    /// The model configuration.
    pub fn config(&self) -> &ZayaConfig {
        &self.config
    }

    /// The model's identity, SHA-256 (hex) over config.json as parsed and, for every parameter in
    /// name order, its name, shape, dtype and first 16 values: bundles that share a config and a
    /// layout but hold other weights differ. Prompt-cache files record it. Computed once.
    pub fn fingerprint(&self) -> Result<String> {
        use mlx_rs::module::ModuleParameters;
        use sha2::Digest;
        if let Some(f) = self.fingerprint.get() {
            return Ok(f.clone());
        }
        let params = self.parameters().flatten();
        let mut names: Vec<_> = params.keys().cloned().collect();
        names.sort();
        let mut heads = Vec::with_capacity(names.len());
        for n in &names {
            let a = params[n];
            let k = a.size().min(16) as i32;
            heads.push(a.reshape(&[-1])?.index(0..k).as_dtype(Dtype::Float32)?);
        }
        mlx_rs::transforms::eval(heads.iter())?;
        let mut h = sha2::Sha256::new();
        h.update(serde_json::to_string(&self.config.raw).unwrap_or_default().as_bytes());
        for (n, head) in names.iter().zip(&heads) {
            let a = params[n];
            h.update(format!("\0{n}\0{:?}\0{:?}\0", a.shape(), a.dtype()).as_bytes());
            let vals = head
                .try_as_slice::<f32>()
                .map_err(|e| ZayaError::Ext(format!("fingerprint of `{n}`: {e}")))?;
            for v in vals {
                h.update(v.to_le_bytes());
            }
        }
        let f = crate::text::chat::hex(&h.finalize());
        Ok(self.fingerprint.get_or_init(|| f).clone())
    }

    /// The options the model was built with.
    pub fn options(&self) -> &ModelOptions {
        &self.options
    }

    /// Changes the per-call options (skip semantics, chunk size, KV step, conv mode, expert backend).
    /// The dtype, linear backend and mlx-ext mode are fixed at build time; changing them here is an error.
    pub fn set_options(&mut self, options: ModelOptions) -> Result<()> {
        check_options(&options)?;
        if options.dtype != self.options.dtype
            || options.linear_backend != self.options.linear_backend
            || options.ext_mode != self.options.ext_mode
        {
            return Err(ZayaError::InvalidArgument(
                "dtype, linear backend and mlx-ext mode are fixed when the model is built".into(),
            ));
        }
        self.options = options;
        self.plan = self.build_plan();
        Ok(())
    }

    /// A fresh cache for this model (KV growth step from the options).
    pub fn new_cache(&self) -> ModelCache {
        ModelCache::with_kv_step(&self.config, self.options.kv_step)
    }

    /// How a MoE half-layer with plan `p` runs.
    pub fn moe_step(&self, p: LayerPlan) -> MoeStep {
        let (router, experts, combine) = match p {
            LayerPlan::Moe {
                router,
                experts,
                combine,
            } => (router, experts, combine),
            LayerPlan::Attention { .. } => (Path::Plain, Path::Plain, Path::Plain),
        };
        MoeStep {
            router,
            experts,
            combine,
            mod_skip: self.options.mod_skip,
            ext: self.plan.ext,
            matmul: self.plan.matmul,
        }
    }
}
