//! The upgrade over real sockets: every rejection says why, plain HTTP on the same port,
//! the host's synchronous and deferred decisions.

mod common;

use std::io::Write;

use common::*;
use wsrt::{Accept, Decision, Reject};

const HOST_REQ: &str = "Host: 127.0.0.1\r\n";

#[test]
fn proxy_that_drops_upgrade_headers_gets_a_diagnostic() {
    let srv = TestServer::start(&[]);
    // What nginx sends without `proxy_set_header Upgrade/Connection`: no hop-by-hop headers.
    let req = format!(
        "GET /ws HTTP/1.1\r\n{HOST_REQ}Connection: close\r\nSec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    let (status, _, body) = http(srv.addr, &req);
    assert_eq!(status, 400);
    assert!(body.contains("Upgrade"), "{body}");
    assert!(body.contains("proxy"), "{body}");
    assert!(
        body.contains("proxy_set_header"),
        "body names the nginx fix: {body}"
    );
    assert_eq!(srv.handle().stats().rejected("missing_upgrade"), 1);
}

#[test]
fn unsupported_version_gets_426_with_the_supported_version() {
    let srv = TestServer::start(&[]);
    let req = format!(
        "GET / HTTP/1.1\r\n{HOST_REQ}Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 8\r\n\r\n"
    );
    let (status, head, _) = http(srv.addr, &req);
    assert_eq!(status, 426);
    assert!(head.contains("Sec-WebSocket-Version: 13"), "{head}");
}

#[test]
fn bad_key_wrong_method_and_old_http_are_400() {
    let srv = TestServer::start(&[]);
    let bad_key = "GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: short\r\nSec-WebSocket-Version: 13\r\n\r\n";
    assert_eq!(http(srv.addr, bad_key).0, 400);
    let post = upgrade_request("/", "").replacen("GET", "POST", 1);
    assert!(http(srv.addr, &post).0 >= 400);
    let http10 = upgrade_request("/", "").replacen("HTTP/1.1", "HTTP/1.0", 1);
    assert_eq!(http(srv.addr, &http10).0, 400);
    let garbage = "\x16\x03\x01\x02\x00\x01\x00\x01\x7c\x03\x03\r\n\r\n";
    assert_eq!(http(srv.addr, garbage).0, 400);
    assert!(srv.handle().stats().rejected("bad_key") >= 1);
}

#[test]
fn oversize_headers_get_431() {
    let srv = TestServer::start(&[("max_header_bytes", "1KiB")]);
    let big = format!("X-Big: {}\r\n", "a".repeat(2000));
    assert_eq!(http(srv.addr, &upgrade_request("/", &big)).0, 431);
    let many: String = (0..100).map(|i| format!("X-{i}: 1\r\n")).collect();
    assert_eq!(http(srv.addr, &upgrade_request("/", &many)).0, 431);
    assert_eq!(srv.handle().stats().rejected("headers_too_large"), 2);
}

#[test]
fn paths_health_and_plain_http() {
    let srv = TestServer::start(&[("paths", "/ws,/push/*"), ("health_path", "/healthz")]);
    assert_eq!(http(srv.addr, &upgrade_request("/other", "")).0, 404);
    let mut s = tcp(srv.addr);
    s.write_all(upgrade_request("/push/abc", "").as_bytes())
        .unwrap();
    assert_eq!(read_head(&mut s).0, 101);
    let (status, _, body) = http(srv.addr, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!((status, body.as_str()), (200, "ok\n"));
    let (status, head, _) = http(srv.addr, "GET /ws HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(status, 426, "plain GET on a WebSocket path");
    assert!(head.contains("Upgrade: websocket"), "{head}");
    assert_eq!(
        http(srv.addr, "GET /favicon.ico HTTP/1.1\r\nHost: x\r\n\r\n").0,
        404
    );
}

#[test]
fn cross_origin_browsers_are_refused_by_default() {
    let srv = TestServer::start(&[]);
    let foreign = upgrade_request("/", "Origin: https://evil.example\r\n");
    let (status, _, body) = http(srv.addr, &foreign);
    assert_eq!(status, 403);
    assert!(body.to_lowercase().contains("origin"), "{body}");
    let same = upgrade_request("/", "Origin: http://127.0.0.1\r\n");
    let mut s = tcp(srv.addr);
    s.write_all(same.as_bytes()).unwrap();
    assert_eq!(read_head(&mut s).0, 101, "same-origin browser");

    let srv = TestServer::start(&[("allowed_origins", "https://app.example")]);
    let ok = upgrade_request("/", "Origin: https://app.example\r\n");
    let mut s = tcp(srv.addr);
    s.write_all(ok.as_bytes()).unwrap();
    assert_eq!(read_head(&mut s).0, 101);
    assert_eq!(http(srv.addr, &foreign).0, 403);

    let srv = TestServer::start(&[("allowed_origins", "*")]);
    let mut s = tcp(srv.addr);
    s.write_all(foreign.as_bytes()).unwrap();
    assert_eq!(read_head(&mut s).0, 101);
}

#[test]
fn subprotocol_is_chosen_in_server_preference_order() {
    let srv = TestServer::start(&[("subprotocols", "v2.chat,v1.chat")]);
    let mut s = tcp(srv.addr);
    s.write_all(upgrade_request("/", "Sec-WebSocket-Protocol: v1.chat, v2.chat\r\n").as_bytes())
        .unwrap();
    let (status, head) = read_head(&mut s);
    assert_eq!(status, 101);
    assert!(head.contains("Sec-WebSocket-Protocol: v2.chat"), "{head}");
    let mut s = tcp(srv.addr);
    s.write_all(upgrade_request("/", "Sec-WebSocket-Protocol: mqtt\r\n").as_bytes())
        .unwrap();
    let (status, head) = read_head(&mut s);
    assert_eq!(status, 101);
    assert!(!head.contains("Sec-WebSocket-Protocol"), "{head}");
}

#[test]
fn host_accepts_with_headers_or_rejects_synchronously() {
    let srv = TestServer::start_with(
        &[],
        true,
        Some(Box::new(|req| {
            if req.query == Some("token=good") {
                Decision::Accept(Accept {
                    subprotocol: None,
                    headers: vec![("Set-Cookie".into(), "session=abc; HttpOnly".into())],
                })
            } else {
                Decision::Reject(Reject::new(401, "bad token"))
            }
        })),
    );
    let mut s = tcp(srv.addr);
    s.write_all(upgrade_request("/ws?token=good", "").as_bytes())
        .unwrap();
    let (status, head) = read_head(&mut s);
    assert_eq!(status, 101);
    assert!(head.contains("Set-Cookie: session=abc; HttpOnly"), "{head}");
    let (status, _, body) = http(srv.addr, &upgrade_request("/ws?token=bad", ""));
    assert_eq!((status, body.as_str()), (401, "bad token\n"));
    assert_eq!(srv.handle().stats().rejected("rejected_by_host"), 1);
}

#[test]
fn host_decides_later_from_another_thread() {
    let (tx, rx) = std::sync::mpsc::channel();
    let tx = std::sync::Mutex::new(tx);
    let srv = TestServer::start_with(
        &[],
        true,
        Some(Box::new(move |req| {
            tx.lock()
                .unwrap()
                .send((req.id, req.header("Cookie").map(String::from)))
                .unwrap();
            Decision::Defer
        })),
    );
    let h = srv.handle();
    let checker = std::thread::spawn(move || {
        for _ in 0..2 {
            let (id, cookie) = rx.recv_timeout(WAIT).unwrap();
            if cookie.as_deref() == Some("csrf=ok") {
                assert!(h.accept(id, Accept::default()));
            } else {
                assert!(h.reject(id, Reject::new(403, "CSRF token missing")));
            }
        }
    });
    // Frames sent right behind the request wait for the decision and are not lost.
    let mut s = tcp(srv.addr);
    let mut bytes = upgrade_request("/", "Cookie: csrf=ok\r\n").into_bytes();
    bytes.extend(frame(true, 1, b"queued while deciding", true));
    s.write_all(&bytes).unwrap();
    assert_eq!(read_head(&mut s).0, 101);
    assert_eq!(
        read_frame(&mut s),
        (true, 1, b"queued while deciding".to_vec())
    );
    let (status, _, body) = http(srv.addr, &upgrade_request("/", ""));
    assert_eq!((status, body.as_str()), (403, "CSRF token missing\n"));
    checker.join().unwrap();
}

#[test]
fn undecided_and_incomplete_handshakes_time_out() {
    let srv = TestServer::start_with(
        &[("handshake_timeout", "200ms")],
        true,
        Some(Box::new(|_| Decision::Defer)),
    );
    let mut s = tcp(srv.addr);
    s.write_all(upgrade_request("/", "").as_bytes()).unwrap();
    assert_eof(&mut s);
    let mut s = tcp(srv.addr);
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").unwrap();
    assert_eof(&mut s);
    let stats = srv.handle().stats();
    assert_eq!(stats.rejected("handshake_timeout"), 2);
    assert_eq!(stats.open, 0);
}

#[test]
fn proxy_header_when_proxy_protocol_is_off_is_named() {
    let srv = TestServer::start(&[]);
    let mut req = "PROXY TCP4 203.0.113.7 127.0.0.1 56324 8080\r\n".to_string();
    req.push_str(&upgrade_request("/", ""));
    let (status, _, body) = http(srv.addr, &req);
    assert_eq!(status, 400);
    assert!(
        body.contains("PROXY protocol header received but proxy_protocol is off"),
        "{body}"
    );
}

#[test]
fn connection_cap_answers_503_with_retry_after() {
    let srv = TestServer::start(&[("max_connections", "2")]);
    let _a = raw_ws(srv.addr, "/");
    let _b = raw_ws(srv.addr, "/");
    let (status, head, _) = http(srv.addr, &upgrade_request("/", ""));
    assert_eq!(status, 503);
    assert!(head.contains("Retry-After"), "{head}");
    drop(_a);
    srv.wait_close();
    // A slot is free again.
    let mut s = tcp(srv.addr);
    s.write_all(upgrade_request("/", "").as_bytes()).unwrap();
    assert_eq!(read_head(&mut s).0, 101);
}
