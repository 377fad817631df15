//! The output directory of `zaya synth`: checks it is empty (or, with `--force`, that every bundle
//! file in it was written by an earlier run, per its manifest), that the file system has room, and
//! records what this run wrote in the manifest.
use std::path::{Path, PathBuf};

use super::{files, SIDECAR_FILE};
use crate::error::{Result, ZayaError};

/// The record of what `zaya synth` wrote into a directory (so that `--force` replaces only that).
pub const MANIFEST_FILE: &str = ".zaya-synth.json";

/// Names a synthetic bundle or float source may write.
fn is_bundle_name(name: &str) -> bool {
    const SIDE: [&str; 9] = [
        "config.json",
        "jang_config.json",
        "generation_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "chat_template.jinja",
        "model.safetensors.index.json",
        SIDECAR_FILE,
    ];
    SIDE.contains(&name) || (name.starts_with("model-") && name.ends_with(".safetensors")) || name == MANIFEST_FILE
}

/// Bytes free for an unprivileged writer on the file system holding `path` (or its nearest
/// existing ancestor); `None` where unknown.
fn free_bytes(path: &Path) -> Option<u64> {
    let mut p = path;
    while !p.exists() {
        p = p.parent()?;
    }
    let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).ok()?;
    // SAFETY: statvfs fills the struct it is given; `c` is a valid NUL-terminated path.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    Some(st.f_bavail as u64 * st.f_frsize as u64)
}

/// Prepares `out` for `planned` bytes of shards: creates it, or checks it is empty. With `force`, a
/// non-empty directory is accepted only when every file of it that a bundle could be written over
/// was written by an earlier `zaya synth` (listed in its [`MANIFEST_FILE`]); those are removed (and
/// named on stderr), every other file is left alone. Refuses a write the file system has no room
/// for. Returns the names of the files that are not ours (kept out of the new manifest).
pub(super) fn prepare_out_dir(out: &Path, force: bool, planned: u64) -> Result<Vec<String>> {
    let mut foreign = Vec::new();
    let mut replace: Vec<PathBuf> = Vec::new();
    if out.exists() {
        if !out.is_dir() {
            return Err(ZayaError::InvalidArgument(format!(
                "--out {} exists and is not a directory",
                out.display()
            )));
        }
        let entries: Vec<PathBuf> = std::fs::read_dir(out)
            .map_err(|e| ZayaError::io(out, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        if !entries.is_empty() {
            if !force {
                return Err(ZayaError::InvalidArgument(format!(
                    "--out {} is not empty (pass --force to replace a bundle an earlier `zaya synth` wrote there)",
                    out.display()
                )));
            }
            let manifest: Vec<String> = std::fs::read_to_string(out.join(MANIFEST_FILE))
                .ok()
                .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
                .and_then(|v| serde_json::from_value(v["files"].clone()).ok())
                .unwrap_or_default();
            for p in entries {
                let name = p
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                if manifest.contains(&name) || name == MANIFEST_FILE {
                    replace.push(p);
                } else if is_bundle_name(&name) {
                    return Err(ZayaError::InvalidArgument(format!(
                        "--force: {} was not written by zaya synth (no record of it in {MANIFEST_FILE}); \
                         refusing to replace it: move it away or choose another --out",
                        p.display()
                    )));
                } else {
                    foreign.push(name);
                }
            }
        }
    }
    let freed: u64 = replace
        .iter()
        .filter_map(|p| std::fs::metadata(p).ok())
        .map(|m| m.len())
        .sum();
    if let Some(free) = free_bytes(out) {
        if planned >= 1 << 30 {
            eprintln!(
                "synth: about {:.2} GiB to write into {} ({:.2} GiB free)",
                planned as f64 / (1u64 << 30) as f64,
                out.display(),
                (free + freed) as f64 / (1u64 << 30) as f64
            );
        }
        let need = planned + (16 << 20);
        if need > free + freed {
            return Err(ZayaError::Runtime(format!(
                "--out {}: the bundle needs about {:.2} GiB but only {:.2} GiB are free there",
                out.display(),
                need as f64 / (1u64 << 30) as f64,
                (free + freed) as f64 / (1u64 << 30) as f64
            )));
        }
    }
    if !replace.is_empty() {
        let mut names: Vec<String> = replace
            .iter()
            .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .collect();
        names.sort();
        eprintln!(
            "synth: --force replaces {} file(s) an earlier zaya synth wrote in {}: {}",
            names.len(),
            out.display(),
            names.join(", ")
        );
        for p in &replace {
            std::fs::remove_file(p).map_err(|e| ZayaError::io(p, e))?;
        }
    }
    std::fs::create_dir_all(out).map_err(|e| ZayaError::io(out, e))?;
    Ok(foreign)
}

/// Records the files this run wrote (every entry of `out` but the `foreign` ones that were there).
pub(super) fn write_manifest(out: &Path, foreign: &[String]) -> Result<()> {
    let mut files: Vec<String> = std::fs::read_dir(out)
        .map_err(|e| ZayaError::io(out, e))?
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .filter(|n| !foreign.contains(n) && n != MANIFEST_FILE)
        .collect();
    files.sort();
    files::write_json(
        &out.join(MANIFEST_FILE),
        &serde_json::json!({"written_by": format!("zaya-mlx {}", env!("CARGO_PKG_VERSION")), "files": files}),
    )
}
