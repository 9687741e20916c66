//! permessage-deflate with independent clients (Python `websockets`, headless Chromium via
//! ws-echo), every parameter combination, context takeover on and off, and a zip bomb.

mod common;

use std::io::Write;
use std::process::Command;

use common::*;
use flate2::{Compress, Compression, FlushCompress};

fn python_client(addr: std::net::SocketAddr, params: &str) -> Option<String> {
    let ok = Command::new("python3")
        .args(["-c", "import websockets"])
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        assert!(
            std::env::var_os("WSRT_TEST_REQUIRE_TOOLS").is_none(),
            "python3 websockets is not installed: run tests/setup"
        );
        eprintln!("python websockets missing; skipping");
        return None;
    }
    let out = Command::new("timeout")
        .args([
            "60",
            "python3",
            "tests/clients/deflate_client.py",
            &format!("ws://{addr}/"),
            params,
        ])
        .output()
        .unwrap();
    Some(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

#[test]
fn every_parameter_combination_round_trips() {
    type Case<'a> = (&'a [(&'a str, &'a str)], &'a str, &'a str);
    let cases: &[Case] = &[
        (&[], "{}", "permessage-deflate"),
        (
            &[],
            r#"{"client_max_window_bits": 15}"#,
            "permessage-deflate",
        ),
        (
            &[],
            r#"{"server_no_context_takeover": true}"#,
            "permessage-deflate; server_no_context_takeover",
        ),
        (
            &[],
            r#"{"client_no_context_takeover": true}"#,
            "permessage-deflate; client_no_context_takeover",
        ),
        (
            &[],
            r#"{"server_no_context_takeover": true, "client_no_context_takeover": true}"#,
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover",
        ),
        (
            &[],
            r#"{"server_max_window_bits": 10}"#,
            "permessage-deflate; server_max_window_bits=10",
        ),
        (
            &[],
            r#"{"server_max_window_bits": 9, "client_max_window_bits": 9}"#,
            "permessage-deflate; server_max_window_bits=9",
        ),
        (
            &[("compression_window_bits", "11")],
            "{}",
            "permessage-deflate; server_max_window_bits=11",
        ),
        // zlib can't compress in a 256-byte window: accepted, answered uncompressed.
        (
            &[],
            r#"{"server_max_window_bits": 8}"#,
            "permessage-deflate; server_max_window_bits=8",
        ),
        (
            &[("compression_no_context_takeover", "server,client")],
            "{}",
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover",
        ),
        (
            &[("compression_level", "9"), ("compression_threshold", "0")],
            "{}",
            "permessage-deflate",
        ),
    ];
    for (opts, params, expected) in cases {
        let mut all = vec![("compression", "on")];
        all.extend_from_slice(opts);
        let srv = TestServer::start(&all);
        let Some(out) = python_client(srv.addr, params) else {
            return;
        };
        let v: serde_like::Line = serde_like::parse(&out);
        assert!(v.ok, "{opts:?} {params}: {out}");
        assert_eq!(v.extensions, *expected, "{opts:?} {params}");
    }
}

#[test]
fn compression_off_declines_and_still_echoes() {
    let srv = TestServer::start(&[]);
    let Some(out) = python_client(srv.addr, "{}") else {
        return;
    };
    let v = serde_like::parse(&out);
    assert!(v.ok, "{out}");
    assert_eq!(v.extensions, "");
}

/// A compressed client frame (raw deflate, tail removed, RSV1 set), masked.
fn compressed_frame(payload: &[u8], text: bool) -> Vec<u8> {
    let mut c = Compress::new(Compression::fast(), false);
    let mut out = Vec::with_capacity(payload.len() / 100 + 1024);
    loop {
        let consumed = c.total_in() as usize;
        if out.capacity() - out.len() < 1024 {
            out.reserve(out.capacity());
        }
        c.compress_vec(&payload[consumed..], &mut out, FlushCompress::Sync)
            .unwrap();
        if c.total_in() as usize == payload.len() && out.len() < out.capacity() {
            break;
        }
    }
    assert!(out.ends_with(&[0, 0, 0xff, 0xff]));
    out.truncate(out.len() - 4);
    let mut f = frame(true, if text { 1 } else { 2 }, &out, true);
    f[0] |= 0x40;
    f
}

fn deflate_ws(addr: std::net::SocketAddr) -> std::net::TcpStream {
    let mut s = tcp(addr);
    s.write_all(
        upgrade_request("/", "Sec-WebSocket-Extensions: permessage-deflate\r\n").as_bytes(),
    )
    .unwrap();
    let (status, head) = read_head(&mut s);
    assert_eq!(status, 101);
    assert!(
        head.contains("Sec-WebSocket-Extensions: permessage-deflate"),
        "{head}"
    );
    s
}

