//! The cases a hostile-input campaign found, each through the `zaya` binary on a tiny synthetic
//! bundle: every one ends with one clear line on stderr and the documented exit code (1 a check
//! that failed, 2 bad arguments or input files, 3 a runtime or environment failure), never a
//! panic, a signal, a hang or a lost file.
mod cli_support;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use cli_support::{stderr, stdout, synth, zaya};
use sha2::{Digest, Sha256};

fn run(home: &Path, args: &[&str]) -> Output {
    zaya(home).args(args).output().unwrap()
}

fn no_panic(o: &Output, what: &str) {
    let e = stderr(o);
    assert!(
        !e.contains("panicked") && !e.contains("RUST_BACKTRACE"),
        "{what}: panicked:\n{e}"
    );
    assert!(!e.contains("/src/"), "{what}: a source path in the message:\n{e}");
}

fn expect(o: &Output, code: i32, what: &str, needles: &[&str]) {
    no_panic(o, what);
    let e = stderr(o);
    assert_eq!(
        o.status.code(),
        Some(code),
        "{what}: exit code; stderr:\n{e}\nstdout:\n{}",
        stdout(o)
    );
    for n in needles {
        assert!(
            e.contains(n) || stdout(o).contains(n),
            "{what}: output should mention {n:?}:\n{e}\n{}",
            stdout(o)
        );
    }
}

fn copy_dir(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    for e in std::fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dst.join(e.file_name())).unwrap();
    }
}

fn edit_json(path: &Path, f: impl FnOnce(&mut serde_json::Value)) {
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    f(&mut v);
    std::fs::write(path, serde_json::to_vec_pretty(&v).unwrap()).unwrap();
}

/// Overwrites the data of tensor `name` in a safetensors file with `fill` (byte pattern repeated).
fn overwrite_tensor(path: &Path, name: &str, fill: &[u8]) {
    let mut d = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(d[..8].try_into().unwrap()) as usize;
    let h: serde_json::Value = serde_json::from_slice(&d[8..8 + n]).unwrap();
    let o = &h[name]["data_offsets"];
    let (b, e) = (o[0].as_u64().unwrap() as usize, o[1].as_u64().unwrap() as usize);
    for (i, x) in d[8 + n + b..8 + n + e].iter_mut().enumerate() {
        *x = fill[i % fill.len()];
    }
    std::fs::write(path, d).unwrap();
}

/// `zaya logits --model M --token-ids IDS --out OUT`.
fn logits(home: &Path, model: &str, ids: &str, out: &Path) -> Output {
    run(
        home,
        &[
            "logits",
            "--model",
            model,
            "--token-ids",
            ids,
            "--out",
            out.to_str().unwrap(),
        ],
    )
}

fn sha(path: &Path) -> Vec<u8> {
    Sha256::digest(std::fs::read(path).unwrap()).to_vec()
}

struct Env {
    _tmp: tempfile::TempDir,
    home: PathBuf,
    bundle: PathBuf,
    root: PathBuf,
}

fn env() -> Env {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().to_path_buf();
    let bundle = synth(&root, None);
    Env {
        home: root.join("home"),
        bundle,
        root,
        _tmp: tmp,
    }
}

impl Env {
    /// A copy of the bundle to damage.
    fn copy(&self, name: &str) -> PathBuf {
        let d = self.root.join(name);
        copy_dir(&self.bundle, &d);
        d
    }
    fn b(&self) -> &str {
        self.bundle.to_str().unwrap()
    }
}

