//! The event queue over real sockets: a host thread drains events and echoes through the
//! handle; the event fd is readable exactly while events are pending; a host that stops
//! polling pauses reading instead of growing memory, and everything resumes afterwards.

mod common;

use std::io::Write;
use std::os::fd::RawFd;
use std::time::Duration;

use common::*;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use wsrt::event_queue::{EventQueue, QueuedEvent};
use wsrt::{Message, SendStatus, Server};

fn start(capacity: usize, pairs: &[(&str, &str)]) -> (Server, std::sync::Arc<EventQueue>) {
    let q = EventQueue::new(capacity, false).unwrap();
    let server = Server::start(options(pairs), q.handler()).unwrap();
    q.attach(server.handle());
    (server, q)
}

fn readable(fd: RawFd, timeout: Duration) -> bool {
    let mut poll = Poll::new().unwrap();
    poll.registry()
        .register(&mut SourceFd(&fd), Token(0), Interest::READABLE)
        .unwrap();
    let mut events = Events::with_capacity(1);
    poll.poll(&mut events, Some(timeout)).unwrap();
    !events.is_empty()
}

#[test]
fn poll_echo_and_event_fd_semantics() {
    let (server, q) = start(1000, &[]);
    assert!(!readable(q.fd(), Duration::ZERO), "no events yet");
    let mut s = raw_ws(server.local_addr(), "/q?x=1");
    assert!(readable(q.fd(), WAIT), "open event makes the fd readable");
    let mut batch = Vec::new();
    assert_eq!(q.poll(&mut batch, 10, Some(WAIT)), 1);
    let id = match &batch[0] {
        QueuedEvent::Open(open) => {
            assert_eq!(
                (open.path.as_str(), open.query.as_deref()),
                ("/q", Some("x=1"))
            );
            assert!(open
                .headers
                .iter()
                .any(|(k, _)| k.eq_ignore_ascii_case("sec-websocket-key")));
            open.id
        }
        _ => panic!("expected open"),
    };
    assert!(!readable(q.fd(), Duration::ZERO), "drained: not readable");
    s.write_all(&frame(true, 1, b"via the queue", true))
        .unwrap();
    batch.clear();
    assert_eq!(q.poll(&mut batch, 10, Some(WAIT)), 1);
    match &batch[0] {
        QueuedEvent::Message {
            id: mid,
            text,
            data,
        } => {
            assert_eq!(
                (*mid, *text, data.as_slice()),
                (id, true, &b"via the queue"[..])
            );
            server.handle().send(id, Message::Text("via the queue"));
        }
        _ => panic!("expected message"),
    }
    assert_eq!(read_frame(&mut s), (true, 1, b"via the queue".to_vec()));
    // Recycled buffers carry nothing of their last message into the next.
    q.recycle(&mut batch);
    assert!(batch.is_empty());
    s.write_all(&frame(true, 2, b"ab", true)).unwrap();
    assert_eq!(q.poll(&mut batch, 10, Some(WAIT)), 1);
    assert!(matches!(&batch[0], QueuedEvent::Message { data, .. } if data == b"ab"));
    batch.clear();
    assert_eq!(
        q.poll(&mut batch, 10, Some(Duration::ZERO)),
        0,
        "non-blocking poll"
    );
    drop(s);
    assert_eq!(q.poll(&mut batch, 10, Some(WAIT)), 1);
    assert!(matches!(&batch[0], QueuedEvent::Close { info, .. } if info.code == 1006));
}

