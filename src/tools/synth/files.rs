//! The JSON side files of a synthetic bundle: the Zyphra legacy source `config.json`
//! (docs/model.md §1.1 key set), the converted `config.json` and `jang_config.json`
//! exactly as `jang_tools.convert_zaya_jangtq` writes them (docs/bundle-format.md §1.1–§1.2),
//! `generation_config.json` and the index.
use std::collections::BTreeMap;
use std::path::Path;

use serde_json::{json, Value};

use super::plan::{expert_base, expert_dims, PROJECTIONS};
use super::spec::SynthSpec;
use crate::error::{Result, ZayaError};

/// `capabilities` of the converter (`CAPABILITIES` in `convert_zaya_common.py`).
pub fn capabilities() -> Value {
    json!({
        "reasoning_parser": "qwen3",
        "tool_parser": "zaya_xml",
        "think_in_template": false,
        "supports_tools": true,
        "supports_thinking": true,
        "family": "zaya",
        "modality": "text",
        "cache_type": "hybrid",
    })
}

/// The descriptive `mxtq_bits` map.
pub fn mxtq_bits(spec: &SynthSpec) -> Value {
    json!({
        "routed_expert": spec.expert_bits,
        "attention": 8,
        "router": 16,
        "embed_tokens": 8,
        "lm_head": 8,
        "cca_conv": 16,
        "norms_residual": 16,
    })
}

/// The source (Zyphra legacy) `config.json`: the published key set with the spec's dimensions,
/// plus `cca_num_q_heads` (older revision; read by `jang_tools.zaya.model.ModelArgs`).
pub fn source_config(spec: &SynthSpec) -> Value {
    let mut v = json!({
        "architectures": ["ZayaForCausalLM"],
        "model_type": "zaya",
        "dtype": "bfloat16",
        "hidden_size": spec.hidden_size,
        "num_hidden_layers": spec.num_hidden_layers,
        "num_attention_heads": spec.num_q_heads,
        "cca_num_q_heads": spec.num_q_heads,
        "num_key_value_heads": spec.num_kv_heads,
        "num_query_groups": spec.num_kv_heads,
        "head_dim": spec.head_dim,
        "kv_channels": spec.head_dim,
        "partial_rotary_factor": spec.partial_rotary_factor,
        "rope_theta": spec.rope_theta,
        "rope_scaling": false,
        "max_position_embeddings": spec.max_position_embeddings,
        "sliding_window": null,
    });
    let rest = json!({
        "cca": true,
        "num_experts": spec.num_experts,
        "moe_router_topk": 1,
        "ffn_hidden_size": 2 * spec.expert_intermediate_size,
        "activation_func": "swiglu",
        "gated_linear_unit": true,
        "add_bias_linear": false,
        "zaya_mlp_expansion": spec.router_hidden_size,
        "zaya_use_mod": spec.use_mod,
        "zaya_use_eda": spec.use_eda,
        "normalization": "RMSNorm",
        "norm_epsilon": spec.norm_epsilon,
        "scale_residual_merge": true,
        "residual_in_fp32": true,
        "attention_bias": false,
        "lm_head_bias": false,
        "vocab_size": spec.vocab_size,
        "bos_token_id": 2,
        "eos_token_id": 106,
        "pad_token_id": 0,
        "mamba_cache_dtype": "float32",
        "apply_rope_fusion": true,
        "bias_activation_fusion": true,
        "fused_add_norm": false,
        "activation_func_fp8_input_store": false,
        "use_cache": true,
        "attention_dropout": 0.0,
    });
    let o = v.as_object_mut().expect("object");
    for (k, x) in rest.as_object().expect("object") {
        o.insert(k.clone(), x.clone());
    }
    v
}

/// The converted bundle's `config.json`: the source config with `quantization_config` dropped
/// and the converter's keys added.
pub fn bundle_config(spec: &SynthSpec) -> Value {
    let mut v = source_config(spec);
    let o = v.as_object_mut().expect("object");
    o.remove("quantization_config");
    o.insert("weight_format".into(), json!("mxtq"));
    o.insert("zaya_expert_layout".into(), json!("split_switch_mlp"));
    o.entry("tie_word_embeddings").or_insert(json!(true));
    o.insert("mxtq_bits".into(), mxtq_bits(spec));
    o.insert("mxtq_seed".into(), json!(spec.mxtq_seed));
    o.insert(
        "quantization".into(),
        json!({
            "bits": 8,
            "group_size": spec.group_size,
            "mode": "affine",
            "routed_expert_bits": spec.expert_bits,
            "mxtq_bits": mxtq_bits(spec),
            "expert_layout": "split_switch_mlp",
        }),
    );
    o.insert("capabilities".into(), capabilities());
    v
}

/// `jang_config.json`, with `tq_in_features` for every expert projection.
pub fn jang_config(spec: &SynthSpec) -> Value {
    let mut tq = serde_json::Map::new();
    for layer in spec.moe_layers() {
        for proj in PROJECTIONS {
            tq.insert(expert_base(layer, proj), json!(expert_dims(spec, proj).1));
        }
    }
    json!({
        "version": 2,
        "weight_format": "mxtq",
        "profile": spec.profile(),
        "cache_subtype": "zaya_cca",
        "source_model": {"name": "ZAYA1-8B", "org": "Zyphra", "architecture": "zaya"},
        "expert_layout": "split_switch_mlp",
        "mxtq_seed": spec.mxtq_seed,
        "mxtq_bits": mxtq_bits(spec),
        "tq_in_features": tq,
        "quantization": {"method": "affine+mxtq", "group_size": spec.group_size, "bits_default": spec.expert_bits},
        "capabilities": capabilities(),
    })
}

/// `generation_config.json`: BOS 2, stop on `<|im_end|>` (106) and `<eos>` (1), pad 0.
pub fn generation_config() -> Value {
    json!({"bos_token_id": 2, "eos_token_id": [106, 1], "pad_token_id": 0})
}

/// `model.safetensors.index.json`.
pub fn index_json(format: Option<&str>, total_size: u64, weight_map: &BTreeMap<String, String>) -> Value {
    let mut meta = serde_json::Map::new();
    if let Some(f) = format {
        meta.insert("format".into(), json!(f));
    }
    meta.insert("total_size".into(), json!(total_size));
    json!({"metadata": meta, "weight_map": weight_map})
}

/// Writes `value` as 2-space-indented JSON (like Python's `json.dump(indent=2)`).
pub fn write_json(path: &Path, value: &Value) -> Result<()> {
    let text = serde_json::to_string_pretty(value)
        .map_err(|e| ZayaError::InvalidArgument(format!("{}: {e}", path.display())))?;
    write_text(path, &text)
}

/// Writes a text file (atomically: a temporary file renamed into place).
pub fn write_text(path: &Path, text: &str) -> Result<()> {
    crate::files::write_atomic(path, |tmp| std::fs::write(tmp, text).map_err(|e| ZayaError::io(tmp, e)))
}
