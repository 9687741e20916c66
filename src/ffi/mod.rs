//! The C ABI (`include/wsrt.h`). Thin: it converts, checks, catches panics and calls the
//! server. Conventions: every function returns an `int` status (`WSRT_OK` = 0, negative
//! `WSRT_ERR_*`), outputs go through pointer arguments, `wsrt_last_error()` gives the detail
//! of the last failure on the calling thread, and `*_free(NULL)` is a no-op.
//!
//! Threads: `wsrt_send`, `wsrt_close`, `wsrt_publish` and the other `wsrt_*(server, ...)`
//! functions may be called from any thread. A batch belongs to one caller at a time.
//! Callbacks run on worker threads; they must not block and must not call `wsrt_poll`.

#![allow(non_camel_case_types)]
#![deny(unsafe_op_in_unsafe_fn, clippy::undocumented_unsafe_blocks)]

use std::any::Any;
use std::cell::RefCell;
use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::os::fd::FromRawFd;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use crate::event_queue::{EventQueue, QueuedEvent, RequestInfo};
use crate::frame::OpCode;
use crate::{
    Accept, CloseInfo, Conn, ConnId, Decision, Handler, Message, Options, Reject, SendStatus,
    Server, ServerHandle, UpgradeRequest,
};

/// Success.
pub const WSRT_OK: c_int = 0;
/// A required pointer argument was NULL.
pub const WSRT_ERR_NULL: c_int = -1;
/// Unknown option name or a value it does not accept (see `wsrt_last_error`).
pub const WSRT_ERR_OPTION: c_int = -2;
/// The operating system refused (e.g. the listen address is in use).
pub const WSRT_ERR_IO: c_int = -3;
/// No such connection: closed, or a stale or unknown id.
pub const WSRT_ERR_GONE: c_int = -4;
/// The server is shutting down or has stopped.
pub const WSRT_ERR_STOPPED: c_int = -5;
/// The call does not fit the server's mode (e.g. `wsrt_poll` on a callback server).
pub const WSRT_ERR_MODE: c_int = -6;
/// An argument is invalid (text that is not UTF-8, a status outside 400..599, ...).
pub const WSRT_ERR_INVALID: c_int = -7;
/// The wait ended before the work was done.
pub const WSRT_ERR_TIMEOUT: c_int = -8;
/// An internal error was caught at the boundary (a bug in wsrt; please report it).
pub const WSRT_ERR_PANIC: c_int = -9;

/// Send result: accepted; the connection is not under backpressure.
pub const WSRT_SENT: c_int = 0;
/// Send result: accepted but queued for a slow client; a DRAIN event follows.
pub const WSRT_QUEUED: c_int = 1;
/// Send result: refused, the connection's queue is over `max_backpressure`.
pub const WSRT_DROPPED: c_int = 2;
/// Send result: the connection is gone.
pub const WSRT_GONE: c_int = 3;

/// Event kinds (`wsrt_event.kind`).
pub const WSRT_EVENT_UPGRADE: u32 = 1;
pub const WSRT_EVENT_OPEN: u32 = 2;
pub const WSRT_EVENT_MESSAGE: u32 = 3;
pub const WSRT_EVENT_PONG: u32 = 4;
pub const WSRT_EVENT_DRAIN: u32 = 5;
pub const WSRT_EVENT_CLOSE: u32 = 6;

/// `wsrt_server_start` flag: deliver UPGRADE events and wait for `wsrt_accept` /
/// `wsrt_reject` (within `handshake_timeout`) instead of accepting every valid upgrade.
pub const WSRT_FLAG_DECIDE_UPGRADES: u32 = 1;
/// `wsrt_server_start` flag, event-queue mode only: no worker threads; the server's one
/// worker runs inside `wsrt_poll`, on the polling thread (as uWebSockets runs its loop on
/// the caller's thread), so events are handled and answered without a handoff between
/// threads: the fastest mode for a host that polls in a loop. Nothing happens between
/// polls: keep polling. Sends and other calls made while no thread is in `wsrt_poll` take
/// effect at once (publishes and broadcasts when the next poll begins, so that a burst of
/// them goes out together) and are written when the next poll begins; while a thread is in
/// `wsrt_poll`, calls from other threads wake it. `workers` must be 0 or 1; there is no
/// event fd. `wsrt_server_shutdown` / `wsrt_server_free` run the loop until it stops.
pub const WSRT_FLAG_POLL_INLINE: u32 = 2;

/// `on_upgrade` callback results (or a status 400..=599 to reject with).
pub const WSRT_ACCEPT: c_int = 0;
pub const WSRT_DEFER: c_int = 1;

pub const WSRT_VERSION_MAJOR: u32 = 0;
pub const WSRT_VERSION_MINOR: u32 = 1;
pub const WSRT_VERSION_PATCH: u32 = 0;

/// A header (both strings NUL-terminated, UTF-8).
#[repr(C)]
pub struct wsrt_header {
    pub name: *const c_char,
    pub value: *const c_char,
}

/// One event. Every pointer in it stays valid until the batch that holds it is polled again
/// or freed (in callback mode: until the callback returns). Fields that don't apply to the
/// kind are 0 / NULL.
#[repr(C)]
pub struct wsrt_event {
    /// `WSRT_EVENT_*`.
    pub kind: u32,
    /// The connection id (never 0).
    pub conn: u64,
    /// MESSAGE and PONG: the payload; CLOSE: the reason (UTF-8, not NUL-terminated).
    pub data: *const u8,
    pub len: usize,
    /// MESSAGE: true for text (valid UTF-8), false for binary.
    pub is_text: bool,
    /// CLOSE: the close code (1006 when no close frame was exchanged).
    pub close_code: u16,
    /// CLOSE: both close frames were exchanged.
    pub clean: bool,
    /// UPGRADE, OPEN: the client's address, "ip:port" (from a PROXY header or trusted
    /// forwarding headers when configured).
    pub remote_addr: *const c_char,
    /// UPGRADE, OPEN: the request path, without the query.
    pub path: *const c_char,
    /// UPGRADE, OPEN: the query after '?', or NULL.
    pub query: *const c_char,
    /// UPGRADE: the server's choice from `subprotocols`; OPEN: the agreed one; or NULL.
    pub subprotocol: *const c_char,
    /// UPGRADE: the Origin header, or NULL.
    pub origin: *const c_char,
    /// UPGRADE, OPEN: the request headers, in order.
    pub headers: *const wsrt_header,
    pub header_count: usize,
    /// CLOSE: the data attached with `wsrt_set_data` / `wsrt_conn_set_data`, or NULL. Its
    /// finalizer runs after this event (poll mode: when the batch is polled again or freed;
    /// callback mode: when `on_close` returns).
    pub user_data: *mut c_void,
}

/// Counters of a server (this struct only grows at the end).
#[repr(C)]
#[derive(Default)]
pub struct wsrt_stats {
    pub open: u64,
    pub accepted: u64,
    pub upgraded: u64,
    pub closed: u64,
    pub messages_in: u64,
    pub messages_out: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub backpressure_queued: u64,
    pub backpressure_dropped: u64,
    pub protocol_errors: u64,
    /// Refused handshakes, all reasons (see `wsrt_stats_rejected` for one reason).
    pub rejected: u64,
    /// Fan-out writes to idle connections made through io_uring, in batches (0 where the
    /// `io_uring` option is off or the kernel refuses io_uring).
    pub batched_writes: u64,
}