#[test]
fn a_host_on_the_event_fd_is_woken_for_every_batch_and_never_spins() {
    let (server, q) = start(1000, &[("workers", "1")]);
    let fd = q.fd();
    // Each client sends a message and waits for its echo, from its own thread, while the
    // host waits on the fd only (like echo_epoll.c): thousands of batches, so the worker's
    // signals race with the host's polls.
    const N: usize = 2000;
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let mut s = raw_ws(server.local_addr(), "/");
            std::thread::spawn(move || {
                for i in 0..N as u32 {
                    s.write_all(&frame(true, 2, &i.to_be_bytes(), true))
                        .unwrap();
                    assert_eq!(read_frame(&mut s), (true, 2, i.to_be_bytes().to_vec()));
                }
                s // kept open until the end: a close would be an event
            })
        })
        .collect();
    let h = server.handle();
    let (mut echoed, mut empty_wakeups, mut wakeups) = (0, 0, 0);
    let mut batch = Vec::new();
    while echoed < clients.len() * N {
        assert!(readable(fd, WAIT), "no wake-up within {WAIT:?} at {echoed}");
        wakeups += 1;
        let mut got_any = false;
        loop {
            batch.clear();
            if q.poll(&mut batch, 256, Some(Duration::ZERO)) == 0 {
                break;
            }
            got_any = true;
            for ev in &batch {
                if let QueuedEvent::Message { id, data, .. } = ev {
                    h.send_binary(*id, data);
                    echoed += 1;
                }
            }
        }
        if !got_any {
            empty_wakeups += 1;
        }
    }
    let _open: Vec<_> = clients.into_iter().map(|c| c.join().unwrap()).collect();
    // A signal that landed after the host cleared the fd may wake it once with nothing
    // queued; the poll that finds nothing clears it, so wake-ups with nothing to do stay
    // rare and the fd ends unreadable (a host would otherwise spin on it).
    assert!(
        empty_wakeups * 4 <= wakeups,
        "{empty_wakeups} of {wakeups} wake-ups found nothing"
    );
    if readable(fd, Duration::ZERO) {
        assert_eq!(q.poll(&mut batch, 256, Some(Duration::ZERO)), 0);
    }
    assert!(
        !readable(fd, Duration::ZERO),
        "readable with nothing queued"
    );
}

#[test]
fn a_host_that_stops_polling_pauses_reading_then_everything_resumes() {
    let (server, q) = start(16, &[("workers", "1")]);
    let mut s = raw_ws(server.local_addr(), "/");
    let mut batch = Vec::new();
    assert_eq!(q.poll(&mut batch, 1, Some(WAIT)), 1); // open
                                                      // The client sends far more than the queue holds; the host does not poll.
    let total = 5000;
    let payload = |i: usize| format!("{i:06}{}", "x".repeat(1018)).into_bytes();
    let mut bytes = Vec::new();
    for i in 0..total {
        bytes.extend(frame(true, 2, &payload(i), true));
    }
    let writer = {
        let mut s2 = s.try_clone().unwrap();
        std::thread::spawn(move || s2.write_all(&bytes).unwrap())
    };
    // No event marks the pause, so wait (bounded) for the flag the workers obey.
    let deadline = std::time::Instant::now() + WAIT;
    while !q.is_paused() {
        assert!(std::time::Instant::now() < deadline, "reading never paused");
        std::thread::sleep(Duration::from_millis(5));
    }
    // At most one read buffer (64 KiB = 64 messages) beyond the capacity got in.
    assert!(
        q.len() <= 16 + 64 + 1,
        "queue held {} events while paused",
        q.len()
    );
    // Poll everything: reading resumes and every message arrives once, in order.
    let mut seen = 0;
    while seen < total {
        batch.clear();
        assert!(q.poll(&mut batch, 64, Some(WAIT)) > 0, "stalled at {seen}");
        for ev in &batch {
            if let QueuedEvent::Message { data, .. } = ev {
                assert!(*data == payload(seen), "message {seen} out of order");
                seen += 1;
            }
        }
    }
    writer.join().unwrap();
    s.write_all(&close_frame(1000, "")).unwrap();
    assert_eq!(read_until_close(&mut s), Some(1000));
}

