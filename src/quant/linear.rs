//! One linear-layer type for every storage format ([`QLinear`]: float, MLX affine, MXFP4; the
//! attention projections, the router, the tied embedding / lm_head), and [`WeightSource`], the
//! straight mapping from [`CanonicalWeights`] names to module parameters used while building the model.
use std::collections::{BTreeMap, BTreeSet};

use mlx_rs::macros::ModuleParameters;
use mlx_rs::module::Param;
use mlx_rs::ops::indexing::take_axis;
use mlx_rs::{Array, Dtype};

use crate::bundle::CanonicalWeights;
use crate::error::{Result, ZayaError};
use crate::ext::{self, ExtMode};
use crate::quant::affine::{self, QuantMode, QuantSpec};
use crate::quant::WeightFormat;

/// Which implementation runs a quantized linear.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LinearBackend {
    /// MLX's stock ops (`matmul`, `quantized_matmul`): the reference path, runs everywhere.
    Plain,
    /// The mlx-ext fused CPU kernels where they apply: `ext::affine_matmul` / `ext::affine_embed`
    /// for affine weights of 4 or 8 bits, `ext::dense_matmul` for float weights (read in their stored
    /// dtype), all accumulating in f32. MXFP4 and other bit widths use the plain path.
    #[default]
    Fused,
}

/// Takes tensors by canonical name out of a [`CanonicalWeights`], checking shapes, and reports
/// whatever the model did not consume.
pub struct WeightSource {
    tensors: BTreeMap<String, Array>,
    formats: BTreeMap<String, WeightFormat>,
    tq_runtime: BTreeMap<String, Array>,
    /// Where the weights came from (bundle directory), for error messages.
    origin: String,
    taken: BTreeSet<String>,
    /// TurboQuant halfword lookup tables by codebook key (shared by every projection using it).
    tq_luts: BTreeMap<String, Array>,
    /// Backend the linears built from this source will use (decides the stored dtypes).
    linear_backend: LinearBackend,
    /// How the fused linears built from this source execute their mlx-ext ops.
    ext_mode: ExtMode,
}

impl WeightSource {
    /// Wraps a canonical weight set; `origin` names it in errors (e.g. the bundle directory).
    pub fn new(weights: CanonicalWeights, origin: impl Into<String>) -> Self {
        WeightSource {
            tensors: weights.tensors,
            formats: weights.formats,
            tq_runtime: weights.tq_runtime,
            origin: origin.into(),
            taken: BTreeSet::new(),
            tq_luts: BTreeMap::new(),
            linear_backend: LinearBackend::Plain,
            ext_mode: ExtMode::Auto,
        }
    }

    /// How the fused linears built from now on execute their mlx-ext ops ([`ExtMode`]).
    pub fn set_ext_mode(&mut self, mode: ExtMode) {
        self.ext_mode = mode;
    }

    /// Selects the backend of the linears built from now on ([`QLinear::load`]).
    pub fn set_linear_backend(&mut self, backend: LinearBackend) {
        self.linear_backend = backend;
    }

    /// The backend of the linears built from now on.
    pub fn linear_backend(&self) -> LinearBackend {
        self.linear_backend
    }

    /// The origin string used in errors.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// The dtype of tensor `name` if present (and not yet taken).
    pub fn peek_dtype(&self, name: &str) -> Option<Dtype> {
        self.tensors.get(name).map(|a| a.dtype())
    }

