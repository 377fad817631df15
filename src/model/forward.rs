//! The forward passes over a [`ModelCache`]: token checks, chunked prefill, one-token decode,
//! recorded forwards (for exact truncation), per-layer capture for parity checks, and the one
//! chunk through the whole model that all of them run (following the model's
//! [`ExecutionPlan`](crate::model::plan::ExecutionPlan): one `match` per half-layer).
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use mlx_rs::ops::concatenate;
use mlx_rs::ops::indexing::IndexOp;
use mlx_rs::{Array, Dtype};

use super::probe::Probe;
use super::ZayaModel;
use crate::error::{Result, ZayaError};
use crate::ext;
use crate::ext::MatmulPrecision;
use crate::model::cache::ModelCache;
use crate::model::cca::CcaOptions;
use crate::model::plan::LayerPlan;

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

impl ZayaModel {
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
    pub(super) fn last_logits(
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
            // (the bf16 matmul kernels round their inputs themselves)
            let x = if x32.dtype() == dt || plan.matmul == MatmulPrecision::Bf16 {
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
