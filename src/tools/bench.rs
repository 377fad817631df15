//! End-to-end benchmark support (`zaya bench`): random-prompt trials in the style of
//! `mlx_lm.benchmark` (prefill, greedy decode with no EOS stop, time to first token, peak process
//! and MLX memory), the graph size of one decode step, and the memory-bandwidth bound of one decode
//! token (bytes it must read, from the bundle's stored formats, over a copy bandwidth measured on
//! the same machine in the same run). Machine facts (CPU, cores, RAM, load average) for reports.
use std::time::Instant;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::bundle::CanonicalWeights;
use crate::config::ZayaConfig;
use crate::error::{Result, ZayaError};
use crate::model::cache::ModelCache;
use crate::model::ZayaModel;
use crate::runtime::memory::{load_average, mlx_memory, process_rss, reset_mlx_peak, reset_peak_rss, rss_by_kind};

/// Bytes one decode token must read, by category.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct DecodeBytes {
    /// Attention weights of every attention half-layer (projections, conv, temp).
    pub attention: u64,
    /// Router weights of every MoE half-layer.
    pub router: u64,
    /// The routed experts actually used: top-k experts' gate/up/down per MoE layer.
    pub experts: u64,
    /// The LM head (the tied embedding matrix read in full) plus one embedding row.
    pub lm_head_and_embedding: u64,
    /// Norms and residual-scale vectors.
    pub norms: u64,
    /// KV cache and CCA state (conv_state, prev_hs) at the given context length.
    pub state: u64,
}

impl DecodeBytes {
    /// Sum of every category.
    pub fn total(&self) -> u64 {
        self.attention + self.router + self.experts + self.lm_head_and_embedding + self.norms + self.state
    }
}

/// Counts the bytes one decode token reads when its attention sees `ctx` positions (the cache
/// length after appending the token): every non-expert tensor in full at its stored size, `top_k /
/// num_experts` of each stacked expert tensor (top-k experts' gate/up/down), the tied embedding
/// matrix in full for the LM head plus one embedding row for the lookup, and the state of every
/// attention layer (see [`state_bytes`]). Writes (one new K/V row, the new states, the logits) are
/// not counted.
pub fn decode_bytes(w: &CanonicalWeights, cfg: &ZayaConfig, ctx: usize, kv_bytes_per_elem: u64) -> DecodeBytes {
    let mut b = DecodeBytes::default();
    let vocab = cfg.vocab_size as u64;
    let tied = !w.tensors.keys().any(|k| k.starts_with("lm_head."));
    for (name, arr) in &w.tensors {
        let n = arr.nbytes() as u64;
        if name.contains(".zaya_block.experts.") {
            b.experts += n * cfg.top_k as u64 / cfg.num_experts as u64;
        } else if name.starts_with("model.embed_tokens.") {
            // the lookup reads one row; a tied LM head reads the whole matrix
            let row = n / vocab;
            b.lm_head_and_embedding += row + if tied { n } else { 0 };
        } else if name.starts_with("lm_head.") {
            b.lm_head_and_embedding += n;
        } else if name.contains(".zaya_block.router.") {
            b.router += n;
        } else if name.contains(".self_attn.") {
            b.attention += n;
        } else {
            b.norms += n;
        }
    }
    b.state = state_bytes(cfg, ctx, kv_bytes_per_elem);
    b
}

/// State bytes one decode token reads at `ctx` attended positions, over all attention layers:
/// keys and values `2·Hk·ctx·D·kv_bytes_per_elem`, the f32 conv state `C·S·4` and the f32
/// `prev_hs` `H·4`.
pub fn state_bytes(cfg: &ZayaConfig, ctx: usize, kv_bytes_per_elem: u64) -> u64 {
    let attn_layers = cfg.num_attention_layers() as u64;
    let kv = 2 * cfg.num_kv_heads as u64 * ctx as u64 * cfg.head_dim as u64 * kv_bytes_per_elem;
    let cca = (cfg.conv_channels() * cfg.conv_state_len() + cfg.hidden_size) as u64 * 4;
    attn_layers * (kv + cca)
}

/// Bytes per element of our KV cache (f32 keys and values, whatever the compute dtype).
pub const KV_BYTES_PER_ELEM: u64 = 4;

