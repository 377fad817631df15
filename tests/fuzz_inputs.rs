//! Seeded mutation fuzzing of every input file the tools read, in process and bounded: the tiny
//! synthetic bundle's shard, config.json, jang_config.json, the TurboQuant sidecar, tokenizer.json,
//! tokenizer_config.json, the chat template and a parity reference file, plus prompt-cache files.
//! Each case writes one mutated file beside pristine copies of the others and runs what a user's
//! command would: load the bundle, model, tokenizer and template (`Zaya::load`), render a chat
//! turn and generate two tokens; references go through `zaya parity`'s reader and comparison.
//!
//! Every case must end in success or a typed error — no panic (caught and reported with the seed
//! and case), no signal (the test process would die), within a time bound per case, and with the
//! process's resident memory bounded at the end. Deterministic: `ZAYA_FUZZ_SEED` (default 1) and
//! `ZAYA_FUZZ_CASES` (default 2000 per target) choose the campaign.
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::Value;
use zaya_mlx::model::ModelOptions;
use zaya_mlx::runtime::{GenParams, Zaya};
use zaya_mlx::tools::synth::{write_bundle, SynthOptions, SynthSpec};

const FILES: [&str; 11] = [
    "config.json",
    "generation_config.json",
    "jang_config.json",
    "jangtq_runtime.safetensors",
    "model-00001-of-00001.safetensors",
    "model.safetensors.index.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    ".zaya-synth.json",
];

/// Per-case time bound: generous for a loaded CI machine; a hang would exceed it by far.
const CASE_LIMIT: Duration = Duration::from_secs(20);

fn seed() -> u64 {
    std::env::var("ZAYA_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1)
}

fn cases() -> usize {
    std::env::var("ZAYA_FUZZ_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2000)
}

/// The pristine tiny bundle (written once per test binary run).
fn pristine() -> &'static Path {
    static DIR: std::sync::OnceLock<tempfile::TempDir> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let d = tempfile::tempdir().unwrap();
        write_bundle(&SynthSpec::preset("tiny").unwrap(), d.path(), &SynthOptions::default()).unwrap();
        d
    })
    .path()
}

/// A working copy of the bundle for one target (every file copied once; the target file is
/// rewritten per case).
fn workdir() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    for f in FILES {
        let src = pristine().join(f);
        if src.exists() {
            std::fs::copy(&src, d.path().join(f)).unwrap();
        }
    }
    d
}

// ------------------------------------------------------------------------------------------------
// mutators

fn interesting_int(rng: &mut ChaCha8Rng) -> Value {
    let choices: [i64; 14] = [
        0,
        1,
        -1,
        2,
        7,
        255,
        256,
        65_535,
        1 << 20,
        1_000_000,
        1 << 31,
        1 << 40,
        i64::MAX,
        i64::MIN,
    ];
    Value::from(choices[rng.gen_range(0..choices.len())])
}

fn random_value(rng: &mut ChaCha8Rng) -> Value {
    match rng.gen_range(0..9) {
        0..=2 => interesting_int(rng),
        3 => Value::from([0.0, -0.5, 0.5, 1.5, 1e308, -1e308, 1e-300][rng.gen_range(0..7)]),
        4 => Value::from(["", "mxtq", "zaya", "x".repeat(300).as_str(), "\u{0}", "<|im_end|>"][rng.gen_range(0..6)]),
        5 => Value::Null,
        6 => Value::Bool(rng.gen()),
        7 => Value::Array(vec![interesting_int(rng), interesting_int(rng)]),
        _ => Value::Object(serde_json::Map::new()),
    }
}

