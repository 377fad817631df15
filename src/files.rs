//! Safe file output for every tool: atomic writes (a temporary file beside the target, synced,
//! then renamed over it, so a failed write never leaves a truncated file behind) and the refusal to
//! write into the bundle being read.
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{Result, ZayaError};

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// Writes `path` atomically: `write` fills a temporary file in the same directory, which is synced
/// and renamed over `path` only when `write` succeeded. On failure the temporary file is removed and
/// an existing `path` is left as it was.
pub fn write_atomic(path: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let name = path
        .file_name()
        .ok_or_else(|| ZayaError::InvalidArgument(format!("{}: not a file path", path.display())))?;
    if path.is_dir() {
        return Err(ZayaError::InvalidArgument(format!(
            "{}: is a directory, expected a file path",
            path.display()
        )));
    }
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    // the temporary name ends with the target's name, so its extension is kept (MLX's writers add
    // `.safetensors` to a name without it)
    let tmp = dir.join(format!(
        ".tmp-{}-{}.{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed),
        name.to_string_lossy()
    ));
    let result = write(&tmp).and_then(|()| {
        std::fs::File::open(&tmp)
            .and_then(|f| f.sync_all())
            .map_err(|e| ZayaError::io(&tmp, e))?;
        std::fs::rename(&tmp, path).map_err(|e| ZayaError::io(path, e))
    });
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    } else if let Ok(d) = std::fs::File::open(&dir) {
        let _ = d.sync_all(); // make the rename durable where the platform allows
    }
    result
}

/// Refuses an output `path` that lies inside `dir` (the bundle a command reads): the tools never
/// write into a bundle. Symbolic links are resolved; a path whose directory does not exist is
/// refused by the write itself.
pub fn refuse_inside(path: &Path, dir: &Path, what: &str) -> Result<()> {
    let Ok(dir) = dir.canonicalize() else { return Ok(()) };
    let resolved = match path.canonicalize() {
        Ok(p) => Some(p),
        Err(_) => {
            let parent = match path.parent() {
                Some(p) if !p.as_os_str().is_empty() => p,
                _ => Path::new("."),
            };
            parent
                .canonicalize()
                .ok()
                .and_then(|p| path.file_name().map(|n| p.join(n)))
        }
    };
    match resolved {
        Some(p) if p.starts_with(&dir) => Err(ZayaError::InvalidArgument(format!(
            "{what} {} is inside the model bundle {}; write it elsewhere (the tools never write into a bundle)",
            path.display(),
            dir.display()
        ))),
        _ => Ok(()),
    }
}

/// Reads a text input file of at most `max` bytes: refuses non-regular files (a FIFO would block,
/// a device could be endless) and larger files before reading, so a hostile path cannot make a
/// tool read without bound.
pub fn read_text_limited(path: &Path, max: u64) -> Result<String> {
    if let Some(why) = crate::bundle::shards::not_a_file(path) {
        return Err(ZayaError::io(
            path,
            std::io::Error::new(
                if why == "does not exist" {
                    std::io::ErrorKind::NotFound
                } else {
                    std::io::ErrorKind::InvalidInput
                },
                why,
            ),
        ));
    }
    let len = std::fs::metadata(path).map_err(|e| ZayaError::io(path, e))?.len();
    if len > max {
        return Err(ZayaError::io(
            path,
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{len} bytes is larger than the {max}-byte limit for this file"),
            ),
        ));
    }
    let bytes = std::fs::read(path).map_err(|e| ZayaError::io(path, e))?;
    String::from_utf8(bytes).map_err(|e| {
        ZayaError::io(
            path,
            std::io::Error::new(std::io::ErrorKind::InvalidData, format!("not UTF-8 text ({e})")),
        )
    })
}

/// Size limit of a JSON config file (config.json, jang_config.json, generation_config.json,
/// tokenizer_config.json) and of a chat template.
pub const MAX_CONFIG_BYTES: u64 = 16 << 20;
/// Size limit of tokenizer.json.
pub const MAX_TOKENIZER_BYTES: u64 = 512 << 20;
