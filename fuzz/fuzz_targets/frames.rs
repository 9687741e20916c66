//! The stateful frame decoder and message assembly (`wsrt::message::Decoder`), fed in reads
//! of fuzzer-chosen sizes, and the frame encoder (`wsrt::frame`) round trip.
//!
//! Input: `[flags, frame_hi, frame_lo, msg_hi, msg_lo, ncuts, lens[ncuts].., body..]`.
//! `max_frame_size` and `max_message_size` are the two u16s (0..=65535), `flags & 1` allows
//! RSV1 (permessage-deflate), `lens` are the sizes of the reads (cycled; the last read
//! takes the rest).
//! - `flags & 2 == 0`: `body` is a raw client byte stream.
//! - `flags & 2 != 0`: `body` describes messages and control frames, which are encoded as
//!   masked client frames with `frame::encode_header` (fragmented, with control frames
//!   between fragments, compressed with `deflate::Deflater` when RSV1 is allowed); the
//!   decoder must give back exactly those, up to the first frame over a size limit (close
//!   1009) or the first Close, and compressed ones must inflate back to the original.
//!
//! Checked for every stream: no panic; the events and the final error are identical whether
//! the stream is fed at once, in the chosen reads or byte by byte; no message is larger
//! than `max_message_size` and no control payload larger than 125 bytes or
//! `max_frame_size`; text is valid UTF-8 (unless compressed); close codes are valid; the
//! decoder holds at most `max_message_size` + 125 bytes; errors are sticky and nothing
//! follows a Close.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wsrt::deflate::{Deflater, Inflater};
use wsrt::frame::{
    apply_mask, close_payload, encode_frame, encode_header, is_valid_close_code,
    split_server_frame, OpCode, MAX_HEADER_LEN,
};
use wsrt::message::{Decoder, Event, Limits};

#[derive(Clone, Debug, PartialEq)]
enum Ev {
    Msg {
        text: bool,
        compressed: bool,
        data: Vec<u8>,
    },
    Ping(Vec<u8>),
    Pong(Vec<u8>),
    Close(Option<u16>, String),
    /// The decoder failed with this close code and reason (always the last entry).
    Error(u16, &'static str),
}

/// Cuts `data` into reads of the lengths in `lens` (cycled, 0 = an empty read); the last read
/// takes the rest. At most 4096 reads.
fn reads(data: &[u8], lens: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut rest = data;
    if !lens.is_empty() {
        for &l in lens.iter().cycle() {
            if rest.is_empty() || out.len() >= 4096 {
                break;
            }
            let n = usize::from(l).min(rest.len());
            out.push(rest[..n].to_vec());
            rest = &rest[n..];
        }
    }
    out.push(rest.to_vec());
    out
}

/// A data message (text is valid UTF-8 by its type, `&str`, unless still deflated).
fn own_message(text: bool, compressed: bool, data: &[u8], limits: &Limits) -> Ev {
    assert!(
        data.len() <= limits.max_message_size,
        "message of {} bytes over max_message_size {}",
        data.len(),
        limits.max_message_size
    );
    assert!(!compressed || limits.allow_rsv1);
    Ev::Msg {
        text,
        compressed,
        data: data.to_vec(),
    }
}

fn own(e: Event<'_>, limits: &Limits) -> Ev {
    match e {
        Event::Message(m) => own_message(m.is_text(), false, m.as_bytes(), limits),
        Event::Deflated { text, data } => own_message(text, true, data, limits),
        Event::Ping(p) | Event::Pong(p) if p.len() > 125 || p.len() > limits.max_frame_size => {
            panic!("control payload of {} bytes", p.len())
        }
        Event::Ping(p) => Ev::Ping(p.to_vec()),
        Event::Pong(p) => Ev::Pong(p.to_vec()),
        Event::Close { code, reason } => {
            assert!(code.map_or(reason.is_empty(), is_valid_close_code));
            assert!(reason.len() <= 123);
            Ev::Close(code, reason.to_string())
        }
    }
}

/// Feeds the reads in turn; the events in order, then the error if there was one.
fn run(limits: Limits, mut reads: Vec<Vec<u8>>) -> Vec<Ev> {
    let mut d = Decoder::new(limits);
    let mut evs = Vec::new();
    let mut closed = false;
    for read in &mut reads {
        let before = evs.len();
        let res = d.feed(read, |e| evs.push(own(e, &limits)));
        if closed {
            assert_eq!(evs.len(), before, "events after a Close");
        }
        closed |= evs[before..].iter().any(|e| matches!(e, Ev::Close(..)));
        if let Err(e) = res {
            // Sticky, and silent.
            let mut again = *b"\x81\x80abcd";
            assert_eq!(
                d.feed(&mut again, |_| panic!("event after an error")),
                Err(e)
            );
            assert_eq!(d.buffered(), 0);
            evs.push(Ev::Error(e.close_code, e.reason));
            return evs;
        }
        assert!(
            d.buffered() <= limits.max_message_size + 125,
            "holds {} bytes",
            d.buffered()
        );
    }
    if let Some(i) = evs.iter().position(|e| matches!(e, Ev::Close(..))) {
        assert_eq!(i + 1, evs.len(), "events after a Close");
    }
    if closed {
        let mut more = *b"\x81\x80abcd";
        assert_eq!(d.feed(&mut more, |_| panic!("event after Close")), Ok(()));
    }
    evs
}

/// Reads bytes of the structured description, yielding zeros once it runs out.
struct Src<'a>(&'a [u8]);

