//! zaya-mlx: a Rust + MLX inference runtime for Zyphra's ZAYA1-8B as shipped in the
//! OsaurusAI JANGTQ4 bundle (and its siblings).
pub mod error;
pub mod ext;

pub use error::{Result, ZayaError};
