//! Chat templates: Hugging Face Jinja chat templates rendered with minijinja, matching what
//! transformers' `apply_chat_template(..., tokenize=False)` produces with jinja2.
//!
//! Sources, in HF's order of precedence: `chat_template.jinja` (plus `additional_chat_templates/*.jinja`
//! as named templates), `chat_template.json`, then `chat_template` in `tokenizer_config.json` (a string,
//! or a list of `{name, template}`: `tool_use` is picked when tools are given, else `default`).
//!
//! The environment mirrors transformers' (`ImmutableSandboxedEnvironment(trim_blocks=True,
//! lstrip_blocks=True)` with loop controls):
//! - globals `raise_exception(msg)` (→ [`ZayaError::Template`] carrying the message),
//!   `strftime_now(fmt)` (local time, C `strftime` like Python's naive `datetime.now().strftime`),
//!   `namespace`, `dict`, `range`, `cycler`, `joiner`; jinja2's `truncate`, and `striptags` /
//!   `filesizeformat` from minijinja-contrib;
//! - filter `tojson(ensure_ascii=False, indent=None, separators=None, sort_keys=False)` exactly like
//!   Python's `json.dumps` (key order kept, no HTML escaping, Python float repr);
//! - Python string/dict/list methods (`.strip()`, `.startswith()`, `.split()`, `.items()`, `.get()`...)
//!   through minijinja-contrib's `pycompat`;
//! - variables `messages`, `tools` (None when absent, as HF passes it), `documents`,
//!   `add_generation_prompt`, `bos_token`/`eos_token`/`pad_token`/`unk_token`, `enable_thinking` when
//!   set, and any extra kwargs (`--chat-template-config` JSON object).
//!
//! jinja2 / minijinja differences handled here:
//! - `{% generation %}…{% endgeneration %}` (transformers' assistant-mask extension) is rewritten to a
//!   transparent `{% if true %}…{% endif %}` keeping the tag's whitespace control;
//! - printing follows Python `str()`: `None`, `True`/`False`, float repr (`1.0`, `1e+16`), and lists /
//!   dicts in Python repr (`['a', 1]`, `{'k': 'v'}`) instead of minijinja's JSON-like output;
//! - reasoning fields are aliased as transformers does (`reasoning_content` ← `thinking` / `reasoning`,
//!   and `thinking` filled for gpt-oss-style templates);
//! - no HTML auto-escaping whatever the template's file name.
//!
//! Known remaining differences: `~` concatenation and `|string` use minijinja's formatting
//! (`none`, `true`), Python `%` string formatting is not available, and attribute access on
//! undefined values errors in both engines but with different messages. `loop.last`, `loop.index0`,
//! `is defined`, `namespace()`, slicing (`messages[::-1]`), `{% break %}` behave as in jinja2.
//!
//! The Python-compatibility filters, globals and printing live in `filters`.
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use minijinja::value::{Rest, Value as JValue};
use minijinja::{AutoEscape, Environment, Error as JError, ErrorKind};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::{Result, ZayaError};
use crate::text::tokenizer::{token_content, Tokenizer};

mod filters;

use filters::{py_formatter, raise_exception, strftime_now, tojson_filter, truncate_filter, RaisedException};

/// One chat message. Serialises to the dict HF templates read (absent fields are left out, so
/// `message.x is defined` behaves as in Python).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Message {
    /// `system`, `user`, `assistant` or `tool`.
    pub role: String,
    /// Text content (`None`: no `content` key; HF tool-call turns may carry `null` via `extra`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    /// The assistant's reasoning (rendered inside `<think>…</think>` by thinking templates).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning_content: Option<String>,
    /// OpenAI-style tool calls: `{"type": "function", "function": {"name", "arguments"}}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<Value>>,
    /// Id of the call a `tool` message answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
    /// Tool name of a `tool` message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Any other keys.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl Message {
    /// A message with `role` and text `content`.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Message {
            role: role.into(),
            content: Some(content.into()),
            ..Default::default()
        }
    }
    /// A system message.
    pub fn system(content: impl Into<String>) -> Self {
        Self::new("system", content)
    }
    /// A user message.
    pub fn user(content: impl Into<String>) -> Self {
        Self::new("user", content)
    }
    /// An assistant message.
    pub fn assistant(content: impl Into<String>) -> Self {
        Self::new("assistant", content)
    }
    /// A tool response message.
    pub fn tool(content: impl Into<String>) -> Self {
        Self::new("tool", content)
    }
    /// The message as the JSON dict a template sees.
    pub fn to_value(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }
}

