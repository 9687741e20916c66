//! The event queue: a `Handler` that turns events into owned records which hosts drain in
//! batches from any thread (blocking or not), plus an fd that is readable while events are
//! pending, so a host can plug wsrt into its own loop. When the host falls behind and the
//! queue is full, workers stop reading from sockets until it drains (bounded memory).

use std::any::Any;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::connection::Conn;
use crate::handler::{CloseInfo, ConnId, Decision, Handler, Message, UpgradeRequest};
use crate::os::EventFd;
use crate::server::ServerHandle;

/// The request behind an `Upgrade` or `Open` event (boxed: the events that are many,
/// messages, stay small to move).
#[derive(Debug)]
pub struct RequestInfo {
    pub id: ConnId,
    pub remote: SocketAddr,
    pub path: String,
    pub query: Option<String>,
    pub headers: Vec<(String, String)>,
    /// The server's choice (`Upgrade`), or the one agreed (`Open`).
    pub subprotocol: Option<String>,
    /// `Upgrade` only (empty on `Open`): what the client offered, in its order.
    pub offered_protocols: Vec<String>,
    /// `Upgrade` only (None on `Open`).
    pub origin: Option<String>,
}

impl RequestInfo {
    pub fn upgrade(req: &UpgradeRequest<'_>) -> Box<RequestInfo> {
        Box::new(RequestInfo {
            id: req.id,
            remote: req.remote_addr,
            path: req.path.to_string(),
            query: req.query.map(String::from),
            headers: req.headers.to_vec(),
            subprotocol: req.subprotocol.map(String::from),
            offered_protocols: req.offered_protocols.to_vec(),
            origin: req.origin.map(String::from),
        })
    }

    pub fn open(conn: &Conn<'_>) -> Box<RequestInfo> {
        Box::new(RequestInfo {
            id: conn.id(),
            remote: conn.remote_addr(),
            path: conn.path().to_string(),
            query: conn.query().map(String::from),
            headers: conn.request_headers().to_vec(),
            subprotocol: conn.subprotocol().map(String::from),
            offered_protocols: Vec::new(),
            origin: None,
        })
    }
}

/// One event, owning its data.
pub enum QueuedEvent {
    /// Only with `decide_upgrades`: answer with `ServerHandle::accept` / `reject`.
    Upgrade(Box<RequestInfo>),
    Open(Box<RequestInfo>),
    Message {
        id: ConnId,
        text: bool,
        data: Vec<u8>,
    },
    Pong {
        id: ConnId,
        data: Vec<u8>,
    },
    Drain {
        id: ConnId,
    },
    Close {
        id: ConnId,
        info: CloseInfo,
        /// The host data attached to the connection, handed back for release.
        data: Option<Box<dyn Any + Send>>,
    },
}

impl QueuedEvent {
    pub fn id(&self) -> ConnId {
        match self {
            QueuedEvent::Upgrade(r) | QueuedEvent::Open(r) => r.id,
            QueuedEvent::Message { id, .. }
            | QueuedEvent::Pong { id, .. }
            | QueuedEvent::Drain { id }
            | QueuedEvent::Close { id, .. } => *id,
        }
    }
}

struct State {
    events: VecDeque<QueuedEvent>,
    waiting: usize,
    /// The event fd has been made readable (or is about to be) since it was last cleared.
    signalled: bool,
    /// The fd was cleared while a signal was still on its way: it may turn readable with
    /// nothing queued, so pollers that find the queue empty clear it again.
    stale_signal: bool,
    /// The server has stopped: no event follows the ones queued.
    stopped: bool,
    /// Inline mode: a poller is running the worker's loop; the others wait for it.
    driving: bool,
    /// Message buffers given back by pollers (`recycle`), reused for the next messages.
    spare: Vec<Vec<u8>>,
    /// Their capacity in all.
    spare_bytes: usize,
}

/// Buffers up to this capacity are recycled, as long as the spares hold at most
/// `SPARE_BYTES` in all.
const SPARE_CAPACITY: usize = 64 * 1024;
const SPARE_BYTES: usize = 2 * 1024 * 1024;

