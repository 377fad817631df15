//! The TurboQuant / MXTQ row encoder of one `in_features` width: rotation, f32 row norms, strict-`>`
//! cell assignment against the codebook midpoints, LSB-first packing, and the matching dequantizer.
use half::f16;

use super::codebook::codebook_f32;
use super::hadamard::{fwht_inplace, hadamard_blocks, rotate_blocks};
use super::pcg64::random_signs;
use crate::error::{Result, ZayaError};

/// Codes per encoding chunk in [`TqEncoder::encode_row`].
const CHUNK: usize = 64;

/// The TurboQuant encoder of one `in_features` width: signs, codebook and cell boundaries.
#[derive(Debug, Clone)]
pub struct TqEncoder {
    in_features: usize,
    bits: u32,
    signs: Vec<f32>,
    codebook: Vec<f32>,
    midpoints: Vec<f32>,
    blocks: Vec<usize>,
}

/// Packed codes and f16 row norms of a TurboQuant-encoded matrix.
#[derive(Debug, Clone, PartialEq)]
pub struct TqEncoded {
    /// U32 [rows, packed_cols], codes LSB-first.
    pub packed: Vec<u32>,
    /// F16 `[rows]`.
    pub norms: Vec<f16>,
}

impl TqEncoder {
    /// Encoder with the sidecar tables computed here: `signs.{in}.{seed}`, `codebook.{in}.{bits}`.
    pub fn new(in_features: usize, bits: u32, seed: u64) -> Result<Self> {
        Self::check(in_features, bits)?;
        Self::with_tables(
            in_features,
            bits,
            random_signs(in_features, seed),
            codebook_f32(in_features, bits),
        )
    }

    /// Encoder with given tables (e.g. read from a sidecar).
    pub fn with_tables(in_features: usize, bits: u32, signs: Vec<f32>, codebook: Vec<f32>) -> Result<Self> {
        Self::check(in_features, bits)?;
        if signs.len() != in_features {
            return Err(ZayaError::InvalidArgument(format!(
                "TurboQuant signs have {} entries, in_features is {in_features}",
                signs.len()
            )));
        }
        if codebook.len() != 1 << bits
            || codebook
                .windows(2)
                .any(|w| w[0].partial_cmp(&w[1]).is_none_or(|o| o.is_gt()))
        {
            return Err(ZayaError::InvalidArgument(format!(
                "TurboQuant codebook must have {} ascending entries, got {}",
                1 << bits,
                codebook.len()
            )));
        }
        let midpoints = codebook.windows(2).map(|w| (w[0] + w[1]) / 2.0).collect();
        Ok(TqEncoder {
            in_features,
            bits,
            blocks: hadamard_blocks(in_features),
            signs,
            codebook,
            midpoints,
        })
    }

    fn check(in_features: usize, bits: u32) -> Result<()> {
        if in_features == 0 {
            return Err(ZayaError::InvalidArgument(
                "TurboQuant in_features must be positive".into(),
            ));
        }
        if !(1..=8).contains(&bits) {
            return Err(ZayaError::InvalidArgument(format!(
                "TurboQuant bits must be 1..=8, got {bits}"
            )));
        }
        Ok(())
    }

    pub fn in_features(&self) -> usize {
        self.in_features
    }
    pub fn bits(&self) -> u32 {
        self.bits
    }
    pub fn signs(&self) -> &[f32] {
        &self.signs
    }
    pub fn codebook(&self) -> &[f32] {
        &self.codebook
    }
    /// Codes per U32 word (`32 / bits`, rounded down as the converter does).
    pub fn codes_per_word(&self) -> usize {
        32 / self.bits as usize
    }
    /// U32 words per row (rows zero-padded to whole words).
    pub fn packed_cols(&self) -> usize {
        self.in_features.div_ceil(self.codes_per_word())
    }

