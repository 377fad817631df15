//! The `zaya` command-line tool. Each subcommand lives in `src/cli/<name>.rs`.
use clap::{Parser, Subcommand};

mod cli;

#[derive(Parser)]
#[command(name = "zaya", version = concat!(env!("CARGO_PKG_VERSION"), " (MLX 0.32.2)"),
          about = "ZAYA1-8B inference on MLX: generate, chat, inspect, synthesize and parity-test bundles")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate text from a prompt (mlx_lm.generate-style flags and output).
    Generate(cli::generate::Args),
    /// Interactive multi-turn chat that keeps the cache across turns.
    Chat(cli::chat::Args),
    /// Prefill a prompt once and save the model state to a prompt-cache file.
    CachePrompt(cli::cache_prompt::Args),
    /// The bundle card's smoke tests (greedy), PASS/FAIL each.
    Smoke(cli::smoke::Args),
    /// Write a random bundle in the exact JANGTQ4 format.
    Synth(cli::synth::Args),
    /// Describe and validate a bundle.
    Info(cli::info::Args),
    /// Write logits (and per-layer hidden states) for token ids to a safetensors file.
    Logits(cli::logits::Args),
    /// Compare our logits / hidden states with a reference safetensors file.
    Parity(cli::parity::Args),
    /// Benchmark prefill and decode against the memory-bandwidth bound.
    Bench(cli::bench::Args),
    /// Serve the model over an OpenAI-compatible HTTP API (continuous batching, prefix cache).
    Serve(cli::serve::Args),
    /// Print a shell completion script: `zaya completions bash > ~/.local/share/bash-completion/completions/zaya`.
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
}

/// A closed standard output (`zaya info | head -1`) ends the command quietly with exit code 0, as
/// it does for the usual Unix tools: Rust's `println!` panics on EPIPE with "failed printing to
/// stdout", which this hook turns into a silent exit; explicit writes report `<stdout>` errors,
/// which `main` treats the same way.
fn quiet_broken_pipe() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let p = info.payload();
        let msg = p
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| p.downcast_ref::<&str>().copied())
            .unwrap_or("");
        if msg.starts_with("failed printing to stdout") && msg.contains("Broken pipe") {
            std::process::exit(0);
        }
        if zaya_mlx::error::in_guarded_call() {
            return; // a third-party parser's panic that the library turns into a typed error
        }
        default(info);
    }));
}

fn main() {
    quiet_broken_pipe();
    zaya_mlx::bundle::sigbus::install();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Generate(a) => cli::generate::run(a),
        Command::Chat(a) => cli::chat::run(a),
        Command::CachePrompt(a) => cli::cache_prompt::run(a),
        Command::Smoke(a) => cli::smoke::run(a),
        Command::Synth(a) => cli::synth::run(a),
        Command::Info(a) => cli::info::run(a),
        Command::Logits(a) => cli::logits::run(a),
        Command::Serve(a) => cli::serve::run(a),
        Command::Parity(a) => cli::parity::run(a),
        Command::Bench(a) => cli::bench::run(a),
        Command::Completions { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(shell, &mut Cli::command(), "zaya", &mut std::io::stdout());
            Ok(0)
        }
    };
    match result {
        Ok(code) => std::process::exit(code),
        Err(zaya_mlx::ZayaError::Io { path, source })
            if source.kind() == std::io::ErrorKind::BrokenPipe && path.as_os_str() == "<stdout>" =>
        {
            std::process::exit(0)
        }
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(e.exit_code());
        }
    }
}
