"""Reference for tests/text_chat.rs: renders chat templates exactly as transformers'
apply_chat_template(tokenize=False) does (jinja2 sandbox, trim_blocks/lstrip_blocks, tojson,
raise_exception, strftime_now, reasoning aliasing, continue_final_message).
stdin: {"templates": {name: source}, "special": {bos_token: ...},
        "cases": [{"template", "messages", "tools", "documents", "add_generation_prompt",
                   "continue_final_message", "kwargs"}]}
stdout: [{"ok": text} | {"error": message}]"""
import json
import sys

from transformers.utils.chat_template_utils import render_jinja_template

req = json.load(sys.stdin)
out = []
for case in req["cases"]:
    kwargs = dict(req.get("special", {}))
    kwargs.update(case.get("kwargs") or {})
    try:
        rendered, _ = render_jinja_template(
            conversations=[case["messages"]],
            tools=case.get("tools"),
            documents=case.get("documents"),
            chat_template=req["templates"][case["template"]],
            add_generation_prompt=case.get("add_generation_prompt", False),
            continue_final_message=case.get("continue_final_message", False),
            **kwargs,
        )
        out.append({"ok": rendered[0]})
    except Exception as e:  # noqa: BLE001 - the test compares error messages
        out.append({"error": str(e)})
json.dump(out, sys.stdout, ensure_ascii=False)
