//! PROXY protocol and forwarding headers over real sockets: the client address a proxy
//! reports becomes the connection's address, and only trusted proxies are believed.

mod common;

use std::io::Write;

use common::*;
use wsrt::proxy_protocol::encode_v2;

fn opened_remote(srv: &TestServer) -> String {
    match srv.wait_for(|e| matches!(e, Ev::Open(..))) {
        Ev::Open(_, remote) => remote,
        _ => unreachable!(),
    }
}

#[test]
fn v1_header_sets_the_client_address() {
    let srv = TestServer::start(&[("proxy_protocol", "v1"), ("trusted_proxies", "127.0.0.0/8")]);
    let mut s = tcp(srv.addr);
    let mut bytes = b"PROXY TCP4 203.0.113.7 10.0.0.1 56324 8080\r\n".to_vec();
    bytes.extend(upgrade_request("/", "").into_bytes());
    bytes.extend(frame(true, 1, b"through the proxy", true));
    s.write_all(&bytes).unwrap();
    assert_eq!(read_head(&mut s).0, 101);
    assert_eq!(read_frame(&mut s), (true, 1, b"through the proxy".to_vec()));
    assert_eq!(opened_remote(&srv), "203.0.113.7:56324");
}

#[test]
fn v2_header_split_over_writes_with_tlvs_and_crc() {
    let srv = TestServer::start(&[("proxy_protocol", "any"), ("trusted_proxies", "127.0.0.1")]);
    let mut s = tcp(srv.addr);
    let header = encode_v2(
        "[2001:db8::5]:4242".parse().unwrap(),
        "[::1]:443".parse().unwrap(),
        &[(0x02, b"example.com"), (0xE1, b"vendor-tlv")],
        true,
    );
    let mut bytes = header;
    bytes.extend(upgrade_request("/", "").into_bytes());
    for piece in bytes.chunks(7) {
        s.write_all(piece).unwrap();
    }
    assert_eq!(read_head(&mut s).0, 101);
    assert_eq!(opened_remote(&srv), "[2001:db8::5]:4242");
}

#[test]
fn v2_local_uses_the_socket_address_and_health_checks_work() {
    let srv = TestServer::start(&[("proxy_protocol", "v2"), ("trusted_proxies", "127.0.0.1")]);
    let mut local = b"\r\n\r\n\0\r\nQUIT\n\x20\x00\x00\x00".to_vec();
    local.extend_from_slice(b"GET /healthz HTTP/1.1\r\nHost: lb\r\n\r\n");
    let (status, _, body) = http(srv.addr, std::str::from_utf8(&local).unwrap());
    assert_eq!((status, body.as_str()), (200, "ok\n"));
    let mut s = tcp(srv.addr);
    let mut bytes = b"\r\n\r\n\0\r\nQUIT\n\x20\x00\x00\x00".to_vec();
    bytes.extend(upgrade_request("/", "").into_bytes());
    s.write_all(&bytes).unwrap();
    assert_eq!(read_head(&mut s).0, 101);
    assert!(opened_remote(&srv).starts_with("127.0.0.1:"));
}

#[test]
fn missing_header_is_refused_with_the_load_balancer_hint() {
    let srv = TestServer::start(&[("proxy_protocol", "v1"), ("trusted_proxies", "127.0.0.1")]);
    let (status, _, body) = http(srv.addr, &upgrade_request("/", ""));
    assert_eq!(status, 400);
    assert!(
        body.contains(
            "expected a PROXY protocol header — is proxy protocol enabled on the load balancer?"
        ),
        "{body}"
    );
    assert_eq!(srv.handle().stats().rejected("proxy_protocol"), 1);
}

#[test]
fn header_from_an_untrusted_address_is_refused() {
    let srv = TestServer::start(&[("proxy_protocol", "v1"), ("trusted_proxies", "10.0.0.0/8")]);
    let mut req = "PROXY TCP4 203.0.113.7 10.0.0.1 56324 8080\r\n".to_string();
    req.push_str(&upgrade_request("/", ""));
    let (status, _, body) = http(srv.addr, &req);
    assert_eq!(status, 400);
    assert!(body.contains("untrusted"), "{body}");
}

