//! Multi-turn sessions: the cache, the tokens and text it holds, the conversation, prompt-cache files.
use std::path::Path;
use std::time::Instant;

use mlx_rs::Array;

use crate::error::{Result, ZayaError};
use crate::model::cache::ModelCache;
use crate::model::{ForwardOptions, LogitsMode};
use crate::runtime::prompt_cache::{self, PromptCacheRef};
use crate::text::chat::{ChatOptions, ChatTemplate, Message};

use super::*;

/// Cache state at a known text / token position.
pub(super) struct Snapshot {
    pub(super) tokens: usize,
    pub(super) text: usize,
    pub(super) cache: ModelCache,
}

/// A conversation with one model: the cache, the token ids it holds, the chat history.
pub struct Session<'m> {
    pub(super) zaya: &'m Zaya,
    pub(super) cache: ModelCache,
    /// Ids in the cache, in order (`cache.offset()` of them).
    pub(super) tokens: Vec<u32>,
    /// Chat mode: the text the cache holds (a prefix of the rendered conversation). `None` once
    /// raw tokens were fed.
    pub(super) text: Option<String>,
    /// The last sampled token, not yet in the cache.
    pub(super) pending: Option<u32>,
    pub(super) messages: Vec<Message>,
    pub(super) chat_options: ChatOptions,
    pub(super) snapshot: Option<Snapshot>,
}

impl std::fmt::Debug for Session<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("offset", &self.tokens.len())
            .field("messages", &self.messages.len())
            .field("pending", &self.pending)
            .finish()
    }
}

/// What the prompt part of a generation call fed.
pub(super) struct Prefill {
    pub(super) logits: Array,
    pub(super) prompt_tokens: usize,
    pub(super) reused_tokens: usize,
}

/// How a finished generation is recorded.
pub(super) enum Mode {
    /// Append an assistant message: `prefix` (the generation prompt after the assistant header)
    /// + the reply.
    Chat {
        prefix: String,
    },
    Raw,
}

impl<'m> Session<'m> {
    /// An empty session on `zaya`.
    pub fn new(zaya: &'m Zaya) -> Self {
        Session {
            zaya,
            cache: zaya.model.new_cache(),
            tokens: Vec::new(),
            text: Some(String::new()),
            pending: None,
            messages: Vec::new(),
            chat_options: ChatOptions::default(),
            snapshot: None,
        }
    }

