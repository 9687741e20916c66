//! The server: starts the workers, and the thread-safe handle hosts use to send, close,
//! publish, decide deferred upgrades, adopt sockets, read stats and shut down.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;

use crate::connection::ConnShared;
use crate::cork::{Cork, SendBatch, WakeState};
use crate::event_queue::EventQueue;
use crate::frame::{self, OpCode};
use crate::handler::{Accept, ConnId, Decision, Handler, Message, Reject, SendStatus};
use crate::handshake::RejectKind;
use crate::options::{BackpressurePolicy, OptionError, Options};
use crate::worker::{InlineWorker, Worker};

/// Why a server could not start.
#[derive(Debug)]
pub enum Error {
    Option(OptionError),
    Io { context: String, source: io::Error },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Option(e) => e.fmt(f),
            Error::Io { context, source } => write!(f, "{context}: {source}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Option(e) => Some(e),
            Error::Io { source, .. } => Some(source),
        }
    }
}

impl From<OptionError> for Error {
    fn from(e: OptionError) -> Self {
        Error::Option(e)
    }
}

/// Commands to a worker from other threads.
pub(crate) enum Cmd {
    Adopt {
        stream: mio::net::TcpStream,
        peer: SocketAddr,
        early: Vec<u8>,
    },
    Send {
        id: ConnId,
        frame: Vec<u8>,
    },
    Ping {
        id: ConnId,
        payload: Vec<u8>,
    },
    Close {
        id: ConnId,
        code: u16,
        reason: String,
    },
    Terminate {
        id: ConnId,
    },
    Subscribe {
        id: ConnId,
        topic: String,
    },
    Unsubscribe {
        id: ConnId,
        topic: String,
    },
    Publish {
        topic: Arc<str>,
        frame: Arc<[u8]>,
    },
    Broadcast {
        frame: Arc<[u8]>,
    },
    Decide {
        id: ConnId,
        decision: Decision,
    },
    Shutdown {
        started: Instant,
    },
    /// Messages sent by corked threads (see `cork`).
    SendBatch(SendBatch),
    /// A host buffer sent without a copy: the frame header, then the payload.
    SendExternal {
        id: ConnId,
        header: Vec<u8>,
        payload: Box<dyn AsRef<[u8]> + Send>,
    },
    SetData {
        id: ConnId,
        data: Box<dyn std::any::Any + Send>,
    },
    ResumeReading,
}

/// Counters of one worker; only that worker writes them.
#[derive(Default)]
pub(crate) struct WorkerStats {
    pub accepted: AtomicU64,
    pub upgraded: AtomicU64,
    pub open: AtomicU64,
    pub closed: AtomicU64,
    pub messages_in: AtomicU64,
    pub messages_out: AtomicU64,
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
    pub backpressure_queued: AtomicU64,
    pub backpressure_dropped: AtomicU64,
    pub protocol_errors: AtomicU64,
    pub rejected: [AtomicU64; RejectKind::ALL.len()],
    pub batched_writes: AtomicU64,
}

impl WorkerStats {
    pub fn count_reject(&self, kind: RejectKind) {
        let i = RejectKind::ALL.iter().position(|k| *k == kind).unwrap_or(0);
        self.rejected[i].fetch_add(1, Ordering::Relaxed);
    }
}

/// A snapshot of the server's counters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// WebSocket connections open now.
    pub open: u64,
    /// TCP connections accepted (or adopted) so far.
    pub accepted: u64,
    /// Upgrades completed so far.
    pub upgraded: u64,
    /// TCP connections closed so far.
    pub closed: u64,
    pub messages_in: u64,
    pub messages_out: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// Times a connection's queue started holding data for a slow client.
    pub backpressure_queued: u64,
    /// Messages refused because of `max_backpressure`.
    pub backpressure_dropped: u64,
    pub protocol_errors: u64,
    /// Refused handshakes by reason (`missing_upgrade`, `origin_not_allowed`, ...).
    pub rejected: Vec<(&'static str, u64)>,
    /// Fan-out writes to idle connections made through io_uring, in batches (0 where
    /// io_uring is off or unavailable: see the `io_uring` option).
    pub batched_writes: u64,
}

impl Stats {
    pub fn rejected(&self, reason: &str) -> u64 {
        self.rejected
            .iter()
            .find(|(k, _)| *k == reason)
            .map_or(0, |(_, n)| *n)
    }
}