/// Everything besides the messages that a render takes.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ChatOptions {
    /// Append the assistant turn header (`<|im_start|>assistant\n`...).
    pub add_generation_prompt: bool,
    /// Leave the last message open so generation continues it (HF `continue_final_message`, the
    /// `--prefill-response` of mlx-lm). Incompatible with `add_generation_prompt`.
    pub continue_final_message: bool,
    /// `enable_thinking` for the template; `None` leaves it undefined (template default).
    pub enable_thinking: Option<bool>,
    /// Tool JSON schemas (`tools`); `None` renders `tools` as None.
    pub tools: Option<Vec<Value>>,
    /// RAG documents (`documents`).
    pub documents: Option<Vec<Value>>,
    /// Name of the template to use when the model has several (default: `tool_use` when tools are
    /// given and it exists, else `default`).
    pub template_name: Option<String>,
    /// Extra template variables (the JSON object of `--chat-template-config`).
    pub extra: Map<String, Value>,
}

const RESERVED_KWARGS: [&str; 4] = ["messages", "tools", "documents", "add_generation_prompt"];

impl ChatOptions {
    /// Parses a `--chat-template-config` JSON object into `extra`; bad JSON or a non-object is an
    /// `InvalidArgument` naming the flag.
    pub fn with_config_json(mut self, json: &str) -> Result<Self> {
        let v: Value = serde_json::from_str(json)
            .map_err(|e| ZayaError::InvalidArgument(format!("--chat-template-config: not valid JSON: {e}")))?;
        let Value::Object(m) = v else {
            return Err(ZayaError::InvalidArgument(
                "--chat-template-config must be a JSON object".into(),
            ));
        };
        for (k, v) in m {
            if RESERVED_KWARGS.contains(&k.as_str()) {
                let how = match k.as_str() {
                    "tools" => "pass the tool schemas with --tools FILE.json",
                    "documents" => "documents are set through the library (ChatOptions::documents)",
                    _ => "the conversation and the generation prompt are set by zaya",
                };
                return Err(ZayaError::InvalidArgument(format!(
                    "--chat-template-config must not set `{k}`: {how}"
                )));
            }
            if k == "enable_thinking" && self.enable_thinking.is_none() {
                self.enable_thinking = v.as_bool();
            }
            self.extra.insert(k, v);
        }
        Ok(self)
    }
}

/// Largest rendered prompt (bytes): a template that builds huge strings stops here.
pub const MAX_RENDER_BYTES: usize = 16 << 20;

/// A render target that refuses to grow past [`MAX_RENDER_BYTES`].
struct LimitedBuf(Vec<u8>);

impl std::io::Write for LimitedBuf {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        if self.0.len() + b.len() > MAX_RENDER_BYTES {
            self.0.resize(MAX_RENDER_BYTES, 0);
            return Err(std::io::Error::other("rendered prompt too long"));
        }
        self.0.extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Instructions one render may execute (a long conversation with tools takes well under 1%).
pub const TEMPLATE_FUEL: u64 = 50_000_000;

/// A loaded chat template (one or several named ones) with the tokenizer's special tokens.
#[derive(Clone)]
pub struct ChatTemplate {
    env: Environment<'static>,
    /// (name, name in the environment = what errors show)
    templates: Vec<(String, String)>,
    special: BTreeMap<String, String>,
    /// SHA-256 of the template sources (names and text), hex.
    source_hash: String,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("templates", &self.templates)
            .field("special", &self.special)
            .finish()
    }
}

