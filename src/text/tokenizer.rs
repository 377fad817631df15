//! Tokenizer (HF `tokenizer.json` through the `tokenizers` crate, plus the special-token settings of
//! `tokenizer_config.json`). The incremental detokenizer ([`StreamDecoder`]), stop handling
//! ([`StopMatcher`]) and their combination for the decode loop ([`TextStream`]) live in
//! [`crate::text::stream`] and are re-exported here.
//!
//! HF semantics kept here:
//! - special / added tokens written in the text are recognised by [`Tokenizer::encode`] (HF's default,
//!   `split_special_tokens=False`); [`Tokenizer::encode_literal`] treats them as plain text;
//! - `add_special_tokens=true` runs the tokenizer.json post-processor (for ZAYA / Gemma: prepend
//!   `<bos>`); `add_bos_token` / `add_eos_token` of tokenizer_config.json are ignored, as transformers ≥ 5
//!   ignores them whenever a tokenizer.json exists;
//! - tokens listed in tokenizer_config.json (`added_tokens_decoder`, `bos_token`, ...) but missing from
//!   tokenizer.json are added, and an id that disagrees with the vocabulary is an error.
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, OnceLock};

use serde_json::Value;
use tokenizers::AddedToken;

use crate::error::{Result, ZayaError};

pub use crate::text::stream::{StopMatcher, StopOutput, StopReason, StreamDecoder, StreamStep, TextStream};

/// `<pad>` id of the ZAYA tokenizer.
pub const PAD_ID: u32 = 0;
/// `<eos>` id of the ZAYA tokenizer.
pub const EOS_ID: u32 = 1;
/// `<bos>` id of the ZAYA tokenizer.
pub const BOS_ID: u32 = 2;
/// `<zyphra_tool_call>` id.
pub const TOOL_CALL_START_ID: u32 = 101;
/// `</zyphra_tool_call>` id.
pub const TOOL_CALL_END_ID: u32 = 102;
/// `<zyphra_tool_response>` id.
pub const TOOL_RESPONSE_START_ID: u32 = 103;
/// `</zyphra_tool_response>` id.
pub const TOOL_RESPONSE_END_ID: u32 = 104;
/// End-of-turn id (`<|im_end|>` / `<end_of_turn>`), the chat stop token.
pub const END_OF_TURN_ID: u32 = crate::config::END_OF_TURN_ID;

/// Contents the end-of-turn token is known under.
pub const END_OF_TURN_TOKENS: [&str; 2] = ["<|im_end|>", "<end_of_turn>"];
/// Contents the start-of-turn token is known under.
pub const START_OF_TURN_TOKENS: [&str; 2] = ["<|im_start|>", "<start_of_turn>"];

/// A special token: its text and id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecialToken {
    pub content: String,
    pub id: u32,
}

/// The special tokens the runtime cares about, resolved by content against the loaded vocabulary
/// (`None` when the tokenizer has no such token).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SpecialTokens {
    /// `bos_token` of tokenizer_config.json (else `<bos>`).
    pub bos: Option<SpecialToken>,
    /// `eos_token` of tokenizer_config.json (else `<eos>`).
    pub eos: Option<SpecialToken>,
    /// `pad_token` of tokenizer_config.json (else `<pad>`).
    pub pad: Option<SpecialToken>,
    /// `unk_token` of tokenizer_config.json (else `<unk>`).
    pub unk: Option<SpecialToken>,
    /// `<|im_start|>` / `<start_of_turn>`.
    pub start_of_turn: Option<SpecialToken>,
    /// `<|im_end|>` / `<end_of_turn>`.
    pub end_of_turn: Option<SpecialToken>,
    /// `<think>`.
    pub think_start: Option<SpecialToken>,
    /// `</think>`.
    pub think_end: Option<SpecialToken>,
    /// `<zyphra_tool_call>`.
    pub tool_call_start: Option<SpecialToken>,
    /// `</zyphra_tool_call>`.
    pub tool_call_end: Option<SpecialToken>,
    /// `<zyphra_tool_response>`.
    pub tool_response_start: Option<SpecialToken>,
    /// `</zyphra_tool_response>`.
    pub tool_response_end: Option<SpecialToken>,
}

