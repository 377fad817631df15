//! Kernel benchmarks at ZAYA1-8B shapes: the fused TurboQuant switch-GLU (one MoE layer's 16 experts,
//! H = I = O = 2048, 4 bits) against its portable plain-MLX-ops graph, and the affine matmul (8-bit,
//! group 32, f16 scales) against MLX's stock `quantized_matmul`: the tied lm_head 262272×2048 and a
//! 2048×2048 projection; and the float-weight GEMV (the router's f16 256×2048 down_proj) against
//! `matmul` with the weight pre-cast to f32. Decode (N = 1) and prefill (N = 128) shapes. Throughput is the weight bytes
//! read per call (codes + norms, or codes + scales + biases); for prefill that counts each weight once.
//! Decode shapes cycle through more weights than the 32 MiB L3 holds (the 16 experts in turn, 16
//! copies of the 2048×2048 projection) so the weights stream from DRAM as in real decoding.
//!
//! The fused layer primitives (`layers_decode`, `attention_prefill`) run at the model's decode shapes.
//!
//! `cargo bench --bench kernels` (a few minutes; sample counts are kept small). Filter with e.g.
//! `cargo bench --bench kernels -- lm_head`. The kernel ISA is the best the CPU has unless
//! ZAYA_EXT_ISA=scalar|avx2|avx512 caps it; the `isa` groups compare the ISAs directly.
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use half::f16;
use mlx_rs::Array;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use zaya_mlx::ext::{
    affine_matmul, dense_matmul, detected_isa, set_max_isa, tq_switch_glu, ExtMode, KernelIsa, TqCodec, TqWeights,
};

const E: usize = 16;
const D: usize = 2048;

fn eval(a: &Array) {
    a.eval().unwrap();
}

fn rand_u32(rng: &mut ChaCha8Rng, n: usize) -> Vec<u32> {
    (0..n).map(|_| rng.gen()).collect()
}

fn rand_f16(rng: &mut ChaCha8Rng, n: usize, lo: f32, hi: f32) -> Vec<f16> {
    (0..n).map(|_| f16::from_f32(rng.gen_range(lo..hi))).collect()
}

fn rand_f32(rng: &mut ChaCha8Rng, n: usize, lo: f32, hi: f32) -> Vec<f32> {
    (0..n).map(|_| rng.gen_range(lo..hi)).collect()
}

struct Tq {
    packed: [Array; 3],
    norms: [Array; 3],
    cb: Array,
    signs: Array,
}

fn tq_layer(rng: &mut ChaCha8Rng) -> Tq {
    let cols = D / 8;
    let mk = |rng: &mut ChaCha8Rng| {
        let p = Array::from_slice(&rand_u32(rng, E * D * cols), &[E as i32, D as i32, cols as i32]);
        let n = Array::from_slice(&rand_f16(rng, E * D, 0.5, 2.0), &[E as i32, D as i32]);
        eval(&p);
        eval(&n);
        (p, n)
    };
    let (g, gn) = mk(rng);
    let (u, un) = mk(rng);
    let (d, dn) = mk(rng);
    let mut cb = rand_f32(rng, 16, -0.06, 0.06);
    cb.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let signs: Vec<f32> = (0..D).map(|_| if rng.gen::<bool>() { 1.0 } else { -1.0 }).collect();
    Tq {
        packed: [g, u, d],
        norms: [gn, un, dn],
        cb: Array::from_slice(&cb, &[16]),
        signs: Array::from_slice(&signs, &[D as i32]),
    }
}

fn run_tq(t: &Tq, x: &Array, idx: &Array, mode: ExtMode) -> Array {
    let w = |i: usize| TqWeights {
        packed: &t.packed[i],
        norms: &t.norms[i],
    };
    let c = TqCodec {
        codebook: &t.cb,
        signs: &t.signs,
        bits: 4,
    };
    tq_switch_glu(x, idx, w(0), w(1), w(2), c, c, mode).unwrap()
}

fn isas() -> Vec<KernelIsa> {
    [KernelIsa::Scalar, KernelIsa::Avx2, KernelIsa::Avx512]
        .into_iter()
        .filter(|i| *i <= detected_isa())
        .collect()
}

