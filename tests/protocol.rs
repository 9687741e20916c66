//! RFC 6455 behaviour over real sockets on 127.0.0.1: echo, fragmentation, control frames,
//! protocol errors with their close codes, limits, close handshake, keepalive.

mod common;

use std::io::Write;

use common::*;
use tungstenite::Message as WsMessage;

#[test]
fn text_and_binary_echo_with_an_independent_client() {
    let srv = TestServer::start(&[]);
    let mut ws = client(srv.addr, "/chat");
    ws.send(WsMessage::text("héllo wörld")).unwrap();
    assert_eq!(ws.read().unwrap(), WsMessage::text("héllo wörld"));
    ws.send(WsMessage::binary(vec![0u8, 1, 2, 255])).unwrap();
    assert_eq!(ws.read().unwrap(), WsMessage::binary(vec![0u8, 1, 2, 255]));
    ws.send(WsMessage::text("")).unwrap();
    assert_eq!(ws.read().unwrap(), WsMessage::text(""));
    srv.wait_open();
}

#[test]
fn large_messages_up_to_16_mib_echo_intact() {
    let srv = TestServer::start(&[]);
    let mut ws = client(srv.addr, "/");
    for size in [125, 126, 65_535, 65_536, 1 << 20, 16 << 20] {
        let data: Vec<u8> = (0..size).map(|i| (i * 31 % 251) as u8).collect();
        ws.send(WsMessage::binary(data.clone())).unwrap();
        match ws.read().unwrap() {
            WsMessage::Binary(b) => assert!(b[..] == data[..], "size {size} differs"),
            other => panic!("size {size}: unexpected {other:?}"),
        }
    }
    let text = "✓".repeat(1 << 20);
    ws.send(WsMessage::text(text.clone())).unwrap();
    assert_eq!(ws.read().unwrap(), WsMessage::text(text));
}

#[test]
fn fragmented_message_with_ping_between_fragments() {
    let srv = TestServer::start(&[]);
    let mut s = raw_ws(srv.addr, "/");
    let mut bytes = frame(false, 1, "frag".as_bytes(), true);
    bytes.extend(frame(true, 9, b"are you there", true));
    bytes.extend(frame(false, 0, "men".as_bytes(), true));
    // A 4-byte character split across two fragments.
    let emoji = "😀".as_bytes();
    let mut p = b"ted ".to_vec();
    p.extend_from_slice(&emoji[..2]);
    bytes.extend(frame(false, 0, &p, true));
    bytes.extend(frame(true, 0, &emoji[2..], true));
    s.write_all(&bytes).unwrap();
    assert_eq!(
        read_frame(&mut s),
        (true, 10, b"are you there".to_vec()),
        "pong first"
    );
    assert_eq!(
        read_frame(&mut s),
        (true, 1, "fragmented 😀".as_bytes().to_vec())
    );
}

#[test]
fn handshake_and_frames_one_byte_at_a_time() {
    let srv = TestServer::start(&[]);
    let mut s = tcp(srv.addr);
    let mut bytes = upgrade_request("/slow", "").into_bytes();
    bytes.extend(frame(true, 1, b"tiny pieces", true));
    for b in &bytes {
        s.write_all(&[*b]).unwrap();
    }
    let (status, _) = read_head(&mut s);
    assert_eq!(status, 101);
    assert_eq!(read_frame(&mut s), (true, 1, b"tiny pieces".to_vec()));
}

#[test]
fn frames_sent_with_the_request_are_kept() {
    let srv = TestServer::start(&[]);
    let mut s = tcp(srv.addr);
    let mut bytes = upgrade_request("/", "").into_bytes();
    bytes.extend(frame(true, 1, b"early", true));
    bytes.extend(frame(true, 2, b"bird", true));
    s.write_all(&bytes).unwrap();
    assert_eq!(read_head(&mut s).0, 101);
    assert_eq!(read_frame(&mut s), (true, 1, b"early".to_vec()));
    assert_eq!(read_frame(&mut s), (true, 2, b"bird".to_vec()));
}

fn expect_close_code(bytes: &[u8], code: u16, opts: &[(&str, &str)]) {
    let srv = TestServer::start(opts);
    let mut s = raw_ws(srv.addr, "/");
    s.write_all(bytes).unwrap();
    assert_eq!(read_until_close(&mut s), Some(code));
    let (_, info) = srv.wait_close();
    assert_eq!(info.code, code);
}

#[test]
fn unmasked_frame_is_refused_with_1002() {
    expect_close_code(&frame(true, 1, b"naked", false), 1002, &[]);
}

#[test]
fn reserved_bits_and_unknown_opcodes_are_refused_with_1002() {
    let mut f = frame(true, 1, b"x", true);
    f[0] |= 0x40; // RSV1 without an extension
    expect_close_code(&f, 1002, &[]);
    expect_close_code(&frame(true, 3, b"x", true), 1002, &[]);
    expect_close_code(&frame(true, 0xB, b"x", true), 1002, &[]);
}

#[test]
fn control_frame_rules_are_enforced() {
    expect_close_code(&frame(true, 9, &[0u8; 126], true), 1002, &[]);
    expect_close_code(&frame(false, 9, b"frag", true), 1002, &[]);
    expect_close_code(&frame(true, 0, b"no start", true), 1002, &[]);
    let mut two_starts = frame(false, 1, b"a", true);
    two_starts.extend(frame(true, 1, b"b", true));
    expect_close_code(&two_starts, 1002, &[]);
}

