//! Tool calls in generated text: the syntaxes chat templates define, parsed into OpenAI-style
//! `{"type": "function", "function": {"name", "arguments"}}` objects.
//!
//! - ZAYA's template (and Qwen3-Coder's): `<zyphra_tool_call>` (or `<tool_call>`) blocks holding
//!   `<function=NAME>` with `<parameter=P>VALUE</parameter>` children; a value that parses as JSON
//!   (a number, `true`, an object...) is kept as JSON, anything else as a string.
//! - Hermes-style: `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`.
//!
//! The text outside the blocks is the message content.
use serde_json::{json, Map, Value};

/// One parsed call.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolCall {
    pub name: String,
    /// The arguments as a JSON object.
    pub arguments: Map<String, Value>,
}

impl ToolCall {
    /// The OpenAI `tool_calls` entry (`arguments` as a JSON string, as OpenAI sends it).
    pub fn to_openai(&self, id: &str) -> Value {
        json!({
            "id": id,
            "type": "function",
            "function": {"name": self.name, "arguments": Value::Object(self.arguments.clone()).to_string()},
        })
    }
}

const BLOCKS: [(&str, &str); 2] = [
    ("<zyphra_tool_call>", "</zyphra_tool_call>"),
    ("<tool_call>", "</tool_call>"),
];

/// Splits `text` into the content outside tool-call blocks and the calls found in them. Blocks
/// that do not parse stay in the content.
pub fn parse_tool_calls(text: &str) -> (String, Vec<ToolCall>) {
    let mut content = String::new();
    let mut calls = Vec::new();
    let mut rest = text;
    loop {
        let next = BLOCKS
            .iter()
            .filter_map(|(open, close)| rest.find(open).map(|i| (i, *open, *close)))
            .min_by_key(|x| x.0);
        let Some((start, open, close)) = next else {
            content.push_str(rest);
            break;
        };
        let body_start = start + open.len();
        let (body, after) = match rest[body_start..].find(close) {
            Some(e) => (&rest[body_start..body_start + e], &rest[body_start + e + close.len()..]),
            None => (&rest[body_start..], ""), // an unterminated last block (generation stopped)
        };
        match parse_block(body) {
            Some(mut found) if !found.is_empty() => {
                content.push_str(&rest[..start]);
                calls.append(&mut found);
            }
            _ => content.push_str(&rest[..rest.len() - after.len()]),
        }
        rest = after;
    }
    (content.trim().to_string(), calls)
}

fn parse_block(body: &str) -> Option<Vec<ToolCall>> {
    let b = body.trim();
    if b.starts_with('{') {
        let v: Value = serde_json::from_str(b).ok()?;
        let name = v.get("name")?.as_str()?.to_string();
        let arguments = match v.get("arguments") {
            Some(Value::Object(m)) => m.clone(),
            Some(Value::String(s)) => serde_json::from_str(s).ok()?,
            None => Map::new(),
            _ => return None,
        };
        return Some(vec![ToolCall { name, arguments }]);
    }
    let mut out = Vec::new();
    let mut rest = b;
    while let Some(i) = rest.find("<function=") {
        let after = &rest[i + "<function=".len()..];
        let gt = after.find('>')?;
        let name = after[..gt].trim().to_string();
        let inner_all = &after[gt + 1..];
        let end = inner_all.find("</function>").unwrap_or(inner_all.len());
        let inner = &inner_all[..end];
        let mut arguments = Map::new();
        let mut p = inner;
        while let Some(j) = p.find("<parameter=") {
            let a = &p[j + "<parameter=".len()..];
            let gt = a.find('>')?;
            let key = a[..gt].trim().to_string();
            let val_all = &a[gt + 1..];
            let vend = val_all.find("</parameter>").unwrap_or(val_all.len());
            let raw = val_all[..vend].trim_matches('\n');
            let value = serde_json::from_str::<Value>(raw.trim()).unwrap_or_else(|_| Value::String(raw.to_string()));
            arguments.insert(key, value);
            p = &val_all[vend..];
        }
        if name.is_empty() {
            return None;
        }
        out.push(ToolCall { name, arguments });
        rest = &inner_all[end..];
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xml_calls() {
        let t = "Let me check.\n<zyphra_tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n<parameter=days>\n3\n</parameter>\n</function>\n</zyphra_tool_call>";
        let (c, calls) = parse_tool_calls(t);
        assert_eq!(c, "Let me check.");
        assert_eq!(calls.len(), 1);
        assert_eq!(calls[0].name, "get_weather");
        assert_eq!(calls[0].arguments["city"], json!("Paris"));
        assert_eq!(calls[0].arguments["days"], json!(3));
        let o = calls[0].to_openai("call_0");
        assert_eq!(o["function"]["arguments"], json!("{\"city\":\"Paris\",\"days\":3}"));
    }

    #[test]
    fn hermes_calls_and_plain_text() {
        let t = "<tool_call>{\"name\": \"f\", \"arguments\": {\"x\": [1, 2]}}</tool_call> and <tool_call>{\"name\": \"g\", \"arguments\": \"{\\\"y\\\": true}\"}</tool_call>";
        let (c, calls) = parse_tool_calls(t);
        assert_eq!(c, "and");
        assert_eq!(calls.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(), ["f", "g"]);
        assert_eq!(calls[1].arguments["y"], json!(true));
        let (c, calls) = parse_tool_calls("no calls here");
        assert_eq!((c.as_str(), calls.len()), ("no calls here", 0));
        // a block that does not parse stays in the content
        let (c, calls) = parse_tool_calls("<tool_call>{broken</tool_call>");
        assert!(calls.is_empty());
        assert!(c.contains("{broken"), "{c}");
    }
}
