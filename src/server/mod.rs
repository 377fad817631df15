//! `zaya serve`: an OpenAI-compatible HTTP server (axum on tokio) on the continuous-batching
//! [`Engine`](crate::runtime::engine::Engine), with an exact prefix cache.
//!
//! - `chat.html`: the chat page served at `/` (one self-contained file, no network at run time);
//! - `routes.rs`: the endpoints (`/v1/chat/completions`, `/v1/completions`, `/v1/models`,
//!   `/health`, each also without `/v1`), the bearer-key check, SSE streaming;
//! - `openai.rs`: request fields → generation settings, OpenAI error objects;
//! - `reasoning.rs`: reasoning (`<think>`) and tool-call splitting of streamed answers;
//! - `worker.rs`: the engine thread (the model lives there), admission, cancellation on
//!   disconnect, one log line per request;
//! - `prefix_cache.rs`: complete model states by token prefix, LRU within a byte budget.
//!
//! The HTTP side never touches MLX: it renders and tokenizes prompts, then talks to the engine
//! thread through channels. A request that fails ends alone; the others keep going.
mod openai;
mod prefix_cache;
mod reasoning;
mod routes;
mod worker;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::Router;
use serde_json::Value;

use crate::error::{Result, ZayaError};
use crate::runtime::Zaya;
use crate::text::chat::{ChatOptions, ChatTemplate};
use crate::text::tokenizer::Tokenizer;

pub use prefix_cache::PrefixCache;
pub use reasoning::{ReasoningSplitter, ToolCallHold};

use openai::{ApiError, ApiResult};

/// Settings of `zaya serve`.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub host: String,
    /// 0 = any free port (tests).
    pub port: u16,
    /// Sequences decoding together.
    pub max_concurrency: usize,
    /// Requests waiting beyond those (more get 429).
    pub max_queue: usize,
    /// Prefix-cache budget in bytes (0 = off).
    pub prompt_cache_bytes: usize,
    /// Bearer key every API route requires.
    pub api_key: Option<String>,
    /// Largest request body in bytes (more gets 413).
    pub max_body_bytes: usize,
    /// `max_tokens` when a request gives none.
    pub default_max_tokens: usize,
    /// The id `/v1/models` reports and requests may name.
    pub model_id: String,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            host: "127.0.0.1".into(),
            port: 8080,
            max_concurrency: 8,
            max_queue: 64,
            prompt_cache_bytes: 2 << 30,
            api_key: None,
            max_body_bytes: 8 << 20,
            default_max_tokens: 512,
            model_id: "zaya".into(),
        }
    }
}

/// What the routes share.
pub(crate) struct AppState {
    model_id: String,
    fingerprint: String,
    created: u64,
    tokenizer: Option<Tokenizer>,
    template: Option<ChatTemplate>,
    max_context: usize,
    vocab_size: usize,
    jobs: std::sync::mpsc::Sender<worker::Job>,
    shared: Arc<worker::Shared>,
    admit_limit: usize,
    api_key: Option<String>,
    default_max_tokens: usize,
    counter: AtomicU64,
}

impl AppState {
    fn accepts_model(&self, m: &str) -> bool {
        m == self.model_id || self.model_id.rsplit('/').next() == Some(m) || m == "default_model"
    }

    fn tokenizer(&self) -> ApiResult<&Tokenizer> {
        self.tokenizer.as_ref().ok_or_else(|| {
            ApiError::new(
                axum::http::StatusCode::BAD_REQUEST,
                "invalid_request_error",
                "this model has no tokenizer: send token ids",
            )
        })
    }

    fn encode(&self, text: &str) -> ApiResult<Vec<u32>> {
        if text.len() > self.max_context.saturating_mul(64).max(1 << 20) {
            return Err(
                ApiError::bad("prompt", "the prompt is longer than any prompt that fits the context")
                    .code("context_length_exceeded"),
            );
        }
        self.tokenizer()?
            .encode(text, true)
            .map_err(|e| ApiError::from_zaya(&e))
    }

    /// The conversation's prompt ids and the prefix-cache boundary before its last message.
    fn chat_prompt(&self, messages: &[Value], opts: &ChatOptions) -> ApiResult<(Vec<u32>, Vec<usize>)> {
        let tok = self.tokenizer()?;
        let tpl = self.template.as_ref().ok_or_else(|| {
            ApiError::new(
                axum::http::StatusCode::BAD_REQUEST,
                "invalid_request_error",
                "this model has no chat template: use /v1/completions",
            )
        })?;
        let ids = tpl
            .tokenize(tok, messages, opts)
            .map_err(|e| ApiError::bad("messages", e.to_string()))?;
        let mut boundaries = Vec::new();
        if messages.len() >= 2 {
            let head = ChatOptions {
                add_generation_prompt: false,
                ..opts.clone()
            };
            if let Ok(h) = tpl.tokenize(tok, &messages[..messages.len() - 1], &head) {
                if !h.is_empty() && h.len() < ids.len() && ids.starts_with(&h) {
                    boundaries.push(h.len());
                }
            }
        }
        Ok((ids, boundaries))
    }

