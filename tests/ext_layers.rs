//! The fused layer primitives of mlx-ext (residual merge + RMSNorm, router, MoE output, affine
//! multi-matmul, CCA q/k chain, CCA attention, KV append) against direct f64 loops written from
//! docs/model.md (§2.3, §2.5, §3.2, §4.2, §4.4) and against their portable plain-MLX-ops graphs;
//! strided (transposed / broadcast) inputs; typed errors for bad arguments.
use half::f16;
use mlx_rs::{Array, Dtype};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use zaya_mlx::ext::{self, AffineWeight, CcaQkParams, ExtMode, RouterWeights};

fn rv(rng: &mut ChaCha8Rng, n: usize, lo: f32, hi: f32) -> Vec<f32> {
    (0..n).map(|_| rng.gen_range(lo..hi)).collect()
}

fn arr(v: &[f32], shape: &[i32]) -> Array {
    Array::from_slice(v, shape)
}

fn vals(a: &Array) -> Vec<f32> {
    let a = a.as_dtype(Dtype::Float32).unwrap().contiguous().unwrap();
    a.eval().unwrap();
    a.as_slice::<f32>().to_vec()
}

fn ivals(a: &Array) -> Vec<i32> {
    a.eval().unwrap();
    a.as_slice::<i32>().to_vec()
}

/// max |a - b| ≤ rel · max(|b|, 1e-3 scale floor)
fn close(a: &[f32], b: &[f64], rel: f64, what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: length");
    let m = b.iter().fold(0f64, |m, v| m.max(v.abs())).max(1e-3);
    let d = a.iter().zip(b).fold(0f64, |d, (x, y)| d.max((*x as f64 - y).abs()));
    assert!(d <= rel * m, "{what}: max|Δ| {d:.3e} > {rel:.1e}·{m:.3e}");
}

