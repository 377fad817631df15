//! The OpenAI request fields `zaya serve` reads (chat and text completions), checked with
//! OpenAI-style error objects, and turned into generation settings; the error type every route
//! answers with.
use std::collections::BTreeMap;

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Map, Value};

use crate::runtime::sampling::SamplingParams;
use crate::runtime::GenParams;
use crate::text::chat::ChatOptions;

/// An OpenAI error object with its HTTP status.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub kind: &'static str,
    pub param: Option<String>,
    pub code: Option<&'static str>,
    /// Seconds for a `Retry-After` header (429).
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
            kind,
            param: None,
            code: None,
            retry_after: None,
        }
    }

    /// 400 `invalid_request_error` about `param`.
    pub fn bad(param: &str, message: impl Into<String>) -> Self {
        ApiError {
            param: Some(param.to_string()),
            ..Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", message)
        }
    }

    pub fn code(mut self, code: &'static str) -> Self {
        self.code = Some(code);
        self
    }

    /// The error of a failed request: bad input is a 400, anything else a 500.
    pub fn from_zaya(e: &crate::ZayaError) -> Self {
        if e.exit_code() == 2 {
            ApiError::new(StatusCode::BAD_REQUEST, "invalid_request_error", e.to_string())
        } else {
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", e.to_string())
        }
    }

    /// The JSON body.
    pub fn body(&self) -> Value {
        json!({"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}})
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = (self.status, axum::Json(self.body())).into_response();
        if let Some(s) = self.retry_after {
            if let Ok(v) = HeaderValue::from_str(&s.to_string()) {
                r.headers_mut().insert("retry-after", v);
            }
        }
        r
    }
}

pub type ApiResult<T> = std::result::Result<T, ApiError>;

/// Reads a JSON object body.
pub fn parse_body(bytes: &[u8]) -> ApiResult<Map<String, Value>> {
    match serde_json::from_slice::<Value>(bytes) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "the request body must be a JSON object",
        )),
        Err(e) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            format!("the request body is not valid JSON: {e}"),
        )),
    }
}

fn present<'a>(b: &'a Map<String, Value>, k: &str) -> Option<&'a Value> {
    b.get(k).filter(|v| !v.is_null())
}

fn number(b: &Map<String, Value>, k: &str) -> ApiResult<Option<f64>> {
    match present(b, k) {
        None => Ok(None),
        Some(v) => v
            .as_f64()
            .filter(|x| x.is_finite())
            .map(Some)
            .ok_or_else(|| ApiError::bad(k, format!("`{k}` must be a number"))),
    }
}

fn integer(b: &Map<String, Value>, k: &str) -> ApiResult<Option<i64>> {
    match present(b, k) {
        None => Ok(None),
        Some(v) => v
            .as_i64()
            .map(Some)
            .ok_or_else(|| ApiError::bad(k, format!("`{k}` must be an integer"))),
    }
}

fn boolean(b: &Map<String, Value>, k: &str) -> ApiResult<Option<bool>> {
    match present(b, k) {
        None => Ok(None),
        Some(v) => v
            .as_bool()
            .map(Some)
            .ok_or_else(|| ApiError::bad(k, format!("`{k}` must be a boolean"))),
    }
}

fn in_range(k: &str, v: Option<f64>, lo: f64, hi: f64, what: &str) -> ApiResult<Option<f64>> {
    match v {
        Some(x) if !(lo..=hi).contains(&x) => Err(ApiError::bad(k, format!("`{k}` must be {what}, got {x}"))),
        _ => Ok(v),
    }
}

/// Fields shared by both endpoints.
pub struct Common {
    pub params: GenParams,
    /// Alternatives per token (`Some(0)`: only the token's own log-probability).
    pub logprobs: Option<usize>,
    pub stream: bool,
    pub include_usage: bool,
}

