//! MXTQ/TurboQuant: sidecar runtime data (codebooks, sign vectors), the plain-MLX-ops expert matmul
//! y = norms ⊙ (C[codes] · H(s ⊙ x)), and the encoder used by `zaya synth`.
