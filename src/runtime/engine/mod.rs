//! Continuous batching: many sequences decoding together through the fused kernels.
//!
//! - [`BatchCache`] (`batch_cache.rs`): the model state of a ragged batch — one KV storage per
//!   attention layer with a row per sequence, each row its own length and RoPE position, plus the
//!   rows' conv states and `prev_hs`; sequences join from and leave to single-sequence caches.
//! - [`ZayaModel::decode_batch`](crate::model::ZayaModel::decode_batch) (`step.rs`): one decode
//!   step of every row, each weight read once for all rows.
//! - [`Engine`] (`scheduler.rs`): the request queue, chunked prefill of joining requests,
//!   per-request sampling and stop conditions, cancellation.
//! - [`batch_generate`]: a list of prompts through one engine (like mlx-lm's `batch_generate`).
//!
//! Every row of a batch computes what the same sequence computes alone (tests/batching.rs checks
//! logits and greedy ids against single-sequence decoding); only float summation order differs.
mod batch_cache;
mod scheduler;
mod step;

pub use batch_cache::BatchCache;
pub(crate) use batch_cache::BatchLayer;
pub use scheduler::{Engine, EngineOptions, EngineRequest, SeqEvent, SeqId, SeqStats, TokenLogprobs};
pub use step::BatchStep;

use crate::error::Result;
use crate::runtime::{FinishReason, GenParams, Zaya};

/// One prompt's result from [`batch_generate`].
#[derive(Debug)]
pub struct BatchOutput {
    /// Generated token ids (EOS included when it ended the generation).
    pub tokens: Vec<u32>,
    /// The streamed text (empty without a tokenizer).
    pub text: String,
    /// Why it ended (`None` when it failed).
    pub finish: Option<FinishReason>,
    /// Statistics (`None` when it failed).
    pub stats: Option<SeqStats>,
    /// The error that ended it early, if any.
    pub error: Option<crate::ZayaError>,
}

/// Generates a continuation of every prompt (token ids) with `params`, decoding up to
/// `opts.max_batch` of them together. Results are in prompt order; a prompt that fails carries its
/// error and does not affect the others.
pub fn batch_generate(
    zaya: &Zaya,
    prompts: &[Vec<u32>],
    params: &GenParams,
    opts: EngineOptions,
) -> Result<Vec<BatchOutput>> {
    let mut engine = Engine::new(zaya, opts)?;
    let mut outs: Vec<BatchOutput> = prompts
        .iter()
        .map(|_| BatchOutput {
            tokens: Vec::new(),
            text: String::new(),
            finish: None,
            stats: None,
            error: None,
        })
        .collect();
    let mut index = std::collections::HashMap::new();
    for (i, p) in prompts.iter().enumerate() {
        match engine.submit(p.clone(), params) {
            Ok(id) => {
                index.insert(id, i);
            }
            Err(e) => outs[i].error = Some(e),
        }
    }
    engine.run_to_completion(|id, ev| {
        let o = &mut outs[index[&id]];
        match ev {
            SeqEvent::Token { token: t, .. } => {
                o.tokens.push(t.id);
                o.text.push_str(&t.text);
                if t.finish.is_some() {
                    o.finish = t.finish;
                }
            }
            SeqEvent::Finished { stats, .. } => o.stats = Some(stats),
            SeqEvent::Snapshot { .. } => {}
            SeqEvent::Failed(e) => o.error = Some(e),
        }
    });
    Ok(outs)
}