fn to64(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

const MODES: [ExtMode; 2] = [ExtMode::Primitive, ExtMode::Portable];

// ---- res_norm ----------------------------------------------------------------------------------------

#[test]
fn res_norm_matches_f64_loop() {
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let (rows, h) = (5usize, 96usize);
    let hv = rv(&mut rng, rows * h, -2.0, 2.0);
    let rvv = rv(&mut rng, rows * h, -3.0, 3.0);
    let (hb, hs, rb, rs, w) = (
        rv(&mut rng, h, -0.5, 0.5),
        rv(&mut rng, h, 0.5, 1.5),
        rv(&mut rng, h, -0.5, 0.5),
        rv(&mut rng, h, 0.5, 1.5),
        rv(&mut rng, h, 0.5, 1.5),
    );
    let eps = 1e-5f32;
    for (with_r, with_rsb) in [(false, false), (true, false), (true, true)] {
        // reference: R' = (h + hb)·hs + [(r + rb)·rs | r], x = R'/sqrt(mean(R'²) + eps)·w
        let mut r_ref = vec![0f64; rows * h];
        let mut x_ref = vec![0f64; rows * h];
        for i in 0..rows {
            let mut ss = 0f64;
            for j in 0..h {
                let k = i * h + j;
                let mut v = (hv[k] as f64 + hb[j] as f64) * hs[j] as f64;
                if with_r {
                    v += if with_rsb {
                        (rvv[k] as f64 + rb[j] as f64) * rs[j] as f64
                    } else {
                        rvv[k] as f64
                    };
                }
                r_ref[k] = v;
                ss += v * v;
            }
            let inv = 1.0 / (ss / h as f64 + eps as f64).sqrt();
            for j in 0..h {
                x_ref[i * h + j] = r_ref[i * h + j] * inv * w[j] as f64;
            }
        }
        // h as a [1, rows, h] transposed view: exercises the strided-input path
        let h_t = arr(&hv, &[rows as i32, h as i32])
            .t()
            .t()
            .reshape(&[1, rows as i32, h as i32])
            .unwrap();
        let r_a = arr(&rvv, &[1, rows as i32, h as i32]);
        let (rb_a, rs_a) = (arr(&rb, &[h as i32]), arr(&rs, &[h as i32]));
        for mode in MODES {
            let (r, x) = ext::res_norm(
                &h_t,
                with_r.then_some(&r_a),
                &arr(&hb, &[h as i32]),
                &arr(&hs, &[h as i32]),
                with_rsb.then_some((&rs_a, &rb_a)),
                &arr(&w, &[h as i32]),
                eps,
                mode,
            )
            .unwrap();
            assert_eq!(r.shape(), &[1, rows as i32, h as i32]);
            let tag = format!("res_norm r={with_r} rsb={with_rsb} {mode:?}");
            close(&vals(&r), &r_ref, 1e-6, &format!("{tag}: residual"));
            close(&vals(&x), &x_ref, 1e-5, &format!("{tag}: normed"));
        }
    }
}

#[test]
fn res_norm_rejects_bad_arguments() {
    let a = arr(&[1.0; 8], &[2, 4]);
    let v4 = arr(&[1.0; 4], &[4]);
    let v3 = arr(&[1.0; 3], &[3]);
    let e = ext::res_norm(&a, None, &v3, &v4, None, &v4, 1e-5, ExtMode::Primitive).unwrap_err();
    assert!(e.to_string().contains("hidden_states_bias must be [4]"), "{e}");
    let r = arr(&[1.0; 4], &[1, 4]);
    let e = ext::res_norm(&a, Some(&r), &v4, &v4, None, &v4, 1e-5, ExtMode::Primitive).unwrap_err();
    assert!(e.to_string().contains("residual must have h's shape"), "{e}");
    let e = ext::res_norm(&a, None, &v4, &v4, Some((&v4, &v4)), &v4, 1e-5, ExtMode::Primitive).unwrap_err();
    assert!(e.to_string().contains("without a residual"), "{e}");
}

// ---- router and MoE output ----------------------------------------------------------------------------

/// erf to ~1e-7 absolute (Abramowitz & Stegun 7.1.26), in f64.
fn erf(x: f64) -> f64 {
    let t = 1.0 / (1.0 + 0.3275911 * x.abs());
    let y = 1.0
        - (((((1.061405429 * t - 1.453152027) * t) + 1.421413741) * t - 0.284496736) * t + 0.254829592)
            * t
            * (-x * x).exp();
    if x >= 0.0 {
        y
    } else {
        -y
    }
}

fn dense64(x: &[f64], w: &[f32], b: Option<&[f32]>, out: usize, inp: usize) -> Vec<f64> {
    (0..out)
        .map(|r| {
            let s: f64 = (0..inp).map(|i| w[r * inp + i] as f64 * x[i]).sum();
            s + b.map_or(0.0, |b| b[r] as f64)
        })
        .collect()
}

#[test]
fn router_matches_f64_loop_and_portable_graph() {
    // several tokens (threads split the tokens), and one token (decode: threads split each layer's
    // rows, R = 64 over two threads)
    check_router(7, 32, 2);
    check_router(1, 64, 3);
    check_router(1, 32, 4);
}

/// One router's f16 matrices (as the bundle stores them) and f32 vectors, for n token rows of width h.
struct RouterCase {
    n: usize,
    h: usize,
    r: usize,
    e: usize,
    x: Vec<f32>,
    prev: Vec<f32>,
    ss: Vec<f32>,
    dw: Vec<f32>,
    w0: Vec<f32>,
    w2: Vec<f32>,
    w4: Vec<f32>,
    db: Vec<f32>,
    nw: Vec<f32>,
    b0: Vec<f32>,
    b2: Vec<f32>,
    bal: Vec<f32>,
    eps: f32,
}

impl RouterCase {
    fn new(n: usize, r: usize, seed: u64) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let (h, e) = (64usize, 6usize);
        let l = e + 1;
        let x = rv(&mut rng, n * h, -1.0, 1.0);
        let prev = rv(&mut rng, n * r, -1.0, 1.0);
        let ss = rv(&mut rng, r, 0.0, 1.0);
        let f16v = |rng: &mut ChaCha8Rng, k: usize, s: f32| -> Vec<f32> {
            rv(rng, k, -s, s)
                .into_iter()
                .map(|v| f16::from_f32(v).to_f32())
                .collect()
        };
        let dw = f16v(&mut rng, r * h, 0.2);
        let w0 = f16v(&mut rng, r * r, 0.3);
        let w2 = f16v(&mut rng, r * r, 0.3);
        let w4 = f16v(&mut rng, l * r, 2.0);
        let (db, nw, b0, b2) = (
            rv(&mut rng, r, -0.1, 0.1),
            rv(&mut rng, r, 0.5, 1.5),
            rv(&mut rng, r, -0.1, 0.1),
            rv(&mut rng, r, -0.1, 0.1),
        );
        let mut bal = rv(&mut rng, l, -0.05, 0.05);
        bal[e] = -0.2;
        RouterCase {
            n,
            h,
            r,
            e,
            x,
            prev,
            ss,
            dw,
            w0,
            w2,
            w4,
            db,
            nw,
            b0,
            b2,
            bal,
            eps: 1e-5,
        }
    }

    /// The router in f64 (docs/model.md §4.2): (state, probs, choice). `round` is applied to both
    /// operands of every product of the three layers' matmuls (identity: exact; bf16: as the bf16
    /// kernels round them).
    fn reference(&self, with_prev: bool, round: impl Fn(f64) -> f64) -> (Vec<f64>, Vec<f64>, Vec<i32>) {
        let (h, r, e) = (self.h, self.r, self.e);
        let l = e + 1;
        let gelu = |v: f64| v * (1.0 + erf(v / 2f64.sqrt())) / 2.0;
        let rnd = |v: &[f64]| -> Vec<f64> { v.iter().map(|&a| round(a)).collect() };
        let rw = |w: &[f32]| -> Vec<f32> { w.iter().map(|&a| round(a as f64) as f32).collect() };
        let (dw, w0, w2, w4) = (rw(&self.dw), rw(&self.w0), rw(&self.w2), rw(&self.w4));
        let (mut probs, mut state, mut choice) = (Vec::new(), Vec::new(), Vec::new());
        for i in 0..self.n {
            let xi = rnd(&to64(&self.x[i * h..(i + 1) * h]));
            let mut rr = dense64(&xi, &dw, Some(&self.db), r, h);
            if with_prev {
                for k in 0..r {
                    rr[k] += self.prev[i * r + k] as f64 * self.ss[k] as f64;
                }
            }
            state.extend_from_slice(&rr);
            let ms = rr.iter().map(|v| v * v).sum::<f64>() / r as f64;
            let nn: Vec<f64> = (0..r)
                .map(|k| rr[k] / (ms + self.eps as f64).sqrt() * self.nw[k] as f64)
                .collect();
            let a1: Vec<f64> = dense64(&rnd(&nn), &w0, Some(&self.b0), r, r)
                .into_iter()
                .map(gelu)
                .collect();
            let a2: Vec<f64> = dense64(&rnd(&a1), &w2, Some(&self.b2), r, r)
                .into_iter()
                .map(gelu)
                .collect();
            let lg = dense64(&rnd(&a2), &w4, None, l, r);
            let mx = lg.iter().cloned().fold(f64::MIN, f64::max);
            let ex: Vec<f64> = lg.iter().map(|v| (v - mx).exp()).collect();
            let sum: f64 = ex.iter().sum();
            let p: Vec<f64> = ex.iter().map(|v| v / sum).collect();
            let bal = &self.bal;
            let c = (0..l).fold(0, |best, k| {
                if p[k] + bal[k] as f64 > p[best] + bal[best] as f64 {
                    k
                } else {
                    best
                }
            });
            choice.push(c as i32);
            probs.extend_from_slice(&p);
        }
        (state, probs, choice)
    }

    /// Runs the op with the case's weights (f16 matrices) on `mode`.
    fn run(&self, with_prev: bool, mode: impl Into<ext::MatmulMode>) -> zaya_mlx::error::Result<ext::RouterOut> {
        let (n, h, r, l) = (self.n as i32, self.h as i32, self.r as i32, self.e as i32 + 1);
        let f16a = |v: &[f32], s: &[i32]| arr(v, s).as_dtype(Dtype::Float16).unwrap();
        let (dw, w0, w2, w4) = (
            f16a(&self.dw, &[r, h]),
            f16a(&self.w0, &[r, r]),
            f16a(&self.w2, &[r, r]),
            f16a(&self.w4, &[l, r]),
        );
        let (db, nw, b0, b2, bal) = (
            arr(&self.db, &[r]),
            arr(&self.nw, &[r]),
            arr(&self.b0, &[r]),
            arr(&self.b2, &[r]),
            arr(&self.bal, &[l]),
        );
        let (prev, ss) = (arr(&self.prev, &[n, r]), arr(&self.ss, &[r]));
        let weights = RouterWeights {
            down_w: &dw,
            down_b: &db,
            norm_w: &nw,
            eps: self.eps,
            w0: &w0,
            b0: &b0,
            w2: &w2,
            b2: &b2,
            w4: &w4,
            balancing: &bal,
            num_experts: self.e as u32,
        };
        ext::router(&arr(&self.x, &[n, h]), with_prev.then_some((&prev, &ss)), weights, mode)
    }
}

