//! What `zaya info` reports about a validated bundle: layout, formats per kind of tensor (embeddings,
//! attention, router, experts, ...), bits and group sizes, tensor counts, bytes per format and
//! parameter counts. Built from headers only, so it is also available without loading
//! ([`super::inspect`]); `zaya bench` reuses [`BundleSummary::bytes_per_format`].
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use super::shards::{DType, ShardSet, SIDECAR_FILE};
use super::validate::{kind_of_name, Expected, ParamCounts, TensorKind, Validated};
use super::CanonicalWeights;
use super::Layout;
use crate::config::{ConfigRevision, JangConfig, ZayaConfig};
use crate::quant::WeightFormat;

/// Label of a storage format, e.g. `affine 8-bit g32`, `turboquant 4-bit`, `float F16`.
pub fn format_label(f: &WeightFormat, dtype: DType) -> String {
    match f {
        WeightFormat::Float => format!("float {dtype}"),
        WeightFormat::Affine { bits, group_size } => format!("affine {bits}-bit g{group_size}"),
        WeightFormat::Mxfp4 { group_size } => format!("mxfp4 g{group_size}"),
        WeightFormat::TurboQuant { bits, .. } => format!("turboquant {bits}-bit"),
    }
}

/// One kind of tensor (embeddings, attention, ...).
#[derive(Debug, Clone, serde::Serialize)]
pub struct KindSummary {
    pub kind: TensorKind,
    /// Storage formats used by this kind (labels).
    pub formats: Vec<String>,
    /// Linear / stacked-expert modules of this kind.
    pub modules: usize,
    /// Canonical tensors of this kind.
    pub tensors: usize,
    pub bytes: u64,
}

/// One shard file.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ShardSummary {
    pub file: String,
    pub bytes: u64,
    pub tensors: usize,
}

/// Architecture numbers from the config.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ArchSummary {
    pub config_revision: &'static str,
    pub hidden_size: usize,
    pub half_layers: usize,
    pub q_heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub experts: usize,
    pub top_k: usize,
    pub expert_intermediate_size: usize,
    pub router_hidden_size: usize,
    pub vocab_size: usize,
    pub tie_word_embeddings: bool,
}

impl ArchSummary {
    fn of(cfg: &ZayaConfig) -> ArchSummary {
        ArchSummary {
            config_revision: match cfg.revision {
                ConfigRevision::Legacy => "legacy",
                ConfigRevision::Upstream => "upstream",
            },
            hidden_size: cfg.hidden_size,
            half_layers: cfg.num_hidden_layers,
            q_heads: cfg.num_q_heads,
            kv_heads: cfg.num_kv_heads,
            head_dim: cfg.head_dim,
            experts: cfg.num_experts,
            top_k: cfg.top_k,
            expert_intermediate_size: cfg.expert_intermediate_size,
            router_hidden_size: cfg.router_hidden_size,
            vocab_size: cfg.vocab_size,
            tie_word_embeddings: cfg.tie_word_embeddings,
        }
    }
}

/// Description of a validated bundle.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BundleSummary {
    pub dir: PathBuf,
    pub layout: Layout,
    /// config.json `weight_format` (e.g. `mxtq`).
    pub weight_format: Option<String>,
    /// jang_config.json `profile` (e.g. `JANGTQ4`).
    pub profile: Option<String>,
    pub arch: ArchSummary,
    pub shards: Vec<ShardSummary>,
    /// Tensors stored in the model shards.
    pub stored_tensors: usize,
    /// Canonical tensors the model gets (stacked experts count once, `tq_bits` and a tied lm_head
    /// are dropped).
    pub canonical_tensors: usize,
    /// Bytes of the model shard files.
    pub file_bytes: u64,
    /// Bytes of the canonical tensors.
    pub tensor_bytes: u64,
    /// Per kind of tensor.
    pub kinds: Vec<KindSummary>,
    /// Canonical bytes per storage format label.
    pub bytes_per_format: BTreeMap<String, u64>,
    /// Number of linear / expert modules per format label.
    pub modules_per_format: BTreeMap<String, usize>,
    /// Affine bit widths in use.
    pub affine_bits: Vec<u32>,
    /// Affine / MXFP4 group sizes in use.
    pub group_sizes: Vec<u32>,
    /// TurboQuant bit widths in use.
    pub turboquant_bits: Vec<u32>,
    /// Sidecar entries loaded (`codebook.*`, `signs.*`).
    pub sidecar_entries: Vec<String>,
    pub params: ParamCounts,
    pub warnings: Vec<String>,
}