/// Paths (as key/index lists) of every value in a JSON tree, up to `limit`.
fn paths(v: &Value, prefix: &mut Vec<Value>, out: &mut Vec<Vec<Value>>, limit: usize) {
    if out.len() >= limit {
        return;
    }
    out.push(prefix.clone());
    match v {
        Value::Object(m) => {
            for (k, c) in m {
                prefix.push(Value::from(k.as_str()));
                paths(c, prefix, out, limit);
                prefix.pop();
            }
        }
        Value::Array(a) => {
            for (i, c) in a.iter().enumerate().take(64) {
                prefix.push(Value::from(i));
                paths(c, prefix, out, limit);
                prefix.pop();
            }
        }
        _ => {}
    }
}

fn get_mut<'a>(v: &'a mut Value, path: &[Value]) -> Option<&'a mut Value> {
    let mut cur = v;
    for p in path {
        cur = match p {
            Value::String(k) => cur.get_mut(k.as_str())?,
            Value::Number(i) => cur.get_mut(i.as_u64()? as usize)?,
            _ => return None,
        };
    }
    Some(cur)
}

/// A structural JSON mutation (replace, delete or add a value), or raw byte damage 1 time in 5.
fn mutate_json(text: &[u8], rng: &mut ChaCha8Rng) -> Vec<u8> {
    if rng.gen_range(0..5) == 0 {
        return mutate_bytes(text, rng, 0);
    }
    let Ok(mut v) = serde_json::from_slice::<Value>(text) else {
        return mutate_bytes(text, rng, 0);
    };
    let mut all = Vec::new();
    paths(&v, &mut Vec::new(), &mut all, 20_000);
    for _ in 0..rng.gen_range(1..=3) {
        let path = all[rng.gen_range(0..all.len())].clone();
        match rng.gen_range(0..4) {
            0 | 1 => {
                let nv = random_value(rng);
                if let Some(t) = get_mut(&mut v, &path) {
                    *t = nv;
                }
            }
            2 => {
                if let Some((last, parent)) = path.split_last() {
                    if let Some(p) = get_mut(&mut v, parent) {
                        match (p, last) {
                            (Value::Object(m), Value::String(k)) => {
                                m.remove(k.as_str());
                            }
                            (Value::Array(a), Value::Number(i)) => {
                                let i = i.as_u64().unwrap_or(0) as usize;
                                if i < a.len() {
                                    a.remove(i);
                                }
                            }
                            _ => {}
                        }
                    }
                }
            }
            _ => {
                let nv = random_value(rng);
                if let Some(Value::Object(m)) = get_mut(&mut v, &path) {
                    m.insert(format!("fuzz_{}", rng.gen::<u16>()), nv);
                }
            }
        }
    }
    serde_json::to_vec(&v).unwrap()
}

/// Byte damage: bit flips, random bytes, a truncation, a duplicated or deleted range, or a
/// rewritten 8-byte length; `header` > 0 aims half of the damage at the first `header` bytes.
fn mutate_bytes(data: &[u8], rng: &mut ChaCha8Rng, header: usize) -> Vec<u8> {
    let mut d = data.to_vec();
    if d.is_empty() {
        return vec![rng.gen()];
    }
    let pick = |rng: &mut ChaCha8Rng, len: usize| -> usize {
        if header > 0 && rng.gen_bool(0.5) {
            rng.gen_range(0..header.min(len))
        } else {
            rng.gen_range(0..len)
        }
    };
    match rng.gen_range(0..7) {
        0 => {
            for _ in 0..rng.gen_range(1..8) {
                let i = pick(rng, d.len());
                d[i] ^= 1 << rng.gen_range(0..8);
            }
        }
        1 => {
            for _ in 0..rng.gen_range(1..8) {
                let i = pick(rng, d.len());
                d[i] = rng.gen();
            }
        }
        2 => {
            let n = rng.gen_range(0..d.len());
            d.truncate(n);
        }
        3 => {
            let a = pick(rng, d.len());
            let b = (a + rng.gen_range(1..64)).min(d.len());
            let chunk = d[a..b].to_vec();
            let at = pick(rng, d.len());
            d.splice(at..at, chunk);
        }
        4 => {
            let a = pick(rng, d.len());
            let b = (a + rng.gen_range(1..64)).min(d.len());
            d.drain(a..b);
        }
        5 if d.len() >= 8 => {
            let v: u64 = [0, 1, 7, 8, 1 << 20, u32::MAX as u64, u64::MAX, rng.gen()][rng.gen_range(0..8)];
            d[..8].copy_from_slice(&v.to_le_bytes());
        }
        _ => {
            // a digit in a JSON header becomes another (sizes, offsets, shapes)
            let digits: Vec<usize> = d[..header.max(1).min(d.len())]
                .iter()
                .enumerate()
                .filter(|(_, c)| c.is_ascii_digit())
                .map(|(i, _)| i)
                .collect();
            if let Some(&i) = digits.get(rng.gen_range(0..digits.len().max(1))) {
                d[i] = b'0' + rng.gen_range(0..10);
            }
        }
    }
    d
}

