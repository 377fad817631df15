//! Streaming splitters for chat answers: the reasoning of a thinking model (a leading
//! `<think>…</think>` block) apart from the answer, and tool-call blocks held back from the streamed
//! content until they can be parsed. Both take text deltas as the engine produces them and never
//! emit a piece that might still turn out to be part of a tag.

const THINK_OPEN: &str = "<think>";
const THINK_CLOSE: &str = "</think>";
const TOOL_OPENS: [&str; 2] = ["<zyphra_tool_call>", "<tool_call>"];

/// Length of the longest suffix of `s` that is a proper prefix of one of `tags` (held back).
fn partial_tag_len(s: &str, tags: &[&str]) -> usize {
    let mut best = 0;
    for tag in tags {
        for n in (1..tag.len()).rev() {
            if n <= s.len() && s.is_char_boundary(s.len() - n) && tag.starts_with(&s[s.len() - n..]) {
                best = best.max(n);
                break;
            }
        }
    }
    best
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Nothing but whitespace yet: a `<think>` may still open.
    Start,
    Reasoning,
    /// After `</think>`: leading whitespace of the answer is dropped.
    AnswerStart,
    Answer,
}

/// Splits a thinking model's output into reasoning and answer.
#[derive(Debug)]
pub struct ReasoningSplitter {
    phase: Phase,
    held: String,
}

impl Default for ReasoningSplitter {
    fn default() -> Self {
        Self::new()
    }
}

impl ReasoningSplitter {
    pub fn new() -> Self {
        ReasoningSplitter {
            phase: Phase::Start,
            held: String::new(),
        }
    }

    /// Feeds a delta; returns (reasoning, answer) text that is final.
    pub fn push(&mut self, text: &str) -> (String, String) {
        self.held.push_str(text);
        let (mut reasoning, mut answer) = (String::new(), String::new());
        loop {
            match self.phase {
                Phase::Start => {
                    let t = self.held.trim_start();
                    if let Some(rest) = t.strip_prefix(THINK_OPEN) {
                        self.held = rest.to_string();
                        self.phase = Phase::Reasoning;
                    } else if t.is_empty() || THINK_OPEN.starts_with(t) {
                        return (reasoning, answer); // undecided
                    } else {
                        self.phase = Phase::Answer;
                    }
                }
                Phase::Reasoning => {
                    if let Some(i) = self.held.find(THINK_CLOSE) {
                        reasoning.push_str(&self.held[..i]);
                        self.held = self.held[i + THINK_CLOSE.len()..].to_string();
                        self.phase = Phase::AnswerStart;
                    } else {
                        let keep = partial_tag_len(&self.held, &[THINK_CLOSE]);
                        let cut = self.held.len() - keep;
                        reasoning.push_str(&self.held[..cut]);
                        self.held.drain(..cut);
                        return (reasoning, answer);
                    }
                }
                Phase::AnswerStart => {
                    let t = self.held.trim_start();
                    if t.is_empty() {
                        self.held.clear();
                        return (reasoning, answer);
                    }
                    self.held = t.to_string();
                    self.phase = Phase::Answer;
                }
                Phase::Answer => {
                    answer.push_str(&self.held);
                    self.held.clear();
                    return (reasoning, answer);
                }
            }
        }
    }

    /// Ends the stream: what was held back (reasoning when a block never closed).
    pub fn finish(&mut self) -> (String, String) {
        let held = std::mem::take(&mut self.held);
        match self.phase {
            Phase::Reasoning => (held, String::new()),
            Phase::AnswerStart => (String::new(), String::new()),
            Phase::Start | Phase::Answer => (String::new(), held),
        }
    }
}

/// Holds streamed answer text back from the first tool-call block on (or a piece that may begin
/// one), so the calls can be parsed when the answer ends.
#[derive(Debug, Default)]
pub struct ToolCallHold {
    /// From the first (possible) tool-call tag on.
    held: String,
    inside: bool,
}

impl ToolCallHold {
    /// Feeds a delta; returns the text safe to stream now.
    pub fn push(&mut self, text: &str) -> String {
        self.held.push_str(text);
        if self.inside {
            return String::new();
        }
        if let Some(i) = TOOL_OPENS.iter().filter_map(|t| self.held.find(t)).min() {
            self.inside = true;
            let out = self.held[..i].to_string();
            self.held.drain(..i);
            return out;
        }
        let keep = partial_tag_len(&self.held, &TOOL_OPENS);
        let cut = self.held.len() - keep;
        let out = self.held[..cut].to_string();
        self.held.drain(..cut);
        out
    }

    /// Ends the answer: the tool calls found in the held text and the rest of the content.
    pub fn finish(&mut self) -> (String, Vec<crate::text::tool_calls::ToolCall>) {
        let held = std::mem::take(&mut self.held);
        if !self.inside {
            return (held, Vec::new());
        }
        let (content, calls) = crate::text::tool_calls::parse_tool_calls(&held);
        if calls.is_empty() {
            (held, calls)
        } else {
            (content, calls)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split_all(pieces: &[&str]) -> (String, String) {
        let mut s = ReasoningSplitter::new();
        let (mut r, mut a) = (String::new(), String::new());
        for p in pieces {
            let (x, y) = s.push(p);
            r.push_str(&x);
            a.push_str(&y);
        }
        let (x, y) = s.finish();
        (r + &x, a + &y)
    }

    #[test]
    fn reasoning_is_split_whatever_the_delta_boundaries() {
        let text = "<think>\nLet me see: 2+2.\n</think>\n\nIt is 4.";
        let want = ("\nLet me see: 2+2.\n".to_string(), "It is 4.".to_string());
        // every split into two pieces, and one character at a time
        for i in 0..=text.len() {
            assert_eq!(split_all(&[&text[..i], &text[i..]]), want, "split at {i}");
        }
        let chars: Vec<String> = text.chars().map(String::from).collect();
        let refs: Vec<&str> = chars.iter().map(String::as_str).collect();
        assert_eq!(split_all(&refs), want);
    }

    #[test]
    fn no_think_block_is_all_answer_and_an_open_block_is_all_reasoning() {
        assert_eq!(split_all(&["<th", "ings>"]), (String::new(), "<things>".into()));
        assert_eq!(split_all(&["Hello"]), (String::new(), "Hello".into()));
        assert_eq!(
            split_all(&["<think>still going"]),
            ("still going".into(), String::new())
        );
    }

    #[test]
    fn tool_calls_are_held_back_and_parsed() {
        let text = "Sure.<zyphra_tool_call><function=get_weather><parameter=city>Paris</parameter></function></zyphra_tool_call>";
        for i in 0..=text.len() {
            let mut h = ToolCallHold::default();
            let mut out = h.push(&text[..i]);
            out.push_str(&h.push(&text[i..]));
            let (rest, calls) = h.finish();
            assert_eq!(out + &rest, "Sure.", "split at {i}");
            assert_eq!(calls.len(), 1);
            assert_eq!(calls[0].name, "get_weather");
            assert_eq!(calls[0].arguments["city"], "Paris");
        }
        let mut h = ToolCallHold::default();
        assert_eq!(h.push("a < b"), "a < b");
        assert_eq!(h.push(" and <tool"), " and ");
        assert_eq!(h.finish(), (String::from("<tool"), vec![]));
    }
}