/// The running totals both summaries ([`BundleSummary::build`], [`BundleSummary::from_weights`]) add
/// their tensors and modules to.
#[derive(Default)]
struct Tally {
    kinds: BTreeMap<TensorKind, KindSummary>,
    bytes_per_format: BTreeMap<String, u64>,
    modules_per_format: BTreeMap<String, usize>,
    tensor_bytes: u64,
    affine_bits: BTreeSet<u32>,
    group_sizes: BTreeSet<u32>,
    turboquant_bits: BTreeSet<u32>,
}

impl Tally {
    /// One canonical tensor of `n` bytes, of `kind`, stored in the format `label`.
    fn tensor(&mut self, kind: TensorKind, label: String, n: u64) {
        self.tensor_bytes += n;
        *self.bytes_per_format.entry(label.clone()).or_default() += n;
        let k = self.kinds.entry(kind).or_insert_with(|| KindSummary {
            kind,
            formats: vec![],
            modules: 0,
            tensors: 0,
            bytes: 0,
        });
        k.tensors += 1;
        k.bytes += n;
        if !k.formats.contains(&label) {
            k.formats.push(label);
        }
    }

    /// One linear / expert module in format `f` whose weight is stored as `weight_dtype`; counted in
    /// its kind when that kind has tensors.
    fn module(&mut self, kind: Option<TensorKind>, f: &WeightFormat, weight_dtype: DType) {
        *self
            .modules_per_format
            .entry(format_label(f, weight_dtype))
            .or_default() += 1;
        if let Some(k) = kind.and_then(|kind| self.kinds.get_mut(&kind)) {
            k.modules += 1;
        }
        match f {
            WeightFormat::Affine { bits, group_size } => {
                self.affine_bits.insert(*bits);
                self.group_sizes.insert(*group_size);
            }
            WeightFormat::Mxfp4 { group_size } => {
                self.group_sizes.insert(*group_size);
            }
            WeightFormat::TurboQuant { bits, .. } => {
                self.turboquant_bits.insert(*bits);
            }
            WeightFormat::Float => {}
        }
    }
}

impl BundleSummary {
    pub(crate) fn build(
        dir: &Path,
        cfg: &ZayaConfig,
        jang: Option<&JangConfig>,
        layout: Layout,
        set: &ShardSet,
        v: &Validated,
    ) -> BundleSummary {
        // module base of each canonical tensor: the longest format key that prefixes it
        let module_of = |name: &str| -> Option<&String> {
            let (stem, _) = name.rsplit_once('.')?;
            v.formats.get_key_value(stem).map(|(k, _)| k)
        };
        let mut t = Tally::default();
        for (name, p) in &v.plan {
            let kind = v.kinds.get(name).copied().unwrap_or(TensorKind::Norms);
            let label = match module_of(name) {
                Some(m) => {
                    // a module's tensors share its format; a float module is labelled by its weight dtype
                    let f = &v.formats[m];
                    let dt = v.plan.get(&format!("{m}.weight")).map(|w| w.dtype).unwrap_or(p.dtype);
                    format_label(f, dt)
                }
                None => format_label(&WeightFormat::Float, p.dtype),
            };
            t.tensor(kind, label, p.nbytes() as u64);
        }
        for (m, f) in &v.formats {
            let dt = v
                .plan
                .get(&format!("{m}.weight"))
                .map(|w| w.dtype)
                .unwrap_or(DType::F16);
            t.module(v.module_kinds.get(m).copied(), f, dt);
        }
        let mut per_file: BTreeMap<&str, usize> = BTreeMap::new();
        for t in set.tensors.values() {
            *per_file.entry(t.file()).or_default() += 1;
        }
        let shards = set
            .shards
            .iter()
            .map(|s| ShardSummary {
                file: s.name().to_string(),
                bytes: s.len() as u64,
                tensors: per_file.get(s.name()).copied().unwrap_or(0),
            })
            .collect();
        let warnings = v.warnings.clone();
        BundleSummary {
            dir: dir.to_path_buf(),
            layout,
            weight_format: cfg.weight_format.clone(),
            profile: jang.and_then(|j| j.profile.clone()),
            arch: ArchSummary::of(cfg),
            shards,
            stored_tensors: set.tensors.len(),
            canonical_tensors: v.plan.len(),
            file_bytes: set.total_bytes(),
            tensor_bytes: t.tensor_bytes,
            kinds: t.kinds.into_values().collect(),
            bytes_per_format: t.bytes_per_format,
            modules_per_format: t.modules_per_format,
            affine_bits: t.affine_bits.into_iter().collect(),
            group_sizes: t.group_sizes.into_iter().collect(),
            turboquant_bits: t.turboquant_bits.into_iter().collect(),
            sidecar_entries: v
                .sidecar
                .as_ref()
                .map(|(_, e)| e.keys().cloned().collect())
                .unwrap_or_default(),
            params: v.params,
            warnings,
        }
    }

