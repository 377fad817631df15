//! Sampling: the filtered probability vector against hand-derived values, an f64 reference written
//! from the definitions in src/runtime/sampling.rs's doc (HF order), and mlx-lm's own filters and logits
//! processors (tests/data/ref_sampling.py); empirical frequencies within a binomial bound; seeds;
//! validation errors naming the flag.
mod text_support;

use std::collections::BTreeMap;

use mlx_rs::Array;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{json, Value};
use text_support::run_python;
use zaya_mlx::runtime::sampling::{Sampler, SamplingParams};
use zaya_mlx::ZayaError;

fn arr(v: &[f32]) -> Array {
    Array::from_slice(v, &[v.len() as i32])
}

fn probs(p: &SamplingParams, logits: &[f32], history: &[u32]) -> Vec<f32> {
    Sampler::new(p.clone()).unwrap().probs(&arr(logits), history).unwrap()
}

fn assert_close(got: &[f32], want: &[f64], tol: f64, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!((*g as f64 - w).abs() <= tol, "{what}: index {i}: got {g}, want {w}");
    }
}

fn params() -> SamplingParams {
    SamplingParams {
        temperature: 1.0,
        ..Default::default()
    }
}

/// logits ln(0.4), ln(0.3), ln(0.2), ln(0.1)
fn four() -> Vec<f32> {
    [0.4f64, 0.3, 0.2, 0.1].iter().map(|p| p.ln() as f32).collect()
}

#[test]
fn hand_computed_distributions() {
    let l = four();
    let cases: Vec<(SamplingParams, Vec<f64>)> = vec![
        (params(), vec![0.4, 0.3, 0.2, 0.1]),
        (
            SamplingParams { top_k: 2, ..params() },
            vec![4.0 / 7.0, 3.0 / 7.0, 0.0, 0.0],
        ),
        (SamplingParams { top_k: 4, ..params() }, vec![0.4, 0.3, 0.2, 0.1]),
        // mass before token 3 is 0.7 >= 0.6: dropped
        (
            SamplingParams { top_p: 0.6, ..params() },
            vec![4.0 / 7.0, 3.0 / 7.0, 0.0, 0.0],
        ),
        (
            SamplingParams {
                top_p: 0.75,
                ..params()
            },
            vec![4.0 / 9.0, 3.0 / 9.0, 2.0 / 9.0, 0.0],
        ),
        (SamplingParams { top_p: 0.3, ..params() }, vec![1.0, 0.0, 0.0, 0.0]),
        // keep p >= 0.5 * 0.4
        (
            SamplingParams { min_p: 0.5, ..params() },
            vec![4.0 / 9.0, 3.0 / 9.0, 2.0 / 9.0, 0.0],
        ),
        (SamplingParams { min_p: 1.0, ..params() }, vec![1.0, 0.0, 0.0, 0.0]),
        // T = 0.5: p^2 renormalised
        (
            SamplingParams {
                temperature: 0.5,
                ..params()
            },
            vec![16.0 / 30.0, 9.0 / 30.0, 4.0 / 30.0, 1.0 / 30.0],
        ),
        // T = 2 then top-k 3: sqrt(p) over the first three
        (
            SamplingParams {
                temperature: 2.0,
                top_k: 3,
                ..params()
            },
            {
                let s: f64 = [0.4f64, 0.3, 0.2].iter().map(|p| p.sqrt()).sum();
                vec![0.4f64.sqrt() / s, 0.3f64.sqrt() / s, 0.2f64.sqrt() / s, 0.0]
            },
        ),
        // top-p runs on the renormalised top-k distribution [4,3,2]/9: the mass before token 2 is
        // 7/9 >= 0.75, so it is dropped (on the raw distribution it would be 0.7 < 0.75, kept)
        (
            SamplingParams {
                top_k: 3,
                top_p: 0.75,
                ..params()
            },
            vec![4.0 / 7.0, 3.0 / 7.0, 0.0, 0.0],
        ),
        // min-p after top-p: [4,3,2]/9 then keep p >= 0.6 * 4/9
        (
            SamplingParams {
                top_p: 0.75,
                min_p: 0.6,
                ..params()
            },
            vec![4.0 / 7.0, 3.0 / 7.0, 0.0, 0.0],
        ),
        (SamplingParams::default(), vec![1.0, 0.0, 0.0, 0.0]),
    ];
    for (p, want) in cases {
        assert_close(&probs(&p, &l, &[]), &want, 1e-6, &format!("{p:?}"));
    }
}

