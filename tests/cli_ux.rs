//! CLI behaviour users bring from mlx-lm and llama.cpp, on tiny synthetic bundles: Hugging Face repo
//! ids in every command and in the library (through a local hub-cache layout), mlx_lm's flag
//! names, `--logprobs` checked against the softmax of `zaya logits` output, `--tools` rendered
//! through the chat template, shell completions and `--help` on every command.
mod cli_support;

use std::path::{Path, PathBuf};

use cli_support::{stderr, stdout, synth, zaya};
use zaya_mlx::model::ModelOptions;
use zaya_mlx::runtime::Zaya;

/// Puts `bundle` in the hub cache under `home/hf/hub` as `TestOrg/Tiny-ZAYA`.
fn hub_cache(home: &Path, bundle: &Path) {
    let repo = home.join("hf/hub/models--TestOrg--Tiny-ZAYA");
    let snap = repo.join("snapshots/0123456789abcdef");
    std::fs::create_dir_all(&snap).unwrap();
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), "0123456789abcdef").unwrap();
    for e in std::fs::read_dir(bundle).unwrap() {
        let p = e.unwrap().path();
        std::os::unix::fs::symlink(&p, snap.join(p.file_name().unwrap())).unwrap();
    }
}

#[test]
fn repo_ids_work_in_every_command_and_the_library() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path();
    let b = synth(home, None);
    hub_cache(home, &b);
    let repo = "TestOrg/Tiny-ZAYA";
    let ok = |args: &[&str]| {
        let o = zaya(home).args(args).output().unwrap();
        assert!(o.status.success(), "{args:?}: {}", stderr(&o));
        o
    };
    let info = ok(&["info", "--model", repo]);
    assert!(stdout(&info).contains("validation  OK"), "{}", stdout(&info));
    let out = home.join("l.safetensors");
    ok(&[
        "logits",
        "--model",
        repo,
        "--token-ids",
        "3,4,5",
        "--out",
        out.to_str().unwrap(),
    ]);
    let p = ok(&["parity", "--model", repo, "--reference", out.to_str().unwrap()]);
    assert!(stdout(&p).contains("logits"), "{}", stdout(&p));
    ok(&[
        "bench",
        "--model",
        repo,
        "-p",
        "4",
        "-g",
        "2",
        "-n",
        "1",
        "--warmup",
        "0",
        "--bandwidth-mib",
        "8",
    ]);
    // --out inside the cached bundle (through the repo id) is refused
    let snap_file = home.join("hf/hub/models--TestOrg--Tiny-ZAYA/snapshots/0123456789abcdef/x.safetensors");
    let o = zaya(home)
        .args([
            "logits",
            "--model",
            repo,
            "--token-ids",
            "3",
            "--out",
            snap_file.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    // the library resolves the same id (HF_HOME is read from the environment)
    std::env::set_var("HF_HOME", home.join("hf"));
    std::env::set_var("HF_HUB_OFFLINE", "1");
    let z = Zaya::load(repo, ModelOptions::default()).unwrap();
    assert!(z.dir().unwrap().ends_with("0123456789abcdef"));
    // an unknown repo id offline: exit 2, naming the cache
    let o = zaya(home)
        .args(["info", "--model", "TestOrg/Missing"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("HF_HUB_OFFLINE"), "{}", stderr(&o));
}

#[test]
fn mlx_lm_flag_names() {
    let tmp = tempfile::tempdir().unwrap();
    let b = synth(tmp.path(), None);
    let run = |extra: &[&str]| {
        let o = zaya(tmp.path())
            .args(["generate", "--model"])
            .arg(&b)
            .args(["-p", "Hello", "-m", "5", "--verbose", "false"])
            .args(extra)
            .output()
            .unwrap();
        assert!(o.status.success(), "{extra:?}: {}", stderr(&o));
        stdout(&o)
    };
    assert_eq!(run(&["--prefill-step-size", "2"]), run(&["--prefill-chunk", "2"]));
    // -m is --max-tokens everywhere; info takes --model only
    let o = zaya(tmp.path()).args(["info", "-m"]).arg(&b).output().unwrap();
    assert_eq!(o.status.code(), Some(2));
}

/// `(prompt ids, generated ids, reported logprobs)` of `zaya generate --json --logprobs n`.
fn generate_json(home: &Path, b: &Path, n: usize, extra: &[&str]) -> serde_json::Value {
    let o = zaya(home)
        .args(["generate", "--model"])
        .arg(b)
        .args(["-p", "Hello there", "-m", "6", "--json", "--logprobs", &n.to_string()])
        .args(extra)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    serde_json::from_str(stdout(&o).trim()).unwrap()
}

#[test]
fn logprobs_equal_the_softmax_of_zaya_logits() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path();
    let b = synth(home, None);
    let v = generate_json(home, &b, 3, &["--ignore-chat-template"]);
    let ids = |k: &str| -> Vec<u32> {
        v[k].as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect()
    };
    let (prompt, gen) = (ids("prompt_token_ids"), ids("token_ids"));
    assert_eq!(gen.len(), 6);
    // the logits of every position of prompt + generated (all but the last) from `zaya logits`
    let mut all = prompt.clone();
    all.extend_from_slice(&gen[..gen.len() - 1]);
    let out: PathBuf = home.join("l.safetensors");
    let list: Vec<String> = all.iter().map(|x| x.to_string()).collect();
    let o = zaya(home)
        .args(["logits", "--model"])
        .arg(&b)
        .args(["--token-ids", &list.join(","), "--out", out.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let bytes = std::fs::read(&out).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let l = st.tensor("logits").unwrap();
    let vocab = l.shape()[1];
    let logits: Vec<f32> = l
        .data()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    let tok_vocab = zaya_mlx::text::tokenizer::Tokenizer::from_dir(&b)
        .unwrap()
        .vocab_size()
        .min(vocab);
    for (i, (&id, lp)) in gen.iter().zip(v["logprobs"].as_array().unwrap()).enumerate() {
        let row = &logits[(prompt.len() - 1 + i) * vocab..][..tok_vocab];
        let max = row.iter().fold(f64::NEG_INFINITY, |m, &x| m.max(x as f64));
        let lse = max + row.iter().map(|&x| (x as f64 - max).exp()).sum::<f64>().ln();
        let want = row[id as usize] as f64 - lse;
        let got = lp["logprob"].as_f64().unwrap();
        assert!(
            (got - want).abs() < 1e-3,
            "token {i}: {got} vs softmax of zaya logits {want}"
        );
        // the top alternatives are the largest logits, in order, the greedy token first
        let top = lp["top_logprobs"].as_array().unwrap();
        assert_eq!(top.len(), 3);
        assert_eq!(
            top[0]["id"].as_u64().unwrap() as u32,
            id,
            "greedy: the sampled token is the top one"
        );
        let mut order: Vec<usize> = (0..row.len()).collect();
        order.sort_by(|&a, &b| row[b].total_cmp(&row[a]));
        for (k, t) in top.iter().enumerate() {
            let tid = t["id"].as_u64().unwrap() as usize;
            assert!((row[tid] - row[order[k]]).abs() < 1e-4, "token {i}, alternative {k}");
        }
    }
}

#[test]
fn tools_are_rendered_and_completions_and_help_exist() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path();
    let b = synth(home, None);
    let tools = home.join("tools.json");
    std::fs::write(
        &tools,
        r#"[{"type": "function", "function": {"name": "get_weather", "description": "Weather of a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]"#,
    )
    .unwrap();
    let plain = generate_json(home, &b, 0, &[]);
    let with = generate_json(home, &b, 0, &["--tools", tools.to_str().unwrap()]);
    let n = |v: &serde_json::Value| v["usage"]["prompt_tokens"].as_u64().unwrap();
    assert!(
        n(&with) > n(&plain) + 20,
        "the tool schema is rendered into the prompt: {} vs {}",
        n(&with),
        n(&plain)
    );
    assert!(with["tool_calls"].is_array(), "{with}");
    // a bad tools file: exit 2
    std::fs::write(&tools, "{\"not\": \"a list\"}").unwrap();
    let o = zaya(home)
        .args(["generate", "--model"])
        .arg(&b)
        .args(["-p", "x", "--tools", tools.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("--tools"), "{}", stderr(&o));

    for shell in ["bash", "zsh", "fish"] {
        let o = zaya(home).args(["completions", shell]).output().unwrap();
        assert!(o.status.success());
        assert!(stdout(&o).contains("cache-prompt"), "{shell}");
    }
    for cmd in [
        "generate",
        "chat",
        "cache-prompt",
        "smoke",
        "synth",
        "info",
        "logits",
        "parity",
        "bench",
        "completions",
    ] {
        let o = zaya(home).args([cmd, "--help"]).output().unwrap();
        assert!(o.status.success(), "{cmd}");
        assert!(stdout(&o).contains("Usage: zaya"), "{cmd}");
    }
}

#[test]
fn info_prints_the_execution_plan() {
    let tmp = tempfile::tempdir().unwrap();
    let b = synth(tmp.path(), None);
    let o = zaya(tmp.path())
        .args(["info", "--plan", "--model"])
        .arg(&b)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.contains("execution plan (default options)"), "{out}");
    assert!(out.contains("CCA attention half-layers: fused"), "{out}");
    assert!(
        out.contains("MoE half-layers: router fused, experts fused, output fused"),
        "{out}"
    );
    assert!(out.contains("batched decoding: yes"), "{out}");
    let j = zaya(tmp.path())
        .args(["info", "--plan", "--json", "--model"])
        .arg(&b)
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&j.stdout).unwrap();
    assert_eq!(v["plan"]["norms"], "Fused");
    assert_eq!(v["plan"]["batching"], true);
    // without --plan nothing is built
    let plain = zaya(tmp.path()).args(["info", "--model"]).arg(&b).output().unwrap();
    assert!(!stdout(&plain).contains("execution plan"));
}
