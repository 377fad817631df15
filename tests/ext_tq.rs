//! The TurboQuant switch-GLU primitive (every kernel instruction set this CPU has) and its portable
//! plain-MLX-ops graph against an f64 loop written from docs/bundle-format.md §3.2–3.6 / §4.2:
//! x̂ = H(s⊙x)/√H (Sylvester order), g/u[r] = n[e,r]·Σ_i C[code(e,r,i)]·x̂_i, a = silu(g)·u,
//! â = H(s_d⊙a)/√I, y[r] = n_d[e,r]·Σ_i C_d[code]·â_i.
//!
//! Error norm: max_i |y_i − ref_i| / max_i |ref_i| (∞-norm relative error), bound 1e-5.
use half::f16;
use mlx_rs::{
    ops::indexing::{IndexOp, IntoStrideBy},
    Array, Dtype,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use zaya_mlx::ext::{tq_switch_glu, ExtMode, MatmulMode, TqCodec, TqWeights};

mod kernel_support;
use kernel_support::{isas, rel_err, values, verbose, with_isa};

const TOL: f64 = 1e-5;

/// One projection's stacked expert data, host side.
struct Proj {
    packed: Vec<u32>, // [E, out, cols]
    norms: Vec<f16>,  // [E, out]
    out: usize,
    cols: usize,
}

struct Experts {
    e: usize,
    h: usize,
    i: usize,
    o: usize,
    bits_gu: u32,
    bits_d: u32,
    gate: Proj,
    up: Proj,
    down: Proj,
    cb_gu: Vec<f32>,
    s_gu: Vec<f32>,
    cb_d: Vec<f32>,
    s_d: Vec<f32>,
}

fn cols_for(input: usize, bits: u32) -> usize {
    let vpw = (32 / bits) as usize;
    input.div_ceil(vpw)
}

fn rand_proj(rng: &mut ChaCha8Rng, e: usize, out: usize, input: usize, bits: u32) -> Proj {
    let cols = cols_for(input, bits);
    // Random words: also fills the unused top bits of 3-bit words and the padding codes, which the
    // kernels must ignore.
    let packed = (0..e * out * cols).map(|_| rng.gen::<u32>()).collect();
    let norms = (0..e * out)
        .map(|_| f16::from_f32(rng.gen_range(0.25f32..2.0)))
        .collect();
    Proj {
        packed,
        norms,
        out,
        cols,
    }
}

fn rand_codebook(rng: &mut ChaCha8Rng, bits: u32, input: usize) -> Vec<f32> {
    let a = 3.0 / (input as f32).sqrt();
    let mut c: Vec<f32> = (0..1usize << bits).map(|_| rng.gen_range(-a..a)).collect();
    c.sort_by(|x, y| x.partial_cmp(y).unwrap());
    c
}

fn rand_signs(rng: &mut ChaCha8Rng, n: usize) -> Vec<f32> {
    (0..n).map(|_| if rng.gen::<bool>() { 1.0 } else { -1.0 }).collect()
}

fn experts(seed: u64, e: usize, h: usize, i: usize, o: usize, bits_gu: u32, bits_d: u32) -> Experts {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    Experts {
        e,
        h,
        i,
        o,
        bits_gu,
        bits_d,
        gate: rand_proj(&mut rng, e, i, h, bits_gu),
        up: rand_proj(&mut rng, e, i, h, bits_gu),
        down: rand_proj(&mut rng, e, o, i, bits_d),
        cb_gu: rand_codebook(&mut rng, bits_gu, h),
        s_gu: rand_signs(&mut rng, h),
        cb_d: rand_codebook(&mut rng, bits_d, i),
        s_d: rand_signs(&mut rng, i),
    }
}

// ---- f64 reference ---------------------------------------------------------------------------------

/// Walsh-Hadamard butterfly in Sylvester order (pairs (j, j+h) → (a+b, a−b)), unnormalised.
fn fwht64(v: &mut [f64]) {
    let n = v.len();
    let mut h = 1;
    while h < n {
        for i in (0..n).step_by(2 * h) {
            for j in i..i + h {
                let (a, b) = (v[j], v[j + h]);
                v[j] = a + b;
                v[j + h] = a - b;
            }
        }
        h *= 2;
    }
}

fn rotate64(v: &[f64], signs: &[f32]) -> Vec<f64> {
    let mut r: Vec<f64> = v.iter().zip(signs).map(|(a, s)| a * *s as f64).collect();
    fwht64(&mut r);
    let scale = 1.0 / (v.len() as f64).sqrt();
    r.iter_mut().for_each(|a| *a *= scale);
    r
}

/// out[r] = n[e,r] · Σ_i C[code(e, r, i)] · v[i], codes LSB-first, 32/bits per word, per-row padding.
fn proj64(p: &Proj, e: usize, cb: &[f32], bits: u32, v: &[f64]) -> Vec<f64> {
    let vpw = (32 / bits) as usize;
    let mask = (1u32 << bits) - 1;
    (0..p.out)
        .map(|r| {
            let row = &p.packed[(e * p.out + r) * p.cols..][..p.cols];
            let mut acc = 0f64;
            for (i, vi) in v.iter().enumerate() {
                let code = (row[i / vpw] >> ((i % vpw) as u32 * bits)) & mask;
                acc += cb[code as usize] as f64 * vi;
            }
            p.norms[e * p.out + r].to_f64() * acc
        })
        .collect()
}

fn reference(ex: &Experts, x: &[f32], idx: &[i64]) -> Vec<f64> {
    let k = idx.len() / (x.len() / ex.h);
    let mut y = vec![0f64; idx.len() * ex.o];
    for (d, &e) in idx.iter().enumerate() {
        if e < 0 || e >= ex.e as i64 {
            continue;
        }
        let e = e as usize;
        let n = d / k;
        let xr = rotate64(
            &x[n * ex.h..(n + 1) * ex.h]
                .iter()
                .map(|v| *v as f64)
                .collect::<Vec<_>>(),
            &ex.s_gu,
        );
        let g = proj64(&ex.gate, e, &ex.cb_gu, ex.bits_gu, &xr);
        let u = proj64(&ex.up, e, &ex.cb_gu, ex.bits_gu, &xr);
        let a: Vec<f64> = g.iter().zip(&u).map(|(g, u)| g / (1.0 + (-g).exp()) * u).collect();
        let ar = rotate64(&a, &ex.s_d);
        let out = proj64(&ex.down, e, &ex.cb_d, ex.bits_d, &ar);
        y[d * ex.o..(d + 1) * ex.o].copy_from_slice(&out);
    }
    y
}

// ---- running the op --------------------------------------------------------------------------------

struct Arrays {
    gp: Array,
    gn: Array,
    up: Array,
    un: Array,
    dp: Array,
    dn: Array,
    cb_gu: Array,
    s_gu: Array,
    cb_d: Array,
    s_d: Array,
}

fn arrays(ex: &Experts) -> Arrays {
    let p3 = |p: &Proj| Array::from_slice(&p.packed, &[ex.e as i32, p.out as i32, p.cols as i32]);
    let n2 = |p: &Proj| Array::from_slice(&p.norms, &[ex.e as i32, p.out as i32]);
    Arrays {
        gp: p3(&ex.gate),
        gn: n2(&ex.gate),
        up: p3(&ex.up),
        un: n2(&ex.up),
        dp: p3(&ex.down),
        dn: n2(&ex.down),
        cb_gu: Array::from_slice(&ex.cb_gu, &[ex.cb_gu.len() as i32]),
        s_gu: Array::from_slice(&ex.s_gu, &[ex.h as i32]),
        cb_d: Array::from_slice(&ex.cb_d, &[ex.cb_d.len() as i32]),
        s_d: Array::from_slice(&ex.s_d, &[ex.i as i32]),
    }
}

fn build(ex: &Experts, a: &Arrays, x: &Array, idx: &Array, mode: impl Into<MatmulMode>) -> zaya_mlx::Result<Array> {
    build_bits(a, x, idx, ex.bits_gu, ex.bits_d, mode)
}

/// [`build`] with explicit gate/up and down bit widths (which may disagree with the arrays).
fn build_bits(
    a: &Arrays,
    x: &Array,
    idx: &Array,
    bits_gu: u32,
    bits_d: u32,
    mode: impl Into<MatmulMode>,
) -> zaya_mlx::Result<Array> {
    tq_switch_glu(
        x,
        idx,
        TqWeights {
            packed: &a.gp,
            norms: &a.gn,
        },
        TqWeights {
            packed: &a.up,
            norms: &a.un,
        },
        TqWeights {
            packed: &a.dp,
            norms: &a.dn,
        },
        TqCodec {
            codebook: &a.cb_gu,
            signs: &a.s_gu,
            bits: bits_gu,
        },
        TqCodec {
            codebook: &a.cb_d,
            signs: &a.s_d,
            bits: bits_d,
        },
        mode,
    )
}

#[derive(Clone, Copy, Debug)]
enum Mix {
    OneExpert,
    Spread,
    Random,
}

fn make_idx(rng: &mut ChaCha8Rng, mix: Mix, d: usize, e: usize) -> Vec<i64> {
    (0..d)
        .map(|t| match mix {
            Mix::OneExpert => (e / 3) as i64,
            Mix::Spread => (t % e) as i64,
            // includes the skip route (id E) now and then
            Mix::Random => rng.gen_range(0..=e) as i64,
        })
        .collect()
}

/// Checks every ISA's primitive (and the portable graph when `portable`) against the f64 loop.
fn check_case(ex: &Experts, a: &Arrays, n: usize, k: usize, mix: Mix, seed: u64, portable: bool) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let x: Vec<f32> = (0..n * ex.h).map(|_| rng.gen_range(-1.0f32..1.0)).collect();
    let idx = make_idx(&mut rng, mix, n * k, ex.e);
    let want = reference(ex, &x, &idx);
    assert!(want.iter().any(|v| *v != 0.0) || idx.iter().all(|e| *e >= ex.e as i64));
    let xa = Array::from_slice(&x, &[n as i32, ex.h as i32]);
    let idx32: Vec<i32> = idx.iter().map(|v| *v as i32).collect();
    let ia = if k == 1 {
        Array::from_slice(&idx32, &[n as i32])
    } else {
        Array::from_slice(&idx32, &[n as i32, k as i32])
    };
    let ctx = format!(
        "E={} H={} I={} O={} bits={}/{} N={n} K={k} {mix:?}",
        ex.e, ex.h, ex.i, ex.o, ex.bits_gu, ex.bits_d
    );
    for isa in isas() {
        let y = with_isa(isa, || build(ex, a, &xa, &ia, ExtMode::Primitive)).unwrap();
        let want_shape: Vec<i32> = if k == 1 {
            vec![n as i32, ex.o as i32]
        } else {
            vec![n as i32, k as i32, ex.o as i32]
        };
        assert_eq!(y.shape(), &want_shape[..], "{ctx}");
        let err = rel_err(&values(&y), &want);
        verbose(&ctx, &format!("{isa:?}"), err);
        assert!(err <= TOL, "{ctx} {isa:?}: rel err {err:e}");
    }
    if portable {
        let y = build(ex, a, &xa, &ia, ExtMode::Portable).unwrap();
        let err = rel_err(&values(&y), &want);
        verbose(&ctx, "portable", err);
        assert!(err <= TOL, "{ctx} portable: rel err {err:e}");
    }
}

