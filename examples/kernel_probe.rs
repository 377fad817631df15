//! Quick kernel timing harness (release mode), lighter than the criterion benches: the memory read
//! bandwidth of this machine right now, then the decode-shape (N = 1) cost of the ops one ZAYA1-8B
//! decode token runs: the tied lm_head affine GEMV, one MoE layer's TurboQuant experts, a 2048×2048
//! affine projection, the CCA conv step, and a tiny op (fork-join and graph overhead).
//!
//! `cargo run --release --example kernel_probe [-- FILTER]`; prints min and median over repetitions.
//! `tqprefill` (one MoE layer's experts over a prefill chunk) takes TQ_N token rows (default 512) over
//! TQ_E experts (default 16), routed uniformly at random or by TQ_COUNTS="c0,c1,…" rows per expert
//! (a synthetic bundle's chunk routes unevenly, e.g. "9,14,48,10,15,6,4,33,26,13,8,76,11,222,14,3").
//! `tqprefill`, `affprefill` and `router` run f32 and bf16, or the one PROBE_PRECISION names.
use std::time::Instant;

use half::f16;
use mlx_rs::Array;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use zaya_mlx::ext::{self, ExtMode, TqCodec, TqWeights};

const D: usize = 2048;

fn stats(mut v: Vec<f64>) -> (f64, f64) {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    (v[0], v[v.len() / 2])
}

fn time(reps: usize, mut f: impl FnMut()) -> (f64, f64) {
    f();
    let v = (0..reps)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    stats(v)
}

fn report(name: &str, bytes: f64, (min, med): (f64, f64)) {
    if bytes > 0.0 {
        println!(
            "{name:<40} min {min:8.3} ms  median {med:8.3} ms  ({:.1} GB/s at min, {:.1} at median)",
            bytes / min / 1e6,
            bytes / med / 1e6
        );
    } else {
        println!("{name:<40} min {min:8.3} ms  median {med:8.3} ms");
    }
}

fn u32s(rng: &mut ChaCha8Rng, n: usize) -> Vec<u32> {
    (0..n).map(|_| rng.gen()).collect()
}
fn f16s(rng: &mut ChaCha8Rng, n: usize, lo: f32, hi: f32) -> Vec<f16> {
    (0..n).map(|_| f16::from_f32(rng.gen_range(lo..hi))).collect()
}
fn f32s(rng: &mut ChaCha8Rng, n: usize, lo: f32, hi: f32) -> Vec<f32> {
    (0..n).map(|_| rng.gen_range(lo..hi)).collect()
}

/// The kernel modes a probe runs (the CPU kernels in each matmul precision): both precisions, or the
/// one PROBE_PRECISION names (f32 | bf16).
fn precisions() -> Vec<(&'static str, ext::MatmulMode)> {
    let mode = |precision| ext::MatmulMode {
        ext: ExtMode::Primitive,
        precision,
    };
    let all = [
        ("f32", mode(ext::MatmulPrecision::F32)),
        ("bf16", mode(ext::MatmulPrecision::Bf16)),
    ];
    match std::env::var("PROBE_PRECISION") {
        Ok(p) => {
            let one: Vec<_> = all.into_iter().filter(|(name, _)| *name == p).collect();
            assert!(!one.is_empty(), "PROBE_PRECISION must be f32 or bf16, got {p:?}");
            one
        }
        Err(_) => all.to_vec(),
    }
}

fn ev(a: &Array) {
    a.eval().unwrap();
}

/// `count` random 2048×2048 8-bit g32 affine weights `[w, scales, biases]`, evaluated; scales and
/// biases uniform in ±`scale` and ±`bias`.
fn affine_weights(rng: &mut ChaCha8Rng, count: usize, scale: f32, bias: f32) -> Vec<[Array; 3]> {
    let ng = D / 32;
    (0..count)
        .map(|_| {
            let w = Array::from_slice(&u32s(rng, D * D / 4), &[D as i32, (D / 4) as i32]);
            let s = Array::from_slice(&f16s(rng, D * ng, -scale, scale), &[D as i32, ng as i32]);
            let b = Array::from_slice(&f16s(rng, D * ng, -bias, bias), &[D as i32, ng as i32]);
            for a in [&w, &s, &b] {
                ev(a);
            }
            [w, s, b]
        })
        .collect()
}

