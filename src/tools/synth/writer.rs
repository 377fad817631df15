//! The parallel block writer behind `zaya synth`: pre-sized shard files written at planned offsets
//! (`Sink`), the jobs that generate, encode and write one block or expert matrix each (`Job`, `Ctx`),
//! and the worker threads with their progress bar that run them (`run_jobs`).
use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;

use half::f16;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::gen::{rows_per_block, BlockRng};
use super::plan::{self, Content, FilePlan, Init, Loc, OutTensor, SourceTensor, PROJECTIONS};
use super::spec::{SynthSpec, AFFINE_BITS};
use super::SynthOptions;
use crate::error::{Result, ZayaError};
use crate::tools::encode::{affine_quantize_f32, TqEncoder};

/// Pre-sized output files with their headers; tensor bytes are written at planned offsets.
pub(super) struct Sink {
    /// (final path, temporary path, file): shards are written under a temporary name beside the
    /// final one and renamed by [`Sink::finish`]; an unfinished sink removes them.
    files: Vec<(PathBuf, PathBuf, File)>,
    locs: Vec<Loc>,
    sizes: Vec<u64>,
    finished: std::sync::atomic::AtomicBool,
}

impl Sink {
    pub(super) fn create(dir: &Path, plans: &[FilePlan], locs: &[Loc]) -> Result<Self> {
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
    pub(super) fn finish(&self) -> Result<()> {
        for (path, tmp, f) in &self.files {
            f.sync_all().map_err(|e| ZayaError::io(tmp, e))?;
            std::fs::rename(tmp, path).map_err(|e| ZayaError::io(path, e))?;
        }
        self.finished.store(true, std::sync::atomic::Ordering::Release);
        Ok(())
    }

    /// Writes `bytes` at byte `offset` inside tensor `tensor`.
    pub(super) fn write(&self, tensor: usize, offset: u64, bytes: &[u8]) -> Result<()> {
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
pub(super) enum Job {
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

pub(super) struct Ctx<'a> {
    pub(super) spec: &'a SynthSpec,
    pub(super) sources: &'a [SourceTensor],
    pub(super) sink: Option<&'a Sink>,
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
    pub(super) fn regular_block(&self, si: usize, block: usize) -> (usize, Vec<f32>) {
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
    pub(super) fn expert_rng(&self, layer: usize, proj: usize, expert: usize) -> (BlockRng, Init, usize, usize) {
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

    pub(super) fn bundle_job(&self, job: &Job, encoders: &BTreeMap<usize, TqEncoder>) -> Result<()> {
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

    pub(super) fn source_job(&self, job: &Job, tensors: &[OutTensor]) -> Result<()> {
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
pub(super) fn run_jobs(
    jobs: &[Job],
    opts: &SynthOptions,
    what: &str,
    work: impl Fn(&Job) -> Result<()> + Sync,
) -> Result<usize> {
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
