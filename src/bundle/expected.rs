//! What a configuration implies before any file is read: the tensor kinds (the grouping of
//! `zaya info`), the complete expected set of linear modules and plain parameters with their shapes,
//! and the parameter counts derived from it.
use crate::config::ZayaConfig;

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
