//! Model-level benchmarks on a real-dimension synthetic bundle (`zaya_mlx::tools::synth`: the zaya1-8b
//! preset cut to 16 half-layers, full 262272 vocabulary; written once, ≈1.4 GB, into
//! `$ZAYA_BENCH_DIR` or `target/zaya-bench/`), each next to its plain-MLX-ops baseline in the same run:
//!
//! * `expert_matmul`: one MoE layer's routed experts (SwiGLU, TurboQuant 4-bit, 16 × 2048×2048) —
//!   `fused` (our primitive), `portable` (the primitive's plain-ops graph) and `plain` (the model's
//!   `ExpertBackend::Plain` math); decode (N = 1) and prefill (N = 128 routed at random);
//! * `lm_head_gemv`: the tied 8-bit lm_head 262272×2048 at N = 1 — ours vs MLX `quantized_matmul`
//!   (with the stored f16 scales, and with the f32 scales the plain model holds);
//! * `cca_conv`: the CCA two-stage conv — primitive vs portable graph, T = 1 and T = 128;
//! * `attention_decode`: one CCA attention block at T = 1 over a KV cache of 128 / 1024 / 8192
//!   positions — fused model vs plain model (plain linears, portable conv);
//! * `half_layer`: a whole half-layer (residual scaling, input norm, block) of each kind, T = 1
//!   (attention at context 128) and T = 128 (attention from an empty cache) — fused vs plain.
//!
//! As in a decode step, consecutive calls use different layers (and, for the experts, different
//! experts), so weights stream from DRAM rather than from the 32 MiB L3 (the conv cycles 32 random
//! weight copies). Calls run back to back; where a call needs a fresh KV cache, caches for 16 calls
//! are built untimed, then the 16 calls are timed in a row (so worker threads stay as warm as in a
//! decode step).
//!
//! `cargo bench --bench model` (about 4 minutes; small sample counts). Filter: `cargo bench --bench
//! model -- attention`. Throughput, where given, is weight bytes read per call.
use std::path::PathBuf;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Bencher, BenchmarkGroup, BenchmarkId, Criterion, Throughput};
use mlx_rs::ops::concatenate;
use mlx_rs::ops::indexing::take_axis;
use mlx_rs::Array;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use zaya_mlx::ext::{self, ExtMode, TqCodec, TqWeights};
use zaya_mlx::model::cache::AttnCache;
use zaya_mlx::model::cca::CcaOptions;
use zaya_mlx::model::moe::experts::silu;
use zaya_mlx::model::moe::{ExpertBackend, MoeStep, SwitchMlp};
use zaya_mlx::model::plan::LayerPlan;
use zaya_mlx::model::{ModelOptions, ZayaLayer, ZayaModel};
use zaya_mlx::quant::linear::LinearBackend;
use zaya_mlx::quant::turboquant::{rotate, TqMatrix};
use zaya_mlx::tools::synth::{self, SynthOptions, SynthSpec};

const H: i32 = 2048;
const PREFILL: i32 = 128;
const HALF_LAYERS: usize = 16;

fn bundle_dir() -> PathBuf {
    let base = std::env::var_os("ZAYA_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("target")
                .join("zaya-bench")
        });
    let dir = base.join(format!("real-{HALF_LAYERS}hl-v262272-s0"));
    if !dir.join("config.json").exists() {
        std::fs::create_dir_all(&base).unwrap();
        let tmp = base.join(format!(".real-{HALF_LAYERS}hl.tmp-{}", std::process::id()));
        let spec = SynthSpec {
            num_hidden_layers: HALF_LAYERS,
            ..SynthSpec::preset("zaya1-8b").unwrap()
        };
        eprintln!("writing the benchmark bundle to {} (once)", dir.display());
        synth::write_bundle(
            &spec,
            &tmp,
            &SynthOptions {
                force: true,
                ..Default::default()
            },
        )
        .unwrap();
        if std::fs::rename(&tmp, &dir).is_err() {
            // another process won the race
            let _ = std::fs::remove_dir_all(&tmp);
        }
    }
    dir
}

