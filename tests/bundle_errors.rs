//! Every class of broken bundle is a typed error naming the culprit (never a panic): each test copies
//! the valid jang-converted fixture, breaks one thing, and checks the error variant and message.
mod bundle_fixture;

use std::path::Path;

use bundle_fixture::*;
use safetensors::Dtype;
use serde_json::json;
use zaya_mlx::bundle::{inspect, Bundle, BundleOptions};
use zaya_mlx::ZayaError;

/// The error opening `dir` gives (also checks `inspect` agrees).
fn open_err(dir: &Path) -> ZayaError {
    let e = match Bundle::open(dir) {
        Ok(_) => panic!("{} should not open", dir.display()),
        Err(e) => e,
    };
    let Err(i) = inspect(dir, &BundleOptions::default()) else {
        panic!("inspect should fail too")
    };
    assert_eq!(e.to_string(), i.to_string());
    eprintln!("{e}");
    e
}

fn assert_names(e: &ZayaError, needles: &[&str]) {
    let s = e.to_string();
    for n in needles {
        assert!(s.contains(n), "error `{s}` does not name `{n}`");
    }
}

const SHARD: &str = "model-00001-of-00001.safetensors";

#[test]
fn missing_tensor() {
    let (_t, d) = jang_copy();
    edit_shard(&d, |t| {
        t.remove("model.layers.2.input_norm.weight").unwrap();
    });
    let e = open_err(&d);
    assert!(
        matches!(&e, ZayaError::MissingTensor { name, .. } if name == "model.layers.2.input_norm.weight"),
        "{e}"
    );

    // a quantized module without its biases (f16 scales, so not MXFP4)
    let (_t, d) = jang_copy();
    edit_shard(&d, |t| {
        t.remove("model.layers.0.self_attn.o_proj.biases").unwrap();
    });
    let e = open_err(&d);
    assert!(
        matches!(&e, ZayaError::MissingTensor { name, .. } if name == "model.layers.0.self_attn.o_proj.biases"),
        "{e}"
    );

    // TurboQuant norms without codes
    let (_t, d) = jang_copy();
    edit_shard(&d, |t| {
        t.remove("model.layers.1.zaya_block.experts.switch_mlp.down_proj.tq_packed")
            .unwrap();
    });
    let e = open_err(&d);
    assert!(
        matches!(&e, ZayaError::MissingTensor { name, .. } if name.ends_with("down_proj.tq_packed")),
        "{e}"
    );

    // a missing expert of the per-expert layout names that expert
    let t = tempfile::tempdir().unwrap();
    let m = random_model(&tiny_config(), 3);
    write_per_expert(&m, t.path());
    let p = t.path().join(SHARD);
    let mut s = read_safetensors(&p);
    s.remove("model.layers.3.zaya_block.experts.local_experts.2.linear_fc2.weight")
        .unwrap();
    write_safetensors(&p, &s);
    let e = open_err(t.path());
    assert!(matches!(e, ZayaError::MissingTensor { .. }), "{e}");
    assert_names(
        &e,
        &["model.layers.3.zaya_block.experts.local_experts.2.linear_fc2.weight"],
    );
}

#[test]
fn wrong_shape() {
    let (_t, d) = jang_copy();
    edit_shard(&d, |t| {
        t.insert(
            "model.final_norm.weight".into(),
            Stored {
                dtype: Dtype::F16,
                shape: vec![63],
                bytes: vec![0; 126],
            },
        );
    });
    let e = open_err(&d);
    assert!(
        matches!(&e, ZayaError::Shape { name, expected, found, file } if name == "model.final_norm.weight"
            && expected == "[64]" && found == "[63]" && file == SHARD),
        "{e}"
    );

    // TurboQuant norms with the wrong row count
    let (_t, d) = jang_copy();
    edit_shard(&d, |t| {
        t.insert(
            "model.layers.1.zaya_block.experts.switch_mlp.up_proj.tq_norms".into(),
            Stored {
                dtype: Dtype::F16,
                shape: vec![4, 32],
                bytes: vec![0; 256],
            },
        );
    });
    let e = open_err(&d);
    assert!(matches!(e, ZayaError::Shape { .. }), "{e}");
    assert_names(
        &e,
        &[
            "model.layers.1.zaya_block.experts.switch_mlp.up_proj.tq_norms",
            "[4, 64]",
            "[4, 32]",
        ],
    );

    // a conv weight in neither MLX nor PyTorch layout
    let (_t, d) = jang_copy();
    edit_shard(&d, |t| {
        t.insert(
            "model.layers.0.self_attn.qkv.conv_qk.0.weight".into(),
            Stored {
                dtype: Dtype::F16,
                shape: vec![96, 2, 2],
                bytes: vec![0; 96 * 4 * 2],
            },
        );
    });
    let e = open_err(&d);
    assert!(matches!(e, ZayaError::Shape { .. }), "{e}");
    assert_names(
        &e,
        &[
            "conv_qk.0.weight",
            "[96, 2, 1] (MLX layout) or [96, 1, 2] (PyTorch layout)",
        ],
    );
}