fn check_router(n: usize, r: usize, seed: u64) {
    let case = RouterCase::new(n, r, seed);
    let (l, e) = (case.e + 1, case.e);
    for with_prev in [false, true] {
        let (state_ref, probs_ref, choice_ref) = case.reference(with_prev, |v| v);
        for mode in MODES {
            let o = case.run(with_prev, mode).unwrap();
            let tag = format!("router prev={with_prev} {mode:?}");
            close(&vals(&o.state), &state_ref, 1e-5, &format!("{tag}: state"));
            close(&vals(&o.probs), &probs_ref, 1e-5, &format!("{tag}: probs"));
            let choice = ivals(&o.choice);
            assert_eq!(choice, choice_ref, "{tag}: routes");
            let score: Vec<f64> = choice
                .iter()
                .enumerate()
                .map(|(i, &c)| probs_ref[i * l + c as usize])
                .collect();
            close(&vals(&o.score), &score, 1e-5, &format!("{tag}: score"));
            let skipped = choice_ref.iter().filter(|&&c| c as usize >= e).count() as i32;
            assert_eq!(ivals(&o.skipped), vec![skipped], "{tag}: skip count");
        }
    }
    // bad shapes are typed errors
    let (h, r) = (case.h as i32, case.r as i32);
    let f16a = |v: &[f32], s: &[i32]| arr(v, s).as_dtype(Dtype::Float16).unwrap();
    let (dw, w0, w4) = (
        f16a(&case.dw, &[r, h]),
        f16a(&case.w0, &[r, r]),
        f16a(&case.w4, &[e as i32 + 1, r]),
    );
    let (v_r, v_l) = (arr(&case.db, &[r]), arr(&case.bal, &[e as i32 + 1]));
    let bad = ext::router(
        &arr(&case.x[..case.h], &[1, h]),
        None,
        RouterWeights {
            down_w: &dw,
            down_b: &v_r,
            norm_w: &v_r,
            eps: case.eps,
            w0: &w0,
            b0: &v_r,
            w2: &w0,
            b2: &v_r,
            w4: &w4,
            balancing: &v_l,
            num_experts: 99,
        },
        ExtMode::Primitive,
    )
    .unwrap_err();
    assert!(bad.to_string().contains("num_experts 99"), "{bad}");
}

