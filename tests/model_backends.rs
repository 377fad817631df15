//! The fused path (the default: mlx-ext kernels and fused layer primitives) against the plain MLX-ops
//! path on the jang-converted fixtures (tiny, wide, real, skip), f32: all-position logits and every
//! per-layer hidden state / residual within max|Δ| ≤ 1e-5·max|plain|, identical routes; then a few
//! decode steps continuing the same prefilled caches: logits and every cache state (keys, values,
//! conv_state, prev_hs) within the same bound. Each path is checked against the Python reference in
//! parity_fixtures.rs; this test pins the two paths to each other much more tightly.
mod common;

use mlx_rs::Array;
use zaya_mlx::model::moe::ExpertBackend;
use zaya_mlx::model::{ForwardOptions, LogitsMode, ModelOptions, ZayaModel};
use zaya_mlx::quant::linear::LinearBackend;
use zaya_mlx::tools::parity::reference_tokens;

const REL: f32 = 1e-5;

fn vals(a: &Array) -> Vec<f32> {
    let a = a.as_dtype(mlx_rs::Dtype::Float32).unwrap().contiguous().unwrap();
    a.eval().unwrap();
    a.as_slice::<f32>().to_vec()
}

fn check(a: &Array, b: &Array, what: &str) {
    assert_eq!(a.shape(), b.shape(), "{what}: shape");
    let (a, b) = (vals(a), vals(b));
    let m = b.iter().fold(0f32, |m, v| m.max(v.abs()));
    let d = a.iter().zip(&b).fold(0f32, |d, (x, y)| d.max((x - y).abs()));
    if what.contains("logits") {
        eprintln!("{what}: max|Δ|/max|plain| = {:.2e}", d / m.max(1e-6));
    }
    assert!(
        d <= REL * m.max(1e-6),
        "{what}: fused vs plain max|Δ| {d:.3e} > {REL}·{m:.3e}"
    );
}

fn plain() -> ModelOptions {
    ModelOptions {
        expert_backend: ExpertBackend::Plain,
        linear_backend: LinearBackend::Plain,
        ..ModelOptions::default()
    }
}

fn fused_equals_plain(name: &str) {
    let fx = common::fixture(name);
    let r: std::collections::HashMap<String, Array> = Array::load_safetensors(&fx.reference).unwrap();
    let ids = reference_tokens(&r).unwrap();
    let fused = ZayaModel::load(&fx.bundle, ModelOptions::default()).unwrap();
    assert!(fused.fused_layers(), "the default runs the fused layers");
    let plain = ZayaModel::load(&fx.bundle, plain()).unwrap();
    let tokens = Array::from_slice(&ids, &[ids.len() as i32]);
    let opts = ForwardOptions {
        logits: LogitsMode::All,
        capture: true,
        chunk: None,
    };
    let (mut cf, mut cp) = (fused.new_cache(), plain.new_cache());
    let of = fused.forward_with(&tokens, &mut cf, opts).unwrap();
    let op = plain.forward_with(&tokens, &mut cp, opts).unwrap();
    check(
        of.logits.as_ref().unwrap(),
        op.logits.as_ref().unwrap(),
        &format!("{name}: logits"),
    );
    let (capf, capp) = (of.capture.unwrap(), op.capture.unwrap());
    let n = fused.config().num_hidden_layers;
    for l in 0..n {
        check(&capf.hidden[l], &capp.hidden[l], &format!("{name}: hidden.{l}"));
        check(&capf.residual[l], &capp.residual[l], &format!("{name}: residual.{l}"));
        if l % 2 == 1 {
            assert_eq!(vals(&capf.routes[&l]), vals(&capp.routes[&l]), "{name}: route.{l}");
        }
    }
    assert_eq!(cf.skip_counts(), cp.skip_counts(), "{name}: skip counters");
    // decode continues from the prefilled caches
    let vocab = fused.config().vocab_size as u32;
    for step in 0..3u32 {
        let tok = (ids[step as usize] * 7 + 3) % vocab;
        let lf = fused.decode_step(tok, &mut cf).unwrap();
        let lp = plain.decode_step(tok, &mut cp).unwrap();
        check(&lf, &lp, &format!("{name}: decode step {step} logits"));
    }
    for (i, (a, b)) in cf.attn_layers().iter().zip(cp.attn_layers()).enumerate() {
        let w = format!("{name}: attention layer {}", 2 * i);
        assert_eq!(a.len(), b.len(), "{w}: cached positions");
        check(&a.keys().unwrap(), &b.keys().unwrap(), &format!("{w}: keys"));
        check(&a.values().unwrap(), &b.values().unwrap(), &format!("{w}: values"));
        check(
            a.conv_state.as_ref().unwrap(),
            b.conv_state.as_ref().unwrap(),
            &format!("{w}: conv_state"),
        );
        check(
            a.prev_hs.as_ref().unwrap(),
            b.prev_hs.as_ref().unwrap(),
            &format!("{w}: prev_hs"),
        );
    }
}

#[test]
fn tiny_fused_equals_plain() {
    fused_equals_plain("tiny");
}

#[test]
fn wide_fused_equals_plain() {
    fused_equals_plain("wide");
}

#[test]
fn real_dims_fused_equals_plain() {
    fused_equals_plain("real");
}

#[test]
fn skip_fused_equals_plain() {
    fused_equals_plain("skip");
}
