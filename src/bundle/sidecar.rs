//! The TurboQuant runtime sidecar: opens it and checks it holds, in the right dtype and shape, the
//! codebook and sign vector every TurboQuant module needs, with finite codebooks and ±1 signs.
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;

use super::shards::{open_shard, DType, ShardMap, TensorMeta, SIDECAR_FILE};
use super::validate::{quant_err, shape_str};
use crate::error::{Result, ZayaError};

/// Codebooks must be finite and sign vectors ±1 (both are tiny: the check reads them whole).
fn check_sidecar_values(name: &str, t: &TensorMeta) -> Result<()> {
    let vals = t
        .bytes()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]));
    let bad = |msg: String| quant_err(name, SIDECAR_FILE, msg);
    if name.starts_with("codebook.") {
        if let Some((i, v)) = vals.enumerate().find(|(_, v)| !v.is_finite()) {
            return Err(bad(format!("codebook entry {i} is {v}; a codebook must be finite")));
        }
    } else if name.starts_with("signs.") {
        if let Some((i, v)) = vals.enumerate().find(|(_, v)| *v != 1.0 && *v != -1.0) {
            return Err(bad(format!("sign {i} is {v}; a sign vector holds only +1 and -1")));
        }
    }
    Ok(())
}

/// Opens the sidecar and checks it has what every TurboQuant module needs.
pub(super) fn load_sidecar(
    dir: &Path,
    modules: &[(String, u32, usize, u64)],
) -> Result<(Arc<ShardMap>, BTreeMap<String, TensorMeta>)> {
    let path = dir.join(SIDECAR_FILE);
    if let Some(why) = super::shards::not_a_file(&path) {
        return Err(ZayaError::MissingSidecar(format!(
            "{} {why}, but {} TurboQuant module(s) need it (e.g. `{}`)",
            path.display(),
            modules.len(),
            modules[0].0
        )));
    }
    let parsed = open_shard(&path, SIDECAR_FILE)?;
    let all: BTreeMap<String, TensorMeta> = parsed.tensors.into_iter().map(|t| (t.name.clone(), t)).collect();
    let mut needed: BTreeMap<String, (Vec<usize>, &str)> = BTreeMap::new();
    for (base, bits, inp, seed) in modules {
        needed
            .entry(format!("codebook.{inp}.{bits}"))
            .or_insert((vec![1usize << bits], base));
        needed
            .entry(format!("signs.{inp}.{seed}"))
            .or_insert((vec![*inp], base));
    }
    let mut keep = BTreeMap::new();
    for (name, (shape, user)) in &needed {
        let t = all.get(name).ok_or_else(|| {
            ZayaError::MissingSidecar(format!("`{name}` is not in {SIDECAR_FILE} (needed by `{user}`)"))
        })?;
        if t.dtype != DType::F32 {
            return Err(ZayaError::Dtype {
                name: name.clone(),
                file: SIDECAR_FILE.into(),
                expected: "F32".into(),
                found: t.dtype.to_string(),
            });
        }
        if &t.shape != shape {
            return Err(ZayaError::Shape {
                name: name.clone(),
                file: SIDECAR_FILE.into(),
                expected: shape_str(shape),
                found: shape_str(&t.shape),
            });
        }
        check_sidecar_values(name, t)?;
        keep.insert(name.clone(), t.clone());
    }
    // other codebooks / sign vectors are kept too (they are tiny)
    let extra: BTreeSet<&String> = all.keys().filter(|k| !keep.contains_key(*k)).collect();
    for k in extra {
        if k.starts_with("codebook.") || k.starts_with("signs.") {
            keep.insert(k.clone(), all[k].clone());
        }
    }
    Ok((parsed.map, keep))
}
