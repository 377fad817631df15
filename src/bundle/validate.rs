//! Validation before any compute: from the config, the complete expected tensor set with shapes and
//! allowed dtypes; the storage format of every linear / stacked-expert module recognised from its
//! companions (float, MLX affine with bits and group size inferred from shapes, MXFP4, TurboQuant with
//! bits from `tq_bits`) and cross-checked with config.json's `quantization` block and
//! jang_config.json; the TurboQuant sidecar entries each TurboQuant module needs; and nothing left over.
//! Works on headers only (plus the one-byte `tq_bits` values).
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;

use super::layout::{Build, Planned};
use super::shards::{open_shard, DType, ShardMap, TensorMeta, SIDECAR_FILE};
use super::Layout;
use crate::config::{JangConfig, QuantizationConfig, ZayaConfig};
use crate::error::{Result, ZayaError};
use crate::quant::WeightFormat;

/// What a tensor is for (the grouping of `zaya info`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TensorKind {
    Embeddings,
    LmHead,
    Attention,
    Router,
    Experts,
    Norms,
    ResidualScale,
}

impl TensorKind {
    /// Short label.
    pub fn label(self) -> &'static str {
        match self {
            TensorKind::Embeddings => "embeddings",
            TensorKind::LmHead => "lm_head",
            TensorKind::Attention => "attention",
            TensorKind::Router => "router",
            TensorKind::Experts => "experts",
            TensorKind::Norms => "norms",
            TensorKind::ResidualScale => "residual_scale",
        }
    }
}

/// The kind of a canonical tensor, from its name.
pub(crate) fn kind_of_name(name: &str) -> TensorKind {
    if name.starts_with("model.embed_tokens.") {
        TensorKind::Embeddings
    } else if name.starts_with("lm_head.") {
        TensorKind::LmHead
    } else if name.contains(".self_attn.") {
        TensorKind::Attention
    } else if name.contains(".zaya_block.router.") {
        TensorKind::Router
    } else if name.contains(".zaya_block.experts.") {
        TensorKind::Experts
    } else if name.contains("res_scale.") {
        TensorKind::ResidualScale
    } else {
        TensorKind::Norms
    }
}

/// A linear (or stacked-expert) module the model needs.
#[derive(Debug, Clone)]
pub(crate) struct LinearSpec {
    pub base: String,
    pub kind: TensorKind,
    /// `Some(E)` for stacked experts `[E, out, in]`.
    pub experts: Option<usize>,
    pub out: usize,
    pub inp: usize,
    pub bias: bool,
}

/// A plain float parameter (norm weight, bias, scale vector, conv weight, temp...).
#[derive(Debug, Clone)]
pub(crate) struct ParamSpec {
    pub name: String,
    pub kind: TensorKind,
    pub shape: Vec<usize>,
    /// For conv weights: the PyTorch-layout shape `[out, in/g, k]` accepted on disk (swapped on load).
    pub torch_shape: Option<Vec<usize>>,
}

/// The full expected set for a config.
pub(crate) struct Expected {
    pub linears: Vec<LinearSpec>,
    pub params: Vec<ParamSpec>,
}

