"""Reference TurboQuant tables from jang_tools (numpy), for tests/synth_encode.rs.

usage: synth_ref_tables.py cb:DIM:BITS ... signs:DIM:SEED ...
prints one JSON object: {"cb:D:B": {"f64": [hex...]}, "signs:D:S": {"values": [+-1...]}}
"""
import json
import sys

import numpy as np
from jang_tools.turboquant.codebook import compute_codebook
from jang_tools.turboquant.rotation import generate_random_signs

out = {}
for spec in sys.argv[1:]:
    kind, a, b = spec.split(":")
    if kind == "cb":
        cb = compute_codebook(int(a), int(b))
        out[spec] = {"f64": [float(v).hex() for v in cb]}
    elif kind == "signs":
        s = np.asarray(generate_random_signs(int(a), seed=int(b)), dtype=np.float32)
        out[spec] = {"values": [int(v) for v in s]}
    else:
        raise SystemExit(f"bad spec {spec}")
print(json.dumps(out))
