//! Loading the jang-converted JANGTQ4 fixture: the canonical key set, formats and dtypes, conv weights
//! in MLX layout, zero-copy arrays that keep their mappings alive, the summary (`zaya info`) with
//! parameter counts derived independently from the float source, and the `zaya info` command.
mod bundle_fixture;

use std::collections::BTreeSet;

use bundle_fixture::*;
use zaya_mlx::bundle::mmap::array_data_ptr;
use zaya_mlx::bundle::{inspect, Bundle, BundleOptions, Layout, TensorKind};
use zaya_mlx::quant::WeightFormat;

fn shape(a: &mlx_rs::Array) -> Vec<usize> {
    a.shape().iter().map(|&d| d as usize).collect()
}

#[test]
fn canonical_set_formats_and_dtypes() {
    let (src, dir) = jang_tiny();
    let b = Bundle::open(dir).unwrap();
    assert_eq!(b.layout, Layout::LegacyStacked);
    let w = &b.weights;

    // every float source tensor is present under its canonical name, quantized companions included
    let m = random_model(&tiny_config(), SEED);
    let mut want = BTreeSet::new();
    for name in m.tensors.keys() {
        let base = name.strip_suffix(".weight").unwrap_or(name);
        match w.formats.get(base) {
            Some(WeightFormat::TurboQuant { .. }) => {
                want.insert(format!("{base}.tq_packed"));
                want.insert(format!("{base}.tq_norms"));
            }
            Some(WeightFormat::Affine { .. }) => {
                for s in ["weight", "scales", "biases"] {
                    want.insert(format!("{base}.{s}"));
                }
            }
            _ => {
                want.insert(name.clone());
            }
        }
    }
    let got: BTreeSet<String> = w.tensors.keys().cloned().collect();
    assert_eq!(got, want);
    assert!(!got.iter().any(|n| n.ends_with(".tq_bits") || n.starts_with("lm_head")));
    assert_eq!(
        b.report.dropped.len(),
        6,
        "the six tq_bits tensors are read, then dropped"
    );

    // formats: 8-bit affine embeddings/attention (group 32), float routers, 4-bit TurboQuant experts
    assert_eq!(
        w.formats["model.embed_tokens"],
        WeightFormat::Affine {
            bits: 8,
            group_size: 32
        }
    );
    assert_eq!(
        w.formats["model.layers.2.self_attn.o_proj"],
        WeightFormat::Affine {
            bits: 8,
            group_size: 32
        }
    );
    assert_eq!(
        w.formats["model.layers.3.zaya_block.router.router_mlp.4"],
        WeightFormat::Float
    );
    for p in ["gate_proj", "up_proj", "down_proj"] {
        assert_eq!(
            w.formats[&format!("model.layers.1.zaya_block.experts.switch_mlp.{p}")],
            WeightFormat::TurboQuant {
                bits: 4,
                in_features: 64,
                seed: 42
            }
        );
    }
    assert_eq!(w.formats.len(), 1 + 2 * 5 + 2 * (4 + 3));
    let packed = &w.tensors["model.layers.1.zaya_block.experts.switch_mlp.gate_proj.tq_packed"];
    assert_eq!((packed.dtype(), shape(packed)), (mlx_rs::Dtype::Uint32, vec![4, 64, 8]));
    let norms = &w.tensors["model.layers.1.zaya_block.experts.switch_mlp.gate_proj.tq_norms"];
    assert_eq!((norms.dtype(), shape(norms)), (mlx_rs::Dtype::Float16, vec![4, 64]));
    assert_eq!(shape(&w.tq_runtime["codebook.64.4"]), vec![16]);
    assert_eq!(shape(&w.tq_runtime["signs.64.42"]), vec![64]);

    // conv weights come out in MLX layout [out, k, in/groups]: the source's PyTorch [out, in/g, k]
    // with the last two axes swapped (then cast to f16 by the converter)
    for (name, k) in [("conv_qk.0", 1usize), ("conv_qk.1", 16)] {
        let full = format!("model.layers.2.self_attn.qkv.{name}.weight");
        let a = &w.tensors[&full];
        assert_eq!(shape(a), vec![96, 2, k]);
        let s = &m.tensors[&full];
        let ours: Vec<f32> = a.as_type::<f32>().unwrap().as_slice::<f32>().to_vec();
        for o in 0..96 {
            for t in 0..2 {
                for j in 0..k {
                    let want = half::f16::from_f32(s.data[(o * k + j) * 2 + t]).to_f32();
                    assert_eq!(ours[(o * 2 + t) * k + j], want, "{full}[{o},{t},{j}]");
                }
            }
        }
    }
    let _ = src;
}

#[test]
fn arrays_alias_the_shards_and_keep_them_mapped() {
    let (_, dir) = jang_tiny();
    let b = Bundle::open(dir).unwrap();
    // everything but the 4 transposed conv weights wraps the mapping
    assert_eq!(b.report.zero_copy_tensors, 93);
    assert_eq!(b.report.copied_tensors, 4);
    let name = "model.layers.3.zaya_block.experts.switch_mlp.down_proj.tq_packed";
    let kept = b.weights.tensors[name].clone();
    assert!(
        b.points_into_shards(array_data_ptr(&kept)),
        "MLX array data must be the mapped file bytes"
    );
    let conv = &b.weights.tensors["model.layers.0.self_attn.qkv.conv_qk.1.weight"];
    assert!(!b.points_into_shards(array_data_ptr(conv)));
    let handles = b.shard_handles();
    assert_eq!(handles.len(), 2, "model shard + sidecar");
    let before: Vec<u32> = kept.as_slice::<u32>().to_vec();
    drop(b);
    // the shard stays mapped while an array uses it; the sidecar went with the bundle
    assert!(handles[0].upgrade().is_some());
    assert!(handles[1].upgrade().is_none());
    assert_eq!(kept.as_slice::<u32>(), &before[..]);
    drop(kept);
    assert!(
        handles[0].upgrade().is_none(),
        "the mapping must be released with the last array"
    );
}