/// Length of a safetensors file's header (8 + declared JSON length, capped at the file size).
fn st_header(data: &[u8]) -> usize {
    if data.len() < 8 {
        return data.len();
    }
    let n = u64::from_le_bytes(data[..8].try_into().unwrap());
    (8 + n.min(data.len() as u64) as usize).min(data.len())
}

const TEMPLATE_SNIPPETS: [&str; 14] = [
    "{% for i in range(100000) %}{% for j in range(100000) %}{{ i }}{% endfor %}{% endfor %}",
    "{{ messages[999].content }}",
    "{{ raise_exception('fuzz') }}",
    "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}",
    "{% if %}",
    "{{ ",
    "{% endfor %}",
    "{{ messages | tojson }}",
    "{{ 'x' * 100000000 }}",
    "{% set x = namespace(a=1) %}{{ x.b.c }}",
    "{{ strftime_now('%Y') }}",
    "{% for m in messages %}{{ m.content | truncate(-5) }}{% endfor %}",
    "{{ (messages | length) / 0 }}",
    "{%- generation -%}x{%- endgeneration -%}",
];

fn mutate_template(text: &[u8], rng: &mut ChaCha8Rng) -> Vec<u8> {
    let mut t = String::from_utf8_lossy(text).into_owned();
    match rng.gen_range(0..3) {
        0 | 1 => {
            let s = TEMPLATE_SNIPPETS[rng.gen_range(0..TEMPLATE_SNIPPETS.len())];
            let mut at = rng.gen_range(0..=t.len());
            while !t.is_char_boundary(at) {
                at -= 1;
            }
            t.insert_str(at, s);
            t.into_bytes()
        }
        _ => mutate_bytes(t.as_bytes(), rng, 0),
    }
}

// ------------------------------------------------------------------------------------------------
// running cases

/// What one case produced (for the summary); a panic is a failure.
#[derive(Default, Debug)]
struct Tally {
    ok: usize,
    errors: std::collections::BTreeMap<String, usize>,
    slowest: Duration,
}

fn error_kind(e: &zaya_mlx::ZayaError) -> String {
    let s = format!("{e:?}");
    s.split(['(', ' ', '{']).next().unwrap_or("?").to_string()
}

/// Load, render and generate two tokens, as `zaya generate` does.
fn exercise_bundle(dir: &Path) -> zaya_mlx::Result<()> {
    let zaya = Zaya::load(dir, ModelOptions::default())?;
    let mut s = zaya.session();
    let params = GenParams {
        max_tokens: Some(2),
        ..GenParams::default()
    };
    if zaya.tokenizer().is_some() && zaya.chat_template().is_some() {
        s.chat("Hello, fuzz!", &params)?.collect_text()?;
    } else if zaya.tokenizer().is_some() {
        s.generate("Hello, fuzz!", &params)?.collect_text()?;
    } else {
        let mut g = s.generate_from_tokens(&[1, 2, 3], &params)?;
        for t in g.by_ref() {
            t?;
        }
    }
    Ok(())
}

