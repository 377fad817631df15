//! Cache semantics: one-shot prefill, chunked prefill (chunks of 1, 3, 5) and token-by-token decode
//! give the same last logits (f32, 1e-5 relative) and the same conv_state / prev_hs / KV; the KV
//! storage grows in whole steps across several growth steps; a one-token prompt equals the
//! reference's first position; snapshots restore exactly; all-position logits of a chunked forward
//! equal the reference.
mod model_support;

use mlx_rs::Array;
use model_support::*;
use zaya_mlx::model::cache::ModelCache;
use zaya_mlx::model::{ForwardOptions, LogitsMode, ModelOptions, ZayaModel};

fn setup(kv_step: usize) -> (ZayaModel, Vec<u32>, std::collections::HashMap<String, Array>) {
    let dir = model_ref("tiny", "tq", 7);
    let r = load_st(&dir.join("reference.safetensors"));
    let model = build(
        &dir,
        ModelOptions {
            kv_step,
            ..ModelOptions::default()
        },
    );
    let ids = ref_tokens(&r);
    (model, ids, r)
}

fn assert_close(a: &[f32], b: &[f32], rel: f32, what: &str) {
    let (d, m) = max_diff(a, b);
    assert!(d <= rel * m.max(1e-6), "{what}: max|Δ| {d} > {rel}·{m}");
}

fn states(model: &ZayaModel, cache: &ModelCache) -> Vec<(String, Vec<f32>)> {
    let mut out = Vec::new();
    for n in (0..model.config().num_hidden_layers).step_by(2) {
        let a = cache.attn(n);
        out.push((format!("conv_state.{n}"), to_vec_f32(a.conv_state.as_ref().unwrap())));
        out.push((format!("prev_hs.{n}"), to_vec_f32(a.prev_hs.as_ref().unwrap())));
        out.push((format!("keys.{n}"), to_vec_f32(&a.keys().unwrap())));
        out.push((format!("values.{n}"), to_vec_f32(&a.values().unwrap())));
    }
    out
}

#[test]
fn chunked_prefill_and_decode_agree() {
    let (model, ids, r) = setup(256);
    let v = model.config().vocab_size;
    let mut c_full = model.new_cache();
    let full = to_vec_f32(&model.prefill(&ids, &mut c_full, Some(ids.len())).unwrap());
    // the one-shot result is the reference's last position
    let rl = to_vec_f32(&r["logits"]);
    assert_close(&full, &rl[(ids.len() - 1) * v..], 5e-4, "one-shot vs reference");
    let s_full = states(&model, &c_full);
    assert_eq!(c_full.offset(), ids.len());

    for chunk in [1usize, 3, 5] {
        let mut c = model.new_cache();
        let l = to_vec_f32(&model.prefill(&ids, &mut c, Some(chunk)).unwrap());
        assert_close(&l, &full, 1e-5, &format!("chunk {chunk} last logits"));
        for ((name, a), (_, b)) in states(&model, &c).iter().zip(&s_full) {
            assert_close(a, b, 1e-5, &format!("chunk {chunk} {name}"));
        }
        assert_eq!(c.offset(), ids.len());
    }

    // prompt prefill then token-by-token decode
    let mut c = model.new_cache();
    let mut last = to_vec_f32(&model.prefill(&ids[..4], &mut c, None).unwrap());
    assert_close(&last, &rl[3 * v..4 * v], 5e-4, "prefix of 4");
    for &t in &ids[4..] {
        last = to_vec_f32(&model.decode_step(t, &mut c).unwrap());
    }
    assert_close(&last, &full, 1e-5, "decode last logits");
    for ((name, a), (_, b)) in states(&model, &c).iter().zip(&s_full) {
        assert_close(a, b, 1e-5, &format!("decode {name}"));
    }
}

