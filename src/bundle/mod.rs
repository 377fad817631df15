//! Bundle loading: finds the files of a ZAYA1 bundle, memory-maps its safetensors shards into MLX
//! arrays, maps every supported layout (the legacy 80-half-layer JANGTQ/MXFP4/affine bundles, the
//! Zyphra legacy float checkpoint, the upstream transformers 40-block layout) onto one canonical
//! weight set, and validates it before any compute.
//!
//! Canonical names are the legacy bundle names (`model.layers.{n}.self_attn.qkv.linear_q.weight`,
//! `model.layers.{n}.zaya_block.experts.switch_mlp.gate_proj.tq_packed`, ...), with conv weights in
//! MLX layout `[out, k, in/groups]` and no `lm_head` when embeddings are tied.
//!
//! Submodules: [`shards`] (files, headers, mappings), [`mmap`] (zero-copy arrays), `layout` (stored
//! names → canonical plan), `expected` (the tensor set a config implies, parameter counts), `validate`
//! (formats, shapes, dtypes), `sidecar` (the TurboQuant sidecar), [`summary`] (`zaya info`).
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};

use mlx_rs::ops::indexing::IndexOp;
use mlx_rs::Array;

use crate::config::{JangConfig, ZayaConfig};
use crate::error::{Result, ZayaError};
use crate::quant::WeightFormat;

mod expected;
mod layout;
pub mod mmap;
pub mod shards;
mod sidecar;
pub mod sigbus;
pub mod summary;
mod validate;

pub use shards::{DType, ShardMap};
pub use summary::BundleSummary;
pub use validate::{ParamCounts, TensorKind};

use layout::{Build, Planned};

/// The canonical in-memory weight set the model consumes.
#[derive(Default)]
pub struct CanonicalWeights {
    /// Tensors by canonical name (module base + `.weight`, `.scales`, `.biases`, `.bias`,
    /// `.tq_packed`, `.tq_norms`, or a parameter name such as `.temp`).
    pub tensors: BTreeMap<String, Array>,
    /// Storage format of every linear / stacked-expert module, keyed by module base
    /// (e.g. `model.layers.0.self_attn.qkv.linear_q`, `model.embed_tokens`,
    /// `model.layers.1.zaya_block.experts.switch_mlp.gate_proj`).
    pub formats: BTreeMap<String, WeightFormat>,
    /// TurboQuant runtime arrays from the sidecar, by their sidecar names
    /// (`codebook.{in}.{bits}` f32 `[2^bits]`, `signs.{in}.{seed}` f32 `[in]`).
    pub tq_runtime: BTreeMap<String, Array>,
}

/// Which on-disk layout a bundle uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// Legacy 80-half-layer names with pre-stacked `switch_mlp` experts (OsaurusAI/JANG bundles).
    LegacyStacked,
    /// Zyphra legacy float checkpoint with per-expert `local_experts.{e}.linear_fc1/fc2`.
    LegacyPerExpert,
    /// Upstream transformers 40-block layout.
    Upstream,
}

impl Layout {
    /// Short label (`legacy-stacked`, `legacy-per-expert`, `upstream`).
    pub fn label(self) -> &'static str {
        match self {
            Layout::LegacyStacked => "legacy-stacked",
            Layout::LegacyPerExpert => "legacy-per-expert",
            Layout::Upstream => "upstream",
        }
    }
}

impl std::fmt::Display for Layout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.label())
    }
}

impl serde::Serialize for Layout {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(self.label())
    }
}

/// Options of [`Bundle::open_with`] / [`inspect`].
#[derive(Debug, Clone, Default)]
pub struct BundleOptions {
    /// Tensors the model does not use become a warning in the load report instead of an
    /// [`ZayaError::UnexpectedTensors`] error.
    pub allow_unexpected: bool,
}

/// What loading did besides producing the weights.
#[derive(Debug, Clone, Default)]
pub struct LoadReport {
    /// Non-fatal findings (ignored tensors, missing quantization block, assumed layouts...).
    pub warnings: Vec<String>,
    /// Stored tensors the model does not use (only with `allow_unexpected`).
    pub unexpected: Vec<String>,
    /// Stored tensors dropped on purpose (a tied `lm_head`, `tq_bits` after reading it).
    pub dropped: Vec<String>,
    /// Canonical tensors that alias the shard mappings (no copy).
    pub zero_copy_tensors: usize,
    /// Canonical tensors that had to be copied (stacked/split/transposed, or misaligned data).
    pub copied_tensors: usize,
    /// Bytes of those copies.
    pub copied_bytes: u64,
}

