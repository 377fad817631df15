//! Building blocks against f64 loops written from the formulas (docs/bundle-format.md §2, §3;
//! docs/model.md §3.2 step 6, §4.2): the randomized Hadamard rotation (power-of-two and
//! blockwise dims), LSB-first code unpacking, the TurboQuant expert matmul, affine linears and
//! embedding rows (negative scales, f16 scales), exact-erf GELU, and MLX's `fast::rope` as the
//! partial NeoX RoPE with the rotary dim in the frequency exponent.
use std::collections::BTreeMap;

use mlx_rs::{Array, Dtype};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use zaya_mlx::bundle::CanonicalWeights;
use zaya_mlx::model::moe::gelu;
use zaya_mlx::quant::linear::{QLinear, WeightSource};
use zaya_mlx::quant::turboquant::{rotate, unpack_codes, TqMatrix};
use zaya_mlx::quant::WeightFormat;

fn host(a: &Array) -> Vec<f32> {
    let a = a.as_dtype(Dtype::Float32).unwrap().contiguous().unwrap();
    a.eval().unwrap();
    a.as_slice::<f32>().to_vec()
}

fn rel_err(a: &[f32], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    let d = a.iter().zip(b).map(|(x, y)| (*x as f64 - y).abs()).fold(0.0, f64::max);
    let m = b.iter().map(|y| y.abs()).fold(0.0, f64::max);
    d / m
}

/// Orthonormal Sylvester Hadamard H[i][j] = (-1)^popcount(i&j)/√d applied to v.
fn hadamard_f64(v: &[f64]) -> Vec<f64> {
    let d = v.len();
    (0..d)
        .map(|i| {
            (0..d)
                .map(|j| if (i & j).count_ones() % 2 == 0 { v[j] } else { -v[j] })
                .sum::<f64>()
                / (d as f64).sqrt()
        })
        .collect()
}

/// R(v) = H(s⊙v) blockwise over the power-of-two decomposition, largest block first.
fn rotate_f64(v: &[f64], s: &[f64]) -> Vec<f64> {
    let mut out = Vec::new();
    let mut off = 0;
    let mut rem = v.len();
    while rem > 0 {
        let b = 1usize << (usize::BITS - 1 - rem.leading_zeros());
        let blk: Vec<f64> = (off..off + b).map(|i| v[i] * s[i]).collect();
        out.extend(hadamard_f64(&blk));
        off += b;
        rem -= b;
    }
    out
}

fn signs(rng: &mut ChaCha8Rng, d: usize) -> Vec<f32> {
    (0..d).map(|_| if rng.gen::<bool>() { 1.0 } else { -1.0 }).collect()
}

#[test]
fn rotation_matches_f64_hadamard_including_blockwise_dims() {
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    for d in [64usize, 192, 2048] {
        let n = 3;
        let x: Vec<f32> = (0..n * d).map(|_| rng.gen_range(-2.0..2.0)).collect();
        let s = signs(&mut rng, d);
        let got = host(
            &rotate(
                &Array::from_slice(&x, &[n as i32, d as i32]),
                &Array::from_slice(&s, &[d as i32]),
            )
            .unwrap(),
        );
        let s64: Vec<f64> = s.iter().map(|&v| v as f64).collect();
        let want: Vec<f64> = x
            .chunks(d)
            .flat_map(|row| rotate_f64(&row.iter().map(|&v| v as f64).collect::<Vec<_>>(), &s64))
            .collect();
        let e = rel_err(&got, &want);
        assert!(e < 1e-5, "d={d}: rel err {e}");
    }
}

fn pack(codes: &[u32], bits: u32, rows: usize, cols_in: usize) -> Vec<u32> {
    let per = (32 / bits) as usize;
    let words = cols_in.div_ceil(per);
    let mut out = vec![0u32; rows * words];
    for r in 0..rows {
        for i in 0..cols_in {
            out[r * words + i / per] |= codes[r * cols_in + i] << ((i % per) as u32 * bits);
        }
    }
    out
}

#[test]
fn unpack_is_lsb_first_for_4_and_2_bits() {
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    for (bits, cols) in [(4u32, 64usize), (2, 48), (4, 20)] {
        let rows = 5;
        let codes: Vec<u32> = (0..rows * cols).map(|_| rng.gen_range(0..1u32 << bits)).collect();
        let packed = pack(&codes, bits, rows, cols);
        let words = packed.len() / rows;
        let got = unpack_codes(&Array::from_slice(&packed, &[rows as i32, words as i32]), bits, cols)
            .unwrap()
            .contiguous()
            .unwrap();
        got.eval().unwrap();
        assert_eq!(got.as_slice::<u32>(), &codes[..], "bits {bits} cols {cols}");
    }
    // the documented example row: codes 13, 9, 8, 9, 6, 6, 10, 7 → first word 0x7a66989d
    let row = [13u32, 9, 8, 9, 6, 6, 10, 7];
    assert_eq!(pack(&row, 4, 1, 8), vec![0x7a66989d]);
}