struct Models {
    fused: ZayaModel,
    plain: ZayaModel,
}

fn load_models() -> Models {
    let dir = bundle_dir();
    let fused = ZayaModel::load(&dir, ModelOptions::default()).unwrap();
    let plain = ZayaModel::load(
        &dir,
        ModelOptions {
            expert_backend: ExpertBackend::Plain,
            linear_backend: LinearBackend::Plain,
            ext_mode: ExtMode::Portable,
            ..ModelOptions::default()
        },
    )
    .unwrap();
    Models { fused, plain }
}

fn randn(rng: &mut ChaCha8Rng, shape: &[i32]) -> Array {
    let n: i32 = shape.iter().product();
    // sum of 4 uniforms: close enough to normal, unit variance
    let v: Vec<f32> = (0..n)
        .map(|_| (0..4).map(|_| rng.gen_range(-1.0f32..1.0)).sum::<f32>() * 0.866)
        .collect();
    let a = Array::from_slice(&v, shape);
    a.eval().unwrap();
    a
}

fn eval(xs: &[&Array]) {
    mlx_rs::transforms::eval(xs.iter().copied()).unwrap();
}

fn group<'a>(c: &'a mut Criterion, name: &str, secs: u64) -> BenchmarkGroup<'a, criterion::measurement::WallTime> {
    let mut g = c.benchmark_group(name);
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(secs));
    g
}

/// Calls timed back to back in chunks of this many, after their inputs are prepared untimed.
const CHUNK: u64 = 16;

/// Times `run(i, prep(i))` for the iterations criterion asks for: the `prep`s of a chunk are made
/// untimed, then the chunk's calls run back to back under the clock.
fn chunked<P>(b: &mut Bencher, mut prep: impl FnMut(u64) -> P, mut run: impl FnMut(u64, P)) {
    let mut next = 0u64;
    b.iter_custom(|iters| {
        let mut total = Duration::ZERO;
        let mut done = 0;
        while done < iters {
            let n = CHUNK.min(iters - done);
            let inputs: Vec<(u64, P)> = (0..n)
                .map(|_| {
                    next += 1;
                    (next, prep(next))
                })
                .collect();
            let t = Instant::now();
            for (i, p) in inputs {
                run(i, p);
            }
            total += t.elapsed();
            done += n;
        }
        total
    })
}

fn moe_layers(m: &ZayaModel) -> Vec<&ZayaLayer> {
    m.model.layers.iter().filter(|l| l.zaya_block.is_some()).collect()
}

fn attn_layers(m: &ZayaModel) -> Vec<&ZayaLayer> {
    m.model.layers.iter().filter(|l| l.self_attn.is_some()).collect()
}

// ---- experts ---------------------------------------------------------------------------------

struct TqSet {
    g: TqMatrix,
    u: TqMatrix,
    d: TqMatrix,
}

fn tq_set(sm: &SwitchMlp) -> TqSet {
    TqSet {
        g: sm.gate_proj.tq().unwrap(),
        u: sm.up_proj.tq().unwrap(),
        d: sm.down_proj.tq().unwrap(),
    }
}

fn fused_experts(t: &TqSet, x: &Array, idx: &Array, mode: ExtMode) -> Array {
    ext::tq_switch_glu(
        x,
        idx,
        TqWeights {
            packed: &t.g.packed,
            norms: &t.g.norms,
        },
        TqWeights {
            packed: &t.u.packed,
            norms: &t.u.norms,
        },
        TqWeights {
            packed: &t.d.packed,
            norms: &t.d.norms,
        },
        TqCodec {
            codebook: &t.g.codebook,
            signs: &t.g.signs,
            bits: t.g.bits,
        },
        TqCodec {
            codebook: &t.d.codebook,
            signs: &t.d.signs,
            bits: t.d.bits,
        },
        mode,
    )
    .unwrap()
}

