"""Small random ZAYA models in every weight format, with reference outputs from jang_tools.zaya.model.

Used by tests/model_*.rs (through tests/model_support/mod.rs) to check our forward pass against the
Python MLX reference on hand-built weight sets, independently of the bundle loader and of the
jang-converted fixtures. Usage:

    python make_model_ref.py OUT_DIR PRESET FORMAT SEED

PRESET picks the shape (see PRESETS), FORMAT one of:
  float   every tensor float32 (the Zyphra-float-checkpoint case)
  affine  attention linears + embedding 8-bit MLX affine (group 32), experts 4-bit affine (group 32),
          passthrough tensors float16 (as in the OsaurusAI bundles)
  mxfp4   attention linears + embedding 8-bit affine, experts MLX mxfp4, passthrough float16
  tq      attention linears + embedding 8-bit affine, experts TurboQuant 4-bit (jang's encoder,
          seed 42) with the codebook/sign sidecar, passthrough float16 (the JANGTQ4 layout)

Writes OUT_DIR/config.json, weights.safetensors (canonical bundle names, conv weights in MLX layout
[out, k, in/groups], experts stacked as switch_mlp.{gate,up,down}_proj), formats.json (module base ->
format), sidecar.safetensors (tq only) and reference.safetensors: token_ids i32 [T], logits f32 [T, V],
hidden.{n} / residual.{n} f32 [T, H], route.{n} i32 [T] (odd n).

The reference runs jang_tools.zaya.model in float32: float16 passthrough tensors and affine
scales/biases are cast to float32, TurboQuant experts are dequantized to float32
(W = s ⊙ H·(norms ⊙ C[codes]) row-wise, docs/bundle-format.md §3.6).
"""
import json
import sys
from pathlib import Path

import numpy as np
import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten, tree_unflatten

from jang_tools.zaya.model import Model, ModelArgs
from mlx_lm.models.base import create_attention_mask

PRESETS = {
    # 6 half-layers: EDA state used by layers 3 and 5, layer 1 has no router_states_scale.
    "tiny": dict(hidden_size=64, num_hidden_layers=6, num_attention_heads=4, cca_num_q_heads=4,
                 num_key_value_heads=2, num_query_groups=2, kv_channels=16, num_experts=4,
                 ffn_hidden_size=128, zaya_mlp_expansion=32, vocab_size=256),
    # 4 KV heads (value halves span 2 heads each), non-square experts (I = 2H), GQA 2.
    "kv4": dict(hidden_size=64, num_hidden_layers=4, num_attention_heads=8, cca_num_q_heads=8,
                num_key_value_heads=4, num_query_groups=4, kv_channels=16, num_experts=3,
                ffn_hidden_size=256, zaya_mlp_expansion=32, vocab_size=320),
    # like tiny, but the skip route is favoured in layer 3 (MOD p·x path).
    "skip": dict(hidden_size=64, num_hidden_layers=6, num_attention_heads=4, cca_num_q_heads=4,
                 num_key_value_heads=2, num_query_groups=2, kv_channels=16, num_experts=4,
                 ffn_hidden_size=128, zaya_mlp_expansion=32, vocab_size=256),
    # the real per-layer dimensions of ZAYA1-8B (one attention + one MoE half-layer), small vocab.
    "real": dict(hidden_size=2048, num_hidden_layers=2, num_attention_heads=8, cca_num_q_heads=8,
                 num_key_value_heads=2, num_query_groups=2, kv_channels=128, num_experts=16,
                 ffn_hidden_size=4096, zaya_mlp_expansion=256, vocab_size=1024),
}
GROUP = 32
T = 13


def config_for(preset):
    cfg = dict(model_type="zaya", architectures=["ZayaForCausalLM"], partial_rotary_factor=0.5,
               rope_theta=5000000.0, max_position_embeddings=4096, norm_epsilon=1e-5,
               moe_router_topk=1, zaya_use_mod=True, zaya_use_eda=True, tie_word_embeddings=True,
               residual_in_fp32=True, scale_residual_merge=True, bos_token_id=2, eos_token_id=106,
               pad_token_id=0)
    cfg.update(PRESETS[preset])
    return cfg


