//! The C ABI from C: the examples in examples/c, compiled with
//! `-std=c11 -Wall -Wextra -Werror -pedantic` and linked statically and dynamically, serve a
//! real client; include/wsrt.h is what cbindgen generates from src/ffi.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

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
    run_with(bin, &[], Stdio::inherit(), &[])
}

fn run_args(bin: &Path, args: &[&str]) -> Running {
    run_with(bin, args, Stdio::inherit(), &[])
}

fn run_with(bin: &Path, args: &[&str], stderr: Stdio, env: &[(&str, &str)]) -> Running {
    let mut child = Command::new(bin)
        .args(args)
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
    // Bounded: a watchdog kills the program if it has not exited 20 s after SIGTERM.
    let (done, watch) = mpsc::channel::<()>();
    let pid = r.child.id().to_string();
    std::thread::spawn(move || {
        if watch.recv_timeout(Duration::from_secs(20)).is_err() {
            let _ = Command::new("kill").args(["-KILL", &pid]).status();
        }
    });
    let status = r.child.wait().unwrap();
    let _ = done.send(());
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
        // Worker threads, then the loop run inside wsrt_poll (WSRT_FLAG_POLL_INLINE).
        for args in [&[][..], &["--inline"]] {
            let r = run_args(&compile("echo_poll", dynamic), args);
            echo_round(r.port, None);
            echo_round(r.port, None);
            let out = stop(r);
            assert!(out.iter().any(|l| l == "messages in 4 out 4"), "{out:?}");
        }
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
fn epoll_loop_echo_static_and_dynamic() {
    for dynamic in [false, true] {
        let r = run(&compile("echo_epoll", dynamic));
        echo_round(r.port, None);
        stop(r);
    }
}

#[test]
fn adopted_sockets_echo() {
    for dynamic in [false, true] {
        // The host's own listener, on the address given in argv.
        let r = run_args(&compile("echo_adopt", dynamic), &["127.0.0.1:0"]);
        // Two clients: each accepted by the host's own listener, then handed to wsrt.
        echo_round(r.port, None);
        echo_round(r.port, None);
        stop(r);
    }
}

#[test]
fn examples_are_clean_under_address_and_leak_sanitizers() {
    let runs: [(&str, &[&str]); 5] = [
        ("echo_poll", &[]),
        ("echo_poll", &["--inline"]),
        ("echo_callbacks", &[]),
        ("echo_epoll", &[]),
        ("echo_adopt", &[]),
    ];
    for (example, args) in runs {
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
            args,
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
    let sanitized = compile_with(
        "misuse",
        false,
        &["-fsanitize=address,undefined", "-fno-omit-frame-pointer"],
    );
    for bin in [compile("misuse", false), compile("misuse", true), sanitized] {
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
        // One line per section and a total; every section ran and none failed.
        let sections: Vec<&str> = stdout.lines().filter(|l| l.contains(" passed, ")).collect();
        assert_eq!(sections.len(), 7, "{stdout}");
        for line in &sections {
            let (passed, failed) = counts(line);
            assert!(passed > 0 && failed == 0, "{line}\n{stdout}");
        }
        let total = sections.last().unwrap();
        assert!(total.starts_with("total: "), "{stdout}");
        assert!(counts(total).0 >= 200, "{total}");
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

/// ("... 12 passed, 0 failed ...") → (12, 0).
fn counts(line: &str) -> (u32, u32) {
    let num_before = |word: &str| -> u32 {
        let i = line
            .find(word)
            .unwrap_or_else(|| panic!("{word:?} in {line:?}"));
        line[..i]
            .split(|c: char| !c.is_ascii_digit())
            .rfind(|s| !s.is_empty())
            .unwrap()
            .parse()
            .unwrap()
    };
    (num_before(" passed"), num_before(" failed"))
}

#[test]
fn deferred_upgrades_reject_without_token_and_accept_with_a_cookie() {
    for args in [&["--decide"][..], &["--decide", "--inline"]] {
        deferred_upgrades(args);
    }
}

fn deferred_upgrades(args: &[&str]) {
    let r = run_args(&compile("echo_poll", true), args);
    let addr = format!("127.0.0.1:{}", r.port).parse().unwrap();
    let (status, head, body) = http(addr, &upgrade_request("/app?token=no", ""));
    assert_eq!(status, 403, "{head}");
    assert_eq!(body, "token required\n");
    let (status, _, _) = http(addr, &upgrade_request("/app", ""));
    assert_eq!(status, 403);
    let (mut ws, resp) = connect(format!("ws://{addr}/app?token=ok"));
    assert_eq!(resp.status(), 101);
    assert_eq!(
        resp.headers()
            .get("set-cookie")
            .and_then(|v| v.to_str().ok()),
        Some("session=c-example; HttpOnly")
    );
    ws.send(WsMessage::text("decided")).unwrap();
    assert_eq!(ws.read().unwrap(), WsMessage::text("decided"));
    ws.close(None).unwrap();
    while ws.read().is_ok() {}
    let out = stop(r);
    assert!(out.iter().any(|l| l == "messages in 1 out 1"), "{out:?}");
}

fn vm_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// A host that polls slowly with a small event queue: the workers stop reading while the
/// queue is full, so 10k messages of 16 KiB (160 MiB) flooded at once wait in the kernel's
/// socket buffers, not in the server's memory; every message is echoed once, in order.
#[test]
fn slow_host_pauses_reading_and_memory_stays_bounded() {
    const COUNT: usize = 10_000;
    const SIZE: usize = 16 * 1024;
    let r = run_args(
        &compile("echo_poll", false),
        &[
            "--slow",
            "--set",
            "max_queued_events=16",
            "127.0.0.1:0",
            "1",
        ],
    );
    let pid = r.child.id();
    let addr = format!("127.0.0.1:{}", r.port).parse().unwrap();
    let mut reader = raw_ws(addr, "/flood");
    let mut writer = reader.try_clone().unwrap();
    let baseline = vm_rss_kib(pid);
    let flood = std::thread::spawn(move || {
        for i in 0..COUNT {
            let mut payload = vec![(i % 251) as u8; SIZE];
            payload[..4].copy_from_slice(&(i as u32).to_be_bytes());
            writer.write_all(&frame(true, 2, &payload, true)).unwrap();
        }
    });
    let (done, finished) = mpsc::channel();
    let echo = std::thread::spawn(move || {
        for i in 0..COUNT {
            let (fin, op, payload) = read_frame(&mut reader);
            assert!(fin && op == 2 && payload.len() == SIZE, "message {i}");
            assert_eq!(&payload[..4], &(i as u32).to_be_bytes(), "in order, once");
            assert!(payload[4..].iter().all(|&b| b == (i % 251) as u8));
        }
        reader.write_all(&close_frame(1000, "")).unwrap();
        let _ = done.send(());
    });
    // Sample the server's RSS until the echo is complete (bounded: 120 s).
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut peak = baseline;
    loop {
        match finished.recv_timeout(Duration::from_millis(20)) {
            Ok(()) => break,
            // The reader dropped its sender without finishing: show its panic.
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                echo.join().unwrap();
                unreachable!("the echo reader ended early");
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
        assert!(
            Instant::now() < deadline,
            "the flood was not echoed within 120 s"
        );
        peak = peak.max(vm_rss_kib(pid));
    }
    echo.join().unwrap();
    flood.join().unwrap();
    let grew_mib = peak.saturating_sub(baseline) / 1024;
    eprintln!(
        "server RSS: {baseline} KiB at rest, peak {peak} KiB (+{grew_mib} MiB) for 160 MiB flooded"
    );
    assert!(
        grew_mib < 48,
        "RSS grew by {grew_mib} MiB while a slow host polled: reading did not pause"
    );
    let out = stop(r);
    assert!(
        out.iter()
            .any(|l| l == &format!("messages in {COUNT} out {COUNT}")),
        "{out:?}"
    );
}

/// The version macros of the header (and what wsrt_version() returns, checked in misuse.c)
/// match Cargo.toml.
#[test]
fn version_macros_match_cargo_toml() {
    let cargo = std::fs::read_to_string(Path::new(ROOT).join("Cargo.toml")).unwrap();
    let version = cargo
        .lines()
        .find_map(|l| l.strip_prefix("version = \""))
        .and_then(|v| v.strip_suffix('"'))
        .expect("version in Cargo.toml");
    let header = std::fs::read_to_string(Path::new(ROOT).join("include/wsrt.h")).unwrap();
    let part = |name: &str| -> String {
        header
            .lines()
            .find_map(|l| l.strip_prefix(&format!("#define WSRT_VERSION_{name} ")))
            .unwrap_or_else(|| panic!("WSRT_VERSION_{name} in wsrt.h"))
            .trim()
            .to_string()
    };
    assert_eq!(
        format!("{}.{}.{}", part("MAJOR"), part("MINOR"), part("PATCH")),
        version
    );
    assert_eq!(env!("CARGO_PKG_VERSION"), version);
}

/// Every function of wsrt.h is called by the C programs (misuse.c alone calls each one).
#[test]
fn the_c_programs_use_every_function_of_the_header() {
    let header = std::fs::read_to_string(Path::new(ROOT).join("include/wsrt.h")).unwrap();
    let misuse = std::fs::read_to_string(Path::new(ROOT).join("examples/c/misuse.c")).unwrap();
    // The identifier right before each '(' that starts with wsrt_.
    let mut functions: Vec<&str> = header
        .split('(')
        .filter_map(|before| {
            let start = before
                .rfind(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .map_or(0, |i| i + 1);
            Some(&before[start..]).filter(|w| w.starts_with("wsrt_"))
        })
        .collect();
    functions.sort();
    functions.dedup();
    assert!(functions.len() >= 30, "{functions:?}");
    let unused: Vec<_> = functions
        .iter()
        .filter(|f| !misuse.contains(&format!("{f}(")))
        .collect();
    assert!(unused.is_empty(), "misuse.c does not call {unused:?}");
}
