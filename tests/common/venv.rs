//! The repository root and the Python reference environment's interpreter, shared by every test
//! support module (`mod venv;` in tests/common, `#[path = "../common/venv.rs"] mod venv;` elsewhere).
#![allow(dead_code)]
use std::path::{Path, PathBuf};

/// The repository root.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The reference venv's python: `$ZAYA_REF_VENV/bin/python` or `<repo>/.venv-ref/bin/python`.
/// Panics with a one-line hint when the venv is missing.
pub fn python() -> PathBuf {
    let venv = match std::env::var_os("ZAYA_REF_VENV") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => repo_root().join(".venv-ref"),
    };
    venv_python(&venv).unwrap_or_else(|msg| panic!("{msg}"))
}

/// The python of the venv at `venv`, or the one-line message [`python`] panics with.
pub fn venv_python(venv: &Path) -> Result<PathBuf, String> {
    let py = venv.join("bin").join("python");
    if py.is_file() {
        Ok(py)
    } else {
        Err(format!(
            "Python reference environment not found ({} is missing): run `bash scripts/setup-python-ref.sh` (or set ZAYA_REF_VENV)",
            py.display()
        ))
    }
}