/// The model's plain expert math (moe.rs `SwitchMlp::expert`) for rows that chose `e`.
fn plain_expert(t: &TqSet, x: &Array, e: i32) -> Array {
    let xr = rotate(x, &t.g.signs).unwrap();
    let a = silu(&t.g.matmul_rotated(&xr, e).unwrap())
        .unwrap()
        .multiply(t.u.matmul_rotated(&xr, e).unwrap())
        .unwrap();
    t.d.matmul(&a, e).unwrap()
}

/// Plain routing of N rows: rows grouped per expert on the host, one expert graph per group, then
/// gathered back into row order (as the model's plain path does).
fn plain_experts(t: &TqSet, x: &Array, route: &[i32]) -> Array {
    let mut groups: std::collections::BTreeMap<i32, Vec<u32>> = Default::default();
    for (r, &e) in route.iter().enumerate() {
        groups.entry(e).or_default().push(r as u32);
    }
    let mut parts = Vec::new();
    let mut order = Vec::new();
    for (&e, rows) in &groups {
        parts.push(plain_expert(
            t,
            &take_axis(x, Array::from_slice(rows, &[rows.len() as i32]), 0).unwrap(),
            e,
        ));
        order.extend_from_slice(rows);
    }
    let mut inv = vec![0u32; route.len()];
    for (pos, &r) in order.iter().enumerate() {
        inv[r as usize] = pos as u32;
    }
    take_axis(
        concatenate(&parts, 0).unwrap(),
        Array::from_slice(&inv, &[route.len() as i32]),
        0,
    )
    .unwrap()
}

fn bench_experts(c: &mut Criterion, m: &Models) {
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let sets: Vec<TqSet> = moe_layers(&m.fused)
        .iter()
        .map(|l| tq_set(&l.zaya_block.as_ref().unwrap().experts.switch_mlp))
        .collect();
    let e_count = m.fused.config().num_experts as i32;
    let per_expert: u64 = [&sets[0].g, &sets[0].u, &sets[0].d]
        .iter()
        .map(|t| (t.packed.nbytes() + t.norms.nbytes()) as u64 / e_count as u64)
        .sum();
    let mut g = group(c, "expert_matmul", 2);
    // decode: one row, a different (layer, expert) each call
    let x1 = randn(&mut rng, &[1, H]);
    let ids: Vec<Array> = (0..e_count).map(|e| Array::from_slice(&[e], &[1])).collect();
    g.throughput(Throughput::Bytes(per_expert));
    // every (layer, expert) once, untimed: the bundle is mmapped, and a call that is the first in this
    // process to touch an expert pays ≈ 1,600 page faults (≈ 1–3 ms, ten times the kernel); the short
    // warm-up does not visit all 128, as a running decode long since has
    for s in &sets {
        for id in &ids {
            eval(&[&fused_experts(s, &x1, id, ExtMode::Primitive)]);
        }
    }
    for (name, mode) in [
        ("fused", Some(ExtMode::Primitive)),
        ("portable", Some(ExtMode::Portable)),
        ("plain", None),
    ] {
        let mut k = 0usize;
        g.bench_function(BenchmarkId::new(name, "decode N=1"), |b| {
            b.iter(|| {
                k += 1;
                let (s, e) = (&sets[k % sets.len()], (k / sets.len()) as i32 % e_count);
                let y = match mode {
                    Some(md) => fused_experts(s, &x1, &ids[e as usize], md),
                    None => plain_expert(s, &x1, e),
                };
                eval(&[&y]);
            })
        });
    }
    // prefill: 128 rows routed at random (every expert read about once), a different layer each call
    let xp = randn(&mut rng, &[PREFILL, H]);
    let route: Vec<i32> = (0..PREFILL).map(|_| rng.gen_range(0..e_count)).collect();
    let idx = Array::from_slice(&route, &[PREFILL]);
    g.throughput(Throughput::Bytes(per_expert * e_count as u64));
    for (name, mode) in [
        ("fused", Some(ExtMode::Primitive)),
        ("portable", Some(ExtMode::Portable)),
        ("plain", None),
    ] {
        let mut k = 0usize;
        g.bench_function(BenchmarkId::new(name, "prefill N=128"), |b| {
            b.iter(|| {
                k += 1;
                let s = &sets[k % sets.len()];
                let y = match mode {
                    Some(md) => fused_experts(s, &xp, &idx, md),
                    None => plain_experts(s, &xp, &route),
                };
                eval(&[&y]);
            })
        });
    }
    g.finish();
}

