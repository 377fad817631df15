//! The continuous-batching scheduler ([`Engine`]): requests wait in a queue, join the running batch
//! once their prompt is prefilled (one chunk per engine step, so a long prompt never holds the
//! running sequences up for more than one chunk), decode together one token per step, and leave
//! when they finish or are cancelled. Every sequence keeps its own sampler (and seed), stop strings,
//! EOS ids and token limit; a failure of one sequence ends only that sequence.
use std::collections::VecDeque;
use std::time::{Duration, Instant};

use mlx_rs::ops::indexing::IndexOp;
use mlx_rs::Array;

use crate::error::{Result, ZayaError};
use crate::model::cache::ModelCache;
use crate::runtime::sampling::Sampler;
use crate::runtime::{FinishReason, GenParams, GenToken, LogitsProcessor, Zaya};
use crate::text::tokenizer::{StopMatcher, StopReason, TextStream};

use super::BatchCache;

/// A request's handle in an [`Engine`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SeqId(pub u64);

impl std::fmt::Display for SeqId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "seq-{}", self.0)
    }
}

/// Timing and size of one finished request.
#[derive(Debug, Clone, Default)]
pub struct SeqStats {
    /// Prompt tokens (all of them, cached or not).
    pub prompt_tokens: usize,
    /// Prompt tokens that came from a starting state instead of being prefilled.
    pub cached_tokens: usize,
    /// Tokens generated (EOS included).
    pub generated_tokens: usize,
    /// From submission to the first sampled token.
    pub time_to_first_token: Duration,
    /// From the first to the last sampled token.
    pub generation_time: Duration,
}

impl SeqStats {
    /// Generated tokens per second after the first one.
    pub fn generation_tps(&self) -> f64 {
        let s = self.generation_time.as_secs_f64();
        if self.generated_tokens > 1 && s > 0.0 {
            (self.generated_tokens - 1) as f64 / s
        } else {
            0.0
        }
    }
}

/// The log-probabilities of a sampled token under the model's distribution (log-softmax of the raw
/// logits): its own and the `n` most likely ids, best first.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprobs {
    pub logprob: f64,
    pub top: Vec<(u32, f64)>,
}

/// What happened to a request during an engine step.
#[derive(Debug)]
pub enum SeqEvent {
    /// A sampled token (`finish` set on the last one), with its log-probabilities when asked for.
    Token {
        token: GenToken,
        logprobs: Option<TokenLogprobs>,
    },
    /// The state after the prompt's first tokens (`tokens`), at a length the request asked for
    /// ([`EngineRequest::snapshot_at`]): for a prefix cache.
    Snapshot { tokens: Vec<u32>, state: ModelCache },
    /// The request ended after its last token: its statistics and, when asked for
    /// ([`EngineRequest::keep_final_state`]), the tokens its state holds (prompt and every
    /// generated token but the last) with that state.
    Finished {
        stats: SeqStats,
        state: Option<(Vec<u32>, ModelCache)>,
    },
    /// The request failed; nothing more comes for it. Other requests are not affected.
    Failed(ZayaError),
}

/// One request for [`Engine::submit_request`].
#[derive(Debug, Clone, Default)]
pub struct EngineRequest {
    /// Prompt token ids.
    pub prompt: Vec<u32>,
    /// Generation settings.
    pub params: GenParams,
    /// Log-probabilities with this many alternatives per token (`Some(0)`: only the token's own).
    pub logprobs: Option<usize>,
    /// A single-sequence state holding the first `state.offset()` prompt tokens (a restored
    /// prefix): only the rest is prefilled.
    pub start: Option<ModelCache>,
    /// Prompt lengths after which to hand out the state ([`SeqEvent::Snapshot`]).
    pub snapshot_at: Vec<usize>,
    /// Hand out the final state with [`SeqEvent::Finished`].
    pub keep_final_state: bool,
}

/// Engine settings.
#[derive(Debug, Clone, Copy)]
pub struct EngineOptions {
    /// Most sequences decoding together.
    pub max_batch: usize,
    /// Prompt positions prefilled per engine step (`None` = the model's prefill chunk).
    pub prefill_chunk: Option<usize>,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            max_batch: 8,
            prefill_chunk: None,
        }
    }
}

