//! `zaya smoke`: the bundle card's quick checks, greedy, through the chat template: "2+2"
//! (expects 4), "capital of France" (expects Paris), a chat with a system prompt and thinking off,
//! and one with thinking on that must close `</think>` within its token budget and answer after
//! it. Prints PASS/FAIL with the text for each; exit code 0 iff all passed (1 otherwise).
use zaya_mlx::runtime::{FinishReason, GenParams, Zaya};
use zaya_mlx::text::chat::ChatOptions;
use zaya_mlx::{Result, ZayaError};

use super::common::{self, ModelArgs};

/// `zaya smoke` arguments.
const SMOKE_HELP: &str = "\
Runs the bundle card's four greedy checks through the chat template (2+2, the capital of France,
a system prompt with thinking off, a question with thinking on) and prints PASS or FAIL with the text.

Exit codes: 0 all four pass, 1 a check failed, 2 bad input, 3 runtime failure.

Example:
  zaya smoke --model OsaurusAI/ZAYA1-8B-JANGTQ4";

#[derive(clap::Args, Debug)]
#[command(after_help = SMOKE_HELP)]
pub struct Args {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Token budget of the checks with thinking off.
    #[arg(short = 'm', long, default_value_t = 256, value_name = "N")]
    pub max_tokens: usize,
    /// Token budget of the check with thinking on (reasoning plus answer).
    #[arg(long, default_value_t = 2048, value_name = "N")]
    pub thinking_max_tokens: usize,
    /// Print statistics after each check (on standard error).
    #[arg(long, default_value = "false", value_name = "BOOL", value_parser = common::parse_bool,
          num_args = 0..=1, default_missing_value = "true")]
    pub verbose: bool,
}

/// One check.
#[derive(Debug, Clone, Copy)]
pub struct Case {
    pub name: &'static str,
    pub system: Option<&'static str>,
    pub user: &'static str,
    pub thinking: bool,
    /// Must appear as a whole word (case-insensitive) in the answer.
    pub expect: &'static str,
}

/// The four checks.
pub const CASES: [Case; 4] = [
    Case {
        name: "arithmetic",
        system: None,
        user: "What is 2+2? Answer with just the number.",
        thinking: false,
        expect: "4",
    },
    Case {
        name: "capital",
        system: None,
        user: "What is the capital of France? Answer in one word.",
        thinking: false,
        expect: "Paris",
    },
    Case {
        name: "chat, thinking off",
        system: Some("You are a helpful assistant. Answer briefly."),
        user: "Which planet in our solar system is the largest?",
        thinking: false,
        expect: "Jupiter",
    },
    Case {
        name: "chat, thinking on",
        system: None,
        user: "What is 12 times 12? Think it through, then give the number.",
        thinking: true,
        expect: "144",
    },
];

/// Whether `needle` occurs in `hay` (case-insensitive) with no letter or digit right before or
/// after it.
pub fn contains_word(hay: &str, needle: &str) -> bool {
    let hay = hay.to_lowercase();
    let needle = needle.to_lowercase();
    let mut from = 0;
    while let Some(i) = hay[from..].find(&needle) {
        let start = from + i;
        let end = start + needle.len();
        let before = hay[..start].chars().next_back().is_some_and(char::is_alphanumeric);
        let after = hay[end..].chars().next().is_some_and(char::is_alphanumeric);
        if !before && !after {
            return true;
        }
        from = start + hay[start..].chars().next().map_or(1, char::len_utf8);
    }
    false
}

/// Judges one answer: `Ok(())` or the reason it failed. With thinking on the answer is what follows
/// `</think>`, which must be present; otherwise the text after a `</think>` if any, else all of it.
pub fn judge(case: &Case, text: &str) -> std::result::Result<(), String> {
    let answer = match text.rfind("</think>") {
        Some(p) => &text[p + "</think>".len()..],
        None if case.thinking => return Err("no </think>: the reasoning did not finish within the token budget".into()),
        None => text,
    };
    if contains_word(answer, case.expect) {
        Ok(())
    } else {
        Err(format!("expected {:?} in the answer", case.expect))
    }
}

