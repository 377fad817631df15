//! One decode step of a ragged batch through the whole model ([`ZayaModel::decode_batch`]): every
//! weight is read once for all rows (the projections, router and lm_head as N-row GEMMs, the
//! routed experts with rows grouped by expert inside the switch-GLU kernel), attention reads each
//! row's own KV. The graph has the same nodes per half-layer whatever the number of rows.
use mlx_rs::Array;

use crate::error::{Result, ZayaError};
use crate::ext::ExtMode;
use crate::model::moe::MoeStep;
use crate::model::plan::LayerPlan;
use crate::model::ZayaModel;

use super::BatchCache;

/// What one batched decode step produced (evaluated).
#[derive(Debug)]
pub struct BatchStep {
    /// f32 `[N, V]`: row `b` = the logits after sequence `b`'s token.
    pub logits: Array,
    /// Per MoE half-layer (in order), each row's route (`num_experts` = the MOD skip route), when
    /// asked for.
    pub routes: Option<Vec<Vec<u32>>>,
}

impl ZayaModel {
    /// True when [`decode_batch`](Self::decode_batch) runs: the plan's fused f32 norms and
    /// attention (the default options). Otherwise a batch decodes its sequences one after another.
    pub fn supports_batching(&self) -> bool {
        self.plan().batching
    }

    /// One decode step for the N sequences of `batch`: `tokens[b]` is fed to row `b` at its own
    /// position. Returns every row's logits (and optionally routes); every row's state advances by
    /// one position. Each row gets what a single-sequence [`decode_step`](Self::decode_step) gives
    /// it (up to float summation order).
    pub fn decode_batch(&self, tokens: &[u32], batch: &mut BatchCache, routes: bool) -> Result<BatchStep> {
        self.decode_batch_with(tokens, batch, routes, self.plan().ext)
    }

    /// [`decode_batch`](Self::decode_batch) with the mlx-ext ops built in `mode` whatever the plan
    /// says (`Portable`: their plain-MLX-ops reference graphs, for tests).
    pub fn decode_batch_with(
        &self,
        tokens: &[u32],
        batch: &mut BatchCache,
        routes: bool,
        mode: ExtMode,
    ) -> Result<BatchStep> {
        if !self.supports_batching() {
            return Err(ZayaError::InvalidArgument(
                "batched decoding needs the fused f32 path (the default model options)".into(),
            ));
        }
        if tokens.len() != batch.len() || tokens.is_empty() {
            return Err(ZayaError::InvalidArgument(format!(
                "{} tokens for a batch of {} sequences",
                tokens.len(),
                batch.len()
            )));
        }
        let cfg = self.config();
        if let Some(&bad) = tokens.iter().find(|&&t| t as usize >= cfg.vocab_size) {
            return Err(ZayaError::InvalidArgument(format!(
                "token id {bad} is outside the vocabulary (size {})",
                cfg.vocab_size
            )));
        }
        if let Some(&l) = batch.lens().iter().find(|&&l| l + 1 > cfg.max_position_embeddings) {
            return Err(ZayaError::InvalidArgument(format!(
                "a sequence at position {l} has no room left in the context ({})",
                cfg.max_position_embeddings
            )));
        }
        let (logits, route_arrays) = self.build_batch_step(tokens, batch, routes, mode)?;
        let mut to_eval: Vec<&Array> = vec![&logits];
        to_eval.extend(route_arrays.iter());
        to_eval.extend(batch.arrays());
        mlx_rs::transforms::eval(to_eval)?;
        batch.advance();
        let routes = if routes {
            Some(
                route_arrays
                    .iter()
                    .map(|r| r.as_dtype(mlx_rs::Dtype::Uint32).map(|a| a.as_slice::<u32>().to_vec()))
                    .collect::<std::result::Result<Vec<_>, _>>()?,
            )
        } else {
            None
        };
        Ok(BatchStep { logits, routes })
    }

    /// The primitive nodes of one batched decode step's graph (logits and every updated state) by
    /// name, most frequent first, with the total; built on a copy of `batch`, nothing evaluated.
    pub fn decode_batch_graph(&self, tokens: &[u32], batch: &BatchCache) -> Result<(i64, Vec<(String, i64)>)> {
        let mut copy = batch.clone();
        let (logits, _) = self.build_batch_step(tokens, &mut copy, false, self.plan().ext)?;
        let mut outs: Vec<&Array> = vec![&logits];
        outs.extend(copy.arrays());
        let total = crate::ext::graph_nodes(&outs)?.nodes;
        Ok((total, crate::ext::graph_histogram(&outs)?))
    }

    /// Builds (does not evaluate) one batched decode step; the batch's arrays become its outputs.
    fn build_batch_step(
        &self,
        tokens: &[u32],
        batch: &mut BatchCache,
        routes: bool,
        mode: ExtMode,
    ) -> Result<(Array, Vec<Array>)> {
        batch.reserve_step()?;
        let n = tokens.len() as i32;
        let lens = batch.lens().to_vec();
        let plan = self.plan();
        let ids = Array::from_slice(tokens, &[n]);
        let mut h = self.model.embed_tokens.embed(&ids)?; // [N, H] f32
        let mut residual: Option<Array> = None;
        let mut router_state: Option<Array> = None;
        let mut route_arrays = Vec::new();
        for (layer, &layer_plan) in self.model.layers.iter().zip(&plan.layers) {
            let (r, x) = layer
                .res_scale
                .merge_norm(residual.as_ref(), &h, &layer.input_norm, plan.norms, mode)?;
            residual = Some(r);
            h = match (layer_plan, &layer.self_attn, &layer.zaya_block) {
                (LayerPlan::Attention { .. }, Some(attn), _) => {
                    attn.forward_batch(&x, batch.layer_mut(layer.index), &lens, mode)?
                }
                (LayerPlan::Moe { .. }, _, Some(moe)) => {
                    let step = MoeStep {
                        ext: mode,
                        ..self.moe_step(layer_plan)
                    };
                    let out = moe.forward(&x, &x, router_state.as_ref(), step)?;
                    router_state = Some(out.state);
                    if routes {
                        route_arrays.push(out.route);
                    }
                    out.y
                }
                _ => unreachable!("the plan follows the layers"),
            };
        }
        let (rs, norm) = (&self.model.res_scale, &self.model.final_norm);
        let logits = self.lm_head(&rs.merge_norm(residual.as_ref(), &h, norm, plan.norms, mode)?.1)?;
        Ok((logits, route_arrays))
    }
}