impl Expected {
    pub fn from_config(cfg: &ZayaConfig) -> Expected {
        let h = cfg.hidden_size;
        let mut linears = Vec::new();
        let mut params = Vec::new();
        let lin = |base: String, kind, experts, out, inp, bias| LinearSpec {
            base,
            kind,
            experts,
            out,
            inp,
            bias,
        };
        let par = |name: String, kind, shape: Vec<usize>| ParamSpec {
            name,
            kind,
            shape,
            torch_shape: None,
        };
        linears.push(lin(
            "model.embed_tokens".into(),
            TensorKind::Embeddings,
            None,
            cfg.vocab_size,
            h,
            false,
        ));
        if !cfg.tie_word_embeddings {
            linears.push(lin(
                "lm_head".into(),
                TensorKind::LmHead,
                None,
                cfg.vocab_size,
                h,
                false,
            ));
        }
        params.push(par("model.final_norm.weight".into(), TensorKind::Norms, vec![h]));
        for s in [
            "hidden_states_scale",
            "hidden_states_bias",
            "residual_scale",
            "residual_bias",
        ] {
            params.push(par(format!("model.res_scale.{s}"), TensorKind::ResidualScale, vec![h]));
        }
        let first_moe = 1;
        for n in 0..cfg.num_hidden_layers {
            let p = format!("model.layers.{n}");
            params.push(par(format!("{p}.input_norm.weight"), TensorKind::Norms, vec![h]));
            let rs: &[&str] = if n == 0 {
                &["hidden_states_scale", "hidden_states_bias"]
            } else {
                &[
                    "hidden_states_scale",
                    "hidden_states_bias",
                    "residual_scale",
                    "residual_bias",
                ]
            };
            for s in rs {
                params.push(par(format!("{p}.res_scale.{s}"), TensorKind::ResidualScale, vec![h]));
            }
            if n % 2 == 0 {
                let a = format!("{p}.self_attn");
                let kd = cfg.k_dim();
                for (m, out) in [
                    ("linear_q", cfg.q_dim()),
                    ("linear_k", kd),
                    ("val_proj1", kd / 2),
                    ("val_proj2", kd / 2),
                ] {
                    linears.push(lin(format!("{a}.qkv.{m}"), TensorKind::Attention, None, out, h, false));
                }
                linears.push(lin(
                    format!("{a}.o_proj"),
                    TensorKind::Attention,
                    None,
                    h,
                    cfg.q_dim(),
                    false,
                ));
                let c = cfg.conv_channels();
                let cg = cfg.head_dim;
                params.push(ParamSpec {
                    name: format!("{a}.qkv.conv_qk.0.weight"),
                    kind: TensorKind::Attention,
                    shape: vec![c, cfg.cca_time0, 1],
                    torch_shape: Some(vec![c, 1, cfg.cca_time0]),
                });
                params.push(par(format!("{a}.qkv.conv_qk.0.bias"), TensorKind::Attention, vec![c]));
                params.push(ParamSpec {
                    name: format!("{a}.qkv.conv_qk.1.weight"),
                    kind: TensorKind::Attention,
                    shape: vec![c, cfg.cca_time1, cg],
                    torch_shape: Some(vec![c, cg, cfg.cca_time1]),
                });
                params.push(par(format!("{a}.qkv.conv_qk.1.bias"), TensorKind::Attention, vec![c]));
                params.push(par(
                    format!("{a}.qkv.temp"),
                    TensorKind::Attention,
                    vec![cfg.num_kv_heads],
                ));
            } else {
                let r = format!("{p}.zaya_block.router");
                let rh = cfg.router_hidden_size;
                let nl = cfg.num_router_logits();
                linears.push(lin(format!("{r}.down_proj"), TensorKind::Router, None, rh, h, true));
                linears.push(lin(format!("{r}.router_mlp.0"), TensorKind::Router, None, rh, rh, true));
                linears.push(lin(format!("{r}.router_mlp.2"), TensorKind::Router, None, rh, rh, true));
                linears.push(lin(
                    format!("{r}.router_mlp.4"),
                    TensorKind::Router,
                    None,
                    nl,
                    rh,
                    false,
                ));
                params.push(par(format!("{r}.rmsnorm_eda.weight"), TensorKind::Router, vec![rh]));
                params.push(par(format!("{r}.balancing_biases"), TensorKind::Router, vec![nl]));
                if cfg.use_eda && n != first_moe {
                    params.push(par(format!("{r}.router_states_scale"), TensorKind::Router, vec![rh]));
                }
                let x = format!("{p}.zaya_block.experts.switch_mlp");
                let (e, i) = (cfg.num_experts, cfg.expert_intermediate_size);
                linears.push(lin(format!("{x}.gate_proj"), TensorKind::Experts, Some(e), i, h, false));
                linears.push(lin(format!("{x}.up_proj"), TensorKind::Experts, Some(e), i, h, false));
                linears.push(lin(format!("{x}.down_proj"), TensorKind::Experts, Some(e), h, i, false));
            }
        }
        Expected { linears, params }
    }
}

