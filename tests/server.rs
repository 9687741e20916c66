//! The server handle over real sockets: sends from other threads, publish/subscribe,
//! broadcast, backpressure, graceful shutdown, many concurrent connections, stats.

mod common;

use std::io::{Read, Write};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use common::*;
use tungstenite::Message as WsMessage;
use wsrt::{Conn, Handler, Message, SendStatus, Server};

#[test]
fn sends_from_other_threads_and_stale_ids() {
    let srv = TestServer::start(&[]);
    let mut s = raw_ws(srv.addr, "/");
    let id = srv.wait_open();
    let h = srv.handle();
    let senders: Vec<_> = (0..4)
        .map(|t| {
            let h = h.clone();
            std::thread::spawn(move || {
                for i in 0..50 {
                    assert_ne!(h.send_text(id, &format!("{t}:{i}")), SendStatus::Gone);
                }
            })
        })
        .collect();
    for t in senders {
        t.join().unwrap();
    }
    let mut last = [-1i32; 4];
    for _ in 0..200 {
        let (_, op, p) = read_frame(&mut s);
        assert_eq!(op, 1);
        let text = String::from_utf8(p).unwrap();
        let (t, i) = text.split_once(':').unwrap();
        let (t, i): (usize, i32) = (t.parse().unwrap(), i.parse().unwrap());
        assert_eq!(last[t] + 1, i, "per-thread order kept");
        last[t] = i;
    }
    assert!(h.buffered_amount(id).is_some());
    drop(s);
    srv.wait_close();
    assert_eq!(h.send_text(id, "gone"), SendStatus::Gone);
    assert_eq!(h.buffered_amount(id), None);
    assert!(!h.close(id, 1000, ""));
    // A made-up id on a slot that exists is stale, never delivered.
    let other = raw_ws(srv.addr, "/");
    let new_id = srv.wait_open();
    assert_ne!(new_id, id);
    assert_eq!(
        h.send_text(wsrt::ConnId::from_raw(new_id.to_raw() ^ 1), "x"),
        SendStatus::Gone
    );
    drop(other);
}

#[test]
fn publish_reaches_subscribers_on_every_worker_only() {
    let srv = TestServer::start(&[("workers", "3")]);
    let h = srv.handle();
    let mut subs = Vec::new();
    for _ in 0..6 {
        let s = raw_ws(srv.addr, "/");
        let id = srv.wait_open();
        assert!(h.subscribe(id, "news"));
        subs.push(s);
    }
    let mut outsider = raw_ws(srv.addr, "/");
    let outsider_id = srv.wait_open();
    // Subscriptions go through each worker's inbox, in order, before the publish.
    assert!(h.publish("news", Message::Text("extra!")));
    assert_eq!(h.send_text(outsider_id, "direct"), SendStatus::Sent);
    for s in &mut subs {
        assert_eq!(read_frame(s), (true, 1, b"extra!".to_vec()));
    }
    assert_eq!(
        read_frame(&mut outsider),
        (true, 1, b"direct".to_vec()),
        "outsider got no publish"
    );
    assert!(h.broadcast(Message::Binary(&[1, 2, 3])));
    for s in subs.iter_mut().chain(std::iter::once(&mut outsider)) {
        assert_eq!(read_frame(s), (true, 2, vec![1, 2, 3]));
    }
}

/// Subscribes on open to the topic named by the path; publishes every message to it.
struct Chat;
impl Handler for Chat {
    fn on_open(&self, conn: &mut Conn<'_>) {
        let topic = conn.path().to_string();
        conn.subscribe(&topic);
        conn.send_text("joined");
    }
    fn on_message(&self, conn: &mut Conn<'_>, msg: Message<'_>) {
        let topic = conn.path().to_string();
        conn.server().publish(&topic, msg);
    }
}

