//! The affine quantized matmul and embedding primitives (every kernel instruction set this CPU has),
//! their portable graphs and MLX's own `quantized_matmul`, against an f64 loop written from
//! docs/bundle-format.md §2: W[r, j] = scales[r, j/G]·q[r, j] + biases[r, j/G], q LSB-first in U32 words,
//! y = x·Wᵀ.
//!
//! Error norm: max_i |y_i − ref_i| / max_i |ref_i| (∞-norm relative error), bound 1e-5.
use half::{bf16, f16};
use mlx_rs::{ops::indexing::IndexOp, Array, Dtype};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use zaya_mlx::ext::{affine_embed, affine_matmul, ExtMode};

mod kernel_support;
use kernel_support::{isas, rel_err, values, verbose, with_isa};

const TOL: f64 = 1e-5;

#[derive(Clone, Copy, Debug, PartialEq)]
enum SType {
    F16,
    Bf16,
    F32,
}

/// A random affine weight: random codes, scales of both signs, biases; host copies of the stored
/// (rounded) scales/biases in f64 for the reference.
struct Weight {
    out: usize,
    inp: usize,
    bits: u32,
    group: usize,
    w: Vec<u32>,
    s64: Vec<f64>,
    b64: Vec<f64>,
    wa: Array,
    sa: Array,
    ba: Array,
}

fn stored(v: &[f32], st: SType, shape: &[i32]) -> (Vec<f64>, Array) {
    match st {
        SType::F16 => {
            let h: Vec<f16> = v.iter().map(|x| f16::from_f32(*x)).collect();
            (h.iter().map(|x| x.to_f64()).collect(), Array::from_slice(&h, shape))
        }
        SType::Bf16 => {
            let h: Vec<bf16> = v.iter().map(|x| bf16::from_f32(*x)).collect();
            (h.iter().map(|x| x.to_f64()).collect(), Array::from_slice(&h, shape))
        }
        SType::F32 => (v.iter().map(|x| *x as f64).collect(), Array::from_slice(v, shape)),
    }
}

fn weight(seed: u64, out: usize, inp: usize, bits: u32, group: usize, st: SType) -> Weight {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let wpr = inp * bits as usize / 32;
    let w: Vec<u32> = (0..out * wpr).map(|_| rng.gen()).collect();
    let ng = inp / group;
    let s: Vec<f32> = (0..out * ng).map(|_| rng.gen_range(-0.05f32..0.05)).collect();
    let b: Vec<f32> = (0..out * ng).map(|_| rng.gen_range(-1.0f32..1.0)).collect();
    let shape = [out as i32, ng as i32];
    let (s64, sa) = stored(&s, st, &shape);
    let (b64, ba) = stored(&b, st, &shape);
    assert!(s64.iter().any(|v| *v < 0.0) && s64.iter().any(|v| *v > 0.0));
    let wa = Array::from_slice(&w, &[out as i32, wpr as i32]);
    Weight {
        out,
        inp,
        bits,
        group,
        w,
        s64,
        b64,
        wa,
        sa,
        ba,
    }
}

impl Weight {
    fn deq(&self, r: usize, j: usize) -> f64 {
        let bits = self.bits as usize;
        let per = 32 / bits;
        let word = self.w[r * (self.inp / per) + j / per];
        let q = (word >> ((j % per) * bits)) & ((1u32 << bits) - 1);
        let g = r * (self.inp / self.group) + j / self.group;
        self.s64[g] * q as f64 + self.b64[g]
    }
    fn matmul64(&self, x: &[f32]) -> Vec<f64> {
        let n = x.len() / self.inp;
        let mut y = vec![0f64; n * self.out];
        for r in 0..self.out {
            let row: Vec<f64> = (0..self.inp).map(|j| self.deq(r, j)).collect();
            for t in 0..n {
                y[t * self.out + r] = row
                    .iter()
                    .zip(&x[t * self.inp..(t + 1) * self.inp])
                    .map(|(w, x)| w * *x as f64)
                    .sum();
            }
        }
        y
    }
    fn run(&self, x: &Array, mode: ExtMode) -> zaya_mlx::Result<Array> {
        affine_matmul(x, &self.wa, &self.sa, &self.ba, self.bits, self.group as u32, mode)
    }
    fn run_mode(&self, x: &Array, mode: zaya_mlx::ext::MatmulMode) -> zaya_mlx::Result<Array> {
        affine_matmul(x, &self.wa, &self.sa, &self.ba, self.bits, self.group as u32, mode)
    }
}