    /// The model.
    pub fn zaya(&self) -> &'m Zaya {
        self.zaya
    }

    /// Chat template options used for every turn (`enable_thinking`, extra variables, tools...).
    /// `add_generation_prompt` and `continue_final_message` are set by the session.
    pub fn set_chat_options(&mut self, options: ChatOptions) {
        self.chat_options = options;
    }

    /// The chat template options.
    pub fn chat_options(&self) -> &ChatOptions {
        &self.chat_options
    }

    /// Sets (or with `None` removes) the system message at the start of the conversation.
    pub fn set_system_prompt(&mut self, system: Option<&str>) {
        if self.messages.first().is_some_and(|m| m.role == "system") {
            self.messages.remove(0);
        }
        if let Some(s) = system {
            self.messages.insert(0, Message::system(s));
        }
    }

    /// Appends a message to the history without generating (e.g. an earlier conversation).
    pub fn push_message(&mut self, message: Message) {
        self.messages.push(message);
    }

    /// The conversation so far.
    pub fn messages(&self) -> &[Message] {
        &self.messages
    }

    /// Token ids in the cache.
    pub fn tokens(&self) -> &[u32] {
        &self.tokens
    }

    /// The last sampled token, which is not in the cache yet (fed by the next call).
    pub fn pending_token(&self) -> Option<u32> {
        self.pending
    }

    /// Positions in the cache.
    pub fn offset(&self) -> usize {
        self.tokens.len()
    }

    /// The model cache.
    pub fn cache(&self) -> &ModelCache {
        &self.cache
    }

    /// Forgets the conversation (history and system prompt) and empties the cache.
    pub fn reset(&mut self) {
        self.messages.clear();
        self.clear_cache();
    }

    /// Empties the cache but keeps the history (the next turn re-prefills it).
    pub fn clear_cache(&mut self) {
        self.cache.reset();
        self.tokens.clear();
        self.text = Some(String::new());
        self.pending = None;
        self.snapshot = None;
    }

    /// Sends `message` (a user message when given text) and starts generating the assistant's
    /// answer with the chat template. Only the part of the rendered conversation the cache does
    /// not hold yet is prefilled (see the module docs).
    pub fn chat(&mut self, message: impl IntoMessage, params: &GenParams) -> Result<Generation<'_, 'm>> {
        self.messages.push(message.into_message());
        match self.prefill_chat(params) {
            Ok((pre, mode, start)) => Generation::new(self, params, pre, mode, start),
            Err(e) => {
                self.messages.pop();
                Err(e)
            }
        }
    }

    /// Generates the assistant's answer to the history as it is (after [`Session::push_message`]).
    pub fn chat_continue(&mut self, params: &GenParams) -> Result<Generation<'_, 'm>> {
        let (pre, mode, start) = self.prefill_chat(params)?;
        Generation::new(self, params, pre, mode, start)
    }

    /// Renders the conversation, feeds what the cache lacks and returns the last logits.
    fn prefill_chat(&mut self, params: &GenParams) -> Result<(Prefill, Mode, Instant)> {
        let start = Instant::now();
        params.validate()?;
        let (tpl, tok, mut opts) = self.chat_parts()?;
        opts.add_generation_prompt = true;
        let full = tpl.render_messages(&self.messages, &opts)?;
        self.check_text(&full)?;
        opts.add_generation_prompt = false;
        let hist = tpl.render_messages(&self.messages, &opts)?;
        let split = if full.starts_with(&hist) { hist.len() } else { 0 };
        let prefix = generation_prefix(tpl, &self.messages, &opts, &hist, &full[split..])?;

        // what the cache can keep
        self.pending = None;
        let reuse_from = self.reusable_text_len(&full);
        let reused_tokens = self.tokens.len();
        let feed_from = reuse_from;
        // pieces: history up to the split (snapshot there), then the generation prompt
        let mut pieces: Vec<(&str, bool)> = Vec::new();
        if feed_from < split {
            pieces.push((&full[feed_from..split], true));
        }
        let tail_from = feed_from.max(split);
        if tail_from < full.len() {
            pieces.push((&full[tail_from..], false));
        }
        let encoded: Vec<(Vec<u32>, &str, bool)> = pieces
            .into_iter()
            .map(|(t, snap)| Ok((tok.encode(t, false)?, t, snap)))
            .collect::<Result<_>>()?;
        let new_tokens: usize = encoded.iter().map(|e| e.0.len()).sum();
        if new_tokens == 0 {
            return Err(ZayaError::InvalidArgument(
                "the chat template rendered nothing new to feed for this turn".into(),
            ));
        }
        self.check_context(new_tokens)?;
        let n = encoded.len();
        let mut logits = None;
        for (i, (ids, text, snap_after)) in encoded.into_iter().enumerate() {
            let last = i + 1 == n;
            logits = self.feed(&ids, Some(text), last, params.prefill_chunk)?;
            if snap_after {
                self.snapshot = Some(Snapshot {
                    tokens: self.tokens.len(),
                    text: self.text.as_ref().map_or(0, String::len),
                    cache: self.cache.snapshot(),
                });
            }
        }
        let logits = logits.expect("the last piece returns logits");
        Ok((
            Prefill {
                logits,
                prompt_tokens: new_tokens,
                reused_tokens,
            },
            Mode::Chat { prefix },
            start,
        ))
    }

    /// Continues the cache with raw text (no chat template). `<bos>` is added (by the tokenizer's
    /// post-processor) only on an empty cache and when the text does not start with it, as mlx_lm
    /// does. After raw input the cache no longer matches a rendered conversation: a later
    /// [`Session::chat`] re-prefills the conversation from an empty cache.
    pub fn generate(&mut self, prompt: &str, params: &GenParams) -> Result<Generation<'_, 'm>> {
        let tok = self.zaya.tokenizer_or_err("text generation")?;
        let add_special = self.needs_bos(tok, prompt);
        self.check_text(prompt)?;
        let ids = tok.encode(prompt, add_special)?;
        self.generate_from_tokens(&ids, params)
    }

    /// Continues the cache with token ids (the pending token of the previous generation, if any,
    /// is fed first) and starts generating.
    pub fn generate_from_tokens(&mut self, tokens: &[u32], params: &GenParams) -> Result<Generation<'_, 'm>> {
        let start = Instant::now();
        params.validate()?;
        let mut ids = Vec::with_capacity(tokens.len() + 1);
        ids.extend(self.pending);
        ids.extend_from_slice(tokens);
        if ids.is_empty() {
            return Err(ZayaError::InvalidArgument("empty prompt: no token ids to feed".into()));
        }
        let vocab = self.zaya.model.config().vocab_size;
        if let Some(&bad) = ids.iter().find(|&&i| i as usize >= vocab) {
            return Err(ZayaError::InvalidArgument(format!(
                "token id {bad} is outside the vocabulary (0..{vocab})"
            )));
        }
        self.check_context(ids.len())?;
        let reused_tokens = self.tokens.len();
        self.pending = None;
        self.text = None;
        self.snapshot = None;
        let logits = self
            .feed(&ids, None, true, params.prefill_chunk)?
            .expect("logits requested");
        let pre = Prefill {
            logits,
            prompt_tokens: ids.len(),
            reused_tokens,
        };
        Generation::new(self, params, pre, Mode::Raw, start)
    }

    /// Renders the conversation so far without the generation prompt and feeds what the cache
    /// lacks (e.g. a long document as a user message, to save with
    /// [`save_prompt_cache`](Self::save_prompt_cache) and ask about later). Returns the number of
    /// tokens fed.
    pub fn prefill_history(&mut self, chunk: Option<usize>) -> Result<usize> {
        let (tpl, tok, opts) = self.chat_parts()?;
        let hist = tpl.render_messages(&self.messages, &opts)?;
        self.check_text(&hist)?;
        self.pending = None;
        let from = self.reusable_text_len(&hist);
        let ids = tok.encode(&hist[from..], false)?;
        self.check_context(ids.len())?;
        self.feed(&ids, Some(&hist[from..]), false, chunk)?;
        Ok(ids.len())
    }

    /// Feeds raw text (no chat template; `<bos>` on an empty cache as [`generate`](Self::generate)
    /// adds it) without generating. Returns the number of tokens fed.
    pub fn prefill_text(&mut self, text: &str, chunk: Option<usize>) -> Result<usize> {
        let tok = self.zaya.tokenizer_or_err("text prefill")?;
        let add_special = self.needs_bos(tok, text);
        self.check_text(text)?;
        let mut ids: Vec<u32> = self.pending.take().into_iter().collect();
        ids.extend(tok.encode(text, add_special)?);
        if ids.is_empty() {
            return Err(ZayaError::InvalidArgument("empty prompt: nothing to feed".into()));
        }
        self.check_context(ids.len())?;
        self.text = None;
        self.snapshot = None;
        self.feed(&ids, None, false, chunk)?;
        Ok(ids.len())
    }

    /// Saves the session to a prompt-cache file (see [`crate::runtime::prompt_cache`]): the model state, its
    /// token ids and the conversation, atomically. Refuses a path inside the model's bundle.
    pub fn save_prompt_cache(&self, path: impl AsRef<Path>) -> Result<()> {
        let state = serde_json::json!({
            "text": self.text,
            "pending": self.pending,
            "messages": self.messages,
        });
        let fp = match (&self.text, &self.zaya.template) {
            (Some(_), Some(t)) => Some(t.fingerprint()),
            _ => None,
        };
        prompt_cache::save(
            path.as_ref(),
            &self.zaya.model,
            PromptCacheRef {
                cache: &self.cache,
                tokens: &self.tokens,
                chat_template: fp.as_deref(),
                session: Some(&state),
            },
            self.zaya.dir.as_deref(),
        )
    }

    /// Replaces the session's state with a prompt-cache file's: the cache, its tokens and, when the
    /// file was saved by a session, the conversation. A file saved from a chat session whose chat
    /// template differs from this model's is refused.
    pub fn load_prompt_cache(&mut self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let pc = prompt_cache::load(path, &self.zaya.model)?;
        let bad = |m: String| ZayaError::PromptCache {
            file: path.to_path_buf(),
            msg: m,
        };
        let state = pc.session.unwrap_or(serde_json::Value::Null);
        let text: Option<String> = match state.get("text") {
            Some(v) => serde_json::from_value(v.clone()).map_err(|e| bad(format!("session text: {e}")))?,
            None => None,
        };
        if text.is_some() {
            let ours = self.zaya.template.as_ref().map(ChatTemplate::fingerprint);
            if let (Some(theirs), Some(ours)) = (&pc.chat_template, &ours) {
                if theirs != ours {
                    return Err(bad(
                        "the cached conversation was rendered by another chat template".into()
                    ));
                }
            }
        }
        let messages: Vec<Message> = match state.get("messages") {
            Some(v) => serde_json::from_value(v.clone()).map_err(|e| bad(format!("session messages: {e}")))?,
            None => Vec::new(),
        };
        let pending: Option<u32> = match state.get("pending") {
            Some(v) => serde_json::from_value(v.clone()).map_err(|e| bad(format!("session pending token: {e}")))?,
            None => None,
        };
        let vocab = self.zaya.model.config().vocab_size;
        if pending.is_some_and(|p| p as usize >= vocab) {
            return Err(bad("pending token outside the vocabulary".into()));
        }
        self.cache = pc.cache;
        self.tokens = pc.tokens;
        self.text = text;
        self.pending = pending;
        self.messages = messages;
        self.snapshot = None;
        Ok(())
    }

    /// The chat template, the tokenizer and this session's template options (no generation prompt,
    /// no continued final message), or an error saying which is missing.
    fn chat_parts(&self) -> Result<(&'m ChatTemplate, &'m Tokenizer, ChatOptions)> {
        let zaya = self.zaya;
        let tpl = zaya.template.as_ref().ok_or_else(|| {
            ZayaError::Template(format!(
                "{} has no chat template; use raw generation (--ignore-chat-template)",
                zaya.dir
                    .as_ref()
                    .map_or("the model".to_string(), |d| d.display().to_string())
            ))
        })?;
        let tok = zaya.tokenizer_or_err("chat")?;
        let mut opts = self.chat_options.clone();
        opts.continue_final_message = false;
        opts.add_generation_prompt = false;
        Ok((tpl, tok, opts))
    }

    /// Raw text gets `<bos>` (through the tokenizer's post-processor) only on an empty cache and when
    /// it does not start with it already, as mlx_lm does.
    fn needs_bos(&self, tok: &Tokenizer, text: &str) -> bool {
        let bos_text = tok.special_tokens().bos.as_ref().map(|t| t.content.as_str());
        self.tokens.is_empty() && self.pending.is_none() && !bos_text.is_some_and(|b| text.starts_with(b))
    }

    /// Refuses text too long to fit the context whatever its tokenization (more than 64 bytes per
    /// position of the context, at least 1 MiB), before the tokenizer spends time and memory on it.
    fn check_text(&self, text: &str) -> Result<()> {
        let limit = self.zaya.max_context().saturating_mul(64).max(1 << 20);
        if text.len() > limit {
            return Err(ZayaError::InvalidArgument(format!(
                "the prompt is {} bytes, more than any prompt that fits the context of {} tokens",
                text.len(),
                self.zaya.max_context()
            )));
        }
        Ok(())
    }

    fn check_context(&self, new_tokens: usize) -> Result<()> {
        let limit = self.zaya.max_context();
        let total = self.tokens.len() + new_tokens;
        if total > limit {
            return Err(ZayaError::ContextOverflow { tokens: total, limit });
        }
        Ok(())
    }

    /// Decides how much of the cache `full` (the new rendering) can keep; restores the snapshot
    /// or resets when needed. Returns the text offset from which `full` must be fed.
    fn reusable_text_len(&mut self, full: &str) -> usize {
        if let Some(t) = &self.text {
            if full.starts_with(t.as_str()) {
                return t.len();
            }
        }
        let common = self.text.as_deref().map_or(0, |t| common_prefix_len(t, full));
        match self.snapshot.take() {
            Some(s) if self.text.is_some() && s.text <= common => {
                self.cache.restore(&s.cache);
                self.tokens.truncate(s.tokens);
                if let Some(t) = self.text.as_mut() {
                    t.truncate(s.text);
                }
                s.text
            }
            _ => {
                self.clear_cache();
                0
            }
        }
    }

    /// Feeds `ids` (with the text they came from, in chat mode); returns the last position's
    /// logits `[1, V]` when asked. On failure the cache is cleared (it may hold part of the ids).
    fn feed(&mut self, ids: &[u32], text: Option<&str>, logits: bool, chunk: Option<usize>) -> Result<Option<Array>> {
        if ids.is_empty() {
            return Ok(None);
        }
        let model = &self.zaya.model;
        let out = if logits {
            model.prefill(ids, &mut self.cache, chunk).map(Some)
        } else {
            let arr = Array::from_slice(ids, &[1, ids.len() as i32]);
            model
                .forward_with(
                    &arr,
                    &mut self.cache,
                    ForwardOptions {
                        logits: LogitsMode::None,
                        capture: false,
                        chunk,
                    },
                )
                .map(|_| None)
        };
        match out {
            Ok(l) => {
                self.tokens.extend_from_slice(ids);
                match (self.text.as_mut(), text) {
                    (Some(t), Some(s)) => t.push_str(s),
                    (_, None) => self.text = None,
                    _ => {}
                }
                Ok(l)
            }
            Err(e) => {
                self.clear_cache();
                Err(e)
            }
        }
    }
}

