//! Stored tensors → MLX arrays. Where the data is aligned for its dtype, the array wraps the shard
//! mapping directly (no copy: `mlx-ext/external_array.cpp`) and holds an `Arc` of the mapping until
//! MLX frees the last array sharing that memory; otherwise (misaligned data, empty tensors) the bytes
//! are copied into an MLX-owned buffer.
use std::os::raw::{c_int, c_void};
use std::sync::Arc;

use mlx_rs::Array;
use mlx_sys::{mlx_array_new, mlx_array_new_data, mlx_dtype};

use super::shards::{DType, ShardMap, TensorMeta};
use crate::error::{Result, ZayaError};
use crate::ext::sys::{zaya_array_from_external, zaya_ext_last_error};

/// MLX dtype of a stored dtype, if MLX has one.
pub fn mlx_dtype_of(d: DType) -> Option<mlx_dtype> {
    use mlx_sys::*;
    Some(match d {
        DType::Bool => mlx_dtype__MLX_BOOL,
        DType::U8 => mlx_dtype__MLX_UINT8,
        DType::I8 => mlx_dtype__MLX_INT8,
        DType::U16 => mlx_dtype__MLX_UINT16,
        DType::I16 => mlx_dtype__MLX_INT16,
        DType::F16 => mlx_dtype__MLX_FLOAT16,
        DType::BF16 => mlx_dtype__MLX_BFLOAT16,
        DType::U32 => mlx_dtype__MLX_UINT32,
        DType::I32 => mlx_dtype__MLX_INT32,
        DType::F32 => mlx_dtype__MLX_FLOAT32,
        DType::U64 => mlx_dtype__MLX_UINT64,
        DType::I64 => mlx_dtype__MLX_INT64,
        DType::F64 => mlx_dtype__MLX_FLOAT64,
        DType::Unsupported(_) => return None,
    })
}

fn dims_i32(name: &str, file: &str, shape: &[usize]) -> Result<Vec<c_int>> {
    shape
        .iter()
        .map(|&d| c_int::try_from(d))
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|_| ZayaError::Shape {
            name: name.to_string(),
            file: file.to_string(),
            expected: "dimensions below 2^31 (MLX's limit)".into(),
            found: format!("{shape:?}"),
        })
}

fn unsupported(name: &str, file: &str, d: DType) -> ZayaError {
    ZayaError::Dtype {
        name: name.to_string(),
        file: file.to_string(),
        expected: "a dtype MLX supports (bool, u8..u64, i8..i64, f16, bf16, f32, f64)".into(),
        found: d.to_string(),
    }
}

/// Makes sure mlx-rs has installed its error handler (mlx-c's default handler exits the process)
/// before we call mlx-c directly.
fn ensure_error_handler() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // Any mlx-rs op goes through `try_from_op`, which registers the handler.
        let _ = mlx_rs::ops::abs(Array::from_int(0));
    });
}

/// Copies `bytes` into a new MLX array of `shape` / `dtype`.
pub fn array_from_bytes(name: &str, file: &str, bytes: &[u8], shape: &[usize], dtype: DType) -> Result<Array> {
    let dt = mlx_dtype_of(dtype).ok_or_else(|| unsupported(name, file, dtype))?;
    let dims = dims_i32(name, file, shape)?;
    ensure_error_handler();
    let numel: usize = shape.iter().product();
    if numel * dtype.size() != bytes.len() {
        return Err(ZayaError::Shape {
            name: name.to_string(),
            file: file.to_string(),
            expected: format!("{} bytes for {dtype} {shape:?}", numel * dtype.size()),
            found: format!("{} bytes", bytes.len()),
        });
    }
    // A non-null pointer even for empty tensors; MLX copies `numel * itemsize` bytes from it.
    let dummy = [0u8; 8];
    let ptr = if bytes.is_empty() {
        dummy.as_ptr()
    } else {
        bytes.as_ptr()
    };
    // SAFETY: ptr is valid for bytes.len() reads and the dims match; mlx_array_new_data copies.
    let h = unsafe { mlx_array_new_data(ptr as *const c_void, dims.as_ptr(), dims.len() as c_int, dt) };
    if h.ctx.is_null() {
        return Err(ZayaError::Ext(format!(
            "MLX could not create the array for `{name}` ({file})"
        )));
    }
    // SAFETY: a fresh, owned handle.
    Ok(unsafe { Array::from_ptr(h) })
}

unsafe extern "C" fn release_shard(p: *mut c_void) {
    // SAFETY: `p` is the Box<Arc<ShardMap>> leaked in `array_from_meta`; MLX calls this exactly once.
    drop(unsafe { Box::from_raw(p as *mut Arc<ShardMap>) });
}

