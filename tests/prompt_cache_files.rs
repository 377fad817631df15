//! Prompt-cache files through the library and the CLI on synthetic bundles with a tokenizer and
//! chat template: a saved session resumes exactly (same tokens and text as the session that never
//! stopped, feeding only the new suffix); `zaya cache-prompt` + `generate --prompt-cache-file`
//! answers as the uncached conversation does; `chat --prompt-cache-file` resumes a conversation;
//! files from another model, dtype, template or format version, and corrupt, truncated or
//! oversized files are typed errors naming the problem (exit code 2); writes are atomic and never
//! go into the bundle.
mod cli_support;

use std::path::{Path, PathBuf};

use cli_support::{stderr, stdout, zaya as zaya_cmd};
use zaya_mlx::model::ModelOptions;
use zaya_mlx::runtime::{GenParams, Zaya};
use zaya_mlx::text::chat::Message;
use zaya_mlx::tools::synth::{write_bundle, SynthOptions, SynthSpec};
use zaya_mlx::ZayaError;

fn bundle(dir: &Path, seed: u64) -> PathBuf {
    let out = dir.join(format!("tiny-{seed}"));
    let mut spec = SynthSpec::preset("tiny").unwrap();
    spec.seed = seed;
    write_bundle(&spec, &out, &SynthOptions::default()).unwrap();
    out
}

fn greedy(n: usize) -> GenParams {
    GenParams {
        max_tokens: Some(n),
        ..GenParams::default()
    }
}

const DOC: &str = "The quick brown fox jumps over the lazy dog. Pack my box with five dozen liquor jugs.";

#[test]
fn saved_session_resumes_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = bundle(tmp.path(), 0);
    let zaya = Zaya::load(&dir, ModelOptions::default()).unwrap();
    let file = tmp.path().join("conv.safetensors");

    // a conversation that never stops: two turns
    let mut a = zaya.session();
    a.set_system_prompt(Some("Be brief."));
    let (t1, _) = a.chat(DOC, &greedy(12)).unwrap().collect_text().unwrap();
    a.save_prompt_cache(&file).unwrap();
    let cached = a.offset();
    let (t2a, s2a) = a.chat("And then?", &greedy(12)).unwrap().collect_text().unwrap();

    // the same conversation resumed from the file in a fresh session
    let mut b = zaya.session();
    b.load_prompt_cache(&file).unwrap();
    assert_eq!(b.offset(), cached);
    assert_eq!(b.messages().len(), 3, "system, user, assistant restored");
    assert_eq!(b.messages()[2].content.as_deref().map(|c| c.ends_with(&t1)), Some(true));
    let (t2b, s2b) = b.chat("And then?", &greedy(12)).unwrap().collect_text().unwrap();
    assert_eq!(t2b, t2a, "resumed turn's text");
    assert_eq!(b.tokens(), a.tokens(), "resumed session's tokens");
    assert_eq!(s2b.reused_tokens, cached, "the whole cached state was reused");
    assert_eq!(
        s2b.prompt_tokens, s2a.prompt_tokens,
        "only the new suffix was prefilled"
    );
}

#[test]
fn cached_document_answers_like_the_uncached_conversation() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = bundle(tmp.path(), 0);
    let zaya = Zaya::load(&dir, ModelOptions::default()).unwrap();
    let file = tmp.path().join("doc.safetensors");

    // what `zaya cache-prompt` does: the document as a user message, no generation prompt
    let mut c = zaya.session();
    c.push_message(Message::user(DOC));
    let fed = c.prefill_history(None).unwrap();
    assert_eq!(fed, c.offset());
    c.save_prompt_cache(&file).unwrap();

    // uncached: the document then the question, in one session
    let mut u = zaya.session();
    u.push_message(Message::user(DOC));
    let (want, su) = u.chat("Summarize.", &greedy(16)).unwrap().collect_text().unwrap();

    let mut r = zaya.session();
    r.load_prompt_cache(&file).unwrap();
    let (got, sr) = r.chat("Summarize.", &greedy(16)).unwrap().collect_text().unwrap();
    assert_eq!(got, want);
    assert_eq!(r.tokens(), u.tokens());
    assert_eq!(sr.reused_tokens, fed);
    assert_eq!(
        sr.prompt_tokens + fed,
        su.prompt_tokens,
        "only the question was prefilled"
    );

    // raw text mode: the cache continues with raw text
    let raw = tmp.path().join("raw.safetensors");
    let mut c = zaya.session();
    c.prefill_text(DOC, None).unwrap();
    c.save_prompt_cache(&raw).unwrap();
    let mut r = zaya.session();
    r.load_prompt_cache(&raw).unwrap();
    let (got, _) = r.generate(" Next:", &greedy(10)).unwrap().collect_text().unwrap();
    let mut u = zaya.session();
    u.prefill_text(DOC, None).unwrap();
    let (want, _) = u.generate(" Next:", &greedy(10)).unwrap().collect_text().unwrap();
    assert_eq!(got, want);
    assert_eq!(r.tokens(), u.tokens());
}

