//! Our own encoders for the two quantized formats of a JANGTQ bundle, used by `zaya synth` and by
//! tests that need quantized tensors with a known float source:
//!
//! - **TurboQuant / MXTQ** (docs/bundle-format.md §3.3–§3.5): the sign vector (numpy
//!   `default_rng(seed).choice([-1.0, 1.0], size=in)`, reproduced bit for bit through our own
//!   SeedSequence → PCG64 → bounded-integer path), the Lloyd-Max codebook (the float64 loop of the
//!   reference, with numpy's trapezoid and pairwise-sum order), the randomized Hadamard rotation
//!   (in-place FWHT, Sylvester order), row norms, strict-`>` cell assignment and LSB-first packing.
//! - **MLX affine** (docs/bundle-format.md §2): per-group scale/bias exactly as `mx.quantize` computes
//!   them (bias = the group's min or max, whichever has the larger magnitude, so scales can be
//!   negative), f16 scales/biases, LSB-first packing.
//!
//! Everything here is plain Rust on host buffers (no MLX), so it is usable from threads.
//!
//! Submodules (all re-exported here): `pcg64` (numpy's seeding and bit generator, the sign vector),
//! `codebook` (Lloyd-Max), `hadamard` (the rotation), `turboquant` (the row encoder), `affine`.
mod affine;
mod codebook;
mod hadamard;
mod pcg64;
mod turboquant;

pub use affine::{affine_dequantize, affine_quantize, affine_quantize_f32, AffineEncoded};
pub use codebook::{codebook_f32, compute_codebook};
pub use hadamard::{fwht_inplace, hadamard_blocks, hadamard_rotate_inplace};
pub use pcg64::{random_signs, Pcg64};
pub use turboquant::{TqEncoded, TqEncoder};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_inputs_are_typed_errors() {
        assert!(TqEncoder::new(0, 4, 42).is_err());
        assert!(TqEncoder::new(64, 9, 42).is_err());
        assert!(TqEncoder::with_tables(4, 1, vec![1.0; 4], vec![1.0, -1.0]).is_err());
        assert!(affine_quantize_f32(&[0.0; 40], 1, 40, 8, 32).is_err());
        assert!(affine_quantize_f32(&[0.0; 64], 1, 64, 3, 32).is_err());
        assert!(affine_quantize_f32(&[0.0; 64], 2, 64, 8, 32).is_err());
    }
}
