//! The tensor inventory of a synthetic bundle and its file layout: the Zyphra-format source
//! tensors with their random initialisations, the converter's passthrough/affine/MXTQ policy and
//! output order (docs/bundle-format.md §1.3), shard assignment (a shard closes once 1e9 bytes have
//! accumulated) and the safetensors byte layout of every shard (tensors sorted by dtype, then
//! name, as the safetensors library writes them; 8-byte aligned JSON header, no `__metadata__`).
use std::collections::HashMap;

use safetensors::tensor::{Metadata, TensorInfo};
use safetensors::Dtype;

use super::spec::{SynthSpec, AFFINE_BITS};
use crate::error::{Result, ZayaError};

/// How a source tensor's random float values are drawn (all f32, before any encoding).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Init {
    /// N(0, std²): linear weights (std = 1/√in), small biases.
    Normal { std: f32 },
    /// 1 + N(0, std²): norm weights, residual scales, `temp`, `router_states_scale`.
    OnesNoise { std: f32 },
    /// U(−bound, bound): conv weights and biases, linear biases (PyTorch's default init bounds).
    Uniform { bound: f32 },
    /// N(0, std²) for the expert routes, −1 for the MOD skip route (last entry, when present).
    BalancingBiases { std: f32, skip: bool },
    /// N(0, std²) with each row of `cols` values shifted to zero mean: the router's logit layer.
    /// Its input (GELU activations) has a positive mean common to every token; with centred rows
    /// that shared part adds no fixed per-expert offset, so routes follow the token (random
    /// prompts spread over the experts, as a trained, load-balanced router's do) instead of
    /// piling onto the experts whose rows happen to have the largest sums.
    CenteredRows { std: f32, cols: usize },
}

/// One non-expert tensor of the Zyphra-format float source.
#[derive(Debug, Clone)]
pub struct SourceTensor {
    pub name: String,
    pub shape: Vec<usize>,
    pub init: Init,
}

impl SourceTensor {
    /// Rows and columns of the row-major 2-D view (1-D tensors are one row).
    pub fn rows_cols(&self) -> (usize, usize) {
        match self.shape.len() {
            0 => (1, 1),
            1 => (1, self.shape[0]),
            _ => (self.shape[0], self.shape[1..].iter().product()),
        }
    }
    /// True when the converter passes it through as f16 (`is_passthrough` or fewer than 2 dims).
    pub fn is_passthrough(&self) -> bool {
        self.shape.len() < 2 || is_passthrough_name(&self.name)
    }
}

/// The converter's passthrough rule on tensor names (`convert_zaya_common.is_passthrough`).
pub fn is_passthrough_name(name: &str) -> bool {
    const SUFFIXES: &[&str] = &[
        ".temp",
        ".bias",
        ".balancing_biases",
        ".router_states_scale",
        ".hidden_states_scale",
        ".hidden_states_bias",
        ".residual_scale",
        ".residual_bias",
    ];
    name.contains("norm")
        || name.contains(".res_scale.")
        || name.contains(".router.")
        || name.contains(".conv_qk.")
        || SUFFIXES.iter().any(|s| name.ends_with(s))
}

/// The three stacked expert projections, in the converter's order.
pub const PROJECTIONS: [&str; 3] = ["gate_proj", "up_proj", "down_proj"];

/// `model.layers.{layer}.zaya_block.experts.switch_mlp.{proj}`.
pub fn expert_base(layer: usize, proj: &str) -> String {
    format!("model.layers.{layer}.zaya_block.experts.switch_mlp.{proj}")
}

/// (out_features, in_features) of an expert projection.
pub fn expert_dims(spec: &SynthSpec, proj: &str) -> (usize, usize) {
    match proj {
        "down_proj" => (spec.hidden_size, spec.expert_intermediate_size),
        _ => (spec.expert_intermediate_size, spec.hidden_size),
    }
}

fn normal_in(fan_in: usize) -> Init {
    Init::Normal {
        std: 1.0 / (fan_in as f32).sqrt(),
    }
}

fn uniform_in(fan_in: usize) -> Init {
    Init::Uniform {
        bound: 1.0 / (fan_in as f32).sqrt(),
    }
}