    fn token_text(&self, id: u32) -> String {
        self.tokenizer
            .as_ref()
            .and_then(|t| t.decode(&[id], false).ok())
            .unwrap_or_default()
    }
}

/// A running server (see [`spawn`]).
pub struct ServerHandle {
    /// The bound address.
    pub addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<Result<()>>>,
}

impl ServerHandle {
    /// Stops accepting, lets in-flight requests finish, and waits for the server to end.
    pub fn shutdown(mut self) -> Result<()> {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        match self.thread.take().map(|t| t.join()) {
            Some(Ok(r)) => r,
            Some(Err(_)) => Err(ZayaError::Runtime("the server thread panicked".into())),
            None => Ok(()),
        }
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn router(state: Arc<AppState>, max_body: usize) -> Router {
    let api = Router::new()
        .route("/chat/completions", post(routes::chat))
        .route("/completions", post(routes::completions))
        .route("/models", get(routes::models))
        .route("/health", get(routes::health));
    Router::new()
        .route("/", get(routes::page))
        .nest("/v1", api.clone())
        .merge(api)
        .layer(axum::middleware::from_fn_with_state(state.clone(), routes::require_key))
        .layer(DefaultBodyLimit::max(max_body))
        .with_state(state)
}

/// Starts the server on its own threads (engine thread + tokio runtime) and returns once it
/// listens. `stop` ends it: new connections are refused, in-flight requests finish.
pub fn spawn(zaya: Zaya, opts: ServeOptions) -> Result<ServerHandle> {
    if opts.max_concurrency == 0 {
        return Err(ZayaError::InvalidArgument(
            "--max-concurrency must be at least 1".into(),
        ));
    }
    let shared = Arc::new(worker::Shared {
        in_flight: AtomicUsize::new(0),
        stopping: AtomicBool::new(false),
    });
    let (jobs_tx, jobs_rx) = std::sync::mpsc::channel();
    let state = Arc::new(AppState {
        model_id: opts.model_id.clone(),
        fingerprint: format!("zaya-mlx-{}", env!("CARGO_PKG_VERSION")),
        created: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        tokenizer: zaya.tokenizer().cloned(),
        template: zaya.chat_template().cloned(),
        max_context: zaya.max_context(),
        vocab_size: zaya.model().config().vocab_size,
        jobs: jobs_tx,
        shared: shared.clone(),
        admit_limit: opts.max_concurrency + opts.max_queue,
        api_key: opts.api_key.clone(),
        default_max_tokens: opts.default_max_tokens,
        counter: AtomicU64::new(0),
    });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| ZayaError::Runtime(format!("tokio: {e}")))?;
    let addr = format!("{}:{}", opts.host, opts.port);
    let listener = rt
        .block_on(tokio::net::TcpListener::bind(&addr))
        .map_err(|e| ZayaError::InvalidArgument(format!("cannot listen on {addr}: {e}")))?;
    let bound = listener
        .local_addr()
        .map_err(|e| ZayaError::Runtime(format!("listener: {e}")))?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let worker_shared = shared.clone();
    let (max_batch, cache_bytes) = (opts.max_concurrency, opts.prompt_cache_bytes);
    let engine = std::thread::Builder::new()
        .name("zaya-engine".into())
        .spawn(move || worker::run(zaya, jobs_rx, worker_shared, max_batch, cache_bytes))
        .map_err(|e| ZayaError::Runtime(format!("engine thread: {e}")))?;
    let app = router(state.clone(), opts.max_body_bytes);
    let thread = std::thread::Builder::new()
        .name("zaya-http".into())
        .spawn(move || -> Result<()> {
            let served = rt.block_on(async move {
                axum::serve(listener, app)
                    .with_graceful_shutdown(async move {
                        let _ = stop_rx.await;
                        shared.stopping.store(true, Ordering::SeqCst);
                    })
                    .await
            });
            // the engine thread ends once the job channel closes and every job has ended
            drop(state);
            let _ = engine.join();
            served.map_err(|e| ZayaError::Runtime(format!("server: {e}")))
        })
        .map_err(|e| ZayaError::Runtime(format!("server thread: {e}")))?;
    Ok(ServerHandle {
        addr: bound,
        stop: Some(stop_tx),
        thread: Some(thread),
    })
}

/// Runs the server until SIGTERM or Ctrl-C, then stops accepting, lets in-flight requests finish
/// and returns.
pub fn serve(zaya: Zaya, opts: ServeOptions) -> Result<()> {
    let handle = spawn(zaya, opts)?;
    eprintln!("zaya serve: listening on http://{} (OpenAI API under /v1)", handle.addr);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| ZayaError::Runtime(format!("tokio: {e}")))?;
    rt.block_on(async {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term =
            signal(SignalKind::terminate()).map_err(|e| ZayaError::Runtime(format!("SIGTERM handler: {e}")))?;
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        Ok::<(), ZayaError>(())
    })?;
    eprintln!("zaya serve: shutting down (finishing in-flight requests)");
    handle.shutdown()
}
