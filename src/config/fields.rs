//! Typed access to the fields of a JSON object, with errors naming the file and the field: what
//! every config parser here (and `zaya synth --config`) reads values through.
use serde_json::{Map, Value};

use crate::error::{Result, ZayaError};

/// Typed access to the fields of a JSON object (`null` = absent), with errors that name the file
/// and the field. Shared by the config parsers and `zaya synth --config`.
pub(crate) struct Fields<'a> {
    pub(crate) obj: &'a Map<String, Value>,
    pub(crate) file: &'a str,
}

impl Fields<'_> {
    pub(crate) fn get(&self, k: &str) -> Option<&Value> {
        self.obj.get(k).filter(|v| !v.is_null())
    }
    pub(crate) fn u64(&self, k: &str) -> Result<Option<u64>> {
        match self.get(k) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .map(Some)
                .ok_or_else(|| ZayaError::config(self.file, k, format!("expected a non-negative integer, found {v}"))),
        }
    }
    pub(crate) fn usize(&self, k: &str) -> Result<Option<usize>> {
        Ok(self.u64(k)?.map(|n| n as usize))
    }
    pub(crate) fn req_usize(&self, k: &str) -> Result<usize> {
        self.usize(k)?.ok_or_else(|| ZayaError::config(self.file, k, "missing"))
    }
    pub(crate) fn u32(&self, k: &str) -> Result<Option<u32>> {
        match self.usize(k)? {
            None => Ok(None),
            Some(n) => u32::try_from(n)
                .map(Some)
                .map_err(|_| ZayaError::config(self.file, k, format!("{n} is too large"))),
        }
    }
    pub(crate) fn f64(&self, k: &str) -> Result<Option<f64>> {
        match self.get(k) {
            None => Ok(None),
            Some(v) => v
                .as_f64()
                .map(Some)
                .ok_or_else(|| ZayaError::config(self.file, k, format!("expected a number, found {v}"))),
        }
    }
    pub(crate) fn bool(&self, k: &str) -> Result<Option<bool>> {
        match self.get(k) {
            None => Ok(None),
            Some(v) => v
                .as_bool()
                .map(Some)
                .ok_or_else(|| ZayaError::config(self.file, k, format!("expected true/false, found {v}"))),
        }
    }
    pub(crate) fn str(&self, k: &str) -> Result<Option<String>> {
        match self.get(k) {
            None => Ok(None),
            Some(v) => v
                .as_str()
                .map(|s| Some(s.to_string()))
                .ok_or_else(|| ZayaError::config(self.file, k, format!("expected a string, found {v}"))),
        }
    }
    /// An id or a list of ids.
    pub(crate) fn ids(&self, k: &str) -> Result<Vec<u32>> {
        let bad =
            |v: &Value| ZayaError::config(self.file, k, format!("expected a token id or a list of ids, found {v}"));
        match self.get(k) {
            None => Ok(vec![]),
            Some(Value::Array(a)) => a
                .iter()
                .map(|x| x.as_u64().and_then(|n| u32::try_from(n).ok()).ok_or_else(|| bad(x)))
                .collect(),
            Some(v) => v
                .as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .map(|n| vec![n])
                .ok_or_else(|| bad(v)),
        }
    }
}