    /// R(row) in place.
    pub fn rotate(&self, row: &mut [f32]) {
        debug_assert_eq!(row.len(), self.in_features);
        rotate_blocks(row, &self.signs, &self.blocks);
    }

    /// Encodes one row: `row` (length in_features) is overwritten with its rotation, the codes go
    /// to `packed` (length packed_cols) and the f32 row norm is returned (stored as f16).
    ///
    /// Bit-exact with the reference on Linux: the squared norm is summed sequentially in f32 (as
    /// MLX's CPU reduction does), u = w_rot / max(n, 1e-10) is an f32 division, and the code is
    /// the number of f32 midpoints u exceeds.
    pub fn encode_row(&self, row: &mut [f32], packed: &mut [u32]) -> f32 {
        debug_assert_eq!(row.len(), self.in_features);
        debug_assert_eq!(packed.len(), self.packed_cols());
        self.rotate(row);
        let mut sq = 0f32;
        for &v in row.iter() {
            sq += v * v;
        }
        let norm = sq.sqrt();
        let safe = norm.max(1e-10);
        let per = self.codes_per_word();
        let bits = self.bits;
        // Chunks of whole words (≤ 64 codes) so the compare loops run on fixed-size arrays.
        let words_per_chunk = (CHUNK / per).max(1);
        let chunk = per * words_per_chunk;
        let mut u = [0f32; CHUNK];
        let mut codes = [0u8; CHUNK];
        for (vals, words) in row.chunks(chunk).zip(packed.chunks_mut(words_per_chunk)) {
            let n = vals.len();
            u.fill(0.0);
            for (d, &v) in u.iter_mut().zip(vals) {
                *d = v / safe;
            }
            codes.fill(0);
            for &m in &self.midpoints {
                for (c, &x) in codes.iter_mut().zip(u.iter()) {
                    *c += u8::from(x > m);
                }
            }
            for (word, cs) in words.iter_mut().zip(codes[..n].chunks(per)) {
                let mut acc = 0u32;
                let mut shift = 0u32;
                for &c in cs {
                    acc |= u32::from(c) << shift;
                    shift += bits;
                }
                *word = acc;
            }
        }
        norm
    }

    /// Encodes a row-major [rows, in_features] matrix.
    pub fn encode_matrix(&self, w: &[f32], rows: usize) -> Result<TqEncoded> {
        if w.len() != rows * self.in_features {
            return Err(ZayaError::InvalidArgument(format!(
                "TurboQuant encode: {} values for {rows} rows of {}",
                w.len(),
                self.in_features
            )));
        }
        let pc = self.packed_cols();
        let mut packed = vec![0u32; rows * pc];
        let mut norms = Vec::with_capacity(rows);
        let mut row = vec![0f32; self.in_features];
        for r in 0..rows {
            row.copy_from_slice(&w[r * self.in_features..(r + 1) * self.in_features]);
            let n = self.encode_row(&mut row, &mut packed[r * pc..(r + 1) * pc]);
            norms.push(f16::from_f32(n));
        }
        Ok(TqEncoded { packed, norms })
    }

    /// Dequantizes one packed row back to the original domain: `s ⊙ (H · (n · C[codes]))/√d`.
    pub fn dequantize_row(&self, packed: &[u32], norm: f32, out: &mut [f32]) {
        debug_assert_eq!(out.len(), self.in_features);
        let per = self.codes_per_word();
        let mask = (1u32 << self.bits) - 1;
        for (i, o) in out.iter_mut().enumerate() {
            let code = (packed[i / per] >> ((i % per) as u32 * self.bits)) & mask;
            *o = norm * self.codebook[code as usize];
        }
        let mut off = 0;
        for &b in &self.blocks {
            let seg = &mut out[off..off + b];
            fwht_inplace(seg);
            let scale = (1.0f64 / (b as f64).sqrt()) as f32;
            for (v, s) in seg.iter_mut().zip(&self.signs[off..off + b]) {
                *v *= scale * *s;
            }
            off += b;
        }
    }
}