pub(crate) struct WorkerRef {
    tx: Sender<Cmd>,
    waker: mio::Waker,
    /// One wake-up per inbox batch, deferred while the sender is corked.
    pub wake: WakeState,
    cork: Arc<Cork>,
    /// Messages from corked threads, moved into the inbox as one command.
    batch: Mutex<SendBatch>,
    batch_pending: AtomicBool,
    /// A poll received events while no worker watched the cork: this worker should.
    pub watch_requested: AtomicBool,
    pub registry: RwLock<Vec<Option<Arc<ConnShared>>>>,
    pub stats: Arc<WorkerStats>,
    /// Inline mode: the worker itself, run by the polling threads (no thread of its own).
    pub inline: Option<InlineWorker>,
}

impl WorkerRef {
    fn new(
        tx: Sender<Cmd>,
        waker: mio::Waker,
        cork: Arc<Cork>,
        stats: Arc<WorkerStats>,
        inline: bool,
    ) -> Self {
        WorkerRef {
            tx,
            waker,
            wake: WakeState::default(),
            cork,
            batch: Mutex::default(),
            batch_pending: AtomicBool::new(false),
            watch_requested: AtomicBool::new(false),
            registry: RwLock::new(Vec::new()),
            stats,
            inline: inline.then(InlineWorker::default),
        }
    }

    /// Wake the worker unless it is already awake (one wake-up per inbox batch).
    fn wake_up(&self) {
        if self.wake.claim() {
            let _ = self.waker.wake();
        }
    }

    pub fn send(&self, cmd: Cmd) -> bool {
        // Corked messages already sent go first (one thread's commands keep their order).
        self.move_batch();
        // Inline mode, and no thread is running the loop: apply it now. Except a publish or
        // broadcast: it waits for the next turn (the next poll), so that a burst of them goes
        // out together, one write per connection (see `Worker::drain_inbox`).
        let fan_out = matches!(cmd, Cmd::Publish { .. } | Cmd::Broadcast { .. });
        let cmd = match &self.inline {
            Some(inline) if !fan_out => match inline.try_apply(cmd) {
                Ok(()) => return true,
                Err(cmd) => cmd,
            },
            _ => cmd,
        };
        if self.tx.send(cmd).is_err() {
            return false;
        }
        // Only data messages are corked (`send_message`): a command wakes the worker now.
        self.wake_up();
        true
    }

    /// A data message: appended to the corked batch when this thread is corked.
    pub fn send_message(&self, id: ConnId, opcode: OpCode, payload: &[u8]) -> bool {
        if !self.cork.is_corked() {
            let frame = frame::encode_frame(true, false, opcode, payload);
            return self.send(Cmd::Send { id, frame });
        }
        {
            let mut batch = self.batch.lock().unwrap_or_else(|e| e.into_inner());
            batch.push(id, opcode, payload);
            self.batch_pending.store(true, Ordering::SeqCst);
        }
        if self.cork.is_corked() {
            self.wake.defer();
            if self.cork.is_corked() {
                return true;
            }
        }
        // The cork ended meanwhile, and that poll may have flushed before we appended.
        self.move_batch();
        self.wake_up();
        true
    }

    /// Move the corked batch into the inbox (without waking the worker). Whether one moved.
    fn move_batch(&self) -> bool {
        if !self.batch_pending.load(Ordering::SeqCst) {
            return false;
        }
        let mut batch = self.batch.lock().unwrap_or_else(|e| e.into_inner());
        if batch.is_empty() {
            return false;
        }
        self.batch_pending.store(false, Ordering::SeqCst);
        // Sent under the lock: a later batch must not overtake this one.
        let _ = self.tx.send(Cmd::SendBatch(std::mem::take(&mut *batch)));
        true
    }

    /// The cork ended: move corked messages into the inbox and deliver the deferred wake-up.
    pub fn flush_deferred(&self) {
        let moved = self.move_batch();
        if self.wake.take_deferred() || (moved && self.wake.claim()) {
            let _ = self.waker.wake();
        }
    }

    fn lookup(&self, id: ConnId) -> Option<Arc<ConnShared>> {
        let reg = self.registry.read().unwrap_or_else(|e| e.into_inner());
        reg.get(id.slot())?.as_ref().filter(|c| c.id == id).cloned()
    }
}

