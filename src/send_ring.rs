//! One buffer sent to many sockets in a few syscalls, through io_uring: a fan-out to 10,000
//! idle subscribers is 10,000 `send`s queued in a ring and submitted in batches, instead of
//! 10,000 syscalls. The kernel's work per send is the same; what is saved is the syscall
//! entry and exit and the descriptor lookup around each one.
//!
//! Every send is non-blocking and completes before [`SendRing::send_to_all`] returns, so
//! the caller sees the same outcomes, in the same place, as from a loop of `send` calls:
//! bytes taken (perhaps fewer than asked), `WouldBlock`, or an error. A ring is only used
//! where a probe shows the kernel completes a send to a full socket at once with `EAGAIN`
//! (rather than waiting for room, which would hold the worker hostage to a slow client).
//! Where io_uring is missing or forbidden (old kernels, seccomp in containers,
//! `kernel.io_uring_disabled`), [`SendRing::new`] returns `None` and callers write directly.
//!
//! A ring is made and used only on a thread wsrt owns: when a ring is closed, the kernel
//! interrupts the blocking calls of every thread that submitted to it (EINTR, even with
//! SA_RESTART when a socket timeout is set), which a host's thread must never see.

#![deny(unsafe_op_in_unsafe_fn, clippy::undocumented_unsafe_blocks)]

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;

/// Sends queued per submission; the completion ring holds twice as many.
const ENTRIES: u32 = 1024;

#[cfg(target_os = "linux")]
pub struct SendRing {
    ring: io_uring::IoUring,
    /// Buffers whose sends may still be in the kernel after the ring failed (never freed).
    pinned: Vec<Arc<[u8]>>,
    broken: bool,
    /// Per send of the current call: completed yet (only read if the ring fails).
    completed: Vec<bool>,
}

#[cfg(target_os = "linux")]
impl SendRing {
    /// A ring for this thread, or None where io_uring can't be used as described above.
    pub fn new() -> Option<SendRing> {
        // Not single-issuer: an inline worker runs on whichever thread polls.
        let ring = io_uring::IoUring::builder()
            .setup_coop_taskrun()
            .build(ENTRIES)
            .or_else(|_| io_uring::IoUring::new(ENTRIES))
            .map_err(|e| log::debug!("io_uring unavailable ({e}); fan-out writes one send each"))
            .ok()?;
        let mut ring = SendRing {
            ring,
            pinned: Vec::new(),
            broken: false,
            completed: Vec::new(),
        };
        match ring.probe() {
            Ok(true) => Some(ring),
            Ok(false) => {
                log::debug!("io_uring sends wait for room here; fan-out writes one send each");
                None
            }
            Err(e) => {
                log::debug!("io_uring send probe failed ({e}); fan-out writes one send each");
                None
            }
        }
    }

    /// Whether a send to a socket whose buffer is full completes at once with EAGAIN.
    fn probe(&mut self) -> io::Result<bool> {
        use io_uring::{opcode, types};
        static BYTE: [u8; 1] = [0];
        let (a, b) = std::os::unix::net::UnixStream::pair()?;
        a.set_nonblocking(true)?;
        let chunk = [0u8; 4096];
        loop {
            match io::Write::write(&mut &a, &chunk) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        let send = opcode::Send::new(types::Fd(a.as_raw_fd()), BYTE.as_ptr(), 1)
            .flags(libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT)
            .build();
        // SAFETY: the entry points into a static; the ring is empty, so it has room.
        unsafe { self.ring.submission().push(&send) }.map_err(io::Error::other)?;
        self.ring.submit()?;
        let result = self.ring.completion().next().map(|cqe| cqe.result());
        // A send still waiting (result None) fails once its peer is gone, before the ring
        // is dropped.
        drop(b);
        Ok(result == Some(-libc::EAGAIN))
    }

    /// Send `buf` to each `(tag, fd)` of `to` without blocking, and call `done(tag, result)`
    /// for each as its send completes (in any order): `Ok(n)` bytes taken, or the error,
    /// `WouldBlock` when the socket had no room. Returns once every send has completed.
    pub fn send_to_all(
        &mut self,
        buf: &Arc<[u8]>,
        to: &[(usize, RawFd)],
        mut done: impl FnMut(usize, io::Result<usize>),
    ) {
        use io_uring::{opcode, types};
        debug_assert!(!self.broken, "a failed ring is dropped, not reused");
        let len = u32::try_from(buf.len()).unwrap_or(u32::MAX);
        // Entries are queued in order, and the kernel takes them from the queue in order:
        // those before `consumed` were started, those from `consumed` to `queued` never were.
        let (mut queued, mut consumed, mut completions) = (0, 0, 0);
        self.completed.clear();
        self.completed.resize(to.len(), false);
        while completions < to.len() {
            {
                let mut sq = self.ring.submission();
                while queued < to.len() && !sq.is_full() {
                    let send = opcode::Send::new(types::Fd(to[queued].1), buf.as_ptr(), len)
                        .flags(libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT)
                        .build()
                        .user_data(queued as u64);
                    // SAFETY: the entry points into `buf`, which outlives it: this function
                    // returns only once every entry the kernel took has completed, or, if
                    // the ring fails first, keeps a reference to `buf` for good (`pinned`).
                    if unsafe { sq.push(&send) }.is_err() {
                        break;
                    }
                    queued += 1;
                }
            }
            match self.ring.submit_and_wait(1) {
                Ok(n) => consumed += n,
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::EINTR | libc::EAGAIN | libc::EBUSY)
                    ) => {}
                Err(e) => {
                    log::error!("io_uring submit failed ({e}); fan-out writes one send each");
                    self.broken = true;
                    self.pinned.push(buf.clone());
                }
            }
            for cqe in self.ring.completion() {
                let res = cqe.result();
                let result = if res >= 0 {
                    Ok(res as usize)
                } else {
                    Err(io::Error::from_raw_os_error(-res))
                };
                let i = cqe.user_data() as usize;
                self.completed[i] = true;
                completions += 1;
                done(to[i].0, result);
            }
            if self.broken {
                break;
            }
        }
        if self.broken {
            // Never started (the ring is dropped without another submit): nothing written,
            // so the caller queues them as usual. Started but not completed: whether and
            // how much was written is unknown, so they fail and their connections close
            // rather than send a torn stream.
            for (i, &(tag, _)) in to.iter().enumerate() {
                if i >= consumed {
                    done(tag, Ok(0));
                } else if !self.completed[i] {
                    done(tag, Err(io::Error::other("io_uring failed mid-send")));
                }
            }
        }
    }

    /// False once the ring has failed; callers then drop it and write directly.
    pub fn usable(&self) -> bool {
        !self.broken
    }
}

