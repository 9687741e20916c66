//! Shared helpers for the integration tests: a server on 127.0.0.1 with a recording handler,
//! raw-socket clients that speak exact bytes, and an independent client (tungstenite).
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use wsrt::{CloseInfo, Conn, ConnId, Decision, Handler, Message, Options, Server, UpgradeRequest};

/// Upper bound for any single wait in a test: a broken server fails the test, never hangs it.
pub const WAIT: Duration = Duration::from_secs(10);

pub fn options(pairs: &[(&str, &str)]) -> Options {
    let mut o = Options::default();
    o.set("listen", "127.0.0.1:0").unwrap();
    o.set("workers", "2").unwrap();
    for (k, v) in pairs {
        o.set(k, v).unwrap_or_else(|e| panic!("{e}"));
    }
    o
}

/// What the recording handler saw, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Ev {
    Open(ConnId, String),
    Text(ConnId, String),
    Binary(ConnId, Vec<u8>),
    Pong(ConnId, Vec<u8>),
    Drain(ConnId),
    Close(ConnId, CloseInfo),
}

type UpgradeFn = dyn Fn(&UpgradeRequest<'_>) -> Decision + Send + Sync;

/// Echoes (when `echo`) and reports every event on a channel.
pub struct Recorder {
    pub echo: bool,
    tx: Mutex<mpsc::Sender<Ev>>,
    pub on_upgrade: Option<Box<UpgradeFn>>,
}

impl Handler for Recorder {
    fn on_upgrade(&self, req: &UpgradeRequest<'_>) -> Decision {
        match &self.on_upgrade {
            Some(f) => f(req),
            None => Decision::Accept(Default::default()),
        }
    }
    fn on_open(&self, conn: &mut Conn<'_>) {
        self.send(Ev::Open(conn.id(), conn.remote_addr().to_string()));
    }
    fn on_message(&self, conn: &mut Conn<'_>, msg: Message<'_>) {
        if self.echo {
            conn.send(msg);
        }
        self.send(match msg {
            Message::Text(t) => Ev::Text(conn.id(), t.to_string()),
            Message::Binary(b) => Ev::Binary(conn.id(), b.to_vec()),
        });
    }
    fn on_pong(&self, conn: &mut Conn<'_>, payload: &[u8]) {
        self.send(Ev::Pong(conn.id(), payload.to_vec()));
    }
    fn on_drain(&self, conn: &mut Conn<'_>) {
        self.send(Ev::Drain(conn.id()));
    }
    fn on_close(&self, conn: &mut Conn<'_>, info: &CloseInfo) {
        self.send(Ev::Close(conn.id(), info.clone()));
    }
}

impl Recorder {
    fn send(&self, ev: Ev) {
        let _ = self.tx.lock().unwrap().send(ev);
    }
}

pub struct TestServer {
    pub server: Option<Server>,
    pub addr: SocketAddr,
    pub events: mpsc::Receiver<Ev>,
}

impl TestServer {
    pub fn start(pairs: &[(&str, &str)]) -> TestServer {
        Self::start_with(pairs, true, None)
    }

    pub fn start_with(
        pairs: &[(&str, &str)],
        echo: bool,
        on_upgrade: Option<Box<UpgradeFn>>,
    ) -> TestServer {
        let (tx, rx) = mpsc::channel();
        let handler = Recorder {
            echo,
            tx: Mutex::new(tx),
            on_upgrade,
        };
        let server = Server::start(options(pairs), handler).expect("server starts");
        let addr = server.local_addr();
        TestServer {
            server: Some(server),
            addr,
            events: rx,
        }
    }

    pub fn handle(&self) -> wsrt::ServerHandle {
        self.server.as_ref().unwrap().handle()
    }

    /// The next event, or panic after WAIT.
    pub fn next_event(&self) -> Ev {
        self.events
            .recv_timeout(WAIT)
            .expect("server event within the time limit")
    }

    /// Skip events until one matches.
    pub fn wait_for(&self, mut pred: impl FnMut(&Ev) -> bool) -> Ev {
        loop {
            let ev = self.next_event();
            if pred(&ev) {
                return ev;
            }
        }
    }

    pub fn wait_open(&self) -> ConnId {
        match self.wait_for(|e| matches!(e, Ev::Open(..))) {
            Ev::Open(id, _) => id,
            _ => unreachable!(),
        }
    }

    pub fn wait_close(&self) -> (ConnId, CloseInfo) {
        match self.wait_for(|e| matches!(e, Ev::Close(..))) {
            Ev::Close(id, info) => (id, info),
            _ => unreachable!(),
        }
    }
}

pub fn tcp(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.set_nodelay(true).unwrap();
    s
}

pub const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

pub fn upgrade_request(path: &str, extra: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    )
}

/// Read an HTTP response head (up to the blank line); returns (status, head text).
pub fn read_head(s: &mut TcpStream) -> (u16, String) {
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = s.read(&mut b).expect("read response head");
        assert!(
            n == 1,
            "connection closed before the response head ended: {:?}",
            String::from_utf8_lossy(&head)
        );
        head.push(b[0]);
    }
    let text = String::from_utf8(head).unwrap();
    let status = text[9..12].parse().unwrap();
    (status, text)
}

