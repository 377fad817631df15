//! The engine thread of `zaya serve`: owns the model and the [`Engine`], takes jobs from the HTTP
//! handlers over a channel, restores the longest cached prefix of each prompt, steps the engine,
//! forwards every request's events to its handler, keeps states in the prefix cache (at the
//! boundary before the last message and at the end of every request), and cancels a request the
//! moment its handler is gone (client disconnected). Logs one line per finished request.
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc::UnboundedSender;

use crate::error::ZayaError;
use crate::runtime::engine::{Engine, EngineOptions, EngineRequest, SeqEvent, SeqId, SeqStats, TokenLogprobs};
use crate::runtime::{FinishReason, GenParams, GenToken, Zaya};

use super::prefix_cache::PrefixCache;

/// One request for the engine thread.
pub struct Job {
    /// Request id for the log (e.g. `chatcmpl-12`).
    pub name: String,
    pub prompt: Vec<u32>,
    pub params: GenParams,
    pub logprobs: Option<usize>,
    /// Prompt lengths at message boundaries (prefix-cache snapshots).
    pub boundaries: Vec<usize>,
    pub events: UnboundedSender<JobEvent>,
}

/// What a handler receives for its job.
#[derive(Debug)]
pub enum JobEvent {
    /// The job entered the engine; `cached_tokens` prompt tokens came from the prefix cache.
    Started {
        cached_tokens: usize,
    },
    Token {
        token: GenToken,
        logprobs: Option<TokenLogprobs>,
    },
    Done(SeqStats),
    Failed(ZayaError),
}

/// Shared between the handlers and the engine thread.
pub struct Shared {
    /// Jobs submitted and not yet ended (queued or running).
    pub in_flight: AtomicUsize,
    /// Set on shutdown: the thread ends once every job has.
    pub stopping: AtomicBool,
}

struct Live {
    name: String,
    events: UnboundedSender<JobEvent>,
    finish: Option<FinishReason>,
}

/// Runs the engine loop until the job channel closes and the engine is idle.
pub fn run(zaya: Zaya, jobs: Receiver<Job>, shared: Arc<Shared>, max_batch: usize, cache_bytes: usize) {
    let mut engine = match Engine::new(
        &zaya,
        EngineOptions {
            max_batch,
            prefill_chunk: None,
        },
    ) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("zaya serve: engine: {e}");
            return;
        }
    };
    let mut prefix = PrefixCache::new(cache_bytes);
    let mut live: HashMap<SeqId, Live> = HashMap::new();
    let mut closed = false;
    loop {
        // take new jobs: block while idle, otherwise only what is there
        loop {
            let job = if engine.is_idle() && !closed {
                match jobs.recv_timeout(Duration::from_millis(200)) {
                    Ok(j) => Some(j),
                    Err(RecvTimeoutError::Timeout) => None,
                    Err(RecvTimeoutError::Disconnected) => {
                        closed = true;
                        None
                    }
                }
            } else {
                jobs.try_recv().ok()
            };
            let Some(job) = job else { break };
            submit(&mut engine, &mut prefix, &mut live, &shared, job);
        }
        if engine.is_idle() && (closed || shared.stopping.load(Ordering::Relaxed)) {
            break;
        }
        // requests whose client went away: cancel before spending a step on them
        let gone: Vec<SeqId> = live
            .iter()
            .filter(|(_, l)| l.events.is_closed())
            .map(|(id, _)| *id)
            .collect();
        for id in gone {
            let _ = engine.cancel(id);
            end(&mut live, &shared, id, "cancelled (client gone)", None);
        }
        if engine.is_idle() {
            continue;
        }
        for (id, ev) in engine.step() {
            let Some(l) = live.get_mut(&id) else { continue };
            let sent = match ev {
                SeqEvent::Token { token, logprobs } => {
                    if let Some(f) = &token.finish {
                        l.finish = Some(f.clone());
                    }
                    l.events.send(JobEvent::Token { token, logprobs }).is_ok()
                }
                SeqEvent::Snapshot { tokens, state } => {
                    prefix.insert(tokens, state);
                    true
                }
                SeqEvent::Finished { stats, state } => {
                    if let Some((tokens, st)) = state {
                        prefix.insert(tokens, st);
                    }
                    let reason = l.finish.as_ref().map_or("stop", FinishReason::as_str).to_string();
                    let _ = l.events.send(JobEvent::Done(stats.clone()));
                    end(&mut live, &shared, id, &reason, Some(&stats));
                    continue;
                }
                SeqEvent::Failed(e) => {
                    let msg = e.to_string();
                    let _ = l.events.send(JobEvent::Failed(e));
                    end(&mut live, &shared, id, &format!("failed: {msg}"), None);
                    continue;
                }
            };
            if !sent {
                let _ = engine.cancel(id);
                end(&mut live, &shared, id, "cancelled (client gone)", None);
            }
        }
    }
}

fn submit(
    engine: &mut Engine<'_>,
    prefix: &mut PrefixCache,
    live: &mut HashMap<SeqId, Live>,
    shared: &Shared,
    job: Job,
) {
    let start = prefix.lookup(&job.prompt);
    let cached = start.as_ref().map_or(0, |s| s.offset());
    let req = EngineRequest {
        prompt: job.prompt,
        params: job.params,
        logprobs: job.logprobs,
        start,
        snapshot_at: job.boundaries,
        keep_final_state: true,
    };
    match engine.submit_request(req) {
        Ok(id) => {
            let _ = job.events.send(JobEvent::Started { cached_tokens: cached });
            live.insert(
                id,
                Live {
                    name: job.name,
                    events: job.events,
                    finish: None,
                },
            );
        }
        Err(e) => {
            eprintln!("{}: rejected: {e}", job.name);
            let _ = job.events.send(JobEvent::Failed(e));
            shared.in_flight.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

fn end(live: &mut HashMap<SeqId, Live>, shared: &Shared, id: SeqId, how: &str, stats: Option<&SeqStats>) {
    let Some(l) = live.remove(&id) else { return };
    shared.in_flight.fetch_sub(1, Ordering::SeqCst);
    match stats {
        Some(s) => eprintln!(
            "{}: prompt {} tokens ({} cached), generated {}, ttft {:.3}s, {:.2} tok/s, finish {how}",
            l.name,
            s.prompt_tokens,
            s.cached_tokens,
            s.generated_tokens,
            s.time_to_first_token.as_secs_f64(),
            s.generation_tps()
        ),
        None => eprintln!("{}: {how}", l.name),
    }
}
