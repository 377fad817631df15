"""Reference values for tests/mlx_basics.rs, computed with the MLX Python API (the same libmlx 0.32.2
the Rust crate links): a float32 matmul and 8-bit / 4-bit affine quantize + quantized_matmul.
Usage: mlx_basics.py OUT.safetensors"""
import sys

import mlx.core as mx
import numpy as np

rng = np.random.default_rng(1234)
out = {}
a = rng.standard_normal((5, 64)).astype(np.float32)
b = rng.standard_normal((64, 7)).astype(np.float32)
out["a"], out["b"] = a, b
out["a@b"] = np.array(mx.matmul(mx.array(a), mx.array(b)))
x = rng.standard_normal((3, 128)).astype(np.float32)
w = (rng.standard_normal((48, 128)) * 0.1).astype(np.float32)
out["x"], out["w"] = x, w
for bits, gs in [(8, 32), (8, 64), (4, 64)]:
    wq, s, bi = mx.quantize(mx.array(w), group_size=gs, bits=bits)
    y = mx.quantized_matmul(mx.array(x), wq, s, bi, transpose=True, group_size=gs, bits=bits)
    tag = f"{bits}b{gs}"
    out[f"wq.{tag}"] = np.array(wq)
    out[f"scales.{tag}"] = np.array(s)
    out[f"biases.{tag}"] = np.array(bi)
    out[f"y.{tag}"] = np.array(y)
mx.save_safetensors(sys.argv[1], {k: mx.array(v) for k, v in out.items()})
