//! Tokenizer, incremental detokenizer and stop handling, against the Python `tokenizers` package
//! and transformers' AutoTokenizer on two small tokenizers in the ZAYA id layout.
mod text_support;

use serde_json::{json, Value};
use text_support::*;
use zaya_mlx::text::tokenizer::{StopMatcher, StopReason, TextStream, Tokenizer};
use zaya_mlx::ZayaError;

fn texts() -> Vec<String> {
    [
        "Hello world! How can I assist you today?",
        "  leading spaces and trailing  ",
        "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n",
        "a<think>reasoning</think>answer",
        "emoji 😀🎉 and CJK 你好世界 漢字 ß é",
        "<bos>literal bos<eos>",
        "tab\tnewline\n\nend",
        "<zyphra_tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n</function>\n</zyphra_tool_call>",
        "unseen chars: ΩЖ🙂 ∑",
        "",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn ids_of(v: &Value) -> Vec<Vec<u32>> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|l| {
            l.as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_u64().unwrap() as u32)
                .collect()
        })
        .collect()
}

fn check_against_python(tj: &Value, cfg: &Value, with_hf: bool) {
    let dir = write_bundle(tj, Some(cfg));
    let tok = Tokenizer::from_dir(dir.path()).unwrap();
    let texts = texts();
    let mut id_lists: Vec<Vec<u32>> = texts.iter().map(|t| tok.encode(t, true).unwrap()).collect();
    id_lists.push(vec![2, 105, 106, 101, 1, 0]);
    let reference = run_python(
        "ref_tokenizers.py",
        &json!({"tokenizer_json": dir.path().join("tokenizer.json"),
                "dir": if with_hf { json!(dir.path()) } else { Value::Null },
                "texts": texts, "ids": id_lists}),
    );
    // (reference key, ours with special tokens?, literal?): the tokenizers-library encodings, then
    // the HF AutoTokenizer call and plain encode where transformers is available
    let mut cases = vec![
        ("encode_special", true, false),
        ("encode_plain", false, false),
        ("encode_literal", false, true),
    ];
    if with_hf {
        cases.extend([("hf_call", true, false), ("hf_plain", false, false)]);
    }
    for (i, t) in texts.iter().enumerate() {
        for &(key, special, literal) in &cases {
            let ours = if literal {
                tok.encode_literal(t, special).unwrap()
            } else {
                tok.encode(t, special).unwrap()
            };
            assert_eq!(ours, ids_of(&reference[key])[i], "{key} of {t:?}");
        }
    }
    for (i, ids) in id_lists.iter().enumerate() {
        assert_eq!(
            tok.decode(ids, false).unwrap(),
            reference["decode"][i].as_str().unwrap()
        );
        assert_eq!(
            tok.decode(ids, true).unwrap(),
            reference["decode_skip"][i].as_str().unwrap()
        );
    }
    if with_hf {
        assert_eq!(tok.bos_id(), reference["hf_bos"].as_u64().map(|x| x as u32));
        assert_eq!(
            tok.special_tokens().eos.as_ref().map(|t| t.id as u64),
            reference["hf_eos"].as_u64()
        );
        assert_eq!(tok.vocab_size() as u64, reference["hf_vocab_size"].as_u64().unwrap());
    }
}

#[test]
fn byte_level_matches_python() {
    check_against_python(&byte_level_tokenizer_json(), &tokenizer_config(), true);
}

#[test]
fn byte_fallback_matches_python() {
    check_against_python(&byte_fallback_tokenizer_json(), &tokenizer_config(), true);
}

