//! `zaya synth` bundles: structure against docs/bundle-format.md §1 (keys, dtypes, shapes, sidecar,
//! index, configs), byte-for-byte equality with jang's own converter run on the float source of
//! the same weights, the jang_tools Python model loading the bundle strictly (§5.2) and matching
//! the float model, determinism, and the CLI's error handling.
mod synth_support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

use half::f16;
use safetensors::{Dtype, SafeTensors};
use serde_json::{json, Value};
use synth_support::*;
use zaya_mlx::config::{JangConfig, ZayaConfig};
use zaya_mlx::tools::encode::{codebook_f32, random_signs};
use zaya_mlx::tools::synth::{self, plan, SynthOptions, SynthSpec};

fn read_json(p: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

fn quiet() -> SynthOptions {
    SynthOptions::default()
}

/// All tensors of all shards (name → raw), checking each header has no `__metadata__`.
fn load_shards(dir: &Path, shards: &[String]) -> BTreeMap<String, (String, Raw)> {
    let mut all = BTreeMap::new();
    for s in shards {
        let bytes = std::fs::read(dir.join(s)).unwrap();
        let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        let header: Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
        assert!(header.get("__metadata__").is_none(), "{s} has __metadata__");
        let st = SafeTensors::deserialize(&bytes).unwrap();
        for (k, v) in st.tensors() {
            let raw = Raw {
                dtype: v.dtype(),
                shape: v.shape().to_vec(),
                data: v.data().to_vec(),
            };
            assert!(all.insert(k.clone(), (s.clone(), raw)).is_none(), "{k} in two shards");
        }
    }
    all
}

#[test]
fn tiny_bundle_has_the_documented_structure() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("tiny");
    let spec = SynthSpec::preset("tiny").unwrap();
    let rep = synth::write_bundle(&spec, &out, &quiet()).unwrap();
    let (h, e, l) = (spec.hidden_size, spec.num_experts, spec.num_hidden_layers);

    // index ↔ shards
    let index = read_json(&out.join("model.safetensors.index.json"));
    assert_eq!(index["metadata"]["format"], "jangtq");
    let sizes: u64 = rep
        .shards
        .iter()
        .map(|s| std::fs::metadata(out.join(s)).unwrap().len())
        .sum();
    assert_eq!(index["metadata"]["total_size"].as_u64().unwrap(), sizes);
    assert_eq!(rep.total_size, sizes);
    let t = load_shards(&out, &rep.shards);
    let wm = index["weight_map"].as_object().unwrap();
    assert_eq!(wm.len(), t.len());
    for (k, (shard, _)) in &t {
        assert_eq!(wm[k].as_str().unwrap(), shard, "{k}");
    }
    assert_eq!(rep.shards, vec!["model-00001-of-00001.safetensors"]);

    // key count formula (docs/bundle-format.md §1.3), dtypes
    assert_eq!(t.len(), plan::expected_key_count(l));
    assert_eq!(t.len(), 152);
    let dtypes: BTreeSet<String> = t.values().map(|(_, r)| format!("{:?}", r.dtype)).collect();
    assert_eq!(dtypes, ["F16", "U32", "U8"].iter().map(|s| s.to_string()).collect());
    assert!(!t.keys().any(|k| k.starts_with("lm_head")));

    // shapes of every kind
    let shape = |k: &str| t[k].1.shape.clone();
    let g = spec.group_size;
    assert_eq!(shape("model.embed_tokens.weight"), vec![spec.vocab_size, h / 4]);
    assert_eq!(shape("model.embed_tokens.scales"), vec![spec.vocab_size, h / g]);
    assert_eq!(
        shape("model.layers.0.self_attn.qkv.linear_q.weight"),
        vec![spec.q_dim(), h / 4]
    );
    assert_eq!(
        shape("model.layers.0.self_attn.o_proj.biases"),
        vec![h, spec.q_dim() / g]
    );
    assert_eq!(
        shape("model.layers.2.self_attn.qkv.conv_qk.1.weight"),
        vec![spec.conv_channels(), spec.head_dim, 2]
    );
    assert_eq!(
        shape("model.layers.2.self_attn.qkv.conv_qk.0.weight"),
        vec![spec.conv_channels(), 1, 2]
    );
    assert_eq!(shape("model.layers.0.self_attn.qkv.temp"), vec![spec.num_kv_heads]);
    assert_eq!(
        shape("model.layers.1.zaya_block.router.router_mlp.4.weight"),
        vec![e + 1, spec.router_hidden_size]
    );
    let base = "model.layers.3.zaya_block.experts.switch_mlp";
    assert_eq!(
        shape(&format!("{base}.gate_proj.tq_packed")),
        vec![e, spec.expert_intermediate_size, h / 8]
    );
    assert_eq!(
        shape(&format!("{base}.down_proj.tq_packed")),
        vec![e, h, spec.expert_intermediate_size / 8]
    );
    assert_eq!(
        shape(&format!("{base}.up_proj.tq_norms")),
        vec![e, spec.expert_intermediate_size]
    );
    assert_eq!(t[&format!("{base}.up_proj.tq_bits")].1.data, vec![4u8]);
    assert!(!t.contains_key("model.layers.0.res_scale.residual_scale"));
    assert!(t.contains_key("model.layers.2.res_scale.residual_scale"));
    assert!(!t.contains_key("model.layers.1.zaya_block.router.router_states_scale"));
    assert!(t.contains_key("model.layers.3.zaya_block.router.router_states_scale"));
    assert!(!t.keys().any(|k| k.contains("router_mlp.4.bias")));

    // values: balancing biases (skip route −1), norms ≈ 1, tq norms ≈ 1 (rows ~ N(0, 1/in))
    let bb = t["model.layers.1.zaya_block.router.balancing_biases"].1.as_u16();
    assert_eq!(f16::from_bits(bb[e]).to_f32(), -1.0);
    assert!(bb[..e].iter().all(|&x| f16::from_bits(x).to_f32().abs() < 0.1));
    let norm = t["model.final_norm.weight"].1.as_u16();
    let mean = norm.iter().map(|&x| f16::from_bits(x).to_f32()).sum::<f32>() / h as f32;
    assert!((mean - 1.0).abs() < 0.05, "{mean}");
    let tqn = t[&format!("{base}.gate_proj.tq_norms")].1.as_u16();
    let mean = tqn.iter().map(|&x| f16::from_bits(x).to_f32()).sum::<f32>() / tqn.len() as f32;
    assert!((mean - 1.0).abs() < 0.05, "row norms of N(0,1/in) rows ≈ 1, got {mean}");

    // sidecar
    let side = read_safetensors(&out.join(synth::SIDECAR_FILE));
    assert_eq!(
        side.keys().cloned().collect::<Vec<_>>(),
        vec![format!("codebook.{h}.4"), format!("signs.{h}.42")]
    );
    assert!(side.values().all(|r| r.dtype == Dtype::F32));
    assert_eq!(side[&format!("codebook.{h}.4")].as_f32(), codebook_f32(h, 4));
    assert_eq!(side[&format!("signs.{h}.42")].as_f32(), random_signs(h, 42));

    // config.json / jang_config.json (docs/bundle-format.md §1.1–§1.2), parsed by our config module too
    let c = read_json(&out.join("config.json"));
    assert_eq!(c["weight_format"], "mxtq");
    assert_eq!(c["zaya_expert_layout"], "split_switch_mlp");
    assert_eq!(c["tie_word_embeddings"], true);
    assert_eq!(c["mxtq_seed"], 42);
    assert_eq!(
        c["mxtq_bits"],
        json!({"routed_expert": 4, "attention": 8, "router": 16, "embed_tokens": 8, "lm_head": 8, "cca_conv": 16, "norms_residual": 16})
    );
    assert_eq!(c["quantization"]["bits"], 8);
    assert_eq!(c["quantization"]["group_size"], 32);
    assert_eq!(c["quantization"]["mode"], "affine");
    assert_eq!(c["quantization"]["routed_expert_bits"], 4);
    assert_eq!(c["quantization"]["expert_layout"], "split_switch_mlp");
    assert_eq!(c["capabilities"]["tool_parser"], "zaya_xml");
    assert_eq!(c["capabilities"]["reasoning_parser"], "qwen3");
    assert!(c.get("quantization_config").is_none());
    let zc = ZayaConfig::from_dir(&out).unwrap();
    assert_eq!(
        (
            zc.hidden_size,
            zc.num_hidden_layers,
            zc.num_q_heads,
            zc.num_kv_heads,
            zc.head_dim
        ),
        (h, l, 4, 2, 32)
    );
    assert_eq!(
        (zc.num_experts, zc.expert_intermediate_size, zc.vocab_size),
        (e, spec.expert_intermediate_size, 1024)
    );
    assert_eq!(zc.eos_token_ids, vec![106, 1]);
    assert_eq!(zc.quantization.unwrap().group_size, Some(32));
    let jc = JangConfig::from_dir(&out).unwrap().unwrap();
    assert_eq!(jc.profile.as_deref(), Some("JANGTQ4"));
    assert_eq!(jc.weight_format.as_deref(), Some("mxtq"));
    assert_eq!(jc.mxtq_seed, Some(42));
    assert_eq!(jc.tq_in_features.len(), 3 * spec.moe_layers().len());
    assert!(jc.tq_in_features.values().all(|&v| v == h));
    assert_eq!(jc.routed_expert_bits["down_proj"], 4);
    let j = read_json(&out.join("jang_config.json"));
    assert_eq!(j["version"], 2);
    assert_eq!(j["cache_subtype"], "zaya_cca");
    assert_eq!(
        j["quantization"],
        json!({"method": "affine+mxtq", "group_size": 32, "bits_default": 4})
    );

    // tokenizer files; the vocab covers the tokenizer
    let tok: tokenizers::Tokenizer = std::fs::read_to_string(out.join("tokenizer.json"))
        .unwrap()
        .parse()
        .unwrap();
    assert!(tok.get_vocab_size(true) <= spec.vocab_size);
    let tc = read_json(&out.join("tokenizer_config.json"));
    assert_eq!(
        tc["chat_template"].as_str().unwrap(),
        std::fs::read_to_string(out.join("chat_template.jinja")).unwrap()
    );
}

