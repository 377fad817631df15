//! The synthetic tokenizer (assets/synth/tokenizer.json) and chat template: ids of the ZAYA special
//! tokens, round trips, reproducibility of the committed asset, and the template rendered by
//! minijinja (our side) against Python jinja2 the way transformers renders chat templates.
use std::path::PathBuf;
use std::process::Command;

use serde_json::{json, Value};
use tokenizers::Tokenizer;
use zaya_mlx::synth::tokenizer::{self as synth_tok, CHAT_TEMPLATE, SYNTH_VOCAB_MIN, TOKENIZER_JSON};

fn tokenizer() -> Tokenizer {
    TOKENIZER_JSON.parse().expect("committed tokenizer.json loads")
}

/// Regenerates assets/synth/tokenizer.json: `cargo test --release --test synth_tokenizer -- --ignored regenerate`.
#[test]
#[ignore]
fn regenerate_tokenizer_asset() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("assets/synth/tokenizer.json");
    std::fs::write(&path, synth_tok::build_tokenizer_json().unwrap()).unwrap();
}

#[test]
fn committed_tokenizer_is_reproducible() {
    assert_eq!(synth_tok::build_tokenizer_json().unwrap(), TOKENIZER_JSON, "rerun the ignored regenerate test");
}