#[test]
fn wrong_dtype() {
    let (_t, d) = jang_copy();
    edit_shard(&d, |t| {
        t.get_mut("model.layers.0.input_norm.weight").unwrap().dtype = Dtype::U16;
    });
    let e = open_err(&d);
    assert!(
        matches!(&e, ZayaError::Dtype { name, found, .. } if name == "model.layers.0.input_norm.weight" && found == "U16"),
        "{e}"
    );

    let (_t, d) = jang_copy();
    edit_shard(&d, |t| {
        t.get_mut("model.layers.3.zaya_block.experts.switch_mlp.down_proj.tq_packed")
            .unwrap()
            .dtype = Dtype::I32;
    });
    let e = open_err(&d);
    assert!(
        matches!(&e, ZayaError::Dtype { expected, found, .. } if expected == "U32" && found == "I32"),
        "{e}"
    );
    assert_names(
        &e,
        &[
            "model.layers.3.zaya_block.experts.switch_mlp.down_proj.tq_packed",
            SHARD,
        ],
    );
}

#[test]
fn truncated_shard() {
    let (_t, d) = jang_copy();
    let p = d.join(SHARD);
    let len = std::fs::metadata(&p).unwrap().len();
    let f = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
    f.set_len(len - 100).unwrap();
    let e = open_err(&d);
    assert!(
        matches!(&e, ZayaError::Safetensors { file, .. } if file.ends_with(SHARD)),
        "{e}"
    );
    assert_names(&e, &["truncated"]);

    // so short that not even the header fits
    f.set_len(200).unwrap();
    let e = open_err(&d);
    assert!(
        matches!(&e, ZayaError::Safetensors { file, .. } if file.ends_with(SHARD)),
        "{e}"
    );
    f.set_len(3).unwrap();
    let e = open_err(&d);
    assert!(
        matches!(&e, ZayaError::Safetensors { file, .. } if file.ends_with(SHARD)),
        "{e}"
    );
}

#[test]
fn corrupt_header() {
    let (_t, d) = jang_copy();
    let p = d.join(SHARD);
    let mut bytes = std::fs::read(&p).unwrap();
    assert_eq!(bytes[8], b'{');
    bytes[8] = b'X';
    std::fs::write(&p, &bytes).unwrap();
    let e = open_err(&d);
    assert!(
        matches!(&e, ZayaError::Safetensors { file, .. } if file.ends_with(SHARD)),
        "{e}"
    );
    assert_names(&e, &["corrupt header"]);

    // an absurd header length
    bytes[..8].copy_from_slice(&u64::MAX.to_le_bytes());
    std::fs::write(&p, &bytes).unwrap();
    let e = open_err(&d);
    assert!(matches!(e, ZayaError::Safetensors { .. }), "{e}");

    // data offsets outside the file (the file itself is complete)
    let t = tempfile::tempdir().unwrap();
    std::fs::copy(d.join("config.json"), t.path().join("config.json")).unwrap();
    let header = br#"{"model.final_norm.weight":{"dtype":"F16","shape":[64],"data_offsets":[1000,1128]}}"#;
    let mut f = (header.len() as u64).to_le_bytes().to_vec();
    f.extend_from_slice(header);
    f.extend(vec![0u8; 128]);
    std::fs::write(t.path().join("model.safetensors"), f).unwrap();
    let e = open_err(t.path());
    assert!(
        matches!(&e, ZayaError::Safetensors { file, .. } if file.ends_with("model.safetensors")),
        "{e}"
    );
    assert_names(&e, &["model.final_norm.weight", "[1000, 1128]"]);
}