/// Callback mode: function pointers called on worker threads. NULL members are skipped.
/// `conn` is valid only during the call; use it for fast-path sends (`wsrt_conn_send`).
#[repr(C)]
pub struct wsrt_callbacks {
    /// Return `WSRT_ACCEPT`, `WSRT_DEFER` (decide later with `wsrt_accept` / `wsrt_reject`)
    /// or a status 400..=599 to reject. NULL = accept every valid upgrade. `conn` is NULL here.
    pub on_upgrade: Option<
        extern "C" fn(
            user_data: *mut c_void,
            conn: *mut wsrt_conn,
            event: *const wsrt_event,
        ) -> c_int,
    >,
    pub on_open: Option<
        extern "C" fn(user_data: *mut c_void, conn: *mut wsrt_conn, event: *const wsrt_event),
    >,
    pub on_message: Option<
        extern "C" fn(user_data: *mut c_void, conn: *mut wsrt_conn, event: *const wsrt_event),
    >,
    pub on_pong: Option<
        extern "C" fn(user_data: *mut c_void, conn: *mut wsrt_conn, event: *const wsrt_event),
    >,
    pub on_drain: Option<
        extern "C" fn(user_data: *mut c_void, conn: *mut wsrt_conn, event: *const wsrt_event),
    >,
    pub on_close: Option<
        extern "C" fn(user_data: *mut c_void, conn: *mut wsrt_conn, event: *const wsrt_event),
    >,
}

/// Server options, set by name (the option table of `ws-echo --help`).
pub struct wsrt_config {
    opts: Options,
}

/// A running server.
pub struct wsrt_server {
    handle: ServerHandle,
    queue: Option<Arc<EventQueue>>,
    server: Mutex<Option<Server>>,
    joined: Mutex<Option<mpsc::Receiver<()>>>,
}

/// A batch of polled events, owned by one caller at a time.
pub struct wsrt_batch {
    raw: Vec<QueuedEvent>,
    events: Vec<wsrt_event>,
    strings: Vec<CString>,
    headers: Vec<Vec<wsrt_header>>,
}

/// The connection a callback runs for (valid only during the callback).
pub struct wsrt_conn {
    _private: [u8; 0],
}

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

fn set_error(msg: impl Into<String>) {
    let msg = CString::new(msg.into().replace('\0', " ")).unwrap_or_default();
    LAST_ERROR.with(|e| *e.borrow_mut() = msg);
}

/// Run `f`, turning a panic into `WSRT_ERR_PANIC` (no panic ever crosses the boundary).
fn guard(f: impl FnOnce() -> c_int) -> c_int {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(rc) => rc,
        Err(_) => {
            set_error("internal error (panic) caught at the C boundary");
            WSRT_ERR_PANIC
        }
    }
}

fn fail(rc: c_int, msg: impl Into<String>) -> c_int {
    set_error(msg);
    rc
}

/// Borrow a NUL-terminated UTF-8 string argument.
///
/// # Safety
/// `p` is NULL or points to a NUL-terminated string valid for the call.
unsafe fn str_arg<'a>(p: *const c_char, what: &str) -> Result<&'a str, c_int> {
    if p.is_null() {
        return Err(fail(WSRT_ERR_NULL, format!("{what} is NULL")));
    }
    // SAFETY: non-NULL and NUL-terminated per the caller's contract.
    unsafe { CStr::from_ptr(p) }
        .to_str()
        .map_err(|_| fail(WSRT_ERR_INVALID, format!("{what} is not UTF-8")))
}

/// Borrow a byte buffer argument (NULL allowed when `len` is 0).
///
/// # Safety
/// `p` points to `len` readable bytes, or `len` is 0.
unsafe fn bytes_arg<'a>(p: *const u8, len: usize) -> Result<&'a [u8], c_int> {
    if len == 0 {
        return Ok(&[]);
    }
    if p.is_null() {
        return Err(fail(WSRT_ERR_NULL, "data is NULL but len is not 0"));
    }
    // SAFETY: `p` points to `len` readable bytes per the caller's contract.
    Ok(unsafe { std::slice::from_raw_parts(p, len) })
}

/// # Safety
/// `headers` points to `count` valid `wsrt_header`s (or `count` is 0).
unsafe fn headers_arg(
    headers: *const wsrt_header,
    count: usize,
) -> Result<Vec<(String, String)>, c_int> {
    if count == 0 {
        return Ok(Vec::new());
    }
    if headers.is_null() {
        return Err(fail(WSRT_ERR_NULL, "headers is NULL but count is not 0"));
    }
    // SAFETY: `headers` points to `count` elements per the caller's contract.
    let hs = unsafe { std::slice::from_raw_parts(headers, count) };
    hs.iter()
        .map(|h| {
            // SAFETY: each name/value is a NUL-terminated string per the contract.
            let name = unsafe { str_arg(h.name, "header name") }?;
            // SAFETY: as above.
            let value = unsafe { str_arg(h.value, "header value") }?;
            if !crate::handshake::valid_header(name, value) {
                return Err(fail(
                    WSRT_ERR_INVALID,
                    format!("header {name:?} is not valid HTTP (CR/LF or bad name)"),
                ));
            }
            Ok((name.to_string(), value.to_string()))
        })
        .collect()
}

/// Host text must be UTF-8 (clients would close with 1007); binary may be anything. The
/// ASCII check runs first: for the short messages most hosts send it is several times
/// cheaper than full validation.
fn check_text(data: &[u8], is_text: bool) -> Result<(), c_int> {
    if !is_text || data.is_ascii() || std::str::from_utf8(data).is_ok() {
        Ok(())
    } else {
        Err(not_utf8())
    }
}

fn not_utf8() -> c_int {
    fail(WSRT_ERR_INVALID, "text message is not valid UTF-8")
}

fn message(data: &[u8], is_text: bool) -> Result<Message<'_>, c_int> {
    if is_text {
        std::str::from_utf8(data)
            .map(Message::Text)
            .map_err(|_| not_utf8())
    } else {
        Ok(Message::Binary(data))
    }
}

fn send_status(s: SendStatus) -> c_int {
    match s {
        SendStatus::Sent => WSRT_SENT,
        SendStatus::Queued => WSRT_QUEUED,
        SendStatus::Dropped => WSRT_DROPPED,
        SendStatus::Gone => WSRT_GONE,
    }
}

/// # Safety
/// `server` is NULL or a pointer returned by `wsrt_server_start` and not yet freed.
unsafe fn server_ref<'a>(server: *const wsrt_server) -> Result<&'a wsrt_server, c_int> {
    // SAFETY: per the caller's contract.
    unsafe { server.as_ref() }.ok_or_else(|| fail(WSRT_ERR_NULL, "server is NULL"))
}

// ---------------------------------------------------------------------------------------
// Version and errors

/// The library version, e.g. "0.1.0" (static string).
#[no_mangle]
pub extern "C" fn wsrt_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast()
}

/// A static description of a status code.
#[no_mangle]
pub extern "C" fn wsrt_strerror(code: c_int) -> *const c_char {
    let s: &'static str = match code {
        WSRT_OK => "ok\0",
        WSRT_ERR_NULL => "a required pointer argument was NULL\0",
        WSRT_ERR_OPTION => "unknown option or invalid value\0",
        WSRT_ERR_IO => "the operating system refused the operation\0",
        WSRT_ERR_GONE => "no such connection (closed, stale or unknown id)\0",
        WSRT_ERR_STOPPED => "the server is shutting down or has stopped\0",
        WSRT_ERR_MODE => "the call does not fit the server's mode\0",
        WSRT_ERR_INVALID => "invalid argument\0",
        WSRT_ERR_TIMEOUT => "timed out\0",
        WSRT_ERR_PANIC => "internal error caught at the C boundary\0",
        _ => "unknown status code\0",
    };
    s.as_ptr().cast()
}

/// Detail of the last failure on this thread (e.g. which option was wrong and what it
/// accepts). Valid until the next failing wsrt call on this thread. Never NULL.
#[no_mangle]
pub extern "C" fn wsrt_last_error() -> *const c_char {
    LAST_ERROR.with(|e| e.borrow().as_ptr())
}

// ---------------------------------------------------------------------------------------
// Config

/// A new config with every option at its default. Free it with `wsrt_config_free`.
/// Returns NULL only if memory is exhausted.
#[no_mangle]
pub extern "C" fn wsrt_config_new() -> *mut wsrt_config {
    catch_unwind(|| {
        Box::into_raw(Box::new(wsrt_config {
            opts: Options::default(),
        }))
    })
    .unwrap_or(std::ptr::null_mut())
}

