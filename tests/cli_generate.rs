//! `zaya generate` end to end: mlx_lm's output layout (parsed) and `--verbose false`, agreement
//! with the library path and the chat template, prompt handling (escapes, stdin, system prompt,
//! raw prompts), the demo bundle when no `--model` is given, Hugging Face cache resolution
//! (a faked HF_HOME layout; offline and failed-download messages), and bad input: a clear
//! message, exit code 2 and no panic.
mod cli_support;

use std::io::Write;
use std::process::Stdio;

use cli_support::{assert_bad_input, stderr, stdout, synth, zaya};
use zaya_mlx::model::ModelOptions;
use zaya_mlx::runtime::{GenParams, Zaya};
use zaya_mlx::text::chat::{ChatOptions, ChatTemplate, Message};
use zaya_mlx::text::tokenizer::Tokenizer;

/// The parts of mlx_lm's verbose output.
#[derive(Debug)]
struct Verbose {
    text: String,
    prompt_tokens: usize,
    prompt_tps: f64,
    generation_tokens: usize,
    generation_tps: f64,
    peak_gb: f64,
}

fn stat(line: &str, label: &str) -> (usize, f64) {
    // "Prompt: 19 tokens, 871.195 tokens-per-sec"
    let rest = line
        .strip_prefix(label)
        .unwrap_or_else(|| panic!("expected {label:?}, got {line:?}"));
    let (n, rest) = rest
        .split_once(" tokens, ")
        .unwrap_or_else(|| panic!("bad line {line:?}"));
    let x = rest
        .strip_suffix(" tokens-per-sec")
        .unwrap_or_else(|| panic!("bad line {line:?}"));
    let decimals = x.split_once('.').map(|(_, d)| d.len());
    assert_eq!(decimals, Some(3), "three decimals: {line:?}");
    (n.parse().unwrap(), x.parse().unwrap())
}

fn parse_verbose(out: &str) -> Verbose {
    let body = out
        .strip_prefix("==========\n")
        .unwrap_or_else(|| panic!("no leading separator:\n{out}"));
    let end = body
        .rfind("\n==========\n")
        .unwrap_or_else(|| panic!("no closing separator:\n{out}"));
    let text = body[..end].to_string();
    let tail: Vec<&str> = body[end + "\n==========\n".len()..].lines().collect();
    assert_eq!(tail.len(), 3, "three statistics lines:\n{out}");
    let (prompt_tokens, prompt_tps) = stat(tail[0], "Prompt: ");
    let (generation_tokens, generation_tps) = stat(tail[1], "Generation: ");
    let peak = tail[2]
        .strip_prefix("Peak memory: ")
        .and_then(|s| s.strip_suffix(" GB"))
        .expect("peak memory line");
    assert_eq!(peak.split_once('.').map(|(_, d)| d.len()), Some(3));
    Verbose {
        text,
        prompt_tokens,
        prompt_tps,
        generation_tokens,
        generation_tps,
        peak_gb: peak.parse().unwrap(),
    }
}

