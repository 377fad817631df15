//! `zaya serve` as a process: it listens on the port it prints, answers, and on SIGTERM stops
//! accepting, finishes the request in flight and exits 0.
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

#[test]
fn sigterm_finishes_in_flight_requests_and_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let zaya = env!("CARGO_BIN_EXE_zaya");
    let st = Command::new(zaya)
        .args(["synth", "--preset", "tiny", "--out"])
        .arg(dir.path().join("b"))
        .output()
        .unwrap();
    assert!(st.status.success(), "{}", String::from_utf8_lossy(&st.stderr));
    let mut child = Command::new(zaya)
        .args(["serve", "--port", "0", "--model"])
        .arg(dir.path().join("b"))
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let mut addr = None;
    let mut line = String::new();
    while err.read_line(&mut line).unwrap() > 0 {
        if let Some(rest) = line.split("listening on http://").nth(1) {
            addr = Some(rest.split_whitespace().next().unwrap().to_string());
            break;
        }
        line.clear();
    }
    let addr = addr.expect("the server prints its address");
    // a request in flight when SIGTERM arrives still gets its whole answer
    let a = addr.clone();
    let req = std::thread::spawn(move || {
        ureq::post(&format!("http://{a}/v1/completions"))
            .send_json(serde_json::json!({"prompt": [1, 2, 3], "max_tokens": 400, "logit_bias": {"100": 100}}))
            .map(|r| r.into_json::<serde_json::Value>().unwrap())
            .map_err(|e| e.to_string())
    });
    std::thread::sleep(Duration::from_millis(150));
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let body = req.join().unwrap().expect("the in-flight request is answered");
    assert_eq!(body["usage"]["completion_tokens"], 400);
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0));
    let mut rest = String::new();
    let _ = std::io::Read::read_to_string(&mut err, &mut rest);
    assert!(rest.contains("shutting down"), "{rest}");
    assert!(
        rest.contains("cmpl-0: prompt 3 tokens"),
        "one log line per request: {rest}"
    );
    // and it no longer listens
    assert!(std::net::TcpStream::connect(&addr).is_err());
}
