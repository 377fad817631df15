//! `zaya serve` over loopback on the tiny synthetic bundle (in-process servers, one per setting):
//! every endpoint, the fields, the error statuses, streaming, the exact prefix cache (a cached
//! request = the same request on a cold server: tokens, and logprobs within 1e-5), disconnects
//! freeing their slot, and the official `openai` Python client. The answers are checked against the
//! library's single-sequence session path.
mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use zaya_mlx::model::ModelOptions;
use zaya_mlx::runtime::{GenParams, Zaya};
use zaya_mlx::server::{spawn, ServeOptions, ServerHandle};
use zaya_mlx::text::chat::{ChatOptions, Message};
use zaya_mlx::tools::synth::{write_bundle, SynthOptions, SynthSpec};

fn bundle() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    write_bundle(
        &SynthSpec::preset("tiny").unwrap(),
        dir.path(),
        &SynthOptions::default(),
    )
    .unwrap();
    dir
}

fn server(dir: &std::path::Path, f: impl FnOnce(&mut ServeOptions)) -> ServerHandle {
    let zaya = Zaya::load(dir, ModelOptions::default()).unwrap();
    let mut o = ServeOptions {
        port: 0,
        model_id: "tiny".into(),
        ..ServeOptions::default()
    };
    f(&mut o);
    spawn(zaya, o).unwrap()
}

fn url(s: &ServerHandle, path: &str) -> String {
    format!("http://{}{path}", s.addr)
}

/// POSTs JSON; returns (status, body, headers we check).
fn post(s: &ServerHandle, path: &str, body: &Value, key: Option<&str>) -> (u16, Value, Option<String>) {
    post_raw(s, path, body.to_string().as_bytes(), key)
}

fn post_raw(s: &ServerHandle, path: &str, body: &[u8], key: Option<&str>) -> (u16, Value, Option<String>) {
    let mut req = ureq::post(&url(s, path)).set("Content-Type", "application/json");
    if let Some(k) = key {
        req = req.set("Authorization", &format!("Bearer {k}"));
    }
    let resp = match req.send_bytes(body) {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("{path}: {e}"),
    };
    let status = resp.status();
    let retry = resp.header("retry-after").map(str::to_string);
    let text = resp.into_string().unwrap();
    let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, v, retry)
}

fn get(s: &ServerHandle, path: &str) -> (u16, Value) {
    let r = ureq::get(&url(s, path)).call().unwrap();
    (r.status(), r.into_json().unwrap())
}

/// The SSE `data:` payloads of a streamed response, in order.
fn stream(s: &ServerHandle, path: &str, body: &Value) -> Vec<String> {
    let resp = ureq::post(&url(s, path)).send_json(body.clone()).unwrap();
    assert!(resp
        .header("content-type")
        .unwrap_or("")
        .starts_with("text/event-stream"));
    BufReader::new(resp.into_reader())
        .lines()
        .map(|l| l.unwrap())
        .filter_map(|l| l.strip_prefix("data: ").map(str::to_string))
        .collect()
}

fn assert_error(status: u16, body: &Value, want: u16) {
    assert_eq!(status, want, "{body}");
    let e = &body["error"];
    assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "{body}");
    assert!(e["type"].is_string(), "{body}");
}

/// What the library's session path answers to one user message (greedy).
fn session_answer(dir: &std::path::Path, msgs: &[Message], max_tokens: usize) -> (String, usize) {
    let zaya = Zaya::load(dir, ModelOptions::default()).unwrap();
    let tpl = zaya.chat_template().unwrap();
    let tok = zaya.tokenizer().unwrap();
    let opts = ChatOptions {
        add_generation_prompt: true,
        ..ChatOptions::default()
    };
    let v: Vec<Value> = msgs.iter().map(Message::to_value).collect();
    let ids = tpl.tokenize(tok, &v, &opts).unwrap();
    let params = GenParams {
        max_tokens: Some(max_tokens),
        ..GenParams::default()
    };
    let mut s = zaya.session();
    let (text, _) = s.generate_from_tokens(&ids, &params).unwrap().collect_text().unwrap();
    (text, ids.len())
}