    /// A summary of a hand-built weight set (no files): sizes from the arrays, parameters from the
    /// config. Used by [`super::Bundle::from_weights`].
    pub fn from_weights(
        dir: &Path,
        cfg: &ZayaConfig,
        jang: Option<&JangConfig>,
        layout: Layout,
        w: &CanonicalWeights,
    ) -> BundleSummary {
        let dtype_of = |a: &mlx_rs::Array| match a.dtype() {
            mlx_rs::Dtype::Float16 => DType::F16,
            mlx_rs::Dtype::Bfloat16 => DType::BF16,
            mlx_rs::Dtype::Float32 => DType::F32,
            mlx_rs::Dtype::Uint32 => DType::U32,
            mlx_rs::Dtype::Uint8 => DType::U8,
            _ => DType::F64,
        };
        let mut t = Tally::default();
        let label_of = |name: &str, a: &mlx_rs::Array| -> String {
            let module = name
                .rsplit_once('.')
                .and_then(|(stem, _)| w.formats.get(stem).map(|f| (stem, f)));
            match module {
                Some((stem, f)) => {
                    let dt = w
                        .tensors
                        .get(&format!("{stem}.weight"))
                        .map(dtype_of)
                        .unwrap_or(dtype_of(a));
                    format_label(f, dt)
                }
                None => format_label(&WeightFormat::Float, dtype_of(a)),
            }
        };
        for (name, a) in &w.tensors {
            t.tensor(kind_of_name(name), label_of(name, a), a.nbytes() as u64);
        }
        for (m, f) in &w.formats {
            let dt = w
                .tensors
                .get(&format!("{m}.weight"))
                .map(dtype_of)
                .unwrap_or(DType::F16);
            t.module(Some(kind_of_name(&format!("{m}.weight"))), f, dt);
        }
        BundleSummary {
            dir: dir.to_path_buf(),
            layout,
            weight_format: cfg.weight_format.clone(),
            profile: jang.and_then(|j| j.profile.clone()),
            arch: ArchSummary::of(cfg),
            shards: vec![],
            stored_tensors: w.tensors.len(),
            canonical_tensors: w.tensors.len(),
            file_bytes: 0,
            tensor_bytes: t.tensor_bytes,
            kinds: t.kinds.into_values().collect(),
            bytes_per_format: t.bytes_per_format,
            modules_per_format: t.modules_per_format,
            affine_bits: t.affine_bits.into_iter().collect(),
            group_sizes: t.group_sizes.into_iter().collect(),
            turboquant_bits: t.turboquant_bits.into_iter().collect(),
            sidecar_entries: w.tq_runtime.keys().cloned().collect(),
            params: Expected::from_config(cfg).param_counts(cfg.top_k),
            warnings: vec![],
        }
    }

