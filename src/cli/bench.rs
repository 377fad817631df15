//! `zaya bench`: prefill and decode speed on random prompt ids, in the style of `mlx_lm.benchmark`
//! (one warm-up trial, then `-n` trials; every trial generates exactly `-g` tokens, EOS never
//! stops it), with time to first token, peak process RSS and MLX peak per trial, the graph size of
//! one decode step, and the memory-bandwidth bound (bytes a decode token reads over a copy
//! bandwidth measured in the same run). `--json` prints everything as one JSON object.
use std::time::Instant;

use zaya_mlx::bundle::summary::human_bytes;
use zaya_mlx::bundle::Bundle;
use zaya_mlx::model::ZayaModel;
use zaya_mlx::runtime::memory;
use zaya_mlx::tools::bench::{self, Bound, GraphProbe, MachineInfo, Summary, Trial};
use zaya_mlx::{Result, ZayaError};

use super::logits::RunOpts;

const BENCH_HELP: &str = "\
One warm-up trial, then -n trials of -p random prompt ids and -g greedy tokens (EOS never stops
them); prints prefill and decode tok/s, time to first token, peak memory, the graph size of a decode
step and the decode rate as a share of the memory-bandwidth bound measured in the same run, and the
load average (run it on a quiet machine). --prompt-cache and --draft measure state snapshots.

Examples:
  zaya bench --model /work/zaya1-8b-synth -p 128 -g 32 -n 3
  zaya bench --model /work/zaya1-8b-synth --prompt-cache -p 2000 -n 3 --json";

#[derive(clap::Args)]
#[command(after_help = BENCH_HELP)]
pub struct Args {
    #[command(flatten)]
    pub run: RunOpts,
    /// Prompt tokens (random ids).
    #[arg(short = 'p', long = "prompt-tokens", default_value_t = 512, allow_negative_numbers = true,
          value_parser = super::common::parse_count)]
    pub prompt_tokens: usize,
    /// Tokens generated per trial (greedy; the first comes from the prefill).
    #[arg(short = 'g', long = "generation-tokens", default_value_t = 128, allow_negative_numbers = true,
          value_parser = super::common::parse_count)]
    pub generation_tokens: usize,
    /// Timed trials (at most 1000).
    #[arg(short = 'n', long = "num-trials", default_value_t = 5, allow_negative_numbers = true,
          value_parser = super::common::parse_count)]
    pub trials: usize,
    /// Untimed warm-up trials before the timed ones (at most 100).
    #[arg(long, default_value_t = 1, allow_negative_numbers = true, value_parser = super::common::parse_count)]
    pub warmup: usize,
    /// Seed of the random prompt ids.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Buffer size of the bandwidth measurements, MiB (copy: two buffers of this size; read: one;
    /// allocated between or after the trials, never during one).
    #[arg(long, default_value_t = 512, value_name = "MIB", allow_negative_numbers = true,
          value_parser = super::common::parse_count)]
    pub bandwidth_mib: usize,
    /// Read every weight once before the trials, as a long generation does once every expert has
    /// been used: the peak RSS then shows the worst case (the whole bundle resident), not only the
    /// pages that these trials touch.
    #[arg(long)]
    pub touch_all: bool,
    /// Instead of the decode trials: prefill -p tokens, save the state to a prompt-cache file, load
    /// it back from disk, and compare the times (checks that the loaded state continues exactly).
    #[arg(long)]
    pub prompt_cache: bool,
    /// Instead of the decode trials: decode -g tokens plainly and with speculative n-gram drafts on
    /// a prompt whose greedy continuation repeats (random ids + the model's own continuation).
    #[arg(long, value_name = "ngram")]
    pub draft: Option<String>,
    /// Draft tokens per verify step (with --draft).
    #[arg(long, value_name = "K", default_value_t = 4)]
    pub num_draft_tokens: usize,
    /// Instead of the single-stream trials: continuous batching at these concurrency levels
    /// (e.g. 1,2,4,8): N prompts of -p random ids decode -g tokens together; aggregate and
    /// per-stream tok/s, distinct experts per MoE layer per step, bytes per step and the bound, the
    /// time to first token of a request joining the busy batch, peak RSS.
    #[arg(long, value_name = "N,N,...", value_parser = super::bench_batch::parse_levels)]
    pub concurrency: Option<super::bench_batch::Levels>,
    /// With --concurrency: sweep the levels this many times in turn and report each level's median
    /// (the host's drift then reaches every level alike, and the ratios compare like with like).
    #[arg(long, value_name = "R", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=20))]
    pub rounds: u32,
    /// Print one JSON object (progress goes to stderr).
    #[arg(long)]
    pub json: bool,
}

