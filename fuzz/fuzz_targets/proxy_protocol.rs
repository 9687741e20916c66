//! PROXY protocol v1/v2 reader (`wsrt::proxy_protocol::ProxyReader`) on arbitrary bytes.
//!
//! Input: `[cfg, max_hi, max_lo, ncuts, lens[ncuts].., stream..]`. `cfg & 3` picks the accepted
//! versions, `max` (16..=65551) bounds v2 headers, `lens` are the sizes of the reads the
//! stream is cut into (cycled; the last read takes the rest).
//!
//! Checked: no panic; the result of feeding the stream in one read equals the result of
//! feeding it in those reads and byte by byte (same header and same following bytes, or the
//! same error); the reader never holds more than the header can be long (107 bytes for v1,
//! `max` for v2) and never holds bytes after the header; errors are sticky, a second feed
//! after a header is refused; every error is one log line. The one documented difference: a
//! second PROXY header cut off by the end of the read that completed the first is not seen
//! (`SecondHeader` in one read, the header plus bytes that look like a header when split).
#![no_main]

use libfuzzer_sys::fuzz_target;
use wsrt::proxy_protocol::{
    looks_like_proxy_header, ProxyError, ProxyHeader, ProxyReader, Versions,
};

const V1_MAX_LEN: usize = 107;

#[derive(Debug, PartialEq)]
enum Outcome {
    /// The header, the bytes after it (all of them), and how many of those came back in
    /// the read that completed the header.
    Header(ProxyHeader, Vec<u8>, usize),
    Error(ProxyError),
    Incomplete,
}

/// Cuts `data` into reads of the lengths in `lens` (cycled, 0 = an empty read); the last read
/// takes the rest. At most 4096 reads.
fn reads<'a>(data: &'a [u8], lens: &[u8]) -> Vec<&'a [u8]> {
    let mut out = Vec::new();
    let mut rest = data;
    if !lens.is_empty() {
        for &l in lens.iter().cycle() {
            if rest.is_empty() || out.len() >= 4096 {
                break;
            }
            let n = usize::from(l).min(rest.len());
            out.push(&rest[..n]);
            rest = &rest[n..];
        }
    }
    out.push(rest);
    out
}

fn check_header(h: &ProxyHeader, max: usize) {
    match h.version {
        1 => assert!(h.header_len <= V1_MAX_LEN, "{h:?}"),
        2 => assert!(h.header_len >= 16 && h.header_len <= max, "{h:?}"),
        v => panic!("version {v}"),
    }
    assert!(h.version == 2 || (h.authority.is_none() && h.alpn.is_none()));
    let _ = (h.source(), h.destination());
}

fn check_error(e: &ProxyError) {
    let line = e.to_string();
    assert!(!line.is_empty() && !line.contains(['\n', '\r']), "{line:?}");
}

/// Most bytes the reader may hold while a header is incomplete, given its first byte.
fn bound(first: u8, max: usize) -> usize {
    if first == b'P' {
        V1_MAX_LEN
    } else {
        max.max(16)
    }
}

fn run(versions: Versions, max: usize, stream: &[u8], reads: &[&[u8]]) -> Outcome {
    let mut r = ProxyReader::new(versions, max);
    let mut fed = 0;
    for (i, read) in reads.iter().enumerate() {
        match r.feed(read) {
            Ok(None) => {
                fed += read.len();
                // Incomplete means every byte so far is header prefix, held inside.
                assert_eq!(r.buffered(), fed);
                if fed > 0 {
                    assert!(fed <= bound(stream[0], max), "holds {fed} bytes");
                }
            }
            Ok(Some((h, rest))) => {
                check_header(&h, max);
                let start = fed + read.len() - rest.len();
                assert_eq!(start, h.header_len, "rest must follow the header");
                assert_eq!(rest, &read[read.len() - rest.len()..]);
                assert_eq!(r.buffered(), 0);
                assert_eq!(r.feed(b"x"), Err(ProxyError::AlreadyComplete));
                let visible = rest.len();
                let mut all = rest.to_vec();
                for later in &reads[i + 1..] {
                    all.extend_from_slice(later);
                }
                return Outcome::Header(h, all, visible);
            }
            Err(e) => {
                check_error(&e);
                assert_eq!(r.buffered(), 0);
                // Sticky.
                assert_eq!(r.feed(b"").as_ref().err(), Some(&e));
                assert_eq!(r.feed(b"GET /").as_ref().err(), Some(&e));
                return Outcome::Error(e);
            }
        }
    }
    Outcome::Incomplete
}

fn same(whole: &Outcome, split: &Outcome, stream: &[u8], how: &str) {
    let key = |o: &Outcome| match o {
        // How many of the following bytes came back with the header depends on the reads.
        Outcome::Header(h, rest, _) => Outcome::Header(h.clone(), rest.clone(), 0),
        Outcome::Error(e) => Outcome::Error(e.clone()),
        Outcome::Incomplete => Outcome::Incomplete,
    };
    if key(whole) == key(split) {
        return;
    }
    if let (Outcome::Error(ProxyError::SecondHeader), Outcome::Header(_, rest, visible)) =
        (whole, split)
    {
        // The second header started in a later read than the one completing the first.
        // What the reader counts as a second header: "PROXY" or the whole v2 signature.
        let second = rest.starts_with(b"PROXY") || rest.starts_with(b"\r\n\r\n\0\r\nQUIT\n");
        if *visible < rest.len() && second {
            return;
        }
    }
    panic!(
        "{how}: one read gave {whole:?}, split reads gave {split:?} for {}",
        stream.escape_ascii()
    );
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 4 {
        return;
    }
    let versions = match data[0] & 3 {
        0 => Versions::V1,
        1 => Versions::V2,
        _ => Versions::Any,
    };
    let max = 16 + usize::from(u16::from_be_bytes([data[1], data[2]]));
    let ncuts = usize::from(data[3] % 16).min(data.len() - 4);
    let lens = &data[4..4 + ncuts];
    let stream = &data[4 + ncuts..];

    let whole = run(versions, max, stream, &[stream]);
    match &whole {
        Outcome::Header(h, rest, _) => assert_eq!(&stream[h.header_len..], &rest[..]),
        Outcome::Incomplete => assert!(looks_like_proxy_header(stream) || stream.is_empty()),
        Outcome::Error(_) => {}
    }
    // NotProxy exactly when the bytes cannot start either signature.
    let not_proxy = whole == Outcome::Error(ProxyError::NotProxy);
    assert_eq!(
        not_proxy,
        !stream.is_empty() && !looks_like_proxy_header(stream)
    );

    same(
        &whole,
        &run(versions, max, stream, &reads(stream, lens)),
        stream,
        "split",
    );
    if stream.len() <= 1024 {
        same(
            &whole,
            &run(versions, max, stream, &reads(stream, &[1])),
            stream,
            "bytewise",
        );
    }
});