#[test]
fn the_full_size_plan_matches_the_real_bundle() {
    // zaya1-8b planned (not written): 1965 keys, ≈4.65 GiB (docs/bundle-format.md §1.3, §1.6).
    let spec = SynthSpec::preset("zaya1-8b").unwrap();
    let t = plan::bundle_tensors(&spec, &plan::source_tensors(&spec));
    assert_eq!(t.len(), 1965);
    let (files, _) = plan::plan_files(&t, spec.max_shard_bytes, |i, n| {
        format!("model-{i:05}-of-{n:05}.safetensors")
    })
    .unwrap();
    let total: u64 = files.iter().map(|f| f.size).sum();
    let gib = total as f64 / (1u64 << 30) as f64;
    eprintln!("zaya1-8b plan: {} shards, {total} bytes = {gib:.3} GiB", files.len());
    assert!((gib - 4.65).abs() / 4.65 < 0.02, "{gib} GiB");
    assert!(files.iter().all(|f| f.size < 1_000_000_000 + 300_000_000));
}

#[test]
fn output_is_deterministic_and_thread_independent() {
    let dir = tempfile::tempdir().unwrap();
    let mut spec = SynthSpec::preset("tiny").unwrap();
    spec.max_shard_bytes = 200_000; // several shards
    let a = synth::write_bundle(
        &spec,
        &dir.path().join("a"),
        &SynthOptions {
            threads: Some(1),
            ..quiet()
        },
    )
    .unwrap();
    let b = synth::write_bundle(
        &spec,
        &dir.path().join("b"),
        &SynthOptions {
            threads: Some(3),
            ..quiet()
        },
    )
    .unwrap();
    assert_eq!(a.shards, b.shards);
    assert!(a.shards.len() >= 3, "{:?}", a.shards);
    for s in &a.shards {
        assert_eq!(
            std::fs::read(dir.path().join("a").join(s)).unwrap(),
            std::fs::read(dir.path().join("b").join(s)).unwrap(),
            "{s}"
        );
    }
    spec.seed = 1;
    let c = synth::write_bundle(&spec, &dir.path().join("c"), &quiet()).unwrap();
    assert_eq!(c.shards, a.shards);
    assert_ne!(
        std::fs::read(dir.path().join("c").join(&c.shards[0])).unwrap(),
        std::fs::read(dir.path().join("a").join(&a.shards[0])).unwrap()
    );
}

