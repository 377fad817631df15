//! The generation loop end to end on the tiny synthetic bundle (random weights, the synthetic
//! byte-level BPE tokenizer and ChatML template):
//! - multi-turn sessions reuse the cache: every logits row a session sampled from equals the row of
//!   one forward over the whole conversation from an empty cache (f32, relative 1e-5), and each
//!   turn after the first prefills only its new suffix; a template that re-renders history
//!   differently falls back to the snapshot and stays exact;
//! - stop strings straddling tokens and multi-byte characters split across tokens (tokens forced by
//!   a logits processor), EOS, max tokens, the context limit and cancellation;
//! - seed determinism.
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use mlx_rs::Array;
use zaya_mlx::model::{ModelOptions, ZayaModel};
use zaya_mlx::runtime::sampling::SamplingParams;
use zaya_mlx::runtime::{FinishReason, GenParams, LogitsProcessor, Zaya};
use zaya_mlx::text::chat::{ChatOptions, ChatTemplate};
use zaya_mlx::text::tokenizer::Tokenizer;
use zaya_mlx::tools::synth::{write_bundle, SynthOptions, SynthSpec};
use zaya_mlx::ZayaError;

const IM_END: u32 = 106;

/// A tiny synthetic bundle (written once per test binary), with `max_position_embeddings` = `ctx`.
fn bundle(ctx: usize) -> PathBuf {
    static DIRS: OnceLock<std::sync::Mutex<Vec<(usize, tempfile::TempDir)>>> = OnceLock::new();
    let dirs = DIRS.get_or_init(Default::default);
    let mut dirs = dirs.lock().unwrap();
    if let Some((_, d)) = dirs.iter().find(|(c, _)| *c == ctx) {
        return d.path().to_path_buf();
    }
    let d = tempfile::tempdir().unwrap();
    let mut spec = SynthSpec::preset("tiny").unwrap();
    spec.seed = 11;
    spec.max_position_embeddings = ctx;
    write_bundle(&spec, d.path(), &SynthOptions::default()).unwrap();
    let p = d.path().to_path_buf();
    dirs.push((ctx, d));
    p
}

fn load(ctx: usize) -> Zaya {
    Zaya::load(bundle(ctx), ModelOptions::default()).unwrap()
}

fn row(a: &Array) -> Vec<f32> {
    let a = a.as_dtype(mlx_rs::Dtype::Float32).unwrap();
    a.eval().unwrap();
    a.as_slice::<f32>().to_vec()
}

/// Max |a - b| / max |b|.
fn rel_diff(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    let m = b.iter().fold(0f64, |m, &v| m.max(v.abs() as f64));
    let d = a
        .iter()
        .zip(b)
        .fold(0f64, |m, (&x, &y)| m.max((x as f64 - y as f64).abs()));
    d / m
}

/// Adds a large bias to `ids[k]` on the k-th call (k counted per processor), nothing after.
fn force(ids: Vec<u32>) -> LogitsProcessor {
    let k = AtomicUsize::new(0);
    Arc::new(move |_history: &[u32], logits: &Array| {
        let i = k.fetch_add(1, Ordering::SeqCst);
        let Some(&id) = ids.get(i) else {
            return Ok(logits.clone());
        };
        let v = logits.shape()[1] as usize;
        let mut bias = vec![0f32; v];
        bias[id as usize] = 1e6;
        Ok(logits.add(Array::from_slice(&bias, &[1, v as i32]))?)
    })
}

/// Forces EOS (`<|im_end|>`) as the `k`-th generated token (0-based).
fn eos_at(k: usize) -> LogitsProcessor {
    let n = AtomicUsize::new(0);
    Arc::new(move |_h: &[u32], logits: &Array| {
        let i = n.fetch_add(1, Ordering::SeqCst);
        if i != k {
            return Ok(logits.clone());
        }
        let v = logits.shape()[1] as usize;
        let mut bias = vec![0f32; v];
        bias[IM_END as usize] = 1e6;
        Ok(logits.add(Array::from_slice(&bias, &[1, v as i32]))?)
    })
}

/// Runs a chat turn, recording (position, logits row) of every sampled token.
fn turn(
    s: &mut zaya_mlx::runtime::Session<'_>,
    msg: &str,
    params: &GenParams,
    rows: &mut Vec<(usize, Vec<f32>)>,
) -> (Vec<u32>, Option<FinishReason>, zaya_mlx::runtime::GenStats) {
    let mut gen = s.chat(msg, params).unwrap();
    let mut ids = Vec::new();
    while let Some(step) = gen.next() {
        let step = step.unwrap();
        ids.push(step.id);
        let (pos, l) = gen.last_logits().unwrap();
        rows.push((pos, row(l)));
    }
    (ids, gen.finish_reason().cloned(), gen.stats())
}