/// Set an option by name (`max_message_size` or `max-message-size`) from its text form
/// (`16MiB`, `30s`, ...). On `WSRT_ERR_OPTION`, `wsrt_last_error()` names the option and
/// what it accepts.
///
/// # Safety
/// `config` comes from `wsrt_config_new`; `name` and `value` are NUL-terminated strings.
#[no_mangle]
pub unsafe extern "C" fn wsrt_config_set(
    config: *mut wsrt_config,
    name: *const c_char,
    value: *const c_char,
) -> c_int {
    guard(|| {
        // SAFETY: per the function's contract.
        let Some(cfg) = (unsafe { config.as_mut() }) else {
            return fail(WSRT_ERR_NULL, "config is NULL");
        };
        // SAFETY: per the function's contract.
        let (name, value) = match unsafe { (str_arg(name, "name"), str_arg(value, "value")) } {
            (Ok(n), Ok(v)) => (n, v),
            (Err(rc), _) | (_, Err(rc)) => return rc,
        };
        match cfg.opts.set(name, value) {
            Ok(()) => WSRT_OK,
            Err(e) => fail(WSRT_ERR_OPTION, e.to_string()),
        }
    })
}

/// Free a config. NULL is a no-op.
///
/// # Safety
/// `config` is NULL or comes from `wsrt_config_new` and is not used afterwards.
#[no_mangle]
pub unsafe extern "C" fn wsrt_config_free(config: *mut wsrt_config) {
    if !config.is_null() {
        // SAFETY: created by Box::into_raw in wsrt_config_new; freed once per the contract.
        drop(unsafe { Box::from_raw(config) });
    }
}

// ---------------------------------------------------------------------------------------
// Server

/// Start a server: bind the `listen` option and start the workers. The config is only
/// read (the caller still frees it). `callbacks` NULL = event-queue mode (drain events with
/// `wsrt_poll`); otherwise callback mode, with `user_data` passed to every callback (it must
/// be usable from any worker thread). `flags`: 0, or `WSRT_FLAG_DECIDE_UPGRADES` and/or
/// `WSRT_FLAG_POLL_INLINE` (event-queue mode).
/// On success `*out` is a server to free with `wsrt_server_free`.
/// wsrt's threads run with SIGPIPE blocked, so a client that vanishes mid-write is an
/// error for wsrt, never a SIGPIPE that kills the host; the caller's own mask and signal
/// dispositions are left as they were. (Callbacks run on these threads too.)
///
/// # Safety
/// `config` comes from `wsrt_config_new`; `callbacks` is NULL or points to a struct read
/// during this call; `out` is a valid pointer.
#[no_mangle]
pub unsafe extern "C" fn wsrt_server_start(
    config: *const wsrt_config,
    callbacks: *const wsrt_callbacks,
    user_data: *mut c_void,
    flags: u32,
    out: *mut *mut wsrt_server,
) -> c_int {
    guard(|| {
        if out.is_null() {
            return fail(WSRT_ERR_NULL, "out is NULL");
        }
        // SAFETY: per the function's contract.
        let Some(cfg) = (unsafe { config.as_ref() }) else {
            return fail(WSRT_ERR_NULL, "config is NULL");
        };
        let decide = flags & WSRT_FLAG_DECIDE_UPGRADES != 0;
        let inline = flags & WSRT_FLAG_POLL_INLINE != 0;
        if inline && !callbacks.is_null() {
            return fail(
                WSRT_ERR_MODE,
                "WSRT_FLAG_POLL_INLINE needs an event-queue server (callbacks == NULL)",
            );
        }
        // SAFETY: per the function's contract.
        let (handler, queue): (Arc<dyn Handler>, _) = match unsafe { callbacks.as_ref() } {
            Some(cbs) => (
                Arc::new(CallbackHandler {
                    on_upgrade: cbs.on_upgrade,
                    on_open: cbs.on_open,
                    on_message: cbs.on_message,
                    on_pong: cbs.on_pong,
                    on_drain: cbs.on_drain,
                    on_close: cbs.on_close,
                    user_data: user_data as usize,
                    decide,
                }),
                None,
            ),
            None => match EventQueue::new(cfg.opts.max_queued_events, decide) {
                Ok(q) => (Arc::new(q.handler()), Some(q)),
                Err(e) => return fail(WSRT_ERR_IO, format!("cannot create the event fd: {e}")),
            },
        };
        // Worker threads inherit this thread's signal mask: started with SIGPIPE blocked,
        // a write to a peer that is gone fails with EPIPE instead of killing the host
        // (a Rust binary ignores SIGPIPE at startup; a C, Node, JVM or Go host does not).
        let start = || match &queue {
            Some(q) if inline => Server::start_inline(cfg.opts.clone(), q),
            _ => Server::start_arc(cfg.opts.clone(), handler),
        };
        let server = match without_sigpipe(start) {
            Ok(s) => s,
            Err(crate::Error::Option(e)) => return fail(WSRT_ERR_OPTION, e.to_string()),
            Err(e) => return fail(WSRT_ERR_IO, e.to_string()),
        };
        let handle = server.handle();
        if let Some(q) = &queue {
            q.attach(handle.clone());
        }
        let boxed = Box::new(wsrt_server {
            handle,
            queue,
            server: Mutex::new(Some(server)),
            joined: Mutex::new(None),
        });
        // SAFETY: `out` is non-NULL and valid per the contract.
        unsafe { *out = Box::into_raw(boxed) };
        WSRT_OK
    })
}

/// Run `f` with SIGPIPE blocked on this thread (threads it spawns keep it blocked), then
/// restore the caller's mask.
fn without_sigpipe<R>(f: impl FnOnce() -> R) -> R {
    // SAFETY: sigemptyset/sigaddset write into a local sigset_t that we own.
    let (block, mut old) = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGPIPE);
        (set, std::mem::zeroed::<libc::sigset_t>())
    };
    // SAFETY: both pointers are to valid local sigset_t values.
    let blocked = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &block, &mut old) } == 0;
    let r = f();
    if blocked {
        // SAFETY: restores the mask saved above; `old` is a valid sigset_t.
        unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut()) };
    }
    r
}

/// The port the server listens on (useful with `listen` port 0).
///
/// # Safety
/// `server` comes from `wsrt_server_start`; `port` is a valid pointer.
#[no_mangle]
pub unsafe extern "C" fn wsrt_server_port(server: *const wsrt_server, port: *mut u16) -> c_int {
    guard(|| {
        // SAFETY: per the function's contract.
        let s = match unsafe { server_ref(server) } {
            Ok(s) => s,
            Err(rc) => return rc,
        };
        if port.is_null() {
            return fail(WSRT_ERR_NULL, "port is NULL");
        }
        // SAFETY: non-NULL per the check, valid per the contract.
        unsafe { *port = s.handle.local_addr().port() };
        WSRT_OK
    })
}

/// Graceful shutdown: health checks fail and upgrades are refused at once; every connection
/// gets close 1001 after its queued messages (after `drain_delay`, spread over
/// `drain_window`). Waits up to `timeout_ms` for the workers to finish (0 = don't wait):
/// `WSRT_ERR_TIMEOUT` if they are still closing connections (they go on; call again or
/// `wsrt_server_free`). Calling it again is fine. Any thread.
///
/// # Safety
/// `server` comes from `wsrt_server_start` and is not freed.
#[no_mangle]
pub unsafe extern "C" fn wsrt_server_shutdown(server: *mut wsrt_server, timeout_ms: u32) -> c_int {
    guard(|| {
        // SAFETY: per the function's contract.
        let s = match unsafe { server_ref(server) } {
            Ok(s) => s,
            Err(rc) => return rc,
        };
        s.handle.shutdown();
        let mut joined = s.joined.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(srv) = s.server.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let (tx, rx) = mpsc::channel();
            std::thread::spawn(move || {
                srv.join();
                let _ = tx.send(());
            });
            *joined = Some(rx);
        }
        let Some(rx) = joined.as_ref() else {
            return WSRT_OK;
        };
        match rx.recv_timeout(Duration::from_millis(timeout_ms.into())) {
            Ok(()) | Err(mpsc::RecvTimeoutError::Disconnected) => {
                *joined = None;
                WSRT_OK
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                fail(WSRT_ERR_TIMEOUT, "workers are still closing connections")
            }
        }
    })
}

