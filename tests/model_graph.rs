//! The fused primitives actually run: a decode step's lazy graph (counted by primitive name just
//! before it is evaluated) holds the mlx-ext primitives the fused path promises, in the numbers the
//! architecture implies (one merge + norm per half-layer and the final one, one CCA q/k chain and
//! one attention per attention half-layer, one router, one expert call and one MoE output per MoE
//! half-layer, the embedding and the lm_head). A silent fallback to plain MLX ops fails here, and
//! the plain configuration holds none of them.
mod common;

use std::collections::BTreeMap;

use zaya_mlx::model::{ModelOptions, ZayaModel};
use zaya_mlx::quant::linear::LinearBackend;

/// The kernel trace is process-wide: the tests of this file take turns.
static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn histogram(model: &ZayaModel) -> BTreeMap<String, i64> {
    let _only = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let mut cache = model.new_cache();
    model.prefill(&[3, 5, 7], &mut cache, None).unwrap();
    let (_, stats, names) = model.decode_step_counted(9, &mut cache).unwrap();
    assert!(stats.nodes > 0);
    names.into_iter().collect()
}

#[test]
fn a_fused_decode_step_runs_the_fused_primitives() {
    for name in ["tiny", "skip"] {
        let fx = common::fixture(name);
        let model = ZayaModel::load(&fx.bundle, ModelOptions::default()).unwrap();
        let n = model.config().num_hidden_layers as i64;
        let (attn, moe) = (
            model.config().num_attention_layers() as i64,
            model.config().num_moe_layers() as i64,
        );
        let h = histogram(&model);
        let count = |k: &str| h.get(k).copied().unwrap_or(0);
        assert_eq!(
            count("ZayaResNorm"),
            n + 1,
            "{name}: merge + norm per half-layer and the final one: {h:?}"
        );
        assert_eq!(count("ZayaCcaQk"), attn, "{name}: {h:?}");
        assert_eq!(count("ZayaCcaAttention"), attn, "{name}: {h:?}");
        assert_eq!(count("ZayaRouter"), moe, "{name}: {h:?}");
        assert_eq!(count("ZayaTqSwitchGlu"), moe, "{name}: {h:?}");
        assert_eq!(count("ZayaMoeCombine"), moe, "{name}: {h:?}");
        assert_eq!(count("ZayaAffineEmbed"), 1, "{name}: {h:?}");
        // q‖k and v1‖v2 projections, o_proj per attention layer, and the lm_head
        assert!(count("ZayaAffineMatmul") > 3 * attn, "{name}: {h:?}");
    }
}

#[test]
fn the_plain_configuration_runs_none_of_them() {
    let fx = common::fixture("tiny");
    let model = ZayaModel::load(
        &fx.bundle,
        ModelOptions {
            linear_backend: LinearBackend::Plain,
            expert_backend: zaya_mlx::model::moe::ExpertBackend::Plain,
            ..ModelOptions::default()
        },
    )
    .unwrap();
    let h = histogram(&model);
    assert!(!h.is_empty());
    let fused: Vec<_> = h
        .keys()
        .filter(|k| k.starts_with("Zaya") && k.as_str() != "ZayaCcaConv")
        .collect();
    assert!(fused.is_empty(), "plain path ran fused primitives: {fused:?}");
}

/// The plan the model reports matches what its decode graph holds, for every option set.
#[test]
fn the_execution_plan_matches_the_graph() {
    use zaya_mlx::model::moe::ExpertBackend;
    use zaya_mlx::model::plan::{LayerPlan, Path};
    let fx = common::fixture("tiny");
    let option_sets = [
        ModelOptions::default(),
        ModelOptions {
            fused_layers: false,
            ..ModelOptions::default()
        },
        ModelOptions {
            expert_backend: ExpertBackend::Plain,
            ..ModelOptions::default()
        },
        ModelOptions {
            dtype: mlx_rs::Dtype::Bfloat16,
            ..ModelOptions::default()
        },
        ModelOptions {
            linear_backend: LinearBackend::Plain,
            expert_backend: ExpertBackend::Plain,
            ..ModelOptions::default()
        },
    ];
    for (i, opts) in option_sets.into_iter().enumerate() {
        let model = ZayaModel::load(&fx.bundle, opts).unwrap();
        let plan = model.plan();
        assert_eq!(plan.layers.len(), model.config().num_hidden_layers);
        // the primitives that ran in one decode step (the kernel trace: the plain expert path
        // evaluates part of the step early, so a graph count would miss those nodes)
        let h: BTreeMap<String, i64> = {
            let _only = LOCK.lock().unwrap_or_else(|e| e.into_inner());
            let mut cache = model.new_cache();
            model.prefill(&[3, 5, 7], &mut cache, None).unwrap();
            zaya_mlx::ext::trace_enable(true);
            let _ = zaya_mlx::ext::trace_take();
            model.decode_step(9, &mut cache).unwrap();
            zaya_mlx::ext::trace_enable(false);
            let mut m = BTreeMap::new();
            for e in zaya_mlx::ext::trace_take() {
                *m.entry(e.name.to_string()).or_insert(0) += 1;
            }
            m
        };
        let count = |k: &str| h.get(k).copied().unwrap_or(0);
        let planned = |f: &dyn Fn(&LayerPlan) -> bool| plan.layers.iter().filter(|l| f(l)).count() as i64;
        let attn_fused = planned(&|l| matches!(l, LayerPlan::Attention { path: Path::Fused }));
        let router_fused = planned(&|l| {
            matches!(
                l,
                LayerPlan::Moe {
                    router: Path::Fused,
                    ..
                }
            )
        });
        let experts_fused = planned(&|l| {
            matches!(
                l,
                LayerPlan::Moe {
                    experts: Path::Fused,
                    ..
                }
            )
        });
        let combine_fused = planned(&|l| {
            matches!(
                l,
                LayerPlan::Moe {
                    combine: Path::Fused,
                    ..
                }
            )
        });
        assert_eq!(count("ZayaCcaQk"), attn_fused, "options {i}: {plan} vs {h:?}");
        assert_eq!(count("ZayaCcaAttention"), attn_fused, "options {i}: {plan} vs {h:?}");
        assert_eq!(count("ZayaRouter"), router_fused, "options {i}: {plan} vs {h:?}");
        assert_eq!(count("ZayaTqSwitchGlu"), experts_fused, "options {i}: {plan} vs {h:?}");
        assert_eq!(count("ZayaMoeCombine"), combine_fused, "options {i}: {plan} vs {h:?}");
        let norms = if plan.norms == Path::Fused {
            model.config().num_hidden_layers as i64 + 1
        } else {
            0
        };
        assert_eq!(count("ZayaResNorm"), norms, "options {i}: {plan} vs {h:?}");
        assert_eq!(plan.batching, model.supports_batching());
        assert!(plan.to_string().contains("batched decoding"));
    }
}