#[test]
/// The bound on inflated memory (the limit + one 4 KiB step) is asserted in the deflate
/// unit tests; here the server closes with 1009 instead of inflating 64 MiB.
fn zip_bomb_is_closed_with_1009() {
    let srv = TestServer::start(&[
        ("compression", "on"),
        ("max_message_size", "1MiB"),
        ("max_frame_size", "1MiB"),
    ]);
    let mut s = deflate_ws(srv.addr);
    let bomb = compressed_frame(&vec![b'A'; 64 << 20], true);
    assert!(
        bomb.len() < 1 << 20,
        "the bomb is small on the wire: {}",
        bomb.len()
    );
    s.write_all(&bomb).unwrap();
    assert_eq!(read_until_close(&mut s), Some(1009));
    let (_, info) = srv.wait_close();
    assert_eq!(info.code, 1009);
}

#[test]
fn raw_compressed_frames_inflate_and_invalid_data_is_1007() {
    let srv = TestServer::start(&[("compression", "on"), ("compression_threshold", "1MiB")]);
    let mut s = deflate_ws(srv.addr);
    s.write_all(&compressed_frame("compressed hello ✓".as_bytes(), true))
        .unwrap();
    // Threshold 1 MiB: the echo comes back uncompressed.
    assert_eq!(
        read_frame(&mut s),
        (true, 1, "compressed hello ✓".as_bytes().to_vec())
    );
    let mut bad = frame(true, 2, &[0xff, 0xff, 0xff, 0xff, 0xff], true);
    bad[0] |= 0x40;
    s.write_all(&bad).unwrap();
    assert_eq!(read_until_close(&mut s), Some(1007));
    // Compressed text that inflates to invalid UTF-8 is 1007 too.
    let mut s = deflate_ws(srv.addr);
    s.write_all(&compressed_frame(&[b'o', b'k', 0xff], true))
        .unwrap();
    assert_eq!(read_until_close(&mut s), Some(1007));
    // RSV1 on a connection that did not negotiate compression is 1002.
    let mut s = raw_ws(srv.addr, "/");
    s.write_all(&compressed_frame(b"x", false)).unwrap();
    assert_eq!(read_until_close(&mut s), Some(1002));
}

#[test]
fn publish_to_compressed_and_plain_subscribers() {
    let srv = TestServer::start(&[
        ("compression", "on"),
        ("compression_no_context_takeover", "server"),
    ]);
    let h = srv.handle();
    let mut zipped = deflate_ws(srv.addr);
    let zid = srv.wait_open();
    let mut plain = raw_ws(srv.addr, "/");
    let pid = srv.wait_open();
    assert!(h.subscribe(zid, "t") && h.subscribe(pid, "t"));
    // A burst: publishes queued back to back may go to the plain subscriber in one write;
    // the compressed one still gets each message compressed on its own.
    let texts: Vec<String> = (0..20)
        .map(|i| format!("published {i} ").repeat(100))
        .collect();
    for text in &texts {
        assert!(h.publish("t", wsrt::Message::Text(text)));
    }
    for text in &texts {
        assert_eq!(read_frame(&mut plain), (true, 1, text.as_bytes().to_vec()));
        let mut h2 = [0u8; 2];
        std::io::Read::read_exact(&mut zipped, &mut h2).unwrap();
        assert_eq!(h2[0], 0x80 | 0x40 | 1, "compressed text frame (RSV1)");
        let len = (h2[1] & 0x7f) as usize;
        assert!(len < 126, "compressed well below the 1000-byte original");
        let mut payload = vec![0u8; len];
        std::io::Read::read_exact(&mut zipped, &mut payload).unwrap();
        payload.extend_from_slice(&[0, 0, 0xff, 0xff]);
        let mut d = flate2::Decompress::new(false);
        let mut out = Vec::with_capacity(4096);
        d.decompress_vec(&payload, &mut out, flate2::FlushDecompress::Sync)
            .unwrap();
        assert_eq!(out, text.as_bytes());
    }
}

/// The tiny JSON reader these tests need (no serde dependency for one line).
mod serde_like {
    pub struct Line {
        pub ok: bool,
        pub extensions: String,
    }
    pub fn parse(s: &str) -> Line {
        let ok = s.contains("\"ok\": true");
        let extensions = s
            .split("\"extensions\": \"")
            .nth(1)
            .and_then(|r| r.split('"').next())
            .unwrap_or("")
            .to_string();
        Line { ok, extensions }
    }
}
