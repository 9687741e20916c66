//! Raw TCP echo on mio (epoll), one thread, no WebSocket framing: the ceiling.
//! `--mode broadcast` writes every byte read from one connection to all connections.
use std::io::{ErrorKind, Read, Write};

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};

const LISTENER: Token = Token(usize::MAX);

struct C {
    s: TcpStream,
    out: Vec<u8>,
    writable: bool,
}

fn flush(c: &mut C) -> bool {
    let mut off = 0;
    while off < c.out.len() {
        match c.s.write(&c.out[off..]) {
            Ok(n) => off += n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return false,
        }
    }
    c.out.drain(..off);
    true
}

fn main() {
    let a = peers::args();
    let mut poll = Poll::new().unwrap();
    let mut l = TcpListener::bind(a.listen).expect("bind");
    // mio listens with a backlog of 1024. 10,000 subscribers connecting while the core is
    // still tearing down the last workload's sockets overflow it, and a connection the kernel
    // then drops is lost for good when the client never sends (a raw subscriber; a WebSocket
    // client's upgrade request is retransmitted). Ask for the system's maximum.
    // SAFETY: listen(2) on the listener's own open fd; it only changes the backlog.
    unsafe { libc::listen(std::os::fd::AsRawFd::as_raw_fd(&l), libc::c_int::MAX) };
    poll.registry()
        .register(&mut l, LISTENER, Interest::READABLE)
        .unwrap();
    let mut conns: slab_like::Slab<C> = slab_like::Slab::default();
    let mut events = Events::with_capacity(1024);
    let mut buf = vec![0u8; 256 * 1024];
    // Accepting stopped on an error (EMFILE while the last workload's sockets are still being
    // closed): the listener's edge is spent, so retry every few milliseconds.
    let mut accept_stalled = false;
    loop {
        let timeout = accept_stalled.then(|| std::time::Duration::from_millis(5));
        match poll.poll(&mut events, timeout) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => panic!("poll: {e}"),
        }
        if accept_stalled || events.iter().any(|ev| ev.token() == LISTENER) {
            accept_stalled = false;
            loop {
                match l.accept() {
                    Ok((mut s, _)) => {
                        let _ = s.set_nodelay(true);
                        let k = conns.vacant();
                        poll.registry()
                            .register(&mut s, Token(k), Interest::READABLE | Interest::WRITABLE)
                            .unwrap();
                        conns.insert(
                            k,
                            C {
                                s,
                                out: Vec::new(),
                                writable: true,
                            },
                        );
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(_) => {
                        accept_stalled = true;
                        break;
                    }
                }
            }
        }
        for ev in events.iter() {
            if ev.token() == LISTENER {
                continue;
            }
            let k = ev.token().0;
            let mut dead = false;
            let mut got: Vec<u8> = Vec::new();
            if let Some(c) = conns.get_mut(k) {
                if ev.is_writable() {
                    c.writable = true;
                    dead |= !flush(c);
                }
                loop {
                    match c.s.read(&mut buf) {
                        Ok(0) => {
                            dead = true;
                            break;
                        }
                        Ok(n) => {
                            if a.broadcast {
                                got.extend_from_slice(&buf[..n]);
                            } else if c.out.is_empty() {
                                // write straight from the read buffer; keep only what didn't fit
                                let mut off = 0;
                                while off < n {
                                    match c.s.write(&buf[off..n]) {
                                        Ok(m) => off += m,
                                        Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                                        Err(_) => {
                                            dead = true;
                                            break;
                                        }
                                    }
                                }
                                c.out.extend_from_slice(&buf[off..n]);
                            } else {
                                c.out.extend_from_slice(&buf[..n]);
                                dead |= !flush(c);
                            }
                        }
                        Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                        Err(e) if e.kind() == ErrorKind::Interrupted => {}
                        Err(_) => {
                            dead = true;
                            break;
                        }
                    }
                }
            }
            if dead {
                if let Some(mut c) = conns.remove(k) {
                    let _ = poll.registry().deregister(&mut c.s);
                }
            }
            if !got.is_empty() {
                let mut gone = Vec::new();
                for (j, c) in conns.iter_mut() {
                    let was_empty = c.out.is_empty();
                    c.out.extend_from_slice(&got);
                    if was_empty && !flush(c) {
                        gone.push(j);
                    }
                }
                for j in gone {
                    if let Some(mut c) = conns.remove(j) {
                        let _ = poll.registry().deregister(&mut c.s);
                    }
                }
            }
        }
    }
}

/// A tiny slab (index reuse), to avoid another dependency.
mod slab_like {
    pub struct Slab<T> {
        v: Vec<Option<T>>,
        free: Vec<usize>,
    }
    impl<T> Default for Slab<T> {
        fn default() -> Self {
            Slab {
                v: Vec::new(),
                free: Vec::new(),
            }
        }
    }
    impl<T> Slab<T> {
        pub fn vacant(&mut self) -> usize {
            if let Some(k) = self.free.pop() {
                return k;
            }
            self.v.push(None);
            self.v.len() - 1
        }
        pub fn insert(&mut self, k: usize, t: T) {
            self.v[k] = Some(t);
        }
        pub fn get_mut(&mut self, k: usize) -> Option<&mut T> {
            self.v.get_mut(k).and_then(|x| x.as_mut())
        }
        pub fn remove(&mut self, k: usize) -> Option<T> {
            let t = self.v.get_mut(k)?.take();
            if t.is_some() {
                self.free.push(k);
            }
            t
        }
        pub fn iter_mut(&mut self) -> impl Iterator<Item = (usize, &mut T)> {
            self.v
                .iter_mut()
                .enumerate()
                .filter_map(|(i, x)| x.as_mut().map(|t| (i, t)))
        }
    }
}
