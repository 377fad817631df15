//! Chat templates rendered by minijinja against jinja2 in transformers' chat-template environment
//! (tests/data/ref_chat_template.py), plus loading, option and error handling.
mod text_support;

use serde_json::{json, Map, Value};
use text_support::*;
use zaya_mlx::text::chat::{ChatOptions, ChatTemplate, Message};
use zaya_mlx::ZayaError;

const BOS: &str = "<bos>";
const EOS: &str = "<|im_end|>";

struct Case {
    template: &'static str,
    messages: Value,
    tools: Option<Value>,
    agp: bool,
    cfm: bool,
    kwargs: Map<String, Value>,
}

fn tools() -> Value {
    json!([
        {"type": "function", "function": {
            "name": "get_weather",
            "description": "Current weather <b>&amp; ünïcödé \"quoted\"",
            "parameters": {"type": "object",
                "properties": {"city": {"type": "string", "description": "City name"},
                               "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
                "required": ["city"]}}},
        {"type": "function", "function": {
            "name": "add", "description": "Add two numbers",
            "parameters": {"type": "object", "properties": {"a": {"type": "number", "default": 1.5},
                                                            "b": {"type": "integer"}}}}}
    ])
}

fn conversations() -> Vec<(&'static str, Value, bool)> {
    vec![
        (
            "system+user",
            json!([{"role": "system", "content": "You are ZAYA."}, {"role": "user", "content": "Hi!"}]),
            false,
        ),
        (
            "multi-turn",
            json!([
            {"role": "user", "content": "What is 2+2?"},
            {"role": "assistant", "content": "4", "reasoning_content": "Simple arithmetic."},
            {"role": "user", "content": "And 3+3?"},
            {"role": "assistant", "content": "<think>\nadd three\n</think>\n\n6"},
            {"role": "user", "content": "Thanks"}]),
            false,
        ),
        (
            "reasoning after last user",
            json!([
            {"role": "user", "content": "Q?"},
            {"role": "assistant", "content": "A.", "reasoning_content": "  thinking it over  "}]),
            false,
        ),
        (
            "tools",
            json!([
            {"role": "system", "content": "Be helpful."},
            {"role": "user", "content": "Weather in Paris and Tokyo?"},
            {"role": "assistant", "content": "", "tool_calls": [
                {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}},
                {"type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Tokyo\"}"}}]},
            {"role": "tool", "name": "get_weather", "content": "{\"temp\": 18}"},
            {"role": "tool", "content": "22C"},
            {"role": "assistant", "content": "Paris 18°C, Tokyo 22°C."},
            {"role": "user", "content": "Thanks!"}]),
            true,
        ),
        (
            "tools, no system",
            json!([
            {"role": "user", "content": "call it"},
            {"role": "assistant", "content": "Calling.", "tool_calls": [
                {"type": "function", "function": {"name": "add", "arguments": {"a": 1.0, "b": 2}}}]},
            {"role": "tool", "content": "3.0"}]),
            true,
        ),
        (
            "thinking alias",
            json!([{"role": "user", "content": "hi"},
                                  {"role": "assistant", "thinking": "hmm", "content": "hello"}]),
            false,
        ),
    ]
}