/// Poll until `n` events matching `pick` arrived; returns what `pick` extracted, in order.
fn poll_for<T>(
    q: &EventQueue,
    n: usize,
    mut pick: impl FnMut(&QueuedEvent) -> Option<T>,
) -> Vec<T> {
    let mut got = Vec::new();
    let mut batch = Vec::new();
    while got.len() < n {
        batch.clear();
        assert!(
            q.poll(&mut batch, 64, Some(WAIT)) > 0,
            "events within {WAIT:?}"
        );
        got.extend(batch.iter().filter_map(&mut pick));
    }
    got
}

#[test]
fn corked_replies_are_never_stranded_and_keep_their_order_with_commands() {
    let (server, q) = start(1000, &[("workers", "2")]);
    let h = server.handle();
    let mut clients: Vec<_> = (0..6).map(|_| raw_ws(server.local_addr(), "/")).collect();
    let ids = poll_for(&q, clients.len(), |ev| match ev {
        QueuedEvent::Open(open) => Some(open.id),
        _ => None,
    });
    // This thread just received a batch, so its sends are corked; it never polls again
    // before reading the replies, like a host that sends and then blocks elsewhere.
    for id in &ids {
        h.send_text(*id, "corked");
        h.send_binary(*id, b"too");
    }
    for s in &mut clients {
        assert_eq!(read_frame(s), (true, 1, b"corked".to_vec()));
        assert_eq!(read_frame(s), (true, 2, b"too".to_vec()));
    }
    // Corked again (a batch of messages): a command after corked sends comes after them.
    for s in &mut clients {
        s.write_all(&frame(true, 1, b"bye?", true)).unwrap();
    }
    let from = poll_for(&q, clients.len(), |ev| match ev {
        QueuedEvent::Message { id, .. } => Some(*id),
        _ => None,
    });
    for id in &from {
        h.send_text(*id, "last words");
        assert!(h.close(*id, 1000, "bye"));
    }
    for s in &mut clients {
        assert_eq!(read_frame(s), (true, 1, b"last words".to_vec()));
        let (_, op, payload) = read_frame(s);
        assert_eq!((op, &payload[..2]), (8, &1000u16.to_be_bytes()[..]));
    }
}

#[test]
fn corked_sends_beyond_the_socket_buffers_arrive_whole_and_in_order() {
    let (server, q) = start(1000, &[("workers", "1"), ("max_backpressure", "64MiB")]);
    let h = server.handle();
    let mut clients: Vec<_> = (0..2).map(|_| raw_ws(server.local_addr(), "/")).collect();
    let ids = poll_for(&q, clients.len(), |ev| match ev {
        QueuedEvent::Open(open) => Some(open.id),
        _ => None,
    });
    // Rounds of corked batches, the two connections' messages interleaved in each. First
    // 100 small messages (more frames apart than one vectored write takes), then 12 rounds
    // of 16 large ones: 12 MiB per connection, far more than loopback's socket buffers take
    // while the clients do not read. So one batch's write stops part way, and the rest is
    // queued.
    const SMALL: usize = 100;
    let payload = |i: usize, c: usize| {
        let len = if i < SMALL { i + 1 } else { 64 * 1024 - i };
        vec![(i * 2 + c) as u8; len]
    };
    let rounds: Vec<_> = std::iter::once(0..SMALL)
        .chain((0..12).map(|r| SMALL + r * 16..SMALL + (r + 1) * 16))
        .collect();
    let n = rounds.last().unwrap().end;
    for round in rounds {
        for s in &mut clients {
            s.write_all(&frame(true, 1, b"more", true)).unwrap();
        }
        // Receiving these corks this thread's sends until it polls again.
        poll_for(&q, clients.len(), |ev| match ev {
            QueuedEvent::Message { .. } => Some(()),
            _ => None,
        });
        for i in round {
            for (c, id) in ids.iter().enumerate() {
                let status = h.send_binary(*id, &payload(i, c));
                assert!(
                    matches!(status, SendStatus::Sent | SendStatus::Queued),
                    "{status:?}"
                );
            }
        }
    }
    let mut batch = Vec::new();
    assert_eq!(
        q.poll(&mut batch, 10, Some(Duration::ZERO)),
        0,
        "ends the last cork"
    );
    for (c, s) in clients.iter_mut().enumerate() {
        for i in 0..n {
            assert_eq!(
                read_frame(s),
                (true, 2, payload(i, c)),
                "client {c}, message {i}"
            );
        }
    }
    let stats = h.stats();
    assert!(
        stats.backpressure_queued >= 1,
        "no write blocked: the queued path was not tested"
    );
    assert_eq!(stats.messages_out, 2 * n as u64);
    assert_eq!(stats.backpressure_dropped, 0);
}