fn bench_tq(c: &mut Criterion) {
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let t = tq_layer(&mut rng);
    let per_expert = 3 * (D * D / 2 + D * 2) as u64; // codes + f16 norms of gate, up, down

    let mut g = c.benchmark_group("tq_switch_glu");
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    // decode: one token, one expert (a different one each call)
    let x1 = Array::from_slice(&rand_f32(&mut rng, D, -1.0, 1.0), &[1, D as i32]);
    let i1: Vec<Array> = (0..E as i32).map(|e| Array::from_slice(&[e], &[1])).collect();
    g.throughput(Throughput::Bytes(per_expert));
    for (name, mode) in [("fused", ExtMode::Primitive), ("portable", ExtMode::Portable)] {
        let mut k = 0;
        g.bench_function(BenchmarkId::new(name, "N=1"), |b| {
            b.iter(|| {
                k += 1;
                eval(&run_tq(&t, &x1, &i1[k % E], mode))
            })
        });
    }
    // prefill: 128 tokens routed at random over the 16 experts (every expert's weights read once)
    let n = 128;
    let xp = Array::from_slice(&rand_f32(&mut rng, n * D, -1.0, 1.0), &[n as i32, D as i32]);
    let ids: Vec<i32> = (0..n).map(|_| rng.gen_range(0..E as i32)).collect();
    let ip = Array::from_slice(&ids, &[n as i32]);
    g.throughput(Throughput::Bytes(per_expert * E as u64));
    for (name, mode) in [("fused", ExtMode::Primitive), ("portable", ExtMode::Portable)] {
        g.bench_function(BenchmarkId::new(name, "N=128"), |b| {
            b.iter(|| eval(&run_tq(&t, &xp, &ip, mode)))
        });
    }
    g.finish();

    let mut g = c.benchmark_group("tq_switch_glu_isa");
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    g.throughput(Throughput::Bytes(per_expert));
    for isa in isas() {
        let prev = set_max_isa(isa);
        let mut k = 0;
        g.bench_function(BenchmarkId::new(format!("{isa:?}"), "N=1"), |b| {
            b.iter(|| {
                k += 1;
                eval(&run_tq(&t, &x1, &i1[k % E], ExtMode::Primitive))
            })
        });
        set_max_isa(prev);
    }
    g.finish();
}

struct Aff {
    w: Array,
    s: Array,
    b: Array,
    bytes: u64,
}

fn affine_weight(rng: &mut ChaCha8Rng, out: usize, inp: usize) -> Aff {
    let ng = inp / 32;
    let w = Array::from_slice(&rand_u32(rng, out * inp / 4), &[out as i32, (inp / 4) as i32]);
    let s = Array::from_slice(&rand_f16(rng, out * ng, -0.01, 0.01), &[out as i32, ng as i32]);
    let b = Array::from_slice(&rand_f16(rng, out * ng, -1.0, 1.0), &[out as i32, ng as i32]);
    eval(&w);
    eval(&s);
    eval(&b);
    Aff {
        w,
        s,
        b,
        bytes: (out * inp + 2 * 2 * out * ng) as u64,
    }
}

/// `ws`: copies of one weight, used in turn (so small weights stream from DRAM like in a model).
fn bench_affine_case(c: &mut Criterion, group: &str, ws: &[Aff], inp: usize, ns: &[usize], isa: bool) {
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    let mut g = c.benchmark_group(group);
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    g.throughput(Throughput::Bytes(ws[0].bytes));
    for &n in ns {
        let x = Array::from_slice(&rand_f32(&mut rng, n * inp, -1.0, 1.0), &[n as i32, inp as i32]);
        let id = format!("N={n}");
        let mut k = 0;
        let mut next = || {
            k += 1;
            &ws[k % ws.len()]
        };
        g.bench_function(BenchmarkId::new("ours", &id), |b| {
            b.iter(|| {
                let a = next();
                eval(&affine_matmul(&x, &a.w, &a.s, &a.b, 8, 32, ExtMode::Primitive).unwrap())
            })
        });
        g.bench_function(BenchmarkId::new("mlx_quantized_matmul", &id), |b| {
            b.iter(|| {
                let a = next();
                eval(&mlx_rs::ops::quantized_matmul(&x, &a.w, &a.s, &a.b, true, 32, 8).unwrap())
            })
        });
        if isa && n == 1 {
            for level in isas() {
                let prev = set_max_isa(level);
                g.bench_function(BenchmarkId::new(format!("ours_{level:?}"), &id), |b| {
                    b.iter(|| {
                        let a = next();
                        eval(&affine_matmul(&x, &a.w, &a.s, &a.b, 8, 32, ExtMode::Primitive).unwrap())
                    })
                });
                set_max_isa(prev);
            }
        }
    }
    g.finish();
}

