//! `zaya chat` on a terminal (a pseudo-terminal made by util-linux `script`): line editing with
//! history (the up arrow recalls the previous message), unknown `/commands` answered instead of
//! sent to the model, `/save FILE` writes the transcript, Ctrl-D ends the session cleanly.
mod cli_support;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

#[test]
fn chat_on_a_terminal_edits_lines_and_answers_commands() {
    let tmp = tempfile::tempdir().unwrap();
    let bundle = cli_support::synth(tmp.path(), None);
    let transcript = tmp.path().join("t.txt");
    let cmd = format!("{} chat --model {} -m 3", env!("CARGO_BIN_EXE_zaya"), bundle.display());
    let mut child = Command::new("script")
        .args(["-qfec", &cmd, "/dev/null"])
        .env("HOME", tmp.path())
        .env("HF_HUB_OFFLINE", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("util-linux `script` runs the chat under a pseudo-terminal");
    let mut stdin = child.stdin.take().unwrap();
    let save = format!("/save {}\r", transcript.display());
    let keys: [&[u8]; 5] = [b"hello\r", b"\x1b[A\r", b"/bogus\r", save.as_bytes(), b"\x04"];
    for k in keys {
        stdin.write_all(k).unwrap();
        stdin.flush().unwrap();
        std::thread::sleep(Duration::from_millis(1500));
    }
    drop(stdin);
    let o = child.wait_with_output().unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{out}");
    assert!(!out.contains("panicked"), "{out}");
    assert!(out.contains("unknown command /bogus"), "{out}");
    assert!(out.contains("[transcript saved to"), "{out}");
    // the up arrow sent "hello" again: two user turns in the transcript
    let t = std::fs::read_to_string(&transcript).unwrap();
    assert_eq!(t.matches("user: hello").count(), 2, "{t}");
    assert_eq!(t.matches("assistant: ").count(), 2, "{t}");
}