#[test]
fn endpoints_answer_like_the_session_path() {
    let dir = bundle();
    let s = server(dir.path(), |_| {});
    for p in ["/health", "/v1/health"] {
        assert_eq!(get(&s, p), (200, json!({"status": "ok"})));
    }
    for p in ["/v1/models", "/models"] {
        let (st, v) = get(&s, p);
        assert_eq!(st, 200);
        assert_eq!(v["data"][0]["id"], "tiny");
        assert_eq!(v["object"], "list");
    }
    let msgs = [Message::user("Hello there!")];
    let (want, prompt_len) = session_answer(dir.path(), &msgs, 12);
    let body = json!({"model": "tiny", "messages": [{"role": "user", "content": "Hello there!"}], "max_tokens": 12});
    for path in ["/v1/chat/completions", "/chat/completions"] {
        let (st, v, _) = post(&s, path, &body, None);
        assert_eq!(st, 200, "{v}");
        assert_eq!(v["object"], "chat.completion");
        assert_eq!(v["choices"][0]["message"]["role"], "assistant");
        assert_eq!(v["choices"][0]["message"]["content"], want.as_str());
        assert_eq!(v["choices"][0]["finish_reason"], "length");
        assert_eq!(v["usage"]["prompt_tokens"], prompt_len);
        assert_eq!(v["usage"]["completion_tokens"], 12);
        assert_eq!(v["usage"]["total_tokens"], prompt_len + 12);
        assert!(v["usage"]["prompt_tokens_details"]["cached_tokens"].is_u64());
        assert!(v["choices"][0]["message"].get("reasoning_content").is_none());
    }
    // content given as text parts is the same message
    let parts = json!({"messages": [{"role": "user", "content": [{"type": "text", "text": "Hello "}, {"type": "text", "text": "there!"}]}], "max_tokens": 12});
    assert_eq!(
        post(&s, "/v1/chat/completions", &parts, None).1["choices"][0]["message"]["content"],
        want.as_str()
    );

    // streaming: the deltas add up to the same text; finish chunk, usage chunk, [DONE]
    let mut sbody = body.clone();
    sbody["stream"] = json!(true);
    sbody["stream_options"] = json!({"include_usage": true});
    let chunks = stream(&s, "/v1/chat/completions", &sbody);
    assert_eq!(chunks.last().unwrap(), "[DONE]");
    let parsed: Vec<Value> = chunks[..chunks.len() - 1]
        .iter()
        .map(|c| serde_json::from_str(c).unwrap())
        .collect();
    assert!(parsed.iter().all(|c| c["object"] == "chat.completion.chunk"));
    assert_eq!(parsed[0]["choices"][0]["delta"]["role"], "assistant");
    let text: String = parsed
        .iter()
        .filter_map(|c| {
            c["choices"]
                .get(0)?
                .get("delta")?
                .get("content")?
                .as_str()
                .map(str::to_string)
        })
        .collect();
    assert_eq!(text, want);
    let usage = parsed.last().unwrap();
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(usage["usage"]["completion_tokens"], 12);
    assert_eq!(parsed[parsed.len() - 2]["choices"][0]["finish_reason"], "length");

    // text completions with token ids and with a string; logprobs
    let zaya = Zaya::load(dir.path(), ModelOptions::default()).unwrap();
    let ids = zaya.tokenizer().unwrap().encode("Once upon a time", true).unwrap();
    let want_ids: Vec<u32> = zaya
        .session()
        .generate_from_tokens(
            &ids,
            &GenParams {
                max_tokens: Some(6),
                ..GenParams::default()
            },
        )
        .unwrap()
        .map(|t| t.unwrap().id)
        .collect();
    let want_text = zaya.tokenizer().unwrap().decode(&want_ids, false).unwrap();
    let (st, v, _) = post(
        &s,
        "/v1/completions",
        &json!({"prompt": ids, "max_tokens": 6, "logprobs": 3}),
        None,
    );
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["object"], "text_completion");
    assert_eq!(v["choices"][0]["text"], want_text.as_str());
    let lp = &v["choices"][0]["logprobs"];
    assert_eq!(lp["token_logprobs"].as_array().unwrap().len(), 6);
    assert!(lp["top_logprobs"][0].as_object().unwrap().len() <= 3);
    assert!(lp["token_logprobs"]
        .as_array()
        .unwrap()
        .iter()
        .all(|x| x.as_f64().unwrap() <= 0.0));
    let (_, v2, _) = post(
        &s,
        "/completions",
        &json!({"prompt": "Once upon a time", "max_tokens": 6}),
        None,
    );
    assert_eq!(v2["choices"][0]["text"], want_text.as_str());
    assert_eq!(v2["usage"]["prompt_tokens"], ids.len());

    // chat logprobs
    let mut lbody = body.clone();
    lbody["logprobs"] = json!(true);
    lbody["top_logprobs"] = json!(2);
    let (_, v, _) = post(&s, "/v1/chat/completions", &lbody, None);
    let content = v["choices"][0]["logprobs"]["content"].as_array().unwrap();
    assert_eq!(content.len(), 12);
    assert_eq!(content[0]["top_logprobs"].as_array().unwrap().len(), 2);
    // greedy: the chosen token is the most likely one
    assert_eq!(content[0]["logprob"], content[0]["top_logprobs"][0]["logprob"]);
    s.shutdown().unwrap();
}

