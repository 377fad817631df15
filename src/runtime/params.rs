//! Settings, results and statistics of one generation.
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use mlx_rs::Array;

use crate::error::{Result, ZayaError};
use crate::runtime::sampling::SamplingParams;
use crate::runtime::speculative::{DraftParams, DraftStats};
use crate::text::chat::Message;

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

/// Converts what [`Session::chat`](crate::runtime::Session::chat) accepts into a message (`&str` / `String` = a user message).
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

#[cfg(test)]
mod tests {
    use super::*;

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
