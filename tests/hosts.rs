//! The C ABI from other hosts: small but real programs built and driven with a real client.
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