/// Shut down (if not yet), wait for the workers, release everything. NULL is a no-op.
/// Data attached to connections is finalized. Do not call it from a callback.
///
/// # Safety
/// `server` is NULL or comes from `wsrt_server_start`; no other thread uses it during or
/// after this call.
#[no_mangle]
pub unsafe extern "C" fn wsrt_server_free(server: *mut wsrt_server) {
    if server.is_null() {
        return;
    }
    let _ = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: created by Box::into_raw in wsrt_server_start; freed once per the contract.
        let s = unsafe { Box::from_raw(server) };
        s.handle.shutdown();
        if let Some(srv) = s.server.lock().unwrap_or_else(|e| e.into_inner()).take() {
            srv.join();
        }
        if let Some(rx) = s.joined.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = rx.recv();
        }
        // Events still queued are dropped here, which finalizes their host data.
        if let Some(q) = &s.queue {
            let mut rest = Vec::new();
            while q.poll(&mut rest, usize::MAX, Some(Duration::ZERO)) > 0 {}
        }
    }));
}

/// A snapshot of the server's counters.
///
/// # Safety
/// `server` comes from `wsrt_server_start`; `out` is a valid pointer.
#[no_mangle]
pub unsafe extern "C" fn wsrt_server_stats(
    server: *const wsrt_server,
    out: *mut wsrt_stats,
) -> c_int {
    guard(|| {
        // SAFETY: per the function's contract.
        let s = match unsafe { server_ref(server) } {
            Ok(s) => s,
            Err(rc) => return rc,
        };
        if out.is_null() {
            return fail(WSRT_ERR_NULL, "out is NULL");
        }
        let st = s.handle.stats();
        let stats = wsrt_stats {
            open: st.open,
            accepted: st.accepted,
            upgraded: st.upgraded,
            closed: st.closed,
            messages_in: st.messages_in,
            messages_out: st.messages_out,
            bytes_in: st.bytes_in,
            bytes_out: st.bytes_out,
            backpressure_queued: st.backpressure_queued,
            backpressure_dropped: st.backpressure_dropped,
            protocol_errors: st.protocol_errors,
            rejected: st.rejected.iter().map(|(_, n)| n).sum(),
            batched_writes: st.batched_writes,
        };
        // SAFETY: non-NULL per the check, valid per the contract.
        unsafe { out.write(stats) };
        WSRT_OK
    })
}

/// Refused handshakes for one reason (`missing_upgrade`, `origin_not_allowed`, `bad_key`,
/// `unsupported_version`, `path_not_found`, `headers_too_large`, `too_many_connections`,
/// `proxy_protocol`, `handshake_timeout`, ...).
///
/// # Safety
/// `server` comes from `wsrt_server_start`; `reason` is NUL-terminated; `out` is valid.
#[no_mangle]
pub unsafe extern "C" fn wsrt_stats_rejected(
    server: *const wsrt_server,
    reason: *const c_char,
    out: *mut u64,
) -> c_int {
    guard(|| {
        // SAFETY: per the function's contract.
        let (s, reason) = match unsafe { (server_ref(server), str_arg(reason, "reason")) } {
            (Ok(s), Ok(r)) => (s, r),
            (Err(rc), _) | (_, Err(rc)) => return rc,
        };
        if out.is_null() {
            return fail(WSRT_ERR_NULL, "out is NULL");
        }
        let known = crate::RejectKind::ALL.iter().any(|k| k.name() == reason);
        if !known {
            return fail(
                WSRT_ERR_INVALID,
                format!("unknown rejection reason {reason:?}"),
            );
        }
        // SAFETY: non-NULL per the check, valid per the contract.
        unsafe { *out = s.handle.stats().rejected(reason) };
        WSRT_OK
    })
}

// ---------------------------------------------------------------------------------------
// Event queue

/// A new, empty batch. Free it with `wsrt_batch_free`. NULL only if memory is exhausted.
#[no_mangle]
pub extern "C" fn wsrt_batch_new() -> *mut wsrt_batch {
    catch_unwind(|| {
        Box::into_raw(Box::new(wsrt_batch {
            raw: Vec::new(),
            events: Vec::new(),
            strings: Vec::new(),
            headers: Vec::new(),
        }))
    })
    .unwrap_or(std::ptr::null_mut())
}

/// Free a batch (finalizing host data of the CLOSE events it holds). NULL is a no-op.
///
/// # Safety
/// `batch` is NULL or comes from `wsrt_batch_new` and is not used afterwards.
#[no_mangle]
pub unsafe extern "C" fn wsrt_batch_free(batch: *mut wsrt_batch) {
    if !batch.is_null() {
        // SAFETY: created by Box::into_raw in wsrt_batch_new; freed once per the contract.
        let _ = catch_unwind(AssertUnwindSafe(|| drop(unsafe { Box::from_raw(batch) })));
    }
}

/// Wait up to `timeout_ms` (0 = don't wait, -1 = forever) for events and move up to `max`
/// of them into `batch`, replacing its previous contents (whose pointers become invalid
/// and whose CLOSE events' host data is finalized now, on this thread). Returns the number
/// of events (0 on timeout) or a negative error. Several threads may poll at once, each with
/// its own batch. Event-queue mode only. Once the server has stopped (after
/// `wsrt_server_shutdown`) and its last events were taken, returns 0 at once whatever the
/// timeout: a poll waiting with -1 wakes when the server stops.
///
/// Messages this thread sends (`wsrt_send`) after a poll returned events are corked: written
/// together when the next `wsrt_poll` begins (one wake-up per batch, not per message), or a
/// few milliseconds later if no poll comes. Every other call, and sends from other threads,
/// take effect at once; one thread's calls keep their order. With `WSRT_FLAG_POLL_INLINE`
/// the poll runs the server's loop itself (see the flag): replies to one connection go out
/// together when this thread sends to another connection or polls again.
///
/// # Safety
/// `server` comes from `wsrt_server_start`; `batch` from `wsrt_batch_new`, used by one
/// thread at a time.
#[no_mangle]
pub unsafe extern "C" fn wsrt_poll(
    server: *const wsrt_server,
    batch: *mut wsrt_batch,
    max: usize,
    timeout_ms: c_int,
) -> c_int {
    guard(|| {
        // SAFETY: per the function's contract.
        let s = match unsafe { server_ref(server) } {
            Ok(s) => s,
            Err(rc) => return rc,
        };
        // SAFETY: per the function's contract.
        let Some(b) = (unsafe { batch.as_mut() }) else {
            return fail(WSRT_ERR_NULL, "batch is NULL");
        };
        let Some(q) = &s.queue else {
            return fail(
                WSRT_ERR_MODE,
                "wsrt_poll needs an event-queue server (callbacks == NULL)",
            );
        };
        q.recycle(&mut b.raw);
        b.clear();
        let timeout = if timeout_ms < 0 {
            None
        } else {
            Some(Duration::from_millis(timeout_ms as u64))
        };
        let max = max.min(c_int::MAX as usize);
        q.poll(&mut b.raw, max, timeout);
        b.build();
        b.events.len() as c_int
    })
}

/// Number of events in the batch.
///
/// # Safety
/// `batch` is NULL or comes from `wsrt_batch_new`.
#[no_mangle]
pub unsafe extern "C" fn wsrt_batch_len(batch: *const wsrt_batch) -> usize {
    // SAFETY: per the function's contract.
    unsafe { batch.as_ref() }.map_or(0, |b| b.events.len())
}

/// Event `i` of the batch (NULL if out of range); valid until the batch is polled again or
/// freed.
///
/// # Safety
/// `batch` is NULL or comes from `wsrt_batch_new`.
#[no_mangle]
pub unsafe extern "C" fn wsrt_batch_get(batch: *const wsrt_batch, i: usize) -> *const wsrt_event {
    // SAFETY: per the function's contract.
    unsafe { batch.as_ref() }
        .and_then(|b| b.events.get(i))
        .map_or(std::ptr::null(), |e| e as *const wsrt_event)
}

