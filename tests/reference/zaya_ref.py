"""Shared helpers of the Python reference pipeline (used by make_fixture.py and decode_stream.py).

Owns: loading a JANGTQ4 bundle (or a Zyphra-format float source) into the reference model
`jang_tools.zaya.model.Model` on the MLX CPU backend, with a chosen float compute dtype; capturing
per-half-layer values by running the layers one by one; greedy decoding with mlx-lm caches.

The routed experts are dequantized exactly as in the format specification (docs/bundle-format.md §3.6 / §5.2):
    W[e, r, :] = signs * hadamard_transform(norms[e, r] * codebook[codes[e, r, :]], 1/sqrt(in))
with the codebook and sign vector read from the bundle's sidecar `jangtq_runtime.safetensors`.
Affine 8-bit tensors stay quantized and go through `nn.quantize` with the bundle's group size.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
from jang_tools.zaya.model import Model, ModelArgs

DTYPES = {"f32": mx.float32, "bf16": mx.bfloat16, "f16": mx.float16}


def read_json(path: Path) -> dict:
    with open(path, "r", encoding="utf-8") as f:
        return json.load(f)


def load_shards(model_dir: Path) -> dict[str, mx.array]:
    """All tensors of the `model-*.safetensors` shards (through the index when there is one)."""
    index = model_dir / "model.safetensors.index.json"
    if index.exists():
        files = sorted(set(read_json(index)["weight_map"].values()))
    else:
        files = sorted(p.name for p in model_dir.glob("model-*.safetensors"))
    weights: dict[str, mx.array] = {}
    for name in files:
        weights.update(mx.load(str(model_dir / name)))
    return weights


def unpack_codes(packed: mx.array, bits: int, in_features: int) -> mx.array:
    """U32 [..., packed_cols] -> uint32 codes [..., in_features] (LSB-first, docs/bundle-format.md §3.2)."""
    per_word = 32 // bits
    shifts = mx.arange(per_word, dtype=mx.uint32) * bits
    codes = (packed[..., None] >> shifts) & ((1 << bits) - 1)
    codes = codes.reshape(*packed.shape[:-1], packed.shape[-1] * per_word)
    return codes[..., :in_features]


def dequant_tq(packed: mx.array, norms: mx.array, bits: int, codebook: mx.array, signs: mx.array) -> mx.array:
    """MXTQ expert stack [E, out, packed_cols] -> float32 weights [E, out, in] (§3.6)."""
    in_features = signs.shape[0]
    codes = unpack_codes(packed, bits, in_features)
    w_rot = mx.take(codebook.astype(mx.float32), codes) * norms.astype(mx.float32)[..., None]
    w = mx.hadamard_transform(w_rot, scale=1.0 / math.sqrt(in_features)) * signs.astype(mx.float32)
    mx.eval(w)
    return w


def bundle_weights(bundle: Path) -> tuple[dict, dict[str, mx.array], int]:
    """Reads a bundle: (config, float/affine weights with experts dequantized to f32, group size)."""
    config = read_json(bundle / "config.json")
    jang = read_json(bundle / "jang_config.json")
    seed = int(jang.get("mxtq_seed", config.get("mxtq_seed", 42)))
    group = int(config["quantization"]["group_size"])
    raw = load_shards(bundle)
    sidecar = mx.load(str(bundle / "jangtq_runtime.safetensors"))
    weights: dict[str, mx.array] = {}
    for key in sorted(raw):
        if key.endswith(".tq_norms") or key.endswith(".tq_bits"):
            continue
        if key.endswith(".tq_packed"):
            base = key[: -len(".tq_packed")]
            bits = int(raw[f"{base}.tq_bits"].item())
            in_features = raw[key].shape[-1] * 32 // bits
            weights[f"{base}.weight"] = dequant_tq(
                raw[key],
                raw[f"{base}.tq_norms"],
                bits,
                sidecar[f"codebook.{in_features}.{bits}"],
                sidecar[f"signs.{in_features}.{seed}"],
            )
        else:
            weights[key] = raw[key]
    return config, weights, group


def cast_floats(weights: dict[str, mx.array], dtype) -> dict[str, mx.array]:
    """Every floating tensor (passthrough, affine scales/biases, dequantized experts) -> dtype."""
    return {
        k: (v.astype(dtype) if mx.issubdtype(v.dtype, mx.floating) else v) for k, v in weights.items()
    }


def build_model(config: dict, weights: dict[str, mx.array], group: int | None) -> Model:
    """Model(config) with `weights` loaded strictly; affine tensors (those with `.scales`) stay 8-bit."""
    model = Model(ModelArgs.from_dict(config))
    weights = model.sanitize(dict(weights))
    if group is not None:
        nn.quantize(
            model,
            group_size=group,
            bits=8,
            class_predicate=lambda path, m: hasattr(m, "to_quantized") and f"{path}.scales" in weights,
        )
    model.load_weights(list(weights.items()), strict=True)
    model.eval()
    mx.eval(model.parameters())
    return model


def load_bundle_model(bundle: Path, dtype: str = "f32") -> Model:
    """The reference model on a JANGTQ bundle, computing in `dtype` ("f32", "bf16" or "f16").

    For bf16/f16 every float tensor is rounded to `dtype`, and activations follow the model's own
    dtype policy (that of the norm weights; residual stream, q/k norms and router in f32). One
    exception: MLX's CPU `gather_mm` (SwitchGLU) runs in float32 only, so the dequantized expert
    weights are rounded to `dtype` but kept in float32 storage: the expert matmuls see bf16 values
    and accumulate and output in f32.
    """
    config, weights, group = bundle_weights(bundle)
    target = DTYPES[dtype]
    weights = cast_floats(weights, target)
    if target != mx.float32:
        for k in weights:
            if ".switch_mlp." in k:
                weights[k] = weights[k].astype(mx.float32)
    return build_model(config, weights, group)


def load_source_model(source: Path) -> Model:
    """The float (unquantized) reference model on a Zyphra-format source checkpoint, in f32."""
    config = read_json(source / "config.json")
    weights = cast_floats(load_shards(source), mx.float32)
    return build_model(config, weights, None)


def forward_layers(model: Model, ids: list[int]) -> dict[str, mx.array]:
    """One-shot forward over `ids` (batch 1, no cache), mirroring ZayaModel.__call__ layer by layer.

    Returns float32 arrays `logits` [T, V], `hidden.{n}` / `residual.{n}` [T, H] and int32 `route.{n}`
    [T] for MoE half-layers (the chosen route argmax(p + balancing_biases); num_experts = skip).
    """
    inner = model.model
    x = mx.array([ids], dtype=mx.int32)
    h = inner.embed_tokens(x)
    mask = "causal" if len(ids) > 1 else None
    residual = None
    router_state = None
    out: dict[str, mx.array] = {}
    for n, layer in enumerate(inner.layers):
        state_in = router_state
        h, residual, router_state = layer(h, residual, mask, None, router_state)
        out[f"residual.{n}"] = residual[0].astype(mx.float32)
        out[f"hidden.{n}"] = h[0].astype(mx.float32)
        if layer.zaya_block is not None:
            # Re-run the (deterministic) router on the same normed input to read its choice.
            normed = layer.input_norm(residual.astype(layer.input_norm.weight.dtype))
            _, idx, active, _ = layer.zaya_block.router(normed, state_in)
            route = mx.where(active, idx, layer.zaya_block.router.num_experts)
            out[f"route.{n}"] = route[0, :, 0].astype(mx.int32)
        mx.eval(list(out.values()), h, residual)
    res, hs = inner.res_scale(residual, h)
    final = inner.final_norm((hs.astype(mx.float32) + res.astype(mx.float32)).astype(inner.final_norm.weight.dtype))
    out["logits"] = model.model.embed_tokens.as_linear(final)[0].astype(mx.float32)
    mx.eval(out)
    return out


def logits_oneshot(model: Model, ids: list[int]) -> mx.array:
    """The library's own full forward (no cache) -> float32 [T, V]."""
    y = model(mx.array([ids], dtype=mx.int32))[0].astype(mx.float32)
    mx.eval(y)
    return y


def logits_stepwise(model: Model, ids: list[int]) -> mx.array:
    """Token-by-token decode with the model's mlx-lm caches -> float32 [T, V]."""
    cache = model.make_cache()
    rows = []
    for t in ids:
        y = model(mx.array([[t]], dtype=mx.int32), cache=cache)[0, -1].astype(mx.float32)
        mx.eval(y)
        rows.append(y)
    return mx.stack(rows)


def greedy(model: Model, ids: list[int], n_new: int, on_token=None) -> list[int]:
    """Greedy continuation (plain argmax, no EOS stop): prefill `ids` in one call, then one token
    per step through the mlx-lm caches of `model.make_cache()`. `on_token(i, token)` is called after
    each new token is evaluated (for timing)."""
    cache = model.make_cache()
    y = model(mx.array([ids], dtype=mx.int32), cache=cache)[0, -1]
    out: list[int] = []
    for i in range(n_new):
        tok = int(mx.argmax(y.astype(mx.float32)).item())
        out.append(tok)
        if on_token is not None:
            on_token(i, tok)
        if i + 1 == n_new:
            break
        y = model(mx.array([[tok]], dtype=mx.int32), cache=cache)[0, -1]
    return out
