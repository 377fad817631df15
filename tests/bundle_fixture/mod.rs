//! Small bundles for the bundle_* tests: a random float model in canonical (legacy stacked) names,
//! written out in the three on-disk layouts (stacked, Zyphra per-expert, upstream 40-block), and a
//! jang-converted JANGTQ4 bundle made from the per-expert source by the reference converter
//! (`python -m jang_tools.convert_zaya_jangtq SRC OUT JANGTQ4`, through the venv python).
//!
//! Kept minimal so it can be swapped for the shared `tests/common` fixtures later.
#![allow(dead_code)]
#[path = "../common/venv.rs"]
mod venv;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
pub use venv::{python, repo_root as repo};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use safetensors::tensor::{Dtype, TensorView};
use serde_json::{json, Value};

/// Runs the venv python with `args`; panics with its stderr on failure.
pub fn run_python(args: &[&str]) -> std::process::Output {
    let out = std::process::Command::new(python())
        .args(args)
        .output()
        .expect("failed to start python");
    assert!(
        out.status.success(),
        "python {:?} failed:\n{}\n{}",
        args,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The tiny legacy-revision config (docs/bundle-format.md §5.2: H 64, 4 half-layers, 4 experts, heads 4/2 x 16,
/// router 32, vocab 256, ffn_hidden_size 2H).
pub fn tiny_config() -> Value {
    json!({
        "architectures": ["ZayaForCausalLM"], "model_type": "zaya", "hidden_size": 64,
        "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 2,
        "num_query_groups": 2, "head_dim": 16, "kv_channels": 16, "partial_rotary_factor": 0.5,
        "rope_theta": 5000000, "rope_scaling": false, "max_position_embeddings": 4096,
        "num_experts": 4, "moe_router_topk": 1, "ffn_hidden_size": 128, "zaya_mlp_expansion": 32,
        "zaya_use_mod": true, "zaya_use_eda": true, "norm_epsilon": 1e-5, "vocab_size": 256,
        "bos_token_id": 2, "eos_token_id": 106, "pad_token_id": 0, "tie_word_embeddings": true,
        "cca": true, "scale_residual_merge": true, "residual_in_fp32": true
    })
}

/// A float tensor.
#[derive(Clone, Debug, PartialEq)]
pub struct T {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

/// A float model under canonical names; conv weights in **PyTorch** layout `[out, in/g, k]` (as files
/// store them), experts stacked `[E, out, in]`.
pub struct FloatModel {
    pub cfg: Value,
    pub tensors: BTreeMap<String, T>,
}

fn u(cfg: &Value, k: &str) -> usize {
    cfg[k].as_u64().unwrap() as usize
}

/// Random weights with realistic scales (linears ~ U(±1/√in), norms and scales ≈ 1, biases ≈ 0).
pub fn random_model(cfg: &Value, seed: u64) -> FloatModel {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut tensors = BTreeMap::new();
    let h = u(cfg, "hidden_size");
    let nl = u(cfg, "num_hidden_layers");
    let hq = u(cfg, "num_attention_heads");
    let hk = u(cfg, "num_key_value_heads");
    let d = u(cfg, "head_dim");
    let e = u(cfg, "num_experts");
    let i = u(cfg, "ffn_hidden_size") / 2;
    let r = u(cfg, "zaya_mlp_expansion");
    let v = u(cfg, "vocab_size");
    let c = (hq + hk) * d;
    let mut add = |name: String, shape: Vec<usize>, center: f32, spread: f32| {
        let n: usize = shape.iter().product();
        let data = (0..n).map(|_| center + rng.gen_range(-spread..spread)).collect();
        tensors.insert(name, T { shape, data });
    };
    let lin = |inp: usize| 1.0 / (inp as f32).sqrt();
    add("model.embed_tokens.weight".into(), vec![v, h], 0.0, 1.0);
    add("model.final_norm.weight".into(), vec![h], 1.0, 0.1);
    for s in ["hidden_states_scale", "residual_scale"] {
        add(format!("model.res_scale.{s}"), vec![h], 1.0, 0.1);
    }
    for s in ["hidden_states_bias", "residual_bias"] {
        add(format!("model.res_scale.{s}"), vec![h], 0.0, 0.05);
    }
    for n in 0..nl {
        let p = format!("model.layers.{n}");
        add(format!("{p}.input_norm.weight"), vec![h], 1.0, 0.1);
        add(format!("{p}.res_scale.hidden_states_scale"), vec![h], 1.0, 0.1);
        add(format!("{p}.res_scale.hidden_states_bias"), vec![h], 0.0, 0.05);
        if n > 0 {
            add(format!("{p}.res_scale.residual_scale"), vec![h], 1.0, 0.1);
            add(format!("{p}.res_scale.residual_bias"), vec![h], 0.0, 0.05);
        }
        if n % 2 == 0 {
            let a = format!("{p}.self_attn");
            add(format!("{a}.qkv.linear_q.weight"), vec![hq * d, h], 0.0, lin(h));
            add(format!("{a}.qkv.linear_k.weight"), vec![hk * d, h], 0.0, lin(h));
            add(format!("{a}.qkv.val_proj1.weight"), vec![hk * d / 2, h], 0.0, lin(h));
            add(format!("{a}.qkv.val_proj2.weight"), vec![hk * d / 2, h], 0.0, lin(h));
            add(format!("{a}.qkv.conv_qk.0.weight"), vec![c, 1, 2], 0.0, 0.7);
            add(format!("{a}.qkv.conv_qk.0.bias"), vec![c], 0.0, 0.1);
            add(format!("{a}.qkv.conv_qk.1.weight"), vec![c, d, 2], 0.0, lin(2 * d));
            add(format!("{a}.qkv.conv_qk.1.bias"), vec![c], 0.0, 0.1);
            add(format!("{a}.qkv.temp"), vec![hk], 1.0, 0.2);
            add(format!("{a}.o_proj.weight"), vec![h, hq * d], 0.0, lin(hq * d));
        } else {
            let rt = format!("{p}.zaya_block.router");
            add(format!("{rt}.down_proj.weight"), vec![r, h], 0.0, lin(h));
            add(format!("{rt}.down_proj.bias"), vec![r], 0.0, 0.05);
            add(format!("{rt}.rmsnorm_eda.weight"), vec![r], 1.0, 0.1);
            add(format!("{rt}.router_mlp.0.weight"), vec![r, r], 0.0, lin(r));
            add(format!("{rt}.router_mlp.0.bias"), vec![r], 0.0, 0.05);
            add(format!("{rt}.router_mlp.2.weight"), vec![r, r], 0.0, lin(r));
            add(format!("{rt}.router_mlp.2.bias"), vec![r], 0.0, 0.05);
            add(format!("{rt}.router_mlp.4.weight"), vec![e + 1, r], 0.0, lin(r));
            add(format!("{rt}.balancing_biases"), vec![e + 1], 0.0, 0.01);
            if n != 1 {
                add(format!("{rt}.router_states_scale"), vec![r], 1.0, 0.1);
            }
            let x = format!("{p}.zaya_block.experts.switch_mlp");
            add(format!("{x}.gate_proj.weight"), vec![e, i, h], 0.0, lin(h));
            add(format!("{x}.up_proj.weight"), vec![e, i, h], 0.0, lin(h));
            add(format!("{x}.down_proj.weight"), vec![e, h, i], 0.0, lin(i));
        }
    }
    FloatModel {
        cfg: cfg.clone(),
        tensors,
    }
}

/// A stored tensor for writing.
pub struct Stored {
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub bytes: Vec<u8>,
}

impl Stored {
    pub fn f32(t: &T) -> Stored {
        Stored {
            dtype: Dtype::F32,
            shape: t.shape.clone(),
            bytes: t.data.iter().flat_map(|v| v.to_le_bytes()).collect(),
        }
    }
}

/// Writes one safetensors file.
pub fn write_safetensors(path: &Path, tensors: &BTreeMap<String, Stored>) {
    let views: Vec<(String, TensorView)> = tensors
        .iter()
        .map(|(n, s)| (n.clone(), TensorView::new(s.dtype, s.shape.clone(), &s.bytes).unwrap()))
        .collect();
    safetensors::serialize_to_file(views, None, path).unwrap();
}

/// Reads every tensor of a safetensors file.
pub fn read_safetensors(path: &Path) -> BTreeMap<String, Stored> {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(n, v)| {
            (
                n,
                Stored {
                    dtype: v.dtype(),
                    shape: v.shape().to_vec(),
                    bytes: v.data().to_vec(),
                },
            )
        })
        .collect()
}

fn write_dir(dir: &Path, cfg: &Value, tensors: &BTreeMap<String, Stored>) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("config.json"), serde_json::to_string_pretty(cfg).unwrap()).unwrap();
    write_safetensors(&dir.join("model-00001-of-00001.safetensors"), tensors);
}

/// Writes the model in the legacy stacked layout (canonical names, one shard, no index).
pub fn write_stacked(m: &FloatModel, dir: &Path) {
    let t = m.tensors.iter().map(|(n, t)| (n.clone(), Stored::f32(t))).collect();
    write_dir(dir, &m.cfg, &t);
}

/// Rows `[lo, hi)` of expert `e` of a stacked `[E, R, C]` tensor.
fn expert_rows(t: &T, e: usize, lo: usize, hi: usize) -> Vec<f32> {
    let (r, c) = (t.shape[1], t.shape[2]);
    t.data[(e * r + lo) * c..(e * r + hi) * c].to_vec()
}

/// Writes the model in the Zyphra legacy per-expert layout (`local_experts.{e}.linear_fc1` =
/// [gate; up] rows, `linear_fc2` = down).
pub fn write_per_expert(m: &FloatModel, dir: &Path) {
    let mut out = BTreeMap::new();
    for (n, t) in &m.tensors {
        if let Some(stem) = n.strip_suffix(".switch_mlp.gate_proj.weight") {
            let up = &m.tensors[&format!("{stem}.switch_mlp.up_proj.weight")];
            let down = &m.tensors[&format!("{stem}.switch_mlp.down_proj.weight")];
            let (e, i, h) = (t.shape[0], t.shape[1], t.shape[2]);
            for x in 0..e {
                let mut fc1 = expert_rows(t, x, 0, i);
                fc1.extend(expert_rows(up, x, 0, i));
                out.insert(
                    format!("{stem}.local_experts.{x}.linear_fc1.weight"),
                    Stored::f32(&T {
                        shape: vec![2 * i, h],
                        data: fc1,
                    }),
                );
                out.insert(
                    format!("{stem}.local_experts.{x}.linear_fc2.weight"),
                    Stored::f32(&T {
                        shape: vec![down.shape[1], down.shape[2]],
                        data: expert_rows(down, x, 0, down.shape[1]),
                    }),
                );
            }
        } else if n.contains(".switch_mlp.") {
            continue;
        } else {
            out.insert(n.clone(), Stored::f32(t));
        }
    }
    write_dir(dir, &m.cfg, &out);
}

/// The upstream (transformers, 40-block revision) name of a canonical non-expert tensor.
pub fn upstream_name(n: &str, half_layers: usize) -> String {
    match n {
        "model.layers.0.res_scale.hidden_states_scale" => return "model.input_hidden_states_scale".into(),
        "model.layers.0.res_scale.hidden_states_bias" => return "model.input_hidden_states_bias".into(),
        "model.final_norm.weight" => return "model.norm.weight".into(),
        _ => {}
    }
    if let Some(r) = n.strip_prefix("model.res_scale.") {
        return format!("model.layers.{}.post_mlp_residual_scale.{r}", half_layers / 2 - 1);
    }
    let Some(r) = n.strip_prefix("model.layers.") else {
        return n.to_string();
    };
    let (l, rest) = r.split_once('.').unwrap();
    let l: usize = l.parse().unwrap();
    let k = l / 2;
    if l.is_multiple_of(2) {
        if let Some(x) = rest.strip_prefix("res_scale.") {
            return format!("model.layers.{}.post_mlp_residual_scale.{x}", k - 1);
        }
        let rest = rest
            .replace("input_norm.", "input_layernorm.")
            .replace("self_attn.qkv.linear_q.", "self_attn.qkv_proj.q_proj.")
            .replace("self_attn.qkv.linear_k.", "self_attn.qkv_proj.k_proj.")
            .replace("self_attn.qkv.val_proj1.", "self_attn.qkv_proj.v_proj_current.")
            .replace("self_attn.qkv.val_proj2.", "self_attn.qkv_proj.v_proj_delayed.")
            .replace("self_attn.qkv.conv_qk.0.", "self_attn.qkv_proj.conv_qk_depthwise.")
            .replace("self_attn.qkv.conv_qk.1.", "self_attn.qkv_proj.conv_qk_grouped.")
            .replace("self_attn.qkv.temp", "self_attn.qk_norm.temp");
        format!("model.layers.{k}.{rest}")
    } else {
        let rest = rest
            .replace("input_norm.", "post_attention_layernorm.")
            .replace("res_scale.", "post_attention_residual_scale.")
            .replace("zaya_block.router.router_mlp.0.", "mlp.gate.router_mlp.fc1.")
            .replace("zaya_block.router.router_mlp.2.", "mlp.gate.router_mlp.fc2.")
            .replace("zaya_block.router.router_mlp.4.", "mlp.gate.router_mlp.out_proj.")
            .replace("zaya_block.router.rmsnorm_eda.", "mlp.gate.router_mlp.norm.")
            .replace("zaya_block.router.", "mlp.gate.");
        format!("model.layers.{k}.{rest}")
    }
}

/// The upstream-revision config of a legacy config.
pub fn upstream_config(cfg: &Value) -> Value {
    let blocks = u(cfg, "num_hidden_layers") / 2;
    json!({
        "architectures": ["ZayaForCausalLM"], "model_type": "zaya",
        "hidden_size": cfg["hidden_size"], "num_hidden_layers": blocks,
        "layer_types": vec!["hybrid"; blocks], "num_attention_heads": cfg["num_attention_heads"],
        "num_key_value_heads": cfg["num_key_value_heads"], "head_dim": cfg["head_dim"],
        "moe_intermediate_size": u(cfg, "ffn_hidden_size") / 2, "num_experts": cfg["num_experts"],
        "num_experts_per_tok": 1, "router_hidden_size": cfg["zaya_mlp_expansion"], "rms_norm_eps": 1e-5,
        "rope_parameters": {"hybrid": {"rope_type": "default", "rope_theta": 5e6, "partial_rotary_factor": 0.5}},
        "cca_time0": 2, "cca_time1": 2, "tie_word_embeddings": true, "vocab_size": cfg["vocab_size"],
        "bos_token_id": 2, "eos_token_id": 106, "pad_token_id": 0
    })
}

/// Writes the model in the upstream 40-block layout (fused `gate_up_proj [E, 2I, H]`), with an index
/// over two shards.
pub fn write_upstream(m: &FloatModel, dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let nl = u(&m.cfg, "num_hidden_layers");
    let mut a = BTreeMap::new();
    let mut b = BTreeMap::new();
    for (n, t) in &m.tensors {
        if let Some(stem) = n.strip_suffix(".zaya_block.experts.switch_mlp.gate_proj.weight") {
            let up = &m.tensors[&format!("{stem}.zaya_block.experts.switch_mlp.up_proj.weight")];
            let (e, i, h) = (t.shape[0], t.shape[1], t.shape[2]);
            let mut gu = Vec::with_capacity(2 * t.data.len());
            for x in 0..e {
                gu.extend(expert_rows(t, x, 0, i));
                gu.extend(expert_rows(up, x, 0, i));
            }
            let l: usize = stem.strip_prefix("model.layers.").unwrap().parse().unwrap();
            b.insert(
                format!("model.layers.{}.mlp.experts.gate_up_proj", l / 2),
                Stored::f32(&T {
                    shape: vec![e, 2 * i, h],
                    data: gu,
                }),
            );
        } else if let Some(stem) = n.strip_suffix(".zaya_block.experts.switch_mlp.down_proj.weight") {
            let l: usize = stem.strip_prefix("model.layers.").unwrap().parse().unwrap();
            b.insert(format!("model.layers.{}.mlp.experts.down_proj", l / 2), Stored::f32(t));
        } else if n.contains(".switch_mlp.") {
            continue;
        } else {
            a.insert(upstream_name(n, nl), Stored::f32(t));
        }
    }
    let mut wm = serde_json::Map::new();
    for (file, set) in [
        ("model-00001-of-00002.safetensors", &a),
        ("model-00002-of-00002.safetensors", &b),
    ] {
        write_safetensors(&dir.join(file), set);
        for k in set.keys() {
            wm.insert(k.clone(), json!(file));
        }
    }
    std::fs::write(
        dir.join("model.safetensors.index.json"),
        json!({"metadata": {}, "weight_map": wm}).to_string(),
    )
    .unwrap();
    std::fs::write(
        dir.join("config.json"),
        serde_json::to_string_pretty(&upstream_config(&m.cfg)).unwrap(),
    )
    .unwrap();
}

/// Recursively copies a directory.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let p = e.path();
        if p.is_dir() {
            copy_dir(&p, &to.join(e.file_name()));
        } else {
            std::fs::copy(&p, to.join(e.file_name())).unwrap();
        }
    }
}