#[test]
fn missing_sidecar() {
    let (_t, d) = jang_copy();
    std::fs::remove_file(d.join("jangtq_runtime.safetensors")).unwrap();
    let e = open_err(&d);
    assert!(matches!(e, ZayaError::MissingSidecar(_)), "{e}");
    assert_names(&e, &["jangtq_runtime.safetensors", "zaya_block.experts.switch_mlp"]);

    // the sidecar exists but lacks the sign vector
    let (_t, d) = jang_copy();
    let p = d.join("jangtq_runtime.safetensors");
    let mut s = read_safetensors(&p);
    s.remove("signs.64.42").unwrap();
    write_safetensors(&p, &s);
    let e = open_err(&d);
    assert!(matches!(e, ZayaError::MissingSidecar(_)), "{e}");
    assert_names(&e, &["signs.64.42"]);
}

#[test]
fn bits_mismatch() {
    // tq_bits disagrees with jang_config.json's routed-expert bits
    let (_t, d) = jang_copy();
    edit_shard(&d, |t| {
        t.get_mut("model.layers.1.zaya_block.experts.switch_mlp.gate_proj.tq_bits")
            .unwrap()
            .bytes = vec![2];
    });
    let e = open_err(&d);
    assert!(matches!(e, ZayaError::Quant { .. }), "{e}");
    assert_names(
        &e,
        &[
            "model.layers.1.zaya_block.experts.switch_mlp.gate_proj.tq_bits",
            "jang_config.json",
        ],
    );

    // without jang_config.json, 2-bit codes cannot fill the packed columns: packed_cols·32/bits ≠ in
    std::fs::remove_file(d.join("jang_config.json")).unwrap();
    edit_json(&d.join("config.json"), |c| {
        c["quantization"].as_object_mut().unwrap().remove("routed_expert_bits");
    });
    let e = open_err(&d);
    assert!(matches!(e, ZayaError::Quant { .. }), "{e}");
    assert_names(
        &e,
        &[
            "model.layers.1.zaya_block.experts.switch_mlp.gate_proj.tq_packed",
            "in_features is 64",
        ],
    );

    // config.json's affine bits / group size disagree with the tensors
    let (_t, d) = jang_copy();
    edit_json(&d.join("config.json"), |c| c["quantization"]["bits"] = json!(4));
    let e = open_err(&d);
    assert!(matches!(e, ZayaError::Quant { .. }), "{e}");
    assert_names(&e, &["model.embed_tokens.weight", "4 bits", "8-bit"]);
    let (_t, d) = jang_copy();
    edit_json(&d.join("config.json"), |c| c["quantization"]["group_size"] = json!(64));
    let e = open_err(&d);
    assert!(matches!(e, ZayaError::Quant { .. }), "{e}");
    assert_names(&e, &["model.embed_tokens.scales", "group size 64"]);
    // a per-module override is honoured (and checked)
    let (_t, d) = jang_copy();
    edit_json(&d.join("config.json"), |c| {
        c["quantization"]["model.layers.2.self_attn.o_proj"] = json!({"bits": 4, "group_size": 32})
    });
    let e = open_err(&d);
    assert_names(&e, &["model.layers.2.self_attn.o_proj.weight", "4 bits"]);

    // jang_config.json's tq_in_features disagrees with the config
    let (_t, d) = jang_copy();
    edit_json(&d.join("jang_config.json"), |c| {
        c["tq_in_features"]["model.layers.3.zaya_block.experts.switch_mlp.down_proj"] = json!(128)
    });
    let e = open_err(&d);
    assert!(matches!(e, ZayaError::Quant { .. }), "{e}");
    assert_names(
        &e,
        &[
            "model.layers.3.zaya_block.experts.switch_mlp.down_proj.tq_packed",
            "128",
        ],
    );
}