pub struct EventQueue {
    state: Mutex<State>,
    ready: Condvar,
    capacity: usize,
    decide_upgrades: bool,
    paused: AtomicBool,
    /// Events were pushed in the current worker turn; announced at its end.
    unannounced: AtomicBool,
    signal: EventFd,
    /// Someone asked for the event fd: keep it readable while events are pending (two
    /// syscalls per batch otherwise saved).
    fd_used: AtomicBool,
    /// Signals decided under the lock and not yet written (`announce` writes after
    /// unlocking).
    signalling: AtomicUsize,
    handle: OnceLock<ServerHandle>,
}

impl EventQueue {
    /// `capacity`: events held before workers stop reading. `decide_upgrades`: deliver
    /// `Upgrade` events and wait for the host's decision instead of accepting.
    pub fn new(capacity: usize, decide_upgrades: bool) -> std::io::Result<Arc<EventQueue>> {
        Ok(Arc::new(EventQueue {
            state: Mutex::new(State {
                events: VecDeque::new(),
                waiting: 0,
                signalled: false,
                stale_signal: false,
                stopped: false,
                driving: false,
                spare: Vec::new(),
                spare_bytes: 0,
            }),
            ready: Condvar::new(),
            capacity: capacity.max(1),
            decide_upgrades,
            paused: AtomicBool::new(false),
            unannounced: AtomicBool::new(false),
            signal: EventFd::new()?,
            fd_used: AtomicBool::new(false),
            signalling: AtomicUsize::new(0),
            handle: OnceLock::new(),
        }))
    }

    /// The handler to start the server with.
    pub fn handler(self: &Arc<Self>) -> QueueHandler {
        QueueHandler(self.clone())
    }

    /// Give the queue the server's handle (to resume reading after a pause).
    pub fn attach(&self, handle: ServerHandle) {
        let _ = self.handle.set(handle);
    }

    /// Readable while events are pending (level-triggered; rarely also just after they were
    /// taken, until the next `poll` finds the queue empty); never read or write it yourself.
    /// Not for inline servers (`Server::start_inline`): their events are made inside `poll`.
    pub fn fd(&self) -> std::os::fd::RawFd {
        if !self.fd_used.swap(true, Ordering::SeqCst) {
            let mut st = self.lock();
            if !st.events.is_empty() && !st.signalled {
                self.signal.signal();
                st.signalled = true;
            }
        }
        self.signal.raw_fd()
    }

