//! The event queue: a `Handler` that turns events into owned records which hosts drain in
//! batches from any thread (blocking or not), plus an fd that is readable while events are
//! pending, so a host can plug wsrt into its own loop. When the host falls behind and the
//! queue is full, workers stop reading from sockets until it drains (bounded memory).

use std::any::Any;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::connection::Conn;
use crate::handler::{CloseInfo, ConnId, Decision, Handler, Message, UpgradeRequest};
use crate::os::EventFd;
use crate::server::ServerHandle;

/// One event, owning its data.
pub enum QueuedEvent {
    /// Only with `decide_upgrades`: answer with `ServerHandle::accept` / `reject`.
    Upgrade {
        id: ConnId,
        path: String,
        query: Option<String>,
        headers: Vec<(String, String)>,
        remote: SocketAddr,
        offered_protocols: Vec<String>,
        subprotocol: Option<String>,
        origin: Option<String>,
    },
    Open {
        id: ConnId,
        remote: SocketAddr,
        path: String,
        query: Option<String>,
        headers: Vec<(String, String)>,
        subprotocol: Option<String>,
    },
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
            QueuedEvent::Upgrade { id, .. }
            | QueuedEvent::Open { id, .. }
            | QueuedEvent::Message { id, .. }
            | QueuedEvent::Pong { id, .. }
            | QueuedEvent::Drain { id }
            | QueuedEvent::Close { id, .. } => *id,
        }
    }
}

struct State {
    events: VecDeque<QueuedEvent>,
    waiting: usize,
    /// The event fd has been made readable since it was last cleared.
    signalled: bool,
    /// The server has stopped: no event follows the ones queued.
    stopped: bool,
}

pub struct EventQueue {
    state: Mutex<State>,
    ready: Condvar,
    capacity: usize,
    decide_upgrades: bool,
    paused: AtomicBool,
    /// Events were pushed in the current worker turn; announced at its end.
    unannounced: AtomicBool,
    signal: EventFd,
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
                stopped: false,
            }),
            ready: Condvar::new(),
            capacity: capacity.max(1),
            decide_upgrades,
            paused: AtomicBool::new(false),
            unannounced: AtomicBool::new(false),
            signal: EventFd::new()?,
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

    /// Readable while events are pending (level-triggered); never read or write it yourself.
    pub fn fd(&self) -> std::os::fd::RawFd {
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
    /// (one worker wake-up per batch, see `cork`).
    pub fn poll(&self, out: &mut Vec<QueuedEvent>, max: usize, timeout: Option<Duration>) -> usize {
        let handle = self.handle.get();
        if let Some(h) = handle {
            h.begin_poll();
        }
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut st = self.lock();
        while st.events.is_empty() {
            if st.stopped {
                return 0;
            }
            let wait = match deadline {
                Some(d) => match d.checked_duration_since(Instant::now()) {
                    Some(left) if !left.is_zero() => Some(left),
                    _ => return 0,
                },
                None => None,
            };
            st.waiting += 1;
            st = match wait {
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
            self.signal.clear();
            st.signalled = false;
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
        let mut st = self.lock();
        st.events.push_back(ev);
        if st.events.len() >= self.capacity {
            self.paused.store(true, Ordering::Release);
        }
        self.unannounced.store(true, Ordering::Relaxed);
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
        let mut st = self.lock();
        if st.events.is_empty() {
            return true;
        }
        if !st.signalled {
            self.signal.signal();
            st.signalled = true;
        }
        match st.waiting {
            0 => {}
            1 => self.ready.notify_one(),
            _ => self.ready.notify_all(),
        }
        true
    }
}

/// The `Handler` side of an `EventQueue`.
pub struct QueueHandler(Arc<EventQueue>);

impl Handler for QueueHandler {
    fn on_upgrade(&self, req: &UpgradeRequest<'_>) -> Decision {
        if !self.0.decide_upgrades {
            return Decision::Accept(Default::default());
        }
        self.0.push(QueuedEvent::Upgrade {
            id: req.id,
            path: req.path.to_string(),
            query: req.query.map(String::from),
            headers: req.headers.to_vec(),
            remote: req.remote_addr,
            offered_protocols: req.offered_protocols.to_vec(),
            subprotocol: req.subprotocol.map(String::from),
            origin: req.origin.map(String::from),
        });
        Decision::Defer
    }

    fn on_open(&self, conn: &mut Conn<'_>) {
        self.0.push(QueuedEvent::Open {
            id: conn.id(),
            remote: conn.remote_addr(),
            path: conn.path().to_string(),
            query: conn.query().map(String::from),
            headers: conn.request_headers().to_vec(),
            subprotocol: conn.subprotocol().map(String::from),
        });
    }

    fn on_message(&self, conn: &mut Conn<'_>, msg: Message<'_>) {
        self.0.push(QueuedEvent::Message {
            id: conn.id(),
            text: msg.is_text(),
            data: msg.as_bytes().to_vec(),
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