/// Every ISA's primitive, the portable graph and (when `stock`) MLX's quantized_matmul vs the f64 loop.
fn check(w: &Weight, n: usize, seed: u64, stock: bool) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let x: Vec<f32> = (0..n * w.inp).map(|_| rng.gen_range(-1.0f32..1.0)).collect();
    let want = w.matmul64(&x);
    let xa = Array::from_slice(&x, &[n as i32, w.inp as i32]);
    let ctx = format!("out={} in={} bits={} G={} N={n}", w.out, w.inp, w.bits, w.group);
    for isa in isas() {
        let y = with_isa(isa, || w.run(&xa, ExtMode::Primitive)).unwrap();
        assert_eq!(y.shape(), &[n as i32, w.out as i32]);
        let err = rel_err(&values(&y), &want);
        verbose(&ctx, &format!("{isa:?}"), err);
        assert!(err <= TOL, "{ctx} {isa:?}: rel err {err:e}");
    }
    if stock {
        let err = rel_err(&values(&w.run(&xa, ExtMode::Portable).unwrap()), &want);
        verbose(&ctx, "portable", err);
        assert!(err <= TOL, "{ctx} portable: rel err {err:e}");
        let y = mlx_rs::ops::quantized_matmul(&xa, &w.wa, &w.sa, &w.ba, true, w.group as i32, w.bits as i32).unwrap();
        let y = y.as_dtype(Dtype::Float32).unwrap();
        let err = rel_err(&values(&y), &want);
        verbose(&ctx, "mlx quantized_matmul", err);
        assert!(err <= TOL, "{ctx} mlx quantized_matmul: rel err {err:e}");
    }
}

#[test]
fn matmul_bits_groups_dtypes_batch_sizes() {
    let mut seed = 0;
    for bits in [8u32, 4] {
        for group in [32usize, 64, 128] {
            for st in [SType::F16, SType::Bf16, SType::F32] {
                seed += 1;
                // out = 37: not a multiple of the 4-row tile, not a multiple of the thread split
                let w = weight(seed, 37, 256, bits, group, st);
                for n in [1usize, 3, 17, 64] {
                    check(&w, n, seed * 100 + n as u64, true);
                }
            }
        }
    }
}

/// The rows of a many-row call are computed in tiles of 4 (the last one shorter); each tile's rows
/// equal, bit for bit and on every ISA, a call with only that tile's rows. Below `panel_min_rows` rows
/// that is the per-tile kernel against itself; from it on, the panel GEMM against the per-tile kernel
/// (same values, same order of the multiply-adds), so the switch between the two at any row count
/// changes no result. (A tile of 1 row splits its accumulators differently from tiles of 2–4, so rows
/// are not compared one by one.)
#[test]
fn panel_and_tile_rows_equal_the_same_tiles_alone() {
    use zaya_mlx::ext::{panel_min_rows, PanelKind};
    let panel = panel_min_rows(PanelKind::Affine);
    let mut seed = 700;
    // 512 columns: one pass over k; 1088 = 2·512 + 64: the panel GEMM's k-blocked passes, the last short
    for (bits, group, st, inp) in [
        (8u32, 32usize, SType::F16, 512usize),
        (8, 64, SType::Bf16, 512),
        (4, 64, SType::F16, 512),
        (8, 32, SType::F16, 1088),
        (4, 64, SType::Bf16, 1088),
    ] {
        seed += 1;
        let w = weight(seed, 70, inp, bits, group, st);
        for n in [6usize, panel - 1, panel, panel + 5, 2 * panel + 1] {
            let mut rng = ChaCha8Rng::seed_from_u64(seed * 10 + n as u64);
            let x: Vec<f32> = (0..n * w.inp).map(|_| rng.gen_range(-1.0f32..1.0)).collect();
            let xa = Array::from_slice(&x, &[n as i32, w.inp as i32]);
            for isa in isas() {
                let ctx = format!("bits={bits} G={group} {st:?} N={n} {isa:?}");
                let all = with_isa(isa, || values(&w.run(&xa, ExtMode::Primitive).unwrap()));
                for t0 in (0..n).step_by(4) {
                    let t1 = (t0 + 4).min(n);
                    let tile = Array::from_slice(&x[t0 * w.inp..t1 * w.inp], &[(t1 - t0) as i32, w.inp as i32]);
                    let alone = with_isa(isa, || values(&w.run(&tile, ExtMode::Primitive).unwrap()));
                    let got = &all[t0 * w.out..t1 * w.out];
                    assert!(
                        got.iter().zip(&alone).all(|(a, b)| a.to_bits() == b.to_bits()),
                        "{ctx}: rows {t0}..{t1} differ from the same rows alone"
                    );
                }
            }
        }
    }
}