/// Measures memory copy bandwidth in GB/s (10⁹ bytes/s), counting bytes read plus bytes written,
/// as the median of `reps` copies of a `bytes`-sized buffer (after one warm-up copy), split over
/// every available core (as a decode step's kernels are).
pub fn copy_bandwidth_gbs(bytes: usize, reps: usize) -> f64 {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    copy_bandwidth_gbs_threads(bytes, reps, threads)
}

/// [`copy_bandwidth_gbs`] with `threads` copying disjoint slices at once.
pub fn copy_bandwidth_gbs_threads(bytes: usize, reps: usize, threads: usize) -> f64 {
    let threads = threads.max(1);
    let n = (bytes / 8).max(threads);
    let src: Vec<u64> = (0..n as u64).collect();
    let mut dst = vec![0u64; n];
    let chunk = n.div_ceil(threads);
    let copy = |dst: &mut [u64]| {
        std::thread::scope(|s| {
            for (d, sr) in dst.chunks_mut(chunk).zip(src.chunks(chunk)) {
                s.spawn(move || {
                    d.copy_from_slice(std::hint::black_box(sr));
                    std::hint::black_box(d);
                });
            }
        });
    };
    median_rate_gbs(reps, 2 * n * 8, || copy(&mut dst))
}

/// Measures read bandwidth in GB/s: the median of `reps` passes summing a `bytes`-sized buffer,
/// split over every available core (decode mostly reads; a copy also writes).
pub fn read_bandwidth_gbs(bytes: usize, reps: usize) -> f64 {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let n = (bytes / 8).max(threads);
    let src: Vec<u64> = (0..n as u64).collect();
    let chunk = n.div_ceil(threads);
    let pass = || {
        std::thread::scope(|s| {
            for c in src.chunks(chunk) {
                s.spawn(move || {
                    // four independent sums so the adds are not one dependency chain
                    let mut acc = [0u64; 4];
                    for q in c.chunks_exact(4) {
                        for k in 0..4 {
                            acc[k] = acc[k].wrapping_add(q[k]);
                        }
                    }
                    std::hint::black_box(acc);
                });
            }
        });
    };
    median_rate_gbs(reps, n * 8, pass)
}

/// One untimed warm-up `pass`, then the median over `reps` timed passes of `bytes` / time, in GB/s.
fn median_rate_gbs(reps: usize, bytes: usize, mut pass: impl FnMut()) -> f64 {
    pass();
    let mut rates: Vec<f64> = (0..reps.max(1))
        .map(|_| {
            let t = Instant::now();
            pass();
            bytes as f64 / t.elapsed().as_secs_f64() / 1e9
        })
        .collect();
    rates.sort_by(|a, b| a.total_cmp(b));
    rates[rates.len() / 2]
}

/// What a benchmark report says about the machine.
#[derive(Debug, Clone, serde::Serialize)]
pub struct MachineInfo {
    /// `model name` from /proc/cpuinfo, with the family and model numbers when it has them
    /// ("AMD EPYC (family 26, model 2)"): the same name covers CPU generations of different speed.
    pub cpu: String,
    /// `cpu family` from /proc/cpuinfo.
    pub cpu_family: Option<u32>,
    /// `model` from /proc/cpuinfo.
    pub cpu_model: Option<u32>,
    /// Cores this process may use.
    pub cores: usize,
    /// MemTotal from /proc/meminfo, bytes.
    pub mem_total_bytes: u64,
    /// Instruction set of our CPU kernels.
    pub kernel_isa: String,
}

/// The CPU of /proc/cpuinfo's text (its first processor): the description, family and model.
pub fn cpu_from_cpuinfo(text: &str) -> (String, Option<u32>, Option<u32>) {
    let field = |key: &str| {
        text.lines()
            .filter_map(|l| l.split_once(':'))
            .find(|(k, _)| k.trim() == key)
            .map(|(_, v)| v.trim().to_string())
    };
    let number = |key: &str| field(key).and_then(|v| v.parse::<u32>().ok());
    let (family, model) = (number("cpu family"), number("model"));
    let name = field("model name").unwrap_or_else(|| "unknown".into());
    let cpu = match (family, model) {
        (Some(f), Some(m)) => format!("{name} (family {f}, model {m})"),
        _ => name,
    };
    (cpu, family, model)
}

