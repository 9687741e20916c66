//! One connection's state machine: PROXY prefix → HTTP upgrade → frames → close.
//!
//! Like quinn-proto, it owns no socket and reads no clock: the worker feeds it bytes and the
//! current time (`Ctx::now`), flushes its output to the socket, and asks when its next timer
//! is due. The host's handler is called from here, with a `Conn` to act on the connection.

use std::any::Any;
use std::io::{self, IoSlice, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use crate::cork::{self, BatchedFrame};
use crate::deflate::{self, Deflater, InflateError, Inflater};
use crate::frame::{self, OpCode};
use crate::handler::{
    Accept, CloseInfo, ConnId, Decision, Handler, HttpRequest, Message, Reject, SendStatus,
    UpgradeRequest,
};
use crate::handshake::{self, RejectKind, Rejection, Request, RequestReader, Route};
use crate::message::{self, Decoder, Event};
use crate::options::{BackpressurePolicy, ProxyProtocol};
use crate::outbound::{Chunk, OutQueue, MAX_IOV};
use crate::proxy_protocol::{self, ProxyHeader, ProxyReader};
use crate::server::{Shared, WorkerStats};
use crate::topics::Topics;

/// The part of a connection other threads may look at (through the worker's registry).
pub(crate) struct ConnShared {
    pub id: ConnId,
    /// Open for sends (upgraded, no close frame sent yet).
    pub open: AtomicBool,
    /// Bytes waiting: in the worker's inbox plus in the outbound queue.
    pub queued: AtomicUsize,
    /// permessage-deflate was negotiated (sends from other threads are compressed by the
    /// worker).
    pub compressed: AtomicBool,
    /// The last flush could not write everything (a drain event will follow).
    pub blocked: AtomicBool,
}

/// Worker-wide state handed to the connection being processed.
pub(crate) struct Ctx {
    pub now: Instant,
    pub shared: Arc<Shared>,
    pub handler: Arc<dyn Handler>,
    pub stats: Arc<WorkerStats>,
    /// Output of the connection being read, written once after the read is processed.
    pub cork: Vec<u8>,
    pub cork_slot: Option<usize>,
    /// Slots with output queued outside a cork, flushed at the end of the loop iteration.
    pub dirty: Vec<usize>,
    /// Slots whose reading was paused and must be resumed (read attempted) now.
    pub resume: Vec<usize>,
    pub topics: Topics,
    pub zip: WorkerDeflate,
}

/// Worker-wide deflate state: scratch buffers, and the contexts shared by every connection
/// that negotiated no context takeover (so those hold no deflate memory of their own).
#[derive(Default)]
pub(crate) struct WorkerDeflate {
    out: Vec<u8>,
    inflated: Vec<u8>,
    deflaters: Vec<(u8, Deflater)>,
    inflater: Option<Inflater>,
}

/// A connection's permessage-deflate: the agreed parameters and, with context takeover,
/// its own contexts (created on first use).
struct ConnDeflate {
    params: deflate::Params,
    deflater: Option<Deflater>,
    inflater: Option<Inflater>,
}

/// Scratch buffers above this are released after use.
const ZIP_KEEP: usize = 1 << 20;

impl WorkerDeflate {
    /// Compress `payload` for a connection (its own context, or the worker's shared one).
    fn compress(&mut self, d: &mut ConnDeflate, level: u32, payload: &[u8]) -> Vec<u8> {
        let mut out = std::mem::take(&mut self.out);
        let bits = d.params.server_window_bits;
        if d.params.server_no_context_takeover {
            let i = match self.deflaters.iter().position(|(b, _)| *b == bits) {
                Some(i) => i,
                None => {
                    self.deflaters.push((bits, Deflater::new(level, bits)));
                    self.deflaters.len() - 1
                }
            };
            self.deflaters[i].1.compress(payload, &mut out, true);
        } else {
            d.deflater
                .get_or_insert_with(|| Deflater::new(level, bits))
                .compress(payload, &mut out, false);
        }
        out
    }

    fn give_back_out(&mut self, mut out: Vec<u8>) {
        if out.capacity() <= ZIP_KEEP {
            out.clear();
            self.out = out;
        }
    }
}

enum Input {
    Proxy(Box<ProxyReader>),
    Request(Box<RequestReader>),
    /// Waiting for the host's deferred decision; reading is paused.
    Deferred(Box<Deferred>),
    Frames(Decoder),
    /// Lingering after a plain HTTP response or a failed connection: input is ignored.
    Discard,
}

struct Deferred {
    request: Request,
    upgrade: handshake::Upgrade,
    /// Bytes the client sent after its request (early frames).
    early: Vec<u8>,
}

/// When the worker should remove the connection.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Finish {
    No,
    /// Once the outbound queue is empty.
    WhenFlushed,
    /// At once (errors, timeouts).
    Now,
}

pub(crate) struct ConnState {
    core: Core,
    input: Input,
}

/// Per-connection state the handler's `Conn` acts on.
pub(crate) struct Core {
    pub id: ConnId,
    pub peer: SocketAddr,
    /// The client's address: the socket peer, or what a trusted proxy said.
    pub remote: SocketAddr,
    pub shared: Arc<ConnShared>,
    pub out: OutQueue,
    pub finish: Finish,
    /// Shut the write side once the queue is empty (lingering after a response or close).
    pub shutdown_write: bool,
    pub read_paused: bool,
    /// Bookkeeping of the worker's timer heap.
    pub scheduled: Option<Instant>,
    pub dirty: bool,
    info: Option<Box<OpenInfo>>,
    opened: bool,
    blocked: bool,
    close_sent: bool,
    close_received: bool,
    close_info: Option<CloseInfo>,
    last_read: Instant,
    next_ping: Option<Instant>,
    /// Handshake, PROXY header, close or linger deadline, whichever applies now.
    deadline: Option<Instant>,
    drain_at: Option<Instant>,
    first_read: bool,
    topics: Vec<Arc<str>>,
    user_data: Option<Box<dyn Any + Send>>,
    deflate: Option<Box<ConnDeflate>>,
}

struct OpenInfo {
    path: String,
    query: Option<String>,
    subprotocol: Option<String>,
    /// The upgrade request's headers, kept only while `on_open` runs.
    headers: Vec<(String, String)>,
}

/// Cork buffers grow for big messages; give the memory back past this.
const CORK_KEEP: usize = 1 << 20;

impl ConnState {
    pub fn new(id: ConnId, peer: SocketAddr, shared: Arc<ConnShared>, ctx: &Ctx) -> ConnState {
        let opts = &ctx.shared.opts;
        let (input, deadline) = match opts.proxy_protocol {
            ProxyProtocol::On(v) => (
                Input::Proxy(Box::new(ProxyReader::new(v, opts.proxy_max_header_bytes))),
                ctx.now + opts.proxy_header_timeout.min(opts.handshake_timeout),
            ),
            ProxyProtocol::Off => (
                Input::Request(Box::new(request_reader(ctx))),
                ctx.now + opts.handshake_timeout,
            ),
        };
        ConnState {
            core: Core {
                id,
                peer,
                remote: peer,
                shared,
                out: OutQueue::default(),
                finish: Finish::No,
                shutdown_write: false,
                read_paused: false,
                scheduled: None,
                dirty: false,
                info: None,
                opened: false,
                blocked: false,
                close_sent: false,
                close_received: false,
                close_info: None,
                last_read: ctx.now,
                next_ping: None,
                deadline: Some(deadline),
                drain_at: None,
                first_read: true,
                topics: Vec::new(),
                user_data: None,
                deflate: None,
            },
            input,
        }
    }