// ---- lm_head ---------------------------------------------------------------------------------

fn affine_parts(q: &zaya_mlx::quant::linear::QLinear) -> (&Array, &Array, &Array, u32, u32) {
    let (bits, gs) = match q.format {
        zaya_mlx::quant::WeightFormat::Affine { bits, group_size } => (bits, group_size),
        ref f => panic!("lm_head format {f:?}"),
    };
    (
        &*q.weight,
        q.scales.value.as_ref().unwrap(),
        q.biases.value.as_ref().unwrap(),
        bits,
        gs,
    )
}

fn bench_lm_head(c: &mut Criterion, m: &Models) {
    let mut rng = ChaCha8Rng::seed_from_u64(12);
    // as stored (f16 scales/biases): what the fused model holds
    let (w, s, b, bits, gs) = affine_parts(&m.fused.model.embed_tokens);
    // f32 scales/biases: what the plain model holds (MLX's CPU kernel accumulates in their dtype)
    let (pw, ps, pb, _, _) = affine_parts(&m.plain.model.embed_tokens);
    let x = randn(&mut rng, &[1, H]);
    let mut g = group(c, "lm_head_gemv", 3);
    g.throughput(Throughput::Bytes((w.nbytes() + s.nbytes() + b.nbytes()) as u64));
    g.bench_function(BenchmarkId::new("ours", "N=1"), |bn| {
        bn.iter(|| eval(&[&ext::affine_matmul(&x, w, s, b, bits, gs, ExtMode::Primitive).unwrap()]))
    });
    g.bench_function(BenchmarkId::new("mlx_quantized_matmul", "N=1"), |bn| {
        bn.iter(|| eval(&[&mlx_rs::ops::quantized_matmul(&x, w, s, b, true, gs as i32, bits as i32).unwrap()]))
    });
    g.bench_function(BenchmarkId::new("mlx_quantized_matmul_f32_scales", "N=1"), |bn| {
        bn.iter(|| eval(&[&mlx_rs::ops::quantized_matmul(&x, pw, ps, pb, true, gs as i32, bits as i32).unwrap()]))
    });
    g.finish();
}

// ---- CCA conv --------------------------------------------------------------------------------

fn bench_conv(c: &mut Criterion, m: &Models) {
    let mut rng = ChaCha8Rng::seed_from_u64(13);
    let conv = &attn_layers(&m.fused)[0].self_attn.as_ref().unwrap().qkv.conv_qk;
    let (w0, w1) = (&*conv[0].weight, &*conv[1].weight);
    let (ch, k0, k1, cg) = (w0.shape()[0], w0.shape()[1], w1.shape()[1], w1.shape()[2]);
    let s = (k0 - 1) + (k1 - 1);
    // 32 weight sets of the real shapes (42 MB in f32), used in turn
    let sets: Vec<[Array; 4]> = (0..32)
        .map(|_| {
            [
                randn(&mut rng, &[ch, k0, 1]),
                randn(&mut rng, &[ch]),
                randn(&mut rng, &[ch, k1, cg])
                    .multiply(Array::from_f32(1.0 / (cg as f32).sqrt()))
                    .unwrap(),
                randn(&mut rng, &[ch]),
            ]
        })
        .collect();
    let state = randn(&mut rng, &[1, ch, s]);
    let mut g = group(c, "cca_conv", 2);
    for t in [1, PREFILL] {
        let u = randn(&mut rng, &[1, t, ch]);
        for (name, mode) in [("primitive", ExtMode::Primitive), ("portable", ExtMode::Portable)] {
            let mut k = 0usize;
            g.bench_function(BenchmarkId::new(name, format!("T={t}")), |b| {
                b.iter(|| {
                    k += 1;
                    let [w0, b0, w1, b1] = &sets[k % sets.len()];
                    let (z, ns) = ext::cca_conv(&u, &state, w0, b0, w1, b1, mode).unwrap();
                    eval(&[&z, &ns]);
                })
            });
        }
    }
    g.finish();
}

