//! wsrt — an embeddable WebSocket server runtime.
//!
//! Layers (each a module with one job): `proxy_protocol` → `handshake` → `frame` →
//! `message` (the sans-I/O protocol pieces: no sockets, no clock, no unsafe), then
//! `connection` (one connection's state machine), `worker` (a mio event loop per thread) and
//! `server` (start, the thread-safe handle, stats, shutdown). Hosts implement [`Handler`].
//!
//! ```no_run
//! use wsrt::{Conn, Handler, Message, Options, Server};
//!
//! struct Echo;
//! impl Handler for Echo {
//!     fn on_message(&self, conn: &mut Conn<'_>, msg: Message<'_>) {
//!         conn.send(msg);
//!     }
//! }
//!
//! let mut opts = Options::default();
//! opts.set("listen", "127.0.0.1:9001").unwrap();
//! let server = Server::start(opts, Echo).unwrap();
//! server.join();
//! ```

#[forbid(unsafe_code)]
pub mod deflate;
#[forbid(unsafe_code)]
pub mod frame;
#[forbid(unsafe_code)]
pub mod handshake;
#[forbid(unsafe_code)]
pub mod message;
#[forbid(unsafe_code)]
pub mod net_trust;
#[forbid(unsafe_code)]
pub mod proxy_protocol;

#[forbid(unsafe_code)]
mod connection;
#[forbid(unsafe_code)]
mod cork;
#[forbid(unsafe_code)]
pub mod event_queue;
#[forbid(unsafe_code)]
mod handler;
#[forbid(unsafe_code)]
mod options;
#[forbid(unsafe_code)]
mod outbound;
#[forbid(unsafe_code)]
mod server;
#[forbid(unsafe_code)]
mod topics;
#[forbid(unsafe_code)]
mod worker;

/// The C ABI (`include/wsrt.h`); the only other place with `unsafe`.
pub mod ffi;

/// OS calls ws-echo and hosts need (signals, fd limit); with `send_ring`, the only `unsafe`
/// outside the C ABI.
pub mod os;

/// Fan-out writes batched through io_uring (Linux).
mod send_ring;

pub use connection::Conn;
pub use handler::{
    Accept, CloseInfo, ConnId, Decision, Handler, HttpRequest, HttpResponse, Message, Reject,
    SendStatus, UpgradeRequest,
};
pub use handshake::RejectKind;
pub use options::{
    fmt_duration, fmt_size, BackpressurePolicy, OptionError, OptionSpec, Options, ProxyProtocol,
    OPTIONS,
};
pub use server::{Error, Server, ServerHandle, Stats};

/// The crate version (also `WSRT_VERSION` in the C header).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