#[test]
fn reference_butterfly_is_the_sylvester_hadamard_matrix() {
    // H[i, j] = (−1)^popcount(i & j), the definition the format uses (docs/bundle-format.md §3.4).
    let n = 64;
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let v: Vec<f64> = (0..n).map(|_| rng.gen_range(-1.0..1.0)).collect();
    let mut b = v.clone();
    fwht64(&mut b);
    for (i, bi) in b.iter().enumerate() {
        let d: f64 = (0..n)
            .map(|j| if (i & j).count_ones() % 2 == 0 { v[j] } else { -v[j] })
            .sum();
        assert!((d - bi).abs() < 1e-12);
    }
}

#[test]
fn small_shapes_all_bits_mixes_and_batch_sizes() {
    let shapes = [(64usize, 128usize, 64usize), (128, 64, 256), (256, 256, 128)];
    let bits = [(4u32, 4u32), (2, 2), (4, 2), (2, 4), (3, 3)];
    let mut seed = 100;
    for &(h, i, o) in &shapes {
        for &(bg, bd) in &bits {
            seed += 1;
            let ex = experts(seed, 16, h, i, o, bg, bd);
            let a = arrays(&ex);
            for &n in &[1usize, 3, 17, 64] {
                for mix in [Mix::OneExpert, Mix::Spread, Mix::Random] {
                    check_case(&ex, &a, n, 1, mix, seed * 1000 + n as u64, true);
                }
            }
        }
    }
}