/// Per-request decoding state (shared by waiting and running requests).
struct SeqState {
    id: SeqId,
    sampler: Sampler,
    stream: Option<TextStream>,
    eos: Vec<u32>,
    max_tokens: Option<usize>,
    processors: Vec<LogitsProcessor>,
    logprobs: Option<usize>,
    snapshot_at: Vec<usize>,
    keep_final_state: bool,
    /// Prompt then every fed token: the sampler's history.
    history: Vec<u32>,
    prompt_tokens: usize,
    cached_tokens: usize,
    generated: usize,
    submitted: Instant,
    first_token_at: Option<Instant>,
    last_token_at: Option<Instant>,
}

/// A request whose prompt is being prefilled.
struct Waiting {
    seq: SeqState,
    cache: ModelCache,
    /// Prompt positions already in `cache`.
    done: usize,
}

/// A request in the decoding batch (same order as the batch rows).
struct Running {
    seq: SeqState,
    /// The sampled token to feed at the next step.
    next: u32,
}

/// Where the running sequences' model state lives.
enum Decoder {
    /// One [`BatchCache`] row per sequence, one [`crate::model::ZayaModel::decode_batch`] per step.
    Batched(BatchCache),
    /// Options without batched kernels (e.g. bf16): each sequence its own cache, decoded in turn.
    Serial(Vec<ModelCache>),
}

/// The continuous-batching engine over a loaded model. Drive it with [`Engine::step`] (or use
/// [`Engine::run_to_completion`] / [`batch_generate`](super::batch_generate)); the HTTP server runs
/// one on its own thread.
pub struct Engine<'z> {
    zaya: &'z Zaya,
    opts: EngineOptions,
    next_id: u64,
    waiting: VecDeque<Waiting>,
    running: Vec<Running>,
    decoder: Decoder,
}

impl<'z> Engine<'z> {
    /// An idle engine over `zaya`.
    pub fn new(zaya: &'z Zaya, opts: EngineOptions) -> Result<Self> {
        if opts.max_batch == 0 {
            return Err(ZayaError::InvalidArgument("the batch size must be positive".into()));
        }
        if opts.prefill_chunk == Some(0) {
            return Err(ZayaError::InvalidArgument("the prefill chunk must be positive".into()));
        }
        let model = zaya.model();
        let decoder = if model.supports_batching() {
            Decoder::Batched(BatchCache::new(model.config(), model.options().kv_step))
        } else {
            Decoder::Serial(Vec::new())
        };
        Ok(Engine {
            zaya,
            opts,
            next_id: 0,
            waiting: VecDeque::new(),
            running: Vec::new(),
            decoder,
        })
    }

