//! Streaming text out of the decode loop: the incremental, UTF-8-safe detokenizer
//! ([`StreamDecoder`]), the stop handling ([`StopMatcher`]: EOS ids and stop strings that may
//! straddle tokens), and the two combined for the decode loop in [`TextStream`].
use crate::error::{Result, ZayaError};
use crate::text::tokenizer::Tokenizer;

/// Incremental detokenizer: push ids one at a time, get back only text that is complete and
/// final. Works by decoding a short window of ids (the last emitted tokens as left context plus the
/// pending ones) and emitting the new suffix once it no longer ends in U+FFFD (an incomplete UTF-8
/// sequence, from byte-level BPE bytes or `<0xNN>` byte-fallback tokens). The same scheme keeps
/// SentencePiece `▁` spacing right, since the context token absorbs any start-of-text stripping.
/// The concatenation of everything returned (plus [`StreamDecoder::finish`]) equals
/// `decode(all ids)` for tokenizers whose decoding is prefix-stable (byte-level, byte-fallback,
/// Metaspace).
#[derive(Debug, Clone)]
pub struct StreamDecoder {
    tok: Tokenizer,
    skip_special: bool,
    /// Window: `ids[..prefix_len]` is emitted left context, the rest is pending.
    ids: Vec<u32>,
    prefix_len: usize,
    /// `decode(ids[..prefix_len])`.
    prefix: String,
}

impl StreamDecoder {
    /// A decoder over `tok`.
    pub fn new(tok: Tokenizer, skip_special_tokens: bool) -> Self {
        StreamDecoder {
            tok,
            skip_special: skip_special_tokens,
            ids: Vec::new(),
            prefix_len: 0,
            prefix: String::new(),
        }
    }

    /// Pushes one id; returns the newly completed text (often empty).
    pub fn push(&mut self, id: u32) -> Result<String> {
        self.ids.push(id);
        let text = self.tok.decode(&self.ids, self.skip_special)?;
        if text.len() <= self.prefix.len() || text.ends_with('\u{FFFD}') {
            return Ok(String::new());
        }
        let delta = match text.strip_prefix(self.prefix.as_str()) {
            Some(d) => d.to_owned(),
            // A decoder rewrote the left context (not seen with byte-level / byte-fallback /
            // Metaspace decoders): emit from the first differing char rather than fail mid-stream.
            None => {
                let common = common_prefix_len(&self.prefix, &text);
                text[common..].to_owned()
            }
        };
        // The tokens just resolved become the left context of the next window.
        self.ids.drain(..self.prefix_len);
        self.prefix_len = self.ids.len();
        self.prefix = self.tok.decode(&self.ids, self.skip_special)?;
        Ok(delta)
    }

    /// Flushes whatever is pending (an incomplete UTF-8 sequence comes out as U+FFFD, as in a full
    /// decode) and resets the decoder.
    pub fn finish(&mut self) -> Result<String> {
        let out = if self.ids.len() > self.prefix_len {
            let text = self.tok.decode(&self.ids, self.skip_special)?;
            match text.strip_prefix(self.prefix.as_str()) {
                Some(d) => d.to_owned(),
                None => text[common_prefix_len(&self.prefix, &text)..].to_owned(),
            }
        } else {
            String::new()
        };
        self.reset();
        Ok(out)
    }

    /// Forgets all state.
    pub fn reset(&mut self) {
        self.ids.clear();
        self.prefix_len = 0;
        self.prefix.clear();
    }
}

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

/// Why generation stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopReason {
    /// An EOS / end-of-turn id was sampled (it is not emitted as text).
    Eos(u32),
    /// A stop string was completed (it is not emitted; text after it is dropped).
    StopString(String),
}

/// Output of one [`StopMatcher`] step.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StopOutput {
    /// Text that is now safe to show.
    pub text: String,
    /// Set when generation must stop.
    pub stop: Option<StopReason>,
}

/// Stops on any id of an EOS set and on stop strings, also when a stop string straddles tokens.
/// Text that could be the start of a stop string is held back until it is resolved, so a stop
/// string is never emitted.
#[derive(Debug, Clone)]
pub struct StopMatcher {
    eos: Vec<u32>,
    stops: Vec<String>,
    pending: String,
    stopped: bool,
}

impl StopMatcher {
    /// A matcher for `eos_ids` and `stop_strings`; an empty stop string is an `InvalidArgument`
    /// naming `--stop`.
    pub fn new(eos_ids: impl IntoIterator<Item = u32>, stop_strings: impl IntoIterator<Item = String>) -> Result<Self> {
        let mut eos: Vec<u32> = Vec::new();
        for id in eos_ids {
            if !eos.contains(&id) {
                eos.push(id);
            }
        }
        let mut stops = Vec::new();
        for s in stop_strings {
            if s.is_empty() {
                return Err(ZayaError::InvalidArgument(
                    "--stop: a stop string must not be empty".into(),
                ));
            }
            if !stops.contains(&s) {
                stops.push(s);
            }
        }
        Ok(StopMatcher {
            eos,
            stops,
            pending: String::new(),
            stopped: false,
        })
    }