/// The seed of the tiny model every bundle test uses.
pub const SEED: u64 = 7;

/// A jang-converted JANGTQ4 bundle of the tiny model, built once per test binary (and cached under
/// `target/bundle-fixtures/` across runs). Returns (float per-expert source dir, bundle dir).
pub fn jang_tiny() -> &'static (PathBuf, PathBuf) {
    static F: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    F.get_or_init(|| {
        // the key changes whenever the model generator or the converter call changes
        let key = format!("tiny-s{SEED}-v1");
        let root = repo().join("target").join("bundle-fixtures").join(&key);
        let (src, out) = (root.join("source"), root.join("bundle"));
        if out.join("model.safetensors.index.json").exists() && out.join("jangtq_runtime.safetensors").exists() {
            return (src, out);
        }
        let tmp = root.with_extension(format!("tmp{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        let m = random_model(&tiny_config(), SEED);
        write_per_expert(&m, &tmp.join("source"));
        let o = tmp.join("bundle");
        run_python(&[
            "-m",
            "jang_tools.convert_zaya_jangtq",
            tmp.join("source").to_str().unwrap(),
            o.to_str().unwrap(),
            "JANGTQ4",
        ]);
        // publish atomically; another process may have won the race
        std::fs::create_dir_all(root.parent().unwrap()).unwrap();
        if std::fs::rename(&tmp, &root).is_err() {
            let _ = std::fs::remove_dir_all(&tmp);
        }
        (src, out)
    })
}

/// A fresh copy of the jang bundle in a temp dir, for tests that break it.
pub fn jang_copy() -> (tempfile::TempDir, PathBuf) {
    let (_, bundle) = jang_tiny();
    let t = tempfile::tempdir().unwrap();
    let d = t.path().join("bundle");
    copy_dir(bundle, &d);
    (t, d)
}

/// Rewrites the single shard of a bundle through `f` (tensor map), updating the index.
pub fn edit_shard(dir: &Path, f: impl FnOnce(&mut BTreeMap<String, Stored>)) {
    let index_path = dir.join("model.safetensors.index.json");
    let mut index: Value = serde_json::from_str(&std::fs::read_to_string(&index_path).unwrap()).unwrap();
    let files: Vec<String> = {
        let mut v: Vec<String> = index["weight_map"]
            .as_object()
            .unwrap()
            .values()
            .map(|v| v.as_str().unwrap().to_string())
            .collect();
        v.sort();
        v.dedup();
        v
    };
    assert_eq!(files.len(), 1, "edit_shard expects a one-shard bundle");
    let path = dir.join(&files[0]);
    let mut t = read_safetensors(&path);
    f(&mut t);
    write_safetensors(&path, &t);
    let wm: serde_json::Map<String, Value> = t.keys().map(|k| (k.clone(), json!(files[0]))).collect();
    index["weight_map"] = Value::Object(wm);
    std::fs::write(&index_path, index.to_string()).unwrap();
}

/// Edits a JSON file in place.
pub fn edit_json(path: &Path, f: impl FnOnce(&mut Value)) {
    let mut v: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    f(&mut v);
    std::fs::write(path, serde_json::to_string_pretty(&v).unwrap()).unwrap();
}

/// The shard file of a one-shard bundle.
pub fn only_shard(dir: &Path) -> PathBuf {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let n = p.file_name().unwrap().to_str().unwrap();
            n.ends_with(".safetensors") && n != "jangtq_runtime.safetensors"
        })
        .collect();
    assert_eq!(v.len(), 1);
    v.pop().unwrap()
}

