//! Prompt-cache files: the complete state of one sequence — every attention layer's KV cache (cut
//! to its length), `conv_state` and `prev_hs`, the position, the token ids it holds and, for a chat
//! session, the conversation — in one safetensors file, so that a long prompt is prefilled once and
//! reused by later runs exactly (docs/prompt-cache.md describes the layout beside mlx-lm's).
//!
//! The router's depth-carried state lives inside one forward pass and needs no storing. A file
//! records the model's [fingerprint](ZayaModel::fingerprint), the compute dtype, the format
//! version and (for chat sessions) the chat template's fingerprint; loading checks each and names
//! the one that differs. Files are written atomically ([`crate::files::write_atomic`]).
use std::collections::HashMap;
use std::path::Path;

use mlx_rs::{Array, Dtype};
use safetensors::tensor::TensorView;
use safetensors::SafeTensors;
use serde_json::Value;

use crate::error::{Result, ZayaError};
use crate::model::cache::{AttnCache, ModelCache};
use crate::model::ZayaModel;

/// `format` metadata value.
pub const FORMAT: &str = "zaya-mlx/prompt-cache";
/// `format_version` metadata value this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;

/// What a prompt-cache file holds.
#[derive(Debug, Clone)]
pub struct PromptCache {
    /// The model state (batch 1).
    pub cache: ModelCache,
    /// The token ids in the cache (`cache.offset()` of them).
    pub tokens: Vec<u32>,
    /// Fingerprint of the chat template that rendered the cached text (chat sessions).
    pub chat_template: Option<String>,
    /// Session state (conversation, cached text, pending token) as JSON, when saved by a session.
    pub session: Option<Value>,
}

/// What to save: borrowed parts of a [`PromptCache`].
#[derive(Debug, Clone, Copy)]
pub struct PromptCacheRef<'a> {
    pub cache: &'a ModelCache,
    pub tokens: &'a [u32],
    pub chat_template: Option<&'a str>,
    pub session: Option<&'a Value>,
}

fn err(path: &Path, msg: impl Into<String>) -> ZayaError {
    ZayaError::PromptCache {
        file: path.to_path_buf(),
        msg: msg.into(),
    }
}

/// Name of the compute dtype in the file's metadata.
pub fn dtype_name(d: Dtype) -> &'static str {
    match d {
        Dtype::Float32 => "float32",
        Dtype::Bfloat16 => "bfloat16",
        Dtype::Float16 => "float16",
        _ => "other",
    }
}

fn f32_bytes(a: &Array, name: &str) -> Result<Vec<u8>> {
    let s = a
        .try_as_slice::<f32>()
        .map_err(|e| ZayaError::Ext(format!("prompt cache: reading `{name}`: {e}")))?;
    let mut out = Vec::with_capacity(s.len() * 4);
    for v in s {
        out.extend_from_slice(&v.to_le_bytes());
    }
    Ok(out)
}

/// Writes `pc` to `path` (atomically; an existing file is replaced only once the new one is
/// complete). `protect`: a directory the file must not be inside (the bundle).
pub fn save(path: &Path, model: &ZayaModel, pc: PromptCacheRef<'_>, protect: Option<&Path>) -> Result<()> {
    if let Some(dir) = protect {
        crate::files::refuse_inside(path, dir, "prompt cache file")?;
    }
    let cache = pc.cache;
    let offset = cache.offset();
    if cache.is_poisoned() {
        return Err(err(
            path,
            "the cache is inconsistent after a failed forward; nothing saved",
        ));
    }
    if offset == 0 {
        return Err(err(path, "the cache is empty; nothing to save"));
    }
    if cache.batch() != Some(1) {
        return Err(err(path, "only single-sequence caches (batch 1) can be saved"));
    }
    if pc.tokens.len() != offset {
        return Err(err(
            path,
            format!("{} token ids for a cache of {offset} positions", pc.tokens.len()),
        ));
    }
    let cfg = model.config();
    // the arrays, evaluated and contiguous
    let mut named: Vec<(String, Array)> = Vec::new();
    for (i, a) in cache.attn_layers().iter().enumerate() {
        let n = 2 * i;
        let parts = [
            ("keys", a.keys()),
            ("values", a.values()),
            ("conv_state", a.conv_state.clone()),
            ("prev_hs", a.prev_hs.clone()),
        ];
        for (what, arr) in parts {
            let arr = arr.ok_or_else(|| err(path, format!("attention layer {n} has no {what}")))?;
            let arr = if arr.dtype() == Dtype::Float32 {
                arr
            } else {
                arr.as_dtype(Dtype::Float32)?
            };
            named.push((format!("layers.{n}.{what}"), arr.contiguous()?));
        }
    }
    mlx_rs::transforms::eval(named.iter().map(|(_, a)| a))?;
    let mut buffers: Vec<(String, Vec<usize>, Vec<u8>, safetensors::Dtype)> = Vec::new();
    let tok_bytes: Vec<u8> = pc.tokens.iter().flat_map(|t| t.to_le_bytes()).collect();
    buffers.push(("token_ids".into(), vec![offset], tok_bytes, safetensors::Dtype::U32));
    for (name, a) in &named {
        let shape = a.shape().iter().map(|&d| d as usize).collect();
        buffers.push((name.clone(), shape, f32_bytes(a, name)?, safetensors::Dtype::F32));
    }
    let mut meta: HashMap<String, String> = HashMap::new();
    meta.insert("format".into(), FORMAT.into());
    meta.insert("format_version".into(), FORMAT_VERSION.to_string());
    meta.insert("model_fingerprint".into(), model.fingerprint()?);
    meta.insert("dtype".into(), dtype_name(model.options().dtype).into());
    meta.insert("mod_skip".into(), format!("{:?}", model.options().mod_skip));
    meta.insert("offset".into(), offset.to_string());
    meta.insert("num_hidden_layers".into(), cfg.num_hidden_layers.to_string());
    meta.insert(
        "route_counts".into(),
        serde_json::json!({"skip": cache.skip_counts(), "routed": cache.routed_counts()}).to_string(),
    );
    if let Some(t) = pc.chat_template {
        meta.insert("chat_template_fingerprint".into(), t.into());
    }
    if let Some(s) = pc.session {
        meta.insert("session".into(), s.to_string());
    }
    meta.insert("created_by".into(), format!("zaya-mlx {}", env!("CARGO_PKG_VERSION")));
    let views = buffers
        .iter()
        .map(|(n, shape, bytes, dt)| {
            TensorView::new(*dt, shape.clone(), bytes)
                .map(|v| (n.clone(), v))
                .map_err(|e| err(path, format!("tensor `{n}`: {e}")))
        })
        .collect::<Result<Vec<_>>>()?;
    crate::files::write_atomic(path, |tmp| {
        safetensors::serialize_to_file(views, Some(meta), tmp).map_err(|e| err(path, format!("writing: {e}")))
    })
}

