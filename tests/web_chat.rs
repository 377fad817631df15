//! The chat page of `zaya serve` in a real headless browser (Debian's chromium + chromium-driver,
//! driven by tests/reference/browser_chat.py through Selenium) against a server on the tiny
//! bundle: a streamed answer, Stop (and the slot it frees), the thinking toggle and folded
//! reasoning, the conversation after a reload, untrusted markup shown as text, a server error shown
//! in the page. With ZAYA_SCREENSHOTS=DIR it also writes chat-wide.png and chat-narrow.png there.
mod common;

use serde_json::Value;
use zaya_mlx::model::ModelOptions;
use zaya_mlx::runtime::Zaya;
use zaya_mlx::server::{spawn, ServeOptions};
use zaya_mlx::tools::synth::{write_bundle, SynthOptions, SynthSpec};

#[test]
fn chat_page_in_a_headless_browser() {
    let dir = tempfile::tempdir().unwrap();
    write_bundle(
        &SynthSpec::preset("tiny").unwrap(),
        dir.path(),
        &SynthOptions::default(),
    )
    .unwrap();
    let zaya = Zaya::load(dir.path(), ModelOptions::default()).unwrap();
    // one slot and no queue: an answer the page stopped must free it, or the next message gets 429
    let s = spawn(
        zaya,
        ServeOptions {
            port: 0,
            max_concurrency: 1,
            max_queue: 0,
            model_id: "tiny".into(),
            ..ServeOptions::default()
        },
    )
    .unwrap();
    let page = ureq::get(&format!("http://{}/", s.addr)).call().unwrap();
    assert!(page.header("content-type").unwrap().starts_with("text/html"));
    let html = page.into_string().unwrap();
    assert!(
        !html.contains("http://") && !html.contains("https://cdn"),
        "the page loads nothing from the network"
    );
    let script = common::repo_root().join("tests/reference/browser_chat.py");
    let base = format!("http://{}", s.addr);
    let shots = std::env::var("ZAYA_SCREENSHOTS").unwrap_or_default();
    let mut args = vec![base.as_str()];
    if !shots.is_empty() {
        args.push(&shots);
    }
    let out = common::run_python(&script, &args);
    let r: Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)));
    assert_eq!(r["model_label"], "Model: tiny");
    assert_eq!(r["shift_enter_keeps_text"], true, "{r}");
    assert_eq!(r["user_text"], "Hello\nthere");
    assert!(!r["answer_text"].as_str().unwrap().is_empty(), "{r}");
    let stats = r["answer_stats"].as_str().unwrap();
    assert!(
        stats.contains("12 tokens")
            && stats.contains("tok/s")
            && stats.contains("first token")
            && stats.contains("cached prompt tokens"),
        "{stats}"
    );
    let req = &r["first_request"];
    assert_eq!(req["stream"], true);
    assert_eq!(req["max_tokens"], 12);
    assert_eq!(req["messages"][0]["content"], "Hello\nthere");
    assert!(r["stopped_stats"].as_str().unwrap().contains("stopped"), "{r}");
    assert_eq!(r["page_scroll_while_streaming"], 0, "the page itself scrolled: {r}");
    assert_eq!(
        r["after_stop_errors"],
        serde_json::json!([]),
        "the stopped request still held the slot: {r}"
    );
    assert_eq!(r["after_stop_answers"], 3);
    assert_eq!(
        r["thinking_errors"],
        serde_json::json!([]),
        "the thinking request failed: {r}"
    );
    assert_eq!(r["thinking_flag"], true);
    assert_eq!(r["reasoning_folded"], true);
    assert_eq!(r["reasoning_answer"], "The answer.");
    assert_eq!(r["restored"], true, "{r}");
    assert_eq!(r["restored_count"], 8);
    assert_eq!(r["thinking_restored"], true);
    assert_eq!(r["xss_flag"], Value::Null, "injected markup ran: {r}");
    assert_eq!(r["injected_elements"], 0);
    let text = r["markup_text"].as_str().unwrap();
    assert!(
        text.contains("<script>") && text.contains("<img src=x onerror="),
        "{text}"
    );
    assert_eq!(r["bold_rendered"], true);
    assert_eq!(r["code_blocks"], 1);
    let err = r["error_text"].as_str().unwrap();
    assert!(err.contains("400") && err.contains("context"), "{err}");
    assert_eq!(r["new_chat_cleared"], true);
    s.shutdown().unwrap();
}
