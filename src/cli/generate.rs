//! `zaya generate`: one prompt in, streamed text out, with mlx_lm.generate's flags and output
//! layout (`==========`, the text, `==========`, then the `Prompt:`, `Generation:` and
//! `Peak memory:` lines; `--verbose false` prints only the text).
use std::io::Write;

use zaya_mlx::runtime::{FinishReason, GenParams};
use zaya_mlx::{Result, ZayaError};

use super::common::{self, DraftArgs, ModelArgs, SamplingArgs, TemplateArgs};

const AFTER_HELP: &str = "\
Peak memory is the larger of MLX's allocator peak and the process's peak resident set (the weights are
memory-mapped on the CPU backend, which MLX's counter does not see); GB = 10^9 bytes.

Examples:
  zaya generate -p 'Hello'                                  (tiny demo bundle, random weights)
  zaya generate --model OsaurusAI/ZAYA1-8B-JANGTQ4 -p 'What is 2+2?' --no-thinking
  echo 'Write a haiku' | zaya generate --model ./ZAYA1-8B-JANGTQ4 -p - --temp 0.7 --seed 1
  zaya cache-prompt --model DIR -p \"$(cat report.txt)\" --prompt-cache-file report.safetensors
  zaya generate --model DIR --prompt-cache-file report.safetensors -p 'Summarize the report.'
  zaya generate --model DIR -p 'Repeat this list: ...' --draft ngram --num-draft-tokens 4";

/// `zaya generate` arguments.
#[derive(clap::Args, Debug)]
#[command(after_help = AFTER_HELP)]
pub struct Args {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Prompt text (`-` reads standard input; literal \n and \t are expanded).
    #[arg(short = 'p', long, default_value = "hello", allow_hyphen_values = true)]
    pub prompt: String,
    /// Most tokens to generate (-1: until EOS or the context limit).
    #[arg(
        short = 'm',
        long,
        default_value_t = 100,
        allow_negative_numbers = true,
        value_name = "N"
    )]
    pub max_tokens: i64,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    #[command(flatten)]
    pub template: TemplateArgs,
    /// Encode the prompt as is, without the chat template.
    #[arg(long)]
    pub ignore_chat_template: bool,
    /// Stop when the text contains this string (repeatable; not printed; \n and \t expanded).
    #[arg(long, value_name = "TEXT", allow_hyphen_values = true)]
    pub stop: Vec<String>,
    /// Do not stop at EOS / end-of-turn tokens (like llama.cpp's --ignore-eos; for benchmarks).
    #[arg(long)]
    pub ignore_eos: bool,
    /// Extra end-of-sequence tokens (token text or id; repeatable).
    #[arg(long, value_name = "TOKEN", num_args = 1..)]
    pub extra_eos_token: Vec<String>,
    /// Start from a prompt cache made by `zaya cache-prompt` (or saved by `zaya chat`): the prompt is
    /// the next user message after the cached conversation (or, for a cache made with
    /// --ignore-chat-template, text that continues it); only what follows the cached prefix is
    /// prefilled. The file is not changed.
    #[arg(long, value_name = "FILE")]
    pub prompt_cache_file: Option<std::path::PathBuf>,
    #[command(flatten)]
    pub draft: DraftArgs,
    /// For each generated token, also report its log-probability under the model and the N most
    /// likely alternatives (log-softmax of the raw logits, before sampling settings).
    #[arg(long, value_name = "N", value_parser = common::parse_count)]
    pub logprobs: Option<usize>,
    /// Print one JSON object (text, token ids, finish reason, statistics, and logprobs with
    /// --logprobs) instead of the mlx_lm layout.
    #[arg(long)]
    pub json: bool,
    /// Print the separators and statistics (true) or only the generated text (false).
    #[arg(long, default_value = "true", value_name = "BOOL", value_parser = common::parse_bool,
          num_args = 0..=1, default_missing_value = "true")]
    pub verbose: bool,
}

