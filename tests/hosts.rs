//! Smoke tests that the C ABI fits each host: small but real echo programs in Node (N-API
//! addon on libuv), the JVM (JDK 22+ java.lang.foreign and JDK 17 JNI) and Go (cgo), each
//! built here against the release libwsrt and driven by a real client (tungstenite and raw
//! frames). Each program prints "listening on PORT" (plus "http listening on PORT" where the
//! host's own HTTP server hands sockets to `wsrt_adopt`), and on SIGTERM shuts wsrt down and
//! prints "stopped: opened N, closed N, finalized N" — the per-connection host data (N-API
//! reference, JNI global ref, FFM handle, cgo.Handle) must be released exactly once per
//! connection — then exits 0.
//!
//! A missing tool skips its test, or fails it when WSRT_TEST_REQUIRE_TOOLS is set (tests/run).
//! JDKs are found under /usr/lib/jvm (override: WSRT_JDK17_HOME, WSRT_JDK_FFM_HOME).

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{mpsc, Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use common::*;
use tungstenite::Message as WsMessage;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
/// Compiling a host program (javac, go build, cc).
const BUILD_LIMIT: Duration = Duration::from_secs(240);
/// `cargo build --release --lib` from cold.
const CARGO_LIMIT: Duration = Duration::from_secs(1200);

fn root() -> &'static Path {
    Path::new(ROOT)
}

/// Skip (false) or, under WSRT_TEST_REQUIRE_TOOLS, fail when a host's tool is missing.
fn available(missing: Option<String>) -> bool {
    let Some(what) = missing else { return true };
    assert!(
        std::env::var_os("WSRT_TEST_REQUIRE_TOOLS").is_none(),
        "{what} (install with tests/setup)"
    );
    eprintln!("skipping: {what}");
    false
}

