//! The Python reference pipeline (tests/reference/make_fixture.py) and the fixture API of
//! tests/common: fixture bundles are in the documented JANGTQ4 format (docs/bundle-format.md §1), the
//! reference files follow the naming contract of tests/reference/README.md, and the reference values
//! obey the whole-model formulas of docs/model.md §2 (checked in f64 from the bundle's own
//! tensors, independently of the Python code that produced them).
mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use common::{fixture, fixture_in, read_all, read_tensor, Fixture, Tensor};
use safetensors::Dtype;
use serde_json::Value;

/// Shape facts of a fixture config (tests/reference/fixtures.json).
struct Dims {
    h: usize,
    layers: usize,
    experts: usize,
    hq: usize,
    hk: usize,
    d: usize,
    r: usize,
    vocab: usize,
    t: usize,
    greedy: usize,
    group: usize,
}

fn dims(cfg: &Value) -> Dims {
    let u = |k: &str| {
        cfg[k]
            .as_u64()
            .unwrap_or_else(|| panic!("fixtures.json: `{k}` missing")) as usize
    };
    Dims {
        h: u("hidden_size"),
        layers: u("num_hidden_layers"),
        experts: u("num_experts"),
        hq: u("q_heads"),
        hk: u("kv_heads"),
        d: u("head_dim"),
        r: u("router_hidden"),
        vocab: u("vocab_size"),
        t: u("seq_len"),
        greedy: u("greedy_tokens"),
        group: u("group_size"),
    }
}

/// Every tensor a JANGTQ4 bundle of this config must hold, with dtype and shape (docs/bundle-format.md
/// §1.3; the real model's table with the config's sizes).
fn expected_bundle_keys(m: &Dims) -> BTreeMap<String, (Dtype, Vec<usize>)> {
    let mut k = BTreeMap::new();
    let mut put = |name: String, dt: Dtype, shape: &[usize]| {
        k.insert(name, (dt, shape.to_vec()));
    };
    let (h, g) = (m.h, m.group);
    let affine = |put: &mut dyn FnMut(String, Dtype, &[usize]), base: &str, out: usize, inp: usize| {
        put(format!("{base}.weight"), Dtype::U32, &[out, inp / 4]);
        put(format!("{base}.scales"), Dtype::F16, &[out, inp / g]);
        put(format!("{base}.biases"), Dtype::F16, &[out, inp / g]);
    };
    affine(&mut put, "model.embed_tokens", m.vocab, h);
    put("model.final_norm.weight".into(), Dtype::F16, &[h]);
    for v in [
        "hidden_states_scale",
        "hidden_states_bias",
        "residual_scale",
        "residual_bias",
    ] {
        put(format!("model.res_scale.{v}"), Dtype::F16, &[h]);
    }
    let (qd, kd) = (m.hq * m.d, m.hk * m.d);
    let c = qd + kd;
    for n in 0..m.layers {
        let p = format!("model.layers.{n}");
        put(format!("{p}.input_norm.weight"), Dtype::F16, &[h]);
        put(format!("{p}.res_scale.hidden_states_scale"), Dtype::F16, &[h]);
        put(format!("{p}.res_scale.hidden_states_bias"), Dtype::F16, &[h]);
        if n > 0 {
            put(format!("{p}.res_scale.residual_scale"), Dtype::F16, &[h]);
            put(format!("{p}.res_scale.residual_bias"), Dtype::F16, &[h]);
        }
        if n % 2 == 0 {
            let a = format!("{p}.self_attn");
            affine(&mut put, &format!("{a}.qkv.linear_q"), qd, h);
            affine(&mut put, &format!("{a}.qkv.linear_k"), kd, h);
            affine(&mut put, &format!("{a}.qkv.val_proj1"), kd / 2, h);
            affine(&mut put, &format!("{a}.qkv.val_proj2"), kd / 2, h);
            affine(&mut put, &format!("{a}.o_proj"), h, qd);
            put(format!("{a}.qkv.conv_qk.0.weight"), Dtype::F16, &[c, 1, 2]);
            put(format!("{a}.qkv.conv_qk.0.bias"), Dtype::F16, &[c]);
            put(format!("{a}.qkv.conv_qk.1.weight"), Dtype::F16, &[c, m.d, 2]);
            put(format!("{a}.qkv.conv_qk.1.bias"), Dtype::F16, &[c]);
            put(format!("{a}.qkv.temp"), Dtype::F16, &[m.hk]);
        } else {
            let z = format!("{p}.zaya_block");
            put(format!("{z}.router.down_proj.weight"), Dtype::F16, &[m.r, h]);
            put(format!("{z}.router.down_proj.bias"), Dtype::F16, &[m.r]);
            put(format!("{z}.router.rmsnorm_eda.weight"), Dtype::F16, &[m.r]);
            for i in [0, 2] {
                put(format!("{z}.router.router_mlp.{i}.weight"), Dtype::F16, &[m.r, m.r]);
                put(format!("{z}.router.router_mlp.{i}.bias"), Dtype::F16, &[m.r]);
            }
            put(
                format!("{z}.router.router_mlp.4.weight"),
                Dtype::F16,
                &[m.experts + 1, m.r],
            );
            put(format!("{z}.router.balancing_biases"), Dtype::F16, &[m.experts + 1]);
            if n > 1 {
                put(format!("{z}.router.router_states_scale"), Dtype::F16, &[m.r]);
            }
            for proj in ["gate_proj", "up_proj", "down_proj"] {
                let b = format!("{z}.experts.switch_mlp.{proj}");
                put(format!("{b}.tq_packed"), Dtype::U32, &[m.experts, h, h / 8]);
                put(format!("{b}.tq_norms"), Dtype::F16, &[m.experts, h]);
                put(format!("{b}.tq_bits"), Dtype::U8, &[1]);
            }
        }
    }
    k
}

