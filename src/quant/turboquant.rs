//! MXTQ/TurboQuant: sidecar runtime data (codebooks, sign vectors), the plain-MLX-ops expert matmul
//! y = norms ⊙ (C[codes] · H(s ⊙ x)), and the encoder used by `zaya synth`.

// ---- dequantization (self-contained; used by tests and diagnostics) -----------------------------

/// Dequantizes TurboQuant weights to f32 with plain MLX ops (jangtq-format.md §3.6):
/// `W[.., r, :] = s ⊙ H(norms[.., r] · C[codes[.., r, :]])`, where `codes` are the `bits`-bit indices
/// packed LSB-first into `packed` (U32 `[.., out, ceil(in / (32/bits))]`), `norms` `[.., out]`,
/// `codebook` f32 `[2^bits]`, `signs` f32 `[in]`, and `H` the orthonormal Sylvester Walsh-Hadamard
/// matrix (`hadamard_transform` with scale 1/√in). `in_features` must be a power of two.
pub fn dequantize(
    packed: &mlx_rs::Array,
    norms: &mlx_rs::Array,
    codebook: &mlx_rs::Array,
    signs: &mlx_rs::Array,
    bits: u32,
    in_features: usize,
) -> crate::error::Result<mlx_rs::Array> {
    use crate::error::ZayaError;
    use mlx_rs::ops::indexing::IndexOp;
    use mlx_rs::Array;
    if ![1, 2, 3, 4, 8].contains(&bits) {
        return Err(ZayaError::InvalidArgument(format!("TurboQuant bits must be 1, 2, 3, 4 or 8, got {bits}")));
    }
    if !in_features.is_power_of_two() {
        return Err(ZayaError::InvalidArgument(format!(
            "TurboQuant dequantize needs a power-of-two in_features, got {in_features}"
        )));
    }
    let per_word = (32 / bits) as usize;
    let shape = packed.shape().to_vec();
    if shape.len() < 2 || shape[shape.len() - 1] as usize != in_features.div_ceil(per_word) {
        return Err(ZayaError::InvalidArgument(format!(
            "tq_packed {shape:?} does not hold {in_features} inputs at {bits} bits"
        )));
    }
    // codes[.., r, w, k] = (packed[.., r, w] / 2^(k·bits)) mod 2^bits
    let divisors: Vec<u32> = (0..per_word).map(|k| 1u32 << (k as u32 * bits)).collect();
    let divisors = Array::from_slice(&divisors, &[per_word as i32]);
    let modulus = Array::from_int(1i32 << bits).as_type::<u32>()?;
    let codes = packed.expand_dims(-1)?.floor_divide(&divisors)?.remainder(&modulus)?;
    let mut flat = shape.clone();
    let last = flat.len() - 1;
    flat[last] *= per_word as i32;
    let codes = codes.reshape(&flat)?.index((mlx_rs::ops::indexing::Ellipsis, ..in_features as i32));
    let codes = codes.reshape(&[-1])?;
    let mut out_shape = shape.clone();
    out_shape[last] = in_features as i32;
    let vals = codebook.as_type::<f32>()?.take(&codes)?.reshape(&out_shape)?;
    let rot = vals.multiply(norms.as_type::<f32>()?.expand_dims(-1)?)?;
    let w = rot.hadamard_transform(1.0 / (in_features as f32).sqrt())?;
    Ok(w.multiply(signs.as_type::<f32>()?)?)
}
