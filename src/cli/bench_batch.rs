//! `zaya bench --concurrency 1,2,4,8`: continuous-batching throughput. Per concurrency level N:
//! N random prompts prefilled and joined into one batch, then timed batched decode steps —
//! aggregate and per-stream decode tok/s, the distinct experts each MoE layer read per step (with
//! the uniform-routing expectation E·(1−(1−1/E)^N)), the bytes a step reads and the bandwidth bound
//! computed from them (copy bandwidth sampled after each level), the time to first token of a
//! request that joins the busy batch, and the peak RSS. All levels in one run, one process; with
//! `--rounds R` the sweep repeats R times and each figure is the level's median over the rounds.
use std::time::Instant;

use zaya_mlx::config::ZayaConfig;
use zaya_mlx::runtime::engine::{BatchCache, Engine, EngineOptions, SeqEvent};
use zaya_mlx::runtime::memory;
use zaya_mlx::runtime::{GenParams, Zaya};
use zaya_mlx::tools::bench::{self, DecodeBytes};
use zaya_mlx::{Result, ZayaError};

/// Concurrency levels of `--concurrency`.
#[derive(Debug, Clone)]
pub struct Levels(pub Vec<usize>);

/// Parses `1,2,4,8` (each in 1..=64).
pub fn parse_levels(s: &str) -> std::result::Result<Levels, String> {
    let mut out = Vec::new();
    for part in s.split(',') {
        let n: usize = part
            .trim()
            .parse()
            .map_err(|_| format!("`{part}` is not a concurrency level (expected e.g. 1,2,4,8)"))?;
        if n == 0 || n > 64 {
            return Err(format!("concurrency {n} must be in 1..=64"));
        }
        if !out.contains(&n) {
            out.push(n);
        }
    }
    Ok(Levels(out))
}

/// One concurrency level's figures.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Level {
    pub concurrency: usize,
    /// Sweeps of the levels; the figures below are medians over them (peak RSS: the first sweep's).
    pub rounds: usize,
    /// Aggregate tok/s of each round, in order.
    pub aggregate_tps_rounds: Vec<f64>,
    pub steps: usize,
    pub decode_s: f64,
    pub aggregate_tps: f64,
    pub per_stream_tps: f64,
    pub speedup_vs_single_stream: f64,
    /// Mean over the routed steps and MoE layers of the distinct experts read per layer per step.
    pub distinct_experts_per_layer: f64,
    pub uniform_expectation: f64,
    /// Share of token-layer routings that took the MOD skip route.
    pub skip_fraction: f64,
    pub bytes_per_step: u64,
    pub copy_bandwidth_gbs: f64,
    pub bound_aggregate_tps: f64,
    pub pct_of_bound: f64,
    /// Time to first token of a request with the same prompt length joining N−1 running ones.
    pub join_ttft_s: f64,
    pub peak_rss_bytes: Option<u64>,
    pub peak_rss_over_bundle: Option<f64>,
}

/// Per-expert route counts over every routed step of the run (the last entry: the skip route).
pub struct Histogram(pub Vec<u64>);

fn uniform_distinct(experts: usize, n: usize) -> f64 {
    let e = experts as f64;
    e * (1.0 - (1.0 - 1.0 / e).powi(n as i32))
}

/// Bytes one batched step reads: every non-expert weight once, `distinct` experts per MoE layer,
/// every row's state at its context.
fn step_bytes(w: DecodeBytes, cfg: &ZayaConfig, n: usize, distinct: f64, ctx: usize) -> u64 {
    let per_expert = w.experts as f64 / cfg.top_k.max(1) as f64; // one expert in every MoE layer
    let experts = (per_expert * distinct) as u64;
    w.attention
        + w.router
        + w.lm_head_and_embedding
        + w.norms
        + experts
        + n as u64 * bench::state_bytes(cfg, ctx, bench::KV_BYTES_PER_ELEM)
}