    /// True if a tensor of that name is present (and not yet taken).
    pub fn has(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// Removes and returns the tensor `name`, or `MissingTensor`.
    pub fn take(&mut self, name: &str) -> Result<Array> {
        match self.tensors.remove(name) {
            Some(a) => {
                self.taken.insert(name.to_string());
                Ok(a)
            }
            None => Err(ZayaError::MissingTensor {
                name: name.to_string(),
                file: Some(self.origin.clone()),
            }),
        }
    }

    /// Removes and returns `name` if present.
    pub fn take_opt(&mut self, name: &str) -> Option<Array> {
        let a = self.tensors.remove(name)?;
        self.taken.insert(name.to_string());
        Some(a)
    }

    /// Takes `name` and checks its shape.
    pub fn take_shaped(&mut self, name: &str, shape: &[i32]) -> Result<Array> {
        let a = self.take(name)?;
        self.check_shape(name, &a, shape)?;
        Ok(a)
    }

    /// Takes `name` (if present) and checks its shape.
    pub fn take_shaped_opt(&mut self, name: &str, shape: &[i32]) -> Result<Option<Array>> {
        match self.take_opt(name) {
            Some(a) => {
                self.check_shape(name, &a, shape)?;
                Ok(Some(a))
            }
            None => Ok(None),
        }
    }

    /// A `Shape` error unless `a` has `shape`.
    pub fn check_shape(&self, name: &str, a: &Array, shape: &[i32]) -> Result<()> {
        if a.shape() != shape {
            return Err(ZayaError::Shape {
                name: name.to_string(),
                file: self.origin.clone(),
                expected: format!("{shape:?}"),
                found: format!("{:?}", a.shape()),
            });
        }
        Ok(())
    }

    /// The declared format of module `base`, or one inferred from the tensors present (float when
    /// only `.weight` exists, affine when `.scales` is floating point, mxfp4 when it is U8).
    pub fn format(&self, base: &str, in_features: usize) -> Result<WeightFormat> {
        if let Some(f) = self.formats.get(base) {
            return Ok(f.clone());
        }
        let scales = self.tensors.get(&format!("{base}.scales"));
        let weight = self.tensors.get(&format!("{base}.weight"));
        match (weight, scales) {
            (Some(_), None) => Ok(WeightFormat::Float),
            (Some(w), Some(s)) => {
                let cols_w = *w.shape().last().unwrap_or(&0) as usize;
                let cols_s = *s.shape().last().unwrap_or(&0) as usize;
                if cols_s == 0 || !in_features.is_multiple_of(cols_s) {
                    return Err(
                        self.quant_err(base, format!("cannot infer the group size from scales {:?}", s.shape()))
                    );
                }
                let group_size = (in_features / cols_s) as u32;
                if s.dtype() == Dtype::Uint8 {
                    return Ok(WeightFormat::Mxfp4 { group_size });
                }
                let bits = (cols_w * 32 / in_features) as u32;
                Ok(WeightFormat::Affine { bits, group_size })
            }
            _ => Err(ZayaError::MissingTensor {
                name: format!("{base}.weight"),
                file: Some(self.origin.clone()),
            }),
        }
    }

    /// The TurboQuant codebook `codebook.{in}.{bits}` from the sidecar.
    pub fn tq_codebook(&self, in_features: u32, bits: u32) -> Result<Array> {
        let key = format!("codebook.{in_features}.{bits}");
        self.tq_runtime.get(&key).cloned().ok_or_else(|| {
            ZayaError::MissingSidecar(format!("`{key}` (codebook for in_features {in_features}, {bits} bits)"))
        })
    }

    /// The TurboQuant sign vector `signs.{in}.{seed}` from the sidecar.
    pub fn tq_signs(&self, in_features: u32, seed: u64) -> Result<Array> {
        let key = format!("signs.{in_features}.{seed}");
        self.tq_runtime.get(&key).cloned().ok_or_else(|| {
            ZayaError::MissingSidecar(format!(
                "`{key}` (Hadamard signs for in_features {in_features}, seed {seed})"
            ))
        })
    }

    /// The halfword lookup table of `codebook.{in}.{bits}` (built once, then shared).
    pub fn tq_lut(&mut self, in_features: u32, bits: u32) -> Result<Array> {
        let key = format!("codebook.{in_features}.{bits}");
        if let Some(l) = self.tq_luts.get(&key) {
            return Ok(l.clone());
        }
        let lut = crate::quant::turboquant::halfword_lut(&self.tq_codebook(in_features, bits)?, bits)?;
        lut.eval()?;
        self.tq_luts.insert(key, lut.clone());
        Ok(lut)
    }

    pub(crate) fn quant_err(&self, name: &str, msg: String) -> ZayaError {
        ZayaError::Quant {
            name: name.to_string(),
            file: self.origin.clone(),
            msg,
        }
    }

    /// Names of all tensors consumed so far.
    pub fn taken(&self) -> &BTreeSet<String> {
        &self.taken
    }

    /// `UnexpectedTensors` if anything was left unconsumed.
    pub fn finish(self) -> Result<()> {
        if self.tensors.is_empty() {
            Ok(())
        } else {
            Err(ZayaError::UnexpectedTensors {
                names: self.tensors.into_keys().collect(),
            })
        }
    }
}

/// Casts a floating-point array to `dtype` (no-op when it already has it).
pub(crate) fn cast(a: Array, dtype: Dtype) -> Result<Array> {
    if a.dtype() == dtype {
        Ok(a)
    } else {
        Ok(a.as_dtype(dtype)?)
    }
}

fn check_float(src: &WeightSource, name: &str, a: &Array) -> Result<()> {
    if !matches!(a.dtype(), Dtype::Float32 | Dtype::Float16 | Dtype::Bfloat16) {
        return Err(ZayaError::Dtype {
            name: name.to_string(),
            file: src.origin().to_string(),
            expected: "float32, float16 or bfloat16".into(),
            found: format!("{:?}", a.dtype()),
        });
    }
    Ok(())
}

/// Takes a float tensor of the given shape and converts it to `dtype`.
pub(crate) fn take_float(src: &mut WeightSource, name: &str, shape: &[i32], dtype: Dtype) -> Result<Array> {
    let a = src.take_shaped(name, shape)?;
    check_float(src, name, &a)?;
    cast(a, dtype)
}

/// Like [`take_float`] for an optional tensor.
pub(crate) fn take_float_opt(src: &mut WeightSource, name: &str, shape: &[i32], dtype: Dtype) -> Result<Option<Array>> {
    match src.take_shaped_opt(name, shape)? {
        Some(a) => {
            check_float(src, name, &a)?;
            Ok(Some(cast(a, dtype)?))
        }
        None => Ok(None),
    }
}

/// A linear layer `y = x·Wᵀ (+ b)` in any storage format. Parameter names follow the bundle:
/// `weight` (float or packed U32), `scales`, `biases` (quantization), `bias` (the layer's bias).
#[derive(Debug, Clone, ModuleParameters)]
pub struct QLinear {
    #[param]
    pub weight: Param<Array>,
    #[param]
    pub scales: Param<Option<Array>>,
    #[param]
    pub biases: Param<Option<Array>>,
    #[param]
    pub bias: Param<Option<Array>>,
    pub format: WeightFormat,
    pub in_features: usize,
    pub out_features: usize,
    /// Dtype float weights were converted to for the plain backend (the compute dtype of the layer;
    /// the fused backend reads weights as stored). Quantization scales and biases are f32 for the
    /// plain backend, as stored for the fused one: every quantized matmul accumulates in f32.
    pub dtype: Dtype,
    /// The backend this layer runs on (`Fused` only where a fused kernel applies).
    pub backend: LinearBackend,
    /// How its mlx-ext ops execute on the fused backend (the model's `ext_mode` at build).
    pub ext: ExtMode,
}

/// The MLX quantization parameters of an affine or MXFP4 format (None for float and TurboQuant).
pub(crate) fn spec_of(format: &WeightFormat) -> Option<QuantSpec> {
    match *format {
        WeightFormat::Affine { bits, group_size } => Some(QuantSpec {
            mode: QuantMode::Affine,
            bits: bits as i32,
            group_size: group_size as i32,
        }),
        WeightFormat::Mxfp4 { group_size } => Some(QuantSpec {
            mode: QuantMode::Mxfp4,
            bits: 4,
            group_size: group_size as i32,
        }),
        _ => None,
    }
}

/// mlx-rs's unary-module interface (`Module<&Array>`): the same as [`QLinear::forward`].
impl mlx_rs::module::Module<&Array> for QLinear {
    type Output = Array;
    type Error = crate::error::ZayaError;