const RUNNING: u8 = 0;
const DRAINING: u8 = 1;
const STOPPED: u8 = 2;

pub(crate) struct Shared {
    pub opts: Options,
    pub workers: Vec<WorkerRef>,
    pub local_addr: SocketAddr,
    /// TCP connections held now (any phase), against `max_connections`.
    pub conn_count: AtomicUsize,
    next_worker: AtomicUsize,
    state: AtomicU8,
    pub cork: Arc<Cork>,
    /// Worker threads still running; the last to stop tells the handler (`on_stopped`).
    pub live_workers: AtomicUsize,
}

impl Shared {
    /// A cork ended: move corked messages into the inboxes and wake those workers.
    pub fn flush_corked(&self) {
        for w in &self.workers {
            w.flush_deferred();
        }
    }

    /// A one-worker `Shared` with no threads, for driving a connection by hand in tests.
    #[cfg(test)]
    pub fn for_tests(opts: Options) -> (Arc<Shared>, mio::Poll) {
        let poll = mio::Poll::new().unwrap();
        let waker = mio::Waker::new(poll.registry(), crate::worker::WAKER).unwrap();
        let (tx, _rx) = crossbeam_channel::unbounded();
        let cork = Arc::new(Cork::default());
        let stats = Arc::new(WorkerStats::default());
        let worker = WorkerRef::new(tx, waker, cork.clone(), stats, false);
        let shared = Shared {
            opts,
            workers: vec![worker],
            local_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            conn_count: AtomicUsize::new(0),
            next_worker: AtomicUsize::new(0),
            state: AtomicU8::new(RUNNING),
            cork,
            live_workers: AtomicUsize::new(1),
        };
        (Arc::new(shared), poll)
    }

    pub fn is_draining(&self) -> bool {
        self.state.load(Ordering::Acquire) != RUNNING
    }

    /// Round-robin choice of the worker for a new connection.
    pub fn pick_worker(&self) -> usize {
        self.next_worker.fetch_add(1, Ordering::Relaxed) % self.workers.len()
    }
}

/// A running server. Dropping it shuts it down gracefully and waits for the workers.
pub struct Server {
    handle: ServerHandle,
    threads: Vec<JoinHandle<()>>,
    /// Inline mode: the worker has not stopped yet.
    inline: bool,
}

impl Server {
    /// Bind `opts.listen` and start the workers.
    pub fn start(opts: Options, handler: impl Handler) -> Result<Server, Error> {
        Server::start_arc(opts, Arc::new(handler))
    }

    pub fn start_arc(opts: Options, handler: Arc<dyn Handler>) -> Result<Server, Error> {
        Server::launch(opts, handler, false)
    }

    /// Start a server without worker threads: its one worker runs on whichever thread
    /// polls `queue` (`EventQueue::poll`), for hosts that poll in a loop, so events are
    /// handled and answered on the polling thread with no handoff between threads. Nothing
    /// happens between polls: keep polling (and join or shut down to finish). Sends and
    /// commands made while no thread is polling take effect at once (publishes and
    /// broadcasts when the next poll begins, so that a burst goes out together) and are
    /// written when the next poll begins. `workers` must be 0 or 1.
    pub fn start_inline(opts: Options, queue: &Arc<EventQueue>) -> Result<Server, Error> {
        if opts.workers > 1 {
            return Err(Error::Option(OptionError {
                option: "workers".into(),
                message: format!(
                    "an inline server runs its one worker on the polling thread; set 1 (or 0), got {}",
                    opts.workers
                ),
            }));
        }
        let server = Server::launch(opts, Arc::new(queue.handler()), true)?;
        queue.attach(server.handle());
        Ok(server)
    }