    /// Human-readable report (what `zaya info` prints).
    pub fn to_text(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let a = &self.arch;
        let _ = writeln!(s, "bundle      {}", self.dir.display());
        let _ = writeln!(
            s,
            "layout      {} (config revision {}){}{}",
            self.layout,
            a.config_revision,
            self.weight_format
                .as_ref()
                .map(|w| format!(", weight_format {w}"))
                .unwrap_or_default(),
            self.profile
                .as_ref()
                .map(|p| format!(", profile {p}"))
                .unwrap_or_default()
        );
        let _ = writeln!(
            s,
            "model       hidden {}, {} half-layers, heads {}/{} x {}, {} experts (top-{}, intermediate {}), router {}, vocab {}, {} embeddings",
            a.hidden_size,
            a.half_layers,
            a.q_heads,
            a.kv_heads,
            a.head_dim,
            a.experts,
            a.top_k,
            a.expert_intermediate_size,
            a.router_hidden_size,
            a.vocab_size,
            if a.tie_word_embeddings { "tied" } else { "untied" }
        );
        let _ = writeln!(
            s,
            "parameters  {} total, {} active per token ({} without embeddings)",
            human_count(self.params.total),
            human_count(self.params.active),
            human_count(self.params.active_non_embedding)
        );
        let _ = writeln!(
            s,
            "tensors     {} stored in {} shard(s), {} ({}); {} canonical",
            self.stored_tensors,
            self.shards.len(),
            human_bytes(self.file_bytes),
            self.file_bytes,
            self.canonical_tensors
        );
        if !self.sidecar_entries.is_empty() {
            let _ = writeln!(s, "sidecar     {SIDECAR_FILE}: {}", self.sidecar_entries.join(", "));
        }
        let mut q = vec![];
        if !self.affine_bits.is_empty() {
            q.push(format!("affine bits {:?}", self.affine_bits));
        }
        if !self.group_sizes.is_empty() {
            q.push(format!("group size {:?}", self.group_sizes));
        }
        if !self.turboquant_bits.is_empty() {
            q.push(format!("turboquant bits {:?}", self.turboquant_bits));
        }
        if !q.is_empty() {
            let _ = writeln!(s, "quantized   {}", q.join(", "));
        }
        let _ = writeln!(s);
        let _ = writeln!(
            s,
            "{:<16} {:>7} {:>8} {:>12}  formats",
            "kind", "modules", "tensors", "bytes"
        );
        for k in &self.kinds {
            let _ = writeln!(
                s,
                "{:<16} {:>7} {:>8} {:>12}  {}",
                k.kind.label(),
                k.modules,
                k.tensors,
                human_bytes(k.bytes),
                k.formats.join(", ")
            );
        }
        let _ = writeln!(s);
        let _ = writeln!(s, "{:<22} {:>7} {:>12} {:>7}", "format", "modules", "bytes", "share");
        for (f, b) in &self.bytes_per_format {
            let _ = writeln!(
                s,
                "{:<22} {:>7} {:>12} {:>6.1}%",
                f,
                self.modules_per_format.get(f).copied().unwrap_or(0),
                human_bytes(*b),
                100.0 * *b as f64 / self.tensor_bytes.max(1) as f64
            );
        }
        for w in &self.warnings {
            let _ = writeln!(s, "warning: {w}");
        }
        s
    }
}

/// `1.23 GiB`-style sizes.
pub fn human_bytes(b: u64) -> String {
    const U: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut i = 0;
    while v >= 1024.0 && i + 1 < U.len() {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{b} B")
    } else {
        format!("{v:.2} {}", U[i])
    }
}

/// `8.43B`-style counts.
pub fn human_count(n: u64) -> String {
    let v = n as f64;
    if v >= 1e9 {
        format!("{:.2}B", v / 1e9)
    } else if v >= 1e6 {
        format!("{:.2}M", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.1}K", v / 1e3)
    } else {
        n.to_string()
    }
}
