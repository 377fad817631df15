//! Alternating A/B of whole decode steps in one process (release mode): even steps run setting A, odd
//! steps setting B, on one cache, and the medians of both are printed. On a shared host whose speed
//! drifts by 10–25% over minutes, this is the comparison that the drift does not bias (two separate
//! runs do).
//!
//! ```text
//! cargo run --release --example decode_ab -- BUNDLE --isa avx512,avx2 [--steps 96] [--prompt 32]
//! cargo run --release --example decode_ab -- BUNDLE --env NAME [--steps 96] [--prompt 32]
//! ```
//! `--isa A,B` compares two kernel instruction sets (scalar, avx2, avx512; the level is read when an op
//! is built, so it applies to the next step). `--env NAME` runs A with NAME unset and B with NAME=1:
//! for knobs an experimental build reads on every call (the shipped code has none).
use std::time::Instant;

use zaya_mlx::ext::{self, KernelIsa};
use zaya_mlx::model::{ModelOptions, ZayaModel};

enum Switch {
    Isa(KernelIsa, KernelIsa),
    Env(String),
}

fn isa(name: &str) -> anyhow::Result<KernelIsa> {
    Ok(match name {
        "scalar" => KernelIsa::Scalar,
        "avx2" => KernelIsa::Avx2,
        "avx512" => KernelIsa::Avx512,
        _ => anyhow::bail!("unknown ISA {name:?} (scalar, avx2, avx512)"),
    })
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (mut dir, mut switch, mut steps, mut prompt) = (None, None, 96usize, 32usize);
    let mut i = 0;
    while i < args.len() {
        let val = || {
            args.get(i + 1)
                .cloned()
                .ok_or_else(|| anyhow::anyhow!("{} needs a value", args[i]))
        };
        match args[i].as_str() {
            "--isa" => {
                let v = val()?;
                let (a, b) = v.split_once(',').ok_or_else(|| anyhow::anyhow!("--isa wants A,B"))?;
                switch = Some(Switch::Isa(isa(a)?, isa(b)?));
                i += 1;
            }
            "--env" => {
                switch = Some(Switch::Env(val()?));
                i += 1;
            }
            "--steps" => {
                steps = val()?.parse()?;
                i += 1;
            }
            "--prompt" => {
                prompt = val()?.parse()?;
                i += 1;
            }
            a => dir = Some(a.to_string()),
        }
        i += 1;
    }
    let usage = "usage: decode_ab BUNDLE (--isa A,B | --env NAME) [--steps N] [--prompt P]";
    let (dir, switch) = (
        dir.ok_or_else(|| anyhow::anyhow!(usage))?,
        switch.ok_or_else(|| anyhow::anyhow!(usage))?,
    );
    let model = ZayaModel::load(&dir, ModelOptions::default())?;
    let vocab = model.config().vocab_size as u32;
    let toks: Vec<u32> = (0..prompt as u32).map(|i| (i * 7919 + 13) % vocab).collect();
    let mut cache = model.new_cache();
    model.prefill(&toks, &mut cache, None)?;
    let set = |b: bool| match &switch {
        Switch::Isa(x, y) => {
            ext::set_max_isa(if b { *y } else { *x });
        }
        // SAFETY: single-threaded here; the kernels read the variable only while a step runs.
        Switch::Env(name) => unsafe {
            if b {
                std::env::set_var(name, "1")
            } else {
                std::env::remove_var(name)
            }
        },
    };
    let (mut a, mut b) = (Vec::new(), Vec::new());
    let mut tok = 1u32;
    for step in 0..steps + 4 {
        let is_b = step % 2 == 1;
        set(is_b);
        let t = Instant::now();
        model.decode_step(tok, &mut cache)?;
        let ms = t.elapsed().as_secs_f64() * 1e3;
        tok = (tok * 31 + 7) % vocab;
        if step >= 4 {
            if is_b {
                b.push(ms)
            } else {
                a.push(ms)
            }
        }
    }
    let (ma, mb) = (zaya_mlx::tools::bench::median(&a), zaya_mlx::tools::bench::median(&b));
    let label = match &switch {
        Switch::Isa(x, y) => (format!("{x:?}"), format!("{y:?}")),
        Switch::Env(n) => (format!("{n} unset"), format!("{n}=1")),
    };
    println!(
        "A ({}): {ma:.2} ms/step   B ({}): {mb:.2} ms/step   B/A = {:.3} (medians of {} steps each)",
        label.0,
        label.1,
        mb / ma,
        a.len()
    );
    Ok(())
}
