//! The Python and jinja2 compatibility layer of the chat-template environment: what jinja2 and
//! transformers provide that minijinja does not — jinja2's `truncate` filter, transformers'
//! `raise_exception` and `strftime_now` globals and its `tojson` filter (Python `json.dumps`), and the
//! formatter that prints values as Python `str()` / `repr()` would (`None`, `True`, float repr,
//! list/dict repr).
use std::fmt::Write as _;

use minijinja::value::{Kwargs, Rest, Value as JValue, ValueKind};
use minijinja::{Error as JError, ErrorKind};

/// Marks an error raised by the template's `raise_exception`.
#[derive(Debug)]
pub(super) struct RaisedException(pub(super) String);
impl std::fmt::Display for RaisedException {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for RaisedException {}

/// jinja2's `truncate(s, length=255, killwords=False, end='...', leeway=5)` (lengths in chars).
pub(super) fn truncate_filter(s: &JValue, args: Rest<JValue>, kwargs: Kwargs) -> std::result::Result<JValue, JError> {
    let bad = |m: &str| JError::new(ErrorKind::InvalidOperation, format!("truncate: {m}"));
    let arg = |i: usize, name: &str| -> std::result::Result<Option<JValue>, JError> {
        let kw: Option<JValue> = kwargs.get(name)?;
        Ok(kw.or_else(|| args.get(i).cloned()))
    };
    let int = |v: Option<JValue>, d: i64| v.and_then(|v| v.as_i64()).unwrap_or(d);
    let length = int(arg(0, "length")?, 255);
    let killwords = arg(1, "killwords")?.is_some_and(|v| v.is_true());
    let end = arg(2, "end")?.map_or("...".to_owned(), |v| v.as_str().unwrap_or("...").to_owned());
    let leeway = int(arg(3, "leeway")?, 5);
    kwargs.assert_all_used()?;
    let Some(text) = s.as_str() else { return Ok(s.clone()) };
    let end_len = end.chars().count() as i64;
    if length < end_len || leeway < 0 {
        return Err(bad("length must be >= len(end) and leeway >= 0"));
    }
    let chars: Vec<char> = text.chars().collect();
    if chars.len() as i64 <= length + leeway {
        return Ok(s.clone());
    }
    let head: String = chars[..(length - end_len) as usize].iter().collect();
    let head = if killwords {
        head
    } else {
        head.rsplit_once(' ').map_or(head.clone(), |(a, _)| a.to_owned())
    };
    Ok(JValue::from(head + &end))
}

pub(super) fn raise_exception(msg: String) -> std::result::Result<JValue, JError> {
    Err(JError::new(ErrorKind::InvalidOperation, msg.clone()).with_source(RaisedException(msg)))
}

/// `strftime_now(fmt)`: Python's `datetime.now().strftime(fmt)` (naive local time: `%z`/`%Z` empty,
/// `%f` microseconds), through the C library's `strftime` as CPython does.
pub(super) fn strftime_now(fmt: String) -> std::result::Result<String, JError> {
    let err = |m: &str| JError::new(ErrorKind::InvalidOperation, format!("strftime_now: {m}"));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|_| err("system clock before 1970"))?;
    let secs = now.as_secs() as libc::time_t;
    let micros = now.subsec_micros();
    // Python-side codes first
    let mut f = String::with_capacity(fmt.len());
    let mut it = fmt.chars().peekable();
    while let Some(c) = it.next() {
        if c != '%' {
            f.push(c);
            continue;
        }
        match it.next() {
            Some('f') => {
                let _ = write!(f, "{micros:06}");
            }
            Some('z') | Some('Z') => {}
            Some(':') if it.peek() == Some(&'z') => {
                it.next();
            }
            Some(o) => {
                f.push('%');
                f.push(o);
            }
            None => f.push('%'),
        }
    }
    if f.contains('\0') {
        return Err(err("format contains a NUL character"));
    }
    let cfmt = std::ffi::CString::new(f.clone()).map_err(|_| err("bad format"))?;
    // SAFETY: localtime_r writes into our tm; strftime writes at most buf.len() bytes.
    unsafe {
        let mut tm: libc::tm = std::mem::zeroed();
        if libc::localtime_r(&secs, &mut tm).is_null() {
            return Err(err("localtime failed"));
        }
        let mut size = 256usize.max(f.len() * 8);
        loop {
            let mut buf = vec![0u8; size];
            let n = libc::strftime(buf.as_mut_ptr() as *mut libc::c_char, size, cfmt.as_ptr(), &tm);
            if n > 0 || size >= 1 << 16 {
                buf.truncate(n);
                return String::from_utf8(buf).map_err(|_| err("result is not UTF-8"));
            }
            size *= 4;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Python-compatible printing and JSON

/// Python `repr(float)`.
pub(crate) fn py_float_repr(f: f64) -> String {
    if f.is_nan() {
        return "nan".into();
    }
    if f.is_infinite() {
        return if f > 0.0 { "inf".into() } else { "-inf".into() };
    }
    if f == 0.0 {
        return if f.is_sign_negative() {
            "-0.0".into()
        } else {
            "0.0".into()
        };
    }
    let e = format!("{f:e}"); // shortest round-trip digits, e.g. "-1.25e-7"
    let (mant, exp) = e.split_once('e').unwrap_or((&e, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let (sign, mant) = match mant.strip_prefix('-') {
        Some(m) => ("-", m),
        None => ("", mant),
    };
    let digits: String = mant.chars().filter(|c| *c != '.').collect();
    if (-4..16).contains(&exp) {
        let mut s = String::from(sign);
        if exp >= 0 {
            let int_len = exp as usize + 1;
            if digits.len() <= int_len {
                s.push_str(&digits);
                s.extend(std::iter::repeat_n('0', int_len - digits.len()));
                s.push_str(".0");
            } else {
                s.push_str(&digits[..int_len]);
                s.push('.');
                s.push_str(&digits[int_len..]);
            }
        } else {
            s.push_str("0.");
            s.extend(std::iter::repeat_n('0', (-exp - 1) as usize));
            s.push_str(&digits);
        }
        s
    } else {
        let m = if digits.len() > 1 {
            format!("{}.{}", &digits[..1], &digits[1..])
        } else {
            digits
        };
        format!("{sign}{m}e{}{:02}", if exp < 0 { '-' } else { '+' }, exp.abs())
    }
}

fn is_py_printable(c: char) -> bool {
    let u = c as u32;
    !(u < 0x20
        || (0x7f..=0xa0).contains(&u)
        || u == 0xad
        || (0x600..=0x605).contains(&u)
        || u == 0x61c
        || u == 0x6dd
        || u == 0x70f
        || u == 0x180e
        || u == 0x1680
        || (0x2000..=0x200f).contains(&u)
        || (0x2028..=0x202f).contains(&u)
        || (0x205f..=0x2064).contains(&u)
        || (0x2066..=0x206f).contains(&u)
        || u == 0x3000
        || (0xd800..=0xf8ff).contains(&u)
        || u == 0xfeff
        || (0xfff9..=0xfffb).contains(&u))
}

/// Python `repr(str)`.
fn py_str_repr(s: &str, out: &mut String) {
    let q = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    out.push(q);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == q => {
                out.push('\\');
                out.push(c);
            }
            c if !is_py_printable(c) => {
                let u = c as u32;
                let _ = if u < 0x100 {
                    write!(out, "\\x{u:02x}")
                } else {
                    write!(out, "\\u{u:04x}")
                };
            }
            c => out.push(c),
        }
    }
    out.push(q);
}

/// Python `repr()` of a template value (nested items of a printed list/dict).
fn py_repr(v: &JValue, out: &mut String) -> std::result::Result<(), JError> {
    match v.kind() {
        ValueKind::String => py_str_repr(v.as_str().unwrap_or_default(), out),
        ValueKind::Seq | ValueKind::Iterable => {
            out.push('[');
            for (i, x) in v.try_iter()?.enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                py_repr(&x, out)?;
            }
            out.push(']');
        }
        ValueKind::Map
            if v.as_object()
                .is_none_or(|o| o.repr() == minijinja::value::ObjectRepr::Map) =>
        {
            out.push('{');
            for (i, k) in v.try_iter()?.enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                py_repr(&k, out)?;
                out.push_str(": ");
                py_repr(&v.get_item(&k)?, out)?;
            }
            out.push('}');
        }
        _ => py_str(v, out)?,
    }
    Ok(())
}

/// Python `str()` of a template value: what jinja2 prints for `{{ v }}`.
fn py_str(v: &JValue, out: &mut String) -> std::result::Result<(), JError> {
    match v.kind() {
        ValueKind::Undefined => {}
        ValueKind::None => out.push_str("None"),
        ValueKind::Bool => out.push_str(if v.is_true() { "True" } else { "False" }),
        ValueKind::Number if !v.is_integer() => out.push_str(&py_float_repr(f64::try_from(v.clone())?)),
        ValueKind::Seq | ValueKind::Map => py_repr(v, out)?,
        _ => {
            let _ = write!(out, "{v}");
        }
    }
    Ok(())
}

pub(super) fn py_formatter(
    out: &mut minijinja::Output,
    _state: &minijinja::State,
    v: &JValue,
) -> std::result::Result<(), JError> {
    if v.kind() == ValueKind::String {
        return out.write_str(v.as_str().unwrap_or_default()).map_err(JError::from);
    }
    let mut s = String::new();
    py_str(v, &mut s)?;
    out.write_str(&s).map_err(JError::from)
}

/// Python `json.dumps` options.
struct JsonOpts {
    ensure_ascii: bool,
    indent: Option<String>,
    item_sep: String,
    key_sep: String,
    sort_keys: bool,
}

fn json_str(s: &str, ascii: bool, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 || (ascii && (c as u32) > 0x7e) => {
                let mut b = [0u16; 2];
                for u in c.encode_utf16(&mut b) {
                    let _ = write!(out, "\\u{u:04x}");
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

fn json_key(k: &JValue) -> std::result::Result<String, JError> {
    Ok(match k.kind() {
        ValueKind::String => k.as_str().unwrap_or_default().to_owned(),
        ValueKind::None => "null".into(),
        ValueKind::Bool => (if k.is_true() { "true" } else { "false" }).into(),
        ValueKind::Number if !k.is_integer() => py_float_repr(f64::try_from(k.clone())?),
        ValueKind::Number => k.to_string(),
        other => {
            return Err(JError::new(
                ErrorKind::InvalidOperation,
                format!("tojson: keys must be str, int, float, bool or None, not {other}"),
            ))
        }
    })
}

fn json_dump(v: &JValue, o: &JsonOpts, level: usize, out: &mut String) -> std::result::Result<(), JError> {
    let newline = |out: &mut String, level: usize| {
        if let Some(ind) = &o.indent {
            out.push('\n');
            for _ in 0..level {
                out.push_str(ind);
            }
        }
    };
    match v.kind() {
        ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if v.is_true() { "true" } else { "false" }),
        ValueKind::Number if v.is_integer() => {
            let _ = write!(out, "{v}");
        }
        ValueKind::Number => {
            let f = f64::try_from(v.clone())?;
            out.push_str(&if f.is_nan() {
                "NaN".to_string()
            } else if f.is_infinite() {
                (if f > 0.0 { "Infinity" } else { "-Infinity" }).to_string()
            } else {
                py_float_repr(f)
            });
        }
        ValueKind::String => json_str(v.as_str().unwrap_or_default(), o.ensure_ascii, out),
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<JValue> = v.try_iter()?.collect();
            if items.is_empty() {
                out.push_str("[]");
                return Ok(());
            }
            out.push('[');
            for (i, x) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(&o.item_sep);
                }
                newline(out, level + 1);
                json_dump(x, o, level + 1, out)?;
            }
            newline(out, level);
            out.push(']');
        }
        ValueKind::Map => {
            let mut items: Vec<(String, JValue)> = Vec::new();
            for k in v.try_iter()? {
                let val = v.get_item(&k)?;
                items.push((json_key(&k)?, val));
            }
            if o.sort_keys {
                items.sort_by(|a, b| a.0.cmp(&b.0));
            }
            if items.is_empty() {
                out.push_str("{}");
                return Ok(());
            }
            out.push('{');
            for (i, (k, x)) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(&o.item_sep);
                }
                newline(out, level + 1);
                json_str(k, o.ensure_ascii, out);
                out.push_str(&o.key_sep);
                json_dump(x, o, level + 1, out)?;
            }
            newline(out, level);
            out.push('}');
        }
        other => {
            return Err(JError::new(
                ErrorKind::InvalidOperation,
                format!("tojson: object of type {other} is not JSON serializable"),
            ))
        }
    }
    Ok(())
}

