//! Coalesced worker wake-ups for hosts that poll the event queue.
//!
//! A host that polls a batch of events and answers each one would wake a worker on every
//! send; on a shared core each wake-up can preempt the host mid-batch, and the worker then
//! writes one reply per turn. Instead, messages (`send_text`, `send_binary`) a thread sends
//! while handling a polled batch are *corked*: encoded at once into one buffer per worker
//! (`SendBatch`), which reaches the worker as one command when anyone polls the queue again,
//! with one wake-up (like uWebSockets' cork): no allocation, channel operation or wake-up
//! per message. Every other call (commands such as close or subscribe, sends from other
//! threads or callbacks, sends after the next poll has begun) wakes the worker at once, and
//! first moves the pending batch ahead of itself, so one thread's calls keep their order.
//!
//! A host may also poll a batch, send, and then block on something else without polling
//! again. So workers watch the cork (`CorkWatch`): one left on for a whole watch period is
//! ended by a worker, and the messages it held are written a few milliseconds late, never
//! stranded. A worker that stops ends any cork on.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::frame::{self, OpCode};
use crate::handler::ConnId;

thread_local! {
    /// (cork identity, poll generation) of the batch this thread last received.
    static CORKED: Cell<(usize, u64)> = const { Cell::new((0, 0)) };
}

/// One per server: counts polls, so a thread's cork ends when the next poll begins.
pub(crate) struct Cork {
    /// Unique per server for the life of the process (an address could be reused by a
    /// later server and match a stale thread-local).
    identity: usize,
    generation: AtomicU64,
    /// The generation of the latest poll that returned events: while it is current, the
    /// thread that received them is corked.
    received: AtomicU64,
    /// Workers with a `CorkWatch` armed.
    watchers: AtomicUsize,
}

impl Default for Cork {
    fn default() -> Cork {
        static NEXT_IDENTITY: AtomicUsize = AtomicUsize::new(1);
        Cork {
            identity: NEXT_IDENTITY.fetch_add(1, Ordering::Relaxed),
            generation: AtomicU64::new(1),
            received: AtomicU64::new(0),
            watchers: AtomicUsize::new(0),
        }
    }
}

impl Cork {
    /// A poll is starting: every thread's cork ends (then flush the deferred wake-ups).
    pub fn begin_poll(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
    }

    /// This thread received a batch: its sends are corked until the next poll begins.
    /// Whether no worker is watching (the caller must ask one to).
    pub fn cork_this_thread(&self) -> bool {
        let generation = self.generation.load(Ordering::SeqCst);
        CORKED.with(|c| c.set((self.identity, generation)));
        self.received.store(generation, Ordering::SeqCst);
        self.watchers.load(Ordering::SeqCst) == 0
    }

    pub fn is_corked(&self) -> bool {
        let generation = self.generation.load(Ordering::SeqCst);
        CORKED.with(|c| c.get()) == (self.identity, generation)
    }

    /// The generation whose cork is on, if one is.
    fn outstanding(&self) -> Option<u64> {
        let generation = self.generation.load(Ordering::SeqCst);
        (self.received.load(Ordering::SeqCst) == generation).then_some(generation)
    }

    /// End the cork of `generation` unless a poll already has. Whether the caller must
    /// flush the deferred wake-ups.
    fn end(&self, generation: u64) -> bool {
        self.generation
            .compare_exchange(
                generation,
                generation + 1,
                Ordering::SeqCst,
                Ordering::SeqCst,
            )
            .is_ok()
    }
}

/// How long a cork may stay on before a worker ends it.
const WATCH_PERIOD: Duration = Duration::from_millis(1);

/// A worker's watch over the cork. Armed when the worker hands the host events (or when a
/// poll finds nobody watching); at each period's end: a cork seen on at the previous check
/// too is ended, a new one is watched for another period, and with none on it disarms.
#[derive(Default)]
pub(crate) struct CorkWatch {
    /// The cork seen on at the last check, and when to check next.
    armed: Option<(Option<u64>, Instant)>,
}

