//! Measuring hooks for the benchmarks: the node count of a decode step's graph (in total and by
//! primitive) and the wall-clock time of each phase of a step or prefill, evaluated phase by phase.
use std::time::{Duration, Instant};

use mlx_rs::Array;

use super::ZayaModel;
use crate::error::Result;
use crate::ext::GraphStats;
use crate::model::cache::ModelCache;

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
pub(super) enum Probe<'a> {
    None,
    /// Count the nodes of each chunk's graph before it is evaluated (summed over chunks), also by
    /// primitive name.
    Nodes(&'a mut GraphStats, &'a mut Vec<(String, i64)>),
    /// Evaluate after every phase and time it.
    Phases(&'a mut PhaseTimes),
}

impl ZayaModel {
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
}
