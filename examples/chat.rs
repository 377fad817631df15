//! A minimal multi-turn chat on the zaya-mlx library: load once, keep one session (its cache
//! carries the conversation), stream each answer, print the turn's statistics.
//!
//! ```text
//! cargo run --release --example chat -- /path/to/ZAYA1-8B-JANGTQ4
//! cargo run --release --example chat            # a tiny random bundle written to a temp dir
//! ```
//! Type a message per line; an empty line or end of input quits.
use std::io::{BufRead, Write};

use zaya_mlx::model::ModelOptions;
use zaya_mlx::runtime::{GenParams, Zaya};
use zaya_mlx::tools::synth::{write_bundle, SynthOptions, SynthSpec};

fn main() -> zaya_mlx::Result<()> {
    let mut _tmp = None;
    let dir = match std::env::args().nth(1) {
        Some(d) => std::path::PathBuf::from(d),
        None => {
            let t = tempfile::tempdir().expect("temp dir");
            write_bundle(&SynthSpec::preset("tiny")?, t.path(), &SynthOptions::default())?;
            eprintln!("(no bundle given: a tiny bundle with random weights, so expect gibberish)");
            let p = t.path().to_path_buf();
            _tmp = Some(t);
            p
        }
    };
    let zaya = Zaya::load(&dir, ModelOptions::default())?;
    let mut session = zaya.session();
    session.set_system_prompt(Some("You are a helpful assistant."));
    let params = GenParams {
        max_tokens: Some(256),
        ..GenParams::default()
    };

    let stdin = std::io::stdin();
    for line in stdin.lock().lines() {
        let line = line.map_err(|e| zaya_mlx::ZayaError::io("<stdin>", e))?;
        if line.trim().is_empty() {
            break;
        }
        let mut gen = session.chat(line.as_str(), &params)?;
        for step in gen.by_ref() {
            print!("{}", step?.text);
            std::io::stdout().flush().ok();
        }
        let s = gen.stats();
        println!();
        eprintln!(
            "[{} new prompt tokens ({} reused) at {:.1} tok/s, {} generated at {:.1} tok/s, finish: {}]",
            s.prompt_tokens,
            s.reused_tokens,
            s.prompt_tps,
            s.generation_tokens,
            s.generation_tps,
            gen.finish_reason().map_or("-".to_string(), |f| f.to_string())
        );
    }
    Ok(())
}
