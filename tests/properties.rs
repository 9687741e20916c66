//! Properties of the sans-I/O protocol pieces, over generated inputs (proptest):
//! - client frames encode and decode back to the same messages and control frames;
//! - any split of a valid frame stream into reads yields the same events, and so does any
//!   split of a stream with a violation in it (same events, then the same error);
//! - any split of a valid PROXY (v1 or v2) + HTTP upgrade prefix yields the same header,
//!   the same request and the same early bytes;
//! - permessage-deflate: what the Deflater compresses, the Inflater restores, within limits.

use std::net::SocketAddr;

use proptest::prelude::*;
use wsrt::deflate::{Deflater, Inflater};
use wsrt::frame::{encode_header, OpCode, MAX_HEADER_LEN};
use wsrt::handshake::{self, RequestReader};
use wsrt::message::{Decoder, Event, Limits};
use wsrt::proxy_protocol::{self, ProxyReader, Versions};

/// A decoder event, owned, so events from different runs can be compared.
#[derive(Clone, Debug, PartialEq)]
enum Got {
    Message { text: bool, data: Vec<u8> },
    Ping(Vec<u8>),
    Pong(Vec<u8>),
    Close(Option<u16>, String),
    Error(u16),
}

/// What a client sends: a data message cut into fragments, or a control frame.
#[derive(Clone, Debug)]
enum Item {
    Message {
        text: bool,
        data: Vec<u8>,
        /// Fragment lengths are taken from here in turn (0 = empty fragment).
        cuts: Vec<usize>,
    },
    Ping(Vec<u8>),
    Pong(Vec<u8>),
}

const LIMITS: Limits = Limits {
    max_frame_size: 1 << 20,
    max_message_size: 1 << 20,
    allow_rsv1: false,
};

fn client_frame(out: &mut Vec<u8>, fin: bool, op: OpCode, payload: &[u8], key: [u8; 4]) {
    let mut header = [0u8; MAX_HEADER_LEN];
    let n = encode_header(&mut header, fin, false, op, payload.len() as u64, Some(key));
    out.extend_from_slice(&header[..n]);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
}

/// The wire bytes for `items` (control frames go between the fragments of the message
/// that follows them, as a client may interleave them) and the events they must produce.
fn encode(items: &[Item], key: [u8; 4]) -> (Vec<u8>, Vec<Got>) {
    let mut wire = Vec::new();
    let mut expected = Vec::new();
    let mut pending_control: Vec<(OpCode, Vec<u8>)> = Vec::new();
    for item in items {
        match item {
            Item::Ping(p) => pending_control.push((OpCode::Ping, p.clone())),
            Item::Pong(p) => pending_control.push((OpCode::Pong, p.clone())),
            Item::Message { text, data, cuts } => {
                // Fragments of the given lengths (any may be empty), then the remainder.
                let mut fragments = Vec::new();
                let mut rest = data.as_slice();
                for &n in cuts {
                    let (part, after) = rest.split_at(n.min(rest.len()));
                    fragments.push(part);
                    rest = after;
                }
                fragments.push(rest);
                let last = fragments.len() - 1;
                for (i, part) in fragments.into_iter().enumerate() {
                    let op = match (i, text) {
                        (0, true) => OpCode::Text,
                        (0, false) => OpCode::Binary,
                        _ => OpCode::Continuation,
                    };
                    client_frame(&mut wire, i == last, op, part, key);
                    // A control frame between the fragments of a message.
                    if i < last {
                        if let Some((cop, payload)) = pending_control.pop() {
                            client_frame(&mut wire, true, cop, &payload, key);
                            expected.push(control(cop, payload));
                        }
                    }
                }
                expected.push(Got::Message {
                    text: *text,
                    data: data.clone(),
                });
            }
        }
    }
    for (cop, payload) in pending_control.drain(..).rev() {
        client_frame(&mut wire, true, cop, &payload, key);
        expected.push(control(cop, payload));
    }
    (wire, expected)
}

fn control(op: OpCode, payload: Vec<u8>) -> Got {
    match op {
        OpCode::Ping => Got::Ping(payload),
        _ => Got::Pong(payload),
    }
}