/// f64 of v rounded to bf16 (round to nearest even), as the bf16 kernels round their operands.
fn bf(v: f64) -> f64 {
    half::bf16::from_f32(v as f32).to_f64()
}

/// `MatmulPrecision::Bf16`: with at least the panel size of token rows on a CPU with AVX512-BF16 the
/// three layers' GEMMs round both operands to bf16 and accumulate in f32 (against the f64 router
/// over bf16-rounded operands: the state, whose operands are the inputs, to f32 summation accuracy;
/// the probabilities, whose operands the kernel computes in f32 before rounding, within 2e-4), and
/// the rounding shows against the exact router; with fewer rows, or without the instructions, the
/// f32 kernel bit for bit.
#[test]
fn router_bf16_precision_rounds_the_matmul_operands() {
    use zaya_mlx::ext::{bf16_dot_available, panel_min_rows, MatmulMode, MatmulPrecision, PanelKind};
    let panel = panel_min_rows(PanelKind::Affine) as usize;
    let bf16_mode = MatmulMode {
        ext: ExtMode::Primitive,
        precision: MatmulPrecision::Bf16,
    };
    for (n, seed) in [(3usize, 31u64), (panel - 1, 32), (panel, 33), (2 * panel + 5, 34)] {
        let case = RouterCase::new(n, 32, seed);
        let o = case.run(true, bf16_mode).unwrap();
        let o32 = case.run(true, ExtMode::Primitive).unwrap();
        let (state, probs) = (vals(&o.state), vals(&o.probs));
        let ctx = format!("N={n}");
        if bf16_dot_available() && n >= panel {
            let (state_bf, probs_bf, _) = case.reference(true, bf);
            let (state_ex, _, _) = case.reference(true, |v| v);
            close(
                &state,
                &state_bf,
                1e-5,
                &format!("{ctx}: bf16 state vs the rounded f64 router"),
            );
            close(
                &probs,
                &probs_bf,
                2e-4,
                &format!("{ctx}: bf16 probs vs the rounded f64 router"),
            );
            let m = state_ex.iter().fold(0f64, |m, v| m.max(v.abs()));
            let moved = state
                .iter()
                .zip(&state_ex)
                .fold(0f64, |d, (a, b)| d.max((*a as f64 - b).abs()))
                / m;
            assert!(moved > 1e-4, "{ctx}: bf16 rounding should show ({moved:e})");
        } else {
            assert_eq!(state, vals(&o32.state), "{ctx}: the f32 kernel's state");
            assert_eq!(probs, vals(&o32.probs), "{ctx}: the f32 kernel's probs");
        }
    }
}

/// A decode-sized call (6 rows, one thread) and a prefill-sized one (101 rows, split over the kernel
/// threads in chunks of 32): every row scaled or skipped as its route says.
#[test]
fn moe_combine_scales_routed_rows_and_applies_the_skip_route() {
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let e = 4usize;
    for (n, h) in [(6usize, 16usize), (101, 48)] {
        let ey = rv(&mut rng, n * h, -1.0, 1.0);
        let x = rv(&mut rng, n * h, -1.0, 1.0);
        let choice: Vec<i32> = if n == 6 {
            vec![0, 4, 2, 4, 3, 1]
        } else {
            (0..n).map(|_| rng.gen_range(0..=e as i32)).collect()
        };
        assert!(choice.contains(&(e as i32)) && choice.iter().any(|&c| c < e as i32));
        let score = rv(&mut rng, n, 0.1, 1.0);
        combine_case(n, h, e, &ey, &x, &choice, &score);
    }
}

fn combine_case(n: usize, h: usize, e: usize, ey: &[f32], x: &[f32], choice: &[i32], score: &[f32]) {
    for zero in [false, true] {
        let want: Vec<f64> = (0..n * h)
            .map(|k| {
                let i = k / h;
                if choice[i] < e as i32 {
                    ey[k] as f64 * score[i] as f64
                } else if zero {
                    0.0
                } else {
                    x[k] as f64 * score[i] as f64
                }
            })
            .collect();
        for mode in MODES {
            let y = ext::moe_combine(
                &arr(ey, &[n as i32, h as i32]),
                &arr(x, &[n as i32, h as i32]),
                &Array::from_slice(choice, &[n as i32]),
                &arr(score, &[n as i32]),
                e as u32,
                zero,
                mode,
            )
            .unwrap();
            close(
                &vals(&y),
                &want,
                1e-6,
                &format!("moe_combine N={n} zero={zero} {mode:?}"),
            );
        }
    }
}

// ---- affine multi-matmul ------------------------------------------------------------------------------