#[test]
fn real_size_experts_4bit() {
    // ZAYA: E = 16, H = I = O = 2048, 4 bits (JANGTQ4).
    let ex = experts(7, 16, 2048, 2048, 2048, 4, 4);
    let a = arrays(&ex);
    check_case(&ex, &a, 1, 1, Mix::Random, 1, true);
    check_case(&ex, &a, 3, 1, Mix::Spread, 2, true);
    check_case(&ex, &a, 17, 1, Mix::Random, 3, false);
    check_case(&ex, &a, 64, 1, Mix::OneExpert, 4, false);
}

#[test]
fn real_size_experts_mixed_bits() {
    // JANGTQ_K-style: gate/up 2 bits, down 4 bits; and 3-bit rows (10 codes a word, row padding).
    let ex = experts(8, 16, 2048, 2048, 2048, 2, 4);
    let a = arrays(&ex);
    check_case(&ex, &a, 17, 1, Mix::Spread, 5, false);
    let ex = experts(9, 16, 2048, 2048, 2048, 3, 3);
    let a = arrays(&ex);
    check_case(&ex, &a, 3, 1, Mix::Random, 6, true);
}

#[test]
fn top_k_slots_and_index_dtypes() {
    let ex = experts(11, 16, 128, 256, 64, 4, 4);
    let a = arrays(&ex);
    for &n in &[1usize, 5, 33] {
        check_case(&ex, &a, n, 2, Mix::Random, 70 + n as u64, true);
    }
    // uint32 ids, int32 −1 and the skip id E all give zero rows.
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let n = 6;
    let x: Vec<f32> = (0..n * ex.h).map(|_| rng.gen_range(-1.0f32..1.0)).collect();
    let xa = Array::from_slice(&x, &[n as i32, ex.h as i32]);
    let ids: [i64; 6] = [3, -1, 16, 3, 15, 1000];
    let want = reference(&ex, &x, &ids);
    let u: Vec<u32> = ids.iter().map(|v| *v as i32 as u32).collect();
    let i: Vec<i32> = ids.iter().map(|v| *v as i32).collect();
    for idx in [Array::from_slice(&u, &[n as i32]), Array::from_slice(&i, &[n as i32])] {
        for mode in [ExtMode::Primitive, ExtMode::Portable, ExtMode::Auto] {
            let y = values(&build(&ex, &a, &xa, &idx, mode).unwrap());
            assert!(rel_err(&y, &want) <= TOL, "{mode:?}");
            for d in [1usize, 2, 5] {
                assert!(
                    y[d * ex.o..(d + 1) * ex.o].iter().all(|v| *v == 0.0),
                    "{mode:?} row {d} not zero"
                );
            }
        }
    }
}

