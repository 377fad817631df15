//! Per-sequence inference state ([`ModelCache`]): for every CCA attention half-layer the KV cache
//! (post-RoPE keys and values, `[B, Hk, T, D]` f32, grown in fixed steps by preallocation, never per
//! token), the conv state (`[B, C, S]` f32: the last S raw pre-conv frames q̃‖k̃) and `prev_hs`
//! (`[B, H]` f32: the last normalized attention input), plus the position offset and the MOD-skip
//! counters. Cloning a cache is cheap (arrays are shared, copy-on-write through MLX's functional
//! updates), which is how snapshots work.
//!
//! Three ways back to an earlier state, all exact:
//! - [`ModelCache::snapshot`] / [`ModelCache::restore`]: a full copy (shares arrays; the next append
//!   to the live cache copies its KV buffers once);
//! - [`ModelCache::checkpoint`] / [`ModelCache::truncate_to`]: only the position and the small
//!   recurrent states (`conv_state`, `prev_hs`) are kept; going back shortens the KV length, whose
//!   earlier rows appends never touch, so the KV buffers stay shared and are written in place;
//! - [`ModelCache::keep_recorded`]: after a forward run with recording on
//!   ([`ModelCache::set_recording`], used by speculative decoding), keeps any prefix of that forward's
//!   tokens: the conv state of every position is a window of the padded conv input and `prev_hs` a
//!   row of the layer input, both kept from the forward, so nothing is recomputed.
//!
//! The router's depth-carried (EDA) state flows from one MoE layer to the next inside a forward
//! pass and is not carried across positions: a snapshot needs nothing of it.
use mlx_rs::ops::indexing::IndexOp;
use mlx_rs::ops::{concatenate, zeros_dtype};
use mlx_rs::{Array, Dtype};

use crate::config::ZayaConfig;
use crate::error::{Result, ZayaError};

/// Default KV growth step in positions.
pub const DEFAULT_KV_STEP: usize = 256;

/// State of one CCA attention half-layer.
#[derive(Debug, Clone, Default)]
pub struct AttnCache {
    /// `[B, Hk, capacity, D]` f32; positions `0..len` are valid.
    keys: Option<Array>,
    values: Option<Array>,
    len: usize,
    /// `[B, C, S]` f32 (zeros at sequence start).
    pub conv_state: Option<Array>,
    /// `[B, H]` f32 (zeros at sequence start).
    pub prev_hs: Option<Array>,
    /// What the last recorded forward kept to roll back within it (see [`ModelCache::keep_recorded`]).
    pub(crate) trace: Option<StepTrace>,
}

/// Per-position state of one attention layer over one recorded forward of T tokens.
#[derive(Debug, Clone)]
pub(crate) struct StepTrace {
    /// KV length before the forward.
    pub len_before: usize,
    /// `[B, S+T, C]` f32: the conv state before the forward (as frames) followed by the T new
    /// pre-conv frames; the state after j tokens is frames `j..j+S`.
    pub padded: Array,
    /// `[B, T, H]`: the layer input (input_norm output) of each position; `prev_hs` after j tokens
    /// is row `j-1`.
    pub x: Array,
}

/// The recurrent part of one attention layer at a checkpoint.
#[derive(Debug, Clone)]
struct LayerCheckpoint {
    len: usize,
    conv_state: Option<Array>,
    prev_hs: Option<Array>,
}

/// A light snapshot ([`ModelCache::checkpoint`]): the position and every layer's recurrent state,
/// no KV.
#[derive(Debug, Clone)]
pub struct CacheCheckpoint {
    offset: usize,
    batch: Option<usize>,
    layers: Vec<LayerCheckpoint>,
    skip_counts: Vec<u64>,
    routed_counts: Vec<u64>,
}

impl CacheCheckpoint {
    /// The position the checkpoint was taken at.
    pub fn offset(&self) -> usize {
        self.offset
    }
}

impl AttnCache {
    /// Valid cached positions.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True before the first token.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Allocated positions.
    pub fn capacity(&self) -> usize {
        self.keys.as_ref().map_or(0, |k| k.shape()[2] as usize)
    }

    /// Appends `k`, `v` (`[B, Hk, T, D]`) and returns all valid keys/values `[B, Hk, len+T, D]`.
    /// Storage grows by whole multiples of `step` positions.
    pub fn update_and_fetch(&mut self, k: &Array, v: &Array, step: usize) -> Result<(Array, Array)> {
        let (keys, values, n) = self.append(k, v, step)?;
        let n = n as i32;
        Ok((keys.index((.., .., 0..n, ..)), values.index((.., .., 0..n, ..))))
    }