impl Src<'_> {
    fn byte(&mut self) -> u8 {
        match self.0.split_first() {
            Some((&b, rest)) => {
                self.0 = rest;
                b
            }
            None => 0,
        }
    }

    fn bytes(&mut self, n: usize) -> &[u8] {
        let (a, b) = self.0.split_at(n.min(self.0.len()));
        self.0 = b;
        a
    }
}

/// A stream built from the description, the events the decoder must deliver for it, and
/// the original data of every compressed message.
struct Built {
    stream: Vec<u8>,
    expected: Vec<Ev>,
    originals: Vec<Vec<u8>>,
    /// After the first error or Close nothing more is expected.
    done: bool,
    /// Data bytes of the message in progress that the decoder has accepted.
    prior: usize,
    key: u8,
}

impl Built {
    /// Appends one masked client frame and what the decoder makes of it.
    fn frame(&mut self, limits: &Limits, fin: bool, rsv1: bool, op: OpCode, payload: &[u8]) {
        let mut h = [0u8; MAX_HEADER_LEN];
        self.key = self.key.wrapping_add(0x3b);
        let key = [self.key, !self.key, 0x5a, self.key.rotate_left(3)];
        let n = encode_header(&mut h, fin, rsv1, op, payload.len() as u64, Some(key));
        self.stream.extend_from_slice(&h[..n]);
        let mut masked = payload.to_vec();
        apply_mask(&mut masked, key, 0);
        self.stream.extend_from_slice(&masked);
        if self.done {
            return;
        }
        if payload.len() > limits.max_frame_size {
            self.expected.push(Ev::Error(1009, "frame too big"));
            self.done = true;
            return;
        }
        if !op.is_control() {
            let prior = if op == OpCode::Continuation {
                self.prior
            } else {
                0
            };
            if prior + payload.len() > limits.max_message_size {
                self.expected.push(Ev::Error(1009, "message too big"));
                self.done = true;
                return;
            }
            self.prior = prior + payload.len();
        }
        match op {
            OpCode::Ping => self.expected.push(Ev::Ping(payload.to_vec())),
            OpCode::Pong => self.expected.push(Ev::Pong(payload.to_vec())),
            OpCode::Close => {
                let code =
                    (payload.len() >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]]));
                let reason = String::from_utf8(payload[payload.len().min(2)..].to_vec()).unwrap();
                self.expected.push(Ev::Close(code, reason));
                self.done = true;
            }
            _ => {}
        }
    }

    fn control(&mut self, limits: &Limits, src: &mut Src, op: OpCode) {
        let len = usize::from(src.byte()) % 126;
        let payload = src.bytes(len).to_vec();
        self.frame(limits, true, false, op, &payload);
    }
}

const CLOSE_CODES: [u16; 8] = [1000, 1001, 1002, 1003, 1007, 1011, 3000, 4999];

