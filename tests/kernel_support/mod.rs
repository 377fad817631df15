//! Helpers of the kernel tests (ext_affine, ext_tq): the kernel-ISA cap (process-wide, so tests that
//! pick an ISA hold one lock), host values of an f32 array, and the ∞-norm relative error.
#![allow(dead_code)]
use std::sync::Mutex;

use mlx_rs::Array;
use zaya_mlx::ext::{detected_isa, set_max_isa, KernelIsa};

/// The kernel ISA cap is process-wide and read when an op is built: tests that pick an ISA hold this.
pub static ISA_LOCK: Mutex<()> = Mutex::new(());

/// Every kernel instruction set this CPU can run.
pub fn isas() -> Vec<KernelIsa> {
    [KernelIsa::Scalar, KernelIsa::Avx2, KernelIsa::Avx512]
        .into_iter()
        .filter(|i| *i <= detected_isa())
        .collect()
}

/// Runs `f` with the kernels capped at `isa`, then restores the previous cap.
pub fn with_isa<T>(isa: KernelIsa, f: impl FnOnce() -> T) -> T {
    let _g = ISA_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let prev = set_max_isa(isa);
    let out = f();
    set_max_isa(prev);
    out
}

/// `ZAYA_TEST_VERBOSE=1 cargo test --release --test ext_tq -- --nocapture` prints every error.
pub fn verbose(ctx: &str, what: &str, err: f64) {
    if std::env::var_os("ZAYA_TEST_VERBOSE").is_some() {
        eprintln!("{ctx} {what}: {err:.2e}");
    }
}

/// The evaluated f32 values of `y`.
pub fn values(y: &Array) -> Vec<f32> {
    y.eval().unwrap();
    y.as_slice::<f32>().to_vec()
}

/// max_i |y_i − r_i| / max_i |r_i| (∞-norm relative error).
pub fn rel_err(y: &[f32], r: &[f64]) -> f64 {
    assert_eq!(y.len(), r.len());
    let scale = r.iter().fold(0f64, |m, v| m.max(v.abs())).max(1e-30);
    y.iter().zip(r).map(|(a, b)| (*a as f64 - b).abs()).fold(0.0, f64::max) / scale
}
