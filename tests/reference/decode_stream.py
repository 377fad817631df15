#!/usr/bin/env python3
"""Greedy decoding with the Python reference model, for side-by-side runs against zaya-mlx.

    python decode_stream.py BUNDLE --ids 2,134,86 [--max-new 32] [--dtype f32|bf16] [--stream]

Loads the JANGTQ4 bundle exactly as make_fixture.py does (experts dequantized from the sidecar,
affine tensors 8-bit, floats cast to --dtype), prefills the prompt ids in one call, then decodes
--max-new tokens by plain argmax through the mlx-lm caches (no EOS stop): the same path as
`greedy_ids` in reference.safetensors. Prints one JSON object:
    {"bundle", "dtype", "prompt_ids", "ids", "load_s", "prefill_s", "decode_s", "decode_tok_per_s"}
where prefill_s runs until the first new token is known and decode_s covers the rest.
With --stream, first prints one JSON line {"i", "token", "t_s"} per token as it is produced.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.dont_write_bytecode = True  # no __pycache__ in the source tree


def parse_ids(values: list[str]) -> list[int]:
    ids = [int(x) for v in values for x in v.replace(",", " ").split()]
    if not ids:
        raise SystemExit("no token ids given")
    return ids


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("bundle", type=Path)
    ap.add_argument("--ids", nargs="+", required=True, help="prompt token ids (comma or space separated)")
    ap.add_argument("--max-new", type=int, default=32)
    ap.add_argument("--dtype", choices=["f32", "bf16"], default="f32")
    ap.add_argument("--stream", action="store_true", help="print a JSON line per token")
    args = ap.parse_args()

    import mlx.core as mx
    import zaya_ref

    mx.set_default_device(mx.cpu)
    prompt = parse_ids(args.ids)
    t0 = time.perf_counter()
    model = zaya_ref.load_bundle_model(args.bundle, args.dtype)
    vocab = model.args.vocab_size
    bad = [i for i in prompt if not 0 <= i < vocab]
    if bad:
        raise SystemExit(f"token ids {bad} are outside the vocabulary (size {vocab})")
    t_load = time.perf_counter() - t0

    stamps: list[float] = []
    start = time.perf_counter()

    def on_token(i: int, tok: int) -> None:
        stamps.append(time.perf_counter() - start)
        if args.stream:
            print(json.dumps({"i": i, "token": tok, "t_s": round(stamps[-1], 6)}), flush=True)

    ids = zaya_ref.greedy(model, prompt, args.max_new, on_token) if args.max_new > 0 else []
    prefill = stamps[0] if stamps else 0.0
    decode = stamps[-1] - stamps[0] if len(stamps) > 1 else 0.0
    print(
        json.dumps(
            {
                "bundle": str(args.bundle),
                "dtype": args.dtype,
                "prompt_ids": prompt,
                "ids": ids,
                "load_s": round(t_load, 6),
                "prefill_s": round(prefill, 6),
                "decode_s": round(decode, 6),
                "decode_tok_per_s": round((len(ids) - 1) / decode, 3) if decode > 0 else None,
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
