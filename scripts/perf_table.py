#!/usr/bin/env python3
"""Prints the results tables of docs/performance.md (markdown) from the JSON files that
scripts/perf-report.sh writes into DIR (default target/perf-report). Standard library only."""

from __future__ import annotations

import json
import sys
from pathlib import Path


def load(out: Path, name: str):
    p = out / name
    return json.loads(p.read_text()) if p.exists() else None


def bench_row(r: dict) -> str:
    m, b, g = r["median"], r["bound"], r["graph"]
    la = ", ".join(f"{t['load_average'][0]:.1f}" for t in r["trials"] if t.get("load_average"))
    rss = m.get("peak_rss_bytes") or 0
    t0 = r["trials"][0]
    anon, file = (t0.get("rss_anon_bytes_end") or 0) / 1e9, (t0.get("rss_file_bytes_end") or 0) / 1e9
    return (
        f"| {r['options']['kernels']}{' (touch-all)' if r['options'].get('touch_all') else ''} | {r['prompt_tokens']} / {r['generation_tokens']} | {m['prompt_tps']:.1f} "
        f"| {m['ttft_s']:.2f} | {m['generation_tps']:.2f} | {b['tok_per_s']:.1f} | {b['decode_pct_of_bound']:.0f}% "
        f"| {g['nodes_per_decode_step']} ({g['as_type_per_decode_step']}) "
        f"| {rss / 1e9:.2f} GB = {r['peak_rss_over_bundle'] or 0:.2f}x | {anon:.2f} + {file:.2f} GB "
        f"| {m['peak_mlx_bytes'] / 1e9:.2f} GB "
        f"| {b['copy_bandwidth_gbs']:.1f} | {la} |"
    )


def main() -> None:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "target/perf-report")
    runs = [r for r in (load(out, n) for n in ["full-p128.json", "full-p1024.json", "full-touch.json", "full-plain.json"]) if r]
    if runs:
        r = runs[0]
        mc = r["machine"]
        mb = r["bound"]["bytes"]
        print(
            f"Machine: {mc['cpu']}, {mc['cores']} cores, {mc['mem_total_bytes'] / 2**30:.1f} GiB RAM, kernel ISA "
            f"{mc['kernel_isa']}. Bundle: {r['model']}, {r['bundle_bytes'] / 2**30:.2f} GiB, {r['half_layers']} half-layers.\n"
        )
        print(
            "| kernels | prompt / generated | prefill tok/s | TTFT s | decode tok/s | bound tok/s | decode % of bound "
            "| graph nodes per decode step (AsType) | peak RSS vs bundle | resident anon + file | MLX peak | copy GB/s "
            "| load avg per trial |"
        )
        print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
        for r in runs:
            print(bench_row(r))
        r = runs[0]
        mb = r["bound"]["bytes"]
        mbt = r["bound"]["bytes_per_token"]
        print(
            f"\nBytes per decode token at context {runs[0]['bound']['context']}: {mbt / 1e6:.1f} MB = experts "
            f"{mb['experts'] / 1e6:.1f} + lm_head and embedding {mb['lm_head_and_embedding'] / 1e6:.1f} + attention "
            f"{mb['attention'] / 1e6:.1f} + router {mb['router'] / 1e6:.1f} + norms {mb['norms'] / 1e6:.2f} + state "
            f"{mb['state'] / 1e6:.1f}."
        )
    s = load(out, "side-by-side.json")
    if s:
        la = [r["load_average"] for r in s["zaya"] + s["reference"]]
        print(
            f"\nSide by side: {s['bundle']}, prompt {s['prompt_tokens']}, {s['generation_tokens']} generated, "
            f"{s['pairs']} alternating pairs (medians; load average {min(la):.1f}–{max(la):.1f}):\n"
        )
        print("| | zaya | Python reference | zaya speed-up |")
        print("|---|---|---|---|")
        for k, label in [("generation_tps", "decode tok/s"), ("prompt_tps", "prefill tok/s"), ("ttft_s", "TTFT s"), ("load_s", "load s")]:
            v = s["median"][k]
            print(f"| {label} | {v['zaya']:.3f} | {v['reference']:.3f} | {s['ratio'][k]:.2f}x |")
        print(f"\nGreedy tokens, zaya vs reference: {s['greedy_agreement']}.")
    crit = out / "criterion-model.txt"
    ratios(out, runs, s, crit)
    if crit.exists():
        print("\nCriterion (`cargo bench --bench model`), median time per call [95% interval]:\n")
        for name, lo, mid, hi in criterion_times(crit.read_text()):
            print(f"- {name}: {mid} [{lo} – {hi}]")


