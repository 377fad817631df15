//! Generation: a loaded model ([`Zaya`]: model, tokenizer, chat template, EOS ids), multi-turn
//! [`Session`]s that keep the model cache (KV and CCA states) across turns, the streaming decode
//! loop ([`Generation`], an iterator of [`GenToken`]s), stop conditions ([`FinishReason`]) and
//! statistics ([`GenStats`]).
//!
//! # Example
//!
//! A two-turn chat on the tiny synthetic bundle (random weights, so the text is gibberish):
//!
//! ```
//! use zaya_mlx::generate::{GenParams, Zaya};
//! use zaya_mlx::model::ModelOptions;
//! use zaya_mlx::synth::{write_bundle, SynthOptions, SynthSpec};
//!
//! # fn main() -> zaya_mlx::Result<()> {
//! let dir = tempfile::tempdir().unwrap();
//! write_bundle(&SynthSpec::preset("tiny")?, dir.path(), &SynthOptions::default())?;
//!
//! let zaya = Zaya::load(dir.path(), ModelOptions::default())?; // load once
//! let mut session = zaya.session();
//! let params = GenParams { max_tokens: Some(8), ..GenParams::default() };
//!
//! // stream the first answer token by token
//! let mut gen = session.chat("Hello!", &params)?;
//! for step in gen.by_ref() {
//!     let step = step?;
//!     print!("{}", step.text); // text deltas; `step.id` is the token id
//!     if let Some(reason) = &step.finish {
//!         println!("\n[{reason}]");
//!     }
//! }
//! let stats = gen.stats();
//! assert!(stats.generation_tokens >= 1 && stats.generation_tokens <= 8);
//! drop(gen);
//!
//! // the second turn feeds only its new templated suffix: earlier turns stay in the cache
//! let before = session.offset();
//! let (text, stats) = session.chat("Tell me more.", &params)?.collect_text()?;
//! assert_eq!(stats.reused_tokens, before);
//! println!("{text}");
//! # Ok(())
//! # }
//! ```
//!
//! # Multi-turn cache reuse
//!
//! A chat template renders the whole conversation. Each turn the session renders it again (with the
//! new message and the generation prompt) and compares the result, as text, with the text its cache
//! already holds (everything it fed so far: earlier prompts and the reply tokens it fed back). When
//! the cache's text is a prefix of the new rendering — the normal case — only the rest is tokenized
//! and prefilled; earlier turns are never processed again. To make that hold, an assistant turn is
//! recorded in the history exactly as the model saw it: the part of the generation prompt after the
//! assistant header (e.g. a closed `<think>\n\n</think>\n\n` block when thinking is off) followed by
//! the reply text (EOS not included, a stop string and what follows it cut off). The end-of-turn
//! token that ended the reply is fed with the next turn, as the template renders it.
//!
//! When the template renders history differently from what the cache holds (a template that strips
//! the reasoning of earlier turns, a reply cut by a stop string or in the middle of a UTF-8
//! character), the session re-prefills from the first differing point it can reach: the CCA conv
//! state and `prev_hs` are recurrent and cannot be rolled back token by token, so it restores the
//! cache snapshot taken at the end of the previous turn's history (just before its generation
//! prompt) when that snapshot lies before the difference, and otherwise starts over from an empty
//! cache. [`GenStats::reused_tokens`] says how many cached tokens a turn reused. The snapshot shares
//! arrays with the live cache until the next update, which then copies the KV buffers once: a chat
//! session holds up to two copies of its KV cache.
//!
//! # Stopping
//!
//! Generation stops at the first of: an EOS id (config.json + generation_config.json + the
//! tokenizer's `eos_token` and end-of-turn token + [`GenParams::extra_eos`]; not printed), a stop
//! string (also when it straddles tokens; not printed, nor anything after it), the token limit, the
//! context limit (`max_position_embeddings`: the last token that fits is returned with
//! [`FinishReason::ContextLimit`]; a prompt that does not fit is a [`ZayaError::ContextOverflow`]
//! before anything runs), or cancellation ([`GenParams::cancel`]). Token ids the tokenizer cannot
//! decode (the padding rows of a vocabulary larger than the tokenizer's) are never sampled.
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mlx_rs::ops::indexing::IndexOp;
use mlx_rs::Array;