/// Compares every recorded row with one forward over the session's whole token sequence.
fn assert_rows_match_from_scratch(model: &ZayaModel, tokens: &[u32], rows: &[(usize, Vec<f32>)]) {
    let mut cache = model.new_cache();
    let all = model
        .forward(&Array::from_slice(tokens, &[1, tokens.len() as i32]), &mut cache)
        .unwrap();
    let v = model.config().vocab_size;
    let all = row(&all);
    let mut worst = 0f64;
    for (pos, r) in rows {
        let want = &all[pos * v..(pos + 1) * v];
        let d = rel_diff(r, want);
        worst = worst.max(d);
        assert!(
            d <= 1e-5,
            "position {pos}: session logits differ from the from-scratch forward by {d:.2e} (relative)"
        );
    }
    eprintln!("{} rows, worst relative difference {worst:.2e}", rows.len());
}

#[test]
fn multi_turn_session_equals_the_conversation_from_scratch() {
    let zaya = load(4096);
    let mut s = zaya.session();
    s.set_system_prompt(Some("You are a terse assistant."));
    let mut rows = Vec::new();
    let greedy = |p: LogitsProcessor, n| GenParams {
        max_tokens: Some(n),
        logits_processors: vec![p],
        prefill_chunk: Some(7),
        ..GenParams::default()
    };

    let (ids, finish, stats) = turn(&mut s, "Hello there! Who are you?", &greedy(eos_at(5), 12), &mut rows);
    assert_eq!(finish, Some(FinishReason::Eos(IM_END)));
    assert_eq!(ids.len(), 6);
    assert_eq!(stats.reused_tokens, 0);
    assert_eq!(
        stats.prompt_tokens + 5,
        s.offset(),
        "prompt + the 5 reply tokens fed back"
    );

    for (msg, k) in [("Tell me about the river, please.", 7), ("And the mountains?", 4)] {
        let before = s.offset();
        let (ids, finish, stats) = turn(&mut s, msg, &greedy(eos_at(k), 12), &mut rows);
        assert_eq!(finish, Some(FinishReason::Eos(IM_END)));
        assert_eq!(ids.len(), k + 1);
        assert_eq!(stats.reused_tokens, before, "the turn must keep every cached token");
        // the new suffix: <|im_end|>\n<|im_start|>user\n...<|im_end|>\n<|im_start|>assistant\n<think>...
        let tok = zaya.tokenizer().unwrap();
        let suffix = &s.tokens()[before..before + stats.prompt_tokens];
        assert_eq!(
            suffix[0], IM_END,
            "the end-of-turn token that ended the reply is fed first"
        );
        assert!(tok.decode(suffix, false).unwrap().contains(msg));
    }
    // a last turn ending on the token limit: its final token stays pending
    let before = s.offset();
    let (ids, finish, stats) = turn(&mut s, "Thanks.", &greedy(eos_at(usize::MAX), 6), &mut rows);
    assert_eq!(finish, Some(FinishReason::MaxTokens));
    assert_eq!(ids.len(), 6);
    assert_eq!(stats.reused_tokens, before);
    assert_eq!(s.pending_token(), Some(ids[5]));

    let roles: Vec<&str> = s.messages().iter().map(|m| m.role.as_str()).collect();
    assert_eq!(
        roles,
        [
            "system",
            "user",
            "assistant",
            "user",
            "assistant",
            "user",
            "assistant",
            "user",
            "assistant"
        ]
    );
    // assistant turns are recorded as the model saw them: the closed think block of the
    // generation prompt (thinking off), then the reply
    assert!(s.messages()[2]
        .content
        .as_deref()
        .unwrap()
        .starts_with("<think>\n\n</think>\n\n"));
    assert_rows_match_from_scratch(zaya.model(), s.tokens(), &rows);

    // /reset semantics: history and cache cleared, the next turn starts from scratch
    s.reset();
    assert_eq!((s.offset(), s.messages().len()), (0, 0));
    let (_, _, stats) = turn(&mut s, "Hi again.", &greedy(eos_at(2), 4), &mut Vec::new());
    assert_eq!(stats.reused_tokens, 0);
}