    fn launch(opts: Options, handler: Arc<dyn Handler>, inline: bool) -> Result<Server, Error> {
        opts.validate()?;
        let io_err = |context: String| move |source| Error::Io { context, source };
        let mut listener = mio::net::TcpListener::bind(opts.listen)
            .map_err(io_err(format!("cannot listen on {}", opts.listen)))?;
        crate::os::set_listen_backlog(&listener, opts.listen_backlog)
            .map_err(io_err("cannot set the listen backlog".into()))?;
        let local_addr = listener
            .local_addr()
            .map_err(io_err("cannot read the listening address".into()))?;
        let n = if inline { 1 } else { opts.effective_workers() };
        let mut parts = Vec::with_capacity(n);
        let mut refs = Vec::with_capacity(n);
        let cork = Arc::new(Cork::default());
        for _ in 0..n {
            let poll = mio::Poll::new().map_err(io_err("cannot create an event loop".into()))?;
            let waker = mio::Waker::new(poll.registry(), crate::worker::WAKER)
                .map_err(io_err("cannot create a waker".into()))?;
            let (tx, rx) = crossbeam_channel::unbounded();
            let stats = Arc::new(WorkerStats::default());
            refs.push(WorkerRef::new(
                tx,
                waker,
                cork.clone(),
                stats.clone(),
                inline,
            ));
            parts.push((poll, rx, stats));
        }
        parts[0]
            .0
            .registry()
            .register(
                &mut listener,
                crate::worker::LISTENER,
                mio::Interest::READABLE,
            )
            .map_err(io_err("cannot register the listener".into()))?;
        let shared = Arc::new(Shared {
            opts,
            workers: refs,
            local_addr,
            conn_count: AtomicUsize::new(0),
            next_worker: AtomicUsize::new(0),
            state: AtomicU8::new(RUNNING),
            cork,
            live_workers: AtomicUsize::new(n),
        });
        let mut listener = Some(listener);
        let mut threads = Vec::with_capacity(n);
        let (started_tx, started) = std::sync::mpsc::channel();
        for (index, (poll, rx, stats)) in parts.into_iter().enumerate() {
            let worker = Worker::new(
                index,
                poll,
                rx,
                listener.take(),
                shared.clone(),
                handler.clone(),
                stats,
            );
            if let Some(holder) = &shared.workers[index].inline {
                holder.install(worker);
                continue;
            }
            let started_tx = started_tx.clone();
            let t = std::thread::Builder::new()
                .name(format!("wsrt-worker-{index}"))
                .spawn(move || {
                    let _ = started_tx.send(());
                    worker.run()
                })
                .map_err(io_err("cannot start a worker thread".into()))?;
            threads.push(t);
        }
        // A thread takes its name once it runs: wait for that, so the workers are there (and
        // named, for `top -H`, a debugger or a host counting its threads) when start returns.
        drop(started_tx);
        for _ in &threads {
            let _ = started.recv();
        }
        Ok(Server {
            handle: ServerHandle { shared },
            threads,
            inline,
        })
    }

    pub fn handle(&self) -> ServerHandle {
        self.handle.clone()
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.handle.local_addr()
    }

    /// Graceful shutdown (see `ServerHandle::shutdown`), then wait for the workers to finish.
    pub fn shutdown(mut self) {
        self.handle.shutdown();
        self.join_threads();
    }

    /// Wait until the server has stopped (after someone called `shutdown` on a handle).
    pub fn join(mut self) {
        self.join_threads();
    }

    fn join_threads(&mut self) {
        if std::mem::take(&mut self.inline) {
            // The loop runs on the caller's thread until it stops.
            for w in &self.handle.shared.workers {
                while w.inline.as_ref().is_some_and(|i| i.drive(None)) {}
            }
        }
        for t in self.threads.drain(..) {
            if t.join().is_err() {
                log::error!("a wsrt worker thread panicked");
            }
        }
        self.handle.shared.state.store(STOPPED, Ordering::Release);
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if !self.threads.is_empty() || self.inline {
            self.handle.shutdown();
            self.join_threads();
        }
    }
}

/// A cloneable, thread-safe handle to a running server.
#[derive(Clone)]
pub struct ServerHandle {
    shared: Arc<Shared>,
}

impl ServerHandle {
    pub(crate) fn from_shared(shared: Arc<Shared>) -> ServerHandle {
        ServerHandle { shared }
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.shared.local_addr
    }

    pub fn options(&self) -> &Options {
        &self.shared.opts
    }

    /// An event-queue poll is starting: end every thread's cork and wake the workers that
    /// corked sends are waiting for.
    pub(crate) fn begin_poll(&self) {
        self.shared.cork.begin_poll();
        self.shared.flush_corked();
        // Inline: the replies to the last batch go out now, not after the rest of the
        // turn's events, so the clients get to work while we go on (pipelining).
        for w in &self.shared.workers {
            if let Some(inline) = &w.inline {
                inline.try_with(|w| w.flush_replies());
            }
        }
    }

