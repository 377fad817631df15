//! Parity with reference outputs: runs the model on a reference file's `token_ids` and compares the
//! tensors of the `reference.safetensors` naming contract — `logits` f32 `[T, V]`, `hidden.{n}` /
//! `residual.{n}` f32 `[T, H]`, `route.{n}` int32 `[T]` (odd n; `num_experts` = skip) — reporting
//! per tensor the max abs difference, the max relative difference max|Δ|/max|ref|, argmax agreement
//! (logits) and route agreement. Also produces those tensors for `zaya logits`.
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;

use mlx_rs::{Array, Dtype};

use crate::error::{Result, ZayaError};
use crate::model::cache::ModelCache;
use crate::model::{ForwardOptions, LogitsMode, ZayaModel};

/// Default relative bound max|Δ| ≤ rtol·max|ref| (the f32 parity bar).
pub const DEFAULT_RTOL: f32 = 5e-4;

/// Tolerances of a comparison.
#[derive(Debug, Clone, Copy)]
pub struct ParityOptions {
    /// Relative bound for every float tensor.
    pub rtol: f32,
    /// Minimum fraction of positions whose logits argmax (and routes) must agree.
    pub min_agreement: f64,
}

impl Default for ParityOptions {
    fn default() -> Self {
        ParityOptions {
            rtol: DEFAULT_RTOL,
            min_agreement: 1.0,
        }
    }
}

/// Comparison of one tensor.
#[derive(Debug, Clone)]
pub struct TensorParity {
    pub name: String,
    pub max_abs: f32,
    /// max |ref| (the scale of the relative bound).
    pub max_ref: f32,
    /// max|Δ| / max|ref|.
    pub rel: f32,
    /// (agreeing positions, positions) of the argmax (logits) or of the routes (`route.{n}`).
    pub agreement: Option<(usize, usize)>,
    pub ok: bool,
}

/// Result of [`compare`].
#[derive(Debug, Clone)]
pub struct ParityReport {
    pub tokens: usize,
    pub options: ParityOptions,
    /// In order: `logits`, then per layer `residual.{n}`, `hidden.{n}`, `route.{n}`.
    pub tensors: Vec<TensorParity>,
    /// Reference tensors not compared (unknown names, e.g. `greedy_ids`).
    pub ignored: Vec<String>,
}

impl ParityReport {
    /// True when every compared tensor is within tolerance.
    pub fn ok(&self) -> bool {
        !self.tensors.is_empty() && self.tensors.iter().all(|t| t.ok)
    }

    /// The entry for `name`, if compared.
    pub fn get(&self, name: &str) -> Option<&TensorParity> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// A plain-text table, one line per tensor.
    pub fn table(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "{:<14} {:>12} {:>12} {:>11} {:>12}  status   (rtol {:.1e}, min agreement {:.0}%, {} tokens)",
            "tensor",
            "max|Δ|",
            "max|ref|",
            "max rel",
            "agreement",
            self.options.rtol,
            self.options.min_agreement * 100.0,
            self.tokens
        );
        for t in &self.tensors {
            let agree = t.agreement.map(|(a, n)| format!("{a}/{n}")).unwrap_or_default();
            let (abs, mref, rel) = if t.name.starts_with("route.") {
                (String::from("-"), String::from("-"), String::from("-"))
            } else {
                (
                    format!("{:.3e}", t.max_abs),
                    format!("{:.3e}", t.max_ref),
                    format!("{:.2e}", t.rel),
                )
            };
            let _ = writeln!(
                s,
                "{:<14} {:>12} {:>12} {:>11} {:>12}  {}",
                t.name,
                abs,
                mref,
                rel,
                agree,
                if t.ok { "ok" } else { "FAIL" }
            );
        }
        if !self.ignored.is_empty() {
            let _ = writeln!(s, "not compared: {}", self.ignored.join(", "));
        }
        let _ = writeln!(s, "{}", if self.ok() { "PARITY OK" } else { "PARITY FAILED" });
        s
    }
}

fn host_f32(a: &Array) -> Result<Vec<f32>> {
    let a = a.as_dtype(Dtype::Float32)?.contiguous()?;
    a.eval()?;
    Ok(a.as_slice::<f32>().to_vec())
}

