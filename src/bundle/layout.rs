//! On-disk layouts → canonical names. Detects which layout a bundle uses and plans, from the headers
//! alone, how every canonical tensor is produced: a stored tensor as is, per-expert tensors stacked into
//! `[E, out, in]`, the rows of a fused gate/up tensor, or (decided during validation) a conv weight
//! with its last two axes swapped from PyTorch to MLX layout.
//!
//! Canonical names are the legacy bundle names (see [`super`]). Accepted aliases:
//! - MLX-LM stacked experts without `switch_mlp` (`zaya_block.experts.{gate,up,down}_proj.*`);
//! - the Zyphra legacy per-expert `local_experts.{e}.linear_fc1` (rows `0..I` gate, `I..2I` up) and
//!   `linear_fc2` (down), also when quantized (every companion is split/stacked alike);
//! - the upstream transformers 40-block names of every known revision (docs/model.md §5.3 and
//!   the transformers converter): `input_layernorm`/`input_norm`, `post_attention_layernorm`/
//!   `post_attention_norm`, `post_attention_residual_scale`/`post_attention_res_scale`,
//!   `post_mlp_residual_scale`/`post_mlp_res_scale`, `qkv_proj.{q_proj,k_proj,v_proj_current,
//!   v_proj_delayed}` or `qkv_proj.{linear_q,...}`, `conv_qk_depthwise`/`conv_qk_grouped`,
//!   `qk_norm.temp`/`self_attn.temp`, router `mlp.gate.*` or `zaya_block.router.*` with
//!   `router_mlp.{fc1,fc2,out_proj,norm}`, experts `mlp.experts.*` or `zaya_block.experts.*` with the
//!   fused `gate_up_proj [E, 2I, H]`, `model.input_hidden_states_*`, `model.norm`.
use std::collections::BTreeMap;

use super::shards::{DType, ShardSet, TensorMeta};
use super::Layout;
use crate::config::ZayaConfig;
use crate::error::{Result, ZayaError};

/// How a canonical tensor is produced from stored tensors.
#[derive(Clone, Debug)]
pub(crate) enum Build {
    /// One stored tensor as is (zero-copy when aligned).
    Direct(TensorMeta),
    /// A 3-D conv weight stored in PyTorch layout `[out, in/g, k]`: swap the last two axes.
    SwapLast2(TensorMeta),
    /// Per-expert tensors stacked on a new axis 0, each restricted to rows `[lo, hi)` if given.
    Stack {
        parts: Vec<TensorMeta>,
        rows: Option<(usize, usize)>,
    },
    /// Rows `[lo, hi)` of axis 1 of a stacked `[E, R, ...]` tensor.
    Rows { src: TensorMeta, lo: usize, hi: usize },
}

/// One canonical tensor: how to build it, its dtype and canonical shape, and its stored sources.
#[derive(Clone, Debug)]
pub(crate) struct Planned {
    pub build: Build,
    pub dtype: DType,
    pub shape: Vec<usize>,
}

impl Planned {
    fn direct(m: &TensorMeta) -> Planned {
        Planned {
            build: Build::Direct(m.clone()),
            dtype: m.dtype,
            shape: m.shape.clone(),
        }
    }

    /// The stored tensors this one comes from.
    pub fn sources(&self) -> Vec<&TensorMeta> {
        match &self.build {
            Build::Direct(m) | Build::SwapLast2(m) | Build::Rows { src: m, .. } => vec![m],
            Build::Stack { parts, .. } => parts.iter().collect(),
        }
    }

    /// The stored name (the first one for stacked tensors).
    pub fn disk_name(&self) -> String {
        let s = self.sources();
        if s.len() == 1 {
            s[0].name.clone()
        } else {
            format!("{} (+{} more stacked)", s[0].name, s.len() - 1)
        }
    }

    /// The shard file(s) holding the sources.
    pub fn files(&self) -> String {
        let mut f: Vec<&str> = self.sources().iter().map(|m| m.file()).collect();
        f.sort_unstable();
        f.dedup();
        f.join(", ")
    }

    /// Bytes of the canonical tensor.
    pub fn nbytes(&self) -> usize {
        self.shape.iter().product::<usize>() * self.dtype.size()
    }
}

