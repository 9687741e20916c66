//! RFC 6455 frame header coding and payload masking (sans-I/O).

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpCode {
    Continuation = 0,
    Text = 1,
    Binary = 2,
    Close = 8,
    Ping = 9,
    Pong = 10,
}

impl OpCode {
    /// The opcode of a data message.
    pub fn data(text: bool) -> OpCode {
        if text {
            OpCode::Text
        } else {
            OpCode::Binary
        }
    }

    pub fn from_u8(b: u8) -> Option<OpCode> {
        Some(match b {
            0 => OpCode::Continuation,
            1 => OpCode::Text,
            2 => OpCode::Binary,
            8 => OpCode::Close,
            9 => OpCode::Ping,
            10 => OpCode::Pong,
            _ => return None,
        })
    }

    pub fn is_control(self) -> bool {
        // Control opcodes are exactly those with the high bit of the nibble set.
        (self as u8) & 0x8 != 0
    }
}

pub const MAX_HEADER_LEN: usize = 14;

/// Writes a frame header into `buf`; returns its length (2..=14).
/// `mask` = Some only for client frames (tests/clients).
pub fn encode_header(
    buf: &mut [u8; MAX_HEADER_LEN],
    fin: bool,
    rsv1: bool,
    opcode: OpCode,
    payload_len: u64,
    mask: Option<[u8; 4]>,
) -> usize {
    buf[0] = (u8::from(fin) << 7) | (u8::from(rsv1) << 6) | opcode as u8;
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    let mut len = if payload_len < 126 {
        buf[1] = mask_bit | payload_len as u8;
        2
    } else if payload_len <= u64::from(u16::MAX) {
        buf[1] = mask_bit | 126;
        buf[2..4].copy_from_slice(&(payload_len as u16).to_be_bytes());
        4
    } else {
        buf[1] = mask_bit | 127;
        buf[2..10].copy_from_slice(&payload_len.to_be_bytes());
        10
    };
    if let Some(key) = mask {
        buf[len..len + 4].copy_from_slice(&key);
        len += 4;
    }
    len
}

/// Length of an unmasked frame header for a payload of `payload_len` bytes.
pub fn header_len(payload_len: usize) -> usize {
    match payload_len {
        0..=125 => 2,
        126..=0xFFFF => 4,
        _ => 10,
    }
}

/// Header + payload in one Vec, unmasked (server frames). Used for cross-thread sends and broadcasts.
pub fn encode_frame(fin: bool, rsv1: bool, opcode: OpCode, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(header_len(payload.len()) + payload.len());
    append_frame(&mut out, fin, rsv1, opcode, payload);
    out
}

/// Append an unmasked frame (header + payload) to `out`; returns its length.
pub fn append_frame(
    out: &mut Vec<u8>,
    fin: bool,
    rsv1: bool,
    opcode: OpCode,
    payload: &[u8],
) -> usize {
    let mut header = [0u8; MAX_HEADER_LEN];
    let n = encode_header(&mut header, fin, rsv1, opcode, payload.len() as u64, None);
    out.extend_from_slice(&header[..n]);
    out.extend_from_slice(payload);
    n + payload.len()
}

/// Close frame payload: 2-byte big-endian code + reason (reason truncated at a char
/// boundary so the payload is <= 125 bytes). code None => empty payload.
pub fn close_payload(code: Option<u16>, reason: &str) -> Vec<u8> {
    let Some(code) = code else {
        return Vec::new();
    };
    // `str::floor_char_boundary` is newer than our MSRV, so walk back by hand.
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let mut out = Vec::with_capacity(2 + end);
    out.extend_from_slice(&code.to_be_bytes());
    out.extend_from_slice(&reason.as_bytes()[..end]);
    out
}

