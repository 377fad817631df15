//! Weight formats and their matmuls: float, MLX affine (bits 4/8, any group size), MXFP4, and
//! MXTQ/TurboQuant (codebook indices + row norms behind a randomized Hadamard rotation).
//! Encoders live here too (used by `zaya synth`); the fused CPU kernels are in `mlx-ext/`.
pub mod affine;
pub mod linear;
pub mod turboquant;

/// How one linear module (or one stacked expert projection) is stored.
#[derive(Debug, Clone, PartialEq)]
pub enum WeightFormat {
    /// `.weight` in bf16 / f16 / f32.
    Float,
    /// MLX affine: `.weight` U32 packed, `.scales`/`.biases` (f16/bf16/f32) per group.
    Affine { bits: u32, group_size: u32 },
    /// MLX mxfp4: `.weight` U32 packed e2m1, `.scales` U8 (e8m0) per group of 32.
    Mxfp4 { group_size: u32 },
    /// MXTQ/TurboQuant: `.tq_packed` U32 [.., out, in·bits/32], `.tq_norms` F16 [.., out];
    /// codebook `codebook.{in}.{bits}` and signs `signs.{in}.{seed}` from the runtime sidecar.
    TurboQuant { bits: u32, in_features: u32, seed: u64 },
}
