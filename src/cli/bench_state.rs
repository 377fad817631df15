//! `zaya bench --prompt-cache` and `zaya bench --draft ngram`: what exact state snapshots buy.
//!
//! - Prompt cache: per trial, prefill `-p` random ids on a fresh cache, save the state to a
//!   prompt-cache file, drop the file from the page cache (`posix_fadvise(DONTNEED)`, so the load
//!   reads the disk), load it, and check that the next greedy token and its logits equal the
//!   prefilled cache's. Reports the median prefill, save, load (cold) and load (warm) times and the
//!   prefill / load ratio.
//! - Speculative decoding: a prompt whose greedy continuation repeats earlier text is built by
//!   appending the model's own greedy continuation of `-p` random ids (random-weight models fall
//!   into loops); then `-g` tokens are decoded plainly and with n-gram drafts, alternating, on the
//!   same prompt. Reports both decode rates, their ratio, the acceptance rate and whether the
//!   tokens are the same (they must be).
use std::path::Path;
use std::time::Instant;

use zaya_mlx::model::ZayaModel;
use zaya_mlx::runtime::prompt_cache::{self, PromptCacheRef};
use zaya_mlx::runtime::speculative::DraftParams;
use zaya_mlx::runtime::{GenParams, Zaya};
use zaya_mlx::tools::bench;
use zaya_mlx::{Result, ZayaError};

fn argmax(v: &[f32]) -> u32 {
    v.iter()
        .enumerate()
        .fold(
            (0usize, f32::NEG_INFINITY),
            |(bi, bv), (i, &x)| if x > bv { (i, x) } else { (bi, bv) },
        )
        .0 as u32
}

fn row(a: &mlx_rs::Array) -> Result<Vec<f32>> {
    a.eval()?;
    Ok(a.try_as_slice::<f32>()
        .map_err(|e| ZayaError::Ext(format!("bench: {e}")))?
        .to_vec())
}

/// Evicts `path` from the page cache (best effort; Linux).
fn evict(path: &Path) -> bool {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        if let Ok(f) = std::fs::File::open(path) {
            // SAFETY: a plain advisory call on an open descriptor.
            return unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) } == 0;
        }
    }
    let _ = path;
    false
}

/// The prompt-cache measurement (see the module docs).
pub fn prompt_cache(model: &ZayaModel, prompt: &[u32], trials: usize, json: bool) -> Result<serde_json::Value> {
    let tmp = tempfile_dir()?;
    let file = tmp.join("bench-prompt-cache.safetensors");
    let (mut pre, mut save, mut cold, mut warm) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut size = 0u64;
    let mut max_rel = 0f32;
    let mut same_token = true;
    let mut evicted = true;
    for i in 0..=trials {
        let mut cache = model.new_cache();
        let t = Instant::now();
        let logits = model.prefill(prompt, &mut cache, None)?;
        let t_pre = t.elapsed().as_secs_f64();
        let next = argmax(&row(&logits)?);
        let t = Instant::now();
        prompt_cache::save(
            &file,
            model,
            PromptCacheRef {
                cache: &cache,
                tokens: prompt,
                chat_template: None,
                session: None,
            },
            None,
        )?;
        let t_save = t.elapsed().as_secs_f64();
        size = std::fs::metadata(&file).map_err(|e| ZayaError::io(&file, e))?.len();
        evicted &= evict(&file);
        let t = Instant::now();
        let loaded = prompt_cache::load(&file, model)?;
        let t_cold = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let again = prompt_cache::load(&file, model)?;
        let t_warm = t.elapsed().as_secs_f64();
        drop(again);
        // the loaded state continues as the prefilled one
        let mut a = cache;
        let mut b = loaded.cache;
        let la = row(&model.decode_step(next, &mut a)?)?;
        let lb = row(&model.decode_step(next, &mut b)?)?;
        let m = la.iter().map(|x| x.abs()).fold(0f32, f32::max).max(1e-6);
        let d = la.iter().zip(&lb).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
        max_rel = max_rel.max(d / m);
        same_token &= argmax(&la) == argmax(&lb);
        if i == 0 {
            continue; // warm-up
        }
        if !json {
            println!(
                "Trial {i}: prefill={t_pre:.3}s, save={t_save:.3}s, load_cold={t_cold:.3}s, load_warm={t_warm:.3}s"
            );
        }
        pre.push(t_pre);
        save.push(t_save);
        cold.push(t_cold);
        warm.push(t_warm);
    }
    let _ = std::fs::remove_file(&file);
    let _ = std::fs::remove_dir(&tmp);
    let (p, s, c, w) = (
        bench::median(&pre),
        bench::median(&save),
        bench::median(&cold),
        bench::median(&warm),
    );
    if !json {
        println!(
            "Prompt cache of {} tokens: file {:.1} MB; median prefill {p:.3}s, save {s:.3}s, load {c:.3}s from disk{} ({w:.3}s from the page cache)",
            prompt.len(),
            size as f64 / 1e6,
            if evicted { "" } else { " (page-cache eviction unavailable)" }
        );
        println!(
            "Loading is {:.1}x faster than prefilling ({:.1}x from the page cache); next-token logits after loading: max rel diff {max_rel:.2e}, same greedy token: {same_token}",
            p / c,
            p / w
        );
    }
    Ok(serde_json::json!({
        "prompt_tokens": prompt.len(),
        "file_bytes": size,
        "prefill_s": p, "save_s": s, "load_cold_s": c, "load_warm_s": w,
        "prefill_over_load_cold": p / c, "prefill_over_load_warm": p / w,
        "evicted_from_page_cache": evicted,
        "next_logits_max_rel_diff": max_rel, "same_next_token": same_token,
        "trials": {"prefill_s": pre, "save_s": save, "load_cold_s": cold, "load_warm_s": warm},
    }))
}

