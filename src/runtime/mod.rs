//! Generation: a loaded model ([`Zaya`]: model, tokenizer, chat template, EOS ids, in this file),
//! multi-turn [`Session`]s that keep the model cache (KV and CCA states) across turns and save it to
//! prompt-cache files (`session.rs`), the streaming decode loop ([`Generation`], an iterator of
//! [`GenToken`]s, plain or speculative steps: `generation.rs`), and the settings, stop conditions
//! ([`FinishReason`]) and statistics ([`GenStats`]) of one generation (`params.rs`).
//!
//! # Example
//!
//! A two-turn chat on the tiny synthetic bundle (random weights, so the text is gibberish):
//!
//! ```
//! use zaya_mlx::runtime::{GenParams, Zaya};
//! use zaya_mlx::model::ModelOptions;
//! use zaya_mlx::tools::synth::{write_bundle, SynthOptions, SynthSpec};
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
use std::path::{Path, PathBuf};

use crate::error::{Result, ZayaError};
use crate::model::{ModelOptions, ZayaModel};
use crate::text::chat::ChatTemplate;
use crate::text::tokenizer::Tokenizer;

pub mod engine;
mod generation;
pub mod hub;
pub mod memory;
mod params;
pub mod prompt_cache;
pub mod sampling;
mod session;
pub mod speculative;

pub use generation::Generation;
pub use params::{FinishReason, GenParams, GenStats, GenToken, IntoMessage, LogitsProcessor};
pub use session::Session;

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
    /// Loads the bundle in `dir` (a directory, or a Hugging Face repo id: see [`crate::runtime::hub`]): the
    /// model (see [`ZayaModel::load`]), `tokenizer.json` /
    /// `tokenizer_config.json` and the chat template when present. A bundle without
    /// `tokenizer.json` still generates from token ids ([`Session::generate_from_tokens`]).
    pub fn load(dir: impl AsRef<Path>, options: ModelOptions) -> Result<Self> {
        let given = dir.as_ref();
        // a Hugging Face repo id (`owner/name`) that is not a local path: the hub cache or a download
        let resolved = match given.to_str() {
            Some(s) if !given.exists() && crate::runtime::hub::looks_like_repo_id(s) => {
                crate::runtime::hub::resolve(s)?
            }
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
    pub(crate) fn vocab_limit(&self) -> Option<usize> {
        let v = self.model.config().vocab_size;
        self.tokenizer
            .as_ref()
            .map(Tokenizer::vocab_size)
            .filter(|&n| n > 0 && n < v)
    }
}