fn run_case(what: &str, case: usize, tally: &mut Tally, f: impl FnOnce() -> zaya_mlx::Result<()>) {
    let t = Instant::now();
    let r = catch_unwind(AssertUnwindSafe(f));
    let dt = t.elapsed();
    tally.slowest = tally.slowest.max(dt);
    match r {
        Ok(Ok(())) => tally.ok += 1,
        Ok(Err(e)) => {
            // every error carries an exit code of the contract and a message
            let code = e.exit_code();
            assert!((1..=3).contains(&code), "{what} case {case}: exit code {code} for {e}");
            assert!(!e.to_string().is_empty(), "{what} case {case}: empty message");
            assert!(
                !e.to_string().contains("/src/"),
                "{what} case {case}: a source path in `{e}`"
            );
            *tally.errors.entry(error_kind(&e)).or_default() += 1;
        }
        Err(p) => {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            panic!("{what}: case {case} (seed {}) panicked: {msg}", seed());
        }
    }
    assert!(
        dt < CASE_LIMIT,
        "{what}: case {case} (seed {}) took {dt:?} (bound {CASE_LIMIT:?})",
        seed()
    );
}

fn rss_bytes() -> u64 {
    zaya_mlx::runtime::memory::process_rss().map_or(0, |r| r.0)
}

/// Mutates `file` of the bundle `cases()` times with `mutate` and runs the bundle each time.
fn fuzz_file(file: &str, mutate: fn(&[u8], &mut ChaCha8Rng) -> Vec<u8>) {
    let _one = serial();
    let rss0 = rss_bytes();
    let work = workdir();
    let path: PathBuf = work.path().join(file);
    let original = std::fs::read(pristine().join(file)).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(seed() ^ fxhash(file));
    let mut tally = Tally::default();
    let n = cases();
    for case in 0..n {
        let data = mutate(&original, &mut rng);
        std::fs::write(&path, &data).unwrap();
        run_case(file, case, &mut tally, || exercise_bundle(work.path()));
    }
    std::fs::write(&path, &original).unwrap();
    eprintln!(
        "{file}: {n} cases, {} ok, errors {:?}, slowest {:?}",
        tally.ok, tally.errors, tally.slowest
    );
    assert!(
        tally.errors.values().sum::<usize>() > 0,
        "{file}: no mutation was rejected: the mutator is broken"
    );
    let rss = rss_bytes();
    eprintln!(
        "{file}: resident memory {} MB before, {} MB after",
        rss0 >> 20,
        rss >> 20
    );
    assert!(
        rss < rss0 + (1 << 30),
        "{file}: resident memory grew from {rss0} to {rss} bytes over the campaign"
    );
}

/// One campaign at a time (their memory figures would mix, and they share the 2 cores anyway).
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

fn fxhash(s: &str) -> u64 {
    s.bytes()
        .fold(0xcbf29ce484222325u64, |h, b| (h ^ b as u64).wrapping_mul(0x100000001b3))
}

fn mutate_shard(d: &[u8], rng: &mut ChaCha8Rng) -> Vec<u8> {
    let h = st_header(d);
    if rng.gen_range(0..3) == 0 {
        // a structural header edit: parse the header JSON and mutate it
        let mut out = d.to_vec();
        if let Ok(text) = std::str::from_utf8(&d[8..h]) {
            let m = mutate_json(text.trim_end().as_bytes(), rng);
            let mut hdr = m;
            while !hdr.len().is_multiple_of(8) {
                hdr.push(b' ');
            }
            out = (hdr.len() as u64).to_le_bytes().to_vec();
            out.extend_from_slice(&hdr);
            out.extend_from_slice(&d[h..]);
        }
        return out;
    }
    mutate_bytes(d, rng, h)
}

#[test]
fn fuzz_shard() {
    fuzz_file("model-00001-of-00001.safetensors", mutate_shard);
}

