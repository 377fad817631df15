//! The instruction set the CPU kernels use (detected, capped at run time).
use std::os::raw::c_int;

use super::sys::*;

/// Instruction set of the TurboQuant / affine CPU kernels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum KernelIsa {
    /// Portable scalar C++ (any CPU).
    Scalar,
    /// AVX2 + FMA + F16C, 8 lanes.
    Avx2,
    /// AVX-512 F/BW/DQ/VL, 16 lanes.
    Avx512,
}

impl KernelIsa {
    fn from_c(v: c_int) -> Self {
        match v {
            2 => KernelIsa::Avx512,
            1 => KernelIsa::Avx2,
            _ => KernelIsa::Scalar,
        }
    }
    fn as_c(self) -> c_int {
        self as c_int
    }
}

/// The best kernel instruction set this CPU supports.
pub fn detected_isa() -> KernelIsa {
    // SAFETY: plain query.
    KernelIsa::from_c(unsafe { zaya_ext_detected_isa() })
}

/// The instruction set that ops built now use: the detected one capped by [`set_max_isa`] (or the
/// `ZAYA_EXT_ISA=scalar|avx2|avx512` environment variable). The choice is fixed when an op is built.
pub fn kernel_isa() -> KernelIsa {
    // SAFETY: plain query.
    KernelIsa::from_c(unsafe { zaya_ext_kernel_isa() })
}

/// Whether ops built now with [`MatmulPrecision::Bf16`](super::MatmulPrecision) run bf16 dot
/// products (AVX512-BF16 on this CPU and the AVX-512 kernels allowed); otherwise they run the f32
/// kernels.
pub fn bf16_dot_available() -> bool {
    // SAFETY: plain query.
    unsafe { zaya_ext_bf16_dot() != 0 }
}

/// Which matmul a [`panel_min_rows`] query is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PanelKind {
    /// 8/4-bit affine matrices (f32 and bf16 panels).
    Affine,
    /// TurboQuant expert groups with bf16 dot products.
    TurboQuantBf16,
    /// TurboQuant expert groups whose bf16 panels are transposed to lanes over weight rows (the
    /// 4-bit layout; experts with many token rows of a prefill chunk).
    TurboQuantBf16Lanes,
    /// f32/f16/bf16 matrices (`dense_matmul`, the router's layers): f32 panels.
    Dense,
}

/// Token rows from which a matmul call of `kind` runs the panel GEMM (and, in
/// [`MatmulPrecision::Bf16`](super::MatmulPrecision), bf16 dot products); fewer rows run the per-tile
/// f32 kernels. f32 results are the same either way.
pub fn panel_min_rows(kind: PanelKind) -> usize {
    let k = match kind {
        PanelKind::Affine => 0,
        PanelKind::TurboQuantBf16 => 1,
        PanelKind::Dense => 2,
        PanelKind::TurboQuantBf16Lanes => 3,
    };
    // SAFETY: plain query.
    unsafe { zaya_ext_panel_min_rows(k) }.max(0) as usize
}

/// Caps the kernel instruction set process-wide (for tests and benchmarks); returns the previous cap.
pub fn set_max_isa(level: KernelIsa) -> KernelIsa {
    // SAFETY: atomic store in the extension.
    KernelIsa::from_c(unsafe { zaya_ext_set_max_isa(level.as_c()) })
}
