//! Test support for the model tests: builds the small random models of
//! `tests/model_ref/make_model_ref.py` (every weight format, reference outputs from
//! jang_tools.zaya.model in float32), caches them under `target/model-ref/`, and loads them into a
//! `CanonicalWeights` without the bundle loader.
#![allow(dead_code)]
#[path = "../common/venv.rs"]
mod venv;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;
pub use venv::{python, repo_root as repo};

use mlx_rs::{Array, Dtype};
use zaya_mlx::bundle::CanonicalWeights;
use zaya_mlx::config::ZayaConfig;
use zaya_mlx::model::{ModelOptions, ZayaModel};
use zaya_mlx::quant::WeightFormat;

fn fnv(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf29ce484222325u64, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x100000001b3)
    })
}

/// Generates (once) the model `preset`/`format`/`seed` and returns its directory.
pub fn model_ref(preset: &str, format: &str, seed: u64) -> PathBuf {
    let script = repo().join("tests/model_ref/make_model_ref.py");
    let text = std::fs::read(&script).unwrap();
    let dir = repo().join("target/model-ref").join(format!(
        "{preset}-{format}-{seed}-{:012x}",
        fnv(&text) & 0xffff_ffff_ffff
    ));
    if dir.join("reference.safetensors").exists() {
        return dir;
    }
    std::fs::create_dir_all(dir.parent().unwrap()).unwrap();
    // generate into a private temp dir, then rename atomically (parallel tests may race)
    let tmp = dir
        .with_extension(format!("tmp{}-{:?}", std::process::id(), std::thread::current().id()).replace(['(', ')'], ""));
    let out = Command::new(python())
        .arg(&script)
        .arg(&tmp)
        .args([preset, format, &seed.to_string()])
        .output()
        .expect("running python");
    assert!(
        out.status.success(),
        "make_model_ref.py failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    if std::fs::rename(&tmp, &dir).is_err() {
        // someone else won the race
        let _ = std::fs::remove_dir_all(&tmp);
        assert!(dir.join("reference.safetensors").exists());
    }
    dir
}

pub fn load_st(path: &Path) -> HashMap<String, Array> {
    Array::load_safetensors(path).unwrap_or_else(|e| panic!("loading {}: {e}", path.display()))
}

/// Reads a model_ref directory into (config, canonical weights).
pub fn load_weights(dir: &Path) -> (ZayaConfig, CanonicalWeights) {
    let cfg = ZayaConfig::from_dir(dir).unwrap();
    let tensors: BTreeMap<String, Array> = load_st(&dir.join("weights.safetensors")).into_iter().collect();
    let fj: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("formats.json")).unwrap()).unwrap();
    let mut formats = BTreeMap::new();
    for (k, v) in fj.as_object().unwrap() {
        let u = |f: &str| v[f].as_u64().unwrap();
        let f = match v["kind"].as_str().unwrap() {
            "float" => WeightFormat::Float,
            "affine" => WeightFormat::Affine {
                bits: u("bits") as u32,
                group_size: u("group_size") as u32,
            },
            "mxfp4" => WeightFormat::Mxfp4 {
                group_size: u("group_size") as u32,
            },
            "turboquant" => WeightFormat::TurboQuant {
                bits: u("bits") as u32,
                in_features: u("in_features") as u32,
                seed: u("seed"),
            },
            other => panic!("unknown format {other}"),
        };
        formats.insert(k.clone(), f);
    }
    let side = dir.join("sidecar.safetensors");
    let tq_runtime = if side.exists() {
        load_st(&side).into_iter().collect()
    } else {
        BTreeMap::new()
    };
    (
        cfg,
        CanonicalWeights {
            tensors,
            formats,
            tq_runtime,
        },
    )
}

pub fn build(dir: &Path, opts: ModelOptions) -> ZayaModel {
    let (cfg, w) = load_weights(dir);
    ZayaModel::from_weights(cfg, w, opts, &dir.display().to_string()).unwrap()
}

pub fn to_vec_f32(a: &Array) -> Vec<f32> {
    let a = a.as_dtype(Dtype::Float32).unwrap().contiguous().unwrap();
    a.eval().unwrap();
    a.as_slice::<f32>().to_vec()
}

pub fn to_vec_i32(a: &Array) -> Vec<i32> {
    let a = a.as_dtype(Dtype::Int32).unwrap().contiguous().unwrap();
    a.eval().unwrap();
    a.as_slice::<i32>().to_vec()
}

/// (max |a-b|, max |b|)
pub fn max_diff(a: &[f32], b: &[f32]) -> (f32, f32) {
    assert_eq!(a.len(), b.len(), "length mismatch");
    let d = a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
    let m = b.iter().map(|y| y.abs()).fold(0f32, f32::max);
    (d, m)
}

/// Argmax of each row of a row-major [rows, cols] buffer.
pub fn argmax_rows(v: &[f32], cols: usize) -> Vec<usize> {
    v.chunks(cols)
        .map(|r| {
            r.iter()
                .enumerate()
                .fold(
                    (0, f32::NEG_INFINITY),
                    |(bi, bv), (i, &x)| if x > bv { (i, x) } else { (bi, bv) },
                )
                .0
        })
        .collect()
}

/// Token ids stored in a reference file.
pub fn ref_tokens(r: &HashMap<String, Array>) -> Vec<u32> {
    to_vec_i32(&r["token_ids"]).into_iter().map(|v| v as u32).collect()
}
