//! The `quantization` block of config.json (mlx-lm convention): the default bits, group size and
//! mode, the descriptive JANGTQ widths, and the per-module overrides (non-module keys skipped).
use std::collections::BTreeMap;

use serde_json::Value;

use super::Fields;
use crate::error::{Result, ZayaError};

/// Per-module quantization override of the `quantization` block.
#[derive(Debug, Clone, PartialEq)]
pub struct QuantOverride {
    pub bits: Option<u32>,
    pub group_size: Option<u32>,
    pub mode: Option<String>,
}

/// The `quantization` block of config.json (mlx-lm convention), non-module keys skipped.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct QuantizationConfig {
    pub bits: Option<u32>,
    pub group_size: Option<u32>,
    /// "affine" (default) or "mxfp4".
    pub mode: Option<String>,
    /// `routed_expert_bits` (JANGTQ), descriptive; `None` when absent or given per projection
    /// (JANGTQ_K writes an object; the per-tensor `tq_bits` are authoritative anyway).
    pub routed_expert_bits: Option<u32>,
    /// `embed_bits`: jang's converters give the embedding's (and an untied lm_head's) width here
    /// instead of as a module override. Read leniently (absent or not an integer → `None`).
    pub embed_bits: Option<u32>,
    /// Per-module overrides keyed by module path (e.g. `model.embed_tokens`).
    pub overrides: BTreeMap<String, QuantOverride>,
}

impl QuantizationConfig {
    /// Keys of the block that are not module overrides.
    const NON_MODULE_KEYS: &'static [&'static str] = &[
        "bits",
        "group_size",
        "mode",
        "routed_expert_bits",
        "mxtq_bits",
        "expert_layout",
        "quant_method",
        "embed_bits",
        "router_bits",
    ];

    pub(super) fn from_value(v: &Value, file: &str) -> Result<Self> {
        let obj = v
            .as_object()
            .ok_or_else(|| ZayaError::config(file, "quantization", "must be an object"))?;
        let f = Fields { obj, file };
        let mut q = QuantizationConfig {
            bits: f.u32("bits")?,
            group_size: f.u32("group_size")?,
            mode: f.str("mode")?,
            routed_expert_bits: match obj.get("routed_expert_bits") {
                Some(Value::Object(_)) => None,
                _ => f.u32("routed_expert_bits")?,
            },
            embed_bits: obj.get("embed_bits").and_then(Value::as_u64).map(|v| v as u32),
            overrides: BTreeMap::new(),
        };
        for (k, v) in obj {
            if Self::NON_MODULE_KEYS.contains(&k.as_str()) {
                continue;
            }
            // `false` means "not quantized"; objects carry overrides; anything else is ignored
            if let Some(o) = v.as_object() {
                let of = Fields { obj: o, file };
                q.overrides.insert(
                    k.clone(),
                    QuantOverride {
                        bits: of.u32("bits")?,
                        group_size: of.u32("group_size")?,
                        mode: of.str("mode")?,
                    },
                );
            }
        }
        if let Some(b) = q.bits {
            if ![2, 3, 4, 5, 6, 8].contains(&b) {
                return Err(ZayaError::config(
                    file,
                    "quantization.bits",
                    format!("{b} is not a supported bit width"),
                ));
            }
        }
        Ok(q)
    }
}
