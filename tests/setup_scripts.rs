//! The set-up scripts fail with a one-line reason (and a non-zero exit) when a prerequisite is
//! missing: no python3, or no network to the package registries. They run against a scratch prefix
//! and a PATH holding only the tools the test provides, so nothing is installed.
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A bin dir with the basic tools the scripts need before their checks, and nothing else.
fn minimal_bin(dir: &Path) -> PathBuf {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    for tool in [
        "bash",
        "uname",
        "dirname",
        "cat",
        "mktemp",
        "sha256sum",
        "cut",
        "printf",
        "rm",
        "mkdir",
    ] {
        let found = ["/usr/bin", "/bin"]
            .iter()
            .map(|d| Path::new(d).join(tool))
            .find(|p| p.exists());
        if let Some(p) = found {
            symlink(p, bin.join(tool)).unwrap();
        }
    }
    bin
}

fn stub(bin: &Path, name: &str, body: &str) {
    let p = bin.join(name);
    std::fs::write(&p, format!("#!/bin/bash\n{body}\n")).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
}

fn run(script: &str, bin: &Path, dir: &Path) -> (i32, String) {
    let out = Command::new(bin.join("bash"))
        .arg(repo().join("scripts").join(script))
        .env_clear()
        .env("PATH", bin)
        .env("HOME", dir)
        .env("MLX_LINUX_PREFIX", dir.join("prefix"))
        .env("ZAYA_REF_VENV", dir.join("venv"))
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn assert_one_line_reason(code: i32, stderr: &str, needle: &str) {
    assert_ne!(code, 0, "expected failure, stderr: {stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected a one-line reason, got: {stderr}");
    assert!(lines[0].contains(needle), "reason should mention `{needle}`: {stderr}");
}

#[test]
fn mlx_setup_without_python_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let bin = minimal_bin(dir.path());
    let (code, err) = run("setup-mlx-linux.sh", &bin, dir.path());
    assert_one_line_reason(code, &err, "python3 is missing");
    assert!(!dir.path().join("prefix").exists(), "nothing should be installed");
}

#[test]
fn mlx_setup_without_network_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let bin = minimal_bin(dir.path());
    // python3 whose pip works but cannot reach the registry; compilers present
    stub(
        &bin,
        "python3",
        r#"case "$*" in *"pip --version"*) exit 0;; *"pip download"*) echo "ERROR: network unreachable" >&2; exit 1;; *) exit 1;; esac"#,
    );
    stub(&bin, "g++", "exit 0");
    stub(&bin, "cargo", "exit 0");
    let (code, err) = run("setup-mlx-linux.sh", &bin, dir.path());
    assert_one_line_reason(code, &err, "no network");
    assert!(!dir.path().join("prefix").exists(), "nothing should be installed");
}

#[test]
fn python_setup_without_python_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let bin = minimal_bin(dir.path());
    let (code, err) = run("setup-python-ref.sh", &bin, dir.path());
    assert_one_line_reason(code, &err, "python3 is missing");
}

#[test]
fn python_setup_without_network_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let bin = minimal_bin(dir.path());
    // a python3 >= 3.11 with venv, whose venv pip cannot reach PyPI
    let venv_py = r#"case "$*" in *"pip --version"*) exit 0;; *"pip install"*) echo "ERROR: network unreachable" >&2; exit 1;; *) exit 0;; esac"#;
    let body = format!(
        r#"case "$*" in
  *"-m venv --help"*) exit 0;;
  *"-m venv "*) d="${{@: -1}}"; mkdir -p "$d/bin"; printf '#!/bin/bash\n%s\n' '{venv_py}' > "$d/bin/python"; chmod +x "$d/bin/python"; exit 0;;
  *) exit 0;;
esac"#
    );
    stub(&bin, "python3", &body);
    stub(&bin, "chmod", "/bin/chmod \"$@\"");
    let (code, err) = run("setup-python-ref.sh", &bin, dir.path());
    assert_ne!(code, 0);
    let reason: Vec<&str> = err
        .lines()
        .filter(|l| l.starts_with("setup-python-ref:") && !l.contains("creating"))
        .collect();
    assert_eq!(reason.len(), 1, "{err}");
    assert!(reason[0].contains("no network"), "{err}");
}
