//! The kernel trace: each custom primitive's CPU task with its name, start and end.
use std::os::raw::c_int;

use std::ffi::CStr;

use super::sys::*;

/// One run of a custom primitive's CPU task, recorded while [`trace_enable`] is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceEvent {
    /// The primitive's name (e.g. `ZayaAffineMatmul`).
    pub name: &'static str,
    /// Start and end on the clock [`now_ns`] reads (nanoseconds).
    pub start_ns: i64,
    pub end_ns: i64,
}

/// Turns the kernel trace on or off (profiling support; off by default). While on, every custom
/// primitive's CPU task records a [`TraceEvent`] when it runs; [`trace_take`] drains them.
pub fn trace_enable(on: bool) {
    // SAFETY: sets an atomic flag.
    unsafe { zaya_ext_trace_enable(on as c_int) }
}

/// Nanoseconds on the steady clock the kernel trace uses.
pub fn now_ns() -> i64 {
    // SAFETY: reads a clock.
    unsafe { zaya_ext_now_ns() }
}

/// Drains the recorded [`TraceEvent`]s, oldest first.
pub fn trace_take() -> Vec<TraceEvent> {
    const CAP: usize = 4096;
    let mut out = Vec::new();
    loop {
        let mut names = vec![std::ptr::null(); CAP];
        let (mut t0, mut t1) = (vec![0i64; CAP], vec![0i64; CAP]);
        // SAFETY: the three buffers hold CAP entries each.
        let n = unsafe { zaya_ext_trace_take(names.as_mut_ptr(), t0.as_mut_ptr(), t1.as_mut_ptr(), CAP) };
        for i in 0..n {
            // SAFETY: the names are the primitives' static C string literals.
            let name = unsafe { CStr::from_ptr(names[i]) }.to_str().unwrap_or("?");
            out.push(TraceEvent {
                name,
                start_ns: t0[i],
                end_ns: t1[i],
            });
        }
        if n < CAP {
            return out;
        }
    }
}