    pub fn core(&self) -> &Core {
        &self.core
    }
    pub fn core_mut(&mut self) -> &mut Core {
        &mut self.core
    }

    /// Bytes arrived from the socket.
    pub fn on_read(&mut self, data: &mut [u8], ctx: &mut Ctx) {
        let core = &mut self.core;
        core.last_read = ctx.now;
        ctx.stats
            .bytes_in
            .fetch_add(data.len() as u64, Ordering::Relaxed);
        let mut data = data;
        loop {
            match &mut self.input {
                Input::Proxy(reader) => match reader.feed(data) {
                    Ok(None) => return,
                    Ok(Some((header, rest))) => {
                        let offset = data.len() - rest.len();
                        data = &mut data[offset..];
                        if let Err(r) = core.apply_proxy_header(&header, ctx) {
                            core.reject(&r, ctx);
                            self.input = Input::Discard;
                            return;
                        }
                        core.first_read = false;
                        core.deadline = Some(core.last_read_deadline(ctx));
                        self.input = Input::Request(Box::new(request_reader(ctx)));
                    }
                    Err(e) => {
                        let r = Rejection::new(
                            RejectKind::Proxy,
                            400,
                            format!("400 Bad Request: {e}\n"),
                            format!("{}: {e}", core.peer),
                        );
                        core.reject(&r, ctx);
                        self.input = Input::Discard;
                        return;
                    }
                },
                Input::Request(reader) => {
                    if core.first_read {
                        core.first_read = false;
                        if proxy_protocol::looks_like_proxy_header(data) && data.len() >= 5 {
                            let r = Rejection::new(
                                RejectKind::Proxy,
                                400,
                                "400 Bad Request: PROXY protocol header received but proxy_protocol is off\n",
                                format!(
                                    "{}: PROXY protocol header received but proxy_protocol is off — the load balancer sends PROXY protocol: set proxy_protocol (and trusted_proxies) on this server, or turn it off on the load balancer",
                                    core.peer
                                ),
                            );
                            core.reject(&r, ctx);
                            self.input = Input::Discard;
                            return;
                        }
                    }
                    match reader.feed(data) {
                        Ok(None) => return,
                        Err(r) => {
                            core.reject(&r, ctx);
                            self.input = Input::Discard;
                            return;
                        }
                        Ok(Some((request, rest))) => {
                            let offset = data.len() - rest.len();
                            data = &mut data[offset..];
                            self.input = core.on_request(request, data, ctx);
                            if !matches!(self.input, Input::Frames(_)) {
                                return;
                            }
                        }
                    }
                }
                Input::Deferred(d) => {
                    // Reading is paused while deferred; bytes that came with the request wait.
                    d.early.extend_from_slice(data);
                    return;
                }
                Input::Frames(decoder) => {
                    let res = decoder.feed(data, |ev| core.on_event(ev, ctx));
                    if let Err(e) = res {
                        core.fail(e, ctx);
                        self.input = Input::Discard;
                    }
                    return;
                }
                Input::Discard => return,
            }
        }
    }

    /// The peer closed its side (read returned 0). Nothing more can arrive, but what was
    /// already accepted for it (an echo, a 101, a refusal) is still written, within
    /// close_timeout, before the connection closes; nothing new is queued meanwhile.
    pub fn on_eof(&mut self, ctx: &Ctx) {
        let core = &mut self.core;
        if core.out.is_empty() {
            core.finish = Finish::Now;
            return;
        }
        // Closing as after a close frame of ours: no more sends, close_timeout to drain.
        core.mark_closing(ctx);
        core.finish = Finish::WhenFlushed;
    }

    /// The host's deferred decision arrived.
    pub fn decide(&mut self, decision: Decision, ctx: &mut Ctx) -> bool {
        let Input::Deferred(_) = &self.input else {
            return false;
        };
        let Input::Deferred(d) = std::mem::replace(&mut self.input, Input::Discard) else {
            unreachable!()
        };
        let Deferred {
            request,
            upgrade,
            mut early,
        } = *d;
        let core = &mut self.core;
        core.read_paused = false;
        self.input = core.decided(decision, &request, upgrade, ctx);
        if !early.is_empty() {
            if let Input::Frames(decoder) = &mut self.input {
                if let Err(e) = decoder.feed(&mut early, |ev| core.on_event(ev, ctx)) {
                    core.fail(e, ctx);
                    self.input = Input::Discard;
                }
            }
        }
        true
    }

    pub fn next_deadline(&self, ctx: &Ctx) -> Option<Instant> {
        let c = &self.core;
        let opts = &ctx.shared.opts;
        let mut next = c.deadline;
        let mut consider = |t: Option<Instant>| {
            if let Some(t) = t {
                next = Some(next.map_or(t, |n| n.min(t)));
            }
        };
        if !c.opened || !c.close_sent {
            consider(c.drain_at);
        }
        if c.opened && !c.close_sent {
            consider(c.next_ping);
            if !opts.idle_timeout.is_zero() {
                consider(Some(c.last_read + opts.idle_timeout));
            }
        }
        next
    }

    pub fn on_timer(&mut self, ctx: &mut Ctx) {
        let now = ctx.now;
        let opts = (ctx.shared.opts.idle_timeout, ctx.shared.opts.ping_interval);
        let silent = self.sent_nothing();
        let core = &mut self.core;
        if !core.opened && core.drain_at.is_some_and(|t| t <= now) {
            core.drain_at = None;
            if silent {
                // Shutting down and the client never sent a byte: nothing to answer or lose.
                core.finish = Finish::Now;
                return;
            }
            // Mid-request: it gets its 503 when the request completes (see on_request).
        }
        if core.deadline.is_some_and(|d| d <= now) {
            core.deadline = None;
            match &self.input {
                Input::Proxy(_) | Input::Request(_) | Input::Deferred(_) => {
                    let what = match self.input {
                        Input::Proxy(_) => "PROXY protocol header not complete within proxy_header_timeout",
                        Input::Deferred(_) => "the host did not decide on the deferred upgrade within handshake_timeout",
                        _ => "upgrade request not complete within handshake_timeout",
                    };
                    log::debug!("{}: {what}", core.peer);
                    ctx.stats.count_reject(RejectKind::HandshakeTimeout);
                    core.finish = Finish::Now;
                }
                _ => core.finish = Finish::Now,
            }
            return;
        }
        if !core.opened || core.close_sent {
            return;
        }
        if core.drain_at.is_some_and(|t| t <= now) {
            core.drain_at = None;
            Conn { core, ctx }.close(1001, "server shutting down");
            return;
        }
        if !opts.0.is_zero() && now.duration_since(core.last_read) >= opts.0 {
            log::debug!("{}: idle for {:?}, closing", core.remote, opts.0);
            Conn { core, ctx }.close(1001, "idle timeout");
            return;
        }
        if let Some(t) = core.next_ping {
            if t <= now {
                Conn { core, ctx }.ping(&[]);
                core.next_ping = Some(now + opts.1);
            }
        }
    }