fn prompt_cache_err(e: ZayaError, needle: &str) {
    let msg = e.to_string();
    assert!(
        matches!(e, ZayaError::PromptCache { .. }),
        "not a PromptCache error: {msg}"
    );
    assert_eq!(e.exit_code(), 2);
    assert!(msg.contains(needle), "{msg:?} should mention {needle:?}");
}

/// Rewrites a safetensors file with `edit` applied to its metadata and tensors.
fn rewrite(
    src: &Path,
    dst: &Path,
    edit: impl FnOnce(
        &mut std::collections::HashMap<String, String>,
        &mut Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)>,
    ),
) {
    let bytes = std::fs::read(src).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut m = meta.metadata().clone().unwrap();
    let mut tensors: Vec<_> = st
        .tensors()
        .into_iter()
        .map(|(n, v)| (n, v.dtype(), v.shape().to_vec(), v.data().to_vec()))
        .collect();
    edit(&mut m, &mut tensors);
    let views: Vec<_> = tensors
        .iter()
        .map(|(n, d, s, b)| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap(),
            )
        })
        .collect();
    safetensors::serialize_to_file(views, Some(m), dst).unwrap();
}

#[test]
fn mismatched_and_damaged_files_are_typed_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = bundle(tmp.path(), 0);
    let zaya = Zaya::load(&dir, ModelOptions::default()).unwrap();
    let good = tmp.path().join("good.safetensors");
    let mut s = zaya.session();
    s.chat(DOC, &greedy(4)).unwrap().collect_text().unwrap();
    s.save_prompt_cache(&good).unwrap();
    let load = |p: &Path| {
        let mut x = zaya.session();
        x.load_prompt_cache(p).map(|()| x.offset())
    };
    assert_eq!(load(&good).unwrap(), s.offset());

    // another model: same preset, other weights
    let other = Zaya::load(bundle(tmp.path(), 1), ModelOptions::default()).unwrap();
    prompt_cache_err(other.session().load_prompt_cache(&good).unwrap_err(), "another model");
    // another compute dtype
    let bf16 = Zaya::load(
        &dir,
        ModelOptions {
            dtype: mlx_rs::Dtype::Bfloat16,
            ..ModelOptions::default()
        },
    )
    .unwrap();
    prompt_cache_err(bf16.session().load_prompt_cache(&good).unwrap_err(), "dtype float32");
    // another chat template (same weights)
    let copy = tmp.path().join("tiny-0-tpl");
    std::fs::create_dir(&copy).unwrap();
    for e in std::fs::read_dir(&dir).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), copy.join(e.file_name())).unwrap();
    }
    let tpl = copy.join("chat_template.jinja");
    let text = std::fs::read_to_string(&tpl).unwrap();
    std::fs::write(&tpl, format!("{{#- edited -#}}\n{text}")).unwrap();
    let edited = Zaya::load(&copy, ModelOptions::default()).unwrap();
    prompt_cache_err(
        edited.session().load_prompt_cache(&good).unwrap_err(),
        "another chat template",
    );

    // another format version
    let v2 = tmp.path().join("v2.safetensors");
    rewrite(&good, &v2, |m, _| {
        m.insert("format_version".into(), "2".into());
    });
    prompt_cache_err(load(&v2).unwrap_err(), "format version 2");
    // not a prompt cache at all: a bundle shard
    prompt_cache_err(
        load(&dir.join("model-00001-of-00001.safetensors")).unwrap_err(),
        "not a zaya-mlx prompt-cache file",
    );
    // a tensor of the wrong shape, a missing one, an extra one, a non-finite value
    let bad = tmp.path().join("bad.safetensors");
    rewrite(&good, &bad, |_, t| {
        let e = t.iter_mut().find(|e| e.0 == "layers.0.prev_hs").unwrap();
        let n = e.3.len() / 4;
        e.2 = vec![n / 2, 2];
    });
    prompt_cache_err(load(&bad).unwrap_err(), "layers.0.prev_hs");
    rewrite(&good, &bad, |_, t| t.retain(|e| e.0 != "layers.2.conv_state"));
    prompt_cache_err(load(&bad).unwrap_err(), "missing tensor `layers.2.conv_state`");
    rewrite(&good, &bad, |_, t| {
        t.push(("extra".into(), safetensors::Dtype::F32, vec![1], vec![0; 4]))
    });
    prompt_cache_err(load(&bad).unwrap_err(), "unexpected tensors: extra");
    rewrite(&good, &bad, |_, t| {
        let e = t.iter_mut().find(|e| e.0 == "layers.0.keys").unwrap();
        e.3[..4].copy_from_slice(&f32::NAN.to_le_bytes());
    });
    prompt_cache_err(load(&bad).unwrap_err(), "non-finite");
    rewrite(&good, &bad, |_, t| {
        let e = t.iter_mut().find(|e| e.0 == "token_ids").unwrap();
        e.3[..4].copy_from_slice(&u32::MAX.to_le_bytes());
    });
    prompt_cache_err(load(&bad).unwrap_err(), "outside the vocabulary");
    // truncated, corrupt header, oversized (sparse), a directory
    let bytes = std::fs::read(&good).unwrap();
    std::fs::write(&bad, &bytes[..bytes.len() / 2]).unwrap();
    prompt_cache_err(load(&bad).unwrap_err(), "corrupt or truncated");
    let mut b = bytes.clone();
    b[..8].copy_from_slice(&u64::MAX.to_le_bytes());
    std::fs::write(&bad, &b).unwrap();
    prompt_cache_err(load(&bad).unwrap_err(), "corrupt or truncated");
    std::fs::write(&bad, b"").unwrap();
    prompt_cache_err(load(&bad).unwrap_err(), "corrupt or truncated");
    let f = std::fs::File::create(&bad).unwrap();
    f.set_len(1 << 40).unwrap();
    prompt_cache_err(load(&bad).unwrap_err(), "larger than any cache");
    prompt_cache_err(load(tmp.path()).unwrap_err(), "not a regular file");
    assert!(matches!(
        load(&tmp.path().join("absent")).unwrap_err(),
        ZayaError::Io { .. }
    ));
}