#[test]
fn output_layout_matches_mlx_lm_and_the_library() {
    let home = tempfile::tempdir().unwrap();
    let b = synth(home.path(), None);
    let o = zaya(home.path())
        .args(["generate", "--model"])
        .arg(&b)
        .args(["-p", "Hello there", "--system-prompt", "Be brief.", "-m", "12"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let v = parse_verbose(&stdout(&o));

    // the same generation through the library
    let z = Zaya::load(&b, ModelOptions::default()).unwrap();
    let mut s = z.session();
    s.set_system_prompt(Some("Be brief."));
    let (text, stats) = s
        .chat(
            "Hello there",
            &GenParams {
                max_tokens: Some(12),
                ..GenParams::default()
            },
        )
        .unwrap()
        .collect_text()
        .unwrap();
    assert_eq!(v.text, text);
    assert_eq!(v.generation_tokens, stats.generation_tokens);
    assert!(v.generation_tokens >= 1 && v.generation_tokens <= 12);
    // the prompt is the templated conversation, tokenized without extra special tokens
    let tok = Tokenizer::from_dir(&b).unwrap();
    let tpl = ChatTemplate::from_dir(&b).unwrap().unwrap();
    let msgs = [
        Message::system("Be brief.").to_value(),
        Message::user("Hello there").to_value(),
    ];
    let want = tpl
        .tokenize(
            &tok,
            &msgs,
            &ChatOptions {
                add_generation_prompt: true,
                ..ChatOptions::default()
            },
        )
        .unwrap();
    assert_eq!(v.prompt_tokens, want.len());
    assert!(v.prompt_tps > 0.0 && v.generation_tps > 0.0 && v.peak_gb > 0.0, "{v:?}");

    // --verbose false: the text only
    let o = zaya(home.path())
        .args(["generate", "--model"])
        .arg(&b)
        .args([
            "-p",
            "Hello there",
            "--system-prompt",
            "Be brief.",
            "-m",
            "12",
            "--verbose",
            "false",
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), format!("{text}\n"));
    // `--verbose F` is the same, `--verbose` alone is true
    let o = zaya(home.path())
        .args(["generate", "--model"])
        .arg(&b)
        .args(["-p", "x", "-m", "2", "--verbose", "F"])
        .output()
        .unwrap();
    assert!(!stdout(&o).contains("=========="));
    let o = zaya(home.path())
        .args(["generate", "--model"])
        .arg(&b)
        .args(["-p", "x", "-m", "2", "--verbose"])
        .output()
        .unwrap();
    assert!(stdout(&o).starts_with("==========\n"), "{}", stderr(&o));
}

#[test]
fn prompt_escapes_stdin_and_raw_prompts() {
    let home = tempfile::tempdir().unwrap();
    let b = synth(home.path(), None);
    let tok = Tokenizer::from_dir(&b).unwrap();
    let prompt_tokens = |args: &[&str], stdin: Option<&str>| -> usize {
        let mut c = zaya(home.path());
        c.args(["generate", "--model"]).arg(&b).args(["-m", "1"]).args(args);
        c.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = c.spawn().unwrap();
        {
            let mut si = child.stdin.take().unwrap();
            if let Some(s) = stdin {
                si.write_all(s.as_bytes()).unwrap();
            }
        }
        let o = child.wait_with_output().unwrap();
        assert!(o.status.success(), "{args:?}: {}", stderr(&o));
        let out = stdout(&o);
        let line = out
            .lines()
            .find(|l| l.starts_with("Prompt: "))
            .unwrap_or_else(|| panic!("{out}"));
        stat(line, "Prompt: ").0
    };
    // --ignore-chat-template: the raw prompt with <bos> (the tokenizer's special tokens)
    let raw = "one\ntwo\tthree";
    let want = tok.encode(raw, true).unwrap().len();
    assert_eq!(
        prompt_tokens(&["--ignore-chat-template", "-p", r"one\ntwo\tthree"], None),
        want
    );
    assert_eq!(prompt_tokens(&["--ignore-chat-template", "-p", "-"], Some(raw)), want);
    let literal = tok.encode(r"one\ntwo\tthree", true).unwrap().len();
    assert_ne!(want, literal, "the escapes must matter for this check");
    // a raw prompt that starts with <bos> gets no second one
    assert_eq!(
        prompt_tokens(&["--ignore-chat-template", "-p", "<bos>one"], None),
        tok.encode("<bos>one", false).unwrap().len()
    );
}

#[test]
fn stop_strings_and_extra_eos_tokens() {
    let home = tempfile::tempdir().unwrap();
    let b = synth(home.path(), None);
    let run = |extra: &[&str]| -> String {
        let o = zaya(home.path())
            .args(["generate", "--model"])
            .arg(&b)
            .args(["-p", "Hello", "-m", "24", "--verbose", "false"])
            .args(extra)
            .output()
            .unwrap();
        assert!(o.status.success(), "{extra:?}: {}", stderr(&o));
        stdout(&o).strip_suffix('\n').unwrap().to_string()
    };
    let full = run(&[]);
    let chars: Vec<char> = full.chars().collect();
    assert!(chars.len() >= 6, "{full:?}");
    // a stop string taken from the middle of the text: output ends right before it
    let stop: String = chars[3..6].iter().collect();
    let cut = full.find(&stop).unwrap();
    assert_eq!(run(&["--stop", &stop]), full[..cut]);
    // the token of the first generated token as an extra EOS: nothing is printed
    let z = Zaya::load(&b, ModelOptions::default()).unwrap();
    let first = z
        .session()
        .chat(
            "Hello",
            &GenParams {
                max_tokens: Some(1),
                ..GenParams::default()
            },
        )
        .unwrap()
        .next()
        .unwrap()
        .unwrap();
    let name = z.tokenizer().unwrap().id_to_token(first.id).unwrap();
    assert_eq!(run(&["--extra-eos-token", &first.id.to_string()]), "");
    assert_eq!(run(&["--extra-eos-token", &name]), "");
}

#[test]
fn demo_bundle_when_no_model_is_given() {
    let home = tempfile::tempdir().unwrap();
    let o = zaya(home.path())
        .args(["generate", "-p", "hi", "-m", "4"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.contains("random weights") && err.contains("OsaurusAI/ZAYA1-8B-JANGTQ4"),
        "{err}"
    );
    assert!(err.contains("writing the tiny demo bundle"), "{err}");
    let demo = home.path().join("xdg/zaya-mlx/demo-tiny");
    assert!(demo.join("config.json").is_file() && demo.join("tokenizer.json").is_file());
    parse_verbose(&stdout(&o));
    // second use: no rewrite, same output
    let o2 = zaya(home.path())
        .args(["generate", "-p", "hi", "-m", "4"])
        .output()
        .unwrap();
    assert!(!stderr(&o2).contains("writing"), "{}", stderr(&o2));
    assert_eq!(parse_verbose(&stdout(&o2)).text, parse_verbose(&stdout(&o)).text);
}

#[test]
fn demo_bundle_lives_under_zaya_mlx_home_when_set() {
    let home = tempfile::tempdir().unwrap();
    let root = home.path().join("zaya-home");
    let o = zaya(home.path())
        .env("ZAYA_MLX_HOME", &root)
        .args(["generate", "-p", "hi", "-m", "2"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(root.join("demo-tiny/config.json").is_file(), "{}", stderr(&o));
    assert!(!home.path().join("xdg/zaya-mlx/demo-tiny").exists());
}

#[test]
fn hugging_face_repo_ids_resolve_in_the_local_cache() {
    let home = tempfile::tempdir().unwrap();
    let b = synth(home.path(), None);
    // the hub cache layout: models--Org--Name/{refs/main, snapshots/<commit>/<files>}
    let repo = home.path().join("hf/hub/models--TestOrg--Tiny-ZAYA");
    let snap = repo.join("snapshots/0123456789abcdef");
    std::fs::create_dir_all(&snap).unwrap();
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), "0123456789abcdef").unwrap();
    for e in std::fs::read_dir(&b).unwrap() {
        let p = e.unwrap().path();
        std::os::unix::fs::symlink(&p, snap.join(p.file_name().unwrap())).unwrap();
    }
    let args = ["-p", "Hello", "-m", "6", "--verbose", "false"];
    let by_repo = zaya(home.path())
        .args(["generate", "--model", "TestOrg/Tiny-ZAYA"])
        .args(args)
        .output()
        .unwrap();
    assert!(by_repo.status.success(), "{}", stderr(&by_repo));
    let by_dir = zaya(home.path())
        .args(["generate", "--model"])
        .arg(&b)
        .args(args)
        .output()
        .unwrap();
    assert_eq!(stdout(&by_repo), stdout(&by_dir));
    // HF_HUB_CACHE takes precedence over HF_HOME
    let o = zaya(home.path())
        .env("HF_HUB_CACHE", home.path().join("hf/hub"))
        .env("HF_HOME", home.path().join("elsewhere"))
        .args(["generate", "--model", "TestOrg/Tiny-ZAYA"])
        .args(args)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));

    // not cached and offline: a clear message naming the cache
    let o = zaya(home.path())
        .args(["generate", "--model", "TestOrg/Missing"])
        .output()
        .unwrap();
    assert_bad_input(&o, "offline", &["TestOrg/Missing", "HF_HUB_OFFLINE", "hf/hub"]);
    // not cached, online but the hub is unreachable (a closed local port): the download error
    let o = zaya(home.path())
        .env_remove("HF_HUB_OFFLINE")
        .env("HF_ENDPOINT", "http://127.0.0.1:9")
        .args(["generate", "--model", "TestOrg/Missing"])
        .output()
        .unwrap();
    // an unreachable network is an environment failure: exit 3 in the error contract
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(3), "unreachable hub: {err}");
    assert!(!err.contains("panicked"), "{err}");
    for n in ["TestOrg/Missing", "downloading it failed"] {
        assert!(err.contains(n), "unreachable hub: {n:?} not in {err}");
    }
}