/// The text of a special-token entry of tokenizer_config.json: a string or an AddedToken object
/// (`{"content": ..., ...}`).
pub(crate) fn token_content(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content").and_then(Value::as_str).map(str::to_owned),
        _ => None,
    }
}

fn tok_err(file: &str, msg: impl std::fmt::Display) -> ZayaError {
    ZayaError::Tokenizer(format!("{file}: {msg}"))
}

fn added_token_from_json(content: &str, o: Option<&serde_json::Map<String, Value>>, special: bool) -> AddedToken {
    let flag = |k: &str, d: bool| o.and_then(|o| o.get(k)).and_then(Value::as_bool).unwrap_or(d);
    AddedToken::from(content.to_owned(), flag("special", special))
        .single_word(flag("single_word", false))
        .lstrip(flag("lstrip", false))
        .rstrip(flag("rstrip", false))
        .normalized(flag("normalized", !flag("special", special)))
}

/// A loaded tokenizer. Cheap to share: the vocabulary sits behind an `Arc`.
#[derive(Clone)]
pub struct Tokenizer {
    inner: Arc<tokenizers::Tokenizer>,
    /// Same tokenizer with `encode_special_tokens` on (special-token text encoded as plain text),
    /// built on first use of [`Tokenizer::encode_literal`].
    literal: Arc<OnceLock<Arc<tokenizers::Tokenizer>>>,
    special: SpecialTokens,
    /// tokenizer_config.json `split_special_tokens`.
    split_special: bool,
    source: String,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("source", &self.source)
            .field("vocab_size", &self.vocab_size())
            .field("special", &self.special)
            .finish()
    }
}

/// The reason of an I/O error without the path (the caller names the file).
fn io_reason(e: &ZayaError) -> String {
    match e {
        ZayaError::Io { source, .. } => source.to_string(),
        other => other.to_string(),
    }
}

