//! Server-side decoder: client frames -> complete messages and control events (sans-I/O).

use crate::frame::{apply_mask, is_valid_close_code, OpCode, MAX_HEADER_LEN};
use crate::handler::Message;

#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_frame_size: usize,
    pub max_message_size: usize,
    pub allow_rsv1: bool,
}

#[derive(Debug, PartialEq)]
pub enum Event<'a> {
    /// A complete data message, its text validated (once: handlers get this very `&str`).
    Message(Message<'a>),
    /// A complete data message whose first frame had RSV1 set (only when allow_rsv1): still
    /// deflated, so its text is not validated yet; the inflating layer does that.
    Deflated {
        text: bool,
        data: &'a [u8],
    },
    Ping(&'a [u8]),
    Pong(&'a [u8]),
    /// code None = empty close payload. Reason is valid UTF-8.
    Close {
        code: Option<u16>,
        reason: &'a str,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProtocolError {
    pub close_code: u16,
    pub reason: &'static str,
}

/// Message buffers above this capacity are freed after delivery so idle connections stay cheap.
const KEEP_CAPACITY: usize = 64 * 1024;

/// One byte instead of a 24-byte `ProtocolError` keeps `Decoder` small.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Violation {
    Unmasked,
    ReservedBits,
    Rsv1Misuse,
    UnknownOpcode,
    ControlTooLong,
    ControlFragmented,
    UnexpectedContinuation,
    ExpectedContinuation,
    LengthMsb,
    FrameTooBig,
    MessageTooBig,
    CloseLen1,
    BadCloseCode,
    CloseReasonUtf8,
    TextUtf8,
}

impl Violation {
    fn error(self) -> ProtocolError {
        use Violation::*;
        let (close_code, reason) = match self {
            Unmasked => (1002, "client frame not masked"),
            ReservedBits => (1002, "reserved bits set"),
            Rsv1Misuse => (1002, "RSV1 set on a control or continuation frame"),
            UnknownOpcode => (1002, "unknown opcode"),
            ControlTooLong => (1002, "control frame payload over 125 bytes"),
            ControlFragmented => (1002, "fragmented control frame"),
            UnexpectedContinuation => (1002, "continuation frame without a message in progress"),
            ExpectedContinuation => (1002, "new data frame inside a fragmented message"),
            LengthMsb => (1002, "frame length has the most significant bit set"),
            FrameTooBig => (1009, "frame too big"),
            MessageTooBig => (1009, "message too big"),
            CloseLen1 => (1002, "close frame payload of 1 byte"),
            BadCloseCode => (1002, "invalid close code"),
            CloseReasonUtf8 => (1007, "invalid UTF-8 in close reason"),
            TextUtf8 => (1007, "invalid UTF-8 in text message"),
        };
        ProtocolError { close_code, reason }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Header,
    Payload,
    Finished,
    Poisoned(Violation),
}

/// Incremental UTF-8 validator that fails as soon as the stream can no longer be valid.
#[derive(Clone, Copy, Debug, Default)]
struct Utf8Validator {
    /// Incomplete trailing sequence of the data seen so far (at most 3 bytes).
    tail: [u8; 3],
    tail_len: u8,
}

impl Utf8Validator {
    /// Returns false as soon as `data` makes the stream impossible to complete as UTF-8.
    fn feed(&mut self, mut data: &[u8]) -> bool {
        if self.tail_len > 0 {
            let mut buf = [0u8; 4];
            let mut len = usize::from(self.tail_len);
            buf[..len].copy_from_slice(&self.tail[..len]);
            let mut used = 0;
            // Complete the pending char one byte at a time: it needs at most 3 more.
            loop {
                if used == data.len() {
                    self.tail[..len].copy_from_slice(&buf[..len]);
                    self.tail_len = len as u8;
                    return true;
                }
                buf[len] = data[used];
                len += 1;
                used += 1;
                match std::str::from_utf8(&buf[..len]) {
                    Ok(_) => break,
                    Err(e) if e.error_len().is_some() => return false,
                    // Unreachable (4 bytes are always complete or invalid); guards the index.
                    Err(_) if len == 4 => return false,
                    Err(_) => {}
                }
            }
            self.tail_len = 0;
            data = &data[used..];
        }
        match std::str::from_utf8(data) {
            Ok(_) => true,
            Err(e) if e.error_len().is_some() => false,
            Err(e) => {
                let rest = &data[e.valid_up_to()..];
                self.tail[..rest.len()].copy_from_slice(rest);
                self.tail_len = rest.len() as u8;
                true
            }
        }
    }

    /// True when the data seen so far does not end inside a sequence.
    #[cfg(test)]
    fn is_complete(&self) -> bool {
        self.tail_len == 0
    }
}

#[derive(Debug)]
pub struct Decoder {
    limits: Limits,
    /// Fragments (or a frame split across reads) of the data message in progress.
    msg_buf: Vec<u8>,
    /// Payload bytes of the current frame not yet received.
    remaining: u64,
    /// Mask key rotated so that `key[0]` applies to the next payload byte.
    key: [u8; 4],
    phase: Phase,
    opcode: OpCode,
    fin: bool,
    /// Some payload of the current frame was already consumed (so it cannot be zero-copy).
    started: bool,
    /// A Text/Binary frame started a message whose final frame has not completed.
    in_message: bool,
    text: bool,
    compressed: bool,
    utf8: Utf8Validator,
    scratch_len: u8,
    /// Partial header bytes, or a control payload split across reads. Never both at
    /// once, and separate from `msg_buf` because control frames interleave fragments.
    scratch: [u8; 125],
}

impl Decoder {
    pub fn new(limits: Limits) -> Self {
        Decoder {
            limits,
            msg_buf: Vec::new(),
            remaining: 0,
            key: [0; 4],
            phase: Phase::Header,
            opcode: OpCode::Continuation,
            fin: false,
            started: false,
            in_message: false,
            text: false,
            compressed: false,
            utf8: Utf8Validator::default(),
            scratch_len: 0,
            scratch: [0; 125],
        }
    }

    /// Feed the next bytes read from the socket. Unmasks in place (hence &mut). Calls
    /// `sink` for every complete event, in order.
    /// Consumes ALL of `input` (it keeps whatever it needs internally).
    /// On a protocol violation returns Err (after delivering the events that preceded
    /// it); the decoder is then poisoned and every later call returns the same error
    /// without calling sink.
    /// After a Close event is delivered, the decoder is finished: later bytes are
    /// ignored (Ok, no events).
    pub fn feed(
        &mut self,
        input: &mut [u8],
        mut sink: impl FnMut(Event<'_>),
    ) -> Result<(), ProtocolError> {
        match self.phase {
            Phase::Poisoned(v) => return Err(v.error()),
            Phase::Finished => return Ok(()),
            Phase::Header | Phase::Payload => {}
        }
        self.run(input, &mut sink).map_err(|v| {
            self.release();
            self.phase = Phase::Poisoned(v);
            v.error()
        })
    }

    /// Bytes currently held for an unfinished frame header / payload / fragmented message.
    pub fn buffered(&self) -> usize {
        usize::from(self.scratch_len) + self.msg_buf.len()
    }

    /// Takes effect from the next frame header on.
    pub fn set_limits(&mut self, limits: Limits) {
        self.limits = limits;
    }

    #[cfg(test)]
    fn buffer_capacity(&self) -> usize {
        self.msg_buf.capacity()
    }

    fn release(&mut self) {
        self.msg_buf = Vec::new();
        self.scratch_len = 0;
        self.in_message = false;
    }

    fn run<F: FnMut(Event<'_>)>(
        &mut self,
        input: &mut [u8],
        sink: &mut F,
    ) -> Result<(), Violation> {
        let mut pos = 0;
        loop {
            match self.phase {
                Phase::Header => {
                    if pos == input.len() {
                        return Ok(());
                    }
                    pos += self.read_header(&input[pos..])?;
                }
                Phase::Payload => {
                    // An empty payload completes without input.
                    if pos == input.len() && self.remaining > 0 {
                        return Ok(());
                    }
                    pos += self.read_payload(&mut input[pos..], sink)?;
                }
                Phase::Finished | Phase::Poisoned(_) => return Ok(()),
            }
        }
    }

    /// Consumes header bytes from non-empty `data`; switches to Payload once complete.
    fn read_header(&mut self, data: &[u8]) -> Result<usize, Violation> {
        let mut have = usize::from(self.scratch_len);
        if have == 0 && data.len() >= 2 {
            let need = self.check_prefix(data[0], data[1])?;
            if data.len() >= need {
                self.start_frame(&data[..need])?;
                return Ok(need);
            }
        }
        // The header straddles reads: collect it in scratch, validating the first two
        // bytes as soon as they are there.
        let mut consumed = 0;
        loop {
            let need = if have < 2 {
                2
            } else {
                header_len(self.scratch[1])
            };
            let take = (need - have).min(data.len() - consumed);
            self.scratch[have..have + take].copy_from_slice(&data[consumed..consumed + take]);
            have += take;
            consumed += take;
            if have < need {
                self.scratch_len = have as u8;
                return Ok(consumed);
            }
            if need == 2 {
                self.check_prefix(self.scratch[0], self.scratch[1])?;
                continue;
            }
            let mut header = [0u8; MAX_HEADER_LEN];
            header[..need].copy_from_slice(&self.scratch[..need]);
            self.scratch_len = 0;
            self.start_frame(&header[..need])?;
            return Ok(consumed);
        }
    }

    /// Every check that needs only the first two header bytes; returns the header length.
    fn check_prefix(&self, b0: u8, b1: u8) -> Result<usize, Violation> {
        if b0 & 0x30 != 0 {
            return Err(Violation::ReservedBits);
        }
        let opcode = OpCode::from_u8(b0 & 0x0f).ok_or(Violation::UnknownOpcode)?;
        if b0 & 0x40 != 0 {
            if !self.limits.allow_rsv1 {
                return Err(Violation::ReservedBits);
            }
            // permessage-deflate marks only the first frame of a data message.
            if opcode.is_control() || opcode == OpCode::Continuation {
                return Err(Violation::Rsv1Misuse);
            }
        }
        if b1 & 0x80 == 0 {
            return Err(Violation::Unmasked);
        }
        if opcode.is_control() {
            if b0 & 0x80 == 0 {
                return Err(Violation::ControlFragmented);
            }
            if b1 & 0x7f > 125 {
                return Err(Violation::ControlTooLong);
            }
        } else if opcode == OpCode::Continuation {
            if !self.in_message {
                return Err(Violation::UnexpectedContinuation);
            }
        } else if self.in_message {
            return Err(Violation::ExpectedContinuation);
        }
        Ok(header_len(b1))
    }

    /// `h` is a complete header that already passed `check_prefix`.
    fn start_frame(&mut self, h: &[u8]) -> Result<(), Violation> {
        let opcode = OpCode::from_u8(h[0] & 0x0f).ok_or(Violation::UnknownOpcode)?;
        let (len, at) = match h[1] & 0x7f {
            126 => (u64::from(u16::from_be_bytes([h[2], h[3]])), 4),
            127 => {
                let mut b = [0u8; 8];
                b.copy_from_slice(&h[2..10]);
                (u64::from_be_bytes(b), 10)
            }
            n => (u64::from(n), 2),
        };
        if len >> 63 != 0 {
            return Err(Violation::LengthMsb);
        }
        if len > self.limits.max_frame_size as u64 {
            return Err(Violation::FrameTooBig);
        }
        if !opcode.is_control() {
            // At a frame boundary msg_buf holds exactly the earlier fragments.
            let prior = if opcode == OpCode::Continuation {
                self.msg_buf.len() as u64
            } else {
                0
            };
            if prior.saturating_add(len) > self.limits.max_message_size as u64 {
                return Err(Violation::MessageTooBig);
            }
            if opcode != OpCode::Continuation {
                self.in_message = true;
                self.text = opcode == OpCode::Text;
                self.compressed = h[0] & 0x40 != 0;
                self.utf8 = Utf8Validator::default();
            }
        }
        self.key.copy_from_slice(&h[at..at + 4]);
        self.opcode = opcode;
        self.fin = h[0] & 0x80 != 0;
        self.remaining = len;
        self.started = false;
        self.phase = Phase::Payload;
        Ok(())
    }

    /// Consumes payload bytes of the current frame from `data` (possibly empty when the
    /// frame has nothing left) and delivers whatever completes.
    fn read_payload<F: FnMut(Event<'_>)>(
        &mut self,
        data: &mut [u8],
        sink: &mut F,
    ) -> Result<usize, Violation> {
        let n = usize::try_from(self.remaining).map_or(data.len(), |r| r.min(data.len()));
        let chunk = &mut data[..n];
        apply_mask(chunk, self.key, 0);
        self.key.rotate_left(n % 4);
        self.remaining -= n as u64;
        let whole = !self.started && self.remaining == 0;
        let done = self.remaining == 0;
        self.started = true;
        if done {
            self.phase = Phase::Header;
        }
        let validate = self.text && !self.compressed;

        if self.opcode.is_control() {
            let closed = if whole {
                deliver_control(self.opcode, chunk, sink)?
            } else {
                let at = usize::from(self.scratch_len);
                self.scratch[at..at + n].copy_from_slice(chunk);
                if done {
                    self.scratch_len = 0;
                    deliver_control(self.opcode, &self.scratch[..at + n], sink)?
                } else {
                    self.scratch_len = (at + n) as u8;
                    false
                }
            };
            if closed {
                self.release();
                self.phase = Phase::Finished;
            }
        } else if whole && self.fin && self.opcode != OpCode::Continuation {
            // Zero copy: a whole single-frame message, unmasked in place in `input`.
            self.in_message = false;
            sink(message_event(self.text, self.compressed, chunk)?);
        } else {
            // Validate before buffering so invalid text fails before the frame completes.
            if validate && !self.utf8.feed(chunk) {
                return Err(Violation::TextUtf8);
            }
            reserve_for(&mut self.msg_buf, n, self.remaining);
            self.msg_buf.extend_from_slice(chunk);
            if done && self.fin {
                // (The incremental check above failed fast; this one yields the `&str`.)
                self.in_message = false;
                sink(message_event(self.text, self.compressed, &self.msg_buf)?);
                if self.msg_buf.capacity() > KEEP_CAPACITY {
                    self.msg_buf = Vec::new();
                } else {
                    self.msg_buf.clear();
                }
            }
        }
        Ok(n)
    }
}

/// The event of a complete data message; text is validated here.
fn message_event(text: bool, compressed: bool, data: &[u8]) -> Result<Event<'_>, Violation> {
    if compressed {
        return Ok(Event::Deflated { text, data });
    }
    validated(text, data).map(Event::Message)
}

fn validated(text: bool, data: &[u8]) -> Result<Message<'_>, Violation> {
    if !text {
        return Ok(Message::Binary(data));
    }
    std::str::from_utf8(data)
        .map(Message::Text)
        .map_err(|_| Violation::TextUtf8)
}

/// An inflated `Event::Deflated` payload as a message, its text validated as the decoder
/// validates the messages it delivers (same 1007 on failure).
pub fn inflated_message(text: bool, data: &[u8]) -> Result<Message<'_>, ProtocolError> {
    validated(text, data).map_err(Violation::error)
}

/// Header length from the second header byte, assuming the mask bit is set.
fn header_len(b1: u8) -> usize {
    let ext = match b1 & 0x7f {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    2 + ext + 4
}

/// Grows `buf` for `n` more bytes of a frame that has `frame_rest` bytes after them.
fn reserve_for(buf: &mut Vec<u8>, n: usize, frame_rest: u64) {
    if buf.capacity() - buf.len() >= n {
        return;
    }
    let received = buf.len() + n;
    // When the rest of the frame is no more than what already arrived, doubling would
    // overshoot: reserve it exactly. Otherwise grow normally, so memory follows bytes
    // actually received, never a (possibly lying) declared length.
    match usize::try_from(frame_rest) {
        Ok(rest) if rest <= received => buf.reserve_exact(n + rest),
        _ => buf.reserve(n),
    }
}

/// Delivers a complete control frame; returns true for Close.
fn deliver_control<F: FnMut(Event<'_>)>(
    opcode: OpCode,
    payload: &[u8],
    sink: &mut F,
) -> Result<bool, Violation> {
    match opcode {
        OpCode::Ping => sink(Event::Ping(payload)),
        OpCode::Pong => sink(Event::Pong(payload)),
        _ => {
            let (code, reason) = match payload.len() {
                0 => (None, ""),
                1 => return Err(Violation::CloseLen1),
                _ => {
                    let code = u16::from_be_bytes([payload[0], payload[1]]);
                    if !is_valid_close_code(code) {
                        return Err(Violation::BadCloseCode);
                    }
                    let reason = std::str::from_utf8(&payload[2..])
                        .map_err(|_| Violation::CloseReasonUtf8)?;
                    (Some(code), reason)
                }
            };
            sink(Event::Close { code, reason });
            return Ok(true);
        }
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::encode_header;

    const KEY: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

    fn limits() -> Limits {
        Limits {
            max_frame_size: 1 << 20,
            max_message_size: 4 << 20,
            allow_rsv1: false,
        }
    }

    /// A masked client frame with a raw first byte (FIN/RSV/opcode bits as given).
    fn raw_frame(b0: u8, masked: bool, payload: &[u8]) -> Vec<u8> {
        let mut h = [0u8; MAX_HEADER_LEN];
        let mask = if masked { Some(KEY) } else { None };
        let n = encode_header(
            &mut h,
            false,
            false,
            OpCode::Text,
            payload.len() as u64,
            mask,
        );
        h[0] = b0;
        let mut out = h[..n].to_vec();
        let mut body = payload.to_vec();
        if masked {
            apply_mask(&mut body, KEY, 0);
        }
        out.extend_from_slice(&body);
        out
    }

    /// A masked client frame.
    fn client(fin: bool, op: OpCode, payload: &[u8]) -> Vec<u8> {
        raw_frame((u8::from(fin) << 7) | op as u8, true, payload)
    }

    fn close_frame(payload: &[u8]) -> Vec<u8> {
        client(true, OpCode::Close, payload)
    }

    #[derive(Clone, Debug, PartialEq)]
    enum Ev {
        Msg(bool, bool, Vec<u8>),
        Ping(Vec<u8>),
        Pong(Vec<u8>),
        Close(Option<u16>, String),
    }

    fn own(e: Event<'_>) -> Ev {
        match e {
            Event::Message(m) => Ev::Msg(m.is_text(), false, m.as_bytes().to_vec()),
            Event::Deflated { text, data } => Ev::Msg(text, true, data.to_vec()),
            Event::Ping(p) => Ev::Ping(p.to_vec()),
            Event::Pong(p) => Ev::Pong(p.to_vec()),
            Event::Close { code, reason } => Ev::Close(code, reason.to_string()),
        }
    }

    fn text(s: &str) -> Ev {
        Ev::Msg(true, false, s.as_bytes().to_vec())
    }

    /// Feeds `bytes` in pieces cut at `cuts`; stops at the first error.
    fn run_cuts(lim: Limits, bytes: &[u8], cuts: &[usize]) -> (Vec<Ev>, Result<(), u16>) {
        let mut d = Decoder::new(lim);
        let mut evs = Vec::new();
        let mut buf = bytes.to_vec();
        let mut start = 0;
        for &end in cuts.iter().chain(std::iter::once(&bytes.len())) {
            if let Err(e) = d.feed(&mut buf[start..end], |e| evs.push(own(e))) {
                return (evs, Err(e.close_code));
            }
            start = end;
        }
        (evs, Ok(()))
    }

    fn run_whole(lim: Limits, bytes: &[u8]) -> (Vec<Ev>, Result<(), u16>) {
        run_cuts(lim, bytes, &[])
    }

    fn run_bytewise(lim: Limits, bytes: &[u8]) -> (Vec<Ev>, Result<(), u16>) {
        let cuts: Vec<usize> = (1..bytes.len()).collect();
        run_cuts(lim, bytes, &cuts)
    }

    // ---- Utf8Validator ----

    #[test]
    fn utf8_valid_split_everywhere() {
        let s = "aé€😀z\u{10FFFF}\u{7FF}\u{800}\u{FFFF}\u{10000}";
        let b = s.as_bytes();
        for i in 0..=b.len() {
            for j in i..=b.len() {
                let mut v = Utf8Validator::default();
                assert!(v.feed(&b[..i]) && v.feed(&b[i..j]) && v.feed(&b[j..]));
                assert!(v.is_complete(), "{i} {j}");
            }
        }
        let mut v = Utf8Validator::default();
        for &byte in b {
            assert!(v.feed(&[byte]));
        }
        assert!(v.is_complete());
    }

    #[test]
    fn utf8_invalid_detected_immediately() {
        let bad: &[&[u8]] = &[
            b"\xC0\xAF",         // overlong
            b"\xC0",             // never a valid lead byte
            b"\x80",             // stray continuation
            b"\xED\xA0\x80",     // surrogate
            b"\xF4\x90\x80\x80", // above U+10FFFF
            b"\xF5",             // invalid lead
            b"\xE2\x82\x41",     // truncated by ASCII
            b"\xE0\x80\x80",     // overlong 3-byte
        ];
        for seq in bad {
            // Whole.
            let mut v = Utf8Validator::default();
            assert!(!v.feed(seq), "{seq:x?}");
            // Byte by byte: must fail at or before the last byte, never later.
            let mut v = Utf8Validator::default();
            let failed = seq.iter().any(|&b| !v.feed(&[b]));
            assert!(failed, "{seq:x?}");
        }
        // Fail-fast: the impossible second byte is reported even though more could follow.
        let mut v = Utf8Validator::default();
        assert!(v.feed(b"ok\xF4"));
        assert!(!v.feed(b"\x90"));
    }

    #[test]
    fn utf8_incomplete_tail() {
        let mut v = Utf8Validator::default();
        assert!(v.feed(b"abc\xF0\x9F"));
        assert!(!v.is_complete());
        assert!(v.feed(b"\x98"));
        assert!(!v.is_complete());
        assert!(v.feed(b"\x80xyz\xE2"));
        assert!(!v.is_complete());
        assert!(v.feed(b""));
        assert!(v.feed(b"\x82\xAC"));
        assert!(v.is_complete());
    }

    // ---- Decoder: happy paths ----

    #[test]
    fn decoder_is_small() {
        let size = std::mem::size_of::<Decoder>();
        assert!(size <= 200, "Decoder is {size} bytes");
    }

    #[test]
    fn single_frames() {
        let mut s = client(true, OpCode::Text, b"hello");
        s.extend(client(true, OpCode::Binary, &[0, 1, 2, 255]));
        s.extend(client(true, OpCode::Ping, b"p"));
        s.extend(client(true, OpCode::Pong, b""));
        s.extend(client(true, OpCode::Text, b""));
        let (evs, r) = run_whole(limits(), &s);
        assert_eq!(r, Ok(()));
        assert_eq!(
            evs,
            [
                text("hello"),
                Ev::Msg(false, false, vec![0, 1, 2, 255]),
                Ev::Ping(b"p".to_vec()),
                Ev::Pong(vec![]),
                text(""),
            ]
        );
    }

    #[test]
    #[cfg_attr(miri, ignore = "minutes under Miri; runs natively")]
    fn extended_lengths() {
        for len in [125usize, 126, 127, 65535, 65536, 200_000] {
            let payload: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let f = client(true, OpCode::Binary, &payload);
            let (evs, r) = run_whole(limits(), &f);
            assert_eq!(r, Ok(()));
            assert_eq!(evs, [Ev::Msg(false, false, payload.clone())]);
            let cuts: Vec<usize> = [1, 3, 9, 1000]
                .into_iter()
                .filter(|&c| c < f.len())
                .collect();
            let (evs2, r2) = run_cuts(limits(), &f, &cuts);
            assert_eq!((evs2, r2), (evs, r));
        }
    }

    #[test]
    fn zero_copy_borrows_from_input() {
        let mut f = client(true, OpCode::Text, b"zero copy please");
        f.extend(client(true, OpCode::Ping, b"pp"));
        let base = f.as_ptr() as usize;
        let mut d = Decoder::new(limits());
        let mut ptrs = Vec::new();
        d.feed(&mut f, |e| match e {
            Event::Message(m) => ptrs.push(m.as_bytes().as_ptr() as usize),
            Event::Ping(data) => ptrs.push(data.as_ptr() as usize),
            _ => unreachable!(),
        })
        .unwrap();
        assert_eq!(ptrs, [base + 6, base + 6 + 16 + 6]);
        assert_eq!(&f[6..22], b"zero copy please"); // unmasked in place
        assert_eq!(d.buffer_capacity(), 0);
        assert_eq!(d.buffered(), 0);
    }

    #[test]
    fn zero_copy_when_only_header_was_split() {
        let mut f = client(true, OpCode::Binary, b"payload");
        let mut d = Decoder::new(limits());
        d.feed(&mut f[..3], |_| panic!()).unwrap();
        assert_eq!(d.buffered(), 3);
        let rest = &mut f[3..];
        let base = rest.as_ptr() as usize;
        let mut got = 0;
        d.feed(rest, |e| match e {
            Event::Message(Message::Binary(data)) => {
                assert_eq!(data, b"payload");
                got = data.as_ptr() as usize;
            }
            _ => unreachable!(),
        })
        .unwrap();
        assert_eq!(got, base + 3);
        assert_eq!(d.buffer_capacity(), 0);
    }

    #[test]
    fn fragmented_text_with_ping_between() {
        let mut s = client(false, OpCode::Text, b"Hel");
        s.extend(client(true, OpCode::Ping, b"ping!"));
        s.extend(client(false, OpCode::Continuation, b"lo, "));
        s.extend(client(false, OpCode::Continuation, b""));
        s.extend(client(true, OpCode::Pong, b"x"));
        s.extend(client(true, OpCode::Continuation, b"world"));
        let expect = [
            Ev::Ping(b"ping!".to_vec()),
            Ev::Pong(b"x".to_vec()),
            text("Hello, world"),
        ];
        assert_eq!(run_whole(limits(), &s), (expect.to_vec(), Ok(())));
        assert_eq!(run_bytewise(limits(), &s), (expect.to_vec(), Ok(())));
    }

    #[test]
    fn control_split_across_reads_mid_message() {
        let mut s = client(false, OpCode::Binary, b"abc");
        let ping_at = s.len();
        s.extend(client(true, OpCode::Ping, &[7u8; 125]));
        s.extend(client(true, OpCode::Continuation, b"def"));
        let (evs, r) = run_cuts(limits(), &s, &[ping_at + 3, ping_at + 60, ping_at + 130]);
        assert_eq!(r, Ok(()));
        assert_eq!(
            evs,
            [
                Ev::Ping(vec![7u8; 125]),
                Ev::Msg(false, false, b"abcdef".to_vec())
            ]
        );
    }

    #[test]
    fn multibyte_char_split_across_fragments_and_feeds() {
        let euro = "€".as_bytes(); // E2 82 AC
        for split in 1..euro.len() {
            let mut s = client(false, OpCode::Text, &[b"a", &euro[..split]].concat());
            s.extend(client(true, OpCode::Continuation, &euro[split..]));
            let expect = (vec![text("a€")], Ok(()));
            assert_eq!(run_whole(limits(), &s), expect);
            assert_eq!(run_bytewise(limits(), &s), expect);
        }
        // Single frame, char split across two feeds.
        let f = client(true, OpCode::Text, "x😀y".as_bytes());
        for cut in 6..f.len() {
            assert_eq!(run_cuts(limits(), &f, &[cut]), (vec![text("x😀y")], Ok(())));
        }
    }

    #[test]
    fn close_events_and_finish() {
        let mut s = close_frame(&[0x03, 0xe8, b'b', b'y', b'e']);
        s.extend(client(true, OpCode::Text, b"ignored"));
        s.extend([0xff, 0xff]); // garbage after close is ignored too
        let (evs, r) = run_whole(limits(), &s);
        assert_eq!(r, Ok(()));
        assert_eq!(evs, [Ev::Close(Some(1000), "bye".into())]);

        let mut d = Decoder::new(limits());
        let mut f = close_frame(&[]);
        let mut evs = Vec::new();
        d.feed(&mut f, |e| evs.push(own(e))).unwrap();
        assert_eq!(evs, [Ev::Close(None, String::new())]);
        let mut more = client(true, OpCode::Ping, b"late");
        d.feed(&mut more, |_| panic!("finished decoder emitted"))
            .unwrap();
        assert_eq!(d.buffered(), 0);
    }

    #[test]
    fn close_mid_message_releases_buffer() {
        let mut s = client(false, OpCode::Binary, &[1; 1000]);
        s.extend(close_frame(&[0x0b, 0xb8])); // 3000
        let mut d = Decoder::new(limits());
        let mut evs = Vec::new();
        d.feed(&mut s, |e| evs.push(own(e))).unwrap();
        assert_eq!(evs, [Ev::Close(Some(3000), String::new())]);
        assert_eq!((d.buffered(), d.buffer_capacity()), (0, 0));
    }

    #[test]
    fn compressed_flag_passthrough() {
        let lim = Limits {
            allow_rsv1: true,
            ..limits()
        };
        // Not UTF-8: deflated bytes are not validated by the decoder.
        let mut s = raw_frame(0x80 | 0x40 | 1, true, &[0xff, 0xfe]);
        s.extend(raw_frame(0x40 | 2, true, &[1]));
        s.extend(client(true, OpCode::Continuation, &[2]));
        s.extend(client(true, OpCode::Text, b"plain"));
        let expect = vec![
            Ev::Msg(true, true, vec![0xff, 0xfe]),
            Ev::Msg(false, true, vec![1, 2]),
            text("plain"),
        ];
        assert_eq!(run_whole(lim, &s), (expect.clone(), Ok(())));
        assert_eq!(run_bytewise(lim, &s), (expect, Ok(())));
    }

    /// A stream exercising every path; the events must not depend on how it is cut.
    fn rich_stream() -> (Vec<u8>, Vec<Ev>) {
        let mut s = Vec::new();
        s.extend(client(true, OpCode::Text, "héllo wörld 😀".as_bytes()));
        s.extend(client(false, OpCode::Text, &"€".as_bytes()[..1]));
        s.extend(client(true, OpCode::Ping, b"between"));
        s.extend(client(false, OpCode::Continuation, &"€".as_bytes()[1..]));
        s.extend(client(true, OpCode::Pong, b""));
        s.extend(client(true, OpCode::Continuation, "𝄞!".as_bytes()));
        s.extend(client(true, OpCode::Binary, &[0u8; 130]));
        s.extend(client(false, OpCode::Binary, &[9u8; 3]));
        s.extend(client(true, OpCode::Continuation, &[8u8; 5]));
        s.extend(client(true, OpCode::Text, b""));
        s.extend(close_frame(&[0x0f, 0xa0, b'o', b'k'])); // 4000
        let evs = vec![
            text("héllo wörld 😀"),
            Ev::Ping(b"between".to_vec()),
            Ev::Pong(vec![]),
            text("€𝄞!"),
            Ev::Msg(false, false, vec![0u8; 130]),
            Ev::Msg(false, false, [[9u8; 3].as_slice(), &[8u8; 5]].concat()),
            text(""),
            Ev::Close(Some(4000), "ok".into()),
        ];
        (s, evs)
    }

    #[test]
    #[cfg_attr(miri, ignore = "exhaustive: minutes under Miri; runs natively")]
    fn every_split_position_and_bytewise_identical() {
        let (s, expect) = rich_stream();
        assert_eq!(run_whole(limits(), &s), (expect.clone(), Ok(())));
        for i in 0..=s.len() {
            assert_eq!(
                run_cuts(limits(), &s, &[i]),
                (expect.clone(), Ok(())),
                "cut {i}"
            );
        }
        for i in (0..=s.len()).step_by(7) {
            for j in (i..=s.len()).step_by(5) {
                assert_eq!(run_cuts(limits(), &s, &[i, j]), (expect.clone(), Ok(())));
            }
        }
        assert_eq!(run_bytewise(limits(), &s), (expect, Ok(())));
    }

    #[test]
    fn buffered_tracks_partial_state() {
        let mut d = Decoder::new(limits());
        let mut f = client(true, OpCode::Binary, &[5u8; 300]); // 8-byte header
        d.feed(&mut f[..3], |_| panic!()).unwrap();
        assert_eq!(d.buffered(), 3);
        d.feed(&mut f[3..8], |_| panic!()).unwrap();
        assert_eq!(d.buffered(), 0);
        d.feed(&mut f[8..108], |_| panic!()).unwrap();
        assert_eq!(d.buffered(), 100);
        let mut n = 0;
        d.feed(&mut f[108..], |_| n += 1).unwrap();
        assert_eq!((n, d.buffered()), (1, 0));

        let mut p = client(true, OpCode::Ping, b"0123456789");
        d.feed(&mut p[..10], |_| panic!()).unwrap();
        assert_eq!(d.buffered(), 4);
        d.feed(&mut p[10..], |_| n += 1).unwrap();
        assert_eq!((n, d.buffered()), (2, 0));
    }

    #[test]
    fn large_message_buffer_released_small_kept() {
        let big = vec![0xabu8; 100 * 1024];
        let f = client(true, OpCode::Binary, &big);
        let mut d = Decoder::new(limits());
        let mut buf = f.clone();
        let (a, b) = buf.split_at_mut(5000);
        d.feed(a, |_| panic!()).unwrap();
        assert!(d.buffer_capacity() >= 5000 - 14);
        let mut got = 0;
        d.feed(b, |e| {
            assert_eq!(e, Event::Message(Message::Binary(&big)));
            got += 1;
        })
        .unwrap();
        assert_eq!(got, 1);
        assert_eq!((d.buffered(), d.buffer_capacity()), (0, 0));

        // A small buffered message keeps its allocation for reuse.
        let mut s = client(false, OpCode::Binary, b"ab");
        s.extend(client(true, OpCode::Continuation, b"cd"));
        d.feed(&mut s, |_| {}).unwrap();
        assert_eq!(d.buffered(), 0);
        assert!(d.buffer_capacity() > 0 && d.buffer_capacity() <= KEEP_CAPACITY);
    }

    #[test]
    fn buffer_growth_is_exact_near_the_end() {
        let payload = vec![1u8; 10_000];
        let mut f = client(true, OpCode::Binary, &payload);
        let mut d = Decoder::new(limits());
        // 6000 of 10000 arrive first: the remaining 4000 fit within that, so reserve exactly.
        d.feed(&mut f[..8 + 6000], |_| panic!()).unwrap();
        assert_eq!(d.buffer_capacity(), 10_000);
    }

    #[test]
    fn declared_huge_frame_does_not_allocate_declared_size() {
        let lim = Limits {
            max_frame_size: 1 << 30,
            max_message_size: 1 << 30,
            allow_rsv1: false,
        };
        let mut h = [0u8; MAX_HEADER_LEN];
        let n = encode_header(&mut h, true, false, OpCode::Binary, 16 << 20, Some(KEY));
        let mut input = h[..n].to_vec();
        input.push(0x42);
        let mut d = Decoder::new(lim);
        d.feed(&mut input, |_| panic!()).unwrap();
        assert_eq!(d.buffered(), 1);
        assert!(d.buffer_capacity() < 4096, "{}", d.buffer_capacity());
    }

    #[test]
    fn set_limits_applies_to_next_frame() {
        let mut d = Decoder::new(limits());
        let mut f = client(true, OpCode::Binary, &[0; 100]);
        d.feed(&mut f, |_| {}).unwrap();
        d.set_limits(Limits {
            max_frame_size: 50,
            ..limits()
        });
        let mut f = client(true, OpCode::Binary, &[0; 100]);
        assert_eq!(d.feed(&mut f, |_| {}).unwrap_err().close_code, 1009);
    }

    // ---- Decoder: errors ----

    /// Expects the same events then the same close code whether fed whole or bytewise.
    fn expect_err(lim: Limits, bytes: &[u8], events: &[Ev], code: u16) {
        let want = (events.to_vec(), Err(code));
        assert_eq!(run_whole(lim, bytes), want, "whole {bytes:x?}");
        assert_eq!(run_bytewise(lim, bytes), want, "bytewise {bytes:x?}");
    }

    #[test]
    fn error_table() {
        let l = limits();
        let rsv = Limits {
            allow_rsv1: true,
            ..l
        };
        let small = Limits {
            max_frame_size: 10,
            max_message_size: 15,
            allow_rsv1: false,
        };
        let frag = client(false, OpCode::Text, b"ab");
        let cases: Vec<(&str, Limits, Vec<u8>, u16)> = vec![
            ("unmasked", l, raw_frame(0x81, false, b"hi"), 1002),
            ("unmasked control", l, raw_frame(0x89, false, b""), 1002),
            ("rsv2", l, raw_frame(0x81 | 0x20, true, b"hi"), 1002),
            ("rsv3", l, raw_frame(0x81 | 0x10, true, b"hi"), 1002),
            (
                "rsv2 even if rsv1 allowed",
                rsv,
                raw_frame(0xa1, true, b""),
                1002,
            ),
            ("rsv1 not allowed", l, raw_frame(0xc1, true, b"hi"), 1002),
            ("rsv1 on control", rsv, raw_frame(0xc9, true, b""), 1002),
            (
                "rsv1 on continuation",
                rsv,
                [frag.clone(), raw_frame(0xc0, true, b"c")].concat(),
                1002,
            ),
            (
                "control too long",
                l,
                client(true, OpCode::Ping, &[0; 126]),
                1002,
            ),
            (
                "close too long",
                l,
                close_frame(&[0x03, 0xe8].repeat(63)),
                1002,
            ),
            ("control not fin", l, client(false, OpCode::Ping, b""), 1002),
            ("close not fin", l, client(false, OpCode::Close, b""), 1002),
            (
                "bare continuation",
                l,
                client(true, OpCode::Continuation, b"x"),
                1002,
            ),
            (
                "text inside fragmented",
                l,
                [frag.clone(), client(true, OpCode::Text, b"x")].concat(),
                1002,
            ),
            (
                "binary inside fragmented",
                l,
                [frag.clone(), client(true, OpCode::Binary, b"x")].concat(),
                1002,
            ),
            (
                "frame too big",
                small,
                client(true, OpCode::Binary, &[0; 11]),
                1009,
            ),
            (
                "message too big",
                small,
                [
                    client(false, OpCode::Binary, &[0; 10]),
                    client(true, OpCode::Continuation, &[0; 6]),
                ]
                .concat(),
                1009,
            ),
            ("close len 1", l, close_frame(&[3]), 1002),
            (
                "close code 1005",
                l,
                close_frame(&1005u16.to_be_bytes()),
                1002,
            ),
            (
                "close code 999",
                l,
                close_frame(&999u16.to_be_bytes()),
                1002,
            ),
            (
                "close code 5000",
                l,
                close_frame(&5000u16.to_be_bytes()),
                1002,
            ),
            (
                "close code 2000",
                l,
                close_frame(&2000u16.to_be_bytes()),
                1002,
            ),
            ("close reason utf8", l, close_frame(b"\x03\xe8ok\xff"), 1007),
            (
                "close reason cut",
                l,
                close_frame(b"\x03\xe8\xe2\x82"),
                1007,
            ),
            (
                "text utf8",
                l,
                client(true, OpCode::Text, b"a\xc0\xafb"),
                1007,
            ),
            (
                "text surrogate",
                l,
                client(true, OpCode::Text, b"\xed\xa0\x80"),
                1007,
            ),
            (
                "text ends incomplete",
                l,
                client(true, OpCode::Text, b"ok\xe2\x82"),
                1007,
            ),
            (
                "fragmented ends incomplete",
                l,
                [
                    client(false, OpCode::Text, b"\xf0\x9f"),
                    client(true, OpCode::Continuation, b"\x98"),
                ]
                .concat(),
                1007,
            ),
            (
                "invalid across fragments",
                l,
                [
                    client(false, OpCode::Text, b"\xe2"),
                    client(true, OpCode::Continuation, b"\x28\xa1"),
                ]
                .concat(),
                1007,
            ),
        ];
        for (name, lim, bytes, code) in cases {
            let want = (vec![], Err(code));
            assert_eq!(run_whole(lim, &bytes), want, "{name} whole");
            assert_eq!(run_bytewise(lim, &bytes), want, "{name} bytewise");
        }
        for op in [3u8, 4, 5, 6, 7, 11, 12, 13, 14, 15] {
            expect_err(l, &raw_frame(0x80 | op, true, b""), &[], 1002);
        }
    }

    #[test]
    fn length_with_msb_set() {
        let mut f = vec![0x82, 0x80 | 127];
        f.extend((1u64 << 63).to_be_bytes());
        f.extend(KEY);
        let lim = Limits {
            max_frame_size: usize::MAX,
            max_message_size: usize::MAX,
            allow_rsv1: false,
        };
        expect_err(lim, &f, &[], 1002);
    }

    #[test]
    fn message_size_checked_at_header() {
        let lim = Limits {
            max_frame_size: 100,
            max_message_size: 100,
            allow_rsv1: false,
        };
        let mut s = client(false, OpCode::Binary, &[0; 60]);
        let mut h = [0u8; MAX_HEADER_LEN];
        let n = encode_header(&mut h, true, false, OpCode::Continuation, 41, Some(KEY));
        s.extend(&h[..n]); // header only: no payload needed to refuse
        expect_err(lim, &s, &[], 1009);
        let mut d = Decoder::new(lim);
        assert_eq!(d.feed(&mut s, |_| {}).unwrap_err().close_code, 1009);
    }

    #[test]
    fn events_before_error_are_delivered_then_poisoned() {
        let mut s = client(true, OpCode::Ping, b"1");
        s.extend(client(true, OpCode::Text, b"ok"));
        s.extend(raw_frame(0x81, false, b"x"));
        s.extend(client(true, OpCode::Ping, b"never"));
        expect_err(limits(), &s, &[Ev::Ping(b"1".to_vec()), text("ok")], 1002);

        let mut d = Decoder::new(limits());
        let err = d.feed(&mut s.clone(), |_| {}).unwrap_err();
        assert_eq!(err.close_code, 1002);
        assert!(!err.reason.is_empty());
        let mut ok = client(true, OpCode::Ping, b"");
        assert_eq!(d.feed(&mut ok, |_| panic!("poisoned")), Err(err));
        assert_eq!(d.feed(&mut [], |_| panic!("poisoned")), Err(err));
        assert_eq!(d.buffered(), 0);
    }

    #[test]
    fn invalid_utf8_fails_before_frame_completes() {
        let f = client(true, OpCode::Text, b"abc\xc0\xafdefghijklmnop");
        let mut d = Decoder::new(limits());
        let mut half = f[..6 + 5].to_vec(); // header + "abc" C0 AF
        let err = d.feed(&mut half, |_| panic!()).unwrap_err();
        assert_eq!(err.close_code, 1007);
        assert_eq!(err.reason, "invalid UTF-8 in text message");

        // Also when the offending byte ends the read and the frame is a fragment.
        let f = client(false, OpCode::Text, b"abc\xc0defg");
        let mut d = Decoder::new(limits());
        let mut part = f[..6 + 4].to_vec();
        assert_eq!(
            d.feed(&mut part, |_| panic!()).unwrap_err().close_code,
            1007
        );
    }
}
