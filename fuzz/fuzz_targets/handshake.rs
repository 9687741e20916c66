//! HTTP upgrade request reader (`wsrt::handshake::RequestReader`) and what turns a request
//! into an accept or a refusal (`route`, the 101/error responses, permessage-deflate
//! negotiation, the client address from forwarding headers) on arbitrary bytes.
//!
//! Input: `[cfg, size, headers, ncuts, lens[ncuts].., stream..]`: `cfg` picks the policy
//! (paths, origins, subprotocols, health path), `size`/`headers` the limits
//! (`max_header_bytes` 256..=8416, `max_headers` 4..=1024), `lens` the sizes of the reads
//! the stream is cut into (cycled; the last read takes the rest).
//!
//! Checked: no panic; a complete request parses the same (same request, same bytes after it)
//! in one read, in those reads and byte by byte; a stream refused in one read is refused
//! with the same kind and status when split, except that a split stream may still be
//! waiting (the early garbage check runs on the first read and the request line only);
//! the reader never holds more than `max_header_bytes`; every refusal has a one-line body
//! ending in '\n' and a one-line log; an accepted upgrade carries the right
//! Sec-WebSocket-Accept and a response that cannot be split.
#![no_main]

use std::net::IpAddr;

use libfuzzer_sys::fuzz_target;
use wsrt::deflate;
use wsrt::handshake::{
    accept_key, path_served, route, valid_header, wants_upgrade, write_accept, write_rejection,
    Limits, Policy, Rejection, Request, RequestReader, Route,
};
use wsrt::net_trust::{client_address_with, ForwardedHeader, TrustedNetworks};
use wsrt::RejectKind;

