//! Model lookup: a bundle directory, or a Hugging Face repo id found in the local hub cache
//! (`$HF_HUB_CACHE`, `$HF_HOME/hub` or `~/.cache/huggingface/hub`) and downloaded with hf-hub when
//! missing (unless `HF_HUB_OFFLINE=1`), with a progress bar and a stall timeout
//! (`ZAYA_HF_TIMEOUT`, default 60 s without data). [`crate::runtime::Zaya::load`] and every
//! command take either.
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::error::{Result, ZayaError};

/// A bundle directory for `spec`: an existing directory (which must hold config.json), else a
/// Hugging Face repo id (local cache, then download). Bad values are `InvalidArgument`s.
pub fn resolve(spec: &str) -> Result<PathBuf> {
    let path = Path::new(spec);
    if path.exists() {
        if !path.is_dir() {
            return Err(ZayaError::InvalidArgument(format!(
                "--model {spec}: is a file; expected a bundle directory"
            )));
        }
        if !path.join("config.json").is_file() {
            return Err(ZayaError::InvalidArgument(format!(
                "--model {spec}: no config.json in this directory, so it is not a model bundle"
            )));
        }
        return Ok(path.to_path_buf());
    }
    if looks_like_repo_id(spec) {
        return resolve_repo(spec);
    }
    Err(ZayaError::InvalidArgument(format!(
        "--model {spec}: no such directory (and not a Hugging Face repo id)"
    )))
}

/// `owner/name` with letters, digits, `-`, `_`, `.` (not starting with `.`).
pub fn looks_like_repo_id(s: &str) -> bool {
    let parts: Vec<&str> = s.split('/').collect();
    parts.len() == 2
        && parts.iter().all(|p| {
            !p.is_empty() && !p.starts_with('.') && p.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        })
}

/// The Hugging Face hub cache: `$HF_HUB_CACHE`, `$HF_HOME/hub`, or `~/.cache/huggingface/hub`.
pub fn hf_cache_dir() -> PathBuf {
    let var = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    if let Some(p) = var("HF_HUB_CACHE") {
        return p;
    }
    if let Some(p) = var("HF_HOME") {
        return p.join("hub");
    }
    home_dir().join(".cache").join("huggingface").join("hub")
}

pub fn home_dir() -> PathBuf {
    std::env::var_os("HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/"))
}

