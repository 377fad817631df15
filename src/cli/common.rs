//! Flags and helpers shared by `zaya generate`, `zaya chat` and `zaya smoke`: where the model comes
//! from (a bundle directory, a Hugging Face repo id found in the local HF cache or downloaded with
//! hf-hub, or the built-in tiny demo bundle), the model / sampling / chat-template flags, and the
//! mlx_lm conventions for prompts (`\n` / `\t` escapes, `-` = stdin) and booleans.
use std::io::Read;
use std::path::PathBuf;

use zaya_mlx::model::ModelOptions;
use zaya_mlx::runtime::sampling::SamplingParams;
use zaya_mlx::runtime::Zaya;
use zaya_mlx::text::chat::ChatOptions;
use zaya_mlx::text::tokenizer::Tokenizer;
use zaya_mlx::tools::synth::{self, SynthOptions, SynthSpec};
use zaya_mlx::{Result, ZayaError};

/// The real bundle, named in hints.
pub const REAL_REPO: &str = "OsaurusAI/ZAYA1-8B-JANGTQ4";

/// Which model to run.
#[derive(clap::Args, Debug, Clone)]
pub struct ModelArgs {
    /// Bundle directory, or a Hugging Face repo id (e.g. OsaurusAI/ZAYA1-8B-JANGTQ4) looked up in
    /// the local HF cache ($HF_HUB_CACHE, $HF_HOME/hub or ~/.cache/huggingface/hub) and downloaded
    /// when missing (unless HF_HUB_OFFLINE=1). Default: a tiny demo bundle with random weights.
    #[arg(long, value_name = "DIR|REPO")]
    pub model: Option<String>,
    /// Compute dtype of the projections and experts (the residual stream, norms, attention and
    /// logits are always f32). With the fused kernels, bf16 = bf16 dot products with f32
    /// accumulation in prefill-sized matmuls (projections, experts, the router's layers) on CPUs
    /// with AVX512-BF16 (faster prefill, logits within ~1e-2 relative of f32).
    #[arg(long, default_value = "f32", value_name = "f32|bf16|f16")]
    pub dtype: String,
    /// Prompt positions per prefill chunk (default 512; mlx_lm's name --prefill-step-size also works).
    #[arg(long, value_name = "N", alias = "prefill-step-size")]
    pub prefill_chunk: Option<usize>,
}

impl ModelArgs {
    /// The model options these flags select (checked before loading anything).
    pub fn model_options(&self) -> Result<ModelOptions> {
        let dtype = match self.dtype.as_str() {
            "f32" | "float32" => mlx_rs::Dtype::Float32,
            "bf16" | "bfloat16" => mlx_rs::Dtype::Bfloat16,
            "f16" | "float16" => mlx_rs::Dtype::Float16,
            other => {
                return Err(ZayaError::InvalidArgument(format!(
                    "--dtype `{other}`: expected f32, bf16 or f16"
                )))
            }
        };
        let mut o = ModelOptions {
            dtype,
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

    /// Resolves `--model` and loads it.
    pub fn load(&self) -> Result<Zaya> {
        self.load_timed().map(|(z, _)| z)
    }

    /// [`load`](Self::load), with a spinner on a terminal's stderr while the bundle is mapped and
    /// validated, and the time it took.
    pub fn load_timed(&self) -> Result<(Zaya, std::time::Duration)> {
        use std::io::IsTerminal;
        let options = self.model_options()?;
        let dir = resolve_model(self.model.as_deref())?;
        let t = std::time::Instant::now();
        let spinner = std::io::stderr().is_terminal().then(|| {
            let s = indicatif::ProgressBar::new_spinner();
            s.set_message(format!("loading {}", dir.display()));
            s.enable_steady_tick(std::time::Duration::from_millis(100));
            s
        });
        let z = Zaya::load(&dir, options);
        if let Some(s) = spinner {
            s.finish_and_clear();
        }
        Ok((z?, t.elapsed()))
    }
}

/// Sampling flags (mlx_lm names and defaults).
#[derive(clap::Args, Debug, Clone)]
pub struct SamplingArgs {
    /// Sampling temperature; 0 = greedy.
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true, value_name = "T")]
    pub temp: f32,
    /// Nucleus sampling mass in (0, 1]; 1 = off.
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true, value_name = "P")]
    pub top_p: f32,
    /// Keep only the K most likely tokens; 0 = off.
    #[arg(long, default_value_t = 0, allow_negative_numbers = true, value_name = "K")]
    pub top_k: i64,
    /// Drop tokens below min_p times the top probability; 0 = off.
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true, value_name = "P")]
    pub min_p: f32,
    /// Repetition penalty (> 0; 1 = off).
    #[arg(long, allow_negative_numbers = true, value_name = "X")]
    pub repetition_penalty: Option<f32>,
    /// Recent tokens the repetition penalty looks at.
    #[arg(long, default_value_t = 20, value_name = "N")]
    pub repetition_context_size: usize,
    /// Presence penalty (OpenAI semantics); 0 = off.
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true, value_name = "X")]
    pub presence_penalty: f32,
    /// Frequency penalty (OpenAI semantics); 0 = off.
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true, value_name = "X")]
    pub frequency_penalty: f32,
    /// Recent tokens the presence / frequency penalties look at.
    #[arg(long, default_value_t = 20, value_name = "N")]
    pub penalty_context_size: usize,
    /// Random seed (default: from the OS).
    #[arg(long, value_name = "N", allow_negative_numbers = true, value_parser = parse_seed)]
    pub seed: Option<u64>,
}