/// Float source → jang's converter vs our bundle from the same weights.
fn compare_with_converter(spec: &SynthSpec) -> Value {
    let dir = tempfile::tempdir().unwrap();
    let (src, ours) = (dir.path().join("src"), dir.path().join("ours"));
    synth::write_float_source(spec, &src, &quiet()).unwrap();
    synth::write_bundle(spec, &ours, &quiet()).unwrap();
    let r = run_python_json(
        "synth_convert_compare.py",
        &[
            src.to_str().unwrap(),
            ours.to_str().unwrap(),
            dir.path().to_str().unwrap(),
            &spec.profile(),
            &spec.group_size.to_string(),
            &spec.max_shard_bytes.to_string(),
        ],
    );
    // our bookkeeping file (what `synth --force` may replace) is the one extra
    let mut ours_files = r["our_files"].as_array().unwrap().clone();
    ours_files.retain(|f| f != ".zaya-synth.json");
    assert_eq!(r["ref_files"], json!(ours_files));
    assert_eq!(r["ref_keys"], r["our_keys"]);
    assert_eq!(r["missing_keys"], json!([]));
    assert_eq!(r["extra_keys"], json!([]));
    assert_eq!(r["bad_tensors"], json!([]), "{r}");
    for (name, ok) in r["json"].as_object().unwrap() {
        assert_eq!(ok, &json!(true), "{name} differs from the converter's: {r}");
    }
    let tq = &r["tq"];
    let (diff, total) = (tq["codes_diff"].as_u64().unwrap(), tq["codes_total"].as_u64().unwrap());
    eprintln!(
        "{}: {diff}/{total} TurboQuant codes differ from the converter's, files {}",
        spec.profile(),
        r["files"]
    );
    assert!((diff as f64) < 1e-4 * total as f64);
    assert_eq!(tq["norms_diff"], 0);
    r
}