    fn forward(&mut self, x: &Array) -> Result<Array> {
        QLinear::forward(self, x)
    }

    fn training_mode(&mut self, _mode: bool) {}
}

impl QLinear {
    /// Builds the layer `base` (`[out, in]`) from the weight source, for the source's linear
    /// backend. Plain: float weights are converted to `dtype` once here, affine scales/biases to f32.
    /// Fused: weights, scales and biases stay as stored. `bias`: whether `base.bias` must exist.
    pub fn load(
        src: &mut WeightSource,
        base: &str,
        in_features: usize,
        out_features: usize,
        bias: bool,
        dtype: Dtype,
    ) -> Result<Self> {
        let format = src.format(base, in_features)?;
        let (i, o) = (in_features as i32, out_features as i32);
        let wname = format!("{base}.weight");
        let want_fused = src.linear_backend() == LinearBackend::Fused;
        let mut backend = LinearBackend::Plain;
        let (weight, scales, biases) = match &format {
            WeightFormat::Float => {
                if want_fused {
                    backend = LinearBackend::Fused;
                    let w = src.take_shaped(&wname, &[o, i])?;
                    check_float(src, &wname, &w)?;
                    (w, None, None)
                } else {
                    (take_float(src, &wname, &[o, i], dtype)?, None, None)
                }
            }
            WeightFormat::Affine { bits, group_size } => {
                let (bits, gs) = (*bits as usize, *group_size as usize);
                if gs == 0 || !in_features.is_multiple_of(gs) || !(in_features * bits).is_multiple_of(32) {
                    return Err(src.quant_err(
                        base,
                        format!("in_features {in_features} does not fit {bits}-bit groups of {gs}"),
                    ));
                }
                let w = src.take_shaped(&wname, &[o, (in_features * bits / 32) as i32])?;
                let g = (in_features / gs) as i32;
                let fused = want_fused && matches!(bits, 4 | 8) && gs % (32 / bits) == 0;
                // plain: f32 scales, because MLX's CPU quantized_matmul accumulates in the dtype of
                // x/scales and in bf16 that costs ~10% relative error at in = 2048
                let sdt = |src: &WeightSource, name: &str| -> Dtype {
                    if fused {
                        src.tensors.get(name).map_or(Dtype::Float32, |a| a.dtype())
                    } else {
                        Dtype::Float32
                    }
                };
                let (sn, bn) = (format!("{base}.scales"), format!("{base}.biases"));
                let (sd, bd) = (sdt(src, &sn), sdt(src, &bn));
                let s = take_float(src, &sn, &[o, g], sd)?;
                let b = take_float(src, &bn, &[o, g], bd)?;
                let (s, b) = if s.dtype() == b.dtype() {
                    (s, b)
                } else {
                    (cast(s, Dtype::Float32)?, cast(b, Dtype::Float32)?)
                };
                if fused {
                    backend = LinearBackend::Fused;
                }
                (w, Some(s), Some(b))
            }
            WeightFormat::Mxfp4 { group_size } => {
                let gs = *group_size as usize;
                if gs != 32 || !in_features.is_multiple_of(32) {
                    return Err(src.quant_err(
                        base,
                        format!("mxfp4 needs groups of 32 dividing in_features {in_features}"),
                    ));
                }
                let w = src.take_shaped(&wname, &[o, (in_features / 8) as i32])?;
                let s = src.take_shaped(&format!("{base}.scales"), &[o, (in_features / 32) as i32])?;
                (w, Some(s), None)
            }
            WeightFormat::TurboQuant { .. } => {
                return Err(src.quant_err(base, "TurboQuant is only supported for the routed experts".into()))
            }
        };
        let bias = if bias {
            Some(take_float(src, &format!("{base}.bias"), &[o], Dtype::Float32)?)
        } else {
            None
        };
        Ok(QLinear {
            weight: Param::new(weight),
            scales: Param::new(scales),
            biases: Param::new(biases),
            bias: Param::new(bias),
            format,
            in_features,
            out_features,
            dtype,
            backend,
            ext: src.ext_mode,
        })
    }

