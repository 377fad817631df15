//! The other quantized formats load, are recognised per module and decode like the NumPy reference:
//! - what jang's ZAYA "MXFP4" converter writes (`jang_tools.convert_zaya_mxfp4`): MLX affine 4-bit
//!   linears and experts with 8-bit embeddings declared by `quantization.embed_bits`;
//! - MLX's own `mxfp4` mode (`mx.quantize(..., mode="mxfp4")`: U32 e2m1 codes + U8 e8m0 scales,
//!   no biases, group 32) with `quantization.mode = "mxfp4"`.
mod bundle_fixture;

use std::collections::BTreeMap;
use std::path::Path;

use bundle_fixture::*;
use zaya_mlx::bundle::Bundle;
use zaya_mlx::quant::WeightFormat;
use zaya_mlx::ZayaError;

/// Compares every quantized module with the NumPy decode (max relative error `tol`) and with the float
/// model (relative RMS error ≤ `bound`); returns the number of modules per format label.
fn check_decode(dir: &Path, m: &FloatModel, tol: f32, bound: f64) -> BTreeMap<String, usize> {
    let b = Bundle::open(dir).unwrap();
    let reference = numpy_decode(dir);
    let mut seen = BTreeMap::new();
    for (base, fmt) in &b.weights.formats {
        let Some(ours) = dequantize_module(&b.weights, base) else {
            continue;
        };
        let name = format!("{base}.weight");
        let ours = to_vec(&ours);
        let r = f32s(&reference[&name]);
        let err = rel_max(&ours, &r);
        assert!(err <= tol, "{name} ({fmt:?}): vs NumPy {err:e}");
        let q = rel_rmse(&ours, &m.tensors[&name].data);
        assert!(q <= bound, "{name} ({fmt:?}): vs float source {q:.4}");
        *seen.entry(format!("{fmt:?}")).or_default() += 1;
    }
    seen
}

#[test]
fn jang_mxfp4_converter_output_is_affine_4_bit_with_8_bit_embeddings() {
    let (src, _) = jang_tiny();
    let t = tempfile::tempdir().unwrap();
    let out = t.path().join("mxfp4");
    run_python(&[
        "-m",
        "jang_tools.convert_zaya_mxfp4",
        src.to_str().unwrap(),
        out.to_str().unwrap(),
    ]);
    let b = Bundle::open(&out).unwrap();
    assert_eq!(
        b.weights.formats["model.embed_tokens"],
        WeightFormat::Affine {
            bits: 8,
            group_size: 32
        }
    );
    assert_eq!(
        b.weights.formats["model.layers.1.zaya_block.experts.switch_mlp.down_proj"],
        WeightFormat::Affine {
            bits: 4,
            group_size: 32
        }
    );
    let m = random_model(&tiny_config(), SEED);
    let seen = check_decode(&out, &m, 1e-6, 0.12);
    assert_eq!(seen["Affine { bits: 4, group_size: 32 }"], 10 + 6);
    assert_eq!(seen["Affine { bits: 8, group_size: 32 }"], 1);

    // without `embed_bits` the 8-bit embedding contradicts the global 4 bits
    edit_json(&out.join("config.json"), |c| {
        c["quantization"].as_object_mut().unwrap().remove("embed_bits");
    });
    match Bundle::open(&out) {
        Err(e @ ZayaError::Quant { .. }) => assert!(e.to_string().contains("model.embed_tokens.weight"), "{e}"),
        Err(e) => panic!("wrong error {e}"),
        Ok(_) => panic!("should fail"),
    }
}

/// Quantizes the stacked float bundle in `src` into `out` with MLX's mxfp4 mode (every linear
/// except the router, which stays float as in the published bundles).
const MXFP4_SCRIPT: &str = r#"
import json, sys, shutil
from pathlib import Path
import mlx.core as mx
src, out = Path(sys.argv[1]), Path(sys.argv[2])
out.mkdir(parents=True)
w = mx.load(str(src / "model-00001-of-00001.safetensors"))
res = {}
for k, v in w.items():
    base = k[: -len(".weight")]
    linear = k.endswith(".weight") and v.ndim >= 2 and ".router." not in k and ".conv_qk." not in k
    if linear:
        q, s = mx.quantize(v, group_size=32, bits=4, mode="mxfp4")
        res[base + ".weight"], res[base + ".scales"] = q, s
    else:
        res[k] = v.astype(mx.float16)
mx.save_safetensors(str(out / "model.safetensors"), res)
cfg = json.loads((src / "config.json").read_text())
cfg["quantization"] = {"group_size": 32, "bits": 4, "mode": "mxfp4"}
(out / "config.json").write_text(json.dumps(cfg))
"#;

