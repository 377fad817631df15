//! [`SynthSpec`]: the architecture and format knobs of a synthetic bundle, its presets, JSON
//! overrides (`zaya synth --config FILE`) and validation.
use serde_json::Value;

use crate::config::Fields;
use crate::error::{Result, ZayaError};

/// Everything that determines a synthetic bundle (with the output directory).
#[derive(Debug, Clone, PartialEq)]
pub struct SynthSpec {
    /// Preset the spec started from (for reports).
    pub preset: String,
    pub hidden_size: usize,
    /// Half-layers (even = CCA attention, odd = MoE).
    pub num_hidden_layers: usize,
    /// CCA query heads.
    pub num_q_heads: usize,
    /// CCA key/value heads.
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub num_experts: usize,
    /// Per-expert SwiGLU width (`ffn_hidden_size / 2`).
    pub expert_intermediate_size: usize,
    /// Router MLP width (`zaya_mlp_expansion`).
    pub router_hidden_size: usize,
    pub vocab_size: usize,
    pub partial_rotary_factor: f64,
    pub rope_theta: f64,
    pub norm_epsilon: f64,
    pub max_position_embeddings: usize,
    /// 17th router logit (MOD skip route).
    pub use_mod: bool,
    pub use_eda: bool,
    /// Affine group size of the 8-bit tensors.
    pub group_size: usize,
    /// TurboQuant bits of the routed experts (2 → JANGTQ2, 4 → JANGTQ4).
    pub expert_bits: u32,
    /// Seed of the Hadamard sign vector (`mxtq_seed`).
    pub mxtq_seed: u64,
    /// Seed of the random float weights.
    pub seed: u64,
    /// A shard is closed once this many tensor bytes have accumulated (the converter's 1e9).
    pub max_shard_bytes: u64,
}

/// Bits of the affine tensors (attention projections, embeddings) in a JANGTQ bundle.
pub const AFFINE_BITS: u32 = 8;

/// The preset names [`SynthSpec::preset`] accepts.
pub const PRESETS: &[&str] = &["tiny", "small", "zaya1-8b"];

impl SynthSpec {
    /// A named preset: `tiny` (≈0.8 MB: hidden 128, 6 half-layers, 4 experts, vocab 1024),
    /// `small` (real per-layer dims, 4 half-layers, vocab 32768, ≈0.3 GB) or `zaya1-8b` (the real
    /// dimensions: 80 half-layers, vocab 262272, ≈4.65 GiB).
    pub fn preset(name: &str) -> Result<Self> {
        let real = SynthSpec {
            preset: name.to_string(),
            hidden_size: 2048,
            num_hidden_layers: 80,
            num_q_heads: 8,
            num_kv_heads: 2,
            head_dim: 128,
            num_experts: 16,
            expert_intermediate_size: 2048,
            router_hidden_size: 256,
            vocab_size: 262_272,
            partial_rotary_factor: 0.5,
            rope_theta: 5_000_000.0,
            norm_epsilon: 1e-5,
            max_position_embeddings: 131_072,
            use_mod: true,
            use_eda: true,
            group_size: 32,
            expert_bits: 4,
            mxtq_seed: 42,
            seed: 0,
            max_shard_bytes: 1_000_000_000,
        };
        match name {
            "zaya1-8b" => Ok(real),
            "small" => Ok(SynthSpec {
                num_hidden_layers: 4,
                vocab_size: 32_768,
                ..real
            }),
            "tiny" => Ok(SynthSpec {
                hidden_size: 128,
                num_hidden_layers: 6,
                num_q_heads: 4,
                num_kv_heads: 2,
                head_dim: 32,
                num_experts: 4,
                expert_intermediate_size: 128,
                router_hidden_size: 64,
                vocab_size: 1024,
                max_position_embeddings: 4096,
                ..real
            }),
            _ => Err(ZayaError::InvalidArgument(format!(
                "unknown synth preset `{name}` (expected one of: {})",
                PRESETS.join(", ")
            ))),
        }
    }

