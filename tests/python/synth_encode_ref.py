"""Encodes test matrices with jang_tools' own encoders, for tests/synth_encode.rs.

usage: synth_encode_ref.py IN.safetensors OUT.safetensors
IN holds F32 tensors named
  tq.{bits}.{seed}.{tag}   [E, out, in]  -> tq_quantize_experts_rowwise   -> OUT tq.*.packed, tq.*.norms
  aff.{bits}.{group}.{tag} [rows, cols]  -> affine_quantize (f16 + mx.quantize) -> OUT aff.*.weight/.scales/.biases
  rot.{seed}.{tag}         [rows, in]    -> hadamard_rotate(x, generate_random_signs(in, seed)) -> OUT rot.*
"""
import sys

import mlx.core as mx
import numpy as np
from safetensors.numpy import load_file, save_file

from jang_tools.convert_zaya_common import affine_quantize, tq_quantize_experts_rowwise
from jang_tools.turboquant.rotation import generate_random_signs, hadamard_rotate

inp = load_file(sys.argv[1])
out = {}
for name, arr in inp.items():
    parts = name.split(".")
    if parts[0] == "tq":
        r = tq_quantize_experts_rowwise(arr, bits=int(parts[1]), seed=int(parts[2]))
        out[name + ".packed"] = r["packed"]
        out[name + ".norms"] = r["norms"]
    elif parts[0] == "aff":
        qw, qs, qb = affine_quantize(arr, bits=int(parts[1]), group_size=int(parts[2]))
        out[name + ".weight"] = qw
        out[name + ".scales"] = qs
        out[name + ".biases"] = qb
    elif parts[0] == "rot":
        s = generate_random_signs(arr.shape[-1], seed=int(parts[1]))
        y = hadamard_rotate(mx.array(arr), s)
        out[name] = np.array(y.astype(mx.float32))
    else:
        raise SystemExit(f"bad tensor name {name}")
save_file(out, sys.argv[2])
