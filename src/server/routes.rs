//! The HTTP routes of `zaya serve`: `/v1/chat/completions`, `/v1/completions`, `/v1/models`,
//! `/health` (each also without `/v1`), bearer-key checks, and the streamed (SSE) and whole
//! responses built from a job's events.
use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Map, Value};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};
use tokio_stream::wrappers::UnboundedReceiverStream;

use super::openai::{self, ApiError, ApiResult, ChatInput, Common, PromptInput};
use super::reasoning::{ReasoningSplitter, ToolCallHold};
use super::worker::{Job, JobEvent};
use super::AppState;
use crate::runtime::engine::{SeqStats, TokenLogprobs};

/// Which endpoint a request came to.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Chat,
    Text,
}

fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The chat page (`chat.html`, embedded in the binary).
pub async fn page() -> axum::response::Html<&'static str> {
    axum::response::Html(include_str!("chat.html"))
}

pub async fn health() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

pub async fn models(State(st): State<Arc<AppState>>) -> Json<Value> {
    Json(json!({
        "object": "list",
        "data": [{"id": st.model_id, "object": "model", "created": st.created, "owned_by": "zaya-mlx"}],
    }))
}

/// With `--api-key`: every route but `/health` and the page needs `Authorization: Bearer KEY`.
pub async fn require_key(State(st): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    if let Some(key) = &st.api_key {
        let path = req.uri().path();
        let open = path == "/health" || path == "/v1/health" || path == "/";
        let given = req
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if !open && given != Some(key.as_str()) {
            return ApiError::new(
                StatusCode::UNAUTHORIZED,
                "invalid_request_error",
                "missing or wrong API key (Authorization: Bearer KEY)",
            )
            .code("invalid_api_key")
            .into_response();
        }
    }
    next.run(req).await
}

fn body_of(body: Result<Bytes, BytesRejection>) -> ApiResult<Map<String, Value>> {
    match body {
        Ok(b) => openai::parse_body(&b),
        Err(r) => Err(ApiError::new(
            r.status(),
            "invalid_request_error",
            if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
                "the request body is larger than the server accepts".to_string()
            } else {
                r.body_text()
            },
        )),
    }
}

fn check_model(st: &AppState, b: &Map<String, Value>) -> ApiResult<()> {
    match b.get("model") {
        None | Some(Value::Null) => Ok(()),
        Some(Value::String(m)) if st.accepts_model(m) => Ok(()),
        Some(Value::String(m)) => Err(ApiError {
            param: Some("model".into()),
            ..ApiError::new(
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                format!("model `{m}` does not exist; this server serves `{}`", st.model_id),
            )
        }
        .code("model_not_found")),
        Some(_) => Err(ApiError::bad("model", "`model` must be a string")),
    }
}