#[test]
fn subscribe_and_publish_from_inside_callbacks() {
    let server = Server::start(options(&[]), Chat).unwrap();
    let addr = server.local_addr();
    let mut a = client(addr, "/room1");
    let mut b = client(addr, "/room1");
    let mut c = client(addr, "/room2");
    for ws in [&mut a, &mut b, &mut c] {
        assert_eq!(ws.read().unwrap(), WsMessage::text("joined"));
    }
    a.send(WsMessage::text("hi room1")).unwrap();
    assert_eq!(a.read().unwrap(), WsMessage::text("hi room1"));
    assert_eq!(b.read().unwrap(), WsMessage::text("hi room1"));
    c.send(WsMessage::text("room2 only")).unwrap();
    assert_eq!(c.read().unwrap(), WsMessage::text("room2 only"));
    b.send(WsMessage::text("second")).unwrap();
    assert_eq!(
        a.read().unwrap(),
        WsMessage::text("second"),
        "a never saw room2's message"
    );
}

#[test]
fn client_that_never_reads_is_closed_and_memory_stays_bounded() {
    let srv = TestServer::start(&[
        ("max_backpressure", "256KiB"),
        ("backpressure_policy", "close"),
        ("close_timeout", "300ms"),
    ]);
    let s = raw_ws(srv.addr, "/");
    s.set_read_timeout(Some(WAIT)).unwrap();
    let id = srv.wait_open();
    let h = srv.handle();
    let chunk = vec![7u8; 64 * 1024];
    let mut max_buffered = 0;
    let mut statuses = Vec::new();
    for _ in 0..2000 {
        let st = h.send_binary(id, &chunk);
        max_buffered = max_buffered.max(h.buffered_amount(id).unwrap_or(0));
        statuses.push(st);
        if st == SendStatus::Dropped || st == SendStatus::Gone {
            break;
        }
    }
    assert!(
        statuses.contains(&SendStatus::Dropped),
        "{:?}",
        &statuses[statuses.len().saturating_sub(3)..]
    );
    assert!(
        max_buffered <= 256 * 1024 + chunk.len() + 16,
        "queue bounded by max_backpressure + one message, was {max_buffered}"
    );
    let (closed, info) = srv.wait_close();
    assert_eq!(closed, id);
    assert!(info.code == 1008 || info.code == 1006, "{info:?}");
    assert!(srv.handle().stats().backpressure_dropped >= 1);
    drop(s);
}

#[test]
fn drop_policy_keeps_the_connection_and_drain_follows() {
    let srv = TestServer::start(&[
        ("max_backpressure", "128KiB"),
        ("backpressure_policy", "drop"),
    ]);
    let mut s = raw_ws(srv.addr, "/");
    let id = srv.wait_open();
    let h = srv.handle();
    let chunk = vec![1u8; 64 * 1024];
    let mut sent = 0;
    let mut saw_queued = false;
    loop {
        match h.send_binary(id, &chunk) {
            SendStatus::Sent => sent += 1,
            SendStatus::Queued => {
                sent += 1;
                saw_queued = true;
            }
            SendStatus::Dropped => break,
            SendStatus::Gone => panic!("drop policy must keep the connection"),
        }
        assert!(sent < 10_000, "never dropped");
    }
    // Read everything that was accepted; the server then reports the drain.
    for _ in 0..sent {
        let (_, op, p) = read_frame(&mut s);
        assert_eq!((op, p.len()), (2, chunk.len()));
    }
    if saw_queued {
        srv.wait_for(|e| matches!(e, Ev::Drain(d) if *d == id));
    }
    assert_eq!(h.send_text(id, "still here"), SendStatus::Sent);
    assert_eq!(read_frame(&mut s), (true, 1, b"still here".to_vec()));
}