#[test]
fn template_that_rewrites_history_falls_back_to_the_snapshot() {
    // a template that drops the think block from earlier assistant turns (as Qwen3-style templates
    // drop earlier reasoning): the cache no longer matches after the assistant header
    let dir = bundle(4096);
    let src = concat!(
        "{{- bos_token -}}",
        "{%- for m in messages -%}",
        "{%- if m.role == 'assistant' -%}",
        "{{- '<|im_start|>assistant\\n' ~ (m.content | replace('<think>\\n\\n</think>\\n\\n', '')) ~ '<|im_end|>\\n' -}}",
        "{%- else -%}",
        "{{- '<|im_start|>' ~ m.role ~ '\\n' ~ m.content ~ '<|im_end|>\\n' -}}",
        "{%- endif -%}",
        "{%- endfor -%}",
        "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n<think>\\n\\n</think>\\n\\n' -}}{%- endif -%}",
    );
    let mut tpl = ChatTemplate::from_source(src, "strip_think.jinja").unwrap();
    tpl.set_special_token("bos_token", "<bos>");
    let model = ZayaModel::load(&dir, ModelOptions::default()).unwrap();
    let zaya = Zaya::from_parts(model, Some(Tokenizer::from_dir(&dir).unwrap()), Some(tpl));
    let mut s = zaya.session();
    let mut rows = Vec::new();
    let p = |k| GenParams {
        max_tokens: Some(10),
        logits_processors: vec![eos_at(k)],
        ..GenParams::default()
    };
    let (_, _, st1) = turn(&mut s, "First question?", &p(4), &mut rows);
    // where turn 1's history ended (before its generation prompt)
    let tok = zaya.tokenizer().unwrap();
    let hist1 = tok
        .encode("<bos><|im_start|>user\nFirst question?<|im_end|>\n", false)
        .unwrap();
    assert_eq!(&s.tokens()[..hist1.len()], &hist1[..]);
    assert!(st1.prompt_tokens > hist1.len());
    // turn 1's rows belong to a sequence the fallback replaces: compare turn 2's only
    rows.clear();
    let (_, _, st2) = turn(&mut s, "Second question?", &p(3), &mut rows);
    assert_eq!(
        st2.reused_tokens,
        hist1.len(),
        "falls back to the snapshot at the end of turn 1's history"
    );
    // the re-rendered history really is what the cache now holds
    let text = tok.decode(s.tokens(), false).unwrap();
    assert!(text.starts_with("<bos><|im_start|>user\nFirst question?<|im_end|>\n<|im_start|>assistant\n"));
    assert!(!text[..text.find("Second").unwrap()].contains("<think>"), "{text:?}");
    assert_rows_match_from_scratch(zaya.model(), s.tokens(), &rows);
}

/// The id of each byte of `s` as a single-byte token of the byte-level tokenizer (GPT-2 map).
fn byte_tokens(tok: &Tokenizer, s: &str) -> Vec<u32> {
    let printable = |b: u8| (b'!'..=b'~').contains(&b) || (0xA1..=0xAC).contains(&b) || b >= 0xAE;
    s.bytes()
        .map(|b| {
            let c = if printable(b) {
                char::from(b)
            } else {
                let n = (0..b).filter(|&x| !printable(x)).count() as u32;
                char::from_u32(256 + n).unwrap()
            };
            tok.token_to_id(&c.to_string())
                .unwrap_or_else(|| panic!("no token for byte {b:#x}"))
        })
        .collect()
}

fn run_forced(zaya: &Zaya, script: Vec<u32>, params: GenParams) -> (Vec<String>, Vec<u32>, Option<FinishReason>) {
    let mut s = zaya.session();
    let params = GenParams {
        logits_processors: vec![force(script)],
        ..params
    };
    let mut gen = s.generate("Once upon a time", &params).unwrap();
    let mut texts = Vec::new();
    let mut ids = Vec::new();
    for step in gen.by_ref() {
        let step = step.unwrap();
        texts.push(step.text);
        ids.push(step.id);
    }
    (texts, ids, gen.finish_reason().cloned())
}

#[test]
fn multibyte_characters_split_across_tokens_stream_whole() {
    let zaya = load(4096);
    let tok = zaya.tokenizer().unwrap();
    let text = "café 🎉 ok";
    let mut script = byte_tokens(tok, text);
    assert_eq!(script.len(), text.len());
    script.push(IM_END);
    let (texts, ids, finish) = run_forced(&zaya, script.clone(), GenParams::default());
    assert_eq!(ids, script);
    assert_eq!(finish, Some(FinishReason::Eos(IM_END)));
    assert_eq!(texts.concat(), text);
    assert!(texts.iter().all(|t| !t.contains('\u{FFFD}')), "{texts:?}");
    // 'é' (2 bytes) appears with its second byte, '🎉' (4 bytes) with its fourth
    assert_eq!(texts[3], "");
    assert_eq!(texts[4], "é");
    assert_eq!(&texts[6..9], ["", "", ""]);
    assert_eq!(texts[9], "🎉");
}