pub async fn chat(State(st): State<Arc<AppState>>, body: Result<Bytes, BytesRejection>) -> Response {
    match chat_inner(st, body).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

pub async fn completions(State(st): State<Arc<AppState>>, body: Result<Bytes, BytesRejection>) -> Response {
    match text_inner(st, body).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn chat_inner(st: Arc<AppState>, body: Result<Bytes, BytesRejection>) -> ApiResult<Response> {
    let b = body_of(body)?;
    check_model(&st, &b)?;
    let common = openai::parse_common(&b, true, st.default_max_tokens)?;
    let input = openai::parse_chat(&b)?;
    let st2 = st.clone();
    let msgs = input.messages.clone();
    let opts = input.options.clone();
    // rendering and tokenizing run off the async threads
    let (prompt, boundaries) = tokio::task::spawn_blocking(move || st2.chat_prompt(&msgs, &opts))
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", e.to_string()))??;
    run(st, Kind::Chat, common, Some(input), prompt, boundaries).await
}

async fn text_inner(st: Arc<AppState>, body: Result<Bytes, BytesRejection>) -> ApiResult<Response> {
    let b = body_of(body)?;
    check_model(&st, &b)?;
    let common = openai::parse_common(&b, false, st.default_max_tokens)?;
    let prompt = match openai::parse_prompt(&b)? {
        PromptInput::Ids(ids) => {
            if let Some(bad) = ids.iter().find(|&&i| i as usize >= st.vocab_size) {
                return Err(ApiError::bad(
                    "prompt",
                    format!("token id {bad} is outside the vocabulary (size {})", st.vocab_size),
                ));
            }
            ids
        }
        PromptInput::Text(t) => {
            let st2 = st.clone();
            tokio::task::spawn_blocking(move || st2.encode(&t))
                .await
                .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", e.to_string()))??
        }
    };
    run(st, Kind::Text, common, None, prompt, Vec::new()).await
}

/// Submits the job and answers: a stream, or the whole completion.
async fn run(
    st: Arc<AppState>,
    kind: Kind,
    common: Common,
    chat: Option<ChatInput>,
    prompt: Vec<u32>,
    boundaries: Vec<usize>,
) -> ApiResult<Response> {
    if prompt.is_empty() {
        return Err(ApiError::bad(
            if kind == Kind::Chat { "messages" } else { "prompt" },
            "the prompt has no tokens",
        ));
    }
    if prompt.len() >= st.max_context {
        return Err(ApiError::bad(
            if kind == Kind::Chat { "messages" } else { "prompt" },
            format!(
                "the prompt has {} tokens; this model's context holds {} (and one more is needed to answer)",
                prompt.len(),
                st.max_context
            ),
        )
        .code("context_length_exceeded"));
    }
    if st.shared.stopping.load(Ordering::SeqCst) {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "server_error",
            "the server is shutting down",
        ));
    }
    // admission: running + queued requests are bounded
    let admitted = st
        .shared
        .in_flight
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
            (n < st.admit_limit).then_some(n + 1)
        })
        .is_ok();
    if !admitted {
        return Err(ApiError {
            retry_after: Some(1),
            ..ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limit_error",
                format!(
                    "the queue is full ({} requests running or waiting); retry later",
                    st.admit_limit
                ),
            )
        }
        .code("queue_full"));
    }
    // a state one token short of the prompt: the same prompt again (a retry, a shared system
    // prompt used as a completion) reuses all of it but its last token
    let mut boundaries = boundaries;
    if prompt.len() >= 2 {
        boundaries.push(prompt.len() - 1);
    }
    let n = st.counter.fetch_add(1, Ordering::SeqCst);
    let name = format!("{}-{n}", if kind == Kind::Chat { "chatcmpl" } else { "cmpl" });
    let (tx, mut rx) = unbounded_channel();
    let job = Job {
        name: name.clone(),
        prompt: prompt.clone(),
        params: common.params.clone(),
        logprobs: common.logprobs,
        boundaries,
        events: tx,
    };
    if st.jobs.send(job).is_err() {
        st.shared.in_flight.fetch_sub(1, Ordering::SeqCst);
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "server_error",
            "the engine has stopped",
        ));
    }
    // the first event says whether the engine took it
    let cached = match rx.recv().await {
        Some(JobEvent::Started { cached_tokens }) => cached_tokens,
        Some(JobEvent::Failed(e)) => return Err(ApiError::from_zaya(&e)),
        _ => {
            return Err(ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                "the engine dropped the request",
            ))
        }
    };
    let ctx = Ctx {
        st,
        kind,
        id: name,
        created: now_unix(),
        prompt_tokens: prompt.len(),
        cached,
        logprobs: common.logprobs,
        thinking: chat.as_ref().is_some_and(|c| c.thinking),
        tools: chat.as_ref().is_some_and(|c| c.has_tools),
    };
    if common.stream {
        Ok(stream(ctx, rx, common.include_usage).into_response())
    } else {
        whole(ctx, &mut rx).await
    }
}

/// Per-response facts.
struct Ctx {
    st: Arc<AppState>,
    kind: Kind,
    id: String,
    created: u64,
    prompt_tokens: usize,
    cached: usize,
    logprobs: Option<usize>,
    thinking: bool,
    tools: bool,
}

impl Ctx {
    fn usage(&self, generated: usize) -> Value {
        json!({
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": generated,
            "total_tokens": self.prompt_tokens + generated,
            "prompt_tokens_details": {"cached_tokens": self.cached},
        })
    }

