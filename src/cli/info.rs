//! `zaya info`: describes and validates a bundle from its headers alone (no weights are read):
//! layout, formats per kind of tensor, bits and group sizes, tensor counts, bytes per format,
//! parameter counts, and the validation result. Exit code 0 when the bundle is valid, 1 (with the
//! error) when the validation ran and failed, 2 when there is no bundle to validate (no such
//! directory, no config.json).

use zaya_mlx::bundle::{inspect, BundleOptions};
use zaya_mlx::Result;

const INFO_HELP: &str = "\
Reads only headers and side files (no weights): layout, formats, bits, group size, tensor and
parameter counts, bytes per format; validates every tensor, the configs, the sidecar's codebooks and
sign vectors, the tokenizer and the chat template.

Exit codes: 0 valid, 1 the validation failed (the reason is printed), 2 no bundle there.

Examples:
  zaya info --model OsaurusAI/ZAYA1-8B-JANGTQ4
  zaya info --model ./bundle --json | jq .summary.layout
  zaya info --model ./bundle --plan";

#[derive(clap::Args)]
#[command(after_help = INFO_HELP)]
pub struct Args {
    /// Bundle directory, or a Hugging Face repo id (local HF cache first, downloaded when missing).
    #[arg(long, value_name = "DIR|REPO")]
    pub model: String,
    /// Print a JSON object instead of text.
    #[arg(long)]
    pub json: bool,
    /// Report tensors the model does not use as a warning instead of an error.
    #[arg(long)]
    pub allow_unexpected: bool,
    /// Also build the model with the default options (this maps the weights) and print how each
    /// half-layer will run: fused mlx-ext primitives or plain MLX ops, and whether batching is on.
    #[arg(long)]
    pub plan: bool,
}

pub fn run(args: Args) -> Result<i32> {
    // no bundle to validate at all: a bad argument (exit 2), not a failed validation (exit 1)
    let dir = zaya_mlx::runtime::hub::resolve(&args.model)?;
    if let Err(e @ zaya_mlx::ZayaError::Io { .. }) = zaya_mlx::config::ZayaConfig::from_dir(&dir) {
        return Err(e);
    }
    let opts = BundleOptions {
        allow_unexpected: args.allow_unexpected,
    };
    let res = inspect(&dir, &opts);
    // the execution plan of a valid bundle, with the default options
    let plan = match (&res, args.plan) {
        (Ok(_), true) => Some(
            zaya_mlx::model::ZayaModel::load(&dir, zaya_mlx::model::ModelOptions::default()).map(|m| m.plan().clone()),
        ),
        _ => None,
    };
    if args.json {
        let v = match &res {
            Ok(s) => match &plan {
                Some(Ok(p)) => serde_json::json!({ "valid": true, "summary": s, "plan": p }),
                Some(Err(e)) => serde_json::json!({ "valid": true, "summary": s, "plan_error": e.to_string() }),
                None => serde_json::json!({ "valid": true, "summary": s }),
            },
            Err(e) => serde_json::json!({
                "valid": false,
                "dir": dir,
                "error": e.to_string(),
                "error_kind": error_kind(e),
            }),
        };
        println!("{}", serde_json::to_string_pretty(&v).expect("serializable"));
    } else {
        match &res {
            Ok(s) => {
                print!("{}", s.to_text());
                if !dir.join("tokenizer.json").exists() {
                    println!("note        no tokenizer.json: text generation and chat need one (token ids work)");
                }
                println!("\nvalidation  OK");
                match &plan {
                    Some(Ok(p)) => println!("\nexecution plan (default options)\n{p}"),
                    Some(Err(e)) => println!("\nexecution plan: the model does not build: {e}"),
                    None => {}
                }
            }
            Err(e) => {
                println!("bundle      {}", dir.display());
                println!("validation  FAILED: {e}");
            }
        }
    }
    Ok(if res.is_ok() { 0 } else { 1 })
}

fn error_kind(e: &zaya_mlx::ZayaError) -> &'static str {
    use zaya_mlx::ZayaError::*;
    match e {
        Mlx(_) => "mlx",
        Ext(_) => "ext",
        Io { .. } => "io",
        Config { .. } => "config",
        UnsupportedModel { .. } => "unsupported_model",
        Safetensors { .. } => "safetensors",
        MissingTensor { .. } => "missing_tensor",
        Shape { .. } => "shape",
        Dtype { .. } => "dtype",
        Quant { .. } => "quant",
        UnexpectedTensors { .. } => "unexpected_tensors",
        MissingSidecar(_) => "missing_sidecar",
        InvalidArgument(_) => "invalid_argument",
        ContextOverflow { .. } => "context_overflow",
        Tokenizer(_) => "tokenizer",
        Template(_) => "template",
        Parity(_) => "parity",
        #[allow(unreachable_patterns)]
        _ => "other",
    }
}