    /// Appends `k`, `v` (`[B, Hk, T, D]` f32) and returns the whole storage `[B, Hk, capacity, D]`
    /// with the number of valid positions (for kernels that take the length themselves).
    pub fn append(&mut self, k: &Array, v: &Array, step: usize) -> Result<(Array, Array, usize)> {
        let sh = k.shape().to_vec();
        let (b, hk, t, d) = (sh[0], sh[1], sh[2] as usize, sh[3]);
        let f32 = |a: &Array| -> Result<Array> {
            Ok(if a.dtype() == Dtype::Float32 {
                a.clone()
            } else {
                a.as_dtype(Dtype::Float32)?
            })
        };
        let (k, v) = (f32(k)?, f32(v)?);
        let prev = self.len;
        let needed = prev + t;
        if needed > self.capacity() {
            let step = step.max(1);
            let new_cap = needed.div_ceil(step) * step;
            let grow = |old: &Option<Array>| -> Result<Array> {
                let extra = zeros_dtype(&[b, hk, (new_cap - prev) as i32, d], Dtype::Float32)?;
                Ok(match old {
                    Some(o) if prev > 0 => concatenate(&[o.index((.., .., 0..prev as i32, ..)), extra], 2)?,
                    _ => extra,
                })
            };
            self.keys = Some(grow(&self.keys)?);
            self.values = Some(grow(&self.values)?);
        }
        // the old storage is moved into the update, so MLX can write in place unless a snapshot shares it
        let (keys, values) =
            crate::ext::kv_append(&self.keys.take().unwrap(), &self.values.take().unwrap(), &k, &v, prev)?;
        self.keys = Some(keys.clone());
        self.values = Some(values.clone());
        self.len = needed;
        Ok((keys, values, needed))
    }

    /// A layer state from its parts: `keys`/`values` `[B, Hk, len, D]` f32 (no spare capacity; the
    /// next append grows the storage), `conv_state` `[B, C, S]` f32, `prev_hs` `[B, H]` f32. Shapes
    /// are the caller's responsibility (the prompt-cache loader checks them against the config).
    pub fn from_parts(keys: Array, values: Array, conv_state: Array, prev_hs: Array) -> Self {
        let len = keys.shape()[2] as usize;
        AttnCache {
            keys: Some(keys),
            values: Some(values),
            len,
            conv_state: Some(conv_state),
            prev_hs: Some(prev_hs),
            trace: None,
        }
    }

    /// The valid keys `[B, Hk, len, D]` (None before the first token).
    pub fn keys(&self) -> Option<Array> {
        self.keys.as_ref().map(|k| k.index((.., .., 0..self.len as i32, ..)))
    }

    /// The valid values `[B, Hk, len, D]`.
    pub fn values(&self) -> Option<Array> {
        self.values.as_ref().map(|v| v.index((.., .., 0..self.len as i32, ..)))
    }

    pub(crate) fn arrays(&self) -> impl Iterator<Item = &Array> {
        [&self.keys, &self.values, &self.conv_state, &self.prev_hs]
            .into_iter()
            .flatten()
    }
}

/// The whole model's state for one batch of sequences.
#[derive(Debug, Clone)]
pub struct ModelCache {
    attn: Vec<AttnCache>,
    offset: usize,
    batch: Option<usize>,
    kv_step: usize,
    /// Per half-layer: tokens that took the MOD skip route / tokens routed (MoE layers only).
    skip_counts: Vec<u64>,
    routed_counts: Vec<u64>,
    /// Set when a forward failed after it had started updating layer states.
    poisoned: bool,
    /// Record per-position state in the next forwards (see [`ModelCache::keep_recorded`]).
    recording: bool,
    /// (offset before, tokens) of the last recorded forward.
    recorded: Option<(usize, usize)>,
}

impl ModelCache {
    /// An empty cache for `cfg` (batch size fixed by the first forward).
    pub fn new(cfg: &ZayaConfig) -> Self {
        Self::with_kv_step(cfg, DEFAULT_KV_STEP)
    }

    /// An empty cache whose KV storage grows in steps of `kv_step` positions.
    pub fn with_kv_step(cfg: &ZayaConfig, kv_step: usize) -> Self {
        ModelCache {
            attn: vec![AttnCache::default(); cfg.num_attention_layers()],
            offset: 0,
            batch: None,
            kv_step: kv_step.max(1),
            skip_counts: vec![0; cfg.num_hidden_layers],
            routed_counts: vec![0; cfg.num_hidden_layers],
            poisoned: false,
            recording: false,
            recorded: None,
        }
    }

