//! Peak memory of loading a full-size bundle: a random bundle with exactly the tensor inventory of
//! OsaurusAI/ZAYA1-8B-JANGTQ4 (docs/bundle-format.md §1.3: 1965 keys, ≈4.6 GiB, shards ≤ 1e9 bytes) is
//! written by a streaming writer, opened, and every tensor is read by MLX (a reduction over each);
//! the process's peak RSS must stay ≤ 1.15 × the bundle size (the arrays alias the mapped files).
//!
//! Ignored by default (it writes ≈5 GB to a temp dir): `cargo test --release --test bundle_memory --
//! --ignored --nocapture`.
use std::io::Write;
use std::path::Path;

use serde_json::json;
use zaya_mlx::bundle::Bundle;

struct Spec {
    name: String,
    dtype: &'static str,
    shape: Vec<usize>,
}

fn item(dtype: &str) -> usize {
    match dtype {
        "U8" => 1,
        "F16" => 2,
        _ => 4,
    }
}

impl Spec {
    fn bytes(&self) -> usize {
        self.shape.iter().product::<usize>() * item(self.dtype)
    }
}

/// The JANGTQ4 inventory of docs/bundle-format.md §1.3 for ZAYA1-8B (group size 32).
fn inventory() -> Vec<Spec> {
    let (h, v, g) = (2048usize, 262272usize, 32usize);
    let mut t = Vec::new();
    let mut s = |name: String, dtype: &'static str, shape: Vec<usize>| t.push(Spec { name, dtype, shape });
    let affine = |s: &mut dyn FnMut(String, &'static str, Vec<usize>), base: String, out: usize, inp: usize| {
        s(format!("{base}.weight"), "U32", vec![out, inp / 4]);
        s(format!("{base}.scales"), "F16", vec![out, inp / g]);
        s(format!("{base}.biases"), "F16", vec![out, inp / g]);
    };
    affine(&mut s, "model.embed_tokens".into(), v, h);
    s("model.final_norm.weight".into(), "F16", vec![h]);
    for x in [
        "hidden_states_scale",
        "hidden_states_bias",
        "residual_scale",
        "residual_bias",
    ] {
        s(format!("model.res_scale.{x}"), "F16", vec![h]);
    }
    for n in 0..80 {
        let p = format!("model.layers.{n}");
        s(format!("{p}.input_norm.weight"), "F16", vec![h]);
        for x in ["hidden_states_scale", "hidden_states_bias"] {
            s(format!("{p}.res_scale.{x}"), "F16", vec![h]);
        }
        if n > 0 {
            for x in ["residual_scale", "residual_bias"] {
                s(format!("{p}.res_scale.{x}"), "F16", vec![h]);
            }
        }
        if n % 2 == 0 {
            let a = format!("{p}.self_attn");
            for (m, out) in [
                ("linear_q", 1024),
                ("linear_k", 256),
                ("val_proj1", 128),
                ("val_proj2", 128),
            ] {
                affine(&mut s, format!("{a}.qkv.{m}"), out, h);
            }
            affine(&mut s, format!("{a}.o_proj"), h, 1024);
            s(format!("{a}.qkv.conv_qk.0.weight"), "F16", vec![1280, 1, 2]);
            s(format!("{a}.qkv.conv_qk.0.bias"), "F16", vec![1280]);
            s(format!("{a}.qkv.conv_qk.1.weight"), "F16", vec![1280, 128, 2]);
            s(format!("{a}.qkv.conv_qk.1.bias"), "F16", vec![1280]);
            s(format!("{a}.qkv.temp"), "F16", vec![2]);
        } else {
            let r = format!("{p}.zaya_block.router");
            s(format!("{r}.down_proj.weight"), "F16", vec![256, h]);
            s(format!("{r}.down_proj.bias"), "F16", vec![256]);
            s(format!("{r}.rmsnorm_eda.weight"), "F16", vec![256]);
            for m in [0, 2] {
                s(format!("{r}.router_mlp.{m}.weight"), "F16", vec![256, 256]);
                s(format!("{r}.router_mlp.{m}.bias"), "F16", vec![256]);
            }
            s(format!("{r}.router_mlp.4.weight"), "F16", vec![17, 256]);
            s(format!("{r}.balancing_biases"), "F16", vec![17]);
            if n != 1 {
                s(format!("{r}.router_states_scale"), "F16", vec![256]);
            }
        }
    }
    // experts last, layer by layer (the converter's order)
    for n in (1..80).step_by(2) {
        for p in ["gate_proj", "up_proj", "down_proj"] {
            let b = format!("model.layers.{n}.zaya_block.experts.switch_mlp.{p}");
            s(format!("{b}.tq_packed"), "U32", vec![16, 2048, 256]);
            s(format!("{b}.tq_norms"), "F16", vec![16, 2048]);
            s(format!("{b}.tq_bits"), "U8", vec![1]);
        }
    }
    t
}

