//! A connection's outbound queue. Empty (and unallocated) unless a write would block.
//! Chunks are owned frames or frames shared by a broadcast (encoded once, never copied).

use std::collections::VecDeque;
use std::io::{self, IoSlice, Write};
use std::sync::Arc;

pub(crate) enum Chunk {
    Owned(Vec<u8>),
    Shared(Arc<[u8]>),
    /// A host's buffer, sent without a copy and released when written (or dropped).
    External(Box<dyn AsRef<[u8]> + Send>),
}

impl Chunk {
    pub fn bytes(&self) -> &[u8] {
        match self {
            Chunk::Owned(v) => v,
            Chunk::Shared(a) => a,
            Chunk::External(e) => (**e).as_ref(),
        }
    }
}

#[derive(Default)]
pub(crate) struct OutQueue {
    chunks: VecDeque<Chunk>,
    /// Bytes of the front chunk already written.
    head_written: usize,
    len: usize,
}

/// Frames up to this size are appended to an owned tail instead of taking a chunk of their
/// own, as long as the tail stays within `TAIL_MAX`.
const SMALL_FRAME: usize = 512;
const TAIL_MAX: usize = 16 * 1024;

/// Most chunks handed to one `writev` (Linux IOV_MAX is 1024).
pub(crate) const MAX_IOV: usize = 64;

impl OutQueue {
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The last chunk, if it is an owned buffer with room for `n` more bytes.
    fn owned_tail(&mut self, n: usize) -> Option<&mut Vec<u8>> {
        match self.chunks.back_mut() {
            Some(Chunk::Owned(tail)) if tail.len() + n <= TAIL_MAX => Some(tail),
            _ => None,
        }
    }

    pub fn push(&mut self, chunk: Chunk) {
        let n = chunk.bytes().len();
        if n == 0 {
            return;
        }
        // Small frames after a small owned tail are merged: fewer iovecs, fewer allocations.
        if let Chunk::Owned(new) = &chunk {
            if new.len() <= SMALL_FRAME {
                if let Some(tail) = self.owned_tail(n) {
                    tail.extend_from_slice(new);
                    self.len += n;
                    return;
                }
            }
        }
        self.len += n;
        self.chunks.push_back(chunk);
    }

    /// Queue a chunk of which the first `written` bytes already went out (the queue is
    /// empty, so it becomes the partially written head).
    pub fn push_partial(&mut self, chunk: Chunk, written: usize) {
        if written == 0 || !self.is_empty() {
            debug_assert!(written == 0, "partial chunk behind queued data");
            return self.push(chunk);
        }
        self.len = chunk.bytes().len() - written;
        self.head_written = written;
        self.chunks.push_back(chunk);
    }

    /// Queue a frame given as header and payload: appended to a small owned tail when it
    /// fits (no allocation per message), else one new chunk.
    pub fn push_frame(&mut self, header: &[u8], payload: &[u8]) {
        let n = header.len() + payload.len();
        if payload.len() <= SMALL_FRAME {
            if let Some(tail) = self.owned_tail(n) {
                tail.extend_from_slice(header);
                tail.extend_from_slice(payload);
                self.len += n;
                return;
            }
        }
        let mut v = Vec::with_capacity(n);
        v.extend_from_slice(header);
        v.extend_from_slice(payload);
        self.len += n;
        self.chunks.push_back(Chunk::Owned(v));
    }

    pub fn push_copy(&mut self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        if let Some(tail) = self.owned_tail(bytes.len()) {
            tail.extend_from_slice(bytes);
            self.len += bytes.len();
            return;
        }
        self.push(Chunk::Owned(bytes.to_vec()));
    }