/// `text` as a one-line quoted string, shortened to about `max` characters (head … tail).
fn shown(text: &str, max: usize) -> String {
    let chars: Vec<char> = text.chars().collect();
    let s: String = if chars.len() > max {
        let h: String = chars[..max / 2].iter().collect();
        let t: String = chars[chars.len() - max / 2..].iter().collect();
        format!("{h} … {t}")
    } else {
        text.to_string()
    };
    format!("{s:?}")
}

fn run_case(
    zaya: &Zaya,
    case: &Case,
    max_tokens: usize,
    prefill_chunk: Option<usize>,
) -> Result<(String, Option<FinishReason>, zaya_mlx::runtime::GenStats)> {
    let mut session = zaya.session();
    session.set_chat_options(ChatOptions {
        enable_thinking: Some(case.thinking),
        ..ChatOptions::default()
    });
    session.set_system_prompt(case.system);
    let params = GenParams {
        max_tokens: Some(max_tokens),
        prefill_chunk,
        ..GenParams::default()
    };
    let mut gen = session.chat(case.user, &params)?;
    let mut text = String::new();
    for step in gen.by_ref() {
        text.push_str(&step?.text);
    }
    Ok((text, gen.finish_reason().cloned(), gen.stats()))
}

pub fn run(args: Args) -> Result<i32> {
    if args.max_tokens == 0 || args.thinking_max_tokens == 0 {
        return Err(ZayaError::InvalidArgument(
            "--max-tokens and --thinking-max-tokens must be positive".into(),
        ));
    }
    args.model.model_options()?;
    let zaya = args.model.load()?;
    if zaya.tokenizer().is_none() || zaya.chat_template().is_none() {
        return Err(ZayaError::Template(format!(
            "{} has no tokenizer or chat template; the smoke checks need both",
            zaya.dir().map_or("the bundle".into(), |d| d.display().to_string())
        )));
    }
    let mut passed = 0;
    for case in &CASES {
        let budget = if case.thinking {
            args.thinking_max_tokens
        } else {
            args.max_tokens
        };
        let (text, finish, stats) = run_case(&zaya, case, budget, args.model.prefill_chunk)?;
        let end = finish.map_or_else(String::new, |f| format!(" [{f}]"));
        match judge(case, &text) {
            Ok(()) => {
                passed += 1;
                println!("PASS  {}: {}{end}", case.name, shown(&text, 240));
            }
            Err(why) => println!("FAIL  {} ({why}): {}{end}", case.name, shown(&text, 240)),
        }
        if args.verbose {
            eprintln!(
                "      {} prompt tokens at {:.3} tokens-per-sec, {} generated at {:.3} tokens-per-sec",
                stats.prompt_tokens, stats.prompt_tps, stats.generation_tokens, stats.generation_tps
            );
        }
    }
    println!("smoke: {passed}/{} passed", CASES.len());
    Ok(if passed == CASES.len() { 0 } else { 1 })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_word_matching() {
        assert!(contains_word("The answer is 4.", "4"));
        assert!(contains_word("4", "4"));
        assert!(!contains_word("14", "4"));
        assert!(!contains_word("4x4=16", "16x"));
        assert!(contains_word("It's paris!", "Paris"));
        assert!(!contains_word("Parisian", "Paris"));
        assert!(contains_word("x14 and 4", "4"));
        assert!(!contains_word("é4", "4"));
    }

    #[test]
    fn judging() {
        let [arith, _, _, think] = CASES;
        assert!(judge(&arith, "2+2 = 4").is_ok());
        assert!(judge(&arith, "<think>\n\n</think>\n\n4").is_ok());
        // the number only in the (closed) reasoning does not count
        assert!(judge(&arith, "<think>4</think>five").is_err());
        assert!(judge(&arith, "five").is_err());
        assert!(judge(&think, "<think>12*12 = 144").unwrap_err().contains("</think>"));
        assert!(judge(&think, "<think>12*12</think>It is 144.").is_ok());
        assert!(judge(&think, "<think>144</think>It is twelve dozen.").is_err());
    }

    #[test]
    fn shortening() {
        assert_eq!(shown("a\nb", 10), "\"a\\nb\"");
        let long = "x".repeat(50) + &"y".repeat(50);
        let s = shown(&long, 20);
        assert!(s.starts_with("\"xxxxxxxxxx …") && s.ends_with("yyyyyyyyyy\""), "{s}");
    }
}
