//! Shared helpers of the tests/synth_*.rs tests: the Python reference environment and small
//! safetensors read/write helpers.
#![allow(dead_code)]
#[path = "../common/venv.rs"]
mod venv;
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
pub use venv::{python, repo_root as repo};

use safetensors::{Dtype, SafeTensors};

/// Runs tests/python/`script` with `args`; returns its stdout (panics with stderr on failure).
pub fn run_python(script: &str, args: &[&str]) -> String {
    let out = Command::new(python())
        .arg(repo().join("tests/python").join(script))
        .args(args)
        .env("PYTHONHASHSEED", "0")
        .output()
        .expect("python runs");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{script} failed:\n{}\n{}",
        stdout,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Runs a script whose last stdout line is JSON.
pub fn run_python_json(script: &str, args: &[&str]) -> serde_json::Value {
    let s = run_python(script, args);
    let last = s.lines().last().unwrap_or_default();
    serde_json::from_str(last).unwrap_or_else(|e| panic!("{script}: bad JSON ({e}): {s}"))
}

/// A raw tensor: dtype, shape, little-endian bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct Raw {
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub data: Vec<u8>,
}

impl Raw {
    pub fn f32(shape: &[usize], v: &[f32]) -> Self {
        Raw {
            dtype: Dtype::F32,
            shape: shape.to_vec(),
            data: v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        }
    }
    pub fn as_u32(&self) -> Vec<u32> {
        self.data
            .chunks_exact(4)
            .map(|b| u32::from_le_bytes(b.try_into().unwrap()))
            .collect()
    }
    pub fn as_u16(&self) -> Vec<u16> {
        self.data
            .chunks_exact(2)
            .map(|b| u16::from_le_bytes(b.try_into().unwrap()))
            .collect()
    }
    pub fn as_f32(&self) -> Vec<f32> {
        self.data
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect()
    }
}

pub fn write_safetensors(path: &Path, tensors: &BTreeMap<String, Raw>) {
    let views: Vec<(String, safetensors::tensor::TensorView)> = tensors
        .iter()
        .map(|(k, r)| {
            (
                k.clone(),
                safetensors::tensor::TensorView::new(r.dtype, r.shape.clone(), &r.data).unwrap(),
            )
        })
        .collect();
    safetensors::serialize_to_file(views, None, path).unwrap();
}

pub fn read_safetensors(path: &Path) -> BTreeMap<String, Raw> {
    let bytes = std::fs::read(path).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(k, v)| {
            (
                k,
                Raw {
                    dtype: v.dtype(),
                    shape: v.shape().to_vec(),
                    data: v.data().to_vec(),
                },
            )
        })
        .collect()
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// Deterministic test data: N(0, std²) from a seeded ChaCha8 stream (Box-Muller in f64).
pub fn gaussian(seed: u64, n: usize, std: f32) -> Vec<f32> {
    use rand::{Rng, SeedableRng};
    let mut r = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    (0..n)
        .map(|_| {
            let u1: f64 = 1.0 - r.gen::<f64>();
            let u2: f64 = r.gen();
            ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32 * std
        })
        .collect()
}