#[test]
fn matmul_model_sized_rows() {
    // in = 2048 like ZAYA's hidden size; odd row counts across two threads.
    for (bits, group, st, n) in [
        (8u32, 32usize, SType::F16, 1usize),
        (8, 32, SType::F16, 17),
        (4, 64, SType::Bf16, 5),
    ] {
        let w = weight(40 + bits as u64, 4099, 2048, bits, group, st);
        check(&w, n, 7, n == 1);
    }
}

#[test]
fn matmul_group_sizes_mlx_does_not_offer() {
    // Group sizes covering whole words but outside MLX's 32/64/128: the vector kernels take G = 16
    // at 8 bits on AVX-512, the scalar kernel takes the rest. Only the f64 loop is the reference.
    for (bits, group) in [(8u32, 16usize), (8, 8), (4, 16), (4, 8), (8, 96)] {
        let w = weight(60 + group as u64, 21, 192, bits, group, SType::F16);
        for n in [1usize, 6] {
            check(&w, n, 9, false);
        }
    }
}

#[test]
fn weights_quantized_by_mlx() {
    // Real mx.quantize output (scales may be negative in current MLX) from float weights.
    let mut rng = ChaCha8Rng::seed_from_u64(77);
    let (out, inp) = (96usize, 512usize);
    let wf: Vec<f32> = (0..out * inp).map(|_| rng.gen_range(-0.2f32..0.2)).collect();
    for (bits, group) in [(8, 32), (4, 64)] {
        let wa = Array::from_slice(&wf, &[out as i32, inp as i32])
            .as_dtype(Dtype::Float16)
            .unwrap();
        let (q, s, b) = mlx_rs::ops::quantize(&wa, group, bits).unwrap();
        q.eval().unwrap();
        s.eval().unwrap();
        b.eval().unwrap();
        assert_eq!(s.dtype(), Dtype::Float16);
        let w = Weight {
            out,
            inp,
            bits: bits as u32,
            group: group as usize,
            w: q.as_slice::<u32>().to_vec(),
            s64: s.as_slice::<f16>().iter().map(|v| v.to_f64()).collect(),
            b64: b.as_slice::<f16>().iter().map(|v| v.to_f64()).collect(),
            wa: q,
            sa: s,
            ba: b,
        };
        for n in [1usize, 3, 17] {
            check(&w, n, 3, true);
        }
    }
}

#[test]
fn leading_dims_are_kept() {
    let w = weight(90, 40, 128, 8, 32, SType::F16);
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let x: Vec<f32> = (0..6 * 128).map(|_| rng.gen_range(-1.0f32..1.0)).collect();
    let want = w.matmul64(&x);
    let xa = Array::from_slice(&x, &[2, 3, 128]);
    for mode in [ExtMode::Primitive, ExtMode::Portable, ExtMode::Auto] {
        let y = w.run(&xa, mode).unwrap();
        assert_eq!(y.shape(), &[2, 3, 40]);
        assert!(rel_err(&values(&y), &want) <= TOL, "{mode:?}");
    }
    let x0 = Array::from_slice::<f32>(&[], &[0, 128]);
    let y = w.run(&x0, ExtMode::Primitive).unwrap();
    y.eval().unwrap();
    assert_eq!(y.shape(), &[0, 40]);
}