    /// Schedule the 1001 close of a graceful shutdown, or refuse a connection not yet open.
    pub fn begin_shutdown(&mut self, close_at: Instant, ctx: &mut Ctx) {
        let core = &mut self.core;
        if core.opened {
            if close_at <= ctx.now {
                Conn { core, ctx }.close(1001, "server shutting down");
            } else {
                core.drain_at = Some(close_at);
            }
        } else if matches!(self.input, Input::Deferred(_)) {
            let r = shutting_down_rejection(core.peer);
            core.reject(&r, ctx);
            self.input = Input::Discard;
        } else if self.sent_nothing() {
            // Pre-opened connections (load balancer pools) would otherwise hold the
            // shutdown until handshake_timeout: close them when the closing starts.
            self.core.drain_at = Some(close_at);
        }
        // Connections still sending their request get 503 when it completes (see on_request).
    }

    /// Not a byte has arrived yet (not even a PROXY header).
    fn sent_nothing(&self) -> bool {
        match &self.input {
            Input::Proxy(reader) => reader.buffered() == 0,
            Input::Request(reader) => self.core.first_read && reader.buffered() == 0,
            _ => false,
        }
    }

    /// Closed for good: run `on_close` (if it was opened) and leave topics.
    pub fn finalize(&mut self, ctx: &mut Ctx) {
        let core = &mut self.core;
        core.shared.open.store(false, Ordering::Release);
        for topic in std::mem::take(&mut core.topics) {
            ctx.topics.unsubscribe(&topic, core.id);
        }
        if core.opened {
            ctx.stats.open.fetch_sub(1, Ordering::Relaxed);
            let mut info = core.close_info.take().unwrap_or(CloseInfo {
                code: 1006,
                reason: String::new(),
                clean: false,
            });
            info.clean = core.close_sent && core.close_received;
            core.opened = false;
            core.close_sent = true;
            let handler = ctx.handler.clone();
            handler.on_close(&mut Conn { core, ctx }, &info);
        }
        core.out.clear();
    }
}

fn request_reader(ctx: &Ctx) -> RequestReader {
    RequestReader::new(handshake::Limits {
        max_header_bytes: ctx.shared.opts.max_header_bytes,
        max_headers: ctx.shared.opts.max_headers,
    })
}

fn shutting_down_rejection(peer: SocketAddr) -> Rejection {
    let mut r = Rejection::new(
        RejectKind::ShuttingDown,
        503,
        "503 Service Unavailable: server shutting down\n",
        format!("{peer}: upgrade refused, server shutting down"),
    );
    r.headers.push(("Retry-After".into(), "1".into()));
    r
}

impl Core {
    fn last_read_deadline(&self, ctx: &Ctx) -> Instant {
        self.last_read.max(ctx.now) + ctx.shared.opts.handshake_timeout
    }

    fn apply_proxy_header(&mut self, header: &ProxyHeader, ctx: &Ctx) -> Result<(), Rejection> {
        let trusted = &ctx.shared.opts.trusted_proxies;
        if !trusted.contains(self.peer.ip()) {
            return Err(Rejection::new(
                RejectKind::Proxy,
                400,
                "400 Bad Request: PROXY protocol header from an untrusted address\n",
                format!(
                    "{}: PROXY protocol header refused: {} is not in trusted_proxies",
                    self.peer,
                    self.peer.ip()
                ),
            ));
        }
        if let Some(source) = header.source() {
            self.remote = source;
        }
        Ok(())
    }

    /// A complete request: answer it or move to the frame phase.
    fn on_request(&mut self, request: Request, early: &mut [u8], ctx: &mut Ctx) -> Input {
        let opts = &ctx.shared.opts;
        let forwarded = crate::net_trust::client_address_with(
            self.remote.ip(),
            &request.headers,
            &opts.trusted_proxies,
            opts.forwarded_header,
        );
        if forwarded != self.remote.ip() {
            self.remote = SocketAddr::new(forwarded, 0);
        }
        let policy = handshake::Policy {
            paths: &opts.paths,
            allowed_origins: &opts.allowed_origins,
            subprotocols: &opts.subprotocols,
            health_path: opts.health_path.as_deref(),
        };
        let draining = ctx.shared.is_draining();
        match handshake::route(&request, &policy) {
            Err(r) => {
                self.reject(&r, ctx);
                Input::Discard
            }
            Ok(Route::Health) => {
                let (status, body): (u16, &[u8]) = if draining {
                    (503, b"shutting down\n")
                } else {
                    (200, b"ok\n")
                };
                let mut buf = Vec::new();
                let body = if request.method == "HEAD" {
                    &[][..]
                } else {
                    body
                };
                handshake::write_response(&mut buf, status, "text/plain; charset=utf-8", &[], body);
                self.respond_and_linger(&buf, ctx);
                Input::Discard
            }
            Ok(Route::Http) => {
                let answer = ctx.handler.on_http(&HttpRequest {
                    method: &request.method,
                    path: &request.path,
                    query: request.query.as_deref(),
                    headers: &request.headers,
                    remote_addr: self.remote,
                });
                if let Some(resp) = answer {
                    let mut buf = Vec::new();
                    let headers: Vec<_> = resp
                        .headers
                        .into_iter()
                        .filter(|(k, v)| handshake::valid_header(k, v))
                        .collect();
                    handshake::write_response(
                        &mut buf,
                        resp.status,
                        &resp.content_type,
                        &headers,
                        &resp.body,
                    );
                    self.respond_and_linger(&buf, ctx);
                } else if handshake::path_served(&request.path, &ctx.shared.opts.paths) {
                    let mut r = Rejection::new(
                        RejectKind::NotUpgrade,
                        426,
                        "426 Upgrade Required: this is a WebSocket endpoint; connect with a WebSocket client\n",
                        format!(
                            "{}: plain HTTP {} {} on a WebSocket path (no Upgrade or Sec-WebSocket-Key headers)",
                            self.remote, request.method, request.path
                        ),
                    );
                    r.headers.push(("Upgrade".into(), "websocket".into()));
                    r.headers
                        .push(("Sec-WebSocket-Version".into(), "13".into()));
                    self.reject(&r, ctx);
                } else {
                    let r = Rejection::new(
                        RejectKind::PathNotFound,
                        404,
                        "404 Not Found\n",
                        format!(
                            "{}: {} {} is not served (option paths)",
                            self.remote, request.method, request.path
                        ),
                    );
                    self.reject(&r, ctx);
                }
                Input::Discard
            }
            Ok(Route::Upgrade(upgrade)) => {
                if draining {
                    self.reject(&shutting_down_rejection(self.remote), ctx);
                    return Input::Discard;
                }
                let decision = ctx.handler.on_upgrade(&UpgradeRequest {
                    id: self.id,
                    method: &request.method,
                    path: &request.path,
                    query: request.query.as_deref(),
                    headers: &request.headers,
                    remote_addr: self.remote,
                    offered_protocols: &upgrade.offered_protocols,
                    subprotocol: upgrade.subprotocol.as_deref(),
                    origin: upgrade.origin.as_deref(),
                });
                if decision == Decision::Defer {
                    self.read_paused = true;
                    return Input::Deferred(Box::new(Deferred {
                        request,
                        upgrade,
                        early: early.to_vec(),
                    }));
                }
                self.decided(decision, &request, upgrade, ctx)
            }
        }
    }

