//! Shared helpers of the integration tests (`mod common;`): the Python reference fixtures made by
//! `tests/reference/make_fixture.py` (random Zyphra source → `jang` JANGTQ4 bundle → reference
//! outputs of `jang_tools.zaya.model`), generated on first use and cached; the reference venv; and
//! small safetensors readers for reference files.
//!
//! Cache: `$ZAYA_FIXTURES/<name>-<hash>/` or `<repo>/target/zaya-fixtures/<name>-<hash>/`, where
//! `<hash>` covers the generator scripts and the named config, so editing either regenerates.
//! Several threads or test binaries asking for one fixture at once generate it once: a lock file
//! (`create_new`) serializes generation, which writes into a temp dir renamed into place when done.
#![allow(dead_code)]

use std::fs::{self, OpenOptions};
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant, SystemTime};

use serde_json::Value;
use sha2::{Digest, Sha256};

mod venv;
#[allow(unused_imports)]
pub use venv::{python, repo_root, venv_python};

/// One generated fixture (see tests/reference/README.md for the contents).
#[derive(Debug, Clone)]
pub struct Fixture {
    /// Config name in tests/reference/fixtures.json (`tiny`, `wide`, `real`, `skip`).
    pub name: String,
    /// The fixture directory.
    pub root: PathBuf,
    /// Zyphra-format float source checkpoint (config.json, model-00001-of-00001.safetensors).
    pub source: PathBuf,
    /// The JANGTQ4 bundle made by `python -m jang_tools.convert_zaya_jangtq`.
    pub bundle: PathBuf,
    /// `reference.safetensors`: float32 reference outputs.
    pub reference: PathBuf,
}

impl Fixture {
    /// `reference_bf16.safetensors` (the reference computing in bf16), when the config lists it.
    pub fn reference_bf16(&self) -> Option<PathBuf> {
        let p = self.root.join("reference_bf16.safetensors");
        p.exists().then_some(p)
    }
    /// `meta.json`: the config, token ids, package versions and the reference's self-checks.
    pub fn meta(&self) -> Value {
        read_json(&self.root.join("meta.json"))
    }
    /// The fixture's entry of tests/reference/fixtures.json.
    pub fn config(&self) -> Value {
        fixture_config(&self.name)
    }
}

/// tests/reference/ (the generator scripts and fixtures.json).
pub fn reference_dir() -> PathBuf {
    repo_root().join("tests").join("reference")
}

fn read_json(path: &Path) -> Value {
    let text = fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} is not valid JSON: {e}", path.display()))
}

/// The named entry of tests/reference/fixtures.json; panics naming the known configs.
pub fn fixture_config(name: &str) -> Value {
    let all = read_json(&reference_dir().join("fixtures.json"));
    match all.get(name) {
        Some(v) => v.clone(),
        None => {
            let known: Vec<&str> = all
                .as_object()
                .map(|o| o.keys().map(String::as_str).collect())
                .unwrap_or_default();
            panic!("unknown fixture `{name}`; tests/reference/fixtures.json has {known:?}")
        }
    }
}

/// Files whose text determines a fixture's contents (with its config entry).
const GENERATOR_FILES: [&str; 2] = ["make_fixture.py", "zaya_ref.py"];

/// Short hash of the generator scripts and the named config (the cache key).
pub fn fixture_hash(name: &str) -> String {
    let mut h = Sha256::new();
    for f in GENERATOR_FILES {
        let p = reference_dir().join(f);
        let text = fs::read(&p).unwrap_or_else(|e| panic!("cannot read {}: {e}", p.display()));
        h.update(f.as_bytes());
        h.update((text.len() as u64).to_le_bytes());
        h.update(&text);
    }
    h.update(name.as_bytes());
    // serde_json's map is ordered by key: a canonical rendering of the entry
    h.update(serde_json::to_string(&fixture_config(name)).unwrap().as_bytes());
    h.finalize().iter().take(6).map(|b| format!("{b:02x}")).collect()
}