/// What every level of a sweep shares.
#[derive(Debug, Clone, Copy)]
pub struct Sweep {
    pub prompt_tokens: usize,
    pub gen_tokens: usize,
    pub seed: u64,
    /// The non-expert, per-expert and state bytes a decode step reads (see `step_bytes`).
    pub weight_bytes: DecodeBytes,
    /// The bundle's size on disk, for the peak-RSS ratio.
    pub bundle_bytes: u64,
    /// Size of the copy that samples the bandwidth after each level.
    pub bandwidth_mib: usize,
}

/// The aggregate decode rate `n` rows could reach if a step read `bytes` at `gbs`.
fn bound_tps(n: usize, gbs: f64, bytes: u64) -> f64 {
    n as f64 * gbs * 1e9 / bytes as f64
}

pub fn run(
    zaya: &Zaya,
    levels: &[usize],
    rounds: usize,
    sweep: &Sweep,
    say: &dyn Fn(String),
) -> Result<(Vec<Level>, Histogram)> {
    let bundle_bytes = sweep.bundle_bytes;
    let model = zaya.model();
    let cfg = model.config().clone();
    if !model.supports_batching() {
        return Err(ZayaError::InvalidArgument(
            "--concurrency needs the fused f32 path (--kernels fused, --dtype float32)".into(),
        ));
    }
    if sweep.gen_tokens < 2 {
        return Err(ZayaError::InvalidArgument("--concurrency needs -g ≥ 2".into()));
    }
    let e = cfg.num_experts;
    let mut hist = vec![0u64; e + 1];
    // per_round[r][i]: level i in round r
    let mut per_round: Vec<Vec<Level>> = Vec::new();
    for round in 0..rounds.max(1) {
        let mut row = Vec::with_capacity(levels.len());
        for &n in levels {
            let level = level_once(zaya, n, sweep, &mut hist)?;
            if rounds > 1 {
                say(format!(
                    "round {}/{rounds}, concurrency {n}: aggregate {:.2} tok/s",
                    round + 1,
                    level.aggregate_tps
                ));
            }
            row.push(level);
        }
        per_round.push(row);
    }
    let median = |v: Vec<f64>| bench::median(&v);
    let mut out: Vec<Level> = Vec::with_capacity(levels.len());
    for (i, &n) in levels.iter().enumerate() {
        let all: Vec<&Level> = per_round.iter().map(|r| &r[i]).collect();
        let pick = |f: fn(&Level) -> f64| median(all.iter().map(|l| f(l)).collect());
        let aggregate_rounds: Vec<f64> = all.iter().map(|l| l.aggregate_tps).collect();
        let aggregate = median(aggregate_rounds.clone());
        let bw = pick(|l| l.copy_bandwidth_gbs);
        let bytes = all[0].bytes_per_step;
        let bound = bound_tps(n, bw, bytes);
        // the first sweep's: later rounds start with every page the earlier levels touched resident
        // (mapped weight pages stay in the resident set), which says nothing about this level
        let peak = all[0].peak_rss_bytes;
        out.push(Level {
            concurrency: n,
            rounds: all.len(),
            aggregate_tps_rounds: aggregate_rounds,
            steps: all[0].steps,
            decode_s: pick(|l| l.decode_s),
            aggregate_tps: aggregate,
            per_stream_tps: aggregate / n as f64,
            speedup_vs_single_stream: 0.0,
            distinct_experts_per_layer: pick(|l| l.distinct_experts_per_layer),
            uniform_expectation: all[0].uniform_expectation,
            skip_fraction: pick(|l| l.skip_fraction),
            bytes_per_step: bytes,
            copy_bandwidth_gbs: bw,
            bound_aggregate_tps: bound,
            pct_of_bound: 100.0 * aggregate / bound,
            join_ttft_s: pick(|l| l.join_ttft_s),
            peak_rss_bytes: peak,
            peak_rss_over_bundle: peak.map(|p| p as f64 / bundle_bytes as f64),
        });
    }
    // relative to the single-stream rate of this run (level 1, or the first level's per-stream rate)
    let single = out
        .iter()
        .find(|l| l.concurrency == 1)
        .map_or_else(|| out.first().map_or(1.0, |l| l.per_stream_tps), |l| l.aggregate_tps);
    for level in &mut out {
        level.speedup_vs_single_stream = level.aggregate_tps / single;
        let n = level.concurrency;
        let peak = level.peak_rss_bytes;
        say(format!(
            "concurrency {n}: aggregate {:.2} tok/s ({:.2}x), per stream {:.2} tok/s, distinct experts/layer/step {:.2} (uniform {:.2}), {:.1} MB/step, bound {:.2} tok/s at {:.1} GB/s = {:.0}%, join TTFT {:.2}s, peak RSS {}{}",
            level.aggregate_tps,
            level.speedup_vs_single_stream,
            level.per_stream_tps,
            level.distinct_experts_per_layer,
            level.uniform_expectation,
            level.bytes_per_step as f64 / 1e6,
            level.bound_aggregate_tps,
            level.copy_bandwidth_gbs,
            level.pct_of_bound,
            level.join_ttft_s,
            peak.map_or("n/a".into(), |p| format!("{:.2} GB = {:.2}x the bundle", p as f64 / 1e9, p as f64 / bundle_bytes as f64)),
            if level.rounds > 1 {
                format!(" (medians of {} rounds; aggregate per round {:?})", level.rounds, level.aggregate_tps_rounds.iter().map(|v| (v * 100.0).round() / 100.0).collect::<Vec<_>>())
            } else {
                String::new()
            },
        ));
    }
    Ok((out, Histogram(hist)))
}