    fn object(&self, chunk: bool) -> &'static str {
        match (self.kind, chunk) {
            (Kind::Chat, false) => "chat.completion",
            (Kind::Chat, true) => "chat.completion.chunk",
            (Kind::Text, _) => "text_completion",
        }
    }

    fn envelope(&self, chunk: bool, choices: Value) -> Value {
        json!({
            "id": self.id,
            "object": self.object(chunk),
            "created": self.created,
            "model": self.st.model_id,
            "system_fingerprint": self.st.fingerprint,
            "choices": choices,
        })
    }

    fn token_text(&self, id: u32) -> String {
        self.st.token_text(id)
    }

    /// Chat logprobs entries of tokens.
    fn chat_logprobs(&self, items: &[(u32, TokenLogprobs)]) -> Value {
        let entry = |id: u32, lp: f64| {
            let t = self.token_text(id);
            json!({"token": t, "logprob": lp, "bytes": t.as_bytes()})
        };
        let content: Vec<Value> = items
            .iter()
            .map(|(id, l)| {
                let mut e = entry(*id, l.logprob);
                e["top_logprobs"] = Value::Array(l.top.iter().map(|(i, lp)| entry(*i, *lp)).collect());
                e
            })
            .collect();
        json!({"content": content})
    }

    /// Legacy completions logprobs.
    fn text_logprobs(&self, items: &[(u32, TokenLogprobs)], mut offset: usize) -> Value {
        let (mut tokens, mut lps, mut tops, mut offs) = (vec![], vec![], vec![], vec![]);
        for (id, l) in items {
            let t = self.token_text(*id);
            offs.push(offset);
            offset += t.len();
            tokens.push(t);
            lps.push(l.logprob);
            let mut m = Map::new();
            for (i, lp) in &l.top {
                m.insert(self.token_text(*i), json!(lp));
            }
            tops.push(Value::Object(m));
        }
        json!({"tokens": tokens, "token_logprobs": lps, "top_logprobs": tops, "text_offset": offs})
    }
}

/// Splits a job's text into (reasoning, content) as it streams, holding tool calls back.
struct Shaper {
    reasoning: Option<ReasoningSplitter>,
    tools: Option<ToolCallHold>,
}

impl Shaper {
    fn new(ctx: &Ctx) -> Self {
        Shaper {
            reasoning: ctx.thinking.then(ReasoningSplitter::new),
            tools: ctx.tools.then(ToolCallHold::default),
        }
    }

    fn push(&mut self, text: &str) -> (String, String) {
        let (r, c) = match self.reasoning.as_mut() {
            Some(s) => s.push(text),
            None => (String::new(), text.to_string()),
        };
        let c = match self.tools.as_mut() {
            Some(h) => h.push(&c),
            None => c,
        };
        (r, c)
    }

    fn finish(&mut self) -> (String, String, Vec<crate::text::tool_calls::ToolCall>) {
        let (r, mut c) = match self.reasoning.as_mut() {
            Some(s) => s.finish(),
            None => (String::new(), String::new()),
        };
        let calls = match self.tools.as_mut() {
            Some(h) => {
                let mut out = h.push(&c);
                let (rest, calls) = h.finish();
                out.push_str(&rest);
                c = out;
                calls
            }
            None => Vec::new(),
        };
        (r, c, calls)
    }
}

fn finish_reason(reason: Option<&crate::runtime::FinishReason>, calls: bool) -> &'static str {
    if calls {
        return "tool_calls";
    }
    match reason {
        Some(r) if r.as_str() == "length" => "length",
        _ => "stop",
    }
}

fn calls_json(calls: &[crate::text::tool_calls::ToolCall], id: &str) -> Vec<Value> {
    calls
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let mut v = c.to_openai(&format!("call_{id}_{i}"));
            v["index"] = json!(i);
            v
        })
        .collect()
}

/// The whole (non-streamed) completion.
async fn whole(ctx: Ctx, rx: &mut UnboundedReceiver<JobEvent>) -> ApiResult<Response> {
    let mut shaper = Shaper::new(&ctx);
    let (mut reasoning, mut content) = (String::new(), String::new());
    let mut lps: Vec<(u32, TokenLogprobs)> = Vec::new();
    let mut finish = None;
    let mut generated = 0;
    let stats: SeqStats = loop {
        match rx.recv().await {
            Some(JobEvent::Token { token, logprobs }) => {
                generated += 1;
                let (r, c) = shaper.push(&token.text);
                reasoning.push_str(&r);
                content.push_str(&c);
                if let Some(l) = logprobs {
                    lps.push((token.id, l));
                }
                if token.finish.is_some() {
                    finish = token.finish;
                }
            }
            Some(JobEvent::Done(s)) => break s,
            Some(JobEvent::Failed(e)) => return Err(ApiError::from_zaya(&e)),
            Some(JobEvent::Started { .. }) => {}
            None => {
                return Err(ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "server_error",
                    "the engine dropped the request",
                ))
            }
        }
    };
    let (r, c, calls) = shaper.finish();
    reasoning.push_str(&r);
    content.push_str(&c);
    let reason = finish_reason(finish.as_ref(), !calls.is_empty());
    let choice = match ctx.kind {
        Kind::Chat => {
            let mut message = json!({"role": "assistant", "content": content});
            if ctx.thinking {
                message["reasoning_content"] = json!(reasoning);
            }
            if !calls.is_empty() {
                message["tool_calls"] = Value::Array(calls_json(&calls, &ctx.id));
            }
            json!({
                "index": 0,
                "message": message,
                "logprobs": ctx.logprobs.map(|_| ctx.chat_logprobs(&lps)),
                "finish_reason": reason,
            })
        }
        Kind::Text => json!({
            "index": 0,
            "text": content,
            "logprobs": ctx.logprobs.map(|_| ctx.text_logprobs(&lps, 0)),
            "finish_reason": reason,
        }),
    };
    let mut v = ctx.envelope(false, json!([choice]));
    v["usage"] = ctx.usage(stats.generated_tokens.max(generated));
    Ok(Json(v).into_response())
}

