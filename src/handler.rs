//! What the host sees: the `Handler` trait the workers call, and the values passed to it.

use std::fmt;
use std::net::SocketAddr;

use crate::connection::Conn;

/// Opaque connection id: worker (8 bits) | slot (24 bits) | generation (32 bits).
/// A stale id (connection gone, slot reused) never reaches another client: the generation differs.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(transparent)]
pub struct ConnId(u64);

impl ConnId {
    pub(crate) fn new(worker: usize, slot: usize, generation: u32) -> ConnId {
        debug_assert!(worker < 256 && slot < (1 << 24));
        ConnId(((worker as u64) << 56) | ((slot as u64) << 32) | generation as u64)
    }
    pub(crate) fn worker(self) -> usize {
        (self.0 >> 56) as usize
    }
    pub(crate) fn slot(self) -> usize {
        ((self.0 >> 32) & 0xff_ffff) as usize
    }
    /// The id as a plain integer (for the C ABI and host maps). Never 0.
    pub fn to_raw(self) -> u64 {
        self.0
    }
    pub fn from_raw(raw: u64) -> ConnId {
        ConnId(raw)
    }
}

impl fmt::Debug for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}.{}.{}", self.worker(), self.slot(), self.0 as u32)
    }
}

impl fmt::Display for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// A complete message. Text is valid UTF-8.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Message<'a> {
    Text(&'a str),
    Binary(&'a [u8]),
}

impl<'a> Message<'a> {
    pub fn as_bytes(&self) -> &'a [u8] {
        match self {
            Message::Text(s) => s.as_bytes(),
            Message::Binary(b) => b,
        }
    }
    pub fn is_text(&self) -> bool {
        matches!(self, Message::Text(_))
    }
}

/// What happened to a send.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(i32)]
pub enum SendStatus {
    /// Accepted; the connection is not under backpressure.
    Sent = 0,
    /// Accepted, but the client is slow: it waits in the outbound queue; `on_drain` follows.
    Queued = 1,
    /// Refused: the queue is over `max_backpressure` (policy `drop`, or `close` which now closes it).
    Dropped = 2,
    /// No such connection: closed, closing, or a stale id.
    Gone = 3,
}

/// How a connection ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CloseInfo {
    /// The close code (the peer's, or ours if we closed first); 1006 when no close frame was exchanged.
    pub code: u16,
    pub reason: String,
    /// Both close frames were exchanged.
    pub clean: bool,
}

/// An upgrade request the host may accept, reject or defer.
pub struct UpgradeRequest<'a> {
    pub id: ConnId,
    pub method: &'a str,
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub headers: &'a [(String, String)],
    /// The client's address (from a PROXY header or trusted forwarding headers when configured).
    pub remote_addr: SocketAddr,
    /// The subprotocols the client offered, in its order.
    pub offered_protocols: &'a [String],
    /// The server's choice from `subprotocols`, if any matched.
    pub subprotocol: Option<&'a str>,
    pub origin: Option<&'a str>,
}

impl UpgradeRequest<'_> {
    /// First header with this name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Accept an upgrade, optionally choosing the subprotocol and adding response headers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Accept {
    /// Overrides the server's choice; must be one the client offered.
    pub subprotocol: Option<String>,
    /// Extra response headers, e.g. `Set-Cookie`.
    pub headers: Vec<(String, String)>,
}

/// Refuse an upgrade with a status and body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reject {
    pub status: u16,
    pub body: String,
    pub headers: Vec<(String, String)>,
}

impl Reject {
    pub fn new(status: u16, body: impl Into<String>) -> Reject {
        Reject {
            status,
            body: body.into(),
            headers: Vec::new(),
        }
    }
}

/// The host's answer to an upgrade request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    Accept(Accept),
    Reject(Reject),
    /// Decide later, from any thread, with `ServerHandle::accept` / `ServerHandle::reject`
    /// (within `handshake_timeout`).
    Defer,
}

/// A plain (non-upgrade) HTTP request the host may answer.
pub struct HttpRequest<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub headers: &'a [(String, String)],
    pub remote_addr: SocketAddr,
}

/// A plain HTTP response; the connection closes after it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpResponse {
    pub status: u16,
    pub content_type: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// The host's code, called on worker threads. Callbacks must not block: they delay every
/// connection of that worker. Sends from inside a callback to the same connection take the
/// fast path (corked, written once per read batch).
pub trait Handler: Send + Sync + 'static {
    /// A valid upgrade request arrived. Default: accept.
    fn on_upgrade(&self, _req: &UpgradeRequest<'_>) -> Decision {
        Decision::Accept(Accept::default())
    }
    /// A plain HTTP request that is not the health check. `None` = the default answer
    /// (426 on WebSocket paths, 404 elsewhere).
    fn on_http(&self, _req: &HttpRequest<'_>) -> Option<HttpResponse> {
        None
    }
    /// The connection is open (the 101 response is queued ahead of anything sent here).
    fn on_open(&self, _conn: &mut Conn<'_>) {}
    fn on_message(&self, _conn: &mut Conn<'_>, _msg: Message<'_>) {}
    fn on_pong(&self, _conn: &mut Conn<'_>, _payload: &[u8]) {}
    /// A connection that had data queued under backpressure has written it all.
    fn on_drain(&self, _conn: &mut Conn<'_>) {}
    /// The connection is gone; sends from here return `Gone`. Called once per opened connection.
    fn on_close(&self, _conn: &mut Conn<'_>, _info: &CloseInfo) {}
    /// While true, workers stop reading from sockets (a host that cannot keep up, e.g. a full
    /// event queue); call `ServerHandle::resume_reading` when it becomes false again.
    fn reading_paused(&self) -> bool {
        false
    }
    /// A worker has delivered every event of one loop turn and is about to wait for more:
    /// the place to flush work batched across callbacks (one wake-up per turn, not per event).
    /// Returns whether events were handed to a polling host (whose answers may be corked).
    fn on_turn_end(&self) -> bool {
        false
    }

    /// Every worker has stopped (after a shutdown): no callback follows.
    fn on_stopped(&self) {}
}