/// A file descriptor that is readable while events are pending (level-triggered), for
/// epoll, libuv's `uv_poll_t` or any loop: when readable, call `wsrt_poll` with timeout 0
/// until it returns 0 (rarely, a wake-up finds nothing: that poll returns 0 and makes the
/// fd unreadable again). Never read, write or close it. Valid until `wsrt_server_free`.
/// `WSRT_ERR_MODE` for callback and `WSRT_FLAG_POLL_INLINE` servers (whose events are made
/// inside `wsrt_poll`).
///
/// # Safety
/// `server` comes from `wsrt_server_start`; `fd` is a valid pointer.
#[no_mangle]
pub unsafe extern "C" fn wsrt_event_fd(server: *const wsrt_server, fd: *mut c_int) -> c_int {
    guard(|| {
        // SAFETY: per the function's contract.
        let s = match unsafe { server_ref(server) } {
            Ok(s) => s,
            Err(rc) => return rc,
        };
        if fd.is_null() {
            return fail(WSRT_ERR_NULL, "fd is NULL");
        }
        match &s.queue {
            Some(_) if s.handle.is_inline() => return fail(
                WSRT_ERR_MODE,
                "a WSRT_FLAG_POLL_INLINE server has no event fd: its loop runs inside wsrt_poll",
            ),
            // SAFETY: non-NULL per the check, valid per the contract.
            Some(q) => unsafe { *fd = q.fd() },
            None => return fail(WSRT_ERR_MODE, "callback-mode servers have no event fd"),
        }
        WSRT_OK
    })
}

impl wsrt_batch {
    fn clear(&mut self) {
        self.events.clear();
        self.headers.clear();
        self.strings.clear();
        // Dropping the CLOSE events runs their host data finalizers, on this thread.
        self.raw.clear();
    }

    fn cstr(&mut self, s: &str) -> *const c_char {
        let c = CString::new(s.replace('\0', "")).unwrap_or_default();
        let p = c.as_ptr();
        self.strings.push(c);
        p
    }

    fn opt_cstr(&mut self, s: &Option<String>) -> *const c_char {
        s.as_deref().map_or(std::ptr::null(), |s| self.cstr(s))
    }

    fn header_list(&mut self, headers: &[(String, String)]) -> (*const wsrt_header, usize) {
        let list: Vec<wsrt_header> = headers
            .iter()
            .map(|(k, v)| wsrt_header {
                name: self.cstr(k),
                value: self.cstr(v),
            })
            .collect();
        let p = list.as_ptr();
        let n = list.len();
        self.headers.push(list);
        (p, n)
    }

    /// Describe `raw` as C events. The strings live in `self.strings` (CString heap
    /// buffers don't move when the Vec grows); payloads point into `raw`.
    fn build(&mut self) {
        let raw = std::mem::take(&mut self.raw);
        for ev in &raw {
            let e = self.describe(ev);
            self.events.push(e);
        }
        self.raw = raw;
    }

    fn describe(&mut self, ev: &QueuedEvent) -> wsrt_event {
        let mut e = blank_event(ev.id());
        match ev {
            QueuedEvent::Upgrade(r) | QueuedEvent::Open(r) => {
                let upgrade = matches!(ev, QueuedEvent::Upgrade(_));
                e.kind = if upgrade {
                    WSRT_EVENT_UPGRADE
                } else {
                    WSRT_EVENT_OPEN
                };
                e.remote_addr = self.cstr(&r.remote.to_string());
                e.path = self.cstr(&r.path);
                e.query = self.opt_cstr(&r.query);
                e.subprotocol = self.opt_cstr(&r.subprotocol);
                if upgrade {
                    e.origin = self.opt_cstr(&r.origin);
                }
                (e.headers, e.header_count) = self.header_list(&r.headers);
            }
            QueuedEvent::Message { text, data, .. } => {
                e.kind = WSRT_EVENT_MESSAGE;
                e.is_text = *text;
                e.data = data.as_ptr();
                e.len = data.len();
            }
            QueuedEvent::Pong { data, .. } => {
                e.kind = WSRT_EVENT_PONG;
                e.data = data.as_ptr();
                e.len = data.len();
            }
            QueuedEvent::Drain { .. } => e.kind = WSRT_EVENT_DRAIN,
            QueuedEvent::Close { info, data, .. } => {
                e.kind = WSRT_EVENT_CLOSE;
                e.close_code = info.code;
                e.clean = info.clean;
                e.data = info.reason.as_ptr();
                e.len = info.reason.len();
                e.user_data = host_ptr(data.as_deref());
            }
        }
        e
    }
}

fn blank_event(id: ConnId) -> wsrt_event {
    wsrt_event {
        kind: 0,
        conn: id.to_raw(),
        data: std::ptr::null(),
        len: 0,
        is_text: false,
        close_code: 0,
        clean: false,
        remote_addr: std::ptr::null(),
        path: std::ptr::null(),
        query: std::ptr::null(),
        subprotocol: std::ptr::null(),
        origin: std::ptr::null(),
        headers: std::ptr::null(),
        header_count: 0,
        user_data: std::ptr::null_mut(),
    }
}

// ---------------------------------------------------------------------------------------
// Host data

/// A host pointer with its finalizer; the finalizer runs exactly once, when this is dropped.
struct HostData {
    ptr: *mut c_void,
    finalizer: Option<extern "C" fn(*mut c_void)>,
}

// SAFETY: the header documents that data given to wsrt may be finalized on another thread
// (a worker, or the polling thread); wsrt itself never dereferences the pointer.
unsafe impl Send for HostData {}

impl Drop for HostData {
    fn drop(&mut self) {
        if let Some(f) = self.finalizer.take() {
            f(self.ptr);
        }
    }
}

fn host_ptr(data: Option<&(dyn Any + Send)>) -> *mut c_void {
    data.and_then(|d| d.downcast_ref::<HostData>())
        .map_or(std::ptr::null_mut(), |h| h.ptr)
}

/// Attach host data to a connection (any thread), e.g. a JNI global ref, an N-API reference
/// or a Go `cgo.Handle`. `finalizer` (may be NULL) is called exactly once with `data` when
/// the connection is gone: in poll mode on the polling thread, when the batch holding its
/// CLOSE event is polled again or freed; in callback mode on the worker thread after
/// `on_close`. Setting data again finalizes the previous data. If the connection closes while
/// this call is in flight, the finalizer runs on a worker thread. On `WSRT_ERR_GONE` wsrt did
/// not take the data (the caller still owns it).
///
/// # Safety
/// `server` comes from `wsrt_server_start`.
#[no_mangle]
pub unsafe extern "C" fn wsrt_set_data(
    server: *const wsrt_server,
    conn: u64,
    data: *mut c_void,
    finalizer: Option<extern "C" fn(*mut c_void)>,
) -> c_int {
    guard(|| {
        // SAFETY: per the function's contract.
        let s = match unsafe { server_ref(server) } {
            Ok(s) => s,
            Err(rc) => return rc,
        };
        let boxed: Box<dyn Any + Send> = Box::new(HostData {
            ptr: data,
            finalizer,
        });
        match s.handle.set_data(ConnId::from_raw(conn), boxed) {
            Ok(()) => WSRT_OK,
            Err(back) => {
                // Give ownership back without finalizing.
                if let Ok(mut h) = back.downcast::<HostData>() {
                    h.finalizer = None;
                }
                fail(WSRT_ERR_GONE, "no such connection")
            }
        }
    })
}

// ---------------------------------------------------------------------------------------
// Sending and connection control (any thread)

/// Send a message (the bytes are copied). Returns `WSRT_SENT`, `WSRT_QUEUED` (slow client;
/// a DRAIN event follows), `WSRT_DROPPED` (over `max_backpressure`), `WSRT_GONE`, or a
/// negative error (`WSRT_ERR_INVALID` for text that is not UTF-8). Any thread.
///
/// # Safety
/// `server` comes from `wsrt_server_start`; `data` points to `len` bytes.
#[no_mangle]
pub unsafe extern "C" fn wsrt_send(
    server: *const wsrt_server,
    conn: u64,
    data: *const u8,
    len: usize,
    is_text: bool,
) -> c_int {
    guard(|| {
        // SAFETY: per the function's contract.
        let (s, data) = match unsafe { (server_ref(server), bytes_arg(data, len)) } {
            (Ok(s), Ok(d)) => (s, d),
            (Err(rc), _) | (_, Err(rc)) => return rc,
        };
        if let Err(rc) = check_text(data, is_text) {
            return rc;
        }
        let op = OpCode::data(is_text);
        send_status(s.handle.send_message(ConnId::from_raw(conn), op, data))
    })
}

