"""Reference for tests/sampling_filters.rs, from mlx-lm's sample_utils (mlx-lm 0.32.2):
- "processors": make_logits_processors(logit_bias, repetition/presence/frequency penalties) applied
  to the logits with the history;
- "top_k" / "top_p" / "min_p": one filter on the log-probabilities (temperature 1), then softmax.
stdin: [{"mode", "logits": [float], "history": [int], ...params}]; stdout: [[float]]."""
import json
import sys

import mlx.core as mx
from mlx_lm.sample_utils import apply_min_p, apply_top_k, apply_top_p, make_logits_processors

out = []
for case in json.load(sys.stdin):
    logits = mx.array(case["logits"], dtype=mx.float32)[None]
    mode = case["mode"]
    if mode == "processors":
        bias = {int(k): v for k, v in case.get("logit_bias", {}).items()} or None
        ctx = case.get("context_size", 20)
        procs = make_logits_processors(
            logit_bias=bias,
            repetition_penalty=case.get("repetition_penalty"),
            repetition_context_size=case.get("repetition_context_size", 20),
            presence_penalty=case.get("presence_penalty"),
            presence_context_size=ctx,
            frequency_penalty=case.get("frequency_penalty"),
            frequency_context_size=ctx,
        )
        tokens = mx.array(case["history"], dtype=mx.int32)
        for p in procs:
            logits = p(tokens, logits)
        res = logits
    else:
        logprobs = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
        if mode == "top_k":
            f = apply_top_k(logprobs, case["top_k"])
        elif mode == "top_p":
            f = apply_top_p(logprobs, case["top_p"])
        else:
            f = apply_min_p(logprobs, case["min_p"])
        res = mx.softmax(f, axis=-1)
    out.append(res[0].tolist())
json.dump(out, sys.stdout)
