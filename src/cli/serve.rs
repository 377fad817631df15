//! `zaya serve`: the OpenAI-compatible HTTP server (library: [`zaya_mlx::server`]).
use zaya_mlx::server::{self, ServeOptions};
use zaya_mlx::{Result, ZayaError};

use super::common::ModelArgs;

const AFTER_HELP: &str = "\
Endpoints (also without the /v1 prefix): POST /v1/chat/completions, POST /v1/completions (a string
or an array of token ids as the prompt), GET /v1/models, GET /health. Streaming over SSE; usage with
prompt_tokens_details.cached_tokens. Up to --max-concurrency requests decode together (continuous
batching), --max-queue more wait; beyond that requests get 429. Prompts whose start matches a cached
state (an earlier request's prompt and answer, or the conversation before its last message) reuse
it exactly and prefill only the rest. One log line per request on stderr. SIGTERM or Ctrl-C: stop
accepting, finish in-flight requests, exit 0.

Examples:
  zaya serve --model OsaurusAI/ZAYA1-8B-JANGTQ4 --port 8080
  curl http://127.0.0.1:8080/v1/chat/completions -H 'Content-Type: application/json' \\
       -d '{\"messages\": [{\"role\": \"user\", \"content\": \"Hello!\"}], \"max_tokens\": 64}'";

/// `zaya serve` arguments.
#[derive(clap::Args, Debug)]
#[command(after_help = AFTER_HELP)]
pub struct Args {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Address to bind (loopback by default; 0.0.0.0 exposes the server to the network).
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Requests decoding together.
    #[arg(long, default_value_t = 8, value_parser = super::common::parse_count)]
    pub max_concurrency: usize,
    /// Requests waiting beyond those before new ones get 429.
    #[arg(long, default_value_t = 64, value_parser = super::common::parse_count)]
    pub max_queue: usize,
    /// Prefix-cache budget in bytes (0 turns it off; suffixes K, M, G accepted).
    #[arg(long, default_value = "2G", value_name = "BYTES")]
    pub prompt_cache_bytes: String,
    /// Require `Authorization: Bearer KEY` on every API route (default: $ZAYA_API_KEY if set).
    #[arg(long, value_name = "KEY")]
    pub api_key: Option<String>,
    /// max_tokens of requests that give none.
    #[arg(long, default_value_t = 512, value_parser = super::common::parse_count)]
    pub max_tokens: usize,
    /// Largest request body, bytes.
    #[arg(long, default_value_t = 8 << 20, value_parser = super::common::parse_count)]
    pub max_body_bytes: usize,
}

fn parse_bytes(s: &str) -> Result<usize> {
    let t = s.trim();
    let (num, mult) = match t.chars().last().map(|c| c.to_ascii_uppercase()) {
        Some('K') => (&t[..t.len() - 1], 1usize << 10),
        Some('M') => (&t[..t.len() - 1], 1 << 20),
        Some('G') => (&t[..t.len() - 1], 1 << 30),
        _ => (t, 1),
    };
    num.trim()
        .parse::<usize>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .ok_or_else(|| {
            ZayaError::InvalidArgument(format!(
                "--prompt-cache-bytes `{s}`: expected a size like 2G, 512M or 0"
            ))
        })
}

pub fn run(args: Args) -> Result<i32> {
    if args.max_concurrency == 0 || args.max_concurrency > 64 {
        return Err(ZayaError::InvalidArgument("--max-concurrency must be in 1..=64".into()));
    }
    if args.max_tokens == 0 {
        return Err(ZayaError::InvalidArgument("--max-tokens must be positive".into()));
    }
    let cache_bytes = parse_bytes(&args.prompt_cache_bytes)?;
    args.model.model_options()?;
    let api_key = args
        .api_key
        .clone()
        .or_else(|| std::env::var("ZAYA_API_KEY").ok().filter(|k| !k.is_empty()));
    let (zaya, took) = args.model.load_timed()?;
    let model_id = args.model.model.clone().unwrap_or_else(|| "zaya-demo".into());
    eprintln!(
        "zaya serve: loaded {model_id} in {:.1}s; batching {} (up to {} requests together)",
        took.as_secs_f64(),
        if zaya.model().supports_batching() {
            "on"
        } else {
            "off: these options decode one sequence at a time"
        },
        args.max_concurrency
    );
    server::serve(
        zaya,
        ServeOptions {
            host: args.host,
            port: args.port,
            max_concurrency: args.max_concurrency,
            max_queue: args.max_queue,
            prompt_cache_bytes: cache_bytes,
            api_key,
            max_body_bytes: args.max_body_bytes.max(1024),
            default_max_tokens: args.max_tokens,
            model_id,
        },
    )?;
    Ok(0)
}
