//! Safetensors shards of a bundle: finds them (through `model.safetensors.index.json`, or by globbing
//! `*.safetensors` without the TurboQuant sidecar), memory-maps them copy-on-write and parses their
//! headers by hand, with every malformation (truncated file, bad header, offsets outside the file,
//! a shard or tensor the index names but the files lack) a typed error naming the file.
//!
//! Nothing here touches MLX; [`super::mmap`] turns a [`TensorMeta`] into an array.
use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use memmap2::{MmapMut, MmapOptions};
use serde_json::Value;

use crate::error::{Result, ZayaError};

/// File name of the TurboQuant runtime sidecar (never a model shard).
pub const SIDECAR_FILE: &str = "jangtq_runtime.safetensors";
/// File name of the shard index.
pub const INDEX_FILE: &str = "model.safetensors.index.json";
/// Largest header we accept (the safetensors crate's limit).
const MAX_HEADER: u64 = 100_000_000;

/// Element type of a stored tensor (the safetensors dtype names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub enum DType {
    Bool,
    U8,
    I8,
    U16,
    I16,
    F16,
    BF16,
    U32,
    I32,
    F32,
    U64,
    I64,
    F64,
    /// A dtype MLX cannot hold (F8_*, F4, F6_*, C64): accepted in headers, refused when used.
    Unsupported(&'static str),
}

impl DType {
    /// Parses a safetensors dtype name.
    pub fn parse(s: &str) -> Option<DType> {
        Some(match s {
            "BOOL" => DType::Bool,
            "U8" => DType::U8,
            "I8" => DType::I8,
            "U16" => DType::U16,
            "I16" => DType::I16,
            "F16" => DType::F16,
            "BF16" => DType::BF16,
            "U32" => DType::U32,
            "I32" => DType::I32,
            "F32" => DType::F32,
            "U64" => DType::U64,
            "I64" => DType::I64,
            "F64" => DType::F64,
            "F8_E5M2" => DType::Unsupported("F8_E5M2"),
            "F8_E4M3" => DType::Unsupported("F8_E4M3"),
            "F8_E8M0" => DType::Unsupported("F8_E8M0"),
            "F4" => DType::Unsupported("F4"),
            "F6_E2M3" => DType::Unsupported("F6_E2M3"),
            "F6_E3M2" => DType::Unsupported("F6_E3M2"),
            "C64" => DType::Unsupported("C64"),
            _ => return None,
        })
    }

    /// Bits per element.
    pub fn bits(self) -> usize {
        match self {
            DType::Bool | DType::U8 | DType::I8 => 8,
            DType::U16 | DType::I16 | DType::F16 | DType::BF16 => 16,
            DType::U32 | DType::I32 | DType::F32 => 32,
            DType::U64 | DType::I64 | DType::F64 => 64,
            DType::Unsupported(n) => match n {
                "F4" => 4,
                "F6_E2M3" | "F6_E3M2" => 6,
                "C64" => 64,
                _ => 8,
            },
        }
    }

    /// Bytes per element (rounded up).
    pub fn size(self) -> usize {
        self.bits().div_ceil(8)
    }

    /// bf16 / f16 / f32 / f64.
    pub fn is_float(self) -> bool {
        matches!(self, DType::F16 | DType::BF16 | DType::F32 | DType::F64)
    }

    /// The safetensors name.
    pub fn name(self) -> &'static str {
        match self {
            DType::Bool => "BOOL",
            DType::U8 => "U8",
            DType::I8 => "I8",
            DType::U16 => "U16",
            DType::I16 => "I16",
            DType::F16 => "F16",
            DType::BF16 => "BF16",
            DType::U32 => "U32",
            DType::I32 => "I32",
            DType::F32 => "F32",
            DType::U64 => "U64",
            DType::I64 => "I64",
            DType::F64 => "F64",
            DType::Unsupported(n) => n,
        }
    }
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// One memory-mapped safetensors file. The mapping is private and writable (copy-on-write): MLX may
/// reuse an input buffer it owns alone for an op's output, which then dirties private pages only and
/// never the file. It stays mapped until the last array over it is freed.
pub struct ShardMap {
    path: PathBuf,
    /// File name relative to the bundle directory (as the index names it).
    name: String,
    map: MmapMut,
    base: usize,
    len: usize,
    /// Slot in the SIGBUS table ([`super::sigbus`]).
    sigbus_slot: Option<usize>,
}