/// tokenizer_config.json semantics of transformers 5: add_bos_token/add_eos_token are ignored when a
/// tokenizer.json exists (its post-processor decides), and a token declared only in
/// added_tokens_decoder is added.
#[test]
fn tokenizer_config_semantics_match_transformers() {
    let tj = byte_level_tokenizer_json();
    let n = tj["model"]["vocab"].as_object().unwrap().len();
    let mut cfg = tokenizer_config();
    cfg["add_bos_token"] = json!(false);
    cfg["add_eos_token"] = json!(true);
    cfg["added_tokens_decoder"][n.to_string()] = json!({"content": "<extra_marker>", "lstrip": false,
        "normalized": false, "rstrip": false, "single_word": false, "special": true});
    let dir = write_bundle(&tj, Some(&cfg));
    let tok = Tokenizer::from_dir(dir.path()).unwrap();
    assert_eq!(tok.token_to_id("<extra_marker>"), Some(n as u32));
    let ids = tok.encode("x <extra_marker> y", true).unwrap();
    assert_eq!(
        ids[0], 2,
        "the post-processor's <bos> stays despite add_bos_token=false"
    );
    assert_ne!(ids.last(), Some(&106), "add_eos_token is ignored");
    assert!(ids.contains(&(n as u32)));
    let mut texts = texts();
    texts.push("x <extra_marker> y".into());
    let reference = run_python(
        "ref_tokenizers.py",
        &json!({"tokenizer_json": dir.path().join("tokenizer.json"), "dir": dir.path(), "texts": texts, "ids": []}),
    );
    for (i, t) in texts.iter().enumerate() {
        assert_eq!(
            tok.encode(t, true).unwrap(),
            ids_of(&reference["hf_call"])[i],
            "HF call of {t:?}"
        );
        assert_eq!(
            tok.encode(t, false).unwrap(),
            ids_of(&reference["hf_plain"])[i],
            "HF plain of {t:?}"
        );
    }
}

fn load(tj: &Value) -> (tempfile::TempDir, Tokenizer) {
    let dir = write_bundle(tj, Some(&tokenizer_config()));
    let tok = Tokenizer::from_dir(dir.path()).unwrap();
    (dir, tok)
}

/// Streams `ids` one at a time; returns the chunks (finish() last).
fn stream(tok: &Tokenizer, ids: &[u32], skip: bool) -> Vec<String> {
    let mut d = tok.stream_decoder(skip);
    let mut chunks: Vec<String> = ids.iter().map(|&i| d.push(i).unwrap()).collect();
    chunks.push(d.finish().unwrap());
    chunks
}

#[test]
fn stream_decoder_never_splits_utf8_and_matches_full_decode() {
    for tj in [byte_level_tokenizer_json(), byte_fallback_tokenizer_json()] {
        let (_d, tok) = load(&tj);
        for text in texts() {
            let ids = tok.encode(&text, true).unwrap();
            for skip in [false, true] {
                let chunks = stream(&tok, &ids, skip);
                for c in &chunks {
                    assert!(!c.contains('\u{FFFD}'), "U+FFFD in chunk {c:?} of {text:?}");
                }
                assert_eq!(
                    chunks.concat(),
                    tok.decode(&ids, skip).unwrap(),
                    "stream of {text:?} (skip={skip})"
                );
            }
        }
        // Each emoji is split over 4 byte tokens here: it must come out whole, after 3 silent pushes.
        let ids = tok.encode("😀", false).unwrap();
        assert_eq!(
            ids.len(),
            4,
            "the test tokenizer is expected to spell 😀 as 4 byte tokens"
        );
        let chunks = stream(&tok, &ids, false);
        assert_eq!(chunks, vec!["", "", "", "😀", ""]);
    }
}

#[test]
fn stream_decoder_on_random_input_matches_full_decode() {
    use rand::{Rng, SeedableRng};
    let alphabet: Vec<char> = "aZ 9\n\t<>|_é漢字你好世界😀🎉🙂ΩЖ∑ß".chars().collect();
    for (k, tj) in [byte_level_tokenizer_json(), byte_fallback_tokenizer_json()]
        .iter()
        .enumerate()
    {
        let (_d, tok) = load(tj);
        let v = tok.vocab_size() as u32;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        for _ in 0..200 {
            // random valid text: never a U+FFFD, concatenation equals the full decode
            let text: String = (0..rng.gen_range(1..30))
                .map(|_| alphabet[rng.gen_range(0..alphabet.len())])
                .collect();
            let ids = tok.encode(&text, false).unwrap();
            let chunks = stream(&tok, &ids, false);
            assert!(chunks.iter().all(|c| !c.contains('\u{FFFD}')), "{text:?} -> {chunks:?}");
            assert_eq!(chunks.concat(), text);
            // random ids, invalid byte sequences included
            let ids: Vec<u32> = (0..rng.gen_range(1..24)).map(|_| rng.gen_range(0..v)).collect();
            let full = tok.decode(&ids, false).unwrap();
            let got = stream(&tok, &ids, false).concat();
            // byte-level decoding replaces each invalid sequence (prefix-stable); ByteFallback replaces
            // a whole run of byte tokens once any of it is invalid, so only valid runs must agree
            if k == 0 || !full.contains('\u{FFFD}') {
                assert_eq!(got, full, "ids {ids:?}");
            }
        }
    }
}

