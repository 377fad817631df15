//! Typed errors for bad input (ids ≥ vocab, empty sequence, context overflow counting the cache
//! offset, batch mismatch, bad options, missing / unexpected / misshaped tensors), the MOD skip
//! route options and counters, and reduced-precision activations (bf16 / f16) against the f32
//! reference (relative bound 3e-2, argmax agreement ≥ 99% of positions).
mod model_support;

use mlx_rs::{Array, Dtype};
use model_support::*;
use zaya_mlx::model::moe::ExpertBackend;
use zaya_mlx::model::moe::ModSkip;
use zaya_mlx::model::{ForwardOptions, ModelOptions, ZayaModel};
use zaya_mlx::quant::linear::LinearBackend;
use zaya_mlx::ZayaError;

#[test]
fn bad_token_ids_are_typed_errors() {
    let dir = model_ref("tiny", "tq", 7);
    let model = build(&dir, ModelOptions::default());
    let v = model.config().vocab_size as u32;
    let mut c = model.new_cache();
    let e = model.prefill(&[2, v, 5], &mut c, None).unwrap_err();
    assert!(matches!(e, ZayaError::InvalidArgument(_)), "{e}");
    assert!(
        e.to_string().contains(&v.to_string()) && e.to_string().contains("position 1"),
        "{e}"
    );
    let e = model.prefill(&[], &mut c, None).unwrap_err();
    assert!(matches!(e, ZayaError::InvalidArgument(_)), "{e}");
    let e = model
        .forward(&Array::from_slice(&[3i32, -1], &[2]), &mut c)
        .unwrap_err();
    assert!(matches!(e, ZayaError::InvalidArgument(_)), "{e}");
    let e = model.forward(&Array::from_slice(&[3.0f32], &[1]), &mut c).unwrap_err();
    assert!(matches!(e, ZayaError::InvalidArgument(_)), "{e}");
    // a failed call leaves the cache untouched
    assert_eq!(c.offset(), 0);
    model.prefill(&[2, 3], &mut c, None).unwrap();
    assert_eq!(c.offset(), 2);
}

#[test]
fn context_overflow_counts_the_cache_offset() {
    let dir = model_ref("tiny", "tq", 7);
    let (mut cfg, w) = load_weights(&dir);
    cfg.max_position_embeddings = 8;
    let model = ZayaModel::from_weights(cfg, w, ModelOptions::default(), "test").unwrap();
    let mut c = model.new_cache();
    let e = model.prefill(&[2; 9], &mut c, None).unwrap_err();
    assert!(matches!(e, ZayaError::ContextOverflow { tokens: 9, limit: 8 }), "{e}");
    model.prefill(&[2; 6], &mut c, None).unwrap();
    model.decode_step(3, &mut c).unwrap();
    model.decode_step(3, &mut c).unwrap();
    let e = model.decode_step(3, &mut c).unwrap_err();
    assert!(matches!(e, ZayaError::ContextOverflow { tokens: 9, limit: 8 }), "{e}");
    assert_eq!(e.exit_code(), 2);
}