#[test]
fn embedding_rows() {
    for (bits, group, st) in [(8u32, 32usize, SType::F16), (4, 64, SType::Bf16), (8, 128, SType::F32)] {
        let w = weight(100 + bits as u64, 50, 256, bits, group, st);
        let ids: [i64; 6] = [0, 49, 7, 50, -1, 7];
        let mut want = vec![0f64; ids.len() * w.inp];
        for (i, &id) in ids.iter().enumerate() {
            if (0..w.out as i64).contains(&id) {
                for j in 0..w.inp {
                    want[i * w.inp + j] = w.deq(id as usize, j);
                }
            }
        }
        let i32s: Vec<i32> = ids.iter().map(|v| *v as i32).collect();
        let u32s: Vec<u32> = i32s.iter().map(|v| *v as u32).collect();
        for ia in [Array::from_slice(&i32s, &[2, 3]), Array::from_slice(&u32s, &[2, 3])] {
            for mode in [ExtMode::Primitive, ExtMode::Portable, ExtMode::Auto] {
                let y = affine_embed(&ia, &w.wa, &w.sa, &w.ba, bits, group as u32, mode).unwrap();
                assert_eq!(y.shape(), &[2, 3, w.inp as i32]);
                let got = values(&y);
                // Dequantized values: exact up to the f32 rounding of s*q + b.
                let err = rel_err(&got, &want);
                assert!(err <= 1e-6, "bits={bits} G={group} {st:?} {mode:?}: {err:e}");
                assert!(
                    got[3 * w.inp..5 * w.inp].iter().all(|v| *v == 0.0),
                    "out-of-range ids give zero rows"
                );
            }
        }
    }
}

#[test]
fn bad_arguments_are_errors_not_aborts() {
    let w = weight(200, 16, 128, 8, 32, SType::F16);
    let x = Array::from_slice(&vec![0.5f32; 2 * 128], &[2, 128]);
    let err = |r: zaya_mlx::Result<Array>| r.unwrap_err().to_string();
    assert!(w.run(&x, ExtMode::Auto).is_ok());

    let e = err(w.run(&x.as_dtype(Dtype::Float16).unwrap(), ExtMode::Auto));
    assert!(e.contains("x must be float32"), "{e}");
    let x64 = Array::from_slice(&vec![0.5f32; 64], &[1, 64]);
    let e = err(w.run(&x64, ExtMode::Primitive));
    assert!(e.contains("x must be [..., in] with in = 128"), "{e}");
    let e = err(affine_matmul(&x, &w.wa, &w.sa, &w.ba, 3, 32, ExtMode::Auto));
    assert!(e.contains("bits must be 4 or 8"), "{e}");
    let e = err(affine_matmul(&x, &w.wa, &w.sa, &w.ba, 8, 48, ExtMode::Auto));
    assert!(e.contains("does not divide"), "{e}");
    let e = err(affine_matmul(&x, &w.wa, &w.sa, &w.ba, 8, 6, ExtMode::Auto));
    assert!(e.contains("whole words"), "{e}");
    let e = err(affine_matmul(&x, &w.wa, &w.sa, &w.ba, 8, 64, ExtMode::Auto));
    assert!(e.contains("scales must be [out, in/group_size]"), "{e}");
    let e = err(affine_matmul(
        &x,
        &w.wa.as_dtype(Dtype::Int32).unwrap(),
        &w.sa,
        &w.ba,
        8,
        32,
        ExtMode::Auto,
    ));
    assert!(e.contains("w must be uint32"), "{e}");
    let b32 = w.ba.as_dtype(Dtype::Float32).unwrap();
    let e = err(affine_matmul(&x, &w.wa, &w.sa, &b32, 8, 32, ExtMode::Auto));
    assert!(e.contains("biases must have the scales' dtype"), "{e}");
    let si = w.sa.as_dtype(Dtype::Int32).unwrap();
    let e = err(affine_matmul(&x, &w.wa, &si, &si, 8, 32, ExtMode::Auto));
    assert!(e.contains("scales must be float16"), "{e}");

    let ids = Array::from_slice(&[1.0f32, 2.0], &[2]);
    let e = err(affine_embed(&ids, &w.wa, &w.sa, &w.ba, 8, 32, ExtMode::Auto));
    assert!(e.contains("ids must be int32 or uint32"), "{e}");
    let ids = Array::from_slice(&[1i32, 2], &[2]);
    let e = err(affine_embed(&ids, &w.wa, &w.sa, &w.ba, 4, 32, ExtMode::Auto));
    assert!(e.contains("scales must be [out, in/group_size]"), "{e}");
}