#[test]
fn kv_cache_grows_in_steps_across_several_growths() {
    let (model, ids, r) = setup(4);
    let v = model.config().vocab_size;
    let rl = to_vec_f32(&r["logits"]);
    let mut c = model.new_cache();
    assert_eq!(c.kv_step(), 4);
    let mut caps = Vec::new();
    for (i, &t) in ids.iter().enumerate() {
        let l = to_vec_f32(&model.decode_step(t, &mut c).unwrap());
        assert_close(&l, &rl[i * v..(i + 1) * v], 5e-4, &format!("decode position {i}"));
        let a = c.attn(0);
        assert_eq!(a.len(), i + 1);
        assert_eq!(
            a.capacity(),
            (i + 1).div_ceil(4) * 4,
            "capacity is a whole number of steps"
        );
        caps.push(a.capacity());
    }
    caps.dedup();
    assert!(caps.len() >= 4, "several growth steps: {caps:?}");
    // a chunk larger than one step grows in one go, to a multiple of the step
    let mut c2 = model.new_cache();
    model.prefill(&ids[..6], &mut c2, Some(6)).unwrap();
    assert_eq!(c2.attn(0).capacity(), 8);
    let l = to_vec_f32(&model.prefill(&ids[6..], &mut c2, Some(7)).unwrap());
    assert_eq!(c2.attn(0).capacity(), 16);
    assert_close(&l, &rl[(ids.len() - 1) * v..], 5e-4, "two big chunks");
}

#[test]
fn one_token_prompt_matches_reference_first_position() {
    let (model, ids, r) = setup(256);
    let v = model.config().vocab_size;
    let mut c = model.new_cache();
    let l = to_vec_f32(&model.prefill(&ids[..1], &mut c, None).unwrap());
    assert_close(&l, &to_vec_f32(&r["logits"])[..v], 5e-4, "one-token prompt");
    assert_eq!(c.offset(), 1);
}

#[test]
fn chunked_all_position_logits_match_reference() {
    let (model, ids, r) = setup(256);
    let mut c = model.new_cache();
    let out = model
        .forward_with(
            &Array::from_slice(&ids, &[1, ids.len() as i32]),
            &mut c,
            ForwardOptions {
                logits: LogitsMode::All,
                capture: true,
                chunk: Some(5),
            },
        )
        .unwrap();
    assert_close(
        &to_vec_f32(&out.logits.unwrap()),
        &to_vec_f32(&r["logits"]),
        5e-4,
        "chunked all logits",
    );
    let cap = out.capture.unwrap();
    for n in 0..model.config().num_hidden_layers {
        assert_close(
            &to_vec_f32(&cap.hidden[n]),
            &to_vec_f32(&r[&format!("hidden.{n}")]),
            5e-4,
            &format!("hidden.{n}"),
        );
    }
}

#[test]
fn snapshot_restore_and_reset() {
    let (model, ids, _) = setup(4);
    let mut c = model.new_cache();
    model.prefill(&ids[..7], &mut c, None).unwrap();
    let snap = c.snapshot();
    let a: Vec<Vec<f32>> = ids[7..]
        .iter()
        .map(|&t| to_vec_f32(&model.decode_step(t, &mut c).unwrap()))
        .collect();
    assert_eq!(c.offset(), ids.len());
    c.restore(&snap);
    assert_eq!(c.offset(), 7);
    let b: Vec<Vec<f32>> = ids[7..]
        .iter()
        .map(|&t| to_vec_f32(&model.decode_step(t, &mut c).unwrap()))
        .collect();
    assert_eq!(a, b, "decoding after restore repeats exactly");
    // the snapshot itself was not modified by decoding on the live cache
    assert_eq!(snap.offset(), 7);
    assert_eq!(snap.attn(0).len(), 7);
    c.reset();
    assert_eq!(c.offset(), 0);
    let mut fresh = model.new_cache();
    assert_eq!(
        to_vec_f32(&model.prefill(&ids[..3], &mut c, None).unwrap()),
        to_vec_f32(&model.prefill(&ids[..3], &mut fresh, None).unwrap())
    );
}

#[test]
fn batch_of_two_sequences_matches_single_runs() {
    let (model, ids, _) = setup(256);
    let v = model.config().vocab_size;
    let a = &ids[..6];
    let b: Vec<u32> = ids[6..12].to_vec();
    let mut flat = a.to_vec();
    flat.extend(&b);
    let mut c = model.new_cache();
    let out = model
        .forward_with(
            &Array::from_slice(&flat, &[2, 6]),
            &mut c,
            ForwardOptions {
                logits: LogitsMode::Last,
                capture: false,
                chunk: Some(4),
            },
        )
        .unwrap();
    let both = to_vec_f32(&out.logits.unwrap());
    let mut ca = model.new_cache();
    let la = to_vec_f32(&model.prefill(a, &mut ca, None).unwrap());
    let mut cb = model.new_cache();
    let lb = to_vec_f32(&model.prefill(&b, &mut cb, None).unwrap());
    assert_close(&both[..v], &la, 1e-5, "batch row 0");
    assert_close(&both[v..], &lb, 1e-5, "batch row 1");
}