fn host_i64(a: &Array) -> Result<Vec<i64>> {
    let a = a.as_dtype(Dtype::Int64)?.contiguous()?;
    a.eval()?;
    Ok(a.as_slice::<i64>().to_vec())
}

fn argmax_rows(v: &[f32], cols: usize) -> Vec<usize> {
    v.chunks(cols)
        .map(|r| {
            let mut best = 0;
            for (i, &x) in r.iter().enumerate() {
                if x > r[best] {
                    best = i;
                }
            }
            best
        })
        .collect()
}

/// Token ids of a reference file (`token_ids`: an integer dtype, shape `[T]` or `[1, T]`, T ≥ 1,
/// each id in 0..2³²).
pub fn reference_tokens(reference: &HashMap<String, Array>) -> Result<Vec<u32>> {
    let bad = |m: String| ZayaError::InvalidArgument(format!("reference `token_ids`: {m}"));
    let t = reference
        .get("token_ids")
        .ok_or_else(|| ZayaError::InvalidArgument("the reference file has no `token_ids` (pass --token-ids)".into()))?;
    let integer = matches!(
        t.dtype(),
        Dtype::Int8
            | Dtype::Int16
            | Dtype::Int32
            | Dtype::Int64
            | Dtype::Uint8
            | Dtype::Uint16
            | Dtype::Uint32
            | Dtype::Uint64
    );
    if !integer {
        return Err(bad(format!("dtype {:?}; expected an integer type (I32)", t.dtype())));
    }
    let shape = t.shape();
    if !(shape.len() == 1 || (shape.len() == 2 && shape[0] == 1)) {
        return Err(bad(format!("shape {shape:?}; expected [T]")));
    }
    if t.size() == 0 {
        return Err(bad("it is empty; expected at least one token".into()));
    }
    if t.dtype() == Dtype::Uint64 {
        let a = t.contiguous()?;
        a.eval()?;
        return a
            .as_slice::<u64>()
            .iter()
            .map(|&v| u32::try_from(v).map_err(|_| bad(format!("id {v} does not fit 32 bits"))))
            .collect();
    }
    host_i64(t)?
        .into_iter()
        .map(|v| {
            u32::try_from(v).map_err(|_| {
                if v < 0 {
                    bad(format!("id {v} is negative"))
                } else {
                    bad(format!("id {v} does not fit 32 bits"))
                }
            })
        })
        .collect()
}

/// Reads a reference file with our own safetensors parser (structure, offsets and sizes checked
/// before any array exists): float tensors become f32 arrays, integer and boolean tensors keep
/// their type. A truncated or corrupt file is a [`ZayaError::Safetensors`].
pub fn read_reference(path: &std::path::Path) -> Result<HashMap<String, Array>> {
    use safetensors::Dtype as D;
    if let Some(why) = crate::bundle::shards::not_a_file(path) {
        let kind = if why == "does not exist" {
            std::io::ErrorKind::NotFound
        } else {
            std::io::ErrorKind::InvalidInput
        };
        return Err(ZayaError::io(path, std::io::Error::new(kind, why)));
    }
    let bytes = std::fs::read(path).map_err(|e| ZayaError::io(path, e))?;
    let corrupt = |m: String| ZayaError::Safetensors {
        file: path.to_path_buf(),
        msg: m,
    };
    let st =
        safetensors::SafeTensors::deserialize(&bytes).map_err(|e| corrupt(format!("corrupt or truncated: {e}")))?;
    let mut out = HashMap::new();
    for (name, v) in st.tensors() {
        let shape: Vec<i32> = v
            .shape()
            .iter()
            .map(|&d| i32::try_from(d))
            .collect::<std::result::Result<_, _>>()
            .map_err(|_| corrupt(format!("tensor `{name}`: shape {:?} is too large", v.shape())))?;
        let b = v.data();
        macro_rules! ints {
            ($t:ty, $n:expr) => {{
                let vals: Vec<$t> = b
                    .chunks_exact($n)
                    .map(|c| <$t>::from_le_bytes(c.try_into().unwrap()))
                    .collect();
                Array::from_slice(&vals, &shape)
            }};
        }
        // other float widths, converted to f32
        macro_rules! floats {
            ($n:expr, $f:expr) => {{
                let vals: Vec<f32> = b.chunks_exact($n).map($f).collect();
                Array::from_slice(&vals, &shape)
            }};
        }
        let a = match v.dtype() {
            D::F32 => ints!(f32, 4),
            D::F64 => floats!(8, |c: &[u8]| f64::from_le_bytes(c.try_into().unwrap()) as f32),
            D::F16 => floats!(2, |c: &[u8]| half::f16::from_le_bytes([c[0], c[1]]).to_f32()),
            D::BF16 => floats!(2, |c: &[u8]| half::bf16::from_le_bytes([c[0], c[1]]).to_f32()),
            D::I8 => Array::from_slice(&b.iter().map(|&x| x as i8).collect::<Vec<i8>>(), &shape),
            D::U8 => Array::from_slice(b, &shape),
            D::I16 => ints!(i16, 2),
            D::U16 => ints!(u16, 2),
            D::I32 => ints!(i32, 4),
            D::U32 => ints!(u32, 4),
            D::I64 => ints!(i64, 8),
            D::U64 => ints!(u64, 8),
            D::BOOL => Array::from_slice(&b.iter().map(|&x| x != 0).collect::<Vec<bool>>(), &shape),
            other => return Err(corrupt(format!("tensor `{name}`: unsupported dtype {other:?}"))),
        };
        out.insert(name, a);
    }
    Ok(out)
}

