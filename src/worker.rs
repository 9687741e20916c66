//! One worker thread: a mio event loop over a slab of connections, a timer heap and an inbox.
//! Worker 0 also owns the listener and deals accepted sockets out round-robin.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use slab::Slab;

use crate::connection::{Conn, ConnShared, ConnState, Ctx, Finish};
use crate::cork::{CorkWatch, SendBatch};
use crate::frame::OpCode;
use crate::handler::{ConnId, Handler, SendStatus};
use crate::handshake::{self, RejectKind, Rejection};
use crate::os::NoSigPipe;
use crate::outbound::Chunk;
use crate::send_ring::SendRing;
use crate::server::{shutdown_deadline, Cmd, Shared, WorkerStats};
use crate::topics::Topics;

pub(crate) const WAKER: Token = Token(usize::MAX);
pub(crate) const LISTENER: Token = Token(usize::MAX - 1);

/// One read buffer per worker: idle connections hold none.
const READ_BUF: usize = 64 * 1024;
/// Reads per readiness event before yielding to other connections.
const READS_PER_TURN: usize = 16;
/// Commands handled per loop iteration before looking at sockets again.
const CMDS_PER_TURN: usize = 4096;
const SLOT_LIMIT: usize = 1 << 24;

struct Slot {
    stream: TcpStream,
    state: ConnState,
    write_shut: bool,
}

struct ShutdownPlan {
    /// When the 1001 closes begin (after `drain_delay`).
    close_start: Instant,
    deadline: Instant,
}

pub(crate) struct Worker {
    index: usize,
    poll: Poll,
    rx: Receiver<Cmd>,
    listener: Option<TcpListener>,
    conns: Slab<Slot>,
    timers: BinaryHeap<Reverse<(Instant, usize, ConnId)>>,
    rbuf: Vec<u8>,
    ctx: Ctx,
    generation: u32,
    accept_paused_until: Option<Instant>,
    accept_backoff: Duration,
    shutdown: Option<ShutdownPlan>,
    /// Connection ids for one job at a time (a fan-out audience, a send batch's runs).
    scratch: Vec<ConnId>,
    /// Connections not read because `Handler::reading_paused` said so.
    paused: Vec<usize>,
    /// Fan-out writes to idle connections, batched (None: one `send` each; see `run`).
    send_ring: Option<SendRing>,
    /// A fan-out's idle audience for `send_ring`: slot and socket.
    ring_audience: Vec<(usize, RawFd)>,
    cork_watch: CorkWatch,
    events: Events,
    /// Of `events`, the first not handled yet (0: all were; poll again).
    next_event: usize,
    /// Run by polling threads (`InlineWorker`), not a thread of its own.
    inline: bool,
}

impl Worker {
    pub fn new(
        index: usize,
        poll: Poll,
        rx: Receiver<Cmd>,
        listener: Option<TcpListener>,
        shared: Arc<Shared>,
        handler: Arc<dyn Handler>,
        stats: Arc<WorkerStats>,
    ) -> Worker {
        Worker {
            index,
            poll,
            rx,
            listener,
            conns: Slab::new(),
            timers: BinaryHeap::new(),
            rbuf: vec![0; READ_BUF],
            ctx: Ctx {
                now: Instant::now(),
                shared,
                handler,
                stats,
                cork: Vec::new(),
                cork_slot: None,
                dirty: Vec::new(),
                resume: Vec::new(),
                topics: Topics::default(),
                zip: Default::default(),
            },
            generation: 0,
            accept_paused_until: None,
            accept_backoff: Duration::from_millis(10),
            shutdown: None,
            scratch: Vec::new(),
            paused: Vec::new(),
            send_ring: None,
            ring_audience: Vec::new(),
            cork_watch: CorkWatch::default(),
            events: Events::with_capacity(1024),
            next_event: 0,
            inline: false,
        }
    }

    fn me(&self) -> &crate::server::WorkerRef {
        &self.ctx.shared.workers[self.index]
    }

    /// Run on a thread of its own until stopped.
    pub fn run(mut self) {
        // Made here, on the worker's own thread, never on a host's: the kernel interrupts a
        // thread's blocking calls (EINTR) to clean up rings it submitted to, so a host
        // thread that touched one could see a read fail when a server is freed. For the
        // same reason an inline worker, run by host threads, has no ring.
        if self.ctx.shared.opts.io_uring {
            self.send_ring = SendRing::new();
        }
        while !self.turn(None) {}
        self.finish();
    }

