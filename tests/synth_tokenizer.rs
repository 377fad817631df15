//! The synthetic tokenizer (assets/synth/tokenizer.json) and chat template: ids of the ZAYA special
//! tokens, round trips, reproducibility of the committed asset, and the template rendered by
//! minijinja (our side) against Python jinja2 the way transformers renders chat templates.
mod synth_support;

use std::path::PathBuf;

use serde_json::{json, Value};
use tokenizers::Tokenizer;
use zaya_mlx::tools::synth::tokenizer::{self as synth_tok, CHAT_TEMPLATE, SYNTH_VOCAB_MIN, TOKENIZER_JSON};

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
    assert_eq!(
        synth_tok::build_tokenizer_json().unwrap(),
        TOKENIZER_JSON,
        "rerun the ignored regenerate test"
    );
}

#[test]
fn special_tokens_sit_at_the_zaya_ids() {
    let t = tokenizer();
    let ids = [
        ("<pad>", 0),
        ("<eos>", 1),
        ("<bos>", 2),
        ("<zyphra_tool_call>", 101),
        ("</zyphra_tool_call>", 102),
        ("<zyphra_tool_response>", 103),
        ("</zyphra_tool_response>", 104),
        ("<|im_start|>", 105),
        ("<|im_end|>", 106),
        ("<think>", 107),
        ("</think>", 108),
    ];
    for (tok, id) in ids {
        assert_eq!(t.token_to_id(tok), Some(id), "{tok}");
        assert_eq!(t.id_to_token(id).as_deref(), Some(tok));
    }
    let n = t.get_vocab_size(true);
    assert!(n > 109 + 256 + 200, "a few hundred merges expected, vocab {n}");
    assert_eq!(
        n, SYNTH_VOCAB_MIN,
        "update SYNTH_VOCAB_MIN after regenerating the tokenizer"
    );
    // no holes: every id below the vocab size decodes to a token
    assert!((0..n as u32).all(|i| t.id_to_token(i).is_some()));
}

#[test]
fn encode_decode_round_trips() {
    let t = tokenizer();
    for text in [
        "Hello! How are you today?",
        "The capital of France is Paris.",
        "unicode: héllo wörld — 東京 🚀",
        "fn main() { println!(\"{}\", 2 + 2); }\n\ttabs and  spaces",
        "<|im_start|>user\nHi<|im_end|>\n<think>\n\n</think>\n\n",
    ] {
        let enc = t.encode(text, false).unwrap();
        assert_eq!(t.decode(enc.get_ids(), false).unwrap(), text);
    }
    let with_bos = t.encode("Hello", true).unwrap();
    assert_eq!(
        with_bos.get_ids()[0],
        2,
        "<bos> is prepended when special tokens are added"
    );
    let e = t.encode("<|im_start|>assistant\n<think>x</think>", false).unwrap();
    assert_eq!(e.get_ids()[0], 105);
    assert!(e.get_ids().contains(&107) && e.get_ids().contains(&108));
    // <think> is not special: it survives skip_special_tokens, <|im_start|> does not
    let d = t.decode(e.get_ids(), true).unwrap();
    assert!(d.contains("<think>") && !d.contains("<|im_start|>"), "{d}");
    // common words of the corpus are single tokens
    assert_eq!(t.encode(" the", false).unwrap().get_ids().len(), 1);
}

fn chat_cases() -> Value {
    let tools = json!([{"type": "function", "function": {"name": "get_weather", "description": "Current weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string", "description": "City name"},
                                                        "unit": {"type": "string"}}, "required": ["city"]}}}]);
    json!({
        "chats": [
            {"messages": [{"role": "user", "content": "Hello!"}], "add_generation_prompt": true},
            {"messages": [{"role": "user", "content": "Hello!"}], "add_generation_prompt": true, "enable_thinking": false},
            {"messages": [{"role": "user", "content": "Hello!"}], "add_generation_prompt": true, "enable_thinking": true},
            {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"},
                          {"role": "assistant", "content": "4"}, {"role": "user", "content": "And 3+3?"}],
             "add_generation_prompt": true},
            {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}], "add_generation_prompt": false},
            {"messages": [{"role": "system", "content": "You help with weather."}, {"role": "user", "content": "Weather in Paris?"},
                          {"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}}]},
                          {"role": "tool", "content": "{\"temp\": 21}"}, {"role": "tool", "content": "sunny"}],
             "tools": tools, "add_generation_prompt": true, "enable_thinking": true},
            {"messages": [{"role": "user", "content": "Weather?"}], "tools": tools, "add_generation_prompt": true},
        ],
        "texts": ["Hello world", "The quick brown fox jumps over the lazy dog. 東京 🚀", "<|im_start|>user\nHi<|im_end|>"]
    })
}

