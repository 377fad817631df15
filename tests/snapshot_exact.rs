//! Exact state snapshots on the jang-converted fixtures (`tiny`, `real` = the real per-layer
//! dimensions, `skip` = MOD-skip routes taken in the prompt): a cache saved to a prompt-cache file
//! and loaded again, a checkpoint truncated back to, and a recorded forward cut to any prefix all
//! continue exactly as the one-shot forward does — logits within 1e-5 relative of ours and within
//! 5e-4 of the Python MLX reference (`jang_tools.zaya.model`) at every suffix position, and the
//! same greedy tokens as the reference's continuation.
mod common;

use mlx_rs::ops::indexing::IndexOp;
use mlx_rs::{Array, Dtype};
use zaya_mlx::model::cache::ModelCache;
use zaya_mlx::model::{ForwardOptions, LogitsMode, ModelOptions, ZayaModel};
use zaya_mlx::runtime::prompt_cache::{self, PromptCacheRef};

fn ids(t: &common::Tensor) -> Vec<u32> {
    t.to_i64().into_iter().map(|v| v as u32).collect()
}

fn vec_f32(a: &Array) -> Vec<f32> {
    let a = a.as_dtype(Dtype::Float32).unwrap().contiguous().unwrap();
    a.eval().unwrap();
    a.as_slice::<f32>().to_vec()
}

fn assert_close(a: &[f32], b: &[f32], rel: f32, what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: length");
    let d = a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
    let m = b.iter().map(|y| y.abs()).fold(0f32, f32::max);
    assert!(d <= rel * m.max(1e-6), "{what}: max|Δ| {d} > {rel}·{m}");
}

/// All-position logits `[T·V]` of `tokens` fed after `cache`.
fn logits_all(model: &ZayaModel, tokens: &[u32], cache: &mut ModelCache) -> Vec<f32> {
    let out = model
        .forward_with(
            &Array::from_slice(tokens, &[1, tokens.len() as i32]),
            cache,
            ForwardOptions {
                logits: LogitsMode::All,
                capture: false,
                chunk: None,
            },
        )
        .unwrap();
    vec_f32(&out.logits.unwrap())
}

fn argmax(v: &[f32]) -> u32 {
    v.iter()
        .enumerate()
        .fold(
            (0, f32::NEG_INFINITY),
            |(bi, bv), (i, &x)| if x > bv { (i, x) } else { (bi, bv) },
        )
        .0 as u32
}

/// Greedy continuation of `n` tokens after `cache` whose next-position logits are `last`.
fn greedy(model: &ZayaModel, cache: &mut ModelCache, last: &[f32], n: usize) -> Vec<u32> {
    let mut out = vec![argmax(last)];
    while out.len() < n {
        let l = vec_f32(&model.decode_step(*out.last().unwrap(), cache).unwrap());
        out.push(argmax(&l));
    }
    out
}

fn check(name: &str) {
    let fx = common::fixture(name);
    let r = common::read_all(&fx.reference);
    let prompt = ids(&r["token_ids"]);
    let want_greedy = ids(&r["greedy_ids"]);
    let ref_logits = r["logits"].to_f32();
    let model = ZayaModel::load(&fx.bundle, ModelOptions::default()).unwrap();
    let v = model.config().vocab_size;
    let t = prompt.len();
    let split = t / 2;

    // one shot
    let mut c1 = model.new_cache();
    let one = logits_all(&model, &prompt, &mut c1);
    assert_close(&one, &ref_logits, 5e-4, &format!("{name}: one-shot vs reference"));

    // prefix → file → fresh process state → suffix
    let mut cp = model.new_cache();
    logits_all(&model, &prompt[..split], &mut cp);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("prefix.safetensors");
    prompt_cache::save(
        &file,
        &model,
        PromptCacheRef {
            cache: &cp,
            tokens: &prompt[..split],
            chat_template: None,
            session: None,
        },
        Some(&fx.bundle),
    )
    .unwrap();
    drop(cp);
    let loaded = prompt_cache::load(&file, &model).unwrap();
    assert_eq!(loaded.tokens, &prompt[..split]);
    let mut c2 = loaded.cache;
    assert_eq!(c2.offset(), split);
    let suffix = logits_all(&model, &prompt[split..], &mut c2);
    assert_close(
        &suffix,
        &one[split * v..],
        1e-5,
        &format!("{name}: file-restored suffix vs one-shot"),
    );
    assert_close(
        &suffix,
        &ref_logits[split * v..],
        5e-4,
        &format!("{name}: file-restored vs reference"),
    );
    let got = greedy(&model, &mut c2, &suffix[suffix.len() - v..], want_greedy.len());
    assert_eq!(got, want_greedy, "{name}: greedy after a file-restored prefix");

    // checkpoint, a detour of other tokens, truncate back, the real suffix
    let mut c3 = model.new_cache();
    logits_all(&model, &prompt[..split], &mut c3);
    let cp3 = c3.checkpoint();
    let detour: Vec<u32> = prompt[split..].iter().rev().copied().collect();
    logits_all(&model, &detour, &mut c3);
    c3.truncate_to(&cp3).unwrap();
    assert_eq!(c3.offset(), split);
    let again = logits_all(&model, &prompt[split..], &mut c3);
    assert_close(
        &again,
        &one[split * v..],
        1e-5,
        &format!("{name}: truncate_to suffix vs one-shot"),
    );

    // snapshot / restore
    let mut c4 = model.new_cache();
    logits_all(&model, &prompt[..split], &mut c4);
    let snap = c4.snapshot();
    logits_all(&model, &detour, &mut c4);
    c4.restore(&snap);
    let again = logits_all(&model, &prompt[split..], &mut c4);
    assert_close(
        &again,
        &one[split * v..],
        1e-5,
        &format!("{name}: restore suffix vs one-shot"),
    );
}

