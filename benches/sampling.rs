//! Per-token cost of the sampler on a ZAYA-sized vocabulary (262,272 logits, f32), for each
//! pipeline configuration the decode loop can use. Logits are random normals scaled like real
//! model output (σ ≈ 3).
use std::collections::BTreeMap;

use criterion::{criterion_group, criterion_main, Criterion};
use mlx_rs::Array;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};
use zaya_mlx::runtime::sampling::{Sampler, SamplingParams};

const VOCAB: usize = 262_272;

fn bench(c: &mut Criterion) {
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let normal = Normal::new(0.0f32, 3.0).unwrap();
    let logits: Vec<f32> = (0..VOCAB).map(|_| normal.sample(&mut rng)).collect();
    let history: Vec<u32> = (0..64).map(|i| (i * 4099) % VOCAB as u32).collect();
    let t = |temperature| SamplingParams {
        temperature,
        seed: Some(1),
        ..Default::default()
    };
    let configs = [
        ("greedy", SamplingParams::default()),
        ("temp", t(0.7)),
        ("top_k_40", SamplingParams { top_k: 40, ..t(0.7) }),
        ("top_p_0.9", SamplingParams { top_p: 0.9, ..t(0.7) }),
        ("min_p_0.05", SamplingParams { min_p: 0.05, ..t(0.7) }),
        (
            "top_k_top_p_min_p",
            SamplingParams {
                top_k: 50,
                top_p: 0.95,
                min_p: 0.05,
                ..t(0.7)
            },
        ),
        (
            "penalties_bias_greedy",
            SamplingParams {
                repetition_penalty: 1.1,
                presence_penalty: 0.5,
                frequency_penalty: 0.2,
                logit_bias: BTreeMap::from([(7, 2.0), (99, -1.0)]),
                ..Default::default()
            },
        ),
    ];
    let mut g = c.benchmark_group("sample_262k");
    for (name, p) in configs {
        let mut s = Sampler::new(p).unwrap();
        g.bench_function(name, |b| {
            b.iter(|| {
                // a fresh (unevaluated-free) array per call, as the decode loop hands over
                let x = Array::from_slice(&logits, &[1, VOCAB as i32]);
                s.sample(&x, &history).unwrap()
            })
        });
    }
    g.finish();
}

criterion_group! { name = benches; config = Criterion::default().sample_size(20); targets = bench }
criterion_main!(benches);
