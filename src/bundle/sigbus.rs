//! A clear message instead of a bare `Bus error` when a mapped shard changes under us. Every shard
//! mapping is registered here (address range and path); [`install`] sets a SIGBUS handler that
//! looks the faulting address up, writes "FILE changed while mapped" to stderr and exits with code 3
//! (a runtime failure). Bundles must not be modified while a process uses them: truncating or
//! rewriting a mapped file is undefined behaviour for every mmap-based loader; this only makes the
//! failure legible. The handler uses only async-signal-safe calls (`write`, `_exit`) and atomics.
use std::ffi::CString;
use std::sync::atomic::{AtomicPtr, AtomicUsize, Ordering};

const SLOTS: usize = 1024;

struct Slot {
    start: AtomicUsize,
    len: AtomicUsize,
    /// A leaked, NUL-terminated path (never freed: a handler may be reading it).
    path: AtomicPtr<u8>,
}

#[allow(clippy::declare_interior_mutable_const)]
const EMPTY: Slot = Slot {
    start: AtomicUsize::new(0),
    len: AtomicUsize::new(0),
    path: AtomicPtr::new(std::ptr::null_mut()),
};
static TABLE: [Slot; SLOTS] = [EMPTY; SLOTS];

/// Registers a mapping; returns its slot (for [`unregister`]) or `None` when the table is full.
pub(crate) fn register(start: usize, len: usize, path: &std::path::Path) -> Option<usize> {
    let c = CString::new(path.as_os_str().as_encoded_bytes()).ok()?;
    let ptr = c.into_raw() as *mut u8;
    for (i, s) in TABLE.iter().enumerate() {
        if s.len
            .compare_exchange(0, usize::MAX, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
        {
            s.start.store(start, Ordering::Release);
            s.path.store(ptr, Ordering::Release);
            s.len.store(len, Ordering::Release);
            return Some(i);
        }
    }
    None
}

/// Forgets a mapping (the path string stays allocated).
pub(crate) fn unregister(slot: usize) {
    if let Some(s) = TABLE.get(slot) {
        s.len.store(0, Ordering::Release);
    }
}

fn write_stderr(bytes: &[u8]) {
    // SAFETY: write(2) on fd 2 with a valid buffer; async-signal-safe.
    unsafe {
        libc::write(2, bytes.as_ptr().cast(), bytes.len());
    }
}

extern "C" fn on_sigbus(_sig: libc::c_int, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo for SA_SIGINFO handlers.
    let addr = unsafe { (*info).si_addr() } as usize;
    write_stderr(b"\nerror: ");
    let mut named = false;
    for s in TABLE.iter() {
        let len = s.len.load(Ordering::Acquire);
        if len == 0 || len == usize::MAX {
            continue;
        }
        let start = s.start.load(Ordering::Acquire);
        if addr >= start && addr < start + len {
            let p = s.path.load(Ordering::Acquire);
            if !p.is_null() {
                // SAFETY: a leaked CString, never freed.
                let bytes = unsafe { std::ffi::CStr::from_ptr(p as *const libc::c_char) }.to_bytes();
                write_stderr(bytes);
                write_stderr(b" changed while mapped (truncated or rewritten while zaya was reading it)");
                named = true;
            }
            break;
        }
    }
    if !named {
        write_stderr(b"a memory-mapped file changed while mapped (bus error)");
    }
    write_stderr(b"; bundles must not be modified while in use\n");
    // SAFETY: _exit is async-signal-safe.
    unsafe { libc::_exit(3) };
}

/// Installs the SIGBUS handler (idempotent). The `zaya` binary calls it at start; library users
/// may call it too.
pub fn install() {
    static DONE: std::sync::Once = std::sync::Once::new();
    DONE.call_once(|| {
        // SAFETY: a plain sigaction with a handler that only uses async-signal-safe calls.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_sigbus as *const () as usize;
            sa.sa_flags = libc::SA_SIGINFO;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(libc::SIGBUS, &sa, std::ptr::null_mut());
        }
    });
}