#[test]
fn bad_input_exits_2_with_a_clear_message() {
    let home = tempfile::tempdir().unwrap();
    let b = synth(home.path(), None);
    let small = synth(home.path(), Some(24));
    let not_a_bundle = home.path().join("empty");
    std::fs::create_dir_all(&not_a_bundle).unwrap();
    let bs = b.to_str().unwrap();
    let file = b.join("config.json");
    let cases: Vec<(Vec<&str>, Vec<&str>)> = vec![
        (vec!["--verbose", "maybe"], vec!["--verbose", "maybe"]),
        (vec!["--bogus-flag"], vec!["--bogus-flag"]),
        (vec!["--max-tokens", "many"], vec!["--max-tokens"]),
        (vec!["--dtype", "f8"], vec!["--dtype", "f8"]),
        (vec!["--temp", "-1"], vec!["--temp"]),
        (vec!["--top-p", "0"], vec!["--top-p"]),
        (vec!["--top-p", "1.5"], vec!["--top-p"]),
        (vec!["--top-k", "-3"], vec!["--top-k"]),
        (vec!["--min-p", "2"], vec!["--min-p"]),
        (vec!["--repetition-penalty", "0"], vec!["--repetition-penalty"]),
        (vec!["-m", "0"], vec!["--max-tokens"]),
        (vec!["--prefill-chunk", "0"], vec!["--prefill-chunk"]),
        (vec!["--stop", ""], vec!["--stop"]),
        (
            vec!["--chat-template-config", "{not json"],
            vec!["--chat-template-config"],
        ),
        (
            vec!["--model", bs, "--extra-eos-token", "<no-such-token>"],
            vec!["--extra-eos-token", "<no-such-token>"],
        ),
        (
            vec!["--model", "/no/such/bundle/dir"],
            vec!["/no/such/bundle/dir", "no such directory"],
        ),
        (vec!["--model", not_a_bundle.to_str().unwrap()], vec!["config.json"]),
        (vec!["--model", file.to_str().unwrap()], vec!["is a file"]),
    ];
    for (args, needles) in cases {
        let o = zaya(home.path()).arg("generate").args(&args).output().unwrap();
        assert_bad_input(&o, &format!("{args:?}"), &needles);
        assert!(stdout(&o).is_empty(), "{args:?}: nothing on stdout");
    }
    // a prompt longer than the context (max_position_embeddings = 24)
    let o = zaya(home.path())
        .args(["generate", "--model"])
        .arg(&small)
        .args([
            "-p",
            "a long prompt that does not fit into twenty four positions at all, not even close",
        ])
        .output()
        .unwrap();
    assert_bad_input(&o, "context overflow", &["context", "24"]);
    // a prompt that fits: generation stops at the context limit with a note, exit 0
    let o = zaya(home.path())
        .args(["generate", "--model"])
        .arg(&small)
        .args(["-p", "hi", "-m", "100"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("context limit of 24 tokens"), "{}", stderr(&o));
    let v = parse_verbose(&stdout(&o));
    assert_eq!(
        v.prompt_tokens + v.generation_tokens,
        25,
        "every position used, plus the final sampled token"
    );
}