    /// The calling thread received a batch of events: its sends wake workers when the next
    /// poll begins, or when a worker finds the cork left on (see `cork`).
    pub(crate) fn cork_this_thread(&self) {
        if self.is_inline() {
            // The poller's sends go straight to the worker it just ran (`send_message`).
            return;
        }
        if self.shared.cork.cork_this_thread() {
            if let Some(w) = self.shared.workers.first() {
                w.watch_requested.store(true, Ordering::SeqCst);
                w.wake_up();
            }
        }
    }

    /// The server runs inline (`Server::start_inline`).
    pub(crate) fn is_inline(&self) -> bool {
        self.shared.workers.iter().any(|w| w.inline.is_some())
    }

    /// Inline mode: run one turn of the loop on this thread, waiting at most `limit`.
    /// False once it has stopped (or if the server is not inline).
    pub(crate) fn drive(&self, limit: Option<Duration>) -> bool {
        self.shared
            .workers
            .iter()
            .filter_map(|w| w.inline.as_ref())
            .fold(false, |running, i| i.drive(limit) | running)
    }

    fn worker(&self, id: ConnId) -> Option<&WorkerRef> {
        self.shared.workers.get(id.worker())
    }

    pub fn send_text(&self, id: ConnId, text: &str) -> SendStatus {
        self.send_message(id, OpCode::Text, text.as_bytes())
    }

    pub fn send_binary(&self, id: ConnId, data: &[u8]) -> SendStatus {
        self.send_message(id, OpCode::Binary, data)
    }

    pub fn send(&self, id: ConnId, msg: Message<'_>) -> SendStatus {
        match msg {
            Message::Text(t) => self.send_text(id, t),
            Message::Binary(b) => self.send_binary(id, b),
        }
    }

    /// `send` of a payload already checked (text is UTF-8), as the C ABI does.
    pub(crate) fn send_message(&self, id: ConnId, opcode: OpCode, payload: &[u8]) -> SendStatus {
        let inline = self.worker(id).and_then(|w| w.inline.as_ref());
        if let Some(status) =
            inline.and_then(|i| i.try_with(|w| w.send_message(id, opcode, payload)))
        {
            return status;
        }
        let len = frame::header_len(payload.len()) + payload.len();
        match self.admit(id, len) {
            Ok((w, status)) if w.send_message(id, opcode, payload) => status,
            Ok(_) => SendStatus::Gone,
            Err(status) => status,
        }
    }

    /// Send a host-owned buffer without copying it: `payload` is written from where it is
    /// and dropped (released) once written, or when the connection is gone.
    pub fn send_external(
        &self,
        id: ConnId,
        text: bool,
        payload: Box<dyn AsRef<[u8]> + Send>,
    ) -> SendStatus {
        let len = (*payload).as_ref().len();
        let mut header = [0u8; frame::MAX_HEADER_LEN];
        let op = OpCode::data(text);
        let hlen = frame::encode_header(&mut header, true, false, op, len as u64, None);
        match self.admit(id, hlen + len) {
            Ok((w, status)) => {
                let header = header[..hlen].to_vec();
                if w.send(Cmd::SendExternal {
                    id,
                    header,
                    payload,
                }) {
                    status
                } else {
                    SendStatus::Gone
                }
            }
            Err(status) => status,
        }
    }

    /// Cross-thread admission of `len` bytes for `id`: the connection must be open and its
    /// queue under `max_backpressure` (else the policy applies). Ok counts the bytes as queued.
    fn admit(&self, id: ConnId, len: usize) -> Result<(&WorkerRef, SendStatus), SendStatus> {
        let w = self.worker(id).ok_or(SendStatus::Gone)?;
        let conn = w.lookup(id).ok_or(SendStatus::Gone)?;
        if !conn.open.load(Ordering::Acquire) {
            return Err(SendStatus::Gone);
        }
        let queued = conn.queued.load(Ordering::Relaxed);
        if queued > 0 && queued + len > self.shared.opts.max_backpressure {
            w.stats.backpressure_dropped.fetch_add(1, Ordering::Relaxed);
            if self.shared.opts.backpressure_policy == BackpressurePolicy::Close {
                w.send(Cmd::Close {
                    id,
                    code: 1008,
                    reason: "backpressure limit exceeded".into(),
                });
            }
            return Err(SendStatus::Dropped);
        }
        conn.queued.fetch_add(len, Ordering::Relaxed);
        let status = if conn.blocked.load(Ordering::Relaxed) {
            SendStatus::Queued
        } else {
            SendStatus::Sent
        };
        Ok((w, status))
    }