/// XOR `data` with `key`, where data[0] is payload byte number `offset` (so a payload
/// unmasked in pieces works).
pub fn apply_mask(data: &mut [u8], key: [u8; 4], offset: usize) {
    let s = offset % 4;
    let k = [key[s], key[(s + 1) % 4], key[(s + 2) % 4], key[(s + 3) % 4]];
    let wide = u64::from_ne_bytes([k[0], k[1], k[2], k[3], k[0], k[1], k[2], k[3]]);
    let mut chunks = data.chunks_exact_mut(8);
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        chunk.copy_from_slice(&(u64::from_ne_bytes(word) ^ wide).to_ne_bytes());
    }
    // The remainder starts at a multiple of 8, so the key phase is still `k[0]`.
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= k[i % 4];
    }
}

/// The opcode and payload of an unmasked, unfragmented frame built by `encode_frame`
/// (used to re-encode a frame for a connection that compresses). None if it isn't one.
pub fn split_server_frame(frame: &[u8]) -> Option<(OpCode, &[u8])> {
    let (&b0, &b1) = (frame.first()?, frame.get(1)?);
    if b0 & 0xF0 != 0x80 || b1 & 0x80 != 0 {
        return None;
    }
    let opcode = OpCode::from_u8(b0 & 0x0F)?;
    let (start, len) = match b1 & 0x7F {
        126 => (
            4,
            u16::from_be_bytes([*frame.get(2)?, *frame.get(3)?]) as usize,
        ),
        127 => (
            10,
            u64::from_be_bytes(frame.get(2..10)?.try_into().ok()?) as usize,
        ),
        n => (2, n as usize),
    };
    (frame.len() == start + len).then(|| (opcode, &frame[start..]))
}