#[test]
fn writes_are_atomic_and_never_into_the_bundle() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = bundle(tmp.path(), 0);
    let zaya = Zaya::load(&dir, ModelOptions::default()).unwrap();
    let out = tmp.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let file = out.join("c.safetensors");
    std::fs::write(&file, b"precious").unwrap();

    // a failing save (empty session) leaves the existing file and no temporary files
    let empty = zaya.session();
    prompt_cache_err(empty.save_prompt_cache(&file).unwrap_err(), "empty");
    assert_eq!(std::fs::read(&file).unwrap(), b"precious");
    let names = || -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(&out)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    assert_eq!(names(), vec!["c.safetensors"]);

    // into the bundle: refused, bundle unchanged
    let mut s = zaya.session();
    s.chat(DOC, &greedy(3)).unwrap().collect_text().unwrap();
    let before: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    for target in [
        dir.join("cache.safetensors"),
        dir.join("model-00001-of-00001.safetensors"),
    ] {
        let e = s.save_prompt_cache(&target).unwrap_err();
        assert!(e.to_string().contains("inside the model bundle"), "{e}");
    }
    let after: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(before, after);
    Zaya::load(&dir, ModelOptions::default()).unwrap();

    // a successful save replaces the file whole
    s.save_prompt_cache(&file).unwrap();
    assert_eq!(names(), vec!["c.safetensors"]);
    let mut r = zaya.session();
    r.load_prompt_cache(&file).unwrap();
    assert_eq!(r.tokens(), s.tokens());
}

