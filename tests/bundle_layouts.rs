//! One float source written in every supported layout loads into the same canonical weight set:
//! legacy stacked (`switch_mlp`), MLX-LM stacked names (no `switch_mlp`), the Zyphra per-expert layout
//! (`local_experts.{e}.linear_fc1/fc2`) and the upstream 40-block layout (fused `gate_up_proj`,
//! renamed modules, an index over two shards). Also the float source of the jang fixture.
mod bundle_fixture;

use std::collections::BTreeMap;

use bundle_fixture::*;
use mlx_rs::Array;
use zaya_mlx::bundle::{Bundle, Layout};
use zaya_mlx::quant::WeightFormat;

fn values(a: &Array) -> (Vec<usize>, Vec<f32>) {
    assert_eq!(a.dtype(), mlx_rs::Dtype::Float32);
    (
        a.shape().iter().map(|&d| d as usize).collect(),
        a.as_slice::<f32>().to_vec(),
    )
}

/// The canonical form of the model, computed here: conv weights moved to MLX layout.
fn expected(m: &FloatModel) -> BTreeMap<String, T> {
    m.tensors
        .iter()
        .map(|(n, t)| {
            if n.contains(".conv_qk.") && n.ends_with(".weight") {
                let (o, a, k) = (t.shape[0], t.shape[1], t.shape[2]);
                let mut d = vec![0f32; t.data.len()];
                for i in 0..o {
                    for j in 0..a {
                        for x in 0..k {
                            d[(i * k + x) * a + j] = t.data[(i * a + j) * k + x];
                        }
                    }
                }
                (
                    n.clone(),
                    T {
                        shape: vec![o, k, a],
                        data: d,
                    },
                )
            } else {
                (n.clone(), t.clone())
            }
        })
        .collect()
}

fn check(b: &Bundle, want: &BTreeMap<String, T>) {
    let got: Vec<&String> = b.weights.tensors.keys().collect();
    let exp: Vec<&String> = want.keys().collect();
    assert_eq!(got, exp, "canonical key set of the {:?} layout", b.layout);
    for (n, t) in want {
        let (shape, data) = values(&b.weights.tensors[n]);
        assert_eq!(shape, t.shape, "{n} ({:?})", b.layout);
        assert!(data == t.data, "{n}: values differ in the {:?} layout", b.layout);
    }
    assert!(b.weights.formats.values().all(|f| *f == WeightFormat::Float));
    assert!(b.weights.tq_runtime.is_empty());
}

#[test]
fn all_layouts_give_the_same_canonical_set() {
    let m = random_model(&tiny_config(), 11);
    let want = expected(&m);
    let t = tempfile::tempdir().unwrap();

    let stacked = t.path().join("stacked");
    write_stacked(&m, &stacked);
    let b = Bundle::open(&stacked).unwrap();
    assert_eq!(b.layout, Layout::LegacyStacked);
    check(&b, &want);
    // conv weights are copied (transposed), everything else aliases the file
    assert_eq!(b.report.copied_tensors, 4);

    let per_expert = t.path().join("per_expert");
    write_per_expert(&m, &per_expert);
    let b = Bundle::open(&per_expert).unwrap();
    assert_eq!(b.layout, Layout::LegacyPerExpert);
    check(&b, &want);

    let upstream = t.path().join("upstream");
    write_upstream(&m, &upstream);
    let b = Bundle::open(&upstream).unwrap();
    assert_eq!(b.layout, Layout::Upstream);
    check(&b, &want);

    // MLX-LM's stacked names without `switch_mlp`, and an untied lm_head kept as `lm_head`
    let mlx_lm = t.path().join("mlx_lm");
    let mut m2 = FloatModel {
        cfg: m.cfg.clone(),
        tensors: BTreeMap::new(),
    };
    for (n, v) in &m.tensors {
        m2.tensors.insert(n.replace(".switch_mlp.", "."), v.clone());
    }
    m2.cfg["tie_word_embeddings"] = false.into();
    let lm = T {
        shape: vec![256, 64],
        data: (0..256 * 64).map(|i| i as f32 * 1e-3).collect(),
    };
    m2.tensors.insert("lm_head.weight".into(), lm.clone());
    write_stacked(&m2, &mlx_lm);
    let b = Bundle::open(&mlx_lm).unwrap();
    let mut want2 = want.clone();
    want2.insert("lm_head.weight".into(), lm);
    check(&b, &want2);
    assert_eq!(
        b.summary.params.total,
        Bundle::open(&stacked).unwrap().summary.params.total + 256 * 64
    );
}

