//! The C ABI from other hosts (Go, Node): small but real programs built and driven with a real
//! client.
//! Go (cgo): a goroutine blocked in wsrt_poll echoes, cgo.Handle data is released by the
//! finalizer exactly once per connection, and a net/http handler hijacks its connection and
//! hands it to wsrt.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

use common::*;
use tungstenite::Message as WsMessage;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn have(tool: &str) -> bool {
    let ok = Command::new(tool)
        .arg("version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        assert!(
            std::env::var_os("WSRT_TEST_REQUIRE_TOOLS").is_none(),
            "{tool} is not installed: run tests/setup"
        );
        eprintln!("{tool} missing; skipping");
    }
    ok
}

fn echo(addr: std::net::SocketAddr, path: &str) {
    let mut ws = client(addr, path);
    ws.send(WsMessage::text("from the host")).unwrap();
    assert_eq!(ws.read().unwrap(), WsMessage::text("from the host"));
    ws.send(WsMessage::binary(vec![9u8; 70_000])).unwrap();
    assert_eq!(ws.read().unwrap(), WsMessage::binary(vec![9u8; 70_000]));
    ws.close(None).unwrap();
    while ws.read().is_ok() {}
}

#[test]
fn go_cgo_poll_echo_handles_and_hijack_adoption() {
    if !have("go") {
        return;
    }
    let st = Command::new("cargo")
        .args(["build", "--release", "--lib", "--quiet"])
        .current_dir(ROOT)
        .status()
        .unwrap();
    assert!(st.success());
    let bin = std::env::temp_dir().join(format!("wsrt-gosmoke-{}", std::process::id()));
    let out = Command::new("go")
        .args(["build", "-o"])
        .arg(&bin)
        .arg(".")
        .current_dir(Path::new(ROOT).join("bindings/go/smoke"))
        .env("GOFLAGS", "-mod=mod")
        .env("GOPROXY", "off")
        .env("GOCACHE", std::env::temp_dir().join("wsrt-gocache"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "go build: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut child = Command::new(&bin).stdout(Stdio::piped()).spawn().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap())
        .lines()
        .map_while(Result::ok);
    let port = |line: Option<String>, prefix: &str| -> u16 {
        let line = line.expect("a port line");
        line.strip_prefix(prefix)
            .unwrap_or_else(|| panic!("{line}"))
            .parse()
            .unwrap()
    };
    let ws_port = port(lines.next(), "listening on ");
    let http_port = port(lines.next(), "http listening on ");
    echo(format!("127.0.0.1:{ws_port}").parse().unwrap(), "/direct");
    echo(
        format!("127.0.0.1:{http_port}").parse().unwrap(),
        "/hijacked",
    );
    let st = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    let last = lines.next();
    let status = child.wait().unwrap();
    assert!(status.success());
    assert_eq!(
        last.as_deref(),
        Some("finalized 2 opened 2"),
        "each cgo.Handle released exactly once"
    );
    let _ = std::fs::remove_file(bin);
}

/// Node: an N-API addon (C, against /usr/include/node) watches wsrt_event_fd with a uv_poll_t
/// on Node's loop and calls JS per event; an http server's 'upgrade' event hands its socket
/// to wsrt_adopt.
#[test]
fn node_napi_event_fd_on_libuv_and_upgrade_adoption() {
    let ok = Path::new("/usr/include/node/node_api.h").exists()
        && Command::new("node")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
    if !ok {
        assert!(
            std::env::var_os("WSRT_TEST_REQUIRE_TOOLS").is_none(),
            "node and its headers (/usr/include/node) are needed"
        );
        eprintln!("node or /usr/include/node missing; skipping");
        return;
    }
    let st = Command::new("cargo")
        .args(["build", "--release", "--lib", "--quiet"])
        .current_dir(ROOT)
        .status()
        .unwrap();
    assert!(st.success());
    let addon = std::env::temp_dir().join(format!("wsrt-smoke-{}.node", std::process::id()));
    let out = Command::new("cc")
        .args([
            "-shared",
            "-fPIC",
            "-std=gnu11",
            "-Wall",
            "-Wextra",
            "-Werror",
            "-I/usr/include/node",
            "-I",
        ])
        .arg(Path::new(ROOT).join("include"))
        .arg(Path::new(ROOT).join("bindings/node/smoke/addon.c"))
        .arg(Path::new(ROOT).join("target/release/libwsrt.a"))
        .args(["-lpthread", "-ldl", "-lm", "-o"])
        .arg(&addon)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "cc: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut child = Command::new("node")
        .arg(Path::new(ROOT).join("bindings/node/smoke/smoke.js"))
        .arg(&addon)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap())
        .lines()
        .map_while(Result::ok);
    let mut ports = Vec::new();
    for _ in 0..2 {
        let line = lines.next().expect("a port line");
        ports.push(line.rsplit(' ').next().unwrap().parse::<u16>().unwrap());
    }
    for (port, path) in ports.iter().zip(["/direct", "/upgraded"]) {
        echo(format!("127.0.0.1:{port}").parse().unwrap(), path);
    }
    let st = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    assert_eq!(lines.next().as_deref(), Some("stopped"));
    assert!(
        child.wait().unwrap().success(),
        "node exits cleanly once wsrt is stopped"
    );
    let _ = std::fs::remove_file(addon);
}

/// JVM on JDK 22+: java.lang.foreign, a platform thread blocked in wsrt_poll, no native shim.
#[test]
fn jvm_ffm_thread_blocked_in_poll() {
    let java = Path::new("/usr/lib/jvm/temurin-25-jdk-amd64/bin/java");
    if !java.exists() {
        assert!(
            std::env::var_os("WSRT_TEST_REQUIRE_TOOLS").is_none(),
            "a JDK 22+ is needed at {}",
            java.display()
        );
        eprintln!("no JDK 22+; skipping");
        return;
    }
    let st = Command::new("cargo")
        .args(["build", "--release", "--lib", "--quiet"])
        .current_dir(ROOT)
        .status()
        .unwrap();
    assert!(st.success());
    let mut child = Command::new(java)
        .arg("--enable-native-access=ALL-UNNAMED")
        .arg(Path::new(ROOT).join("bindings/java/smoke/ffm/SmokeFfm.java"))
        .arg(Path::new(ROOT).join("target/release/libwsrt.so"))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap())
        .lines()
        .map_while(Result::ok);
    let line = lines.next().expect("a port line");
    let port: u16 = line
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("{line}"))
        .parse()
        .unwrap();
    echo(format!("127.0.0.1:{port}").parse().unwrap(), "/jvm");
    let st = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    assert_eq!(
        lines.next().as_deref(),
        Some("stopped"),
        "shutdown hook stopped wsrt"
    );
    let _ = child.wait();
}