/// Detects the layout from the stored names.
pub(crate) fn detect_layout(set: &ShardSet) -> Result<Layout> {
    let per_expert = set.tensors.keys().find(|n| n.contains(".local_experts."));
    let upstream = set.tensors.keys().find(|n| is_upstream_name(n));
    match (per_expert, upstream) {
        (Some(a), Some(b)) => Err(ZayaError::UnsupportedModel {
            file: set.tensors[a].file().to_string(),
            msg: format!("mixes the legacy per-expert layout (`{a}`) with upstream names (`{b}`)"),
        }),
        (Some(_), None) => Ok(Layout::LegacyPerExpert),
        (None, Some(_)) => Ok(Layout::Upstream),
        (None, None) => Ok(Layout::LegacyStacked),
    }
}

fn is_upstream_name(n: &str) -> bool {
    const MARKERS: [&str; 12] = [
        ".input_layernorm.",
        ".post_attention_layernorm.",
        ".post_attention_norm.",
        ".post_attention_residual_scale.",
        ".post_attention_res_scale.",
        ".post_mlp_residual_scale.",
        ".post_mlp_res_scale.",
        ".self_attn.qkv_proj.",
        ".self_attn.qk_norm.",
        ".mlp.gate.",
        ".mlp.experts.",
        ".experts.gate_up_proj",
    ];
    n == "model.norm.weight" || n.starts_with("model.input_hidden_states_") || MARKERS.iter().any(|m| n.contains(m))
}

/// Splits `model.layers.{i}.{rest}`.
fn layer_rest(name: &str) -> Option<(usize, &str)> {
    let r = name.strip_prefix("model.layers.")?;
    let (i, rest) = r.split_once('.')?;
    Some((i.parse().ok()?, rest))
}

/// Rewrites the first matching prefix.
fn replace_prefix(s: &str, pairs: &[(&str, &str)]) -> Option<String> {
    pairs
        .iter()
        .find_map(|(from, to)| s.strip_prefix(from).map(|r| format!("{to}{r}")))
}

/// What an upstream name becomes.
enum Upstream {
    Name(String),
    /// The fused `[E, 2I, H]` gate/up tensor of MoE half-layer `layer` (suffix `.weight`, `.scales`...).
    GateUp {
        layer: usize,
        suffix: String,
    },
}

/// Ensures a parameter-style expert name (`down_proj`) gets a `.weight` suffix.
fn param_suffix(s: &str) -> String {
    if s.is_empty() {
        ".weight".to_string()
    } else {
        s.to_string()
    }
}

