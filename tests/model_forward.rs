//! Forward pass vs the Python MLX reference (jang_tools.zaya.model, float32) on small random models
//! in every weight format (float, affine, mxfp4, TurboQuant), built by tests/model_ref/make_model_ref.py.
//! Both backends (fused kernels, plain MLX ops). Bound: max|Δ| ≤ 5e-4·max|ref| for the logits and every per-layer hidden state / residual, equal
//! argmax at every position, equal routes.
mod model_support;

use mlx_rs::Array;
use model_support::*;
use zaya_mlx::model::moe::ExpertBackend;
use zaya_mlx::model::{ForwardOptions, LogitsMode, ModelOptions};
use zaya_mlx::quant::linear::LinearBackend;

const REL: f32 = 5e-4;

/// Both backends: the fused kernels (the default) and plain MLX ops.
fn check(preset: &str, format: &str, seed: u64) {
    check_with(preset, format, seed, ModelOptions::default(), "fused");
    let plain = ModelOptions {
        expert_backend: ExpertBackend::Plain,
        linear_backend: LinearBackend::Plain,
        ..ModelOptions::default()
    };
    check_with(preset, format, seed, plain, "plain");
}

fn check_with(preset: &str, format: &str, seed: u64, opts: ModelOptions, label: &str) {
    let format_label = format!("{format}/{label}");
    let format = format_label.as_str();
    let dir = model_ref(preset, format.split('/').next().unwrap(), seed);
    let r = load_st(&dir.join("reference.safetensors"));
    let model = build(&dir, opts);
    let cfg = model.config().clone();
    let ids = ref_tokens(&r);
    let mut cache = model.new_cache();
    let out = model
        .forward_with(
            &Array::from_slice(&ids, &[ids.len() as i32]),
            &mut cache,
            ForwardOptions {
                logits: LogitsMode::All,
                capture: true,
                chunk: None,
            },
        )
        .unwrap();
    let logits = to_vec_f32(&out.logits.unwrap());
    let rl = to_vec_f32(&r["logits"]);
    let (d, m) = max_diff(&logits, &rl);
    eprintln!("{preset}/{format}: logits max|Δ| {d:.3e} max|ref| {m:.3}");
    assert!(d <= REL * m, "{preset}/{format}: logits max|Δ| {d} > {REL}·{m}");
    assert_eq!(
        argmax_rows(&logits, cfg.vocab_size),
        argmax_rows(&rl, cfg.vocab_size),
        "{preset}/{format}: argmax"
    );
    let cap = out.capture.unwrap();
    for n in 0..cfg.num_hidden_layers {
        for (name, ours) in [("hidden", &cap.hidden[n]), ("residual", &cap.residual[n])] {
            let (d, m) = max_diff(&to_vec_f32(ours), &to_vec_f32(&r[&format!("{name}.{n}")]));
            assert!(d <= REL * m, "{preset}/{format}: {name}.{n} max|Δ| {d} > {REL}·{m}");
        }
        if n % 2 == 1 {
            assert_eq!(
                to_vec_i32(&cap.routes[&n]),
                to_vec_i32(&r[&format!("route.{n}")]),
                "{preset}/{format}: route.{n}"
            );
        }
    }
}

#[test]
fn float_model_matches_reference() {
    check("tiny", "float", 7);
}

#[test]
fn affine_model_matches_reference() {
    check("tiny", "affine", 7);
}

#[test]
fn mxfp4_model_matches_reference() {
    check("tiny", "mxfp4", 7);
}

#[test]
fn turboquant_model_matches_reference() {
    check("tiny", "tq", 7);
}

#[test]
fn four_kv_heads_nonsquare_experts_match_reference() {
    check("kv4", "tq", 8);
    check("kv4", "float", 8);
}

#[test]
fn skip_route_matches_reference() {
    check("skip", "float", 9);
}