#[test]
fn summary_counts_and_parameters() {
    let (_, dir) = jang_tiny();
    let s = inspect(dir, &BundleOptions::default()).unwrap();
    let b = Bundle::open(dir).unwrap();
    assert_eq!(
        serde_json::to_value(&s).unwrap(),
        serde_json::to_value(&b.summary).unwrap()
    );
    // docs/bundle-format.md §1.3 formula for 4 half-layers: 2×25−2 + 2×24−1 + 3 + 1 + 4 = 103
    assert_eq!(s.stored_tensors, 103);
    assert_eq!(s.canonical_tensors, 97);
    assert_eq!(s.file_bytes, std::fs::metadata(only_shard(dir)).unwrap().len());
    assert_eq!(s.affine_bits, vec![8]);
    assert_eq!(s.group_sizes, vec![32]);
    assert_eq!(s.turboquant_bits, vec![4]);
    assert_eq!(
        s.sidecar_entries,
        vec!["codebook.64.4".to_string(), "signs.64.42".to_string()]
    );
    // bytes per format add up to the canonical bytes; TurboQuant experts: 6 × (4·64·8·4 + 4·64·2)
    assert_eq!(s.bytes_per_format.values().sum::<u64>(), s.tensor_bytes);
    assert_eq!(
        s.bytes_per_format["turboquant 4-bit"],
        6 * (4 * 64 * 8 * 4 + 4 * 64 * 2)
    );
    let experts = s.kinds.iter().find(|k| k.kind == TensorKind::Experts).unwrap();
    assert_eq!((experts.modules, experts.tensors), (6, 12));
    // parameters from the float source: every tensor once (tied lm_head absent), and per token one
    // of the 4 experts per MoE layer
    let m = random_model(&tiny_config(), SEED);
    let total: usize = m.tensors.values().map(|t| t.data.len()).sum();
    let experts: usize = m
        .tensors
        .iter()
        .filter(|(n, _)| n.contains(".switch_mlp."))
        .map(|(_, t)| t.data.len())
        .sum();
    let embed = m.tensors["model.embed_tokens.weight"].data.len();
    assert_eq!(s.params.total as usize, total);
    assert_eq!(s.params.active as usize, total - experts * 3 / 4);
    assert_eq!(s.params.active_non_embedding as usize, total - experts * 3 / 4 - embed);
    let text = s.to_text();
    for needle in [
        "legacy-stacked",
        "JANGTQ4",
        "turboquant 4-bit",
        "affine 8-bit g32",
        "103 stored",
    ] {
        assert!(text.contains(needle), "missing `{needle}` in:\n{text}");
    }
}

#[test]
fn zaya_info_command() {
    let (_, dir) = jang_tiny();
    let bin = env!("CARGO_BIN_EXE_zaya");
    let out = std::process::Command::new(bin)
        .args(["info", "--model", dir.to_str().unwrap()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("validation  OK"), "{text}");
    let out = std::process::Command::new(bin)
        .args(["info", "--json", "--model", dir.to_str().unwrap()])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["valid"], true);
    assert_eq!(v["summary"]["stored_tensors"], 103);
    assert_eq!(v["summary"]["layout"], "legacy-stacked");

    // a broken bundle: exit code 1 and the error, in text and JSON
    let (_t, bad) = jang_copy();
    std::fs::remove_file(bad.join("jangtq_runtime.safetensors")).unwrap();
    let out = std::process::Command::new(bin)
        .args(["info", "--model", bad.to_str().unwrap()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text.contains("FAILED") && text.contains("jangtq_runtime.safetensors"),
        "{text}"
    );
    let out = std::process::Command::new(bin)
        .args(["info", "--json", "--model", bad.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (v["valid"].as_bool(), v["error_kind"].as_str()),
        (Some(false), Some("missing_sidecar"))
    );
}

#[test]
fn hand_built_bundle_summary_matches() {
    // Bundle::from_weights (hand-built weight sets) describes the same weights the same way
    let (_, dir) = jang_tiny();
    let b = Bundle::open(dir).unwrap();
    let w = zaya_mlx::bundle::CanonicalWeights {
        tensors: b.weights.tensors.clone(),
        formats: b.weights.formats.clone(),
        tq_runtime: b.weights.tq_runtime.clone(),
    };
    let h = Bundle::from_weights(dir, b.config.clone(), b.jang.clone(), b.layout, w);
    assert_eq!(h.summary.bytes_per_format, b.summary.bytes_per_format);
    assert_eq!(h.summary.modules_per_format, b.summary.modules_per_format);
    assert_eq!(h.summary.params, b.summary.params);
    assert_eq!(h.summary.tensor_bytes, b.summary.tensor_bytes);
    assert_eq!(
        serde_json::to_value(&h.summary.kinds).unwrap(),
        serde_json::to_value(&b.summary.kinds).unwrap()
    );
}