#[test]
fn hand_computed_penalties_and_bias() {
    let greedy = SamplingParams::default();
    let logits = [2.0f32, 1.5, -1.0, 0.0, 0.5];
    let processed = |p: &SamplingParams, h: &[u32]| -> Vec<f32> {
        Sampler::new(p.clone())
            .unwrap()
            .process_logits(&arr(&logits), h)
            .unwrap()
            .as_slice::<f32>()
            .to_vec()
    };
    // repetition penalty 2 on ids {0, 2}: 2.0 / 2, -1.0 * 2
    let p = SamplingParams {
        repetition_penalty: 2.0,
        ..greedy.clone()
    };
    assert_eq!(processed(&p, &[0, 2, 2]), vec![1.0, 1.5, -2.0, 0.0, 0.5]);
    let mut s = Sampler::new(p.clone()).unwrap();
    assert_eq!(
        s.sample(&arr(&logits), &[0]).unwrap(),
        1,
        "the penalised argmax moves to id 1"
    );
    assert_eq!(s.sample(&arr(&logits), &[]).unwrap(), 0);
    // window of 1: only the last history id is penalised
    let p1 = SamplingParams {
        repetition_context_size: Some(1),
        ..p.clone()
    };
    assert_eq!(processed(&p1, &[0, 2]), vec![2.0, 1.5, -2.0, 0.0, 0.5]);
    // presence 0.5 + frequency 0.25 over history [3, 3, 1]
    let pf = SamplingParams {
        presence_penalty: 0.5,
        frequency_penalty: 0.25,
        ..greedy.clone()
    };
    assert_eq!(processed(&pf, &[3, 3, 1]), vec![2.0, 0.75, -1.0, -1.0, 0.5]);
    let pfw = SamplingParams {
        penalty_context_size: Some(2),
        ..pf.clone()
    };
    assert_eq!(processed(&pfw, &[1, 3, 3]), vec![2.0, 1.5, -1.0, -1.0, 0.5]);
    let all = SamplingParams {
        penalty_context_size: None,
        ..pf
    };
    let long: Vec<u32> = std::iter::repeat_n(4, 30).collect();
    assert_eq!(processed(&all, &long)[4], 0.5 - 0.5 - 0.25 * 30.0);
    // logit bias then repetition penalty (mlx-lm order): (0.5 + 1.5) / 2
    let b = SamplingParams {
        logit_bias: BTreeMap::from([(4, 1.5), (0, f32::NEG_INFINITY)]),
        repetition_penalty: 2.0,
        ..greedy.clone()
    };
    assert_eq!(processed(&b, &[4]), vec![f32::NEG_INFINITY, 1.5, -1.0, 0.0, 1.0]);
    assert_eq!(Sampler::new(b).unwrap().sample(&arr(&logits), &[4]).unwrap(), 1);
    let b = SamplingParams {
        logit_bias: BTreeMap::from([(3, 10.0)]),
        ..greedy
    };
    assert_eq!(Sampler::new(b).unwrap().sample(&arr(&logits), &[]).unwrap(), 3);
}

