//! `zaya synth`: writes a random bundle in the exact JANGTQ4 format
//! (`--preset tiny|small|zaya1-8b [--config FILE] --seed N --out DIR [--force]`).
use std::path::PathBuf;

use zaya_mlx::tools::synth::{self, SynthOptions, SynthSpec};
use zaya_mlx::{Result, ZayaError};

const SYNTH_HELP: &str = "\
Writes random weights in the exact JANGTQ4 format (4-bit TurboQuant experts, 8-bit affine
attention and embeddings, the sidecar, tokenizer and chat template) for tests and benchmarks. The
text such a bundle generates is gibberish. --force replaces only the files an earlier `zaya synth`
recorded in the directory's .zaya-synth.json; a write the disk has no room for is refused.

Examples:
  zaya synth --preset tiny --seed 0 --out /tmp/tiny
  zaya synth --preset zaya1-8b --out /work/zaya1-8b-synth        (4.65 GiB, about a minute)
  echo '{\"num_hidden_layers\": 8}' > c.json && zaya synth --preset zaya1-8b --config c.json --out /tmp/8hl";

#[derive(clap::Args)]
#[command(after_help = SYNTH_HELP)]
pub struct Args {
    /// Architecture preset: tiny (≈0.8 MB, tests and demos), small (real per-layer dims,
    /// 4 half-layers), zaya1-8b (the real dimensions, ≈4.65 GiB).
    #[arg(long, default_value = "tiny")]
    pub preset: String,
    /// JSON file whose config.json-style keys override the preset (hidden_size,
    /// num_hidden_layers, num_experts, ffn_hidden_size, vocab_size, group_size, expert_bits...).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Seed of the random weights.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Output directory.
    #[arg(long)]
    pub out: PathBuf,
    /// Write into a non-empty output directory.
    #[arg(long)]
    pub force: bool,
    /// Worker threads (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Write the Zyphra-format float source (F32, per-expert linear_fc1/fc2) instead of the
    /// quantized bundle: the input of `jang_tools.convert_zaya_jangtq`.
    #[arg(long)]
    pub float_source: bool,
    /// No progress bar.
    #[arg(long, short)]
    pub quiet: bool,
}

pub fn run(args: Args) -> Result<i32> {
    let mut spec = SynthSpec::preset(&args.preset)?;
    if let Some(path) = &args.config {
        let text = std::fs::read_to_string(path).map_err(|e| ZayaError::io(path, e))?;
        let file = path.display().to_string();
        let v: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| ZayaError::config(&file, "<json>", format!("not valid JSON: {e}")))?;
        spec.apply_overrides(&v, &file)?;
    }
    spec.seed = args.seed;
    if args.threads == Some(0) {
        return Err(ZayaError::InvalidArgument("--threads must be at least 1".into()));
    }
    let opts = SynthOptions {
        force: args.force,
        progress: !args.quiet,
        threads: args.threads,
    };
    let report = if args.float_source {
        synth::write_float_source(&spec, &args.out, &opts)?
    } else {
        synth::write_bundle(&spec, &args.out, &opts)?
    };
    eprintln!(
        "wrote {} ({} preset, seed {}): {} tensors in {} shard(s), {:.3} GiB, {:.1} s on {} thread(s)",
        report.dir.display(),
        spec.preset,
        spec.seed,
        report.tensor_count,
        report.shards.len(),
        report.total_size as f64 / (1u64 << 30) as f64,
        report.seconds,
        report.threads
    );
    Ok(0)
}