fn runs(cmd: &str, arg: &str) -> bool {
    Command::new(cmd)
        .arg(arg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A temp dir unique to one test run, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let dir =
            std::env::temp_dir().join(format!("wsrt-hosts-{name}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Run a command to completion within `limit` (killed after it); panics if it fails.
fn run(cmd: &mut Command, limit: Duration) -> Output {
    let what = format!("{cmd:?}");
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let out = match rx.recv_timeout(limit) {
        Ok(out) => out.unwrap(),
        Err(_) => {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
            panic!("{what} did not finish within {limit:?}");
        }
    };
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `cargo build --release --lib` once per test binary: the static and shared libwsrt the
/// host programs link (cargo does nothing when it is up to date).
fn release_lib() -> PathBuf {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        run(
            Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
                .args(["build", "--release", "--lib", "--quiet"])
                .current_dir(ROOT),
            CARGO_LIMIT,
        );
    });
    root().join("target/release")
}

/// A host program under test: killed on drop; stdout read line by line with a time limit.
struct Host {
    child: Child,
    lines: mpsc::Receiver<String>,
    stderr: Arc<Mutex<String>>,
}

/// A host's arguments and the wsrt worker threads it then has: two, then none (`-inline`,
/// `WSRT_FLAG_POLL_INLINE`).
const WORKERS_THEN_INLINE: [(&[&str], usize); 2] = [(&[], 2), (&["-inline"], 0)];

impl Host {
    fn wsrt_workers(&self) -> usize {
        threads_named(&self.child.id().to_string(), "wsrt-worker")
    }

    fn spawn(cmd: &mut Command) -> Host {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
        let (tx, lines) = mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut pipe = child.stderr.take().unwrap();
        let sink = stderr.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        Host {
            child,
            lines,
            stderr,
        }
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// The next line of stdout (within WAIT, or startup's longer limit).
    fn line(&self, limit: Duration) -> String {
        self.lines.recv_timeout(limit).unwrap_or_else(|e| {
            panic!(
                "no line from the host program within {limit:?} ({e}); stderr:\n{}",
                self.stderr()
            )
        })
    }

    /// Expect "PREFIX PORT"; returns 127.0.0.1:PORT.
    fn addr(&self, prefix: &str) -> SocketAddr {
        let line = self.line(Duration::from_secs(60)); // JVM source launch compiles first
        let port: u16 = line
            .strip_prefix(prefix)
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or_else(|| panic!("expected {prefix:?} PORT, got {line:?}"));
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    /// SIGTERM, then the last line and a clean exit within the time limit.
    fn stop(&mut self) -> (String, ExitStatus) {
        let st = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(st.success(), "kill -TERM");
        let last = self.line(WAIT);
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return (last, status);
            }
            assert!(
                Instant::now() < deadline,
                "the host program did not exit within {WAIT:?} of SIGTERM; stderr:\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stop, and check the exit, the counters and that nothing was printed to stderr.
    fn stop_expecting(mut self, connections: usize) {
        let (last, status) = self.stop();
        let stderr = self.stderr();
        assert!(
            status.success(),
            "exit {status} after SIGTERM; stderr:\n{stderr}"
        );
        let n = connections;
        assert_eq!(
            last,
            format!("stopped: opened {n}, closed {n}, finalized {n}"),
            "every connection opened, closed and its host data released exactly once; \
             stderr:\n{stderr}"
        );
        let errors: Vec<&str> = stderr
            .lines()
            .filter(|l| !l.contains("internal proprietary API") && !l.trim().is_empty())
            .filter(|l| !l.starts_with("warning:") && !l.starts_with("Note:"))
            .collect();
        assert!(errors.is_empty(), "host program stderr:\n{stderr}");
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Echo through a real client (see `echo_on`).
fn echo(addr: SocketAddr, path: &str) {
    echo_on(client(addr, path), &format!("{addr}{path}"));
}

/// Echo text (ASCII and multi-byte), a 70 000-byte binary message (64-bit length) and an
/// empty one, then a clean close.
fn echo_on(mut ws: Client, at: &str) {
    for msg in [
        WsMessage::text(format!("from the host at {at}")),
        WsMessage::binary((0..70_000u32).map(|i| i as u8).collect::<Vec<u8>>()),
        WsMessage::text("héllo ✓"),
        WsMessage::binary(Vec::new()),
    ] {
        ws.send(msg.clone()).unwrap();
        assert_eq!(ws.read().expect("echo"), msg, "echo at {at}");
    }
    ws.close(None).unwrap();
    loop {
        match ws.read() {
            Ok(_) => {}
            Err(tungstenite::Error::ConnectionClosed) => break,
            Err(e) => panic!("unclean close at {at}: {e}"),
        }
    }
}

/// The upgrade request and a first frame in one write: whatever the host's HTTP server read
/// past the request head must reach wsrt (the `head` bytes of `wsrt_adopt`).
fn early_frame(addr: SocketAddr, path: &str) {
    let mut s = tcp(addr);
    let mut bytes = upgrade_request(path, "").into_bytes();
    bytes.extend(frame(true, 1, b"early bird", true));
    s.write_all(&bytes).unwrap();
    let (status, head) = read_head(&mut s);
    assert_eq!(status, 101, "{head}");
    assert_eq!(read_frame(&mut s), (true, 1, b"early bird".to_vec()));
    s.write_all(&close_frame(1000, "")).unwrap();
    assert_eq!(read_until_close(&mut s), Some(1000));
    assert_eof(&mut s);
}

#[test]
fn go_cgo_poll_echo_handles_and_hijack_adoption() {
    if !available((!runs("go", "version")).then(|| "go (Debian golang-go) is not installed".into()))
    {
        return;
    }
    release_lib();
    let tmp = TempDir::new("go");
    let bin = tmp.0.join("smoke");
    run(
        Command::new("go")
            .args(["build", "-o"])
            .arg(&bin)
            .arg(".")
            .current_dir(root().join("bindings/go/smoke"))
            .env("GOFLAGS", "-mod=mod")
            .env("GOPROXY", "off")
            .env("GOTOOLCHAIN", "local")
            .env("GOCACHE", root().join("target/go-build-cache")),
        BUILD_LIMIT,
    );
    // With two worker threads, then inline (the loop runs inside the goroutine's wsrt_poll).
    for (args, workers) in WORKERS_THEN_INLINE {
        let host = Host::spawn(Command::new(&bin).args(args));
        let direct = host.addr("listening on ");
        let hijack = host.addr("http listening on ");
        assert_eq!(host.wsrt_workers(), workers, "{args:?}");
        echo(direct, "/direct");
        echo(hijack, "/hijacked");
        early_frame(hijack, "/hijacked-early");
        host.stop_expecting(3);
    }
}

/// Node: an N-API addon (C, against /usr/include/node) watches wsrt_event_fd with a uv_poll_t
/// on Node's loop and calls JS per event; an http server's 'upgrade' event hands its socket
/// to wsrt_adopt.
#[test]
fn node_napi_event_fd_on_libuv_and_upgrade_adoption() {
    let missing = if !runs("node", "--version") {
        Some("node (Debian nodejs) is not installed".to_string())
    } else if !Path::new("/usr/include/node/node_api.h").exists() {
        Some("/usr/include/node/node_api.h (Debian nodejs) is missing".to_string())
    } else {
        None
    };
    if !available(missing) {
        return;
    }
    let lib = release_lib();
    let tmp = TempDir::new("node");
    let addon = tmp.0.join("wsrt_smoke.node");
    run(
        Command::new("cc")
            .args([
                "-shared",
                "-fPIC",
                "-std=gnu11",
                "-Wall",
                "-Wextra",
                "-Werror",
            ])
            .args(["-I/usr/include/node", "-I"])
            .arg(root().join("include"))
            .arg(root().join("bindings/node/smoke/addon.c"))
            .arg(lib.join("libwsrt.a"))
            .args(["-lpthread", "-ldl", "-lm", "-o"])
            .arg(&addon),
        BUILD_LIMIT,
    );
    let host = Host::spawn(
        Command::new("node")
            .arg(root().join("bindings/node/smoke/smoke.js"))
            .arg(&addon),
    );
    let direct = host.addr("listening on ");
    let upgraded = host.addr("http listening on ");
    echo(direct, "/direct");
    echo(upgraded, "/upgraded");
    early_frame(upgraded, "/upgraded-early");
    host.stop_expecting(3);
}

/// The JDK home whose `release` file says JAVA_VERSION major satisfies `want` (the highest
/// such), from `env` or /usr/lib/jvm.
fn find_jdk(env: &str, want: impl Fn(u32) -> bool) -> Option<PathBuf> {
    let major = |home: &Path| -> Option<u32> {
        let release = std::fs::read_to_string(home.join("release")).ok()?;
        let v = release
            .lines()
            .find_map(|l| l.strip_prefix("JAVA_VERSION="))?
            .trim_matches('"')
            .to_string();
        let mut parts = v.split('.');
        let first: u32 = parts.next()?.parse().ok()?;
        if first == 1 {
            parts.next()?.parse().ok() // 1.8
        } else {
            Some(first)
        }
    };
    if let Some(home) = std::env::var_os(env) {
        let home = PathBuf::from(home);
        return home.join("bin/javac").exists().then_some(home);
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/jvm")
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.join("bin/javac").exists() && p.join("include/jni.h").exists())
        .filter_map(|p| major(&p).filter(|m| want(*m)).map(|m| (m, p)))
        .collect();
    found.sort();
    found.pop().map(|(_, p)| p)
}

/// The JVM programs decide upgrades themselves (WSRT_FLAG_DECIDE_UPGRADES, the Ring / Sente
/// shape): without `X-Token: secret` the answer is 403; with it, 101 carries the header the
/// program added (`X-Host: NAME`). Then two clients at once, interleaved, each closing.
fn jvm_upgrades_and_echo(addr: SocketAddr, name: &'static str) {
    let mut s = tcp(addr);
    s.write_all(upgrade_request("/no-token", "X-Token: wrong\r\n").as_bytes())
        .unwrap();
    let (status, head) = read_head(&mut s);
    assert_eq!(status, 403, "{head}");
    drop(s);
    let open = move |path: &str| {
        let mut req = tungstenite::client::IntoClientRequest::into_client_request(format!(
            "ws://{addr}{path}"
        ))
        .unwrap();
        req.headers_mut()
            .insert("X-Token", "secret".parse().unwrap());
        let (ws, resp) = connect(req);
        assert_eq!(
            resp.headers().get("x-host").map(|v| v.to_str().unwrap()),
            Some(name),
            "the 101 carries the header the host added: {resp:?}"
        );
        echo_on(ws, path);
    };
    let a = std::thread::spawn(move || open("/jvm-a"));
    let b = std::thread::spawn(move || open("/jvm-b?x=1"));
    a.join().unwrap();
    b.join().unwrap();
}

/// JVM on JDK 22+: java.lang.foreign, a platform thread blocked in wsrt_poll, no native shim;
/// the program's MemoryLayout of wsrt_event must match the C compiler's.
#[test]
fn jvm_ffm_thread_blocked_in_poll() {
    let jdk = find_jdk("WSRT_JDK_FFM_HOME", |m| m >= 22);
    if !available(jdk.is_none().then(|| {
        "no JDK 22+ under /usr/lib/jvm (Temurin 25 expected at \
         /usr/lib/jvm/temurin-25-jdk-amd64; or set WSRT_JDK_FFM_HOME)"
            .into()
    })) {
        return;
    }
    let jdk = jdk.unwrap();
    let lib = release_lib();
    let tmp = TempDir::new("ffm");

    // What the C compiler says about wsrt_event and wsrt_header, in the program's format.
    let structs: [(&str, &[&str]); 2] = [
        (
            "wsrt_event",
            &[
                "kind",
                "conn",
                "data",
                "len",
                "is_text",
                "close_code",
                "clean",
                "remote_addr",
                "path",
                "query",
                "subprotocol",
                "origin",
                "headers",
                "header_count",
                "user_data",
            ],
        ),
        ("wsrt_header", &["name", "value"]),
    ];
    let mut c = String::from(
        "#include <stddef.h>\n#include <stdio.h>\n#include <wsrt.h>\nint main(void) {\n  \
         printf(\"layout: \");\n",
    );
    for (i, (name, fields)) in structs.iter().enumerate() {
        let sep = if i > 0 { "; " } else { "" };
        c += &format!("  printf(\"{sep}{name} size %zu\", sizeof({name}));\n");
        for f in *fields {
            c += &format!("  printf(\", {f} %zu\", offsetof({name}, {f}));\n");
        }
    }
    c += "  printf(\"\\n\");\n  return 0;\n}\n";
    std::fs::write(tmp.0.join("layout.c"), c).unwrap();
    run(
        Command::new("cc")
            .arg("-I")
            .arg(root().join("include"))
            .arg(tmp.0.join("layout.c"))
            .arg("-o")
            .arg(tmp.0.join("layout")),
        BUILD_LIMIT,
    );
    let c_layout = run(&mut Command::new(tmp.0.join("layout")), WAIT).stdout;
    let c_layout = String::from_utf8(c_layout).unwrap();

    // With two worker threads, then inline (the loop runs in the poller thread's wsrt_poll).
    for (args, workers) in WORKERS_THEN_INLINE {
        let host = Host::spawn(
            Command::new(jdk.join("bin/java"))
                .arg("--enable-native-access=ALL-UNNAMED")
                .arg(root().join("bindings/java/smoke/ffm/SmokeFfm.java"))
                .arg(lib.join("libwsrt.so"))
                .args(args),
        );
        assert_eq!(
            host.line(Duration::from_secs(60)),
            c_layout.trim_end(),
            "SmokeFfm's MemoryLayout of wsrt_event vs the C compiler"
        );
        let addr = host.addr("listening on ");
        assert_eq!(host.wsrt_workers(), workers, "{args:?}");
        jvm_upgrades_and_echo(addr, "ffm");
        host.stop_expecting(2);
    }
}

/// JVM on JDK 17: JNI (a C shim with libwsrt.a linked in, checked against the `javac -h`
/// header), the same program shape as FFM.
#[test]
fn jvm_jni_on_jdk17() {
    let jdk = find_jdk("WSRT_JDK17_HOME", |m| m == 17);
    if !available(jdk.is_none().then(|| {
        "no JDK 17 under /usr/lib/jvm (Debian openjdk-17-jdk-headless; or set WSRT_JDK17_HOME)"
            .into()
    })) {
        return;
    }
    let jdk = jdk.unwrap();
    let lib = release_lib();
    let src = root().join("bindings/java/smoke/jni");
    let tmp = TempDir::new("jni");
    let out = &tmp.0;
    run(
        Command::new(jdk.join("bin/javac"))
            .arg("-h")
            .arg(out)
            .arg("-d")
            .arg(out)
            .arg(src.join("SmokeJni.java")),
        BUILD_LIMIT,
    );
    run(
        Command::new("cc")
            .args([
                "-shared",
                "-fPIC",
                "-std=gnu11",
                "-Wall",
                "-Wextra",
                "-Werror",
            ])
            .arg(format!("-I{}", jdk.join("include").display()))
            .arg(format!("-I{}", jdk.join("include/linux").display()))
            .arg(format!("-I{}", out.display())) // SmokeJni.h from javac -h
            .arg(format!("-I{}", root().join("include").display()))
            .arg(src.join("wsrt_jni.c"))
            .arg(lib.join("libwsrt.a"))
            .args(["-lpthread", "-ldl", "-lm", "-o"])
            .arg(out.join("libwsrt_jni.so")),
        BUILD_LIMIT,
    );
    let host = Host::spawn(
        Command::new(jdk.join("bin/java"))
            .arg("-Xcheck:jni")
            .arg(format!("-Djava.library.path={}", out.display()))
            .arg("-cp")
            .arg(out)
            .arg("SmokeJni"),
    );
    jvm_upgrades_and_echo(host.addr("listening on "), "jni");
    host.stop_expecting(2);
}