/// Straight-from-the-definition f64 pipeline (bias, repetition, presence/frequency, temperature,
/// top-k, top-p on the renormalised top-k set, min-p), returning the final probabilities.
fn reference(logits: &[f32], history: &[u32], p: &SamplingParams) -> Vec<f64> {
    let mut x: Vec<f64> = logits.iter().map(|&v| v as f64).collect();
    for (&id, &b) in &p.logit_bias {
        x[id as usize] += b as f64;
    }
    let window = |n: Option<usize>| &history[history.len().saturating_sub(n.unwrap_or(history.len()))..];
    let mut rep: Vec<u32> = window(p.repetition_context_size).to_vec();
    rep.sort();
    rep.dedup();
    if p.repetition_penalty != 1.0 {
        for id in rep {
            let v = &mut x[id as usize];
            *v = if *v < 0.0 {
                *v * p.repetition_penalty as f64
            } else {
                *v / p.repetition_penalty as f64
            };
        }
    }
    let mut counts = BTreeMap::new();
    for &id in window(p.penalty_context_size) {
        *counts.entry(id).or_insert(0u32) += 1;
    }
    for (id, c) in counts {
        x[id as usize] -= p.presence_penalty as f64 + p.frequency_penalty as f64 * c as f64;
    }
    let n = x.len();
    if p.temperature == 0.0 {
        let best = (0..n).fold(0, |b, i| if x[i] > x[b] { i } else { b });
        return (0..n).map(|i| if i == best { 1.0 } else { 0.0 }).collect();
    }
    let z: Vec<f64> = x.iter().map(|v| v / p.temperature as f64).collect();
    let mut keep = vec![true; n];
    if p.top_k > 0 && (p.top_k as usize) < n {
        let mut s = z.clone();
        s.sort_by(|a, b| b.total_cmp(a));
        let kth = s[p.top_k as usize - 1];
        for i in 0..n {
            keep[i] = z[i] >= kth;
        }
    }
    let m = z.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let mut w: Vec<f64> = (0..n).map(|i| if keep[i] { (z[i] - m).exp() } else { 0.0 }).collect();
    let total: f64 = w.iter().sum();
    if p.top_p < 1.0 {
        let mut order: Vec<usize> = (0..n).filter(|&i| w[i] > 0.0).collect();
        order.sort_by(|&a, &b| w[b].total_cmp(&w[a]).then(a.cmp(&b)));
        let mut before = 0.0;
        let mut kept = vec![false; n];
        for i in order {
            if before >= p.top_p as f64 * total {
                break;
            }
            before += w[i];
            kept[i] = true;
        }
        for i in 0..n {
            if !kept[i] {
                w[i] = 0.0;
            }
        }
    }
    let wmax = w.iter().cloned().fold(0.0, f64::max);
    for v in w.iter_mut() {
        if *v < p.min_p as f64 * wmax {
            *v = 0.0;
        }
    }
    let t: f64 = w.iter().sum();
    w.iter().map(|v| v / t).collect()
}

fn random_logits(rng: &mut ChaCha8Rng, n: usize, scale: f32) -> Vec<f32> {
    (0..n).map(|_| (rng.gen::<f32>() - 0.5) * 2.0 * scale).collect()
}

#[test]
fn full_pipeline_matches_f64_reference() {
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let settings = [
        SamplingParams {
            temperature: 0.7,
            ..params()
        },
        SamplingParams {
            temperature: 0.8,
            top_k: 40,
            ..params()
        },
        SamplingParams {
            temperature: 1.3,
            top_p: 0.9,
            ..params()
        },
        SamplingParams {
            temperature: 0.6,
            top_k: 100,
            top_p: 0.8,
            min_p: 0.05,
            ..params()
        },
        SamplingParams {
            temperature: 1.0,
            min_p: 0.1,
            ..params()
        },
        SamplingParams {
            temperature: 0.9,
            top_p: 0.95,
            repetition_penalty: 1.3,
            presence_penalty: 0.4,
            frequency_penalty: 0.2,
            logit_bias: BTreeMap::from([(5, 2.0), (17, -3.0)]),
            ..params()
        },
        SamplingParams {
            repetition_penalty: 1.5,
            presence_penalty: 1.0,
            ..Default::default()
        },
    ];
    for p in &settings {
        for _ in 0..3 {
            let logits = random_logits(&mut rng, 3000, 8.0);
            let history: Vec<u32> = (0..40).map(|_| rng.gen_range(0..3000)).collect();
            let got = probs(p, &logits, &history);
            assert_close(&got, &reference(&logits, &history, p), 2e-6, &format!("{p:?}"));
            assert!((got.iter().map(|&v| v as f64).sum::<f64>() - 1.0).abs() < 1e-4);
        }
    }
}

