//! `zaya chat` through a pipe (turns, `/reset`, cache reuse, agreement with the library session),
//! Ctrl-C (SIGINT) stopping an answer without ending the program and a second Ctrl-C at the prompt
//! exiting, and `zaya smoke`'s mechanics (its answers fail on random weights: exit code 1).
mod cli_support;

use std::io::{Read, Write};
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cli_support::{assert_bad_input, stderr, stdout, synth, zaya};
use zaya_mlx::model::ModelOptions;
use zaya_mlx::runtime::{GenParams, Zaya};

#[test]
fn chat_through_a_pipe_keeps_the_cache_across_turns() {
    let home = tempfile::tempdir().unwrap();
    let b = synth(home.path(), None);
    let mut child = zaya(home.path())
        .args(["chat", "--model"])
        .arg(&b)
        .args(["-m", "10", "--system-prompt", "Be brief.", "--verbose"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"Hello there\nTell me more\n/reset\nHello there\n")
        .unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));

    // the library session with the same settings
    let z = Zaya::load(&b, ModelOptions::default()).unwrap();
    let p = GenParams {
        max_tokens: Some(10),
        ..GenParams::default()
    };
    let mut s = z.session();
    s.set_system_prompt(Some("Be brief."));
    let (a1, _) = s.chat("Hello there", &p).unwrap().collect_text().unwrap();
    let (a2, _) = s.chat("Tell me more", &p).unwrap().collect_text().unwrap();
    assert_eq!(stdout(&o), format!("{a1}\n{a2}\n[conversation reset]\n{a1}\n"));

    // per-turn statistics: the second turn reuses the cache, the turn after /reset does not
    let err = stderr(&o);
    let reused: Vec<usize> = err
        .lines()
        .filter_map(|l| {
            l.split_once(" new tokens (")
                .map(|(_, r)| r.split_once(' ').unwrap().0.parse().unwrap())
        })
        .collect();
    assert_eq!(reused.len(), 3, "{err}");
    assert_eq!(reused[0], 0);
    assert!(reused[1] > 0, "{err}");
    assert_eq!(reused[2], 0);
    assert!(!err.contains("panicked"));
}

/// Collects a child's output stream on a thread.
fn collect(mut r: impl Read + Send + 'static) -> Arc<Mutex<Vec<u8>>> {
    let buf = Arc::new(Mutex::new(Vec::new()));
    let b = buf.clone();
    std::thread::spawn(move || {
        let mut chunk = [0u8; 4096];
        while let Ok(n) = r.read(&mut chunk) {
            if n == 0 {
                break;
            }
            b.lock().unwrap().extend_from_slice(&chunk[..n]);
        }
    });
    buf
}