    fn decided(
        &mut self,
        decision: Decision,
        request: &Request,
        upgrade: handshake::Upgrade,
        ctx: &mut Ctx,
    ) -> Input {
        match decision {
            Decision::Accept(accept) => self.accept(accept, request, upgrade, ctx),
            Decision::Reject(reject) => {
                self.reject(&host_rejection(reject, self.remote, &request.path), ctx);
                Input::Discard
            }
            Decision::Defer => {
                // Deferring twice is meaningless; treat it as "still undecided".
                self.read_paused = true;
                Input::Deferred(Box::new(Deferred {
                    request: request.clone(),
                    upgrade,
                    early: Vec::new(),
                }))
            }
        }
    }

    fn accept(
        &mut self,
        accept: Accept,
        request: &Request,
        upgrade: handshake::Upgrade,
        ctx: &mut Ctx,
    ) -> Input {
        let subprotocol = match accept.subprotocol {
            Some(p) if upgrade.offered_protocols.contains(&p) => Some(p),
            Some(p) => {
                log::error!(
                    "{}: handler chose subprotocol {p:?}, which the client did not offer ({:?}); using {:?}",
                    self.remote,
                    upgrade.offered_protocols,
                    upgrade.subprotocol
                );
                upgrade.subprotocol
            }
            None => upgrade.subprotocol,
        };
        let negotiated = ctx
            .shared
            .opts
            .compression_config()
            .zip(upgrade.extensions.as_deref())
            .and_then(|(cfg, offers)| deflate::negotiate(offers, &cfg));
        let mut headers: Vec<_> = accept
            .headers
            .into_iter()
            .filter(|(k, v)| {
                let ok = handshake::valid_header(k, v);
                if !ok {
                    log::error!(
                        "{}: handler's response header {k:?} is not valid HTTP; dropped",
                        self.remote
                    );
                }
                ok
            })
            .collect();
        if let Some((params, value)) = negotiated {
            headers.retain(|(k, _)| !k.eq_ignore_ascii_case("Sec-WebSocket-Extensions"));
            headers.push(("Sec-WebSocket-Extensions".into(), value));
            self.deflate = Some(Box::new(ConnDeflate {
                params,
                deflater: None,
                inflater: None,
            }));
            self.shared.compressed.store(true, Ordering::Release);
        }
        let mut response = Vec::with_capacity(160);
        handshake::write_accept(
            &mut response,
            &upgrade.accept,
            subprotocol.as_deref(),
            &headers,
        );
        self.write_raw(&response, ctx);
        let opts = &ctx.shared.opts;
        self.info = Some(Box::new(OpenInfo {
            path: request.path.clone(),
            query: request.query.clone(),
            subprotocol,
            headers: request.headers.clone(),
        }));
        self.opened = true;
        self.deadline = None;
        self.next_ping = (!opts.ping_interval.is_zero()).then(|| ctx.now + opts.ping_interval);
        self.shared.open.store(true, Ordering::Release);
        ctx.stats.upgraded.fetch_add(1, Ordering::Relaxed);
        ctx.stats.open.fetch_add(1, Ordering::Relaxed);
        let handler = ctx.handler.clone();
        handler.on_open(&mut Conn { core: self, ctx });
        if let Some(info) = self.info.as_mut() {
            info.headers = Vec::new();
        }
        Input::Frames(Decoder::new(message::Limits {
            max_frame_size: ctx.shared.opts.max_frame_size,
            max_message_size: ctx.shared.opts.max_message_size,
            allow_rsv1: self.deflate.is_some(),
        }))
    }

    /// Refuse with an HTTP response that says why, log it, count it.
    fn reject(&mut self, r: &Rejection, ctx: &mut Ctx) {
        ctx.stats.count_reject(r.kind);
        if matches!(r.kind, RejectKind::NotUpgrade | RejectKind::PathNotFound) {
            // Browsers fetch /favicon.ico, scanners probe paths: not worth an info line.
            log::debug!(
                "request refused ({} {}): {}",
                r.status,
                r.kind.name(),
                r.log
            );
        } else {
            log::info!(
                "upgrade refused ({} {}): {}",
                r.status,
                r.kind.name(),
                r.log
            );
        }
        let mut buf = Vec::new();
        handshake::write_rejection(&mut buf, r);
        self.respond_and_linger(&buf, ctx);
    }

    fn respond_and_linger(&mut self, response: &[u8], ctx: &mut Ctx) {
        self.write_raw(response, ctx);
        self.shutdown_write = true;
        // Keep reading (and discarding) until the client closes or close_timeout passes, so
        // request bytes still arriving don't turn our close into a reset that destroys the
        // response in flight.
        self.deadline = Some(ctx.now + ctx.shared.opts.close_timeout);
    }

    fn on_event(&mut self, ev: Event<'_>, ctx: &mut Ctx) {
        match ev {
            Event::Deflated { text, data } => {
                if self.close_sent {
                    return;
                }
                let Some(d) = self.deflate.as_mut() else {
                    return self.fail(
                        protocol_error(1002, "RSV1 set without permessage-deflate"),
                        ctx,
                    );
                };
                let mut out = std::mem::take(&mut ctx.zip.inflated);
                let limit = ctx.shared.opts.max_message_size;
                let res = if d.params.client_no_context_takeover {
                    ctx.zip
                        .inflater
                        .get_or_insert_with(Inflater::default)
                        .inflate(data, limit, &mut out, true)
                } else {
                    d.inflater
                        .get_or_insert_with(Inflater::default)
                        .inflate(data, limit, &mut out, false)
                };
                match res {
                    Ok(()) => match message::inflated_message(text, &out) {
                        Ok(msg) => self.on_event(Event::Message(msg), ctx),
                        Err(e) => self.fail(e, ctx),
                    },
                    Err(InflateError::TooBig) => self.fail(
                        protocol_error(1009, "message too big (after inflating)"),
                        ctx,
                    ),
                    Err(InflateError::Invalid) => {
                        self.fail(protocol_error(1007, "invalid compressed data"), ctx)
                    }
                }
                if out.capacity() <= ZIP_KEEP {
                    out.clear();
                    ctx.zip.inflated = out;
                }
            }
            Event::Message(msg) => {
                if self.close_sent {
                    return;
                }
                ctx.stats.messages_in.fetch_add(1, Ordering::Relaxed);
                let handler = ctx.handler.clone();
                handler.on_message(&mut Conn { core: self, ctx }, msg);
            }
            Event::Ping(payload) => {
                if !self.close_sent {
                    self.send_frame(OpCode::Pong, payload, true, ctx);
                }
            }
            Event::Pong(payload) => {
                if !self.close_sent {
                    let handler = ctx.handler.clone();
                    handler.on_pong(&mut Conn { core: self, ctx }, payload);
                }
            }
            Event::Close { code, reason } => {
                self.close_received = true;
                if self.close_info.is_none() {
                    self.close_info = Some(CloseInfo {
                        code: code.unwrap_or(1005),
                        reason: reason.to_string(),
                        clean: false,
                    });
                }
                if !self.close_sent {
                    // Echo the peer's code, after whatever is still queued.
                    self.send_frame(OpCode::Close, &frame::close_payload(code, ""), true, ctx);
                    self.mark_closing(ctx);
                }
                // Both close frames exchanged: the server closes TCP first (RFC 6455 §7.1.1).
                self.finish = Finish::WhenFlushed;
            }
        }
    }