const GB: f64 = 1e9;

fn fmt_gb(b: Option<u64>) -> String {
    b.map_or("n/a".into(), |b| format!("{:.3} GB", b as f64 / GB))
}

fn fmt_load(l: Option<[f64; 3]>) -> String {
    l.map_or("n/a".into(), |l| format!("{:.2}", l[0]))
}

fn trial_line(label: &str, t: &Trial) -> String {
    format!(
        "{label}:  prompt_tps={:.3}, generation_tps={:.3}, ttft={:.3}s, peak_memory={} (RSS), mlx_peak={}, total_time={:.3}s, load_avg={}",
        t.prompt_tps,
        t.generation_tps,
        t.ttft_s,
        fmt_gb(t.peak_rss_bytes),
        fmt_gb(Some(t.peak_mlx_bytes)),
        t.total_time_s,
        fmt_load(t.load_average),
    )
}

fn summary_line(label: &str, s: &Summary) -> String {
    format!(
        "{label}: prompt_tps={:.3}, generation_tps={:.3}, ttft={:.3}s, peak_memory={} (RSS), mlx_peak={}",
        s.prompt_tps,
        s.generation_tps,
        s.ttft_s,
        fmt_gb(s.peak_rss_bytes),
        fmt_gb(Some(s.peak_mlx_bytes))
    )
}

