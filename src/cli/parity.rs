//! `zaya parity`: runs the model on a reference file's token ids and compares the logits and every
//! per-layer tensor present, printing one line per tensor; exits 1 beyond tolerance.
use std::path::PathBuf;

use mlx_rs::Array;
use zaya_mlx::model::ZayaModel;
use zaya_mlx::tools::parity::{self, ParityOptions};
use zaya_mlx::{Result, ZayaError};

use super::logits::{parse_token_ids, RunOpts};

/// Explanation printed after the options of `zaya parity --help`.
pub const PARITY_HELP: &str = "\
The reference file uses the naming of tests/reference/README.md (what `zaya logits` writes):
token_ids int32 [T] (or pass --token-ids), logits f32 [T, vocab], and optionally hidden.N /
residual.N f32 [T, hidden] and route.N int32 [T] per half-layer N. Every such tensor present is
compared and printed on one line: max|Δ|, max|ref|, max relative difference max|Δ|/max|ref| (must be
<= --rtol), argmax agreement of the logits and route agreement (must be >= --min-agreement).
Exit status: 0 within tolerance, 1 beyond it, 2 for bad arguments.
Typical bars: f32: the defaults; bf16: --dtype bf16 --rtol 3e-2 --min-agreement 0.99.

Example:
  zaya parity --model ./bundle --reference reference.safetensors";

/// `zaya parity` arguments (long help: [`PARITY_HELP`]).
#[derive(clap::Args, Debug)]
#[command(after_help = PARITY_HELP)]
pub struct Args {
    #[command(flatten)]
    pub run: RunOpts,
    /// Reference safetensors file.
    #[arg(long, value_name = "FILE.safetensors")]
    pub reference: PathBuf,
    /// Token ids to run instead of the reference's `token_ids` (comma-separated).
    #[arg(long, value_name = "IDS")]
    pub token_ids: Option<String>,
    /// Relative tolerance: max|Δ| ≤ rtol·max|ref| for every float tensor.
    #[arg(long, default_value_t = parity::DEFAULT_RTOL)]
    pub rtol: f32,
    /// Minimum fraction of positions with equal logits argmax / equal routes.
    #[arg(long, default_value_t = 1.0)]
    pub min_agreement: f64,
}

pub fn run(args: Args) -> Result<i32> {
    let reference = read_reference(&args.reference)?;
    let model = args.run.open_model()?;
    run_with_model(&args, &model, &reference)
}

/// Reads a reference file (see [`zaya_mlx::tools::parity::read_reference`]).
pub fn read_reference(path: &std::path::Path) -> Result<std::collections::HashMap<String, Array>> {
    zaya_mlx::tools::parity::read_reference(path)
}

/// The command body once the model and the reference are loaded.
pub fn run_with_model(
    args: &Args,
    model: &ZayaModel,
    reference: &std::collections::HashMap<String, Array>,
) -> Result<i32> {
    if args.rtol.is_nan() || args.rtol <= 0.0 {
        return Err(ZayaError::InvalidArgument(format!(
            "--rtol {} must be positive",
            args.rtol
        )));
    }
    if !(0.0..=1.0).contains(&args.min_agreement) {
        return Err(ZayaError::InvalidArgument(format!(
            "--min-agreement {} must be in [0, 1]",
            args.min_agreement
        )));
    }
    let ids = args.token_ids.as_deref().map(parse_token_ids).transpose()?;
    let opts = ParityOptions {
        rtol: args.rtol,
        min_agreement: args.min_agreement,
    };
    let report = parity::compare(model, reference, ids.as_deref(), args.run.prefill_chunk, opts)?;
    print!("{}", report.table());
    Ok(if report.ok() { 0 } else { 1 })
}
