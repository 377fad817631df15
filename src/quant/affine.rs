//! MLX affine quantization: packing layout, dequantization and the encoder used by `zaya synth`.
