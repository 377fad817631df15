//! Continuous batching: every row of a ragged batch computes what its sequence computes alone.
//!
//! - On the jang-converted fixtures (tiny, skip = MOD-skip routes, real dimensions): nine sequences
//!   of different prompt lengths join and leave the batch at different steps, one is cancelled
//!   midway; each step's logits of every row are within 1e-5 (relative to the row's largest logit)
//!   of the same sequence decoded alone, the greedy ids are identical, and the fixture's own prompt
//!   reproduces the Python reference's greedy continuation inside the batch.
//! - The primitives' portable graphs (plain MLX ops) give the same rows.
//! - A batched step's graph has the same nodes whatever the number of rows.
//! - The engine: seeded sampling in a batch = the same request alone through a session; bad
//!   requests fail alone; cancellation frees the row at once.
mod common;

use mlx_rs::ops::indexing::IndexOp;
use mlx_rs::Array;
use zaya_mlx::ext::ExtMode;
use zaya_mlx::model::{ModelOptions, ZayaModel};
use zaya_mlx::runtime::engine::{batch_generate, BatchCache, Engine, EngineOptions, SeqEvent};
use zaya_mlx::runtime::sampling::SamplingParams;
use zaya_mlx::runtime::{FinishReason, GenParams, Zaya};
use zaya_mlx::tools::synth::{write_bundle, SynthOptions, SynthSpec};

fn ids(t: &common::Tensor) -> Vec<u32> {
    t.to_i64().into_iter().map(|v| v as u32).collect()
}

fn row(a: &Array) -> Vec<f32> {
    a.as_slice::<f32>().to_vec()
}

fn argmax(v: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best as u32
}

/// max |a - b| / max |b|
fn rel_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(0f32, |m, x| m.max(x.abs())).max(1e-6);
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale
}

/// Prompt `i`: a rotation of the fixture prompt, truncated to a length that differs per sequence.
fn prompt_of(base: &[u32], i: usize) -> Vec<u32> {
    let len = 1 + (i * 5 + 3) % base.len();
    (0..len).map(|j| base[(j + i * 3) % base.len()]).collect()
}

/// Greedy decoding of one sequence alone: the logits of each of `steps` positions after the
/// prompt, and the ids.
fn alone(model: &ZayaModel, prompt: &[u32], steps: usize) -> (Vec<Vec<f32>>, Vec<u32>) {
    let mut cache = model.new_cache();
    let mut l = row(&model.prefill(prompt, &mut cache, None).unwrap());
    let (mut logits, mut out) = (Vec::new(), Vec::new());
    for _ in 0..steps {
        let t = argmax(&l);
        logits.push(l);
        out.push(t);
        l = row(&model.decode_step(t, &mut cache).unwrap());
    }
    (logits, out)
}

/// One planned sequence of the batch test.
struct Plan {
    prompt: Vec<u32>,
    join_at: usize,
    steps: usize,
    /// Cancelled (removed without finishing) after this many steps.
    cancel_after: Option<usize>,
}

struct Live {
    plan: usize,
    next: u32,
    done: usize,
}