/// A host buffer handed to wsrt, released with its callback.
struct ExternalBuf {
    ptr: *const u8,
    len: usize,
    release: Option<extern "C" fn(*mut c_void)>,
    ctx: *mut c_void,
}

// SAFETY: the header documents that `release` may run on any thread and that the buffer
// is not modified until then; wsrt only reads it.
unsafe impl Send for ExternalBuf {}

impl AsRef<[u8]> for ExternalBuf {
    fn as_ref(&self) -> &[u8] {
        if self.len == 0 {
            return &[];
        }
        // SAFETY: the host gave `len` readable bytes at `ptr`, untouched until `release`.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

impl Drop for ExternalBuf {
    fn drop(&mut self) {
        if let Some(f) = self.release.take() {
            f(self.ctx);
        }
    }
}

/// Send a host buffer without copying it (cheaper for large messages): wsrt writes it from
/// where it is and calls `release(release_ctx)` exactly once when done with it — after it is
/// written, when the connection is gone, or at once if the send is refused. The buffer
/// must stay valid and unmodified until then; `release` may run on any thread. Returns as
/// `wsrt_send`.
///
/// # Safety
/// `server` comes from `wsrt_server_start`; `data` points to `len` bytes valid until
/// `release` is called.
#[no_mangle]
pub unsafe extern "C" fn wsrt_send_owned(
    server: *const wsrt_server,
    conn: u64,
    data: *const u8,
    len: usize,
    is_text: bool,
    release: Option<extern "C" fn(*mut c_void)>,
    release_ctx: *mut c_void,
) -> c_int {
    let buf = ExternalBuf {
        ptr: data,
        len,
        release,
        ctx: release_ctx,
    };
    guard(move || {
        // SAFETY: per the function's contract.
        let s = match unsafe { server_ref(server) } {
            Ok(s) => s,
            Err(rc) => return rc,
        };
        if len > 0 && data.is_null() {
            return fail(WSRT_ERR_NULL, "data is NULL but len is not 0");
        }
        if let Err(rc) = check_text(buf.as_ref(), is_text) {
            return rc;
        }
        send_status(
            s.handle
                .send_external(ConnId::from_raw(conn), is_text, Box::new(buf)),
        )
    })
}

/// Start the close handshake after the connection's queued messages. `reason` may be NULL.
/// Codes outside 1000..=1003, 1007..=1014, 3000..=4999 are sent as 1000.
///
/// # Safety
/// `server` comes from `wsrt_server_start`; `reason` is NULL or NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn wsrt_close(
    server: *const wsrt_server,
    conn: u64,
    code: u16,
    reason: *const c_char,
) -> c_int {
    guard(|| {
        // SAFETY: per the function's contract.
        let s = match unsafe { server_ref(server) } {
            Ok(s) => s,
            Err(rc) => return rc,
        };
        let reason = if reason.is_null() {
            ""
        } else {
            // SAFETY: per the function's contract.
            match unsafe { str_arg(reason, "reason") } {
                Ok(r) => r,
                Err(rc) => return rc,
            }
        };
        if s.handle.close(ConnId::from_raw(conn), code, reason) {
            WSRT_OK
        } else {
            fail(WSRT_ERR_GONE, "no such connection")
        }
    })
}

/// Ping a connection (payload up to 125 bytes; longer is cut). Returns a send status.
///
/// # Safety
/// `server` comes from `wsrt_server_start`; `data` points to `len` bytes.
#[no_mangle]
pub unsafe extern "C" fn wsrt_ping(
    server: *const wsrt_server,
    conn: u64,
    data: *const u8,
    len: usize,
) -> c_int {
    guard(|| {
        // SAFETY: per the function's contract.
        let (s, data) = match unsafe { (server_ref(server), bytes_arg(data, len)) } {
            (Ok(s), Ok(d)) => (s, d),
            (Err(rc), _) | (_, Err(rc)) => return rc,
        };
        send_status(s.handle.ping(ConnId::from_raw(conn), data))
    })
}

/// Bytes accepted for the connection but not yet written to its socket.
///
/// # Safety
/// `server` comes from `wsrt_server_start`; `out` is a valid pointer.
#[no_mangle]
pub unsafe extern "C" fn wsrt_buffered_amount(
    server: *const wsrt_server,
    conn: u64,
    out: *mut usize,
) -> c_int {
    guard(|| {
        // SAFETY: per the function's contract.
        let s = match unsafe { server_ref(server) } {
            Ok(s) => s,
            Err(rc) => return rc,
        };
        if out.is_null() {
            return fail(WSRT_ERR_NULL, "out is NULL");
        }
        match s.handle.buffered_amount(ConnId::from_raw(conn)) {
            Some(n) => {
                // SAFETY: non-NULL per the check, valid per the contract.
                unsafe { *out = n };
                WSRT_OK
            }
            None => fail(WSRT_ERR_GONE, "no such connection"),
        }
    })
}

/// Subscribe a connection to a topic (for `wsrt_publish`).
///
/// # Safety
/// `server` comes from `wsrt_server_start`; `topic` is NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn wsrt_subscribe(
    server: *const wsrt_server,
    conn: u64,
    topic: *const c_char,
) -> c_int {
    guard(|| {
        // SAFETY: per the function's contract.
        let (s, topic) = match unsafe { (server_ref(server), str_arg(topic, "topic")) } {
            (Ok(s), Ok(t)) => (s, t),
            (Err(rc), _) | (_, Err(rc)) => return rc,
        };
        if s.handle.subscribe(ConnId::from_raw(conn), topic) {
            WSRT_OK
        } else {
            fail(WSRT_ERR_GONE, "no such connection")
        }
    })
}

/// Unsubscribe a connection from a topic.
///
/// # Safety
/// `server` comes from `wsrt_server_start`; `topic` is NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn wsrt_unsubscribe(
    server: *const wsrt_server,
    conn: u64,
    topic: *const c_char,
) -> c_int {
    guard(|| {
        // SAFETY: per the function's contract.
        let (s, topic) = match unsafe { (server_ref(server), str_arg(topic, "topic")) } {
            (Ok(s), Ok(t)) => (s, t),
            (Err(rc), _) | (_, Err(rc)) => return rc,
        };
        if s.handle.unsubscribe(ConnId::from_raw(conn), topic) {
            WSRT_OK
        } else {
            fail(WSRT_ERR_GONE, "no such connection")
        }
    })
}

/// Send to every subscriber of `topic` on every worker; the frame is encoded once.
/// Publishes to one topic that a worker finds queued back to back (a burst) are written to
/// each connection together, in one write where the connection is idle; order is kept.
///
/// # Safety
/// `server` comes from `wsrt_server_start`; `topic` is NUL-terminated; `data` points to
/// `len` bytes.
#[no_mangle]
pub unsafe extern "C" fn wsrt_publish(
    server: *const wsrt_server,
    topic: *const c_char,
    data: *const u8,
    len: usize,
    is_text: bool,
) -> c_int {
    guard(|| {
        // SAFETY: per the function's contract.
        let (s, topic, data) = match unsafe {
            (
                server_ref(server),
                str_arg(topic, "topic"),
                bytes_arg(data, len),
            )
        } {
            (Ok(s), Ok(t), Ok(d)) => (s, t, d),
            (Err(rc), _, _) | (_, Err(rc), _) | (_, _, Err(rc)) => return rc,
        };
        match message(data, is_text) {
            Ok(m) if s.handle.publish(topic, m) => WSRT_OK,
            Ok(_) => fail(WSRT_ERR_STOPPED, "server has stopped"),
            Err(rc) => rc,
        }
    })
}

