//! `zaya synth`: random bundles in the exact JANGTQ format of `OsaurusAI/ZAYA1-8B-JANGTQ4`
//! (docs/bundle-format.md §1) at any size, made with our own encoders ([`crate::tools::encode`]).
//!
//! [`write_bundle`] streams the bundle: it plans every tensor, shard and byte offset first (the
//! converter's tensor order and 1e9-byte shard rule, safetensors' in-file order), writes the
//! headers, then threads generate the float weights block by block (deterministic per seed),
//! encode them (8-bit affine, TurboQuant with an in-place FWHT, f16 passthrough) and write each
//! block at its offset. Memory stays bounded by a few blocks per thread whatever the model size.
//! [`write_float_source`] writes the same weights as a Zyphra-format float checkpoint (the input
//! of `jang_tools.convert_zaya_jangtq`), for conversion and parity tests.
pub mod files;
pub mod gen;
pub mod plan;
pub mod spec;
pub mod tokenizer;

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use half::f16;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use safetensors::Dtype;

pub use spec::{SynthSpec, AFFINE_BITS, PRESETS};

use crate::error::{Result, ZayaError};
use crate::tools::encode::{affine_quantize_f32, codebook_f32, random_signs, TqEncoder};
use gen::{num_blocks, rows_per_block, BlockRng};
use plan::{Content, FilePlan, Init, Loc, OutTensor, SourceTensor, PROJECTIONS};

/// How [`write_bundle`] / [`write_float_source`] run.
#[derive(Debug, Clone, Default)]
pub struct SynthOptions {
    /// Write into a non-empty directory (stale `model-*.safetensors` there are removed).
    pub force: bool,
    /// Show an indicatif progress bar on stderr.
    pub progress: bool,
    /// Worker threads (default: available parallelism).
    pub threads: Option<usize>,
}

/// What was written.
#[derive(Debug, Clone)]
pub struct SynthReport {
    pub dir: PathBuf,
    /// Shard file names, in order.
    pub shards: Vec<String>,
    /// Tensor keys across the shards.
    pub tensor_count: usize,
    /// Sum of the shard file sizes (the index's `total_size`).
    pub total_size: u64,
    /// Keys of the TurboQuant sidecar (empty for a float source).
    pub sidecar_keys: Vec<String>,
    pub threads: usize,
    pub seconds: f64,
}

/// Name of the TurboQuant runtime sidecar (the loader's constant).
pub use crate::bundle::shards::SIDECAR_FILE;

/// Writes `model.safetensors.index.json`: every tensor mapped to the shard its location names.
fn write_index(
    out: &Path,
    format: Option<&str>,
    total_size: u64,
    tensors: &[plan::OutTensor],
    locs: &[plan::Loc],
    shards: &[plan::FilePlan],
) -> Result<()> {
    let weight_map: BTreeMap<String, String> = tensors
        .iter()
        .zip(locs)
        .map(|(t, l)| (t.name.clone(), shards[l.file].name.clone()))
        .collect();
    files::write_json(
        &out.join(crate::bundle::shards::INDEX_FILE),
        &files::index_json(format, total_size, &weight_map),
    )
}

fn shard_name(i: usize, n: usize) -> String {
    format!("model-{i:05}-of-{n:05}.safetensors")
}