/// Random 4-bit TurboQuant gate/up/down stacks of `e` experts (2048×2048), a sorted codebook and signs.
struct TqSet {
    g: Array,
    gn: Array,
    u: Array,
    un: Array,
    d: Array,
    dn: Array,
    cb: Array,
    signs: Array,
}

fn tq_weights(rng: &mut ChaCha8Rng, e: usize) -> TqSet {
    let cols = D / 8;
    let mut mk = || {
        let p = Array::from_slice(&u32s(rng, e * D * cols), &[e as i32, D as i32, cols as i32]);
        let n = Array::from_slice(&f16s(rng, e * D, 0.5, 2.0), &[e as i32, D as i32]);
        ev(&p);
        ev(&n);
        (p, n)
    };
    let (g, gn) = mk();
    let (u, un) = mk();
    let (d, dn) = mk();
    let mut cb = f32s(rng, 16, -0.06, 0.06);
    cb.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let cb = Array::from_slice(&cb, &[16]);
    let signs: Vec<f32> = (0..D).map(|_| if rng.gen::<bool>() { 1.0 } else { -1.0 }).collect();
    let signs = Array::from_slice(&signs, &[D as i32]);
    TqSet {
        g,
        gn,
        u,
        un,
        d,
        dn,
        cb,
        signs,
    }
}

impl TqSet {
    /// The 4-bit switch-GLU of `x` routed to `ids` (one codebook and signs for gate/up and down).
    fn switch_glu(&self, x: &Array, ids: &Array, mode: impl Into<ext::MatmulMode>) -> Array {
        let c = TqCodec {
            codebook: &self.cb,
            signs: &self.signs,
            bits: 4,
        };
        ext::tq_switch_glu(
            x,
            ids,
            TqWeights {
                packed: &self.g,
                norms: &self.gn,
            },
            TqWeights {
                packed: &self.u,
                norms: &self.un,
            },
            TqWeights {
                packed: &self.d,
                norms: &self.dn,
            },
            c,
            c,
            mode,
        )
        .unwrap()
    }
}

