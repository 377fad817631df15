//! zaya-mlx: a Rust + MLX inference runtime for Zyphra's ZAYA1-8B as shipped in the
//! OsaurusAI JANGTQ4 bundle (and its siblings).
//!
//! Module map (see docs/architecture.md):
//! - [`config`]: config.json / jang_config.json / generation_config.json → [`config::ZayaConfig`]
//! - [`bundle`]: safetensors shards → validated canonical weights, every layout
//! - [`quant`]: weight formats (float, affine, MXFP4, TurboQuant), their matmuls and encoders
//! - [`ext`]: safe wrappers over our C++ MLX primitives (`mlx-ext/`)
//! - [`norm`], [`cca`], [`moe`], [`cache`], [`model`]: the ZAYA forward pass and its state; [`plan`]:
//!   how each half-layer runs, decided at load
//! - [`tokenizer`], [`chat`], [`sampling`], [`generate`]: text in, text out
//! - [`engine`]: continuous batching (ragged batch state, batched decode step, scheduler)
//! - [`server`]: `zaya serve`, the OpenAI-compatible HTTP server with an exact prefix cache
//! - [`prompt_cache`]: the whole model state in a file; [`speculative`]: n-gram drafts verified
//!   exactly; [`files`]: atomic writes
//! - [`synth`]: exact-format synthetic bundles; [`parity`]: comparison with reference outputs
//! - [`bench`]: end-to-end benchmark and the memory-bandwidth bound
pub mod bench;
pub mod bundle;
pub mod cache;
pub mod cca;
pub mod chat;
pub mod config;
pub mod engine;
pub mod error;
pub mod ext;
pub mod files;
pub mod generate;
pub mod hub;
pub mod model;
pub mod moe;
pub mod norm;
pub mod parity;
pub mod plan;
pub mod prompt_cache;
pub mod quant;
pub mod sampling;
pub mod server;
pub mod speculative;
pub mod synth;
pub mod tokenizer;
pub mod tools;

/// The README's Rust example, compiled by `cargo test --doc` so it cannot drift from the API.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

pub use error::{Result, ZayaError};
