//! Our TurboQuant and affine encoders (src/tools/encode.rs) against independent references:
//! the sidecar hashes of docs/bundle-format.md §1.4, jang_tools' own Python functions
//! (compute_codebook, generate_random_signs, hadamard_rotate, tq_quantize_experts_rowwise,
//! affine_quantize = f16 + mx.quantize) run through the reference venv, and the documented 4-bit
//! reconstruction error.
mod synth_support;

use std::collections::BTreeMap;

use half::f16;
use synth_support::*;
use zaya_mlx::tools::encode::{self, affine_quantize_f32, codebook_f32, compute_codebook, random_signs, TqEncoder};

fn f32_le(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

#[test]
fn sidecar_tables_for_2048_match_the_documented_hashes() {
    let cb = codebook_f32(2048, 4);
    assert_eq!(
        sha256_hex(&f32_le(&cb)),
        "33e81370422b957bb19fee664ec97d46f05307fa51e3d9a34a7cfeafa3e324e8"
    );
    let bits: Vec<u32> = cb.iter().map(|v| v.to_bits()).collect();
    assert_eq!(
        &bits[..9],
        &[0xbd80efed, 0xbd46bef6, 0xbd1e140c, 0xbcf9fec1, 0xbcbf0490, 0xbc87ddbd, 0xbc24573a, 0xbb5d312a, 0x3b5d312a]
    );
    let s = random_signs(2048, 42);
    assert_eq!(
        sha256_hex(&f32_le(&s)),
        "41f8e007f1c4e9f0f24a9e7dca45a21111eeced628ad464dca7a28b8039ae084"
    );
    let first: String = s[..32].iter().map(|&v| if v > 0.0 { '+' } else { '-' }).collect();
    assert_eq!(first, "-++--+-+--+++++++-+-+--+++-++---");
    let last: String = s[2040..].iter().map(|&v| if v > 0.0 { '+' } else { '-' }).collect();
    assert_eq!(last, "-+++-+-+");
    assert_eq!(s.iter().filter(|&&v| v > 0.0).count(), 1027);
}

#[test]
fn codebooks_and_signs_equal_the_python_functions() {
    let cbs: &[(usize, u32)] = &[
        (16, 3),
        (64, 4),
        (96, 4),
        (128, 2),
        (128, 4),
        (256, 3),
        (1536, 4),
        (2048, 2),
        (2048, 4),
        (4096, 4),
        (8192, 8),
    ];
    let signs: &[(usize, u64)] = &[
        (64, 42),
        (96, 7),
        (128, 42),
        (1536, 42),
        (2048, 0),
        (4096, 123_456_789),
        (300, (1 << 40) + 5),
    ];
    let mut args: Vec<String> = cbs.iter().map(|(d, b)| format!("cb:{d}:{b}")).collect();
    args.extend(signs.iter().map(|(d, s)| format!("signs:{d}:{s}")));
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let r = run_python_json("synth_ref_tables.py", &argv);
    let mut exact64 = 0;
    let mut total64 = 0;
    for &(d, b) in cbs {
        let py: Vec<f64> = r[format!("cb:{d}:{b}")]["f64"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| parse_hex_f64(h.as_str().unwrap()))
            .collect();
        let ours = compute_codebook(d, b);
        assert_eq!(ours.len(), py.len());
        for (o, p) in ours.iter().zip(&py) {
            // f32 (the sidecar dtype) bit-exact; f64 within a few ulps (numpy's SIMD exp/log vs libm)
            assert_eq!(
                (*o as f32).to_bits(),
                (*p as f32).to_bits(),
                "codebook({d},{b}): {o} vs {p}"
            );
            assert!(
                (o - p).abs() <= 1e-14 * p.abs(),
                "codebook({d},{b}) f64: {o:e} vs {p:e}"
            );
            exact64 += usize::from(o == p);
            total64 += 1;
        }
    }
    eprintln!("codebook f64 values bit-identical to numpy: {exact64}/{total64} (f32: all)");
    for &(d, s) in signs {
        let py: Vec<f32> = r[format!("signs:{d}:{s}")]["values"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_i64().unwrap() as f32)
            .collect();
        assert_eq!(random_signs(d, s), py, "signs({d},{s})");
    }
}

fn parse_hex_f64(s: &str) -> f64 {
    // Python float.hex(): [-]0x1.<hex>p<exp> or 0x0.0p+0
    let neg = s.starts_with('-');
    let t = s.trim_start_matches('-').trim_start_matches("0x");
    let (mant, exp) = t.split_once('p').unwrap();
    let (int, frac) = mant.split_once('.').unwrap_or((mant, ""));
    let mut m = u64::from_str_radix(int, 16).unwrap() as f64;
    for (i, c) in frac.chars().enumerate() {
        m += c.to_digit(16).unwrap() as f64 * 16f64.powi(-(i as i32 + 1));
    }
    let v = m * 2f64.powi(exp.parse::<i32>().unwrap());
    if neg {
        -v
    } else {
        v
    }
}

/// Matrices with awkward rows: a zero row, a tiny row, an outlier row.
fn tricky(seed: u64, e: usize, out: usize, inf: usize) -> Vec<f32> {
    let mut v = gaussian(seed, e * out * inf, 1.0 / (inf as f32).sqrt());
    v[..inf].iter_mut().for_each(|x| *x = 0.0);
    v[inf..2 * inf].iter_mut().for_each(|x| *x *= 1e-12);
    v[2 * inf + 3] = 40.0;
    v
}

#[test]
fn turboquant_encoder_equals_the_converter_encoder() {
    let dir = tempfile::tempdir().unwrap();
    // (bits, seed, experts, out, in)
    let cases: &[(u32, u64, usize, usize, usize)] = &[
        (4, 42, 3, 64, 128),
        (4, 42, 2, 256, 2048),
        (2, 42, 2, 64, 256),
        (4, 7, 2, 40, 96),
        (4, 42, 2, 32, 1536),
    ];
    let mut input = BTreeMap::new();
    for (k, &(bits, seed, e, o, i)) in cases.iter().enumerate() {
        input.insert(
            format!("tq.{bits}.{seed}.c{k}"),
            Raw::f32(&[e, o, i], &tricky(100 + k as u64, e, o, i)),
        );
    }
    for (k, d) in [2048usize, 96, 64].iter().enumerate() {
        input.insert(
            format!("rot.42.r{k}"),
            Raw::f32(&[4, *d], &gaussian(200 + k as u64, 4 * d, 1.0)),
        );
    }
    let inp = dir.path().join("in.safetensors");
    let outp = dir.path().join("out.safetensors");
    write_safetensors(&inp, &input);
    run_python("synth_encode_ref.py", &[inp.to_str().unwrap(), outp.to_str().unwrap()]);
    let py = read_safetensors(&outp);

    for (k, &(bits, seed, e, o, i)) in cases.iter().enumerate() {
        let name = format!("tq.{bits}.{seed}.c{k}");
        let w = input[&name].as_f32();
        let enc = TqEncoder::new(i, bits, seed).unwrap();
        let ours = enc.encode_matrix(&w, e * o).unwrap();
        let pp = &py[&format!("{name}.packed")];
        assert_eq!(pp.shape, vec![e, o, enc.packed_cols()], "{name} packed shape");
        let pw = pp.as_u32();
        let per = enc.codes_per_word();
        let mask = (1u32 << bits) - 1;
        let mut diff = 0usize;
        for (a, b) in ours.packed.iter().zip(&pw) {
            for s in 0..per {
                diff += usize::from((a >> (s as u32 * bits)) & mask != (b >> (s as u32 * bits)) & mask);
            }
        }
        let codes = e * o * i;
        let pn = py[&format!("{name}.norms")].as_u16();
        let norm_diff = ours.norms.iter().zip(&pn).filter(|(a, b)| a.to_bits() != **b).count();
        eprintln!(
            "{name}: {diff}/{codes} codes differ, {norm_diff}/{} norms differ",
            e * o
        );
        assert!(
            (diff as f64) < 1e-4 * codes as f64,
            "{name}: {diff} of {codes} codes differ"
        );
        assert_eq!(norm_diff, 0, "{name}: f16 norms differ");
    }
    for (k, d) in [2048usize, 96, 64].iter().enumerate() {
        let name = format!("rot.42.r{k}");
        let x = input[&name].as_f32();
        let signs = random_signs(*d, 42);
        let mut ours = Vec::new();
        for row in x.chunks(*d) {
            let mut r = row.to_vec();
            encode::hadamard_rotate_inplace(&mut r, &signs).unwrap();
            ours.extend(r);
        }
        let theirs = py[&name].as_f32();
        let same = ours
            .iter()
            .zip(&theirs)
            .filter(|(a, b)| a.to_bits() == b.to_bits())
            .count();
        assert_eq!(
            same,
            ours.len(),
            "{name}: rotation not bit-identical to jang_tools.hadamard_rotate"
        );
    }
}

#[test]
fn affine_encoder_equals_mx_quantize() {
    let dir = tempfile::tempdir().unwrap();
    let cases: &[(u32, usize, usize, usize)] = &[
        (8, 32, 48, 256),
        (4, 32, 48, 256),
        (8, 64, 16, 512),
        (4, 128, 8, 256),
        (2, 32, 16, 128),
    ];
    let mut input = BTreeMap::new();
    for (k, &(bits, g, rows, cols)) in cases.iter().enumerate() {
        let mut v = gaussian(300 + k as u64, rows * cols, 1.0);
        for (r, row) in v.chunks_mut(cols).enumerate() {
            let scale = [0.01f32, 1.0, 30.0, 1e-4][r % 4];
            row.iter_mut().for_each(|x| *x *= scale);
        }
        v[..g].iter_mut().for_each(|x| *x = 0.0); // all-zero group
        v[g..2 * g].iter_mut().for_each(|x| *x = 1.5); // constant positive group
        v[2 * g..3 * g].iter_mut().for_each(|x| *x = -2.0); // constant negative group
        v[3 * g] = -7.0; // negative-dominant group
        v[4 * g] = 7.0; // positive-dominant group
        v[5 * g..6 * g]
            .iter_mut()
            .enumerate()
            .for_each(|(j, x)| *x = j as f32 * 1e-9); // tiny range
        input.insert(format!("aff.{bits}.{g}.c{k}"), Raw::f32(&[rows, cols], &v));
    }
    let inp = dir.path().join("in.safetensors");
    let outp = dir.path().join("out.safetensors");
    write_safetensors(&inp, &input);
    run_python("synth_encode_ref.py", &[inp.to_str().unwrap(), outp.to_str().unwrap()]);
    let py = read_safetensors(&outp);
    for (k, &(bits, g, rows, cols)) in cases.iter().enumerate() {
        let name = format!("aff.{bits}.{g}.c{k}");
        let ours = affine_quantize_f32(&input[&name].as_f32(), rows, cols, bits, g).unwrap();
        let w = &py[&format!("{name}.weight")];
        assert_eq!(w.shape, vec![rows, cols * bits as usize / 32]);
        assert_eq!(ours.weight, w.as_u32(), "{name} codes");
        let s: Vec<u16> = ours.scales.iter().map(|x| x.to_bits()).collect();
        let b: Vec<u16> = ours.biases.iter().map(|x| x.to_bits()).collect();
        assert_eq!(s, py[&format!("{name}.scales")].as_u16(), "{name} scales");
        assert_eq!(b, py[&format!("{name}.biases")].as_u16(), "{name} biases");
        assert!(
            ours.scales.iter().any(|x| x.to_f32() < 0.0),
            "{name}: expected negative scales (max-dominant groups)"
        );
    }
}

#[test]
fn four_bit_reconstruction_error_is_the_documented_0_099() {
    // docs/bundle-format.md §3.5: relative RMSE ≈ 0.099 on Gaussian rows at 4 bits (in = 2048).
    let (rows, i) = (64, 2048);
    let w = gaussian(9, rows * i, 0.02);
    let enc = TqEncoder::new(i, 4, 42).unwrap();
    let q = enc.encode_matrix(&w, rows).unwrap();
    let (mut num, mut den) = (0f64, 0f64);
    let mut back = vec![0f32; i];
    for r in 0..rows {
        enc.dequantize_row(
            &q.packed[r * enc.packed_cols()..(r + 1) * enc.packed_cols()],
            f16::to_f32(q.norms[r]),
            &mut back,
        );
        for (a, b) in w[r * i..(r + 1) * i].iter().zip(&back) {
            num += ((a - b) as f64).powi(2);
            den += (*a as f64).powi(2);
        }
    }
    let rel = (num / den).sqrt();
    eprintln!("4-bit relative RMSE {rel:.4}");
    assert!((0.094..0.104).contains(&rel), "{rel}");
}