fn wait_for(buf: &Arc<Mutex<Vec<u8>>>, what: &str, child: &mut Child) {
    let t = Instant::now();
    loop {
        if String::from_utf8_lossy(&buf.lock().unwrap()).contains(what) {
            return;
        }
        if let Some(st) = child.try_wait().unwrap() {
            panic!(
                "exited ({st}) before printing {what:?}: {}",
                String::from_utf8_lossy(&buf.lock().unwrap())
            );
        }
        if t.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            panic!(
                "timed out waiting for {what:?}: {}",
                String::from_utf8_lossy(&buf.lock().unwrap())
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn sigint(child: &Child) {
    // SAFETY: sends SIGINT to our own child process.
    let r = unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    assert_eq!(r, 0);
}

#[test]
fn ctrl_c_stops_the_answer_and_twice_at_the_prompt_exits() {
    let home = tempfile::tempdir().unwrap();
    let b = synth(home.path(), None);
    let mut child = zaya(home.path())
        .args(["chat", "--model"])
        .arg(&b)
        .args(["-m", "3500", "--ignore-eos"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let out = collect(child.stdout.take().unwrap());
    let err = collect(child.stderr.take().unwrap());
    // the handler is installed once the first command is answered
    stdin.write_all(b"/help\n").unwrap();
    stdin.flush().unwrap();
    wait_for(&out, "/reset", &mut child);
    // a long answer (3500 tokens), interrupted once some of it has streamed
    let before = out.lock().unwrap().len();
    stdin.write_all(b"Tell me a long story\n").unwrap();
    stdin.flush().unwrap();
    let t = Instant::now();
    while out.lock().unwrap().len() < before + 20 && t.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(5));
    }
    sigint(&child);
    wait_for(&err, "[interrupted]", &mut child);
    assert!(
        child.try_wait().unwrap().is_none(),
        "Ctrl-C during an answer must not end the program"
    );
    // the program still answers
    stdin.write_all(b"/help\n").unwrap();
    stdin.flush().unwrap();
    let t = Instant::now();
    while String::from_utf8_lossy(&out.lock().unwrap()).matches("/reset").count() < 2 {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "no answer after the interruption"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    // at the prompt: the first Ctrl-C explains, the second exits
    sigint(&child);
    wait_for(&err, "Ctrl-C again", &mut child);
    assert!(child.try_wait().unwrap().is_none());
    sigint(&child);
    let t = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "a second Ctrl-C at the prompt must exit"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(status.code(), Some(130));
    let e = String::from_utf8_lossy(&err.lock().unwrap()).into_owned();
    assert!(!e.contains("panicked"), "{e}");
    // the interrupted answer was far from its 3500 tokens
    let o = String::from_utf8_lossy(&out.lock().unwrap()).into_owned();
    assert!(o.len() < 3000 * 4, "{} bytes", o.len());
}

#[test]
fn chat_bad_input_and_exit_commands() {
    let home = tempfile::tempdir().unwrap();
    let b = synth(home.path(), None);
    let o = zaya(home.path())
        .args(["chat", "--model"])
        .arg(&b)
        .args(["--temp", "-1"])
        .output()
        .unwrap();
    assert_bad_input(&o, "--temp -1", &["--temp"]);
    let o = zaya(home.path())
        .args(["chat", "--model", "/no/such/dir"])
        .output()
        .unwrap();
    assert_bad_input(&o, "missing model", &["/no/such/dir"]);
    // /exit ends the program before reading further lines; empty lines are skipped
    let mut child = zaya(home.path())
        .args(["chat", "--model"])
        .arg(&b)
        .args(["-m", "3"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"\n\n/exit\nnot read\n").unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), "");
    // a turn that overflows the context is reported and the chat goes on
    let small = synth(home.path(), Some(40));
    let mut child = zaya(home.path())
        .args(["chat", "--model"])
        .arg(&small)
        .args(["-m", "2"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let long = "word ".repeat(60);
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{long}\n/reset\nhi\n").as_bytes())
        .unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("context overflow") && stderr(&o).contains("/reset"),
        "{}",
        stderr(&o)
    );
    assert!(
        stdout(&o).starts_with("[conversation reset]\n"),
        "no answer before the reset: {}",
        stdout(&o)
    );
    assert_eq!(stderr(&o).matches("context overflow").count(), 1, "{}", stderr(&o));
}

#[test]
fn smoke_reports_each_check_and_fails_on_random_weights() {
    let home = tempfile::tempdir().unwrap();
    let b = synth(home.path(), None);
    let o = zaya(home.path())
        .args(["smoke", "--model"])
        .arg(&b)
        .args(["--max-tokens", "4", "--thinking-max-tokens", "6"])
        .output()
        .unwrap();
    let out = stdout(&o);
    assert_eq!(o.status.code(), Some(1), "{out}\n{}", stderr(&o));
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 5, "{out}");
    for (line, name) in lines
        .iter()
        .zip(["arithmetic", "capital", "chat, thinking off", "chat, thinking on"])
    {
        assert!(line.starts_with(&format!("FAIL  {name} (")), "{line}");
    }
    assert!(lines[0].contains("expected \"4\""), "{}", lines[0]);
    assert!(lines[3].contains("</think>"), "{}", lines[3]);
    assert_eq!(lines[4], "smoke: 0/4 passed");
    // bad input
    let o = zaya(home.path())
        .args(["smoke", "--model"])
        .arg(&b)
        .args(["--max-tokens", "0"])
        .output()
        .unwrap();
    assert_bad_input(&o, "--max-tokens 0", &["--max-tokens"]);
    // a bundle without tokenizer / chat template is refused
    let bare = home.path().join("bare");
    std::fs::create_dir_all(&bare).unwrap();
    for e in std::fs::read_dir(&b).unwrap() {
        let p = e.unwrap().path();
        let n = p.file_name().unwrap().to_str().unwrap().to_string();
        if !n.starts_with("tokenizer") && !n.starts_with("chat_template") && !n.starts_with("special_tokens") {
            std::fs::copy(&p, bare.join(&n)).unwrap();
        }
    }
    let o = zaya(home.path())
        .args(["smoke", "--model"])
        .arg(&bare)
        .output()
        .unwrap();
    assert_ne!(o.status.code(), Some(0));
    assert!(
        stderr(&o).contains("tokenizer") && !stderr(&o).contains("panicked"),
        "{}",
        stderr(&o)
    );
}