#[test]
fn large_vocab_nucleus_beyond_the_first_cut() {
    // One dominant token and a long tail of weight ~e^-12 each: the 0.9 nucleus needs tail tokens
    // below the first candidate cut-off (1e-4), exercising the widening search.
    let n = 262_144usize;
    let mut logits: Vec<f32> = (0..n).map(|i| -12.0 - (i % 977) as f32 * 1e-3).collect();
    logits[1234] = 0.0;
    let p = SamplingParams {
        temperature: 1.0,
        top_p: 0.9,
        ..params()
    };
    let got = probs(&p, &logits, &[]);
    let want = reference(&logits, &[], &p);
    assert_close(&got, &want, 1e-6, "large vocab");
    let kept = got.iter().filter(|&&v| v > 0.0).count();
    assert!(kept > 1000 && kept < n, "nucleus size {kept}");
}

#[test]
fn filters_and_processors_match_mlx_lm() {
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let mut cases = Vec::new();
    let mut ours = Vec::new();
    for (mode, p) in [
        ("top_k", SamplingParams { top_k: 7, ..params() }),
        ("top_k", SamplingParams { top_k: 300, ..params() }),
        ("top_p", SamplingParams { top_p: 0.5, ..params() }),
        (
            "top_p",
            SamplingParams {
                top_p: 0.97,
                ..params()
            },
        ),
        (
            "min_p",
            SamplingParams {
                min_p: 0.02,
                ..params()
            },
        ),
        ("min_p", SamplingParams { min_p: 0.3, ..params() }),
    ] {
        let logits = random_logits(&mut rng, 1000, 6.0);
        cases.push(json!({"mode": mode, "logits": logits, "history": [],
                          "top_k": p.top_k, "top_p": p.top_p, "min_p": p.min_p}));
        ours.push(probs(&p, &logits, &[]));
    }
    for (rp, pres, freq, ctx) in [
        (1.3f32, 0.0f32, 0.0f32, 20usize),
        (0.8, 0.5, 0.0, 8),
        (1.0, 0.0, 0.3, 30),
        (1.2, 0.7, 0.2, 5),
    ] {
        let logits = random_logits(&mut rng, 500, 4.0);
        let history: Vec<u32> = (0..40).map(|_| rng.gen_range(0..60)).collect();
        let p = SamplingParams {
            repetition_penalty: rp,
            repetition_context_size: Some(ctx),
            presence_penalty: pres,
            frequency_penalty: freq,
            penalty_context_size: Some(ctx),
            logit_bias: BTreeMap::from([(3, 1.25), (499, -2.5)]),
            ..Default::default()
        };
        let rp_json = if rp != 1.0 { json!(rp) } else { Value::Null };
        cases.push(json!({"mode": "processors", "logits": logits, "history": history,
            "repetition_penalty": rp_json, "repetition_context_size": ctx,
            "presence_penalty": pres, "frequency_penalty": freq, "context_size": ctx,
            "logit_bias": {"3": 1.25, "499": -2.5}}));
        let x = Sampler::new(p)
            .unwrap()
            .process_logits(&arr(&logits), &history)
            .unwrap();
        ours.push(x.as_slice::<f32>().to_vec());
    }
    let reference = run_python("ref_sampling.py", &Value::Array(cases));
    for (i, (got, want)) in ours.iter().zip(reference.as_array().unwrap()).enumerate() {
        let want: Vec<f64> = want.as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
        assert_close(got, &want, 2e-6, &format!("case {i}"));
    }
}