#[test]
fn a_poll_waiting_forever_wakes_when_the_server_stops() {
    let (server, q) = start(100, &[]);
    let s = raw_ws(server.local_addr(), "/");
    let mut batch = Vec::new();
    assert_eq!(q.poll(&mut batch, 10, Some(WAIT)), 1, "open");
    let (tx, rx) = std::sync::mpsc::channel();
    let poller = {
        let q = q.clone();
        std::thread::spawn(move || {
            let mut closes = 0;
            loop {
                let mut batch = Vec::new();
                if q.poll(&mut batch, 10, None) == 0 {
                    break;
                }
                closes += batch
                    .iter()
                    .filter(|ev| matches!(ev, QueuedEvent::Close { .. }))
                    .count();
            }
            tx.send(closes).unwrap();
        })
    };
    server.handle().shutdown();
    drop(s);
    assert_eq!(
        rx.recv_timeout(WAIT),
        Ok(1),
        "the CLOSE arrives, then the poll waiting forever returns 0"
    );
    poller.join().unwrap();
    server.join();
    assert_eq!(q.poll(&mut batch, 10, None), 0, "stopped: at once");
}

// ---- inline servers: the loop runs inside `poll`, on the polling thread ----

fn start_inline(pairs: &[(&str, &str)]) -> (Server, std::sync::Arc<EventQueue>) {
    let q = EventQueue::new(1000, false).unwrap();
    let pairs = [&[("workers", "1")][..], pairs].concat();
    let server = Server::start_inline(options(&pairs), &q).unwrap();
    (server, q)
}

/// A host that polls in a loop (waiting forever) and answers on the polling thread: echo
/// each message; "close me" gets "bye" and a close. Returns the ids it saw open, once the
/// server has stopped.
fn inline_host(
    q: std::sync::Arc<EventQueue>,
    h: wsrt::ServerHandle,
    opened: std::sync::mpsc::Sender<wsrt::ConnId>,
) -> std::thread::JoinHandle<usize> {
    std::thread::spawn(move || {
        let mut batch = Vec::new();
        let mut closes = 0;
        loop {
            batch.clear();
            if q.poll(&mut batch, 64, None) == 0 {
                return closes;
            }
            for ev in &batch {
                match ev {
                    QueuedEvent::Open(open) => opened.send(open.id).unwrap(),
                    QueuedEvent::Message { id, data, .. } if data == b"close me" => {
                        h.send_text(*id, "bye");
                        assert!(h.close(*id, 1000, "asked to"));
                    }
                    QueuedEvent::Message { id, text, data } => {
                        let msg = match text {
                            true => Message::Text(std::str::from_utf8(data).unwrap()),
                            false => Message::Binary(data),
                        };
                        h.send(*id, msg);
                    }
                    QueuedEvent::Close { .. } => closes += 1,
                    _ => {}
                }
            }
        }
    })
}

/// "close me" to an `inline_host`: its reply, then its close.
fn ask_inline_host_to_close(s: &mut std::net::TcpStream) {
    s.write_all(&frame(true, 1, b"close me", true)).unwrap();
    assert_eq!(read_frame(s), (true, 1, b"bye".to_vec()));
    assert_eq!(read_until_close(s), Some(1000));
}