/// An opened, validated bundle.
pub struct Bundle {
    pub dir: PathBuf,
    pub config: ZayaConfig,
    pub jang: Option<JangConfig>,
    pub layout: Layout,
    pub weights: CanonicalWeights,
    /// Layout, formats, sizes and parameter counts (what `zaya info` prints).
    pub summary: BundleSummary,
    pub report: LoadReport,
    /// Weak handles of the shard mappings (diagnostics: whether they are still mapped).
    shard_maps: Vec<Weak<ShardMap>>,
}

/// Everything known about a bundle after validation, before any array exists.
pub(crate) struct Checked {
    pub dir: PathBuf,
    pub config: ZayaConfig,
    pub jang: Option<JangConfig>,
    pub layout: Layout,
    pub set: shards::ShardSet,
    pub validated: validate::Validated,
    pub summary: BundleSummary,
}

/// Reads the configs, opens the shards, maps the layout and validates everything (headers only).
pub(crate) fn check(dir: &Path, opts: &BundleOptions) -> Result<Checked> {
    let config = ZayaConfig::from_dir(dir)?;
    let jang = JangConfig::from_dir(dir)?;
    let set = shards::ShardSet::open(dir)?;
    let layout = layout::detect_layout(&set)?;
    let plan = layout::plan(&set, layout, &config)?;
    let ctx = validate::Context {
        dir,
        cfg: &config,
        jang: jang.as_ref(),
        layout,
        allow_unexpected: opts.allow_unexpected,
    };
    let mut validated = validate::validate(&ctx, plan)?;
    for (name, file) in &set.unlisted {
        validated.warnings.push(format!(
            "`{name}` is in {file} but not in {}; ignored",
            shards::INDEX_FILE
        ));
    }
    let summary = BundleSummary::build(dir, &config, jang.as_ref(), layout, &set, &validated);
    Ok(Checked {
        dir: dir.to_path_buf(),
        config,
        jang,
        layout,
        set,
        validated,
        summary,
    })
}

/// Validates a bundle without creating any array and describes it (`zaya info`).
pub fn inspect(dir: &Path, opts: &BundleOptions) -> Result<BundleSummary> {
    let summary = check(dir, opts)?.summary;
    // the text side: what `Zaya::load` reads besides the weights must parse too
    if dir.join("tokenizer.json").exists() {
        crate::text::tokenizer::Tokenizer::from_dir(dir)?;
    }
    crate::text::chat::ChatTemplate::from_dir(dir)?;
    Ok(summary)
}

impl Bundle {
    /// Opens and validates the bundle in `dir` (unexpected tensors are an error).
    pub fn open(dir: impl AsRef<Path>) -> Result<Bundle> {
        Self::open_with(dir, &BundleOptions::default())
    }

    /// Opens and validates the bundle in `dir` with options.
    pub fn open_with(dir: impl AsRef<Path>, opts: &BundleOptions) -> Result<Bundle> {
        let c = check(dir.as_ref(), opts)?;
        let mut report = LoadReport {
            warnings: c.validated.warnings.clone(),
            unexpected: c.validated.unexpected.clone(),
            dropped: c.validated.dropped.clone(),
            ..Default::default()
        };
        let mut weights = CanonicalWeights {
            formats: c.validated.formats.clone(),
            ..Default::default()
        };
        for (name, p) in &c.validated.plan {
            let (a, zero_copy) = materialize(name, p)?;
            if zero_copy {
                report.zero_copy_tensors += 1;
            } else {
                report.copied_tensors += 1;
                report.copied_bytes += p.nbytes() as u64;
            }
            weights.tensors.insert(name.clone(), a);
        }
        if let Some((_, entries)) = &c.validated.sidecar {
            for (name, meta) in entries {
                let (a, _) = mmap::array_from_meta(meta)?;
                weights.tq_runtime.insert(name.clone(), a);
            }
        }
        let mut shard_maps: Vec<Weak<ShardMap>> = c.set.shards.iter().map(Arc::downgrade).collect();
        if let Some((m, _)) = &c.validated.sidecar {
            shard_maps.push(Arc::downgrade(m));
        }
        Ok(Bundle {
            dir: c.dir,
            config: c.config,
            jang: c.jang,
            layout: c.layout,
            weights,
            summary: c.summary,
            report,
            shard_maps,
        })
    }