#[test]
fn a_second_header_names_the_double_configuration() {
    let srv = TestServer::start(&[("proxy_protocol", "v1"), ("trusted_proxies", "127.0.0.1")]);
    let mut req = "PROXY TCP4 203.0.113.7 10.0.0.1 56324 8080\r\n".repeat(2);
    req.push_str(&upgrade_request("/", ""));
    let (status, _, body) = http(srv.addr, &req);
    assert_eq!(status, 400);
    assert!(body.contains("enabled twice"), "{body}");
}

#[test]
fn header_deadline_applies_until_the_header_is_complete() {
    let srv = TestServer::start(&[
        ("proxy_protocol", "v1"),
        ("trusted_proxies", "127.0.0.1"),
        ("proxy_header_timeout", "200ms"),
    ]);
    let mut s = tcp(srv.addr);
    s.write_all(b"PROXY TCP4 203.0.113.7").unwrap();
    assert_eof(&mut s);
    assert_eq!(srv.handle().stats().rejected("handshake_timeout"), 1);
}

#[test]
fn forwarding_headers_only_from_trusted_proxies() {
    let srv = TestServer::start(&[("trusted_proxies", "127.0.0.1")]);
    let mut s = tcp(srv.addr);
    let xff = "X-Forwarded-For: 198.51.100.1, 203.0.113.50\r\n";
    s.write_all(upgrade_request("/", xff).as_bytes()).unwrap();
    assert_eq!(read_head(&mut s).0, 101);
    assert!(opened_remote(&srv).starts_with("203.0.113.50:"));

    let srv = TestServer::start(&[("trusted_proxies", "10.0.0.0/8")]);
    let mut s = tcp(srv.addr);
    s.write_all(upgrade_request("/", xff).as_bytes()).unwrap();
    assert_eq!(read_head(&mut s).0, 101);
    assert!(
        opened_remote(&srv).starts_with("127.0.0.1:"),
        "spoofed header ignored"
    );

    // The proxy sets X-Forwarded-For; a client-sent Forwarded header must not win.
    let srv = TestServer::start(&[("trusted_proxies", "127.0.0.1")]);
    let mut s = tcp(srv.addr);
    let both = "Forwarded: for=192.0.2.66\r\nX-Forwarded-For: 203.0.113.51\r\n";
    s.write_all(upgrade_request("/", both).as_bytes()).unwrap();
    assert_eq!(read_head(&mut s).0, 101);
    assert!(
        opened_remote(&srv).starts_with("203.0.113.51:"),
        "forwarded_header names the one to read"
    );

    let srv = TestServer::start(&[
        ("trusted_proxies", "127.0.0.1"),
        ("forwarded_header", "forwarded"),
    ]);
    let mut s = tcp(srv.addr);
    s.write_all(upgrade_request("/", both).as_bytes()).unwrap();
    assert_eq!(read_head(&mut s).0, 101);
    assert!(opened_remote(&srv).starts_with("192.0.2.66:"));

    let srv = TestServer::start(&[]);
    let mut s = tcp(srv.addr);
    s.write_all(upgrade_request("/", "Forwarded: for=192.0.2.60\r\n").as_bytes())
        .unwrap();
    assert_eq!(read_head(&mut s).0, 101);
    assert!(
        opened_remote(&srv).starts_with("127.0.0.1:"),
        "nobody trusted by default"
    );
}

#[test]
fn proxy_protocol_without_trusted_proxies_is_a_startup_error() {
    let mut o = options(&[("proxy_protocol", "v1")]);
    o.set("trusted_proxies", "").unwrap();
    struct H;
    impl wsrt::Handler for H {}
    let err = wsrt::Server::start(o, H).err().expect("refused");
    assert!(err.to_string().contains("trusted_proxies"), "{err}");
}
