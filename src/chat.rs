//! Chat templates (minijinja, Hugging Face conventions): messages, tools, `enable_thinking`.