fn map_upstream(name: &str, half_layers: usize) -> Upstream {
    let same = || Upstream::Name(name.to_string());
    match name {
        "model.input_hidden_states_scale" => {
            return Upstream::Name("model.layers.0.res_scale.hidden_states_scale".into())
        }
        "model.input_hidden_states_bias" => {
            return Upstream::Name("model.layers.0.res_scale.hidden_states_bias".into())
        }
        "model.norm.weight" => return Upstream::Name("model.final_norm.weight".into()),
        _ => {}
    }
    let Some((k, rest)) = layer_rest(name) else {
        return same();
    };
    let attn = 2 * k;
    let moe = 2 * k + 1;
    let l = |n: usize, r: String| Upstream::Name(format!("model.layers.{n}.{r}"));

    // attention half-layer 2k
    if let Some(r) = replace_prefix(
        rest,
        &[("input_layernorm.", "input_norm."), ("input_norm.", "input_norm.")],
    ) {
        return l(attn, r);
    }
    if matches!(
        rest,
        "self_attn.qk_norm.temp" | "self_attn.temp" | "self_attn.qkv_proj.temp" | "self_attn.qkv.temp"
    ) {
        return l(attn, "self_attn.qkv.temp".into());
    }
    if let Some(r) = replace_prefix(
        rest,
        &[
            ("self_attn.qkv_proj.q_proj.", "self_attn.qkv.linear_q."),
            ("self_attn.qkv_proj.linear_q.", "self_attn.qkv.linear_q."),
            ("self_attn.qkv_proj.k_proj.", "self_attn.qkv.linear_k."),
            ("self_attn.qkv_proj.linear_k.", "self_attn.qkv.linear_k."),
            ("self_attn.qkv_proj.v_proj_current.", "self_attn.qkv.val_proj1."),
            ("self_attn.qkv_proj.val_proj1.", "self_attn.qkv.val_proj1."),
            ("self_attn.qkv_proj.v_proj_delayed.", "self_attn.qkv.val_proj2."),
            ("self_attn.qkv_proj.val_proj2.", "self_attn.qkv.val_proj2."),
            ("self_attn.qkv_proj.conv_qk_depthwise.", "self_attn.qkv.conv_qk.0."),
            ("self_attn.qkv_proj.conv_qk.0.", "self_attn.qkv.conv_qk.0."),
            ("self_attn.qkv_proj.conv_qk_grouped.", "self_attn.qkv.conv_qk.1."),
            ("self_attn.qkv_proj.conv_qk.1.", "self_attn.qkv.conv_qk.1."),
            ("self_attn.qkv.", "self_attn.qkv."),
            ("self_attn.o_proj.", "self_attn.o_proj."),
        ],
    ) {
        return l(attn, r);
    }
    // MoE half-layer 2k+1
    if let Some(r) = replace_prefix(
        rest,
        &[
            ("post_attention_layernorm.", "input_norm."),
            ("post_attention_norm.", "input_norm."),
            ("post_attention_residual_scale.", "res_scale."),
            ("post_attention_res_scale.", "res_scale."),
        ],
    ) {
        return l(moe, r);
    }
    for router in ["mlp.gate.", "zaya_block.router."] {
        if let Some(inner) = rest.strip_prefix(router) {
            let inner = replace_prefix(
                inner,
                &[
                    ("router_mlp.fc1.", "router_mlp.0."),
                    ("router_mlp.fc2.", "router_mlp.2."),
                    ("router_mlp.out_proj.", "router_mlp.4."),
                    ("router_mlp.norm.", "rmsnorm_eda."),
                    ("norm.", "rmsnorm_eda."),
                ],
            )
            .unwrap_or_else(|| inner.to_string());
            return l(moe, format!("zaya_block.router.{inner}"));
        }
    }
    for experts in ["mlp.experts.", "zaya_block.experts."] {
        if let Some(inner) = rest.strip_prefix(experts) {
            if let Some(sfx) = inner.strip_prefix("gate_up_proj") {
                if sfx.is_empty() || sfx.starts_with('.') {
                    return Upstream::GateUp {
                        layer: moe,
                        suffix: param_suffix(sfx),
                    };
                }
            }
            for p in ["gate_proj", "up_proj", "down_proj"] {
                if let Some(sfx) = inner.strip_prefix(p) {
                    if sfx.is_empty() || sfx.starts_with('.') {
                        return l(moe, format!("zaya_block.experts.switch_mlp.{p}{}", param_suffix(sfx)));
                    }
                }
            }
            return l(moe, format!("zaya_block.experts.{inner}"));
        }
    }
    // the residual scaling of the next attention half-layer (or the final one)
    if let Some(r) = replace_prefix(rest, &[("post_mlp_residual_scale.", ""), ("post_mlp_res_scale.", "")]) {
        let n = 2 * k + 2;
        return if n >= half_layers {
            Upstream::Name(format!("model.res_scale.{r}"))
        } else {
            l(n, format!("res_scale.{r}"))
        };
    }
    same()
}

/// MLX-LM's stacked expert names without `switch_mlp` → canonical.
fn normalize_mlx_lm(name: &str) -> String {
    for p in ["gate_proj", "up_proj", "down_proj"] {
        let pat = format!(".zaya_block.experts.{p}.");
        if let Some(i) = name.find(&pat) {
            return format!(
                "{}.zaya_block.experts.switch_mlp.{p}.{}",
                &name[..i],
                &name[i + pat.len()..]
            );
        }
    }
    name.to_string()
}

/// A per-expert name `model.layers.{n}.zaya_block.experts.local_experts.{e}.linear_fc{1|2}{suffix}`.
fn parse_local_expert(name: &str) -> Option<(usize, usize, u8, String)> {
    let (n, rest) = layer_rest(name)?;
    let r = rest.strip_prefix("zaya_block.experts.local_experts.")?;
    let (e, r) = r.split_once('.')?;
    let e: usize = e.parse().ok()?;
    let (fc, sfx) = if let Some(s) = r.strip_prefix("linear_fc1") {
        (1, s)
    } else if let Some(s) = r.strip_prefix("linear_fc2") {
        (2, s)
    } else {
        return None;
    };
    if !sfx.starts_with('.') {
        return None;
    }
    Some((n, e, fc, sfx.to_string()))
}

fn insert(plan: &mut BTreeMap<String, Planned>, name: String, p: Planned) -> Result<()> {
    if let Some(prev) = plan.get(&name) {
        let f = p.sources()[0].shard.path().to_path_buf();
        return Err(ZayaError::Safetensors {
            file: f,
            msg: format!(
                "`{}` and `{}` both provide the canonical tensor `{name}`",
                prev.disk_name(),
                p.disk_name()
            ),
        });
    }
    plan.insert(name, p);
    Ok(())
}