def seconds(v: str) -> float:
    """'316.97 µs' -> seconds."""
    num, unit = v.split()
    return float(num) * {"ns": 1e-9, "µs": 1e-6, "us": 1e-6, "ms": 1e-3, "s": 1.0}[unit]


def ratios(out: Path, runs: list, s, crit: Path) -> None:
    """The headline ratios, each from figures of this one report run."""
    print("\nRatios from this run:\n")
    by = {(r["options"]["kernels"], r["prompt_tokens"], bool(r["options"].get("touch_all"))): r for r in runs}
    for key, r in by.items():
        if key[0] == "fused":
            print(f"- decode at prompt {key[1]}{' (touch-all)' if key[2] else ''}: "
                  f"{r['bound']['decode_pct_of_bound']:.0f}% of the bound measured in the same process")
    fused, plain = by.get(("fused", 128, False)), next((r for k, r in by.items() if k[0] == "plain"), None)
    if fused and plain:
        print(f"- whole-model decode, fused kernels vs plain MLX ops: "
              f"{fused['median']['generation_tps'] / plain['median']['generation_tps']:.0f}x")
    touch = by.get(("fused", 128, True))
    if touch and touch["peak_rss_over_bundle"]:
        print(f"- peak RSS with every weight resident: {touch['peak_rss_over_bundle']:.2f}x the bundle")
    if crit.exists():
        t = {name: seconds(mid) for name, _, mid, _ in criterion_times(crit.read_text())}
        for label, a, b in [
            ("experts at decode (N=1), fused vs plain", "expert_matmul/plain/decode N=1", "expert_matmul/fused/decode N=1"),
            ("experts at prefill (N=128), fused vs plain", "expert_matmul/plain/prefill N=128", "expert_matmul/fused/prefill N=128"),
            ("lm_head GEMV, ours vs MLX quantized_matmul", "lm_head_gemv/mlx_quantized_matmul/N=1", "lm_head_gemv/ours/N=1"),
            ("CCA conv T=1, primitive vs portable", "cca_conv/portable/T=1", "cca_conv/primitive/T=1"),
            ("attention half-layer at decode, fused vs plain", "half_layer/attention/plain/T=1 ctx=128", "half_layer/attention/fused/T=1 ctx=128"),
            ("MoE half-layer at decode, fused vs plain", "half_layer/moe/plain/T=1 ctx=128", "half_layer/moe/fused/T=1 ctx=128"),
        ]:
            if a in t and b in t:
                print(f"- {label}: {t[a] / t[b]:.0f}x")
    if s:
        print(f"- vs the Python MLX reference: decode {s['ratio']['generation_tps']:.1f}x, prefill "
              f"{s['ratio']['prompt_tps']:.0f}x, greedy tokens {s['greedy_agreement']}")


def criterion_times(text: str):
    """(benchmark, low, median, high) from criterion's console output; the `change:` block that
    follows a result (comparison with the previous run) is skipped."""
    name = None
    for line in text.splitlines():
        s = line.strip()
        if not s:
            continue
        if "time:" in s:
            head, _, rest = s.partition("time:")
            if head.strip():
                name = head.strip()
            if name is None:
                continue  # the `change:` block's time line
            v = rest.strip().strip("[]").split()
            if len(v) >= 6:
                yield name, f"{v[0]} {v[1]}", f"{v[2]} {v[3]}", f"{v[4]} {v[5]}"
            name = None
        elif not s.startswith(("thrpt:", "change:", "Found", "Performance", "No change", "Change within")) and "/" in s and not s[0].isdigit() and " outliers" not in s:
            name = s

if __name__ == "__main__":
    main()