/// Largest plausible file for `model`: a full context of KV and ids plus the fixed per-layer state
/// and 16 MiB for the header (checked before anything is read).
fn max_file_bytes(model: &ZayaModel) -> u128 {
    let c = model.config();
    let layers = c.num_attention_layers() as u128;
    let ctx = c.max_position_embeddings as u128;
    let kv_row = 2 * (c.num_kv_heads * c.head_dim) as u128 * 4;
    let fixed = (c.conv_channels() * 4 + c.hidden_size) as u128 * 4;
    (16 << 20) + ctx * 4 + layers * (ctx * kv_row + fixed)
}

/// Reads a prompt-cache file written by [`save`] for `model`. Every mismatch (format, version,
/// dtype, model) and every corrupt, truncated or inconsistent part is a [`ZayaError::PromptCache`]
/// naming it; nothing is allocated beyond the file's size, which is checked against the model's
/// largest possible cache first.
pub fn load(path: &Path, model: &ZayaModel) -> Result<PromptCache> {
    let md = std::fs::metadata(path).map_err(|e| ZayaError::io(path, e))?;
    if !md.is_file() {
        return Err(err(path, "not a regular file"));
    }
    let limit = max_file_bytes(model);
    if md.len() as u128 > limit {
        return Err(err(
            path,
            format!(
                "{} bytes is larger than any cache of this model ({limit} bytes)",
                md.len()
            ),
        ));
    }
    let bytes = std::fs::read(path).map_err(|e| ZayaError::io(path, e))?;
    let (_, meta) = SafeTensors::read_metadata(&bytes).map_err(|e| err(path, format!("corrupt or truncated: {e}")))?;
    let st = SafeTensors::deserialize(&bytes).map_err(|e| err(path, format!("corrupt or truncated: {e}")))?;
    let empty = HashMap::new();
    let m = meta.metadata().as_ref().unwrap_or(&empty);
    let get = |k: &str| m.get(k).map(String::as_str);
    if get("format") != Some(FORMAT) {
        return Err(err(
            path,
            format!("not a zaya-mlx prompt-cache file (no `format: {FORMAT}` metadata)"),
        ));
    }
    match get("format_version").map(str::parse::<u32>) {
        Some(Ok(FORMAT_VERSION)) => {}
        Some(Ok(v)) => {
            return Err(err(
                path,
                format!("format version {v}; this zaya-mlx reads version {FORMAT_VERSION}"),
            ))
        }
        _ => return Err(err(path, "missing or malformed `format_version`")),
    }
    let want_dtype = dtype_name(model.options().dtype);
    match get("dtype") {
        Some(d) if d == want_dtype => {}
        Some(d) => {
            return Err(err(
                path,
                format!("made with compute dtype {d}, but the model runs {want_dtype} (use the same --dtype)"),
            ))
        }
        None => return Err(err(path, "missing `dtype`")),
    }
    let want_skip = format!("{:?}", model.options().mod_skip);
    match get("mod_skip") {
        Some(m) if m == want_skip => {}
        Some(m) => {
            return Err(err(
                path,
                format!("made with MOD skip semantics {m}, but the model runs {want_skip} (use the same --mod-skip)"),
            ))
        }
        None => return Err(err(path, "missing `mod_skip`")),
    }
    let fp = model.fingerprint()?;
    match get("model_fingerprint") {
        Some(f) if f == fp => {}
        Some(f) => {
            return Err(err(
                path,
                format!(
                    "made with another model (fingerprint {}…, this model {}…)",
                    &f[..f.len().min(12)],
                    &fp[..12]
                ),
            ))
        }
        None => return Err(err(path, "missing `model_fingerprint`")),
    }
    let cfg = model.config();
    let offset: usize = get("offset")
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| err(path, "missing or malformed `offset`"))?;
    if offset == 0 || offset > cfg.max_position_embeddings {
        return Err(err(
            path,
            format!("offset {offset} is outside 1..={}", cfg.max_position_embeddings),
        ));
    }
    let (hk, d, h) = (cfg.num_kv_heads, cfg.head_dim, cfg.hidden_size);
    let c = cfg.conv_channels();
    let s = cfg.cca_time0.saturating_sub(1) + cfg.cca_time1.saturating_sub(1);
    let mut expected: Vec<String> = vec!["token_ids".into()];
    let tensor = |name: &str, dtype: safetensors::Dtype, shape: &[usize]| -> Result<Vec<u8>> {
        let v = st
            .tensor(name)
            .map_err(|_| err(path, format!("missing tensor `{name}`")))?;
        if v.dtype() != dtype {
            return Err(err(
                path,
                format!("tensor `{name}`: dtype {:?}, expected {dtype:?}", v.dtype()),
            ));
        }
        if v.shape() != shape {
            return Err(err(
                path,
                format!("tensor `{name}`: shape {:?}, expected {shape:?}", v.shape()),
            ));
        }
        Ok(v.data().to_vec())
    };
    let ids: Vec<u32> = tensor("token_ids", safetensors::Dtype::U32, &[offset])?
        .chunks_exact(4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    if let Some(bad) = ids.iter().find(|&&i| i as usize >= cfg.vocab_size) {
        return Err(err(
            path,
            format!("token id {bad} is outside the vocabulary (0..{})", cfg.vocab_size),
        ));
    }
    let floats = |name: &str, shape: &[usize]| -> Result<Array> {
        let raw = tensor(name, safetensors::Dtype::F32, shape)?;
        let vals: Vec<f32> = raw
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        if vals.iter().any(|v| !v.is_finite()) {
            return Err(err(path, format!("tensor `{name}` holds non-finite values")));
        }
        let dims: Vec<i32> = shape.iter().map(|&x| x as i32).collect();
        Ok(Array::from_slice(&vals, &dims))
    };
    let mut layers = Vec::with_capacity(cfg.num_attention_layers());
    for i in 0..cfg.num_attention_layers() {
        let n = 2 * i;
        let name = |w: &str| format!("layers.{n}.{w}");
        for w in ["keys", "values", "conv_state", "prev_hs"] {
            expected.push(name(w));
        }
        let keys = floats(&name("keys"), &[1, hk, offset, d])?;
        let values = floats(&name("values"), &[1, hk, offset, d])?;
        let conv = floats(&name("conv_state"), &[1, c, s])?;
        let prev = floats(&name("prev_hs"), &[1, h])?;
        layers.push(AttnCache::from_parts(keys, values, conv, prev));
    }
    let mut extra: Vec<String> = st
        .names()
        .into_iter()
        .filter(|n| !expected.iter().any(|e| e == *n))
        .map(str::to_string)
        .collect();
    if !extra.is_empty() {
        extra.sort();
        return Err(err(path, format!("unexpected tensors: {}", extra.join(", "))));
    }
    let nl = cfg.num_hidden_layers;
    let counts: Value = get("route_counts")
        .and_then(|s| serde_json::from_str(s).ok())
        .unwrap_or(Value::Null);
    let read_counts = |k: &str| -> Vec<u64> {
        let v: Vec<u64> = counts
            .get(k)
            .and_then(|a| serde_json::from_value(a.clone()).ok())
            .unwrap_or_default();
        if v.len() == nl {
            v
        } else {
            vec![0; nl]
        }
    };
    let mut cache = ModelCache::from_parts(cfg, layers, offset, 1, read_counts("skip"), read_counts("routed"))?;
    cache.set_kv_step(model.options().kv_step);
    let session = match get("session") {
        Some(s) => Some(serde_json::from_str(s).map_err(|e| err(path, format!("`session` is not valid JSON: {e}")))?),
        None => None,
    };
    Ok(PromptCache {
        cache,
        tokens: ids,
        chat_template: get("chat_template_fingerprint").map(str::to_string),
        session,
    })
}