// ---- comparison helpers ------------------------------------------------------------------------

use mlx_rs::Array;
use zaya_mlx::bundle::CanonicalWeights;
use zaya_mlx::quant::{affine, turboquant, WeightFormat};

/// An array's values as f32.
pub fn to_vec(a: &Array) -> Vec<f32> {
    let a = a.as_type::<f32>().unwrap();
    a.eval().unwrap();
    a.as_slice::<f32>().to_vec()
}

/// A stored F32 tensor's values.
pub fn f32s(s: &Stored) -> Vec<f32> {
    assert_eq!(s.dtype, Dtype::F32);
    s.bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

/// max |a - b| / max |b|
pub fn rel_max(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    let d = a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
    d / b.iter().fold(0f32, |m, x| m.max(x.abs()))
}

/// ‖a - b‖ / ‖b‖
pub fn rel_rmse(a: &[f32], b: &[f32]) -> f64 {
    let num: f64 = a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
    let den: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
    (num / den).sqrt()
}

/// A quantized module dequantized to f32 with the library's plain-MLX-ops helpers (None for float).
pub fn dequantize_module(w: &CanonicalWeights, base: &str) -> Option<Array> {
    let t = |s: &str| &w.tensors[&format!("{base}.{s}")];
    Some(match &w.formats[base] {
        WeightFormat::TurboQuant {
            bits,
            in_features,
            seed,
        } => turboquant::dequantize(
            t("tq_packed"),
            t("tq_norms"),
            &w.tq_runtime[&format!("codebook.{in_features}.{bits}")],
            &w.tq_runtime[&format!("signs.{in_features}.{seed}")],
            *bits,
            *in_features as usize,
        )
        .unwrap(),
        WeightFormat::Affine { bits, group_size } => {
            affine::dequantize(t("weight"), t("scales"), t("biases"), *bits, *group_size).unwrap()
        }
        WeightFormat::Mxfp4 { group_size } => affine::dequantize_mxfp4(t("weight"), t("scales"), *group_size).unwrap(),
        WeightFormat::Float => return None,
    })
}

/// Runs tests/reference/decode_bundle.py on `dir` and returns its tensors.
pub fn numpy_decode(dir: &Path) -> BTreeMap<String, Stored> {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("decoded.safetensors");
    let script = repo().join("tests/reference/decode_bundle.py");
    run_python(&[script.to_str().unwrap(), dir.to_str().unwrap(), out.to_str().unwrap()]);
    read_safetensors(&out)
}