/// `--max-tokens` → the library's limit (`-1` = none).
pub fn max_tokens(n: i64) -> Result<Option<usize>> {
    match n {
        -1 => Ok(None),
        n if n > 0 => Ok(Some(n as usize)),
        n => Err(ZayaError::InvalidArgument(format!(
            "--max-tokens must be positive or -1 (no limit), got {n}"
        ))),
    }
}

pub fn run(args: Args) -> Result<i32> {
    // everything that can be checked before loading the model
    let sampling = args.sampling.params()?;
    let chat_options = args.template.chat_options()?;
    args.model.model_options()?;
    let params = GenParams {
        max_tokens: max_tokens(args.max_tokens)?,
        sampling,
        stop: args.stop.iter().map(|s| common::expand_escapes(s)).collect(),
        prefill_chunk: args.model.prefill_chunk,
        ignore_eos: args.ignore_eos,
        draft: args.draft.params()?,
        ..GenParams::default()
    };
    params.validate()?;
    let prompt = common::read_prompt(&args.prompt)?;

    let (zaya, load_time) = args.model.load_timed()?;
    if args.verbose && !args.json {
        eprintln!("Load: {:.3} s", load_time.as_secs_f64());
    }
    let tok = zaya.tokenizer().ok_or_else(|| {
        ZayaError::Tokenizer(format!(
            "{} has no tokenizer.json; `zaya generate` needs one (for token ids use `zaya logits --token-ids`)",
            zaya.dir().map_or("the bundle".into(), |d| d.display().to_string())
        ))
    })?;
    let params = GenParams {
        extra_eos: common::extra_eos_ids(Some(tok), &args.extra_eos_token, zaya.model().config().vocab_size)?,
        ..params
    };
    let mut session = zaya.session();
    let use_template = !args.ignore_chat_template && zaya.chat_template().is_some();
    if let Some(f) = &args.prompt_cache_file {
        session.load_prompt_cache(f)?;
    }
    let cached = session.offset();
    let mut gen = if use_template {
        session.set_chat_options(chat_options);
        // a cached conversation keeps its own system message unless one is given
        if args.prompt_cache_file.is_none() || args.template.system_prompt.is_some() {
            session.set_system_prompt(args.template.system_prompt.as_deref());
        }
        session.chat(prompt.as_str(), &params)?
    } else {
        session.generate(&prompt, &params)?
    };

    if args.logprobs.is_some_and(|n| n > 100) {
        return Err(ZayaError::InvalidArgument(
            "--logprobs N: at most 100 alternatives".into(),
        ));
    }
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let io = |e: std::io::Error| ZayaError::io("<stdout>", e);
    let stream = args.verbose && !args.json;
    if stream {
        writeln!(out, "==========").map_err(io)?;
    }
    let mut text = String::new();
    let mut ids = Vec::new();
    let mut logprobs = Vec::new();
    let vocab = tok.vocab_size();
    #[allow(clippy::while_let_on_iterator)] // `last_logits` is read between steps
    while let Some(step) = gen.next() {
        let step = match step {
            Ok(s) => s,
            Err(e) => {
                let _ = writeln!(out);
                return Err(e);
            }
        };
        if let (Some(n), Some((_, raw))) = (args.logprobs, gen.last_logits()) {
            logprobs.push(zaya_mlx::runtime::sampling::token_logprobs(
                raw,
                step.id,
                n,
                Some(vocab),
            )?);
        }
        if stream && !step.text.is_empty() {
            out.write_all(step.text.as_bytes()).map_err(io)?;
            out.flush().map_err(io)?;
        }
        ids.push(step.id);
        text.push_str(&step.text);
    }
    let stats = gen.stats();
    let finish = gen.finish_reason().cloned();
    drop(gen);
    let (content, calls) = if args.template.tools.is_some() {
        zaya_mlx::text::tool_calls::parse_tool_calls(&text)
    } else {
        (text.clone(), Vec::new())
    };
    let calls_json: Vec<serde_json::Value> = calls
        .iter()
        .enumerate()
        .map(|(i, c)| c.to_openai(&format!("call_{i}")))
        .collect();
    if args.json {
        let piece = |id: u32| tok.decode(&[id], false).unwrap_or_default();
        let lp: Vec<serde_json::Value> = logprobs
            .iter()
            .zip(&ids)
            .map(|(l, &id)| {
                serde_json::json!({
                    "id": id, "token": piece(id), "logprob": l.0,
                    "top_logprobs": l.1.iter().map(|&(t, p)| serde_json::json!({"id": t, "token": piece(t), "logprob": p})).collect::<Vec<_>>(),
                })
            })
            .collect();
        let fed = session.tokens();
        let prompt_ids = &fed[..stats.prompt_tokens.min(fed.len())];
        let mut v = serde_json::json!({
            "text": text,
            "prompt_token_ids": prompt_ids,
            "token_ids": ids,
            "finish_reason": if calls.is_empty() { finish.as_ref().map(|f| f.as_str()) } else { Some("tool_calls") },
            "usage": {
                "prompt_tokens": stats.prompt_tokens,
                "cached_tokens": stats.reused_tokens,
                "completion_tokens": stats.generation_tokens,
            },
            "prompt_tps": stats.prompt_tps,
            "generation_tps": stats.generation_tps,
            "peak_memory_bytes": stats.peak_bytes(),
        });
        if args.logprobs.is_some() {
            v["logprobs"] = serde_json::Value::Array(lp);
        }
        if args.template.tools.is_some() {
            v["content"] = serde_json::json!(content);
            v["tool_calls"] = serde_json::Value::Array(calls_json.clone());
        }
        writeln!(out, "{v}").map_err(io)?;
        return Ok(0);
    }
    if args.verbose {
        writeln!(out).map_err(io)?;
        writeln!(out, "==========").map_err(io)?;
        if text.is_empty() {
            writeln!(out, "No text generated for this prompt").map_err(io)?;
        } else {
            writeln!(
                out,
                "Prompt: {} tokens, {:.3} tokens-per-sec",
                stats.prompt_tokens, stats.prompt_tps
            )
            .map_err(io)?;
            writeln!(
                out,
                "Generation: {} tokens, {:.3} tokens-per-sec",
                stats.generation_tokens, stats.generation_tps
            )
            .map_err(io)?;
            if stats.draft.steps > 0 {
                writeln!(
                    out,
                    "Draft: {} of {} drafted tokens accepted ({:.1}%) in {} verify steps",
                    stats.draft.accepted,
                    stats.draft.drafted,
                    100.0 * stats.draft.acceptance_rate(),
                    stats.draft.steps
                )
                .map_err(io)?;
            }
            if args.prompt_cache_file.is_some() {
                writeln!(
                    out,
                    "Prompt cache: {} of {cached} cached tokens reused",
                    stats.reused_tokens
                )
                .map_err(io)?;
            }
            writeln!(out, "Peak memory: {:.3} GB", stats.peak_bytes() as f64 / 1e9).map_err(io)?;
            for c in &calls_json {
                writeln!(out, "Tool call: {c}").map_err(io)?;
            }
            if !logprobs.is_empty() {
                writeln!(out, "Logprobs (token: log-probability | most likely alternatives):").map_err(io)?;
                for (l, &id) in logprobs.iter().zip(&ids) {
                    let piece = |t: u32| format!("{:?}", tok.decode(&[t], false).unwrap_or_default());
                    let alts: Vec<String> = l.1.iter().map(|&(t, p)| format!("{} {p:.4}", piece(t))).collect();
                    writeln!(out, "  {} ({id}): {:.4} | {}", piece(id), l.0, alts.join(", ")).map_err(io)?;
                }
            }
        }
    } else {
        writeln!(out, "{text}").map_err(io)?;
    }
    out.flush().map_err(io)?;
    if args.prompt_cache_file.is_some() && stats.reused_tokens < cached {
        eprintln!(
            "note: the prompt did not continue the cached prefix ({cached} tokens; {} reused), so it was prefilled \
             from there; make the cache and the prompt with the same template flags",
            stats.reused_tokens
        );
    }
    if finish == Some(FinishReason::ContextLimit) {
        eprintln!(
            "note: generation stopped at the context limit of {} tokens",
            zaya.max_context()
        );
    }
    Ok(0)
}