#[test]
fn batch_mismatch_and_bad_options_are_typed_errors() {
    let dir = model_ref("tiny", "tq", 7);
    let model = build(&dir, ModelOptions::default());
    let mut c = model.new_cache();
    model.prefill(&[2, 3], &mut c, None).unwrap();
    let e = model
        .forward(&Array::from_slice(&[2u32, 3, 4, 5], &[2, 2]), &mut c)
        .unwrap_err();
    assert!(matches!(e, ZayaError::InvalidArgument(_)), "{e}");
    let (cfg, w) = load_weights(&dir);
    let e = ZayaModel::from_weights(
        cfg,
        w,
        ModelOptions {
            dtype: Dtype::Int32,
            ..Default::default()
        },
        "t",
    )
    .unwrap_err();
    assert!(matches!(e, ZayaError::InvalidArgument(_)), "{e}");
    let e = model
        .forward_with(
            &Array::from_slice(&[2u32], &[1]),
            &mut c,
            ForwardOptions {
                chunk: Some(0),
                ..Default::default()
            },
        )
        .unwrap_err();
    assert!(matches!(e, ZayaError::InvalidArgument(_)), "{e}");
    assert!(!c.is_poisoned());
    // the dtype, the linear backend and the mlx-ext mode are fixed at build; the expert backend may change
    let mut m2 = build(&dir, ModelOptions::default());
    m2.set_options(ModelOptions {
        expert_backend: ExpertBackend::Plain,
        ..Default::default()
    })
    .unwrap();
    let e = m2
        .set_options(ModelOptions {
            dtype: Dtype::Bfloat16,
            ..Default::default()
        })
        .unwrap_err();
    assert!(matches!(e, ZayaError::InvalidArgument(_)), "{e}");
    let e = m2
        .set_options(ModelOptions {
            linear_backend: LinearBackend::Plain,
            ..Default::default()
        })
        .unwrap_err();
    assert!(matches!(e, ZayaError::InvalidArgument(_)), "{e}");
    // so is how the mlx-ext ops execute (the linears keep it)
    let e = m2
        .set_options(ModelOptions {
            ext_mode: zaya_mlx::ext::ExtMode::Portable,
            ..Default::default()
        })
        .unwrap_err();
    assert!(matches!(e, ZayaError::InvalidArgument(_)), "{e}");
    m2.set_options(ModelOptions {
        mod_skip: ModSkip::Zero,
        prefill_chunk: 3,
        ..Default::default()
    })
    .unwrap();
}

#[test]
fn missing_unexpected_and_misshaped_tensors_are_typed_errors() {
    let dir = model_ref("tiny", "tq", 7);
    let (cfg, mut w) = load_weights(&dir);
    w.tensors.remove("model.layers.2.self_attn.qkv.temp");
    let e = ZayaModel::from_weights(cfg, w, ModelOptions::default(), "t").unwrap_err();
    assert!(
        matches!(&e, ZayaError::MissingTensor { name, .. } if name == "model.layers.2.self_attn.qkv.temp"),
        "{e}"
    );

    let (cfg, mut w) = load_weights(&dir);
    w.tensors.insert("model.layers.0.bogus".into(), Array::from_f32(1.0));
    let e = ZayaModel::from_weights(cfg, w, ModelOptions::default(), "t").unwrap_err();
    assert!(
        matches!(&e, ZayaError::UnexpectedTensors { names } if names == &["model.layers.0.bogus".to_string()]),
        "{e}"
    );

    let (cfg, mut w) = load_weights(&dir);
    w.tensors
        .insert("model.final_norm.weight".into(), Array::from_slice(&[1f32; 3], &[3]));
    let e = ZayaModel::from_weights(cfg, w, ModelOptions::default(), "t").unwrap_err();
    assert!(
        matches!(&e, ZayaError::Shape { name, .. } if name == "model.final_norm.weight"),
        "{e}"
    );

    let (cfg, mut w) = load_weights(&dir);
    w.tq_runtime.clear();
    let e = ZayaModel::from_weights(cfg, w, ModelOptions::default(), "t").unwrap_err();
    assert!(
        matches!(&e, ZayaError::MissingSidecar(m) if m.contains("codebook.64.4")),
        "{e}"
    );
}

#[test]
fn every_tensor_maps_to_a_module_parameter() {
    use mlx_rs::module::ModuleParameters;
    for (p, f) in [("tiny", "tq"), ("tiny", "affine"), ("kv4", "float")] {
        let dir = model_ref(p, f, if p == "kv4" { 8 } else { 7 });
        let (_, w) = load_weights(&dir);
        let mut names: Vec<String> = w.tensors.keys().cloned().collect();
        names.sort();
        let model = build(&dir, ModelOptions::default());
        let mut params: Vec<String> = model.parameters().flatten().keys().map(|k| k.to_string()).collect();
        params.sort();
        assert_eq!(params, names, "{p}/{f}: parameter names are the bundle's tensor names");
    }
}

