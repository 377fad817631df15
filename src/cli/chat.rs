//! `zaya chat`: an interactive multi-turn chat that keeps the model cache across turns (each turn
//! prefills only its new templated suffix). Commands: `/reset` (clear the conversation and the
//! cache), `/exit` (or end of input), `/help`. Ctrl-C stops the current answer; at the prompt, a
//! second Ctrl-C exits. Reads lines from standard input, so it also runs from a pipe (no prompt
//! marker is printed then).
use std::io::{BufRead, IsTerminal, Write};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU8, Ordering};
use std::sync::Arc;

use zaya_mlx::runtime::{FinishReason, GenParams};
use zaya_mlx::{Result, ZayaError};

use super::common::{self, DraftArgs, ModelArgs, SamplingArgs, TemplateArgs};
use super::generate::max_tokens;

const HELP: &str = "commands: /reset clears the conversation and the cache; /think on|off turns the model's reasoning \
on or off; /save FILE writes the transcript; /exit quits (also Ctrl-D or end of input); /help. Ctrl-C stops an answer, \
twice at the prompt quits. Arrow keys and Ctrl-R browse the history on a terminal";

/// Writes the conversation as plain text (`role: content` blocks), atomically.
fn save_transcript(messages: &[zaya_mlx::text::chat::Message], path: &std::path::Path) -> Result<()> {
    let mut text = String::new();
    for m in messages {
        text.push_str(&format!("{}: {}\n\n", m.role, m.content.as_deref().unwrap_or("")));
    }
    zaya_mlx::files::write_atomic(path, |tmp| {
        std::fs::write(tmp, &text).map_err(|e| ZayaError::io(tmp, e))
    })
}

/// `zaya chat` arguments.
const CHAT_HELP: &str = "\
Commands at the prompt: /help, /reset (clear the conversation and the cache), /think on|off,
/save FILE (the transcript), /exit (or Ctrl-D). Ctrl-C stops an answer; twice at the prompt exits.
On a terminal the prompt has line editing and history (arrow keys, Ctrl-R), kept in
~/.cache/zaya-mlx/chat_history. From a pipe, each line is one message.

Exit codes: 0, or 2/3 when no turn succeeded (the last error's code).

Examples:
  zaya chat --model OsaurusAI/ZAYA1-8B-JANGTQ4 --no-thinking --system-prompt 'Be brief.'
  zaya chat --model ./ZAYA1-8B-JANGTQ4 --prompt-cache-file conv.safetensors   (resume and save)
  printf 'Hello\\nTell me more\\n' | zaya chat --model ./ZAYA1-8B-JANGTQ4";

#[derive(clap::Args, Debug)]
#[command(after_help = CHAT_HELP)]
pub struct Args {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Most tokens per answer (-1: until EOS or the context limit).
    #[arg(
        short = 'm',
        long,
        default_value_t = 512,
        allow_negative_numbers = true,
        value_name = "N"
    )]
    pub max_tokens: i64,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    #[command(flatten)]
    pub template: TemplateArgs,
    /// Stop an answer when its text contains this string (repeatable).
    #[arg(long, value_name = "TEXT", allow_hyphen_values = true)]
    pub stop: Vec<String>,
    /// Do not stop at EOS / end-of-turn tokens (like llama.cpp's --ignore-eos; for benchmarks).
    #[arg(long)]
    pub ignore_eos: bool,
    /// Resume the conversation saved in this prompt-cache file (when it exists) and save it there
    /// after every answer (atomically), so a later `zaya chat` continues where this one stopped
    /// without prefilling it again.
    #[arg(long, value_name = "FILE")]
    pub prompt_cache_file: Option<std::path::PathBuf>,
    #[command(flatten)]
    pub draft: DraftArgs,
    /// Print statistics after each answer (on standard error).
    #[arg(long, default_value = "false", value_name = "BOOL", value_parser = common::parse_bool,
          num_args = 0..=1, default_missing_value = "true")]
    pub verbose: bool,
}

/// What a Ctrl-C means right now.
const AT_PROMPT: u8 = 0;
const ANSWERING: u8 = 1;

struct Interrupts {
    mode: AtomicU8,
    cancel: Arc<AtomicBool>,
    presses_at_prompt: AtomicU32,
}