fn tempfile_dir() -> Result<std::path::PathBuf> {
    let base = std::env::temp_dir().join(format!("zaya-bench-{}", std::process::id()));
    std::fs::create_dir_all(&base).map_err(|e| ZayaError::io(&base, e))?;
    Ok(base)
}

/// The speculative-decoding measurement (see the module docs). Takes the model by value: it is
/// wrapped in a [`Zaya`] without tokenizer (token-level generation).
pub fn draft(
    model: ZayaModel,
    prompt: &[u32],
    gen: usize,
    trials: usize,
    dp: DraftParams,
    json: bool,
) -> Result<serde_json::Value> {
    let zaya = Zaya::from_parts(model, None, None);
    let run = |ids: &[u32],
               n: usize,
               d: Option<DraftParams>|
     -> Result<(Vec<u32>, f64, zaya_mlx::runtime::speculative::DraftStats)> {
        let mut s = zaya.session();
        let params = GenParams {
            max_tokens: Some(n),
            ignore_eos: true,
            draft: d,
            ..GenParams::default()
        };
        let mut g = s.generate_from_tokens(ids, &params)?;
        let mut out = Vec::with_capacity(n);
        for step in g.by_ref() {
            out.push(step?.id);
        }
        let st = g.stats();
        Ok((out, st.generation_tps, st.draft))
    };
    // the prompt: random ids followed by the model's own continuation of them
    let (cont, _, _) = run(prompt, gen, None)?;
    let mut long = prompt.to_vec();
    long.extend_from_slice(&cont);
    let (mut plain, mut spec) = (Vec::new(), Vec::new());
    let (mut drafted, mut accepted, mut steps) = (0usize, 0usize, 0usize);
    let mut same = true;
    for i in 0..=trials {
        let (a, tps_a, _) = run(&long, gen, None)?;
        let (b, tps_b, st) = run(&long, gen, Some(dp))?;
        same &= a == b;
        if i == 0 {
            continue;
        }
        if !json {
            println!(
                "Trial {i}: plain {tps_a:.3} tok/s, ngram {tps_b:.3} tok/s ({} of {} drafts accepted in {} steps)",
                st.accepted, st.drafted, st.steps
            );
        }
        plain.push(tps_a);
        spec.push(tps_b);
        drafted += st.drafted;
        accepted += st.accepted;
        steps += st.steps;
    }
    let (p, s) = (bench::median(&plain), bench::median(&spec));
    let rate = if drafted > 0 {
        accepted as f64 / drafted as f64
    } else {
        0.0
    };
    if !json {
        println!(
            "Speculative decoding (n-gram, K={}): {s:.3} tok/s vs plain {p:.3} tok/s = {:.2}x; acceptance {:.1}% ({accepted} of {drafted} drafts, {:.2} tokens per verify step); same tokens: {same}",
            dp.num_draft_tokens,
            s / p,
            100.0 * rate,
            if steps > 0 { (accepted + steps) as f64 / steps as f64 } else { 0.0 }
        );
    }
    Ok(serde_json::json!({
        "prompt_tokens": long.len(), "generation_tokens": gen, "num_draft_tokens": dp.num_draft_tokens,
        "plain_tps": p, "ngram_tps": s, "speedup": s / p,
        "drafted": drafted, "accepted": accepted, "verify_steps": steps, "acceptance_rate": rate,
        "same_tokens": same,
        "trials": {"plain_tps": plain, "ngram_tps": spec},
    }))
}