/// The non-expert tensors of the Zyphra legacy float source (docs/model.md §5.1), sorted
/// by name: the order in which the converter reads a single-shard source.
pub fn source_tensors(spec: &SynthSpec) -> Vec<SourceTensor> {
    let h = spec.hidden_size;
    let r = spec.router_hidden_size;
    let c = spec.conv_channels();
    let d = spec.head_dim;
    let mut v = Vec::new();
    let mut push = |name: String, shape: Vec<usize>, init: Init| v.push(SourceTensor { name, shape, init });
    let norm = Init::OnesNoise { std: 0.05 };
    // Residual biases small beside the embedding rows (norm ≈ 0.09 against ≈ 1): larger ones add the
    // same vector to every token at every half-layer, the residual stream of random prompts becomes
    // mostly that shared vector, and every token of a step routes to the same expert (measured: 2.1
    // distinct experts per 4 tokens with std 0.02, 3.3 with 0.002, against 3.64 for uniform routing),
    // which flatters batching. A trained router spreads tokens; so must a synthetic one.
    let small_bias = Init::Normal { std: 0.002 };

    push(
        "model.embed_tokens.weight".into(),
        vec![spec.vocab_size, h],
        normal_in(h),
    );
    push("model.final_norm.weight".into(), vec![h], norm);
    for s in ["hidden_states_scale", "residual_scale"] {
        push(format!("model.res_scale.{s}"), vec![h], norm);
    }
    for s in ["hidden_states_bias", "residual_bias"] {
        push(format!("model.res_scale.{s}"), vec![h], small_bias);
    }
    for n in 0..spec.num_hidden_layers {
        let p = format!("model.layers.{n}");
        push(format!("{p}.input_norm.weight"), vec![h], norm);
        push(format!("{p}.res_scale.hidden_states_scale"), vec![h], norm);
        push(format!("{p}.res_scale.hidden_states_bias"), vec![h], small_bias);
        if n > 0 {
            push(format!("{p}.res_scale.residual_scale"), vec![h], norm);
            push(format!("{p}.res_scale.residual_bias"), vec![h], small_bias);
        }
        if n % 2 == 0 {
            let a = format!("{p}.self_attn");
            push(format!("{a}.qkv.linear_q.weight"), vec![spec.q_dim(), h], normal_in(h));
            push(format!("{a}.qkv.linear_k.weight"), vec![spec.k_dim(), h], normal_in(h));
            push(
                format!("{a}.qkv.val_proj1.weight"),
                vec![spec.k_dim() / 2, h],
                normal_in(h),
            );
            push(
                format!("{a}.qkv.val_proj2.weight"),
                vec![spec.k_dim() / 2, h],
                normal_in(h),
            );
            // PyTorch layout [out, in/groups, k]: depthwise (groups = C), then one group per head.
            push(format!("{a}.qkv.conv_qk.0.weight"), vec![c, 1, 2], uniform_in(2));
            push(format!("{a}.qkv.conv_qk.0.bias"), vec![c], uniform_in(2));
            push(format!("{a}.qkv.conv_qk.1.weight"), vec![c, d, 2], uniform_in(2 * d));
            push(format!("{a}.qkv.conv_qk.1.bias"), vec![c], uniform_in(2 * d));
            push(
                format!("{a}.qkv.temp"),
                vec![spec.num_kv_heads],
                Init::OnesNoise { std: 0.1 },
            );
            push(
                format!("{a}.o_proj.weight"),
                vec![h, spec.q_dim()],
                normal_in(spec.q_dim()),
            );
        } else {
            let q = format!("{p}.zaya_block.router");
            push(format!("{q}.down_proj.weight"), vec![r, h], normal_in(h));
            push(format!("{q}.down_proj.bias"), vec![r], uniform_in(h));
            push(format!("{q}.rmsnorm_eda.weight"), vec![r], norm);
            for i in [0, 2] {
                push(format!("{q}.router_mlp.{i}.weight"), vec![r, r], normal_in(r));
                push(format!("{q}.router_mlp.{i}.bias"), vec![r], uniform_in(r));
            }
            push(
                format!("{q}.router_mlp.4.weight"),
                vec![spec.router_logits(), r],
                Init::CenteredRows {
                    std: 1.0 / (r as f32).sqrt(),
                    cols: r,
                },
            );
            push(
                format!("{q}.balancing_biases"),
                vec![spec.router_logits()],
                Init::BalancingBiases {
                    std: 0.01,
                    skip: spec.use_mod,
                },
            );
            if n > 1 {
                push(format!("{q}.router_states_scale"), vec![r], norm);
            }
        }
    }
    v.sort_by(|a, b| a.name.cmp(&b.name));
    v
}

