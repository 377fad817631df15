#!/usr/bin/env python3
"""Side-by-side CPU speed: zaya-mlx (`zaya bench --json`) against Hugging Face transformers'
upstream ZAYA model (`transformers.models.zaya.ZayaForCausalLM`, PyTorch on the CPU: the tool a
Linux user of ZAYA1-8B would otherwise run), prefill and decode, bf16 and f32, one invocation.

    python scripts/hf_side_by_side.py [--bundle DIR] [--depths 2,6,10] [-p 512] [-g 16] [-n 3]
                                      [--pairs 1] [--dtypes bf16,f32] [--threads N] [--zaya PATH]
                                      [--hf-python PATH] [--skip-zaya] [--skip-hf]
                                      [--json OUT] [--markdown] [--wait-quiet S]

zaya runs on the full-size bundle (default $ZAYA_FULL_BUNDLE, else /work/zaya1-8b-synth, as
scripts/perf-report.sh; write it with `zaya synth --preset zaya1-8b --out DIR`: 80 half-layers = 40 attention+MoE
blocks, measured directly): `zaya bench --model B -p P -g G -n N --warmup 1 --json`, once with the
default f32 activations and once with `--dtype bf16`; the median trial of each run is used.

HF does not fit at full depth (random weights in memory: ≈1.6 GB per block in f32, 0.8 GB in bf16,
plus the 262272×2048 tied embedding), so it is measured at reduced depth and extrapolated:
  * model: ZayaForCausalLM built from the bundle's config.json at the real dimensions (hidden 2048,
    8 q / 2 kv heads of 128, 16 experts of ffn 4096, top-1 router of width 256, vocab 262272, tied
    lm_head; the bundle's Megatron-style keys mapped onto ZayaConfig's, quantization keys dropped)
    with num_hidden_layers = D. One HF decoder layer is one attention+MoE block (two of the bundle's
    half-layers; ZayaConfig's own default is 40), so the full model is 40 blocks.
  * weights: random, seeded (torch.manual_seed). HF's own _init_weights for every tensor except the
    expert stacks and the embedding, which are filled by tiling a seeded N(0, 0.02) pool (HF's
    normal_ over 3 GB takes ~10 s per block on 2 cores; speed does not depend on the values; the
    router, and so the expert choice, is initialised by HF as usual).
  * runtime: torch dtype bf16 or f32 for every parameter (the model keeps its residual stream in f32
    itself), the default attention (sdpa) and experts (grouped_mm when available) implementations,
    torch.set_num_threads(--threads, default: all cores, as zaya uses), eval(),
    torch.inference_mode(), batch 1.
  * prefill: one forward over P random ids into a fresh DynamicCache(config) (the cache generate()
    builds for this model: attention KV + CCA conv/recurrent state) with logits_to_keep=1 (only the
    last position's logits, as generate() does), then the argmax; time = forward + argmax.
  * decode: G-1 single-token forwards through that cache, each followed by the argmax fed back
    (generate()'s greedy loop without its bookkeeping); decode tok/s = (G-1) / their total time.
    This matches zaya bench: prefill tok/s = P / TTFT, decode tok/s = (G-1) / (last - first token).
  * trials: one worker process per (dtype, D) (memory freed in between): build, 1 warm-up trial,
    then -n timed trials; the median per quantity.
  * fit: per dtype, least squares time = a + b·D over the depths, for the prefill seconds and for
    the decode seconds per token: b = cost of one block, a = embedding + final norm + lm_head +
    per-call overhead; extrapolated to the bundle's 40 blocks (a + 40·b). The residuals are printed
    to show how linear the depths are.
Depths: by default 2,6,10 in bf16 and 2,4,6 in f32 (f32 at D=10 would need ≈19 GB); --depths sets
both. Rounds: --pairs times {HF at every depth and dtype, then zaya f32, then zaya bf16}, medians
across rounds. Prints the load average before and after, the CPU, torch/transformers versions and
threads (run it on a quiet machine: torch's OpenMP threads slow down several-fold when another process
takes a core; --wait-quiet S first waits up to S seconds for a load average below 0.5); --json
writes every raw number, --markdown also prints the table as Markdown.
The driver needs only the standard library; the HF worker runs under --hf-python (default
<repo>/.venv-hf/bin/python, made by scripts/setup-python-hf.sh).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_BUNDLE = Path(os.environ.get("ZAYA_FULL_BUNDLE", "/work/zaya1-8b-synth"))
DEFAULT_DEPTHS = {"bf16": [2, 6, 10], "f32": [2, 4, 6]}
DTYPE_BYTES = {"bf16": 2, "f32": 4}


def loadavg() -> list[float]:
    try:
        return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
    except OSError:
        return [float("nan")] * 3


def cpu_busy() -> tuple[float, float]:
    """(busy, steal) CPU seconds of the whole machine so far, from /proc/stat (busy = user + nice +
    system + irq + softirq; guest time is part of user)."""
    try:
        f = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    except (OSError, ValueError):
        return float("nan"), float("nan")
    tck = os.sysconf("SC_CLK_TCK")
    return (f[0] + f[1] + f[2] + f[5] + f[6]) / tck, (f[7] if len(f) > 7 else 0) / tck


class OtherLoad:
    """CPU used by other processes (in cores) over an interval: the machine's busy time minus this
    process's own (and, with children=True, its waited-for children's), divided by the wall time;
    plus the hypervisor's steal. A quiet machine reads ~0."""

    def __init__(self, children: bool = False):
        self.children = children
        self.t0, (self.b0, self.s0), self.o0 = time.perf_counter(), cpu_busy(), self._own()

    def _own(self) -> float:
        t = os.times()
        return t.children_user + t.children_system if self.children else t.user + t.system

    def stop(self) -> dict:
        wall = time.perf_counter() - self.t0
        b, st = cpu_busy()
        own = self._own() - self.o0
        return {"other_cores": max(0.0, (b - self.b0 - own) / wall), "steal_cores": (st - self.s0) / wall,
                "own_cores": own / wall, "wall_s": wall}


