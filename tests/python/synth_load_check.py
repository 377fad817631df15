"""Loads a synthetic JANGTQ bundle into jang_tools' pure-MLX ZAYA model the docs/bundle-format.md §5.2
way (TurboQuant experts dequantized to float with the sidecar, affine modules quantized to match
the .scales entries, strict load), runs a forward pass, and, given the float source of the same
weights, compares weights and logits with the float model (tests/synth_bundle.rs).

usage: synth_load_check.py BUNDLE [SRC]
prints one JSON summary line.
"""
import glob
import json
import math
import sys
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from jang_tools.zaya.model import Model, ModelArgs

bundle = Path(sys.argv[1])
src = Path(sys.argv[2]) if len(sys.argv) > 2 else None
cfg = json.loads((bundle / "config.json").read_text())
jang = json.loads((bundle / "jang_config.json").read_text())
args = ModelArgs.from_dict(cfg)
G = cfg["quantization"]["group_size"]
seed = jang["mxtq_seed"]

weights = {}
for f in sorted(glob.glob(str(bundle / "model-*.safetensors"))):
    weights.update(mx.load(f))
sidecar = mx.load(str(bundle / "jangtq_runtime.safetensors"))
summary = {"keys": len(weights), "dtypes": sorted({str(v.dtype) for v in weights.values()}),
           "sidecar": sorted(sidecar.keys())}


def dequant_tq(packed, norms, bits, in_features):
    """Independent dequantizer (docs/bundle-format.md §3.6): W = diag(n) C[codes] H diag(s)."""
    per = 32 // bits
    shifts = mx.arange(per, dtype=mx.uint32) * bits
    codes = (packed[..., None] >> shifts) & ((1 << bits) - 1)
    codes = codes.reshape(*packed.shape[:-1], -1)[..., :in_features]
    cb = sidecar[f"codebook.{in_features}.{bits}"]
    s = sidecar[f"signs.{in_features}.{seed}"]
    w_rot = cb[codes] * norms.astype(mx.float32)[..., None]
    return mx.hadamard_transform(w_rot, scale=1.0 / math.sqrt(in_features)) * s


for base, in_features in jang["tq_in_features"].items():
    packed = weights.pop(f"{base}.tq_packed")
    norms = weights.pop(f"{base}.tq_norms")
    bits = int(weights.pop(f"{base}.tq_bits")[0].item())
    weights[f"{base}.weight"] = dequant_tq(packed, norms, bits, in_features)

model = Model(args)
weights = model.sanitize(weights)
nn.quantize(model, group_size=G, bits=8,
            class_predicate=lambda p, m: hasattr(m, "to_quantized") and f"{p}.scales" in weights)
model.load_weights(list(weights.items()), strict=True)
mx.eval(model.parameters())
summary["strict_load"] = True

tokens = mx.array([[2, 105, 300, 450, 120, 600, 106, 700, 33, 5 + 101]])
logits = model(tokens).astype(mx.float32)
mx.eval(logits)
summary["logits_shape"] = list(logits.shape)
summary["logits_finite"] = bool(mx.all(mx.isfinite(logits)).item())
summary["logits_absmax"] = float(mx.max(mx.abs(logits)).item())

if src is not None:
    from safetensors.numpy import load_file

    fw = {}
    for f in sorted(glob.glob(str(src / "model-*.safetensors"))):
        fw.update({k: mx.array(v) for k, v in load_file(f).items()})
    fmodel = Model(args)
    fw = fmodel.sanitize(fw)
    fmodel.load_weights(list(fw.items()), strict=True)
    flogits = fmodel(tokens).astype(mx.float32)
    mx.eval(flogits)
    a, b = np.array(logits).ravel(), np.array(flogits).ravel()
    summary["logits_cosine"] = float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
    summary["logits_max_abs_diff"] = float(np.abs(a - b).max())
    summary["float_logits_absmax"] = float(np.abs(b).max())
    summary["argmax_agree"] = int((np.array(logits).argmax(-1) == np.array(flogits).argmax(-1)).sum())
    summary["tokens"] = int(tokens.shape[1])

    # weight-level errors: dequantized bundle tensors vs the float source
    def rel(x, y):
        x, y = np.array(x, dtype=np.float64), np.array(y, dtype=np.float64)
        return float(np.sqrt(((x - y) ** 2).sum() / (y ** 2).sum()))

    errs = {"tq": [], "affine": [], "passthrough": []}

    for k, y in fw.items():
        if ".switch_mlp." in k:
            errs["tq"].append(rel(weights[k], y))
        elif k.endswith(".weight") and k[:-7] + ".scales" in weights:
            base = k[:-7]
            deq = mx.dequantize(weights[base + ".weight"], weights[base + ".scales"], weights[base + ".biases"], group_size=G, bits=8)
            errs["affine"].append(rel(deq, y))
        else:
            errs["passthrough"].append(rel(weights[k], y))
    summary["weight_rel_rmse"] = {k: [min(v), max(v)] for k, v in errs.items() if v}
print(json.dumps(summary))