#[test]
fn graceful_shutdown_sends_everything_queued_then_1001() {
    let mut srv = TestServer::start(&[("shutdown_timeout", "5s")]);
    let mut clients: Vec<_> = (0..5).map(|_| raw_ws(srv.addr, "/")).collect();
    let ids: Vec<_> = (0..5).map(|_| srv.wait_open()).collect();
    let h = srv.handle();
    for i in 0..200 {
        for id in &ids {
            assert_ne!(h.send_text(*id, &format!("m{i}")), SendStatus::Gone);
        }
    }
    h.shutdown();
    // Health fails and new upgrades are refused while connections drain.
    for s in &mut clients {
        let mut got = 0;
        loop {
            let (_, op, p) = read_frame(s);
            if op == 8 {
                assert_eq!(&p[..2], &1001u16.to_be_bytes());
                break;
            }
            if p.starts_with(b"m") {
                assert_eq!(p, format!("m{got}").into_bytes(), "in order, none lost");
                got += 1;
            }
        }
        assert_eq!(got, 200, "every message queued before shutdown arrived");
        s.write_all(&close_frame(1001, "")).unwrap();
    }
    srv.server.take().unwrap().join();
    let stats = h.stats();
    assert_eq!(stats.open, 0);
    assert!(
        std::net::TcpStream::connect(srv.addr).is_err(),
        "listener closed"
    );
}

/// Load balancers pre-open connections and send nothing until a request comes. On shutdown
/// those are closed at once (nothing was asked, nothing is lost) instead of holding the
/// shutdown until handshake_timeout; a client halfway through its request still gets a 503.
#[test]
fn shutdown_closes_silent_connections_and_answers_half_sent_requests() {
    let mut srv = TestServer::start(&[("handshake_timeout", "60s"), ("shutdown_timeout", "60s")]);
    let mut silent: Vec<_> = (0..20).map(|_| tcp(srv.addr)).collect();
    let mut half = tcp(srv.addr);
    let request = upgrade_request("/", "");
    let (first, rest) = request.split_at(20);
    half.write_all(first.as_bytes()).unwrap();
    // Every connection is in the server's hands before shutdown starts.
    let h = srv.handle();
    let deadline = std::time::Instant::now() + WAIT;
    while h.stats().accepted < 21 {
        assert!(std::time::Instant::now() < deadline, "connections accepted");
        std::thread::yield_now();
    }
    h.shutdown();
    for s in &mut silent {
        assert_eof(s); // bounded by WAIT (the read timeout), far below handshake_timeout
    }
    half.write_all(rest.as_bytes()).unwrap();
    let (status, head) = read_head(&mut half);
    assert_eq!(status, 503, "{head}");
    drop(half); // the refused connection lingers until its client closes
    let server = srv.server.take().unwrap();
    let (done, joined) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        server.join();
        let _ = done.send(());
    });
    joined
        .recv_timeout(WAIT)
        .expect("shutdown ends once every connection is answered, not at handshake_timeout");
}