#[test]
fn norms_in_other_float_dtypes() {
    let ex = experts(12, 16, 256, 128, 128, 4, 4);
    let a = arrays(&ex);
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let n = 9;
    let x: Vec<f32> = (0..n * ex.h).map(|_| rng.gen_range(-1.0f32..1.0)).collect();
    let idx = make_idx(&mut rng, Mix::Random, n, ex.e);
    // f16 → f32 and f16 → bf16 → (values change) : compare both modes against each other and the
    // f32 case against the reference (the f16 values are exact in f32).
    let want = reference(&ex, &x, &idx);
    let xa = Array::from_slice(&x, &[n as i32, ex.h as i32]);
    let ia = Array::from_slice(&idx.iter().map(|v| *v as i32).collect::<Vec<_>>(), &[n as i32]);
    let mut a32 = arrays(&ex);
    a32.gn = a.gn.as_dtype(Dtype::Float32).unwrap();
    a32.un = a.un.as_dtype(Dtype::Float32).unwrap();
    a32.dn = a.dn.as_dtype(Dtype::Float32).unwrap();
    for mode in [ExtMode::Primitive, ExtMode::Portable] {
        let y = values(&build(&ex, &a32, &xa, &ia, mode).unwrap());
        assert!(rel_err(&y, &want) <= TOL, "f32 norms {mode:?}");
    }
    let mut ab = arrays(&ex);
    ab.gn = a.gn.as_dtype(Dtype::Bfloat16).unwrap();
    ab.un = a.un.as_dtype(Dtype::Bfloat16).unwrap();
    ab.dn = a.dn.as_dtype(Dtype::Bfloat16).unwrap();
    let yp = values(&build(&ex, &ab, &xa, &ia, ExtMode::Primitive).unwrap());
    let yr = values(&build(&ex, &ab, &xa, &ia, ExtMode::Portable).unwrap());
    let r64: Vec<f64> = yr.iter().map(|v| *v as f64).collect();
    assert!(rel_err(&yp, &r64) <= TOL, "bf16 norms: primitive vs portable");
    // bf16 rounding moved the values: the check above is not comparing a constant.
    assert!(rel_err(&yp, &want) > TOL);
}