def cpu_model() -> str:
    """/proc/cpuinfo's model name with its family and model numbers (one name covers several CPU
    generations), else platform.processor()."""
    try:
        fields: dict[str, str] = {}
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if not line.strip():
                break  # the first processor only
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
        if "model name" in fields:
            name = fields["model name"]
            if fields.get("cpu family", "").isdigit() and fields.get("model", "").isdigit():
                name += f" (family {fields['cpu family']}, model {fields['model']})"
            return name
    except OSError:
        pass
    return platform.processor() or "unknown"


def mem_available() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


# ---- the HF model (shared by the driver's memory estimate and the worker) -----------------------


def hf_config_kwargs(bundle_cfg: dict, depth: int) -> dict:
    """ZayaConfig keyword arguments from a bundle's config.json (Megatron-style keys) at `depth`
    attention+MoE blocks. Quantization keys (quantization, mxtq_*, weight_format) are not carried."""
    c = bundle_cfg
    act = c.get("activation_func", "swiglu")
    if act not in ("swiglu", "silu"):
        raise SystemExit(f"unsupported activation_func {act!r} (ZayaConfig's experts are SwiGLU)")
    return {
        "vocab_size": c["vocab_size"],
        "hidden_size": c["hidden_size"],
        "num_hidden_layers": depth,
        "num_attention_heads": c.get("cca_num_q_heads", c["num_attention_heads"]),
        "num_key_value_heads": c.get("num_query_groups", c["num_key_value_heads"]),
        "head_dim": c.get("kv_channels", c.get("head_dim", 128)),
        "hidden_act": "silu",
        "max_position_embeddings": c.get("max_position_embeddings", 131072),
        "rms_norm_eps": c.get("norm_epsilon", c.get("rms_norm_eps", 1e-5)),
        "tie_word_embeddings": c.get("tie_word_embeddings", True),
        "rope_parameters": {
            "hybrid": {
                "rope_type": "default",
                "rope_theta": float(c.get("rope_theta", 5_000_000.0)),
                "partial_rotary_factor": float(c.get("partial_rotary_factor", 0.5)),
            }
        },
        "sliding_window": c.get("sliding_window"),
        "attention_dropout": 0.0,
        "moe_intermediate_size": c.get("ffn_hidden_size", c.get("moe_intermediate_size")),
        "num_experts_per_tok": c.get("moe_router_topk", 1),
        "num_experts": c["num_experts"],
        "attention_bias": c.get("attention_bias", c.get("add_bias_linear", False)),
        "lm_head_bias": c.get("lm_head_bias", False),
        "router_hidden_size": c.get("zaya_mlp_expansion", 256),
        "pad_token_id": c.get("pad_token_id", 0),
        "bos_token_id": c.get("bos_token_id", 2),
        "eos_token_id": c.get("eos_token_id", 106),
    }