/// Reference tensors outside the naming contract that are still known (not compared).
const KNOWN_UNCOMPARED: [&str; 2] = ["token_ids", "greedy_ids"];

/// Runs `model` on one sequence `ids` from an empty cache and returns the tensors of the reference
/// naming contract: `token_ids`, `logits` f32 `[T, V]`, and with `hidden_states` also `hidden.{n}`,
/// `residual.{n}` f32 `[T, H]` and `route.{n}` int32 `[T]`.
pub fn run_outputs(
    model: &ZayaModel,
    ids: &[u32],
    hidden_states: bool,
    chunk: Option<usize>,
) -> Result<BTreeMap<String, Array>> {
    let mut cache: ModelCache = model.new_cache();
    let tokens = Array::from_slice(ids, &[1, ids.len() as i32]);
    let out = model.forward_with(
        &tokens,
        &mut cache,
        ForwardOptions {
            logits: LogitsMode::All,
            capture: hidden_states,
            chunk,
        },
    )?;
    let mut m = BTreeMap::new();
    let t = ids.len() as i32;
    m.insert(
        "token_ids".to_string(),
        Array::from_slice(&ids.iter().map(|&v| v as i32).collect::<Vec<_>>(), &[t]),
    );
    let logits = out.logits.expect("LogitsMode::All");
    m.insert(
        "logits".to_string(),
        logits.reshape(&[t, model.config().vocab_size as i32])?,
    );
    if let Some(cap) = out.capture {
        let h = model.config().hidden_size as i32;
        for (n, a) in cap.hidden.iter().enumerate() {
            m.insert(format!("hidden.{n}"), a.reshape(&[t, h])?);
        }
        for (n, a) in cap.residual.iter().enumerate() {
            m.insert(format!("residual.{n}"), a.reshape(&[t, h])?);
        }
        for (n, a) in &cap.routes {
            m.insert(format!("route.{n}"), a.reshape(&[t])?.as_dtype(Dtype::Int32)?);
        }
    }
    Ok(m)
}

fn layer_order(name: &str) -> (usize, usize) {
    if name == "logits" {
        return (0, 0);
    }
    let (kind, n) = name.split_once('.').unwrap_or((name, "0"));
    let n: usize = n.parse().unwrap_or(usize::MAX);
    let k = match kind {
        "residual" => 0,
        "hidden" => 1,
        _ => 2,
    };
    (1 + n, k)
}

fn is_compared(name: &str) -> bool {
    name == "logits"
        || ["hidden.", "residual.", "route."]
            .iter()
            .any(|p| name.strip_prefix(p).is_some_and(|n| n.parse::<usize>().is_ok()))
}

