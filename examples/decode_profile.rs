//! Decode timing harness (release mode): ms/token of greedy-free decode steps on a bundle, where a
//! step's wall time goes by the kernel trace (each custom primitive's task time, the graph building
//! before the first task, the gaps between tasks), the per-phase split (embedding, attention
//! half-layers, MoE half-layers, head, other) measured by evaluating after every phase, the graph size
//! of one step, and the process's peak RSS.
//!
//! ```text
//! cargo run --release --example decode_profile -- BUNDLE [--steps N] [--prompt P] [--kernels fused|plain]
//!     [--prefill-only] [--no-fused-layers] [--touch-all] [--dtype f32|bf16] [--batch N]
//! ```
//! `--batch N` prefills N prompts of P tokens, joins them into one batch and traces batched decode
//! steps (continuous batching's step) instead of single-stream ones.
//! ```text
//! ```
//! A reduced-depth bundle with the real dimensions and vocabulary is a good target:
//! `zaya synth --preset zaya1-8b --config h8.json --out h8` with `{"num_hidden_layers": 8}`.
use std::time::{Duration, Instant};

use zaya_mlx::model::moe::ExpertBackend;
use zaya_mlx::model::{ModelOptions, ZayaModel};
use zaya_mlx::quant::linear::LinearBackend;
use zaya_mlx::runtime::memory;
use zaya_mlx::tools::bench;

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn median(v: Vec<f64>) -> f64 {
    bench::median(&v)
}

/// User + system CPU seconds of this process so far (all threads).
fn cpu_seconds() -> f64 {
    // SAFETY: getrusage fills the struct it is given.
    unsafe {
        let mut u: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut u);
        let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 * 1e-6;
        tv(u.ru_utime) + tv(u.ru_stime)
    }
}

/// Minor page faults of this process so far.
fn minor_faults() -> i64 {
    // SAFETY: getrusage fills the struct it is given.
    unsafe {
        let mut u: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut u);
        u.ru_minflt
    }
}

/// Peak RSS (VmHWM) in bytes.
fn peak_rss_bytes() -> u64 {
    memory::process_rss().map_or(0, |(_, peak)| peak)
}

/// Peak, anonymous and file-backed resident memory (Linux /proc/self/status).
fn rss_detail() -> String {
    let mib = |b: u64| b / (1 << 20);
    match memory::rss_by_kind() {
        Some((anon, file)) => format!(
            "VmHWM {} MiB, RssAnon {} MiB, RssFile {} MiB",
            mib(peak_rss_bytes()),
            mib(anon),
            mib(file)
        ),
        None => String::new(),
    }
}