#[test]
fn health_check_fails_during_drain_delay() {
    let srv = TestServer::start(&[("drain_delay", "2s"), ("health_path", "/healthz")]);
    let mut s = raw_ws(srv.addr, "/");
    srv.wait_open();
    srv.handle().shutdown();
    let (status, _, body) = http(srv.addr, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!((status, body.as_str()), (503, "shutting down\n"));
    assert_eq!(http(srv.addr, &upgrade_request("/", "")).0, 503);
    // The existing connection is still served during the delay.
    s.write_all(&frame(true, 1, b"still open", true)).unwrap();
    assert_eq!(read_frame(&mut s), (true, 1, b"still open".to_vec()));
}

#[test]
fn a_thousand_concurrent_connections_echo() {
    let _ = wsrt::os::raise_fd_limit();
    let srv = TestServer::start(&[("workers", "2")]);
    let addr = srv.addr;
    let ok = Arc::new(AtomicUsize::new(0));
    let threads: Vec<_> = (0..10)
        .map(|t| {
            let ok = ok.clone();
            std::thread::spawn(move || {
                let mut socks: Vec<_> = (0..100).map(|_| raw_ws(addr, "/")).collect();
                for (i, s) in socks.iter_mut().enumerate() {
                    s.write_all(&frame(true, 1, format!("{t}-{i}").as_bytes(), true))
                        .unwrap();
                }
                for (i, s) in socks.iter_mut().enumerate() {
                    assert_eq!(read_frame(s), (true, 1, format!("{t}-{i}").into_bytes()));
                    ok.fetch_add(1, Ordering::Relaxed);
                }
                socks
            })
        })
        .collect();
    let socks: Vec<_> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    assert_eq!(ok.load(Ordering::Relaxed), 1000);
    let stats = srv.handle().stats();
    assert_eq!(stats.open, 1000);
    assert!(stats.messages_in >= 1000 && stats.messages_out >= 1000);
    drop(socks);
    for _ in 0..1000 {
        srv.wait_close();
    }
    assert_eq!(srv.handle().stats().open, 0);
}

#[test]
fn adopted_socket_is_upgraded() {
    let srv = TestServer::start(&[]);
    // A host's own listener accepts and reads the request, then hands both over.
    let host = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let host_addr = host.local_addr().unwrap();
    let h = srv.handle();
    let t = std::thread::spawn(move || {
        let (mut sock, _) = host.accept().unwrap();
        let mut buf = vec![0u8; 4096];
        let n = sock.read(&mut buf).unwrap();
        h.adopt(sock, &buf[..n]).unwrap();
    });
    let mut s = tcp(host_addr);
    let mut bytes = upgrade_request("/", "").into_bytes();
    bytes.extend(frame(true, 1, b"handed over", true));
    s.write_all(&bytes).unwrap();
    t.join().unwrap();
    assert_eq!(read_head(&mut s).0, 101);
    assert_eq!(read_frame(&mut s), (true, 1, b"handed over".to_vec()));
}

#[test]
fn ipv6_listener_works() {
    if std::net::TcpListener::bind("[::1]:0").is_err() {
        eprintln!("no IPv6 loopback on this machine; skipping");
        return;
    }
    let mut o = options(&[]);
    o.set("listen", "[::1]:0").unwrap();
    struct E;
    impl Handler for E {
        fn on_message(&self, conn: &mut Conn<'_>, msg: Message<'_>) {
            conn.send(msg);
        }
    }
    let server = Server::start(o, E).unwrap();
    let mut ws = client(server.local_addr(), "/");
    ws.send(WsMessage::text("v6")).unwrap();
    assert_eq!(ws.read().unwrap(), WsMessage::text("v6"));
}

/// `/sub` subscribes to "room" (the first one also takes direct messages); `/pub` sends
/// "p:N" (published to the room) and "d:N" (sent to the first subscriber only).
struct Burst {
    direct_to: std::sync::Mutex<Option<wsrt::ConnId>>,
}
impl Handler for Burst {
    fn on_open(&self, conn: &mut Conn<'_>) {
        if conn.path() == "/sub" {
            conn.subscribe("room");
            self.direct_to.lock().unwrap().get_or_insert(conn.id());
            conn.send_text("joined");
        }
    }
    fn on_message(&self, conn: &mut Conn<'_>, msg: Message<'_>) {
        let Message::Text(text) = msg else { return };
        if text.starts_with("p:") {
            conn.server().publish("room", msg);
        } else if let Some(id) = *self.direct_to.lock().unwrap() {
            conn.server().send_text(id, text);
        }
    }
}

/// A burst of publishes read in one go is written to each subscriber together (one write
/// per subscriber); every message still arrives whole and in order, a direct message sent
/// in between stays between, and the counters count messages, not writes.
#[test]
fn a_burst_of_publishes_arrives_whole_and_in_order() {
    for io_uring in ["on", "off"] {
        a_burst_of_publishes_arrives_whole_and_in_order_with(io_uring);
    }
}

fn a_burst_of_publishes_arrives_whole_and_in_order_with(io_uring: &str) {
    let burst = Burst {
        direct_to: std::sync::Mutex::new(None),
    };
    let o = options(&[("workers", "1"), ("io_uring", io_uring)]);
    let server = Server::start(o, burst).unwrap();
    let addr = server.local_addr();
    let mut subs: Vec<_> = (0..4).map(|_| client(addr, "/sub")).collect();
    for ws in &mut subs {
        assert_eq!(ws.read().unwrap(), WsMessage::text("joined"));
    }
    let sent: Vec<String> = (0..300)
        .map(|i| match i % 50 {
            49 => format!("d:{i}"),
            _ => format!("p:{i} {}", "x".repeat(i % 7 * 40)),
        })
        .collect();
    let mut wire = Vec::new();
    for text in &sent {
        wire.extend_from_slice(&frame(true, 1, text.as_bytes(), true));
    }
    let mut publisher = raw_ws(addr, "/pub");
    publisher.write_all(&wire).unwrap();
    for (n, ws) in subs.iter_mut().enumerate() {
        let expected = sent.iter().filter(|t| n == 0 || t.starts_with("p:"));
        for text in expected {
            assert_eq!(
                ws.read().unwrap(),
                WsMessage::text(text.as_str()),
                "sub {n}"
            );
        }
    }
    let published = sent.iter().filter(|t| t.starts_with("p:")).count() as u64;
    let direct = sent.len() as u64 - published;
    let stats = server.handle().stats();
    assert_eq!(
        stats.messages_out,
        4 + 4 * published + direct,
        "4 joined, each publish to 4 subscribers, the direct messages"
    );
    assert_write_path(io_uring, &stats);
}

/// The fan-out writes went through io_uring exactly when the option and the kernel allow it.
/// CI machines allow it, so there the io_uring path is never skipped unnoticed.
fn assert_write_path(io_uring: &str, stats: &wsrt::Stats) {
    let usable = wsrt::os::io_uring_usable();
    assert!(
        usable || std::env::var_os("CI").is_none(),
        "io_uring is refused on this CI machine: its fan-out path would go untested"
    );
    if io_uring == "on" && usable {
        assert!(
            stats.batched_writes > 0,
            "io_uring on, but no batched write"
        );
    } else {
        assert_eq!(stats.batched_writes, 0, "io_uring {io_uring}");
    }
}

/// Bursts to a subscriber that does not read: the coalesced writes fill its socket, the rest
/// of a run (and every run after it) waits in its queue, and once it reads it gets every
/// message whole and in order, while a subscriber that reads got them all meanwhile.
#[test]
fn bursts_to_a_subscriber_that_does_not_read_are_queued_whole_and_in_order() {
    for io_uring in ["on", "off"] {
        bursts_to_a_subscriber_that_does_not_read_with(io_uring);
    }
}

fn bursts_to_a_subscriber_that_does_not_read_with(io_uring: &str) {
    let burst = Burst {
        direct_to: std::sync::Mutex::new(None),
    };
    let o = options(&[
        ("workers", "1"),
        ("max_backpressure", "64MiB"),
        ("io_uring", io_uring),
    ]);
    let server = Server::start(o, burst).unwrap();
    let addr = server.local_addr();
    let mut subs: Vec<_> = (0..2).map(|_| client(addr, "/sub")).collect();
    for ws in &mut subs {
        assert_eq!(ws.read().unwrap(), WsMessage::text("joined"));
    }
    // 16 MB in all: far more than loopback's socket buffers hold for the idle subscriber.
    let text = |i: usize| {
        format!(
            "p:{i:05}:{}",
            char::from(b'a' + (i % 26) as u8).to_string().repeat(8000)
        )
    };
    const N: usize = 2000;
    let mut wire = Vec::new();
    for i in 0..N {
        wire.extend_from_slice(&frame(true, 1, text(i).as_bytes(), true));
    }
    let mut publisher = raw_ws(addr, "/pub");
    let mut idle = subs.pop().unwrap();
    let mut reader = subs.pop().unwrap();
    let reading = std::thread::spawn(move || {
        for i in 0..N {
            assert_eq!(reader.read().unwrap(), WsMessage::text(text(i)), "reader");
        }
    });
    publisher.write_all(&wire).unwrap();
    reading.join().unwrap();
    let stats = server.handle().stats();
    assert!(
        stats.backpressure_queued >= 1,
        "the idle subscriber's queue never filled: nothing was tested"
    );
    for i in 0..N {
        assert_eq!(
            idle.read().unwrap(),
            WsMessage::text(text(i)),
            "idle subscriber"
        );
    }
    let stats = server.handle().stats();
    assert_eq!(stats.messages_out, 2 + 2 * N as u64);
    assert_eq!(stats.backpressure_dropped, 0);
    assert_write_path(io_uring, &stats);
}