pub fn run(args: Args) -> Result<i32> {
    if args.trials == 0 {
        return Err(ZayaError::InvalidArgument("-n/--num-trials must be at least 1".into()));
    }
    if args.trials > 1000 {
        return Err(ZayaError::InvalidArgument(format!(
            "-n/--num-trials {} is more than 1000",
            args.trials
        )));
    }
    if args.warmup > 100 {
        return Err(ZayaError::InvalidArgument(format!(
            "--warmup {} is more than 100",
            args.warmup
        )));
    }
    if args.bandwidth_mib == 0 || args.bandwidth_mib > 16 << 10 {
        return Err(ZayaError::InvalidArgument(format!(
            "--bandwidth-mib {} must be in 1..=16384",
            args.bandwidth_mib
        )));
    }
    // the copy measurement holds two buffers of this size: refuse what the machine cannot hold
    if let Some(avail) = memory::mem_available_bytes() {
        let need = 2 * ((args.bandwidth_mib as u64) << 20);
        if need > avail / 2 {
            return Err(ZayaError::InvalidArgument(format!(
                "--bandwidth-mib {}: the copy measurement needs {:.1} GB, more than half of the {:.1} GB of memory available",
                args.bandwidth_mib,
                need as f64 / 1e9,
                avail as f64 / 1e9
            )));
        }
    }
    let options = args.run.model_options()?;
    let (p, g) = (args.prompt_tokens, args.generation_tokens);
    let say = |s: String| {
        if args.json {
            eprintln!("{s}");
        } else {
            println!("{s}");
        }
    };

    let t0 = Instant::now();
    let dir = args.run.dir()?;
    let bundle = Bundle::open(&dir)?;
    let cfg = bundle.config.clone();
    bench::check_lengths(&cfg, p, g)?;
    let weight_bytes = bench::decode_bytes(&bundle.weights, &cfg, 0, bench::KV_BYTES_PER_ELEM);
    let summary = bundle.summary.clone();
    let model = ZayaModel::from_bundle(bundle, options)?;
    let load_s = t0.elapsed().as_secs_f64();
    if let Some(levels) = &args.concurrency {
        let mut levels = levels.0.clone();
        levels.sort_unstable();
        let zaya = zaya_mlx::runtime::Zaya::from_parts(model, None, None);
        if args.touch_all {
            bench::touch_weights(zaya.model())?;
        }
        say(format!(
            "Model: {} ({} on disk), load {load_s:.2}s; continuous batching, prompt_tokens={p}, generation_tokens={g}, seed {}, load_avg={}",
            dir.display(),
            human_bytes(summary.file_bytes),
            args.seed,
            fmt_load(memory::load_average())
        ));
        let sweep = super::bench_batch::Sweep {
            prompt_tokens: p,
            gen_tokens: g,
            seed: args.seed,
            weight_bytes,
            bundle_bytes: summary.file_bytes,
            bandwidth_mib: args.bandwidth_mib,
        };
        let (rows, hist) = super::bench_batch::run(&zaya, &levels, args.rounds as usize, &sweep, &say)?;
        let total: u64 = hist.0.iter().sum();
        let e = cfg.num_experts;
        let routed: u64 = hist.0[..e].iter().sum();
        let max_share = hist.0[..e].iter().copied().max().unwrap_or(0) as f64 / routed.max(1) as f64;
        say(format!(
            "Routing histogram over the measured steps (experts 0..{}, then skip): {:?}; largest expert share {:.3} = {:.2}x the uniform 1/{e}",
            e - 1,
            hist.0,
            max_share,
            max_share * e as f64
        ));
        if args.json {
            let v = serde_json::json!({
                "model": dir,
                "bundle_bytes": summary.file_bytes,
                "prompt_tokens": p,
                "generation_tokens": g,
                "seed": args.seed,
                "machine": bench::machine_info(),
                "levels": rows,
                "route_histogram": hist.0,
                "route_total": total,
                "max_expert_share_over_uniform": max_share * e as f64,
                "load_average_end": memory::load_average(),
            });
            println!("{}", serde_json::to_string_pretty(&v).expect("serializable"));
        } else {
            println!("load_avg={}", fmt_load(memory::load_average()));
        }
        return Ok(0);
    }
    if args.prompt_cache || args.draft.is_some() {
        let prompt = bench::random_prompt(cfg.vocab_size, p, args.seed);
        let result = if let Some(d) = &args.draft {
            if d != "ngram" {
                return Err(ZayaError::InvalidArgument(format!("--draft `{d}`: expected ngram")));
            }
            let dp = zaya_mlx::runtime::speculative::DraftParams {
                num_draft_tokens: args.num_draft_tokens,
                ..Default::default()
            };
            dp.validate()?;
            bench::check_lengths(&cfg, p.saturating_add(g), g)?;
            super::bench_state::draft(model, &prompt, g, args.trials, dp, args.json)?
        } else {
            super::bench_state::prompt_cache(&model, &prompt, args.trials, args.json)?
        };
        if args.json {
            let mut v = result;
            v["load_average"] = serde_json::json!(memory::load_average());
            v["model"] = serde_json::json!(dir.display().to_string());
            println!("{v}");
        } else {
            println!("load_avg={}", fmt_load(memory::load_average()));
        }
        return Ok(0);
    }
    let machine: MachineInfo = bench::machine_info();
    let touch_s = if args.touch_all {
        let t = Instant::now();
        bench::touch_weights(&model)?;
        Some(t.elapsed().as_secs_f64())
    } else {
        None
    };

    say(format!(
        "Model: {} ({}, {} on disk, {} half-layers, vocab {}); kernels={}, dtype={}, load {:.2}s",
        dir.display(),
        summary.profile.clone().unwrap_or_else(|| summary.layout.to_string()),
        human_bytes(summary.file_bytes),
        cfg.num_hidden_layers,
        cfg.vocab_size,
        args.run.kernels,
        args.run.dtype,
        load_s
    ));
    say(format!(
        "Machine: {}, {} cores, {} RAM, kernel ISA {}",
        machine.cpu,
        machine.cores,
        human_bytes(machine.mem_total_bytes),
        machine.kernel_isa
    ));
    say(format!(
        "Timing with prompt_tokens={p}, generation_tokens={g}, batch_size=1 ({} warm-up, {} trials, seed {}).",
        args.warmup, args.trials, args.seed
    ));
    if let Some(t) = touch_s {
        say(format!(
            "Touched every weight in {t:.1}s (--touch-all: the peak RSS below is the worst case)"
        ));
    }

    let prompt = bench::random_prompt(cfg.vocab_size, p, args.seed);
    let mut probe: Option<GraphProbe> = None;
    for w in 0..args.warmup {
        let t = bench::run_trial(&model, &prompt, g, if w == 0 { Some(&mut probe) } else { None })?;
        if args.json {
            eprintln!("{}", trial_line(&format!("Warm-up {}", w + 1), &t));
        }
    }
    // The copy bandwidth is measured after every trial (the machine's bandwidth drifts over minutes
    // on a shared host) where the peak RSS can be reset per trial, so that its buffers never count in
    // a trial's peak; otherwise once, after all trials.
    let per_trial_bw = memory::reset_peak_rss();
    let mut bw_samples = Vec::new();
    let mut trials = Vec::with_capacity(args.trials);
    for i in 0..args.trials {
        let t = bench::run_trial(&model, &prompt, g, None)?;
        say(trial_line(&format!("Trial {}", i + 1), &t));
        trials.push(t);
        if per_trial_bw {
            bw_samples.push(bench::copy_bandwidth_gbs(args.bandwidth_mib << 20, 3));
        }
    }
    if probe.is_none() {
        // no warm-up, or too few tokens to probe the second decode step: probe the first one
        let mut cache = model.new_cache();
        let logits = model.prefill(&prompt, &mut cache, None)?;
        let first = trials[0].generated[0];
        drop(logits);
        let st = model.decode_graph_stats(first, &cache)?;
        probe = Some(GraphProbe {
            nodes: st.nodes,
            as_type: st.casts,
            offset: cache.offset(),
        });
    }
    let probe = probe.expect("probed");
    let (avg, med) = bench::summarize(&trials);

    if bw_samples.is_empty() {
        bw_samples.push(bench::copy_bandwidth_gbs(args.bandwidth_mib << 20, 7));
    }
    let bw = bench::median(&bw_samples);
    let read_bw = bench::read_bandwidth_gbs(args.bandwidth_mib << 20, 7);
    let context = bench::mean_decode_context(p, g);
    let bound: Bound = bench::bound(weight_bytes, &cfg, context, bw);
    let pct = 100.0 * med.generation_tps / bound.tok_per_s;
    let same_tokens = trials.windows(2).all(|w| w[0].generated == w[1].generated);

    if args.json {
        let v = serde_json::json!({
            "model": dir,
            "profile": summary.profile,
            "bundle_bytes": summary.file_bytes,
            "half_layers": cfg.num_hidden_layers,
            "vocab_size": cfg.vocab_size,
            "options": {
                "kernels": args.run.kernels,
                "dtype": args.run.dtype,
                "mod_skip": args.run.mod_skip,
                "prefill_chunk": options.prefill_chunk,
                "kv_step": options.kv_step,
                "touch_all": args.touch_all,
            },
            "prompt_tokens": p,
            "generation_tokens": g,
            "batch_size": 1,
            "warmup": args.warmup,
            "num_trials": args.trials,
            "seed": args.seed,
            "machine": machine,
            "load_s": load_s,
            "prompt_ids": prompt,
            "generated_ids": trials[0].generated,
            "same_tokens_every_trial": same_tokens,
            "trials": trials.iter().map(|t| serde_json::json!({
                "prompt_tps": t.prompt_tps,
                "generation_tps": t.generation_tps,
                "ttft_s": t.ttft_s,
                "decode_s": t.decode_s,
                "total_time_s": t.total_time_s,
                "peak_rss_bytes": t.peak_rss_bytes,
                "peak_mlx_bytes": t.peak_mlx_bytes,
                "load_average": t.load_average,
                "skip_fraction": t.skip_fraction,
                "rss_anon_bytes_end": t.rss_anon_file_bytes.map(|x| x.0),
                "rss_file_bytes_end": t.rss_anon_file_bytes.map(|x| x.1),
            })).collect::<Vec<_>>(),
            "average": avg,
            "median": med,
            "peak_rss_over_bundle": med.peak_rss_bytes.map(|b| b as f64 / summary.file_bytes as f64),
            "graph": { "nodes_per_decode_step": probe.nodes, "as_type_per_decode_step": probe.as_type, "cache_offset": probe.offset },
            "bound": {
                "bytes_per_token": bound.bytes_per_token,
                "bytes": bound.bytes,
                "context": bound.context,
                "copy_bandwidth_gbs": bound.bandwidth_gbs,
                "copy_bandwidth_samples_gbs": bw_samples,
                "tok_per_s": bound.tok_per_s,
                "decode_pct_of_bound": pct,
                "read_bandwidth_gbs": read_bw,
                "tok_per_s_at_read_bandwidth": read_bw * 1e9 / bound.bytes_per_token as f64,
            },
            "load_average_end": memory::load_average(),
        });
        println!("{}", serde_json::to_string_pretty(&v).expect("serializable"));
        return Ok(0);
    }

    println!("{}", summary_line("Averages", &avg));
    println!("{}", summary_line("Medians", &med));
    println!(
        "Peak memory: {} RSS = {:.2}x the bundle ({}); MLX peak {}",
        fmt_gb(med.peak_rss_bytes),
        med.peak_rss_bytes
            .map_or(f64::NAN, |b| b as f64 / summary.file_bytes as f64),
        human_bytes(summary.file_bytes),
        fmt_gb(Some(med.peak_mlx_bytes))
    );
    if let Some((anon, file)) = trials[0].rss_anon_file_bytes {
        println!(
            "Resident after trial 1: {} anonymous (allocations) + {} file-backed (touched pages of the mapped bundle)",
            fmt_gb(Some(anon)),
            fmt_gb(Some(file))
        );
    }
    println!(
        "Graph: {} nodes per decode step ({} AsType), at cache offset {}",
        probe.nodes, probe.as_type, probe.offset
    );
    println!(
        "Routing: {:.1}% of the token-layer routings of trial 1 took the MOD skip route (they read no expert)",
        100.0 * trials[0].skip_fraction
    );
    let b = bound.bytes;
    let mb = |x: u64| x as f64 / 1e6;
    println!(
        "Bound: {:.1} MB per decode token at context {} (experts {:.1}, lm_head+embedding {:.1}, attention {:.1}, router {:.1}, norms {:.2}, state {:.1}) / copy bandwidth {:.2} GB/s ({}) = {:.2} tok/s",
        mb(bound.bytes_per_token),
        bound.context,
        mb(b.experts),
        mb(b.lm_head_and_embedding),
        mb(b.attention),
        mb(b.router),
        mb(b.norms),
        mb(b.state),
        bound.bandwidth_gbs,
        if per_trial_bw {
            format!(
                "median of {}, one after each trial: {}",
                bw_samples.len(),
                bw_samples.iter().map(|b| format!("{b:.1}")).collect::<Vec<_>>().join(" ")
            )
        } else {
            "measured after the trials".to_string()
        },
        bound.tok_per_s
    );
    println!(
        "Decode: {:.3} tok/s median = {:.1}% of the bound (read-only bandwidth {:.2} GB/s would bound it at {:.2} tok/s)",
        med.generation_tps,
        pct,
        read_bw,
        read_bw * 1e9 / bound.bytes_per_token as f64
    );
    if !same_tokens {
        println!("note: the trials generated different tokens (non-deterministic kernels?)");
    }
    Ok(0)
}
