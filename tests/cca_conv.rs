//! The CCA conv primitive against the portable plain-MLX-ops graph and a direct f64 loop written
//! from docs/model.md §3.2 step 2 / §3.3.
use mlx_rs::Array;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use zaya_mlx::ext::{cca_conv, ExtMode};

const C: usize = 40; // channels (q + k), 5 groups of 8
const G: usize = 5;
const CG: usize = C / G;

struct Weights {
    w0: Vec<f32>, // [C, 2, 1]
    b0: Vec<f32>,
    w1: Vec<f32>, // [C, 2, CG]
    b1: Vec<f32>,
}

fn rand_vec(rng: &mut ChaCha8Rng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.gen_range(-1.0f32..1.0)).collect()
}

fn weights(rng: &mut ChaCha8Rng) -> Weights {
    Weights {
        w0: rand_vec(rng, C * 2),
        b0: rand_vec(rng, C),
        w1: rand_vec(rng, C * 2 * CG),
        b1: rand_vec(rng, C),
    }
}

/// f64 reference: P = [s0, s1, u0..], a_i = b0 + w0[c,0] P_i + w0[c,1] P_{i+1},
/// z_t = b1 + sum_{j in group} w1[c,0,j] a_t[j] + w1[c,1,j] a_{t+1}[j].
fn reference(b: usize, t: usize, u: &[f32], state: &[f32], w: &Weights) -> (Vec<f64>, Vec<f64>) {
    let mut z = vec![0f64; b * t * C];
    let mut ns = vec![0f64; b * C * 2];
    for bi in 0..b {
        let frame = |i: usize, c: usize| -> f64 {
            if i < 2 {
                state[bi * C * 2 + c * 2 + i] as f64
            } else {
                u[bi * t * C + (i - 2) * C + c] as f64
            }
        };
        let a = |i: usize, c: usize| -> f64 {
            w.b0[c] as f64 + w.w0[c * 2] as f64 * frame(i, c) + w.w0[c * 2 + 1] as f64 * frame(i + 1, c)
        };
        for ti in 0..t {
            for c in 0..C {
                let g0 = (c / CG) * CG;
                let mut acc = w.b1[c] as f64;
                for j in 0..CG {
                    acc += w.w1[c * 2 * CG + j] as f64 * a(ti, g0 + j);
                    acc += w.w1[c * 2 * CG + CG + j] as f64 * a(ti + 1, g0 + j);
                }
                z[bi * t * C + ti * C + c] = acc;
            }
        }
        for c in 0..C {
            for i in 0..2 {
                ns[bi * C * 2 + c * 2 + i] = frame(t + i, c);
            }
        }
    }
    (z, ns)
}

fn arr(v: &[f32], shape: &[i32]) -> Array {
    Array::from_slice(v, shape)
}

fn run(mode: ExtMode, b: usize, t: usize, u: &[f32], state: &[f32], w: &Weights) -> (Vec<f32>, Vec<f32>) {
    let (z, ns) = cca_conv(
        &arr(u, &[b as i32, t as i32, C as i32]),
        &arr(state, &[b as i32, C as i32, 2]),
        &arr(&w.w0, &[C as i32, 2, 1]),
        &arr(&w.b0, &[C as i32]),
        &arr(&w.w1, &[C as i32, 2, CG as i32]),
        &arr(&w.b1, &[C as i32]),
        mode,
    )
    .unwrap();
    z.eval().unwrap();
    ns.eval().unwrap();
    (z.as_slice::<f32>().to_vec(), ns.as_slice::<f32>().to_vec())
}

fn max_abs(a: &[f32], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (*x as f64 - y).abs()).fold(0.0, f64::max)
}

#[test]
fn prefill_from_zero_state_matches_reference() {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let w = weights(&mut rng);
    for &t in &[1usize, 2, 7] {
        let b = 2;
        let u = rand_vec(&mut rng, b * t * C);
        let state = vec![0f32; b * C * 2];
        let (rz, rs) = reference(b, t, &u, &state, &w);
        for mode in [ExtMode::Primitive, ExtMode::Portable, ExtMode::Auto] {
            let (z, ns) = run(mode, b, t, &u, &state, &w);
            assert!(max_abs(&z, &rz) <= 1e-5, "T={t} {mode:?}: z err {}", max_abs(&z, &rz));
            assert!(max_abs(&ns, &rs) == 0.0, "T={t} {mode:?}: state differs");
        }
    }
}

#[test]
fn decode_and_chunked_prefill_carry_state() {
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let w = weights(&mut rng);
    let (b, t) = (1usize, 7usize);
    let u = rand_vec(&mut rng, b * t * C);
    let zero = vec![0f32; b * C * 2];
    let (rz, rs) = reference(b, t, &u, &zero, &w);
    for mode in [ExtMode::Primitive, ExtMode::Portable] {
        // token by token
        let mut state = zero.clone();
        let mut zs = Vec::new();
        for ti in 0..t {
            let (z, ns) = run(mode, b, 1, &u[ti * C..(ti + 1) * C], &state, &w);
            zs.extend(z);
            state = ns;
        }
        assert!(max_abs(&zs, &rz) <= 1e-5, "{mode:?} decode");
        assert!(max_abs(&state, &rs) == 0.0, "{mode:?} decode state");
        // chunks of 3 then 4
        let (z1, s1) = run(mode, b, 3, &u[..3 * C], &zero, &w);
        let (z2, s2) = run(mode, b, 4, &u[3 * C..], &s1, &w);
        let z: Vec<f32> = z1.into_iter().chain(z2).collect();
        assert!(max_abs(&z, &rz) <= 1e-5, "{mode:?} chunked");
        assert!(max_abs(&s2, &rs) == 0.0, "{mode:?} chunked state");
    }
}

fn vec_f32(n: usize) -> Vec<f32> {
    vec![0.0; n]
}

#[test]
fn bad_inputs_are_errors_not_aborts() {
    let f = |v: &[f32], s: &[i32]| Array::from_slice(v, s);
    let u = f(&vec_f32(C * 3), &[1, 3, C as i32]);
    let st = f(&vec_f32(C * 2), &[1, C as i32, 2]);
    let w0 = f(&vec_f32(C * 2), &[C as i32, 2, 1]);
    let b0 = f(&vec_f32(C), &[C as i32]);
    let w1 = f(&vec_f32(C * 2 * CG), &[C as i32, 2, CG as i32]);
    let b1 = f(&vec_f32(C), &[C as i32]);
    // wrong state shape
    let bad_state = f(&vec_f32(C * 3), &[1, C as i32, 3]);
    let e = cca_conv(&u, &bad_state, &w0, &b0, &w1, &b1, ExtMode::Auto)
        .unwrap_err()
        .to_string();
    assert!(e.contains("conv_state"), "{e}");
    // wrong dtype
    let u16 = u.as_dtype(mlx_rs::Dtype::Float16).unwrap();
    let e = cca_conv(&u16, &st, &w0, &b0, &w1, &b1, ExtMode::Primitive)
        .unwrap_err()
        .to_string();
    assert!(e.contains("float32") && e.contains("u"), "{e}");
    // PyTorch layout weight passed by mistake
    let w1_pt = f(&vec_f32(C * 2 * CG), &[C as i32, CG as i32, 2]);
    let e = cca_conv(&u, &st, &w0, &b0, &w1_pt, &b1, ExtMode::Auto)
        .unwrap_err()
        .to_string();
    assert!(e.contains("conv_qk.1.weight"), "{e}");
}
