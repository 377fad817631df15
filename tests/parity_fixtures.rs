//! Parity with jang_tools.zaya.model on the jang-converted fixtures of tests/reference (tiny, wide,
//! real, skip): f32 max|Δ| ≤ 5e-4·max|ref| for the logits and every per-layer tensor, equal argmax
//! and routes at every position; bf16 against the f32 reference (logits relative 3e-2, routes equal
//! at ≥ 99% of positions, argmax at ≥ 99% of the positions whose top-two gap bf16 cannot swap; see
//! `bf16_parity`, also for why not the bf16 reference); the
//! greedy continuation equals the reference's; the
//! skip fixture's `p·x` matches while `zero` differs, and the skip counters see the skipped tokens.
// both support modules include tests/common/venv.rs (a few lines; no shared state)
#![allow(clippy::duplicate_mod)]
mod common;
mod model_support;

use std::collections::HashMap;

use mlx_rs::{Array, Dtype};
use zaya_mlx::model::moe::{ExpertBackend, ModSkip};
use zaya_mlx::model::{ModelOptions, ZayaModel};
use zaya_mlx::quant::linear::LinearBackend;
use zaya_mlx::tools::parity::{compare, reference_tokens, run_outputs, ParityOptions};

fn open(fx: &common::Fixture, opts: ModelOptions) -> ZayaModel {
    ZayaModel::load(&fx.bundle, opts).unwrap()
}

fn load_ref(p: &std::path::Path) -> HashMap<String, Array> {
    Array::load_safetensors(p).unwrap()
}

/// f32 parity with the fused kernels (the default) and with plain MLX ops.
fn f32_parity(name: &str) {
    let fx = common::fixture(name);
    let r = load_ref(&fx.reference);
    let plain = ModelOptions {
        expert_backend: ExpertBackend::Plain,
        linear_backend: LinearBackend::Plain,
        ..Default::default()
    };
    for (label, opts) in [("fused", ModelOptions::default()), ("plain", plain)] {
        let model = open(&fx, opts);
        let rep = compare(&model, &r, None, Some(5), ParityOptions::default()).unwrap();
        eprint!("{name} f32 {label}:\n{}", rep.table());
        assert!(rep.ok(), "{name}: f32 parity ({label}) failed");
        let n = model.config().num_hidden_layers;
        assert_eq!(
            rep.tensors.len(),
            1 + 2 * n + n / 2,
            "{name}: every per-layer tensor compared"
        );
    }
}