    /// A protocol violation: send the close code that names it, then wait for the client.
    fn fail(&mut self, e: message::ProtocolError, ctx: &mut Ctx) {
        log::debug!(
            "{}: protocol error {} ({})",
            self.remote,
            e.close_code,
            e.reason
        );
        ctx.stats.protocol_errors.fetch_add(1, Ordering::Relaxed);
        if !self.close_sent {
            if self.close_info.is_none() {
                self.close_info = Some(CloseInfo {
                    code: e.close_code,
                    reason: e.reason.to_string(),
                    clean: false,
                });
            }
            let payload = frame::close_payload(Some(e.close_code), e.reason);
            self.send_frame(OpCode::Close, &payload, true, ctx);
            self.mark_closing(ctx);
        }
        // Nothing more will be read from this stream; stop after the close frame is out.
        self.shutdown_write = true;
        self.finish = Finish::WhenFlushed;
    }

    fn mark_closing(&mut self, ctx: &Ctx) {
        self.close_sent = true;
        self.shared.open.store(false, Ordering::Release);
        self.deadline = Some(ctx.now + ctx.shared.opts.close_timeout);
    }

    /// Bytes outside any frame (HTTP responses).
    fn write_raw(&mut self, bytes: &[u8], ctx: &mut Ctx) {
        if self.out.is_empty() && ctx.cork_slot == Some(self.id.slot()) {
            ctx.cork.extend_from_slice(bytes);
        } else {
            self.enqueue_copy(bytes, ctx);
        }
    }

    fn enqueue_copy(&mut self, bytes: &[u8], ctx: &mut Ctx) {
        self.out.push_copy(bytes);
        self.shared.queued.fetch_add(bytes.len(), Ordering::Relaxed);
        self.mark_dirty(ctx);
    }

    /// A frame encoded on another thread (its bytes are already counted in `queued`).
    pub fn enqueue_frame(&mut self, chunk: Chunk, ctx: &mut Ctx) {
        self.out.push(chunk);
        self.mark_dirty(ctx);
    }

    pub fn mark_dirty(&mut self, ctx: &mut Ctx) {
        if !self.dirty {
            self.dirty = true;
            ctx.dirty.push(self.id.slot());
        }
    }

    /// Is there room for `len` more bytes? Applies the policy when there is not.
    fn admit(&mut self, len: usize, ctx: &mut Ctx) -> bool {
        let queued = self.shared.queued.load(Ordering::Relaxed);
        let max = ctx.shared.opts.max_backpressure;
        if queued == 0 || queued + len <= max {
            return true;
        }
        ctx.stats
            .backpressure_dropped
            .fetch_add(1, Ordering::Relaxed);
        if ctx.shared.opts.backpressure_policy == BackpressurePolicy::Close {
            log::info!(
                "{}: {} bytes queued for a client that does not read (max_backpressure {}); closing with 1008",
                self.remote,
                queued,
                max
            );
            Conn { core: self, ctx }.close(1008, "backpressure limit exceeded");
        }
        false
    }

    pub fn send_frame(
        &mut self,
        opcode: OpCode,
        payload: &[u8],
        control: bool,
        ctx: &mut Ctx,
    ) -> SendStatus {
        if !control && payload.len() >= ctx.shared.opts.compression_threshold {
            if let Some(d) = self.deflate.as_mut().filter(|d| d.params.compresses()) {
                let compressed = ctx
                    .zip
                    .compress(d, ctx.shared.opts.compression_level, payload);
                let status = self.send_frame_raw(opcode, true, &compressed, control, ctx);
                ctx.zip.give_back_out(compressed);
                return status;
            }
        }
        self.send_frame_raw(opcode, false, payload, control, ctx)
    }

    /// A data message that arrived as a complete (uncompressed) frame from another thread:
    /// compressed here if negotiated, else queued as it is. Its bytes are counted in `queued`.
    pub fn send_prepared(&mut self, frame: Chunk, ctx: &mut Ctx) {
        if !self.recompress(frame.bytes(), ctx) {
            ctx.stats.messages_out.fetch_add(1, Ordering::Relaxed);
            self.enqueue_frame(frame, ctx);
        }
    }

    /// `send_prepared` of a frame borrowed from a batch (copied into the queue).
    pub fn send_prepared_copy(&mut self, frame: &[u8], ctx: &mut Ctx) {
        if !self.recompress(frame, ctx) {
            ctx.stats.messages_out.fetch_add(1, Ordering::Relaxed);
            self.out.push_copy(frame);
            self.mark_dirty(ctx);
        }
    }

    /// One connection's frames from a polling thread's batch (`sends`, located in `frames`;
    /// their bytes are counted in `queued`): written at once, frames lying back to back
    /// joined into one iovec, when nothing is queued ahead of them. Only what the socket does
    /// not take is copied into the queue.
    pub fn send_prepared_batch(
        &mut self,
        frames: &[u8],
        sends: &[BatchedFrame],
        ctx: &mut Ctx,
        w: &mut impl Write,
    ) {
        if self.deflate.is_some() || !self.out.is_empty() || ctx.cork_slot == Some(self.id.slot()) {
            for f in sends {
                self.send_prepared_copy(&frames[f.start..f.start + f.len], ctx);
            }
            return;
        }
        ctx.stats
            .messages_out
            .fetch_add(sends.len() as u64, Ordering::Relaxed);
        let mut spans = cork::spans(frames, sends).peekable();
        let mut written = 0;
        // Whether the socket took everything.
        let complete = 'writing: loop {
            if spans.peek().is_none() {
                break true;
            }
            let mut iov = [IoSlice::new(&[]); MAX_IOV];
            let (mut n, mut offered) = (0, 0);
            for (v, span) in iov.iter_mut().zip(spans.by_ref()) {
                *v = IoSlice::new(span);
                n += 1;
                offered += span.len();
            }
            loop {
                match w.write_vectored(&iov[..n]) {
                    Ok(k) => {
                        written += k;
                        if k < offered {
                            break 'writing false;
                        }
                        break;
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break 'writing false,
                    Err(_) => {
                        // Let the worker's flush see the error and remove the connection.
                        let total: usize = sends.iter().map(|f| f.len).sum();
                        self.shared.queued.fetch_sub(total, Ordering::Relaxed);
                        self.finish = Finish::Now;
                        self.mark_dirty(ctx);
                        return;
                    }
                }
            }
        };
        ctx.stats
            .bytes_out
            .fetch_add(written as u64, Ordering::Relaxed);
        self.shared.queued.fetch_sub(written, Ordering::Relaxed);
        if !complete {
            for span in cork::spans(frames, sends) {
                let skip = written.min(span.len());
                written -= skip;
                self.out.push_copy(&span[skip..]);
            }
            self.mark_dirty(ctx);
        }
    }