/// The streamed completion: one SSE `data:` chunk per piece of text, a last chunk with the finish
/// reason, the usage chunk when asked for, then `data: [DONE]`. A failure after the stream started
/// is sent as an error object chunk.
fn stream(ctx: Ctx, mut rx: UnboundedReceiver<JobEvent>, include_usage: bool) -> impl IntoResponse {
    let (out, out_rx) = unbounded_channel::<Event>();
    tokio::spawn(async move {
        let send = |v: Value| out.send(Event::default().data(v.to_string())).is_ok();
        let mut shaper = Shaper::new(&ctx);
        let mut text_offset = 0usize;
        let mut generated = 0usize;
        let mut finish = None;
        let delta_choice = |delta: Value, lp: Option<Value>, reason: Option<&str>| match ctx.kind {
            Kind::Chat => json!({"index": 0, "delta": delta, "logprobs": lp, "finish_reason": reason}),
            Kind::Text => {
                json!({"index": 0, "text": delta.get("content").cloned().unwrap_or(json!("")), "logprobs": lp, "finish_reason": reason})
            }
        };
        if ctx.kind == Kind::Chat
            && !send(ctx.envelope(
                true,
                json!([delta_choice(json!({"role": "assistant", "content": ""}), None, None)]),
            ))
        {
            return; // client gone: dropping rx cancels the job
        }
        loop {
            let ev = rx.recv().await;
            match ev {
                Some(JobEvent::Token { token, logprobs }) => {
                    generated += 1;
                    if token.finish.is_some() {
                        finish = token.finish.clone();
                    }
                    let (r, c) = shaper.push(&token.text);
                    let lp = logprobs.map(|l| match ctx.kind {
                        Kind::Chat => ctx.chat_logprobs(&[(token.id, l)]),
                        Kind::Text => ctx.text_logprobs(&[(token.id, l)], text_offset),
                    });
                    text_offset += c.len();
                    if r.is_empty() && c.is_empty() && lp.is_none() {
                        continue;
                    }
                    let mut delta = json!({});
                    if !r.is_empty() {
                        delta["reasoning_content"] = json!(r);
                    }
                    if !c.is_empty() || ctx.kind == Kind::Text {
                        delta["content"] = json!(c);
                    }
                    if !send(ctx.envelope(true, json!([delta_choice(delta, lp, None)]))) {
                        return;
                    }
                }
                Some(JobEvent::Done(stats)) => {
                    let (r, c, calls) = shaper.finish();
                    let mut delta = json!({});
                    if !r.is_empty() {
                        delta["reasoning_content"] = json!(r);
                    }
                    if !c.is_empty() || ctx.kind == Kind::Text {
                        delta["content"] = json!(c);
                    }
                    if !calls.is_empty() {
                        delta["tool_calls"] = Value::Array(calls_json(&calls, &ctx.id));
                    }
                    let reason = finish_reason(finish.as_ref(), !calls.is_empty());
                    send(ctx.envelope(true, json!([delta_choice(delta, None, Some(reason))])));
                    if include_usage {
                        let mut u = ctx.envelope(true, json!([]));
                        u["usage"] = ctx.usage(stats.generated_tokens.max(generated));
                        send(u);
                    }
                    break;
                }
                Some(JobEvent::Failed(e)) => {
                    send(ApiError::from_zaya(&e).body());
                    break;
                }
                Some(JobEvent::Started { .. }) => {}
                None => {
                    send(
                        ApiError::new(
                            StatusCode::INTERNAL_SERVER_ERROR,
                            "server_error",
                            "the engine dropped the request",
                        )
                        .body(),
                    );
                    break;
                }
            }
        }
        let _ = out.send(Event::default().data("[DONE]"));
    });
    Sse::new(tokio_stream::StreamExt::map(
        UnboundedReceiverStream::new(out_rx),
        Ok::<_, Infallible>,
    ))
}