/// transformers' `tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False)`.
pub(super) fn tojson_filter(v: &JValue, args: Rest<JValue>, kwargs: Kwargs) -> std::result::Result<JValue, JError> {
    let bad = |m: String| JError::new(ErrorKind::InvalidOperation, format!("tojson: {m}"));
    if args.len() > 4 {
        return Err(bad("takes at most 4 positional arguments".into()));
    }
    let arg = |i: usize, name: &str| -> std::result::Result<Option<JValue>, JError> {
        let kw: Option<JValue> = kwargs.get(name)?;
        Ok(kw.or_else(|| args.get(i).cloned()))
    };
    let ensure_ascii = arg(0, "ensure_ascii")?.is_some_and(|x| x.is_true());
    let indent = match arg(1, "indent")? {
        None => None,
        Some(x) if x.is_none() => None,
        Some(x) if x.kind() == ValueKind::String => Some(x.as_str().unwrap_or_default().to_owned()),
        Some(x) if x.is_integer() => Some(" ".repeat(x.as_i64().unwrap_or(0).max(0) as usize)),
        Some(x) => return Err(bad(format!("indent must be an int or a string, got {x}"))),
    };
    let (item_sep, key_sep) = match arg(2, "separators")? {
        Some(x) if !x.is_none() => {
            let parts: Vec<JValue> = x.try_iter()?.collect();
            match (
                parts.first().and_then(|p| p.as_str()),
                parts.get(1).and_then(|p| p.as_str()),
                parts.len(),
            ) {
                (Some(a), Some(b), 2) => (a.to_owned(), b.to_owned()),
                _ => return Err(bad("separators must be a pair of strings".into())),
            }
        }
        _ => (if indent.is_some() { "," } else { ", " }.to_owned(), ": ".to_owned()),
    };
    let sort_keys = arg(3, "sort_keys")?.is_some_and(|x| x.is_true());
    kwargs.assert_all_used()?;
    let o = JsonOpts {
        ensure_ascii,
        indent,
        item_sep,
        key_sep,
        sort_keys,
    };
    let mut out = String::new();
    json_dump(v, &o, 0, &mut out)?;
    Ok(JValue::from_safe_string(out))
}