    /// Whether `id` is one of the EOS ids.
    pub fn is_eos(&self, id: u32) -> bool {
        self.eos.contains(&id)
    }

    /// The EOS ids.
    pub fn eos_ids(&self) -> &[u32] {
        &self.eos
    }

    /// Whether a stop was already reported.
    pub fn is_stopped(&self) -> bool {
        self.stopped
    }

    /// Feeds the id just sampled and the text it decoded to. EOS ids stop (held text is released:
    /// it was not part of a stop string).
    pub fn push(&mut self, id: u32, text: &str) -> StopOutput {
        if self.stopped {
            return StopOutput::default();
        }
        if self.is_eos(id) {
            self.stopped = true;
            return StopOutput {
                text: std::mem::take(&mut self.pending),
                stop: Some(StopReason::Eos(id)),
            };
        }
        self.push_text(text)
    }

    /// Feeds decoded text (no id check).
    pub fn push_text(&mut self, text: &str) -> StopOutput {
        if self.stopped {
            return StopOutput::default();
        }
        self.pending.push_str(text);
        if self.stops.is_empty() {
            return StopOutput {
                text: std::mem::take(&mut self.pending),
                stop: None,
            };
        }
        let mut best: Option<(usize, usize)> = None;
        for (k, s) in self.stops.iter().enumerate() {
            if let Some(p) = self.pending.find(s.as_str()) {
                if best.is_none_or(|(bp, _)| p < bp) {
                    best = Some((p, k));
                }
            }
        }
        if let Some((p, k)) = best {
            self.stopped = true;
            self.pending.truncate(p);
            return StopOutput {
                text: std::mem::take(&mut self.pending),
                stop: Some(StopReason::StopString(self.stops[k].clone())),
            };
        }
        let hold = self.held_suffix_len();
        let emit = self.pending.len() - hold;
        let text = self.pending[..emit].to_owned();
        self.pending.drain(..emit);
        StopOutput { text, stop: None }
    }

    /// Byte length of the longest suffix of `pending` that is a proper prefix of a stop string.
    fn held_suffix_len(&self) -> usize {
        let mut best = 0;
        for s in &self.stops {
            let max = (s.len() - 1).min(self.pending.len());
            for l in (best + 1..=max).rev() {
                if s.is_char_boundary(l) && self.pending.ends_with(&s[..l]) {
                    best = l;
                    break;
                }
            }
        }
        best
    }

    /// Releases held text at the end of generation (no stop string completed).
    pub fn flush(&mut self) -> String {
        std::mem::take(&mut self.pending)
    }

    /// Forgets all state (for a new generation).
    pub fn reset(&mut self) {
        self.pending.clear();
        self.stopped = false;
    }
}

/// One step of a [`TextStream`].
pub type StreamStep = StopOutput;

/// Detokenizer + stop matcher for the decode loop: push each sampled id, print `text`, stop when
/// `stop` is set; call [`TextStream::finish`] when generation ends for another reason.
#[derive(Debug, Clone)]
pub struct TextStream {
    decoder: StreamDecoder,
    stop: StopMatcher,
}

impl TextStream {
    /// Combines a decoder and a matcher.
    pub fn new(decoder: StreamDecoder, stop: StopMatcher) -> Self {
        TextStream { decoder, stop }
    }

    /// Feeds one sampled id. EOS ids are not decoded.
    pub fn push(&mut self, id: u32) -> Result<StreamStep> {
        if self.stop.is_stopped() {
            return Ok(StreamStep::default());
        }
        if self.stop.is_eos(id) {
            let mut text = self.decoder.finish()?;
            let out = self.stop.push_text(&text);
            if out.stop.is_some() {
                return Ok(out);
            }
            text = out.text;
            let eos = self.stop.push(id, "");
            text.push_str(&eos.text);
            return Ok(StreamStep { text, stop: eos.stop });
        }
        let delta = self.decoder.push(id)?;
        Ok(self.stop.push(id, &delta))
    }

    /// Ends the stream without a stop (e.g. max tokens): returns all held text.
    pub fn finish(&mut self) -> Result<String> {
        if self.stop.is_stopped() {
            return Ok(String::new());
        }
        let tail = self.decoder.finish()?;
        let mut out = self.stop.push_text(&tail);
        if out.stop.is_none() {
            out.text.push_str(&self.stop.flush());
        }
        Ok(out.text)
    }

    /// Whether a stop was reached.
    pub fn is_stopped(&self) -> bool {
        self.stop.is_stopped()
    }

    /// Resets both parts for a new generation.
    pub fn reset(&mut self) {
        self.decoder.reset();
        self.stop.reset();
    }
}
