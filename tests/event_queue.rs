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
use wsrt::{Message, Server};

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
        QueuedEvent::Open {
            id,
            path,
            query,
            headers,
            ..
        } => {
            assert_eq!((path.as_str(), query.as_deref()), ("/q", Some("x=1")));
            assert!(headers
                .iter()
                .any(|(k, _)| k.eq_ignore_ascii_case("sec-websocket-key")));
            *id
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
        QueuedEvent::Open { id, .. } => Some(*id),
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
