//! Per-sequence inference state ([`ModelCache`]): for every CCA attention half-layer the KV cache
//! (post-RoPE keys and values, `[B, Hk, T, D]` f32, grown in fixed steps by preallocation, never per
//! token), the conv state (`[B, C, S]` f32: the last S raw pre-conv frames q̃‖k̃) and `prev_hs`
//! (`[B, H]` f32: the last normalized attention input), plus the position offset and the MOD-skip
//! counters (zaya-architecture.md §3.3). Cloning a cache is cheap (arrays are shared, copy-on-write
//! through MLX's functional updates), which is how snapshots work.
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
        }
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

    /// Evaluates every state array (keeps lazy graphs short between decode steps).
    pub fn eval(&self) -> Result<()> {
        mlx_rs::transforms::eval(self.arrays())?;
        Ok(())
    }
}