/// Writes a random JANGTQ bundle for `spec` into `out` (created if missing).
pub fn write_bundle(spec: &SynthSpec, out: &Path, opts: &SynthOptions) -> Result<SynthReport> {
    spec.validate()?;
    let t0 = Instant::now();
    let sources = plan::source_tensors(spec);
    let tensors = plan::bundle_tensors(spec, &sources);
    let (files, locs) = plan::plan_files(&tensors, spec.max_shard_bytes, shard_name)?;
    let ours = prepare_out_dir(out, opts.force, files.iter().map(|f| f.size).sum())?;
    let sink = Sink::create(out, &files, &locs)?;

    // Encoders per distinct expert in_features (shared by all threads).
    let mut encoders: BTreeMap<usize, TqEncoder> = BTreeMap::new();
    for proj in PROJECTIONS {
        let i = plan::expert_dims(spec, proj).1;
        if let std::collections::btree_map::Entry::Vacant(e) = encoders.entry(i) {
            e.insert(TqEncoder::new(i, spec.expert_bits, spec.mxtq_seed)?);
        }
    }
    let by_name = plan::index_by_name(&tensors);
    let find = |name: String| -> Result<usize> {
        by_name
            .get(name.as_str())
            .copied()
            .ok_or_else(|| ZayaError::InvalidArgument(format!("synth plan has no tensor {name}")))
    };
    for (i, t) in tensors.iter().enumerate() {
        if let Content::TqBits { .. } = t.content {
            sink.write(i, 0, &[spec.expert_bits as u8])?;
        }
    }

    let mut jobs = Vec::new();
    for (si, s) in sources.iter().enumerate() {
        let (rows, cols) = s.rows_cols();
        let (targets, bytes) = if s.is_passthrough() {
            (vec![find(s.name.clone())?], rows * cols * 2)
        } else {
            let base = s.name.strip_suffix(".weight").unwrap_or(&s.name);
            let t = vec![
                find(format!("{base}.weight"))?,
                find(format!("{base}.scales"))?,
                find(format!("{base}.biases"))?,
            ];
            let b: usize = t.iter().map(|&i| tensors[i].nbytes()).sum();
            (t, b)
        };
        let nb = num_blocks(rows, cols);
        for b in 0..nb {
            jobs.push(Job::Regular {
                source: si,
                block: b,
                targets: targets.clone(),
                bytes: bytes / nb,
            });
        }
    }
    for layer in spec.moe_layers() {
        for (pi, proj) in PROJECTIONS.iter().enumerate() {
            let base = plan::expert_base(layer, proj);
            let packed = find(format!("{base}.tq_packed"))?;
            let norms = find(format!("{base}.tq_norms"))?;
            let bytes = (tensors[packed].nbytes() + tensors[norms].nbytes()) / spec.num_experts;
            for e in 0..spec.num_experts {
                jobs.push(Job::Expert {
                    layer,
                    proj: pi,
                    expert: e,
                    packed,
                    norms,
                    bytes,
                });
            }
        }
    }

    let ctx = Ctx {
        spec,
        sources: &sources,
        sink: Some(&sink),
    };
    let threads = run_jobs(&jobs, opts, "synth", |job| ctx.bundle_job(job, &encoders))?;
    sink.finish()?;

    // Sidecar, index and side files.
    let mut sidecar: BTreeMap<String, (Vec<usize>, Vec<f32>)> = BTreeMap::new();
    for &i in encoders.keys() {
        sidecar.insert(
            format!("signs.{i}.{}", spec.mxtq_seed),
            (vec![i], random_signs(i, spec.mxtq_seed)),
        );
        sidecar.insert(
            format!("codebook.{i}.{}", spec.expert_bits),
            (vec![1 << spec.expert_bits], codebook_f32(i, spec.expert_bits)),
        );
    }
    write_f32_safetensors(&out.join(SIDECAR_FILE), &sidecar)?;

    let total_size: u64 = files.iter().map(|f| f.size).sum();
    write_index(out, Some("jangtq"), total_size, &tensors, &locs, &files)?;
    files::write_json(&out.join("config.json"), &files::bundle_config(spec))?;
    files::write_json(&out.join("jang_config.json"), &files::jang_config(spec))?;
    write_text_side_files(spec, out, true)?;
    write_manifest(out, &ours)?;
    Ok(SynthReport {
        dir: out.to_path_buf(),
        shards: files.iter().map(|f| f.name.clone()).collect(),
        tensor_count: tensors.len(),
        total_size,
        sidecar_keys: sidecar.keys().cloned().collect(),
        threads,
        seconds: t0.elapsed().as_secs_f64(),
    })
}