/// One level once: N prompts prefilled alone and joined into one batch, one untimed step, the timed
/// steps, a few routed steps for the statistics (added to `hist`), the join TTFT and the bandwidth.
/// `speedup_vs_single_stream` is left for the caller.
fn level_once(zaya: &Zaya, n: usize, sweep: &Sweep, hist: &mut [u64]) -> Result<Level> {
    let Sweep {
        prompt_tokens,
        gen_tokens,
        seed,
        weight_bytes,
        bundle_bytes,
        bandwidth_mib,
    } = *sweep;
    let model = zaya.model();
    let cfg = model.config().clone();
    let e = cfg.num_experts;
    let rss_reset = memory::reset_peak_rss();
    // N sequences prefilled alone, then one batch
    let mut batch = BatchCache::new(&cfg, model.options().kv_step);
    let mut next = Vec::with_capacity(n);
    for i in 0..n {
        let prompt = bench::random_prompt(cfg.vocab_size, prompt_tokens, seed.wrapping_add(i as u64));
        let mut cache = model.new_cache();
        let l = model.prefill(&prompt, &mut cache, None)?;
        next.push(argmax(&l));
        batch.insert(&cache)?;
    }
    batch.eval()?;
    // one untimed step (first-step allocations), then timed steps
    let step = |batch: &mut BatchCache, next: &mut Vec<u32>, routes: bool| -> Result<Option<Vec<Vec<u32>>>> {
        let s = model.decode_batch(next, batch, routes)?;
        for (b, t) in next.iter_mut().enumerate() {
            *t = argmax_row(&s.logits, b)?;
        }
        Ok(s.routes)
    };
    step(&mut batch, &mut next, false)?;
    let steps = gen_tokens - 1;
    let t = Instant::now();
    for _ in 0..steps {
        step(&mut batch, &mut next, false)?;
    }
    let decode_s = t.elapsed().as_secs_f64();
    // routing statistics from a few more (untimed) steps
    let (mut distinct_sum, mut layers_seen, mut skips, mut routed) = (0usize, 0usize, 0u64, 0u64);
    for _ in 0..4 {
        let routes = step(&mut batch, &mut next, true)?.unwrap_or_default();
        for layer in &routes {
            let mut seen = vec![false; e];
            for &r in layer {
                let r = r as usize;
                hist[r.min(e)] += 1;
                routed += 1;
                if r < e {
                    seen[r] = true;
                } else {
                    skips += 1;
                }
            }
            distinct_sum += seen.iter().filter(|&&s| s).count();
            layers_seen += 1;
        }
    }
    let distinct = distinct_sum as f64 / layers_seen.max(1) as f64;
    let peak = if rss_reset {
        memory::process_rss().map(|r| r.1)
    } else {
        None
    };
    drop(batch);
    let ttft = join_ttft(zaya, n, prompt_tokens, seed)?;
    let bw = bench::copy_bandwidth_gbs(bandwidth_mib << 20, 3);
    let ctx = bench::mean_decode_context(prompt_tokens, gen_tokens);
    let bytes = step_bytes(weight_bytes, &cfg, n, distinct, ctx);
    let aggregate = (n * steps) as f64 / decode_s;
    let bound = bound_tps(n, bw, bytes);
    Ok(Level {
        concurrency: n,
        rounds: 1,
        aggregate_tps_rounds: vec![aggregate],
        steps,
        decode_s,
        aggregate_tps: aggregate,
        per_stream_tps: steps as f64 / decode_s,
        speedup_vs_single_stream: 0.0,
        distinct_experts_per_layer: distinct,
        uniform_expectation: uniform_distinct(e, n),
        skip_fraction: skips as f64 / routed.max(1) as f64,
        bytes_per_step: bytes,
        copy_bandwidth_gbs: bw,
        bound_aggregate_tps: bound,
        pct_of_bound: 100.0 * aggregate / bound,
        join_ttft_s: ttft,
        peak_rss_bytes: peak,
        peak_rss_over_bundle: peak.map(|p| p as f64 / bundle_bytes as f64),
    })
}