/// The array of a stored tensor and whether it aliases the mapping (true) or was copied (false).
pub fn array_from_meta(meta: &TensorMeta) -> Result<(Array, bool)> {
    let file = meta.file().to_string();
    let dt = mlx_dtype_of(meta.dtype).ok_or_else(|| unsupported(&meta.name, &file, meta.dtype))?;
    let dims = dims_i32(&meta.name, &file, &meta.shape)?;
    let ptr = meta.shard.base_ptr().wrapping_add(meta.offset);
    let aligned = (ptr as usize).is_multiple_of(meta.dtype.size().max(1));
    // The 8 bytes before the data are read by MLX (see external_array.cpp); the data section always
    // starts after the 8-byte length field and the header.
    if meta.nbytes == 0 || !aligned || meta.offset < 8 {
        return Ok((
            array_from_bytes(&meta.name, &file, meta.bytes(), &meta.shape, meta.dtype)?,
            false,
        ));
    }
    ensure_error_handler();
    let payload = Box::into_raw(Box::new(meta.shard.clone())) as *mut c_void;
    let mut out = unsafe { mlx_array_new() };
    let (mut zero_copy, mut consumed): (c_int, c_int) = (0, 0);
    // SAFETY: ptr..ptr+nbytes lies inside the private writable mapping kept alive by `payload`; the
    // dims/dtype describe exactly nbytes (checked when the header was parsed).
    let rc = unsafe {
        zaya_array_from_external(
            &mut out,
            ptr as *mut c_void,
            dims.as_ptr(),
            dims.len() as c_int,
            dt as c_int,
            payload,
            release_shard,
            &mut zero_copy,
            &mut consumed,
        )
    };
    if rc != 0 {
        if consumed == 0 {
            // SAFETY: ownership was not taken; reclaim the box.
            unsafe { release_shard(payload) };
        }
        // SAFETY: frees the (possibly empty) handle once.
        unsafe { mlx_sys::mlx_array_free(out) };
        // SAFETY: thread-local NUL-terminated string owned by the extension.
        let msg = unsafe { std::ffi::CStr::from_ptr(zaya_ext_last_error()) }
            .to_string_lossy()
            .into_owned();
        return Err(ZayaError::Ext(format!("wrapping `{}` ({file}): {msg}", meta.name)));
    }
    // SAFETY: the extension set a valid array into the handle; Array takes ownership.
    Ok((unsafe { Array::from_ptr(out) }, zero_copy != 0))
}