fn build(limits: &Limits, body: &[u8]) -> Built {
    let mut b = Built {
        stream: Vec::new(),
        expected: Vec::new(),
        originals: Vec::new(),
        done: false,
        prior: 0,
        key: 0,
    };
    // Made on first use: a zlib compressor is a few hundred KiB to set up.
    let mut deflater: Option<Deflater> = None;
    let mut src = Src(body);
    let mut items = 0;
    while !src.0.is_empty() && items < 64 {
        items += 1;
        let op = src.byte();
        match op % 8 {
            0..=3 => {
                // A data message: [op, len_lo, len_hi?, data.., per fragment: cut, ping?].
                let text = op & 0x08 != 0;
                let compressed = op & 0x10 != 0 && limits.allow_rsv1;
                let frags = 1 + usize::from(op >> 5);
                let mut len = usize::from(src.byte());
                if op % 8 == 3 {
                    len |= usize::from(src.byte()) << 8;
                }
                let raw = src.bytes(len).to_vec();
                let data = if text {
                    String::from_utf8_lossy(&raw).into_owned().into_bytes()
                } else {
                    raw
                };
                let payload = if compressed {
                    let mut out = Vec::new();
                    deflater
                        .get_or_insert_with(|| Deflater::new(1, 15))
                        .compress(&data, &mut out, false);
                    out
                } else {
                    data.clone()
                };
                let first_op = if text { OpCode::Text } else { OpCode::Binary };
                let mut rest = &payload[..];
                for i in 0..frags {
                    let last = i + 1 == frags;
                    let cut = if last {
                        rest.len()
                    } else {
                        // Fragments may cut UTF-8 sequences anywhere, and may be empty.
                        usize::from(src.byte()).min(rest.len())
                    };
                    let (frag, tail) = rest.split_at(cut);
                    let op = if i == 0 {
                        first_op
                    } else {
                        OpCode::Continuation
                    };
                    b.frame(limits, last, compressed && i == 0, op, frag);
                    rest = tail;
                    if !last && src.byte() & 1 != 0 {
                        // A control frame between fragments.
                        b.control(limits, &mut src, OpCode::Ping);
                    }
                }
                if !b.done {
                    b.expected.push(Ev::Msg {
                        text,
                        compressed,
                        data: payload,
                    });
                    if compressed {
                        b.originals.push(data);
                    }
                }
            }
            4 => b.control(limits, &mut src, OpCode::Ping),
            5 => b.control(limits, &mut src, OpCode::Pong),
            6 => {
                let code = CLOSE_CODES[usize::from(src.byte()) % CLOSE_CODES.len()];
                let len = usize::from(src.byte());
                let reason = String::from_utf8_lossy(src.bytes(len)).into_owned();
                let payload = close_payload(Some(code), &reason);
                assert!(payload.len() <= 125 && std::str::from_utf8(&payload[2..]).is_ok());
                b.frame(limits, true, false, OpCode::Close, &payload);
            }
            _ => b.frame(limits, true, false, OpCode::Close, &[]),
        }
    }
    b
}

/// Server frames built by `encode_frame` split back into opcode and payload.
fn server_frames(body: &[u8]) {
    for (op, fin) in [
        (OpCode::Text, true),
        (OpCode::Binary, true),
        (OpCode::Pong, true),
        (OpCode::Binary, false),
    ] {
        let f = encode_frame(fin, false, op, body);
        let got = split_server_frame(&f);
        if fin {
            assert_eq!(got, Some((op, body)));
            assert_eq!(split_server_frame(&f[..f.len() - 1]), None);
        } else {
            assert_eq!(got, None);
        }
    }
    // Masking in two pieces equals masking at once.
    let key = [0x12, 0x34, 0x56, 0x78];
    let mut whole = body.to_vec();
    apply_mask(&mut whole, key, 0);
    let mut pieces = body.to_vec();
    let cut = body
        .first()
        .map_or(0, |&c| usize::from(c) % (body.len() + 1));
    apply_mask(&mut pieces[..cut], key, 0);
    apply_mask(&mut pieces[cut..], key, cut);
    assert_eq!(whole, pieces);
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 6 {
        return;
    }
    let flags = data[0];
    let limits = Limits {
        max_frame_size: usize::from(u16::from_be_bytes([data[1], data[2]])),
        max_message_size: usize::from(u16::from_be_bytes([data[3], data[4]])),
        allow_rsv1: flags & 1 != 0,
    };
    let ncuts = usize::from(data[5] % 16).min(data.len() - 6);
    let lens = &data[6..6 + ncuts];
    let body = &data[6 + ncuts..];

    let (stream, built) = if flags & 2 == 0 {
        (body.to_vec(), None)
    } else {
        let b = build(&limits, body);
        (b.stream.clone(), Some(b))
    };

    let whole = run(limits, vec![stream.clone()]);
    let split = run(limits, reads(&stream, lens));
    assert_eq!(whole, split, "split reads differ from one read");
    if stream.len() <= 4096 {
        let bytewise = run(limits, reads(&stream, &[1]));
        assert_eq!(whole, bytewise, "byte-by-byte reads differ from one read");
    }

    if let Some(b) = built {
        assert_eq!(
            whole, b.expected,
            "decoded frames differ from the encoded ones"
        );
        // Compressed messages inflate back to the original (context kept across messages).
        let mut inflater: Option<Inflater> = None;
        let mut out = Vec::new();
        let compressed = whole.iter().filter_map(|e| match e {
            Ev::Msg {
                compressed: true,
                data,
                ..
            } => Some(data),
            _ => None,
        });
        for (payload, original) in compressed.zip(&b.originals) {
            inflater
                .get_or_insert_with(Inflater::default)
                .inflate(payload, original.len(), &mut out, false)
                .expect("inflates");
            assert_eq!(&out, original);
        }
    }
    if flags & 4 != 0 {
        server_frames(body);
    }
});