#[test]
fn an_inline_server_runs_on_the_polling_thread_and_answers_in_order() {
    let before = threads_named("self", "wsrt-worker");
    let (server, q) = start_inline(&[]);
    assert_eq!(
        threads_named("self", "wsrt-worker"),
        before,
        "no worker thread"
    );
    let (tx, opened) = std::sync::mpsc::channel();
    let host = inline_host(q.clone(), server.handle(), tx);
    let addr = server.local_addr();
    let clients: Vec<_> = (0..4)
        .map(|c| {
            std::thread::spawn(move || {
                let mut s = raw_ws(addr, "/");
                // Pipelined: every message is sent before the first echo is read.
                let mut bytes = Vec::new();
                for i in 0..200 {
                    bytes.extend(frame(true, 1, format!("{c}:{i}").as_bytes(), true));
                }
                s.write_all(&bytes).unwrap();
                for i in 0..200 {
                    let (_, op, payload) = read_frame(&mut s);
                    assert_eq!((op, payload), (1, format!("{c}:{i}").into_bytes()));
                }
                ask_inline_host_to_close(&mut s);
            })
        })
        .collect();
    let _open: Vec<_> = clients.into_iter().map(|c| c.join().unwrap()).collect();
    assert_eq!(opened.try_iter().count(), 4);
    // A send from another thread while the host waits in poll wakes the loop.
    let mut s = raw_ws(addr, "/");
    let id = opened.recv_timeout(WAIT).unwrap();
    assert_eq!(
        server.handle().send_text(id, "from outside"),
        wsrt::SendStatus::Sent
    );
    assert_eq!(read_frame(&mut s), (true, 1, b"from outside".to_vec()));
    // Shutdown runs the loop on this thread, alongside the host's poll, until it stops:
    // the last client gets its 1001, the host its CLOSE, then a 0 that ends its loop.
    let closer = std::thread::spawn(move || read_until_close(&mut s));
    server.shutdown();
    assert_eq!(closer.join().unwrap(), Some(1001));
    assert_eq!(host.join().unwrap(), 5, "every CLOSE reached the host");
    let mut batch = Vec::new();
    assert_eq!(q.poll(&mut batch, 10, None), 0, "stopped: at once");
}

#[test]
fn an_inline_poll_with_zero_timeout_still_runs_the_loop() {
    let (server, q) = start_inline(&[]);
    let addr = server.local_addr();
    let client = std::thread::spawn(move || {
        let mut s = raw_ws(addr, "/");
        s.write_all(&frame(true, 2, b"polled", true)).unwrap();
        read_frame(&mut s)
    });
    // Only zero-timeout polls (a host that polls between its own work): bounded by WAIT.
    let deadline = std::time::Instant::now() + WAIT;
    let mut batch = Vec::new();
    let mut answered = false;
    while !answered {
        assert!(std::time::Instant::now() < deadline, "no progress");
        batch.clear();
        q.poll(&mut batch, 16, Some(Duration::ZERO));
        for ev in &batch {
            if let QueuedEvent::Message { id, data, .. } = ev {
                server.handle().send_binary(*id, data);
                answered = true;
            }
        }
    }
    // The reply is written when the next poll begins.
    let mut reply = None;
    while reply.is_none() {
        assert!(std::time::Instant::now() < deadline, "reply never written");
        q.poll(&mut batch, 16, Some(Duration::ZERO));
        reply = client.is_finished().then_some(());
    }
    assert_eq!(client.join().unwrap(), (true, 2, b"polled".to_vec()));
}

