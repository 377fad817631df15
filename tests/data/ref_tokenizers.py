"""Reference for tests/text_tokenizer.rs: encodes/decodes with the Python `tokenizers` package and,
when a bundle dir is given, with transformers' AutoTokenizer (tokenizer_config.json semantics).
stdin: {"tokenizer_json": path, "dir": path|null, "texts": [str], "ids": [[int]]}
stdout: JSON with one list per operation."""
import json
import sys

from tokenizers import Tokenizer

req = json.load(sys.stdin)
tok = Tokenizer.from_file(req["tokenizer_json"])
texts, id_lists = req["texts"], req["ids"]
out = {
    "encode_special": [tok.encode(t, add_special_tokens=True).ids for t in texts],
    "encode_plain": [tok.encode(t, add_special_tokens=False).ids for t in texts],
    "decode": [tok.decode(ids, skip_special_tokens=False) for ids in id_lists],
    "decode_skip": [tok.decode(ids, skip_special_tokens=True) for ids in id_lists],
}
tok.encode_special_tokens = True
out["encode_literal"] = [tok.encode(t, add_special_tokens=False).ids for t in texts]
if req.get("dir"):
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(req["dir"])
    out["hf_call"] = [hf(t)["input_ids"] for t in texts]
    out["hf_plain"] = [hf.encode(t, add_special_tokens=False) for t in texts]
    out["hf_bos"] = hf.bos_token_id
    out["hf_eos"] = hf.eos_token_id
    out["hf_vocab_size"] = len(hf)
json.dump(out, sys.stdout, ensure_ascii=False)