    /// Query latent width Hq·D.
    pub fn q_dim(&self) -> usize {
        self.num_q_heads * self.head_dim
    }
    /// Key latent width Hk·D.
    pub fn k_dim(&self) -> usize {
        self.num_kv_heads * self.head_dim
    }
    /// Channels through the CCA convs.
    pub fn conv_channels(&self) -> usize {
        self.q_dim() + self.k_dim()
    }
    /// Router logits (experts + skip route).
    pub fn router_logits(&self) -> usize {
        self.num_experts + usize::from(self.use_mod)
    }
    /// Indices of the MoE half-layers.
    pub fn moe_layers(&self) -> Vec<usize> {
        (0..self.num_hidden_layers).filter(|n| n % 2 == 1).collect()
    }
    /// Profile name (`JANGTQ4`).
    pub fn profile(&self) -> String {
        format!("JANGTQ{}", self.expert_bits)
    }

    /// Applies overrides from a JSON object with config.json-style keys (`hidden_size`,
    /// `num_hidden_layers`, `num_attention_heads` / `cca_num_q_heads`, `num_key_value_heads`,
    /// `head_dim` / `kv_channels`, `num_experts`, `ffn_hidden_size`, `zaya_mlp_expansion`,
    /// `vocab_size`, `rope_theta`, `partial_rotary_factor`, `norm_epsilon`,
    /// `max_position_embeddings`, `zaya_use_mod`, `zaya_use_eda`) and synth keys (`group_size`,
    /// `expert_bits`, `mxtq_seed`, `max_shard_bytes`). Other keys of a published config.json are
    /// ignored; anything else is an error naming the key. `file` names the source in errors.
    pub fn apply_overrides(&mut self, v: &Value, file: &str) -> Result<()> {
        let obj = v
            .as_object()
            .ok_or_else(|| ZayaError::config(file, "<root>", "must be a JSON object"))?;
        let o = Fields { obj, file };
        // q heads: cca_num_q_heads wins (older legacy revision, where num_attention_heads = 2·Hq)
        if let Some(h) = o.usize("cca_num_q_heads")?.or(o.usize("num_attention_heads")?) {
            self.num_q_heads = h;
        }
        if let Some(h) = o.usize("num_key_value_heads")?.or(o.usize("num_query_groups")?) {
            self.num_kv_heads = h;
        }
        if let Some(d) = o.usize("head_dim")?.or(o.usize("kv_channels")?) {
            self.head_dim = d;
        }
        if let Some(f) = o.usize("ffn_hidden_size")? {
            if f % 2 != 0 {
                return Err(ZayaError::config(
                    file,
                    "ffn_hidden_size",
                    format!("{f} is odd; it is the fused gate+up width"),
                ));
            }
            self.expert_intermediate_size = f / 2;
        }
        macro_rules! set {
            ($key:literal, $field:ident, $get:ident) => {
                if let Some(x) = o.$get($key)? {
                    self.$field = x;
                }
            };
        }
        set!("hidden_size", hidden_size, usize);
        set!("num_hidden_layers", num_hidden_layers, usize);
        set!("num_experts", num_experts, usize);
        set!("zaya_mlp_expansion", router_hidden_size, usize);
        set!("vocab_size", vocab_size, usize);
        set!("max_position_embeddings", max_position_embeddings, usize);
        set!("rope_theta", rope_theta, f64);
        set!("partial_rotary_factor", partial_rotary_factor, f64);
        set!("norm_epsilon", norm_epsilon, f64);
        set!("zaya_use_mod", use_mod, bool);
        set!("zaya_use_eda", use_eda, bool);
        set!("group_size", group_size, usize);
        set!("mxtq_seed", mxtq_seed, u64);
        set!("max_shard_bytes", max_shard_bytes, u64);
        if let Some(b) = o.u64("expert_bits")? {
            self.expert_bits = u32::try_from(b).map_err(|_| ZayaError::config(file, "expert_bits", "too large"))?;
        }
        if let Some(t) = obj.get("moe_router_topk").and_then(Value::as_u64) {
            if t != 1 {
                return Err(ZayaError::config(
                    file,
                    "moe_router_topk",
                    format!("{t} is not supported: ZAYA routes top-1"),
                ));
            }
        }
        for k in obj.keys() {
            if !KNOWN_KEYS.contains(&k.as_str()) && !IGNORED_KEYS.contains(&k.as_str()) {
                return Err(ZayaError::config(
                    file,
                    k,
                    format!("unknown synth override (supported: {})", KNOWN_KEYS.join(", ")),
                ));
            }
        }
        Ok(())
    }