    /// With permessage-deflate, a frame encoded elsewhere is sent compressed instead.
    fn recompress(&mut self, bytes: &[u8], ctx: &mut Ctx) -> bool {
        if self.deflate.is_none() {
            return false;
        }
        let Some((opcode, payload)) = frame::split_server_frame(bytes) else {
            return false;
        };
        self.shared.queued.fetch_sub(bytes.len(), Ordering::Relaxed);
        self.send_frame(opcode, payload, false, ctx);
        true
    }

    fn send_frame_raw(
        &mut self,
        opcode: OpCode,
        rsv1: bool,
        payload: &[u8],
        control: bool,
        ctx: &mut Ctx,
    ) -> SendStatus {
        let mut header = [0u8; frame::MAX_HEADER_LEN];
        let hlen =
            frame::encode_header(&mut header, true, rsv1, opcode, payload.len() as u64, None);
        let len = hlen + payload.len();
        if !control {
            if !self.takes_messages() {
                return SendStatus::Gone;
            }
            if !self.admit(len, ctx) {
                return SendStatus::Dropped;
            }
            ctx.stats.messages_out.fetch_add(1, Ordering::Relaxed);
        }
        if self.out.is_empty() && ctx.cork_slot == Some(self.id.slot()) {
            ctx.cork.extend_from_slice(&header[..hlen]);
            ctx.cork.extend_from_slice(payload);
        } else {
            self.shared.queued.fetch_add(len, Ordering::Relaxed);
            self.out.push_frame(&header[..hlen], payload);
            self.mark_dirty(ctx);
        }
        if self.blocked {
            SendStatus::Queued
        } else {
            SendStatus::Sent
        }
    }

    /// Send frames shared by consecutive publishes or broadcasts (`joined`: the same bytes
    /// back to back). A connection with nothing queued that sends them as they are (no
    /// compression) takes all of them in one write; otherwise each goes as `send_shared`
    /// sends it, so backpressure and compression apply per message.
    pub fn send_shared_run(
        &mut self,
        frames: &[Arc<[u8]>],
        joined: &Arc<[u8]>,
        caches: &mut [CompressedCopies],
        ctx: &mut Ctx,
        w: &mut impl Write,
    ) {
        if frames.len() > 1 && self.takes_shared_write(ctx) {
            self.enqueue_shared(joined, frames.len() as u64, ctx, w);
            return;
        }
        for (frame, cache) in frames.iter().zip(caches) {
            self.send_shared(frame, cache, ctx, w);
        }
    }

    /// Whether shared frames go to this connection as they are, in one write now: it takes
    /// messages, doesn't compress, and has nothing queued or corked ahead of them. Such a
    /// write may be made by the caller (`begin_shared_write`, then `end_shared_write`).
    pub fn takes_shared_write(&self, ctx: &Ctx) -> bool {
        self.takes_messages()
            && !self.deflate.as_ref().is_some_and(|d| d.params.compresses())
            && self.out.is_empty()
            && self.shared.queued.load(Ordering::Relaxed) == 0
            && ctx.cork_slot != Some(self.id.slot())
    }

    /// Send a frame shared by a publish or broadcast. Connections that compress without
    /// server context takeover share one compressed frame per window size (`cache`, kept by
    /// the caller for the duration of one publish); with context takeover each connection's
    /// bytes differ, so it compresses its own.
    pub fn send_shared(
        &mut self,
        frame: &Arc<[u8]>,
        cache: &mut CompressedCopies,
        ctx: &mut Ctx,
        w: &mut impl Write,
    ) -> SendStatus {
        if !self.takes_messages() {
            return SendStatus::Gone;
        }
        if let Some(d) = self.deflate.as_mut().filter(|d| d.params.compresses()) {
            if let Some((opcode, payload)) = frame::split_server_frame(frame) {
                if payload.len() >= ctx.shared.opts.compression_threshold {
                    if !d.params.server_no_context_takeover {
                        return self.send_frame(opcode, payload, false, ctx);
                    }
                    let bits = d.params.server_window_bits;
                    let shared = match cache.iter().find(|(b, _)| *b == bits) {
                        Some((_, f)) => f.clone(),
                        None => {
                            let compressed =
                                ctx.zip
                                    .compress(d, ctx.shared.opts.compression_level, payload);
                            let mut header = [0u8; frame::MAX_HEADER_LEN];
                            let hlen = frame::encode_header(
                                &mut header,
                                true,
                                true,
                                opcode,
                                compressed.len() as u64,
                                None,
                            );
                            let mut v = Vec::with_capacity(hlen + compressed.len());
                            v.extend_from_slice(&header[..hlen]);
                            v.extend_from_slice(&compressed);
                            ctx.zip.give_back_out(compressed);
                            let f: Arc<[u8]> = Arc::from(v);
                            cache.push((bits, f.clone()));
                            f
                        }
                    };
                    return self.enqueue_shared(&shared, 1, ctx, w);
                }
            }
        }
        self.enqueue_shared(frame, 1, ctx, w)
    }

    /// Write a shared frame at once when nothing is queued ahead of it (no allocation, no
    /// flush bookkeeping: a publish to 10,000 idle subscribers is 10,000 plain writes);
    /// queue only what the socket did not take. `frame` may hold several `messages` back to
    /// back.
    fn enqueue_shared(
        &mut self,
        frame: &Arc<[u8]>,
        messages: u64,
        ctx: &mut Ctx,
        w: &mut impl Write,
    ) -> SendStatus {
        if !self.begin_shared_write(frame.len(), messages, ctx) {
            return SendStatus::Dropped;
        }
        let written = if self.out.is_empty() && ctx.cork_slot != Some(self.id.slot()) {
            write_some(w, frame)
        } else {
            Ok(0)
        };
        self.end_shared_write(frame, written, ctx)
    }

    /// Admit a shared write of `len` bytes holding `messages` and count them sent; false
    /// if the backpressure policy dropped it.
    pub fn begin_shared_write(&mut self, len: usize, messages: u64, ctx: &mut Ctx) -> bool {
        if !self.admit(len, ctx) {
            return false;
        }
        ctx.stats
            .messages_out
            .fetch_add(messages, Ordering::Relaxed);
        true
    }