fn template_error(e: &JError) -> ZayaError {
    let mut raised = None;
    let mut src: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(s) = src {
        if let Some(r) = s.downcast_ref::<RaisedException>() {
            raised = Some(r.0.clone());
        }
        src = s.source();
    }
    let place = match (e.name(), e.line()) {
        (Some(n), Some(l)) => format!("{n} line {l}: "),
        (Some(n), None) => format!("{n}: "),
        _ => String::new(),
    };
    if e.kind() == ErrorKind::OutOfFuel {
        return ZayaError::Template(format!(
            "{place}rendering took more than {TEMPLATE_FUEL} steps and was stopped (a loop that does not end?)"
        ));
    }
    match raised {
        Some(msg) => ZayaError::Template(format!("{place}template raised an exception: {msg}")),
        None => {
            let detail = e.detail().map(|d| format!(": {d}")).unwrap_or_default();
            ZayaError::Template(format!("{place}{}{detail}", e.kind()))
        }
    }
}

impl ChatTemplate {
    /// Loads the chat template of a bundle directory; `Ok(None)` when it has none.
    pub fn from_dir(dir: &Path) -> Result<Option<Self>> {
        let read = |name: &str| -> Result<Option<String>> {
            let p = dir.join(name);
            if !p.exists() {
                return Ok(None);
            }
            crate::files::read_text_limited(&p, crate::files::MAX_CONFIG_BYTES).map(Some)
        };
        let tok_cfg: Option<Value> = match read("tokenizer_config.json")? {
            Some(t) => Some(
                serde_json::from_str(&t)
                    .map_err(|e| ZayaError::Template(format!("tokenizer_config.json: not valid JSON: {e}")))?,
            ),
            None => None,
        };
        let mut named: Vec<(String, String, String)> = Vec::new(); // (name, env name, source)
        if let Some(src) = read("chat_template.jinja")? {
            named.push(("default".into(), "chat_template.jinja".into(), src));
            let extra_dir = dir.join("additional_chat_templates");
            if extra_dir.is_dir() {
                let mut files: Vec<_> = std::fs::read_dir(&extra_dir)
                    .map_err(|e| ZayaError::io(&extra_dir, e))?
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| p.extension().is_some_and(|x| x == "jinja"))
                    .collect();
                files.sort();
                for p in files {
                    let name = p.file_stem().unwrap_or_default().to_string_lossy().into_owned();
                    let src = crate::files::read_text_limited(&p, crate::files::MAX_CONFIG_BYTES)?;
                    named.push((name.clone(), format!("additional_chat_templates/{name}.jinja"), src));
                }
            }
        } else if let Some(text) = read("chat_template.json")? {
            let v: Value = serde_json::from_str(&text)
                .map_err(|e| ZayaError::Template(format!("chat_template.json: not valid JSON: {e}")))?;
            let t = v
                .get("chat_template")
                .ok_or_else(|| ZayaError::Template("chat_template.json: no `chat_template` key".into()))?;
            named = parse_template_field(t, "chat_template.json")?;
        } else if let Some(t) = tok_cfg.as_ref().and_then(|c| c.get("chat_template")) {
            if !t.is_null() {
                named = parse_template_field(t, "tokenizer_config.json")?;
            }
        }
        if named.is_empty() {
            return Ok(None);
        }
        let mut tpl = Self::build(named)?;
        if let Some(cfg) = &tok_cfg {
            tpl.set_special_tokens_from_config(cfg);
        }
        Ok(Some(tpl))
    }

    /// A template from source text; `file` names it in errors.
    pub fn from_source(source: &str, file: &str) -> Result<Self> {
        Self::build(vec![("default".into(), file.into(), source.into())])
    }

    /// The template(s) of a tokenizer_config.json value (`chat_template` string or list) with its
    /// special tokens; `Ok(None)` when there is no template.
    pub fn from_tokenizer_config(cfg: &Value, file: &str) -> Result<Option<Self>> {
        match cfg.get("chat_template") {
            None | Some(Value::Null) => Ok(None),
            Some(t) => {
                let mut tpl = Self::build(parse_template_field(t, file)?)?;
                tpl.set_special_tokens_from_config(cfg);
                Ok(Some(tpl))
            }
        }
    }

    /// Sets `bos_token` / `eos_token` / `pad_token` / `unk_token` from a tokenizer_config.json value.
    pub fn set_special_tokens_from_config(&mut self, cfg: &Value) {
        for key in ["bos_token", "eos_token", "pad_token", "unk_token"] {
            if let Some(c) = cfg.get(key).and_then(token_content) {
                self.special.insert(key.to_owned(), c);
            }
        }
    }

    /// Sets one special-token variable (e.g. `bos_token`) the template sees.
    pub fn set_special_token(&mut self, key: &str, content: &str) {
        self.special.insert(key.to_owned(), content.to_owned());
    }

    /// Names of the templates (`default`, `tool_use`...).
    pub fn names(&self) -> Vec<&str> {
        self.templates.iter().map(|t| t.0.as_str()).collect()
    }

    fn build(named: Vec<(String, String, String)>) -> Result<Self> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_keep_trailing_newline(false);
        env.set_auto_escape_callback(|_| AutoEscape::None);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.set_formatter(py_formatter);
        // a bound on the work of one render: a template whose loops do not end (or nest ranges into
        // billions of steps) fails with an error instead of hanging the command
        env.set_fuel(Some(TEMPLATE_FUEL));
        // jinja2 builtins that minijinja keeps in minijinja-contrib
        env.add_filter("truncate", truncate_filter);
        env.add_filter("striptags", minijinja_contrib::filters::striptags);
        env.add_filter("filesizeformat", minijinja_contrib::filters::filesizeformat);
        env.add_function("cycler", |items: Rest<JValue>| {
            minijinja_contrib::globals::cycler(items.0)
        });
        env.add_function("joiner", minijinja_contrib::globals::joiner);
        env.add_filter("tojson", tojson_filter);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        let mut templates = Vec::new();
        let mut hasher = <sha2::Sha256 as sha2::Digest>::new();
        for (name, _, src) in &named {
            for part in [name.as_bytes(), &[0], src.as_bytes(), &[0]] {
                sha2::Digest::update(&mut hasher, part);
            }
        }
        let source_hash = hex(&sha2::Digest::finalize(hasher));
        for (name, env_name, src) in named {
            env.add_template_owned(env_name.clone(), rewrite_generation_tags(&src))
                .map_err(|e| template_error(&e))?;
            templates.push((name, env_name));
        }
        Ok(ChatTemplate {
            env,
            templates,
            special: BTreeMap::new(),
            source_hash,
        })
    }

    /// A fingerprint of the template: SHA-256 (hex) of its sources and the special tokens it sees.
    /// Prompt-cache files record it so that a conversation is not resumed under another template.
    pub fn fingerprint(&self) -> String {
        let mut h = <sha2::Sha256 as sha2::Digest>::new();
        sha2::Digest::update(&mut h, self.source_hash.as_bytes());
        for (k, v) in &self.special {
            for part in [k.as_bytes(), &[0], v.as_bytes(), &[0]] {
                sha2::Digest::update(&mut h, part);
            }
        }
        hex(&sha2::Digest::finalize(h))
    }

    fn pick(&self, opts: &ChatOptions) -> Result<&str> {
        if self.templates.len() == 1 && opts.template_name.is_none() {
            return Ok(&self.templates[0].1);
        }
        let find = |n: &str| self.templates.iter().find(|t| t.0 == n).map(|t| t.1.as_str());
        if let Some(n) = &opts.template_name {
            return find(n).ok_or_else(|| {
                ZayaError::InvalidArgument(format!(
                    "chat template `{n}` not found (available: {})",
                    self.names().join(", ")
                ))
            });
        }
        if opts.tools.is_some() {
            if let Some(t) = find("tool_use") {
                return Ok(t);
            }
        }
        find("default").ok_or_else(|| {
            ZayaError::Template(format!(
                "the model has several chat templates ({}) and none is named `default`",
                self.names().join(", ")
            ))
        })
    }

    /// Renders and tokenizes a conversation for the model, as HF `apply_chat_template(tokenize=True)`:
    /// the rendered text already holds `bos_token`, so no special tokens are added on top.
    pub fn tokenize(&self, tokenizer: &Tokenizer, messages: &[Value], opts: &ChatOptions) -> Result<Vec<u32>> {
        tokenizer.encode(&self.render(messages, opts)?, false)
    }

    /// Renders typed messages.
    pub fn render_messages(&self, messages: &[Message], opts: &ChatOptions) -> Result<String> {
        let v: Vec<Value> = messages.iter().map(Message::to_value).collect();
        self.render(&v, opts)
    }

    /// Renders a conversation (each message a JSON object with at least `role`) to the prompt text.
    pub fn render(&self, messages: &[Value], opts: &ChatOptions) -> Result<String> {
        let name = self.pick(opts)?;
        let tpl = self.env.get_template(name).map_err(|e| template_error(&e))?;
        for (i, m) in messages.iter().enumerate() {
            if !m.is_object() {
                return Err(ZayaError::InvalidArgument(format!(
                    "chat message {i} must be a JSON object, got {m}"
                )));
            }
        }
        if opts.continue_final_message && opts.add_generation_prompt {
            return Err(ZayaError::InvalidArgument(
                "continue_final_message and add_generation_prompt cannot both be set".into(),
            ));
        }
        let mut msgs: Vec<Value> = messages.iter().map(alias_reasoning).collect();
        // continue_final_message: tag the final text, render, cut at the tag (transformers' method)
        const TAG: &str = "CONTINUE_FINAL_MESSAGE_TAG ";
        let mut final_text = None;
        if opts.continue_final_message {
            let last = msgs.last_mut().ok_or_else(|| {
                ZayaError::InvalidArgument("continue_final_message: the conversation is empty".into())
            })?;
            match last.get_mut("content") {
                Some(Value::String(s)) => {
                    final_text = Some(s.clone());
                    s.push_str(TAG);
                }
                Some(Value::Array(parts)) => {
                    let block = parts.iter_mut().rev().find_map(|b| b.get_mut("text")).ok_or_else(|| {
                        ZayaError::InvalidArgument("continue_final_message: the final message has no text".into())
                    })?;
                    let s = block.as_str().unwrap_or_default().to_owned();
                    final_text = Some(s.clone());
                    *block = Value::String(s + TAG);
                }
                _ => {
                    return Err(ZayaError::InvalidArgument(
                        "continue_final_message: the final message has no content to continue".into(),
                    ))
                }
            }
        }
        let mut ctx: BTreeMap<String, JValue> = BTreeMap::new();
        for (k, v) in &self.special {
            ctx.insert(k.clone(), JValue::from(v.clone()));
        }
        for (k, v) in &opts.extra {
            if RESERVED_KWARGS.contains(&k.as_str()) {
                return Err(ZayaError::InvalidArgument(format!(
                    "--chat-template-config must not set `{k}` (it has its own option)"
                )));
            }
            ctx.insert(k.clone(), JValue::from_serialize(v));
        }
        if let Some(t) = opts.enable_thinking {
            ctx.insert("enable_thinking".into(), JValue::from(t));
        }
        ctx.insert("messages".into(), JValue::from_serialize(&msgs));
        ctx.insert(
            "tools".into(),
            opts.tools.as_ref().map_or(JValue::from(()), JValue::from_serialize),
        );
        ctx.insert(
            "documents".into(),
            opts.documents.as_ref().map_or(JValue::from(()), JValue::from_serialize),
        );
        ctx.insert("add_generation_prompt".into(), JValue::from(opts.add_generation_prompt));
        let mut buf = LimitedBuf(Vec::new());
        tpl.render_captured_to(ctx, &mut buf).map(drop).map_err(|e| {
            if buf.0.len() >= MAX_RENDER_BYTES {
                ZayaError::Template(format!(
                    "the rendered prompt exceeds {MAX_RENDER_BYTES} bytes and was stopped"
                ))
            } else {
                template_error(&e)
            }
        })?;
        let out =
            String::from_utf8(buf.0).map_err(|_| ZayaError::Template("the template rendered invalid UTF-8".into()))?;
        match final_text {
            None => Ok(out),
            Some(text) => {
                let tag = TAG.trim();
                let (Some(at), true) = (out.rfind(tag), out.contains(text.trim())) else {
                    return Err(ZayaError::Template(
                        "continue_final_message: the template does not render the final message verbatim".into(),
                    ));
                };
                if out[at..].starts_with(TAG) {
                    Ok(out[..at].to_owned())
                } else {
                    Ok(out[..at].trim_end().to_owned())
                }
            }
        }
    }
}

