//! Safe Rust wrappers over the C ABI of our C++ MLX extension (`mlx-ext/`, compiled by build.rs).
//!
//! Each wrapper takes and returns [`mlx_rs::Array`]s (lazy graph nodes) on the default stream.
//! Argument errors and C++ exceptions come back as [`ZayaError::Ext`](crate::ZayaError::Ext). [`ExtMode`] chooses between
//! the custom primitive and the portable plain-MLX-ops graph (the primitive falls back to the
//! portable graph on streams where it has no kernel, e.g. GPU streams).
//!
//! Ops: [`cca_conv`] (CCA convolution), [`tq_switch_glu`] (TurboQuant routed experts),
//! [`affine_matmul`] / [`affine_embed`] (MLX affine weights: attention, embedding, tied lm_head),
//! [`affine_multi`] (several affine matmuls side by side as one node), [`dense_matmul`] (float
//! weights: the router MLP and other f16 layers). Fused layer ops (one graph node each where MLX's
//! CPU backend needs tens of small ones): [`res_norm`] (residual scaling + merge + RMSNorm),
//! [`router`] (the MoE router), [`moe_combine`] (the MoE output and skip route), [`cca_qk`] (the CCA
//! conv, mean paths, q/k normalisation and RoPE), [`cca_attention`] (causal GQA attention over the
//! KV storage), [`kv_append`]. The CPU kernels pick AVX-512, AVX2 or scalar code at run time
//! ([`KernelIsa`]). [`graph_nodes`] / [`graph_histogram`] count a lazy graph's nodes.
//!
//! Files: `sys.rs` (every `extern "C"` declaration), `handle.rs` (the owned output handle and the
//! call helpers), ops by concern (`cca.rs`, `affine.rs`, `tq.rs`, `layers.rs`), `trace.rs`, `isa.rs`,
//! `graph.rs`.
use std::ffi::CStr;
use std::os::raw::c_int;

mod affine;
mod cca;
mod graph;
mod handle;
mod isa;
mod layers;
pub(crate) mod sys;
mod tq;
mod trace;

pub use affine::*;
pub use cca::*;
pub use graph::*;
pub use isa::*;
pub use layers::*;
pub use tq::*;
pub use trace::*;

use sys::zaya_ext_version;

/// Which implementation of an extension op to build.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ExtMode {
    /// The custom primitive where it has a kernel (CPU), the portable graph elsewhere.
    #[default]
    Auto,
    /// Always the portable plain-MLX-ops graph (runs on any stream; the reference in tests).
    Portable,
    /// Always the custom primitive (an error on streams without a kernel).
    Primitive,
}

impl ExtMode {
    pub(crate) fn as_c(self) -> c_int {
        match self {
            ExtMode::Auto => 0,
            ExtMode::Portable => 1,
            ExtMode::Primitive => 2,
        }
    }
}

/// The arithmetic of the affine, TurboQuant and router matmul kernels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MatmulPrecision {
    /// f32 multiply-adds (the default; the portable graphs always compute so).
    #[default]
    F32,
    /// bf16 dot products with f32 accumulation (x and the decoded weights rounded to bf16) in calls
    /// with 8 or more token rows (prefill chunks, expert groups) where the CPU has AVX512-BF16; f32
    /// elsewhere (decode, other CPUs). See docs/performance.md §4.
    Bf16,
}

/// How a matmul op is built: [`ExtMode`] plus the kernels' [`MatmulPrecision`]. An `ExtMode`
/// converts into the f32 precision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MatmulMode {
    pub ext: ExtMode,
    pub precision: MatmulPrecision,
}

impl From<ExtMode> for MatmulMode {
    fn from(ext: ExtMode) -> Self {
        MatmulMode {
            ext,
            precision: MatmulPrecision::F32,
        }
    }
}

impl MatmulMode {
    pub(crate) fn as_c(self) -> c_int {
        const BF16_DOT: c_int = 16; // ZAYA_EXT_BF16_DOT
        match self.precision {
            MatmulPrecision::F32 => self.ext.as_c(),
            MatmulPrecision::Bf16 => self.ext.as_c() | BF16_DOT,
        }
    }
}

/// Version string of the compiled extension.
pub fn version() -> String {
    // SAFETY: returns a pointer to a static NUL-terminated string.
    unsafe { CStr::from_ptr(zaya_ext_version()) }
        .to_string_lossy()
        .into_owned()
}
