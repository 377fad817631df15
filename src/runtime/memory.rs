//! Memory and load figures of this process and machine: RSS (current, peak, by kind) from
//! /proc/self/status, MLX's allocator counters, MemAvailable and the load average. Generation
//! statistics, the server's log and the benchmarks read them.

/// Process memory from /proc/self/status: (current RSS, peak RSS) in bytes. None where unavailable.
pub fn process_rss() -> Option<(u64, u64)> {
    status_bytes(["VmRSS:", "VmHWM:"])
}

/// Resident memory by kind from /proc/self/status: (anonymous, file-backed) bytes. File-backed
/// pages are the touched parts of the memory-mapped bundle; anonymous ones are allocations.
pub fn rss_by_kind() -> Option<(u64, u64)> {
    status_bytes(["RssAnon:", "RssFile:"])
}

/// Two kB fields of /proc/self/status, in bytes.
fn status_bytes(keys: [&str; 2]) -> Option<(u64, u64)> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let field = |k: &str| -> Option<u64> {
        let line = s.lines().find(|l| l.starts_with(k))?;
        let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kb * 1024)
    };
    Some((field(keys[0])?, field(keys[1])?))
}

/// Resets the process's peak RSS (VmHWM) to the current RSS (Linux `clear_refs` 5). Returns false
/// where that is unavailable (the peak then covers the whole process lifetime).
pub fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// MLX allocator figures in bytes: (active, peak).
pub fn mlx_memory() -> (u64, u64) {
    let mut active = 0usize;
    let mut peak = 0usize;
    // SAFETY: plain queries of MLX's allocator.
    unsafe {
        mlx_sys::mlx_get_active_memory(&mut active);
        mlx_sys::mlx_get_peak_memory(&mut peak);
    }
    (active as u64, peak as u64)
}

/// Resets MLX's peak-memory counter.
pub fn reset_mlx_peak() {
    // SAFETY: plain call into MLX's allocator.
    unsafe {
        mlx_sys::mlx_reset_peak_memory();
    }
}

/// The 1-, 5- and 15-minute load averages from /proc/loadavg.
pub fn load_average() -> Option<[f64; 3]> {
    let s = std::fs::read_to_string("/proc/loadavg").ok()?;
    let mut it = s.split_whitespace().map(|x| x.parse::<f64>().ok());
    Some([it.next()??, it.next()??, it.next()??])
}

/// `MemAvailable` of /proc/meminfo in bytes (Linux; `None` elsewhere).
pub fn mem_available_bytes() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kb.checked_mul(1024)
}

/// Keeps freed heap memory in the process for reuse (glibc: fixed `M_MMAP_THRESHOLD` of 256 MiB
/// and `M_TRIM_THRESHOLD` of 1 GiB), once per process; a no-op elsewhere and when the user set
/// glibc's malloc tunables themselves (`GLIBC_TUNABLES=…glibc.malloc…` or `MALLOC_*_` variables).
///
/// Why: MLX's CPU allocator and our kernels' scratch buffers take each step's intermediates from
/// `malloc`. With glibc's defaults, buffers of a few MiB (a 512-token prefill chunk's activations)
/// are mmapped or trimmed back to the OS on free, so every forward pass faults fresh zeroed pages
/// in: a third of a prefill's time went to the kernel's page clearing. With the thresholds raised,
/// the freed blocks are reused; the resident set then stays at the working set's peak instead of
/// shrinking between requests. [`ZayaModel`](crate::model::ZayaModel) construction calls it.
pub fn keep_freed_memory() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        {
            let user_set = std::env::var("GLIBC_TUNABLES").is_ok_and(|v| v.contains("glibc.malloc"))
                || std::env::vars_os().any(|(k, _)| {
                    let k = k.to_string_lossy();
                    k.starts_with("MALLOC_") && k.ends_with('_')
                });
            if !user_set {
                // SAFETY: mallopt only sets allocator parameters; it is safe to call at any time.
                unsafe {
                    libc::mallopt(libc::M_MMAP_THRESHOLD, 256 << 20);
                    libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
                }
            }
        }
    });
}