#[test]
fn fuzz_sidecar() {
    fuzz_file("jangtq_runtime.safetensors", mutate_shard);
}

#[test]
fn fuzz_config() {
    fuzz_file("config.json", mutate_json);
}

#[test]
fn fuzz_jang_config() {
    fuzz_file("jang_config.json", mutate_json);
}

#[test]
fn fuzz_index() {
    fuzz_file("model.safetensors.index.json", mutate_json);
}

#[test]
fn fuzz_tokenizer() {
    fuzz_file("tokenizer.json", mutate_json);
}

#[test]
fn fuzz_tokenizer_config() {
    fuzz_file("tokenizer_config.json", mutate_json);
}

#[test]
fn fuzz_chat_template() {
    fuzz_file("chat_template.jinja", mutate_template);
}

/// Parity references: `zaya parity`'s reader and comparison on mutated reference files.
#[test]
fn fuzz_parity_reference() {
    let _one = serial();
    let zaya = Zaya::load(pristine(), ModelOptions::default()).unwrap();
    let model = zaya.model();
    let ids = [5u32, 9, 11, 3];
    let outs = zaya_mlx::tools::parity::run_outputs(model, &ids, true, None).unwrap();
    let work = tempfile::tempdir().unwrap();
    let good = work.path().join("good.safetensors");
    let arrays: Vec<(&String, &mlx_rs::Array)> = outs.iter().collect();
    mlx_rs::Array::save_safetensors(arrays, None, &good).unwrap();
    let original = std::fs::read(&good).unwrap();
    let path = work.path().join("ref.safetensors");
    let mut rng = ChaCha8Rng::seed_from_u64(seed() ^ fxhash("reference"));
    let mut tally = Tally::default();
    for case in 0..cases() {
        std::fs::write(&path, mutate_shard(&original, &mut rng)).unwrap();
        run_case("reference", case, &mut tally, || {
            let r = zaya_mlx::tools::parity::read_reference(&path)?;
            let rep = zaya_mlx::tools::parity::compare(model, &r, None, None, Default::default())?;
            let _ = rep.table();
            Ok(())
        });
    }
    eprintln!(
        "reference: {} ok, errors {:?}, slowest {:?}",
        tally.ok, tally.errors, tally.slowest
    );
    assert!(tally.errors.values().sum::<usize>() > 0);
}

/// Prompt-cache files: the loader on mutated files.
#[test]
fn fuzz_prompt_cache() {
    let _one = serial();
    let zaya = Zaya::load(pristine(), ModelOptions::default()).unwrap();
    let work = tempfile::tempdir().unwrap();
    let good = work.path().join("good.safetensors");
    let mut s = zaya.session();
    s.chat(
        "Hello there",
        &GenParams {
            max_tokens: Some(3),
            ..GenParams::default()
        },
    )
    .unwrap()
    .collect_text()
    .unwrap();
    s.save_prompt_cache(&good).unwrap();
    let original = std::fs::read(&good).unwrap();
    let path = work.path().join("c.safetensors");
    let mut rng = ChaCha8Rng::seed_from_u64(seed() ^ fxhash("prompt-cache"));
    let mut tally = Tally::default();
    for case in 0..cases() {
        std::fs::write(&path, mutate_shard(&original, &mut rng)).unwrap();
        run_case("prompt cache", case, &mut tally, || {
            let mut x = zaya.session();
            x.load_prompt_cache(&path)?;
            x.chat(
                "More",
                &GenParams {
                    max_tokens: Some(2),
                    ..GenParams::default()
                },
            )?
            .collect_text()?;
            Ok(())
        });
    }
    eprintln!(
        "prompt cache: {} ok, errors {:?}, slowest {:?}",
        tally.ok, tally.errors, tally.slowest
    );
    assert!(tally.errors.values().sum::<usize>() > 0);
}