#[test]
fn bad_arguments_are_errors_not_aborts() {
    let ex = experts(13, 4, 64, 64, 32, 4, 4);
    let a = arrays(&ex);
    let x = Array::from_slice(&vec![0.5f32; 2 * 64], &[2, 64]);
    let idx = Array::from_slice(&[0i32, 1], &[2]);
    let err = |r: zaya_mlx::Result<Array>| r.unwrap_err().to_string();
    let run = |x: &Array, idx: &Array, a: &Arrays, bits: u32| build_bits(a, x, idx, bits, 4, ExtMode::Auto);
    assert!(run(&x, &idx, &a, 4).is_ok());

    let e = err(run(&x.as_dtype(Dtype::Float16).unwrap(), &idx, &a, 4));
    assert!(e.contains("x must be float32"), "{e}");
    let e = err(run(&x, &idx.as_dtype(Dtype::Float32).unwrap(), &a, 4));
    assert!(e.contains("expert indices"), "{e}");
    let e = err(run(&x, &Array::from_slice(&[0i32, 1, 2], &[3]), &a, 4));
    assert!(e.contains("expert indices must be [N]"), "{e}");
    let e = err(run(&x, &idx, &a, 5));
    assert!(e.contains("gate/up bits must be 2, 3 or 4"), "{e}");
    // bits inconsistent with the packed width
    let e = err(run(&x, &idx, &a, 2));
    assert!(e.contains("gate tq_packed must be"), "{e}");
    // x width does not match the packed rows
    let x128 = Array::from_slice(&vec![0.5f32; 2 * 128], &[2, 128]);
    let e = err(run(&x128, &idx, &a, 4));
    assert!(e.contains("gate tq_packed"), "{e}");
    // up shaped differently from gate
    let mut b = arrays(&ex);
    b.up = Array::from_slice(&vec![0u32; 4 * 32 * 8], &[4, 32, 8]);
    let e = err(run(&x, &idx, &b, 4));
    assert!(e.contains("up tq_packed"), "{e}");
    // norms of the wrong shape or dtype
    let mut b = arrays(&ex);
    b.dn = Array::from_slice(&vec![1f32; 4 * 31], &[4, 31]);
    let e = err(run(&x, &idx, &b, 4));
    assert!(e.contains("down tq_norms"), "{e}");
    let mut b = arrays(&ex);
    b.gn = b.gn.as_dtype(Dtype::Int32).unwrap();
    let e = err(run(&x, &idx, &b, 4));
    assert!(e.contains("gate tq_norms must be float16"), "{e}");
    // codebook / signs of the wrong length
    let mut b = arrays(&ex);
    b.cb_gu = Array::from_slice(&[0f32; 8], &[8]);
    let e = err(run(&x, &idx, &b, 4));
    assert!(e.contains("gate/up codebook"), "{e}");
    let mut b = arrays(&ex);
    b.s_d = Array::from_slice(&[1f32; 63], &[63]);
    let e = err(run(&x, &idx, &b, 4));
    assert!(e.contains("down signs"), "{e}");
    // hidden size not a power of two
    let ex96 = experts(14, 2, 96, 64, 32, 4, 4);
    let a96 = arrays(&ex96);
    let x96 = Array::from_slice(&vec![0.5f32; 96], &[1, 96]);
    let e = err(run(&x96, &Array::from_slice(&[0i32], &[1]), &a96, 4));
    assert!(e.contains("power of two"), "{e}");
}