    /// The model this engine runs.
    pub fn zaya(&self) -> &'z Zaya {
        self.zaya
    }

    /// Requests waiting for (or in) prefill.
    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }

    /// Requests decoding.
    pub fn running(&self) -> usize {
        self.running.len()
    }

    /// True when nothing is waiting or running.
    pub fn is_idle(&self) -> bool {
        self.waiting.is_empty() && self.running.is_empty()
    }

    /// Ids of the running sequences in batch-row order.
    pub fn running_ids(&self) -> Vec<SeqId> {
        self.running.iter().map(|r| r.seq.id).collect()
    }

    /// Queues a request: `prompt` token ids, generation settings. A bad prompt or bad settings are
    /// an error for this request only (nothing is queued).
    pub fn submit(&mut self, prompt: Vec<u32>, params: &GenParams) -> Result<SeqId> {
        self.submit_request(EngineRequest {
            prompt,
            params: params.clone(),
            ..EngineRequest::default()
        })
    }

    /// Queues a request with every option ([`EngineRequest`]).
    pub fn submit_request(&mut self, req: EngineRequest) -> Result<SeqId> {
        let EngineRequest {
            prompt,
            params,
            logprobs,
            start,
            mut snapshot_at,
            keep_final_state,
        } = req;
        let params = &params;
        let state = start.unwrap_or_else(|| self.zaya.model().new_cache());
        params.validate()?;
        if logprobs.is_some_and(|n| n > 100) {
            return Err(ZayaError::InvalidArgument("logprobs: at most 100 alternatives".into()));
        }
        if params.draft.is_some() {
            return Err(ZayaError::InvalidArgument(
                "speculative drafts are not available in the batched engine".into(),
            ));
        }
        let cfg = self.zaya.model().config();
        if prompt.is_empty() {
            return Err(ZayaError::InvalidArgument("the prompt has no tokens".into()));
        }
        if let Some(&bad) = prompt.iter().find(|&&t| t as usize >= cfg.vocab_size) {
            return Err(ZayaError::InvalidArgument(format!(
                "prompt token id {bad} is outside the vocabulary (size {})",
                cfg.vocab_size
            )));
        }
        let ctx = self.zaya.max_context();
        if prompt.len() >= ctx {
            return Err(ZayaError::InvalidArgument(format!(
                "the prompt has {} tokens; the context holds {ctx} (one more is needed to generate)",
                prompt.len()
            )));
        }
        let cached = state.offset();
        if cached >= prompt.len() || state.is_poisoned() || state.batch().unwrap_or(1) != 1 {
            return Err(ZayaError::InvalidArgument(format!(
                "a starting state must be a single sequence holding fewer than the prompt's {} tokens (it holds {cached})",
                prompt.len()
            )));
        }
        snapshot_at.retain(|&l| l > cached && l < prompt.len());
        snapshot_at.sort_unstable();
        snapshot_at.dedup();
        let mut seq = self.new_seq(prompt, cached, params)?;
        seq.logprobs = logprobs;
        seq.snapshot_at = snapshot_at;
        seq.keep_final_state = keep_final_state;
        let id = seq.id;
        self.waiting.push_back(Waiting {
            seq,
            cache: state,
            done: cached,
        });
        Ok(id)
    }

    fn new_seq(&mut self, prompt: Vec<u32>, cached: usize, params: &GenParams) -> Result<SeqState> {
        let zaya = self.zaya;
        let mut eos: Vec<u32> = Vec::new();
        if !params.ignore_eos {
            for &id in zaya.eos_ids().iter().chain(&params.extra_eos) {
                if !eos.contains(&id) {
                    eos.push(id);
                }
            }
        }
        let stream = match zaya.tokenizer() {
            Some(t) => Some(TextStream::new(
                t.stream_decoder(params.skip_special_tokens),
                StopMatcher::new(eos.clone(), params.stop.clone())?,
            )),
            None if !params.stop.is_empty() => {
                return Err(ZayaError::InvalidArgument("stop strings need a tokenizer".into()));
            }
            None => None,
        };
        let id = SeqId(self.next_id);
        self.next_id += 1;
        Ok(SeqState {
            id,
            sampler: Sampler::new(params.sampling.clone())?,
            stream,
            eos,
            max_tokens: params.max_tokens,
            processors: params.logits_processors.clone(),
            logprobs: None,
            snapshot_at: Vec::new(),
            keep_final_state: false,
            prompt_tokens: prompt.len(),
            history: prompt,
            cached_tokens: cached,
            generated: 0,
            submitted: Instant::now(),
            first_token_at: None,
            last_token_at: None,
        })
    }

    /// Ends a waiting or running request at once (its slot is free for the next step). An id that
    /// is not queued or running (finished, failed, cancelled before, never issued) is an error.
    pub fn cancel(&mut self, id: SeqId) -> Result<()> {
        if let Some(i) = self.waiting.iter().position(|w| w.seq.id == id) {
            self.waiting.remove(i);
            return Ok(());
        }
        if let Some(row) = self.running.iter().position(|r| r.seq.id == id) {
            return self.remove_row(row);
        }
        Err(ZayaError::InvalidArgument(format!("{id} is not waiting or running")))
    }

    /// The single-sequence model state of a running request (a copy), e.g. to keep it in a prefix
    /// cache. It holds the prompt and every generated token but the last sampled one.
    pub fn state_of(&self, id: SeqId) -> Result<ModelCache> {
        let row = self
            .running
            .iter()
            .position(|r| r.seq.id == id)
            .ok_or_else(|| ZayaError::InvalidArgument(format!("{id} is not running")))?;
        self.row_state(row)
    }

    /// The tokens a running request's state holds ([`state_of`](Self::state_of)).
    pub fn history_of(&self, id: SeqId) -> Option<&[u32]> {
        self.running
            .iter()
            .find(|r| r.seq.id == id)
            .map(|r| r.seq.history.as_slice())
    }

    fn remove_row(&mut self, row: usize) -> Result<()> {
        match &mut self.decoder {
            Decoder::Batched(b) => {
                b.swap_remove(row)?;
            }
            Decoder::Serial(c) => {
                c.swap_remove(row);
            }
        }
        self.running.swap_remove(row);
        Ok(())
    }

    /// One engine step: one prefill chunk of the first waiting request (when the batch has room),
    /// then one decode step of every running sequence. Returns what happened to each request.
    pub fn step(&mut self) -> Vec<(SeqId, SeqEvent)> {
        let mut events = Vec::new();
        if self.running.len() < self.opts.max_batch {
            self.prefill_chunk(&mut events);
        }
        if !self.running.is_empty() {
            self.decode(&mut events);
        }
        events
    }

    /// Steps until nothing is waiting or running, handing every event to `on_event`.
    pub fn run_to_completion(&mut self, mut on_event: impl FnMut(SeqId, SeqEvent)) {
        while !self.is_idle() {
            for (id, ev) in self.step() {
                on_event(id, ev);
            }
        }
    }

    fn prefill_chunk(&mut self, events: &mut Vec<(SeqId, SeqEvent)>) {
        let Some(mut w) = self.waiting.pop_front() else { return };
        let model = self.zaya.model();
        let chunk = self.opts.prefill_chunk.unwrap_or(model.options().prefill_chunk).max(1);
        let mut end = (w.done + chunk).min(w.seq.prompt_tokens);
        if let Some(&b) = w.seq.snapshot_at.iter().find(|&&b| b > w.done) {
            end = end.min(b);
        }
        let logits = match model.prefill(&w.seq.history[w.done..end], &mut w.cache, None) {
            Ok(l) => l,
            Err(e) => {
                events.push((w.seq.id, SeqEvent::Failed(e)));
                return;
            }
        };
        w.done = end;
        if w.seq.snapshot_at.contains(&end) {
            events.push((
                w.seq.id,
                SeqEvent::Snapshot {
                    tokens: w.seq.history[..end].to_vec(),
                    state: w.cache.snapshot(),
                },
            ));
        }
        if end < w.seq.prompt_tokens {
            self.waiting.push_front(w);
            return;
        }
        // prompt done: the first token, then the batch
        let Waiting { mut seq, cache, .. } = w;
        let id = seq.id;
        match Self::sample_and_emit_with(self.zaya, &mut seq, &logits) {
            Err(e) => events.push((id, SeqEvent::Failed(e))),
            Ok((token, logprobs, done)) => {
                let next = token.id;
                events.push((id, SeqEvent::Token { token, logprobs }));
                if done {
                    let state = seq.keep_final_state.then(|| (seq.history.clone(), cache));
                    events.push((
                        id,
                        SeqEvent::Finished {
                            stats: stats_of(&seq),
                            state,
                        },
                    ));
                    return;
                }
                let joined = match &mut self.decoder {
                    Decoder::Batched(b) => b.insert(&cache).map(|_| ()),
                    Decoder::Serial(c) => {
                        c.push(cache);
                        Ok(())
                    }
                };
                match joined {
                    Ok(()) => self.running.push(Running { seq, next }),
                    Err(e) => events.push((id, SeqEvent::Failed(e))),
                }
            }
        }
    }

    fn decode(&mut self, events: &mut Vec<(SeqId, SeqEvent)>) {
        let tokens: Vec<u32> = self.running.iter().map(|r| r.next).collect();
        let model = self.zaya.model();
        // logits per row, or the error of a step that could not run
        let rows: Vec<Result<Array>> = match &mut self.decoder {
            Decoder::Batched(b) => match model.decode_batch(&tokens, b, false) {
                Ok(step) => (0..tokens.len() as i32)
                    .map(|i| Ok(step.logits.index(i..i + 1)))
                    .collect(),
                Err(e) => {
                    // the batch state is no longer consistent: every running request fails
                    let msg = e.to_string();
                    *b = BatchCache::new(model.config(), model.options().kv_step);
                    for r in self.running.drain(..) {
                        events.push((r.seq.id, SeqEvent::Failed(ZayaError::Runtime(msg.clone()))));
                    }
                    return;
                }
            },
            Decoder::Serial(caches) => tokens
                .iter()
                .zip(caches.iter_mut())
                .map(|(&t, c)| model.decode_step(t, c))
                .collect(),
        };
        let mut finished = Vec::new();
        for (row, (r, logits)) in self.running.iter_mut().zip(rows).enumerate() {
            let id = r.seq.id;
            let fed = r.next;
            r.seq.history.push(fed);
            let out = logits.and_then(|l| Self::sample_and_emit_with(self.zaya, &mut r.seq, &l));
            match out {
                Err(e) => {
                    events.push((id, SeqEvent::Failed(e)));
                    finished.push((row, None));
                }
                Ok((token, logprobs, done)) => {
                    r.next = token.id;
                    events.push((id, SeqEvent::Token { token, logprobs }));
                    if done {
                        finished.push((row, Some(events.len())));
                    }
                }
            }
        }
        // finished requests: their statistics (and final state) after their last token
        let mut done_events = Vec::new();
        for &(row, at) in &finished {
            if at.is_none() {
                continue;
            }
            let seq = &self.running[row].seq;
            let state = if seq.keep_final_state {
                match self.row_state(row) {
                    Ok(st) => Some((seq.history.clone(), st)),
                    Err(_) => None, // a state that cannot be copied is only not cached
                }
            } else {
                None
            };
            done_events.push((
                seq.id,
                SeqEvent::Finished {
                    stats: stats_of(seq),
                    state,
                },
            ));
        }
        events.extend(done_events);
        let mut finished: Vec<usize> = finished.into_iter().map(|(r, _)| r).collect();
        // highest rows first, so swap-removal never moves a row still to be removed
        finished.sort_unstable_by(|a, b| b.cmp(a));
        for row in finished {
            if let Err(e) = self.remove_row(row) {
                let id = self.running[row].seq.id;
                events.push((id, SeqEvent::Failed(e)));
            }
        }
    }

    fn row_state(&self, row: usize) -> Result<ModelCache> {
        match &self.decoder {
            Decoder::Batched(b) => b.extract(row, self.zaya.model().config()),
            Decoder::Serial(c) => Ok(c[row].snapshot()),
        }
    }

    /// Samples the next token from raw logits `[1, V]` and books it: text, stop conditions, limits.
    /// Returns the token, its log-probabilities when asked for, and whether the request is finished.
    fn sample_and_emit_with(
        zaya: &Zaya,
        seq: &mut SeqState,
        raw: &Array,
    ) -> Result<(GenToken, Option<TokenLogprobs>, bool)> {
        let mut x = match zaya.vocab_limit() {
            Some(n) => raw.index((.., 0..n as i32)),
            None => raw.clone(),
        };
        for p in &seq.processors {
            x = p(&seq.history, &x)?;
        }
        let id = seq.sampler.sample(&x, &seq.history)?;
        let logprobs = match seq.logprobs {
            Some(n) => {
                let (logprob, top) = crate::runtime::sampling::token_logprobs(raw, id, n, zaya.vocab_limit())?;
                Some(TokenLogprobs { logprob, top })
            }
            None => None,
        };
        let now = Instant::now();
        seq.first_token_at.get_or_insert(now);
        seq.last_token_at = Some(now);
        seq.generated += 1;
        let (mut text, stop) = match seq.stream.as_mut() {
            Some(s) => {
                let out = s.push(id)?;
                (out.text, out.stop)
            }
            None => (String::new(), seq.eos.contains(&id).then_some(StopReason::Eos(id))),
        };
        let mut finish = stop.map(|s| match s {
            StopReason::Eos(e) => FinishReason::Eos(e),
            StopReason::StopString(s) => FinishReason::StopString(s),
        });
        if finish.is_none() {
            if seq.max_tokens.is_some_and(|m| seq.generated >= m) {
                finish = Some(FinishReason::MaxTokens);
            } else if seq.history.len() + 1 > zaya.max_context() {
                finish = Some(FinishReason::ContextLimit);
            }
            if finish.is_some() {
                if let Some(s) = seq.stream.as_mut() {
                    text.push_str(&s.finish()?);
                }
            }
        }
        let done = finish.is_some();
        Ok((GenToken { id, text, finish }, logprobs, done))
    }
}

fn stats_of(seq: &SeqState) -> SeqStats {
    let first = seq.first_token_at.unwrap_or(seq.submitted);
    SeqStats {
        prompt_tokens: seq.prompt_tokens,
        cached_tokens: seq.cached_tokens,
        generated_tokens: seq.generated,
        time_to_first_token: first - seq.submitted,
        generation_time: seq.last_token_at.map_or(Duration::ZERO, |l| l - first),
    }
}