fn check_batch(name: &str, mode: ExtMode) {
    let fx = common::fixture(name);
    let r = common::read_all(&fx.reference);
    let base = ids(&r["token_ids"]);
    let want = ids(&r["greedy_ids"]);
    let model = ZayaModel::load(&fx.bundle, ModelOptions::default()).unwrap();
    assert!(model.supports_batching());
    let mut plans: Vec<Plan> = (0..8)
        .map(|i| Plan {
            prompt: prompt_of(&base, i),
            join_at: [0, 0, 1, 3, 4, 4, 7, 9][i],
            steps: [12, 5, 9, 14, 3, 10, 6, 8][i],
            cancel_after: (i == 5).then_some(4),
        })
        .collect();
    // the fixture's own prompt, whose greedy continuation the Python reference computed
    plans.push(Plan {
        prompt: base.clone(),
        join_at: 2,
        steps: want.len(),
        cancel_after: None,
    });
    let expected: Vec<(Vec<Vec<f32>>, Vec<u32>)> = plans.iter().map(|p| alone(&model, &p.prompt, p.steps)).collect();
    assert_eq!(
        expected[8].1, want,
        "{name}: single-sequence greedy differs from the reference"
    );

    let mut batch = BatchCache::new(model.config(), 16); // a small KV step: storage grows mid-test
    let mut live: Vec<Live> = Vec::new();
    let mut got: Vec<Vec<u32>> = vec![Vec::new(); plans.len()];
    let mut max_rows = 0;
    let last_join = plans.iter().map(|p| p.join_at).max().unwrap();
    for step in 0.. {
        if step > last_join && live.is_empty() {
            break;
        }
        // joins: prefill alone, sample the first token, insert
        for (i, p) in plans.iter().enumerate() {
            if p.join_at == step {
                let mut cache = model.new_cache();
                let l = row(&model.prefill(&p.prompt, &mut cache, None).unwrap());
                assert!(rel_diff(&l, &expected[i].0[0]) <= 1e-5);
                let t = argmax(&l);
                got[i].push(t);
                assert_eq!(batch.insert(&cache).unwrap(), live.len());
                live.push(Live {
                    plan: i,
                    next: t,
                    done: 1,
                });
            }
        }
        if live.is_empty() {
            continue;
        }
        max_rows = max_rows.max(live.len());
        let tokens: Vec<u32> = live.iter().map(|l| l.next).collect();
        let out = model.decode_batch_with(&tokens, &mut batch, false, mode).unwrap();
        assert_eq!(
            out.logits.shape(),
            &[live.len() as i32, model.config().vocab_size as i32]
        );
        for (b, l) in live.iter_mut().enumerate() {
            let lg = row(&out.logits.index(b as i32..b as i32 + 1));
            let e = &expected[l.plan];
            let d = rel_diff(&lg, &e.0[l.done]);
            assert!(
                d <= 1e-5,
                "{name}: sequence {} step {}: logits differ by {d:e}",
                l.plan,
                l.done
            );
            l.next = argmax(&lg);
            got[l.plan].push(l.next);
            l.done += 1;
        }
        // leaves: finished or cancelled, highest rows first
        for b in (0..live.len()).rev() {
            let p = &plans[live[b].plan];
            if live[b].done == p.steps || p.cancel_after == Some(live[b].done) {
                let moved = batch.swap_remove(b).unwrap();
                live.swap_remove(b);
                assert_eq!(moved.is_some(), b < live.len());
            }
        }
        assert_eq!(batch.len(), live.len());
    }
    assert!(max_rows >= 6, "{name}: only {max_rows} sequences ever ran together");
    for (i, p) in plans.iter().enumerate() {
        let n = p.cancel_after.unwrap_or(p.steps);
        assert_eq!(got[i], expected[i].1[..n], "{name}: sequence {i}: greedy ids differ");
    }
    assert_eq!(
        got[8], want,
        "{name}: the batch's greedy continuation differs from the reference"
    );
}

#[test]
fn batched_rows_equal_single_sequences_tiny() {
    check_batch("tiny", ExtMode::Auto);
}

#[test]
fn batched_rows_equal_single_sequences_mod_skip() {
    check_batch("skip", ExtMode::Auto);
}

#[test]
fn batched_rows_equal_single_sequences_real_dimensions() {
    check_batch("real", ExtMode::Auto);
}

#[test]
fn batched_portable_graphs_equal_single_sequences() {
    check_batch("tiny", ExtMode::Portable);
}

#[test]
fn extracted_row_state_continues_like_the_sequence_alone() {
    let fx = common::fixture("tiny");
    let model = ZayaModel::load(&fx.bundle, ModelOptions::default()).unwrap();
    let base = ids(&common::read_all(&fx.reference)["token_ids"]);
    let (pa, pb) = (prompt_of(&base, 1), prompt_of(&base, 4));
    let (ea, _) = alone(&model, &pa, 6);
    let mut batch = BatchCache::new(model.config(), 256);
    for p in [&pa, &pb] {
        let mut c = model.new_cache();
        model.prefill(p, &mut c, None).unwrap();
        batch.insert(&c).unwrap();
    }
    let mut next = vec![argmax(&ea[0]), 7];
    for _ in 0..3 {
        let out = model.decode_batch(&next, &mut batch, false).unwrap();
        next = (0..2).map(|b| argmax(&row(&out.logits.index(b..b + 1)))).collect();
    }
    // row 0 out of the batch, then on alone: the same logits as never batched
    let mut state = batch.extract(0, model.config()).unwrap();
    assert_eq!(state.offset(), pa.len() + 3);
    let l = row(&model.decode_step(next[0], &mut state).unwrap());
    assert!(rel_diff(&l, &ea[4]) <= 1e-5);
}

#[test]
fn batched_step_graph_does_not_grow_with_rows() {
    let fx = common::fixture("tiny");
    let model = ZayaModel::load(&fx.bundle, ModelOptions::default()).unwrap();
    let mut totals = Vec::new();
    for n in [1usize, 3, 7] {
        let mut batch = BatchCache::new(model.config(), 256);
        for i in 0..n {
            let mut c = model.new_cache();
            model.prefill(&[1, 2, 3, (i + 4) as u32], &mut c, None).unwrap();
            batch.insert(&c).unwrap();
            batch.eval().unwrap(); // so the graph counted below is only the step's
        }
        let (total, hist) = model.decode_batch_graph(&vec![5u32; n], &batch).unwrap();
        let count = |name: &str| hist.iter().find(|(k, _)| k == name).map_or(0, |(_, c)| *c);
        let attn = model.config().num_attention_layers() as i64;
        assert_eq!(count("ZayaCcaAttention"), attn, "{hist:?}");
        assert_eq!(count("ZayaCcaQk"), attn, "{hist:?}");
        assert_eq!(count("ZayaKvAppendRows"), 2 * attn, "{hist:?}");
        assert!(count("ZayaTqSwitchGlu") > 0, "{hist:?}");
        totals.push(total);
    }
    assert!(
        totals.windows(2).all(|w| w[0] == w[1]),
        "graph nodes per step by rows 1, 3, 7: {totals:?}"
    );
}

