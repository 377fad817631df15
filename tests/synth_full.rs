//! Synthetic bundles at the real ZAYA1-8B widths: the `small` preset (real per-layer dims,
//! 4 half-layers, ≈0.3 GB) checked against the format and its own float weights, and the full
//! `zaya1-8b` preset (≈4.65 GiB, `#[ignore]`: about a minute or two on 2 cores) checked for the
//! published key count and size, with the writer's peak RSS.

use std::path::Path;

use half::f16;
use safetensors::SafeTensors;
use zaya_mlx::tools::encode::{affine_dequantize, AffineEncoded, TqEncoder};
use zaya_mlx::tools::synth::{self, plan, SynthOptions, SynthSpec};

fn vm_hwm_kib() -> u64 {
    zaya_mlx::runtime::memory::process_rss().map_or(0, |(_, peak)| peak / 1024)
}

fn map(path: &Path) -> memmap2::Mmap {
    let f = std::fs::File::open(path).unwrap();
    // SAFETY: the file is not modified while mapped (test-local temp dir).
    unsafe { memmap2::Mmap::map(&f).unwrap() }
}

fn u32s(b: &[u8]) -> Vec<u32> {
    b.chunks_exact(4)
        .map(|c| u32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}
fn f16s(b: &[u8]) -> Vec<f16> {
    b.chunks_exact(2)
        .map(|c| f16::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

#[test]
fn small_preset_has_real_widths_and_encodes_its_float_weights() {
    let dir = tempfile::tempdir().unwrap();
    let spec = SynthSpec {
        seed: 2,
        ..SynthSpec::preset("small").unwrap()
    };
    let rep = synth::write_bundle(&spec, dir.path(), &SynthOptions::default()).unwrap();
    eprintln!(
        "small: {} bytes in {:.1} s on {} threads",
        rep.total_size, rep.seconds, rep.threads
    );
    assert_eq!(rep.tensor_count, plan::expected_key_count(4));
    assert_eq!(rep.tensor_count, 103);
    let mmaps: Vec<memmap2::Mmap> = rep.shards.iter().map(|s| map(&dir.path().join(s))).collect();
    let sts: Vec<SafeTensors> = mmaps.iter().map(|m| SafeTensors::deserialize(m).unwrap()).collect();
    let get = |k: &str| {
        sts.iter()
            .find_map(|st| st.tensor(k).ok())
            .unwrap_or_else(|| panic!("{k}"))
    };

    let base = "model.layers.3.zaya_block.experts.switch_mlp.down_proj";
    let packed = get(&format!("{base}.tq_packed"));
    assert_eq!(packed.shape(), &[16, 2048, 256]);
    assert_eq!(get(&format!("{base}.tq_norms")).shape(), &[16, 2048]);
    assert_eq!(get("model.embed_tokens.weight").shape(), &[32768, 512]);
    assert_eq!(get("model.embed_tokens.scales").shape(), &[32768, 64]);
    assert_eq!(
        get("model.layers.0.self_attn.qkv.linear_q.weight").shape(),
        &[1024, 512]
    );
    assert_eq!(get("model.layers.2.self_attn.o_proj.weight").shape(), &[2048, 256]);
    assert_eq!(
        get("model.layers.2.self_attn.qkv.conv_qk.1.weight").shape(),
        &[1280, 128, 2]
    );
    assert_eq!(
        get("model.layers.3.zaya_block.router.router_mlp.4.weight").shape(),
        &[17, 256]
    );

    // experts: rows decode to the float weights with the documented 4-bit error (≈0.099)
    let (shape, w) = synth::float_weights(&spec, &format!("{base}.weight")).unwrap();
    assert_eq!(shape, vec![16, 2048, 2048]);
    let enc = TqEncoder::new(2048, 4, 42).unwrap();
    let p = u32s(packed.data());
    let n = f16s(get(&format!("{base}.tq_norms")).data());
    let (mut num, mut den) = (0f64, 0f64);
    let mut back = vec![0f32; 2048];
    for (e, r) in [(0usize, 0usize), (5, 77), (15, 2047), (9, 1000)]
        .iter()
        .flat_map(|&(e, r)| (0..16).map(move |k| (e, (r + k * 61) % 2048)))
    {
        let row = e * 2048 + r;
        enc.dequantize_row(&p[row * 256..(row + 1) * 256], n[row].to_f32(), &mut back);
        for (a, b) in w[row * 2048..(row + 1) * 2048].iter().zip(&back) {
            num += ((a - b) as f64).powi(2);
            den += (*a as f64).powi(2);
        }
    }
    let rel = (num / den).sqrt();
    assert!((0.094..0.104).contains(&rel), "expert relative RMSE {rel}");

    // embeddings: 8-bit affine rows decode to the float rows (relative RMSE ≈ 0.005)
    let (_, e) = synth::float_weights(&spec, "model.embed_tokens.weight").unwrap();
    let rows = [0usize, 1, 106, 20000, 32767];
    let (wq, sc, bi) = (
        u32s(get("model.embed_tokens.weight").data()),
        f16s(get("model.embed_tokens.scales").data()),
        f16s(get("model.embed_tokens.biases").data()),
    );
    let (mut num, mut den) = (0f64, 0f64);
    for &r in &rows {
        let a = AffineEncoded {
            weight: wq[r * 512..(r + 1) * 512].to_vec(),
            scales: sc[r * 64..(r + 1) * 64].to_vec(),
            biases: bi[r * 64..(r + 1) * 64].to_vec(),
        };
        let d = affine_dequantize(&a, 1, 2048, 8, 32).unwrap();
        for (x, y) in e[r * 2048..(r + 1) * 2048].iter().zip(&d) {
            num += ((x - y) as f64).powi(2);
            den += (*x as f64).powi(2);
        }
    }
    let rel = (num / den).sqrt();
    assert!(rel < 0.007, "embedding relative RMSE {rel}");
}

#[test]
#[ignore = "writes 4.65 GiB; about 1-3 minutes on 2 cores"]
fn zaya1_8b_full_size_bundle() {
    let dir = tempfile::tempdir().unwrap();
    let spec = SynthSpec::preset("zaya1-8b").unwrap();
    let rep = synth::write_bundle(
        &spec,
        dir.path(),
        &SynthOptions {
            progress: true,
            ..Default::default()
        },
    )
    .unwrap();
    let hwm = vm_hwm_kib();
    let gib = rep.total_size as f64 / (1u64 << 30) as f64;
    eprintln!(
        "zaya1-8b: {} keys, {} shards, {} bytes = {gib:.3} GiB in {:.1} s on {} threads, peak RSS {:.1} MiB",
        rep.tensor_count,
        rep.shards.len(),
        rep.total_size,
        rep.seconds,
        rep.threads,
        hwm as f64 / 1024.0
    );
    assert_eq!(rep.tensor_count, 1965);
    assert!((gib - 4.65).abs() / 4.65 < 0.02, "{gib} GiB");
    assert!(hwm < 3 * 1024 * 1024, "peak RSS {hwm} KiB");
    let mut keys = 0;
    for s in &rep.shards {
        let m = map(&dir.path().join(s));
        assert!(m.len() < 1_300_000_000, "{s}: {} bytes", m.len());
        keys += SafeTensors::deserialize(&m).unwrap().len();
    }
    assert_eq!(keys, 1965);
    let idx: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("model.safetensors.index.json")).unwrap())
            .unwrap();
    assert_eq!(idx["weight_map"].as_object().unwrap().len(), 1965);
    assert_eq!(idx["metadata"]["total_size"].as_u64().unwrap(), rep.total_size);
}
