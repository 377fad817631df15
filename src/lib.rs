//! zaya-mlx: a Rust + MLX inference runtime for Zyphra's ZAYA1-8B as shipped in the
//! OsaurusAI JANGTQ4 bundle (and its siblings).
//!
//! The folders tell the story (docs/architecture.md has the full map):
//! - [`config`], [`bundle`], [`quant`]: a model directory → validated canonical weights in their
//!   stored formats (float, MLX affine, MXFP4, TurboQuant)
//! - [`ext`]: every call into our C++ MLX primitives (`mlx-ext/`), one owned handle, by concern
//! - [`model`]: the ZAYA forward pass — shared layers, CCA attention, MoE (router, experts), the
//!   per-sequence state ([`model::cache`]) and the execution plan decided at load
//! - [`text`]: tokenizer, streaming detokenizer and stop strings, chat templates, tool calls
//! - [`runtime`]: a loaded model ([`Zaya`]), sessions, the generation loop, sampling, prompt-cache
//!   files, speculative decoding, the continuous-batching engine ([`runtime::engine`])
//! - [`server`]: `zaya serve`, the OpenAI-compatible HTTP server with an exact prefix cache
//! - [`tools`]: what the CLI's tooling commands use — synthetic bundles and their encoders,
//!   parity against reference outputs, benchmark measurements
//! - [`files`]: atomic writes and bounded reads; [`error`]: the typed error and exit codes
pub mod bundle;
pub mod config;
pub mod error;
pub mod ext;
pub mod files;
pub mod model;
pub mod quant;
pub mod runtime;
pub mod server;
pub mod text;
#[cfg(feature = "tools")]
pub mod tools;

/// The README's Rust example, compiled by `cargo test --doc` so it cannot drift from the API.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

pub use error::{Result, ZayaError};
pub use model::{ModelOptions, ZayaModel};
pub use runtime::{FinishReason, GenParams, GenStats, GenToken, Generation, Session, Zaya};