#[test]
fn stop_strings_straddling_tokens_are_not_printed() {
    let zaya = load(4096);
    let tok = zaya.tokenizer().unwrap();
    let full = "The answer is 42. Done here, goodbye.";
    let script = tok.encode(full, false).unwrap();
    // the stop string must span a token boundary
    let stop = "42. Do";
    let mut ends = Vec::new();
    let mut acc = String::new();
    for &id in &script {
        acc.push_str(&tok.decode(&[id], false).unwrap());
        ends.push(acc.len());
    }
    let start = full.find(stop).unwrap();
    let end = start + stop.len();
    assert!(
        ends.iter().any(|&e| e > start && e < end),
        "the stop string should straddle tokens"
    );
    let k = ends.iter().position(|&e| e >= end).unwrap(); // token completing the stop string
    let p = GenParams {
        stop: vec![stop.into(), "never".into()],
        max_tokens: Some(100),
        ..GenParams::default()
    };
    let (texts, ids, finish) = run_forced(&zaya, script.clone(), p);
    assert_eq!(finish, Some(FinishReason::StopString(stop.into())));
    assert_eq!(ids, script[..=k]);
    assert_eq!(texts.concat(), "The answer is ");

    // a stop string made of parts of multi-byte characters split across byte tokens
    let script = byte_tokens(tok, "x café déjà vu");
    let p = GenParams {
        stop: vec!["é d".into()],
        ..GenParams::default()
    };
    let (texts, _, finish) = run_forced(&zaya, script, p);
    assert_eq!(finish, Some(FinishReason::StopString("é d".into())));
    assert_eq!(texts.concat(), "x caf");

    // a possible stop-string start is held back until resolved, and released at the end
    let script = tok.encode("4 and 4", false).unwrap();
    assert_eq!(tok.decode(&script[..1], false).unwrap(), "4");
    let p = GenParams {
        stop: vec!["42".into()],
        max_tokens: Some(script.len()),
        ..GenParams::default()
    };
    let (texts, _, finish) = run_forced(&zaya, script, p);
    assert_eq!(finish, Some(FinishReason::MaxTokens));
    assert_eq!(texts[0], "", "'4' may start '42'");
    assert!(texts[1].starts_with("4 "));
    assert!(texts.last().unwrap().ends_with('4'), "released at the end");
    assert_eq!(texts.concat(), "4 and 4");
}

#[test]
fn chat_history_omits_the_stop_string_and_what_follows() {
    let zaya = load(4096);
    let tok = zaya.tokenizer().unwrap();
    let script = tok.encode("Sure. STOP and more", false).unwrap();
    let mut s = zaya.session();
    let p = GenParams {
        stop: vec!["STOP".into()],
        logits_processors: vec![force(script)],
        ..GenParams::default()
    };
    let (text, _) = s.chat("hi", &p).unwrap().collect_text().unwrap();
    assert_eq!(text, "Sure. ");
    assert_eq!(
        s.messages().last().unwrap().content.as_deref(),
        Some("<think>\n\n</think>\n\nSure. ")
    );
    // the next turn still works (the cache holds part of the stop string: it re-prefills the reply)
    let before = s.offset();
    let mut gen = s
        .chat(
            "ok",
            &GenParams {
                max_tokens: Some(2),
                ..GenParams::default()
            },
        )
        .unwrap();
    gen.by_ref().for_each(|t| drop(t.unwrap()));
    let st = gen.stats();
    assert!(st.reused_tokens > 0 && st.reused_tokens < before, "{st:?}");
}

#[test]
fn seed_determinism() {
    let zaya = load(4096);
    let run = |seed: u64| -> (Vec<u32>, String) {
        let mut s = zaya.session();
        let sampling = SamplingParams {
            temperature: 1.0,
            top_p: 0.95,
            top_k: 50,
            seed: Some(seed),
            ..SamplingParams::default()
        };
        let p = GenParams {
            max_tokens: Some(40),
            ignore_eos: true,
            sampling,
            ..GenParams::default()
        };
        let mut gen = s.chat("Write something.", &p).unwrap();
        let mut ids = Vec::new();
        let mut text = String::new();
        for t in gen.by_ref() {
            let t = t.unwrap();
            ids.push(t.id);
            text.push_str(&t.text);
        }
        (ids, text)
    };
    let a = run(7);
    assert_eq!(a.0.len(), 40);
    assert_eq!(a, run(7), "same seed, same tokens and text");
    assert_ne!(a.0, run(8).0, "another seed gives another sample");
}