def estimate_params(bundle_cfg: dict, depth: int) -> int:
    """Parameters of the HF model at `depth` blocks (tied embedding counted once; small terms approximate)."""
    k = hf_config_kwargs(bundle_cfg, depth)
    h, f, e = k["hidden_size"], k["moe_intermediate_size"], k["num_experts"]
    q, kv = k["num_attention_heads"] * k["head_dim"], k["num_key_value_heads"] * k["head_dim"]
    r = k["router_hidden_size"]
    block = e * 3 * f * h + h * (q + 2 * kv) + q * h + h * r + 2 * r * r + (e + 1) * r + 10 * h
    return k["vocab_size"] * h + depth * block


def hf_worker(args: argparse.Namespace) -> None:
    import resource

    import torch
    import transformers
    from transformers import DynamicCache
    from transformers.initialization import no_init_weights
    from transformers.models.zaya import ZayaConfig, ZayaForCausalLM

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    dtype = {"bf16": torch.bfloat16, "f32": torch.float32}[args.dtype]
    bundle_cfg = json.loads((Path(args.bundle) / "config.json").read_text())
    config = ZayaConfig(**hf_config_kwargs(bundle_cfg, args.depth))

    t0 = time.perf_counter()
    with no_init_weights():
        model = ZayaForCausalLM._from_config(config, dtype=dtype)
    # The big tensors: a seeded N(0, 0.02) pool tiled over them (an odd pool length, so no two
    # experts get the same values); flagged so that HF's init leaves them alone.
    std = config.initializer_range
    pool = torch.randn(4_000_037, dtype=torch.float32).mul_(std).to(dtype)
    big = [model.model.embed_tokens.weight]
    for layer in model.model.layers:
        big += [layer.mlp.experts.gate_up_proj, layer.mlp.experts.down_proj]
    with torch.no_grad():
        for p in big:
            flat = p.view(-1)
            n, m = flat.numel(), pool.numel()
            full = n // m
            if full:
                flat[: full * m].view(full, m).copy_(pool.expand(full, m))
            flat[full * m :].copy_(pool[: n - full * m])
            p._is_hf_initialized = True
    model.lm_head.weight._is_hf_initialized = True  # tied to the embedding just below
    model.init_weights()  # HF's _init_weights for the rest (router, attention, norms, conv), then tie
    model.eval()
    build_s = time.perf_counter() - t0
    if model.lm_head.weight.data_ptr() != model.model.embed_tokens.weight.data_ptr():
        raise SystemExit("lm_head is not tied to the embedding")
    params = sum(p.numel() for p in model.parameters())
    if any(p.dtype != dtype for p in model.parameters()):
        raise SystemExit(f"not every parameter is {dtype}")

    gen = torch.Generator().manual_seed(args.seed)
    ids = torch.randint(0, config.vocab_size, (1, args.prompt_tokens), generator=gen)
    steps = args.generation_tokens - 1

    def trial() -> dict:
        cache = DynamicCache(config=model.config)
        t = time.perf_counter()
        out = model(input_ids=ids, cache=cache, use_cache=True, logits_to_keep=1)
        tok = out.logits[:, -1].argmax(-1, keepdim=True)
        tokens = [int(tok)]
        t1 = time.perf_counter()
        for _ in range(steps):
            out = model(input_ids=tok, cache=cache, use_cache=True, logits_to_keep=1)
            tok = out.logits[:, -1].argmax(-1, keepdim=True)
            tokens.append(int(tok))
        t2 = time.perf_counter()
        return {
            "prefill_s": t1 - t,
            "decode_s": t2 - t1,
            "logits_positions": int(out.logits.shape[1]),
            "cache_len": int(cache.get_seq_length()),
            "tokens": tokens,
        }

    with torch.inference_mode():
        cache = DynamicCache(config=model.config)
        probe = model(input_ids=ids[:, :4], cache=cache, use_cache=True, logits_to_keep=1)
        logits_to_keep_ok = probe.logits.shape[1] == 1
        del probe, cache
        warm = trial()
        la = loadavg()
        other = OtherLoad()
        trials = [trial() for _ in range(args.num_trials)]
        other = other.stop()
    for t in trials:
        t["decode_s_per_tok"] = t["decode_s"] / steps if steps else float("nan")
    if trials[0]["cache_len"] != args.prompt_tokens + steps:
        raise SystemExit(f"cache length {trials[0]['cache_len']} != {args.prompt_tokens + steps}")
    prefill_s = statistics.median(t["prefill_s"] for t in trials)
    dspt = statistics.median(t["decode_s_per_tok"] for t in trials)
    print(
        json.dumps(
            {
                "dtype": args.dtype,
                "depth": args.depth,
                "prompt_tokens": args.prompt_tokens,
                "generation_tokens": args.generation_tokens,
                "torch": torch.__version__,
                "transformers": transformers.__version__,
                "threads": torch.get_num_threads(),
                "attn_implementation": model.config._attn_implementation,
                "experts_implementation": model.config._experts_implementation,
                "cache_class": type(DynamicCache(config=model.config)).__name__,
                "logits_to_keep_ok": bool(logits_to_keep_ok),
                "params": params,
                "build_s": build_s,
                "warmup": warm,
                "trials": trials,
                "prefill_s": prefill_s,
                "decode_s_per_tok": dspt,
                "prompt_tps": args.prompt_tokens / prefill_s,
                "generation_tps": 1.0 / dspt,
                "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                "load_average": la,
                "other_load": other,
            }
        ),
        flush=True,
    )