#[test]
fn affine_multi_equals_separate_matmuls_side_by_side() {
    let mut rng = ChaCha8Rng::seed_from_u64(4);
    let (inp, g) = (128usize, 32usize);
    let outs = [48usize, 16, 32];
    let rows = 3usize;
    // 8-bit codes with f16 scales/biases; the reference dequantizes the rounded values in f64
    let ws: Vec<(Array, Array, Array)> = outs
        .iter()
        .map(|&o| {
            let q: Vec<u32> = (0..o * inp / 4).map(|_| rng.gen()).collect();
            let sh = [o as i32, (inp / g) as i32];
            (
                Array::from_slice(&q, &[o as i32, (inp / 4) as i32]),
                arr(&rv(&mut rng, o * inp / g, 0.001, 0.02), &sh)
                    .as_dtype(Dtype::Float16)
                    .unwrap(),
                arr(&rv(&mut rng, o * inp / g, -0.2, 0.2), &sh)
                    .as_dtype(Dtype::Float16)
                    .unwrap(),
            )
        })
        .collect();
    let ws: Vec<(Array, Array, Array, Vec<f64>)> = ws
        .into_iter()
        .map(|(q, s, b)| {
            let (sv, bv) = (vals(&s), vals(&b));
            q.eval().unwrap();
            let qv = q.as_slice::<u32>().to_vec();
            let o = q.shape()[0] as usize;
            let mut wd = vec![0f64; o * inp];
            for r in 0..o {
                for i in 0..inp {
                    let byte = (qv[(r * inp + i) / 4] >> (8 * (i % 4))) & 0xff;
                    let gi = r * (inp / g) + i / g;
                    wd[r * inp + i] = sv[gi] as f64 * byte as f64 + bv[gi] as f64;
                }
            }
            (q, s, b, wd)
        })
        .collect();
    let xs: Vec<Vec<f32>> = (0..outs.len()).map(|_| rv(&mut rng, rows * inp, -1.0, 1.0)).collect();
    let total: usize = outs.iter().sum();
    let mut want = vec![0f64; rows * total];
    let mut off = 0;
    for (k, &o) in outs.iter().enumerate() {
        for t in 0..rows {
            for r in 0..o {
                let s: f64 = (0..inp).map(|i| ws[k].3[r * inp + i] * xs[k][t * inp + i] as f64).sum();
                want[t * total + off + r] = s;
            }
        }
        off += o;
    }
    // x_0 as [1, rows, in]; the others flat [rows, in]: the output takes x_0's leading shape
    let x_arrs: Vec<Array> = xs
        .iter()
        .enumerate()
        .map(|(k, v)| {
            if k == 0 {
                arr(v, &[1, rows as i32, inp as i32])
            } else {
                arr(v, &[rows as i32, inp as i32])
            }
        })
        .collect();
    for mode in MODES {
        let parts: Vec<(&Array, AffineWeight)> = x_arrs
            .iter()
            .zip(&ws)
            .map(|(x, w)| {
                (
                    x,
                    AffineWeight {
                        w: &w.0,
                        scales: &w.1,
                        biases: &w.2,
                    },
                )
            })
            .collect();
        let y = ext::affine_multi(&parts, 8, g as u32, mode).unwrap();
        assert_eq!(y.shape(), &[1, rows as i32, total as i32]);
        close(&vals(&y), &want, 2e-5, &format!("affine_multi {mode:?}"));
    }
    // row counts must agree
    let short = arr(&xs[1][..inp], &[1, inp as i32]);
    let e = ext::affine_multi(
        &[
            (
                &x_arrs[0],
                AffineWeight {
                    w: &ws[0].0,
                    scales: &ws[0].1,
                    biases: &ws[0].2,
                },
            ),
            (
                &short,
                AffineWeight {
                    w: &ws[1].0,
                    scales: &ws[1].1,
                    biases: &ws[1].2,
                },
            ),
        ],
        8,
        g as u32,
        ExtMode::Primitive,
    )
    .unwrap_err();
    assert!(e.to_string().contains("rows"), "{e}");
}

// ---- CCA q/k chain -----------------------------------------------------------------------------------

struct Cca {
    hq: usize,
    hk: usize,
    d: usize,
    rd: usize,
    theta: f32,
    w0: Vec<f32>, // [C, 2, 1]
    b0: Vec<f32>,
    w1: Vec<f32>, // [C, 2, D]
    b1: Vec<f32>,
    temp: Vec<f32>,
}

impl Cca {
    fn c(&self) -> usize {
        (self.hq + self.hk) * self.d
    }
}

