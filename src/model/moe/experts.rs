//! The routed experts `experts.switch_mlp` (docs/model.md §4): 16 SwiGLU experts
//! `down(silu(gate x) ⊙ up x)` stacked `[E, out, in]` in any storage format (TurboQuant, MLX affine,
//! MXFP4, float). The fused path runs every row through one [`ext::tq_switch_glu`] op; the plain path
//! groups the rows by chosen expert on the host (one sync per MoE layer) and runs each used expert once
//! over its rows; TurboQuant rows are rotated once and shared by gate and up (docs/bundle-format.md
//! §3.6, §4.4).
use std::collections::{BTreeMap, HashMap};

use mlx_rs::macros::ModuleParameters;
use mlx_rs::module::Param;
use mlx_rs::ops::indexing::{take_axis, IndexOp};
use mlx_rs::ops::{concatenate, sigmoid, zeros_dtype};
use mlx_rs::{Array, Dtype};

use crate::error::{Result, ZayaError};
use crate::ext::{self, TqCodec, TqWeights};
use crate::quant::affine;
use crate::quant::linear::{take_float, WeightSource};
use crate::quant::turboquant::{rotate, TqMatrix};
use crate::quant::WeightFormat;

/// SiLU `x · σ(x)`.
pub fn silu(x: &Array) -> Result<Array> {
    Ok(x.multiply(sigmoid(x)?)?)
}

/// One stacked expert projection (`experts.switch_mlp.{gate,up,down}_proj`), `[E, out, in]`, in any
/// format. Parameter names follow the bundle (`weight`/`scales`/`biases` or `tq_packed`/`tq_norms`).
#[derive(Debug, Clone, ModuleParameters)]
pub struct SwitchProj {
    #[param]
    pub weight: Param<Option<Array>>,
    #[param]
    pub scales: Param<Option<Array>>,
    #[param]
    pub biases: Param<Option<Array>>,
    #[param]
    pub tq_packed: Param<Option<Array>>,
    #[param]
    pub tq_norms: Param<Option<Array>>,
    pub format: WeightFormat,
    pub num_experts: usize,
    pub in_features: usize,
    pub out_features: usize,
    /// TurboQuant sidecar data (codebook f32 `[2^bits]`, signs f32 `[in]`) and the codebook's
    /// halfword lookup table (`turboquant::halfword_lut`).
    pub tq_codebook: Option<Array>,
    pub tq_signs: Option<Array>,
    pub tq_lut: Option<Array>,
}

impl SwitchProj {
    /// Loads `base` (`...switch_mlp.gate_proj` etc.). Float weights go to `dtype`, affine scales and
    /// biases to f32.
    pub fn load(src: &mut WeightSource, base: &str, e: usize, in_f: usize, out_f: usize, dtype: Dtype) -> Result<Self> {
        let format = if src.has(&format!("{base}.tq_packed")) {
            match src.format(base, in_f)? {
                f @ WeightFormat::TurboQuant { .. } => f,
                other => return Err(src.quant_err(base, format!("has tq_packed but is declared {other:?}"))),
            }
        } else {
            src.format(base, in_f)?
        };
        let (ei, oi) = (e as i32, out_f as i32);
        let mut p = SwitchProj {
            weight: Param::new(None),
            scales: Param::new(None),
            biases: Param::new(None),
            tq_packed: Param::new(None),
            tq_norms: Param::new(None),
            format: format.clone(),
            num_experts: e,
            in_features: in_f,
            out_features: out_f,
            tq_codebook: None,
            tq_signs: None,
            tq_lut: None,
        };
        match format {
            WeightFormat::Float => {
                *p.weight = Some(take_float(
                    src,
                    &format!("{base}.weight"),
                    &[ei, oi, in_f as i32],
                    dtype,
                )?);
            }
            WeightFormat::Affine { bits, group_size } => {
                let (b, g) = (bits as usize, group_size as usize);
                if g == 0 || !in_f.is_multiple_of(g) || !(in_f * b).is_multiple_of(32) {
                    return Err(src.quant_err(base, format!("in_features {in_f} does not fit {b}-bit groups of {g}")));
                }
                *p.weight = Some(src.take_shaped(&format!("{base}.weight"), &[ei, oi, (in_f * b / 32) as i32])?);
                let gs = [ei, oi, (in_f / g) as i32];
                // f32: quantized matmuls accumulate in f32 (see QLinear)
                *p.scales = Some(take_float(src, &format!("{base}.scales"), &gs, Dtype::Float32)?);
                *p.biases = Some(take_float(src, &format!("{base}.biases"), &gs, Dtype::Float32)?);
            }
            WeightFormat::Mxfp4 { group_size } => {
                if group_size != 32 || !in_f.is_multiple_of(32) {
                    return Err(src.quant_err(base, format!("mxfp4 needs groups of 32 dividing in_features {in_f}")));
                }
                *p.weight = Some(src.take_shaped(&format!("{base}.weight"), &[ei, oi, (in_f / 8) as i32])?);
                *p.scales = Some(src.take_shaped(&format!("{base}.scales"), &[ei, oi, (in_f / 32) as i32])?);
            }
            WeightFormat::TurboQuant {
                bits,
                in_features,
                seed,
            } => {
                if in_features as usize != in_f {
                    return Err(src.quant_err(
                        base,
                        format!("declared in_features {in_features}, the model needs {in_f}"),
                    ));
                }
                if !(1..=8).contains(&bits) || 32 % bits != 0 {
                    return Err(src.quant_err(base, format!("{bits}-bit TurboQuant codes are not supported")));
                }
                let cols = (in_f * bits as usize).div_ceil(32) as i32;
                let packed = src.take_shaped(&format!("{base}.tq_packed"), &[ei, oi, cols])?;
                if packed.dtype() != Dtype::Uint32 {
                    return Err(ZayaError::Dtype {
                        name: format!("{base}.tq_packed"),
                        file: src.origin().to_string(),
                        expected: "uint32".into(),
                        found: format!("{:?}", packed.dtype()),
                    });
                }
                *p.tq_packed = Some(packed);
                *p.tq_norms = Some(take_float(src, &format!("{base}.tq_norms"), &[ei, oi], Dtype::Float32)?);
                let cb = src.tq_codebook(in_features, bits)?;
                let signs = src.tq_signs(in_features, seed)?;
                if cb.shape() != [1 << bits] || signs.shape() != [in_f as i32] {
                    return Err(ZayaError::MissingSidecar(format!(
                        "codebook/signs for {base} have shapes {:?}/{:?}, expected [{}]/[{in_f}]",
                        cb.shape(),
                        signs.shape(),
                        1 << bits
                    )));
                }
                let cb = cb.as_dtype(Dtype::Float32)?;
                p.tq_lut = Some(src.tq_lut(in_features, bits)?);
                p.tq_codebook = Some(cb);
                p.tq_signs = Some(signs.as_dtype(Dtype::Float32)?);
            }
        }
        Ok(p)
    }