#[test]
fn non_contiguous_inputs() {
    // Strided views (column slices, transposes), both evaluated and lazy, must be read correctly.
    let w = weight(300, 24, 128, 8, 32, SType::F16);
    let mut rng = ChaCha8Rng::seed_from_u64(8);
    let x: Vec<f32> = (0..5 * 128).map(|_| rng.gen_range(-1.0f32..1.0)).collect();
    let want = w.matmul64(&x);
    // x as the transpose of a [128, 5] array
    let xt: Vec<f32> = (0..128 * 5).map(|k| x[(k % 5) * 128 + k / 5]).collect();
    let xt = Array::from_slice(&xt, &[128, 5]);
    // w as the left column half of a [24, 64] array whose right half is garbage
    let wpr = 128 / 4;
    let mut wide = vec![0xdead_beefu32; 24 * 2 * wpr];
    for r in 0..24 {
        wide[r * 2 * wpr..r * 2 * wpr + wpr].copy_from_slice(&w.w[r * wpr..(r + 1) * wpr]);
    }
    let wide = Array::from_slice(&wide, &[24, 2 * wpr as i32]);
    for evaluated in [false, true] {
        let xa = xt.t();
        let wa = wide.index((.., ..wpr as i32));
        if evaluated {
            xa.eval().unwrap();
            wa.eval().unwrap();
        }
        for mode in [ExtMode::Primitive, ExtMode::Portable] {
            let y = affine_matmul(&xa, &wa, &w.sa, &w.ba, 8, 32, mode).unwrap();
            assert!(rel_err(&values(&y), &want) <= TOL, "evaluated={evaluated} {mode:?}");
        }
    }
}

// ---- dense (float-weight) matmul ------------------------------------------------------------------

#[test]
fn dense_matmul_types_bias_and_sizes() {
    use zaya_mlx::ext::dense_matmul;
    let mut seed = 500;
    // in: a multiple of both vector widths, and ragged widths that need the scalar tail
    for &(out, inp) in &[(37usize, 256usize), (21, 200), (9, 17), (300, 2048)] {
        for st in [SType::F16, SType::Bf16, SType::F32] {
            seed += 1;
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let wf: Vec<f32> = (0..out * inp).map(|_| rng.gen_range(-0.1f32..0.1)).collect();
            let bf: Vec<f32> = (0..out).map(|_| rng.gen_range(-1.0f32..1.0)).collect();
            let (w64, wa) = stored(&wf, st, &[out as i32, inp as i32]);
            let (b64, ba) = stored(&bf, SType::Bf16, &[out as i32]);
            for n in [1usize, 3, 17, 64] {
                if out * inp > 100_000 && n > 3 {
                    continue;
                }
                let x: Vec<f32> = (0..n * inp).map(|_| rng.gen_range(-1.0f32..1.0)).collect();
                let xa = Array::from_slice(&x, &[n as i32, inp as i32]);
                for bias in [false, true] {
                    let want: Vec<f64> = (0..n * out)
                        .map(|k| {
                            let (t, r) = (k / out, k % out);
                            let dot: f64 = (0..inp).map(|j| w64[r * inp + j] * x[t * inp + j] as f64).sum();
                            dot + if bias { b64[r] } else { 0.0 }
                        })
                        .collect();
                    let ctx = format!("dense out={out} in={inp} {st:?} N={n} bias={bias}");
                    let b = if bias { Some(&ba) } else { None };
                    for isa in isas() {
                        let y = with_isa(isa, || dense_matmul(&xa, &wa, b, ExtMode::Primitive)).unwrap();
                        assert_eq!(y.shape(), &[n as i32, out as i32]);
                        let err = rel_err(&values(&y), &want);
                        verbose(&ctx, &format!("{isa:?}"), err);
                        assert!(err <= TOL, "{ctx} {isa:?}: {err:e}");
                    }
                    let err = rel_err(&values(&dense_matmul(&xa, &wa, b, ExtMode::Portable).unwrap()), &want);
                    verbose(&ctx, "portable", err);
                    assert!(err <= TOL, "{ctx} portable: {err:e}");
                }
            }
        }
    }
}

