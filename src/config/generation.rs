//! `generation_config.json`: EOS ids (the end-of-turn id always among them), BOS id and the
//! sampling defaults.
use std::path::Path;

use serde_json::Value;

use super::{Fields, END_OF_TURN_ID};
use crate::error::{Result, ZayaError};

/// `generation_config.json`.
#[derive(Debug, Clone, Default)]
pub struct GenerationConfig {
    pub eos_token_ids: Vec<u32>,
    pub bos_token_id: Option<u32>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<u32>,
    pub raw: Value,
}

impl GenerationConfig {
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = crate::files::read_text_limited(path, crate::files::MAX_CONFIG_BYTES)?;
        Self::from_json_str(&text, "generation_config.json")
    }

    /// Parses the file. The end-of-turn id 106 is always included: some published bundles had
    /// `eos_token_id = 1` only (docs/model.md §5.2).
    pub fn from_json_str(text: &str, file: &str) -> Result<Self> {
        let raw: Value = serde_json::from_str(text)
            .map_err(|e| ZayaError::config(file, "<json>", format!("not valid JSON: {e}")))?;
        let obj = raw
            .as_object()
            .ok_or_else(|| ZayaError::config(file, "<root>", "must be a JSON object"))?;
        let f = Fields { obj, file };
        let mut eos = f.ids("eos_token_id")?;
        if !eos.contains(&END_OF_TURN_ID) {
            eos.push(END_OF_TURN_ID);
        }
        Ok(GenerationConfig {
            eos_token_ids: eos,
            bos_token_id: f.u32("bos_token_id")?,
            temperature: f.f64("temperature")?.map(|v| v as f32),
            top_p: f.f64("top_p")?.map(|v| v as f32),
            top_k: f.u32("top_k")?,
            raw: raw.clone(),
        })
    }
}