fn bench_affine(c: &mut Criterion) {
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let proj: Vec<Aff> = (0..16).map(|_| affine_weight(&mut rng, D, D)).collect();
    bench_affine_case(c, "affine_2048x2048_8bit_g32", &proj, D, &[1, 128], false);
    drop(proj);
    let head = [affine_weight(&mut rng, 262272, D)];
    bench_affine_case(c, "lm_head_262272x2048_8bit_g32", &head, D, &[1], true);
}

fn bench_dense(c: &mut Criterion) {
    // The router's down_proj: f16 [256, 2048]; 64 copies (64 MiB) so it streams from DRAM.
    let mut rng = ChaCha8Rng::seed_from_u64(4);
    let (out, inp, copies) = (256usize, D, 64usize);
    let ws: Vec<Array> = (0..copies)
        .map(|_| {
            let a = Array::from_slice(&rand_f16(&mut rng, out * inp, -0.1, 0.1), &[out as i32, inp as i32]);
            eval(&a);
            a
        })
        .collect();
    let w32: Vec<Array> = ws
        .iter()
        .map(|a| {
            let b = a.as_dtype(mlx_rs::Dtype::Float32).unwrap();
            eval(&b);
            b
        })
        .collect();
    let x = Array::from_slice(&rand_f32(&mut rng, inp, -1.0, 1.0), &[1, inp as i32]);
    let mut g = c.benchmark_group("dense_f16_256x2048");
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    g.throughput(Throughput::Bytes((out * inp * 2) as u64));
    let mut k = 0;
    g.bench_function(BenchmarkId::new("ours", "N=1"), |b| {
        b.iter(|| {
            k += 1;
            eval(&dense_matmul(&x, &ws[k % copies], None, ExtMode::Primitive).unwrap())
        })
    });
    g.bench_function(BenchmarkId::new("mlx_matmul_f32_weight", "N=1"), |b| {
        b.iter(|| {
            k += 1;
            eval(&mlx_rs::ops::matmul(&x, w32[k % copies].t()).unwrap())
        })
    });
    g.finish();
}