impl SamplingArgs {
    /// The sampling parameters, validated (errors name the flag).
    pub fn params(&self) -> Result<SamplingParams> {
        let p = SamplingParams {
            temperature: self.temp,
            top_k: self.top_k,
            top_p: self.top_p,
            min_p: self.min_p,
            repetition_penalty: self.repetition_penalty.unwrap_or(1.0),
            repetition_context_size: Some(self.repetition_context_size),
            presence_penalty: self.presence_penalty,
            frequency_penalty: self.frequency_penalty,
            penalty_context_size: Some(self.penalty_context_size),
            logit_bias: Default::default(),
            seed: self.seed,
        };
        p.validate()?;
        Ok(p)
    }
}

/// Chat-template flags.
#[derive(clap::Args, Debug, Clone)]
pub struct TemplateArgs {
    /// System prompt (a system message before the user's).
    #[arg(long, value_name = "TEXT")]
    pub system_prompt: Option<String>,
    /// JSON object of extra chat-template variables, e.g. '{"enable_thinking": false}'.
    #[arg(long, value_name = "JSON")]
    pub chat_template_config: Option<String>,
    /// Turn the model's reasoning on (enable_thinking=true; overrides --chat-template-config).
    #[arg(long, conflicts_with = "no_thinking")]
    pub thinking: bool,
    /// Turn the model's reasoning off (enable_thinking=false).
    #[arg(long)]
    pub no_thinking: bool,
    /// JSON file with the tools the model may call (a list of OpenAI-style schemas, `{"type":
    /// "function", "function": {"name", "description", "parameters"}}`), rendered by the chat
    /// template; calls in the answer are printed as JSON.
    #[arg(long, value_name = "FILE.json")]
    pub tools: Option<PathBuf>,
}

impl TemplateArgs {
    /// The template options these flags select.
    pub fn chat_options(&self) -> Result<ChatOptions> {
        let enable_thinking = match (self.thinking, self.no_thinking) {
            (true, _) => Some(true),
            (_, true) => Some(false),
            _ => None,
        };
        let tools = match &self.tools {
            None => None,
            Some(p) => {
                let text = zaya_mlx::files::read_text_limited(p, zaya_mlx::files::MAX_CONFIG_BYTES)?;
                let v: serde_json::Value = serde_json::from_str(&text)
                    .map_err(|e| ZayaError::InvalidArgument(format!("--tools {}: not valid JSON: {e}", p.display())))?;
                match v {
                    serde_json::Value::Array(a) if a.iter().all(|t| t.is_object()) => Some(a),
                    _ => {
                        return Err(ZayaError::InvalidArgument(format!(
                            "--tools {}: expected a JSON list of tool schemas (objects)",
                            p.display()
                        )))
                    }
                }
            }
        };
        let opts = ChatOptions {
            enable_thinking,
            tools,
            ..ChatOptions::default()
        };
        match &self.chat_template_config {
            Some(json) => opts.with_config_json(json),
            None => Ok(opts),
        }
    }
}