#[test]
fn skip_route_options_and_counts() {
    let dir = model_ref("skip", "float", 9);
    let r = load_st(&dir.join("reference.safetensors"));
    let ids = ref_tokens(&r);
    let rl = to_vec_f32(&r["logits"]);
    let expected: Vec<u64> = (0..6)
        .map(|n| {
            if n % 2 == 1 {
                to_vec_i32(&r[&format!("route.{n}")])
                    .iter()
                    .filter(|&&x| x == 4)
                    .count() as u64
            } else {
                0
            }
        })
        .collect();
    assert!(
        expected[3] > 0 && (expected[3] as usize) < ids.len(),
        "fixture sanity: some but not all tokens skip in layer 3"
    );

    let px = build(&dir, ModelOptions::default());
    let mut c = px.new_cache();
    let l = to_vec_f32(
        &px.forward(&Array::from_slice(&ids, &[ids.len() as i32]), &mut c)
            .unwrap(),
    );
    let (d, m) = max_diff(&l, &rl);
    assert!(d <= 5e-4 * m, "p·x: {d} vs {m}");
    assert_eq!(c.skip_counts(), &expected[..]);
    assert_eq!(c.routed_counts()[3], ids.len() as u64);

    let zero = build(
        &dir,
        ModelOptions {
            mod_skip: ModSkip::Zero,
            ..Default::default()
        },
    );
    let mut c = zero.new_cache();
    let lz = to_vec_f32(
        &zero
            .forward(&Array::from_slice(&ids, &[ids.len() as i32]), &mut c)
            .unwrap(),
    );
    let (d, m) = max_diff(&lz, &rl);
    assert!(d > 1e-2 * m, "zero skip must differ from p·x: {d} vs {m}");
    // positions before the first skip are unaffected by the skip semantics
    let v = px.config().vocab_size;
    let first_skip = (1..6)
        .step_by(2)
        .map(|n| {
            to_vec_i32(&r[&format!("route.{n}")])
                .iter()
                .position(|&x| x == 4)
                .unwrap_or(ids.len())
        })
        .min()
        .unwrap();
    if first_skip > 0 {
        let (d, m) = max_diff(&lz[..first_skip * v], &rl[..first_skip * v]);
        assert!(d <= 5e-4 * m, "before the first skip: {d} vs {m}");
    }
}

fn reduced_precision(dtype: Dtype) {
    for (p, f, seed) in [("tiny", "tq", 7u64), ("kv4", "tq", 8), ("tiny", "affine", 7)] {
        let dir = model_ref(p, f, seed);
        let r = load_st(&dir.join("reference.safetensors"));
        let ids = ref_tokens(&r);
        let model = build(
            &dir,
            ModelOptions {
                dtype,
                ..Default::default()
            },
        );
        let mut c = model.new_cache();
        let l = to_vec_f32(
            &model
                .forward(&Array::from_slice(&ids, &[ids.len() as i32]), &mut c)
                .unwrap(),
        );
        let rl = to_vec_f32(&r["logits"]);
        let (d, m) = max_diff(&l, &rl);
        eprintln!("{dtype:?} {p}/{f}: logits max|Δ| {d:.3e} = {:.2e}·max|ref|", d / m);
        assert!(d <= 3e-2 * m, "{dtype:?} {p}/{f}: {d} > 3e-2·{m}");
        let v = model.config().vocab_size;
        let agree = argmax_rows(&l, v)
            .iter()
            .zip(argmax_rows(&rl, v))
            .filter(|(a, b)| **a == *b)
            .count();
        assert!(
            agree as f64 >= 0.99 * ids.len() as f64,
            "{dtype:?} {p}/{f}: argmax agreement {agree}/{}",
            ids.len()
        );
    }
}

#[test]
fn bf16_activations_within_bound_of_f32_reference() {
    reduced_precision(Dtype::Bfloat16);
}

#[test]
fn f16_activations_within_bound_of_f32_reference() {
    reduced_precision(Dtype::Float16);
}