/// The part of the generation prompt that follows the assistant header (`<|im_start|>assistant\n`),
/// found by rendering a marker assistant message: what an assistant message must start with to
/// render exactly as the generation prompt did.
pub(super) fn generation_prefix(
    tpl: &ChatTemplate,
    messages: &[Message],
    opts: &ChatOptions,
    hist: &str,
    gen_prompt: &str,
) -> Result<String> {
    const MARK: &str = "\u{E000}zaya-reply\u{E000}";
    let mut msgs = messages.to_vec();
    msgs.push(Message::assistant(MARK));
    let Ok(rendered) = tpl.render_messages(&msgs, opts) else {
        return Ok(String::new());
    };
    let Some(pos) = rendered.find(MARK) else {
        return Ok(String::new());
    };
    let Some(header) = rendered[..pos].strip_prefix(hist) else {
        return Ok(String::new());
    };
    Ok(gen_prompt.strip_prefix(header).unwrap_or("").to_string())
}

/// Byte length of the longest common prefix of `a` and `b` (on a char boundary).
pub(super) fn common_prefix_len(a: &str, b: &str) -> usize {
    let mut n = 0;
    for ((i, ca), cb) in a.char_indices().zip(b.chars()) {
        if ca != cb {
            return i;
        }
        n = i + ca.len_utf8();
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn common_prefix_respects_char_boundaries() {
        assert_eq!(common_prefix_len("abc", "abd"), 2);
        assert_eq!(common_prefix_len("aé", "aè"), 1);
        assert_eq!(common_prefix_len("aé", "aéx"), 3);
        assert_eq!(common_prefix_len("", "x"), 0);
    }
}