/// `chat_template` field: a string, or a list of `{name, template}`.
fn parse_template_field(v: &Value, file: &str) -> Result<Vec<(String, String, String)>> {
    match v {
        Value::String(s) => Ok(vec![("default".into(), file.into(), s.clone())]),
        Value::Array(list) => {
            let mut out = Vec::new();
            for (i, e) in list.iter().enumerate() {
                let name = e.get("name").and_then(Value::as_str);
                let tpl = e.get("template").and_then(Value::as_str);
                match (name, tpl) {
                    (Some(n), Some(t)) => out.push((n.to_owned(), format!("{file}[{n}]"), t.to_owned())),
                    _ => {
                        return Err(ZayaError::Template(format!(
                            "{file}: chat_template[{i}] must be an object with string `name` and `template`"
                        )))
                    }
                }
            }
            Ok(out)
        }
        _ => Err(ZayaError::Template(format!(
            "{file}: chat_template must be a string or a list of {{name, template}}"
        ))),
    }
}

/// transformers' `_alias_reasoning_fields`: `{"thinking": r, **message, "reasoning_content": r}` where r
/// is the first non-null of reasoning_content / thinking / reasoning.
fn alias_reasoning(m: &Value) -> Value {
    let Value::Object(o) = m else { return m.clone() };
    let r = ["reasoning_content", "thinking", "reasoning"]
        .iter()
        .find_map(|k| o.get(*k).filter(|v| !v.is_null()));
    let Some(r) = r else { return m.clone() };
    let mut out = Map::new();
    out.insert("thinking".into(), r.clone());
    for (k, v) in o {
        out.insert(k.clone(), v.clone());
    }
    out.insert("reasoning_content".into(), r.clone());
    Value::Object(out)
}