/// Send to every open connection; the frame is encoded once. Broadcasts queued back to back
/// go out together, as publishes do.
///
/// # Safety
/// `server` comes from `wsrt_server_start`; `data` points to `len` bytes.
#[no_mangle]
pub unsafe extern "C" fn wsrt_broadcast(
    server: *const wsrt_server,
    data: *const u8,
    len: usize,
    is_text: bool,
) -> c_int {
    guard(|| {
        // SAFETY: per the function's contract.
        let (s, data) = match unsafe { (server_ref(server), bytes_arg(data, len)) } {
            (Ok(s), Ok(d)) => (s, d),
            (Err(rc), _) | (_, Err(rc)) => return rc,
        };
        match message(data, is_text) {
            Ok(m) if s.handle.broadcast(m) => WSRT_OK,
            Ok(_) => fail(WSRT_ERR_STOPPED, "server has stopped"),
            Err(rc) => rc,
        }
    })
}

/// Accept a deferred upgrade (UPGRADE event or `WSRT_DEFER`). `subprotocol` (NULL = the
/// server's choice) must be one the client offered; `headers` (e.g. Set-Cookie) are added
/// to the 101 response. `WSRT_ERR_INVALID` if the connection is already open (there is no
/// upgrade left to decide); `WSRT_ERR_GONE` if the client left or `handshake_timeout`
/// passed. Any thread.
///
/// # Safety
/// `server` comes from `wsrt_server_start`; `subprotocol` is NULL or NUL-terminated;
/// `headers` points to `header_count` headers.
#[no_mangle]
pub unsafe extern "C" fn wsrt_accept(
    server: *const wsrt_server,
    conn: u64,
    subprotocol: *const c_char,
    headers: *const wsrt_header,
    header_count: usize,
) -> c_int {
    guard(|| {
        // SAFETY: per the function's contract.
        let s = match unsafe { server_ref(server) } {
            Ok(s) => s,
            Err(rc) => return rc,
        };
        let subprotocol = if subprotocol.is_null() {
            None
        } else {
            // SAFETY: per the function's contract.
            match unsafe { str_arg(subprotocol, "subprotocol") } {
                Ok(p) => Some(p.to_string()),
                Err(rc) => return rc,
            }
        };
        // SAFETY: per the function's contract.
        let headers = match unsafe { headers_arg(headers, header_count) } {
            Ok(h) => h,
            Err(rc) => return rc,
        };
        if let Err(rc) = not_open(s, conn) {
            return rc;
        }
        if s.handle.accept(
            ConnId::from_raw(conn),
            Accept {
                subprotocol,
                headers,
            },
        ) {
            WSRT_OK
        } else {
            fail(
                WSRT_ERR_GONE,
                "no such connection (the client left or handshake_timeout passed)",
            )
        }
    })
}

/// Reject a deferred upgrade with `status` (400..=599, else `WSRT_ERR_INVALID`), a
/// plain-text `body` (may be NULL) and extra headers. `WSRT_ERR_INVALID` if the connection
/// is already open; `WSRT_ERR_GONE` if the client left or `handshake_timeout` passed. Any
/// thread.
///
/// # Safety
/// `server` comes from `wsrt_server_start`; `body` is NULL or NUL-terminated; `headers`
/// points to `header_count` headers.
#[no_mangle]
pub unsafe extern "C" fn wsrt_reject(
    server: *const wsrt_server,
    conn: u64,
    status: u16,
    body: *const c_char,
    headers: *const wsrt_header,
    header_count: usize,
) -> c_int {
    guard(|| {
        // SAFETY: per the function's contract.
        let s = match unsafe { server_ref(server) } {
            Ok(s) => s,
            Err(rc) => return rc,
        };
        if !(400..=599).contains(&status) {
            return fail(
                WSRT_ERR_INVALID,
                format!("status {status} is not in 400..=599"),
            );
        }
        let body = if body.is_null() {
            String::new()
        } else {
            // SAFETY: per the function's contract.
            match unsafe { str_arg(body, "body") } {
                Ok(b) => b.to_string(),
                Err(rc) => return rc,
            }
        };
        // SAFETY: per the function's contract.
        let headers = match unsafe { headers_arg(headers, header_count) } {
            Ok(h) => h,
            Err(rc) => return rc,
        };
        if let Err(rc) = not_open(s, conn) {
            return rc;
        }
        if s.handle.reject(
            ConnId::from_raw(conn),
            Reject {
                status,
                body,
                headers,
            },
        ) {
            WSRT_OK
        } else {
            fail(
                WSRT_ERR_GONE,
                "no such connection (the client left or handshake_timeout passed)",
            )
        }
    })
}

/// `WSRT_ERR_INVALID` when `conn` is an open connection: its upgrade was decided already.
fn not_open(s: &wsrt_server, conn: u64) -> Result<(), c_int> {
    if s.handle.is_open(ConnId::from_raw(conn)) {
        return Err(fail(
            WSRT_ERR_INVALID,
            "the connection is open already: there is no upgrade left to decide",
        ));
    }
    Ok(())
}

/// Hand over an already-connected TCP socket together with the bytes already read from it
/// (e.g. the HTTP upgrade request a host's own server parsed: Node's `upgrade` event,
/// Go's Hijack, a JVM server). wsrt takes ownership of `fd` in every case (on error it is
/// closed); `head` is copied. The upgrade then proceeds as for accepted connections.
///
/// # Safety
/// `server` comes from `wsrt_server_start`; `fd` is an open, connected TCP socket the
/// caller owns and does not use afterwards; `head` points to `head_len` bytes.
#[no_mangle]
pub unsafe extern "C" fn wsrt_adopt(
    server: *const wsrt_server,
    fd: c_int,
    head: *const u8,
    head_len: usize,
) -> c_int {
    guard(|| {
        if fd < 0 {
            return fail(WSRT_ERR_INVALID, "fd is negative");
        }
        // SAFETY: the caller hands over an open socket it owns (contract above).
        let stream = unsafe { std::net::TcpStream::from_raw_fd(fd) };
        // SAFETY: per the function's contract.
        let (s, head) = match unsafe { (server_ref(server), bytes_arg(head, head_len)) } {
            (Ok(s), Ok(h)) => (s, h),
            (Err(rc), _) | (_, Err(rc)) => return rc,
        };
        match s.handle.adopt(stream, head) {
            Ok(()) => WSRT_OK,
            Err(e) if s.handle.is_shutting_down() => fail(WSRT_ERR_STOPPED, e.to_string()),
            Err(e) => fail(WSRT_ERR_IO, format!("cannot adopt fd {fd}: {e}")),
        }
    })
}

// ---------------------------------------------------------------------------------------
// Callback mode

struct CallbackHandler {
    on_upgrade: Option<extern "C" fn(*mut c_void, *mut wsrt_conn, *const wsrt_event) -> c_int>,
    on_open: Option<extern "C" fn(*mut c_void, *mut wsrt_conn, *const wsrt_event)>,
    on_message: Option<extern "C" fn(*mut c_void, *mut wsrt_conn, *const wsrt_event)>,
    on_pong: Option<extern "C" fn(*mut c_void, *mut wsrt_conn, *const wsrt_event)>,
    on_drain: Option<extern "C" fn(*mut c_void, *mut wsrt_conn, *const wsrt_event)>,
    on_close: Option<extern "C" fn(*mut c_void, *mut wsrt_conn, *const wsrt_event)>,
    /// The host's pointer, kept as an integer: the header requires it to be thread-safe.
    user_data: usize,
    decide: bool,
}