/// f64 reference of one sequence (docs/model.md §3.2 steps 2–6): returns (q [Hq,T,D], k [Hk,T,D],
/// new_state [C,2]).
fn cca_ref(p: &Cca, u: &[f32], state: &[f32], t: usize, offset: usize, clamp: bool) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let (c, d, g) = (p.c(), p.d, p.hq / p.hk);
    let frame = |i: usize, ch: usize| -> f64 {
        if i < 2 {
            state[ch * 2 + i] as f64
        } else {
            u[(i - 2) * c + ch] as f64
        }
    };
    let a = |i: usize, ch: usize| {
        p.b0[ch] as f64 + p.w0[ch * 2] as f64 * frame(i, ch) + p.w0[ch * 2 + 1] as f64 * frame(i + 1, ch)
    };
    let mut q = vec![0f64; p.hq * t * d];
    let mut k = vec![0f64; p.hk * t * d];
    for ti in 0..t {
        let z: Vec<f64> = (0..c)
            .map(|ch| {
                let g0 = (ch / d) * d;
                let mut acc = p.b1[ch] as f64;
                for j in 0..d {
                    acc += p.w1[ch * 2 * d + j] as f64 * a(ti, g0 + j)
                        + p.w1[ch * 2 * d + d + j] as f64 * a(ti + 1, g0 + j);
                }
                acc
            })
            .collect();
        let qt = |h: usize, i: usize| u[ti * c + h * d + i] as f64;
        let kt = |j: usize, i: usize| u[ti * c + p.hq * d + j * d + i] as f64;
        let mq = |h: usize, i: usize| 0.5 * (qt(h, i) + kt(h / g, i));
        let pos = (offset + ti) as f64;
        let rope = |v: &mut [f64]| {
            let half = p.rd / 2;
            for i in 0..half {
                let ang = pos * (p.theta as f64).powf(-2.0 * i as f64 / p.rd as f64);
                let (x1, x2) = (v[i], v[i + half]);
                v[i] = x1 * ang.cos() - x2 * ang.sin();
                v[i + half] = x1 * ang.sin() + x2 * ang.cos();
            }
        };
        let sd = (d as f64).sqrt();
        for h in 0..p.hq {
            let mut v: Vec<f64> = (0..d).map(|i| z[h * d + i] + mq(h, i)).collect();
            let nrm = v.iter().map(|x| x * x).sum::<f64>().sqrt().max(1e-6);
            v.iter_mut().for_each(|x| *x *= sd / nrm);
            rope(&mut v);
            q[(h * t + ti) * d..(h * t + ti + 1) * d].copy_from_slice(&v);
        }
        for j in 0..p.hk {
            let mut v: Vec<f64> = (0..d)
                .map(|i| z[p.hq * d + j * d + i] + (0..g).map(|r| mq(j * g + r, i)).sum::<f64>() / g as f64)
                .collect();
            let nrm = v.iter().map(|x| x * x).sum::<f64>().sqrt().max(1e-6);
            let tj = if clamp {
                (p.temp[j] as f64).clamp(1e-7, 2.0).exp()
            } else {
                p.temp[j] as f64
            };
            v.iter_mut().for_each(|x| *x *= sd / nrm * tj);
            rope(&mut v);
            k[(j * t + ti) * d..(j * t + ti + 1) * d].copy_from_slice(&v);
        }
    }
    let ns: Vec<f64> = (0..c)
        .flat_map(|ch| (0..2).map(move |i| (ch, i)))
        .map(|(ch, i)| frame(t + i, ch))
        .collect();
    (q, k, ns)
}

fn cca_params(rng: &mut ChaCha8Rng, hq: usize, hk: usize, d: usize) -> Cca {
    let c = (hq + hk) * d;
    Cca {
        hq,
        hk,
        d,
        rd: d / 2,
        theta: 10_000.0,
        w0: rv(rng, c * 2, -1.0, 1.0),
        b0: rv(rng, c, -0.5, 0.5),
        w1: rv(rng, c * 2 * d, -0.3, 0.3),
        b1: rv(rng, c, -0.5, 0.5),
        temp: rv(rng, hk, 0.5, 1.5),
    }
}

#[test]
fn cca_qk_matches_f64_loop_for_prefill_and_decode() {
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let p = cca_params(&mut rng, 4, 2, 16);
    let c = p.c();
    let (ci, di) = (c as i32, p.d as i32);
    for (t, offset, clamp, f16w) in [
        (5usize, 0usize, false, false),
        (1, 7, false, false),
        (3, 1000, true, true),
    ] {
        let u = rv(&mut rng, t * c, -1.0, 1.0);
        let state = if offset == 0 {
            vec![0.0; c * 2]
        } else {
            rv(&mut rng, c * 2, -1.0, 1.0)
        };
        let values = rv(&mut rng, t * p.hk * p.d, -1.0, 1.0);
        let cast = |a: Array| {
            if f16w {
                a.as_dtype(Dtype::Float16).unwrap()
            } else {
                a
            }
        };
        let w1v: Vec<f32> = if f16w {
            p.w1.iter().map(|&v| f16::from_f32(v).to_f32()).collect()
        } else {
            p.w1.clone()
        };
        let pr = Cca {
            w1: w1v.clone(),
            ..cca_params(&mut ChaCha8Rng::seed_from_u64(0), p.hq, p.hk, p.d)
        };
        let pr = Cca {
            w0: p.w0.clone(),
            b0: p.b0.clone(),
            b1: p.b1.clone(),
            temp: p.temp.clone(),
            ..pr
        };
        let (q_ref, k_ref, ns_ref) = cca_ref(&pr, &u, &state, t, offset, clamp);
        let v_ref: Vec<f64> = (0..p.hk)
            .flat_map(|j| (0..t).flat_map(move |ti| (0..16).map(move |i| (j, ti, i))))
            .map(|(j, ti, i)| values[ti * p.hk * p.d + j * p.d + i] as f64)
            .collect();
        let w1_a = cast(arr(&w1v, &[ci, 2, di]));
        for mode in MODES {
            // u as rows [B·T, C] for the primitive, [B, T, C] for the portable graph
            let u_a = if mode == ExtMode::Primitive {
                arr(&u, &[t as i32, ci])
            } else {
                arr(&u, &[1, t as i32, ci])
            };
            let o = ext::cca_qk(
                &u_a,
                &arr(&state, &[1, ci, 2]),
                &arr(&p.w0, &[ci, 2, 1]),
                &arr(&p.b0, &[ci]),
                &w1_a,
                &arr(&p.b1, &[ci]),
                &arr(&p.temp, &[p.hk as i32]),
                &arr(&values, &[t as i32, (p.hk * p.d) as i32]),
                CcaQkParams {
                    q_heads: p.hq as u32,
                    kv_heads: p.hk as u32,
                    rotary_dim: p.rd as u32,
                    rope_theta: p.theta,
                    clamp_temp: clamp,
                    offset,
                },
                mode,
            )
            .unwrap();
            let tag = format!("cca_qk T={t} offset={offset} {mode:?}");
            assert_eq!(o.q.shape(), &[1, p.hq as i32, t as i32, di]);
            close(&vals(&o.q), &q_ref, 2e-5, &format!("{tag}: q"));
            close(&vals(&o.k), &k_ref, 2e-5, &format!("{tag}: k"));
            close(&vals(&o.v), &v_ref, 0.0, &format!("{tag}: v"));
            close(&vals(&o.conv_state), &ns_ref, 0.0, &format!("{tag}: state"));
        }
    }
}

