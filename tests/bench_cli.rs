//! `zaya bench` and the trial loop behind it: a trial's greedy tokens equal the Python reference's
//! greedy continuation on the tiny fixture (with the graph probe taken mid-decode, so the probe
//! provably leaves the cache alone); the CLI's JSON report is complete and self-consistent on a
//! tiny synthetic bundle; bad arguments give exit code 2 (1 for a missing bundle) and a message
//! naming the culprit.
mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use serde_json::Value;
use zaya_mlx::model::{ModelOptions, ZayaModel};
use zaya_mlx::tools::bench::{self, GraphProbe};
use zaya_mlx::tools::synth::{self, SynthOptions, SynthSpec};

fn zaya() -> Command {
    Command::new(env!("CARGO_BIN_EXE_zaya"))
}

/// A tiny synthetic bundle shared by the tests of this binary.
fn tiny() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap().keep();
        synth::write_bundle(&SynthSpec::preset("tiny").unwrap(), &dir, &SynthOptions::default()).unwrap();
        dir
    })
}

#[test]
fn trial_greedy_tokens_match_the_python_reference() {
    let fx = common::fixture("tiny");
    let prompt: Vec<u32> = common::read_tensor(&fx.reference, "token_ids")
        .to_i64()
        .iter()
        .map(|&x| x as u32)
        .collect();
    let want: Vec<u32> = common::read_tensor(&fx.reference, "greedy_ids")
        .to_i64()
        .iter()
        .map(|&x| x as u32)
        .collect();
    assert!(want.len() >= 3);
    for kernels in ["fused", "plain"] {
        let mut o = ModelOptions::default();
        if kernels == "plain" {
            o.expert_backend = zaya_mlx::model::moe::ExpertBackend::Plain;
            o.linear_backend = zaya_mlx::quant::linear::LinearBackend::Plain;
        }
        let model = ZayaModel::load(&fx.bundle, o).unwrap();
        let mut probe: Option<GraphProbe> = None;
        let t = bench::run_trial(&model, &prompt, want.len(), Some(&mut probe)).unwrap();
        assert_eq!(t.generated, want, "{kernels}: greedy continuation");
        let p = probe.expect("probed");
        assert_eq!(p.offset, prompt.len() + 1, "probe at the second decode step");
        assert!(p.nodes > 0 && p.as_type >= 0 && p.as_type <= p.nodes, "{p:?}");
        assert_eq!((t.prompt_tokens, t.generation_tokens), (prompt.len(), want.len()));
        assert!(t.ttft_s > 0.0 && t.decode_s > 0.0 && t.total_time_s >= t.ttft_s + t.decode_s * 0.999);
        assert!((t.prompt_tps - prompt.len() as f64 / t.ttft_s).abs() < 1e-6 * t.prompt_tps);
        assert!((t.generation_tps - (want.len() - 1) as f64 / t.decode_s).abs() < 1e-6 * t.generation_tps);
    }
}

/// A JSON array of numbers.
fn f64s(v: &Value) -> Vec<f64> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect()
}

fn bench_json(args: &[&str]) -> Value {
    let o = zaya()
        .args(["bench", "--model"])
        .arg(tiny())
        .args(args)
        .args(["--json", "--bandwidth-mib", "16"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&o.stdout)))
}

#[test]
fn json_report_is_complete_and_consistent() {
    let v = bench_json(&["-p", "20", "-g", "6", "-n", "3", "--seed", "5"]);
    let vocab = v["vocab_size"].as_u64().unwrap() as usize;
    assert_eq!(vocab, 1024);
    // the prompt is the seeded random prompt; every trial generates exactly -g tokens
    let ids: Vec<u32> = v["prompt_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect();
    assert_eq!(ids, bench::random_prompt(vocab, 20, 5));
    assert_eq!(v["generated_ids"].as_array().unwrap().len(), 6);
    assert_eq!(v["same_tokens_every_trial"], true);
    let trials = v["trials"].as_array().unwrap();
    assert_eq!(trials.len(), 3);
    let mut gen = Vec::new();
    for t in trials {
        let (ttft, dec) = (t["ttft_s"].as_f64().unwrap(), t["decode_s"].as_f64().unwrap());
        assert!((t["prompt_tps"].as_f64().unwrap() - 20.0 / ttft).abs() < 1e-6 * 20.0 / ttft);
        assert!((t["generation_tps"].as_f64().unwrap() - 5.0 / dec).abs() < 1e-6 * 5.0 / dec);
        assert!(t["peak_rss_bytes"].as_u64().unwrap() > 0);
        let skip = t["skip_fraction"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&skip));
        gen.push(t["generation_tps"].as_f64().unwrap());
    }
    // median of the 3 trials, computed here rather than by the bench module under test
    let mut sorted = gen.clone();
    sorted.sort_by(f64::total_cmp);
    let median = sorted[1];
    assert_eq!(v["median"]["generation_tps"].as_f64().unwrap(), median);
    let mean = gen.iter().sum::<f64>() / 3.0;
    assert!((v["average"]["generation_tps"].as_f64().unwrap() - mean).abs() < 1e-9 * mean);
    // graph probe
    let g = &v["graph"];
    assert!(g["nodes_per_decode_step"].as_i64().unwrap() > 0);
    assert_eq!(g["cache_offset"].as_u64().unwrap(), 21);
    // bound = bandwidth / bytes at the mean decode context, bytes = sum of the categories
    let b = &v["bound"];
    assert_eq!(b["context"].as_u64().unwrap(), 23);
    let bytes = b["bytes_per_token"].as_u64().unwrap();
    let parts: u64 = b["bytes"]
        .as_object()
        .unwrap()
        .values()
        .map(|x| x.as_u64().unwrap())
        .sum();
    assert_eq!(bytes, parts);
    let bw = b["copy_bandwidth_gbs"].as_f64().unwrap();
    assert!(bw > 0.0);
    // the bandwidth is the median of its samples (one per trial where the peak RSS can be reset)
    let mut samples = f64s(&b["copy_bandwidth_samples_gbs"]);
    assert!(!samples.is_empty());
    samples.sort_by(f64::total_cmp);
    let mid = samples.len() / 2;
    let want = if samples.len() % 2 == 1 {
        samples[mid]
    } else {
        (samples[mid - 1] + samples[mid]) / 2.0
    };
    assert!((bw - want).abs() < 1e-9 * bw, "{bw} vs median {want} of {samples:?}");
    let tps = b["tok_per_s"].as_f64().unwrap();
    assert!((tps - bw * 1e9 / bytes as f64).abs() < 1e-9 * tps);
    let pct = b["decode_pct_of_bound"].as_f64().unwrap();
    assert!((pct - 100.0 * median / tps).abs() < 1e-9 * pct.max(1e-9));
    assert!(v["machine"]["cores"].as_u64().unwrap() >= 1);
    assert_eq!(v["options"]["kernels"], "fused");
}