#[test]
fn unknown_model_type() {
    let (_t, d) = jang_copy();
    edit_json(&d.join("config.json"), |c| c["model_type"] = json!("llama"));
    let e = open_err(&d);
    assert!(matches!(e, ZayaError::UnsupportedModel { .. }), "{e}");
    assert_names(&e, &["llama", "config.json"]);
}

#[test]
fn missing_shard_named_by_the_index() {
    let (_t, d) = jang_copy();
    edit_json(&d.join("model.safetensors.index.json"), |i| {
        i["weight_map"]["model.final_norm.weight"] = json!("model-00002-of-00002.safetensors");
    });
    let e = open_err(&d);
    assert!(
        matches!(&e, ZayaError::Safetensors { file, .. } if file.ends_with("model-00002-of-00002.safetensors")),
        "{e}"
    );
    assert_names(&e, &["missing shard", "model.final_norm.weight"]);
}

#[test]
fn index_names_a_tensor_its_shard_lacks() {
    let (_t, d) = jang_copy();
    edit_json(&d.join("model.safetensors.index.json"), |i| {
        i["weight_map"]["model.layers.0.extra.weight"] = json!(SHARD);
    });
    let e = open_err(&d);
    assert!(
        matches!(&e, ZayaError::MissingTensor { name, file } if name == "model.layers.0.extra.weight" && file.as_deref() == Some(SHARD)),
        "{e}"
    );
}

#[test]
fn unexpected_tensors() {
    let (_t, d) = jang_copy();
    edit_shard(&d, |t| {
        t.insert(
            "model.layers.0.self_attn.extra.weight".into(),
            Stored {
                dtype: Dtype::F16,
                shape: vec![2],
                bytes: vec![0; 4],
            },
        );
        t.insert(
            "model.layers.9.input_norm.weight".into(),
            Stored {
                dtype: Dtype::F16,
                shape: vec![64],
                bytes: vec![0; 128],
            },
        );
    });
    let e = open_err(&d);
    assert!(
        matches!(&e, ZayaError::UnexpectedTensors { names } if names.len() == 2),
        "{e}"
    );
    assert_names(
        &e,
        &[
            "model.layers.0.self_attn.extra.weight",
            "model.layers.9.input_norm.weight",
        ],
    );
    // allowed: a warning in the load report
    let b = Bundle::open_with(&d, &BundleOptions { allow_unexpected: true }).unwrap();
    assert_eq!(b.report.unexpected.len(), 2);
    assert!(!b.weights.tensors.contains_key("model.layers.9.input_norm.weight"));
}

#[test]
fn no_index_falls_back_to_the_shards() {
    let (_t, d) = jang_copy();
    std::fs::remove_file(d.join("model.safetensors.index.json")).unwrap();
    let b = Bundle::open(&d).unwrap();
    assert_eq!(b.summary.stored_tensors, 103);
    assert_eq!(b.weights.tensors.len(), 97);
    // and without any shard at all
    std::fs::remove_file(d.join(SHARD)).unwrap();
    let e = open_err(&d);
    assert!(matches!(e, ZayaError::Safetensors { .. }), "{e}");
}

#[test]
fn upstream_missing_tensor_names_the_layout() {
    let t = tempfile::tempdir().unwrap();
    let m = random_model(&tiny_config(), 5);
    write_upstream(&m, t.path());
    let p = t.path().join("model-00001-of-00002.safetensors");
    let mut s = read_safetensors(&p);
    s.remove("model.layers.1.self_attn.qk_norm.temp").unwrap();
    write_safetensors(&p, &s);
    edit_json(&t.path().join("model.safetensors.index.json"), |i| {
        i["weight_map"]
            .as_object_mut()
            .unwrap()
            .remove("model.layers.1.self_attn.qk_norm.temp");
    });
    let e = open_err(t.path());
    assert!(matches!(e, ZayaError::MissingTensor { .. }), "{e}");
    assert_names(&e, &["model.layers.2.self_attn.qkv.temp", "upstream"]);
}