/// Where fixtures are cached: `$ZAYA_FIXTURES` or `<repo>/target/zaya-fixtures`.
pub fn fixtures_base() -> PathBuf {
    match std::env::var_os("ZAYA_FIXTURES") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => repo_root().join("target").join("zaya-fixtures"),
    }
}

/// The named fixture, generated on first use (seconds for `tiny`; see README.md for `real`).
pub fn fixture(name: &str) -> Fixture {
    fixture_in(&fixtures_base(), name)
}

/// [`fixture`] with an explicit cache base directory.
pub fn fixture_in(base: &Path, name: &str) -> Fixture {
    let dir_name = format!("{name}-{}", fixture_hash(name));
    let root = base.join(&dir_name);
    if !root.is_dir() {
        generate_locked(base, &dir_name, name, &root);
    }
    Fixture {
        name: name.to_string(),
        source: root.join("source"),
        bundle: root.join("bundle"),
        reference: root.join("reference.safetensors"),
        root,
    }
}

/// Removes the lock file when dropped (also while unwinding from a failed generation).
struct LockGuard(PathBuf);
impl Drop for LockGuard {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

fn generate_locked(base: &Path, dir_name: &str, name: &str, root: &Path) {
    fs::create_dir_all(base).unwrap_or_else(|e| panic!("cannot create {}: {e}", base.display()));
    let lock = base.join(format!("{dir_name}.lock"));
    let deadline = Instant::now() + Duration::from_secs(60 * 60);
    loop {
        if root.is_dir() {
            return;
        }
        match OpenOptions::new().write(true).create_new(true).open(&lock) {
            Ok(mut f) => {
                let _guard = LockGuard(lock.clone());
                let _ = write!(f, "{}", std::process::id());
                drop(f);
                if root.is_dir() {
                    return; // finished by another process between our check and the lock
                }
                remove_leftovers(base, dir_name);
                generate(base, dir_name, name, root);
                return;
            }
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                if lock_is_stale(&lock) {
                    let _ = fs::remove_file(&lock);
                    continue;
                }
                if Instant::now() > deadline {
                    panic!(
                        "timed out waiting for {} (remove it if no generator runs)",
                        lock.display()
                    );
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(e) => panic!("cannot create lock {}: {e}", lock.display()),
        }
    }
}

/// Temp dirs of generators that died (we hold the lock, so none is in use).
fn remove_leftovers(base: &Path, dir_name: &str) {
    let prefix = format!(".{dir_name}.tmp-");
    if let Ok(entries) = fs::read_dir(base) {
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().starts_with(&prefix) {
                let _ = fs::remove_dir_all(e.path());
            }
        }
    }
}

/// A lock is stale when its owner process is gone, or when it names no pid for over a minute.
fn lock_is_stale(lock: &Path) -> bool {
    let text = match fs::read_to_string(lock) {
        Ok(t) => t,
        Err(_) => return false, // just removed by its owner: retry
    };
    match text.trim().parse::<i32>() {
        Ok(pid) => !process_alive(pid),
        Err(_) => {
            let age = fs::metadata(lock)
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| SystemTime::now().duration_since(t).ok())
                .unwrap_or_default();
            age > Duration::from_secs(60)
        }
    }
}

fn process_alive(pid: i32) -> bool {
    if pid <= 0 {
        return false;
    }
    // SAFETY: signal 0 only checks that the process exists; no signal is sent.
    let r = unsafe { libc::kill(pid, 0) };
    r == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
}