#[test]
fn cli_cache_prompt_generate_and_chat_resume() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    let dir = bundle(tmp.path(), 0);
    let file = tmp.path().join("doc.safetensors");
    let o = zaya_cmd(&home)
        .args(["cache-prompt", "--model"])
        .arg(&dir)
        .args(["-p", DOC, "--prompt-cache-file"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("Saved the prompt cache"), "{}", stderr(&o));

    // the answer with the cache equals the library's uncached conversation
    let zaya = Zaya::load(&dir, ModelOptions::default()).unwrap();
    let mut u = zaya.session();
    u.push_message(Message::user(DOC));
    let (want, _) = u.chat("Summarize.", &greedy(12)).unwrap().collect_text().unwrap();
    let o = zaya_cmd(&home)
        .args(["generate", "--model"])
        .arg(&dir)
        .args(["--prompt-cache-file"])
        .arg(&file)
        .args(["-p", "Summarize.", "-m", "12", "--verbose", "false"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), format!("{want}\n"));
    // verbose output reports the reuse
    let o = zaya_cmd(&home)
        .args(["generate", "--model"])
        .arg(&dir)
        .args(["--prompt-cache-file"])
        .arg(&file)
        .args(["-p", "Summarize.", "-m", "4"])
        .output()
        .unwrap();
    assert!(stdout(&o).contains("Prompt cache: "), "{}", stdout(&o));
    assert!(stdout(&o).contains("cached tokens reused"), "{}", stdout(&o));

    // a damaged file: exit 2 with the reason
    let bad = tmp.path().join("bad.safetensors");
    let bytes = std::fs::read(&file).unwrap();
    std::fs::write(&bad, &bytes[..bytes.len() - 100]).unwrap();
    let o = zaya_cmd(&home)
        .args(["generate", "--model"])
        .arg(&dir)
        .args(["--prompt-cache-file"])
        .arg(&bad)
        .args(["-p", "x"])
        .output()
        .unwrap();
    cli_support::assert_bad_input(&o, "truncated prompt cache", &["prompt cache", "corrupt or truncated"]);
    // into the bundle: refused with exit 2
    let o = zaya_cmd(&home)
        .args(["cache-prompt", "--model"])
        .arg(&dir)
        .args(["-p", DOC, "--prompt-cache-file"])
        .arg(dir.join("x.safetensors"))
        .output()
        .unwrap();
    cli_support::assert_bad_input(&o, "cache into the bundle", &["inside the model bundle"]);

    // chat: the first run saves the conversation, the second resumes it
    let conv = tmp.path().join("conv.safetensors");
    let chat = |input: &str| {
        use std::io::Write;
        let mut child = zaya_cmd(&home)
            .args(["chat", "--model"])
            .arg(&dir)
            .args(["-m", "8", "--prompt-cache-file"])
            .arg(&conv)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
        child.wait_with_output().unwrap()
    };
    let first = chat("Hello there\n");
    assert!(first.status.success(), "{}", stderr(&first));
    assert!(conv.exists());
    let second = chat("Tell me more\n");
    assert!(second.status.success(), "{}", stderr(&second));
    assert!(stderr(&second).contains("[resumed 2 messages"), "{}", stderr(&second));
    // the library's two-turn conversation gives the same second answer
    let mut s = zaya.session();
    let p = GenParams {
        max_tokens: Some(8),
        ..GenParams::default()
    };
    let (a1, _) = s.chat("Hello there", &p).unwrap().collect_text().unwrap();
    let (a2, _) = s.chat("Tell me more", &p).unwrap().collect_text().unwrap();
    assert_eq!(stdout(&first), format!("{a1}\n"));
    assert_eq!(stdout(&second), format!("{a2}\n"));
}
