//! Shared helpers of the text tests: the Python reference environment and two small tokenizers
//! built with the `tokenizers` crate in the ZAYA id layout (`<pad>` 0, `<eos>` 1, `<bos>` 2, tool
//! tokens 101–104, `<|im_start|>` 105, `<|im_end|>` 106, `<think>`/`</think>` as added tokens).
#![allow(dead_code)]
#[path = "../common/venv.rs"]
mod venv;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
pub use venv::python;

use serde_json::{json, Value};
use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
use tokenizers::models::TrainerWrapper;
use tokenizers::normalizers::{NormalizerWrapper, Replace};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{ModelWrapper, Tokenizer as HfTokenizer};

/// Path of a file in tests/data.
pub fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data").join(name)
}

/// Runs tests/data/<script> with `input` as JSON on stdin; returns its JSON stdout.
pub fn run_python(script: &str, input: &Value) -> Value {
    let mut child = Command::new(python())
        .arg(data(script))
        .env("TRANSFORMERS_VERBOSITY", "error")
        .env("TOKENIZERS_PARALLELISM", "false")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn python");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(input.to_string().as_bytes()).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{script} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{script}: bad JSON output ({e}):\n{}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

pub const SPECIALS: [(u32, &str); 9] = [
    (0, "<pad>"),
    (1, "<eos>"),
    (2, "<bos>"),
    (101, "<zyphra_tool_call>"),
    (102, "</zyphra_tool_call>"),
    (103, "<zyphra_tool_response>"),
    (104, "</zyphra_tool_response>"),
    (105, "<|im_start|>"),
    (106, "<|im_end|>"),
];

/// Training text: English, code-ish text, frequent CJK (merged) and rare emoji / CJK (left as bytes).
pub fn corpus() -> Vec<String> {
    let base = [
        "Hello world! How can I assist you today?",
        "The quick brown fox jumps over the lazy dog.",
        "def main():\n    print(\"hello\")\n    return 0",
        "Thinking step by step, the answer is 42.",
        "你好世界，你好朋友。你好！",
        "tool call with arguments {\"city\": \"Paris\", \"unit\": \"celsius\"}",
        "Numbers 0123456789 and symbols #$%&*+-/<=>@[]^_`{|}~",
    ];
    let mut v = Vec::new();
    for i in 0..30 {
        for b in base {
            v.push(format!("{b} {i}"));
        }
    }
    v.push("rare: 😀 🎉 漢字 ß é".to_string());
    v
}

/// Renumbers a trained vocabulary around the reserved special ids, appends `extra` tokens, and
/// returns (vocab map, id of each extra token).
fn layout(
    trained: &[(String, u32)],
    first: &[(u32, &str)],
    extra: &[&str],
) -> (serde_json::Map<String, Value>, Vec<u32>) {
    let mut sorted: Vec<&(String, u32)> = trained.iter().collect();
    sorted.sort_by_key(|e| e.1);
    let reserved: Vec<u32> = first.iter().map(|e| e.0).collect();
    let mut vocab = serde_json::Map::new();
    for (id, tok) in first {
        vocab.insert(tok.to_string(), json!(id));
    }
    let mut next = 0u32;
    let mut take = |vocab: &mut serde_json::Map<String, Value>, tok: &str| -> u32 {
        while reserved.contains(&next) {
            next += 1;
        }
        vocab.insert(tok.to_string(), json!(next));
        next += 1;
        next - 1
    };
    for (tok, _) in sorted {
        if !vocab.contains_key(tok) {
            take(&mut vocab, tok);
        }
    }
    let ids = extra.iter().map(|t| take(&mut vocab, t)).collect();
    (vocab, ids)
}

fn added(id: u32, content: &str, special: bool) -> Value {
    json!({"id": id, "content": content, "single_word": false, "lstrip": false, "rstrip": false,
           "normalized": !special, "special": special})
}

fn bos_post_processor() -> Value {
    json!({
        "type": "TemplateProcessing",
        "single": [{"SpecialToken": {"id": "<bos>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
        "pair": [{"SpecialToken": {"id": "<bos>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                 {"Sequence": {"id": "B", "type_id": 1}}],
        "special_tokens": {"<bos>": {"id": "<bos>", "ids": [2], "tokens": ["<bos>"]}}
    })
}

fn train(tok: &mut HfTokenizer, vocab_size: usize, limit_alphabet: Option<usize>, alphabet: Vec<char>) {
    let mut b = BpeTrainerBuilder::new()
        .vocab_size(vocab_size)
        .min_frequency(2)
        .show_progress(false);
    if let Some(l) = limit_alphabet {
        b = b.limit_alphabet(l);
    }
    if !alphabet.is_empty() {
        b = b.initial_alphabet(alphabet.into_iter().collect());
    }
    let mut trainer = TrainerWrapper::BpeTrainer(b.build());
    tok.train(&mut trainer, corpus().into_iter()).expect("train");
}

/// A GPT-2-style byte-level BPE tokenizer.json (as a JSON value).
pub fn byte_level_tokenizer_json() -> Value {
    let mut tok = HfTokenizer::new(ModelWrapper::BPE(BPE::default()));
    tok.with_pre_tokenizer(Some(ByteLevel::new(false, true, true)));
    tok.with_decoder(Some(ByteLevel::default()));
    train(&mut tok, 420, None, ByteLevel::alphabet().into_iter().collect());
    let (mut j, trained) = trained_json(&tok);
    let (vocab, extra) = layout(&trained, &SPECIALS, &["<think>", "</think>"]);
    j["model"]["vocab"] = Value::Object(vocab);
    let mut added_tokens: Vec<Value> = SPECIALS.iter().map(|(id, t)| added(*id, t, true)).collect();
    added_tokens.push(added(extra[0], "<think>", false));
    added_tokens.push(added(extra[1], "</think>", false));
    j["added_tokens"] = Value::Array(added_tokens);
    j["post_processor"] = bos_post_processor();
    j
}

/// A trained tokenizer as tokenizer.json, and its model vocabulary as (token, id) pairs.
fn trained_json(tok: &HfTokenizer) -> (Value, Vec<(String, u32)>) {
    let j: Value = serde_json::from_str(&tok.to_string(false).unwrap()).unwrap();
    let trained = j["model"]["vocab"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_u64().unwrap() as u32))
        .collect();
    (j, trained)
}

/// A Gemma/SentencePiece-style BPE: spaces normalised to `▁`, `<0xNN>` byte fallback for
/// characters outside the vocabulary, decoder Replace(▁→space) + ByteFallback + Fuse.
pub fn byte_fallback_tokenizer_json() -> Value {
    let mut tok = HfTokenizer::new(ModelWrapper::BPE(BPE::default()));
    tok.with_normalizer(Some(NormalizerWrapper::Replace(Replace::new(" ", "▁").unwrap())));
    train(&mut tok, 400, Some(70), Vec::new());
    let (mut j, trained) = trained_json(&tok);
    let mut first: Vec<(u32, &str)> = SPECIALS.to_vec();
    first.push((3, "<unk>"));
    let bytes: Vec<String> = (0..=255u32).map(|b| format!("<0x{b:02X}>")).collect();
    let mut all: Vec<(String, u32)> = bytes.iter().enumerate().map(|(i, b)| (b.clone(), i as u32)).collect();
    all.extend(trained.into_iter().map(|(t, i)| (t, i + 256)));
    let (vocab, extra) = layout(&all, &first, &["<think>", "</think>"]);
    j["model"]["vocab"] = Value::Object(vocab);
    j["model"]["byte_fallback"] = json!(true);
    j["model"]["unk_token"] = json!("<unk>");
    j["model"]["fuse_unk"] = json!(true);
    let mut added_tokens: Vec<Value> = first.iter().map(|(id, t)| added(*id, t, true)).collect();
    added_tokens.push(added(extra[0], "<think>", false));
    added_tokens.push(added(extra[1], "</think>", false));
    j["added_tokens"] = Value::Array(added_tokens);
    j["pre_tokenizer"] = Value::Null;
    j["post_processor"] = bos_post_processor();
    j["decoder"] = json!({"type": "Sequence", "decoders": [
        {"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
        {"type": "ByteFallback"},
        {"type": "Fuse"}
    ]});
    j
}

/// Writes tokenizer.json (and tokenizer_config.json when given) into a fresh temp dir.
pub fn write_bundle(tokenizer: &Value, config: Option<&Value>) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("tokenizer.json"),
        serde_json::to_string_pretty(tokenizer).unwrap(),
    )
    .unwrap();
    if let Some(c) = config {
        std::fs::write(
            dir.path().join("tokenizer_config.json"),
            serde_json::to_string_pretty(c).unwrap(),
        )
        .unwrap();
    }
    dir
}

/// A tokenizer_config.json in the HF layout for the tokenizers above.
pub fn tokenizer_config() -> Value {
    let mut dec = serde_json::Map::new();
    for (id, t) in SPECIALS {
        dec.insert(
            id.to_string(),
            json!({"content": t, "lstrip": false, "normalized": false, "rstrip": false,
                                          "single_word": false, "special": true}),
        );
    }
    json!({
        "added_tokens_decoder": dec,
        "bos_token": "<bos>",
        "eos_token": "<|im_end|>",
        "pad_token": "<pad>",
        "clean_up_tokenization_spaces": false,
        "model_max_length": 1000000,
        "tokenizer_class": "PreTrainedTokenizerFast"
    })
}