fn generate(base: &Path, dir_name: &str, name: &str, root: &Path) {
    let tmp = base.join(format!(".{dir_name}.tmp-{}", std::process::id()));
    let _ = fs::remove_dir_all(&tmp);
    let script = reference_dir().join("make_fixture.py");
    let started = Instant::now();
    let out = Command::new(python())
        .arg(&script)
        .args(["--config", name, "--out"])
        .arg(&tmp)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", python().display()));
    if !out.status.success() {
        let _ = fs::remove_dir_all(&tmp);
        panic!(
            "generating fixture `{name}` failed ({}):\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    if let Err(e) = fs::rename(&tmp, root) {
        let _ = fs::remove_dir_all(&tmp);
        if !root.is_dir() {
            panic!("cannot move {} to {}: {e}", tmp.display(), root.display());
        }
    }
    eprintln!(
        "generated fixture `{name}` in {:.1}s: {}",
        started.elapsed().as_secs_f64(),
        root.display()
    );
}

/// Runs `python script args…` in the reference venv; panics with its stderr when it fails.
pub fn run_python(script: &Path, args: &[&str]) -> Output {
    let out = Command::new(python())
        .arg(script)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", python().display()));
    if !out.status.success() {
        panic!(
            "{} {} failed ({}):\n{}",
            script.display(),
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    out
}

// ------------------------------------------------------------------------------------------------
// safetensors readers

/// A tensor read from a safetensors file, converted to f64 for comparisons.
#[derive(Debug, Clone)]
pub struct Tensor {
    pub dtype: safetensors::Dtype,
    pub shape: Vec<usize>,
    pub data: Vec<f64>,
}

impl Tensor {
    pub fn to_f32(&self) -> Vec<f32> {
        self.data.iter().map(|&v| v as f32).collect()
    }
    pub fn to_i64(&self) -> Vec<i64> {
        self.data.iter().map(|&v| v as i64).collect()
    }
}

fn decode(view: &safetensors::tensor::TensorView<'_>) -> Vec<f64> {
    use safetensors::Dtype;
    let b = view.data();
    match view.dtype() {
        Dtype::F32 => b
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()) as f64)
            .collect(),
        Dtype::F16 => b
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes(c.try_into().unwrap()).to_f64())
            .collect(),
        Dtype::BF16 => b
            .chunks_exact(2)
            .map(|c| half::bf16::from_le_bytes(c.try_into().unwrap()).to_f64())
            .collect(),
        Dtype::I32 => b
            .chunks_exact(4)
            .map(|c| i32::from_le_bytes(c.try_into().unwrap()) as f64)
            .collect(),
        Dtype::U32 => b
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes(c.try_into().unwrap()) as f64)
            .collect(),
        Dtype::I64 => b
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().unwrap()) as f64)
            .collect(),
        Dtype::U8 => b.iter().map(|&v| v as f64).collect(),
        other => panic!("unsupported dtype {other:?}"),
    }
}

/// Memory-maps a safetensors file (read-only).
pub fn mmap(path: &Path) -> memmap2::Mmap {
    let f = fs::File::open(path).unwrap_or_else(|e| panic!("cannot open {}: {e}", path.display()));
    // SAFETY: test fixtures are not modified while mapped.
    unsafe { memmap2::Mmap::map(&f) }.unwrap_or_else(|e| panic!("cannot map {}: {e}", path.display()))
}

/// Reads every tensor of a safetensors file (fine for reference files and tiny bundles).
pub fn read_all(path: &Path) -> std::collections::BTreeMap<String, Tensor> {
    let map = mmap(path);
    let st = safetensors::SafeTensors::deserialize(&map)
        .unwrap_or_else(|e| panic!("{} is not a safetensors file: {e}", path.display()));
    st.tensors()
        .into_iter()
        .map(|(name, v)| {
            let t = Tensor {
                dtype: v.dtype(),
                shape: v.shape().to_vec(),
                data: decode(&v),
            };
            (name, t)
        })
        .collect()
}

/// Reads one tensor of a safetensors file; panics naming the file when it is absent.
pub fn read_tensor(path: &Path, name: &str) -> Tensor {
    let map = mmap(path);
    let st = safetensors::SafeTensors::deserialize(&map)
        .unwrap_or_else(|e| panic!("{} is not a safetensors file: {e}", path.display()));
    let v = st
        .tensor(name)
        .unwrap_or_else(|e| panic!("{}: no tensor `{name}` ({e})", path.display()));
    Tensor {
        dtype: v.dtype(),
        shape: v.shape().to_vec(),
        data: decode(&v),
    }
}
