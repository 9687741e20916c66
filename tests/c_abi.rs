//! The C ABI from C: the examples in examples/c, compiled with
//! `-std=c11 -Wall -Wextra -Werror -pedantic` and linked statically and dynamically, serve a
//! real client; include/wsrt.h is what cbindgen generates from src/ffi.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;

use common::*;
use tungstenite::Message as WsMessage;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// wsrt installed once per test run with `scripts/install --prefix <temp>` (the documented
/// command): the examples build against the installed header, library and wsrt.pc.
fn prefix() -> &'static Path {
    static PREFIX: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    PREFIX.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("wsrt-prefix-{}", std::process::id()));
        let st = Command::new("bash")
            .arg(Path::new(ROOT).join("scripts/install"))
            .arg("--prefix")
            .arg(&dir)
            .status()
            .unwrap();
        assert!(st.success(), "scripts/install failed");
        dir
    })
}

fn pkg_config(args: &[&str]) -> Vec<String> {
    let out = Command::new("pkg-config")
        .args(args)
        .arg("wsrt")
        .env("PKG_CONFIG_PATH", prefix().join("lib/pkgconfig"))
        .output()
        .expect("pkg-config runs");
    assert!(
        out.status.success(),
        "pkg-config {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(String::from)
        .collect()
}

fn compile(example: &str, dynamic: bool) -> PathBuf {
    compile_with(example, dynamic, &[])
}

fn compile_with(example: &str, dynamic: bool, extra: &[&str]) -> PathBuf {
    let out = std::env::temp_dir().join(format!(
        "wsrt-{example}-{}{}-{}",
        if dynamic { "dyn" } else { "static" },
        if extra.is_empty() { "" } else { "-san" },
        std::process::id()
    ));
    let mut cc = Command::new("cc");
    cc.args(["-std=c11", "-Wall", "-Wextra", "-Werror", "-pedantic"])
        .args(extra)
        .args(pkg_config(&["--cflags"]))
        .arg(Path::new(ROOT).join(format!("examples/c/{example}.c")))
        .arg("-o")
        .arg(&out);
    if dynamic {
        cc.args(pkg_config(&["--libs"]))
            .arg(format!("-Wl,-rpath,{}", prefix().join("lib").display()));
    } else {
        // -lwsrt would pick the .so next to the .a: name the archive, then its private libs.
        cc.arg(prefix().join("lib/libwsrt.a"))
            .args(["-lpthread", "-ldl", "-lm"]);
    }
    let o = cc.output().unwrap();
    assert!(
        o.status.success(),
        "cc failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    out
}

struct Running {
    child: Child,
    port: u16,
    lines: mpsc::Receiver<String>,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn run(bin: &Path) -> Running {
    run_with(bin, Stdio::inherit(), &[])
}

fn run_with(bin: &Path, stderr: Stdio, env: &[(&str, &str)]) -> Running {
    let mut child = Command::new(bin)
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .unwrap();
    let (tx, lines) = mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let first = lines.recv_timeout(WAIT).expect("listening line");
    let port = first
        .strip_prefix("listening on ")
        .expect(&first)
        .parse()
        .unwrap();
    Running { child, port, lines }
}

fn stop(mut r: Running) -> Vec<String> {
    let st = Command::new("kill")
        .args(["-TERM", &r.child.id().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    let status = r.child.wait().unwrap();
    assert!(status.success(), "clean exit after SIGTERM: {status}");
    // The reader thread ends at EOF (the process exited): take every line it forwarded.
    let mut lines = Vec::new();
    while let Ok(line) = r.lines.recv_timeout(WAIT) {
        lines.push(line);
    }
    lines
}

fn echo_round(port: u16, greeting: Option<&str>) {
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut ws = client(addr, "/c");
    if let Some(g) = greeting {
        assert_eq!(ws.read().unwrap(), WsMessage::text(g));
    }
    ws.send(WsMessage::text("from C ✓")).unwrap();
    assert_eq!(ws.read().unwrap(), WsMessage::text("from C ✓"));
    let big: Vec<u8> = (0..1 << 20).map(|i| (i % 253) as u8).collect();
    ws.send(WsMessage::binary(big.clone())).unwrap();
    assert_eq!(ws.read().unwrap(), WsMessage::binary(big));
    ws.close(None).unwrap();
    while ws.read().is_ok() {}
}

#[test]
fn poll_echo_static_and_dynamic() {
    for dynamic in [false, true] {
        let r = run(&compile("echo_poll", dynamic));
        echo_round(r.port, None);
        stop(r);
    }
}

#[test]
fn callback_echo_static_and_dynamic() {
    for dynamic in [false, true] {
        let r = run(&compile("echo_callbacks", dynamic));
        echo_round(r.port, Some("welcome to /c"));
        let out = stop(r);
        assert!(out.iter().any(|l| l == "messages 2"), "{out:?}");
    }
}

#[test]
fn epoll_loop_echo() {
    let r = run(&compile("echo_epoll", false));
    echo_round(r.port, None);
    stop(r);
}

#[test]
fn adopted_sockets_echo() {
    for dynamic in [false, true] {
        let r = run(&compile("echo_adopt", dynamic));
        // Two clients: each accepted by the host's own listener, then handed to wsrt.
        echo_round(r.port, None);
        echo_round(r.port, None);
        stop(r);
    }
}

#[test]
fn examples_are_clean_under_address_and_leak_sanitizers() {
    for example in ["echo_poll", "echo_callbacks", "echo_epoll", "echo_adopt"] {
        let bin = compile_with(
            example,
            false,
            &["-fsanitize=address,undefined", "-fno-omit-frame-pointer"],
        );
        let log =
            std::env::temp_dir().join(format!("wsrt-{example}-asan-{}.log", std::process::id()));
        let file = std::fs::File::create(&log).unwrap();
        let r = run_with(
            &bin,
            Stdio::from(file),
            &[("ASAN_OPTIONS", "detect_leaks=1:abort_on_error=0")],
        );
        echo_round(
            r.port,
            (example == "echo_callbacks").then_some("welcome to /c"),
        );
        stop(r);
        let report = std::fs::read_to_string(&log).unwrap();
        let _ = std::fs::remove_file(&log);
        assert!(
            !report.contains("AddressSanitizer")
                && !report.contains("LeakSanitizer")
                && !report.contains("runtime error"),
            "{example} under sanitizers:\n{report}"
        );
    }
}

#[test]
fn misuse_is_answered_with_errors_and_finalizers_run_once() {
    let plain = compile("misuse", false);
    let sanitized = compile_with(
        "misuse",
        false,
        &["-fsanitize=address,undefined", "-fno-omit-frame-pointer"],
    );
    for bin in [plain, sanitized] {
        let out = Command::new("timeout")
            .arg("120")
            .arg(&bin)
            .env("ASAN_OPTIONS", "detect_leaks=1")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "{}\n{stdout}\n{stderr}",
            bin.display()
        );
        assert!(stdout.contains(" passed, 0 failed"), "{stdout}");
        assert!(
            !stderr.contains("Sanitizer") && !stderr.contains("runtime error"),
            "{stderr}"
        );
    }
}

#[test]
fn header_is_what_cbindgen_generates() {
    let version = Command::new("cbindgen").arg("--version").output();
    let ok = version
        .as_ref()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("0.29.4"));
    if !ok {
        assert!(
            std::env::var_os("WSRT_TEST_REQUIRE_TOOLS").is_none(),
            "cbindgen 0.29.4 is not installed: run tests/setup"
        );
        eprintln!("cbindgen 0.29.4 missing; skipping");
        return;
    }
    let out = std::env::temp_dir().join(format!("wsrt-{}.h", std::process::id()));
    let st = Command::new("cbindgen")
        .args(["--config", "cbindgen.toml", "--crate", "wsrt", "--output"])
        .arg(&out)
        .current_dir(ROOT)
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(st.success());
    let generated = std::fs::read_to_string(&out).unwrap();
    let checked_in = std::fs::read_to_string(Path::new(ROOT).join("include/wsrt.h")).unwrap();
    let _ = std::fs::remove_file(&out);
    assert!(
        generated == checked_in,
        "include/wsrt.h is stale: regenerate with `cbindgen --config cbindgen.toml --crate wsrt --output include/wsrt.h`"
    );
}