/// Compares `ours` with `reference` for every reference tensor of the naming contract. A reference
/// tensor we did not produce, or of a different shape, is an error.
pub fn compare_outputs(
    ours: &BTreeMap<String, Array>,
    reference: &HashMap<String, Array>,
    opts: ParityOptions,
) -> Result<ParityReport> {
    let mut names: Vec<&String> = reference.keys().filter(|k| is_compared(k)).collect();
    names.sort_by_key(|n| layer_order(n));
    let mut unknown: Vec<String> = reference
        .keys()
        .filter(|k| !is_compared(k) && !KNOWN_UNCOMPARED.contains(&k.as_str()))
        .cloned()
        .collect();
    if !unknown.is_empty() {
        unknown.sort();
        return Err(ZayaError::InvalidArgument(format!(
            "reference tensors outside the naming contract: {} (expected token_ids, logits, hidden.N, residual.N, route.N, greedy_ids)",
            unknown.join(", ")
        )));
    }
    let mut ignored: Vec<String> = reference
        .keys()
        .filter(|k| k.as_str() == "greedy_ids")
        .cloned()
        .collect();
    ignored.sort();
    let tokens = ours.get("token_ids").map_or(0, |t| t.shape()[0] as usize);
    let mut tensors = Vec::new();
    for name in names {
        let r = &reference[name];
        let o = ours.get(name).ok_or_else(|| {
            ZayaError::InvalidArgument(format!(
                "the reference has `{name}` but the model has no such tensor (is the reference for this model?)"
            ))
        })?;
        let rshape: Vec<i32> = r.shape().iter().copied().filter(|&d| d != 1).collect();
        let oshape: Vec<i32> = o.shape().iter().copied().filter(|&d| d != 1).collect();
        if rshape != oshape {
            return Err(ZayaError::InvalidArgument(format!(
                "`{name}`: reference shape {:?}, ours {:?}",
                r.shape(),
                o.shape()
            )));
        }
        let entry = if name.starts_with("route.") {
            let (a, b) = (host_i64(o)?, host_i64(r)?);
            let agree = a.iter().zip(&b).filter(|(x, y)| x == y).count();
            let ok = agree as f64 >= opts.min_agreement * b.len() as f64;
            TensorParity {
                name: name.clone(),
                max_abs: 0.0,
                max_ref: 0.0,
                rel: 0.0,
                agreement: Some((agree, b.len())),
                ok,
            }
        } else {
            let (a, b) = (host_f32(o)?, host_f32(r)?);
            let max_abs =
                a.iter()
                    .zip(&b)
                    .map(|(x, y)| (x - y).abs())
                    .fold(0f32, |m, d| if d.is_nan() { f32::NAN } else { m.max(d) });
            let max_ref = b.iter().map(|y| y.abs()).fold(0f32, f32::max);
            let rel = if max_ref > 0.0 { max_abs / max_ref } else { max_abs };
            let mut ok = max_abs.is_finite() && rel <= opts.rtol;
            let agreement = if name == "logits" {
                let cols = *r.shape().last().unwrap() as usize;
                let (pa, pb) = (argmax_rows(&a, cols), argmax_rows(&b, cols));
                let agree = pa.iter().zip(&pb).filter(|(x, y)| x == y).count();
                ok &= agree as f64 >= opts.min_agreement * pb.len() as f64;
                Some((agree, pb.len()))
            } else {
                None
            };
            TensorParity {
                name: name.clone(),
                max_abs,
                max_ref,
                rel,
                agreement,
                ok,
            }
        };
        tensors.push(entry);
    }
    if tensors.is_empty() {
        return Err(ZayaError::InvalidArgument(
            "the reference file has no `logits`, `hidden.{n}`, `residual.{n}` or `route.{n}` tensors".into(),
        ));
    }
    Ok(ParityReport {
        tokens,
        options: opts,
        tensors,
        ignored,
    })
}

/// Runs `model` on `token_ids` (default: the reference's `token_ids`) and compares with `reference`.
/// Per-layer tensors are captured only when the reference has any.
pub fn compare(
    model: &ZayaModel,
    reference: &HashMap<String, Array>,
    token_ids: Option<&[u32]>,
    chunk: Option<usize>,
    opts: ParityOptions,
) -> Result<ParityReport> {
    let ids = match token_ids {
        Some(t) => t.to_vec(),
        None => reference_tokens(reference)?,
    };
    let layers = reference.keys().any(|k| is_compared(k) && k != "logits");
    let ours = run_outputs(model, &ids, layers, chunk)?;
    compare_outputs(&ours, reference, opts)
}
