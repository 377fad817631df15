"""Converts a Zyphra-format float source with jang's own converter and compares the result with
our bundle made from the same weights, file by file and tensor by tensor (tests/synth_bundle.rs).

usage: synth_convert_compare.py SRC OURS WORK PROFILE GROUP MAX_SHARD_BYTES
The converter runs in-process with its shard limit (MAX_SHARD, 1e9) set to MAX_SHARD_BYTES.
prints one JSON summary line.
"""
import contextlib
import json
import struct
import sys
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file

src, ours, work, profile, group = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4], sys.argv[5]
max_shard = int(sys.argv[6])
ref = work / "converted"

import jang_tools.convert_zaya_jangtq as converter  # noqa: E402

converter.MAX_SHARD = max_shard
sys.argv = ["convert_zaya_jangtq", str(src), str(ref), profile, "--group-size", group]
with contextlib.redirect_stdout(sys.stderr):
    converter.main()


def header(p):
    with open(p, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        return f.read(n)


summary = {"files": {}, "json": {}, "tensors": {}, "tq": {}}
ref_files = sorted(p.name for p in ref.iterdir())
our_files = sorted(p.name for p in ours.iterdir())
summary["ref_files"] = ref_files
summary["our_files"] = our_files

for name in ref_files:
    a, b = ref / name, ours / name
    if not b.exists():
        summary["files"][name] = "missing in ours"
        continue
    if name.endswith(".safetensors"):
        same_header = header(a) == header(b)
        summary["files"][name] = {"identical": a.read_bytes() == b.read_bytes(), "same_header": same_header}
    elif name.endswith(".json"):
        summary["json"][name] = json.loads(a.read_text()) == json.loads(b.read_text())
        if not summary["json"][name]:
            summary["json"][name + ".ref"] = json.loads(a.read_text())
    else:
        summary["files"][name] = {"identical": a.read_bytes() == b.read_bytes()}

index = json.loads((ref / "model.safetensors.index.json").read_text())
ref_t, our_t = {}, {}
for shard in sorted(set(index["weight_map"].values())):
    ref_t.update(load_file(str(ref / shard)))
    if (ours / shard).exists():
        our_t.update(load_file(str(ours / shard)))
summary["ref_keys"] = len(ref_t)
summary["our_keys"] = len(our_t)
summary["missing_keys"] = sorted(set(ref_t) - set(our_t))
summary["extra_keys"] = sorted(set(our_t) - set(ref_t))
codes_total = codes_diff = norms_total = norms_diff = 0
bad = []
for k, ra in ref_t.items():
    oa = our_t.get(k)
    if oa is None:
        continue
    if ra.dtype != oa.dtype or ra.shape != oa.shape:
        bad.append(f"{k}: {ra.dtype}{list(ra.shape)} vs {oa.dtype}{list(oa.shape)}")
        continue
    if k.endswith(".tq_packed"):
        bits = int(ref_t[k[:-len("tq_packed")] + "tq_bits"][0])
        per = 32 // bits
        shifts = (np.arange(per, dtype=np.uint32) * bits)
        rc = (ra[..., None] >> shifts) & ((1 << bits) - 1)
        oc = (oa[..., None] >> shifts) & ((1 << bits) - 1)
        codes_total += rc.size
        codes_diff += int((rc != oc).sum())
    elif k.endswith(".tq_norms"):
        norms_total += ra.size
        norms_diff += int((ra.view(np.uint16) != oa.view(np.uint16)).sum())
    elif ra.tobytes() != oa.tobytes():
        bad.append(f"{k}: values differ")
summary["tq"] = {"codes_total": codes_total, "codes_diff": codes_diff, "norms_total": norms_total, "norms_diff": norms_diff}
summary["bad_tensors"] = bad
print(json.dumps(summary))