    /// A bundle around a hand-built weight set (tests, synthetic models): no files, no validation;
    /// the summary is computed from the arrays and the config.
    pub fn from_weights(
        dir: impl AsRef<Path>,
        config: ZayaConfig,
        jang: Option<JangConfig>,
        layout: Layout,
        weights: CanonicalWeights,
    ) -> Bundle {
        let summary = BundleSummary::from_weights(dir.as_ref(), &config, jang.as_ref(), layout, &weights);
        Bundle {
            dir: dir.as_ref().to_path_buf(),
            config,
            jang,
            layout,
            weights,
            summary,
            report: LoadReport::default(),
            shard_maps: vec![],
        }
    }

    /// Whether `ptr` points into one of this bundle's (live) shard mappings.
    #[doc(hidden)]
    pub fn points_into_shards(&self, ptr: *const u8) -> bool {
        self.shard_maps
            .iter()
            .filter_map(Weak::upgrade)
            .any(|m| m.contains(ptr))
    }

    /// Weak handles of the shard mappings (diagnostics and tests).
    #[doc(hidden)]
    pub fn shard_handles(&self) -> Vec<Weak<ShardMap>> {
        self.shard_maps.clone()
    }
}

fn ext_err(name: &str, e: mlx_rs::error::Exception) -> ZayaError {
    ZayaError::Ext(format!("building `{name}`: {e}"))
}

/// Swaps the last two axes of a `[o, a, b]` tensor of `size`-byte elements.
fn swap_last2(bytes: &[u8], shape: &[usize], size: usize) -> Vec<u8> {
    let (o, a, b) = (shape[0], shape[1], shape[2]);
    let mut out = vec![0u8; bytes.len()];
    for i in 0..o {
        for j in 0..a {
            for k in 0..b {
                let src = ((i * a + j) * b + k) * size;
                let dst = ((i * b + k) * a + j) * size;
                out[dst..dst + size].copy_from_slice(&bytes[src..src + size]);
            }
        }
    }
    out
}

/// Builds one canonical array; `true` when it aliases a shard mapping.
fn materialize(name: &str, p: &Planned) -> Result<(Array, bool)> {
    match &p.build {
        Build::Direct(m) => mmap::array_from_meta(m),
        Build::SwapLast2(m) => {
            let swapped = swap_last2(m.bytes(), &m.shape, m.dtype.size());
            Ok((
                mmap::array_from_bytes(name, m.file(), &swapped, &p.shape, p.dtype)?,
                false,
            ))
        }
        Build::Stack { parts, rows } => {
            let mut arrays = Vec::with_capacity(parts.len());
            for m in parts {
                let (a, _) = mmap::array_from_meta(m)?;
                let a = match rows {
                    Some((lo, hi)) => a.index(*lo as i32..*hi as i32),
                    None => a,
                };
                arrays.push(a);
            }
            let s = mlx_rs::ops::stack(&arrays, 0).map_err(|e| ext_err(name, e))?;
            s.eval().map_err(|e| ext_err(name, e))?;
            Ok((s, false))
        }
        Build::Rows { src, lo, hi } => {
            let (a, _) = mmap::array_from_meta(src)?;
            let s = a
                .index((.., *lo as i32..*hi as i32))
                .contiguous()
                .map_err(|e| ext_err(name, e))?;
            s.eval().map_err(|e| ext_err(name, e))?;
            Ok((s, false))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn swap_last2_moves_axes() {
        // [1, 2, 3] u8: [[0,1,2],[3,4,5]] -> [1, 3, 2]: [[0,3],[1,4],[2,5]]
        let v: Vec<u8> = (0..6).collect();
        assert_eq!(swap_last2(&v, &[1, 2, 3], 1), vec![0, 3, 1, 4, 2, 5]);
        // 2-byte elements keep their bytes together
        let v: Vec<u8> = vec![0, 10, 1, 11, 2, 12, 3, 13];
        assert_eq!(swap_last2(&v, &[1, 2, 2], 2), vec![0, 10, 2, 12, 1, 11, 3, 13]);
    }
}
