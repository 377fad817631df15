//! Speculative decoding with n-gram drafts: greedy output equals the Python reference's greedy
//! continuation on the jang-converted fixtures (tiny, skip = MOD-skip routes, real dimensions) and
//! plain decoding on a synthetic bundle with a tokenizer, through the chat template and stop
//! conditions; the session state afterwards is the plain one. The acceptance rule for sampling
//! keeps the target distribution (a chi-square test on small vocabularies, the rule alone and
//! through the sampler's whole pipeline).
mod common;

use mlx_rs::Array;
use rand::{Rng, SeedableRng};
use zaya_mlx::model::ModelOptions;
use zaya_mlx::runtime::sampling::{Sampler, SamplingParams};
use zaya_mlx::runtime::speculative::{accept_draft, DraftParams};
use zaya_mlx::runtime::{FinishReason, GenParams, Zaya};
use zaya_mlx::tools::synth::{write_bundle, SynthOptions, SynthSpec};

fn ids(t: &common::Tensor) -> Vec<u32> {
    t.to_i64().into_iter().map(|v| v as u32).collect()
}

fn draft(k: usize) -> Option<DraftParams> {
    Some(DraftParams {
        num_draft_tokens: k,
        ..DraftParams::default()
    })
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

fn check_fixture(name: &str) {
    let fx = common::fixture(name);
    let r = common::read_all(&fx.reference);
    // the prompt followed by its own greedy continuation's first half: the continuation's later
    // tokens then have earlier n-gram matches, some right and some wrong
    let prompt = ids(&r["token_ids"]);
    let want = ids(&r["greedy_ids"]);
    let zaya = Zaya::load(&fx.bundle, ModelOptions::default()).unwrap();
    for k in [1usize, 3, 8] {
        let mut session = zaya.session();
        let params = GenParams {
            max_tokens: Some(want.len()),
            ignore_eos: true,
            draft: draft(k),
            ..GenParams::default()
        };
        let mut gen = session.generate_from_tokens(&prompt, &params).unwrap();
        let steps: Vec<_> = gen.by_ref().map(|s| s.unwrap()).collect();
        let got: Vec<u32> = steps.iter().map(|s| s.id).collect();
        assert_eq!(
            got, want,
            "{name}, K={k}: speculative greedy differs from the reference"
        );
        assert!(steps[..steps.len() - 1].iter().all(|s| s.finish.is_none()));
        assert_eq!(steps.last().unwrap().finish, Some(FinishReason::MaxTokens));
        let st = gen.stats();
        assert!(
            st.draft.steps > 0 && st.draft.drafted > 0,
            "{name}, K={k}: nothing drafted: {:?}",
            st.draft
        );
        assert!(st.draft.accepted <= st.draft.drafted);
        drop(gen);
        // the session holds exactly what plain decoding leaves: every token but the last
        assert_eq!(session.offset(), prompt.len() + want.len() - 1, "{name}, K={k}");
        assert_eq!(&session.tokens()[prompt.len()..], &want[..want.len() - 1]);
        assert_eq!(session.pending_token(), Some(*want.last().unwrap()));
        // and the cache continues like plain decoding: one more greedy step from the session
        let next_spec = {
            let mut g = session
                .generate_from_tokens(
                    &[],
                    &GenParams {
                        max_tokens: Some(4),
                        ignore_eos: true,
                        ..GenParams::default()
                    },
                )
                .unwrap();
            g.by_ref().map(|s| s.unwrap().id).collect::<Vec<_>>()
        };
        let mut plain = zaya.session();
        let mut all = prompt.clone();
        all.extend_from_slice(&want);
        let next_plain: Vec<u32> = plain
            .generate_from_tokens(
                &all,
                &GenParams {
                    max_tokens: Some(4),
                    ignore_eos: true,
                    ..GenParams::default()
                },
            )
            .unwrap()
            .map(|s| s.unwrap().id)
            .collect();
        assert_eq!(next_spec, next_plain, "{name}, K={k}: state after speculative decoding");
    }
}

#[test]
fn tiny_speculative_greedy_equals_reference() {
    check_fixture("tiny");
}

#[test]
fn skip_speculative_greedy_equals_reference() {
    check_fixture("skip");
}

#[test]
fn real_dimensions_speculative_greedy_equals_reference() {
    check_fixture("real");
}

/// Chat turns with a tokenizer and template: text, tokens, finish reasons and the next turn equal
/// plain decoding, with a prompt whose continuation repeats (high acceptance) and with stop strings
/// and token limits that end a generation inside an accepted run of drafts.
#[test]
fn chat_with_drafts_equals_plain() {
    let (_dir, zaya) = tiny_synth();
    let prompt = "one two three four one two three four one two three four one two";
    let run = |d: Option<DraftParams>, max: usize, stop: Vec<String>| {
        let mut s = zaya.session();
        let p = GenParams {
            max_tokens: Some(max),
            draft: d,
            stop,
            ..GenParams::default()
        };
        let mut g = s.chat(prompt, &p).unwrap();
        let steps: Vec<_> = g.by_ref().map(|x| x.unwrap()).collect();
        let stats = g.stats();
        drop(g);
        let (t2, _) = s
            .chat(
                "again",
                &GenParams {
                    max_tokens: Some(6),
                    draft: d,
                    ..GenParams::default()
                },
            )
            .unwrap()
            .collect_text()
            .unwrap();
        let ids: Vec<u32> = steps.iter().map(|x| x.id).collect();
        let text: String = steps.iter().map(|x| x.text.as_str()).collect();
        let fin = steps.last().and_then(|x| x.finish.clone());
        (ids, text, fin, t2, s.tokens().to_vec(), s.messages().to_vec(), stats)
    };
    let plain = run(None, 40, vec![]);
    for k in [2usize, 4, 8] {
        let spec = run(draft(k), 40, vec![]);
        assert_eq!(spec.0, plain.0, "K={k}: ids");
        assert_eq!(spec.1, plain.1, "K={k}: text");
        assert_eq!(spec.2, plain.2, "K={k}: finish");
        assert_eq!(spec.3, plain.3, "K={k}: the next turn");
        assert_eq!(spec.4, plain.4, "K={k}: session tokens");
        assert_eq!(spec.5, plain.5, "K={k}: messages");
        assert!(
            spec.6.draft.accepted > 0,
            "K={k}: no draft accepted: {:?}",
            spec.6.draft
        );
    }
    // a token limit and a stop string that fall inside a draft run
    for max in [3usize, 7, 13] {
        assert_eq!(
            run(draft(8), max, vec![]).0,
            run(None, max, vec![]).0,
            "max_tokens {max}"
        );
    }
    let stop_at: String = plain.1.chars().skip(plain.1.chars().count() / 2).take(3).collect();
    if !stop_at.trim().is_empty() {
        let a = run(draft(8), 40, vec![stop_at.clone()]);
        let b = run(None, 40, vec![stop_at.clone()]);
        assert_eq!((a.0, a.1, a.2, a.4), (b.0, b.1, b.2, b.4), "stop string {stop_at:?}");
    }
}

/// Pearson chi-square of `counts` against probabilities `p` (cells with p = 0 must be empty).
fn chi_square(counts: &[u64], p: &[f64]) -> (f64, usize) {
    let n: u64 = counts.iter().sum();
    let mut x2 = 0.0;
    let mut dof = 0usize;
    for (&c, &pi) in counts.iter().zip(p) {
        if pi == 0.0 {
            assert_eq!(c, 0, "a token of probability 0 was produced");
            continue;
        }
        let e = n as f64 * pi;
        x2 += (c as f64 - e).powi(2) / e;
        dof += 1;
    }
    (x2, dof.saturating_sub(1))
}

/// Upper 1e-6 quantile of chi-square with `dof` ≤ 7 degrees of freedom (tables).
fn critical(dof: usize) -> f64 {
    [0.0, 23.93, 27.63, 30.66, 33.38, 35.89, 38.26, 40.52][dof]
}

#[test]
fn acceptance_rule_keeps_the_distribution() {
    let p = [0.4f32, 0.25, 0.15, 0.1, 0.06, 0.04, 0.0, 0.0];
    let pf: Vec<f64> = p.iter().map(|&x| x as f64).collect();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    for draft in 0..p.len() as u32 {
        let mut counts = [0u64; 8];
        for _ in 0..100_000 {
            let (t, acc) = accept_draft(&p, draft, rng.gen(), rng.gen());
            assert_eq!(acc, t == draft && acc);
            counts[t as usize] += 1;
        }
        let (x2, dof) = chi_square(&counts, &pf);
        assert!(
            x2 < critical(dof),
            "draft {draft}: chi² {x2:.1} with {dof} dof; counts {counts:?}"
        );
    }
}

#[test]
fn sampler_with_drafts_keeps_the_distribution() {
    // temperature, top-k and a repetition penalty: the pipeline the sampler runs before drawing
    let logits = Array::from_slice(&[2.0f32, 1.5, 1.0, 0.5, 0.0, -0.5, -1.0, -3.0], &[1, 8]);
    let params = SamplingParams {
        temperature: 0.8,
        top_k: 6,
        repetition_penalty: 1.3,
        seed: Some(11),
        ..SamplingParams::default()
    };
    let history = [0u32, 3];
    let mut sampler = Sampler::new(params).unwrap();
    let p: Vec<f64> = sampler
        .probs(&logits, &history)
        .unwrap()
        .into_iter()
        .map(|x| x as f64)
        .collect();
    assert_eq!(p[6], 0.0, "top-k removed token 6");
    for draft in [0u32, 2, 5, 7] {
        let mut counts = [0u64; 8];
        let mut accepted = 0u64;
        let n = 40_000;
        for _ in 0..n {
            let (t, acc) = sampler.sample_draft(&logits, &history, draft).unwrap();
            accepted += acc as u64;
            counts[t as usize] += 1;
        }
        let (x2, dof) = chi_square(&counts, &p);
        assert!(
            x2 < critical(dof),
            "draft {draft}: chi² {x2:.1} with {dof} dof; counts {counts:?} p {p:?}"
        );
        // the draft is accepted with its probability
        let rate = accepted as f64 / n as f64;
        assert!(
            (rate - p[draft as usize]).abs() < 0.015,
            "draft {draft}: accepted {rate} vs p {}",
            p[draft as usize]
        );
    }
    // greedy: accepted exactly when the draft is the argmax
    let mut g = Sampler::new(SamplingParams::default()).unwrap();
    assert_eq!(g.sample_draft(&logits, &[], 0).unwrap(), (0, true));
    assert_eq!(g.sample_draft(&logits, &[], 3).unwrap(), (0, false));
}

#[test]
fn bad_draft_settings_are_typed_errors() {
    let (_dir, zaya) = tiny_synth();
    let mut s = zaya.session();
    for k in [0usize, 65] {
        let p = GenParams {
            draft: draft(k),
            ..GenParams::default()
        };
        let Err(e) = s.generate("hello", &p) else {
            panic!("K={k} accepted")
        };
        assert!(matches!(e, zaya_mlx::ZayaError::InvalidArgument(_)), "{e}");
        assert!(e.to_string().contains("--num-draft-tokens"), "{e}");
    }
}
