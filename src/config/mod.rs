//! Model configuration: parses `config.json` of every published ZAYA1 revision (the legacy
//! 80-half-layer configs with `cca_num_q_heads` or `num_attention_heads`, and the upstream
//! transformers 40-block config), `jang_config.json` and `generation_config.json` into one
//! normalized [`ZayaConfig`]. Inconsistent or unknown configs are typed errors naming the field.
//!
//! config.json itself is parsed here; its `quantization` block in `quantization`, the side files in
//! `jang` and `generation`, and the typed JSON field access they share in `fields`.
use std::path::Path;

use serde_json::Value;

use crate::error::{Result, ZayaError};

mod fields;
mod generation;
mod jang;
mod quantization;

pub(crate) use fields::Fields;
pub use generation::GenerationConfig;
pub use jang::JangConfig;
pub use quantization::{QuantOverride, QuantizationConfig};

/// End-of-turn token id of the ZAYA tokenizer (`<|im_end|>` / `<end_of_turn>`).
pub const END_OF_TURN_ID: u32 = 106;

/// Which published config revision the file follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigRevision {
    /// Legacy Zyphra/Megatron config: `num_hidden_layers` counts half-layers (80 for ZAYA1-8B).
    Legacy,
    /// Upstream transformers config: 40 `hybrid` blocks (`layer_types`), `num_experts_per_tok`...
    Upstream,
}

/// Normalized ZAYA configuration. Layer counts are always in **half-layers** (even = CCA
/// attention, odd = MoE), whatever the file's revision.
#[derive(Debug, Clone)]
pub struct ZayaConfig {
    pub revision: ConfigRevision,
    pub hidden_size: usize,
    /// Half-layers (80 for ZAYA1-8B).
    pub num_hidden_layers: usize,
    /// CCA query heads (8).
    pub num_q_heads: usize,
    /// CCA key/value heads (2).
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub partial_rotary_factor: f32,
    pub rope_theta: f32,
    pub max_position_embeddings: usize,
    /// Kernel sizes of the two CCA convs (2, 2).
    pub cca_time0: usize,
    pub cca_time1: usize,
    /// Raw learned key temperature (false) or exp(clip(temp)) (true).
    pub clamp_temp: bool,
    pub num_experts: usize,
    pub top_k: usize,
    /// Per-expert SwiGLU intermediate width (`ffn_hidden_size / 2` in the legacy config).
    pub expert_intermediate_size: usize,
    /// Router MLP width (`zaya_mlp_expansion`).
    pub router_hidden_size: usize,
    /// 17th router logit = MOD skip route.
    pub use_mod: bool,
    /// Depth-carried router state.
    pub use_eda: bool,
    pub norm_eps: f32,
    pub vocab_size: usize,
    pub tie_word_embeddings: bool,
    pub bos_token_id: Option<u32>,
    /// All end-of-sequence ids (config.json merged with generation_config.json), deduplicated.
    pub eos_token_ids: Vec<u32>,
    pub pad_token_id: Option<u32>,
    /// `weight_format` ("mxtq" for JANGTQ bundles).
    pub weight_format: Option<String>,
    /// `mxtq_seed` (42) of the Hadamard sign vector.
    pub mxtq_seed: Option<u64>,
    pub quantization: Option<QuantizationConfig>,
    /// The file as parsed, for fields not modelled here.
    pub raw: Value,
}

impl ZayaConfig {
    /// Number of CCA attention half-layers.
    pub fn num_attention_layers(&self) -> usize {
        self.num_hidden_layers.div_ceil(2)
    }
    /// Number of MoE half-layers.
    pub fn num_moe_layers(&self) -> usize {
        self.num_hidden_layers / 2
    }
    /// Query latent width (Hq · D).
    pub fn q_dim(&self) -> usize {
        self.num_q_heads * self.head_dim
    }
    /// Key latent width (Hk · D).
    pub fn k_dim(&self) -> usize {
        self.num_kv_heads * self.head_dim
    }
    /// Channels through the CCA convs (q ‖ k).
    pub fn conv_channels(&self) -> usize {
        self.q_dim() + self.k_dim()
    }
    /// Frames carried in `conv_state`: (K0-1)+(K1-1).
    pub fn conv_state_len(&self) -> usize {
        self.cca_time0.saturating_sub(1) + self.cca_time1.saturating_sub(1)
    }
    /// Dimensions RoPE rotates per head.
    pub fn rotary_dim(&self) -> usize {
        ((self.head_dim as f32 * self.partial_rotary_factor) as usize).min(self.head_dim)
    }
    /// Router logits (experts + skip route).
    pub fn num_router_logits(&self) -> usize {
        self.num_experts + usize::from(self.use_mod)
    }