/// Writes the same random weights as [`write_bundle`] (same spec and seed) as a Zyphra legacy
/// float checkpoint: F32 `model-0000N-of-0000M.safetensors` (same shard threshold) with per-expert
/// `local_experts.{e}.linear_fc1` ([gate; up]) / `linear_fc2`, an index, the source config.json
/// and the tokenizer files (tokenizer_config.json without the template, as Zyphra ships it).
pub fn write_float_source(spec: &SynthSpec, out: &Path, opts: &SynthOptions) -> Result<SynthReport> {
    spec.validate()?;
    let t0 = Instant::now();
    let sources = plan::source_tensors(spec);
    let tensors = plan::source_out_tensors(spec, &sources);
    let (files, locs) = plan::plan_files(&tensors, spec.max_shard_bytes, shard_name)?;
    let ours = prepare_out_dir(out, opts.force, files.iter().map(|f| f.size).sum())?;
    let sink = Sink::create(out, &files, &locs)?;
    let jobs: Vec<Job> = tensors
        .iter()
        .enumerate()
        .flat_map(|(ti, t)| {
            let nb = match t.content {
                Content::SourceF32 { source } => {
                    let (r, c) = sources[source].rows_cols();
                    num_blocks(r, c)
                }
                _ => 1,
            };
            (0..nb).map(move |b| Job::Source {
                tensor: ti,
                block: b,
                bytes: t.nbytes() / nb,
            })
        })
        .collect();
    let ctx = Ctx {
        spec,
        sources: &sources,
        sink: Some(&sink),
    };
    let threads = run_jobs(&jobs, opts, "source", |job| ctx.source_job(job, &tensors))?;
    sink.finish()?;
    let data_size: u64 = tensors.iter().map(|t| t.nbytes() as u64).sum();
    write_index(out, None, data_size, &tensors, &locs, &files)?;
    files::write_json(&out.join("config.json"), &files::source_config(spec))?;
    write_text_side_files(spec, out, false)?;
    write_manifest(out, &ours)?;
    Ok(SynthReport {
        dir: out.to_path_buf(),
        shards: files.iter().map(|f| f.name.clone()).collect(),
        tensor_count: tensors.len(),
        total_size: files.iter().map(|f| f.size).sum(),
        sidecar_keys: vec![],
        threads,
        seconds: t0.elapsed().as_secs_f64(),
    })
}

/// The float weights of a synthetic bundle (what [`write_float_source`] writes), without writing
/// anything: `name` is a source tensor name (`model.embed_tokens.weight`,
/// `model.layers.0.self_attn.qkv.conv_qk.0.weight` in PyTorch layout, ...) or a stacked expert
/// projection `model.layers.{L}.zaya_block.experts.switch_mlp.{gate,up,down}_proj.weight`
/// ([E, out, in]). Returns (shape, row-major values).
pub fn float_weights(spec: &SynthSpec, name: &str) -> Result<(Vec<usize>, Vec<f32>)> {
    spec.validate()?;
    let sources = plan::source_tensors(spec);
    let ctx = Ctx {
        spec,
        sources: &sources,
        sink: None,
    };
    if let Some(si) = sources.iter().position(|s| s.name == name) {
        let (rows, cols) = sources[si].rows_cols();
        let mut v = Vec::with_capacity(rows * cols);
        for b in 0..num_blocks(rows, cols) {
            v.extend(ctx.regular_block(si, b).1);
        }
        return Ok((sources[si].shape.clone(), v));
    }
    for layer in spec.moe_layers() {
        for (pi, proj) in PROJECTIONS.iter().enumerate() {
            if name == format!("{}.weight", plan::expert_base(layer, proj)) {
                let (o, i) = plan::expert_dims(spec, proj);
                let mut v = vec![0f32; spec.num_experts * o * i];
                for (e, chunk) in v.chunks_mut(o * i).enumerate() {
                    let (mut rng, init, _, _) = ctx.expert_rng(layer, pi, e);
                    rng.fill(chunk, init, 0, o * i);
                }
                return Ok((vec![spec.num_experts, o, i], v));
            }
        }
    }
    Err(ZayaError::MissingTensor {
        name: name.to_string(),
        file: Some(format!("synthetic {} spec", spec.preset)),
    })
}