#[test]
fn sampling_fields_thinking_stop_and_tools() {
    let dir = bundle();
    let s = server(dir.path(), |_| {});
    let msg = json!([{"role": "user", "content": "Tell me a story."}]);
    // seeded sampling is reproducible; every sampling field is accepted
    let body = json!({"messages": msg, "max_tokens": 10, "temperature": 0.8, "top_p": 0.9, "top_k": 20, "min_p": 0.05,
        "seed": 7, "presence_penalty": 0.5, "frequency_penalty": 0.2, "repetition_penalty": 1.1, "logit_bias": {"5": -100}});
    let (st, a, _) = post(&s, "/v1/chat/completions", &body, None);
    assert_eq!(st, 200, "{a}");
    let (_, b, _) = post(&s, "/v1/chat/completions", &body, None);
    assert_eq!(
        a["choices"][0]["message"]["content"],
        b["choices"][0]["message"]["content"]
    );
    // a logit bias of +100 on one id makes every token that id
    let zaya = Zaya::load(dir.path(), ModelOptions::default()).unwrap();
    let tok = zaya.tokenizer().unwrap();
    let x = tok.encode("x", false).unwrap()[0];
    let forced = json!({"messages": msg, "max_tokens": 4, "logit_bias": {x.to_string(): 100}});
    let (_, v, _) = post(&s, "/v1/chat/completions", &forced, None);
    assert_eq!(v["choices"][0]["message"]["content"], "xxxx");
    // a stop string ends the answer before it
    let stopped = json!({"messages": msg, "max_tokens": 10, "logit_bias": {x.to_string(): 100}, "stop": ["xxx"]});
    let (_, v, _) = post(&s, "/v1/chat/completions", &stopped, None);
    assert_eq!(v["choices"][0]["message"]["content"], "");
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    // thinking on: the reasoning field is there; a forced <think>…</think> answer splits
    let think_open = tok.encode("<think>", false).unwrap();
    let thinking = json!({"messages": msg, "max_tokens": 3, "chat_template_kwargs": {"enable_thinking": true}});
    let (_, v, _) = post(&s, "/v1/chat/completions", &thinking, None);
    assert!(v["choices"][0]["message"]["reasoning_content"].is_string(), "{v}");
    if think_open.len() == 1 {
        let forced = json!({"messages": msg, "max_tokens": 3, "chat_template_kwargs": {"enable_thinking": true},
            "logit_bias": {think_open[0].to_string(): 100}});
        let (_, v, _) = post(&s, "/v1/chat/completions", &forced, None);
        assert_eq!(v["choices"][0]["message"]["content"], "", "{v}");
    }
    // tools render through the template (no call in random text: finish is not tool_calls)
    let tools = json!({"messages": msg, "max_tokens": 3, "tools": [{"type": "function", "function": {"name": "get_weather",
        "description": "Weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]});
    let (st, v, _) = post(&s, "/v1/chat/completions", &tools, None);
    assert_eq!(st, 200, "{v}");
    assert_ne!(v["choices"][0]["finish_reason"], "tool_calls");
    let (ta, _) = {
        let (_, plain, _) = post(
            &s,
            "/v1/chat/completions",
            &json!({"messages": msg, "max_tokens": 3}),
            None,
        );
        (plain["usage"]["prompt_tokens"].as_u64().unwrap(), 0)
    };
    assert!(
        v["usage"]["prompt_tokens"].as_u64().unwrap() > ta,
        "the tool schemas are in the prompt"
    );
    s.shutdown().unwrap();
}

#[test]
fn errors_are_openai_error_objects_with_the_right_status() {
    let dir = bundle();
    let s = server(dir.path(), |o| {
        o.max_body_bytes = 4096;
        o.api_key = Some("sekrit".into());
    });
    let k = Some("sekrit");
    let chat = "/v1/chat/completions";
    let ok = json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2});
    // auth
    let (st, v, _) = post(&s, chat, &ok, None);
    assert_error(st, &v, 401);
    let (st, v, _) = post(&s, chat, &ok, Some("wrong"));
    assert_error(st, &v, 401);
    assert_eq!(post(&s, chat, &ok, k).0, 200);
    assert_eq!(
        ureq::get(&url(&s, "/health")).call().unwrap().status(),
        200,
        "health needs no key"
    );
    // malformed JSON, wrong types, bad values
    let (st, v, _) = post_raw(&s, chat, b"{not json", k);
    assert_error(st, &v, 400);
    for bad in [
        json!({"messages": "hi"}),
        json!({"messages": []}),
        json!({"messages": [{"content": "no role"}]}),
        json!({"messages": [{"role": "user", "content": "hi"}], "temperature": "hot"}),
        json!({"messages": [{"role": "user", "content": "hi"}], "temperature": -1}),
        json!({"messages": [{"role": "user", "content": "hi"}], "top_p": 0}),
        json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 0}),
        json!({"messages": [{"role": "user", "content": "hi"}], "n": 2}),
        json!({"messages": [{"role": "user", "content": "hi"}], "stop": 5}),
        json!({"messages": [{"role": "user", "content": "hi"}], "logit_bias": {"x": 1}}),
        json!({"messages": [{"role": "user", "content": "hi"}], "top_logprobs": 50, "logprobs": true}),
        json!({"messages": [{"role": "user", "content": "hi"}], "stream": "yes"}),
        json!([1, 2]),
    ] {
        let (st, v, _) = post(&s, chat, &bad, k);
        assert_error(st, &v, 400);
    }
    for bad in [
        json!({"prompt": 5}),
        json!({"prompt": []}),
        json!({"prompt": [1, 99999999]}),
        json!({}),
    ] {
        let (st, v, _) = post(&s, "/v1/completions", &bad, k);
        assert_error(st, &v, 400);
    }
    // unknown model
    let (st, v, _) = post(
        &s,
        chat,
        &json!({"model": "gpt-9", "messages": [{"role": "user", "content": "hi"}]}),
        k,
    );
    assert_error(st, &v, 404);
    assert_eq!(v["error"]["code"], "model_not_found");
    // over the context (the tiny bundle's context is short)
    let zaya = Zaya::load(dir.path(), ModelOptions::default()).unwrap();
    let long: Vec<u32> = vec![3; zaya.max_context()];
    let (st, v, _) = post(&s, "/v1/completions", &json!({"prompt": long}), k);
    assert!(st == 400 || st == 413, "{st} {v}");
    let short_long: Vec<u32> = vec![3; zaya.max_context().min(600)];
    if short_long.len() == zaya.max_context() {
        // a prompt that fits the body limit but not the context
        let (st, v, _) = post(&s, "/v1/completions", &json!({"prompt": short_long}), k);
        assert_error(st, &v, 400);
        assert_eq!(v["error"]["code"], "context_length_exceeded");
    }
    // body over the limit
    let big = json!({"prompt": "a".repeat(10_000)});
    let (st, v, _) = post(&s, "/v1/completions", &big, k);
    assert_error(st, &v, 413);
    // the server still serves
    assert_eq!(post(&s, chat, &ok, k).0, 200);
    s.shutdown().unwrap();
}

#[test]
fn context_overflow_is_a_400() {
    let dir = bundle();
    let s = server(dir.path(), |_| {});
    let zaya = Zaya::load(dir.path(), ModelOptions::default()).unwrap();
    let long: Vec<u32> = vec![3; zaya.max_context()];
    let (st, v, _) = post(&s, "/v1/completions", &json!({"prompt": long}), None);
    assert_error(st, &v, 400);
    assert_eq!(v["error"]["code"], "context_length_exceeded");
    let text = "word ".repeat(zaya.max_context() * 2);
    let (st, v, _) = post(
        &s,
        "/v1/chat/completions",
        &json!({"messages": [{"role": "user", "content": text}]}),
        None,
    );
    assert_error(st, &v, 400);
    s.shutdown().unwrap();
}

/// Streams `body` over a raw socket, reads `n` data lines, then drops the connection.
fn read_some_then_disconnect(s: &ServerHandle, body: &Value, n: usize) {
    let mut c = TcpStream::connect(s.addr).unwrap();
    let b = body.to_string();
    write!(c, "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{b}", b.len()).unwrap();
    let mut r = BufReader::new(c);
    let mut seen = 0;
    let mut line = String::new();
    while seen < n {
        line.clear();
        if r.read_line(&mut line).unwrap() == 0 {
            break;
        }
        if line.starts_with("data: ") {
            seen += 1;
        }
    }
    assert_eq!(seen, n);
}

#[test]
fn queue_limit_and_disconnects_free_slots() {
    let dir = bundle();
    let s = server(dir.path(), |o| {
        o.max_concurrency = 1;
        o.max_queue = 0;
    });
    let long = json!({"messages": [{"role": "user", "content": "go on"}], "max_tokens": 100000, "stream": true,
        // one id forced: no EOS can end it early
        "logit_bias": {"100": 100}});
    // a long stream holds the only slot: the next request gets 429 with Retry-After
    let c = std::thread::spawn({
        let addr = s.addr;
        let body = long.clone();
        move || {
            let mut c = TcpStream::connect(addr).unwrap();
            let b = body.to_string();
            write!(c, "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{b}", b.len()).unwrap();
            let mut buf = [0u8; 4096];
            let _ = c.read(&mut buf);
            std::thread::sleep(Duration::from_millis(700));
            // dropping the socket here: the server must cancel the sequence
        }
    });
    std::thread::sleep(Duration::from_millis(300));
    let short = json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2});
    let (st, v, retry) = post(&s, "/v1/chat/completions", &short, None);
    assert_error(st, &v, 429);
    assert_eq!(retry.as_deref(), Some("1"));
    c.join().unwrap();
    // after the disconnect the slot frees within a step or two
    let t = Instant::now();
    loop {
        let (st, _, _) = post(&s, "/v1/chat/completions", &short, None);
        if st == 200 {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "the disconnected stream still holds the slot"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // the same with a stream read a little and dropped
    read_some_then_disconnect(&s, &long, 3);
    let t = Instant::now();
    while post(&s, "/v1/chat/completions", &short, None).0 != 200 {
        assert!(t.elapsed() < Duration::from_secs(10));
        std::thread::sleep(Duration::from_millis(50));
    }
    s.shutdown().unwrap();
}

fn logprob_list(v: &Value) -> Vec<(String, f64)> {
    v["choices"][0]["logprobs"]["content"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|e| e["top_logprobs"].as_array().unwrap().clone())
        .map(|t| (t["token"].as_str().unwrap().to_string(), t["logprob"].as_f64().unwrap()))
        .collect()
}

#[test]
fn prefix_cache_is_exact() {
    let dir = bundle();
    let warm = server(dir.path(), |_| {});
    let cold = server(dir.path(), |o| o.prompt_cache_bytes = 0);
    let first = json!({"messages": [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Name a colour."}],
        "max_tokens": 8, "logprobs": true, "top_logprobs": 5});
    let (_, a, _) = post(&warm, "/v1/chat/completions", &first, None);
    assert_eq!(a["usage"]["prompt_tokens_details"]["cached_tokens"], 0);
    let answer = a["choices"][0]["message"]["content"].as_str().unwrap().to_string();
    // the next turn: the conversation so far plus a new message
    let second = json!({"messages": [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Name a colour."},
        {"role": "assistant", "content": answer}, {"role": "user", "content": "Another one?"}],
        "max_tokens": 8, "logprobs": true, "top_logprobs": 5});
    let (_, w, _) = post(&warm, "/v1/chat/completions", &second, None);
    let (_, c, _) = post(&cold, "/v1/chat/completions", &second, None);
    let cached = w["usage"]["prompt_tokens_details"]["cached_tokens"].as_u64().unwrap();
    assert!(cached > 0, "the second turn reused nothing: {w}");
    assert!(cached < w["usage"]["prompt_tokens"].as_u64().unwrap());
    assert_eq!(c["usage"]["prompt_tokens_details"]["cached_tokens"], 0);
    assert_eq!(
        w["choices"][0]["message"]["content"],
        c["choices"][0]["message"]["content"]
    );
    let (lw, lc) = (logprob_list(&w), logprob_list(&c));
    assert_eq!(lw.len(), lc.len());
    for ((tw, pw), (tc, pc)) in lw.iter().zip(&lc) {
        assert_eq!(tw, tc);
        assert!((pw - pc).abs() <= 1e-5 * pc.abs().max(1.0), "{pw} vs {pc}");
    }
    // the same request again reuses all but its last prompt token
    let (_, again, _) = post(&warm, "/v1/chat/completions", &second, None);
    assert_eq!(
        again["usage"]["prompt_tokens_details"]["cached_tokens"]
            .as_u64()
            .unwrap(),
        again["usage"]["prompt_tokens"].as_u64().unwrap() - 1
    );
    assert_eq!(
        again["choices"][0]["message"]["content"],
        c["choices"][0]["message"]["content"]
    );
    warm.shutdown().unwrap();
    cold.shutdown().unwrap();
}

#[test]
fn concurrent_requests_each_get_their_own_answer() {
    let dir = bundle();
    let s = server(dir.path(), |o| o.max_concurrency = 4);
    let prompts = ["one", "two two", "three three three", "four", "five five", "six"];
    let want: Vec<String> = prompts
        .iter()
        .map(|p| session_answer(dir.path(), &[Message::user(*p)], 10).0)
        .collect();
    let addr = s.addr;
    let handles: Vec<_> = prompts
        .iter()
        .map(|p| {
            let body = json!({"messages": [{"role": "user", "content": p}], "max_tokens": 10});
            std::thread::spawn(move || {
                let r: Value = ureq::post(&format!("http://{addr}/v1/chat/completions"))
                    .send_json(body)
                    .unwrap()
                    .into_json()
                    .unwrap();
                r["choices"][0]["message"]["content"].as_str().unwrap().to_string()
            })
        })
        .collect();
    let got: Vec<String> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    assert_eq!(got, want);
    s.shutdown().unwrap();
}

#[test]
fn openai_python_client() {
    let dir = bundle();
    let s = server(dir.path(), |_| {});
    let script = common::repo_root().join("tests/reference/openai_client.py");
    let out = common::run_python(&script, &[&format!("http://{}/v1", s.addr), "tiny"]);
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let msgs = [Message::user("Say hello.")];
    let (want, _) = session_answer(dir.path(), &msgs, 8);
    assert_eq!(report["chat"], want.as_str());
    assert_eq!(report["chat_stream"], want.as_str());
    assert_eq!(report["models"], json!(["tiny"]));
    assert!(report["usage_completion_tokens"] == 8);
    assert!(report["completion_text"].is_string());
    assert_eq!(report["completion_tokens"], 5);
    assert_eq!(report["error_status"], 404);
    s.shutdown().unwrap();
}

#[test]
fn hostile_bodies_never_break_the_server() {
    use rand::{Rng, SeedableRng};
    let dir = bundle();
    let s = server(dir.path(), |o| o.max_body_bytes = 64 << 10);
    let seed: u64 = std::env::var("ZAYA_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let values = [
        json!(null),
        json!(true),
        json!(-1),
        json!(0),
        json!(1e308),
        json!(-1e308),
        json!(1.5),
        json!(4294967296u64),
        json!("x"),
        json!(""),
        json!([]),
        json!({}),
        json!([1, -2, "a"]),
        json!({"a": {"b": []}}),
        json!("\u{0}\u{ffff}"),
    ];
    let keys = [
        "messages",
        "prompt",
        "max_tokens",
        "temperature",
        "top_p",
        "top_k",
        "min_p",
        "seed",
        "stop",
        "n",
        "logit_bias",
        "logprobs",
        "top_logprobs",
        "stream",
        "stream_options",
        "tools",
        "chat_template_kwargs",
        "model",
        "presence_penalty",
        "repetition_penalty",
        "max_completion_tokens",
    ];
    for case in 0..300 {
        let mut body = serde_json::Map::new();
        if rng.gen_bool(0.7) {
            body.insert("messages".into(), json!([{"role": "user", "content": "hi"}]));
            body.insert("prompt".into(), json!("hi"));
        }
        body.insert("max_tokens".into(), json!(2));
        for _ in 0..rng.gen_range(1..4) {
            let k = keys[rng.gen_range(0..keys.len())];
            let v = if rng.gen_bool(0.2) {
                json!([{"role": values[rng.gen_range(0..values.len())].clone(), "content": values[rng.gen_range(0..values.len())].clone()}])
            } else {
                values[rng.gen_range(0..values.len())].clone()
            };
            body.insert(k.into(), v);
        }
        if body.get("max_tokens").and_then(Value::as_i64).is_none_or(|m| m > 4) {
            body.insert("max_tokens".into(), json!(2));
        }
        body.remove("max_completion_tokens");
        let mut bytes = Value::Object(body).to_string().into_bytes();
        if rng.gen_bool(0.1) && !bytes.is_empty() {
            let i = rng.gen_range(0..bytes.len());
            bytes[i] = rng.gen();
        }
        let path = if rng.gen_bool(0.5) {
            "/v1/chat/completions"
        } else {
            "/v1/completions"
        };
        let (st, v, _) = post_raw(&s, path, &bytes, None);
        assert!(
            [200, 400, 404, 413].contains(&st),
            "case {case} (seed {seed}): {st} {v} for {}",
            String::from_utf8_lossy(&bytes)
        );
        if st != 200 {
            assert!(v["error"]["message"].is_string(), "case {case}: {v}");
        }
    }
    assert_eq!(get(&s, "/health").0, 200);
    s.shutdown().unwrap();
}