/// Parameter counts of a configuration (logical weights, not storage).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct ParamCounts {
    /// Every parameter (a tied lm_head counted once).
    pub total: u64,
    /// Parameters used per token with top-1 routing (one expert per MoE layer), embeddings included.
    pub active: u64,
    /// `active` without the embedding table (and an untied lm_head).
    pub active_non_embedding: u64,
}

impl Expected {
    /// Parameter counts implied by the expected set.
    pub fn param_counts(&self, top_k: usize) -> ParamCounts {
        let mut c = ParamCounts::default();
        for l in &self.linears {
            let per = (l.out * l.inp + if l.bias { l.out } else { 0 }) as u64;
            let (all, act) = match l.experts {
                Some(e) => (per * e as u64, per * top_k.min(e) as u64),
                None => (per, per),
            };
            c.total += all;
            c.active += act;
            if !matches!(l.kind, TensorKind::Embeddings | TensorKind::LmHead) {
                c.active_non_embedding += act;
            }
        }
        for p in &self.params {
            let n = p.shape.iter().product::<usize>() as u64;
            c.total += n;
            c.active += n;
            c.active_non_embedding += n;
        }
        c
    }
}

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

fn shape_str(s: &[usize]) -> String {
    format!("{s:?}")
}

fn quant_err(name: &str, file: &str, msg: impl Into<String>) -> ZayaError {
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

/// Codebooks must be finite and sign vectors ±1 (both are tiny: the check reads them whole).
fn check_sidecar_values(name: &str, t: &TensorMeta) -> Result<()> {
    let vals = t
        .bytes()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]));
    let bad = |msg: String| quant_err(name, SIDECAR_FILE, msg);
    if name.starts_with("codebook.") {
        if let Some((i, v)) = vals.enumerate().find(|(_, v)| !v.is_finite()) {
            return Err(bad(format!("codebook entry {i} is {v}; a codebook must be finite")));
        }
    } else if name.starts_with("signs.") {
        if let Some((i, v)) = vals.enumerate().find(|(_, v)| *v != 1.0 && *v != -1.0) {
            return Err(bad(format!("sign {i} is {v}; a sign vector holds only +1 and -1")));
        }
    }
    Ok(())
}