    pub fn len(&self) -> usize {
        self.lock().events.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Workers are holding off reading because the queue is full.
    pub fn is_paused(&self) -> bool {
        self.paused.load(Ordering::Acquire)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Move up to `max` events into `out`, waiting up to `timeout` for the first one
    /// (`Some(ZERO)` = don't wait, `None` = wait forever). Returns how many were moved.
    /// Once the server has stopped and its last events are taken, returns 0 at once, so a
    /// poller waiting forever wakes when the server stops.
    ///
    /// Sends this thread makes after receiving events are corked until the next poll begins
    /// (one worker wake-up per batch, see `cork`). With an inline server, the poll runs the
    /// worker's loop on this thread (one turn at least, even with a zero timeout); while
    /// one thread does, other pollers wait for it.
    pub fn poll(&self, out: &mut Vec<QueuedEvent>, max: usize, timeout: Option<Duration>) -> usize {
        let handle = self.handle.get();
        if let Some(h) = handle {
            h.begin_poll();
        }
        let inline = handle.filter(|h| h.is_inline());
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut drove = false;
        let mut st = self.lock();
        while st.events.is_empty() {
            if st.stale_signal {
                self.clear_signal(&mut st);
            }
            if st.stopped {
                return 0;
            }
            let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            if let Some(h) = inline.filter(|_| !st.driving) {
                if drove && left == Some(Duration::ZERO) {
                    return 0;
                }
                st.driving = true;
                drop(st);
                let running = {
                    let _driving = Driving(self);
                    h.drive(left)
                };
                drove = true;
                st = self.lock();
                if !running && st.events.is_empty() {
                    return 0;
                }
                continue;
            }
            if left == Some(Duration::ZERO) {
                return 0;
            }
            st.waiting += 1;
            st = match left {
                Some(left) => {
                    self.ready
                        .wait_timeout(st, left)
                        .unwrap_or_else(|e| e.into_inner())
                        .0
                }
                None => self.ready.wait(st).unwrap_or_else(|e| e.into_inner()),
            };
            st.waiting -= 1;
        }
        let n = max.min(st.events.len());
        out.extend(st.events.drain(..n));
        if st.events.is_empty() && st.signalled {
            self.clear_signal(&mut st);
        }
        let resume = st.events.len() <= self.capacity / 2 && self.paused.load(Ordering::Acquire);
        drop(st);
        if let Some(h) = handle {
            if resume {
                self.paused.store(false, Ordering::Release);
                h.resume_reading();
            }
            if n > 0 {
                h.cork_this_thread();
            }
        }
        n
    }

    /// Queue an event; pollers learn of it at the end of the worker's turn (`announce`), so
    /// a turn that reads many messages wakes the host once.
    fn push(&self, ev: QueuedEvent) {
        self.push_with(|_| None, |_| ev);
    }

    /// `push` of an event made under the lock, with a spare buffer if `take` finds one.
    fn push_with(
        &self,
        take: impl FnOnce(&mut Vec<Vec<u8>>) -> Option<Vec<u8>>,
        make: impl FnOnce(Vec<u8>) -> QueuedEvent,
    ) {
        let mut st = self.lock();
        let buf = take(&mut st.spare).unwrap_or_default();
        st.spare_bytes -= buf.capacity();
        let ev = make(buf);
        st.events.push_back(ev);
        if st.events.len() >= self.capacity {
            self.paused.store(true, Ordering::Release);
        }
        self.unannounced.store(true, Ordering::Relaxed);
    }

    /// Drop polled events (`events` is left empty), keeping their message buffers for the
    /// next messages: no allocation per message once warm. Any thread; a CLOSE event's host
    /// data is released here, on the caller's thread.
    pub fn recycle(&self, events: &mut Vec<QueuedEvent>) {
        if !events.is_empty() {
            let mut st = self.lock();
            for ev in events.iter_mut() {
                let QueuedEvent::Message { data, .. } = ev else {
                    continue;
                };
                let capacity = data.capacity();
                if capacity == 0 || capacity > SPARE_CAPACITY {
                    continue;
                }
                if st.spare_bytes + capacity > SPARE_BYTES {
                    break;
                }
                let mut buf = std::mem::take(data);
                buf.clear();
                st.spare_bytes += capacity;
                st.spare.push(buf);
            }
        }
        // Outside the lock: a CLOSE event's finalizer is host code that may call wsrt.
        events.clear();
    }

    /// Make the event fd unreadable (the queue is empty). A signal decided but not yet
    /// written would make it readable again with nothing queued: then the next pollers to
    /// find the queue empty clear it too, until no signal is on its way.
    fn clear_signal(&self, st: &mut State) {
        // Counted before clearing: a signal that finished after this load was written after
        // it, so it may land after the clear.
        st.stale_signal = self.signalling.load(Ordering::SeqCst) > 0;
        self.signal.clear();
        st.signalled = false;
    }

    /// Every worker has stopped: wake the pollers, and answer every later poll at once.
    fn stopped(&self) {
        self.announce();
        let mut st = self.lock();
        st.stopped = true;
        self.ready.notify_all();
    }

    /// Make the event fd readable and wake waiting pollers, if events were pushed. Whether
    /// any were.
    fn announce(&self) -> bool {
        if !self.unannounced.swap(false, Ordering::Relaxed) {
            return false;
        }
        if let Some(wake) = self.decide_wake() {
            self.wake(wake);
        }
        true
    }

    /// Under the lock: whom `announce` must wake once it is released (None: the events
    /// were taken already).
    fn decide_wake(&self) -> Option<Wake> {
        let mut st = self.lock();
        if st.events.is_empty() {
            return None;
        }
        let signal = !st.signalled && self.fd_used.load(Ordering::Relaxed);
        if signal {
            st.signalled = true;
            self.signalling.fetch_add(1, Ordering::SeqCst);
        }
        Some(Wake {
            signal,
            waiting: st.waiting,
        })
    }

    /// After unlocking: a poller woken on this core would otherwise preempt us, find the
    /// lock held and sleep again (two more context switches per batch).
    fn wake(&self, wake: Wake) {
        if wake.signal {
            self.signal.signal();
            self.signalling.fetch_sub(1, Ordering::SeqCst);
        }
        match wake.waiting {
            0 => {}
            1 => self.ready.notify_one(),
            _ => self.ready.notify_all(),
        }
    }
}

/// What an announcement wakes: the event fd, and how many waiting pollers.
struct Wake {
    signal: bool,
    waiting: usize,
}

/// Inline mode: the mark of the poller running the loop, taken off when it returns (or
/// unwinds), so the pollers waiting for it never wait forever.
struct Driving<'a>(&'a EventQueue);

impl Drop for Driving<'_> {
    fn drop(&mut self) {
        let mut st = self.0.lock();
        st.driving = false;
        if st.waiting > 0 {
            // One of them may take over the loop.
            self.0.ready.notify_all();
        }
    }
}