/// Reads [`MachineInfo`] (fields it cannot read are "unknown" / 0 / `None`).
pub fn machine_info() -> MachineInfo {
    let (cpu, cpu_family, cpu_model) = std::fs::read_to_string("/proc/cpuinfo")
        .map(|s| cpu_from_cpuinfo(&s))
        .unwrap_or_else(|_| ("unknown".into(), None, None));
    let mem_total_bytes = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            let l = s.lines().find(|l| l.starts_with("MemTotal:"))?.to_string();
            l.split_whitespace().nth(1)?.parse::<u64>().ok()
        })
        .map_or(0, |kb| kb * 1024);
    MachineInfo {
        cpu,
        cpu_family,
        cpu_model,
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        mem_total_bytes,
        kernel_isa: format!("{:?}", crate::ext::kernel_isa()),
    }
}

/// `n` prompt ids drawn uniformly from `0..vocab` by a ChaCha8 generator seeded with `seed`
/// (mlx_lm.benchmark draws random ids too; EOS has no special role in a benchmark).
pub fn random_prompt(vocab: usize, n: usize, seed: u64) -> Vec<u32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..n).map(|_| rng.gen_range(0..vocab as u32)).collect()
}

/// Index of the largest logit (ties → the lowest id, as MLX's argmax). `logits` is f32 `[1, V]`,
/// evaluated.
fn greedy(logits: &mlx_rs::Array) -> Result<u32> {
    let v = logits.as_slice::<f32>();
    let mut best = 0usize;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    Ok(best as u32)
}

/// Graph size of one decode step (see [`ZayaModel::decode_graph_stats`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct GraphProbe {
    /// Primitive nodes one decode step evaluates.
    pub nodes: i64,
    /// Of which dtype casts (`AsType`).
    pub as_type: i64,
    /// Cache offset of the probed step (tokens already in the cache).
    pub offset: usize,
}

/// One timed run: prefill of the prompt, then greedy decode (no EOS stop).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Trial {
    pub prompt_tokens: usize,
    pub generation_tokens: usize,
    /// Prompt tokens / time to first token (mlx_lm's `prompt_tps`).
    pub prompt_tps: f64,
    /// Decode steps / decode time: (generated − 1) tokens after the first, over the time from the
    /// first token to the last (the first token comes from the prefill).
    pub generation_tps: f64,
    /// Time to first token: prefill + picking the first token, seconds.
    pub ttft_s: f64,
    /// Time from the first token to the last, seconds.
    pub decode_s: f64,
    /// Whole trial (fresh cache, prefill, decode), seconds.
    pub total_time_s: f64,
    /// Peak process RSS during the trial (VmHWM after a reset; the lifetime peak where the reset is
    /// unavailable), bytes.
    pub peak_rss_bytes: Option<u64>,
    /// MLX allocator peak during the trial, bytes.
    pub peak_mlx_bytes: u64,
    /// Resident (anonymous, file-backed) bytes at the end of the trial.
    pub rss_anon_file_bytes: Option<(u64, u64)>,
    /// Load average (1, 5, 15 min) when the trial started.
    pub load_average: Option<[f64; 3]>,
    /// The greedy tokens generated (the first from the prefill).
    pub generated: Vec<u32>,
    /// Fraction of (token, MoE layer) routings, prefill and decode, that took the MOD skip route
    /// (those read no expert weights, which the bound does not discount).
    pub skip_fraction: f64,
}