/// What fills one output tensor.
#[derive(Debug, Clone, PartialEq)]
pub enum Content {
    /// Source tensor `source` cast to f16.
    Passthrough {
        source: usize,
    },
    /// `.weight` / `.scales` / `.biases` of the affine encoding of source tensor `source`.
    AffineWeight {
        source: usize,
    },
    AffineScales {
        source: usize,
    },
    AffineBiases {
        source: usize,
    },
    /// `.tq_packed` / `.tq_norms` / `.tq_bits` of an expert projection.
    TqPacked {
        layer: usize,
        proj: usize,
    },
    TqNorms {
        layer: usize,
        proj: usize,
    },
    TqBits {
        layer: usize,
        proj: usize,
    },
    /// A float source tensor written as F32 (Zyphra-format source files).
    SourceF32 {
        source: usize,
    },
    /// A per-expert fused `linear_fc1` ([gate; up]) or `linear_fc2` (down), F32.
    SourceFc1 {
        layer: usize,
        expert: usize,
    },
    SourceFc2 {
        layer: usize,
        expert: usize,
    },
}

/// One tensor of an output file.
#[derive(Debug, Clone)]
pub struct OutTensor {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub content: Content,
}

impl OutTensor {
    pub fn nbytes(&self) -> usize {
        self.shape.iter().product::<usize>() * self.dtype.bitsize() / 8
    }
}

/// The bundle's model tensors in the converter's order: regular tensors (source order; affine
/// ones as weight, scales, biases), then per MoE layer gate/up/down × packed, norms, bits.
pub fn bundle_tensors(spec: &SynthSpec, sources: &[SourceTensor]) -> Vec<OutTensor> {
    let mut out = Vec::new();
    let g = spec.group_size;
    for (i, s) in sources.iter().enumerate() {
        if s.is_passthrough() {
            out.push(OutTensor {
                name: s.name.clone(),
                dtype: Dtype::F16,
                shape: s.shape.clone(),
                content: Content::Passthrough { source: i },
            });
        } else {
            let base = s.name.strip_suffix(".weight").unwrap_or(&s.name);
            let (rows, cols) = s.rows_cols();
            let per = 32 / AFFINE_BITS as usize;
            out.push(OutTensor {
                name: format!("{base}.weight"),
                dtype: Dtype::U32,
                shape: vec![rows, cols / per],
                content: Content::AffineWeight { source: i },
            });
            out.push(OutTensor {
                name: format!("{base}.scales"),
                dtype: Dtype::F16,
                shape: vec![rows, cols / g],
                content: Content::AffineScales { source: i },
            });
            out.push(OutTensor {
                name: format!("{base}.biases"),
                dtype: Dtype::F16,
                shape: vec![rows, cols / g],
                content: Content::AffineBiases { source: i },
            });
        }
    }
    let per = 32 / spec.expert_bits as usize;
    for layer in spec.moe_layers() {
        for (pi, proj) in PROJECTIONS.iter().enumerate() {
            let base = expert_base(layer, proj);
            let (o, i) = expert_dims(spec, proj);
            let e = spec.num_experts;
            out.push(OutTensor {
                name: format!("{base}.tq_packed"),
                dtype: Dtype::U32,
                shape: vec![e, o, i.div_ceil(per)],
                content: Content::TqPacked { layer, proj: pi },
            });
            out.push(OutTensor {
                name: format!("{base}.tq_norms"),
                dtype: Dtype::F16,
                shape: vec![e, o],
                content: Content::TqNorms { layer, proj: pi },
            });
            out.push(OutTensor {
                name: format!("{base}.tq_bits"),
                dtype: Dtype::U8,
                shape: vec![1],
                content: Content::TqBits { layer, proj: pi },
            });
        }
    }
    out
}