fn render_minijinja(case: &Value) -> String {
    let mut env = minijinja::Environment::new();
    env.add_template("chat", CHAT_TEMPLATE).unwrap();
    let mut ctx = serde_json::Map::new();
    ctx.insert("messages".into(), case["messages"].clone());
    ctx.insert("tools".into(), case.get("tools").cloned().unwrap_or(Value::Null));
    ctx.insert("add_generation_prompt".into(), case["add_generation_prompt"].clone());
    if let Some(t) = case.get("enable_thinking") {
        ctx.insert("enable_thinking".into(), t.clone());
    }
    ctx.insert("bos_token".into(), json!("<bos>"));
    ctx.insert("eos_token".into(), json!("<|im_end|>"));
    env.get_template("chat")
        .unwrap()
        .render(minijinja::Value::from_serialize(&ctx))
        .unwrap()
}

#[test]
fn chat_template_renders_like_transformers_and_tokenizes_alike() {
    let dir = tempfile::tempdir().unwrap();
    let spec = zaya_mlx::tools::synth::SynthSpec::preset("tiny").unwrap();
    // only the side files are needed; write a whole tiny bundle (fast)
    let bundle = dir.path().join("b");
    zaya_mlx::tools::synth::write_bundle(&spec, &bundle, &Default::default()).unwrap();
    let cases = chat_cases();
    let cases_path = dir.path().join("cases.json");
    std::fs::write(&cases_path, cases.to_string()).unwrap();
    let hf = synth_support::run_python_json(
        "synth_hf_tokenizer.py",
        &[bundle.to_str().unwrap(), cases_path.to_str().unwrap()],
    );
    assert_eq!(hf["bos"], "<bos>");
    assert_eq!(hf["eos"], "<|im_end|>");
    let t = tokenizer();
    for (i, case) in cases["chats"].as_array().unwrap().iter().enumerate() {
        let ours = render_minijinja(case);
        let theirs = hf["chats"][i]["text"].as_str().unwrap();
        assert_eq!(ours, theirs, "chat {i}");
        let ids: Vec<u32> = serde_json::from_value(hf["chats"][i]["ids"].clone()).unwrap();
        assert_eq!(
            t.encode(ours.as_str(), false).unwrap().get_ids(),
            ids.as_slice(),
            "chat {i} ids"
        );
    }
    for (i, text) in cases["texts"].as_array().unwrap().iter().enumerate() {
        let ids: Vec<u32> = serde_json::from_value(hf["texts"][i].clone()).unwrap();
        assert_eq!(
            t.encode(text.as_str().unwrap(), true).unwrap().get_ids(),
            ids.as_slice(),
            "text {i}"
        );
    }
    // the documented behaviours
    let r = |i: usize| hf["chats"][i]["text"].as_str().unwrap().to_string();
    assert_eq!(
        r(0),
        "<bos><|im_start|>user\nHello!<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
    );
    assert_eq!(r(1), r(0), "thinking is off by default");
    assert_eq!(r(2), "<bos><|im_start|>user\nHello!<|im_end|>\n<|im_start|>assistant\n");
    assert!(
        r(5).contains("<zyphra_tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n"),
        "{}",
        r(5)
    );
    assert!(r(5).contains("<|im_start|>user\n<zyphra_tool_response>\n{\"temp\": 21}\n</zyphra_tool_response>\n<zyphra_tool_response>\nsunny\n</zyphra_tool_response><|im_end|>\n"), "{}", r(5));
    assert!(
        r(6).contains("<tools>\n<function>\n<name>get_weather</name>"),
        "{}",
        r(6)
    );
}
