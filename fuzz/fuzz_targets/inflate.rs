//! permessage-deflate decompression (`wsrt::deflate::Inflater`) with a small output limit,
//! message after message on one inflater as a connection does.
//!
//! Input: `[limit_hi, limit_lo, flags, messages..]`, each message `[len, bytes[len]..]`.
//! `limit` is 0..=65535 bytes; `flags & 1` resets the context after every message (no
//! context takeover); `flags & 2` reuses one output buffer (as a worker does) instead of a
//! fresh one per message.
//! - `flags & 4 == 0`: the messages are arbitrary compressed payloads.
//! - `flags & 4 != 0`: the messages are plain data (each repeated `1 + flags >> 5` times),
//!   compressed with `Deflater` (level and window bits from the flags) and inflated back.
//!
//! Checked: no panic; an inflated message is never longer than the limit and the output
//! buffer never grows past limit + 1 (+ the 4096 bytes of slack the module's own test
//! allows); the round trip gives back every message within the limit, and refuses a
//! larger one as TooBig.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wsrt::deflate::{Deflater, InflateError, Inflater};

fn messages(mut rest: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    while let Some((&len, tail)) = rest.split_first() {
        let n = usize::from(len).min(tail.len());
        out.push(&tail[..n]);
        rest = &tail[n..];
        if out.len() == 64 {
            break;
        }
    }
    out
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 3 {
        return;
    }
    let limit = usize::from(u16::from_be_bytes([data[0], data[1]]));
    let flags = data[2];
    let reset = flags & 1 != 0;
    let reuse = flags & 2 != 0;
    let round_trip = flags & 4 != 0;
    let msgs = messages(&data[3..]);

    let mut inflater = Inflater::default();
    let mut out = Vec::new();
    let window = 9 + (flags >> 3) % 7;
    let level = u32::from(flags >> 5) % 10;
    let mut deflater = Deflater::new(level, window);
    let mut compressed = Vec::new();
    for msg in msgs {
        if !reuse {
            out = Vec::new();
        }
        let res = if round_trip {
            let plain = msg.repeat(1 + usize::from(flags >> 5));
            deflater.compress(&plain, &mut compressed, reset);
            assert!(!compressed.is_empty() && !compressed.ends_with(&[0, 0, 0xff, 0xff]));
            let res = inflater.inflate(&compressed, limit, &mut out, reset);
            if plain.len() <= limit {
                assert_eq!(
                    res,
                    Ok(()),
                    "{} bytes within the limit {limit}",
                    plain.len()
                );
                assert!(out == plain, "round trip changed the message");
            } else {
                assert_eq!(res, Err(InflateError::TooBig));
                // The inflater forgot its context; the deflater did not: stop here.
                break;
            }
            res
        } else {
            inflater.inflate(msg, limit, &mut out, reset)
        };
        if res.is_ok() {
            assert!(out.len() <= limit, "{} bytes out, limit {limit}", out.len());
        }
        assert!(
            out.capacity() <= limit + 1 + 4096,
            "output buffer of {} bytes for limit {limit}",
            out.capacity()
        );
    }
});