/// Address of an evaluated array's first element (tests and diagnostics).
#[doc(hidden)]
pub fn array_data_ptr(a: &Array) -> *const u8 {
    // SAFETY: reading the data pointer of a valid array handle; uint8 access is just a byte view.
    unsafe {
        match a.dtype() {
            mlx_rs::Dtype::Uint32 => mlx_sys::mlx_array_data_uint32(a.as_ptr()) as *const u8,
            mlx_rs::Dtype::Float32 => mlx_sys::mlx_array_data_float32(a.as_ptr()) as *const u8,
            mlx_rs::Dtype::Uint8 => mlx_sys::mlx_array_data_uint8(a.as_ptr()),
            mlx_rs::Dtype::Int32 => mlx_sys::mlx_array_data_int32(a.as_ptr()) as *const u8,
            mlx_rs::Dtype::Uint16 | mlx_rs::Dtype::Float16 | mlx_rs::Dtype::Bfloat16 => {
                mlx_sys::mlx_array_data_uint16(a.as_ptr()) as *const u8
            }
            _ => mlx_sys::mlx_array_data_uint64(a.as_ptr()) as *const u8,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::shards::open_shard;
    use super::*;

    /// A safetensors file with a u32, an f16 and a u8 tensor, written by the safetensors crate.
    fn write_file(path: &std::path::Path) {
        use safetensors::tensor::{Dtype, TensorView};
        let a: Vec<u8> = (0u32..12).flat_map(|v| (v * 1000 + 7).to_le_bytes()).collect();
        let h: Vec<u8> = [1.5f32, -2.25, 3.0, 0.5]
            .iter()
            .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
            .collect();
        let b: Vec<u8> = vec![4];
        let views = vec![
            ("a", TensorView::new(Dtype::U32, vec![3, 4], &a).unwrap()),
            ("h", TensorView::new(Dtype::F16, vec![4], &h).unwrap()),
            ("b", TensorView::new(Dtype::U8, vec![1], &b).unwrap()),
        ];
        safetensors::serialize_to_file(views, None, path).unwrap();
    }

    #[test]
    fn aligned_tensors_alias_the_mapping_and_keep_it_alive() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.safetensors");
        write_file(&path);
        let parsed = open_shard(&path, "t.safetensors").unwrap();
        let weak = std::sync::Arc::downgrade(&parsed.map);
        let by_name = |n: &str| parsed.tensors.iter().find(|t| t.name == n).unwrap().clone();
        let (a, zc) = array_from_meta(&by_name("a")).unwrap();
        assert!(zc, "u32 tensor should be wrapped without a copy");
        let expected_ptr = parsed.map.base_ptr().wrapping_add(by_name("a").offset) as *const u8;
        assert_eq!(
            array_data_ptr(&a),
            expected_ptr,
            "MLX must use the mapped bytes, not a copy"
        );
        let (h, zc_h) = array_from_meta(&by_name("h")).unwrap();
        assert!(zc_h);
        let (b, _) = array_from_meta(&by_name("b")).unwrap();
        drop(parsed);
        // arrays keep the mapping alive after every other handle is gone
        assert!(weak.upgrade().is_some());
        let vals: Vec<u32> = a.as_slice::<u32>().to_vec();
        assert_eq!(vals, (0u32..12).map(|v| v * 1000 + 7).collect::<Vec<_>>());
        let hv: Vec<f32> = h.as_type::<f32>().unwrap().as_slice::<f32>().to_vec();
        assert_eq!(hv, vec![1.5, -2.25, 3.0, 0.5]);
        assert_eq!(b.as_slice::<u8>(), &[4]);
        // an op on a view shares the buffer; the mapping lives until the last array is gone
        let s = mlx_rs::ops::sum(&a, None).unwrap();
        assert_eq!(s.item_exact::<u32>(), (0u32..12).map(|v| v * 1000 + 7).sum::<u32>());
        drop(a);
        drop(h);
        assert!(weak.upgrade().is_some());
        drop(b);
        drop(s);
        assert!(
            weak.upgrade().is_none(),
            "the mapping must be released with the last array"
        );
    }

    #[test]
    fn donated_buffers_never_reach_the_file() {
        // MLX may write an op's output into an input buffer it owns alone ("donation"). It decides by
        // reading the 8 bytes before the data as a size; here they are the zeros of the preceding
        // tensor `p`, so `q` is donatable. The private mapping keeps such writes away from the file.
        use safetensors::tensor::{Dtype, TensorView};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.safetensors");
        let p: Vec<u8> = vec![0u8; 16];
        let q: Vec<u8> = (0u32..1024).flat_map(|v| v.to_le_bytes()).collect();
        let views = vec![
            ("p", TensorView::new(Dtype::U32, vec![4], &p).unwrap()),
            ("q", TensorView::new(Dtype::U32, vec![1024], &q).unwrap()),
        ];
        safetensors::serialize_to_file(views, None, &path).unwrap();
        let before = std::fs::read(&path).unwrap();
        let donated;
        {
            let parsed = open_shard(&path, "d.safetensors").unwrap();
            let m = parsed.tensors.iter().find(|t| t.name == "q").unwrap().clone();
            let qptr = parsed.map.base_ptr().wrapping_add(m.offset) as *const u8;
            drop(parsed);
            let (a, zc) = array_from_meta(&m).unwrap();
            assert!(zc);
            drop(m);
            let y = mlx_rs::ops::add(a, mlx_rs::Array::from_int(1).as_type::<u32>().unwrap()).unwrap();
            y.eval().unwrap();
            donated = array_data_ptr(&y) == qptr;
            assert_eq!(y.as_slice::<u32>()[..3], [1, 2, 3]);
        }
        assert!(
            donated,
            "expected MLX to reuse the mapped buffer (the scenario this test guards)"
        );
        assert_eq!(std::fs::read(&path).unwrap(), before, "the file must never change");
    }

    #[test]
    fn misaligned_data_is_copied() {
        // A u8 tensor of odd length followed by a u32 tensor: hand-written header so the u32 data
        // starts at an odd offset.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.safetensors");
        let header = r#"{"x":{"dtype":"U8","shape":[3],"data_offsets":[0,3]},"y":{"dtype":"U32","shape":[2],"data_offsets":[3,11]}}"#;
        let mut hb = header.as_bytes().to_vec();
        while !(8 + hb.len()).is_multiple_of(8) {
            hb.push(b' ');
        }
        let mut f = (hb.len() as u64).to_le_bytes().to_vec();
        f.extend(&hb);
        f.extend([1u8, 2, 3]);
        f.extend(5u32.to_le_bytes());
        f.extend(6u32.to_le_bytes());
        std::fs::write(&path, f).unwrap();
        let parsed = open_shard(&path, "m.safetensors").unwrap();
        let y = parsed.tensors.iter().find(|t| t.name == "y").unwrap();
        let (a, zc) = array_from_meta(y).unwrap();
        assert!(!zc);
        assert_eq!(a.as_slice::<u32>(), &[5, 6]);
    }
}