/// A tiny synthetic bundle with a tokenizer and chat template, loaded.
fn tiny_synth() -> (tempfile::TempDir, Zaya) {
    let dir = tempfile::tempdir().unwrap();
    write_bundle(
        &SynthSpec::preset("tiny").unwrap(),
        dir.path(),
        &SynthOptions::default(),
    )
    .unwrap();
    let zaya = Zaya::load(dir.path(), ModelOptions::default()).unwrap();
    (dir, zaya)
}

fn sampled(seed: u64, max_tokens: usize) -> GenParams {
    GenParams {
        max_tokens: Some(max_tokens),
        ignore_eos: true,
        sampling: SamplingParams {
            temperature: 0.9,
            top_p: 0.95,
            seed: Some(seed),
            ..SamplingParams::default()
        },
        ..GenParams::default()
    }
}

#[test]
fn seeded_sampling_in_a_batch_equals_the_request_alone() {
    let (_dir, zaya) = tiny_synth();
    let tok = zaya.tokenizer().unwrap();
    let prompts: Vec<Vec<u32>> = [
        "Hello there",
        "A much longer prompt about the weather today",
        "x",
        "Count: 1 2 3 4 5 6",
    ]
    .iter()
    .map(|p| tok.encode(p, true).unwrap())
    .collect();
    let params: Vec<GenParams> = (0..prompts.len()).map(|i| sampled(100 + i as u64, 12 + i)).collect();
    // alone: the single-stream session path
    let alone: Vec<Vec<u32>> = prompts
        .iter()
        .zip(&params)
        .map(|(p, gp)| {
            let mut s = zaya.session();
            s.generate_from_tokens(p, gp).unwrap().map(|t| t.unwrap().id).collect()
        })
        .collect();
    let mut engine = Engine::new(&zaya, EngineOptions::default()).unwrap();
    let handles: Vec<_> = prompts
        .iter()
        .zip(&params)
        .map(|(p, gp)| engine.submit(p.clone(), gp).unwrap())
        .collect();
    let mut got = vec![Vec::new(); prompts.len()];
    let mut finished = vec![None; prompts.len()];
    engine.run_to_completion(|id, ev| {
        let i = handles.iter().position(|h| *h == id).unwrap();
        match ev {
            SeqEvent::Token { token: t, .. } => {
                got[i].push(t.id);
                if t.finish.is_some() {
                    finished[i] = t.finish;
                }
            }
            SeqEvent::Finished { stats: s, .. } => assert_eq!(s.generated_tokens, got[i].len()),
            SeqEvent::Failed(e) => panic!("request {i} failed: {e}"),
            SeqEvent::Snapshot { .. } => {}
        }
    });
    assert_eq!(got, alone);
    assert!(finished.iter().all(|f| *f == Some(FinishReason::MaxTokens)));
}

#[test]
fn batch_generate_returns_results_in_prompt_order_and_isolates_failures() {
    let (_dir, zaya) = tiny_synth();
    let tok = zaya.tokenizer().unwrap();
    let ctx = zaya.max_context();
    let ok_a = tok.encode("first prompt", true).unwrap();
    let ok_b = tok.encode("second, rather different prompt", true).unwrap();
    let too_long = vec![1u32; ctx];
    let params = GenParams {
        max_tokens: Some(6),
        ignore_eos: true,
        ..GenParams::default()
    };
    let want_a: Vec<u32> = zaya
        .session()
        .generate_from_tokens(&ok_a, &params)
        .unwrap()
        .map(|t| t.unwrap().id)
        .collect();
    let want_b: Vec<u32> = zaya
        .session()
        .generate_from_tokens(&ok_b, &params)
        .unwrap()
        .map(|t| t.unwrap().id)
        .collect();
    let outs = batch_generate(
        &zaya,
        &[ok_a, too_long, ok_b, vec![]],
        &params,
        EngineOptions::default(),
    )
    .unwrap();
    assert_eq!(outs[0].tokens, want_a);
    assert_eq!(outs[2].tokens, want_b);
    assert_eq!(outs[0].finish, Some(FinishReason::MaxTokens));
    assert!(outs[0].stats.as_ref().is_some_and(|s| s.generated_tokens == 6));
    let e1 = outs[1].error.as_ref().expect("over the context");
    assert!(e1.to_string().contains("context"), "{e1}");
    assert_eq!(e1.exit_code(), 2);
    assert!(outs[3].error.is_some());
    assert!(outs[1].tokens.is_empty() && outs[3].tokens.is_empty());
}