#[test]
fn jang_converter_writes_the_same_bundle_from_the_same_weights() {
    let spec = SynthSpec::preset("tiny").unwrap();
    let r = compare_with_converter(&spec);
    // identical codes give identical files, headers included
    for (name, f) in r["files"].as_object().unwrap() {
        assert_eq!(f["identical"], true, "{name}: {r}");
    }
}

#[test]
fn jang_converter_agrees_on_jangtq2_group_64_and_sharding() {
    let mut spec = SynthSpec::preset("tiny").unwrap();
    spec.apply_overrides(
        &json!({"expert_bits": 2, "group_size": 64, "num_hidden_layers": 4, "max_shard_bytes": 120000}),
        "test",
    )
    .unwrap();
    spec.seed = 11;
    let r = compare_with_converter(&spec);
    let shards: Vec<&String> = r["files"]
        .as_object()
        .unwrap()
        .keys()
        .filter(|k| k.starts_with("model-"))
        .collect();
    assert!(shards.len() >= 3, "{shards:?}");
    for (name, f) in r["files"].as_object().unwrap() {
        assert_eq!(f["identical"], true, "{name}: {r}");
    }
}

#[test]
fn jang_python_model_loads_the_bundle_strictly_and_matches_the_float_model() {
    let dir = tempfile::tempdir().unwrap();
    let spec = SynthSpec {
        seed: 5,
        ..SynthSpec::preset("tiny").unwrap()
    };
    let (src, ours) = (dir.path().join("src"), dir.path().join("ours"));
    synth::write_float_source(&spec, &src, &quiet()).unwrap();
    synth::write_bundle(&spec, &ours, &quiet()).unwrap();
    let r = run_python_json("synth_load_check.py", &[ours.to_str().unwrap(), src.to_str().unwrap()]);
    eprintln!("{r}");
    assert_eq!(r["strict_load"], true);
    assert_eq!(r["keys"], 152);
    assert_eq!(r["logits_shape"], json!([1, 10, spec.vocab_size]));
    assert_eq!(r["logits_finite"], true);
    // the bundle is the float model up to quantization error
    let rm = &r["weight_rel_rmse"];
    let (lo, hi) = (rm["tq"][0].as_f64().unwrap(), rm["tq"][1].as_f64().unwrap());
    // 4-bit Lloyd-Max on Gaussian rows: ≈0.099 at in=2048 (docs/bundle-format.md §3.5), a little less at in=128
    assert!(lo > 0.08 && hi < 0.11, "TurboQuant relative RMSE {lo}..{hi}");
    // 8-bit affine, groups of 32 Gaussian values: step ≈ range/255 ≈ 4.1σ/255, RMSE ≈ step/√12 ≈ 0.0047σ
    assert!(rm["affine"][1].as_f64().unwrap() < 0.007, "{rm}");
    // f16 passthrough: relative rounding ≤ 2^-11
    assert!(rm["passthrough"][1].as_f64().unwrap() < 5e-4, "{rm}");
    assert!(r["logits_cosine"].as_f64().unwrap() > 0.98, "{r}");
    assert!(r["argmax_agree"].as_u64().unwrap() >= 8, "{r}");
}