fn cases() -> Vec<Case> {
    let mut v = Vec::new();
    for template in ["zaya", "qwen3"] {
        for (_, messages, with_tools) in conversations() {
            for agp in [false, true] {
                for thinking in [None, Some(true), Some(false)] {
                    let mut kwargs = Map::new();
                    if let Some(t) = thinking {
                        kwargs.insert("enable_thinking".into(), json!(t));
                    }
                    v.push(Case {
                        template,
                        messages: messages.clone(),
                        tools: with_tools.then(tools),
                        agp,
                        cfm: false,
                        kwargs,
                    });
                }
            }
        }
        // continue_final_message (mlx-lm --prefill-response)
        v.push(Case {
            template,
            messages: json!([{"role": "user", "content": "Tell me a story"},
                             {"role": "assistant", "content": "Once upon a time"}]),
            tools: None,
            agp: false,
            cfm: true,
            kwargs: Map::new(),
        });
    }
    let mut kwargs = Map::new();
    kwargs.insert("custom_flag".into(), json!(true));
    kwargs.insert("enable_thinking".into(), json!(false));
    kwargs.insert("nested".into(), json!({"a": {"b": [1, 2.5, null]}}));
    v.push(Case {
        template: "features",
        messages: json!([
            {"role": "system", "content": "S"},
            {"role": "user", "content": "U", "extra_key": 3},
            {"role": "assistant", "content": "A"},
            {"role": "user", "content": "ctrl\u{1} tab\t nl\n quote\" apos' emoji😀 html<b>& nbsp\u{a0} ls\u{2028} bs\\"}]),
        tools: Some(json!([tools()[0].clone()])),
        agp: true,
        cfm: false,
        kwargs,
    });
    v
}

fn template_source(name: &str) -> String {
    let file = match name {
        "zaya" => "zaya_chat_template.jinja",
        "qwen3" => "qwen3_style_chat_template.jinja",
        "features" => "features_chat_template.jinja",
        _ => unreachable!(),
    };
    std::fs::read_to_string(data(file)).unwrap()
}

fn rust_template(name: &str) -> ChatTemplate {
    let mut t = ChatTemplate::from_source(&template_source(name), &format!("{name}.jinja")).unwrap();
    t.set_special_token("bos_token", BOS);
    t.set_special_token("eos_token", EOS);
    t
}

fn options(c: &Case) -> ChatOptions {
    ChatOptions {
        add_generation_prompt: c.agp,
        continue_final_message: c.cfm,
        tools: c.tools.as_ref().map(|t| t.as_array().unwrap().clone()),
        extra: c.kwargs.clone(),
        enable_thinking: c.kwargs.get("enable_thinking").and_then(Value::as_bool),
        ..Default::default()
    }
}

fn python_render(cases: &[Case]) -> Vec<Value> {
    let templates: Map<String, Value> = ["zaya", "qwen3", "features"]
        .iter()
        .map(|n| (n.to_string(), json!(template_source(n))))
        .collect();
    let req = json!({
        "templates": templates,
        "special": {"bos_token": BOS, "eos_token": EOS},
        "cases": cases.iter().map(|c| json!({
            "template": c.template, "messages": c.messages, "tools": c.tools,
            "add_generation_prompt": c.agp, "continue_final_message": c.cfm, "kwargs": c.kwargs})).collect::<Vec<_>>()
    });
    run_python("ref_chat_template.py", &req).as_array().unwrap().clone()
}