#[cfg(target_os = "linux")]
impl Drop for SendRing {
    fn drop(&mut self) {
        // Sends the kernel may still be doing read these: they must outlive the ring.
        std::mem::forget(std::mem::take(&mut self.pinned));
    }
}

/// Elsewhere there is no io_uring: callers write directly.
#[cfg(not(target_os = "linux"))]
pub struct SendRing;

#[cfg(not(target_os = "linux"))]
impl SendRing {
    pub fn new() -> Option<SendRing> {
        None
    }

    pub fn send_to_all(
        &mut self,
        _: &Arc<[u8]>,
        _: &[(usize, RawFd)],
        _: impl FnMut(usize, io::Result<usize>),
    ) {
        unreachable!("no SendRing is ever made here")
    }

    pub fn usable(&self) -> bool {
        false
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;

    fn pair() -> (UnixStream, UnixStream) {
        let (a, b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        (a, b)
    }

    fn send(ring: &mut SendRing, buf: &[u8], to: &[&UnixStream]) -> Vec<io::Result<usize>> {
        let buf: Arc<[u8]> = Arc::from(buf);
        let to: Vec<_> = to
            .iter()
            .enumerate()
            .map(|(i, s)| (i, s.as_raw_fd()))
            .collect();
        let mut results: Vec<Option<io::Result<usize>>> = (0..to.len()).map(|_| None).collect();
        ring.send_to_all(&buf, &to, |tag, r| {
            assert!(
                results[tag].replace(r).is_none(),
                "tag {tag} reported twice"
            );
        });
        results
            .into_iter()
            .map(|r| r.expect("a send was never reported"))
            .collect()
    }

    /// More sockets than the ring holds (several submits), each reported once with all of
    /// the buffer, which arrives intact.
    #[test]
    fn a_buffer_reaches_more_sockets_than_the_ring_holds() {
        let Some(mut ring) = SendRing::new() else {
            eprintln!("io_uring is unavailable here: nothing to test");
            return;
        };
        crate::os::raise_fd_limit().unwrap();
        let pairs: Vec<_> = (0..ENTRIES as usize * 2 + 100).map(|_| pair()).collect();
        let to: Vec<_> = pairs.iter().map(|(a, _)| a).collect();
        let results = send(&mut ring, b"hello, subscriber", &to);
        assert!(results.iter().all(|r| matches!(r, Ok(17))), "{results:?}");
        for (_, mut b) in pairs {
            let mut got = [0u8; 17];
            b.read_exact(&mut got).unwrap();
            assert_eq!(&got, b"hello, subscriber");
        }
        assert!(ring.usable());
    }

    /// What a loop of non-blocking sends would see: a partial write, WouldBlock from a
    /// full socket, EPIPE from one whose peer is gone (and no SIGPIPE).
    #[test]
    fn each_send_reports_what_the_socket_took() {
        let Some(mut ring) = SendRing::new() else {
            eprintln!("io_uring is unavailable here: nothing to test");
            return;
        };
        let (fresh, _fresh_peer) = pair();
        let (full, _full_peer) = pair();
        while (&full).write(&[0u8; 4096]).is_ok() {}
        let (orphan, orphan_peer) = pair();
        drop(orphan_peer);
        let big = vec![7u8; 16 << 20];
        let results = send(&mut ring, &big, &[&fresh, &full, &orphan]);
        assert!(
            matches!(results[0], Ok(n) if n > 0 && n < big.len()),
            "{:?}",
            results[0]
        );
        assert_eq!(
            results[1].as_ref().unwrap_err().kind(),
            io::ErrorKind::WouldBlock
        );
        assert_eq!(
            results[2].as_ref().unwrap_err().raw_os_error(),
            Some(libc::EPIPE)
        );
        assert!(ring.usable());
    }
}
