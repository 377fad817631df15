//! Bundle loading: finds the files of a ZAYA1 bundle, memory-maps its safetensors shards into MLX
//! arrays, maps every supported layout (the legacy 80-half-layer JANGTQ/MXFP4/affine bundles, the
//! Zyphra legacy float checkpoint, the upstream transformers 40-block layout) onto one canonical
//! weight set, and validates it before any compute.
//!
//! Canonical names are the legacy bundle names (`model.layers.{n}.self_attn.qkv.linear_q.weight`,
//! `model.layers.{n}.zaya_block.experts.switch_mlp.gate_proj.tq_packed`, ...), with conv weights in
//! MLX layout `[out, k, in/groups]` and no `lm_head` when embeddings are tied.
use std::collections::BTreeMap;
use std::path::PathBuf;

use mlx_rs::Array;

use crate::config::{JangConfig, ZayaConfig};
use crate::quant::WeightFormat;

/// The canonical in-memory weight set the model consumes.
#[derive(Default)]
pub struct CanonicalWeights {
    /// Tensors by canonical name (module base + `.weight`, `.scales`, `.biases`, `.bias`,
    /// `.tq_packed`, `.tq_norms`, or a parameter name such as `.temp`).
    pub tensors: BTreeMap<String, Array>,
    /// Storage format of every linear / stacked-expert module, keyed by module base
    /// (e.g. `model.layers.0.self_attn.qkv.linear_q`, `model.embed_tokens`,
    /// `model.layers.1.zaya_block.experts.switch_mlp.gate_proj`).
    pub formats: BTreeMap<String, WeightFormat>,
    /// TurboQuant runtime arrays from the sidecar, by their sidecar names
    /// (`codebook.{in}.{bits}` f32 [2^bits], `signs.{in}.{seed}` f32 [in]).
    pub tq_runtime: BTreeMap<String, Array>,
}

/// Which on-disk layout a bundle uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// Legacy 80-half-layer names with pre-stacked `switch_mlp` experts (OsaurusAI/JANG bundles).
    LegacyStacked,
    /// Zyphra legacy float checkpoint with per-expert `local_experts.{e}.linear_fc1/fc2`.
    LegacyPerExpert,
    /// Upstream transformers 40-block layout.
    Upstream,
}

/// An opened, validated bundle.
pub struct Bundle {
    pub dir: PathBuf,
    pub config: ZayaConfig,
    pub jang: Option<JangConfig>,
    pub layout: Layout,
    pub weights: CanonicalWeights,
}