/// Valid close codes a peer may send: 1000–1003, 1007–1014, 3000–4999.
pub fn is_valid_close_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Minimal reference parser, independent of the server decoder.
    fn parse_header(h: &[u8]) -> (bool, bool, u8, u64, Option<[u8; 4]>, usize) {
        let fin = h[0] & 0x80 != 0;
        let rsv1 = h[0] & 0x40 != 0;
        let op = h[0] & 0x0f;
        let masked = h[1] & 0x80 != 0;
        let (len, mut at) = match h[1] & 0x7f {
            126 => (u64::from(u16::from_be_bytes([h[2], h[3]])), 4),
            127 => (u64::from_be_bytes(h[2..10].try_into().unwrap()), 10),
            n => (u64::from(n), 2),
        };
        let mask = if masked {
            at += 4;
            Some(h[at - 4..at].try_into().unwrap())
        } else {
            None
        };
        (fin, rsv1, op, len, mask, at)
    }

    #[test]
    fn opcode_roundtrip_and_control() {
        for b in 0..=255u8 {
            match OpCode::from_u8(b) {
                Some(op) => assert_eq!(op as u8, b),
                None => assert!(![0, 1, 2, 8, 9, 10].contains(&b)),
            }
        }
        assert!(!OpCode::Continuation.is_control());
        assert!(!OpCode::Text.is_control());
        assert!(!OpCode::Binary.is_control());
        assert!(OpCode::Close.is_control());
        assert!(OpCode::Ping.is_control());
        assert!(OpCode::Pong.is_control());
    }

    #[test]
    fn header_roundtrip_lengths() {
        let cases: [(u64, usize); 8] = [
            (0, 2),
            (1, 2),
            (125, 2),
            (126, 4),
            (65535, 4),
            (65536, 10),
            (1 << 40, 10),
            (u64::MAX >> 1, 10),
        ];
        for (len, expect) in cases {
            for mask in [None, Some([1, 2, 3, 4])] {
                for (fin, rsv1) in [(true, false), (false, true)] {
                    let mut buf = [0u8; MAX_HEADER_LEN];
                    let n = encode_header(&mut buf, fin, rsv1, OpCode::Binary, len, mask);
                    let expect = expect + if mask.is_some() { 4 } else { 0 };
                    assert_eq!(n, expect, "len {len}");
                    let (f, r, op, l, m, at) = parse_header(&buf[..n]);
                    assert_eq!((f, r, op, l, m, at), (fin, rsv1, 2, len, mask, n));
                }
            }
        }
    }

    #[test]
    fn header_known_bytes() {
        let mut buf = [0u8; MAX_HEADER_LEN];
        let n = encode_header(&mut buf, true, false, OpCode::Text, 5, None);
        assert_eq!(&buf[..n], &[0x81, 0x05]);
        let n = encode_header(&mut buf, true, false, OpCode::Ping, 0, Some([9, 8, 7, 6]));
        assert_eq!(&buf[..n], &[0x89, 0x80, 9, 8, 7, 6]);
        let n = encode_header(&mut buf, false, true, OpCode::Binary, 256, None);
        assert_eq!(&buf[..n], &[0x42, 126, 1, 0]);
    }

    #[test]
    fn encode_frame_layout() {
        let f = encode_frame(true, false, OpCode::Text, b"hi");
        assert_eq!(f, [0x81, 2, b'h', b'i']);
        let big = vec![7u8; 70_000];
        let f = encode_frame(true, true, OpCode::Binary, &big);
        assert_eq!(f.len(), 10 + big.len());
        assert_eq!(parse_header(&f).3, 70_000);
        assert_eq!(&f[10..], &big[..]);
    }

    #[test]
    fn close_payload_truncates_at_char_boundary() {
        assert!(close_payload(None, "ignored").is_empty());
        assert_eq!(close_payload(Some(1000), ""), [0x03, 0xe8]);
        assert_eq!(close_payload(Some(1001), "bye"), b"\x03\xe9bye");
        let long = "a".repeat(200);
        let p = close_payload(Some(1000), &long);
        assert_eq!(p.len(), 125);
        // 'é' is 2 bytes: 61 of them = 122 bytes fit; the 62nd would end at 124 > 123.
        let accents = "é".repeat(100);
        let p = close_payload(Some(1000), &accents);
        assert_eq!(p.len(), 2 + 122);
        assert!(std::str::from_utf8(&p[2..]).is_ok());
        // 4-byte chars: 30 fit (120 bytes).
        let p = close_payload(Some(4000), &"😀".repeat(40));
        assert_eq!(p.len(), 2 + 120);
        assert!(std::str::from_utf8(&p[2..]).is_ok());
    }

    fn naive_mask(data: &mut [u8], key: [u8; 4], offset: usize) {
        for (i, b) in data.iter_mut().enumerate() {
            *b ^= key[(offset + i) % 4];
        }
    }

    #[test]
    fn mask_matches_naive_for_all_offsets_and_lengths() {
        let key = [0x12, 0x34, 0x56, 0x78];
        let src: Vec<u8> = (0..100u8).collect();
        for off in 0..8 {
            for len in 0..src.len() {
                let mut a = src[..len].to_vec();
                let mut b = a.clone();
                apply_mask(&mut a, key, off);
                naive_mask(&mut b, key, off);
                assert_eq!(a, b, "off {off} len {len}");
            }
        }
    }

    #[test]
    fn mask_in_pieces_equals_whole() {
        let key = [0xde, 0xad, 0xbe, 0xef];
        let src: Vec<u8> = (0..1000u32).map(|i| (i * 7) as u8).collect();
        let mut whole = src.clone();
        apply_mask(&mut whole, key, 0);
        for split_a in [0, 1, 3, 5, 8, 13, 100, 999] {
            for split_b in [split_a, split_a + 1, split_a + 7, 1000] {
                let split_b = split_b.min(1000);
                let mut pieces = src.clone();
                apply_mask(&mut pieces[..split_a], key, 0);
                apply_mask(&mut pieces[split_a..split_b], key, split_a);
                apply_mask(&mut pieces[split_b..], key, split_b);
                assert_eq!(pieces, whole);
            }
        }
        // Masking twice is the identity.
        apply_mask(&mut whole, key, 0);
        assert_eq!(whole, src);
    }

    #[test]
    #[cfg_attr(miri, ignore = "exhaustive: minutes under Miri; runs natively")]
    fn close_code_table() {
        let valid = [
            1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014,
        ];
        for c in 0..=u16::MAX {
            let expect = valid.contains(&c) || (3000..=4999).contains(&c);
            assert_eq!(is_valid_close_code(c), expect, "code {c}");
        }
        for c in [0, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000, 65535] {
            assert!(!is_valid_close_code(c));
        }
    }
}
