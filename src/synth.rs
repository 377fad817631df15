//! `zaya synth`: random bundles in the exact JANGTQ4 format at any size (our own TurboQuant and affine encoders).