#[test]
fn bad_ids_and_files_are_typed_errors() {
    let (dir, tok) = load(&byte_level_tokenizer_json());
    let v = tok.vocab_size() as u32;
    match tok.decode(&[5, v], false) {
        Err(ZayaError::InvalidArgument(m)) => assert!(m.contains(&v.to_string()), "{m}"),
        other => panic!("expected InvalidArgument, got {other:?}"),
    }
    let mut d = tok.stream_decoder(false);
    assert!(matches!(d.push(v + 10), Err(ZayaError::InvalidArgument(_))));

    let empty = tempfile::tempdir().unwrap();
    match Tokenizer::from_dir(empty.path()) {
        Err(ZayaError::Tokenizer(m)) => assert!(m.contains("tokenizer.json"), "{m}"),
        other => panic!("expected Tokenizer error, got {other:?}"),
    }
    let bad = dir.path().join("broken.json");
    std::fs::write(&bad, "{\"model\": 12").unwrap();
    match Tokenizer::from_files(&bad, None) {
        Err(ZayaError::Tokenizer(m)) => assert!(m.contains("broken.json"), "{m}"),
        other => panic!("expected Tokenizer error, got {other:?}"),
    }
    let mut cfg = tokenizer_config();
    cfg["added_tokens_decoder"]["7"] = json!({"content": "<|im_end|>", "special": true});
    let dir2 = write_bundle(&byte_level_tokenizer_json(), Some(&cfg));
    match Tokenizer::from_dir(dir2.path()) {
        Err(ZayaError::Tokenizer(m)) => assert!(m.contains("tokenizer_config.json") && m.contains("106"), "{m}"),
        other => panic!("expected Tokenizer error, got {other:?}"),
    }
    std::fs::write(dir2.path().join("tokenizer_config.json"), "not json").unwrap();
    match Tokenizer::from_dir(dir2.path()) {
        Err(ZayaError::Tokenizer(m)) => assert!(m.contains("tokenizer_config.json"), "{m}"),
        other => panic!("expected Tokenizer error, got {other:?}"),
    }
}

#[test]
fn special_ids_follow_the_zaya_layout() {
    let (_d, tok) = load(&byte_level_tokenizer_json());
    let s = tok.special_tokens();
    assert_eq!(tok.bos_id(), Some(2));
    assert_eq!(s.end_of_turn.as_ref().map(|t| t.id), Some(106));
    assert_eq!(s.start_of_turn.as_ref().map(|t| t.id), Some(105));
    assert_eq!(s.tool_call_start.as_ref().map(|t| t.id), Some(101));
    assert_eq!(s.tool_call_end.as_ref().map(|t| t.id), Some(102));
    assert_eq!(s.tool_response_start.as_ref().map(|t| t.id), Some(103));
    assert_eq!(s.tool_response_end.as_ref().map(|t| t.id), Some(104));
    assert_eq!(tok.eos_ids(), vec![106]);
    assert!(tok.is_special(106) && !tok.is_special(s.think_start.as_ref().unwrap().id));
    assert_eq!(tok.id_to_token(106).as_deref(), Some("<|im_end|>"));
    assert_eq!(tok.token_to_id("</think>"), s.think_end.as_ref().map(|t| t.id));
}

/// Feeds `chunks` to a matcher; returns (emitted text, stop reason).
fn run_stop(stops: &[&str], chunks: &[&str]) -> (String, Option<StopReason>) {
    let mut m = StopMatcher::new([106], stops.iter().map(|s| s.to_string())).unwrap();
    let mut out = String::new();
    for c in chunks {
        let o = m.push(7, c);
        out.push_str(&o.text);
        if o.stop.is_some() {
            return (out, o.stop);
        }
    }
    out.push_str(&m.flush());
    (out, None)
}