fn write_text_side_files(spec: &SynthSpec, out: &Path, template_in_config: bool) -> Result<()> {
    files::write_json(&out.join("generation_config.json"), &files::generation_config())?;
    files::write_text(&out.join("tokenizer.json"), tokenizer::TOKENIZER_JSON)?;
    files::write_text(&out.join("chat_template.jinja"), tokenizer::CHAT_TEMPLATE)?;
    files::write_json(
        &out.join("tokenizer_config.json"),
        &tokenizer::tokenizer_config(spec.max_position_embeddings, template_in_config),
    )?;
    files::write_json(&out.join("special_tokens_map.json"), &tokenizer::special_tokens_map())
}

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
fn prepare_out_dir(out: &Path, force: bool, planned: u64) -> Result<Vec<String>> {
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
fn write_manifest(out: &Path, foreign: &[String]) -> Result<()> {
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

/// Writes a small F32 safetensors file with the library's serializer.
fn write_f32_safetensors(path: &Path, tensors: &BTreeMap<String, (Vec<usize>, Vec<f32>)>) -> Result<()> {
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(k, (shape, v))| {
            (
                k.clone(),
                shape.clone(),
                v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            )
        })
        .collect();
    let views = bytes
        .iter()
        .map(|(k, shape, b)| {
            safetensors::tensor::TensorView::new(Dtype::F32, shape.clone(), b)
                .map(|v| (k.clone(), v))
                .map_err(|e| ZayaError::InvalidArgument(format!("sidecar tensor {k}: {e}")))
        })
        .collect::<Result<Vec<_>>>()?;
    safetensors::serialize_to_file(views, None, path).map_err(|e| ZayaError::Safetensors {
        file: path.to_path_buf(),
        msg: e.to_string(),
    })
}

/// Pre-sized output files with their headers; tensor bytes are written at planned offsets.
struct Sink {
    /// (final path, temporary path, file): shards are written under a temporary name beside the
    /// final one and renamed by [`Sink::finish`]; an unfinished sink removes them.
    files: Vec<(PathBuf, PathBuf, File)>,
    locs: Vec<Loc>,
    sizes: Vec<u64>,
    finished: std::sync::atomic::AtomicBool,
}

impl Sink {
    fn create(dir: &Path, plans: &[FilePlan], locs: &[Loc]) -> Result<Self> {
        let mut sink = Sink {
            files: Vec::with_capacity(plans.len()),
            locs: locs.to_vec(),
            sizes: plans.iter().map(|p| p.size).collect(),
            finished: std::sync::atomic::AtomicBool::new(false),
        };
        for p in plans {
            let path = dir.join(&p.name);
            let tmp = dir.join(format!(".tmp-{}.{}", std::process::id(), p.name));
            let f = File::create(&tmp).map_err(|e| ZayaError::io(&tmp, e))?;
            sink.files.push((path, tmp.clone(), f));
            let f = &sink.files.last().expect("pushed").2;
            f.set_len(p.size).map_err(|e| ZayaError::io(&tmp, e))?;
            f.write_all_at(&p.header, 0).map_err(|e| ZayaError::io(&tmp, e))?;
        }
        Ok(sink)
    }

    /// Syncs every shard and renames it to its final name.
    fn finish(&self) -> Result<()> {
        for (path, tmp, f) in &self.files {
            f.sync_all().map_err(|e| ZayaError::io(tmp, e))?;
            std::fs::rename(tmp, path).map_err(|e| ZayaError::io(path, e))?;
        }
        self.finished.store(true, std::sync::atomic::Ordering::Release);
        Ok(())
    }

    /// Writes `bytes` at byte `offset` inside tensor `tensor`.
    fn write(&self, tensor: usize, offset: u64, bytes: &[u8]) -> Result<()> {
        let loc = self.locs[tensor];
        let (_, path, f) = &self.files[loc.file];
        let at = loc.offset + offset;
        debug_assert!(at + bytes.len() as u64 <= self.sizes[loc.file]);
        f.write_all_at(bytes, at).map_err(|e| ZayaError::io(path, e))
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        if !self.finished.load(std::sync::atomic::Ordering::Acquire) {
            for (_, tmp, _) in &self.files {
                let _ = std::fs::remove_file(tmp);
            }
        }
    }
}

#[derive(Debug, Clone)]
enum Job {
    /// Rows block `block` of a regular source tensor; `targets` are its output tensors.
    Regular {
        source: usize,
        block: usize,
        targets: Vec<usize>,
        bytes: usize,
    },
    /// One expert matrix of one projection of one MoE layer.
    Expert {
        layer: usize,
        proj: usize,
        expert: usize,
        packed: usize,
        norms: usize,
        bytes: usize,
    },
    /// One block of one float source tensor.
    Source { tensor: usize, block: usize, bytes: usize },
}

impl Job {
    fn bytes(&self) -> usize {
        match self {
            Job::Regular { bytes, .. } | Job::Expert { bytes, .. } | Job::Source { bytes, .. } => *bytes,
        }
    }
}

struct Ctx<'a> {
    spec: &'a SynthSpec,
    sources: &'a [SourceTensor],
    sink: Option<&'a Sink>,
}