/// Decode steps with the kernel trace on: where the wall time of a step goes (each custom primitive's
/// task time, summed per primitive; the time before the first task runs, i.e. building and
/// scheduling the graph; the gaps between tasks; the time after the last one).
fn trace_steps(steps: usize, mut step_once: impl FnMut() -> anyhow::Result<()>) -> anyhow::Result<()> {
    use std::collections::BTreeMap;
    let (mut wall, mut lead, mut gaps, mut tail) = (vec![], vec![], vec![], vec![]);
    let mut by_name: BTreeMap<&'static str, (Vec<f64>, usize, Vec<f64>)> = BTreeMap::new();
    zaya_mlx::ext::trace_take();
    zaya_mlx::ext::trace_enable(true);
    for _ in 0..steps {
        let t0 = zaya_mlx::ext::now_ns();
        step_once()?;
        let t1 = zaya_mlx::ext::now_ns();
        let ev = zaya_mlx::ext::trace_take();
        let (Some(first), Some(last)) = (ev.first(), ev.last()) else {
            continue;
        };
        let ns = |d: i64| d as f64 / 1e6;
        wall.push(ns(t1 - t0));
        lead.push(ns(first.start_ns - t0));
        tail.push(ns(t1 - last.end_ns));
        gaps.push(ns(ev.windows(2).map(|w| (w[1].start_ns - w[0].end_ns).max(0)).sum()));
        let mut step: BTreeMap<&'static str, (f64, usize, f64)> = BTreeMap::new();
        for (i, e) in ev.iter().enumerate() {
            let s = step.entry(e.name).or_default();
            s.0 += ns(e.end_ns - e.start_ns);
            s.1 += 1;
            if i > 0 {
                s.2 += ns((e.start_ns - ev[i - 1].end_ns).max(0));
            }
        }
        for (k, (t, c, g)) in step {
            let s = by_name.entry(k).or_default();
            s.0.push(t);
            s.1 = c;
            s.2.push(g);
        }
    }
    zaya_mlx::ext::trace_enable(false);
    println!(
        "traced (medians, ms/step): wall {:.2} = before the first kernel {:.2} + kernels + gaps between kernels {:.2} + after the last {:.2}",
        median(wall),
        median(lead),
        median(gaps),
        median(tail)
    );
    for (k, (t, c, g)) in by_name {
        let m = median(t);
        println!(
            "  {k:<20} {m:7.2} ms in {c} tasks ({:.1} µs each; gaps before them {:.2} ms)",
            m * 1e3 / c.max(1) as f64,
            median(g)
        );
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut dir = None;
    let (mut steps, mut prompt, mut plain, mut prefill_only, mut no_fused) = (16usize, 32usize, false, false, false);
    let (mut touch_all, mut bf16, mut batch) = (false, false, 0usize);
    let mut i = 0;
    while i < args.len() {
        match args[i].as_str() {
            "--steps" => {
                steps = args[i + 1].parse()?;
                i += 1;
            }
            "--prompt" => {
                prompt = args[i + 1].parse()?;
                i += 1;
            }
            "--kernels" => {
                plain = args[i + 1] == "plain";
                i += 1;
            }
            "--prefill-only" => prefill_only = true,
            "--no-fused-layers" => no_fused = true,
            "--touch-all" => touch_all = true,
            "--batch" => {
                batch = args[i + 1].parse()?;
                i += 1;
            }
            "--dtype" => {
                bf16 = match args[i + 1].as_str() {
                    "bf16" => true,
                    "f32" => false,
                    other => anyhow::bail!("--dtype must be f32 or bf16, got {other}"),
                };
                i += 1;
            }
            a => dir = Some(a.to_string()),
        }
        i += 1;
    }
    let dir = dir.ok_or_else(|| anyhow::anyhow!("usage: decode_profile BUNDLE [--steps N] [--prompt P]"))?;
    let mut opts = ModelOptions {
        fused_layers: !no_fused,
        dtype: if bf16 {
            mlx_rs::Dtype::Bfloat16
        } else {
            mlx_rs::Dtype::Float32
        },
        ..ModelOptions::default()
    };
    if plain {
        opts.expert_backend = ExpertBackend::Plain;
        opts.linear_backend = LinearBackend::Plain;
    }
    let t = Instant::now();
    let model = ZayaModel::load(&dir, opts)?;
    println!(
        "load: {:.2} s, rss after load {:.3} GiB",
        t.elapsed().as_secs_f64(),
        peak_rss_bytes() as f64 / (1u64 << 30) as f64
    );
    if touch_all {
        // read every weight once (as a long generation eventually does: all experts get used)
        use mlx_rs::module::ModuleParameters;
        let t = Instant::now();
        for (_, p) in model.parameters().flatten() {
            p.sum(None)?.eval()?;
        }
        println!(
            "touched every weight in {:.1} s: rss {:.3} GiB ({})",
            t.elapsed().as_secs_f64(),
            peak_rss_bytes() as f64 / (1u64 << 30) as f64,
            rss_detail()
        );
    }
    let vocab = model.config().vocab_size as u32;
    let toks: Vec<u32> = (0..prompt as u32).map(|i| (i * 7919 + 13) % vocab).collect();
    let mut cache = model.new_cache();
    let t = Instant::now();
    model.prefill(&toks, &mut cache, None)?;
    let pf = t.elapsed().as_secs_f64();
    println!("prefill {prompt} tokens: {:.3} s ({:.1} tok/s)", pf, prompt as f64 / pf);
    let skipped: u64 = cache.skip_counts().iter().sum();
    let routed: u64 = cache.routed_counts().iter().sum();
    println!("  prefill routes: {routed} routed, {skipped} took the skip route");
    if prefill_only {
        let rounds: usize = std::env::var("PREFILL_ROUNDS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(3);
        for round in 0..rounds {
            let mut cx = model.new_cache();
            let f0 = minor_faults();
            let t = Instant::now();
            model.prefill(&toks, &mut cx, None)?;
            println!(
                "  prefill again ({round}): {:.3} s, {} minor page faults, rss {}",
                t.elapsed().as_secs_f64(),
                minor_faults() - f0,
                rss_detail()
            );
        }
        let mut c2 = model.new_cache();
        let (_, p) = model.prefill_profiled(&toks, &mut c2, None)?;
        let pl: Vec<String> = p.layers.iter().map(|d| format!("{:.0}", ms(*d))).collect();
        println!(
            "prefill profiled (ms): total {:.0} | embed {:.1} | attention {:.0} | moe {:.0} | head {:.1} | other {:.1}\n  per half-layer: {}",
            ms(p.total()),
            ms(p.embed),
            ms(p.attention()),
            ms(p.moe()),
            ms(p.head),
            ms(p.other),
            pl.join(" ")
        );
        // where a prefill's time goes: each primitive's task time (summed), the rest is MLX ops; an
        // untraced prefill first, since the per-phase one above leaves the allocator with other sizes
        // (the next prefill would fault in fresh pages)
        model.prefill(&toks, &mut model.new_cache(), None)?;
        let mut c3 = model.new_cache();
        zaya_mlx::ext::trace_take();
        zaya_mlx::ext::trace_enable(true);
        let (f0, cpu0) = (minor_faults(), cpu_seconds());
        let t = Instant::now();
        model.prefill(&toks, &mut c3, None)?;
        let wall = ms(t.elapsed());
        zaya_mlx::ext::trace_enable(false);
        println!(
            "  (traced prefill: {} minor page faults, {:.2} CPU-seconds per wall-second)",
            minor_faults() - f0,
            (cpu_seconds() - cpu0) * 1e3 / wall
        );
        let mut by: std::collections::BTreeMap<&'static str, (f64, usize)> = Default::default();
        for e in zaya_mlx::ext::trace_take() {
            let s = by.entry(e.name).or_default();
            s.0 += (e.end_ns - e.start_ns) as f64 / 1e6;
            s.1 += 1;
        }
        let traced: f64 = by.values().map(|v| v.0).sum();
        println!("prefill traced: wall {wall:.0} ms, custom primitives {traced:.0} ms");
        for (k, (t, c)) in by {
            println!("  {k:<20} {t:8.1} ms in {c} tasks");
        }
        println!("peak rss {:.3} GiB", peak_rss_bytes() as f64 / (1u64 << 30) as f64);
        return Ok(());
    }
    if batch > 0 {
        let mut bc = zaya_mlx::runtime::engine::BatchCache::new(model.config(), model.options().kv_step);
        for i in 0..batch {
            let p: Vec<u32> = (0..prompt as u32)
                .map(|j| (j * 7919 + 13 + 104729 * i as u32) % vocab)
                .collect();
            let mut c = model.new_cache();
            model.prefill(&p, &mut c, None)?;
            bc.insert(&c)?;
        }
        bc.eval()?;
        let mut next: Vec<u32> = (0..batch as u32).map(|i| (i * 31 + 7) % vocab).collect();
        let mut step = |bc: &mut zaya_mlx::runtime::engine::BatchCache| -> anyhow::Result<()> {
            model.decode_batch(&next, bc, false)?.logits.eval()?;
            for t in next.iter_mut() {
                *t = (*t * 31 + 7) % vocab;
            }
            Ok(())
        };
        for _ in 0..2 {
            step(&mut bc)?;
        }
        let t = Instant::now();
        for _ in 0..steps {
            step(&mut bc)?;
        }
        let per = ms(t.elapsed()) / steps as f64;
        println!(
            "batched decode, {batch} rows: {per:.2} ms/step ({:.2} tok/s aggregate)",
            batch as f64 * 1e3 / per
        );
        trace_steps(steps, || step(&mut bc))?;
        return Ok(());
    }
    let mut tok = 1u32;
    for _ in 0..2 {
        model.decode_step(tok, &mut cache)?;
        tok = (tok * 31 + 7) % vocab;
    }
    let (_, st, names) = model.decode_step_counted(tok, &mut cache)?;
    println!("graph of one decode step: {} nodes, {} AsType", st.nodes, st.casts);
    let names: Vec<String> = names.iter().map(|(k, c)| format!("{k} {c}")).collect();
    println!("  by primitive: {}", names.join(", "));
    let mut times = Vec::new();
    for _ in 0..steps {
        let t = Instant::now();
        model.decode_step(tok, &mut cache)?;
        times.push(ms(t.elapsed()));
        tok = (tok * 31 + 7) % vocab;
    }
    let med = median(times.clone());
    let mean = times.iter().sum::<f64>() / times.len().max(1) as f64;
    let min = times.iter().cloned().fold(f64::INFINITY, f64::min);
    println!(
        "decode: median {med:.2} ms/token, mean {mean:.2}, min {min:.2} ({:.2} tok/s at the median)",
        1e3 / med
    );
    trace_steps(steps, || {
        model.decode_step(tok, &mut cache)?;
        tok = (tok * 31 + 7) % vocab;
        Ok(())
    })?;
    let (mut e, mut a, mut m, mut h, mut o, mut tot) = (vec![], vec![], vec![], vec![], vec![], vec![]);
    let mut per_layer: Vec<Vec<f64>> = Vec::new();
    for _ in 0..steps {
        let (_, p) = model.decode_step_profiled(tok, &mut cache)?;
        tok = (tok * 31 + 7) % vocab;
        e.push(ms(p.embed));
        a.push(ms(p.attention()));
        m.push(ms(p.moe()));
        h.push(ms(p.head));
        o.push(ms(p.other));
        tot.push(ms(p.total()));
        per_layer.resize(p.layers.len(), Vec::new());
        for (v, d) in per_layer.iter_mut().zip(&p.layers) {
            v.push(ms(*d));
        }
    }
    let n_attn = per_layer.len().div_ceil(2).max(1) as f64;
    let n_moe = (per_layer.len() / 2).max(1) as f64;
    println!(
        "profiled (medians, ms): total {:.2} | embed {:.2} | attention {:.2} ({:.3}/layer) | moe {:.2} ({:.3}/layer) | head {:.2} | other {:.2}",
        median(tot),
        median(e),
        median(a.clone()),
        median(a) / n_attn,
        median(m.clone()),
        median(m) / n_moe,
        median(h),
        median(o)
    );
    let pl: Vec<String> = per_layer.into_iter().map(|v| format!("{:.2}", median(v))).collect();
    println!("per half-layer (ms): {}", pl.join(" "));
    println!(
        "peak rss {:.3} GiB ({})",
        peak_rss_bytes() as f64 / (1u64 << 30) as f64,
        rss_detail()
    );
    Ok(())
}