fn zaya(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_zaya")).args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

#[test]
fn cli_writes_bundles_and_reports_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("b");
    let o = out.to_str().unwrap();
    let (code, err) = zaya(&["synth", "--preset", "tiny", "--seed", "3", "--out", o, "-q"]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("152 tensors"), "{err}");
    // non-empty output directory needs --force
    let (code, err) = zaya(&["synth", "--preset", "tiny", "--out", o, "-q"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--force"), "{err}");
    // --force replaces only what an earlier synth recorded: a stale shard it wrote goes (and is
    // named), a bundle file someone else put there stops it
    let manifest = out.join(".zaya-synth.json");
    let mut m: serde_json::Value = serde_json::from_slice(&std::fs::read(&manifest).unwrap()).unwrap();
    m["files"]
        .as_array_mut()
        .unwrap()
        .push(json!("model-00001-of-00009.safetensors"));
    std::fs::write(&manifest, m.to_string()).unwrap();
    std::fs::write(out.join("model-00001-of-00009.safetensors"), b"stale").unwrap();
    let (code, err) = zaya(&["synth", "--preset", "tiny", "--out", o, "--force", "-q"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("model-00001-of-00009.safetensors"),
        "names what it replaces: {err}"
    );
    assert!(
        !out.join("model-00001-of-00009.safetensors").exists(),
        "stale shard removed"
    );
    std::fs::write(out.join("model-00002-of-00009.safetensors"), b"not ours").unwrap();
    let (code, err) = zaya(&["synth", "--preset", "tiny", "--out", o, "--force", "-q"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("was not written by zaya synth"), "{err}");
    assert_eq!(
        std::fs::read(out.join("model-00002-of-00009.safetensors")).unwrap(),
        b"not ours"
    );
    // unknown preset, bad override file, invalid spec: typed errors naming the culprit
    let (code, err) = zaya(&[
        "synth",
        "--preset",
        "huge",
        "--out",
        dir.path().join("x").to_str().unwrap(),
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("huge") && err.contains("zaya1-8b"), "{err}");
    let cfg = dir.path().join("o.json");
    std::fs::write(&cfg, r#"{"hidden_size": 256, "num_expertz": 2}"#).unwrap();
    let (code, err) = zaya(&[
        "synth",
        "--config",
        cfg.to_str().unwrap(),
        "--out",
        dir.path().join("y").to_str().unwrap(),
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("num_expertz"), "{err}");
    std::fs::write(&cfg, r#"{"hidden_size": 100}"#).unwrap();
    let (code, err) = zaya(&[
        "synth",
        "--config",
        cfg.to_str().unwrap(),
        "--out",
        dir.path().join("z").to_str().unwrap(),
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("hidden_size"), "{err}");
    std::fs::write(&cfg, "{not json").unwrap();
    let (code, err) = zaya(&[
        "synth",
        "--config",
        cfg.to_str().unwrap(),
        "--out",
        dir.path().join("w").to_str().unwrap(),
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("o.json"), "{err}");
    // --config override shows up in the written config
    std::fs::write(&cfg, r#"{"num_hidden_layers": 4, "num_experts": 2}"#).unwrap();
    let v = dir.path().join("v");
    let (code, err) = zaya(&[
        "synth",
        "--config",
        cfg.to_str().unwrap(),
        "--out",
        v.to_str().unwrap(),
        "-q",
    ]);
    assert_eq!(code, 0, "{err}");
    let c = read_json(&v.join("config.json"));
    assert_eq!(
        (c["num_hidden_layers"].as_u64(), c["num_experts"].as_u64()),
        (Some(4), Some(2))
    );
}