fn main() {
    let filter = std::env::args().nth(1).unwrap_or_default();
    let want = |n: &str| filter.is_empty() || n.contains(&filter);
    let mut rng = ChaCha8Rng::seed_from_u64(7);

    if want("bandwidth") {
        // 1 GiB summed by 2 threads (read bandwidth), and the project's copy measure
        let n = 1usize << 27;
        let buf: Vec<u64> = (0..n as u64).collect();
        let r = time(5, || {
            let (a, b) = buf.split_at(n / 2);
            let s = std::thread::scope(|sc| {
                let h = sc.spawn(|| a.iter().fold(0u64, |x, &y| x.wrapping_add(y)));
                let s2 = b.iter().fold(0u64, |x, &y| x.wrapping_add(y));
                h.join().unwrap().wrapping_add(s2)
            });
            std::hint::black_box(s);
        });
        report("read 1 GiB (2 threads)", (n * 8) as f64, r);
        println!(
            "copy bandwidth (bench::copy_bandwidth_gbs): {:.1} GB/s",
            zaya_mlx::tools::bench::copy_bandwidth_gbs(256 << 20, 5)
        );
    }

    if want("lm_head") {
        let (out, ng) = (262272usize, D / 32);
        let w = Array::from_slice(&u32s(&mut rng, out * D / 4), &[out as i32, (D / 4) as i32]);
        let s = Array::from_slice(&f16s(&mut rng, out * ng, -0.01, 0.01), &[out as i32, ng as i32]);
        let b = Array::from_slice(&f16s(&mut rng, out * ng, -1.0, 1.0), &[out as i32, ng as i32]);
        for a in [&w, &s, &b] {
            ev(a);
        }
        let x = Array::from_slice(&f32s(&mut rng, D, -1.0, 1.0), &[1, D as i32]);
        let bytes = (out * D + 4 * out * ng) as f64;
        report(
            "lm_head 262272x2048 8-bit g32 N=1",
            bytes,
            time(8, || {
                ev(&ext::affine_matmul(&x, &w, &s, &b, 8, 32, ExtMode::Primitive).unwrap())
            }),
        );
    }

    if want("proj") {
        // 16 copies of a 2048x2048 8-bit projection, used in turn (streams from DRAM)
        let ng = D / 32;
        let ws = affine_weights(&mut rng, 16, 0.01, 1.0);
        let x = Array::from_slice(&f32s(&mut rng, D, -1.0, 1.0), &[1, D as i32]);
        let mut k = 0;
        report(
            "affine 2048x2048 8-bit g32 N=1",
            (D * D + 4 * D * ng) as f64,
            time(64, || {
                k += 1;
                let [w, s, b] = &ws[k % 16];
                ev(&ext::affine_matmul(&x, w, s, b, 8, 32, ExtMode::Primitive).unwrap())
            }),
        );
    }

    if want("sizes") {
        // independent R×2048 8-bit GEMVs of one input, built as one graph and evaluated together
        // (≈ 256 MB of distinct weights each, beyond the L3): time per call against its bytes, to
        // separate a fixed per-kernel cost from the streaming rate
        let x = Array::from_slice(&f32s(&mut rng, D, -1.0, 1.0), &[1, D as i32]);
        let ng = D / 32;
        let mut fit = Vec::new();
        for rows in [512usize, 1024, 2048, 4096, 8192] {
            let bytes = rows * D + 4 * rows * ng;
            let count = ((256usize << 20) / bytes).max(2);
            let ws: Vec<[Array; 3]> = (0..count)
                .map(|_| {
                    let w = Array::from_slice(&u32s(&mut rng, rows * D / 4), &[rows as i32, (D / 4) as i32]);
                    let s = Array::from_slice(&f16s(&mut rng, rows * ng, -0.01, 0.01), &[rows as i32, ng as i32]);
                    let b = Array::from_slice(&f16s(&mut rng, rows * ng, -1.0, 1.0), &[rows as i32, ng as i32]);
                    for a in [&w, &s, &b] {
                        ev(a);
                    }
                    [w, s, b]
                })
                .collect();
            let r = time(5, || {
                let ys: Vec<Array> = ws
                    .iter()
                    .map(|[w, s, b]| ext::affine_matmul(&x, w, s, b, 8, 32, ExtMode::Primitive).unwrap())
                    .collect();
                mlx_rs::transforms::eval(ys.iter().collect::<Vec<_>>()).unwrap();
            });
            let per = (r.0 / count as f64, r.1 / count as f64);
            report(&format!("{count} × affine {rows}x2048 (per call)"), bytes as f64, per);
            fit.push((bytes as f64, per.0));
        }
        // least squares time = a + bytes / bw over the minima
        let n = fit.len() as f64;
        let (sx, sy) = fit.iter().fold((0.0, 0.0), |(a, b), (x, y)| (a + x, b + y));
        let (sxx, sxy) = fit.iter().fold((0.0, 0.0), |(a, b), (x, y)| (a + x * x, b + x * y));
        let slope = (n * sxy - sx * sy) / (n * sxx - sx * sx);
        let icpt = (sy - slope * sx) / n;
        println!(
            "  fit: {:.1} µs per call + bytes at {:.1} GB/s",
            icpt * 1e3,
            1e-6 / slope
        );
    }

    if want("cached") {
        // one 256×2048 8-bit weight (0.5 MB, L2-resident) in 256 GEMVs evaluated together: the
        // kernel's compute rate without DRAM (run with ZAYA_THREADS=1 for one core)
        let rows = 256usize;
        let ng = D / 32;
        let x = Array::from_slice(&f32s(&mut rng, D, -1.0, 1.0), &[1, D as i32]);
        let w = Array::from_slice(&u32s(&mut rng, rows * D / 4), &[rows as i32, (D / 4) as i32]);
        let s = Array::from_slice(&f16s(&mut rng, rows * ng, -0.01, 0.01), &[rows as i32, ng as i32]);
        let b = Array::from_slice(&f16s(&mut rng, rows * ng, -1.0, 1.0), &[rows as i32, ng as i32]);
        for a in [&w, &s, &b] {
            ev(a);
        }
        let count = 256;
        let r = time(5, || {
            let ys: Vec<Array> = (0..count)
                .map(|_| ext::affine_matmul(&x, &w, &s, &b, 8, 32, ExtMode::Primitive).unwrap())
                .collect();
            mlx_rs::transforms::eval(ys.iter().collect::<Vec<_>>()).unwrap();
        });
        report(
            "cached affine 256x2048 (per call)",
            (rows * D + 4 * rows * ng) as f64,
            (r.0 / count as f64, r.1 / count as f64),
        );
    }

    if want("chain") {
        // 64 chained 2048x2048 8-bit projections (16 weights in turn) built as one graph and
        // evaluated once, as a decode step runs them: per-call cost without the host round trip
        let ng = D / 32;
        // small scales keep the chained activations bounded
        let ws = affine_weights(&mut rng, 16, 0.0001, 0.01);
        let x0 = Array::from_slice(&f32s(&mut rng, D, -1.0, 1.0), &[1, D as i32]);
        let calls = 64;
        let r = time(8, || {
            let mut x = x0.clone();
            for k in 0..calls {
                let [w, s, b] = &ws[k % 16];
                x = ext::affine_matmul(&x, w, s, b, 8, 32, ExtMode::Primitive).unwrap();
            }
            ev(&x)
        });
        report(
            "chain of 64 affine 2048x2048 (per call)",
            (D * D + 4 * D * ng) as f64,
            (r.0 / calls as f64, r.1 / calls as f64),
        );
    }

    if want("tq") {
        let e = 16usize;
        let set = tq_weights(&mut rng, e);
        let x = Array::from_slice(&f32s(&mut rng, D, -1.0, 1.0), &[1, D as i32]);
        let ids: Vec<Array> = (0..e as i32).map(|i| Array::from_slice(&[i], &[1])).collect();
        let bytes = 3.0 * (D * D / 2 + D * 2) as f64;
        for (name, mode) in [
            ("tq_switch_glu 1 expert N=1 fused", ExtMode::Primitive),
            ("tq_switch_glu 1 expert N=1 portable", ExtMode::Portable),
        ] {
            let mut k = 0;
            report(
                name,
                bytes,
                time(if mode == ExtMode::Primitive { 64 } else { 8 }, || {
                    k += 1;
                    let y = set.switch_glu(&x, &ids[k % e], mode);
                    ev(&y)
                }),
            );
        }
    }

    if want("tqcached") {
        // one expert (6.3 MB, L3-resident) in 64 switch-GLUs evaluated together: the kernel's compute
        // rate with little DRAM traffic (ZAYA_THREADS=1 for one core)
        let set = tq_weights(&mut rng, 1);
        let x = Array::from_slice(&f32s(&mut rng, D, -1.0, 1.0), &[1, D as i32]);
        let id = Array::from_slice(&[0i32], &[1]);
        let count = 64;
        let r = time(5, || {
            let ys: Vec<Array> = (0..count)
                .map(|_| set.switch_glu(&x, &id, ExtMode::Primitive))
                .collect();
            mlx_rs::transforms::eval(ys.iter().collect::<Vec<_>>()).unwrap();
        });
        report(
            "cached tq_switch_glu 1 expert (per call)",
            3.0 * (D * D / 2 + D * 2) as f64,
            (r.0 / count as f64, r.1 / count as f64),
        );
    }

    if want("tqprefill") {
        // TQ_N rows (default 512) spread over TQ_E experts (default 16)
        let env = |k: &str, d: usize| std::env::var(k).ok().and_then(|v| v.parse().ok()).unwrap_or(d);
        let e = env("TQ_E", 16);
        let set = tq_weights(&mut rng, e);
        let n = env("TQ_N", 512);
        let x = Array::from_slice(&f32s(&mut rng, n * D, -1.0, 1.0), &[n as i32, D as i32]);
        // TQ_COUNTS="c0,c1,…": rows per expert (an uneven prefill chunk's routes; they sum to TQ_N),
        // otherwise uniform at random
        let ids: Vec<i32> = match std::env::var("TQ_COUNTS") {
            Ok(c) => {
                let mut v: Vec<i32> = c
                    .split(',')
                    .enumerate()
                    .flat_map(|(i, k)| {
                        let k: usize = k.trim().parse().expect("TQ_COUNTS: comma-separated row counts");
                        std::iter::repeat(i as i32).take(k)
                    })
                    .collect();
                assert!(
                    v.len() == n && v.iter().all(|&i| (i as usize) < e),
                    "TQ_COUNTS must sum to TQ_N over TQ_E experts"
                );
                v.shuffle(&mut rng);
                v
            }
            Err(_) => (0..n).map(|_| rng.gen_range(0..e as i32)).collect(),
        };
        let ids = Array::from_slice(&ids, &[n as i32]);
        for (name, mode) in precisions() {
            let r = time(3, || {
                let y = set.switch_glu(&x, &ids, mode);
                ev(&y)
            });
            let macs = n as f64 * 3.0 * (D * D) as f64;
            println!(
                "tq_switch_glu N={n} ({e} experts) {name}: min {:.1} ms median {:.1} ms ({:.1} GMAC/s)",
                r.0,
                r.1,
                macs / r.0 / 1e6
            );
        }
    }

    if want("routerprefill") {
        // ROUTER_N token rows (default 512) through 16 MoE layers' routers in turn (f16 weights:
        // down 256×2048, MLP 256×256 twice and 17×256, with the depth-carried state)
        let n: usize = std::env::var("ROUTER_N")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(512);
        let r = 256usize;
        let layers: Vec<[Array; 10]> = (0..16)
            .map(|_| {
                let a = [
                    Array::from_slice(&f16s(&mut rng, r * D, -0.02, 0.02), &[r as i32, D as i32]),
                    Array::from_slice(&f32s(&mut rng, r, -0.1, 0.1), &[r as i32]),
                    Array::from_slice(&f32s(&mut rng, r, 0.5, 1.5), &[r as i32]),
                    Array::from_slice(&f16s(&mut rng, r * r, -0.06, 0.06), &[r as i32, r as i32]),
                    Array::from_slice(&f32s(&mut rng, r, -0.1, 0.1), &[r as i32]),
                    Array::from_slice(&f16s(&mut rng, r * r, -0.06, 0.06), &[r as i32, r as i32]),
                    Array::from_slice(&f32s(&mut rng, r, -0.1, 0.1), &[r as i32]),
                    Array::from_slice(&f16s(&mut rng, 17 * r, -0.06, 0.06), &[17, r as i32]),
                    Array::from_slice(&f32s(&mut rng, 17, -0.01, 0.01), &[17]),
                    Array::from_slice(&f32s(&mut rng, r, 0.5, 1.5), &[r as i32]),
                ];
                for x in &a {
                    ev(x);
                }
                a
            })
            .collect();
        let x = Array::from_slice(&f32s(&mut rng, n * D, -1.0, 1.0), &[n as i32, D as i32]);
        let prev = Array::from_slice(&f32s(&mut rng, n * r, -1.0, 1.0), &[n as i32, r as i32]);
        let macs = 16.0 * n as f64 * (r * D + 2 * r * r + 17 * r) as f64;
        for (name, mode) in precisions() {
            let t = time(5, || {
                let outs: Vec<Array> = layers
                    .iter()
                    .map(|[dw, db, nw, w0, b0, w2, b2, w4, bal, ss]| {
                        let w = ext::RouterWeights {
                            down_w: dw,
                            down_b: db,
                            norm_w: nw,
                            eps: 1e-5,
                            w0,
                            b0,
                            w2,
                            b2,
                            w4,
                            balancing: bal,
                            num_experts: 16,
                        };
                        ext::router(&x, Some((&prev, ss)), w, mode).unwrap().state
                    })
                    .collect();
                mlx_rs::transforms::eval(outs.iter().collect::<Vec<_>>()).unwrap();
            });
            println!(
                "router 16 layers N={n} {name}: min {:.1} ms median {:.1} ms ({:.1} GMAC/s)",
                t.0,
                t.1,
                macs / t.0 / 1e6
            );
        }
    }

    if want("affprefill") {
        // N token rows (AFF_N, default 512) through 16 2048x2048 8-bit projections in turn
        let ws = affine_weights(&mut rng, 16, 0.01, 1.0);
        let n: usize = std::env::var("AFF_N").ok().and_then(|v| v.parse().ok()).unwrap_or(512);
        let x = Array::from_slice(&f32s(&mut rng, n * D, -1.0, 1.0), &[n as i32, D as i32]);
        for (name, mode) in precisions() {
            let r = time(3, || {
                let ys: Vec<Array> = ws
                    .iter()
                    .map(|[w, s, b]| ext::affine_matmul(&x, w, s, b, 8, 32, mode).unwrap())
                    .collect();
                mlx_rs::transforms::eval(ys.iter().collect::<Vec<_>>()).unwrap();
            });
            let macs = 16.0 * n as f64 * (D * D) as f64;
            println!(
                "affine 16 x 2048x2048 N={n} {name}: min {:.1} ms median {:.1} ms ({:.1} GMAC/s)",
                r.0,
                r.1,
                macs / r.0 / 1e6
            );
        }
    }

    if want("conv") {
        let (c, k0, k1, cg) = (1280i32, 2i32, 2i32, 128i32);
        let s = (k0 - 1) + (k1 - 1);
        let u = Array::from_slice(&f32s(&mut rng, c as usize, -1.0, 1.0), &[1, 1, c]);
        let st = Array::from_slice(&f32s(&mut rng, (c * s) as usize, -1.0, 1.0), &[1, c, s]);
        let w0 = Array::from_slice(&f32s(&mut rng, (c * k0) as usize, -1.0, 1.0), &[c, k0, 1]);
        let b0 = Array::from_slice(&f32s(&mut rng, c as usize, -1.0, 1.0), &[c]);
        let w1 = Array::from_slice(&f32s(&mut rng, (c * k1 * cg) as usize, -1.0, 1.0), &[c, k1, cg]);
        let b1 = Array::from_slice(&f32s(&mut rng, c as usize, -1.0, 1.0), &[c]);
        for a in [&u, &st, &w0, &b0, &w1, &b1] {
            ev(a);
        }
        report(
            "cca_conv T=1",
            0.0,
            time(200, || {
                let (z, ns) = ext::cca_conv(&u, &st, &w0, &b0, &w1, &b1, ExtMode::Primitive).unwrap();
                mlx_rs::transforms::eval([&z, &ns]).unwrap();
            }),
        );
    }

    if want("attn") {
        // prefill chunk of 512 queries at the end of an ATTN_LEN-position context (default 2048; 512 is
        // a first chunk), and one decode query
        let cap: i32 = std::env::var("ATTN_LEN")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(2048);
        assert!(cap >= 512, "ATTN_LEN must be at least the chunk's 512 queries");
        let d = 128i32;
        let k = Array::from_slice(&f32s(&mut rng, (2 * cap * d) as usize, -1.0, 1.0), &[1, 2, cap, d]);
        let v = Array::from_slice(&f32s(&mut rng, (2 * cap * d) as usize, -1.0, 1.0), &[1, 2, cap, d]);
        ev(&k);
        ev(&v);
        for t in [512i32, 1] {
            let q = Array::from_slice(&f32s(&mut rng, (8 * t * d) as usize, -1.0, 1.0), &[1, 8, t, d]);
            ev(&q);
            let macs = 2.0 * 8.0 * (t as f64) * (cap as f64 - t as f64 / 2.0) * d as f64;
            let r = time(5, || {
                ev(&ext::cca_attention(&q, &k, &v, cap as usize, 0.088, true, ExtMode::Primitive).unwrap())
            });
            println!(
                "cca_attention T={t} len={cap}: min {:.3} ms median {:.3} ms ({:.1} GMAC/s)",
                r.0,
                r.1,
                macs / r.0 / 1e6
            );
        }
    }

    if want("kv") {
        // KV append into a large cache: in place (µs) unless the old storage is copied (≈1 ms)
        let cap = 8192;
        let mut k = mlx_rs::ops::zeros::<f32>(&[1, 2, cap, 128]).unwrap();
        let mut v = mlx_rs::ops::zeros::<f32>(&[1, 2, cap, 128]).unwrap();
        mlx_rs::transforms::eval([&k, &v]).unwrap();
        let kn = Array::from_slice(&f32s(&mut rng, 256, -1.0, 1.0), &[1, 2, 1, 128]);
        ev(&kn);
        let mut pos = 0usize;
        report(
            "kv_append into [1,2,8192,128] x2",
            0.0,
            time(100, || {
                let (k2, v2) = ext::kv_append(&k, &v, &kn, &kn, pos).unwrap();
                k = k2;
                v = v2;
                mlx_rs::transforms::eval([&k, &v]).unwrap();
                pos += 1;
            }),
        );
    }

    if want("tiny") {
        let w = Array::from_slice(&f16s(&mut rng, 64 * D, -0.1, 0.1), &[64, D as i32]);
        ev(&w);
        let x = Array::from_slice(&f32s(&mut rng, D, -1.0, 1.0), &[1, D as i32]);
        report(
            "dense 64x2048 f16 N=1 (overhead)",
            0.0,
            time(
                500,
                || ev(&ext::dense_matmul(&x, &w, None, ExtMode::Primitive).unwrap()),
            ),
        );
        let b1 = Array::from_slice(&f32s(&mut rng, D, -1.0, 1.0), &[D as i32]);
        ev(&b1);
        report("100 chained adds [1,2048]+[2048] (per add)", 0.0, {
            let (a, b) = time(50, || {
                let mut y = x.clone();
                for _ in 0..100 {
                    y = y.add(&b1).unwrap();
                }
                ev(&y)
            });
            (a / 100.0, b / 100.0)
        });
        let x3 = x.reshape(&[1, 1, D as i32]).unwrap();
        report("100 chained rms_norm [1,1,2048] (per norm)", 0.0, {
            let (a, b) = time(50, || {
                let mut y = x3.clone();
                for _ in 0..100 {
                    y = mlx_rs::fast::rms_norm(&y, Some(&b1), 1e-5).unwrap();
                }
                ev(&y)
            });
            (a / 100.0, b / 100.0)
        });
        let ones = Array::from_slice(&vec![1.0f32; D], &[D as i32]);
        let zeros = Array::from_slice(&vec![0.0f32; D], &[D as i32]);
        report("100 chained ext::res_norm [1,2048] (per node)", 0.0, {
            let (a, b) = time(50, || {
                let (mut r, mut h) = (x.clone(), x.clone());
                for _ in 0..100 {
                    let (r2, x2) =
                        ext::res_norm(&h, Some(&r), &zeros, &ones, None, &ones, 1e-5, ExtMode::Primitive).unwrap();
                    r = r2;
                    h = x2;
                }
                ev(&h)
            });
            (a / 100.0, b / 100.0)
        });
        report(
            "mlx add [2048] (graph overhead)",
            0.0,
            time(500, || ev(&x.add(&x).unwrap())),
        );
    }
}