#[test]
fn empirical_frequencies_within_binomial_bound() {
    let p = SamplingParams {
        temperature: 1.0,
        top_k: 3,
        seed: Some(1234),
        ..Default::default()
    };
    let want = [4.0 / 9.0, 3.0 / 9.0, 2.0 / 9.0, 0.0];
    let mut s = Sampler::new(p).unwrap();
    let logits = arr(&four());
    let n = 20_000;
    let mut counts = [0usize; 4];
    for _ in 0..n {
        counts[s.sample(&logits, &[]).unwrap() as usize] += 1;
    }
    assert_eq!(counts[3], 0, "top-k removed id 3");
    for i in 0..3 {
        let f = counts[i] as f64 / n as f64;
        let sigma = (want[i] * (1.0 - want[i]) / n as f64).sqrt();
        assert!(
            (f - want[i]).abs() < 5.0 * sigma,
            "id {i}: frequency {f} vs {}",
            want[i]
        );
    }
}

#[test]
fn seeds_are_deterministic() {
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let rows: Vec<Array> = (0..50).map(|_| arr(&random_logits(&mut rng, 1000, 1.0))).collect();
    let run = |seed: u64| -> Vec<u32> {
        let mut s = Sampler::new(SamplingParams {
            temperature: 1.0,
            top_p: 0.95,
            seed: Some(seed),
            ..Default::default()
        })
        .unwrap();
        rows.iter().map(|r| s.sample(r, &[]).unwrap()).collect()
    };
    assert_eq!(run(42), run(42));
    assert_ne!(run(42), run(43));
    let mut s = Sampler::new(SamplingParams {
        temperature: 1.0,
        top_p: 0.95,
        seed: Some(42),
        ..Default::default()
    })
    .unwrap();
    let first: Vec<u32> = rows.iter().map(|r| s.sample(r, &[]).unwrap()).collect();
    s.reseed(42);
    let again: Vec<u32> = rows.iter().map(|r| s.sample(r, &[]).unwrap()).collect();
    assert_eq!(first, again);
}

#[test]
fn greedy_shapes_dtypes_and_batches() {
    let mut s = Sampler::new(SamplingParams::default()).unwrap();
    // ties → lowest id
    assert_eq!(s.sample(&arr(&[1.0, 3.0, 3.0, -2.0]), &[]).unwrap(), 1);
    let x = Array::from_slice(&[0.5f32, -1.0, 2.0, 2.5, 0.0, 7.0], &[2, 3]);
    assert_eq!(
        s.sample(&x.as_type::<half::bf16>().unwrap().reshape(&[1, 6]).unwrap(), &[])
            .unwrap(),
        5
    );
    assert_eq!(s.sample_batch(&x, &[&[], &[]]).unwrap(), vec![2, 2]);
    let rp = SamplingParams {
        repetition_penalty: 10.0,
        ..Default::default()
    };
    let mut s2 = Sampler::new(rp).unwrap();
    assert_eq!(
        s2.sample_batch(&x, &[&[2], &[]]).unwrap(),
        vec![0, 2],
        "per-row histories"
    );
    assert!(matches!(s.sample(&x, &[]), Err(ZayaError::InvalidArgument(m)) if m.contains("sample_batch")));
    assert!(matches!(s.sample_batch(&x, &[&[]]), Err(ZayaError::InvalidArgument(_))));
    // NaN logits come from the model, not the user: a model fault (exit 3)
    assert!(matches!(s.sample(&arr(&[1.0, f32::NAN]), &[]), Err(ZayaError::NonFinite(m)) if m.contains("NaN")));
    let banned = SamplingParams {
        temperature: 1.0,
        logit_bias: BTreeMap::from([(0, f32::NEG_INFINITY), (1, f32::NEG_INFINITY)]),
        ..Default::default()
    };
    let mut sb = Sampler::new(banned).unwrap();
    assert!(
        matches!(sb.sample(&arr(&[1.0, 2.0]), &[]), Err(ZayaError::InvalidArgument(m)) if m.contains("--logit-bias"))
    );
    assert_eq!(sb.sample(&arr(&[1.0, 2.0, -50.0]), &[]).unwrap(), 2);
}