impl CorkWatch {
    pub fn arm(&mut self, cork: &Cork, now: Instant) {
        if self.armed.is_none() {
            cork.watchers.fetch_add(1, Ordering::SeqCst);
            self.armed = Some((None, now + WATCH_PERIOD));
        }
    }

    pub fn disarm(&mut self, cork: &Cork) {
        if self.armed.take().is_some() {
            cork.watchers.fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// The worker is stopping: stop watching, and end any cork on. Whether the caller ended
    /// one and must flush the deferred wake-ups.
    pub fn release(&mut self, cork: &Cork) -> bool {
        self.disarm(cork);
        cork.outstanding().is_some_and(|g| cork.end(g))
    }

    pub fn due(&self) -> Option<Instant> {
        self.armed.map(|(_, due)| due)
    }

    /// Whether the caller ended a cork and must flush the deferred wake-ups.
    pub fn check(&mut self, cork: &Cork, now: Instant) -> bool {
        let Some((seen, due)) = self.armed else {
            return false;
        };
        if now < due {
            return false;
        }
        match cork.outstanding() {
            Some(g) if seen == Some(g) => {
                self.disarm(cork);
                cork.end(g)
            }
            Some(g) => {
                self.armed = Some((Some(g), now + WATCH_PERIOD));
                false
            }
            None => {
                self.disarm(cork);
                // A poll that received events just now may have seen us still watching.
                if cork.outstanding().is_some() {
                    self.arm(cork, now);
                }
                false
            }
        }
    }
}

const IDLE: u8 = 0;
const WOKEN: u8 = 1;
const DEFERRED: u8 = 2;

/// A worker's wake-up state: idle (the next command must wake it), woken (it will drain its
/// inbox), or deferred (commands are waiting for a corked batch to end).
#[derive(Default)]
pub(crate) struct WakeState(AtomicU8);

impl WakeState {
    /// A corked sender queued something: wake the worker when the cork ends (unless it is
    /// already awake).
    pub fn defer(&self) {
        let _ = self
            .0
            .compare_exchange(IDLE, DEFERRED, Ordering::SeqCst, Ordering::SeqCst);
    }

    /// Wake-up for a command queued outside any cork: whether the caller must wake now.
    pub fn claim(&self) -> bool {
        self.0.swap(WOKEN, Ordering::SeqCst) != WOKEN
    }

    /// Whether a deferred wake-up was pending (it is now the caller's to deliver).
    pub fn take_deferred(&self) -> bool {
        self.0
            .compare_exchange(DEFERRED, WOKEN, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
    }

    /// The worker is about to drain its inbox: the next command must wake it again.
    pub fn draining(&self) {
        self.0.store(IDLE, Ordering::SeqCst);
    }
}

/// Messages sent by corked threads to one worker's connections: frames back to back.
#[derive(Default)]
pub(crate) struct SendBatch {
    pub frames: Vec<u8>,
    /// Each message, in the order sent.
    pub sends: Vec<BatchedFrame>,
}

/// One message of a batch: its connection and where its frame lies in `frames`.
#[derive(Clone, Copy)]
pub(crate) struct BatchedFrame {
    pub id: ConnId,
    pub start: usize,
    pub len: usize,
}

impl SendBatch {
    pub fn push(&mut self, id: ConnId, opcode: OpCode, payload: &[u8]) {
        let start = self.frames.len();
        let len = frame::append_frame(&mut self.frames, true, false, opcode, payload);
        self.sends.push(BatchedFrame { id, start, len });
    }

    pub fn is_empty(&self) -> bool {
        self.sends.is_empty()
    }
}

/// The bytes of `sends` (frames in `frames`), as spans that join the frames lying back to
/// back: a host that answers one connection's messages together makes one span of them.
pub(crate) fn spans<'a>(
    frames: &'a [u8],
    sends: &'a [BatchedFrame],
) -> impl Iterator<Item = &'a [u8]> + 'a {
    let mut i = 0;
    std::iter::from_fn(move || {
        let first = sends.get(i)?;
        let (start, mut end) = (first.start, first.start + first.len);
        i += 1;
        while let Some(next) = sends.get(i).filter(|f| f.start == end) {
            end += next.len;
            i += 1;
        }
        Some(&frames[start..end])
    })
}
