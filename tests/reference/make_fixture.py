#!/usr/bin/env python3
"""Generates one named test fixture for zaya-mlx: a random Zyphra-format float source checkpoint, the
JANGTQ4 bundle the `jang` converter makes from it, and float32 (and bf16) reference outputs of the
Python MLX reference model `jang_tools.zaya.model` on that bundle.

    python make_fixture.py --config tiny --out DIR [--seed N] [--configs fixtures.json]

Writes into DIR (which must be absent or empty):
    source/                    config.json (legacy revision), generation_config.json,
                               model-00001-of-00001.safetensors (+ index), per-expert linear_fc1/fc2
    bundle/                    output of `python -m jang_tools.convert_zaya_jangtq source bundle JANGTQ4`
    reference.safetensors      f32 reference (tensor names: see README.md in this folder)
    reference_bf16.safetensors the same names, the reference computing in bf16 (when listed in variants)
    meta.json                  config, versions and sanity checks of the reference itself
    timings.json               seconds per step (the only output that is not byte-reproducible)

Deterministic: the same config and seed give byte-identical files (except timings.json).
"""

from __future__ import annotations

import argparse
import json
import os
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.dont_write_bytecode = True  # no __pycache__ in the source tree


# ----------------------------------------------------------------------------------------------
# Source checkpoint


def source_config(cfg: dict) -> dict:
    """config.json of the source in the legacy (80-half-layer) revision with `cca_num_q_heads`:
    num_attention_heads is the "full" count 2·q_heads as in the earliest published revision."""
    h = cfg["hidden_size"]
    return {
        "architectures": ["ZayaForCausalLM"],
        "model_type": "zaya",
        "dtype": cfg["source_dtype"],
        "hidden_size": h,
        "num_hidden_layers": cfg["num_hidden_layers"],
        "ffn_hidden_size": 2 * h,  # fused gate+up width; the converter needs square experts
        "num_attention_heads": 2 * cfg["q_heads"],
        "cca_num_q_heads": cfg["q_heads"],
        "num_key_value_heads": cfg["kv_heads"],
        "num_query_groups": cfg["kv_heads"],
        "kv_channels": cfg["head_dim"],
        "head_dim": cfg["head_dim"],
        "partial_rotary_factor": 0.5,
        "rope_theta": 5000000,
        "rope_scaling": False,
        "max_position_embeddings": 4096,
        "sliding_window": None,
        "cca": True,
        "num_experts": cfg["num_experts"],
        "moe_router_topk": 1,
        "activation_func": "swiglu",
        "gated_linear_unit": True,
        "add_bias_linear": False,
        "zaya_mlp_expansion": cfg["router_hidden"],
        "zaya_use_mod": True,
        "zaya_use_eda": True,
        "zaya_high_prec": True,
        "normalization": "RMSNorm",
        "norm_epsilon": 1e-05,
        "scale_residual_merge": True,
        "residual_in_fp32": True,
        "attention_bias": False,
        "lm_head_bias": False,
        "vocab_size": cfg["vocab_size"],
        "bos_token_id": 2,
        "eos_token_id": 106,
        "pad_token_id": 0,
        "mamba_cache_dtype": "float32",
        "use_cache": True,
    }