/// As `panel_and_tile_rows_equal_the_same_tiles_alone` for float matrices: from `panel_min_rows(Dense)`
/// rows the f16/bf16 rows are converted once into an f32 panel (f32 rows used in place) instead of
/// once per tile of 4 tokens; each tile's rows equal, bit for bit and on every ISA, a call with only
/// that tile's rows (the per-tile kernel).
#[test]
fn dense_panel_rows_equal_the_same_tiles_alone() {
    use zaya_mlx::ext::{dense_matmul, panel_min_rows, PanelKind};
    let panel = panel_min_rows(PanelKind::Dense);
    assert!(
        panel > 4,
        "a panel threshold of {panel} rows leaves no per-tile calls to compare with"
    );
    let mut seed = 900;
    // 512 columns: one pass over k; 1088: the panel GEMM's k-blocked passes (2 × 512, then 64)
    for (st, inp) in [
        (SType::F16, 512usize),
        (SType::Bf16, 512),
        (SType::F32, 512),
        (SType::F16, 1088),
    ] {
        seed += 1;
        let out = 70usize;
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let wf: Vec<f32> = (0..out * inp).map(|_| rng.gen_range(-0.1f32..0.1)).collect();
        let (_, wa) = stored(&wf, st, &[out as i32, inp as i32]);
        for n in [6usize, panel - 1, panel, panel + 5, 2 * panel + 1] {
            let x: Vec<f32> = (0..n * inp).map(|_| rng.gen_range(-1.0f32..1.0)).collect();
            let xa = Array::from_slice(&x, &[n as i32, inp as i32]);
            for isa in isas() {
                let ctx = format!("dense {st:?} N={n} {isa:?}");
                let all = with_isa(isa, || {
                    values(&dense_matmul(&xa, &wa, None, ExtMode::Primitive).unwrap())
                });
                for t0 in (0..n).step_by(4) {
                    let t1 = (t0 + 4).min(n);
                    let tile = Array::from_slice(&x[t0 * inp..t1 * inp], &[(t1 - t0) as i32, inp as i32]);
                    let alone = with_isa(isa, || {
                        values(&dense_matmul(&tile, &wa, None, ExtMode::Primitive).unwrap())
                    });
                    assert!(
                        all[t0 * out..t1 * out]
                            .iter()
                            .zip(&alone)
                            .all(|(a, b)| a.to_bits() == b.to_bits()),
                        "{ctx}: rows {t0}..{t1} differ from the same rows alone"
                    );
                }
            }
        }
    }
}

#[test]
fn dense_matmul_bad_arguments() {
    use zaya_mlx::ext::dense_matmul;
    let x = Array::from_slice(&[0.5f32; 2 * 16], &[2, 16]);
    let w = Array::from_slice(&vec![0.5f32; 8 * 16], &[8, 16]);
    let err = |r: zaya_mlx::Result<Array>| r.unwrap_err().to_string();
    assert!(dense_matmul(&x, &w, None, ExtMode::Auto).is_ok());
    let e = err(dense_matmul(
        &x.as_dtype(Dtype::Float16).unwrap(),
        &w,
        None,
        ExtMode::Auto,
    ));
    assert!(e.contains("x must be float32"), "{e}");
    let e = err(dense_matmul(
        &x,
        &w.as_dtype(Dtype::Int32).unwrap(),
        None,
        ExtMode::Auto,
    ));
    assert!(e.contains("w must be float16"), "{e}");
    let w15 = Array::from_slice(&vec![0.5f32; 8 * 15], &[8, 15]);
    let e = err(dense_matmul(&x, &w15, None, ExtMode::Primitive));
    assert!(e.contains("x must be [..., in] with in = 15"), "{e}");
    let b7 = Array::from_slice(&[0f32; 7], &[7]);
    let e = err(dense_matmul(&x, &w, Some(&b7), ExtMode::Auto));
    assert!(e.contains("bias must be [out] = [8]"), "{e}");
    let w3 = Array::from_slice(&vec![0.5f32; 8 * 16], &[2, 4, 16]);
    let e = err(dense_matmul(&x, &w3, None, ExtMode::Auto));
    assert!(e.contains("w must have 2 dimensions"), "{e}");
}