#[test]
fn mlx_mxfp4_mode() {
    let t = tempfile::tempdir().unwrap();
    let m = random_model(&tiny_config(), 21);
    let src = t.path().join("float");
    write_stacked(&m, &src);
    let out = t.path().join("mxfp4");
    run_python(&["-c", MXFP4_SCRIPT, src.to_str().unwrap(), out.to_str().unwrap()]);
    let b = Bundle::open(&out).unwrap();
    assert_eq!(
        b.weights.formats["model.embed_tokens"],
        WeightFormat::Mxfp4 { group_size: 32 }
    );
    assert_eq!(
        b.weights.formats["model.layers.3.zaya_block.experts.switch_mlp.gate_proj"],
        WeightFormat::Mxfp4 { group_size: 32 }
    );
    assert_eq!(
        b.weights.formats["model.layers.3.zaya_block.router.down_proj"],
        WeightFormat::Float
    );
    assert_eq!(b.summary.group_sizes, vec![32]);
    // e2m1 with a power-of-two scale per 32 values: ≈ 0.1 relative RMS error on uniform weights
    let seen = check_decode(&out, &m, 1e-6, 0.2);
    assert_eq!(seen["Mxfp4 { group_size: 32 }"], 1 + 10 + 6);

    // a config that says affine contradicts scales without biases
    edit_json(&out.join("config.json"), |c| {
        c["quantization"]["mode"] = serde_json::json!("affine")
    });
    match Bundle::open(&out) {
        Err(e @ ZayaError::Quant { .. }) => assert!(
            e.to_string().contains("mxfp4") || e.to_string().contains("MXFP4"),
            "{e}"
        ),
        Err(e) => panic!("wrong error {e}"),
        Ok(_) => panic!("should fail"),
    }
}

#[test]
fn turboquant_2_bit_and_per_projection_bits() {
    // JANGTQ2 from the converter, then a JANGTQ_K-style mix: gate/up at 2 bits, down at 4 bits
    // (jang_config.json `mxtq_bits.routed_expert` per projection), sidecar with both codebooks.
    let (src, tq4) = jang_tiny();
    let t = tempfile::tempdir().unwrap();
    let tq2 = t.path().join("tq2");
    run_python(&[
        "-m",
        "jang_tools.convert_zaya_jangtq",
        src.to_str().unwrap(),
        tq2.to_str().unwrap(),
        "JANGTQ2",
    ]);
    let m = random_model(&tiny_config(), SEED);
    let b = Bundle::open(&tq2).unwrap();
    assert_eq!(
        b.weights.formats["model.layers.1.zaya_block.experts.switch_mlp.up_proj"],
        WeightFormat::TurboQuant {
            bits: 2,
            in_features: 64,
            seed: 42
        }
    );
    let packed = &b.weights.tensors["model.layers.1.zaya_block.experts.switch_mlp.up_proj.tq_packed"];
    assert_eq!(packed.shape(), &[4, 64, 4]);
    // 2-bit codes: ≈ 0.35 relative RMS error
    let seen = check_decode(&tq2, &m, 2e-6, 0.45);
    assert_eq!(seen["TurboQuant { bits: 2, in_features: 64, seed: 42 }"], 6);

    let mix = t.path().join("mix");
    copy_dir(&tq2, &mix);
    let down4: BTreeMap<String, Stored> = read_safetensors(&only_shard(tq4))
        .into_iter()
        .filter(|(n, _)| n.contains(".down_proj.tq_"))
        .collect();
    edit_shard(&mix, |t| t.extend(down4));
    let mut side = read_safetensors(&mix.join("jangtq_runtime.safetensors"));
    side.extend(read_safetensors(&tq4.join("jangtq_runtime.safetensors")));
    write_safetensors(&mix.join("jangtq_runtime.safetensors"), &side);
    edit_json(&mix.join("jang_config.json"), |j| {
        j["profile"] = serde_json::json!("JANGTQ_K");
        j["mxtq_bits"]["routed_expert"] = serde_json::json!({"gate_proj": 2, "up_proj": 2, "down_proj": 4});
    });
    edit_json(&mix.join("config.json"), |c| {
        c["quantization"].as_object_mut().unwrap().remove("routed_expert_bits");
    });
    let b = Bundle::open(&mix).unwrap();
    for (p, bits) in [("gate_proj", 2), ("up_proj", 2), ("down_proj", 4)] {
        assert_eq!(
            b.weights.formats[&format!("model.layers.3.zaya_block.experts.switch_mlp.{p}")],
            WeightFormat::TurboQuant {
                bits,
                in_features: 64,
                seed: 42
            }
        );
    }
    assert_eq!(b.summary.turboquant_bits, vec![2, 4]);
    let seen = check_decode(&mix, &m, 2e-6, 0.45);
    assert_eq!(seen["TurboQuant { bits: 2, in_features: 64, seed: 42 }"], 4);
    assert_eq!(seen["TurboQuant { bits: 4, in_features: 64, seed: 42 }"], 2);

    // the per-projection bits are enforced: down_proj declared 2-bit but stored 4-bit
    edit_json(&mix.join("jang_config.json"), |j| {
        j["mxtq_bits"]["routed_expert"]["down_proj"] = serde_json::json!(2)
    });
    match Bundle::open(&mix) {
        Err(e @ ZayaError::Quant { .. }) => assert!(e.to_string().contains("down_proj.tq_bits"), "{e}"),
        Err(e) => panic!("wrong error {e}"),
        Ok(_) => panic!("should fail"),
    }
}