def source_tensors(cfg: dict) -> list[tuple[str, tuple[int, ...], str, float]]:
    """(name, shape, kind, std) of every source tensor, in generation order. Kinds: `normal`
    (N(0, std²)), `one` (1 + N(0, std²): norm / scale vectors, temp)."""
    h, d = cfg["hidden_size"], cfg["head_dim"]
    hq, hk, e, r = cfg["q_heads"], cfg["kv_heads"], cfg["num_experts"], cfg["router_hidden"]
    qd, kd = hq * d, hk * d
    c = qd + kd  # conv channels
    small = 0.02  # std of biases
    t = [("model.embed_tokens.weight", (cfg["vocab_size"], h), "normal", h**-0.5)]
    for n in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{n}"
        t.append((f"{p}.input_norm.weight", (h,), "one", 0.1))
        t.append((f"{p}.res_scale.hidden_states_scale", (h,), "one", 0.1))
        t.append((f"{p}.res_scale.hidden_states_bias", (h,), "normal", small))
        if n > 0:
            t.append((f"{p}.res_scale.residual_scale", (h,), "one", 0.1))
            t.append((f"{p}.res_scale.residual_bias", (h,), "normal", small))
        if n % 2 == 0:
            a = f"{p}.self_attn"
            t.append((f"{a}.qkv.linear_q.weight", (qd, h), "normal", h**-0.5))
            t.append((f"{a}.qkv.linear_k.weight", (kd, h), "normal", h**-0.5))
            t.append((f"{a}.qkv.val_proj1.weight", (kd // 2, h), "normal", h**-0.5))
            t.append((f"{a}.qkv.val_proj2.weight", (kd // 2, h), "normal", h**-0.5))
            # PyTorch Conv1d layout [out, in/groups, k]: depthwise (groups = c), then one group per head
            t.append((f"{a}.qkv.conv_qk.0.weight", (c, 1, 2), "normal", 0.5**0.5))
            t.append((f"{a}.qkv.conv_qk.0.bias", (c,), "normal", small))
            t.append((f"{a}.qkv.conv_qk.1.weight", (c, d, 2), "normal", (2 * d) ** -0.5))
            t.append((f"{a}.qkv.conv_qk.1.bias", (c,), "normal", small))
            t.append((f"{a}.qkv.temp", (hk,), "one", 0.1))
            t.append((f"{a}.o_proj.weight", (h, qd), "normal", qd**-0.5))
        else:
            z = f"{p}.zaya_block"
            t.append((f"{z}.router.down_proj.weight", (r, h), "normal", h**-0.5))
            t.append((f"{z}.router.down_proj.bias", (r,), "normal", small))
            if n > 1:
                t.append((f"{z}.router.router_states_scale", (r,), "one", 0.1))
            t.append((f"{z}.router.rmsnorm_eda.weight", (r,), "one", 0.1))
            t.append((f"{z}.router.router_mlp.0.weight", (r, r), "normal", r**-0.5))
            t.append((f"{z}.router.router_mlp.0.bias", (r,), "normal", small))
            t.append((f"{z}.router.router_mlp.2.weight", (r, r), "normal", r**-0.5))
            t.append((f"{z}.router.router_mlp.2.bias", (r,), "normal", small))
            # router_logit_scale x the 1/sqrt(in) scale: decisive routing (clear gaps between the
            # top two routes, so that small numeric differences do not flip a route)
            t.append((f"{z}.router.router_mlp.4.weight", (e + 1, r), "normal", cfg["router_logit_scale"] * r**-0.5))
            t.append((f"{z}.router.balancing_biases", (e + 1,), "balancing", 0.01))
            for x in range(e):
                le = f"{z}.experts.local_experts.{x}"
                t.append((f"{le}.linear_fc1.weight", (2 * h, h), "normal", h**-0.5))
                t.append((f"{le}.linear_fc2.weight", (h, h), "normal", h**-0.5))
    t.append(("model.res_scale.hidden_states_scale", (h,), "one", 0.1))
    t.append(("model.res_scale.hidden_states_bias", (h,), "normal", small))
    t.append(("model.res_scale.residual_scale", (h,), "one", 0.1))
    t.append(("model.res_scale.residual_bias", (h,), "normal", small))
    t.append(("model.final_norm.weight", (h,), "one", 0.1))
    return t


def draw(rng: np.random.Generator, name: str, shape, kind: str, std: float, cfg: dict) -> np.ndarray:
    a = rng.standard_normal(shape, dtype=np.float32) * np.float32(std)
    if kind == "one":
        a += np.float32(1.0)
    elif kind == "balancing":
        # trained experts' biases are small; the skip route (last) keeps its init -1 unless the
        # config raises it for a layer (skip_bias: {"layer": value})
        layer = name.split(".")[2]
        a[-1] = np.float32(cfg.get("skip_bias", {}).get(layer, -1.0))
    return a


def to_bf16_bytes(a: np.ndarray) -> bytes:
    """float32 -> bfloat16 bytes, round to nearest even."""
    u = a.astype(np.float32).view(np.uint32)
    u = (u + np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16)
    return u.astype("<u2").tobytes()


def write_safetensors(path: Path, specs: list[tuple[str, str, tuple, int]], produce, metadata: dict) -> None:
    """Minimal deterministic safetensors writer (the library's metadata order is not stable).
    `specs` = [(name, dtype, shape, nbytes)] in file order; `produce(i)` returns tensor i's bytes."""
    header: dict = {"__metadata__": dict(sorted(metadata.items()))}
    offset = 0
    for name, dtype, shape, nbytes in specs:
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    hbytes = json.dumps(header, separators=(",", ":")).encode()
    hbytes += b" " * (-len(hbytes) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hbytes)))
        f.write(hbytes)
        for i, (name, _, _, nbytes) in enumerate(specs):
            data = produce(i)
            assert len(data) == nbytes, name
            f.write(data)


def write_source_shard(path: Path, cfg: dict, rng: np.random.Generator) -> dict[str, tuple]:
    """Streams every source tensor into one safetensors file (F32 or BF16), drawing them in the
    order of source_tensors(). Returns {name: shape}."""
    tensors = source_tensors(cfg)
    bf16 = cfg["source_dtype"] == "bfloat16"
    dtype, width = ("BF16", 2) if bf16 else ("F32", 4)
    specs = [(name, dtype, shape, int(np.prod(shape)) * width) for name, shape, _, _ in tensors]

    def produce(i: int) -> bytes:
        name, shape, kind, std = tensors[i]
        a = draw(rng, name, shape, kind, std, cfg)
        return to_bf16_bytes(a) if bf16 else a.astype("<f4").tobytes()

    write_safetensors(path, specs, produce, {"format": "pt"})
    return {name: shape for name, shape, _, _ in tensors}


def write_json(path: Path, data) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2)
        f.write("\n")


def make_source(src: Path, cfg: dict, seed: int) -> None:
    src.mkdir(parents=True)
    shard = "model-00001-of-00001.safetensors"
    shapes = write_source_shard(src / shard, cfg, np.random.default_rng([seed, 0]))
    write_json(
        src / "model.safetensors.index.json",
        {"metadata": {"total_size": (src / shard).stat().st_size}, "weight_map": {k: shard for k in sorted(shapes)}},
    )
    write_json(src / "config.json", source_config(cfg))
    write_json(
        src / "generation_config.json",
        {"bos_token_id": 2, "eos_token_id": 106, "pad_token_id": 0, "do_sample": False},
    )


# ----------------------------------------------------------------------------------------------
# Conversion


def convert(src: Path, bundle: Path, group: int) -> None:
    cmd = [sys.executable, "-m", "jang_tools.convert_zaya_jangtq", str(src), str(bundle), "JANGTQ4", "--group-size", str(group)]
    env = dict(os.environ, TQDM_DISABLE="1")
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if p.returncode != 0:
        sys.stderr.write(p.stdout + p.stderr)
        raise SystemExit(f"converter failed ({p.returncode}): {' '.join(cmd)}")
    if not (bundle / "jangtq_runtime.safetensors").exists():
        sys.stderr.write(p.stdout + p.stderr)
        raise SystemExit("converter wrote no jangtq_runtime.safetensors sidecar")


# ----------------------------------------------------------------------------------------------
# Reference outputs


def top2_gap(x: np.ndarray) -> np.ndarray:
    """Per row: largest minus second largest value."""
    s = np.sort(x, axis=-1)
    return s[..., -1] - s[..., -2]


def router_margins(model, cap: dict, n_layers: int) -> dict[str, float]:
    """Smallest top-1/top-2 gap of p + balancing_biases per MoE half-layer (how close a route is to
    flipping under small numeric differences)."""
    import mlx.core as mx

    out = {}
    state = None
    for n in range(n_layers):
        layer = model.model.layers[n]
        if layer.zaya_block is None:
            continue
        r = mx.array(cap[f"residual.{n}"])[None]
        normed = layer.input_norm(r.astype(layer.input_norm.weight.dtype))
        router = layer.zaya_block.router
        h = router.down_proj(normed.astype(mx.float32))
        if state is not None and "router_states_scale" in router:
            h = h + state * router.router_states_scale
        state = h
        h = router.rmsnorm_eda(h)
        for m in router.router_mlp:
            h = m(h)
        biased = mx.softmax(h, axis=-1).astype(mx.float32) + router.balancing_biases
        out[str(n)] = float(top2_gap(np.array(biased[0])).min())
    return out


def reference_variant(bundle: Path, ids: list[int], cfg: dict, dtype: str) -> tuple[dict, dict]:
    """Reference tensors and sanity checks for one compute dtype."""
    import mlx.core as mx
    import zaya_ref

    model = zaya_ref.load_bundle_model(bundle, dtype)
    cap = zaya_ref.forward_layers(model, ids)
    cap = {k: np.array(v) for k, v in cap.items()}
    logits = cap["logits"]
    scale = float(np.abs(logits).max())
    one = np.array(zaya_ref.logits_oneshot(model, ids))
    step = np.array(zaya_ref.logits_stepwise(model, ids))
    greedy = zaya_ref.greedy(model, ids, cfg["greedy_tokens"])
    # re-check the cached greedy path with one uncached forward over prompt + continuation
    full = np.array(zaya_ref.logits_oneshot(model, ids + greedy[:-1]))[len(ids) - 1 :]
    recheck = [int(t) for t in full.argmax(-1)]
    routes = {k.split(".")[1]: np.bincount(v, minlength=cfg["num_experts"] + 1).tolist() for k, v in cap.items() if k.startswith("route.")}
    checks = {
        "max_abs_logit": scale,
        "layerwise_vs_library_forward_max_abs": float(np.abs(one - logits).max()),
        "stepwise_cached_vs_oneshot_max_abs": float(np.abs(step - logits).max()),
        "stepwise_cached_vs_oneshot_rel": float(np.abs(step - logits).max() / scale),
        "greedy_recheck_agree": sum(a == b for a, b in zip(greedy, recheck)),
        "greedy_min_top2_logit_gap": float(top2_gap(full).min()),
        "prompt_min_top2_logit_gap": float(top2_gap(logits).min()),
        "route_counts": routes,
        "router_min_top2_gap": router_margins(model, cap, cfg["num_hidden_layers"]),
    }
    tensors = {"token_ids": np.array(ids, dtype=np.int32), "greedy_ids": np.array(greedy, dtype=np.int32)}
    for k, v in cap.items():
        tensors[k] = v.astype(np.int32) if k.startswith("route.") else v.astype(np.float32)
    del model
    mx.clear_cache()
    return tensors, checks


MIN_ROUTER_GAP = 1e-3


def check_variant(name: str, checks: dict, dtype: str, cfg: dict) -> None:
    """The reference must agree with itself; a failure here is a bug in this script or the library."""
    problems = []
    if checks["layerwise_vs_library_forward_max_abs"] != 0.0:
        problems.append("layer-by-layer forward differs from the library's Model.__call__")
    bar = 5e-4 if dtype == "f32" else 5e-2
    if checks["stepwise_cached_vs_oneshot_rel"] > bar:
        problems.append(f"cached decode differs from the one-shot forward by more than {bar}·max|logits|")
    if dtype == "f32" and checks["greedy_recheck_agree"] != cfg["greedy_tokens"]:
        problems.append("the cached greedy path disagrees with an uncached forward")
    # Margins, so that an implementation within the parity bar (5e-4·max|logits|) reproduces the
    # f32 routes and greedy ids: otherwise pick another seed in fixtures.json.
    min_gap = cfg.get("min_router_gap", MIN_ROUTER_GAP)
    if dtype == "f32" and min(checks["router_min_top2_gap"].values()) < min_gap:
        problems.append(f"a route is within {min_gap} (probability) of flipping")
    if dtype == "f32" and checks["greedy_min_top2_logit_gap"] < 2 * 5e-4 * checks["max_abs_logit"]:
        problems.append("a greedy step is within 2·5e-4·max|logits| of a tie")
    if cfg.get("expect_skip"):
        skip = cfg["num_experts"]
        counts = [c[skip] for c in checks["route_counts"].values()]
        if not any(0 < c < cfg["seq_len"] for c in counts) or not any(c == 0 for c in counts):
            problems.append(f"skip config: want some (not all) tokens on the skip route in one MoE layer and none in another, got {counts}")
    if problems:
        raise SystemExit(f"{name}/{dtype}: " + "; ".join(problems) + f"\n{json.dumps(checks, indent=2)}")


def expert_dequant_error(src: Path, bundle: Path) -> float:
    """Largest relative RMS error ||W_deq - W_src|| / ||W_src|| over the expert stacks: about 0.1 for
    4-bit TurboQuant of Gaussian rows (docs/bundle-format.md §3.5); a wrong dequantization gives ~1.4."""
    import mlx.core as mx
    import zaya_ref

    source = zaya_ref.load_shards(src)
    _, weights, _ = zaya_ref.bundle_weights(bundle)
    worst = 0.0
    for key in sorted(k for k in weights if ".switch_mlp." in k):
        prefix, proj = key.split(".switch_mlp.")
        proj = proj.split(".")[0]
        stack = []
        for e in range(weights[key].shape[0]):
            base = f"{prefix}.local_experts.{e}"
            if proj == "down_proj":
                w = source[f"{base}.linear_fc2.weight"]
            else:
                fc1 = source[f"{base}.linear_fc1.weight"]
                half = fc1.shape[0] // 2
                w = fc1[:half] if proj == "gate_proj" else fc1[half:]
            stack.append(w.astype(mx.float32))
        ref = mx.stack(stack)
        err = mx.sqrt(mx.sum((weights[key] - ref) ** 2) / mx.sum(ref**2)).item()
        worst = max(worst, float(err))
    del source, weights
    mx.clear_cache()
    return worst


def source_vs_bundle(src: Path, ids: list[int], bundle_logits: np.ndarray) -> dict:
    """Float source model vs the f32 bundle reference: the 4-bit / 8-bit quantization error."""
    import mlx.core as mx
    import zaya_ref

    model = zaya_ref.load_source_model(src)
    logits = np.array(zaya_ref.logits_oneshot(model, ids))
    del model
    mx.clear_cache()
    out = {
        "max_abs_diff": float(np.abs(logits - bundle_logits).max()),
        "max_abs_logit": float(np.abs(logits).max()),
        "argmax_agree": int((logits.argmax(-1) == bundle_logits.argmax(-1)).sum()),
        "tokens": len(ids),
    }
    if out["argmax_agree"] * 2 < len(ids) or out["max_abs_diff"] > 0.5 * out["max_abs_logit"]:
        raise SystemExit(f"the bundle reference is far from the float source model: {out}")
    return out


def save_reference(path: Path, tensors: dict, dtype: str) -> None:
    names = sorted(tensors)
    arrays = [np.ascontiguousarray(tensors[k]) for k in names]
    codes = {np.dtype(np.float32): "F32", np.dtype(np.int32): "I32"}
    specs = [(k, codes[a.dtype], a.shape, a.nbytes) for k, a in zip(names, arrays)]
    meta = {"format": "zaya-reference", "variant": dtype, "producer": "tests/reference/make_fixture.py"}
    write_safetensors(path, specs, lambda i: arrays[i].astype(arrays[i].dtype.newbyteorder("<")).tobytes(), meta)


def versions() -> dict:
    from importlib.metadata import version

    return {p: version(p) for p in ("mlx", "mlx-lm", "jang", "numpy", "safetensors")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", required=True, help="fixture name in the configs file")
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--seed", type=int, help="overrides the config's seed")
    ap.add_argument("--configs", type=Path, default=HERE / "fixtures.json")
    args = ap.parse_args()

    configs = json.loads(args.configs.read_text())
    if args.config not in configs:
        raise SystemExit(f"unknown fixture config {args.config!r}; known: {', '.join(configs)}")
    cfg = dict(configs[args.config])
    seed = cfg["seed"] if args.seed is None else args.seed
    out: Path = args.out
    if out.exists() and any(out.iterdir()):
        raise SystemExit(f"{out} is not empty")
    out.mkdir(parents=True, exist_ok=True)

    import mlx.core as mx

    mx.set_default_device(mx.cpu)
    times = {}
    t0 = time.perf_counter()
    make_source(out / "source", cfg, seed)
    times["source"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    convert(out / "source", out / "bundle", cfg["group_size"])
    times["convert"] = time.perf_counter() - t0

    rng = np.random.default_rng([seed, 1])
    ids = [2] + [int(x) for x in rng.integers(3, cfg["vocab_size"], cfg["seq_len"] - 1)]
    meta = {"name": args.config, "seed": seed, "config": cfg, "token_ids": ids, "versions": versions(), "variants": {}}
    f32_logits = None
    for dtype in cfg["variants"]:
        t0 = time.perf_counter()
        tensors, checks = reference_variant(out / "bundle", ids, cfg, dtype)
        check_variant(args.config, checks, dtype, cfg)
        fname = "reference.safetensors" if dtype == "f32" else f"reference_{dtype}.safetensors"
        save_reference(out / fname, tensors, dtype)
        checks["file"] = fname
        meta["variants"][dtype] = checks
        if dtype == "f32":
            f32_logits = tensors["logits"]
        times[f"reference_{dtype}"] = time.perf_counter() - t0

    if f32_logits is not None:
        t0 = time.perf_counter()
        meta["source_vs_bundle_f32"] = source_vs_bundle(out / "source", ids, f32_logits)
        err = expert_dequant_error(out / "source", out / "bundle")
        if not err < 0.15:
            raise SystemExit(f"dequantized experts are {err:.3f} (relative RMS) away from the source weights")
        meta["expert_dequant_max_rel_rms_error"] = err
        times["source_model"] = time.perf_counter() - t0

    write_json(out / "meta.json", meta)
    times["total"] = sum(times.values())
    write_json(out / "timings.json", {k: round(v, 3) for k, v in times.items()})
    print(json.dumps({"fixture": args.config, "out": str(out), "seconds": round(times["total"], 2)}))


if __name__ == "__main__":
    main()