fn f16_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|&x| f16::from_f32(x).to_le_bytes()).collect()
}

fn u32_bytes(v: &[u32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

impl Ctx<'_> {
    fn sink(&self) -> Result<&Sink> {
        self.sink
            .ok_or_else(|| ZayaError::InvalidArgument("synth: no output files to write to".into()))
    }

    /// Float values of rows block `block` of regular source tensor `si`: (first row, values).
    fn regular_block(&self, si: usize, block: usize) -> (usize, Vec<f32>) {
        let s = &self.sources[si];
        let (rows, cols) = s.rows_cols();
        let rb = rows_per_block(cols);
        let r0 = block * rb;
        let r1 = rows.min(r0 + rb);
        let mut v = vec![0f32; (r1 - r0) * cols];
        BlockRng::new(self.spec.seed, &s.name, block as u64).fill(&mut v, s.init, r0 * cols, rows * cols);
        (r0, v)
    }

    /// The random stream and init of expert `expert` of projection `proj` in `layer`.
    fn expert_rng(&self, layer: usize, proj: usize, expert: usize) -> (BlockRng, Init, usize, usize) {
        let name = PROJECTIONS[proj];
        let (o, i) = plan::expert_dims(self.spec, name);
        let rng = BlockRng::new(self.spec.seed, &plan::expert_base(layer, name), expert as u64);
        (
            rng,
            Init::Normal {
                std: 1.0 / (i as f32).sqrt(),
            },
            o,
            i,
        )
    }

    fn bundle_job(&self, job: &Job, encoders: &BTreeMap<usize, TqEncoder>) -> Result<()> {
        match job {
            Job::Regular {
                source, block, targets, ..
            } => {
                let s = &self.sources[*source];
                let (_, cols) = s.rows_cols();
                let (r0, v) = self.regular_block(*source, *block);
                if s.is_passthrough() {
                    self.sink()?.write(targets[0], (r0 * cols * 2) as u64, &f16_bytes(&v))
                } else {
                    let g = self.spec.group_size;
                    let rows = v.len() / cols;
                    let enc = affine_quantize_f32(&v, rows, cols, AFFINE_BITS, g)?;
                    let per = 32 / AFFINE_BITS as usize;
                    self.sink()?
                        .write(targets[0], (r0 * cols / per * 4) as u64, &u32_bytes(&enc.weight))?;
                    let sb: Vec<u8> = enc.scales.iter().flat_map(|x| x.to_le_bytes()).collect();
                    let bb: Vec<u8> = enc.biases.iter().flat_map(|x| x.to_le_bytes()).collect();
                    self.sink()?.write(targets[1], (r0 * cols / g * 2) as u64, &sb)?;
                    self.sink()?.write(targets[2], (r0 * cols / g * 2) as u64, &bb)
                }
            }
            Job::Expert {
                layer,
                proj,
                expert,
                packed,
                norms,
                ..
            } => {
                let (mut rng, init, o, i) = self.expert_rng(*layer, *proj, *expert);
                let enc = &encoders[&i];
                let pc = enc.packed_cols();
                let mut row = vec![0f32; i];
                let mut words = vec![0u32; o * pc];
                let mut n = Vec::with_capacity(o);
                for r in 0..o {
                    rng.fill(&mut row, init, r * i, o * i);
                    n.push(enc.encode_row(&mut row, &mut words[r * pc..(r + 1) * pc]));
                }
                self.sink()?
                    .write(*packed, (expert * o * pc * 4) as u64, &u32_bytes(&words))?;
                self.sink()?.write(*norms, (expert * o * 2) as u64, &f16_bytes(&n))
            }
            Job::Source { .. } => unreachable!("source job in a bundle"),
        }
    }

    fn source_job(&self, job: &Job, tensors: &[OutTensor]) -> Result<()> {
        let Job::Source { tensor, block, .. } = job else {
            unreachable!("bundle job in a source")
        };
        let f32_bytes = |v: &[f32]| -> Vec<u8> { v.iter().flat_map(|x| x.to_le_bytes()).collect() };
        match tensors[*tensor].content {
            Content::SourceF32 { source } => {
                let (_, cols) = self.sources[source].rows_cols();
                let (r0, v) = self.regular_block(source, *block);
                self.sink()?.write(*tensor, (r0 * cols * 4) as u64, &f32_bytes(&v))
            }
            Content::SourceFc1 { layer, expert } => {
                let mut off = 0u64;
                for proj in [0, 1] {
                    let (mut rng, init, o, i) = self.expert_rng(layer, proj, expert);
                    let mut v = vec![0f32; o * i];
                    rng.fill(&mut v, init, 0, o * i);
                    let b = f32_bytes(&v);
                    self.sink()?.write(*tensor, off, &b)?;
                    off += b.len() as u64;
                }
                Ok(())
            }
            Content::SourceFc2 { layer, expert } => {
                let (mut rng, init, o, i) = self.expert_rng(layer, 2, expert);
                let mut v = vec![0f32; o * i];
                rng.fill(&mut v, init, 0, o * i);
                self.sink()?.write(*tensor, 0, &f32_bytes(&v))
            }
            _ => unreachable!("non-source tensor in a source"),
        }
    }
}

/// Runs `jobs` on worker threads (in order, each thread taking the next job), with an optional
/// progress bar; stops at the first error. Returns the thread count.
fn run_jobs(jobs: &[Job], opts: &SynthOptions, what: &str, work: impl Fn(&Job) -> Result<()> + Sync) -> Result<usize> {
    let threads = opts
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1))
        .clamp(1, 256);
    let total: u64 = jobs.iter().map(|j| j.bytes() as u64).sum();
    let bar = if opts.progress {
        let b = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
        if let Ok(style) = ProgressStyle::with_template(
            "{msg} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} ({binary_bytes_per_sec}, eta {eta})",
        ) {
            b.set_style(style);
        }
        b.set_message(what.to_string());
        b
    } else {
        ProgressBar::hidden()
    };
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let first_err: Mutex<Option<ZayaError>> = Mutex::new(None);
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| loop {
                if failed.load(Ordering::Relaxed) {
                    break;
                }
                let k = next.fetch_add(1, Ordering::Relaxed);
                let Some(job) = jobs.get(k) else { break };
                match work(job) {
                    Ok(()) => bar.inc(job.bytes() as u64),
                    Err(e) => {
                        failed.store(true, Ordering::Relaxed);
                        let mut g = first_err.lock().unwrap_or_else(|p| p.into_inner());
                        g.get_or_insert(e);
                        break;
                    }
                }
            });
        }
    });
    bar.finish_and_clear();
    match first_err.into_inner().unwrap_or_else(|p| p.into_inner()) {
        Some(e) => Err(e),
        None => Ok(threads),
    }
}