#[test]
fn renders_match_transformers_jinja2() {
    let cases = cases();
    let reference = python_render(&cases);
    let templates: Vec<(&str, ChatTemplate)> = ["zaya", "qwen3", "features"]
        .iter()
        .map(|n| (*n, rust_template(n)))
        .collect();
    let mut checked = 0;
    for (c, r) in cases.iter().zip(&reference) {
        let tpl = &templates.iter().find(|t| t.0 == c.template).unwrap().1;
        let msgs = c.messages.as_array().unwrap();
        let ours = tpl.render(msgs, &options(c));
        let expected = r
            .get("ok")
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("python failed: {r}"));
        let ours = ours.unwrap_or_else(|e| panic!("{}: {e}", c.template));
        assert_eq!(
            ours, expected,
            "template {} messages {} agp {} kwargs {:?}",
            c.template, c.messages, c.agp, c.kwargs
        );
        checked += 1;
    }
    assert_eq!(checked, cases.len());
    // the thinking switch must change the ZAYA generation prompt
    let z = rust_template("zaya");
    let m = vec![Message::user("hi")];
    let on = z
        .render_messages(
            &m,
            &ChatOptions {
                add_generation_prompt: true,
                enable_thinking: Some(true),
                ..Default::default()
            },
        )
        .unwrap();
    let off = z
        .render_messages(
            &m,
            &ChatOptions {
                add_generation_prompt: true,
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(on, "<bos><|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n");
    assert_eq!(off, format!("{on}<think>\n\n</think>\n\n"));
}

#[test]
fn raise_exception_is_a_typed_error_like_jinja2() {
    let bad = [
        json!([{"role": "user", "content": "a"}, {"role": "system", "content": "late"}]),
        json!([{"role": "robot", "content": "beep"}]),
    ];
    let cases: Vec<Case> = bad
        .iter()
        .map(|m| Case {
            template: "zaya",
            messages: m.clone(),
            tools: None,
            agp: false,
            cfm: false,
            kwargs: Map::new(),
        })
        .collect();
    let reference = python_render(&cases);
    let tpl = rust_template("zaya");
    for (c, r) in cases.iter().zip(&reference) {
        let msg = r["error"].as_str().unwrap_or_else(|| panic!("python should fail: {r}"));
        match tpl.render(c.messages.as_array().unwrap(), &options(c)) {
            Err(ZayaError::Template(m)) => {
                assert!(m.contains(msg), "{m:?} should contain {msg:?}");
                assert!(m.contains("zaya.jinja line "), "{m}");
            }
            other => panic!("expected a Template error, got {other:?}"),
        }
    }
}

#[test]
fn syntax_and_render_errors_name_the_line() {
    match ChatTemplate::from_source("ok\n{{ messages }}\n{% if %}\n", "bad.jinja") {
        Err(ZayaError::Template(m)) => assert!(m.contains("bad.jinja line 3"), "{m}"),
        other => panic!("expected a Template error, got {other:?}"),
    }
    match ChatTemplate::from_source("a\n{% for m in messages %}\n", "open.jinja") {
        Err(ZayaError::Template(m)) => assert!(m.contains("open.jinja"), "{m}"),
        other => panic!("expected a Template error, got {other:?}"),
    }
    let t = ChatTemplate::from_source("line1\nline2\n{{ no_such_function() }}\n", "call.jinja").unwrap();
    match t.render(&[], &ChatOptions::default()) {
        Err(ZayaError::Template(m)) => assert!(m.contains("call.jinja line 3"), "{m}"),
        other => panic!("expected a Template error, got {other:?}"),
    }
    let t = ChatTemplate::from_source("{{ messages[0].content.nope.deeper }}", "attr.jinja").unwrap();
    assert!(
        matches!(t.render(&[json!({"role": "user", "content": "x"})], &ChatOptions::default()),
        Err(ZayaError::Template(m)) if m.contains("attr.jinja line 1"))
    );
    assert!(matches!(
        t.render(&[json!("not an object")], &ChatOptions::default()),
        Err(ZayaError::InvalidArgument(_))
    ));
}

#[test]
fn chat_template_config_is_validated() {
    let base = ChatOptions::default();
    let o = base
        .clone()
        .with_config_json(r#"{"enable_thinking": true, "x": [1]}"#)
        .unwrap();
    assert_eq!(o.enable_thinking, Some(true));
    assert_eq!(o.extra["x"], json!([1]));
    for bad in ["{", "[1]", r#"{"messages": []}"#, r#"{"add_generation_prompt": true}"#] {
        match base.clone().with_config_json(bad) {
            Err(ZayaError::InvalidArgument(m)) => assert!(m.contains("--chat-template-config"), "{m}"),
            other => panic!("{bad}: expected InvalidArgument, got {other:?}"),
        }
    }
}

#[test]
fn loads_from_bundle_files_with_hf_precedence() {
    let dir = tempfile::tempdir().unwrap();
    assert!(ChatTemplate::from_dir(dir.path()).unwrap().is_none());
    let cfg = json!({
        "bos_token": {"content": "<bos>", "special": true}, "eos_token": "<|im_end|>",
        "chat_template": [
            {"name": "default", "template": "D{{ bos_token }}{{ messages|length }}"},
            {"name": "tool_use", "template": "T{{ tools|length }}{{ eos_token }}"}]
    });
    std::fs::write(dir.path().join("tokenizer_config.json"), cfg.to_string()).unwrap();
    let t = ChatTemplate::from_dir(dir.path()).unwrap().unwrap();
    assert_eq!(t.names(), vec!["default", "tool_use"]);
    let m = [Message::user("x").to_value()];
    assert_eq!(t.render(&m, &ChatOptions::default()).unwrap(), "D<bos>1");
    let with_tools = ChatOptions {
        tools: Some(vec![json!({}), json!({})]),
        ..Default::default()
    };
    assert_eq!(t.render(&m, &with_tools).unwrap(), "T2<|im_end|>");
    let named = ChatOptions {
        template_name: Some("default".into()),
        ..with_tools.clone()
    };
    assert_eq!(t.render(&m, &named).unwrap(), "D<bos>1");
    let missing = ChatOptions {
        template_name: Some("nope".into()),
        ..Default::default()
    };
    assert!(matches!(t.render(&m, &missing), Err(ZayaError::InvalidArgument(_))));

    std::fs::write(
        dir.path().join("chat_template.json"),
        json!({"chat_template": "J{{ bos_token }}"}).to_string(),
    )
    .unwrap();
    let t = ChatTemplate::from_dir(dir.path()).unwrap().unwrap();
    assert_eq!(t.render(&m, &ChatOptions::default()).unwrap(), "J<bos>");

    std::fs::write(dir.path().join("chat_template.jinja"), "F{{ eos_token }}\n").unwrap();
    let t = ChatTemplate::from_dir(dir.path()).unwrap().unwrap();
    assert_eq!(
        t.render(&m, &ChatOptions::default()).unwrap(),
        "F<|im_end|>",
        "chat_template.jinja wins; trailing newline dropped"
    );

    std::fs::write(dir.path().join("tokenizer_config.json"), r#"{"chat_template": 5}"#).unwrap();
    std::fs::remove_file(dir.path().join("chat_template.jinja")).unwrap();
    std::fs::remove_file(dir.path().join("chat_template.json")).unwrap();
    assert!(
        matches!(ChatTemplate::from_dir(dir.path()), Err(ZayaError::Template(m)) if m.contains("tokenizer_config.json"))
    );
}

#[test]
fn strftime_now_matches_python() {
    let fmt = "%Y-%m-%d %A %d %B %j %H|%z|%Z|%%";
    let t = ChatTemplate::from_source(&format!("{{{{ strftime_now('{fmt}') }}}}"), "date.jinja").unwrap();
    let before = t.render(&[], &ChatOptions::default()).unwrap();
    let py = run_python("ref_strftime.py", &json!({"format": fmt}));
    let after = t.render(&[], &ChatOptions::default()).unwrap();
    let py = py.as_str().unwrap();
    assert!(
        py == before || py == after,
        "python {py:?} vs ours {before:?} / {after:?}"
    );
}

#[test]
fn tokenized_chat_has_exactly_one_bos() {
    let dir = write_bundle(&byte_level_tokenizer_json(), Some(&tokenizer_config()));
    std::fs::copy(data("zaya_chat_template.jinja"), dir.path().join("chat_template.jinja")).unwrap();
    let tok = zaya_mlx::text::tokenizer::Tokenizer::from_dir(dir.path()).unwrap();
    let tpl = ChatTemplate::from_dir(dir.path()).unwrap().unwrap();
    let opts = ChatOptions {
        add_generation_prompt: true,
        ..Default::default()
    };
    let ids = tpl
        .tokenize(&tok, &[Message::user("Hello <|im_end|> there").to_value()], &opts)
        .unwrap();
    assert_eq!(ids.iter().filter(|&&i| i == 2).count(), 1, "{ids:?}");
    assert_eq!((ids[0], ids[1]), (2, 105), "<bos><|im_start|>");
    // special-token text inside a message is recognised, as with HF apply_chat_template
    assert_eq!(ids.iter().filter(|&&i| i == 106).count(), 2);
}
