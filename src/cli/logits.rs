//! `zaya logits`: runs the model on given token ids and writes the logits (and optionally the
//! per-layer hidden states, residuals and routes) to a safetensors file in the reference naming
//! of tests/reference/README.md, so users can compare with any other implementation.
use std::path::PathBuf;

use mlx_rs::{Array, Dtype};
use zaya_mlx::model::moe::{ExpertBackend, ModSkip};
use zaya_mlx::model::{ModelOptions, ZayaModel};
use zaya_mlx::quant::linear::LinearBackend;
use zaya_mlx::tools::parity;
use zaya_mlx::{Result, ZayaError};

/// Options shared by `zaya logits` and `zaya parity`.
#[derive(clap::Args, Debug, Clone)]
pub struct RunOpts {
    /// Bundle directory, or a Hugging Face repo id (local HF cache first, downloaded when missing).
    #[arg(long, value_name = "DIR|REPO")]
    pub model: String,
    /// Compute dtype of projections and experts (the residual stream, norms, q/k normalisation,
    /// attention and logits are always f32). With the fused kernels, bf16 = bf16 dot products with
    /// f32 accumulation in prefill-sized matmuls (projections, experts, the router's layers) on CPUs
    /// with AVX512-BF16 (faster prefill, logits within ~1e-2 relative of f32).
    #[arg(long, default_value = "f32", value_name = "f32|bf16|f16")]
    pub dtype: String,
    /// MOD skip route: `px` = p_skip·x (legacy reference semantics), `zero` = no contribution.
    #[arg(long, default_value = "px", value_name = "px|zero")]
    pub mod_skip: String,
    /// Positions per forward chunk (the CCA conv / KV state is carried across chunks; alias
    /// --prefill-step-size, mlx_lm's name).
    #[arg(long, value_name = "N", alias = "prefill-step-size")]
    pub prefill_chunk: Option<usize>,
    /// `fused`: the mlx-ext CPU kernels where they apply (TurboQuant experts, affine and float
    /// linears); `plain`: stock MLX ops only (the slow reference path, for cross-checks).
    #[arg(long, default_value = "fused", value_name = "fused|plain")]
    pub kernels: String,
}

impl RunOpts {
    /// The model options these flags select.
    pub fn model_options(&self) -> Result<ModelOptions> {
        let dtype = match self.dtype.as_str() {
            "f32" | "float32" => Dtype::Float32,
            "bf16" | "bfloat16" => Dtype::Bfloat16,
            "f16" | "float16" => Dtype::Float16,
            other => {
                return Err(ZayaError::InvalidArgument(format!(
                    "--dtype `{other}`: expected f32, bf16 or f16"
                )))
            }
        };
        let mod_skip = match self.mod_skip.as_str() {
            "px" | "scaled-identity" => ModSkip::ScaledIdentity,
            "zero" => ModSkip::Zero,
            other => {
                return Err(ZayaError::InvalidArgument(format!(
                    "--mod-skip `{other}`: expected px or zero"
                )))
            }
        };
        let (expert_backend, linear_backend) = match self.kernels.as_str() {
            "fused" => (ExpertBackend::Fused, LinearBackend::Fused),
            "plain" => (ExpertBackend::Plain, LinearBackend::Plain),
            other => {
                return Err(ZayaError::InvalidArgument(format!(
                    "--kernels `{other}`: expected fused or plain"
                )))
            }
        };
        let mut o = ModelOptions {
            dtype,
            mod_skip,
            expert_backend,
            linear_backend,
            ..ModelOptions::default()
        };
        if let Some(c) = self.prefill_chunk {
            if c == 0 {
                return Err(ZayaError::InvalidArgument("--prefill-chunk must be positive".into()));
            }
            o.prefill_chunk = c;
        }
        Ok(o)
    }

    /// Loads the bundle with these options.
    pub fn open_model(&self) -> Result<ZayaModel> {
        open_model(&self.dir()?, self.model_options()?)
    }

    /// The bundle directory `--model` names (a repo id is looked up / downloaded).
    pub fn dir(&self) -> Result<PathBuf> {
        zaya_mlx::runtime::hub::resolve(&self.model)
    }
}

/// Opens the bundle in `dir`.
pub fn open_model(dir: &std::path::Path, options: ModelOptions) -> Result<ZayaModel> {
    ZayaModel::load(dir, options)
}

/// Explanation printed after the options of `zaya logits --help`.
pub const LOGITS_HELP: &str = "\
Runs the sequence from an empty cache and writes a safetensors file in the reference naming
(tests/reference/README.md), the same names `zaya parity` compares:
  token_ids     int32 [T]
  logits        f32   [T, vocab]
with --hidden-states also, for every half-layer N (even = attention, odd = MoE):
  hidden.N      f32   [T, hidden]   the sub-layer output (attention / MoE output)
  residual.N    f32   [T, hidden]   the residual stream entering input_norm N
  route.N       int32 [T]           odd N: the chosen route (num_experts = MOD skip)
Use it to compare with any other implementation, e.g. against jang_tools.zaya.model.

Example:
  zaya logits --model ./ZAYA1-8B-JANGTQ4 --token-ids 2,1876,563 --hidden-states --out ours.safetensors";

/// Parses `1,2,3` (spaces allowed).
pub fn parse_token_ids(s: &str) -> Result<Vec<u32>> {
    let ids: Result<Vec<u32>> = s
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(|t| {
            t.parse::<u32>()
                .map_err(|_| ZayaError::InvalidArgument(format!("--token-ids: `{t}` is not a token id")))
        })
        .collect();
    let ids = ids?;
    if ids.is_empty() {
        return Err(ZayaError::InvalidArgument("--token-ids: empty list".into()));
    }
    Ok(ids)
}

/// `zaya logits` arguments (long help: [`LOGITS_HELP`]).
#[derive(clap::Args, Debug)]
#[command(after_help = LOGITS_HELP)]
pub struct Args {
    #[command(flatten)]
    pub run: RunOpts,
    /// Comma-separated token ids, e.g. 2,1876,563.
    #[arg(long, value_name = "IDS")]
    pub token_ids: String,
    /// Also write hidden.N, residual.N and route.N for every half-layer N.
    #[arg(long)]
    pub hidden_states: bool,
    /// Output safetensors file.
    #[arg(long, value_name = "FILE.safetensors")]
    pub out: PathBuf,
}

pub fn run(args: Args) -> Result<i32> {
    let ids = parse_token_ids(&args.token_ids)?;
    let model = args.run.open_model()?;
    run_with_model(&args, &model, &ids)
}

/// The command body once the model is loaded.
pub fn run_with_model(args: &Args, model: &ZayaModel, ids: &[u32]) -> Result<i32> {
    if args.out.extension().and_then(|e| e.to_str()) != Some("safetensors") {
        return Err(ZayaError::InvalidArgument(format!(
            "--out {}: the file name must end in .safetensors",
            args.out.display()
        )));
    }
    zaya_mlx::files::refuse_inside(&args.out, &args.run.dir()?, "--out")?;
    let outputs = parity::run_outputs(model, ids, args.hidden_states, args.run.prefill_chunk)?;
    let arrays: Vec<(&String, &Array)> = outputs.iter().collect();
    zaya_mlx::files::write_atomic(&args.out, |tmp| {
        Array::save_safetensors(arrays, None, tmp).map_err(|e| ZayaError::Io {
            path: args.out.clone(),
            source: std::io::Error::other(e.to_string()),
        })
    })?;
    eprintln!(
        "wrote {} tensors for {} tokens to {}",
        outputs.len(),
        ids.len(),
        args.out.display()
    );
    Ok(0)
}