/// The kernel trace records a primitive's task (name, start ≤ end, inside the eval) while it is on,
/// and nothing once it is off.
#[test]
fn kernel_trace_records_tasks_while_on() {
    use zaya_mlx::ext::{now_ns, trace_enable, trace_take};
    let w = weight(7, 64, 256, 8, 32, SType::F16);
    let x = Array::from_slice(&[0.5f32; 256], &[1, 256]);
    trace_enable(true);
    let t0 = now_ns();
    w.run(&x, ExtMode::Primitive).unwrap().eval().unwrap();
    let t1 = now_ns();
    trace_enable(false);
    let ev = trace_take();
    let mine: Vec<_> = ev
        .iter()
        .filter(|e| e.name == "ZayaAffineMatmul" && e.start_ns >= t0 && e.end_ns <= t1)
        .collect();
    assert!(!mine.is_empty(), "no ZayaAffineMatmul task traced in {ev:?}");
    assert!(mine.iter().all(|e| e.start_ns <= e.end_ns));

    trace_take();
    let t2 = now_ns();
    w.run(&x, ExtMode::Primitive).unwrap().eval().unwrap();
    let late: Vec<_> = trace_take().into_iter().filter(|e| e.start_ns >= t2).collect();
    assert!(late.is_empty(), "traced while off: {late:?}");
}

/// f64 of v rounded to bf16 (round to nearest even), as the bf16 kernels round x and the decoded
/// weights.
fn bf(v: f64) -> f64 {
    bf16::from_f32(v as f32).to_f64()
}

/// `MatmulPrecision::Bf16` against the f64 loop over bf16-rounded operands: x and every decoded weight
/// s·q + b (computed exactly, rounded to f32, then to bf16) rounded to bf16, products summed exactly.
/// With at least the panel size of rows (`panel_min_rows`) on a CPU with AVX512-BF16 the kernel must
/// match it to f32 summation accuracy, and differ measurably from the f32 result; with fewer rows, or
/// without the instructions (the AVX2 cap), it must equal the f32 kernel bit for bit.
#[test]
fn bf16_precision_rounds_operands_and_accumulates_in_f32() {
    use zaya_mlx::ext::{bf16_dot_available, panel_min_rows, KernelIsa, MatmulMode, MatmulPrecision, PanelKind};
    let panel = panel_min_rows(PanelKind::Affine);
    assert!((2..=64).contains(&panel), "panel size {panel}");
    let bf16_mode = MatmulMode {
        ext: ExtMode::Primitive,
        precision: MatmulPrecision::Bf16,
    };
    let mut seed = 900;
    for (bits, group, st) in [(8u32, 64usize, SType::F16), (4, 64, SType::Bf16), (8, 32, SType::F32)] {
        seed += 1;
        let w = weight(seed, 70, 512, bits, group, st);
        for n in [3usize, panel - 1, panel, 2 * panel + 3] {
            let mut rng = ChaCha8Rng::seed_from_u64(seed * 10 + n as u64);
            let x: Vec<f32> = (0..n * w.inp).map(|_| rng.gen_range(-1.0f32..1.0)).collect();
            let xa = Array::from_slice(&x, &[n as i32, w.inp as i32]);
            let ctx = format!("bits={bits} G={group} {st:?} N={n}");
            let exact = w.matmul64(&x);
            let mut rounded = vec![0f64; n * w.out];
            for r in 0..w.out {
                let row: Vec<f64> = (0..w.inp).map(|j| bf(w.deq(r, j) as f32 as f64)).collect();
                for t in 0..n {
                    rounded[t * w.out + r] = row
                        .iter()
                        .zip(&x[t * w.inp..(t + 1) * w.inp])
                        .map(|(a, b)| a * bf(*b as f64))
                        .sum();
                }
            }
            for isa in isas() {
                let (y, y32, dot) = with_isa(isa, || {
                    (
                        values(&w.run_mode(&xa, bf16_mode).unwrap()),
                        values(&w.run(&xa, ExtMode::Primitive).unwrap()),
                        bf16_dot_available(),
                    )
                });
                if isa != KernelIsa::Avx512 {
                    assert!(!dot, "{ctx}: no bf16 dot products below the AVX-512 kernels");
                }
                if dot && n >= panel {
                    let err = rel_err(&y, &rounded);
                    verbose(&ctx, &format!("{isa:?} bf16 vs rounded f64"), err);
                    assert!(
                        err <= TOL,
                        "{ctx} {isa:?}: bf16 kernel vs the rounded f64 loop: {err:e}"
                    );
                    let moved = rel_err(&y, &exact);
                    assert!(moved > 1e-4, "{ctx} {isa:?}: bf16 rounding should show ({moved:e})");
                } else {
                    assert_eq!(
                        y, y32,
                        "{ctx} {isa:?}: below the panel size or without AVX512-BF16: the f32 kernel"
                    );
                }
            }
        }
    }
}
