//! Loading a jang-converted JANGTQ4 bundle gives arrays equal to an independent NumPy decode of the
//! same files (tests/reference/decode_bundle.py): TurboQuant experts (unpack, codebook, norms, inverse
//! randomized Hadamard) and MLX affine weights (scale·q + bias), dequantized here from the loaded
//! arrays with plain MLX ops (`quant::turboquant::dequantize`, `quant::affine::dequantize`). Both are
//! also checked against the float source the bundle was converted from (quantization error only).
mod bundle_fixture;

use std::collections::BTreeMap;

use bundle_fixture::*;
use zaya_mlx::bundle::Bundle;
use zaya_mlx::quant::WeightFormat;

/// The float source in canonical stacked form (experts stacked from `local_experts`, fc1 split).
fn source_canonical(src: &std::path::Path) -> BTreeMap<String, Vec<f32>> {
    let t = read_safetensors(&src.join("model-00001-of-00001.safetensors"));
    let cfg = tiny_config();
    let e = cfg["num_experts"].as_u64().unwrap() as usize;
    let mut out = BTreeMap::new();
    for (n, s) in &t {
        if !n.contains(".local_experts.") {
            out.insert(n.clone(), f32s(s));
        }
    }
    let layers: Vec<usize> = t
        .keys()
        .filter_map(|n| n.strip_suffix(".zaya_block.experts.local_experts.0.linear_fc1.weight"))
        .map(|p| p.strip_prefix("model.layers.").unwrap().parse().unwrap())
        .collect();
    for l in layers {
        let p = format!("model.layers.{l}.zaya_block.experts");
        let (mut g, mut u, mut d) = (vec![], vec![], vec![]);
        for x in 0..e {
            let fc1 = f32s(&t[&format!("{p}.local_experts.{x}.linear_fc1.weight")]);
            let half = fc1.len() / 2;
            g.extend_from_slice(&fc1[..half]);
            u.extend_from_slice(&fc1[half..]);
            d.extend(f32s(&t[&format!("{p}.local_experts.{x}.linear_fc2.weight")]));
        }
        out.insert(format!("{p}.switch_mlp.gate_proj.weight"), g);
        out.insert(format!("{p}.switch_mlp.up_proj.weight"), u);
        out.insert(format!("{p}.switch_mlp.down_proj.weight"), d);
    }
    out
}

#[test]
fn loaded_weights_equal_numpy_decode_of_the_same_files() {
    let (src, dir) = jang_tiny();
    let b = Bundle::open(dir).unwrap();
    let reference = numpy_decode(dir);
    let source = source_canonical(src);
    let w = &b.weights;

    let (mut n_tq, mut n_aff) = (0, 0);
    for (base, fmt) in &w.formats {
        let Some(ours) = dequantize_module(w, base) else {
            continue;
        };
        match fmt {
            WeightFormat::TurboQuant { .. } => n_tq += 1,
            WeightFormat::Affine { .. } => n_aff += 1,
            _ => panic!("unexpected format {fmt:?}"),
        }
        let name = format!("{base}.weight");
        let r = reference
            .get(&name)
            .unwrap_or_else(|| panic!("the NumPy decode lacks {name}"));
        assert_eq!(
            ours.shape().iter().map(|&d| d as usize).collect::<Vec<_>>(),
            r.shape,
            "{name}"
        );
        let ours = to_vec(&ours);
        let r = f32s(r);
        let err = rel_max(&ours, &r);
        // NumPy decodes in f64 (Hadamard as a matrix product), MLX in f32 with the butterfly
        let tol = if matches!(fmt, WeightFormat::TurboQuant { .. }) {
            2e-6
        } else {
            1e-6
        };
        assert!(err <= tol, "{name}: max|Δ|/max|ref| = {err:e} > {tol:e}");
        // and both are the source up to quantization error (4-bit TQ ≈ 0.1, 8-bit affine ≈ 0.005)
        let s = &source[&name];
        let q = rel_rmse(&ours, s);
        let bound = if matches!(fmt, WeightFormat::TurboQuant { .. }) {
            0.15
        } else {
            0.02
        };
        assert!(
            q <= bound,
            "{name}: relative RMS error vs the float source {q:.4} > {bound}"
        );
        eprintln!("{name}: vs numpy {err:.2e}, vs source {q:.4}");
    }
    assert_eq!(n_tq, 6, "2 MoE layers × gate/up/down");
    assert_eq!(n_aff, 11, "embedding + 2 attention layers × 5 linears");

    // float passthrough tensors are the source cast to f16 (the converter's policy)
    for (name, a) in &w.tensors {
        if let Some(s) = source.get(name) {
            if a.dtype() == mlx_rs::Dtype::Float16 && !name.contains(".conv_qk.") {
                let ours = to_vec(a);
                let want: Vec<f32> = s.iter().map(|v| half::f16::from_f32(*v).to_f32()).collect();
                assert_eq!(ours, want, "{name}");
            }
        }
    }
}

#[test]
fn sidecar_values_match_the_reference_functions() {
    // The sidecar's codebook and signs equal jang_tools' own functions (which the sidecar was built
    // from); the loader reads them, never regenerates them.
    let (_, dir) = jang_tiny();
    let b = Bundle::open(dir).unwrap();
    let out = run_python(&[
        "-c",
        "import json; from jang_tools.turboquant.codebook import compute_codebook; \
         from jang_tools.turboquant.rotation import generate_random_signs; \
         print(json.dumps({'c': [float(x) for x in compute_codebook(64, 4)], \
                           's': [float(x) for x in generate_random_signs(64, seed=42)]}))",
    ]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let c: Vec<f32> = v["c"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect();
    let s: Vec<f32> = v["s"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect();
    assert_eq!(to_vec(&b.weights.tq_runtime["codebook.64.4"]), c);
    assert_eq!(to_vec(&b.weights.tq_runtime["signs.64.42"]), s);
}