/// Runs one trial on a fresh cache. With `probe`, also measures the graph of the second decode
/// step (outside the timed region: the decode clock is paused around it).
pub fn run_trial(
    model: &ZayaModel,
    prompt: &[u32],
    gen_tokens: usize,
    probe: Option<&mut Option<GraphProbe>>,
) -> Result<Trial> {
    check_lengths(model.config(), prompt.len(), gen_tokens)?;
    let load_average = load_average();
    reset_peak_rss();
    reset_mlx_peak();
    let t_start = Instant::now();
    let mut cache: ModelCache = model.new_cache();
    let logits = model.prefill(prompt, &mut cache, None)?;
    let mut tok = greedy(&logits)?;
    let t_first = Instant::now();
    let mut generated = Vec::with_capacity(gen_tokens);
    generated.push(tok);
    let mut paused = 0.0f64;
    let mut probe = probe;
    for i in 1..gen_tokens {
        if i == 2 {
            if let Some(p) = probe.as_deref_mut() {
                let t = Instant::now();
                let st = model.decode_graph_stats(tok, &cache)?;
                *p = Some(GraphProbe {
                    nodes: st.nodes,
                    as_type: st.casts,
                    offset: cache.offset(),
                });
                paused += t.elapsed().as_secs_f64();
            }
        }
        let logits = model.decode_step(tok, &mut cache)?;
        tok = greedy(&logits)?;
        generated.push(tok);
    }
    let t_end = Instant::now();
    let ttft_s = (t_first - t_start).as_secs_f64();
    let decode_s = (t_end - t_first).as_secs_f64() - paused;
    let peak_rss_bytes = process_rss().map(|(_, peak)| peak);
    let rss_anon_file_bytes = rss_by_kind();
    let routed: u64 = cache.routed_counts().iter().sum();
    let skipped: u64 = cache.skip_counts().iter().sum();
    Ok(Trial {
        prompt_tokens: prompt.len(),
        generation_tokens: gen_tokens,
        prompt_tps: prompt.len() as f64 / ttft_s,
        generation_tps: if gen_tokens > 1 {
            (gen_tokens - 1) as f64 / decode_s
        } else {
            f64::NAN
        },
        ttft_s,
        decode_s,
        total_time_s: (t_end - t_start).as_secs_f64() - paused,
        peak_rss_bytes,
        peak_mlx_bytes: mlx_memory().1,
        rss_anon_file_bytes,
        load_average,
        generated,
        skip_fraction: if routed > 0 {
            skipped as f64 / routed as f64
        } else {
            0.0
        },
    })
}

/// Checks a benchmark's prompt and generation lengths against the model's context limit.
pub fn check_lengths(cfg: &ZayaConfig, prompt_tokens: usize, gen_tokens: usize) -> Result<()> {
    if prompt_tokens == 0 {
        return Err(ZayaError::InvalidArgument(
            "the prompt must have at least one token (-p)".into(),
        ));
    }
    if gen_tokens < 2 {
        return Err(ZayaError::InvalidArgument(
            "generate at least 2 tokens (-g): the first comes from the prefill, the decode rate needs a decode step"
                .into(),
        ));
    }
    // the last generated token is never fed back
    let total = prompt_tokens.saturating_add(gen_tokens - 1);
    if total > cfg.max_position_embeddings {
        return Err(ZayaError::ContextOverflow {
            tokens: total,
            limit: cfg.max_position_embeddings,
        });
    }
    Ok(())
}

/// Mean and median of the trials' figures.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct Summary {
    pub prompt_tps: f64,
    pub generation_tps: f64,
    pub ttft_s: f64,
    pub total_time_s: f64,
    /// Largest peak RSS of any trial (both for the mean and the median summary), bytes.
    pub peak_rss_bytes: Option<u64>,
    /// Largest MLX peak of any trial, bytes.
    pub peak_mlx_bytes: u64,
}

/// Median of a non-empty slice (mean of the two middle values for an even count).
pub fn median(xs: &[f64]) -> f64 {
    let mut v: Vec<f64> = xs.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn mean(xs: &[f64]) -> f64 {
    xs.iter().sum::<f64>() / xs.len() as f64
}

/// (mean, median) summaries of `trials`.
pub fn summarize(trials: &[Trial]) -> (Summary, Summary) {
    let col = |f: fn(&Trial) -> f64| -> Vec<f64> { trials.iter().map(f).collect() };
    let peak_rss_bytes = trials.iter().filter_map(|t| t.peak_rss_bytes).max();
    let peak_mlx_bytes = trials.iter().map(|t| t.peak_mlx_bytes).max().unwrap_or(0);
    let make = |agg: fn(&[f64]) -> f64| Summary {
        prompt_tps: agg(&col(|t| t.prompt_tps)),
        generation_tps: agg(&col(|t| t.generation_tps)),
        ttft_s: agg(&col(|t| t.ttft_s)),
        total_time_s: agg(&col(|t| t.total_time_s)),
        peak_rss_bytes,
        peak_mlx_bytes,
    };
    (make(mean), make(median))
}

/// The bandwidth bound of a decode run.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Bound {
    /// Bytes one decode token reads at the mean decode context.
    pub bytes: DecodeBytes,
    pub bytes_per_token: u64,
    /// Attended positions the bytes were counted at: the mean over the decode steps of a trial.
    pub context: usize,
    /// Measured copy bandwidth, GB/s (read + written bytes).
    pub bandwidth_gbs: f64,
    /// `bandwidth / bytes_per_token`.
    pub tok_per_s: f64,
}

