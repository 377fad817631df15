"""Renders chat conversations and encodes texts with Hugging Face transformers' AutoTokenizer on a
synthetic bundle directory (the reference for tests/synth_tokenizer.rs).

usage: synth_hf_tokenizer.py BUNDLE CASES.json
CASES.json: {"chats": [{"messages": [...], "tools": [...]|null, "enable_thinking": bool|null,
             "add_generation_prompt": bool}], "texts": ["..."]}
prints one JSON line: {"chats": [{"text": str, "ids": [int]}], "texts": [[int]]}
"""
import json
import shutil
import sys
import tempfile
from pathlib import Path

from transformers import AutoTokenizer

# Only the tokenizer files: transformers 5 rejects the legacy config.json (`rope_scaling: false`).
tmp = Path(tempfile.mkdtemp())
for name in ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja"]:
    shutil.copy(Path(sys.argv[1]) / name, tmp / name)
tok = AutoTokenizer.from_pretrained(str(tmp))
cases = json.load(open(sys.argv[2]))
out = {"chats": [], "texts": []}
for c in cases["chats"]:
    kw = {}
    if c.get("enable_thinking") is not None:
        kw["enable_thinking"] = c["enable_thinking"]
    text = tok.apply_chat_template(c["messages"], tools=c.get("tools"), tokenize=False,
                                   add_generation_prompt=c["add_generation_prompt"], **kw)
    ids = tok(text, add_special_tokens=False)["input_ids"]
    out["chats"].append({"text": text, "ids": list(ids)})
for t in cases["texts"]:
    out["texts"].append(list(tok(t)["input_ids"]))
out["bos"] = tok.bos_token
out["eos"] = tok.eos_token
print(json.dumps(out))