#[test]
fn bad_arguments_are_typed_errors() {
    let e = env();
    let h = &e.home;
    let b = e.b();
    for (args, needle) in [
        (vec!["bench", "--model", b, "-n", "100000000000000"], "num-trials"),
        (
            vec!["bench", "--model", b, "-p", "18446744073709551615", "-g", "4"],
            "context",
        ),
        (
            vec!["bench", "--model", b, "--bandwidth-mib", "99999999999999"],
            "bandwidth-mib",
        ),
        (vec!["bench", "--model", b, "-p", "-1"], "negative"),
        (vec!["bench", "--model", b, "-n", "-3"], "negative"),
        (vec!["generate", "--model", b, "--seed", "-1"], "negative"),
        (
            vec!["generate", "--model", b, "--thinking", "--no-thinking"],
            "cannot be used with",
        ),
        (
            vec!["generate", "--model", b, "--draft", "ngram", "--num-draft-tokens", "0"],
            "num-draft-tokens",
        ),
        (vec!["info", "--model", "/nonexistent/zaya"], "no such directory"),
        (
            vec![
                "logits",
                "--model",
                e.root.to_str().unwrap(),
                "--token-ids",
                "1",
                "--out",
                "/tmp/x.safetensors",
            ],
            "no config.json",
        ),
    ] {
        let o = run(h, &args);
        expect(&o, 2, &format!("{args:?}"), &[needle]);
    }
    // a missing config is the same clear error (exit 2) in every command
    let empty = e.root.join("empty");
    std::fs::create_dir(&empty).unwrap();
    for cmd in ["info", "generate", "bench"] {
        let o = run(h, &[cmd, "--model", empty.to_str().unwrap()]);
        expect(&o, 2, cmd, &["config.json"]);
    }
}

#[test]
fn unbounded_inputs_are_refused_quickly() {
    let e = env();
    // a 2 KB config asking for a million layers
    let d = e.copy("layers");
    edit_json(&d.join("config.json"), |v| v["num_hidden_layers"] = 1_000_000.into());
    let t = Instant::now();
    let o = run(&e.home, &["info", "--model", d.to_str().unwrap()]);
    expect(
        &o,
        1,
        "huge num_hidden_layers",
        &["num_hidden_layers", "larger than any supported model"],
    );
    assert!(t.elapsed() < Duration::from_secs(10));
    // synth: dims beyond any model, and a bundle larger than the disk
    let cfg = e.root.join("huge.json");
    std::fs::write(&cfg, r#"{"hidden_size": 4194304}"#).unwrap();
    let o = run(
        &e.home,
        &[
            "synth",
            "--config",
            cfg.to_str().unwrap(),
            "--out",
            e.root.join("s1").to_str().unwrap(),
            "-q",
        ],
    );
    expect(&o, 2, "synth huge hidden", &["hidden_size"]);
    std::fs::write(&cfg, r#"{"num_experts": 1024, "num_hidden_layers": 1024}"#).unwrap();
    let o = run(
        &e.home,
        &[
            "synth",
            "--preset",
            "zaya1-8b",
            "--config",
            cfg.to_str().unwrap(),
            "--out",
            e.root.join("s2").to_str().unwrap(),
            "-q",
        ],
    );
    expect(&o, 3, "synth beyond the free space", &["GiB but only", "free"]);
    assert!(!e.root.join("s2").join("model-00001-of-00001.safetensors").exists());
    // a chat template whose loops would run for hours
    let d = e.copy("tpl");
    std::fs::write(
        d.join("chat_template.jinja"),
        "{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}",
    )
    .unwrap();
    let t = Instant::now();
    let o = run(&e.home, &["generate", "--model", d.to_str().unwrap(), "-p", "hi"]);
    expect(&o, 2, "endless template", &["chat template", "steps"]);
    assert!(t.elapsed() < Duration::from_secs(30));
}

#[test]
fn stalled_download_times_out() {
    let e = env();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    // accept and hold connections, never answer
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for c in listener.incoming().take(8) {
            held.push(c);
        }
        std::thread::sleep(Duration::from_secs(30));
    });
    let t = Instant::now();
    let o = zaya(&e.home)
        .env_remove("HF_HUB_OFFLINE")
        .env("HF_ENDPOINT", format!("http://127.0.0.1:{port}"))
        .env("ZAYA_HF_TIMEOUT", "2")
        .args(["generate", "--model", "nobody/zaya-test-repo", "-p", "hi"])
        .output()
        .unwrap();
    expect(&o, 3, "stalled hub", &["stalled", "ZAYA_HF_TIMEOUT"]);
    assert!(t.elapsed() < Duration::from_secs(20), "{:?}", t.elapsed());
}