use crate::cache::ModelCache;
use crate::chat::{ChatOptions, ChatTemplate, Message};
use crate::error::{Result, ZayaError};
use crate::model::{ForwardOptions, LogitsMode, ModelOptions, ZayaModel};
use crate::prompt_cache::{self, PromptCacheRef};
use crate::sampling::{Sampler, SamplingParams};
use crate::speculative::{ngram_draft, DraftParams, DraftStats};
use crate::tokenizer::{StopMatcher, StopReason, TextStream, Tokenizer};

/// A model loaded once for generation: the network, its tokenizer and chat template when the
/// bundle has them, and the merged EOS ids. Create [`Session`]s from it.
pub struct Zaya {
    model: ZayaModel,
    tokenizer: Option<Tokenizer>,
    template: Option<ChatTemplate>,
    eos_ids: Vec<u32>,
    dir: Option<PathBuf>,
}

impl std::fmt::Debug for Zaya {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Zaya")
            .field("dir", &self.dir)
            .field("tokenizer", &self.tokenizer.is_some())
            .field("chat_template", &self.template.is_some())
            .field("eos_ids", &self.eos_ids)
            .finish()
    }
}

impl Zaya {
    /// Loads the bundle in `dir` (a directory, or a Hugging Face repo id: see [`crate::hub`]): the
    /// model (see [`ZayaModel::load`]), `tokenizer.json` /
    /// `tokenizer_config.json` and the chat template when present. A bundle without
    /// `tokenizer.json` still generates from token ids ([`Session::generate_from_tokens`]).
    pub fn load(dir: impl AsRef<Path>, options: ModelOptions) -> Result<Self> {
        let given = dir.as_ref();
        // a Hugging Face repo id (`owner/name`) that is not a local path: the hub cache or a download
        let resolved = match given.to_str() {
            Some(s) if !given.exists() && crate::hub::looks_like_repo_id(s) => crate::hub::resolve(s)?,
            _ => given.to_path_buf(),
        };
        let dir = resolved.as_path();
        let model = ZayaModel::load(dir, options)?;
        let tokenizer = if dir.join("tokenizer.json").exists() {
            Some(Tokenizer::from_dir(dir)?)
        } else {
            None
        };
        let template = if tokenizer.is_some() {
            ChatTemplate::from_dir(dir)?
        } else {
            None
        };
        let mut z = Self::from_parts(model, tokenizer, template);
        z.dir = Some(dir.to_path_buf());
        Ok(z)
    }

    /// Assembles a loaded model from its parts. EOS ids: the model config's (config.json merged
    /// with generation_config.json) plus the tokenizer's `eos_token` and end-of-turn token.
    pub fn from_parts(model: ZayaModel, tokenizer: Option<Tokenizer>, template: Option<ChatTemplate>) -> Self {
        let mut eos_ids = model.config().eos_token_ids.clone();
        if let Some(t) = &tokenizer {
            for id in t.eos_ids() {
                if !eos_ids.contains(&id) {
                    eos_ids.push(id);
                }
            }
        }
        Zaya {
            model,
            tokenizer,
            template,
            eos_ids,
            dir: None,
        }
    }

    /// The network.
    pub fn model(&self) -> &ZayaModel {
        &self.model
    }

    /// The tokenizer, when the bundle has one.
    pub fn tokenizer(&self) -> Option<&Tokenizer> {
        self.tokenizer.as_ref()
    }

    /// The chat template, when the bundle has one.
    pub fn chat_template(&self) -> Option<&ChatTemplate> {
        self.template.as_ref()
    }

    /// Ids that end generation (before [`GenParams::extra_eos`]).
    pub fn eos_ids(&self) -> &[u32] {
        &self.eos_ids
    }

    /// The bundle directory, when loaded from one.
    pub fn dir(&self) -> Option<&Path> {
        self.dir.as_deref()
    }