#[test]
fn text_report_follows_the_mlx_lm_layout() {
    let o = zaya()
        .args(["bench", "--model"])
        .arg(tiny())
        .args(["-p", "8", "-g", "3", "-n", "2", "--warmup", "0", "--kernels", "plain"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let s = String::from_utf8_lossy(&o.stdout);
    for needle in [
        "Timing with prompt_tokens=8, generation_tokens=3, batch_size=1",
        "Trial 1:  prompt_tps=",
        "Trial 2:  prompt_tps=",
        "Averages: prompt_tps=",
        "Medians: ",
        "Graph: ",
        "Bound: ",
        "% of the bound",
    ] {
        assert!(s.contains(needle), "missing `{needle}` in\n{s}");
    }
    // without a warm-up the graph is probed at the first decode step
    assert!(s.contains("at cache offset 8"), "{s}");
}

/// `--concurrency` with `--rounds`: every level reports each round's aggregate rate and their median
/// (computed here), the speed-ups are ratios of those medians to level 1's, per-stream = aggregate / N.
#[test]
fn concurrency_rounds_report_medians() {
    let v = bench_json(&[
        "--concurrency",
        "1,2",
        "--rounds",
        "3",
        "-p",
        "8",
        "-g",
        "4",
        "--seed",
        "2",
    ]);
    let levels = v["levels"].as_array().unwrap();
    assert_eq!(levels.len(), 2);
    let agg = |l: &Value| l["aggregate_tps"].as_f64().unwrap();
    for l in levels {
        assert_eq!(l["rounds"].as_u64().unwrap(), 3);
        let mut r = f64s(&l["aggregate_tps_rounds"]);
        assert_eq!(r.len(), 3);
        assert!(r.iter().all(|x| *x > 0.0));
        r.sort_by(f64::total_cmp);
        assert_eq!(agg(l), r[1], "the median of the rounds");
        let n = l["concurrency"].as_u64().unwrap() as f64;
        assert!((l["per_stream_tps"].as_f64().unwrap() - agg(l) / n).abs() < 1e-9 * agg(l));
        assert!((l["speedup_vs_single_stream"].as_f64().unwrap() - agg(l) / agg(&levels[0])).abs() < 1e-9);
    }
    assert_eq!(levels[0]["speedup_vs_single_stream"].as_f64().unwrap(), 1.0);
    let (code, err) = {
        let o = zaya()
            .args(["bench", "--model"])
            .arg(tiny())
            .args(["--concurrency", "1,2", "--rounds", "0"])
            .output()
            .unwrap();
        (o.status.code(), String::from_utf8_lossy(&o.stderr).to_string())
    };
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--rounds"), "{err}");
}

#[test]
fn bad_arguments_are_reported() {
    let run = |args: &[&str]| {
        let o = zaya()
            .args(["bench", "--model"])
            .arg(tiny())
            .args(args)
            .output()
            .unwrap();
        (o.status.code(), String::from_utf8_lossy(&o.stderr).to_string())
    };
    for (args, needle) in [
        (vec!["-g", "1"], "-g"),
        (vec!["-p", "0"], "-p"),
        (vec!["-n", "0"], "--num-trials"),
        (vec!["--kernels", "turbo"], "turbo"),
        (vec!["--dtype", "f8"], "f8"),
        (vec!["-p", "4090", "-g", "10"], "4099"),
    ] {
        let (code, err) = run(&args);
        assert_eq!(code, Some(2), "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: `{needle}` not in {err}");
    }
    let o = zaya()
        .args(["bench", "--model", "/nonexistent/zaya-bundle"])
        .output()
        .unwrap();
    // a missing bundle is a bad argument (exit 2 in the error contract)
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("/nonexistent/zaya-bundle"));
}