#[test]
fn turboquant_matmul_matches_f64_dequantized_weights() {
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let (e, out, inf, bits) = (3usize, 24usize, 64usize, 4u32);
    let codes: Vec<u32> = (0..e * out * inf).map(|_| rng.gen_range(0..16)).collect();
    let packed = pack(&codes, bits, e * out, inf);
    let norms: Vec<f32> = (0..e * out).map(|_| rng.gen_range(0.5..2.0)).collect();
    let mut cb: Vec<f32> = (0..16).map(|_| rng.gen_range(-0.3..0.3)).collect();
    cb.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let s = signs(&mut rng, inf);
    let m = TqMatrix::new(
        Array::from_slice(&packed, &[e as i32, out as i32, (inf / 8) as i32]),
        Array::from_slice(&norms, &[e as i32, out as i32]),
        Array::from_slice(&cb, &[16]),
        Array::from_slice(&s, &[inf as i32]),
        bits,
        inf,
        out,
    )
    .unwrap();
    // the code-by-code unpacking path (no lookup table) must agree exactly
    let plain = TqMatrix { lut: None, ..m.clone() };
    let n = 4;
    let x: Vec<f32> = (0..n * inf).map(|_| rng.gen_range(-1.0..1.0)).collect();
    let s64: Vec<f64> = s.iter().map(|&v| v as f64).collect();
    for ex in 0..e {
        // W[r,:] = s ⊙ H(n_r · C[codes[r,:]])
        let w: Vec<Vec<f64>> = (0..out)
            .map(|r| {
                let row: Vec<f64> = (0..inf)
                    .map(|i| norms[ex * out + r] as f64 * cb[codes[(ex * out + r) * inf + i] as usize] as f64)
                    .collect();
                hadamard_f64(&row).iter().zip(&s64).map(|(a, b)| a * b).collect()
            })
            .collect();
        let mut want = Vec::with_capacity(n * out);
        for t in 0..n {
            for wr in &w {
                want.push(
                    wr.iter()
                        .zip(&x[t * inf..(t + 1) * inf])
                        .map(|(a, b)| a * *b as f64)
                        .sum::<f64>(),
                );
            }
        }
        let got = host(
            &m.matmul(&Array::from_slice(&x, &[n as i32, inf as i32]), ex as i32)
                .unwrap(),
        );
        let err = rel_err(&got, &want);
        assert!(err < 1e-5, "expert {ex}: rel err {err}");
        assert_eq!(
            host(&m.rotated_codes_weight(ex as i32).unwrap()),
            host(&plain.rotated_codes_weight(ex as i32).unwrap())
        );
        let deq = host(&m.dequantized_expert(ex as i32).unwrap());
        let err = rel_err(&deq, &w.concat());
        assert!(err < 1e-5, "dequantized expert {ex}: rel err {err}");
    }
}

#[test]
fn affine_linear_and_embedding_match_f64_dequantization() {
    let mut rng = ChaCha8Rng::seed_from_u64(4);
    for (bits, gs, scale_dtype) in [
        (8u32, 32usize, Dtype::Float16),
        (4, 64, Dtype::Float32),
        (8, 64, Dtype::Bfloat16),
    ] {
        let (out, inf) = (40usize, 128usize);
        let per = (32 / bits) as usize;
        let q: Vec<u32> = (0..out * inf).map(|_| rng.gen_range(0..1u32 << bits)).collect();
        let g = inf / gs;
        // negative scales are legal
        let scales: Vec<f32> = (0..out * g).map(|_| rng.gen_range(-0.05..0.05)).collect();
        let biases: Vec<f32> = (0..out * g).map(|_| rng.gen_range(-0.5..0.5)).collect();
        let sa = Array::from_slice(&scales, &[out as i32, g as i32])
            .as_dtype(scale_dtype)
            .unwrap();
        let ba = Array::from_slice(&biases, &[out as i32, g as i32])
            .as_dtype(scale_dtype)
            .unwrap();
        let (sh, bh) = (host(&sa), host(&ba)); // the values as stored
        let w: Vec<f64> = (0..out * inf)
            .map(|k| {
                sh[(k / inf) * g + (k % inf) / gs] as f64 * q[k] as f64 + bh[(k / inf) * g + (k % inf) / gs] as f64
            })
            .collect();
        let mut tensors = BTreeMap::new();
        tensors.insert(
            "lin.weight".to_string(),
            Array::from_slice(&pack(&q, bits, out, inf), &[out as i32, (inf / per) as i32]),
        );
        tensors.insert("lin.scales".to_string(), sa);
        tensors.insert("lin.biases".to_string(), ba);
        let mut formats = BTreeMap::new();
        formats.insert(
            "lin".to_string(),
            WeightFormat::Affine {
                bits,
                group_size: gs as u32,
            },
        );
        let mut src = WeightSource::new(
            CanonicalWeights {
                tensors,
                formats,
                tq_runtime: BTreeMap::new(),
            },
            "test",
        );
        let lin = QLinear::load(&mut src, "lin", inf, out, false, Dtype::Float32).unwrap();
        src.finish().unwrap();
        let n = 3;
        let x: Vec<f32> = (0..n * inf).map(|_| rng.gen_range(-1.0..1.0)).collect();
        let want: Vec<f64> = (0..n)
            .flat_map(|t| {
                (0..out)
                    .map(|r| (0..inf).map(|i| w[r * inf + i] * x[t * inf + i] as f64).sum::<f64>())
                    .collect::<Vec<_>>()
            })
            .collect();
        let got = host(&lin.forward(&Array::from_slice(&x, &[n as i32, inf as i32])).unwrap());
        let e = rel_err(&got, &want);
        assert!(e < 1e-5, "bits {bits} gs {gs} {scale_dtype:?}: linear rel err {e}");
        let ids = [7u32, 0, 39, 7];
        let rows = host(&lin.embed(&Array::from_slice(&ids, &[2, 2])).unwrap());
        let want_rows: Vec<f64> = ids
            .iter()
            .flat_map(|&r| w[r as usize * inf..(r as usize + 1) * inf].to_vec())
            .collect();
        let e = rel_err(&rows, &want_rows);
        assert!(e < 1e-6, "bits {bits}: embedding rel err {e}");
    }
}