    /// The TurboQuant view of this projection, if it is TurboQuant.
    pub fn tq(&self) -> Option<TqMatrix> {
        match self.format {
            WeightFormat::TurboQuant { bits, .. } => Some(TqMatrix {
                packed: self.tq_packed.value.as_ref().unwrap().clone(),
                norms: self.tq_norms.value.as_ref().unwrap().clone(),
                codebook: self.tq_codebook.clone().unwrap(),
                signs: self.tq_signs.clone().unwrap(),
                bits,
                in_features: self.in_features,
                out_features: self.out_features,
                lut: self.tq_lut.clone(),
            }),
            _ => None,
        }
    }

    /// The stacked codes and row norms, borrowed (TurboQuant projections only: checked by the
    /// callers through `fused_supported`).
    fn tq_weights(&self) -> TqWeights<'_> {
        TqWeights {
            packed: self.tq_packed.value.as_ref().expect("TurboQuant codes"),
            norms: self.tq_norms.value.as_ref().expect("TurboQuant norms"),
        }
    }

    /// The sidecar codebook and signs with the bit width, borrowed (TurboQuant projections only).
    fn tq_codec(&self) -> TqCodec<'_> {
        let bits = match self.format {
            WeightFormat::TurboQuant { bits, .. } => bits,
            _ => unreachable!("tq_codec on a {:?} projection", self.format),
        };
        TqCodec {
            codebook: self.tq_codebook.as_ref().expect("sidecar codebook"),
            signs: self.tq_signs.as_ref().expect("sidecar signs"),
            bits,
        }
    }

    /// `x [N, in] → [N, out]` through expert `e` (non-TurboQuant formats).
    fn matmul(&self, x: &Array, e: i32) -> Result<Array> {
        let w = self.weight.value.as_ref().expect("float/affine weight").index(e);
        match crate::quant::linear::spec_of(&self.format) {
            None => Ok(x.matmul(w.t())?),
            Some(spec) => {
                let s = self.scales.value.as_ref().unwrap().index(e);
                let b = self.biases.value.as_ref().map(|b| b.index(e));
                let xf = if x.dtype() == Dtype::Float32 {
                    x.clone()
                } else {
                    x.as_dtype(Dtype::Float32)?
                };
                affine::matmul_t(&xf, &w, &s, b.as_ref(), spec)
            }
        }
    }
}

/// `experts.switch_mlp`: the stacked SwiGLU experts.
#[derive(Debug, Clone, ModuleParameters)]
pub struct SwitchMlp {
    #[param]
    pub gate_proj: SwitchProj,
    #[param]
    pub up_proj: SwitchProj,
    #[param]
    pub down_proj: SwitchProj,
}