/// `--dtype bf16` (bf16 dot products with f32 accumulation in the prefill-sized matmul calls, see
/// `MatmulPrecision::Bf16`) against the f32 reference with the bf16 bar: logits within
/// 3e-2·max|ref|, routes equal at ≥ 99% of positions, and argmax equal at ≥ 99% of the *decisive*
/// positions: those whose f32 top-two gap exceeds twice our largest logit error. Closer pairs are
/// ties at bf16 resolution (the wide fixture has two, with gaps of 5e-4·max|ref| that the fixture's own
/// bf16 reference also swaps); they are listed, and over all positions we must agree with the f32
/// argmax at least as often as that bf16 reference does. Per-layer states are printed
/// (informative). The fixture's bf16 reference is not the target: MLX's CPU quantized_matmul
/// accumulates in bf16 (≈10% relative error at in = 2048), 4–40% away from its f32 reference, while
/// our matmuls accumulate in f32; we check that we are at least as close to the f32 reference.
fn bf16_parity(name: &str) {
    let fx = common::fixture(name);
    let model = open(
        &fx,
        ModelOptions {
            dtype: Dtype::Bfloat16,
            ..Default::default()
        },
    );
    let r32 = load_ref(&fx.reference);
    let only = |r: &HashMap<String, Array>, keep: &dyn Fn(&str) -> bool| -> HashMap<String, Array> {
        r.iter()
            .filter(|(k, _)| keep(k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    };
    let informative = ParityOptions {
        rtol: 1.0,
        min_agreement: 0.0,
    };
    let full = compare(&model, &r32, None, None, informative).unwrap();
    eprint!("{name} bf16 vs the f32 reference (all tensors):\n{}", full.table());
    // routes ≥ 99%, logits within 3e-2 (their argmax is checked below)
    let routes = only(&r32, &|k| k == "token_ids" || k.starts_with("route."));
    let rep = compare(
        &model,
        &routes,
        None,
        None,
        ParityOptions {
            rtol: 3e-2,
            min_agreement: 0.99,
        },
    )
    .unwrap();
    eprint!("{name} bf16 bar (routes):\n{}", rep.table());
    assert!(rep.ok(), "{name}: bf16 routes vs the f32 reference");
    let ids = reference_tokens(&r32).unwrap();
    let ours = run_outputs(&model, &ids, false, None).unwrap();
    let v = model.config().vocab_size;
    let lo = model_support::to_vec_f32(&ours["logits"]);
    let l32 = model_support::to_vec_f32(&r32["logits"]);
    let (d, m) = model_support::max_diff(&lo, &l32);
    eprintln!("{name}: bf16 logits max|Δ| {d:.3e} = {:.2e}·max|ref|", d / m);
    assert!(d <= 3e-2 * m, "{name}: bf16 logits beyond 3e-2·max|ref|");
    let (a_ours, a_ref) = (model_support::argmax_rows(&lo, v), model_support::argmax_rows(&l32, v));
    let (mut decisive, mut agree_decisive, mut agree_all) = (0usize, 0usize, 0usize);
    for (p, row) in l32.chunks(v).enumerate() {
        let mut top = [f32::NEG_INFINITY; 2];
        for &x in row {
            if x > top[0] {
                top = [x, top[0]];
            } else if x > top[1] {
                top[1] = x;
            }
        }
        let same = a_ours[p] == a_ref[p];
        agree_all += same as usize;
        if top[0] - top[1] > 2.0 * d {
            decisive += 1;
            agree_decisive += same as usize;
        } else {
            eprintln!(
                "{name}: position {p}: f32 top-two gap {:.2e} ≤ 2·max|Δ| (a tie at bf16 resolution): argmax {}",
                top[0] - top[1],
                if same { "agrees" } else { "differs" }
            );
        }
    }
    eprintln!(
        "{name}: bf16 argmax agrees at {agree_decisive}/{decisive} decisive positions, {agree_all}/{} in all",
        a_ref.len()
    );
    assert!(decisive * 2 >= a_ref.len(), "{name}: most positions must be decisive");
    assert!(
        agree_decisive as f64 >= 0.99 * decisive as f64,
        "{name}: bf16 argmax at the decisive positions"
    );
    if let Some(p) = fx.reference_bf16() {
        let rb = load_ref(&p);
        let lb = model_support::to_vec_f32(&rb["logits"]);
        let (db, _) = model_support::max_diff(&lb, &l32);
        eprintln!(
            "{name}: bf16 logits vs f32 reference: ours {:.2e}, the bf16 reference's {:.2e}",
            d / m,
            db / m
        );
        assert!(
            d <= db,
            "{name}: our bf16 run should be at least as close to f32 as the bf16 reference"
        );
        let ref_agree = model_support::argmax_rows(&lb, v)
            .iter()
            .zip(&a_ref)
            .filter(|(a, b)| a == b)
            .count();
        assert!(
            agree_all >= ref_agree,
            "{name}: bf16 argmax agreement {agree_all} below the bf16 reference's {ref_agree}"
        );
        let rep = compare(
            &model,
            &only(&rb, &|k| k == "token_ids" || k == "logits"),
            None,
            None,
            informative,
        )
        .unwrap();
        eprint!("{name} bf16 vs the bf16 reference (informative):\n{}", rep.table());
    }
}

fn greedy(name: &str) {
    let fx = common::fixture(name);
    let model = open(&fx, ModelOptions::default());
    let r = load_ref(&fx.reference);
    let ids = reference_tokens(&r).unwrap();
    let want = model_support::to_vec_i32(&r["greedy_ids"]);
    let mut cache = model.new_cache();
    let mut logits = model.prefill(&ids, &mut cache, Some(5)).unwrap();
    let mut got = Vec::new();
    for _ in 0..want.len() {
        let t = model_support::argmax_rows(&model_support::to_vec_f32(&logits), model.config().vocab_size)[0] as i32;
        got.push(t);
        logits = model.decode_step(t as u32, &mut cache).unwrap();
    }
    assert_eq!(got, want, "{name}: greedy continuation");
}

#[test]
fn tiny_f32() {
    f32_parity("tiny");
}

#[test]
fn wide_f32() {
    f32_parity("wide");
}

#[test]
fn skip_f32() {
    f32_parity("skip");
}

#[test]
fn real_dims_f32_and_bf16() {
    f32_parity("real");
    bf16_parity("real");
}

#[test]
fn tiny_bf16() {
    bf16_parity("tiny");
}

#[test]
fn wide_bf16() {
    bf16_parity("wide");
}

#[test]
fn tiny_and_wide_greedy() {
    greedy("tiny");
    greedy("wide");
}

#[test]
fn skip_fixture_zero_variant_differs_and_counts() {
    let fx = common::fixture("skip");
    let r = load_ref(&fx.reference);
    let e = fx.config()["num_experts"].as_u64().unwrap() as i32;
    let skipped: usize = r
        .iter()
        .filter(|(k, _)| k.starts_with("route."))
        .map(|(_, v)| model_support::to_vec_i32(v).iter().filter(|&&x| x == e).count())
        .sum();
    assert!(skipped > 0, "the skip fixture routes some tokens to the skip route");
    let zero = open(
        &fx,
        ModelOptions {
            mod_skip: ModSkip::Zero,
            ..Default::default()
        },
    );
    let rep = compare(&zero, &r, None, None, ParityOptions::default()).unwrap();
    assert!(
        !rep.ok() && !rep.get("logits").unwrap().ok,
        "--mod-skip zero must differ from the p·x reference"
    );
    let px = open(&fx, ModelOptions::default());
    let mut c = px.new_cache();
    px.prefill(&reference_tokens(&r).unwrap(), &mut c, None).unwrap();
    assert_eq!(c.skip_counts().iter().sum::<u64>() as usize, skipped);
}