/// A batched decode step (B sequences, one frame each, own conv states and positions) equals each
/// sequence's own one-frame call: the new conv states and values exactly, q and k within f32
/// rounding (the batched grouped conv sums 2–4-row GEMM tiles in one accumulator where a single row
/// splits two), with f32 and f16 conv taps. B = 6 covers a tile of 4 and a tail of 2.
#[test]
fn cca_qk_rows_batch_equals_each_sequence_alone() {
    let mut rng = ChaCha8Rng::seed_from_u64(17);
    let p = cca_params(&mut rng, 4, 2, 16);
    let c = p.c();
    let (ci, di) = (c as i32, p.d as i32);
    let nb = 6usize;
    let lens: Vec<usize> = (0..nb).map(|b| [0usize, 3, 9, 1, 40, 7][b]).collect();
    let u = rv(&mut rng, nb * c, -1.0, 1.0);
    let state = rv(&mut rng, nb * c * 2, -1.0, 1.0);
    let values = rv(&mut rng, nb * p.hk * p.d, -1.0, 1.0);
    for f16w in [false, true] {
        let w1 = arr(&p.w1, &[ci, 2, di]);
        let w1 = if f16w { w1.as_dtype(Dtype::Float16).unwrap() } else { w1 };
        let params = |offset: usize| CcaQkParams {
            q_heads: p.hq as u32,
            kv_heads: p.hk as u32,
            rotary_dim: p.rd as u32,
            rope_theta: p.theta,
            clamp_temp: false,
            offset,
        };
        let run = |b0: usize, n: usize, offsets: &[usize]| {
            ext::cca_qk_rows(
                &arr(&u[b0 * c..(b0 + n) * c], &[n as i32, ci]),
                &arr(&state[b0 * c * 2..(b0 + n) * c * 2], &[n as i32, ci, 2]),
                &arr(&p.w0, &[ci, 2, 1]),
                &arr(&p.b0, &[ci]),
                &w1,
                &arr(&p.b1, &[ci]),
                &arr(&p.temp, &[p.hk as i32]),
                &arr(
                    &values[b0 * p.hk * p.d..(b0 + n) * p.hk * p.d],
                    &[n as i32, (p.hk * p.d) as i32],
                ),
                params(0),
                offsets,
                ExtMode::Primitive,
            )
            .unwrap()
        };
        let all = run(0, nb, &lens);
        let (q, k, v, ns) = (vals(&all.q), vals(&all.k), vals(&all.v), vals(&all.conv_state));
        let (qn, kn) = (p.hq * p.d, p.hk * p.d);
        for b in 0..nb {
            let one = run(b, 1, &lens[b..b + 1]);
            let tag = format!("f16 taps {f16w}, sequence {b} at {}", lens[b]);
            let want = |a: &Array| vals(a).iter().map(|&x| x as f64).collect::<Vec<f64>>();
            close(&q[b * qn..(b + 1) * qn], &want(&one.q), 1e-6, &format!("{tag}: q"));
            close(&k[b * kn..(b + 1) * kn], &want(&one.k), 1e-6, &format!("{tag}: k"));
            assert_eq!(v[b * kn..(b + 1) * kn], vals(&one.v)[..], "{tag}: v");
            assert_eq!(
                ns[b * c * 2..(b + 1) * c * 2],
                vals(&one.conv_state)[..],
                "{tag}: conv state"
            );
        }
    }
}