    /// How the fused matmul kernels run this linear: its mlx-ext mode, and bf16 dot products
    /// ([`MatmulPrecision::Bf16`](crate::ext::MatmulPrecision)) when its compute dtype is bf16.
    pub fn matmul_mode(&self) -> ext::MatmulMode {
        ext::MatmulMode {
            ext: self.ext,
            precision: if self.dtype == Dtype::Bfloat16 {
                ext::MatmulPrecision::Bf16
            } else {
                ext::MatmulPrecision::F32
            },
        }
    }

    /// `x [.., in] → [.., out]` in the dtype of `x` (f32 accumulation on every quantized or
    /// fused path).
    pub fn forward(&self, x: &Array) -> Result<Array> {
        let f32 = Dtype::Float32;
        let to_f32 = |x: &Array| -> Result<Array> {
            if x.dtype() == f32 {
                Ok(x.clone())
            } else {
                Ok(x.as_dtype(f32)?)
            }
        };
        let back = |y: Array| -> Result<Array> {
            if y.dtype() == x.dtype() {
                Ok(y)
            } else {
                Ok(y.as_dtype(x.dtype())?)
            }
        };
        if self.backend == LinearBackend::Fused {
            let xf = to_f32(x)?;
            let y = match self.format {
                WeightFormat::Affine { bits, group_size } => {
                    let y = ext::affine_matmul(
                        &xf,
                        &self.weight,
                        self.scales.value.as_ref().unwrap(),
                        self.biases.value.as_ref().unwrap(),
                        bits,
                        group_size,
                        self.matmul_mode(),
                    )?;
                    match self.bias.value.as_ref() {
                        Some(b) => y.add(b)?,
                        None => y,
                    }
                }
                _ => ext::dense_matmul(&xf, &self.weight, self.bias.value.as_ref(), self.ext)?,
            };
            return back(y);
        }
        let y = match spec_of(&self.format) {
            None => x.matmul(self.weight.t())?,
            Some(spec) => {
                // accumulate in f32 whatever the activation dtype, then round back to it
                let y = affine::matmul_t(
                    &to_f32(x)?,
                    &self.weight,
                    self.scales.value.as_ref().unwrap(),
                    self.biases.value.as_ref(),
                    spec,
                )?;
                back(y)?
            }
        };
        match self.bias.value.as_ref() {
            Some(b) => back(y.add(b)?),
            None => Ok(y),
        }
    }

