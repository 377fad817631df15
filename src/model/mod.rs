//! The ZAYA1 model (docs/model.md §2, §8): embedding, the 80 residual-scaled half-layers
//! (even = CCA attention in [`crate::model::cca`], odd = MoE in [`crate::model::moe`]), the final residual scaling
//! and RMSNorm, and the tied lm_head; loading from a [`Bundle`] / [`CanonicalWeights`] by canonical
//! name; chunked prefill and one-token decode over a [`ModelCache`]; optional per-layer capture of
//! hidden states, residuals and routes for parity checks.
//!
//! Dtype policy: the residual stream, the RMSNorms, the final norm, the logits, the router (and its
//! input, the f32 input_norm output), the q/k normalisation, attention, the CCA conv and its state
//! are f32 always; the linear projections and the experts run in [`ModelOptions::dtype`] (f32
//! default, bf16/f16 allowed) on the input_norm output rounded once to that dtype. Float weights
//! are converted to their compute dtype once, when the model is built.
//!
//! Execution paths: by default (the fused linear backend with [`ModelOptions::fused_layers`]) each
//! half-layer runs as a handful of mlx-ext primitives (residual merge + norm, fused projections, CCA
//! q/k chain, attention, TurboQuant experts, router, MoE output: ≈6 graph nodes per half-layer on
//! average), with the hidden and residual streams carried as rows `[B·T, H]`. The plain path
//! (`linear_backend: Plain`) runs stock MLX ops throughout and is the parity reference; both agree
//! to ~1e-6 relative (tests/model_backends.rs). [`ZayaModel::decode_step_counted`] and
//! [`ZayaModel::decode_step_profiled`] measure a decode step's graph and phases.
pub mod cache;
pub mod cca;
pub mod moe;
pub mod norm;
pub mod plan;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use mlx_rs::macros::ModuleParameters;
use mlx_rs::ops::concatenate;
use mlx_rs::ops::indexing::IndexOp;
use mlx_rs::{Array, Dtype};

use crate::bundle::{Bundle, CanonicalWeights};
use crate::config::ZayaConfig;
use crate::error::{Result, ZayaError};
use crate::ext::{self, ExtMode, GraphStats};
use crate::model::cache::{ModelCache, DEFAULT_KV_STEP};
use crate::model::cca::{CcaAttention, CcaOptions};
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
    /// the CPU kernel where the stream has one, `Portable` their plain-MLX-ops graphs.
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

/// Which logits a forward produces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogitsMode {
    /// Every position `[B, T, V]`.
    All,
    /// Only the last position `[B, 1, V]` (prefill).
    Last,
    /// None (warm the cache only).
    None,
}

/// Options of one [`ZayaModel::forward_with`] call.
#[derive(Debug, Clone, Copy)]
pub struct ForwardOptions {
    pub logits: LogitsMode,
    /// Capture per-layer hidden states, residuals and routes.
    pub capture: bool,
    /// Chunk size (positions) for this call; `None` = the model's `prefill_chunk`.
    pub chunk: Option<usize>,
}

impl Default for ForwardOptions {
    fn default() -> Self {
        ForwardOptions {
            logits: LogitsMode::All,
            capture: false,
            chunk: None,
        }
    }
}

/// Per-layer tensors of one forward (reference naming of `reference.safetensors`).
#[derive(Debug, Clone, Default)]
pub struct LayerCapture {
    /// `hidden.{n}`: sub-layer output h_n, f32 `[B, T, H]`.
    pub hidden: Vec<Array>,
    /// `residual.{n}`: residual stream R_n entering input_norm n, f32 `[B, T, H]`.
    pub residual: Vec<Array>,
    /// `route.{n}` (odd n): chosen route, int32 `[B, T]` (`num_experts` = skip).
    pub routes: BTreeMap<usize, Array>,
}

/// Output of [`ZayaModel::forward_with`].
#[derive(Debug, Clone)]
pub struct ForwardOutput {
    /// f32 `[B, T, V]` (All) or `[B, 1, V]` (Last).
    pub logits: Option<Array>,
    pub capture: Option<LayerCapture>,
}