    /// The context limit (`max_position_embeddings`).
    pub fn max_context(&self) -> usize {
        self.model.config().max_position_embeddings
    }

    /// A new, empty session.
    pub fn session(&self) -> Session<'_> {
        Session::new(self)
    }

    fn tokenizer_or_err(&self, what: &str) -> Result<&Tokenizer> {
        self.tokenizer.as_ref().ok_or_else(|| {
            ZayaError::Tokenizer(format!(
                "{what} needs a tokenizer but {} has no tokenizer.json",
                self.dir
                    .as_ref()
                    .map_or("the model".to_string(), |d| d.display().to_string())
            ))
        })
    }

    /// Number of ids the sampler may pick: the tokenizer's vocabulary when it is smaller than the
    /// model's (the rest are padding rows it cannot decode), else `None` (all of them).
    fn vocab_limit(&self) -> Option<usize> {
        let v = self.model.config().vocab_size;
        self.tokenizer
            .as_ref()
            .map(Tokenizer::vocab_size)
            .filter(|&n| n > 0 && n < v)
    }
}

/// A function applied to the logits before sampling (e.g. constrained decoding): gets the token
/// ids before the position being predicted (everything the cache holds) and the logits `[1, V]`
/// (f32), returns new logits of the same shape.
pub type LogitsProcessor = Arc<dyn Fn(&[u32], &Array) -> Result<Array> + Send + Sync>;

/// Settings of one generation.
#[derive(Clone)]
pub struct GenParams {
    /// Most tokens to generate (EOS included); `None` = until another stop. Default 100.
    pub max_tokens: Option<usize>,
    /// Sampling settings (greedy by default).
    pub sampling: SamplingParams,
    /// Stop strings: generation ends when the text contains one (not printed).
    pub stop: Vec<String>,
    /// Extra EOS ids.
    pub extra_eos: Vec<u32>,
    /// Do not stop on EOS ids (they are then decoded like any token).
    pub ignore_eos: bool,
    /// Prefill chunk size in positions (`None` = the model's).
    pub prefill_chunk: Option<usize>,
    /// Leave special tokens out of the streamed text (the history keeps them). Default false:
    /// like mlx_lm, every token but EOS is shown.
    pub skip_special_tokens: bool,
    /// When set to true (e.g. from a Ctrl-C handler), the next token ends the generation with
    /// [`FinishReason::Cancelled`].
    pub cancel: Option<Arc<AtomicBool>>,
    /// Applied in order to the logits before sampling.
    pub logits_processors: Vec<LogitsProcessor>,
    /// Speculative decoding with n-gram (prompt lookup) drafts; `None` = plain decoding. Greedy
    /// output is the same either way; sampled output has the same distribution.
    pub draft: Option<DraftParams>,
}

impl Default for GenParams {
    fn default() -> Self {
        GenParams {
            max_tokens: Some(100),
            sampling: SamplingParams::default(),
            stop: Vec::new(),
            extra_eos: Vec::new(),
            ignore_eos: false,
            prefill_chunk: None,
            skip_special_tokens: false,
            cancel: None,
            logits_processors: Vec::new(),
            draft: None,
        }
    }
}

impl std::fmt::Debug for GenParams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GenParams")
            .field("max_tokens", &self.max_tokens)
            .field("sampling", &self.sampling)
            .field("stop", &self.stop)
            .field("extra_eos", &self.extra_eos)
            .field("ignore_eos", &self.ignore_eos)
            .field("prefill_chunk", &self.prefill_chunk)
            .field("skip_special_tokens", &self.skip_special_tokens)
            .field("cancel", &self.cancel.is_some())
            .field("logits_processors", &self.logits_processors.len())
            .field("draft", &self.draft)
            .finish()
    }
}

impl GenParams {
    /// Checks the values (the messages name the CLI flags).
    pub fn validate(&self) -> Result<()> {
        if self.max_tokens == Some(0) {
            return Err(ZayaError::InvalidArgument(
                "--max-tokens must be positive (use -1 for no limit)".into(),
            ));
        }
        if self.prefill_chunk == Some(0) {
            return Err(ZayaError::InvalidArgument("--prefill-chunk must be positive".into()));
        }
        if self.stop.iter().any(String::is_empty) {
            return Err(ZayaError::InvalidArgument(
                "--stop: a stop string must not be empty".into(),
            ));
        }
        if let Some(d) = &self.draft {
            d.validate()?;
        }
        self.sampling.validate()
    }
}