/// Time to first token of a request that joins `n − 1` running sequences (an idle engine for 1).
fn join_ttft(zaya: &Zaya, n: usize, prompt_tokens: usize, seed: u64) -> Result<f64> {
    let cfg = zaya.model().config();
    let mut engine = Engine::new(
        zaya,
        EngineOptions {
            max_batch: n,
            prefill_chunk: None,
        },
    )?;
    let busy = GenParams {
        max_tokens: None,
        ignore_eos: true,
        ..GenParams::default()
    };
    for i in 0..n - 1 {
        engine.submit(
            bench::random_prompt(cfg.vocab_size, prompt_tokens, seed.wrapping_add(1000 + i as u64)),
            &busy,
        )?;
    }
    while engine.running() < n - 1 {
        for (_, ev) in engine.step() {
            if let SeqEvent::Failed(e) = ev {
                return Err(e);
            }
        }
    }
    let joiner = GenParams {
        max_tokens: Some(1),
        ignore_eos: true,
        ..GenParams::default()
    };
    let t = Instant::now();
    let id = engine.submit(
        bench::random_prompt(cfg.vocab_size, prompt_tokens, seed.wrapping_add(999)),
        &joiner,
    )?;
    loop {
        for (sid, ev) in engine.step() {
            match ev {
                SeqEvent::Token { .. } if sid == id => return Ok(t.elapsed().as_secs_f64()),
                SeqEvent::Failed(e) => return Err(e),
                _ => {}
            }
        }
    }
}

fn argmax(l: &mlx_rs::Array) -> u32 {
    let v = l.as_slice::<f32>();
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best as u32
}

fn argmax_row(l: &mlx_rs::Array, b: usize) -> Result<u32> {
    use mlx_rs::ops::indexing::IndexOp;
    let r = l.index(b as i32..b as i32 + 1);
    r.eval()?;
    Ok(argmax(&r))
}