def randomize(model, rng, cfg, preset):
    """Realistic scales: linears ~ N(0, 1/in), norm/scale vectors ≈ 1 ± 0.1, small biases."""
    params = {}
    for name, p in tree_flatten(model.parameters()):
        shape = p.shape
        if name.endswith("conv_qk.0.weight"):  # [C, 2, 1]
            v = rng.normal(0.0, 0.6, shape)
        elif name.endswith("conv_qk.1.weight"):  # [C, 2, Cg]
            v = rng.normal(0.0, 1.0 / np.sqrt(2 * shape[-1]), shape)
        elif name.endswith(".bias") or name.endswith("_bias"):
            v = rng.normal(0.0, 0.05, shape)
        elif name.endswith("temp"):
            v = 1.0 + rng.normal(0.0, 0.1, shape)
        elif name.endswith("balancing_biases"):
            v = rng.normal(0.0, 0.02, shape)
            v[-1] = -1.0 + rng.normal(0.0, 0.02)
            layer = int(name.split(".")[2])
            if preset == "skip" and layer == 3:
                v[-1] = 0.2  # the skip route wins for a good share of the tokens here
            elif preset in ("tiny", "skip"):
                v[-1] = -0.05  # skip sometimes fires in the other layers too
        elif name.endswith("embed_tokens.weight"):
            v = rng.normal(0.0, 1.0, shape)
        elif len(shape) == 1:  # norms, res scales, router_states_scale
            v = 1.0 + rng.normal(0.0, 0.1, shape)
        else:
            v = rng.normal(0.0, 1.0 / np.sqrt(shape[-1]), shape)
        params[name] = mx.array(v.astype(np.float32))
    model.update(tree_unflatten(list(params.items())))


def is_attn_linear(path):
    return ".self_attn." in path and path.split(".")[-1] in ("linear_q", "linear_k", "val_proj1",
                                                              "val_proj2", "o_proj")


def tq_encode_and_dequant(w, bits, seed):
    """jang's encoder (tq_quantize_weight_rowwise) and an f32 dequantization of its output."""
    from jang_tools.convert_zaya_common import tq_quantize_experts_rowwise
    from jang_tools.turboquant.codebook import compute_codebook
    from jang_tools.turboquant.rotation import generate_random_signs
    E, out_f, in_f = w.shape
    enc = tq_quantize_experts_rowwise(np.array(w), bits=bits, seed=seed)
    packed, norms = enc["packed"], enc["norms"]
    cb = np.array(compute_codebook(in_f, bits), dtype=np.float32)
    signs = np.array(generate_random_signs(in_f, seed=seed), dtype=np.float32)
    per = 32 // bits
    shifts = (np.arange(per, dtype=np.uint32) * bits)
    codes = ((packed[..., None] >> shifts) & ((1 << bits) - 1)).reshape(E, out_f, -1)[..., :in_f]
    wrot = cb[codes] * norms.astype(np.float32)[..., None]
    deq = mx.hadamard_transform(mx.array(wrot), scale=1.0 / np.sqrt(in_f)) * mx.array(signs)
    return packed, norms, cb, signs, deq