#[test]
fn tied_lm_head_is_dropped() {
    let mut m = random_model(&tiny_config(), 12);
    let want = expected(&m);
    m.tensors
        .insert("lm_head.weight".into(), m.tensors["model.embed_tokens.weight"].clone());
    let t = tempfile::tempdir().unwrap();
    write_stacked(&m, t.path());
    let b = Bundle::open(t.path()).unwrap();
    check(&b, &want);
    assert_eq!(b.report.dropped, vec!["lm_head.weight".to_string()]);
}

#[test]
fn upstream_older_revision_names() {
    // The first transformers converter revision kept `zaya_block.*`, `input_norm`, `qkv_proj.linear_q`,
    // `self_attn.temp`, `post_attention_norm`, `post_attention_res_scale`, `post_mlp_res_scale`.
    let m = random_model(&tiny_config(), 13);
    let want = expected(&m);
    let t = tempfile::tempdir().unwrap();
    write_upstream(&m, t.path());
    let shard = t.path().join("model-00001-of-00002.safetensors");
    let experts = t.path().join("model-00002-of-00002.safetensors");
    let rename = |n: &str| -> String {
        n.replace("input_layernorm.", "input_norm.")
            .replace("qkv_proj.q_proj.", "qkv_proj.linear_q.")
            .replace("qkv_proj.k_proj.", "qkv_proj.linear_k.")
            .replace("qkv_proj.v_proj_current.", "qkv_proj.val_proj1.")
            .replace("qkv_proj.v_proj_delayed.", "qkv_proj.val_proj2.")
            .replace("self_attn.qk_norm.temp", "self_attn.temp")
            .replace("post_attention_layernorm.", "post_attention_norm.")
            .replace("post_attention_residual_scale.", "post_attention_res_scale.")
            .replace("post_mlp_residual_scale.", "post_mlp_res_scale.")
            .replace("mlp.gate.router_mlp.norm.", "zaya_block.router.rmsnorm_eda.")
            .replace("mlp.gate.", "zaya_block.router.")
            .replace("mlp.experts.", "zaya_block.experts.")
    };
    let mut wm = serde_json::Map::new();
    for (f, p) in [
        ("model-00001-of-00002.safetensors", &shard),
        ("model-00002-of-00002.safetensors", &experts),
    ] {
        let renamed: BTreeMap<String, Stored> = read_safetensors(p).into_iter().map(|(n, s)| (rename(&n), s)).collect();
        for k in renamed.keys() {
            wm.insert(k.clone(), serde_json::json!(f));
        }
        write_safetensors(p, &renamed);
    }
    std::fs::write(
        t.path().join("model.safetensors.index.json"),
        serde_json::json!({ "weight_map": wm }).to_string(),
    )
    .unwrap();
    let b = Bundle::open(t.path()).unwrap();
    assert_eq!(b.layout, Layout::Upstream);
    check(&b, &want);
}

#[test]
fn jang_fixture_source_loads_as_per_expert() {
    // the float source the JANGTQ4 fixture was converted from (Zyphra per-expert layout)
    let (src, _) = jang_tiny();
    let b = Bundle::open(src).unwrap();
    assert_eq!(b.layout, Layout::LegacyPerExpert);
    check(&b, &expected(&random_model(&tiny_config(), SEED)));
}