    /// A cache from per-attention-layer states (in layer order) at position `offset` for a batch of
    /// `batch` sequences, with route counters (per half-layer). Every layer's KV length must equal
    /// `offset`.
    pub fn from_parts(
        cfg: &ZayaConfig,
        layers: Vec<AttnCache>,
        offset: usize,
        batch: usize,
        skip_counts: Vec<u64>,
        routed_counts: Vec<u64>,
    ) -> Result<Self> {
        let bad = |m: String| Err(ZayaError::InvalidArgument(m));
        if layers.len() != cfg.num_attention_layers() {
            return bad(format!(
                "{} attention layer states for a model with {}",
                layers.len(),
                cfg.num_attention_layers()
            ));
        }
        if let Some((i, l)) = layers.iter().enumerate().find(|(_, l)| l.len != offset) {
            return bad(format!(
                "attention layer {i} holds {} positions, expected {offset}",
                l.len
            ));
        }
        if skip_counts.len() != cfg.num_hidden_layers || routed_counts.len() != cfg.num_hidden_layers {
            return bad("route counters must have one entry per half-layer".into());
        }
        Ok(ModelCache {
            attn: layers,
            offset,
            batch: Some(batch),
            kv_step: DEFAULT_KV_STEP,
            skip_counts,
            routed_counts,
            poisoned: false,
            recording: false,
            recorded: None,
        })
    }

    /// Positions already processed (the RoPE offset of the next token).
    pub fn offset(&self) -> usize {
        self.offset
    }

    /// Batch size, once known.
    pub fn batch(&self) -> Option<usize> {
        self.batch
    }

    /// KV growth step.
    pub fn kv_step(&self) -> usize {
        self.kv_step
    }

    /// Sets the KV growth step (positions).
    pub fn set_kv_step(&mut self, step: usize) {
        self.kv_step = step.max(1);
    }

    /// Forgets every sequence (keeps the KV step).
    pub fn reset(&mut self) {
        for a in &mut self.attn {
            *a = AttnCache::default();
        }
        self.offset = 0;
        self.batch = None;
        self.skip_counts.iter_mut().for_each(|c| *c = 0);
        self.routed_counts.iter_mut().for_each(|c| *c = 0);
        self.poisoned = false;
        self.recorded = None;
    }

    /// True after a forward failed midway: some layers saw the failed tokens, others did not, so
    /// the cache must be [`reset`](Self::reset) or [`restore`](Self::restore)d before further use.
    pub fn is_poisoned(&self) -> bool {
        self.poisoned
    }

    pub(crate) fn poison(&mut self) {
        self.poisoned = true;
    }

    /// A snapshot to [`restore`](Self::restore) later (cheap: arrays are shared; later updates of
    /// either copy do not affect the other).
    pub fn snapshot(&self) -> ModelCache {
        self.clone()
    }

    /// Returns to a snapshot taken from this cache.
    pub fn restore(&mut self, snapshot: &ModelCache) {
        *self = snapshot.clone();
    }

    /// A light snapshot of the current position: every layer's KV length and recurrent states (no
    /// KV data). [`truncate_to`](Self::truncate_to) returns to it exactly as long as the cache was
    /// only extended since (not reset or restored to an unrelated state).
    pub fn checkpoint(&self) -> CacheCheckpoint {
        CacheCheckpoint {
            offset: self.offset,
            batch: self.batch,
            layers: self
                .attn
                .iter()
                .map(|a| LayerCheckpoint {
                    len: a.len,
                    conv_state: a.conv_state.clone(),
                    prev_hs: a.prev_hs.clone(),
                })
                .collect(),
            skip_counts: self.skip_counts.clone(),
            routed_counts: self.routed_counts.clone(),
        }
    }

    /// Goes back to `cp`, taken earlier from this cache: the KV caches are cut to the checkpoint's
    /// length (their buffers keep the later rows, which the next append overwrites) and the conv
    /// states, `prev_hs`, position and route counters are the checkpoint's.
    pub fn truncate_to(&mut self, cp: &CacheCheckpoint) -> Result<()> {
        if cp.offset > self.offset || cp.layers.len() != self.attn.len() {
            return Err(ZayaError::InvalidArgument(format!(
                "checkpoint at position {} is not from this cache (at position {})",
                cp.offset, self.offset
            )));
        }
        if let Some((i, _)) = cp
            .layers
            .iter()
            .zip(&self.attn)
            .enumerate()
            .find(|(_, (c, a))| c.len > a.len)
        {
            return Err(ZayaError::InvalidArgument(format!(
                "checkpoint is ahead of attention layer {i}: not from this cache"
            )));
        }
        for (a, c) in self.attn.iter_mut().zip(&cp.layers) {
            a.len = c.len;
            a.conv_state = c.conv_state.clone();
            a.prev_hs = c.prev_hs.clone();
            a.trace = None;
        }
        self.offset = cp.offset;
        self.batch = cp.batch;
        self.skip_counts.clone_from(&cp.skip_counts);
        self.routed_counts.clone_from(&cp.routed_counts);
        self.poisoned = false;
        self.recorded = None;
        Ok(())
    }

