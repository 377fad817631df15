//! `jang_config.json` of JANG/JANGTQ bundles: format, profile, TurboQuant seed, per-module
//! `tq_in_features` and the routed-expert bit widths (one number or per projection).
use std::collections::BTreeMap;
use std::path::Path;

use serde_json::Value;

use super::Fields;
use crate::error::{Result, ZayaError};

/// `jang_config.json` of JANG/JANGTQ bundles.
#[derive(Debug, Clone, Default)]
pub struct JangConfig {
    pub version: Option<u64>,
    pub weight_format: Option<String>,
    pub profile: Option<String>,
    pub mxtq_seed: Option<u64>,
    /// `tq_in_features`: module base → in_features.
    pub tq_in_features: BTreeMap<String, usize>,
    /// `mxtq_bits.routed_expert`, as a number or per projection (JANGTQ_K).
    pub routed_expert_bits: BTreeMap<String, u32>,
    pub group_size: Option<u32>,
    pub raw: Value,
}

impl JangConfig {
    /// Reads `dir/jang_config.json` if present.
    pub fn from_dir(dir: &Path) -> Result<Option<Self>> {
        let path = dir.join("jang_config.json");
        if !path.exists() {
            return Ok(None);
        }
        let text = crate::files::read_text_limited(&path, crate::files::MAX_CONFIG_BYTES)?;
        Self::from_json_str(&text, "jang_config.json").map(Some)
    }

    pub fn from_json_str(text: &str, file: &str) -> Result<Self> {
        let raw: Value = serde_json::from_str(text)
            .map_err(|e| ZayaError::config(file, "<json>", format!("not valid JSON: {e}")))?;
        let obj = raw
            .as_object()
            .ok_or_else(|| ZayaError::config(file, "<root>", "must be a JSON object"))?;
        let f = Fields { obj, file };
        let mut tq_in_features = BTreeMap::new();
        if let Some(m) = obj.get("tq_in_features").and_then(Value::as_object) {
            for (k, v) in m {
                let n = v
                    .as_u64()
                    .ok_or_else(|| ZayaError::config(file, format!("tq_in_features.{k}"), "must be an integer"))?;
                tq_in_features.insert(k.clone(), n as usize);
            }
        }
        let mut routed_expert_bits = BTreeMap::new();
        if let Some(re) = obj.get("mxtq_bits").and_then(|m| m.get("routed_expert")) {
            match re {
                Value::Number(n) => {
                    let b = n
                        .as_u64()
                        .ok_or_else(|| ZayaError::config(file, "mxtq_bits.routed_expert", "must be an integer"))?;
                    for p in ["gate_proj", "up_proj", "down_proj"] {
                        routed_expert_bits.insert(p.to_string(), b as u32);
                    }
                }
                Value::Object(m) => {
                    for (k, v) in m {
                        let b = v.as_u64().ok_or_else(|| {
                            ZayaError::config(file, format!("mxtq_bits.routed_expert.{k}"), "must be an integer")
                        })?;
                        routed_expert_bits.insert(k.clone(), b as u32);
                    }
                }
                _ => {
                    return Err(ZayaError::config(
                        file,
                        "mxtq_bits.routed_expert",
                        "must be a number or an object",
                    ))
                }
            }
        }
        Ok(JangConfig {
            version: f.usize("version")?.map(|v| v as u64),
            weight_format: f.str("weight_format")?,
            profile: f.str("profile")?,
            mxtq_seed: f.usize("mxtq_seed")?.map(|v| v as u64),
            tq_in_features,
            routed_expert_bits,
            group_size: obj
                .get("quantization")
                .and_then(|q| q.get("group_size"))
                .and_then(Value::as_u64)
                .map(|v| v as u32),
            raw: raw.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jang_config_per_projection_bits() {
        let j = JangConfig::from_json_str(
            r#"{"version":2,"weight_format":"mxtq","profile":"JANGTQ_K","mxtq_seed":42,
                "mxtq_bits":{"routed_expert":{"gate_proj":2,"up_proj":2,"down_proj":4}},
                "tq_in_features":{"model.layers.1.zaya_block.experts.switch_mlp.gate_proj":2048},
                "quantization":{"method":"affine+mxtq","group_size":32,"bits_default":4}}"#,
            "jang_config.json",
        )
        .unwrap();
        assert_eq!(j.routed_expert_bits["down_proj"], 4);
        assert_eq!(j.routed_expert_bits["gate_proj"], 2);
        assert_eq!(j.group_size, Some(32));
        assert_eq!(j.tq_in_features.len(), 1);
    }
}