/// The key-count formula of docs/bundle-format.md §1.3 (1965 for the real 80-half-layer model).
fn formula_key_count(layers: usize) -> usize {
    let attn = layers.div_ceil(2);
    let moe = layers / 2;
    25 * attn - usize::from(attn > 0) * 2 + 24 * moe - usize::from(moe > 0) + 3 + 1 + 4
}

/// dtype and shape of every tensor in the bundle's shards, read from the safetensors headers,
/// and the index's weight map.
/// Tensor name → (dtype, shape), and tensor name → shard file name.
type Headers = (BTreeMap<String, (Dtype, Vec<usize>)>, BTreeMap<String, String>);

fn bundle_headers(bundle: &Path) -> Headers {
    let index: Value =
        serde_json::from_str(&std::fs::read_to_string(bundle.join("model.safetensors.index.json")).unwrap()).unwrap();
    assert_eq!(index["metadata"]["format"], "jangtq", "index metadata.format");
    let weight_map: BTreeMap<String, String> = index["weight_map"]
        .as_object()
        .expect("index has a weight_map")
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
        .collect();
    let shards: BTreeSet<&String> = weight_map.values().collect();
    let mut found = BTreeMap::new();
    let mut total = 0u64;
    for shard in shards {
        let path = bundle.join(shard);
        assert!(
            shard.starts_with("model-") && shard.ends_with(".safetensors"),
            "shard name {shard}"
        );
        total += std::fs::metadata(&path).unwrap().len();
        let map = common::mmap(&path);
        let (_, meta) = safetensors::SafeTensors::read_metadata(&map).unwrap();
        assert!(
            meta.metadata().is_none(),
            "{shard}: the converter writes no __metadata__"
        );
        let st = safetensors::SafeTensors::deserialize(&map).unwrap();
        for (name, view) in st.tensors() {
            assert_eq!(weight_map.get(&name), Some(shard), "index entry of {name}");
            found.insert(name, (view.dtype(), view.shape().to_vec()));
        }
    }
    assert_eq!(
        index["metadata"]["total_size"].as_u64(),
        Some(total),
        "index metadata.total_size"
    );
    (found, weight_map)
}