/// Feed `wire` to a fresh decoder in pieces ending at `splits` (sorted or not, clamped).
fn decode(wire: &[u8], splits: &[usize], limits: Limits) -> Vec<Got> {
    let mut cuts: Vec<usize> = splits.iter().map(|&s| s.min(wire.len())).collect();
    cuts.push(wire.len());
    cuts.sort_unstable();
    let mut decoder = Decoder::new(limits);
    let mut got = Vec::new();
    let mut at = 0;
    for end in cuts {
        let mut piece = wire[at..end].to_vec();
        at = end;
        let result = decoder.feed(&mut piece, |e| {
            got.push(match e {
                Event::Message(m) => Got::Message {
                    text: m.is_text(),
                    data: m.as_bytes().to_vec(),
                },
                Event::Deflated { .. } => unreachable!("allow_rsv1 is off"),
                Event::Ping(p) => Got::Ping(p.to_vec()),
                Event::Pong(p) => Got::Pong(p.to_vec()),
                Event::Close { code, reason } => Got::Close(code, reason.to_string()),
            })
        });
        if let Err(e) = result {
            got.push(Got::Error(e.close_code));
            return got;
        }
    }
    got
}

fn item() -> impl Strategy<Value = Item> {
    prop_oneof![
        4 => (any::<bool>(), prop::collection::vec(any::<u8>(), 0..300), prop::collection::vec(0usize..80, 0..4))
            .prop_map(|(text, data, cuts)| {
                // Text must be UTF-8: use the bytes' lossy text (any Unicode, split anywhere).
                let data = if text { String::from_utf8_lossy(&data).into_owned().into_bytes() } else { data };
                Item::Message { text, data, cuts }
            }),
        1 => ".{0,40}".prop_map(|s| Item::Message { text: true, data: s.into_bytes(), cuts: vec![1, 2, 3] }),
        1 => prop::collection::vec(any::<u8>(), 0..=125).prop_map(Item::Ping),
        1 => prop::collection::vec(any::<u8>(), 0..=125).prop_map(Item::Pong),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Messages and control frames come back exactly as sent, fed all at once.
    #[test]
    fn frames_round_trip(items in prop::collection::vec(item(), 0..12), key in any::<[u8; 4]>()) {
        let (wire, expected) = encode(&items, key);
        prop_assert_eq!(decode(&wire, &[], LIMITS), expected);
    }

    /// However the stream is split into reads, the events are the same.
    #[test]
    fn any_split_of_a_frame_stream_gives_the_same_events(
        items in prop::collection::vec(item(), 1..8),
        key in any::<[u8; 4]>(),
        splits in prop::collection::vec(any::<prop::sample::Index>(), 0..40),
    ) {
        let (mut wire, expected) = encode(&items, key);
        client_frame(&mut wire, true, OpCode::Close, &[0x03, 0xe8, b'o', b'k'], key);
        let mut expected = expected;
        expected.push(Got::Close(Some(1000), "ok".into()));
        let splits: Vec<usize> = splits.iter().map(|i| i.index(wire.len() + 1)).collect();
        prop_assert_eq!(decode(&wire, &splits, LIMITS), expected);
    }

    /// A stream with a violation (bad UTF-8, a reserved bit, an oversized message) gives the
    /// same events and then the same close code, however it is split.
    #[test]
    fn any_split_of_a_bad_stream_gives_the_same_events_then_the_same_error(
        items in prop::collection::vec(item(), 0..6),
        key in any::<[u8; 4]>(),
        flip in any::<prop::sample::Index>(),
        splits in prop::collection::vec(any::<prop::sample::Index>(), 0..40),
        small_limit in 1usize..400,
    ) {
        let (mut wire, _) = encode(&items, key);
        // Corrupt one byte anywhere: whatever it does, it does it regardless of the split.
        if !wire.is_empty() {
            let i = flip.index(wire.len());
            wire[i] ^= 0x80;
        }
        let limits = Limits { max_message_size: small_limit, max_frame_size: small_limit, ..LIMITS };
        let whole = decode(&wire, &[], limits);
        let splits: Vec<usize> = splits.iter().map(|i| i.index(wire.len() + 1)).collect();
        prop_assert_eq!(decode(&wire, &splits, limits), whole.clone());
        // Every message delivered respects the limit.
        for g in &whole {
            if let Got::Message { data, .. } = g {
                prop_assert!(data.len() <= small_limit);
            }
        }
    }

    /// A PROXY header (v1 or v2) + an upgrade request + early frame bytes, split anywhere:
    /// the same header, the same request and the same early bytes come out.
    #[test]
    fn any_split_of_a_proxy_and_http_prefix_gives_the_same_request(
        v2 in any::<bool>(),
        src in any::<([u8; 4], u16)>(),
        dst in any::<([u8; 4], u16)>(),
        path in "/[a-z0-9/._-]{0,30}",
        extra in prop::collection::vec(("[A-Za-z][A-Za-z0-9-]{0,15}", "[ -~]{0,40}"), 0..6),
        early in prop::collection::vec(any::<u8>(), 0..64),
        splits in prop::collection::vec(any::<prop::sample::Index>(), 0..20),
    ) {
        let source = SocketAddr::from(src);
        let destination = SocketAddr::from(dst);
        let mut wire = if v2 {
            proxy_protocol::encode_v2(source, destination, &[(0x02, b"example.com")], true)
        } else {
            format!("PROXY TCP4 {} {} {} {}\r\n", source.ip(), destination.ip(), src.1, dst.1).into_bytes()
        };
        let mut request = format!(
            "GET {path} HTTP/1.1\r\nHost: example.com\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
        );
        for (name, value) in &extra {
            request.push_str(&format!("X-{name}: {value}\r\n"));
        }
        request.push_str("\r\n");
        wire.extend_from_slice(request.as_bytes());
        wire.extend_from_slice(&early);

        let whole = read_prefix(&wire, &[]);
        let (header, req, rest) = whole.clone().expect("a valid prefix is read");
        prop_assert_eq!(header.source(), Some(source));
        prop_assert_eq!(header.destination(), Some(destination));
        prop_assert_eq!(&req.path, &path);
        prop_assert_eq!(req.headers.len(), 5 + extra.len());
        prop_assert_eq!(&rest, &early);
        let splits: Vec<usize> = splits.iter().map(|i| i.index(wire.len() + 1)).collect();
        prop_assert_eq!(read_prefix(&wire, &splits), whole);
    }

    /// Compression round trip with and without context takeover, and the inflate limit holds.
    #[test]
    fn deflate_round_trips_and_inflate_respects_its_limit(
        messages in prop::collection::vec(prop::collection::vec(0u8..8, 0..4000), 1..6),
        level in 0u32..=9,
        window in 9u8..=15,
        reset in any::<bool>(),
    ) {
        let mut deflater = Deflater::new(level, window);
        let mut inflater = Inflater::default();
        let (mut packed, mut unpacked) = (Vec::new(), Vec::new());
        for m in &messages {
            deflater.compress(m, &mut packed, reset);
            inflater.inflate(&packed, 1 << 20, &mut unpacked, reset).expect("inflates");
            prop_assert_eq!(&unpacked, m);
        }
        // The same data against a limit below its size is refused, never over-allocated.
        let big: Vec<u8> = messages.concat();
        if big.len() > 1 {
            let mut fresh = Deflater::new(level, 15);
            fresh.compress(&big, &mut packed, true);
            let limit = big.len() - 1;
            let r = Inflater::default().inflate(&packed, limit, &mut unpacked, true);
            prop_assert!(r.is_err());
            prop_assert!(unpacked.len() <= limit + 1);
        }
    }
}

type Prefix = (proxy_protocol::ProxyHeader, handshake::Request, Vec<u8>);

/// Read a PROXY header, then an HTTP request, from `wire` fed in pieces.
fn read_prefix(wire: &[u8], splits: &[usize]) -> Option<Prefix> {
    let mut cuts: Vec<usize> = splits.to_vec();
    cuts.push(wire.len());
    cuts.sort_unstable();
    let mut proxy = ProxyReader::new(Versions::Any, 4096);
    let mut http = RequestReader::new(handshake::Limits {
        max_header_bytes: 8192,
        max_headers: 64,
    });
    let mut header = None;
    let mut request = None;
    let mut rest = Vec::new();
    let mut at = 0;
    for end in cuts {
        let mut piece = &wire[at..end];
        at = end;
        if header.is_none() {
            match proxy.feed(piece).ok()? {
                None => continue,
                Some((h, after)) => {
                    header = Some(h);
                    piece = after;
                }
            }
        }
        if request.is_none() {
            match http.feed(piece).ok()? {
                None => continue,
                Some((r, after)) => {
                    request = Some(r);
                    piece = after;
                }
            }
        }
        rest.extend_from_slice(piece);
    }
    Some((header?, request?, rest))
}
