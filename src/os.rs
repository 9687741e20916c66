//! The few things wsrt asks the OS for directly: signal waiting, the fd limit, the listen
//! queue, an eventfd, and writes that never raise SIGPIPE (batched writes through io_uring
//! are in `send_ring`).
//! Every `unsafe` block here wraps one libc call.

#![deny(unsafe_op_in_unsafe_fn, clippy::undocumented_unsafe_blocks)]

use std::io;

/// Block SIGTERM and SIGINT in the calling thread (and the threads it spawns afterwards),
/// so they can be received with [`wait_for_signal`] instead of killing the process.
pub fn block_termination_signals() -> io::Result<()> {
    let set = termination_set()?;
    // SAFETY: `set` is an initialised sigset_t; a null old-set pointer is allowed.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    Ok(())
}

/// Wait for SIGTERM or SIGINT (blocked beforehand with [`block_termination_signals`]);
/// returns the signal's name.
pub fn wait_for_signal() -> io::Result<&'static str> {
    let set = termination_set()?;
    let mut sig: libc::c_int = 0;
    // SAFETY: `set` is initialised and `sig` is a valid out-pointer for the call's duration.
    let rc = unsafe { libc::sigwait(&set, &mut sig) };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    Ok(if sig == libc::SIGTERM {
        "SIGTERM"
    } else {
        "SIGINT"
    })
}

fn termination_set() -> io::Result<libc::sigset_t> {
    // SAFETY: sigset_t is plain data; sigemptyset initialises it before any other use.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` points to a live sigset_t owned by this frame.
    unsafe {
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
    }
    Ok(set)
}

/// Set the listen queue's length on a socket that is already listening (Linux applies a
/// repeated `listen` to the live queue). mio and std listen with 128, too short for a
/// reconnect storm: an overflow drops the SYN and that client waits a second for its retry.
pub fn set_listen_backlog(listener: &impl std::os::fd::AsRawFd, backlog: u32) -> io::Result<()> {
    let backlog = libc::c_int::try_from(backlog).unwrap_or(libc::c_int::MAX);
    // SAFETY: listen takes a descriptor and an integer; the descriptor is borrowed and open.
    if unsafe { libc::listen(listener.as_raw_fd(), backlog) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Raise the soft limit on open files to the hard limit (servers hold one fd per client).
/// Returns the new soft limit.
pub fn raise_fd_limit() -> io::Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid out-pointer.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if lim.rlim_cur < lim.rlim_max {
        lim.rlim_cur = lim.rlim_max;
        // SAFETY: `lim` is initialised and only read by the call.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(lim.rlim_cur)
}

/// Whether a server's fan-out writes can go through io_uring here (the `io_uring` option):
/// the kernel allows it (no seccomp filter or sysctl forbids it) and completes a send to a
/// full socket at once. When false, each subscriber gets its own `send`.
pub fn io_uring_usable() -> bool {
    // Probed on a thread of its own: closing a ring interrupts the blocking calls of the
    // threads that submitted to it (see `Worker::run`).
    std::thread::spawn(|| crate::send_ring::SendRing::new().is_some())
        .join()
        .unwrap_or(false)
}

/// A Linux eventfd used as a level signal: readable while `signal` has been called more
/// recently than `clear`. Hosts put its fd in their own poll loop (epoll, libuv, ...).
pub struct EventFd(std::os::fd::OwnedFd);

impl EventFd {
    pub fn new() -> io::Result<EventFd> {
        // SAFETY: eventfd takes no pointers; a non-negative return is a new fd we own.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a freshly created descriptor owned by nobody else.
        Ok(EventFd(unsafe { std::os::fd::FromRawFd::from_raw_fd(fd) }))
    }

    pub fn raw_fd(&self) -> std::os::fd::RawFd {
        std::os::fd::AsRawFd::as_raw_fd(&self.0)
    }

    /// Make the fd readable.
    pub fn signal(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live u64 to our own fd; EAGAIN (counter full) is fine.
        unsafe { libc::write(self.raw_fd(), (&one as *const u64).cast(), 8) };
    }

    /// Make the fd unreadable again.
    pub fn clear(&self) {
        let mut v: u64 = 0;
        // SAFETY: reads at most 8 bytes into a live u64 from our own fd; EAGAIN is fine.
        unsafe { libc::read(self.raw_fd(), (&mut v as *mut u64).cast(), 8) };
    }
}

/// A socket writer that never raises SIGPIPE: std's `write_vectored` is a plain `writev`,
/// which would kill a host that has not blocked or ignored SIGPIPE (an inline server runs on
/// the host's own thread) when a client is gone. Both writes here pass MSG_NOSIGNAL.
pub struct NoSigPipe<'a, S: std::os::fd::AsRawFd>(pub &'a S);

impl<S: std::os::fd::AsRawFd> io::Write for NoSigPipe<'_, S> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // `send`, not a one-iovec `sendmsg`: no message header or iovec to copy in.
        // SAFETY: `buf` is live and borrowed for the call; the fd is borrowed and open.
        let n = unsafe {
            libc::send(
                self.0.as_raw_fd(),
                buf.as_ptr().cast(),
                buf.len(),
                libc::MSG_NOSIGNAL,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }

    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        // SAFETY: msghdr is plain data; all-zero is a valid empty header.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        // IoSlice is ABI-compatible with iovec; sendmsg only reads the buffers.
        msg.msg_iov = bufs.as_ptr() as *mut libc::iovec;
        msg.msg_iovlen = bufs.len().min(1024) as _;
        // SAFETY: `msg` points to `msg_iovlen` live iovecs borrowed for the call; the fd is
        // borrowed and open.
        let n = unsafe { libc::sendmsg(self.0.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