#[test]
fn empty_batch_gives_empty_output() {
    let ex = experts(15, 4, 64, 64, 32, 4, 4);
    let a = arrays(&ex);
    let x = Array::from_slice::<f32>(&[], &[0, 64]);
    let idx = Array::from_slice::<i32>(&[], &[0]);
    for mode in [ExtMode::Primitive, ExtMode::Portable] {
        let y = build(&ex, &a, &x, &idx, mode).unwrap();
        y.eval().unwrap();
        assert_eq!(y.shape(), &[0, 32]);
    }
}

#[test]
fn non_contiguous_inputs() {
    // x as a transpose, the down projection's stack as every other expert of a larger stack; both lazy
    // and evaluated.
    let ex = experts(16, 8, 64, 128, 64, 4, 4);
    let a = arrays(&ex);
    let mut rng = ChaCha8Rng::seed_from_u64(17);
    let n = 5;
    let x: Vec<f32> = (0..n * ex.h).map(|_| rng.gen_range(-1.0f32..1.0)).collect();
    let idx: Vec<i64> = (0..n as i64).map(|t| (t * 3) % 8).collect();
    let want = reference(&ex, &x, &idx);
    let xt: Vec<f32> = (0..ex.h * n).map(|k| x[(k % n) * ex.h + k / n]).collect();
    let xt = Array::from_slice(&xt, &[ex.h as i32, n as i32]);
    // interleave the real down experts with garbage ones: [16, O, cols], take [::2]
    let per = ex.down.out * ex.down.cols;
    let mut big = vec![0x1234_5678u32; 16 * per];
    for e in 0..8 {
        big[2 * e * per..(2 * e + 1) * per].copy_from_slice(&ex.down.packed[e * per..(e + 1) * per]);
    }
    let big = Array::from_slice(&big, &[16, ex.down.out as i32, ex.down.cols as i32]);
    let ia = Array::from_slice(&idx.iter().map(|v| *v as i32).collect::<Vec<_>>(), &[n as i32]);
    for evaluated in [false, true] {
        let xa = xt.t();
        let dp = big.index((..).stride_by(2));
        if evaluated {
            xa.eval().unwrap();
            dp.eval().unwrap();
        }
        let mut b = arrays(&ex);
        b.dp = dp;
        for mode in [ExtMode::Primitive, ExtMode::Portable] {
            let y = values(&build(&ex, &b, &xa, &ia, mode).unwrap());
            assert!(rel_err(&y, &want) <= TOL, "evaluated={evaluated} {mode:?}");
        }
    }
    drop(a);
}