#[test]
fn context_limit_ends_generation_and_overflow_is_an_error() {
    let zaya = load(32);
    let mut s = zaya.session();
    let prompt: Vec<u32> = (200..220).collect();
    let p = GenParams {
        max_tokens: None,
        ignore_eos: true,
        ..GenParams::default()
    };
    let mut gen = s.generate_from_tokens(&prompt, &p).unwrap();
    let steps: Vec<_> = gen.by_ref().map(|t| t.unwrap()).collect();
    assert_eq!(gen.finish_reason(), Some(&FinishReason::ContextLimit));
    drop(gen);
    // 20 prompt tokens + 12 fed replies fill the 32 positions; the 13th reply token is pending
    assert_eq!(steps.len(), 13);
    assert_eq!(s.offset(), 32);
    // nothing more fits
    match s.generate_from_tokens(&[5], &p) {
        Err(ZayaError::ContextOverflow { tokens, limit }) => assert_eq!((tokens, limit), (34, 32)),
        other => panic!("expected a context overflow, got {:?}", other.map(|_| ())),
    }
    let mut fresh = zaya.session();
    let long: Vec<u32> = (200..240).collect();
    assert!(matches!(
        fresh.generate_from_tokens(&long, &p),
        Err(ZayaError::ContextOverflow { tokens: 40, limit: 32 })
    ));
    assert_eq!(fresh.offset(), 0, "nothing was fed");

    // chat: an overflowing turn is an error, the conversation is unchanged and usable after a reset
    let mut c = zaya.session();
    let err = c.chat("word ".repeat(40), &GenParams::default()).err().unwrap();
    assert!(matches!(err, ZayaError::ContextOverflow { .. }), "{err}");
    assert!(c.messages().is_empty());
    c.reset();
    let p = GenParams {
        max_tokens: Some(3),
        ..GenParams::default()
    };
    assert!(c.chat("hi", &p).unwrap().collect_text().is_ok());
}

#[test]
fn cancellation_and_eos_and_raw_bos() {
    let zaya = load(4096);
    let cancel = Arc::new(AtomicBool::new(true));
    let mut s = zaya.session();
    let p = GenParams {
        cancel: Some(cancel.clone()),
        ignore_eos: true,
        ..GenParams::default()
    };
    let steps: Vec<_> = s.chat("hi", &p).unwrap().map(|t| t.unwrap()).collect();
    assert_eq!(steps.len(), 1);
    assert_eq!(steps[0].finish, Some(FinishReason::Cancelled));

    // extra EOS ids stop too, and are not printed
    let tok = zaya.tokenizer().unwrap();
    let script = byte_tokens(tok, "abcd");
    let p = GenParams {
        extra_eos: vec![script[1]],
        ..GenParams::default()
    };
    let (texts, ids, finish) = run_forced(&zaya, script.clone(), p);
    assert_eq!(finish, Some(FinishReason::Eos(script[1])));
    assert_eq!(ids, script[..2]);
    assert_eq!(texts.concat(), tok.decode(&script[..1], false).unwrap());

    // raw text gets <bos> on an empty cache only, and not twice
    let mut s = zaya.session();
    let p = GenParams {
        max_tokens: Some(1),
        ..GenParams::default()
    };
    drop(s.generate("Hello", &p).unwrap());
    assert_eq!(s.tokens()[0], 2);
    let n = s.offset();
    drop(s.generate(" world", &p).unwrap());
    assert_eq!(s.tokens()[n..].iter().filter(|&&t| t == 2).count(), 0);
    let mut s = zaya.session();
    drop(s.generate("<bos>Hello", &p).unwrap());
    assert_eq!(s.tokens().iter().filter(|&&t| t == 2).count(), 1);
}

#[test]
fn chat_options_reach_the_template() {
    let zaya = load(4096);
    let mut s = zaya.session();
    s.set_chat_options(ChatOptions {
        enable_thinking: Some(true),
        ..ChatOptions::default()
    });
    let p = GenParams {
        max_tokens: Some(1),
        ..GenParams::default()
    };
    drop(s.chat("hi", &p).unwrap());
    let text = zaya.tokenizer().unwrap().decode(s.tokens(), false).unwrap();
    assert!(
        text.ends_with("<|im_start|>assistant\n"),
        "thinking on: no closed think block: {text:?}"
    );
}