/// Why a generation ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FinishReason {
    /// This EOS id was sampled.
    Eos(u32),
    /// This stop string was produced.
    StopString(String),
    /// [`GenParams::max_tokens`] tokens were generated.
    MaxTokens,
    /// The cache reached `max_position_embeddings`: no further token fits.
    ContextLimit,
    /// [`GenParams::cancel`] was set.
    Cancelled,
}

impl FinishReason {
    /// OpenAI / mlx_lm style name: `stop` (EOS or stop string), `length` (max tokens or context),
    /// `cancelled`.
    pub fn as_str(&self) -> &'static str {
        match self {
            FinishReason::Eos(_) | FinishReason::StopString(_) => "stop",
            FinishReason::MaxTokens | FinishReason::ContextLimit => "length",
            FinishReason::Cancelled => "cancelled",
        }
    }
}

impl std::fmt::Display for FinishReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FinishReason::Eos(id) => write!(f, "EOS token {id}"),
            FinishReason::StopString(s) => write!(f, "stop string {s:?}"),
            FinishReason::MaxTokens => f.write_str("max tokens"),
            FinishReason::ContextLimit => f.write_str("context limit"),
            FinishReason::Cancelled => f.write_str("cancelled"),
        }
    }
}

/// One generated token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GenToken {
    /// The sampled id.
    pub id: u32,
    /// Text that became printable with this token (often empty: incomplete UTF-8, or text held
    /// back because it may start a stop string). Empty without a tokenizer.
    pub text: String,
    /// Set on the last token.
    pub finish: Option<FinishReason>,
}

/// Statistics of one generation (mlx_lm's definitions).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GenStats {
    /// Tokens prefilled for this generation.
    pub prompt_tokens: usize,
    /// Tokens already in the cache that this generation reused.
    pub reused_tokens: usize,
    /// `prompt_tokens` / time to first token.
    pub prompt_tps: f64,
    /// Tokens generated (EOS included).
    pub generation_tokens: usize,
    /// `generation_tokens` / time since the first token.
    pub generation_tps: f64,
    /// From the start of the call (prompt rendering and prefill) to the first sampled token.
    pub time_to_first_token: Duration,
    /// From the first to the last sampled token.
    pub generation_time: Duration,
    /// MLX allocator peak, bytes (process-wide).
    pub peak_memory: u64,
    /// Peak resident set size of the process, bytes (Linux; `None` elsewhere).
    pub peak_rss: Option<u64>,
    /// Speculative decoding: verify steps, drafted and accepted tokens (zeros without drafting).
    pub draft: DraftStats,
}

impl GenStats {
    /// The larger of the MLX peak and the peak RSS, in bytes: on the CPU backend the weights are
    /// memory-mapped and not counted by MLX's allocator, so RSS is the honest footprint.
    pub fn peak_bytes(&self) -> u64 {
        self.peak_memory.max(self.peak_rss.unwrap_or(0))
    }
}

/// Converts what [`Session::chat`] accepts into a message (`&str` / `String` = a user message).
pub trait IntoMessage {
    fn into_message(self) -> Message;
}
impl IntoMessage for Message {
    fn into_message(self) -> Message {
        self
    }
}
impl IntoMessage for &str {
    fn into_message(self) -> Message {
        Message::user(self)
    }
}
impl IntoMessage for String {
    fn into_message(self) -> Message {
        Message::user(self)
    }
}
impl IntoMessage for &String {
    fn into_message(self) -> Message {
        Message::user(self.as_str())
    }
}

/// Cache state at a known text / token position.
struct Snapshot {
    tokens: usize,
    text: usize,
    cache: ModelCache,
}