/// Reads the sampling, length, stop, logprobs and streaming fields. `chat`: `logprobs` is a boolean
/// with `top_logprobs`; otherwise `logprobs` is the number of alternatives.
pub fn parse_common(b: &Map<String, Value>, chat: bool, default_max_tokens: usize) -> ApiResult<Common> {
    if let Some(n) = integer(b, "n")? {
        if n != 1 {
            return Err(ApiError::bad("n", format!("only n = 1 is supported, got {n}")));
        }
    }
    let mut s = SamplingParams::default();
    if let Some(t) = in_range("temperature", number(b, "temperature")?, 0.0, 100.0, "in [0, 100]")? {
        s.temperature = t as f32;
    }
    if let Some(p) = number(b, "top_p")? {
        if !(p > 0.0 && p <= 1.0) {
            return Err(ApiError::bad("top_p", format!("`top_p` must be in (0, 1], got {p}")));
        }
        s.top_p = p as f32;
    }
    if let Some(k) = integer(b, "top_k")? {
        if k < -1 {
            return Err(ApiError::bad(
                "top_k",
                format!("`top_k` must be ≥ 0 (0 or -1: off), got {k}"),
            ));
        }
        s.top_k = k.max(0);
    }
    if let Some(m) = in_range("min_p", number(b, "min_p")?, 0.0, 1.0, "in [0, 1]")? {
        s.min_p = m as f32;
    }
    if let Some(p) = in_range(
        "presence_penalty",
        number(b, "presence_penalty")?,
        -2.0,
        2.0,
        "in [-2, 2]",
    )? {
        s.presence_penalty = p as f32;
    }
    if let Some(p) = in_range(
        "frequency_penalty",
        number(b, "frequency_penalty")?,
        -2.0,
        2.0,
        "in [-2, 2]",
    )? {
        s.frequency_penalty = p as f32;
    }
    if let Some(p) = number(b, "repetition_penalty")? {
        if !(p > 0.0 && p <= 100.0) {
            return Err(ApiError::bad(
                "repetition_penalty",
                format!("`repetition_penalty` must be in (0, 100], got {p}"),
            ));
        }
        s.repetition_penalty = p as f32;
    }
    if let Some(seed) = integer(b, "seed")? {
        s.seed = Some(seed as u64);
    }
    if let Some(v) = present(b, "logit_bias") {
        let Value::Object(m) = v else {
            return Err(ApiError::bad(
                "logit_bias",
                "`logit_bias` must be an object of token id → bias",
            ));
        };
        let mut bias = BTreeMap::new();
        for (k, x) in m {
            let id: u32 = k
                .parse()
                .map_err(|_| ApiError::bad("logit_bias", format!("`logit_bias` key `{k}` is not a token id")))?;
            let x = x.as_f64().filter(|x| (-100.0..=100.0).contains(x)).ok_or_else(|| {
                ApiError::bad(
                    "logit_bias",
                    format!("`logit_bias` of {k} must be a number in [-100, 100]"),
                )
            })?;
            bias.insert(id, x as f32);
        }
        s.logit_bias = bias;
    }
    let max_tokens = match (integer(b, "max_completion_tokens")?, integer(b, "max_tokens")?) {
        (Some(n), _) | (None, Some(n)) => {
            if n < 1 {
                return Err(ApiError::bad(
                    "max_tokens",
                    format!("`max_tokens` must be at least 1, got {n}"),
                ));
            }
            n as usize
        }
        (None, None) => default_max_tokens,
    };
    let stop = match present(b, "stop") {
        None => Vec::new(),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) => {
            let v: Option<Vec<String>> = a.iter().map(|x| x.as_str().map(str::to_string)).collect();
            v.ok_or_else(|| ApiError::bad("stop", "`stop` must be a string or an array of strings"))?
        }
        Some(_) => return Err(ApiError::bad("stop", "`stop` must be a string or an array of strings")),
    };
    if stop.len() > 16 || stop.iter().any(String::is_empty) {
        return Err(ApiError::bad("stop", "`stop`: at most 16 non-empty strings"));
    }
    let logprobs = if chat {
        match boolean(b, "logprobs")? {
            Some(true) => {
                let n = integer(b, "top_logprobs")?.unwrap_or(0);
                if !(0..=20).contains(&n) {
                    return Err(ApiError::bad(
                        "top_logprobs",
                        format!("`top_logprobs` must be in 0..=20, got {n}"),
                    ));
                }
                Some(n as usize)
            }
            _ => None,
        }
    } else {
        match integer(b, "logprobs")? {
            Some(n) if !(0..=20).contains(&n) => {
                return Err(ApiError::bad(
                    "logprobs",
                    format!("`logprobs` must be in 0..=20, got {n}"),
                ));
            }
            Some(n) => Some(n as usize),
            None => None,
        }
    };
    let stream = boolean(b, "stream")?.unwrap_or(false);
    let include_usage = match present(b, "stream_options") {
        None => false,
        Some(Value::Object(o)) => boolean(o, "include_usage")?.unwrap_or(false),
        Some(_) => return Err(ApiError::bad("stream_options", "`stream_options` must be an object")),
    };
    let params = GenParams {
        max_tokens: Some(max_tokens),
        sampling: s,
        stop,
        ..GenParams::default()
    };
    params.validate().map_err(|e| ApiError::bad("", e.to_string()))?;
    Ok(Common {
        params,
        logprobs,
        stream,
        include_usage,
    })
}