#[test]
fn invalid_utf8_is_refused_with_1007_even_mid_frame() {
    expect_close_code(&frame(true, 1, &[b'a', 0xff, b'b'], true), 1007, &[]);
    // Fail fast: only the first half of a frame has arrived, and it is already invalid.
    let srv = TestServer::start(&[]);
    let mut s = raw_ws(srv.addr, "/");
    let f = frame(
        true,
        1,
        &[b'o', b'k', 0xC0, 0xAF, b'x', b'y', b'z', b'w'],
        true,
    );
    s.write_all(&f[..f.len() - 3]).unwrap();
    assert_eq!(read_until_close(&mut s), Some(1007));
    // Invalid close reason.
    let mut p = 1000u16.to_be_bytes().to_vec();
    p.push(0xff);
    expect_close_code(&frame(true, 8, &p, true), 1007, &[]);
}

#[test]
fn invalid_close_codes_are_refused_with_1002() {
    for code in [0u16, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000] {
        expect_close_code(&close_frame(code, ""), 1002, &[]);
    }
    expect_close_code(&frame(true, 8, &[3], true), 1002, &[]);
}

#[test]
fn oversize_messages_are_refused_with_1009() {
    let opts = [("max_message_size", "1KiB"), ("max_frame_size", "1KiB")];
    expect_close_code(&frame(true, 2, &[0u8; 1025], true), 1009, &opts);
    let mut pieces = frame(false, 2, &[0u8; 600], true);
    pieces.extend(frame(true, 0, &[0u8; 600], true));
    expect_close_code(&pieces, 1009, &opts);
}

#[test]
fn client_initiated_close_handshake() {
    let srv = TestServer::start(&[]);
    let mut s = raw_ws(srv.addr, "/");
    s.write_all(&close_frame(4001, "bye")).unwrap();
    assert_eq!(read_until_close(&mut s), Some(4001));
    assert_eof(&mut s);
    let (_, info) = srv.wait_close();
    assert_eq!(
        (info.code, info.reason.as_str(), info.clean),
        (4001, "bye", true)
    );
}

#[test]
fn server_initiated_close_handshake_after_queued_messages() {
    let srv = TestServer::start(&[]);
    let mut s = raw_ws(srv.addr, "/");
    let id = srv.wait_open();
    let h = srv.handle();
    assert_eq!(h.send_text(id, "last words"), wsrt::SendStatus::Sent);
    assert!(h.close(id, 4000, "done"));
    assert_eq!(read_frame(&mut s), (true, 1, b"last words".to_vec()));
    let (_, op, p) = read_frame(&mut s);
    assert_eq!((op, &p[..2]), (8, &4000u16.to_be_bytes()[..]));
    assert_eq!(&p[2..], b"done");
    assert_eq!(h.send_text(id, "too late"), wsrt::SendStatus::Gone);
    s.write_all(&close_frame(4000, "")).unwrap();
    assert_eof(&mut s);
    let (_, info) = srv.wait_close();
    assert_eq!((info.code, info.clean), (4000, true));
    assert_eq!(h.send_text(id, "stale"), wsrt::SendStatus::Gone);
}

#[test]
fn close_timeout_drops_a_client_that_never_answers() {
    let srv = TestServer::start(&[("close_timeout", "200ms")]);
    let mut s = raw_ws(srv.addr, "/");
    let id = srv.wait_open();
    srv.handle().close(id, 1000, "");
    assert_eq!(read_until_close(&mut s), Some(1000));
    assert_eof(&mut s);
    let (_, info) = srv.wait_close();
    assert!(!info.clean);
}

#[test]
fn client_pings_get_pongs_and_server_pings_are_sent() {
    let srv = TestServer::start(&[("ping_interval", "100ms"), ("idle_timeout", "0")]);
    let mut s = raw_ws(srv.addr, "/");
    s.write_all(&frame(true, 9, b"hi", true)).unwrap();
    assert_eq!(read_frame(&mut s), (true, 10, b"hi".to_vec()));
    let (_, op, _) = read_frame(&mut s);
    assert_eq!(op, 9, "server ping after ping_interval");
    s.write_all(&frame(true, 10, b"pong!", true)).unwrap();
    srv.wait_for(|e| matches!(e, Ev::Pong(_, p) if p == b"pong!"));
}

#[test]
fn idle_timeout_closes_a_silent_client() {
    let srv = TestServer::start(&[("ping_interval", "0"), ("idle_timeout", "300ms")]);
    let mut s = raw_ws(srv.addr, "/");
    assert_eq!(read_until_close(&mut s), Some(1001));
    s.write_all(&close_frame(1001, "")).unwrap();
    let (_, info) = srv.wait_close();
    assert_eq!(info.code, 1001);
    assert_eq!(info.reason, "idle timeout");
}

#[test]
fn abrupt_disconnect_reports_1006() {
    let srv = TestServer::start(&[]);
    let s = raw_ws(srv.addr, "/");
    srv.wait_open();
    drop(s);
    let (_, info) = srv.wait_close();
    assert_eq!((info.code, info.clean), (1006, false));
}