// ---- attention and half-layers ---------------------------------------------------------------

/// A layer state holding `ctx` random positions (room for more, so a step does not grow it), with
/// random conv state and `prev_hs`; evaluated. Empty for `ctx` = 0.
fn attn_cache(rng: &mut ChaCha8Rng, m: &ZayaModel, ctx: i32) -> AttnCache {
    let cfg = m.config();
    let (hk, d) = (cfg.num_kv_heads as i32, cfg.head_dim as i32);
    let mut cache = AttnCache::default();
    if ctx > 0 {
        let k = randn(rng, &[1, hk, ctx, d]);
        let v = randn(rng, &[1, hk, ctx, d]);
        let (ak, av) = cache.update_and_fetch(&k, &v, ctx as usize + 256).unwrap();
        eval(&[&ak, &av]);
        let ch = cfg.conv_channels() as i32;
        cache.conv_state = Some(randn(rng, &[1, ch, cfg.conv_state_len() as i32]));
        cache.prev_hs = Some(randn(rng, &[1, H]));
    }
    cache
}

fn state_outputs(c: &AttnCache) -> Vec<Array> {
    [c.keys(), c.values(), c.conv_state.clone(), c.prev_hs.clone()]
        .into_iter()
        .flatten()
        .collect()
}

/// How a variant runs: its model's plan for attention and MoE half-layers.
#[derive(Clone, Copy)]
struct Variant {
    attn: CcaOptions,
    moe: MoeStep,
}

fn variant(model: &ZayaModel) -> Variant {
    let plan = model.plan();
    let attn_path = plan
        .layers
        .iter()
        .find_map(|l| match l {
            LayerPlan::Attention { path } => Some(*path),
            _ => None,
        })
        .unwrap();
    let moe_plan = *plan.layers.iter().find(|l| matches!(l, LayerPlan::Moe { .. })).unwrap();
    Variant {
        attn: CcaOptions {
            path: attn_path,
            ext: plan.ext,
            kv_step: 256,
            record: false,
        },
        moe: model.moe_step(moe_plan),
    }
}

