//! The ws-echo binary as users run it: defaults, flags and environment variables, broadcast
//! mode, the browser page, SIGTERM, and real clients (websocat, headless Chromium).

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::*;
use tungstenite::Message as WsMessage;

/// A running ws-echo; its stderr log lines arrive on `log`.
struct Echo {
    child: Option<Child>,
    pid: u32,
    addr: SocketAddr,
    log: mpsc::Receiver<String>,
}

impl Echo {
    fn start(args: &[&str], env: &[(&str, &str)]) -> Echo {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_ws-echo"));
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, _) in std::env::vars() {
            if k.starts_with("WSRT_") && k != "WSRT_TEST_REQUIRE_TOOLS" {
                cmd.env_remove(k);
            }
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("ws-echo starts");
        let (tx, log) = mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("[ws-echo] {line}");
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let line = wait_line(&log, "listening on");
        let addr_text = line
            .split("listening on ")
            .nth(1)
            .unwrap()
            .split(' ')
            .next()
            .unwrap();
        let mut addr: SocketAddr = addr_text.parse().unwrap();
        if addr.ip().is_unspecified() {
            addr.set_ip([127, 0, 0, 1].into());
        }
        Echo {
            pid: child.id(),
            child: Some(child),
            addr,
            log,
        }
    }

    fn local(args: &[&str]) -> Echo {
        let mut all = vec!["--listen", "127.0.0.1:0"];
        all.extend_from_slice(args);
        Echo::start(&all, &[])
    }

    fn term(&mut self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Wait (bounded) for the process to exit by itself.
    fn wait_exit(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("still running");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(child.wait());
        });
        match rx.recv_timeout(WAIT) {
            Ok(status) => status.expect("exit status"),
            Err(_) => {
                let _ = Command::new("kill")
                    .args(["-KILL", &self.pid.to_string()])
                    .status();
                panic!("ws-echo did not exit within {WAIT:?}");
            }
        }
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn wait_line(log: &mpsc::Receiver<String>, needle: &str) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match log.recv_timeout(left) {
            Ok(line) if line.contains(needle) => return line,
            Ok(_) => {}
            Err(_) => panic!("no log line containing {needle:?}"),
        }
    }
}