/// A raw upgraded connection: handshake done, speaking frames by hand.
pub fn raw_ws(addr: SocketAddr, path: &str) -> TcpStream {
    let mut s = tcp(addr);
    s.write_all(upgrade_request(path, "").as_bytes()).unwrap();
    let (status, head) = read_head(&mut s);
    assert_eq!(status, 101, "{head}");
    s
}

/// A whole HTTP exchange: send `request`, read until the server closes. Returns (status, head, body).
pub fn http(addr: SocketAddr, request: &str) -> (u16, String, String) {
    let mut s = tcp(addr);
    s.write_all(request.as_bytes()).unwrap();
    let mut all = Vec::new();
    s.read_to_end(&mut all).expect("read response");
    let text = String::from_utf8_lossy(&all).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, head.to_string(), body.to_string())
}

/// A client frame, masked as the RFC requires (or not, to test the server's refusal).
pub fn frame(fin: bool, opcode: u8, payload: &[u8], masked: bool) -> Vec<u8> {
    let mut f = vec![(if fin { 0x80 } else { 0 }) | opcode];
    let mask_bit = if masked { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => f.push(mask_bit | n as u8),
        n if n <= 0xffff => {
            f.push(mask_bit | 126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            f.push(mask_bit | 127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    if masked {
        let key = [0x37, 0xfa, 0x21, 0x3d];
        f.extend_from_slice(&key);
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    } else {
        f.extend_from_slice(payload);
    }
    f
}

pub fn close_frame(code: u16, reason: &str) -> Vec<u8> {
    let mut p = code.to_be_bytes().to_vec();
    p.extend_from_slice(reason.as_bytes());
    frame(true, 8, &p, true)
}

/// Read one server frame: (fin, opcode, payload). Server frames are never masked.
pub fn read_frame(s: &mut TcpStream) -> (bool, u8, Vec<u8>) {
    let mut h = [0u8; 2];
    s.read_exact(&mut h).expect("read frame header");
    assert_eq!(h[1] & 0x80, 0, "server frames must not be masked");
    let len = match h[1] & 0x7f {
        126 => {
            let mut b = [0u8; 2];
            s.read_exact(&mut b).unwrap();
            u16::from_be_bytes(b) as usize
        }
        127 => {
            let mut b = [0u8; 8];
            s.read_exact(&mut b).unwrap();
            u64::from_be_bytes(b) as usize
        }
        n => n as usize,
    };
    let mut payload = vec![0u8; len];
    s.read_exact(&mut payload).expect("read frame payload");
    (h[0] & 0x80 != 0, h[0] & 0x0f, payload)
}

/// Read frames until a close frame; returns its code (None for an empty close payload).
pub fn read_until_close(s: &mut TcpStream) -> Option<u16> {
    loop {
        let (_, op, p) = read_frame(s);
        if op == 8 {
            return (p.len() >= 2).then(|| u16::from_be_bytes([p[0], p[1]]));
        }
    }
}

/// The server closed the TCP connection (EOF, or a reset).
pub fn assert_eof(s: &mut TcpStream) {
    let mut b = [0u8; 64];
    match s.read(&mut b) {
        Ok(0) => {}
        Ok(n) => panic!("expected EOF, got {n} more bytes"),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        Err(e) => panic!("expected EOF, got {e}"),
    }
}

pub type Client = tungstenite::WebSocket<Retrying>;

/// An independent client (tungstenite) connected to `addr` with a `WAIT` read timeout.
pub fn client(addr: SocketAddr, path: &str) -> Client {
    connect(format!("ws://{addr}{path}")).0
}

/// `client` for a request of the test's own (headers), with the server's 101 response.
pub fn connect(
    req: impl tungstenite::client::IntoClientRequest,
) -> (Client, tungstenite::handshake::client::Response) {
    let req = req.into_client_request().expect("a client request");
    // An IPv6 host comes bracketed ("[::1]").
    let host = req.uri().host().unwrap().trim_start_matches('[');
    let host = host.trim_end_matches(']');
    let port = req.uri().port_u16().unwrap_or(80);
    let s = TcpStream::connect((host, port)).expect("connects");
    s.set_read_timeout(Some(WAIT)).unwrap();
    tungstenite::client(req, Retrying(s)).expect("tungstenite upgrades")
}

/// The client's socket, retrying calls that come back interrupted (as `read_exact` does):
/// with a read timeout set, Linux fails a blocked `recv` with EINTR when the process is
/// stopped and continued (a frozen cgroup, a debugger), even without a signal handler.
pub struct Retrying(pub TcpStream);

impl Read for Retrying {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        loop {
            match self.0.read(buf) {
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                r => return r,
            }
        }
    }
}

impl Write for Retrying {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        loop {
            match self.0.write(buf) {
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                r => return r,
            }
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

pub fn shared<T>(v: T) -> Arc<Mutex<T>> {
    Arc::new(Mutex::new(v))
}

/// How many threads of process `pid` ("self" or a number) have a name starting with `prefix`.
pub fn threads_named(pid: &str, prefix: &str) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|name| name.starts_with(prefix))
        .count()
}