/// The Zyphra-format float source tensors (all F32): regular tensors, then per MoE layer and
/// expert `local_experts.{e}.linear_fc1.weight` [2I, H] and `linear_fc2.weight` [H, I].
pub fn source_out_tensors(spec: &SynthSpec, sources: &[SourceTensor]) -> Vec<OutTensor> {
    let mut out: Vec<OutTensor> = sources
        .iter()
        .enumerate()
        .map(|(i, s)| OutTensor {
            name: s.name.clone(),
            dtype: Dtype::F32,
            shape: s.shape.clone(),
            content: Content::SourceF32 { source: i },
        })
        .collect();
    let (h, im) = (spec.hidden_size, spec.expert_intermediate_size);
    for layer in spec.moe_layers() {
        for e in 0..spec.num_experts {
            let p = format!("model.layers.{layer}.zaya_block.experts.local_experts.{e}");
            out.push(OutTensor {
                name: format!("{p}.linear_fc1.weight"),
                dtype: Dtype::F32,
                shape: vec![2 * im, h],
                content: Content::SourceFc1 { layer, expert: e },
            });
            out.push(OutTensor {
                name: format!("{p}.linear_fc2.weight"),
                dtype: Dtype::F32,
                shape: vec![h, im],
                content: Content::SourceFc2 { layer, expert: e },
            });
        }
    }
    out
}

/// Where a tensor's bytes live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Loc {
    /// Index into [`FilePlan`]s.
    pub file: usize,
    /// Absolute byte offset of the tensor's data in its file.
    pub offset: u64,
}

/// One safetensors file: name, serialized header and tensors in file order.
#[derive(Debug, Clone)]
pub struct FilePlan {
    pub name: String,
    /// Full header block: 8-byte little-endian length + JSON padded with spaces to 8 bytes.
    pub header: Vec<u8>,
    /// Total file size.
    pub size: u64,
    /// Indices into the tensor list, in file order.
    pub tensors: Vec<usize>,
}

/// Splits `tensors` (in write order) into shards the way the converter does — append, then close
/// the shard once its tensor bytes reach `max_shard_bytes` — and lays each shard out. Returns
/// the files and every tensor's location. `name_of(i, n)` names shard i (1-based) of n.
pub fn plan_files(
    tensors: &[OutTensor],
    max_shard_bytes: u64,
    name_of: impl Fn(usize, usize) -> String,
) -> Result<(Vec<FilePlan>, Vec<Loc>)> {
    let mut groups: Vec<Vec<usize>> = Vec::new();
    let mut cur = Vec::new();
    let mut bytes = 0u64;
    for (i, t) in tensors.iter().enumerate() {
        cur.push(i);
        bytes += t.nbytes() as u64;
        if bytes >= max_shard_bytes {
            groups.push(std::mem::take(&mut cur));
            bytes = 0;
        }
    }
    if !cur.is_empty() {
        groups.push(cur);
    }
    let n = groups.len();
    let mut files = Vec::with_capacity(n);
    let mut locs = vec![Loc { file: 0, offset: 0 }; tensors.len()];
    for (fi, idx) in groups.into_iter().enumerate() {
        let (plan, offsets) = layout_file(tensors, idx, name_of(fi + 1, n))?;
        for (ti, off) in offsets {
            locs[ti] = Loc { file: fi, offset: off };
        }
        files.push(plan);
    }
    Ok((files, locs))
}