#[test]
fn cca_qk_rejects_bad_arguments() {
    let mut rng = ChaCha8Rng::seed_from_u64(6);
    let p = cca_params(&mut rng, 4, 2, 16);
    let ci = p.c() as i32;
    let call = |u: &Array, st: &Array, vals: &Array, rd: u32| {
        ext::cca_qk(
            u,
            st,
            &arr(&p.w0, &[ci, 2, 1]),
            &arr(&p.b0, &[ci]),
            &arr(&p.w1, &[ci, 2, 16]),
            &arr(&p.b1, &[ci]),
            &arr(&p.temp, &[2]),
            vals,
            CcaQkParams {
                q_heads: 4,
                kv_heads: 2,
                rotary_dim: rd,
                rope_theta: 1e4,
                clamp_temp: false,
                offset: 0,
            },
            ExtMode::Primitive,
        )
        .unwrap_err()
        .to_string()
    };
    let u = arr(&vec![0.0; 96], &[1, 1, ci]);
    let st = arr(&vec![0.0; 192], &[1, ci, 2]);
    let v = arr(&[0.0; 32], &[1, 1, 32]);
    assert!(call(&u, &arr(&vec![0.0; 96], &[1, ci, 1]), &v, 8).contains("conv_state must be [B, C, S] = [1, 96, 2]"));
    assert!(call(&u, &st, &arr(&[0.0; 16], &[1, 1, 16]), 8).contains("values must be"));
    assert!(call(&u, &st, &v, 7).contains("rotary_dim 7"));
}

// ---- attention ---------------------------------------------------------------------------------------

#[test]
fn cca_attention_matches_f64_loop_over_a_larger_cache() {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let (hq, hk, d, cap) = (4usize, 2usize, 16usize, 40usize);
    let g = hq / hk;
    for (t, len) in [(1usize, 1usize), (1, 23), (6, 6), (5, 29)] {
        let q = rv(&mut rng, hq * t * d, -1.0, 1.0);
        let k = rv(&mut rng, hk * cap * d, -1.0, 1.0);
        let v = rv(&mut rng, hk * cap * d, -1.0, 1.0);
        let scale = 0.7f32;
        let off = len - t;
        let mut want = vec![0f64; t * hq * d];
        for ti in 0..t {
            for h in 0..hq {
                let kh = h / g;
                let n = off + ti + 1;
                let s: Vec<f64> = (0..n)
                    .map(|j| {
                        (0..d)
                            .map(|i| q[(h * t + ti) * d + i] as f64 * k[(kh * cap + j) * d + i] as f64)
                            .sum::<f64>()
                            * scale as f64
                    })
                    .collect();
                let m = s.iter().cloned().fold(f64::MIN, f64::max);
                let e: Vec<f64> = s.iter().map(|x| (x - m).exp()).collect();
                let z: f64 = e.iter().sum();
                for i in 0..d {
                    want[(ti * hq + h) * d + i] = (0..n).map(|j| e[j] / z * v[(kh * cap + j) * d + i] as f64).sum();
                }
            }
        }
        for mode in MODES {
            for flat in [false, true] {
                let y = ext::cca_attention(
                    &arr(&q, &[1, hq as i32, t as i32, d as i32]),
                    &arr(&k, &[1, hk as i32, cap as i32, d as i32]),
                    &arr(&v, &[1, hk as i32, cap as i32, d as i32]),
                    len,
                    scale,
                    flat,
                    mode,
                )
                .unwrap();
                let shape: Vec<i32> = if flat {
                    vec![t as i32, (hq * d) as i32]
                } else {
                    vec![1, t as i32, (hq * d) as i32]
                };
                assert_eq!(y.shape(), shape.as_slice());
                close(
                    &vals(&y),
                    &want,
                    1e-5,
                    &format!("attention T={t} len={len} {mode:?} flat={flat}"),
                );
            }
        }
    }
    let e = ext::cca_attention(
        &arr(&[0.0; 64], &[1, 4, 1, 16]),
        &arr(&[0.0; 64], &[1, 2, 2, 16]),
        &arr(&[0.0; 64], &[1, 2, 2, 16]),
        3,
        1.0,
        false,
        ExtMode::Primitive,
    )
    .unwrap_err();
    assert!(e.to_string().contains("capacity 2"), "{e}");
}

#[test]
fn kv_append_writes_the_new_positions_only() {
    let k = arr(&[0.0; 2 * 4 * 3], &[1, 2, 4, 3]);
    let v = arr(&[1.0; 2 * 4 * 3], &[1, 2, 4, 3]);
    let kn = arr(&(0..12).map(|i| i as f32).collect::<Vec<_>>(), &[1, 2, 2, 3]);
    let (k2, v2) = ext::kv_append(&k, &v, &kn, &kn, 1).unwrap();
    let (kv, vv) = (vals(&k2), vals(&v2));
    for h in 0..2 {
        for p in 0..4 {
            for i in 0..3 {
                let idx = (h * 4 + p) * 3 + i;
                let new = (1..3).contains(&p).then(|| ((h * 2 + p - 1) * 3 + i) as f32);
                assert_eq!(kv[idx], new.unwrap_or(0.0), "keys h{h} p{p}");
                assert_eq!(vv[idx], new.unwrap_or(1.0), "values h{h} p{p}");
            }
        }
    }
    let e = ext::kv_append(&k, &v, &kn, &kn, 3).unwrap_err();
    assert!(e.to_string().contains("do not fit"), "{e}");
}
