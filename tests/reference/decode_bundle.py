#!/usr/bin/env python3
"""Independent NumPy decoder of a JANGTQ / MLX-affine bundle (reference for tests/bundle_decode.rs).

Usage: decode_bundle.py BUNDLE_DIR OUT.safetensors

Reads the shards (through model.safetensors.index.json, else every *.safetensors) and jangtq_runtime.safetensors with a tiny
hand-written safetensors reader, and writes float32 tensors:
  * `{base}.weight` for every TurboQuant module `{base}.tq_packed` (stacked [E, out, in]):
      codes unpacked LSB-first (32/bits codes per uint32 word), codebook lookup, times the row norm,
      then the inverse rotation  w_row = s * (H @ row)  with H the orthonormal Sylvester
      Walsh-Hadamard matrix built here (docs/bundle-format.md §3.2-§3.6);
  * `{base}.weight` for every MLX affine module (`.weight` U32 + `.scales` + `.biases`):
      w = scales * q + biases per group (docs/bundle-format.md §2), bits from config.json's quantization
      block (module override, else `embed_bits` for embed_tokens/lm_head, else the global bits);
  * `{base}.weight` for every MLX mxfp4 module (`.weight` U32 + `.scales` U8, no biases): 4-bit
      e2m1 codes (sign bit 3, magnitudes 0, .5, 1, 1.5, 2, 3, 4, 6) times 2^(scale - 127) per group
      of 32 (the OCP MX format MLX implements).
Only numpy is used (no mlx, no safetensors package), so the decode is independent of the runtime.
"""
import json
import struct
import sys
from pathlib import Path

import numpy as np

DTYPES = {"F16": np.float16, "F32": np.float32, "U32": np.uint32, "U8": np.uint8, "I32": np.int32,
          "F64": np.float64}


def read_safetensors(path):
    raw = Path(path).read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    base = 8 + n
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        b, e = info["data_offsets"]
        arr = np.frombuffer(raw[base + b:base + e], dtype=DTYPES[info["dtype"]])
        out[name] = arr.reshape(info["shape"])
    return out


def write_safetensors(path, tensors):
    header, blobs, off = {}, [], 0
    for name in sorted(tensors):
        a = np.ascontiguousarray(tensors[name], dtype=np.float32)
        b = a.tobytes()
        header[name] = {"dtype": "F32", "shape": list(a.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    h = json.dumps(header).encode()
    h += b" " * ((8 - (8 + len(h)) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)


def hadamard(n):
    """Orthonormal Sylvester Walsh-Hadamard matrix: H[i, j] = (-1)^popcount(i & j) / sqrt(n)."""
    h = np.ones((1, 1), dtype=np.float64)
    while h.shape[0] < n:
        h = np.block([[h, h], [h, -h]])
    assert h.shape[0] == n, "in_features must be a power of two"
    return h / np.sqrt(n)


def unpack_codes(packed, bits, n_in):
    """packed [..., cols] uint32 -> codes [..., n_in], code i of a row at word i // k, bits (i % k)*bits."""
    k = 32 // bits
    shifts = (np.arange(k, dtype=np.uint32) * bits).astype(np.uint32)
    codes = (packed[..., None] >> shifts) & np.uint32((1 << bits) - 1)
    codes = codes.reshape(*packed.shape[:-1], packed.shape[-1] * k)
    return codes[..., :n_in]


def main():
    bundle, out_path = Path(sys.argv[1]), sys.argv[2]
    cfg = json.loads((bundle / "config.json").read_text())
    jang_path = bundle / "jang_config.json"
    jang = json.loads(jang_path.read_text()) if jang_path.exists() else {}
    seed = jang.get("mxtq_seed", cfg.get("mxtq_seed", 42))
    index_path = bundle / "model.safetensors.index.json"
    if index_path.exists():
        shards = sorted(set(json.loads(index_path.read_text())["weight_map"].values()))
    else:
        shards = sorted(p.name for p in bundle.glob("*.safetensors") if p.name != "jangtq_runtime.safetensors")
    tensors = {}
    for shard in shards:
        tensors.update(read_safetensors(bundle / shard))
    sidecar_path = bundle / "jangtq_runtime.safetensors"
    sidecar = read_safetensors(sidecar_path) if sidecar_path.exists() else {}

    out = {}
    for name in sorted(tensors):
        if name.endswith(".tq_packed"):
            base = name[: -len(".tq_packed")]
            packed = tensors[name]
            norms = tensors[base + ".tq_norms"].astype(np.float64)
            bits = int(tensors[base + ".tq_bits"].reshape(-1)[0])
            n_in = packed.shape[-1] * (32 // bits)  # exact for 2/4/8 bits
            codebook = sidecar[f"codebook.{n_in}.{bits}"].astype(np.float64)
            signs = sidecar[f"signs.{n_in}.{seed}"].astype(np.float64)
            rot = codebook[unpack_codes(packed, bits, n_in)] * norms[..., None]
            h = hadamard(n_in)
            w = (rot @ h.T) * signs  # each row: s * (H @ row); H is symmetric
            out[base + ".weight"] = w.astype(np.float32)
        elif name.endswith(".scales") and name[: -len(".scales")] + ".biases" in tensors:
            base = name[: -len(".scales")]
            wq = tensors[base + ".weight"]
            scales = tensors[name].astype(np.float32)
            biases = tensors[base + ".biases"].astype(np.float32)
            groups = scales.shape[-1]
            # bits from config.json's quantization block (per-module override, else global)
            q_cfg = cfg.get("quantization") or {}
            override = q_cfg.get(base) if isinstance(q_cfg.get(base), dict) else {}
            default = q_cfg["bits"]
            if base in ("model.embed_tokens", "lm_head") and "embed_bits" in q_cfg:
                default = q_cfg["embed_bits"]
            bits = int(override.get("bits", default))
            assert 32 % bits == 0, "this reference decoder handles 2/4/8-bit affine"
            n_in = wq.shape[-1] * 32 // bits
            q = unpack_codes(wq, bits, n_in).astype(np.float32)
            g = n_in // groups
            q = q.reshape(*q.shape[:-1], groups, g)
            w = q * scales[..., None] + biases[..., None]
            out[base + ".weight"] = w.reshape(*w.shape[:-2], n_in).astype(np.float32)
        elif name.endswith(".scales") and tensors[name].dtype == np.uint8:
            base = name[: -len(".scales")]
            codes = unpack_codes(tensors[base + ".weight"], 4, tensors[base + ".weight"].shape[-1] * 8)
            e2m1 = np.array([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0])
            vals = e2m1[codes & 7] * np.where(codes >= 8, -1.0, 1.0)
            scales = np.exp2(tensors[name].astype(np.float64) - 127.0)
            groups = scales.shape[-1]
            vals = vals.reshape(*vals.shape[:-1], groups, -1) * scales[..., None]
            out[base + ".weight"] = vals.reshape(*vals.shape[:-2], -1).astype(np.float32)
    write_safetensors(out_path, out)
    print(json.dumps({"decoded": len(out)}))


if __name__ == "__main__":
    main()
