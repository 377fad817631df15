//! The one owned-handle type for outputs and absent optional arguments ([`OutHandle`]), the call
//! helpers that turn a C return code into a [`Result`], and small argument conversions.
use std::ffi::CStr;
use std::os::raw::c_int;

use mlx_rs::{Array, Stream};
use mlx_sys::{mlx_array, mlx_array_new, mlx_stream};

use super::sys::*;
use crate::error::{Result, ZayaError};

pub(crate) fn last_error() -> ZayaError {
    // SAFETY: thread-local NUL-terminated string owned by the extension, valid until the next call.
    let msg = unsafe { CStr::from_ptr(zaya_ext_last_error()) }
        .to_string_lossy()
        .into_owned();
    ZayaError::Ext(msg)
}

/// The one owned MLX handle of the FFI: an output the extension sets (freed unless turned into an
/// [`Array`]), or an empty handle standing for an absent optional argument.
pub(crate) struct OutHandle(pub(crate) mlx_array);

impl OutHandle {
    pub(crate) fn new() -> Self {
        // SAFETY: creates an empty handle.
        OutHandle(unsafe { mlx_array_new() })
    }
    /// `a`'s handle, or this (empty) handle standing for an absent optional argument.
    pub(crate) fn or(&self, a: Option<&Array>) -> mlx_array {
        a.map_or(self.0, |a| a.as_ptr())
    }
    pub(crate) fn into_array(self) -> Array {
        let h = self.0;
        std::mem::forget(self);
        // SAFETY: the extension set the handle to a valid array; Array takes ownership.
        unsafe { Array::from_ptr(h) }
    }
}

impl Drop for OutHandle {
    fn drop(&mut self) {
        // SAFETY: freeing an empty or set handle is valid exactly once.
        unsafe { mlx_sys::mlx_array_free(self.0) };
    }
}

pub(crate) fn call1(f: impl FnOnce(*mut mlx_array, mlx_stream) -> c_int) -> Result<Array> {
    let stream = Stream::thread_local_or_default();
    let mut a = OutHandle::new();
    let rc = f(&mut a.0, stream.as_ptr());
    if rc != 0 {
        return Err(last_error());
    }
    Ok(a.into_array())
}

pub(crate) fn call2(f: impl FnOnce(*mut mlx_array, *mut mlx_array, mlx_stream) -> c_int) -> Result<(Array, Array)> {
    let stream = Stream::thread_local_or_default();
    let mut a = OutHandle::new();
    let mut b = OutHandle::new();
    let rc = f(&mut a.0, &mut b.0, stream.as_ptr());
    if rc != 0 {
        return Err(last_error());
    }
    Ok((a.into_array(), b.into_array()))
}

pub(crate) fn c_int_of(v: u32) -> c_int {
    c_int::try_from(v).unwrap_or(c_int::MAX)
}

/// Positions as C ints for the kernels (an error naming `what` past `i32::MAX`).
pub(crate) fn positions(v: &[usize], what: &str) -> Result<Vec<i32>> {
    v.iter()
        .map(|&x| i32::try_from(x).map_err(|_| ZayaError::Ext(format!("{what}: position {x} out of range"))))
        .collect()
}