/// Writes one safetensors file streaming pseudo-random data (tq_bits = 4, f16 values finite).
fn write_streaming(path: &Path, specs: &[&Spec], seed: u64) {
    // safetensors order: by dtype alignment (descending), then name
    let mut order: Vec<&&Spec> = specs.iter().collect();
    order.sort_by(|a, b| item(b.dtype).cmp(&item(a.dtype)).then(a.name.cmp(&b.name)));
    let mut header = serde_json::Map::new();
    let mut off = 0usize;
    for s in &order {
        header.insert(
            s.name.clone(),
            json!({"dtype": s.dtype, "shape": s.shape, "data_offsets": [off, off + s.bytes()]}),
        );
        off += s.bytes();
    }
    let mut h = serde_json::to_vec(&header).unwrap();
    while !(8 + h.len()).is_multiple_of(8) {
        h.push(b' ');
    }
    let mut f = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(path).unwrap());
    f.write_all(&(h.len() as u64).to_le_bytes()).unwrap();
    f.write_all(&h).unwrap();
    let mut x = seed | 1;
    let mut buf = vec![0u8; 1 << 20];
    for s in order {
        let mut left = s.bytes();
        if s.name.ends_with(".tq_bits") {
            f.write_all(&[4]).unwrap();
            continue;
        }
        while left > 0 {
            let n = left.min(buf.len());
            for c in buf[..n].chunks_mut(8) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let b = x.to_le_bytes();
                c.copy_from_slice(&b[..c.len()]);
            }
            if s.dtype == "F16" {
                for c in buf[..n].chunks_mut(2) {
                    c[1] &= 0x3b; // exponent < 15: finite values below 1
                }
            }
            f.write_all(&buf[..n]).unwrap();
            left -= n;
        }
    }
    f.flush().unwrap();
}

fn write_bundle(dir: &Path) -> u64 {
    let specs = inventory();
    assert_eq!(specs.len(), 1965);
    // shards of at most 1e9 bytes, in inventory order
    let mut shards: Vec<Vec<&Spec>> = vec![vec![]];
    let mut acc = 0usize;
    for s in &specs {
        if acc + s.bytes() > 1_000_000_000 && !shards.last().unwrap().is_empty() {
            shards.push(vec![]);
            acc = 0;
        }
        acc += s.bytes();
        shards.last_mut().unwrap().push(s);
    }
    let n = shards.len();
    let mut wm = serde_json::Map::new();
    for (i, sh) in shards.iter().enumerate() {
        let file = format!("model-{:05}-of-{n:05}.safetensors", i + 1);
        write_streaming(&dir.join(&file), sh, 0x9e3779b97f4a7c15 ^ i as u64);
        for s in sh {
            wm.insert(s.name.clone(), json!(file));
        }
    }
    std::fs::write(
        dir.join("model.safetensors.index.json"),
        json!({"metadata": {"format": "jangtq"}, "weight_map": wm}).to_string(),
    )
    .unwrap();
    let cfg = json!({
        "model_type": "zaya", "hidden_size": 2048, "num_hidden_layers": 80, "num_attention_heads": 8,
        "num_key_value_heads": 2, "num_query_groups": 2, "head_dim": 128, "kv_channels": 128,
        "partial_rotary_factor": 0.5, "rope_theta": 5000000, "rope_scaling": false,
        "max_position_embeddings": 131072, "num_experts": 16, "moe_router_topk": 1, "ffn_hidden_size": 4096,
        "zaya_mlp_expansion": 256, "zaya_use_mod": true, "zaya_use_eda": true, "norm_epsilon": 1e-5,
        "vocab_size": 262272, "bos_token_id": 2, "eos_token_id": 106, "pad_token_id": 0,
        "tie_word_embeddings": true, "weight_format": "mxtq", "mxtq_seed": 42,
        "quantization": {"bits": 8, "group_size": 32, "mode": "affine", "routed_expert_bits": 4}
    });
    std::fs::write(dir.join("config.json"), cfg.to_string()).unwrap();
    let sidecar = [
        Spec {
            name: "codebook.2048.4".into(),
            dtype: "F32",
            shape: vec![16],
        },
        Spec {
            name: "signs.2048.42".into(),
            dtype: "F32",
            shape: vec![2048],
        },
    ];
    write_streaming(
        &dir.join("jangtq_runtime.safetensors"),
        &sidecar.iter().collect::<Vec<_>>(),
        5,
    );
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .map(|p| std::fs::metadata(p).unwrap().len())
        .sum()
}

fn status_kib(field: &str) -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    s.lines()
        .find_map(|l| {
            l.strip_prefix(field)
                .map(|r| r.trim().trim_end_matches(" kB").trim().parse().unwrap())
        })
        .unwrap()
}

#[test]
#[ignore = "writes a ≈5 GB bundle; run explicitly"]
fn full_size_bundle_peak_rss() {
    let tmp = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let t0 = std::time::Instant::now();
    let bytes = write_bundle(tmp.path());
    eprintln!(
        "wrote {:.2} GiB in {:.1?}",
        bytes as f64 / (1u64 << 30) as f64,
        t0.elapsed()
    );
    // forget the writer's peak: reset VmHWM (Linux ≥ 4.0)
    std::fs::write("/proc/self/clear_refs", "5").expect("cannot reset the peak RSS");
    let base = status_kib("VmRSS:");
    let t1 = std::time::Instant::now();
    let b = Bundle::open(tmp.path()).unwrap();
    let open = t1.elapsed();
    assert_eq!(b.summary.stored_tensors, 1965);
    eprintln!("{}", b.summary.to_text());
    assert_eq!(
        b.report.copied_tensors, 80,
        "only the 2×40 transposed conv weights are copied"
    );
    // read every byte through MLX
    let t2 = std::time::Instant::now();
    for a in b.weights.tensors.values() {
        let s = mlx_rs::ops::max(a, None).unwrap();
        s.eval().unwrap();
    }
    let touch = t2.elapsed();
    let peak = status_kib("VmHWM:") * 1024;
    let base = base * 1024;
    eprintln!(
        "open {open:.1?}, read all {touch:.1?}; peak RSS {:.2} GiB (baseline {:.2} GiB) for a {:.2} GiB bundle: {:.3}×",
        peak as f64 / (1u64 << 30) as f64,
        base as f64 / (1u64 << 30) as f64,
        bytes as f64 / (1u64 << 30) as f64,
        peak as f64 / bytes as f64
    );
    assert!(peak as f64 <= 1.15 * bytes as f64, "peak RSS {peak} > 1.15 × {bytes}");
}