# ---- orchestration -------------------------------------------------------------------------------


def run(cmd: list[str], env: dict | None = None) -> str:
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if p.returncode != 0:
        sys.stderr.write(p.stderr[-4000:])
        raise SystemExit(f"command failed ({p.returncode}): {' '.join(cmd)}")
    return p.stdout


def fit(depths: list[int], ys: list[float]) -> dict:
    """Least squares y = a + b·D; with one depth only, a = 0 (b = y/D)."""
    n = len(depths)
    if n == 1:
        a, b = 0.0, ys[0] / depths[0]
    else:
        md, my = statistics.fmean(depths), statistics.fmean(ys)
        sxx = sum((d - md) ** 2 for d in depths)
        b = sum((d - md) * (y - my) for d, y in zip(depths, ys)) / sxx
        a = my - b * md
    res = [y - (a + b * d) for d, y in zip(depths, ys)]
    return {"a": a, "b": b, "residuals": res, "rel_residuals": [r / y for r, y in zip(res, ys)]}


def parse_list(s: str, conv=str) -> list:
    return [conv(x) for x in s.split(",") if x.strip()]


def fmt_ratio(x: float | None) -> str:
    return "—" if x is None else f"{x:.2f}×"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", type=Path, default=DEFAULT_BUNDLE, help="zaya bundle (its config.json shapes the HF model)")
    ap.add_argument("--depths", help="HF depths in attention+MoE blocks, e.g. 2,6,10 (default: bf16 2,6,10; f32 2,4,6)")
    ap.add_argument("-p", "--prompt-tokens", type=int, default=512)
    ap.add_argument("-g", "--generation-tokens", type=int, default=16)
    ap.add_argument("-n", "--num-trials", type=int, default=3, help="timed trials per run (after 1 warm-up)")
    ap.add_argument("--pairs", type=int, default=1, help="rounds of {HF runs, zaya f32, zaya bf16}")
    ap.add_argument("--dtypes", default="bf16,f32")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads (default: all cores, as zaya)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--zaya", type=Path, default=ROOT / "target" / "release" / "zaya")
    ap.add_argument("--hf-python", type=Path, default=Path(os.environ.get("ZAYA_HF_VENV") or ROOT / ".venv-hf") / "bin" / "python")
    ap.add_argument("--skip-zaya", action="store_true")
    ap.add_argument("--skip-hf", action="store_true")
    ap.add_argument("--json", type=Path, help="write every raw number here")
    ap.add_argument("--markdown", action="store_true", help="also print the table as Markdown")
    ap.add_argument("--wait-quiet", type=float, default=0, metavar="S",
                    help="first wait up to S seconds for the 1-minute load average to fall below 0.5")
    # worker mode (internal)
    ap.add_argument("--hf-worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--depth", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--dtype", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.hf_worker:
        hf_worker(args)
        return

    p, g, n = args.prompt_tokens, args.generation_tokens, args.num_trials
    if p < 1 or g < 2 or n < 1:
        raise SystemExit("need -p >= 1, -g >= 2 and -n >= 1")
    dtypes = parse_list(args.dtypes)
    for d in dtypes:
        if d not in DTYPE_BYTES:
            raise SystemExit(f"unknown dtype {d!r} (bf16, f32)")
    depths = {d: (parse_list(args.depths, int) if args.depths else DEFAULT_DEPTHS[d]) for d in dtypes}
    bundle_cfg = json.loads((args.bundle / "config.json").read_text())
    full_blocks = bundle_cfg["num_hidden_layers"] // 2  # the bundle counts half-layers
    if not args.skip_zaya and not args.zaya.exists():
        raise SystemExit(f"{args.zaya} not found: run `cargo build --release` first (or --skip-zaya)")
    if not args.skip_hf:
        if not args.hf_python.exists():
            raise SystemExit(f"{args.hf_python} not found: run scripts/setup-python-hf.sh (or pass --hf-python, or --skip-hf)")
        avail = mem_available()
        for d in dtypes:
            for depth in depths[d]:
                need = estimate_params(bundle_cfg, depth) * DTYPE_BYTES[d]
                if avail is not None and need > 0.85 * avail:
                    raise SystemExit(
                        f"HF {d} at D={depth} needs ≈{need / 2**30:.1f} GiB of weights, more than 85% of the "
                        f"{avail / 2**30:.1f} GiB available: choose smaller --depths"
                    )

    deadline = time.monotonic() + args.wait_quiet
    while loadavg()[0] >= 0.5 and time.monotonic() < deadline:
        time.sleep(10)
    la_before = loadavg()
    if la_before[0] >= 0.5:
        print(f"WARNING: the machine is busy (load average {la_before[0]:.2f}): the numbers will be noisy; torch's "
              "OpenMP threads suffer most when a core is taken", file=sys.stderr)
    print(f"CPU {cpu_model()}, {os.cpu_count()} cores; load average before {la_before[0]:.2f} {la_before[1]:.2f} {la_before[2]:.2f}")
    print(f"bundle {args.bundle} ({bundle_cfg['num_hidden_layers']} half-layers = {full_blocks} blocks, hidden "
          f"{bundle_cfg['hidden_size']}, {bundle_cfg['num_experts']} experts of ffn {bundle_cfg.get('ffn_hidden_size')}, "
          f"vocab {bundle_cfg['vocab_size']}); prompt {p} tokens, {g} generated, {n} timed trials (+1 warm-up) per run, "
          f"{args.pairs} round(s)")
    if not args.skip_hf:
        print("HF: " + "; ".join(f"{d} at D = {','.join(map(str, depths[d]))} blocks" for d in dtypes)
              + f", torch threads {args.threads}, extrapolated to {full_blocks} blocks by a least-squares fit t = a + b·D")

    hf_runs: list[dict] = []
    zaya_runs: list[dict] = []
    worker_env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads),
                      TRANSFORMERS_VERBOSITY="error", PYTHONWARNINGS="ignore")
    for rnd in range(args.pairs):
        if not args.skip_hf:
            for d in dtypes:
                for depth in depths[d]:
                    t0 = time.perf_counter()
                    out = run([str(args.hf_python), str(Path(__file__).resolve()), "--hf-worker", "--bundle", str(args.bundle),
                               "--depth", str(depth), "--dtype", d, "-p", str(p), "-g", str(g), "-n", str(n),
                               "--threads", str(args.threads), "--seed", str(args.seed)], env=worker_env)
                    r = json.loads(out.strip().splitlines()[-1])
                    r["round"] = rnd
                    r["wall_s"] = time.perf_counter() - t0
                    hf_runs.append(r)
                    print(f"r{rnd + 1} HF   {d:4s} D={depth:<3d} prefill {r['prefill_s']:8.3f} s ({r['prompt_tps']:8.2f} tok/s)  "
                          f"decode {r['decode_s_per_tok'] * 1e3:8.1f} ms/tok ({r['generation_tps']:6.2f} tok/s)  build {r['build_s']:5.1f} s  "
                          f"peak RSS {r['peak_rss_bytes'] / 1e9:5.2f} GB  other CPU {r['other_load']['other_cores']:.2f} cores "
                          f"(steal {r['other_load']['steal_cores']:.2f})", flush=True)
        if not args.skip_zaya:
            for d in ("f32", "bf16"):
                cmd = [str(args.zaya), "bench", "--model", str(args.bundle), "-p", str(p), "-g", str(g), "-n", str(n),
                       "--warmup", "1", "--seed", str(args.seed), "--json"]
                if d != "f32":
                    cmd += ["--dtype", d]
                t0 = time.perf_counter()
                other = OtherLoad(children=True)
                z = json.loads(run(cmd))
                other = other.stop()
                zr = {"round": rnd, "dtype": d, "wall_s": time.perf_counter() - t0, "other_load": other, "prompt_tps": z["median"]["prompt_tps"],
                      "generation_tps": z["median"]["generation_tps"], "ttft_s": z["median"]["ttft_s"],
                      "peak_rss_bytes": z["median"]["peak_rss_bytes"], "load_average": z["trials"][-1]["load_average"],
                      "bench": {k: v for k, v in z.items() if k not in ("prompt_ids",)}}
                zaya_runs.append(zr)
                print(f"r{rnd + 1} zaya {d:4s} (80 half-layers) prefill {zr['prompt_tps']:8.2f} tok/s  decode "
                      f"{zr['generation_tps']:6.2f} tok/s  ttft {zr['ttft_s']:7.3f} s  peak RSS {zr['peak_rss_bytes'] / 1e9:5.2f} GB  "
                      f"other CPU {other['other_cores']:.2f} cores (steal {other['steal_cores']:.2f})", flush=True)
    la_after = loadavg()

    res: dict = {"cpu": cpu_model(), "cores": os.cpu_count(), "load_average_before": la_before, "load_average_after": la_after,
                 "bundle": str(args.bundle), "full_blocks": full_blocks, "prompt_tokens": p, "generation_tokens": g,
                 "num_trials": n, "pairs": args.pairs, "threads": args.threads, "depths": depths, "hf_runs": hf_runs,
                 "zaya_runs": zaya_runs, "fits": {}, "table": {}}
    rows: dict[str, tuple[float, float]] = {}

    if hf_runs:
        h0 = hf_runs[0]
        print(f"\nHF: torch {h0['torch']}, transformers {h0['transformers']}, {h0['threads']} threads, attention "
              f"{h0['attn_implementation']}, experts {h0['experts_implementation']}, cache {h0['cache_class']}, "
              f"logits_to_keep=1 {'honoured (1 logits row)' if h0['logits_to_keep_ok'] else 'NOT honoured'}")
        res.update({k: h0[k] for k in ("torch", "transformers", "attn_implementation", "experts_implementation", "cache_class")})
        print("HF method: prefill = one forward over P ids (logits_to_keep=1) + argmax; decode = G-1 single-token forwards "
              "through the model's DynamicCache, greedy; median of the trials, then of the rounds; fit t = a + b·D per dtype.")
        for d in dtypes:
            ds = depths[d]
            pre = [statistics.median(r["prefill_s"] for r in hf_runs if r["dtype"] == d and r["depth"] == x) for x in ds]
            dec = [statistics.median(r["decode_s_per_tok"] for r in hf_runs if r["dtype"] == d and r["depth"] == x) for x in ds]
            fp, fd = fit(ds, pre), fit(ds, dec)
            t_pre, t_dec = fp["a"] + full_blocks * fp["b"], fd["a"] + full_blocks * fd["b"]
            if fp["b"] <= 0 or fd["b"] <= 0 or t_pre <= 0 or t_dec <= 0:
                print(f"WARNING: HF {d}: the time does not grow with the depth (per-block cost <= 0): the noise is larger "
                      "than the per-block cost (see 'other CPU'; use more trials, wider --depths or a quieter machine); "
                      "its extrapolation is left out", file=sys.stderr)
            else:
                rows[f"HF {d}"] = (p / t_pre, 1.0 / t_dec)
            res["fits"][d] = {"depths": ds, "prefill_s": pre, "decode_s_per_tok": dec, "prefill_fit": fp, "decode_fit": fd,
                              "prefill_s_at_full": t_pre, "decode_s_per_tok_at_full": t_dec,
                              "prompt_tps_at_full": p / t_pre, "generation_tps_at_full": 1.0 / t_dec}
            print(f"\nHF {d} fit over D = {', '.join(map(str, ds))}:")
            print(f"  prefill  {p} tokens: per block {fp['b']:.3f} s, intercept {fp['a']:+.3f} s (embedding + lm_head + overhead) "
                  f"-> {full_blocks} blocks {t_pre:.2f} s = {p / t_pre:.2f} tok/s")
            print("           measured " + ", ".join(f"D={x}: {y:.3f} s" for x, y in zip(ds, pre))
                  + "; residuals " + ", ".join(f"{r * 1e3:+.1f} ms ({q * 100:+.1f}%)" for r, q in zip(fp["residuals"], fp["rel_residuals"])))
            print(f"  decode per token: per block {fd['b'] * 1e3:.2f} ms, intercept {fd['a'] * 1e3:+.2f} ms "
                  f"-> {full_blocks} blocks {t_dec * 1e3:.1f} ms = {1.0 / t_dec:.2f} tok/s")
            print("           measured " + ", ".join(f"D={x}: {y * 1e3:.1f} ms" for x, y in zip(ds, dec))
                  + "; residuals " + ", ".join(f"{r * 1e3:+.2f} ms ({q * 100:+.1f}%)" for r, q in zip(fd["residuals"], fd["rel_residuals"])))

    others = [r["other_load"]["other_cores"] for r in hf_runs + zaya_runs]
    res["max_other_cores"] = max(others) if others else None
    if others:
        print(f"\nother processes' CPU during the runs: at most {max(others):.2f} cores (median {statistics.median(others):.2f})")
        if max(others) > 0.1:
            print(f"WARNING: other processes used up to {max(others):.2f} cores during the runs: the numbers are disturbed; "
                  "rerun on a quiet machine", file=sys.stderr)
    for d in ("f32", "bf16"):
        zs = [z for z in zaya_runs if z["dtype"] == d]
        if zs:
            rows[f"zaya {d}"] = (statistics.median(z["prompt_tps"] for z in zs), statistics.median(z["generation_tps"] for z in zs))

    def ratio(row: str, base: str, i: int) -> float | None:
        return rows[row][i] / rows[base][i] if row.startswith("zaya") and base in rows else None

    order = [r for r in ("HF bf16", "HF f32", "zaya f32", "zaya bf16") if r in rows]
    note = {"HF bf16": f"{full_blocks} blocks, fitted", "HF f32": f"{full_blocks} blocks, fitted",
            "zaya f32": f"{full_blocks} blocks, measured", "zaya bf16": f"{full_blocks} blocks, measured"}
    header = ["", f"prefill tok/s (P={p})", f"decode tok/s (G={g})", "prefill vs HF bf16", "prefill vs HF f32",
              "decode vs HF bf16", "decode vs HF f32"]
    table = []
    for r in order:
        table.append([f"{r} ({note[r]})", f"{rows[r][0]:.2f}", f"{rows[r][1]:.2f}", fmt_ratio(ratio(r, "HF bf16", 0)),
                      fmt_ratio(ratio(r, "HF f32", 0)), fmt_ratio(ratio(r, "HF bf16", 1)), fmt_ratio(ratio(r, "HF f32", 1))])
        res["table"][r] = {"prompt_tps": rows[r][0], "generation_tps": rows[r][1],
                           "prefill_ratio_vs_hf_bf16": ratio(r, "HF bf16", 0), "prefill_ratio_vs_hf_f32": ratio(r, "HF f32", 0),
                           "decode_ratio_vs_hf_bf16": ratio(r, "HF bf16", 1), "decode_ratio_vs_hf_f32": ratio(r, "HF f32", 1)}
    if table:
        widths = [max(len(header[i]), *(len(row[i]) for row in table)) for i in range(len(header))]
        print("\n" + "  ".join(h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(header, widths))))
        for row in table:
            print("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))))
        print("ratios: zaya / HF (tok/s over tok/s, higher = zaya faster)")
    print(f"load average after {la_after[0]:.2f} {la_after[1]:.2f} {la_after[2]:.2f}")
    if args.markdown and table:
        print()
        print("| " + " | ".join(header) + " |")
        print("|" + "|".join([" --- "] + [" ---: "] * (len(header) - 1)) + "|")
        for row in table:
            print("| " + " | ".join(row) + " |")
        extra = ""
        if hf_runs:
            extra = (f" HF: transformers {res['transformers']} `ZayaForCausalLM`, torch {res['torch']}, {args.threads} threads, "
                     f"random weights at the real dimensions, measured at D = "
                     + "; ".join(f"{','.join(map(str, depths[d]))} blocks ({d})" for d in dtypes)
                     + f" and fitted to {full_blocks} (t = a + b·D).")
        quiet = "" if res["max_other_cores"] is None else f", other processes ≤ {res['max_other_cores']:.2f} cores"
        print(f"\n{cpu_model()}, {os.cpu_count()} cores; P={p}, G={g}, median of {n} trials × {args.pairs} round(s); "
              f"load average {la_before[0]:.2f} before, {la_after[0]:.2f} after{quiet}.{extra}")
    if args.json:
        args.json.write_text(json.dumps(res, indent=2))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