    /// One loop iteration: wait (at most `limit`, if given) for sockets, commands or timers,
    /// then handle what came. Whether the worker should stop (then call `finish`).
    pub fn turn(&mut self, limit: Option<Duration>) -> bool {
        // Replies sent directly by an inline poller go out before we wait.
        self.end_reply_cork();
        self.flush_dirty();
        if self.next_event == 0 {
            let mut timeout = self.poll_timeout();
            if let Some(limit) = limit {
                timeout = Some(timeout.map_or(limit, |t| t.min(limit)));
            }
            if let Err(e) = self.poll.poll(&mut self.events, timeout) {
                if e.kind() != io::ErrorKind::Interrupted {
                    log::error!("worker {}: poll failed: {e}", self.index);
                    return true;
                }
            }
        }
        self.ctx.now = Instant::now();
        let events = std::mem::replace(&mut self.events, Events::with_capacity(0));
        let mut rest = events.iter().skip(self.next_event);
        // Inline, a turn hands its events to the host, whose replies go out before the next
        // turn: a few sockets at a time keep replies flowing while the rest are read (as a
        // callback worker writes after each read).
        let per_turn = if self.inline {
            INLINE_EVENTS_PER_TURN
        } else {
            usize::MAX
        };
        for ev in rest.by_ref().take(per_turn) {
            self.next_event += 1;
            match ev.token() {
                WAKER => {}
                LISTENER => self.accept_ready(),
                Token(k) => {
                    if ev.is_writable() {
                        self.flush_slot(k);
                    }
                    if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                        self.read_slot(k, ev.is_read_closed() || ev.is_error());
                    }
                }
            }
        }
        if rest.next().is_none() {
            self.next_event = 0;
        }
        self.events = events;
        self.drain_inbox();
        for k in std::mem::take(&mut self.ctx.resume) {
            self.read_slot(k, true);
        }
        self.run_timers();
        self.flush_dirty();
        let announced = self.ctx.handler.on_turn_end();
        self.watch_cork(announced);
        self.shutdown_step()
    }

    /// Stopped: drop whatever is left (the shutdown deadline passed or poll failed).
    pub fn finish(&mut self) {
        self.end_reply_cork();
        let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
        for k in keys {
            self.remove(k);
        }
        self.ctx.handler.on_turn_end();
        // Corked sends must not wait for a watch that stopped with this worker.
        if self.cork_watch.release(&self.ctx.shared.cork) {
            self.ctx.shared.flush_corked();
        }
        if self.ctx.shared.live_workers.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.ctx.handler.on_stopped();
        }
        log::debug!("worker {} stopped", self.index);
    }

    /// Inline mode: a command from a thread that found no one running the loop, applied
    /// at once (after any commands queued before it, so one thread's calls keep their
    /// order). What it writes goes out at the start of the next turn.
    pub fn apply(&mut self, cmd: Cmd) {
        self.ctx.now = Instant::now();
        self.end_reply_cork();
        self.drain_inbox();
        self.command(cmd);
    }

    /// Inline mode: write what direct sends queued (see `apply`).
    pub fn flush_replies(&mut self) {
        self.ctx.now = Instant::now();
        self.end_reply_cork();
        self.flush_dirty();
    }

    /// Bytes of `id`'s replies waiting in the cork (inline; see `send_message`).
    pub fn corked_len(&self, id: ConnId) -> usize {
        let corked = self.ctx.cork_slot == Some(id.slot())
            && self
                .conns
                .get(id.slot())
                .is_some_and(|s| s.state.core().id == id);
        if corked {
            self.ctx.cork.len()
        } else {
            0
        }
    }

    /// Write the connection an inline host was replying to (see `send_message`).
    fn end_reply_cork(&mut self) {
        if let Some(k) = self.ctx.cork_slot {
            self.flush_slot(k);
        }
    }

    /// Inline mode: a message sent directly (see `apply`), corked like a callback's
    /// replies: the replies to one connection collect in the worker's cork buffer and are
    /// written in one go when the host sends to another connection or polls again (as
    /// uWebSockets' cork): no allocation, one write per run of replies, and early.
    /// The clock is the last turn's (a clock read per message would cost more than the send).
    pub fn send_message(&mut self, id: ConnId, opcode: OpCode, payload: &[u8]) -> SendStatus {
        if !self.rx.is_empty() {
            self.end_reply_cork();
            self.drain_inbox();
        }
        let k = id.slot();
        if self.ctx.cork_slot != Some(k) {
            self.end_reply_cork();
        }
        let Some(slot) = self.conns.get_mut(k).filter(|s| s.state.core().id == id) else {
            return SendStatus::Gone;
        };
        self.ctx.cork_slot = Some(k);
        let status = slot
            .state
            .core_mut()
            .send_frame(opcode, payload, false, &mut self.ctx);
        if status == SendStatus::Dropped {
            // The backpressure policy may have closed it.
            self.after_io(k);
        }
        status
    }

    /// Keep corked sends from being stranded by a host that stopped polling (see `cork`).
    fn watch_cork(&mut self, announced: bool) {
        if self.inline {
            // Inline pollers are never corked: their sends go straight to this worker.
            return;
        }
        let cork = &self.ctx.shared.cork;
        let requested = &self.ctx.shared.workers[self.index].watch_requested;
        if announced
            || (requested.load(Ordering::Relaxed) && requested.swap(false, Ordering::SeqCst))
        {
            self.cork_watch.arm(cork, self.ctx.now);
        }
        if self.cork_watch.check(cork, Instant::now()) {
            self.ctx.shared.flush_corked();
        }
    }

    fn poll_timeout(&mut self) -> Option<Duration> {
        if !self.ctx.resume.is_empty() || !self.rx.is_empty() {
            return Some(Duration::ZERO);
        }
        let now = Instant::now();
        let mut next = self.timers.peek().map(|Reverse((t, _, _))| *t);
        let mut consider = |t: Instant| next = Some(next.map_or(t, |n: Instant| n.min(t)));
        if let Some(t) = self.accept_paused_until {
            consider(t);
        }
        if let Some(t) = self.cork_watch.due() {
            consider(t);
        }
        if let Some(plan) = &self.shutdown {
            consider(plan.close_start);
            consider(plan.deadline);
        }
        // Round up so a timer never fires a hair early and spins.
        next.map(|t| t.saturating_duration_since(now) + Duration::from_millis(1))
    }

    // ---- accepting ----

    fn accept_ready(&mut self) {
        if let Some(until) = self.accept_paused_until {
            if self.ctx.now < until {
                return;
            }
            self.accept_paused_until = None;
        }
        loop {
            let Some(listener) = &self.listener else {
                return;
            };
            match listener.accept() {
                Ok((stream, peer)) => {
                    self.accept_backoff = Duration::from_millis(10);
                    let _ = stream.set_nodelay(true);
                    self.dispatch_new(stream, peer);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if is_transient_accept_error(&e) => continue,
                Err(e) => {
                    // Out of fds (EMFILE/ENFILE) or memory: pause accepting instead of spinning
                    // on a listener that stays readable; existing connections keep being served.
                    let wait = self.accept_backoff;
                    log::warn!(
                        "accept failed: {e}; not accepting for {wait:?} (existing connections are served){}",
                        if matches!(e.raw_os_error(), Some(libc::EMFILE) | Some(libc::ENFILE)) {
                            " — out of file descriptors: raise the limit (ulimit -n / RLIMIT_NOFILE) or lower max_connections"
                        } else {
                            ""
                        }
                    );
                    self.accept_paused_until = Some(self.ctx.now + wait);
                    self.accept_backoff = (wait * 2).min(Duration::from_secs(1));
                    break;
                }
            }
        }
    }

    fn dispatch_new(&mut self, mut stream: TcpStream, peer: SocketAddr) {
        let shared = &self.ctx.shared;
        if shared.conn_count.load(Ordering::Acquire) >= shared.opts.max_connections {
            let mut r = Rejection::new(
                RejectKind::TooManyConnections,
                503,
                "503 Service Unavailable: too many connections\n",
                format!(
                    "{peer}: refused, max_connections ({}) reached",
                    shared.opts.max_connections
                ),
            );
            r.headers.push(("Retry-After".into(), "1".into()));
            log::info!("connection refused (503): {}", r.log);
            self.ctx.stats.count_reject(r.kind);
            let mut buf = Vec::new();
            handshake::write_rejection(&mut buf, &r);
            let _ = stream.write(&buf);
            let _ = stream.shutdown(Shutdown::Write);
            return;
        }
        shared.conn_count.fetch_add(1, Ordering::AcqRel);
        let w = shared.pick_worker();
        if w == self.index {
            self.insert(stream, peer, Vec::new());
        } else if !shared.workers[w].send(Cmd::Adopt {
            stream,
            peer,
            early: Vec::new(),
        }) {
            shared.conn_count.fetch_sub(1, Ordering::AcqRel);
        }
    }

    fn insert(&mut self, mut stream: TcpStream, peer: SocketAddr, mut early: Vec<u8>) {
        let k = self.conns.vacant_key();
        if k >= SLOT_LIMIT {
            self.ctx.shared.conn_count.fetch_sub(1, Ordering::AcqRel);
            return;
        }
        self.generation = self.generation.wrapping_add(1).max(1);
        let id = ConnId::new(self.index, k, self.generation);
        if let Err(e) = self.poll.registry().register(
            &mut stream,
            Token(k),
            Interest::READABLE | Interest::WRITABLE,
        ) {
            log::warn!("{peer}: cannot register connection: {e}");
            self.ctx.shared.conn_count.fetch_sub(1, Ordering::AcqRel);
            return;
        }
        let conn_shared = Arc::new(ConnShared {
            id,
            open: AtomicBool::new(false),
            queued: AtomicUsize::new(0),
            compressed: AtomicBool::new(false),
            blocked: AtomicBool::new(false),
        });
        {
            let mut reg = self
                .me()
                .registry
                .write()
                .unwrap_or_else(|e| e.into_inner());
            if reg.len() <= k {
                reg.resize(k + 1, None);
            }
            reg[k] = Some(conn_shared.clone());
        }
        let state = ConnState::new(id, peer, conn_shared, &self.ctx);
        self.conns.insert(Slot {
            stream,
            state,
            write_shut: false,
        });
        self.ctx.stats.accepted.fetch_add(1, Ordering::Relaxed);
        if !early.is_empty() {
            self.ctx.cork_slot = Some(k);
            self.conns[k].state.on_read(&mut early, &mut self.ctx);
            self.flush_slot(k);
        } else {
            self.after_io(k);
        }
    }

    // ---- reading and writing ----

    /// Read until the socket is drained (or a turn's budget is used up). `hup`: the event
    /// said the peer closed, so a short read must be followed by one more to see the EOF.
    fn read_slot(&mut self, k: usize, hup: bool) {
        let mut exhausted = true;
        for _ in 0..READS_PER_TURN {
            let Some(slot) = self.conns.get_mut(k) else {
                return;
            };
            if slot.state.core().read_paused || slot.state.core().finish != Finish::No {
                exhausted = false;
                break;
            }
            if self.ctx.handler.reading_paused() {
                // The host can't take more events: leave the bytes in the kernel (TCP flow
                // control slows the client) until it asks to resume.
                if !self.paused.contains(&k) {
                    self.paused.push(k);
                }
                exhausted = false;
                break;
            }
            match slot.stream.read(&mut self.rbuf) {
                Ok(0) => {
                    slot.state.on_eof(&self.ctx);
                    exhausted = false;
                    break;
                }
                Ok(n) => {
                    self.ctx.cork_slot = Some(k);
                    slot.state.on_read(&mut self.rbuf[..n], &mut self.ctx);
                    self.flush_slot(k);
                    if n < self.rbuf.len() && !hup {
                        // A short read means the receive queue is empty; new data raises a
                        // new edge, so the confirming read (a syscall per message) is skipped.
                        exhausted = false;
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    exhausted = false;
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    log::debug!("{}: read error: {e}", slot.state.core().remote);
                    slot.state.core_mut().finish = Finish::Now;
                    exhausted = false;
                    break;
                }
            }
        }
        if self.conns.get(k).is_none() {
            return;
        }
        if exhausted && !self.ctx.resume.contains(&k) {
            // Still readable after a full turn: continue next iteration, after the others.
            self.ctx.resume.push(k);
        }
        self.after_io(k);
    }

    fn flush_slot(&mut self, k: usize) {
        let Some(slot) = self.conns.get_mut(k) else {
            self.ctx.cork_slot = None;
            return;
        };
        let core = slot.state.core_mut();
        core.dirty = false;
        let res = core.flush(&mut NoSigPipe(&slot.stream), &mut self.ctx);
        self.ctx.cork_slot = None;
        match res {
            Ok(true) => {
                let handler = self.ctx.handler.clone();
                handler.on_drain(&mut Conn {
                    core: slot.state.core_mut(),
                    ctx: &mut self.ctx,
                });
            }
            Ok(false) => {}
            Err(e) => {
                log::debug!("{}: write error: {e}", slot.state.core().remote);
                slot.state.core_mut().finish = Finish::Now;
            }
        }
        let core = slot.state.core();
        if core.out.is_empty() && core.shutdown_write && !slot.write_shut {
            slot.write_shut = true;
            let _ = slot.stream.shutdown(Shutdown::Write);
        }
        self.after_io(k);
    }

    fn flush_dirty(&mut self) {
        while let Some(k) = self.ctx.dirty.pop() {
            self.flush_slot(k);
        }
    }

    /// Remove a finished connection, or (re)arm its timer.
    fn after_io(&mut self, k: usize) {
        let Some(slot) = self.conns.get_mut(k) else {
            return;
        };
        let core = slot.state.core();
        let done = match core.finish {
            Finish::Now => true,
            Finish::WhenFlushed => core.out.is_empty(),
            Finish::No => false,
        };
        if done {
            self.remove(k);
            return;
        }
        let Some(due) = slot.state.next_deadline(&self.ctx) else {
            return;
        };
        let core = slot.state.core_mut();
        if core.scheduled.is_none_or(|s| due < s) {
            core.scheduled = Some(due);
            self.timers.push(Reverse((due, k, core.id)));
        }
    }

    fn remove(&mut self, k: usize) {
        let Some(mut slot) = self.conns.try_remove(k) else {
            return;
        };
        if self.ctx.cork_slot == Some(k) {
            self.ctx.cork_slot = None;
            self.ctx.cork.clear();
        }
        // Free the connection's place before on_close runs, so a host reacting to the close
        // (or a client reconnecting at once) is not refused by max_connections.
        self.ctx.shared.conn_count.fetch_sub(1, Ordering::AcqRel);
        // And leave the registry first, so when on_close runs every handle call agrees the
        // connection is gone (a send says Gone, buffered_amount says None).
        {
            let mut reg = self
                .me()
                .registry
                .write()
                .unwrap_or_else(|e| e.into_inner());
            if let Some(e) = reg.get_mut(k) {
                *e = None;
            }
        }
        slot.state.finalize(&mut self.ctx);
        let _ = self.poll.registry().deregister(&mut slot.stream);
        self.ctx.stats.closed.fetch_add(1, Ordering::Relaxed);
        // An fd was freed: if accepting was paused for lack of fds, try again now.
        if self.accept_paused_until.is_some() {
            self.accept_paused_until = Some(self.ctx.now);
        }
    }

    fn run_timers(&mut self) {
        let now = self.ctx.now;
        while let Some(Reverse((due, k, id))) = self.timers.peek().copied() {
            if due > now {
                break;
            }
            self.timers.pop();
            let Some(slot) = self.conns.get_mut(k) else {
                continue;
            };
            let core = slot.state.core_mut();
            if core.id != id || core.scheduled != Some(due) {
                continue;
            }
            core.scheduled = None;
            slot.state.on_timer(&mut self.ctx);
            self.flush_slot(k);
        }
        if self.accept_paused_until.is_some_and(|t| t <= now) {
            self.accept_ready();
        }
    }

    // ---- commands from other threads ----

    fn drain_inbox(&mut self) {
        self.me().wake.draining();
        let mut taken = 0;
        let mut next = None;
        while taken < CMDS_PER_TURN {
            let cmd = match next.take() {
                Some(cmd) => cmd,
                None => {
                    let Ok(cmd) = self.rx.try_recv() else {
                        return;
                    };
                    taken += 1;
                    cmd
                }
            };
            let mut run = match FanOut::from_cmd(cmd) {
                Ok(run) => run,
                Err(other) => {
                    self.command(other);
                    continue;
                }
            };
            // A burst of publishes to one audience, queued back to back, goes out together:
            // one write per connection instead of one per message and connection.
            while taken < CMDS_PER_TURN && run.bytes < FAN_OUT_RUN_BYTES {
                let Ok(cmd) = self.rx.try_recv() else {
                    break;
                };
                taken += 1;
                if let Err(other) = run.absorb(cmd) {
                    next = Some(other);
                    break;
                }
            }
            self.fan_out(run);
        }
        if let Some(cmd) = next {
            self.command(cmd);
        }
    }

    /// Send a run of shared frames to its audience, encoded once for everyone. Connections
    /// that take the run as it is, at once, are written together through the send ring.
    fn fan_out(&mut self, run: FanOut) {
        let joined = run.joined();
        let mut caches = vec![Vec::new(); run.frames.len()];
        let batched = self.send_ring.is_some();
        let messages = run.frames.len() as u64;
        self.ring_audience.clear();
        let mut send = |k: usize, slot: &mut Slot, ctx: &mut Ctx| {
            let core = slot.state.core_mut();
            if batched && core.takes_shared_write(ctx) {
                if core.begin_shared_write(joined.len(), messages, ctx) {
                    self.ring_audience.push((k, slot.stream.as_raw_fd()));
                }
                return;
            }
            core.send_shared_run(
                &run.frames,
                &joined,
                &mut caches,
                ctx,
                &mut NoSigPipe(&slot.stream),
            )
        };
        match &run.topic {
            Some(topic) => {
                self.scratch.clear();
                self.scratch
                    .extend_from_slice(self.ctx.topics.members(topic));
                for id in &self.scratch {
                    if let Some(slot) = self.conns.get_mut(id.slot()) {
                        send(id.slot(), slot, &mut self.ctx);
                    }
                }
            }
            None => {
                for (k, slot) in self.conns.iter_mut() {
                    if slot.state.core().is_open() {
                        send(k, slot, &mut self.ctx);
                    }
                }
            }
        }
        let Some(ring) = self.send_ring.as_mut() else {
            return;
        };
        let (conns, ctx) = (&mut self.conns, &mut self.ctx);
        ctx.stats
            .batched_writes
            .fetch_add(self.ring_audience.len() as u64, Ordering::Relaxed);
        ring.send_to_all(&joined, &self.ring_audience, |k, written| {
            conns[k]
                .state
                .core_mut()
                .end_shared_write(&joined, written, ctx);
        });
        if !ring.usable() {
            self.send_ring = None;
        }
    }

    fn live(&mut self, id: ConnId) -> Option<&mut Slot> {
        self.conns
            .get_mut(id.slot())
            .filter(|s| s.state.core().id == id)
    }

    fn command(&mut self, cmd: Cmd) {
        match cmd {
            Cmd::Adopt {
                stream,
                peer,
                early,
            } => {
                // Also while draining: the request then gets its 503 and health check answer.
                self.insert(stream, peer, early);
            }
            Cmd::Send { id, frame } => {
                if let Some(slot) = Self::admitted(&mut self.conns, id, frame.len()) {
                    let core = slot.state.core_mut();
                    core.send_prepared(Chunk::Owned(frame), &mut self.ctx);
                }
            }
            Cmd::SendBatch(batch) => self.apply_batch(batch),
            Cmd::Ping { id, payload } => self.with_conn(id, |mut c| {
                c.ping(&payload);
            }),
            Cmd::Close { id, code, reason } => self.with_conn(id, |mut c| c.close(code, &reason)),
            Cmd::Terminate { id } => self.with_conn(id, |mut c| c.terminate()),
            Cmd::Subscribe { id, topic } => self.with_conn(id, |mut c| c.subscribe(&topic)),
            Cmd::Unsubscribe { id, topic } => self.with_conn(id, |mut c| c.unsubscribe(&topic)),
            Cmd::Publish { .. } | Cmd::Broadcast { .. } => {
                if let Ok(run) = FanOut::from_cmd(cmd) {
                    self.fan_out(run);
                }
            }
            Cmd::Decide { id, decision } => {
                let k = id.slot();
                if self.live(id).is_none() {
                    return;
                }
                let state = &mut self.conns[k].state;
                if state.decide(decision, &mut self.ctx) {
                    self.ctx.resume.push(k);
                }
                self.flush_slot(k);
            }
            Cmd::Shutdown { started } => self.begin_shutdown(started),
            Cmd::SendExternal {
                id,
                header,
                payload,
            } => {
                let len = header.len() + (*payload).as_ref().len();
                if let Some(slot) = Self::admitted(&mut self.conns, id, len) {
                    let core = slot.state.core_mut();
                    self.ctx.stats.messages_out.fetch_add(1, Ordering::Relaxed);
                    core.enqueue_frame(Chunk::Owned(header), &mut self.ctx);
                    core.enqueue_frame(Chunk::External(payload), &mut self.ctx);
                }
            }
            Cmd::SetData { id, data } => self.with_conn(id, |mut c| c.set_data(data)),
            Cmd::ResumeReading => self.ctx.resume.append(&mut self.paused),
        }
    }

    /// The connection a cross-thread send of `len` admitted bytes is for, if still open;
    /// otherwise the bytes are given back to its backpressure count.
    fn admitted(conns: &mut Slab<Slot>, id: ConnId, len: usize) -> Option<&mut Slot> {
        let slot = conns
            .get_mut(id.slot())
            .filter(|s| s.state.core().id == id)?;
        let core = slot.state.core();
        if core.is_open() && core.shared.open.load(Ordering::Acquire) {
            Some(slot)
        } else {
            core.shared.queued.fetch_sub(len, Ordering::Relaxed);
            None
        }
    }

    /// A polling thread's corked sends, each connection's frames handed over together (see
    /// `Core::send_prepared_batch`). The batch is dropped here, never pinned by a queue.
    fn apply_batch(&mut self, mut batch: SendBatch) {
        // Each connection's frames together, in the order sent (starts are unique). They
        // usually are already (a host answers events in the order they came, and a turn
        // reads a connection's messages together): then only its runs are sorted, to check.
        self.scratch.clear();
        let runs = batch.sends.chunk_by(|a, b| a.id == b.id);
        self.scratch.extend(runs.map(|run| run[0].id));
        self.scratch.sort_unstable();
        if self.scratch.windows(2).any(|w| w[0] == w[1]) {
            batch.sends.sort_unstable_by_key(|f| (f.id.slot(), f.start));
        }
        for group in batch.sends.chunk_by(|a, b| a.id == b.id) {
            let total = group.iter().map(|f| f.len).sum();
            let Some(slot) = Self::admitted(&mut self.conns, group[0].id, total) else {
                continue;
            };
            slot.state.core_mut().send_prepared_batch(
                &batch.frames,
                group,
                &mut self.ctx,
                &mut NoSigPipe(&slot.stream),
            );
        }
    }

    fn with_conn(&mut self, id: ConnId, f: impl FnOnce(Conn<'_>)) {
        let k = id.slot();
        let Some(slot) = self.conns.get_mut(k).filter(|s| s.state.core().id == id) else {
            return;
        };
        f(Conn {
            core: slot.state.core_mut(),
            ctx: &mut self.ctx,
        });
        self.after_io(k);
    }

    // ---- graceful shutdown ----

    fn begin_shutdown(&mut self, started: Instant) {
        if self.shutdown.is_some() {
            return;
        }
        let opts = &self.ctx.shared.opts;
        let close_start = started + opts.drain_delay;
        let window = opts.drain_window;
        let plan = ShutdownPlan {
            close_start,
            deadline: shutdown_deadline(opts, started),
        };
        let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
        let n = keys.len().max(1) as u32;
        for (i, k) in keys.into_iter().enumerate() {
            // Spread the closes evenly over the window so clients don't reconnect at once.
            let at = close_start + window * i as u32 / n;
            self.conns[k].state.begin_shutdown(at, &mut self.ctx);
            self.after_io(k);
        }
        self.shutdown = Some(plan);
    }

    /// Advance a shutdown in progress; true when the worker should stop.
    fn shutdown_step(&mut self) -> bool {
        let Some(plan) = &self.shutdown else {
            return false;
        };
        let now = self.ctx.now;
        if now >= plan.close_start && self.listener.is_some() {
            // From here on, new connections are refused by the kernel: the load balancer
            // has had `drain_delay` to notice the failing health check.
            if let Some(mut l) = self.listener.take() {
                let _ = self.poll.registry().deregister(&mut l);
            }
        }
        (now >= plan.close_start && self.conns.is_empty() && self.rx.is_empty())
            || now >= plan.deadline
    }
}

/// A run of fan-outs stops growing at this size (its frames are copied into one buffer).
const FAN_OUT_RUN_BYTES: usize = 64 * 1024;

/// Consecutive publishes to one topic, or broadcasts, taken from the inbox together.
struct FanOut {
    /// None: every open connection.
    topic: Option<Arc<str>>,
    frames: Vec<Arc<[u8]>>,
    bytes: usize,
}

impl FanOut {
    /// A run of one, for a publish or broadcast; any other command is handed back.
    fn from_cmd(cmd: Cmd) -> Result<FanOut, Cmd> {
        let (topic, frame) = match cmd {
            Cmd::Publish { topic, frame } => (Some(topic), frame),
            Cmd::Broadcast { frame } => (None, frame),
            other => return Err(other),
        };
        Ok(FanOut {
            topic,
            bytes: frame.len(),
            frames: vec![frame],
        })
    }

    /// Add `cmd` to the run if it goes to the same audience; hand it back otherwise.
    fn absorb(&mut self, cmd: Cmd) -> Result<(), Cmd> {
        let frame = match cmd {
            Cmd::Publish { topic, frame } if self.topic.as_deref() == Some(&*topic) => frame,
            Cmd::Broadcast { frame } if self.topic.is_none() => frame,
            other => return Err(other),
        };
        self.bytes += frame.len();
        self.frames.push(frame);
        Ok(())
    }

    /// The frames back to back.
    fn joined(&self) -> Arc<[u8]> {
        if let [one] = self.frames.as_slice() {
            return one.clone();
        }
        let mut all = Vec::with_capacity(self.bytes);
        for f in &self.frames {
            all.extend_from_slice(f);
        }
        Arc::from(all)
    }
}

fn is_transient_accept_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted
    ) || matches!(
        e.raw_os_error(),
        Some(libc::EPROTO) | Some(libc::ECONNABORTED)
    )
}