impl Drop for ShardMap {
    fn drop(&mut self) {
        if let Some(s) = self.sigbus_slot {
            super::sigbus::unregister(s);
        }
    }
}

impl ShardMap {
    /// Path of the file.
    pub fn path(&self) -> &Path {
        &self.path
    }
    /// Name relative to the bundle directory.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// File size in bytes.
    pub fn len(&self) -> usize {
        self.len
    }
    /// True for an empty file (never the case for a parsed shard).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// Base address of the mapping.
    pub(crate) fn base_ptr(&self) -> *mut u8 {
        self.base as *mut u8
    }
    /// Whether `ptr` points into this mapping.
    pub fn contains(&self, ptr: *const u8) -> bool {
        let p = ptr as usize;
        p >= self.base && p < self.base + self.len
    }
    /// Bytes `[off, off + n)` of the file. Only used while loading, before arrays are handed out.
    pub(crate) fn bytes(&self, off: usize, n: usize) -> &[u8] {
        &self.map[off..off + n]
    }
}

impl std::fmt::Debug for ShardMap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ShardMap({})", self.path.display())
    }
}

/// Where one tensor lives in a shard.
#[derive(Clone, Debug)]
pub struct TensorMeta {
    pub name: String,
    pub shard: Arc<ShardMap>,
    pub dtype: DType,
    pub shape: Vec<usize>,
    /// Absolute byte offset of the data in the file.
    pub offset: usize,
    pub nbytes: usize,
}

impl TensorMeta {
    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
    /// The shard's name (relative to the bundle directory).
    pub fn file(&self) -> &str {
        self.shard.name()
    }
    /// Raw bytes (only while loading).
    pub(crate) fn bytes(&self) -> &[u8] {
        self.shard.bytes(self.offset, self.nbytes)
    }
}

/// A parsed safetensors file.
pub struct ParsedShard {
    pub map: Arc<ShardMap>,
    /// Tensors in file order (by data offset).
    pub tensors: Vec<TensorMeta>,
    pub metadata: BTreeMap<String, String>,
}

fn st_err(path: &Path, msg: impl Into<String>) -> ZayaError {
    ZayaError::Safetensors {
        file: path.to_path_buf(),
        msg: msg.into(),
    }
}

/// Memory-maps and parses one safetensors file; `name` is how the bundle refers to it.
/// Why `path` is not a regular file (`None` when it is one): a directory, a FIFO, a symbolic-link
/// loop, a dangling link, or absent. Checked before opening, since opening a FIFO would block.
pub fn not_a_file(path: &Path) -> Option<String> {
    use std::os::unix::fs::FileTypeExt;
    match std::fs::metadata(path) {
        Ok(m) if m.is_file() => None,
        Ok(m) if m.is_dir() => Some("is a directory, not a file".into()),
        Ok(m) if m.file_type().is_fifo() => Some("is a FIFO (named pipe), not a file".into()),
        Ok(m) if m.file_type().is_socket() => Some("is a socket, not a file".into()),
        Ok(_) => Some("is a device or other special file, not a regular file".into()),
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => Some("is a symbolic-link loop".into()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if std::fs::symlink_metadata(path).is_ok() {
                Some("is a dangling symbolic link".into())
            } else {
                Some("does not exist".into())
            }
        }
        Err(e) => Some(format!("cannot be read ({e})")),
    }
}