#[test]
fn tiny_restored_state_continues_exactly() {
    check("tiny");
}

#[test]
fn skip_restored_state_continues_exactly() {
    check("skip");
}

#[test]
fn real_dimensions_restored_state_continues_exactly() {
    check("real");
}

/// Verify chunks as speculative decoding runs them: `[t0, d1..dK]` with drafts that are all the
/// model's greedy tokens (all kept) or all wrong (only t0 kept), and every cut in between; the
/// state after the cut continues exactly like plain decoding.
fn check_recorded(name: &str) {
    let fx = common::fixture(name);
    let r = common::read_all(&fx.reference);
    let prompt = ids(&r["token_ids"]);
    let want = ids(&r["greedy_ids"]);
    let model = ZayaModel::load(&fx.bundle, ModelOptions::default()).unwrap();
    let v = model.config().vocab_size;
    let k = 5;
    // plain: prompt, then the greedy tokens one by one
    let mut base = model.new_cache();
    logits_all(&model, &prompt, &mut base);
    let cp = base.checkpoint();

    let verify = |drafts: &[u32], keep: usize| -> Vec<f32> {
        let mut c = base.clone();
        c.truncate_to(&cp).unwrap();
        let mut seq = vec![want[0]];
        seq.extend_from_slice(drafts);
        let l = vec_f32(&model.forward_recorded(&seq, &mut c).unwrap());
        assert_eq!(l.len(), seq.len() * v);
        c.keep_recorded(keep).unwrap();
        assert_eq!(c.offset(), prompt.len() + keep);
        // continue with the true greedy tokens and return the next logits
        let rest = &want[keep..keep + 3];
        let next = logits_all(&model, rest, &mut c);
        // every verify row up to the cut equals the reference's greedy choice
        for (i, &w) in want[1..keep].iter().enumerate() {
            assert_eq!(argmax(&l[i * v..(i + 1) * v]), w, "{name}: verify row {i}");
        }
        next
    };
    // plain reference of the same continuation
    let plain = |keep: usize| -> Vec<f32> {
        let mut c = base.clone();
        logits_all(&model, &want[..keep], &mut c);
        logits_all(&model, &want[keep..keep + 3], &mut c)
    };
    let right: Vec<u32> = want[1..=k].to_vec();
    let wrong: Vec<u32> = right.iter().map(|&t| (t + 1) % v as u32).collect();
    // all accepted: keep t0 + K drafts
    assert_close(
        &verify(&right, k + 1),
        &plain(k + 1),
        1e-5,
        &format!("{name}: all drafts kept"),
    );
    // all rejected: keep t0 only
    assert_close(
        &verify(&wrong, 1),
        &plain(1),
        1e-5,
        &format!("{name}: all drafts rejected"),
    );
    // every cut in between (the first j drafts right, then wrong)
    for j in 1..k {
        let mut mixed = right[..j].to_vec();
        mixed.extend_from_slice(&wrong[j..]);
        assert_close(
            &verify(&mixed, j + 1),
            &plain(j + 1),
            1e-5,
            &format!("{name}: {j} drafts kept"),
        );
    }
    // a recorded forward's state is kept whole when everything is accepted; a cut that is out of
    // range is an error and leaves the cache usable
    let mut c = base.clone();
    model.forward_recorded(&want[..2], &mut c).unwrap();
    assert!(c.keep_recorded(0).is_err());
    assert!(c.keep_recorded(3).is_err());
    c.keep_recorded(2).unwrap();
    assert!(c.keep_recorded(1).is_err(), "a recording is used once");
    let _ = c.attn(0).keys().unwrap().index((.., .., 0..1, ..));
}

#[test]
fn tiny_recorded_forward_cuts_exactly() {
    check_recorded("tiny");
}

#[test]
fn skip_recorded_forward_cuts_exactly() {
    check_recorded("skip");
}

#[test]
fn real_dimensions_recorded_forward_cuts_exactly() {
    check_recorded("real");
}
