//! The streaming decode loop: plain and speculative steps, stop conditions, statistics.
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mlx_rs::ops::indexing::IndexOp;
use mlx_rs::Array;

use crate::error::{Result, ZayaError};
use crate::runtime::sampling::Sampler;
use crate::runtime::speculative::{ngram_draft, DraftParams, DraftStats};
use crate::text::chat::Message;
use crate::text::tokenizer::{StopMatcher, StopReason, TextStream};

use super::session::{Mode, Prefill};
use super::*;

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
    pub(super) fn new(
        session: &'s mut Session<'m>,
        params: &GenParams,
        pre: Prefill,
        mode: Mode,
        start: Instant,
    ) -> Result<Self> {
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
        let rss = crate::runtime::memory::process_rss().map(|r| r.1);
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
            peak_memory: crate::runtime::memory::mlx_memory().1,
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
    pub(super) fn record(&mut self) {
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