pub fn open_shard(path: &Path, name: &str) -> Result<ParsedShard> {
    if let Some(why) = not_a_file(path) {
        return Err(st_err(path, why));
    }
    let file = File::open(path).map_err(|e| ZayaError::io(path, e))?;
    let len = file.metadata().map_err(|e| ZayaError::io(path, e))?.len();
    if len < 8 {
        return Err(st_err(
            path,
            format!("truncated: the file has {len} bytes, fewer than the 8-byte header length"),
        ));
    }
    let len = usize::try_from(len).map_err(|_| st_err(path, "file too large for this platform"))?;
    // SAFETY: the mapping is private (copy-on-write), so nothing we or MLX write reaches the file.
    // Modifying or truncating the file while it is mapped is undefined behaviour of every mmap
    // loader (SIGBUS); bundles are read-only inputs.
    let mut map =
        unsafe { MmapOptions::new().no_reserve_swap().map_copy(&file) }.map_err(|e| ZayaError::io(path, e))?;
    let base = map.as_mut_ptr() as usize;
    let n = u64::from_le_bytes(map[..8].try_into().unwrap());
    if n > MAX_HEADER {
        return Err(st_err(
            path,
            format!("corrupt header: declared header length {n} exceeds the {MAX_HEADER}-byte limit"),
        ));
    }
    let n = n as usize;
    if 8 + n > len {
        return Err(st_err(
            path,
            format!(
                "truncated or corrupt: the header declares {n} bytes but only {} follow the length field",
                len - 8
            ),
        ));
    }
    let data_start = 8 + n;
    let data_len = len - data_start;
    let header: Value = {
        let text = std::str::from_utf8(&map[8..data_start])
            .map_err(|e| st_err(path, format!("corrupt header: not UTF-8 ({e})")))?;
        serde_json::from_str(text.trim_end_matches(['\0', ' ']))
            .map_err(|e| st_err(path, format!("corrupt header: not valid JSON ({e})")))?
    };
    let obj = header
        .as_object()
        .ok_or_else(|| st_err(path, "corrupt header: not a JSON object"))?;
    let shard = Arc::new(ShardMap {
        path: path.to_path_buf(),
        name: name.to_string(),
        map,
        base,
        len,
        sigbus_slot: super::sigbus::register(base, len, path),
    });

    let mut metadata = BTreeMap::new();
    let mut tensors = Vec::with_capacity(obj.len());
    for (key, v) in obj {
        if key == "__metadata__" {
            if let Some(m) = v.as_object() {
                for (mk, mv) in m {
                    metadata.insert(
                        mk.clone(),
                        mv.as_str().map(str::to_string).unwrap_or_else(|| mv.to_string()),
                    );
                }
            }
            continue;
        }
        let bad = |msg: String| st_err(path, format!("corrupt header entry for tensor `{key}`: {msg}"));
        let info = v.as_object().ok_or_else(|| bad("not an object".into()))?;
        let dtype_s = info
            .get("dtype")
            .and_then(Value::as_str)
            .ok_or_else(|| bad("missing `dtype`".into()))?;
        let dtype = DType::parse(dtype_s).ok_or_else(|| bad(format!("unknown dtype `{dtype_s}`")))?;
        let shape = info
            .get("shape")
            .and_then(Value::as_array)
            .ok_or_else(|| bad("missing `shape`".into()))?
            .iter()
            .map(|d| d.as_u64().and_then(|d| usize::try_from(d).ok()))
            .collect::<Option<Vec<usize>>>()
            .ok_or_else(|| bad("`shape` must be a list of non-negative integers".into()))?;
        let offs = info
            .get("data_offsets")
            .and_then(Value::as_array)
            .filter(|a| a.len() == 2)
            .and_then(|a| Some((a[0].as_u64()? as usize, a[1].as_u64()? as usize)))
            .ok_or_else(|| bad("`data_offsets` must be [begin, end]".into()))?;
        let (b, e) = offs;
        if b > e {
            return Err(bad(format!("data_offsets [{b}, {e}] are reversed")));
        }
        if e > data_len {
            return Err(st_err(
                path,
                format!(
                    "truncated or corrupt: tensor `{key}` has data_offsets [{b}, {e}] beyond the {data_len} data bytes of the file"
                ),
            ));
        }
        let numel = shape
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .ok_or_else(|| bad("shape overflows".into()))?;
        let bits = numel
            .checked_mul(dtype.bits())
            .ok_or_else(|| bad("shape overflows".into()))?;
        if bits % 8 != 0 || bits / 8 != e - b {
            return Err(bad(format!(
                "{} {:?} needs {} bytes but data_offsets [{b}, {e}] span {}",
                dtype,
                shape,
                bits.div_ceil(8),
                e - b
            )));
        }
        tensors.push(TensorMeta {
            name: key.clone(),
            shard: shard.clone(),
            dtype,
            shape,
            offset: data_start + b,
            nbytes: e - b,
        });
    }
    tensors.sort_by_key(|t| t.offset);
    // every byte belongs to at most one tensor
    let mut prev: Option<&TensorMeta> = None;
    for t in tensors.iter().filter(|t| t.nbytes > 0) {
        if let Some(p) = prev {
            if t.offset < p.offset + p.nbytes {
                return Err(st_err(
                    path,
                    format!("corrupt header: the data of `{}` and `{}` overlap", p.name, t.name),
                ));
            }
        }
        prev = Some(t);
    }
    Ok(ParsedShard {
        map: shard,
        tensors,
        metadata,
    })
}