#[test]
fn engine_rejects_bad_requests_and_cancels_without_harming_others() {
    let (_dir, zaya) = tiny_synth();
    let tok = zaya.tokenizer().unwrap();
    let p = tok.encode("a prompt to keep going", true).unwrap();
    let params = GenParams {
        max_tokens: Some(10),
        ignore_eos: true,
        ..GenParams::default()
    };
    let want: Vec<u32> = zaya
        .session()
        .generate_from_tokens(&p, &params)
        .unwrap()
        .map(|t| t.unwrap().id)
        .collect();
    let mut engine = Engine::new(
        &zaya,
        EngineOptions {
            max_batch: 4,
            prefill_chunk: Some(3),
        },
    )
    .unwrap();
    // invalid sampling values and out-of-vocabulary ids: typed errors, nothing queued
    let bad = GenParams {
        sampling: SamplingParams {
            temperature: -1.0,
            ..SamplingParams::default()
        },
        ..params.clone()
    };
    assert_eq!(engine.submit(p.clone(), &bad).unwrap_err().exit_code(), 2);
    assert!(engine.submit(vec![u32::MAX], &params).is_err());
    assert!(engine.is_idle());
    let keep = engine.submit(p.clone(), &params).unwrap();
    let victim = engine.submit(p.clone(), &params).unwrap();
    let waiting = engine.submit(p.clone(), &params).unwrap();
    assert!(engine.cancel(waiting).is_ok()); // cancelled while queued
    let mut got = Vec::new();
    let mut victim_tokens = 0;
    while !engine.is_idle() {
        for (id, ev) in engine.step() {
            match ev {
                SeqEvent::Token { token: t, .. } if id == keep => got.push(t.id),
                SeqEvent::Token { .. } if id == victim => victim_tokens += 1,
                SeqEvent::Failed(e) => panic!("{id} failed: {e}"),
                _ => {}
            }
        }
        if victim_tokens == 3 && engine.running_ids().contains(&victim) {
            engine.cancel(victim).unwrap();
            assert_eq!(engine.running_ids(), vec![keep], "the slot is freed at once");
        }
    }
    assert_eq!(victim_tokens, 3);
    assert_eq!(got, want);
    // a handle that is gone
    let e = engine.cancel(victim).unwrap_err();
    assert!(e.to_string().contains("not waiting or running"), "{e}");
    assert!(engine.cancel(waiting).is_err());
}

#[test]
fn options_without_batched_kernels_decode_in_turn_with_the_same_results() {
    let dir = tempfile::tempdir().unwrap();
    write_bundle(
        &SynthSpec::preset("tiny").unwrap(),
        dir.path(),
        &SynthOptions::default(),
    )
    .unwrap();
    // the plain-ops configuration has no ragged-batch primitives: the engine decodes each sequence alone
    let opts = ModelOptions {
        fused_layers: false,
        ..ModelOptions::default()
    };
    let zaya = Zaya::load(dir.path(), opts).unwrap();
    assert!(!zaya.model().supports_batching());
    let tok = zaya.tokenizer().unwrap();
    let prompts: Vec<Vec<u32>> = ["alpha", "beta gamma", "delta epsilon zeta"]
        .iter()
        .map(|p| tok.encode(p, true).unwrap())
        .collect();
    let params: Vec<GenParams> = (0..3).map(|i| sampled(40 + i as u64, 7)).collect();
    let want: Vec<Vec<u32>> = prompts
        .iter()
        .zip(&params)
        .map(|(p, gp)| {
            zaya.session()
                .generate_from_tokens(p, gp)
                .unwrap()
                .map(|t| t.unwrap().id)
                .collect()
        })
        .collect();
    let mut engine = Engine::new(&zaya, EngineOptions::default()).unwrap();
    let ids: Vec<_> = prompts
        .iter()
        .zip(&params)
        .map(|(p, gp)| engine.submit(p.clone(), gp).unwrap())
        .collect();
    let mut got = vec![Vec::new(); 3];
    engine.run_to_completion(|id, ev| {
        if let SeqEvent::Token { token, .. } = ev {
            got[ids.iter().position(|i| *i == id).unwrap()].push(token.id);
        }
    });
    assert_eq!(got, want);
    // and decode_batch itself refuses these options with a typed error
    let mut b = BatchCache::new(zaya.model().config(), 256);
    assert!(zaya.model().decode_batch(&[1], &mut b, false).is_err());
}