    /// Checks that the spec describes a bundle the format and the converter's rules allow.
    pub fn validate(&self) -> Result<()> {
        let err = |field: &str, msg: String| Err(ZayaError::config("synth spec", field, msg));
        // the loader's bounds, checked before anything is sized from them
        crate::config::check_dims(
            "synth spec",
            &[
                ("hidden_size", self.hidden_size),
                ("num_hidden_layers", self.num_hidden_layers),
                ("num_attention_heads", self.num_q_heads),
                ("num_key_value_heads", self.num_kv_heads),
                ("head_dim", self.head_dim),
                ("num_experts", self.num_experts),
                ("ffn_hidden_size", self.expert_intermediate_size),
                ("zaya_mlp_expansion", self.router_hidden_size),
                ("vocab_size", self.vocab_size),
                ("max_position_embeddings", self.max_position_embeddings),
            ],
        )?;
        let g = self.group_size;
        if ![32, 64, 128].contains(&g) {
            return err(
                "group_size",
                format!("{g} is not an MLX affine group size (32, 64, 128)"),
            );
        }
        if self.hidden_size == 0 || !self.hidden_size.is_multiple_of(g) {
            return err(
                "hidden_size",
                format!("{} must be a positive multiple of group_size {g}", self.hidden_size),
            );
        }
        if self.num_hidden_layers < 2 {
            return err(
                "num_hidden_layers",
                format!(
                    "{} half-layers: need at least one attention and one MoE layer",
                    self.num_hidden_layers
                ),
            );
        }
        if self.num_q_heads == 0 || self.num_kv_heads == 0 || !self.num_q_heads.is_multiple_of(self.num_kv_heads) {
            return err(
                "num_attention_heads",
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
        if !self.q_dim().is_multiple_of(g) {
            return err(
                "num_attention_heads",
                format!(
                    "o_proj input Hq·D = {} must be a multiple of group_size {g}",
                    self.q_dim()
                ),
            );
        }
        let rot = (self.head_dim as f64 * self.partial_rotary_factor) as usize;
        if !(0.0..=1.0).contains(&self.partial_rotary_factor) || !rot.is_multiple_of(2) {
            return err(
                "partial_rotary_factor",
                format!(
                    "{} gives an odd or invalid rotary dim {rot}",
                    self.partial_rotary_factor
                ),
            );
        }
        if self.num_experts == 0 {
            return err("num_experts", "must be positive".into());
        }
        if self.router_hidden_size == 0 {
            return err("zaya_mlp_expansion", "must be positive".into());
        }
        if ![2, 4].contains(&self.expert_bits) {
            return err(
                "expert_bits",
                format!("{} is not supported (JANGTQ2 or JANGTQ4: 2 or 4)", self.expert_bits),
            );
        }
        let per = 32 / self.expert_bits as usize;
        for (field, n) in [
            ("hidden_size", self.hidden_size),
            ("ffn_hidden_size", self.expert_intermediate_size),
        ] {
            if n == 0 || n % per != 0 {
                return err(
                    field,
                    format!(
                        "expert in_features {n} must be a positive multiple of {per} ({}-bit codes per word)",
                        self.expert_bits
                    ),
                );
            }
        }
        if self.vocab_size < super::tokenizer::SYNTH_VOCAB_MIN {
            return err(
                "vocab_size",
                format!(
                    "{} is smaller than the synthetic tokenizer ({} tokens)",
                    self.vocab_size,
                    super::tokenizer::SYNTH_VOCAB_MIN
                ),
            );
        }
        if !(self.norm_epsilon > 0.0 && self.norm_epsilon < 1.0) {
            return err("norm_epsilon", format!("{} is out of range", self.norm_epsilon));
        }
        if self.rope_theta.is_nan() || self.rope_theta <= 0.0 {
            return err("rope_theta", format!("{} must be positive", self.rope_theta));
        }
        if self.max_shard_bytes == 0 {
            return err("max_shard_bytes", "must be positive".into());
        }
        Ok(())
    }
}

/// Override keys [`SynthSpec::apply_overrides`] understands.
const KNOWN_KEYS: &[&str] = &[
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "cca_num_q_heads",
    "num_key_value_heads",
    "num_query_groups",
    "head_dim",
    "kv_channels",
    "num_experts",
    "ffn_hidden_size",
    "zaya_mlp_expansion",
    "vocab_size",
    "rope_theta",
    "partial_rotary_factor",
    "norm_epsilon",
    "max_position_embeddings",
    "zaya_use_mod",
    "zaya_use_eda",
    "moe_router_topk",
    "group_size",
    "expert_bits",
    "mxtq_seed",
    "max_shard_bytes",
];

/// Keys of a published or converted config.json that carry no synth knob (ignored).
const IGNORED_KEYS: &[&str] = &[
    "architectures",
    "model_type",
    "dtype",
    "torch_dtype",
    "rope_scaling",
    "sliding_window",
    "cca",
    "cca_time0",
    "cca_time1",
    "clamp_temp",
    "activation_func",
    "gated_linear_unit",
    "add_bias_linear",
    "normalization",
    "scale_residual_merge",
    "residual_in_fp32",
    "attention_bias",
    "lm_head_bias",
    "tie_word_embeddings",
    "bos_token_id",
    "eos_token_id",
    "pad_token_id",
    "mamba_cache_dtype",
    "apply_rope_fusion",
    "bias_activation_fusion",
    "fused_add_norm",
    "activation_func_fp8_input_store",
    "use_cache",
    "attention_dropout",
    "zaya_high_prec",
    "transformers_version",
    "weight_format",
    "zaya_expert_layout",
    "mxtq_bits",
    "quantization",
    "capabilities",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_validate() {
        for p in PRESETS {
            SynthSpec::preset(p).unwrap().validate().unwrap();
        }
        let e = SynthSpec::preset("huge").unwrap_err().to_string();
        assert!(e.contains("huge") && e.contains("tiny"), "{e}");
    }

    #[test]
    fn overrides_apply_and_unknown_keys_are_named() {
        let mut s = SynthSpec::preset("tiny").unwrap();
        s.apply_overrides(
            &serde_json::json!({"hidden_size": 256, "ffn_hidden_size": 512, "model_type": "zaya"}),
            "o.json",
        )
        .unwrap();
        assert_eq!((s.hidden_size, s.expert_intermediate_size), (256, 256));
        let e = s
            .apply_overrides(&serde_json::json!({"hiden_size": 256}), "o.json")
            .unwrap_err()
            .to_string();
        assert!(e.contains("hiden_size") && e.contains("o.json"), "{e}");
        let e = s
            .apply_overrides(&serde_json::json!({"num_experts": "many"}), "o.json")
            .unwrap_err()
            .to_string();
        assert!(e.contains("num_experts"), "{e}");
    }

    #[test]
    fn invalid_specs_name_the_field() {
        let cases: &[(&str, Value)] = &[
            ("hidden_size", serde_json::json!({"hidden_size": 100})),
            ("num_hidden_layers", serde_json::json!({"num_hidden_layers": 1})),
            ("expert_bits", serde_json::json!({"expert_bits": 3})),
            ("vocab_size", serde_json::json!({"vocab_size": 100})),
            ("group_size", serde_json::json!({"group_size": 48})),
            ("num_attention_heads", serde_json::json!({"num_attention_heads": 3})),
        ];
        for (field, v) in cases {
            let mut s = SynthSpec::preset("tiny").unwrap();
            s.apply_overrides(v, "o.json").unwrap();
            let e = s.validate().unwrap_err().to_string();
            assert!(e.contains(field), "{field}: {e}");
        }
    }
}