/// JVM on JDK 17: JNI (a C shim with libwsrt.a linked in), the same echo shape as FFM.
#[test]
fn jvm_jni_on_jdk17() {
    let jdk = Path::new("/usr/lib/jvm/java-17-openjdk-amd64");
    if !jdk.join("bin/javac").exists() {
        assert!(
            std::env::var_os("WSRT_TEST_REQUIRE_TOOLS").is_none(),
            "JDK 17 is needed at {}",
            jdk.display()
        );
        eprintln!("no JDK 17; skipping");
        return;
    }
    let st = Command::new("cargo")
        .args(["build", "--release", "--lib", "--quiet"])
        .current_dir(ROOT)
        .status()
        .unwrap();
    assert!(st.success());
    let src = Path::new(ROOT).join("bindings/java/smoke/jni");
    let dir = std::env::temp_dir().join(format!("wsrt-jni-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let st = Command::new(jdk.join("bin/javac"))
        .arg("-d")
        .arg(&dir)
        .arg(src.join("SmokeJni.java"))
        .status()
        .unwrap();
    assert!(st.success(), "javac");
    let out = Command::new("cc")
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
        .arg(format!("-I{}", Path::new(ROOT).join("include").display()))
        .arg(src.join("wsrt_jni.c"))
        .arg(Path::new(ROOT).join("target/release/libwsrt.a"))
        .args(["-lpthread", "-ldl", "-lm", "-o"])
        .arg(dir.join("libwsrt_jni.so"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "cc: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut child = Command::new(jdk.join("bin/java"))
        .arg(format!("-Djava.library.path={}", dir.display()))
        .arg("-cp")
        .arg(&dir)
        .arg("SmokeJni")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap())
        .lines()
        .map_while(Result::ok);
    let line = lines.next().expect("a port line");
    let port: u16 = line
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("{line}"))
        .parse()
        .unwrap();
    echo(format!("127.0.0.1:{port}").parse().unwrap(), "/jni");
    let st = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    assert_eq!(lines.next().as_deref(), Some("stopped"));
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(dir);
}