def main():
    out, preset, fmt, seed = Path(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4])
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    cfg = config_for(preset)
    args = ModelArgs.from_dict(cfg)
    model = Model(args)
    randomize(model, rng, cfg, preset)
    mx.eval(model.parameters())

    H = cfg["hidden_size"]
    I = cfg["ffn_hidden_size"] // 2
    formats = {}
    saved = {}
    sidecar = {}
    float_params = dict(tree_flatten(model.parameters()))
    passthrough_dtype = mx.float32 if fmt == "float" else mx.float16

    # Decide formats and build the stored tensors; then load the (dequantized/cast) stored values
    # back into the reference model so that it computes exactly on what we store.
    ref_params = {}
    for name, p in float_params.items():
        base = name.rsplit(".", 1)[0]
        is_expert = ".switch_mlp." in name and name.endswith(".weight")
        is_embed = name == "model.embed_tokens.weight"
        is_attn = name.endswith(".weight") and is_attn_linear(base)
        if fmt != "float" and (is_embed or is_attn):
            wq, s, b = mx.quantize(p.astype(mx.float16), group_size=GROUP, bits=8)
            saved[base + ".weight"], saved[base + ".scales"], saved[base + ".biases"] = wq, s, b
            formats[base] = {"kind": "affine", "bits": 8, "group_size": GROUP}
            ref_params[base + ".weight"] = wq
            ref_params[base + ".scales"] = s.astype(mx.float32)
            ref_params[base + ".biases"] = b.astype(mx.float32)
        elif fmt == "affine" and is_expert:
            wq, s, b = mx.quantize(p.astype(mx.float16), group_size=GROUP, bits=4)
            saved[base + ".weight"], saved[base + ".scales"], saved[base + ".biases"] = wq, s, b
            formats[base] = {"kind": "affine", "bits": 4, "group_size": GROUP}
            # mlx-lm 0.32.2's QuantizedSwitchLinear does not run with mlx 0.32.2 (it passes
            # global_scale to gather_qmm), so the reference uses the dequantized float experts.
            ref_params[name] = mx.dequantize(wq, s.astype(mx.float32), b.astype(mx.float32),
                                             group_size=GROUP, bits=4)
        elif fmt == "mxfp4" and is_expert:
            wq, s = mx.quantize(p, group_size=32, bits=4, mode="mxfp4")
            saved[base + ".weight"], saved[base + ".scales"] = wq, s
            formats[base] = {"kind": "mxfp4", "group_size": 32}
            ref_params[name] = mx.dequantize(wq, s, group_size=32, bits=4, mode="mxfp4")
        elif fmt == "tq" and is_expert:
            packed, norms, cb, signs, deq = tq_encode_and_dequant(p, 4, 42)
            in_f = p.shape[-1]
            saved[base + ".tq_packed"] = mx.array(packed)
            saved[base + ".tq_norms"] = mx.array(norms)
            sidecar[f"codebook.{in_f}.4"] = mx.array(cb)
            sidecar[f"signs.{in_f}.42"] = mx.array(signs)
            formats[base] = {"kind": "turboquant", "bits": 4, "in_features": in_f, "seed": 42}
            ref_params[name] = deq
        else:
            if name.endswith(".weight") and p.ndim >= 2 and "conv_qk" not in name:
                formats[base] = {"kind": "float"}
            stored = p.astype(passthrough_dtype)
            saved[name] = stored
            ref_params[name] = stored.astype(mx.float32)

    # Quantize the reference modules whose stored tensors are quantized, then load the values.
    def predicate(path, module):
        f = formats.get(path)
        if f is None or f["kind"] != "affine" or f["bits"] != 8 or not hasattr(module, "to_quantized"):
            return False
        return {"group_size": f["group_size"], "bits": f["bits"], "mode": "affine"}

    nn.quantize(model, class_predicate=predicate)
    model.load_weights(list(ref_params.items()), strict=True)
    mx.eval(model.parameters())

    # Tokens: a fixed seeded sequence starting with BOS.
    V = cfg["vocab_size"]
    ids = np.concatenate([[2], rng.integers(3, V, size=T - 1)]).astype(np.int32)
    inputs = mx.array(ids)[None]

    inner = model.model
    h = inner.embed_tokens(inputs)
    mask = create_attention_mask(h, None)
    residual = None
    prev = None
    ref = {"token_ids": mx.array(ids)}
    for n, layer in enumerate(inner.layers):
        # mirror ZayaLayer.__call__ to capture the residual entering input_norm
        residual, hs = layer.res_scale(residual, h)
        residual = hs.astype(mx.float32) if residual is None else residual.astype(mx.float32) + hs
        x = layer.input_norm(residual.astype(layer.input_norm.weight.dtype))
        ref[f"residual.{n}"] = residual[0]
        if layer.self_attn is not None:
            h = layer.self_attn(x, mask, None)
        else:
            scores, idx, active, _ = layer.zaya_block.router(x, prev)
            route = mx.where(active, idx, cfg["num_experts"])[..., 0]
            ref[f"route.{n}"] = route[0].astype(mx.int32)
            h, prev = layer.zaya_block(x, prev)
        ref[f"hidden.{n}"] = h[0].astype(mx.float32)
    residual, hs = inner.res_scale(residual, h)
    y = inner.final_norm((hs.astype(mx.float32) + residual.astype(mx.float32)))
    logits = inner.embed_tokens.as_linear(y)
    ref["logits"] = logits[0].astype(mx.float32)
    # sanity: the library's own forward gives the same logits
    lib = model(inputs)[0]
    assert mx.abs(lib - ref["logits"]).max().item() <= 1e-5 * max(1.0, mx.abs(lib).max().item()), \
        "manual layer loop disagrees with Model.__call__"

    mx.eval(ref)
    mx.save_safetensors(str(out / "weights.safetensors"), saved)
    mx.save_safetensors(str(out / "reference.safetensors"), ref)
    if sidecar:
        mx.save_safetensors(str(out / "sidecar.safetensors"), sidecar)
    (out / "formats.json").write_text(json.dumps(formats, indent=1, sort_keys=True))
    (out / "config.json").write_text(json.dumps(cfg, indent=1, sort_keys=True))
    routes = {k: np.array(v).tolist() for k, v in ref.items() if k.startswith("route.")}
    print(json.dumps({"preset": preset, "format": fmt, "routes": routes}))


if __name__ == "__main__":
    main()