fn erf_f64(x: f64) -> f64 {
    // 2/√π ∫₀ˣ e^{-t²} dt by composite Simpson with 2000 intervals
    let n = 2000;
    let h = x / n as f64;
    let f = |t: f64| (-t * t).exp();
    let mut s = f(0.0) + f(x);
    for k in 1..n {
        s += f(k as f64 * h) * if k % 2 == 1 { 4.0 } else { 2.0 };
    }
    s * h / 3.0 * 2.0 / std::f64::consts::PI.sqrt()
}

#[test]
fn gelu_is_the_exact_erf_form() {
    let xs: Vec<f32> = (-40..=40).map(|k| k as f32 * 0.15).collect();
    let got = host(&gelu(&Array::from_slice(&xs, &[xs.len() as i32])).unwrap());
    let want: Vec<f64> = xs
        .iter()
        .map(|&x| 0.5 * x as f64 * (1.0 + erf_f64(x as f64 / 2f64.sqrt())))
        .collect();
    let d = got
        .iter()
        .zip(&want)
        .map(|(a, b)| (*a as f64 - b).abs())
        .fold(0.0, f64::max);
    assert!(d < 2e-6, "gelu max abs err {d}");
    // and not the tanh approximation: at x = -3 the two differ by ~1e-3... check a point where they do
    let tanh_approx =
        |x: f64| 0.5 * x * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x.powi(3))).tanh());
    let i = xs.iter().position(|&x| (x - 2.4).abs() < 1e-6).unwrap();
    assert!((got[i] as f64 - tanh_approx(2.4)).abs() > 1e-4);
}

#[test]
fn fast_rope_is_partial_neox_with_rotary_dim_in_the_exponent() {
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let (h, t, d, rd, theta) = (2usize, 5usize, 128usize, 64usize, 5.0e6f64);
    let x: Vec<f32> = (0..h * t * d).map(|_| rng.gen_range(-1.0..1.0)).collect();
    for offset in [0usize, 37, 4000] {
        let got = host(
            &mlx_rs::fast::rope(
                Array::from_slice(&x, &[1, h as i32, t as i32, d as i32]),
                rd as i32,
                false,
                theta as f32,
                1.0,
                offset as i32,
                None,
            )
            .unwrap(),
        );
        let mut want = vec![0f64; x.len()];
        for hh in 0..h {
            for tt in 0..t {
                let base = (hh * t + tt) * d;
                let pos = (offset + tt) as f64;
                for i in 0..d {
                    want[base + i] = x[base + i] as f64;
                }
                for i in 0..rd / 2 {
                    let f = pos * theta.powf(-2.0 * i as f64 / rd as f64);
                    let (a, b) = (x[base + i] as f64, x[base + i + rd / 2] as f64);
                    want[base + i] = a * f.cos() - b * f.sin();
                    want[base + i + rd / 2] = b * f.cos() + a * f.sin();
                }
            }
        }
        let e = got
            .iter()
            .zip(&want)
            .map(|(a, b)| (*a as f64 - b).abs())
            .fold(0.0, f64::max);
        // f32 angle rounding grows with the position: pos·inv_freq carries ~pos·6e-8 rad of error
        let tol = 2e-6 + (offset + t) as f64 * 2e-7;
        assert!(e < tol, "offset {offset}: max abs err {e} (tol {tol})");
    }
}