/// A conversation with one model: the cache, the token ids it holds, the chat history.
pub struct Session<'m> {
    zaya: &'m Zaya,
    cache: ModelCache,
    /// Ids in the cache, in order (`cache.offset()` of them).
    tokens: Vec<u32>,
    /// Chat mode: the text the cache holds (a prefix of the rendered conversation). `None` once
    /// raw tokens were fed.
    text: Option<String>,
    /// The last sampled token, not yet in the cache.
    pending: Option<u32>,
    messages: Vec<Message>,
    chat_options: ChatOptions,
    snapshot: Option<Snapshot>,
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
struct Prefill {
    logits: Array,
    prompt_tokens: usize,
    reused_tokens: usize,
}

/// How a finished generation is recorded.
enum Mode {
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
        let bos_text = tok.special_tokens().bos.as_ref().map(|t| t.content.as_str());
        let add_special =
            self.tokens.is_empty() && self.pending.is_none() && !bos_text.is_some_and(|b| prompt.starts_with(b));
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
        let zaya = self.zaya;
        let tpl = zaya
            .template
            .as_ref()
            .ok_or_else(|| ZayaError::Template("the model has no chat template".into()))?;
        let tok = zaya.tokenizer_or_err("chat")?;
        let mut opts = self.chat_options.clone();
        opts.continue_final_message = false;
        opts.add_generation_prompt = false;
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
        let bos_text = tok.special_tokens().bos.as_ref().map(|t| t.content.as_str());
        let add_special =
            self.tokens.is_empty() && self.pending.is_none() && !bos_text.is_some_and(|b| text.starts_with(b));
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