/// Wall-clock split of one decode step measured by [`ZayaModel::decode_step_profiled`], which
/// evaluates after every phase (so the sum is a little above an unprofiled step).
#[derive(Debug, Clone, Default)]
pub struct PhaseTimes {
    /// Token checks and the embedding lookup.
    pub embed: Duration,
    /// Per half-layer: residual scaling, input norm and the attention or MoE sub-layer.
    pub layers: Vec<Duration>,
    /// Final residual scaling, final norm and the lm_head.
    pub head: Duration,
    /// Everything else: chunk bookkeeping, cache evaluation, the skip counters.
    pub other: Duration,
}

impl PhaseTimes {
    /// Sum over the attention half-layers (even indices).
    pub fn attention(&self) -> Duration {
        self.layers.iter().step_by(2).sum()
    }
    /// Sum over the MoE half-layers (odd indices).
    pub fn moe(&self) -> Duration {
        self.layers.iter().skip(1).step_by(2).sum()
    }
    /// Everything measured.
    pub fn total(&self) -> Duration {
        self.embed + self.layers.iter().sum::<Duration>() + self.head + self.other
    }
}

/// What a forward additionally measures (benchmark support).
enum Probe<'a> {
    None,
    /// Count the nodes of each chunk's graph before it is evaluated (summed over chunks), also by
    /// primitive name.
    Nodes(&'a mut GraphStats, &'a mut Vec<(String, i64)>),
    /// Evaluate after every phase and time it.
    Phases(&'a mut PhaseTimes),
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
        let cfg = &config;
        let mut src = WeightSource::new(weights, origin);
        let dt = options.dtype;
        let f32 = Dtype::Float32;
        let h = cfg.hidden_size;
        src.set_linear_backend(options.linear_backend);
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
        let f32 = self.options.dtype == Dtype::Float32;
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
        let batching = norms
            && f32
            && layers
                .iter()
                .all(|l| !matches!(l, LayerPlan::Attention { path: Path::Plain }));
        ExecutionPlan {
            norms: Path::of(norms),
            layers,
            batching,
            ext: self.options.ext_mode,
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
    /// The dtype and linear backend are fixed at build time; changing them here is an error.
    pub fn set_options(&mut self, options: ModelOptions) -> Result<()> {
        check_options(&options)?;
        if options.dtype != self.options.dtype || options.linear_backend != self.options.linear_backend {
            return Err(ZayaError::InvalidArgument(
                "dtype and linear backend are fixed when the model is built".into(),
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

    /// Checks token ids (shape `[T]` or `[B, T]`, integer, each < vocab) against the cache offset and
    /// the context limit; returns them as uint32 `[B, T]`.
    pub fn check_tokens(&self, tokens: &Array, cache: &ModelCache) -> Result<Array> {
        let tokens = match tokens.ndim() {
            1 => tokens.reshape(&[1, tokens.shape()[0]])?,
            2 => tokens.clone(),
            n => {
                return Err(ZayaError::InvalidArgument(format!(
                    "token ids must be [T] or [B, T], got {n} dimensions"
                )))
            }
        };
        let (b, t) = (tokens.shape()[0] as usize, tokens.shape()[1] as usize);
        if t == 0 || b == 0 {
            return Err(ZayaError::InvalidArgument("empty token sequence".into()));
        }
        let ids = match tokens.dtype() {
            Dtype::Int32
            | Dtype::Uint32
            | Dtype::Int64
            | Dtype::Uint64
            | Dtype::Int16
            | Dtype::Uint16
            | Dtype::Int8
            | Dtype::Uint8 => tokens.as_dtype(Dtype::Int64)?,
            other => {
                return Err(ZayaError::InvalidArgument(format!(
                    "token ids must be integers, got {other:?}"
                )))
            }
        };
        ids.eval()?;
        let vocab = self.config.vocab_size as i64;
        if let Some((pos, &bad)) = ids
            .as_slice::<i64>()
            .iter()
            .enumerate()
            .find(|(_, &v)| v < 0 || v >= vocab)
        {
            return Err(ZayaError::InvalidArgument(format!(
                "token id {bad} at position {} is outside the vocabulary (0..{vocab})",
                pos % t
            )));
        }
        let total = cache.offset() + t;
        if total > self.config.max_position_embeddings {
            return Err(ZayaError::ContextOverflow {
                tokens: total,
                limit: self.config.max_position_embeddings,
            });
        }
        if let Some(cb) = cache.batch() {
            if cb != b && cache.offset() > 0 {
                return Err(ZayaError::InvalidArgument(format!(
                    "batch of {b} sequences does not match the cache's batch of {cb}"
                )));
            }
        }
        // u32 ids (what decode_step and prefill pass) go into the graph as they are: no cast node
        Ok(if tokens.dtype() == Dtype::Uint32 {
            tokens.clone()
        } else {
            ids.as_dtype(Dtype::Uint32)?
        })
    }

    /// All-position logits f32 `[B, T, V]` for `tokens` (`[T]` or `[B, T]`), continuing `cache`.
    pub fn forward(&self, tokens: &Array, cache: &mut ModelCache) -> Result<Array> {
        let out = self.forward_with(tokens, cache, ForwardOptions::default())?;
        Ok(out.logits.expect("LogitsMode::All"))
    }

    /// The general forward: chunks the tokens (`opts.chunk` or the model's `prefill_chunk`),
    /// carries every state across chunks in `cache`, evaluates each chunk, and optionally captures
    /// per-layer tensors.
    pub fn forward_with(&self, tokens: &Array, cache: &mut ModelCache, opts: ForwardOptions) -> Result<ForwardOutput> {
        if opts.chunk == Some(0) {
            return Err(ZayaError::InvalidArgument("chunk size must be positive".into()));
        }
        self.forward_probed(tokens, cache, opts, Probe::None)
    }

    fn forward_probed(
        &self,
        tokens: &Array,
        cache: &mut ModelCache,
        opts: ForwardOptions,
        probe: Probe<'_>,
    ) -> Result<ForwardOutput> {
        if cache.is_poisoned() {
            return Err(ZayaError::InvalidArgument(
                "the cache is inconsistent after a failed forward; reset it or restore a snapshot".into(),
            ));
        }
        let ids = self.check_tokens(tokens, cache)?;
        let out = self.forward_checked(&ids, cache, opts, probe);
        if out.is_err() {
            cache.poison();
        }
        out
    }

    fn forward_checked(
        &self,
        ids: &Array,
        cache: &mut ModelCache,
        opts: ForwardOptions,
        mut probe: Probe<'_>,
    ) -> Result<ForwardOutput> {
        let (b, t) = (ids.shape()[0], ids.shape()[1]);
        cache.bind_batch(b as usize)?;
        let chunk = opts.chunk.unwrap_or(self.options.prefill_chunk).clamp(1, t as usize) as i32;
        let mut logits_parts = Vec::new();
        let mut captures: Vec<LayerCapture> = Vec::new();
        let mut start = 0i32;
        while start < t {
            let end = (start + chunk).min(t);
            let last_chunk = end == t;
            let mode = match opts.logits {
                LogitsMode::All => LogitsMode::All,
                LogitsMode::Last if last_chunk => LogitsMode::Last,
                _ => LogitsMode::None,
            };
            let piece = ids.index((.., start..end));
            let ChunkOut {
                logits,
                capture: cap,
                skips,
            } = self.forward_chunk(&piece, cache, mode, opts.capture, &mut probe)?;
            let t_other = Instant::now();
            let mut to_eval: Vec<&Array> = skips.iter().map(|(_, a)| a).collect();
            if let Some(l) = &logits {
                to_eval.push(l);
            }
            if let Some(c) = &cap {
                to_eval.extend(c.hidden.iter().chain(c.residual.iter()).chain(c.routes.values()));
            }
            // the outputs and every updated cache state, evaluated together (one wait per chunk)
            to_eval.extend(cache.arrays());
            if let Probe::Nodes(st, names) = &mut probe {
                let n = ext::graph_nodes(&to_eval)?;
                st.nodes += n.nodes;
                st.casts += n.casts;
                for (name, c) in ext::graph_histogram(&to_eval)? {
                    match names.iter_mut().find(|(k, _)| *k == name) {
                        Some(e) => e.1 += c,
                        None => names.push((name, c)),
                    }
                }
            }
            mlx_rs::transforms::eval(to_eval)?;
            let tokens = (b * (end - start)) as usize;
            for (n, s) in &skips {
                cache.count_routes(*n, tokens, s.item_cast::<i32>() as usize);
            }
            if let Some(l) = logits {
                logits_parts.push(l);
            }
            if let Some(c) = cap {
                captures.push(c);
            }
            if let Probe::Phases(p) = &mut probe {
                p.other += t_other.elapsed();
            }
            start = end;
        }
        let logits = match logits_parts.len() {
            0 => None,
            1 => logits_parts.pop(),
            _ => Some(concatenate(&logits_parts, 1)?),
        };
        let capture = if opts.capture {
            Some(join_captures(captures)?)
        } else {
            None
        };
        Ok(ForwardOutput { logits, capture })
    }

    /// Prefills `tokens` (one sequence) in chunks of `chunk` (default: the model's `prefill_chunk`)
    /// and returns the last position's logits, f32 `[1, V]`, evaluated.
    pub fn prefill(&self, tokens: &[u32], cache: &mut ModelCache, chunk: Option<usize>) -> Result<Array> {
        if chunk == Some(0) {
            return Err(ZayaError::InvalidArgument("chunk size must be positive".into()));
        }
        self.last_logits(tokens, cache, chunk, Probe::None)
    }

    /// One sequence `tokens` through the model in chunks: the last position's logits f32 `[1, V]`.
    fn last_logits(
        &self,
        tokens: &[u32],
        cache: &mut ModelCache,
        chunk: Option<usize>,
        probe: Probe<'_>,
    ) -> Result<Array> {
        let ids = Array::from_slice(tokens, &[1, tokens.len() as i32]);
        let opts = ForwardOptions {
            logits: LogitsMode::Last,
            capture: false,
            chunk,
        };
        let out = self.forward_probed(&ids, cache, opts, probe)?;
        let l = out.logits.expect("LogitsMode::Last");
        Ok(l.reshape(&[1, self.config.vocab_size as i32])?)
    }

    /// Feeds `tokens` (one sequence) as one chunk with per-position recording and returns the logits
    /// of every position, f32 `[T, V]`, evaluated. Afterwards [`ModelCache::keep_recorded`] keeps
    /// any prefix of the tokens exactly: how speculative decoding verifies its drafts.
    pub fn forward_recorded(&self, tokens: &[u32], cache: &mut ModelCache) -> Result<Array> {
        if tokens.is_empty() {
            return Err(ZayaError::InvalidArgument("forward_recorded: no tokens".into()));
        }
        let ids = Array::from_slice(tokens, &[1, tokens.len() as i32]);
        let was = cache.is_recording();
        cache.set_recording(true);
        let opts = ForwardOptions {
            logits: LogitsMode::All,
            capture: false,
            chunk: Some(tokens.len()),
        };
        let out = self.forward_with(&ids, cache, opts);
        cache.set_recording(was);
        let l = out?.logits.expect("LogitsMode::All");
        Ok(l.reshape(&[tokens.len() as i32, self.config.vocab_size as i32])?)
    }

    /// One decode step for one sequence: logits f32 `[1, V]` of the position after `token`, evaluated.
    pub fn decode_step(&self, token: u32, cache: &mut ModelCache) -> Result<Array> {
        self.prefill(&[token], cache, Some(1))
    }

    /// Size of the graph of one decode step for `token` after `cache` (a measuring hook for
    /// `zaya bench`): runs the step on a snapshot of the cache through
    /// [`decode_step_counted`](Self::decode_step_counted), which counts the nodes of the logits,
    /// every updated cache state and the skip counters before evaluating them. `cache` is not changed.
    pub fn decode_graph_stats(&self, token: u32, cache: &ModelCache) -> Result<crate::ext::GraphStats> {
        let mut snapshot = cache.snapshot();
        let (_, stats, _) = self.decode_step_counted(token, &mut snapshot)?;
        Ok(stats)
    }

    fn decode_probed(&self, token: u32, cache: &mut ModelCache, probe: Probe<'_>) -> Result<Array> {
        self.last_logits(&[token], cache, Some(1), probe)
    }

    /// [`decode_step`](Self::decode_step) that also counts the primitive nodes of the step's lazy
    /// graph (logits, skip counters and every cache state) just before it is evaluated, in total
    /// and by primitive name (most frequent first).
    #[allow(clippy::type_complexity)]
    pub fn decode_step_counted(
        &self,
        token: u32,
        cache: &mut ModelCache,
    ) -> Result<(Array, GraphStats, Vec<(String, i64)>)> {
        let mut st = GraphStats::default();
        let mut names = Vec::new();
        let l = self.decode_probed(token, cache, Probe::Nodes(&mut st, &mut names))?;
        names.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        Ok((l, st, names))
    }

    /// [`prefill`](Self::prefill) that evaluates after every phase of every chunk and returns the
    /// wall-clock time of each phase summed over the chunks (benchmark support).
    pub fn prefill_profiled(
        &self,
        tokens: &[u32],
        cache: &mut ModelCache,
        chunk: Option<usize>,
    ) -> Result<(Array, PhaseTimes)> {
        let mut p = PhaseTimes::default();
        let t = Instant::now();
        let l = self.last_logits(tokens, cache, chunk, Probe::Phases(&mut p))?;
        p.embed += t.elapsed().saturating_sub(p.total());
        Ok((l, p))
    }

    /// [`decode_step`](Self::decode_step) that evaluates after every phase (embedding, each
    /// half-layer, head) and returns the wall-clock time of each (benchmark support).
    pub fn decode_step_profiled(&self, token: u32, cache: &mut ModelCache) -> Result<(Array, PhaseTimes)> {
        let mut p = PhaseTimes::default();
        let t = Instant::now();
        let l = self.decode_probed(token, cache, Probe::Phases(&mut p))?;
        // token checks before the first chunk count as embedding time
        p.embed += t.elapsed().saturating_sub(p.total());
        Ok((l, p))
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
        }
    }

    /// The lm_head: `y [.., H]` f32 → logits f32 `[.., V]`.
    pub(crate) fn lm_head(&self, y: &Array) -> Result<Array> {
        let logits = match &self.lm_head {
            Some(l) => l.forward(y)?,
            None => self.model.embed_tokens.forward(y)?,
        };
        Ok(logits.as_dtype(Dtype::Float32)?)
    }

    /// One chunk `ids [B, T]` through the whole model.
    fn forward_chunk(
        &self,
        ids: &Array,
        cache: &mut ModelCache,
        mode: LogitsMode,
        capture: bool,
        probe: &mut Probe<'_>,
    ) -> Result<ChunkOut> {
        let mut clock = Instant::now();
        // Phases probe: evaluates `arrays` and returns the time since the last mark.
        let mut mark = |probe: &mut Probe<'_>, arrays: &[&Array]| -> Result<Option<Duration>> {
            if let Probe::Phases(_) = probe {
                mlx_rs::transforms::eval(arrays.iter().copied())?;
                let d = clock.elapsed();
                clock = Instant::now();
                Ok(Some(d))
            } else {
                Ok(None)
            }
        };
        let (b, t) = (ids.shape()[0], ids.shape()[1]);
        let hdim = self.config.hidden_size as i32;
        cache.begin_forward(t as usize);
        let offset = cache.offset();
        let dt = self.options.dtype;
        let plan = &self.plan;
        let mut cap = capture.then(LayerCapture::default);
        // both paths carry the hidden and residual streams as rows [B·T, H]
        let to3 = |a: &Array| -> Result<Array> { Ok(a.reshape(&[b, t, hdim])?) };

        let mut h = self.model.embed_tokens.embed(&ids.reshape(&[b * t])?)?; // [B·T, H] f32
        if let (Some(d), Probe::Phases(p)) = (mark(probe, &[&h])?, &mut *probe) {
            p.embed += d;
        }
        let mut residual: Option<Array> = None;
        let mut router_state: Option<Array> = None;
        let mut skips: Vec<(usize, Array)> = Vec::new();
        for (layer, &layer_plan) in self.model.layers.iter().zip(&plan.layers) {
            let n = layer.index;
            // the norm in f32; the router reads it in f32, projections and experts in the compute dtype
            let (r, x32) =
                layer
                    .res_scale
                    .merge_norm(residual.as_ref(), &h, &layer.input_norm, plan.norms, plan.ext)?;
            let x = if x32.dtype() == dt {
                x32.clone()
            } else {
                x32.as_dtype(dt)?
            };
            if let Some(c) = cap.as_mut() {
                c.residual.push(to3(&r)?);
            }
            residual = Some(r);
            h = match (layer_plan, &layer.self_attn, &layer.zaya_block) {
                (LayerPlan::Attention { path }, Some(attn), _) => {
                    let opts = CcaOptions {
                        path,
                        ext: plan.ext,
                        kv_step: cache.kv_step(),
                        record: cache.is_recording(),
                    };
                    attn.forward(&x, b, t, cache.attn_mut(n), offset, opts)?
                }
                (LayerPlan::Moe { .. }, _, Some(moe)) => {
                    let out = moe.forward(&x, &x32, router_state.as_ref(), self.moe_step(layer_plan))?;
                    skips.push((n, out.skipped));
                    if let Some(c) = cap.as_mut() {
                        c.routes.insert(n, out.route.reshape(&[b, t])?);
                    }
                    router_state = Some(out.state);
                    out.y
                }
                _ => unreachable!("the plan follows the layers"),
            };
            if let Some(c) = cap.as_mut() {
                c.hidden.push(to3(&h)?.as_dtype(Dtype::Float32)?);
            }
            if let Probe::Phases(_) = probe {
                let mut ev: Vec<&Array> = vec![&h];
                ev.extend(residual.as_ref());
                ev.extend(router_state.as_ref());
                if layer.self_attn.is_some() {
                    ev.extend(cache.attn(n).arrays());
                }
                if let (Some(d), Probe::Phases(p)) = (mark(probe, &ev)?, &mut *probe) {
                    if p.layers.len() <= n {
                        p.layers.resize(n + 1, Duration::ZERO);
                    }
                    p.layers[n] += d;
                }
            }
        }
        let (rs, norm) = (&self.model.res_scale, &self.model.final_norm);
        let head = |r: Option<&Array>, h: &Array| -> Result<Array> {
            self.lm_head(&rs.merge_norm(r, h, norm, plan.norms, plan.ext)?.1)
        };
        let logits = match mode {
            LogitsMode::None => None,
            LogitsMode::All => Some(head(residual.as_ref(), &h)?.reshape(&[b, t, -1])?),
            LogitsMode::Last if t == 1 => Some(head(residual.as_ref(), &h)?.reshape(&[b, 1, -1])?),
            LogitsMode::Last => {
                // only the last position: slice before the merge (elementwise, so the same values)
                let last = |a: &Array| -> Result<Array> { Ok(to3(a)?.index((.., t - 1, ..))) };
                let r_last = residual.as_ref().map(last).transpose()?;
                Some(head(r_last.as_ref(), &last(&h)?)?.reshape(&[b, 1, -1])?)
            }
        };
        if let Some(l) = &logits {
            if let (Some(d), Probe::Phases(p)) = (mark(probe, &[l])?, &mut *probe) {
                p.head += d;
            }
        }
        cache.advance(t as usize);
        Ok(ChunkOut {
            logits,
            capture: cap,
            skips,
        })
    }
}

/// mlx-rs's module interface: `(tokens, cache)` → logits, the same as [`ZayaModel::forward`].
/// The half-layers keep inherent forwards because each takes its own part of the per-sequence
/// state and the plan's choice for it.
impl<'a> mlx_rs::module::Module<(&'a Array, &'a mut ModelCache)> for ZayaModel {
    type Output = Array;
    type Error = ZayaError;

    fn forward(&mut self, (tokens, cache): (&'a Array, &'a mut ModelCache)) -> Result<Array> {
        ZayaModel::forward(self, tokens, cache)
    }

    fn training_mode(&mut self, _mode: bool) {}
}

/// What one chunk produced.
struct ChunkOut {
    logits: Option<Array>,
    capture: Option<LayerCapture>,
    /// (MoE layer, skipped tokens as an int32 scalar).
    skips: Vec<(usize, Array)>,
}

fn join_captures(mut parts: Vec<LayerCapture>) -> Result<LayerCapture> {
    if parts.len() == 1 {
        return Ok(parts.pop().unwrap());
    }
    let mut out = LayerCapture::default();
    let layers = parts.first().map_or(0, |p| p.hidden.len());
    for n in 0..layers {
        out.hidden
            .push(concatenate(&parts.iter().map(|p| &p.hidden[n]).collect::<Vec<_>>(), 1)?);
        out.residual.push(concatenate(
            &parts.iter().map(|p| &p.residual[n]).collect::<Vec<_>>(),
            1,
        )?);
    }
    let keys: Vec<usize> = parts
        .first()
        .map(|p| p.routes.keys().copied().collect())
        .unwrap_or_default();
    for k in keys {
        out.routes.insert(
            k,
            concatenate(&parts.iter().map(|p| &p.routes[&k]).collect::<Vec<_>>(), 1)?,
        );
    }
    Ok(out)
}
