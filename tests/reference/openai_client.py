"""Talks to a running `zaya serve` with the official `openai` Python client (tests/server_api.rs).

Usage: openai_client.py BASE_URL MODEL_ID. Prints one JSON object: the chat answer (whole and
streamed), the listed models, usage figures, a text completion from token ids, and the status of an
error case (an unknown model).
"""
import json
import sys

import openai

base, model = sys.argv[1], sys.argv[2]
client = openai.OpenAI(base_url=base, api_key="none")
messages = [{"role": "user", "content": "Say hello."}]

r = client.chat.completions.create(model=model, messages=messages, max_tokens=8)
chat = r.choices[0].message.content

parts = []
usage = None
for chunk in client.chat.completions.create(
    model=model, messages=messages, max_tokens=8, stream=True, stream_options={"include_usage": True}
):
    if chunk.choices and chunk.choices[0].delta.content:
        parts.append(chunk.choices[0].delta.content)
    if chunk.usage is not None:
        usage = chunk.usage

c = client.completions.create(model=model, prompt=[1, 2, 3, 4], max_tokens=5)

try:
    client.chat.completions.create(model="no-such-model", messages=messages, max_tokens=2)
    status = None
except openai.APIStatusError as e:
    status = e.status_code

print(json.dumps({
    "chat": chat,
    "chat_stream": "".join(parts),
    "models": [m.id for m in client.models.list().data],
    "usage_completion_tokens": usage.completion_tokens if usage else None,
    "usage_prompt_tokens": r.usage.prompt_tokens,
    "completion_text": c.choices[0].text,
    "completion_tokens": c.usage.completion_tokens,
    "error_status": status,
}))
