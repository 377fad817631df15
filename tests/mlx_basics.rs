//! mlx-rs works on this platform: results of ordinary MLX ops equal the MLX Python API's (run in the
//! same test session through the reference venv) for a matmul and for 8-bit / 4-bit affine
//! quantize + quantized_matmul; MLX errors surface as Rust errors, not aborts.
mod common;

use mlx_rs::{ops, Array, Dtype};

fn to_array(t: &common::Tensor) -> Array {
    let shape: Vec<i32> = t.shape.iter().map(|&d| d as i32).collect();
    match t.dtype {
        safetensors::Dtype::U32 => {
            let v: Vec<u32> = t.data.iter().map(|&x| x as u32).collect();
            Array::from_slice(&v, &shape)
        }
        _ => Array::from_slice(&t.to_f32(), &shape),
    }
}

fn max_abs_diff(a: &Array, b: &[f32]) -> f32 {
    let a = a.as_dtype(Dtype::Float32).unwrap();
    a.eval().unwrap();
    a.as_slice::<f32>()
        .iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn matmul_and_affine_quantization_match_python_mlx() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("ref.safetensors");
    common::run_python(&common::reference_dir().join("mlx_basics.py"), &[out.to_str().unwrap()]);
    let r = common::read_all(&out);

    let y = ops::matmul(to_array(&r["a"]), to_array(&r["b"])).unwrap();
    assert!(max_abs_diff(&y, &r["a@b"].to_f32()) <= 1e-5);

    let x = to_array(&r["x"]);
    let w = to_array(&r["w"]);
    for (bits, gs) in [(8, 32), (8, 64), (4, 64)] {
        let tag = format!("{bits}b{gs}");
        let (wq, s, b) = ops::quantize(&w, gs, bits).unwrap();
        wq.eval().unwrap();
        let wq_ref: Vec<u32> = r[&format!("wq.{tag}")].data.iter().map(|&v| v as u32).collect();
        assert_eq!(wq.as_slice::<u32>(), &wq_ref[..], "{tag}: packed weights differ");
        assert!(
            max_abs_diff(&s, &r[&format!("scales.{tag}")].to_f32()) == 0.0,
            "{tag}: scales"
        );
        assert!(
            max_abs_diff(&b, &r[&format!("biases.{tag}")].to_f32()) == 0.0,
            "{tag}: biases"
        );
        let y = ops::quantized_matmul(&x, &wq, &s, &b, true, gs, bits).unwrap();
        assert!(
            max_abs_diff(&y, &r[&format!("y.{tag}")].to_f32()) <= 1e-5,
            "{tag}: quantized_matmul"
        );
    }
}

#[test]
fn mlx_errors_are_rust_errors() {
    let a = Array::from_slice(&[1.0f32; 6], &[2, 3]);
    let b = Array::from_slice(&[1.0f32; 6], &[2, 3]);
    // inner dimensions 3 vs 2 do not match: MLX throws, mlx-rs returns Err
    let e = ops::matmul(&a, &b).unwrap_err();
    assert!(!e.to_string().is_empty());
    let e = a.reshape(&[4, 2]).unwrap_err();
    assert!(
        e.to_string().contains("reshape") || e.to_string().contains("shape"),
        "{e}"
    );
}

#[test]
fn graph_node_count_of_a_small_graph() {
    // (a + b) * b cast to f16: three unevaluated nodes above two evaluated leaves, one of them a cast
    let a = Array::from_slice(&[1.0f32, 2.0], &[2]);
    let b = Array::from_slice(&[3.0f32, 4.0], &[2]);
    a.eval().unwrap();
    b.eval().unwrap();
    let p = a
        .add(&b)
        .unwrap()
        .multiply(&b)
        .unwrap()
        .as_dtype(Dtype::Float16)
        .unwrap();
    let st = zaya_mlx::ext::graph_nodes(&[&p]).unwrap();
    assert_eq!((st.nodes, st.casts), (3, 1));
    p.eval().unwrap();
    assert_eq!(zaya_mlx::ext::graph_nodes(&[&p]).unwrap().nodes, 0);
}