#[test]
fn two_threads_can_poll_an_inline_server() {
    let (server, q) = start_inline(&[]);
    let (tx, _opened) = std::sync::mpsc::channel();
    let hosts = [
        inline_host(q.clone(), server.handle(), tx.clone()),
        inline_host(q.clone(), server.handle(), tx),
    ];
    let addr = server.local_addr();
    let clients: Vec<_> = (0..6)
        .map(|c| {
            std::thread::spawn(move || {
                let mut s = raw_ws(addr, "/");
                // One at a time: two pollers may answer one connection's batches in any
                // order, so each message waits for its echo.
                for i in 0..100 {
                    let text = format!("{c}/{i}");
                    s.write_all(&frame(true, 1, text.as_bytes(), true)).unwrap();
                    assert_eq!(read_frame(&mut s), (true, 1, text.into_bytes()));
                }
                ask_inline_host_to_close(&mut s);
            })
        })
        .collect();
    let _open: Vec<_> = clients.into_iter().map(|c| c.join().unwrap()).collect();
    server.shutdown();
    let closes: usize = hosts.into_iter().map(|h| h.join().unwrap()).sum();
    assert_eq!(closes, 6);
}

#[test]
fn an_inline_server_has_one_worker() {
    let q = EventQueue::new(10, false).unwrap();
    let err = Server::start_inline(options(&[("workers", "2")]), &q)
        .err()
        .expect("refused");
    assert!(err.to_string().contains("workers"), "{err}");
}

#[test]
fn inline_replies_that_alternate_between_connections_keep_each_ones_order() {
    let (server, q) = start_inline(&[]);
    let h = server.handle();
    let addr = server.local_addr();
    // Connecting needs the loop: poll while the clients wait for their 101.
    let connecting: Vec<_> = (0..2)
        .map(|_| std::thread::spawn(move || raw_ws(addr, "/")))
        .collect();
    let mut batch = Vec::new();
    let mut opened = Vec::new();
    let deadline = std::time::Instant::now() + WAIT;
    while opened.len() < 2 || !connecting.iter().all(|t| t.is_finished()) {
        assert!(std::time::Instant::now() < deadline, "clients never opened");
        batch.clear();
        q.poll(&mut batch, 16, Some(Duration::from_millis(10)));
        opened.extend(batch.iter().filter_map(|ev| match ev {
            QueuedEvent::Open(open) => Some(open.id),
            _ => None,
        }));
    }
    let mut clients: Vec<_> = connecting.into_iter().map(|t| t.join().unwrap()).collect();
    // Which client is which: ask the first one to identify itself.
    clients[0].write_all(&frame(true, 1, b"me", true)).unwrap();
    let a = poll_for(&q, 1, |ev| match ev {
        QueuedEvent::Message { id, .. } => Some(*id),
        _ => None,
    })[0];
    let b = if opened[0] == a { opened[1] } else { opened[0] };
    let big: Vec<u8> = (0..100_000).map(|i| (i % 251) as u8).collect();
    // A, B, A, B (large), A: each switch writes the previous connection's run.
    h.send_text(a, "a1");
    h.send_text(b, "b1");
    h.send_text(a, "a2");
    h.send_binary(b, &big);
    h.send_text(a, "a3");
    // "a3" waits in the cork (2-byte header + 2 bytes), and the handle says so.
    assert_eq!(h.buffered_amount(a), Some(4));
    let readers: Vec<_> = clients
        .drain(..)
        .map(|mut s| {
            std::thread::spawn(move || {
                let first = read_frame(&mut s);
                let second = read_frame(&mut s);
                (first.2, second.2)
            })
        })
        .collect();
    // The last run goes out when the next poll begins.
    while !readers.iter().all(|r| r.is_finished()) {
        q.poll(&mut batch, 16, Some(Duration::from_millis(10)));
    }
    let got: Vec<_> = readers.into_iter().map(|r| r.join().unwrap()).collect();
    assert_eq!(got[0], (b"a1".to_vec(), b"a2".to_vec()));
    assert_eq!(got[1], (b"b1".to_vec(), big));
}