fn check_bundle(fx: &Fixture) {
    let m = dims(&fx.config());
    for f in [
        "config.json",
        "jang_config.json",
        "model.safetensors.index.json",
        "jangtq_runtime.safetensors",
        "generation_config.json",
    ] {
        assert!(fx.bundle.join(f).is_file(), "{}: {f} missing", fx.name);
    }
    let (found, weight_map) = bundle_headers(&fx.bundle);
    assert_eq!(weight_map.len(), found.len(), "index lists exactly the shard tensors");
    let expected = expected_bundle_keys(&m);
    assert_eq!(
        found.len(),
        formula_key_count(m.layers),
        "{}: key count formula",
        fx.name
    );
    for (k, v) in &expected {
        assert_eq!(found.get(k), Some(v), "{}: tensor {k} (dtype, shape)", fx.name);
    }
    let extra: Vec<_> = found.keys().filter(|k| !expected.contains_key(*k)).collect();
    assert!(extra.is_empty(), "{}: unexpected tensors {extra:?}", fx.name);

    // tq_bits = 4; sidecar codebook / signs for in_features = hidden
    let shard = fx
        .bundle
        .join(&weight_map["model.layers.1.zaya_block.experts.switch_mlp.gate_proj.tq_bits"]);
    assert_eq!(
        read_tensor(&shard, "model.layers.1.zaya_block.experts.switch_mlp.gate_proj.tq_bits").data,
        vec![4.0]
    );
    let side = read_all(&fx.bundle.join("jangtq_runtime.safetensors"));
    let names: Vec<_> = side.keys().cloned().collect();
    assert_eq!(
        names,
        vec![format!("codebook.{}.4", m.h), format!("signs.{}.42", m.h)],
        "{}: sidecar keys",
        fx.name
    );
    let cb = &side[&format!("codebook.{}.4", m.h)];
    assert_eq!((cb.dtype, cb.shape.clone()), (Dtype::F32, vec![16]));
    assert!(
        cb.data.windows(2).all(|w| w[0] < w[1]),
        "codebook ascending: {:?}",
        cb.data
    );
    for k in 0..8 {
        assert!(
            (cb.data[15 - k] + cb.data[k]).abs() < 1e-7,
            "codebook symmetric at {k}: {:?}",
            cb.data
        );
    }
    let signs = &side[&format!("signs.{}.42", m.h)];
    assert_eq!((signs.dtype, signs.shape.clone()), (Dtype::F32, vec![m.h]));
    assert!(signs.data.iter().all(|&s| s == 1.0 || s == -1.0), "signs are ±1");

    // config.json / jang_config.json as documented, and our config parser reads them
    let cfg: Value = serde_json::from_str(&std::fs::read_to_string(fx.bundle.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["weight_format"], "mxtq");
    assert_eq!(cfg["quantization"]["group_size"].as_u64(), Some(m.group as u64));
    assert_eq!(cfg["quantization"]["bits"].as_u64(), Some(8));
    assert_eq!(cfg["mxtq_seed"].as_u64(), Some(42));
    let jang: Value =
        serde_json::from_str(&std::fs::read_to_string(fx.bundle.join("jang_config.json")).unwrap()).unwrap();
    assert_eq!(jang["profile"], "JANGTQ4");
    assert_eq!(jang["tq_in_features"].as_object().unwrap().len(), 3 * (m.layers / 2));
    let zc = zaya_mlx::config::ZayaConfig::from_dir(&fx.bundle).expect("ZayaConfig parses the fixture bundle");
    assert_eq!(
        (
            zc.hidden_size,
            zc.num_hidden_layers,
            zc.num_q_heads,
            zc.num_kv_heads,
            zc.head_dim
        ),
        (m.h, m.layers, m.hq, m.hk, m.d)
    );
    assert_eq!(
        (
            zc.num_experts,
            zc.expert_intermediate_size,
            zc.router_hidden_size,
            zc.vocab_size
        ),
        (m.experts, m.h, m.r, m.vocab)
    );
}

/// Names and shapes of the naming contract (tests/reference/README.md).
fn check_reference_names(fx: &Fixture, path: &Path) -> BTreeMap<String, Tensor> {
    let m = dims(&fx.config());
    let r = read_all(path);
    let mut want: BTreeMap<String, (Dtype, Vec<usize>)> = BTreeMap::new();
    want.insert("token_ids".into(), (Dtype::I32, vec![m.t]));
    want.insert("greedy_ids".into(), (Dtype::I32, vec![m.greedy]));
    want.insert("logits".into(), (Dtype::F32, vec![m.t, m.vocab]));
    for n in 0..m.layers {
        want.insert(format!("hidden.{n}"), (Dtype::F32, vec![m.t, m.h]));
        want.insert(format!("residual.{n}"), (Dtype::F32, vec![m.t, m.h]));
        if n % 2 == 1 {
            want.insert(format!("route.{n}"), (Dtype::I32, vec![m.t]));
        }
    }
    let got: BTreeMap<String, (Dtype, Vec<usize>)> =
        r.iter().map(|(k, t)| (k.clone(), (t.dtype, t.shape.clone()))).collect();
    assert_eq!(got, want, "{}: tensors of {}", fx.name, path.display());

    let ids = r["token_ids"].to_i64();
    assert_eq!(ids[0], 2, "token_ids start with BOS 2");
    assert!(ids
        .iter()
        .chain(r["greedy_ids"].to_i64().iter())
        .all(|&i| i >= 0 && (i as usize) < m.vocab));
    assert_eq!(
        ids,
        fx.meta()["token_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_i64().unwrap())
            .collect::<Vec<_>>()
    );
    for n in (1..m.layers).step_by(2) {
        assert!(r[&format!("route.{n}")]
            .to_i64()
            .iter()
            .all(|&e| e >= 0 && e as usize <= m.experts));
    }
    for (k, t) in &r {
        assert!(t.data.iter().all(|v| v.is_finite()), "{k} has non-finite values");
    }
    r
}

fn vector(bundle: &BTreeMap<String, Tensor>, name: &str) -> Vec<f64> {
    bundle
        .get(name)
        .unwrap_or_else(|| panic!("bundle has no {name}"))
        .data
        .clone()
}

/// Row `row` of the 8-bit affine embedding, dequantized in f64 (docs/bundle-format.md §2).
fn embed_row(b: &BTreeMap<String, Tensor>, row: usize, h: usize, g: usize) -> Vec<f64> {
    let w = &b["model.embed_tokens.weight"].data; // u32 words, 4 codes each, LSB first
    let (s, z) = (
        &b["model.embed_tokens.scales"].data,
        &b["model.embed_tokens.biases"].data,
    );
    (0..h)
        .map(|j| {
            let word = w[row * h / 4 + j / 4] as u32;
            let q = (word >> (8 * (j % 4))) & 0xff;
            s[row * h / g + j / g] * q as f64 + z[row * h / g + j / g]
        })
        .collect()
}

fn rms_norm(x: &[f64], w: &[f64], eps: f64) -> Vec<f64> {
    let ms = x.iter().map(|v| v * v).sum::<f64>() / x.len() as f64;
    let inv = 1.0 / (ms + eps).sqrt();
    x.iter().zip(w).map(|(v, w)| v * inv * w).collect()
}

fn close(name: &str, got: f64, want: f64, tol: f64) {
    assert!(
        (got - want).abs() <= tol,
        "{name}: reference {got} vs f64 formula {want} (tol {tol})"
    );
}

/// The residual-merge / final-norm / tied-head formulas (docs/model.md §2.2–2.5) hold
/// between the reference's tensors, computed in f64 from the bundle's own f16/8-bit tensors.
fn check_reference_semantics(fx: &Fixture, r: &BTreeMap<String, Tensor>) {
    let m = dims(&fx.config());
    let b = read_all(&fx.bundle.join("model-00001-of-00001.safetensors"));
    let (h, t) = (m.h, m.t);
    let ids = r["token_ids"].to_i64();
    let eps = 1e-5;
    // residual.0 = (E[id] + b_h) * s_h
    let (s0, b0) = (
        vector(&b, "model.layers.0.res_scale.hidden_states_scale"),
        vector(&b, "model.layers.0.res_scale.hidden_states_bias"),
    );
    for (ti, &id) in ids.iter().enumerate() {
        let e = embed_row(&b, id as usize, h, m.group);
        for j in 0..h {
            close(
                "residual.0",
                r["residual.0"].data[ti * h + j],
                (e[j] + b0[j]) * s0[j],
                1e-5,
            );
        }
    }
    // residual.n = (R_{n-1} + b_r) * s_r + (h_{n-1} + b_h) * s_h, and the same with model.res_scale
    let merge = |prefix: &str, rin: &[f64], hin: &[f64]| -> Vec<f64> {
        let v = |s: &str| vector(&b, &format!("{prefix}res_scale.{s}"));
        let (sh, bh, sr, br) = (
            v("hidden_states_scale"),
            v("hidden_states_bias"),
            v("residual_scale"),
            v("residual_bias"),
        );
        (0..rin.len())
            .map(|i| (rin[i] + br[i % h]) * sr[i % h] + (hin[i] + bh[i % h]) * sh[i % h])
            .collect()
    };
    for n in 1..m.layers {
        let want = merge(
            &format!("model.layers.{n}."),
            &r[&format!("residual.{}", n - 1)].data,
            &r[&format!("hidden.{}", n - 1)].data,
        );
        for (i, (&g, &w)) in r[&format!("residual.{n}")].data.iter().zip(&want).enumerate() {
            close(&format!("residual.{n}[{i}]"), g, w, 1e-5 * (1.0 + w.abs()));
        }
    }
    // logits = RMSNorm(final merge) * w_final · Eᵀ (tied, dequantized embedding)
    let last = m.layers - 1;
    let fin = merge(
        "model.",
        &r[&format!("residual.{last}")].data,
        &r[&format!("hidden.{last}")].data,
    );
    let wf = vector(&b, "model.final_norm.weight");
    let table: Vec<Vec<f64>> = (0..m.vocab).map(|v| embed_row(&b, v, h, m.group)).collect();
    let logits = &r["logits"].data;
    let scale = logits.iter().fold(0f64, |a, v| a.max(v.abs()));
    for ti in 0..t {
        let y = rms_norm(&fin[ti * h..(ti + 1) * h], &wf, eps);
        for (v, row) in table.iter().enumerate() {
            let want: f64 = y.iter().zip(row).map(|(a, b)| a * b).sum();
            close(
                &format!("logits[{ti},{v}]"),
                logits[ti * m.vocab + v],
                want,
                2e-5 * scale,
            );
        }
    }
}

/// For tokens on the skip route of MoE layer n, hidden.n is the normed input x_n scaled by the
/// route probability (the identity-scaled MOD semantics of the reference, docs/model.md §4.4).
fn check_skip_outputs(fx: &Fixture, r: &BTreeMap<String, Tensor>, n: usize) -> usize {
    let m = dims(&fx.config());
    let b = read_all(&fx.bundle.join("model-00001-of-00001.safetensors"));
    let w = vector(&b, &format!("model.layers.{n}.input_norm.weight"));
    let route = r[&format!("route.{n}")].to_i64();
    let mut skipped = 0;
    for (ti, &e) in route.iter().enumerate() {
        if e as usize != m.experts {
            continue;
        }
        skipped += 1;
        let x = rms_norm(&r[&format!("residual.{n}")].data[ti * m.h..(ti + 1) * m.h], &w, 1e-5);
        let y = &r[&format!("hidden.{n}")].data[ti * m.h..(ti + 1) * m.h];
        let p = y.iter().zip(&x).map(|(a, b)| a * b).sum::<f64>() / x.iter().map(|v| v * v).sum::<f64>();
        assert!(p > 0.0 && p <= 1.0, "skip token {ti}: scale {p} is not a probability");
        for j in 0..m.h {
            close(&format!("hidden.{n}[{ti},{j}] = p·x"), y[j], p * x[j], 1e-5);
        }
    }
    skipped
}

fn check_meta(fx: &Fixture) {
    let meta = fx.meta();
    let m = dims(&fx.config());
    let f32v = &meta["variants"]["f32"];
    assert_eq!(f32v["layerwise_vs_library_forward_max_abs"].as_f64(), Some(0.0));
    assert!(f32v["stepwise_cached_vs_oneshot_rel"].as_f64().unwrap() <= 5e-4);
    assert_eq!(f32v["greedy_recheck_agree"].as_u64(), Some(m.greedy as u64));
    let sv = &meta["source_vs_bundle_f32"];
    // 4-bit experts: the bundle's logits stay near the float source's (docs/bundle-format.md §5.2)
    assert!(
        sv["max_abs_diff"].as_f64().unwrap() < 0.5 * sv["max_abs_logit"].as_f64().unwrap(),
        "{sv}"
    );
    assert!(2 * sv["argmax_agree"].as_u64().unwrap() >= m.t as u64, "{sv}");
    // 4-bit TurboQuant of Gaussian rows: relative RMS error ≈ 0.1 (docs/bundle-format.md §3.5)
    let e = meta["expert_dequant_max_rel_rms_error"].as_f64().unwrap();
    assert!((0.05..0.15).contains(&e), "expert dequantization error {e}");
}

#[test]
fn tiny_fixture_bundle_and_reference() {
    let fx = fixture("tiny");
    check_bundle(&fx);
    assert_eq!(formula_key_count(4), 103);
    assert_eq!(formula_key_count(80), 1965);
    let r = check_reference_names(&fx, &fx.reference);
    check_reference_semantics(&fx, &r);
    check_meta(&fx);
    let bf = fx.reference_bf16().expect("tiny lists the bf16 variant");
    check_reference_names(&fx, &bf);
}

#[test]
fn skip_fixture_routes_some_tokens_to_the_skip_route() {
    let fx = fixture("skip");
    check_bundle(&fx);
    let r = check_reference_names(&fx, &fx.reference);
    check_reference_semantics(&fx, &r);
    check_meta(&fx);
    let t = dims(&fx.config()).t;
    let skipped1 = check_skip_outputs(&fx, &r, 1);
    assert!(
        skipped1 > 0 && skipped1 < t,
        "layer 1: {skipped1} of {t} tokens on the skip route"
    );
    assert_eq!(check_skip_outputs(&fx, &r, 3), 0, "layer 3 keeps the normal skip bias");
    // the bias is in the bundle, as written in the source
    let b = read_all(&fx.bundle.join("model-00001-of-00001.safetensors"));
    assert_eq!(vector(&b, "model.layers.1.zaya_block.router.balancing_biases")[4], 0.0);
    assert_eq!(vector(&b, "model.layers.3.zaya_block.router.balancing_biases")[4], -1.0);
}

#[test]
fn wide_fixture_bundle_and_reference() {
    let fx = fixture("wide");
    check_bundle(&fx);
    let r = check_reference_names(&fx, &fx.reference);
    check_reference_semantics(&fx, &r);
    check_meta(&fx);
}

/// `real` takes about 1.5 min and 1 GB of disk to generate: run with `--ignored`.
#[test]
#[ignore]
fn real_fixture_bundle_and_reference() {
    let fx = fixture("real");
    check_bundle(&fx);
    check_reference_names(&fx, &fx.reference);
    check_meta(&fx);
}

#[test]
fn concurrent_requests_generate_a_fixture_once() {
    let base = tempfile::tempdir().unwrap();
    let roots: Vec<_> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..3)
            .map(|_| s.spawn(|| fixture_in(base.path(), "tiny").root))
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(roots.iter().all(|r| r == &roots[0] && r.join("meta.json").is_file()));
    let left: Vec<_> = std::fs::read_dir(base.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left.len(), 1, "no lock or temp dir left behind: {left:?}");
    // the same generator and seed give byte-identical outputs (except timings.json)
    let cached = fixture("tiny");
    for f in [
        "reference.safetensors",
        "reference_bf16.safetensors",
        "meta.json",
        "bundle/model-00001-of-00001.safetensors",
        "source/model-00001-of-00001.safetensors",
    ] {
        assert_eq!(
            std::fs::read(roots[0].join(f)).unwrap(),
            std::fs::read(cached.root.join(f)).unwrap(),
            "{f} differs between two generations"
        );
    }
}

#[test]
fn missing_venv_names_the_setup_script() {
    let msg = common::venv_python(Path::new("/nonexistent/venv")).unwrap_err();
    assert!(
        msg.contains("scripts/setup-python-ref.sh") && !msg.contains('\n'),
        "{msg}"
    );
}

#[test]
#[should_panic(expected = "unknown fixture `nope`")]
fn unknown_fixture_name_panics_with_the_known_names() {
    fixture("nope");
}

/// A check of the side-by-side tool, not parity evidence: decode_stream.py (the Python side of
/// scripts/side_by_side.py) must give the same greedy ids as the fixture, which the same reference
/// model produced through make_fixture.py.
#[test]
fn decode_stream_cli_matches_the_fixture_greedy_ids() {
    let fx = fixture("tiny");
    let r = read_all(&fx.reference);
    let ids: Vec<String> = r["token_ids"].to_i64().iter().map(|i| i.to_string()).collect();
    let greedy = r["greedy_ids"].to_i64();
    let script = common::reference_dir().join("decode_stream.py");
    let bundle = fx.bundle.to_str().unwrap();
    let n = greedy.len().to_string();
    let out = common::run_python(&script, &[bundle, "--ids", &ids.join(","), "--max-new", &n]);
    let v: Value = serde_json::from_slice(&out.stdout).expect("decode_stream prints one JSON object");
    let got: Vec<i64> = v["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_i64().unwrap())
        .collect();
    assert_eq!(got, greedy);
}