impl Tokenizer {
    /// Loads `tokenizer.json` (required) and `tokenizer_config.json` (optional) from a bundle
    /// directory.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let cfg = dir.join("tokenizer_config.json");
        Self::from_files(&dir.join("tokenizer.json"), cfg.exists().then_some(cfg.as_path()))
    }

    /// Loads a tokenizer.json and, when given, its tokenizer_config.json.
    pub fn from_files(tokenizer_json: &Path, tokenizer_config: Option<&Path>) -> Result<Self> {
        let name = tokenizer_json.display().to_string();
        let bytes = crate::files::read_text_limited(tokenizer_json, crate::files::MAX_TOKENIZER_BYTES)
            .map_err(|e| tok_err(&name, format!("cannot read: {}", io_reason(&e))))?
            .into_bytes();
        let config = match tokenizer_config {
            Some(p) => {
                let cname = p.display().to_string();
                let text = crate::files::read_text_limited(p, crate::files::MAX_CONFIG_BYTES)
                    .map_err(|e| tok_err(&cname, format!("cannot read: {}", io_reason(&e))))?;
                let v: Value =
                    serde_json::from_str(&text).map_err(|e| tok_err(&cname, format!("not valid JSON: {e}")))?;
                Some((v, cname))
            }
            None => None,
        };
        Self::from_bytes(&bytes, &name, config.as_ref().map(|(v, n)| (v, n.as_str())))
    }

    /// Builds a tokenizer from tokenizer.json bytes (`name` is used in errors) and an optional parsed
    /// tokenizer_config.json with its name.
    pub fn from_bytes(tokenizer_json: &[u8], name: &str, config: Option<(&Value, &str)>) -> Result<Self> {
        // the tokenizers crate panics on some malformed files (an `expect` in its decoder parser)
        let mut inner = crate::error::guarded(|| tokenizers::Tokenizer::from_bytes(tokenizer_json))
            .map_err(|p| tok_err(name, format!("not a valid tokenizer.json: {p}")))?
            .map_err(|e| tok_err(name, format!("not a valid tokenizer.json: {e}")))?;
        let mut split_special = false;
        let mut named: HashMap<&'static str, String> = HashMap::new();
        if let Some((cfg, cname)) = config {
            let obj = cfg.as_object().ok_or_else(|| tok_err(cname, "must be a JSON object"))?;
            // added_tokens_decoder: {"106": {"content": "<|im_end|>", "special": true, ...}}
            if let Some(dec) = obj.get("added_tokens_decoder") {
                let dec = dec
                    .as_object()
                    .ok_or_else(|| tok_err(cname, "`added_tokens_decoder` must be an object"))?;
                let mut entries: Vec<(u32, &str, &serde_json::Map<String, Value>)> = Vec::new();
                for (k, v) in dec {
                    let id: u32 = k
                        .parse()
                        .map_err(|_| tok_err(cname, format!("`added_tokens_decoder` key `{k}` is not a token id")))?;
                    let o = v
                        .as_object()
                        .ok_or_else(|| tok_err(cname, format!("`added_tokens_decoder.{k}` must be an object")))?;
                    let content = o
                        .get("content")
                        .and_then(Value::as_str)
                        .ok_or_else(|| tok_err(cname, format!("`added_tokens_decoder.{k}.content` missing")))?;
                    entries.push((id, content, o));
                }
                entries.sort_by_key(|e| e.0);
                let known = inner.get_added_tokens_decoder();
                for (id, content, o) in entries {
                    if known.get(&id).is_some_and(|t| t.content == content) {
                        continue;
                    }
                    match inner.token_to_id(content) {
                        Some(found) if found != id => {
                            return Err(tok_err(
                                cname,
                                format!(
                                    "added token `{content}` declared with id {id} but {name} has it at id {found}"
                                ),
                            ))
                        }
                        _ => {}
                    }
                    let tok = added_token_from_json(content, Some(o), false);
                    if tok.special {
                        inner.add_special_tokens(&[tok]);
                    } else {
                        inner.add_tokens(&[tok]);
                    }
                    match inner.token_to_id(content) {
                        Some(found) if found == id => {}
                        other => {
                            return Err(tok_err(
                                cname,
                                format!(
                                    "added token `{content}` declared with id {id} but it got id {} (vocabulary of {name} has {} entries)",
                                    other.map_or("none".to_string(), |i| i.to_string()),
                                    inner.get_vocab_size(true)
                                ),
                            ))
                        }
                    }
                }
            }
            for key in ["bos_token", "eos_token", "pad_token", "unk_token"] {
                if let Some(v) = obj.get(key) {
                    if v.is_null() {
                        continue;
                    }
                    let content = token_content(v)
                        .ok_or_else(|| tok_err(cname, format!("`{key}` must be a string or a token object")))?;
                    if inner.token_to_id(&content).is_none() {
                        inner.add_special_tokens(&[added_token_from_json(&content, v.as_object(), true)]);
                    }
                    named.insert(key, content);
                }
            }
            let b = |k: &str| -> Result<Option<bool>> {
                match obj.get(k) {
                    None | Some(Value::Null) => Ok(None),
                    Some(Value::Bool(b)) => Ok(Some(*b)),
                    Some(_) => Err(tok_err(cname, format!("`{k}` must be true or false"))),
                }
            };
            split_special = b("split_special_tokens")?.unwrap_or(false);
        }

        let find = |content: &str| {
            inner.token_to_id(content).map(|id| SpecialToken {
                content: content.to_owned(),
                id,
            })
        };
        let named_or = |key: &str, default: &str| match named.get(key) {
            Some(c) => find(c),
            None => find(default),
        };
        let first = |names: &[&str]| names.iter().find_map(|c| find(c));
        let special = SpecialTokens {
            bos: named_or("bos_token", "<bos>"),
            eos: named_or("eos_token", "<eos>"),
            pad: named_or("pad_token", "<pad>"),
            unk: named_or("unk_token", "<unk>"),
            start_of_turn: first(&START_OF_TURN_TOKENS),
            end_of_turn: first(&END_OF_TURN_TOKENS),
            think_start: find("<think>"),
            think_end: find("</think>"),
            tool_call_start: find("<zyphra_tool_call>"),
            tool_call_end: find("</zyphra_tool_call>"),
            tool_response_start: find("<zyphra_tool_response>"),
            tool_response_end: find("</zyphra_tool_response>"),
        };
        if split_special {
            inner.set_encode_special_tokens(true);
        }
        Ok(Tokenizer {
            inner: Arc::new(inner),
            literal: Arc::new(OnceLock::new()),
            special,
            split_special,
            source: name.to_owned(),
        })
    }

    /// The underlying `tokenizers` tokenizer.
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }

    /// Number of ids, added tokens included.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The special tokens found in the vocabulary.
    pub fn special_tokens(&self) -> &SpecialTokens {
        &self.special
    }

    /// BOS id (`bos_token`), if any.
    pub fn bos_id(&self) -> Option<u32> {
        self.special.bos.as_ref().map(|t| t.id)
    }

    /// The ids that end generation according to the tokenizer: `eos_token` and the end-of-turn
    /// token (deduplicated). The generator adds config.json / generation_config.json EOS ids.
    pub fn eos_ids(&self) -> Vec<u32> {
        let mut v = Vec::new();
        for t in [&self.special.eos, &self.special.end_of_turn].into_iter().flatten() {
            if !v.contains(&t.id) {
                v.push(t.id);
            }
        }
        v
    }

    /// Id of a token string (vocabulary or added token).
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// Token string of an id.
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// Whether `id` is a special added token (skipped by `decode(.., skip_special_tokens=true)`).
    pub fn is_special(&self, id: u32) -> bool {
        self.inner
            .get_added_tokens_decoder()
            .get(&id)
            .is_some_and(|t| t.special)
    }

    fn encode_impl(&self, tok: &tokenizers::Tokenizer, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        let enc = tok
            .encode(text, add_special_tokens)
            .map_err(|e| ZayaError::Tokenizer(format!("encoding with {} failed: {e}", self.source)))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Encodes text. Special tokens written in the text (e.g. `<|im_end|>`) become their ids, as in
    /// HF. `add_special_tokens` runs the tokenizer.json post-processor (ZAYA: prepends `<bos>`); use
    /// `false` for text rendered by a chat template, which already carries `bos_token`.
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        self.encode_impl(&self.inner, text, add_special_tokens)
    }

    /// Encodes text with special-token strings treated as ordinary text (HF
    /// `split_special_tokens=True`): for untrusted user text.
    pub fn encode_literal(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        if self.split_special {
            return self.encode(text, add_special_tokens);
        }
        let lit = self.literal.get_or_init(|| {
            let mut t = (*self.inner).clone();
            t.set_encode_special_tokens(true);
            Arc::new(t)
        });
        self.encode_impl(lit, text, add_special_tokens)
    }

    fn check_ids(&self, ids: &[u32]) -> Result<()> {
        let v = self.vocab_size();
        match ids.iter().find(|&&id| id as usize >= v) {
            Some(id) => Err(ZayaError::InvalidArgument(format!(
                "token id {id} is out of range (vocabulary size {v})"
            ))),
            None => Ok(()),
        }
    }

    /// Decodes ids to text. Ids outside the vocabulary are an `InvalidArgument` error.
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        self.check_ids(ids)?;
        self.inner
            .decode(ids, skip_special_tokens)
            .map_err(|e| ZayaError::Tokenizer(format!("decoding with {} failed: {e}", self.source)))
    }

    /// A new incremental detokenizer.
    pub fn stream_decoder(&self, skip_special_tokens: bool) -> StreamDecoder {
        StreamDecoder::new(self.clone(), skip_special_tokens)
    }
}