fn run_to_end(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ws-echo"));
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

#[test]
fn no_arguments_listens_on_8080_and_echoes() {
    let echo = Echo::start(&[], &[]);
    assert_eq!(echo.addr.port(), 8080);
    let mut ws = client(echo.addr, "/any/path");
    ws.send(WsMessage::text("ping?")).unwrap();
    assert_eq!(ws.read().unwrap(), WsMessage::text("ping?"));
    // ws-echo allows any origin by default (a public echo service).
    let mut s = tcp(echo.addr);
    s.write_all(upgrade_request("/", "Origin: https://elsewhere.example\r\n").as_bytes())
        .unwrap();
    assert_eq!(read_head(&mut s).0, 101);
}

#[test]
fn prefix_hostname_and_greeting_like_the_go_server_of_seed_001() {
    let echo = Echo::local(&["--prefix", "hostname", "--greeting", "welcome"]);
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap()
        .trim()
        .to_string();
    let mut ws = client(echo.addr, "/");
    assert_eq!(ws.read().unwrap(), WsMessage::text("welcome"));
    ws.send(WsMessage::text("hi")).unwrap();
    assert_eq!(ws.read().unwrap(), WsMessage::text(format!("[{host}] hi")));
    ws.send(WsMessage::binary(vec![1u8, 2])).unwrap();
    let mut expected = format!("[{host}] ").into_bytes();
    expected.extend([1, 2]);
    assert_eq!(ws.read().unwrap(), WsMessage::binary(expected));
}

#[test]
fn environment_variables_configure_it_and_flags_win() {
    let echo = Echo::start(
        &["--listen", "127.0.0.1:0", "--prefix", "flag"],
        &[
            ("WSRT_PREFIX", "env"),
            ("WSRT_MAX_MESSAGE_SIZE", "1KiB"),
            ("WSRT_MAX_FRAME_SIZE", "1KiB"),
        ],
    );
    let mut ws = client(echo.addr, "/");
    ws.send(WsMessage::text("x")).unwrap();
    assert_eq!(ws.read().unwrap(), WsMessage::text("[flag] x"));
    let mut s = raw_ws(echo.addr, "/");
    s.write_all(&frame(true, 2, &[0u8; 2000], true)).unwrap();
    assert_eq!(read_until_close(&mut s), Some(1009));
}

#[test]
fn broadcast_mode_relays_to_every_connection() {
    let echo = Echo::local(&["--mode", "broadcast"]);
    let mut a = client(echo.addr, "/");
    let mut b = client(echo.addr, "/");
    wait_line(&echo.log, "open");
    wait_line(&echo.log, "open");
    a.send(WsMessage::text("to everyone")).unwrap();
    assert_eq!(a.read().unwrap(), WsMessage::text("to everyone"));
    assert_eq!(b.read().unwrap(), WsMessage::text("to everyone"));
}

#[test]
fn browser_page_and_health_check() {
    let echo = Echo::local(&[]);
    let (status, head, body) = http(echo.addr, "GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(status, 200);
    assert!(head.contains("text/html"));
    assert!(body.contains("new WebSocket(url)"), "{body}");
    let (status, _, body) = http(echo.addr, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!((status, body.as_str()), (200, "ok\n"));
}

#[test]
fn bad_options_are_named_and_help_lists_every_option() {
    let (code, _, err) = run_to_end(&["--max-message-size", "lots"], &[]);
    assert_eq!(code, 2);
    assert!(
        err.contains("option `max_message_size`") && err.contains("expected a size"),
        "{err}"
    );
    let (code, _, err) = run_to_end(&["--no-such-thing", "1"], &[]);
    assert_eq!(code, 2);
    assert!(err.contains("unknown option"), "{err}");
    let (code, _, err) = run_to_end(&[], &[("WSRT_PING_INTERVAL", "often")]);
    assert_eq!(code, 2);
    assert!(err.contains("WSRT_PING_INTERVAL"), "{err}");
    let (code, out, _) = run_to_end(&["--help"], &[]);
    assert_eq!(code, 0);
    for spec in wsrt::OPTIONS {
        assert!(
            out.contains(&format!("--{}", spec.name.replace('_', "-"))),
            "{}",
            spec.name
        );
        assert!(out.contains(&spec.env_var()), "{}", spec.env_var());
    }
    for extra in ["--mode", "--prefix", "--greeting", "--log-level"] {
        assert!(out.contains(extra), "{extra}");
    }
}

#[test]
fn sigterm_closes_clients_with_1001_and_logs_each_connection() {
    let mut echo = Echo::local(&[]);
    let mut s = raw_ws(echo.addr, "/");
    let open = wait_line(&echo.log, "open");
    assert!(open.contains("127.0.0.1:"), "client address logged: {open}");
    s.write_all(&frame(true, 1, b"before", true)).unwrap();
    assert_eq!(read_frame(&mut s), (true, 1, b"before".to_vec()));
    echo.term();
    assert_eq!(read_until_close(&mut s), Some(1001));
    s.write_all(&close_frame(1001, "")).unwrap();
    let close = wait_line(&echo.log, "close");
    assert!(
        close.contains("code=1001") && close.contains("127.0.0.1:"),
        "{close}"
    );
    assert!(echo.wait_exit().success());
}

/// A tool the test needs: under tests/run (WSRT_TEST_REQUIRE_TOOLS) it must exist.
fn tool(name: &str) -> Option<String> {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    if found.is_none() {
        assert!(
            std::env::var_os("WSRT_TEST_REQUIRE_TOOLS").is_none(),
            "{name} is not installed: run tests/setup"
        );
        eprintln!("{name} not installed (run tests/setup); skipping");
    }
    found
}

#[test]
fn websocat_round_trip() {
    let Some(websocat) = tool("websocat") else {
        return;
    };
    let echo = Echo::local(&["--prefix", "srv"]);
    let mut child = Command::new(websocat)
        .args([
            "--no-close",
            "--ping-interval",
            "5",
            &format!("ws://{}/", echo.addr),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"hello websocat\n")
        .unwrap();
    let mut out = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut line = Vec::new();
        let mut b = [0u8; 1];
        while out.read(&mut b).is_ok_and(|n| n == 1) && b[0] != b'\n' {
            line.push(b[0]);
        }
        let _ = tx.send(String::from_utf8_lossy(&line).to_string());
    });
    let got = rx.recv_timeout(WAIT);
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(
        got.expect("websocat printed the echo"),
        "[srv] hello websocat"
    );
}

#[test]
fn headless_chromium_round_trips_through_the_page() {
    chromium_round_trip(&[]);
}

#[test]
fn headless_chromium_negotiates_compression() {
    let log = chromium_round_trip(&["--compression", "on"]);
    assert!(
        log.iter()
            .any(|l| l.contains("open") && l.contains("permessage-deflate")),
        "the browser's connection negotiated permessage-deflate: {log:?}"
    );
}

/// Returns ws-echo's log lines seen while the browser was connected.
fn chromium_round_trip(extra: &[&str]) -> Vec<String> {
    let Some(chromium) = tool("chromium") else {
        return vec!["open permessage-deflate (skipped)".into()];
    };
    let mut args = vec!["--mode", "broadcast"];
    args.extend_from_slice(extra);
    let echo = Echo::local(&args);
    // Our own client sees what the browser sends: its message, then "echoed: ..." once the
    // browser's WebSocket received the message back.
    let mut watcher = client(echo.addr, "/");
    // One profile per browser: instances sharing a profile hand their URL to the first one.
    static RUN: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let run = RUN.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let profile = std::env::temp_dir().join(format!("wsrt-chromium-{}-{run}", std::process::id()));
    let mut browser = Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--remote-debugging-port=0",
            &format!("--user-data-dir={}", profile.display()),
            &format!("http://{}/?send=hello%20from%20chromium", echo.addr),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seen = Vec::new();
    let result = loop {
        if Instant::now() > deadline {
            break Err(seen);
        }
        match watcher.read() {
            Ok(WsMessage::Text(t)) if t == "echoed: hello from chromium" => break Ok(()),
            Ok(WsMessage::Text(t)) => seen.push(t.to_string()),
            Ok(_) => {}
            Err(tungstenite::Error::Io(e)) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => break Err(vec![e.to_string()]),
        }
    };
    let _ = browser.kill();
    let _ = browser.wait();
    let _ = std::fs::remove_dir_all(&profile);
    result.unwrap_or_else(|seen| panic!("browser round trip not seen; got {seen:?}"));
    let (status, _, _) = http(echo.addr, "GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(status, 200);
    echo.log.try_iter().collect()
}