impl CallbackHandler {
    fn call(
        &self,
        f: Option<extern "C" fn(*mut c_void, *mut wsrt_conn, *const wsrt_event)>,
        conn: &mut Conn<'_>,
        ev: &wsrt_event,
    ) {
        if let Some(f) = f {
            let conn_ptr = (conn as *mut Conn<'_>).cast::<wsrt_conn>();
            f(self.user_data as *mut c_void, conn_ptr, ev);
        }
    }

    /// Describe an owned event for one call (strings live until `f` returns).
    fn with_event<R>(ev: &QueuedEvent, f: impl FnOnce(&wsrt_event) -> R) -> R {
        let mut b = wsrt_batch {
            raw: Vec::new(),
            events: Vec::new(),
            strings: Vec::new(),
            headers: Vec::new(),
        };
        let e = b.describe(ev);
        f(&e)
    }
}

impl Handler for CallbackHandler {
    fn on_upgrade(&self, req: &UpgradeRequest<'_>) -> Decision {
        let Some(f) = self.on_upgrade else {
            return if self.decide {
                Decision::Defer
            } else {
                Decision::Accept(Accept::default())
            };
        };
        let ev = QueuedEvent::Upgrade(RequestInfo::upgrade(req));
        let rc = Self::with_event(&ev, |e| {
            f(self.user_data as *mut c_void, std::ptr::null_mut(), e)
        });
        match rc {
            WSRT_ACCEPT => Decision::Accept(Accept::default()),
            WSRT_DEFER => Decision::Defer,
            400..=599 => Decision::Reject(Reject::new(rc as u16, "")),
            other => {
                log::error!("on_upgrade returned {other}, which is not WSRT_ACCEPT, WSRT_DEFER or 400..=599; rejecting with 500");
                Decision::Reject(Reject::new(500, "internal error"))
            }
        }
    }

    fn on_open(&self, conn: &mut Conn<'_>) {
        if self.on_open.is_none() {
            return;
        }
        let ev = QueuedEvent::Open(RequestInfo::open(conn));
        Self::with_event(&ev, |e| self.call(self.on_open, conn, e));
    }

    fn on_message(&self, conn: &mut Conn<'_>, msg: Message<'_>) {
        let mut e = blank_event(conn.id());
        e.kind = WSRT_EVENT_MESSAGE;
        e.is_text = msg.is_text();
        e.data = msg.as_bytes().as_ptr();
        e.len = msg.as_bytes().len();
        e.user_data = host_ptr(conn.data::<HostData>().map(|h| h as &(dyn Any + Send)));
        self.call(self.on_message, conn, &e);
    }

    fn on_pong(&self, conn: &mut Conn<'_>, payload: &[u8]) {
        let mut e = blank_event(conn.id());
        e.kind = WSRT_EVENT_PONG;
        e.data = payload.as_ptr();
        e.len = payload.len();
        self.call(self.on_pong, conn, &e);
    }

    fn on_drain(&self, conn: &mut Conn<'_>) {
        let mut e = blank_event(conn.id());
        e.kind = WSRT_EVENT_DRAIN;
        self.call(self.on_drain, conn, &e);
    }

    fn on_close(&self, conn: &mut Conn<'_>, info: &CloseInfo) {
        let data = conn.take_data();
        let mut e = blank_event(conn.id());
        e.kind = WSRT_EVENT_CLOSE;
        e.close_code = info.code;
        e.clean = info.clean;
        e.data = info.reason.as_ptr();
        e.len = info.reason.len();
        e.user_data = host_ptr(data.as_deref());
        self.call(self.on_close, conn, &e);
        drop(data); // the finalizer runs now, after on_close
    }
}

/// # Safety
/// `conn` is NULL or the pointer passed to the running callback.
unsafe fn conn_ref<'a, 'b>(conn: *mut wsrt_conn) -> Result<&'a mut Conn<'b>, c_int> {
    // SAFETY: wsrt passes a `Conn` cast to `wsrt_conn`, valid during the callback.
    unsafe { conn.cast::<Conn<'b>>().as_mut() }.ok_or_else(|| fail(WSRT_ERR_NULL, "conn is NULL"))
}

/// The id of the callback's connection (0 if `conn` is NULL).
///
/// # Safety
/// `conn` is the pointer passed to the running callback.
#[no_mangle]
pub unsafe extern "C" fn wsrt_conn_id(conn: *mut wsrt_conn) -> u64 {
    // SAFETY: per the function's contract.
    unsafe { conn_ref(conn) }.map_or(0, |c| c.id().to_raw())
}

/// Send to the callback's connection: the fast path (corked, written once per read batch).
/// Returns a send status or a negative error.
///
/// # Safety
/// `conn` is the pointer passed to the running callback; `data` points to `len` bytes.
#[no_mangle]
pub unsafe extern "C" fn wsrt_conn_send(
    conn: *mut wsrt_conn,
    data: *const u8,
    len: usize,
    is_text: bool,
) -> c_int {
    guard(|| {
        // SAFETY: per the function's contract.
        let (c, data) = match unsafe { (conn_ref(conn), bytes_arg(data, len)) } {
            (Ok(c), Ok(d)) => (c, d),
            (Err(rc), _) | (_, Err(rc)) => return rc,
        };
        match message(data, is_text) {
            Ok(m) => send_status(c.send(m)),
            Err(rc) => rc,
        }
    })
}

/// Close the callback's connection (see `wsrt_close`).
///
/// # Safety
/// `conn` is the pointer passed to the running callback; `reason` is NULL or NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn wsrt_conn_close(
    conn: *mut wsrt_conn,
    code: u16,
    reason: *const c_char,
) -> c_int {
    guard(|| {
        // SAFETY: per the function's contract.
        let c = match unsafe { conn_ref(conn) } {
            Ok(c) => c,
            Err(rc) => return rc,
        };
        let reason = if reason.is_null() {
            ""
        } else {
            // SAFETY: per the function's contract.
            match unsafe { str_arg(reason, "reason") } {
                Ok(r) => r,
                Err(rc) => return rc,
            }
        };
        c.close(code, reason);
        WSRT_OK
    })
}

/// Subscribe the callback's connection to a topic.
///
/// # Safety
/// `conn` is the pointer passed to the running callback; `topic` is NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn wsrt_conn_subscribe(conn: *mut wsrt_conn, topic: *const c_char) -> c_int {
    guard(|| {
        // SAFETY: per the function's contract.
        let (c, topic) = match unsafe { (conn_ref(conn), str_arg(topic, "topic")) } {
            (Ok(c), Ok(t)) => (c, t),
            (Err(rc), _) | (_, Err(rc)) => return rc,
        };
        c.subscribe(topic);
        WSRT_OK
    })
}

/// Attach host data to the callback's connection (see `wsrt_set_data`; here the previous
/// data, if any, is finalized at once).
///
/// # Safety
/// `conn` is the pointer passed to the running callback.
#[no_mangle]
pub unsafe extern "C" fn wsrt_conn_set_data(
    conn: *mut wsrt_conn,
    data: *mut c_void,
    finalizer: Option<extern "C" fn(*mut c_void)>,
) -> c_int {
    guard(|| {
        // SAFETY: per the function's contract.
        let c = match unsafe { conn_ref(conn) } {
            Ok(c) => c,
            Err(rc) => return rc,
        };
        c.set_data(Box::new(HostData {
            ptr: data,
            finalizer,
        }));
        WSRT_OK
    })
}

/// Bytes accepted for the callback's connection but not yet written.
///
/// # Safety
/// `conn` is the pointer passed to the running callback; `out` is a valid pointer.
#[no_mangle]
pub unsafe extern "C" fn wsrt_conn_buffered_amount(conn: *mut wsrt_conn, out: *mut usize) -> c_int {
    guard(|| {
        // SAFETY: per the function's contract.
        let c = match unsafe { conn_ref(conn) } {
            Ok(c) => c,
            Err(rc) => return rc,
        };
        if out.is_null() {
            return fail(WSRT_ERR_NULL, "out is NULL");
        }
        // SAFETY: non-NULL per the check, valid per the contract.
        unsafe { *out = c.buffered_amount() };
        WSRT_OK
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_macros_match_cargo_toml() {
        assert_eq!(
            WSRT_VERSION_MAJOR.to_string(),
            env!("CARGO_PKG_VERSION_MAJOR")
        );
        assert_eq!(
            WSRT_VERSION_MINOR.to_string(),
            env!("CARGO_PKG_VERSION_MINOR")
        );
        assert_eq!(
            WSRT_VERSION_PATCH.to_string(),
            env!("CARGO_PKG_VERSION_PATCH")
        );
        // SAFETY: wsrt_version returns a static NUL-terminated string.
        let v = unsafe { CStr::from_ptr(wsrt_version()) };
        assert_eq!(v.to_str().unwrap(), env!("CARGO_PKG_VERSION"));
    }
}