#[test]
fn bad_values_name_the_flag() {
    let d = SamplingParams::default;
    let bad: Vec<(SamplingParams, &str)> = vec![
        (
            SamplingParams {
                temperature: -0.1,
                ..d()
            },
            "--temp",
        ),
        (
            SamplingParams {
                temperature: f32::NAN,
                ..d()
            },
            "--temp",
        ),
        (
            SamplingParams {
                temperature: f32::INFINITY,
                ..d()
            },
            "--temp",
        ),
        (SamplingParams { top_k: -1, ..d() }, "--top-k"),
        (SamplingParams { top_p: 0.0, ..d() }, "--top-p"),
        (SamplingParams { top_p: 1.5, ..d() }, "--top-p"),
        (SamplingParams { top_p: f32::NAN, ..d() }, "--top-p"),
        (SamplingParams { min_p: -0.01, ..d() }, "--min-p"),
        (SamplingParams { min_p: 1.01, ..d() }, "--min-p"),
        (SamplingParams { min_p: f32::NAN, ..d() }, "--min-p"),
        (
            SamplingParams {
                repetition_penalty: 0.0,
                ..d()
            },
            "--repetition-penalty",
        ),
        (
            SamplingParams {
                repetition_penalty: -1.0,
                ..d()
            },
            "--repetition-penalty",
        ),
        (
            SamplingParams {
                repetition_context_size: Some(0),
                ..d()
            },
            "--repetition-context-size",
        ),
        (
            SamplingParams {
                presence_penalty: f32::NAN,
                ..d()
            },
            "--presence-penalty",
        ),
        (
            SamplingParams {
                frequency_penalty: f32::INFINITY,
                ..d()
            },
            "--frequency-penalty",
        ),
        (
            SamplingParams {
                penalty_context_size: Some(0),
                ..d()
            },
            "--penalty-context-size",
        ),
        (
            SamplingParams {
                logit_bias: BTreeMap::from([(1, f32::NAN)]),
                ..d()
            },
            "--logit-bias",
        ),
    ];
    for (p, flag) in bad {
        match Sampler::new(p.clone()) {
            Err(ZayaError::InvalidArgument(m)) => assert!(m.contains(flag), "{m:?} should name {flag}"),
            other => panic!("{p:?}: expected InvalidArgument, got {other:?}"),
        }
    }
    let mut s = Sampler::new(SamplingParams {
        logit_bias: BTreeMap::from([(9, 1.0)]),
        ..d()
    })
    .unwrap();
    assert!(
        matches!(s.sample(&arr(&[0.0, 1.0]), &[]), Err(ZayaError::InvalidArgument(m)) if m.contains("--logit-bias"))
    );
    let mut s = Sampler::new(SamplingParams {
        repetition_penalty: 1.1,
        ..d()
    })
    .unwrap();
    assert!(matches!(s.sample(&arr(&[0.0, 1.0]), &[5]), Err(ZayaError::InvalidArgument(m)) if m.contains("history")));
    // valid edge values
    for p in [
        SamplingParams {
            top_p: 1.0,
            min_p: 1.0,
            top_k: 0,
            ..d()
        },
        SamplingParams {
            min_p: 0.0,
            temperature: 0.0,
            ..d()
        },
        SamplingParams {
            logit_bias: BTreeMap::from([(0, f32::NEG_INFINITY)]),
            ..d()
        },
    ] {
        Sampler::new(p).unwrap();
    }
}