/// Lays out one safetensors file holding `idx` (sorted by dtype descending, then name, as the
/// safetensors serializer does) and returns it with each tensor's absolute data offset.
pub fn layout_file(tensors: &[OutTensor], mut idx: Vec<usize>, name: String) -> Result<(FilePlan, Vec<(usize, u64)>)> {
    idx.sort_by(|&a, &b| {
        tensors[b]
            .dtype
            .cmp(&tensors[a].dtype)
            .then_with(|| tensors[a].name.cmp(&tensors[b].name))
    });
    let mut infos = Vec::with_capacity(idx.len());
    let mut off = 0usize;
    for &i in &idx {
        let t = &tensors[i];
        let n = t.nbytes();
        infos.push((
            t.name.clone(),
            TensorInfo {
                dtype: t.dtype,
                shape: t.shape.clone(),
                data_offsets: (off, off + n),
            },
        ));
        off += n;
    }
    let meta = Metadata::new(None, infos)
        .map_err(|e| ZayaError::InvalidArgument(format!("safetensors layout of {name}: {e}")))?;
    let mut json = serde_json::to_string(&meta)
        .map_err(|e| ZayaError::InvalidArgument(format!("safetensors header of {name}: {e}")))?
        .into_bytes();
    json.resize(json.len().next_multiple_of(8), b' ');
    let mut header = (json.len() as u64).to_le_bytes().to_vec();
    header.extend_from_slice(&json);
    let base = header.len() as u64;
    let mut offsets = Vec::with_capacity(idx.len());
    let mut o = 0u64;
    for &i in &idx {
        offsets.push((i, base + o));
        o += tensors[i].nbytes() as u64;
    }
    Ok((
        FilePlan {
            name,
            size: base + off as u64,
            header,
            tensors: idx,
        },
        offsets,
    ))
}

/// Number of model keys the format predicts (docs/bundle-format.md §1.3 formula generalised):
/// 25 per attention half-layer (−2 for layer 0), 24 per MoE half-layer (−1 for layer 1),
/// 3 (embed) + 1 (final_norm) + 4 (model.res_scale).
pub fn expected_key_count(num_hidden_layers: usize) -> usize {
    let attn = num_hidden_layers.div_ceil(2);
    let moe = num_hidden_layers / 2;
    attn * 25 - 2 + moe * 24 - usize::from(moe > 0) + 8
}

/// Name → index map.
pub fn index_by_name(tensors: &[OutTensor]) -> HashMap<&str, usize> {
    tensors.iter().enumerate().map(|(i, t)| (t.name.as_str(), i)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_count_matches_the_real_bundle() {
        assert_eq!(expected_key_count(80), 1965);
        assert_eq!(expected_key_count(4), 103);
        let spec = SynthSpec::preset("zaya1-8b").unwrap();
        let t = bundle_tensors(&spec, &source_tensors(&spec));
        assert_eq!(t.len(), 1965);
        let tiny = SynthSpec::preset("tiny").unwrap();
        assert_eq!(
            bundle_tensors(&tiny, &source_tensors(&tiny)).len(),
            expected_key_count(tiny.num_hidden_layers)
        );
    }

    #[test]
    fn passthrough_policy() {
        assert!(is_passthrough_name("model.layers.0.input_norm.weight"));
        assert!(is_passthrough_name("model.layers.1.zaya_block.router.down_proj.weight"));
        assert!(is_passthrough_name("model.layers.0.self_attn.qkv.conv_qk.1.weight"));
        assert!(is_passthrough_name("model.res_scale.residual_bias"));
        assert!(!is_passthrough_name("model.layers.0.self_attn.o_proj.weight"));
        assert!(!is_passthrough_name("model.embed_tokens.weight"));
    }

    #[test]
    fn shards_close_after_the_threshold() {
        let t = |name: &str, n: usize| OutTensor {
            name: name.into(),
            dtype: Dtype::U8,
            shape: vec![n],
            content: Content::TqBits { layer: 0, proj: 0 },
        };
        let ts = vec![t("a", 6), t("b", 5), t("c", 3), t("d", 10), t("e", 1)];
        let (files, locs) = plan_files(&ts, 10, |i, n| format!("s{i}of{n}")).unwrap();
        assert_eq!(files.iter().map(|f| f.tensors.len()).collect::<Vec<_>>(), vec![2, 2, 1]);
        assert_eq!(files[2].name, "s3of3");
        assert_eq!(locs[4].file, 2);
        for f in &files {
            assert_eq!((f.header.len() - 8) % 8, 0);
        }
    }
}
