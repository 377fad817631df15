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
//!
//! The output directory checks and manifest live in `outdir`, the block writer and its worker
//! threads in `writer`.
pub mod files;
pub mod gen;
mod outdir;
pub mod plan;
pub mod spec;
pub mod tokenizer;
mod writer;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use safetensors::Dtype;

pub use outdir::MANIFEST_FILE;
pub use spec::{SynthSpec, AFFINE_BITS, PRESETS};

use crate::error::{Result, ZayaError};
use crate::tools::encode::{codebook_f32, random_signs, TqEncoder};
use gen::num_blocks;
use outdir::{prepare_out_dir, write_manifest};
use plan::{Content, PROJECTIONS};
use writer::{run_jobs, Ctx, Job, Sink};

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
