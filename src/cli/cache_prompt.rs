//! `zaya cache-prompt`: prefills a prompt once and saves the model state to a prompt-cache file
//! (mlx_lm.cache_prompt's flags), for `zaya generate --prompt-cache-file` and `zaya chat
//! --prompt-cache-file` to continue from without prefilling it again.
use std::path::PathBuf;
use std::time::Instant;

use zaya_mlx::{Result, ZayaError};

use super::common::{self, ModelArgs, TemplateArgs};

const AFTER_HELP: &str = "\
With the chat template (the default), the prompt is cached as a user message; `zaya generate
--prompt-cache-file F -p Q` then asks Q as the next user message and prefills only that. With
--ignore-chat-template the prompt is cached as raw text and the generate prompt continues it.
The file holds the whole state (KV cache, CCA conv states and prev_hs of every attention layer),
the token ids and the conversation; it is written atomically and never into the bundle.

Examples:
  zaya cache-prompt --model DIR -p \"$(cat report.txt)\" --prompt-cache-file report.safetensors
  cat report.txt | zaya cache-prompt --model DIR -p - --prompt-cache-file report.safetensors";

/// `zaya cache-prompt` arguments.
#[derive(clap::Args, Debug)]
#[command(after_help = AFTER_HELP)]
pub struct Args {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Prompt to cache (`-` reads standard input; literal \n and \t are expanded).
    #[arg(short = 'p', long, allow_hyphen_values = true)]
    pub prompt: String,
    /// The file to write (replaced atomically if it exists).
    #[arg(long, value_name = "FILE")]
    pub prompt_cache_file: PathBuf,
    #[command(flatten)]
    pub template: TemplateArgs,
    /// Cache the prompt as raw text, without the chat template.
    #[arg(long)]
    pub ignore_chat_template: bool,
}

pub fn run(args: Args) -> Result<i32> {
    let chat_options = args.template.chat_options()?;
    args.model.model_options()?;
    let prompt = common::read_prompt(&args.prompt)?;
    if prompt.is_empty() {
        return Err(ZayaError::InvalidArgument("--prompt is empty: nothing to cache".into()));
    }
    if args.prompt_cache_file.is_dir() {
        return Err(ZayaError::InvalidArgument(format!(
            "--prompt-cache-file {}: is a directory",
            args.prompt_cache_file.display()
        )));
    }
    let zaya = args.model.load()?;
    if zaya.tokenizer().is_none() {
        return Err(ZayaError::Tokenizer(
            "the bundle has no tokenizer.json; `zaya cache-prompt` needs one".into(),
        ));
    }
    let mut session = zaya.session();
    let start = Instant::now();
    let fed = if !args.ignore_chat_template && zaya.chat_template().is_some() {
        session.set_chat_options(chat_options);
        session.set_system_prompt(args.template.system_prompt.as_deref());
        session.push_message(zaya_mlx::text::chat::Message::user(prompt));
        session.prefill_history(args.model.prefill_chunk)?
    } else {
        session.prefill_text(&prompt, args.model.prefill_chunk)?
    };
    let secs = start.elapsed().as_secs_f64();
    session.save_prompt_cache(&args.prompt_cache_file)?;
    let bytes = std::fs::metadata(&args.prompt_cache_file).map_or(0, |m| m.len());
    eprintln!(
        "Prompt: {fed} tokens, {:.3} tokens-per-sec",
        if secs > 0.0 { fed as f64 / secs } else { 0.0 }
    );
    eprintln!(
        "Saved the prompt cache to {} ({:.1} MB)",
        args.prompt_cache_file.display(),
        bytes as f64 / 1e6
    );
    Ok(0)
}