    /// Attach host data to a connection; it is dropped when the connection is gone (or at
    /// once, on a worker thread, if the connection closed meanwhile). Err gives it back when
    /// the connection is already gone.
    pub fn set_data(
        &self,
        id: ConnId,
        data: Box<dyn std::any::Any + Send>,
    ) -> Result<(), Box<dyn std::any::Any + Send>> {
        if self.lookup(id).is_none() {
            return Err(data);
        }
        match self.worker(id) {
            Some(w) => {
                w.send(Cmd::SetData { id, data });
                Ok(())
            }
            None => Err(data),
        }
    }

    /// Workers read from sockets again after `Handler::reading_paused` turned false.
    pub fn resume_reading(&self) {
        for w in &self.shared.workers {
            w.send(Cmd::ResumeReading);
        }
    }

    /// Ping a connection (payload up to 125 bytes).
    pub fn ping(&self, id: ConnId, payload: &[u8]) -> SendStatus {
        if !self.is_open(id) {
            return SendStatus::Gone;
        }
        let payload = payload[..payload.len().min(125)].to_vec();
        match self.worker(id).map(|w| w.send(Cmd::Ping { id, payload })) {
            Some(true) => SendStatus::Sent,
            _ => SendStatus::Gone,
        }
    }

    /// Start the close handshake after the connection's queued messages. False if gone.
    pub fn close(&self, id: ConnId, code: u16, reason: &str) -> bool {
        self.is_open(id)
            && self.worker(id).is_some_and(|w| {
                w.send(Cmd::Close {
                    id,
                    code,
                    reason: reason.to_string(),
                })
            })
    }

    /// Drop the connection without a close handshake.
    pub fn terminate(&self, id: ConnId) -> bool {
        self.lookup(id).is_some()
            && self
                .worker(id)
                .is_some_and(|w| w.send(Cmd::Terminate { id }))
    }

    fn lookup(&self, id: ConnId) -> Option<Arc<ConnShared>> {
        self.worker(id)?.lookup(id)
    }

    /// The connection exists and accepts sends.
    pub fn is_open(&self, id: ConnId) -> bool {
        self.lookup(id)
            .is_some_and(|c| c.open.load(Ordering::Acquire))
    }

    /// Bytes accepted for the connection but not yet written to its socket.
    pub fn buffered_amount(&self, id: ConnId) -> Option<usize> {
        let queued = self.lookup(id)?.queued.load(Ordering::Relaxed);
        // Inline: replies still in the worker's cork count too (see `Worker::send_message`).
        let corked = self
            .worker(id)
            .and_then(|w| w.inline.as_ref())
            .and_then(|i| i.try_with(|w| w.corked_len(id)))
            .unwrap_or(0);
        Some(queued + corked)
    }

    pub fn subscribe(&self, id: ConnId, topic: &str) -> bool {
        self.is_open(id)
            && self.worker(id).is_some_and(|w| {
                w.send(Cmd::Subscribe {
                    id,
                    topic: topic.to_string(),
                })
            })
    }

    pub fn unsubscribe(&self, id: ConnId, topic: &str) -> bool {
        self.lookup(id).is_some()
            && self.worker(id).is_some_and(|w| {
                w.send(Cmd::Unsubscribe {
                    id,
                    topic: topic.to_string(),
                })
            })
    }

    /// Send to every subscriber of `topic`, on every worker. The frame is encoded once and
    /// shared. Publishes to one topic that a worker finds queued back to back (a burst, e.g.
    /// the messages of one read) are written to each idle connection in one write, in order.
    /// False if the server has stopped.
    pub fn publish(&self, topic: &str, msg: Message<'_>) -> bool {
        let frame = shared_frame(msg);
        let topic: Arc<str> = Arc::from(topic);
        let mut ok = true;
        for w in &self.shared.workers {
            ok &= w.send(Cmd::Publish {
                topic: topic.clone(),
                frame: frame.clone(),
            });
        }
        ok
    }