    /// Write as much as the writer takes. Returns bytes written; `WouldBlock` is not an error
    /// here (the queue just stays non-empty).
    pub fn flush(&mut self, w: &mut impl Write) -> io::Result<usize> {
        let mut total = 0;
        while !self.is_empty() {
            if self.chunks.len() == 1 {
                // One chunk (the common case): a plain write, no iovec array to set up.
                let res = w.write(&self.chunks[0].bytes()[self.head_written..]);
                match res {
                    Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                    Ok(n) => {
                        total += n;
                        self.consume(n);
                        continue;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e),
                }
            }
            let mut iov = [IoSlice::new(&[]); MAX_IOV];
            let mut n_iov = 0;
            for (i, c) in self.chunks.iter().take(MAX_IOV).enumerate() {
                let b = c.bytes();
                iov[i] = IoSlice::new(if i == 0 { &b[self.head_written..] } else { b });
                n_iov += 1;
            }
            match w.write_vectored(&iov[..n_iov]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    total += n;
                    self.consume(n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
        if self.is_empty() {
            // Release the ring's memory: idle connections hold no queue.
            self.chunks = VecDeque::new();
        }
        Ok(total)
    }

    fn consume(&mut self, mut n: usize) {
        self.len -= n;
        while n > 0 {
            let front = self.chunks.front().expect("consume past end").bytes().len();
            let left = front - self.head_written;
            if n >= left {
                n -= left;
                self.head_written = 0;
                self.chunks.pop_front();
            } else {
                self.head_written += n;
                n = 0;
            }
        }
    }

    pub fn clear(&mut self) {
        *self = OutQueue::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer that takes at most `cap` bytes per call, then blocks after `budget`.
    struct Trickle {
        out: Vec<u8>,
        cap: usize,
        budget: usize,
    }
    impl Write for Trickle {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if self.budget == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let n = buf.len().min(self.cap).min(self.budget);
            self.out.extend_from_slice(&buf[..n]);
            self.budget -= n;
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn partial_writes_keep_order_and_free_memory() {
        let mut q = OutQueue::default();
        let shared: Arc<[u8]> = Arc::from(&b"shared-frame"[..]);
        q.push_copy(b"hello ");
        q.push(Chunk::Shared(shared.clone()));
        q.push(Chunk::Owned(b" world".to_vec()));
        assert_eq!(q.len, 24);
        let mut w = Trickle {
            out: vec![],
            cap: 5,
            budget: 7,
        };
        assert_eq!(q.flush(&mut w).unwrap(), 7);
        assert_eq!(q.len, 17);
        w.budget = usize::MAX;
        q.flush(&mut w).unwrap();
        assert!(q.is_empty());
        assert_eq!(w.out, b"hello shared-frame world");
        assert_eq!(q.chunks.capacity(), 0);
    }

    #[test]
    fn small_frames_share_one_buffer_and_large_ones_get_their_own() {
        let mut q = OutQueue::default();
        q.push_frame(b"h1", b"small");
        q.push_frame(b"h2", b"again");
        assert_eq!(q.chunks.len(), 1, "appended to the tail");
        let big = vec![7u8; 600];
        q.push_frame(b"h3", &big);
        q.push_frame(b"h4", b"after");
        assert_eq!(
            q.chunks.len(),
            2,
            "a large payload starts a chunk; small ones follow it"
        );
        let mut w = Trickle {
            out: vec![],
            cap: usize::MAX,
            budget: usize::MAX,
        };
        q.flush(&mut w).unwrap();
        let mut want = b"h1smallh2againh3".to_vec();
        want.extend_from_slice(&big);
        want.extend_from_slice(b"h4after");
        assert_eq!(w.out, want);
    }

    #[test]
    fn a_partially_written_shared_frame_resumes_where_the_socket_stopped() {
        let mut q = OutQueue::default();
        let frame: Arc<[u8]> = Arc::from(&b"0123456789"[..]);
        q.push_partial(Chunk::Shared(frame), 4);
        assert_eq!(q.len, 6);
        q.push_copy(b"ab");
        let mut w = Trickle {
            out: vec![],
            cap: 3,
            budget: 100,
        };
        q.flush(&mut w).unwrap();
        assert_eq!(w.out, b"456789ab");
        assert!(q.is_empty());
    }

    #[test]
    fn appends_after_a_partially_written_head_stay_behind_it() {
        let mut q = OutQueue::default();
        q.push_copy(b"abcdef");
        let mut w = Trickle {
            out: vec![],
            cap: 100,
            budget: 2,
        };
        q.flush(&mut w).unwrap();
        q.push_copy(b"gh");
        w.budget = 100;
        q.flush(&mut w).unwrap();
        assert_eq!(w.out, b"abcdefgh");
    }
}