/// Oracle: the text before the earliest occurrence of any stop string.
fn oracle(stops: &[&str], full: &str) -> (String, Option<StopReason>) {
    let hit = stops
        .iter()
        .filter_map(|s| full.find(s).map(|p| (p, *s)))
        .min_by_key(|e| e.0);
    match hit {
        Some((p, s)) => (full[..p].to_string(), Some(StopReason::StopString(s.to_string()))),
        None => (full.to_string(), None),
    }
}

#[test]
fn stop_strings_straddling_chunks_match_the_oracle() {
    let cases: &[(&[&str], &str)] = &[
        (&["END"], "some text END more"),
        (&["END"], "EN E EXEND"),
        (&["END", "STOP"], "xx STO STOP END"),
        (&["ab", "b"], "aab"),
        (&["\n\n"], "line one\nline two\n\nrest"),
        (&["世界"], "你好世界再见"),
        (&["<|im_end|>"], "answer<|im_"),
        (&["never"], "nev ne n"),
    ];
    for (stops, full) in cases {
        let chars: Vec<(usize, char)> = full.char_indices().collect();
        // every split of the text into 1, 2 and 3 chunks at char boundaries
        let cuts: Vec<usize> = chars.iter().map(|c| c.0).chain([full.len()]).collect();
        for &a in &cuts {
            for &b in cuts.iter().filter(|&&b| b >= a) {
                let chunks = [&full[..a], &full[a..b], &full[b..]];
                let got = run_stop(stops, &chunks);
                assert_eq!(got, oracle(stops, full), "stops {stops:?}, chunks {chunks:?}");
            }
        }
    }
}

#[test]
fn stop_holds_back_only_possible_prefixes() {
    let mut m = StopMatcher::new([106], ["<stop>".to_string()]).unwrap();
    assert_eq!(m.push(5, "abc<st").text, "abc");
    assert_eq!(m.push(5, "x").text, "<stx");
    let o = m.push(106, "");
    assert_eq!(o.stop, Some(StopReason::Eos(106)));
    assert_eq!(o.text, "");
    let mut m = StopMatcher::new([106], ["<stop>".to_string()]).unwrap();
    assert_eq!(m.push(5, "abc <s").text, "abc ");
    let o = m.push(106, "ignored");
    assert_eq!(
        (o.text.as_str(), o.stop),
        ("<s", Some(StopReason::Eos(106))),
        "EOS releases held text"
    );
    assert!(
        matches!(StopMatcher::new([1], [String::new()]), Err(ZayaError::InvalidArgument(m)) if m.contains("--stop"))
    );
}

#[test]
fn text_stream_stops_on_multibyte_stop_string_split_across_byte_tokens() {
    let (_d, tok) = load(&byte_level_tokenizer_json());
    let text = "你好世界! 😀 done";
    let ids = tok.encode(text, false).unwrap();
    for (stop, expect) in [("世界", "你好"), ("😀", "你好世界! "), ("🎉", text)] {
        let mut ts = TextStream::new(
            tok.stream_decoder(false),
            StopMatcher::new(tok.eos_ids(), [stop.to_string()]).unwrap(),
        );
        let mut out = String::new();
        let mut stopped = None;
        for &id in &ids {
            let s = ts.push(id).unwrap();
            assert!(!s.text.contains('\u{FFFD}'));
            out.push_str(&s.text);
            if s.stop.is_some() {
                stopped = s.stop;
                break;
            }
        }
        if stopped.is_none() {
            out.push_str(&ts.finish().unwrap());
        }
        assert_eq!(out, expect, "stop {stop:?}");
        assert_eq!(stopped.is_some(), stop != "🎉");
    }
    // EOS id: not decoded, ends the stream
    let mut ids = tok.encode("ok", false).unwrap();
    ids.push(106);
    ids.extend(tok.encode("after", false).unwrap());
    let mut ts = TextStream::new(
        tok.stream_decoder(false),
        StopMatcher::new(tok.eos_ids(), Vec::<String>::new()).unwrap(),
    );
    let mut out = String::new();
    for &id in &ids {
        let s = ts.push(id).unwrap();
        out.push_str(&s.text);
        if let Some(r) = s.stop {
            assert_eq!(r, StopReason::Eos(106));
            break;
        }
    }
    assert_eq!(out, "ok");
}