#[test]
fn truncated_shard_while_mapped_names_the_file() {
    let e = env();
    let d = e.copy("bus");
    let shard = d.join("model-00001-of-00001.safetensors");
    let mut child = zaya(&e.home)
        .args(["chat", "--model", d.to_str().unwrap(), "-m", "2"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"hello\n").unwrap();
    stdin.flush().unwrap();
    // wait for the first answer (the weights are mapped and used), then cut the shard
    let mut out = child.stdout.take().unwrap();
    let mut buf = [0u8; 1];
    use std::io::Read;
    loop {
        let n = out.read(&mut buf).unwrap();
        if n == 0 || buf[0] == b'\n' {
            break;
        }
    }
    std::fs::OpenOptions::new()
        .write(true)
        .open(&shard)
        .unwrap()
        .set_len(64)
        .unwrap();
    let _ = stdin.write_all(b"again\n");
    drop(stdin);
    let o = child.wait_with_output().unwrap();
    expect(
        &o,
        3,
        "SIGBUS",
        &[
            "model-00001-of-00001.safetensors changed while mapped",
            "must not be modified",
        ],
    );
}

#[test]
fn outputs_never_lose_data() {
    let e = env();
    let shard = e.bundle.join("model-00001-of-00001.safetensors");
    let before = sha(&shard);
    // --out at the bundle's own shard: refused, shard untouched
    let o = logits(&e.home, e.b(), "1,2", &shard);
    expect(&o, 2, "logits into the bundle", &["inside the model bundle"]);
    assert_eq!(sha(&shard), before);
    // a failing run leaves an existing output as it was
    let out = e.root.join("out.safetensors");
    std::fs::write(&out, b"precious").unwrap();
    let o = logits(&e.home, e.b(), "1,99999999", &out);
    expect(&o, 2, "logits with a bad id", &["99999999"]);
    assert_eq!(std::fs::read(&out).unwrap(), b"precious");
    let o = logits(&e.home, e.b(), "1,2", &out);
    expect(&o, 0, "logits", &[]);
    assert_ne!(std::fs::read(&out).unwrap(), b"precious");
    let leftovers: Vec<_> = std::fs::read_dir(&e.root)
        .unwrap()
        .filter_map(|x| x.ok())
        .filter(|x| x.file_name().to_string_lossy().starts_with(".tmp-"))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");

    // synth --force: replaces only what an earlier synth wrote, says so, keeps other files
    let dir = e.root.join("synth-out");
    let o = run(&e.home, &["synth", "--out", dir.to_str().unwrap(), "-q"]);
    expect(&o, 0, "synth", &[]);
    std::fs::write(dir.join("notes.txt"), b"mine").unwrap();
    let o = run(
        &e.home,
        &["synth", "--out", dir.to_str().unwrap(), "--force", "--seed", "3", "-q"],
    );
    expect(&o, 0, "synth --force", &["replaces", "config.json"]);
    assert_eq!(std::fs::read(dir.join("notes.txt")).unwrap(), b"mine");
    // a directory with a bundle file synth did not write: refused, file untouched
    let foreign = e.root.join("foreign");
    std::fs::create_dir(&foreign).unwrap();
    std::fs::write(foreign.join("config.json"), b"{\"mine\": true}").unwrap();
    let o = run(&e.home, &["synth", "--out", foreign.to_str().unwrap(), "--force", "-q"]);
    expect(
        &o,
        2,
        "synth --force over a foreign file",
        &["was not written by zaya synth"],
    );
    assert_eq!(std::fs::read(foreign.join("config.json")).unwrap(), b"{\"mine\": true}");
}

#[test]
fn info_reports_what_is_wrong() {
    let e = env();
    let info = |d: &Path| run(&e.home, &["info", "--model", d.to_str().unwrap()]);
    type Damage = Box<dyn Fn(&Path)>;
    let cases: Vec<(&str, Damage, &[&str])> = vec![
        (
            "corrupt tokenizer.json",
            Box::new(|d: &Path| std::fs::write(d.join("tokenizer.json"), b"{not json").unwrap()),
            &["tokenizer"],
        ),
        (
            "unknown weight_format",
            Box::new(|d: &Path| edit_json(&d.join("config.json"), |v| v["weight_format"] = "weird".into())),
            &["weight_format", "weird"],
        ),
        (
            "partial_rotary_factor",
            Box::new(|d: &Path| edit_json(&d.join("config.json"), |v| v["partial_rotary_factor"] = 3.0.into())),
            &["partial_rotary_factor"],
        ),
        (
            "eos id",
            Box::new(|d: &Path| edit_json(&d.join("config.json"), |v| v["eos_token_id"] = 99_999_999.into())),
            &["eos_token_id"],
        ),
        (
            "q heads 0",
            Box::new(|d: &Path| edit_json(&d.join("config.json"), |v| v["cca_num_q_heads"] = 0.into())),
            &["cca_num_q_heads"],
        ),
        (
            "NaN codebook",
            Box::new(|d: &Path| {
                overwrite_tensor(
                    &d.join("jangtq_runtime.safetensors"),
                    "codebook.128.4",
                    &f32::NAN.to_le_bytes(),
                )
            }),
            &["codebook", "finite"],
        ),
        (
            "zero signs",
            Box::new(|d: &Path| overwrite_tensor(&d.join("jangtq_runtime.safetensors"), "signs.128.42", &[0])),
            &["sign"],
        ),
        (
            "broken template",
            Box::new(|d: &Path| std::fs::write(d.join("chat_template.jinja"), "{% for %}").unwrap()),
            &["template"],
        ),
    ];
    for (i, (what, damage, needles)) in cases.iter().enumerate() {
        let d = e.copy(&format!("info{i}"));
        damage(&d);
        expect(&info(&d), 1, what, needles);
        assert!(stdout(&info(&d)).contains("validation  FAILED"), "{what}");
    }
    // overlapping tensor data
    let d = e.copy("overlap");
    let shard = d.join("model-00001-of-00001.safetensors");
    let data = std::fs::read(&shard).unwrap();
    let n = u64::from_le_bytes(data[..8].try_into().unwrap()) as usize;
    let mut h: serde_json::Value = serde_json::from_slice(&data[8..8 + n]).unwrap();
    let (a, b) = ("model.final_norm.weight", "model.layers.0.input_norm.weight");
    let off = h[a]["data_offsets"].clone();
    h[b]["data_offsets"] = off;
    let mut hdr = serde_json::to_vec(&h).unwrap();
    while !hdr.len().is_multiple_of(8) {
        hdr.push(b' ');
    }
    let mut out = (hdr.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&hdr);
    out.extend_from_slice(&data[8 + n..]);
    std::fs::write(&shard, out).unwrap();
    expect(&info(&d), 1, "overlapping offsets", &["overlap"]);
    // shards that are not files
    for (name, kind) in [
        ("dir", "is a directory"),
        ("fifo", "FIFO"),
        ("loop", "symbolic-link loop"),
    ] {
        let d = e.copy(&format!("shard-{name}"));
        let shard = d.join("model-00001-of-00001.safetensors");
        std::fs::remove_file(&shard).unwrap();
        match name {
            "dir" => std::fs::create_dir(&shard).unwrap(),
            "fifo" => {
                let c = std::ffi::CString::new(shard.to_str().unwrap()).unwrap();
                assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
            }
            _ => std::os::unix::fs::symlink(&shard, &shard).unwrap(),
        }
        let t = Instant::now();
        expect(&info(&d), 1, name, &[kind]);
        assert!(t.elapsed() < Duration::from_secs(10), "{name}: {:?}", t.elapsed());
    }
    // a broken pipe ends quietly with 0
    let mut child = zaya(&e.home)
        .args(["info", "--model", e.b()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let o = child.wait_with_output().unwrap();
    expect(&o, 0, "info | head", &[]);
}

#[test]
fn nan_weights_are_a_model_fault() {
    let e = env();
    let d = e.copy("nan");
    let nan16 = half::f16::NAN.to_le_bytes();
    overwrite_tensor(
        &d.join("model-00001-of-00001.safetensors"),
        "model.final_norm.weight",
        &nan16,
    );
    let o = run(
        &e.home,
        &["generate", "--model", d.to_str().unwrap(), "-p", "hi", "-m", "2"],
    );
    expect(&o, 3, "NaN weights", &["NaN logits", "corrupt"]);
    assert!(!stderr(&o).contains("invalid argument"), "{}", stderr(&o));
}

#[test]
fn parity_references_are_checked() {
    let e = env();
    let r = e.root.join("ref.safetensors");
    let o = logits(&e.home, e.b(), "3,4,5", &r);
    expect(&o, 0, "logits", &[]);
    type Tensors = Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)>;
    let write = |edit: &dyn Fn(&mut Tensors)| -> PathBuf {
        let bytes = std::fs::read(&r).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let mut t: Vec<_> = st
            .tensors()
            .into_iter()
            .map(|(n, v)| (n, v.dtype(), v.shape().to_vec(), v.data().to_vec()))
            .collect();
        edit(&mut t);
        let views: Vec<_> = t
            .iter()
            .map(|(n, d, s, b)| {
                (
                    n.clone(),
                    safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap(),
                )
            })
            .collect();
        let p = e.root.join(format!("ref-{}.safetensors", rand::random::<u32>()));
        safetensors::serialize_to_file(views, None, &p).unwrap();
        p
    };
    let ids = |t: &mut Tensors| -> usize { t.iter().position(|x| x.0 == "token_ids").unwrap() };
    let cases: Vec<(&str, PathBuf, &[&str])> = vec![
        (
            "empty ids",
            write(&|t| {
                let i = ids(t);
                t[i].2 = vec![0];
                t[i].3 = vec![];
            }),
            &["empty"],
        ),
        (
            "bool ids",
            write(&|t| {
                let i = ids(t);
                t[i].1 = safetensors::Dtype::BOOL;
                t[i].3 = vec![1, 0, 1];
            }),
            &["integer"],
        ),
        (
            "f32 ids",
            write(&|t| {
                let i = ids(t);
                t[i].1 = safetensors::Dtype::F32;
            }),
            &["integer"],
        ),
        (
            "2^40",
            write(&|t| {
                let i = ids(t);
                t[i].1 = safetensors::Dtype::I64;
                t[i].3 = [3i64, 1 << 40, 5].iter().flat_map(|v| v.to_le_bytes()).collect();
            }),
            &["does not fit"],
        ),
        (
            "negative",
            write(&|t| {
                let i = ids(t);
                t[i].3 = [3i32, -7, 5].iter().flat_map(|v| v.to_le_bytes()).collect();
            }),
            &["negative"],
        ),
        (
            "unknown tensor",
            write(&|t| t.push(("hiddden.0".into(), safetensors::Dtype::F32, vec![1], vec![0; 4]))),
            &["outside the naming contract", "hiddden.0"],
        ),
    ];
    for (what, p, needles) in cases {
        let o = run(
            &e.home,
            &["parity", "--model", e.b(), "--reference", p.to_str().unwrap()],
        );
        expect(&o, 2, what, needles);
    }
    // truncated reference
    let bytes = std::fs::read(&r).unwrap();
    let p = e.root.join("trunc.safetensors");
    std::fs::write(&p, &bytes[..bytes.len() / 2]).unwrap();
    let o = run(
        &e.home,
        &["parity", "--model", e.b(), "--reference", p.to_str().unwrap()],
    );
    expect(&o, 2, "truncated reference", &["corrupt or truncated"]);
    // a real failure of the check is exit 1
    let p = write(&|t| {
        let i = t.iter().position(|x| x.0 == "logits").unwrap();
        for c in t[i].3.chunks_exact_mut(4) {
            let v = f32::from_le_bytes(c.try_into().unwrap()) + 1.0;
            c.copy_from_slice(&v.to_le_bytes());
        }
    });
    let o = run(
        &e.home,
        &["parity", "--model", e.b(), "--reference", p.to_str().unwrap()],
    );
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
}

#[test]
fn chat_survives_bad_lines_and_reports_total_failure() {
    let e = env();
    let chat = |model: &Path, input: &[u8]| {
        let mut c = zaya(&e.home);
        c.args(["chat", "--model", model.to_str().unwrap(), "-m", "2"]);
        cli_support::with_stdin(c, input)
    };
    let o = chat(&e.bundle, b"hello\n\xff\xfe\nagain\n");
    expect(&o, 0, "invalid UTF-8 line", &["not valid UTF-8"]);
    assert_eq!(stdout(&o).lines().count(), 2, "two answers: {}", stdout(&o));
    // every turn fails (each prompt is over a 4-token context): non-zero exit
    let ctx = synth(&e.root, Some(4));
    let o = chat(
        &ctx,
        b"a long message that does not fit\nanother one that does not fit\n",
    );
    no_panic(&o, "all turns failed");
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
}
