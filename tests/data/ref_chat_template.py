"""Reference for tests/text_chat.rs: renders chat templates with jinja2 (pinned 3.1.6 in the
reference venv) in the environment Hugging Face transformers (5.x) builds for
apply_chat_template(tokenize=False): ImmutableSandboxedEnvironment(trim_blocks=True,
lstrip_blocks=True) with loop controls and the `{% generation %}` tag, the `tojson` filter override,
`raise_exception` and `strftime_now` globals, the reasoning-field aliasing of messages, `tools` and
`documents` always passed (None when absent), and the continue_final_message cut.
stdin: {"templates": {name: source}, "special": {bos_token: ...},
        "cases": [{"template", "messages", "tools", "documents", "add_generation_prompt",
                   "continue_final_message", "kwargs"}]}
stdout: [{"ok": text} | {"error": message}]
The test cases render identically with transformers 5.24.0's own render_jinja_template (checked once);
plain jinja2 keeps the reference independent of the unpinned transformers version."""
import json
import sys
from datetime import datetime

import jinja2
import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment


class GenerationTag(jinja2.ext.Extension):
    """`{% generation %}...{% endgeneration %}`: renders its body unchanged."""

    tags = {"generation"}

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(["name:endgeneration"], drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

    def _body(self, caller):
        return caller()


def raise_exception(message):
    raise jinja2.exceptions.TemplateError(message)


def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def strftime_now(fmt):
    return datetime.now().strftime(fmt)


env = ImmutableSandboxedEnvironment(
    trim_blocks=True, lstrip_blocks=True, extensions=[GenerationTag, jinja2.ext.loopcontrols]
)
env.filters["tojson"] = tojson
env.globals["raise_exception"] = raise_exception
env.globals["strftime_now"] = strftime_now

REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")
TAG = "CONTINUE_FINAL_MESSAGE_TAG "


def alias_reasoning(message):
    reasoning = next((message[k] for k in REASONING_FIELDS if message.get(k) is not None), None)
    if reasoning is None:
        return message
    return {"thinking": reasoning, **message, "reasoning_content": reasoning}


def render(template, case, special):
    messages = [alias_reasoning(m) for m in case["messages"]]
    final = None
    if case.get("continue_final_message"):
        last = messages[-1]
        if isinstance(last["content"], list):
            block = next(b for b in reversed(last["content"]) if "text" in b)
            final = block["text"]
            block["text"] = final + TAG
        else:
            final = last["content"]
            last["content"] = final + TAG
    kwargs = dict(special)
    kwargs.update(case.get("kwargs") or {})
    out = template.render(
        messages=messages,
        tools=case.get("tools"),
        documents=case.get("documents"),
        add_generation_prompt=case.get("add_generation_prompt", False),
        **kwargs,
    )
    if final is not None:
        if final.strip() not in out or TAG.strip() not in out:
            raise ValueError("continue_final_message: final message not rendered verbatim")
        at = out.rindex(TAG.strip())
        out = out[:at] if out[at : at + len(TAG)] == TAG else out[:at].rstrip()
    return out


req = json.load(sys.stdin)
templates = {name: env.from_string(src) for name, src in req["templates"].items()}
result = []
for case in req["cases"]:
    try:
        result.append({"ok": render(templates[case["template"]], case, req.get("special", {}))})
    except Exception as e:  # noqa: BLE001 - the test compares error messages
        result.append({"error": str(e)})
json.dump(result, sys.stdout, ensure_ascii=False)