    /// Send to every open connection (encoded once; a burst goes out together, as with
    /// `publish`).
    pub fn broadcast(&self, msg: Message<'_>) -> bool {
        let frame = shared_frame(msg);
        let mut ok = true;
        for w in &self.shared.workers {
            ok &= w.send(Cmd::Broadcast {
                frame: frame.clone(),
            });
        }
        ok
    }

    /// Accept a deferred upgrade. False if the connection is gone (timed out, client left).
    pub fn accept(&self, id: ConnId, accept: Accept) -> bool {
        self.decide(id, Decision::Accept(accept))
    }

    /// Reject a deferred upgrade with a status (4xx/5xx) and body.
    pub fn reject(&self, id: ConnId, reject: Reject) -> bool {
        self.decide(id, Decision::Reject(reject))
    }

    fn decide(&self, id: ConnId, decision: Decision) -> bool {
        self.lookup(id).is_some()
            && self
                .worker(id)
                .is_some_and(|w| w.send(Cmd::Decide { id, decision }))
    }

    /// Hand over an already-accepted socket, with the bytes already read from it (e.g. the
    /// HTTP request a host's own server parsed). The upgrade is then handled as usual.
    pub fn adopt(&self, stream: std::net::TcpStream, already_read: &[u8]) -> io::Result<()> {
        if self.shared.is_draining() {
            return Err(io::Error::other("server is shutting down"));
        }
        stream.set_nonblocking(true)?;
        let _ = stream.set_nodelay(true);
        let peer = stream.peer_addr()?;
        self.shared.conn_count.fetch_add(1, Ordering::AcqRel);
        let w = &self.shared.workers[self.shared.pick_worker()];
        if w.send(Cmd::Adopt {
            stream: mio::net::TcpStream::from_std(stream),
            peer,
            early: already_read.to_vec(),
        }) {
            Ok(())
        } else {
            self.shared.conn_count.fetch_sub(1, Ordering::AcqRel);
            Err(io::Error::other("server has stopped"))
        }
    }

    /// Graceful shutdown: health checks fail and upgrades are refused at once; after
    /// `drain_delay`, every connection gets 1001 after its queued messages (spread over
    /// `drain_window`); after `shutdown_timeout` more, whatever is left is dropped.
    /// Returns at once; `Server::join` waits. Calling it again does nothing.
    pub fn shutdown(&self) {
        if self
            .shared
            .state
            .compare_exchange(RUNNING, DRAINING, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return;
        }
        let started = Instant::now();
        for w in &self.shared.workers {
            w.send(Cmd::Shutdown { started });
        }
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shared.is_draining()
    }

    pub fn stats(&self) -> Stats {
        let mut s = Stats {
            rejected: RejectKind::ALL.iter().map(|k| (k.name(), 0)).collect(),
            ..Stats::default()
        };
        for w in &self.shared.workers {
            let st = &w.stats;
            let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
            s.accepted += get(&st.accepted);
            s.upgraded += get(&st.upgraded);
            s.open += get(&st.open);
            s.closed += get(&st.closed);
            s.messages_in += get(&st.messages_in);
            s.messages_out += get(&st.messages_out);
            s.bytes_in += get(&st.bytes_in);
            s.bytes_out += get(&st.bytes_out);
            s.backpressure_queued += get(&st.backpressure_queued);
            s.backpressure_dropped += get(&st.backpressure_dropped);
            s.batched_writes += get(&st.batched_writes);
            s.protocol_errors += get(&st.protocol_errors);
            for (i, r) in st.rejected.iter().enumerate() {
                s.rejected[i].1 += get(r);
            }
        }
        s
    }
}

fn shared_frame(msg: Message<'_>) -> Arc<[u8]> {
    let (op, data) = match msg {
        Message::Text(t) => (OpCode::Text, t.as_bytes()),
        Message::Binary(b) => (OpCode::Binary, b),
    };
    Arc::from(frame::encode_frame(true, false, op, data))
}

/// How long a graceful shutdown may take at most, from its start.
pub(crate) fn shutdown_deadline(opts: &Options, started: Instant) -> Instant {
    started + opts.drain_delay + opts.drain_window + opts.shutdown_timeout
}

#[allow(dead_code)]
fn _assert_send_sync() {
    fn check<T: Send + Sync>() {}
    check::<ServerHandle>();
    let _ = Duration::ZERO;
}