/// The chat fields: messages (content as a string or text parts), tools and template options.
pub struct ChatInput {
    pub messages: Vec<Value>,
    pub options: ChatOptions,
    pub thinking: bool,
    pub has_tools: bool,
}

pub fn parse_chat(b: &Map<String, Value>) -> ApiResult<ChatInput> {
    let Some(Value::Array(msgs)) = present(b, "messages") else {
        return Err(ApiError::bad("messages", "`messages` must be a non-empty array"));
    };
    if msgs.is_empty() {
        return Err(ApiError::bad("messages", "`messages` must be a non-empty array"));
    }
    let mut messages = Vec::with_capacity(msgs.len());
    for (i, m) in msgs.iter().enumerate() {
        let Value::Object(m) = m else {
            return Err(ApiError::bad("messages", format!("messages[{i}] must be an object")));
        };
        if !m.get("role").is_some_and(Value::is_string) {
            return Err(ApiError::bad(
                "messages",
                format!("messages[{i}].role must be a string"),
            ));
        }
        let mut m = m.clone();
        match m.get("content") {
            None | Some(Value::Null) | Some(Value::String(_)) => {}
            Some(Value::Array(parts)) => {
                let mut text = String::new();
                for p in parts {
                    match (
                        p.get("type").and_then(Value::as_str),
                        p.get("text").and_then(Value::as_str),
                    ) {
                        (Some("text"), Some(t)) => text.push_str(t),
                        _ => {
                            return Err(ApiError::bad(
                                "messages",
                                format!("messages[{i}].content: only text parts are supported"),
                            ))
                        }
                    }
                }
                m.insert("content".into(), Value::String(text));
            }
            Some(_) => {
                return Err(ApiError::bad(
                    "messages",
                    format!("messages[{i}].content must be a string or an array of text parts"),
                ));
            }
        }
        messages.push(Value::Object(m));
    }
    let mut options = ChatOptions {
        add_generation_prompt: true,
        ..ChatOptions::default()
    };
    let tools = match present(b, "tools") {
        None => None,
        Some(Value::Array(a)) if a.iter().all(Value::is_object) => Some(a.clone()),
        Some(_) => return Err(ApiError::bad("tools", "`tools` must be an array of objects")),
    };
    let has_tools = tools.as_ref().is_some_and(|t| !t.is_empty());
    options.tools = tools.filter(|t| !t.is_empty());
    match present(b, "chat_template_kwargs") {
        None => {}
        Some(Value::Object(kw)) => {
            for (k, v) in kw {
                if ["messages", "tools", "documents", "add_generation_prompt"].contains(&k.as_str()) {
                    return Err(ApiError::bad(
                        "chat_template_kwargs",
                        format!("`chat_template_kwargs` must not set `{k}`"),
                    ));
                }
                if k == "enable_thinking" {
                    options.enable_thinking =
                        Some(v.as_bool().ok_or_else(|| {
                            ApiError::bad("chat_template_kwargs", "`enable_thinking` must be a boolean")
                        })?);
                }
                options.extra.insert(k.clone(), v.clone());
            }
        }
        Some(_) => {
            return Err(ApiError::bad(
                "chat_template_kwargs",
                "`chat_template_kwargs` must be an object",
            ))
        }
    }
    let thinking = options.enable_thinking == Some(true);
    Ok(ChatInput {
        messages,
        options,
        thinking,
        has_tools,
    })
}

/// The completion prompt: a string, or an array of token ids.
pub enum PromptInput {
    Text(String),
    Ids(Vec<u32>),
}

pub fn parse_prompt(b: &Map<String, Value>) -> ApiResult<PromptInput> {
    match present(b, "prompt") {
        Some(Value::String(s)) => Ok(PromptInput::Text(s.clone())),
        Some(Value::Array(a)) if !a.is_empty() && a.iter().all(Value::is_u64) => Ok(PromptInput::Ids(
            a.iter()
                .map(|v| u32::try_from(v.as_u64().unwrap_or(u64::MAX)).unwrap_or(u32::MAX))
                .collect(),
        )),
        Some(Value::Array(a)) if a.len() == 1 && a[0].is_string() => {
            Ok(PromptInput::Text(a[0].as_str().unwrap_or_default().to_string()))
        }
        _ => Err(ApiError::bad(
            "prompt",
            "`prompt` must be a string or a non-empty array of token ids",
        )),
    }
}