/// Speculative decoding flags (`generate`, `chat`).
#[derive(clap::Args, Debug, Clone)]
pub struct DraftArgs {
    /// Speculative decoding: `ngram` drafts tokens by prompt lookup (the last n tokens matched
    /// earlier in the prompt and the answer) and verifies them in one forward chunk; greedy output
    /// is unchanged, sampled output keeps its distribution. `none` = plain decoding.
    #[arg(long, value_name = "ngram|none", default_value = "none")]
    pub draft: String,
    /// Most draft tokens verified per step (with --draft ngram).
    #[arg(long, value_name = "K", default_value_t = 4)]
    pub num_draft_tokens: usize,
}

impl DraftArgs {
    /// The drafting settings these flags select (`None` = plain decoding).
    pub fn params(&self) -> Result<Option<zaya_mlx::runtime::speculative::DraftParams>> {
        match self.draft.as_str() {
            "none" => Ok(None),
            "ngram" => {
                let p = zaya_mlx::runtime::speculative::DraftParams {
                    num_draft_tokens: self.num_draft_tokens,
                    ..Default::default()
                };
                p.validate()?;
                Ok(Some(p))
            }
            other => Err(ZayaError::InvalidArgument(format!(
                "--draft `{other}`: expected ngram or none"
            ))),
        }
    }
}

/// Parses a count flag (a non-negative integer); negative or malformed values get a message
/// naming what is expected (clap reports it with the flag, exit code 2).
pub fn parse_count(s: &str) -> std::result::Result<usize, String> {
    match s.trim().parse::<i128>() {
        Ok(v) if v < 0 => Err(format!("{v} is negative; expected a count (0, 1, 2, ...)")),
        Ok(v) => usize::try_from(v).map_err(|_| format!("{v} is too large")),
        Err(_) => Err(format!("`{s}` is not a whole number")),
    }
}

/// Parses a seed (an integer in 0..2⁶⁴).
pub fn parse_seed(s: &str) -> std::result::Result<u64, String> {
    match s.trim().parse::<i128>() {
        Ok(v) if v < 0 => Err(format!("{v} is negative; a seed is an integer in 0..2^64")),
        Ok(v) => u64::try_from(v).map_err(|_| format!("{v} is too large; a seed is an integer in 0..2^64")),
        Err(_) => Err(format!("`{s}` is not an integer")),
    }
}

/// Parses an mlx_lm-style boolean flag value (true/t/false/f, yes/no, 1/0; any case).
pub fn parse_bool(s: &str) -> std::result::Result<bool, String> {
    match s.to_ascii_lowercase().as_str() {
        "true" | "t" | "yes" | "y" | "1" => Ok(true),
        "false" | "f" | "no" | "n" | "0" => Ok(false),
        _ => Err(format!("`{s}` is not a boolean (use true or false)")),
    }
}

/// Expands the literal escapes `\n` and `\t` (as mlx_lm does for prompts).
pub fn expand_escapes(s: &str) -> String {
    s.replace("\\n", "\n").replace("\\t", "\t")
}

/// The prompt text: escapes expanded, then `-` reads standard input (mlx_lm's order).
pub fn read_prompt(arg: &str) -> Result<String> {
    let p = expand_escapes(arg);
    if p != "-" {
        return Ok(p);
    }
    let mut s = String::new();
    std::io::stdin()
        .read_to_string(&mut s)
        .map_err(|e| ZayaError::InvalidArgument(format!("--prompt -: cannot read standard input: {e}")))?;
    Ok(s)
}

/// Ids of `--extra-eos-token` values: a token's text, or a numeric id.
pub fn extra_eos_ids(tok: Option<&Tokenizer>, tokens: &[String], vocab: usize) -> Result<Vec<u32>> {
    tokens
        .iter()
        .map(|t| {
            if let Some(id) = tok.and_then(|k| k.token_to_id(t)) {
                return Ok(id);
            }
            match t.parse::<u32>() {
                Ok(id) if (id as usize) < vocab => Ok(id),
                _ => Err(ZayaError::InvalidArgument(format!(
                    "--extra-eos-token `{t}` is neither a token of the vocabulary nor a token id below {vocab}"
                ))),
            }
        })
        .collect()
}