    /// Saves the session to a prompt-cache file (see [`crate::prompt_cache`]): the model state, its
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
fn generation_prefix(
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
fn common_prefix_len(a: &str, b: &str) -> usize {
    let mut n = 0;
    for ((i, ca), cb) in a.char_indices().zip(b.chars()) {
        if ca != cb {
            return i;
        }
        n = i + ca.len_utf8();
    }
    n
}

/// A running generation: an iterator of [`GenToken`]s. Holds the session mutably; when it ends
/// (or is dropped early) the session records the turn.
pub struct Generation<'s, 'm> {
    session: &'s mut Session<'m>,
    sampler: Sampler,
    stream: Option<TextStream>,
    eos: Vec<u32>,
    max_tokens: Option<usize>,
    cancel: Option<Arc<AtomicBool>>,
    processors: Vec<LogitsProcessor>,
    vocab_limit: Option<usize>,
    mode: Mode,
    /// Logits of the next position to sample (after prefill or a decode step).
    logits: Option<Array>,
    /// Sampled token that must be fed before the next sample.
    to_feed: Option<u32>,
    generated: Vec<u32>,
    fed: usize,
    last_logits: Option<(usize, Array)>,
    finish: Option<FinishReason>,
    failed: bool,
    recorded: bool,
    start: Instant,
    first_token_at: Option<Instant>,
    last_token_at: Option<Instant>,
    prompt_tokens: usize,
    reused_tokens: usize,
    draft: Option<DraftParams>,
    draft_stats: DraftStats,
    /// Tokens of a speculative step waiting to be yielded.
    queued: VecDeque<GenToken>,
}

impl<'s, 'm> Generation<'s, 'm> {
    fn new(session: &'s mut Session<'m>, params: &GenParams, pre: Prefill, mode: Mode, start: Instant) -> Result<Self> {
        let zaya = session.zaya;
        let mut eos: Vec<u32> = Vec::new();
        if !params.ignore_eos {
            for &id in zaya.eos_ids.iter().chain(&params.extra_eos) {
                if !eos.contains(&id) {
                    eos.push(id);
                }
            }
        }
        let stream = match &zaya.tokenizer {
            Some(t) => Some(TextStream::new(
                t.stream_decoder(params.skip_special_tokens),
                StopMatcher::new(eos.clone(), params.stop.clone())?,
            )),
            None if !params.stop.is_empty() => {
                return Err(ZayaError::InvalidArgument("stop strings need a tokenizer".into()));
            }
            None => None,
        };
        let sampler = Sampler::new(params.sampling.clone())?;
        Ok(Generation {
            session,
            sampler,
            stream,
            eos,
            max_tokens: params.max_tokens,
            cancel: params.cancel.clone(),
            processors: params.logits_processors.clone(),
            vocab_limit: zaya.vocab_limit(),
            mode,
            logits: Some(pre.logits),
            to_feed: None,
            generated: Vec::new(),
            fed: 0,
            last_logits: None,
            finish: None,
            failed: false,
            recorded: false,
            start,
            first_token_at: None,
            last_token_at: None,
            prompt_tokens: pre.prompt_tokens,
            reused_tokens: pre.reused_tokens,
            draft: params.draft,
            draft_stats: DraftStats::default(),
            queued: VecDeque::new(),
        })
    }

    /// Why the generation ended (`None` while it runs).
    pub fn finish_reason(&self) -> Option<&FinishReason> {
        self.finish.as_ref()
    }

    /// Token ids generated so far.
    pub fn tokens(&self) -> &[u32] {
        &self.generated
    }

    /// The raw model logits (`[1, V]` f32, before processors and sampling) the last token was
    /// sampled from, with the position whose logits they are (the index in the session's token
    /// sequence of the token they follow).
    pub fn last_logits(&self) -> Option<(usize, &Array)> {
        self.last_logits.as_ref().map(|(p, a)| (*p, a))
    }

    /// Statistics so far.
    pub fn stats(&self) -> GenStats {
        let ttft = self
            .first_token_at
            .map_or_else(|| self.start.elapsed(), |t| t - self.start);
        let gen_time = match (self.first_token_at, self.last_token_at) {
            (Some(a), Some(b)) => b - a,
            _ => Duration::ZERO,
        };
        let secs = |d: Duration| d.as_secs_f64();
        let n = self.generated.len();
        let rss = crate::bench::process_rss().map(|r| r.1);
        GenStats {
            prompt_tokens: self.prompt_tokens,
            reused_tokens: self.reused_tokens,
            prompt_tps: if secs(ttft) > 0.0 {
                self.prompt_tokens as f64 / secs(ttft)
            } else {
                0.0
            },
            generation_tokens: n,
            generation_tps: if secs(gen_time) > 0.0 {
                n as f64 / secs(gen_time)
            } else {
                0.0
            },
            time_to_first_token: ttft,
            generation_time: gen_time,
            peak_memory: crate::bench::mlx_memory().1,
            peak_rss: rss,
            draft: self.draft_stats,
        }
    }

    /// Runs the generation to the end; returns the text and the statistics.
    pub fn collect_text(mut self) -> Result<(String, GenStats)> {
        let mut text = String::new();
        for step in self.by_ref() {
            text.push_str(&step?.text);
        }
        Ok((text, self.stats()))
    }

    fn step(&mut self) -> Result<GenToken> {
        if let Some(t) = self.queued.pop_front() {
            return Ok(t);
        }
        if let (Some(dp), Some(t0)) = (self.draft, self.to_feed) {
            if let Some(tok) = self.speculative_step(dp, t0)? {
                return Ok(tok);
            }
        }
        let model = &self.session.zaya.model;
        if let Some(t) = self.to_feed.take() {
            let logits = match model.decode_step(t, &mut self.session.cache) {
                Ok(l) => l,
                Err(e) => {
                    // the sampled token was yielded but never fed; the cache may be half-updated
                    self.session.clear_cache();
                    self.fed = 0;
                    return Err(e);
                }
            };
            self.session.tokens.push(t);
            self.fed += 1;
            self.logits = Some(logits);
        }
        let raw = self.logits.take().expect("logits for the next position");
        let x = self.processed(&raw)?;
        let id = self.sampler.sample(&x, &self.session.tokens)?;
        let tok = self.emit(id, raw)?;
        if tok.finish.is_some() {
            self.record();
        }
        Ok(tok)
    }

    /// Raw logits `[1, V]` → the vocabulary-limited, processed row the sampler reads.
    fn processed(&self, raw: &Array) -> Result<Array> {
        let history = &self.session.tokens;
        let mut x = match self.vocab_limit {
            Some(n) => raw.index((.., 0..n as i32)),
            None => raw.clone(),
        };
        for p in &self.processors {
            x = p(history, &x)?;
        }
        Ok(x)
    }

    /// Books a sampled token: statistics, text, stop conditions. Sets `finish` (the caller records
    /// the turn) or makes the token the next one to feed.
    fn emit(&mut self, id: u32, raw: Array) -> Result<GenToken> {
        let now = Instant::now();
        self.first_token_at.get_or_insert(now);
        self.last_token_at = Some(now);
        self.last_logits = Some((self.session.tokens.len().saturating_sub(1), raw));
        self.generated.push(id);

        let (mut text, stop) = match self.stream.as_mut() {
            Some(s) => {
                let out = s.push(id)?;
                (out.text, out.stop)
            }
            None => (String::new(), self.eos.contains(&id).then_some(StopReason::Eos(id))),
        };
        let mut finish = stop.map(|s| match s {
            StopReason::Eos(e) => FinishReason::Eos(e),
            StopReason::StopString(s) => FinishReason::StopString(s),
        });
        if finish.is_none() {
            if self.max_tokens.is_some_and(|m| self.generated.len() >= m) {
                finish = Some(FinishReason::MaxTokens);
            } else if self.cancel.as_ref().is_some_and(|c| c.load(Ordering::Relaxed)) {
                finish = Some(FinishReason::Cancelled);
            } else if self.session.tokens.len() + 1 > self.session.zaya.max_context() {
                finish = Some(FinishReason::ContextLimit);
            }
            if finish.is_some() {
                if let Some(s) = self.stream.as_mut() {
                    text.push_str(&s.finish()?);
                }
            }
        }
        if finish.is_some() {
            self.finish = finish.clone();
        } else {
            self.to_feed = Some(id);
        }
        Ok(GenToken { id, text, finish })
    }

    /// One speculative step after sampling `t0` (not yet fed): drafts up to K tokens by n-gram
    /// lookup, feeds `[t0, drafts]` as one recorded chunk, samples each position in order
    /// (accepting drafts by the acceptance rule) until a draft is rejected, all are accepted or the
    /// generation finishes, then keeps exactly the fed tokens in the cache. Returns the first
    /// token and queues the rest; `None` when there is nothing to draft (plain step then).
    fn speculative_step(&mut self, dp: DraftParams, t0: u32) -> Result<Option<GenToken>> {
        let zaya = self.session.zaya;
        let mut ctx = self.session.tokens.clone();
        ctx.push(t0);
        // room: t0 and the drafts must fit the context
        let room = zaya.max_context().saturating_sub(self.session.tokens.len() + 1);
        let left = self
            .max_tokens
            .map_or(usize::MAX, |m| m.saturating_sub(self.generated.len()));
        let k = dp.num_draft_tokens.min(room).min(left.saturating_sub(1));
        let drafts = ngram_draft(&ctx, k, dp.max_ngram, dp.min_ngram);
        if drafts.is_empty() {
            return Ok(None);
        }
        let limit = self.vocab_limit.unwrap_or(usize::MAX);
        let drafts: Vec<u32> = drafts.into_iter().take_while(|&d| (d as usize) < limit).collect();
        if drafts.is_empty() {
            return Ok(None);
        }
        self.to_feed = None;
        let seq = ctx[ctx.len() - 1..]
            .iter()
            .chain(&drafts)
            .copied()
            .collect::<Vec<u32>>();
        let logits = match zaya.model.forward_recorded(&seq, &mut self.session.cache) {
            Ok(l) => l,
            Err(e) => {
                self.session.clear_cache();
                self.fed = 0;
                return Err(e);
            }
        };
        self.draft_stats.steps += 1;
        self.draft_stats.drafted += drafts.len();
        // t0 is in the cache now; each accepted draft joins it as the loop goes on
        self.session.tokens.push(t0);
        let mut kept = 1;
        let mut out = Vec::new();
        let result = (|| -> Result<()> {
            for (i, row) in (0..=drafts.len()).map(|i| (i, logits.index(i as i32..i as i32 + 1))) {
                let x = self.processed(&row)?;
                let (id, accepted) = match drafts.get(i) {
                    Some(&d) => self.sampler.sample_draft(&x, &self.session.tokens, d)?,
                    None => (self.sampler.sample(&x, &self.session.tokens)?, false),
                };
                let tok = self.emit(id, row)?;
                let done = tok.finish.is_some();
                out.push(tok);
                if accepted {
                    self.draft_stats.accepted += 1;
                }
                if done || !accepted {
                    break;
                }
                // an accepted draft is already in the cache
                self.to_feed = None;
                self.session.tokens.push(id);
                kept += 1;
            }
            Ok(())
        })();
        let rolled = result.and_then(|()| self.session.cache.keep_recorded(kept));
        if let Err(e) = rolled {
            self.session.clear_cache();
            self.fed = 0;
            return Err(e);
        }
        self.fed += kept;
        if self.finish.is_some() {
            self.record();
        }
        let mut it = out.into_iter();
        let first = it.next();
        self.queued.extend(it);
        Ok(first)
    }

    /// Records the turn in the session (once): the pending token and, in chat mode, the
    /// assistant message and the text the cache now holds.
    fn record(&mut self) {
        if self.recorded {
            return;
        }
        self.recorded = true;
        let last = self.generated.last().copied();
        if self.failed {
            self.session.pending = None;
        } else {
            // the last sampled token is never fed by this generation
            self.session.pending = self.to_feed.take().or(last);
        }
        let Mode::Chat { prefix } = &self.mode else { return };
        let Some(tok) = self.session.zaya.tokenizer.as_ref() else {
            return;
        };
        let fed = &self.generated[..self.fed.min(self.generated.len())];
        match tok.decode(fed, false) {
            Ok(t) => {
                if let Some(s) = self.session.text.as_mut() {
                    s.push_str(&t);
                }
            }
            Err(_) => self.session.text = None, // cannot happen with in-vocabulary ids
        }
        let mut reply_ids: &[u32] = &self.generated;
        if let Some(FinishReason::Eos(_)) = self.finish {
            reply_ids = &reply_ids[..reply_ids.len() - 1];
        }
        let mut reply = tok.decode(reply_ids, false).unwrap_or_default();
        if let Some(FinishReason::StopString(s)) = &self.finish {
            if let Some(p) = reply.find(s.as_str()) {
                reply.truncate(p);
            }
        }
        self.session
            .messages
            .push(Message::assistant(format!("{prefix}{reply}")));
    }
}

impl Iterator for Generation<'_, '_> {
    type Item = Result<GenToken>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.queued.is_empty() && (self.finish.is_some() || self.failed) {
            return None;
        }
        match self.step() {
            Ok(t) => Some(Ok(t)),
            Err(e) => {
                self.failed = true;
                self.record();
                Some(Err(e))
            }
        }
    }
}

impl Drop for Generation<'_, '_> {
    fn drop(&mut self) {
        self.record();
    }
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

    #[test]
    fn finish_reason_names() {
        assert_eq!(FinishReason::Eos(1).as_str(), "stop");
        assert_eq!(FinishReason::StopString("x".into()).as_str(), "stop");
        assert_eq!(FinishReason::MaxTokens.as_str(), "length");
        assert_eq!(FinishReason::ContextLimit.as_str(), "length");
        assert_eq!(FinishReason::Cancelled.as_str(), "cancelled");
    }

    #[test]
    fn params_validation_names_flags() {
        let p = GenParams {
            max_tokens: Some(0),
            ..GenParams::default()
        };
        assert!(p.validate().unwrap_err().to_string().contains("--max-tokens"));
        let p = GenParams {
            stop: vec![String::new()],
            ..GenParams::default()
        };
        assert!(p.validate().unwrap_err().to_string().contains("--stop"));
        let mut p = GenParams::default();
        p.sampling.top_p = 0.0;
        assert!(p.validate().unwrap_err().to_string().contains("--top-p"));
        assert!(GenParams::default().validate().is_ok());
    }
}