impl SwitchMlp {
    /// `down_e(silu(gate_e x) ⊙ up_e x)` for rows `x [n, H]` that all chose expert `e`; f32 or
    /// the compute dtype depending on the format.
    fn expert(&self, x: &Array, e: i32) -> Result<Array> {
        match (self.gate_proj.tq(), self.up_proj.tq(), self.down_proj.tq()) {
            (Some(g), Some(u), Some(d)) => {
                // one rotation shared by gate and up when they use the same signs (always for ZAYA)
                let xr = rotate(x, &g.signs)?;
                let xu = if same_rotation(&self.gate_proj.format, &self.up_proj.format) {
                    xr.clone()
                } else {
                    rotate(x, &u.signs)?
                };
                let a = silu(&g.matmul_rotated(&xr, e)?)?.multiply(u.matmul_rotated(&xu, e)?)?;
                d.matmul(&a, e)
            }
            (None, None, None) => {
                let g = self.gate_proj.matmul(x, e)?;
                let u = self.up_proj.matmul(x, e)?;
                let a = silu(&g)?.multiply(&u)?;
                self.down_proj.matmul(&a, e)
            }
            _ => Err(ZayaError::InvalidArgument(
                "mixing TurboQuant and other formats inside one expert set is not supported".into(),
            )),
        }
    }

    /// True when `ext::tq_switch_glu` can run these experts: TurboQuant gate/up sharing one
    /// rotation and bit width, 2–4-bit codes, power-of-two input widths.
    pub fn fused_supported(&self) -> bool {
        let ok = |p: &SwitchProj| match p.format {
            WeightFormat::TurboQuant { bits, in_features, .. } => {
                (2..=4).contains(&bits) && in_features.is_power_of_two()
            }
            _ => false,
        };
        let same_bits = match (&self.gate_proj.format, &self.up_proj.format) {
            (WeightFormat::TurboQuant { bits: a, .. }, WeightFormat::TurboQuant { bits: b, .. }) => a == b,
            _ => false,
        };
        ok(&self.gate_proj)
            && ok(&self.up_proj)
            && ok(&self.down_proj)
            && same_bits
            && same_rotation(&self.gate_proj.format, &self.up_proj.format)
    }

    /// All experts of the N rows through the fused primitive; rows routed to an id ≥ E (skip) get
    /// zeros. f32 `[N, H]`. Requires [`fused_supported`](Self::fused_supported).
    pub fn forward_fused(&self, x: &Array, choice: &Array, mode: impl Into<ext::MatmulMode>) -> Result<Array> {
        let (g, u, d) = (&self.gate_proj, &self.up_proj, &self.down_proj);
        ext::tq_switch_glu(
            &x.as_dtype(Dtype::Float32)?, // no node when already f32
            choice,
            g.tq_weights(),
            u.tq_weights(),
            d.tq_weights(),
            g.tq_codec(),
            d.tq_codec(),
            mode,
        )
    }

    /// The plain path: rows `x [N, H]` grouped by their `choice` (int32 `[N]`, ids ≥ `num_experts`
    /// = skip) on the host, each used expert run once over its rows. Returns the expert outputs in
    /// row order (`None` when every row skipped; skip rows are zero) and how many rows skipped.
    pub fn forward_grouped(&self, x: &Array, choice: &Array, num_experts: usize) -> Result<(Option<Array>, usize)> {
        let n = x.shape()[0] as usize;
        choice.eval()?;
        let choice: Vec<i32> = choice.as_slice::<i32>().to_vec();
        // group rows by expert (BTreeMap: deterministic expert order)
        let mut groups: BTreeMap<i32, Vec<u32>> = BTreeMap::new();
        for (row, &c) in choice.iter().enumerate() {
            if (c as usize) < num_experts {
                groups.entry(c).or_default().push(row as u32);
            }
        }
        let skipped = n - groups.values().map(Vec::len).sum::<usize>();
        let y = if groups.is_empty() {
            None
        } else if groups.len() == 1 && skipped == 0 {
            let (&e, _) = groups.iter().next().unwrap();
            Some(self.expert(x, e)?)
        } else {
            let mut parts = Vec::with_capacity(groups.len() + 1);
            let mut position = HashMap::with_capacity(n);
            let mut next = 0u32;
            for (&e, rows) in &groups {
                let idx = Array::from_slice(rows, &[rows.len() as i32]);
                parts.push(self.expert(&take_axis(x, &idx, 0)?, e)?);
                for &r in rows {
                    position.insert(r, next);
                    next += 1;
                }
            }
            let h = *x.shape().last().unwrap();
            let dt = parts[0].dtype();
            parts.push(zeros_dtype(&[1, h], dt)?); // row `next`: skip tokens
            let gather: Vec<u32> = (0..n as u32).map(|r| *position.get(&r).unwrap_or(&next)).collect();
            let all = concatenate(&parts, 0)?;
            Some(take_axis(&all, Array::from_slice(&gather, &[n as i32]), 0)?)
        };
        Ok((y, skipped))
    }
}

/// Gate and up read the same sidecar sign vector (same in_features and seed), so one rotation of
/// the input serves both.
fn same_rotation(a: &WeightFormat, b: &WeightFormat) -> bool {
    matches!((a, b), (WeightFormat::TurboQuant { in_features: ia, seed: sa, .. },
                      WeightFormat::TurboQuant { in_features: ib, seed: sb, .. }) if ia == ib && sa == sb)
}

/// `zaya_block.experts` (only holds `switch_mlp`).
#[derive(Debug, Clone, ModuleParameters)]
pub struct Experts {
    #[param]
    pub switch_mlp: SwitchMlp,
}