const INLINE_EVENTS_PER_TURN: usize = 16;

/// Inline mode: the one worker of a server without worker threads, run by whichever
/// thread polls the event queue (as uWebSockets runs its loop on the caller's thread), so
/// events are handled and answered on the thread that made them, with no handoff. Held
/// here between turns; dropped once it has stopped.
#[derive(Default)]
pub(crate) struct InlineWorker(Mutex<Option<Worker>>);

impl InlineWorker {
    pub fn install(&self, mut worker: Worker) {
        worker.inline = true;
        *self.lock() = Some(worker);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Worker>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Run one turn, waiting at most `limit` (after a turn another thread may be running).
    /// False once the worker has stopped.
    pub fn drive(&self, limit: Option<Duration>) -> bool {
        let mut guard = self.lock();
        let Some(worker) = guard.as_mut() else {
            return false;
        };
        if worker.turn(limit) {
            worker.finish();
            *guard = None;
            return false;
        }
        true
    }

    /// The worker, unless a thread is running it.
    fn try_lock(&self) -> Option<std::sync::MutexGuard<'_, Option<Worker>>> {
        match self.0.try_lock() {
            Ok(g) => Some(g),
            Err(std::sync::TryLockError::Poisoned(e)) => Some(e.into_inner()),
            Err(std::sync::TryLockError::WouldBlock) => None,
        }
    }

    /// Run `f` on the worker now if no thread is running it. None if one is (the caller
    /// then queues a command for it) or it has stopped.
    pub fn try_with<R>(&self, f: impl FnOnce(&mut Worker) -> R) -> Option<R> {
        self.try_lock()?.as_mut().map(f)
    }

    /// `try_with` for a command: applied now, or handed back to be queued.
    pub fn try_apply(&self, cmd: Cmd) -> Result<(), Cmd> {
        match self.try_lock().as_mut().and_then(|g| g.as_mut()) {
            Some(worker) => {
                worker.apply(cmd);
                Ok(())
            }
            None => Err(cmd),
        }
    }
}
