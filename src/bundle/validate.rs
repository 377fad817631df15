//! Validation before any compute: against the complete expected tensor set the config implies (built
//! in `expected`), with shapes and allowed dtypes; the storage format of every linear / stacked-expert
//! module recognised from its companions (float, MLX affine with bits and group size inferred from
//! shapes, MXFP4, TurboQuant with bits from `tq_bits`) and cross-checked with config.json's
//! `quantization` block and jang_config.json; the TurboQuant sidecar entries each TurboQuant module
//! needs (checked in `sidecar`); and nothing left over. Works on headers only (plus the one-byte
//! `tq_bits` values).
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

pub(crate) use super::expected::{kind_of_name, Expected};
pub use super::expected::{ParamCounts, TensorKind};
use super::layout::{Build, Planned};
use super::shards::{DType, ShardMap, TensorMeta};
use super::sidecar::load_sidecar;
use super::Layout;
use crate::config::{JangConfig, QuantizationConfig, ZayaConfig};
use crate::error::{Result, ZayaError};
use crate::quant::WeightFormat;

/// Outcome of validation: the canonical plan restricted to the model's tensors, plus formats.
pub(crate) struct Validated {
    pub plan: BTreeMap<String, Planned>,
    pub formats: BTreeMap<String, WeightFormat>,
    pub kinds: BTreeMap<String, TensorKind>,
    /// Module base → kind.
    pub module_kinds: BTreeMap<String, TensorKind>,
    /// Sidecar entries to load (name → tensor), and the sidecar mapping.
    pub sidecar: Option<(Arc<ShardMap>, BTreeMap<String, TensorMeta>)>,
    pub warnings: Vec<String>,
    /// Stored names dropped on purpose (a tied lm_head, `tq_bits`).
    pub dropped: Vec<String>,
    /// Stored names not used by the model (only when `allow_unexpected`).
    pub unexpected: Vec<String>,
    pub params: ParamCounts,
}

pub(super) fn shape_str(s: &[usize]) -> String {
    format!("{s:?}")
}

pub(super) fn quant_err(name: &str, file: &str, msg: impl Into<String>) -> ZayaError {
    ZayaError::Quant {
        name: name.to_string(),
        file: file.to_string(),
        msg: msg.into(),
    }
}

fn missing(name: &str, layout: Layout) -> ZayaError {
    ZayaError::MissingTensor {
        name: name.to_string(),
        file: match layout {
            Layout::LegacyStacked => None,
            l => Some(format!(
                "any shard; canonical name shown, the bundle uses the {} layout",
                l.label()
            )),
        },
    }
}

fn check_float(name: &str, p: &Planned) -> Result<()> {
    if !matches!(p.dtype, DType::F16 | DType::BF16 | DType::F32) {
        return Err(ZayaError::Dtype {
            name: name.to_string(),
            file: p.files(),
            expected: "F16, BF16 or F32".into(),
            found: p.dtype.to_string(),
        });
    }
    Ok(())
}

fn check_shape(name: &str, p: &Planned, expected: &[usize]) -> Result<()> {
    if p.shape != expected {
        return Err(ZayaError::Shape {
            name: name.to_string(),
            file: p.files(),
            expected: shape_str(expected),
            found: shape_str(&p.shape),
        });
    }
    Ok(())
}

fn check_dtype(name: &str, p: &Planned, expected: DType) -> Result<()> {
    if p.dtype != expected {
        return Err(ZayaError::Dtype {
            name: name.to_string(),
            file: p.files(),
            expected: expected.to_string(),
            found: p.dtype.to_string(),
        });
    }
    Ok(())
}

/// The effective `quantization` settings of a module: its override (under the canonical or stored
/// base name) merged over the global block.
struct QuantSettings {
    bits: Option<u32>,
    group_size: Option<u32>,
    mode: Option<String>,
}

fn quant_settings(q: &QuantizationConfig, bases: &[&str], embed_bits: Option<u32>) -> QuantSettings {
    let o = bases.iter().find_map(|b| q.overrides.get(*b));
    QuantSettings {
        bits: o.and_then(|o| o.bits).or(embed_bits).or(q.bits),
        group_size: o.and_then(|o| o.group_size).or(q.group_size),
        mode: o.and_then(|o| o.mode.clone()).or_else(|| q.mode.clone()),
    }
}

