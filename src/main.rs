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
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Generate(a) => cli::generate::run(a),
        Command::Chat(a) => cli::chat::run(a),
        Command::CachePrompt(a) => cli::cache_prompt::run(a),
        Command::Smoke(a) => cli::smoke::run(a),
        Command::Synth(a) => cli::synth::run(a),
        Command::Info(a) => cli::info::run(a),
        Command::Logits(a) => cli::logits::run(a),
        Command::Parity(a) => cli::parity::run(a),
        Command::Bench(a) => cli::bench::run(a),
    };
    match result {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(e.exit_code());
        }
    }
}