    /// After writing the start of a shared `frame` straight to the socket (`written`, or
    /// the write's error): queue what the socket did not take.
    pub fn end_shared_write(
        &mut self,
        frame: &Arc<[u8]>,
        written: io::Result<usize>,
        ctx: &mut Ctx,
    ) -> SendStatus {
        let written = match written {
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) =>
            {
                0
            }
            Err(_) => {
                // Let the worker's flush see the error and remove the connection.
                self.finish = Finish::Now;
                self.mark_dirty(ctx);
                return SendStatus::Gone;
            }
        };
        ctx.stats
            .bytes_out
            .fetch_add(written as u64, Ordering::Relaxed);
        if written < frame.len() {
            self.shared
                .queued
                .fetch_add(frame.len() - written, Ordering::Relaxed);
            self.out.push_partial(Chunk::Shared(frame.clone()), written);
            self.mark_dirty(ctx);
        }
        if self.blocked {
            SendStatus::Queued
        } else {
            SendStatus::Sent
        }
    }

    /// Write the cork (if this connection owns it) and the queue. Returns true when a
    /// previously blocked queue just drained (the caller then fires `on_drain`).
    pub fn flush(&mut self, w: &mut impl Write, ctx: &mut Ctx) -> io::Result<bool> {
        if ctx.cork_slot == Some(self.id.slot()) && !ctx.cork.is_empty() {
            let mut written = 0;
            if self.out.is_empty() {
                match write_some(w, &ctx.cork) {
                    Ok(n) => written = n,
                    Err(e) => {
                        ctx.cork.clear();
                        return Err(e);
                    }
                }
            }
            ctx.stats
                .bytes_out
                .fetch_add(written as u64, Ordering::Relaxed);
            let rest = &ctx.cork[written..];
            if !rest.is_empty() {
                self.out.push_copy(rest);
                self.shared.queued.fetch_add(rest.len(), Ordering::Relaxed);
            }
            ctx.cork.clear();
            if ctx.cork.capacity() > CORK_KEEP {
                ctx.cork = Vec::new();
            }
        }
        let mut drained = false;
        if !self.out.is_empty() {
            let n = self.out.flush(w)?;
            ctx.stats.bytes_out.fetch_add(n as u64, Ordering::Relaxed);
            self.shared.queued.fetch_sub(n, Ordering::Relaxed);
            if self.out.is_empty() {
                drained = self.blocked;
                self.blocked = false;
                self.shared.blocked.store(false, Ordering::Relaxed);
            } else if !self.blocked {
                self.blocked = true;
                self.shared.blocked.store(true, Ordering::Relaxed);
                ctx.stats
                    .backpressure_queued
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
        Ok(drained && self.takes_messages())
    }

    pub fn is_open(&self) -> bool {
        self.opened
    }

    /// Open, and no close frame of ours sent: data messages may still be sent.
    fn takes_messages(&self) -> bool {
        self.opened && !self.close_sent
    }
}

/// Write as much of `buf` as the socket takes now: the bytes taken (a full socket stops the
/// write, not an error), or the error that ended it (`WriteZero` if it took nothing, as
/// `OutQueue::flush` reports).
fn write_some(w: &mut impl Write, buf: &[u8]) -> io::Result<usize> {
    let mut written = 0;
    while written < buf.len() {
        match w.write(&buf[written..]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => written += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) => return Err(e),
        }
    }
    Ok(written)
}

/// One shared frame compressed once per window size, for the connections that compress
/// without server context takeover.
pub(crate) type CompressedCopies = Vec<(u8, Arc<[u8]>)>;

fn protocol_error(close_code: u16, reason: &'static str) -> message::ProtocolError {
    message::ProtocolError { close_code, reason }
}

fn host_rejection(reject: Reject, remote: SocketAddr, path: &str) -> Rejection {
    let status = if (400..=599).contains(&reject.status) {
        reject.status
    } else {
        log::error!(
            "handler rejected with status {}, which is not 4xx/5xx; sending 403",
            reject.status
        );
        403
    };
    let mut body = reject.body;
    if !body.ends_with('\n') {
        body.push('\n');
    }
    let mut r = Rejection::new(
        RejectKind::RejectedByHost,
        status,
        body,
        format!("{remote}: upgrade of {path} rejected by the application with {status}"),
    );
    r.headers = reject
        .headers
        .into_iter()
        .filter(|(k, v)| handshake::valid_header(k, v))
        .collect();
    r
}

/// The connection a callback runs for. Sends to it from inside a callback are corked and
/// written once per read batch.
pub struct Conn<'a> {
    pub(crate) core: &'a mut Core,
    pub(crate) ctx: &'a mut Ctx,
}

impl Conn<'_> {
    pub fn id(&self) -> ConnId {
        self.core.id
    }
    /// The client's address (PROXY header or trusted forwarding headers applied).
    pub fn remote_addr(&self) -> SocketAddr {
        self.core.remote
    }
    /// The address of the TCP peer (the proxy, when there is one).
    pub fn peer_addr(&self) -> SocketAddr {
        self.core.peer
    }
    pub fn path(&self) -> &str {
        self.core.info.as_ref().map_or("", |i| &i.path)
    }
    pub fn query(&self) -> Option<&str> {
        self.core.info.as_ref().and_then(|i| i.query.as_deref())
    }
    pub fn subprotocol(&self) -> Option<&str> {
        self.core
            .info
            .as_ref()
            .and_then(|i| i.subprotocol.as_deref())
    }
    /// permessage-deflate was negotiated with this client.
    pub fn compressed(&self) -> bool {
        self.core.deflate.is_some()
    }
    /// The upgrade request's headers; available during `on_open` only (empty afterwards,
    /// so open connections don't hold them).
    pub fn request_headers(&self) -> &[(String, String)] {
        self.core.info.as_ref().map_or(&[], |i| &i.headers)
    }
    pub fn send(&mut self, msg: Message<'_>) -> SendStatus {
        match msg {
            Message::Text(t) => self.send_text(t),
            Message::Binary(b) => self.send_binary(b),
        }
    }
    pub fn send_text(&mut self, text: &str) -> SendStatus {
        self.core
            .send_frame(OpCode::Text, text.as_bytes(), false, self.ctx)
    }
    pub fn send_binary(&mut self, data: &[u8]) -> SendStatus {
        self.core.send_frame(OpCode::Binary, data, false, self.ctx)
    }
    /// Ping with up to 125 bytes of payload.
    pub fn ping(&mut self, payload: &[u8]) -> SendStatus {
        if !self.core.opened || self.core.close_sent {
            return SendStatus::Gone;
        }
        let payload = &payload[..payload.len().min(125)];
        self.core.send_frame(OpCode::Ping, payload, true, self.ctx)
    }
    /// Start the close handshake (after everything queued). Invalid codes become 1000.
    pub fn close(&mut self, code: u16, reason: &str) {
        let core = &mut *self.core;
        if !core.opened || core.close_sent {
            return;
        }
        let code = if frame::is_valid_close_code(code) {
            code
        } else {
            1000
        };
        core.close_info = Some(CloseInfo {
            code,
            reason: reason.to_string(),
            clean: false,
        });
        let payload = frame::close_payload(Some(code), reason);
        core.send_frame(OpCode::Close, &payload, true, self.ctx);
        core.mark_closing(self.ctx);
    }
    /// Drop the connection at once, without a close handshake.
    pub fn terminate(&mut self) {
        self.core.finish = Finish::Now;
        self.core.shared.open.store(false, Ordering::Release);
    }
    /// Bytes accepted for this connection but not yet written to the socket.
    pub fn buffered_amount(&self) -> usize {
        self.core.shared.queued.load(Ordering::Relaxed)
            + if self.ctx.cork_slot == Some(self.core.id.slot()) {
                self.ctx.cork.len()
            } else {
                0
            }
    }
    pub fn subscribe(&mut self, topic: &str) {
        if self.core.topics.iter().any(|t| &**t == topic) {
            return;
        }
        let t = self.ctx.topics.subscribe(topic, self.core.id);
        self.core.topics.push(t);
    }
    pub fn unsubscribe(&mut self, topic: &str) {
        if let Some(i) = self.core.topics.iter().position(|t| &**t == topic) {
            let t = self.core.topics.swap_remove(i);
            self.ctx.topics.unsubscribe(&t, self.core.id);
        }
    }
    pub fn is_subscribed(&self, topic: &str) -> bool {
        self.core.topics.iter().any(|t| &**t == topic)
    }
    /// Host data for this connection (dropped when the connection is gone).
    pub fn set_data(&mut self, data: Box<dyn Any + Send>) {
        self.core.user_data = Some(data);
    }
    pub fn data<T: 'static>(&self) -> Option<&T> {
        self.core.user_data.as_ref()?.downcast_ref()
    }
    pub fn data_mut<T: 'static>(&mut self) -> Option<&mut T> {
        self.core.user_data.as_mut()?.downcast_mut()
    }
    pub fn take_data(&mut self) -> Option<Box<dyn Any + Send>> {
        self.core.user_data.take()
    }
    /// The server, for sends to other connections, publish, broadcast and stats.
    pub fn server(&self) -> crate::server::ServerHandle {
        crate::server::ServerHandle::from_shared(self.ctx.shared.clone())
    }
}