/// The `Handler` side of an `EventQueue`.
pub struct QueueHandler(Arc<EventQueue>);

impl Handler for QueueHandler {
    fn on_upgrade(&self, req: &UpgradeRequest<'_>) -> Decision {
        if !self.0.decide_upgrades {
            return Decision::Accept(Default::default());
        }
        self.0.push(QueuedEvent::Upgrade(RequestInfo::upgrade(req)));
        Decision::Defer
    }

    fn on_open(&self, conn: &mut Conn<'_>) {
        self.0.push(QueuedEvent::Open(RequestInfo::open(conn)));
    }

    fn on_message(&self, conn: &mut Conn<'_>, msg: Message<'_>) {
        let (id, text, bytes) = (conn.id(), msg.is_text(), msg.as_bytes());
        if bytes.len() > SPARE_CAPACITY {
            let data = bytes.to_vec();
            return self.0.push(QueuedEvent::Message { id, text, data });
        }
        // The last spare, if it is large enough (spares are similar: one workload's sizes).
        let take = |spare: &mut Vec<Vec<u8>>| {
            spare
                .last()
                .is_some_and(|b| b.capacity() >= bytes.len())
                .then(|| spare.pop())
                .flatten()
        };
        self.0.push_with(take, |mut data| {
            data.extend_from_slice(bytes);
            QueuedEvent::Message { id, text, data }
        });
    }

    fn on_pong(&self, conn: &mut Conn<'_>, payload: &[u8]) {
        self.0.push(QueuedEvent::Pong {
            id: conn.id(),
            data: payload.to_vec(),
        });
    }

    fn on_drain(&self, conn: &mut Conn<'_>) {
        self.0.push(QueuedEvent::Drain { id: conn.id() });
    }

    fn on_close(&self, conn: &mut Conn<'_>, info: &CloseInfo) {
        self.0.push(QueuedEvent::Close {
            id: conn.id(),
            info: info.clone(),
            data: conn.take_data(),
        });
    }

    fn reading_paused(&self) -> bool {
        self.0.paused.load(Ordering::Relaxed)
    }

    fn on_turn_end(&self) -> bool {
        self.0.announce()
    }

    fn on_stopped(&self) {
        self.0.stopped();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn readable(fd: std::os::fd::RawFd) -> bool {
        let mut poll = mio::Poll::new().unwrap();
        let mut source = mio::unix::SourceFd(&fd);
        poll.registry()
            .register(&mut source, mio::Token(0), mio::Interest::READABLE)
            .unwrap();
        let mut events = mio::Events::with_capacity(1);
        poll.poll(&mut events, Some(Duration::ZERO)).unwrap();
        !events.is_empty()
    }

    #[test]
    fn a_signal_that_lands_after_the_fd_was_cleared_is_cleared_by_the_next_poll() {
        let q = EventQueue::new(10, false).unwrap();
        let fd = q.fd();
        q.push(QueuedEvent::Drain {
            id: ConnId::new(0, 1, 1),
        });
        // The worker decides to signal, and is preempted before writing it...
        let wake = q.decide_wake().expect("an event is queued");
        assert!(wake.signal);
        // ...while a poller takes the event and clears the fd.
        let mut out = Vec::new();
        assert_eq!(q.poll(&mut out, 10, Some(Duration::ZERO)), 1);
        q.wake(wake);
        assert!(readable(fd), "the late signal made the fd readable");
        // The host wakes for it: the poll that finds nothing clears it, or it would spin.
        assert_eq!(q.poll(&mut out, 10, Some(Duration::ZERO)), 0);
        assert!(!readable(fd), "readable with nothing queued");
        // And the next event signals as usual.
        q.push(QueuedEvent::Drain {
            id: ConnId::new(0, 1, 1),
        });
        assert!(q.announce());
        assert!(readable(fd));
        assert_eq!(q.poll(&mut out, 10, Some(Duration::ZERO)), 1);
        assert!(!readable(fd));
    }
}