    /// Reads `dir/config.json`, merging EOS ids from `dir/generation_config.json` when present.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let path = dir.join("config.json");
        if !dir.is_dir() {
            return Err(ZayaError::io(
                dir,
                std::io::Error::new(std::io::ErrorKind::NotFound, "no such bundle directory"),
            ));
        }
        if !path.exists() {
            return Err(ZayaError::io(
                &path,
                std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "missing: this directory is not a model bundle (no config.json)",
                ),
            ));
        }
        let text = crate::files::read_text_limited(&path, crate::files::MAX_CONFIG_BYTES)?;
        let mut cfg = Self::from_json_str(&text, "config.json")?;
        let gen_path = dir.join("generation_config.json");
        if gen_path.exists() {
            let g = GenerationConfig::from_file(&gen_path)?;
            if let Some(e) = g.eos_token_ids.iter().find(|&&e| e as usize >= cfg.vocab_size) {
                return Err(ZayaError::config(
                    "generation_config.json",
                    "eos_token_id",
                    format!("{e} ≥ vocab_size {}", cfg.vocab_size),
                ));
            }
            cfg.merge_eos(&g.eos_token_ids);
        }
        Ok(cfg)
    }

    /// Adds EOS ids (deduplicated, order kept).
    pub fn merge_eos(&mut self, ids: &[u32]) {
        for &id in ids {
            if !self.eos_token_ids.contains(&id) {
                self.eos_token_ids.push(id);
            }
        }
    }

    /// Parses a config.json text; `file` names it in errors.
    pub fn from_json_str(text: &str, file: &str) -> Result<Self> {
        let raw: Value = serde_json::from_str(text)
            .map_err(|e| ZayaError::config(file, "<json>", format!("not valid JSON: {e}")))?;
        Self::from_value(raw, file)
    }

    /// Parses a config.json value; `file` names it in errors.
    pub fn from_value(raw: Value, file: &str) -> Result<Self> {
        let obj = raw
            .as_object()
            .ok_or_else(|| ZayaError::config(file, "<root>", "config must be a JSON object"))?;
        let f = Fields { obj, file };
        let model_type = f
            .str("model_type")?
            .ok_or_else(|| ZayaError::config(file, "model_type", "missing"))?;
        if model_type != "zaya" {
            return Err(ZayaError::UnsupportedModel {
                file: file.to_string(),
                msg: format!("model_type `{model_type}` is not `zaya` (zaya-mlx runs ZAYA1 models only)"),
            });
        }
        let upstream = obj.contains_key("layer_types") || obj.contains_key("num_experts_per_tok");
        let revision = if upstream {
            ConfigRevision::Upstream
        } else {
            ConfigRevision::Legacy
        };

        let hidden_size = f.req_usize("hidden_size")?;
        let blocks_or_half = f.req_usize("num_hidden_layers")?;
        let num_hidden_layers = match revision {
            ConfigRevision::Legacy => blocks_or_half,
            ConfigRevision::Upstream => {
                if let Some(types) = obj.get("layer_types").and_then(Value::as_array) {
                    if types.len() != blocks_or_half {
                        return Err(ZayaError::config(
                            file,
                            "layer_types",
                            format!("has {} entries but num_hidden_layers is {blocks_or_half}", types.len()),
                        ));
                    }
                    if let Some(bad) = types.iter().find(|t| t.as_str() != Some("hybrid")) {
                        return Err(ZayaError::config(
                            file,
                            "layer_types",
                            format!("unsupported layer type {bad}"),
                        ));
                    }
                }
                blocks_or_half * 2
            }
        };

        // q heads: cca_num_q_heads (older legacy revision, where num_attention_heads = 16 is the
        // "full" head count) else num_attention_heads.
        let num_q_heads = match f.usize("cca_num_q_heads")? {
            Some(v) => v,
            None => f.req_usize("num_attention_heads")?,
        };
        let num_kv_heads = match (f.usize("num_key_value_heads")?, f.usize("num_query_groups")?) {
            (Some(a), Some(b)) if a != b => {
                return Err(ZayaError::config(
                    file,
                    "num_query_groups",
                    format!("{b} differs from num_key_value_heads {a}; CCA needs them equal"),
                ))
            }
            (Some(a), _) | (None, Some(a)) => a,
            (None, None) => return Err(ZayaError::config(file, "num_key_value_heads", "missing")),
        };
        let head_dim = match (f.usize("head_dim")?, f.usize("kv_channels")?) {
            (Some(a), Some(b)) if a != b => {
                return Err(ZayaError::config(
                    file,
                    "kv_channels",
                    format!("{b} differs from head_dim {a}"),
                ))
            }
            (Some(a), _) | (None, Some(a)) => a,
            (None, None) => 128,
        };

        // rope: legacy top-level keys, or upstream rope_parameters {"hybrid": {...}} / flat
        let mut rope_theta = f.f64("rope_theta")?;
        let mut partial = f.f64("partial_rotary_factor")?;
        if let Some(rp) = obj.get("rope_parameters").and_then(Value::as_object) {
            let inner = rp.get("hybrid").and_then(Value::as_object).unwrap_or(rp);
            let rf = Fields { obj: inner, file };
            rope_theta = rope_theta.or(rf.f64("rope_theta")?);
            partial = partial.or(rf.f64("partial_rotary_factor")?);
        }
        if let Some(rs) = obj.get("rope_scaling") {
            let none = rs.is_null() || rs == &Value::Bool(false);
            let default_type = rs
                .get("rope_type")
                .or_else(|| rs.get("type"))
                .and_then(Value::as_str)
                .is_some_and(|t| t == "default");
            if !none && !default_type {
                return Err(ZayaError::config(
                    file,
                    "rope_scaling",
                    format!("unsupported RoPE scaling {rs}"),
                ));
            }
        }

        let num_experts = f.req_usize("num_experts")?;
        let top_k = match revision {
            ConfigRevision::Legacy => f.usize("moe_router_topk")?.unwrap_or(1),
            ConfigRevision::Upstream => f
                .usize("num_experts_per_tok")?
                .or(f.usize("moe_router_topk")?)
                .unwrap_or(1),
        };
        let expert_intermediate_size = match f.usize("moe_intermediate_size")? {
            Some(v) => v,
            None => {
                let ffn = f.req_usize("ffn_hidden_size")?;
                if !ffn.is_multiple_of(2) {
                    return Err(ZayaError::config(
                        file,
                        "ffn_hidden_size",
                        format!("{ffn} is odd; it is the fused gate+up width"),
                    ));
                }
                ffn / 2
            }
        };
        let router_hidden_size = match f.usize("zaya_mlp_expansion")? {
            Some(v) => v,
            None => f.usize("router_hidden_size")?.unwrap_or(256),
        };
        let norm_eps = f.f64("norm_epsilon")?.or(f.f64("rms_norm_eps")?).unwrap_or(1e-5) as f32;

        let cfg = ZayaConfig {
            revision,
            hidden_size,
            num_hidden_layers,
            num_q_heads,
            num_kv_heads,
            head_dim,
            partial_rotary_factor: partial.unwrap_or(0.5) as f32,
            rope_theta: rope_theta.unwrap_or(5_000_000.0) as f32,
            max_position_embeddings: f.usize("max_position_embeddings")?.unwrap_or(131_072),
            cca_time0: f.usize("cca_time0")?.unwrap_or(2),
            cca_time1: f.usize("cca_time1")?.unwrap_or(2),
            clamp_temp: f.bool("clamp_temp")?.unwrap_or(false),
            num_experts,
            top_k,
            expert_intermediate_size,
            router_hidden_size,
            use_mod: f.bool("zaya_use_mod")?.unwrap_or(true),
            use_eda: f.bool("zaya_use_eda")?.unwrap_or(true),
            norm_eps,
            vocab_size: f.req_usize("vocab_size")?,
            tie_word_embeddings: f.bool("tie_word_embeddings")?.unwrap_or(true),
            bos_token_id: f.u32("bos_token_id")?,
            eos_token_ids: f.ids("eos_token_id")?,
            pad_token_id: f.u32("pad_token_id")?,
            weight_format: f.str("weight_format")?,
            mxtq_seed: f.usize("mxtq_seed")?.map(|v| v as u64),
            quantization: match obj.get("quantization") {
                Some(q) if !q.is_null() => Some(QuantizationConfig::from_value(q, file)?),
                _ => None,
            },
            raw: raw.clone(),
        };
        cfg.check(file)?;
        Ok(cfg)
    }

    fn check(&self, file: &str) -> Result<()> {
        let err = |field: &str, msg: String| Err(ZayaError::config(file, field, msg));
        if self.hidden_size == 0 {
            return err("hidden_size", "must be positive".into());
        }
        if self.num_hidden_layers == 0 {
            return err("num_hidden_layers", "must be positive".into());
        }
        // Upper bounds, checked before anything is sized from them (ZAYA1-8B: hidden 2048, 80
        // half-layers, 8/2 heads of 128, 16 experts, vocab 262,272, context 131,072): far above any
        // real model, small enough that no size computed from them overflows or allocates wildly.
        let q_field = if self.raw.get("cca_num_q_heads").is_some() {
            "cca_num_q_heads"
        } else {
            "num_attention_heads"
        };
        check_dims(
            file,
            &[
                ("hidden_size", self.hidden_size),
                ("num_hidden_layers", self.num_hidden_layers),
                (q_field, self.num_q_heads),
                ("num_key_value_heads", self.num_kv_heads),
                ("head_dim", self.head_dim),
                ("num_experts", self.num_experts),
                ("ffn_hidden_size", self.expert_intermediate_size),
                ("zaya_mlp_expansion", self.router_hidden_size),
                ("vocab_size", self.vocab_size),
                ("max_position_embeddings", self.max_position_embeddings),
                ("cca_time0", self.cca_time0),
                ("cca_time1", self.cca_time1),
            ],
        )?;
        if self.max_position_embeddings == 0 {
            return err("max_position_embeddings", "must be positive".into());
        }
        if self.num_q_heads == 0 || self.num_kv_heads == 0 || !self.num_q_heads.is_multiple_of(self.num_kv_heads) {
            return err(
                if self.num_q_heads == 0 {
                    q_field
                } else {
                    "num_key_value_heads"
                },
                format!(
                    "{} query heads must be a positive multiple of {} KV heads",
                    self.num_q_heads, self.num_kv_heads
                ),
            );
        }
        if self.head_dim == 0 || !self.head_dim.is_multiple_of(2) {
            return err("head_dim", format!("{} must be positive and even", self.head_dim));
        }
        if !self.k_dim().is_multiple_of(2) {
            return err(
                "num_key_value_heads",
                "Hk·D must be even (the value is split in two halves)".into(),
            );
        }
        if !self.rotary_dim().is_multiple_of(2) {
            return err(
                "partial_rotary_factor",
                format!("rotary dim {} must be even", self.rotary_dim()),
            );
        }
        if !self.conv_channels().is_multiple_of(self.head_dim) {
            return err("head_dim", "conv channels must split into head-sized groups".into());
        }
        if self.cca_time0 == 0 || self.cca_time1 == 0 {
            return err("cca_time0", "CCA conv kernel sizes must be ≥ 1".into());
        }
        if self.num_experts == 0 {
            return err("num_experts", "must be positive".into());
        }
        if self.top_k != 1 {
            return err(
                "moe_router_topk",
                format!("{} is not supported: ZAYA routes top-1", self.top_k),
            );
        }
        if self.vocab_size == 0 {
            return err("vocab_size", "must be positive".into());
        }
        if self.norm_eps.is_nan() || self.norm_eps <= 0.0 || self.norm_eps >= 1.0 {
            return err("norm_epsilon", format!("{} is out of range", self.norm_eps));
        }
        if self.rope_theta.is_nan() || self.rope_theta <= 0.0 {
            return err("rope_theta", format!("{} must be positive", self.rope_theta));
        }
        if let Some(b) = self.bos_token_id {
            if b as usize >= self.vocab_size {
                return err("bos_token_id", format!("{b} ≥ vocab_size {}", self.vocab_size));
            }
        }
        if let Some(e) = self.eos_token_ids.iter().find(|&&e| e as usize >= self.vocab_size) {
            return err("eos_token_id", format!("{e} ≥ vocab_size {}", self.vocab_size));
        }
        if let Some(p) = self.pad_token_id.filter(|&p| p as usize >= self.vocab_size) {
            return err("pad_token_id", format!("{p} ≥ vocab_size {}", self.vocab_size));
        }
        if !(0.0..=1.0).contains(&self.partial_rotary_factor) {
            return err(
                "partial_rotary_factor",
                format!("{} is outside [0, 1]", self.partial_rotary_factor),
            );
        }
        const KNOWN_FORMATS: [&str; 9] = [
            "mxtq",
            "affine",
            "jang_affine",
            "mxfp4",
            "mxfp8",
            "float16",
            "bfloat16",
            "float32",
            "float",
        ];
        if let Some(w) = &self.weight_format {
            if !KNOWN_FORMATS.contains(&w.as_str()) {
                return err(
                    "weight_format",
                    format!(
                        "`{w}` is not a weight format zaya-mlx knows ({})",
                        KNOWN_FORMATS.join(", ")
                    ),
                );
            }
        }
        Ok(())
    }
}