#[cfg(test)]
mod tests {
    //! The state machine driven by hand: bytes and time in, bytes and timers out.
    use super::*;
    use crate::handler::Handler;
    use crate::options::Options;
    use crate::server::Shared;
    use std::time::Duration;

    struct Echo;
    impl Handler for Echo {
        fn on_message(&self, conn: &mut Conn<'_>, msg: Message<'_>) {
            conn.send(msg);
        }
    }

    fn ctx(opts: Options) -> (Ctx, mio::Poll) {
        let (shared, poll) = Shared::for_tests(opts);
        let stats = shared.workers[0].stats.clone();
        let ctx = Ctx {
            now: Instant::now(),
            shared,
            handler: Arc::new(Echo),
            stats,
            cork: Vec::new(),
            cork_slot: None,
            dirty: Vec::new(),
            resume: Vec::new(),
            topics: Topics::default(),
            zip: WorkerDeflate::default(),
        };
        (ctx, poll)
    }

    fn conn(ctx: &Ctx) -> ConnState {
        let id = ConnId::new(0, 0, 1);
        let shared = Arc::new(ConnShared {
            id,
            open: AtomicBool::new(false),
            queued: AtomicUsize::new(0),
            compressed: AtomicBool::new(false),
            blocked: AtomicBool::new(false),
        });
        ConnState::new(id, "127.0.0.1:5000".parse().unwrap(), shared, ctx)
    }

    /// Feed bytes as the worker does (cork on), then collect what it would write.
    fn feed(c: &mut ConnState, ctx: &mut Ctx, bytes: &[u8]) -> Vec<u8> {
        let mut data = bytes.to_vec();
        ctx.cork_slot = Some(0);
        c.on_read(&mut data, ctx);
        let mut out = Vec::new();
        c.core_mut().flush(&mut out, ctx).unwrap();
        ctx.cork_slot = None;
        out
    }

    fn masked(opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![0x80 | opcode, 0x80 | payload.len() as u8, 1, 2, 3, 4];
        f.extend(
            payload
                .iter()
                .enumerate()
                .map(|(i, b)| b ^ [1, 2, 3, 4][i % 4]),
        );
        f
    }

    const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

    #[test]
    fn handshake_echo_and_timers_without_a_socket_or_clock() {
        let mut opts = Options::default();
        opts.set("ping_interval", "30s").unwrap();
        opts.set("idle_timeout", "120s").unwrap();
        opts.set("handshake_timeout", "10s").unwrap();
        let (mut ctx, _poll) = ctx(opts);
        let start = ctx.now;
        let mut c = conn(&ctx);
        assert_eq!(
            c.next_deadline(&ctx),
            Some(start + Duration::from_secs(10)),
            "handshake deadline"
        );

        // Request and a frame in one read: 101, then the echo, written together.
        let mut input = REQUEST.to_vec();
        input.extend(masked(1, b"hi"));
        let out = feed(&mut c, &mut ctx, &input);
        let text = String::from_utf8_lossy(&out);
        assert!(
            text.starts_with("HTTP/1.1 101 Switching Protocols\r\n"),
            "{text}"
        );
        assert!(text.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo="));
        assert!(out.ends_with(&[0x81, 2, b'h', b'i']));
        assert_eq!(
            c.next_deadline(&ctx),
            Some(start + Duration::from_secs(30)),
            "next: the ping"
        );

        // 30 s later the timer sends a ping; nothing else is due before the next one.
        ctx.now = start + Duration::from_secs(30);
        c.on_timer(&mut ctx);
        let mut out = Vec::new();
        c.core_mut().flush(&mut out, &mut ctx).unwrap();
        assert_eq!(out, [0x89, 0]);
        assert_eq!(c.next_deadline(&ctx), Some(start + Duration::from_secs(60)));

        // Silent for 120 s: closed with 1001, then a close_timeout deadline applies.
        ctx.now = start + Duration::from_secs(120);
        c.on_timer(&mut ctx);
        let mut out = Vec::new();
        c.core_mut().flush(&mut out, &mut ctx).unwrap();
        assert_eq!(
            &out[..4],
            &[0x88, 14, 0x03, 0xE9],
            "close 1001 \"idle timeout\""
        );
        assert_eq!(
            c.next_deadline(&ctx),
            Some(ctx.now + Duration::from_secs(5))
        );
    }

    #[test]
    fn an_idle_connection_holds_no_buffers() {
        let (mut ctx, _poll) = ctx(Options::default());
        let mut c = conn(&ctx);
        feed(&mut c, &mut ctx, REQUEST);
        assert!(c.core().out.is_empty());
        // The per-connection state itself (the slab entry) stays small.
        let size = std::mem::size_of::<ConnState>();
        assert!(size <= 512, "ConnState is {size} bytes");
    }
}