/// Rewrites `{% generation %}` / `{% endgeneration %}` (any whitespace control) to `{% if true %}` /
/// `{% endif %}`, keeping the `-`/`+` markers.
fn rewrite_generation_tags(src: &str) -> String {
    let mut out = String::with_capacity(src.len());
    let mut rest = src;
    while let Some(i) = rest.find("{%") {
        out.push_str(&rest[..i]);
        let tag = &rest[i..];
        // the closing `%}` starts after the opening `{%` (in `{%}` they overlap)
        let Some(end) = tag[2..].find("%}").map(|e| e + 2) else {
            out.push_str(tag);
            return out;
        };
        let inner = &tag[2..end];
        let (lead, body) = match inner.chars().next() {
            Some(c @ ('-' | '+')) => (c.to_string(), &inner[1..]),
            _ => (String::new(), inner),
        };
        let (body, trail) = match body.chars().last() {
            Some(c @ ('-' | '+')) => (&body[..body.len() - 1], c.to_string()),
            _ => (body, String::new()),
        };
        let replacement = match body.trim() {
            "generation" => Some("if true"),
            "endgeneration" => Some("endif"),
            _ => None,
        };
        match replacement {
            Some(r) => {
                let _ = write!(out, "{{%{lead} {r} {trail}%}}");
            }
            None => out.push_str(&tag[..end + 2]),
        }
        rest = &tag[end + 2..];
    }
    out.push_str(rest);
    out
}

/// Lower-case hex of `bytes`.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generation_tags_are_rewritten_and_odd_tags_survive() {
        assert_eq!(
            rewrite_generation_tags("a{%- generation -%}b{% endgeneration %}c"),
            "a{%- if true -%}b{% endif %}c"
        );
        // `{%}`: the closing marker overlaps the opening one (found by the fuzz harness)
        assert_eq!(rewrite_generation_tags("x{%}y"), "x{%}y");
        assert_eq!(rewrite_generation_tags("{%"), "{%");
        assert_eq!(rewrite_generation_tags("{%%}"), "{%%}");
    }
}