    /// Turns per-position recording on or off for the following forwards. While on, each forward
    /// keeps, per attention layer, its padded conv input and its layer input (a few rows per token)
    /// so that [`keep_recorded`](Self::keep_recorded) can cut the cache back to any of its tokens.
    /// Turning it off keeps the last recording until the next forward.
    pub fn set_recording(&mut self, on: bool) {
        self.recording = on;
    }

    /// True while forwards record per-position state.
    pub fn is_recording(&self) -> bool {
        self.recording
    }

    fn clear_trace(&mut self) {
        self.recorded = None;
        for a in &mut self.attn {
            a.trace = None;
        }
    }

    pub(crate) fn begin_forward(&mut self, tokens: usize) {
        if self.recording {
            self.recorded = Some((self.offset, tokens));
        } else if self.recorded.is_some() {
            self.clear_trace();
        }
    }

    /// Keeps the first `keep` tokens (1..=T) of the last recorded forward of T tokens and forgets
    /// the rest, exactly: every layer's KV is cut to its length before the forward plus `keep`, its
    /// conv state becomes the frames `keep..keep+S` of the recorded padded conv input and `prev_hs`
    /// the recorded layer input at token `keep-1`. The route counters keep counting every token the
    /// forward processed.
    pub fn keep_recorded(&mut self, keep: usize) -> Result<()> {
        let Some((before, t)) = self.recorded else {
            return Err(ZayaError::InvalidArgument(
                "keep_recorded: the last forward was not recorded (set_recording(true) first)".into(),
            ));
        };
        if keep == 0 || keep > t || self.offset != before + t {
            return Err(ZayaError::InvalidArgument(format!(
                "keep_recorded: cannot keep {keep} of the {t} recorded tokens"
            )));
        }
        if keep < t {
            for a in &mut self.attn {
                let tr = a
                    .trace
                    .as_ref()
                    .ok_or_else(|| ZayaError::InvalidArgument("keep_recorded: a layer has no recorded state".into()))?;
                let s = tr.padded.shape()[1] as usize - t;
                let k = keep as i32;
                let window = tr.padded.index((.., k..k + s as i32, ..));
                let conv = window.transpose_axes(&[0, 2, 1])?.contiguous()?;
                let prev = tr.x.index((.., k - 1, ..));
                let prev = if prev.dtype() == Dtype::Float32 {
                    prev
                } else {
                    prev.as_dtype(Dtype::Float32)?
                };
                a.len = tr.len_before + keep;
                a.conv_state = Some(conv);
                a.prev_hs = Some(prev);
            }
            self.offset = before + keep;
            mlx_rs::transforms::eval(self.arrays())?;
        }
        self.clear_trace();
        Ok(())
    }

    /// State of attention half-layer `n` (even n).
    pub fn attn(&self, layer: usize) -> &AttnCache {
        &self.attn[layer / 2]
    }

    pub(crate) fn attn_mut(&mut self, layer: usize) -> &mut AttnCache {
        &mut self.attn[layer / 2]
    }

    /// Every attention layer's state, in layer order.
    pub fn attn_layers(&self) -> &[AttnCache] {
        &self.attn
    }

    /// Tokens that took the MOD skip route, per half-layer (0 for attention layers), since the
    /// last reset.
    pub fn skip_counts(&self) -> &[u64] {
        &self.skip_counts
    }

    /// Tokens routed per half-layer since the last reset (0 for attention layers).
    pub fn routed_counts(&self) -> &[u64] {
        &self.routed_counts
    }

    pub(crate) fn count_routes(&mut self, layer: usize, tokens: usize, skipped: usize) {
        self.routed_counts[layer] += tokens as u64;
        self.skip_counts[layer] += skipped as u64;
    }

    /// Checks/sets the batch size for a forward of `b` sequences.
    pub(crate) fn bind_batch(&mut self, b: usize) -> Result<()> {
        match self.batch {
            Some(x) if x != b && self.offset > 0 => Err(ZayaError::InvalidArgument(format!(
                "batch of {b} sequences does not match the cache's batch of {x}; reset the cache first"
            ))),
            _ => {
                self.batch = Some(b);
                Ok(())
            }
        }
    }

    pub(crate) fn advance(&mut self, t: usize) {
        self.offset += t;
    }

    /// Every state array (keys, values, conv states, prev_hs of each attention layer).
    pub(crate) fn arrays(&self) -> impl Iterator<Item = &Array> {
        self.attn.iter().flat_map(|a| a.arrays())
    }

    /// Bytes the cache's arrays take (shared storage counted in full): what keeping this state
    /// costs at most.
    pub fn nbytes(&self) -> usize {
        self.attn.iter().flat_map(|a| a.arrays()).map(|a| a.nbytes()).sum()
    }

    /// Evaluates every state array (keeps lazy graphs short between decode steps).
    pub fn eval(&self) -> Result<()> {
        mlx_rs::transforms::eval(self.arrays())?;
        Ok(())
    }
}