fn check_same(first: &TensorMeta, other: &TensorMeta) -> Result<()> {
    if other.dtype != first.dtype {
        return Err(ZayaError::Dtype {
            name: other.name.clone(),
            file: other.file().to_string(),
            expected: format!("{} like `{}`", first.dtype, first.name),
            found: other.dtype.to_string(),
        });
    }
    if other.shape != first.shape {
        return Err(ZayaError::Shape {
            name: other.name.clone(),
            file: other.file().to_string(),
            expected: format!("{:?} like `{}`", first.shape, first.name),
            found: format!("{:?}", other.shape),
        });
    }
    Ok(())
}

/// Rows `[lo, hi)` of every part, stacked: shape `[E, hi-lo, rest...]`.
fn stacked(parts: Vec<TensorMeta>, rows: Option<(usize, usize)>) -> Planned {
    let first = &parts[0];
    let mut shape = vec![parts.len()];
    shape.extend(&first.shape);
    if let Some((lo, hi)) = rows {
        shape[1] = hi - lo;
    }
    Planned {
        dtype: first.dtype,
        shape,
        build: Build::Stack { parts, rows },
    }
}

/// Plans every canonical tensor of the bundle. Names that map nowhere keep their stored name (and are
/// reported as unexpected by validation).
pub(crate) fn plan(set: &ShardSet, layout: Layout, cfg: &ZayaConfig) -> Result<BTreeMap<String, Planned>> {
    let mut plan = BTreeMap::new();
    // (layer, fc, suffix) -> expert -> tensor
    let mut experts: BTreeMap<(usize, u8, String), BTreeMap<usize, TensorMeta>> = BTreeMap::new();
    for (name, meta) in &set.tensors {
        if layout == Layout::LegacyPerExpert {
            if let Some((n, e, fc, sfx)) = parse_local_expert(name) {
                experts.entry((n, fc, sfx)).or_default().insert(e, meta.clone());
                continue;
            }
        }
        let canonical = if layout == Layout::Upstream {
            match map_upstream(name, cfg.num_hidden_layers) {
                Upstream::Name(n) => n,
                Upstream::GateUp { layer, suffix } => {
                    if meta.shape.len() < 2 || meta.shape[1] % 2 != 0 {
                        return Err(ZayaError::Shape {
                            name: name.clone(),
                            file: meta.file().to_string(),
                            expected: "[E, 2·I, ...] (fused gate and up rows)".into(),
                            found: format!("{:?}", meta.shape),
                        });
                    }
                    let half = meta.shape[1] / 2;
                    for (proj, lo, hi) in [("gate_proj", 0, half), ("up_proj", half, 2 * half)] {
                        let mut shape = meta.shape.clone();
                        shape[1] = hi - lo;
                        let p = Planned {
                            build: Build::Rows {
                                src: meta.clone(),
                                lo,
                                hi,
                            },
                            dtype: meta.dtype,
                            shape,
                        };
                        insert(
                            &mut plan,
                            format!("model.layers.{layer}.zaya_block.experts.switch_mlp.{proj}{suffix}"),
                            p,
                        )?;
                    }
                    continue;
                }
            }
        } else {
            name.clone()
        };
        insert(&mut plan, normalize_mlx_lm(&canonical), Planned::direct(meta))?;
    }

    let ne = cfg.num_experts;
    for ((n, fc, sfx), by_e) in experts {
        let missing = (0..ne).find(|e| !by_e.contains_key(e));
        if let Some(e) = missing {
            return Err(ZayaError::MissingTensor {
                name: format!("model.layers.{n}.zaya_block.experts.local_experts.{e}.linear_fc{fc}{sfx}"),
                file: None,
            });
        }
        let mut parts = Vec::with_capacity(ne);
        let mut extra = Vec::new();
        for (e, m) in by_e {
            if e < ne {
                parts.push(m);
            } else {
                extra.push(m);
            }
        }
        for p in &parts[1..] {
            check_same(&parts[0], p)?;
        }
        // experts beyond num_experts stay under their own names: validation reports them
        for m in extra {
            insert(&mut plan, m.name.clone(), Planned::direct(&m))?;
        }
        let base = format!("model.layers.{n}.zaya_block.experts.switch_mlp");
        if fc == 1 {
            let rows = parts[0].shape.first().copied().unwrap_or(0);
            if parts[0].shape.len() < 2 || rows % 2 != 0 {
                return Err(ZayaError::Shape {
                    name: parts[0].name.clone(),
                    file: parts[0].file().to_string(),
                    expected: "[2·I, ...] (gate rows then up rows)".into(),
                    found: format!("{:?}", parts[0].shape),
                });
            }
            let half = rows / 2;
            insert(
                &mut plan,
                format!("{base}.gate_proj{sfx}"),
                stacked(parts.clone(), Some((0, half))),
            )?;
            insert(
                &mut plan,
                format!("{base}.up_proj{sfx}"),
                stacked(parts, Some((half, rows))),
            )?;
        } else {
            insert(&mut plan, format!("{base}.down_proj{sfx}"), stacked(parts, None))?;
        }
    }
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(n: &str) -> String {
        match map_upstream(n, 8) {
            Upstream::Name(s) => s,
            Upstream::GateUp { layer, suffix } => format!("GATEUP {layer}{suffix}"),
        }
    }

    #[test]
    fn upstream_names_map_to_legacy() {
        assert_eq!(
            name("model.layers.1.input_layernorm.weight"),
            "model.layers.2.input_norm.weight"
        );
        assert_eq!(
            name("model.layers.1.post_attention_layernorm.weight"),
            "model.layers.3.input_norm.weight"
        );
        assert_eq!(
            name("model.layers.1.self_attn.qkv_proj.v_proj_delayed.weight"),
            "model.layers.2.self_attn.qkv.val_proj2.weight"
        );
        assert_eq!(
            name("model.layers.0.self_attn.qkv_proj.conv_qk_grouped.bias"),
            "model.layers.0.self_attn.qkv.conv_qk.1.bias"
        );
        assert_eq!(
            name("model.layers.2.self_attn.qk_norm.temp"),
            "model.layers.4.self_attn.qkv.temp"
        );
        assert_eq!(
            name("model.layers.2.self_attn.temp"),
            "model.layers.4.self_attn.qkv.temp"
        );
        assert_eq!(
            name("model.layers.0.mlp.gate.router_mlp.out_proj.weight"),
            "model.layers.1.zaya_block.router.router_mlp.4.weight"
        );
        assert_eq!(
            name("model.layers.0.mlp.gate.router_mlp.norm.weight"),
            "model.layers.1.zaya_block.router.rmsnorm_eda.weight"
        );
        assert_eq!(
            name("model.layers.3.mlp.gate.balancing_biases"),
            "model.layers.7.zaya_block.router.balancing_biases"
        );
        assert_eq!(
            name("model.layers.0.mlp.experts.down_proj"),
            "model.layers.1.zaya_block.experts.switch_mlp.down_proj.weight"
        );
        assert_eq!(name("model.layers.0.mlp.experts.gate_up_proj"), "GATEUP 1.weight");
        assert_eq!(
            name("model.layers.0.zaya_block.experts.gate_up_proj.scales"),
            "GATEUP 1.scales"
        );
        assert_eq!(
            name("model.layers.0.post_mlp_residual_scale.residual_bias"),
            "model.layers.2.res_scale.residual_bias"
        );
        assert_eq!(
            name("model.layers.3.post_mlp_residual_scale.residual_bias"),
            "model.res_scale.residual_bias"
        );
        assert_eq!(
            name("model.layers.0.post_attention_res_scale.hidden_states_scale"),
            "model.layers.1.res_scale.hidden_states_scale"
        );
        assert_eq!(
            name("model.input_hidden_states_bias"),
            "model.layers.0.res_scale.hidden_states_bias"
        );
        assert_eq!(name("model.norm.weight"), "model.final_norm.weight");
        assert_eq!(name("model.embed_tokens.weight"), "model.embed_tokens.weight");
    }

    #[test]
    fn mlx_lm_expert_names() {
        assert_eq!(
            normalize_mlx_lm("model.layers.1.zaya_block.experts.up_proj.scales"),
            "model.layers.1.zaya_block.experts.switch_mlp.up_proj.scales"
        );
        assert_eq!(
            normalize_mlx_lm("model.layers.1.zaya_block.experts.switch_mlp.up_proj.scales"),
            "model.layers.1.zaya_block.experts.switch_mlp.up_proj.scales"
        );
    }

    #[test]
    fn local_expert_names() {
        assert_eq!(
            parse_local_expert("model.layers.3.zaya_block.experts.local_experts.12.linear_fc1.weight"),
            Some((3, 12, 1, ".weight".to_string()))
        );
        assert_eq!(
            parse_local_expert("model.layers.3.zaya_block.experts.local_experts.x.linear_fc1.weight"),
            None
        );
    }
}