/// Opens the sidecar and checks it has what every TurboQuant module needs.
fn load_sidecar(
    dir: &Path,
    modules: &[(String, u32, usize, u64)],
) -> Result<(Arc<ShardMap>, BTreeMap<String, TensorMeta>)> {
    let path = dir.join(SIDECAR_FILE);
    if let Some(why) = super::shards::not_a_file(&path) {
        return Err(ZayaError::MissingSidecar(format!(
            "{} {why}, but {} TurboQuant module(s) need it (e.g. `{}`)",
            path.display(),
            modules.len(),
            modules[0].0
        )));
    }
    let parsed = open_shard(&path, SIDECAR_FILE)?;
    let all: BTreeMap<String, TensorMeta> = parsed.tensors.into_iter().map(|t| (t.name.clone(), t)).collect();
    let mut needed: BTreeMap<String, (Vec<usize>, &str)> = BTreeMap::new();
    for (base, bits, inp, seed) in modules {
        needed
            .entry(format!("codebook.{inp}.{bits}"))
            .or_insert((vec![1usize << bits], base));
        needed
            .entry(format!("signs.{inp}.{seed}"))
            .or_insert((vec![*inp], base));
    }
    let mut keep = BTreeMap::new();
    for (name, (shape, user)) in &needed {
        let t = all.get(name).ok_or_else(|| {
            ZayaError::MissingSidecar(format!("`{name}` is not in {SIDECAR_FILE} (needed by `{user}`)"))
        })?;
        if t.dtype != DType::F32 {
            return Err(ZayaError::Dtype {
                name: name.clone(),
                file: SIDECAR_FILE.into(),
                expected: "F32".into(),
                found: t.dtype.to_string(),
            });
        }
        if &t.shape != shape {
            return Err(ZayaError::Shape {
                name: name.clone(),
                file: SIDECAR_FILE.into(),
                expected: shape_str(shape),
                found: shape_str(&t.shape),
            });
        }
        check_sidecar_values(name, t)?;
        keep.insert(name.clone(), t.clone());
    }
    // other codebooks / sign vectors are kept too (they are tiny)
    let extra: BTreeSet<&String> = all.keys().filter(|k| !keep.contains_key(*k)).collect();
    for k in extra {
        if k.starts_with("codebook.") || k.starts_with("signs.") {
            keep.insert(k.clone(), all[k].clone());
        }
    }
    Ok((parsed.map, keep))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn real_config() -> ZayaConfig {
        let v = serde_json::json!({
            "model_type": "zaya", "hidden_size": 2048, "num_hidden_layers": 80, "num_attention_heads": 8,
            "num_key_value_heads": 2, "head_dim": 128, "num_experts": 16, "moe_router_topk": 1,
            "ffn_hidden_size": 4096, "zaya_mlp_expansion": 256, "vocab_size": 262272
        });
        ZayaConfig::from_value(v, "config.json").unwrap()
    }

    #[test]
    fn expected_key_count_matches_the_published_bundle() {
        // docs/bundle-format.md §1.3: 1965 keys = 998 attention + 959 MoE + 3 embed + 1 final_norm + 4
        // res_scale; with affine attention (3 tensors per linear) and TurboQuant experts (3 per projection).
        let e = Expected::from_config(&real_config());
        let mut keys = e.params.len();
        for l in &e.linears {
            keys += 3 + usize::from(l.bias);
            if l.kind == TensorKind::Router {
                keys -= 2; // routers are float: `.weight` only (+ `.bias`)
            }
        }
        assert_eq!(keys, 1965);
    }

    #[test]
    fn parameter_counts_of_zaya1_8b() {
        let c = Expected::from_config(&real_config()).param_counts(1);
        // hand count: experts 40 layers × 16 × 3 × 2048² = 8.053B; attention per layer q 2048·1024 +
        // k 2048·256 + v 2·2048·128 + o 1024·2048 + convs 1280·2 + 1280 + 1280·128·2 + 1280 + temp 2
        let attn: u64 =
            2048 * 1024 + 2048 * 256 + 2 * 2048 * 128 + 1024 * 2048 + 1280 * 2 + 1280 + 1280 * 128 * 2 + 1280 + 2;
        let router: u64 = 256 * 2048 + 256 + 2 * (256 * 256 + 256) + 17 * 256 + 256 + 17;
        let expert: u64 = 3 * 2048 * 2048;
        let norms_scales: u64 = 80 * 2048 + 2048 + 4 * 2048 + (80 * 4 - 2) * 2048 + 39 * 256;
        let embed: u64 = 262272 * 2048;
        let total = 40 * (attn + router + 16 * expert) + norms_scales + embed;
        let active_ne = 40 * (attn + router + expert) + norms_scales;
        eprintln!("{c:?}");
        assert_eq!(c.total, total);
        assert_eq!(c.active_non_embedding, active_ne);
        assert_eq!(c.active, active_ne + embed);
        // docs/model.md §4.3: ≈ 0.76B active without embeddings ("760M")
        assert!(
            (0.75e9..0.78e9).contains(&(c.active_non_embedding as f64)),
            "{}",
            c.active_non_embedding
        );
    }
}
