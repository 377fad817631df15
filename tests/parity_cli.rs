//! `zaya logits` and `zaya parity` end to end on the tiny fixture: the logits file follows the
//! reference naming and agrees with the reference; `zaya parity` exits 0 on the reference, 1 on a
//! perturbed one (printing the failing tensor), 2 on bad arguments.
mod common;

use std::process::Command;

use mlx_rs::Array;
use zaya_mlx::tools::parity::{compare_outputs, ParityOptions};

fn zaya() -> Command {
    Command::new(env!("CARGO_BIN_EXE_zaya"))
}

#[test]
fn logits_command_writes_the_reference_naming() {
    let fx = common::fixture("tiny");
    let r = Array::load_safetensors(&fx.reference).unwrap();
    let ids = {
        let t = r["token_ids"].as_dtype(mlx_rs::Dtype::Int32).unwrap();
        t.eval().unwrap();
        t.as_slice::<i32>()
            .iter()
            .map(|v| v.to_string())
            .collect::<Vec<_>>()
            .join(",")
    };
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("ours.safetensors");
    let o = zaya()
        .args(["logits", "--model"])
        .arg(&fx.bundle)
        .args(["--token-ids", &ids, "--hidden-states", "--prefill-chunk", "5", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let ours: std::collections::BTreeMap<String, Array> = Array::load_safetensors(&out).unwrap().into_iter().collect();
    for name in r.keys().filter(|k| k.as_str() != "greedy_ids") {
        assert!(ours.contains_key(name), "missing {name}");
    }
    let rep = compare_outputs(&ours, &r, ParityOptions::default()).unwrap();
    assert!(rep.ok(), "{}", rep.table());
    // bad input: an id beyond the vocabulary → exit 2 with a message
    let o = zaya()
        .args(["logits", "--model"])
        .arg(&fx.bundle)
        .args(["--token-ids", "2,999999", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stderr).contains("999999"));
}

#[test]
fn parity_command_exit_codes() {
    let fx = common::fixture("tiny");
    let o = zaya()
        .args(["parity", "--model"])
        .arg(&fx.bundle)
        .arg("--reference")
        .arg(&fx.reference)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{stdout}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        stdout.contains("PARITY OK") && stdout.contains("hidden.3") && stdout.contains("route.1"),
        "{stdout}"
    );

    // perturb the logits of the reference
    let mut r = Array::load_safetensors(&fx.reference).unwrap();
    let l = r["logits"].multiply(Array::from_f32(1.01)).unwrap();
    r.insert("logits".into(), l);
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.safetensors");
    Array::save_safetensors(r.iter().map(|(k, v)| (k.as_str(), v)), None, &bad).unwrap();
    let o = zaya()
        .args(["parity", "--model"])
        .arg(&fx.bundle)
        .arg("--reference")
        .arg(&bad)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.lines().any(|l| l.starts_with("logits") && l.contains("FAIL")),
        "{stdout}"
    );

    let o = zaya()
        .args(["parity", "--model"])
        .arg(&fx.bundle)
        .arg("--reference")
        .arg(&fx.reference)
        .args(["--dtype", "f8"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    // the plain kernels pass too
    let o = zaya()
        .args(["parity", "--kernels", "plain", "--model"])
        .arg(&fx.bundle)
        .arg("--reference")
        .arg(&fx.reference)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stdout));
}