/// All model shards of a bundle directory.
pub struct ShardSet {
    /// Tensors by on-disk name.
    pub tensors: BTreeMap<String, TensorMeta>,
    /// The shards, in name order.
    pub shards: Vec<Arc<ShardMap>>,
    /// Whether the set came from the index (else from globbing).
    pub from_index: bool,
    /// Tensors present in a shard but not listed by the index (ignored; reported as warnings).
    pub unlisted: Vec<(String, String)>,
}

impl ShardSet {
    /// Opens the shards of `dir` (through the index when present).
    pub fn open(dir: &Path) -> Result<ShardSet> {
        let index = dir.join(INDEX_FILE);
        if index.exists() {
            Self::open_indexed(dir, &index)
        } else {
            Self::open_globbed(dir)
        }
    }

    fn open_indexed(dir: &Path, index: &Path) -> Result<ShardSet> {
        let text = crate::files::read_text_limited(index, crate::files::MAX_CONFIG_BYTES)?;
        let v: Value =
            serde_json::from_str(&text).map_err(|e| st_err(index, format!("index is not valid JSON ({e})")))?;
        let wm = v
            .get("weight_map")
            .and_then(Value::as_object)
            .ok_or_else(|| st_err(index, "index has no `weight_map` object"))?;
        let mut by_file: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (name, f) in wm {
            let f = f
                .as_str()
                .ok_or_else(|| st_err(index, format!("weight_map entry for `{name}` is not a file name")))?;
            if f.is_empty()
                || Path::new(f)
                    .components()
                    .any(|c| !matches!(c, std::path::Component::Normal(_)))
            {
                return Err(st_err(
                    index,
                    format!("weight_map entry for `{name}` names `{f}`, not a file inside the bundle"),
                ));
            }
            by_file.entry(f.to_string()).or_default().push(name.clone());
        }
        if by_file.is_empty() {
            return Err(st_err(index, "index lists no tensors"));
        }
        let mut set = ShardSet {
            tensors: BTreeMap::new(),
            shards: vec![],
            from_index: true,
            unlisted: vec![],
        };
        for (f, names) in &by_file {
            let path = dir.join(f);
            if let Some(why) = not_a_file(&path) {
                return Err(st_err(
                    &path,
                    format!(
                        "missing shard: {INDEX_FILE} assigns {} tensor(s) to it (e.g. `{}`) but it {why}",
                        names.len(),
                        names[0]
                    ),
                ));
            }
            let parsed = open_shard(&path, f)?;
            let mut present: BTreeMap<String, TensorMeta> =
                parsed.tensors.into_iter().map(|t| (t.name.clone(), t)).collect();
            for name in names {
                match present.remove(name) {
                    Some(t) => {
                        set.tensors.insert(name.clone(), t);
                    }
                    None => {
                        return Err(ZayaError::MissingTensor {
                            name: name.clone(),
                            file: Some(f.clone()),
                        })
                    }
                }
            }
            set.unlisted.extend(present.into_keys().map(|n| (n, f.clone())));
            set.shards.push(parsed.map);
        }
        Ok(set)
    }

    fn open_globbed(dir: &Path) -> Result<ShardSet> {
        let rd = std::fs::read_dir(dir).map_err(|e| ZayaError::io(dir, e))?;
        let mut files: Vec<String> = rd
            .filter_map(|e| e.ok())
            .filter(|e| e.path().is_file())
            .filter_map(|e| e.file_name().to_str().map(str::to_string))
            .filter(|n| n.ends_with(".safetensors") && n != SIDECAR_FILE)
            .collect();
        files.sort();
        if files.is_empty() {
            return Err(st_err(
                dir,
                format!("no `*.safetensors` model shards and no {INDEX_FILE} in the directory"),
            ));
        }
        let mut set = ShardSet {
            tensors: BTreeMap::new(),
            shards: vec![],
            from_index: false,
            unlisted: vec![],
        };
        for f in &files {
            let parsed = open_shard(&dir.join(f), f)?;
            for t in parsed.tensors {
                if let Some(prev) = set.tensors.get(&t.name) {
                    return Err(st_err(
                        &dir.join(f),
                        format!(
                            "tensor `{}` is also in {} (without an index the shards must not overlap)",
                            t.name,
                            prev.file()
                        ),
                    ));
                }
                set.tensors.insert(t.name.clone(), t);
            }
            set.shards.push(parsed.map);
        }
        Ok(set)
    }

    /// Total bytes of the shard files.
    pub fn total_bytes(&self) -> u64 {
        self.shards.iter().map(|s| s.len() as u64).sum()
    }
}