/// f64 of v rounded to bf16 (round to nearest even).
fn bf(v: f64) -> f64 {
    half::bf16::from_f32(v as f32).to_f64()
}

/// The rotation in f32 with the kernel's operation order (signs, butterflies, 1/√n), so that the
/// values the kernel rounds to bf16 are the same ones.
fn rotate32(v: &[f32], signs: &[f32]) -> Vec<f64> {
    let n = v.len();
    let mut r: Vec<f32> = v.iter().zip(signs).map(|(a, s)| a * s).collect();
    let mut h = 1;
    while h < n {
        for i in (0..n).step_by(2 * h) {
            for j in i..i + h {
                let (a, b) = (r[j], r[j + h]);
                r[j] = a + b;
                r[j + h] = a - b;
            }
        }
        h *= 2;
    }
    let scale = 1.0f32 / (n as f32).sqrt();
    r.iter().map(|a| (a * scale) as f64).collect()
}

/// `MatmulPrecision::Bf16` against the f64 loop over bf16-rounded operands: x̂ and â rounded to bf16,
/// every codebook value rounded to bf16 (the row norms and the SwiGLU stay exact), products summed
/// exactly; the rotations in f32 in the kernel's order (`rotate32`), so that values on a bf16
/// rounding boundary round the same way; the SwiGLU activations come from the kernel's f32 gate/up
/// sums, so those within that error of a boundary may round either way (an allowance per output, see
/// below). All rows on one expert so that the expert groups reach the
/// panel size (`panel_min_rows`) and, with 4-bit codes, the lanes size (both GEMM shapes, and the
/// lanes GEMM's tile tails of 4 and 5 tokens); with fewer rows, or without AVX512-BF16, the op must
/// equal the f32 kernel bit for bit. The bf16 rounding itself moves the result by more than 5e-4
/// (checked too).
#[test]
fn bf16_precision_rounds_operands_and_accumulates_in_f32() {
    use zaya_mlx::ext::{bf16_dot_available, panel_min_rows, KernelIsa, MatmulPrecision, PanelKind};
    let panel = panel_min_rows(PanelKind::TurboQuantBf16);
    assert!((2..=64).contains(&panel), "panel size {panel}");
    let lanes = panel_min_rows(PanelKind::TurboQuantBf16Lanes);
    assert!((panel..=256).contains(&lanes), "lanes size {lanes}");
    let ex = experts(31, 4, 256, 512, 256, 4, 4);
    let a = arrays(&ex);
    let cb_gu: Vec<f32> = ex.cb_gu.iter().map(|v| bf(*v as f64) as f32).collect();
    let cb_d: Vec<f32> = ex.cb_d.iter().map(|v| bf(*v as f64) as f32).collect();
    let bf16_mode = MatmulMode {
        ext: ExtMode::Primitive,
        precision: MatmulPrecision::Bf16,
    };
    // lanes tiles are of 12 tokens with tails of 6 or fewer: 12·k + 4 and 12·k + 5 rows end in tails
    // of 4 and 5
    let tail = |r: usize| lanes + (r + 12 - lanes % 12) % 12;
    for n in [3usize, panel - 1, panel, 2 * panel + 5, tail(4), tail(5)] {
        let mut rng = ChaCha8Rng::seed_from_u64(n as u64);
        let x: Vec<f32> = (0..n * ex.h).map(|_| rng.gen_range(-1.0f32..1.0)).collect();
        let idx = make_idx(&mut rng, Mix::OneExpert, n, ex.e);
        let e = idx[0] as usize;
        let exact = reference(&ex, &x, &idx);
        let mut rounded = vec![0f64; n * ex.o];
        let (mut slack, mut flips) = (vec![0f64; n * ex.o], 0usize);
        for t in 0..n {
            let xr: Vec<f64> = rotate32(&x[t * ex.h..(t + 1) * ex.h], &ex.s_gu)
                .into_iter()
                .map(bf)
                .collect();
            let g = proj64(&ex.gate, e, &cb_gu, ex.bits_gu, &xr);
            let u = proj64(&ex.up, e, &cb_gu, ex.bits_gu, &xr);
            let act: Vec<f64> = g.iter().zip(&u).map(|(g, u)| g / (1.0 + (-g).exp()) * u).collect();
            let act32: Vec<f32> = act.iter().map(|v| *v as f32).collect();
            let ar32 = rotate32(&act32, &ex.s_d);
            let ar: Vec<f64> = ar32.iter().copied().map(bf).collect();
            rounded[t * ex.o..(t + 1) * ex.o].copy_from_slice(&proj64(&ex.down, e, &cb_d, ex.bits_d, &ar));
            // The kernel's gate/up sums are f32 (their order is the kernel's), so an activation within
            // their error of a bf16 rounding boundary may round to the neighbour: down may then differ
            // by Σ|w|·(that ulp) over those activations, no more. The error is taken as 1e-6 of the
            // largest activation (the 4-bit kernel needs 5e-7 here; ≈ 0.4% of activations qualify).
            let near = 1e-6 * ar32.iter().fold(0f64, |m, v| m.max(v.abs()));
            let ulp: Vec<f64> = ar32
                .iter()
                .zip(&ar)
                .map(|(v, r)| (bf(v - near) - r).abs().max((bf(v + near) - r).abs()))
                .collect();
            flips += ulp.iter().filter(|u| **u > 0.0).count();
            let cb_abs: Vec<f32> = cb_d.iter().map(|v| v.abs()).collect();
            let bound = proj64(&ex.down, e, &cb_abs, ex.bits_d, &ulp);
            for (s, b) in slack[t * ex.o..(t + 1) * ex.o].iter_mut().zip(bound) {
                *s = b.abs();
            }
        }
        let xa = Array::from_slice(&x, &[n as i32, ex.h as i32]);
        let ia = Array::from_slice(&idx.iter().map(|v| *v as i32).collect::<Vec<_>>(), &[n as i32]);
        for isa in isas() {
            let (y, y32, dot) = with_isa(isa, || {
                let y = build(&ex, &a, &xa, &ia, bf16_mode).unwrap();
                (
                    values(&y),
                    values(&build(&ex, &a, &xa, &ia, ExtMode::Primitive).unwrap()),
                    bf16_dot_available(),
                )
            });
            let ctx = format!("N={n} {isa:?}");
            if isa != KernelIsa::Avx512 {
                assert!(!dot, "{ctx}: no bf16 dot products below the AVX-512 kernels");
            }
            if dot && n >= panel {
                // rel_err after taking off each output's allowance for boundary activations
                let scale = rounded.iter().fold(0f64, |m, v| m.max(v.abs()));
                let err = y
                    .iter()
                    .zip(&rounded)
                    .zip(&slack)
                    .map(|((a, b), s)| ((*a as f64 - b).abs() - s).max(0.0))
                    .fold(0.0, f64::max)
                    / scale;
                verbose(
                    &ctx,
                    &format!("bf16 vs rounded f64 ({flips} boundary activations)"),
                    err,
                );
                assert!(err <= TOL, "{ctx}: bf16 kernel vs the rounded f64 loop: {err:e}");
                let moved = rel_err(&y, &exact);
                assert!(moved > 5e-4, "{ctx}: bf16 rounding should show ({moved:e})");
            } else {
                assert_eq!(
                    y, y32,
                    "{ctx}: below the panel size or without AVX512-BF16: the f32 kernel"
                );
            }
        }
    }
}