fn install_handler() -> Arc<Interrupts> {
    let st = Arc::new(Interrupts {
        mode: AtomicU8::new(AT_PROMPT),
        cancel: Arc::new(AtomicBool::new(false)),
        presses_at_prompt: AtomicU32::new(0),
    });
    let h = st.clone();
    let installed = ctrlc::set_handler(move || {
        if h.mode.load(Ordering::SeqCst) == ANSWERING {
            if h.cancel.swap(true, Ordering::SeqCst) {
                // a second Ctrl-C while the first has not taken effect yet (e.g. a long prefill)
                eprintln!("\n[interrupted twice: exiting]");
                std::process::exit(130);
            }
        } else if h.presses_at_prompt.fetch_add(1, Ordering::SeqCst) >= 1 {
            eprintln!();
            std::process::exit(130);
        } else {
            eprintln!("\n(Ctrl-C again to exit, or type /exit)");
        }
    });
    if let Err(e) = installed {
        eprintln!("warning: cannot install the Ctrl-C handler ({e}); Ctrl-C will end the program");
    }
    st
}

pub fn run(args: Args) -> Result<i32> {
    let sampling = args.sampling.params()?;
    let chat_options = args.template.chat_options()?;
    args.model.model_options()?;
    let mut params = GenParams {
        max_tokens: max_tokens(args.max_tokens)?,
        sampling,
        stop: args.stop.iter().map(|s| common::expand_escapes(s)).collect(),
        prefill_chunk: args.model.prefill_chunk,
        ignore_eos: args.ignore_eos,
        draft: args.draft.params()?,
        ..GenParams::default()
    };
    params.validate()?;

    let (zaya, load_time) = args.model.load_timed()?;
    if args.verbose {
        eprintln!("[loaded in {:.3} s]", load_time.as_secs_f64());
    }
    if zaya.tokenizer().is_none() || zaya.chat_template().is_none() {
        return Err(ZayaError::Template(format!(
            "{} has no tokenizer or chat template; `zaya chat` needs both (try `zaya generate --ignore-chat-template`)",
            zaya.dir().map_or("the bundle".into(), |d| d.display().to_string())
        )));
    }
    let interactive = std::io::stdin().is_terminal();
    let irq = install_handler();
    params.cancel = Some(irq.cancel.clone());
    let mut session = zaya.session();
    session.set_chat_options(chat_options);
    let resumed = match &args.prompt_cache_file {
        Some(f) if f.exists() => {
            session.load_prompt_cache(f)?;
            true
        }
        _ => false,
    };
    if !resumed || args.template.system_prompt.is_some() {
        session.set_system_prompt(args.template.system_prompt.as_deref());
    }
    if resumed {
        eprintln!(
            "[resumed {} messages, {} cached tokens from {}]",
            session.messages().len(),
            session.offset(),
            args.prompt_cache_file
                .as_ref()
                .map_or(String::new(), |f| f.display().to_string())
        );
    }
    if interactive {
        eprintln!(
            "zaya chat: {} ({HELP})",
            zaya.dir().map_or(String::new(), |d| d.display().to_string())
        );
    }

    let stdin = std::io::stdin();
    let mut lines = stdin.lock();
    let history = zaya_mlx::runtime::hub::home_dir()
        .join(".cache")
        .join("zaya-mlx")
        .join("chat_history");
    let mut editor = if interactive {
        match rustyline::DefaultEditor::new() {
            Ok(mut ed) => {
                let _ = ed.load_history(&history);
                Some(ed)
            }
            Err(e) => {
                eprintln!("warning: no line editing ({e})");
                None
            }
        }
    } else {
        None
    };
    let stdout = std::io::stdout();
    let io = |e: std::io::Error| ZayaError::io("<stdout>", e);
    let mut line = String::new();
    // turns that failed and turns answered: a session where every turn failed exits non-zero
    let (mut failed_turns, mut answered) = (0usize, 0usize);
    let mut last_error: Option<ZayaError> = None;
    loop {
        irq.mode.store(AT_PROMPT, Ordering::SeqCst);
        line.clear();
        match editor.as_mut() {
            // a terminal: line editing, history (arrows, Ctrl-R), Ctrl-C / Ctrl-D handled here
            Some(ed) => match ed.readline(">> ") {
                Ok(l) => {
                    if !l.trim().is_empty() {
                        let _ = ed.add_history_entry(l.as_str());
                    }
                    line = l;
                }
                Err(rustyline::error::ReadlineError::Interrupted) => {
                    if irq.presses_at_prompt.fetch_add(1, Ordering::SeqCst) >= 1 {
                        break;
                    }
                    eprintln!("(Ctrl-C again to exit, or type /exit)");
                    continue;
                }
                Err(rustyline::error::ReadlineError::Eof) => {
                    println!(); // leave the terminal on a fresh line after Ctrl-D
                    break;
                }
                Err(e) => return Err(ZayaError::Runtime(format!("reading the terminal: {e}"))),
            },
            None => {
                let mut raw = Vec::new();
                let n = lines
                    .read_until(b'\n', &mut raw)
                    .map_err(|e| ZayaError::io("<stdin>", e))?;
                if n == 0 {
                    break; // end of input
                }
                match String::from_utf8(raw) {
                    Ok(s) => line = s,
                    Err(_) => {
                        eprintln!("error: that line is not valid UTF-8 text; it was not sent");
                        failed_turns += 1;
                        continue;
                    }
                }
            }
        }
        irq.presses_at_prompt.store(0, Ordering::SeqCst);
        let input = line.trim_end_matches(['\n', '\r']);
        let trimmed = input.trim();
        if trimmed.is_empty() {
            continue;
        }
        if let Some(cmd) = trimmed.strip_prefix('/') {
            let (name, arg) = cmd.split_once(char::is_whitespace).unwrap_or((cmd, ""));
            let arg = arg.trim();
            match name {
                "exit" | "quit" => break,
                "reset" => {
                    session.reset();
                    session.set_system_prompt(args.template.system_prompt.as_deref());
                    println!("[conversation reset]");
                }
                "help" => println!("{HELP}"),
                "think" => match arg {
                    "on" | "off" => {
                        let mut o = session.chat_options().clone();
                        o.enable_thinking = Some(arg == "on");
                        session.set_chat_options(o);
                        println!("[thinking {arg}]");
                    }
                    _ => eprintln!("usage: /think on|off"),
                },
                "save" if !arg.is_empty() => match save_transcript(session.messages(), std::path::Path::new(arg)) {
                    Ok(()) => println!("[transcript saved to {arg}]"),
                    Err(e) => eprintln!("error: {e}"),
                },
                "save" => eprintln!("usage: /save FILE"),
                other => {
                    eprintln!("unknown command /{other} (try /help); a message starting with / can be sent as ' /...'")
                }
            }
            continue;
        }
        irq.cancel.store(false, Ordering::SeqCst);
        irq.mode.store(ANSWERING, Ordering::SeqCst);
        let mut gen = match session.chat(input, &params) {
            Ok(g) => g,
            Err(e) => {
                eprintln!("error: {e}");
                if matches!(e, ZayaError::ContextOverflow { .. }) {
                    eprintln!("(the conversation no longer fits the context: /reset to start over)");
                }
                failed_turns += 1;
                last_error = Some(e);
                continue;
            }
        };
        let mut out = stdout.lock();
        let mut failed = None;
        for step in gen.by_ref() {
            match step {
                Ok(s) => {
                    if !s.text.is_empty() {
                        out.write_all(s.text.as_bytes()).map_err(io)?;
                        out.flush().map_err(io)?;
                    }
                }
                Err(e) => failed = Some(e),
            }
        }
        writeln!(out).map_err(io)?;
        out.flush().map_err(io)?;
        drop(out);
        let stats = gen.stats();
        let finish = gen.finish_reason().cloned();
        drop(gen);
        if let Some(e) = failed {
            eprintln!("error: {e}");
            failed_turns += 1;
            last_error = Some(e);
            continue;
        }
        answered += 1;
        if args.template.tools.is_some() {
            let reply = session
                .messages()
                .last()
                .and_then(|m| m.content.clone())
                .unwrap_or_default();
            for (i, c) in zaya_mlx::text::tool_calls::parse_tool_calls(&reply)
                .1
                .iter()
                .enumerate()
            {
                println!("[tool call] {}", c.to_openai(&format!("call_{i}")));
            }
        }
        if let Some(f) = &args.prompt_cache_file {
            if let Err(e) = session.save_prompt_cache(f) {
                eprintln!("error: saving the conversation: {e}");
            }
        }
        match finish {
            Some(FinishReason::Cancelled) => eprintln!("[interrupted]"),
            Some(FinishReason::ContextLimit) => {
                eprintln!(
                    "[context limit of {} tokens reached: /reset to start over]",
                    zaya.max_context()
                )
            }
            _ => {}
        }
        if args.verbose {
            eprintln!(
                "[prompt: {} new tokens ({} reused), {:.3} tokens-per-sec; generation: {} tokens, {:.3} tokens-per-sec; \
                 time to first token {:.3} s; peak memory {:.3} GB]",
                stats.prompt_tokens,
                stats.reused_tokens,
                stats.prompt_tps,
                stats.generation_tokens,
                stats.generation_tps,
                stats.time_to_first_token.as_secs_f64(),
                stats.peak_bytes() as f64 / 1e9
            );
        }
    }
    if let Some(ed) = editor.as_mut() {
        if let Some(dir) = history.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let _ = ed.save_history(&history);
    }
    if answered == 0 && failed_turns > 0 {
        // nothing worked: the exit code of the last failure (2 when every line was unusable input)
        return Ok(last_error.map_or(2, |e| e.exit_code()));
    }
    Ok(0)
}
