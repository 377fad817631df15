//! Counting the nodes of a lazy graph (by primitive name).

use std::ffi::CStr;

use mlx_rs::Array;
use mlx_sys::mlx_array;

use super::handle::*;
use super::sys::*;
use crate::error::Result;

/// Size of a lazy graph: unevaluated primitive nodes reachable from some outputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct GraphStats {
    /// Primitive nodes an evaluation of the outputs will run (multi-output nodes counted once).
    pub nodes: i64,
    /// How many of them are dtype casts (`AsType`).
    pub casts: i64,
}

/// Counts the nodes that evaluating `outputs` would run (call before `eval`).
pub fn graph_nodes(outputs: &[&Array]) -> Result<GraphStats> {
    let handles: Vec<mlx_array> = outputs.iter().map(|a| a.as_ptr()).collect();
    let mut st = GraphStats::default();
    // SAFETY: the handles stay alive (borrowed) for the duration of the call.
    let rc = unsafe { zaya_graph_nodes(handles.as_ptr(), handles.len(), &mut st.nodes, &mut st.casts) };
    if rc != 0 {
        return Err(last_error());
    }
    Ok(st)
}

/// The nodes [`graph_nodes`] counts, by primitive name, most frequent first.
pub fn graph_histogram(outputs: &[&Array]) -> Result<Vec<(String, i64)>> {
    let handles: Vec<mlx_array> = outputs.iter().map(|a| a.as_ptr()).collect();
    // SAFETY: the handles stay alive for the call; the returned thread-local string is copied at once.
    let p = unsafe { zaya_graph_histogram(handles.as_ptr(), handles.len()) };
    if p.is_null() {
        return Err(last_error());
    }
    let text = unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned();
    Ok(text
        .lines()
        .filter_map(|l| {
            let (name, n) = l.rsplit_once(' ')?;
            Some((name.to_string(), n.parse().ok()?))
        })
        .collect())
}