/// Mean attended positions over the decode steps of a trial with `p` prompt and `g` generated
/// tokens: step i (1 ≤ i < g) feeds token p+i−1 and attends p+i positions, so the mean is p + g/2.
pub fn mean_decode_context(p: usize, g: usize) -> usize {
    p + g / 2
}

/// The bound for `weights_bytes` (the per-token bytes at context 0) plus the state at `context`,
/// over `bandwidth_gbs`.
pub fn bound(weights_bytes: DecodeBytes, cfg: &ZayaConfig, context: usize, bandwidth_gbs: f64) -> Bound {
    let bytes = DecodeBytes {
        state: state_bytes(cfg, context, KV_BYTES_PER_ELEM),
        ..weights_bytes
    };
    let total = bytes.total();
    Bound {
        bytes,
        bytes_per_token: total,
        context,
        bandwidth_gbs,
        tok_per_s: bandwidth_gbs * 1e9 / total as f64,
    }
}

/// Reads every parameter of `model` once (a sum per tensor, evaluated one at a time), so every page
/// of the memory-mapped bundle becomes resident: the worst case for the process's RSS.
pub fn touch_weights(model: &crate::model::ZayaModel) -> Result<()> {
    use mlx_rs::module::ModuleParameters;
    for (_, p) in model.parameters().flatten() {
        p.sum(None)?.eval()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_family_and_model_are_read_apart_from_the_model_name() {
        let text = "processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 26\nmodel\t\t: 2\n\
                    model name\t: AMD EPYC\nstepping\t: 1\n\nprocessor\t: 1\ncpu family\t: 25\n";
        assert_eq!(
            cpu_from_cpuinfo(text),
            ("AMD EPYC (family 26, model 2)".to_string(), Some(26), Some(2))
        );
        // ARM's /proc/cpuinfo has neither: the name alone, or "unknown"
        assert_eq!(
            cpu_from_cpuinfo("processor\t: 0\nBogoMIPS\t: 50.00\n"),
            ("unknown".to_string(), None, None)
        );
        assert_eq!(
            cpu_from_cpuinfo("model name\t: Some CPU\nmodel\t\t: x\n"),
            ("Some CPU".to_string(), None, None)
        );
    }

    #[test]
    fn copy_bandwidth_is_positive_and_finite() {
        let bw = copy_bandwidth_gbs(8 << 20, 3);
        assert!(bw.is_finite() && bw > 0.0);
        let bw1 = copy_bandwidth_gbs_threads(8 << 20, 3, 1);
        assert!(bw1.is_finite() && bw1 > 0.0);
        let rd = read_bandwidth_gbs(8 << 20, 3);
        assert!(rd.is_finite() && rd > 0.0);
    }

    #[test]
    fn rss_is_read() {
        let (cur, peak) = process_rss().unwrap();
        assert!(cur > 0 && peak >= cur);
        let (anon, file) = rss_by_kind().unwrap();
        assert!(anon > 0 && file > 0);
    }

    #[test]
    fn rss_peak_reset_drops_a_freed_peak() {
        // a 256 MiB buffer touched and freed raises the peak; a reset brings it back near RSS
        let big = vec![1u8; 256 << 20];
        std::hint::black_box(&big);
        drop(big);
        let (_, peak_before) = process_rss().unwrap();
        if reset_peak_rss() {
            let (cur, peak) = process_rss().unwrap();
            assert!(peak < peak_before, "peak {peak} not reset (before {peak_before})");
            assert!(peak >= cur);
        }
    }

    #[test]
    fn median_and_prompt() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        let a = random_prompt(100, 50, 7);
        assert_eq!(a, random_prompt(100, 50, 7));
        assert_ne!(a, random_prompt(100, 50, 8));
        assert!(a.iter().all(|&x| x < 100));
        assert_eq!(mean_decode_context(10, 4), 12);
    }

    #[test]
    fn load_average_is_read() {
        let l = load_average().unwrap();
        assert!(l.iter().all(|x| x.is_finite() && *x >= 0.0));
    }
}