fn env_true(k: &str) -> bool {
    std::env::var(k).is_ok_and(|v| matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on"))
}

/// The snapshot directory of `repo` (revision `main`) in the hub cache, when it holds a config.json.
pub fn cached_snapshot(cache: &Path, repo: &str) -> Option<PathBuf> {
    let folder = cache.join(format!("models--{}", repo.replace('/', "--")));
    let hash = std::fs::read_to_string(folder.join("refs").join("main")).ok()?;
    let dir = folder.join("snapshots").join(hash.trim());
    dir.join("config.json").is_file().then_some(dir)
}

/// Files of a repo worth downloading for inference.
fn wanted(file: &str) -> bool {
    let name = file.rsplit('/').next().unwrap_or(file);
    [".json", ".safetensors", ".jinja", ".txt", ".model"]
        .iter()
        .any(|e| name.ends_with(e))
        && !name.starts_with('.')
}

pub fn resolve_repo(repo: &str) -> Result<PathBuf> {
    let cache = hf_cache_dir();
    if let Some(dir) = cached_snapshot(&cache, repo) {
        return Ok(dir);
    }
    let not_here = format!(
        "--model {repo}: not a local directory, and not in the Hugging Face cache ({})",
        cache.display()
    );
    if env_true("HF_HUB_OFFLINE") {
        return Err(ZayaError::InvalidArgument(format!(
            "{not_here}; HF_HUB_OFFLINE is set, so it was not downloaded. Download it where you are online \
             (e.g. `huggingface-cli download {repo}`) or pass the bundle directory"
        )));
    }
    let timeout = hf_timeout()?;
    let (tx, rx) = std::sync::mpsc::channel();
    let activity = Arc::new(AtomicU64::new(0));
    let started = std::time::Instant::now();
    let (repo_s, cache_s, act) = (repo.to_string(), cache.clone(), activity.clone());
    // the hub client has no connect or read timeouts: it runs on a thread that reports progress,
    // and this thread gives up when nothing arrives for `timeout` (the process then exits)
    std::thread::spawn(move || {
        let _ = tx.send(download_repo(&repo_s, &cache_s, act, started));
    });
    let mut last_seen = 0u64;
    let mut last_change = std::time::Instant::now();
    loop {
        match rx.recv_timeout(std::time::Duration::from_millis(200)) {
            Ok(r) => {
                return r.map_err(|e| match e {
                    DownloadError::NoConfig => {
                        ZayaError::InvalidArgument(format!("--model {repo}: the repository has no config.json"))
                    }
                    DownloadError::Failed(msg)
                        if msg.contains("status code 404") || msg.contains("status code 401") =>
                    {
                        ZayaError::InvalidArgument(format!(
                            "--model {repo}: the hub has no such repository or file, or it is private ({msg})"
                        ))
                    }
                    DownloadError::Failed(msg) => ZayaError::Runtime(format!(
                        "{not_here}, and downloading it failed: {msg}. Check the repo id and the network (offline? set \
                         HF_HUB_OFFLINE=1), or download it yourself and pass the bundle directory"
                    )),
                })
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                let now = activity.load(Ordering::Relaxed);
                if now != last_seen {
                    last_seen = now;
                    last_change = std::time::Instant::now();
                } else if last_change.elapsed() >= timeout {
                    return Err(ZayaError::Runtime(format!(
                        "{not_here}, and the download of {repo} stalled: no data from the server for {} s \
                         (ZAYA_HF_TIMEOUT sets the limit). Check the network or HF_ENDPOINT, or set HF_HUB_OFFLINE=1",
                        timeout.as_secs()
                    )));
                }
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                return Err(ZayaError::Runtime(format!(
                    "--model {repo}: the download thread ended unexpectedly"
                )))
            }
        }
    }
}

/// Seconds without any data from the hub before a download is abandoned: `ZAYA_HF_TIMEOUT`
/// (default 60).
fn hf_timeout() -> Result<std::time::Duration> {
    match std::env::var("ZAYA_HF_TIMEOUT") {
        Ok(v) if !v.trim().is_empty() => match v.trim().parse::<u64>() {
            Ok(s) if s > 0 && s <= 86_400 => Ok(std::time::Duration::from_secs(s)),
            _ => Err(ZayaError::InvalidArgument(format!(
                "ZAYA_HF_TIMEOUT={v}: expected a number of seconds in 1..=86400"
            ))),
        },
        _ => Ok(std::time::Duration::from_secs(60)),
    }
}

enum DownloadError {
    NoConfig,
    Failed(String),
}

/// Progress of the hub client: a bar on stderr, and `activity` bumped whenever bytes arrive.
struct Watch {
    activity: Arc<AtomicU64>,
    started: std::time::Instant,
    bar: Option<indicatif::ProgressBar>,
}

impl Watch {
    fn touch(&self) {
        self.activity
            .store(self.started.elapsed().as_millis() as u64 + 1, Ordering::Relaxed);
    }
}

impl hf_hub::api::Progress for Watch {
    fn init(&mut self, size: usize, filename: &str) {
        self.touch();
        let bar = indicatif::ProgressBar::new(size as u64);
        bar.set_style(
            indicatif::ProgressStyle::with_template("{msg:30} {bytes}/{total_bytes} {bar:30} {bytes_per_sec} {eta}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar.set_message(filename.to_string());
        self.bar = Some(bar);
    }
    fn update(&mut self, size: usize) {
        self.touch();
        if let Some(b) = &self.bar {
            b.inc(size as u64);
        }
    }
    fn finish(&mut self) {
        self.touch();
        if let Some(b) = self.bar.take() {
            b.finish();
        }
    }
}

/// The download itself (on its own thread): the repo's file list, then every wanted file.
fn download_repo(
    repo: &str,
    cache: &Path,
    activity: Arc<AtomicU64>,
    started: std::time::Instant,
) -> std::result::Result<PathBuf, DownloadError> {
    let fail = |e: &dyn std::fmt::Display| DownloadError::Failed(e.to_string());
    let mut builder =
        hf_hub::api::sync::ApiBuilder::from_cache(hf_hub::Cache::new(cache.to_path_buf())).with_progress(false);
    if let Ok(endpoint) = std::env::var("HF_ENDPOINT") {
        builder = builder.with_endpoint(endpoint);
    }
    let api = builder.build().map_err(|e| fail(&e))?;
    let api_repo = api.model(repo.to_string());
    let info = api_repo.info().map_err(|e| fail(&e))?;
    activity.store(started.elapsed().as_millis() as u64 + 1, Ordering::Relaxed);
    let files: Vec<String> = info
        .siblings
        .into_iter()
        .map(|s| s.rfilename)
        .filter(|f| wanted(f))
        .collect();
    if !files.iter().any(|f| f == "config.json") {
        return Err(DownloadError::NoConfig);
    }
    eprintln!("downloading {} files of {repo} into {}", files.len(), cache.display());
    let mut dir = None;
    for f in &files {
        let watch = Watch {
            activity: activity.clone(),
            started,
            bar: None,
        };
        let p = api_repo
            .download_with_progress(f, watch)
            .map_err(|e| fail(&format!("{f}: {e}")))?;
        if f == "config.json" {
            dir = p.parent().map(Path::to_path_buf);
        }
    }
    dir.ok_or(DownloadError::NoConfig)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repo_ids() {
        assert!(looks_like_repo_id("OsaurusAI/ZAYA1-8B-JANGTQ4"));
        assert!(looks_like_repo_id("a_b/c.d"));
        for bad in ["./x", "/abs/path", "a/b/c", "x", "a/", "/b", "a b/c", "../x"] {
            assert!(!looks_like_repo_id(bad), "{bad}");
        }
    }

    #[test]
    fn download_filter() {
        for f in [
            "config.json",
            "model-00001-of-00002.safetensors",
            "chat_template.jinja",
            "merges.txt",
            "tokenizer.model",
        ] {
            assert!(wanted(f), "{f}");
        }
        for f in ["README.md", "osaurus-x-banner.png", ".gitattributes"] {
            assert!(!wanted(f), "{f}");
        }
    }
}