// ------------------------------------------------------------------------------------------------
// model resolution

/// `--model` → a bundle directory: an existing directory; else a Hugging Face repo id (local cache,
/// then download); none → the demo bundle (made on first use). Bad values are `InvalidArgument`s.
pub fn resolve_model(spec: Option<&str>) -> Result<PathBuf> {
    let Some(spec) = spec else {
        let dir = demo_bundle()?;
        eprintln!(
            "note: no --model given: using the built-in tiny demo bundle with random weights ({}), so the text is gibberish; \
             for the real model pass --model {REAL_REPO} (or a local copy of it)",
            dir.display()
        );
        return Ok(dir);
    };
    zaya_mlx::runtime::hub::resolve(spec)
}

/// `$ZAYA_MLX_HOME/demo-tiny`, the cache root the set-up script uses too (default
/// `${XDG_CACHE_HOME:-~/.cache}/zaya-mlx`).
pub fn demo_dir() -> PathBuf {
    let nonempty = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    let root = nonempty("ZAYA_MLX_HOME").unwrap_or_else(|| {
        nonempty("XDG_CACHE_HOME")
            .unwrap_or_else(|| zaya_mlx::runtime::hub::home_dir().join(".cache"))
            .join("zaya-mlx")
    });
    root.join("demo-tiny")
}

/// The demo bundle (`zaya synth --preset tiny --seed 0`), written on first use. Concurrent first
/// uses each write a private temporary directory and rename it into place; the loser's copy is
/// discarded.
pub fn demo_bundle() -> Result<PathBuf> {
    let dir = demo_dir();
    if dir.join("config.json").is_file() {
        return Ok(dir);
    }
    let parent = dir.parent().expect("demo dir has a parent");
    std::fs::create_dir_all(parent).map_err(|e| ZayaError::io(parent, e))?;
    let tmp = parent.join(format!(".demo-tiny.tmp-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    eprintln!("note: writing the tiny demo bundle to {} (first use)", dir.display());
    let spec = SynthSpec::preset("tiny")?;
    let written = synth::write_bundle(
        &spec,
        &tmp,
        &SynthOptions {
            force: false,
            progress: false,
            threads: None,
        },
    );
    if let Err(e) = written {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    if let Err(e) = std::fs::rename(&tmp, &dir) {
        let _ = std::fs::remove_dir_all(&tmp);
        if !dir.join("config.json").is_file() {
            return Err(ZayaError::io(&dir, e));
        }
    }
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_and_bools() {
        assert_eq!(expand_escapes(r"a\nb\tc"), "a\nb\tc");
        assert_eq!(expand_escapes("plain"), "plain");
        for t in ["true", "T", "True", "yes", "1"] {
            assert_eq!(parse_bool(t), Ok(true));
        }
        for f in ["false", "F", "FALSE", "no", "0"] {
            assert_eq!(parse_bool(f), Ok(false));
        }
        assert!(parse_bool("maybe").is_err());
    }
    #[test]
    fn thinking_flags_override_the_json() {
        let a = TemplateArgs {
            tools: None,
            system_prompt: None,
            chat_template_config: Some(r#"{"enable_thinking": true, "x": 1}"#.into()),
            thinking: false,
            no_thinking: true,
        };
        let o = a.chat_options().unwrap();
        assert_eq!(o.enable_thinking, Some(false));
        assert_eq!(o.extra.get("x"), Some(&serde_json::json!(1)));
        let a = TemplateArgs {
            tools: None,
            no_thinking: false,
            ..a
        };
        assert_eq!(a.chat_options().unwrap().enable_thinking, Some(true));
        let a = TemplateArgs {
            tools: None,
            chat_template_config: Some("[1]".into()),
            ..a
        };
        assert!(matches!(a.chat_options(), Err(ZayaError::InvalidArgument(_))));
    }
}