fn variants(m: &Models) -> [(&'static str, &ZayaModel, Variant); 2] {
    [
        ("fused", &m.fused, variant(&m.fused)),
        ("plain", &m.plain, variant(&m.plain)),
    ]
}

/// Attention block only (x = the input_norm output) of `layer` at `ctx` cached positions.
fn run_attention(layer: &ZayaLayer, x: &Array, mut cache: AttnCache, ctx: usize, v: Variant) {
    let attn = layer.self_attn.as_ref().unwrap();
    let (b, t) = (x.shape()[0], x.shape()[1]);
    let y = attn
        .forward(&x.reshape(&[b * t, H]).unwrap(), b, t, &mut cache, ctx, v.attn)
        .unwrap();
    let mut outs = state_outputs(&cache);
    outs.push(y);
    mlx_rs::transforms::eval(outs.iter()).unwrap();
}

fn bench_attention(c: &mut Criterion, m: &Models) {
    let mut rng = ChaCha8Rng::seed_from_u64(14);
    let x = randn(&mut rng, &[1, 1, H]);
    let mut g = group(c, "attention_decode", 2);
    for ctx in [128, 1024, 8192] {
        for (name, model, v) in variants(m) {
            let layers = attn_layers(model);
            let mut r = ChaCha8Rng::seed_from_u64(15);
            g.bench_function(BenchmarkId::new(name, format!("ctx={ctx}")), |b| {
                chunked(
                    b,
                    |_| attn_cache(&mut r, model, ctx),
                    |i, cache| run_attention(layers[i as usize % layers.len()], &x, cache, ctx as usize, v),
                )
            });
        }
    }
    g.finish();
}

/// Inputs of one half-layer call: sub-layer output h and residual R entering it, and the previous
/// MoE layer's router state.
type HalfLayerInput = (Array, Array, Array);

/// A whole half-layer: residual scaling + input norm + block, as the model's forward runs it.
fn run_half_layer(layer: &ZayaLayer, input: &HalfLayerInput, mut cache: AttnCache, offset: usize, v: Variant) {
    let (h, residual, prev_state) = input;
    let r = layer.res_scale.merge(Some(residual), h).unwrap();
    let x = layer.input_norm.forward(&r).unwrap();
    let (b, t) = (x.shape()[0], x.shape()[1]);
    let x2 = x.reshape(&[b * t, H]).unwrap();
    if let Some(attn) = &layer.self_attn {
        let y = attn.forward(&x2, b, t, &mut cache, offset, v.attn).unwrap();
        let mut outs = state_outputs(&cache);
        outs.push(y);
        outs.push(r);
        mlx_rs::transforms::eval(outs.iter()).unwrap();
    } else {
        let moe = layer.zaya_block.as_ref().unwrap();
        let out = moe.forward(&x2, &x2, Some(prev_state), v.moe).unwrap();
        eval(&[&out.y, &out.state, &out.skipped, &r]);
    }
}

fn bench_half_layers(c: &mut Criterion, m: &Models) {
    let mut rng = ChaCha8Rng::seed_from_u64(16);
    let rdim = m.fused.config().router_hidden_size as i32;
    let mut g = group(c, "half_layer", 3);
    for t in [1, PREFILL] {
        // 16 different inputs in turn, so the router picks different experts
        let inputs: Vec<HalfLayerInput> = (0..16)
            .map(|_| {
                (
                    randn(&mut rng, &[1, t, H]),
                    randn(&mut rng, &[1, t, H]),
                    randn(&mut rng, &[t, rdim]),
                )
            })
            .collect();
        let (ctx, label) = if t == 1 {
            (128, "T=1 ctx=128".to_string())
        } else {
            (0, format!("T={t}"))
        };
        for (name, model, v) in variants(m) {
            let attn = attn_layers(model);
            // MoE layers after the first (which has no EDA state input)
            let moe: Vec<&ZayaLayer> = moe_layers(model).into_iter().skip(1).collect();
            let mut r = ChaCha8Rng::seed_from_u64(17);
            g.bench_function(BenchmarkId::new(format!("attention/{name}"), &label), |b| {
                chunked(
                    b,
                    |_| attn_cache(&mut r, model, ctx),
                    |i, cache| {
                        let (layer, input) = (attn[i as usize % attn.len()], &inputs[i as usize % inputs.len()]);
                        run_half_layer(layer, input, cache, ctx as usize, v)
                    },
                )
            });
            let mut k = 0usize;
            g.bench_function(BenchmarkId::new(format!("moe/{name}"), &label), |b| {
                b.iter(|| {
                    k += 1;
                    run_half_layer(
                        moe[k % moe.len()],
                        &inputs[(k / moe.len()) % inputs.len()],
                        AttnCache::default(),
                        0,
                        v,
                    )
                })
            });
        }
    }
    g.finish();
}

fn all(c: &mut Criterion) {
    let m = load_models();
    bench_experts(c, &m);
    bench_lm_head(c, &m);
    bench_conv(c, &m);
    bench_attention(c, &m);
    bench_half_layers(c, &m);
}

criterion_group!(benches, all);
criterion_main!(benches);