/// The largest value each dimension may take (ZAYA1-8B: hidden 2048, 80 half-layers, 8/2 heads of
/// 128, 16 experts, vocab 262,272, context 131,072): far above any real model, small enough that no
/// size computed from them overflows or allocates wildly.
pub fn max_dim(field: &str) -> usize {
    match field {
        "hidden_size" | "zaya_mlp_expansion" => 1 << 16,
        "num_hidden_layers" | "num_attention_heads" | "cca_num_q_heads" | "num_key_value_heads" | "num_experts" => {
            1 << 10
        }
        "head_dim" => 1 << 12,
        "ffn_hidden_size" => 1 << 18,
        "vocab_size" | "max_position_embeddings" => 1 << 24,
        "cca_time0" | "cca_time1" => 64,
        _ => usize::MAX,
    }
}

/// Checks `(field, value)` pairs against [`max_dim`] (before anything is sized from them).
pub fn check_dims(file: &str, dims: &[(&str, usize)]) -> Result<()> {
    for &(field, v) in dims {
        let max = max_dim(field);
        if v > max {
            return Err(ZayaError::config(
                file,
                field,
                format!("{v} is larger than any supported model (at most {max})"),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn legacy() -> Value {
        // The published legacy config's key set (docs/model.md §1.1).
        serde_json::json!({
            "architectures": ["ZayaForCausalLM"], "model_type": "zaya", "hidden_size": 2048,
            "num_hidden_layers": 80, "num_attention_heads": 8, "num_key_value_heads": 2,
            "num_query_groups": 2, "head_dim": 128, "kv_channels": 128, "partial_rotary_factor": 0.5,
            "rope_theta": 5000000, "rope_scaling": false, "max_position_embeddings": 131072,
            "num_experts": 16, "moe_router_topk": 1, "ffn_hidden_size": 4096, "zaya_mlp_expansion": 256,
            "zaya_use_mod": true, "zaya_use_eda": true, "norm_epsilon": 1e-5, "vocab_size": 262272,
            "bos_token_id": 2, "eos_token_id": 106, "pad_token_id": 0, "sliding_window": null
        })
    }

    #[test]
    fn legacy_revision() {
        let c = ZayaConfig::from_value(legacy(), "config.json").unwrap();
        assert_eq!(c.revision, ConfigRevision::Legacy);
        assert_eq!(
            (c.num_hidden_layers, c.num_q_heads, c.num_kv_heads, c.head_dim),
            (80, 8, 2, 128)
        );
        assert_eq!(
            (c.expert_intermediate_size, c.router_hidden_size, c.rotary_dim()),
            (2048, 256, 64)
        );
        assert_eq!(c.conv_channels(), 1280);
        assert_eq!(c.conv_state_len(), 2);
        assert!(c.tie_word_embeddings);
        assert_eq!(c.eos_token_ids, vec![106]);
    }

    #[test]
    fn older_revision_uses_cca_num_q_heads() {
        let mut v = legacy();
        v["num_attention_heads"] = 16.into();
        v["cca_num_q_heads"] = 8.into();
        v.as_object_mut().unwrap().remove("head_dim");
        let c = ZayaConfig::from_value(v, "config.json").unwrap();
        assert_eq!((c.num_q_heads, c.head_dim), (8, 128));
    }

    #[test]
    fn upstream_revision() {
        let v = serde_json::json!({
            "model_type": "zaya", "hidden_size": 2048, "num_hidden_layers": 40,
            "layer_types": vec!["hybrid"; 40], "num_attention_heads": 8, "num_key_value_heads": 2,
            "head_dim": 128, "moe_intermediate_size": 2048, "num_experts": 16, "num_experts_per_tok": 1,
            "router_hidden_size": 256, "rms_norm_eps": 1e-5,
            "rope_parameters": {"hybrid": {"rope_type": "default", "rope_theta": 5e6, "partial_rotary_factor": 0.5}},
            "cca_time0": 2, "cca_time1": 2, "tie_word_embeddings": true, "vocab_size": 262272,
            "bos_token_id": 2, "eos_token_id": 106, "pad_token_id": 0
        });
        let c = ZayaConfig::from_value(v, "config.json").unwrap();
        assert_eq!(c.revision, ConfigRevision::Upstream);
        assert_eq!(c.num_hidden_layers, 80);
        assert_eq!(c.expert_intermediate_size, 2048);
        assert_eq!(c.rope_theta, 5e6);
    }

    #[test]
    fn unknown_model_type_is_typed() {
        let mut v = legacy();
        v["model_type"] = "llama".into();
        let e = ZayaConfig::from_value(v, "config.json").unwrap_err();
        assert!(matches!(e, ZayaError::UnsupportedModel { .. }), "{e}");
        assert!(e.to_string().contains("llama"));
    }

    #[test]
    fn inconsistent_fields_name_the_field() {
        let mut v = legacy();
        v["num_query_groups"] = 4.into();
        let e = ZayaConfig::from_value(v, "config.json").unwrap_err().to_string();
        assert!(e.contains("num_query_groups"), "{e}");
        let mut v = legacy();
        v["hidden_size"] = "big".into();
        let e = ZayaConfig::from_value(v, "config.json").unwrap_err().to_string();
        assert!(e.contains("hidden_size"), "{e}");
        let mut v = legacy();
        v["moe_router_topk"] = 2.into();
        let e = ZayaConfig::from_value(v, "config.json").unwrap_err().to_string();
        assert!(e.contains("moe_router_topk"), "{e}");
    }

    #[test]
    fn quantization_block_skips_non_module_keys() {
        let mut v = legacy();
        v["quantization"] = serde_json::json!({
            "bits": 8, "group_size": 32, "mode": "affine", "routed_expert_bits": 4,
            "mxtq_bits": {"routed_expert": 4}, "expert_layout": "split_switch_mlp",
            "model.embed_tokens": {"bits": 8, "group_size": 64}
        });
        let c = ZayaConfig::from_value(v, "config.json").unwrap();
        let q = c.quantization.unwrap();
        assert_eq!(
            (q.bits, q.group_size, q.routed_expert_bits),
            (Some(8), Some(32), Some(4))
        );
        assert_eq!(q.overrides.len(), 1);
        assert_eq!(q.overrides["model.embed_tokens"].group_size, Some(64));
        // JANGTQ_K-style per-projection bits in the quantization block are accepted
        let mut v = legacy();
        v["quantization"] = serde_json::json!({"bits": 8, "group_size": 32,
            "routed_expert_bits": {"gate_proj": 2, "up_proj": 2, "down_proj": 4}});
        let q = ZayaConfig::from_value(v, "config.json").unwrap().quantization.unwrap();
        assert_eq!(q.routed_expert_bits, None);
        assert!(q.overrides.is_empty());
    }

    #[test]
    fn generation_config_merges_eos_and_adds_end_of_turn() {
        let g = GenerationConfig::from_json_str(r#"{"eos_token_id": [1], "bos_token_id": 2}"#, "g").unwrap();
        assert_eq!(g.eos_token_ids, vec![1, 106]);
        let mut c = ZayaConfig::from_value(legacy(), "config.json").unwrap();
        c.merge_eos(&g.eos_token_ids);
        assert_eq!(c.eos_token_ids, vec![106, 1]);
    }
}