    /// Rows `ids` of the weight as f32 (the embedding lookup; quantized rows are dequantized after
    /// the gather). `ids`: any integer shape (validated < out) → `[..ids, in]`.
    pub fn embed(&self, ids: &Array) -> Result<Array> {
        let flat = ids.flatten(None, None)?;
        let rows = match (self.backend, spec_of(&self.format)) {
            (LinearBackend::Fused, Some(spec)) if spec.mode == QuantMode::Affine => ext::affine_embed(
                &flat,
                &self.weight,
                self.scales.value.as_ref().unwrap(),
                self.biases.value.as_ref().unwrap(),
                spec.bits as u32,
                spec.group_size as u32,
                self.ext,
            )?,
            (_, spec) => self.embed_plain(&flat, spec)?,
        };
        let mut shape: Vec<i32> = ids.shape().to_vec();
        shape.push(self.in_features as i32);
        Ok(rows.reshape(&shape)?)
    }

    fn embed_plain(&self, flat: &Array, spec: Option<QuantSpec>) -> Result<Array> {
        Ok(match spec {
            None => cast(take_axis(&*self.weight, flat, 0)?, Dtype::Float32)?,
            Some(spec) => {
                let w = take_axis(&*self.weight, flat, 0)?;
                let s = take_axis(self.scales.value.as_ref().unwrap(), flat, 0)?;
                let b = match self.biases.value.as_ref() {
                    Some(b) => Some(take_axis(b, flat, 0)?),
                    None => None,
                };
                affine::dequantize_to(&w, &s, b.as_ref(), spec, Dtype::Float32)?
            }
        })
    }
}