/// Stored base name of a module (for override lookups), from its main tensor.
fn stored_base(p: &Planned, suffix: &str) -> Option<String> {
    let s = p.sources();
    if s.len() != 1 {
        return None;
    }
    s[0].name.strip_suffix(suffix).map(str::to_string)
}

/// Inputs of validation besides the plan.
pub(crate) struct Context<'a> {
    pub dir: &'a Path,
    pub cfg: &'a ZayaConfig,
    pub jang: Option<&'a JangConfig>,
    pub layout: Layout,
    pub allow_unexpected: bool,
}

/// Validates the plan and works out every module's format.
pub(crate) fn validate(ctx: &Context, mut plan: BTreeMap<String, Planned>) -> Result<Validated> {
    let cfg = ctx.cfg;
    let expected = Expected::from_config(cfg);
    let mut out = Validated {
        plan: BTreeMap::new(),
        formats: BTreeMap::new(),
        kinds: BTreeMap::new(),
        module_kinds: BTreeMap::new(),
        sidecar: None,
        warnings: vec![],
        dropped: vec![],
        unexpected: vec![],
        params: expected.param_counts(cfg.top_k),
    };

    // A tied lm_head is the embedding: drop any stored copy.
    if cfg.tie_word_embeddings {
        let names: Vec<String> = plan.keys().filter(|k| k.starts_with("lm_head.")).cloned().collect();
        for n in names {
            let p = plan.remove(&n).unwrap();
            out.dropped.push(p.disk_name());
        }
    }

    // plain float parameters
    for ps in &expected.params {
        let mut p = plan.remove(&ps.name).ok_or_else(|| missing(&ps.name, ctx.layout))?;
        check_float(&ps.name, &p)?;
        if p.shape != ps.shape {
            match (&ps.torch_shape, &p.build) {
                (Some(t), Build::Direct(m)) if &p.shape == t => {
                    p = Planned {
                        build: Build::SwapLast2(m.clone()),
                        dtype: p.dtype,
                        shape: ps.shape.clone(),
                    };
                }
                _ => {
                    let exp = match &ps.torch_shape {
                        Some(t) => format!(
                            "{} (MLX layout) or {} (PyTorch layout)",
                            shape_str(&ps.shape),
                            shape_str(t)
                        ),
                        None => shape_str(&ps.shape),
                    };
                    return Err(ZayaError::Shape {
                        name: ps.name.clone(),
                        file: p.files(),
                        expected: exp,
                        found: shape_str(&p.shape),
                    });
                }
            }
        } else if let (Some(t), Build::Direct(m)) = (&ps.torch_shape, &p.build) {
            // Both layouts have the same shape (kernel size equals in/groups): the stored file is taken
            // to follow PyTorch, as every known producer of such files writes PyTorch layout.
            if t == &ps.shape && ps.shape[1] > 1 {
                p = Planned {
                    build: Build::SwapLast2(m.clone()),
                    dtype: p.dtype,
                    shape: ps.shape.clone(),
                };
                out.warnings.push(format!(
                    "`{}` has kernel size equal to in/groups; assumed PyTorch layout [out, in/groups, k]",
                    ps.name
                ));
            }
        }
        out.kinds.insert(ps.name.clone(), ps.kind);
        out.plan.insert(ps.name.clone(), p);
    }

    // linear modules
    let mut tq_modules: Vec<(String, u32, usize, u64)> = Vec::new(); // base, bits, in, seed
    let seed = tq_seed(ctx)?;
    for l in &expected.linears {
        let b = &l.base;
        let prefix: Vec<usize> = l.experts.into_iter().collect();
        let with = |last: &[usize]| -> Vec<usize> { prefix.iter().chain(last).copied().collect() };
        out.module_kinds.insert(b.clone(), l.kind);
        let has = |s: &str| plan.contains_key(&format!("{b}{s}"));
        let fmt = if has(".tq_packed") || has(".tq_norms") {
            if l.experts.is_none() {
                let name = [".tq_packed", ".tq_norms"]
                    .iter()
                    .map(|s| format!("{b}{s}"))
                    .find(|n| plan.contains_key(n))
                    .unwrap();
                return Err(quant_err(
                    &name,
                    &plan[&name].files(),
                    "TurboQuant storage is only supported for the routed experts",
                ));
            }
            let packed_name = format!("{b}.tq_packed");
            let norms_name = format!("{b}.tq_norms");
            let bits_name = format!("{b}.tq_bits");
            let packed = plan
                .remove(&packed_name)
                .ok_or_else(|| missing(&packed_name, ctx.layout))?;
            let norms = plan
                .remove(&norms_name)
                .ok_or_else(|| missing(&norms_name, ctx.layout))?;
            let bits_t = plan.remove(&bits_name);
            let file = packed.files();
            check_dtype(&packed_name, &packed, DType::U32)?;
            check_float(&norms_name, &norms)?;
            check_shape(&norms_name, &norms, &with(&[l.out]))?;
            let proj = b.rsplit('.').next().unwrap_or("");
            let jang_bits = ctx.jang.and_then(|j| j.routed_expert_bits.get(proj).copied());
            let stored_bits = match &bits_t {
                Some(t) => Some(read_bits(&bits_name, t)?),
                None => None,
            };
            let bits = match (stored_bits, jang_bits) {
                (Some(s), Some(j)) if s != j => {
                    return Err(quant_err(
                        &bits_name,
                        &bits_t.as_ref().unwrap().files(),
                        format!(
                            "tq_bits says {s} bits but jang_config.json mxtq_bits.routed_expert says {j} for {proj}"
                        ),
                    ))
                }
                (Some(s), _) => s,
                (None, Some(j)) => j,
                (None, None) => match cfg.quantization.as_ref().and_then(|q| q.routed_expert_bits) {
                    Some(c) => c,
                    None => {
                        return Err(quant_err(
                            &bits_name,
                            &file,
                            "no tq_bits tensor and no routed-expert bits in jang_config.json or config.json",
                        ))
                    }
                },
            };
            if jang_bits.is_none() {
                if let Some(c) = cfg.quantization.as_ref().and_then(|q| q.routed_expert_bits) {
                    if c != bits {
                        return Err(quant_err(
                            &bits_name,
                            &file,
                            format!("the tensors hold {bits}-bit codes but config.json quantization.routed_expert_bits is {c}"),
                        ));
                    }
                }
            }
            if ![2, 3, 4, 8].contains(&bits) {
                return Err(quant_err(
                    &bits_name,
                    &file,
                    format!("{bits}-bit TurboQuant is not supported (2, 3, 4 or 8)"),
                ));
            }
            let per_word = (32 / bits) as usize;
            let cols = l.inp.div_ceil(per_word);
            if packed.shape.len() == prefix.len() + 2 && packed.shape[..prefix.len() + 1] == with(&[l.out])[..] {
                if packed.shape[prefix.len() + 1] != cols {
                    return Err(quant_err(
                        &packed_name,
                        &file,
                        format!(
                            "{} packed columns at {bits} bits hold {} inputs, but in_features is {} (needs {cols} columns)",
                            packed.shape[prefix.len() + 1],
                            packed.shape[prefix.len() + 1] * per_word,
                            l.inp
                        ),
                    ));
                }
            } else {
                check_shape(&packed_name, &packed, &with(&[l.out, cols]))?;
            }
            if let Some(j) = ctx.jang.and_then(|j| j.tq_in_features.get(b.as_str())) {
                if *j != l.inp {
                    return Err(quant_err(
                        &packed_name,
                        &file,
                        format!("jang_config.json tq_in_features says {j}, the config implies {}", l.inp),
                    ));
                }
            }
            if let Some(t) = bits_t {
                out.dropped.push(t.disk_name());
            }
            out.kinds.insert(packed_name.clone(), l.kind);
            out.kinds.insert(norms_name.clone(), l.kind);
            out.plan.insert(packed_name, packed);
            out.plan.insert(norms_name, norms);
            tq_modules.push((b.clone(), bits, l.inp, seed));
            WeightFormat::TurboQuant {
                bits,
                in_features: l.inp as u32,
                seed,
            }
        } else {
            let wname = format!("{b}.weight");
            let w = plan.remove(&wname).ok_or_else(|| missing(&wname, ctx.layout))?;
            let file = w.files();
            let sname = format!("{b}.scales");
            let bname = format!("{b}.biases");
            let scales = plan.remove(&sname);
            let biases = plan.remove(&bname);
            let fmt = match (scales, biases) {
                (None, None) => {
                    check_float(&wname, &w)?;
                    check_shape(&wname, &w, &with(&[l.out, l.inp]))?;
                    WeightFormat::Float
                }
                (None, Some(_)) => return Err(missing(&sname, ctx.layout)),
                (Some(s), biases) => {
                    check_dtype(&wname, &w, DType::U32)?;
                    let nd = prefix.len() + 2;
                    if w.shape.len() != nd || w.shape[..nd - 1] != with(&[l.out])[..] {
                        return Err(ZayaError::Shape {
                            name: wname.clone(),
                            file: file.clone(),
                            expected: format!(
                                "{} (packed)",
                                shape_str(&with(&[l.out, 0])).replace(", 0]", ", in·bits/32]")
                            ),
                            found: shape_str(&w.shape),
                        });
                    }
                    if s.shape.len() != nd || s.shape[..nd - 1] != with(&[l.out])[..] || s.shape[nd - 1] == 0 {
                        return Err(ZayaError::Shape {
                            name: sname.clone(),
                            file: s.files(),
                            expected: format!(
                                "{} (per group)",
                                shape_str(&with(&[l.out, 0])).replace(", 0]", ", in/group_size]")
                            ),
                            found: shape_str(&s.shape),
                        });
                    }
                    let wc = w.shape[nd - 1];
                    let sc = s.shape[nd - 1];
                    if l.inp % sc != 0 {
                        return Err(quant_err(
                            &sname,
                            &s.files(),
                            format!("{sc} groups do not divide in_features {}", l.inp),
                        ));
                    }
                    let group = (l.inp / sc) as u32;
                    if (wc * 32) % l.inp != 0 {
                        return Err(quant_err(
                            &wname,
                            &file,
                            format!(
                                "{wc} packed columns do not encode {} inputs at a whole number of bits",
                                l.inp
                            ),
                        ));
                    }
                    let bits = (wc * 32 / l.inp) as u32;
                    let bases_owned = [Some(b.clone()), stored_base(&w, ".weight")];
                    let bases: Vec<&str> = bases_owned.iter().flatten().map(String::as_str).collect();
                    // jang's converters store the embedding's (and an untied lm_head's) width as a
                    // top-level `embed_bits` of the quantization block instead of a module override
                    let embed_bits = matches!(l.kind, TensorKind::Embeddings | TensorKind::LmHead)
                        .then(|| cfg.quantization.as_ref().and_then(|q| q.embed_bits))
                        .flatten();
                    let settings = cfg.quantization.as_ref().map(|q| quant_settings(q, &bases, embed_bits));
                    let fmt = match biases {
                        Some(bi) => {
                            check_float(&sname, &s)?;
                            check_dtype(&bname, &bi, s.dtype)?;
                            check_shape(&bname, &bi, &s.shape)?;
                            if ![2, 3, 4, 5, 6, 8].contains(&bits) {
                                return Err(quant_err(
                                    &wname,
                                    &file,
                                    format!("{bits}-bit affine is not supported by MLX"),
                                ));
                            }
                            if ![32, 64, 128].contains(&group) {
                                return Err(quant_err(
                                    &sname,
                                    &s.files(),
                                    format!("group size {group} is not supported by MLX (32, 64, 128)"),
                                ));
                            }
                            if let Some(st) = &settings {
                                if let Some(m) = st.mode.as_deref().filter(|m| *m != "affine") {
                                    return Err(quant_err(&wname, &file, format!("config.json quantization mode is `{m}` but the module has affine `.biases`")));
                                }
                                if let Some(cb) = st.bits.filter(|&cb| cb != bits) {
                                    return Err(quant_err(&wname, &file, format!("config.json quantization says {cb} bits, the tensors hold {bits}-bit codes")));
                                }
                                if let Some(cg) = st.group_size.filter(|&cg| cg != group) {
                                    return Err(quant_err(
                                        &sname,
                                        &s.files(),
                                        format!(
                                            "config.json quantization says group size {cg}, the scales imply {group}"
                                        ),
                                    ));
                                }
                            } else {
                                out.warnings.push(format!("`{b}` is affine-quantized but config.json has no `quantization` block; using {bits} bits, group {group} from the shapes"));
                            }
                            out.kinds.insert(bname.clone(), l.kind);
                            out.plan.insert(bname, bi);
                            WeightFormat::Affine {
                                bits,
                                group_size: group,
                            }
                        }
                        None if s.dtype.is_float() => return Err(missing(&bname, ctx.layout)),
                        None => {
                            check_dtype(&sname, &s, DType::U8)?;
                            if bits != 4 || group != 32 {
                                return Err(quant_err(
                                    &wname,
                                    &file,
                                    format!("no `.biases`, so MXFP4 (4 bits, group 32) was expected, but the shapes imply {bits} bits, group {group}"),
                                ));
                            }
                            if let Some(st) = &settings {
                                let m = st.mode.as_deref().unwrap_or("affine");
                                if m != "mxfp4" {
                                    return Err(quant_err(&wname, &file, format!("the module has no `.biases` (MXFP4) but config.json quantization mode is `{m}`")));
                                }
                                if let Some(cb) = st.bits.filter(|&cb| cb != 4) {
                                    return Err(quant_err(
                                        &wname,
                                        &file,
                                        format!("config.json quantization says {cb} bits, MXFP4 holds 4"),
                                    ));
                                }
                                if let Some(cg) = st.group_size.filter(|&cg| cg != 32) {
                                    return Err(quant_err(
                                        &sname,
                                        &s.files(),
                                        format!("config.json quantization says group size {cg}, MXFP4 uses 32"),
                                    ));
                                }
                            } else {
                                out.warnings
                                    .push(format!("`{b}` is MXFP4 but config.json has no `quantization` block"));
                            }
                            WeightFormat::Mxfp4 { group_size: group }
                        }
                    };
                    out.kinds.insert(sname.clone(), l.kind);
                    out.plan.insert(sname, s);
                    fmt
                }
            };
            out.kinds.insert(wname.clone(), l.kind);
            out.plan.insert(wname, w);
            fmt
        };
        if l.bias {
            let bname = format!("{b}.bias");
            let p = plan.remove(&bname).ok_or_else(|| missing(&bname, ctx.layout))?;
            check_float(&bname, &p)?;
            check_shape(&bname, &p, &with(&[l.out]))?;
            out.kinds.insert(bname.clone(), l.kind);
            out.plan.insert(bname, p);
        }
        out.formats.insert(b.clone(), fmt);
    }

    // gate and up share one fused kernel pass: warn if their bits differ
    for (b, f) in &out.formats {
        if let (Some(stem), WeightFormat::TurboQuant { bits, .. }) = (b.strip_suffix(".gate_proj"), f) {
            if let Some(WeightFormat::TurboQuant { bits: ub, .. }) = out.formats.get(&format!("{stem}.up_proj")) {
                if ub != bits {
                    out.warnings
                        .push(format!("`{stem}`: gate_proj has {bits}-bit and up_proj {ub}-bit codes"));
                }
            }
        }
    }

    // leftovers
    if !plan.is_empty() {
        let names: Vec<String> = plan.values().map(|p| p.disk_name()).collect();
        if ctx.allow_unexpected {
            out.warnings
                .push(format!("{} unexpected tensor(s) ignored", names.len()));
            out.unexpected = names;
        } else {
            return Err(ZayaError::UnexpectedTensors { names });
        }
    }

    // the TurboQuant sidecar
    if !tq_modules.is_empty() {
        out.sidecar = Some(load_sidecar(ctx.dir, &tq_modules)?);
    }
    Ok(out)
}

fn tq_seed(ctx: &Context) -> Result<u64> {
    let j = ctx.jang.and_then(|j| j.mxtq_seed);
    let c = ctx.cfg.mxtq_seed;
    match (j, c) {
        (Some(a), Some(b)) if a != b => Err(ZayaError::config(
            "jang_config.json",
            "mxtq_seed",
            format!("{a} differs from config.json's mxtq_seed {b}"),
        )),
        (Some(a), _) | (None, Some(a)) => Ok(a),
        (None, None) => Ok(42),
    }
}

fn read_bits(name: &str, p: &Planned) -> Result<u32> {
    let m = match &p.build {
        Build::Direct(m) => m,
        _ => return Err(quant_err(name, &p.files(), "tq_bits must be a single stored tensor")),
    };
    if m.dtype != DType::U8 || m.numel() != 1 {
        return Err(ZayaError::Dtype {
            name: name.to_string(),
            file: m.file().to_string(),
            expected: "U8 [1]".into(),
            found: format!("{} {:?}", m.dtype, m.shape),
        });
    }
    Ok(m.bytes()[0] as u32)
}