/// The fused layer primitives at ZAYA1-8B decode shapes (residual merge + RMSNorm, router, CCA q/k
/// chain, attention over a 2048-position cache) and the attention of a 512-token prefill chunk.
fn bench_layers(c: &mut Criterion) {
    use zaya_mlx::ext::{cca_attention, cca_qk, res_norm, router, CcaQkParams, RouterWeights};
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let arr = |rng: &mut ChaCha8Rng, shape: &[i32], lo: f32, hi: f32| {
        let n = shape.iter().product::<i32>() as usize;
        let a = Array::from_slice(&rand_f32(rng, n, lo, hi), shape);
        eval(&a);
        a
    };
    let f16a = |rng: &mut ChaCha8Rng, shape: &[i32], s: f32| {
        let n = shape.iter().product::<i32>() as usize;
        let a = Array::from_slice(&rand_f16(rng, n, -s, s), shape);
        eval(&a);
        a
    };
    let d = D as i32;
    let mut g = c.benchmark_group("layers_decode");
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(2));

    let (h, r) = (arr(&mut rng, &[1, d], -1.0, 1.0), arr(&mut rng, &[1, d], -1.0, 1.0));
    let vs: Vec<Array> = (0..5).map(|_| arr(&mut rng, &[d], 0.5, 1.5)).collect();
    g.bench_function("res_norm", |b| {
        b.iter(|| {
            let (r2, x) = res_norm(
                &h,
                Some(&r),
                &vs[0],
                &vs[1],
                Some((&vs[2], &vs[3])),
                &vs[4],
                1e-5,
                ExtMode::Primitive,
            )
            .unwrap();
            mlx_rs::transforms::eval([&r2, &x]).unwrap();
        })
    });

    let rh = 256;
    let (dw, w0, w2, w4) = (
        f16a(&mut rng, &[rh, d], 0.05),
        f16a(&mut rng, &[rh, rh], 0.1),
        f16a(&mut rng, &[rh, rh], 0.1),
        f16a(&mut rng, &[17, rh], 0.5),
    );
    let rv: Vec<Array> = (0..4).map(|_| arr(&mut rng, &[rh], -0.1, 0.1)).collect();
    let bal = arr(&mut rng, &[17], -0.01, 0.01);
    let prev = arr(&mut rng, &[1, rh], -1.0, 1.0);
    let w = RouterWeights {
        down_w: &dw,
        down_b: &rv[0],
        norm_w: &rv[1],
        eps: 1e-5,
        w0: &w0,
        b0: &rv[2],
        w2: &w2,
        b2: &rv[3],
        w4: &w4,
        balancing: &bal,
        num_experts: 16,
    };
    g.bench_function("router", |b| {
        b.iter(|| {
            let o = router(&h, Some((&prev, &rv[1])), w, ExtMode::Primitive).unwrap();
            mlx_rs::transforms::eval([&o.choice, &o.state]).unwrap();
        })
    });

    let (hq, hk, hd) = (8, 2, 128);
    let cc = (hq + hk) * hd;
    let u = arr(&mut rng, &[1, cc], -1.0, 1.0);
    let st = arr(&mut rng, &[1, cc, 2], -1.0, 1.0);
    let (w0c, b0c, w1c, b1c) = (
        f16a(&mut rng, &[cc, 2, 1], 0.5),
        f16a(&mut rng, &[cc], 0.1),
        f16a(&mut rng, &[cc, 2, hd], 0.1),
        f16a(&mut rng, &[cc], 0.1),
    );
    let temp = arr(&mut rng, &[hk], 0.5, 1.5);
    let vals = arr(&mut rng, &[1, hk * hd], -1.0, 1.0);
    let p = CcaQkParams {
        q_heads: 8,
        kv_heads: 2,
        rotary_dim: 64,
        rope_theta: 5e6,
        clamp_temp: false,
        offset: 2047,
    };
    g.bench_function("cca_qk T=1", |b| {
        b.iter(|| {
            let o = cca_qk(&u, &st, &w0c, &b0c, &w1c, &b1c, &temp, &vals, p, ExtMode::Primitive).unwrap();
            mlx_rs::transforms::eval([&o.q, &o.k, &o.v, &o.conv_state]).unwrap();
        })
    });

    let cap = 2048;
    let k = arr(&mut rng, &[1, hk, cap, hd], -1.0, 1.0);
    let v = arr(&mut rng, &[1, hk, cap, hd], -1.0, 1.0);
    let q1 = arr(&mut rng, &[1, hq, 1, hd], -1.0, 1.0);
    g.bench_function("cca_attention T=1 len=2048", |b| {
        b.iter(|| eval(&cca_attention(&q1, &k, &v, cap as usize, 0.088, true, ExtMode::Primitive).unwrap()))
    });
    g.finish();

    let mut g = c.benchmark_group("attention_prefill");
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(3));
    let q512 = arr(&mut rng, &[1, hq, 512, hd], -1.0, 1.0);
    for (name, mode) in [("fused", ExtMode::Primitive), ("portable", ExtMode::Portable)] {
        g.bench_function(BenchmarkId::new(name, "T=512 len=2048"), |b| {
            b.iter(|| eval(&cca_attention(&q512, &k, &v, cap as usize, 0.088, true, mode).unwrap()))
        });
    }
    g.finish();
}

criterion_group!(benches, bench_tq, bench_affine, bench_dense, bench_layers);
criterion_main!(benches);
