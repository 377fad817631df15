#!/usr/bin/env python3
"""Side-by-side decode speed: zaya-mlx (`zaya bench --json`) against the Python MLX reference
(`jang_tools.zaya.model` through tests/reference/zaya_ref.py: experts dequantized to f32, 8-bit
affine linears through MLX's quantized_matmul), same bundle, same prompt ids, same machine,
alternating fresh processes A B A B ...

    python scripts/side_by_side.py [--bundle DIR] [--layers 8] [--vocab 262272] [-p 128] [-g 16]
                                   [--pairs 3] [--kernels fused] [--dtype f32] [--json OUT]

Without --bundle, a reduced-depth synthetic bundle at the real dimensions (`zaya synth --preset
zaya1-8b` with --layers half-layers and --vocab tokens) is written once to
target/zaya-bench/sbs-<layers>hl-v<vocab>-s0 (temp dir + rename). The full 80 half-layers do not
fit: the reference holds every expert dequantized in f32 (≈0.8 GB per MoE half-layer).

Each A run is `zaya bench -p P -g G -n 1 --warmup 1 --json` (its own load, one warm-up trial, one
timed trial); each B run is this script in --ref-worker mode under the reference venv (load, one
warm-up greedy run, one timed greedy run, `zaya_ref.greedy`: prefill in one call, then one token per
step through the mlx-lm caches, argmax read back to the host each step, as in decode_stream.py).
Both time the same things: TTFT = prefill + first argmax; decode tok/s = (G-1) / (time from the
first token to the last). Prints every run, the medians, zaya's speed-up (rates: zaya/reference;
times: reference/zaya), the load average, and whether the greedy tokens agree.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def loadavg() -> float:
    try:
        return float(Path("/proc/loadavg").read_text().split()[0])
    except OSError:
        return float("nan")


# ---- B: the reference worker (runs under the reference venv) ------------------------------------


def ref_worker(args: argparse.Namespace) -> None:
    import resource

    sys.path.insert(0, str(ROOT / "tests" / "reference"))
    sys.dont_write_bytecode = True
    import mlx.core as mx
    import zaya_ref

    mx.set_default_device(mx.cpu)
    ids = [int(x) for x in args.ids.split(",")]
    t0 = time.perf_counter()
    model = zaya_ref.load_bundle_model(Path(args.bundle), args.dtype)
    load_s = time.perf_counter() - t0

    def timed() -> tuple[list[int], float, float]:
        stamps: list[float] = []
        start = time.perf_counter()

        def on_token(i: int, tok: int) -> None:
            stamps.append(time.perf_counter() - start)

        out = zaya_ref.greedy(model, ids, args.gen, on_token)
        return out, stamps[0], stamps[-1] - stamps[0]

    timed()  # warm-up
    la = loadavg()
    out, ttft, decode = timed()
    print(
        json.dumps(
            {
                "load_s": load_s,
                "ttft_s": ttft,
                "decode_s": decode,
                "prompt_tps": len(ids) / ttft,
                "generation_tps": (len(out) - 1) / decode,
                "generated_ids": out,
                # the reference's peak includes dequantizing every expert at load
                "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                "load_average": la,
            }
        ),
        flush=True,
    )


# ---- orchestration -------------------------------------------------------------------------------


def run(cmd: list[str], env: dict | None = None) -> str:
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if p.returncode != 0:
        sys.stderr.write(p.stderr)
        raise SystemExit(f"command failed ({p.returncode}): {' '.join(cmd)}")
    return p.stdout


def ensure_bundle(zaya: Path, layers: int, vocab: int) -> Path:
    base = ROOT / "target" / "zaya-bench"
    out = base / f"sbs-{layers}hl-v{vocab}-s0"
    if (out / "config.json").exists():
        return out
    base.mkdir(parents=True, exist_ok=True)
    tmp = base / f".sbs.tmp-{os.getpid()}"
    cfg = base / f".sbs-{os.getpid()}.json"
    cfg.write_text(json.dumps({"num_hidden_layers": layers, "vocab_size": vocab}))
    print(f"writing the side-by-side bundle to {out} (once)", file=sys.stderr)
    run([str(zaya), "synth", "--preset", "zaya1-8b", "--config", str(cfg), "--out", str(tmp), "--force", "-q"])
    cfg.unlink()
    try:
        tmp.rename(out)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def find_python() -> str:
    v = os.environ.get("ZAYA_REF_VENV") or str(ROOT / ".venv-ref")
    p = Path(v) / "bin" / "python"
    if not p.exists():
        raise SystemExit(f"reference venv python not found at {p} (set ZAYA_REF_VENV or run scripts/setup-python-ref.sh)")
    return str(p)


def agreement(a: list[int], b: list[int]) -> str:
    n = min(len(a), len(b))
    first = next((i for i in range(n) if a[i] != b[i]), None)
    same = sum(1 for i in range(n) if a[i] == b[i])
    return f"{same}/{n} equal" + ("" if first is None else f", first difference at token {first}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", type=Path)
    ap.add_argument("--layers", type=int, default=8, help="half-layers of the synthetic bundle")
    ap.add_argument("--vocab", type=int, default=262272)
    ap.add_argument("-p", "--prompt-tokens", type=int, default=128)
    ap.add_argument("-g", "--generation-tokens", type=int, default=16)
    ap.add_argument("--pairs", type=int, default=3, help="A/B pairs (alternating runs)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--kernels", default="fused")
    ap.add_argument("--dtype", default="f32", choices=["f32", "bf16"])
    ap.add_argument("--zaya", type=Path, default=ROOT / "target" / "release" / "zaya")
    ap.add_argument("--json", type=Path, help="also write the results here")
    # worker mode (internal)
    ap.add_argument("--ref-worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--ids", help=argparse.SUPPRESS)
    ap.add_argument("--gen", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.ref_worker:
        ref_worker(args)
        return

    if not args.zaya.exists():
        raise SystemExit(f"{args.zaya} not found: run `cargo build --release` first")
    bundle = args.bundle or ensure_bundle(args.zaya, args.layers, args.vocab)
    py = find_python()
    p, g = args.prompt_tokens, args.generation_tokens
    a_runs: list[dict] = []
    b_runs: list[dict] = []
    print(f"bundle {bundle}; prompt {p} tokens, {g} generated, {args.pairs} A/B pairs; kernels {args.kernels}, dtype {args.dtype}")
    for i in range(args.pairs):
        la = loadavg()
        out = run([str(args.zaya), "bench", "--model", str(bundle), "-p", str(p), "-g", str(g), "-n", "1",
                   "--warmup", "1", "--seed", str(args.seed), "--kernels", args.kernels, "--dtype", args.dtype,
                   "--bandwidth-mib", "256", "--json"])
        z = json.loads(out)
        t = z["trials"][0]
        a = {"load_s": z["load_s"], "ttft_s": t["ttft_s"], "prompt_tps": t["prompt_tps"],
             "generation_tps": t["generation_tps"], "peak_rss_bytes": t["peak_rss_bytes"],
             "generated_ids": z["generated_ids"], "load_average": la,
             "nodes_per_decode_step": z["graph"]["nodes_per_decode_step"], "bound_tok_per_s": z["bound"]["tok_per_s"]}
        a_runs.append(a)
        ids = ",".join(str(x) for x in z["prompt_ids"])
        print(f"A{i + 1} zaya:      prefill {a['prompt_tps']:8.2f} tok/s  ttft {a['ttft_s']:7.3f} s  decode {a['generation_tps']:7.3f} tok/s  load {a['load_s']:6.2f} s  loadavg {la:.2f}", flush=True)
        b = json.loads(run([py, str(Path(__file__).resolve()), "--ref-worker", "--bundle", str(bundle), "--ids", ids,
                            "--gen", str(g), "--dtype", args.dtype]))
        b_runs.append(b)
        print(f"B{i + 1} reference: prefill {b['prompt_tps']:8.2f} tok/s  ttft {b['ttft_s']:7.3f} s  decode {b['generation_tps']:7.3f} tok/s  load {b['load_s']:6.2f} s  loadavg {b['load_average']:.2f}", flush=True)

    def med(runs: list[dict], k: str) -> float:
        return statistics.median(r[k] for r in runs)

    res = {"bundle": str(bundle), "prompt_tokens": p, "generation_tokens": g, "pairs": args.pairs,
           "kernels": args.kernels, "dtype": args.dtype, "zaya": a_runs, "reference": b_runs, "median": {}, "ratio": {}}
    # speed-up of zaya over the reference: a rate ratio zaya/reference, a time ratio reference/zaya
    print("\nmedians            zaya    reference   zaya speed-up")
    for k, label, rate in [("generation_tps", "decode tok/s", True), ("prompt_tps", "prefill tok/s", True),
                           ("ttft_s", "TTFT s", False), ("load_s", "load s", False)]:
        za, rb = med(a_runs, k), med(b_runs, k)
        res["median"][k] = {"zaya": za, "reference": rb}
        res["ratio"][k] = za / rb if rate else rb / za
        print(f"{label:14s} {za:10.3f} {rb:10.3f}   {res['ratio'][k]:8.2f}x")
    agree = agreement(a_runs[0]["generated_ids"], b_runs[0]["generated_ids"])
    res["greedy_agreement"] = agree
    print(f"greedy tokens: {agree}")
    print(f"peak RSS: zaya {max(r['peak_rss_bytes'] for r in a_runs) / 1e9:.2f} GB, reference {max(r['peak_rss_bytes'] for r in b_runs) / 1e9:.2f} GB (incl. dequantizing the experts at load)")
    if args.json:
        args.json.write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
