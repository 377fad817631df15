//! Typed errors of the whole crate. Every failure a user can cause (bad files, bad config, bad
//! arguments) is a variant that names the culprit; MLX C++ exceptions (from mlx-rs ops and from our
//! mlx-ext primitives) arrive as [`ZayaError::Mlx`] / [`ZayaError::Ext`], never as aborts.
use std::path::PathBuf;

/// Result alias used across the crate.
pub type Result<T, E = ZayaError> = std::result::Result<T, E>;

/// Everything that can go wrong in zaya-mlx.
#[derive(Debug, thiserror::Error)]
pub enum ZayaError {
    /// An exception raised by MLX while building or evaluating a graph.
    #[error("MLX error: {}", .0.what())]
    Mlx(#[from] mlx_rs::error::Exception),

    /// An error returned by one of our mlx-ext primitives (argument checks or C++ exceptions).
    #[error("mlx-ext: {0}")]
    Ext(String),

    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// config.json / jang_config.json / generation_config.json is unusable.
    #[error("config error in {file}: field `{field}`: {msg}")]
    Config { file: String, field: String, msg: String },

    /// `model_type` (or the layout) is not a ZAYA revision we know.
    #[error("unsupported model in {file}: {msg}")]
    UnsupportedModel { file: String, msg: String },

    /// A safetensors file is truncated, has a bad header, or an index names a missing shard.
    #[error("corrupt safetensors file {}: {msg}", file.display())]
    Safetensors { file: PathBuf, msg: String },

    /// A tensor the model needs is not in the bundle.
    #[error("missing tensor `{name}`{}", expected_in(.file))]
    MissingTensor { name: String, file: Option<String> },

    /// A tensor has the wrong shape.
    #[error("tensor `{name}` in {file}: expected shape {expected}, found {found}")]
    Shape {
        name: String,
        file: String,
        expected: String,
        found: String,
    },

    /// A tensor has the wrong dtype.
    #[error("tensor `{name}` in {file}: expected dtype {expected}, found {found}")]
    Dtype {
        name: String,
        file: String,
        expected: String,
        found: String,
    },

    /// Quantization metadata is inconsistent (bits, group size, packed widths).
    #[error("tensor `{name}` in {file}: {msg}")]
    Quant { name: String, file: String, msg: String },

    /// Tensors left over after loading that the model does not use.
    #[error("unexpected tensors in the bundle ({} of them): {}", names.len(), preview(names))]
    UnexpectedTensors { names: Vec<String> },

    /// The TurboQuant sidecar (`jangtq_runtime.safetensors`) or one of its entries is missing.
    #[error("missing TurboQuant runtime sidecar data: {0}")]
    MissingSidecar(String),

    /// Bad user input: token ids, sampling values, CLI values...
    #[error("invalid argument: {0}")]
    InvalidArgument(String),

    /// The prompt (plus generation) does not fit the model's context.
    #[error("context overflow: {tokens} tokens exceed the context limit of {limit}")]
    ContextOverflow { tokens: usize, limit: usize },

    /// Tokenizer loading / encoding / decoding failed.
    #[error("tokenizer error: {0}")]
    Tokenizer(String),

    /// Chat template loading or rendering failed.
    #[error("chat template error: {0}")]
    Template(String),

    /// A prompt-cache file is unusable: corrupt, truncated, or made for another model, dtype, chat
    /// template or format version (the message names which).
    #[error("prompt cache {}: {msg}", file.display())]
    PromptCache { file: PathBuf, msg: String },

    /// The model produced non-finite values (NaN or infinity) where numbers were expected: the
    /// bundle's weights are likely corrupt.
    #[error("numerical failure: {0}")]
    NonFinite(String),

    /// The environment failed: memory could not be allocated, a mapped file changed, a download
    /// stalled, the run was interrupted.
    #[error("{0}")]
    Runtime(String),

    /// Parity check failed (values beyond tolerance).
    #[error("parity failure: {0}")]
    Parity(String),
}

fn expected_in(file: &Option<String>) -> String {
    match file {
        Some(f) => format!(" (expected in {f})"),
        None => String::new(),
    }
}

fn preview(names: &[String]) -> String {
    let mut s = names.iter().take(8).cloned().collect::<Vec<_>>().join(", ");
    if names.len() > 8 {
        s.push_str(", ...");
    }
    s
}

impl ZayaError {
    /// Wraps an I/O error with the path it concerns.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        ZayaError::Io {
            path: path.into(),
            source,
        }
    }

    /// A config error for `field` in `file`.
    pub fn config(file: impl Into<String>, field: impl Into<String>, msg: impl Into<String>) -> Self {
        ZayaError::Config {
            file: file.into(),
            field: field.into(),
            msg: msg.into(),
        }
    }

    /// Exit code the CLI uses for this error (the contract in the README): 1 a check that ran and
    /// failed (parity beyond tolerance), 2 bad arguments or bad input files (a missing or malformed
    /// file, a corrupt bundle, a config, tokenizer, template or prompt cache that cannot be used, a
    /// prompt over the context), 3 a runtime or environment failure (I/O while running, MLX, memory,
    /// a stalled download, non-finite model output).
    pub fn exit_code(&self) -> i32 {
        use std::io::ErrorKind as K;
        match self {
            ZayaError::Parity(_) => 1,
            ZayaError::Io { source, .. } => match source.kind() {
                K::NotFound
                | K::PermissionDenied
                | K::IsADirectory
                | K::NotADirectory
                | K::InvalidInput
                | K::InvalidData
                | K::AlreadyExists
                | K::UnexpectedEof => 2,
                _ => 3,
            },
            ZayaError::Mlx(_) | ZayaError::Ext(_) | ZayaError::NonFinite(_) | ZayaError::Runtime(_) => 3,
            _ => 2,
        }
    }
}

thread_local! {
    static GUARDED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// True while this thread runs a third-party parser through `guarded`: a panic hook may stay
/// silent then, since the panic becomes a typed error.
pub fn in_guarded_call() -> bool {
    GUARDED.with(|g| g.get())
}

/// Runs `f` (a third-party call that may panic on malformed input, e.g. tokenizers' JSON
/// deserializers) and turns a panic into `Err(message)`.
pub(crate) fn guarded<T>(f: impl FnOnce() -> T) -> std::result::Result<T, String> {
    let was = GUARDED.with(|g| g.replace(true));
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    GUARDED.with(|g| g.set(was));
    r.map_err(|p| {
        p.downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "the parser panicked".into())
    })
}