#[derive(Debug, PartialEq)]
enum Outcome {
    Request(Request, Vec<u8>),
    Rejected(RejectKind, u16),
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

fn check_rejection(r: &Rejection) {
    assert!(
        r.body.ends_with('\n') && !r.body[..r.body.len() - 1].contains(['\n', '\r']),
        "{r:?}"
    );
    assert!(!r.log.contains(['\n', '\r']), "{r:?}");
    assert!((400..600).contains(&r.status), "{r:?}");
    let mut out = Vec::new();
    write_rejection(&mut out, r);
    let text = String::from_utf8(out).expect("responses are UTF-8");
    assert!(text.starts_with(&format!("HTTP/1.1 {} ", r.status)));
    let (head, body) = text
        .split_once("\r\n\r\n")
        .expect("a complete response head");
    assert_eq!(body, r.body);
    assert!(!head.contains("\r\n\r\n"));
    assert!(head.contains(&format!("\r\nContent-Length: {}\r\n", r.body.len())));
}

fn run(limits: Limits, reads: &[&[u8]]) -> Outcome {
    let mut r = RequestReader::new(limits);
    for (i, read) in reads.iter().enumerate() {
        match r.feed(read) {
            Ok(None) => assert!(r.buffered() <= limits.max_header_bytes),
            Ok(Some((req, rest))) => {
                assert_eq!(r.buffered(), 0);
                let mut all = rest.to_vec();
                for later in &reads[i + 1..] {
                    all.extend_from_slice(later);
                }
                return Outcome::Request(req, all);
            }
            Err(rej) => {
                check_rejection(&rej);
                assert!(matches!(
                    rej.kind,
                    RejectKind::BadRequest | RejectKind::HeadersTooLarge
                ));
                return Outcome::Rejected(rej.kind, rej.status);
            }
        }
    }
    Outcome::Incomplete
}

fn same(whole: &Outcome, split: &Outcome, stream: &[u8], how: &str) {
    let ok =
        whole == split || matches!((whole, split), (Outcome::Rejected(..), Outcome::Incomplete));
    assert!(
        ok,
        "{how}: one read gave {whole:?}, split reads gave {split:?} for {}",
        stream.escape_ascii()
    );
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

fn check_request(req: &Request, cfg: u8) {
    assert!(req.headers.iter().all(|(n, _)| !n.is_empty()));
    assert!(req.version_minor <= 1);
    let paths = match cfg & 3 {
        0 => strings(&["*"]),
        1 => strings(&["/chat", "/ws/*"]),
        2 => strings(&["/"]),
        _ => Vec::new(),
    };
    let origins = match (cfg >> 2) & 3 {
        0 => Vec::new(),
        1 => strings(&["*"]),
        2 => strings(&["https://app.example.com", "http://localhost:3000"]),
        _ => strings(&[""]),
    };
    let protos = match (cfg >> 4) & 1 {
        0 => Vec::new(),
        _ => strings(&["v2.chat", "v1.chat"]),
    };
    let health = ((cfg >> 5) & 1 == 0).then_some("/healthz");
    let policy = Policy {
        paths: &paths,
        allowed_origins: &origins,
        subprotocols: &protos,
        health_path: health,
    };
    let served = path_served(&req.path, &paths);
    match route(req, &policy) {
        Ok(Route::Upgrade(u)) => {
            assert!(wants_upgrade(req) && served);
            assert_eq!(req.method, "GET");
            assert_eq!(u.accept, accept_key(&u.key));
            assert_eq!(req.header("Sec-WebSocket-Key"), Some(u.key.as_str()));
            if let Some(p) = &u.subprotocol {
                assert!(protos.contains(p) && u.offered_protocols.contains(p));
            }
            let mut out = Vec::new();
            write_accept(&mut out, &u.accept, u.subprotocol.as_deref(), &[]);
            let text = String::from_utf8(out).unwrap();
            assert!(text.starts_with("HTTP/1.1 101 Switching Protocols\r\n"));
            assert_eq!(text.find("\r\n\r\n"), Some(text.len() - 4));
            if let Some(ext) = &u.extensions {
                negotiate(ext);
            }
        }
        Ok(Route::Health) => assert_eq!(Some(req.path.as_str()), health),
        Ok(Route::Http) => assert!(!wants_upgrade(req)),
        Err(rej) => {
            check_rejection(&rej);
            assert!(wants_upgrade(req));
        }
    }
    for (n, v) in &req.headers {
        let _ = (
            req.header_tokens(n),
            req.header_count(n),
            valid_header(n, v),
        );
    }
    // The client address from forwarding headers, for a trusted and an untrusted peer.
    let trusted = TrustedNetworks::parse_list("10.0.0.0/8, ::1, 192.0.2.0/24").unwrap();
    for peer in [IpAddr::from([10, 1, 2, 3]), IpAddr::from([203, 0, 113, 9])] {
        for which in [
            ForwardedHeader::Auto,
            ForwardedHeader::Forwarded,
            ForwardedHeader::XForwardedFor,
            ForwardedHeader::XRealIp,
        ] {
            let ip = client_address_with(peer, &req.headers, &trusted, which);
            if !trusted.contains(peer) {
                assert_eq!(ip, peer);
            }
        }
    }
}

/// permessage-deflate negotiation on a client's Sec-WebSocket-Extensions value.
fn negotiate(ext: &str) {
    for (window_bits, nct) in [(15, false), (9, true)] {
        let cfg = deflate::Config {
            level: 1,
            window_bits,
            server_no_context_takeover: nct,
            client_no_context_takeover: nct,
            threshold: 0,
        };
        if let Some((params, response)) = deflate::negotiate(ext, &cfg) {
            assert!(
                valid_header("Sec-WebSocket-Extensions", &response),
                "{response:?}"
            );
            assert!(response.starts_with("permessage-deflate"));
            assert!((8..=window_bits).contains(&params.server_window_bits));
            assert!(
                !nct || (params.server_no_context_takeover && params.client_no_context_takeover)
            );
        }
    }
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 4 {
        return;
    }
    let cfg = data[0];
    let limits = Limits {
        max_header_bytes: 256 + usize::from(data[1]) * 32,
        max_headers: 4 + usize::from(data[2]) * 4,
    };
    let ncuts = usize::from(data[3] % 16).min(data.len() - 4);
    let lens = &data[4..4 + ncuts];
    let stream = &data[4 + ncuts..];

    let whole = run(limits, &[stream]);
    if let Outcome::Request(req, _) = &whole {
        check_request(req, cfg);
    }
    if cfg & 0x40 != 0 {
        // The extension negotiation on arbitrary text, not only on parsed header values.
        negotiate(&String::from_utf8_lossy(stream));
    }
    same(&whole, &run(limits, &reads(stream, lens)), stream, "split");
    if stream.len() <= 2048 {
        same(
            &whole,
            &run(limits, &reads(stream, &[1])),
            stream,
            "bytewise",
        );
    }
});
