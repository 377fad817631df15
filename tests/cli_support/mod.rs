//! Helpers of the CLI tests of `zaya generate`, `zaya chat` and `zaya smoke`: the binary with a
//! private cache environment, tiny synthetic bundles made through `zaya synth`, and checks of
//! error exits.
#![allow(dead_code)]
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The `zaya` binary with XDG_CACHE_HOME / HF_HOME pointing into `home` (never the user's caches;
/// ZAYA_MLX_HOME, which would take precedence for the demo bundle, removed) and HF_HUB_OFFLINE set.
pub fn zaya(home: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_zaya"));
    c.env("XDG_CACHE_HOME", home.join("xdg"))
        .env_remove("ZAYA_MLX_HOME")
        .env("HF_HOME", home.join("hf"))
        .env_remove("HF_HUB_CACHE")
        .env_remove("HF_ENDPOINT")
        .env("HF_HUB_OFFLINE", "1");
    c
}

/// Writes a tiny synthetic bundle (seed 0, like the demo bundle) into `dir` with
/// `zaya synth`, optionally overriding `max_position_embeddings`.
pub fn synth(dir: &Path, max_position_embeddings: Option<usize>) -> PathBuf {
    let out = dir.join(match max_position_embeddings {
        Some(n) => format!("tiny-ctx{n}"),
        None => "tiny".to_string(),
    });
    let mut c = Command::new(env!("CARGO_BIN_EXE_zaya"));
    c.args(["synth", "--preset", "tiny", "--seed", "0", "--quiet", "--out"])
        .arg(&out);
    if let Some(n) = max_position_embeddings {
        let cfg = dir.join(format!("ctx{n}.json"));
        std::fs::write(&cfg, format!("{{\"max_position_embeddings\": {n}}}")).unwrap();
        c.arg("--config").arg(&cfg);
    }
    let o = c.output().unwrap();
    assert!(
        o.status.success(),
        "zaya synth failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    out
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Asserts a clean bad-input exit: code 2, no panic, and stderr mentioning each of `needles`.
pub fn assert_bad_input(o: &Output, what: &str, needles: &[&str]) {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(2), "{what}: exit code; stderr:\n{err}");
    assert!(!err.contains("panicked at"), "{what}: panicked:\n{err}");
    for n in needles {
        assert!(err.contains(n), "{what}: stderr should mention {n:?}:\n{err}");
    }
}

/// Runs `cmd` with `input` on its standard input (closed after it) and collects the output.
pub fn with_stdin(mut cmd: Command, input: &[u8]) -> Output {
    use std::io::Write;
    use std::process::Stdio;
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input).unwrap();
    child.wait_with_output().unwrap()
}
